//! The coordinator: unit tests of each queue rule, an end-to-end run against the real server
//! core, and the model-based property test with crashes (sled's approach).

use super::coordinator::{Coordinator, Edit, EditAction, EnqueueError, OpenError, Request};
use super::observe::{Event, TelemetryKind};
use super::queue::Status;
use super::store::StoreError;
use crate::config::SyncConfig;
use crate::entity::EntityType;
use crate::ids::{ConflictId, DeviceId, EntityId, OpId, UserId};
use crate::server::Server;
use crate::server::wire::{BatchResponse, ConflictStatus, OpResult, OpStatus, Resolution};
use crate::testing::sim_store::SimStore;
use crate::time::{DAY_MS, Millis};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

const T0: Millis = Millis(1_760_000_000_000);

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

fn create(entity_type: EntityType, id: &str, value: Value) -> Edit {
    Edit {
        entity_type,
        entity_id: EntityId(id.to_owned()),
        action: EditAction::Create(fields(value)),
    }
}

fn update(entity_type: EntityType, id: &str, value: Value) -> Edit {
    Edit {
        entity_type,
        entity_id: EntityId(id.to_owned()),
        action: EditAction::Update(fields(value)),
    }
}

fn session(id: &str) -> Edit {
    create(EntityType::FieldSession, id, json!({"name": "creek"}))
}

fn find_log(id: &str, session: &str) -> Edit {
    create(
        EntityType::FindLog,
        id,
        json!({"field_session_id": session, "note": "agate"}),
    )
}

fn open_with(config: SyncConfig, store: SimStore, incarnation: u64) -> Coordinator<SimStore> {
    Coordinator::open(DeviceId("d1".to_owned()), incarnation, config, store, 7, T0)
        .expect("a healthy store opens")
}

fn open(config: SyncConfig) -> Coordinator<SimStore> {
    open_with(config, SimStore::new(), 0)
}

fn crash(coordinator: Coordinator<SimStore>, torn_bytes: usize) -> Coordinator<SimStore> {
    let config = coordinator.config().clone();
    let mut store = coordinator.into_store();
    store.torn_bytes_on_crash = torn_bytes;
    store.crash();
    open_with(config, store, 1)
}

fn status_of(coordinator: &Coordinator<SimStore>, op_id: &OpId) -> Option<Status> {
    coordinator
        .queue()
        .find(|e| e.op.op_id == *op_id)
        .map(|e| e.status)
}

fn batch(request: Option<Request>) -> crate::op::Batch {
    match request {
        Some(Request::Batch(batch)) => batch,
        other => panic!("expected a batch, got {other:?}"),
    }
}

fn answer(batch: &crate::op::Batch, status: OpStatus, reason: Option<&str>) -> BatchResponse {
    BatchResponse {
        batch_id: batch.batch_id.clone(),
        server_time_ms: T0,
        results: batch
            .ops
            .iter()
            .map(|op| OpResult {
                op_id: op.op_id.clone(),
                status,
                version: (status == OpStatus::Applied).then_some(op.base_version + 1),
                entity: None,
                deleted: false,
                conflict_id: None,
                reason: reason.map(|r| serde_json::from_value(serde_json::Value::from(r)).unwrap()),
            })
            .collect(),
        checksum: None,
    }
}

#[test]
fn a_full_queue_refuses_the_new_op_and_keeps_every_old_one() {
    let config = SyncConfig {
        max_queue_size: 3,
        ..SyncConfig::default()
    };
    let mut device = open(config);
    for n in 0..3 {
        device.enqueue(T0, T0, session(&format!("s{n}"))).unwrap();
    }
    let error = device.enqueue(T0, T0, session("s3")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "queue full: 3 ops queued, limit 3; old ops are kept, this one is refused"
    );
    let device = crash(device, 0);
    assert_eq!(device.queue().count(), 3);
}

#[test]
fn an_enqueue_the_store_refuses_returns_an_error_and_leaves_nothing_behind() {
    let mut device = open(SyncConfig::default());
    device.store_mut().fail_sync = true;
    let error = device.enqueue(T0, T0, session("s1")).unwrap_err();
    assert!(matches!(
        error,
        EnqueueError::Store(StoreError::SyncFailed { .. })
    ));
    assert_eq!(device.queue().count(), 0);
    assert!(
        device
            .entity(EntityType::FieldSession, &EntityId("s1".into()))
            .is_none()
    );
    device.store_mut().fail_sync = false;
    device.enqueue(T0, T0, session("s2")).unwrap();
    let device = crash(device, 0);
    let ids: Vec<_> = device.queue().map(|e| e.op.entity_id.0.clone()).collect();
    assert_eq!(ids, vec!["s2"]);
}

#[test]
fn a_batch_enqueue_is_all_or_nothing() {
    let mut device = open(SyncConfig::default());
    let error = device
        .enqueue_all(T0, T0, vec![session("s1"), find_log("f1", "nowhere")])
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "field_session_id nowhere does not exist on this device"
    );
    assert_eq!(device.queue().count(), 0);
    let ids = device
        .enqueue_all(T0, T0, vec![session("s1"), find_log("f1", "s1")])
        .unwrap();
    assert_eq!(ids.len(), 2);
    let find = device.queue().find(|e| e.op.op_id == ids[1]).unwrap();
    assert_eq!(find.op.depends_on, vec![ids[0].clone()]);
}

#[test]
fn edits_of_unknown_or_existing_entities_are_refused() {
    let mut device = open(SyncConfig::default());
    let error = device
        .enqueue(T0, T0, update(EntityType::Specimen, "x", json!({"a": 1})))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "specimen x does not exist on this device"
    );
    device.enqueue(T0, T0, session("s1")).unwrap();
    let error = device.enqueue(T0, T0, session("s1")).unwrap_err();
    assert_eq!(
        error.to_string(),
        "field_session s1 already exists on this device"
    );
}

#[test]
fn an_op_past_the_ttl_expires_with_an_event_and_stays_visible() {
    let config = SyncConfig {
        queue_ttl_ms: 7 * DAY_MS,
        ..SyncConfig::default()
    };
    let mut device = open(config);
    let op_id = device.enqueue(T0, T0, session("s1")).unwrap();
    device.take_events();
    assert_eq!(device.next_wake_at(), Some(T0.plus_ms(7 * DAY_MS)));
    assert_eq!(device.poll(T0.plus_ms(7 * DAY_MS - 1)), None);
    assert_eq!(status_of(&device, &op_id), Some(Status::Pending));
    device.poll(T0.plus_ms(7 * DAY_MS));
    assert_eq!(status_of(&device, &op_id), Some(Status::Expired));
    let events = device.take_events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Op(u) if u.op_id == op_id && u.status == Status::Expired))
    );
    // Going online later sends nothing: an expired op is never sent.
    device.set_online(T0.plus_ms(8 * DAY_MS), true);
    assert!(matches!(
        device.poll(T0.plus_ms(8 * DAY_MS)),
        Some(Request::Pull { .. })
    ));
    // And it survives a restart as expired.
    let device = crash(device, 0);
    assert_eq!(status_of(&device, &op_id), Some(Status::Expired));
}

#[test]
fn dead_lettered_ops_block_their_dependants_until_a_manual_retry() {
    let config = SyncConfig {
        max_retries: Some(2),
        ..SyncConfig::default()
    };
    let mut device = open(config);
    let ids = device
        .enqueue_all(T0, T0, vec![session("s1"), find_log("f1", "s1")])
        .unwrap();
    device.set_online(T0, true);
    // First attempt: the session alone (the find log is in the same batch, after it).
    let first = batch(device.poll(T0));
    assert_eq!(first.ops.len(), 2);
    device.on_request_failed(T0, "connection reset");
    let due = device.queue().map(|e| e.next_attempt_at_ms).max().unwrap();
    assert!(due >= T0.plus_ms(750) && due <= T0.plus_ms(1_250));
    let second = batch(device.poll(due));
    assert_eq!(second.ops[0].idempotency_key, first.ops[0].idempotency_key);
    device.on_request_failed(due, "connection reset");
    assert_eq!(status_of(&device, &ids[0]), Some(Status::Error));
    assert_eq!(status_of(&device, &ids[1]), Some(Status::Error));
    // Both dead (they failed together); retry the session: the find log stays dead.
    device.retry(due, &ids[0]).unwrap();
    let third = batch(device.poll(due));
    assert_eq!(
        third.ops.iter().map(|o| &o.op_id).collect::<Vec<_>>(),
        vec![&ids[0]]
    );
    device.on_batch_response(due, &answer(&third, OpStatus::Applied, None));
    assert_eq!(status_of(&device, &ids[0]), None);
    assert_eq!(device.history().last().unwrap().status, Status::Applied);
    let error = device.retry(due, &ids[0]).unwrap_err();
    assert_eq!(error.to_string(), "op d1:0 is not in the queue");
}

