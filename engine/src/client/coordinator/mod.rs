//! The client coordinator: a sans-IO state machine over the durable queue.
//!
//! The caller owns the clock and the network. It passes `now` into every call, feeds in what
//! happened (a user edit, the network going up or down, an answer, a failure), asks
//! [`Coordinator::poll`] for the next request to send and [`Coordinator::next_wake_at`] for
//! when to call again, and drains [`Coordinator::take_events`]. One request is in flight at a
//! time; pushes go before pulls, and a pull follows every answered batch, every reconnect and
//! every `auto_sync_interval_ms`.
//!
//! `now` is the device's monotonic time, used for timers (backoff, timeouts, TTL). The wall
//! clock, which may be skewed, only stamps ops (`client_timestamp_ms`, `created_at_ms`).
//!
//! This file holds the types, `open` and the log; the methods live by role in [`edits`] (what
//! the user does), [`machine`] (on/offline, `poll`, timers, failures, invariants),
//! [`answers`] (what the server said) and [`views`] (what the app reads).

mod answers;
mod edits;
mod machine;
mod views;

use super::observe::{ClientMetrics, Event, HistoryItem, LocalConflict, TelemetryKind};
use super::queue::{Queue, Status};
use super::record::{self, Record};
use super::replica::Replica;
use super::store::{QueueStore, StoreError};
use crate::config::SyncConfig;
use crate::entity::EntityType;
use crate::ids::{BatchId, ConflictId, DeviceId, EntityId, OpId};
use crate::op::{BATCH_OP_COUNT_MAX, Batch, OpError};
use crate::server::wire::ResolveRequest;
use crate::time::Millis;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};

/// Settled or failed ops kept for `history()`.
pub const HISTORY_LEN_MAX: usize = 1_000;
/// Changes asked for per pull page unless the configuration says otherwise.
pub const PULL_PAGE_LEN: usize = 500;
/// Log records beyond twice the open ops that trigger a compaction.
pub const COMPACT_SLACK_RECORDS: usize = 1_000;
/// Ops one `enqueue_all` takes at most.
pub const ENQUEUE_ALL_LEN_MAX: usize = BATCH_OP_COUNT_MAX;

const _: () = assert!(PULL_PAGE_LEN <= crate::server::PULL_LIMIT_MAX);

/// What a user does to one entity.
#[derive(Clone, Debug, PartialEq)]
pub enum EditAction {
    /// Creates it with these fields (the coordinator adds `id`).
    Create(Map<String, Value>),
    /// Changes these fields (RFC 7396: `null` removes one).
    Update(Map<String, Value>),
    /// Deletes it.
    Delete,
}

/// A user's edit of one entity.
#[derive(Clone, Debug, PartialEq)]
pub struct Edit {
    /// The entity's type.
    pub entity_type: EntityType,
    /// The entity.
    pub entity_id: EntityId,
    /// What happens to it.
    pub action: EditAction,
}

