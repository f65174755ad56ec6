//! Coverage points: "sometimes" assertions. A point marks a state that some run must reach
//! (a rejection with a given reason, a dead-lettered op retried, a torn tail cut); the
//! simulation records when each is first reached in a run, and `explore --coverage-gate`
//! fails when a declared point is reached by no seed of a range (docs/simulation.md).
//!
//! Marks are write-only observations: nothing in the engine reads them, so they cannot
//! change what a run does. They go to a sink of the current thread, which is off unless a
//! simulated run turned it on ([`start`]); a real server never collects them. Every point
//! is declared once, with its meaning, in [`POINTS`] (the engine's) or in the simulation's
//! registry; a mark of an undeclared name is reported by the simulation.

use std::cell::RefCell;
use std::collections::BTreeSet;

thread_local! {
    static SINK: RefCell<Option<BTreeSet<String>>> = const { RefCell::new(None) };
}

/// Turns this thread's sink on, empty.
pub fn start() {
    SINK.with(|sink| *sink.borrow_mut() = Some(BTreeSet::new()));
}

/// Takes the points marked since the last call (or [`start`]); the sink stays on.
pub fn drain() -> BTreeSet<String> {
    SINK.with(|sink| {
        sink.borrow_mut()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    })
}

/// Turns this thread's sink off and drops what it held.
pub fn stop() {
    SINK.with(|sink| *sink.borrow_mut() = None);
}

/// Marks the point `name` as reached.
pub fn hit(name: &str) {
    SINK.with(|sink| {
        if let Some(points) = sink.borrow_mut().as_mut()
            && !points.contains(name)
        {
            points.insert(name.to_owned());
        }
    });
}

/// Marks the point `name()` as reached, building the name only when a sink is on.
pub fn hit_with(name: impl FnOnce() -> String) {
    let on = SINK.with(|sink| sink.borrow().is_some());
    if on {
        hit(&name());
    }
}

/// A declared point: its name and what reaching it means.
pub type Point = (&'static str, &'static str);

