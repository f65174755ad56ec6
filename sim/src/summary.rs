//! A run's counts ([`Summary`]): what the CLI prints, reports plot and expectations check,
//! counted from the trace alone. Its own module so that the checkers and the world both
//! import it without importing each other.

use crate::trace::{Trace, TraceEvent};
use rockhound_engine::client::Status;
use rockhound_engine::server::wire::{OpStatus, Refusal};

/// Counts over a whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Devices.
    pub devices: usize,
    /// Ops enqueued (acknowledged).
    pub enqueued: u64,
    /// Edits refused at enqueue.
    pub refused: u64,
    /// Batches sent.
    pub batches: u64,
    /// Ops applied.
    pub applied: u64,
    /// Ops that met a conflict.
    pub conflicts: u64,
    /// Ops rejected.
    pub rejected: u64,
    /// Dead-letterings.
    pub dead_lettered: u64,
    /// Ops expired.
    pub expired: u64,
    /// Block events.
    pub blocked: u64,
    /// Failed attempts (each scheduled a retry).
    pub retries: u64,
    /// Duplicate answers.
    pub duplicates: u64,
    /// Forbidden answers (HTTP 403 or ops rejected as forbidden).
    pub forbidden: u64,
    /// Pull pages.
    pub pulls: u64,
    /// Device crashes.
    pub device_crashes: u64,
    /// Requests lost, answers lost, duplicated, corrupted, replayed.
    pub network_faults: u64,
    /// Simulated ms from the start of the liveness phase to convergence, if it converged.
    pub convergence_ms: Option<u64>,
    /// Simulated length of the run, ms.
    pub simulated_ms: u64,
    /// Trace lines.
    pub trace_lines: usize,
}

/// Counts over the trace.
pub fn summarize(trace: &Trace, devices: usize) -> Summary {
    use rockhound_engine::client::observe::Event;
    let mut summary = Summary {
        devices,
        trace_lines: trace.lines.len(),
        ..Summary::default()
    };
    for line in &trace.lines {
        match &line.event {
            TraceEvent::Client { event } => match event {
                Event::Enqueued { .. } => summary.enqueued += 1,
                Event::BatchSent { .. } => summary.batches += 1,
                Event::Pulled { .. } => summary.pulls += 1,
                Event::Op(update) => match update.status {
                    Status::Applied => summary.applied += 1,
                    Status::Conflict => summary.conflicts += 1,
                    Status::Rejected => summary.rejected += 1,
                    Status::Error => summary.dead_lettered += 1,
                    Status::Expired => summary.expired += 1,
                    Status::Blocked => summary.blocked += 1,
                    Status::Pending if update.delay_ms.is_some() => summary.retries += 1,
                    _ => {}
                },
                _ => {}
            },
            TraceEvent::Refused { .. } => summary.refused += 1,
            TraceEvent::Answered { results, .. } => {
                for (_, status, reason) in results {
                    summary.duplicates += u64::from(*status == OpStatus::Duplicate);
                    summary.forbidden += u64::from(*reason == Some(Refusal::Forbidden.into()));
                }
            }
            TraceEvent::HttpError { status, .. } => summary.forbidden += u64::from(*status == 403),
            TraceEvent::Crashed { .. } => summary.device_crashes += 1,
            TraceEvent::Net { .. } => summary.network_faults += 1,
            _ => {}
        }
    }
    summary
}
