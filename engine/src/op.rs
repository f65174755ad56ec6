//! The operation and the batch as they travel on the wire (docs/api.md), with their
//! checksums and the validation every op passes on its way in.
//!
//! An [`Op`] is exactly the JSON object of the wire format: unknown members are refused, and
//! every member is part of the checksum. Client-side bookkeeping (status, attempt count,
//! expiry) lives in the client's queue record, not here.

use crate::checksum::{checksum_of_owned, is_checksum_format, is_plainly_canonical, sha256_hex};
use crate::entity::{EntityType, Priority};
use crate::ids::{BatchId, DeviceId, EntityId, IdError, IdempotencyKey, OpId, check_id};
use crate::time::{Millis, TIMESTAMP_MS_MAX, TIMESTAMP_MS_MIN};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;

/// The most ops one op may depend on.
pub const DEPENDS_ON_COUNT_MAX: usize = 64;
/// The largest payload accepted, in bytes of its canonical JSON encoding.
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// The deepest nesting of arrays and objects accepted in a payload.
pub const PAYLOAD_DEPTH_MAX: usize = 16;
/// The most ops one batch may carry on the wire; `SyncConfig::batch_size` stays below it.
pub const BATCH_OP_COUNT_MAX: usize = 500;
/// Integers beyond ±2^53 are not exact in IEEE doubles, so JCS clients in JavaScript would
/// checksum them differently; payloads may not carry them.
pub const PAYLOAD_INTEGER_ABS_MAX: u64 = 1 << 53;

/// What an op does to its entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Creates the entity; the payload is the whole entity.
    Create,
    /// Changes fields; the payload is an RFC 7396 merge patch of the changed fields.
    Update,
    /// Deletes the entity (a tombstone on the server); the payload is `null`.
    Delete,
}

impl OpKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Create => "create",
            OpKind::Update => "update",
            OpKind::Delete => "delete",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One operation, exactly as on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Op {
    /// Unique id of this op.
    pub op_id: OpId,
    /// Deduplication key, stable across retries and restarts.
    pub idempotency_key: IdempotencyKey,
    /// Type of the entity the op touches.
    pub entity_type: EntityType,
    /// Id of the entity the op touches.
    pub entity_id: EntityId,
    /// Create, update or delete.
    pub kind: OpKind,
    /// The server version the device last saw; 0 for a create.
    pub base_version: u64,
    /// The whole entity (create), the changed fields (update) or `null` (delete).
    pub payload: Value,
    /// The device's wall clock when the user acted (may be skewed), ms since the epoch.
    pub client_timestamp_ms: Millis,
    /// Upload priority, 0 (critical) to 4 (background).
    pub priority: Priority,
    /// Ops (by id) that must be applied before this one.
    pub depends_on: Vec<OpId>,
    /// When the op entered the device's queue, device clock, ms since the epoch.
    pub created_at_ms: Millis,
    /// Lowercase hex SHA-256 of the JCS encoding of this object without `checksum`.
    pub checksum: String,
}

/// A batch upload, exactly as on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Unique id of this batch.
    pub batch_id: BatchId,
    /// The sending device.
    pub device_id: DeviceId,
    /// The ops, in the order the server must apply them.
    pub ops: Vec<Op>,
    /// What the device reports about itself (optional; part of the checksum when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ClientReport>,
    /// Lowercase hex SHA-256 of the JCS encoding of this object without `checksum`.
    pub checksum: String,
}

/// What a device can honestly say about itself with each batch: its queue by status when
/// the batch left, and how its requests have been going (round trips on its own
/// monotonic clock). The server keeps the last one per device in `sync_state`, derives the
/// network quality from it, and sums round trips into `sync_metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientReport {
    /// Ops waiting to go (pending, the batch's own included).
    pub pending: u64,
    /// Ops blocked behind a failed op.
    pub blocked: u64,
    /// Ops failed for good or dead-lettered (rejected, expired, error).
    pub failed: u64,
    /// The round trip of the device's last answered request, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trip_ms: Option<u64>,
    /// Requests that failed (timeout, transport, server error) since the last answered one.
    #[serde(default)]
    pub failed_requests: u64,
}

