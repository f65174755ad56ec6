//! `explore`: swarm testing over a seed range (sharded, time-bounded, interruptible), each
//! failing seed saved as a scenario file.

use super::results::{self, Format, RunRecord, print_json, write_junit};
use super::{Exit, ExploreArgs, Job, code_of, report, report_coverage, worst};
use indicatif::{ProgressBar, ProgressStyle};
use rockhound_engine::planted::Planted;
use rockhound_sim::checkers::Checker;
use rockhound_sim::coverage::{self, Table};
use rockhound_sim::explore::swarm_spec;
use rockhound_sim::export::materialize;
use rockhound_sim::runner::{self, Checked};
use rockhound_sim::scenario::{self};
use rockhound_sim::spec::RunSpec;
use rockhound_sim::spec::ServerStoreKind;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The most failing seeds of one `explore` whose whole report is kept to print at the end;
/// later failures are saved as files and listed by seed, so memory stays bounded however
/// many seeds fail.
pub(super) const FAILURE_REPORTS_MAX: usize = 20;

/// A failing seed of `explore`: its exit code, and its run while within
/// [`FAILURE_REPORTS_MAX`].
pub(super) struct Failure {
    seed: u64,
    code: Exit,
    run: Option<(Job, Checked, f64)>,
    error: Option<String>,
}

/// Sets `stop` on the first Ctrl-C (SIGINT), so that no new seed starts and what was found
/// so far is saved and summarized; a second Ctrl-C ends the process at once.
pub(super) fn stop_on_interrupt(stop: std::sync::Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            stop.store(true, Ordering::Relaxed);
            eprintln!(
                "\ninterrupted: no new seed starts; finishing the running ones (Ctrl-C again to quit now)"
            );
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    });
}

/// The seeds of shard `k` of `n` in `seeds`: the `i`-th is `start + (k - 1) + i * n`.
pub(super) fn shard_seeds(
    seeds: &RangeInclusive<u64>,
    (k, n): (u64, u64),
) -> impl Fn(u64) -> Option<u64> {
    let (start, end) = (*seeds.start(), *seeds.end());
    move |i| {
        let offset = i.checked_mul(n)?.checked_add(k - 1)?;
        start.checked_add(offset).filter(|seed| *seed <= end)
    }
}

