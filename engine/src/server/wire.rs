//! The server's answers on the wire (docs/api.md): per-op results, batch responses, change
//! pages, conflicts, state, history and metrics. Requests (`Op`, `Batch`) live in `op.rs`.

use crate::conflict::ServerEntity;
use crate::entity::EntityType;
use crate::ids::{BatchId, ConflictId, DeviceId, EntityId, IdempotencyKey, OpId};
use crate::op::{ClientReport, OpKind};
use crate::strategy::Strategy;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// The outcome of one op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    /// Applied as sent.
    Applied,
    /// Seen before under the same idempotency key; the original result is returned.
    Duplicate,
    /// A conflict was detected and decided (or recorded for a person); `entity` is the
    /// server's state afterwards.
    Conflict,
    /// Refused for good; `reason` says why. Sending it again changes nothing.
    Rejected,
    /// Waits on a dependency that is not applied; send it again after the dependency.
    Blocked,
    /// Not processed now; send it again after backoff.
    Retry,
}

impl OpStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Applied => "applied",
            OpStatus::Duplicate => "duplicate",
            OpStatus::Conflict => "conflict",
            OpStatus::Rejected => "rejected",
            OpStatus::Blocked => "blocked",
            OpStatus::Retry => "retry",
        }
    }
}

impl fmt::Display for OpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Generates a field-less enum whose wire names are its `snake_case` serde names, with
/// `as_str` and `Display` giving the same name (the trace and messages print it).
macro_rules! wire_names {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $wire:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_names! {
    /// Why an op was refused or put off: the `reason` of a `rejected`, `blocked` or `retry`
    /// result (docs/api.md lists when each is given).
    pub enum Refusal {
        /// The op's checksum does not match its content; nothing of it is stored.
        ChecksumMismatch => "checksum_mismatch",
        /// The op breaks a rule of its shape (ids, payload, fields); nothing of it is stored
        /// when its ids are bad.
        InvalidOp => "invalid_op",
        /// A field breaks its entity type's schema (docs/entities.md): rejected for good.
        InvalidEntity => "invalid_entity",
        /// The op is older than the queue's time to live.
        Expired => "expired",
        /// The op touches another user's entity or device.
        Forbidden => "forbidden",
        /// The idempotency key was already used by a different op.
        IdempotencyKeyReused => "idempotency_key_reused",
        /// The op id was already used by a different op.
        OpIdReused => "op_id_reused",
        /// An update or delete of an entity that was never created.
        NotFound => "not_found",
        /// A create of an id whose entity was deleted.
        EntityDeleted => "entity_deleted",
        /// An update or delete whose base version is ahead of the server's.
        VersionAhead => "version_ahead",
        /// A referenced parent is a tombstone.
        ParentDeleted => "parent_deleted",
        /// The write leaves out or clears a parent reference its type needs.
        ParentRequired => "parent_required",
        /// A delete of a parent that still has live children.
        HasChildren => "has_children",
        /// The entity would grow beyond the size limit.
        EntityTooLarge => "entity_too_large",
        /// (`blocked`) A dependency or parent does not exist yet.
        DependencyMissing => "dependency_missing",
        /// (`blocked`) A dependency was refused for good.
        DependencyFailed => "dependency_failed",
        /// (`retry`) The server's tables are full.
        StorageFull => "storage_full",
    }
}

wire_names! {
    /// What a strategy decided for a conflict: the `reason` of a `conflict` result and the
    /// `decision` of its record.
    pub enum DecisionCode {
        /// The client's and the server's fields were merged (`field_level`, `merge`).
        Merged => "merged",
        /// The client's write applied.
        ClientApplied => "client_applied",
        /// The entity was deleted.
        Deleted => "deleted",
        /// The server's entity stands.
        ServerKept => "server_kept",
        /// A delete met a tombstone: nothing to do.
        AlreadyDeleted => "already_deleted",
        /// Left open for a person to resolve.
        Manual => "manual",
    }
}

wire_names! {
    /// How a conflict was resolved: by its strategy at once, or by a person.
    pub enum ResolvedBy {
        /// Its strategy decided it when it was met.
        Auto => "auto",
        /// A person kept the server's entity.
        KeepServer => "keep_server",
        /// A person applied the client's write.
        KeepClient => "keep_client",
        /// A person gave the entity.
        Custom => "custom",
        /// A person had the `client_wins` strategy decide.
        ClientWins => "client_wins",
        /// A person had the `server_wins` strategy decide.
        ServerWins => "server_wins",
        /// A person had the `latest_timestamp` strategy decide.
        LatestTimestamp => "latest_timestamp",
        /// A person had the `field_level` strategy decide.
        FieldLevel => "field_level",
        /// A person had the `merge` strategy decide.
        Merge => "merge",
    }
}

wire_names! {
    /// What a history row records: an op's kind, or a person's resolution.
    pub enum HistoryAction {
        /// An op created the entity.
        Create => "create",
        /// An op updated it.
        Update => "update",
        /// An op deleted it.
        Delete => "delete",
        /// A person resolved a conflict on it.
        Resolve => "resolve",
    }
}

wire_names! {
    /// The `error` code of an error answer (`{ "error": code, "message": sentence }`):
    /// docs/api.md gives the HTTP status of each.
    pub enum ErrorCode {
        /// The body or a parameter cannot be parsed (400).
        Malformed => "malformed",
        /// A value breaks a rule (400).
        InvalidValue => "invalid_value",
        /// A resolution would grow the entity beyond its limit (400).
        EntityTooLarge => "entity_too_large",
        /// No or an unknown bearer token (401).
        Unauthorized => "unauthorized",
        /// Another user's device, entity or conflict (403).
        Forbidden => "forbidden",
        /// No such endpoint or conflict (404).
        NotFound => "not_found",
        /// The method is not served on this path (405).
        MethodNotAllowed => "method_not_allowed",
        /// The body did not arrive in time (408).
        Timeout => "timeout",
        /// The conflict is already resolved (409).
        AlreadyResolved => "already_resolved",
        /// Over a size or count limit (413).
        TooLarge => "too_large",
        /// The request line is too long (414).
        UriTooLong => "uri_too_long",
        /// The batch checksum does not match (422).
        ChecksumMismatch => "checksum_mismatch",
        /// The headers are too large (431).
        HeadersTooLarge => "headers_too_large",
        /// An engine step failed; nothing of it was applied (500).
        Internal => "internal",
        /// Too many open connections, or the server sheds load (503).
        Busy => "busy",
        /// The server's database could not make the change durable; nothing of it was
        /// applied (503).
        StorageUnavailable => "storage_unavailable",
    }
}

/// The `reason` a result or a history row carries: a refusal, a conflict's decision, or (on
/// a resolution's history row) how it was resolved. On the wire it is the bare code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reason {
    /// Refused or put off.
    Refused(Refusal),
    /// A conflict's decision.
    Decided(DecisionCode),
    /// A resolution.
    Resolved(ResolvedBy),
}

