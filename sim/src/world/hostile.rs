//! Requests a broken or hostile client builds by hand (`hostile` and `forge` steps): each a
//! short list sent in order with the device's own token, beside its coordinator's honest
//! traffic. The ids they use are the device's own and carry `x<n>` (the probe's count), so
//! they never collide with the workload's.
//!
//! What the server must answer to each is in docs/simulation.md ("Hostile clients"); the
//! answers land in the trace, where `server_health` and the other checkers read them.

use crate::device::{DeviceCtx, RawRequest};
use crate::spec::Probe;
use crate::trace::RequestKind;
use hyper::Method;
use rockhound_engine::ids::{ConflictId, EntityId, IdempotencyKey, OpId};
use rockhound_engine::op::PAYLOAD_BYTES_MAX;
use rockhound_engine::{Batch, BatchId, DeviceId, EntityType, Millis, Op, OpKind};
use serde_json::{Value, json};

/// Builds ops and batches for one probe of one device.
struct Forger {
    device: String,
    tag: String,
    now: Millis,
    ops: u32,
    batches: u32,
}

impl Forger {
    fn new(device: &str, count: u64, now: Millis) -> Forger {
        Forger {
            device: device.to_owned(),
            tag: format!("{device}-x{count}"),
            now,
            ops: 0,
            batches: 0,
        }
    }

    /// An entity id of this probe.
    fn entity(&self, name: &str) -> EntityId {
        EntityId(format!("{}-{name}", self.tag))
    }

    /// A sealed op with fresh op id and key; a create's payload gets the entity's id, a
    /// delete's is `null`, as the op rules want.
    fn op(
        &mut self,
        kind: OpKind,
        entity: (EntityType, &EntityId),
        base_version: u64,
        mut payload: Value,
    ) -> Op {
        match (kind, payload.as_object_mut()) {
            (OpKind::Create, Some(fields)) => {
                fields.insert("id".into(), entity.1.0.clone().into());
            }
            (OpKind::Delete, _) => payload = Value::Null,
            _ => {}
        }
        self.ops += 1;
        let id = format!("{}-op{}", self.tag, self.ops);
        Op {
            op_id: OpId(id.clone()),
            idempotency_key: IdempotencyKey(format!("{id}-key")),
            entity_type: entity.0,
            entity_id: entity.1.clone(),
            kind,
            base_version,
            payload,
            client_timestamp_ms: self.now,
            priority: entity.0.default_priority(),
            depends_on: vec![],
            created_at_ms: self.now,
            checksum: String::new(),
        }
        .sealed()
    }

    /// A batch of `ops` from the device's own id.
    fn batch(&mut self, ops: Vec<Op>) -> RawRequest {
        self.batches += 1;
        let batch = Batch::new(
            BatchId(format!("{}-b{}", self.tag, self.batches)),
            DeviceId(self.device.clone()),
            ops,
        );
        raw(
            RequestKind::Hostile,
            Method::POST,
            "/api/sync/batch".into(),
            serde_json::to_vec(&batch).expect("batches serialize"),
        )
    }
}

fn raw(kind: RequestKind, method: Method, path: String, body: Vec<u8>) -> RawRequest {
    RawRequest {
        kind,
        method,
        path,
        body: Some(body),
    }
}

/// The requests of `probe` from `ctx`, its `count`-th probe, at `now`.
pub(super) fn requests(ctx: &DeviceCtx, probe: Probe, count: u64, now: Millis) -> Vec<RawRequest> {
    let device = ctx.state.borrow().name.clone();
    let mut f = Forger::new(&device, count, now);
    match probe {
        Probe::ReusedIds => reused_ids(&mut f),
        Probe::DamagedCopies => damaged_copies(&mut f),
        Probe::StaleVersions => stale_versions(&mut f),
        Probe::ParentAbuse => parent_abuse(&mut f),
        Probe::Oversized => oversized(&mut f),
        Probe::Orphans => orphans(ctx, &mut f, now),
        Probe::WorstMerge => worst_merge(&mut f),
        Probe::BadResolution => bad_resolutions(ctx, &f),
    }
}

