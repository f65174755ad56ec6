//! Canonical JSON (RFC 8785, JCS) and SHA-256 checksums, exactly as docs/api.md defines them.
//!
//! An op's checksum is SHA-256 over the JCS encoding of the op object without its
//! `checksum` member; a batch's checksum likewise over the batch object. Because JCS fixes
//! key order, whitespace, string escapes and number formatting, any client with an RFC 8785
//! library (Python `rfc8785`, npm `canonicalize`) computes the same hex string.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Length of a checksum in hex characters.
pub const CHECKSUM_HEX_LEN: usize = 64;

/// Largest integer an IEEE 754 double holds exactly (2^53): JCS numbers are doubles.
const EXACT_INTEGER_MAX: u64 = 1 << 53;

/// The RFC 8785 canonical encoding of `value`.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    if is_plainly_canonical(value) {
        // serde_json's compact output is already the JCS encoding of such a value.
        return serde_json::to_vec(value).expect("a serde_json::Value always serializes");
    }
    // A `serde_json::Value` has only string keys and finite numbers, the two things JCS can
    // refuse, so failing here means a broken invariant in serde_json, not bad input.
    serde_json_canonicalizer::to_vec(value).expect("a serde_json::Value is always JCS-encodable")
}

/// Whether serde_json's compact encoding of `value` is byte for byte its JCS encoding, as
/// for nearly every op (the checksum is the hot path of enqueue and of the server): every
/// number an integer a double holds exactly (JCS prints numbers as ECMAScript doubles;
/// serde_json prints floats its own way), and every object's keys ASCII and met in
/// ascending order (for ASCII, UTF-16 order is byte order). The two escape strings alike:
/// `"`, `\`, `\b \f \n \r \t`, other control characters as lowercase `\u00xx`, nothing
/// else. Anything else goes through the full canonicalizer.
pub fn is_plainly_canonical(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => true,
        Value::Number(number) => {
            number.as_u64().is_some_and(|n| n <= EXACT_INTEGER_MAX)
                || number
                    .as_i64()
                    .is_some_and(|n| n.unsigned_abs() <= EXACT_INTEGER_MAX)
        }
        Value::Array(items) => items.iter().all(is_plainly_canonical),
        Value::Object(map) => {
            let mut previous: Option<&str> = None;
            map.iter().all(|(key, item)| {
                let in_order = key.is_ascii() && previous.is_none_or(|p| p < key.as_str());
                previous = Some(key);
                in_order && is_plainly_canonical(item)
            })
        }
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(CHECKSUM_HEX_LEN);
    for byte in digest.iter() {
        hex.push(char::from_digit(u32::from(byte >> 4), 16).expect("nibble"));
        hex.push(char::from_digit(u32::from(byte & 0xf), 16).expect("nibble"));
    }
    assert_eq!(hex.len(), CHECKSUM_HEX_LEN);
    hex
}

/// The checksum of a JSON object without its `checksum` member (docs/api.md).
///
/// # Panics
/// If `object` is not a JSON object: callers checksum ops and batches, which always are.
pub fn checksum_without_member(object: &Value) -> String {
    let map = object
        .as_object()
        .expect("only JSON objects carry a checksum member");
    let without: serde_json::Map<String, Value> = map
        .iter()
        .filter(|(key, _)| key.as_str() != "checksum")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    checksum_of_owned(Value::Object(without))
}

/// [`checksum_without_member`] of an object the caller owns (no copy is made).
///
/// # Panics
/// If `object` is not a JSON object.
pub fn checksum_of_owned(mut object: Value) -> String {
    object
        .as_object_mut()
        .expect("only JSON objects carry a checksum member")
        .remove("checksum");
    sha256_hex(&canonical_json(&object))
}

/// Whether `text` looks like a checksum: 64 lowercase hex characters.
pub fn is_checksum_format(text: &str) -> bool {
    text.len() == CHECKSUM_HEX_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jcs(text: &str) -> String {
        let value: Value = serde_json::from_str(text).unwrap();
        String::from_utf8(canonical_json(&value)).unwrap()
    }

    /// RFC 8785 §3.2.2, the example whose output is given in §3.2.3.
    #[test]
    fn rfc8785_main_example_is_reproduced() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let expected = concat!(
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"#,
            r#""string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
        assert_eq!(jcs(input), expected);
    }

    /// RFC 8785 §3.2.3: properties sort by UTF-16 code units, not by UTF-8 bytes.
    #[test]
    fn rfc8785_sorting_example_is_reproduced() {
        let input = r#"{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
                        \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\
                        \"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\
                        \"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(jcs(input), expected);
    }

    /// RFC 8785 Appendix B: IEEE 754 doubles serialized the ECMAScript way.
    #[test]
    fn rfc8785_number_examples_are_reproduced() {
        let cases = [
            ("0", "0"),
            ("-0", "0"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("9007199254740992", "9007199254740992"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("0.000001", "0.000001"),
            ("1e-7", "1e-7"),
            ("295147905179352830000", "295147905179352830000"),
            ("-5e-324", "-5e-324"),
            ("333333333.3333333", "333333333.3333333"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                jcs(&format!("[{input}]")),
                format!("[{expected}]"),
                "input {input}"
            );
        }
    }

    #[test]
    fn sha256_of_known_input() {
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn checksum_ignores_the_checksum_member_itself() {
        let a: Value = serde_json::from_str(r#"{"x":1,"checksum":"aa"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"x":1,"checksum":"bb"}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"x":1}"#).unwrap();
        assert_eq!(checksum_without_member(&a), checksum_without_member(&b));
        assert_eq!(checksum_without_member(&a), sha256_hex(br#"{"x":1}"#));
        assert_eq!(checksum_without_member(&a), checksum_without_member(&c));
    }

    #[test]
    fn checksum_format_is_lowercase_hex_of_length_64() {
        assert!(is_checksum_format(&"a".repeat(64)));
        assert!(!is_checksum_format(&"A".repeat(64)));
        assert!(!is_checksum_format(&"a".repeat(63)));
        assert!(!is_checksum_format(&"g".repeat(64)));
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1_000_000i64..1_000_000).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".*".prop_map(Value::from),
            "[a-z\\u{0}-\\u{1f}\"\\\\/]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("([a-z_]{1,6}|.{1,3})", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The fast path gives exactly the full canonicalizer's bytes whenever it is taken.
        #[test]
        fn the_fast_path_is_the_canonical_encoding(value in arbitrary_json()) {
            let full = serde_json_canonicalizer::to_vec(&value).unwrap();
            proptest::prop_assert_eq!(canonical_json(&value), full);
        }
    }

    #[test]
    fn the_fast_path_declines_what_serde_json_prints_differently() {
        for text in [
            "[1.5]",
            "[9007199254740993]",
            "[-9007199254740993]",
            r#"{"\u00e9":1}"#,
            r#"[{"b":1,"a":[2.0]}]"#,
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert!(!is_plainly_canonical(&value), "{text}");
        }
        let plain: Value =
            serde_json::from_str(r#"{"a":[1,-2,9007199254740992,"\n\u0001é"],"b":{"c":null}}"#)
                .unwrap();
        assert!(is_plainly_canonical(&plain));
    }
}
