//! The payload every SKABEN packet carries: a UTF-8 JSON object with a few known fields.
//!
//! Parsing checks the shape and the type of each known field, and nothing about which fields a
//! command needs: a PONG without `timestamp` still parses (with `timestamp: None`), and the core
//! decides what to do with it. Unknown top-level keys are kept, for the event log.
//!
//! Decisions the spec leaves open:
//! - a known field whose value is `null` counts as absent (a Python client writing `None` means
//!   "no value"), for `datahold` too;
//! - `task_id` may be a JSON integer: clients generate numeric-looking ids (`"6417540345"`) and
//!   one that forgot the quotes still means the same id, so it is kept as its decimal text;
//! - `timestamp` must be an integer that fits `i64`; `1716400000.0` is refused, as the spec says
//!   "integer Unix seconds".

use serde_json::{Map, Value};
use thiserror::Error;

/// Longest serde message quoted in [`PayloadError::NotJson`].
const MAX_REASON: usize = 120;

/// A parsed payload. Fields are `None` when absent (or `null`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Payload {
    /// Unix seconds. In PING and CUP, the server's clock; in PONG, the last server timestamp
    /// the device stored.
    pub timestamp: Option<i64>,
    /// The content: a config, a SUP's changed keys, an INFO event, a CUP request.
    pub datahold: Option<Value>,
    /// Ties an ACK/NACK to the CUP it answers.
    pub task_id: Option<String>,
    /// A config hash (see [`crate::config_hash`]).
    pub hash: Option<String>,
    /// In a CUP: `true` means "replace your config", absent means "merge".
    pub overwrite: Option<bool>,
    /// Top-level keys this version does not read, as they came.
    pub extra: Map<String, Value>,
}

/// Why a payload is not a SKABEN payload. Shown to operators: each says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    #[error("payload is not valid UTF-8 (invalid byte at offset {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },
    #[error("payload is not JSON: {reason}")]
    NotJson { reason: String },
    #[error("payload is a JSON {found}, expected an object")]
    NotObject { found: &'static str },
    #[error("field {field:?} is {found}, expected {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
}

