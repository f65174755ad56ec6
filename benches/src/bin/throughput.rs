//! Records the simulation's throughput for the current commit: one run of
//! `scenarios/speed_ten_devices_one_hour.toml` (simulated seconds per wall second) and the
//! swarm over seeds 0..199 on one thread (seeds per minute), appended as one row of
//! `benches/throughput-history.csv`, which `rockhound report` draws as `throughput.md`.
//!
//! ```sh
//! cargo run --release -p rockhound-benches --bin throughput -- "2 cores, Xeon"   # MACHINE
//! cargo run --release -p rockhound-benches --bin throughput -- --dry-run "2 cores, Xeon"
//! ```
//!
//! Wall-clock figures: compare rows of one machine. The commit is `git rev-parse --short
//! HEAD` (with `+dirty` for uncommitted changes), the date today's in UTC.

// A measurement tool, not the simulation: it times runs by the wall clock.
#![allow(clippy::disallowed_methods)]

use rockhound_sim::explore::swarm_spec;
use rockhound_sim::report::history::{self, HEADER, Row};
use rockhound_sim::{runner, scenario};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The swarm seeds timed.
const SWARM_SEEDS: u64 = 200;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dry_run = args.iter().any(|a| a == "--dry-run");
    let Some(machine) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: throughput [--dry-run] MACHINE (a few words: cores, CPU)");
        return ExitCode::from(2);
    };
    match record(machine, dry_run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn record(machine: &str, dry_run: bool) -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = root.join("benches").join("throughput-history.csv");
    let speed_file = root
        .join("scenarios")
        .join("speed_ten_devices_one_hour.toml");
    let spec = scenario::load(&speed_file).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let checked = runner::run(&spec, 0, false).map_err(|e| e.to_string())?;
    let wall_s = started.elapsed().as_secs_f64();
    let speed = checked.outcome.summary.simulated_ms as f64 / 1000.0 / wall_s;
    let started = Instant::now();
    for seed in 0..SWARM_SEEDS {
        runner::run(&swarm_spec(seed), seed, false).map_err(|e| format!("seed {seed}: {e}"))?;
    }
    let swarm = SWARM_SEEDS as f64 * 60.0 / started.elapsed().as_secs_f64();
    let row = Row {
        date: today(),
        commit: commit(&root),
        machine: machine.to_owned(),
        speed,
        swarm,
    };
    let line = history::line(&row);
    println!("{HEADER}\n{line}");
    if dry_run {
        return Ok(());
    }
    let mut text = std::fs::read_to_string(&file).unwrap_or_else(|_| format!("{HEADER}\n"));
    history::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&line);
    text.push('\n');
    std::fs::write(&file, text).map_err(|e| format!("{}: {e}", file.display()))?;
    println!("appended to {}", file.display());
    Ok(())
}

/// Today's date in UTC, `YYYY-MM-DD`.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    civil_date(i64::try_from(secs / 86_400).unwrap_or(0))
}

/// The civil date (`YYYY-MM-DD`) `days` after 1970-01-01.
fn civil_date(days: i64) -> String {
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The short hash of HEAD, `+dirty` with uncommitted changes; `unknown` outside git.
fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(hash) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".to_owned();
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{hash}+dirty") } else { hash }
}

#[cfg(test)]
mod tests {
    use super::civil_date;

    #[test]
    fn days_since_the_epoch_become_civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(-1), "1969-12-31");
        // 2024 is a leap year (divisible by 4), 2000 too (by 400), 2100 is not (by 100).
        assert_eq!(civil_date(19_782), "2024-02-29");
        assert_eq!(civil_date(19_783), "2024-03-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(47_540), "2100-02-28");
        assert_eq!(civil_date(47_541), "2100-03-01");
        assert_eq!(civil_date(20_789), "2026-12-02");
    }
}
