//! Queue-store recovery from arbitrary bytes: never a panic, never a corrupt record replayed
//! (every record recovery returns is exactly a whole, checksummed frame of the input), and a
//! coordinator opened over the bytes either starts or refuses with an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rockhound_engine::client::coordinator::Coordinator;
use rockhound_engine::client::store::{decode_log, encode_frame};
use rockhound_engine::testing::sim_store::SimStore;
use rockhound_engine::{DeviceId, Millis, SyncConfig};

fuzz_target!(|data: &[u8]| {
    if let Ok((recovery, intact)) = decode_log(data) {
        let mut frames = Vec::new();
        for record in &recovery.records {
            frames.extend(encode_frame(record).expect("a recovered record frames"));
        }
        assert_eq!(
            frames.as_slice(),
            &data[..intact],
            "only whole, intact frames"
        );
        assert_eq!(intact + recovery.torn_tail_bytes, data.len());
    }
    let mut store = SimStore::new();
    if store.write(data).is_ok() && store.sync().is_ok() {
        let _ = Coordinator::open(
            DeviceId::from("fuzz"),
            1,
            SyncConfig::default(),
            store,
            7,
            Millis(1_780_000_000_000),
        );
    }
});
