//! `rockhound serve --db PATH` on SQLite: what was acknowledged survives a SIGKILL, once,
//! and the clients' resends are answered `duplicate`.

use crate::http::{BOB, Served, TOKEN, batch, call, get, op, start_with};
use hyper::Method;
use rockhound_engine::OpKind;
use rockhound_engine::entity::EntityType;
use rockhound_engine::server::replay;
use rockhound_engine::server::tables::ServerStore;
use rockhound_io::sqlite_store::SqliteStore;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

fn serve_on(db: &Path) -> Served {
    start_with(&["--db", db.to_str().unwrap()])
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
async fn every_acknowledged_op_survives_a_sigkill_once_and_its_resend_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rockhound.db");
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
    let store = SqliteStore::open(&db).unwrap();
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
