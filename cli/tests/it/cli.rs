//! The `rockhound` binary's contract (README.md): the `seed=<N> digest=<hex>` line, the exit
//! codes, byte-identical traces, and the export → replay and shrink round trips.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rockhound(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rockhound"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn digest_line(output: &Output) -> String {
    stdout(output)
        .lines()
        .find(|l| l.starts_with("seed="))
        .unwrap_or_else(|| panic!("no seed line in {}", stdout(output)))
        .to_owned()
}

#[test]
fn run_prints_the_seed_and_digest_line_and_traces_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut traces = Vec::new();
    for name in ["a.jsonl", "b.jsonl"] {
        let trace = dir.path().join(name);
        let output = rockhound(&[
            "run",
            "scenarios/queue_full.toml",
            "--seed",
            "5",
            "--trace",
            trace.to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
        let line = digest_line(&output);
        let digest = line
            .strip_prefix("seed=5 digest=")
            .expect("the contract line");
        assert_eq!(digest.len(), 64);
        assert!(
            digest
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert!(stdout(&output).contains("  no_loss           ok"));
        traces.push(std::fs::read(&trace).unwrap());
    }
    assert!(!traces[0].is_empty());
    assert!(
        traces[0] == traces[1],
        "the same seed wrote different traces"
    );
}

#[test]
fn exit_codes_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    // 1: a planted bug without the expectation that it is caught is a plain violation.
    let text = std::fs::read_to_string(
        repo().join("scenarios/negative/exactly_once_server_ignores_idempotency.toml"),
    )
    .unwrap();
    let violating = dir.path().join("violating.toml");
    std::fs::write(&violating, text.replace("violation = \"exactly_once\"", "")).unwrap();
    let output = rockhound(&["run", violating.to_str().unwrap(), "--seed", "3"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let out = stdout(&output);
    assert!(out.contains("exactly_once      VIOLATED"), "{out}");
    let reproduce = format!("reproduce: rockhound run {} --seed 3", violating.display());
    assert!(out.contains(&reproduce), "{out}");
    // 3: a run that differs from its own re-run.
    let text = std::fs::read_to_string(
        repo().join("scenarios/negative/determinism_process_wide_ids.toml"),
    )
    .unwrap();
    let nondeterministic = dir.path().join("nondeterministic.toml");
    std::fs::write(
        &nondeterministic,
        text.replace("violation = \"determinism\"", ""),
    )
    .unwrap();
    let output = rockhound(&["run", nondeterministic.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(3), "{}", stdout(&output));
    // 2: a broken file, a missing file, bad arguments.
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "[[users]]\nname = \"ann\"\ndevices = [\"phone\"]\n[sim]\ntick_ms = \"fast\"\n",
    )
    .unwrap();
    for args in [
        vec!["run", broken.to_str().unwrap()],
        vec!["run", "no-such-file.toml"],
        vec!["run", "scenarios/queue_full.toml", "--seeds", "9..2"],
        vec!["explore", "--shard", "3/2"],
        vec!["shrink"],
    ] {
        let output = rockhound(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stdout(&output)
        );
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
    let output = rockhound(&["run", broken.to_str().unwrap()]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("broken.toml:5:11"), "{error}");
}

#[test]
fn an_exported_run_replays_to_the_same_digest() {
    let dir = tempfile::tempdir().unwrap();
    for (file, seed) in [
        (None, "11"),
        (None, "250"),
        (Some("scenarios/field_season.toml"), "4"),
    ] {
        let out = dir.path().join(format!("exported-{seed}.toml"));
        let mut args = vec!["export", "--seed", seed, "--out", out.to_str().unwrap()];
        args.extend(file);
        let exported = rockhound(&args);
        assert_eq!(exported.status.code(), Some(0), "{}", stdout(&exported));
        let replayed = rockhound(&["replay", out.to_str().unwrap()]);
        assert_eq!(replayed.status.code(), Some(0), "{}", stdout(&replayed));
        assert_eq!(digest_line(&exported), digest_line(&replayed));
        assert!(stdout(&replayed).contains("replay: digest matches the recorded one"));
        // The file is editable: its random parts became explicit steps.
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            !text.contains("[workload]") && !text.contains("[faults]"),
            "{text}"
        );
        assert!(text.contains("[[steps]]"));
    }
}

#[test]
fn shrink_turns_a_planted_failure_in_a_long_random_run_into_a_handful_of_steps() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.toml");
    std::fs::write(
        &long,
        r#"description = "four devices, a random workload and random faults, and a server that ignores idempotency keys"

[[users]]
name = "ann"
devices = ["phone", "tablet", "laptop"]

[[users]]
name = "bob"
devices = ["bob-phone"]

[sim]
safety_ms = 60000
liveness_ms = 120000

[workload]
actions_per_device = 30

[faults]
swarm = true

[planted]
server_ignores_idempotency = true
"#,
    )
    .unwrap();
    let original = rockhound(&["run", long.to_str().unwrap(), "--seed", "3", "--no-recheck"]);
    assert_eq!(original.status.code(), Some(1), "the long run fails");
    let shrunk = dir.path().join("shrunk.toml");
    let output = rockhound(&[
        "shrink",
        long.to_str().unwrap(),
        "--seed",
        "3",
        "--out",
        shrunk.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let spec = rockhound_sim::scenario::load(&shrunk).unwrap();
    assert!(spec.steps.len() <= 5, "{} steps left", spec.steps.len());
    assert_eq!(
        spec.expect.violation,
        Some(rockhound_sim::checkers::Checker::ExactlyOnce)
    );
    assert!(spec.workload.is_none() && spec.faults.is_none());
    // The shrunk file fails the same checker on its own (and `run` counts that as caught).
    let rerun = rockhound(&["run", shrunk.to_str().unwrap()]);
    assert_eq!(rerun.status.code(), Some(0), "{}", stdout(&rerun));
    assert!(stdout(&rerun).contains("planted bug was caught by exactly_once"));
}

#[test]
fn explore_splits_the_seed_space_into_shards_and_saves_failures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("failures");
    let output = rockhound(&[
        "explore",
        "--seeds",
        "0..5",
        "--shard",
        "2/3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("explored 2 of 2 seeds (shard 2/3)"),
        "{}",
        stdout(&output)
    );
    let saved: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        saved,
        vec!["coverage.json"],
        "nothing failed, only the coverage saved"
    );
}

/// A scenario file in a temporary folder.
fn scenario_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const SMALL: &str = "seed = 3\n[[users]]\nname = \"ann\"\ndevices = [\"phone\"]\n\n[sim]\nsafety_ms = 2000\nliveness_ms = 20000\n\n[[steps]]\nat_ms = 0\ndo = \"create\"\ndevice = \"phone\"\nentity_type = \"tag\"\nid = \"t\"\n";

#[test]
fn a_trace_that_cannot_be_written_exits_with_the_usage_code() {
    let output = rockhound(&[
        "run",
        "scenarios/queue_full.toml",
        "--seed",
        "1",
        "--trace",
        "/nonexistent-folder/trace.jsonl",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot write the trace"));
}

#[test]
fn zero_jobs_is_a_usage_error() {
    for command in [
        vec!["run", "scenarios/queue_full.toml", "--jobs", "0"],
        vec!["explore", "--seeds", "0..1", "--jobs", "0"],
        vec!["check", "--jobs", "0"],
    ] {
        let output = rockhound(&command);
        assert_eq!(output.status.code(), Some(2), "{command:?}");
    }
}

#[test]
fn digests_are_checked_by_run_and_replay_and_a_missing_or_malformed_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let plain = scenario_file(dir.path(), "plain.toml", SMALL);
    let replayed = rockhound(&["replay", plain.to_str().unwrap()]);
    assert_eq!(replayed.status.code(), Some(0));
    assert!(
        stdout(&replayed).contains("records no digest"),
        "{}",
        stdout(&replayed)
    );

    let malformed = scenario_file(
        dir.path(),
        "malformed.toml",
        &format!("{SMALL}\n[expect]\ndigest = \"abc\"\n"),
    );
    for command in ["run", "replay"] {
        let output = rockhound(&[command, malformed.to_str().unwrap()]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{command}: {}",
            stdout(&output)
        );
        assert!(String::from_utf8_lossy(&output.stderr).contains("expect.digest"));
    }

    let wrong = scenario_file(
        dir.path(),
        "wrong.toml",
        &format!("{SMALL}\n[expect]\ndigest = \"{}\"\n", "0".repeat(64)),
    );
    let output = rockhound(&["run", wrong.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(3), "{}", stdout(&output));
    assert!(stdout(&output).contains("differs from expect.digest"));
    // On another seed than the recorded one there is nothing to compare.
    let output = rockhound(&["run", wrong.to_str().unwrap(), "--seed", "4"]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[test]
fn the_summary_counts_the_edits_the_client_refused() {
    let output = rockhound(&["run", "scenarios/queue_full.toml", "--seed", "1"]);
    let summary = stdout(&output);
    let line = summary
        .lines()
        .find(|l| l.starts_with("scenario "))
        .unwrap();
    let refused: u64 = line
        .split(", ")
        .find_map(|part| part.strip_suffix(" edits refused"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused > 0, "queue_full refuses edits: {line}");
}

#[test]
fn explore_with_a_planted_bug_stops_at_the_first_seed_that_catches_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("caught");
    let output = rockhound(&[
        "explore",
        "--seeds",
        "0..99",
        "--plant",
        "client_ignores_priority",
        "--stop-on-failure",
        "--jobs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let first: u64 = text
        .split("first failing seed of priority_order: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| panic!("priority_order caught it: {text}"));
    assert!(
        text.contains(&format!("explored {} of 100 seeds", first + 1)),
        "no seed after the first failure: {text}"
    );
    // The saved failure carries the bug, so it replays as caught.
    let saved = std::fs::read_to_string(out.join(format!("swarm-{first}.toml"))).unwrap();
    assert!(saved.contains("client_ignores_priority = true"), "{saved}");
    let unknown = rockhound(&["explore", "--plant", "server_forgets_everything"]);
    assert_eq!(unknown.status.code(), Some(2));
    let error = String::from_utf8_lossy(&unknown.stderr).into_owned();
    assert!(error.contains("not a planted bug"), "{error}");
    assert!(error.contains("client_ignores_priority"), "{error}");
}

#[test]
fn explore_over_the_largest_range_starts_at_once_and_stops_on_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let output = rockhound(&[
        "explore",
        "--seeds",
        "0..9999999",
        "--time-budget",
        "2",
        "--jobs",
        "1",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    let text = stdout(&output);
    assert!(text.contains("of 10000000 seeds"), "{text}");
    assert!(matches!(output.status.code(), Some(0 | 1)), "{text}");
}

#[test]
fn ctrl_c_during_explore_keeps_what_was_found_and_prints_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_rockhound"))
        .args(["explore", "--seeds", "0..999999", "--jobs", "1", "--out"])
        .arg(dir.path())
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    let text = stdout(&output);
    assert!(text.contains("(interrupted)"), "{text}");
    assert!(matches!(output.status.code(), Some(0 | 1)), "{text}");
}

#[test]
fn paranoid_mode_checks_every_step_and_leaves_the_trace_as_it_was() {
    let plain = rockhound(&["run", "scenarios/field_season.toml", "--seed", "2"]);
    let paranoid = rockhound(&[
        "run",
        "scenarios/field_season.toml",
        "--seed",
        "2",
        "--paranoid",
    ]);
    assert_eq!(paranoid.status.code(), Some(0), "{}", stdout(&paranoid));
    assert_eq!(digest_line(&plain), digest_line(&paranoid));
}

/// The coverage table: `run --seeds` prints it and writes it as JSON, points reached by a
/// run carry their first seed, and `explore --coverage-gate` exits 4 naming the points no
/// seed reached (two seeds cannot reach them all), while without the gate it exits 0.
#[test]
fn coverage_is_tabled_and_the_gate_fails_on_unreached_points() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("coverage.json");
    let output = rockhound(&[
        "run",
        "scenarios/queue_full.toml",
        "--seeds",
        "0..1",
        "--no-recheck",
        "--coverage",
        json.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).contains("coverage over 2 run(s):"));
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(table["runs"], 2);
    let full = table["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["point"] == "client.enqueue.queue_full")
        .expect("the point is in the table");
    assert_eq!(
        (full["runs"].as_u64(), full["first_seed"].as_u64()),
        (Some(2), Some(0))
    );

    let out = dir.path().join("explore");
    let args = ["explore", "--seeds", "0..1", "--out", out.to_str().unwrap()];
    let plain = rockhound(&args);
    assert_eq!(plain.status.code(), Some(0), "{}", stdout(&plain));
    assert!(out.join("coverage.json").exists());
    let gated = rockhound(&[&args[..], &["--coverage-gate"]].concat());
    assert_eq!(gated.status.code(), Some(4), "{}", stdout(&gated));
    let gate_line = stdout(&gated)
        .lines()
        .find(|l| l.starts_with("coverage gate:"))
        .map(str::to_owned)
        .expect("the gate names the points");
    assert!(gate_line.contains("server.resolve.custom"), "{gate_line}");
}

#[test]
fn a_run_on_the_sqlite_store_gives_the_same_trace_as_on_the_memory_store() {
    // The SQL code path of `serve --db` under the simulation's faults: server crashes
    // inside and between a batch's commits, manual conflicts resolved, hostile requests.
    for scenario in [
        "scenarios/server_crash_inside_batch.toml",
        "scenarios/server_crash_mid_batch.toml",
        "scenarios/conflict_manual.toml",
        "scenarios/hostile_clients.toml",
    ] {
        let memory = rockhound(&["run", scenario, "--no-recheck"]);
        let args = ["run", scenario, "--no-recheck", "--server-store", "sqlite"];
        let sqlite = rockhound(&args);
        assert_eq!(sqlite.status.code(), Some(0), "{}", stdout(&sqlite));
        assert_eq!(digest_line(&sqlite), digest_line(&memory), "{scenario}");
    }
    let refused = rockhound(&[
        "run",
        "scenarios/queue_full.toml",
        "--server-store",
        "oracle",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("use memory or sqlite"), "{stderr}");
}

#[test]
fn json_and_junit_results_carry_every_run_and_each_failure_with_its_reproduce_command() {
    let dir = tempfile::tempdir().unwrap();
    let good = scenario_file(dir.path(), "good.toml", SMALL);
    // The same run with an expectation it cannot meet: a failure to report.
    let failing = format!("{SMALL}\n[expect.counts]\napplied_min = 99\n")
        .replace("seed = 3\n", "seed = 3\nname = \"impossible\"\n");
    let bad = scenario_file(dir.path(), "bad.toml", &failing);
    let junit = dir.path().join("results.xml");
    let output = rockhound(&[
        "run",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--no-recheck",
        "--format",
        "json",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    // Stdout is JSON lines only: one object per run, then the summary.
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let (first, second, summary) = (&lines[0], &lines[1], &lines[2]["summary"]);
    assert_eq!(first["result"], "ok");
    assert_eq!(first["seed"], 3);
    assert_eq!(first["digest"].as_str().unwrap().len(), 64);
    assert!(first["counts"]["applied"].as_u64().unwrap() >= 1);
    assert!(
        first["coverage"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("server.answer.applied"))
    );
    assert_eq!(second["scenario"], "impossible");
    assert_eq!(second["result"], "violation");
    assert!(second["unmet"][0].as_str().unwrap().contains("applied"));
    assert!(
        second["reproduce"]
            .as_str()
            .unwrap()
            .contains("bad.toml --seed 3")
    );
    assert_eq!(summary["runs"], 2);
    assert_eq!(summary["results"]["ok"], 1);
    assert_eq!(summary["result"], "violation");
    // The same in JUnit: two cases, one failure that says how to reproduce it.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testsuite name=\"rockhound\" tests=\"2\" failures=\"1\" errors=\"0\""),
        "{xml}"
    );
    assert!(
        xml.contains("<testcase classname=\"impossible\" name=\"seed 3\""),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"violation (seed 3)\""),
        "{xml}"
    );
    assert!(xml.contains("reproduce: rockhound run"), "{xml}");
}

#[test]
fn explore_prints_json_lines_in_seed_order_and_junit_with_each_failing_seed() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("explore.xml");
    let output = rockhound(&[
        "explore",
        "--seeds",
        "0..2",
        "--plant",
        "client_ignores_priority",
        "--format",
        "json",
        "--junit",
        junit.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let seeds: Vec<u64> = lines[..3]
        .iter()
        .map(|l| l["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, [0, 1, 2]);
    let failed: Vec<&serde_json::Value> = lines[..3]
        .iter()
        .filter(|l| l["result"] == "violation")
        .collect();
    assert!(!failed.is_empty(), "the planted bug is caught by some seed");
    for line in &failed {
        let reproduce = line["reproduce"].as_str().unwrap();
        assert!(reproduce.starts_with("rockhound replay "), "{reproduce}");
        let saved = reproduce.trim_start_matches("rockhound replay ");
        assert!(Path::new(saved).exists(), "{saved} is saved");
    }
    assert_eq!(lines[3]["summary"]["runs"], 3);
    let xml = std::fs::read_to_string(&junit).unwrap();
    let failures = format!("failures=\"{}\"", failed.len());
    assert!(xml.contains(&failures), "{xml}");
    assert_eq!(xml.matches("<testcase ").count(), 3);
}

#[test]
fn diff_names_where_two_traces_part_and_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let trace = |seed: &str| {
        let path = dir.path().join(format!("t{seed}.jsonl"));
        let output = rockhound(&[
            "run",
            "scenarios/field_season.toml",
            "--seed",
            seed,
            "--no-recheck",
            "--trace",
            path.to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
        path
    };
    let (one, two, again) = (trace("1"), trace("2"), trace("1"));
    let same = rockhound(&["diff", one.to_str().unwrap(), again.to_str().unwrap()]);
    assert_eq!(same.status.code(), Some(0));
    assert!(
        stdout(&same).starts_with("the traces are the same"),
        "{}",
        stdout(&same)
    );
    let differ = rockhound(&["diff", one.to_str().unwrap(), two.to_str().unwrap()]);
    assert_eq!(differ.status.code(), Some(1));
    let text = stdout(&differ);
    assert!(text.contains("the runs differ in: seed\n"), "{text}");
    assert!(text.contains("the traces part at line "), "{text}");
    assert!(text.contains("  A: {") && text.contains("  B: {"), "{text}");
    assert!(text.contains("events per kind (A → B):"), "{text}");
    // A file that is not a trace is a usage error, with its line named.
    let bad = scenario_file(dir.path(), "bad.jsonl", "{\"t_ms\":0}\nnot json\n");
    let refused = rockhound(&["diff", one.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bad.jsonl line 2: not JSON"));
}

#[test]
fn a_junit_file_that_cannot_be_written_exits_with_the_usage_code() {
    let output = rockhound(&[
        "run",
        "scenarios/queue_full.toml",
        "--no-recheck",
        "--junit",
        "/nonexistent-folder/results.xml",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot write the JUnit results"));
}

#[test]
fn explain_tells_an_ops_life_in_order_and_the_ops_a_violation_names() {
    // From a scenario: the tablet's edit meets a manual conflict and is resolved.
    let told = rockhound(&[
        "explain",
        "scenarios/conflict_manual.toml",
        "--op",
        "tablet:0",
    ]);
    assert_eq!(told.status.code(), Some(0), "{}", stdout(&told));
    let text = stdout(&told);
    let order = [
        "enqueued: update field_session ridge",
        "sent in batch tablet:0:1 (1 of 1)",
        "server decided: conflict (manual) by manual, meeting version 2",
        "its device took the answer: conflict (manual)",
        "pulled its entity",
        "in the server's log: commit",
    ];
    let mut from = 0;
    for sentence in order {
        let at = text[from..]
            .find(sentence)
            .unwrap_or_else(|| panic!("{sentence:?} missing or out of order in\n{text}"));
        from += at + sentence.len();
    }
    // From a failing run without --op: the violations, then each op they name, which the
    // server decided twice.
    let failing = rockhound(&[
        "explain",
        "scenarios/negative/exactly_once_server_splits_commit.toml",
    ]);
    assert_eq!(failing.status.code(), Some(1), "{}", stdout(&failing));
    let text = stdout(&failing);
    assert!(text.contains("exactly_once violated"), "{text}");
    for op in ["op phone:1:", "op phone:2:"] {
        let story = &text[text.find(op).unwrap_or_else(|| panic!("{op} in {text}"))..];
        assert!(story.matches("server decided").count() >= 2, "{story}");
    }
    // From a trace file; an op that is not there, and a file that is not a trace.
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let ran = rockhound(&[
        "run",
        "scenarios/answer_damaged.toml",
        "--no-recheck",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(ran.status.code(), Some(0));
    let told = rockhound(&["explain", trace.to_str().unwrap(), "--op", "phone:0"]);
    assert_eq!(told.status.code(), Some(0));
    assert!(
        stdout(&told).contains("server decided: duplicate"),
        "{}",
        stdout(&told)
    );
    let missing = rockhound(&["explain", trace.to_str().unwrap(), "--op", "nope"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no op nope"));
    let not_json = dir.path().join("bad.jsonl");
    std::fs::write(&not_json, "{\"t_ms\": 1}\nhalf a line").unwrap();
    let refused = rockhound(&["explain", not_json.to_str().unwrap(), "--op", "x"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("line 2: not JSON"));
}
