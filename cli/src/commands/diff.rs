//! `diff`: two traces (two seeds, or one seed on two builds) side by side: the first event
//! where they part, then what differs in sum: events per kind, and each op's final status.

use super::Exit;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The longest line shown whole; longer ones are cut with `…`.
const SHOWN_CHARS_MAX: usize = 400;

/// `rockhound diff A B`: exit 0 when the traces are the same, 1 when they differ, 2 when a
/// file cannot be read or holds a line that is not JSON.
pub fn diff(a: &Path, b: &Path) -> Exit {
    let (lines_a, lines_b) = match (read(a), read(b)) {
        (Ok(lines_a), Ok(lines_b)) => (lines_a, lines_b),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("error: {error}");
            return Exit::Usage;
        }
    };
    // The run lines (seed, scenario, configuration) are compared apart: two seeds always
    // differ there, and the question is where their events part.
    let header_differs = header_difference(&lines_a, &lines_b);
    let skip = usize::from(header_differs.is_some());
    let at = first_difference(
        &lines_a[skip.min(lines_a.len())..],
        &lines_b[skip.min(lines_b.len())..],
    )
    .map(|i| i + skip);
    if let Some(keys) = &header_differs {
        println!("the runs differ in: {}", keys.join(", "));
    }
    let Some(at) = at else {
        if header_differs.is_some() {
            println!("their events are the same ({} events)", lines_a.len());
            return Exit::Violation;
        }
        println!("the traces are the same ({} events)", lines_a.len());
        return Exit::Ok;
    };
    println!(
        "the traces part at line {} ({} and {} events in all)",
        at + 1,
        lines_a.len(),
        lines_b.len()
    );
    if at > 0 {
        println!("  last shared: {}", shown(&lines_a[at - 1].0));
    }
    for (name, lines) in [("A", &lines_a), ("B", &lines_b)] {
        match lines.get(at) {
            Some((text, _)) => println!("  {name}: {}", shown(text)),
            None => println!("  {name}: (ends here)"),
        }
    }
    print_kinds(&lines_a, &lines_b);
    print_ops(&lines_a, &lines_b);
    Exit::Violation
}

/// The lines of a trace file, each with its parsed JSON.
/// A JSON Lines trace: each line's text and value; the first line that is not JSON is an
/// error naming it.
pub(super) fn read(path: &Path) -> Result<Vec<(String, Value)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line)
                .map(|value| (line.to_owned(), value))
                .map_err(|e| format!("{} line {}: not JSON: {e}", path.display(), index + 1))
        })
        .collect()
}

/// When both traces open with a `run` line and those differ, the members that differ.
fn header_difference(a: &[(String, Value)], b: &[(String, Value)]) -> Option<Vec<String>> {
    let (Some((text_a, run_a)), Some((text_b, run_b))) = (a.first(), b.first()) else {
        return None;
    };
    if run_a["kind"] != "run" || run_b["kind"] != "run" || text_a == text_b {
        return None;
    }
    let (Some(run_a), Some(run_b)) = (run_a.as_object(), run_b.as_object()) else {
        return None;
    };
    let keys: std::collections::BTreeSet<&String> = run_a
        .keys()
        .chain(run_b.keys())
        .filter(|key| run_a.get(*key) != run_b.get(*key))
        .collect();
    Some(keys.into_iter().cloned().collect())
}

/// The index of the first line that differs (or that one trace lacks).
fn first_difference(a: &[(String, Value)], b: &[(String, Value)]) -> Option<usize> {
    let shared = a.len().min(b.len());
    (0..shared)
        .find(|&i| a[i].0 != b[i].0)
        .or_else(|| (a.len() != b.len()).then_some(shared))
}

fn shown(line: &str) -> String {
    if line.chars().count() <= SHOWN_CHARS_MAX {
        return line.to_owned();
    }
    format!(
        "{}…",
        line.chars().take(SHOWN_CHARS_MAX).collect::<String>()
    )
}

/// An event's kind, with a client event's own name (`client/op`, `client/batch_sent`, …).
fn kind(value: &Value) -> String {
    let kind = value["kind"].as_str().unwrap_or("?");
    match value["event"]["event"].as_str() {
        Some(event) => format!("{kind}/{event}"),
        None => kind.to_owned(),
    }
}

fn print_kinds(a: &[(String, Value)], b: &[(String, Value)]) {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (_, value) in a {
        counts.entry(kind(value)).or_default().0 += 1;
    }
    for (_, value) in b {
        counts.entry(kind(value)).or_default().1 += 1;
    }
    let differing: Vec<_> = counts.iter().filter(|(_, (x, y))| x != y).collect();
    if differing.is_empty() {
        println!("events per kind: the same");
        return;
    }
    println!("events per kind (A → B):");
    for (kind, (x, y)) in differing {
        println!("  {kind:<32} {x} → {y}");
    }
}

/// Each op's last reported status in a trace.
fn final_statuses(lines: &[(String, Value)]) -> BTreeMap<String, String> {
    let mut statuses = BTreeMap::new();
    for (_, value) in lines {
        let event = &value["event"];
        if let (Some(op), Some(status)) = (event["op_id"].as_str(), event["status"].as_str()) {
            statuses.insert(op.to_owned(), status.to_owned());
        }
    }
    statuses
}

fn print_ops(a: &[(String, Value)], b: &[(String, Value)]) {
    let (ops_a, ops_b) = (final_statuses(a), final_statuses(b));
    let mut differing = Vec::new();
    for op in ops_a.keys().chain(ops_b.keys()) {
        let (x, y) = (ops_a.get(op), ops_b.get(op));
        if x != y && !differing.iter().any(|(o, _, _)| o == op) {
            differing.push((op.clone(), x, y));
        }
    }
    if differing.is_empty() {
        println!("ops' final statuses: the same ({} ops)", ops_a.len());
        return;
    }
    println!("ops' final statuses (A → B), {} differ:", differing.len());
    let none = "(absent)".to_owned();
    for (op, x, y) in differing.iter().take(20) {
        println!("  {op:<24} {} → {}", x.unwrap_or(&none), y.unwrap_or(&none));
    }
    if differing.len() > 20 {
        println!("  … and {} more", differing.len() - 20);
    }
}
