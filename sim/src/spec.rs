//! The run specification: everything one simulated run needs besides its seed. Scenario
//! files (TOML, `docs/scenarios.md`) deserialize straight into it; `explore` builds one
//! from the seed. Every numeric key carries its unit; unknown keys are errors.

use rockhound_engine::conflict::Strategy;
use rockhound_engine::planted::Planted;
use rockhound_engine::server::wire::Resolution;
use rockhound_engine::{EntityType, SyncConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Most devices in one run.
pub const DEVICE_COUNT_MAX: usize = 1_000;
/// Most scripted steps in one run.
pub const STEP_COUNT_MAX: usize = 100_000;
/// Longest simulated run (safety plus liveness), in ms: one simulated week plus a day.
pub const RUN_MS_MAX: u64 = 8 * 24 * 60 * 60 * 1000 + 24 * 60 * 60 * 1000;
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
    /// Per-type conflict strategies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub strategies: BTreeMap<EntityType, Strategy>,
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
            auto_sync_interval_ms => config.auto_sync_interval_ms,
            max_queue_size => config.max_queue_size,
            queue_ttl_ms => config.queue_ttl_ms,
            clock_skew_ms_max => config.clock_skew_ms_max,
            backoff_initial_ms => config.backoff.initial_ms,
            backoff_cap_ms => config.backoff.cap_ms,
            jitter_percent => config.backoff.jitter_percent,
        }
        match self.max_retries {
            Some(Retries::Count(count)) => config.max_retries = Some(count),
            Some(Retries::Word(UnboundedWord::Unbounded)) => config.max_retries = None,
            None => {}
        }
        for (entity_type, strategy) in &self.strategies {
            config.entities.set_strategy(*entity_type, *strategy);
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
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec {
            tick_ms: 10,
            devices_per_host: 1,
            safety_ms: 60_000,
            liveness_ms: 300_000,
            epoch_ms: 1_780_000_000_000,
        }
    }
}

/// One scripted step. (Unknown keys are refused by [`Action`]'s variants: serde cannot
/// refuse them on a struct with a flattened field.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// When, in simulated ms from the start.
    pub at_ms: u64,
    /// What happens.
    #[serde(flatten)]
    pub action: Action,
}

/// What a scripted step does. `device` names a device of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// The device loses connectivity and knows it.
    Offline {
        /// The device.
        device: String,
    },
    /// The device regains connectivity.
    Online {
        /// The device.
        device: String,
    },
    /// The network silently drops the device's traffic (it believes it is online).
    Partition {
        /// The device.
        device: String,
    },
    /// Ends a partition.
    Heal {
        /// The device.
        device: String,
    },
    /// The device's traffic is held (delayed) until `release`.
    Hold {
        /// The device.
        device: String,
    },
    /// Ends a hold.
    Release {
        /// The device.
        device: String,
    },
    /// The device process dies; unsynced writes are lost, `torn_bytes` of an append in
    /// progress may be left on disk.
    Crash {
        /// The device.
        device: String,
        /// Bytes of a half-written record left behind.
        #[serde(default)]
        torn_bytes: usize,
    },
    /// The device process starts again from its store.
    Restart {
        /// The device.
        device: String,
    },
    /// The server process dies (its database survives; answers in transit are lost).
    CrashServer,
    /// The server process starts again.
    RestartServer,
    /// Sets the device's wall-clock offset from true time (skew or a jump).
    Skew {
        /// The device.
        device: String,
        /// Offset, may be negative.
        offset_ms: i64,
    },
    /// The user creates an entity.
    Create {
        /// The device.
        device: String,
        /// Its type.
        entity_type: EntityType,
        /// Its id.
        id: String,
        /// Its fields (parents by `<parent>_id`).
        #[serde(default)]
        fields: Map<String, Value>,
    },
    /// The user changes fields of an entity.
    Update {
        /// The device.
        device: String,
        /// Its type.
        entity_type: EntityType,
        /// Its id.
        id: String,
        /// The changed fields.
        fields: Map<String, Value>,
    },
    /// The user deletes an entity.
    Delete {
        /// The device.
        device: String,
        /// Its type.
        entity_type: EntityType,
        /// Its id.
        id: String,
    },
    /// The user asks for a sync now.
    Sync {
        /// The device.
        device: String,
    },
    /// The user retries every dead-lettered op.
    RetryDead {
        /// The device.
        device: String,
    },
    /// The user resolves every open conflict the device knows.
    Resolve {
        /// The device.
        device: String,
        /// `keep_server` or `keep_client` (`custom` needs an entity, which a step cannot
        /// give).
        resolution: Resolution,
    },
    /// The device's last batch is sent again, verbatim, out of band (a replay).
    Replay {
        /// The device.
        device: String,
    },
    /// The device's next batch has its payload corrupted in transit.
    Corrupt {
        /// The device.
        device: String,
    },
    /// The device's next request is delivered twice.
    Duplicate {
        /// The device.
        device: String,
    },
    /// The device sends a request forged against `victim_device` (another user's device and
    /// entities) with its own token.
    Forge {
        /// The forging device.
        device: String,
        /// A device of another user.
        victim_device: String,
    },
    /// Disk faults on the device: failing fsync, or a full disk of `capacity_bytes`.
    Disk {
        /// The device.
        device: String,
        /// Whether every fsync fails.
        #[serde(default)]
        fail_sync: bool,
        /// Disk size in bytes, if limited.
        #[serde(default)]
        capacity_bytes: Option<usize>,
    },
}

