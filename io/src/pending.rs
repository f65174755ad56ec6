//! What a durable store writes at its next flush: the keys of the rows the commits since the
//! last one changed (the rows themselves are read from the tables at flush time, so a row
//! changed twice is written once, as it ends).

use rockhound_engine::ids::{BatchId, ConflictId, DeviceId, IdempotencyKey, OpId, UserId};
use rockhound_engine::server::tables::{Commit, EntityKey, Tables};
use rockhound_engine::time::Millis;
use std::collections::{BTreeMap, BTreeSet};

/// The keys of the rows changed since the last flush.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) entities: BTreeSet<EntityKey>,
    pub(crate) queue: BTreeSet<(UserId, OpId)>,
    pub(crate) keys: BTreeSet<(UserId, IdempotencyKey)>,
    pub(crate) history: BTreeSet<(UserId, u64)>,
    /// Each conflict with the commit that created it (used only if it is new to the file).
    pub(crate) conflicts: BTreeMap<ConflictId, u64>,
    pub(crate) batches: BTreeSet<(UserId, BatchId)>,
    pub(crate) devices: BTreeSet<(UserId, DeviceId)>,
    pub(crate) metrics: BTreeSet<(UserId, Millis)>,
    pub(crate) users: BTreeSet<UserId>,
}

impl Pending {
    /// Applies `commit` to the cached tables and notes the rows it changes. An engine bug
    /// panics here, before anything changes.
    pub(crate) fn apply(&mut self, tables: &mut Tables, commit: Commit) {
        tables.check(&commit);
        self.note(&commit);
        tables.apply_checked(commit);
    }

    /// Notes the rows `commit` changes.
    fn note(&mut self, commit: &Commit) {
        let user = &commit.user;
        self.users.insert(user.clone());
        if let Some((key, _)) = &commit.entity {
            self.entities.insert(key.clone());
        }
        if let Some((op_id, _)) = &commit.queue {
            self.queue.insert((user.clone(), op_id.clone()));
        }
        if let Some((key, _)) = &commit.idempotency {
            self.keys.insert((user.clone(), key.clone()));
        }
        if commit.history.is_some() {
            self.history.insert((user.clone(), commit.seq));
        }
        if let Some(conflict) = &commit.conflict {
            // The first commit to name a conflict since the last flush: the one that
            // created it, or (when it is already in the file) one the upsert ignores.
            self.conflicts
                .entry(conflict.conflict_id.clone())
                .or_insert(commit.seq);
        }
        if let Some((batch_id, _)) = &commit.batch {
            self.batches.insert((user.clone(), batch_id.clone()));
        }
        if let Some(device) = &commit.device {
            self.devices
                .insert((user.clone(), device.device_id.clone()));
        }
        if let Some(window) = &commit.metrics {
            self.metrics.insert((user.clone(), window.window_start_ms));
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// The keys of `before` that `after` lacks.
pub(crate) fn gone<'a, K: Ord, V>(
    before: &'a BTreeMap<K, V>,
    after: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = &'a K> {
    before.keys().filter(|key| !after.contains_key(key))
}