/// A create, another op under its key, another key under its op id.
fn reused_ids(f: &mut Forger) -> Vec<RawRequest> {
    let tag = EntityType::Tag;
    let (a, b, c) = (f.entity("a"), f.entity("b"), f.entity("c"));
    let first = f.op(OpKind::Create, (tag, &a), 0, json!({"name": "first"}));
    let mut same_key = f.op(OpKind::Create, (tag, &b), 0, json!({"name": "same key"}));
    same_key.idempotency_key = first.idempotency_key.clone();
    let mut same_id = f.op(OpKind::Create, (tag, &c), 0, json!({"name": "same id"}));
    same_id.op_id = first.op_id.clone();
    vec![
        f.batch(vec![first]),
        f.batch(vec![same_key.sealed()]),
        f.batch(vec![same_id.sealed()]),
    ]
}

/// A damaged copy, an invalid copy and one whose field breaks the schema, before the good
/// op.
fn damaged_copies(f: &mut Forger) -> Vec<RawRequest> {
    let tag = EntityType::Tag;
    let a = f.entity("a");
    let good = f.op(OpKind::Create, (tag, &a), 0, json!({"name": "good"}));
    let mut damaged = good.clone();
    damaged.payload = json!({"name": "damaged"});
    let invalid = f.op(OpKind::Create, (tag, &a), 7, json!({"name": "invalid"}));
    let off_schema = f.op(OpKind::Create, (tag, &a), 0, json!({"label": 42}));
    vec![
        f.batch(vec![damaged]),
        f.batch(vec![invalid]),
        f.batch(vec![off_schema]),
        f.batch(vec![good]),
    ]
}

/// Writes to a deleted entity and from a version the server never had.
fn stale_versions(f: &mut Forger) -> Vec<RawRequest> {
    let tag = EntityType::Tag;
    let (gone, live) = (f.entity("gone"), f.entity("live"));
    let creates = vec![
        f.op(OpKind::Create, (tag, &gone), 0, json!({"name": "gone"})),
        f.op(OpKind::Create, (tag, &live), 0, json!({"name": "live"})),
    ];
    let delete = f.op(OpKind::Delete, (tag, &gone), 1, Value::Null);
    let stale = vec![
        f.op(OpKind::Update, (tag, &gone), 1, json!({"name": "after"})),
        f.op(OpKind::Create, (tag, &gone), 0, json!({"name": "again"})),
        f.op(OpKind::Update, (tag, &live), 99, json!({"name": "ahead"})),
    ];
    vec![f.batch(creates), f.batch(vec![delete]), f.batch(stale)]
}

/// An entity grown by updates of the largest payload until it passes its limit.
fn oversized(f: &mut Forger) -> Vec<RawRequest> {
    let tag = EntityType::Tag;
    let a = f.entity("a");
    let filler = "x".repeat(PAYLOAD_BYTES_MAX - 1_024);
    let mut requests = vec![];
    for (version, field) in ["f0", "f1", "f2", "f3", "f4"].into_iter().enumerate() {
        let (kind, base) = match version {
            0 => (OpKind::Create, 0),
            _ => (OpKind::Update, version as u64),
        };
        let op = f.op(kind, (tag, &a), base, json!({ field: filler }));
        requests.push(f.batch(vec![op]));
    }
    requests
}

/// An op depending on an op that never existed; an op older than the keys' retention.
fn orphans(ctx: &DeviceCtx, f: &mut Forger, now: Millis) -> Vec<RawRequest> {
    let tag = EntityType::Tag;
    let (a, b) = (f.entity("a"), f.entity("b"));
    let mut orphan = f.op(OpKind::Create, (tag, &a), 0, json!({"name": "orphan"}));
    orphan.depends_on = vec![OpId(format!("{}-ghost", f.tag))];
    let mut old = f.op(OpKind::Create, (tag, &b), 0, json!({"name": "old"}));
    let config = ctx
        .state
        .borrow()
        .coordinator
        .as_ref()
        .map(|c| c.config().clone());
    let retention = config.map_or(30 * 86_400_000, |c| c.idempotency_retention_ms());
    old.created_at_ms = Millis(now.0.saturating_sub(retention + 3_600_000));
    old.client_timestamp_ms = old.created_at_ms;
    vec![f.batch(vec![orphan.sealed()]), f.batch(vec![old.sealed()])]
}

