//! Running specs over seeds: one run, a determinism re-run, seed ranges.

use crate::checkers::{Checker, Verdict, determinism};
use crate::spec::{RunSpec, SpecError};
use crate::world::{self, RunOutcome};

/// One seed's run, with the determinism verdict when a re-run was asked for.
#[derive(Debug)]
pub struct Checked {
    /// The first run.
    pub outcome: RunOutcome,
    /// `Some` when the determinism checker ran.
    pub determinism: Option<Verdict>,
}

impl Checked {
    /// Every verdict, determinism last.
    pub fn verdicts(&self) -> Vec<&Verdict> {
        self.outcome
            .verdicts
            .iter()
            .chain(&self.determinism)
            .collect()
    }

    /// Whether the determinism re-run disagreed.
    pub fn nondeterministic(&self) -> bool {
        self.determinism
            .as_ref()
            .is_some_and(|v| !v.violations.is_empty())
    }

    /// Whether the run passed (for a negative spec: whether its violation was reported).
    pub fn passed(&self, spec: &RunSpec) -> bool {
        crate::checkers::passed(spec, self.verdicts(), &self.outcome.unmet)
    }
}

/// Whether the spec asks for the determinism checker.
pub fn wants_determinism(spec: &RunSpec) -> bool {
    spec.expect.checkers.is_empty()
        || spec.expect.checkers.contains(&Checker::Determinism)
        || spec.expect.violation == Some(Checker::Determinism)
}

/// Runs `spec` with `seed`, and again to check determinism when `recheck`.
pub fn run(spec: &RunSpec, seed: u64, recheck: bool) -> Result<Checked, SpecError> {
    let outcome = world::run(spec, seed)?;
    let determinism = if recheck {
        let second = world::run(spec, seed)?;
        Some(Verdict {
            checker: Checker::Determinism,
            ran: true,
            violations: determinism::compare(seed, &outcome.trace, &second.trace)
                .into_iter()
                .collect(),
        })
    } else {
        None
    };
    Ok(Checked {
        outcome,
        determinism,
    })
}