#[test]
fn a_discarded_op_leaves_the_queue_with_its_event_and_stays_gone_after_a_restart() {
    let config = SyncConfig {
        max_retries: Some(1),
        ..SyncConfig::default()
    };
    let mut device = open(config);
    let op_id = device.enqueue(T0, T0, session("s1")).unwrap();
    device.set_online(T0, true);
    let _ = batch(device.poll(T0));
    device.on_request_failed(T0, "connection reset");
    assert_eq!(status_of(&device, &op_id), Some(Status::Error));
    // Only a failed or blocked op may be discarded; an unknown one is refused.
    let unknown = device.discard(&OpId("d1:99".into())).unwrap_err();
    assert_eq!(unknown.to_string(), "op d1:99 is not in the queue");
    let _ = device.take_events();
    device.discard(&op_id).unwrap();
    assert_eq!(status_of(&device, &op_id), None);
    let events = device.take_events();
    assert!(events.iter().any(|e| matches!(e,
        Event::Discarded { op_id: id, status: Status::Error } if *id == op_id)));
    let device = crash(device, 0);
    assert_eq!(status_of(&device, &op_id), None, "the discard was durable");
}

/// Found by `rockhound explore` (seed 69): a child that joined its parent's batch later
/// has fewer attempts; when the parent is dead-lettered in that batch, the child must be
/// blocked, not left pending behind a parent that will never be sent.
#[test]
fn a_parent_dead_lettered_in_the_same_batch_blocks_a_younger_child() {
    let config = SyncConfig {
        max_retries: Some(2),
        ..SyncConfig::default()
    };
    let mut device = open(config);
    let parent = device.enqueue(T0, T0, session("s1")).unwrap();
    device.set_online(T0, true);
    let _ = batch(device.poll(T0));
    device.on_request_failed(T0, "connection reset");
    let child = device.enqueue(T0, T0, find_log("f1", "s1")).unwrap();
    let due = device.queue().map(|e| e.next_attempt_at_ms).max().unwrap();
    let second = batch(device.poll(due));
    assert_eq!(second.ops.len(), 2, "the child goes with its parent");
    device.on_request_failed(due, "connection reset");
    assert_eq!(status_of(&device, &parent), Some(Status::Error));
    let entry = device.queue().find(|e| e.op.op_id == child).unwrap();
    assert_eq!(entry.status, Status::Blocked);
    assert_eq!(entry.blocked_by.as_ref(), Some(&parent));
    let child_due = entry.next_attempt_at_ms;
    let events = device.take_events();
    // The child's own attempt failed too: its report says so with the wait it keeps.
    assert!(events.iter().any(|e| matches!(e,
        Event::Op(update) if update.op_id == child && update.status == Status::Blocked
            && update.attempts == 1 && update.delay_ms.is_some()
            && update.next_attempt_at_ms == Some(child_due))));
    // A manual retry of the parent frees the child, which goes once its own backoff ends.
    device.retry(due, &parent).unwrap();
    assert_eq!(status_of(&device, &child), Some(Status::Pending));
    let third = batch(device.poll(due));
    assert_eq!(third.ops[0].op_id, parent);
    device.on_batch_response(due, &answer(&third, OpStatus::Applied, None));
    let entry = device.queue().find(|e| e.op.op_id == child).unwrap();
    assert_eq!(
        (entry.status, entry.blocked_by.as_ref()),
        (Status::Pending, None)
    );
    assert!(
        entry.next_attempt_at_ms > due,
        "the child keeps its own backoff"
    );
}

#[test]
fn a_rejected_parent_blocks_its_children_and_they_are_never_sent() {
    let mut device = open(SyncConfig::default());
    let ids = device.enqueue_all(T0, T0, vec![session("s1")]).unwrap();
    device.set_online(T0, true);
    let sent = batch(device.poll(T0));
    // The find log arrives while the session is in flight.
    let child = device.enqueue(T0, T0, find_log("f1", "s1")).unwrap();
    device.on_batch_response(T0, &answer(&sent, OpStatus::Rejected, Some("forbidden")));
    assert_eq!(status_of(&device, &ids[0]), Some(Status::Rejected));
    let blocked = device.queue().find(|e| e.op.op_id == child).unwrap();
    assert_eq!(blocked.status, Status::Blocked);
    assert_eq!(blocked.blocked_by.as_ref(), Some(&ids[0]));
    assert!(device.take_events().iter().any(|e| matches!(
        e,
        Event::Op(u) if u.op_id == child && u.status == Status::Blocked
    )));
    // Only a pull goes out now.
    assert!(matches!(device.poll(T0), Some(Request::Pull { .. })));
    // After a restart the child is still blocked, still by the session.
    let device = crash(device, 0);
    assert_eq!(status_of(&device, &child), Some(Status::Blocked));
}

#[test]
fn a_retried_op_whose_parent_was_rejected_waits_blocked_not_pending_forever() {
    // Found by explore seed 1971: a dead-lettered child's parent was rejected, and the
    // user's retry of the child left it pending behind a parent that never settles.
    let config = SyncConfig {
        max_retries: Some(1),
        ..SyncConfig::default()
    };
    let mut device = open(config);
    let ids = device
        .enqueue_all(T0, T0, vec![session("s1"), find_log("f1", "s1")])
        .unwrap();
    device.set_online(T0, true);
    let sent = batch(device.poll(T0));
    assert_eq!(sent.ops.len(), 2);
    device.on_batch_response(T0, &answer(&sent, OpStatus::Retry, Some("storage_full")));
    assert_eq!(status_of(&device, &ids[1]), Some(Status::Error));
    device.retry(T0, &ids[0]).unwrap();
    let sent = batch(device.poll(T0));
    assert_eq!(sent.ops.len(), 1, "the dead-lettered child stays behind");
    device.on_batch_response(
        T0,
        &answer(&sent, OpStatus::Rejected, Some("parent_deleted")),
    );
    assert_eq!(status_of(&device, &ids[0]), Some(Status::Rejected));
    assert_eq!(status_of(&device, &ids[1]), Some(Status::Error));
    device.take_events();
    device.retry(T0, &ids[1]).unwrap();
    let child = device.queue().find(|e| e.op.op_id == ids[1]).unwrap();
    assert_eq!(
        (child.status, child.blocked_by.as_ref(), child.attempts),
        (Status::Blocked, Some(&ids[0]), 0)
    );
    assert!(device.take_events().iter().any(|e| matches!(
        e,
        Event::Op(u) if u.op_id == ids[1] && u.status == Status::Blocked
    )));
    // A restart rebuilds the same state from the log.
    let device = crash(device, 0);
    assert_eq!(status_of(&device, &ids[1]), Some(Status::Blocked));
}

#[test]
fn a_child_answered_blocked_beside_its_rejected_parent_is_blocked_without_an_attempt() {
    let config = SyncConfig {
        max_retries: Some(1),
        ..SyncConfig::default()
    };
    let mut device = open(config);
    let ids = device
        .enqueue_all(T0, T0, vec![session("s1"), find_log("f1", "s1")])
        .unwrap();
    device.set_online(T0, true);
    let sent = batch(device.poll(T0));
    let mut response = answer(&sent, OpStatus::Rejected, Some("parent_deleted"));
    response.results[1].status = OpStatus::Blocked;
    response.results[1].reason = Some(serde_json::from_value("dependency_failed".into()).unwrap());
    device.on_batch_response(T0, &response);
    // The parent is rejected after the child's result is read, yet the child waits on it
    // (it used to count a failed attempt and, at one retry, was dead-lettered).
    let child = device.queue().find(|e| e.op.op_id == ids[1]).unwrap();
    assert_eq!(
        (child.status, child.blocked_by.as_ref(), child.attempts),
        (Status::Blocked, Some(&ids[0]), 0)
    );
}

#[test]
fn going_offline_mid_batch_is_not_an_attempt() {
    let mut device = open(SyncConfig::default());
    let op_id = device.enqueue(T0, T0, session("s1")).unwrap();
    device.set_online(T0, true);
    let sent = batch(device.poll(T0));
    device.set_online(T0.plus_ms(10), false);
    let entry = device.queue().find(|e| e.op.op_id == op_id).unwrap();
    assert_eq!((entry.status, entry.attempts), (Status::Pending, 0));
    // The late answer to the abandoned batch is ignored; the op goes again under its key.
    device.on_batch_response(T0.plus_ms(20), &answer(&sent, OpStatus::Applied, None));
    assert_eq!(status_of(&device, &op_id), Some(Status::Pending));
    device.set_online(T0.plus_ms(30), true);
    let again = batch(device.poll(T0.plus_ms(30)));
    assert_eq!(again.ops[0].idempotency_key, sent.ops[0].idempotency_key);
    assert_ne!(again.batch_id, sent.batch_id);
}

