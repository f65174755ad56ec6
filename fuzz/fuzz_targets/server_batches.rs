//! The server's batch handling over arbitrary sequences of ops from two users, with ids and
//! keys drawn from small sets so that they collide (reused keys and op ids, one user naming
//! the other's entities), damaged copies, and resolutions. After every step: no panic, the
//! replay of the history equals the tables, and nothing of one user is visible to the other.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rockhound_engine::conflict::Strategy;
use rockhound_engine::entity::EntityType;
use rockhound_engine::ids::ConflictId;
use rockhound_engine::server::Server;
use rockhound_engine::server::replay;
use rockhound_engine::server::wire::{ConflictStatus, HistoryAction, Resolution, ResolveRequest};
use rockhound_engine::{Batch, DeviceId, Millis, Op, OpKind, SyncConfig, UserId};
use serde_json::{Map, Value, json};

const NOW: u64 = 1_780_000_000_000;
const USERS: [&str; 2] = ["ann", "bob"];
const TYPES: [EntityType; 4] = [
    EntityType::FieldSession,
    EntityType::FindLog,
    EntityType::Tag,
    EntityType::Specimen,
];

#[derive(Arbitrary, Debug)]
enum Step {
    Send {
        user: u8,
        device: u8,
        ops: Vec<OpInput>,
    },
    Resolve {
        user: u8,
        conflict: u8,
        resolution: u8,
        entity: Option<FieldsInput>,
    },
    Pull {
        user: u8,
        device: u8,
        since: u8,
    },
    Cleanup {
        days: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct OpInput {
    op_id: u8,
    key: u8,
    entity_type: u8,
    entity: u8,
    kind: u8,
    base_version: u8,
    fields: FieldsInput,
    timestamp_ms: u16,
    depends_on: Vec<u8>,
    damage: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct FieldsInput {
    name: Option<u8>,
    items: Option<Vec<u8>>,
    parent: Option<u8>,
    clear_parent: bool,
}

fn fields(input: &FieldsInput, entity_type: EntityType) -> Map<String, Value> {
    let mut fields = Map::new();
    if let Some(name) = input.name {
        fields.insert("name".into(), json!(format!("n{}", name % 4)));
    }
    if let Some(items) = &input.items {
        fields.insert(
            "items".into(),
            json!(items.iter().map(|i| i % 8).collect::<Vec<_>>()),
        );
    }
    if let Some(parent) = entity_type.parents().first() {
        if input.clear_parent {
            fields.insert(parent.reference_field(), Value::Null);
        } else if let Some(id) = input.parent {
            fields.insert(parent.reference_field(), json!(format!("e{}", id % 4)));
        }
    }
    fields
}

fn op(input: &OpInput) -> Op {
    let entity_type = TYPES[usize::from(input.entity_type) % TYPES.len()];
    let entity_id = format!("e{}", input.entity % 4);
    let kind = [OpKind::Create, OpKind::Update, OpKind::Delete][usize::from(input.kind) % 3];
    let mut fields = fields(&input.fields, entity_type);
    let payload = match kind {
        OpKind::Create => {
            fields.insert("id".into(), json!(entity_id));
            Value::Object(fields)
        }
        OpKind::Update => Value::Object(fields),
        OpKind::Delete => Value::Null,
    };
    let mut op = Op {
        op_id: format!("o{}", input.op_id % 8).into(),
        idempotency_key: format!("k{}", input.key % 8).into(),
        entity_type,
        entity_id: entity_id.into(),
        kind,
        base_version: if kind == OpKind::Create {
            0
        } else {
            u64::from(input.base_version % 5)
        },
        payload,
        client_timestamp_ms: Millis(NOW + u64::from(input.timestamp_ms)),
        priority: entity_type.default_priority(),
        depends_on: input
            .depends_on
            .iter()
            .take(3)
            .map(|d| format!("o{}", d % 8).into())
            .collect(),
        created_at_ms: Millis(NOW),
        checksum: String::new(),
    }
    .sealed();
    if let Some(damage) = input.damage {
        // A copy damaged in transit: content changed after sealing.
        match damage % 3 {
            0 => op.base_version += 1,
            1 => op.created_at_ms = Millis(0),
            _ => op.op_id = format!("o{}", input.op_id.wrapping_add(1) % 8).into(),
        }
    }
    op
}

fn check(server: &Server) {
    let tables = server.tables();
    replay::verify(tables).expect("the replay of the history equals the tables");
    // Exactly once: no (user, idempotency key) has two effective writes in the history.
    let mut effective = std::collections::BTreeSet::new();
    for ((user, _), row) in &tables.sync_history {
        if row.write.is_some()
            && row.action != HistoryAction::Resolve
            && let Some(key) = &row.idempotency_key
        {
            assert!(
                effective.insert((user.clone(), key.clone())),
                "{user} {key} decided twice"
            );
        }
    }
    for user in USERS {
        let user = UserId::from(user);
        // The running counts behind GET /state equal a recount.
        let counts = tables.user_counts.get(&user).copied().unwrap_or_default();
        let live = tables
            .entities
            .values()
            .filter(|e| e.owner == user && !e.state.deleted)
            .count();
        let open = server.conflicts(&user, Some(ConflictStatus::Open)).len();
        assert_eq!(
            (counts.live_entities, counts.open_conflicts),
            (live as u64, open as u64)
        );
        let page = server.conflicts(&user, None);
        assert!(
            page.iter()
                .all(|c| tables.entities[&(c.entity_type, c.entity_id.clone())].owner == user)
        );
        for ((owner, _), key) in &tables.changes {
            assert_eq!(
                &tables.entities[key].owner, owner,
                "the change index is per owner"
            );
        }
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut config = SyncConfig::default();
    config
        .entities
        .set_strategy(EntityType::Tag, Strategy::Merge);
    config
        .entities
        .set_strategy(EntityType::FieldSession, Strategy::Manual);
    let mut server = Server::new(config);
    // The server's clock only moves forward: a second per step, and days at a cleanup.
    let mut now = Millis(NOW);
    for (n, step) in steps.iter().take(64).enumerate() {
        now = Millis(now.0 + 1_000);
        match step {
            Step::Send { user, device, ops } => {
                let user = UserId::from(USERS[usize::from(*user) % 2]);
                let ops: Vec<Op> = ops.iter().take(16).map(op).collect();
                let batch = Batch::new(
                    format!("b{n}").into(),
                    format!("d{}", device % 3).into(),
                    ops,
                );
                let _ = server.handle_batch(&user, &batch, now);
            }
            Step::Resolve {
                user,
                conflict,
                resolution,
                entity,
            } => {
                let user = UserId::from(USERS[usize::from(*user) % 2]);
                let all: Vec<ConflictId> = server.tables().sync_conflicts.keys().cloned().collect();
                let Some(id) = all.get(usize::from(*conflict) % all.len().max(1)).cloned() else {
                    continue;
                };
                let resolution = [
                    Resolution::KeepServer,
                    Resolution::KeepClient,
                    Resolution::Custom,
                ][usize::from(*resolution) % 3];
                let entity = entity.as_ref().map(|f| {
                    let record = &server.tables().sync_conflicts[&id].1;
                    let mut fields = fields(f, record.entity_type);
                    fields.insert("id".into(), json!(record.entity_id.as_str()));
                    Value::Object(fields)
                });
                let _ = server.resolve_conflict(
                    &user,
                    &id,
                    &ResolveRequest { resolution, entity },
                    now,
                );
            }
            Step::Pull {
                user,
                device,
                since,
            } => {
                let user = UserId::from(USERS[usize::from(*user) % 2]);
                let device = DeviceId::from(format!("d{}", device % 3).as_str());
                if let Ok(page) = server.changes(&user, Some(&device), u64::from(*since), 100, now)
                {
                    for change in &page.changes {
                        let owner = &server.tables().entities
                            [&(change.entity_type, change.entity_id.clone())]
                            .owner;
                        assert_eq!(owner, &user, "a pull shows only the caller's entities");
                    }
                }
            }
            Step::Cleanup { days } => {
                // History is kept 30 days; past that the replay has nothing to rebuild
                // from (entities are kept), so the whole run stays within 29 days.
                let limit = NOW + 29 * 86_400_000;
                now = Millis(
                    (now.0 + u64::from(*days) * 86_400_000)
                        .min(limit)
                        .max(now.0),
                );
                server.cleanup(now).expect("the in-memory store never fails");
            }
        }
        check(&server);
    }
});
