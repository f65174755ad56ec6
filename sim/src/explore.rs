//! `explore`: swarm testing. Each seed draws a whole scenario — users and devices, a
//! configuration, a workload, a fault mix and a few scripted user and hostile steps — so
//! that a seed range covers many shapes of run, not one scenario with different timings.
//! The weights make rare paths common enough for a few hundred seeds to reach every
//! coverage point the swarm can express (docs/simulation.md, "Coverage").

use crate::spec::{
    Action, ConfigSpec, FaultSpec, Probe, Retries, RunSpec, SimSpec, Step, UserSpec, WorkloadSpec,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rockhound_engine::EntityType;
use rockhound_engine::conflict::Strategy;
use rockhound_engine::entity::Priority;
use rockhound_engine::server::wire::Resolution;
use rockhound_engine::time::HOUR_MS;
use std::collections::BTreeMap;

/// Mixed into the seed so the scenario's draws differ from the run's own streams.
const SWARM_SALT: u64 = 0x005e_ed0f_5a4d;

/// The swarm's safety phase.
const SAFETY_MS: u64 = 60_000;

/// The share of seeds that are long runs: a day and more of simulated time in five-second
/// ticks, with a one-hour queue TTL, field trips longer than it, and a server cleanup after
/// the idempotency keys' retention, so expiry and key retention are reached.
const LONG_RUN_SHARE: f64 = 0.04;

/// A long run's tick: idle simulated time costs ticks (every host is stepped each tick),
/// so a long run takes coarse ones; its timeouts and sync interval are scaled to it.
const LONG_TICK_MS: u64 = 5_000;

/// How far behind a rebooted device's clock may come back.
const REBOOT_CLOCK_BEHIND_MS_MAX: i64 = 2 * 24 * 60 * 60 * 1000;

/// The swarm scenario of one seed.
pub fn swarm_spec(seed: u64) -> RunSpec {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ SWARM_SALT);
    let user_count = rng.random_range(1..=3);
    let users: Vec<UserSpec> = (1..=user_count)
        .map(|u| UserSpec {
            name: format!("u{u}"),
            devices: (1..=rng.random_range(1..=3))
                .map(|d| format!("u{u}-d{d}"))
                .collect(),
        })
        .collect();
    let mut config = swarm_config(&mut rng);
    let long = rng.random_bool(LONG_RUN_SHARE);
    let (sim, field_trip_ms_max) = if long {
        config.queue_ttl_ms = Some(HOUR_MS);
        // A request's round trip takes a few ticks; pulls minutes apart leave moments when
        // no device is syncing, which convergence is checked at.
        config.batch_timeout_ms = Some(30 * LONG_TICK_MS);
        config.auto_sync_interval_ms = Some(60 * LONG_TICK_MS);
        let built = config
            .build()
            .expect("the swarm's configurations are valid");
        // The keys' retention, then an hour for the cleanup and the last edits.
        let safety_ms = built.idempotency_retention_ms() + 2 * HOUR_MS;
        let sim = SimSpec {
            tick_ms: LONG_TICK_MS,
            safety_ms,
            liveness_ms: 240 * LONG_TICK_MS,
            ..SimSpec::default()
        };
        (sim, 2 * HOUR_MS)
    } else {
        let sim = SimSpec {
            safety_ms: SAFETY_MS,
            liveness_ms: 300_000,
            ..SimSpec::default()
        };
        (sim, 20_000)
    };
    let manual = config.strategies.values().any(|s| *s == Strategy::Manual);
    let steps = swarm_steps(&mut rng, &users, manual, sim.safety_ms, long);
    RunSpec {
        name: format!("swarm-{seed}"),
        description: "a swarm scenario drawn from its seed".into(),
        users,
        config,
        sim,
        steps,
        workload: Some(WorkloadSpec {
            actions_per_device: rng.random_range(5..=30),
            field_trips_per_device: rng.random_range(0..=2),
            field_trip_ms_max,
            wide: true,
        }),
        faults: Some(FaultSpec {
            swarm: true,
            ..FaultSpec::default()
        }),
        ..RunSpec::default()
    }
}

