//! A queue store in memory with crash semantics, for the simulation and model tests.
//!
//! Writes go to a volatile buffer; `sync` moves them to the durable image. A crash drops the
//! volatile buffer, optionally leaving a torn prefix of it on "disk". Disk faults (a failing
//! fsync, a full disk) are switched on from outside. Nothing here reads a clock or an RNG:
//! the simulation decides, from its seed, how much of a write a crash tears.

use crate::client::store::{QueueStore, Recovery, StoreError, decode_log, encode_frame};

/// The simulated disk.
#[derive(Clone, Debug, Default)]
pub struct SimStore {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    /// Bytes the disk holds at most; `None` is unlimited.
    pub capacity_bytes: Option<usize>,
    /// While true, every fsync fails (and the write it covered stays volatile).
    pub fail_sync: bool,
    /// How many bytes of the unsynced writes the next crash leaves behind as a torn tail.
    pub torn_bytes_on_crash: usize,
    /// A planted bug: `append` acknowledges without syncing (see [`crate::planted`]).
    pub acks_before_fsync: bool,
}

impl SimStore {
    /// An empty, healthy store.
    pub fn new() -> SimStore {
        SimStore::default()
    }

    /// Writes `bytes` without syncing them.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(capacity) = self.capacity_bytes {
            let used = self.durable.len() + self.volatile.len();
            if used + bytes.len() > capacity {
                crate::coverage::hit("store.disk_full");
                return Err(StoreError::DiskFull {
                    needed: used + bytes.len() - capacity,
                });
            }
        }
        self.volatile.extend_from_slice(bytes);
        Ok(())
    }

    /// Makes every written byte durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.fail_sync {
            crate::coverage::hit("store.fsync_failed");
            return Err(StoreError::SyncFailed {
                message: "simulated fsync failure".to_owned(),
            });
        }
        self.durable.append(&mut self.volatile);
        Ok(())
    }

    /// The process dies: unsynced bytes are lost, except a torn prefix of
    /// `torn_bytes_on_crash` bytes.
    pub fn crash(&mut self) {
        let torn = self.torn_bytes_on_crash.min(self.volatile.len());
        self.durable.extend_from_slice(&self.volatile[..torn]);
        self.volatile.clear();
    }

    /// The durable image: what a restart would read.
    pub fn durable_image(&self) -> &[u8] {
        &self.durable
    }

    /// Bytes on the durable image (what a restart would read).
    pub fn durable_bytes(&self) -> usize {
        self.durable.len()
    }

    /// Flips one bit of the durable image (a corrupted sector), for fault injection.
    pub fn corrupt_bit(&mut self, byte_offset: usize) {
        if let Some(byte) = self.durable.get_mut(byte_offset) {
            *byte ^= 1;
        }
    }
}

impl QueueStore for SimStore {
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        let frame = encode_frame(record)?;
        let volatile_len = self.volatile.len();
        self.write(&frame)?;
        if self.acks_before_fsync {
            return Ok(());
        }
        self.sync().inspect_err(|_| {
            // A refused append must not surface later (the next successful fsync would
            // otherwise make it durable): the store takes the frame back.
            self.volatile.truncate(volatile_len);
        })
    }

    fn recover(&mut self) -> Result<Recovery, StoreError> {
        // Recovery reads what is on disk, so unsynced writes of the running process are
        // first made durable (as an orderly restart would) or, after crash(), already gone.
        self.sync()?;
        let (recovery, intact) = decode_log(&self.durable)?;
        self.durable.truncate(intact);
        Ok(recovery)
    }

    fn compact(&mut self, records: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut image = Vec::new();
        for record in records {
            image.extend(encode_frame(record)?);
        }
        // Like write-to-temp, fsync, rename: the new image replaces the old in one step.
        self.sync()?;
        self.durable = image;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::queue_store_conformance as conformance;

    #[test]
    fn the_sim_store_passes_the_conformance_suite() {
        conformance::run(&mut SimStore::new, &mut |mut store: SimStore| {
            store.crash();
            store
        });
    }

    #[test]
    fn a_crash_with_a_torn_write_keeps_every_acknowledged_record() {
        let mut store = SimStore::new();
        store.append(b"acked").unwrap();
        store.fail_sync = true;
        assert!(matches!(
            store.append(b"never acked"),
            Err(StoreError::SyncFailed { .. })
        ));
        store.fail_sync = false;
        store
            .write(b"a frame being written when the power went")
            .unwrap();
        store.torn_bytes_on_crash = 20;
        store.crash();
        let recovery = store.recover().unwrap();
        assert_eq!(recovery.records, vec![b"acked".to_vec()]);
        assert_eq!(recovery.torn_tail_bytes, 20);
        // The torn tail is gone for good: the next append follows the acked record directly.
        store.append(b"next").unwrap();
        store.crash();
        assert_eq!(
            store.recover().unwrap().records,
            vec![b"acked".to_vec(), b"next".to_vec()]
        );
    }

    #[test]
    fn a_refused_append_never_surfaces_after_a_later_sync() {
        let mut store = SimStore::new();
        store.fail_sync = true;
        assert!(store.append(b"refused").is_err());
        store.fail_sync = false;
        store.append(b"accepted").unwrap();
        store.crash();
        assert_eq!(store.recover().unwrap().records, vec![b"accepted".to_vec()]);
    }

    #[test]
    fn a_full_disk_refuses_the_write_and_keeps_the_old_records() {
        let mut store = SimStore::new();
        store.append(b"old").unwrap();
        store.capacity_bytes = Some(store.durable_bytes() + 10);
        assert!(matches!(
            store.append(b"does not fit"),
            Err(StoreError::DiskFull { .. })
        ));
        store.crash();
        assert_eq!(store.recover().unwrap().records, vec![b"old".to_vec()]);
    }

    #[test]
    fn a_corrupted_sector_is_reported() {
        let mut store = SimStore::new();
        store.append(b"one").unwrap();
        store.append(b"two").unwrap();
        store.corrupt_bit(37); // inside the first record's payload
        assert!(matches!(
            store.recover(),
            Err(StoreError::Corrupt { offset: 0, .. })
        ));
    }
}
