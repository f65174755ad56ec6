//! Priority order, within a batch and across batches.
//!
//! - Within a batch: whenever an op was available (everything it waits on in the batch
//!   already placed) when an earlier op was chosen, the earlier op has the smaller
//!   `(priority, enqueue order)`.
//! - Across batches: a batch never carries an op while a ready op of the same device with a
//!   strictly smaller `(priority, enqueue order)` stays behind. The ready set is the
//!   trace's own, not the coordinator's: an op is surely ready when it was enqueued before
//!   the batch, has never been sent (so no backoff holds it), no status change was
//!   reported for it, and every op it waits on (the device's earlier ops on the same
//!   entity and its wire dependencies) was answered applied or duplicate in an answer the
//!   device took (the answer to its latest batch, with no offline step or crash between).

use super::{Checker, Facts, Violation};
use crate::spec::Action;
use crate::trace::TraceEvent;
use rockhound_engine::OpKind;
use rockhound_engine::client::observe::Event;
use rockhound_engine::ids::{BatchId, OpId};
use rockhound_engine::server::wire::OpStatus;
use std::collections::{BTreeMap, BTreeSet};

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations = within_batches(facts);
    violations.extend(across_batches(facts));
    violations
}

/// What the trace knows of one device, for the ready set.
#[derive(Default)]
struct DeviceView<'a> {
    /// Ops never sent and never reported on: (priority, seq) → op.
    fresh: BTreeMap<(u8, u64), &'a OpId>,
    /// Every op the device enqueued, in enqueue order: seq → op.
    by_seq: BTreeMap<u64, &'a OpId>,
    /// Ops answered applied or duplicate in an answer the device took.
    done: BTreeSet<&'a OpId>,
    /// The latest batch and whether its answer can still be taken.
    latest: Option<(&'a [OpId], bool)>,
}

/// Across batches: no ready op with a smaller key waits while a batch goes out.
fn across_batches(facts: &Facts<'_>) -> Vec<Violation> {
    let mut devices: BTreeMap<&str, DeviceView<'_>> = BTreeMap::new();
    let mut violations = Vec::new();
    for (index, line) in facts.lines.iter().enumerate() {
        let view = devices.entry(line.host.as_str()).or_default();
        match &line.event {
            TraceEvent::Client {
                event:
                    Event::Enqueued {
                        op_id,
                        seq,
                        priority,
                        ..
                    },
            } => {
                view.fresh.insert((*priority, *seq), op_id);
                view.by_seq.insert(*seq, op_id);
            }
            TraceEvent::Client {
                event: Event::Op(update),
            } => view.fresh.retain(|_, id| **id != update.op_id),
            TraceEvent::Client {
                event: Event::Discarded { op_id, .. },
            } => view.fresh.retain(|_, id| *id != op_id),
            TraceEvent::Crashed { .. } => {
                if let Some((_, open)) = &mut view.latest {
                    *open = false;
                }
            }
            TraceEvent::Answered {
                batch_id: Some(_),
                results,
                ..
            } => {
                if let Some((ops, true)) = view.latest {
                    let taken = results.iter().filter(|(id, status, _)| {
                        ops.contains(id)
                            && matches!(status, OpStatus::Applied | OpStatus::Duplicate)
                    });
                    view.done.extend(taken.map(|(id, _, _)| id));
                }
            }
            TraceEvent::Client {
                event: Event::BatchSent { batch_id, op_ids },
            } => {
                view.fresh.retain(|_, id| !op_ids.contains(id));
                view.latest = Some((op_ids, true));
                violations.extend(left_behind(facts, view, batch_id, op_ids, index));
            }
            TraceEvent::Step { action } => {
                if let Action::Offline { device } | Action::Crash { device, .. } = action
                    && let Some((_, open)) = &mut devices.entry(device.as_str()).or_default().latest
                {
                    *open = false;
                }
            }
            _ => {}
        }
    }
    violations
}

/// The violation of a batch that leaves a ready op of a smaller key behind, if it does.
fn left_behind(
    facts: &Facts<'_>,
    view: &DeviceView<'_>,
    batch_id: &BatchId,
    op_ids: &[OpId],
    index: usize,
) -> Option<Violation> {
    let (worst_key, worst_id) = op_ids
        .iter()
        .filter_map(|id| facts.ops.get(id).map(|op| ((op.priority, op.seq), id)))
        .max()?;
    let (&(priority, seq), waiting) = view
        .fresh
        .range(..worst_key)
        .find(|(_, id)| ready(facts, view, id))?;
    let mut quoted = vec![index];
    quoted.extend(facts.ops.get(*waiting).map(|op| op.line));
    quoted.extend(facts.ops.get(worst_id).map(|op| op.line));
    Some(facts.violation(
        Checker::PriorityOrder,
        index,
        format!(
            "batch {batch_id} carries {worst_id} (priority {}, seq {}) while {waiting} (priority \
             {priority}, seq {seq}) was ready and stayed behind",
            worst_key.0, worst_key.1
        ),
        &quoted,
    ))
}

/// Whether every op `op_id` waits on is done, as far as the trace shows. A delete also
/// waits for earlier ops naming its entity as a parent; the trace does not say which those
/// are, so a delete counts as ready only once every earlier op of its device is done.
fn ready(facts: &Facts<'_>, view: &DeviceView<'_>, op_id: &OpId) -> bool {
    let Some(op) = facts.ops.get(op_id) else {
        return false;
    };
    let delete = matches!(
        &facts.lines[op.line].event,
        TraceEvent::Client {
            event: Event::Enqueued {
                kind: OpKind::Delete,
                ..
            }
        }
    );
    let same_entity = view
        .by_seq
        .range(..op.seq)
        .map(|(_, id)| *id)
        .filter(|id| delete || facts.ops.get(*id).is_some_and(|o| o.entity == op.entity));
    same_entity
        .chain(op.depends_on.iter())
        .all(|blocker| view.done.contains(blocker))
}

/// Within a batch: each op placed before one that was available has the smaller key.
fn within_batches(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (index, line) in facts.lines.iter().enumerate() {
        let TraceEvent::Client {
            event: Event::BatchSent { batch_id, op_ids },
        } = &line.event
        else {
            continue;
        };
        let ops: Vec<_> = op_ids.iter().map(|id| facts.ops.get(id)).collect();
        let position: BTreeMap<_, usize> =
            op_ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
        'pairs: for (i, earlier) in ops.iter().enumerate() {
            let Some(earlier) = earlier else { continue };
            for (j, later) in ops.iter().enumerate().skip(i + 1) {
                let Some(later) = later else { continue };
                // Was `later` available when `earlier` was placed at position i?
                let available = later
                    .blockers
                    .iter()
                    .filter_map(|b| position.get(b))
                    .all(|&p| p < i);
                if available && (earlier.priority, earlier.seq) > (later.priority, later.seq) {
                    violations.push(facts.violation(
                        Checker::PriorityOrder,
                        index,
                        format!(
                            "batch {batch_id} places {} (priority {}, seq {}) before {} (priority {}, seq {}), which was ready",
                            op_ids[i], earlier.priority, earlier.seq, op_ids[j], later.priority, later.seq
                        ),
                        &[index, earlier.line, later.line],
                    ));
                    break 'pairs;
                }
            }
        }
    }
    violations
}