/// A preset with a few knobs turned: batch size, retries (few enough to dead-letter), a
/// queue small enough to fill, a batching window, and a strategy for any entity type,
/// `manual` included.
fn swarm_config(rng: &mut ChaCha8Rng) -> ConfigSpec {
    let presets = ["development", "production", "offline_heavy"];
    let preset = presets[rng.random_range(0..presets.len())];
    let mut batch_size = [5, 25, 50][rng.random_range(0..3)];
    let mut strategies = BTreeMap::new();
    for entity_type in EntityType::ALL {
        if rng.random_bool(0.5) {
            let choices = [
                Strategy::ServerWins,
                Strategy::ClientWins,
                Strategy::LatestTimestamp,
                Strategy::FieldLevel,
                Strategy::Merge,
                Strategy::Manual,
            ];
            strategies.insert(entity_type, choices[rng.random_range(0..choices.len())]);
        }
    }
    // Priorities are configuration: now and then a type is made more (or less) urgent
    // than the catalogue says, so a child can outrank its parent.
    let mut priorities = BTreeMap::new();
    for entity_type in EntityType::ALL {
        if rng.random_bool(0.15) {
            let priority = Priority::new(rng.random_range(1..=4)).expect("1 to 4 are priorities");
            priorities.insert(entity_type, priority);
        }
    }
    // Manual conflicts need a person: make them common on the most edited type, so
    // every resolution kind is reached by a few seeds of a range, not by luck.
    let manual_sessions = rng.random_bool(0.15);
    if manual_sessions {
        strategies.insert(EntityType::FieldSession, Strategy::Manual);
    }
    // A delete that meets a concurrent edit and wins (`client_wins`) is rare by chance:
    // now and then the most edited type that users delete takes that strategy.
    if rng.random_bool(0.15) {
        strategies.insert(EntityType::Specimen, Strategy::ClientWins);
    }
    let max_retries = rng
        .random_bool(0.3)
        .then(|| Retries::Count(rng.random_range(1..=3)));
    // A small queue comes with small batches, so that an offline stretch fills it.
    let max_queue_size = rng.random_bool(0.15).then(|| {
        batch_size = 5;
        rng.random_range(5..=8)
    });
    // Short pages make pulls page; with manual conflicts common, a page of one makes the
    // listings of open conflicts page too.
    let pull_page_len = if manual_sessions && rng.random_bool(0.5) {
        Some(1)
    } else {
        rng.random_bool(0.3).then(|| rng.random_range(1..=10))
    };
    let batch_window_ms = rng
        .random_bool(0.2)
        .then(|| [500, 2_000][rng.random_range(0..2)]);
    ConfigSpec {
        batch_window_ms,
        preset: Some(preset.to_owned()),
        batch_size: Some(batch_size),
        auto_sync_interval_ms: Some(10_000),
        max_retries,
        max_queue_size,
        pull_page_len,
        strategies,
        priorities,
        ..ConfigSpec::default()
    }
}

