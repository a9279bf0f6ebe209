//! An O&O DiskImage command file as `holdfast-agent script run|check FILE` reads it: the
//! bounded XML reader of `agent/src/script/parse.rs` (size, depth, element, attribute and
//! value limits; no document type declaration). The agent is a binary, so its reader is
//! compiled in here from its source file.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../agent/src/script/parse.rs"]
#[allow(dead_code)]
mod parse;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse::parse(text) {
        Ok(script) => {
            // Every command and parameter kept says where it was written.
            let lines = text.matches('\n').count() + 1;
            for c in &script.commands {
                assert!((1..=lines).contains(&c.line), "command line {}", c.line);
                for p in &c.params {
                    assert!((1..=lines).contains(&p.line), "param line {}", p.line);
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
