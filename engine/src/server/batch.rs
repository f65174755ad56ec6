//! A batch, op by op: each op is decided (see [`super::decide`]) and committed on its own,
//! then the batch's record, the device's state and the metrics are written.

use super::decide::{OpOutcome, Stored, conflict_id};
use super::replay;
use super::seal::Sealed;
use super::tables::{BatchRecord, Commit, Flushing, IdempotencyRecord, QueueRow, ServerStore};
use super::wire::{
    BatchResponse, DeviceState, HistoryRow, HistoryStatus, MetricsWindow, NetworkQuality, OpResult,
    OpStatus, Refusal,
};
use super::{METRICS_WINDOW_MS, RequestError, Server};
use crate::ids::{DeviceId, IdempotencyKey, UserId};
use crate::op::{Batch, Op};
use crate::strategy::Strategy;
use crate::time::Millis;
use std::collections::BTreeMap;

impl<S: ServerStore> Server<S> {
    /// Handles `POST /api/sync/batch` for the authenticated `user` at server time `now`:
    /// [`Server::admit_batch`], [`Server::handle_op`] for each op, [`Server::finish_batch`].
    /// The HTTP layer calls the three itself, taking the server's lock per op, so that no
    /// batch holds the server for longer than one op.
    pub fn handle_batch(
        &mut self,
        user: &UserId,
        batch: &Batch,
        now: Millis,
    ) -> Result<BatchResponse, RequestError> {
        self.admit_batch(batch)?;
        let epoch = self.store_epoch();
        let mut results = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            results.push(self.handle_op(user, batch, op, now, now));
        }
        let response = self.finish_batch(user, batch, results, now, now)?;
        self.flush_for(epoch)?;
        Ok(response)
    }

    /// Flushes, then refuses to answer a request begun in `epoch` if a flush failed since
    /// (its commits, or those it read, were undone).
    pub fn flush_for(&mut self, epoch: u64) -> Result<(), RequestError> {
        self.flush()?;
        self.same_epoch(epoch)
    }

    /// [`Server::flush_for`] as a flush begun (see [`Server::begin_flush`]): the request's
    /// answer waits for the returned flush after the server's lock is released.
    pub fn begin_flush_for(&mut self, epoch: u64) -> Result<Flushing, RequestError> {
        let flushing = self.begin_flush()?;
        self.same_epoch(epoch)?;
        Ok(flushing)
    }

    fn same_epoch(&self, epoch: u64) -> Result<(), RequestError> {
        if self.store_epoch() != epoch {
            return Err(RequestError::Unavailable {
                message: "the server's store lost writes this request made or read; nothing \
                          of it holds, try again"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// Processes one op of an admitted batch that arrived at `received_at`, at server time
    /// `now`, and commits everything it changes in one step (its history row keeps the time
    /// between the two as its duration).
    pub fn handle_op(
        &mut self,
        user: &UserId,
        batch: &Batch,
        op: &Op,
        received_at: Millis,
        now: Millis,
    ) -> OpResult {
        let outcome = self.decide_op(user, batch, op, now);
        crate::coverage::hit_with(|| answer_point(&outcome.result));
        let tables = self.store.tables();
        let seq = tables.next_seq(user);
        let result = outcome.result;

        // Only final answers are remembered under the idempotency key: a corrupted copy, a
        // reused key, a blocked op or a retry may be sent again and must then be processed.
        let remember = outcome.remember
            && !tables
                .sync_idempotency_keys
                .contains_key(&(user.clone(), op.idempotency_key.clone()));
        let idempotency = remember.then(|| {
            (
                op.idempotency_key.clone(),
                IdempotencyRecord {
                    op_checksum: op.checksum.clone(),
                    result: result.clone(),
                    at_ms: now,
                },
            )
        });
        // A duplicate leaves the original's queue row untouched, and an op that is not
        // stored (damaged, bad ids, a reused key or op id) must not overwrite the row of the
        // op whose id it claims.
        let queue = (outcome.stored == Stored::Full)
            .then(|| (op.op_id.clone(), queue_row(batch, op, &result, now)));
        let history = (outcome.stored != Stored::Nothing).then(|| {
            history_row(
                batch,
                op,
                &result,
                outcome.strategy,
                seq,
                (received_at, now),
            )
        });
        let (device, metrics) = self.counted_op(user, &batch.device_id, result.status, now);
        let conflict = outcome.conflict.map(|mut record| {
            record.conflict_id = conflict_id(user, seq);
            record
        });
        // The conflict id is the commit's sequence number, known only now; the remembered
        // result must carry it too, so that a duplicate answers with the same id.
        let mut result = result;
        if let Some(record) = &conflict {
            result.conflict_id = Some(record.conflict_id.clone());
        }
        let idempotency = idempotency.map(|(key, mut record)| {
            record.result = result.clone();
            (key, record)
        });
        let idempotency = self.hold_if_split(user, idempotency);
        let committed = self.store.commit(Commit {
            user: user.clone(),
            seq,
            entity: outcome.entity,
            queue,
            idempotency,
            history,
            conflict,
            device: Some(device),
            metrics: Some(metrics),
            batch: None,
        });
        match committed {
            Ok(()) => result,
            // Nothing of the op was applied: the client resends it later.
            Err(_) => OpOutcome::answer(op, OpStatus::Retry, Refusal::StorageFull, false).result,
        }
    }

    /// Records an admitted batch whose ops were all handled, with their `results`, and
    /// registers its device to `user` (unless another user's batch registered it first
    /// meanwhile, when only the batch row is kept).
    /// The batch arrived at `received_at` and is answered at `now`: the time between is
    /// its decision time, kept in its record and the metrics window; the device's report,
    /// if it sent one, goes to its `sync_state` row and its round trip to the metrics.
    pub fn finish_batch(
        &mut self,
        user: &UserId,
        batch: &Batch,
        results: Vec<OpResult>,
        received_at: Millis,
        now: Millis,
    ) -> Result<BatchResponse, RequestError> {
        for (held_user, key, record) in std::mem::take(&mut self.held_keys) {
            let tables = self.store.tables();
            if tables
                .sync_idempotency_keys
                .contains_key(&(held_user.clone(), key.clone()))
            {
                continue;
            }
            let seq = self.store.tables().next_seq(&held_user);
            self.store.commit(Commit {
                user: held_user,
                seq,
                idempotency: Some((key, record)),
                ..Commit::default()
            })?;
        }
        let mut statuses = BTreeMap::new();
        for result in &results {
            *statuses.entry(result.status).or_insert(0) += 1;
        }
        let decide_ms = now.0.saturating_sub(received_at.0);
        let mut device = self.device_state(user, &batch.device_id);
        device.batch_count = device.batch_count.saturating_add(1);
        device.last_batch_at_ms = Some(now);
        let mut metrics = self.metrics_window(user, now);
        metrics.batches += 1;
        metrics.decide_ms_total = metrics.decide_ms_total.saturating_add(decide_ms);
        metrics.decide_ms_max = metrics.decide_ms_max.max(decide_ms);
        if let Some(report) = &batch.report {
            device.network_quality = Some(NetworkQuality::of(report));
            device.report = Some(report.clone());
            if let Some(round_trip_ms) = report.round_trip_ms {
                metrics.round_trips += 1;
                metrics.round_trip_ms_total =
                    metrics.round_trip_ms_total.saturating_add(round_trip_ms);
                metrics.round_trip_ms_max = metrics.round_trip_ms_max.max(round_trip_ms);
            }
        }
        let device = Some(device);
        let seq = self.store.tables().next_seq(user);
        self.store.commit(Commit {
            user: user.clone(),
            seq,
            batch: Some((
                batch.batch_id.clone(),
                BatchRecord {
                    device_id: batch.device_id.clone(),
                    op_count: batch.ops.len() as u64,
                    statuses,
                    checksum: batch.checksum.clone(),
                    received_at_ms: received_at,
                    decide_ms: Some(decide_ms),
                },
            )),
            device,
            metrics: Some(metrics),
            ..Commit::default()
        })?;
        Ok(BatchResponse {
            batch_id: batch.batch_id.clone(),
            server_time_ms: now,
            results,
            checksum: None,
        }
        .sealed())
    }

    /// The planted split commit keeps an op's idempotency record in memory, to commit it
    /// with the batch's record; a correct server commits it with the op.
    fn hold_if_split(
        &mut self,
        user: &UserId,
        idempotency: Option<(IdempotencyKey, IdempotencyRecord)>,
    ) -> Option<(IdempotencyKey, IdempotencyRecord)> {
        match idempotency {
            Some((key, record)) if self.config.planted.server.splits_commit => {
                self.held_keys.push((user.clone(), key, record));
                None
            }
            other => other,
        }
    }

    /// The device's row and the metrics window with one more op of `status` counted.
    fn counted_op(
        &self,
        user: &UserId,
        device_id: &DeviceId,
        status: OpStatus,
        now: Millis,
    ) -> (DeviceState, MetricsWindow) {
        let mut device = self.device_state(user, device_id);
        device.op_count = device.op_count.saturating_add(1);
        let mut metrics = self.metrics_window(user, now);
        metrics.ops += 1;
        count(&mut metrics, status);
        (device, metrics)
    }

    pub(super) fn device_state(&self, user: &UserId, device_id: &DeviceId) -> DeviceState {
        self.store
            .tables()
            .sync_state
            .get(&(user.clone(), device_id.clone()))
            .cloned()
            .unwrap_or_else(|| DeviceState {
                device_id: device_id.clone(),
                ..DeviceState::default()
            })
    }

    pub(super) fn metrics_window(&self, user: &UserId, now: Millis) -> MetricsWindow {
        let start = Millis(now.0 - now.0 % METRICS_WINDOW_MS);
        self.store
            .tables()
            .sync_metrics
            .get(&(user.clone(), start))
            .cloned()
            .unwrap_or(MetricsWindow {
                window_start_ms: start,
                ..MetricsWindow::default()
            })
    }
}

/// The queue row of a stored op: its latest status.
fn queue_row(batch: &Batch, op: &Op, result: &OpResult, now: Millis) -> QueueRow {
    QueueRow {
        idempotency_key: op.idempotency_key.clone(),
        device_id: batch.device_id.clone(),
        batch_id: batch.batch_id.clone(),
        entity_type: op.entity_type,
        entity_id: op.entity_id.clone(),
        kind: op.kind,
        status: result.status,
        reason: result.reason,
        received_at_ms: now,
    }
}

/// The history row of an op that is stored at least in the history.
fn history_row(
    batch: &Batch,
    op: &Op,
    result: &OpResult,
    strategy: Option<Strategy>,
    seq: u64,
    (received_at, now): (Millis, Millis),
) -> HistoryRow {
    HistoryRow {
        seq,
        at_ms: now,
        duration_ms: Some(now.0.saturating_sub(received_at.0)),
        device_id: batch.device_id.clone(),
        op_id: Some(op.op_id.clone()),
        idempotency_key: Some(op.idempotency_key.clone()),
        entity_type: op.entity_type,
        entity_id: op.entity_id.clone(),
        action: op.kind.into(),
        status: HistoryStatus::Op(result.status),
        reason: result.reason,
        version: result.version,
        // Every decided op is logged with its write, including those that changed
        // nothing (a kept server state, a manual conflict), so that the reference replay
        // can check every decision, not only the effective ones.
        write: strategy.map(|strategy| replay::LoggedWrite::Op {
            kind: op.kind,
            base_version: op.base_version,
            payload: op.payload.clone(),
            client_timestamp_ms: op.client_timestamp_ms,
            strategy: Some(strategy),
        }),
    }
}

/// Counts an op's status in its metrics window.
fn count(metrics: &mut MetricsWindow, status: OpStatus) {
    match status {
        OpStatus::Applied => metrics.applied += 1,
        OpStatus::Duplicate => metrics.duplicates += 1,
        OpStatus::Conflict => metrics.conflicts += 1,
        OpStatus::Rejected => metrics.rejected += 1,
        OpStatus::Blocked => metrics.blocked += 1,
        OpStatus::Retry => metrics.retries += 1,
    }
}

/// The coverage point of an answer: its status, and its reason when it has one (a
/// duplicate's copied reason is the original's, not its own).
fn answer_point(result: &OpResult) -> String {
    match (result.status, result.reason) {
        (OpStatus::Duplicate, _) | (_, None) => format!("server.answer.{}", result.status),
        (status, Some(reason)) => format!("server.answer.{status}.{reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coverage::POINTS;
    use crate::server::wire::{DecisionCode, Refusal};

    /// Every answer the server can give names a declared coverage point.
    #[test]
    fn every_answer_the_server_can_give_is_a_declared_coverage_point() {
        let answer = |status, reason| OpResult {
            op_id: crate::ids::OpId("op".into()),
            status,
            version: None,
            entity: None,
            deleted: false,
            conflict_id: None,
            reason,
        };
        let mut answers = vec![
            answer(OpStatus::Applied, None),
            answer(OpStatus::Duplicate, Some(DecisionCode::Merged.into())),
        ];
        for &refusal in Refusal::ALL {
            let status = match refusal {
                Refusal::DependencyMissing | Refusal::DependencyFailed => OpStatus::Blocked,
                Refusal::StorageFull => OpStatus::Retry,
                _ => OpStatus::Rejected,
            };
            answers.push(answer(status, Some(refusal.into())));
        }
        for &code in DecisionCode::ALL {
            if code != DecisionCode::AlreadyDeleted {
                answers.push(answer(OpStatus::Conflict, Some(code.into())));
            }
        }
        for result in answers {
            let point = answer_point(&result);
            assert!(
                POINTS.iter().any(|(name, _)| *name == point),
                "{point} is not declared"
            );
        }
    }
}
