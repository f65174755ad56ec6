//! The performance gate: instructions per operation of the engine's hot paths, counted by
//! valgrind's callgrind (a count of executed instructions, the same on a busy machine as on
//! an idle one), compared with the committed baseline `benches/perf-baseline.json`.
//!
//! ```sh
//! cargo run --release -p rockhound-benches --bin perf_gate              # check: exit 1 on a regression
//! cargo run --release -p rockhound-benches --bin perf_gate -- --update  # write the baseline
//! cargo run --release -p rockhound-benches --bin perf_gate -- --only enqueue
//! ```
//!
//! Each hot path runs in its own process under `valgrind --tool=callgrind`, which counts
//! only what runs inside [`measured`] (its set-up, a queue of 100,000 ops say, is not
//! counted), and of that only the binary's own code (not the C library's, whose variants
//! depend on the CPU: [`own_instructions`]); the count divided by the iterations is the
//! figure. A path more than the
//! baseline's threshold (10 %) above its baseline fails the gate; one more than the
//! threshold below it is reported, so the baseline can be lowered with `--update`. Exit
//! codes: 0 within the threshold, 1 a regression, 2 valgrind missing or a bad baseline.
//! Criterion (`benches/engine.rs`) stays for wall-clock figures.

use rockhound_benches::{
    NOW, config, conflict_case, device_with, drawers_batch, edit, op, queue_with,
    server_with_sessions, specimen,
};
use rockhound_engine::client::coordinator::{Coordinator, Request};
use rockhound_engine::conflict::{self, Detection, Strategy, Write};
use rockhound_engine::server::Server;
use rockhound_engine::testing::sim_store::SimStore;
use rockhound_engine::{DeviceId, OpKind, UserId};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The committed baseline, relative to the workspace.
const BASELINE: &str = "benches/perf-baseline.json";

/// How far above its baseline a path may go, in percent, unless the baseline says.
const THRESHOLD_PCT: f64 = 10.0;

/// The hot paths, by name: each builds its state (not counted) and returns the work of
/// one iteration and how many iterations to count.
const PATHS: &[&str] = &[
    "enqueue",
    "select_50/from_10000",
    "select_50/from_100000",
    "poll_batch_50/from_10000",
    "conflict/latest_timestamp",
    "conflict/field_level",
    "conflict/merge",
    "server/apply_batch_50",
    "result_50/on_batch_response",
    "checksum/typical_op",
];

/// Runs `work` `iterations` times: the one function callgrind counts.
#[inline(never)]
fn measured(iterations: u64, work: &mut dyn FnMut()) {
    for _ in 0..iterations {
        work();
    }
}

