//! The trace: every event of a run, in order, with its simulated time and host. Written as
//! JSON Lines (`{"t_ms":…,"host":…,"kind":…,…}`); its SHA-256 is the run's digest. The
//! checkers read the typed events; nothing in a trace depends on the wall clock, so the same
//! seed, scenario and build give the same bytes.

use crate::spec::Action;
use rockhound_engine::client::Status;
use rockhound_engine::client::observe::Event;
use rockhound_engine::ids::{BatchId, ConflictId, EntityId, OpId};
use rockhound_engine::planted::Planted;
use rockhound_engine::server::wire::{HistoryRow, OpStatus, Reason};
use rockhound_engine::strategy::Strategy;
use rockhound_engine::{EntityType, Millis, SyncConfig};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;

/// Most trace lines one run records; a run that needs more is cut short with an error.
pub const TRACE_LINE_COUNT_MAX: usize = 20_000_000;

/// The two phases of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Faults and user actions.
    Safety,
    /// Healed: queues must drain and replicas converge.
    Liveness,
}

/// What the simulated network did to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetFault {
    /// The request never arrived.
    RequestLost,
    /// The request arrived, its answer did not.
    AnswerLost,
    /// The request arrived twice.
    Duplicated,
    /// The request's body was damaged on the way.
    Corrupted,
    /// The answer arrived cut short (half its body).
    AnswerCut,
    /// One bit of the answer was flipped on the way.
    AnswerDamaged,
    /// An earlier batch was sent again, verbatim.
    Replayed,
    /// The device could not reach the server.
    Partitioned,
}

/// The requests a simulated device sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `POST /api/sync/batch`.
    Batch,
    /// `GET /api/sync/changes`.
    Pull,
    /// `POST /api/sync/conflicts/<id>/resolve`.
    Resolve,
    /// `GET /api/sync/conflicts?status=open`.
    Conflicts,
    /// A request forged as another user's device or entity.
    Forge,
    /// A request of a hostile or broken client (`hostile` steps).
    Hostile,
}

/// One line of the trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceLine {
    /// Simulated ms since the start of the run.
    pub t_ms: u64,
    /// `world`, `server` or a device name.
    pub host: String,
    /// What happened.
    #[serde(flatten)]
    pub event: TraceEvent,
}

