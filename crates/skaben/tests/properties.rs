//! Property tests: the config hash ignores key order and white space; topics and payloads
//! round trip through their builders and parsers; parsers never panic; merge patch and the CUP
//! builders keep their promises on arbitrary configs.

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use skaben::{
    ClientProfile, Command, Inbound, META_KEYS, Outbound, OutboundCommand, Payload, Target,
    canonical_json, config_hash, cup_payload, merge_patch, strip_meta,
};

/// A small deterministic generator, so a failing case shrinks and replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*; the seed is made non-zero.
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..6).prop_map(String::from_iter)
}

/// Numbers that survive text → f64 → text exactly: integers, and multiples of 1/8.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1_000_000i64..1_000_000)
            .prop_map(|n| { Number::from_f64(n as f64 / 8.0).map_or(Value::Null, Value::Number) }),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(text(), inner, 0..6).prop_map(|m| Value::Object(Map::from_iter(m))),
        ]
    })
}

fn config() -> impl Strategy<Value = Value> {
    btree_map(
        prop_oneof![
            text(),
            Just("hash".to_string()),
            Just("FORCE".to_string()),
            Just("task_id".to_string())
        ],
        json(),
        0..6,
    )
    .prop_map(|m| Value::Object(Map::from_iter(m)))
}

const BLANKS: &[&str] = &["", "", " ", "\n", "\t", "\r\n", "  "];

fn blank(rng: &mut Rng, out: &mut String) {
    out.push_str(BLANKS[rng.below(BLANKS.len())]);
}

/// A JSON string with some characters written as `\uXXXX` escapes.
fn write_string(s: &str, rng: &mut Rng, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let code = u32::from(c);
        if code <= 0xffff && (code < 0x20 || c == '"' || c == '\\' || rng.below(3) == 0) {
            out.push_str(&format!("\\u{code:04x}"));
        } else {
            out.push(c);
        }
    }
    out.push('"');
}

/// The value as JSON text with its keys in a random order and random white space.
fn write_scrambled(value: &Value, rng: &mut Rng, out: &mut String) {
    blank(rng, out);
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_scrambled(item, rng, out);
            }
            blank(rng, out);
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            rng.shuffle(&mut entries);
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                blank(rng, out);
                write_string(key, rng, out);
                blank(rng, out);
                out.push(':');
                write_scrambled(item, rng, out);
            }
            blank(rng, out);
            out.push('}');
        }
        Value::String(s) => write_string(s, rng, out),
        other => out.push_str(&other.to_string()),
    }
    blank(rng, out);
}

/// The same value, its maps rebuilt by inserting keys in a random order.
fn reinserted(value: &Value, rng: &mut Rng) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(|v| reinserted(v, rng)).collect()),
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            rng.shuffle(&mut entries);
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k.clone(), reinserted(v, rng));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// The same value, its maps rebuilt with keys inserted in sorted order, so serde_json writes
/// them sorted whether or not its `preserve_order` feature is on.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

