//! Coverage of the simulation: which declared points a run reached, and the table over many
//! runs (docs/simulation.md, "Coverage").
//!
//! A point is reached two ways: the engine marks it in its own code
//! (`rockhound_engine::coverage`), or a trace event implies it as the event is recorded
//! ([`event_points`]: a crash, a network fault, an op enqueued with its type and priority,
//! every client status). The world drains the marks after every step and traces each
//! point the first time a run reaches it (`covered`), so coverage is read from the trace
//! like everything else.

use crate::trace::{TraceEvent, TraceLine};
use rockhound_engine::client::observe::Event;
use rockhound_engine::coverage::Point;
use serde::Serialize;
use std::collections::BTreeMap;

/// The simulation's own points (the engine declares its own in `coverage::POINTS`).
pub const SIM_POINTS: &[Point] = &[
    ("sim.step.create", "a scripted or workload create"),
    ("sim.step.update", "a scripted or workload update"),
    ("sim.step.delete", "a scripted or workload delete"),
    ("sim.step.offline", "a device went offline"),
    ("sim.step.online", "a device came back online"),
    ("sim.step.heal", "a partition healed"),
    ("sim.step.release", "held requests released"),
    ("sim.step.restart", "a crashed device restarted"),
    (
        "sim.restart.clock_reset",
        "a device rebooted with its clock reset far behind",
    ),
    ("sim.step.restart_server", "the server restarted"),
    ("sim.step.sync", "a user asked for a sync now"),
    (
        "sim.step.partition",
        "a device was partitioned from the server",
    ),
    ("sim.step.hold", "a device's requests were held"),
    ("sim.step.crash", "a device crashed"),
    ("sim.step.crash_server", "the server crashed"),
    ("sim.step.skew", "a device's clock was skewed"),
    ("sim.step.retry_dead", "a user retried dead-lettered ops"),
    ("sim.step.resolve", "a user resolved open conflicts"),
    ("sim.step.replay", "a device's last batch was replayed"),
    ("sim.step.corrupt", "a device's next batch was damaged"),
    (
        "sim.step.duplicate",
        "a device's next request was duplicated",
    ),
    (
        "sim.step.forge",
        "a device forged a request as another user",
    ),
    (
        "sim.collision.ids_across_users",
        "an op applied under the op id and idempotency key of another user's applied op",
    ),
    ("sim.step.disk", "a device's disk was made to fail"),
    (
        "sim.step.hostile",
        "a device sent a hostile client's requests",
    ),
    ("sim.step.discard", "a user discarded failed ops"),
    ("sim.step.cleanup_server", "the server ran its cleanup"),
    ("sim.step.server_room", "the server's disk filled up"),
    (
        "sim.step.damage_answer",
        "one bit of a device's next answer was flipped",
    ),
    (
        "sim.step.cut_answer",
        "a device's next answer was cut short",
    ),
    (
        "sim.step.overload",
        "the server shed load: 503 with Retry-After",
    ),
    (
        "sim.step.crash_server_mid_batch",
        "a crash was armed inside the server's next batch",
    ),
    (
        "sim.crash.server_between_ops",
        "the server died between two commits of one batch",
    ),
    ("sim.net.request_lost", "a request was lost"),
    ("sim.net.answer_lost", "an answer was lost"),
    ("sim.net.duplicated", "a request arrived twice"),
    ("sim.net.corrupted", "a request was damaged on the way"),
    ("sim.net.answer_cut", "an answer arrived cut short"),
    (
        "sim.net.answer_damaged",
        "an answer arrived with one bit flipped",
    ),
    ("sim.net.replayed", "an old batch was sent again"),
    ("sim.net.partitioned", "a request met a partition"),
    (
        "sim.crash.batch_in_flight",
        "a device crashed with a batch in flight",
    ),
    (
        "sim.crash.torn_write",
        "a device crashed in the middle of a write",
    ),
    (
        "sim.restart.refused",
        "a device's restart was refused by its store",
    ),
    (
        "sim.edit_refused",
        "a user's edit was refused by the client",
    ),
    (
        "sim.enqueue.blocking",
        "an edit the user waits on enqueued (priority 0, not a delete)",
    ),
    (
        "sim.dependency_chain_3",
        "an op enqueued at the end of a dependency chain of depth 3",
    ),
    ("sim.enqueue.field_session", "a field session enqueued"),
    ("sim.enqueue.find_log", "a find log enqueued"),
    ("sim.enqueue.specimen", "a specimen enqueued"),
    ("sim.enqueue.capture_session", "a capture session enqueued"),
    ("sim.enqueue.raw_capture", "a raw capture enqueued"),
    (
        "sim.enqueue.processed_capture",
        "a processed capture enqueued",
    ),
    ("sim.enqueue.tag", "a tag enqueued"),
    (
        "sim.enqueue.collection_group",
        "a collection group enqueued",
    ),
    (
        "sim.enqueue.storage_location",
        "a storage location enqueued",
    ),
    ("sim.enqueue.export", "an export enqueued"),
    (
        "sim.enqueue.analytics_cache",
        "an analytics cache entry enqueued",
    ),
    (
        "sim.enqueue.priority.0",
        "an op enqueued at priority 0 (critical: a delete or a blocking edit)",
    ),
    (
        "sim.enqueue.priority.1",
        "an op enqueued at priority 1 (high)",
    ),
    (
        "sim.enqueue.priority.2",
        "an op enqueued at priority 2 (normal)",
    ),
    (
        "sim.enqueue.priority.3",
        "an op enqueued at priority 3 (low)",
    ),
    (
        "sim.enqueue.priority.4",
        "an op enqueued at priority 4 (background)",
    ),
    ("client.status.pending", "an op went (back) to pending"),
    ("client.status.applied", "an op settled applied"),
    (
        "client.status.conflict",
        "an op settled as a decided conflict",
    ),
    ("client.status.rejected", "an op was rejected for good"),
    ("client.status.error", "an op was dead-lettered"),
    ("client.status.expired", "an op expired"),
    ("client.status.blocked", "an op was blocked"),
];

