//! What happens between steps: a scheduled action applied (an edit, a fault, a crash, a
//! restart), and the heal that starts the liveness phase.

use super::{Devices, hostile};
use crate::device::{DeviceCtx, Link};
use crate::spec::Action;
use crate::trace::TraceEvent;
use rockhound_engine::checksum::sha256_hex;
use rockhound_engine::client::Coordinator;
use rockhound_engine::client::coordinator::{ActionError, Edit, EditAction, EnqueueError};
use rockhound_engine::client::queue::Status;
use rockhound_engine::client::record::Record;
use rockhound_engine::client::store::{decode_log, encode_frame};
use rockhound_engine::ids::{ConflictId, EntityId, OpId};
use rockhound_engine::server::wire::Resolution;
use rockhound_engine::server::{AnyStore, Capacity, Server};
use rockhound_engine::testing::sim_store::SimStore;
use rockhound_engine::{DeviceId, EntityType, Millis, OpKind, SyncConfig, delta};

/// The scripted step an edit amounts to.
pub(super) fn edit_action(device: &str, edit: &Edit, blocking: bool) -> Action {
    let device = device.to_owned();
    let entity_type = edit.entity_type;
    let id = edit.entity_id.0.clone();
    match &edit.action {
        EditAction::Create(fields) => {
            let mut fields = fields.clone();
            fields.remove("id");
            Action::Create {
                device,
                entity_type,
                id,
                fields,
                blocking,
            }
        }
        EditAction::Update(fields) => Action::Update {
            device,
            entity_type,
            id,
            fields: fields.clone(),
            blocking,
        },
        EditAction::Delete => Action::Delete {
            device,
            entity_type,
            id,
        },
    }
}

/// The edit a create, update or delete step makes, and whether the user waits on it (the
/// inverse of [`edit_action`]).
fn step_edit(action: &Action) -> Option<(Edit, bool)> {
    let (entity_type, id, edit, blocking) = match action {
        Action::Create {
            entity_type,
            id,
            fields,
            blocking,
            ..
        } => (
            entity_type,
            id,
            EditAction::Create(fields.clone()),
            *blocking,
        ),
        Action::Update {
            entity_type,
            id,
            fields,
            blocking,
            ..
        } => (
            entity_type,
            id,
            EditAction::Update(fields.clone()),
            *blocking,
        ),
        Action::Delete {
            entity_type, id, ..
        } => (entity_type, id, EditAction::Delete, false),
        _ => return None,
    };
    let edit = Edit {
        entity_type: *entity_type,
        entity_id: EntityId(id.clone()),
        action: edit,
    };
    Some((edit, blocking))
}

/// The entities a device's user can see there: its local view.
pub(super) fn visible_entities(ctx: &DeviceCtx) -> Vec<(EntityType, EntityId)> {
    let state = ctx.state.borrow();
    let Some(coordinator) = state.coordinator.as_ref() else {
        return Vec::new();
    };
    let mut keys: Vec<(EntityType, EntityId)> = coordinator
        .replica()
        .entities()
        .keys()
        .cloned()
        .chain(
            coordinator
                .queue()
                .filter(|e| e.op.kind == OpKind::Create)
                .map(|e| e.entity()),
        )
        .collect();
    keys.sort();
    keys.dedup();
    keys.retain(|(t, id)| coordinator.entity_exists(*t, id));
    keys
}

/// Enqueues a user's edit; an update in the seed's form, as the change from the entity's
/// local view to that view with the edit's fields (`None`: it changes nothing).
fn enqueue_edit(
    coordinator: &mut Coordinator<SimStore>,
    now: Millis,
    wall: Millis,
    edit: Edit,
    blocking: bool,
) -> Result<Option<OpId>, EnqueueError> {
    if blocking {
        let op_id = coordinator.enqueue_blocking(now, wall, edit)?;
        rockhound_engine::coverage::hit("sim.enqueue.blocking");
        return Ok(Some(op_id));
    }
    if let EditAction::Update(fields) = &edit.action
        && let Some(original) = coordinator.entity(edit.entity_type, &edit.entity_id)
    {
        let modified = delta::patched(&original, &serde_json::Value::Object(fields.clone()));
        let key = (edit.entity_type, edit.entity_id.clone());
        return coordinator.enqueue_change(now, wall, key, &original, &modified);
    }
    coordinator.enqueue(now, wall, edit).map(Some)
}

