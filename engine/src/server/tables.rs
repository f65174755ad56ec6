//! The server's state: the seed's seven tables plus the entities and the change index, in
//! ordered maps, behind the [`ServerStore`] trait.
//!
//! Every change to the tables goes through one [`Commit`]: an op's entity write, its
//! idempotency record, its history row, its queue row, its conflict row, its metrics and its
//! device state land together or not at all. A store that crashes loses whole commits only.

use super::wire::{
    ConflictRecord, ConflictStatus, DeviceState, HistoryRow, MetricsWindow, OpResult, OpStatus,
    Reason,
};
use crate::conflict::ServerEntity;
use crate::entity::EntityType;
use crate::ids::{BatchId, ConflictId, DeviceId, EntityId, IdempotencyKey, OpId, UserId};
use crate::op::OpKind;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// An entity's key: ids are unique per type across all users; the owner is recorded.
pub type EntityKey = (EntityType, EntityId);

/// A row of the entity table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEntity {
    /// The user the entity belongs to.
    pub owner: UserId,
    /// The entity and its provenance.
    pub state: ServerEntity,
    /// The commit that last changed it (its position in the change index).
    pub cursor: u64,
}

/// A row of `sync_idempotency_keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The checksum of the op first seen under this key.
    pub op_checksum: String,
    /// The result first given.
    pub result: OpResult,
    /// When it was recorded (server clock).
    pub at_ms: Millis,
}

/// A row of `sync_queue`: the server's record of an op it received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueRow {
    /// The op's idempotency key.
    pub idempotency_key: IdempotencyKey,
    /// The sending device.
    pub device_id: DeviceId,
    /// The batch that last carried it.
    pub batch_id: BatchId,
    /// The entity's type.
    pub entity_type: EntityType,
    /// The entity's id.
    pub entity_id: EntityId,
    /// The op's kind.
    pub kind: OpKind,
    /// Its latest status.
    pub status: OpStatus,
    /// Its latest reason code.
    pub reason: Option<Reason>,
    /// When it was last received (server clock).
    pub received_at_ms: Millis,
}

/// A row of `sync_batches`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// The sending device.
    pub device_id: DeviceId,
    /// How many ops it carried.
    pub op_count: u64,
    /// Ops per status.
    pub statuses: BTreeMap<OpStatus, u64>,
    /// Its checksum.
    pub checksum: String,
    /// When it arrived (server clock).
    pub received_at_ms: Millis,
    /// How long the server took from its arrival to its answer, in ms (server clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decide_ms: Option<u64>,
}

/// The server's tables. Read them through a [`ServerStore`]; change them only by a commit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tables {
    /// Entities, tombstones included.
    pub entities: BTreeMap<EntityKey, StoredEntity>,
    /// Per user, each entity at the cursor of its latest change (older cursors are removed).
    pub changes: BTreeMap<(UserId, u64), EntityKey>,
    /// The ops received.
    pub sync_queue: BTreeMap<(UserId, OpId), QueueRow>,
    /// Conflicts, open and resolved, with their owner.
    pub sync_conflicts: BTreeMap<ConflictId, (UserId, ConflictRecord)>,
    /// Per user: live (not deleted) entities and open conflicts, kept with every commit so
    /// that `GET /api/sync/state` answers without walking a user's tables.
    #[serde(default)]
    pub user_counts: BTreeMap<UserId, UserCounts>,
    /// Each user's conflicts by the commit that created them: the order `GET
    /// /api/sync/conflicts` pages in.
    #[serde(default)]
    pub user_conflicts: BTreeMap<(UserId, u64), ConflictId>,
    /// Batches received.
    pub sync_batches: BTreeMap<(UserId, BatchId), BatchRecord>,
    /// Per user and device.
    pub sync_state: BTreeMap<(UserId, DeviceId), DeviceState>,
    /// The audit trail and commit log, by user and commit sequence number.
    pub sync_history: BTreeMap<(UserId, u64), HistoryRow>,
    /// Aggregated counts per user and window.
    pub sync_metrics: BTreeMap<(UserId, Millis), MetricsWindow>,
    /// Idempotency keys per user.
    pub sync_idempotency_keys: BTreeMap<(UserId, IdempotencyKey), IdempotencyRecord>,
    /// Each user's devices (registered by their first batch). A device id names a device
    /// within its user: two users may use the same id, each for a device of their own.
    pub devices: BTreeSet<(UserId, DeviceId)>,
    /// Live children per parent entity, derived from the `<parent>_id` fields of live
    /// entities (tombstones reference nothing): what a parent delete must not orphan.
    #[serde(default)]
    pub live_children: BTreeMap<EntityKey, BTreeSet<EntityKey>>,
    /// How many commits were applied, over every user (internal: never sent to a client).
    pub seq: u64,
    /// Each user's last commit sequence number. Cursors, history rows and conflict ids
    /// count a user's own commits only, so nothing a user sees tells of another's activity.
    #[serde(default)]
    pub user_seqs: BTreeMap<UserId, u64>,
}

