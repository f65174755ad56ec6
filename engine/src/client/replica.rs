//! The device's replica of its user's server state, built from pulls and batch answers, and
//! the local view: the replica with the open local ops applied on top.
//!
//! The replica is a cache: after a restart it is empty and the next pull starts again from
//! cursor 0. A change only moves an entity forward (a higher or equal version), so answers
//! and pages that arrive out of order never roll it back.

use crate::delta;
use crate::entity::EntityType;
use crate::ids::EntityId;
use crate::op::{Op, OpKind};
use crate::server::wire::Change;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The replica's copy of one entity.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicaEntity {
    /// The server version this copy is at.
    pub version: u64,
    /// Whether the server holds a tombstone.
    pub deleted: bool,
    /// The entity (with its `id`); `null` for a tombstone.
    pub entity: Value,
}

/// The replica of one device.
#[derive(Clone, Debug, Default)]
pub struct Replica {
    entities: BTreeMap<(EntityType, EntityId), ReplicaEntity>,
    /// The pull cursor: every change up to it is applied.
    pub cursor: u64,
}

impl Replica {
    /// The copy of one entity.
    pub fn get(&self, entity_type: EntityType, entity_id: &EntityId) -> Option<&ReplicaEntity> {
        self.entities.get(&(entity_type, entity_id.clone()))
    }

    /// Every entity, tombstones included, in key order.
    pub fn entities(&self) -> &BTreeMap<(EntityType, EntityId), ReplicaEntity> {
        &self.entities
    }

    /// Takes the server's copy of an entity unless the replica already holds a newer one.
    /// Returns whether anything changed.
    pub fn apply_change(&mut self, change: &Change) -> bool {
        self.put(
            change.entity_type,
            &change.entity_id,
            ReplicaEntity {
                version: change.version,
                deleted: change.deleted,
                entity: if change.deleted {
                    Value::Null
                } else {
                    change.entity.clone()
                },
            },
        )
    }

    fn put(&mut self, entity_type: EntityType, entity_id: &EntityId, copy: ReplicaEntity) -> bool {
        let key = (entity_type, entity_id.clone());
        match self.entities.get(&key) {
            Some(current) if current.version > copy.version || *current == copy => false,
            _ => {
                self.entities.insert(key, copy);
                true
            }
        }
    }

    /// Takes what a batch answer says about `op`: the server's entity when the answer carries
    /// it, or else the op applied to the replica's copy when that copy is exactly the op's
    /// base (anything else waits for the next pull). Returns whether anything changed.
    pub fn apply_answer(&mut self, op: &Op, version: u64, entity: Option<&Value>) -> bool {
        if let Some(entity) = entity {
            let deleted = entity.is_null();
            return self.put(
                op.entity_type,
                &op.entity_id,
                ReplicaEntity {
                    version,
                    deleted,
                    entity: entity.clone(),
                },
            );
        }
        let current = self.get(op.entity_type, &op.entity_id);
        let base = current.map_or(0, |c| c.version);
        if base != op.base_version {
            return false;
        }
        let next = match (op.kind, current) {
            (OpKind::Create, _) => ReplicaEntity {
                version,
                deleted: false,
                entity: op.payload.clone(),
            },
            (OpKind::Update, Some(current)) => ReplicaEntity {
                version,
                deleted: false,
                entity: delta::patched(&current.entity, &op.payload),
            },
            (OpKind::Delete, _) => ReplicaEntity {
                version,
                deleted: true,
                entity: Value::Null,
            },
            (OpKind::Update, None) => return false,
        };
        self.put(op.entity_type, &op.entity_id, next)
    }

    /// Forgets everything (a restart: the replica is rebuilt by pulling from cursor 0).
    pub fn clear(&mut self) {
        self.entities.clear();
        self.cursor = 0;
    }
}

/// The local view of one entity: the replica's copy with `ops` (the open local ops on it,
/// in queue order) applied on top. `None` when it does not exist or is deleted.
pub fn local_view<'a>(
    base: Option<&ReplicaEntity>,
    ops: impl Iterator<Item = &'a Op>,
) -> Option<Value> {
    let mut view = base.filter(|b| !b.deleted).map(|b| b.entity.clone());
    for op in ops {
        view = match op.kind {
            OpKind::Create => Some(op.payload.clone()),
            OpKind::Update => view.map(|v| delta::patched(&v, &op.payload)),
            OpKind::Delete => None,
        };
    }
    view
}
