//! What the coordinator tells the outside world: events (the change subscription, the trace
//! the simulation records, and the seven telemetry events of the seed) and the read-only
//! views behind the seed's twelve hooks.
//!
//! | Seed hook               | Coordinator API                                            |
//! |-------------------------|------------------------------------------------------------|
//! | `useSync`               | `enqueue`, `enqueue_blocking`, `sync_now`                  |
//! | `useSyncState`          | `state()` → [`SyncState`]                                  |
//! | `useSyncQueue`          | `queue()` (entries) and `stats()` → [`QueueStats`]         |
//! | `useSyncConflicts`      | `conflicts()` → [`LocalConflict`]s                         |
//! | `useConflictResolution` | `resolve_conflict`                                         |
//! | `useSyncHistory`        | `history()` → [`HistoryItem`]s                             |
//! | `useSyncMetrics`        | `metrics()` → [`ClientMetrics`]                            |
//! | `useEntitySync`         | `entity_status()` → [`EntityStatus`], `entity()`           |
//! | `useBatchSync`          | `enqueue_all` (all or nothing)                             |
//! | `useOfflineStatus`      | `is_online()`                                              |
//! | `useRealtimeSyncState`  | `take_events()`: every [`Event`] since the last call       |
//! | `useSyncMonitor`        | `monitor()` → [`Monitor`]                                  |

use super::queue::{QueueStats, Status};
use crate::entity::EntityType;
use crate::ids::{BatchId, ConflictId, DeviceId, EntityId, OpId};
use crate::op::OpKind;
use crate::server::wire::{ConflictRecord, DecisionCode};
use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// The seven telemetry events of the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TelemetryKind {
    /// An op goes out in a batch.
    SyncOperationStart,
    /// An op applied (or was already applied, or its conflict was decided).
    SyncOperationSuccess,
    /// An attempt of an op failed, or the op failed for good.
    SyncOperationError,
    /// A batch got an answer.
    SyncBatchSuccess,
    /// A batch got no answer (transport failure, timeout, refused request).
    SyncBatchError,
    /// The server reported a conflict for an op.
    SyncConflictDetected,
    /// A conflict was decided (by its strategy, or by a person's resolution).
    SyncConflictResolved,
}

impl TelemetryKind {
    /// The seed's event name.
    pub fn as_str(self) -> &'static str {
        match self {
            TelemetryKind::SyncOperationStart => "sync_operation_start",
            TelemetryKind::SyncOperationSuccess => "sync_operation_success",
            TelemetryKind::SyncOperationError => "sync_operation_error",
            TelemetryKind::SyncBatchSuccess => "sync_batch_success",
            TelemetryKind::SyncBatchError => "sync_batch_error",
            TelemetryKind::SyncConflictDetected => "sync_conflict_detected",
            TelemetryKind::SyncConflictResolved => "sync_conflict_resolved",
        }
    }
}

/// A status change of one op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpUpdate {
    /// The op.
    pub op_id: OpId,
    /// Its new status.
    pub status: Status,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Why (for failed attempts, rejected, dead-lettered, blocked, expired ops), or how the
    /// server decided a conflict.
    pub reason: Option<String>,
    /// For a failed attempt: the jittered delay drawn, in ms.
    pub delay_ms: Option<u64>,
    /// For a failed attempt: when it may go again.
    pub next_attempt_at_ms: Option<Millis>,
    /// The server's version after the op.
    pub version: Option<u64>,
    /// The conflict recorded for it.
    pub conflict_id: Option<ConflictId>,
    /// For a blocked op: the failed op it waits on.
    pub blocked_by: Option<OpId>,
}

impl OpUpdate {
    /// An update with only the op, status and attempts set.
    pub fn new(op_id: OpId, status: Status, attempts: u32) -> OpUpdate {
        OpUpdate {
            op_id,
            status,
            attempts,
            reason: None,
            delay_ms: None,
            next_attempt_at_ms: None,
            version: None,
            conflict_id: None,
            blocked_by: None,
        }
    }
}

/// Something that happened in the coordinator, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The queue was rebuilt from the store at start-up.
    Recovered {
        /// Open ops found.
        ops: usize,
        /// Open conflicts found (kept from earlier runs of the device).
        #[serde(skip_serializing_if = "is_zero")]
        open_conflicts: usize,
        /// Bytes of a torn last record that were cut off.
        torn_tail_bytes: usize,
    },
    /// An op is durable in the queue.
    Enqueued {
        /// The op.
        op_id: OpId,
        /// Its queue position.
        seq: u64,
        /// What it touches.
        entity_type: EntityType,
        /// Which entity.
        entity_id: EntityId,
        /// Create, update or delete.
        kind: OpKind,
        /// Its priority.
        priority: u8,
        /// Ops it blocks on (same entity and parents' creates).
        blockers: Vec<OpId>,
    },
    /// An op's status changed.
    Op(OpUpdate),
    /// A batch went out.
    BatchSent {
        /// The batch.
        batch_id: BatchId,
        /// Its ops in order.
        op_ids: Vec<OpId>,
    },
    /// A request got no usable answer.
    RequestFailed {
        /// `batch`, `pull`, `conflicts` or `resolve`.
        request: &'static str,
        /// Why (`timeout`, `offline`, a transport error, an HTTP status).
        reason: String,
    },
    /// A pull page was applied.
    Pulled {
        /// Changes on the page.
        changes: usize,
        /// The new cursor.
        cursor: u64,
        /// Whether more pages follow.
        has_more: bool,
    },
    /// The local view of an entity changed (the change subscription).
    EntityChanged {
        /// Its type.
        entity_type: EntityType,
        /// Its id.
        entity_id: EntityId,
    },
    /// The network went up or down.
    Online {
        /// Whether it is up now.
        online: bool,
    },
    /// The user gave up on a failed or blocked op: it left the queue unsent.
    Discarded {
        /// The op.
        op_id: OpId,
        /// Its status when it was discarded.
        status: Status,
    },
    /// The device began listing the user's open conflicts (`GET /api/sync/conflicts`,
    /// first page).
    ListingConflicts,
    /// The listing ended: the device's open conflicts are now the ones the server listed
    /// (new ones added, those resolved elsewhere closed).
    ConflictsListed {
        /// Every open conflict the device now knows, by id.
        open: Vec<ConflictId>,
    },
    /// A conflict was resolved by a person's request.
    ConflictResolved {
        /// The conflict.
        conflict_id: ConflictId,
    },
    /// The store refused a record after the state changed in memory (the change holds until
    /// the next crash, which rolls it back to the last durable state).
    StoreFailed {
        /// What the store said.
        error: String,
    },
    /// One of the seven telemetry events (only when `enable_telemetry`).
    Telemetry {
        /// Which one.
        kind: TelemetryKind,
        /// The op it is about.
        op_id: Option<OpId>,
        /// The batch it is about.
        batch_id: Option<BatchId>,
        /// The conflict it is about.
        conflict_id: Option<ConflictId>,
    },
}

