//! The run specification: everything one simulated run needs besides its seed. Scenario
//! files (TOML, `docs/scenarios.md`) deserialize straight into it; `explore` builds one
//! from the seed. Every numeric key carries its unit; unknown keys are errors. The steps are
//! in `action.rs`, the checks of every reference and limit in `validate.rs`.

mod action;
mod validate;

pub use action::{Action, Probe, Step};
pub use validate::SpecError;

use rockhound_engine::conflict::Strategy;
use rockhound_engine::entity::Priority;
use rockhound_engine::planted::Planted;
use rockhound_engine::{EntityType, SyncConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Most devices in one run.
pub const DEVICE_COUNT_MAX: usize = 1_000;
/// Most scripted steps in one run.
pub const STEP_COUNT_MAX: usize = 100_000;
/// Longest simulated run (safety plus liveness), in ms: thirty simulated days, so that an
/// offline stretch can outlast the offline-heavy preset's 14-day queue TTL and the server's
/// key retention after it.
pub const RUN_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;
/// Most random user actions per device (`workload.actions_per_device`).
pub const ACTIONS_PER_DEVICE_MAX: usize = 10_000;
/// Most random user actions in one run, over every device.
pub const WORKLOAD_ACTION_COUNT_MAX: usize = 1_000_000;
/// Most offline field trips per device (`workload.field_trips_per_device`).
pub const FIELD_TRIPS_PER_DEVICE_MAX: usize = 1_000;
/// Most random faults of one kind (`faults.device_crashes`, `faults.partitions`, …).
pub const FAULT_COUNT_MAX: usize = 10_000;
/// Largest one-way message latency, in ms.
pub const LATENCY_MS_MAX: u64 = 60_000;
/// Largest clock skew a step or the fault mix may give a device, either way, in ms (a year).
pub const SKEW_MS_MAX: u64 = 365 * 24 * 60 * 60 * 1000;
/// Most bytes of a half-written record a crash may leave (it is cut to less than one
/// record's frame, since a torn write never leaves a whole record).
pub const TORN_BYTES_MAX: usize = 1024 * 1024;
/// Largest simulated disk (`capacity_bytes` of a `disk` step), in bytes.
pub const DISK_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// One run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Short name (the file stem for scenario files).
    #[serde(default)]
    pub name: String,
    /// What the run exercises, for people.
    #[serde(default)]
    pub description: String,
    /// The seed this file was exported from; `run` and `replay` use it unless told
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Whether the run is too slow for `cargo test` (it still runs in `rockhound check`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub slow: bool,
    /// Users and their devices.
    pub users: Vec<UserSpec>,
    /// Configuration overrides on top of a preset.
    #[serde(default)]
    pub config: ConfigSpec,
    /// Network conditions.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Clock, placement and phase lengths.
    #[serde(default)]
    pub sim: SimSpec,
    /// Scripted steps, in any order (they run by `at_ms`, then file order).
    #[serde(default)]
    pub steps: Vec<Step>,
    /// A seeded random workload, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadSpec>,
    /// Seeded random faults, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultSpec>,
    /// What must hold at the end.
    #[serde(default)]
    pub expect: ExpectSpec,
    /// Bugs to plant (negative scenarios only).
    #[serde(default, skip_serializing_if = "Planted::is_none")]
    pub planted: Planted,
}

/// A user and the devices they sync from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// The user's name (also their id).
    pub name: String,
    /// Device names, unique across the run.
    pub devices: Vec<String>,
}

/// `max_retries`: a count, or `"unbounded"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Retries {
    /// At most this many failed attempts.
    Count(u32),
    /// The word `unbounded`.
    Word(UnboundedWord),
}

/// The only word `max_retries` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnboundedWord {
    /// Retry forever.
    Unbounded,
}

