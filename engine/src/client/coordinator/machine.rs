//! The state machine: going on- and offline, choosing the next request (`poll`), timers
//! (`next_wake_at`, `tick`, TTL expiry), failed requests and the backoff they set, and the
//! invariants that tie the parts together.

use super::{Coordinator, InFlight, Request};
use crate::client::observe::{Event, OpUpdate, TelemetryKind};
use crate::client::queue::Status;
use crate::client::record::Record;
use crate::client::store::QueueStore;
use crate::entity::Priority;
use crate::ids::BatchId;
use crate::op::{Batch, ClientReport, Op};
use crate::time::Millis;
use std::collections::BTreeSet;

impl<S: QueueStore> Coordinator<S> {
    /// The network went up or down. Going down fails nothing: a request in flight is
    /// abandoned and its ops go back to pending without counting an attempt.
    pub fn set_online(&mut self, now: Millis, online: bool) {
        if online == self.online {
            return;
        }
        self.online = online;
        self.events.push(Event::Online { online });
        if online {
            self.sync_now(now);
            return;
        }
        self.abandon_in_flight("offline");
        self.queue.promote(now);
    }

    /// Ends the request in flight without failing anything: a batch's ops go back to
    /// pending without counting an attempt, a resolution is asked again.
    fn abandon_in_flight(&mut self, why: &str) {
        match self.in_flight.take() {
            Some((InFlight::Batch { .. }, _))
                if self.config.planted.client.strands_in_flight_offline => {}
            Some((InFlight::Batch { seqs, .. }, _)) => {
                for seq in seqs {
                    self.queue.requeue(seq);
                    let entry = self.queue.get(seq).expect("requeued");
                    self.events.push(Event::Op(OpUpdate::new(
                        entry.op.op_id.clone(),
                        Status::Pending,
                        entry.attempts,
                    )));
                }
                self.request_failed("batch", why.to_owned());
            }
            Some((
                InFlight::Resolve {
                    conflict_id,
                    request,
                },
                _,
            )) => {
                // Asked again once online; a resolution that did reach the server comes
                // back as `already_resolved`, which counts as done.
                self.resolves.push_front((conflict_id, request));
                self.request_failed("resolve", why.to_owned());
            }
            Some((InFlight::Pull, _)) => self.request_failed("pull", why.to_owned()),
            Some((InFlight::Conflicts, _)) => {
                self.listing = None;
                self.request_failed("conflicts", why.to_owned());
            }
            None => {}
        }
    }

    /// The server refused the request in flight as overloaded (503 or 429) and said when to
    /// come back (`Retry-After`). Nothing failed: the request is abandoned as if the device
    /// had gone offline (no attempt counted), and no request goes before `retry_after_ms`
    /// has passed. The wait binds even when the request already ended (the device went offline with it
    /// in flight and the answer came anyway): the server asked to be left alone.
    pub fn on_overloaded(&mut self, now: Millis, retry_after_ms: u64) {
        if self.config.planted.client.ignores_retry_after {
            if self.in_flight.is_some() {
                self.fail_request(now, "overloaded".to_owned());
            }
            return;
        }
        self.quiet_until = self.quiet_until.max(now.plus_ms(retry_after_ms));
        if self.in_flight.is_none() {
            return;
        }
        crate::coverage::hit("client.retry_after_honoured");
        self.failed_requests = self.failed_requests.saturating_add(1);
        if let Some((InFlight::Batch { batch_id, .. }, _)) = &self.in_flight {
            let batch_id = batch_id.clone();
            self.telemetry(TelemetryKind::SyncBatchError, None, Some(batch_id), None);
        }
        self.abandon_in_flight(&format!("overloaded, retry after {retry_after_ms} ms"));
        self.queue.promote(now);
    }