// Long on purpose: one arm per hot path, each its set-up and its iteration side by side.
/// Runs one hot path: its set-up, then [`measured`].
fn run_path(name: &str) -> Result<(), String> {
    let ann = UserId::from("ann");
    match name {
        "enqueue" => {
            let count = 200;
            let mut device = Coordinator::open(
                DeviceId("bench".into()),
                0,
                config(count),
                SimStore::new(),
                1,
                NOW,
            )
            .map_err(|e| e.to_string())?;
            let mut edits = (0..count).map(edit);
            measured(count as u64, &mut || {
                let next = edits.next().expect("one edit per iteration");
                black_box(device.enqueue(NOW, NOW, next).expect("room"));
            });
        }
        "select_50/from_10000" | "select_50/from_100000" => {
            let count = if name.ends_with("100000") {
                100_000
            } else {
                10_000
            };
            let queue = queue_with(count);
            measured(20, &mut || {
                black_box(queue.select(50));
            });
        }
        "poll_batch_50/from_10000" => {
            let mut devices: Vec<_> = (0..3).map(|_| device_with(10_000)).collect();
            for device in &mut devices {
                device.set_online(NOW, true);
            }
            let mut devices = devices.into_iter();
            measured(3, &mut || {
                let mut device = devices.next().expect("one device per iteration");
                black_box(device.poll(NOW));
                // Dropped outside the count.
                std::mem::forget(device);
            });
        }
        strategy if strategy.starts_with("conflict/") => {
            let strategy = match &strategy["conflict/".len()..] {
                "latest_timestamp" => Strategy::LatestTimestamp,
                "field_level" => Strategy::FieldLevel,
                _ => Strategy::Merge,
            };
            let (server, stale, device) = conflict_case();
            measured(200, &mut || {
                let write = Write::of(&stale, &device);
                let Detection::Conflict(case) = conflict::detect(Some(&server), &write) else {
                    unreachable!("a stale update conflicts");
                };
                let decision = conflict::resolve(strategy, case, &server, &write);
                black_box(conflict::commit(Some(&server), &decision, &write));
            });
        }
        "server/apply_batch_50" => {
            let batch = drawers_batch();
            let mut servers = (0..3)
                .map(|_| server_with_sessions(500))
                .collect::<Vec<_>>();
            let mut servers = servers.drain(..);
            measured(3, &mut || {
                let mut server = servers.next().expect("one server per iteration");
                black_box(server.handle_batch(&ann, &batch, NOW).expect("applies"));
                std::mem::forget(server);
            });
        }
        "result_50/on_batch_response" => {
            let in_flight = || {
                let mut device = device_with(1_000);
                device.set_online(NOW, true);
                match device.poll(NOW) {
                    Some(Request::Batch(batch)) => (device, batch),
                    other => panic!("expected a batch, got {other:?}"),
                }
            };
            let (_, batch) = in_flight();
            let answer = Server::new(config(1_000))
                .handle_batch(&ann, &batch, NOW)
                .map_err(|e| e.to_string())?;
            let mut devices = (0..3)
                .map(|_| in_flight().0)
                .collect::<Vec<_>>()
                .into_iter();
            measured(3, &mut || {
                let mut device = devices.next().expect("one device per iteration");
                black_box(device.on_batch_response(NOW, &answer));
                std::mem::forget(device);
            });
        }
        "checksum/typical_op" => {
            let typical = op(1, OpKind::Create, 0, specimen(), NOW);
            measured(1_000, &mut || {
                black_box(typical.compute_checksum());
            });
        }
        other => return Err(format!("no hot path named {other:?}")),
    }
    Ok(())
}

/// The iterations [`run_path`] counts for `name`.
fn iterations(name: &str) -> u64 {
    match name {
        "enqueue" | "conflict/latest_timestamp" | "conflict/field_level" | "conflict/merge" => 200,
        "select_50/from_10000" | "select_50/from_100000" => 20,
        "checksum/typical_op" => 1_000,
        _ => 3,
    }
}