/// A user's running counts (see [`Tables::user_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCounts {
    /// Entities that are not tombstones.
    pub live_entities: u64,
    /// Conflicts awaiting a person.
    pub open_conflicts: u64,
}

/// One atomic change to the tables. Absent parts are left alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Commit {
    /// The user the commit belongs to.
    pub user: UserId,
    /// Its sequence number among the user's commits: exactly [`Tables::next_seq`].
    pub seq: u64,
    /// A new state for one entity (moves it to cursor `seq` in the change index).
    pub entity: Option<(EntityKey, ServerEntity)>,
    /// A queue row to upsert.
    pub queue: Option<(OpId, QueueRow)>,
    /// An idempotency record to insert.
    pub idempotency: Option<(IdempotencyKey, IdempotencyRecord)>,
    /// A history row to append (at `seq`).
    pub history: Option<HistoryRow>,
    /// A conflict row to upsert.
    pub conflict: Option<ConflictRecord>,
    /// A batch row to upsert.
    pub batch: Option<(BatchId, BatchRecord)>,
    /// A device state to upsert (and the device to register to `user`).
    pub device: Option<DeviceState>,
    /// A metrics window to upsert.
    pub metrics: Option<MetricsWindow>,
}

impl Tables {
    /// The sequence number `user`'s next commit takes.
    pub fn next_seq(&self, user: &UserId) -> u64 {
        self.user_seqs.get(user).copied().unwrap_or(0) + 1
    }

    /// Puts back an entity a durable store read, with the indexes derived from it (the
    /// change index, live children, the owner's count).
    pub fn restore_entity(&mut self, key: EntityKey, stored: StoredEntity) {
        self.changes
            .insert((stored.owner.clone(), stored.cursor), key.clone());
        for parent in parent_keys(key.0, &stored.state) {
            self.live_children
                .entry(parent)
                .or_default()
                .insert(key.clone());
        }
        let counts = self.user_counts.entry(stored.owner.clone()).or_default();
        if !stored.state.deleted {
            counts.live_entities += 1;
        }
        self.entities.insert(key, stored);
    }

    /// Puts back a conflict a durable store read; `created` is the commit that opened it
    /// (its place in the user's list).
    pub fn restore_conflict(
        &mut self,
        id: ConflictId,
        user: UserId,
        created: u64,
        record: ConflictRecord,
    ) {
        let counts = self.user_counts.entry(user.clone()).or_default();
        if record.status == ConflictStatus::Open {
            counts.open_conflicts += 1;
        }
        self.user_conflicts
            .insert((user.clone(), created), id.clone());
        self.sync_conflicts.insert(id, (user, record));
    }

    /// Puts back a device's state a durable store read (which registers the device).
    pub fn restore_device(&mut self, user: UserId, device: DeviceId, state: DeviceState) {
        self.devices.insert((user.clone(), device.clone()));
        self.sync_state.insert((user, device), state);
    }

    /// Keeps [`Tables::user_counts`] with a commit about to apply.
    fn count(&mut self, commit: &Commit) {
        if let Some((key, state)) = &commit.entity {
            let was_live = self.entities.get(key).is_some_and(|e| !e.state.deleted);
            let counts = self.user_counts.entry(commit.user.clone()).or_default();
            match (was_live, !state.deleted) {
                (false, true) => counts.live_entities += 1,
                (true, false) => counts.live_entities -= 1,
                _ => {}
            }
        }
        if let Some(conflict) = &commit.conflict {
            let was_open = self
                .sync_conflicts
                .get(&conflict.conflict_id)
                .is_some_and(|(_, c)| c.status == ConflictStatus::Open);
            let counts = self.user_counts.entry(commit.user.clone()).or_default();
            match (was_open, conflict.status == ConflictStatus::Open) {
                (false, true) => counts.open_conflicts += 1,
                (true, false) => counts.open_conflicts -= 1,
                _ => {}
            }
        }
    }