    /// Checks that the coordinator's parts agree, and panics if they do not: the queue's
    /// indexes (readiness, backoff, op ids, waiting counts; nothing both blocked and
    /// ready), the ops marked in flight against the batch in flight, no request in flight
    /// while offline, and seqs below the next one. For the model-based proptest after
    /// every step, and for the simulation after every step with `--paranoid` (which skips
    /// runs whose planted bug strands in-flight ops: that bug breaks these invariants on
    /// purpose, and a test here shows they catch it).
    pub fn check_invariants(&self, now: Millis) {
        self.queue.check_index(now);
        let batch: BTreeSet<u64> = match &self.in_flight {
            Some((InFlight::Batch { seqs, .. }, _)) => seqs.iter().copied().collect(),
            _ => BTreeSet::new(),
        };
        assert_eq!(
            self.queue.seqs_with(Status::InFlight),
            batch,
            "the ops marked in flight are the batch in flight"
        );
        assert!(
            self.online || self.in_flight.is_none(),
            "no request is in flight while offline"
        );
        if let Some(last) = self.queue.last_seq() {
            assert!(last < self.next_seq, "seq {last} is not below the next seq");
        }
    }

    /// The next request to send, if any. Call after every event until it returns `None`.
    pub fn poll(&mut self, now: Millis) -> Option<Request> {
        let request = self.next_request(now);
        if request.is_some() {
            self.sent_at = now;
        }
        request
    }

    /// An answer to the request in flight arrived at `now`: its round trip is measured.
    pub(super) fn answered(&mut self, now: Millis) {
        self.last_sync_at = Some(now);
        self.metrics.last_round_trip_ms = Some(now.0.saturating_sub(self.sent_at.0));
        self.failed_requests = 0;
    }

    /// What the device says about itself with a batch (its queue, its requests so far).
    fn report(&self) -> ClientReport {
        let stats = self.queue.stats();
        ClientReport {
            pending: (stats.pending + stats.in_flight) as u64,
            blocked: stats.blocked as u64,
            failed: (stats.rejected + stats.error + stats.expired) as u64,
            round_trip_ms: self.metrics.last_round_trip_ms,
            failed_requests: self.failed_requests,
        }
    }

    fn next_request(&mut self, now: Millis) -> Option<Request> {
        self.tick(now);
        if !self.online || self.in_flight.is_some() || now < self.quiet_until {
            return None;
        }
        let deadline = now.plus_ms(self.config.batch_timeout_ms);
        if let Some((conflict_id, request)) = self.resolves.pop_front() {
            self.in_flight = Some((
                InFlight::Resolve {
                    conflict_id: conflict_id.clone(),
                    request: request.clone(),
                },
                deadline,
            ));
            return Some(Request::Resolve {
                conflict_id,
                request,
            });
        }
        let mut seqs = if self.config.planted.client.fills_batches_by_age {
            self.oldest_ready_batch()
        } else {
            self.queue.select(self.config.batch_size)
        };
        if self.config.planted.client.ignores_priority {
            seqs.sort_unstable();
        }
        if self.config.planted.client.sends_child_before_parent {
            seqs.reverse();
        }
        if !seqs.is_empty() && !self.window_holds(now, &seqs) {
            return Some(self.send_batch(seqs, deadline));
        }
        if self.pull_due && now >= self.pull_not_before {
            self.in_flight = Some((InFlight::Pull, deadline));
            return Some(Request::Pull {
                cursor: self.replica.cursor,
                limit: self.config.pull_page_len,
            });
        }
        if self.conflicts_due && !self.pull_due && now >= self.pull_not_before {
            if self.listing.is_none() {
                self.events.push(Event::ListingConflicts);
            }
            let listing = self.listing.get_or_insert_with(Default::default);
            let cursor = listing.cursor;
            self.in_flight = Some((InFlight::Conflicts, deadline));
            return Some(Request::Conflicts {
                cursor,
                limit: self.config.pull_page_len,
            });
        }
        None
    }

    /// The batching window (`batch_window_ms`): a batch that is not full and carries no
    /// priority-0 op waits until the window, opened by the first poll that found it, closes.
    fn window_holds(&mut self, now: Millis, seqs: &[u64]) -> bool {
        let window = self.config.batch_window_ms;
        if window == 0 || seqs.len() >= self.config.batch_size {
            return false;
        }
        let critical = seqs.iter().any(|seq| {
            self.queue
                .get(*seq)
                .is_some_and(|e| e.op.priority == Priority::CRITICAL)
        });
        if critical {
            return false;
        }
        let opened = *self.window_opened_at.get_or_insert(now);
        let holds = now < opened.plus_ms(window);
        if holds {
            crate::coverage::hit("client.batch_window_held");
        }
        holds
    }