/// `rockhound explore`: swarm scenarios over a seed range. Each seed's scenario is built
/// when a worker takes the seed and dropped when its run is judged, so memory does not
/// depend on the range's length (with `--format json` or `--junit`, one small record per
/// seed is kept until the end, to print them in seed order).
#[allow(clippy::disallowed_methods)]
// Long on purpose: the worker threads share the seed counter, the stop flag, the failure
// list, the coverage table and the records; they read best beside their declarations.
pub fn explore(args: &ExploreArgs) -> Exit {
    let ExploreArgs {
        ref seeds,
        time_budget: time_budget_s,
        shard,
        jobs,
        ref out,
        recheck,
        ref coverage,
        coverage_gate,
        ref plant,
        stop_on_failure,
        server_store,
        format,
        ref junit,
    } = *args;
    let want_records = format == Format::Json || junit.is_some();
    let records: Mutex<Vec<RunRecord>> = Mutex::new(Vec::new());
    let planted = plant
        .iter()
        .fold(Planted::default(), |all, one| merge(all, *one));
    let out = out.as_path();
    let seed_at = shard_seeds(seeds, shard);
    let total = shard_len(seeds, shard);
    let progress = progress_bar(total);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    stop_on_interrupt(stop.clone());
    let next = std::sync::atomic::AtomicU64::new(0);
    let ran = std::sync::atomic::AtomicU64::new(0);
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let table: Mutex<Table> = Mutex::new(Table::default());
    // The time budget is the one wall-clock limit of the simulation commands; it decides
    // how many seeds run, never what a run does.
    let started = std::time::Instant::now();
    let over_budget = || time_budget_s.is_some_and(|budget| started.elapsed().as_secs() >= budget);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) && !over_budget() {
                    let Some(seed) = seed_at(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let (reached, failure, record) =
                        explore_seed(seed, out, recheck, planted, server_store, want_records);
                    if let Some(record) = record {
                        records.lock().expect("records").push(record);
                    }
                    table
                        .lock()
                        .expect("coverage table")
                        .add(seed, reached.iter().map(String::as_str));
                    ran.fetch_add(1, Ordering::Relaxed);
                    progress.inc(1);
                    let Some(mut failure) = failure else {
                        continue;
                    };
                    if stop_on_failure {
                        stop.store(true, Ordering::Relaxed);
                    }
                    let mut failures = failures.lock().expect("failure list");
                    if failures.len() >= FAILURE_REPORTS_MAX {
                        failure.run = None;
                    }
                    failures.push(failure);
                }
            });
        }
    });
    progress.finish_and_clear();
    let summary = Summary {
        seeds: seeds.clone(),
        ran: ran.load(Ordering::Relaxed),
        total,
        shard,
        seconds: started.elapsed().as_secs_f64(),
        interrupted: stop.load(Ordering::Relaxed) && !stop_on_failure,
    };
    let mut records = records.into_inner().expect("records");
    records.sort_by_key(|r| r.seed);
    let output = Output {
        format,
        junit: junit.as_deref(),
        coverage: coverage.as_deref(),
        out,
        coverage_gate,
    };
    output.finish(
        failures.into_inner().expect("failure list"),
        table.into_inner().expect("coverage table"),
        &records,
        &summary,
    )
}

/// Where and how `explore` reports.
struct Output<'a> {
    format: Format,
    junit: Option<&'a Path>,
    coverage: Option<&'a Path>,
    out: &'a Path,
    coverage_gate: bool,
}

impl Output<'_> {
    /// Writes the JUnit file, then prints the results as text or JSON lines; returns the
    /// exit code.
    fn finish(
        &self,
        failures: Vec<Failure>,
        table: Table,
        records: &[RunRecord],
        summary: &Summary,
    ) -> Exit {
        let mut codes = Vec::new();
        if let Some(path) = self.junit
            && let Err(e) = write_junit(path, records)
        {
            eprintln!(
                "error: cannot write the JUnit results to {}: {e}",
                path.display()
            );
            codes.push(Exit::Usage);
        }
        let gate = (self.coverage, self.out, self.coverage_gate);
        if self.format == Format::Json {
            // The summary and the failures' details go to stderr: stdout is JSON lines only.
            let (k, n) = summary.shard;
            let more = serde_json::json!({
                "seeds": format!("{}..{}", summary.seeds.start(), summary.seeds.end()),
                "shard": format!("{k}/{n}"),
                "ran": summary.ran,
                "total": summary.total,
                "interrupted": summary.interrupted,
            });
            let more = more.as_object().cloned().unwrap_or_default();
            codes.push(print_json(records, &table, more));
            codes.push(coverage_verdict(&table, gate, false));
            let (k, n) = summary.shard;
            eprintln!(
                "explored {} of {} seeds (shard {k}/{n}) in {:.1} s",
                summary.ran, summary.total, summary.seconds
            );
        } else {
            codes.push(summarize(failures, table, summary, gate));
        }
        worst(codes)
    }
}

/// How far an `explore` got.
struct Summary {
    seeds: RangeInclusive<u64>,
    ran: u64,
    total: u64,
    shard: (u64, u64),
    seconds: f64,
    interrupted: bool,
}

