//! The server's answers: a batch's per-op results (settle, dead-letter, block, release),
//! pulled changes into the replica, the listing of the user's open conflicts, and the answer
//! to a conflict resolution.

use super::{Coordinator, HISTORY_LEN_MAX, InFlight};
use crate::client::observe::{Event, HistoryItem, LocalConflict, OpUpdate, TelemetryKind};
use crate::client::queue::{Entry, Status};
use crate::client::record::Record;
use crate::client::store::QueueStore;
use crate::ids::{ConflictId, OpId};
use crate::server::seal::Sealed;
use crate::server::wire::{
    BatchResponse, ChangesPage, ConflictStatus, ConflictsPage, DecisionCode, ErrorCode, OpResult,
    OpStatus, Reason, Refusal,
};
use crate::time::Millis;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

impl<S: QueueStore> Coordinator<S> {
    /// The server answered the batch in flight. An answer for another batch (one that timed
    /// out or was abandoned) is ignored: its ops go again and come back as duplicates.
    ///
    /// An answer whose checksum does not match its content was damaged on the way: it fails
    /// the request like no answer (each op counts an attempt and goes again; what the
    /// server did comes back as duplicates). Returns false when it refused the answer as
    /// damaged.
    pub fn on_batch_response(&mut self, now: Millis, response: &BatchResponse) -> bool {
        if matches!(self.in_flight, Some((InFlight::Batch { .. }, _))) && self.damaged(response) {
            self.refuse_damaged(now);
            return false;
        }
        self.take_batch_response(now, response);
        true
    }

    fn take_batch_response(&mut self, now: Millis, response: &BatchResponse) {
        let seqs = match &self.in_flight {
            Some((InFlight::Batch { batch_id, seqs }, _)) if *batch_id == response.batch_id => {
                seqs.clone()
            }
            _ => return,
        };
        self.in_flight = None;
        self.metrics.batches_answered += 1;
        self.answered(now);
        self.telemetry(
            TelemetryKind::SyncBatchSuccess,
            None,
            Some(response.batch_id.clone()),
            None,
        );
        let mut answered = BTreeMap::new();
        for result in &response.results {
            answered.insert(result.op_id.clone(), result);
        }
        // The ops this answer rejects: a dependant answered `blocked` in the same batch
        // waits on them, though they are failed only once every result is taken.
        let rejected: BTreeSet<&OpId> = response
            .results
            .iter()
            .filter(|result| result.status == OpStatus::Rejected)
            .map(|result| &result.op_id)
            .collect();
        let mut failures = Vec::new();
        for &seq in &seqs {
            let op_id = &self
                .queue
                .get(seq)
                .expect("in-flight ops are queued")
                .op
                .op_id;
            match answered.get(op_id) {
                Some(result) => {
                    if let Some(reason) = self.take_result(now, seq, result, &rejected) {
                        failures.push((seq, reason));
                    }
                }
                None => self.fail_attempt(now, seq, "no result for the op"),
            }
        }
        // Failures block their dependants only after every result of the batch is taken,
        // since a dependant in the same batch has its own answer.
        for (seq, reason) in failures {
            let blocked = self.queue.fail(seq, Status::Rejected, &reason);
            self.metrics.rejected += 1;
            let op_id = self
                .queue
                .get(seq)
                .expect("rejected ops stay")
                .op
                .op_id
                .clone();
            self.telemetry(TelemetryKind::SyncOperationError, Some(op_id), None, None);
            self.finished(now, seq);
            self.report_blocked(&blocked);
        }
        self.pull_due = true;
        self.compact_if_needed();
        // Postcondition: every op of the answered batch left the in-flight state (settled,
        // failed, blocked or back to pending).
        assert!(
            seqs.iter().all(|seq| self
                .queue
                .get(*seq)
                .is_none_or(|e| e.status != Status::InFlight)),
            "an op is still in flight after the answer to its batch"
        );
    }

