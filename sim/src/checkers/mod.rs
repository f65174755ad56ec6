//! The seventeen checkers (docs/simulation.md), one module each. Each reads the run's trace (through the
//! [`Facts`] index built once) and reports violations naming the seed, the simulated time
//! and the trace lines involved. `determinism` compares two runs and lives in
//! [`crate::runner`]'s re-run; its module holds the comparison.

pub mod backoff;
pub mod conflict_oracle;
pub mod conflict_visibility;
pub mod convergence;
pub mod dependency_order;
pub mod determinism;
pub mod durability;
pub mod exactly_once;
pub mod integrity;
pub mod isolation;
pub mod liveness;
pub mod no_loss;
pub mod priority_order;
pub mod provenance;
pub mod reference;
pub mod referential;
pub mod server_health;
pub mod telemetry;

use crate::spec::RunSpec;
use crate::summary::Summary;
use crate::trace::{EntitySnapshot, Phase, TraceEvent, TraceLine};
use rockhound_engine::client::Status;
use rockhound_engine::client::observe::Event;
use rockhound_engine::ids::EntityId;
use rockhound_engine::ids::OpId;
use rockhound_engine::server::wire::{HistoryAction, HistoryRow};
use rockhound_engine::{EntityType, SyncConfig};
use std::collections::BTreeMap;
use std::fmt;

/// Every checker, in report order.
pub use crate::spec::Checker;

/// Trace lines quoted in a violation at most.
pub const QUOTED_LINES_MAX: usize = 6;

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker.
    pub checker: Checker,
    /// The seed of the run.
    pub seed: u64,
    /// Simulated ms at which it shows.
    pub t_ms: u64,
    /// What is wrong, for a person.
    pub message: String,
    /// The trace lines involved (indices) with their JSON.
    pub events: Vec<(usize, String)>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} violated (seed {}, t={} ms): {}",
            self.checker, self.seed, self.t_ms, self.message
        )?;
        for (line, json) in &self.events {
            writeln!(f, "    trace line {line}: {json}")?;
        }
        Ok(())
    }
}

/// One checker's verdict on a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The checker.
    pub checker: Checker,
    /// Whether it ran (the scenario may select checkers).
    pub ran: bool,
    /// What it found (empty: it holds).
    pub violations: Vec<Violation>,
}

/// What one op looked like when it was enqueued.
#[derive(Clone, Debug)]
pub struct OpFacts {
    /// The device.
    pub device: String,
    /// Its user.
    pub user: String,
    /// Trace line of its `enqueued` event.
    pub line: usize,
    /// When.
    pub t_ms: u64,
    /// Queue position.
    pub seq: u64,
    /// Priority.
    pub priority: u8,
    /// Ops it blocks on.
    pub blockers: Vec<OpId>,
    /// Wire dependencies.
    pub depends_on: Vec<OpId>,
    /// SHA-256 of its canonical payload.
    pub payload_sha256: Option<String>,
    /// Its entity.
    pub entity: (EntityType, EntityId),
}

/// A device's final snapshot in the trace: (line, queue, replica).
pub type FinalDevice<'a> = (usize, &'a [(OpId, Status)], &'a [EntitySnapshot]);

/// The index every checker reads.
pub struct Facts<'a> {
    /// The trace.
    pub lines: &'a [TraceLine],
    /// The seed.
    pub seed: u64,
    /// Simulated wall time at t = 0.
    pub epoch_ms: u64,
    /// The configuration in force.
    pub config: SyncConfig,
    /// Device → user.
    pub users: BTreeMap<String, String>,
    /// Every acknowledged op. Op ids are unique among the honest devices' ops, but another
    /// user may send the same id (legal, see [`Facts::op_of`]).
    pub ops: BTreeMap<OpId, OpFacts>,
    /// Final device snapshots: device → (line, queue, replica).
    pub final_devices: BTreeMap<String, FinalDevice<'a>>,
    /// The server's commit log: (line, user, row), in commit order.
    pub commits: Vec<(usize, &'a str, &'a HistoryRow)>,
    /// The server's entities: key → (line, owner, snapshot).
    pub entities: BTreeMap<(EntityType, EntityId), (usize, &'a str, &'a EntitySnapshot)>,
    /// When the liveness phase began.
    pub liveness_at_ms: Option<u64>,
    /// The line of the `converged` event.
    pub converged_line: Option<usize>,
    /// The line of the `end` event.
    pub end_line: usize,
}

