//! Admission: the checks a batch and its ops pass before anything is decided (size, ids,
//! checksums, the device's owner, parent references), and the answers they give.

use super::tables::ServerStore;
use super::{RequestError, Server};
use crate::entity::EntityType;
use crate::ids::{EntityId, UserId, check_id};
use crate::op::{BATCH_OP_COUNT_MAX, Batch, OpError};
use serde_json::Value;

impl<S: ServerStore> Server<S> {
    /// The checks a batch passes as a whole before any of its ops is processed: op count,
    /// ids, batch checksum ([`check_batch`]). Changes nothing. A device id is the user's
    /// own name for a device, so no batch can claim, or be refused, another user's device.
    pub fn admit_batch(&self, batch: &Batch) -> Result<(), RequestError> {
        check_batch(batch, self.verifies_checksums())
    }

    /// Whether the server verifies checksums (always, unless a negative test planted the
    /// bug that it does not).
    pub fn verifies_checksums(&self) -> bool {
        !self.config.planted.server.skips_checksums
    }

    /// The parent checks every write of fields gets (a create's payload, an update's patch,
    /// a custom resolution's entity): each `<parent>_id` string must name a live entity of
    /// the same user.
    pub(super) fn check_parents(
        &self,
        user: &UserId,
        entity_type: EntityType,
        fields: &serde_json::Map<String, Value>,
    ) -> Result<(), ParentRefusal> {
        let entities = &self.store.tables().entities;
        for parent in entity_type.parents() {
            let Some(Value::String(parent_id)) = fields.get(&parent.reference_field()) else {
                continue;
            };
            match entities.get(&(*parent, EntityId(parent_id.clone()))) {
                None => return Err(ParentRefusal::Missing),
                Some(p) if &p.owner != user => return Err(ParentRefusal::Forbidden),
                Some(p) if p.state.deleted => return Err(ParentRefusal::Deleted),
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The checks of a batch as a whole that need no server state: op count, ids and (when
/// `verify_checksums`) the batch checksum. The HTTP layer runs them before it takes the
/// server's lock, since checksumming a 4 MiB batch takes milliseconds.
pub fn check_batch(batch: &Batch, verify_checksums: bool) -> Result<(), RequestError> {
    if batch.ops.len() > BATCH_OP_COUNT_MAX {
        return Err(RequestError::TooLarge {
            message: format!(
                "batch carries {} ops, more than the limit of {BATCH_OP_COUNT_MAX}",
                batch.ops.len()
            ),
        });
    }
    check_id("batch_id", batch.batch_id.as_str())
        .map_err(|e| RequestError::invalid(e.to_string()))?;
    check_id("device_id", batch.device_id.as_str())
        .map_err(|e| RequestError::invalid(e.to_string()))?;
    if !verify_checksums {
        return Ok(());
    }
    batch.verify_checksum().map_err(|error| match error {
        OpError::ChecksumFormat { .. } => RequestError::invalid(format!("batch {error}")),
        _ => {
            crate::coverage::hit("server.batch.checksum_refused");
            RequestError::ChecksumMismatch {
                message: format!("batch {error}"),
            }
        }
    })
}

/// Why a write's parent references are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ParentRefusal {
    /// A referenced parent does not exist (yet).
    Missing,
    /// A referenced parent belongs to another user.
    Forbidden,
    /// A referenced parent is a tombstone.
    Deleted,
}

/// The answer to a resolution whose entity references a parent it may not.
pub(super) fn parent_request_error(
    refusal: ParentRefusal,
    entity_type: EntityType,
) -> RequestError {
    match refusal {
        ParentRefusal::Missing => RequestError::invalid(format!(
            "custom {entity_type} references a parent that does not exist"
        )),
        ParentRefusal::Forbidden => RequestError::Forbidden {
            message: format!("custom {entity_type} references another user's parent"),
        },
        ParentRefusal::Deleted => {
            RequestError::invalid(format!("custom {entity_type} references a deleted parent"))
        }
    }
}

/// Whether an update's patch clears (sets to `null`) a parent reference the entity needs.
pub(super) fn clears_needed_parent(
    entity_type: EntityType,
    current: &serde_json::Map<String, Value>,
    patch: &serde_json::Map<String, Value>,
) -> bool {
    let clears = entity_type
        .parents()
        .iter()
        .any(|p| patch.get(&p.reference_field()) == Some(&Value::Null));
    if !clears {
        return false;
    }
    let mut after = current.clone();
    for parent in entity_type.parents() {
        let field = parent.reference_field();
        match patch.get(&field) {
            Some(Value::Null) => {
                after.remove(&field);
            }
            Some(value) => {
                after.insert(field, value.clone());
            }
            None => {}
        }
    }
    crate::op::check_parent_presence(entity_type, &after).is_err()
}