/// Why an operation (or batch) is not acceptable. Messages name the offending value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The JSON could not be read as an op: syntax, an unknown member, a wrong type, an
    /// unknown entity type or an out-of-range priority.
    #[error("malformed operation: {message}")]
    Malformed {
        /// serde's description, with line and column.
        message: String,
    },
    /// An id field breaks the id rule.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A timestamp lies outside 2000-01-01..=2100-01-01.
    #[error(
        "{field} {value} is outside the accepted range {}..={} (2000-01-01 to 2100-01-01)",
        TIMESTAMP_MS_MIN.0,
        TIMESTAMP_MS_MAX.0
    )]
    Timestamp {
        /// The timestamp field.
        field: &'static str,
        /// Its value in ms.
        value: u64,
    },
    /// A create with a base version other than 0.
    #[error("a create must have base_version 0, not {base_version}")]
    CreateBaseVersion {
        /// The claimed base version.
        base_version: u64,
    },
    /// An update or delete with base version 0 (it never saw the entity).
    #[error("an {kind} needs the base_version the device last saw (at least 1), not 0")]
    MissingBaseVersion {
        /// Update or delete.
        kind: OpKind,
    },
    /// The payload does not have the shape its kind requires.
    #[error("{kind} payload {problem}")]
    Payload {
        /// The op's kind.
        kind: OpKind,
        /// What is wrong with it.
        problem: PayloadProblem,
    },
    /// A field breaks its entity type's schema (`crate::schema`, docs/entities.md).
    #[error("{entity_type} {problem}")]
    Schema {
        /// The entity's type.
        entity_type: EntityType,
        /// The field and what it must be.
        problem: crate::schema::SchemaProblem,
    },
    /// A child create does not reference its parent.
    #[error("{entity_type} create must reference its parent in {field}")]
    MissingParent {
        /// The child's type.
        entity_type: EntityType,
        /// The missing `<parent>_id` field(s).
        field: String,
    },
    /// The op lists itself as a dependency.
    #[error("op {op_id} depends on itself")]
    SelfDependency {
        /// The op.
        op_id: OpId,
    },
    /// A dependency is listed twice.
    #[error("op {op_id} lists dependency {dependency} twice")]
    DuplicateDependency {
        /// The op.
        op_id: OpId,
        /// The repeated dependency.
        dependency: OpId,
    },
    /// More dependencies than [`DEPENDS_ON_COUNT_MAX`].
    #[error("op {op_id} has {count} dependencies, more than the limit of {DEPENDS_ON_COUNT_MAX}")]
    TooManyDependencies {
        /// The op.
        op_id: OpId,
        /// How many it lists.
        count: usize,
    },
    /// The checksum member is not 64 lowercase hex characters.
    #[error("checksum {value:?} is not 64 lowercase hex characters")]
    ChecksumFormat {
        /// The claimed checksum.
        value: String,
    },
    /// The checksum does not match the content.
    #[error("checksum mismatch: the content hashes to {computed}, the sender claimed {claimed}")]
    ChecksumMismatch {
        /// What the content hashes to.
        computed: String,
        /// What the sender claimed.
        claimed: String,
    },
}

