//! `explore`: swarm testing. Each seed draws a whole scenario — users and devices, a
//! configuration, a workload and a fault mix — so that a seed range covers many shapes of
//! run, not one scenario with different timings.

use crate::spec::{ConfigSpec, FaultSpec, RunSpec, SimSpec, UserSpec, WorkloadSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rockhound_engine::EntityType;
use rockhound_engine::conflict::Strategy;

/// Mixed into the seed so the scenario's draws differ from the run's own streams.
const SWARM_SALT: u64 = 0x005e_ed0f_5a4d;

/// The swarm scenario of one seed.
pub fn swarm_spec(seed: u64) -> RunSpec {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ SWARM_SALT);
    let user_count = rng.random_range(1..=3);
    let users = (1..=user_count)
        .map(|u| UserSpec {
            name: format!("u{u}"),
            devices: (1..=rng.random_range(1..=3))
                .map(|d| format!("u{u}-d{d}"))
                .collect(),
        })
        .collect();
    let presets = ["development", "production", "offline_heavy"];
    let mut strategies = std::collections::BTreeMap::new();
    for entity_type in [
        EntityType::FieldSession,
        EntityType::FindLog,
        EntityType::Specimen,
        EntityType::Tag,
    ] {
        if rng.random_bool(0.3) {
            let choices = [
                Strategy::ServerWins,
                Strategy::ClientWins,
                Strategy::LatestTimestamp,
                Strategy::FieldLevel,
                Strategy::Merge,
            ];
            strategies.insert(entity_type, choices[rng.random_range(0..choices.len())]);
        }
    }
    RunSpec {
        name: format!("swarm-{seed}"),
        description: "a swarm scenario drawn from its seed".into(),
        users,
        config: ConfigSpec {
            preset: Some(presets[rng.random_range(0..presets.len())].to_owned()),
            batch_size: Some([5, 25, 50][rng.random_range(0..3)]),
            auto_sync_interval_ms: Some(10_000),
            strategies,
            ..ConfigSpec::default()
        },
        sim: SimSpec {
            safety_ms: 60_000,
            liveness_ms: 300_000,
            ..SimSpec::default()
        },
        workload: Some(WorkloadSpec {
            actions_per_device: rng.random_range(5..=30),
            field_trips_per_device: rng.random_range(0..=2),
            field_trip_ms_max: 20_000,
        }),
        faults: Some(FaultSpec {
            swarm: true,
            ..FaultSpec::default()
        }),
        ..RunSpec::default()
    }
}