/// Enqueues `edit` on the device (at priority 0 when the user waits on it) and traces
/// what came of it.
pub(super) fn enqueue(ctx: &DeviceCtx, now: Millis, edit: Edit, blocking: bool) {
    let t_ms = now.0 - ctx.epoch_ms;
    let entity_type = edit.entity_type;
    let entity_id = edit.entity_id.clone();
    let durable_before = {
        let state = ctx.state.borrow();
        state
            .coordinator
            .as_ref()
            .map_or(0, |c| c.store().durable_bytes())
    };
    let result = {
        let mut state = ctx.state.borrow_mut();
        let wall = state.wall(now);
        match state.coordinator.as_mut() {
            Some(coordinator) => enqueue_edit(coordinator, now, wall, edit, blocking)
                .map_err(|e| e.to_string())
                .map(|op_id| {
                    op_id.map(|op_id| {
                        coordinator
                            .queued(&op_id)
                            .expect("just enqueued")
                            .op
                            .clone()
                    })
                }),
            None => Err("the device is down".to_owned()),
        }
    };
    ctx.flush(now);
    let host = ctx.state.borrow().name.clone();
    // An update that changes nothing enqueues nothing, and says nothing.
    let Some(result) = result.transpose() else {
        return;
    };
    if let Ok(op) = &result
        && !durably_enqueued(ctx, &op.op_id, durable_before)
    {
        let host = ctx.state.borrow().name.clone();
        let event = TraceEvent::NotDurable {
            op_id: op.op_id.clone(),
        };
        ctx.trace.borrow_mut().record(t_ms, &host, event);
    }
    if let Ok(op) = &result {
        let mut state = ctx.state.borrow_mut();
        let depth = 1 + op
            .depends_on
            .iter()
            .map(|d| state.chain_depth.get(d).copied().unwrap_or(1))
            .max()
            .unwrap_or(0);
        state.chain_depth.insert(op.op_id.clone(), depth);
        if depth >= 3 {
            rockhound_engine::coverage::hit("sim.dependency_chain_3");
        }
    }
    let event = match result {
        Ok(op) => TraceEvent::Sealed {
            payload_sha256: sha256_hex(&rockhound_engine::checksum::canonical_json(&op.payload)),
            op_id: op.op_id,
            depends_on: op.depends_on,
        },
        Err(error) => TraceEvent::Refused {
            entity_type,
            entity_id,
            error,
        },
    };
    ctx.trace.borrow_mut().record(t_ms, &host, event);
    ctx.state.borrow().notify.notify_one();
}

