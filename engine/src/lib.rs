//! The Rockhound sync engine: everything an offline-first client and its server agree on,
//! as plain data and pure functions.
//!
//! Nothing in this crate reads a clock, a socket, a disk or a global random number generator:
//! time (`now`), randomness (an [`rand::RngCore`]) and storage come in as arguments. The
//! simulation (`rockhound-sim`) and the real I/O (`rockhound-io`) do the I/O around it.
//!
//! Read the modules in this order: [`time`] and [`ids`] (the vocabulary), [`entity`] (the
//! catalogue of the eleven entity types), [`op`] (the operation on the wire and its validation),
//! [`checksum`] (RFC 8785 canonical JSON and SHA-256), [`delta`] (RFC 7396 merge patches),
//! [`backoff`] (the retry schedule), [`ordering`] (readiness and batch order), [`conflict`]
//! (the six strategies) and [`config`] (`SyncConfig` and its presets). Then the two sides:
//! [`server`] and [`client`]. [`planted`] lists the bugs negative tests plant; [`testing`] holds
//! the in-memory queue store and the store conformance suite, apart from production code.

pub mod backoff;
pub mod checksum;
pub mod client;
pub mod config;
pub mod conflict;
pub mod coverage;
pub mod delta;
pub mod entity;
pub mod ids;
pub mod op;
pub mod ordering;
pub mod planted;
pub mod schema;
pub mod server;
pub mod strategy;
pub mod testing;
pub mod time;

pub use config::SyncConfig;
pub use entity::{Catalogue, EntityType, Priority};
pub use ids::{BatchId, DeviceId, EntityId, IdempotencyKey, OpId, UserId};
pub use op::{Batch, Op, OpError, OpKind};
pub use time::Millis;
