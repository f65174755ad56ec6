//! Building the world: the seed's streams, the links, the server host and the devices on
//! their hosts, and the schedule of steps.

use super::{Devices, World};
use crate::device::{self, DeviceCtx, DeviceState, Link, sim_now};
use crate::net::SimListener;
use crate::spec::{RunSpec, ServerStoreKind, SpecError};
use crate::trace::{Trace, TraceEvent};
use crate::workload::{self};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rockhound_engine::client::Coordinator;
use rockhound_engine::server::replay::LoggedWrite;
use rockhound_engine::server::wire::{OpResult, OpStatus};
use rockhound_engine::server::{AnyStore, Server};
use rockhound_engine::testing::sim_store::SimStore;
use rockhound_engine::{DeviceId, Millis, Op, SyncConfig, UserId};
use rockhound_io::http::{self, AppState, Clock};
use rockhound_io::sqlite_store::SqliteStore;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::Notify;

impl<'s> World<'s> {
    /// Builds the world of `spec` for `seed`, recording the run's header in the trace.
    pub(super) fn build(spec: &'s RunSpec, seed: u64) -> Result<World<'s>, SpecError> {
        let config = spec.validate()?;
        rockhound_engine::coverage::start();
        let mut master = ChaCha8Rng::seed_from_u64(seed);
        let turmoil_seed: u64 = master.random();
        let mut schedule_rng = ChaCha8Rng::seed_from_u64(master.random());
        let mut fault_rng = ChaCha8Rng::seed_from_u64(master.random());
        let mut rate_rng = ChaCha8Rng::seed_from_u64(master.random());
        let choice_rng = ChaCha8Rng::seed_from_u64(master.random());
        let epoch_ms = spec.sim.epoch_ms;

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

        let mut sim = turmoil_sim(spec, turmoil_seed);
        let server_faults = Arc::new(parking_lot::Mutex::new(ServerFaults::default()));
        let server = serve(&mut sim, spec, &config, &server_faults);
        let devices = devices(spec, &config, &mut master, &link, &trace);
        place(&mut sim, spec, &devices);
        let schedule = workload::schedule(spec, &mut schedule_rng, &mut fault_rng);
        Ok(World {
            spec,
            seed,
            config,
            sim,
            devices,
            server,
            server_up: true,
            server_faults,
            server_restart_at_ms: None,
            trace,
            schedule,
            choice_rng,
            covered: std::collections::BTreeSet::new(),
        })
    }
}

/// The turmoil simulation: its seed, clock, tick, bound and latencies.
fn turmoil_sim(spec: &RunSpec, turmoil_seed: u64) -> turmoil::Sim<'static> {
    let run_ms = spec.sim.safety_ms + spec.sim.liveness_ms;
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(turmoil_seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(spec.sim.epoch_ms))
        .tick_duration(Duration::from_millis(spec.sim.tick_ms))
        .simulation_duration(Duration::from_millis(run_ms + 60_000))
        .min_message_latency(Duration::from_millis(spec.network.latency_ms_min))
        .max_message_latency(Duration::from_millis(spec.network.latency_ms_max))
        .tcp_capacity(1_024);
    builder.build()
}

/// The `server` host: the HTTP router of `rockhound serve` over the sans-IO server, whose
/// tables outlive crashes of the host. Returns the server, for the end-state snapshot.
fn serve(
    sim: &mut turmoil::Sim<'static>,
    spec: &RunSpec,
    config: &SyncConfig,
    faults: &Arc<parking_lot::Mutex<ServerFaults>>,
) -> Arc<parking_lot::Mutex<Server<AnyStore>>> {
    let epoch_ms = spec.sim.epoch_ms;
    let server = match spec.sim.server_store {
        ServerStoreKind::Memory => Server::new(config.clone()).into_any(),
        ServerStoreKind::Sqlite => {
            let store = SqliteStore::open(std::path::Path::new(":memory:"))
                .expect("an in-memory SQLite database opens");
            Server::with_store(config.clone(), Box::new(store) as AnyStore)
        }
    };
    let tokens: BTreeMap<String, UserId> = spec
        .users
        .iter()
        .map(|u| (format!("token-{}", u.name), UserId(u.name.clone())))
        .collect();
    let clock: Clock = Arc::new(move || sim_now(epoch_ms));
    let mut app = AppState::new(server, tokens, clock);
    let armed = faults.clone();
    app.crash_point = Some(Arc::new(move |committed, ops| {
        let mut armed = armed.lock();
        let due = armed.after_ops.is_some_and(|k| committed == k.min(ops));
        if due {
            armed.after_ops = None;
            armed.crashed = true;
            if committed < ops {
                rockhound_engine::coverage::hit("sim.crash.server_between_ops");
            }
        }
        due
    }));
    let shedding = faults.clone();
    app.shed = Some(Arc::new(move || {
        let now = sim_now(epoch_ms);
        let until = shedding.lock().shed_until?;
        (now < until).then(|| until.since_ms(now))
    }));
    let server_state = app.server.clone();
    let (tables, decisions) = (app.server.clone(), faults.clone());
    app.decided = Some(Arc::new(move |user, op, result| {
        let server = tables.lock();
        if applied_under_another_users_ids(&server, user, op, result) {
            rockhound_engine::coverage::hit("sim.collision.ids_across_users");
        }
        let event = decision(&server, user, op, result);
        drop(server);
        let t_ms = sim_now(epoch_ms).0 - epoch_ms;
        decisions.lock().decided.push((t_ms, event));
    }));
    sim.host("server", move || {
        let app = app.clone();
        async move {
            let listener = SimListener::bind("0.0.0.0:80").await?;
            crate::net::serve(listener, http::router(app)).await?;
            Ok(())
        }
    });
    server_state
}

