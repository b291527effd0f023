//! Inputs the fuzz targets (`fuzz/`, `cargo xtask fuzz`) found, kept as ordinary tests so a
//! regression fails `cargo test` and not only a fuzzing run that happens to find them again.
//! Each test names its target and what the input broke.

use smtp_gateway::fuzzing::{Ending, classify_line, line, rcpt_paths};

/// session_lines: `RCPT<TAB>TO:<é>` made the address-literal fallback slice the line through the
/// two bytes of `é` (issue 10, 1.1): the session task panicked before replying.
#[test]
fn a_multibyte_character_at_the_verb_boundary_is_refused_not_a_panic() {
    for raw in [
        &b"RCPT\tTO:<\xc3\xa9>"[..],
        b"MAIL\tFROM:<\xc3\xa9>",
        b"RCPT TO\xc3\xa9<a@[192.0.2.1]>",
        b"MAIL FROM\xc3\xa9<a@[192.0.2.1]>",
        b"\xc3\xa9CPT TO:<a@[192.0.2.1]>",
    ] {
        assert!(
            !classify_line(&line(raw.to_vec(), Ending::CrLf, false)),
            "{:?} is not a command",
            String::from_utf8_lossy(raw)
        );
    }
}

/// The fallback still reads address literals the parser refuses.
#[test]
fn address_literal_paths_still_parse() {
    let paths = rcpt_paths(b"RCPT TO:<user@[192.0.2.1]>").expect("a RCPT");
    assert_eq!(paths.parsed, "user@[192.0.2.1]");
    assert_eq!(paths.policy, "user@[192.0.2.1]");
}
