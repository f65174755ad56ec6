//! The client's queue in memory: every op not yet settled, its status, and the incremental
//! index that answers "which ops may go next" without rescanning the queue.
//!
//! An op *blocks on* the previous open op on the same entity and on its parents' open
//! creates (its `depends_on`). `waiting` counts the blockers that have not settled. The index
//! keeps three sets so that every question costs O(log n) per op touched:
//! - `ready`: pending, due, waiting on nothing — keyed by `(priority, seq)`;
//! - `backing_off`: pending but not due until `next_attempt_at_ms`;
//! - `expiry`: every op by the time its TTL runs out.
//!
//! An op that settles well (applied, or a conflict the server decided) leaves the queue and
//! releases its dependants. An op that fails for good (rejected, dead-lettered, expired)
//! stays, visible, and every op that waits on it, directly or not, becomes blocked. A manual
//! retry of a dead-lettered op unblocks them again. The reference definition of readiness and
//! batch order is [`crate::ordering`]; the model test checks this index against it.

mod entry;

pub use entry::{Entry, QueueStats, Status};

use crate::entity::{EntityType, Priority};
use crate::ids::{ConflictId, EntityId, OpId};
use crate::op::OpKind;
use crate::time::Millis;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// The open ops of one device with their readiness index.
#[derive(Clone, Debug, Default)]
pub struct Queue {
    entries: BTreeMap<u64, Entry>,
    by_op: BTreeMap<OpId, u64>,
    last_on_entity: BTreeMap<(EntityType, EntityId), u64>,
    ready: BTreeSet<(Priority, u64)>,
    backing_off: BTreeSet<(Millis, u64)>,
    expiry: BTreeSet<(Millis, u64)>,
    /// How many entries hold each status (kept as statuses change, so `stats` is O(1)).
    counts: [usize; STATUS_COUNT],
    ttl_ms: u64,
}

/// The number of [`Status`] values.
const STATUS_COUNT: usize = 8;

/// Moves one op's status from what `slot` holds to `status`, keeping `counts`.
fn set_status(counts: &mut [usize; STATUS_COUNT], slot: &mut Status, status: Status) {
    counts[*slot as usize] -= 1;
    counts[status as usize] += 1;
    *slot = status;
}

impl Queue {
    /// An empty queue whose ops expire `ttl_ms` after they are enqueued.
    pub fn new(ttl_ms: u64) -> Queue {
        Queue {
            ttl_ms,
            ..Queue::default()
        }
    }

    /// Number of ops held (every status).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the queue holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry at `seq`.
    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    /// The seq of the op `op_id`.
    pub fn seq_of(&self, op_id: &OpId) -> Option<u64> {
        self.by_op.get(op_id).copied()
    }

    /// Every entry in enqueue order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The last open op on `entity`, which a new op on it must wait for.
    pub fn last_on_entity(&self, entity: &(EntityType, EntityId)) -> Option<&Entry> {
        self.last_on_entity
            .get(entity)
            .and_then(|seq| self.entries.get(seq))
    }

    /// The open create of `entity`, if it has not settled yet.
    pub fn open_create(&self, entity: &(EntityType, EntityId)) -> Option<&Entry> {
        // Ops on one entity are chained, so the create, if still open, is the first of them:
        // walk back from the last one.
        let mut entry = self.last_on_entity(entity)?;
        loop {
            if entry.op.kind == OpKind::Create {
                return Some(entry);
            }
            let previous = entry
                .blockers
                .iter()
                .filter_map(|seq| self.entries.get(seq))
                .find(|blocker| blocker.entity() == *entity)?;
            entry = previous;
        }
    }

    /// Counts by status, in O(1).
    pub fn stats(&self) -> QueueStats {
        let count = |status: Status| self.counts[status as usize];
        QueueStats {
            pending: count(Status::Pending),
            ready: self.ready.len(),
            in_flight: count(Status::InFlight),
            rejected: count(Status::Rejected),
            error: count(Status::Error),
            expired: count(Status::Expired),
            blocked: count(Status::Blocked),
        }
    }

