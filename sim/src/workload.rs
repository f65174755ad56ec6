//! The seeded workload and fault schedule: what users do and what goes wrong, drawn from the
//! run's seed. The schedule fixes *when* things happen up front; *what* a user edits is
//! decided when the time comes, from what that device can see then, so that edits always
//! make sense (a find log names a session the device knows).

use crate::spec::{Action, FaultSpec, RunSpec, Step, WorkloadSpec};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rockhound_engine::client::coordinator::{Edit, EditAction};
use rockhound_engine::{EntityId, EntityType};
use serde_json::{Map, Value, json};
use std::sync::atomic::{AtomicU64, Ordering};

/// A slot in the schedule: a scripted step, or "this device's user does something now".
#[derive(Clone, Debug, PartialEq)]
pub enum Planned {
    /// A concrete step.
    Step(Action),
    /// A user action of the random workload, decided when it runs.
    UserAction {
        /// The device.
        device: String,
    },
}

/// Minerals the workload writes, for readable traces.
/// In the wider workload, the share of creates and updates the user waits on (priority 0).
pub const BLOCKING_SHARE: f64 = 0.05;

const MINERALS: [&str; 8] = [
    "agate",
    "jasper",
    "quartz",
    "garnet",
    "obsidian",
    "opal",
    "thunder egg",
    "petrified wood",
];

/// Builds the whole schedule: scripted steps, workload slots, field trips and faults, as
/// `(at_ms, order, planned)` sorted by time then order.
pub fn schedule(
    spec: &RunSpec,
    rng: &mut ChaCha8Rng,
    fault_rng: &mut ChaCha8Rng,
) -> Vec<(u64, usize, Planned)> {
    let mut slots: Vec<(u64, Planned)> = spec
        .steps
        .iter()
        .map(|Step { at_ms, action }| (*at_ms, Planned::Step(action.clone())))
        .collect();
    let safety_ms = spec.sim.safety_ms.max(1);
    let devices = spec.devices();
    if let Some(workload) = &spec.workload {
        for (_, device) in &devices {
            add_workload(&mut slots, workload, device, safety_ms, rng);
        }
    }
    if let Some(faults) = &spec.faults {
        add_faults(&mut slots, faults, &devices, safety_ms, fault_rng);
    }
    let mut ordered: Vec<(u64, usize, Planned)> = slots
        .into_iter()
        .enumerate()
        .map(|(order, (at, planned))| (at, order, planned))
        .collect();
    ordered.sort_by_key(|(at, order, _)| (*at, *order));
    ordered
}

fn add_workload(
    slots: &mut Vec<(u64, Planned)>,
    workload: &WorkloadSpec,
    device: &str,
    safety_ms: u64,
    rng: &mut ChaCha8Rng,
) {
    // Actions stop a little before the end of the safety phase so the last ones are not all
    // cut off by the phase change.
    let active_ms = safety_ms * 9 / 10;
    for _ in 0..workload.actions_per_device {
        let at = rng.random_range(0..active_ms.max(1));
        slots.push((
            at,
            Planned::UserAction {
                device: device.to_owned(),
            },
        ));
    }
    for _ in 0..workload.field_trips_per_device {
        let start = rng.random_range(0..active_ms.max(1));
        let length = rng.random_range(1..=workload.field_trip_ms_max.max(1));
        let end = (start + length).min(safety_ms);
        slots.push((
            start,
            Planned::Step(Action::Offline {
                device: device.to_owned(),
            }),
        ));
        slots.push((
            end,
            Planned::Step(Action::Online {
                device: device.to_owned(),
            }),
        ));
    }
}

