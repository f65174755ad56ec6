//! `export`: any seeded run as an editable scenario file. The workload's choices and the
//! drawn faults become explicit steps, the drawn link rates explicit network rates, and the
//! seed is written into the file, so that running the file gives the same trace digest.

use crate::spec::{RunSpec, Step};
use crate::trace::{Trace, TraceEvent};

/// The run `trace` (of `spec` with `seed`) as a spec with explicit steps.
pub fn materialize(spec: &RunSpec, seed: u64, trace: &Trace) -> RunSpec {
    let mut explicit = spec.clone();
    explicit.seed = Some(seed);
    explicit.workload = None;
    explicit.faults = None;
    explicit.steps = trace
        .lines
        .iter()
        .filter_map(|line| match &line.event {
            TraceEvent::Step { action } => Some(Step {
                at_ms: line.t_ms,
                action: action.clone(),
            }),
            _ => None,
        })
        .collect();
    if let Some(TraceEvent::Run {
        link_rates: (loss, duplicate, corrupt),
        ..
    }) = trace.lines.first().map(|l| &l.event)
    {
        explicit.network.loss_rate = *loss;
        explicit.network.duplicate_rate = *duplicate;
        explicit.network.corrupt_rate = *corrupt;
    }
    explicit
}
