//! The simulation commands of the `rockhound` binary: `run`, `check`, `explore`, `shrink`,
//! `export` and `replay`. Each returns its exit code (docs/simulation.md): 0 when every checker holds,
//! 1 on a violation, 2 on a bad scenario or bad arguments, 3 when a determinism re-run
//! disagrees.

use indicatif::{ProgressBar, ProgressStyle};
use rockhound_sim::explore::swarm_spec;
use rockhound_sim::export::materialize;
use rockhound_sim::report::RunReport;
use rockhound_sim::report::compare;
use rockhound_sim::report::page::{self, Provenance};
use rockhound_sim::runner::{self, Checked};
use rockhound_sim::scenario::{self, ScenarioError};
use rockhound_sim::shrink;
use rockhound_sim::spec::RunSpec;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How a command ends, as its process exit code. Ordered by precedence: when runs end
/// differently, the command ends as the worst of them ([`worst`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Every checker held (exit 0).
    Ok,
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

/// Prints one run's block: the contract line `seed=<N> digest=<hex>`, then the verdicts (in
/// `brief` mode a passing run gets one line instead). Returns its exit code.
fn report(
    job: &Job,
    checked: &Checked,
    wall_s: f64,
    trace_out: Option<&Path>,
    brief: bool,
) -> Exit {
    println!("seed={} digest={}", job.seed, checked.outcome.digest);
    let code = code_of(job, checked);
    let expected = job.spec.expect.violation;
    if brief && code == Exit::Ok {
        match expected {
            Some(name) => println!("  ok    {} (planted bug caught by {name})", job.label),
            None => println!("  ok    {}", job.label),
        }
        return code;
    }
    let summary = &checked.outcome.summary;
    println!(
        "scenario {}: {} ops enqueued, {} edits refused, {} applied, {} conflicts, {} rejected, {} dead-lettered, {} expired, {} batches, converged {}",
        job.label,
        summary.enqueued,
        summary.refused,
        summary.applied,
        summary.conflicts,
        summary.rejected,
        summary.dead_lettered,
        summary.expired,
        summary.batches,
        summary
            .convergence_ms
            .map_or("never".to_owned(), |ms| format!("{ms} ms after healing")),
    );
    let runs = if checked.determinism.is_some() { 2 } else { 1 };
    // The run's actual length: it ends once everything converged after healing.
    let simulated_s = summary.simulated_ms as f64 / 1000.0;
    println!(
        "speed: {simulated_s:.0} simulated s per run, {runs} run(s) in {wall_s:.2} wall s: {:.0} simulated s per wall s",
        simulated_s * f64::from(runs) / wall_s.max(1e-9)
    );
    for verdict in checked.verdicts() {
        let state = match (verdict.ran, verdict.violations.len()) {
            (false, _) => "skipped".to_owned(),
            (true, 0) => "ok".to_owned(),
            (true, n) => format!("VIOLATED ({n})"),
        };
        println!("  {:<17} {state}", verdict.checker);
    }
    for verdict in checked.verdicts() {
        for violation in verdict.violations.iter().take(3) {
            print!("{violation}");
        }
    }
    for unmet in &checked.outcome.unmet {
        println!("  unmet expectation: {unmet}");
    }
    if let Some(path) = trace_out {
        match std::fs::File::create(path).and_then(|f| {
            checked
                .outcome
                .trace
                .write_jsonl(std::io::BufWriter::new(f))
        }) {
            Ok(_) => println!("trace written to {}", path.display()),
            Err(e) => {
                eprintln!("error: cannot write the trace to {}: {e}", path.display());
                return Exit::Usage;
            }
        }
    }
    let code = match digest_check(job, checked) {
        Some(false) => {
            println!(
                "digest {} differs from expect.digest {} recorded for seed {}",
                checked.outcome.digest,
                job.spec.expect.digest.as_deref().unwrap_or_default(),
                job.seed
            );
            worst([code, Exit::Nondeterminism])
        }
        _ => code,
    };
    match (code, expected) {
        (Exit::Ok, Some(name)) => println!("result: ok (the planted bug was caught by {name})"),
        (Exit::Ok, None) => println!("result: ok"),
        (Exit::Nondeterminism, _) => println!("result: NONDETERMINISTIC"),
        (_, Some(name)) => {
            println!("result: FAILED (expected {name} to report the planted bug; it did not)")
        }
        (_, None) => println!("result: FAILED"),
    }
    if code != Exit::Ok {
        println!("reproduce: {}", job.reproduce);
    }
    code
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

/// `rockhound run`.
pub fn run(args: &RunArgs) -> Exit {
    run_plan(&RunPlan {
        files: &args.files,
        seeds: args.seeds.clone().or(args.seed.map(|s| s..=s)),
        jobs: args.jobs,
        trace: args.trace.as_deref(),
        recheck: !args.no_recheck,
        brief: false,
        report_dir: args.report.as_deref(),
    })
}

/// What `run` and `check` run, and how they print it.
struct RunPlan<'a> {
    files: &'a [PathBuf],
    /// The seeds, or each file's own.
    seeds: Option<RangeInclusive<u64>>,
    jobs: usize,
    trace: Option<&'a Path>,
    /// Whether each run is re-run for determinism.
    recheck: bool,
    /// One line per passing run (the suite) instead of the whole verdict.
    brief: bool,
    report_dir: Option<&'a Path>,
}