/// Every device, started online over an empty simulated store; each draws its jitter and
/// link seeds from `master`, in declaration order.
fn devices(
    spec: &RunSpec,
    config: &SyncConfig,
    master: &mut ChaCha8Rng,
    link: &Link,
    trace: &Rc<RefCell<Trace>>,
) -> Devices {
    let epoch_ms = spec.sim.epoch_ms;
    let mut devices = Devices {
        by_name: BTreeMap::new(),
        counters: BTreeMap::new(),
    };
    for (user, name) in &spec.devices() {
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
            pending_hostile: Vec::new(),
            hostile_count: 0,
            jitter_seed,
            planted: spec.planted,
            chain_depth: BTreeMap::new(),
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
    devices
}

/// The devices grouped onto hosts, `devices_per_host` at a time.
fn place(sim: &mut turmoil::Sim<'static>, spec: &RunSpec, devices: &Devices) {
    let device_list = spec.devices();
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
}

/// The faults the server's handlers consult: a crash armed inside the next batch
/// (`crash_server_mid_batch`: the batch handler checks it after each commit; the world
/// kills the host once it fired), and load shedding (`overload`).
#[derive(Debug, Default)]
pub(super) struct ServerFaults {
    /// Until when every request is answered 503 with `Retry-After`.
    pub shed_until: Option<Millis>,
    /// Ops to commit before the crash (1 or more: the scenario check refuses 0).
    pub after_ops: Option<usize>,
    /// Whether it fired and the host is still to be killed.
    pub crashed: bool,
    /// Decisions the server made since the world last looked, with their simulated time,
    /// for the trace.
    pub decided: Vec<(u64, TraceEvent)>,
}

/// Whether `op` was applied under the op id and idempotency key of an op another user had
/// applied already (ids are each user's own: both must hold, isolated).
fn applied_under_another_users_ids(
    server: &Server<AnyStore>,
    user: &UserId,
    op: &Op,
    result: &OpResult,
) -> bool {
    let tables = server.tables();
    result.status == OpStatus::Applied
        && tables.user_seqs.keys().filter(|u| *u != user).any(|other| {
            tables
                .sync_queue
                .get(&(other.clone(), op.op_id.clone()))
                .is_some_and(|row| {
                    row.status == OpStatus::Applied && row.idempotency_key == op.idempotency_key
                })
        })
}

/// The trace's record of one op's decision, with what the server met: the strategy that
/// decided it and, for a conflict, the server's version at the time (otherwise the op's
/// base version, which it matched).
fn decision(server: &Server<AnyStore>, user: &UserId, op: &Op, result: &OpResult) -> TraceEvent {
    let tables = server.tables();
    let row = tables
        .user_seqs
        .get(user)
        .and_then(|seq| tables.sync_history.get(&(user.clone(), *seq)))
        .filter(|row| row.op_id.as_ref() == Some(&op.op_id));
    let strategy = row.and_then(|row| match &row.write {
        Some(LoggedWrite::Op { strategy, .. }) => *strategy,
        _ => None,
    });
    let conflict = result
        .conflict_id
        .as_ref()
        .and_then(|id| tables.sync_conflicts.get(id));
    let met_version = match conflict {
        Some((_, record)) => Some(record.server_version),
        None => strategy.map(|_| op.base_version),
    };
    TraceEvent::Decided {
        user: user.0.clone(),
        op_id: op.op_id.clone(),
        status: result.status,
        reason: result.reason,
        version: result.version,
        met_version,
        strategy,
    }
}
