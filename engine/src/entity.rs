//! The entity catalogue: the eleven entity types, their upload priority, their parents and
//! their default conflict strategy, as one table.
//!
//! Parents are part of the data model and fixed; priority and strategy are defaults that a
//! [`Catalogue`] can override per deployment or per scenario.

use crate::strategy::Strategy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Upload priority, 0 (critical) to 4 (background). Lower uploads first, but never before
/// an operation it depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

impl Priority {
    /// Deletes and user-initiated blocking operations.
    pub const CRITICAL: Priority = Priority(0);
    /// Field sessions, finds, captures.
    pub const HIGH: Priority = Priority(1);
    /// Specimens, storage, collections.
    pub const NORMAL: Priority = Priority(2);
    /// Tags, exports.
    pub const LOW: Priority = Priority(3);
    /// Analytics cache.
    pub const BACKGROUND: Priority = Priority(4);

    /// The priority with number `value`, if it is in 0..=4.
    pub fn new(value: u8) -> Result<Priority, PriorityError> {
        if value <= Priority::BACKGROUND.0 {
            Ok(Priority(value))
        } else {
            Err(PriorityError { value })
        }
    }

    /// The priority as its number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Priority {
    type Error = PriorityError;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Priority::new(value)
    }
}

impl From<Priority> for u8 {
    fn from(priority: Priority) -> u8 {
        priority.0
    }
}

/// A priority number outside 0..=4.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("priority {value} is out of range: use 0 (critical) to 4 (background)")]
pub struct PriorityError {
    /// The rejected number.
    pub value: u8,
}

/// The eleven entity types of the Rockhound data model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String", into = "&'static str")]
pub enum EntityType {
    /// A day out collecting.
    FieldSession,
    /// A find logged during a field session.
    FindLog,
    /// A photo/scan session during a field session.
    CaptureSession,
    /// An unprocessed capture.
    RawCapture,
    /// A processed capture.
    ProcessedCapture,
    /// A catalogued specimen.
    Specimen,
    /// Where specimens are stored.
    StorageLocation,
    /// A named collection of specimens.
    CollectionGroup,
    /// A tag.
    Tag,
    /// An export of a collection group.
    Export,
    /// Cached analytics.
    AnalyticsCache,
}

/// A string that names no entity type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown entity type {name:?}; expected one of {}",
    EntityType::names()
)]
pub struct EntityTypeError {
    /// The rejected name.
    pub name: String,
}

impl EntityType {
    /// Every entity type, in catalogue order.
    pub const ALL: [EntityType; 11] = [
        EntityType::FieldSession,
        EntityType::FindLog,
        EntityType::CaptureSession,
        EntityType::RawCapture,
        EntityType::ProcessedCapture,
        EntityType::Specimen,
        EntityType::StorageLocation,
        EntityType::CollectionGroup,
        EntityType::Tag,
        EntityType::Export,
        EntityType::AnalyticsCache,
    ];

    /// The snake_case name used on the wire and in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::FieldSession => "field_session",
            EntityType::FindLog => "find_log",
            EntityType::CaptureSession => "capture_session",
            EntityType::RawCapture => "raw_capture",
            EntityType::ProcessedCapture => "processed_capture",
            EntityType::Specimen => "specimen",
            EntityType::StorageLocation => "storage_location",
            EntityType::CollectionGroup => "collection_group",
            EntityType::Tag => "tag",
            EntityType::Export => "export",
            EntityType::AnalyticsCache => "analytics_cache",
        }
    }

    /// The name of the payload field that references an entity of this type as a parent.
    pub fn reference_field(self) -> String {
        format!("{}_id", self.as_str())
    }

    /// The types this type's payload references as parents (`<parent>_id` fields). A create
    /// must reach the server after its parents' creates.
    pub fn parents(self) -> &'static [EntityType] {
        match self {
            EntityType::FindLog | EntityType::CaptureSession => &[EntityType::FieldSession],
            EntityType::RawCapture => &[EntityType::CaptureSession],
            EntityType::ProcessedCapture => &[EntityType::RawCapture],
            EntityType::Specimen => &[EntityType::FindLog, EntityType::ProcessedCapture],
            EntityType::Export => &[EntityType::CollectionGroup],
            EntityType::FieldSession
            | EntityType::StorageLocation
            | EntityType::CollectionGroup
            | EntityType::Tag
            | EntityType::AnalyticsCache => &[],
        }
    }

    /// Whether a create needs *every* parent reference (true) or at least one (false, for a
    /// specimen, which comes from a find log and/or a processed capture).
    pub fn needs_all_parents(self) -> bool {
        self != EntityType::Specimen
    }

    /// The catalogue's default upload priority.
    pub fn default_priority(self) -> Priority {
        match self {
            EntityType::FieldSession
            | EntityType::FindLog
            | EntityType::CaptureSession
            | EntityType::RawCapture
            | EntityType::ProcessedCapture => Priority::HIGH,
            EntityType::Specimen | EntityType::StorageLocation | EntityType::CollectionGroup => {
                Priority::NORMAL
            }
            EntityType::Tag | EntityType::Export => Priority::LOW,
            EntityType::AnalyticsCache => Priority::BACKGROUND,
        }
    }

    /// The catalogue's default conflict strategy.
    pub fn default_strategy(self) -> Strategy {
        match self {
            EntityType::FieldSession | EntityType::CaptureSession => Strategy::LatestTimestamp,
            EntityType::StorageLocation => Strategy::LatestTimestamp,
            EntityType::FindLog | EntityType::Specimen => Strategy::FieldLevel,
            EntityType::CollectionGroup | EntityType::Tag => Strategy::Merge,
            EntityType::RawCapture
            | EntityType::ProcessedCapture
            | EntityType::Export
            | EntityType::AnalyticsCache => Strategy::ServerWins,
        }
    }

    fn names() -> String {
        let names: Vec<&str> = EntityType::ALL.iter().map(|t| t.as_str()).collect();
        names.join(", ")
    }
}

