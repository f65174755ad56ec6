//! A reference model of the server's write decisions, written from the decision table of
//! docs/conflicts.md and deliberately apart from the engine: it calls neither
//! `engine::conflict`, nor `server::replay`, nor the server, and keeps its own strategy
//! table. Fed the commit log in order, it says what each logged write should have been
//! answered, which version it should have left, and what every entity should end as; the
//! `conflict_oracle` checker compares that with what the server did.
//!
//! It is kept small on purpose: an entity is its version, tombstone flag, fields, the
//! version, device clock and device of the last write of each top-level field, and the device
//! clock and device of its last write. "Later" is the greater `(device clock, device id)`.

use rockhound_engine::EntityType;
use rockhound_engine::server::wire::{
    DecisionCode, HistoryRow, HistoryStatus, LoggedWrite, OpStatus, Reason, Refusal,
};
use rockhound_engine::strategy::Strategy;
use rockhound_engine::{OpKind, SyncConfig};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// When and by whom something was last written: (version, device clock ms, device id).
type Stamp = (u64, u64, String);

/// One entity as the model holds it.
#[derive(Clone, Debug, Default)]
pub struct ModelEntity {
    /// Its version.
    pub version: u64,
    /// Whether it is a tombstone.
    pub deleted: bool,
    /// Its fields (with `id`).
    pub fields: Map<String, Value>,
    field_stamps: BTreeMap<String, Stamp>,
    last_write: (u64, String),
}

/// What the model says one logged write should have been answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The status.
    pub status: OpStatus,
    /// The reason (a decision code or a refusal).
    pub reason: Option<Reason>,
    /// The entity's version after it (`None` for a refusal).
    pub version: Option<u64>,
}

/// The model's state: every entity by (type, id).
#[derive(Default)]
pub struct Model {
    strategies: BTreeMap<EntityType, Strategy>,
    /// The entities.
    pub entities: BTreeMap<(EntityType, String), ModelEntity>,
}

/// The strategy each entity type has unless the configuration overrides it (the entity
/// table of docs/entities and docs/conflicts.md, copied here rather than read from the
/// engine's catalogue).
fn default_strategy(entity_type: EntityType) -> Strategy {
    use EntityType as T;
    match entity_type {
        T::FieldSession | T::CaptureSession | T::StorageLocation => Strategy::LatestTimestamp,
        T::FindLog | T::Specimen => Strategy::FieldLevel,
        T::CollectionGroup | T::Tag => Strategy::Merge,
        T::RawCapture | T::ProcessedCapture | T::Export | T::AnalyticsCache => Strategy::ServerWins,
    }
}

/// What a strategy decided, before it is committed.
enum Outcome {
    /// New fields; the top-level fields the write set.
    Write(Map<String, Value>, Vec<String>),
    Delete,
    KeepServer,
    AlreadyDone,
    Manual,
}

impl Model {
    /// An empty model for `config` (its per-type strategy overrides, read as data).
    pub fn new(config: &SyncConfig) -> Model {
        let overrides = serde_json::to_value(&config.entities).unwrap_or_default();
        let mut strategies = BTreeMap::new();
        for entity_type in EntityType::ALL {
            let named = overrides
                .get(entity_type.as_str())
                .and_then(|o| o.get("strategy"))
                .and_then(|s| serde_json::from_value::<Strategy>(s.clone()).ok());
            strategies.insert(entity_type, named.unwrap_or(default_strategy(entity_type)));
        }
        Model {
            strategies,
            entities: BTreeMap::new(),
        }
    }

    /// Feeds one commit-log row; returns what the model expected of it when it is an op's
    /// logged write (rows without one are refusals decided before the write, duplicates
    /// and retries, which change nothing).
    pub fn feed(&mut self, row: &HistoryRow) -> Option<Expected> {
        let key = (row.entity_type, row.entity_id.0.clone());
        match row.write.as_ref()? {
            LoggedWrite::Resolution { entity } => {
                // A person's resolution: the model takes the entity the server wrote (the
                // resolve endpoint's own rules are tested apart) and checks only that it
                // is the next version.
                let stamps = entity
                    .field_stamps
                    .iter()
                    .map(|(field, s)| {
                        let stamp = (s.version, s.timestamp_ms.0, s.device_id.0.clone());
                        (field.clone(), stamp)
                    })
                    .collect();
                self.entities.insert(
                    key,
                    ModelEntity {
                        version: entity.version,
                        deleted: entity.deleted,
                        fields: entity.fields.clone(),
                        field_stamps: stamps,
                        last_write: (
                            entity.last_write.timestamp_ms.0,
                            entity.last_write.device_id.0.clone(),
                        ),
                    },
                );
                None
            }
            LoggedWrite::Op {
                kind,
                base_version,
                payload,
                client_timestamp_ms,
                ..
            } => {
                let write = ModelWrite {
                    kind: *kind,
                    base: *base_version,
                    payload,
                    clock: client_timestamp_ms.0,
                    device: row.device_id.0.clone(),
                };
                Some(self.decide(key, &write))
            }
        }
    }

