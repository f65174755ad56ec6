//! The PostgreSQL store: `rockhound serve --db postgres://…`.
//!
//! The schema is the seed's (migrations/0001_schema.sql, listed in docs/database.md): its
//! seven tables plus the entities and the per-user commit counts, `updated_at` triggers,
//! `sync_history` partitioned by month, views for a person reading the database, the seed's
//! `cleanup_old_sync_data` as a SQL function, and row-level security that confines every
//! statement to one user. The store sets that user (`rockhound.user_id`) at the start of
//! each user's part of a transaction, so a write the engine got wrong for another user's
//! row is refused by the database itself, and the tables are read back one user at a time.
//!
//! Like the SQLite store, the tables are kept in memory as a cache (the engine decides from
//! them): a commit is checked and applied in memory, and a flush writes every row the
//! commits since the last flush changed in one transaction (PostgreSQL's commit is durable
//! before it returns). The write is a pipeline: `begin_flush` seals the rows under the
//! server's lock and hands them to the connection's thread, and the request waits for the
//! commit after releasing the lock, so other requests (other users' batches) are decided
//! while the database writes; the writes that queue up meanwhile go in the next
//! transaction together (a group commit across requests and users). Writes are made in the
//! order they were sealed, and an answer waits for its own write, which covers everything
//! committed before it. A refused write fails every write sealed after it; the next flush
//! reads the tables back and moves the epoch on, so every request that made or read those
//! commits is answered 503. One server per database: the store holds an advisory lock for
//! as long as it is open.
//!
//! The `postgres` client blocks on a runtime of its own, which must not run inside the
//! server's: the connection lives on a thread of its own and the store sends it jobs.

use crate::pipeline::{self, Durable};
use connection::Session;
use postgres::{Client, Transaction};
use rockhound_engine::entity::EntityType;
use rockhound_engine::ids::{
    BatchId, ConflictId, DeviceId, EntityId, IdempotencyKey, OpId, UserId,
};
use rockhound_engine::server::StoreError;
use rockhound_engine::server::tables::{StoredEntity, Tables};
use rockhound_engine::time::Millis;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The migrations, in order: version n is the n-th.
const MIGRATIONS: &[&str] = &[include_str!("postgres_store/migrations/0001_schema.sql")];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Months of `sync_history` partitions created ahead of the server's clock at start.
const MONTHS_AHEAD: u32 = 2;

/// The advisory lock a server holds on its database (any fixed number; "rockhnd" in ASCII).
const SERVER_LOCK: i64 = 0x0072_6f63_6b68_6e64;

/// Every table this build's schema creates; another one with one of these names, in a
/// database without rockhound's schema record, is refused.
const OWN_TABLES: &[&str] = &[
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

/// How many times (100 ms apart) a starting server tries for the lock before it gives up.
const LOCK_WAIT_TRIES: u32 = 30;

/// The server's tables in a PostgreSQL database, kept in memory as well, written through
/// the commit pipeline (`crate::pipeline`).
#[derive(Debug)]
pub struct PostgresStore(Durable<Session>);

pipeline::durable_store!(PostgresStore);

fn fail(what: &str, error: impl std::fmt::Display) -> StoreError {
    // The postgres error's Display is terse ("db error"); its source says what happened.
    StoreError(format!("{what}: {error}"))
}

fn pg(what: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |error| StoreError(format!("{what}: {}", detail(&error)))
}

/// What a postgres error says, with its cause ("error connecting to server" alone says
/// little; "Connection refused" is the part that helps).
fn detail(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return db.message().to_owned();
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

fn int(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError(format!("{what} {value} is beyond PostgreSQL's bigint")))
}

fn json<T: Serialize>(value: &T) -> Result<Value, StoreError> {
    serde_json::to_value(value).map_err(|e| fail("cannot encode a row", e))
}

/// The `YYYY-MM` month of a server time.
fn month(at: Millis) -> String {
    let days = i64::try_from(at.0 / 86_400_000).unwrap_or(i64::MAX / 2);
    let (year, month) = civil_month(days);
    format!("{year:04}-{month:02}")
}

/// The year and month of a day counted from 1970-01-01 (Howard Hinnant's algorithm).
fn civil_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, u32::try_from(month).unwrap_or(1))
}

