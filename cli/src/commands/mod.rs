//! The simulation commands of the `rockhound` binary: `run`, `check`, `explore`, `merge`,
//! `shrink`, `export`, `replay`, `diff` and `explain`. Each returns its exit code (docs/simulation.md): 0 when every checker holds,
//! 1 on a violation, 2 on a bad scenario or bad arguments, 3 when a determinism re-run
//! disagrees, 4 when `explore --coverage-gate` finds a declared point no seed reached.
//!
//! This file holds what the commands share (exit codes, argument structs, running jobs on
//! threads); each command lives in its own file: `run.rs` (`run`, `compare`), `check.rs`,
//! `explore.rs`, `merge.rs`, `files.rs` (`shrink`, `export`, `replay`), `diff.rs`,
//! `explain.rs`, and `print.rs` (one run's verdict).

mod check;
mod diff;
mod explain;
mod explore;
mod files;
mod merge;
mod print;
mod results;
pub use results::Format;
mod run;

pub use check::check;
pub use diff::diff;
pub use explain::explain;
pub use explore::explore;
pub use files::{export, replay, shrink};
pub use merge::{MergeArgs, merge};
use print::report;
pub use run::{compare, run};

use indicatif::ProgressBar;
use rockhound_engine::planted::Planted;
use rockhound_sim::coverage::{self, Table};
use rockhound_sim::runner::{self, Checked};
use rockhound_sim::scenario::{self, ScenarioError};
use rockhound_sim::spec::RunSpec;
use rockhound_sim::spec::ServerStoreKind;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How a command ends, as its process exit code. Ordered by precedence: when runs end
/// differently, the command ends as the worst of them ([`worst`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Every checker held (exit 0).
    #[default]
    Ok,
    /// `explore --coverage-gate`: a declared coverage point no seed reached (exit 4).
    CoverageGap,
    /// A checker found a violation, or an expectation was unmet (exit 1).
    Violation,
    /// A bad scenario file or bad arguments (exit 2).
    Usage,
    /// A determinism re-run or a recorded digest disagreed (exit 3).
    Nondeterminism,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::CoverageGap => 4,
            Exit::Violation => 1,
            Exit::Usage => 2,
            Exit::Nondeterminism => 3,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> std::process::ExitCode {
        std::process::ExitCode::from(exit.code())
    }
}

/// Most seeds one command runs.
pub const SEED_COUNT_MAX: u64 = 10_000_000;

/// Parses `A..B` (inclusive) or a single seed.
pub fn parse_seeds(text: &str) -> Result<RangeInclusive<u64>, String> {
    let (start, end) = match text.split_once("..") {
        Some((a, b)) => (a, b.trim_start_matches('=')),
        None => (text, text),
    };
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("{text:?} is not a seed or a seed range A..B"))
    };
    let (start, end) = (parse(start)?, parse(end)?);
    if start > end {
        return Err(format!("seed range {text:?} is empty"));
    }
    if end - start >= SEED_COUNT_MAX {
        return Err(format!(
            "seed range {text:?} is longer than {SEED_COUNT_MAX} seeds"
        ));
    }
    Ok(start..=end)
}

/// Parses `K/N` (1-based shard K of N).
pub fn parse_shard(text: &str) -> Result<(u64, u64), String> {
    let error = || format!("--shard {text:?} must be K/N with 1 <= K <= N");
    let (k, n) = text.split_once('/').ok_or_else(error)?;
    let (k, n): (u64, u64) = (
        k.parse().map_err(|_| error())?,
        n.parse().map_err(|_| error())?,
    );
    if k == 0 || n == 0 || k > n {
        return Err(error());
    }
    Ok((k, n))
}

/// `--jobs`: 1 to [`JOBS_MAX`] runs at once.
pub fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(jobs) if (1..=JOBS_MAX).contains(&jobs) => Ok(jobs),
        _ => Err(format!("{text:?} is not a job count from 1 to {JOBS_MAX}")),
    }
}

/// The most runs one command runs at once.
pub const JOBS_MAX: usize = 1024;