    fn decide(&mut self, key: (EntityType, String), write: &ModelWrite<'_>) -> Expected {
        let strategy = self.strategies[&key.0];
        let current = self.entities.get(&key);
        let refuse = |refusal: Refusal| Expected {
            status: OpStatus::Rejected,
            reason: Some(Reason::Refused(refusal)),
            version: None,
        };
        // Detection, row by row of the table.
        let (outcome, conflict) = match (current, write.kind) {
            (None, OpKind::Create) => (Outcome::Write(write.object(), write.keys()), false),
            (None, _) => return refuse(Refusal::NotFound),
            (Some(e), OpKind::Create) if e.deleted => return refuse(Refusal::EntityDeleted),
            (Some(e), OpKind::Update) if e.deleted => (upd_vs_deleted(strategy), true),
            // Already done: answered as applied, nothing changes.
            (Some(e), OpKind::Delete) if e.deleted => (Outcome::AlreadyDone, false),
            (Some(e), OpKind::Create) => (both_wrote(strategy, e, write, true), true),
            (Some(e), _) if write.base > e.version => return refuse(Refusal::VersionAhead),
            (Some(e), OpKind::Update) if write.base == e.version => {
                let mut fields = e.fields.clone();
                merge_patch(&mut fields, write.payload);
                (Outcome::Write(fields, write.keys()), false)
            }
            (Some(e), OpKind::Delete) if write.base == e.version => (Outcome::Delete, false),
            (Some(e), OpKind::Update) => (both_wrote(strategy, e, write, false), true),
            (Some(e), OpKind::Delete) => (delete_vs_update(strategy, e, write), true),
        };
        let code = match &outcome {
            Outcome::Write(..) if matches!(strategy, Strategy::FieldLevel | Strategy::Merge) => {
                DecisionCode::Merged
            }
            Outcome::Write(..) => DecisionCode::ClientApplied,
            Outcome::Delete => DecisionCode::Deleted,
            Outcome::KeepServer => DecisionCode::ServerKept,
            Outcome::AlreadyDone => DecisionCode::AlreadyDeleted,
            Outcome::Manual => DecisionCode::Manual,
        };
        let version = self.commit(key, outcome, write);
        Expected {
            status: if conflict {
                OpStatus::Conflict
            } else {
                OpStatus::Applied
            },
            reason: conflict.then_some(Reason::Decided(code)),
            version: Some(version),
        }
    }

    /// Applies an outcome; returns the entity's version after it.
    fn commit(
        &mut self,
        key: (EntityType, String),
        outcome: Outcome,
        write: &ModelWrite<'_>,
    ) -> u64 {
        let entity = self.entities.entry(key).or_default();
        let next = entity.version + 1;
        match outcome {
            Outcome::Write(fields, changed) => {
                entity.version = next;
                entity.deleted = false;
                entity.fields = fields;
                for field in changed {
                    let stamp = (next, write.clock, write.device.clone());
                    entity.field_stamps.insert(field, stamp);
                }
                entity.last_write = (write.clock, write.device.clone());
            }
            Outcome::Delete => {
                entity.version = next;
                entity.deleted = true;
                entity.last_write = (write.clock, write.device.clone());
            }
            Outcome::KeepServer | Outcome::AlreadyDone | Outcome::Manual => {}
        }
        entity.version
    }
}

/// One logged write as the model reads it.
struct ModelWrite<'a> {
    kind: OpKind,
    base: u64,
    payload: &'a Value,
    clock: u64,
    device: String,
}

impl ModelWrite<'_> {
    fn object(&self) -> Map<String, Value> {
        self.payload.as_object().cloned().unwrap_or_default()
    }

    /// The top-level fields the write sets.
    fn keys(&self) -> Vec<String> {
        self.object().keys().cloned().collect()
    }

    /// What it asks of an entity that exists: a create's payload without its id.
    fn patch(&self) -> Map<String, Value> {
        let mut patch = self.object();
        if self.kind == OpKind::Create {
            patch.remove("id");
        }
        patch
    }

    fn is_later_than(&self, clock: u64, device: &str) -> bool {
        (self.clock, self.device.as_str()) > (clock, device)
    }
}

