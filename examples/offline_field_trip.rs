//! The engine as a library: two devices of one user, a server core in the same process,
//! no network. A device records a field trip offline (a session, a find, a specimen, each
//! depending on the one before) into a durable queue on a real file, goes online and syncs;
//! the other device pulls and sees the specimen; both edit the same specimen, and the
//! second edit meets the first as a conflict the entity's strategy decides.
//!
//! ```sh
//! cargo run -p rockhound-io --example offline_field_trip
//! ```
//!
//! `cargo test` runs it too (io/tests/example.rs), so it keeps working.

use rockhound_engine::client::coordinator::{Coordinator, Edit, EditAction, Request};
use rockhound_engine::client::store::QueueStore;
use rockhound_engine::server::Server;
use rockhound_engine::server::wire::ConflictStatus;
use rockhound_engine::{DeviceId, EntityId, EntityType, Millis, SyncConfig, UserId};
use rockhound_io::file_store::FileStore;
use serde_json::{Map, Value, json};

/// Every clock is the caller's: here a fixed start and a few seconds per step.
const START: Millis = Millis(1_780_000_000_000);

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

fn create(entity_type: EntityType, id: &str, value: Value) -> Edit {
    Edit {
        entity_type,
        entity_id: EntityId::from(id),
        action: EditAction::Create(fields(value)),
    }
}

/// Carries `device`'s requests to `server` until it has nothing more to send; returns how
/// many requests went.
fn sync<S: QueueStore>(
    device: &mut Coordinator<S>,
    server: &mut Server,
    user: &UserId,
    now: Millis,
) -> usize {
    device.sync_now(now);
    let mut sent = 0;
    while let Some(request) = device.poll(now) {
        sent += 1;
        match request {
            Request::Batch(batch) => {
                let answer = server.handle_batch(user, &batch, now).expect("accepted");
                device.on_batch_response(now, &answer);
            }
            Request::Pull { cursor, limit } => {
                let page = server
                    .changes(user, Some(device.device_id()), cursor, limit, now)
                    .expect("a page");
                device.on_pull_response(now, &page);
            }
            Request::Resolve {
                conflict_id,
                request,
            } => {
                let result = server
                    .resolve_conflict(user, &conflict_id, &request, now)
                    .map(drop)
                    .map_err(|e| e.code().as_str().to_owned());
                device.on_resolve_response(now, result);
            }
            Request::Conflicts { cursor, limit } => {
                let page = server
                    .conflicts_page(user, Some(ConflictStatus::Open), cursor, limit)
                    .expect("a page");
                device.on_conflicts_response(now, &page);
            }
        }
        assert!(sent < 100, "a device settles after a few requests");
    }
    sent
}

/// Runs the field trip; panics if any step does not behave as its comment says.
pub fn main() {
    let dir = std::env::temp_dir().join(format!("rockhound-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    let config = SyncConfig::default();
    let ann = UserId::from("ann");
    let mut server = Server::new(config.clone());
    let open = |name: &str, seed: u64| {
        let store = FileStore::open(dir.join(format!("{name}.queue"))).expect("the queue file");
        Coordinator::open(DeviceId::from(name), 0, config.clone(), store, seed, START)
            .map_err(|failed| failed.error)
            .expect("the queue opens")
    };
    let mut phone = open("phone", 1);
    let mut tablet = open("tablet", 2);

    // Offline on the creek: three records, each naming its parent.
    let edits = vec![
        create(
            EntityType::FieldSession,
            "s1",
            json!({"name": "Agate Creek"}),
        ),
        create(
            EntityType::FindLog,
            "f1",
            json!({"field_session_id": "s1", "note": "banded, fist-sized"}),
        ),
        create(
            EntityType::Specimen,
            "sp1",
            json!({"find_log_id": "f1", "name": "Agate", "weight_g": 412}),
        ),
    ];
    let ops = phone.enqueue_all(START, START, edits).expect("queued");
    println!("phone, offline: {} ops queued, durable on disk", ops.len());
    assert_eq!(phone.stats().pending, 3);

    // Back in coverage: the phone syncs, then the tablet pulls.
    let now = Millis(START.0 + 60_000);
    phone.set_online(now, true);
    tablet.set_online(now, true);
    let sent = sync(&mut phone, &mut server, &ann, now);
    println!(
        "phone, online: {sent} requests; queue now {:?}",
        phone.stats()
    );
    sync(&mut tablet, &mut server, &ann, now);
    let seen = tablet
        .entity(EntityType::Specimen, &EntityId::from("sp1"))
        .expect("the tablet has the specimen");
    println!("tablet pulled sp1: {seen}");
    assert_eq!(seen["weight_g"], 412);

    // Both weigh the specimen again; the tablet's edit is older than the phone's.
    let key = (EntityType::Specimen, EntityId::from("sp1"));
    let tablet_edit = json!({"id": "sp1", "find_log_id": "f1", "name": "Agate", "weight_g": 409});
    let phone_edit = json!({"id": "sp1", "find_log_id": "f1", "name": "Agate", "weight_g": 410});
    let later = Millis(now.0 + 5_000);
    tablet
        .enqueue_change(later, later, key.clone(), &seen, &tablet_edit)
        .expect("queued");
    let latest = Millis(later.0 + 5_000);
    phone
        .enqueue_change(latest, latest, key.clone(), &seen, &phone_edit)
        .expect("queued");
    sync(&mut phone, &mut server, &ann, latest);
    sync(&mut tablet, &mut server, &ann, latest);
    sync(&mut phone, &mut server, &ann, latest);
    let on_phone = phone.entity(key.0, &key.1).expect("on the phone");
    let on_tablet = tablet.entity(key.0, &key.1).expect("on the tablet");
    println!(
        "after the conflict ({} strategy): phone {}, tablet {}",
        config
            .entities
            .rules(EntityType::Specimen)
            .strategy
            .as_str(),
        on_phone["weight_g"],
        on_tablet["weight_g"]
    );
    assert_eq!(on_phone, on_tablet, "both devices converge");
    let _ = std::fs::remove_dir_all(&dir);
}