fn run_plan(plan: &RunPlan<'_>) -> Exit {
    let RunPlan {
        files,
        ref seeds,
        jobs,
        trace,
        recheck,
        brief,
        report_dir,
    } = *plan;
    let loaded = match load_all(files) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("error: {error}");
            return Exit::Usage;
        }
    };
    let mut work = Vec::new();
    for (path, spec) in loaded {
        let seeds = seeds.clone().unwrap_or_else(|| {
            let seed = spec.seed.unwrap_or(0);
            seed..=seed
        });
        for seed in seeds {
            work.push(Job {
                label: spec.name.clone(),
                reproduce: format!("rockhound run {} --seed {seed}", path.display()),
                spec: spec.clone(),
                seed,
            });
        }
    }
    if trace.is_some() && work.len() > 1 {
        eprintln!("error: --trace takes one scenario and one seed");
        return Exit::Usage;
    }
    // Find out before the run, not after it, that the trace cannot be written.
    if let Some(path) = trace
        && let Err(e) = std::fs::File::create(path)
    {
        eprintln!("error: cannot write the trace to {}: {e}", path.display());
        return Exit::Usage;
    }
    let results = run_jobs(&work, jobs, recheck, None, &AtomicBool::new(false));
    if let Some(dir) = report_dir {
        if let Err(e) = write_reports(dir, &work, &results) {
            eprintln!("error: cannot write the reports to {}: {e}", dir.display());
            return Exit::Usage;
        }
        println!("reports written to {}", dir.display());
    }
    finish(&work, results, trace, brief)
}

/// Where the reports come from: the git commit (with `+dirty` for uncommitted changes) and
/// the digest of `Cargo.lock`, looked up from the working directory.
pub fn provenance() -> Provenance {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = match (git(&["rev-parse", "HEAD"]), git(&["status", "--porcelain"])) {
        (Some(commit), Some(status)) if !status.is_empty() => format!("{commit}+dirty"),
        (Some(commit), _) => commit,
        (None, _) => "unknown".to_owned(),
    };
    let lock_digest = std::env::current_dir()
        .ok()
        .and_then(|dir| {
            dir.ancestors()
                .map(|d| d.join("Cargo.lock"))
                .find(|p| p.is_file())
        })
        .and_then(|path| std::fs::read(path).ok())
        .map_or("unknown".to_owned(), |bytes| {
            rockhound_engine::checksum::sha256_hex(&bytes)
        });
    Provenance {
        commit,
        lock_digest,
    }
}

