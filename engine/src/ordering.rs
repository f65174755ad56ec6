//! Readiness and batch order: which pending ops may go to the server, and in what order.
//!
//! An op *blocks on* every pending op it lists in `depends_on` (its parents' pending
//! creates) and on the previous pending op on the same entity. An op is *ready* when it
//! blocks on nothing. Among ready ops, lower `(priority, seq)` goes first; priority never
//! lets an op overtake what it blocks on.
//!
//! A batch may carry an op together with the ops it blocks on, as long as they come first:
//! the server applies a batch in order and answers `blocked` for an op whose predecessor in
//! the same batch failed. [`batch_order`] is Kahn's topological sort with `(priority, seq)`
//! as the tie-break, so it sends a field session and its find logs in one round trip.
//! A delete is the exception: it also blocks on the open ops that name its entity as their
//! parent (a child's create or update), never rides in their batch, and goes only once they
//! are answered, since the server cannot know that the delete waits for them (its
//! `depends_on` lists parents only).
//!
//! These functions are the reference definition, O(n log n) per call; the client keeps an
//! incremental index with the same answers for large queues.

use crate::entity::{EntityType, Priority};
use crate::ids::{EntityId, OpId};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// What ordering needs to know about one pending op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The op.
    pub op_id: OpId,
    /// The entity it touches.
    pub entity: (EntityType, EntityId),
    /// Its upload priority.
    pub priority: Priority,
    /// Its position in the device's queue (enqueue order); unique.
    pub seq: u64,
    /// Ops it depends on; those no longer pending count as done.
    pub depends_on: Vec<OpId>,
    /// Whether it is a delete (which waits for the answers of the child ops that name its
    /// entity, not just for their place earlier in the batch).
    pub delete: bool,
}

/// For each op (by index), the indices of the pending ops it blocks on.
pub fn blockers(pending: &[Pending]) -> Vec<Vec<usize>> {
    let by_id: BTreeMap<&OpId, usize> = pending
        .iter()
        .enumerate()
        .map(|(index, op)| (&op.op_id, index))
        .collect();
    assert_eq!(by_id.len(), pending.len(), "op ids in a queue are unique");
    let mut by_seq: Vec<usize> = (0..pending.len()).collect();
    by_seq.sort_by_key(|&index| pending[index].seq);
    let mut previous_on_entity: BTreeMap<&(EntityType, EntityId), usize> = BTreeMap::new();
    let mut result = vec![Vec::new(); pending.len()];
    for index in by_seq {
        let op = &pending[index];
        let blocks = &mut result[index];
        if let Some(previous) = previous_on_entity.insert(&op.entity, index) {
            blocks.push(previous);
        }
        for dependency in &op.depends_on {
            if let Some(&parent) = by_id.get(dependency) {
                if !blocks.contains(&parent) {
                    blocks.push(parent);
                }
            }
        }
    }
    result
}

/// Indices of the ready ops (blocking on nothing), in `(priority, seq)` order.
pub fn ready(pending: &[Pending]) -> Vec<usize> {
    let blockers = blockers(pending);
    let mut ready: Vec<usize> = (0..pending.len())
        .filter(|&i| blockers[i].is_empty())
        .collect();
    ready.sort_by_key(|&i| (pending[i].priority, pending[i].seq));
    ready
}

