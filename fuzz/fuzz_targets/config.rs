//! The configuration parser (`Config::parse`: TOML, unknown keys, validation of every section)
//! on any text: an error or a configuration, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = smtp_gateway::fuzzing::parse_config(text);
    }
});