/// Overrides of [`SyncConfig`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// `development`, `production` (default) or `offline_heavy`.
    pub preset: Option<String>,
    /// Ops per batch.
    pub batch_size: Option<usize>,
    /// Request timeout.
    pub batch_timeout_ms: Option<u64>,
    /// Batching window: how long ready ops wait for more before a batch that is not full.
    pub batch_window_ms: Option<u64>,
    /// Automatic sync interval.
    pub auto_sync_interval_ms: Option<u64>,
    /// Failed attempts before dead-letter.
    pub max_retries: Option<Retries>,
    /// Queue capacity in ops.
    pub max_queue_size: Option<usize>,
    /// Queue TTL.
    pub queue_ttl_ms: Option<u64>,
    /// Largest tolerated clock skew.
    pub clock_skew_ms_max: Option<u64>,
    /// First retry delay.
    pub backoff_initial_ms: Option<u64>,
    /// Retry delay cap.
    pub backoff_cap_ms: Option<u64>,
    /// Retry jitter, percent.
    pub jitter_percent: Option<u8>,
    /// Changes asked for per pull page (small pages make pulls page).
    pub pull_page_len: Option<usize>,
    /// Per-type conflict strategies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub strategies: BTreeMap<EntityType, Strategy>,
    /// Per-type upload priorities, 0 to 4 (a child may be made more urgent than its
    /// parent: the dependency order still sends the parent first).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub priorities: BTreeMap<EntityType, Priority>,
}

impl ConfigSpec {
    /// The configuration this spec describes.
    pub fn build(&self) -> Result<SyncConfig, String> {
        let preset = self.preset.as_deref().unwrap_or("production");
        let mut config = SyncConfig::preset(preset).ok_or_else(|| {
            format!("unknown preset {preset:?}; use development, production or offline_heavy")
        })?;
        macro_rules! set {
            ($($field:ident => $target:expr),* $(,)?) => {
                $(if let Some(value) = self.$field { $target = value; })*
            };
        }
        set! {
            batch_size => config.batch_size,
            batch_timeout_ms => config.batch_timeout_ms,
            batch_window_ms => config.batch_window_ms,
            auto_sync_interval_ms => config.auto_sync_interval_ms,
            max_queue_size => config.max_queue_size,
            queue_ttl_ms => config.queue_ttl_ms,
            clock_skew_ms_max => config.clock_skew_ms_max,
            backoff_initial_ms => config.backoff.initial_ms,
            backoff_cap_ms => config.backoff.cap_ms,
            jitter_percent => config.backoff.jitter_percent,
            pull_page_len => config.pull_page_len,
        }
        match self.max_retries {
            Some(Retries::Count(count)) => config.max_retries = Some(count),
            Some(Retries::Word(UnboundedWord::Unbounded)) => config.max_retries = None,
            None => {}
        }
        for (entity_type, strategy) in &self.strategies {
            config.entities.set_strategy(*entity_type, *strategy);
        }
        for (entity_type, priority) in &self.priorities {
            config.entities.set_priority(*entity_type, *priority);
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Network conditions between devices and the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// Shortest one-way message latency.
    pub latency_ms_min: u64,
    /// Longest one-way message latency (messages between the two reorder).
    pub latency_ms_max: u64,
    /// Chance that a request, or its answer, is lost (0 to 1).
    pub loss_rate: f64,
    /// Chance that a request is delivered twice.
    pub duplicate_rate: f64,
    /// Chance that a batch's payload is corrupted in transit.
    pub corrupt_rate: f64,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            latency_ms_min: 5,
            latency_ms_max: 50,
            loss_rate: 0.0,
            duplicate_rate: 0.0,
            corrupt_rate: 0.0,
        }
    }
}

/// Clock, placement and phases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSpec {
    /// Simulated time per turmoil step. Larger ticks run faster and blur latency.
    pub tick_ms: u64,
    /// Devices sharing one turmoil host (per-device faults still apply to one device).
    pub devices_per_host: usize,
    /// Length of the safety phase (faults and user actions).
    pub safety_ms: u64,
    /// Bound on the liveness phase: after healing, queues must drain and replicas converge
    /// within it.
    pub liveness_ms: u64,
    /// Simulated wall-clock time at the start, ms since the Unix epoch.
    pub epoch_ms: u64,
    /// The server's store: `memory` (the default) or `sqlite` (an in-memory SQLite
    /// database through the same SQL code as `rockhound serve --db`; it survives a server
    /// crash as the memory store does). A run gives the same trace on either.
    #[serde(default, skip_serializing_if = "ServerStoreKind::is_memory")]
    pub server_store: ServerStoreKind,
}

