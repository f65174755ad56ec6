//! The write decision for one admitted op: idempotency, versions, the conflict strategy and
//! what of the op is stored. Nothing is written here; [`super::batch`] commits the outcome.

use super::admission::{ParentRefusal, clears_needed_parent};
use super::tables::{EntityKey, IdempotencyRecord, ServerStore};
use super::wire::{
    ConflictRecord, ConflictStatus, DecisionCode, OpResult, OpStatus, Refusal, ResolvedBy,
};
use super::{ENTITY_BYTES_MAX, Server};
use crate::conflict::{self, Case, Decision, Detection, Invalid, ServerEntity, Strategy, Write};
use crate::ids::{ConflictId, IdempotencyKey, UserId};
use crate::op::{Batch, Op, OpKind};
use crate::time::Millis;

impl<S: ServerStore> Server<S> {
    /// Decides an op without changing anything.
    ///
    /// The order is the point: the checksum is verified before anything else about the op
    /// is decided or remembered, so a damaged copy can never poison its key or its op id;
    /// ids that break the id rule are refused before anything stores them. Then the op's
    /// preconditions on the server's state, then the write itself.
    pub(super) fn decide_op(
        &self,
        user: &UserId,
        batch: &Batch,
        op: &Op,
        now: Millis,
    ) -> OpOutcome {
        if let Some(answer) = self.screen(user, op, now) {
            return answer;
        }
        if let Some(answer) = self.check_preconditions(user, op) {
            return answer;
        }
        self.decide_write(user, batch, op, now)
    }

    /// The record kept under `user`'s `key`. Keys are the user's: another user's op may
    /// carry the same one (unless the planted bug looks them up across users).
    fn idempotency_record(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
    ) -> Option<&IdempotencyRecord> {
        let keys = &self.store.tables().sync_idempotency_keys;
        if self.config.planted.server.shares_keys_across_users {
            return keys
                .iter()
                .find(|((_, other), _)| other == key)
                .map(|(_, record)| record);
        }
        keys.get(&(user.clone(), key.clone()))
    }

    /// What is decided from the op alone and its key: integrity, ids, a duplicate, a reused
    /// key or op id, shape and age. `None`: the op goes on.
    fn screen(&self, user: &UserId, op: &Op, now: Millis) -> Option<OpOutcome> {
        let tables = self.store.tables();
        if !self.config.planted.server.skips_checksums && op.verify_checksum().is_err() {
            return Some(OpOutcome::unstored(
                op,
                Refusal::ChecksumMismatch,
                Stored::Nothing,
            ));
        }
        if op.validate_ids().is_err() {
            return Some(OpOutcome::unstored(op, Refusal::InvalidOp, Stored::Nothing));
        }
        if let Some(record) = self
            .idempotency_record(user, &op.idempotency_key)
            .filter(|_| !self.config.planted.server.ignores_idempotency)
        {
            if record.op_checksum != op.checksum {
                assert!(
                    !self.config.planted.server.panics_on_reused_key,
                    "planted: a reused idempotency key panics the request"
                );
                let stored = Stored::HistoryOnly;
                return Some(OpOutcome::unstored(
                    op,
                    Refusal::IdempotencyKeyReused,
                    stored,
                ));
            }
            // A resent op gets its first answer again. An applied op (or a decided conflict)
            // is answered `duplicate`, so the client knows it was seen; a rejection stays
            // `rejected` with its reason: a duplicate would read as settled well.
            let mut result = record.result.clone();
            if matches!(result.status, OpStatus::Applied | OpStatus::Conflict) {
                result.status = OpStatus::Duplicate;
            }
            return Some(OpOutcome {
                result,
                remember: false,
                stored: Stored::HistoryOnly,
                strategy: None,
                entity: None,
                conflict: None,
            });
        }
        // An op id names one op: another key under the same id would overwrite the first
        // op's queue row (and with it what its dependents see).
        if tables
            .sync_queue
            .get(&(user.clone(), op.op_id.clone()))
            .is_some_and(|row| row.idempotency_key != op.idempotency_key)
        {
            return Some(OpOutcome::unstored(
                op,
                Refusal::OpIdReused,
                Stored::HistoryOnly,
            ));
        }
        match op.validate() {
            Ok(()) => {}
            Err(crate::op::OpError::Schema { .. }) => {
                return Some(OpOutcome::reject(op, Refusal::InvalidEntity));
            }
            Err(_) => return Some(OpOutcome::reject(op, Refusal::InvalidOp)),
        }
        if now.since_ms(op.created_at_ms) > self.config.idempotency_retention_ms() {
            return Some(OpOutcome::reject(op, Refusal::Expired));
        }
        None
    }

