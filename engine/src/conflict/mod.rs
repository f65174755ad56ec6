//! Conflict detection by version and the six resolution strategies, as pure functions.
//!
//! A *conflict* is a write whose `base_version` is older than the server's version (someone
//! else wrote since the device last looked), or a write that meets a tombstone. [`detect`]
//! classifies a write; [`resolve`] decides it under a [`Strategy`]; [`commit`] turns the
//! decision into the next server entity. The full decision table, with the reason for each
//! cell, is in `docs/conflicts.md`; the unit tests below pin every cell.
//!
//! Deleted entities are never resurrected by a strategy: an update that meets a tombstone
//! loses under every automatic strategy, and only an explicit manual resolution can bring
//! the entity back.

mod fields;

use crate::delta;
use crate::ids::DeviceId;
use crate::op::{Op, OpKind};
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

pub use crate::strategy::{Strategy, StrategyError};

/// Who wrote something, when by their own clock, and at which server version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The server version the write produced.
    pub version: u64,
    /// The writing device's wall clock (possibly skewed).
    pub timestamp_ms: Millis,
    /// The writing device.
    pub device_id: DeviceId,
}

impl Stamp {
    /// The total order last-writer-wins uses: device timestamp, then device id.
    fn order_key(&self) -> (Millis, &DeviceId) {
        (self.timestamp_ms, &self.device_id)
    }
}

/// An entity as the server holds it, with the provenance the strategies need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEntity {
    /// Current version: 1 after the create, +1 per applied write.
    pub version: u64,
    /// A tombstone: deleted, kept so that late writes cannot resurrect it.
    pub deleted: bool,
    /// The entity's fields (the last live state for a tombstone).
    pub fields: Map<String, Value>,
    /// The last write of each top-level field, including removed fields.
    pub field_stamps: BTreeMap<String, Stamp>,
    /// The last write of the entity as a whole.
    pub last_write: Stamp,
}

impl ServerEntity {
    /// The entity as JSON, as pulls and conflict answers carry it.
    pub fn to_value(&self) -> Value {
        Value::Object(self.fields.clone())
    }
}

/// The write a device asks for, from the fields of its op.
#[derive(Clone, Copy, Debug)]
pub struct Write<'a> {
    /// Create, update or delete.
    pub kind: OpKind,
    /// The version the device last saw.
    pub base_version: u64,
    /// The op's payload.
    pub payload: &'a Value,
    /// The device's wall clock for the write.
    pub timestamp_ms: Millis,
    /// The writing device.
    pub device_id: &'a DeviceId,
}

impl<'a> Write<'a> {
    /// The write an op asks for on behalf of `device_id`.
    pub fn of(op: &'a Op, device_id: &'a DeviceId) -> Write<'a> {
        Write {
            kind: op.kind,
            base_version: op.base_version,
            payload: &op.payload,
            timestamp_ms: op.client_timestamp_ms,
            device_id,
        }
    }

    /// Whether this write is later than `stamp` by last-writer-wins order. Equal keys keep
    /// the server's value, so the answer never depends on which side is asked.
    fn is_later_than(&self, stamp: &Stamp) -> bool {
        (self.timestamp_ms, self.device_id) > stamp.order_key()
    }

    /// The fields the write changes (for a create: all but `id`), as a merge patch.
    fn patch(&self) -> Map<String, Value> {
        let mut patch = self.payload.as_object().cloned().unwrap_or_default();
        if self.kind == OpKind::Create {
            patch.remove("id");
        }
        patch
    }
}

/// The kinds of conflict, named client side first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// The client updates what the server changed since the client's base version.
    UpdateUpdate,
    /// The client creates an id that already exists on the server.
    CreateExisting,
    /// The client updates what the server has deleted.
    UpdateDelete,
    /// The client deletes what the server changed since the client's base version.
    DeleteUpdate,
    /// The client deletes what the server has already deleted.
    DeleteDelete,
}

/// How a write relates to the server's entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// The write is based on the current version (or creates a new entity): apply it.
    Clean,
    /// A conflict of this case: a strategy decides it.
    Conflict(Case),
    /// The write cannot be applied at all.
    Invalid(Invalid),
}

/// Writes no strategy can decide, with the reason code the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// An update or delete of an entity that never existed.
    #[error("not_found")]
    NotFound,
    /// A create of an id that was deleted: ids are never reused.
    #[error("entity_deleted")]
    CreateDeleted,
    /// A base version newer than the server's: the device claims to have seen the future.
    #[error("version_ahead")]
    VersionAhead,
}

/// Classifies `write` against the server's entity (`None`: the id was never created).
pub fn detect(server: Option<&ServerEntity>, write: &Write<'_>) -> Detection {
    let Some(server) = server else {
        return match write.kind {
            OpKind::Create => Detection::Clean,
            OpKind::Update | OpKind::Delete => Detection::Invalid(Invalid::NotFound),
        };
    };
    match (write.kind, server.deleted) {
        (OpKind::Create, true) => Detection::Invalid(Invalid::CreateDeleted),
        (OpKind::Update | OpKind::Delete, false) if write.base_version > server.version => {
            Detection::Invalid(Invalid::VersionAhead)
        }
        (OpKind::Update | OpKind::Delete, false) if write.base_version == server.version => {
            Detection::Clean
        }
        (kind, deleted) => Detection::Conflict(Case::met(kind, deleted)),
    }
}