impl Reason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Refused(code) => code.as_str(),
            Reason::Decided(code) => code.as_str(),
            Reason::Resolved(code) => code.as_str(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Refusal> for Reason {
    fn from(code: Refusal) -> Reason {
        Reason::Refused(code)
    }
}

impl From<DecisionCode> for Reason {
    fn from(code: DecisionCode) -> Reason {
        Reason::Decided(code)
    }
}

impl From<ResolvedBy> for Reason {
    fn from(code: ResolvedBy) -> Reason {
        Reason::Resolved(code)
    }
}

impl From<OpKind> for HistoryAction {
    fn from(kind: OpKind) -> HistoryAction {
        match kind {
            OpKind::Create => HistoryAction::Create,
            OpKind::Update => HistoryAction::Update,
            OpKind::Delete => HistoryAction::Delete,
        }
    }
}

impl From<Resolution> for ResolvedBy {
    fn from(resolution: Resolution) -> ResolvedBy {
        match resolution {
            Resolution::KeepServer => ResolvedBy::KeepServer,
            Resolution::KeepClient => ResolvedBy::KeepClient,
            Resolution::Custom => ResolvedBy::Custom,
            Resolution::ClientWins => ResolvedBy::ClientWins,
            Resolution::ServerWins => ResolvedBy::ServerWins,
            Resolution::LatestTimestamp => ResolvedBy::LatestTimestamp,
            Resolution::FieldLevel => ResolvedBy::FieldLevel,
            Resolution::Merge => ResolvedBy::Merge,
        }
    }
}

/// The status a history row records: the op's status, or `resolved` for a person's
/// resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryStatus {
    /// A person resolved a conflict.
    Resolved,
    /// An op's status.
    #[serde(untagged)]
    Op(OpStatus),
}

impl HistoryStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryStatus::Resolved => "resolved",
            HistoryStatus::Op(status) => status.as_str(),
        }
    }
}

