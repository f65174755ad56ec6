//! The PostgreSQL store against the in-memory one, on a real server: the same requests leave
//! the same tables, which come back whole after a reopen; a group the database refuses is
//! undone whole; row-level security confines a statement to its user; the SQL cleanup
//! removes what the server's does; databases it must not use are refused.
//!
//! They need a server: `ROCKHOUND_TEST_POSTGRES` names one (`.ci/postgres` starts one and
//! prints its URL), on which the role may create databases; each test makes its own. Without
//! it they say so and pass, unless `ROCKHOUND_REQUIRE_POSTGRES` is set (CI sets it).

use super::*;
use crate::store_tests::{NOW, config, drive, op, send, still_writing, tag};
use postgres::NoTls;
use rockhound_engine::op::{Batch, OpKind};
use rockhound_engine::server::Flushing;
use rockhound_engine::server::tables::MemoryStore;
use rockhound_engine::server::tables::ServerStore;
use rockhound_engine::server::{HISTORY_RETENTION_MS, METRICS_WINDOW_MS, RequestError, Server};
use serde_json::json;

/// A fresh database named after the test, and its URL; `None` without a server.
fn database(name: &str) -> Option<String> {
    let Ok(base) = std::env::var("ROCKHOUND_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("ROCKHOUND_REQUIRE_POSTGRES").is_none(),
            "ROCKHOUND_REQUIRE_POSTGRES is set but ROCKHOUND_TEST_POSTGRES is not"
        );
        eprintln!("skipped: ROCKHOUND_TEST_POSTGRES is not set (.ci/postgres starts a server)");
        return None;
    };
    let db = format!("rockhound_test_{name}");
    let mut admin = Client::connect(&base, NoTls).expect("the test server answers");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').expect("a URL with a database name");
    Some(format!("{prefix}/{db}"))
}

fn postgres(url: &str) -> Server<PostgresStore> {
    Server::with_store(config(), PostgresStore::open(url, NOW).unwrap())
}

fn client(url: &str) -> Client {
    Client::connect(url, NoTls).unwrap()
}

#[test]
fn the_same_requests_leave_the_same_tables_and_a_reopen_brings_them_back_whole() {
    let Some(url) = database("conformance") else {
        return;
    };
    let mut memory = Server::with_store(config(), MemoryStore::default());
    let mut on_pg = postgres(&url);
    drive(&mut memory);
    drive(&mut on_pg);
    assert_eq!(memory.tables().sync_conflicts.len(), 2);
    assert_eq!(on_pg.tables(), memory.tables());
    drop(on_pg);
    let reopened = PostgresStore::open(&url, NOW).unwrap();
    // Every table, and every index derived from them, equals the in-memory server's.
    assert_eq!(reopened.tables(), memory.tables());
    // The history is in the month partitions, not the default one.
    let mut c = client(&url);
    let mut tx = c.transaction().unwrap();
    set_user(&mut tx, "ann").unwrap();
    let in_default: i64 = tx
        .query_one("SELECT count(*) FROM sync_history_default", &[])
        .unwrap()
        .get(0);
    let in_all: i64 = tx
        .query_one("SELECT count(*) FROM sync_history", &[])
        .unwrap()
        .get(0);
    assert_eq!(in_default, 0, "every row has its month's partition");
    assert!(in_all > 0);
}