impl Action {
    /// The device the step is about, if any.
    pub fn device(&self) -> Option<&str> {
        match self {
            Action::CrashServer | Action::RestartServer => None,
            Action::Offline { device }
            | Action::Online { device }
            | Action::Partition { device }
            | Action::Heal { device }
            | Action::Hold { device }
            | Action::Release { device }
            | Action::Crash { device, .. }
            | Action::Restart { device }
            | Action::Skew { device, .. }
            | Action::Create { device, .. }
            | Action::Update { device, .. }
            | Action::Delete { device, .. }
            | Action::Sync { device }
            | Action::RetryDead { device }
            | Action::Resolve { device, .. }
            | Action::Replay { device }
            | Action::Corrupt { device }
            | Action::Duplicate { device }
            | Action::Forge { device, .. }
            | Action::Disk { device, .. } => Some(device),
        }
    }

    /// The step's name as written in files (`do = "…"`).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Offline { .. } => "offline",
            Action::Online { .. } => "online",
            Action::Partition { .. } => "partition",
            Action::Heal { .. } => "heal",
            Action::Hold { .. } => "hold",
            Action::Release { .. } => "release",
            Action::Crash { .. } => "crash",
            Action::Restart { .. } => "restart",
            Action::CrashServer => "crash_server",
            Action::RestartServer => "restart_server",
            Action::Skew { .. } => "skew",
            Action::Create { .. } => "create",
            Action::Update { .. } => "update",
            Action::Delete { .. } => "delete",
            Action::Sync { .. } => "sync",
            Action::RetryDead { .. } => "retry_dead",
            Action::Resolve { .. } => "resolve",
            Action::Replay { .. } => "replay",
            Action::Corrupt { .. } => "corrupt",
            Action::Duplicate { .. } => "duplicate",
            Action::Forge { .. } => "forge",
            Action::Disk { .. } => "disk",
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
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            actions_per_device: 20,
            field_trips_per_device: 1,
            field_trip_ms_max: 20_000,
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
    /// `determinism` (docs/simulation.md).
    Determinism,
}