#[test]
fn a_batch_without_an_answer_times_out_and_counts_one_attempt() {
    let mut device = open(SyncConfig::default());
    let op_id = device.enqueue(T0, T0, session("s1")).unwrap();
    device.set_online(T0, true);
    batch(device.poll(T0));
    let timeout = device.config().batch_timeout_ms;
    assert_eq!(device.next_wake_at(), Some(T0.plus_ms(timeout)));
    // The timeout fails the batch; the next request is a pull (the op backs off).
    assert!(matches!(
        device.poll(T0.plus_ms(timeout)),
        Some(Request::Pull { .. })
    ));
    let entry = device.queue().find(|e| e.op.op_id == op_id).unwrap();
    assert_eq!(entry.attempts, 1);
    assert_eq!(entry.reason.as_deref(), Some("timeout"));
}

#[test]
fn recovery_cuts_a_torn_tail_and_refuses_a_corrupt_log() {
    let mut device = open(SyncConfig::default());
    device.enqueue(T0, T0, session("s1")).unwrap();
    device.store_mut().write(b"half a frame").unwrap();
    let mut device = crash(device, 5);
    let events = device.take_events();
    assert_eq!(
        events[0],
        Event::Recovered {
            ops: 1,
            open_conflicts: 0,
            torn_tail_bytes: 5
        }
    );
    device.enqueue(T0, T0, session("s2")).unwrap();
    let mut store = device.into_store();
    store.corrupt_bit(40);
    let store_len = store.durable_bytes();
    let error = Coordinator::open(
        DeviceId("d1".into()),
        2,
        SyncConfig::default(),
        store,
        7,
        T0,
    )
    .unwrap_err();
    // The store comes back with the error: the failed start loses nothing.
    assert_eq!(error.store.durable_bytes(), store_len);
    let error = error.error;
    assert!(matches!(
        error,
        OpenError::Store(StoreError::Corrupt { offset: 0, .. })
    ));
    assert!(
        error
            .to_string()
            .starts_with("queue store: corrupt record at byte 0")
    );
}

#[test]
fn telemetry_follows_the_configuration() {
    for enabled in [true, false] {
        let config = SyncConfig {
            enable_telemetry: enabled,
            ..SyncConfig::default()
        };
        let mut device = open(config);
        device.enqueue(T0, T0, session("s1")).unwrap();
        device.set_online(T0, true);
        let sent = batch(device.poll(T0));
        device.on_batch_response(T0, &answer(&sent, OpStatus::Applied, None));
        let kinds: Vec<TelemetryKind> = device
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Telemetry { kind, .. } => Some(kind),
                _ => None,
            })
            .collect();
        let expected = if enabled {
            vec![
                TelemetryKind::SyncOperationStart,
                TelemetryKind::SyncBatchSuccess,
                TelemetryKind::SyncOperationSuccess,
            ]
        } else {
            vec![]
        };
        assert_eq!(kinds, expected);
    }
}

/// An empty last pull page; `open_conflicts` as the server would count them (`None`: a
/// server that does not say).
fn no_changes(open_conflicts: Option<u64>) -> crate::server::wire::ChangesPage {
    crate::server::wire::ChangesPage {
        changes: vec![],
        next_cursor: 0,
        has_more: false,
        open_conflicts,
        checksum: None,
    }
}

fn no_conflicts() -> crate::server::wire::ConflictsPage {
    crate::server::wire::ConflictsPage {
        conflicts: vec![],
        next_cursor: 0,
        has_more: false,
        checksum: None,
    }
}

/// Delivers every request of `device` to `server` until it has nothing to send.
fn drive(device: &mut Coordinator<SimStore>, server: &mut Server, user: &UserId, now: Millis) {
    for _ in 0..100 {
        let Some(request) = device.poll(now) else {
            return;
        };
        match request {
            Request::Batch(batch) => {
                let response = server.handle_batch(user, &batch, now).unwrap();
                device.on_batch_response(now, &response);
            }
            Request::Pull { cursor, limit } => {
                let page = server
                    .changes(user, Some(device.device_id()), cursor, limit, now)
                    .unwrap();
                device.on_pull_response(now, &page);
            }
            Request::Resolve {
                conflict_id,
                request,
            } => {
                let result = server
                    .resolve_conflict(user, &conflict_id, &request, now)
                    .map(|_| ())
                    .map_err(|e| e.code().as_str().to_owned());
                device.on_resolve_response(now, result);
            }
            Request::Conflicts { cursor, limit } => {
                let page = server
                    .conflicts_page(user, Some(ConflictStatus::Open), cursor, limit)
                    .unwrap();
                device.on_conflicts_response(now, &page);
            }
        }
    }
    panic!("the device kept sending");
}

fn device(name: &str, config: &SyncConfig) -> Coordinator<SimStore> {
    Coordinator::open(
        DeviceId(name.into()),
        0,
        config.clone(),
        SimStore::new(),
        1,
        T0,
    )
    .unwrap()
}

#[test]
fn two_devices_converge_through_the_server_with_a_manual_conflict() {
    let mut config = SyncConfig::default();
    config
        .entities
        .set_strategy(EntityType::FindLog, crate::conflict::Strategy::Manual);
    let mut server = Server::new(config.clone());
    let ann = UserId("ann".into());
    let mut phone = device("phone", &config);
    let mut tablet = device("tablet", &config);
    phone
        .enqueue_all(T0, T0, vec![session("s1"), find_log("f1", "s1")])
        .unwrap();
    phone.set_online(T0, true);
    drive(&mut phone, &mut server, &ann, T0);
    tablet.set_online(T0, true);
    drive(&mut tablet, &mut server, &ann, T0);
    let f1 = EntityId("f1".into());
    assert_eq!(
        tablet.entity(EntityType::FindLog, &f1),
        phone.entity(EntityType::FindLog, &f1)
    );
    // Both edit the find log offline; the phone syncs first, the tablet conflicts.
    let t1 = T0.plus_ms(1_000);
    phone.set_online(t1, false);
    tablet.set_online(t1, false);
    phone
        .enqueue(
            t1,
            t1,
            update(EntityType::FindLog, "f1", json!({"note": "jasper"})),
        )
        .unwrap();
    tablet
        .enqueue(
            t1,
            t1,
            update(EntityType::FindLog, "f1", json!({"note": "chert"})),
        )
        .unwrap();
    // The local view shows the pending edit on top of the replica.
    assert_eq!(
        tablet.entity(EntityType::FindLog, &f1).unwrap()["note"],
        "chert"
    );
    phone.set_online(t1, true);
    drive(&mut phone, &mut server, &ann, t1);
    tablet.set_online(t1, true);
    drive(&mut tablet, &mut server, &ann, t1);
    let conflict: Vec<ConflictId> = tablet
        .conflicts()
        .filter(|c| c.open)
        .map(|c| c.conflict_id.clone())
        .collect();
    assert_eq!(conflict.len(), 1);
    assert_eq!(tablet.monitor().conflict_count, 1);
    tablet
        .resolve_conflict(&conflict[0], Resolution::KeepClient, None)
        .unwrap();
    drive(&mut tablet, &mut server, &ann, t1);
    assert_eq!(tablet.monitor().conflict_count, 0);
    phone.sync_now(t1);
    drive(&mut phone, &mut server, &ann, t1);
    for device in [&phone, &tablet] {
        assert_eq!(
            device.entity(EntityType::FindLog, &f1).unwrap()["note"],
            "chert"
        );
        assert_eq!(device.stats().pending, 0);
    }
    assert_eq!(phone.replica().entities(), tablet.replica().entities());
}

