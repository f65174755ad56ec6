//! The server, sans-IO: batches, idempotency, conflicts, pulls, state, history, metrics and
//! cleanup over the tables of [`tables`]. The HTTP layer (in `rockhound-io`) authenticates
//! the caller and passes the user in; nothing here reads a clock or a socket.
//!
//! Each op of a batch is processed in order and committed on its own: a crash between two
//! ops leaves the first wholly applied and the second wholly absent.

pub mod replay;
pub mod tables;
pub mod wire;

use crate::config::SyncConfig;
use crate::conflict::{self, Decision, Detection, ServerEntity, Strategy, Write};
use crate::delta;
use crate::entity::EntityType;
use crate::ids::{ConflictId, DeviceId, EntityId, UserId, check_id};
use crate::op::{BATCH_OP_COUNT_MAX, Batch, Op, OpError, OpKind};
use crate::planted::Planted;
use crate::time::{DAY_MS, HOUR_MS, Millis};
use serde_json::Value;
use std::collections::BTreeMap;
use tables::{
    BatchRecord, Commit, EntityKey, IdempotencyRecord, MemoryStore, QueueRow, ServerStore, Tables,
};
use wire::{
    BatchResponse, Change, ChangesPage, ConflictRecord, ConflictStatus, DeviceState, HistoryRow,
    MetricsWindow, OpResult, OpStatus, Resolution, ResolveRequest, StateResponse,
};

/// The most changes one pull page returns.
pub const PULL_LIMIT_MAX: usize = 1_000;
/// The most conflicts one page of `GET /api/sync/conflicts` looks at.
pub const CONFLICT_SCAN_MAX: usize = 10_000;
/// The most history rows one request returns.
pub const HISTORY_LIMIT_MAX: usize = 1_000;
/// The most entities the server holds before it answers `retry` with `storage_full`.
pub const ENTITY_COUNT_MAX: usize = 5_000_000;
/// The largest an entity may grow, as JSON bytes, after any write, merge or resolution
/// (an op's payload is limited apart, to `PAYLOAD_BYTES_MAX`); beyond it the write is
/// refused with `entity_too_large`.
pub const ENTITY_BYTES_MAX: usize = 256 * 1024;
/// The most history rows the server holds before it answers `retry` with `storage_full`.
pub const HISTORY_ROW_COUNT_MAX: usize = 20_000_000;
/// Length of one `sync_metrics` window.
pub const METRICS_WINDOW_MS: u64 = HOUR_MS;
/// How long history, resolved conflicts, batches and metrics are kept by `cleanup`.
pub const HISTORY_RETENTION_MS: u64 = 30 * DAY_MS;

/// A request the server refuses as a whole; nothing of it is applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Malformed or invalid request (HTTP 400).
    #[error("{message}")]
    BadRequest {
        /// Stable code: `malformed`, `invalid_value`.
        code: &'static str,
        /// A sentence for a person.
        message: String,
    },
    /// Another user's device, entity or conflict (HTTP 403).
    #[error("{message}")]
    Forbidden {
        /// A sentence for a person.
        message: String,
    },
    /// No such conflict (HTTP 404).
    #[error("{message}")]
    NotFound {
        /// A sentence for a person.
        message: String,
    },
    /// The conflict is already resolved (HTTP 409).
    #[error("{message}")]
    AlreadyResolved {
        /// A sentence for a person.
        message: String,
    },
    /// Over the size or op-count limit (HTTP 413).
    #[error("{message}")]
    TooLarge {
        /// A sentence for a person.
        message: String,
    },
    /// The batch checksum does not match (HTTP 422).
    #[error("{message}")]
    ChecksumMismatch {
        /// A sentence for a person.
        message: String,
    },
}

impl RequestError {
    /// The machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::BadRequest { code, .. } => code,
            RequestError::Forbidden { .. } => "forbidden",
            RequestError::NotFound { .. } => "not_found",
            RequestError::AlreadyResolved { .. } => "already_resolved",
            RequestError::TooLarge { .. } => "too_large",
            RequestError::ChecksumMismatch { .. } => "checksum_mismatch",
        }
    }

    fn invalid(message: impl Into<String>) -> RequestError {
        RequestError::BadRequest {
            code: "invalid_value",
            message: message.into(),
        }
    }
}

/// The sync server over a store.
#[derive(Debug)]
pub struct Server<S: ServerStore = MemoryStore> {
    config: SyncConfig,
    store: S,
    planted: Planted,
}

/// What `cleanup` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Idempotency keys past their retention.
    pub idempotency_keys: usize,
    /// History rows past `HISTORY_RETENTION_MS`.
    pub history_rows: usize,
    /// Resolved conflicts past `HISTORY_RETENTION_MS`.
    pub conflicts: usize,
    /// Batch rows past `HISTORY_RETENTION_MS`.
    pub batches: usize,
    /// Metrics windows past `HISTORY_RETENTION_MS`.
    pub metrics_windows: usize,
}