    /// The seqs of the ops in `status`.
    pub fn seqs_with(&self, status: Status) -> BTreeSet<u64> {
        self.entries
            .iter()
            .filter(|(_, entry)| entry.status == status)
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// The highest seq held, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    /// Adds `entry` (pending, or in any status when rebuilding after a restart). Blockers
    /// not in the queue count as settled. Returns the failed op that blocks it, if any, in
    /// which case the entry is stored as blocked.
    pub fn insert(&mut self, mut entry: Entry) -> Option<OpId> {
        let seq = entry.seq;
        assert!(
            !self.entries.contains_key(&seq),
            "seq {seq} is already queued"
        );
        assert!(
            !self.by_op.contains_key(&entry.op.op_id),
            "op {} is already queued",
            entry.op.op_id
        );
        let mut failed_blocker = None;
        entry.waiting = 0;
        for blocker_seq in &entry.blockers {
            assert!(*blocker_seq < seq, "an op only blocks on earlier ops");
            if let Some(blocker) = self.entries.get_mut(blocker_seq) {
                blocker.dependants.push(seq);
                entry.waiting += 1;
                if blocker.status.is_failed() || blocker.status == Status::Blocked {
                    failed_blocker.get_or_insert_with(|| {
                        blocker
                            .blocked_by
                            .clone()
                            .unwrap_or_else(|| blocker.op.op_id.clone())
                    });
                }
            }
        }
        if entry.status == Status::InFlight {
            entry.status = Status::Pending;
        }
        if entry.status == Status::Pending {
            if let Some(cause) = &failed_blocker {
                entry.status = Status::Blocked;
                entry.blocked_by = Some(cause.clone());
                entry.reason = Some("dependency_failed".to_owned());
            }
        }
        self.by_op.insert(entry.op.op_id.clone(), seq);
        self.last_on_entity.insert(entry.entity(), seq);
        if !entry.status.is_failed() {
            self.expiry
                .insert((entry.enqueued_at_ms.plus_ms(self.ttl_ms), seq));
        }
        let status = entry.status;
        self.counts[status as usize] += 1;
        self.entries.insert(seq, entry);
        if status == Status::Pending {
            self.index_pending(seq);
        }
        failed_blocker.filter(|_| status == Status::Blocked)
    }

    fn index_pending(&mut self, seq: u64) {
        let entry = &self.entries[&seq];
        assert_eq!(entry.status, Status::Pending);
        self.backing_off
            .insert((entry.next_attempt_at_ms, entry.seq));
        // Due ops move to `ready` on the next `promote`; an op due already is promoted at
        // once by the caller's `promote(now)` before selection.
    }

    fn unindex(&mut self, seq: u64) {
        let entry = &self.entries[&seq];
        self.ready.remove(&(entry.op.priority, seq));
        self.backing_off.remove(&(entry.next_attempt_at_ms, seq));
    }

    /// Moves every pending op that is due at `now` and waits on nothing into `ready`.
    pub fn promote(&mut self, now: Millis) {
        while let Some(&(at, seq)) = self.backing_off.first() {
            if at > now {
                break;
            }
            self.backing_off.pop_first();
            let entry = &self.entries[&seq];
            if entry.waiting == 0 {
                self.ready.insert((entry.op.priority, seq));
            }
        }
    }

    /// The earliest time a backing-off op becomes due.
    pub fn next_due_at(&self) -> Option<Millis> {
        self.backing_off.first().map(|&(at, _)| at)
    }

    /// The earliest time an op may expire.
    pub fn next_expiry_at(&self) -> Option<Millis> {
        self.expiry.first().map(|&(at, _)| at)
    }

    /// Whether any op is ready to go now (after `promote`).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Up to `limit` ops for one batch, each after every op it blocks on: at each position
    /// the lowest `(priority, seq)` op that is ready, or whose blockers all sit earlier in
    /// this batch and that is due (a delete never after a child's op that names its entity:
    /// it waits until that op is answered). Costs O(limit · (degree + log n)), whatever the queue size.
    pub fn select(&self, limit: usize) -> Vec<u64> {
        let mut batch = Vec::with_capacity(limit);
        let mut ready = self.ready.iter().copied().peekable();
        let mut unlocked: BinaryHeap<Reverse<(Priority, u64)>> = BinaryHeap::new();
        let mut still_waiting: BTreeMap<u64, usize> = BTreeMap::new();
        while batch.len() < limit {
            let from_ready = ready.peek().copied();
            let from_unlocked = unlocked.peek().map(|Reverse(key)| *key);
            let (_, seq) = match (from_ready, from_unlocked) {
                (Some(a), Some(b)) if b < a => unlocked.pop().expect("peeked").0,
                (Some(_), _) => ready.next().expect("peeked"),
                (None, Some(_)) => unlocked.pop().expect("peeked").0,
                (None, None) => break,
            };
            batch.push(seq);
            let placed = &self.entries[&seq];
            for &dependant_seq in &placed.dependants {
                // A dependant may have settled first (the server answers each op on its own).
                let Some(dependant) = self.entries.get(&dependant_seq) else {
                    continue;
                };
                // A delete never rides with a child's op that names its entity: it goes
                // once that op is answered (docs/client.md, "Priority 0").
                let child_of_delete =
                    dependant.op.kind == OpKind::Delete && dependant.entity() != placed.entity();
                if dependant.status != Status::Pending || child_of_delete {
                    continue;
                }
                let waiting = still_waiting
                    .entry(dependant_seq)
                    .or_insert(dependant.waiting);
                *waiting -= 1;
                let due = !self
                    .backing_off
                    .contains(&(dependant.next_attempt_at_ms, dependant_seq));
                if *waiting == 0 && due {
                    unlocked.push(Reverse((dependant.op.priority, dependant_seq)));
                }
            }
        }
        batch
    }

    /// Marks the selected ops as in flight.
    pub fn mark_in_flight(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            self.unindex(seq);
            let entry = self.entries.get_mut(&seq).expect("selected ops are queued");
            assert_eq!(entry.status, Status::Pending);
            set_status(&mut self.counts, &mut entry.status, Status::InFlight);
        }
    }