#[test]
fn a_manual_conflict_shows_on_every_device_of_the_user_survives_a_restart_and_closes_everywhere() {
    let mut config = SyncConfig::default();
    config
        .entities
        .set_strategy(EntityType::FindLog, crate::conflict::Strategy::Manual);
    // Pages of one, so a listing of two conflicts takes pages.
    config.pull_page_len = 1;
    let mut server = Server::new(config.clone());
    let ann = UserId("ann".into());
    let bob = UserId("bob".into());
    let mut phone = device("phone", &config);
    let mut tablet = device("tablet", &config);
    let mut bobs = device("bobs", &config);
    let setup = vec![session("s1"), find_log("f1", "s1"), find_log("f2", "s1")];
    phone.enqueue_all(T0, T0, setup.clone()).unwrap();
    bobs.enqueue_all(T0, T0, setup).unwrap();
    for (device, user) in [(&mut phone, &ann), (&mut tablet, &ann), (&mut bobs, &bob)] {
        device.set_online(T0, true);
        drive(device, &mut server, user, T0);
    }
    // Both of ann's devices edit both find logs; the tablet's edits meet the phone's.
    let t1 = T0.plus_ms(1_000);
    for (device, note) in [(&mut phone, "jasper"), (&mut tablet, "chert")] {
        for id in ["f1", "f2"] {
            let edit = update(EntityType::FindLog, id, json!({ "note": note }));
            device.enqueue(t1, t1, edit).unwrap();
        }
        drive(device, &mut server, &ann, t1);
    }
    let open = |d: &Coordinator<SimStore>| -> BTreeSet<ConflictId> {
        d.conflicts()
            .filter(|c| c.open)
            .map(|c| c.conflict_id.clone())
            .collect()
    };
    let on_tablet = open(&tablet);
    assert_eq!(on_tablet.len(), 2);
    // The phone ran into nothing, yet its next sync lists both, raised by the tablet.
    assert!(open(&phone).is_empty());
    phone.take_events();
    phone.sync_now(t1);
    drive(&mut phone, &mut server, &ann, t1);
    assert_eq!(open(&phone), on_tablet);
    assert!(
        phone
            .conflicts()
            .all(|c| c.device_id == DeviceId("tablet".into()))
    );
    assert_eq!(phone.monitor().conflict_count, 2);
    let events = phone.take_events();
    assert!(events.contains(&Event::ListingConflicts), "{events:?}");
    assert!(events.contains(&Event::ConflictsListed {
        open: on_tablet.iter().cloned().collect()
    }));
    // Bob's device lists nothing of ann's.
    bobs.sync_now(t1);
    drive(&mut bobs, &mut server, &bob, t1);
    assert!(open(&bobs).is_empty());
    // The phone restarts: its open conflicts come back from its store.
    let mut store = phone.into_store();
    store.crash();
    let mut phone = Coordinator::open(DeviceId("phone".into()), 1, config.clone(), store, 3, t1)
        .expect("the store opens");
    assert!(matches!(
        phone.take_events()[0],
        Event::Recovered {
            open_conflicts: 2,
            ..
        }
    ));
    assert_eq!(open(&phone), on_tablet);
    // The phone resolves one by a named strategy; the tablet finds it closed on its next
    // sync, and resolves the other, which the phone then finds closed.
    let first = on_tablet.iter().next().unwrap().clone();
    phone
        .resolve_conflict(&first, Resolution::LatestTimestamp, None)
        .unwrap();
    phone.set_online(t1, true);
    drive(&mut phone, &mut server, &ann, t1);
    tablet.sync_now(t1);
    drive(&mut tablet, &mut server, &ann, t1);
    let second = on_tablet.iter().nth(1).unwrap().clone();
    assert_eq!(open(&tablet), BTreeSet::from([second.clone()]));
    tablet
        .resolve_conflict(&second, Resolution::KeepServer, None)
        .unwrap();
    drive(&mut tablet, &mut server, &ann, t1);
    phone.sync_now(t1);
    drive(&mut phone, &mut server, &ann, t1);
    assert!(open(&phone).is_empty() && open(&tablet).is_empty());
    // Closed for good: a restart does not bring them back.
    let mut store = phone.into_store();
    store.crash();
    let phone = Coordinator::open(DeviceId("phone".into()), 2, config, store, 3, t1)
        .expect("the store opens");
    assert!(open(&phone).is_empty());
    assert_eq!(
        server.conflicts(&ann, Some(ConflictStatus::Open)),
        Vec::new()
    );
}

#[test]
fn a_listing_page_that_promises_more_but_does_not_advance_fails_instead_of_looping() {
    let mut device = open(SyncConfig::default());
    device.set_online(T0, true);
    assert!(matches!(device.poll(T0), Some(Request::Pull { .. })));
    let nothing = no_changes(None);
    device.on_pull_response(T0, &nothing);
    assert!(matches!(
        device.poll(T0),
        Some(Request::Conflicts { cursor: 0, .. })
    ));
    let stuck = crate::server::wire::ConflictsPage {
        has_more: true,
        ..no_conflicts()
    };
    device.take_events();
    device.on_conflicts_response(T0, &stuck);
    let events = device.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::RequestFailed {
                request: "conflicts",
                ..
            }
        )),
        "{events:?}"
    );
    // It backs off like a pull, then starts the listing over from the first page.
    assert!(device.poll(T0).is_none());
    let later = device.next_wake_at().expect("a wake-up");
    assert!(matches!(
        device.poll(later),
        Some(Request::Conflicts { cursor: 0, .. })
    ));
}

#[test]
fn an_update_from_two_versions_enqueues_their_merge_patch_and_nothing_when_equal() {
    let mut device = open(SyncConfig::default());
    let s1 = (EntityType::FieldSession, EntityId("s1".into()));
    device.enqueue(T0, T0, session("s1")).unwrap();
    let original = device.entity(s1.0, &s1.1).unwrap();
    // Equal versions: nothing is enqueued.
    let none = device
        .enqueue_change(T0, T0, s1.clone(), &original, &original)
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(device.queue().count(), 1);
    // A changed field, a removed one, one left alone, and a `modified` without its id: the
    // patch holds the change and the removal only.
    let mut modified = original.clone();
    modified["name"] = json!("canyon");
    modified.as_object_mut().unwrap().remove("id");
    modified["gps"] = json!({"lat": 44.1});
    let op_id = device
        .enqueue_change(T0, T0, s1.clone(), &original, &modified)
        .unwrap();
    let op = &device.queued(&op_id.unwrap()).unwrap().op;
    assert_eq!(op.kind, crate::op::OpKind::Update);
    assert_eq!(op.payload, json!({"name": "canyon", "gps": {"lat": 44.1}}));
    // The local view is `modified` (with its id).
    let view = device.entity(s1.0, &s1.1).unwrap();
    assert_eq!(
        (view["name"].clone(), view["id"].clone()),
        (json!("canyon"), json!("s1"))
    );
    // A changed id, or versions that are not objects, are refused and enqueue nothing.
    let mut renamed = original.clone();
    renamed["id"] = json!("s2");
    for (before, after) in [
        (&original, &renamed),
        (&original, &json!([1])),
        (&json!(null), &original),
    ] {
        let error = device
            .enqueue_change(T0, T0, s1.clone(), before, after)
            .unwrap_err();
        assert!(matches!(error, EnqueueError::NotAChange { .. }), "{error}");
    }
    assert_eq!(device.queue().count(), 2);
}

/// The telemetry kinds among `events`, in order.
fn telemetry_kinds(events: &[Event]) -> Vec<TelemetryKind> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Telemetry { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect()
}

