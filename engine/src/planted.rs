//! Bugs a negative test can plant, FoundationDB style: each flag breaks exactly one rule so
//! that the checker guarding that rule can be shown to fire. All are off by default and
//! nothing but the simulation's `[planted]` scenario table switches them on.
//!
//! A flag lives at the one place its bug would live in real code (the server's idempotency
//! lookup, the coordinator's batch order, the store's fsync), so a planted run exercises the
//! same paths as a healthy one.

use serde::{Deserialize, Serialize};

/// The set of planted bugs for one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Planted {
    /// The server never looks up idempotency keys (caught by `exactly_once`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub server_ignores_idempotency: bool,
    /// A pull page also carries one entity of another user (caught by `isolation`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub server_leaks_other_users: bool,
    /// The server verifies neither batch nor op checksums (caught by `integrity`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub server_skips_checksums: bool,
    /// `latest_timestamp` compares the server's clock instead of the device's (caught by
    /// `conflict_oracle`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub server_lww_uses_server_clock: bool,
    /// The coordinator sends each batch in reverse order, children before parents (caught by
    /// `dependency_order`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_sends_child_before_parent: bool,
    /// The coordinator orders each batch by enqueue order alone (caught by `priority_order`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_ignores_priority: bool,
    /// The coordinator retries at once, without backoff (caught by `backoff`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_retries_immediately: bool,
    /// The replica ignores tombstones in pulled changes (caught by `convergence`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_ignores_pulled_deletes: bool,
    /// Going offline mid-batch leaves its ops in flight forever (caught by `liveness`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub client_strands_in_flight_offline: bool,
    /// The simulated store acknowledges appends before they are synced (caught by
    /// `no_loss`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub store_acks_before_fsync: bool,
    /// The workload names entities from a process-wide counter that a second run does not
    /// reset (caught by `determinism`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sim_nondeterministic_ids: bool,
}

impl Planted {
    /// Whether no bug is planted.
    pub fn is_none(&self) -> bool {
        *self == Planted::default()
    }
}