/// Which store the simulated server keeps its tables in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerStoreKind {
    /// The tables in ordered maps.
    #[default]
    Memory,
    /// The tables in SQLite, cached in memory.
    Sqlite,
}

impl ServerStoreKind {
    fn is_memory(&self) -> bool {
        *self == ServerStoreKind::Memory
    }
}

impl std::str::FromStr for ServerStoreKind {
    type Err = String;

    fn from_str(name: &str) -> Result<ServerStoreKind, String> {
        match name {
            "memory" => Ok(ServerStoreKind::Memory),
            "sqlite" => Ok(ServerStoreKind::Sqlite),
            _ => Err(format!(
                "{name:?} is not a server store: use memory or sqlite"
            )),
        }
    }
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            tick_ms: 10,
            devices_per_host: 1,
            safety_ms: 60_000,
            liveness_ms: 300_000,
            epoch_ms: 1_780_000_000_000,
            server_store: ServerStoreKind::Memory,
        }
    }
}

/// The seeded rockhounding workload: field trips taken offline, finds logged and
/// photographed, specimens catalogued, edited from two devices, tagged, grouped, deleted and
/// exported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadSpec {
    /// User actions per device during the safety phase.
    pub actions_per_device: usize,
    /// Offline field trips per device during the safety phase.
    pub field_trips_per_device: usize,
    /// Longest field trip.
    pub field_trip_ms_max: u64,
    /// Also draw the rare edits: analytics cache entries, and deletes of parents (which
    /// the server refuses while live children reference them). Off unless set; the swarm
    /// sets it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wide: bool,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            actions_per_device: 20,
            field_trips_per_device: 1,
            field_trip_ms_max: 20_000,
            wide: false,
        }
    }
}

/// Seeded random faults during the safety phase. With `swarm`, each kind is switched on or
/// off and its rate drawn from the seed, so different seeds explore different mixes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSpec {
    /// Draw the mix from the seed (the counts and rates below become maxima).
    pub swarm: bool,
    /// Device crashes (each followed by a restart).
    pub device_crashes: usize,
    /// Server crashes (each followed by a restart).
    pub server_crashes: usize,
    /// Partitions (each followed by a heal).
    pub partitions: usize,
    /// Holds (each followed by a release).
    pub holds: usize,
    /// Longest partition, hold or crash.
    pub outage_ms_max: u64,
    /// Largest clock skew given to a device, either way.
    pub skew_ms_max: u64,
    /// Disk fault windows (failing fsync or full disk).
    pub disk_faults: usize,
    /// Loss rate applied to every device.
    pub loss_rate: f64,
    /// Duplicate rate applied to every device.
    pub duplicate_rate: f64,
    /// Corruption rate applied to every device.
    pub corrupt_rate: f64,
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec {
            swarm: false,
            device_crashes: 2,
            server_crashes: 1,
            partitions: 2,
            holds: 1,
            outage_ms_max: 10_000,
            skew_ms_max: 30_000,
            disk_faults: 1,
            loss_rate: 0.05,
            duplicate_rate: 0.05,
            corrupt_rate: 0.02,
        }
    }
}