#[test]
fn the_hooks_views_follow_an_op_through_failure_conflict_resolution_and_discard() {
    let mut config = SyncConfig::default();
    config
        .entities
        .set_strategy(EntityType::FindLog, crate::conflict::Strategy::Manual);
    let mut server = Server::new(config.clone());
    let ann = UserId("ann".into());
    let mut phone = device("phone", &config);
    let mut tablet = device("tablet", &config);
    let f1 = EntityId("f1".into());
    phone
        .enqueue_all(T0, T0, vec![session("s1"), find_log("f1", "s1")])
        .unwrap();
    // useEntitySync: an entity with an unsent create.
    let status = phone.entity_status(EntityType::FindLog, &f1);
    assert_eq!(
        (status.server_version, status.open_ops, status.status),
        (None, 1, Some(Status::Pending))
    );
    // A batch that gets no answer: one sync_batch_error, one sync_operation_error per op.
    phone.set_online(T0, true);
    let sent = batch(phone.poll(T0));
    phone.take_events();
    phone.on_request_failed(T0, "connection reset");
    assert_eq!(
        telemetry_kinds(&phone.take_events()),
        [
            TelemetryKind::SyncBatchError,
            TelemetryKind::SyncOperationError,
            TelemetryKind::SyncOperationError
        ]
    );
    let metrics = phone.metrics();
    assert_eq!(
        (
            metrics.batches_sent,
            metrics.batches_failed,
            metrics.ops_sent,
            metrics.failed_attempts
        ),
        (1, 1, 2, 2)
    );
    assert_eq!(sent.ops.len(), 2);
    // The resend applies both; the tablet pulls them.
    let later = T0.plus_ms(60_000);
    drive(&mut phone, &mut server, &ann, later);
    tablet.set_online(later, true);
    drive(&mut tablet, &mut server, &ann, later);
    let status = phone.entity_status(EntityType::FindLog, &f1);
    assert_eq!(
        (status.server_version, status.open_ops, status.status),
        (Some(1), 0, None)
    );
    let metrics = phone.metrics();
    assert_eq!((metrics.batches_answered, metrics.ops_applied), (1, 2));
    // Both were enqueued at T0 and settled a minute later: each waited 60 s.
    assert_eq!(
        (metrics.settle_ms_max, metrics.settle_ms_total),
        (60_000, 120_000),
        "{metrics:?}"
    );
    assert_eq!(tablet.metrics().changes_pulled, 2);
    // Both edit the find log; the tablet's edit meets the phone's: a manual conflict.
    for (device, note) in [(&mut phone, "jasper"), (&mut tablet, "chert")] {
        let edit = update(EntityType::FindLog, "f1", json!({"note": note}));
        device.enqueue(later, later, edit).unwrap();
    }
    drive(&mut phone, &mut server, &ann, later);
    tablet.take_events();
    drive(&mut tablet, &mut server, &ann, later);
    let kinds = telemetry_kinds(&tablet.take_events());
    assert!(
        kinds.contains(&TelemetryKind::SyncConflictDetected),
        "{kinds:?}"
    );
    let status = tablet.entity_status(EntityType::FindLog, &f1);
    let conflict_id = status.open_conflict.clone().expect("an open conflict");
    assert_eq!(tablet.metrics().conflicts, 1);
    // A person keeps the tablet's version: sync_conflict_resolved, and nothing open.
    tablet
        .resolve_conflict(&conflict_id, Resolution::KeepClient, None)
        .unwrap();
    drive(&mut tablet, &mut server, &ann, later);
    let kinds = telemetry_kinds(&tablet.take_events());
    assert!(
        kinds.contains(&TelemetryKind::SyncConflictResolved),
        "{kinds:?}"
    );
    assert_eq!(
        tablet.entity_status(EntityType::FindLog, &f1).open_conflict,
        None
    );
    // A rejected op is discarded by the user: its event, and it leaves every view.
    tablet.set_online(later, false);
    let orphan = tablet.enqueue(later, later, find_log("f2", "s1")).unwrap();
    tablet.set_online(later, true);
    let sent = batch(tablet.poll(later));
    tablet.on_batch_response(later, &answer(&sent, OpStatus::Rejected, Some("forbidden")));
    let f2 = EntityId("f2".into());
    assert_eq!(
        tablet.entity_status(EntityType::FindLog, &f2).status,
        Some(Status::Rejected)
    );
    tablet.take_events();
    tablet.discard(&orphan).unwrap();
    let events = tablet.take_events();
    assert!(events.iter().any(|e| matches!(e,
        Event::Discarded { op_id, status: Status::Rejected } if *op_id == orphan)));
    let status = tablet.entity_status(EntityType::FindLog, &f2);
    assert_eq!((status.open_ops, status.status), (0, None));
    assert!(tablet.queue().all(|e| e.op.op_id != orphan));
}

// ---- the model-based property test -------------------------------------------------------

