//! One simulated run: builds the turmoil world from a [`RunSpec`] and a seed, drives it step
//! by step (applying scheduled user actions and faults between steps), heals everything for
//! the liveness phase, snapshots the end state into the trace and runs the checkers.
//!
//! The seed is split into named streams in a fixed order: turmoil, workload schedule,
//! faults, link rates, workload choices, then per device (in declaration order) the
//! coordinator's jitter and the link's fault draws. Adding a stream at the end keeps old
//! seeds' meaning for everything before it.

use crate::checkers::{self, Verdict};
use crate::device::{self, DeviceCtx, DeviceState, Link, sim_now};
use crate::net::SimListener;
use crate::spec::{Action, RunSpec, SpecError};
use crate::summary::Summary;
use crate::trace::{EntitySnapshot, Phase, Trace, TraceEvent};
use crate::workload::{self, Planned};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rockhound_engine::checksum::sha256_hex;
use rockhound_engine::client::Coordinator;
use rockhound_engine::client::coordinator::{Edit, EditAction};
use rockhound_engine::client::queue::Status;
use rockhound_engine::client::store::encode_frame;
use rockhound_engine::ids::{ConflictId, EntityId};
use rockhound_engine::server::Server;
use rockhound_engine::testing::sim_store::SimStore;
use rockhound_engine::{
    Batch, BatchId, DeviceId, EntityType, Millis, Op, OpKind, SyncConfig, UserId,
};
use rockhound_io::http::{self, AppState, Clock};
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::Notify;

/// How often the liveness phase checks whether everything converged, in simulated ms.
pub const CONVERGENCE_CHECK_MS: u64 = 1_000;

/// What one run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The seed.
    pub seed: u64,
    /// The trace.
    pub trace: Trace,
    /// Its SHA-256.
    pub digest: String,
    /// Per checker: held or violated.
    pub verdicts: Vec<Verdict>,
    /// Counts.
    pub summary: Summary,
    /// Expectations of the scenario that did not hold (counts, values).
    pub unmet: Vec<String>,
}

impl RunOutcome {
    /// Whether every checker held and every expectation was met (for a negative scenario:
    /// whether the expected violation was reported).
    pub fn passed(&self, spec: &RunSpec) -> bool {
        checkers::passed(spec, &self.verdicts, &self.unmet)
    }
}

struct Devices {
    by_name: BTreeMap<String, DeviceCtx>,
    counters: BTreeMap<String, u64>,
}

