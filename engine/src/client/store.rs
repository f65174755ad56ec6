//! The durable queue's storage seam: an append-only log of records, each framed with its
//! length and SHA-256, that survives crashes.
//!
//! Frame layout: `len: u32 little-endian | sha256(payload): 32 bytes | payload: len bytes`.
//! Recovery reads frames in order. An incomplete or mismatching *last* frame is a torn write
//! (the crash hit mid-append, so the record was never acknowledged): it is cut off and
//! reported. A mismatching frame with more data after it is corruption: recovery refuses
//! with the offset, because skipping it could silently drop an acknowledged op.

use sha2::{Digest, Sha256};

/// Bytes of a frame header: length plus checksum.
pub const FRAME_HEADER_BYTES: usize = 4 + 32;
/// The largest record accepted, in bytes.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;

/// A storage failure. Nothing is acknowledged when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The record is larger than [`RECORD_BYTES_MAX`].
    #[error("record of {bytes} bytes is larger than the limit of {RECORD_BYTES_MAX}")]
    RecordTooLarge {
        /// Its size.
        bytes: usize,
    },
    /// The disk has no room for the record.
    #[error("disk full: {needed} more bytes do not fit")]
    DiskFull {
        /// Bytes that did not fit.
        needed: usize,
    },
    /// Flushing to stable storage failed; the record may or may not have reached it.
    #[error("fsync failed: {message}")]
    SyncFailed {
        /// What the system said.
        message: String,
    },
    /// A record in the middle of the log does not match its checksum.
    #[error("corrupt record at byte {offset}: {detail}")]
    Corrupt {
        /// Where the bad frame starts.
        offset: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// Any other I/O failure.
    #[error("i/o: {message}")]
    Io {
        /// What the system said.
        message: String,
    },
}

/// What recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Every intact record, in append order.
    pub records: Vec<Vec<u8>>,
    /// Bytes of a torn last frame that were cut off (0 when the log ended cleanly).
    pub torn_tail_bytes: usize,
}

/// A durable append-only record log.
pub trait QueueStore {
    /// Appends `record` and returns only once it is durable (fsynced). On error, the record
    /// is not acknowledged; it may still surface after a crash, as a whole record or a torn
    /// tail, which is why records must be idempotent to replay.
    fn append(&mut self, record: &[u8]) -> Result<(), StoreError>;
    /// Reads back the durable log, cutting off (and reporting) a torn tail.
    fn recover(&mut self) -> Result<Recovery, StoreError>;
    /// Atomically replaces the whole log with `records` (compaction).
    fn compact(&mut self, records: &[Vec<u8>]) -> Result<(), StoreError>;
}

/// The frame for one record.
pub fn encode_frame(record: &[u8]) -> Result<Vec<u8>, StoreError> {
    if record.len() > RECORD_BYTES_MAX {
        return Err(StoreError::RecordTooLarge {
            bytes: record.len(),
        });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + record.len());
    let len = u32::try_from(record.len()).expect("RECORD_BYTES_MAX fits in u32");
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&Sha256::digest(record));
    frame.extend_from_slice(record);
    Ok(frame)
}

/// Decodes a whole log. Returns the records and the length of the intact prefix.
pub fn decode_log(bytes: &[u8]) -> Result<(Recovery, usize), StoreError> {
    let mut recovery = Recovery::default();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let torn = |recovery: Recovery| {
            crate::coverage::hit("store.torn_tail_cut");
            Ok((
                Recovery {
                    torn_tail_bytes: rest.len(),
                    ..recovery
                },
                offset,
            ))
        };
        if rest.len() < FRAME_HEADER_BYTES {
            return torn(recovery);
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let end = FRAME_HEADER_BYTES.saturating_add(len);
        if len > RECORD_BYTES_MAX || rest.len() < end {
            // A length that runs past the end can only be the last, torn frame; a length
            // beyond the limit with data after it is corruption.
            if len > RECORD_BYTES_MAX && rest.len() >= FRAME_HEADER_BYTES + RECORD_BYTES_MAX {
                return Err(StoreError::Corrupt {
                    offset: offset as u64,
                    detail: format!("length {len} is beyond the record limit"),
                });
            }
            return torn(recovery);
        }
        let payload = &rest[FRAME_HEADER_BYTES..end];
        if Sha256::digest(payload).as_slice() != &rest[4..FRAME_HEADER_BYTES] {
            if end == rest.len() {
                return torn(recovery);
            }
            return Err(StoreError::Corrupt {
                offset: offset as u64,
                detail: format!("checksum of the {len}-byte record does not match"),
            });
        }
        recovery.records.push(payload.to_vec());
        offset += end;
    }
    Ok((recovery, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(records: &[&[u8]]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|r| encode_frame(r).unwrap())
            .collect()
    }

    #[test]
    fn frames_round_trip() {
        let bytes = log(&[b"a", b"", b"hello"]);
        let (recovery, intact) = decode_log(&bytes).unwrap();
        assert_eq!(
            recovery.records,
            vec![b"a".to_vec(), vec![], b"hello".to_vec()]
        );
        assert_eq!((recovery.torn_tail_bytes, intact), (0, bytes.len()));
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_and_reported_at_every_length() {
        let whole = log(&[b"first", b"second record"]);
        let first_len = encode_frame(b"first").unwrap().len();
        for cut in first_len + 1..whole.len() {
            let (recovery, intact) = decode_log(&whole[..cut]).unwrap();
            assert_eq!(recovery.records, vec![b"first".to_vec()], "cut at {cut}");
            assert_eq!(
                (recovery.torn_tail_bytes, intact),
                (cut - first_len, first_len)
            );
        }
    }

    #[test]
    fn a_garbled_last_frame_is_a_torn_write() {
        let mut bytes = log(&[b"first", b"second"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let (recovery, _) = decode_log(&bytes).unwrap();
        assert_eq!(recovery.records, vec![b"first".to_vec()]);
        assert!(recovery.torn_tail_bytes > 0);
    }

    #[test]
    fn a_corrupt_middle_record_is_reported_not_skipped() {
        let mut bytes = log(&[b"first", b"second", b"third"]);
        bytes[FRAME_HEADER_BYTES + 1] ^= 0xff;
        assert_eq!(
            decode_log(&bytes).unwrap_err().to_string(),
            "corrupt record at byte 0: checksum of the 5-byte record does not match"
        );
    }
}
