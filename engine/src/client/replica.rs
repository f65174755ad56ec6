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

/// Whether [`local_view`] of the same arguments is `Some`, without building it (the
/// simulation asks this of every entity a device can see, for every user action).
pub fn local_exists<'a>(base: Option<&ReplicaEntity>, ops: impl Iterator<Item = &'a Op>) -> bool {
    ops.fold(base.is_some_and(|b| !b.deleted), |exists, op| {
        match op.kind {
            OpKind::Create => true,
            OpKind::Update => exists,
            OpKind::Delete => false,
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{IdempotencyKey, OpId};
    use crate::time::Millis;
    use serde_json::json;

    fn op(kind: OpKind) -> Op {
        Op {
            op_id: OpId("op".into()),
            idempotency_key: IdempotencyKey("key".into()),
            entity_type: EntityType::Tag,
            entity_id: EntityId("t".into()),
            kind,
            base_version: 0,
            payload: match kind {
                OpKind::Create => json!({"id": "t", "label": "agate"}),
                OpKind::Update => json!({"label": "jasper"}),
                OpKind::Delete => Value::Null,
            },
            client_timestamp_ms: Millis(1_780_000_000_000),
            priority: EntityType::Tag.default_priority(),
            depends_on: vec![],
            created_at_ms: Millis(1_780_000_000_000),
            checksum: String::new(),
        }
    }

    /// `local_exists` answers exactly as `local_view(..).is_some()` for every base and every
    /// sequence of up to three ops.
    #[test]
    fn local_exists_agrees_with_local_view() {
        let kinds = [OpKind::Create, OpKind::Update, OpKind::Delete];
        let bases = [
            None,
            Some(ReplicaEntity {
                version: 1,
                deleted: false,
                entity: json!({"id": "t", "label": "opal"}),
            }),
            Some(ReplicaEntity {
                version: 2,
                deleted: true,
                entity: Value::Null,
            }),
        ];
        let mut sequences: Vec<Vec<Op>> = vec![vec![]];
        for _ in 0..3 {
            let longer: Vec<Vec<Op>> = sequences
                .iter()
                .flat_map(|s| {
                    kinds.iter().map(move |k| {
                        let mut s = s.clone();
                        s.push(op(*k));
                        s
                    })
                })
                .collect();
            sequences.extend(longer);
        }
        for base in &bases {
            for ops in &sequences {
                assert_eq!(
                    local_exists(base.as_ref(), ops.iter()),
                    local_view(base.as_ref(), ops.iter()).is_some(),
                    "{base:?} {:?}",
                    ops.iter().map(|o| o.kind).collect::<Vec<_>>()
                );
            }
        }
    }
}
