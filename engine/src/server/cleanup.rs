//! Cleanup: what `cleanup_old_sync_data` removes (expired keys, old history, settled queue
//! rows and conflicts) and how much.

use super::tables::{ServerStore, StoreError};
use super::wire::ConflictStatus;
use super::{CleanupReport, HISTORY_RETENTION_MS, METRICS_WINDOW_MS, Server};
use crate::time::Millis;
use std::collections::BTreeMap;

impl<S: ServerStore> Server<S> {
    /// The seed's `cleanup_old_sync_data`: drops idempotency keys past their retention and
    /// history, resolved conflicts, batches and metrics past `HISTORY_RETENTION_MS`.
    /// Entities and tombstones are kept. On a store error nothing is removed.
    pub fn cleanup(&mut self, now: Millis) -> Result<CleanupReport, StoreError> {
        let key_cutoff = now.0.saturating_sub(self.config.idempotency_retention_ms());
        let cutoff = now.0.saturating_sub(HISTORY_RETENTION_MS);
        let mut report = CleanupReport::default();
        self.store.retain(&mut |tables| {
            report.idempotency_keys = retain_counting(&mut tables.sync_idempotency_keys, |r| {
                r.at_ms.0 >= key_cutoff
            });
            report.history_rows =
                retain_counting(&mut tables.sync_history, |r| r.at_ms.0 >= cutoff);
            report.conflicts = retain_counting(&mut tables.sync_conflicts, |(_, c)| {
                c.status == ConflictStatus::Open || c.resolved_at_ms.is_some_and(|t| t.0 >= cutoff)
            });
            let kept = &tables.sync_conflicts;
            tables.user_conflicts.retain(|_, id| kept.contains_key(id));
            report.batches =
                retain_counting(&mut tables.sync_batches, |b| b.received_at_ms.0 >= cutoff);
            report.metrics_windows = retain_counting(&mut tables.sync_metrics, |w| {
                w.window_start_ms.0 + METRICS_WINDOW_MS >= cutoff
            });
        })?;
        if report.idempotency_keys > 0 {
            crate::coverage::hit("server.cleanup.removed_keys");
        }
        Ok(report)
    }
}

/// Keeps the rows `keep` accepts and returns how many were removed.
pub(super) fn retain_counting<K: Ord, V>(
    table: &mut BTreeMap<K, V>,
    mut keep: impl FnMut(&V) -> bool,
) -> usize {
    let before = table.len();
    table.retain(|_, row| keep(row));
    before - table.len()
}
