//! Validation and checksum tests for ops and batches; every error asserts its message.

use super::*;
use serde_json::json;

fn find_log_create() -> Op {
    Op {
        op_id: "op-1".into(),
        idempotency_key: "key-1".into(),
        entity_type: EntityType::FindLog,
        entity_id: "find-1".into(),
        kind: OpKind::Create,
        base_version: 0,
        payload: json!({"id": "find-1", "field_session_id": "fs-1", "mineral": "quartz"}),
        client_timestamp_ms: Millis(1_760_000_000_000),
        priority: Priority::HIGH,
        depends_on: vec!["op-0".into()],
        created_at_ms: Millis(1_760_000_000_000),
        checksum: String::new(),
    }
    .sealed()
}

fn message(op: &Op) -> String {
    op.validate().unwrap_err().to_string()
}

#[test]
fn a_well_formed_create_passes_validation_and_its_checksum() {
    let op = find_log_create();
    assert_eq!(op.validate(), Ok(()));
    assert_eq!(op.verify_checksum(), Ok(()));
}

/// A typical op and batch are encoded straight from the struct (the fast path that keeps its
/// checksum cheap, benches/README.md), and those bytes are the canonical encoding; with the
/// device's report too.
#[test]
fn a_typical_op_and_batch_take_the_direct_encoding() {
    let op = find_log_create();
    let mut bytes = Vec::new();
    assert!(
        op.write_canonical(&mut bytes, true),
        "the op's fast path declined"
    );
    assert_eq!(
        bytes,
        crate::checksum::canonical_json(&serde_json::to_value(&op).unwrap())
    );
    let ops = vec![op.clone(), op];
    let report = ClientReport {
        pending: 2,
        blocked: 0,
        failed: 1,
        round_trip_ms: Some(40),
        failed_requests: 0,
    };
    for report in [None, Some(report)] {
        let batch = Batch::reporting(
            BatchId("b-1".into()),
            DeviceId("d-1".into()),
            ops.clone(),
            report,
        );
        let mut bytes = Vec::new();
        assert!(batch.write_canonical(&mut bytes), "the fast path declined");
        let mut value = serde_json::to_value(&batch).unwrap();
        value.as_object_mut().unwrap().remove("checksum");
        assert_eq!(bytes, crate::checksum::canonical_json(&value));
    }
}

#[test]
fn an_op_round_trips_through_wire_json() {
    let op = find_log_create();
    let text = serde_json::to_string(&op).unwrap();
    assert_eq!(Op::from_json(&text).unwrap(), op);
}

#[test]
fn an_unknown_member_is_malformed() {
    let mut value = serde_json::to_value(find_log_create()).unwrap();
    value["user_id"] = json!("mallory");
    let error = Op::from_json(&value.to_string()).unwrap_err().to_string();
    assert!(
        error.starts_with("malformed operation: unknown field `user_id`"),
        "{error}"
    );
}

#[test]
fn a_bad_entity_type_names_the_valid_ones() {
    let mut value = serde_json::to_value(find_log_create()).unwrap();
    value["entity_type"] = json!("rock");
    let error = Op::from_json(&value.to_string()).unwrap_err().to_string();
    assert!(
        error.starts_with("malformed operation: unknown entity type \"rock\"; expected one of field_session, find_log,"),
        "{error}"
    );
}

#[test]
fn a_priority_out_of_range_is_malformed() {
    let mut value = serde_json::to_value(find_log_create()).unwrap();
    value["priority"] = json!(7);
    let error = Op::from_json(&value.to_string()).unwrap_err().to_string();
    assert!(
        error.starts_with(
            "malformed operation: priority 7 is out of range: use 0 (critical) to 4 (background)"
        ),
        "{error}"
    );
}

#[test]
fn a_bad_id_is_named() {
    let mut op = find_log_create();
    op.entity_id = "".into();
    assert_eq!(message(&op), "entity_id is empty");
}

#[test]
fn a_timestamp_from_1970_is_refused() {
    let mut op = find_log_create();
    op.client_timestamp_ms = Millis(12);
    assert_eq!(
        message(&op),
        "client_timestamp_ms 12 is outside the accepted range 946684800000..=4102444800000 (2000-01-01 to 2100-01-01)"
    );
}

