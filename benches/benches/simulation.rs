//! Simulation throughput: simulated seconds per wall second of the harness at 1, 10 and 100
//! devices, each beside a bare turmoil echo with the same host count, tick and simulated
//! time (so the harness's overhead reads as a ratio), and seeds per minute of the swarm
//! scenario `rockhound explore` runs. Criterion's "elem/s" here is simulated seconds per
//! wall second (or swarm seeds per second). Figures: `benches/README.md`.

// criterion's macros define undocumented functions.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rockhound_benches::echo;
use rockhound_sim::explore::swarm_spec;
use rockhound_sim::runner;
use rockhound_sim::spec::{RunSpec, SimSpec, UserSpec, WorkloadSpec};
use std::hint::black_box;
use std::time::Duration;

const TICK_MS: u64 = 10;
const SAFETY_MS: u64 = 120_000;
const LIVENESS_MS: u64 = 60_000;

/// `devices` devices of ten users (or fewer), `per_host` to a host, each doing one user
/// action every ten simulated seconds or so, over three simulated minutes.
fn harness_spec(devices: usize, per_host: usize) -> RunSpec {
    let users = devices.div_ceil(10);
    RunSpec {
        name: format!("throughput-{devices}"),
        users: (0..users)
            .map(|u| UserSpec {
                name: format!("u{u}"),
                devices: (0..devices)
                    .filter(|d| d % users == u)
                    .map(|d| format!("d{d}"))
                    .collect(),
            })
            .collect(),
        sim: SimSpec {
            tick_ms: TICK_MS,
            devices_per_host: per_host,
            safety_ms: SAFETY_MS,
            liveness_ms: LIVENESS_MS,
            ..SimSpec::default()
        },
        workload: Some(WorkloadSpec {
            actions_per_device: 12,
            field_trips_per_device: 1,
            field_trip_ms_max: 30_000,
            wide: false,
        }),
        ..RunSpec::default()
    }
}

fn throughput(c: &mut Criterion) {
    for (devices, per_host) in [(1, 1), (10, 1), (100, 10)] {
        let spec = harness_spec(devices, per_host);
        let hosts = devices.div_ceil(per_host);
        // The run ends once converged after healing: measure its simulated length once.
        let simulated_ms = runner::run(&spec, 1, false)
            .expect("the spec runs")
            .outcome
            .summary
            .simulated_ms;
        // Host counts include the server host (the echo has the same: its server and clients).
        let mut group =
            c.benchmark_group(format!("throughput/{devices}_devices_{}_hosts", hosts + 1));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(if devices == 100 { 30 } else { 15 }));
        group.throughput(Throughput::Elements(simulated_ms / 1_000));
        group.bench_function("harness", |b| {
            b.iter(|| black_box(runner::run(&spec, 1, false).expect("the spec runs")))
        });
        group.bench_function("bare_echo", |b| {
            b.iter(|| {
                echo(
                    hosts,
                    Duration::from_millis(TICK_MS),
                    Duration::from_millis(simulated_ms),
                    Duration::from_secs(10),
                )
            })
        });
        group.finish();
    }
}

fn swarm(c: &mut Criterion) {
    let mut group = c.benchmark_group("swarm");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(1));
    let mut seed = 0u64;
    group.bench_function("seeds", |b| {
        b.iter(|| {
            seed += 1;
            black_box(runner::run(&swarm_spec(seed), seed, false).expect("the swarm runs"))
        })
    });
    group.finish();
}

criterion_group!(benches, throughput, swarm);
criterion_main!(benches);