impl Checker {
    /// Every checker, in the order verdicts list them.
    pub const ALL: [Checker; 11] = [
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
    /// Checkers to run (default: all eleven).
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

/// The limits of one step's own values, and the edits the client would refuse whatever
/// the state (a create missing its parent reference, an empty update, an out-of-range
/// number): refused here, so a scripted step never vanishes at run time.
fn check_step_values(action: &Action) -> Result<(), String> {
    use rockhound_engine::op::OpKind;
    match action {
        Action::Crash { torn_bytes, .. } if *torn_bytes > TORN_BYTES_MAX => Err(format!(
            "torn_bytes = {torn_bytes} is more than the limit of {TORN_BYTES_MAX}"
        )),
        Action::Skew { offset_ms, .. } if offset_ms.unsigned_abs() > SKEW_MS_MAX => Err(format!(
            "offset_ms = {offset_ms} is beyond the limit of ±{SKEW_MS_MAX} ms"
        )),
        Action::Disk {
            capacity_bytes: Some(bytes),
            ..
        } if *bytes > DISK_BYTES_MAX => Err(format!(
            "capacity_bytes = {bytes} is more than the limit of {DISK_BYTES_MAX}"
        )),
        Action::Create {
            entity_type,
            id,
            fields,
            ..
        } => {
            let mut entity = fields.clone();
            entity.insert("id".to_owned(), Value::String(id.clone()));
            check_edit(OpKind::Create, *entity_type, id, Value::Object(entity))
        }
        Action::Update {
            entity_type,
            id,
            fields,
            ..
        } => check_edit(
            OpKind::Update,
            *entity_type,
            id,
            Value::Object(fields.clone()),
        ),
        Action::Delete { id, .. } => {
            rockhound_engine::ids::check_id("id", id).map_err(|e| e.to_string())
        }
        _ => Ok(()),
    }
}

/// The client's rules for a scripted create or update: the id rule, then the payload rules
/// of an op of `kind`.
fn check_edit(
    kind: rockhound_engine::op::OpKind,
    entity_type: EntityType,
    id: &str,
    payload: Value,
) -> Result<(), String> {
    rockhound_engine::ids::check_id("id", id).map_err(|e| e.to_string())?;
    let entity_id = rockhound_engine::EntityId(id.to_owned());
    rockhound_engine::op::validate_payload(kind, entity_type, &entity_id, &payload)
        .map_err(|e| format!("the client would refuse this {kind}: {e}"))
}

/// Why a spec cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// The key at fault, when known (`sim.tick_ms`, `steps[3]`), so that a file loader can
    /// point at its line.
    pub path: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl SpecError {
    /// An error about the whole spec.
    pub fn new(message: impl Into<String>) -> SpecError {
        SpecError {
            path: None,
            message: message.into(),
        }
    }

    /// An error about one key.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            path: Some(path.into()),
            message: message.into(),
        }
    }
}

impl RunSpec {
    /// Every device with its user, in declaration order.
    pub fn devices(&self) -> Vec<(String, String)> {
        self.users
            .iter()
            .flat_map(|u| u.devices.iter().map(|d| (u.name.clone(), d.clone())))
            .collect()
    }