mod model {
    use super::*;
    use crate::ordering;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    pub enum Step {
        CreateSession,
        CreateFindLog(usize),
        CreateTag,
        Update(usize),
        Online(bool),
        Poll,
        Answer(Vec<u8>),
        Fail,
        Advance(u64),
        Crash(usize),
        RetryDead,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::CreateSession),
            3 => any::<usize>().prop_map(Step::CreateFindLog),
            2 => Just(Step::CreateTag),
            2 => any::<usize>().prop_map(Step::Update),
            2 => any::<bool>().prop_map(Step::Online),
            4 => Just(Step::Poll),
            4 => prop::collection::vec(0u8..6, 8).prop_map(Step::Answer),
            1 => Just(Step::Fail),
            2 => (0u64..20_000).prop_map(Step::Advance),
            1 => (0usize..80).prop_map(Step::Crash),
            1 => Just(Step::RetryDead),
        ]
    }

    /// What the model knows of each acknowledged op.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Fate {
        Open,
        Settled,
    }

    struct Harness {
        device: Coordinator<SimStore>,
        now: Millis,
        fates: BTreeMap<OpId, Fate>,
        sessions: Vec<String>,
        entities: Vec<(EntityType, String)>,
        last_batch: Option<crate::op::Batch>,
        incarnation: u64,
        created: usize,
    }

    impl Harness {
        fn new() -> Harness {
            let config = SyncConfig {
                batch_size: 4,
                max_retries: Some(3),
                max_queue_size: 30,
                ..SyncConfig::default()
            };
            Harness {
                device: open(config),
                now: T0,
                fates: BTreeMap::new(),
                sessions: Vec::new(),
                entities: Vec::new(),
                last_batch: None,
                incarnation: 0,
                created: 0,
            }
        }

        fn enqueue(&mut self, edit: Edit) {
            let key = (edit.entity_type, edit.entity_id.0.clone());
            let is_create = matches!(edit.action, EditAction::Create(_));
            if let Ok(op_id) = self.device.enqueue(self.now, self.now, edit) {
                self.fates.insert(op_id, Fate::Open);
                if is_create {
                    if key.0 == EntityType::FieldSession {
                        self.sessions.push(key.1.clone());
                    }
                    self.entities.push(key);
                }
            }
        }

        /// The batch the reference rules allow: greedy by (priority, seq) over pending,
        /// due ops whose open blockers are all earlier in the batch.
        fn expected_batch(&self) -> Vec<OpId> {
            let entries: Vec<_> = self.device.queue().collect();
            let open: BTreeSet<u64> = entries.iter().map(|e| e.seq).collect();
            let mut chosen: Vec<u64> = Vec::new();
            while chosen.len() < self.device.config().batch_size {
                let next = entries
                    .iter()
                    .filter(|e| e.status == Status::Pending && e.next_attempt_at_ms <= self.now)
                    .filter(|e| !chosen.contains(&e.seq))
                    .filter(|e| {
                        e.blockers
                            .iter()
                            .all(|b| !open.contains(b) || chosen.contains(b))
                    })
                    .min_by_key(|e| (e.op.priority, e.seq));
                match next {
                    Some(e) => chosen.push(e.seq),
                    None => break,
                }
            }
            chosen
                .iter()
                .map(|seq| {
                    entries
                        .iter()
                        .find(|e| e.seq == *seq)
                        .unwrap()
                        .op
                        .op_id
                        .clone()
                })
                .collect()
        }

        fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
            match step {
                Step::CreateSession => {
                    self.created += 1;
                    self.enqueue(session(&format!("s{}", self.created)));
                }
                Step::CreateTag => {
                    self.created += 1;
                    let id = format!("t{}", self.created);
                    self.enqueue(create(EntityType::Tag, &id, json!({"label": "quartz"})));
                }
                Step::CreateFindLog(pick) => {
                    if !self.sessions.is_empty() {
                        let parent = self.sessions[pick % self.sessions.len()].clone();
                        self.created += 1;
                        self.enqueue(find_log(&format!("f{}", self.created), &parent));
                    }
                }
                Step::Update(pick) => {
                    if !self.entities.is_empty() {
                        let (entity_type, id) = self.entities[pick % self.entities.len()].clone();
                        let note = format!("note {}", pick % 97);
                        self.enqueue(update(entity_type, &id, json!({ "note": note })));
                    }
                }
                Step::Online(online) => self.device.set_online(self.now, online),
                Step::Poll => {
                    self.device.tick(self.now);
                    let expected = self.expected_batch();
                    let in_flight = self.device.state().syncing;
                    match self.device.poll(self.now) {
                        Some(Request::Batch(batch)) => {
                            let sent: Vec<OpId> =
                                batch.ops.iter().map(|o| o.op_id.clone()).collect();
                            prop_assert!(!in_flight);
                            prop_assert_eq!(sent, expected, "batch order");
                            // And the reference ordering module agrees on the dependencies.
                            let pending: Vec<ordering::Pending> = batch
                                .ops
                                .iter()
                                .enumerate()
                                .map(|(i, op)| ordering::Pending {
                                    op_id: op.op_id.clone(),
                                    entity: (op.entity_type, op.entity_id.clone()),
                                    priority: op.priority,
                                    seq: i as u64,
                                    depends_on: op.depends_on.clone(),
                                    delete: op.kind == crate::op::OpKind::Delete,
                                })
                                .collect();
                            let order = ordering::batch_order(&pending, pending.len());
                            prop_assert_eq!(order.len(), pending.len(), "batch is a valid order");
                            self.last_batch = Some(batch);
                        }
                        Some(Request::Pull { .. }) => {
                            self.device.on_pull_response(self.now, &no_changes(None));
                        }
                        Some(Request::Resolve { .. }) => {
                            self.device.on_resolve_response(self.now, Ok(()))
                        }
                        Some(Request::Conflicts { .. }) => {
                            self.device.on_conflicts_response(
                                self.now,
                                &crate::server::wire::ConflictsPage {
                                    conflicts: vec![],
                                    next_cursor: 0,
                                    has_more: false,
                                    checksum: None,
                                },
                            );
                        }
                        None => {
                            if self.device.is_online() && !in_flight {
                                prop_assert!(expected.is_empty(), "ready ops left unsent");
                            }
                        }
                    }
                }
                Step::Answer(codes) => {
                    if let Some(batch) = self.last_batch.take() {
                        let results = batch
                            .ops
                            .iter()
                            .zip(codes.iter().cycle())
                            .map(|(op, code)| {
                                let (status, reason, conflict) = match code {
                                    0 | 1 => (OpStatus::Applied, None, None),
                                    2 => (OpStatus::Duplicate, None, None),
                                    3 => (
                                        OpStatus::Conflict,
                                        Some("server_kept"),
                                        Some(ConflictId(format!("c-{}", op.op_id))),
                                    ),
                                    4 => (OpStatus::Rejected, Some("forbidden"), None),
                                    _ => (OpStatus::Retry, Some("storage_full"), None),
                                };
                                OpResult {
                                    op_id: op.op_id.clone(),
                                    status,
                                    version: matches!(
                                        status,
                                        OpStatus::Applied
                                            | OpStatus::Duplicate
                                            | OpStatus::Conflict
                                    )
                                    .then_some(op.base_version + 1),
                                    entity: None,
                                    deleted: false,
                                    conflict_id: conflict,
                                    reason: reason.map(|r| {
                                        serde_json::from_value(serde_json::Value::from(r)).unwrap()
                                    }),
                                }
                            })
                            .collect();
                        self.device.on_batch_response(
                            self.now,
                            &BatchResponse {
                                batch_id: batch.batch_id,
                                server_time_ms: self.now,
                                results,
                                checksum: None,
                            },
                        );
                    }
                }
                Step::Fail => self.device.on_request_failed(self.now, "connection reset"),
                Step::Advance(ms) => self.now = self.now.plus_ms(ms),
                Step::Crash(torn) => {
                    self.incarnation += 1;
                    let config = self.device.config().clone();
                    let device = std::mem::replace(&mut self.device, open(config.clone()));
                    let mut store = device.into_store();
                    store.write(b"an append cut short by the crash").unwrap();
                    store.torn_bytes_on_crash = torn;
                    store.crash();
                    self.device = Coordinator::open(
                        DeviceId("d1".into()),
                        self.incarnation,
                        config,
                        store,
                        self.incarnation,
                        self.now,
                    )
                    .expect("recovery after a crash");
                    self.last_batch = None;
                    // The replica is a cache: entities known only from it are forgotten
                    // until the next pull, so the model forgets settled creates.
                    let device = &self.device;
                    self.entities
                        .retain(|(t, id)| device.entity(*t, &EntityId(id.clone())).is_some());
                    self.sessions.retain(|id| {
                        device
                            .entity(EntityType::FieldSession, &EntityId(id.clone()))
                            .is_some()
                    });
                }
                Step::RetryDead => {
                    let dead = self
                        .device
                        .queue()
                        .find(|e| e.status == Status::Error)
                        .map(|e| e.op.op_id.clone());
                    if let Some(op_id) = dead {
                        self.device.retry(self.now, &op_id).unwrap();
                    }
                }
            }
            self.check()
        }

        fn check(&mut self) -> Result<(), TestCaseError> {
            // The coordinator's own invariants first: its parts agree after every step.
            self.device.check_invariants(self.now);
            let backoff = self.device.config().backoff;
            for event in self.device.take_events() {
                if let Event::Op(update) = event {
                    let fate = self.fates.get_mut(&update.op_id);
                    prop_assert!(
                        fate.is_some(),
                        "event for an op never acknowledged: {}",
                        update.op_id
                    );
                    let fate = fate.unwrap();
                    prop_assert_eq!(
                        *fate,
                        Fate::Open,
                        "op {} changed after it settled",
                        &update.op_id
                    );
                    if update.status.is_settled() {
                        *fate = Fate::Settled;
                    }
                    if let Some(delay) = update.delay_ms {
                        prop_assert!(
                            backoff.envelope_ms(update.attempts).contains(&delay),
                            "delay {} after {} failures",
                            delay,
                            update.attempts
                        );
                    }
                }
            }
            let queued: BTreeSet<OpId> = self.device.queue().map(|e| e.op.op_id.clone()).collect();
            prop_assert_eq!(
                queued.len(),
                self.device.queue().count(),
                "an op is queued twice"
            );
            for (op_id, fate) in &self.fates {
                match fate {
                    Fate::Open => {
                        prop_assert!(queued.contains(op_id), "acknowledged op {} vanished", op_id)
                    }
                    Fate::Settled => {
                        prop_assert!(!queued.contains(op_id), "settled op {} is queued", op_id)
                    }
                }
            }
            for entry in self.device.queue() {
                prop_assert!(
                    self.fates.contains_key(&entry.op.op_id),
                    "unacknowledged op {} surfaced",
                    &entry.op.op_id
                );
                if let Some(max) = self.device.config().max_retries {
                    prop_assert!(entry.attempts <= max);
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn the_queue_matches_its_model_through_crashes(steps in prop::collection::vec(step(), 1..80)) {
            let mut harness = Harness::new();
            for step in steps {
                harness.run(step)?;
            }
        }
    }
}

#[test]
fn the_invariants_hold_through_a_batch_and_catch_ops_stranded_in_flight() {
    let mut device = open(SyncConfig::default());
    device.set_online(T0, true);
    device.enqueue(T0, T0, session("fs")).unwrap();
    device.check_invariants(T0);
    let sent = batch(device.poll(T0));
    device.check_invariants(T0);
    device.set_online(T0, false);
    device.check_invariants(T0);
    device.set_online(T0, true);
    let sent_again = batch(device.poll(T0));
    assert_eq!(sent_again.ops.len(), sent.ops.len());
    device.on_batch_response(T0, &answer(&sent_again, OpStatus::Applied, None));
    device.check_invariants(T0);

    // The planted bug leaves the batch's ops marked in flight with nothing in flight.
    let mut config = SyncConfig::default();
    config.planted.client.strands_in_flight_offline = true;
    let mut stranded = open(config);
    stranded.set_online(T0, true);
    stranded.enqueue(T0, T0, session("fs")).unwrap();
    batch(stranded.poll(T0));
    stranded.set_online(T0, false);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stranded.check_invariants(T0);
    }));
    let message = caught.expect_err("the invariant fires");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("the ops marked in flight are the batch in flight"),
        "{message}"
    );
}

#[test]
fn queued_finds_an_enqueued_op_by_id_and_nothing_for_an_unknown_one() {
    let mut device = open(SyncConfig::default());
    let first = device.enqueue(T0, T0, session("fs-1")).unwrap();
    let second = device.enqueue(T0, T0, find_log("fl-1", "fs-1")).unwrap();
    let entry = device.queued(&second).expect("the second op is queued");
    assert_eq!(entry.op.op_id, second);
    assert_eq!(entry.op.depends_on, vec![first.clone()]);
    assert_eq!(device.queued(&first).unwrap().op.entity_id.as_str(), "fs-1");
    assert!(device.queued(&OpId("op-unknown".into())).is_none());
}

#[test]
fn an_edit_whose_field_breaks_the_schema_is_refused_before_it_is_queued() {
    let mut device = open(SyncConfig::default());
    device.enqueue(T0, T0, session("s1")).unwrap();
    device.enqueue(T0, T0, find_log("f1", "s1")).unwrap();
    let heavy = create(
        EntityType::Specimen,
        "sp1",
        json!({"find_log_id": "f1", "weight_g": "heavy"}),
    );
    let refused = device.enqueue(T0, T0, heavy).unwrap_err();
    assert!(
        matches!(
            &refused,
            EnqueueError::Invalid(crate::op::OpError::Schema { problem, .. })
                if problem.field == "weight_g"
        ),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("weight_g must be a number"),
        "{refused}"
    );
    assert_eq!(device.stats().pending, 2, "nothing of it was queued");
    // The same field, right, goes; an update may clear it with null.
    let ok = create(
        EntityType::Specimen,
        "sp1",
        json!({"find_log_id": "f1", "weight_g": 412}),
    );
    device.enqueue(T0, T0, ok).unwrap();
    let cleared = update(EntityType::Specimen, "sp1", json!({"weight_g": null}));
    device.enqueue(T0, T0, cleared).unwrap();
}