// Long on purpose: one arm per scenario action (`spec::Action`), each a few lines; split, the
// dispatch would hide which actions exist.
pub(super) fn apply(
    sim: &mut turmoil::Sim<'_>,
    devices: &Devices,
    action: &Action,
    now: Millis,
    server_up: &mut bool,
    config: &SyncConfig,
    server: &parking_lot::Mutex<Server<AnyStore>>,
) {
    let ctx = action.device().map(|d| &devices.by_name[d]);
    match action {
        Action::CrashServer => {
            if *server_up {
                sim.crash("server");
                server.lock().lose_memory();
                *server_up = false;
            }
            return;
        }
        Action::RestartServer => {
            if !*server_up {
                sim.bounce("server");
                *server_up = true;
            }
            return;
        }
        Action::CleanupServer => {
            server
                .lock()
                .cleanup(now)
                .expect("the simulated server's store never fails a write");
            return;
        }
        Action::ServerRoom { entities } => {
            let mut server = server.lock();
            let held = server.tables().entities.len();
            server.set_capacity(Capacity {
                entities: entities.map_or(Capacity::default().entities, |room| held + room),
                ..Capacity::default()
            });
            return;
        }
        _ => {}
    }
    let ctx = ctx.expect("every other step names a device");
    match action {
        Action::Offline { .. } | Action::Online { .. } => {
            let online = matches!(action, Action::Online { .. });
            let mut state = ctx.state.borrow_mut();
            state.link.offline = !online;
            if let Some(c) = state.coordinator.as_mut() {
                c.set_online(now, online);
            }
        }
        Action::Partition { .. } => ctx.state.borrow_mut().link.partitioned = true,
        Action::Heal { .. } => ctx.state.borrow_mut().link.partitioned = false,
        Action::Hold { .. } => ctx.state.borrow_mut().link.held = true,
        Action::Release { .. } => ctx.state.borrow_mut().link.held = false,
        Action::Crash { torn_bytes, .. } => crash(ctx, now, *torn_bytes),
        Action::Restart {
            clock_offset_ms, ..
        } => {
            let down = ctx.state.borrow().parked_store.is_some();
            if let (true, Some(offset_ms)) = (down, clock_offset_ms) {
                rockhound_engine::coverage::hit("sim.restart.clock_reset");
                ctx.state.borrow_mut().wall_offset_ms = *offset_ms;
            }
            restart(ctx, now, config);
        }
        Action::Skew { offset_ms, .. } => ctx.state.borrow_mut().wall_offset_ms = *offset_ms,
        Action::Create { .. } | Action::Update { .. } | Action::Delete { .. } => {
            let (edit, blocking) = step_edit(action).expect("an edit step");
            enqueue(ctx, now, edit, blocking);
        }
        Action::Sync { .. } => {
            if let Some(c) = ctx.state.borrow_mut().coordinator.as_mut() {
                c.sync_now(now);
            }
        }
        Action::RetryDead { .. } => {
            if let Some(c) = ctx.state.borrow_mut().coordinator.as_mut() {
                let dead: Vec<_> = c
                    .queue()
                    .filter(|e| e.status == Status::Error)
                    .map(|e| e.op.op_id.clone())
                    .collect();
                for op_id in dead {
                    // A disk fault may refuse the retry (its record cannot be stored): the
                    // op stays dead-lettered, as on a real device, and the coordinator
                    // reports the store failure.
                    if let Err(error) = c.retry(now, &op_id) {
                        assert!(
                            matches!(error, ActionError::Store(_)),
                            "a dead-lettered op can be retried: {error}"
                        );
                    }
                }
            }
        }
        Action::Resolve { resolution, .. } => {
            let mut writes = Vec::new();
            if let Some(c) = ctx.state.borrow_mut().coordinator.as_mut() {
                let resolution = *resolution;
                let open: Vec<(ConflictId, Option<serde_json::Value>)> = c
                    .conflicts()
                    .filter(|c| c.open)
                    .map(|conflict| {
                        let entity = (resolution == Resolution::Custom).then(|| {
                            let entity =
                                custom_entity(c, conflict.entity_type, &conflict.entity_id);
                            let key = (conflict.entity_type, conflict.entity_id.clone());
                            writes.push((key.0, key.1, entity.clone()));
                            entity
                        });
                        (conflict.conflict_id.clone(), entity)
                    })
                    .collect();
                for (conflict_id, entity) in open {
                    if let Err(error) = c.resolve_conflict(&conflict_id, resolution, entity) {
                        assert!(
                            matches!(error, ActionError::Store(_)),
                            "an open conflict resolves: {error}"
                        );
                    }
                }
            }
            if !writes.is_empty() {
                ctx.record(now, TraceEvent::Wrote { writes });
            }
        }
        Action::Replay { .. } => ctx.state.borrow_mut().pending_replays += 1,
        Action::Corrupt { .. } => ctx.state.borrow_mut().link.corrupt_next = true,
        Action::CutAnswer { .. } => ctx.state.borrow_mut().link.cut_answer_next = true,
        Action::DamageAnswer { .. } => ctx.state.borrow_mut().link.damage_answer_next = true,
        Action::Duplicate { .. } => ctx.state.borrow_mut().link.duplicate_next = true,
        Action::Forge { victim_device, .. } => {
            let victim = &devices.by_name[victim_device];
            let forged = hostile::forgeries(ctx, victim, now);
            ctx.state.borrow_mut().pending_hostile.extend(forged);
        }
        Action::Hostile { probe, .. } => {
            let count = {
                let mut state = ctx.state.borrow_mut();
                state.hostile_count += 1;
                state.hostile_count
            };
            let requests = hostile::requests(ctx, *probe, count, now);
            ctx.state.borrow_mut().pending_hostile.push(requests);
        }
        Action::Discard { .. } => {
            if let Some(c) = ctx.state.borrow_mut().coordinator.as_mut() {
                let failed: Vec<_> = c
                    .queue()
                    .filter(|e| e.status.is_failed() || e.status == Status::Blocked)
                    .map(|e| e.op.op_id.clone())
                    .collect();
                for op_id in failed {
                    // As with a retry, a disk fault may refuse the record: the op stays.
                    if let Err(error) = c.discard(&op_id) {
                        assert!(
                            matches!(error, ActionError::Store(_)),
                            "a failed op can be discarded: {error}"
                        );
                    }
                }
            }
        }
        Action::Disk {
            fail_sync,
            capacity_bytes,
            ..
        } => {
            let mut state = ctx.state.borrow_mut();
            let state = &mut *state;
            let store = match state.coordinator.as_mut() {
                Some(c) => Some(c.store_mut()),
                None => state.parked_store.as_mut(),
            };
            if let Some(store) = store {
                store.fail_sync = *fail_sync;
                store.capacity_bytes = capacity_bytes.map(|extra| store_len(store) + extra);
            }
        }
        Action::CrashServer
        | Action::RestartServer
        | Action::CrashServerMidBatch { .. }
        | Action::Overload { .. }
        | Action::CleanupServer
        | Action::ServerRoom { .. } => unreachable!("handled above"),
    }
    ctx.state.borrow().notify.notify_one();
    ctx.flush(now);
}