impl PostgresStore {
    /// Connects to the database at `url`, applies the migrations it lacks and reads the
    /// tables back. Refused: a superuser or BYPASSRLS role (row-level security would not
    /// apply), a newer schema, tables of the same names that are not rockhound's, and a
    /// database another server holds. Its flushes are pipelined (the simulation never runs
    /// on PostgreSQL).
    pub fn open(url: &str, now: Millis) -> Result<PostgresStore, StoreError> {
        let mut ahead = vec![month(now)];
        for n in 1..=MONTHS_AHEAD {
            ahead.push(month(Millis(now.0 + u64::from(n) * 31 * 86_400_000)));
        }
        let url = url.to_owned();
        let mut durable = Durable::start("postgres", move || {
            let mut session = Session::connect(&url)?;
            prepare(&mut session.client)?;
            session.ensure_partitions(&ahead)?;
            Ok(session)
        })?;
        durable.set_pipelined(true);
        Ok(PostgresStore(durable))
    }
}

/// Confines the rest of the transaction to `user`'s rows (until the next call).
fn set_user(tx: &mut Transaction<'_>, user: &str) -> Result<(), StoreError> {
    tx.execute("SELECT set_config('rockhound.user_id', $1, true)", &[&user])
        .map(drop)
        .map_err(pg("cannot set the user"))
}

/// Checks the role and the schema, takes the server lock and applies the migrations the
/// database lacks (each in its own transaction, with its version recorded).
fn prepare(client: &mut Client) -> Result<(), StoreError> {
    let role = client
        .query_one(
            "SELECT current_user::text, rolsuper OR rolbypassrls FROM pg_roles \
             WHERE rolname = current_user",
            &[],
        )
        .map_err(pg("cannot read the role"))?;
    let (name, bypasses): (String, bool) = (role.get(0), role.get(1));
    if bypasses {
        return Err(StoreError(format!(
            "the role {name} is a superuser or has BYPASSRLS, so row-level security would not \
             confine it; connect as an ordinary role (docs/database.md shows how to make one)"
        )));
    }
    // A server killed a moment ago holds the lock until PostgreSQL sees its connection
    // gone: a restart waits a little for it.
    let mut locked = take_lock(client)?;
    for _ in 0..LOCK_WAIT_TRIES {
        if locked {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        locked = take_lock(client)?;
    }
    if !locked {
        return Err(StoreError(
            "the database is in use by another server; refusing to open it".to_owned(),
        ));
    }
    let version = schema_version(client)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError(format!(
            "the database was written by a newer rockhound (schema version {version}; this \
             build knows up to {SCHEMA_VERSION}); refusing to open it"
        )));
    }
    if version == 0 {
        let present = present_tables(client)?;
        if !present.is_empty() {
            return Err(StoreError(format!(
                "the database holds tables that are not rockhound's ({}); refusing to use it",
                present.join(", ")
            )));
        }
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS rockhound_schema (
                     version integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .map_err(pg("cannot create the schema record"))?;
    }
    for (index, script) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let next = index as i32 + 1;
        let mut tx = client.transaction().map_err(pg("cannot begin"))?;
        tx.batch_execute(script)
            .map_err(|e| pg("a migration failed")(e).with_context(&format!("migration {next}")))?;
        tx.execute(
            "INSERT INTO rockhound_schema (version) VALUES ($1)",
            &[&next],
        )
        .map_err(pg("cannot record the migration"))?;
        tx.commit().map_err(pg("cannot commit the migration"))?;
    }
    Ok(())
}

/// Takes the lock one server holds on its database; false when another server has it.
fn take_lock(client: &mut Client) -> Result<bool, StoreError> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&SERVER_LOCK])
        .map_err(pg("cannot take the server lock"))?
        .get(0))
}

/// The highest migration applied; 0 for a database without rockhound's schema.
fn schema_version(client: &mut Client) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('rockhound_schema') IS NOT NULL", &[])
        .map_err(pg("cannot read the schema"))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let version: Option<i32> = client
        .query_one("SELECT max(version) FROM rockhound_schema", &[])
        .map_err(pg("cannot read the schema version"))?
        .get(0);
    Ok(i64::from(version.unwrap_or(0)))
}

