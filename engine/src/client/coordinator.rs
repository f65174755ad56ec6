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

use super::observe::{
    ClientMetrics, EntityStatus, Event, HistoryItem, LocalConflict, Monitor, OpUpdate, SyncState,
    TelemetryKind,
};
use super::queue::{Entry, Queue, QueueStats, Status};
use super::record::{self, Enqueued, Record};
use super::replica::{Replica, local_exists, local_view};
use super::store::{QueueStore, StoreError};
use crate::config::SyncConfig;
use crate::entity::EntityType;
use crate::ids::{BatchId, ConflictId, DeviceId, EntityId, IdempotencyKey, OpId};
use crate::op::{BATCH_OP_COUNT_MAX, Batch, Op, OpError, OpKind};
use crate::planted::Planted;
use crate::server::wire::{BatchResponse, ChangesPage, OpStatus, Resolution, ResolveRequest};
use crate::time::Millis;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Settled or failed ops kept for `history()`.
pub const HISTORY_LEN_MAX: usize = 1_000;
/// Changes asked for per pull page.
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
    batch_count: u64,
    pull_due: bool,
    pull_failures: u32,
    pull_not_before: Millis,
    next_auto_sync_at: Millis,
    resolves: VecDeque<(ConflictId, ResolveRequest)>,
    conflicts: BTreeMap<ConflictId, LocalConflict>,
    history: VecDeque<HistoryItem>,
    metrics: ClientMetrics,
    last_sync_at: Option<Millis>,
    last_error: Option<String>,
    events: Vec<Event>,
    planted: Planted,
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
            Err(error) => return Err(OpenFailed { error, store }),
        };
        let log_records = records.len();
        let replayed = record::replay(records);
        let mut queue = Queue::new(config.queue_ttl_ms);
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
            batch_count: 0,
            pull_due: true,
            pull_failures: 0,
            pull_not_before: now,
            next_auto_sync_at: now.plus_ms(config.auto_sync_interval_ms),
            resolves: VecDeque::new(),
            conflicts: BTreeMap::new(),
            history: VecDeque::new(),
            metrics: ClientMetrics::default(),
            last_sync_at: None,
            last_error: None,
            events: Vec::new(),
            planted: Planted::default(),
            config,
        };
        coordinator.events.push(Event::Recovered {
            ops: coordinator.queue.len(),
            torn_tail_bytes,
        });
        Ok(coordinator)
    }

    /// The device.
    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// Plants bugs for a negative test (see [`crate::planted`]).
    pub fn plant(&mut self, planted: Planted) {
        self.planted = planted;
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

    /// `useSync`/`useEntitySync`: enqueues one edit; Ok only once the op is durable.
    /// `wall_ms` is the device's (possibly skewed) wall clock, which stamps the op.
    pub fn enqueue(
        &mut self,
        now: Millis,
        wall_ms: Millis,
        edit: Edit,
    ) -> Result<OpId, EnqueueError> {
        let mut ids = self.enqueue_all(now, wall_ms, vec![edit])?;
        Ok(ids.pop().expect("one edit, one op"))
    }

    /// `useBatchSync`: enqueues several edits as one durable record — all or nothing.
    /// Later edits see earlier ones (a find log may reference a session created just before).
    pub fn enqueue_all(
        &mut self,
        now: Millis,
        wall_ms: Millis,
        edits: Vec<Edit>,
    ) -> Result<Vec<OpId>, EnqueueError> {
        if edits.len() > ENQUEUE_ALL_LEN_MAX {
            return Err(EnqueueError::TooMany { count: edits.len() });
        }
        let max = self.config.max_queue_size;
        if self.queue.len() + edits.len() > max {
            return Err(EnqueueError::QueueFull {
                len: self.queue.len(),
                max,
            });
        }
        let mut added: Vec<Enqueued> = Vec::with_capacity(edits.len());
        let mut result = Ok(());
        for edit in edits {
            match self.build(now, wall_ms, edit) {
                Ok(enqueued) => {
                    self.queue.insert(Entry::new(
                        enqueued.seq,
                        enqueued.op.clone(),
                        now,
                        enqueued.blockers.clone(),
                    ));
                    self.next_seq += 1;
                    added.push(enqueued);
                }
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        if result.is_ok() {
            let record = Record::Enqueued { ops: added.clone() };
            result = self
                .store
                .append(&record.encode())
                .map_err(EnqueueError::from);
        }
        if let Err(error) = result {
            for enqueued in added.iter().rev() {
                self.queue.undo_insert(enqueued.seq);
            }
            return Err(error);
        }
        self.log_records += 1;
        let mut ids = Vec::with_capacity(added.len());
        for enqueued in added {
            let entry = self.queue.get(enqueued.seq).expect("just inserted");
            let blockers = entry
                .blockers
                .iter()
                .filter_map(|seq| self.queue.get(*seq))
                .map(|b| b.op.op_id.clone())
                .collect();
            self.events.push(Event::Enqueued {
                op_id: enqueued.op.op_id.clone(),
                seq: enqueued.seq,
                entity_type: enqueued.op.entity_type,
                entity_id: enqueued.op.entity_id.clone(),
                kind: enqueued.op.kind,
                priority: enqueued.op.priority.get(),
                blockers,
            });
            if entry.status == Status::Blocked {
                let mut update = OpUpdate::new(entry.op.op_id.clone(), Status::Blocked, 0);
                update.reason = entry.reason.clone();
                update.blocked_by = entry.blocked_by.clone();
                self.events.push(Event::Op(update));
            }
            self.events.push(Event::EntityChanged {
                entity_type: enqueued.op.entity_type,
                entity_id: enqueued.op.entity_id.clone(),
            });
            ids.push(enqueued.op.op_id);
        }
        self.queue.promote(now);
        Ok(ids)
    }

    /// Turns an edit into a sealed op against the current queue and replica.
    fn build(&self, now: Millis, wall_ms: Millis, edit: Edit) -> Result<Enqueued, EnqueueError> {
        let key = (edit.entity_type, edit.entity_id.clone());
        let replica = self.replica.get(edit.entity_type, &edit.entity_id);
        // The same-entity op this one waits for: the last open one that may still apply.
        let previous = self
            .queue
            .last_on_entity(&key)
            .filter(|e| !matches!(e.status, Status::Rejected | Status::Expired));
        let exists = self.entity(edit.entity_type, &edit.entity_id).is_some();
        let (kind, payload) = match edit.action {
            EditAction::Create(mut fields) => {
                if replica.is_some() || self.queue.last_on_entity(&key).is_some() {
                    return Err(EnqueueError::AlreadyExists {
                        entity_type: edit.entity_type,
                        entity_id: edit.entity_id,
                    });
                }
                fields.insert("id".to_owned(), Value::String(edit.entity_id.0.clone()));
                (OpKind::Create, Value::Object(fields))
            }
            EditAction::Update(fields) if exists => (OpKind::Update, Value::Object(fields)),
            EditAction::Delete if exists => (OpKind::Delete, Value::Null),
            EditAction::Update(_) | EditAction::Delete => {
                return Err(EnqueueError::UnknownEntity {
                    entity_type: edit.entity_type,
                    entity_id: edit.entity_id,
                });
            }
        };
        let base_version = match (kind, previous) {
            (OpKind::Create, _) => 0,
            (_, Some(previous)) => previous.version_after(),
            (_, None) => replica.map_or(0, |r| r.version),
        };
        let mut blockers: Vec<u64> = previous.map(|p| p.seq).into_iter().collect();
        let mut depends_on = Vec::new();
        for parent in edit.entity_type.parents() {
            let field = parent.reference_field();
            let Some(Value::String(parent_id)) = payload.get(&field) else {
                continue;
            };
            let parent_id = EntityId(parent_id.clone());
            if self.entity(*parent, &parent_id).is_none() {
                return Err(EnqueueError::UnknownParent {
                    field,
                    parent_id: parent_id.0,
                });
            }
            if let Some(create) = self.queue.open_create(&(*parent, parent_id)) {
                depends_on.push(create.op.op_id.clone());
                if !blockers.contains(&create.seq) {
                    blockers.push(create.seq);
                }
            }
        }
        let seq = self.next_seq;
        let op = Op {
            op_id: OpId(format!("{}:{seq}", self.device_id)),
            idempotency_key: IdempotencyKey(format!("{}:{seq}:key", self.device_id)),
            entity_type: edit.entity_type,
            entity_id: edit.entity_id,
            kind,
            base_version,
            payload,
            client_timestamp_ms: wall_ms,
            priority: self.config.entities.rules(edit.entity_type).priority,
            depends_on,
            created_at_ms: wall_ms,
            checksum: String::new(),
        }
        .sealed();
        op.validate()?;
        Ok(Enqueued {
            seq,
            op,
            enqueued_at_ms: now,
            blockers,
        })
    }

    /// Retries a dead-lettered op by hand: it goes out again (same idempotency key) with a
    /// fresh attempt count, and the ops it blocked are pending again.
    pub fn retry(&mut self, now: Millis, op_id: &OpId) -> Result<(), ActionError> {
        let seq = self.seq_with_status(op_id, &[Status::Error], "retry", "error")?;
        self.append(&Record::Retried { seq, at_ms: now })?;
        let unblocked = self.queue.retry(seq, now);
        self.events
            .push(Event::Op(OpUpdate::new(op_id.clone(), Status::Pending, 0)));
        for seq in unblocked {
            let entry = self.queue.get(seq).expect("unblocked ops are queued");
            self.events.push(Event::Op(OpUpdate::new(
                entry.op.op_id.clone(),
                Status::Pending,
                entry.attempts,
            )));
        }
        Ok(())
    }

    /// Removes a rejected, dead-lettered, expired or blocked op the user gives up on.
    pub fn discard(&mut self, op_id: &OpId) -> Result<(), ActionError> {
        let seq = self.seq_with_status(
            op_id,
            &[
                Status::Rejected,
                Status::Error,
                Status::Expired,
                Status::Blocked,
            ],
            "discard",
            "rejected, error, expired or blocked",
        )?;
        self.append(&Record::Discarded { seq })?;
        let entry = self.queue.discard(seq);
        self.events.push(Event::EntityChanged {
            entity_type: entry.op.entity_type,
            entity_id: entry.op.entity_id,
        });
        Ok(())
    }

    fn seq_with_status(
        &self,
        op_id: &OpId,
        allowed: &[Status],
        action: &'static str,
        needs: &'static str,
    ) -> Result<u64, ActionError> {
        let seq = self
            .queue
            .seq_of(op_id)
            .ok_or_else(|| ActionError::UnknownOp(op_id.clone()))?;
        let status = self.queue.get(seq).expect("indexed").status;
        if !allowed.contains(&status) {
            return Err(ActionError::WrongStatus {
                op_id: op_id.clone(),
                status,
                action,
                needs,
            });
        }
        Ok(seq)
    }

    /// `useConflictResolution`: asks the server to resolve an open conflict.
    pub fn resolve_conflict(
        &mut self,
        conflict_id: &ConflictId,
        resolution: Resolution,
        entity: Option<Value>,
    ) -> Result<(), ActionError> {
        match self.conflicts.get(conflict_id) {
            Some(conflict) if conflict.open => {}
            _ => return Err(ActionError::UnknownConflict(conflict_id.clone())),
        }
        self.resolves
            .push_back((conflict_id.clone(), ResolveRequest { resolution, entity }));
        Ok(())
    }

    /// Starts a sync now: pushes what is ready, then pulls.
    pub fn sync_now(&mut self, now: Millis) {
        self.pull_due = true;
        self.pull_not_before = now;
    }

    // ---- environment events -------------------------------------------------------------

    /// The network went up or down. Going down fails nothing: a request in flight is
    /// abandoned and its ops go back to pending without counting an attempt.
    pub fn set_online(&mut self, now: Millis, online: bool) {
        if online == self.online {
            return;
        }
        self.online = online;
        self.events.push(Event::Online { online });
        if online {
            self.sync_now(now);
            return;
        }
        match self.in_flight.take() {
            Some((InFlight::Batch { .. }, _)) if self.planted.client_strands_in_flight_offline => {}
            Some((InFlight::Batch { seqs, .. }, _)) => {
                for seq in seqs {
                    self.queue.requeue(seq);
                    let entry = self.queue.get(seq).expect("requeued");
                    self.events.push(Event::Op(OpUpdate::new(
                        entry.op.op_id.clone(),
                        Status::Pending,
                        entry.attempts,
                    )));
                }
                self.request_failed("batch", "offline".to_owned());
            }
            Some((
                InFlight::Resolve {
                    conflict_id,
                    request,
                },
                _,
            )) => {
                // Asked again once online; a resolution that did reach the server comes
                // back as `already_resolved`, which counts as done.
                self.resolves.push_front((conflict_id, request));
                self.request_failed("resolve", "offline".to_owned());
            }
            Some((InFlight::Pull, _)) => self.request_failed("pull", "offline".to_owned()),
            None => {}
        }
        self.queue.promote(now);
    }

    /// Checks that the coordinator's parts agree, and panics if they do not: the queue's
    /// indexes (readiness, backoff, op ids, waiting counts; nothing both blocked and
    /// ready), the ops marked in flight against the batch in flight, no request in flight
    /// while offline, and seqs below the next one. For the model-based proptest after
    /// every step, and for the simulation after every step with `--paranoid` (which skips
    /// runs whose planted bug strands in-flight ops: that bug breaks these invariants on
    /// purpose, and a test here shows they catch it).
    pub fn check_invariants(&self, now: Millis) {
        self.queue.check_index(now);
        let batch: BTreeSet<u64> = match &self.in_flight {
            Some((InFlight::Batch { seqs, .. }, _)) => seqs.iter().copied().collect(),
            _ => BTreeSet::new(),
        };
        assert_eq!(
            self.queue.seqs_with(Status::InFlight),
            batch,
            "the ops marked in flight are the batch in flight"
        );
        assert!(
            self.online || self.in_flight.is_none(),
            "no request is in flight while offline"
        );
        if let Some(last) = self.queue.last_seq() {
            assert!(last < self.next_seq, "seq {last} is not below the next seq");
        }
    }

    /// The next request to send, if any. Call after every event until it returns `None`.
    pub fn poll(&mut self, now: Millis) -> Option<Request> {
        self.tick(now);
        if !self.online || self.in_flight.is_some() {
            return None;
        }
        let deadline = now.plus_ms(self.config.batch_timeout_ms);
        if let Some((conflict_id, request)) = self.resolves.pop_front() {
            self.in_flight = Some((
                InFlight::Resolve {
                    conflict_id: conflict_id.clone(),
                    request: request.clone(),
                },
                deadline,
            ));
            return Some(Request::Resolve {
                conflict_id,
                request,
            });
        }
        let mut seqs = self.queue.select(self.config.batch_size);
        if self.planted.client_ignores_priority {
            seqs.sort_unstable();
        }
        if self.planted.client_sends_child_before_parent {
            seqs.reverse();
        }
        if !seqs.is_empty() {
            return Some(self.send_batch(seqs, deadline));
        }
        if self.pull_due && now >= self.pull_not_before {
            self.in_flight = Some((InFlight::Pull, deadline));
            return Some(Request::Pull {
                cursor: self.replica.cursor,
                limit: PULL_PAGE_LEN,
            });
        }
        None
    }

    fn send_batch(&mut self, seqs: Vec<u64>, deadline: Millis) -> Request {
        self.queue.mark_in_flight(&seqs);
        self.batch_count += 1;
        let batch_id = BatchId(format!(
            "{}:{}:{}",
            self.device_id, self.incarnation, self.batch_count
        ));
        let ops: Vec<Op> = seqs
            .iter()
            .map(|seq| self.queue.get(*seq).expect("selected").op.clone())
            .collect();
        self.metrics.batches_sent += 1;
        self.metrics.ops_sent += ops.len() as u64;
        self.events.push(Event::BatchSent {
            batch_id: batch_id.clone(),
            op_ids: ops.iter().map(|op| op.op_id.clone()).collect(),
        });
        for op in &ops {
            self.telemetry(
                TelemetryKind::SyncOperationStart,
                Some(op.op_id.clone()),
                Some(batch_id.clone()),
                None,
            );
        }
        self.in_flight = Some((
            InFlight::Batch {
                batch_id: batch_id.clone(),
                seqs,
            },
            deadline,
        ));
        Request::Batch(Batch::new(batch_id, self.device_id.clone(), ops))
    }

    /// When the caller should call [`Coordinator::poll`] next, if nothing else happens first.
    pub fn next_wake_at(&self) -> Option<Millis> {
        let mut wake: Option<Millis> = self.queue.next_expiry_at();
        let mut consider = |at: Millis| wake = Some(wake.map_or(at, |w| w.min(at)));
        if let Some((_, deadline)) = &self.in_flight {
            consider(*deadline);
        } else if self.online {
            if let Some(at) = self.queue.next_due_at() {
                consider(at);
            }
            if self.queue.has_ready() || !self.resolves.is_empty() {
                consider(Millis(0));
            }
            if self.pull_due {
                consider(self.pull_not_before);
            }
            consider(self.next_auto_sync_at);
        }
        wake
    }

    /// Runs the timers due at `now`: request timeout, TTL expiry, automatic sync, backoff
    /// ends. [`Coordinator::poll`] calls it first; calling it twice changes nothing.
    pub fn tick(&mut self, now: Millis) {
        if let Some((_, deadline)) = &self.in_flight {
            if *deadline <= now {
                self.fail_request(now, "timeout".to_owned());
            }
        }
        for seq in self.queue.expired_by(now) {
            self.expire(now, seq);
        }
        if self.online && now >= self.next_auto_sync_at {
            self.pull_due = true;
            self.next_auto_sync_at = now.plus_ms(self.config.auto_sync_interval_ms);
        }
        self.queue.promote(now);
    }

    fn expire(&mut self, now: Millis, seq: u64) {
        let reason = format!(
            "not sent within the queue TTL of {} ms",
            self.config.queue_ttl_ms
        );
        let blocked = self.queue.fail(seq, Status::Expired, &reason);
        self.metrics.expired += 1;
        self.finished(now, seq);
        self.report_blocked(&blocked);
    }

    /// The request in flight got no usable answer (transport error, HTTP error, timeout).
    /// A batch counts one failed attempt for each of its ops.
    pub fn on_request_failed(&mut self, now: Millis, reason: &str) {
        if self.in_flight.is_some() {
            self.fail_request(now, reason.to_owned());
        }
    }

    fn fail_request(&mut self, now: Millis, reason: String) {
        let (in_flight, _) = self.in_flight.take().expect("a request is in flight");
        match in_flight {
            InFlight::Batch { batch_id, seqs } => {
                self.metrics.batches_failed += 1;
                self.telemetry(TelemetryKind::SyncBatchError, None, Some(batch_id), None);
                for seq in seqs {
                    self.fail_attempt(now, seq, &reason);
                }
                self.request_failed("batch", reason);
            }
            InFlight::Pull => {
                self.pull_failures += 1;
                let delay = self
                    .config
                    .backoff
                    .delay_ms(self.pull_failures, &mut self.rng);
                self.pull_not_before = now.plus_ms(delay);
                self.request_failed("pull", reason);
            }
            InFlight::Resolve { conflict_id, .. } => {
                self.request_failed("resolve", format!("{conflict_id}: {reason}"));
            }
        }
    }

    fn request_failed(&mut self, request: &'static str, reason: String) {
        self.last_error = Some(format!("{request}: {reason}"));
        self.events.push(Event::RequestFailed { request, reason });
    }

    fn fail_attempt(&mut self, now: Millis, seq: u64, reason: &str) {
        let entry = self.queue.get(seq).expect("failed ops are queued");
        let attempts = entry.attempts + 1;
        let op_id = entry.op.op_id.clone();
        let dead = self.config.max_retries.is_some_and(|max| attempts >= max);
        let mut delay_ms = self.config.backoff.delay_ms(attempts, &mut self.rng);
        if self.planted.client_retries_immediately {
            delay_ms = 0;
        }
        let next_attempt_at_ms = now.plus_ms(delay_ms);
        let blocked = self
            .queue
            .fail_attempt(seq, next_attempt_at_ms, dead, reason);
        self.metrics.failed_attempts += 1;
        self.append_logged(&Record::Attempted {
            seq,
            attempts,
            next_attempt_at_ms,
            dead,
            reason: reason.to_owned(),
        });
        self.telemetry(
            TelemetryKind::SyncOperationError,
            Some(op_id.clone()),
            None,
            None,
        );
        if dead {
            self.metrics.dead_lettered += 1;
            let mut update = OpUpdate::new(op_id, Status::Error, attempts);
            update.reason = Some(reason.to_owned());
            self.events.push(Event::Op(update));
            self.report_blocked(&blocked);
        } else if !blocked.is_empty() {
            // A blocker died in the same batch: this op is blocked, not retried.
            self.report_blocked(&blocked);
        } else {
            let mut update = OpUpdate::new(op_id, Status::Pending, attempts);
            update.reason = Some(reason.to_owned());
            update.delay_ms = Some(delay_ms);
            update.next_attempt_at_ms = Some(next_attempt_at_ms);
            self.events.push(Event::Op(update));
        }
    }

    /// The server answered the batch in flight. An answer for another batch (one that timed
    /// out or was abandoned) is ignored: its ops go again and come back as duplicates.
    pub fn on_batch_response(&mut self, now: Millis, response: &BatchResponse) {
        let seqs = match &self.in_flight {
            Some((InFlight::Batch { batch_id, seqs }, _)) if *batch_id == response.batch_id => {
                seqs.clone()
            }
            _ => return,
        };
        self.in_flight = None;
        self.metrics.batches_answered += 1;
        self.last_sync_at = Some(now);
        self.telemetry(
            TelemetryKind::SyncBatchSuccess,
            None,
            Some(response.batch_id.clone()),
            None,
        );
        let mut answered = BTreeMap::new();
        for result in &response.results {
            answered.insert(result.op_id.clone(), result);
        }
        let mut failures = Vec::new();
        for seq in seqs {
            let op_id = self
                .queue
                .get(seq)
                .expect("in-flight ops are queued")
                .op
                .op_id
                .clone();
            let Some(result) = answered.get(&op_id) else {
                self.fail_attempt(now, seq, "no result for the op");
                continue;
            };
            self.queue
                .note_result(seq, result.version, result.conflict_id.clone());
            match result.status {
                OpStatus::Applied | OpStatus::Duplicate | OpStatus::Conflict => {
                    self.settle(now, seq, result);
                }
                OpStatus::Rejected => {
                    let reason = result
                        .reason
                        .clone()
                        .unwrap_or_else(|| "rejected".to_owned());
                    failures.push((seq, reason));
                }
                OpStatus::Blocked => {
                    let cause = self.failed_dependency(seq);
                    match cause {
                        Some(cause) if result.reason.as_deref() == Some("dependency_failed") => {
                            let blocked = self.queue.block(seq, cause);
                            self.report_blocked(&blocked);
                        }
                        _ => {
                            let reason = result.reason.as_deref().unwrap_or("blocked");
                            self.fail_attempt(now, seq, reason);
                        }
                    }
                }
                OpStatus::Retry => {
                    let reason = result.reason.as_deref().unwrap_or("retry");
                    self.fail_attempt(now, seq, reason);
                }
            }
        }
        // Failures block their dependants only after every result of the batch is taken,
        // since a dependant in the same batch has its own answer.
        for (seq, reason) in failures {
            let blocked = self.queue.fail(seq, Status::Rejected, &reason);
            self.metrics.rejected += 1;
            let op_id = self
                .queue
                .get(seq)
                .expect("rejected ops stay")
                .op
                .op_id
                .clone();
            self.telemetry(TelemetryKind::SyncOperationError, Some(op_id), None, None);
            self.finished(now, seq);
            self.report_blocked(&blocked);
        }
        self.pull_due = true;
        self.compact_if_needed();
    }

    fn failed_dependency(&self, seq: u64) -> Option<OpId> {
        let entry = self.queue.get(seq)?;
        entry.op.depends_on.iter().find_map(|dependency| {
            let dep = self.queue.get(self.queue.seq_of(dependency)?)?;
            match dep.status {
                s if s.is_failed() => Some(dep.op.op_id.clone()),
                Status::Blocked => dep.blocked_by.clone(),
                _ => None,
            }
        })
    }

    fn settle(&mut self, now: Millis, seq: u64, result: &crate::server::wire::OpResult) {
        let status = if result.status == OpStatus::Conflict || result.conflict_id.is_some() {
            Status::Conflict
        } else {
            Status::Applied
        };
        let entry = self.queue.settle(seq, status);
        let op_id = entry.op.op_id.clone();
        if let Some(version) = result.version {
            let entity = if result.deleted {
                Some(&Value::Null)
            } else {
                result.entity.as_ref()
            };
            if self.replica.apply_answer(&entry.op, version, entity) {
                self.events.push(Event::EntityChanged {
                    entity_type: entry.op.entity_type,
                    entity_id: entry.op.entity_id.clone(),
                });
            }
        }
        self.metrics.ops_applied += u64::from(status == Status::Applied);
        self.metrics.duplicates += u64::from(result.status == OpStatus::Duplicate);
        let settle_ms = now.since_ms(entry.enqueued_at_ms);
        self.metrics.settle_ms_total += settle_ms;
        self.metrics.settle_ms_max = self.metrics.settle_ms_max.max(settle_ms);
        self.append_logged(&Record::Finished {
            seq,
            status,
            reason: result.reason.clone(),
            version: result.version,
            conflict_id: result.conflict_id.clone(),
        });
        if let (Status::Conflict, Some(conflict_id)) = (status, &result.conflict_id) {
            self.metrics.conflicts += 1;
            let decision = result.reason.clone().unwrap_or_default();
            let open = decision == "manual";
            self.conflicts.insert(
                conflict_id.clone(),
                LocalConflict {
                    conflict_id: conflict_id.clone(),
                    op_id: op_id.clone(),
                    entity_type: entry.op.entity_type,
                    entity_id: entry.op.entity_id.clone(),
                    decision,
                    open,
                },
            );
            self.telemetry(
                TelemetryKind::SyncConflictDetected,
                Some(op_id.clone()),
                None,
                Some(conflict_id.clone()),
            );
            if !open {
                self.telemetry(
                    TelemetryKind::SyncConflictResolved,
                    Some(op_id.clone()),
                    None,
                    Some(conflict_id.clone()),
                );
            }
        }
        self.telemetry(
            TelemetryKind::SyncOperationSuccess,
            Some(op_id.clone()),
            None,
            None,
        );
        let mut update = OpUpdate::new(op_id, status, entry.attempts);
        update.reason = result.reason.clone();
        update.version = result.version;
        update.conflict_id = result.conflict_id.clone();
        self.events.push(Event::Op(update));
        self.remember(now, &entry);
    }

    /// Reports a failed op (rejected, expired) and keeps it in the history.
    fn finished(&mut self, now: Millis, seq: u64) {
        let entry = self.queue.get(seq).expect("failed ops stay queued").clone();
        self.append_logged(&Record::Finished {
            seq,
            status: entry.status,
            reason: entry.reason.clone(),
            version: entry.version,
            conflict_id: entry.conflict_id.clone(),
        });
        let mut update = OpUpdate::new(entry.op.op_id.clone(), entry.status, entry.attempts);
        update.reason = entry.reason.clone();
        self.events.push(Event::Op(update));
        self.events.push(Event::EntityChanged {
            entity_type: entry.op.entity_type,
            entity_id: entry.op.entity_id.clone(),
        });
        self.remember(now, &entry);
    }

    fn report_blocked(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            let entry = self.queue.get(seq).expect("blocked ops stay queued");
            let mut update = OpUpdate::new(entry.op.op_id.clone(), Status::Blocked, entry.attempts);
            update.reason = entry.reason.clone();
            update.blocked_by = entry.blocked_by.clone();
            self.events.push(Event::Op(update));
        }
    }

    fn remember(&mut self, now: Millis, entry: &Entry) {
        if self.history.len() == HISTORY_LEN_MAX {
            self.history.pop_front();
        }
        self.history.push_back(HistoryItem {
            op_id: entry.op.op_id.clone(),
            entity_type: entry.op.entity_type,
            entity_id: entry.op.entity_id.clone(),
            kind: entry.op.kind,
            status: entry.status,
            at_ms: now,
            attempts: entry.attempts,
            reason: entry.reason.clone(),
        });
    }

    /// The server answered the pull in flight.
    pub fn on_pull_response(&mut self, now: Millis, page: &ChangesPage) {
        if !matches!(self.in_flight, Some((InFlight::Pull, _))) {
            return;
        }
        self.in_flight = None;
        self.last_sync_at = Some(now);
        self.pull_failures = 0;
        for change in &page.changes {
            if change.deleted && self.planted.client_ignores_pulled_deletes {
                continue;
            }
            if self.replica.apply_change(change) {
                self.events.push(Event::EntityChanged {
                    entity_type: change.entity_type,
                    entity_id: change.entity_id.clone(),
                });
            }
        }
        self.replica.cursor = self.replica.cursor.max(page.next_cursor);
        self.pull_due = page.has_more;
        self.metrics.pulls += 1;
        self.metrics.changes_pulled += page.changes.len() as u64;
        self.events.push(Event::Pulled {
            changes: page.changes.len(),
            cursor: self.replica.cursor,
            has_more: page.has_more,
        });
    }

    /// The server answered the resolution in flight (`Ok`), or refused it (`Err`, with the
    /// error code: `already_resolved` counts as done).
    pub fn on_resolve_response(&mut self, now: Millis, result: Result<(), String>) {
        let Some((InFlight::Resolve { conflict_id, .. }, _)) = self.in_flight.clone() else {
            return;
        };
        self.in_flight = None;
        self.last_sync_at = Some(now);
        let done = match &result {
            Ok(()) => true,
            Err(code) => code == "already_resolved",
        };
        if !done {
            let error = result.err().unwrap_or_default();
            self.request_failed("resolve", format!("{conflict_id}: {error}"));
            return;
        }
        if let Some(conflict) = self.conflicts.get_mut(&conflict_id) {
            conflict.open = false;
        }
        self.events.push(Event::ConflictResolved {
            conflict_id: conflict_id.clone(),
        });
        self.telemetry(
            TelemetryKind::SyncConflictResolved,
            None,
            None,
            Some(conflict_id),
        );
        self.pull_due = true;
    }

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
        if self.log_records <= 2 * self.queue.len() + COMPACT_SLACK_RECORDS {
            return;
        }
        let mut records = vec![Record::NextSeq { seq: self.next_seq }.encode()];
        for entry in self.queue.entries() {
            records.extend(record::describe(entry).iter().map(Record::encode));
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

    /// `useRealtimeSyncState`: every event since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// `useOfflineStatus`.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// `useSyncState`.
    pub fn state(&self) -> SyncState {
        SyncState {
            online: self.online,
            syncing: self.in_flight.is_some(),
            last_sync_at_ms: self.last_sync_at,
            last_error: self.last_error.clone(),
            queue: self.queue.stats(),
            open_conflicts: self.conflicts.values().filter(|c| c.open).count(),
            cursor: self.replica.cursor,
        }
    }

    /// `useSyncQueue`: every queued op in enqueue order.
    pub fn queue(&self) -> impl Iterator<Item = &Entry> {
        self.queue.entries()
    }

    /// `useSyncQueue`: counts by status.
    pub fn stats(&self) -> QueueStats {
        self.queue.stats()
    }

    /// `useSyncConflicts`: the conflicts this device's ops ran into.
    pub fn conflicts(&self) -> impl Iterator<Item = &LocalConflict> {
        self.conflicts.values()
    }

    /// `useSyncHistory`: the last [`HISTORY_LEN_MAX`] settled or failed ops.
    pub fn history(&self) -> impl Iterator<Item = &HistoryItem> {
        self.history.iter()
    }

    /// `useSyncMetrics`.
    pub fn metrics(&self) -> &ClientMetrics {
        &self.metrics
    }

    /// `useSyncMonitor`.
    pub fn monitor(&self) -> Monitor {
        let stats = self.queue.stats();
        Monitor {
            online: self.online,
            pending_count: stats.pending + stats.in_flight + stats.blocked + stats.error,
            conflict_count: self.conflicts.values().filter(|c| c.open).count(),
            error_count: stats.error + stats.rejected + stats.expired,
        }
    }

    /// The replica (server state as last seen).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Open ops on one entity, oldest first.
    /// The ops on an entity that still shape its local view, in queue order: all but the
    /// rejected and expired ones.
    fn open_ops_on(
        &self,
        entity_type: EntityType,
        entity_id: &EntityId,
    ) -> impl Iterator<Item = &Op> {
        self.ops_on(entity_type, entity_id)
            .into_iter()
            .filter(|e| !matches!(e.status, Status::Rejected | Status::Expired))
            .map(|e| &e.op)
    }

    fn ops_on(&self, entity_type: EntityType, entity_id: &EntityId) -> Vec<&Entry> {
        let key = (entity_type, entity_id.clone());
        let mut ops = Vec::new();
        let mut next = self.queue.last_on_entity(&key);
        while let Some(entry) = next {
            ops.push(entry);
            next = entry
                .blockers
                .iter()
                .filter_map(|seq| self.queue.get(*seq))
                .find(|b| b.entity() == key);
        }
        ops.reverse();
        ops
    }

    /// Whether the entity exists in the local view (what [`Coordinator::entity`] would
    /// return `Some` for), without building it.
    pub fn entity_exists(&self, entity_type: EntityType, entity_id: &EntityId) -> bool {
        local_exists(
            self.replica.get(entity_type, entity_id),
            self.open_ops_on(entity_type, entity_id),
        )
    }

    /// `useEntitySync`: the local view of an entity — the replica's copy with the open local
    /// ops that may still apply (not rejected or expired) on top. `None` when it does not
    /// exist or is deleted.
    pub fn entity(&self, entity_type: EntityType, entity_id: &EntityId) -> Option<Value> {
        local_view(
            self.replica.get(entity_type, entity_id),
            self.open_ops_on(entity_type, entity_id),
        )
    }

    /// `useEntitySync`: where one entity stands.
    pub fn entity_status(&self, entity_type: EntityType, entity_id: &EntityId) -> EntityStatus {
        let ops = self.ops_on(entity_type, entity_id);
        EntityStatus {
            server_version: self.replica.get(entity_type, entity_id).map(|r| r.version),
            open_ops: ops.len(),
            status: ops.iter().map(|e| e.status).max(),
            open_conflict: self
                .conflicts
                .values()
                .find(|c| c.open && c.entity_type == entity_type && c.entity_id == *entity_id)
                .map(|c| c.conflict_id.clone()),
        }
    }
}