impl fmt::Display for HistoryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one op in a batch response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpResult {
    /// The op this answers.
    pub op_id: OpId,
    /// What happened.
    pub status: OpStatus,
    /// The entity's server version afterwards, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The server's entity afterwards, where the client needs it (conflicts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<Value>,
    /// The entity is a tombstone afterwards (a conflict the server's delete won). Sent only
    /// when true: JSON cannot tell an absent `entity` from a `null` one, so a deleted entity
    /// is said here, as `deleted` says it in the changes feed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The recorded conflict, for status `conflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_id: Option<ConflictId>,
    /// A stable machine-readable code for rejected, blocked, retry and conflict outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// The answer to `POST /api/sync/batch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchResponse {
    /// The batch this answers.
    pub batch_id: BatchId,
    /// The server's clock when it answered.
    pub server_time_ms: Millis,
    /// One result per op, in request order.
    pub results: Vec<OpResult>,
    /// SHA-256 of the answer's JCS encoding without this member (docs/api.md): set by this
    /// server on every answer, checked by the client when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// One change in a pull page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// Position in the server's commit order; pass the last one back as `since`.
    pub cursor: u64,
    /// The entity's type.
    pub entity_type: EntityType,
    /// The entity's id.
    pub entity_id: EntityId,
    /// Its version.
    pub version: u64,
    /// A tombstone.
    pub deleted: bool,
    /// Its fields (the last live state for a tombstone).
    pub entity: Value,
}

/// The answer to `GET /api/sync/changes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesPage {
    /// Changes after `since`, in commit order; each entity at most once, at its latest state.
    pub changes: Vec<Change>,
    /// The cursor to ask from next.
    pub next_cursor: u64,
    /// Whether more changes wait beyond this page.
    pub has_more: bool,
    /// How many of the user's conflicts wait for a person (lets a device skip listing
    /// them when it shows none and none wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_conflicts: Option<u64>,
    /// SHA-256 of the answer's JCS encoding without this member (docs/api.md): set by this
    /// server on every answer, checked by the client when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// The answer to `GET /api/sync/conflicts`: one page of the user's conflicts, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflictsPage {
    /// Conflicts created after `since` (and of the status asked for), in creation order.
    pub conflicts: Vec<ConflictRecord>,
    /// The cursor to ask from next.
    pub next_cursor: u64,
    /// Whether more conflicts wait beyond this page.
    pub has_more: bool,
    /// SHA-256 of the answer's JCS encoding without this member (docs/api.md): set by this
    /// server on every answer, checked by the client when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// Whether a conflict awaits a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictStatus {
    /// Waiting for a manual resolution.
    Open,
    /// Decided, automatically or by a person.
    Resolved,
}

/// A row of `sync_conflicts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// Its id.
    pub conflict_id: ConflictId,
    /// The op that met the conflict.
    pub op_id: OpId,
    /// The device that sent it.
    pub device_id: DeviceId,
    /// The entity's type.
    pub entity_type: EntityType,
    /// The entity's id.
    pub entity_id: EntityId,
    /// The op's kind.
    pub kind: OpKind,
    /// The conflict case (`update_update`, `delete_update`, …).
    pub case: crate::conflict::Case,
    /// The strategy that decided it.
    pub strategy: Strategy,
    /// The decision code (`client_applied`, `server_kept`, `deleted`, `manual`, …).
    pub decision: DecisionCode,
    /// The server's version when the conflict was met.
    pub server_version: u64,
    /// The server's entity when the conflict was met.
    pub server_entity: Value,
    /// The client's payload.
    pub client_payload: Value,
    /// The client's wall-clock timestamp.
    pub client_timestamp_ms: Millis,
    /// Open or resolved.
    pub status: ConflictStatus,
    /// How it was resolved (`auto`, `keep_server`, `keep_client`, `custom`, or the strategy
    /// a person named).
    pub resolution: Option<ResolvedBy>,
    /// When it was recorded (server clock).
    pub created_at_ms: Millis,
    /// When it was resolved (server clock).
    pub resolved_at_ms: Option<Millis>,
}

/// How a person resolves a manual conflict: keep one side, give the entity, or let a
/// named strategy decide on the server (the seed's `resolveWithStrategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The server's state stands.
    KeepServer,
    /// The client's write applies (for an update over a tombstone: the entity comes back).
    KeepClient,
    /// The given entity becomes the server's state.
    Custom,
    /// The `client_wins` strategy decides, against the entity as it is now.
    ClientWins,
    /// The `server_wins` strategy decides (the server's state stands).
    ServerWins,
    /// The `latest_timestamp` strategy decides.
    LatestTimestamp,
    /// The `field_level` strategy decides.
    FieldLevel,
    /// The `merge` strategy decides.
    Merge,
}

impl Resolution {
    /// The strategy a named-strategy resolution runs; `None` for keep_server, keep_client
    /// and custom.
    pub fn strategy(self) -> Option<Strategy> {
        match self {
            Resolution::KeepServer | Resolution::KeepClient | Resolution::Custom => None,
            Resolution::ClientWins => Some(Strategy::ClientWins),
            Resolution::ServerWins => Some(Strategy::ServerWins),
            Resolution::LatestTimestamp => Some(Strategy::LatestTimestamp),
            Resolution::FieldLevel => Some(Strategy::FieldLevel),
            Resolution::Merge => Some(Strategy::Merge),
        }
    }
}

