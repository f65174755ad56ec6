//! What the app reads: events, state, the queue and its stats, conflicts, history, metrics,
//! the replica and each entity's local view and status.

use super::Coordinator;
use crate::client::observe::{
    ClientMetrics, EntityStatus, Event, HistoryItem, LocalConflict, Monitor, SyncState,
};
use crate::client::queue::{Entry, QueueStats, Status};
use crate::client::replica::{Replica, local_exists, local_view};
use crate::client::store::QueueStore;
use crate::entity::EntityType;
use crate::ids::{EntityId, OpId};
use crate::op::Op;
use serde_json::Value;

impl<S: QueueStore> Coordinator<S> {
    /// `useRealtimeSyncState`: every event since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// `useOfflineStatus`.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// `useSyncState`.
    pub fn state(&self) -> SyncState {
        SyncState {
            online: self.online,
            syncing: self.in_flight.is_some(),
            last_sync_at_ms: self.last_sync_at,
            last_error: self.last_error.clone(),
            queue: self.queue.stats(),
            open_conflicts: self.conflicts.values().filter(|c| c.open).count(),
            cursor: self.replica.cursor,
        }
    }

    /// `useSyncQueue`: every queued op in enqueue order.
    pub fn queue(&self) -> impl Iterator<Item = &Entry> {
        self.queue.entries()
    }

    /// The queue store, to look at (the simulation checks what is durable).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The queued op `op_id`, found through the queue's index (no scan).
    pub fn queued(&self, op_id: &OpId) -> Option<&Entry> {
        self.queue.seq_of(op_id).and_then(|seq| self.queue.get(seq))
    }

    /// `useSyncQueue`: counts by status.
    pub fn stats(&self) -> QueueStats {
        self.queue.stats()
    }

    /// `useSyncConflicts`: the conflicts this device's ops ran into.
    pub fn conflicts(&self) -> impl Iterator<Item = &LocalConflict> {
        self.conflicts.values()
    }

    /// `useSyncHistory`: the last [`HISTORY_LEN_MAX`] settled or failed ops.
    pub fn history(&self) -> impl Iterator<Item = &HistoryItem> {
        self.history.iter()
    }

    /// `useSyncMetrics`.
    pub fn metrics(&self) -> &ClientMetrics {
        &self.metrics
    }

    /// `useSyncMonitor`.
    pub fn monitor(&self) -> Monitor {
        let stats = self.queue.stats();
        Monitor {
            online: self.online,
            pending_count: stats.pending + stats.in_flight + stats.blocked + stats.error,
            conflict_count: self.conflicts.values().filter(|c| c.open).count(),
            error_count: stats.error + stats.rejected + stats.expired,
        }
    }

    /// The replica (server state as last seen).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Open ops on one entity, oldest first.
    /// The ops on an entity that still shape its local view, in queue order: all but the
    /// rejected and expired ones.
    pub(super) fn open_ops_on(
        &self,
        entity_type: EntityType,
        entity_id: &EntityId,
    ) -> impl Iterator<Item = &Op> {
        self.ops_on(entity_type, entity_id)
            .into_iter()
            .filter(|e| !matches!(e.status, Status::Rejected | Status::Expired))
            .map(|e| &e.op)
    }

    pub(super) fn ops_on(&self, entity_type: EntityType, entity_id: &EntityId) -> Vec<&Entry> {
        let key = (entity_type, entity_id.clone());
        let mut ops = Vec::new();
        let mut next = self.queue.last_on_entity(&key);
        while let Some(entry) = next {
            ops.push(entry);
            next = entry
                .blockers
                .iter()
                .filter_map(|seq| self.queue.get(*seq))
                .find(|b| b.entity() == key);
        }
        ops.reverse();
        ops
    }

    /// Whether the entity exists in the local view (what [`Coordinator::entity`] would
    /// return `Some` for), without building it.
    pub fn entity_exists(&self, entity_type: EntityType, entity_id: &EntityId) -> bool {
        local_exists(
            self.replica.get(entity_type, entity_id),
            self.open_ops_on(entity_type, entity_id),
        )
    }

    /// `useEntitySync`: the local view of an entity — the replica's copy with the open local
    /// ops that may still apply (not rejected or expired) on top. `None` when it does not
    /// exist or is deleted.
    pub fn entity(&self, entity_type: EntityType, entity_id: &EntityId) -> Option<Value> {
        local_view(
            self.replica.get(entity_type, entity_id),
            self.open_ops_on(entity_type, entity_id),
        )
    }

    /// `useEntitySync`: where one entity stands.
    pub fn entity_status(&self, entity_type: EntityType, entity_id: &EntityId) -> EntityStatus {
        let ops = self.ops_on(entity_type, entity_id);
        EntityStatus {
            server_version: self.replica.get(entity_type, entity_id).map(|r| r.version),
            open_ops: ops.len(),
            status: ops.iter().map(|e| e.status).max(),
            open_conflict: self
                .conflicts
                .values()
                .find(|c| c.open && c.entity_type == entity_type && c.entity_id == *entity_id)
                .map(|c| c.conflict_id.clone()),
        }
    }
}