/// A checker, by the name scenario files, verdicts and reports use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checker {
    /// `no_loss` (docs/simulation.md).
    NoLoss,
    /// `exactly_once` (docs/simulation.md).
    ExactlyOnce,
    /// `dependency_order` (docs/simulation.md).
    DependencyOrder,
    /// `priority_order` (docs/simulation.md).
    PriorityOrder,
    /// `convergence` (docs/simulation.md).
    Convergence,
    /// `isolation` (docs/simulation.md).
    Isolation,
    /// `integrity` (docs/simulation.md).
    Integrity,
    /// `backoff` (docs/simulation.md).
    Backoff,
    /// `conflict_oracle` (docs/simulation.md).
    ConflictOracle,
    /// `liveness` (docs/simulation.md).
    Liveness,
    /// `durability` (docs/simulation.md).
    Durability,
    /// `server_health` (docs/simulation.md).
    ServerHealth,
    /// `referential` (docs/simulation.md).
    Referential,
    /// `provenance` (docs/simulation.md).
    Provenance,
    /// `telemetry` (docs/simulation.md).
    Telemetry,
    /// `conflict_visibility` (docs/simulation.md).
    ConflictVisibility,
    /// `determinism` (docs/simulation.md).
    Determinism,
}

impl Checker {
    /// Every checker, in the order verdicts list them.
    pub const ALL: [Checker; 17] = [
        Checker::NoLoss,
        Checker::ExactlyOnce,
        Checker::DependencyOrder,
        Checker::PriorityOrder,
        Checker::Convergence,
        Checker::Isolation,
        Checker::Integrity,
        Checker::Backoff,
        Checker::ConflictOracle,
        Checker::Liveness,
        Checker::Durability,
        Checker::ServerHealth,
        Checker::Referential,
        Checker::Provenance,
        Checker::Telemetry,
        Checker::ConflictVisibility,
        Checker::Determinism,
    ];

    /// The checker's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Checker::NoLoss => "no_loss",
            Checker::ExactlyOnce => "exactly_once",
            Checker::DependencyOrder => "dependency_order",
            Checker::PriorityOrder => "priority_order",
            Checker::Convergence => "convergence",
            Checker::Isolation => "isolation",
            Checker::Integrity => "integrity",
            Checker::Backoff => "backoff",
            Checker::ConflictOracle => "conflict_oracle",
            Checker::Liveness => "liveness",
            Checker::Durability => "durability",
            Checker::ServerHealth => "server_health",
            Checker::Referential => "referential",
            Checker::Provenance => "provenance",
            Checker::Telemetry => "telemetry",
            Checker::ConflictVisibility => "conflict_visibility",
            Checker::Determinism => "determinism",
        }
    }
}

impl std::fmt::Display for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What must hold at the end of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectSpec {
    /// Checkers to run (default: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checkers: Vec<Checker>,
    /// For a negative scenario: the checker that must report a violation.
    pub violation: Option<Checker>,
    /// Lower bounds on outcome counts over all devices.
    #[serde(skip_serializing_if = "CountSpec::is_empty")]
    pub counts: CountSpec,
    /// Final field values on the server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<ValueSpec>,
    /// Coverage points the run must reach (docs/simulation.md, "Coverage"): how a scenario
    /// says which path it is about, say `server.answer.rejected.op_id_reused`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub covered: Vec<String>,
    /// The trace digest the run must reproduce (written by `export`; checked by `replay`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Lower bounds on outcome counts (`None` = no bound).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountSpec {
    /// Ops applied.
    pub applied_min: Option<u64>,
    /// Ops that met a conflict.
    pub conflicts_min: Option<u64>,
    /// Ops rejected.
    pub rejected_min: Option<u64>,
    /// Ops dead-lettered (at any point).
    pub dead_lettered_min: Option<u64>,
    /// Ops expired.
    pub expired_min: Option<u64>,
    /// Ops blocked (at any point).
    pub blocked_min: Option<u64>,
    /// Enqueues refused (queue full, disk faults).
    pub refused_min: Option<u64>,
    /// Requests answered 401/403 or ops rejected as forbidden.
    pub forbidden_min: Option<u64>,
    /// Duplicate answers.
    pub duplicates_min: Option<u64>,
}

impl CountSpec {
    /// Whether no bound is set.
    pub fn is_empty(&self) -> bool {
        *self == CountSpec::default()
    }
}

/// One expected final value on the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueSpec {
    /// The entity's type.
    pub entity_type: EntityType,
    /// Its id.
    pub id: String,
    /// The field (`deleted` checks the tombstone flag).
    pub field: String,
    /// The expected value.
    pub equals: Value,
}