impl<'a> Facts<'a> {
    /// Indexes a trace.
    // Long on purpose: one pass over the trace that fills every index the checkers read.
    pub fn new(lines: &'a [TraceLine]) -> Facts<'a> {
        let mut facts = Facts {
            lines,
            seed: 0,
            epoch_ms: 0,
            config: SyncConfig::default(),
            users: BTreeMap::new(),
            ops: BTreeMap::new(),
            final_devices: BTreeMap::new(),
            commits: Vec::new(),
            entities: BTreeMap::new(),
            liveness_at_ms: None,
            converged_line: None,
            end_line: lines.len().saturating_sub(1),
        };
        for (index, line) in lines.iter().enumerate() {
            match &line.event {
                TraceEvent::Run {
                    seed,
                    devices,
                    config,
                    epoch_ms,
                    ..
                } => {
                    facts.seed = *seed;
                    facts.epoch_ms = *epoch_ms;
                    facts.config = (**config).clone();
                    facts.users = devices
                        .iter()
                        .map(|(u, d)| (d.clone(), u.clone()))
                        .collect();
                }
                TraceEvent::Client {
                    event:
                        Event::Enqueued {
                            op_id,
                            seq,
                            entity_type,
                            entity_id,
                            priority,
                            blockers,
                            ..
                        },
                } => {
                    facts.ops.insert(
                        op_id.clone(),
                        OpFacts {
                            device: line.host.clone(),
                            user: facts.users.get(&line.host).cloned().unwrap_or_default(),
                            line: index,
                            t_ms: line.t_ms,
                            seq: *seq,
                            priority: *priority,
                            blockers: blockers.clone(),
                            depends_on: Vec::new(),
                            payload_sha256: None,
                            entity: (*entity_type, entity_id.clone()),
                        },
                    );
                }
                TraceEvent::Sealed {
                    op_id,
                    payload_sha256,
                    depends_on,
                } => {
                    if let Some(op) = facts.ops.get_mut(op_id) {
                        op.payload_sha256 = Some(payload_sha256.clone());
                        op.depends_on = depends_on.clone();
                    }
                }
                TraceEvent::Phase {
                    phase: Phase::Liveness,
                } => facts.liveness_at_ms = Some(line.t_ms),
                TraceEvent::Converged => facts.converged_line = Some(index),
                TraceEvent::FinalDevice { queue, replica, .. } => {
                    facts
                        .final_devices
                        .insert(line.host.clone(), (index, queue, replica));
                }
                TraceEvent::FinalCommit { user, row } => facts.commits.push((index, user, row)),
                TraceEvent::FinalEntity { owner, snapshot } => {
                    facts.entities.insert(
                        (snapshot.entity_type, snapshot.entity_id.clone()),
                        (index, owner, snapshot),
                    );
                }
                TraceEvent::End => facts.end_line = index,
                _ => {}
            }
        }
        facts
    }

    /// The acknowledged op `op_id` of `user`: what the server logs under a user's name is
    /// that user's, and an op id another user also used names a different op.
    pub fn op_of(&self, user: &str, op_id: &OpId) -> Option<&OpFacts> {
        self.ops.get(op_id).filter(|op| op.user == user)
    }

    /// A violation at trace line `at`, quoting `lines`.
    pub fn violation(
        &self,
        checker: Checker,
        at: usize,
        message: String,
        lines: &[usize],
    ) -> Violation {
        let mut quoted: Vec<usize> = lines.to_vec();
        quoted.sort_unstable();
        quoted.dedup();
        quoted.truncate(QUOTED_LINES_MAX);
        Violation {
            checker,
            seed: self.seed,
            t_ms: self.lines.get(at).map_or(0, |l| l.t_ms),
            message,
            events: quoted
                .into_iter()
                .map(|i| (i, self.lines[i].to_json()))
                .collect(),
        }
    }

    /// The commit rows of one op, as `(line, row)`, that carried a decided write.
    pub fn decided_rows(&self) -> BTreeMap<(&'a str, &'a OpId), Vec<(usize, &'a HistoryRow)>> {
        let mut rows: BTreeMap<(&str, &OpId), Vec<(usize, &HistoryRow)>> = BTreeMap::new();
        for (line, user, row) in &self.commits {
            if let (Some(op_id), Some(_)) = (&row.op_id, &row.write) {
                if row.action != HistoryAction::Resolve {
                    rows.entry((user, op_id)).or_default().push((*line, row));
                }
            }
        }
        rows
    }
}

/// The one pass/fail rule. A negative scenario passes when the checker it names reported a
/// violation; any other passes when every checker held (the determinism re-run included,
/// when it ran) and every expectation was met.
pub fn passed<'a>(
    spec: &RunSpec,
    verdicts: impl IntoIterator<Item = &'a Verdict>,
    unmet: &[String],
) -> bool {
    let mut verdicts = verdicts.into_iter();
    match spec.expect.violation {
        Some(checker) => verdicts.any(|v| v.checker == checker && !v.violations.is_empty()),
        None => unmet.is_empty() && verdicts.all(|v| v.violations.is_empty()),
    }
}