// Long on purpose: one block per fault kind, drawn in a fixed order that is part of every seed's
// meaning.
fn add_faults(
    slots: &mut Vec<(u64, Planned)>,
    faults: &FaultSpec,
    devices: &[(String, String)],
    safety_ms: u64,
    rng: &mut ChaCha8Rng,
) {
    // In swarm mode each kind is on or off, and its count drawn, per seed.
    let count = |max: usize, rng: &mut ChaCha8Rng| -> usize {
        if !faults.swarm {
            return max;
        }
        if max == 0 || !rng.random_bool(0.5) {
            return 0;
        }
        rng.random_range(1..=max)
    };
    let device_crashes = count(faults.device_crashes, rng);
    let server_crashes = count(faults.server_crashes, rng);
    let partitions = count(faults.partitions, rng);
    let holds = count(faults.holds, rng);
    let disk_faults = count(faults.disk_faults, rng);
    let window = |rng: &mut ChaCha8Rng| {
        let start = rng.random_range(0..safety_ms);
        let length = rng.random_range(1..=faults.outage_ms_max.max(1));
        (start, (start + length).min(safety_ms))
    };
    let pick = |rng: &mut ChaCha8Rng| devices[rng.random_range(0..devices.len())].1.clone();
    for _ in 0..device_crashes {
        let device = pick(rng);
        let (start, end) = window(rng);
        let torn_bytes = if rng.random_bool(0.5) {
            rng.random_range(1..64)
        } else {
            0
        };
        slots.push((
            start,
            Planned::Step(Action::Crash {
                device: device.clone(),
                torn_bytes,
            }),
        ));
        slots.push((
            end,
            Planned::Step(Action::Restart {
                device,
                clock_offset_ms: None,
            }),
        ));
    }
    for _ in 0..server_crashes {
        let (start, end) = window(rng);
        slots.push((start, Planned::Step(Action::CrashServer)));
        slots.push((end, Planned::Step(Action::RestartServer)));
    }
    for _ in 0..partitions {
        let device = pick(rng);
        let (start, end) = window(rng);
        slots.push((
            start,
            Planned::Step(Action::Partition {
                device: device.clone(),
            }),
        ));
        slots.push((end, Planned::Step(Action::Heal { device })));
    }
    for _ in 0..holds {
        let device = pick(rng);
        let (start, end) = window(rng);
        slots.push((
            start,
            Planned::Step(Action::Hold {
                device: device.clone(),
            }),
        ));
        slots.push((end, Planned::Step(Action::Release { device })));
    }
    for _ in 0..disk_faults {
        let device = pick(rng);
        let (start, end) = window(rng);
        let full = rng.random_bool(0.5);
        slots.push((
            start,
            Planned::Step(Action::Disk {
                device: device.clone(),
                fail_sync: !full,
                capacity_bytes: full.then_some(0),
            }),
        ));
        slots.push((
            end,
            Planned::Step(Action::Disk {
                device,
                fail_sync: false,
                capacity_bytes: None,
            }),
        ));
    }
    if faults.skew_ms_max > 0 {
        let skew_max = i64::try_from(faults.skew_ms_max).unwrap_or(i64::MAX);
        for (_, device) in devices {
            if !faults.swarm || rng.random_bool(0.5) {
                let offset_ms = rng.random_range(-skew_max..=skew_max);
                slots.push((
                    0,
                    Planned::Step(Action::Skew {
                        device: device.clone(),
                        offset_ms,
                    }),
                ));
            }
        }
    }
}

/// The link fault rates a fault spec gives every device, drawn per seed in swarm mode.
pub fn link_rates(faults: Option<&FaultSpec>, rng: &mut ChaCha8Rng) -> (f64, f64, f64) {
    let Some(faults) = faults else {
        return (0.0, 0.0, 0.0);
    };
    let mut rate = |max: f64| {
        if !faults.swarm {
            max
        } else if max > 0.0 && rng.random_bool(0.5) {
            rng.random_range(0.0..=max)
        } else {
            0.0
        }
    };
    (
        rate(faults.loss_rate),
        rate(faults.duplicate_rate),
        rate(faults.corrupt_rate),
    )
}