/// The body of `POST /api/sync/conflicts/<id>/resolve`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// Which version wins.
    pub resolution: Resolution,
    /// The entity, for `custom` only.
    #[serde(default)]
    pub entity: Option<Value>,
}

/// A row of `sync_history`: one committed step, the audit trail and the commit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// Commit sequence number (shared with change cursors).
    pub seq: u64,
    /// Server clock.
    pub at_ms: Millis,
    /// The device that caused it.
    pub device_id: DeviceId,
    /// The op, when the step answered an op.
    pub op_id: Option<OpId>,
    /// Its idempotency key.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The entity's type.
    pub entity_type: EntityType,
    /// The entity's id.
    pub entity_id: EntityId,
    /// What was asked: `create`, `update`, `delete` or `resolve`.
    pub action: HistoryAction,
    /// The op's status, or `resolved` for a manual resolution.
    pub status: HistoryStatus,
    /// The reason code, if any.
    pub reason: Option<Reason>,
    /// The entity's version afterwards, if it exists.
    pub version: Option<u64>,
    /// For an op: the time from its batch's arrival to its commit, in ms (server clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What the step wrote, for the reference replay; absent when it changed nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<LoggedWrite>,
}

/// A row of `sync_state`: one device of one user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The device.
    pub device_id: DeviceId,
    /// Batches received from it.
    pub batch_count: u64,
    /// Ops received from it (duplicates included).
    pub op_count: u64,
    /// When its last batch arrived (server clock).
    pub last_batch_at_ms: Option<Millis>,
    /// The last cursor it pulled to.
    pub pull_cursor: u64,
    /// When it last pulled (server clock).
    pub last_pull_at_ms: Option<Millis>,
    /// What it reported about itself with its last batch (queue by status, round trip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ClientReport>,
    /// Its network quality, from that report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_quality: Option<NetworkQuality>,
}

/// Aggregated counts of one window of `sync_metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsWindow {
    /// Start of the window (server clock, aligned to the window length).
    pub window_start_ms: Millis,
    /// Batches received.
    pub batches: u64,
    /// Ops received.
    pub ops: u64,
    /// Ops per status.
    pub applied: u64,
    /// Duplicates answered.
    pub duplicates: u64,
    /// Conflicts met.
    pub conflicts: u64,
    /// Ops rejected.
    pub rejected: u64,
    /// Ops blocked.
    pub blocked: u64,
    /// Ops asked to retry.
    pub retries: u64,
    /// Sum of the batches' decision times (arrival to answer), in ms.
    #[serde(default)]
    pub decide_ms_total: u64,
    /// Longest decision time of a batch, in ms.
    #[serde(default)]
    pub decide_ms_max: u64,
    /// Batches whose device reported a round trip.
    #[serde(default)]
    pub round_trips: u64,
    /// Sum of the round trips devices reported, in ms (their clocks).
    #[serde(default)]
    pub round_trip_ms_total: u64,
    /// Longest round trip a device reported, in ms.
    #[serde(default)]
    pub round_trip_ms_max: u64,
}

/// How a device's requests have been going, from its last report: `good` when its last
/// request was answered within 500 ms and none failed since, `poor` when three or more
/// failed in a row or the round trip took 2 s or more, `fair` in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkQuality {
    /// Answered quickly, nothing failing.
    Good,
    /// Slow answers or a failure or two.
    Fair,
    /// Very slow answers or failing requests.
    Poor,
}

impl NetworkQuality {
    /// The quality a report shows.
    pub fn of(report: &ClientReport) -> NetworkQuality {
        let round_trip_ms = report.round_trip_ms.unwrap_or(0);
        if report.failed_requests >= 3 || round_trip_ms >= 2_000 {
            NetworkQuality::Poor
        } else if report.failed_requests >= 1 || round_trip_ms >= 500 {
            NetworkQuality::Fair
        } else {
            NetworkQuality::Good
        }
    }
}

/// The answer to `GET /api/sync/state`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateResponse {
    /// The device's row.
    pub device: DeviceState,
    /// The user's latest commit cursor.
    pub latest_cursor: u64,
    /// Open conflicts of the user.
    pub open_conflicts: u64,
    /// Live (not deleted) entities of the user.
    pub entity_count: u64,
}

/// What one history row wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LoggedWrite {
    /// An op's write, decided under `strategy` when it met a conflict.
    Op {
        /// Its kind.
        kind: OpKind,
        /// Its base version.
        base_version: u64,
        /// Its payload.
        payload: Value,
        /// Its device timestamp.
        client_timestamp_ms: Millis,
        /// The strategy in force for its entity type.
        strategy: Option<Strategy>,
    },
    /// A manual resolution: the entity as it became.
    Resolution {
        /// The resulting entity.
        entity: ServerEntity,
    },
}