/// Runs `spec` with `seed` and checks it (every checker but `determinism`, which needs a
/// second run: see [`crate::runner`]).
pub fn run(spec: &RunSpec, seed: u64) -> Result<RunOutcome, SpecError> {
    let config = spec.validate()?;
    let mut master = ChaCha8Rng::seed_from_u64(seed);
    let turmoil_seed: u64 = master.random();
    let mut schedule_rng = ChaCha8Rng::seed_from_u64(master.random());
    let mut fault_rng = ChaCha8Rng::seed_from_u64(master.random());
    let mut rate_rng = ChaCha8Rng::seed_from_u64(master.random());
    let mut choice_rng = ChaCha8Rng::seed_from_u64(master.random());
    let epoch_ms = spec.sim.epoch_ms;
    let tick_ms = spec.sim.tick_ms;
    let run_ms = spec.sim.safety_ms + spec.sim.liveness_ms;

    let trace = Rc::new(RefCell::new(Trace::default()));
    // Links: rates from the network spec, plus the fault spec's (drawn per seed in swarm).
    let (loss, duplicate, corrupt) = workload::link_rates(spec.faults.as_ref(), &mut rate_rng);
    let link = Link {
        loss_rate: spec.network.loss_rate.max(loss),
        duplicate_rate: spec.network.duplicate_rate.max(duplicate),
        corrupt_rate: spec.network.corrupt_rate.max(corrupt),
        ..Link::default()
    };
    trace.borrow_mut().record(
        0,
        "world",
        TraceEvent::Run {
            seed,
            scenario: spec.name.clone(),
            devices: spec.devices(),
            config: Box::new(config.clone()),
            epoch_ms,
            planted: spec.planted,
            link_rates: (link.loss_rate, link.duplicate_rate, link.corrupt_rate),
        },
    );

    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(turmoil_seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(epoch_ms))
        .tick_duration(Duration::from_millis(tick_ms))
        .simulation_duration(Duration::from_millis(run_ms + 60_000))
        .min_message_latency(Duration::from_millis(spec.network.latency_ms_min))
        .max_message_latency(Duration::from_millis(spec.network.latency_ms_max))
        .tcp_capacity(1_024);
    let mut sim = builder.build();

    // The server: its database (the sans-IO server) outlives crashes of its process.
    let server = Server::new(config.clone());
    let tokens: BTreeMap<String, UserId> = spec
        .users
        .iter()
        .map(|u| (format!("token-{}", u.name), UserId(u.name.clone())))
        .collect();
    let clock: Clock = Arc::new(move || sim_now(epoch_ms));
    let app = AppState::new(server, tokens, clock);
    let server_state: Arc<parking_lot::Mutex<Server>> = app.server.clone();
    sim.host("server", move || {
        let app = app.clone();
        async move {
            let listener = SimListener::bind("0.0.0.0:80").await?;
            crate::net::serve(listener, http::router(app)).await?;
            Ok(())
        }
    });

    // Devices, grouped onto hosts.
    let mut devices = Devices {
        by_name: BTreeMap::new(),
        counters: BTreeMap::new(),
    };
    let device_list = spec.devices();
    for (user, name) in &device_list {
        let jitter_seed: u64 = master.random();
        let link_seed: u64 = master.random();
        let mut store = SimStore::new();
        store.acks_before_fsync = spec.planted.store.acks_before_fsync;
        let mut coordinator = Coordinator::open(
            DeviceId(name.clone()),
            0,
            config.clone(),
            store,
            jitter_seed,
            Millis(epoch_ms),
        )
        .expect("an empty store opens");
        coordinator.set_online(Millis(epoch_ms), true);
        let state = DeviceState {
            name: name.clone(),
            user: user.clone(),
            token: format!("token-{user}"),
            coordinator: Some(coordinator),
            parked_store: None,
            incarnation: 0,
            link: link.clone(),
            wall_offset_ms: 0,
            last_batch: None,
            rng: ChaCha8Rng::seed_from_u64(link_seed),
            notify: Rc::new(Notify::new()),
            pending_replays: 0,
            pending_forgeries: Vec::new(),
            jitter_seed,
            planted: spec.planted,
        };
        let ctx = DeviceCtx {
            state: Rc::new(RefCell::new(state)),
            trace: trace.clone(),
            epoch_ms,
        };
        ctx.flush(Millis(epoch_ms));
        devices.by_name.insert(name.clone(), ctx);
        devices.counters.insert(name.clone(), 0);
    }
    for (index, group) in device_list.chunks(spec.sim.devices_per_host).enumerate() {
        let host = if spec.sim.devices_per_host == 1 {
            group[0].1.clone()
        } else {
            format!("devices-{index}")
        };
        let contexts: Vec<DeviceCtx> = group
            .iter()
            .map(|(_, d)| devices.by_name[d].clone())
            .collect();
        sim.host(host.as_str(), move || {
            let contexts = contexts.clone();
            async move {
                for ctx in contexts {
                    tokio::task::spawn_local(device::run(ctx));
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }

    let schedule = workload::schedule(spec, &mut schedule_rng, &mut fault_rng);
    let mut next = 0;
    let mut liveness_started_ms = None;
    let mut convergence_ms = None;
    let mut server_up = true;
    trace.borrow_mut().record(
        0,
        "world",
        TraceEvent::Phase {
            phase: Phase::Safety,
        },
    );
    loop {
        let t_ms = u64::try_from(sim.elapsed().as_millis()).expect("runs are short");
        let now = Millis(epoch_ms + t_ms);
        while next < schedule.len() && schedule[next].0 <= t_ms && liveness_started_ms.is_none() {
            let planned = schedule[next].2.clone();
            next += 1;
            match planned {
                Planned::Step(action) => {
                    trace.borrow_mut().record(
                        t_ms,
                        "world",
                        TraceEvent::Step {
                            action: action.clone(),
                        },
                    );
                    apply(&mut sim, &devices, &action, now, &mut server_up, &config);
                }
                Planned::UserAction { device } => {
                    let ctx = &devices.by_name[&device];
                    let counter = devices
                        .counters
                        .get_mut(&device)
                        .expect("every device has a counter");
                    let visible = visible_entities(ctx);
                    let edit = workload::user_edit(
                        &device,
                        counter,
                        &visible,
                        &mut choice_rng,
                        spec.planted.sim.nondeterministic_ids,
                    );
                    // Recorded as the step it amounts to, so that `export` can write the run
                    // out as explicit steps.
                    let action = edit_action(&device, &edit);
                    trace
                        .borrow_mut()
                        .record(t_ms, "world", TraceEvent::Step { action });
                    enqueue(ctx, now, edit);
                }
            }
        }
        if liveness_started_ms.is_none() && t_ms >= spec.sim.safety_ms {
            liveness_started_ms = Some(t_ms);
            trace.borrow_mut().record(
                t_ms,
                "world",
                TraceEvent::Phase {
                    phase: Phase::Liveness,
                },
            );
            heal(&mut sim, &devices, now, &mut server_up, &config);
        }
        if let Some(started) = liveness_started_ms {
            if (t_ms - started) % CONVERGENCE_CHECK_MS < tick_ms
                && converged(&devices, &server_state)
            {
                convergence_ms = Some(t_ms - started);
                trace
                    .borrow_mut()
                    .record(t_ms, "world", TraceEvent::Converged);
                break;
            }
        }
        if t_ms >= run_ms {
            break;
        }
        if let Err(error) = sim.step() {
            return Err(SpecError::new(format!(
                "the simulation failed at {t_ms} ms: {error}"
            )));
        }
    }
    let end_ms = u64::try_from(sim.elapsed().as_millis()).expect("runs are short");
    snapshot(&devices, &server_state, &trace, end_ms);
    trace.borrow_mut().record(end_ms, "world", TraceEvent::End);
    drop(sim);
    drop(devices);
    let trace = Rc::try_unwrap(trace)
        .map_err(|_| SpecError::new("the trace is still shared after the run"))?
        .into_inner();
    if trace.overflowed() {
        return Err(SpecError::new(format!(
            "the trace reached its limit of {} lines; shorten the scenario",
            crate::trace::TRACE_LINE_COUNT_MAX
        )));
    }
    let digest = trace.digest();
    let verdicts = checkers::check(&trace.lines, spec, seed);
    let mut summary = crate::summary::summarize(&trace, spec.devices().len());
    summary.convergence_ms = convergence_ms;
    summary.simulated_ms = end_ms;
    let unmet = checkers::expectations(&trace.lines, spec, &summary);
    Ok(RunOutcome {
        seed,
        trace,
        digest,
        verdicts,
        summary,
        unmet,
    })
}

/// The scripted step an edit amounts to.
fn edit_action(device: &str, edit: &Edit) -> Action {
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
            }
        }
        EditAction::Update(fields) => Action::Update {
            device,
            entity_type,
            id,
            fields: fields.clone(),
        },
        EditAction::Delete => Action::Delete {
            device,
            entity_type,
            id,
        },
    }
}

/// The entities a device's user can see there: its local view.
fn visible_entities(ctx: &DeviceCtx) -> Vec<(EntityType, EntityId)> {
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

fn enqueue(ctx: &DeviceCtx, now: Millis, edit: Edit) {
    let t_ms = now.0 - ctx.epoch_ms;
    let entity_type = edit.entity_type;
    let entity_id = edit.entity_id.clone();
    let result = {
        let mut state = ctx.state.borrow_mut();
        let wall = state.wall(now);
        match state.coordinator.as_mut() {
            Some(coordinator) => coordinator
                .enqueue(now, wall, edit)
                .map_err(|e| e.to_string())
                .map(|op_id| {
                    coordinator
                        .queue()
                        .find(|e| e.op.op_id == op_id)
                        .expect("just enqueued")
                        .op
                        .clone()
                }),
            None => Err("the device is down".to_owned()),
        }
    };
    ctx.flush(now);
    let host = ctx.state.borrow().name.clone();
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

fn apply(
    sim: &mut turmoil::Sim<'_>,
    devices: &Devices,
    action: &Action,
    now: Millis,
    server_up: &mut bool,
    config: &SyncConfig,
) {
    let ctx = action.device().map(|d| &devices.by_name[d]);
    match action {
        Action::CrashServer => {
            if *server_up {
                sim.crash("server");
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
        Action::Restart { .. } => restart(ctx, now, config),
        Action::Skew { offset_ms, .. } => ctx.state.borrow_mut().wall_offset_ms = *offset_ms,
        Action::Create {
            entity_type,
            id,
            fields,
            ..
        } => enqueue(
            ctx,
            now,
            Edit {
                entity_type: *entity_type,
                entity_id: EntityId(id.clone()),
                action: EditAction::Create(fields.clone()),
            },
        ),
        Action::Update {
            entity_type,
            id,
            fields,
            ..
        } => enqueue(
            ctx,
            now,
            Edit {
                entity_type: *entity_type,
                entity_id: EntityId(id.clone()),
                action: EditAction::Update(fields.clone()),
            },
        ),
        Action::Delete {
            entity_type, id, ..
        } => enqueue(
            ctx,
            now,
            Edit {
                entity_type: *entity_type,
                entity_id: EntityId(id.clone()),
                action: EditAction::Delete,
            },
        ),
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
                    c.retry(now, &op_id)
                        .expect("a dead-lettered op can be retried");
                }
            }
        }
        Action::Resolve { resolution, .. } => {
            if let Some(c) = ctx.state.borrow_mut().coordinator.as_mut() {
                let resolution = *resolution;
                let open: Vec<ConflictId> = c
                    .conflicts()
                    .filter(|c| c.open)
                    .map(|c| c.conflict_id.clone())
                    .collect();
                for conflict_id in open {
                    c.resolve_conflict(&conflict_id, resolution, None)
                        .expect("open conflicts resolve");
                }
            }
        }
        Action::Replay { .. } => ctx.state.borrow_mut().pending_replays += 1,
        Action::Corrupt { .. } => ctx.state.borrow_mut().link.corrupt_next = true,
        Action::Duplicate { .. } => ctx.state.borrow_mut().link.duplicate_next = true,
        Action::Forge { victim_device, .. } => {
            let victim = &devices.by_name[victim_device];
            let forged = forgeries(ctx, victim, now);
            ctx.state.borrow_mut().pending_forgeries.extend(forged);
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
        Action::CrashServer | Action::RestartServer => unreachable!("handled above"),
    }
    ctx.state.borrow().notify.notify_one();
    ctx.flush(now);
}

fn store_len(store: &SimStore) -> usize {
    store.durable_bytes()
}

/// Two forged requests from `ctx` with its own token: a batch claiming the victim's device,
/// and a batch from its own device updating an entity of the victim's user.
fn forgeries(ctx: &DeviceCtx, victim: &DeviceCtx, now: Millis) -> Vec<Vec<u8>> {
    let (victim_device, target) = {
        let state = victim.state.borrow();
        let target = state.coordinator.as_ref().and_then(|c| {
            c.replica()
                .entities()
                .iter()
                .find(|(_, e)| !e.deleted)
                .map(|(key, e)| (key.clone(), e.version))
        });
        (state.name.clone(), target)
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
        op_id: rockhound_engine::OpId(format!("{own}:forged:{}", now.0)),
        idempotency_key: rockhound_engine::IdempotencyKey(format!("{own}:forged:{}:key", now.0)),
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
    [victim_device, own]
        .into_iter()
        .enumerate()
        .map(|(n, device)| {
            let batch = Batch::new(
                BatchId(format!("forged-{n}-{}", now.0)),
                DeviceId(device),
                vec![op.clone()],
            );
            serde_json::to_vec(&batch).expect("batches serialize")
        })
        .collect()
}

fn crash(ctx: &DeviceCtx, now: Millis, torn_bytes: usize) {
    let t_ms = now.0 - ctx.epoch_ms;
    ctx.flush(now);
    let mut state = ctx.state.borrow_mut();
    let Some(coordinator) = state.coordinator.take() else {
        return;
    };
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

fn restart(ctx: &DeviceCtx, now: Millis, config: &SyncConfig) {
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
fn heal(
    sim: &mut turmoil::Sim<'_>,
    devices: &Devices,
    now: Millis,
    server_up: &mut bool,
    config: &SyncConfig,
) {
    if !*server_up {
        sim.bounce("server");
        *server_up = true;
    }
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

/// An entity's (version, deleted, fields) as the convergence test compares them.
type Snapshot = (u64, bool, serde_json::Value);

/// Whether every device is idle with nothing left to send and a replica equal to the
/// server's state for its user.
fn converged(devices: &Devices, server: &Arc<parking_lot::Mutex<Server>>) -> bool {
    let server = server.lock();
    let mut by_user: BTreeMap<&UserId, BTreeMap<(EntityType, EntityId), Snapshot>> =
        BTreeMap::new();
    for ((entity_type, entity_id), stored) in &server.tables().entities {
        let value = if stored.state.deleted {
            serde_json::Value::Null
        } else {
            stored.state.to_value()
        };
        by_user.entry(&stored.owner).or_default().insert(
            (*entity_type, entity_id.clone()),
            (stored.state.version, stored.state.deleted, value),
        );
    }
    let empty = BTreeMap::new();
    devices.by_name.values().all(|ctx| {
        let state = ctx.state.borrow();
        let Some(c) = state.coordinator.as_ref() else {
            return false;
        };
        let stats = c.stats();
        if c.state().syncing || stats.pending > 0 || stats.in_flight > 0 {
            return false;
        }
        let expected = by_user.get(&UserId(state.user.clone())).unwrap_or(&empty);
        let replica = c.replica().entities();
        replica.len() == expected.len()
            && replica.iter().all(|(key, copy)| {
                expected.get(key).is_some_and(|(version, deleted, value)| {
                    copy.version == *version && copy.deleted == *deleted && copy.entity == *value
                })
            })
    })
}

/// Records the end state: every device's queue and replica, the server's commit log and
/// entities.
fn snapshot(
    devices: &Devices,
    server: &Arc<parking_lot::Mutex<Server>>,
    trace: &Rc<RefCell<Trace>>,
    t_ms: u64,
) {
    let mut trace = trace.borrow_mut();
    for ctx in devices.by_name.values() {
        let state = ctx.state.borrow();
        let (queue, replica) = match state.coordinator.as_ref() {
            Some(c) => (
                c.queue().map(|e| (e.op.op_id.clone(), e.status)).collect(),
                c.replica()
                    .entities()
                    .iter()
                    .map(|((entity_type, entity_id), copy)| EntitySnapshot {
                        entity_type: *entity_type,
                        entity_id: entity_id.clone(),
                        version: copy.version,
                        deleted: copy.deleted,
                        entity: copy.entity.clone(),
                    })
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        trace.record(
            t_ms,
            &state.name,
            TraceEvent::FinalDevice {
                user: state.user.clone(),
                queue,
                replica,
            },
        );
    }
    let server = server.lock();
    let tables = server.tables();
    let mut rows: Vec<_> = tables.sync_history.iter().collect();
    // Each user's commits are numbered apart; the log lists them by number, then user.
    rows.sort_by_key(|((user, seq), _)| (*seq, user.clone()));
    for ((user, _), row) in rows {
        trace.record(
            t_ms,
            "server",
            TraceEvent::FinalCommit {
                user: user.0.clone(),
                row: Box::new(row.clone()),
            },
        );
    }
    for ((entity_type, entity_id), stored) in &tables.entities {
        trace.record(
            t_ms,
            "server",
            TraceEvent::FinalEntity {
                owner: stored.owner.0.clone(),
                snapshot: EntitySnapshot {
                    entity_type: *entity_type,
                    entity_id: entity_id.clone(),
                    version: stored.state.version,
                    deleted: stored.state.deleted,
                    entity: if stored.state.deleted {
                        serde_json::Value::Null
                    } else {
                        stored.state.to_value()
                    },
                },
            },
        );
    }
}