/// Entity names for the planted non-determinism bug: a counter no run resets.
static PROCESS_WIDE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Chooses one user action for a device, given the entities it can see (type, id, and
/// whether it created them itself). Returns `None` when nothing sensible fits.
// Long on purpose: one match over the workload's mix, so its odds read in one place; the order of
// the draws is part of every seed's meaning.
pub fn user_edit(
    device: &str,
    counter: &mut u64,
    visible: &[(EntityType, EntityId)],
    rng: &mut ChaCha8Rng,
    nondeterministic_ids: bool,
    wide: bool,
) -> Edit {
    let of = |t: EntityType| -> Vec<&EntityId> {
        visible
            .iter()
            .filter(|(v, _)| *v == t)
            .map(|(_, id)| id)
            .collect()
    };
    let mut new_id = |kind: &str| {
        *counter += 1;
        let n = if nondeterministic_ids {
            PROCESS_WIDE_COUNTER.fetch_add(1, Ordering::Relaxed)
        } else {
            *counter
        };
        EntityId(format!("{device}-{kind}-{n}"))
    };
    let mineral = MINERALS[rng.random_range(0..MINERALS.len())];
    let create = |entity_type: EntityType, id: EntityId, fields: Value| Edit {
        entity_type,
        entity_id: id,
        action: EditAction::Create(object(fields)),
    };
    if wide && let Some(edit) = rare_edit(visible, rng, &mut new_id) {
        return edit;
    }
    let sessions = of(EntityType::FieldSession);
    let finds = of(EntityType::FindLog);
    let roll = rng.random_range(0..100);
    match roll {
        _ if sessions.is_empty() || roll < 12 => create(
            EntityType::FieldSession,
            new_id("session"),
            json!({"site": format!("{mineral} ridge"), "started": true}),
        ),
        12..=36 => {
            let session = sessions[rng.random_range(0..sessions.len())];
            create(
                EntityType::FindLog,
                new_id("find"),
                json!({"field_session_id": session.0, "mineral": mineral, "note": "found in float"}),
            )
        }
        37..=46 => {
            let captures = of(EntityType::CaptureSession);
            let raws = of(EntityType::RawCapture);
            if !raws.is_empty() && rng.random_bool(0.5) {
                let raw = raws[rng.random_range(0..raws.len())];
                create(
                    EntityType::ProcessedCapture,
                    new_id("processed"),
                    json!({"raw_capture_id": raw.0, "filter": "focus stack"}),
                )
            } else if !captures.is_empty() && rng.random_bool(0.6) {
                let capture = captures[rng.random_range(0..captures.len())];
                create(
                    EntityType::RawCapture,
                    new_id("raw"),
                    json!({"capture_session_id": capture.0, "frames": rng.random_range(1..30)}),
                )
            } else {
                let session = sessions[rng.random_range(0..sessions.len())];
                create(
                    EntityType::CaptureSession,
                    new_id("capture"),
                    json!({"field_session_id": session.0, "camera": "field kit"}),
                )
            }
        }
        47..=61 if !finds.is_empty() => {
            let find = finds[rng.random_range(0..finds.len())];
            create(
                EntityType::Specimen,
                new_id("specimen"),
                json!({"find_log_id": find.0, "mineral": mineral, "weight_g": rng.random_range(1..2_000)}),
            )
        }
        62..=69 => match rng.random_range(0..3) {
            0 => create(
                EntityType::Tag,
                new_id("tag"),
                json!({"label": mineral, "members": [mineral]}),
            ),
            1 => create(
                EntityType::CollectionGroup,
                new_id("group"),
                json!({"title": format!("{mineral} case"), "members": []}),
            ),
            _ => create(
                EntityType::StorageLocation,
                new_id("drawer"),
                json!({"cabinet": format!("cabinet {}", rng.random_range(1..10)), "drawer": rng.random_range(1..20)}),
            ),
        },
        70..=72 => {
            let groups = of(EntityType::CollectionGroup);
            if groups.is_empty() {
                create(
                    EntityType::Tag,
                    new_id("tag"),
                    json!({"label": mineral, "members": [mineral]}),
                )
            } else {
                let group = groups[rng.random_range(0..groups.len())];
                create(
                    EntityType::Export,
                    new_id("export"),
                    json!({"collection_group_id": group.0, "format": "csv"}),
                )
            }
        }
        73..=94 => {
            let (entity_type, id) = &visible[rng.random_range(0..visible.len())];
            let fields = match entity_type {
                EntityType::Tag | EntityType::CollectionGroup => {
                    json!({"members": [mineral, MINERALS[rng.random_range(0..MINERALS.len())]]})
                }
                EntityType::Specimen => {
                    json!({"weight_g": rng.random_range(1..2_000), "mineral": mineral})
                }
                EntityType::FindLog => {
                    json!({"note": format!("{mineral}, {} cm", rng.random_range(1..40))})
                }
                _ => json!({"note": format!("checked {}", rng.random_range(0..1_000))}),
            };
            Edit {
                entity_type: *entity_type,
                entity_id: id.clone(),
                action: EditAction::Update(object(fields)),
            }
        }
        _ => {
            // Deletes go to leaves (tags, specimens, exports, processed captures), as users
            // tidy up; deleting a parent would only make its children's creates fail.
            let leaves: Vec<&(EntityType, EntityId)> = visible
                .iter()
                .filter(|(t, _)| {
                    matches!(
                        t,
                        EntityType::Tag
                            | EntityType::Specimen
                            | EntityType::Export
                            | EntityType::ProcessedCapture
                    )
                })
                .collect();
            match leaves.is_empty() {
                true => create(
                    EntityType::Tag,
                    new_id("tag"),
                    json!({"label": mineral, "members": []}),
                ),
                false => {
                    let (entity_type, id) = leaves[rng.random_range(0..leaves.len())];
                    Edit {
                        entity_type: *entity_type,
                        entity_id: id.clone(),
                        action: EditAction::Delete,
                    }
                }
            }
        }
    }
}

/// The rare edits of a wide workload, one time in ten: an analytics cache entry, or a
/// delete of a visible parent (refused with `has_children` while it has live children,
/// which then blocks or fails the edits under it).
fn rare_edit(
    visible: &[(EntityType, EntityId)],
    rng: &mut ChaCha8Rng,
    new_id: &mut impl FnMut(&str) -> EntityId,
) -> Option<Edit> {
    let roll = rng.random_range(0..100);
    if roll < 5 {
        let fields = json!({"metric": "finds_per_trip", "value": rng.random_range(0..50)});
        return Some(Edit {
            entity_type: EntityType::AnalyticsCache,
            entity_id: new_id("analytics"),
            action: EditAction::Create(object(fields)),
        });
    }
    if roll < 10 {
        let parents: Vec<&(EntityType, EntityId)> = visible
            .iter()
            .filter(|(t, _)| EntityType::ALL.iter().any(|c| c.parents().contains(t)))
            .collect();
        if !parents.is_empty() {
            let (entity_type, id) = parents[rng.random_range(0..parents.len())];
            return Some(Edit {
                entity_type: *entity_type,
                entity_id: id.clone(),
                action: EditAction::Delete,
            });
        }
    }
    None
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("workload fields are objects"),
    }
}
