//! The user's edits: enqueue (one edit or a group, all or nothing), retry and discard of
//! dead-lettered ops, conflict resolutions, and `sync_now`.

use super::{ActionError, Coordinator, ENQUEUE_ALL_LEN_MAX, Edit, EditAction, EnqueueError};
use crate::client::observe::{Event, OpUpdate};
use crate::client::queue::{Entry, Status};
use crate::client::record::{Enqueued, Record};
use crate::client::store::QueueStore;
use crate::entity::{EntityType, Priority};
use crate::ids::{ConflictId, EntityId, IdempotencyKey, OpId};
use crate::op::{Op, OpKind};
use crate::server::wire::{Resolution, ResolveRequest};
use crate::time::Millis;
use serde_json::Value;

impl<S: QueueStore> Coordinator<S> {
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

    /// The seed's `update(original, modified)`: enqueues the RFC 7396 merge patch that turns
    /// `original` into `modified` (`delta::diff`), or nothing when they are equal (`None`).
    /// Both must be JSON objects; `id` is the entity's name, never changed by an update (a
    /// `modified` without it leaves it as it is).
    pub fn enqueue_change(
        &mut self,
        now: Millis,
        wall_ms: Millis,
        (entity_type, entity_id): (EntityType, EntityId),
        original: &Value,
        modified: &Value,
    ) -> Result<Option<OpId>, EnqueueError> {
        let not_a_change = |problem| EnqueueError::NotAChange {
            entity_type,
            entity_id: entity_id.clone(),
            problem,
        };
        if !original.is_object() || !modified.is_object() {
            return Err(not_a_change(
                "original and modified must both be JSON objects",
            ));
        }
        let mut fields = match crate::delta::diff(original, modified) {
            Value::Object(fields) => fields,
            _ => {
                return Err(not_a_change(
                    "original and modified must both be JSON objects",
                ));
            }
        };
        match fields.remove("id") {
            None | Some(Value::Null) => {}
            Some(_) => return Err(not_a_change("an update cannot change the entity's id")),
        }
        if fields.is_empty() {
            return Ok(None);
        }
        let edit = Edit {
            entity_type,
            entity_id,
            action: EditAction::Update(fields),
        };
        self.enqueue(now, wall_ms, edit).map(Some)
    }

    /// `useBatchSync`: enqueues several edits as one durable record — all or nothing.
    /// Later edits see earlier ones (a find log may reference a session created just before).
    pub fn enqueue_all(
        &mut self,
        now: Millis,
        wall_ms: Millis,
        edits: Vec<Edit>,
    ) -> Result<Vec<OpId>, EnqueueError> {
        self.enqueue_edits(now, wall_ms, edits, false)
    }

    /// `useSync` with its blocking flag: an edit the user waits on (a save that must reach
    /// the server before the app moves on) goes at priority 0, ahead of every ready op of
    /// a higher number. Priority never overrides causality: it still waits for what it
    /// blocks on (docs/client.md).
    pub fn enqueue_blocking(
        &mut self,
        now: Millis,
        wall_ms: Millis,
        edit: Edit,
    ) -> Result<OpId, EnqueueError> {
        let mut ids = self.enqueue_edits(now, wall_ms, vec![edit], true)?;
        Ok(ids.pop().expect("one edit, one op"))
    }

    fn enqueue_edits(
        &mut self,
        now: Millis,
        wall_ms: Millis,
        edits: Vec<Edit>,
        blocking: bool,
    ) -> Result<Vec<OpId>, EnqueueError> {
        if edits.len() > ENQUEUE_ALL_LEN_MAX {
            return Err(EnqueueError::TooMany { count: edits.len() });
        }
        let max = self.config.max_queue_size;
        if self.queue.len() + edits.len() > max {
            crate::coverage::hit("client.enqueue.queue_full");
            return Err(EnqueueError::QueueFull {
                len: self.queue.len(),
                max,
            });
        }
        let mut added: Vec<Enqueued> = Vec::with_capacity(edits.len());
        let mut result = Ok(());
        for edit in edits {
            match self.build(now, wall_ms, edit, blocking) {
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
        let ids = self.announce(added);
        self.queue.promote(now);
        Ok(ids)
    }

    /// Turns an edit into a sealed op against the current queue and replica. Deletes and
    /// blocking edits go at priority 0; every other op at its type's priority.
    pub(super) fn build(
        &self,
        now: Millis,
        wall_ms: Millis,
        edit: Edit,
        blocking: bool,
    ) -> Result<Enqueued, EnqueueError> {
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
        let depends_on = self.parent_dependencies(edit.entity_type, &payload, &mut blockers)?;
        if kind == OpKind::Delete {
            self.referencing_ops(&key, &mut blockers);
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
            priority: if kind == OpKind::Delete || blocking {
                Priority::CRITICAL
            } else {
                self.config.entities.rules(edit.entity_type).priority
            },
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

    /// The events of newly enqueued ops (each one's enqueue, its blocked status, the entity
    /// it changes); returns their ids in order.
    fn announce(&mut self, added: Vec<Enqueued>) -> Vec<OpId> {
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
        ids
    }

    /// The open creates of the parents `payload` references, which the op depends on (each
    /// also added to `blockers`); a reference to a parent this device cannot see is refused.
    /// A delete goes at priority 0, but it must not overtake an earlier open op that names
    /// the entity as its parent (a child's create or update): the server would refuse the
    /// child under a deleted parent. Such ops join the delete's blockers.
    fn referencing_ops(&self, key: &(EntityType, EntityId), blockers: &mut Vec<u64>) {
        let children = self.queue.entries().filter(|e| {
            !matches!(e.status, Status::Rejected | Status::Expired)
                && e.op.entity_type.parents().contains(&key.0)
                && e.op
                    .payload
                    .get(key.0.reference_field())
                    .and_then(Value::as_str)
                    == Some(key.1.as_str())
        });
        for child in children {
            if !blockers.contains(&child.seq) {
                blockers.push(child.seq);
            }
        }
    }

    fn parent_dependencies(
        &self,
        entity_type: EntityType,
        payload: &Value,
        blockers: &mut Vec<u64>,
    ) -> Result<Vec<OpId>, EnqueueError> {
        let mut depends_on = Vec::new();
        for parent in entity_type.parents() {
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
        Ok(depends_on)
    }

    /// Retries a dead-lettered op by hand: it goes out again (same idempotency key) with a
    /// fresh attempt count, and the ops it blocked are pending again.
    pub fn retry(&mut self, now: Millis, op_id: &OpId) -> Result<(), ActionError> {
        let seq = self.seq_with_status(op_id, &[Status::Error], "retry", "error")?;
        self.append(&Record::Retried { seq, at_ms: now })?;
        let unblocked = self.queue.retry(seq, now);
        crate::coverage::hit("client.dead_letter_retried");
        if !unblocked.is_empty() {
            crate::coverage::hit("client.released");
        }
        let entry = self.queue.get(seq).expect("retried ops stay queued");
        if entry.status == Status::Blocked {
            self.report_blocked(&[seq]);
        } else {
            self.events
                .push(Event::Op(OpUpdate::new(op_id.clone(), Status::Pending, 0)));
        }
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
        crate::coverage::hit("client.discarded");
        self.events.push(Event::Discarded {
            op_id: entry.op.op_id.clone(),
            status: entry.status,
        });
        self.events.push(Event::EntityChanged {
            entity_type: entry.op.entity_type,
            entity_id: entry.op.entity_id,
        });
        Ok(())
    }

    pub(super) fn seq_with_status(
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
}
