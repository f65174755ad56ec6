//! The rows a flush writes, as multi-row statements: one statement per table and user,
//! each column sent as one array (`unnest`), so a 50-op batch is about ten statements, not
//! three hundred.

use super::{int, json};
use crate::pending::{Pending, gone};
use postgres::types::ToSql;
use rockhound_engine::ids::UserId;
use rockhound_engine::server::StoreError;
use rockhound_engine::server::tables::Tables;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A value of one column of one row a flush writes.
pub(super) enum Cell {
    Text(String),
    Int(i64),
    Json(Value),
}

/// The values of one column over the rows of a statement: one array parameter.
pub(super) enum Column {
    Text(Vec<String>),
    Int(Vec<i64>),
    Json(Vec<Value>),
}

impl Column {
    fn of(cell: &Cell) -> Column {
        match cell {
            Cell::Text(_) => Column::Text(Vec::new()),
            Cell::Int(_) => Column::Int(Vec::new()),
            Cell::Json(_) => Column::Json(Vec::new()),
        }
    }

    fn push(&mut self, cell: Cell) {
        match (self, cell) {
            (Column::Text(values), Cell::Text(v)) => values.push(v),
            (Column::Int(values), Cell::Int(v)) => values.push(v),
            (Column::Json(values), Cell::Json(v)) => values.push(v),
            _ => unreachable!("a statement's column takes one type"),
        }
    }

    pub(super) fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Text(values) => values,
            Column::Int(values) => values,
            Column::Json(values) => values,
        }
    }
}

/// Whose rows a statement writes, and its place in the order statements were first added.
pub(super) type StatementKey = (Option<String>, usize);