impl Server<MemoryStore> {
    /// A server with an empty in-memory store.
    pub fn new(config: SyncConfig) -> Server<MemoryStore> {
        Server::with_store(config, MemoryStore::default())
    }
}

impl<S: ServerStore> Server<S> {
    /// A server over an existing store (after a restart, say).
    pub fn with_store(config: SyncConfig, store: S) -> Server<S> {
        Server {
            config,
            store,
            planted: Planted::default(),
        }
    }

    /// Plants bugs for a negative test (see [`crate::planted`]).
    pub fn plant(&mut self, planted: Planted) {
        self.planted = planted;
    }

    /// The configuration in force.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The tables, read-only.
    pub fn tables(&self) -> &Tables {
        self.store.tables()
    }

    /// Gives the store back (to "restart" the server over it).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Handles `POST /api/sync/batch` for the authenticated `user` at server time `now`:
    /// [`Server::admit_batch`], [`Server::handle_op`] for each op, [`Server::finish_batch`].
    /// The HTTP layer calls the three itself, taking the server's lock per op, so that no
    /// batch holds the server for longer than one op.
    pub fn handle_batch(
        &mut self,
        user: &UserId,
        batch: &Batch,
        now: Millis,
    ) -> Result<BatchResponse, RequestError> {
        self.admit_batch(user, batch)?;
        let mut results = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            results.push(self.handle_op(user, batch, op, now));
        }
        Ok(self.finish_batch(user, batch, results, now))
    }

    /// The checks a batch passes as a whole before any of its ops is processed: op count,
    /// ids, batch checksum ([`check_batch`]), device ownership. Changes nothing.
    pub fn admit_batch(&self, user: &UserId, batch: &Batch) -> Result<(), RequestError> {
        check_batch(batch, self.verifies_checksums())?;
        self.check_device(user, &batch.device_id)
    }

    /// Whether the server verifies checksums (always, unless a negative test planted the
    /// bug that it does not).
    pub fn verifies_checksums(&self) -> bool {
        !self.planted.server_skips_checksums
    }

    /// Whether `device_id` may send for `user`: it is theirs, or nobody's yet.
    pub fn check_device(&self, user: &UserId, device_id: &DeviceId) -> Result<(), RequestError> {
        match self.store.tables().devices.get(device_id) {
            Some(owner) if owner != user => Err(RequestError::Forbidden {
                message: format!("device {device_id} belongs to another user"),
            }),
            _ => Ok(()),
        }
    }

    /// Records an admitted batch whose ops were all handled, with their `results`, and
    /// registers its device to `user` (unless another user's batch registered it first
    /// meanwhile, when only the batch row is kept).
    pub fn finish_batch(
        &mut self,
        user: &UserId,
        batch: &Batch,
        results: Vec<OpResult>,
        now: Millis,
    ) -> BatchResponse {
        let mut statuses = BTreeMap::new();
        for result in &results {
            *statuses.entry(result.status).or_insert(0) += 1;
        }
        let device = self.check_device(user, &batch.device_id).is_ok().then(|| {
            let mut device = self.device_state(user, &batch.device_id);
            device.batch_count = device.batch_count.saturating_add(1);
            device.last_batch_at_ms = Some(now);
            device
        });
        let mut metrics = self.metrics_window(user, now);
        metrics.batches += 1;
        let seq = self.store.tables().next_seq(user);
        self.store.commit(Commit {
            user: user.clone(),
            seq,
            batch: Some((
                batch.batch_id.clone(),
                BatchRecord {
                    device_id: batch.device_id.clone(),
                    op_count: batch.ops.len() as u64,
                    statuses,
                    checksum: batch.checksum.clone(),
                    received_at_ms: now,
                },
            )),
            device,
            metrics: Some(metrics),
            ..Commit::default()
        });
        BatchResponse {
            batch_id: batch.batch_id.clone(),
            server_time_ms: now,
            results,
        }
    }

    fn device_state(&self, user: &UserId, device_id: &DeviceId) -> DeviceState {
        self.store
            .tables()
            .sync_state
            .get(&(user.clone(), device_id.clone()))
            .cloned()
            .unwrap_or_else(|| DeviceState {
                device_id: device_id.clone(),
                ..DeviceState::default()
            })
    }

    fn metrics_window(&self, user: &UserId, now: Millis) -> MetricsWindow {
        let start = Millis(now.0 - now.0 % METRICS_WINDOW_MS);
        self.store
            .tables()
            .sync_metrics
            .get(&(user.clone(), start))
            .cloned()
            .unwrap_or(MetricsWindow {
                window_start_ms: start,
                ..MetricsWindow::default()
            })
    }

    /// Processes one op of an admitted batch and commits everything it changes in one step.
    pub fn handle_op(&mut self, user: &UserId, batch: &Batch, op: &Op, now: Millis) -> OpResult {
        let outcome = self.decide_op(user, batch, op, now);
        let tables = self.store.tables();
        let seq = tables.next_seq(user);
        let result = outcome.result;

        // Only final answers are remembered under the idempotency key: a corrupted copy, a
        // reused key, a blocked op or a retry may be sent again and must then be processed.
        let remember = outcome.remember
            && !tables
                .sync_idempotency_keys
                .contains_key(&(user.clone(), op.idempotency_key.clone()));
        let idempotency = remember.then(|| {
            (
                op.idempotency_key.clone(),
                IdempotencyRecord {
                    op_checksum: op.checksum.clone(),
                    result: result.clone(),
                    at_ms: now,
                },
            )
        });
        // A duplicate leaves the original's queue row untouched, and an op that is not
        // stored (damaged, bad ids, a reused key or op id) must not overwrite the row of the
        // op whose id it claims.
        let queue = (outcome.stored == Stored::Full).then(|| {
            let row = QueueRow {
                idempotency_key: op.idempotency_key.clone(),
                device_id: batch.device_id.clone(),
                batch_id: batch.batch_id.clone(),
                entity_type: op.entity_type,
                entity_id: op.entity_id.clone(),
                kind: op.kind,
                status: result.status,
                reason: result.reason.clone(),
                received_at_ms: now,
            };
            (op.op_id.clone(), row)
        });
        let history = (outcome.stored != Stored::Nothing).then(|| HistoryRow {
            seq,
            at_ms: now,
            device_id: batch.device_id.clone(),
            op_id: Some(op.op_id.clone()),
            idempotency_key: Some(op.idempotency_key.clone()),
            entity_type: op.entity_type,
            entity_id: op.entity_id.clone(),
            action: op.kind.as_str().to_owned(),
            status: result.status.as_str().to_owned(),
            reason: result.reason.clone(),
            version: result.version,
            // Every decided op is logged with its write, including those that changed
            // nothing (a kept server state, a manual conflict), so that the reference replay
            // can check every decision, not only the effective ones.
            write: outcome.strategy.map(|strategy| replay::LoggedWrite::Op {
                kind: op.kind,
                base_version: op.base_version,
                payload: op.payload.clone(),
                client_timestamp_ms: op.client_timestamp_ms,
                strategy: Some(strategy),
            }),
        });
        // The device was admitted with the batch; on a real server another user's batch may
        // have registered it since, and a device never changes owner.
        let device = self.check_device(user, &batch.device_id).is_ok().then(|| {
            let mut device = self.device_state(user, &batch.device_id);
            device.op_count = device.op_count.saturating_add(1);
            device
        });
        let mut metrics = self.metrics_window(user, now);
        metrics.ops += 1;
        match result.status {
            OpStatus::Applied => metrics.applied += 1,
            OpStatus::Duplicate => metrics.duplicates += 1,
            OpStatus::Conflict => metrics.conflicts += 1,
            OpStatus::Rejected => metrics.rejected += 1,
            OpStatus::Blocked => metrics.blocked += 1,
            OpStatus::Retry => metrics.retries += 1,
        }
        let conflict = outcome.conflict.map(|mut record| {
            record.conflict_id = conflict_id(user, seq);
            record
        });
        // The conflict id is the commit's sequence number, known only now; the remembered
        // result must carry it too, so that a duplicate answers with the same id.
        let mut result = result;
        if let Some(record) = &conflict {
            result.conflict_id = Some(record.conflict_id.clone());
        }
        let idempotency = idempotency.map(|(key, mut record)| {
            record.result = result.clone();
            (key, record)
        });
        self.store.commit(Commit {
            user: user.clone(),
            seq,
            entity: outcome.entity,
            queue,
            idempotency,
            history,
            conflict,
            device,
            metrics: Some(metrics),
            batch: None,
        });
        result
    }

    /// The parent checks every write of fields gets (a create's payload, an update's patch,
    /// a custom resolution's entity): each `<parent>_id` string must name a live entity of
    /// the same user.
    fn check_parents(
        &self,
        user: &UserId,
        entity_type: EntityType,
        fields: &serde_json::Map<String, Value>,
    ) -> Result<(), ParentRefusal> {
        let entities = &self.store.tables().entities;
        for parent in entity_type.parents() {
            let Some(Value::String(parent_id)) = fields.get(&parent.reference_field()) else {
                continue;
            };
            match entities.get(&(*parent, EntityId(parent_id.clone()))) {
                None => return Err(ParentRefusal::Missing),
                Some(p) if &p.owner != user => return Err(ParentRefusal::Forbidden),
                Some(p) if p.state.deleted => return Err(ParentRefusal::Deleted),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Decides an op without changing anything.
    ///
    /// The order is the point: the checksum is verified before anything else about the op
    /// is decided or remembered, so a damaged copy can never poison its key or its op id;
    /// ids that break the id rule are refused before anything stores them.
    fn decide_op(&self, user: &UserId, batch: &Batch, op: &Op, now: Millis) -> OpOutcome {
        let tables = self.store.tables();
        let reject = |reason: &str| OpOutcome::answer(op, OpStatus::Rejected, reason, true);
        if !self.planted.server_skips_checksums && op.verify_checksum().is_err() {
            return OpOutcome::unstored(op, "checksum_mismatch", Stored::Nothing);
        }
        if op.validate_ids().is_err() {
            return OpOutcome::unstored(op, "invalid_op", Stored::Nothing);
        }
        if let Some(record) = tables
            .sync_idempotency_keys
            .get(&(user.clone(), op.idempotency_key.clone()))
            .filter(|_| !self.planted.server_ignores_idempotency)
        {
            if record.op_checksum != op.checksum {
                return OpOutcome::unstored(op, "idempotency_key_reused", Stored::HistoryOnly);
            }
            let mut result = record.result.clone();
            result.status = OpStatus::Duplicate;
            return OpOutcome {
                result,
                remember: false,
                stored: Stored::HistoryOnly,
                strategy: None,
                entity: None,
                conflict: None,
            };
        }
        // An op id names one op: another key under the same id would overwrite the first
        // op's queue row (and with it what its dependents see).
        if tables
            .sync_queue
            .get(&(user.clone(), op.op_id.clone()))
            .is_some_and(|row| row.idempotency_key != op.idempotency_key)
        {
            return OpOutcome::unstored(op, "op_id_reused", Stored::HistoryOnly);
        }
        if op.validate().is_err() {
            return reject("invalid_op");
        }
        if now.since_ms(op.created_at_ms) > self.config.idempotency_retention_ms() {
            return reject("expired");
        }
        for dependency in &op.depends_on {
            match tables.sync_queue.get(&(user.clone(), dependency.clone())) {
                Some(row) if matches!(row.status, OpStatus::Applied | OpStatus::Conflict) => {}
                Some(_) => {
                    return OpOutcome::answer(op, OpStatus::Blocked, "dependency_failed", false);
                }
                None => {
                    return OpOutcome::answer(op, OpStatus::Blocked, "dependency_missing", false);
                }
            }
        }
        let key: EntityKey = (op.entity_type, op.entity_id.clone());
        let stored = tables.entities.get(&key);
        if stored.is_some_and(|s| &s.owner != user) {
            return reject("forbidden");
        }
        if let Some(fields) = op.payload.as_object()
            && let Err(refusal) = self.check_parents(user, op.entity_type, fields)
        {
            return match refusal {
                ParentRefusal::Missing => {
                    OpOutcome::answer(op, OpStatus::Blocked, "dependency_missing", false)
                }
                ParentRefusal::Forbidden => reject("forbidden"),
                ParentRefusal::Deleted => reject("parent_deleted"),
            };
        }
        if op.kind == OpKind::Update
            && let (Some(server), Some(patch)) = (stored, op.payload.as_object())
            && clears_needed_parent(op.entity_type, &server.state.fields, patch)
        {
            return reject("parent_required");
        }
        // Deleting a parent is refused while live children reference it: the server never
        // orphans a child (see docs/api.md).
        if op.kind == OpKind::Delete && tables.live_children.contains_key(&key) {
            return reject("has_children");
        }
        if op.kind == OpKind::Create && tables.entities.len() >= ENTITY_COUNT_MAX {
            return OpOutcome::answer(op, OpStatus::Retry, "storage_full", false);
        }
        if tables.sync_history.len() >= HISTORY_ROW_COUNT_MAX {
            return OpOutcome::answer(op, OpStatus::Retry, "storage_full", false);
        }

        let server = stored.map(|s| &s.state);
        let mut write = Write::of(op, &batch.device_id);
        let strategy = self.config.entities.rules(op.entity_type).strategy;
        if self.planted.server_lww_uses_server_clock && strategy == Strategy::LatestTimestamp {
            write.timestamp_ms = now;
        }
        let (decision, case) = match conflict::detect(server, &write) {
            Detection::Invalid(invalid) => return reject(&invalid.to_string()),
            Detection::Clean => (conflict::apply_clean(server, &write), None),
            Detection::Conflict(case) => {
                let server = server.expect("a conflict needs a server entity");
                (
                    conflict::resolve(strategy, case, server, &write),
                    Some(case),
                )
            }
        };
        let code = decision_code(&decision, strategy);
        let already_done = decision == Decision::AlreadyDone;
        let manual = decision == Decision::Manual;
        let next = conflict::commit_owned(server, decision, &write);
        if next
            .as_ref()
            .is_some_and(|n| !n.deleted && entity_bytes(n) > ENTITY_BYTES_MAX)
        {
            return reject("entity_too_large");
        }
        let after = next
            .as_ref()
            .or(server)
            .expect("a decided write leaves an entity");
        let mut result = OpResult {
            op_id: op.op_id.clone(),
            status: OpStatus::Applied,
            version: Some(after.version),
            entity: None,
            deleted: false,
            conflict_id: None,
            reason: None,
        };
        let mut conflict = None;
        if let Some(case) = case
            && !already_done
        {
            result.status = OpStatus::Conflict;
            result.entity = (!after.deleted).then(|| after.to_value());
            result.deleted = after.deleted;
            result.reason = Some(code.to_owned());
            let server = server.expect("a conflict needs a server entity");
            conflict = Some(ConflictRecord {
                conflict_id: ConflictId::default(),
                op_id: op.op_id.clone(),
                device_id: batch.device_id.clone(),
                entity_type: op.entity_type,
                entity_id: op.entity_id.clone(),
                kind: op.kind,
                case,
                strategy,
                decision: code.to_owned(),
                server_version: server.version,
                server_entity: server.to_value(),
                client_payload: op.payload.clone(),
                client_timestamp_ms: op.client_timestamp_ms,
                status: if manual {
                    ConflictStatus::Open
                } else {
                    ConflictStatus::Resolved
                },
                resolution: (!manual).then(|| "auto".to_owned()),
                created_at_ms: now,
                resolved_at_ms: (!manual).then_some(now),
            });
        }
        OpOutcome {
            result,
            remember: true,
            stored: Stored::Full,
            strategy: Some(strategy),
            entity: next.map(|state| (key, state)),
            conflict,
        }
    }

    /// Handles `GET /api/sync/changes`: the user's changes after `since`, at most `limit`,
    /// in commit order. With `device_id`, records the device's pull cursor.
    pub fn changes(
        &mut self,
        user: &UserId,
        device_id: Option<&DeviceId>,
        since: u64,
        limit: usize,
        now: Millis,
    ) -> Result<ChangesPage, RequestError> {
        if !(1..=PULL_LIMIT_MAX).contains(&limit) {
            return Err(RequestError::invalid(format!(
                "limit {limit} is out of range: use 1 to {PULL_LIMIT_MAX}"
            )));
        }
        if let Some(device_id) = device_id {
            check_id("device_id", device_id.as_str())
                .map_err(|e| RequestError::invalid(e.to_string()))?;
            self.check_device(user, device_id)?;
        }
        let tables = self.store.tables();
        let range = (user.clone(), since.saturating_add(1))..=(user.clone(), u64::MAX);
        let mut entries = tables.changes.range(range);
        let mut changes = Vec::with_capacity(limit);
        for ((_, cursor), key) in entries.by_ref().take(limit) {
            let Some(stored) = tables.entities.get(key).filter(|s| &s.owner == user) else {
                unreachable!("the change index lists only the user's own stored entities");
            };
            changes.push(Change {
                cursor: *cursor,
                entity_type: key.0,
                entity_id: key.1.clone(),
                version: stored.state.version,
                deleted: stored.state.deleted,
                entity: stored.state.to_value(),
            });
        }
        let has_more = entries.next().is_some();
        let next_cursor = changes.last().map_or(since, |c| c.cursor);
        if self.planted.server_leaks_other_users {
            if let Some((key, stored)) = tables.entities.iter().find(|(_, s)| &s.owner != user) {
                changes.push(Change {
                    cursor: since,
                    entity_type: key.0,
                    entity_id: key.1.clone(),
                    version: stored.state.version,
                    deleted: stored.state.deleted,
                    entity: stored.state.to_value(),
                });
            }
        }
        // Only a batch registers a device: a pull records the cursor of a device the user
        // already registered and claims nothing, so no one can squat another's device id.
        let registered =
            device_id.filter(|device_id| self.store.tables().devices.get(*device_id) == Some(user));
        if let Some(device_id) = registered {
            let mut device = self.device_state(user, device_id);
            device.pull_cursor = next_cursor;
            device.last_pull_at_ms = Some(now);
            let seq = self.store.tables().next_seq(user);
            self.store.commit(Commit {
                user: user.clone(),
                seq,
                device: Some(device),
                ..Commit::default()
            });
        }
        Ok(ChangesPage {
            changes,
            next_cursor,
            has_more,
        })
    }

    /// The user's conflicts, optionally by status, oldest first (every one: for tests and
    /// the simulation; requests page through [`Server::conflicts_page`]).
    pub fn conflicts(&self, user: &UserId, status: Option<ConflictStatus>) -> Vec<ConflictRecord> {
        let tables = self.store.tables();
        let range = (user.clone(), 0)..=(user.clone(), u64::MAX);
        tables
            .user_conflicts
            .range(range)
            .filter_map(|(_, id)| tables.sync_conflicts.get(id))
            .filter(|(_, record)| status.is_none_or(|s| record.status == s))
            .map(|(_, record)| record.clone())
            .collect()
    }

    /// Handles `GET /api/sync/conflicts`: the user's conflicts created after `since`,
    /// optionally by status, at most `limit`. A page looks at no more than
    /// [`CONFLICT_SCAN_MAX`] conflicts, so a long run of the other status ends a page early
    /// (with `has_more`) instead of holding the server.
    pub fn conflicts_page(
        &self,
        user: &UserId,
        status: Option<ConflictStatus>,
        since: u64,
        limit: usize,
    ) -> Result<wire::ConflictsPage, RequestError> {
        if !(1..=PULL_LIMIT_MAX).contains(&limit) {
            return Err(RequestError::invalid(format!(
                "limit {limit} is out of range: use 1 to {PULL_LIMIT_MAX}"
            )));
        }
        let tables = self.store.tables();
        let range = (user.clone(), since.saturating_add(1))..=(user.clone(), u64::MAX);
        let mut entries = tables.user_conflicts.range(range);
        let mut conflicts = Vec::new();
        let mut next_cursor = since;
        for ((_, cursor), id) in entries.by_ref().take(CONFLICT_SCAN_MAX) {
            next_cursor = *cursor;
            if let Some((_, record)) = tables.sync_conflicts.get(id)
                && status.is_none_or(|s| record.status == s)
            {
                conflicts.push(record.clone());
                if conflicts.len() == limit {
                    break;
                }
            }
        }
        Ok(wire::ConflictsPage {
            conflicts,
            next_cursor,
            has_more: entries.next().is_some(),
        })
    }

    /// Handles `POST /api/sync/conflicts/<id>/resolve`.
    pub fn resolve_conflict(
        &mut self,
        user: &UserId,
        conflict_id: &ConflictId,
        request: &ResolveRequest,
        now: Millis,
    ) -> Result<ConflictRecord, RequestError> {
        let tables = self.store.tables();
        let Some((owner, record)) = tables.sync_conflicts.get(conflict_id) else {
            return Err(RequestError::NotFound {
                message: format!("no conflict {conflict_id}"),
            });
        };
        if owner != user {
            return Err(RequestError::Forbidden {
                message: format!("conflict {conflict_id} belongs to another user"),
            });
        }
        if record.status == ConflictStatus::Resolved {
            return Err(RequestError::AlreadyResolved {
                message: format!("conflict {conflict_id} is already resolved"),
            });
        }
        let key = (record.entity_type, record.entity_id.clone());
        let Some(current) = tables.entities.get(&key).map(|stored| &stored.state) else {
            return Err(RequestError::NotFound {
                message: format!("conflict {conflict_id} names no stored entity"),
            });
        };
        let (deleted, fields) = match (request.resolution, &request.entity) {
            (Resolution::KeepServer | Resolution::KeepClient, Some(_)) => {
                return Err(RequestError::invalid(
                    "entity is only accepted with resolution custom",
                ));
            }
            (Resolution::Custom, None) => {
                return Err(RequestError::invalid("resolution custom needs an entity"));
            }
            (Resolution::Custom, Some(entity)) => {
                let Some(fields) = entity.as_object() else {
                    return Err(RequestError::invalid("entity must be a JSON object"));
                };
                if fields.get("id").and_then(Value::as_str) != Some(record.entity_id.as_str()) {
                    return Err(RequestError::invalid(format!(
                        "entity id must be {:?}",
                        record.entity_id.as_str()
                    )));
                }
                // A custom entity is a whole entity written by the user: it gets the rules of
                // a create's payload and the parent checks of any write.
                crate::op::validate_entity(record.entity_type, &record.entity_id, entity)
                    .map_err(|e| RequestError::invalid(format!("custom entity: {e}")))?;
                self.check_parents(user, record.entity_type, fields)
                    .map_err(|refusal| parent_request_error(refusal, record.entity_type))?;
                (false, Some(fields.clone()))
            }
            (Resolution::KeepServer, None) => (current.deleted, None),
            (Resolution::KeepClient, None) if record.kind == OpKind::Delete => (true, None),
            (Resolution::KeepClient, None) => {
                let mut patch = record.client_payload.clone();
                if let Some(fields) = patch.as_object_mut() {
                    fields.remove("id");
                }
                let mut entity = current.to_value();
                delta::apply(&mut entity, &patch);
                (false, entity.as_object().cloned())
            }
        };
        if let Some(fields) = &fields {
            let bytes = serde_json::to_vec(fields).map_or(usize::MAX, |b| b.len());
            if bytes > ENTITY_BYTES_MAX {
                return Err(RequestError::BadRequest {
                    code: "entity_too_large",
                    message: format!(
                        "the resolved entity would be {bytes} bytes, more than the limit of \
                         {ENTITY_BYTES_MAX}"
                    ),
                });
            }
        }
        let resolution = match request.resolution {
            Resolution::KeepServer => "keep_server",
            Resolution::KeepClient => "keep_client",
            Resolution::Custom => "custom",
        };
        let mut resolved = record.clone();
        resolved.status = ConflictStatus::Resolved;
        resolved.resolution = Some(resolution.to_owned());
        resolved.resolved_at_ms = Some(now);
        let seq = tables.next_seq(user);
        let changed = request.resolution != Resolution::KeepServer;
        let next = changed.then(|| {
            let version = current.version + 1;
            let stamp = conflict::Stamp {
                version,
                timestamp_ms: now,
                device_id: record.device_id.clone(),
            };
            let fields = fields.unwrap_or_else(|| current.fields.clone());
            let mut field_stamps = current.field_stamps.clone();
            for field in fields.keys().chain(current.fields.keys()) {
                field_stamps.insert(field.clone(), stamp.clone());
            }
            ServerEntity {
                version,
                deleted,
                fields,
                field_stamps,
                last_write: stamp,
            }
        });
        let history = HistoryRow {
            seq,
            at_ms: now,
            device_id: record.device_id.clone(),
            op_id: Some(record.op_id.clone()),
            idempotency_key: None,
            entity_type: record.entity_type,
            entity_id: record.entity_id.clone(),
            action: "resolve".to_owned(),
            status: "resolved".to_owned(),
            reason: Some(resolution.to_owned()),
            version: Some(next.as_ref().map_or(current.version, |n| n.version)),
            write: next
                .as_ref()
                .map(|n| replay::LoggedWrite::Resolution { entity: n.clone() }),
        };
        self.store.commit(Commit {
            user: user.clone(),
            seq,
            entity: next.map(|n| (key, n)),
            history: Some(history),
            conflict: Some(resolved.clone()),
            ..Commit::default()
        });
        Ok(resolved)
    }

    /// Handles `GET /api/sync/state?device_id=…`.
    pub fn state(
        &self,
        user: &UserId,
        device_id: &DeviceId,
    ) -> Result<StateResponse, RequestError> {
        check_id("device_id", device_id.as_str())
            .map_err(|e| RequestError::invalid(e.to_string()))?;
        self.check_device(user, device_id)?;
        let tables = self.store.tables();
        let range = (user.clone(), 0)..=(user.clone(), u64::MAX);
        let counts = tables.user_counts.get(user).copied().unwrap_or_default();
        Ok(StateResponse {
            device: self.device_state(user, device_id),
            latest_cursor: tables
                .changes
                .range(range)
                .next_back()
                .map_or(0, |((_, c), _)| *c),
            open_conflicts: counts.open_conflicts,
            entity_count: counts.live_entities,
        })
    }

    /// Handles `GET /api/sync/history?limit=<n>`: the user's latest rows, newest first.
    pub fn history(&self, user: &UserId, limit: usize) -> Result<Vec<HistoryRow>, RequestError> {
        if !(1..=HISTORY_LIMIT_MAX).contains(&limit) {
            return Err(RequestError::invalid(format!(
                "limit {limit} is out of range: use 1 to {HISTORY_LIMIT_MAX}"
            )));
        }
        let range = (user.clone(), 0)..=(user.clone(), u64::MAX);
        Ok(self
            .store
            .tables()
            .sync_history
            .range(range)
            .rev()
            .take(limit)
            .map(|(_, row)| row.clone())
            .collect())
    }

    /// Handles `GET /api/sync/metrics`: the user's windows, oldest first.
    pub fn metrics(&self, user: &UserId) -> Vec<MetricsWindow> {
        let range = (user.clone(), Millis(0))..=(user.clone(), Millis(u64::MAX));
        self.store
            .tables()
            .sync_metrics
            .range(range)
            .map(|(_, w)| w.clone())
            .collect()
    }

    /// The seed's `cleanup_old_sync_data`: drops idempotency keys past their retention and
    /// history, resolved conflicts, batches and metrics past `HISTORY_RETENTION_MS`.
    /// Entities and tombstones are kept.
    pub fn cleanup(&mut self, now: Millis) -> CleanupReport {
        let key_cutoff = now.0.saturating_sub(self.config.idempotency_retention_ms());
        let cutoff = now.0.saturating_sub(HISTORY_RETENTION_MS);
        let mut report = CleanupReport::default();
        self.store.retain(&mut |tables| {
            report.idempotency_keys = retain_counting(&mut tables.sync_idempotency_keys, |r| {
                r.at_ms.0 >= key_cutoff
            });
            report.history_rows =
                retain_counting(&mut tables.sync_history, |r| r.at_ms.0 >= cutoff);
            report.conflicts = retain_counting(&mut tables.sync_conflicts, |(_, c)| {
                c.status == ConflictStatus::Open || c.resolved_at_ms.is_some_and(|t| t.0 >= cutoff)
            });
            let kept = &tables.sync_conflicts;
            tables.user_conflicts.retain(|_, id| kept.contains_key(id));
            report.batches =
                retain_counting(&mut tables.sync_batches, |b| b.received_at_ms.0 >= cutoff);
            report.metrics_windows = retain_counting(&mut tables.sync_metrics, |w| {
                w.window_start_ms.0 + METRICS_WINDOW_MS >= cutoff
            });
        });
        report
    }
}

/// The checks of a batch as a whole that need no server state: op count, ids and (when
/// `verify_checksums`) the batch checksum. The HTTP layer runs them before it takes the
/// server's lock, since checksumming a 4 MiB batch takes milliseconds.
pub fn check_batch(batch: &Batch, verify_checksums: bool) -> Result<(), RequestError> {
    if batch.ops.len() > BATCH_OP_COUNT_MAX {
        return Err(RequestError::TooLarge {
            message: format!(
                "batch carries {} ops, more than the limit of {BATCH_OP_COUNT_MAX}",
                batch.ops.len()
            ),
        });
    }
    check_id("batch_id", batch.batch_id.as_str())
        .map_err(|e| RequestError::invalid(e.to_string()))?;
    check_id("device_id", batch.device_id.as_str())
        .map_err(|e| RequestError::invalid(e.to_string()))?;
    if !verify_checksums {
        return Ok(());
    }
    batch.verify_checksum().map_err(|error| match error {
        OpError::ChecksumFormat { .. } => RequestError::invalid(format!("batch {error}")),
        _ => RequestError::ChecksumMismatch {
            message: format!("batch {error}"),
        },
    })
}

/// Why a write's parent references are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParentRefusal {
    /// A referenced parent does not exist (yet).
    Missing,
    /// A referenced parent belongs to another user.
    Forbidden,
    /// A referenced parent is a tombstone.
    Deleted,
}

/// The answer to a resolution whose entity references a parent it may not.
fn parent_request_error(refusal: ParentRefusal, entity_type: EntityType) -> RequestError {
    match refusal {
        ParentRefusal::Missing => RequestError::invalid(format!(
            "custom {entity_type} references a parent that does not exist"
        )),
        ParentRefusal::Forbidden => RequestError::Forbidden {
            message: format!("custom {entity_type} references another user's parent"),
        },
        ParentRefusal::Deleted => {
            RequestError::invalid(format!("custom {entity_type} references a deleted parent"))
        }
    }
}

/// Whether an update's patch clears (sets to `null`) a parent reference the entity needs.
fn clears_needed_parent(
    entity_type: EntityType,
    current: &serde_json::Map<String, Value>,
    patch: &serde_json::Map<String, Value>,
) -> bool {
    let clears = entity_type
        .parents()
        .iter()
        .any(|p| patch.get(&p.reference_field()) == Some(&Value::Null));
    if !clears {
        return false;
    }
    let mut after = current.clone();
    for parent in entity_type.parents() {
        let field = parent.reference_field();
        match patch.get(&field) {
            Some(Value::Null) => {
                after.remove(&field);
            }
            Some(value) => {
                after.insert(field, value.clone());
            }
            None => {}
        }
    }
    crate::op::check_parent_presence(entity_type, &after).is_err()
}

/// The size of an entity's fields as JSON, in bytes: what [`ENTITY_BYTES_MAX`] limits.
/// Counted as it is written, without a buffer.
fn entity_bytes(entity: &ServerEntity) -> usize {
    let mut counter = ByteCounter(0);
    match serde_json::to_writer(&mut counter, &entity.fields) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// A writer that only counts the bytes written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(bytes.len());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps the rows `keep` accepts and returns how many were removed.
fn retain_counting<K: Ord, V>(
    table: &mut BTreeMap<K, V>,
    mut keep: impl FnMut(&V) -> bool,
) -> usize {
    let before = table.len();
    table.retain(|_, row| keep(row));
    before - table.len()
}

/// The decision code carried as `reason` on a conflict result.
pub fn decision_code(decision: &Decision, strategy: Strategy) -> &'static str {
    match (decision, strategy) {
        (Decision::Write { .. }, Strategy::FieldLevel | Strategy::Merge) => "merged",
        (Decision::Write { .. }, _) => "client_applied",
        (Decision::Delete, _) => "deleted",
        (Decision::KeepServer, _) => "server_kept",
        (Decision::AlreadyDone, _) => "already_deleted",
        (Decision::Manual, _) => "manual",
    }
}

/// A conflict's id: the user's commit that created it, after a tag of the user (the first
/// eight hex digits of the SHA-256 of their id) that keeps ids unique across users. It
/// tells the user nothing they do not know.
fn conflict_id(user: &UserId, seq: u64) -> ConflictId {
    let tag = crate::checksum::sha256_hex(user.as_str().as_bytes());
    ConflictId(format!("conflict-{}-{seq}", &tag[..8]))
}

/// What of an op the server stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    /// Its queue row and its history row.
    Full,
    /// Its history row only: a duplicate, or an op that reuses another op's key or id,
    /// whose queue row must stay the original's.
    HistoryOnly,
    /// Nothing: its checksum did not verify or its ids break the id rule, so none of what
    /// it claims can be trusted or stored.
    Nothing,
}

/// What processing one op decided, before it is committed.
struct OpOutcome {
    result: OpResult,
    /// Whether the answer is final and goes under the idempotency key.
    remember: bool,
    /// What of the op is stored besides its count in the metrics.
    stored: Stored,
    strategy: Option<Strategy>,
    entity: Option<(EntityKey, ServerEntity)>,
    conflict: Option<ConflictRecord>,
}

impl OpOutcome {
    fn answer(op: &Op, status: OpStatus, reason: &str, remember: bool) -> OpOutcome {
        OpOutcome {
            result: OpResult {
                op_id: op.op_id.clone(),
                status,
                version: None,
                entity: None,
                deleted: false,
                conflict_id: None,
                reason: Some(reason.to_owned()),
            },
            remember,
            stored: Stored::Full,
            strategy: None,
            entity: None,
            conflict: None,
        }
    }

    /// A rejection that stores `stored` of the op and is never remembered.
    fn unstored(op: &Op, reason: &str, stored: Stored) -> OpOutcome {
        OpOutcome {
            stored,
            ..OpOutcome::answer(op, OpStatus::Rejected, reason, false)
        }
    }
}

#[cfg(test)]
mod tests;
