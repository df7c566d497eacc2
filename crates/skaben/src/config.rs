//! Configs as documents: their canonical text, their hash, and JSON merge patch.
//!
//! The hash of a config is computed over exactly the `datahold` the server sends (after
//! [`crate::strip_meta`]), written canonically: object keys sorted at every level (by their
//! UTF-8 bytes), no white space, strings and numbers written as serde_json writes them. So the
//! same config always gives the same hash, whatever order its keys were typed or stored in, and
//! a device that echoes the hash back matches the server's without either side re-encoding.
//!
//! The canonical text sorts keys itself rather than relying on `serde_json::Map` being a
//! `BTreeMap`: any crate in the build could turn on serde_json's `preserve_order` feature, and
//! that must not change a hash. Numbers are not normalised (`1` and `1.0` differ), which is not
//! RFC 8785 (JCS); configs are typed by operators and devices that keep their numbers' form.
//! This crate turns on serde_json's `float_roundtrip`, so that a config kept as its canonical
//! text and parsed again gives the same value and the same hash for every double (without it,
//! serde_json's parser is off by one unit in the last place for some of them).

use md5::{Digest, Md5};
use serde_json::{Map, Value};

/// The canonical text of a JSON value: keys sorted at every level, compact, as serde_json
/// escapes strings and writes numbers.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// The config hash: MD5 of [`canonical_json`], as 32 lowercase hex digits. See the crate docs
/// for why MD5.
pub fn config_hash(value: &Value) -> String {
    let digest = Md5::digest(canonical_json(value).as_bytes());
    let mut hex = String::with_capacity(2 * digest.len());
    for byte in digest.iter() {
        hex.push(HEX[usize::from(byte >> 4)]);
        hex.push(HEX[usize::from(byte & 0x0f)]);
    }
    hex
}

/// Applies a JSON merge patch (RFC 7386) to `target`, in place.
///
/// An object patch sets each of its keys (recursively), and removes the keys whose value is
/// `null`; any other patch replaces the target whole. A smart device merges a CUP's datahold into
/// its config; the server merges a SUP's datahold into the reported state the same way.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

const HEX: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f',
];

/// Recursion depth is that of the value; values parsed by serde_json are at most 128 deep.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, control characters as `\b`,
/// `\t`, `\n`, `\f`, `\r` or `\u00XX` (lowercase hex), everything else as is.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{0c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if u32::from(c) < 0x20 => {
                let b = u32::from(c) as usize;
                out.push_str("\\u00");
                out.push(HEX[b >> 4]);
                out.push(HEX[b & 0x0f]);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sorts_keys_at_every_level() {
        let value = json!({"b": {"z": 1, "a": [{"y": null, "x": true}]}, "a": "s"});
        assert_eq!(
            canonical_json(&value),
            r#"{"a":"s","b":{"a":[{"x":true,"y":null}],"z":1}}"#
        );
    }

    #[test]
    fn keys_sort_by_bytes() {
        let value = json!({"b": 1, "B": 2, "é": 3, "a": 4, "": 5});
        assert_eq!(canonical_json(&value), r#"{"":5,"B":2,"a":4,"b":1,"é":3}"#);
    }

    #[test]
    fn strings_escape_like_serde_json() {
        let s = "q\"b\\ \u{8}\t\n\u{c}\r\u{1}\u{1f}\u{7f}/é😀";
        let value = Value::String(s.into());
        assert_eq!(canonical_json(&value), value.to_string());
        assert_eq!(
            canonical_json(&value),
            "\"q\\\"b\\\\ \\b\\t\\n\\f\\r\\u0001\\u001f\u{7f}/é😀\""
        );
    }

    #[test]
    fn numbers_keep_their_form() {
        let value: Value = serde_json::from_str("[1,1.0,-0,1e3,0.1,18446744073709551615]").unwrap();
        assert_eq!(
            canonical_json(&value),
            "[1,1.0,-0.0,1000.0,0.1,18446744073709551615]"
        );
    }

    #[test]
    fn hash_is_md5_of_the_canonical_text() {
        // MD5("{}") and MD5("") from any md5sum.
        assert_eq!(config_hash(&json!({})), "99914b932bd37a50b983c5e7c90ae93b");
        assert_eq!(
            config_hash(&json!({"b": 1, "a": 2})),
            config_hash(&json!({"a": 2, "b": 1}))
        );
        let h = config_hash(&json!({"closed": true}));
        assert_eq!(h.len(), 32);
        assert!(
            h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(h, config_hash(&json!({"closed": false})));
    }

    #[test]
    fn merge_patch_replaces_non_objects_and_removes_nulls() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": 3});
        merge_patch(&mut target, &json!({"a": {"b": null, "e": 4}, "d": [5]}));
        assert_eq!(target, json!({"a": {"c": 2, "e": 4}, "d": [5]}));
        merge_patch(&mut target, &json!("whole"));
        assert_eq!(target, json!("whole"));
    }
}
