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

/// Every op the server committed was traced as decided when it happened: before any
/// device took its answer, with the status and version the final log holds.
#[test]
fn server_decisions_are_traced_when_made_and_agree_with_the_log() {
    use rockhound_sim::trace::TraceEvent;
    let spec = RunSpec {
        faults: Some(FaultSpec::default()),
        ..small_spec()
    };
    let outcome = rockhound_sim::world::run(&spec, 3).unwrap();
    let lines = &outcome.trace.lines;
    let mut decided = std::collections::BTreeMap::new();
    let mut checked = 0;
    for (index, line) in lines.iter().enumerate() {
        match &line.event {
            TraceEvent::Decided {
                user,
                op_id,
                status,
                version,
                ..
            } => {
                decided
                    .entry((user.clone(), op_id.clone()))
                    .or_insert_with(Vec::new)
                    .push((index, line.t_ms, *status, *version));
            }
            TraceEvent::Answered {
                batch_id: Some(_),
                results,
                ..
            } => {
                let user = spec
                    .users
                    .iter()
                    .find(|u| u.devices.contains(&line.host))
                    .unwrap();
                for (op_id, status, _) in results {
                    let seen = decided.get(&(user.name.clone(), op_id.clone()));
                    assert!(
                        seen.is_some_and(|d| d
                            .iter()
                            .any(|(i, t, s, _)| *i < index && *t <= line.t_ms && s == status)),
                        "{op_id} answered {status:?} at line {index} without an earlier decision"
                    );
                    checked += 1;
                }
            }
            TraceEvent::FinalCommit { user, row } => {
                if let Some(op_id) = &row.op_id
                    && row.action != rockhound_engine::server::wire::HistoryAction::Resolve
                {
                    let seen = &decided[&(user.clone(), op_id.clone())];
                    assert!(
                        seen.iter().any(|(_, _, _, v)| *v == row.version),
                        "{op_id}'s commit (version {:?}) was never traced as decided",
                        row.version
                    );
                }
            }
            _ => {}
        }
    }
    assert!(checked > 10, "only {checked} answered ops");
}
