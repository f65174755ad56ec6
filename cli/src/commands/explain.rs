//! `explain`: the life of one op told in order, from a trace: its enqueue, each batch it
//! rode in, each failure and the wait it drew, the server's decision and why, the answer
//! its device took, the pulls that carried its entity to the other devices, and where it
//! ended. Given a scenario instead of a trace, the run is made first; without `--op`, the
//! ops a violation names are told.

use super::Exit;
use super::diff::read;
use rockhound_sim::{runner, scenario};
use serde_json::Value;
use std::collections::BTreeSet;
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
    let lines = checked
        .outcome
        .trace
        .lines
        .iter()
        .map(|line| serde_json::from_str(&line.to_json()).expect("trace lines are JSON"))
        .collect();
    let mut named = Vec::new();
    let mut failed = false;
    for verdict in checked.verdicts() {
        for violation in &verdict.violations {
            failed = true;
            println!("{violation}");
            for (_, quoted) in &violation.events {
                let value: Value = serde_json::from_str(quoted).unwrap_or_default();
                for op in op_ids(&value) {
                    if !named.contains(&op) {
                        named.push(op);
                    }
                }
            }
        }
    }
    Ok((lines, named, failed))
}

/// Every op id a trace line names.
fn op_ids(value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    match value {
        Value::Object(map) => {
            for (key, member) in map {
                match (key.as_str(), member) {
                    ("op_id", Value::String(op)) => found.push(op.clone()),
                    ("op_ids", Value::Array(ops)) => {
                        found.extend(ops.iter().filter_map(Value::as_str).map(str::to_owned));
                    }
                    _ => found.extend(op_ids(member)),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| found.extend(op_ids(item))),
        _ => {}
    }
    found
}

/// The op's story, one sentence per event, with its time and host.
// Long on purpose: one match over the trace's kinds, each a sentence of the story.
fn story(lines: &[Value], op: &str) -> Vec<String> {
    let mut story = Vec::new();
    let mut entity: Option<(String, String)> = None;
    let mut device = String::new();
    let mut committed_at: Option<u64> = None;
    let mut carried: BTreeSet<String> = BTreeSet::new();
    for line in lines {
        let t = line["t_ms"].as_u64().unwrap_or(0);
        let host = line["host"].as_str().unwrap_or("?");
        let at = |text: String| format!("t={t} ms  {host:<10} {text}");
        let event = &line["event"];
        let sentence = match (line["kind"].as_str(), event["event"].as_str()) {
            (Some("client"), Some("enqueued")) if event["op_id"] == op => {
                entity = Some((str_of(&event["entity_type"]), str_of(&event["entity_id"])));
                device = host.to_owned();
                Some(format!(
                    "enqueued: {} {} {} at priority {}{}",
                    str_of(&event["kind"]),
                    str_of(&event["entity_type"]),
                    str_of(&event["entity_id"]),
                    event["priority"],
                    waits_on(&event["blockers"])
                ))
            }
            (Some("client"), Some("batch_sent")) => {
                let ops = event["op_ids"].as_array().cloned().unwrap_or_default();
                ops.iter().position(|o| o == op).map(|i| {
                    format!(
                        "sent in batch {} ({} of {})",
                        str_of(&event["batch_id"]),
                        i + 1,
                        ops.len()
                    )
                })
            }
            (Some("client"), Some("op")) if event["op_id"] == op => Some(status(event)),
            (Some("client"), Some("discarded")) if event["op_id"] == op => Some(format!(
                "discarded by its user while {}",
                str_of(&event["status"])
            )),
            (Some("decided"), _) if line["op_id"] == op => {
                if matches!(line["status"].as_str(), Some("applied" | "conflict")) {
                    committed_at.get_or_insert(t);
                }
                Some(decision(line))
            }
            (Some("answered"), _) => answered(line, op),
            (Some("pulled"), _) if committed_at.is_some() && host != device => {
                let carries = entity.as_ref().is_some_and(|(kind, id)| {
                    line["keys"].as_array().is_some_and(|keys| {
                        keys.iter()
                            .any(|k| k[0] == kind.as_str() && k[1] == id.as_str())
                    })
                });
                (carries && carried.insert(host.to_owned()))
                    .then(|| "pulled its entity (first time on this device)".to_owned())
            }
            (Some("crashed"), _) if host == device && !story.is_empty() => {
                Some("its device crashed".to_owned())
            }
            (Some("final_device"), _) => line["queue"].as_array().and_then(|queue| {
                queue
                    .iter()
                    .find(|entry| entry[0] == op)
                    .map(|entry| format!("ends in the queue as {}", str_of(&entry[1])))
            }),
            (Some("final_commit"), _) if line["row"]["op_id"] == op => Some(format!(
                "in the server's log: commit {} {} {}, version {}",
                line["row"]["seq"],
                str_of(&line["row"]["action"]),
                str_of(&line["row"]["status"]),
                line["row"]["version"]
            )),
            _ => None,
        };
        if let Some(sentence) = sentence {
            story.push(at(sentence));
        }
    }
    story
}

fn str_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn waits_on(blockers: &Value) -> String {
    match blockers.as_array() {
        Some(ops) if !ops.is_empty() => {
            let ops: Vec<String> = ops.iter().map(str_of).collect();
            format!(", waits on {}", ops.join(", "))
        }
        _ => String::new(),
    }
}

/// A status change of the op on its device.
fn status(event: &Value) -> String {
    let mut text = format!(
        "now {} (attempts {})",
        str_of(&event["status"]),
        event["attempts"]
    );
    if let Some(reason) = event["reason"].as_str() {
        text.push_str(&format!(", {reason}"));
    }
    if let Some(delay) = event["delay_ms"].as_u64() {
        text.push_str(&format!(
            "; waits {delay} ms, until {}",
            event["next_attempt_at_ms"]
        ));
    }
    if let Some(blocker) = event["blocked_by"].as_str() {
        text.push_str(&format!("; blocked by {blocker}"));
    }
    text
}

/// The server's decision.
fn decision(line: &Value) -> String {
    let mut text = format!("server decided: {}", str_of(&line["status"]));
    if let Some(reason) = line["reason"].as_str() {
        text.push_str(&format!(" ({reason})"));
    }
    if let Some(strategy) = line["strategy"].as_str() {
        text.push_str(&format!(
            " by {strategy}, meeting version {}",
            line["met_version"]
        ));
    }
    if let Some(version) = line["version"].as_u64() {
        text.push_str(&format!(", now version {version}"));
    }
    text
}

/// The answer a device took, if it names the op.
fn answered(line: &Value, op: &str) -> Option<String> {
    let result = line["results"]
        .as_array()?
        .iter()
        .find(|result| result[0] == op)?;
    let taken = if line["batch_id"].is_null() {
        "an answer nobody took (a replayed or forged request)"
    } else {
        "its device took the answer"
    };
    Some(format!(
        "{taken}: {}{}",
        str_of(&result[1]),
        result[2]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    ))
}