/// RFC 7396, as the doc says updates are: `null` removes, objects merge, anything else
/// replaces.
fn merge_patch(target: &mut Map<String, Value>, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        return;
    };
    for (field, value) in patch {
        match value {
            Value::Null => {
                target.remove(field);
            }
            Value::Object(_) => {
                let mut inner = match target.remove(field) {
                    Some(Value::Object(inner)) => inner,
                    _ => Map::new(),
                };
                merge_patch(&mut inner, value);
                target.insert(field.clone(), Value::Object(inner));
            }
            other => {
                target.insert(field.clone(), other.clone());
            }
        }
    }
}

/// An update meeting a tombstone: never a resurrection, except by a person.
fn upd_vs_deleted(strategy: Strategy) -> Outcome {
    match strategy {
        Strategy::Manual => Outcome::Manual,
        _ => Outcome::KeepServer,
    }
}

/// A delete meeting a concurrent update.
fn delete_vs_update(strategy: Strategy, entity: &ModelEntity, write: &ModelWrite<'_>) -> Outcome {
    let later = write.is_later_than(entity.last_write.0, &entity.last_write.1);
    match strategy {
        Strategy::ClientWins => Outcome::Delete,
        Strategy::ServerWins | Strategy::Merge => Outcome::KeepServer,
        Strategy::LatestTimestamp | Strategy::FieldLevel if later => Outcome::Delete,
        Strategy::LatestTimestamp | Strategy::FieldLevel => Outcome::KeepServer,
        Strategy::Manual => Outcome::Manual,
    }
}

/// Both sides wrote fields (update vs update, or a create meeting an entity: then the base
/// is 0, so every field counts as changed on both sides).
fn both_wrote(
    strategy: Strategy,
    entity: &ModelEntity,
    write: &ModelWrite<'_>,
    create: bool,
) -> Outcome {
    let base = if create { 0 } else { write.base };
    let patch = write.patch();
    let overlay = || {
        let mut fields = entity.fields.clone();
        merge_patch(&mut fields, &Value::Object(patch.clone()));
        Outcome::Write(fields, patch.keys().cloned().collect())
    };
    match strategy {
        Strategy::ClientWins => overlay(),
        Strategy::ServerWins => Outcome::KeepServer,
        Strategy::LatestTimestamp
            if write.is_later_than(entity.last_write.0, &entity.last_write.1) =>
        {
            overlay()
        }
        Strategy::LatestTimestamp => Outcome::KeepServer,
        Strategy::FieldLevel | Strategy::Merge => {
            by_field(entity, write, &patch, base, strategy == Strategy::Merge)
        }
        Strategy::Manual => Outcome::Manual,
    }
}

/// Field by field: a field the server has not changed since the base takes the client's
/// value; one changed on both sides goes to the later write, except (under `merge`) two
/// arrays, which become the set union, server's order first.
fn by_field(
    entity: &ModelEntity,
    write: &ModelWrite<'_>,
    patch: &Map<String, Value>,
    base: u64,
    merge: bool,
) -> Outcome {
    let mut fields = entity.fields.clone();
    let mut changed = Vec::new();
    for (field, value) in patch {
        let stamp = entity.field_stamps.get(field);
        let server_changed = stamp.is_some_and(|(version, _, _)| *version > base);
        let client_later =
            stamp.is_none_or(|(_, clock, device)| write.is_later_than(*clock, device));
        let taken = match (fields.get(field), value) {
            (Some(Value::Array(ours)), Value::Array(theirs)) if merge && server_changed => {
                // Elements compared by their JSON text, through a set (merge arrays run
                // to thousands of elements; a scan per element was quadratic).
                let mut seen: BTreeSet<String> = ours.iter().map(Value::to_string).collect();
                let mut union = ours.clone();
                for element in theirs {
                    if seen.insert(element.to_string()) {
                        union.push(element.clone());
                    }
                }
                // A union that adds nothing leaves the field as the server has it.
                (union.len() > ours.len()).then_some(Value::Array(union))
            }
            _ if !server_changed || client_later => Some(value.clone()),
            _ => None,
        };
        if let Some(taken) = taken {
            let mut one = Map::new();
            one.insert(field.clone(), taken);
            merge_patch(&mut fields, &Value::Object(one));
            changed.push(field.clone());
        }
    }
    // Nothing of the client's won: the server's entity stands as it was.
    if changed.is_empty() {
        return Outcome::KeepServer;
    }
    Outcome::Write(fields, changed)
}