/// Prints the failures, the summary line, the first failing seed per checker and the
/// coverage table; returns the exit code.
fn summarize(
    mut failures: Vec<Failure>,
    table: Table,
    summary: &Summary,
    (coverage, out, coverage_gate): (Option<&Path>, &Path, bool),
) -> Exit {
    failures.sort_by_key(|f| f.seed);
    let mut codes = print_failures(&failures, out);
    let interrupted = if summary.interrupted {
        " (interrupted)"
    } else {
        ""
    };
    let (k, n) = summary.shard;
    println!(
        "explored {} of {} seeds (shard {k}/{n}) in {:.1} s{interrupted}: {} failed",
        summary.ran,
        summary.total,
        summary.seconds,
        failures.len()
    );
    print_first_failures(&failures);
    codes.push(coverage_verdict(
        &table,
        (coverage, out, coverage_gate),
        true,
    ));
    worst(codes)
}

/// Both sets of planted bugs at once (the flat table's flags, or-ed).
fn merge(a: Planted, b: Planted) -> Planted {
    let mut table = serde_json::to_value(a).expect("planted bugs serialize");
    if let (Some(all), serde_json::Value::Object(more)) = (
        table.as_object_mut(),
        serde_json::to_value(b).expect("planted bugs serialize"),
    ) {
        all.extend(more);
    }
    serde_json::from_value(table).expect("a union of planted flags is a planted table")
}

/// Runs one swarm seed; a failure comes back with what its report needs (its file is
/// already saved), a pass as `None`.
#[allow(clippy::disallowed_methods)]
// Long on purpose: one seed from its spec to its coverage, its failure and its record, with
// a panic caught as a finding.
fn explore_seed(
    seed: u64,
    out: &Path,
    recheck: bool,
    planted: Planted,
    server_store: ServerStoreKind,
    want_record: bool,
) -> (Vec<String>, Option<Failure>, Option<RunRecord>) {
    let mut spec = swarm_spec(seed);
    spec.planted = planted;
    spec.sim.server_store = server_store;
    let job = Job {
        label: format!("swarm-{seed}"),
        reproduce: format!(
            "rockhound replay {}",
            out.join(format!("swarm-{seed}.toml")).display()
        ),
        spec,
        seed,
    };
    let run_started = std::time::Instant::now();
    // A panic of the engine or the harness is a finding like any other: reported with its
    // seed, while the other seeds go on.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runner::run(
            &job.spec,
            seed,
            recheck && runner::wants_determinism(&job.spec),
        )
    }));
    let result = match result {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            let error = format!("the run panicked: {message}");
            let record = want_record.then(|| {
                let mut record = results::record(&job, Err(&error), 0.0);
                record.code = Exit::Violation;
                record
            });
            let failure = Failure {
                seed,
                code: Exit::Violation,
                run: None,
                error: Some(error),
            };
            return (Vec::new(), Some(failure), record);
        }
    };
    let wall_s = run_started.elapsed().as_secs_f64();
    let reached = match &result {
        Ok(checked) => coverage::reached(&checked.outcome.trace.lines)
            .into_iter()
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    };
    let record = want_record.then(|| {
        let error = result.as_ref().err().map(ToString::to_string);
        let result = match (&result, &error) {
            (Ok(checked), _) => Ok(checked),
            (Err(_), error) => Err(error.as_deref().unwrap_or_default()),
        };
        results::record(&job, result, wall_s)
    });
    let failure = match result {
        Ok(checked) if checked.passed(&job.spec) => None,
        Ok(checked) => {
            save_failure(out, &job, &checked);
            Some(Failure {
                seed,
                code: code_of(&job, &checked),
                run: Some((job, checked, wall_s)),
                error: None,
            })
        }
        Err(error) => Some(Failure {
            seed,
            code: Exit::Usage,
            run: None,
            error: Some(error.to_string()),
        }),
    };
    (reached, failure, record)
}

