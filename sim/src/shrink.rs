//! `shrink`: delta debugging of a failing run into a small scenario that still fails the
//! same checker. The run is first made explicit ([`crate::export::materialize`]); then, while
//! something can go, it tries dropping devices (with their steps), chunks of steps (ddmin),
//! network fault rates, halving offline, partition, hold and crash windows, and the tail of
//! the safety phase, keeping each change that still fails the same way.

use crate::export::materialize;
use crate::runner;
use crate::spec::{Action, Checker, RunSpec};

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
    pub checker: Checker,
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
    checker: Checker,
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
            let failed = match runner::run(spec, seed, self.checker == Checker::Determinism) {
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
        .map(|v| v.checker)
        .ok_or(ShrinkError::Passes(seed))?;
    let mut search = Search {
        seed,
        checker,
        runs: 1,
    };
    let mut current = materialize(spec, seed, &first.outcome.trace);
    current.expect.checkers = vec![search.checker];
    if !search.fails(&current) {
        return Err(ShrinkError::NotReproducible(seed));
    }
    loop {
        let before = size(&current);
        current = drop_devices(current, &mut search);
        current = drop_steps(current, &mut search);
        current = drop_rates(current, &mut search);
        current = shorten_windows(current, &mut search);
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
    current.expect.violation = Some(search.checker);
    current.expect.checkers.clear();
    Ok(Shrunk {
        spec: current,
        checker: search.checker,
        seed: search.seed,
        runs: search.runs,
    })
}

/// What shrinking minimizes, in order: steps, devices, the total length of the fault and
/// offline windows, the safety phase.
fn size(spec: &RunSpec) -> (usize, usize, u64, u64) {
    let windows = windows(spec)
        .iter()
        .map(|(open, close)| spec.steps[*close].at_ms - spec.steps[*open].at_ms)
        .sum();
    (
        spec.steps.len(),
        spec.devices().len(),
        windows,
        spec.sim.safety_ms,
    )
}

/// `(opening step, closing step)` of every window: offline→online, partition→heal,
/// hold→release, crash→restart of one device, crash_server→restart_server.
fn windows(spec: &RunSpec) -> Vec<(usize, usize)> {
    let opens = |a: &Action, b: &Action| match (a, b) {
        (Action::Offline { device: x }, Action::Online { device: y })
        | (Action::Partition { device: x }, Action::Heal { device: y })
        | (Action::Hold { device: x }, Action::Release { device: y })
        | (Action::Crash { device: x, .. }, Action::Restart { device: y, .. }) => x == y,
        (Action::CrashServer, Action::RestartServer) => true,
        _ => false,
    };
    let order = spec.steps_in_order();
    let mut pairs = Vec::new();
    for (position, (close, closing)) in order.iter().enumerate() {
        if let Some((open, _)) = order[..position]
            .iter()
            .rev()
            .find(|(_, opening)| opens(&opening.action, &closing.action))
        {
            pairs.push((*open, *close));
        }
    }
    pairs
}

/// Halves each window (moves its closing step towards its opening one) while the run still
/// fails: a bug that needs a device offline for a minute rarely needs an hour.
fn shorten_windows(spec: RunSpec, search: &mut Search) -> RunSpec {
    let mut current = spec;
    for (open, close) in windows(&current) {
        for _ in 0..8 {
            let (start, end) = (current.steps[open].at_ms, current.steps[close].at_ms);
            if end - start < 200 {
                break;
            }
            let mut candidate = current.clone();
            candidate.steps[close].at_ms = start + (end - start) / 2;
            if candidate.validate().is_ok() && search.fails(&candidate) {
                current = candidate;
            } else {
                break;
            }
        }
    }
    current
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Step, UserSpec};

    fn step(at_ms: u64, action: Action) -> Step {
        Step { at_ms, action }
    }

    #[test]
    fn windows_pair_each_closing_step_with_the_last_opening_one_of_its_device() {
        let device = |d: &str| d.to_owned();
        let spec = RunSpec {
            users: vec![UserSpec {
                name: "ann".into(),
                devices: vec![device("phone"), device("tablet")],
            }],
            steps: vec![
                step(
                    5_000,
                    Action::Online {
                        device: device("phone"),
                    },
                ),
                step(
                    0,
                    Action::Offline {
                        device: device("phone"),
                    },
                ),
                step(
                    100,
                    Action::Partition {
                        device: device("tablet"),
                    },
                ),
                step(200, Action::CrashServer),
                step(
                    300,
                    Action::Heal {
                        device: device("tablet"),
                    },
                ),
                step(400, Action::RestartServer),
                step(
                    9_000,
                    Action::Offline {
                        device: device("tablet"),
                    },
                ),
            ],
            ..RunSpec::default()
        };
        assert_eq!(windows(&spec), vec![(2, 4), (3, 5), (1, 0)]);
        assert_eq!(size(&spec), (7, 2, 200 + 200 + 5_000, spec.sim.safety_ms));
    }
}
