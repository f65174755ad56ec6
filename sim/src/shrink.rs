//! `shrink`: delta debugging of a failing run into a small scenario that still fails the
//! same checker. The run is first made explicit ([`crate::export::materialize`]); then, while
//! something can go, it tries dropping devices (with their steps), chunks of steps (ddmin),
//! network fault rates, and the tail of the safety phase, keeping each change that still
//! fails the same way.

use crate::export::materialize;
use crate::runner;
use crate::spec::{Action, RunSpec};

/// Most candidate runs one shrink tries.
pub const SHRINK_RUN_COUNT_MAX: usize = 5_000;

/// Other seeds a candidate is tried with before it is given up.
pub const RESEED_TRY_COUNT: u64 = 4;

/// What shrinking produced.
#[derive(Debug)]
pub struct Shrunk {
    /// The smallest failing spec found.
    pub spec: RunSpec,
    /// The checker it fails.
    pub checker: String,
    /// The seed it fails with (also written in the spec).
    pub seed: u64,
    /// Candidate runs tried.
    pub runs: usize,
}

/// Why shrinking could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShrinkError {
    /// The spec does not run.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// The run holds every checker: nothing to shrink.
    #[error("seed {0} holds every checker; there is nothing to shrink")]
    Passes(u64),
    /// The explicit form of the run no longer fails (a timing the workload relied on).
    #[error("the explicit form of seed {0} no longer fails; shrink the original file instead")]
    NotReproducible(u64),
}

struct Search {
    seed: u64,
    checker: String,
    runs: usize,
}

impl Search {
    /// Whether `spec` still fails `checker` with the current seed or, failing that, with one
    /// of the next [`RESEED_TRY_COUNT`] seeds (which then becomes the current seed). Random
    /// faults make a run chaotic: dropping one step moves every later draw, so a bug that
    /// needs a lost answer may need another seed to meet one again.
    fn fails(&mut self, spec: &RunSpec) -> bool {
        for seed in self.seed..=self.seed.saturating_add(RESEED_TRY_COUNT) {
            if self.runs >= SHRINK_RUN_COUNT_MAX {
                return false;
            }
            self.runs += 1;
            let failed = match runner::run(spec, seed, self.checker == "determinism") {
                Ok(checked) => checked
                    .verdicts()
                    .iter()
                    .any(|v| v.checker == self.checker && !v.violations.is_empty()),
                Err(_) => false,
            };
            if failed {
                self.seed = seed;
                return true;
            }
        }
        false
    }
}

/// Shrinks the failing run of `spec` with `seed`.
pub fn shrink(spec: &RunSpec, seed: u64) -> Result<Shrunk, ShrinkError> {
    let first = runner::run(spec, seed, runner::wants_determinism(spec))?;
    let checker = first
        .verdicts()
        .iter()
        .find(|v| !v.violations.is_empty())
        .map(|v| v.checker.to_owned())
        .ok_or(ShrinkError::Passes(seed))?;
    let mut search = Search {
        seed,
        checker,
        runs: 1,
    };
    let mut current = materialize(spec, seed, &first.outcome.trace);
    current.expect.checkers = vec![search.checker.clone()];
    if !search.fails(&current) {
        return Err(ShrinkError::NotReproducible(seed));
    }
    loop {
        let before = size(&current);
        current = drop_devices(current, &mut search);
        current = drop_steps(current, &mut search);
        current = drop_rates(current, &mut search);
        current = shorten(current, &mut search);
        if size(&current) >= before {
            break;
        }
    }
    current.seed = Some(search.seed);
    current.description = format!(
        "shrunk from seed {seed} of {}: fails {} with seed {}",
        if spec.name.is_empty() {
            "a run"
        } else {
            &spec.name
        },
        search.checker,
        search.seed
    );
    current.expect.violation = Some(search.checker.clone());
    current.expect.checkers.clear();
    Ok(Shrunk {
        spec: current,
        checker: search.checker,
        seed: search.seed,
        runs: search.runs,
    })
}

fn size(spec: &RunSpec) -> (usize, usize, u64) {
    (spec.steps.len(), spec.devices().len(), spec.sim.safety_ms)
}

fn drop_devices(spec: RunSpec, search: &mut Search) -> RunSpec {
    let mut current = spec;
    for (_, device) in current.devices() {
        let mut candidate = current.clone();
        for user in &mut candidate.users {
            user.devices.retain(|d| *d != device);
        }
        candidate.users.retain(|u| !u.devices.is_empty());
        candidate.steps.retain(|s| {
            s.action.device() != Some(device.as_str())
                && !matches!(&s.action, Action::Forge { victim_device, .. } if *victim_device == device)
        });
        if !candidate.users.is_empty() && candidate.validate().is_ok() && search.fails(&candidate) {
            current = candidate;
        }
    }
    current
}

/// ddmin over the steps: remove chunks of halving size while the run still fails.
fn drop_steps(spec: RunSpec, search: &mut Search) -> RunSpec {
    let mut current = spec;
    let mut chunk = current.steps.len().div_ceil(2).max(1);
    loop {
        let mut start = 0;
        while start < current.steps.len() {
            let mut candidate = current.clone();
            let end = (start + chunk).min(candidate.steps.len());
            candidate.steps.drain(start..end);
            if search.fails(&candidate) {
                current = candidate;
            } else {
                start += chunk;
            }
        }
        if chunk == 1 {
            return current;
        }
        chunk = chunk.div_ceil(2);
    }
}

fn drop_rates(spec: RunSpec, search: &mut Search) -> RunSpec {
    let mut current = spec;
    for which in 0..3 {
        let mut candidate = current.clone();
        let rate = match which {
            0 => &mut candidate.network.loss_rate,
            1 => &mut candidate.network.duplicate_rate,
            _ => &mut candidate.network.corrupt_rate,
        };
        if *rate == 0.0 {
            continue;
        }
        *rate = 0.0;
        if search.fails(&candidate) {
            current = candidate;
        }
    }
    current
}

/// Ends the safety phase just after the last step, if that still fails.
fn shorten(spec: RunSpec, search: &mut Search) -> RunSpec {
    let last = spec.steps.iter().map(|s| s.at_ms).max().unwrap_or(0);
    let target = last + 1_000;
    if target >= spec.sim.safety_ms {
        return spec;
    }
    let mut candidate = spec.clone();
    candidate.sim.safety_ms = target;
    if search.fails(&candidate) {
        candidate
    } else {
        spec
    }
}