#[test]
fn row_level_security_confines_each_statement_to_its_user() {
    let Some(url) = database("rls") else {
        return;
    };
    let mut server = postgres(&url);
    drive(&mut server);
    drop(server);
    let mut c = client(&url);
    let mut tx = c.transaction().unwrap();
    // No user set: nothing is visible.
    let seen: i64 = tx
        .query_one("SELECT count(*) FROM entities", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 0);
    set_user(&mut tx, "bob").unwrap();
    let owners: Vec<String> = tx
        .query("SELECT DISTINCT user_id FROM entities", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, ["bob"], "bob sees his own entities only");
    // Bob's transaction cannot write a row of ann's, nor change one.
    let forged = tx.execute(
        "INSERT INTO sync_queue (user_id, op_id, row) VALUES ('ann', 'x', '{}')",
        &[],
    );
    let message = forged
        .unwrap_err()
        .as_db_error()
        .unwrap()
        .message()
        .to_owned();
    assert!(message.contains("row-level security"), "{message}");
    drop(tx);
    let mut tx = c.transaction().unwrap();
    set_user(&mut tx, "bob").unwrap();
    let changed = tx
        .execute("UPDATE entities SET cursor = 0 WHERE user_id = 'ann'", &[])
        .unwrap();
    assert_eq!(changed, 0, "ann's rows are out of bob's reach");
    // A history partition read directly shows nothing at all.
    let month = month(NOW).replace('-', "_");
    let direct: i64 = tx
        .query_one(&format!("SELECT count(*) FROM sync_history_{month}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(direct, 0);
}

#[test]
fn a_group_the_database_refuses_is_undone_whole_and_its_requests_answered_503() {
    let Some(url) = database("refused") else {
        return;
    };
    let mut server = postgres(&url);
    let ann = UserId::from("ann");
    let batch = Batch::new(BatchId::from("b-1"), DeviceId::from("d1"), vec![tag(1)]);
    server.handle_batch(&ann, &batch, NOW).unwrap();
    let before = server.tables().clone();
    // Every queue insert now fails, as a full disk would.
    client(&url)
        .batch_execute(
            "ALTER TABLE sync_queue ADD CONSTRAINT full_disk CHECK (op_id = 'op-1') NOT VALID",
        )
        .unwrap();
    let batch = Batch::new(
        BatchId::from("b-2"),
        DeviceId::from("d1"),
        (2..5).map(tag).collect(),
    );
    let epoch = server.store_epoch();
    let refused = server.handle_batch(&ann, &batch, NOW).unwrap_err();
    assert!(
        matches!(refused, RequestError::Unavailable { .. }),
        "{refused:?}"
    );
    assert_eq!(server.store_epoch(), epoch + 1);
    assert_eq!(server.tables(), &before, "memory is back to the database");
    drop(server);
    assert_eq!(PostgresStore::open(&url, NOW).unwrap().tables(), &before);
    client(&url)
        .batch_execute("ALTER TABLE sync_queue DROP CONSTRAINT full_disk")
        .unwrap();
    let mut server = postgres(&url);
    let answer = server.handle_batch(&ann, &batch, NOW).unwrap();
    assert!(
        answer
            .results
            .iter()
            .all(|r| r.status == rockhound_engine::server::wire::OpStatus::Applied)
    );
}

/// The transaction that last wrote an entity (its row's `xmin`).
fn writer_of(url: &str, user: &str, entity_id: &str) -> u32 {
    let mut c = client(url);
    let mut tx = c.transaction().unwrap();
    set_user(&mut tx, user).unwrap();
    let xmin: String = tx
        .query_one(
            "SELECT xmin::text FROM entities WHERE entity_id = $1",
            &[&entity_id],
        )
        .unwrap()
        .get(0);
    xmin.parse().unwrap()
}

#[test]
fn while_a_write_waits_on_the_database_other_users_are_decided_and_land_in_the_same_commit() {
    let Some(url) = database("pipeline") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut server = postgres(&url);
    // Another session holds a lock every write needs: ann's write waits on it.
    let mut other = client(&url);
    let mut blocker = other.transaction().unwrap();
    blocker
        .batch_execute("LOCK TABLE counters IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let mut ann = send(&mut server, "ann", "b-1", vec![tag(1)]).unwrap();
    assert!(still_writing(&mut ann), "ann's write waits for the lock");
    // The server is not held by it: bob's and cy's batches are decided and committed
    // meanwhile, and their answers wait behind ann's write (everything before them must
    // be durable first).
    let mut bob = send(&mut server, "bob", "b-2", vec![tag(2)]).unwrap();
    let mut cy = send(&mut server, "cy", "b-3", vec![tag(3)]).unwrap();
    assert_eq!(
        server.tables().sync_queue.len(),
        3,
        "bob's and cy's ops were decided"
    );
    assert!(still_writing(&mut bob) && still_writing(&mut cy));
    blocker.rollback().unwrap();
    for flushing in [ann, bob, cy] {
        runtime.block_on(flushing.wait()).unwrap();
    }
    // Bob's and cy's writes queued up while ann's ran, and went in one transaction after it.
    let ann = writer_of(&url, "ann", "t1");
    let bob = writer_of(&url, "bob", "t2");
    assert_eq!(bob, writer_of(&url, "cy", "t3"));
    assert!(
        ann < bob,
        "ann's transaction came first ({ann}, then {bob})"
    );
    // A read with nothing to write and nothing under way waits for nothing.
    assert!(matches!(server.begin_flush().unwrap(), Flushing::Done));
    let written = server.tables().clone();
    drop(server);
    assert_eq!(PostgresStore::open(&url, NOW).unwrap().tables(), &written);
}

#[test]
fn a_refused_write_fails_every_write_sealed_after_it_and_the_next_flush_reads_back() {
    let Some(url) = database("pipeline_refused") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut server = postgres(&url);
    runtime
        .block_on(
            send(&mut server, "ann", "b-1", vec![tag(1)])
                .unwrap()
                .wait(),
        )
        .unwrap();
    let before = server.tables().clone();
    let mut c = client(&url);
    c.batch_execute(
        "ALTER TABLE sync_queue ADD CONSTRAINT full_disk CHECK (op_id <> 'op-2') NOT VALID",
    )
    .unwrap();
    let mut other = client(&url);
    let mut blocker = other.transaction().unwrap();
    blocker
        .batch_execute("LOCK TABLE counters IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    // Ann's write will be refused; bob's rows are fine, but they were sealed from tables
    // that hold ann's commit, and a read saw it too: none of them may be answered.
    let mut ann = send(&mut server, "ann", "b-2", vec![tag(2)]).unwrap();
    assert!(still_writing(&mut ann));
    let bob = send(&mut server, "bob", "b-3", vec![tag(3)]).unwrap();
    let read = server.begin_flush().unwrap();
    blocker.rollback().unwrap();
    let refused = runtime.block_on(ann.wait()).unwrap_err();
    assert!(refused.0.contains("full_disk"), "{refused}");
    for flushing in [bob, read] {
        let refused = runtime.block_on(flushing.wait()).unwrap_err();
        assert!(refused.0.contains("an earlier write"), "{refused}");
    }
    // The next flush reads the tables back, moves the epoch on and is refused itself.
    let epoch = server.store_epoch();
    assert!(server.begin_flush().is_err());
    assert_eq!(server.store_epoch(), epoch + 1);
    assert_eq!(server.tables(), &before, "memory is back to the database");
    assert!(matches!(server.begin_flush().unwrap(), Flushing::Done));
    // Bob's resend goes through.
    runtime
        .block_on(
            send(&mut server, "bob", "b-3", vec![tag(3)])
                .unwrap()
                .wait(),
        )
        .unwrap();
    drop(server);
    let reopened = PostgresStore::open(&url, NOW).unwrap();
    assert_eq!(reopened.tables().sync_queue.len(), 2, "op-1 and bob's op-3");
}

#[test]
fn while_the_database_is_unreachable_every_request_is_503_until_the_tables_are_read_back() {
    let Some(url) = database("stale") else {
        return;
    };
    let base = std::env::var("ROCKHOUND_TEST_POSTGRES").unwrap();
    let mut server = postgres(&url);
    let ann = UserId::from("ann");
    let first = Batch::new(BatchId::from("b-1"), DeviceId::from("d1"), vec![tag(1)]);
    server.handle_batch(&ann, &first, NOW).unwrap();
    let before = server.tables().clone();
    // The database goes away: no new connections, and the store's own is cut.
    let mut admin = Client::connect(&base, NoTls).unwrap();
    admin
        .batch_execute(
            "ALTER DATABASE rockhound_test_stale ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = 'rockhound_test_stale'",
        )
        .unwrap();
    let batch = Batch::new(BatchId::from("b-2"), DeviceId::from("d1"), vec![tag(2)]);
    let unavailable =
        |answer: Result<_, RequestError>| matches!(answer, Err(RequestError::Unavailable { .. }));
    // The write fails and so does reading the tables back: the store is stale, and stays
    // so (every request 503) while the database cannot be reached.
    assert!(unavailable(server.handle_batch(&ann, &batch, NOW)));
    assert!(unavailable(server.handle_batch(&ann, &batch, NOW)));
    admin
        .batch_execute("ALTER DATABASE rockhound_test_stale ALLOW_CONNECTIONS true")
        .unwrap();
    // Reachable again: the first request reads the tables back (and is still answered 503,
    // its commits gone with the rest); memory is what the database holds.
    let epoch = server.store_epoch();
    assert!(unavailable(server.handle_batch(&ann, &batch, NOW)));
    assert!(server.store_epoch() > epoch);
    assert_eq!(server.tables(), &before, "memory is back to the database");
    // The resend goes through, once.
    let answer = server.handle_batch(&ann, &batch, NOW).unwrap();
    assert_eq!(
        answer.results[0].status,
        rockhound_engine::server::wire::OpStatus::Applied
    );
    drop(server);
    let reopened = PostgresStore::open(&url, NOW).unwrap();
    assert_eq!(reopened.tables().sync_queue.len(), 2);
}

#[test]
fn the_sql_cleanup_removes_exactly_what_the_servers_cleanup_removes() {
    let Some(url) = database("cleanup") else {
        return;
    };
    let mut server = postgres(&url);
    drive(&mut server);
    let later = Millis(NOW.0 + HISTORY_RETENTION_MS + 3_600_000);
    let retention = server.config().idempotency_retention_ms();
    // The SQL function, per user, in a transaction rolled back afterwards.
    let mut c = client(&url);
    let mut by_sql = 0;
    for user in ["ann", "bob"] {
        let mut tx = c.transaction().unwrap();
        set_user(&mut tx, user).unwrap();
        let removed: i64 = tx
            .query_one(
                "SELECT cleanup_old_sync_data($1, $2, $3, $4)",
                &[
                    &int(later.0, "now").unwrap(),
                    &int(retention, "retention").unwrap(),
                    &int(HISTORY_RETENTION_MS, "retention").unwrap(),
                    &int(METRICS_WINDOW_MS, "window").unwrap(),
                ],
            )
            .unwrap()
            .get(0);
        by_sql += removed;
        tx.rollback().unwrap();
    }
    let report = server.cleanup(later).unwrap();
    let by_rust = report.idempotency_keys
        + report.history_rows
        + report.conflicts
        + report.batches
        + report.metrics_windows;
    assert!(by_rust > 10, "the cleanup removes something: {report:?}");
    assert_eq!(by_sql, i64::try_from(by_rust).unwrap());
    // And the server's cleanup reached the database.
    drop(server);
    let reopened = PostgresStore::open(&url, later).unwrap();
    assert!(reopened.tables().sync_history.is_empty());
}

#[test]
fn control_characters_and_the_largest_numbers_in_a_payload_survive() {
    let Some(url) = database("payload") else {
        return;
    };
    let mut server = postgres(&url);
    let payload = json!({"id": "t1", "label": "a\u{0}b\u{1f}", "big": u64::MAX, "neg": i64::MIN,
                         "pi": std::f64::consts::PI, "tiny": 5e-324_f64});
    let create = op(1, EntityType::Tag, "t1", OpKind::Create, 0, payload);
    let batch = Batch::new(BatchId::from("b-1"), DeviceId::from("d1"), vec![create]);
    server
        .handle_batch(&UserId::from("ann"), &batch, NOW)
        .unwrap();
    let tables = server.tables().clone();
    drop(server);
    assert_eq!(PostgresStore::open(&url, NOW).unwrap().tables(), &tables);
}

#[test]
fn databases_it_must_not_use_are_refused_and_left_as_they_were() {
    let Some(url) = database("refusals") else {
        return;
    };
    // Another server holds the database.
    let first = PostgresStore::open(&url, NOW).unwrap();
    let second = PostgresStore::open(&url, NOW).unwrap_err();
    assert!(second.0.contains("in use by another server"), "{second}");
    drop(first);
    // A newer schema.
    client(&url)
        .batch_execute("INSERT INTO rockhound_schema (version) VALUES (99)")
        .unwrap();
    let newer = PostgresStore::open(&url, NOW).unwrap_err();
    assert!(newer.0.contains("newer rockhound"), "{newer}");
    // Someone else's tables of the same names.
    let Some(other) = database("foreign") else {
        return;
    };
    client(&other)
        .batch_execute("CREATE TABLE entities (id int); INSERT INTO entities VALUES (7)")
        .unwrap();
    let foreign = PostgresStore::open(&other, NOW).unwrap_err();
    assert!(
        foreign.0.contains("not rockhound's (entities)"),
        "{foreign}"
    );
    let kept: i32 = client(&other)
        .query_one("SELECT id FROM entities", &[])
        .unwrap()
        .get(0);
    assert_eq!(kept, 7);
    // A server that is not there.
    let refused = PostgresStore::open("postgres://nobody@127.0.0.1:1/none", NOW).unwrap_err();
    assert!(refused.0.contains("cannot connect"), "{refused}");
}

#[test]
fn months_are_named_by_the_calendar() {
    assert_eq!(month(Millis(0)), "1970-01");
    assert_eq!(
        month(Millis(951_782_400_000)),
        "2000-02-29".get(..7).unwrap()
    );
    assert_eq!(month(Millis(1_780_000_000_000)), "2026-05");
    assert_eq!(month(Millis(u64::MAX)), month(Millis(u64::MAX)));
}