    /// An in-flight op goes back to pending without counting an attempt (the device went
    /// offline, or restarted, before the answer).
    pub fn requeue(&mut self, seq: u64) {
        let entry = self.entries.get_mut(&seq).expect("requeued ops are queued");
        assert_eq!(entry.status, Status::InFlight);
        set_status(&mut self.counts, &mut entry.status, Status::Pending);
        self.index_pending(seq);
        self.release_if_ready(seq);
    }

    /// A failed attempt: `attempts` grows; the op waits until `next_attempt_at_ms`, or is
    /// dead-lettered when `dead` (the caller applies `max_retries`). Returns the ops this
    /// blocks when dead.
    pub fn fail_attempt(
        &mut self,
        seq: u64,
        next_attempt_at_ms: Millis,
        dead: bool,
        reason: &str,
    ) -> Vec<u64> {
        let entry = self.entries.get_mut(&seq).expect("failed ops are queued");
        assert!(matches!(entry.status, Status::InFlight | Status::Pending));
        let was_pending = entry.status == Status::Pending;
        entry.attempts += 1;
        entry.reason = Some(reason.to_owned());
        if was_pending {
            self.unindex(seq);
        }
        let entry = self.entries.get_mut(&seq).expect("still queued");
        if dead {
            set_status(&mut self.counts, &mut entry.status, Status::Error);
            return self.block_dependants(seq);
        }
        set_status(&mut self.counts, &mut entry.status, Status::Pending);
        entry.next_attempt_at_ms = next_attempt_at_ms;
        // A blocker that failed while this op was in flight with it (a parent dead-lettered
        // in the same batch) could not block it then: it blocks it now.
        if let Some(cause) = self.failed_blocker(seq) {
            return self.block(seq, cause);
        }
        self.index_pending(seq);
        Vec::new()
    }