/// The engine's coverage points.
pub const POINTS: &[Point] = &[
    // The server's answers, status × reason (every one the server can give).
    ("server.answer.applied", "an op applied as sent"),
    (
        "server.answer.duplicate",
        "a resent op answered from its idempotency record",
    ),
    (
        "server.answer.conflict.merged",
        "a conflict decided by merging fields",
    ),
    (
        "server.answer.conflict.client_applied",
        "a conflict the client's write won",
    ),
    ("server.answer.conflict.deleted", "a conflict a delete won"),
    (
        "server.answer.conflict.server_kept",
        "a conflict the server's state won",
    ),
    (
        "server.answer.conflict.manual",
        "a conflict left open for a person",
    ),
    (
        "server.answer.applied.already_deleted",
        "a delete that met a tombstone",
    ),
    (
        "server.answer.rejected.checksum_mismatch",
        "a damaged op refused",
    ),
    (
        "server.answer.rejected.invalid_op",
        "an op breaking a rule of its shape refused",
    ),
    (
        "server.answer.rejected.invalid_entity",
        "an op whose field breaks its entity type's schema refused",
    ),
    (
        "server.answer.rejected.expired",
        "an op older than the key retention refused",
    ),
    (
        "server.answer.rejected.forbidden",
        "an op on another user's entity or parent refused",
    ),
    (
        "server.answer.rejected.idempotency_key_reused",
        "a key reused by another op refused",
    ),
    (
        "server.answer.rejected.op_id_reused",
        "an op id reused by another op refused",
    ),
    (
        "server.answer.rejected.not_found",
        "an update or delete of a never-created entity",
    ),
    (
        "server.answer.rejected.entity_deleted",
        "a create of a deleted entity's id refused",
    ),
    (
        "server.answer.rejected.version_ahead",
        "a base version ahead of the server's refused",
    ),
    (
        "server.answer.rejected.parent_deleted",
        "a write under a deleted parent refused",
    ),
    (
        "server.answer.rejected.parent_required",
        "a write dropping a needed parent refused",
    ),
    (
        "server.answer.rejected.has_children",
        "a delete of a parent with live children refused",
    ),
    (
        "server.answer.rejected.entity_too_large",
        "a write growing an entity too large refused",
    ),
    (
        "server.answer.blocked.dependency_missing",
        "an op whose dependency has not arrived",
    ),
    (
        "server.answer.blocked.dependency_failed",
        "an op whose dependency was refused",
    ),
    (
        "server.answer.retry.storage_full",
        "an op put off because the tables are full",
    ),
    // The strategies' decisions, strategy × decision.
    (
        "decide.server_wins.server_kept",
        "server_wins kept the server's state",
    ),
    (
        "decide.client_wins.client_applied",
        "client_wins applied the client's write",
    ),
    (
        "decide.client_wins.deleted",
        "client_wins let a delete win over an update",
    ),
    (
        "decide.client_wins.server_kept",
        "client_wins kept a tombstone over an update",
    ),
    (
        "decide.latest_timestamp.client_applied",
        "latest_timestamp found the client later",
    ),
    (
        "decide.latest_timestamp.server_kept",
        "latest_timestamp found the server later",
    ),
    (
        "decide.latest_timestamp.deleted",
        "latest_timestamp let a later delete win",
    ),
    (
        "decide.field_level.merged",
        "field_level merged field by field",
    ),
    (
        "decide.field_level.server_kept",
        "field_level kept the server's state",
    ),
    (
        "decide.field_level.deleted",
        "field_level let a later delete win",
    ),
    (
        "decide.merge.merged",
        "merge unioned arrays and merged fields",
    ),
    ("decide.merge.server_kept", "merge kept the server's state"),
    (
        "decide.manual.manual",
        "manual left the conflict for a person",
    ),
    // Resolutions by a person.
    (
        "server.resolve.keep_server",
        "a person kept the server's entity",
    ),
    (
        "server.resolve.keep_client",
        "a person applied the client's write",
    ),
    ("server.resolve.custom", "a person gave the entity"),
    (
        "server.resolve.by_strategy",
        "a person had a named strategy decide on the server",
    ),
    (
        "server.batch.checksum_refused",
        "a damaged batch refused whole",
    ),
    (
        "server.cleanup.removed_keys",
        "cleanup removed expired idempotency keys",
    ),
    // The client.
    (
        "client.enqueue.queue_full",
        "an edit refused because the queue is full",
    ),
    ("client.full_batch", "a batch of batch_size ops sent"),
    (
        "client.batch_window_held",
        "ready ops waited for the batching window to fill a batch",
    ),
    (
        "client.retry_after_honoured",
        "a request refused as overloaded waited out the server's Retry-After",
    ),
    (
        "client.dead_lettered",
        "an op dead-lettered after max_retries failed attempts",
    ),
    (
        "client.dead_letter_retried",
        "a dead-lettered op retried by hand",
    ),
    ("client.discarded", "a dead-lettered op discarded by hand"),
    ("client.blocked", "an op blocked behind a failed dependency"),
    (
        "client.released",
        "a blocked op released by a retry of its cause",
    ),
    ("client.expired", "an op expired in the queue past its TTL"),
    (
        "client.pull_paged",
        "a pull answered with more pages to come",
    ),
    (
        "client.damaged_answer_refused",
        "an answer that did not match its checksum was taken as no answer",
    ),
    (
        "client.conflicts_paged",
        "a listing of the user's open conflicts answered with more pages to come",
    ),
    (
        "client.conflict_listed_from_other_device",
        "a device learned of an open conflict another device of its user ran into",
    ),
    (
        "client.conflict_closed_elsewhere",
        "a listing showed an open conflict of the device resolved elsewhere",
    ),
    (
        "client.open_refused",
        "a device start refused by a corrupt or failing store",
    ),
    // The store.
    (
        "store.torn_tail_cut",
        "recovery cut a torn record at the log's end",
    ),
    (
        "store.fsync_failed",
        "an fsync failed and the append was refused",
    ),
    ("store.disk_full", "an append refused for lack of space"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_collected_only_while_the_sink_is_on() {
        hit("client.expired");
        start();
        hit("client.expired");
        hit_with(|| "client.blocked".to_owned());
        hit("client.expired");
        let drained = drain();
        assert_eq!(
            drained.into_iter().collect::<Vec<_>>(),
            vec!["client.blocked".to_owned(), "client.expired".to_owned()]
        );
        assert!(drain().is_empty(), "a drain empties the sink");
        stop();
        hit("client.expired");
        start();
        assert!(drain().is_empty(), "marks while off are dropped");
        stop();
    }

    #[test]
    fn every_point_is_declared_once() {
        let names: BTreeSet<&str> = POINTS.iter().map(|(name, _)| *name).collect();
        assert_eq!(names.len(), POINTS.len(), "a point is declared twice");
    }
}
