//! Design validation reports (docs/reports.md): what a run's trace says, as numbers ([`RunReport`]),
//! as SVG plots ([`svg`]), as Markdown and self-contained HTML pages ([`page`]) and an
//! interactive trace page ([`trace_page`]); design
//! comparisons of one scenario under several configurations ([`compare`]).
//!
//! Everything here is a function of the trace (and the spec), so a report is as
//! deterministic as the run: no wall-clock time appears in it. The provenance line (git
//! commit, `Cargo.lock` digest) comes from the caller.

pub mod compare;
pub mod history;
pub mod page;
pub mod svg;
pub mod trace_page;

use crate::runner::Checked;
use crate::spec::{Action, RunSpec};
use crate::trace::{Phase, TraceEvent, TraceLine};
use rockhound_engine::client::Status;
use rockhound_engine::client::observe::Event;
use rockhound_engine::server::wire::{HistoryStatus, OpStatus};
use rockhound_engine::{EntityId, EntityType, SyncConfig};
use serde_json::Value;
use std::collections::BTreeMap;

/// What a device went through, over simulated time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceTimeline {
    /// The device.
    pub name: String,
    /// Offline intervals `[from, to)` in simulated ms.
    pub offline: Vec<(u64, u64)>,
    /// Partitions.
    pub partitions: Vec<(u64, u64)>,
    /// Held traffic.
    pub holds: Vec<(u64, u64)>,
    /// Crashes (until the restart).
    pub down: Vec<(u64, u64)>,
    /// Queue depth after each change: `(t_ms, ops enqueued and not yet applied, in a
    /// conflict, rejected or expired)`.
    pub depth: Vec<(u64, u64)>,
    /// When an op met a conflict.
    pub conflicts: Vec<u64>,
    /// When an op was dead-lettered.
    pub dead_letters: Vec<u64>,
}

/// An op that did not end applied: dead-lettered, expired, blocked or rejected at the end.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedOp {
    /// Its device.
    pub device: String,
    /// The op.
    pub op_id: String,
    /// Its final status.
    pub status: Status,
    /// Why, as the engine said.
    pub reason: String,
}

/// One run, as the report shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    /// The scenario.
    pub name: String,
    /// What it exercises.
    pub description: String,
    /// The seed.
    pub seed: u64,
    /// The trace digest.
    pub digest: String,
    /// The command that reruns it (`rockhound run <file> --seed N` when the caller knows
    /// the file).
    pub reproduce: String,
    /// The configuration in force.
    pub config: SyncConfig,
    /// `(checker, ran, violations)`.
    pub verdicts: Vec<(String, bool, usize)>,
    /// Whether the run passed (a negative scenario passes when its bug is caught).
    pub passed: bool,
    /// For a negative scenario, the checker that must catch its planted bug.
    pub expected_violation: Option<String>,
    /// Unmet expectations.
    pub unmet: Vec<String>,
    /// Counts.
    pub summary: crate::summary::Summary,
    /// When the liveness phase began.
    pub healed_at_ms: u64,
    /// Per device.
    pub devices: Vec<DeviceTimeline>,
    /// Enqueue-to-applied (or conflict-decided) latency of every settled op, simulated ms.
    pub latencies_ms: Vec<u64>,
    /// Every retry: `(failed attempts so far, delay chosen in ms)`.
    pub retries: Vec<(u32, u64)>,
    /// Conflicts on the server: `(strategy, decision) -> count`.
    pub conflicts: BTreeMap<(String, String), u64>,
    /// Ops that did not end applied.
    pub failed: Vec<FailedOp>,
    /// Fields whose final server value is not the value of the edit made last in true
    /// (simulated) time: edits lost to the wrong winner.
    pub lost_edits: u64,
    /// When a checker fired: the story of each op its violations name (at most
    /// [`STORIES_MAX`]), as `rockhound explain` tells it.
    pub stories: Vec<(String, Vec<String>)>,
}

/// The most op stories a report tells.
pub const STORIES_MAX: usize = 5;

impl RunReport {
    /// The result in a word or three: `holds`, `bug caught by X`, or `FAILED`.
    pub fn result(&self) -> String {
        match (self.passed, &self.expected_violation) {
            (true, None) => "holds".to_owned(),
            (true, Some(checker)) => format!("bug caught by {checker}"),
            (false, _) => "FAILED".to_owned(),
        }
    }

