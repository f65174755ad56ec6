//! `check`: the scenario suite, each scenario with its own seed and a determinism re-run.

use super::results::Format;
use super::run::{RunPlan, run_plan};
use super::{CheckArgs, Exit};
use rockhound_sim::report::{history, page};
use rockhound_sim::scenario::{self};
use std::path::{Path, PathBuf};

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
    let say = |line: String| match args.format {
        Format::Text => println!("{line}"),
        // Stdout carries nothing but JSON lines in JSON mode.
        Format::Json => eprintln!("{line}"),
    };
    say(format!(
        "checking {} scenarios from {}{}",
        chosen.len(),
        dir.display(),
        if skipped > 0 {
            format!(" ({skipped} slow ones skipped; --slow runs them)")
        } else {
            String::new()
        }
    ));
    let code = run_plan(&RunPlan {
        files: &chosen,
        seeds: args.seed.map(|s| s..=s),
        jobs: args.jobs,
        trace: None,
        recheck: true,
        brief: true,
        report_dir: args.report.as_deref(),
        coverage: args.coverage.as_deref(),
        coverage_table: true,
        server_store: None,
        format: args.format,
        junit: args.junit.as_deref(),
    });
    let code = match &args.report {
        Some(out) => super::worst([code, throughput_page(dir, out)]),
        None => code,
    };
    say(format!(
        "suite: {}",
        if code == Exit::Ok {
            "every scenario holds"
        } else {
            "FAILED"
        }
    ));
    code
}

/// Beside the suite's reports, the simulation's throughput history (`throughput.md`), when
/// the repository beside the suite's folder has `benches/throughput-history.csv`.
fn throughput_page(suite: &Path, out: &Path) -> Exit {
    let root = suite.parent().unwrap_or_else(|| Path::new("."));
    let file = root.join("benches").join("throughput-history.csv");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Exit::Ok;
    };
    let written = history::parse(&text)
        .map_err(|e| format!("{}: {e}", file.display()))
        .and_then(|rows| page::write_all(out, &history::files(&rows)).map_err(|e| e.to_string()));
    match written {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Usage
        }
    }
}