    /// Checks references and limits: unknown devices, duplicate names, impossible
    /// timelines, bad rates; returns the run's configuration, its planted bugs included.
    pub fn validate(&self) -> Result<SyncConfig, SpecError> {
        let fail = |path: &str, message: String| Err(SpecError::at(path, message));
        if self.users.is_empty() {
            return fail("users", "a scenario needs at least one user".into());
        }
        let devices = self.devices();
        if devices.is_empty() {
            return fail("users", "a scenario needs at least one device".into());
        }
        if devices.len() > DEVICE_COUNT_MAX {
            return fail(
                "users",
                format!(
                    "{} devices, more than the limit of {DEVICE_COUNT_MAX}",
                    devices.len()
                ),
            );
        }
        let mut names = BTreeMap::new();
        for user in &self.users {
            rockhound_engine::ids::check_id("user name", &user.name)
                .map_err(|e| SpecError::new(e.to_string()))?;
            for device in &user.devices {
                rockhound_engine::ids::check_id("device name", device)
                    .map_err(|e| SpecError::new(e.to_string()))?;
                if device == "server" {
                    return fail(
                        "users",
                        "\"server\" is reserved; name the device something else".into(),
                    );
                }
                if names.insert(device.clone(), user.name.clone()).is_some() {
                    return fail("users", format!("device {device:?} is declared twice"));
                }
            }
        }
        let users: std::collections::BTreeSet<&String> =
            self.users.iter().map(|u| &u.name).collect();
        if users.len() != self.users.len() {
            return fail("users", "a user is declared twice".into());
        }
        let config = self.config.build().map_err(|e| {
            // Errors about one key start with it (`batch_size = 0 is invalid…`).
            let key = e.split(" = ").next().filter(|k| !k.contains(' '));
            SpecError::at(
                key.map_or("config".to_owned(), |k| format!("config.{k}")),
                e,
            )
        })?;
        let sim = &self.sim;
        if sim.tick_ms == 0 || sim.tick_ms > 1_000 {
            return fail(
                "sim.tick_ms",
                format!(
                    "sim.tick_ms = {} is out of range: use 1 to 1000",
                    sim.tick_ms
                ),
            );
        }
        if !(1..=DEVICE_COUNT_MAX).contains(&sim.devices_per_host) {
            return fail(
                "sim.devices_per_host",
                format!(
                    "sim.devices_per_host = {} is out of range: use 1 to {DEVICE_COUNT_MAX}",
                    sim.devices_per_host
                ),
            );
        }
        match sim.safety_ms.checked_add(sim.liveness_ms) {
            Some(total) if total <= RUN_MS_MAX => {}
            total => {
                return fail(
                    "sim.liveness_ms",
                    format!(
                        "safety_ms + liveness_ms = {} ms is longer than the limit of {RUN_MS_MAX} ms",
                        total.map_or_else(|| "more than 2^64".to_owned(), |t| t.to_string())
                    ),
                );
            }
        }
        let run_end = sim.epoch_ms.checked_add(RUN_MS_MAX + SKEW_MS_MAX);
        if !rockhound_engine::Millis(sim.epoch_ms).is_plausible()
            || !run_end.is_some_and(|end| rockhound_engine::Millis(end).is_plausible())
        {
            return fail(
                "sim.epoch_ms",
                format!(
                    "sim.epoch_ms = {} is not a plausible time (the whole run, skew included, must be)",
                    sim.epoch_ms
                ),
            );
        }
        let network = &self.network;
        if network.latency_ms_max > LATENCY_MS_MAX {
            return fail(
                "network.latency_ms_max",
                format!(
                    "network.latency_ms_max = {} is more than the limit of {LATENCY_MS_MAX} ms",
                    network.latency_ms_max
                ),
            );
        }
        if network.latency_ms_min > network.latency_ms_max {
            return fail(
                "network.latency_ms_min",
                format!(
                    "network.latency_ms_min = {} is above latency_ms_max = {}",
                    network.latency_ms_min, network.latency_ms_max
                ),
            );
        }
        for (name, rate) in [
            ("network.loss_rate", network.loss_rate),
            ("network.duplicate_rate", network.duplicate_rate),
            ("network.corrupt_rate", network.corrupt_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return fail(name, format!("{name} = {rate} is not between 0 and 1"));
            }
        }
        self.check_workload_and_faults(devices.len())?;
        if self.steps.len() > STEP_COUNT_MAX {
            return fail(
                "steps",
                format!(
                    "{} steps, more than the limit of {STEP_COUNT_MAX}",
                    self.steps.len()
                ),
            );
        }
        for (index, step) in self.steps.iter().enumerate() {
            let path = format!("steps[{index}]");
            let at = format!(
                "step {} ({} at {} ms)",
                index + 1,
                step.action.name(),
                step.at_ms
            );
            if step.at_ms > sim.safety_ms {
                return fail(
                    &path,
                    format!(
                        "{at} is after the safety phase, which ends at {} ms; user actions and faults belong in it",
                        sim.safety_ms
                    ),
                );
            }
            for device in step.action.device().into_iter().chain(match &step.action {
                Action::Forge { victim_device, .. } => Some(victim_device.as_str()),
                _ => None,
            }) {
                if !names.contains_key(device) {
                    return fail(&path, format!("{at} names unknown device {device:?}"));
                }
            }
            if let Action::Forge {
                device,
                victim_device,
            } = &step.action
            {
                if names[device] == names[victim_device] {
                    return fail(
                        &path,
                        format!("{at}: {device} and {victim_device} belong to the same user"),
                    );
                }
            }
            if let Err(why) = check_step_values(&step.action) {
                return fail(&path, format!("{at}: {why}"));
            }
            if let Action::Resolve { resolution, .. } = &step.action {
                if *resolution == Resolution::Custom {
                    return fail(
                        &path,
                        format!("{at}: resolution \"custom\" is not keep_server or keep_client"),
                    );
                }
            }
        }
        self.check_timeline(&names)?;
        if let Some(digest) = &self.expect.digest
            && !rockhound_engine::checksum::is_checksum_format(digest)
        {
            return fail(
                "expect.digest",
                format!("expect.digest = {digest:?} is not 64 lowercase hex characters"),
            );
        }
        for value in &self.expect.values {
            rockhound_engine::ids::check_id("expect.values id", &value.id)
                .map_err(|e| SpecError::new(e.to_string()))?;
        }
        // The run's bugs travel with its configuration, into every start of the server and
        // of each device.
        let mut config = config;
        config.planted = self.planted;
        Ok(config)
    }