/// One entity as a replica or the server holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntitySnapshot {
    /// Its type.
    pub entity_type: EntityType,
    /// Its id.
    pub entity_id: EntityId,
    /// Its version.
    pub version: u64,
    /// Whether it is a tombstone.
    pub deleted: bool,
    /// Its fields (`null` for a tombstone).
    pub entity: Value,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TraceEvent {
    /// The run starts.
    Run {
        /// The seed.
        seed: u64,
        /// The scenario's name.
        scenario: String,
        /// `(user, device)` pairs.
        devices: Vec<(String, String)>,
        /// The configuration in force.
        config: Box<SyncConfig>,
        /// Simulated wall-clock time at t = 0.
        epoch_ms: u64,
        /// Planted bugs (negative runs).
        planted: Planted,
        /// The link fault rates every device got: loss, duplication, corruption.
        link_rates: (f64, f64, f64),
    },
    /// A phase begins (`safety`, `liveness`).
    Phase {
        /// Which.
        phase: Phase,
    },
    /// A scripted or generated step is applied.
    Step {
        /// The step.
        action: Action,
    },
    /// A user edit was refused (not enqueued).
    Refused {
        /// The entity's type.
        entity_type: EntityType,
        /// The entity.
        entity_id: EntityId,
        /// Why.
        error: String,
    },
    /// An event of a device's coordinator.
    Client {
        /// The event.
        event: Event,
    },
    /// What the trace needs of a freshly enqueued op beyond the coordinator's event.
    Sealed {
        /// The op.
        op_id: OpId,
        /// SHA-256 of the op's canonical payload.
        payload_sha256: String,
        /// Its wire dependencies.
        depends_on: Vec<OpId>,
    },
    /// The network did something to a request (`request_lost`, `answer_lost`,
    /// `duplicated`, `corrupted`, `replayed`, `partitioned`).
    Net {
        /// What.
        what: NetFault,
        /// Which request.
        request: RequestKind,
    },
    /// A request was answered with an error status.
    HttpError {
        /// Which request.
        request: RequestKind,
        /// The status.
        status: u16,
        /// The body's error code.
        code: String,
        /// The `Retry-After` the answer carried, in ms (an overloaded server's 503), when
        /// the answer went to the coordinator (which must wait it out).
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The server process was killed inside a batch (`crash_server_mid_batch`), after the
    /// commits the step asked for and before its answer.
    ServerCrashed {
        /// Always true (a scheduled `crash_server` is a step).
        mid_batch: bool,
    },
    /// The server decided one op of a batch and committed it (when it happened, before the
    /// answer left): the outcome, the strategy that decided it and the server version it met.
    Decided {
        /// The op's user.
        user: String,
        /// The op.
        op_id: OpId,
        /// Its status.
        status: OpStatus,
        /// Its reason.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<Reason>,
        /// The entity's version afterwards.
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
        /// The server's version the op met (for a write that was decided).
        #[serde(skip_serializing_if = "Option::is_none")]
        met_version: Option<u64>,
        /// The strategy that decided it (for a write that was decided).
        #[serde(skip_serializing_if = "Option::is_none")]
        strategy: Option<Strategy>,
    },
    /// A batch answer, op by op.
    Answered {
        /// The batch it answers, when it went to the device's coordinator (absent for
        /// replayed, forged and hostile requests, whose answers nobody takes).
        #[serde(skip_serializing_if = "Option::is_none")]
        batch_id: Option<BatchId>,
        /// `(op, status, reason)`.
        results: Vec<(OpId, OpStatus, Option<Reason>)>,
        /// For an answer nobody takes: the op ids its request carried (the `isolation`
        /// checker's record of what the device asked about).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sent: Vec<OpId>,
    },
    /// Values a hand-built request or a person writes outside the workload's steps (a
    /// custom resolution, a hostile or forged batch): the `provenance` checker's record
    /// of writes beside the steps' fields.
    Wrote {
        /// `(type, id, fields)` of each write.
        writes: Vec<(EntityType, EntityId, Value)>,
    },
    /// The entities a pull page delivered.
    Pulled {
        /// Their keys.
        keys: Vec<(EntityType, EntityId)>,
    },
    /// The device process died.
    Crashed {
        /// Bytes of a half-written record left on disk.
        torn_bytes: usize,
    },
    /// The device process started again.
    Restarted {
        /// Its incarnation.
        incarnation: u64,
        /// Why it could not start, if it could not.
        error: Option<String>,
    },
    /// Every device drained and matches the server.
    Converged,
    /// An enqueue returned Ok while the op was not on the durable image of the device's
    /// store (the `durability` checker reports it).
    NotDurable {
        /// The op.
        op_id: OpId,
    },
    /// A declared coverage point reached for the first time in this run.
    Covered {
        /// The point's name.
        point: String,
    },
    /// A device at the end of the run.
    FinalDevice {
        /// Its user.
        user: String,
        /// Its queue: `(op, status)`.
        queue: Vec<(OpId, Status)>,
        /// Its replica.
        replica: Vec<EntitySnapshot>,
        /// The conflicts it shows as waiting for a person.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        open_conflicts: Vec<ConflictId>,
    },
    /// A conflict on the server that waited for a person, at the end of the run.
    FinalConflict {
        /// Its user.
        user: String,
        /// The conflict.
        conflict_id: ConflictId,
        /// When it was recorded (server clock).
        created_at_ms: Millis,
        /// When it was resolved (server clock), if it was.
        resolved_at_ms: Option<Millis>,
    },
    /// A row of the server's commit log at the end of the run.
    FinalCommit {
        /// The user.
        user: String,
        /// The row.
        row: Box<HistoryRow>,
    },
    /// An entity on the server at the end of the run.
    FinalEntity {
        /// Its owner.
        owner: String,
        /// The entity.
        snapshot: EntitySnapshot,
    },
    /// The run ends.
    End,
}

impl TraceLine {
    /// The line as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("trace lines always serialize")
    }
}

/// A trace being recorded.
#[derive(Debug, Default)]
pub struct Trace {
    /// Every line so far.
    pub lines: Vec<TraceLine>,
    overflowed: bool,
}

impl Trace {
    /// Appends a line.
    pub fn record(&mut self, t_ms: u64, host: &str, event: TraceEvent) {
        if self.lines.len() >= TRACE_LINE_COUNT_MAX {
            self.overflowed = true;
            return;
        }
        crate::coverage::event_points(&event);
        self.lines.push(TraceLine {
            t_ms,
            host: host.to_owned(),
            event,
        });
    }

    /// Whether lines were dropped at the limit.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Writes the JSON Lines and returns their SHA-256 (lowercase hex).
    pub fn write_jsonl(&self, mut out: impl Write) -> std::io::Result<String> {
        let mut hasher = Sha256::new();
        for line in &self.lines {
            let mut json = line.to_json();
            json.push('\n');
            hasher.update(json.as_bytes());
            out.write_all(json.as_bytes())?;
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect())
    }

    /// The SHA-256 of the JSON Lines, without writing them anywhere.
    pub fn digest(&self) -> String {
        self.write_jsonl(std::io::sink())
            .expect("a sink never fails")
    }
}
