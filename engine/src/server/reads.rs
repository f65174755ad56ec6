//! The reads: pulled changes, conflicts (whole or paged), state, history and metrics, each
//! confined to the asking user.

use super::seal::Sealed;
use super::tables::{Commit, ServerStore};
use super::wire;
use super::wire::{
    Change, ChangesPage, ConflictRecord, ConflictStatus, HistoryRow, MetricsWindow, StateResponse,
};
use super::{CONFLICT_SCAN_MAX, HISTORY_LIMIT_MAX, PULL_LIMIT_MAX, RequestError, Server};
use crate::ids::{DeviceId, UserId, check_id};
use crate::time::Millis;

impl<S: ServerStore> Server<S> {
    /// Handles `GET /api/sync/changes`: the user's changes after `since`, at most `limit`,
    /// in commit order. With `device_id`, records the device's pull cursor.
    pub fn changes(
        &mut self,
        user: &UserId,
        device_id: Option<&DeviceId>,
        since: u64,
        limit: usize,
        now: Millis,
    ) -> Result<ChangesPage, RequestError> {
        if !(1..=PULL_LIMIT_MAX).contains(&limit) {
            return Err(RequestError::invalid(format!(
                "limit {limit} is out of range: use 1 to {PULL_LIMIT_MAX}"
            )));
        }
        if let Some(device_id) = device_id {
            check_id("device_id", device_id.as_str())
                .map_err(|e| RequestError::invalid(e.to_string()))?;
        }
        let tables = self.store.tables();
        let range = (user.clone(), since.saturating_add(1))..=(user.clone(), u64::MAX);
        let mut entries = tables.changes.range(range);
        let mut changes = Vec::with_capacity(limit);
        for ((_, cursor), key) in entries.by_ref().take(limit) {
            let Some(stored) = tables.entities.get(key).filter(|s| &s.owner == user) else {
                unreachable!("the change index lists only the user's own stored entities");
            };
            changes.push(Change {
                cursor: *cursor,
                entity_type: key.0,
                entity_id: key.1.clone(),
                version: stored.state.version,
                deleted: stored.state.deleted,
                entity: stored.state.to_value(),
            });
        }
        let has_more = entries.next().is_some();
        let next_cursor = changes.last().map_or(since, |c| c.cursor);
        if self.config.planted.server.leaks_other_users {
            if let Some((key, stored)) = tables.entities.iter().find(|(_, s)| &s.owner != user) {
                changes.push(Change {
                    cursor: since,
                    entity_type: key.0,
                    entity_id: key.1.clone(),
                    version: stored.state.version,
                    deleted: stored.state.deleted,
                    entity: stored.state.to_value(),
                });
            }
        }
        // Only a batch registers a device: a pull records the cursor of a device the user
        // already registered.
        let registered = device_id.filter(|device_id| {
            self.store
                .tables()
                .devices
                .contains(&(user.clone(), (*device_id).clone()))
        });
        if let Some(device_id) = registered {
            let mut device = self.device_state(user, device_id);
            device.pull_cursor = next_cursor;
            device.last_pull_at_ms = Some(now);
            let seq = self.store.tables().next_seq(user);
            self.store.commit(Commit {
                user: user.clone(),
                seq,
                device: Some(device),
                ..Commit::default()
            })?;
        }
        Ok(ChangesPage {
            changes,
            next_cursor,
            has_more,
            open_conflicts: Some(self.open_conflicts(user)),
            checksum: None,
        }
        .sealed())
    }

    /// How many of the user's conflicts wait for a person.
    fn open_conflicts(&self, user: &UserId) -> u64 {
        let counts = self.store.tables().user_counts.get(user);
        counts.map_or(0, |counts| counts.open_conflicts)
    }

