//! The records of the durable queue log: what the coordinator appends through its
//! [`QueueStore`](super::store::QueueStore), and how a restart rebuilds the queue from them.
//!
//! Every record is idempotent to replay: applying the log twice, or a prefix of it, gives a
//! queue no newer than the one acknowledged. A record lost to a crash after its append failed
//! only rolls an op back to an earlier status (a settled op goes out again and comes back as
//! a duplicate), never forward.

use super::observe::LocalConflict;
use super::queue::{Entry, Status};
use crate::ids::ConflictId;
use crate::op::Op;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One op as enqueued.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enqueued {
    /// Its queue position.
    pub seq: u64,
    /// The sealed op.
    pub op: Op,
    /// When it was enqueued (device time).
    pub enqueued_at_ms: Millis,
    /// Seqs of the ops it blocks on.
    pub blockers: Vec<u64>,
}

/// One record of the queue log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// Ops enqueued together (one op, or a user's batch enqueue, all or nothing).
    Enqueued {
        /// The ops.
        ops: Vec<Enqueued>,
    },
    /// An attempt failed; the op waits until `next_attempt_at_ms` (or is dead-lettered).
    Attempted {
        /// The op.
        seq: u64,
        /// Failed attempts so far.
        attempts: u32,
        /// When it may go again.
        next_attempt_at_ms: Millis,
        /// Whether it is dead-lettered.
        dead: bool,
        /// Why the attempt failed.
        reason: String,
    },
    /// The op reached a final status (applied, conflict, rejected, expired).
    Finished {
        /// The op.
        seq: u64,
        /// The status.
        status: Status,
        /// Why, for rejected and expired.
        reason: Option<String>,
        /// The server's version after it.
        version: Option<u64>,
        /// The conflict recorded for it.
        conflict_id: Option<ConflictId>,
    },
    /// The user retried a dead-lettered op.
    Retried {
        /// The op.
        seq: u64,
        /// When (device time); it is due from then.
        at_ms: Millis,
    },
    /// The user discarded a failed op.
    Discarded {
        /// The op.
        seq: u64,
    },
    /// A conflict waits for a person (met by this device's op, or listed by the server).
    ConflictOpen {
        /// The conflict.
        conflict: LocalConflict,
    },
    /// A conflict no longer waits: resolved here, or found resolved elsewhere.
    ConflictClosed {
        /// The conflict.
        conflict_id: ConflictId,
    },
    /// Seqs below this were used (written first by compaction, so seqs are never reused).
    NextSeq {
        /// The next free seq.
        seq: u64,
    },
}

impl Record {
    /// The record as log bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("records always serialize")
    }

    /// A record from log bytes.
    pub fn decode(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The queue state a log describes: open entries by seq and the next free seq.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Entries still open (pending, rejected, error, expired), without index fields.
    pub entries: BTreeMap<u64, Entry>,
    /// The next free seq.
    pub next_seq: u64,
    /// Ops that settled (applied or conflict) according to the log.
    pub settled: usize,
    /// Conflicts still waiting for a person, by id.
    pub conflicts: BTreeMap<ConflictId, LocalConflict>,
}

/// Rebuilds the queue state from log records, in order.
pub fn replay(records: impl IntoIterator<Item = Record>) -> Replayed {
    let mut state = Replayed::default();
    for record in records {
        match record {
            Record::Enqueued { ops } => {
                for enqueued in ops {
                    state.next_seq = state.next_seq.max(enqueued.seq + 1);
                    state.entries.insert(
                        enqueued.seq,
                        Entry::new(
                            enqueued.seq,
                            enqueued.op,
                            enqueued.enqueued_at_ms,
                            enqueued.blockers,
                        ),
                    );
                }
            }
            Record::Attempted {
                seq,
                attempts,
                next_attempt_at_ms,
                dead,
                reason,
            } => {
                if let Some(entry) = state.entries.get_mut(&seq) {
                    entry.attempts = attempts;
                    entry.next_attempt_at_ms = next_attempt_at_ms;
                    entry.reason = Some(reason);
                    entry.status = if dead { Status::Error } else { Status::Pending };
                }
            }
            Record::Finished {
                seq,
                status,
                reason,
                version,
                conflict_id,
            } => {
                if status.is_settled() {
                    if state.entries.remove(&seq).is_some() {
                        state.settled += 1;
                    }
                } else if let Some(entry) = state.entries.get_mut(&seq) {
                    entry.status = status;
                    entry.reason = reason;
                    entry.version = version;
                    entry.conflict_id = conflict_id;
                }
            }
            Record::Retried { seq, at_ms } => {
                if let Some(entry) = state.entries.get_mut(&seq) {
                    entry.status = Status::Pending;
                    entry.attempts = 0;
                    entry.reason = None;
                    entry.next_attempt_at_ms = at_ms;
                }
            }
            Record::Discarded { seq } => {
                state.entries.remove(&seq);
            }
            Record::ConflictOpen { conflict } => {
                state
                    .conflicts
                    .insert(conflict.conflict_id.clone(), conflict);
            }
            Record::ConflictClosed { conflict_id } => {
                state.conflicts.remove(&conflict_id);
            }
            Record::NextSeq { seq } => state.next_seq = state.next_seq.max(seq),
        }
    }
    state
}

/// The records that describe `entry` on its own (for compaction).
pub fn describe(entry: &Entry) -> Vec<Record> {
    let mut records = vec![Record::Enqueued {
        ops: vec![Enqueued {
            seq: entry.seq,
            op: entry.op.clone(),
            enqueued_at_ms: entry.enqueued_at_ms,
            blockers: entry.blockers.clone(),
        }],
    }];
    match entry.status {
        Status::Pending | Status::InFlight | Status::Blocked => {
            if entry.attempts > 0 {
                records.push(Record::Attempted {
                    seq: entry.seq,
                    attempts: entry.attempts,
                    next_attempt_at_ms: entry.next_attempt_at_ms,
                    dead: false,
                    reason: entry.reason.clone().unwrap_or_default(),
                });
            }
        }
        Status::Error => records.push(Record::Attempted {
            seq: entry.seq,
            attempts: entry.attempts,
            next_attempt_at_ms: entry.next_attempt_at_ms,
            dead: true,
            reason: entry.reason.clone().unwrap_or_default(),
        }),
        Status::Rejected | Status::Expired | Status::Applied | Status::Conflict => {
            records.push(Record::Finished {
                seq: entry.seq,
                status: entry.status,
                reason: entry.reason.clone(),
                version: entry.version,
                conflict_id: entry.conflict_id.clone(),
            });
        }
    }
    records
}
