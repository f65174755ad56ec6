//! The client side of sync. So far: the durable queue's storage seam ([`store`]) and its
//! crash-simulating implementation ([`sim_store`]); the coordinator state machine builds on
//! them (issue 3).

pub mod sim_store;
pub mod store;
