//! An op's life told in order, from a trace: its enqueue (and what it waits on), each batch
//! it rode in, each failure and the wait it drew, the server's decision and why, the answer
//! its device took, the pulls that carried its entity to the other devices, and where it
//! ended. `rockhound explain` prints it; a failing run's report tells the story of each op
//! its violations name.

use crate::checkers::{Verdict, Violation};
use crate::trace::TraceLine;
use serde_json::Value;
use std::collections::BTreeSet;

/// The trace as JSON values, as [`story`] reads it.
pub fn as_values(lines: &[TraceLine]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| serde_json::from_str(&line.to_json()).expect("trace lines are JSON"))
        .collect()
}

/// The ops the violations name (in the order first named), from the trace lines they quote.
pub fn named_ops<'a>(verdicts: impl IntoIterator<Item = &'a Verdict>) -> Vec<String> {
    let mut named = Vec::new();
    for violation in verdicts.into_iter().flat_map(|v| &v.violations) {
        for op in ops_named_by(violation) {
            if !named.contains(&op) {
                named.push(op);
            }
        }
    }
    named
}

/// The ops one violation names (in the order first named), from the trace lines it quotes.
pub fn ops_named_by(violation: &Violation) -> Vec<String> {
    let mut named = Vec::new();
    for (_, quoted) in &violation.events {
        let value: Value = serde_json::from_str(quoted).unwrap_or_default();
        for op in op_ids(&value) {
            if !named.contains(&op) {
                named.push(op);
            }
        }
    }
    named
}

/// Every op id a trace line names.
pub fn op_ids(value: &Value) -> Vec<String> {
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
pub fn story(lines: &[Value], op: &str) -> Vec<String> {
    let mut story = Vec::new();
    let mut entity: Option<(String, String)> = None;
    // Another user may use the same op id (legal): the story is of the op its user's
    // device enqueued, and the server's lines of that user.
    let users = devices_users(lines);
    let (mut device, user) = owner(lines, op, &users);
    let of_user = |line: &Value, field: &str| {
        user.as_ref()
            .is_none_or(|user| line[field].as_str() == Some(user.as_str()))
    };
    let host_of_user = |host: &str| {
        user.as_ref()
            .is_none_or(|user| users.get(host).is_some_and(|u| u == user))
    };
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
            (Some("client"), _) if !device.is_empty() && host != device => None,
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
            (Some("decided"), _) if line["op_id"] == op && of_user(line, "user") => {
                if matches!(line["status"].as_str(), Some("applied" | "conflict")) {
                    committed_at.get_or_insert(t);
                }
                Some(decision(line))
            }
            (Some("answered"), _) if host_of_user(host) => answered(line, op),
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
            (Some("final_commit"), _) if line["row"]["op_id"] == op && of_user(line, "user") => {
                Some(format!(
                    "in the server's log: commit {} {} {}, version {}",
                    line["row"]["seq"],
                    str_of(&line["row"]["action"]),
                    str_of(&line["row"]["status"]),
                    line["row"]["version"]
                ))
            }
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

/// The device that enqueued `op` and its user, when a device did (a hand-built op has
/// neither: its story is every line that names it).
fn owner(
    lines: &[Value],
    op: &str,
    users: &std::collections::BTreeMap<String, String>,
) -> (String, Option<String>) {
    let device = lines.iter().find_map(|line| {
        let event = &line["event"];
        (line["kind"] == "client" && event["event"] == "enqueued" && event["op_id"] == op)
            .then(|| line["host"].as_str().unwrap_or_default().to_owned())
    });
    let Some(device) = device else {
        return (String::new(), None);
    };
    let user = users.get(&device).cloned();
    (device, user)
}

/// Each device's user, from the trace's `run` line.
fn devices_users(lines: &[Value]) -> std::collections::BTreeMap<String, String> {
    lines
        .iter()
        .find(|line| line["kind"] == "run")
        .and_then(|line| line["devices"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|pair| Some((pair[1].as_str()?.to_owned(), pair[0].as_str()?.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_op_id_another_user_also_used_is_told_with_its_own_users_lines_only() {
        let lines = vec![
            json!({"t_ms": 0, "host": "world", "kind": "run",
                   "devices": [["ann", "ann-phone"], ["bob", "bob-phone"]]}),
            // Bob's hand-built op under the id Ann's next op will carry.
            json!({"t_ms": 10, "host": "server", "kind": "decided", "user": "bob",
                   "op_id": "ann-phone:1", "status": "applied", "version": 1}),
            json!({"t_ms": 20, "host": "bob-phone", "kind": "answered",
                   "results": [["ann-phone:1", "applied", null]], "sent": ["ann-phone:1"]}),
            json!({"t_ms": 30, "host": "ann-phone", "kind": "client", "event": {
                   "event": "enqueued", "op_id": "ann-phone:1", "entity_type": "tag",
                   "entity_id": "t", "kind": "create", "priority": 3, "blockers": []}}),
            json!({"t_ms": 40, "host": "server", "kind": "decided", "user": "ann",
                   "op_id": "ann-phone:1", "status": "applied", "version": 1}),
        ];
        let story = story(&lines, "ann-phone:1");
        assert_eq!(story.len(), 2, "{story:#?}");
        assert!(story[0].contains("enqueued: create tag t"));
        assert!(story[1].starts_with("t=40 ms") && story[1].contains("server decided: applied"));
        // An op no device enqueued (a hand-built one): every line that names it.
        assert_eq!(super::story(&lines[..3], "ann-phone:1").len(), 2);
    }
}
