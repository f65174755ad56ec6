//! Bugs a negative test can plant, FoundationDB style: each flag breaks exactly one rule so
//! that the checker guarding that rule can be shown to fire. All are off by default and
//! nothing but the simulation's `[planted]` scenario table switches them on.
//!
//! The flags are grouped by the side they act on ([`ServerBugs`], [`ClientBugs`],
//! [`StoreBugs`], [`SimBugs`]) and travel inside the [`SyncConfig`](crate::SyncConfig)
//! (`config.planted`), so a server or a coordinator started again over the same
//! configuration keeps its bugs without being planted again. A flag lives at the one place
//! its bug would live in real code (the server's idempotency lookup, the coordinator's batch
//! order, the store's fsync), so a planted run exercises the same paths as a healthy one.
//!
//! In a scenario file the table stays flat (`server_ignores_idempotency = true`): the side
//! is the name's first word.

use serde::{Deserialize, Serialize};

/// Bugs of the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerBugs {
    /// The server never looks up idempotency keys (caught by `exactly_once`).
    pub ignores_idempotency: bool,
    /// A pull page also carries one entity of another user (caught by `isolation`).
    pub leaks_other_users: bool,
    /// The server verifies neither batch nor op checksums (caught by `integrity`).
    pub skips_checksums: bool,
    /// `latest_timestamp` compares the server's clock instead of the device's (caught by
    /// `conflict_oracle`).
    pub lww_uses_server_clock: bool,
    /// An op that reuses another op's idempotency key panics the request instead of being
    /// refused (caught by `server_health`, as the 500 the HTTP layer answers).
    pub panics_on_reused_key: bool,
    /// A parent's delete is not refused while live children reference it (caught by
    /// `referential`).
    pub orphans_children: bool,
    /// A create is stored with a field nobody wrote (`reviewed = false`, a default the
    /// server fills in; caught by `provenance`).
    pub invents_fields: bool,
    /// An op's commit is split in two: its write now, its idempotency record held in
    /// memory until the batch's record (lost when the server dies between the two; caught
    /// by `exactly_once` under a crash inside a batch).
    pub splits_commit: bool,
    /// Idempotency keys are looked up without the user: another user's op under the same
    /// key is taken for a resend of this one (caught by `conflict_oracle` and `convergence`
    /// when a forged request borrows the ids a victim's next op will carry).
    pub shares_keys_across_users: bool,
}

/// Bugs of the client coordinator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientBugs {
    /// Each batch goes in reverse order, children before parents (caught by
    /// `dependency_order`).
    pub sends_child_before_parent: bool,
    /// Each batch is ordered by enqueue order alone (caught by `priority_order`).
    pub ignores_priority: bool,
    /// Failed ops are retried at once, without backoff (caught by `backoff`).
    pub retries_immediately: bool,
    /// The replica ignores tombstones in pulled changes (caught by `convergence`).
    pub ignores_pulled_deletes: bool,
    /// Going offline mid-batch leaves its ops in flight forever (caught by `liveness`).
    pub strands_in_flight_offline: bool,
    /// Every failed attempt counts as the first: the delay never grows and ops never
    /// dead-letter, and the coordinator reports it consistently (caught by `backoff`, which
    /// counts the failures itself).
    pub resets_backoff: bool,
    /// A batch is filled with the oldest ready ops, then put in priority order: a newer,
    /// more urgent op waits for a later batch (caught by `priority_order`, across batches).
    pub fills_batches_by_age: bool,
    /// A duplicate answer settles the op without its `sync_operation_success` (caught by
    /// `telemetry`).
    pub telemetry_skips_duplicates: bool,
    /// An overloaded server's `Retry-After` is taken as a plain failure: the batch's ops
    /// count an attempt and go again after their backoff, however long the server asked
    /// to be left alone (caught by `backoff`).
    pub ignores_retry_after: bool,
    /// A conflict resolved on another device stays open here after a listing (caught by
    /// `conflict_visibility`).
    pub keeps_conflicts_resolved_elsewhere: bool,
    /// Answers are taken without checking their checksum: a damaged answer that still
    /// parses is acted on (caught by `convergence` and `provenance` when a bit of a pull
    /// page flips).
    pub ignores_answer_checksum: bool,
}

/// Bugs of the simulated queue store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreBugs {
    /// Appends are acknowledged before they are synced (caught by `no_loss`).
    pub acks_before_fsync: bool,
}

/// Bugs of the simulation itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimBugs {
    /// The workload names entities from a process-wide counter that a second run does not
    /// reset (caught by `determinism`).
    pub nondeterministic_ids: bool,
}

/// The set of planted bugs for one run, by side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PlantedTable", into = "PlantedTable")]
pub struct Planted {
    /// The server's.
    pub server: ServerBugs,
    /// The coordinator's.
    pub client: ClientBugs,
    /// The simulated store's.
    pub store: StoreBugs,
    /// The simulation's.
    pub sim: SimBugs,
}

impl Planted {
    /// Whether no bug is planted.
    pub fn is_none(&self) -> bool {
        *self == Planted::default()
    }
}

