//! What the queue holds: an op's [`Status`] on this device, its [`Entry`] (the op with its
//! attempts, schedule and blockers) and the counts of [`QueueStats`].

use crate::entity::EntityType;
use crate::ids::{ConflictId, EntityId, OpId};
use crate::op::{Op, OpKind};
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where an op stands on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting to be sent (maybe backing off, maybe waiting on a blocker).
    Pending,
    /// Part of the batch in flight.
    InFlight,
    /// The server applied it (or had applied it: a duplicate).
    Applied,
    /// The server detected a conflict and decided it (or recorded it for a person).
    Conflict,
    /// The server refused it for good; `reason` says why.
    Rejected,
    /// Dead-lettered: `max_retries` attempts failed. Kept, visible, retryable by the user.
    Error,
    /// It waited longer than the queue TTL and will not be sent.
    Expired,
    /// An op it waits on failed for good; `blocked_by` names it.
    Blocked,
}

impl Status {
    /// The name used in events and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InFlight => "in_flight",
            Status::Applied => "applied",
            Status::Conflict => "conflict",
            Status::Rejected => "rejected",
            Status::Error => "error",
            Status::Expired => "expired",
            Status::Blocked => "blocked",
        }
    }

    /// Whether the op has left the queue for good (applied or a decided conflict).
    pub fn is_settled(self) -> bool {
        matches!(self, Status::Applied | Status::Conflict)
    }

    /// Whether the op failed for good and blocks what waits on it.
    pub fn is_failed(self) -> bool {
        matches!(self, Status::Rejected | Status::Error | Status::Expired)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One op in the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Position in the device's queue (enqueue order); unique for the device's lifetime.
    pub seq: u64,
    /// The op as it goes on the wire (sealed).
    pub op: Op,
    /// Where it stands.
    pub status: Status,
    /// Failed attempts so far (transport failures, timeouts, `retry` answers).
    pub attempts: u32,
    /// Not sent again before this time.
    pub next_attempt_at_ms: Millis,
    /// When it was enqueued (device time); the TTL counts from here.
    pub enqueued_at_ms: Millis,
    /// Why it is rejected, dead-lettered, blocked or expired.
    pub reason: Option<String>,
    /// For a blocked op: the failed op it waits on.
    pub blocked_by: Option<OpId>,
    /// The server's version after the op, once known.
    pub version: Option<u64>,
    /// The conflict the server recorded for it.
    pub conflict_id: Option<ConflictId>,
    /// Seqs of the ops it blocks on (fixed at enqueue).
    pub blockers: Vec<u64>,
    pub(super) dependants: Vec<u64>,
    pub(super) waiting: usize,
}

impl Entry {
    /// A new pending entry, due at once.
    pub fn new(seq: u64, op: Op, enqueued_at_ms: Millis, blockers: Vec<u64>) -> Entry {
        Entry {
            seq,
            op,
            status: Status::Pending,
            attempts: 0,
            next_attempt_at_ms: enqueued_at_ms,
            enqueued_at_ms,
            reason: None,
            blocked_by: None,
            version: None,
            conflict_id: None,
            blockers,
            dependants: Vec::new(),
            waiting: 0,
        }
    }

    /// The entity the op touches.
    pub fn entity(&self) -> (EntityType, EntityId) {
        (self.op.entity_type, self.op.entity_id.clone())
    }

    /// The version the entity will have once this op applies cleanly.
    pub fn version_after(&self) -> u64 {
        match self.op.kind {
            OpKind::Create => 1,
            OpKind::Update | OpKind::Delete => self.op.base_version + 1,
        }
    }
}

/// Counts of the queue by status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Pending ops (including those backing off or waiting on a blocker).
    pub pending: usize,
    /// Of the pending ops, those ready to go now.
    pub ready: usize,
    /// Ops in the batch in flight.
    pub in_flight: usize,
    /// Rejected ops still shown.
    pub rejected: usize,
    /// Dead-lettered ops.
    pub error: usize,
    /// Expired ops still shown.
    pub expired: usize,
    /// Blocked ops.
    pub blocked: usize,
}