#[test]
fn a_create_with_a_base_version_is_refused() {
    let mut op = find_log_create();
    op.base_version = 3;
    assert_eq!(message(&op), "a create must have base_version 0, not 3");
}

#[test]
fn an_update_without_a_base_version_is_refused() {
    let mut op = find_log_create();
    op.kind = OpKind::Update;
    op.payload = json!({"mineral": "amethyst"});
    assert_eq!(
        message(&op),
        "an update needs the base_version the device last saw (at least 1), not 0"
    );
}

#[test]
fn a_create_payload_must_be_an_object() {
    let mut op = find_log_create();
    op.payload = json!([1, 2]);
    assert_eq!(
        message(&op),
        "create payload must be a JSON object, not an array"
    );
}

#[test]
fn a_delete_payload_must_be_null() {
    let mut op = find_log_create();
    op.kind = OpKind::Delete;
    op.base_version = 2;
    assert_eq!(message(&op), "delete payload must be null, not an object");
    op.payload = Value::Null;
    assert_eq!(op.validate(), Ok(()));
}

#[test]
fn a_create_payload_id_must_match_the_entity_id() {
    let mut op = find_log_create();
    op.payload["id"] = json!("find-2");
    assert_eq!(
        message(&op),
        "create payload id \"find-2\" does not match entity_id \"find-1\""
    );
    op.payload.as_object_mut().unwrap().remove("id");
    assert_eq!(
        message(&op),
        "create payload id \"<missing>\" does not match entity_id \"find-1\""
    );
}

#[test]
fn an_update_must_change_something_but_not_the_id() {
    let mut op = find_log_create();
    op.kind = OpKind::Update;
    op.base_version = 1;
    op.payload = json!({});
    assert_eq!(message(&op), "update payload changes no field");
    op.payload = json!({"id": "find-9"});
    assert_eq!(
        message(&op),
        "update payload may not change the entity's id"
    );
}

#[test]
fn a_child_create_must_reference_its_parent() {
    let mut op = find_log_create();
    op.payload
        .as_object_mut()
        .unwrap()
        .remove("field_session_id");
    assert_eq!(
        message(&op),
        "find_log create must reference its parent in field_session_id"
    );
}

#[test]
fn a_specimen_needs_at_least_one_of_its_parents() {
    let mut op = find_log_create();
    op.entity_type = EntityType::Specimen;
    op.payload = json!({"id": "find-1"});
    assert_eq!(
        message(&op),
        "specimen create must reference its parent in at least one of find_log_id or processed_capture_id"
    );
    op.payload = json!({"id": "find-1", "processed_capture_id": "pc-1"});
    assert_eq!(op.validate(), Ok(()));
}

#[test]
fn a_parent_reference_must_be_an_id_string() {
    let mut op = find_log_create();
    op.payload["field_session_id"] = json!(17);
    assert_eq!(
        message(&op),
        "create payload field field_session_id must be an id string"
    );
}

#[test]
fn an_integer_beyond_two_to_the_53_is_refused() {
    let mut op = find_log_create();
    op.payload["weight"] = json!({"grams": [1, 9_007_199_254_740_993_u64]});
    assert_eq!(
        message(&op),
        "create payload holds the number 9007199254740993 at /weight/grams/1, beyond ±2^53, which JSON clients cannot checksum exactly"
    );
}

#[test]
fn a_payload_nested_too_deep_is_refused() {
    let mut op = find_log_create();
    let mut deep = json!(1);
    for _ in 0..20 {
        deep = json!([deep]);
    }
    op.payload["deep"] = deep;
    assert_eq!(
        message(&op),
        "create payload is nested deeper than 16 levels"
    );
}

#[test]
fn a_payload_over_the_size_limit_is_refused() {
    let mut op = find_log_create();
    op.payload["notes"] = json!("x".repeat(PAYLOAD_BYTES_MAX));
    assert_eq!(
        message(&op),
        "create payload is 65607 bytes, more than the limit of 65536"
    );
}

