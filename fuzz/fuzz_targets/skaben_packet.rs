//! Fuzzes what the server does with an inbound SKABEN publish before it touches any state
//! (`Packet::read` in the server's core): the topic through [`Inbound::parse`] (and
//! [`device_of_topic`] when it fails), the payload through [`Payload::parse`], and then the
//! pure steps the server takes for each packet kind.
//!
//! Input: the first byte picks the topic. Below 240 it is one of the six commands the server
//! reads (PONG, CUP, SUP, INFO, ACK, NACK) of a well-formed `ask/lock/<id>/<command>`, so that
//! most runs reach the payload; otherwise the topic is the text up to the first NUL (MQTT
//! forbids U+0000 in topics) and the payload what follows.
//!
//! Besides "no panic", it checks:
//! - a payload that parses re-encodes ([`Payload::to_json`]) to text that parses back to the
//!   same payload, and its unknown keys are kept;
//! - SUP: the datahold object, meta keys stripped ([`strip_meta`]) and merged into a config
//!   ([`merge_patch`]), gives a config whose canonical text parses back to itself and whose
//!   hash is 32 lowercase hex digits and the same after the round trip;
//! - CUP / PONG / ACK / NACK / INFO: a CUP the server would send back with this datahold
//!   ([`cup_payload`], both client profiles) parses as a payload carrying the task id, hash and
//!   overwrite flag it was built with, and its datahold, meta keys stripped, is the original's.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use skaben::{
    ClientProfile, Command, Inbound, META_KEYS, Payload, canonical_json, config_hash, cup_payload,
    device_of_topic, merge_patch, strip_meta,
};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let (topic, raw) = if first < 240 {
        let command = Command::ALL[usize::from(first) % Command::ALL.len()];
        (format!("ask/lock/b827eb0a1b2c/{command}"), rest)
    } else {
        let cut = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let Ok(topic) = std::str::from_utf8(&rest[..cut]) else {
            return;
        };
        (topic.to_string(), rest.get(cut + 1..).unwrap_or_default())
    };

    let inbound = match Inbound::parse(&topic) {
        Ok(inbound) => inbound,
        Err(_) => {
            let _ = device_of_topic(&topic);
            return;
        }
    };
    let payload = match Payload::parse(raw) {
        Ok(p) => p,
        Err(e) => {
            // Never empty, never the whole of a huge payload: what is quoted is cut to 120
            // bytes, each at most 6 characters once escaped, in a sentence of under 200.
            let text = e.to_string();
            assert!(!text.is_empty());
            assert!(
                text.len() <= 120 * 6 + 200,
                "error of {} bytes: {text:?}",
                text.len()
            );
            return;
        }
    };

    let json = payload.to_json();
    assert_eq!(
        Payload::parse(json.as_bytes()).as_ref(),
        Ok(&payload),
        "{json}"
    );
    if let Ok(Value::Object(original)) = serde_json::from_slice::<Value>(raw) {
        for key in original.keys() {
            let known = ["timestamp", "datahold", "task_id", "hash", "overwrite"];
            assert!(
                known.contains(&key.as_str()) || payload.extra.contains_key(key),
                "unknown key {key:?} lost"
            );
        }
    }

    match inbound.command {
        Command::Sup => sup(&payload),
        _ => cup_back(&payload),
    }
});

/// What `merge_sup` does with a SUP's datahold, on a fixed config.
fn sup(payload: &Payload) {
    let Some(Value::Object(map)) = &payload.datahold else {
        return;
    };
    let mut keys = Value::Object(map.clone());
    strip_meta(&mut keys);
    let Value::Object(stripped) = &keys else {
        panic!("strip_meta turned an object into {keys}");
    };
    for key in META_KEYS {
        assert!(!stripped.contains_key(key), "meta key {key} kept");
    }
    let mut config = json!({"closed": true, "acl": {"1234": [1, 2]}, "timer": 10});
    merge_patch(&mut config, &keys);
    check_hash(&config);
}

/// The CUP the server would answer with, carrying this datahold, for each client profile.
fn cup_back(payload: &Payload) {
    let datahold = payload.datahold.clone().unwrap_or_else(|| json!({}));
    let task_id = payload.task_id.as_deref().unwrap_or("1");
    let hash = config_hash(&datahold);
    for profile in ClientProfile::ALL {
        for overwrite in [false, true] {
            let cup = cup_payload(profile, &datahold, task_id, &hash, overwrite, 1_716_400_000);
            let text = cup.to_string();
            let back = Payload::parse(text.as_bytes()).expect("a built CUP parses");
            assert_eq!(back.task_id.as_deref(), Some(task_id));
            assert_eq!(back.hash.as_deref(), Some(hash.as_str()));
            assert_eq!(back.overwrite, overwrite.then_some(true));
            assert_eq!(back.timestamp, Some(1_716_400_000));
            let mut sent = back.datahold.expect("a built CUP has a datahold");
            let mut want = datahold.clone();
            strip_meta(&mut sent);
            strip_meta(&mut want);
            assert_eq!(sent, want, "{profile} CUP {text}");
        }
    }
}

/// The canonical text parses back to the value, and gives the same 32-hex-digit hash.
fn check_hash(config: &Value) {
    let text = canonical_json(config);
    let back: Value = serde_json::from_str(&text).expect("canonical text is JSON");
    assert_eq!(&back, config, "{text}");
    let hash = config_hash(config);
    assert_eq!(hash.len(), 32);
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(config_hash(&back), hash);
}