/// One run per core by default.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The options of `rockhound run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Scenario files (TOML).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Run with this seed instead of the file's own.
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run every seed of the inclusive range A..B.
    #[arg(long, value_parser = parse_seeds)]
    pub seeds: Option<RangeInclusive<u64>>,
    /// Runs at once (each run is single-threaded).
    #[arg(long, default_value_t = default_jobs(), value_parser = parse_jobs)]
    pub jobs: usize,
    /// Write the trace as JSON Lines to this file (one scenario, one seed).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Skip the determinism re-run.
    #[arg(long)]
    pub no_recheck: bool,
    /// Also write a report (Markdown, HTML, SVG) per run into this folder.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Write the coverage table (every declared point, the runs that reached it, the first
    /// seed) as JSON to this file; with `--seeds` the table is also printed.
    #[arg(long, value_name = "FILE")]
    pub coverage: Option<PathBuf>,
    /// Run the server on this store instead of the file's own (`sim.server_store`).
    #[arg(long, value_name = "memory|sqlite")]
    pub server_store: Option<ServerStoreKind>,
    /// `text` for a person; `json` prints one JSON object per run (seed, digest, verdicts,
    /// counts, coverage), then a summary, one per line.
    #[arg(long, value_enum, default_value_t = results::Format::Text)]
    pub format: results::Format,
    /// Also write the results as JUnit XML to this file (one test case per scenario and
    /// seed; a failure carries the verdicts and the reproduce command).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// The options of `rockhound check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The suite's folder.
    #[arg(long, default_value = "scenarios")]
    pub dir: PathBuf,
    /// Run every scenario with this seed instead of its own.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Runs at once.
    #[arg(long, default_value_t = default_jobs(), value_parser = parse_jobs)]
    pub jobs: usize,
    /// Also run the scenarios marked `slow`.
    #[arg(long)]
    pub slow: bool,
    /// Also write a report per scenario and the suite's index into this folder.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Write the suite's coverage table as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub coverage: Option<PathBuf>,
    /// `text` for a person; `json` prints one JSON object per run (seed, digest, verdicts,
    /// counts, coverage), then a summary, one per line.
    #[arg(long, value_enum, default_value_t = results::Format::Text)]
    pub format: results::Format,
    /// Also write the results as JUnit XML to this file (one test case per scenario and
    /// seed; a failure carries the verdicts and the reproduce command).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// The options of `rockhound explore`.
