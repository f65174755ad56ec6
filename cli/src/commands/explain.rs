//! `explain`: the life of one op told in order, from a trace: its enqueue, each batch it
//! rode in, each failure and the wait it drew, the server's decision and why, the answer
//! its device took, the pulls that carried its entity to the other devices, and where it
//! ended. Given a scenario instead of a trace, the run is made first; without `--op`, the
//! ops a violation names are told.

use super::Exit;
use super::diff::read;
use rockhound_sim::explain::{as_values, named_ops, story};
use rockhound_sim::{runner, scenario};
use serde_json::Value;
use std::path::Path;

/// `rockhound explain FILE [--seed N] [--op ID]`: exit 0 when a story was told, 1 when the
/// run (a scenario) broke a rule and its ops were told, 2 when the file cannot be read or
/// run, or names no such op.
pub fn explain(file: &Path, seed: Option<u64>, op: Option<&str>) -> Exit {
    let is_trace = file.extension().is_some_and(|e| e == "jsonl");
    let (lines, named, failed) = if is_trace {
        match read(file) {
            Ok(lines) => (
                lines.into_iter().map(|(_, v)| v).collect(),
                Vec::new(),
                false,
            ),
            Err(error) => return usage(&error),
        }
    } else {
        match run(file, seed) {
            Ok(made) => made,
            Err(error) => return usage(&error),
        }
    };
    let ops: Vec<String> = match op {
        Some(op) => vec![op.to_owned()],
        None if !named.is_empty() => named,
        None => {
            return usage(&format!(
                "{}: name an op with --op (the run broke no rule that names one)",
                file.display()
            ));
        }
    };
    for op in &ops {
        let story = story(&lines, op);
        if story.is_empty() {
            return usage(&format!("{}: no op {op} in this run", file.display()));
        }
        println!("op {op}:");
        for line in story {
            println!("  {line}");
        }
    }
    if failed { Exit::Violation } else { Exit::Ok }
}

fn usage(error: &str) -> Exit {
    eprintln!("error: {error}");
    Exit::Usage
}

/// Runs a scenario file; returns its trace as JSON, the ops its violations name (in the
/// order they are first named) and whether it broke a rule.
fn run(file: &Path, seed: Option<u64>) -> Result<(Vec<Value>, Vec<String>, bool), String> {
    let spec = scenario::load(file).map_err(|e| e.to_string())?;
    let seed = seed.or(spec.seed).unwrap_or(0);
    let checked = runner::run(&spec, seed, false).map_err(|e| e.to_string())?;
    let lines = as_values(&checked.outcome.trace.lines);
    let mut failed = false;
    for verdict in checked.verdicts() {
        for violation in &verdict.violations {
            failed = true;
            println!("{violation}");
        }
    }
    let named = named_ops(checked.verdicts());
    Ok((lines, named, failed))
}