/// Up to `limit` op indices in the order one batch should carry them: each op after every
/// op it blocks on, and at each position the lowest `(priority, seq)` op whose blockers are
/// all already placed. Ops caught in a dependency cycle are never placed.
pub fn batch_order(pending: &[Pending], limit: usize) -> Vec<usize> {
    let blockers = blockers(pending);
    let mut waiting: Vec<usize> = blockers.iter().map(Vec::len).collect();
    let mut dependants = vec![Vec::new(); pending.len()];
    for (index, blocks) in blockers.iter().enumerate() {
        for &blocker in blocks {
            dependants[blocker].push(index);
        }
    }
    let key = |i: usize| Reverse((pending[i].priority, pending[i].seq, i));
    let mut available: BinaryHeap<_> = (0..pending.len())
        .filter(|&i| waiting[i] == 0)
        .map(key)
        .collect();
    let mut order = Vec::with_capacity(limit.min(pending.len()));
    while order.len() < limit {
        let Some(Reverse((_, _, index))) = available.pop() else {
            break;
        };
        order.push(index);
        // A delete placed after a child's op that names its entity waits for its answer.
        let held_back = |dependant: usize| {
            pending[dependant].delete && pending[dependant].entity != pending[index].entity
        };
        for &dependant in &dependants[index] {
            if held_back(dependant) {
                continue;
            }
            waiting[dependant] -= 1;
            if waiting[dependant] == 0 {
                available.push(key(dependant));
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn op(seq: u64, entity: &str, priority: u8, depends_on: &[u64]) -> Pending {
        Pending {
            op_id: OpId(format!("op-{seq}")),
            entity: (EntityType::Specimen, EntityId(entity.to_owned())),
            priority: Priority::new(priority).unwrap(),
            seq,
            depends_on: depends_on.iter().map(|d| OpId(format!("op-{d}"))).collect(),
            delete: false,
        }
    }

    fn ids(pending: &[Pending], indices: &[usize]) -> Vec<u64> {
        indices.iter().map(|&i| pending[i].seq).collect()
    }

    #[test]
    fn a_high_priority_child_waits_for_its_low_priority_parent() {
        let pending = [
            op(1, "parent", 3, &[]),
            op(2, "child", 0, &[1]),
            op(3, "other", 2, &[]),
        ];
        assert_eq!(ids(&pending, &ready(&pending)), [3, 1]);
        assert_eq!(ids(&pending, &batch_order(&pending, 10)), [3, 1, 2]);
    }

    #[test]
    fn ops_on_one_entity_keep_their_enqueue_order_whatever_their_priority() {
        let pending = [op(1, "e", 4, &[]), op(2, "e", 0, &[])];
        assert_eq!(ids(&pending, &ready(&pending)), [1]);
        assert_eq!(ids(&pending, &batch_order(&pending, 10)), [1, 2]);
    }

    #[test]
    fn a_dependency_that_is_no_longer_pending_is_done() {
        let pending = [op(5, "child", 2, &[4])];
        assert_eq!(ids(&pending, &ready(&pending)), [5]);
    }

    #[test]
    fn a_delete_never_rides_with_a_child_op_it_waits_on() {
        // The parent's delete waits on the child's create (which names the parent) and on
        // the parent's earlier update; it may ride after the update, not after the child.
        let mut pending = vec![
            op(1, "parent", 3, &[]),
            op(2, "child", 2, &[]),
            op(3, "parent", 0, &[2]),
        ];
        pending[2].delete = true;
        assert_eq!(ids(&pending, &batch_order(&pending, 10)), [2, 1]);
        pending.remove(1);
        assert_eq!(ids(&pending, &batch_order(&pending, 10)), [1, 3]);
    }

    #[test]
    fn the_limit_cuts_the_batch() {
        let pending: Vec<Pending> = (0..10).map(|i| op(i, &format!("e{i}"), 2, &[])).collect();
        assert_eq!(ids(&pending, &batch_order(&pending, 3)), [0, 1, 2]);
    }

    fn queue() -> impl Strategy<Value = Vec<Pending>> {
        prop::collection::vec(
            (0usize..6, 0u8..5, prop::collection::vec(0u64..40, 0..3)),
            0..40,
        )
        .prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(|(seq, (entity, priority, deps))| {
                    // Dependencies point at earlier ops only, as the client builds them.
                    let deps: BTreeSet<u64> =
                        deps.into_iter().filter(|&d| d < seq as u64).collect();
                    let deps: Vec<u64> = deps.into_iter().collect();
                    op(
                        seq as u64 * 3,
                        &format!("e{entity}"),
                        priority,
                        &deps.iter().map(|d| d * 3).collect::<Vec<_>>(),
                    )
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn the_ready_set_never_holds_an_op_whose_dependency_is_pending(pending in queue()) {
            let pending_ids: BTreeSet<&OpId> = pending.iter().map(|p| &p.op_id).collect();
            let ready = ready(&pending);
            for &i in &ready {
                for dependency in &pending[i].depends_on {
                    prop_assert!(!pending_ids.contains(dependency));
                }
                let earlier_on_entity = pending
                    .iter()
                    .any(|p| p.entity == pending[i].entity && p.seq < pending[i].seq);
                prop_assert!(!earlier_on_entity);
            }
            let keys: Vec<_> = ready.iter().map(|&i| (pending[i].priority, pending[i].seq)).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            prop_assert_eq!(keys, sorted);
        }

        #[test]
        fn a_batch_places_every_op_after_its_blockers_and_picks_the_lowest_available(
            pending in queue(),
            limit in 1usize..50,
        ) {
            let order = batch_order(&pending, limit);
            prop_assert_eq!(order.len(), pending.len().min(limit));
            let blockers = blockers(&pending);
            let mut placed = BTreeSet::new();
            for &index in &order {
                for blocker in &blockers[index] {
                    prop_assert!(placed.contains(blocker));
                }
                // Nothing that was available at this point had a lower key.
                for other in 0..pending.len() {
                    let available = !placed.contains(&other)
                        && blockers[other].iter().all(|b| placed.contains(b));
                    if available {
                        prop_assert!(
                            (pending[index].priority, pending[index].seq)
                                <= (pending[other].priority, pending[other].seq)
                        );
                    }
                }
                placed.insert(index);
            }
        }
    }
}