    /// What the op needs of the server's state before its write is decided: applied
    /// dependencies, an entity of its own user, usable parents, no live children under a
    /// deleted parent, room in the tables. `None`: the write is decided.
    fn check_preconditions(&self, user: &UserId, op: &Op) -> Option<OpOutcome> {
        let tables = self.store.tables();
        let blocked = |code| Some(OpOutcome::answer(op, OpStatus::Blocked, code, false));
        let reject = |code| Some(OpOutcome::reject(op, code));
        for dependency in &op.depends_on {
            match tables.sync_queue.get(&(user.clone(), dependency.clone())) {
                Some(row) if matches!(row.status, OpStatus::Applied | OpStatus::Conflict) => {}
                Some(_) => return blocked(Refusal::DependencyFailed),
                None => return blocked(Refusal::DependencyMissing),
            }
        }
        let key: EntityKey = (op.entity_type, op.entity_id.clone());
        let stored = tables.entities.get(&key);
        if stored.is_some_and(|s| &s.owner != user) {
            return reject(Refusal::Forbidden);
        }
        if let Some(fields) = op.payload.as_object()
            && let Err(refusal) = self.check_parents(user, op.entity_type, fields)
        {
            return match refusal {
                ParentRefusal::Missing => blocked(Refusal::DependencyMissing),
                ParentRefusal::Forbidden => reject(Refusal::Forbidden),
                ParentRefusal::Deleted => reject(Refusal::ParentDeleted),
            };
        }
        if op.kind == OpKind::Update
            && let (Some(server), Some(patch)) = (stored, op.payload.as_object())
            && clears_needed_parent(op.entity_type, &server.state.fields, patch)
        {
            return reject(Refusal::ParentRequired);
        }
        // Deleting a parent is refused while live children reference it: the server never
        // orphans a child (see docs/api.md).
        if op.kind == OpKind::Delete
            && tables.live_children.contains_key(&key)
            && !self.config.planted.server.orphans_children
        {
            return reject(Refusal::HasChildren);
        }
        let full = (op.kind == OpKind::Create && tables.entities.len() >= self.capacity.entities)
            || tables.sync_history.len() >= self.capacity.history_rows;
        if full {
            return Some(OpOutcome::answer(
                op,
                OpStatus::Retry,
                Refusal::StorageFull,
                false,
            ));
        }
        None
    }

    /// The write's decision: clean, or a conflict its type's strategy decides; refused when
    /// the entity would grow beyond its limit.
    fn decide_write(&self, user: &UserId, batch: &Batch, op: &Op, now: Millis) -> OpOutcome {
        let key: EntityKey = (op.entity_type, op.entity_id.clone());
        let stored = self.store.tables().entities.get(&key);
        debug_assert!(stored.is_none_or(|s| &s.owner == user), "checked before");
        let server = stored.map(|s| &s.state);
        let mut write = Write::of(op, &batch.device_id);
        let strategy = self.config.entities.rules(op.entity_type).strategy;
        if self.config.planted.server.lww_uses_server_clock && strategy == Strategy::LatestTimestamp
        {
            write.timestamp_ms = now;
        }
        let (decision, case) = match conflict::detect(server, &write) {
            Detection::Invalid(invalid) => return OpOutcome::reject(op, refusal_of(invalid)),
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
        match case {
            _ if already_done => crate::coverage::hit("server.answer.applied.already_deleted"),
            Some(_) => crate::coverage::hit_with(|| format!("decide.{strategy}.{code}")),
            None => {}
        }
        let manual = decision == Decision::Manual;
        let mut next = conflict::commit_owned(server, decision, &write);
        if self.config.planted.server.invents_fields && op.kind == OpKind::Create {
            if let Some(next) = next.as_mut() {
                next.fields.entry("reviewed").or_insert(false.into());
            }
        }
        if next
            .as_ref()
            .is_some_and(|n| !n.deleted && entity_bytes(n) > ENTITY_BYTES_MAX)
        {
            return OpOutcome::reject(op, Refusal::EntityTooLarge);
        }
        let after = next
            .as_ref()
            .or(server)
            .expect("a decided write leaves an entity");
        let decided = Decided {
            case,
            strategy,
            code,
            manual,
            already_done,
            server,
        };
        let (result, conflict) = decided.answer(op, batch, after, now);
        OpOutcome {
            result,
            remember: true,
            stored: Stored::Full,
            strategy: Some(strategy),
            entity: next.map(|state| (key, state)),
            conflict,
        }
    }
}

/// A write's decision, before its answer is built.
struct Decided<'a> {
    /// The conflict case, if the write met one.
    case: Option<Case>,
    strategy: Strategy,
    code: DecisionCode,
    /// Left open for a person.
    manual: bool,
    /// A delete that met a tombstone: answered as applied.
    already_done: bool,
    /// The server's entity the write met.
    server: Option<&'a ServerEntity>,
}

