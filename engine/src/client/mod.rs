//! The client side of sync: a durable queue of ops and the coordinator that sends them.
//!
//! Read in this order: [`store`] (the storage seam: an append-only log of checksummed
//! frames; its in-memory double with crash semantics is `crate::testing::sim_store`), [`record`]
//! (what the queue writes to the log), [`queue`] (statuses and the readiness index),
//! [`replica`] (the local copy of server state), [`observe`] (events, telemetry and the
//! observer views) and [`coordinator`] (the sans-IO state machine tying them together).

pub mod coordinator;
pub mod observe;
pub mod queue;
pub mod record;
pub mod replica;
pub mod store;

pub use coordinator::{
    ActionError, Coordinator, Edit, EditAction, EnqueueError, OpenError, Request,
};
pub use queue::Status;

#[cfg(test)]
mod tests;
