//! The real `rockhound serve` binary on 127.0.0.1 with port 0, spoken to over real HTTP.

use hyper::Method;
use rockhound_engine::entity::{EntityType, Priority};
use rockhound_engine::{Batch, Millis, Op, OpKind};
use rockhound_io::http::client::{Response, request};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

pub(crate) const TOKEN: &str = "ann-token";
pub(crate) const BOB: &str = "bob-token";

/// The server process; killed when dropped so a failing test leaves nothing behind.
pub(crate) struct Served {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Strategy per entity type for these tests: all six, on types that need no parent except
/// find_log (manual), whose field session is created first.
const STRATEGIES: [(EntityType, &str); 6] = [
    (EntityType::FieldSession, "client_wins"),
    (EntityType::StorageLocation, "server_wins"),
    (EntityType::CollectionGroup, "latest_timestamp"),
    (EntityType::Tag, "field_level"),
    (EntityType::AnalyticsCache, "merge"),
    (EntityType::FindLog, "manual"),
];

pub(crate) fn start() -> Served {
    start_with(&[])
}

/// `serve` with ann and bob, the six strategies of [`STRATEGIES`] and `extra` arguments.
pub(crate) fn start_with(extra: &[&str]) -> Served {
    let mut args: Vec<String> = [
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--user",
        "ann:ann-token",
        "--user",
        "bob:bob-token",
    ]
    .map(String::from)
    .to_vec();
    for (entity_type, strategy) in STRATEGIES {
        args.extend(["--strategy".to_owned(), format!("{entity_type}={strategy}")]);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    if !extra.contains(&"--db") {
        // Each test its own server and nothing left in the working directory.
        args.extend(["--db".to_owned(), ":memory:".to_owned()]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_rockhound"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rockhound binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect(&line)
        .parse()
        .unwrap();
    Served { child, addr }
}

pub(crate) async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Response {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    request(stream, method, path, token, body).await.unwrap()
}

pub(crate) async fn get(addr: SocketAddr, path: &str, token: &str) -> Value {
    let response = call(addr, Method::GET, path, Some(token), None).await;
    assert_eq!(
        response.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&response.body)
    );
    response.json().unwrap()
}

pub(crate) fn op(
    n: u32,
    entity_type: EntityType,
    entity: &str,
    kind: OpKind,
    base_version: u64,
    payload: Value,
) -> Op {
    // The real server runs on the wall clock and refuses ops older than key retention, so
    // these ops carry today's time.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Op {
        op_id: format!("op-{n}").into(),
        idempotency_key: format!("key-{n}").into(),
        entity_type,
        entity_id: entity.into(),
        kind,
        base_version,
        payload,
        client_timestamp_ms: Millis(now + u64::from(n)),
        priority: Priority::NORMAL,
        depends_on: vec![],
        created_at_ms: Millis(now),
        checksum: String::new(),
    }
    .sealed()
}

pub(crate) fn batch(device: &str, ops: Vec<Op>) -> Vec<u8> {
    let id = ops
        .first()
        .map_or("empty".to_owned(), |o| o.op_id.to_string());
    serde_json::to_vec(&Batch::new(format!("b-{id}").into(), device.into(), ops)).unwrap()
}

/// The JSON body `body` with `member` set to `value`.
fn with_member(body: &[u8], member: &str, value: Value) -> Vec<u8> {
    let mut object: Value = serde_json::from_slice(body).unwrap();
    object[member] = value;
    serde_json::to_vec(&object).unwrap()
}

pub(crate) async fn send(addr: SocketAddr, token: &str, body: Vec<u8>) -> Response {
    call(
        addr,
        Method::POST,
        "/api/sync/batch",
        Some(token),
        Some(body),
    )
    .await
}

pub(crate) async fn results(addr: SocketAddr, device: &str, ops: Vec<Op>) -> Vec<Value> {
    let response = send(addr, TOKEN, batch(device, ops)).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.json().unwrap()["results"]
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn status(result: &Value) -> (&str, Option<&str>) {
    (
        result["status"].as_str().unwrap(),
        result["reason"].as_str(),
    )
}

#[tokio::test]
async fn the_real_server_speaks_the_whole_api_over_http() {
    let served = start();
    let addr = served.addr;

    // create → update → duplicate replay
    let create = op(
        1,
        EntityType::FieldSession,
        "fs",
        OpKind::Create,
        0,
        json!({"id": "fs", "name": "creek"}),
    );
    let update = op(
        2,
        EntityType::FieldSession,
        "fs",
        OpKind::Update,
        1,
        json!({"name": "ridge"}),
    );
    let first = results(addr, "phone", vec![create.clone(), update]).await;
    assert_eq!(
        first.iter().map(status).collect::<Vec<_>>(),
        [("applied", None), ("applied", None)]
    );
    assert_eq!(first[1]["version"], 2);
    let replay = results(addr, "phone", vec![create]).await;
    assert_eq!(
        (status(&replay[0]), &replay[0]["version"]),
        (("duplicate", None), &json!(1))
    );

    // A stale update under each strategy: device "phone" moves the entity to version 2,
    // then "tablet", which saw version 1, writes `tags` and `shelf` with a later timestamp.
    let parent = op(
        9,
        EntityType::FieldSession,
        "parent",
        OpKind::Create,
        0,
        json!({"id": "parent"}),
    );
    results(addr, "phone", vec![parent]).await;
    let expected = [
        ("client_applied", json!({"shelf": 3, "tags": ["c"]})),
        ("server_kept", json!({"shelf": 2, "tags": ["a", "b"]})),
        ("client_applied", json!({"shelf": 3, "tags": ["c"]})),
        ("merged", json!({"shelf": 3, "tags": ["c"]})),
        ("merged", json!({"shelf": 3, "tags": ["a", "b", "c"]})),
        ("manual", json!({"shelf": 2, "tags": ["a", "b"]})),
    ];
    for (n, ((entity_type, strategy), (reason, fields))) in
        (10..).step_by(10).zip(STRATEGIES.into_iter().zip(expected))
    {
        let id = format!("e{n}");
        let created = json!({"id": id, "field_session_id": "parent", "shelf": 1, "tags": ["a"]});
        let ahead = json!({"shelf": 2, "tags": ["a", "b"]});
        let stale = json!({"shelf": 3, "tags": ["c"]});
        results(
            addr,
            "phone",
            vec![op(n, entity_type, &id, OpKind::Create, 0, created)],
        )
        .await;
        results(
            addr,
            "phone",
            vec![op(n + 1, entity_type, &id, OpKind::Update, 1, ahead)],
        )
        .await;
        let answer = results(
            addr,
            "tablet",
            vec![op(n + 2, entity_type, &id, OpKind::Update, 1, stale)],
        )
        .await;
        assert_eq!(status(&answer[0]), ("conflict", Some(reason)), "{strategy}");
        assert!(answer[0]["conflict_id"].is_string(), "{strategy}");
        assert_eq!(answer[0]["entity"]["shelf"], fields["shelf"], "{strategy}");
        assert_eq!(answer[0]["entity"]["tags"], fields["tags"], "{strategy}");
    }

    // The manual conflict waits, open, and a person resolves it through the API.
    let open = get(addr, "/api/sync/conflicts?status=open", TOKEN).await;
    let open = open["conflicts"].as_array().unwrap().clone();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0]["strategy"].as_str(), open[0]["entity_id"].as_str()),
        (Some("manual"), Some("e60"))
    );
    let path = format!(
        "/api/sync/conflicts/{}/resolve",
        open[0]["conflict_id"].as_str().unwrap()
    );
    let keep_client = serde_json::to_vec(&json!({"resolution": "keep_client"})).unwrap();
    let forbidden = call(
        addr,
        Method::POST,
        &path,
        Some(BOB),
        Some(keep_client.clone()),
    )
    .await;
    assert_eq!(
        (forbidden.status, forbidden.json().unwrap()["error"].clone()),
        (403, json!("forbidden"))
    );
    let resolved = call(
        addr,
        Method::POST,
        &path,
        Some(TOKEN),
        Some(keep_client.clone()),
    )
    .await;
    assert_eq!(resolved.status, 200);
    assert_eq!(resolved.json().unwrap()["resolution"], "keep_client");
    let again = call(addr, Method::POST, &path, Some(TOKEN), Some(keep_client)).await;
    assert_eq!(
        (again.status, again.json().unwrap()["error"].clone()),
        (409, json!("already_resolved"))
    );
    assert_eq!(
        get(addr, "/api/sync/conflicts?status=open", TOKEN).await["conflicts"],
        json!([])
    );