    /// The planted `fills_batches_by_age` selection: the batch's ops are the oldest of
    /// what a batch could carry, kept in the order `select` gives them.
    fn oldest_ready_batch(&self) -> Vec<u64> {
        let mut all = self.queue.select(self.queue.len());
        let mut by_age = all.clone();
        by_age.sort_unstable();
        by_age.truncate(self.config.batch_size);
        all.retain(|seq| by_age.binary_search(seq).is_ok());
        all
    }

    pub(super) fn send_batch(&mut self, seqs: Vec<u64>, deadline: Millis) -> Request {
        if seqs.len() == self.config.batch_size {
            crate::coverage::hit("client.full_batch");
        }
        self.queue.mark_in_flight(&seqs);
        self.window_opened_at = None;
        self.batch_count += 1;
        let batch_id = BatchId(format!(
            "{}:{}:{}",
            self.device_id, self.incarnation, self.batch_count
        ));
        let ops: Vec<Op> = seqs
            .iter()
            .map(|seq| self.queue.get(*seq).expect("selected").op.clone())
            .collect();
        self.metrics.batches_sent += 1;
        self.metrics.ops_sent += ops.len() as u64;
        self.events.push(Event::BatchSent {
            batch_id: batch_id.clone(),
            op_ids: ops.iter().map(|op| op.op_id.clone()).collect(),
        });
        for op in &ops {
            self.telemetry(
                TelemetryKind::SyncOperationStart,
                Some(op.op_id.clone()),
                Some(batch_id.clone()),
                None,
            );
        }
        self.in_flight = Some((
            InFlight::Batch {
                batch_id: batch_id.clone(),
                seqs,
            },
            deadline,
        ));
        let report = self.report();
        Request::Batch(Batch::reporting(
            batch_id,
            self.device_id.clone(),
            ops,
            Some(report),
        ))
    }

    /// When the caller should call [`Coordinator::poll`] next, if nothing else happens first.
    pub fn next_wake_at(&self) -> Option<Millis> {
        let mut wake: Option<Millis> = self.queue.next_expiry_at();
        let mut consider = |at: Millis| wake = Some(wake.map_or(at, |w| w.min(at)));
        if let Some((_, deadline)) = &self.in_flight {
            consider(*deadline);
        } else if self.online {
            // Nothing goes before the server's `Retry-After`.
            let quiet_until = self.quiet_until;
            let mut consider = |at: Millis| consider(at.max(quiet_until));
            if let Some(at) = self.queue.next_due_at() {
                consider(at);
            }
            if !self.resolves.is_empty() {
                consider(Millis(0));
            }
            if self.queue.has_ready() {
                // At once, or when the batching window that holds the ready ops closes.
                let window = self.config.batch_window_ms;
                consider(
                    self.window_opened_at
                        .map_or(Millis(0), |o| o.plus_ms(window)),
                );
            }
            if self.pull_due || self.conflicts_due {
                consider(self.pull_not_before);
            }
            consider(self.next_auto_sync_at);
        }
        wake
    }

    /// Runs the timers due at `now`: request timeout, TTL expiry, automatic sync, backoff
    /// ends. [`Coordinator::poll`] calls it first; calling it twice changes nothing.
    pub fn tick(&mut self, now: Millis) {
        if let Some((_, deadline)) = &self.in_flight {
            if *deadline <= now {
                self.fail_request(now, "timeout".to_owned());
            }
        }
        for seq in self.queue.expired_by(now) {
            self.expire(now, seq);
        }
        if self.online && now >= self.next_auto_sync_at {
            self.pull_due = true;
            self.next_auto_sync_at = now.plus_ms(self.config.auto_sync_interval_ms);
        }
        self.queue.promote(now);
    }

    pub(super) fn expire(&mut self, now: Millis, seq: u64) {
        crate::coverage::hit("client.expired");
        let reason = format!(
            "not sent within the queue TTL of {} ms",
            self.config.queue_ttl_ms
        );
        let blocked = self.queue.fail(seq, Status::Expired, &reason);
        self.metrics.expired += 1;
        self.finished(now, seq);
        self.report_blocked(&blocked);
    }

