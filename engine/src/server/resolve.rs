//! A user's resolution of an open conflict: keep the server's entity, the client's, or a
//! custom one, committed with its history row.

use super::admission::parent_request_error;
use super::replay;
use super::tables::{Commit, ServerStore};
use super::wire::{
    ConflictRecord, ConflictStatus, ErrorCode, HistoryAction, HistoryRow, HistoryStatus,
    Resolution, ResolveRequest, ResolvedBy,
};
use super::{ENTITY_BYTES_MAX, RequestError, Server};
use crate::conflict::{self, Case, Decision, ServerEntity};
use crate::delta;
use crate::ids::{ConflictId, UserId};
use crate::op::OpKind;
use crate::strategy::Strategy;
use crate::time::Millis;
use serde_json::{Map, Value};

impl<S: ServerStore> Server<S> {
    /// Handles `POST /api/sync/conflicts/<id>/resolve`.
    pub fn resolve_conflict(
        &mut self,
        user: &UserId,
        conflict_id: &ConflictId,
        request: &ResolveRequest,
        now: Millis,
    ) -> Result<ConflictRecord, RequestError> {
        let (record, current) = self.open_conflict(user, conflict_id)?;
        let (deleted, fields, changed) = self.resolved_fields(user, record, current, request)?;
        let key = (record.entity_type, record.entity_id.clone());
        let tables = self.store.tables();
        self.check_resolved_write(user, record, current, request, (deleted, fields.as_ref()))?;
        let resolution = ResolvedBy::from(request.resolution);
        if request.resolution.strategy().is_some() {
            crate::coverage::hit("server.resolve.by_strategy");
        } else {
            crate::coverage::hit_with(|| format!("server.resolve.{resolution}"));
        }
        let mut resolved = record.clone();
        resolved.status = ConflictStatus::Resolved;
        resolved.resolution = Some(resolution);
        resolved.resolved_at_ms = Some(now);
        let seq = tables.next_seq(user);
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
            action: HistoryAction::Resolve,
            status: HistoryStatus::Resolved,
            reason: Some(resolution.into()),
            version: Some(next.as_ref().map_or(current.version, |n| n.version)),
            duration_ms: None,
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
        })?;
        Ok(resolved)
    }

    /// The open conflict `conflict_id` of `user` and the entity it is about.
    /// A resolution is a write like any other: it may not orphan a live child (a
    /// `keep_client` of a delete) nor bring back an entity under a parent that is gone (a
    /// `keep_client` of an update that met a tombstone).
    fn check_resolved_write(
        &self,
        user: &UserId,
        record: &ConflictRecord,
        current: &ServerEntity,
        request: &ResolveRequest,
        (deleted, fields): (bool, Option<&Map<String, Value>>),
    ) -> Result<(), RequestError> {
        if request.resolution == Resolution::KeepServer
            || request.resolution == Resolution::ServerWins
        {
            return Ok(());
        }
        let key = (record.entity_type, record.entity_id.clone());
        if deleted && !current.deleted && self.store.tables().live_children.contains_key(&key) {
            return Err(RequestError::invalid(format!(
                "resolving {} that way would delete {} {} while live children reference it; \
                 delete them first, or keep the server's entity",
                record.conflict_id, record.entity_type, record.entity_id
            )));
        }
        if !deleted {
            self.check_parents(user, record.entity_type, fields.unwrap_or(&current.fields))
                .map_err(|refusal| parent_request_error(refusal, record.entity_type))?;
        }
        Ok(())
    }

    fn open_conflict(
        &self,
        user: &UserId,
        conflict_id: &ConflictId,
    ) -> Result<(&ConflictRecord, &ServerEntity), RequestError> {
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
        Ok((record, current))
    }

    /// The entity's state the resolution asks for: (deleted, fields — `None` keeps the
    /// current fields — and whether it changes the entity at all), with the request's
    /// entity checked like any write.
    fn resolved_fields(
        &self,
        user: &UserId,
        record: &ConflictRecord,
        current: &ServerEntity,
        request: &ResolveRequest,
    ) -> Result<Resolved, RequestError> {
        if let Some(strategy) = request.resolution.strategy() {
            if request.entity.is_some() {
                return Err(RequestError::invalid(
                    "entity is only accepted with resolution custom",
                ));
            }
            let (deleted, fields, changed) = by_strategy(strategy, record, current);
            self.check_size(fields.as_ref())?;
            return Ok((deleted, fields, changed));
        }
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
            // Decided by `by_strategy` above; never reached.
            (
                Resolution::ClientWins
                | Resolution::ServerWins
                | Resolution::LatestTimestamp
                | Resolution::FieldLevel
                | Resolution::Merge,
                _,
            ) => {
                return Err(RequestError::invalid(
                    "a named strategy resolves on its own",
                ));
            }
        };
        self.check_size(fields.as_ref())?;
        Ok((
            deleted,
            fields,
            request.resolution != Resolution::KeepServer,
        ))
    }

    /// Refuses a resolved entity over the size limit.
    fn check_size(&self, fields: Option<&Map<String, Value>>) -> Result<(), RequestError> {
        let Some(fields) = fields else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(fields).map_or(usize::MAX, |b| b.len());
        if bytes > ENTITY_BYTES_MAX {
            return Err(RequestError::BadRequest {
                code: ErrorCode::EntityTooLarge,
                message: format!(
                    "the resolved entity would be {bytes} bytes, more than the limit of \
                     {ENTITY_BYTES_MAX}"
                ),
            });
        }
        Ok(())
    }
}

/// The entity a resolution asks for: whether it is deleted, its fields (`None` keeps the
/// current ones), and whether it changes the entity at all.
type Resolved = (bool, Option<Map<String, Value>>, bool);

/// What `strategy` decides for the conflict `record`, against the entity as it is now
/// (it may have changed since the conflict was met): (deleted, fields — `None` keeps the
/// current ones — and whether the entity changes). The conflict's case is taken again from
/// the current entity: an update that met a live entity meets a tombstone if it was
/// deleted since, and no strategy but a person's own brings a tombstone back.
fn by_strategy(strategy: Strategy, record: &ConflictRecord, current: &ServerEntity) -> Resolved {
    let case = Case::met(record.kind, current.deleted);
    let write = conflict::Write {
        kind: record.kind,
        base_version: record.server_version,
        payload: &record.client_payload,
        timestamp_ms: record.client_timestamp_ms,
        device_id: &record.device_id,
    };
    match conflict::resolve(strategy, case, current, &write) {
        Decision::Write { fields, .. } => (false, Some(fields), true),
        Decision::Delete => (true, None, true),
        Decision::KeepServer | Decision::AlreadyDone | Decision::Manual => {
            (current.deleted, None, false)
        }
    }
}
