//! Validation of a run specification: every reference resolved and every value within its
//! limit, each error naming the key (`steps[3]`, `network.loss_rate`) it is about.

use super::{
    ACTIONS_PER_DEVICE_MAX, Action, DEVICE_COUNT_MAX, DISK_BYTES_MAX, FAULT_COUNT_MAX,
    FIELD_TRIPS_PER_DEVICE_MAX, LATENCY_MS_MAX, RUN_MS_MAX, RunSpec, SKEW_MS_MAX, STEP_COUNT_MAX,
    Step, TORN_BYTES_MAX, WORKLOAD_ACTION_COUNT_MAX,
};
use rockhound_engine::op::BATCH_OP_COUNT_MAX;
use rockhound_engine::{EntityType, SyncConfig};
use serde_json::Value;
use std::collections::BTreeMap;

/// The most room a `server_room` step may leave (the server's own limit is far above).
const SERVER_ROOM_MAX: usize = 1_000_000;
/// The longest tick: ten seconds (coarser ticks would blur every timeout).
const TICK_MS_MAX: u64 = 10_000;
/// The longest `overload` window.
const OVERLOAD_MS_MAX: u64 = 600_000;

/// The limits of one step's own values, and the edits the client would refuse whatever
/// the state (a create missing its parent reference, an empty update, an out-of-range
/// number): refused here, so a scripted step never vanishes at run time.
fn check_step_values(action: &Action) -> Result<(), String> {
    use rockhound_engine::op::OpKind;
    match action {
        Action::Crash { torn_bytes, .. } if *torn_bytes > TORN_BYTES_MAX => Err(format!(
            "torn_bytes = {torn_bytes} is more than the limit of {TORN_BYTES_MAX}"
        )),
        Action::Skew { offset_ms, .. } if offset_ms.unsigned_abs() > SKEW_MS_MAX => Err(format!(
            "offset_ms = {offset_ms} is beyond the limit of ±{SKEW_MS_MAX} ms"
        )),
        Action::Restart {
            clock_offset_ms: Some(offset_ms),
            ..
        } if offset_ms.unsigned_abs() > SKEW_MS_MAX => Err(format!(
            "clock_offset_ms = {offset_ms} is beyond the limit of ±{SKEW_MS_MAX} ms"
        )),
        Action::Disk {
            capacity_bytes: Some(bytes),
            ..
        } if *bytes > DISK_BYTES_MAX => Err(format!(
            "capacity_bytes = {bytes} is more than the limit of {DISK_BYTES_MAX}"
        )),
        Action::CrashServerMidBatch { after_ops }
            if !(1..=BATCH_OP_COUNT_MAX).contains(after_ops) =>
        {
            Err(format!(
                "after_ops = {after_ops} is not between 1 and the batch limit of {BATCH_OP_COUNT_MAX}"
            ))
        }
        Action::Overload { ms } if !(1..=OVERLOAD_MS_MAX).contains(ms) => Err(format!(
            "ms = {ms} is not between 1 and the limit of {OVERLOAD_MS_MAX} (10 minutes)"
        )),
        Action::ServerRoom {
            entities: Some(room),
        } if *room > SERVER_ROOM_MAX => Err(format!(
            "entities = {room} is more than the limit of {SERVER_ROOM_MAX}"
        )),
        Action::Create {
            entity_type,
            id,
            fields,
            ..
        } => {
            let mut entity = fields.clone();
            entity.insert("id".to_owned(), Value::String(id.clone()));
            check_edit(OpKind::Create, *entity_type, id, Value::Object(entity))
        }
        Action::Update {
            entity_type,
            id,
            fields,
            ..
        } => check_edit(
            OpKind::Update,
            *entity_type,
            id,
            Value::Object(fields.clone()),
        ),
        Action::Delete { id, .. } => {
            rockhound_engine::ids::check_id("id", id).map_err(|e| e.to_string())
        }
        _ => Ok(()),
    }
}

