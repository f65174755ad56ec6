//! The end of a run: whether everything converged, the end-state snapshot, and the verdicts,
//! counts and expectations read from the finished trace.

use super::{Devices, RunOutcome, World};
use crate::checkers::{self, Facts};
use crate::spec::SpecError;
use crate::trace::{EntitySnapshot, Trace, TraceEvent};
use rockhound_engine::ids::{ConflictId, EntityId};
use rockhound_engine::server::wire::{ConflictStatus, DecisionCode};
use rockhound_engine::server::{AnyStore, Server};
use rockhound_engine::{EntityType, UserId};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

impl World<'_> {
    /// Snapshots the end state, closes the trace and judges it: one index of the trace
    /// ([`Facts`]) is shared by the checkers and the scenario's expectations.
    pub(super) fn finish(mut self, settled: Settled) -> Result<RunOutcome, SpecError> {
        self.trace_coverage(settled.end_ms);
        rockhound_engine::coverage::stop();
        let World {
            spec,
            seed,
            sim,
            devices,
            server,
            trace,
            ..
        } = self;
        snapshot(&devices, &server, &trace, settled.end_ms);
        trace
            .borrow_mut()
            .record(settled.end_ms, "world", TraceEvent::End);
        drop(sim);
        drop(devices);
        let trace = Rc::try_unwrap(trace)
            .map_err(|_| SpecError::new("the trace is still shared after the run"))?
            .into_inner();
        if trace.overflowed() {
            return Err(SpecError::new(format!(
                "the trace reached its limit of {} lines; shorten the scenario",
                crate::trace::TRACE_LINE_COUNT_MAX
            )));
        }
        let digest = trace.digest();
        let facts = Facts::new(&trace.lines);
        let verdicts = checkers::check(&facts, spec);
        let mut summary = crate::summary::summarize(&trace, spec.devices().len());
        summary.convergence_ms = settled.convergence_ms;
        summary.simulated_ms = settled.end_ms;
        let unmet = checkers::expectations(&facts, spec, &summary);
        drop(facts);
        Ok(RunOutcome {
            seed,
            trace,
            digest,
            verdicts,
            summary,
            unmet,
        })
    }
}

/// How the stepping ended.
pub(super) struct Settled {
    /// Simulated ms from the start of the liveness phase to convergence, if reached.
    pub(super) convergence_ms: Option<u64>,
    /// Simulated ms at the end.
    pub(super) end_ms: u64,
}

/// An entity's (version, deleted, fields) as the convergence test compares them.
type Snapshot = (u64, bool, serde_json::Value);

/// Whether every device is idle with nothing left to send and a replica equal to the
/// server's state for its user.
pub(super) fn converged(
    devices: &Devices,
    server: &Arc<parking_lot::Mutex<Server<AnyStore>>>,
) -> bool {
    let server = server.lock();
    let mut by_user: BTreeMap<&UserId, BTreeMap<(EntityType, EntityId), Snapshot>> =
        BTreeMap::new();
    for ((entity_type, entity_id), stored) in &server.tables().entities {
        let value = if stored.state.deleted {
            serde_json::Value::Null
        } else {
            stored.state.to_value()
        };
        by_user.entry(&stored.owner).or_default().insert(
            (*entity_type, entity_id.clone()),
            (stored.state.version, stored.state.deleted, value),
        );
    }
    let empty = BTreeMap::new();
    devices.by_name.values().all(|ctx| {
        let state = ctx.state.borrow();
        let Some(c) = state.coordinator.as_ref() else {
            return false;
        };
        let stats = c.stats();
        if c.state().syncing || stats.pending > 0 || stats.in_flight > 0 {
            return false;
        }
        let user = UserId(state.user.clone());
        let expected = by_user.get(&user).unwrap_or(&empty);
        let replica = c.replica().entities();
        // The device shows exactly the user's conflicts that wait for a person.
        let open: BTreeSet<&ConflictId> = c
            .conflicts()
            .filter(|k| k.open)
            .map(|k| &k.conflict_id)
            .collect();
        let waiting = server.conflicts(&user, Some(ConflictStatus::Open));
        open.len() == waiting.len()
            && waiting.iter().all(|k| open.contains(&k.conflict_id))
            && replica.len() == expected.len()
            && replica.iter().all(|(key, copy)| {
                expected.get(key).is_some_and(|(version, deleted, value)| {
                    copy.version == *version && copy.deleted == *deleted && copy.entity == *value
                })
            })
    })
}

/// Records the end state: every device's queue and replica, the server's commit log and
/// entities.
pub(super) fn snapshot(
    devices: &Devices,
    server: &Arc<parking_lot::Mutex<Server<AnyStore>>>,
    trace: &Rc<RefCell<Trace>>,
    t_ms: u64,
) {
    let mut trace = trace.borrow_mut();
    for ctx in devices.by_name.values() {
        let state = ctx.state.borrow();
        let (queue, replica, open_conflicts) = match state.coordinator.as_ref() {
            Some(c) => (
                c.queue().map(|e| (e.op.op_id.clone(), e.status)).collect(),
                c.replica()
                    .entities()
                    .iter()
                    .map(|((entity_type, entity_id), copy)| EntitySnapshot {
                        entity_type: *entity_type,
                        entity_id: entity_id.clone(),
                        version: copy.version,
                        deleted: copy.deleted,
                        entity: copy.entity.clone(),
                    })
                    .collect(),
                c.conflicts()
                    .filter(|k| k.open)
                    .map(|k| k.conflict_id.clone())
                    .collect(),
            ),
            None => (Vec::new(), Vec::new(), Vec::new()),
        };
        trace.record(
            t_ms,
            &state.name,
            TraceEvent::FinalDevice {
                user: state.user.clone(),
                queue,
                replica,
                open_conflicts,
            },
        );
    }
    snapshot_server(&server.lock(), &mut trace, t_ms);
}

/// Records the server's end state: its commit log, the conflicts that waited for a person,
/// and its entities.
fn snapshot_server(server: &Server<AnyStore>, trace: &mut Trace, t_ms: u64) {
    let tables = server.tables();
    let mut rows: Vec<_> = tables.sync_history.iter().collect();
    // Each user's commits are numbered apart; the log lists them by number, then user.
    rows.sort_by_key(|((user, seq), _)| (*seq, user.clone()));
    for ((user, _), row) in rows {
        trace.record(
            t_ms,
            "server",
            TraceEvent::FinalCommit {
                user: user.0.clone(),
                row: Box::new(row.clone()),
            },
        );
    }
    let mut waited: Vec<_> = tables
        .sync_conflicts
        .values()
        .filter(|(_, record)| record.decision == DecisionCode::Manual)
        .collect();
    waited.sort_by_key(|(user, record)| (record.created_at_ms, user.clone()));
    for (user, record) in waited {
        trace.record(
            t_ms,
            "server",
            TraceEvent::FinalConflict {
                user: user.0.clone(),
                conflict_id: record.conflict_id.clone(),
                created_at_ms: record.created_at_ms,
                resolved_at_ms: record.resolved_at_ms,
            },
        );
    }
    for ((entity_type, entity_id), stored) in &tables.entities {
        trace.record(
            t_ms,
            "server",
            TraceEvent::FinalEntity {
                owner: stored.owner.0.clone(),
                snapshot: EntitySnapshot {
                    entity_type: *entity_type,
                    entity_id: entity_id.clone(),
                    version: stored.state.version,
                    deleted: stored.state.deleted,
                    entity: if stored.state.deleted {
                        serde_json::Value::Null
                    } else {
                        stored.state.to_value()
                    },
                },
            },
        );
    }
}