/// Which of rockhound's table names the database already has.
fn present_tables(client: &mut Client) -> Result<Vec<String>, StoreError> {
    let names: Vec<&str> = OWN_TABLES.to_vec();
    let rows = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = ANY($1) ORDER BY 1",
            &[&names],
        )
        .map_err(pg("cannot list the tables"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

trait Context {
    fn with_context(self, what: &str) -> StoreError;
}

impl Context for StoreError {
    fn with_context(self, what: &str) -> StoreError {
        StoreError(format!("{what}: {}", self.0))
    }
}

fn decode<T: DeserializeOwned>(table: &str, value: Value) -> Result<T, StoreError> {
    serde_json::from_value(value).map_err(|e| fail(&format!("a row of {table} is unreadable"), e))
}

fn unsigned(table: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| {
        StoreError(format!(
            "a row of {table} holds the negative number {value}"
        ))
    })
}

/// Reads the tables back, one user at a time under that user's row-level security, and
/// rebuilds what is derived from them.
fn load(client: &mut Client) -> Result<Tables, StoreError> {
    let mut tables = Tables::default();
    let mut tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .map_err(pg("cannot begin"))?;
    let seq: Option<i64> = tx
        .query_opt("SELECT value FROM counters WHERE name = 'seq'", &[])
        .map_err(pg("cannot read counters"))?
        .map(|row| row.get(0));
    tables.seq = unsigned("counters", seq.unwrap_or(0))?;
    let users = tx
        .query("SELECT user_id, seq FROM user_seqs ORDER BY user_id", &[])
        .map_err(pg("cannot read user_seqs"))?;
    for row in users {
        let user = UserId(row.get(0));
        tables
            .user_seqs
            .insert(user.clone(), unsigned("user_seqs", row.get(1))?);
        set_user(&mut tx, &user.0)?;
        load_user(&mut tx, &user, &mut tables)?;
    }
    tx.commit().map_err(pg("cannot finish reading"))?;
    Ok(tables)
}

/// Reads one user's rows (row-level security shows no other user's).
// Long on purpose: one read per table, in schema order.
fn load_user(
    tx: &mut Transaction<'_>,
    user: &UserId,
    tables: &mut Tables,
) -> Result<(), StoreError> {
    let read = |tx: &mut Transaction<'_>, table: &'static str, sql: &str| {
        tx.query(sql, &[])
            .map_err(pg("cannot read"))
            .map_err(|e| e.with_context(table))
    };
    let sql = "SELECT entity_type, entity_id, cursor, state FROM entities";
    for row in read(tx, "entities", sql)? {
        let entity_type: EntityType = row
            .get::<_, String>(0)
            .parse()
            .map_err(|e| fail("a row of entities has an unknown type", e))?;
        let stored = StoredEntity {
            owner: user.clone(),
            cursor: unsigned("entities", row.get(2))?,
            state: decode("entities", row.get(3))?,
        };
        tables.restore_entity((entity_type, EntityId(row.get(1))), stored);
    }
    for row in read(tx, "sync_queue", "SELECT op_id, row FROM sync_queue")? {
        let key = (user.clone(), OpId(row.get(0)));
        tables
            .sync_queue
            .insert(key, decode("sync_queue", row.get(1))?);
    }
    let sql = "SELECT idempotency_key, record FROM sync_idempotency_keys";
    for row in read(tx, "sync_idempotency_keys", sql)? {
        let key = (user.clone(), IdempotencyKey(row.get(0)));
        let record = decode("sync_idempotency_keys", row.get(1))?;
        tables.sync_idempotency_keys.insert(key, record);
    }
    for row in read(tx, "sync_history", "SELECT seq, row FROM sync_history")? {
        let key = (user.clone(), unsigned("sync_history", row.get(0))?);
        tables
            .sync_history
            .insert(key, decode("sync_history", row.get(1))?);
    }
    let sql = "SELECT conflict_id, created_seq, record FROM sync_conflicts";
    for row in read(tx, "sync_conflicts", sql)? {
        tables.restore_conflict(
            ConflictId(row.get(0)),
            user.clone(),
            unsigned("sync_conflicts", row.get(1))?,
            decode("sync_conflicts", row.get(2))?,
        );
    }
    for row in read(
        tx,
        "sync_batches",
        "SELECT batch_id, record FROM sync_batches",
    )? {
        let key = (user.clone(), BatchId(row.get(0)));
        tables
            .sync_batches
            .insert(key, decode("sync_batches", row.get(1))?);
    }
    for row in read(tx, "sync_state", "SELECT device_id, state FROM sync_state")? {
        let state = decode("sync_state", row.get(1))?;
        tables.restore_device(user.clone(), DeviceId(row.get(0)), state);
    }
    let sql = "SELECT window_start_ms, window_row FROM sync_metrics";
    for row in read(tx, "sync_metrics", sql)? {
        let start = Millis(unsigned("sync_metrics", row.get(0))?);
        tables
            .sync_metrics
            .insert((user.clone(), start), decode("sync_metrics", row.get(1))?);
    }
    Ok(())
}

mod connection;
mod rows;
#[cfg(test)]
mod tests;