    /// Reads the report out of a checked run of `spec`.
    pub fn new(spec: &RunSpec, checked: &Checked) -> RunReport {
        let outcome = &checked.outcome;
        let lines = &outcome.trace.lines;
        let config = lines
            .iter()
            .find_map(|l| match &l.event {
                TraceEvent::Run { config, .. } => Some((**config).clone()),
                _ => None,
            })
            .unwrap_or_default();
        let healed_at_ms = lines
            .iter()
            .find(|l| {
                matches!(
                    l.event,
                    TraceEvent::Phase {
                        phase: Phase::Liveness
                    }
                )
            })
            .map_or(spec.sim.safety_ms, |l| l.t_ms);
        let end_ms = outcome.summary.simulated_ms;
        RunReport {
            name: spec.name.clone(),
            description: spec.description.clone(),
            seed: outcome.seed,
            digest: outcome.digest.clone(),
            reproduce: format!("rockhound run <scenario file> --seed {}", outcome.seed),
            config,
            verdicts: checked
                .verdicts()
                .iter()
                .map(|v| (v.checker.to_string(), v.ran, v.violations.len()))
                .collect(),
            passed: checked.passed(spec),
            expected_violation: spec.expect.violation.map(|c| c.to_string()),
            unmet: outcome.unmet.clone(),
            summary: outcome.summary.clone(),
            healed_at_ms,
            devices: timelines(spec, lines, end_ms),
            latencies_ms: latencies(lines),
            retries: retries(lines),
            conflicts: conflicts(lines),
            failed: failed(lines),
            lost_edits: lost_edits(lines),
            stories: stories(checked),
        }
    }
}

/// Closes the open interval of `device` in `open` at `t`, into `into`.
fn close(open: &mut BTreeMap<String, u64>, device: &str, t: u64, into: &mut Vec<(u64, u64)>) {
    if let Some(from) = open.remove(device) {
        into.push((from, t));
    }
}