/// The entity a person writes by hand to settle a conflict (`custom`): the device's own
/// copy with a note, or only the id when the device holds no live copy (the server then
/// judges it like any custom entity, and may refuse it).
fn custom_entity(
    c: &Coordinator<SimStore>,
    entity_type: EntityType,
    entity_id: &EntityId,
) -> serde_json::Value {
    let mut entity = c
        .replica()
        .get(entity_type, entity_id)
        .filter(|copy| !copy.deleted)
        .map_or_else(|| serde_json::json!({}), |copy| copy.entity.clone());
    if let Some(fields) = entity.as_object_mut() {
        fields.insert("id".into(), entity_id.0.clone().into());
        fields.insert("resolved_by_hand".into(), true.into());
    }
    entity
}

pub(super) fn store_len(store: &SimStore) -> usize {
    store.durable_bytes()
}

pub(super) fn crash(ctx: &DeviceCtx, now: Millis, torn_bytes: usize) {
    let t_ms = now.0 - ctx.epoch_ms;
    ctx.flush(now);
    let mut state = ctx.state.borrow_mut();
    let Some(coordinator) = state.coordinator.take() else {
        return;
    };
    if coordinator.stats().in_flight > 0 {
        rockhound_engine::coverage::hit("sim.crash.batch_in_flight");
    }
    let mut store = coordinator.into_store();
    let mut torn_bytes = torn_bytes;
    if torn_bytes > 0 {
        // The process died while appending a record: part of its frame reached the disk.
        // A torn write leaves less than the whole frame (a whole one would be a complete,
        // if foreign, record: a state no real crash produces), so the count is cut to one
        // byte less than the frame; the trace records the bytes actually left.
        let frame = encode_frame(format!("{{\"record\":\"in progress at {}\"}}", now.0).as_bytes())
            .expect("a small record frames");
        torn_bytes = torn_bytes.min(frame.len() - 1);
        let _ = store.write(&frame[..torn_bytes]);
        store.torn_bytes_on_crash = torn_bytes;
    } else {
        store.torn_bytes_on_crash = 0;
    }
    store.crash();
    state.parked_store = Some(store);
    let host = state.name.clone();
    drop(state);
    ctx.trace
        .borrow_mut()
        .record(t_ms, &host, TraceEvent::Crashed { torn_bytes });
}

