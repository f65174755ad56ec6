//! `rockhound merge`: the results of `explore --shard K/N` runs, made on separate machines
//! (a CI matrix, a cluster's indexed job), combined into what one unsharded `explore` over
//! the whole range reports: one list of runs in seed order, one summary, one coverage table
//! (with its gate) and one folder of failing seeds' scenario files (docs/simulation.md,
//! "Sharded runs").
//!
//! Each shard is a folder holding `results.jsonl` (its `--format json` output) and the
//! scenario files its `--out` saved, or the `.jsonl` file itself with the scenario files
//! beside it. The shards must be the N shards of one range, each once.

use super::explore::coverage_verdict;
use super::results::{Format, RunRecord, exit_of, print_json, write_junit};
use super::{Exit, worst};
use rockhound_sim::coverage::Table;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The options of `rockhound merge`.
#[derive(clap::Args)]
pub struct MergeArgs {
    /// Each shard's results: a folder with `results.jsonl` and its saved scenario files,
    /// or a `.jsonl` file with the scenario files beside it.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Where the failing seeds' scenario files and the coverage table are written.
    #[arg(long, default_value = "explore-failures")]
    pub out: PathBuf,
    /// Where the coverage table is written as JSON (default: `coverage.json` in `--out`).
    #[arg(long, value_name = "FILE")]
    pub coverage: Option<PathBuf>,
    /// Exit 4, naming them, when a declared coverage point is reached by no seed of any
    /// shard.
    #[arg(long)]
    pub coverage_gate: bool,
    /// `text` for a person; `json` prints the merged runs, one JSON object per seed in seed
    /// order, then the summary, as `explore --format json` does.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Also write the merged results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// One shard's output, read back.
struct Shard {
    /// Where its scenario files are.
    dir: PathBuf,
    /// `K/N`.
    shard: (u64, u64),
    /// The range it was a shard of, as `A..B`.
    seeds: String,
    ran: u64,
    total: u64,
    records: Vec<RunRecord>,
}

/// `rockhound merge`; returns the exit code: the worst of the merged runs' (as `explore`
/// would end), 4 for a coverage gap under `--coverage-gate`, 2 when the shards cannot be
/// read or do not make up one range.
pub fn merge(args: &MergeArgs) -> Exit {
    let shards: Vec<Shard> = match args.shards.iter().map(|path| read_shard(path)).collect() {
        Ok(shards) => shards,
        Err(message) => {
            eprintln!("error: {message}");
            return Exit::Usage;
        }
    };
    if let Err(message) = one_range(&shards) {
        eprintln!("error: {message}");
        return Exit::Usage;
    }
    let mut codes = Vec::new();
    let mut records: Vec<(RunRecord, PathBuf)> = Vec::new();
    let mut seen = BTreeSet::new();
    for shard in &shards {
        if shard.ran < shard.total {
            eprintln!(
                "note: shard {}/{} ran {} of its {} seeds (interrupted or over its time budget)",
                shard.shard.0, shard.shard.1, shard.ran, shard.total
            );
        }
        for record in &shard.records {
            if !seen.insert(record.seed) {
                eprintln!("error: seed {} is in more than one shard", record.seed);
                return Exit::Usage;
            }
        }
    }
    for shard in shards {
        for mut record in shard.records {
            record.code = exit_of(&record.result);
            // The scenario file is now in the merged folder, as an unsharded run saves it.
            let file = args.out.join(format!("swarm-{}.toml", record.seed));
            record.reproduce = format!("rockhound replay {}", file.display());
            records.push((record, shard.dir.clone()));
        }
    }
    records.sort_by_key(|(record, _)| record.seed);
    let mut table = Table::default();
    for (record, _) in &records {
        table.add(record.seed, record.coverage.iter().map(String::as_str));
    }
    codes.push(copy_failures(&records, &args.out));
    let records: Vec<RunRecord> = records.into_iter().map(|(record, _)| record).collect();
    if let Some(path) = &args.junit
        && let Err(e) = write_junit(path, &records)
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        codes.push(Exit::Usage);
    }
    let gate = (
        args.coverage.as_deref(),
        args.out.as_path(),
        args.coverage_gate,
    );
    if args.format == Format::Json {
        let more = serde_json::json!({ "shards": args.shards.len() });
        codes.push(print_json(
            &records,
            &table,
            more.as_object().cloned().unwrap_or_default(),
        ));
        codes.push(coverage_verdict(&table, gate, false));
    } else {
        codes.push(print_text(&records, args.shards.len(), &args.out));
        codes.push(coverage_verdict(&table, gate, true));
    }
    worst(codes)
}

