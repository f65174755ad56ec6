//! The client queue's durable log on a real file: append-only frames (length + SHA-256 +
//! record, see `rockhound_engine::client::store`), `fsync` before an append returns,
//! compaction by write-temp-fsync-rename, and recovery that cuts a torn tail and refuses a
//! corrupt record.

use rockhound_engine::client::store::{QueueStore, Recovery, StoreError, decode_log, encode_frame};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// A queue log in one file.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    file: File,
}

fn io_error(error: std::io::Error) -> StoreError {
    match error.kind() {
        ErrorKind::StorageFull => StoreError::DiskFull { needed: 0 },
        _ => StoreError::Io {
            message: error.to_string(),
        },
    }
}

impl FileStore {
    /// Opens (or creates) the log at `path`. Call [`QueueStore::recover`] before appending.
    pub fn open(path: impl AsRef<Path>) -> Result<FileStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_error)?;
        Ok(FileStore { path, file })
    }

    /// The file the log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sync_directory(&self) -> Result<(), StoreError> {
        // A rename is durable only once its directory entry is; on Unix that takes an fsync
        // of the directory itself.
        #[cfg(unix)]
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error)?;
        }
        Ok(())
    }
}

impl QueueStore for FileStore {
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        let frame = encode_frame(record)?;
        let length_before = self.file.metadata().map_err(io_error)?.len();
        let written = self
            .file
            .write_all(&frame)
            .map_err(io_error)
            .and_then(|()| {
                self.file.sync_data().map_err(|e| StoreError::SyncFailed {
                    message: e.to_string(),
                })
            });
        if written.is_err() {
            // Take the refused frame back so a later fsync cannot make it durable. If even
            // that fails, recovery still sees at worst a torn or whole unacknowledged tail.
            let _ = self.file.set_len(length_before);
        }
        written
    }

    fn recover(&mut self) -> Result<Recovery, StoreError> {
        let mut bytes = Vec::new();
        File::open(&self.path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_error)?;
        let (recovery, intact) = decode_log(&bytes)?;
        if intact < bytes.len() {
            // Cut the torn tail so the next append starts on a frame boundary.
            self.file.set_len(intact as u64).map_err(io_error)?;
            self.file.sync_all().map_err(|e| StoreError::SyncFailed {
                message: e.to_string(),
            })?;
        }
        Ok(recovery)
    }

    fn compact(&mut self, records: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut image = Vec::new();
        for record in records {
            image.extend(encode_frame(record)?);
        }
        let temporary = self.path.with_extension("compact");
        let mut file = File::create(&temporary).map_err(io_error)?;
        file.write_all(&image).map_err(io_error)?;
        file.sync_all().map_err(|e| StoreError::SyncFailed {
            message: e.to_string(),
        })?;
        std::fs::rename(&temporary, &self.path).map_err(io_error)?;
        self.sync_directory()?;
        *self = FileStore::open(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rockhound_engine::testing::queue_store_conformance as conformance;

    #[test]
    fn the_file_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        let mut open = || {
            n += 1;
            FileStore::open(dir.path().join(format!("queue-{n}.log"))).unwrap()
        };
        // A crash is the process dying: the handle is gone and a new process reopens the file.
        let mut crash = |store: FileStore| {
            let path = store.path().to_path_buf();
            drop(store);
            FileStore::open(path).unwrap()
        };
        conformance::run(&mut open, &mut crash);
    }

    #[test]
    fn a_torn_tail_on_disk_is_cut_and_later_appends_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.log");
        let mut store = FileStore::open(&path).unwrap();
        store.append(b"acked").unwrap();
        // The crash hit mid-append: half a frame reached the disk.
        let half = &encode_frame(b"never acknowledged").unwrap()[..20];
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(half)
            .unwrap();
        let mut store = FileStore::open(&path).unwrap();
        let recovery = store.recover().unwrap();
        assert_eq!(
            (recovery.records, recovery.torn_tail_bytes),
            (vec![b"acked".to_vec()], 20)
        );
        store.append(b"next").unwrap();
        let mut store = FileStore::open(&path).unwrap();
        assert_eq!(
            store.recover().unwrap().records,
            vec![b"acked".to_vec(), b"next".to_vec()]
        );
    }

    #[test]
    fn a_corrupt_record_on_disk_is_reported_and_the_file_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.log");
        let mut store = FileStore::open(&path).unwrap();
        store.append(b"first").unwrap();
        store.append(b"second").unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[37] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let mut store = FileStore::open(&path).unwrap();
        assert_eq!(
            store.recover().unwrap_err().to_string(),
            "corrupt record at byte 0: checksum of the 5-byte record does not match"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "nothing is truncated on corruption"
        );
    }

    /// A device over the real file store: every op whose enqueue returned Ok is back after
    /// the process dies, in order, with the same idempotency keys, and status changes are
    /// kept; a corrupted log refuses to start, hands the store back, and loses nothing.
    #[test]
    fn a_coordinator_over_the_file_store_recovers_every_acknowledged_op() {
        use rockhound_engine::client::coordinator::{Coordinator, Edit, EditAction, Request};
        use rockhound_engine::{DeviceId, EntityId, EntityType, Millis, SyncConfig};
        use serde_json::json;
        let now = Millis(1_780_000_000_000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.log");
        let open = |incarnation| {
            let store = FileStore::open(&path).unwrap();
            Coordinator::open(
                DeviceId("phone".into()),
                incarnation,
                SyncConfig::default(),
                store,
                1,
                now,
            )
        };
        let edit = |n: usize| Edit {
            entity_type: EntityType::Tag,
            entity_id: EntityId(format!("tag-{n}")),
            action: EditAction::Create(
                json!({"label": format!("tag {n}")})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        };
        let mut device = open(0).unwrap();
        let ids: Vec<_> = (0..3)
            .map(|n| device.enqueue(now, now, edit(n)).unwrap())
            .collect();
        device.set_online(now, true);
        let Some(Request::Batch(sent)) = device.poll(now) else {
            panic!("a batch goes out");
        };
        let keys: Vec<_> = sent.ops.iter().map(|o| o.idempotency_key.clone()).collect();
        // The process dies with the batch in flight.
        drop(device);
        let mut device = open(1).unwrap();
        let recovered: Vec<_> = device.queue().map(|e| e.op.op_id.clone()).collect();
        assert_eq!(recovered, ids, "every acknowledged op is back, in order");
        device.set_online(now, true);
        let Some(Request::Batch(again)) = device.poll(now) else {
            panic!("the ops go again");
        };
        let again_keys: Vec<_> = again
            .ops
            .iter()
            .map(|o| o.idempotency_key.clone())
            .collect();
        assert_eq!(again_keys, keys, "under the same idempotency keys");
        drop(device);
        // One flipped bit in the log: the device refuses to start and keeps the file as it was.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let Err(failed) = open(2) else {
            panic!("a corrupt log does not open");
        };
        assert!(
            failed.error.to_string().contains("corrupt record"),
            "{}",
            failed.error
        );
        assert_eq!(failed.store.path(), path.as_path(), "the store comes back");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "nothing was truncated"
        );
    }
}