/// Merge arrays as long as a payload allows, written twice from one base.
fn worst_merge(f: &mut Forger) -> Vec<RawRequest> {
    let tag = EntityType::Tag;
    let a = f.entity("a");
    // Each array as long as a payload allows (`[0,1,…]` of short numbers).
    let len = PAYLOAD_BYTES_MAX / 7;
    let array = |offset: usize| json!({ "items": (offset..offset + len).collect::<Vec<_>>() });
    let create = f.op(OpKind::Create, (tag, &a), 0, array(0));
    let one = f.op(OpKind::Update, (tag, &a), 1, array(len / 2));
    let two = f.op(OpKind::Update, (tag, &a), 1, array(len));
    vec![
        f.batch(vec![create]),
        f.batch(vec![one]),
        f.batch(vec![two]),
    ]
}

/// A parent and its child; the child's only parent cleared; the parent deleted under its
/// live child; a child of a deleted parent.
fn parent_abuse(f: &mut Forger) -> Vec<RawRequest> {
    let group = EntityType::CollectionGroup;
    let export = EntityType::Export;
    let (g, e, g2, e2) = (f.entity("g"), f.entity("e"), f.entity("g2"), f.entity("e2"));
    let parent = |id: &EntityId| json!({"name": "export", "collection_group_id": id.0});
    let first = vec![
        f.op(OpKind::Create, (group, &g), 0, json!({"name": "group"})),
        f.op(OpKind::Create, (export, &e), 0, parent(&g)),
        f.op(OpKind::Create, (group, &g2), 0, json!({"name": "doomed"})),
    ];
    let doom = f.op(OpKind::Delete, (group, &g2), 1, Value::Null);
    let abuse = vec![
        f.op(
            OpKind::Update,
            (export, &e),
            1,
            json!({"collection_group_id": null}),
        ),
        f.op(OpKind::Delete, (group, &g), 1, Value::Null),
        f.op(OpKind::Create, (export, &e2), 0, parent(&g2)),
    ];
    vec![f.batch(first), f.batch(vec![doom]), f.batch(abuse)]
}

/// `custom` resolutions of the device's open conflicts with an entity that is not an
/// object, a resolution of a conflict that does not exist, and a body that is not JSON.
fn bad_resolutions(ctx: &DeviceCtx, f: &Forger) -> Vec<RawRequest> {
    let open: Vec<(ConflictId, EntityType, EntityId)> = ctx
        .state
        .borrow()
        .coordinator
        .as_ref()
        .map(|c| {
            c.conflicts()
                .filter(|c| c.open)
                .map(|c| (c.conflict_id.clone(), c.entity_type, c.entity_id.clone()))
                .collect()
        })
        .unwrap_or_default();
    let path = |id: &str| format!("/api/sync/conflicts/{id}/resolve");
    let not_an_object = json!({"resolution": "custom", "entity": [1, 2, 3]});
    let mut requests = Vec::new();
    for (id, entity_type, entity_id) in &open {
        requests.push(raw(
            RequestKind::Hostile,
            Method::POST,
            path(&id.0),
            not_an_object.to_string().into_bytes(),
        ));
        // An entity under a parent that does not exist.
        if let Some(parent) = entity_type.parents().first() {
            let mut entity = serde_json::Map::new();
            entity.insert("id".into(), entity_id.0.clone().into());
            entity.insert(
                parent.reference_field(),
                format!("{}-nowhere", f.tag).into(),
            );
            let orphan = json!({"resolution": "custom", "entity": entity});
            requests.push(raw(
                RequestKind::Hostile,
                Method::POST,
                path(&id.0),
                orphan.to_string().into_bytes(),
            ));
        }
    }
    requests.push(raw(
        RequestKind::Hostile,
        Method::POST,
        path(&format!("{}-nope", f.tag)),
        json!({"resolution": "keep_server"})
            .to_string()
            .into_bytes(),
    ));
    requests.push(raw(
        RequestKind::Hostile,
        Method::POST,
        path(open.first().map_or("none", |(id, _, _)| id.0.as_str())),
        b"{\"resolution\": ".to_vec(),
    ));
    requests
}