/// Reads one shard: its records and the summary line `explore --format json` ends with.
fn read_shard(path: &Path) -> Result<Shard, String> {
    let (file, dir) = if path.is_dir() {
        (path.join("results.jsonl"), path.to_path_buf())
    } else {
        let dir = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        (path.to_path_buf(), dir)
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut records = Vec::new();
    let mut summary = None;
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{}:{}", file.display(), index + 1);
        let value: Value =
            serde_json::from_str(line).map_err(|e| format!("{}: not JSON: {e}", at()))?;
        if let Some(found) = value.get("summary") {
            summary = Some(found.clone());
            continue;
        }
        let record: RunRecord = serde_json::from_value(value)
            .map_err(|e| format!("{}: not a run of `explore --format json`: {e}", at()))?;
        records.push(record);
    }
    let summary = summary.ok_or_else(|| {
        format!(
            "{} has no summary line: is it the whole output of `explore --format json`?",
            file.display()
        )
    })?;
    let field = |name: &str| {
        summary.get(name).ok_or_else(|| {
            format!(
                "{}: the summary has no `{name}`: not from `explore`",
                file.display()
            )
        })
    };
    let count = |name: &str| {
        field(name)?.as_u64().ok_or_else(|| {
            format!(
                "{}: the summary's `{name}` is not a count of seeds",
                file.display()
            )
        })
    };
    let shard_text = field("shard")?.as_str().unwrap_or_default();
    let shard = super::parse_shard(shard_text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(Shard {
        dir,
        shard,
        seeds: field("seeds")?.as_str().unwrap_or_default().to_owned(),
        ran: count("ran")?,
        total: count("total")?,
        records,
    })
}

/// Checks that the shards are the N shards of one range, each once.
fn one_range(shards: &[Shard]) -> Result<(), String> {
    let first = &shards[0];
    let n = first.shard.1;
    let mut ks = BTreeMap::new();
    for shard in shards {
        if shard.seeds != first.seeds || shard.shard.1 != n {
            return Err(format!(
                "shard {}/{} of seeds {} does not belong with shard {}/{} of seeds {}",
                shard.shard.0, shard.shard.1, shard.seeds, first.shard.0, n, first.seeds
            ));
        }
        if ks.insert(shard.shard.0, ()).is_some() {
            return Err(format!("shard {}/{n} is given twice", shard.shard.0));
        }
    }
    let missing: Vec<String> = (1..=n)
        .filter(|k| !ks.contains_key(k))
        .map(|k| format!("{k}/{n}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "shard(s) {} of seeds {} missing",
            missing.join(", "),
            first.seeds
        ));
    }
    Ok(())
}

/// Copies each failing seed's scenario file from its shard's folder into `out`.
fn copy_failures(records: &[(RunRecord, PathBuf)], out: &Path) -> Exit {
    let mut code = Exit::Ok;
    for (record, dir) in records {
        if !matches!(record.code, Exit::Violation | Exit::Nondeterminism) {
            continue;
        }
        let name = format!("swarm-{}.toml", record.seed);
        let (from, to) = (dir.join(&name), out.join(&name));
        if from == to {
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(out).and_then(|()| std::fs::copy(&from, &to)) {
            eprintln!(
                "error: cannot copy the failing seed's scenario {} to {}: {e}",
                from.display(),
                to.display()
            );
            code = Exit::Usage;
        }
    }
    code
}

/// Prints each failure (its violations and where its scenario file is), the summary line
/// and the first failing seed of each checker; returns the worst run's exit code.
fn print_text(records: &[RunRecord], shards: usize, out: &Path) -> Exit {
    let mut first: BTreeMap<&str, u64> = BTreeMap::new();
    let failed: Vec<&RunRecord> = records.iter().filter(|r| r.code != Exit::Ok).collect();
    for record in &failed {
        println!(
            "seed={} digest={} result: {}",
            record.seed, record.digest, record.result
        );
        for verdict in &record.verdicts {
            for violation in &verdict.violations {
                print!("{violation}");
                if !violation.ends_with('\n') {
                    println!();
                }
            }
            if !verdict.violations.is_empty() {
                first.entry(&verdict.checker).or_insert(record.seed);
            }
        }
        if let Some(error) = &record.error {
            println!("error: {error}");
        } else {
            println!(
                "saved {}",
                out.join(format!("swarm-{}.toml", record.seed)).display()
            );
        }
    }
    println!(
        "merged {shards} shard(s): {} seeds, {} failed",
        records.len(),
        failed.len()
    );
    for (checker, seed) in first {
        println!("first failing seed of {checker}: {seed}");
    }
    worst(records.iter().map(|r| r.code))
}
