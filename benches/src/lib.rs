//! Fixtures for the benchmarks in `benches/benches/`: realistic queues and batches, and the
//! bare turmoil echo the simulation's throughput is compared with. See `benches/README.md`
//! for the figures and how to reproduce them.

use rockhound_engine::client::coordinator::{Coordinator, Edit, EditAction};
use rockhound_engine::client::queue::{Entry, Queue};
use rockhound_engine::conflict::{self, ServerEntity, Write};
use rockhound_engine::server::Server;
use rockhound_engine::testing::sim_store::SimStore;
use rockhound_engine::{
    Batch, BatchId, DeviceId, EntityId, EntityType, IdempotencyKey, Millis, Op, OpId, OpKind,
    SyncConfig, UserId,
};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The benchmarks' "now".
pub const NOW: Millis = Millis(1_780_000_000_000);

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("fixtures are objects"),
    }
}

/// The `n`-th edit of a rockhounding session: every ten edits are a field session, four
/// find logs under it, a specimen under each of two finds, a tag and an update of the
/// session — so most ops wait on a parent create or an earlier op on their entity, as
/// after a field trip.
pub fn edit(n: usize) -> Edit {
    let trip = n / 10;
    let session = EntityId(format!("session-{trip}"));
    let (entity_type, entity_id, action) = match n % 10 {
        0 => (
            EntityType::FieldSession,
            session,
            EditAction::Create(fields(json!({"site": "Crooked Creek", "started": true}))),
        ),
        k @ 1..=4 => (
            EntityType::FindLog,
            EntityId(format!("find-{trip}-{k}")),
            EditAction::Create(fields(json!({
                "field_session_id": session.0, "mineral": "agate", "note": "in the gravel bar"
            }))),
        ),
        k @ 5..=6 => (
            EntityType::Specimen,
            EntityId(format!("specimen-{trip}-{k}")),
            EditAction::Create(fields(json!({
                "find_log_id": format!("find-{trip}-{}", k - 4), "name": "banded agate", "weight_g": 212
            }))),
        ),
        7 => (
            EntityType::Tag,
            EntityId(format!("tag-{trip}")),
            EditAction::Create(fields(json!({"label": "favourites", "members": []}))),
        ),
        8 => (
            EntityType::FindLog,
            EntityId(format!("find-{trip}-1")),
            EditAction::Update(fields(json!({"note": "checked at home"}))),
        ),
        _ => (
            EntityType::FieldSession,
            session,
            EditAction::Update(fields(json!({"started": false}))),
        ),
    };
    Edit {
        entity_type,
        entity_id,
        action,
    }
}

/// A configuration whose queue holds `capacity` ops.
pub fn config(capacity: usize) -> SyncConfig {
    SyncConfig {
        max_queue_size: capacity.max(50),
        ..SyncConfig::default()
    }
}

/// An offline device with `count` realistic ops queued.
pub fn device_with(count: usize) -> Coordinator<SimStore> {
    let mut device = Coordinator::open(
        DeviceId("bench".into()),
        0,
        config(count),
        SimStore::new(),
        1,
        NOW,
    )
    .expect("an empty store opens");
    for n in 0..count {
        device
            .enqueue(NOW, NOW, edit(n))
            .expect("the queue has room");
    }
    device
}

/// The queue of a device with `count` realistic ops, rebuilt from its entries (the
/// coordinator's readiness index, as batch selection sees it).
pub fn queue_with(count: usize) -> Queue {
    let device = device_with(count);
    let mut queue = Queue::new(device.config().queue_ttl_ms);
    for entry in device.queue() {
        queue.insert(Entry::new(
            entry.seq,
            entry.op.clone(),
            entry.enqueued_at_ms,
            entry.blockers.clone(),
        ));
    }
    queue.promote(NOW);
    queue
}

/// A sealed specimen op `n` of `kind`.
pub fn op(n: u64, kind: OpKind, base_version: u64, payload: Value, at: Millis) -> Op {
    Op {
        op_id: OpId(format!("op-{n}")),
        idempotency_key: IdempotencyKey(format!("key-{n}")),
        entity_type: EntityType::Specimen,
        entity_id: EntityId(format!("specimen-{n}")),
        kind,
        base_version,
        payload,
        client_timestamp_ms: at,
        priority: EntityType::Specimen.default_priority(),
        depends_on: vec![],
        created_at_ms: at,
        checksum: String::new(),
    }
    .sealed()
}

/// A typical specimen's payload (490 bytes as an op).
pub fn specimen() -> Value {
    json!({
        "id": "specimen-1", "find_log_id": "find-1", "name": "banded agate",
        "weight_g": 212, "dimensions_mm": [64, 41, 22], "locality": "Crooked Creek, OR",
        "notes": "fortification banding, one polished face", "tags": ["agate", "favourites"],
        "acquired": "2026-06-14"
    })
}