/// Three forged requests from `ctx` with its own token, each sent on its own: a batch
/// claiming the victim's device, a batch from its own device updating an entity of the
/// victim's user, and [`borrowed_ids`].
pub(super) fn forgeries(ctx: &DeviceCtx, victim: &DeviceCtx, now: Millis) -> Vec<Vec<RawRequest>> {
    let (victim_device, target, victim_next_seq) = {
        let state = victim.state.borrow();
        let target = state.coordinator.as_ref().and_then(|c| {
            c.replica()
                .entities()
                .iter()
                .find(|(_, e)| !e.deleted)
                .map(|(key, e)| (key.clone(), e.version))
        });
        let next_seq = state.coordinator.as_ref().map_or(1, |c| c.next_seq());
        (state.name.clone(), target, next_seq)
    };
    let own = ctx.state.borrow().name.clone();
    let ((entity_type, entity_id), version) = target.unwrap_or((
        (
            EntityType::FieldSession,
            EntityId(format!("{victim_device}-session-1")),
        ),
        1,
    ));
    let op = Op {
        op_id: OpId(format!("{own}:forged:{}", now.0)),
        idempotency_key: IdempotencyKey(format!("{own}:forged:{}:key", now.0)),
        entity_type,
        entity_id,
        kind: OpKind::Update,
        base_version: version,
        payload: json!({"note": "forged"}),
        client_timestamp_ms: now,
        priority: entity_type.default_priority(),
        depends_on: vec![],
        created_at_ms: now,
        checksum: String::new(),
    }
    .sealed();
    let borrowed = borrowed_ids(&own, &victim_device, victim_next_seq, now);
    [(victim_device, vec![op]), (own.clone(), vec![borrowed])]
        .into_iter()
        .enumerate()
        .map(|(n, (device, ops))| {
            let batch = Batch::new(
                BatchId(format!("forged-{n}-{}", now.0)),
                DeviceId(device),
                ops,
            );
            let body = serde_json::to_vec(&batch).expect("batches serialize");
            vec![raw(
                RequestKind::Forge,
                Method::POST,
                "/api/sync/batch".into(),
                body,
            )]
        })
        .collect()
}

/// Ids that collide across users: a create of the device's own new entity under the op id
/// and idempotency key the victim's *next* op will carry (`<victim>:<seq>`, as its
/// coordinator names them). Legal, and isolated: the server applies it for this user, and
/// the victim's op of the same ids, when it comes, is decided as if this one never
/// happened (a server that looked ids up without the user would answer it `duplicate` or
/// `idempotency_key_reused`, and the victim's write would be lost).
fn borrowed_ids(own: &str, victim_device: &str, victim_next_seq: u64, now: Millis) -> Op {
    let entity_id = EntityId(format!("{own}:forged:{}-borrowed", now.0));
    Op {
        op_id: OpId(format!("{victim_device}:{victim_next_seq}")),
        idempotency_key: IdempotencyKey(format!("{victim_device}:{victim_next_seq}:key")),
        entity_type: EntityType::Tag,
        entity_id: entity_id.clone(),
        kind: OpKind::Create,
        base_version: 0,
        payload: json!({"id": entity_id.0, "label": "borrowed ids"}),
        client_timestamp_ms: now,
        priority: EntityType::Tag.default_priority(),
        depends_on: vec![],
        created_at_ms: now,
        checksum: String::new(),
    }
    .sealed()
}