/// Every declared point, engine's then simulation's, with its meaning.
pub fn declared() -> impl Iterator<Item = &'static Point> {
    rockhound_engine::coverage::POINTS.iter().chain(SIM_POINTS)
}

/// Marks the points an event implies, as it is recorded.
pub fn event_points(event: &TraceEvent) {
    use rockhound_engine::coverage::{hit, hit_with};
    match event {
        TraceEvent::Step { action } => hit_with(|| format!("sim.step.{}", action.name())),
        TraceEvent::Net { what, .. } => hit_with(|| format!("sim.net.{}", wire_name(what))),
        TraceEvent::Crashed { torn_bytes } if *torn_bytes > 0 => hit("sim.crash.torn_write"),
        TraceEvent::Restarted { error: Some(_), .. } => hit("sim.restart.refused"),
        TraceEvent::Refused { .. } => hit("sim.edit_refused"),
        TraceEvent::Client { event } => match event {
            Event::Enqueued {
                entity_type,
                priority,
                ..
            } => {
                hit_with(|| format!("sim.enqueue.{entity_type}"));
                hit_with(|| format!("sim.enqueue.priority.{priority}"));
            }
            Event::Op(update) => hit_with(|| format!("client.status.{}", update.status)),
            _ => {}
        },
        _ => {}
    }
}

/// The snake_case name a value serializes to.
fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// The points one run reached, in the order it first reached them, read from its trace.
pub fn reached(lines: &[TraceLine]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|line| match &line.event {
            TraceEvent::Covered { point } => Some(point.as_str()),
            _ => None,
        })
        .collect()
}

/// One row of the coverage table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The point's name.
    pub point: String,
    /// What reaching it means (empty for an undeclared name).
    pub meaning: String,
    /// Runs that reached it.
    pub runs: u64,
    /// The smallest seed that reached it.
    pub first_seed: Option<u64>,
    /// Whether the point is declared (a mark of an undeclared name is a bug of the marks).
    pub declared: bool,
}

