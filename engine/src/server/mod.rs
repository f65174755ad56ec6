//! The server, sans-IO: batches, idempotency, conflicts, pulls, state, history, metrics and
//! cleanup over the tables of [`tables`]. The HTTP layer (in `rockhound-sim`) authenticates
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
/// The most history rows one request returns.
pub const HISTORY_LIMIT_MAX: usize = 1_000;
/// The most entities the server holds before it answers `retry` with `storage_full`.
pub const ENTITY_COUNT_MAX: usize = 5_000_000;
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

    /// Handles `POST /api/sync/batch` for the authenticated `user` at server time `now`.
    pub fn handle_batch(
        &mut self,
        user: &UserId,
        batch: &Batch,
        now: Millis,
    ) -> Result<BatchResponse, RequestError> {
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
        let checked = if self.planted.server_skips_checksums {
            Ok(())
        } else {
            batch.verify_checksum()
        };
        if let Err(error) = checked {
            return Err(match error {
                OpError::ChecksumFormat { .. } => RequestError::invalid(format!("batch {error}")),
                _ => RequestError::ChecksumMismatch {
                    message: format!("batch {error}"),
                },
            });
        }
        self.check_device(user, &batch.device_id)?;

        let mut results = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            results.push(self.handle_op(user, batch, op, now));
        }

        let mut statuses = BTreeMap::new();
        for result in &results {
            *statuses.entry(result.status).or_insert(0) += 1;
        }
        let mut device = self.device_state(user, &batch.device_id);
        device.batch_count += 1;
        device.last_batch_at_ms = Some(now);
        let mut metrics = self.metrics_window(user, now);
        metrics.batches += 1;
        let seq = self.store.tables().seq + 1;
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
            device: Some(device),
            metrics: Some(metrics),
            ..Commit::default()
        });
        Ok(BatchResponse {
            batch_id: batch.batch_id.clone(),
            server_time_ms: now,
            results,
        })
    }

    fn check_device(&self, user: &UserId, device_id: &DeviceId) -> Result<(), RequestError> {
        match self.store.tables().devices.get(device_id) {
            Some(owner) if owner != user => Err(RequestError::Forbidden {
                message: format!("device {device_id} belongs to another user"),
            }),
            _ => Ok(()),
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

    /// Processes one op and commits everything it changes in one step.
    fn handle_op(&mut self, user: &UserId, batch: &Batch, op: &Op, now: Millis) -> OpResult {
        let outcome = self.decide_op(user, batch, op, now);
        let tables = self.store.tables();
        let seq = tables.seq + 1;
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
        // A duplicate has the same checksum, hence the same op id, as the original, whose
        // queue row was committed with its idempotency record: it must stay untouched.
        let duplicate = result.status == OpStatus::Duplicate;
        let queue_key = (user.clone(), op.op_id.clone());
        assert!(!duplicate || tables.sync_queue.contains_key(&queue_key));
        let queue = (!duplicate).then(|| {
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
        let history = HistoryRow {
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
        };
        let mut device = self.device_state(user, &batch.device_id);
        device.op_count += 1;
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
            record.conflict_id = conflict_id(seq);
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
            history: Some(history),
            conflict,
            device: Some(device),
            metrics: Some(metrics),
            batch: None,
        });
        result
    }

    /// Decides an op without changing anything.
    fn decide_op(&self, user: &UserId, batch: &Batch, op: &Op, now: Millis) -> OpOutcome {
        let tables = self.store.tables();
        let reject = |reason: &str| OpOutcome::answer(op, OpStatus::Rejected, reason, true);
        if op.validate().is_err() {
            return reject("invalid_op");
        }
        if op.verify_checksum().is_err() && !self.planted.server_skips_checksums {
            return OpOutcome::answer(op, OpStatus::Rejected, "checksum_mismatch", false);
        }
        if let Some(record) = tables
            .sync_idempotency_keys
            .get(&(user.clone(), op.idempotency_key.clone()))
            .filter(|_| !self.planted.server_ignores_idempotency)
        {
            if record.op_checksum != op.checksum {
                return OpOutcome::answer(op, OpStatus::Rejected, "idempotency_key_reused", false);
            }
            let mut result = record.result.clone();
            result.status = OpStatus::Duplicate;
            return OpOutcome {
                result,
                remember: false,
                strategy: None,
                entity: None,
                conflict: None,
            };
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
        if op.kind == OpKind::Create {
            for parent in op.entity_type.parents() {
                let Some(Value::String(parent_id)) = op.payload.get(parent.reference_field())
                else {
                    continue;
                };
                match tables.entities.get(&(*parent, EntityId(parent_id.clone()))) {
                    None => {
                        return OpOutcome::answer(
                            op,
                            OpStatus::Blocked,
                            "dependency_missing",
                            false,
                        );
                    }
                    Some(p) if &p.owner != user => return reject("forbidden"),
                    Some(p) if p.state.deleted => return reject("parent_deleted"),
                    Some(_) => {}
                }
            }
            if tables.entities.len() >= ENTITY_COUNT_MAX {
                return OpOutcome::answer(op, OpStatus::Retry, "storage_full", false);
            }
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
        let next = conflict::commit(server, &decision, &write);
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
            && decision != Decision::AlreadyDone
        {
            let code = decision_code(&decision, strategy);
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
                status: if decision == Decision::Manual {
                    ConflictStatus::Open
                } else {
                    ConflictStatus::Resolved
                },
                resolution: (decision != Decision::Manual).then(|| "auto".to_owned()),
                created_at_ms: now,
                resolved_at_ms: (decision != Decision::Manual).then_some(now),
            });
        }
        OpOutcome {
            result,
            remember: true,
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
            let stored = &tables.entities[key];
            assert_eq!(
                &stored.owner, user,
                "the change index only lists the user's own entities"
            );
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
        if let Some(device_id) = device_id {
            let mut device = self.device_state(user, device_id);
            device.pull_cursor = next_cursor;
            device.last_pull_at_ms = Some(now);
            let seq = self.store.tables().seq + 1;
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

    /// Handles `GET /api/sync/conflicts`: the user's conflicts, optionally by status.
    pub fn conflicts(&self, user: &UserId, status: Option<ConflictStatus>) -> Vec<ConflictRecord> {
        self.store
            .tables()
            .sync_conflicts
            .values()
            .filter(|(owner, record)| owner == user && status.is_none_or(|s| record.status == s))
            .map(|(_, record)| record.clone())
            .collect()
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
        let current = &tables.entities[&key].state;
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
        let resolution = match request.resolution {
            Resolution::KeepServer => "keep_server",
            Resolution::KeepClient => "keep_client",
            Resolution::Custom => "custom",
        };
        let mut resolved = record.clone();
        resolved.status = ConflictStatus::Resolved;
        resolved.resolution = Some(resolution.to_owned());
        resolved.resolved_at_ms = Some(now);
        let seq = tables.seq + 1;
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
        Ok(StateResponse {
            device: self.device_state(user, device_id),
            latest_cursor: tables
                .changes
                .range(range.clone())
                .next_back()
                .map_or(0, |((_, c), _)| *c),
            open_conflicts: self.conflicts(user, Some(ConflictStatus::Open)).len() as u64,
            entity_count: tables
                .changes
                .range(range)
                .filter(|(_, key)| !tables.entities[*key].state.deleted)
                .count() as u64,
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
            report.batches =
                retain_counting(&mut tables.sync_batches, |b| b.received_at_ms.0 >= cutoff);
            report.metrics_windows = retain_counting(&mut tables.sync_metrics, |w| {
                w.window_start_ms.0 + METRICS_WINDOW_MS >= cutoff
            });
        });
        report
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

fn conflict_id(seq: u64) -> ConflictId {
    ConflictId(format!("conflict-{seq}"))
}

/// What processing one op decided, before it is committed.
struct OpOutcome {
    result: OpResult,
    /// Whether the answer is final and goes under the idempotency key.
    remember: bool,
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
            strategy: None,
            entity: None,
            conflict: None,
        }
    }
}

#[cfg(test)]
mod tests;
