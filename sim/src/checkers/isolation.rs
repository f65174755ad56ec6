//! Isolation: no user reads or changes another user's data — no pull delivers, no replica
//! holds and no commit of one user touches an entity another user owns.

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;

/// Runs the checker.
pub fn check(facts: &Facts<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    let owner = |key: &(
        rockhound_engine::EntityType,
        rockhound_engine::ids::EntityId,
    )| {
        facts
            .entities
            .get(key)
            .map(|(line, owner, _)| (*line, *owner))
    };
    for (index, line) in facts.lines.iter().enumerate() {
        let TraceEvent::Pulled { keys } = &line.event else {
            continue;
        };
        let user = facts.users.get(&line.host).map_or("", String::as_str);
        for key in keys {
            if let Some((owner_line, owner)) = owner(key).filter(|(_, o)| *o != user) {
                violations.push(facts.violation(
                    Checker::Isolation,
                    index,
                    format!(
                        "{} (user {user}) pulled {} {}, which belongs to {owner}",
                        line.host, key.0, key.1
                    ),
                    &[index, owner_line],
                ));
            }
        }
    }
    for (device, (line, _, replica)) in &facts.final_devices {
        let user = facts.users.get(device).map_or("", String::as_str);
        for copy in *replica {
            let key = (copy.entity_type, copy.entity_id.clone());
            if let Some((owner_line, owner)) = owner(&key).filter(|(_, o)| *o != user) {
                violations.push(facts.violation(
                    Checker::Isolation,
                    *line,
                    format!("{device}'s replica holds {} {} of {owner}", key.0, key.1),
                    &[*line, owner_line],
                ));
            }
        }
    }
    for (line, user, row) in &facts.commits {
        if row.write.is_none() {
            continue;
        }
        let key = (row.entity_type, row.entity_id.clone());
        if let Some((owner_line, owner)) = owner(&key).filter(|(_, o)| o != user) {
            violations.push(facts.violation(
                Checker::Isolation,
                *line,
                format!(
                    "{user} changed {} {} of {owner} (commit {})",
                    key.0, key.1, row.seq
                ),
                &[*line, owner_line],
            ));
        }
    }
    violations
}