/// Coverage over many runs: per point, the runs that reached it and the first seed.
#[derive(Clone, Debug, Default)]
pub struct Table {
    runs: u64,
    reached: BTreeMap<String, (u64, u64)>,
}

impl Table {
    /// Adds one run's reached points.
    pub fn add<'a>(&mut self, seed: u64, points: impl IntoIterator<Item = &'a str>) {
        self.runs += 1;
        for point in points {
            let entry = self.reached.entry(point.to_owned()).or_insert((0, seed));
            entry.0 += 1;
            entry.1 = entry.1.min(seed);
        }
    }

    /// Runs counted.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// Every declared point, then any undeclared name that was marked.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = declared()
            .map(|(point, meaning)| {
                let hit = self.reached.get(*point);
                Row {
                    point: (*point).to_owned(),
                    meaning: (*meaning).to_owned(),
                    runs: hit.map_or(0, |h| h.0),
                    first_seed: hit.map(|h| h.1),
                    declared: true,
                }
            })
            .collect();
        for (point, (runs, first)) in &self.reached {
            if !declared().any(|(name, _)| name == point) {
                rows.push(Row {
                    point: point.clone(),
                    meaning: String::new(),
                    runs: *runs,
                    first_seed: Some(*first),
                    declared: false,
                });
            }
        }
        rows
    }

    /// Declared points no run reached.
    pub fn unreached(&self) -> Vec<&'static str> {
        declared()
            .map(|(point, _)| *point)
            .filter(|point| !self.reached.contains_key(*point))
            .collect()
    }

    /// Marked names that are not declared.
    pub fn undeclared(&self) -> Vec<String> {
        self.rows()
            .into_iter()
            .filter(|row| !row.declared)
            .map(|row| row.point)
            .collect()
    }

    /// The table as text: one line per point, then a summary line.
    pub fn render(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|r| r.point.len()).max().unwrap_or(0);
        let mut text = format!("coverage over {} run(s):\n", self.runs);
        for row in &rows {
            let first = row
                .first_seed
                .map_or_else(|| "-".to_owned(), |s| s.to_string());
            let flag = match (row.declared, row.runs) {
                (false, _) => "  UNDECLARED",
                (true, 0) => "  UNREACHED",
                _ => "",
            };
            text.push_str(&format!(
                "  {:<width$}  {:>6} runs  first seed {first}{flag}\n",
                row.point, row.runs
            ));
        }
        let declared = rows.iter().filter(|r| r.declared).count();
        text.push_str(&format!(
            "coverage: {} of {declared} points reached\n",
            declared - self.unreached().len()
        ));
        text
    }

    /// The table as JSON: the runs, then every row.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "runs": self.runs,
            "points": self.rows(),
            "unreached": self.unreached(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rockhound_engine::EntityType;

    #[test]
    fn every_point_is_declared_once_across_engine_and_simulation() {
        let names: std::collections::BTreeSet<&str> = declared().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), declared().count());
        for entity_type in EntityType::ALL {
            let name = format!("sim.enqueue.{entity_type}");
            assert!(names.contains(name.as_str()), "{name} is declared");
        }
    }

    #[test]
    fn the_table_counts_runs_and_first_seeds_and_names_the_gaps() {
        let mut table = Table::default();
        table.add(7, ["client.expired", "sim.step.crash"]);
        table.add(3, ["client.expired", "made.up"]);
        let rows = table.rows();
        let expired = rows.iter().find(|r| r.point == "client.expired").unwrap();
        assert_eq!((expired.runs, expired.first_seed), (2, Some(3)));
        assert_eq!(table.undeclared(), vec!["made.up".to_owned()]);
        assert!(table.unreached().contains(&"client.blocked"));
        assert!(!table.unreached().contains(&"sim.step.crash"));
        let text = table.render();
        assert!(text.contains("made.up") && text.contains("UNDECLARED"));
        assert!(text.contains("UNREACHED"));
        assert_eq!(table.to_json()["runs"], 2);
    }
}