/// The `[planted]` table as scenario files and traces write it: one flat flag per bug.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PlantedTable {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    server_ignores_idempotency: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    server_leaks_other_users: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    server_skips_checksums: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    server_lww_uses_server_clock: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    server_panics_on_reused_key: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    server_orphans_children: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    server_invents_fields: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    server_splits_commit: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    server_shares_keys_across_users: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_ignores_answer_checksum: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_sends_child_before_parent: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_ignores_priority: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_retries_immediately: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_ignores_pulled_deletes: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_strands_in_flight_offline: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_resets_backoff: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_fills_batches_by_age: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_telemetry_skips_duplicates: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_ignores_retry_after: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    client_keeps_conflicts_resolved_elsewhere: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    store_acks_before_fsync: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    sim_nondeterministic_ids: bool,
}

impl From<PlantedTable> for Planted {
    fn from(t: PlantedTable) -> Planted {
        Planted {
            server: ServerBugs {
                ignores_idempotency: t.server_ignores_idempotency,
                leaks_other_users: t.server_leaks_other_users,
                skips_checksums: t.server_skips_checksums,
                lww_uses_server_clock: t.server_lww_uses_server_clock,
                panics_on_reused_key: t.server_panics_on_reused_key,
                orphans_children: t.server_orphans_children,
                invents_fields: t.server_invents_fields,
                splits_commit: t.server_splits_commit,
                shares_keys_across_users: t.server_shares_keys_across_users,
            },
            client: ClientBugs {
                sends_child_before_parent: t.client_sends_child_before_parent,
                ignores_priority: t.client_ignores_priority,
                retries_immediately: t.client_retries_immediately,
                ignores_pulled_deletes: t.client_ignores_pulled_deletes,
                strands_in_flight_offline: t.client_strands_in_flight_offline,
                resets_backoff: t.client_resets_backoff,
                fills_batches_by_age: t.client_fills_batches_by_age,
                telemetry_skips_duplicates: t.client_telemetry_skips_duplicates,
                ignores_retry_after: t.client_ignores_retry_after,
                keeps_conflicts_resolved_elsewhere: t.client_keeps_conflicts_resolved_elsewhere,
                ignores_answer_checksum: t.client_ignores_answer_checksum,
            },
            store: StoreBugs {
                acks_before_fsync: t.store_acks_before_fsync,
            },
            sim: SimBugs {
                nondeterministic_ids: t.sim_nondeterministic_ids,
            },
        }
    }
}

impl From<Planted> for PlantedTable {
    fn from(p: Planted) -> PlantedTable {
        PlantedTable {
            server_ignores_idempotency: p.server.ignores_idempotency,
            server_leaks_other_users: p.server.leaks_other_users,
            server_skips_checksums: p.server.skips_checksums,
            server_lww_uses_server_clock: p.server.lww_uses_server_clock,
            server_panics_on_reused_key: p.server.panics_on_reused_key,
            server_orphans_children: p.server.orphans_children,
            server_invents_fields: p.server.invents_fields,
            server_splits_commit: p.server.splits_commit,
            server_shares_keys_across_users: p.server.shares_keys_across_users,
            client_ignores_answer_checksum: p.client.ignores_answer_checksum,
            client_sends_child_before_parent: p.client.sends_child_before_parent,
            client_ignores_priority: p.client.ignores_priority,
            client_retries_immediately: p.client.retries_immediately,
            client_ignores_pulled_deletes: p.client.ignores_pulled_deletes,
            client_strands_in_flight_offline: p.client.strands_in_flight_offline,
            client_resets_backoff: p.client.resets_backoff,
            client_fills_batches_by_age: p.client.fills_batches_by_age,
            client_telemetry_skips_duplicates: p.client.telemetry_skips_duplicates,
            client_ignores_retry_after: p.client.ignores_retry_after,
            client_keeps_conflicts_resolved_elsewhere: p.client.keeps_conflicts_resolved_elsewhere,
            store_acks_before_fsync: p.store.acks_before_fsync,
            sim_nondeterministic_ids: p.sim.nondeterministic_ids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flat_table_round_trips_every_flag_to_its_side() {
        let text = r#"{"server_leaks_other_users":true,"client_ignores_priority":true,"store_acks_before_fsync":true,"sim_nondeterministic_ids":true}"#;
        let planted: Planted = serde_json::from_str(text).unwrap();
        assert!(planted.server.leaks_other_users && !planted.server.skips_checksums);
        assert!(planted.client.ignores_priority && !planted.client.retries_immediately);
        assert!(planted.store.acks_before_fsync && planted.sim.nondeterministic_ids);
        assert_eq!(serde_json::to_string(&planted).unwrap(), text);
        let unknown = serde_json::from_str::<Planted>(r#"{"server_forgets_everything":true}"#);
        assert!(unknown.is_err(), "an unknown bug name is refused");
        assert_eq!(serde_json::to_string(&Planted::default()).unwrap(), "{}");
    }
}
