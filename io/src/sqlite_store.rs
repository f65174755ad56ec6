//! The SQLite store: `rockhound serve`'s default database, embedded (SQLite is compiled
//! into the binary, so a fresh machine needs nothing installed).
//!
//! Each of the server's tables is a table of the database file (docs/database.md lists
//! them): key columns a person can query with `sqlite3`, and the row itself as JSON. The
//! engine reads its tables in memory, so the store keeps them there too, as a cache of the
//! file, and writes through the commit pipeline (`crate::pipeline`): a flush is one
//! transaction, committed durably (WAL journal, `synchronous = FULL`) by the connection's
//! thread, for a whole batch and whatever other requests committed meanwhile; nothing is
//! answered before its flush is durable. `rockhound serve` runs it pipelined (the flush
//! waited for after the server's lock is released, flushes that queue up written
//! together); the simulation runs it with every flush waited for. A failed flush rolls the
//! transaction back, reads the tables back from the file and moves the epoch on, so every
//! request that made or read those commits is answered 503. On open the tables are read
//! back and the indexes derived from them (the change index, live children, per-user
//! counts) rebuilt.
//!
//! The file carries its schema version (`PRAGMA user_version`); a file written by a newer
//! rockhound, a file that is not SQLite, or a database holding other tables is refused with
//! a message that says so, and nothing in it is changed.

use crate::pending::{Pending, gone};
use crate::pipeline::{self, Backend, Durable};
use rockhound_engine::entity::EntityType;
use rockhound_engine::ids::{
    BatchId, ConflictId, DeviceId, EntityId, IdempotencyKey, OpId, UserId,
};
use rockhound_engine::server::StoreError;
use rockhound_engine::server::tables::{StoredEntity, Tables};
use rockhound_engine::time::Millis;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// The tables, version 1. Row payloads are JSON; keys are columns.
const SCHEMA_V1: &str = "
CREATE TABLE entities (
    entity_type TEXT NOT NULL, entity_id TEXT NOT NULL, user_id TEXT NOT NULL,
    cursor INTEGER NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (entity_type, entity_id));
CREATE INDEX entities_by_cursor ON entities (user_id, cursor);
CREATE TABLE sync_queue (
    user_id TEXT NOT NULL, op_id TEXT NOT NULL, row TEXT NOT NULL,
    PRIMARY KEY (user_id, op_id));
CREATE TABLE sync_idempotency_keys (
    user_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (user_id, idempotency_key));
CREATE TABLE sync_history (
    user_id TEXT NOT NULL, seq INTEGER NOT NULL, row TEXT NOT NULL,
    PRIMARY KEY (user_id, seq));
CREATE TABLE sync_conflicts (
    conflict_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, created_seq INTEGER NOT NULL,
    record TEXT NOT NULL);
CREATE TABLE sync_batches (
    user_id TEXT NOT NULL, batch_id TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (user_id, batch_id));
CREATE TABLE sync_state (
    user_id TEXT NOT NULL, device_id TEXT NOT NULL, state TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id));
CREATE TABLE sync_metrics (
    user_id TEXT NOT NULL, window_start_ms INTEGER NOT NULL, window TEXT NOT NULL,
    PRIMARY KEY (user_id, window_start_ms));
CREATE TABLE user_seqs (user_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
";

/// The tables of version 1, to tell a rockhound database from another one.
const TABLES_V1: &[&str] = &[
    "counters",
    "entities",
    "sync_batches",
    "sync_conflicts",
    "sync_history",
    "sync_idempotency_keys",
    "sync_metrics",
    "sync_queue",
    "sync_state",
    "user_seqs",
];

/// The server's tables in a SQLite database, kept in memory as well, written through the
/// commit pipeline (`crate::pipeline`).
#[derive(Debug)]
pub struct SqliteStore(Durable<Sqlite>);

pipeline::durable_store!(SqliteStore);

/// The connection, owned by the pipeline's thread, and the file's name for messages.
pub(crate) struct Sqlite(Connection, String);

/// One row write or delete: its statement and its values.
pub(crate) type Row = (&'static str, Vec<SqlValue>);

fn fail(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what}: {error}"))
}

fn int(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError(format!("{what} {value} is beyond SQLite's range")))
}