fn flip_case(s: &str, rng: &mut Rng) -> String {
    s.chars()
        .map(|c| {
            if rng.below(2) == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

fn device_type() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,32}".prop_filter("reserved", |t| t != "ask")
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        Just(Target::All),
        "[a-z0-9_-]{1,64}"
            .prop_filter("all is the broadcast", |id| id != "all")
            .prop_map(Target::Device),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    let known = ["timestamp", "datahold", "task_id", "hash", "overwrite"];
    (
        option::of(any::<i64>()),
        option::of(json().prop_filter("null is absent", |v| !v.is_null())),
        option::of(text()),
        option::of(text()),
        option::of(any::<bool>()),
        btree_map(
            text().prop_filter("known key", move |k| !known.contains(&k.as_str())),
            json(),
            0..4,
        ),
    )
        .prop_map(
            |(timestamp, datahold, task_id, hash, overwrite, extra)| Payload {
                timestamp,
                datahold,
                task_id,
                hash,
                overwrite,
                extra: Map::from_iter(extra),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The hash depends on the value only: not on key order in the text, white space,
    /// string escapes, or the order keys were inserted in.
    #[test]
    fn hash_ignores_key_order_and_white_space(value in json(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let mut scrambled = String::new();
        write_scrambled(&value, &mut rng, &mut scrambled);
        let reparsed: Value = serde_json::from_str(&scrambled)
            .map_err(|e| TestCaseError::fail(format!("{scrambled}: {e}")))?;
        prop_assert_eq!(&reparsed, &value);
        prop_assert_eq!(canonical_json(&reparsed), canonical_json(&value));
        prop_assert_eq!(config_hash(&reparsed), config_hash(&value));
        let reinserted = reinserted(&value, &mut rng);
        prop_assert_eq!(config_hash(&reinserted), config_hash(&value));
    }

    /// The canonical text is serde_json's compact text with sorted keys, has no white space
    /// outside strings, and parses back to the same value.
    #[test]
    fn canonical_text_is_sorted_compact_json(value in json()) {
        let canonical = canonical_json(&value);
        prop_assert_eq!(&canonical, &sorted(&value).to_string());
        let back: Value = serde_json::from_str(&canonical)
            .map_err(|e| TestCaseError::fail(format!("{canonical}: {e}")))?;
        prop_assert_eq!(&back, &value);
        prop_assert_eq!(canonical_json(&back), canonical);
        let hash = config_hash(&value);
        prop_assert_eq!(hash.len(), 32);
        prop_assert!(hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    /// A config read back from its canonical text (as a store keeps it) hashes the same, for
    /// any finite double: needs serde_json's `float_roundtrip`, which this crate turns on.
    #[test]
    fn canonical_text_of_any_float_reads_back_the_same(f in any::<f64>()) {
        let Some(n) = Number::from_f64(f) else {
            return Ok(());
        };
        let value = serde_json::json!({"f": n, "list": [n]});
        let back: Value = serde_json::from_str(&canonical_json(&value))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &value);
        prop_assert_eq!(config_hash(&back), config_hash(&value));
    }

    #[test]
    fn inbound_topic_round_trips_in_any_case(
        device_type in device_type(),
        target in target(),
        command in proptest::sample::select(Command::ALL.to_vec()),
        seed in any::<u64>(),
    ) {
        let inbound = Inbound { device_type, target, command };
        let topic = flip_case(&inbound.topic(), &mut Rng(seed));
        prop_assert_eq!(Inbound::parse(&topic), Ok(inbound));
    }

    #[test]
    fn outbound_topic_round_trips(
        device_type in device_type(),
        target in target(),
        cup in any::<bool>(),
    ) {
        let command = if cup { OutboundCommand::Cup } else { OutboundCommand::Ping };
        let outbound = Outbound::new(&device_type.to_uppercase(), target, command)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&outbound.device_type, &device_type);
        prop_assert_eq!(Outbound::parse(&outbound.topic()), Ok(outbound));
    }

    /// Any topic either fails with an error or gives lowercase, well-formed parts.
    #[test]
    fn topic_parse_never_panics(
        topic in prop_oneof![
            any::<String>(),
            "([aA][sS][kK]|x|)/[a-zA-Z0-9_+#/-]{0,6}/[a-zA-Z0-9:_-]{0,6}/[a-zA-Z]{0,5}",
        ],
    ) {
        if let Ok(inbound) = Inbound::parse(&topic) {
            prop_assert!(topic.to_ascii_lowercase().starts_with("ask/"));
            prop_assert_eq!(inbound.topic(), topic.to_ascii_lowercase());
        }
        let _ = Outbound::parse(&topic);
    }

    #[test]
    fn payload_round_trips(payload in payload()) {
        let json = payload.to_json();
        prop_assert_eq!(Payload::parse(json.as_bytes()), Ok(payload));
    }

    /// Arbitrary bytes: an error, or a payload that encodes to the same JSON.
    #[test]
    fn payload_parse_never_panics(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..64),
            json().prop_map(|v| v.to_string().into_bytes()),
        ],
    ) {
        if let Ok(payload) = Payload::parse(&bytes) {
            let original: Value = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut without_nulls = original.clone();
            if let Value::Object(map) = &mut without_nulls {
                for key in ["timestamp", "datahold", "task_id", "hash", "overwrite"] {
                    if map.get(key).is_some_and(Value::is_null) {
                        map.remove(key);
                    }
                }
            }
            let encoded = payload.to_value();
            // A numeric task_id comes back as its text; everything else is as it came.
            if let (Some(Value::Number(n)), Value::Object(map)) =
                (original.get("task_id"), &mut without_nulls)
            {
                map.insert("task_id".into(), Value::String(n.to_string()));
            }
            prop_assert_eq!(encoded, without_nulls);
        }
    }

    #[test]
    fn merge_patch_is_idempotent(target in json(), patch in json()) {
        let mut once = target.clone();
        merge_patch(&mut once, &patch);
        let mut twice = once.clone();
        merge_patch(&mut twice, &patch);
        prop_assert_eq!(&twice, &once);
        match &patch {
            Value::Object(patch) => {
                for (key, value) in patch {
                    match value {
                        Value::Null => prop_assert!(once.get(key).is_none()),
                        Value::Object(_) => prop_assert!(once[key].is_object()),
                        value => prop_assert_eq!(&once[key], value),
                    }
                }
            }
            patch => prop_assert_eq!(&once, patch),
        }
    }

    /// Whatever the profile, the receiver can read the config, the task id, the hash and the
    /// overwrite flag back, and stripping the meta keys gives the config without them.
    #[test]
    fn cup_payload_carries_config_and_meta(
        config in config(),
        task_id in text(),
        overwrite in any::<bool>(),
        timestamp in any::<i64>(),
        reference in any::<bool>(),
    ) {
        let profile = if reference { ClientProfile::Reference } else { ClientProfile::Standard };
        let mut clean = config.clone();
        strip_meta(&mut clean);
        let hash = config_hash(&clean);
        let built = cup_payload(profile, &clean, &task_id, &hash, overwrite, timestamp);
        let parsed = Payload::parse(built.to_string().as_bytes())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.timestamp, Some(timestamp));
        prop_assert_eq!(parsed.task_id.as_deref(), Some(task_id.as_str()));
        prop_assert_eq!(parsed.hash.as_deref(), Some(hash.as_str()));
        prop_assert_eq!(parsed.overwrite, overwrite.then_some(true));
        let mut datahold = parsed.datahold.unwrap_or(Value::Null);
        match profile {
            ClientProfile::Standard => prop_assert_eq!(&datahold, &clean),
            ClientProfile::Reference => {
                prop_assert_eq!(&datahold["task_id"], &Value::from(task_id.as_str()));
                prop_assert_eq!(&datahold["hash"], &Value::from(hash.as_str()));
                prop_assert_eq!(datahold.get("FORCE"), overwrite.then_some(&Value::Bool(true)));
                strip_meta(&mut datahold);
                prop_assert_eq!(&datahold, &clean);
            }
        }
        prop_assert_eq!(config_hash(&datahold), hash);
        for key in META_KEYS {
            prop_assert!(datahold.get(key).is_none());
        }
    }
}