/// The client's rules for a scripted create or update: the id rule, then the payload rules
/// of an op of `kind`.
fn check_edit(
    kind: rockhound_engine::op::OpKind,
    entity_type: EntityType,
    id: &str,
    payload: Value,
) -> Result<(), String> {
    rockhound_engine::ids::check_id("id", id).map_err(|e| e.to_string())?;
    let entity_id = rockhound_engine::EntityId(id.to_owned());
    rockhound_engine::op::validate_payload(kind, entity_type, &entity_id, &payload)
        .map_err(|e| format!("the client would refuse this {kind}: {e}"))
}

/// Why a spec cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SpecError {
    /// The key at fault, when known (`sim.tick_ms`, `steps[3]`), so that a file loader can
    /// point at its line.
    pub path: Option<String>,
    /// What is wrong, for a person.
    pub message: String,
}

impl SpecError {
    /// An error about the whole spec.
    pub fn new(message: impl Into<String>) -> SpecError {
        SpecError {
            path: None,
            message: message.into(),
        }
    }

    /// An error about one key.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            path: Some(path.into()),
            message: message.into(),
        }
    }
}

impl RunSpec {
    /// Every device with its user, in declaration order.
    pub fn devices(&self) -> Vec<(String, String)> {
        self.users
            .iter()
            .flat_map(|u| u.devices.iter().map(|d| (u.name.clone(), d.clone())))
            .collect()
    }

    /// Checks references and limits: unknown devices, duplicate names, impossible
    /// timelines, bad rates; returns the run's configuration, its planted bugs included.
    pub fn validate(&self) -> Result<SyncConfig, SpecError> {
        let names = self.check_users()?;
        let mut config = self.config.build().map_err(|e| {
            // Errors about one key start with it (`batch_size = 0 is invalid…`).
            let key = e.split(" = ").next().filter(|k| !k.contains(' '));
            SpecError::at(
                key.map_or("config".to_owned(), |k| format!("config.{k}")),
                e,
            )
        })?;
        self.check_sim()?;
        self.check_network()?;
        self.check_workload_and_faults(names.len())?;
        self.check_steps(&names)?;
        self.check_timeline(&names)?;
        self.check_expect()?;
        // The run's bugs travel with its configuration, into every start of the server and
        // of each device.
        config.planted = self.planted;
        Ok(config)
    }

    /// Users and their devices: at least one, within the limit, valid and unique names.
    /// Returns device → user.
    fn check_users(&self) -> Result<BTreeMap<String, String>, SpecError> {
        let fail = |path: &str, message: String| Err(SpecError::at(path, message));
        if self.users.is_empty() {
            return fail("users", "a scenario needs at least one user".into());
        }
        let devices = self.devices();
        if devices.is_empty() {
            return fail("users", "a scenario needs at least one device".into());
        }
        if devices.len() > DEVICE_COUNT_MAX {
            return fail(
                "users",
                format!(
                    "{} devices, more than the limit of {DEVICE_COUNT_MAX}",
                    devices.len()
                ),
            );
        }
        let mut names = BTreeMap::new();
        for user in &self.users {
            rockhound_engine::ids::check_id("user name", &user.name)
                .map_err(|e| SpecError::new(e.to_string()))?;
            for device in &user.devices {
                rockhound_engine::ids::check_id("device name", device)
                    .map_err(|e| SpecError::new(e.to_string()))?;
                if device == "server" {
                    return fail(
                        "users",
                        "\"server\" is reserved; name the device something else".into(),
                    );
                }
                if names.insert(device.clone(), user.name.clone()).is_some() {
                    return fail("users", format!("device {device:?} is declared twice"));
                }
            }
        }
        let users: std::collections::BTreeSet<&String> =
            self.users.iter().map(|u| &u.name).collect();
        if users.len() != self.users.len() {
            return fail("users", "a user is declared twice".into());
        }
        Ok(names)
    }