    /// The limits of the random workload and the fault mix: every count, duration and
    /// rate has one, so that no line of a file can make a run expand without bound.
    fn check_workload_and_faults(&self, device_count: usize) -> Result<(), SpecError> {
        let over = |key: &str, value: String, limit: String| {
            Err(SpecError::at(
                key,
                format!("{key} = {value} is more than the limit of {limit}"),
            ))
        };
        if let Some(workload) = &self.workload {
            if workload.actions_per_device > ACTIONS_PER_DEVICE_MAX {
                return over(
                    "workload.actions_per_device",
                    workload.actions_per_device.to_string(),
                    ACTIONS_PER_DEVICE_MAX.to_string(),
                );
            }
            let total = workload.actions_per_device.saturating_mul(device_count);
            if total > WORKLOAD_ACTION_COUNT_MAX {
                return Err(SpecError::at(
                    "workload.actions_per_device",
                    format!(
                        "workload.actions_per_device = {} over {device_count} devices is {total} actions, more than the limit of {WORKLOAD_ACTION_COUNT_MAX}",
                        workload.actions_per_device
                    ),
                ));
            }
            if workload.field_trips_per_device > FIELD_TRIPS_PER_DEVICE_MAX {
                return over(
                    "workload.field_trips_per_device",
                    workload.field_trips_per_device.to_string(),
                    FIELD_TRIPS_PER_DEVICE_MAX.to_string(),
                );
            }
            if workload.field_trip_ms_max > RUN_MS_MAX {
                return over(
                    "workload.field_trip_ms_max",
                    workload.field_trip_ms_max.to_string(),
                    format!("{RUN_MS_MAX} ms"),
                );
            }
        }
        let Some(faults) = &self.faults else {
            return Ok(());
        };
        for (key, count) in [
            ("faults.device_crashes", faults.device_crashes),
            ("faults.server_crashes", faults.server_crashes),
            ("faults.partitions", faults.partitions),
            ("faults.holds", faults.holds),
            ("faults.disk_faults", faults.disk_faults),
        ] {
            if count > FAULT_COUNT_MAX {
                return over(key, count.to_string(), FAULT_COUNT_MAX.to_string());
            }
        }
        if faults.outage_ms_max > RUN_MS_MAX {
            return over(
                "faults.outage_ms_max",
                faults.outage_ms_max.to_string(),
                format!("{RUN_MS_MAX} ms"),
            );
        }
        if faults.skew_ms_max > SKEW_MS_MAX {
            return over(
                "faults.skew_ms_max",
                faults.skew_ms_max.to_string(),
                format!("{SKEW_MS_MAX} ms"),
            );
        }
        for (key, rate) in [
            ("faults.loss_rate", faults.loss_rate),
            ("faults.duplicate_rate", faults.duplicate_rate),
            ("faults.corrupt_rate", faults.corrupt_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SpecError::at(
                    key,
                    format!("{key} = {rate} is not between 0 and 1"),
                ));
            }
        }
        Ok(())
    }

    /// Steps in the order they run: by `at_ms`, then file order.
    pub fn steps_in_order(&self) -> Vec<(usize, &Step)> {
        let mut steps: Vec<(usize, &Step)> = self.steps.iter().enumerate().collect();
        steps.sort_by_key(|(index, step)| (step.at_ms, *index));
        steps
    }

    /// Refuses timelines that cannot happen: a restart with no crash before it, a heal with
    /// no partition, a release with no hold; and, when every entity comes from the steps (no
    /// random workload), an update, delete, parent reference or expected value naming an
    /// entity that no earlier step of the same user creates.
    fn check_timeline(&self, names: &BTreeMap<String, String>) -> Result<(), SpecError> {
        use std::collections::BTreeSet;
        let mut crashed = BTreeSet::new();
        let mut partitioned = BTreeSet::new();
        let mut held = BTreeSet::new();
        let mut server_crashed = false;
        let mut created: BTreeSet<(&str, EntityType, &str)> = BTreeSet::new();
        let check_entities = self.workload.is_none();
        for (index, step) in self.steps_in_order() {
            let path = format!("steps[{index}]");
            let at = format!(
                "step {} ({} at {} ms)",
                index + 1,
                step.action.name(),
                step.at_ms
            );
            let fail = |why: String| Err(SpecError::at(&path, format!("{at}: {why}")));
            let user = step.action.device().map_or("", |d| names[d].as_str());
            match &step.action {
                Action::Crash { device, .. } => {
                    crashed.insert(device);
                }
                Action::Restart { device } if !crashed.contains(device) => {
                    return fail(format!("{device} restarts but never crashed before"));
                }
                Action::Partition { device } => {
                    partitioned.insert(device);
                }
                Action::Heal { device } if !partitioned.contains(device) => {
                    return fail(format!("{device} heals but was never partitioned before"));
                }
                Action::Hold { device } => {
                    held.insert(device);
                }
                Action::Release { device } if !held.contains(device) => {
                    return fail(format!("{device} is released but was never held before"));
                }
                Action::CrashServer => server_crashed = true,
                Action::RestartServer if !server_crashed => {
                    return fail("the server restarts but never crashed before".into());
                }
                Action::Create {
                    entity_type,
                    id,
                    fields,
                    ..
                } if check_entities => {
                    for parent in entity_type.parents() {
                        let Some(parent_id) = fields
                            .get(&parent.reference_field())
                            .and_then(|v| v.as_str())
                        else {
                            continue;
                        };
                        if !created.contains(&(user, *parent, parent_id)) {
                            return fail(format!(
                                "{} {parent_id:?} is not created by an earlier step of {user}",
                                parent.reference_field()
                            ));
                        }
                    }
                    created.insert((user, *entity_type, id));
                }
                Action::Update {
                    entity_type, id, ..
                }
                | Action::Delete {
                    entity_type, id, ..
                } if check_entities && !created.contains(&(user, *entity_type, id)) => {
                    return fail(format!(
                        "{entity_type} {id:?} is not created by an earlier step of {user}"
                    ));
                }
                _ => {}
            }
        }
        if check_entities {
            for (index, value) in self.expect.values.iter().enumerate() {
                if !created
                    .iter()
                    .any(|(_, t, id)| *t == value.entity_type && *id == value.id)
                {
                    return Err(SpecError::at(
                        "expect.values",
                        format!(
                            "expected value {}: {} {:?} is not created by any step",
                            index + 1,
                            value.entity_type,
                            value.id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