#[test]
fn dependency_mistakes_are_named() {
    let mut op = find_log_create();
    op.depends_on = vec!["op-1".into()];
    assert_eq!(message(&op), "op op-1 depends on itself");
    op.depends_on = vec!["op-0".into(), "op-0".into()];
    assert_eq!(message(&op), "op op-1 lists dependency op-0 twice");
    op.depends_on = (0..65).map(|i| OpId(format!("d{i}"))).collect();
    assert_eq!(
        message(&op),
        "op op-1 has 65 dependencies, more than the limit of 64"
    );
}

#[test]
fn a_checksum_that_is_not_hex_is_refused() {
    let mut op = find_log_create();
    op.checksum = "ABC".into();
    assert_eq!(
        message(&op),
        "checksum \"ABC\" is not 64 lowercase hex characters"
    );
}

#[test]
fn a_tampered_op_fails_its_checksum() {
    let mut op = find_log_create();
    let claimed = op.checksum.clone();
    op.payload["mineral"] = json!("fool's gold");
    let error = op.verify_checksum().unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "checksum mismatch: the content hashes to {}, the sender claimed {claimed}",
            op.compute_checksum()
        )
    );
}

#[test]
fn the_op_checksum_is_sha256_of_its_jcs_encoding_without_checksum() {
    let op = find_log_create();
    // Written out by hand in JCS order, as a TypeScript or Python client would produce it.
    let jcs = concat!(
        r#"{"base_version":0,"client_timestamp_ms":1760000000000,"created_at_ms":1760000000000,"#,
        r#""depends_on":["op-0"],"entity_id":"find-1","entity_type":"find_log","#,
        r#""idempotency_key":"key-1","kind":"create","op_id":"op-1","#,
        r#""payload":{"field_session_id":"fs-1","id":"find-1","mineral":"quartz"},"priority":1}"#
    );
    assert_eq!(op.checksum, crate::checksum::sha256_hex(jcs.as_bytes()));
}

