//! Regression tests for the adversarial review of `rockhound serve`, over a real socket:
//! each finding about HTTP has a test named after the behaviour it now has.

use crate::http::{BOB, TOKEN, batch, call, get, op, results, send, start, start_with, status};
use hyper::Method;
use rockhound_engine::entity::EntityType;
use rockhound_engine::{Millis, OpKind};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `raw` on a new connection and reads until the server closes it or `wait` passes;
/// returns the status code (0 if none came) and the body.
async fn raw(addr: SocketAddr, raw: &[u8], wait: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

fn error_code(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    assert!(value["message"].is_string(), "{body}");
    value["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_forged_invalid_copy_then_the_valid_op_leave_the_server_serving_every_user() {
    let served = start();
    let valid = op(
        1,
        EntityType::FieldSession,
        "fs",
        OpKind::Create,
        0,
        json!({"id": "fs", "name": "creek"}),
    );
    let mut forged = valid.clone();
    forged.op_id = "op-forged".into();
    forged.created_at_ms = Millis(0);
    let first = results(served.addr, "phone", vec![forged]).await;
    assert_eq!(status(&first[0]), ("rejected", Some("checksum_mismatch")));
    let second = results(served.addr, "phone", vec![valid]).await;
    assert_eq!(status(&second[0]), ("applied", None));
    // Another user is still answered.
    let page = get(served.addr, "/api/sync/changes", BOB).await;
    assert_eq!(page["changes"], json!([]));
}

#[tokio::test]
async fn a_pull_with_an_unused_device_id_does_not_lock_its_owner_out() {
    let served = start();
    get(served.addr, "/api/sync/changes?device_id=ann-phone", BOB).await;
    let create = op(
        1,
        EntityType::FieldSession,
        "fs",
        OpKind::Create,
        0,
        json!({"id": "fs", "name": "creek"}),
    );
    let answer = results(served.addr, "ann-phone", vec![create]).await;
    assert_eq!(status(&answer[0]), ("applied", None));
}

#[tokio::test]
async fn every_refusal_carries_the_error_body() {
    let served = start();
    let addr = served.addr;
    let not_found = call(addr, Method::GET, "/nowhere", Some(TOKEN), None).await;
    assert_eq!(not_found.status, 404);
    let wrong_method = call(addr, Method::DELETE, "/api/sync/batch", Some(TOKEN), None).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.json().unwrap()["error"], "method_not_allowed");
    let long = format!("/api/sync/changes?since={}", "1".repeat(9_000));
    let (code, body) = raw(
        addr,
        format!("GET {long} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!((code, error_code(&body).as_str()), (414, "uri_too_long"));
    let many: String = (0..100).map(|i| format!("x-h{i}: v\r\n")).collect();
    let (code, body) = raw(
        addr,
        format!("GET /api/sync/metrics HTTP/1.1\r\nhost: x\r\n{many}connection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        (code, error_code(&body).as_str()),
        (431, "headers_too_large")
    );
    // Broken chunked encoding is a malformed request, not one too large.
    let (code, body) = raw(
        addr,
        format!(
            "POST /api/sync/batch HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(code == 400, "{code} {body}");
    if !body.is_empty() {
        assert_eq!(error_code(&body), "malformed");
    }
    let metrics = call(
        addr,
        Method::GET,
        "/api/sync/metrics?verbose=1",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(metrics.status, 400);
    assert_eq!(metrics.json().unwrap()["error"], "invalid_value");
}

#[tokio::test]
async fn a_path_id_that_breaks_the_id_rule_is_refused_and_not_echoed() {
    let served = start();
    for id in ["a%00b".to_owned(), "c".repeat(5_000)] {
        let path = format!("/api/sync/conflicts/{id}/resolve");
        let body = serde_json::to_vec(&json!({"resolution": "keep_server"})).unwrap();
        let response = call(served.addr, Method::POST, &path, Some(TOKEN), Some(body)).await;
        assert_eq!(response.status, 400, "{id:.20}");
        let text = String::from_utf8_lossy(&response.body).into_owned();
        assert_eq!(error_code(&text), "invalid_value");
        assert!(
            !text.contains("ccccccccc") && !text.contains('\0'),
            "{text:.200}"
        );
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let served = start();
    for header in [format!("bearer {TOKEN}"), format!("BEARER  {TOKEN}")] {
        let (code, _) = raw(
            served.addr,
            format!(
                "GET /api/sync/metrics HTTP/1.1\r\nhost: x\r\nauthorization: {header}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(code, 200, "{header}");
    }
}

#[tokio::test]
async fn conflicts_are_paged_like_changes() {
    let served = start();
    let page = get(served.addr, "/api/sync/conflicts?limit=1", TOKEN).await;
    assert_eq!(
        (
            page["conflicts"].clone(),
            page["next_cursor"].clone(),
            page["has_more"].clone()
        ),
        (json!([]), json!(0), json!(false))
    );
    let response = call(
        served.addr,
        Method::GET,
        "/api/sync/conflicts?limit=0",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(response.status, 400);
}

#[tokio::test]
async fn a_half_sent_request_is_dropped_after_the_header_timeout() {
    let served = start_with(&["--header-timeout-ms", "300"]);
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream
        .write_all(b"GET /api/sync/metrics HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // The server must close the connection itself (hyper answers 408 or closes without an
    // answer); a read still open after 5 s means the half-sent request is kept for ever.
    let mut answer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(closed.is_ok(), "the server kept the half-sent request open");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn a_half_sent_body_is_answered_408_after_the_body_timeout() {
    let served = start_with(&["--body-timeout-ms", "300"]);
    let (code, body) = raw(
        served.addr,
        format!(
            "POST /api/sync/batch HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 100\r\n\r\n{{\"batch"
        )
        .as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!((code, error_code(&body).as_str()), (408, "timeout"));
}

#[tokio::test]
async fn connections_over_the_cap_are_answered_503_and_the_rest_still_served() {
    let served = start_with(&["--connections-max", "4", "--header-timeout-ms", "60000"]);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(served.addr).await.unwrap();
        stream
            .write_all(b"GET /api/sync/metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, body) = raw(
        served.addr,
        b"GET /api/sync/metrics HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!((code, error_code(&body).as_str()), (503, "busy"));
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let page = get(served.addr, "/api/sync/metrics", TOKEN).await;
    assert!(page["windows"].is_array());
}

#[test]
fn shutdown_with_a_half_sent_request_exits_0_within_the_grace_period() {
    let mut served = start_with(&[
        "--shutdown-grace-ms",
        "500",
        "--header-timeout-ms",
        "600000",
    ]);
    let addr = served.addr;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _held = runtime.block_on(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /api/sync/batch HTTP/1.1\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream
    });
    let pid = served.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Wait at most 10 s for the exit (the grace period is half a second).
    let mut status = None;
    for _ in 0..100 {
        if let Some(exit) = served.child.try_wait().unwrap() {
            status = Some(exit);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = status.expect("serve exited within 10 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn tokens_can_come_from_a_users_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(&file, "# team\ncarol:carol-token\n\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rockhound"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--db",
            ":memory:",
            "--users-file",
        ])
        .arg(&file)
        .env("ROCKHOUND_USERS", "dave:dave-token")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let statuses = runtime.block_on(async move {
        let mut statuses = Vec::new();
        for token in ["carol-token", "dave-token", "nobody"] {
            let response = call(addr, Method::GET, "/api/sync/metrics", Some(token), None).await;
            statuses.push(response.status);
        }
        statuses
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(statuses, [200, 200, 401]);
}

#[tokio::test]
async fn a_worst_case_merge_batch_is_answered_and_bounded() {
    let served = start();
    // analytics_cache merges under STRATEGIES; a growing array field, conflicting each time.
    let create = op(
        1,
        EntityType::AnalyticsCache,
        "ac",
        OpKind::Create,
        0,
        json!({"id": "ac", "items": []}),
    );
    results(served.addr, "phone", vec![create]).await;
    let updates: Vec<_> = (0..60u32)
        .map(|n| {
            let items: Vec<String> = (0..2_000).map(|i| format!("i-{n}-{i:05}")).collect();
            op(
                10 + n,
                EntityType::AnalyticsCache,
                "ac",
                OpKind::Update,
                1,
                json!({ "items": items }),
            )
        })
        .collect();
    let response = send(served.addr, TOKEN, batch("phone", updates)).await;
    assert_eq!(response.status, 200);
    let answers = response.json().unwrap()["results"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        answers.iter().any(|r| r["reason"] == "entity_too_large"),
        "the entity limit stops the growth"
    );
}