/// Instructions per iteration of `name`, counted by callgrind in a child process.
fn count(name: &str, scratch: &Path) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = scratch.join(format!("callgrind.{}.out", name.replace('/', "_")));
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--toggle-collect=*perf_gate*measured*")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .args(["--run", name])
        .output()
        .map_err(|e| format!("cannot start valgrind ({e}): install it (Debian: valgrind)"))?;
    if !output.status.success() {
        return Err(format!(
            "valgrind on {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    let own = own_instructions(&text, &exe.display().to_string());
    if own == 0 {
        return Err(format!(
            "callgrind counted nothing inside `measured` for {name}"
        ));
    }
    Ok(own / iterations(name))
}

/// The instructions callgrind's output (`text`) attributes to the binary `exe` itself
/// (the engine, the standard library and every crate, all linked in), leaving out the C
/// library and the loader: glibc picks its `memcpy` and `malloc` variants by the CPU, so
/// their counts differ between machines, while the binary's own code runs the same
/// instructions on any x86-64 that valgrind emulates.
///
/// The format: `ob=` names the object of the cost lines that follow, `cob=` the object of
/// a call's callee; an object is `(id) path` where its id first appears (in either) and
/// `(id)` after. A cost line is `<position> <Ir>`, and the cost line after a `calls=` line
/// is a call's inclusive cost, already counted in its callee.
fn own_instructions(text: &str, exe: &str) -> u64 {
    let mut objects: BTreeMap<&str, &str> = BTreeMap::new();
    let mut in_exe = false;
    let mut after_call = false;
    let mut own = 0u64;
    for line in text.lines() {
        let (object, current) = match (line.strip_prefix("ob="), line.strip_prefix("cob=")) {
            (Some(rest), _) => (Some(rest), true),
            (None, Some(rest)) => (Some(rest), false),
            (None, None) => (None, false),
        };
        if let Some(rest) = object {
            let (id, path) = rest.split_once(' ').unwrap_or((rest, ""));
            if !path.is_empty() {
                objects.insert(id, path);
            }
            if current {
                in_exe = objects.get(id).is_some_and(|p| *p == exe);
            }
            continue;
        }
        if line.starts_with("calls=") {
            after_call = true;
            continue;
        }
        let starts_cost = line
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'*'));
        if !starts_cost {
            continue;
        }
        if std::mem::take(&mut after_call) {
            continue;
        }
        if in_exe {
            own += line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    own
}

/// The baseline: the threshold and each path's instructions per iteration.
#[derive(serde::Serialize, serde::Deserialize)]
struct Baseline {
    threshold_pct: f64,
    instructions: BTreeMap<String, u64>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, name] = args.as_slice()
        && flag == "--run"
    {
        return match run_path(name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let update = args.iter().any(|a| a == "--update");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    let scratch = std::env::temp_dir().join(format!("rockhound-perf-gate-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        eprintln!("error: cannot create {}: {e}", scratch.display());
        return ExitCode::from(2);
    }
    let code = gate(update, only.map(String::as_str), &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    code
}

/// Counts every path (or `only`), then checks them against the baseline or writes it.
fn gate(update: bool, only: Option<&str>, scratch: &Path) -> ExitCode {
    let path = workspace().join(BASELINE);
    let baseline: Option<Baseline> = match std::fs::read_to_string(&path)
        .ok()
        .map(|text| serde_json::from_str(&text))
        .transpose()
    {
        Ok(baseline) => baseline,
        Err(e) => {
            eprintln!("error: {} is not a baseline: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let threshold = baseline.as_ref().map_or(THRESHOLD_PCT, |b| b.threshold_pct);
    let mut counted = BTreeMap::new();
    let mut regressions = 0;
    println!(
        "{:<30} {:>14} {:>14} {:>8}",
        "hot path", "baseline", "now", "change"
    );
    for name in PATHS.iter().filter(|n| only.is_none_or(|o| o == **n)) {
        let now = match count(name, scratch) {
            Ok(now) => now,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        counted.insert((*name).to_owned(), now);
        let before = baseline
            .as_ref()
            .and_then(|b| b.instructions.get(*name))
            .copied();
        let (change, verdict) = match before {
            Some(before) if before > 0 => {
                let pct = (now as f64 - before as f64) * 100.0 / before as f64;
                let verdict = if pct > threshold {
                    regressions += 1;
                    "REGRESSION"
                } else if pct < -threshold {
                    "faster: lower the baseline with --update"
                } else {
                    "ok"
                };
                (format!("{pct:+.1} %"), verdict)
            }
            _ => ("—".to_owned(), "no baseline"),
        };
        let before = before.map_or_else(|| "—".to_owned(), |b| b.to_string());
        println!("{name:<30} {before:>14} {now:>14} {change:>8}  {verdict}");
    }
    if update {
        let mut instructions = baseline.map(|b| b.instructions).unwrap_or_default();
        instructions.extend(counted);
        let written = Baseline {
            threshold_pct: threshold,
            instructions,
        };
        let text = serde_json::to_string_pretty(&written).expect("a baseline serializes") + "\n";
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("baseline written to {BASELINE}");
        return ExitCode::SUCCESS;
    }
    if regressions > 0 {
        println!(
            "perf gate: {regressions} hot path(s) more than {threshold} % above the baseline ({BASELINE})"
        );
        return ExitCode::FAILURE;
    }
    println!("perf gate: every hot path within {threshold} % of the baseline");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::own_instructions;

    #[test]
    fn only_the_binarys_own_costs_count_and_a_calls_inclusive_cost_is_not_counted_twice() {
        let text = "\
events: Ir
summary: 1000

ob=(3) /lib/ld.so
fn=(9) start
cob=(2) /bin/gate
cfn=(2) main
calls=1 0
0 1000

ob=(1) /lib/libc.so.6
fl=(1) memcpy.S
fn=(1) memcpy
5 300

ob=(2)
fl=(2) gate.rs
fn=(2) measured
10 40
cob=(1)
cfn=(1)
calls=3 5
11 300
+1 7
fn=(3) helper
20 50
ob=(1)
fn=(4) malloc
30 600
";
        assert_eq!(own_instructions(text, "/bin/gate"), 40 + 7 + 50);
        assert_eq!(own_instructions(text, "/bin/other"), 0);
    }
}