/// A few scripted steps in the safety phase: users resolving conflicts (every resolution
/// kind), retrying and discarding failed ops; the request faults a scenario can script (a
/// replayed batch, a damaged one, an answer cut short, a duplicated request, a request
/// forged as another user); hostile clients' probes; the server's disk filling up, its
/// cleanup, a crash inside a batch, and load shedding with `Retry-After`. A long run also
/// cleans up once the idempotency keys' retention has passed.
/// With a `manual` strategy, every device also resolves what is open near the end of the
/// safety phase, one way or another.
fn swarm_steps(
    rng: &mut ChaCha8Rng,
    users: &[UserSpec],
    manual: bool,
    safety_ms: u64,
    long: bool,
) -> Vec<Step> {
    let devices: Vec<(&str, &str)> = users
        .iter()
        .flat_map(|u| u.devices.iter().map(|d| (u.name.as_str(), d.as_str())))
        .collect();
    // A person keeps a side or gives the entity; one time in four they have a named
    // strategy decide on the server instead.
    let resolution = |rng: &mut ChaCha8Rng| match rng.random_range(0..4) {
        0 => Resolution::KeepServer,
        1 => Resolution::KeepClient,
        2 => Resolution::Custom,
        _ => [
            Resolution::ClientWins,
            Resolution::ServerWins,
            Resolution::LatestTimestamp,
            Resolution::FieldLevel,
            Resolution::Merge,
        ][rng.random_range(0..5)],
    };
    let mut steps = Vec::new();
    for _ in 0..rng.random_range(0..=9) {
        let (user, device) = devices[rng.random_range(0..devices.len())];
        let device = device.to_owned();
        let victims: Vec<&str> = devices
            .iter()
            .filter(|(u, _)| *u != user)
            .map(|(_, d)| *d)
            .collect();
        let action = swarm_action(rng, device, &victims, resolution);
        let at_ms = rng.random_range(1_000..safety_ms);
        // A crash drawn here is a reboot: the device comes back two seconds later with
        // its clock reset up to two days behind (a real-time clock that lost its time).
        let reboot = match &action {
            Action::Crash { device, .. } => Some(Step {
                at_ms: (at_ms + 2_000).min(safety_ms - 1),
                action: Action::Restart {
                    device: device.clone(),
                    clock_offset_ms: Some(-rng.random_range(0..=REBOOT_CLOCK_BEHIND_MS_MAX)),
                },
            }),
            _ => None,
        };
        steps.push(Step { at_ms, action });
        steps.extend(reboot);
    }
    if long {
        steps.push(Step {
            at_ms: safety_ms - HOUR_MS / 2,
            action: Action::CleanupServer,
        });
    }
    if manual {
        for (_, device) in &devices {
            steps.push(Step {
                at_ms: rng.random_range(safety_ms * 3 / 4..safety_ms),
                action: Action::Resolve {
                    device: (*device).to_owned(),
                    resolution: resolution(rng),
                },
            });
        }
    }
    steps.sort_by_key(|s| s.at_ms);
    steps
}

/// One drawn step of the swarm for `device` (its user's `victims` are the other users'
/// devices).
fn swarm_action(
    rng: &mut ChaCha8Rng,
    device: String,
    victims: &[&str],
    resolution: impl Fn(&mut ChaCha8Rng) -> Resolution,
) -> Action {
    match rng.random_range(0..12) {
        0 => Action::Resolve {
            device,
            resolution: resolution(rng),
        },
        1 => Action::RetryDead { device },
        2 => Action::Replay { device },
        3 if rng.random_bool(0.25) => Action::CutAnswer { device },
        3 if rng.random_bool(0.33) => Action::DamageAnswer { device },
        3 => Action::Corrupt { device },
        4 if rng.random_bool(0.3) => Action::Sync { device },
        4 if !victims.is_empty() => Action::Forge {
            device,
            victim_device: victims[rng.random_range(0..victims.len())].to_owned(),
        },
        5..=7 => Action::Hostile {
            device,
            probe: Probe::ALL[rng.random_range(0..Probe::ALL.len())],
        },
        8 => Action::Discard { device },
        9 if rng.random_bool(0.5) => Action::ServerRoom {
            entities: Some(rng.random_range(0..=3)),
        },
        9 => Action::CleanupServer,
        10 if rng.random_bool(0.5) => Action::CrashServerMidBatch {
            after_ops: rng.random_range(1..=3),
        },
        10 => Action::Overload {
            ms: rng.random_range(500..=20_000),
        },
        11 if rng.random_bool(0.3) => Action::Crash {
            device,
            torn_bytes: 0,
        },
        _ => Action::Duplicate { device },
    }
}
