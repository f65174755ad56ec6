//! The six conflict strategies by name: what an entity type's configuration says and the
//! wire carries. The decisions themselves are in [`crate::conflict`]; this file is apart so
//! that the entity catalogue can name a strategy without importing the conflict logic (and,
//! through it, ops).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How the server decides a conflict for one entity type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The client's change is applied over the server's state.
    ClientWins,
    /// The server's state stands; the client adopts it.
    ServerWins,
    /// The later device timestamp wins the whole write; ties go to the greater device id.
    LatestTimestamp,
    /// Fields changed only by the client apply; fields changed on both sides go to the later
    /// device timestamp, field by field.
    FieldLevel,
    /// Like `field_level`, but arrays changed on both sides become their set union.
    Merge,
    /// A conflict record holds both versions until a person resolves it.
    Manual,
}

impl Strategy {
    /// Every strategy.
    pub const ALL: [Strategy; 6] = [
        Strategy::ClientWins,
        Strategy::ServerWins,
        Strategy::LatestTimestamp,
        Strategy::FieldLevel,
        Strategy::Merge,
        Strategy::Manual,
    ];

    /// The snake_case name used in configuration and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::ClientWins => "client_wins",
            Strategy::ServerWins => "server_wins",
            Strategy::LatestTimestamp => "latest_timestamp",
            Strategy::FieldLevel => "field_level",
            Strategy::Merge => "merge",
            Strategy::Manual => "manual",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no strategy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown conflict strategy {name:?}; expected one of client_wins, server_wins, \
     latest_timestamp, field_level, merge, manual"
)]
pub struct StrategyError {
    /// The rejected name.
    pub name: String,
}

impl FromStr for Strategy {
    type Err = StrategyError;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| StrategyError {
                name: name.to_owned(),
            })
    }
}