    /// Takes one op's result: settles it, blocks it behind a failed dependency, or schedules
    /// its next attempt. A rejection is returned with its reason, to be failed once the
    /// whole batch is taken.
    fn take_result(
        &mut self,
        now: Millis,
        seq: u64,
        result: &OpResult,
        rejected: &BTreeSet<&OpId>,
    ) -> Option<String> {
        self.queue
            .note_result(seq, result.version, result.conflict_id.clone());
        match result.status {
            OpStatus::Applied | OpStatus::Duplicate | OpStatus::Conflict => {
                self.settle(now, seq, result);
            }
            OpStatus::Rejected => {
                return Some(result.reason.map_or("rejected", Reason::as_str).to_owned());
            }
            OpStatus::Blocked => match self.failed_dependency(seq, rejected) {
                Some(cause) if result.reason == Some(Refusal::DependencyFailed.into()) => {
                    let blocked = self.queue.block(seq, cause);
                    self.report_blocked(&blocked);
                }
                _ => {
                    let reason = result.reason.map_or("blocked", Reason::as_str);
                    self.fail_attempt(now, seq, reason);
                }
            },
            OpStatus::Retry => {
                let reason = result.reason.map_or("retry", Reason::as_str);
                self.fail_attempt(now, seq, reason);
            }
        }
        None
    }

    /// The op that keeps `seq` from applying: a dependency that failed for good (or is
    /// blocked itself, then its cause), counting as failed those `rejected` by the answer
    /// being taken (they are marked failed only once all its results are read).
    fn failed_dependency(&self, seq: u64, rejected: &BTreeSet<&OpId>) -> Option<OpId> {
        let entry = self.queue.get(seq)?;
        entry.op.depends_on.iter().find_map(|dependency| {
            if rejected.contains(dependency) {
                return Some(dependency.clone());
            }
            let dep = self.queue.get(self.queue.seq_of(dependency)?)?;
            match dep.status {
                s if s.is_failed() => Some(dep.op.op_id.clone()),
                Status::Blocked => dep.blocked_by.clone(),
                _ => None,
            }
        })
    }

    pub(super) fn settle(&mut self, now: Millis, seq: u64, result: &OpResult) {
        let status = if result.status == OpStatus::Conflict || result.conflict_id.is_some() {
            Status::Conflict
        } else {
            Status::Applied
        };
        let entry = self.queue.settle(seq, status);
        let op_id = entry.op.op_id.clone();
        if let Some(version) = result.version {
            let entity = if result.deleted {
                Some(&Value::Null)
            } else {
                result.entity.as_ref()
            };
            if self.replica.apply_answer(&entry.op, version, entity) {
                self.events.push(Event::EntityChanged {
                    entity_type: entry.op.entity_type,
                    entity_id: entry.op.entity_id.clone(),
                });
            }
        }
        self.metrics.ops_applied += u64::from(status == Status::Applied);
        self.metrics.duplicates += u64::from(result.status == OpStatus::Duplicate);
        let settle_ms = now.since_ms(entry.enqueued_at_ms);
        self.metrics.settle_ms_total += settle_ms;
        self.metrics.settle_ms_max = self.metrics.settle_ms_max.max(settle_ms);
        self.append_logged(&Record::Finished {
            seq,
            status,
            reason: result.reason.map(|r| r.as_str().to_owned()),
            version: result.version,
            conflict_id: result.conflict_id.clone(),
        });
        if let (Status::Conflict, Some(conflict_id)) = (status, &result.conflict_id) {
            self.record_conflict(&entry, conflict_id, result.reason);
        }
        let skipped = self.config.planted.client.telemetry_skips_duplicates
            && result.status == OpStatus::Duplicate;
        if !skipped {
            self.telemetry(
                TelemetryKind::SyncOperationSuccess,
                Some(op_id.clone()),
                None,
                None,
            );
        }
        let mut update = OpUpdate::new(op_id, status, entry.attempts);
        update.reason = result.reason.map(|r| r.as_str().to_owned());
        update.version = result.version;
        update.conflict_id = result.conflict_id.clone();
        self.events.push(Event::Op(update));
        self.remember(now, &entry);
    }

    /// Keeps a conflict the server reported for `entry`, open when it waits for a person.
    fn record_conflict(&mut self, entry: &Entry, conflict_id: &ConflictId, reason: Option<Reason>) {
        let op_id = entry.op.op_id.clone();
        self.metrics.conflicts += 1;
        let decision = match reason {
            Some(Reason::Decided(code)) => Some(code),
            _ => None,
        };
        let open = decision == Some(DecisionCode::Manual);
        let conflict = LocalConflict {
            conflict_id: conflict_id.clone(),
            op_id: op_id.clone(),
            device_id: self.device_id.clone(),
            entity_type: entry.op.entity_type,
            entity_id: entry.op.entity_id.clone(),
            decision,
            open,
        };
        if open {
            self.append_logged(&Record::ConflictOpen {
                conflict: conflict.clone(),
            });
        }
        self.conflicts.insert(conflict_id.clone(), conflict);
        self.telemetry(
            TelemetryKind::SyncConflictDetected,
            Some(op_id.clone()),
            None,
            Some(conflict_id.clone()),
        );
        if !open {
            self.telemetry(
                TelemetryKind::SyncConflictResolved,
                Some(op_id.clone()),
                None,
                Some(conflict_id.clone()),
            );
        }
    }