impl Payload {
    /// Parses a payload: UTF-8, then JSON, then an object, then each known field's type.
    pub fn parse(bytes: &[u8]) -> Result<Payload, PayloadError> {
        let text = std::str::from_utf8(bytes).map_err(|e| PayloadError::NotUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        let value: Value = serde_json::from_str(text).map_err(|e| PayloadError::NotJson {
            reason: clip(e.to_string()),
        })?;
        Payload::from_value(value)
    }

    /// Reads the fields of an already parsed JSON value, which must be an object.
    pub fn from_value(value: Value) -> Result<Payload, PayloadError> {
        let Value::Object(mut map) = value else {
            return Err(PayloadError::NotObject {
                found: kind(&value),
            });
        };
        let timestamp = match take(&mut map, "timestamp") {
            None => None,
            Some(v) => Some(
                v.as_i64()
                    .ok_or_else(|| wrong("timestamp", "an integer", &v))?,
            ),
        };
        let datahold = take(&mut map, "datahold");
        let task_id = match take(&mut map, "task_id") {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            Some(v) => return Err(wrong("task_id", "a string or an integer", &v)),
        };
        let hash = match take(&mut map, "hash") {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(v) => return Err(wrong("hash", "a string", &v)),
        };
        let overwrite = match take(&mut map, "overwrite") {
            None => None,
            Some(Value::Bool(b)) => Some(b),
            Some(v) => return Err(wrong("overwrite", "true or false", &v)),
        };
        Ok(Payload {
            timestamp,
            datahold,
            task_id,
            hash,
            overwrite,
            extra: map,
        })
    }

    /// The payload as a JSON object: the known fields that are set, then `extra` (an `extra`
    /// key that names a known field loses to the field).
    pub fn to_value(&self) -> Value {
        let mut map = self.extra.clone();
        if let Some(t) = self.timestamp {
            map.insert("timestamp".into(), t.into());
        }
        if let Some(d) = &self.datahold {
            map.insert("datahold".into(), d.clone());
        }
        if let Some(t) = &self.task_id {
            map.insert("task_id".into(), t.as_str().into());
        }
        if let Some(h) = &self.hash {
            map.insert("hash".into(), h.as_str().into());
        }
        if let Some(o) = self.overwrite {
            map.insert("overwrite".into(), o.into());
        }
        Value::Object(map)
    }

    /// The payload as compact JSON text, ready to publish.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }
}

/// Removes `key`; a `null` value counts as absent.
fn take(map: &mut Map<String, Value>, key: &str) -> Option<Value> {
    map.remove(key).filter(|v| !v.is_null())
}

fn wrong(field: &'static str, expected: &'static str, found: &Value) -> PayloadError {
    let found = match found {
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {:?}", clip(s.clone())),
        Value::Bool(b) => format!("{b}"),
        other => format!("a JSON {}", kind(other)),
    };
    PayloadError::WrongType {
        field,
        expected,
        found,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Cuts a message to [`MAX_REASON`] bytes.
fn clip(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(text: &str) -> PayloadError {
        match Payload::parse(text.as_bytes()) {
            Ok(ok) => panic!("{text:?} parsed as {ok:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn all_fields() {
        let p = Payload::parse(
            br#"{"timestamp":5,"datahold":{"a":1},"task_id":"t-1","hash":"ab","overwrite":true,"x":[1]}"#,
        )
        .unwrap();
        assert_eq!(p.timestamp, Some(5));
        assert_eq!(p.datahold, Some(json!({"a":1})));
        assert_eq!(p.task_id.as_deref(), Some("t-1"));
        assert_eq!(p.hash.as_deref(), Some("ab"));
        assert_eq!(p.overwrite, Some(true));
        assert_eq!(p.extra.get("x"), Some(&json!([1])));
        assert_eq!(p.extra.len(), 1);
    }

    #[test]
    fn empty_object_and_nulls_are_absent() {
        assert_eq!(Payload::parse(b"{}").unwrap(), Payload::default());
        assert_eq!(
            Payload::parse(
                br#"{"timestamp":null,"datahold":null,"task_id":null,"hash":null,"overwrite":null}"#
            )
            .unwrap(),
            Payload::default()
        );
    }

    #[test]
    fn numeric_task_id_keeps_its_decimal_text() {
        let p = Payload::parse(br#"{"task_id":6417540345}"#).unwrap();
        assert_eq!(p.task_id.as_deref(), Some("6417540345"));
        let p = Payload::parse(br#"{"task_id":18446744073709551615}"#).unwrap();
        assert_eq!(p.task_id.as_deref(), Some("18446744073709551615"));
        let p = Payload::parse(br#"{"task_id":-3}"#).unwrap();
        assert_eq!(p.task_id.as_deref(), Some("-3"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        for (text, field) in [
            (r#"{"timestamp":1.5}"#, "timestamp"),
            (r#"{"timestamp":1716400000.0}"#, "timestamp"),
            (r#"{"timestamp":"1716400000"}"#, "timestamp"),
            (r#"{"timestamp":18446744073709551615}"#, "timestamp"),
            (r#"{"task_id":1.5}"#, "task_id"),
            (r#"{"task_id":true}"#, "task_id"),
            (r#"{"task_id":[]}"#, "task_id"),
            (r#"{"hash":5}"#, "hash"),
            (r#"{"overwrite":"true"}"#, "overwrite"),
            (r#"{"overwrite":1}"#, "overwrite"),
        ] {
            let e = err(text);
            assert!(
                matches!(e, PayloadError::WrongType { field: f, .. } if f == field),
                "{text}: {e:?}"
            );
            assert!(e.to_string().contains(field), "{e}");
        }
        assert_eq!(
            err(r#"{"timestamp":"soon"}"#).to_string(),
            "field \"timestamp\" is the string \"soon\", expected an integer"
        );
    }

    #[test]
    fn not_utf8() {
        assert_eq!(
            Payload::parse(b"{\"a\":\"\xff\"}"),
            Err(PayloadError::NotUtf8 { valid_up_to: 6 })
        );
    }

    #[test]
    fn not_json() {
        for text in ["", "{\"online\"}", "{", "online", "{\"a\":1}x"] {
            let e = err(text);
            assert!(matches!(e, PayloadError::NotJson { .. }), "{text:?}: {e:?}");
            assert!(e.to_string().starts_with("payload is not JSON: "), "{e}");
        }
    }

    #[test]
    fn not_an_object() {
        for (text, found) in [
            ("[1]", "array"),
            ("\"online\"", "string"),
            ("1", "number"),
            ("null", "null"),
            ("true", "boolean"),
        ] {
            assert_eq!(err(text), PayloadError::NotObject { found }, "{text}");
        }
    }

    #[test]
    fn long_serde_messages_are_cut() {
        let e = err(&format!("{{\"{}\"}}", "k".repeat(500)));
        let PayloadError::NotJson { reason } = e else {
            panic!("{e:?}");
        };
        assert!(reason.len() <= MAX_REASON + '…'.len_utf8(), "{reason}");
    }

    #[test]
    fn to_json_round_trips() {
        let p = Payload {
            timestamp: Some(-1),
            datahold: Some(json!("FF0000")),
            task_id: Some("7".into()),
            hash: Some("h".into()),
            overwrite: Some(false),
            extra: Map::from_iter([("k".to_string(), json!({"n": null}))]),
        };
        assert_eq!(Payload::parse(p.to_json().as_bytes()).unwrap(), p);
    }
}