    // Pull with pagination and tombstones.
    let delete = op(
        90,
        EntityType::StorageLocation,
        "e20",
        OpKind::Delete,
        2,
        Value::Null,
    );
    assert_eq!(
        status(&results(addr, "phone", vec![delete]).await[0]),
        ("applied", None)
    );
    let page = get(
        addr,
        "/api/sync/changes?since=0&limit=2&device_id=phone",
        TOKEN,
    )
    .await;
    assert_eq!(page["changes"].as_array().unwrap().len(), 2);
    assert_eq!(page["has_more"], true);
    let next = page["next_cursor"].as_u64().unwrap();
    let rest = get(
        addr,
        &format!("/api/sync/changes?since={next}&limit=10"),
        TOKEN,
    )
    .await;
    assert_eq!(rest["has_more"], false);
    let last = rest["changes"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["entity_id"].as_str(), last["deleted"].as_bool()),
        (Some("e20"), Some(true))
    );
    let resolved_entity = rest["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["entity_id"] == "e60")
        .unwrap();
    assert_eq!(
        (
            resolved_entity["version"].as_u64(),
            &resolved_entity["entity"]["shelf"]
        ),
        (Some(3), &json!(3))
    );

    // state, history, metrics answer for the caller.
    let state = get(addr, "/api/sync/state?device_id=phone", TOKEN).await;
    assert_eq!(state["device"]["pull_cursor"].as_u64(), Some(next));
    assert!(
        !get(addr, "/api/sync/history?limit=5", TOKEN).await["history"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        get(addr, "/api/sync/metrics", TOKEN).await["windows"][0]["ops"]
            .as_u64()
            .unwrap()
            > 5
    );

    // Every refusal: a precise status and code, and the state unchanged afterwards.
    let snapshot = get(addr, "/api/sync/changes?since=0&limit=1000", TOKEN).await;
    let good = batch(
        "phone",
        vec![op(
            100,
            EntityType::Tag,
            "t",
            OpKind::Create,
            0,
            json!({"id": "t"}),
        )],
    );
    let refusals: Vec<(Response, u16, &str)> = vec![
        (
            send(addr, TOKEN, b"{not json".to_vec()).await,
            400,
            "malformed",
        ),
        (
            send(addr, TOKEN, with_member(&good, "extra", json!(1))).await,
            400,
            "malformed",
        ),
        (
            call(
                addr,
                Method::GET,
                "/api/sync/changes?limit=0",
                Some(TOKEN),
                None,
            )
            .await,
            400,
            "invalid_value",
        ),
        (
            call(
                addr,
                Method::POST,
                "/api/sync/batch",
                None,
                Some(good.clone()),
            )
            .await,
            401,
            "unauthorized",
        ),
        (
            send(addr, "wrong-token", good.clone()).await,
            401,
            "unauthorized",
        ),
        (
            send(addr, TOKEN, vec![b' '; 5 * 1024 * 1024]).await,
            413,
            "too_large",
        ),
        (
            send(
                addr,
                TOKEN,
                with_member(&good, "checksum", json!("0".repeat(64))),
            )
            .await,
            422,
            "checksum_mismatch",
        ),
    ];
    // A device id names a device within its user: bob's batch from a device he also calls
    // "phone" is his own device's, neither refused nor counted on ann's phone.
    let bobs = batch(
        "phone",
        vec![op(
            101,
            EntityType::Tag,
            "bobs-tag",
            OpKind::Create,
            0,
            json!({"id": "bobs-tag", "label": "bob's"}),
        )],
    );
    let answer = send(addr, BOB, bobs).await;
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    for (response, expected_status, code) in refusals {
        let body = response.json().unwrap();
        assert_eq!(
            (response.status, body["error"].as_str()),
            (expected_status, Some(code)),
            "{body}"
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        get(addr, "/api/sync/changes?since=0&limit=1000", TOKEN).await,
        snapshot
    );
    // Bob sees his own tag and none of Ann's entities.
    let bobs_changes = get(addr, "/api/sync/changes?since=0", BOB).await["changes"].clone();
    let ids: Vec<&str> = bobs_changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["entity_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bobs-tag"]);
}

#[tokio::test]
async fn an_auto_resolved_conflict_cannot_be_resolved_again() {
    let served = start();
    let addr = served.addr;
    results(
        addr,
        "phone",
        vec![op(
            1,
            EntityType::StorageLocation,
            "s",
            OpKind::Create,
            0,
            json!({"id": "s", "shelf": 1}),
        )],
    )
    .await;
    results(
        addr,
        "phone",
        vec![op(
            2,
            EntityType::StorageLocation,
            "s",
            OpKind::Update,
            1,
            json!({"shelf": 2}),
        )],
    )
    .await;
    let answer = results(
        addr,
        "tablet",
        vec![op(
            3,
            EntityType::StorageLocation,
            "s",
            OpKind::Update,
            1,
            json!({"shelf": 4}),
        )],
    )
    .await;
    assert_eq!(status(&answer[0]), ("conflict", Some("server_kept")));
    let path = format!(
        "/api/sync/conflicts/{}/resolve",
        answer[0]["conflict_id"].as_str().unwrap()
    );
    let body = serde_json::to_vec(&json!({"resolution": "keep_client"})).unwrap();
    let refused = call(addr, Method::POST, &path, Some(TOKEN), Some(body)).await;
    assert_eq!(
        (refused.status, refused.json().unwrap()["error"].clone()),
        (409, json!("already_resolved"))
    );
    let keep_server = serde_json::to_vec(&json!({"resolution": "keep_server"})).unwrap();
    let missing = call(
        addr,
        Method::POST,
        "/api/sync/conflicts/nope/resolve",
        Some(TOKEN),
        Some(keep_server),
    )
    .await;
    assert_eq!(
        (missing.status, missing.json().unwrap()["error"].clone()),
        (404, json!("not_found"))
    );
    let malformed = call(addr, Method::POST, &path, Some(TOKEN), Some(b"{}".to_vec())).await;
    assert_eq!(
        (malformed.status, malformed.json().unwrap()["error"].clone()),
        (400, json!("malformed"))
    );
}

#[test]
fn ctrl_c_stops_the_server_cleanly() {
    let mut served = start();
    let pid = served.child.id().to_string();
    let signalled = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(signalled.success());
    let status = served.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn bad_serve_arguments_exit_with_the_usage_code() {
    for args in [
        vec!["serve", "--user", "ann"],
        vec!["serve", "--user", "ann:t", "--strategy", "rock=manual"],
        vec!["serve", "--user", "ann:t", "--preset", "staging"],
        vec!["serve", "--user", "ann:t", "--db", ""],
        vec!["serve", "--user", "ann:t", "--cleanup-interval-s", "0"],
        vec![
            "serve",
            "--user",
            "ann:t",
            "--cleanup-interval-s",
            "18446744073709551615",
        ],
        vec!["serve"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_rockhound"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
}

#[tokio::test]
async fn a_devices_report_reaches_its_state_row_and_the_metrics_and_a_bad_one_is_refused() {
    let served = start();
    let addr = served.addr;
    let tag = op(
        1,
        EntityType::Tag,
        "t1",
        OpKind::Create,
        0,
        json!({"id": "t1"}),
    );
    let report = rockhound_engine::op::ClientReport {
        pending: 1,
        blocked: 0,
        failed: 2,
        round_trip_ms: Some(1_200),
        failed_requests: 0,
    };
    let reporting = Batch::reporting("b-r".into(), "phone".into(), vec![tag], Some(report));
    let body = serde_json::to_vec(&reporting).unwrap();
    assert_eq!(send(addr, TOKEN, body.clone()).await.status, 200);
    let state = get(addr, "/api/sync/state?device_id=phone", TOKEN).await;
    assert_eq!(
        state["device"]["report"],
        json!({"pending": 1, "blocked": 0, "failed": 2, "round_trip_ms": 1200, "failed_requests": 0})
    );
    assert_eq!(state["device"]["network_quality"], "fair");
    let window = &get(addr, "/api/sync/metrics", TOKEN).await["windows"][0];
    assert_eq!(
        (&window["round_trips"], &window["round_trip_ms_max"]),
        (&json!(1), &json!(1200))
    );
    assert!(window["decide_ms_max"].is_u64());
    let history = get(addr, "/api/sync/history?limit=1", TOKEN).await;
    assert!(history["history"][0]["duration_ms"].is_u64(), "{history}");
    // The report is under the checksum; unknown members and out-of-range numbers are
    // refused before anything is applied.
    let mut changed: Value = serde_json::from_slice(&body).unwrap();
    changed["report"]["failed"] = json!(3);
    let answer = send(addr, TOKEN, serde_json::to_vec(&changed).unwrap()).await;
    assert_eq!(
        answer.status,
        422,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    for bad in [
        json!({"pending": 1, "blocked": 0, "failed": 0, "failed_requests": 0, "extra": 1}),
        json!({"pending": -1, "blocked": 0, "failed": 0, "failed_requests": 0}),
        json!({"pending": 1}),
        json!("fine"),
    ] {
        let mut body: Value = serde_json::from_slice(&body).unwrap();
        body["report"] = bad.clone();
        let answer = send(addr, TOKEN, serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(
            (answer.status, answer.json().unwrap()["error"].clone()),
            (400, json!("malformed")),
            "{bad}"
        );
    }
    let state = get(addr, "/api/sync/state?device_id=phone", TOKEN).await;
    assert_eq!(
        state["device"]["batch_count"], 1,
        "nothing refused was counted"
    );
}
