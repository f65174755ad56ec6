//! The adversarial load measurement of `rockhound serve`'s request path: one user sends the
//! worst batches the limits allow (500 conflicting `merge` updates of one array field, each
//! against an entity at its size limit) while another user's requests are timed.
//!
//! ```sh
//! cargo run --release -p rockhound-benches --bin adversarial_load -- [SECONDS] [THREADS]
//! ```
//!
//! The server is the real router and connection handling of `rockhound serve`, on
//! 127.0.0.1 with `THREADS` worker threads (default 2); the load comes from the same process
//! over real sockets. Prints the victim's latency percentiles and the attacker's batch times.
//! Figures and the machine are in `benches/README.md`.

// A measurement tool, not the simulation: it times requests by the wall clock.
#![allow(clippy::disallowed_methods)]

use rockhound_engine::entity::{EntityType, Priority};
use rockhound_engine::server::Server;
use rockhound_engine::{Batch, Millis, Op, OpKind, SyncConfig, UserId};
use rockhound_io::http::client::request;
use rockhound_io::http::serve::{ServeLimits, serve_tcp};
use rockhound_io::http::{self, AppState};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ATTACKER: &str = "mallory-token";
const VICTIM: &str = "ann-token";
/// Ops per attacking batch: the batch limit.
const ATTACK_OPS: usize = 500;
/// Array items per attacking op: about 7 KB of payload, so a batch stays under 4 MiB.
const ATTACK_ITEMS: usize = 400;

/// The server's clock in this measurement: the wall clock, as `rockhound serve` uses.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn op(n: u64, kind: OpKind, entity: &str, base_version: u64, payload: Value) -> Op {
    let now = wall_ms();
    Op {
        op_id: format!("op-{n}").into(),
        idempotency_key: format!("key-{n}").into(),
        entity_type: EntityType::Tag,
        entity_id: entity.into(),
        kind,
        base_version,
        payload,
        client_timestamp_ms: Millis(now),
        priority: Priority::LOW,
        depends_on: vec![],
        created_at_ms: Millis(now),
        checksum: String::new(),
    }
    .sealed()
}

fn batch_body(batch_id: String, device: &str, ops: Vec<Op>) -> Vec<u8> {
    serde_json::to_vec(&Batch::new(batch_id.into(), device.into(), ops)).expect("serializes")
}

async fn post(addr: SocketAddr, token: &str, body: Vec<u8>) -> u16 {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    request(
        stream,
        hyper::Method::POST,
        "/api/sync/batch",
        Some(token),
        Some(body),
    )
    .await
    .map_or(0, |r| r.status)
}

async fn get(addr: SocketAddr, token: &str, path: &str) -> u16 {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    request(stream, hyper::Method::GET, path, Some(token), None)
        .await
        .map_or(0, |r| r.status)
}

/// The attacker: creates one tag, then sends batches of conflicting array updates until
/// `stop`; returns each batch's wall time in ms.
async fn attack(addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut n = 1_000_000u64;
    let create = op(
        n,
        OpKind::Create,
        "big",
        0,
        json!({"id": "big", "items": []}),
    );
    post(
        addr,
        ATTACKER,
        batch_body("attack-0".into(), "m-phone", vec![create]),
    )
    .await;
    let mut times = Vec::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let ops: Vec<Op> = (0..ATTACK_OPS)
            .map(|_| {
                n += 1;
                let items: Vec<String> = (0..ATTACK_ITEMS).map(|i| format!("{n}-{i:04}")).collect();
                op(n, OpKind::Update, "big", 1, json!({ "items": items }))
            })
            .collect();
        let body = batch_body(format!("attack-{round}"), "m-phone", ops);
        let started = Instant::now();
        let status = post(addr, ATTACKER, body).await;
        assert_eq!(status, 200, "the attacking batch is answered");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times
}

/// The victim: a pull and a one-op batch every 20 ms until `stop`; returns each request's
/// wall time in ms.
async fn victim(addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut times = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let status = get(addr, VICTIM, "/api/sync/changes?limit=100").await;
        assert_eq!(status, 200);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let create = op(
            n,
            OpKind::Create,
            &format!("t-{n}"),
            0,
            json!({"id": format!("t-{n}")}),
        );
        let started = Instant::now();
        let status = post(
            addr,
            VICTIM,
            batch_body(format!("v-{n}"), "a-phone", vec![create]),
        )
        .await;
        assert_eq!(status, 200);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    times
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summary(name: &str, mut times: Vec<f64>) {
    times.sort_by(f64::total_cmp);
    println!(
        "{name}: {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(f64::NAN)
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args
        .next()
        .map_or(20, |s| s.parse().expect("SECONDS is a number"));
    let threads: usize = args
        .next()
        .map_or(2, |s| s.parse().expect("THREADS is a number"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let tokens = BTreeMap::from([
            (ATTACKER.to_owned(), UserId::from("mallory")),
            (VICTIM.to_owned(), UserId::from("ann")),
        ]);
        let mut state = AppState::new(
            Server::new(SyncConfig::default()).into_any(),
            tokens,
            Arc::new(|| Millis(wall_ms())),
        );
        // As `rockhound serve` sets it up.
        state.body_read_timeout = Some(ServeLimits::default().body_read_timeout);
        state.yield_between_ops = true;
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_tcp(
            listener,
            http::router(state),
            ServeLimits::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = tokio::spawn(attack(addr, stop.clone()));
        // Let the attacker's entity reach its size limit before timing the victim.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = tokio::spawn(victim(addr, stop.clone()));
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let victim_times = victim.await.expect("victim");
        let attack_times = attacker.await.expect("attacker");
        let _ = stop_server.send(());
        let _ = server.await;
        println!(
            "adversarial load: {seconds} s, {threads} server threads, attacker batches of {ATTACK_OPS} merge updates of {ATTACK_ITEMS} items"
        );
        summary("victim (pull, one-op batch)", victim_times);
        summary("attacker (whole batch)", attack_times);
    });
}