    /// The op that keeps `seq` from ever being sent: a blocker that failed, or the cause of
    /// a blocker's own block.
    fn failed_blocker(&self, seq: u64) -> Option<OpId> {
        self.entries[&seq].blockers.iter().find_map(|blocker_seq| {
            let blocker = self.entries.get(blocker_seq)?;
            (blocker.status.is_failed() || blocker.status == Status::Blocked).then(|| {
                blocker
                    .blocked_by
                    .clone()
                    .unwrap_or_else(|| blocker.op.op_id.clone())
            })
        })
    }

    /// The op settled well and leaves the queue; its dependants may become ready.
    pub fn settle(&mut self, seq: u64, status: Status) -> Entry {
        assert!(status.is_settled());
        self.unindex(seq);
        let mut entry = self.entries.remove(&seq).expect("settled ops are queued");
        self.by_op.remove(&entry.op.op_id);
        self.expiry
            .remove(&(entry.enqueued_at_ms.plus_ms(self.ttl_ms), seq));
        let key = entry.entity();
        if self.last_on_entity.get(&key) == Some(&seq) {
            self.last_on_entity.remove(&key);
        }
        for &dependant_seq in &entry.dependants {
            if let Some(dependant) = self.entries.get_mut(&dependant_seq) {
                dependant.waiting -= 1;
                self.release_if_ready(dependant_seq);
            }
        }
        self.counts[entry.status as usize] -= 1;
        entry.status = status;
        entry
    }

    fn release_if_ready(&mut self, seq: u64) {
        let entry = &self.entries[&seq];
        let backing_off = self.backing_off.contains(&(entry.next_attempt_at_ms, seq));
        if entry.status == Status::Pending && entry.waiting == 0 && !backing_off {
            self.ready.insert((entry.op.priority, seq));
        }
    }

    /// The op failed for good with `status` (rejected or expired; dead-lettering goes
    /// through [`Queue::fail_attempt`]). Returns the ops it blocks.
    pub fn fail(&mut self, seq: u64, status: Status, reason: &str) -> Vec<u64> {
        assert!(matches!(status, Status::Rejected | Status::Expired));
        self.unindex(seq);
        let entry = self.entries.get_mut(&seq).expect("failed ops are queued");
        let enqueued_at_ms = entry.enqueued_at_ms;
        set_status(&mut self.counts, &mut entry.status, status);
        entry.reason = Some(reason.to_owned());
        entry.blocked_by = None;
        self.expiry
            .remove(&(enqueued_at_ms.plus_ms(self.ttl_ms), seq));
        self.block_dependants(seq)
    }

    /// The server answered `blocked` because a dependency failed: the op waits on `cause`.
    pub fn block(&mut self, seq: u64, cause: OpId) -> Vec<u64> {
        self.unindex(seq);
        let entry = self.entries.get_mut(&seq).expect("blocked ops are queued");
        set_status(&mut self.counts, &mut entry.status, Status::Blocked);
        entry.reason = Some("dependency_failed".to_owned());
        entry.blocked_by = Some(cause);
        let mut blocked = vec![seq];
        blocked.extend(self.block_dependants(seq));
        blocked
    }