#[test]
fn a_batch_checksum_covers_its_ops_and_detects_tampering() {
    let batch = Batch::new("b-1".into(), "dev-1".into(), vec![find_log_create()]);
    assert_eq!(batch.verify_checksum(), Ok(()));
    let text = serde_json::to_string(&batch).unwrap();
    assert_eq!(Batch::from_json(&text).unwrap(), batch);
    let mut tampered = batch.clone();
    tampered.ops[0].priority = Priority::CRITICAL;
    assert!(matches!(
        tampered.verify_checksum(),
        Err(OpError::ChecksumMismatch { .. })
    ));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Writes `value` as JSON text with object members in the order `order` picks and
    /// `spaces` of whitespace around tokens.
    fn scrambled(value: &Value, order: &mut impl Iterator<Item = usize>, spaces: usize) -> String {
        let pad = " \n\t ".repeat(spaces);
        match value {
            Value::Object(fields) => {
                let mut members: Vec<(&String, &Value)> = fields.iter().collect();
                let len = members.len();
                if len > 1 {
                    members.rotate_left(order.next().unwrap_or(0) % len);
                }
                let inner: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| {
                        format!(
                            "{pad}{}{pad}:{pad}{}",
                            Value::String(k.clone()),
                            scrambled(v, order, spaces)
                        )
                    })
                    .collect();
                format!("{{{}{pad}}}", inner.join(","))
            }
            Value::Array(items) => {
                let inner: Vec<String> =
                    items.iter().map(|v| scrambled(v, order, spaces)).collect();
                format!("[{pad}{}{pad}]", inner.join(&format!(",{pad}")))
            }
            other => other.to_string(),
        }
    }

    fn any_op() -> impl Strategy<Value = Op> {
        (
            "[a-z0-9-]{1,12}",
            "[a-z0-9-]{1,12}",
            prop::sample::select(vec![
                EntityType::FieldSession,
                EntityType::Tag,
                EntityType::StorageLocation,
            ]),
            "[a-z0-9]{1,8}",
            crate::delta::tests::entity_value(),
            1_000_000_000_000u64..2_000_000_000_000,
            0u8..5,
            prop::collection::vec("[a-z0-9]{1,6}", 0..3),
        )
            .prop_map(
                |(op_id, key, entity_type, entity_id, value, at_ms, priority, deps)| {
                    let mut payload = serde_json::Map::new();
                    payload.insert("id".into(), json!(entity_id));
                    payload.insert("value".into(), value);
                    Op {
                        op_id: OpId(op_id),
                        idempotency_key: IdempotencyKey(key),
                        entity_type,
                        entity_id: EntityId(entity_id),
                        kind: OpKind::Create,
                        base_version: 0,
                        payload: Value::Object(payload),
                        client_timestamp_ms: Millis(at_ms),
                        priority: Priority::new(priority).unwrap(),
                        depends_on: deps.into_iter().map(OpId).collect(),
                        created_at_ms: Millis(at_ms),
                        checksum: String::new(),
                    }
                    .sealed()
                },
            )
    }

    proptest! {
        #[test]
        fn key_order_and_whitespace_do_not_change_the_checksum(
            op in any_op(),
            rotations in prop::collection::vec(0usize..16, 0..64),
            spaces in 0usize..3,
        ) {
            let value = serde_json::to_value(&op).unwrap();
            let text = scrambled(&value, &mut rotations.into_iter(), spaces);
            let reread = Op::from_json(&text).unwrap();
            prop_assert_eq!(reread.verify_checksum(), Ok(()));
            prop_assert_eq!(crate::checksum::checksum_without_member(&serde_json::from_str(&text).unwrap()), op.checksum);
        }

        /// The struct-to-bytes fast path and the general canonicalizer agree on every op
        /// and batch (and the fast path declines what it cannot encode exactly).
        #[test]
        fn the_direct_encoding_is_the_canonical_encoding(
            mut op in any_op(),
            base_version in prop::sample::select(vec![0u64, 7, 1 << 53, (1 << 53) + 1, u64::MAX]),
            odd in prop::sample::select(vec![json!(null), json!(1.5), json!({"é": 1}), json!([1, 2])]),
        ) {
            op.base_version = base_version;
            op.payload.as_object_mut().unwrap().insert("odd".into(), odd);
            let general = |value: Value| crate::checksum::checksum_of_owned(value);
            prop_assert_eq!(op.compute_checksum(), general(serde_json::to_value(&op).unwrap()));
            let mut bytes = Vec::new();
            if op.write_canonical(&mut bytes, true) {
                prop_assert_eq!(
                    bytes,
                    crate::checksum::canonical_json(&serde_json::to_value(&op).unwrap())
                );
            }
            let batch = Batch::new(BatchId("b-1".into()), DeviceId("d-1".into()), vec![op.clone(), op.clone()]);
            prop_assert_eq!(batch.compute_checksum(), general(serde_json::to_value(&batch).unwrap()));
            // With the device's report, at its types' extremes too, and without a round trip.
            let report = crate::op::ClientReport {
                pending: base_version,
                blocked: 3,
                failed: u64::MAX,
                round_trip_ms: (base_version % 2 == 0).then_some(base_version),
                failed_requests: base_version,
            };
            let batch = Batch::reporting(BatchId("b-1".into()), DeviceId("d-1".into()), vec![op], Some(report));
            prop_assert_eq!(batch.compute_checksum(), general(serde_json::to_value(&batch).unwrap()));
            prop_assert_eq!(batch.verify_checksum(), Ok(()));
            let mut changed = batch.clone();
            changed.report.as_mut().unwrap().blocked += 1;
            prop_assert!(changed.verify_checksum().is_err(), "the report is under the checksum");
        }

        #[test]
        fn changing_any_member_changes_the_checksum(op in any_op(), member in 0usize..11) {
            let mut changed = op.clone();
            match member {
                0 => changed.op_id.0.push('x'),
                1 => changed.idempotency_key.0.push('x'),
                2 => changed.entity_type = EntityType::Specimen,
                3 => changed.entity_id.0.push('x'),
                4 => changed.kind = OpKind::Update,
                5 => changed.base_version += 1,
                6 => changed.payload["value"] = json!([changed.payload["value"].clone()]),
                7 => changed.client_timestamp_ms = changed.client_timestamp_ms.plus_ms(1),
                8 => changed.priority = Priority::new((changed.priority.get() + 1) % 5).unwrap(),
                9 => changed.depends_on.push("extra".into()),
                _ => changed.created_at_ms = changed.created_at_ms.plus_ms(1),
            }
            prop_assert_ne!(changed.compute_checksum(), op.checksum);
        }
    }
}