/// Why an edit was not enqueued. Nothing of it is stored.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EnqueueError {
    /// The queue holds `max_queue_size` ops.
    #[error("queue full: {len} ops queued, limit {max}; old ops are kept, this one is refused")]
    QueueFull {
        /// Ops in the queue.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More edits than one call takes.
    #[error("{count} edits in one call, more than the limit of {ENQUEUE_ALL_LEN_MAX}")]
    TooMany {
        /// Edits passed.
        count: usize,
    },
    /// An update or delete of an entity the device does not know (or that is deleted).
    #[error("{entity_type} {entity_id} does not exist on this device")]
    UnknownEntity {
        /// Its type.
        entity_type: EntityType,
        /// Its id.
        entity_id: EntityId,
    },
    /// A create of an entity that exists (or existed: ids are never reused).
    #[error("{entity_type} {entity_id} already exists on this device")]
    AlreadyExists {
        /// Its type.
        entity_type: EntityType,
        /// Its id.
        entity_id: EntityId,
    },
    /// The edit references a parent the device does not know.
    #[error("{field} {parent_id} does not exist on this device")]
    UnknownParent {
        /// The reference field.
        field: String,
        /// The referenced id.
        parent_id: String,
    },
    /// The op fails validation.
    #[error("invalid op: {0}")]
    Invalid(#[from] OpError),
    /// An update given as two versions that do not make one ([`Coordinator::enqueue_change`]).
    #[error("{entity_type} {entity_id}: {problem}")]
    NotAChange {
        /// Its type.
        entity_type: EntityType,
        /// Its id.
        entity_id: EntityId,
        /// What is wrong: not two objects, or a changed id.
        problem: &'static str,
    },
    /// The store could not make the op durable.
    #[error("not stored: {0}")]
    Store(#[from] StoreError),
}

/// Why a user action on a queued op or conflict was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// No such op in the queue.
    #[error("op {0} is not in the queue")]
    UnknownOp(OpId),
    /// The op is not in a status the action applies to.
    #[error("op {op_id} is {status}; {action} needs {needs}")]
    WrongStatus {
        /// The op.
        op_id: OpId,
        /// Its status.
        status: Status,
        /// The action asked for.
        action: &'static str,
        /// The status(es) the action needs.
        needs: &'static str,
    },
    /// No open conflict with that id on this device.
    #[error("no open conflict {0} on this device")]
    UnknownConflict(ConflictId),
    /// The store could not record the action.
    #[error("not stored: {0}")]
    Store(#[from] StoreError),
}

/// Why the coordinator could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The store refused recovery (a corrupt record in the middle of the log).
    #[error("queue store: {0}")]
    Store(#[from] StoreError),
    /// A record passed its checksum but does not decode (written by another version?).
    #[error("queue record {index} does not decode: {detail}")]
    BadRecord {
        /// Its position in the log.
        index: usize,
        /// What is wrong.
        detail: String,
    },
}

/// A failed start: why, and the store, handed back untouched so that nothing in it is lost
/// and the caller can try again (after the disk recovers, say).
pub struct OpenFailed<S> {
    /// Why the coordinator could not start.
    pub error: OpenError,
    /// The store it was given.
    pub store: S,
}

impl<S> std::fmt::Debug for OpenFailed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFailed")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<S> std::fmt::Display for OpenFailed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<S> std::error::Error for OpenFailed<S> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A request for the caller to send.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// `POST /api/sync/batch`.
    Batch(Batch),
    /// `GET /api/sync/changes?since=<cursor>&limit=<limit>&device_id=…`.
    Pull {
        /// Changes after this cursor.
        cursor: u64,
        /// Page length.
        limit: usize,
    },
    /// `POST /api/sync/conflicts/<id>/resolve`.
    Resolve {
        /// The conflict.
        conflict_id: ConflictId,
        /// The resolution.
        request: ResolveRequest,
    },
    /// `GET /api/sync/conflicts?status=open&since=<cursor>&limit=<limit>`: one page of the
    /// user's open conflicts (the listing that follows a finished pull).
    Conflicts {
        /// Conflicts created after this cursor (0 for the first page).
        cursor: u64,
        /// Page length.
        limit: usize,
    },
}

#[derive(Clone, Debug)]
enum InFlight {
    Batch {
        batch_id: BatchId,
        seqs: Vec<u64>,
    },
    Pull,
    Resolve {
        conflict_id: ConflictId,
        request: ResolveRequest,
    },
    Conflicts,
}

/// A listing of the user's open conflicts under way: what the pages so far gave.
#[derive(Clone, Debug, Default)]
struct Listing {
    cursor: u64,
    found: BTreeMap<ConflictId, LocalConflict>,
}

/// The client coordinator of one device.
#[derive(Debug)]
pub struct Coordinator<S: QueueStore> {
    device_id: DeviceId,
    incarnation: u64,
    config: SyncConfig,
    store: S,
    rng: ChaCha8Rng,
    queue: Queue,
    replica: Replica,
    next_seq: u64,
    log_records: usize,
    online: bool,
    in_flight: Option<(InFlight, Millis)>,
    /// When the last request left (its answer's round trip is measured from it).
    sent_at: Millis,
    /// Requests failed since the last answered one.
    failed_requests: u64,
    batch_count: u64,
    pull_due: bool,
    pull_failures: u32,
    pull_not_before: Millis,
    /// No request goes before this: the server's last `Retry-After`.
    quiet_until: Millis,
    /// When the batching window opened: the first poll that found ops ready but held them
    /// (`batch_window_ms`); cleared when a batch goes.
    window_opened_at: Option<Millis>,
    next_auto_sync_at: Millis,
    resolves: VecDeque<(ConflictId, ResolveRequest)>,
    conflicts: BTreeMap<ConflictId, LocalConflict>,
    /// The user's open conflicts are to be listed (set when a pull finishes).
    conflicts_due: bool,
    /// The listing under way, if one began.
    listing: Option<Listing>,
    history: VecDeque<HistoryItem>,
    metrics: ClientMetrics,
    last_sync_at: Option<Millis>,
    last_error: Option<String>,
    events: Vec<Event>,
}

impl<S: QueueStore> Coordinator<S> {
    /// Starts a device: recovers the queue from `store` (cutting a torn tail, refusing a
    /// corrupt log) and begins offline. `incarnation` numbers the device's starts (batch
    /// ids carry it, so they never repeat); `rng_seed` seeds the retry jitter. On failure
    /// the store comes back with the error.
    pub fn open(
        device_id: DeviceId,
        incarnation: u64,
        config: SyncConfig,
        mut store: S,
        rng_seed: u64,
        now: Millis,
    ) -> Result<Coordinator<S>, OpenFailed<S>> {
        let recovered = store
            .recover()
            .map_err(OpenError::from)
            .and_then(|recovery| {
                let records = recovery
                    .records
                    .iter()
                    .enumerate()
                    .map(|(index, bytes)| {
                        Record::decode(bytes).map_err(|e| OpenError::BadRecord {
                            index,
                            detail: e.to_string(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((records, recovery.torn_tail_bytes))
            });
        let (records, torn_tail_bytes) = match recovered {
            Ok(recovered) => recovered,
            Err(error) => {
                crate::coverage::hit("client.open_refused");
                return Err(OpenFailed { error, store });
            }
        };
        let log_records = records.len();
        let replayed = record::replay(records);
        let mut queue = Queue::new(config.queue_ttl_ms);
        let open_conflicts = replayed.conflicts.len();
        for entry in replayed.entries.into_values() {
            queue.insert(entry);
        }
        queue.promote(now);
        let mut coordinator = Coordinator {
            device_id,
            incarnation,
            store,
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            queue,
            replica: Replica::default(),
            next_seq: replayed.next_seq,
            log_records,
            online: false,
            in_flight: None,
            sent_at: now,
            failed_requests: 0,
            batch_count: 0,
            pull_due: true,
            pull_failures: 0,
            pull_not_before: now,
            quiet_until: now,
            window_opened_at: None,
            next_auto_sync_at: now.plus_ms(config.auto_sync_interval_ms),
            resolves: VecDeque::new(),
            conflicts: replayed.conflicts,
            conflicts_due: false,
            listing: None,
            history: VecDeque::new(),
            metrics: ClientMetrics::default(),
            last_sync_at: None,
            last_error: None,
            events: Vec::new(),
            config,
        };
        coordinator.events.push(Event::Recovered {
            ops: coordinator.queue.len(),
            open_conflicts,
            torn_tail_bytes,
        });
        Ok(coordinator)
    }

    /// The device.
    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// The seq the next enqueued op gets: its op id is `<device>:<seq>` and its idempotency
    /// key `<device>:<seq>:key`.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The configuration in force.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The store (for fault injection by the simulation).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Stops the device and hands back its store, as a crash or shutdown leaves it.
    pub fn into_store(self) -> S {
        self.store
    }

    // ---- user actions -------------------------------------------------------------------

    // ---- environment events -------------------------------------------------------------

    // ---- storage ------------------------------------------------------------------------

    fn append(&mut self, record: &Record) -> Result<(), StoreError> {
        self.store.append(&record.encode())?;
        self.log_records += 1;
        Ok(())
    }

    /// Appends a status record whose state change already happened in memory. A failure is
    /// reported, not fatal: after a crash the op rolls back to its last durable status and
    /// goes out again under the same idempotency key.
    fn append_logged(&mut self, record: &Record) {
        if let Err(error) = self.append(record) {
            self.events.push(Event::StoreFailed {
                error: error.to_string(),
            });
        }
    }

    fn compact_if_needed(&mut self) {
        let open = self.conflicts.values().filter(|c| c.open);
        if self.log_records <= 2 * (self.queue.len() + open.clone().count()) + COMPACT_SLACK_RECORDS
        {
            return;
        }
        let mut records = vec![Record::NextSeq { seq: self.next_seq }.encode()];
        for entry in self.queue.entries() {
            records.extend(record::describe(entry).iter().map(Record::encode));
        }
        for conflict in open {
            let conflict = conflict.clone();
            records.push(Record::ConflictOpen { conflict }.encode());
        }
        match self.store.compact(&records) {
            Ok(()) => self.log_records = records.len(),
            Err(error) => self.events.push(Event::StoreFailed {
                error: format!("compaction: {error}"),
            }),
        }
    }

    fn telemetry(
        &mut self,
        kind: TelemetryKind,
        op_id: Option<OpId>,
        batch_id: Option<BatchId>,
        conflict_id: Option<ConflictId>,
    ) {
        if self.config.enable_telemetry {
            self.events.push(Event::Telemetry {
                kind,
                op_id,
                batch_id,
                conflict_id,
            });
        }
    }

    // ---- observer API -------------------------------------------------------------------
}