/// Writes a page per run and the suite's index into `dir`. Runs of one scenario over
/// several seeds get the seed in their page's name.
fn write_reports(dir: &Path, jobs: &[Job], results: &[Option<Done>]) -> std::io::Result<()> {
    let provenance = provenance();
    let mut runs_of: BTreeMap<&str, usize> = BTreeMap::new();
    for job in jobs {
        *runs_of.entry(job.label.as_str()).or_default() += 1;
    }
    let mut reports = Vec::new();
    for (job, result) in jobs.iter().zip(results) {
        let Some((Ok(checked), _)) = result else {
            continue;
        };
        let mut report = RunReport::new(&job.spec, checked);
        report.reproduce = job.reproduce.clone();
        if runs_of[job.label.as_str()] > 1 {
            report.name = format!("{}-seed-{}", job.label, job.seed);
        }
        page::write_all(dir, &page::run_files(&report, &provenance))?;
        reports.push(report);
    }
    page::write_all(dir, &page::suite_files(&reports, &provenance))
}

/// `rockhound compare`: each comparison file's variants on the same seeds.
pub fn compare(files: &[PathBuf], seeds: Option<RangeInclusive<u64>>, out: &Path) -> Exit {
    let provenance = provenance();
    for file in files {
        let spec = match compare::load(file) {
            Ok(spec) => spec,
            Err(error) => {
                eprintln!("error: {error}");
                return Exit::Usage;
            }
        };
        let range = match seeds.clone().map_or_else(|| parse_seeds(&spec.seeds), Ok) {
            Ok(range) => range,
            Err(error) => {
                eprintln!("error: {}: {error}", file.display());
                return Exit::Usage;
            }
        };
        let results = compare::run(&spec, range);
        let stem = file.file_stem().map_or("comparison".to_owned(), |s| {
            s.to_string_lossy().into_owned()
        });
        for result in &results {
            println!(
                "{stem} / {}: {} of {} runs hold; {}",
                result.name,
                result.held,
                result.runs,
                result
                    .means
                    .iter()
                    .map(|(metric, mean)| format!("{metric} {mean:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Err(e) = page::write_all(out, &compare::files(&stem, &spec, &results, &provenance)) {
            eprintln!("error: cannot write to {}: {e}", out.display());
            return Exit::Usage;
        }
    }
    println!("comparisons written to {}", out.display());
    Exit::Ok
}

/// Every `.toml` under `dir` and `dir/negative`, sorted.
pub fn suite_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for folder in [dir.to_path_buf(), dir.join("negative")] {
        if !folder.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `rockhound check`: the whole scenario suite, without the scenarios marked `slow` unless
/// `slow`.
pub fn check(args: &CheckArgs) -> Exit {
    let dir = args.dir.as_path();
    let slow = args.slow;
    let files = match suite_files(dir) {
        Ok(files) if !files.is_empty() => files,
        Ok(_) => {
            eprintln!("error: no scenario files in {}", dir.display());
            return Exit::Usage;
        }
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", dir.display());
            return Exit::Usage;
        }
    };
    let mut chosen = Vec::new();
    let mut skipped = 0;
    for file in files {
        match scenario::load(&file) {
            Ok(spec) if spec.slow && !slow => skipped += 1,
            // A broken file is reported by `run` below.
            _ => chosen.push(file),
        }
    }
    println!(
        "checking {} scenarios from {}{}",
        chosen.len(),
        dir.display(),
        if skipped > 0 {
            format!(" ({skipped} slow ones skipped; --slow runs them)")
        } else {
            String::new()
        }
    );
    let code = run_plan(&RunPlan {
        files: &chosen,
        seeds: args.seed.map(|s| s..=s),
        jobs: args.jobs,
        trace: None,
        recheck: true,
        brief: true,
        report_dir: args.report.as_deref(),
    });
    println!(
        "suite: {}",
        if code == Exit::Ok {
            "every scenario holds"
        } else {
            "FAILED"
        }
    );
    code
}

/// The most failing seeds of one `explore` whose whole report is kept to print at the end;
/// later failures are saved as files and listed by seed, so memory stays bounded however
/// many seeds fail.
const FAILURE_REPORTS_MAX: usize = 20;

/// A failing seed of `explore`: its exit code, and its run while within
/// [`FAILURE_REPORTS_MAX`].
struct Failure {
    seed: u64,
    code: Exit,
    run: Option<(Job, Checked, f64)>,
    error: Option<String>,
}

/// Sets `stop` on the first Ctrl-C (SIGINT), so that no new seed starts and what was found
/// so far is saved and summarized; a second Ctrl-C ends the process at once.
fn stop_on_interrupt(stop: std::sync::Arc<AtomicBool>) {
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
fn shard_seeds(seeds: &RangeInclusive<u64>, (k, n): (u64, u64)) -> impl Fn(u64) -> Option<u64> {
    let (start, end) = (*seeds.start(), *seeds.end());
    move |i| {
        let offset = i.checked_mul(n)?.checked_add(k - 1)?;
        start.checked_add(offset).filter(|seed| *seed <= end)
    }
}

/// `rockhound explore`: swarm scenarios over a seed range. Each seed's scenario is built
/// when a worker takes the seed and dropped when its run is judged, so memory does not
/// depend on the range's length.
#[allow(clippy::disallowed_methods)]
pub fn explore(args: &ExploreArgs) -> Exit {
    let ExploreArgs {
        ref seeds,
        time_budget: time_budget_s,
        shard,
        jobs,
        ref out,
        recheck,
    } = *args;
    let out = out.as_path();
    let (k, n) = shard;
    let seed_at = shard_seeds(seeds, shard);
    let span = seeds.end() - seeds.start();
    let total = if span >= k - 1 {
        (span - (k - 1)) / n + 1
    } else {
        0
    };
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {elapsed_precise} eta {eta}")
            .expect("a valid template"),
    );
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    stop_on_interrupt(stop.clone());
    let next = std::sync::atomic::AtomicU64::new(0);
    let ran = std::sync::atomic::AtomicU64::new(0);
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
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
                    let job = Job {
                        label: format!("swarm-{seed}"),
                        reproduce: format!(
                            "rockhound replay {}",
                            out.join(format!("swarm-{seed}.toml")).display()
                        ),
                        spec: swarm_spec(seed),
                        seed,
                    };
                    let run_started = std::time::Instant::now();
                    let result = runner::run(
                        &job.spec,
                        seed,
                        recheck && runner::wants_determinism(&job.spec),
                    );
                    let wall_s = run_started.elapsed().as_secs_f64();
                    ran.fetch_add(1, Ordering::Relaxed);
                    progress.inc(1);
                    let failure = match result {
                        Ok(checked) if checked.passed(&job.spec) => continue,
                        Ok(checked) => {
                            save_failure(out, &job, &checked);
                            Failure {
                                seed,
                                code: code_of(&job, &checked),
                                run: Some((job, checked, wall_s)),
                                error: None,
                            }
                        }
                        Err(error) => Failure {
                            seed,
                            code: Exit::Usage,
                            run: None,
                            error: Some(error.to_string()),
                        },
                    };
                    let mut failures = failures.lock().expect("failure list");
                    let mut failure = failure;
                    if failures.len() >= FAILURE_REPORTS_MAX {
                        failure.run = None;
                    }
                    failures.push(failure);
                }
            });
        }
    });
    progress.finish_and_clear();
    let mut failures = failures.into_inner().expect("failure list");
    failures.sort_by_key(|f| f.seed);
    let mut codes = Vec::new();
    for failure in &failures {
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
    let interrupted = if stop.load(Ordering::Relaxed) {
        " (interrupted)"
    } else {
        ""
    };
    println!(
        "explored {} of {total} seeds (shard {k}/{n}) in {:.1} s{interrupted}: {} failed",
        ran.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    worst(codes)
}

/// Saves a failing seed's run as an explicit scenario file in `out`.
fn save_failure(out: &Path, job: &Job, checked: &Checked) {
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
fn exported(spec: &RunSpec, seed: u64, checked: &Checked) -> RunSpec {
    let mut explicit = materialize(spec, seed, &checked.outcome.trace);
    explicit.expect.digest = Some(checked.outcome.digest.clone());
    explicit
}

/// The spec and seed of `shrink` and `export`: the file with `--seed` or its own seed, or
/// the swarm scenario of `--seed`.
fn spec_for(file: Option<&Path>, seed: Option<u64>) -> Result<(RunSpec, u64), Exit> {
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