#[test]
fn the_batching_window_holds_a_small_batch_but_never_a_full_one_or_priority_0() {
    let config = SyncConfig {
        batch_window_ms: 2_000,
        batch_size: 3,
        ..SyncConfig::default()
    };
    let mut device = open(config);
    device.set_online(T0, true);
    // Coming online asks for a pull; nothing is pulled.
    assert!(matches!(device.poll(T0), Some(Request::Pull { .. })));
    let nothing = no_changes(None);
    device.on_pull_response(T0, &nothing);
    // A finished pull is followed by the listing of open conflicts; there are none.
    assert!(matches!(
        device.poll(T0),
        Some(Request::Conflicts { cursor: 0, .. })
    ));
    device.on_conflicts_response(T0, &no_conflicts());
    device.enqueue(T0, T0, session("s1")).unwrap();
    // One op ready: the window opens and holds it; the device wakes when it closes.
    assert!(device.poll(T0).is_none());
    let closes = Millis(T0.0 + 2_000);
    assert_eq!(device.next_wake_at(), Some(closes));
    let later = Millis(T0.0 + 1_000);
    device.enqueue(later, later, session("s2")).unwrap();
    assert!(device.poll(later).is_none(), "still not full, window open");
    let sent = batch(device.poll(closes));
    assert_eq!(
        sent.ops.len(),
        2,
        "both ride together when the window closes"
    );
    device.on_batch_response(closes, &answer(&sent, OpStatus::Applied, None));
    // A full batch goes at once.
    let next = Millis(closes.0 + 10);
    let three = vec![session("s3"), session("s4"), session("s5")];
    device.enqueue_all(next, next, three).unwrap();
    let full = batch(device.poll(next));
    assert_eq!(full.ops.len(), 3);
    device.on_batch_response(next, &answer(&full, OpStatus::Applied, None));
    // A priority-0 op (a delete) goes at once too.
    let delete = Edit {
        entity_type: EntityType::FieldSession,
        entity_id: EntityId("s1".to_owned()),
        action: EditAction::Delete,
    };
    device.enqueue(next, next, delete).unwrap();
    assert_eq!(batch(device.poll(next)).ops.len(), 1);
    // With no window (the default), one ready op goes at once.
    let mut eager = open(SyncConfig::default());
    eager.enqueue(T0, T0, session("s1")).unwrap();
    eager.set_online(T0, true);
    assert_eq!(batch(eager.poll(T0)).ops.len(), 1);
}

#[test]
fn deletes_and_blocking_edits_go_at_priority_0_but_never_overtake_what_they_wait_for() {
    let mut device = open(SyncConfig::default());
    // Applied first: a session, a tag and a storage location the later ops touch.
    let base = vec![
        session("s1"),
        create(EntityType::Tag, "t1", json!({"label": "quartz"})),
        create(
            EntityType::StorageLocation,
            "shelf",
            json!({"name": "shelf"}),
        ),
    ];
    device.enqueue_all(T0, T0, base).unwrap();
    device.set_online(T0, true);
    let sent = batch(device.poll(T0));
    device.on_batch_response(T0, &answer(&sent, OpStatus::Applied, None));
    device.set_online(T0, false);
    // Offline: a find under the session, a tag update, then the session's delete, the
    // tag's delete and a blocking rename of the shelf.
    let find = device.enqueue(T0, T0, find_log("f1", "s1")).unwrap();
    let tag_update = device
        .enqueue(
            T0,
            T0,
            update(EntityType::Tag, "t1", json!({"label": "agate"})),
        )
        .unwrap();
    let delete = |id: &str, t| Edit {
        entity_type: t,
        entity_id: EntityId(id.to_owned()),
        action: EditAction::Delete,
    };
    let session_delete = device
        .enqueue(T0, T0, delete("s1", EntityType::FieldSession))
        .unwrap();
    let tag_delete = device
        .enqueue(T0, T0, delete("t1", EntityType::Tag))
        .unwrap();
    let rename = update(EntityType::StorageLocation, "shelf", json!({"name": "top"}));
    let blocking = device.enqueue_blocking(T0, T0, rename).unwrap();
    let priority = |id: &OpId| {
        let entry = device.queue().find(|e| &e.op.op_id == id).unwrap();
        entry.op.priority.get()
    };
    assert_eq!(priority(&session_delete), 0);
    assert_eq!(priority(&tag_delete), 0);
    assert_eq!(priority(&blocking), 0);
    assert_eq!(priority(&find), 1);
    assert_eq!(priority(&tag_update), 3);
    device.set_online(T0, true);
    let ids = |batch: &crate::op::Batch| -> Vec<OpId> {
        batch.ops.iter().map(|op| op.op_id.clone()).collect()
    };
    let first = batch(device.poll(T0));
    let order = ids(&first);
    // The blocking rename waits for nothing and goes first; each delete still goes after
    // what it must not overtake: the tag's after the earlier update of the same tag (in
    // the same batch: the server checks its version), the session's after the find that
    // names it as parent, and never in the find's batch: the server could not tell that
    // the delete waits for the find, and would apply it even if the find were answered
    // `retry` (explore seed 1399).
    let at = |id: &OpId| order.iter().position(|o| o == id);
    assert_eq!(at(&blocking), Some(0), "{order:?}");
    assert!(at(&tag_update) < at(&tag_delete), "{order:?}");
    assert!(
        at(&find).is_some() && at(&session_delete).is_none(),
        "{order:?}"
    );
    device.on_batch_response(T0, &answer(&first, OpStatus::Applied, None));
    let second = ids(&batch(device.poll(T0)));
    assert_eq!(second, [session_delete]);
}

#[test]
fn a_retry_after_binds_even_when_the_request_had_already_ended() {
    let mut device = open(SyncConfig::default());
    device.set_online(T0, true);
    let op = device.enqueue(T0, T0, session("s1")).unwrap();
    let sent = batch(device.poll(T0));
    assert_eq!(sent.ops[0].op_id, op);
    // Offline with the batch in flight: the request is abandoned, then the server's
    // 503 with a ten-second Retry-After arrives anyway.
    device.set_online(T0, false);
    device.on_overloaded(T0, 10_000);
    device.set_online(T0, true);
    assert!(
        device.poll(T0.plus_ms(9_999)).is_none(),
        "nothing before the wait ends"
    );
    assert!(
        device
            .next_wake_at()
            .is_some_and(|at| at >= T0.plus_ms(10_000))
    );
    let again = batch(device.poll(T0.plus_ms(10_000)));
    assert_eq!(again.ops[0].op_id, op);
    assert_eq!(
        device.queue().next().unwrap().attempts,
        0,
        "no attempt counted"
    );
}

#[test]
fn each_batch_carries_the_devices_queue_and_how_its_requests_have_been_going() {
    let mut device = open(SyncConfig::default());
    device.set_online(T0, true);
    assert!(matches!(device.poll(T0), Some(Request::Pull { .. })));
    // The pull's answer comes 30 ms later: the round trip.
    let nothing = no_changes(None);
    device.on_pull_response(T0.plus_ms(30), &nothing);
    assert_eq!(device.metrics().last_round_trip_ms, Some(30));
    assert!(matches!(
        device.poll(T0.plus_ms(30)),
        Some(Request::Conflicts { .. })
    ));
    device.on_conflicts_response(T0.plus_ms(50), &no_conflicts());
    assert_eq!(device.metrics().last_round_trip_ms, Some(20));
    device.enqueue(T0, T0, session("s1")).unwrap();
    device.enqueue(T0, T0, session("s2")).unwrap();
    let sent = batch(device.poll(T0.plus_ms(100)));
    let report = sent.report.clone().expect("a report");
    assert_eq!((report.pending, report.blocked, report.failed), (2, 0, 0));
    assert_eq!(
        (report.round_trip_ms, report.failed_requests),
        (Some(20), 0)
    );
    assert_eq!(sent.verify_checksum(), Ok(()));
    // Two failures in a row: the next batch says so.
    device.on_request_failed(T0.plus_ms(200), "timeout");
    let retry_at = device.next_wake_at().unwrap();
    let sent = batch(device.poll(retry_at));
    device.on_request_failed(retry_at, "connection reset");
    let retry_at = device.next_wake_at().unwrap();
    let again = batch(device.poll(retry_at));
    assert_eq!(sent.report.unwrap().failed_requests, 1);
    assert_eq!(again.report.unwrap().failed_requests, 2);
}