#[derive(clap::Args)]
pub struct ExploreArgs {
    /// The inclusive seed range A..B.
    #[arg(long, value_parser = parse_seeds, default_value = "0..99")]
    pub seeds: RangeInclusive<u64>,
    /// Stop starting new seeds after this many wall-clock seconds.
    #[arg(long, value_name = "SECONDS")]
    pub time_budget: Option<u64>,
    /// Run only shard K of N of the range (1-based), to split it between machines.
    #[arg(long, value_parser = parse_shard, default_value = "1/1")]
    pub shard: (u64, u64),
    /// Runs at once.
    #[arg(long, default_value_t = default_jobs(), value_parser = parse_jobs)]
    pub jobs: usize,
    /// Where failing seeds are saved as scenario files.
    #[arg(long, default_value = "explore-failures")]
    pub out: PathBuf,
    /// Also re-run every seed to check determinism (doubles the time).
    #[arg(long)]
    pub recheck: bool,
    /// Where the coverage table is written as JSON (default: `coverage.json` in `--out`).
    #[arg(long, value_name = "FILE")]
    pub coverage: Option<PathBuf>,
    /// Exit 4, naming them, when a declared coverage point is reached by no seed of the
    /// range (after every other check passed).
    #[arg(long)]
    pub coverage_gate: bool,
    /// Plant this bug in every swarm run (a `[planted]` flag of docs/scenarios.md, say
    /// `client_ignores_priority`; repeatable): how many seeds the swarm needs to catch it.
    #[arg(long, value_name = "NAME", value_parser = parse_plant)]
    pub plant: Vec<Planted>,
    /// Start no new seed after the first failing one (with `--plant`: the seeds and time
    /// the swarm needs to catch the bug).
    #[arg(long)]
    pub stop_on_failure: bool,
    /// The simulated server's store (`sqlite` runs every seed through the SQL code path).
    #[arg(long, value_name = "memory|sqlite", default_value = "memory")]
    pub server_store: ServerStoreKind,
    /// `text` for a person; `json` prints one JSON object per seed, in seed order, then a
    /// summary (the progress and the failures' details go to stderr).
    #[arg(long, value_enum, default_value_t = results::Format::Text)]
    pub format: results::Format,
    /// Also write the results as JUnit XML to this file (one test case per seed).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// One `--plant` name as the planted bug it switches on.
fn parse_plant(name: &str) -> Result<Planted, String> {
    serde_json::from_value(serde_json::json!({ name: true }))
        .map_err(|e| format!("not a planted bug: {e}"))
}

/// A scenario to run: where it came from and the spec.
#[derive(Clone)]
struct Job {
    label: String,
    reproduce: String,
    spec: RunSpec,
    seed: u64,
}

fn load_all(files: &[PathBuf]) -> Result<Vec<(PathBuf, RunSpec)>, ScenarioError> {
    files
        .iter()
        .map(|f| scenario::load(f).map(|s| (f.clone(), s)))
        .collect()
}

/// One job's result and the wall-clock seconds its run (and re-run) took.
type Done = (Result<Checked, String>, f64);

/// Runs jobs on `jobs` threads (each run is its own single-threaded simulation) and returns
/// the results in job order; `None` for jobs a stop left unstarted. Wall-clock time is
/// measured here, around the simulation, never inside it.
#[allow(clippy::disallowed_methods)]
fn run_jobs(
    jobs: &[Job],
    threads: usize,
    recheck: bool,
    progress: Option<&ProgressBar>,
    stop: &AtomicBool,
) -> Vec<Option<Done>> {
    let results: Vec<Mutex<Option<Done>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = Mutex::new(0usize);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let index = {
                        let mut next = next.lock().expect("job counter");
                        let index = *next;
                        *next += 1;
                        index
                    };
                    let Some(job) = jobs.get(index) else { return };
                    let recheck = recheck && runner::wants_determinism(&job.spec);
                    let started = std::time::Instant::now();
                    let result =
                        runner::run(&job.spec, job.seed, recheck).map_err(|e| e.to_string());
                    let wall_s = started.elapsed().as_secs_f64();
                    *results[index].lock().expect("result slot") = Some((result, wall_s));
                    if let Some(progress) = progress {
                        progress.inc(1);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| m.into_inner().expect("result slot"))
        .collect()
}

/// The exit code of one run.
fn code_of(job: &Job, checked: &Checked) -> Exit {
    if checked.passed(&job.spec) {
        Exit::Ok
    } else if checked.nondeterministic() && job.spec.expect.violation.is_none() {
        Exit::Nondeterminism
    } else {
        Exit::Violation
    }
}

/// Whether the run reproduced the digest its file records: `None` when the file records
/// none, or records it for another seed than the one run.
fn digest_check(job: &Job, checked: &Checked) -> Option<bool> {
    let expected = job.spec.expect.digest.as_ref()?;
    (job.spec.seed.unwrap_or(0) == job.seed).then(|| *expected == checked.outcome.digest)
}

fn worst(codes: impl IntoIterator<Item = Exit>) -> Exit {
    codes.into_iter().max().unwrap_or(Exit::Ok)
}

fn finish(jobs: &[Job], results: Vec<Option<Done>>, trace_out: Option<&Path>, brief: bool) -> Exit {
    let mut codes = Vec::new();
    for (job, result) in jobs.iter().zip(results) {
        match result {
            Some((Ok(checked), wall_s)) => {
                codes.push(report(job, &checked, wall_s, trace_out, brief))
            }
            Some((Err(error), _)) => {
                println!("seed={} error: {}: {error}", job.seed, job.label);
                codes.push(Exit::Usage);
            }
            None => {}
        }
    }
    worst(codes)
}

/// Prints the coverage table when asked to and writes it as JSON when given a file; an
/// unwritable file is a usage error.
fn report_coverage(table: &Table, print: bool, json: Option<&Path>) -> Exit {
    if print {
        print!("{}", table.render());
    }
    for point in table.undeclared() {
        println!("coverage: {point} was marked but is not declared");
    }
    let Some(path) = json else {
        return Exit::Ok;
    };
    let text = serde_json::to_string_pretty(&table.to_json()).expect("JSON values serialize");
    match std::fs::write(path, text + "\n") {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!(
                "error: cannot write the coverage table to {}: {e}",
                path.display()
            );
            Exit::Usage
        }
    }
}

/// The coverage of finished jobs.
fn coverage_of(jobs: &[Job], results: &[Option<Done>]) -> Table {
    let mut table = Table::default();
    for (job, result) in jobs.iter().zip(results) {
        if let Some((Ok(checked), _)) = result {
            table.add(job.seed, coverage::reached(&checked.outcome.trace.lines));
        }
    }
    table
}