/// What is wrong with a payload's shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadProblem {
    /// Create and update payloads are JSON objects.
    #[error("must be a JSON object, not {found}")]
    NotObject {
        /// The JSON type found.
        found: &'static str,
    },
    /// Delete payloads are `null`.
    #[error("must be null, not {found}")]
    NotNull {
        /// The JSON type found.
        found: &'static str,
    },
    /// A create's `id` must equal the op's `entity_id`.
    #[error("id {payload_id:?} does not match entity_id {entity_id:?}")]
    IdMismatch {
        /// The payload's `id` (or `<missing>`).
        payload_id: String,
        /// The op's entity id.
        entity_id: String,
    },
    /// An update's patch must change something.
    #[error("changes no field")]
    Empty,
    /// An update may not change the entity's id.
    #[error("may not change the entity's id")]
    ChangesId,
    /// A `<parent>_id` reference that is not an id string.
    #[error("field {field} must be an id string")]
    BadReference {
        /// The reference field.
        field: String,
    },
    /// An integer beyond ±2^53.
    #[error(
        "holds the number {number} at {path}, beyond ±2^53, which JSON clients cannot checksum exactly"
    )]
    InexactNumber {
        /// JSON-pointer-like path.
        path: String,
        /// The number as written.
        number: String,
    },
    /// Nested deeper than [`PAYLOAD_DEPTH_MAX`].
    #[error("is nested deeper than {PAYLOAD_DEPTH_MAX} levels")]
    TooDeep,
    /// Larger than [`PAYLOAD_BYTES_MAX`].
    #[error("is {bytes} bytes, more than the limit of {PAYLOAD_BYTES_MAX}")]
    TooLarge {
        /// Its canonical size.
        bytes: usize,
    },
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Op {
    /// Reads one op from JSON text, refusing unknown members.
    pub fn from_json(text: &str) -> Result<Op, OpError> {
        serde_json::from_str(text).map_err(|error| OpError::Malformed {
            message: error.to_string(),
        })
    }

    /// The checksum this op's content hashes to (whatever `checksum` currently holds).
    pub fn compute_checksum(&self) -> String {
        let mut canonical = Vec::with_capacity(512);
        if self.write_canonical(&mut canonical, false) {
            return sha256_hex(&canonical);
        }
        checksum_of_owned(serde_json::to_value(self).expect("an Op always serializes"))
    }

    /// Appends the RFC 8785 encoding of the op (with or without its `checksum` member)
    /// straight from the struct, members in sorted order, without building a JSON tree:
    /// the checksum is the hot path of enqueue and of the server. Returns false, having
    /// written garbage, when a number is beyond what a double holds exactly or the payload
    /// needs the general canonicalizer; the caller then takes the general path. A test
    /// checks the two agree on arbitrary ops.
    fn write_canonical(&self, out: &mut Vec<u8>, with_checksum: bool) -> bool {
        let exact = |n: u64| n <= PAYLOAD_INTEGER_ABS_MAX;
        if !(exact(self.base_version)
            && exact(self.client_timestamp_ms.0)
            && exact(self.created_at_ms.0)
            && is_plainly_canonical(&self.payload))
        {
            return false;
        }
        let mut members = Members::new(out);
        members.put("base_version", &self.base_version);
        if with_checksum {
            members.put("checksum", &self.checksum);
        }
        members.put("client_timestamp_ms", &self.client_timestamp_ms);
        members.put("created_at_ms", &self.created_at_ms);
        members.put("depends_on", &self.depends_on);
        members.put("entity_id", &self.entity_id);
        members.put("entity_type", &self.entity_type);
        members.put("idempotency_key", &self.idempotency_key);
        members.put("kind", &self.kind);
        members.put("op_id", &self.op_id);
        members.put("payload", &self.payload);
        members.put("priority", &self.priority);
        members.end();
        true
    }

    /// Sets `checksum` from the content and returns the sealed op.
    #[must_use]
    pub fn sealed(mut self) -> Op {
        self.checksum = self.compute_checksum();
        self
    }

    /// Checks the claimed checksum against the content.
    pub fn verify_checksum(&self) -> Result<(), OpError> {
        verify_claimed(&self.checksum, || self.compute_checksum())
    }

    /// Every check of an op except the checksum match: ids, timestamps, base version,
    /// payload shape per kind, parent references and dependencies.
    pub fn validate(&self) -> Result<(), OpError> {
        self.validate_ids()?;
        for (field, value) in [
            ("client_timestamp_ms", self.client_timestamp_ms),
            ("created_at_ms", self.created_at_ms),
        ] {
            if !value.is_plausible() {
                return Err(OpError::Timestamp {
                    field,
                    value: value.0,
                });
            }
        }
        match (self.kind, self.base_version) {
            (OpKind::Create, 0) | (OpKind::Update | OpKind::Delete, 1..) => {}
            (OpKind::Create, base_version) => {
                return Err(OpError::CreateBaseVersion { base_version });
            }
            (kind, 0) => return Err(OpError::MissingBaseVersion { kind }),
        }
        self.validate_payload()?;
        self.validate_dependencies()?;
        if !is_checksum_format(&self.checksum) {
            return Err(OpError::ChecksumFormat {
                value: self.checksum.clone(),
            });
        }
        Ok(())
    }

    /// The id rule for the ids that name the op and its entity: the server checks them
    /// before it stores anything under them.
    pub fn validate_ids(&self) -> Result<(), OpError> {
        check_id("op_id", self.op_id.as_str())?;
        check_id("idempotency_key", self.idempotency_key.as_str())?;
        check_id("entity_id", self.entity_id.as_str())?;
        Ok(())
    }

    fn validate_payload(&self) -> Result<(), OpError> {
        check_payload(self.kind, self.entity_type, &self.entity_id, &self.payload)
    }

    fn validate_dependencies(&self) -> Result<(), OpError> {
        if self.depends_on.len() > DEPENDS_ON_COUNT_MAX {
            return Err(OpError::TooManyDependencies {
                op_id: self.op_id.clone(),
                count: self.depends_on.len(),
            });
        }
        let mut seen = BTreeSet::new();
        for dependency in &self.depends_on {
            check_id("depends_on", dependency.as_str())?;
            if *dependency == self.op_id {
                return Err(OpError::SelfDependency {
                    op_id: self.op_id.clone(),
                });
            }
            if !seen.insert(dependency) {
                return Err(OpError::DuplicateDependency {
                    op_id: self.op_id.clone(),
                    dependency: dependency.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The payload rules of an op of `kind` on `entity_type`: shape per kind, integer range,
/// depth, size, reference fields, a create's id and parents.
fn check_payload(
    kind: OpKind,
    entity_type: EntityType,
    entity_id: &EntityId,
    payload: &Value,
) -> Result<(), OpError> {
    let payload_error = |problem: PayloadProblem| OpError::Payload { kind, problem };
    let fields = match (kind, payload) {
        (OpKind::Delete, Value::Null) => return Ok(()),
        (OpKind::Delete, other) => {
            return Err(payload_error(PayloadProblem::NotNull {
                found: json_type(other),
            }));
        }
        (_, Value::Object(fields)) => fields,
        (_, other) => {
            return Err(payload_error(PayloadProblem::NotObject {
                found: json_type(other),
            }));
        }
    };
    check_number_range(payload, &mut String::new(), 0).map_err(payload_error)?;
    let bytes = crate::checksum::canonical_json(payload).len();
    if bytes > PAYLOAD_BYTES_MAX {
        return Err(payload_error(PayloadProblem::TooLarge { bytes }));
    }
    for parent in entity_type.parents() {
        let field = parent.reference_field();
        match fields.get(&field) {
            None => {}
            Some(Value::String(id)) => check_id("parent reference", id)?,
            // An update may clear an optional reference (a specimen's second parent).
            Some(Value::Null) if kind == OpKind::Update => {}
            Some(_) => return Err(payload_error(PayloadProblem::BadReference { field })),
        }
    }
    crate::schema::check(entity_type, fields).map_err(|problem| OpError::Schema {
        entity_type,
        problem,
    })?;
    match kind {
        OpKind::Create => {
            let payload_id = fields.get("id").and_then(Value::as_str);
            if payload_id != Some(entity_id.as_str()) {
                return Err(payload_error(PayloadProblem::IdMismatch {
                    payload_id: payload_id.unwrap_or("<missing>").to_owned(),
                    entity_id: entity_id.0.clone(),
                }));
            }
            check_parent_presence(entity_type, fields)
        }
        OpKind::Update if fields.is_empty() => Err(payload_error(PayloadProblem::Empty)),
        OpKind::Update if fields.contains_key("id") => {
            Err(payload_error(PayloadProblem::ChangesId))
        }
        OpKind::Update | OpKind::Delete => Ok(()),
    }
}

/// Whether `fields` reference the parents their type needs: all of them, or at least one
/// (a specimen's find log or processed capture).
pub fn check_parent_presence(
    entity_type: EntityType,
    fields: &serde_json::Map<String, Value>,
) -> Result<(), OpError> {
    let parents = entity_type.parents();
    let present = |parent: &EntityType| fields.contains_key(&parent.reference_field());
    let satisfied = if entity_type.needs_all_parents() {
        parents.iter().all(present)
    } else {
        parents.iter().any(present)
    };
    if satisfied {
        return Ok(());
    }
    let names: Vec<String> = parents
        .iter()
        .filter(|p| !present(p))
        .map(|p| p.reference_field())
        .collect();
    let field = if entity_type.needs_all_parents() {
        names.join(" and ")
    } else {
        format!("at least one of {}", names.join(" or "))
    };
    Err(OpError::MissingParent { entity_type, field })
}

/// The payload rules of an op of `kind` on `entity_type` (what [`Op::validate`] checks of
/// its payload), for callers that check an edit before an op exists.
pub fn validate_payload(
    kind: OpKind,
    entity_type: EntityType,
    entity_id: &EntityId,
    payload: &Value,
) -> Result<(), OpError> {
    check_payload(kind, entity_type, entity_id, payload)
}

/// The payload rules for a whole entity written without an op (a `custom` resolution): the
/// rules of a create's payload.
pub fn validate_entity(
    entity_type: EntityType,
    entity_id: &EntityId,
    entity: &Value,
) -> Result<(), OpError> {
    check_payload(OpKind::Create, entity_type, entity_id, entity)
}

fn check_number_range(
    value: &Value,
    path: &mut String,
    depth: usize,
) -> Result<(), PayloadProblem> {
    if depth > PAYLOAD_DEPTH_MAX {
        return Err(PayloadProblem::TooDeep);
    }
    match value {
        Value::Number(number) => {
            let exact = match (number.as_u64(), number.as_i64()) {
                (Some(n), _) => n <= PAYLOAD_INTEGER_ABS_MAX,
                (None, Some(n)) => n.unsigned_abs() <= PAYLOAD_INTEGER_ABS_MAX,
                (None, None) => true,
            };
            if !exact {
                return Err(PayloadProblem::InexactNumber {
                    path: if path.is_empty() {
                        "/".to_owned()
                    } else {
                        path.clone()
                    },
                    number: number.to_string(),
                });
            }
            Ok(())
        }
        Value::Array(items) => items.iter().enumerate().try_for_each(|(index, item)| {
            let len = path.len();
            path.push_str(&format!("/{index}"));
            let result = check_number_range(item, path, depth + 1);
            path.truncate(len);
            result
        }),
        Value::Object(fields) => fields.iter().try_for_each(|(key, item)| {
            let len = path.len();
            path.push('/');
            path.push_str(key);
            let result = check_number_range(item, path, depth + 1);
            path.truncate(len);
            result
        }),
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
    }
}

impl Batch {
    /// Reads one batch from JSON text, refusing unknown members.
    pub fn from_json(text: &str) -> Result<Batch, OpError> {
        serde_json::from_str(text).map_err(|error| OpError::Malformed {
            message: error.to_string(),
        })
    }

    /// Builds a batch of `ops` and seals it with its checksum.
    pub fn new(batch_id: BatchId, device_id: DeviceId, ops: Vec<Op>) -> Batch {
        Batch::reporting(batch_id, device_id, ops, None)
    }

    /// Builds a batch of `ops` carrying the device's `report`, sealed with its checksum.
    pub fn reporting(
        batch_id: BatchId,
        device_id: DeviceId,
        ops: Vec<Op>,
        report: Option<ClientReport>,
    ) -> Batch {
        let mut batch = Batch {
            batch_id,
            device_id,
            ops,
            report,
            checksum: String::new(),
        };
        batch.checksum = batch.compute_checksum();
        batch
    }

    /// The checksum this batch's content hashes to.
    pub fn compute_checksum(&self) -> String {
        let mut canonical = Vec::with_capacity(600 * self.ops.len() + 128);
        if self.write_canonical(&mut canonical) {
            return sha256_hex(&canonical);
        }
        checksum_of_owned(serde_json::to_value(self).expect("a Batch always serializes"))
    }

    /// Appends the RFC 8785 encoding of the batch without its `checksum` member, as
    /// [`Op::write_canonical`] does for an op.
    fn write_canonical(&self, out: &mut Vec<u8>) -> bool {
        let mut members = Members::new(out);
        members.put("batch_id", &self.batch_id);
        members.put("device_id", &self.device_id);
        members.key("ops");
        members.out.push(b'[');
        for (index, op) in self.ops.iter().enumerate() {
            if index > 0 {
                members.out.push(b',');
            }
            if !op.write_canonical(members.out, true) {
                return false;
            }
        }
        members.out.push(b']');
        if let Some(report) = &self.report {
            let value = serde_json::to_value(report).expect("a report always serializes");
            members.key("report");
            members
                .out
                .extend_from_slice(&crate::checksum::canonical_json(&value));
        }
        members.end();
        true
    }

    /// Checks the claimed batch checksum against the content (not the ops' own checksums).
    pub fn verify_checksum(&self) -> Result<(), OpError> {
        verify_claimed(&self.checksum, || self.compute_checksum())
    }
}

/// Compares a claimed checksum with the one the content hashes to (computed only when the
/// claim is well-formed).
fn verify_claimed(claimed: &str, compute: impl FnOnce() -> String) -> Result<(), OpError> {
    if !is_checksum_format(claimed) {
        return Err(OpError::ChecksumFormat {
            value: claimed.to_owned(),
        });
    }
    let computed = compute();
    if computed != claimed {
        return Err(OpError::ChecksumMismatch {
            computed,
            claimed: claimed.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// Writes the members of a JSON object in the order given (the caller gives them sorted).
/// Keys are ASCII constants; values are written by serde_json, whose compact encoding of
/// strings, integers and plainly canonical JSON is the JCS encoding.
struct Members<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Members<'a> {
    fn new(out: &'a mut Vec<u8>) -> Members<'a> {
        out.push(b'{');
        Members { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn put(&mut self, key: &str, value: &impl Serialize) {
        self.key(key);
        serde_json::to_writer(&mut *self.out, value).expect("writing to a Vec cannot fail");
    }

    fn end(self) {
        self.out.push(b'}');
    }
}