    /// Reports a failed op (rejected, expired) and keeps it in the history.
    pub(super) fn finished(&mut self, now: Millis, seq: u64) {
        let entry = self.queue.get(seq).expect("failed ops stay queued").clone();
        self.append_logged(&Record::Finished {
            seq,
            status: entry.status,
            reason: entry.reason.clone(),
            version: entry.version,
            conflict_id: entry.conflict_id.clone(),
        });
        let mut update = OpUpdate::new(entry.op.op_id.clone(), entry.status, entry.attempts);
        update.reason = entry.reason.clone();
        self.events.push(Event::Op(update));
        self.events.push(Event::EntityChanged {
            entity_type: entry.op.entity_type,
            entity_id: entry.op.entity_id.clone(),
        });
        self.remember(now, &entry);
    }

    pub(super) fn report_blocked(&mut self, seqs: &[u64]) {
        if !seqs.is_empty() {
            crate::coverage::hit("client.blocked");
        }
        for &seq in seqs {
            let update = self.blocked_update(seq);
            self.events.push(Event::Op(update));
        }
    }

    /// The report of a blocked op: its attempts, reason and cause.
    pub(super) fn blocked_update(&self, seq: u64) -> OpUpdate {
        let entry = self.queue.get(seq).expect("blocked ops stay queued");
        let mut update = OpUpdate::new(entry.op.op_id.clone(), Status::Blocked, entry.attempts);
        update.reason = entry.reason.clone();
        update.blocked_by = entry.blocked_by.clone();
        update
    }

    pub(super) fn remember(&mut self, now: Millis, entry: &Entry) {
        if self.history.len() == HISTORY_LEN_MAX {
            self.history.pop_front();
        }
        self.history.push_back(HistoryItem {
            op_id: entry.op.op_id.clone(),
            entity_type: entry.op.entity_type,
            entity_id: entry.op.entity_id.clone(),
            kind: entry.op.kind,
            status: entry.status,
            at_ms: now,
            attempts: entry.attempts,
            reason: entry.reason.clone(),
        });
    }

    /// The server answered the pull in flight. Returns false when it refused the page as
    /// damaged.
    pub fn on_pull_response(&mut self, now: Millis, page: &ChangesPage) -> bool {
        if !matches!(self.in_flight, Some((InFlight::Pull, _))) {
            return true;
        }
        if self.damaged(page) {
            self.refuse_damaged(now);
            return false;
        }
        self.take_pull_response(now, page);
        true
    }

    fn take_pull_response(&mut self, now: Millis, page: &ChangesPage) {
        self.in_flight = None;
        self.answered(now);
        self.pull_failures = 0;
        for change in &page.changes {
            if change.deleted && self.config.planted.client.ignores_pulled_deletes {
                continue;
            }
            if self.replica.apply_change(change) {
                self.events.push(Event::EntityChanged {
                    entity_type: change.entity_type,
                    entity_id: change.entity_id.clone(),
                });
            }
        }
        self.replica.cursor = self.replica.cursor.max(page.next_cursor);
        self.pull_due = page.has_more;
        // A finished pull is followed by a listing of the user's open conflicts, unless the
        // server says none wait and the device shows none.
        let shows_none = !self.conflicts.values().any(|c| c.open);
        let none_wait = page.open_conflicts == Some(0);
        self.conflicts_due |= !page.has_more && (!shows_none || !none_wait);
        if page.has_more {
            crate::coverage::hit("client.pull_paged");
        }
        self.metrics.pulls += 1;
        self.metrics.changes_pulled += page.changes.len() as u64;
        self.events.push(Event::Pulled {
            changes: page.changes.len(),
            cursor: self.replica.cursor,
            has_more: page.has_more,
        });
    }