/// Prints every failure, in seed order, and returns their exit codes.
fn print_failures(failures: &[Failure], out: &Path) -> Vec<Exit> {
    let mut codes = Vec::new();
    for failure in failures {
        match (&failure.run, &failure.error) {
            (Some((job, checked, wall_s)), _) => {
                codes.push(report(job, checked, *wall_s, None, false));
                println!(
                    "saved {}",
                    out.join(format!("swarm-{}.toml", failure.seed)).display()
                );
            }
            (None, Some(error)) => {
                println!("seed={} error: {error}", failure.seed);
                codes.push(failure.code);
            }
            (None, None) => {
                println!(
                    "seed={} failed (exit {}); saved {}",
                    failure.seed,
                    failure.code.code(),
                    out.join(format!("swarm-{}.toml", failure.seed)).display()
                );
                codes.push(failure.code);
            }
        }
    }
    codes
}

/// How many seeds of `seeds` shard `(k, n)` holds.
fn shard_len(seeds: &RangeInclusive<u64>, (k, n): (u64, u64)) -> u64 {
    let span = seeds.end() - seeds.start();
    if span >= k - 1 {
        (span - (k - 1)) / n + 1
    } else {
        0
    }
}

/// The progress bar over `total` seeds (drawn only on a terminal).
fn progress_bar(total: u64) -> ProgressBar {
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {elapsed_precise} eta {eta}")
            .expect("a valid template"),
    );
    progress
}

/// Prints and writes the coverage table (to `coverage`, or `coverage.json` in `out`) and,
/// with the gate, fails when a declared point is reached by no seed.
/// Writes the coverage table and applies the gate; with `text` the table and the verdict
/// are printed on stdout, else the verdict goes to stderr (stdout holds JSON lines).
pub(super) fn coverage_verdict(
    table: &Table,
    (coverage, out, gate): (Option<&Path>, &Path, bool),
    text: bool,
) -> Exit {
    let json = coverage.map_or_else(|| out.join("coverage.json"), Path::to_path_buf);
    if coverage.is_none()
        && let Err(e) = std::fs::create_dir_all(out)
    {
        eprintln!("error: cannot create {}: {e}", out.display());
        return Exit::Usage;
    }
    let written = report_coverage(table, text, Some(&json));
    if written != Exit::Ok {
        return written;
    }
    let say = |line: String| {
        if text {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    say(format!("coverage table written to {}", json.display()));
    let unreached = table.unreached();
    if gate && !unreached.is_empty() {
        say(format!(
            "coverage gate: {} declared point(s) reached by no seed: {}",
            unreached.len(),
            unreached.join(", ")
        ));
        return Exit::CoverageGap;
    }
    Exit::Ok
}

/// Prints, per checker that fired, the first seed that caught it.
fn print_first_failures(failures: &[Failure]) {
    let mut first: BTreeMap<Checker, u64> = BTreeMap::new();
    for failure in failures {
        let Some((_, checked, _)) = &failure.run else {
            continue;
        };
        for verdict in checked.verdicts() {
            if !verdict.violations.is_empty() {
                let seed = first.entry(verdict.checker).or_insert(failure.seed);
                *seed = (*seed).min(failure.seed);
            }
        }
    }
    for (checker, seed) in first {
        println!("first failing seed of {checker}: {seed}");
    }
}

/// Saves a failing seed's run as an explicit scenario file in `out`.
pub(super) fn save_failure(out: &Path, job: &Job, checked: &Checked) {
    let file = out.join(format!("swarm-{}.toml", job.seed));
    let explicit = exported(&job.spec, job.seed, checked);
    if let Err(e) = std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(&file, scenario::to_toml(&explicit)))
    {
        eprintln!("error: cannot save {}: {e}", file.display());
    }
}

/// A run as the editable file `export` and `explore` write: explicit steps, its seed, and
/// the digest `replay` must reproduce.
pub(super) fn exported(spec: &RunSpec, seed: u64, checked: &Checked) -> RunSpec {
    let mut explicit = materialize(spec, seed, &checked.outcome.trace);
    explicit.expect.digest = Some(checked.outcome.digest.clone());
    explicit
}