/// A flush's statements, each writing many rows at once (one array per column), grouped
/// by the user whose rows they are (`None`: the global counter), in the order added.
#[derive(Default)]
pub(crate) struct Writes {
    pub(super) statements: BTreeMap<StatementKey, (&'static str, Vec<Column>)>,
    order: Vec<&'static str>,
}

impl Writes {
    /// Adds one row to `sql`'s statement for `user`.
    fn row(&mut self, user: Option<&UserId>, sql: &'static str, cells: Vec<Cell>) {
        let index = match self.order.iter().position(|s| *s == sql) {
            Some(index) => index,
            None => {
                self.order.push(sql);
                self.order.len() - 1
            }
        };
        let key = (user.map(|u| u.0.clone()), index);
        let (_, columns) = self
            .statements
            .entry(key)
            .or_insert_with(|| (sql, cells.iter().map(Column::of).collect()));
        for (column, cell) in columns.iter_mut().zip(cells) {
            column.push(cell);
        }
    }
}

fn text(value: &str) -> Cell {
    Cell::Text(value.to_owned())
}

fn number(value: u64, what: &str) -> Result<Cell, StoreError> {
    int(value, what).map(Cell::Int)
}

fn row_json<T: Serialize>(value: &T) -> Result<Cell, StoreError> {
    json(value).map(Cell::Json)
}

/// The statements that write every row the commits since the last flush changed, as
/// the tables hold it now.
// Long on purpose: one upsert per table, in schema order.
pub(super) fn pending_writes(tables: &Tables, pending: &Pending) -> Result<Writes, StoreError> {
    let mut writes = Writes::default();
    for key in &pending.entities {
        let row = &tables.entities[key];
        writes.row(
            Some(&row.owner),
            "INSERT INTO entities (entity_type, entity_id, user_id, cursor, state)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::json[])
             ON CONFLICT (entity_type, entity_id)
             DO UPDATE SET cursor = excluded.cursor, state = excluded.state",
            vec![
                text(key.0.as_str()),
                text(&key.1.0),
                text(&row.owner.0),
                number(row.cursor, "cursor")?,
                row_json(&row.state)?,
            ],
        );
    }
    for key in &pending.queue {
        writes.row(
            Some(&key.0),
            "INSERT INTO sync_queue (user_id, op_id, row)
             SELECT * FROM unnest($1::text[], $2::text[], $3::json[])
             ON CONFLICT (user_id, op_id) DO UPDATE SET row = excluded.row",
            vec![
                text(&key.0.0),
                text(&key.1.0),
                row_json(&tables.sync_queue[key])?,
            ],
        );
    }
    for key in &pending.keys {
        writes.row(
            Some(&key.0),
            "INSERT INTO sync_idempotency_keys (user_id, idempotency_key, record)
             SELECT * FROM unnest($1::text[], $2::text[], $3::json[])",
            vec![
                text(&key.0.0),
                text(&key.1.0),
                row_json(&tables.sync_idempotency_keys[key])?,
            ],
        );
    }
    for key in &pending.history {
        let row = &tables.sync_history[key];
        writes.row(
            Some(&key.0),
            "INSERT INTO sync_history (user_id, seq, row, created_at)
             SELECT u, s, r, to_timestamp(t / 1000.0)
             FROM unnest($1::text[], $2::int8[], $3::json[], $4::int8[]) AS x(u, s, r, t)",
            vec![
                text(&key.0.0),
                number(key.1, "history row")?,
                row_json(row)?,
                number(row.at_ms.0, "history time")?,
            ],
        );
    }
    for (id, created) in &pending.conflicts {
        // A conflict keeps the commit that created it (its place in the user's list).
        let (user, record) = &tables.sync_conflicts[id];
        writes.row(
            Some(user),
            "INSERT INTO sync_conflicts (conflict_id, user_id, created_seq, record)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::json[])
             ON CONFLICT (conflict_id) DO UPDATE SET record = excluded.record",
            vec![
                text(&id.0),
                text(&user.0),
                number(*created, "conflict")?,
                row_json(record)?,
            ],
        );
    }
    for key in &pending.batches {
        writes.row(
            Some(&key.0),
            "INSERT INTO sync_batches (user_id, batch_id, record)
             SELECT * FROM unnest($1::text[], $2::text[], $3::json[])
             ON CONFLICT (user_id, batch_id) DO UPDATE SET record = excluded.record",
            vec![
                text(&key.0.0),
                text(&key.1.0),
                row_json(&tables.sync_batches[key])?,
            ],
        );
    }
    for key in &pending.devices {
        writes.row(
            Some(&key.0),
            "INSERT INTO sync_state (user_id, device_id, state)
             SELECT * FROM unnest($1::text[], $2::text[], $3::json[])
             ON CONFLICT (user_id, device_id) DO UPDATE SET state = excluded.state",
            vec![
                text(&key.0.0),
                text(&key.1.0),
                row_json(&tables.sync_state[key])?,
            ],
        );
    }
    for key in &pending.metrics {
        writes.row(
            Some(&key.0),
            "INSERT INTO sync_metrics (user_id, window_start_ms, window_row)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::json[])
             ON CONFLICT (user_id, window_start_ms)
             DO UPDATE SET window_row = excluded.window_row",
            vec![
                text(&key.0.0),
                number(key.1.0, "metrics window")?,
                row_json(&tables.sync_metrics[key])?,
            ],
        );
    }
    for user in &pending.users {
        writes.row(
            Some(user),
            "INSERT INTO user_seqs SELECT * FROM unnest($1::text[], $2::int8[])
             ON CONFLICT (user_id) DO UPDATE SET seq = excluded.seq",
            vec![
                text(&user.0),
                number(tables.user_seqs[user], "commit sequence number")?,
            ],
        );
    }
    writes.row(
        None,
        "INSERT INTO counters SELECT 'seq', * FROM unnest($1::int8[])
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        vec![number(tables.seq, "commit count")?],
    );
    Ok(writes)
}

/// The statements that delete every row of `before` that `after` no longer has.
pub(super) fn removals(before: &Tables, after: &Tables) -> Result<Writes, StoreError> {
    let mut writes = Writes::default();
    for (user, key) in gone(&before.sync_idempotency_keys, &after.sync_idempotency_keys) {
        writes.row(
            Some(user),
            "DELETE FROM sync_idempotency_keys WHERE (user_id, idempotency_key)
             IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            vec![text(&user.0), text(&key.0)],
        );
    }
    for (user, seq) in gone(&before.sync_history, &after.sync_history) {
        writes.row(
            Some(user),
            "DELETE FROM sync_history WHERE (user_id, seq)
             IN (SELECT * FROM unnest($1::text[], $2::int8[]))",
            vec![text(&user.0), number(*seq, "history row")?],
        );
    }
    for id in gone(&before.sync_conflicts, &after.sync_conflicts) {
        writes.row(
            Some(&before.sync_conflicts[id].0),
            "DELETE FROM sync_conflicts WHERE conflict_id IN (SELECT unnest($1::text[]))",
            vec![text(&id.0)],
        );
    }
    for (user, batch_id) in gone(&before.sync_batches, &after.sync_batches) {
        writes.row(
            Some(user),
            "DELETE FROM sync_batches WHERE (user_id, batch_id)
             IN (SELECT * FROM unnest($1::text[], $2::text[]))",
            vec![text(&user.0), text(&batch_id.0)],
        );
    }
    for (user, start) in gone(&before.sync_metrics, &after.sync_metrics) {
        writes.row(
            Some(user),
            "DELETE FROM sync_metrics WHERE (user_id, window_start_ms)
             IN (SELECT * FROM unnest($1::text[], $2::int8[]))",
            vec![text(&user.0), number(start.0, "metrics window")?],
        );
    }
    Ok(writes)
}
