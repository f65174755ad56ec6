//! The engine's hot paths: enqueue, batch selection, checksums, deltas, conflict
//! resolution, server apply and pulls. Targets and figures: `benches/README.md`.

// criterion's macros define undocumented functions; benchmarks measure wall-clock time,
// which the workspace bans everywhere else.
#![allow(missing_docs, clippy::disallowed_methods)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rockhound_benches::{
    NOW, config, conflict_case, device_with, drawers_batch, edit, op, queue_with,
    server_with_sessions, specimen,
};
use rockhound_engine::client::coordinator::Coordinator;
use rockhound_engine::client::store::QueueStore;
use rockhound_engine::conflict::{self, Detection, Strategy, Write};
use rockhound_engine::server::Server;
use rockhound_engine::testing::sim_store::SimStore;
use rockhound_engine::{Batch, DeviceId, OpKind, UserId, delta};
use rockhound_io::file_store::FileStore;
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The time `count` enqueues take on a fresh device over `store`.
fn time_enqueues<S: QueueStore>(store: S, count: u64) -> Duration {
    let count = usize::try_from(count).expect("iterations fit");
    let mut device = Coordinator::open(DeviceId("bench".into()), 0, config(count), store, 1, NOW)
        .expect("opens");
    let edits: Vec<_> = (0..count).map(edit).collect();
    let started = Instant::now();
    for e in edits {
        black_box(device.enqueue(NOW, NOW, e).expect("room"));
    }
    started.elapsed()
}

/// Enqueue of one op, on a fresh device per batch of iterations (so the queue never fills).
fn enqueue(c: &mut Criterion) {
    let mut group = c.benchmark_group("enqueue");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sim_store", |b| {
        b.iter_custom(|iters| time_enqueues(SimStore::new(), iters))
    });
    // fsync before acknowledging: the figure is the disk's, not the engine's.
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("file_store", |b| {
        b.iter_custom(|iters| {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let store = FileStore::open(dir.path().join("queue.log")).expect("opens");
            time_enqueues(store, iters)
        })
    });
    group.finish();
}

/// A 50-op batch selected from queues of realistic dependency chains.
fn batch_selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("select_50");
    for count in [100, 1_000, 10_000, 100_000] {
        let queue = queue_with(count);
        group.bench_function(format!("from_{count}"), |b| {
            b.iter(|| black_box(queue.select(50)))
        });
    }
    group.finish();
    // The whole poll: selection, marking in flight, building and sealing the batch.
    let mut group = c.benchmark_group("poll_batch_50");
    group.sample_size(20);
    for count in [1_000, 10_000] {
        group.bench_function(format!("from_{count}"), |b| {
            b.iter_batched(
                || {
                    let mut device = device_with(count);
                    device.set_online(NOW, true);
                    device
                },
                // The device is returned so that its drop is not timed.
                |mut device| {
                    black_box(device.poll(NOW));
                    device
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn checksum_and_delta(c: &mut Criterion) {
    let typical = op(1, OpKind::Create, 0, specimen(), NOW);
    c.bench_function("checksum/typical_op", |b| {
        b.iter(|| black_box(typical.compute_checksum()))
    });
    let original = specimen();
    let mut modified = specimen();
    modified["weight_g"] = json!(208);
    modified["notes"] = json!("fortification banding, two polished faces");
    modified["tags"] = json!(["agate", "favourites", "polished"]);
    c.bench_function("delta/diff", |b| {
        b.iter(|| black_box(delta::diff(&original, &modified)))
    });
    let patch = delta::diff(&original, &modified);
    c.bench_function("delta/apply", |b| {
        b.iter(|| black_box(delta::patched(&original, &patch)))
    });
}

fn conflicts(c: &mut Criterion) {
    let (server, stale, device) = conflict_case();
    let mut group = c.benchmark_group("conflict");
    for strategy in [
        Strategy::ClientWins,
        Strategy::ServerWins,
        Strategy::LatestTimestamp,
        Strategy::FieldLevel,
        Strategy::Merge,
        Strategy::Manual,
    ] {
        group.bench_function(strategy.as_str(), |b| {
            b.iter(|| {
                let write = Write::of(&stale, &device);
                let Detection::Conflict(case) = conflict::detect(Some(&server), &write) else {
                    unreachable!("a stale update conflicts");
                };
                let decision = conflict::resolve(strategy, case, &server, &write);
                black_box(conflict::commit(Some(&server), &decision, &write))
            })
        });
    }
    group.finish();
}

fn server(c: &mut Criterion) {
    let ann = UserId::from("ann");
    // 50 new storage locations' worth of creates, checksums verified, on a server with history.
    let batch = drawers_batch();
    let mut group = c.benchmark_group("server");
    group.throughput(Throughput::Elements(50));
    group.bench_function("apply_batch_50", |b| {
        b.iter_batched(
            || server_with_sessions(500),
            // The server is returned so that its drop is not timed.
            |mut server| {
                black_box(server.handle_batch(&ann, &batch, NOW).expect("applies"));
                server
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
    let mut server = server_with_sessions(2_000);
    let mut group = c.benchmark_group("server");
    group.throughput(Throughput::Elements(500));
    group.bench_function("pull_page_500", |b| {
        b.iter(|| black_box(server.changes(&ann, None, 700, 500, NOW).expect("a page")))
    });
    group.finish();
}

/// A device with 1,000 ops queued, online, its first 50-op batch in flight.
fn device_in_flight() -> (Coordinator<SimStore>, Batch) {
    let mut device = device_with(1_000);
    device.set_online(NOW, true);
    match device.poll(NOW) {
        Some(rockhound_engine::client::coordinator::Request::Batch(batch)) => (device, batch),
        other => panic!("expected a batch, got {other:?}"),
    }
}

/// The seed's "result" phase: a device takes the server's answer to its 50-op batch
/// (settles each op, releases its dependants, logs it durably, records history and
/// telemetry). The answer is a real server's.
fn result_phase(c: &mut Criterion) {
    let (_, batch) = device_in_flight();
    let answer = Server::new(config(1_000))
        .handle_batch(&UserId::from("ann"), &batch, NOW)
        .expect("the server answers");
    assert_eq!(answer.results.len(), 50);
    let mut group = c.benchmark_group("result_50");
    group.throughput(Throughput::Elements(50));
    group.bench_function("on_batch_response", |b| {
        b.iter_batched(
            // Deterministic: the same device sends the same batch id every time.
            || device_in_flight().0,
            |mut device| {
                device.on_batch_response(NOW, &answer);
                device
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    enqueue,
    batch_selection,
    checksum_and_delta,
    conflicts,
    server,
    result_phase
);
criterion_main!(benches);
