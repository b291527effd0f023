//! The session's pure line handling for any bytes: the non-SMTP recognition, the pipelining
//! admission test, the smtp-proto parse with the address-literal fallback, and the raw path, on
//! the line as the framer would deliver it (every ending, with and without the too-long flag).
//! Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_gateway::fuzzing::{Ending, classify_line, line};

fuzz_target!(|input: &[u8]| {
    let [flags, data @ ..] = input else {
        return;
    };
    let ending = match flags % 3 {
        0 => Ending::CrLf,
        1 => Ending::BareLf,
        _ => Ending::Eof,
    };
    let too_long = flags & 0x80 != 0;
    classify_line(&line(data.to_vec(), ending, too_long));
});