    /// Applies one commit. Every part lands, or (on a broken invariant) the commit panics
    /// before any does: every assertion runs before the first change, so a panic caught
    /// by the HTTP layer leaves the tables as they were.
    pub fn apply(&mut self, commit: Commit) {
        self.check(&commit);
        self.apply_checked(commit);
    }

    /// The invariants a commit must keep, asserted (a panic means an engine bug); a
    /// durable store checks before it writes, then applies with [`Tables::apply_checked`].
    pub fn check(&self, commit: &Commit) {
        assert_eq!(
            commit.seq,
            self.next_seq(&commit.user),
            "a user's commits apply in sequence"
        );
        if let Some((key, _)) = &commit.entity
            && let Some(previous) = self.entities.get(key)
        {
            assert_eq!(previous.owner, commit.user, "an entity never changes owner");
        }
        if let Some((key, _)) = &commit.idempotency {
            assert!(
                !self
                    .sync_idempotency_keys
                    .contains_key(&(commit.user.clone(), key.clone())),
                "an idempotency key is recorded once"
            );
        }
        if let Some(row) = &commit.history {
            assert_eq!(row.seq, commit.seq, "a history row sits at its commit");
        }
    }

    /// Applies a commit [`Tables::check`] passed.
    // Long on purpose: the writes in table order, kept whole so that order is visible.
    pub fn apply_checked(&mut self, commit: Commit) {
        self.seq += 1;
        self.user_seqs.insert(commit.user.clone(), commit.seq);
        self.count(&commit);
        let user = commit.user;
        if let Some((key, state)) = commit.entity {
            if let Some(previous) = self.entities.get(&key) {
                self.changes.remove(&(user.clone(), previous.cursor));
                for parent in parent_keys(key.0, &previous.state) {
                    if let Some(children) = self.live_children.get_mut(&parent) {
                        children.remove(&key);
                        if children.is_empty() {
                            self.live_children.remove(&parent);
                        }
                    }
                }
            }
            for parent in parent_keys(key.0, &state) {
                self.live_children
                    .entry(parent)
                    .or_default()
                    .insert(key.clone());
            }
            self.changes.insert((user.clone(), commit.seq), key.clone());
            let row = StoredEntity {
                owner: user.clone(),
                state,
                cursor: commit.seq,
            };
            self.entities.insert(key, row);
        }
        if let Some((op_id, row)) = commit.queue {
            self.sync_queue.insert((user.clone(), op_id), row);
        }
        if let Some((key, record)) = commit.idempotency {
            self.sync_idempotency_keys
                .insert((user.clone(), key), record);
        }
        if let Some(row) = commit.history {
            self.sync_history.insert((user.clone(), commit.seq), row);
        }
        if let Some(conflict) = commit.conflict {
            if !self.sync_conflicts.contains_key(&conflict.conflict_id) {
                self.user_conflicts
                    .insert((user.clone(), commit.seq), conflict.conflict_id.clone());
            }
            self.sync_conflicts
                .insert(conflict.conflict_id.clone(), (user.clone(), conflict));
        }
        if let Some((batch_id, record)) = commit.batch {
            self.sync_batches.insert((user.clone(), batch_id), record);
        }
        if let Some(device) = commit.device {
            self.devices
                .insert((user.clone(), device.device_id.clone()));
            self.sync_state
                .insert((user.clone(), device.device_id.clone()), device);
        }
        if let Some(window) = commit.metrics {
            self.sync_metrics
                .insert((user, window.window_start_ms), window);
        }
    }
}

/// The parents a live entity references through its `<parent>_id` fields; none for a
/// tombstone.
pub fn parent_keys(entity_type: EntityType, state: &ServerEntity) -> Vec<EntityKey> {
    if state.deleted {
        return Vec::new();
    }
    entity_type
        .parents()
        .iter()
        .filter_map(|parent| {
            let id = state.fields.get(&parent.reference_field())?.as_str()?;
            Some((*parent, EntityId(id.to_owned())))
        })
        .collect()
}

/// A store that could not make a change durable: nothing of the change was applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the server's store could not write: {0}")]
pub struct StoreError(pub String);

