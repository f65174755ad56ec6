//! `rockhound merge`: the shards of a range, each run as its own process with its own
//! output folder, merge into exactly what one unsharded `explore` reports — the same runs,
//! the same failures saved, the same coverage table — and shards that do not make up one
//! range are refused.

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};

const SHARDS: u64 = 3;

fn rockhound_in(dir: &Path, args: &[&str]) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    Command::new(env!("CARGO_BIN_EXE_rockhound"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// The explore arguments every run shares: a range where the planted bug fails some seeds
/// and not others.
fn explore_args(shard: &str, out: &str) -> Vec<String> {
    [
        "explore",
        "--seeds",
        "0..17",
        "--plant",
        "client_ignores_priority",
        "--jobs",
        "2",
        "--format",
        "json",
        "--shard",
        shard,
        "--out",
        out,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The run records of a `--format json` output without their wall times, and its summary.
fn records_and_summary(output: &Output) -> (Vec<Value>, Value) {
    let text = String::from_utf8(output.stdout.clone()).unwrap();
    let mut records = Vec::new();
    let mut summary = Value::Null;
    for line in text.lines() {
        let mut value: Value = serde_json::from_str(line).unwrap();
        if let Some(found) = value.get("summary") {
            summary = found.clone();
        } else {
            value.as_object_mut().unwrap().remove("wall_s");
            records.push(value);
        }
    }
    (records, summary)
}

/// Every file of a folder, by name, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn merged_shards_equal_one_unsharded_run_and_shards_of_no_one_range_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let whole_dir = root.path().join("whole");
    let whole = rockhound_in(
        &whole_dir,
        &explore_args("1/1", "failures")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        whole.status.code(),
        Some(1),
        "the planted bug fails some seeds"
    );
    let shards_dir = root.path().join("shards");
    let mut shard_paths = Vec::new();
    for k in 1..=SHARDS {
        let name = format!("s{k}");
        let args = explore_args(&format!("{k}/{SHARDS}"), &name);
        let output = rockhound_in(
            &shards_dir,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(matches!(output.status.code(), Some(0 | 1)), "{output:?}");
        std::fs::create_dir_all(shards_dir.join(&name)).unwrap();
        std::fs::write(shards_dir.join(&name).join("results.jsonl"), &output.stdout).unwrap();
        shard_paths.push(shards_dir.join(&name).display().to_string());
    }
    let merged_dir = root.path().join("merged");
    let mut args = vec!["merge".to_owned()];
    args.extend(shard_paths.iter().cloned());
    args.extend(["--out", "failures", "--format", "json"].map(str::to_owned));
    let merged = rockhound_in(
        &merged_dir,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(merged.status.code(), whole.status.code(), "{merged:?}");

    let (whole_records, whole_summary) = records_and_summary(&whole);
    let (merged_records, merged_summary) = records_and_summary(&merged);
    assert_eq!(whole_records.len(), 18);
    assert_eq!(
        merged_records, whole_records,
        "the same runs, in seed order"
    );
    for member in ["runs", "results", "result", "coverage"] {
        assert_eq!(
            merged_summary[member], whole_summary[member],
            "summary {member}"
        );
    }
    let failed = whole_records.iter().filter(|r| r["result"] != "ok").count();
    assert!(failed > 0 && failed < 18, "{failed} of 18 failed");
    // The same failing scenario files, byte for byte, and the same coverage table.
    let (whole_files, merged_files) = (
        files(&whole_dir.join("failures")),
        files(&merged_dir.join("failures")),
    );
    assert_eq!(
        whole_files.len(),
        failed + 1,
        "each failure and coverage.json"
    );
    assert!(whole_files == merged_files, "the saved files differ");

    // Shards that do not make up one range: refused, naming what is wrong.
    let refused = |shards: &[&str], says: &str| {
        let mut args = vec!["merge"];
        args.extend_from_slice(shards);
        args.extend(["--out", "refused"]);
        let output = rockhound_in(&merged_dir, &args);
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{stderr}");
    };
    let [s1, s2, s3] = [&shard_paths[0], &shard_paths[1], &shard_paths[2]].map(String::as_str);
    refused(&[s1, s3], "2/3");
    refused(&[s1, s2, s3, s2], "given twice");
    let garbage = root.path().join("garbage.jsonl");
    std::fs::write(&garbage, "{\"seed\": 1}\n").unwrap();
    refused(&[s1, s2, garbage.to_str().unwrap()], "not a run");
    let other = shards_dir.join("other");
    let args = explore_args("1/2", "other");
    let output = rockhound_in(
        &shards_dir,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("results.jsonl"), &output.stdout).unwrap();
    refused(&[s1, s2, other.to_str().unwrap()], "does not belong");

    // Shard 3's summary line alone: a shard stopped before its first seed. Merged, with a
    // note that it ran none of its seeds; with a count that is not a number: refused.
    let summary_line = std::fs::read_to_string(shards_dir.join(s3).join("results.jsonl"))
        .unwrap()
        .lines()
        .find(|line| line.contains("\"summary\""))
        .unwrap()
        .to_owned();
    let mut summary: Value = serde_json::from_str(&summary_line).unwrap();
    summary["summary"]["ran"] = json!(0);
    let empty = shards_dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("results.jsonl"), format!("{summary}\n")).unwrap();
    let output = rockhound_in(
        &shards_dir,
        &[
            "merge",
            s1,
            s2,
            empty.to_str().unwrap(),
            "--out",
            "with-empty",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shard 3/3 ran 0 of its"), "{output:?}");
    summary["summary"]["ran"] = json!("all of them");
    std::fs::write(empty.join("results.jsonl"), format!("{summary}\n")).unwrap();
    refused(
        &[s1, s2, empty.to_str().unwrap()],
        "`ran` is not a count of seeds",
    );
}
