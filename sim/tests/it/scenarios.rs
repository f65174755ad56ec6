//! Every scenario file: the library passes, every negative scenario is caught by its named
//! checker, with the seed, the simulated time and the events involved.

use rockhound_sim::{runner, scenario};
use std::path::{Path, PathBuf};

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_negative_scenario_is_caught_by_its_named_checker() {
    let negatives = files("scenarios/negative");
    assert!(negatives.len() >= 11, "one negative scenario per checker");
    let mut caught = std::collections::BTreeSet::new();
    for path in negatives {
        let spec = scenario::load(&path).unwrap();
        let expected = spec
            .expect
            .violation
            .clone()
            .expect("a negative scenario names its violation");
        let checked = runner::run(&spec, 7, runner::wants_determinism(&spec)).unwrap();
        let verdict = checked
            .verdicts()
            .into_iter()
            .find(|v| v.checker == expected)
            .unwrap_or_else(|| panic!("{}: checker {expected} did not run", path.display()));
        assert!(
            !verdict.violations.is_empty(),
            "{}: {expected} did not fire; summary {:?}",
            path.display(),
            checked.outcome.summary
        );
        let violation = &verdict.violations[0];
        assert_eq!(violation.seed, 7);
        assert!(
            !violation.events.is_empty(),
            "{}: no events quoted",
            path.display()
        );
        assert!(violation.to_string().contains("seed 7, t="), "{violation}");
        assert!(checked.passed(&spec));
        // Without the planted bug the same scenario holds every checker: the bug, not the
        // scenario, is what the checker caught.
        let mut healthy = spec.clone();
        healthy.planted = Default::default();
        healthy.expect.violation = None;
        let checked = runner::run(&healthy, 7, true).unwrap();
        let violations: Vec<String> = checked
            .verdicts()
            .iter()
            .flat_map(|v| v.violations.iter().map(|v| v.to_string()))
            .collect();
        assert!(
            checked.passed(&healthy),
            "{} without its bug: {violations:?}",
            path.display()
        );
        caught.insert(expected);
    }
    assert_eq!(
        caught.len(),
        rockhound_sim::checkers::NAMES.len(),
        "{caught:?}"
    );
}
