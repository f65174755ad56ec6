//! `run` (scenario files × seeds, with traces and reports) and `compare` (one scenario under
//! several configurations), and the provenance line the reports carry.

use super::results::{Format, print_json, records, write_junit};
use super::{
    Done, Exit, Job, RunArgs, coverage_of, finish, load_all, parse_seeds, report_coverage,
    run_jobs, worst,
};
use rockhound_sim::report::RunReport;
use rockhound_sim::report::compare;
use rockhound_sim::report::page::{self, Provenance};
use rockhound_sim::report::trace_page;
use rockhound_sim::spec::ServerStoreKind;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

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
        coverage: args.coverage.as_deref(),
        coverage_table: args.seeds.is_some(),
        server_store: args.server_store,
        format: args.format,
        junit: args.junit.as_deref(),
    })
}

/// What `run` and `check` run, and how they print it.
pub(super) struct RunPlan<'a> {
    pub(super) files: &'a [PathBuf],
    /// The seeds, or each file's own.
    pub(super) seeds: Option<RangeInclusive<u64>>,
    pub(super) jobs: usize,
    pub(super) trace: Option<&'a Path>,
    /// Whether each run is re-run for determinism.
    pub(super) recheck: bool,
    /// One line per passing run (the suite) instead of the whole verdict.
    pub(super) brief: bool,
    pub(super) report_dir: Option<&'a Path>,
    /// Where the coverage table goes as JSON.
    pub(super) coverage: Option<&'a Path>,
    /// Whether the coverage table is printed.
    pub(super) coverage_table: bool,
    /// The server store every run uses instead of its file's own.
    pub(super) server_store: Option<ServerStoreKind>,
    /// Text for a person, or JSON lines.
    pub(super) format: Format,
    /// Where the JUnit XML goes, if anywhere.
    pub(super) junit: Option<&'a Path>,
}

pub(super) fn run_plan(plan: &RunPlan<'_>) -> Exit {
    let RunPlan {
        files,
        ref seeds,
        jobs,
        trace,
        recheck,
        report_dir,
        server_store,
        format,
        ..
    } = *plan;
    let loaded = match load_all(files) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("error: {error}");
            return Exit::Usage;
        }
    };
    let mut work = Vec::new();
    for (path, mut spec) in loaded {
        if let Some(store) = server_store {
            spec.sim.server_store = store;
        }
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
        // Stdout carries nothing but JSON lines in JSON mode.
        match format {
            Format::Text => println!("reports written to {}", dir.display()),
            Format::Json => eprintln!("reports written to {}", dir.display()),
        }
    }
    output(&work, results, plan)
}

/// Writes the JUnit file and prints the results, as text or JSON lines.
fn output(work: &[Job], results: Vec<Option<Done>>, plan: &RunPlan<'_>) -> Exit {
    let records = records(work, &results);
    if let Some(path) = plan.junit
        && let Err(e) = write_junit(path, &records)
    {
        eprintln!(
            "error: cannot write the JUnit results to {}: {e}",
            path.display()
        );
        return Exit::Usage;
    }
    let table = coverage_of(work, &results);
    if plan.format == Format::Json {
        let code = print_json(&records, &table, serde_json::Map::new());
        return worst([code, report_coverage(&table, false, plan.coverage)]);
    }
    let code = finish(work, results, plan.trace, plan.brief);
    worst([
        code,
        report_coverage(&table, plan.coverage_table, plan.coverage),
    ])
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
pub(super) fn write_reports(
    dir: &Path,
    jobs: &[Job],
    results: &[Option<Done>],
) -> std::io::Result<()> {
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
        let mut files = page::run_files(&report, &provenance);
        files.push(trace_page::file(&report, checked, &provenance));
        page::write_all(dir, &files)?;
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