/// `useSyncState`: the coordinator at a glance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncState {
    /// Whether the network is up.
    pub online: bool,
    /// Whether a request is in flight.
    pub syncing: bool,
    /// When the last request got an answer.
    pub last_sync_at_ms: Option<Millis>,
    /// The last request failure.
    pub last_error: Option<String>,
    /// The queue by status.
    pub queue: QueueStats,
    /// Conflicts waiting for a person.
    pub open_conflicts: usize,
    /// The pull cursor.
    pub cursor: u64,
}

/// `useSyncMonitor`: the three numbers a status bar shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Monitor {
    /// Whether the network is up.
    pub online: bool,
    /// Ops not yet settled (pending, in flight, blocked, dead-lettered).
    pub pending_count: usize,
    /// Conflicts waiting for a person.
    pub conflict_count: usize,
    /// Ops that failed for good or are dead-lettered.
    pub error_count: usize,
}

/// A conflict this device's ops ran into, or one of the user's conflicts waiting for a
/// person that the server listed (raised by any of the user's devices). Open ones are kept
/// in the device's store and survive a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConflict {
    /// The server's id for it.
    pub conflict_id: ConflictId,
    /// The op that ran into it.
    pub op_id: OpId,
    /// The device that sent that op (this one, or another device of the same user).
    pub device_id: DeviceId,
    /// The entity's type.
    pub entity_type: EntityType,
    /// The entity.
    pub entity_id: EntityId,
    /// How the server decided it (`client_applied`, `merged`, `server_kept`, `deleted`,
    /// `manual`); `None` when its answer named no decision.
    pub decision: Option<DecisionCode>,
    /// Whether it waits for a person (`manual` and not yet resolved).
    pub open: bool,
}

impl LocalConflict {
    /// An open conflict as the server lists it.
    pub fn listed(record: &ConflictRecord) -> LocalConflict {
        LocalConflict {
            conflict_id: record.conflict_id.clone(),
            op_id: record.op_id.clone(),
            device_id: record.device_id.clone(),
            entity_type: record.entity_type,
            entity_id: record.entity_id.clone(),
            decision: Some(record.decision),
            open: true,
        }
    }
}

/// One settled or failed op, most recent last (`useSyncHistory`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryItem {
    /// The op.
    pub op_id: OpId,
    /// Its entity type.
    pub entity_type: EntityType,
    /// Its entity.
    pub entity_id: EntityId,
    /// Create, update or delete.
    pub kind: OpKind,
    /// How it ended.
    pub status: Status,
    /// When (device time).
    pub at_ms: Millis,
    /// Failed attempts before it ended.
    pub attempts: u32,
    /// Why, when it failed.
    pub reason: Option<String>,
}

/// Client-side counters (`useSyncMetrics`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientMetrics {
    /// Batches sent.
    pub batches_sent: u64,
    /// Batches answered.
    pub batches_answered: u64,
    /// Batches without an answer.
    pub batches_failed: u64,
    /// Ops sent (counting every attempt).
    pub ops_sent: u64,
    /// Ops applied (duplicates included).
    pub ops_applied: u64,
    /// Ops answered as duplicates.
    pub duplicates: u64,
    /// Ops that ran into a conflict.
    pub conflicts: u64,
    /// Ops rejected.
    pub rejected: u64,
    /// Failed attempts.
    pub failed_attempts: u64,
    /// Ops dead-lettered.
    pub dead_lettered: u64,
    /// Ops expired.
    pub expired: u64,
    /// Pull pages applied.
    pub pulls: u64,
    /// Changes received by pulls.
    pub changes_pulled: u64,
    /// Sum of enqueue-to-settled times of settled ops, in ms.
    pub settle_ms_total: u64,
    /// Longest enqueue-to-settled time, in ms.
    pub settle_ms_max: u64,
    /// The round trip of the last answered request, in ms (device clock).
    pub last_round_trip_ms: Option<u64>,
}

/// `useEntitySync`: where one entity stands on this device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntityStatus {
    /// The server version the replica holds (`None` when never pulled or created).
    pub server_version: Option<u64>,
    /// Open local ops on it.
    pub open_ops: usize,
    /// The most pressing status among them (`None` when synced).
    pub status: Option<Status>,
    /// An open conflict on it.
    pub open_conflict: Option<ConflictId>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}
