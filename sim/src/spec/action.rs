//! A scenario's scripted steps: what happens at which simulated time.

use rockhound_engine::EntityType;
use rockhound_engine::server::wire::Resolution;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
        /// The device's clock after the reboot, as an offset from true time: a device
        /// whose real-time clock lost its time boots far behind (absent: unchanged).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clock_offset_ms: Option<i64>,
    },
    /// The server process dies (its database survives; answers in transit are lost).
    CrashServer,
    /// The server process starts again.
    RestartServer,
    /// The server process dies inside its next batch: right after it committed
    /// `after_ops` of the batch's ops (all of them when the batch has fewer), before the
    /// rest and before the answer. Its database keeps what was committed; it starts again
    /// two seconds later.
    CrashServerMidBatch {
        /// Ops committed before the crash.
        after_ops: usize,
    },
    /// The server sheds load for `ms`: every request is answered 503 `busy` with
    /// `Retry-After` (the rest of the window, whole seconds rounded up), and changes
    /// nothing. Devices must wait that long before they send again.
    Overload {
        /// How long, 1 ms to 10 minutes.
        ms: u64,
    },
    /// The server runs its cleanup now (expired idempotency keys; old history, conflicts,
    /// batches and metrics), as `rockhound serve` does on its interval.
    CleanupServer,
    /// The server's disk fills: it may hold only `entities` more entities (creates beyond
    /// are answered `retry` with `storage_full`); without `entities`, the room is back. The
    /// liveness phase's heal gives the room back too.
    ServerRoom {
        /// Entities that still fit.
        #[serde(default)]
        entities: Option<usize>,
    },
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
        /// The user waits on it (`useSync`'s blocking flag): it goes at priority 0.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        blocking: bool,
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
        /// The user waits on it (`useSync`'s blocking flag): it goes at priority 0.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        blocking: bool,
    },
    /// The user deletes an entity (always at priority 0).
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
    /// The device's next answer arrives cut short (half its body): the device must take
    /// it as no answer, and what the server did stays done (a resend is a duplicate).
    CutAnswer {
        /// The device.
        device: String,
    },
    /// One bit of the device's next answer is flipped on the way: a server-sealed answer no
    /// longer matches its checksum (or no longer parses), and the device must take it as no
    /// answer rather than act on what it says.
    DamageAnswer {
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
    /// The device behaves as a broken or hostile client for a moment: it sends the
    /// requests of `probe` with its own token, beside its honest traffic.
    Hostile {
        /// The device.
        device: String,
        /// What it sends.
        probe: Probe,
    },
    /// Discards every dead-lettered op of the device (the user gives up on them).
    Discard {
        /// The device.
        device: String,
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
            Action::CrashServer
            | Action::RestartServer
            | Action::CrashServerMidBatch { .. }
            | Action::Overload { .. }
            | Action::CleanupServer
            | Action::ServerRoom { .. } => None,
            Action::Offline { device }
            | Action::Online { device }
            | Action::Partition { device }
            | Action::Heal { device }
            | Action::Hold { device }
            | Action::Release { device }
            | Action::Crash { device, .. }
            | Action::Restart { device, .. }
            | Action::Skew { device, .. }
            | Action::Create { device, .. }
            | Action::Update { device, .. }
            | Action::Delete { device, .. }
            | Action::Sync { device }
            | Action::RetryDead { device }
            | Action::Resolve { device, .. }
            | Action::Replay { device }
            | Action::Corrupt { device }
            | Action::CutAnswer { device }
            | Action::DamageAnswer { device }
            | Action::Duplicate { device }
            | Action::Forge { device, .. }
            | Action::Hostile { device, .. }
            | Action::Discard { device }
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
            Action::CrashServerMidBatch { .. } => "crash_server_mid_batch",
            Action::Overload { .. } => "overload",
            Action::CleanupServer => "cleanup_server",
            Action::ServerRoom { .. } => "server_room",
            Action::Skew { .. } => "skew",
            Action::Create { .. } => "create",
            Action::Update { .. } => "update",
            Action::Delete { .. } => "delete",
            Action::Sync { .. } => "sync",
            Action::RetryDead { .. } => "retry_dead",
            Action::Resolve { .. } => "resolve",
            Action::Replay { .. } => "replay",
            Action::CutAnswer { .. } => "cut_answer",
            Action::DamageAnswer { .. } => "damage_answer",
            Action::Corrupt { .. } => "corrupt",
            Action::Duplicate { .. } => "duplicate",
            Action::Forge { .. } => "forge",
            Action::Hostile { .. } => "hostile",
            Action::Discard { .. } => "discard",
            Action::Disk { .. } => "disk",
        }
    }
}

/// What a hostile step sends (docs/simulation.md, "Hostile clients"). Each probe is a short
/// sequence of requests, sent one after the other; the server must refuse the bad ones with
/// the reason named here, answer the good ones as usual, and stay healthy for everyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// A create, then another op under the same idempotency key
    /// (`idempotency_key_reused`), then the first op's id under another key
    /// (`op_id_reused`).
    ReusedIds,
    /// A copy whose payload was changed after sealing (`checksum_mismatch`), a copy whose
    /// shape breaks the op rules (`invalid_op`), one whose field breaks the entity's schema
    /// (`invalid_entity`), then the good op (applied).
    DamagedCopies,
    /// A create, its delete, then an update of the deleted entity (a conflict with the
    /// delete), its create again (`entity_deleted`) and an update from a version the server
    /// never had (`version_ahead`).
    StaleVersions,
    /// A parent with a child; an update clearing the child's only parent
    /// (`parent_required`); the parent's delete under its live child (`has_children`).
    ParentAbuse,
    /// An entity grown by updates until it passes the size limit (`entity_too_large`).
    Oversized,
    /// An op that depends on an op the server never saw (`blocked`, `dependency_missing`)
    /// and an op created longer ago than the server remembers keys (`expired`).
    Orphans,
    /// Merge arrays of the largest size a payload allows, written twice from one base so
    /// the server must merge them.
    WorstMerge,
    /// A `custom` resolution of the device's open conflicts whose entity breaks the
    /// payload rules (not an object), then an unknown conflict id.
    BadResolution,
}

impl Probe {
    /// Every probe, in declaration order.
    pub const ALL: [Probe; 8] = [
        Probe::ReusedIds,
        Probe::DamagedCopies,
        Probe::StaleVersions,
        Probe::ParentAbuse,
        Probe::Oversized,
        Probe::Orphans,
        Probe::WorstMerge,
        Probe::BadResolution,
    ];
}
