//! Identifiers: opaque strings (UUIDs in practice) with one shared validity rule.
//!
//! An id is 1 to [`ID_LEN_MAX`] characters from `[A-Za-z0-9_.:-]`. The rule keeps ids safe
//! to print, to put in URLs and to use as map keys, and rejects empty or whitespace ids at
//! the boundary instead of deep inside the engine.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest id accepted, in characters.
pub const ID_LEN_MAX: usize = 128;

/// Why a string is not a valid id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is the empty string.
    #[error("{field} is empty")]
    Empty {
        /// The field that held the id.
        field: &'static str,
    },
    /// The id is longer than [`ID_LEN_MAX`].
    #[error("{field} is {len} characters long, more than the limit of {ID_LEN_MAX}")]
    TooLong {
        /// The field that held the id.
        field: &'static str,
        /// Its length in characters.
        len: usize,
    },
    /// The id holds a character outside `[A-Za-z0-9_.:-]`.
    #[error("{field} {value:?} contains {bad:?}; ids use only letters, digits and _ . : -")]
    BadCharacter {
        /// The field that held the id.
        field: &'static str,
        /// The offending id.
        value: String,
        /// The first character that is not allowed.
        bad: char,
    },
}

/// Checks `value` against the id rule, naming `field` in the error.
pub fn check_id(field: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { field });
    }
    let len = value.chars().count();
    if len > ID_LEN_MAX {
        return Err(IdError::TooLong { field, len });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(IdError::BadCharacter {
            field,
            value: value.to_owned(),
            bad,
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                $name(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                $name(value)
            }
        }
    };
}

id_type!(
    /// One operation; unique per device queue.
    OpId
);
id_type!(
    /// The key the server deduplicates on, per user; stable across retries and restarts.
    IdempotencyKey
);
id_type!(
    /// One entity (a find log, a specimen, …).
    EntityId
);
id_type!(
    /// One user; the server takes it from the bearer token, never from a request body.
    UserId
);
id_type!(
    /// One device of a user.
    DeviceId
);
id_type!(
    /// One batch upload.
    BatchId
);
id_type!(
    /// One recorded conflict on the server.
    ConflictId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shaped_ids_are_accepted() {
        assert_eq!(
            check_id("op_id", "4f1c2a9e-6b7d-4c1e-9f00-0123456789ab"),
            Ok(())
        );
        assert_eq!(check_id("op_id", "dev-1:op.7_x"), Ok(()));
    }

    #[test]
    fn empty_id_names_the_field() {
        let error = check_id("entity_id", "").unwrap_err();
        assert_eq!(error.to_string(), "entity_id is empty");
    }

    #[test]
    fn long_id_reports_its_length() {
        let error = check_id("op_id", &"a".repeat(129)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "op_id is 129 characters long, more than the limit of 128"
        );
    }

    #[test]
    fn whitespace_in_an_id_is_named() {
        let error = check_id("device_id", "my phone").unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"device_id "my phone" contains ' '; ids use only letters, digits and _ . : -"#
        );
    }
}
