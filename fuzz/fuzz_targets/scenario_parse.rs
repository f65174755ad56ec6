//! Scenario file parsing from arbitrary text: an error or a spec, never a panic; a parsed
//! spec written back as TOML parses to the same spec.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rockhound_sim::scenario;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = scenario::parse(Path::new("fuzz.toml"), text) {
        let again = scenario::to_toml(&spec);
        let reparsed =
            scenario::parse(Path::new("fuzz.toml"), &again).expect("a written spec parses");
        assert_eq!(spec, reparsed);
    }
});