/// Where the server keeps its tables. Implementations must apply each commit atomically:
/// on `Ok` it is visible in [`ServerStore::tables`] and durable once the next
/// [`ServerStore::flush`] returns `Ok`; on `Err` nothing of it is. Nothing may be answered
/// before a flush covering everything the answer reports or observed.
pub trait ServerStore {
    /// The current tables.
    fn tables(&self) -> &Tables;
    /// Applies one commit atomically.
    fn commit(&mut self, commit: Commit) -> Result<(), StoreError>;
    /// Makes every commit so far durable (a group commit). On `Err` the commits since the
    /// last flush are undone, in the tables too, and [`ServerStore::epoch`] moves on.
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Starts making every commit so far durable and returns what to wait on, so that the
    /// server's lock need not be held while the write is under way (a commit pipeline: the
    /// next requests are decided while the database writes the last ones). Every commit
    /// made before the call, by any request, is covered, so a request that waits for it may
    /// answer everything it made or read. On `Err` (now, or from the wait) nothing since the
    /// last durable write holds and [`ServerStore::epoch`] moves on no later than the next
    /// call. By default the store flushes at once.
    fn begin_flush(&mut self) -> Result<Flushing, StoreError> {
        self.flush().map(|()| Flushing::Done)
    }
    /// How many flushes failed: a request that began in an earlier epoch may have seen or
    /// made commits that were undone, and must not be answered as if they held.
    fn epoch(&self) -> u64 {
        0
    }
    /// Removes rows; see `Server::cleanup`. Atomic like a commit, and flushed.
    fn retain(&mut self, keep: &mut dyn FnMut(&mut Tables)) -> Result<(), StoreError>;
}

/// A flush begun by [`ServerStore::begin_flush`].
pub enum Flushing {
    /// Everything it covers is durable already.
    Done,
    /// Durable once this completes; `Err`: it is not, and nothing of it holds.
    Pending(std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>),
}

impl Flushing {
    /// Waits until the flush is durable (no wait at all when it is [`Flushing::Done`]).
    pub async fn wait(self) -> Result<(), StoreError> {
        match self {
            Flushing::Done => Ok(()),
            Flushing::Pending(write) => write.await,
        }
    }
}

impl std::fmt::Debug for Flushing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flushing::Done => "Flushing::Done",
            Flushing::Pending(_) => "Flushing::Pending",
        })
    }
}

/// Any store, chosen at run time (`rockhound serve --db`).
pub type AnyStore = Box<dyn ServerStore + Send>;

impl ServerStore for AnyStore {
    fn tables(&self) -> &Tables {
        (**self).tables()
    }

    fn commit(&mut self, commit: Commit) -> Result<(), StoreError> {
        (**self).commit(commit)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        (**self).flush()
    }

    fn begin_flush(&mut self) -> Result<Flushing, StoreError> {
        (**self).begin_flush()
    }

    fn epoch(&self) -> u64 {
        (**self).epoch()
    }

    fn retain(&mut self, keep: &mut dyn FnMut(&mut Tables)) -> Result<(), StoreError> {
        (**self).retain(keep)
    }
}

/// The in-memory store: the tables themselves. It survives a simulated server crash (the
/// simulation treats it as the database) and loses nothing but uncommitted work.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    tables: Tables,
}

impl ServerStore for MemoryStore {
    fn tables(&self) -> &Tables {
        &self.tables
    }

    fn commit(&mut self, commit: Commit) -> Result<(), StoreError> {
        self.tables.apply(commit);
        Ok(())
    }

    fn retain(&mut self, keep: &mut dyn FnMut(&mut Tables)) -> Result<(), StoreError> {
        keep(&mut self.tables);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IdempotencyKey;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    fn record() -> IdempotencyRecord {
        IdempotencyRecord {
            op_checksum: "0".repeat(64),
            result: OpResult {
                op_id: OpId::from("op-1"),
                status: OpStatus::Applied,
                version: Some(1),
                entity: None,
                deleted: false,
                conflict_id: None,
                reason: None,
            },
            at_ms: Millis(1),
        }
    }

    #[test]
    fn a_commit_that_breaks_an_invariant_panics_before_changing_anything() {
        let mut tables = Tables::default();
        let user = UserId::from("ann");
        let key = IdempotencyKey::from("key-1");
        tables.apply(Commit {
            user: user.clone(),
            seq: 1,
            idempotency: Some((key.clone(), record())),
            ..Commit::default()
        });
        let before = tables.clone();
        // The key again, with a device and metrics that would land before the idempotency
        // record in apply's order of writes.
        let broken = Commit {
            user: user.clone(),
            seq: 2,
            idempotency: Some((key, record())),
            device: Some(DeviceState {
                device_id: DeviceId::from("phone"),
                ..DeviceState::default()
            }),
            metrics: Some(MetricsWindow::default()),
            ..Commit::default()
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| tables.apply(broken)));
        assert!(outcome.is_err(), "the invariant is asserted");
        assert_eq!(tables, before, "and nothing of the commit landed");
    }
}