#[test]
fn an_answer_that_does_not_match_its_checksum_is_taken_as_no_answer() {
    let config = SyncConfig::default();
    let mut server = Server::new(config.clone());
    let ann = UserId("ann".into());
    let mut phone = device("phone", &config);
    phone.enqueue(T0, T0, session("s1")).unwrap();
    phone.set_online(T0, true);
    let sent = batch(phone.poll(T0));
    let mut answer = server.handle_batch(&ann, &sent, T0).unwrap();
    assert!(answer.checksum.is_some(), "the server seals its answers");
    // A bit flipped on the way turned the version the server gave into another one.
    answer.results[0].version = Some(7);
    phone.take_events();
    phone.on_batch_response(T0, &answer);
    assert_eq!(
        status_of(&phone, &sent.ops[0].op_id),
        Some(Status::Pending),
        "not settled on a damaged answer"
    );
    assert!(phone.take_events().iter().any(|e| matches!(
        e,
        Event::RequestFailed { reason, .. } if reason.contains("checksum")
    )));
    // The resend (after its backoff) comes back a duplicate: applied once.
    let later = T0.plus_ms(120_000);
    drive(&mut phone, &mut server, &ann, later);
    assert_eq!(phone.stats().pending, 0);
    assert_eq!(phone.metrics().duplicates, 1);
    // A damaged pull page changes nothing in the replica.
    let mut tablet = device("tablet", &config);
    tablet.set_online(later, true);
    assert!(matches!(tablet.poll(later), Some(Request::Pull { .. })));
    let mut page = server
        .changes(&ann, Some(&DeviceId("tablet".into())), 0, 100, later)
        .unwrap();
    page.changes[0].version = 9;
    tablet.on_pull_response(later, &page);
    assert!(tablet.replica().entities().is_empty());
    // An answer from a server that does not seal (no checksum) is taken as it is.
    page.checksum = None;
    page.changes[0].version = 1;
    let next = tablet.next_wake_at().unwrap();
    assert!(matches!(tablet.poll(next), Some(Request::Pull { .. })));
    tablet.on_pull_response(next, &page);
    assert_eq!(tablet.replica().entities().len(), 1);
}

#[test]
fn the_listing_after_a_pull_is_skipped_only_when_none_wait_and_the_device_shows_none() {
    let listing_follows = |open_conflicts| {
        let mut device = open(SyncConfig::default());
        device.set_online(T0, true);
        assert!(matches!(device.poll(T0), Some(Request::Pull { .. })));
        assert!(device.on_pull_response(T0, &no_changes(open_conflicts)));
        matches!(device.poll(T0), Some(Request::Conflicts { cursor: 0, .. }))
    };
    assert!(
        !listing_follows(Some(0)),
        "none wait, none shown: no listing"
    );
    assert!(listing_follows(Some(1)), "one waits: it is listed");
    assert!(listing_follows(None), "a server that does not say: listed");
}

#[test]
fn the_log_is_compacted_as_ops_settle_and_a_restart_reads_the_compacted_log() {
    // Without compaction the log only grows: every op leaves its enqueue and its status
    // records behind. With it the durable log shrinks whenever it holds more than twice the
    // live records plus the slack, so over enough settled ops it must shrink at least once.
    let config = SyncConfig::default();
    let mut server = Server::new(config.clone());
    let user = UserId("ann".into());
    let mut device = device("d1", &config);
    device.set_online(T0, true);
    let ops = super::coordinator::COMPACT_SLACK_RECORDS + 200;
    let (mut shrank, mut largest) = (0, 0);
    let mut before = device.store().durable_bytes();
    for i in 0..ops {
        let now = T0.plus_ms(1_000 * (i as u64 + 1));
        device.enqueue(now, now, session(&format!("s{i}"))).unwrap();
        drive(&mut device, &mut server, &user, now);
        let after = device.store().durable_bytes();
        if after < before {
            shrank += 1;
        }
        largest = largest.max(after);
        before = after;
    }
    assert!(shrank >= 1, "the log never shrank over {ops} settled ops");
    assert_eq!(
        device.queue().count(),
        0,
        "every op settled and left the queue"
    );
    // What the compaction wrote is a log the device reopens from, with nothing lost.
    let next = device.enqueue(T0, T0, session("after")).unwrap();
    let reopened = crash(device, 0);
    assert_eq!(status_of(&reopened, &next), Some(Status::Pending));
    assert_eq!(reopened.queue().count(), 1);
    assert!(reopened.store().durable_bytes() <= largest);
}

/// The next batch the device sends at `now`, answering the pulls before it with empty pages.
fn next_batch(device: &mut Coordinator<SimStore>, now: Millis) -> crate::op::Batch {
    for _ in 0..5 {
        match device.poll(now) {
            Some(Request::Batch(batch)) => return batch,
            Some(Request::Pull { .. }) => {
                device.on_pull_response(now, &no_changes(None));
            }
            other => panic!("expected a batch or a pull, got {other:?}"),
        }
    }
    panic!("no batch");
}

#[test]
fn the_monitor_counts_every_status_in_its_own_sum() {
    // One op in each status the monitor adds up, so a count that is dropped, doubled or
    // subtracted shows: expired 1, dead-lettered 2, rejected 1, blocked 1, in flight 1.
    let config = SyncConfig {
        max_retries: Some(1),
        queue_ttl_ms: 7 * DAY_MS,
        ..SyncConfig::default()
    };
    let mut device = open(config);
    let expired = device.enqueue(T0, T0, session("s0")).unwrap();
    let t1 = T0.plus_ms(7 * DAY_MS);
    device.poll(t1);
    assert_eq!(status_of(&device, &expired), Some(Status::Expired));
    let dead = device
        .enqueue_all(t1, t1, vec![session("s1"), session("s2")])
        .unwrap();
    device.set_online(t1, true);
    next_batch(&mut device, t1);
    device.on_request_failed(t1, "connection reset");
    for op in &dead {
        assert_eq!(status_of(&device, op), Some(Status::Error));
    }
    let parent = device.enqueue(t1, t1, session("s3")).unwrap();
    let sent = next_batch(&mut device, t1);
    let child = device.enqueue(t1, t1, find_log("f3", "s3")).unwrap();
    device.on_batch_response(t1, &answer(&sent, OpStatus::Rejected, Some("forbidden")));
    assert_eq!(status_of(&device, &parent), Some(Status::Rejected));
    assert_eq!(status_of(&device, &child), Some(Status::Blocked));
    let flying = device.enqueue(t1, t1, session("s4")).unwrap();
    let sent = next_batch(&mut device, t1);
    assert_eq!(sent.ops.len(), 1);
    assert_eq!(status_of(&device, &flying), Some(Status::InFlight));
    let monitor = device.monitor();
    assert!(monitor.online);
    // Waiting on the server or on a person: in flight 1 + blocked 1 + dead-lettered 2.
    assert_eq!(monitor.pending_count, 4);
    // Failed: dead-lettered 2 + rejected 1 + expired 1.
    assert_eq!(monitor.error_count, 4);
    assert_eq!(monitor.conflict_count, 0);
    // The batch tells the server the same: its own op waiting, one blocked, and failed =
    // dead-lettered 2 + rejected 1 + expired 1.
    let report = sent.report.expect("a batch carries its device's report");
    assert_eq!((report.pending, report.blocked, report.failed), (1, 1, 4));
}

#[test]
fn one_call_takes_up_to_its_limit_of_edits_and_refuses_one_more_whole() {
    use super::coordinator::ENQUEUE_ALL_LEN_MAX;
    let tags = |from: usize, n: usize| -> Vec<Edit> {
        (from..from + n)
            .map(|i| create(EntityType::Tag, &format!("t{i}"), json!({"label": "a"})))
            .collect()
    };
    let mut device = open(SyncConfig::default());
    let error = device
        .enqueue_all(T0, T0, tags(0, ENQUEUE_ALL_LEN_MAX + 1))
        .unwrap_err();
    assert_eq!(
        error,
        EnqueueError::TooMany {
            count: ENQUEUE_ALL_LEN_MAX + 1
        }
    );
    assert_eq!(device.queue().count(), 0, "nothing of the refused call");
    let ids = device
        .enqueue_all(T0, T0, tags(0, ENQUEUE_ALL_LEN_MAX))
        .unwrap();
    assert_eq!(ids.len(), ENQUEUE_ALL_LEN_MAX);
    assert_eq!(device.queue().count(), ENQUEUE_ALL_LEN_MAX);
}

#[test]
fn a_recovery_names_its_open_conflicts_in_the_trace_and_leaves_out_a_zero() {
    // Traces written before conflicts outlived a restart had no such field; a recovery with
    // none keeps that shape, one with some must say how many.
    let recovered = |open_conflicts| {
        serde_json::to_value(Event::Recovered {
            ops: 1,
            open_conflicts,
            torn_tail_bytes: 0,
        })
        .unwrap()
    };
    assert_eq!(
        recovered(2),
        json!({"event": "recovered", "ops": 1, "open_conflicts": 2, "torn_tail_bytes": 0})
    );
    assert_eq!(
        recovered(0),
        json!({"event": "recovered", "ops": 1, "torn_tail_bytes": 0})
    );
}

#[test]
fn the_offline_status_follows_the_network_in_every_view() {
    let mut device = open(SyncConfig::default());
    let views = |d: &Coordinator<SimStore>| (d.is_online(), d.state().online, d.monitor().online);
    assert_eq!(
        views(&device),
        (false, false, false),
        "a device starts offline"
    );
    device.set_online(T0, true);
    assert_eq!(views(&device), (true, true, true));
    device.set_online(T0, false);
    assert_eq!(views(&device), (false, false, false));
}