    /// Blocks every pending op that waits, directly or not, on `seq`.
    fn block_dependants(&mut self, seq: u64) -> Vec<u64> {
        let cause = {
            let entry = &self.entries[&seq];
            entry
                .blocked_by
                .clone()
                .unwrap_or_else(|| entry.op.op_id.clone())
        };
        let mut blocked = Vec::new();
        let mut stack = self.entries[&seq].dependants.clone();
        while let Some(dependant_seq) = stack.pop() {
            let Some(dependant) = self.entries.get(&dependant_seq) else {
                continue;
            };
            if dependant.status != Status::Pending {
                continue;
            }
            self.unindex(dependant_seq);
            let dependant = self.entries.get_mut(&dependant_seq).expect("present");
            set_status(&mut self.counts, &mut dependant.status, Status::Blocked);
            dependant.blocked_by = Some(cause.clone());
            dependant.reason = Some("dependency_failed".to_owned());
            stack.extend(dependant.dependants.iter().copied());
            blocked.push(dependant_seq);
        }
        blocked.sort_unstable();
        blocked
    }

    /// A user retry of a dead-lettered op: it is pending again with no attempts, due at
    /// `now`, and the ops it blocked are pending again. Returns those ops. An op that waits
    /// on a failed op of its own is blocked behind it instead, and frees nothing.
    pub fn retry(&mut self, seq: u64, now: Millis) -> Vec<u64> {
        let entry = self.entries.get_mut(&seq).expect("retried ops are queued");
        assert_eq!(entry.status, Status::Error);
        let cause = entry.op.op_id.clone();
        entry.attempts = 0;
        entry.reason = None;
        entry.next_attempt_at_ms = now;
        if let Some(blocker) = self.failed_blocker(seq) {
            // It waits on an op that failed for good (a rejected parent): blocked behind
            // it, never pending forever; the ops it blocked stay blocked.
            let entry = self.entries.get_mut(&seq).expect("present");
            set_status(&mut self.counts, &mut entry.status, Status::Blocked);
            entry.blocked_by = Some(blocker);
            entry.reason = Some("dependency_failed".to_owned());
            return Vec::new();
        }
        let entry = self.entries.get_mut(&seq).expect("present");
        set_status(&mut self.counts, &mut entry.status, Status::Pending);
        self.index_pending(seq);
        self.promote(now);
        let mut unblocked = Vec::new();
        let mut stack = self.entries[&seq].dependants.clone();
        while let Some(dependant_seq) = stack.pop() {
            let Some(dependant) = self.entries.get_mut(&dependant_seq) else {
                continue;
            };
            if dependant.status != Status::Blocked || dependant.blocked_by.as_ref() != Some(&cause)
            {
                continue;
            }
            let other_failure = dependant
                .blockers
                .clone()
                .into_iter()
                .filter_map(|b| self.entries.get(&b))
                .find(|b| {
                    b.status.is_failed()
                        || (b.status == Status::Blocked && b.blocked_by.as_ref() != Some(&cause))
                })
                .map(|b| b.blocked_by.clone().unwrap_or_else(|| b.op.op_id.clone()));
            let dependant = self.entries.get_mut(&dependant_seq).expect("present");
            if let Some(other) = other_failure {
                // Still waits on another failed op: blocked, now by that one.
                dependant.blocked_by = Some(other);
                continue;
            }
            set_status(&mut self.counts, &mut dependant.status, Status::Pending);
            dependant.blocked_by = None;
            dependant.reason = None;
            stack.extend(dependant.dependants.iter().copied());
            self.index_pending(dependant_seq);
            unblocked.push(dependant_seq);
        }
        self.promote(now);
        unblocked.sort_unstable();
        unblocked
    }