    /// The clock, tick, placement and phase lengths.
    fn check_sim(&self) -> Result<(), SpecError> {
        let fail = |path: &str, message: String| Err(SpecError::at(path, message));
        let sim = &self.sim;
        if sim.tick_ms == 0 || sim.tick_ms > TICK_MS_MAX {
            return fail(
                "sim.tick_ms",
                format!(
                    "sim.tick_ms = {} is out of range: use 1 to {TICK_MS_MAX}",
                    sim.tick_ms
                ),
            );
        }
        if !(1..=DEVICE_COUNT_MAX).contains(&sim.devices_per_host) {
            return fail(
                "sim.devices_per_host",
                format!(
                    "sim.devices_per_host = {} is out of range: use 1 to {DEVICE_COUNT_MAX}",
                    sim.devices_per_host
                ),
            );
        }
        match sim.safety_ms.checked_add(sim.liveness_ms) {
            Some(total) if total <= RUN_MS_MAX => {}
            total => {
                return fail(
                    "sim.liveness_ms",
                    format!(
                        "safety_ms + liveness_ms = {} ms is longer than the limit of {RUN_MS_MAX} ms",
                        total.map_or_else(|| "more than 2^64".to_owned(), |t| t.to_string())
                    ),
                );
            }
        }
        let run_end = sim.epoch_ms.checked_add(RUN_MS_MAX + SKEW_MS_MAX);
        if !rockhound_engine::Millis(sim.epoch_ms).is_plausible()
            || !run_end.is_some_and(|end| rockhound_engine::Millis(end).is_plausible())
        {
            return fail(
                "sim.epoch_ms",
                format!(
                    "sim.epoch_ms = {} is not a plausible time (the whole run, skew included, must be)",
                    sim.epoch_ms
                ),
            );
        }
        Ok(())
    }

    /// Latencies and link fault rates.
    fn check_network(&self) -> Result<(), SpecError> {
        let fail = |path: &str, message: String| Err(SpecError::at(path, message));
        let network = &self.network;
        if network.latency_ms_max > LATENCY_MS_MAX {
            return fail(
                "network.latency_ms_max",
                format!(
                    "network.latency_ms_max = {} is more than the limit of {LATENCY_MS_MAX} ms",
                    network.latency_ms_max
                ),
            );
        }
        if network.latency_ms_min > network.latency_ms_max {
            return fail(
                "network.latency_ms_min",
                format!(
                    "network.latency_ms_min = {} is above latency_ms_max = {}",
                    network.latency_ms_min, network.latency_ms_max
                ),
            );
        }
        for (name, rate) in [
            ("network.loss_rate", network.loss_rate),
            ("network.duplicate_rate", network.duplicate_rate),
            ("network.corrupt_rate", network.corrupt_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return fail(name, format!("{name} = {rate} is not between 0 and 1"));
            }
        }
        Ok(())
    }

    /// Each scripted step: within the safety phase, naming known devices, with valid values.
    fn check_steps(&self, names: &BTreeMap<String, String>) -> Result<(), SpecError> {
        let fail = |path: &str, message: String| Err(SpecError::at(path, message));
        let sim = &self.sim;
        if self.steps.len() > STEP_COUNT_MAX {
            return fail(
                "steps",
                format!(
                    "{} steps, more than the limit of {STEP_COUNT_MAX}",
                    self.steps.len()
                ),
            );
        }
        for (index, step) in self.steps.iter().enumerate() {
            let path = format!("steps[{index}]");
            let at = format!(
                "step {} ({} at {} ms)",
                index + 1,
                step.action.name(),
                step.at_ms
            );
            if step.at_ms > sim.safety_ms {
                return fail(
                    &path,
                    format!(
                        "{at} is after the safety phase, which ends at {} ms; user actions and faults belong in it",
                        sim.safety_ms
                    ),
                );
            }
            for device in step.action.device().into_iter().chain(match &step.action {
                Action::Forge { victim_device, .. } => Some(victim_device.as_str()),
                _ => None,
            }) {
                if !names.contains_key(device) {
                    return fail(&path, format!("{at} names unknown device {device:?}"));
                }
            }
            if let Action::Forge {
                device,
                victim_device,
            } = &step.action
            {
                if names[device] == names[victim_device] {
                    return fail(
                        &path,
                        format!("{at}: {device} and {victim_device} belong to the same user"),
                    );
                }
            }
            if let Err(why) = check_step_values(&step.action) {
                return fail(&path, format!("{at}: {why}"));
            }
        }
        Ok(())
    }

