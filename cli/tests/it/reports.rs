//! Reports: the committed baseline in `reports/` is what the code produces now, the
//! Markdown of a small scenario is pinned by a snapshot, and the HTML pages load nothing.

use rockhound_sim::report::RunReport;
use rockhound_sim::report::page::{self, PROVENANCE, Provenance};
use rockhound_sim::{runner, scenario};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every file under `dir`, by relative path, with its provenance line dropped.
fn contents(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if name == "README.md" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let kept: Vec<&str> = text.lines().filter(|l| !l.contains(PROVENANCE)).collect();
            files.insert(name, kept.join("\n"));
        }
    }
    files
}

#[test]
fn the_committed_baseline_is_what_the_code_reports() {
    let out = tempfile::tempdir().unwrap();
    let suite = Command::new(env!("CARGO_BIN_EXE_rockhound"))
        .args(["report", "--out"])
        .arg(out.path())
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(
        suite.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&suite.stdout)
    );
    let mut compare = Command::new(env!("CARGO_BIN_EXE_rockhound"));
    compare.arg("compare").current_dir(repo());
    for file in ["retries", "skew", "batch_size", "batch_window"] {
        compare.arg(format!("scenarios/compare/{file}.toml"));
    }
    let compared = compare
        .arg("--out")
        .arg(out.path().join("compare"))
        .output()
        .unwrap();
    assert_eq!(compared.status.code(), Some(0));
    let fresh = contents(out.path());
    let baseline = contents(&repo().join("reports"));
    let regenerate = "regenerate it: cargo run --release -p rockhound-cli --bin rockhound -- report --out reports && cargo run --release -p rockhound-cli --bin rockhound -- compare scenarios/compare/*.toml --out reports/compare";
    let missing: Vec<&String> = fresh
        .keys()
        .filter(|k| !baseline.contains_key(*k))
        .collect();
    let stale: Vec<&String> = baseline
        .keys()
        .filter(|k| !fresh.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "baseline files differ: new {missing:?}, gone {stale:?}; {regenerate}"
    );
    for (name, text) in &fresh {
        assert!(
            text == &baseline[name],
            "reports/{name} is out of date; {regenerate}"
        );
    }
}

fn small_report() -> RunReport {
    let spec = scenario::load(&repo().join("scenarios/flaky_dead_letter_retry.toml")).unwrap();
    let checked = runner::run(&spec, 0, true).unwrap();
    RunReport::new(&spec, &checked)
}

fn fixed_provenance() -> Provenance {
    Provenance {
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        lock_digest: "f".repeat(64),
    }
}

#[test]
fn the_markdown_of_a_small_scenario() {
    let report = small_report();
    // The numbers the plots are drawn from.
    assert_eq!(report.summary.dead_lettered, 1);
    assert_eq!(report.devices.len(), 1);
    assert_eq!(report.devices[0].partitions, vec![(1_000, 20_000)]);
    assert_eq!(report.devices[0].dead_letters.len(), 1);
    assert_eq!(
        report.retries.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![1, 2, 1]
    );
    for (attempt, delay) in &report.retries {
        assert!(report.config.backoff.envelope_ms(*attempt).contains(delay));
    }
    let files = page::run_files(&report, &fixed_provenance());
    let markdown = &files.iter().find(|(n, _)| n.ends_with(".md")).unwrap().1;
    insta::assert_snapshot!(markdown);
}

#[test]
fn html_pages_are_self_contained() {
    let report = small_report();
    let files = page::run_files(&report, &fixed_provenance());
    let (_, html) = files.iter().find(|(n, _)| n.ends_with(".html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for forbidden in ["<script", "<link", "<img", "@import", "url(", "https://"] {
        assert!(!html.contains(forbidden), "{forbidden}");
    }
    // The only URL is the SVG namespace, which browsers never fetch.
    let urls = html.matches("http://").count();
    assert_eq!(urls, html.matches("http://www.w3.org/2000/svg").count());
    assert!(html.matches("<svg").count() >= 3, "the plots are inline");
}
