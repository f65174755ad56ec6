//! Throughput of `rockhound serve` over loopback HTTP: ops applied per second with N
//! concurrent clients, each its own user, each sending 50-op batches of creates one after
//! another, on the in-memory store, on SQLite (a fresh file, durable: WAL with
//! `synchronous = FULL`, as `serve --db` runs it) or on PostgreSQL (the database
//! `ROCKHOUND_BENCH_POSTGRES` names, emptied first; durable commits, as the server's
//! defaults have them).
//!
//! ```sh
//! cargo run --release -p rockhound-benches --bin serve_throughput -- STORE CLIENTS [SECONDS] [THREADS]
//! ```
//!
//! `STORE` is `memory`, `sqlite` or `postgres`; `SECONDS` defaults to 10, `THREADS` (server worker
//! threads) to 2. Prints ops per second and batch latency percentiles. Figures and the
//! machine are in `benches/README.md`.

// A measurement tool, not the simulation: it times requests by the wall clock.
#![allow(clippy::disallowed_methods)]

use rockhound_engine::entity::{EntityType, Priority};
use rockhound_engine::server::{AnyStore, Server};
use rockhound_engine::{Batch, Millis, Op, OpKind, SyncConfig, UserId};
use rockhound_io::http::client::request;
use rockhound_io::http::serve::{ServeLimits, serve_tcp};
use rockhound_io::http::{self, AppState};
use rockhound_io::postgres_store::PostgresStore;
use rockhound_io::sqlite_store::SqliteStore;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Ops per batch.
const BATCH_OPS: usize = 50;

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The next batch of `client`: `BATCH_OPS` tag creates.
fn batch(client: usize, first: u64) -> Vec<u8> {
    let now = wall_ms();
    let ops = (first..first + BATCH_OPS as u64)
        .map(|n| {
            let id = format!("c{client}-t{n}");
            Op {
                op_id: format!("c{client}-op-{n}").into(),
                idempotency_key: format!("c{client}-key-{n}").into(),
                entity_type: EntityType::Tag,
                entity_id: id.as_str().into(),
                kind: OpKind::Create,
                base_version: 0,
                payload: json!({"id": id, "label": "quartz"}),
                client_timestamp_ms: Millis(now),
                priority: Priority::LOW,
                depends_on: vec![],
                created_at_ms: Millis(now),
                checksum: String::new(),
            }
            .sealed()
        })
        .collect();
    let batch_id = format!("c{client}-b{first}");
    serde_json::to_vec(&Batch::new(
        batch_id.into(),
        format!("d{client}").into(),
        ops,
    ))
    .expect("serializes")
}

/// One client: batches until `stop`; returns (ops applied, each batch's time in ms).
async fn client(addr: SocketAddr, client: usize, stop: Arc<AtomicBool>) -> (u64, Vec<f64>) {
    let token = format!("token-{client}");
    let mut applied = 0;
    let mut times = Vec::new();
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let body = batch(client, next);
        next += BATCH_OPS as u64;
        let started = Instant::now();
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let path = "/api/sync/batch";
        let response = request(stream, hyper::Method::POST, path, Some(&token), Some(body))
            .await
            .expect("an answer");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let answer = response.json().expect("a JSON answer");
        let results = answer["results"].as_array().expect("results");
        applied += results.iter().filter(|r| r["status"] == "applied").count() as u64;
    }
    (applied, times)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

/// Drops rockhound's tables from the database at `url`, so that the run starts empty.
fn empty_postgres(url: &str) {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connects");
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .expect("the schema is emptied");
}

/// The server on the store `name`; `None` for an unknown name.
fn open_server(name: &str, db: &std::path::Path) -> Option<Server<AnyStore>> {
    let store: AnyStore = match name {
        "memory" => return Some(Server::new(SyncConfig::default()).into_any()),
        "sqlite" => Box::new(
            SqliteStore::open(db)
                .expect("the database opens")
                .pipelined(),
        ),
        "postgres" => {
            let url = std::env::var("ROCKHOUND_BENCH_POSTGRES")
                .expect("ROCKHOUND_BENCH_POSTGRES names a database to empty and use");
            empty_postgres(&url);
            Box::new(PostgresStore::open(&url, Millis(wall_ms())).expect("the database opens"))
        }
        _ => return None,
    };
    Some(Server::with_store(SyncConfig::default(), store))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: serve_throughput memory|sqlite|postgres CLIENTS [SECONDS] [THREADS]";
    let store_name = args.next().expect(usage);
    let clients: usize = args.next().and_then(|s| s.parse().ok()).expect(usage);
    let seconds: u64 = args.next().map_or(10, |s| s.parse().expect(usage));
    let threads: usize = args.next().map_or(2, |s| s.parse().expect(usage));
    let db = std::env::temp_dir().join(format!("rockhound-throughput-{}.db", std::process::id()));
    let server = open_server(&store_name, &db).expect(usage);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a runtime");
    let (applied, mut times) = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("an address");
        let tokens: BTreeMap<String, UserId> = (0..clients)
            .map(|c| (format!("token-{c}"), UserId(format!("user-{c}"))))
            .collect();
        let mut state = AppState::new(server, tokens, Arc::new(|| Millis(wall_ms())));
        // As `rockhound serve` sets it up.
        state.body_read_timeout = Some(ServeLimits::default().body_read_timeout);
        state.yield_between_ops = true;
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve_tcp(
            listener,
            http::router(state),
            ServeLimits::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..clients)
            .map(|c| tokio::spawn(client(addr, c, stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut applied = 0;
        let mut times = Vec::new();
        for task in tasks {
            let (ops, batch_times) = task.await.expect("a client");
            applied += ops;
            times.extend(batch_times);
        }
        let _ = stop_server.send(());
        let _ = served.await;
        (applied, times)
    });
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", db.display())));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "serve throughput: store {store_name}, {clients} client(s), {BATCH_OPS}-op batches, \
         {threads} server threads, {seconds} s"
    );
    println!(
        "  {:.0} ops/s applied ({applied} ops in {} batches); batch p50 {:.1} ms, p99 {:.1} ms",
        applied as f64 / seconds as f64,
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );
}