impl Case {
    /// The case a conflicting write of `kind` meets against an entity that is `deleted` or
    /// live. A create that meets a tombstone is refused before it is a conflict
    /// (`detect`); a resolution that finds one (deleted since the conflict) treats it as
    /// an update meeting a delete: nothing brings the entity back but a person's own write.
    pub fn met(kind: OpKind, deleted: bool) -> Case {
        match (kind, deleted) {
            (OpKind::Create | OpKind::Update, true) => Case::UpdateDelete,
            (OpKind::Delete, true) => Case::DeleteDelete,
            (OpKind::Create, false) => Case::CreateExisting,
            (OpKind::Update, false) => Case::UpdateUpdate,
            (OpKind::Delete, false) => Case::DeleteUpdate,
        }
    }
}

/// What happens to the server's entity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The entity becomes `fields`; the fields in `changed` take the write's stamp.
    Write {
        /// The new fields.
        fields: Map<String, Value>,
        /// The top-level fields the write set (their stamps move to the write).
        changed: BTreeSet<String>,
    },
    /// The entity becomes a tombstone.
    Delete,
    /// The server's state stands and the client must adopt it.
    KeepServer,
    /// The server already holds what the write asks for (a delete of a tombstone).
    AlreadyDone,
    /// The server's state stands and a conflict record holds both versions for a person.
    Manual,
}

/// The decision for a write [`detect`] found clean.
pub fn apply_clean(server: Option<&ServerEntity>, write: &Write<'_>) -> Decision {
    match (write.kind, server) {
        (OpKind::Create, _) => {
            let fields = write.payload.as_object().cloned().unwrap_or_default();
            let changed = fields.keys().cloned().collect();
            Decision::Write { fields, changed }
        }
        (OpKind::Update, Some(server)) => {
            let mut entity = server.to_value();
            delta::apply(&mut entity, write.payload);
            let Value::Object(fields) = entity else {
                unreachable!("an object patched with an object stays an object")
            };
            Decision::Write {
                fields,
                changed: delta::changed_fields(write.payload),
            }
        }
        (OpKind::Delete, Some(_)) => Decision::Delete,
        (OpKind::Update | OpKind::Delete, None) => {
            panic!("detect() never calls an update or delete of a missing entity clean")
        }
    }
}

/// Decides a conflict of `case` under `strategy`. Pure and deterministic.
pub fn resolve(
    strategy: Strategy,
    case: Case,
    server: &ServerEntity,
    write: &Write<'_>,
) -> Decision {
    match case {
        // Nothing to decide: the entity is gone either way.
        Case::DeleteDelete => Decision::AlreadyDone,
        // No silent resurrection: only a person may bring a deleted entity back.
        Case::UpdateDelete => match strategy {
            Strategy::Manual => Decision::Manual,
            _ => Decision::KeepServer,
        },
        Case::DeleteUpdate => match strategy {
            Strategy::ClientWins => Decision::Delete,
            Strategy::ServerWins | Strategy::Merge => Decision::KeepServer,
            Strategy::LatestTimestamp | Strategy::FieldLevel => {
                if write.is_later_than(&server.last_write) {
                    Decision::Delete
                } else {
                    Decision::KeepServer
                }
            }
            Strategy::Manual => Decision::Manual,
        },
        Case::UpdateUpdate | Case::CreateExisting => match strategy {
            Strategy::ClientWins => fields::overlay(server, write.patch()),
            Strategy::ServerWins => Decision::KeepServer,
            Strategy::LatestTimestamp => {
                if write.is_later_than(&server.last_write) {
                    fields::overlay(server, write.patch())
                } else {
                    Decision::KeepServer
                }
            }
            Strategy::FieldLevel => fields::field_level(server, write, false),
            Strategy::Merge => fields::field_level(server, write, true),
            Strategy::Manual => Decision::Manual,
        },
    }
}

/// The server entity after `decision`, for a write stamped by `write`. `None` when the
/// decision leaves the entity as it was.
pub fn commit(
    server: Option<&ServerEntity>,
    decision: &Decision,
    write: &Write<'_>,
) -> Option<ServerEntity> {
    commit_owned(server, decision.clone(), write)
}

/// [`commit`] taking the decision by value, so that a written entity's fields move into it
/// instead of being copied (the server's hot path: an entity may be 256 KiB).
pub fn commit_owned(
    server: Option<&ServerEntity>,
    decision: Decision,
    write: &Write<'_>,
) -> Option<ServerEntity> {
    let version = server.map_or(0, |s| s.version) + 1;
    let stamp = Stamp {
        version,
        timestamp_ms: write.timestamp_ms,
        device_id: write.device_id.clone(),
    };
    match decision {
        Decision::Write { fields, changed } => {
            let mut field_stamps = server.map(|s| s.field_stamps.clone()).unwrap_or_default();
            for field in changed {
                field_stamps.insert(field, stamp.clone());
            }
            Some(ServerEntity {
                version,
                deleted: false,
                fields,
                field_stamps,
                last_write: stamp,
            })
        }
        Decision::Delete => {
            let server = server.expect("only an existing entity is deleted");
            Some(ServerEntity {
                version,
                deleted: true,
                fields: server.fields.clone(),
                field_stamps: server.field_stamps.clone(),
                last_write: stamp,
            })
        }
        Decision::KeepServer | Decision::AlreadyDone | Decision::Manual => None,
    }
}

#[cfg(test)]
mod tests;
