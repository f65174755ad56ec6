//! The SQLite store against the in-memory one: the same requests leave the same tables,
//! which come back whole after a reopen; failed writes change nothing; files it must not
//! use are refused with a message that says why.

use super::*;
use crate::store_tests::{NOW, config, drive, op};
use rockhound_engine::ids::{BatchId, DeviceId, EntityId, UserId};
use rockhound_engine::op::{Batch, Op, OpKind};
use rockhound_engine::server::tables::{MemoryStore, ServerStore};
use rockhound_engine::server::{RequestError, Server};
use serde_json::{Value, json};

fn sqlite(path: &Path) -> Server<SqliteStore> {
    Server::with_store(config(), SqliteStore::open(path).unwrap())
}

#[test]
fn the_same_requests_leave_the_same_tables_and_a_reopen_brings_them_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rockhound.db");
    let mut memory = Server::with_store(config(), MemoryStore::default());
    let mut on_disk = sqlite(&path);
    drive(&mut memory);
    drive(&mut on_disk);
    let tables = memory.tables();
    assert_eq!(tables.sync_conflicts.len(), 2, "one resolved, one open");
    assert_eq!(tables.user_counts[&UserId::from("ann")].open_conflicts, 1);
    assert_eq!(
        tables.sync_idempotency_keys.len(),
        1,
        "only the last op's key is left"
    );
    assert!(
        tables.entities[&(EntityType::FindLog, EntityId::from("f1"))]
            .state
            .deleted
    );
    assert_eq!(on_disk.tables(), memory.tables());
    drop(on_disk);
    let reopened = SqliteStore::open(&path).unwrap();
    // Every table, and every index derived from them, equals the in-memory server's.
    assert_eq!(reopened.tables(), memory.tables());
    // The user's next commit continues the sequence (no cursor goes back).
    assert_eq!(
        reopened.tables().next_seq(&UserId::from("ann")),
        memory.tables().next_seq(&UserId::from("ann"))
    );
}

#[test]
fn a_group_the_database_refuses_is_undone_whole_and_its_requests_answered_503() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rockhound.db");
    let mut server = sqlite(&path);
    let ann = UserId::from("ann");
    let first = op(
        1,
        EntityType::Tag,
        "t1",
        OpKind::Create,
        0,
        json!({"id": "t1", "label": "a"}),
    );
    let batch = Batch::new(BatchId::from("b-1"), DeviceId::from("d1"), vec![first]);
    server.handle_batch(&ann, &batch, NOW).unwrap();
    drop(server);
    // A trigger makes every history insert fail, as a full disk would.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER full BEFORE INSERT ON sync_history \
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
        )
        .unwrap();
    let mut server = sqlite(&path);
    let before = server.tables().clone();
    let ops: Vec<Op> = (2..5)
        .map(|n| {
            let id = format!("t{n}");
            op(
                n,
                EntityType::Tag,
                &id,
                OpKind::Create,
                0,
                json!({"id": id, "label": "b"}),
            )
        })
        .collect();
    let batch = Batch::new(BatchId::from("b-2"), DeviceId::from("d1"), ops);
    // Ops are decided and applied in memory one by one; the batch's flush fails, so the
    // whole group is undone and the request refused: no answer says `applied`.
    let epoch = server.store_epoch();
    let refused = server.handle_batch(&ann, &batch, NOW).unwrap_err();
    assert!(
        matches!(refused, RequestError::Unavailable { .. }),
        "{refused:?}"
    );
    assert_eq!(server.store_epoch(), epoch + 1);
    assert_eq!(
        server.tables(),
        &before,
        "memory is back to what the file says"
    );
    drop(server);
    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(
        reopened.tables(),
        &before,
        "nothing of the group is on disk"
    );
    // Once the disk has room, the resend applies every op.
    drop(reopened);
    let fix = Connection::open(&path).unwrap();
    fix.execute_batch("DROP TRIGGER full;").unwrap();
    drop(fix);
    let mut server = sqlite(&path);
    let answer = server.handle_batch(&ann, &batch, NOW).unwrap();
    let statuses: Vec<Value> = answer
        .results
        .iter()
        .map(|r| serde_json::to_value(r).unwrap()["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [json!("applied"), json!("applied"), json!("applied")]
    );
}

#[test]
fn files_it_must_not_use_are_refused_and_left_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |path: &Path| SqliteStore::open(path).unwrap_err().0;

    let garbage = dir.path().join("garbage.db");
    std::fs::write(
        &garbage,
        b"this is not a database, just some bytes that are long enough",
    )
    .unwrap();
    let before = std::fs::read(&garbage).unwrap();
    let message = refused(&garbage);
    assert!(
        message.contains("not a readable SQLite database"),
        "{message}"
    );
    assert_eq!(std::fs::read(&garbage).unwrap(), before);

    let newer = dir.path().join("newer.db");
    drop(SqliteStore::open(&newer).unwrap());
    Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 7;")
        .unwrap();
    let message = refused(&newer);
    assert!(
        message.contains("newer rockhound (schema version 7"),
        "{message}"
    );

    let foreign = dir.path().join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE invoices (id INTEGER);")
        .unwrap();
    let message = refused(&foreign);
    assert!(message.contains("not rockhound's (invoices)"), "{message}");
    let tables = table_names(&Connection::open(&foreign).unwrap()).unwrap();
    assert_eq!(tables, ["invoices"], "nothing was created in it");

    // One server per file: a second store on a file in use is refused.
    let owned = dir.path().join("owned.db");
    let first = SqliteStore::open(&owned).unwrap();
    let message = refused(&owned);
    assert!(message.contains("is in use by another server"), "{message}");
    drop(first);
    drop(SqliteStore::open(&owned).unwrap());

    let negative = dir.path().join("negative.db");
    Connection::open(&negative)
        .unwrap()
        .execute_batch("PRAGMA user_version = -3;")
        .unwrap();
    let message = refused(&negative);
    assert!(
        message.contains("schema version -3, which no rockhound writes"),
        "{message}"
    );

    let damaged = dir.path().join("damaged.db");
    drop(SqliteStore::open(&damaged).unwrap());
    Connection::open(&damaged)
        .unwrap()
        .execute(
            "INSERT INTO sync_queue VALUES ('ann', 'op-1', '{not json')",
            [],
        )
        .unwrap();
    let message = refused(&damaged);
    assert!(
        message.contains("a row of sync_queue is unreadable"),
        "{message}"
    );
}

#[test]
fn a_number_beyond_sqlites_range_is_a_clear_error_not_a_wrapped_value() {
    assert!(
        int(u64::MAX, "metrics window")
            .unwrap_err()
            .0
            .contains("beyond SQLite's range")
    );
    assert_eq!(int(i64::MAX as u64, "x").unwrap(), i64::MAX);
}