impl FromStr for EntityType {
    type Err = EntityTypeError;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        EntityType::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| EntityTypeError {
                name: name.to_owned(),
            })
    }
}

impl TryFrom<String> for EntityType {
    type Error = EntityTypeError;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl From<EntityType> for &'static str {
    fn from(entity_type: EntityType) -> &'static str {
        entity_type.as_str()
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Priority and strategy of one entity type, after overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityRules {
    /// Upload priority.
    pub priority: Priority,
    /// Conflict strategy on the server.
    pub strategy: Strategy,
}

/// An override of one entity type's rules; absent fields keep the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityOverride {
    /// Replacement upload priority.
    pub priority: Option<Priority>,
    /// Replacement conflict strategy.
    pub strategy: Option<Strategy>,
}

/// The catalogue table: rules for every entity type, defaults plus overrides.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Catalogue {
    overrides: BTreeMap<EntityType, EntityOverride>,
}

impl Catalogue {
    /// The catalogue of this file with `overrides` applied on top.
    pub fn with_overrides(overrides: BTreeMap<EntityType, EntityOverride>) -> Catalogue {
        Catalogue { overrides }
    }

    /// The rules in force for `entity_type`.
    pub fn rules(&self, entity_type: EntityType) -> EntityRules {
        let over = self
            .overrides
            .get(&entity_type)
            .copied()
            .unwrap_or_default();
        EntityRules {
            priority: over.priority.unwrap_or(entity_type.default_priority()),
            strategy: over.strategy.unwrap_or(entity_type.default_strategy()),
        }
    }

    /// Replaces the strategy of one entity type.
    pub fn set_strategy(&mut self, entity_type: EntityType, strategy: Strategy) {
        self.overrides.entry(entity_type).or_default().strategy = Some(strategy);
    }

    /// Replaces the priority of one entity type.
    pub fn set_priority(&mut self, entity_type: EntityType, priority: Priority) {
        self.overrides.entry(entity_type).or_default().priority = Some(priority);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_matches_the_spec_table() {
        let table: Vec<(&str, u8, Vec<&str>, &str)> = EntityType::ALL
            .iter()
            .map(|&t| {
                let parents = t.parents().iter().map(|p| p.as_str()).collect();
                (
                    t.as_str(),
                    t.default_priority().get(),
                    parents,
                    t.default_strategy().as_str(),
                )
            })
            .collect();
        let expected: Vec<(&str, u8, Vec<&str>, &str)> = vec![
            ("field_session", 1, vec![], "latest_timestamp"),
            ("find_log", 1, vec!["field_session"], "field_level"),
            (
                "capture_session",
                1,
                vec!["field_session"],
                "latest_timestamp",
            ),
            ("raw_capture", 1, vec!["capture_session"], "server_wins"),
            ("processed_capture", 1, vec!["raw_capture"], "server_wins"),
            (
                "specimen",
                2,
                vec!["find_log", "processed_capture"],
                "field_level",
            ),
            ("storage_location", 2, vec![], "latest_timestamp"),
            ("collection_group", 2, vec![], "merge"),
            ("tag", 3, vec![], "merge"),
            ("export", 3, vec!["collection_group"], "server_wins"),
            ("analytics_cache", 4, vec![], "server_wins"),
        ];
        assert_eq!(table, expected);
    }

    #[test]
    fn names_round_trip_through_serde() {
        for t in EntityType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EntityType>(&json).unwrap(), t);
        }
    }

    #[test]
    fn an_unknown_entity_type_lists_the_valid_ones() {
        let error = "rock".parse::<EntityType>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown entity type \"rock\"; expected one of field_session, find_log, \
             capture_session, raw_capture, processed_capture, specimen, storage_location, \
             collection_group, tag, export, analytics_cache"
        );
    }

    #[test]
    fn a_priority_above_four_is_refused() {
        assert_eq!(
            Priority::new(5).unwrap_err().to_string(),
            "priority 5 is out of range: use 0 (critical) to 4 (background)"
        );
        assert_eq!(Priority::new(4), Ok(Priority::BACKGROUND));
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let mut catalogue = Catalogue::default();
        catalogue.set_strategy(EntityType::Tag, Strategy::Manual);
        let rules = catalogue.rules(EntityType::Tag);
        assert_eq!(rules.strategy, Strategy::Manual);
        assert_eq!(rules.priority, Priority::LOW);
        assert_eq!(
            catalogue.rules(EntityType::Specimen).strategy,
            Strategy::FieldLevel
        );
    }
}
