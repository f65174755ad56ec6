//! Isolation: no user reads or changes another user's data — no pull delivers, no replica
//! holds and no commit of one user touches an entity another user owns, and no batch
//! answer carries an op the device's user did not send (its own devices' ops, or the
//! hand-built ops of the hostile, forged or replayed request it answers, which may reuse
//! an op id of another user: legal, and the answer is about this user's op).

use super::{Checker, Facts, Violation};
use crate::trace::TraceEvent;
use rockhound_engine::ids::OpId;
use rockhound_engine::server::wire::{OpStatus, Reason};

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
        if let TraceEvent::Answered {
            batch_id,
            results,
            sent,
        } = &line.event
        {
            violations.extend(foreign_answers(
                facts,
                index,
                results,
                sent,
                batch_id.is_some(),
            ));
            continue;
        }
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

/// The ops of a batch answer to `facts.lines[index]`'s device that its user never sent: an
/// answer the coordinator took may name only its user's ops; an answer nobody takes (a
/// replayed, forged or hostile batch) only the ops its request carried. An op id another
/// user also used is this user's own op when this user sent it.
fn foreign_answers(
    facts: &Facts<'_>,
    index: usize,
    results: &[(OpId, OpStatus, Option<Reason>)],
    sent: &[OpId],
    taken: bool,
) -> Vec<Violation> {
    let host = &facts.lines[index].host;
    let user = facts.users.get(host).map_or("", String::as_str);
    results
        .iter()
        .filter(|(op_id, _, _)| {
            if taken {
                facts.op_of(user, op_id).is_none()
            } else {
                !sent.contains(op_id)
            }
        })
        .map(|(op_id, _, _)| {
            let lines: Vec<usize> = std::iter::once(index)
                .chain(facts.ops.get(op_id).map(|op| op.line))
                .collect();
            facts.violation(
                Checker::Isolation,
                index,
                format!(
                    "{host} (user {user}) was answered about op {op_id}, which its user never sent"
                ),
                &lines,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceLine;
    use rockhound_engine::client::observe::Event;
    use rockhound_engine::server::wire::OpStatus;
    use rockhound_engine::{EntityType, OpId, OpKind, SyncConfig};

    fn line(host: &str, event: TraceEvent) -> TraceLine {
        TraceLine {
            t_ms: 1_000,
            host: host.into(),
            event,
        }
    }

    /// An answer about `op` to `host`: taken by its coordinator, or (with `sent`) to a
    /// hand-built request that carried `sent`.
    fn answered(host: &str, op: &str, sent: Option<&[&str]>) -> TraceLine {
        line(
            host,
            TraceEvent::Answered {
                batch_id: sent
                    .is_none()
                    .then(|| rockhound_engine::BatchId("b".into())),
                results: vec![(OpId(op.into()), OpStatus::Applied, None)],
                sent: sent
                    .unwrap_or_default()
                    .iter()
                    .map(|id| OpId((*id).into()))
                    .collect(),
            },
        )
    }

    #[test]
    fn an_answer_about_an_op_its_user_did_not_send_is_caught_and_a_borrowed_op_id_is_not() {
        let run = line(
            "world",
            TraceEvent::Run {
                seed: 0,
                scenario: "t".into(),
                devices: vec![
                    ("ann".into(), "phone".into()),
                    ("bob".into(), "laptop".into()),
                ],
                config: Box::new(SyncConfig::default()),
                epoch_ms: 0,
                planted: Default::default(),
                link_rates: (0.0, 0.0, 0.0),
            },
        );
        let bobs = line(
            "laptop",
            TraceEvent::Client {
                event: Event::Enqueued {
                    op_id: OpId("laptop:0".into()),
                    seq: 0,
                    entity_type: EntityType::Tag,
                    entity_id: "t".into(),
                    kind: OpKind::Create,
                    priority: 3,
                    blockers: vec![],
                },
            },
        );
        let leaks = [
            // Taken by ann's coordinator, about bob's op.
            answered("phone", "laptop:0", None),
            // To ann's hand-built request, about an op it did not carry.
            answered("phone", "laptop:0", Some(&["phone-x1-op1"])),
            // Taken by bob's coordinator, about an op nobody enqueued.
            answered("laptop", "laptop:1", None),
        ];
        for leak in leaks {
            let lines = [run.clone(), bobs.clone(), leak];
            let violations = check(&Facts::new(&lines));
            assert_eq!(violations.len(), 1, "{violations:?}");
            assert!(violations[0].message.contains("op laptop:"));
        }
        let own = [
            run,
            bobs,
            answered("laptop", "laptop:0", None),
            answered("phone", "phone-x1-op1", Some(&["phone-x1-op1"])),
            // Ann borrowed bob's op id in a request of her own: legal, and about her op.
            answered("phone", "laptop:0", Some(&["laptop:0", "phone:forged:5"])),
        ];
        assert!(check(&Facts::new(&own)).is_empty());
    }
}
