//! `rockhound serve --db` on SQLite and on PostgreSQL: what was acknowledged survives a
//! SIGKILL, once, and the clients' resends are answered `duplicate`; concurrent devices
//! lose no update. The PostgreSQL runs need `ROCKHOUND_TEST_POSTGRES` (see
//! io/src/postgres_store/tests.rs); without it they say so and pass, unless
//! `ROCKHOUND_REQUIRE_POSTGRES` is set, as CI sets it.

use crate::http::{BOB, Served, TOKEN, batch, call, get, op, start_with};
use hyper::Method;
use rockhound_engine::OpKind;
use rockhound_engine::entity::EntityType;
use rockhound_engine::server::replay;
use rockhound_engine::server::tables::AnyStore;
use rockhound_engine::server::tables::ServerStore;
use rockhound_io::postgres_store::PostgresStore;
use rockhound_io::sqlite_store::SqliteStore;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// A database for one test.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Db {
    fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh PostgreSQL database named after the test; `None` without a test server.
    fn postgres(name: &str) -> Option<Db> {
        let Ok(base) = std::env::var("ROCKHOUND_TEST_POSTGRES") else {
            assert!(
                std::env::var_os("ROCKHOUND_REQUIRE_POSTGRES").is_none(),
                "ROCKHOUND_REQUIRE_POSTGRES is set but ROCKHOUND_TEST_POSTGRES is not"
            );
            eprintln!("skipped: ROCKHOUND_TEST_POSTGRES is not set (.ci/postgres starts one)");
            return None;
        };
        let db = format!("rockhound_cli_{name}");
        // The blocking client must not run on the test's runtime: a thread of its own.
        let (url, script) = (
            base.clone(),
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE); CREATE DATABASE {db};"),
        );
        std::thread::spawn(move || {
            let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            for statement in script.split_terminator(';') {
                admin.batch_execute(statement).unwrap();
            }
        })
        .join()
        .unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        Some(Db::Postgres(format!("{prefix}/{db}")))
    }

    /// What `--db` takes.
    fn arg(&self) -> String {
        match self {
            Db::Sqlite(dir) => dir.path().join("rockhound.db").display().to_string(),
            Db::Postgres(url) => url.clone(),
        }
    }

    /// The store, opened as a restarted server would.
    fn open(&self) -> AnyStore {
        match self {
            Db::Sqlite(_) => Box::new(SqliteStore::open(Path::new(&self.arg())).unwrap()),
            Db::Postgres(url) => Box::new(
                PostgresStore::open(url, rockhound_engine::time::Millis(1_780_000_000_000))
                    .unwrap(),
            ),
        }
    }
}

fn serve_on(db: &Db) -> Served {
    start_with(&["--db", &db.arg()])
}

/// Sends one tag create per batch for `token` until the server is gone, and returns the op
/// numbers whose answer said `applied`, with the batch each went in.
async fn stream(
    addr: std::net::SocketAddr,
    token: &'static str,
    first: u32,
) -> Vec<(u32, Vec<u8>)> {
    let mut acknowledged = Vec::new();
    for n in first..first + 10_000 {
        let id = format!("t{n}");
        let create = op(
            n,
            EntityType::Tag,
            &id,
            OpKind::Create,
            0,
            json!({"id": id, "label": "a"}),
        );
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            break;
        };
        let body = batch("d1", vec![create]);
        let Ok(answer) = rockhound_io::http::client::request(
            stream,
            Method::POST,
            "/api/sync/batch",
            Some(token),
            Some(body.clone()),
        )
        .await
        else {
            break;
        };
        let Ok(answer) = answer.json() else {
            break;
        };
        if answer["results"][0]["status"] == "applied" {
            acknowledged.push((n, body));
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_every_acknowledged_op_survives_a_sigkill_once_and_its_resend_is_a_duplicate() {
    survives_a_sigkill(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_every_acknowledged_op_survives_a_sigkill_once_and_its_resend_is_a_duplicate() {
    if let Some(db) = Db::postgres("sigkill") {
        survives_a_sigkill(db).await;
    }
}

async fn survives_a_sigkill(db: Db) {
    let mut served = serve_on(&db);
    let addr = served.addr;
    let ann = tokio::spawn(stream(addr, TOKEN, 0));
    let bob = tokio::spawn(stream(addr, BOB, 100_000));
    // Let both users stream for a while, then kill the server mid-stream (SIGKILL).
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let (ann, bob) = (ann.await.unwrap(), bob.await.unwrap());
    assert!(
        ann.len() > 5 && bob.len() > 5,
        "both streamed: {} {}",
        ann.len(),
        bob.len()
    );

    // The file, read directly: every acknowledged op is there exactly once, and replaying
    // the history gives the tables.
    let store = db.open();
    let tables = store.tables();
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    for row in tables.sync_history.values() {
        if row.op_id.is_some() {
            *applied.entry(row.entity_id.to_string()).or_default() += 1;
        }
    }
    for (n, _) in ann.iter().chain(&bob) {
        assert_eq!(applied.get(&format!("t{n}")), Some(&1), "op {n}");
    }
    replay::verify(tables).unwrap();
    drop(store);

    // Restarted on the same file, the server answers every resend `duplicate` and a
    // device's pull continues where it was.
    let served = serve_on(&db);
    for (token, numbers) in [(TOKEN, &ann), (BOB, &bob)] {
        for (_, body) in numbers.iter().rev().take(5) {
            let answer = call(
                served.addr,
                Method::POST,
                "/api/sync/batch",
                Some(token),
                Some(body.clone()),
            )
            .await;
            let answer: Value = answer.json().unwrap();
            assert_eq!(answer["results"][0]["status"], "duplicate", "{answer}");
        }
    }
    let page = get(served.addr, "/api/sync/changes?since=0&limit=1000", TOKEN).await;
    let ids: Vec<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["entity_id"].as_str())
        .collect();
    assert!(ids.contains(&format!("t{}", ann[0].0).as_str()), "{page}");
    assert!(
        !ids.iter().any(|id| id.starts_with("t1000")),
        "bob's entities stay his"
    );
}

#[test]
fn a_database_written_by_a_newer_rockhound_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rockhound.db");
    drop(SqliteStore::open(&db).unwrap());
    rusqlite_set_version(&db, 9);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rockhound"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--user",
            "ann:ann-token",
            "--db",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("newer rockhound (schema version 9"),
        "{stderr}"
    );
}

/// Sets the file's schema version, as a newer build would have.
fn rusqlite_set_version(db: &Path, version: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "user_version", version).unwrap();
}

