//! Manual conflicts stay visible to every device of their user until resolved, and only
//! to them. Read from the trace alone: the server's conflicts that waited for a person
//! (`final_conflict`: user, recorded and resolved times on the server's clock, which is the
//! simulation's) against each device's listings (`listing_conflicts` when it asked for the
//! first page, `conflicts_listed` with the open set it took from the last one).
//!
//! - A listing that began at `s` and ended at `e` shows every conflict of the user
//!   recorded before `s` and still open after `e`, and nothing resolved before `s`,
//!   recorded after `e`, of another user, or unknown to the server.
//! - A run that converged ends with every device showing exactly its user's open
//!   conflicts.

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;
use rockhound_engine::Millis;
use rockhound_engine::client::observe::Event;
use rockhound_engine::ids::ConflictId;
use std::collections::{BTreeMap, BTreeSet};

/// A conflict that waited for a person, in trace time.
struct Waited<'a> {
    line: usize,
    user: &'a str,
    created_ms: u64,
    resolved_ms: Option<u64>,
}

impl Waited<'_> {
    fn open_throughout(&self, from_ms: u64, to_ms: u64) -> bool {
        self.created_ms < from_ms && self.resolved_ms.is_none_or(|r| r > to_ms)
    }

    fn open_sometime_in(&self, from_ms: u64, to_ms: u64) -> bool {
        self.created_ms <= to_ms && self.resolved_ms.is_none_or(|r| r >= from_ms)
    }
}

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let trace_ms = |at: Millis| at.0.saturating_sub(facts.epoch_ms);
    let mut waited: BTreeMap<&ConflictId, Waited<'_>> = BTreeMap::new();
    for (line, event) in facts.lines.iter().enumerate() {
        if let TraceEvent::FinalConflict {
            user,
            conflict_id,
            created_at_ms,
            resolved_at_ms,
        } = &event.event
        {
            waited.insert(
                conflict_id,
                Waited {
                    line,
                    user,
                    created_ms: trace_ms(*created_at_ms),
                    resolved_ms: resolved_at_ms.map(trace_ms),
                },
            );
        }
    }
    let mut violations = Vec::new();
    // Device → (line, time) of the listing under way.
    let mut started: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for (line, event) in facts.lines.iter().enumerate() {
        let device = event.host.as_str();
        match &event.event {
            TraceEvent::Client {
                event: Event::ListingConflicts,
            } => {
                started.insert(device, (line, event.t_ms));
            }
            TraceEvent::Crashed { .. } | TraceEvent::Restarted { .. } => {
                started.remove(device);
            }
            TraceEvent::Client {
                event: Event::ConflictsListed { open },
            } => match started.remove(device) {
                Some(start) => {
                    violations.extend(listing(facts, &waited, start, line, open));
                }
                None => violations.push(facts.violation(
                    Checker::ConflictVisibility,
                    line,
                    format!("{device} ended a listing of conflicts it never began"),
                    &[line],
                )),
            },
            _ => {}
        }
    }
    if facts.converged_line.is_some() {
        violations.extend(final_views(facts, &waited));
    }
    violations
}

/// One listing, begun at `start` (line, time) and ended at trace line `line` with `open`.
fn listing(
    facts: &Facts<'_>,
    waited: &BTreeMap<&ConflictId, Waited<'_>>,
    (start_line, start_ms): (usize, u64),
    line: usize,
    open: &[ConflictId],
) -> Vec<Violation> {
    let device = facts.lines[line].host.as_str();
    let end_ms = facts.lines[line].t_ms;
    let user = facts.users.get(device).map_or("", String::as_str);
    let shown: BTreeSet<&ConflictId> = open.iter().collect();
    let mut wrong = Vec::new();
    for id in &shown {
        match waited.get(id) {
            None => wrong.push((
                format!("{id}, which the server never recorded as waiting"),
                None,
            )),
            Some(w) if w.user != user => {
                wrong.push((format!("{id} of user {}", w.user), Some(w.line)));
            }
            Some(w) if !w.open_sometime_in(start_ms, end_ms) => wrong.push((
                format!("{id}, resolved before the listing began"),
                Some(w.line),
            )),
            Some(_) => {}
        }
    }
    for (id, w) in waited {
        if w.user == user && w.open_throughout(start_ms, end_ms) && !shown.contains(id) {
            wrong.push((
                format!("not {id}, open on the server the whole time"),
                Some(w.line),
            ));
        }
    }
    wrong
        .into_iter()
        .map(|(what, server_line)| {
            let mut quoted = vec![start_line, line];
            quoted.extend(server_line);
            facts.violation(
                Checker::ConflictVisibility,
                line,
                format!("{device}'s listing of open conflicts showed {what}"),
                &quoted,
            )
        })
        .collect()
}

/// After convergence every device shows exactly its user's open conflicts.
fn final_views(facts: &Facts<'_>, waited: &BTreeMap<&ConflictId, Waited<'_>>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (line, event) in facts.lines.iter().enumerate() {
        let TraceEvent::FinalDevice {
            user,
            open_conflicts,
            ..
        } = &event.event
        else {
            continue;
        };
        let shown: BTreeSet<&ConflictId> = open_conflicts.iter().collect();
        let open: BTreeSet<&ConflictId> = waited
            .iter()
            .filter(|(_, w)| w.user == user && w.resolved_ms.is_none())
            .map(|(id, _)| *id)
            .collect();
        if shown != open {
            violations.push(facts.violation(
                Checker::ConflictVisibility,
                line,
                format!(
                    "{} ends the converged run showing open conflicts {shown:?}, the server \
                     has {open:?}",
                    event.host
                ),
                &[line],
            ));
        }
    }
    violations
}
