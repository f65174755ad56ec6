//! What every durable store's tests share: a day of two users' requests (`drive`), run on
//! the in-memory store and on the store under test, whose tables must then be equal.

use rockhound_engine::config::SyncConfig;
use rockhound_engine::entity::EntityType;
use rockhound_engine::ids::{BatchId, DeviceId, EntityId, IdempotencyKey, OpId, UserId};
use rockhound_engine::op::{Batch, Op, OpKind};
use rockhound_engine::server::tables::ServerStore;
use rockhound_engine::server::wire::{Resolution, ResolveRequest};
use rockhound_engine::server::{Flushing, HISTORY_RETENTION_MS, RequestError, Server};
use rockhound_engine::strategy::Strategy;
use rockhound_engine::time::Millis;
use serde_json::{Value, json};

pub(crate) const NOW: Millis = Millis(1_780_000_000_000);

pub(crate) fn op(
    n: u32,
    entity_type: EntityType,
    id: &str,
    kind: OpKind,
    base: u64,
    payload: Value,
) -> Op {
    Op {
        op_id: OpId(format!("op-{n}")),
        idempotency_key: IdempotencyKey(format!("key-{n}")),
        entity_type,
        entity_id: EntityId(id.to_owned()),
        kind,
        base_version: base,
        payload,
        client_timestamp_ms: Millis(NOW.0 + u64::from(n)),
        priority: entity_type.default_priority(),
        depends_on: vec![],
        created_at_ms: NOW,
        checksum: String::new(),
    }
    .sealed()
}

pub(crate) fn config() -> SyncConfig {
    let mut config = SyncConfig::default();
    config
        .entities
        .set_strategy(EntityType::Tag, Strategy::Manual);
    config
}

/// A day of two users' requests: creates, a child, updates, a stale update that opens a
/// manual conflict, its resolution, a delete, a duplicate, pulls; then a cleanup a month on.
// Long on purpose: one user story, read top to bottom.
pub(crate) fn drive<S: ServerStore>(server: &mut Server<S>) {
    let (ann, bob) = (UserId::from("ann"), UserId::from("bob"));
    let send = |server: &mut Server<S>, user: &UserId, n: u32, ops: Vec<Op>| {
        let batch = Batch::new(BatchId(format!("b-{n}")), DeviceId::from("d1"), ops);
        server
            .handle_batch(user, &batch, Millis(NOW.0 + u64::from(n)))
            .unwrap()
    };
    let session = json!({"id": "s1", "name": "creek"});
    let create = op(
        1,
        EntityType::FieldSession,
        "s1",
        OpKind::Create,
        0,
        session,
    );
    let find = json!({"id": "f1", "field_session_id": "s1", "note": "quartz"});
    let child = op(2, EntityType::FindLog, "f1", OpKind::Create, 0, find);
    let tag = op(
        3,
        EntityType::Tag,
        "t1",
        OpKind::Create,
        0,
        json!({"id": "t1", "label": "a"}),
    );
    send(server, &ann, 1, vec![create.clone(), child, tag]);
    let rename = op(
        4,
        EntityType::Tag,
        "t1",
        OpKind::Update,
        1,
        json!({"label": "b"}),
    );
    send(server, &ann, 2, vec![rename]);
    // A stale update of the tag: a manual conflict, left open, then resolved.
    let stale = op(
        5,
        EntityType::Tag,
        "t1",
        OpKind::Update,
        1,
        json!({"label": "c"}),
    );
    let answer = send(server, &ann, 3, vec![stale, create]);
    let conflict_id = answer.results[0]
        .conflict_id
        .clone()
        .expect("a manual conflict");
    let bobs = op(
        6,
        EntityType::Tag,
        "t2",
        OpKind::Create,
        0,
        json!({"id": "t2", "label": "x"}),
    );
    send(server, &bob, 4, vec![bobs]);
    let page = server
        .changes(&ann, Some(&DeviceId::from("d1")), 0, 100, NOW)
        .unwrap();
    assert!(!page.changes.is_empty());
    let keep = ResolveRequest {
        resolution: Resolution::KeepClient,
        entity: None,
    };
    server
        .resolve_conflict(&ann, &conflict_id, &keep, Millis(NOW.0 + 10))
        .unwrap();
    let delete = op(7, EntityType::FindLog, "f1", OpKind::Delete, 1, Value::Null);
    let stale = op(
        9,
        EntityType::Tag,
        "t1",
        OpKind::Update,
        1,
        json!({"label": "d"}),
    );
    send(server, &ann, 5, vec![delete, stale]);
    // Past the keys' retention, within the history's: the keys go, the rest stays.
    let retention = server.config().idempotency_retention_ms();
    assert!(retention < HISTORY_RETENTION_MS);
    let report = server.cleanup(Millis(NOW.0 + retention + 60_000)).unwrap();
    assert_eq!(report.idempotency_keys, 8);
    send(
        server,
        &bob,
        6,
        vec![op(
            8,
            EntityType::Tag,
            "t3",
            OpKind::Create,
            0,
            json!({"id": "t3", "label": "y"}),
        )],
    );
}

/// A tag create, op number `n`, entity `t{n}`.
pub(crate) fn tag(n: u32) -> rockhound_engine::op::Op {
    let id = format!("t{n}");
    op(
        n,
        EntityType::Tag,
        &id,
        OpKind::Create,
        0,
        json!({"id": id, "label": "a"}),
    )
}

/// A batch as the HTTP layer runs it: decided and committed under the server's lock, its
/// flush begun there and waited for afterwards.
pub(crate) fn send<S: ServerStore>(
    server: &mut Server<S>,
    user: &str,
    batch_id: &str,
    ops: Vec<rockhound_engine::op::Op>,
) -> Result<Flushing, RequestError> {
    let user = UserId::from(user);
    let batch = Batch::new(BatchId::from(batch_id), DeviceId::from("d1"), ops);
    server.admit_batch(&batch)?;
    let epoch = server.store_epoch();
    let results = batch
        .ops
        .iter()
        .map(|op| server.handle_op(&user, &batch, op, NOW, NOW))
        .collect();
    server.finish_batch(&user, &batch, results, NOW, NOW)?;
    server.begin_flush_for(epoch)
}

/// Whether a flush is still under way after the database had a moment to write it.
pub(crate) fn still_writing(flushing: &mut Flushing) -> bool {
    let Flushing::Pending(write) = flushing else {
        return false;
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    write.as_mut().poll(&mut cx).is_pending()
}
