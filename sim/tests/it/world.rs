//! Whole simulated runs: healthy runs hold every checker, the same seed gives the same trace.

use rockhound_sim::runner;
use rockhound_sim::spec::{FaultSpec, RunSpec, UserSpec, WorkloadSpec};

pub fn small_spec() -> RunSpec {
    RunSpec {
        name: "small".into(),
        users: vec![
            UserSpec {
                name: "ann".into(),
                devices: vec!["ann-phone".into(), "ann-tablet".into()],
            },
            UserSpec {
                name: "bob".into(),
                devices: vec!["bob-phone".into()],
            },
        ],
        workload: Some(WorkloadSpec {
            actions_per_device: 15,
            ..WorkloadSpec::default()
        }),
        ..RunSpec::default()
    }
}

fn report(checked: &runner::Checked) -> String {
    let mut text = format!("{:?}\n", checked.outcome.summary);
    for verdict in checked.verdicts() {
        for violation in &verdict.violations {
            text.push_str(&violation.to_string());
        }
    }
    text.push_str(&format!("unmet: {:?}\n", checked.outcome.unmet));
    text
}

#[test]
fn a_healthy_run_holds_every_checker() {
    let spec = small_spec();
    let checked = runner::run(&spec, 1, true).unwrap();
    assert!(checked.passed(&spec), "{}", report(&checked));
    println!("{}", report(&checked));
    assert!(checked.outcome.summary.applied > 10, "{}", report(&checked));
}

#[test]
fn a_faulty_run_holds_every_checker() {
    let spec = RunSpec {
        faults: Some(FaultSpec::default()),
        ..small_spec()
    };
    let checked = runner::run(&spec, 2, false).unwrap();
    println!("{}", report(&checked));
    assert!(checked.passed(&spec), "{}", report(&checked));
}

/// The trace of one run, as the bytes `--trace` writes.
fn trace_bytes(spec: &RunSpec, seed: u64) -> (Vec<u8>, String) {
    let outcome = rockhound_sim::world::run(spec, seed).unwrap();
    let mut bytes = Vec::new();
    let digest = outcome.trace.write_jsonl(&mut bytes).unwrap();
    assert_eq!(digest, outcome.digest);
    (bytes, digest)
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_different_seeds_differ() {
    let spec = RunSpec {
        faults: Some(FaultSpec {
            swarm: true,
            ..FaultSpec::default()
        }),
        ..small_spec()
    };
    let mut digests = std::collections::BTreeSet::new();
    for seed in [0, 1, 42, 7_777, u64::MAX] {
        let (first, digest) = trace_bytes(&spec, seed);
        let (second, again) = trace_bytes(&spec, seed);
        assert_eq!(digest, again, "seed {seed}");
        assert!(first == second, "seed {seed}: the traces differ");
        assert_eq!(digest.len(), 64);
        assert!(
            digests.insert(digest),
            "seed {seed} repeats another seed's digest"
        );
    }
}
