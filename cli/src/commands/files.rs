//! `shrink`, `export` and `replay`: one run written out as a smaller, an explicit or the
//! same scenario file.

use super::explore::exported;
use super::{Exit, Job, report, run_jobs, worst};
use rockhound_sim::explore::swarm_spec;
use rockhound_sim::runner::{self};
use rockhound_sim::scenario::{self};
use rockhound_sim::shrink;
use rockhound_sim::spec::RunSpec;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// The spec and seed of `shrink` and `export`: the file with `--seed` or its own seed, or
/// the swarm scenario of `--seed`.
pub(super) fn spec_for(file: Option<&Path>, seed: Option<u64>) -> Result<(RunSpec, u64), Exit> {
    match (file, seed) {
        (Some(path), seed) => match scenario::load(path) {
            Ok(spec) => {
                let seed = seed.or(spec.seed).unwrap_or(0);
                Ok((spec, seed))
            }
            Err(e) => {
                eprintln!("error: {e}");
                Err(Exit::Usage)
            }
        },
        (None, Some(seed)) => Ok((swarm_spec(seed), seed)),
        (None, None) => {
            eprintln!("error: give a scenario file, a --seed of the swarm scenario, or both");
            Err(Exit::Usage)
        }
    }
}

/// `rockhound shrink`.
pub fn shrink(file: Option<&Path>, seed: Option<u64>, out: &Path) -> Exit {
    let (spec, seed) = match spec_for(file, seed) {
        Ok(found) => found,
        Err(code) => return code,
    };
    match shrink::shrink(&spec, seed) {
        Ok(shrunk) => {
            if let Err(e) = std::fs::write(out, scenario::to_toml(&shrunk.spec)) {
                eprintln!("error: cannot write {}: {e}", out.display());
                return Exit::Usage;
            }
            println!(
                "shrunk to {} steps and {} devices in {} runs; still fails {}",
                shrunk.spec.steps.len(),
                shrunk.spec.devices().len(),
                shrunk.runs,
                shrunk.checker
            );
            println!("written to {}", out.display());
            println!(
                "reproduce: rockhound run {} --seed {}",
                out.display(),
                shrunk.seed
            );
            Exit::Ok
        }
        Err(error) => {
            eprintln!("error: {error}");
            Exit::Usage
        }
    }
}

/// `rockhound export`.
pub fn export(file: Option<&Path>, seed: Option<u64>, out: &Path) -> Exit {
    let (spec, seed) = match spec_for(file, seed) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let checked = match runner::run(&spec, seed, false) {
        Ok(checked) => checked,
        Err(error) => {
            eprintln!("error: {error}");
            return Exit::Usage;
        }
    };
    let explicit = exported(&spec, seed, &checked);
    if let Err(e) = std::fs::write(out, scenario::to_toml(&explicit)) {
        eprintln!("error: cannot write {}: {e}", out.display());
        return Exit::Usage;
    }
    println!("seed={seed} digest={}", checked.outcome.digest);
    println!(
        "exported {} steps to {}",
        explicit.steps.len(),
        out.display()
    );
    Exit::Ok
}

/// `rockhound replay`: runs a file with its own seed (or `--seed`) and checks the digest it
/// records.
pub fn replay(file: &Path, seed: Option<u64>, trace: Option<&Path>) -> Exit {
    let spec = match scenario::load(file) {
        Ok(spec) => spec,
        Err(error) => {
            eprintln!("error: {error}");
            return Exit::Usage;
        }
    };
    let seed = seed.or(spec.seed).unwrap_or(0);
    let job = Job {
        label: spec.name.clone(),
        reproduce: format!("rockhound replay {} --seed {seed}", file.display()),
        spec,
        seed,
    };
    let (result, wall_s) = run_jobs(
        std::slice::from_ref(&job),
        1,
        true,
        None,
        &AtomicBool::new(false),
    )
    .pop()
    .flatten()
    .expect("one job, run");
    let checked = match result {
        Ok(checked) => checked,
        Err(error) => {
            eprintln!("error: {error}");
            return Exit::Usage;
        }
    };
    let mut replayed = job.clone();
    // `report` compares the digest itself when the seed is the recorded one; replay
    // compares it for any seed the file records it for and says what it found.
    replayed.spec.expect.digest = None;
    let code = report(&replayed, &checked, wall_s, trace, false);
    match &job.spec.expect.digest {
        Some(expected) if *expected != checked.outcome.digest => {
            println!(
                "replay: digest {} differs from the recorded {expected}",
                checked.outcome.digest
            );
            worst([code, Exit::Nondeterminism])
        }
        Some(_) => {
            println!("replay: digest matches the recorded one");
            code
        }
        None => {
            println!(
                "replay: {} records no digest (expect.digest), so there is nothing to compare; `rockhound export` writes one",
                file.display()
            );
            code
        }
    }
}
