//! Op and batch decoding, validation and checksum verification from arbitrary bytes: never a
//! panic, and a checksum verifies only for the content it was computed from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rockhound_engine::{Batch, Op};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(op) = Op::from_json(text) {
        let _ = op.validate();
        if op.verify_checksum().is_ok() {
            // A verified checksum is the content's own: sealing again gives the same one.
            assert_eq!(op.clone().sealed().checksum, op.checksum);
        }
    }
    if let Ok(batch) = Batch::from_json(text) {
        let _ = batch.verify_checksum();
        for op in &batch.ops {
            let _ = op.validate();
            let _ = op.verify_checksum();
        }
    }
});