/// One device of ann's: `rounds` batches, each an update of its own field on a shared tag
/// (from a stale base, so most meet another device's write) and a create of its own.
async fn edit_shared(addr: std::net::SocketAddr, device: usize, rounds: u32) -> Vec<Value> {
    let mut answers = Vec::new();
    for round in 0..rounds {
        let n = 1_000 * (device as u32 + 1) + round * 2;
        let shared = format!("shared-{}", device % 2);
        let field = format!("note_{device}");
        let update = op(
            n,
            EntityType::Tag,
            &shared,
            OpKind::Update,
            1,
            json!({ field: round }),
        );
        let own = format!("own-{device}-{round}");
        let create = op(
            n + 1,
            EntityType::Tag,
            &own,
            OpKind::Create,
            0,
            json!({"id": own, "label": "a"}),
        );
        let body = batch(&format!("d{device}"), vec![update, create]);
        let answer = call(
            addr,
            Method::POST,
            "/api/sync/batch",
            Some(TOKEN),
            Some(body),
        )
        .await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        answers.push(answer.json().unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_concurrent_devices_lose_no_update_and_versions_stay_contiguous() {
    concurrent_devices(Db::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_concurrent_devices_lose_no_update_and_versions_stay_contiguous() {
    if let Some(db) = Db::postgres("concurrent") {
        concurrent_devices(db).await;
    }
}

async fn concurrent_devices(db: Db) {
    let mut served = serve_on(&db);
    let addr = served.addr;
    let tags = (0..2)
        .map(|i| {
            let id = format!("shared-{i}");
            op(
                i,
                EntityType::Tag,
                &id,
                OpKind::Create,
                0,
                json!({"id": id, "label": "s"}),
            )
        })
        .collect();
    let created = call(
        addr,
        Method::POST,
        "/api/sync/batch",
        Some(TOKEN),
        Some(batch("d0", tags)),
    )
    .await;
    assert_eq!(created.status, 200);
    let rounds = 15;
    let tasks: Vec<_> = (0..8)
        .map(|device| tokio::spawn(edit_shared(addr, device, rounds)))
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }
    let mut conflicts = 0;
    for answer in &answers {
        for result in answer["results"].as_array().unwrap() {
            let status = result["status"].as_str().unwrap();
            assert!(["applied", "conflict"].contains(&status), "{answer}");
            conflicts += usize::from(status == "conflict");
        }
    }
    assert!(
        conflicts > 50,
        "the devices' stale updates met each other: {conflicts}"
    );
    served.child.kill().unwrap();
    served.child.wait().unwrap();

    let store = db.open();
    let tables = store.tables();
    replay::verify(tables).unwrap();
    // Versions contiguous per entity: the writes its history records are 1, 2, …, n, and
    // the entity stands at n.
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for row in tables.sync_history.values() {
        if row.write.is_some() {
            let version = row.version.expect("a write has a version");
            versions
                .entry(row.entity_id.to_string())
                .or_default()
                .push(version);
        }
    }
    for (key, stored) in &tables.entities {
        let mut seen = versions.remove(&key.1.to_string()).unwrap_or_default();
        seen.sort_unstable();
        let expected: Vec<u64> = (1..=stored.state.version).collect();
        assert_eq!(seen, expected, "{}", key.1);
    }
    // No lost update: every device's own field holds the last value it sent.
    for device in 0..8 {
        let shared = format!("shared-{}", device % 2);
        let key = (EntityType::Tag, shared.as_str().into());
        let fields = &tables.entities[&key].state.fields;
        assert_eq!(
            fields[&format!("note_{device}")],
            json!(rounds - 1),
            "{shared}: {fields:?}"
        );
    }
}