// Long on purpose: one pass over the trace that fills every device's lanes.
fn timelines(spec: &RunSpec, lines: &[TraceLine], end_ms: u64) -> Vec<DeviceTimeline> {
    let mut by_device: BTreeMap<String, DeviceTimeline> = spec
        .devices()
        .into_iter()
        .map(|(_, name)| {
            let timeline = DeviceTimeline {
                name: name.clone(),
                depth: vec![(0, 0)],
                ..DeviceTimeline::default()
            };
            (name, timeline)
        })
        .collect();
    let (mut offline, mut partitioned, mut held, mut down) = (
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    let mut depth: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines {
        let t = line.t_ms;
        let host = line.host.as_str();
        match &line.event {
            TraceEvent::Client { event } => {
                let Some(timeline) = by_device.get_mut(host) else {
                    continue;
                };
                let level = depth.entry(host.to_owned()).or_default();
                match event {
                    Event::Online { online: false } => {
                        offline.entry(host.to_owned()).or_insert(t);
                    }
                    Event::Online { online: true } => {
                        close(&mut offline, host, t, &mut timeline.offline)
                    }
                    Event::Enqueued { .. } => {
                        *level += 1;
                        timeline.depth.push((t, *level));
                    }
                    Event::Op(update) => match update.status {
                        Status::Applied | Status::Conflict | Status::Rejected | Status::Expired => {
                            *level = level.saturating_sub(1);
                            timeline.depth.push((t, *level));
                            if update.status == Status::Conflict {
                                timeline.conflicts.push(t);
                            }
                        }
                        Status::Error => timeline.dead_letters.push(t),
                        _ => {}
                    },
                    _ => {}
                }
            }
            TraceEvent::Step { action } => match action {
                Action::Partition { device } => {
                    partitioned.entry(device.clone()).or_insert(t);
                }
                Action::Heal { device } => {
                    if let Some(timeline) = by_device.get_mut(device) {
                        close(&mut partitioned, device, t, &mut timeline.partitions);
                    }
                }
                Action::Hold { device } => {
                    held.entry(device.clone()).or_insert(t);
                }
                Action::Release { device } => {
                    if let Some(timeline) = by_device.get_mut(device) {
                        close(&mut held, device, t, &mut timeline.holds);
                    }
                }
                _ => {}
            },
            TraceEvent::Crashed { .. } => {
                down.entry(host.to_owned()).or_insert(t);
            }
            TraceEvent::Restarted { error: None, .. } => {
                if let Some(timeline) = by_device.get_mut(host) {
                    close(&mut down, host, t, &mut timeline.down);
                }
            }
            TraceEvent::Phase {
                phase: Phase::Liveness,
            } => {
                // Healing ends every partition and hold.
                for (name, timeline) in &mut by_device {
                    close(&mut partitioned, name, t, &mut timeline.partitions);
                    close(&mut held, name, t, &mut timeline.holds);
                }
            }
            _ => {}
        }
    }
    for (name, timeline) in &mut by_device {
        close(&mut offline, name, end_ms, &mut timeline.offline);
        close(&mut partitioned, name, end_ms, &mut timeline.partitions);
        close(&mut held, name, end_ms, &mut timeline.holds);
        close(&mut down, name, end_ms, &mut timeline.down);
    }
    by_device.into_values().collect()
}

fn latencies(lines: &[TraceLine]) -> Vec<u64> {
    let mut enqueued_at: BTreeMap<&str, u64> = BTreeMap::new();
    let mut latencies = Vec::new();
    for line in lines {
        if let TraceEvent::Client { event } = &line.event {
            match event {
                Event::Enqueued { op_id, .. } => {
                    enqueued_at.insert(op_id.as_str(), line.t_ms);
                }
                Event::Op(update)
                    if matches!(update.status, Status::Applied | Status::Conflict) =>
                {
                    if let Some(at) = enqueued_at.remove(update.op_id.as_str()) {
                        latencies.push(line.t_ms - at);
                    }
                }
                _ => {}
            }
        }
    }
    latencies
}

fn retries(lines: &[TraceLine]) -> Vec<(u32, u64)> {
    lines
        .iter()
        .filter_map(|line| match &line.event {
            TraceEvent::Client {
                event: Event::Op(update),
            } if update.status == Status::Pending => {
                update.delay_ms.map(|delay| (update.attempts, delay))
            }
            _ => None,
        })
        .collect()
}

fn conflicts(lines: &[TraceLine]) -> BTreeMap<(String, String), u64> {
    use rockhound_engine::server::replay::LoggedWrite;
    let mut counts = BTreeMap::new();
    for line in lines {
        if let TraceEvent::FinalCommit { row, .. } = &line.event {
            if row.status != HistoryStatus::Op(OpStatus::Conflict) {
                continue;
            }
            let strategy = match &row.write {
                Some(LoggedWrite::Op {
                    strategy: Some(strategy),
                    ..
                }) => strategy.as_str().to_owned(),
                _ => "unknown".to_owned(),
            };
            let decision = row.reason.map_or_else(String::new, |r| r.to_string());
            *counts.entry((strategy, decision)).or_default() += 1;
        }
    }
    counts
}

fn failed(lines: &[TraceLine]) -> Vec<FailedOp> {
    let mut reasons: BTreeMap<&str, String> = BTreeMap::new();
    let mut failed = Vec::new();
    for line in lines {
        match &line.event {
            TraceEvent::Client {
                event: Event::Op(update),
            } => {
                if let Some(reason) = &update.reason {
                    reasons.insert(update.op_id.as_str(), reason.clone());
                }
            }
            TraceEvent::FinalDevice { queue, .. } => {
                for (op_id, status) in queue {
                    if matches!(
                        status,
                        Status::Error | Status::Expired | Status::Blocked | Status::Rejected
                    ) {
                        failed.push(FailedOp {
                            device: line.host.clone(),
                            op_id: op_id.to_string(),
                            status: *status,
                            reason: reasons.get(op_id.as_str()).cloned().unwrap_or_default(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    failed
}

/// Fields whose final value on the server is not what the edit made last in simulated
/// (true) time wrote, among entities that exist at the end. Only edits the device accepted
/// count (a step followed by `enqueued` on that device at the same time).
fn lost_edits(lines: &[TraceLine]) -> u64 {
    type Key = (EntityType, EntityId);
    let mut last_write: BTreeMap<(Key, String), Value> = BTreeMap::new();
    let mut pending: Option<(&str, Key, &serde_json::Map<String, Value>)> = None;
    let mut finals: BTreeMap<Key, &Value> = BTreeMap::new();
    for line in lines {
        match &line.event {
            TraceEvent::Step { action } => {
                pending = match action {
                    Action::Create {
                        device,
                        entity_type,
                        id,
                        fields,
                        ..
                    }
                    | Action::Update {
                        device,
                        entity_type,
                        id,
                        fields,
                        ..
                    } => Some((
                        device.as_str(),
                        (*entity_type, EntityId(id.clone())),
                        fields,
                    )),
                    _ => None,
                };
            }
            TraceEvent::Client {
                event:
                    Event::Enqueued {
                        entity_type,
                        entity_id,
                        ..
                    },
            } => {
                if let Some((device, key, fields)) = pending.take() {
                    if device == line.host && key == (*entity_type, entity_id.clone()) {
                        for (field, value) in fields {
                            last_write.insert((key.clone(), field.clone()), value.clone());
                        }
                    }
                }
            }
            TraceEvent::FinalEntity { snapshot, .. } if !snapshot.deleted => {
                finals.insert(
                    (snapshot.entity_type, snapshot.entity_id.clone()),
                    &snapshot.entity,
                );
            }
            _ => {}
        }
    }
    last_write
        .iter()
        .filter(|((key, field), value)| {
            finals
                .get(key)
                .is_some_and(|entity| entity.get(field).unwrap_or(&Value::Null) != *value)
        })
        .count() as u64
}

/// The stories of the ops the run's violations name, at most [`STORIES_MAX`].
fn stories(checked: &Checked) -> Vec<(String, Vec<String>)> {
    let named = crate::explain::named_ops(checked.verdicts());
    if named.is_empty() {
        return Vec::new();
    }
    let values = crate::explain::as_values(&checked.outcome.trace.lines);
    named
        .into_iter()
        .take(STORIES_MAX)
        .map(|op| {
            let story = crate::explain::story(&values, &op);
            (op, story)
        })
        .filter(|(_, story)| !story.is_empty())
        .collect()
}