/// What the server answered a row: (status, reason, version).
pub fn answered(row: &HistoryRow) -> Expected {
    let status = match row.status {
        HistoryStatus::Op(status) => status,
        HistoryStatus::Resolved => OpStatus::Applied,
    };
    Expected {
        status,
        reason: row.reason,
        version: row.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rockhound_engine::server::wire::HistoryAction;
    use rockhound_engine::{DeviceId, EntityId, Millis};
    use serde_json::json;

    fn row(device: &str, kind: OpKind, base: u64, clock: u64, payload: Value) -> HistoryRow {
        HistoryRow {
            seq: 1,
            at_ms: Millis(clock),
            device_id: DeviceId::from(device),
            op_id: None,
            idempotency_key: None,
            entity_type: EntityType::Tag,
            entity_id: EntityId("t".into()),
            action: HistoryAction::Update,
            status: HistoryStatus::Op(OpStatus::Applied),
            reason: None,
            version: None,
            duration_ms: None,
            write: Some(LoggedWrite::Op {
                kind,
                base_version: base,
                payload,
                client_timestamp_ms: Millis(clock),
                strategy: None,
            }),
        }
    }

    fn expect(status: OpStatus, reason: Option<Reason>, version: Option<u64>) -> Option<Expected> {
        Some(Expected {
            status,
            reason,
            version,
        })
    }

    #[test]
    fn the_model_follows_the_decision_table_for_merge() {
        let mut model = Model::new(&SyncConfig::default());
        let merged = Some(Reason::Decided(DecisionCode::Merged));
        let create = json!({"id": "t", "name": "agate", "members": ["a"]});
        let feed = |m: &mut Model, r| m.feed(&r);
        assert_eq!(
            feed(&mut model, row("p", OpKind::Create, 0, 10, create)),
            expect(OpStatus::Applied, None, Some(1))
        );
        // Two updates from version 1: arrays changed on both sides become the union.
        let one = json!({"members": ["a", "b"]});
        assert_eq!(
            feed(&mut model, row("p", OpKind::Update, 1, 20, one)),
            expect(OpStatus::Applied, None, Some(2))
        );
        let two = json!({"members": ["a", "c"], "name": "jasper"});
        assert_eq!(
            feed(&mut model, row("q", OpKind::Update, 1, 15, two)),
            expect(OpStatus::Conflict, merged, Some(3))
        );
        let entity = &model.entities[&(EntityType::Tag, "t".to_owned())];
        assert_eq!(entity.fields["members"], json!(["a", "b", "c"]));
        assert_eq!(
            entity.fields["name"],
            json!("jasper"),
            "untouched since the base"
        );
        // A union that adds nothing keeps the server's entity.
        let nothing_new = json!({"members": ["b"]});
        assert_eq!(
            feed(&mut model, row("q", OpKind::Update, 2, 30, nothing_new)),
            expect(
                OpStatus::Conflict,
                Some(Reason::Decided(DecisionCode::ServerKept)),
                Some(3)
            )
        );
        // Under merge a delete meeting a concurrent update keeps the entity; from a version
        // the server never had it is refused; from the current version it deletes.
        assert_eq!(
            feed(&mut model, row("q", OpKind::Delete, 1, 99, Value::Null)),
            expect(
                OpStatus::Conflict,
                Some(Reason::Decided(DecisionCode::ServerKept)),
                Some(3)
            )
        );
        assert_eq!(
            feed(&mut model, row("q", OpKind::Delete, 9, 99, Value::Null)),
            expect(
                OpStatus::Rejected,
                Some(Reason::Refused(Refusal::VersionAhead)),
                None
            )
        );
        assert_eq!(
            feed(&mut model, row("q", OpKind::Delete, 3, 99, Value::Null)),
            expect(OpStatus::Applied, None, Some(4))
        );
        // A second delete is already done; an update meets the tombstone and loses.
        assert_eq!(
            feed(&mut model, row("p", OpKind::Delete, 3, 99, Value::Null)),
            expect(OpStatus::Applied, None, Some(4))
        );
        assert_eq!(
            feed(
                &mut model,
                row("p", OpKind::Update, 3, 999, json!({"name": "x"}))
            ),
            expect(
                OpStatus::Conflict,
                Some(Reason::Decided(DecisionCode::ServerKept)),
                Some(4)
            )
        );
    }
}
