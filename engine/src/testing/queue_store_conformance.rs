//! The conformance suite every [`QueueStore`] passes, with a crash after every write.
//! `open` gives a fresh, empty store; `crash` simulates a crash of the process holding it
//! and returns the store as a restarted process would find it.

use crate::client::store::*;

/// Runs every check against stores from `open`.
pub fn run<S: QueueStore>(open: &mut dyn FnMut() -> S, crash: &mut dyn FnMut(S) -> S) {
    acknowledged_records_survive_a_crash_after_every_write(open, crash);
    compaction_replaces_the_log_atomically(open, crash);
    an_oversized_record_is_refused_and_nothing_changes(open);
}

fn record(n: usize) -> Vec<u8> {
    format!("{{\"op\":{n},\"pad\":\"{}\"}}", "x".repeat(n % 7)).into_bytes()
}

fn acknowledged_records_survive_a_crash_after_every_write<S: QueueStore>(
    open: &mut dyn FnMut() -> S,
    crash: &mut dyn FnMut(S) -> S,
) {
    for crash_after in 0..6 {
        let mut store = open();
        let mut acknowledged = Vec::new();
        for n in 0..crash_after {
            store.append(&record(n)).expect("append to a healthy store");
            acknowledged.push(record(n));
        }
        let mut store = crash(store);
        let recovery = store.recover().expect("recovery after a clean crash");
        assert_eq!(
            recovery.records, acknowledged,
            "crash after {crash_after} writes"
        );
        // The recovered store keeps working, and a second crash keeps everything.
        store.append(&record(99)).expect("append after recovery");
        acknowledged.push(record(99));
        let mut store = crash(store);
        assert_eq!(
            store.recover().expect("second recovery").records,
            acknowledged
        );
    }
}

fn compaction_replaces_the_log_atomically<S: QueueStore>(
    open: &mut dyn FnMut() -> S,
    crash: &mut dyn FnMut(S) -> S,
) {
    let mut store = open();
    for n in 0..5 {
        store.append(&record(n)).expect("append");
    }
    let kept = vec![record(1), record(3)];
    store.compact(&kept).expect("compact");
    let mut store = crash(store);
    assert_eq!(store.recover().expect("recover").records, kept);
    store.append(&record(7)).expect("append after compaction");
    let mut store = crash(store);
    assert_eq!(
        store.recover().expect("recover").records,
        vec![record(1), record(3), record(7)]
    );
}

fn an_oversized_record_is_refused_and_nothing_changes<S: QueueStore>(open: &mut dyn FnMut() -> S) {
    let mut store = open();
    store.append(&record(1)).expect("append");
    let error = store.append(&vec![b'x'; RECORD_BYTES_MAX + 1]).unwrap_err();
    assert_eq!(
        error,
        StoreError::RecordTooLarge {
            bytes: RECORD_BYTES_MAX + 1
        }
    );
    assert_eq!(store.recover().expect("recover").records, vec![record(1)]);
}
