//! One simulated run: builds the turmoil world from a [`RunSpec`] and a seed, drives it step
//! by step (applying scheduled user actions and faults between steps), heals everything for
//! the liveness phase, snapshots the end state into the trace and runs the checkers.
//!
//! [`run`] reads as those three parts: `build.rs` (the world: server, devices, hosts and the
//! schedule), `step.rs` (stepping until settled: the safety phase, the heal, the liveness
//! phase until convergence or its bound), `finish.rs` (snapshot, digest, verdicts, counts);
//! `actions.rs` holds what a scheduled step does.
//!
//! The seed is split into named streams in a fixed order: turmoil, workload schedule,
//! faults, link rates, workload choices, then per device (in declaration order) the
//! coordinator's jitter and the link's fault draws. Adding a stream at the end keeps old
//! seeds' meaning for everything before it.

mod actions;
mod build;
mod finish;
mod hostile;
mod step;

use crate::checkers::{self, Verdict};
use crate::device::DeviceCtx;
use crate::spec::{RunSpec, SpecError};
use crate::summary::Summary;
use crate::trace::Trace;
use crate::workload::Planned;
use rand_chacha::ChaCha8Rng;
use rockhound_engine::SyncConfig;
use rockhound_engine::server::{AnyStore, Server};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

/// How often the liveness phase checks whether everything converged, in simulated ms.
pub const CONVERGENCE_CHECK_MS: u64 = 1_000;

/// What one run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The seed.
    pub seed: u64,
    /// The trace.
    pub trace: Trace,
    /// Its SHA-256.
    pub digest: String,
    /// Per checker: held or violated.
    pub verdicts: Vec<Verdict>,
    /// Counts.
    pub summary: Summary,
    /// Expectations of the scenario that did not hold (counts, values).
    pub unmet: Vec<String>,
}

impl RunOutcome {
    /// Whether every checker held and every expectation was met (for a negative scenario:
    /// whether the expected violation was reported).
    pub fn passed(&self, spec: &RunSpec) -> bool {
        checkers::passed(spec, &self.verdicts, &self.unmet)
    }
}

/// Runs `spec` with `seed` and checks it (every checker but `determinism`, which needs a
/// second run: see [`crate::runner`]).
pub fn run(spec: &RunSpec, seed: u64) -> Result<RunOutcome, SpecError> {
    let mut world = World::build(spec, seed)?;
    let settled = world.step_until_settled()?;
    world.finish(settled)
}

/// The simulated devices, by name, with each one's count of workload edits.
struct Devices {
    by_name: BTreeMap<String, DeviceCtx>,
    counters: BTreeMap<String, u64>,
}

/// A built world, between its steps.
struct World<'s> {
    spec: &'s RunSpec,
    seed: u64,
    config: SyncConfig,
    sim: turmoil::Sim<'static>,
    devices: Devices,
    /// The server's database (the sans-IO server), which outlives crashes of its process.
    server: Arc<parking_lot::Mutex<Server<AnyStore>>>,
    server_up: bool,
    /// A crash armed inside the server's next batch.
    server_faults: Arc<parking_lot::Mutex<build::ServerFaults>>,
    /// When the server killed mid-batch starts again.
    server_restart_at_ms: Option<u64>,
    trace: Rc<RefCell<Trace>>,
    /// (at ms, order, what), sorted.
    schedule: Vec<(u64, usize, Planned)>,
    /// The stream the random workload's choices come from.
    choice_rng: ChaCha8Rng,
    /// Coverage points this run has reached (each traced once, when first reached).
    covered: std::collections::BTreeSet<String>,
}