    /// The expected digest's format, the ids of expected values, the coverage points named.
    fn check_expect(&self) -> Result<(), SpecError> {
        let fail = |path: &str, message: String| Err(SpecError::at(path, message));
        for point in &self.expect.covered {
            if !crate::coverage::declared().any(|(name, _)| *name == point.as_str()) {
                return fail(
                    "expect.covered",
                    format!(
                        "{point:?} is not a declared coverage point (docs/coverage.md lists them)"
                    ),
                );
            }
        }
        if let Some(digest) = &self.expect.digest
            && !rockhound_engine::checksum::is_checksum_format(digest)
        {
            return fail(
                "expect.digest",
                format!("expect.digest = {digest:?} is not 64 lowercase hex characters"),
            );
        }
        for value in &self.expect.values {
            rockhound_engine::ids::check_id("expect.values id", &value.id)
                .map_err(|e| SpecError::new(e.to_string()))?;
        }
        Ok(())
    }

    /// The limits of the random workload and the fault mix: every count, duration and
    /// rate has one, so that no line of a file can make a run expand without bound.
    // Long on purpose: one limit per key of the workload and fault tables, in the order of their
    // fields.
    fn check_workload_and_faults(&self, device_count: usize) -> Result<(), SpecError> {
        let over = |key: &str, value: String, limit: String| {
            Err(SpecError::at(
                key,
                format!("{key} = {value} is more than the limit of {limit}"),
            ))
        };
        if let Some(workload) = &self.workload {
            if workload.actions_per_device > ACTIONS_PER_DEVICE_MAX {
                return over(
                    "workload.actions_per_device",
                    workload.actions_per_device.to_string(),
                    ACTIONS_PER_DEVICE_MAX.to_string(),
                );
            }
            let total = workload.actions_per_device.saturating_mul(device_count);
            if total > WORKLOAD_ACTION_COUNT_MAX {
                return Err(SpecError::at(
                    "workload.actions_per_device",
                    format!(
                        "workload.actions_per_device = {} over {device_count} devices is {total} actions, more than the limit of {WORKLOAD_ACTION_COUNT_MAX}",
                        workload.actions_per_device
                    ),
                ));
            }
            if workload.field_trips_per_device > FIELD_TRIPS_PER_DEVICE_MAX {
                return over(
                    "workload.field_trips_per_device",
                    workload.field_trips_per_device.to_string(),
                    FIELD_TRIPS_PER_DEVICE_MAX.to_string(),
                );
            }
            if workload.field_trip_ms_max > RUN_MS_MAX {
                return over(
                    "workload.field_trip_ms_max",
                    workload.field_trip_ms_max.to_string(),
                    format!("{RUN_MS_MAX} ms"),
                );
            }
        }
        let Some(faults) = &self.faults else {
            return Ok(());
        };
        for (key, count) in [
            ("faults.device_crashes", faults.device_crashes),
            ("faults.server_crashes", faults.server_crashes),
            ("faults.partitions", faults.partitions),
            ("faults.holds", faults.holds),
            ("faults.disk_faults", faults.disk_faults),
        ] {
            if count > FAULT_COUNT_MAX {
                return over(key, count.to_string(), FAULT_COUNT_MAX.to_string());
            }
        }
        if faults.outage_ms_max > RUN_MS_MAX {
            return over(
                "faults.outage_ms_max",
                faults.outage_ms_max.to_string(),
                format!("{RUN_MS_MAX} ms"),
            );
        }
        if faults.skew_ms_max > SKEW_MS_MAX {
            return over(
                "faults.skew_ms_max",
                faults.skew_ms_max.to_string(),
                format!("{SKEW_MS_MAX} ms"),
            );
        }
        for (key, rate) in [
            ("faults.loss_rate", faults.loss_rate),
            ("faults.duplicate_rate", faults.duplicate_rate),
            ("faults.corrupt_rate", faults.corrupt_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SpecError::at(
                    key,
                    format!("{key} = {rate} is not between 0 and 1"),
                ));
            }
        }
        Ok(())
    }

    /// Steps in the order they run: by `at_ms`, then file order.
    pub fn steps_in_order(&self) -> Vec<(usize, &Step)> {
        let mut steps: Vec<(usize, &Step)> = self.steps.iter().enumerate().collect();
        steps.sort_by_key(|(index, step)| (step.at_ms, *index));
        steps
    }

    /// Refuses timelines that cannot happen: a restart with no crash before it, a heal with
    /// no partition, a release with no hold; and, when every entity comes from the steps (no
    /// random workload), an update, delete, parent reference or expected value naming an
    /// entity that no earlier step of the same user creates.
    // Long on purpose: walks the steps in time order tracking each device's state (up, online,
    // crashed); one loop over one state.
    fn check_timeline(&self, names: &BTreeMap<String, String>) -> Result<(), SpecError> {
        use std::collections::BTreeSet;
        let mut crashed = BTreeSet::new();
        let mut partitioned = BTreeSet::new();
        let mut held = BTreeSet::new();
        let mut server_crashed = false;
        let mut created: BTreeSet<(&str, EntityType, &str)> = BTreeSet::new();
        // Entities a hostile step made (`<device>-x<n>-…`) may be edited by its user after it.
        let mut hostile: BTreeSet<(&str, String)> = BTreeSet::new();
        let check_entities = self.workload.is_none();
        for (index, step) in self.steps_in_order() {
            let path = format!("steps[{index}]");
            let at = format!(
                "step {} ({} at {} ms)",
                index + 1,
                step.action.name(),
                step.at_ms
            );
            let fail = |why: String| Err(SpecError::at(&path, format!("{at}: {why}")));
            let user = step.action.device().map_or("", |d| names[d].as_str());
            let known = |created: &BTreeSet<(&str, EntityType, &str)>, t: EntityType, id: &str| {
                created.contains(&(user, t, id))
                    || hostile
                        .iter()
                        .any(|(u, prefix)| *u == user && id.starts_with(prefix.as_str()))
            };
            match &step.action {
                Action::Crash { device, .. } => {
                    crashed.insert(device);
                }
                Action::Restart { device, .. } if !crashed.contains(device) => {
                    return fail(format!("{device} restarts but never crashed before"));
                }
                Action::Partition { device } => {
                    partitioned.insert(device);
                }
                Action::Heal { device } if !partitioned.contains(device) => {
                    return fail(format!("{device} heals but was never partitioned before"));
                }
                Action::Hold { device } => {
                    held.insert(device);
                }
                Action::Release { device } if !held.contains(device) => {
                    return fail(format!("{device} is released but was never held before"));
                }
                Action::CrashServer => server_crashed = true,
                Action::Hostile { device, .. } => {
                    hostile.insert((user, format!("{device}-x")));
                }
                Action::RestartServer if !server_crashed => {
                    return fail("the server restarts but never crashed before".into());
                }
                Action::Create {
                    entity_type,
                    id,
                    fields,
                    ..
                } if check_entities => {
                    for parent in entity_type.parents() {
                        let Some(parent_id) = fields
                            .get(&parent.reference_field())
                            .and_then(|v| v.as_str())
                        else {
                            continue;
                        };
                        if !known(&created, *parent, parent_id) {
                            return fail(format!(
                                "{} {parent_id:?} is not created by an earlier step of {user}",
                                parent.reference_field()
                            ));
                        }
                    }
                    created.insert((user, *entity_type, id));
                }
                Action::Update {
                    entity_type, id, ..
                }
                | Action::Delete {
                    entity_type, id, ..
                } if check_entities && !known(&created, *entity_type, id) => {
                    return fail(format!(
                        "{entity_type} {id:?} is not created by an earlier step of {user}"
                    ));
                }
                _ => {}
            }
        }
        if check_entities {
            for (index, value) in self.expect.values.iter().enumerate() {
                if !created
                    .iter()
                    .any(|(_, t, id)| *t == value.entity_type && *id == value.id)
                {
                    return Err(SpecError::at(
                        "expect.values",
                        format!(
                            "expected value {}: {} {:?} is not created by any step",
                            index + 1,
                            value.entity_type,
                            value.id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