    /// The user's conflicts, optionally by status, oldest first (every one: for tests and
    /// the simulation; requests page through [`Server::conflicts_page`]).
    pub fn conflicts(&self, user: &UserId, status: Option<ConflictStatus>) -> Vec<ConflictRecord> {
        let tables = self.store.tables();
        let range = (user.clone(), 0)..=(user.clone(), u64::MAX);
        tables
            .user_conflicts
            .range(range)
            .filter_map(|(_, id)| tables.sync_conflicts.get(id))
            .filter(|(_, record)| status.is_none_or(|s| record.status == s))
            .map(|(_, record)| record.clone())
            .collect()
    }

    /// Handles `GET /api/sync/conflicts`: the user's conflicts created after `since`,
    /// optionally by status, at most `limit`. A page looks at no more than
    /// [`CONFLICT_SCAN_MAX`] conflicts, so a long run of the other status ends a page early
    /// (with `has_more`) instead of holding the server.
    pub fn conflicts_page(
        &self,
        user: &UserId,
        status: Option<ConflictStatus>,
        since: u64,
        limit: usize,
    ) -> Result<wire::ConflictsPage, RequestError> {
        if !(1..=PULL_LIMIT_MAX).contains(&limit) {
            return Err(RequestError::invalid(format!(
                "limit {limit} is out of range: use 1 to {PULL_LIMIT_MAX}"
            )));
        }
        let tables = self.store.tables();
        let range = (user.clone(), since.saturating_add(1))..=(user.clone(), u64::MAX);
        let mut entries = tables.user_conflicts.range(range);
        let mut conflicts = Vec::new();
        let mut next_cursor = since;
        for ((_, cursor), id) in entries.by_ref().take(CONFLICT_SCAN_MAX) {
            next_cursor = *cursor;
            if let Some((_, record)) = tables.sync_conflicts.get(id)
                && status.is_none_or(|s| record.status == s)
            {
                conflicts.push(record.clone());
                if conflicts.len() == limit {
                    break;
                }
            }
        }
        Ok(wire::ConflictsPage {
            conflicts,
            next_cursor,
            has_more: entries.next().is_some(),
            checksum: None,
        }
        .sealed())
    }

    /// Handles `GET /api/sync/state?device_id=…`.
    pub fn state(
        &self,
        user: &UserId,
        device_id: &DeviceId,
    ) -> Result<StateResponse, RequestError> {
        check_id("device_id", device_id.as_str())
            .map_err(|e| RequestError::invalid(e.to_string()))?;
        let tables = self.store.tables();
        let range = (user.clone(), 0)..=(user.clone(), u64::MAX);
        let counts = tables.user_counts.get(user).copied().unwrap_or_default();
        Ok(StateResponse {
            device: self.device_state(user, device_id),
            latest_cursor: tables
                .changes
                .range(range)
                .next_back()
                .map_or(0, |((_, c), _)| *c),
            open_conflicts: counts.open_conflicts,
            entity_count: counts.live_entities,
        })
    }

    /// Handles `GET /api/sync/history?limit=<n>`: the user's latest rows, newest first.
    pub fn history(&self, user: &UserId, limit: usize) -> Result<Vec<HistoryRow>, RequestError> {
        if !(1..=HISTORY_LIMIT_MAX).contains(&limit) {
            return Err(RequestError::invalid(format!(
                "limit {limit} is out of range: use 1 to {HISTORY_LIMIT_MAX}"
            )));
        }
        let range = (user.clone(), 0)..=(user.clone(), u64::MAX);
        Ok(self
            .store
            .tables()
            .sync_history
            .range(range)
            .rev()
            .take(limit)
            .map(|(_, row)| row.clone())
            .collect())
    }

    /// Handles `GET /api/sync/metrics`: the user's windows, oldest first.
    pub fn metrics(&self, user: &UserId) -> Vec<MetricsWindow> {
        let range = (user.clone(), Millis(0))..=(user.clone(), Millis(u64::MAX));
        self.store
            .tables()
            .sync_metrics
            .range(range)
            .map(|(_, w)| w.clone())
            .collect()
    }
}