/// A checker's entry point.
type CheckFn = fn(&Facts<'_>) -> Vec<Violation>;

/// Runs every checker the spec selects (all but `determinism`, which the runner does).
pub fn check(facts: &Facts<'_>, spec: &RunSpec) -> Vec<Verdict> {
    let selected = |checker: Checker| {
        spec.expect.checkers.is_empty() || spec.expect.checkers.contains(&checker)
    };
    let run: [(Checker, CheckFn); 16] = [
        (Checker::NoLoss, no_loss::check),
        (Checker::ExactlyOnce, exactly_once::check),
        (Checker::DependencyOrder, dependency_order::check),
        (Checker::PriorityOrder, priority_order::check),
        (Checker::Convergence, convergence::check),
        (Checker::Isolation, isolation::check),
        (Checker::Integrity, integrity::check),
        (Checker::Backoff, backoff::check),
        (Checker::ConflictOracle, conflict_oracle::check),
        (Checker::Liveness, liveness::check),
        (Checker::Durability, durability::check),
        (Checker::ServerHealth, server_health::check),
        (Checker::Referential, referential::check),
        (Checker::Provenance, provenance::check),
        (Checker::Telemetry, telemetry::check),
        (Checker::ConflictVisibility, conflict_visibility::check),
    ];
    run.into_iter()
        .map(|(checker, check)| {
            let ran = selected(checker) || spec.expect.violation == Some(checker);
            Verdict {
                checker,
                ran,
                violations: if ran { check(facts) } else { Vec::new() },
            }
        })
        .collect()
}

/// The scenario's expected counts and values that the run did not meet.
pub fn expectations(facts: &Facts<'_>, spec: &RunSpec, summary: &Summary) -> Vec<String> {
    let mut unmet = Vec::new();
    let counts = &spec.expect.counts;
    for (name, bound, actual) in [
        ("applied", counts.applied_min, summary.applied),
        ("conflicts", counts.conflicts_min, summary.conflicts),
        ("rejected", counts.rejected_min, summary.rejected),
        (
            "dead_lettered",
            counts.dead_lettered_min,
            summary.dead_lettered,
        ),
        ("expired", counts.expired_min, summary.expired),
        ("blocked", counts.blocked_min, summary.blocked),
        ("refused", counts.refused_min, summary.refused),
        ("forbidden", counts.forbidden_min, summary.forbidden),
        ("duplicates", counts.duplicates_min, summary.duplicates),
    ] {
        if let Some(min) = bound {
            if actual < min {
                unmet.push(format!(
                    "expected at least {min} {name}, the run had {actual}"
                ));
            }
        }
    }
    let reached = crate::coverage::reached(facts.lines);
    for point in &spec.expect.covered {
        if !reached.contains(&point.as_str()) {
            unmet.push(format!(
                "expected coverage point {point} reached; it was not"
            ));
        }
    }
    for value in &spec.expect.values {
        let key = (value.entity_type, EntityId(value.id.clone()));
        let Some((_, _, snapshot)) = facts.entities.get(&key) else {
            unmet.push(format!(
                "expected {} {} on the server; it does not exist",
                value.entity_type, value.id
            ));
            continue;
        };
        let actual = if value.field == "deleted" {
            serde_json::Value::Bool(snapshot.deleted)
        } else {
            snapshot
                .entity
                .get(&value.field)
                .cloned()
                .unwrap_or(serde_json::Value::Null)
        };
        if actual != value.equals {
            unmet.push(format!(
                "expected {} {} {} = {}, the server holds {}",
                value.entity_type, value.id, value.field, value.equals, actual
            ));
        }
    }
    unmet
}