    /// The server answered the resolution in flight (`Ok`), or refused it (`Err`, with the
    /// error code: `already_resolved` counts as done).
    pub fn on_resolve_response(&mut self, now: Millis, result: Result<(), String>) {
        let Some((InFlight::Resolve { conflict_id, .. }, _)) = self.in_flight.clone() else {
            return;
        };
        self.in_flight = None;
        self.answered(now);
        let done = match &result {
            Ok(()) => true,
            Err(code) => code == ErrorCode::AlreadyResolved.as_str(),
        };
        if !done {
            let error = result.err().unwrap_or_default();
            self.request_failed("resolve", format!("{conflict_id}: {error}"));
            return;
        }
        if let Some(conflict) = self.conflicts.get_mut(&conflict_id)
            && conflict.open
        {
            conflict.open = false;
            self.append_logged(&Record::ConflictClosed {
                conflict_id: conflict_id.clone(),
            });
        }
        self.events.push(Event::ConflictResolved {
            conflict_id: conflict_id.clone(),
        });
        self.telemetry(
            TelemetryKind::SyncConflictResolved,
            None,
            None,
            Some(conflict_id),
        );
        self.pull_due = true;
    }

    /// The server answered a page of the listing of the user's open conflicts. Pages are
    /// gathered; after the last one the device's open conflicts become exactly the listed
    /// ones: those raised by the user's other devices are added, those resolved elsewhere
    /// closed, each change kept in the store.
    pub fn on_conflicts_response(&mut self, now: Millis, page: &ConflictsPage) {
        if !matches!(self.in_flight, Some((InFlight::Conflicts, _))) {
            return;
        }
        if self.damaged(page) {
            self.refuse_damaged(now);
            return;
        }
        let listing = self.listing.get_or_insert_with(Default::default);
        if page.has_more && page.next_cursor <= listing.cursor {
            // A page that promises more but moves nothing would be asked for forever.
            self.fail_request(now, "conflicts page did not advance".to_owned());
            return;
        }
        self.in_flight = None;
        self.answered(now);
        self.pull_failures = 0;
        let listing = self.listing.get_or_insert_with(Default::default);
        for record in &page.conflicts {
            if record.status == ConflictStatus::Open {
                listing
                    .found
                    .insert(record.conflict_id.clone(), LocalConflict::listed(record));
            }
        }
        listing.cursor = listing.cursor.max(page.next_cursor);
        if page.has_more {
            crate::coverage::hit("client.conflicts_paged");
            return;
        }
        let found = self.listing.take().map(|l| l.found).unwrap_or_default();
        self.conflicts_due = false;
        let closed: Vec<ConflictId> = self
            .conflicts
            .values()
            .filter(|c| c.open && !found.contains_key(&c.conflict_id))
            .filter(|_| {
                !self
                    .config
                    .planted
                    .client
                    .keeps_conflicts_resolved_elsewhere
            })
            .map(|c| c.conflict_id.clone())
            .collect();
        for conflict_id in closed {
            crate::coverage::hit("client.conflict_closed_elsewhere");
            if let Some(conflict) = self.conflicts.get_mut(&conflict_id) {
                conflict.open = false;
            }
            self.append_logged(&Record::ConflictClosed { conflict_id });
        }
        for (conflict_id, conflict) in found {
            let known = self.conflicts.get(&conflict_id).is_some_and(|c| c.open);
            if !known {
                if conflict.device_id != self.device_id {
                    crate::coverage::hit("client.conflict_listed_from_other_device");
                }
                self.append_logged(&Record::ConflictOpen {
                    conflict: conflict.clone(),
                });
                self.conflicts.insert(conflict_id, conflict);
            }
        }
        let open = self
            .conflicts
            .values()
            .filter(|c| c.open)
            .map(|c| c.conflict_id.clone())
            .collect();
        self.events.push(Event::ConflictsListed { open });
        self.compact_if_needed();
    }

    /// The answer to the request in flight does not match its own checksum: it is taken as
    /// no answer.
    /// Whether an answer does not match its checksum (never, with the planted bug that
    /// ignores answer checksums).
    fn damaged(&self, answer: &impl Sealed) -> bool {
        !self.config.planted.client.ignores_answer_checksum && !answer.intact()
    }

    fn refuse_damaged(&mut self, now: Millis) {
        crate::coverage::hit("client.damaged_answer_refused");
        self.fail_request(now, "damaged answer (checksum mismatch)".to_owned());
    }
}
