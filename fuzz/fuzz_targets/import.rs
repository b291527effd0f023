//! The `block import` parser on any bytes: every line is either accepted or refused with its
//! number, and an accepted target never covers a whole address family.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_gateway::fuzzing::{parse_import, parse_import_line};

fuzz_target!(|input: &[u8]| {
    let (good, bad) = parse_import(input);
    let lines = input.split(|b| *b == b'\n').count();
    assert!(
        good + bad <= lines,
        "{good} + {bad} results for {lines} lines"
    );
    if let Ok(text) = std::str::from_utf8(input) {
        for l in text.lines() {
            if let Ok(Some((target, _))) = parse_import_line(l) {
                assert!(target.net().prefix_len() > 0, "{l:?} -> {target}");
                assert_eq!(target.to_string().parse(), Ok(target), "{l:?} round trip");
            }
        }
    }
});