/// A server entity at version 2 (created by the phone, changed by the tablet) and a stale
/// update from a third device: the update-update case every strategy decides.
pub fn conflict_case() -> (ServerEntity, Op, DeviceId) {
    let create = op(1, OpKind::Create, 0, specimen(), NOW);
    let phone = DeviceId("phone".into());
    let tablet = DeviceId("tablet".into());
    let created = conflict::commit(
        None,
        &conflict::apply_clean(None, &Write::of(&create, &phone)),
        &Write::of(&create, &phone),
    )
    .expect("a create makes an entity");
    let change = op(
        2,
        OpKind::Update,
        1,
        json!({"weight_g": 208, "tags": ["agate", "polished"]}),
        Millis(NOW.0 + 1_000),
    );
    let write = Write::of(&change, &tablet);
    let changed = conflict::commit(
        Some(&created),
        &conflict::apply_clean(Some(&created), &write),
        &write,
    )
    .expect("an update changes the entity");
    let stale = op(
        3,
        OpKind::Update,
        1,
        json!({"notes": "cut and polished", "tags": ["agate", "cut"]}),
        Millis(NOW.0 + 2_000),
    );
    (changed, stale, DeviceId("laptop".into()))
}

/// A server that already holds `sessions` field sessions of user ann.
pub fn server_with_sessions(sessions: usize) -> Server {
    let mut server = Server::new(config(10_000));
    let ann = UserId::from("ann");
    for chunk in 0..sessions.div_ceil(50) {
        let ops = (0..50)
            .map(|k| chunk * 50 + k)
            .filter(|n| *n < sessions)
            .map(|n| {
                let mut o = op(
                    n as u64,
                    OpKind::Create,
                    0,
                    json!({"id": format!("s-{n}"), "site": "Crooked Creek"}),
                    NOW,
                );
                o.entity_type = EntityType::FieldSession;
                o.entity_id = EntityId(format!("s-{n}"));
                o.priority = EntityType::FieldSession.default_priority();
                o.sealed()
            })
            .collect();
        let batch = Batch::new(
            BatchId(format!("seed-{chunk}")),
            DeviceId("phone".into()),
            ops,
        );
        server.handle_batch(&ann, &batch, NOW).expect("applies");
    }
    server
}

/// A batch of 50 creates of new storage locations, from user ann's phone.
pub fn drawers_batch() -> Batch {
    let ops = (0..50u64)
        .map(|n| {
            let mut o = op(1_000 + n, OpKind::Create, 0, specimen(), NOW);
            o.entity_type = EntityType::StorageLocation;
            o.entity_id = EntityId(format!("drawer-{n}"));
            o.payload = json!({"id": format!("drawer-{n}"), "cabinet": "oak", "drawer": n});
            o.priority = EntityType::StorageLocation.default_priority();
            o.sealed()
        })
        .collect();
    Batch::new(BatchId("bench".into()), DeviceId("phone".into()), ops)
}

/// Runs a bare turmoil echo for `simulated`: one echo server and `clients` client hosts,
/// each sending a 200-byte request over a new TCP connection every `interval` and reading
/// the echo — the floor any harness over turmoil pays for the same hosts and tick.
pub fn echo(clients: usize, tick: Duration, simulated: Duration, interval: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sim = turmoil::Builder::new()
        .rng_seed(7)
        .tick_duration(tick)
        .simulation_duration(simulated + Duration::from_secs(60))
        .min_message_latency(Duration::from_millis(5))
        .max_message_latency(Duration::from_millis(50))
        .build();
    sim.host("server", || async {
        let listener = turmoil::net::TcpListener::bind("0.0.0.0:80").await?;
        loop {
            let (mut stream, _) = listener.accept().await?;
            tokio::task::spawn_local(async move {
                let mut buffer = [0u8; 256];
                if let Ok(n) = stream.read(&mut buffer).await {
                    let _ = stream.write_all(&buffer[..n]).await;
                }
            });
        }
    });
    for c in 0..clients {
        sim.host(format!("client-{c}"), move || async move {
            loop {
                if let Ok(Ok(mut stream)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    turmoil::net::TcpStream::connect("server:80"),
                )
                .await
                {
                    let _ = stream.write_all(&[b'x'; 200]).await;
                    let mut buffer = [0u8; 256];
                    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                        .await;
                }
                tokio::time::sleep(interval).await;
            }
        });
    }
    let steps = simulated.as_millis() / tick.as_millis().max(1);
    for _ in 0..steps {
        sim.step().expect("the echo runs");
    }
}