fn json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| fail("cannot encode a row", e))
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`; `:memory:` is a private in-memory
    /// database (the simulation's, which lives as long as the store). Every flush waits
    /// for its commit (what the simulation needs); see [`SqliteStore::pipelined`].
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let path = path.to_owned();
        let durable = Durable::start("sqlite", move || open_connection(&path))?;
        Ok(SqliteStore(durable))
    }

    /// The same store with its flushes pipelined: a flush begun under the server's lock is
    /// committed after the lock is released, together with the flushes that queue up
    /// meanwhile (`rockhound serve`).
    pub fn pipelined(mut self) -> SqliteStore {
        self.0.set_pipelined(true);
        self
    }
}

/// Opens the database at `path`, refusing what this build must not use, creates the
/// tables of a new one, and takes the exclusive lock.
fn open_connection(path: &Path) -> Result<Sqlite, StoreError> {
    {
        let shown = path.display();
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| fail(&format!("cannot open the database {shown}"), e))?;
        // Another server holding the file is refused at once, not after a wait.
        conn.busy_timeout(std::time::Duration::ZERO)
            .map_err(|e| fail(&format!("cannot set up {shown}"), e))?;
        let in_use = |e: &rusqlite::Error| e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| {
                if in_use(&e) {
                    fail(&format!("{shown} is in use by another server"), e)
                } else {
                    fail(&format!("{shown} is not a readable SQLite database"), e)
                }
            })?;
        if version > SCHEMA_VERSION {
            return Err(StoreError(format!(
                "{shown} was written by a newer rockhound (schema version {version}; this \
                 build knows up to {SCHEMA_VERSION}); refusing to open it"
            )));
        }
        if version < 0 {
            return Err(StoreError(format!(
                "{shown} has schema version {version}, which no rockhound writes; refusing \
                 to open it"
            )));
        }
        let present = table_names(&conn).map_err(|e| fail(&format!("cannot read {shown}"), e))?;
        if version == 0 && !present.is_empty() {
            return Err(StoreError(format!(
                "{shown} holds tables that are not rockhound's ({}); refusing to use it",
                present.join(", ")
            )));
        }
        if version == SCHEMA_VERSION && present != TABLES_V1 {
            return Err(StoreError(format!(
                "{shown} says schema version {version} but its tables are [{}]; refusing \
                 to use it",
                present.join(", ")
            )));
        }
        // The tables are cached in memory, so one process owns the file: the exclusive lock
        // is taken now (a second server on the same file is refused here) and held until
        // the store closes.
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = FULL; BEGIN IMMEDIATE; COMMIT;",
        )
        .map_err(|e| {
            let what = if in_use(&e) {
                format!("{shown} is in use by another server")
            } else {
                format!("cannot set up {shown}")
            };
            fail(&what, e)
        })?;
        if version == 0 {
            // Migration 0 → 1: the whole schema, in one transaction.
            let script = format!("BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;");
            conn.execute_batch(&script)
                .map_err(|e| fail(&format!("cannot create the tables in {shown}"), e))?;
        }
        Ok(Sqlite(conn, shown.to_string()))
    }
}

fn text_value(value: &str) -> SqlValue {
    SqlValue::Text(value.to_owned())
}

fn int_value(value: u64, what: &str) -> Result<SqlValue, StoreError> {
    int(value, what).map(SqlValue::Integer)
}

fn json_value<T: Serialize>(value: &T) -> Result<SqlValue, StoreError> {
    json(value).map(SqlValue::Text)
}

impl Sqlite {
    /// Runs `rows` in one durable transaction; on `Err` none of it holds.
    fn transaction<'a>(&self, mut rows: impl Iterator<Item = &'a Row>) -> Result<(), StoreError> {
        let run = |sql: &str, values: &[SqlValue]| {
            self.0
                .prepare_cached(sql)
                .and_then(|mut statement| statement.execute(rusqlite::params_from_iter(values)))
                .map(drop)
        };
        let written = run("BEGIN IMMEDIATE", &[])
            .and_then(|()| rows.try_for_each(|(sql, values)| run(sql, values)))
            .and_then(|()| run("COMMIT", &[]));
        if written.is_err() {
            let _ = self.0.execute_batch("ROLLBACK");
        }
        written.map_err(|e| fail("cannot write", e))
    }
}

impl Backend for Sqlite {
    type Rows = Vec<Row>;
    type Removals = Vec<Row>;

    // Long on purpose: one upsert per table, in schema order.
    fn seal(tables: &Tables, pending: &Pending) -> Result<Vec<Row>, StoreError> {
        let mut rows: Vec<Row> = Vec::new();
        for key in &pending.entities {
            let row = &tables.entities[key];
            rows.push((
                "INSERT OR REPLACE INTO entities VALUES (?1, ?2, ?3, ?4, ?5)",
                vec![
                    text_value(key.0.as_str()),
                    text_value(&key.1.0),
                    text_value(&row.owner.0),
                    int_value(row.cursor, "cursor")?,
                    json_value(&row.state)?,
                ],
            ));
        }
        for key in &pending.queue {
            rows.push((
                "INSERT OR REPLACE INTO sync_queue VALUES (?1, ?2, ?3)",
                vec![
                    text_value(&key.0.0),
                    text_value(&key.1.0),
                    json_value(&tables.sync_queue[key])?,
                ],
            ));
        }
        for key in &pending.keys {
            rows.push((
                "INSERT INTO sync_idempotency_keys VALUES (?1, ?2, ?3)",
                vec![
                    text_value(&key.0.0),
                    text_value(&key.1.0),
                    json_value(&tables.sync_idempotency_keys[key])?,
                ],
            ));
        }
        for key in &pending.history {
            rows.push((
                "INSERT INTO sync_history VALUES (?1, ?2, ?3)",
                vec![
                    text_value(&key.0.0),
                    int_value(key.1, "history row")?,
                    json_value(&tables.sync_history[key])?,
                ],
            ));
        }
        for (id, created) in &pending.conflicts {
            // A conflict keeps the commit that created it (its place in the user's list).
            let (user, record) = &tables.sync_conflicts[id];
            rows.push((
                "INSERT INTO sync_conflicts VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (conflict_id) DO UPDATE SET record = excluded.record",
                vec![
                    text_value(&id.0),
                    text_value(&user.0),
                    int_value(*created, "conflict")?,
                    json_value(record)?,
                ],
            ));
        }
        for key in &pending.batches {
            rows.push((
                "INSERT OR REPLACE INTO sync_batches VALUES (?1, ?2, ?3)",
                vec![
                    text_value(&key.0.0),
                    text_value(&key.1.0),
                    json_value(&tables.sync_batches[key])?,
                ],
            ));
        }
        for key in &pending.devices {
            rows.push((
                "INSERT OR REPLACE INTO sync_state VALUES (?1, ?2, ?3)",
                vec![
                    text_value(&key.0.0),
                    text_value(&key.1.0),
                    json_value(&tables.sync_state[key])?,
                ],
            ));
        }
        for key in &pending.metrics {
            rows.push((
                "INSERT OR REPLACE INTO sync_metrics VALUES (?1, ?2, ?3)",
                vec![
                    text_value(&key.0.0),
                    int_value(key.1.0, "metrics window")?,
                    json_value(&tables.sync_metrics[key])?,
                ],
            ));
        }
        for user in &pending.users {
            rows.push((
                "INSERT OR REPLACE INTO user_seqs VALUES (?1, ?2)",
                vec![
                    text_value(&user.0),
                    int_value(tables.user_seqs[user], "commit sequence number")?,
                ],
            ));
        }
        rows.push((
            "INSERT OR REPLACE INTO counters VALUES ('seq', ?1)",
            vec![int_value(tables.seq, "commit count")?],
        ));
        Ok(rows)
    }

    fn removals(before: &Tables, after: &Tables) -> Result<Vec<Row>, StoreError> {
        let mut rows: Vec<Row> = Vec::new();
        for (user, key) in gone(&before.sync_idempotency_keys, &after.sync_idempotency_keys) {
            rows.push((
                "DELETE FROM sync_idempotency_keys WHERE user_id = ?1 AND idempotency_key = ?2",
                vec![text_value(&user.0), text_value(&key.0)],
            ));
        }
        for (user, seq) in gone(&before.sync_history, &after.sync_history) {
            rows.push((
                "DELETE FROM sync_history WHERE user_id = ?1 AND seq = ?2",
                vec![text_value(&user.0), int_value(*seq, "history row")?],
            ));
        }
        for id in gone(&before.sync_conflicts, &after.sync_conflicts) {
            rows.push((
                "DELETE FROM sync_conflicts WHERE conflict_id = ?1",
                vec![text_value(&id.0)],
            ));
        }
        for (user, batch_id) in gone(&before.sync_batches, &after.sync_batches) {
            rows.push((
                "DELETE FROM sync_batches WHERE user_id = ?1 AND batch_id = ?2",
                vec![text_value(&user.0), text_value(&batch_id.0)],
            ));
        }
        for (user, start) in gone(&before.sync_metrics, &after.sync_metrics) {
            rows.push((
                "DELETE FROM sync_metrics WHERE user_id = ?1 AND window_start_ms = ?2",
                vec![text_value(&user.0), int_value(start.0, "metrics window")?],
            ));
        }
        Ok(rows)
    }

    fn write_group(&mut self, group: &[Vec<Row>]) -> Result<(), StoreError> {
        self.transaction(group.iter().flatten())
    }

    fn remove(&mut self, removals: Vec<Row>) -> Result<(), StoreError> {
        self.transaction(removals.iter())
    }

    fn load(&mut self) -> Result<Tables, StoreError> {
        load(&self.0).map_err(|e| StoreError(format!("{}: {}", self.1, e.0)))
    }
}

fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )?;
    let names = statement.query_map([], |row| row.get::<_, String>(0))?;
    names.collect()
}

/// Reads every row of `sql` (its last column JSON), each decoded by `row`.
fn rows<T>(
    conn: &Connection,
    table: &str,
    sql: &str,
    mut row: impl FnMut(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = conn
        .prepare(sql)
        .map_err(|e| fail(&format!("cannot read {table}"), e))?;
    let mut cursor = statement
        .query([])
        .map_err(|e| fail(&format!("cannot read {table}"), e))?;
    let mut out = Vec::new();
    while let Some(r) = cursor
        .next()
        .map_err(|e| fail(&format!("cannot read {table}"), e))?
    {
        out.push(
            row(r).map_err(|e| StoreError(format!("a row of {table} is unreadable: {}", e.0)))?,
        );
    }
    Ok(out)
}

fn text(row: &rusqlite::Row<'_>, index: usize) -> Result<String, StoreError> {
    row.get(index).map_err(|e| fail("column", e))
}

fn number(row: &rusqlite::Row<'_>, index: usize) -> Result<u64, StoreError> {
    let value: i64 = row.get(index).map_err(|e| fail("column", e))?;
    u64::try_from(value).map_err(|_| StoreError(format!("negative number {value}")))
}

fn decode<T: DeserializeOwned>(row: &rusqlite::Row<'_>, index: usize) -> Result<T, StoreError> {
    serde_json::from_str(&text(row, index)?).map_err(|e| fail("JSON", e))
}

/// Reads the tables back and rebuilds what is derived from them.
// Long on purpose: one read per table, in schema order, then the derived indexes; splitting
// it would only scatter the list.
fn load(conn: &Connection) -> Result<Tables, StoreError> {
    let mut tables = Tables::default();
    let entities = rows(
        conn,
        "entities",
        "SELECT entity_type, entity_id, user_id, cursor, state FROM entities",
        |row| {
            let entity_type: EntityType =
                text(row, 0)?.parse().map_err(|e| fail("entity type", e))?;
            let key = (entity_type, EntityId(text(row, 1)?));
            let stored = StoredEntity {
                owner: UserId(text(row, 2)?),
                cursor: number(row, 3)?,
                state: decode(row, 4)?,
            };
            Ok((key, stored))
        },
    )?;
    for (key, stored) in entities {
        tables.restore_entity(key, stored);
    }
    for (user, op_id, row) in rows(conn, "sync_queue", "SELECT * FROM sync_queue", |row| {
        Ok((UserId(text(row, 0)?), OpId(text(row, 1)?), decode(row, 2)?))
    })? {
        tables.sync_queue.insert((user, op_id), row);
    }
    let keys = "SELECT * FROM sync_idempotency_keys";
    for (user, key, record) in rows(conn, "sync_idempotency_keys", keys, |row| {
        let key = IdempotencyKey(text(row, 1)?);
        Ok((UserId(text(row, 0)?), key, decode(row, 2)?))
    })? {
        tables.sync_idempotency_keys.insert((user, key), record);
    }
    for (user, seq, row) in rows(conn, "sync_history", "SELECT * FROM sync_history", |row| {
        Ok((UserId(text(row, 0)?), number(row, 1)?, decode(row, 2)?))
    })? {
        tables.sync_history.insert((user, seq), row);
    }
    let conflicts = "SELECT * FROM sync_conflicts";
    for (id, user, created, record) in rows(conn, "sync_conflicts", conflicts, |row| {
        let id = ConflictId(text(row, 0)?);
        Ok((id, UserId(text(row, 1)?), number(row, 2)?, decode(row, 3)?))
    })? {
        tables.restore_conflict(id, user, created, record);
    }
    let batches = "SELECT * FROM sync_batches";
    for (user, batch_id, record) in rows(conn, "sync_batches", batches, |row| {
        Ok((
            UserId(text(row, 0)?),
            BatchId(text(row, 1)?),
            decode(row, 2)?,
        ))
    })? {
        tables.sync_batches.insert((user, batch_id), record);
    }
    for (user, device_id, state) in rows(conn, "sync_state", "SELECT * FROM sync_state", |row| {
        Ok((
            UserId(text(row, 0)?),
            DeviceId(text(row, 1)?),
            decode(row, 2)?,
        ))
    })? {
        tables.restore_device(user, device_id, state);
    }
    let metrics = "SELECT * FROM sync_metrics";
    for (user, start, window) in rows(conn, "sync_metrics", metrics, |row| {
        Ok((UserId(text(row, 0)?), number(row, 1)?, decode(row, 2)?))
    })? {
        tables.sync_metrics.insert((user, Millis(start)), window);
    }
    for (user, seq) in rows(conn, "user_seqs", "SELECT * FROM user_seqs", |row| {
        Ok((UserId(text(row, 0)?), number(row, 1)?))
    })? {
        tables.user_seqs.insert(user, seq);
    }
    let counters = "SELECT value FROM counters WHERE name = 'seq'";
    tables.seq = rows(conn, "counters", counters, |row| number(row, 0))?
        .first()
        .copied()
        .unwrap_or(0);
    Ok(tables)
}

#[cfg(test)]
mod tests;