    /// The request in flight got no usable answer (transport error, HTTP error, timeout).
    /// A batch counts one failed attempt for each of its ops.
    pub fn on_request_failed(&mut self, now: Millis, reason: &str) {
        if self.in_flight.is_some() {
            self.fail_request(now, reason.to_owned());
        }
    }

    pub(super) fn fail_request(&mut self, now: Millis, reason: String) {
        let (in_flight, _) = self.in_flight.take().expect("a request is in flight");
        self.failed_requests = self.failed_requests.saturating_add(1);
        match in_flight {
            InFlight::Batch { batch_id, seqs } => {
                self.metrics.batches_failed += 1;
                self.telemetry(TelemetryKind::SyncBatchError, None, Some(batch_id), None);
                for seq in seqs {
                    self.fail_attempt(now, seq, &reason);
                }
                self.request_failed("batch", reason);
            }
            InFlight::Pull | InFlight::Conflicts => {
                let request = if matches!(in_flight, InFlight::Pull) {
                    "pull"
                } else {
                    // A failed page starts the listing over.
                    self.listing = None;
                    "conflicts"
                };
                self.pull_failures += 1;
                let delay = self
                    .config
                    .backoff
                    .delay_ms(self.pull_failures, &mut self.rng);
                self.pull_not_before = now.plus_ms(delay);
                self.request_failed(request, reason);
            }
            InFlight::Resolve { conflict_id, .. } => {
                self.request_failed("resolve", format!("{conflict_id}: {reason}"));
            }
        }
    }

    pub(super) fn request_failed(&mut self, request: &'static str, reason: String) {
        self.last_error = Some(format!("{request}: {reason}"));
        self.events.push(Event::RequestFailed { request, reason });
    }

    pub(super) fn fail_attempt(&mut self, now: Millis, seq: u64, reason: &str) {
        let entry = self.queue.get(seq).expect("failed ops are queued");
        let mut attempts = entry.attempts + 1;
        if self.config.planted.client.resets_backoff {
            attempts = 1;
        }
        let op_id = entry.op.op_id.clone();
        let dead = self.config.max_retries.is_some_and(|max| attempts >= max);
        let mut delay_ms = self.config.backoff.delay_ms(attempts, &mut self.rng);
        if self.config.planted.client.retries_immediately {
            delay_ms = 0;
        }
        let next_attempt_at_ms = now.plus_ms(delay_ms);
        let blocked = self
            .queue
            .fail_attempt(seq, next_attempt_at_ms, dead, reason);
        self.metrics.failed_attempts += 1;
        self.append_logged(&Record::Attempted {
            seq,
            attempts,
            next_attempt_at_ms,
            dead,
            reason: reason.to_owned(),
        });
        self.telemetry(
            TelemetryKind::SyncOperationError,
            Some(op_id.clone()),
            None,
            None,
        );
        if dead {
            crate::coverage::hit("client.dead_lettered");
            self.metrics.dead_lettered += 1;
            let mut update = OpUpdate::new(op_id, Status::Error, attempts);
            update.reason = Some(reason.to_owned());
            self.events.push(Event::Op(update));
            self.report_blocked(&blocked);
        } else if let Some((&this, dependants)) = blocked.split_first() {
            // A blocker died in the same batch: this op (first of the blocked) is blocked,
            // not retried. The attempt still counts, so its report carries the wait it
            // keeps once a retry of the blocker frees it.
            crate::coverage::hit("client.blocked");
            let mut update = self.blocked_update(this);
            update.delay_ms = Some(delay_ms);
            update.next_attempt_at_ms = Some(next_attempt_at_ms);
            self.events.push(Event::Op(update));
            self.report_blocked(dependants);
        } else {
            let mut update = OpUpdate::new(op_id, Status::Pending, attempts);
            update.reason = Some(reason.to_owned());
            update.delay_ms = Some(delay_ms);
            update.next_attempt_at_ms = Some(next_attempt_at_ms);
            self.events.push(Event::Op(update));
        }
    }
}