    /// Takes back the newest insert (an enqueue whose record did not reach the store).
    pub fn undo_insert(&mut self, seq: u64) {
        let entry = self.entries.get(&seq).expect("undone ops are queued");
        assert!(entry.dependants.is_empty(), "undo the newest insert first");
        self.unindex(seq);
        let entry = self.entries.remove(&seq).expect("present");
        self.counts[entry.status as usize] -= 1;
        self.by_op.remove(&entry.op.op_id);
        self.expiry
            .remove(&(entry.enqueued_at_ms.plus_ms(self.ttl_ms), seq));
        let key = entry.entity();
        let mut previous_on_entity = None;
        for blocker_seq in &entry.blockers {
            if let Some(blocker) = self.entries.get_mut(blocker_seq) {
                blocker.dependants.retain(|&d| d != seq);
                if blocker.entity() == key {
                    previous_on_entity = Some(*blocker_seq);
                }
            }
        }
        match previous_on_entity {
            Some(previous) => self.last_on_entity.insert(key, previous),
            None => self.last_on_entity.remove(&key),
        };
    }

    /// Removes a failed or blocked op the user gave up on. Ops waiting on it stay blocked.
    pub fn discard(&mut self, seq: u64) -> Entry {
        let entry = self.entries.remove(&seq).expect("discarded ops are queued");
        assert!(entry.status.is_failed() || entry.status == Status::Blocked);
        self.counts[entry.status as usize] -= 1;
        self.by_op.remove(&entry.op.op_id);
        self.expiry
            .remove(&(entry.enqueued_at_ms.plus_ms(self.ttl_ms), seq));
        let key = entry.entity();
        if self.last_on_entity.get(&key) == Some(&seq) {
            self.last_on_entity.remove(&key);
        }
        entry
    }

    /// Records the server's version and conflict for an op before it settles.
    pub fn note_result(&mut self, seq: u64, version: Option<u64>, conflict_id: Option<ConflictId>) {
        let entry = self.entries.get_mut(&seq).expect("answered ops are queued");
        entry.version = version.or(entry.version);
        entry.conflict_id = conflict_id.or(entry.conflict_id.take());
    }

    /// Ops whose TTL ran out by `now` and that are not in flight; the caller expires them.
    pub fn expired_by(&self, now: Millis) -> Vec<u64> {
        self.expiry
            .range(..=(now, u64::MAX))
            .map(|&(_, seq)| seq)
            .filter(|seq| {
                matches!(
                    self.entries[seq].status,
                    Status::Pending | Status::Blocked | Status::Error
                )
            })
            .collect()
    }

    /// Checks the index against the entries (for tests and debug assertions): the status
    /// counts, `waiting`, `dependants`, `ready` and `backing_off` all agree with the
    /// statuses.
    pub fn check_index(&self, now: Millis) {
        assert_eq!(self.by_op.len(), self.entries.len(), "one op id per entry");
        let mut counted = [0; STATUS_COUNT];
        for entry in self.entries.values() {
            counted[entry.status as usize] += 1;
        }
        assert_eq!(self.counts, counted, "the status counts match the entries");
        for (op_id, seq) in &self.by_op {
            let entry = self.entries.get(seq);
            assert!(
                entry.is_some_and(|e| e.op.op_id == *op_id),
                "op {op_id} indexed at seq {seq}, which holds another op or none"
            );
        }
        for (seq, entry) in &self.entries {
            let waiting = entry
                .blockers
                .iter()
                .filter(|b| self.entries.contains_key(b))
                .count();
            assert_eq!(entry.waiting, waiting, "waiting count of seq {seq}");
            let in_ready = self.ready.contains(&(entry.op.priority, *seq));
            let in_backoff = self.backing_off.contains(&(entry.next_attempt_at_ms, *seq));
            match entry.status {
                Status::Pending => {
                    assert!(!(in_ready && in_backoff), "seq {seq} indexed twice");
                    if in_ready {
                        assert_eq!(entry.waiting, 0, "ready seq {seq} waits");
                        assert!(entry.next_attempt_at_ms <= now, "ready seq {seq} not due");
                    }
                    assert!(
                        in_ready || in_backoff || entry.waiting > 0,
                        "pending seq {seq} lost from the index"
                    );
                }
                _ => assert!(
                    !in_ready && !in_backoff,
                    "seq {seq} indexed while {}",
                    entry.status
                ),
            }
        }
    }
}
