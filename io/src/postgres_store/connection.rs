//! The PostgreSQL connection as the commit pipeline drives it (`crate::pipeline`): its
//! thread writes each group of flushes in one transaction, each user's rows under that
//! user's row-level security.

use super::rows::{self, Column, Writes};
use super::{load, month, pg, set_user, take_lock};
use crate::pending::Pending;
use crate::pipeline::Backend;
use postgres::types::ToSql;
use postgres::{Client, NoTls};
use rockhound_engine::server::StoreError;
use rockhound_engine::server::tables::Tables;
use std::collections::{BTreeMap, BTreeSet};

/// The connection, the statements prepared on it (a flush's statements are prepared
/// once, not parsed again each time) and the history partitions known to exist.
pub(crate) struct Session {
    url: String,
    pub(super) client: Client,
    statements: BTreeMap<&'static str, postgres::Statement>,
    /// Months (as `YYYY-MM`) whose history partition is known to exist.
    months: BTreeSet<String>,
}

/// One flush's rows: the history partitions they need and the statements.
pub(crate) struct Write {
    months: Vec<String>,
    writes: Writes,
}

impl Session {
    /// Connects to the database at `url`.
    pub(super) fn connect(url: &str) -> Result<Session, StoreError> {
        let client = Client::connect(url, NoTls).map_err(pg("cannot connect to PostgreSQL"))?;
        Ok(Session {
            url: url.to_owned(),
            client,
            statements: BTreeMap::new(),
            months: BTreeSet::new(),
        })
    }
}

impl Backend for Session {
    type Rows = Write;
    type Removals = Writes;

    fn seal(tables: &Tables, pending: &Pending) -> Result<Write, StoreError> {
        let months = pending
            .history
            .iter()
            .map(|key| month(tables.sync_history[key].at_ms))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Ok(Write {
            months,
            writes: rows::pending_writes(tables, pending)?,
        })
    }

    fn removals(before: &Tables, after: &Tables) -> Result<Writes, StoreError> {
        rows::removals(before, after)
    }

    fn write_group(&mut self, group: &[Write]) -> Result<(), StoreError> {
        self.ensure_partitions(group.iter().flat_map(|w| &w.months))?;
        self.write(group.iter().map(|w| &w.writes))
    }

    fn remove(&mut self, removals: Writes) -> Result<(), StoreError> {
        self.write(std::iter::once(&removals))
    }

    fn load(&mut self) -> Result<Tables, StoreError> {
        load(&mut self.client)
    }

    fn before_job(&mut self) {
        if !self.client.is_closed() {
            return;
        }
        // The database went away (a restart): connect again and take the server lock
        // back; if either fails, the job fails on the closed connection and the next one
        // tries again.
        if let Ok(again) = Client::connect(&self.url, NoTls) {
            self.client = again;
            self.statements.clear();
            if !matches!(take_lock(&mut self.client), Ok(true)) {
                let _ = self
                    .client
                    .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())");
            }
        }
    }
}

impl Session {
    /// Creates the history partitions of `months` that are not known to exist.
    pub(super) fn ensure_partitions<'a>(
        &mut self,
        months: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), StoreError> {
        let missing: BTreeSet<String> = months
            .into_iter()
            .filter(|m| !self.months.contains(*m))
            .cloned()
            .collect();
        for m in missing {
            let first = format!("{m}-01 00:00:00+00");
            self.client
                .execute(
                    "SELECT rockhound_history_partition($1::text::timestamptz)",
                    &[&first],
                )
                .map_err(pg("cannot create a history partition"))?;
            self.months.insert(m);
        }
        Ok(())
    }

    /// Runs `writes` in one transaction, each user's under that user's row-level security.
    fn write<'a>(
        &mut self,
        writes: impl Iterator<Item = &'a Writes> + Clone,
    ) -> Result<(), StoreError> {
        for (sql, _) in writes.clone().flat_map(|w| w.statements.values()) {
            if !self.statements.contains_key(sql) {
                let statement = self.client.prepare(sql).map_err(pg("cannot prepare"))?;
                self.statements.insert(sql, statement);
            }
        }
        let mut tx = self.client.transaction().map_err(pg("cannot begin"))?;
        for writes in writes {
            let mut current: Option<&String> = None;
            for ((user, _), (sql, columns)) in &writes.statements {
                if let Some(user) = user
                    && current != Some(user)
                {
                    set_user(&mut tx, user)?;
                    current = Some(user);
                }
                let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(Column::param).collect();
                tx.execute(&self.statements[sql], &params)
                    .map_err(pg("cannot write"))?;
            }
        }
        tx.commit().map_err(pg("cannot commit"))
    }
}