impl Decided<'_> {
    /// The op's result and, for a conflict, its record; `after` is the entity afterwards.
    fn answer(
        &self,
        op: &Op,
        batch: &Batch,
        after: &ServerEntity,
        now: Millis,
    ) -> (OpResult, Option<ConflictRecord>) {
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
        if let Some(case) = self.case
            && !self.already_done
        {
            result.status = OpStatus::Conflict;
            result.entity = (!after.deleted).then(|| after.to_value());
            result.deleted = after.deleted;
            result.reason = Some(self.code.into());
            let server = self.server.expect("a conflict needs a server entity");
            conflict = Some(ConflictRecord {
                conflict_id: ConflictId::default(),
                op_id: op.op_id.clone(),
                device_id: batch.device_id.clone(),
                entity_type: op.entity_type,
                entity_id: op.entity_id.clone(),
                kind: op.kind,
                case,
                strategy: self.strategy,
                decision: self.code,
                server_version: server.version,
                server_entity: server.to_value(),
                client_payload: op.payload.clone(),
                client_timestamp_ms: op.client_timestamp_ms,
                status: if self.manual {
                    ConflictStatus::Open
                } else {
                    ConflictStatus::Resolved
                },
                resolution: (!self.manual).then_some(ResolvedBy::Auto),
                created_at_ms: now,
                resolved_at_ms: (!self.manual).then_some(now),
            });
        }
        (result, conflict)
    }
}

/// The size of an entity's fields as JSON, in bytes: what [`ENTITY_BYTES_MAX`] limits.
/// Counted as it is written, without a buffer.
pub(super) fn entity_bytes(entity: &ServerEntity) -> usize {
    let mut counter = ByteCounter(0);
    match serde_json::to_writer(&mut counter, &entity.fields) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// A writer that only counts the bytes written to it.
pub(super) struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(bytes.len());
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The reason a write no strategy can decide is refused with.
fn refusal_of(invalid: Invalid) -> Refusal {
    match invalid {
        Invalid::NotFound => Refusal::NotFound,
        Invalid::CreateDeleted => Refusal::EntityDeleted,
        Invalid::VersionAhead => Refusal::VersionAhead,
    }
}

/// The decision code carried as `reason` on a conflict result.
pub fn decision_code(decision: &Decision, strategy: Strategy) -> DecisionCode {
    match (decision, strategy) {
        (Decision::Write { .. }, Strategy::FieldLevel | Strategy::Merge) => DecisionCode::Merged,
        (Decision::Write { .. }, _) => DecisionCode::ClientApplied,
        (Decision::Delete, _) => DecisionCode::Deleted,
        (Decision::KeepServer, _) => DecisionCode::ServerKept,
        (Decision::AlreadyDone, _) => DecisionCode::AlreadyDeleted,
        (Decision::Manual, _) => DecisionCode::Manual,
    }
}

/// A conflict's id: the user's commit that created it, after a tag of the user (the first
/// eight hex digits of the SHA-256 of their id) that keeps ids unique across users. It
/// tells the user nothing they do not know.
pub(super) fn conflict_id(user: &UserId, seq: u64) -> ConflictId {
    let tag = crate::checksum::sha256_hex(user.as_str().as_bytes());
    ConflictId(format!("conflict-{}-{seq}", &tag[..8]))
}

/// What of an op the server stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stored {
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
pub(super) struct OpOutcome {
    pub(super) result: OpResult,
    /// Whether the answer is final and goes under the idempotency key.
    pub(super) remember: bool,
    /// What of the op is stored besides its count in the metrics.
    pub(super) stored: Stored,
    pub(super) strategy: Option<Strategy>,
    pub(super) entity: Option<(EntityKey, ServerEntity)>,
    pub(super) conflict: Option<ConflictRecord>,
}

impl OpOutcome {
    pub(super) fn answer(op: &Op, status: OpStatus, code: Refusal, remember: bool) -> OpOutcome {
        OpOutcome {
            result: OpResult {
                op_id: op.op_id.clone(),
                status,
                version: None,
                entity: None,
                deleted: false,
                conflict_id: None,
                reason: Some(code.into()),
            },
            remember,
            stored: Stored::Full,
            strategy: None,
            entity: None,
            conflict: None,
        }
    }

    /// A rejection for good, remembered under the op's key.
    pub(super) fn reject(op: &Op, code: Refusal) -> OpOutcome {
        OpOutcome::answer(op, OpStatus::Rejected, code, true)
    }

    /// A rejection that stores `stored` of the op and is never remembered.
    pub(super) fn unstored(op: &Op, code: Refusal, stored: Stored) -> OpOutcome {
        OpOutcome {
            stored,
            ..OpOutcome::answer(op, OpStatus::Rejected, code, false)
        }
    }
}