pub(super) fn restart(ctx: &DeviceCtx, now: Millis, config: &SyncConfig) {
    let t_ms = now.0 - ctx.epoch_ms;
    let mut state = ctx.state.borrow_mut();
    let Some(store) = state.parked_store.take() else {
        return;
    };
    state.incarnation += 1;
    let incarnation = state.incarnation;
    let seed = state.jitter_seed ^ incarnation;
    let result = Coordinator::open(
        DeviceId(state.name.clone()),
        incarnation,
        config.clone(),
        store,
        seed,
        now,
    );
    let error = match result {
        Ok(mut coordinator) => {
            coordinator.set_online(now, !state.link.offline);
            state.coordinator = Some(coordinator);
            None
        }
        Err(failed) => {
            // The store stays parked, intact, for the next restart (or the heal).
            state.parked_store = Some(failed.store);
            Some(failed.error.to_string())
        }
    };
    let host = state.name.clone();
    drop(state);
    ctx.trace
        .borrow_mut()
        .record(t_ms, &host, TraceEvent::Restarted { incarnation, error });
    ctx.flush(now);
}

/// The liveness phase begins: every fault ends, every device is up and online.
pub(super) fn heal(
    sim: &mut turmoil::Sim<'_>,
    devices: &Devices,
    now: Millis,
    server_up: &mut bool,
    config: &SyncConfig,
    server: &parking_lot::Mutex<Server<AnyStore>>,
) {
    if !*server_up {
        sim.bounce("server");
        *server_up = true;
    }
    server.lock().set_capacity(Capacity::default());
    for ctx in devices.by_name.values() {
        {
            let mut state = ctx.state.borrow_mut();
            state.link = Link::default();
            if let Some(store) = state.parked_store.as_mut() {
                store.fail_sync = false;
                store.capacity_bytes = None;
            }
        }
        restart(ctx, now, config);
        let mut state = ctx.state.borrow_mut();
        if let Some(c) = state.coordinator.as_mut() {
            c.store_mut().fail_sync = false;
            c.store_mut().capacity_bytes = None;
            c.set_online(now, true);
            c.sync_now(now);
        }
        state.notify.notify_one();
        drop(state);
        ctx.flush(now);
    }
}

/// Whether the durable image of the device's store holds the enqueue record of `op_id`:
/// read from the simulated disk's bytes, not from what the coordinator says. Only the bytes
/// made durable since `before` (a frame boundary: the image holds whole frames) are
/// decoded, unless the image shrank (a compaction rewrote it), when all of it is.
fn durably_enqueued(ctx: &DeviceCtx, op_id: &OpId, before: usize) -> bool {
    let state = ctx.state.borrow();
    let Some(coordinator) = state.coordinator.as_ref() else {
        return false;
    };
    let image = coordinator.store().durable_image();
    let new = image
        .get(before..)
        .filter(|tail| !tail.is_empty())
        .unwrap_or(image);
    let Ok((recovery, _)) = decode_log(new) else {
        return false;
    };
    recovery.records.iter().any(|bytes| {
        matches!(Record::decode(bytes), Ok(Record::Enqueued { ops })
            if ops.iter().any(|enqueued| &enqueued.op.op_id == op_id))
    })
}
