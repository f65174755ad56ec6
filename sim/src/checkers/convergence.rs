//! Convergence: after the liveness phase every device's replica equals the server's state
//! for its user, and the server's state equals the reference replay of its commit log.

use super::{Checker, Facts, Violation};
use rockhound_engine::server::replay::replay_rows;
use std::collections::BTreeMap;

/// Runs the checker.
// Long on purpose: the halves of convergence (devices equal the server, the server equals the
// replayed history) over the same snapshot, in the order their messages are reported.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (device, (line, _, replica)) in &facts.final_devices {
        let user = facts.users.get(device).map_or("", String::as_str);
        let expected: BTreeMap<_, _> = facts
            .entities
            .iter()
            .filter(|(_, (_, owner, _))| *owner == user)
            .map(|(key, (line, _, snapshot))| (key.clone(), (*line, *snapshot)))
            .collect();
        let held: BTreeMap<_, _> = replica
            .iter()
            .map(|copy| ((copy.entity_type, copy.entity_id.clone()), copy))
            .collect();
        for key in expected
            .keys()
            .chain(held.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let server = expected.get(key);
            let copy = held.get(key);
            let same = match (server, copy) {
                (Some((_, s)), Some(c)) => {
                    s.version == c.version && s.deleted == c.deleted && s.entity == c.entity
                }
                _ => false,
            };
            if !same {
                let describe =
                    |version: Option<u64>, deleted: Option<bool>| match (version, deleted) {
                        (Some(v), Some(true)) => format!("a tombstone at version {v}"),
                        (Some(v), _) => format!("version {v}"),
                        _ => "nothing".to_owned(),
                    };
                let mut lines = vec![*line];
                lines.extend(server.map(|(l, _)| *l));
                violations.push(facts.violation(
                    Checker::Convergence,
                    *line,
                    format!(
                        "{device}'s replica has {} for {} {}, the server {}",
                        describe(copy.map(|c| c.version), copy.map(|c| c.deleted)),
                        key.0,
                        key.1,
                        describe(
                            server.map(|(_, s)| s.version),
                            server.map(|(_, s)| s.deleted)
                        )
                    ),
                    &lines,
                ));
                break;
            }
        }
    }
    let rows: Vec<_> = facts.commits.iter().map(|(_, _, row)| *row).collect();
    match replay_rows(rows) {
        Err(mismatch) => violations.push(facts.violation(
            Checker::Convergence,
            facts.end_line,
            mismatch.to_string(),
            &[],
        )),
        Ok(replayed) => {
            for key in replayed
                .entities
                .keys()
                .chain(facts.entities.keys())
                .collect::<std::collections::BTreeSet<_>>()
            {
                let model = replayed.entities.get(key);
                let actual = facts.entities.get(key);
                let same = match (model, actual) {
                    (Some(m), Some((_, _, a))) => {
                        m.version == a.version
                            && m.deleted == a.deleted
                            && (m.deleted || m.to_value() == a.entity)
                    }
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    let line = actual.map_or(facts.end_line, |(l, _, _)| *l);
                    violations.push(facts.violation(
                        Checker::Convergence,
                        line,
                        format!(
                            "the server's {} {} differs from the replay of its commit log",
                            key.0, key.1
                        ),
                        &[line],
                    ));
                }
            }
        }
    }
    violations
}
