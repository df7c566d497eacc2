//! Fuzzes [`merge_patch`] (JSON merge patch, RFC 7386) and the config hash on what it makes.
//!
//! The input is read as two JSON values, a target and a patch, built from the bytes (keys from
//! a small set, so that target and patch share keys and patches reach into targets; arrays and
//! nulls at any depth). Besides "no panic", with `r = merge(t, p)`:
//! - `r` equals an independent implementation written from the RFC's pseudo-code;
//! - applying a patch twice is applying it once: `merge(r, p) == r`;
//! - `merge(t, {})` is `t` for an object, `{}` otherwise; a patch that is not an object
//!   replaces the target whole;
//! - for an object patch, member by member: a `null` removes the key, an object merges into
//!   the target's member, anything else replaces it; the target's other keys are untouched and
//!   `r` has no other keys;
//! - the merge never introduces a null member: when no object of `t` has a null member
//!   (arrays aside, which a patch replaces whole), no object of `r` has one;
//! - `canonical_json(r)` parses back to `r`, and the hash is the same for the value read back
//!   (the stored config hashes as the one sent).

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Number, Value};
use skaben::{canonical_json, config_hash, merge_patch};

/// Deep enough for nested configs, shallow enough to stay fast.
const MAX_DEPTH: u32 = 6;

/// Keys the values are made of: few, so that target and patch keep meeting.
const KEYS: [&str; 8] = ["a", "b", "c", "closed", "acl", "hash", "", "é"];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(target), Ok(patch)) = (value(&mut u, 0), value(&mut u, 0)) else {
        return;
    };

    let mut r = target.clone();
    merge_patch(&mut r, &patch);

    assert_eq!(r, reference(&target, &patch), "t={target} p={patch}");

    let mut again = r.clone();
    merge_patch(&mut again, &patch);
    assert_eq!(again, r, "not idempotent: t={target} p={patch}");

    let mut empty = target.clone();
    merge_patch(&mut empty, &Value::Object(Map::new()));
    if target.is_object() {
        assert_eq!(empty, target);
    } else {
        assert_eq!(empty, Value::Object(Map::new()));
    }

    match &patch {
        Value::Object(members) => {
            let Value::Object(result) = &r else {
                panic!("an object patch gave {r}");
            };
            for (key, v) in members {
                match v {
                    Value::Null => assert!(!result.contains_key(key), "{key:?} not removed"),
                    Value::Object(_) => {
                        let mut inner = target.get(key).cloned().unwrap_or(Value::Null);
                        merge_patch(&mut inner, v);
                        assert_eq!(result.get(key), Some(&inner), "{key:?}");
                    }
                    _ => assert_eq!(result.get(key), Some(v), "{key:?}"),
                }
            }
            for (key, v) in result {
                if !members.contains_key(key) {
                    assert_eq!(target.get(key), Some(v), "{key:?} changed or appeared");
                }
            }
            if !has_null_member(&target) {
                assert!(
                    !has_null_member(&r),
                    "null introduced: t={target} p={patch} r={r}"
                );
            }
        }
        other => assert_eq!(&r, other),
    }

    let text = canonical_json(&r);
    let back: Value = serde_json::from_str(&text).expect("canonical text is JSON");
    assert_eq!(back, r, "{text}");
    assert_eq!(config_hash(&back), config_hash(&r));
});

/// RFC 7386, section 2, as written:
///
/// ```text
/// define MergePatch(Target, Patch):
///   if Patch is an Object:
///     if Target is not an Object:
///       Target = {} # Ignore the contents and set it to an empty Object
///     for each Name/Value pair in Patch:
///       if Value is null:
///         if Name exists in Target:
///           remove the Name/Value pair from Target
///       else:
///         Target[Name] = MergePatch(Target[Name], Value)
///     return Target
///   else:
///     return Patch
/// ```
fn reference(target: &Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    for (name, value) in patch {
        if value.is_null() {
            out.remove(name);
        } else {
            let merged = reference(out.get(name).unwrap_or(&Value::Null), value);
            out.insert(name.clone(), merged);
        }
    }
    Value::Object(out)
}

/// Whether an object reachable through objects only has a `null` member.
fn has_null_member(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.values().any(|v| v.is_null() || has_null_member(v)),
        _ => false,
    }
}

/// A JSON value from the fuzzer's bytes.
fn value(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let pick = if depth >= MAX_DEPTH {
        u.int_in_range(0..=4)?
    } else {
        u.int_in_range(0..=7)?
    };
    Ok(match pick {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::Number(Number::from(u.arbitrary::<i64>()?)),
        3 => Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        4 => Value::String(u.arbitrary()?),
        5 => {
            let n = u.int_in_range(0..=3)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(value(u, depth + 1)?);
            }
            Value::Array(items)
        }
        _ => {
            let n = u.int_in_range(0..=5)?;
            let mut map = Map::new();
            for _ in 0..n {
                let key = if u.ratio(1, 8)? {
                    u.arbitrary::<String>()?
                } else {
                    (*u.choose(&KEYS)?).to_string()
                };
                map.insert(key, value(u, depth + 1)?);
            }
            Value::Object(map)
        }
    })
}
