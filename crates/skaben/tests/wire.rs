//! The wire examples (`docs/protocol/skaben.md`, "Wire examples"), every line, through the
//! public API: device → server lines through topic and payload parsing, server → device lines
//! through the builders, which must produce the same topic and a payload that parses back to
//! the example. Then the encoding side of "Compatibility with the reference client".

use serde_json::{Value, json};
use skaben::{
    ClientProfile, Command, Inbound, META_KEYS, Outbound, OutboundCommand, Payload, PayloadError,
    Target, canonical_json, config_hash, cup_all_topic, cup_payload, cup_topic, merge_patch,
    ping_payload, ping_topic, strip_meta,
};

/// The list in `docs/protocol/skaben.md`, verbatim: topic, payload, and a comment in
/// parentheses on some lines.
const WIRE: &str = r#"
lock/all/ping                  {"timestamp":1716400000}
ask/lock/b827eb0a1b2c/pong     {"timestamp":1716399990,"hash":"d9766421904225c7f5de0e061004bb78"}
ask/rgb/a4cf12aabbcc/pong      {"timestamp":1716400000}                       (small devices echo the ping)
ask/lock/b827eb0a1b2c/cup      {"timestamp":1716399990,"datahold":{"request":"all"},"task_id":"4821937465"}
ask/pwr/all/cup                {"timestamp":1}                                (small device on connect)
lock/b827eb0a1b2c/cup          {"timestamp":1716400005,"datahold":{"closed":true,"blocked":false,"sound":false,"timer":10,"acl":{"123456":[4,5]}},"task_id":"t-17","hash":"…"}
rgb/all/cup                    {"timestamp":1716400005,"datahold":{"RGB":"00FF00/1000/0/C","STR":"0/1000/C","LGT":"1/1000/C"}}
scl/all/cup                    {"timestamp":1716400005,"datahold":{"level":120,"state":"green","borders":[334,667,1000]}}
ask/lock/b827eb0a1b2c/sup      {"timestamp":1716400010,"datahold":{"closed":false},"task_id":"4821937466"}
ask/lock/b827eb0a1b2c/info     {"timestamp":1716400010,"datahold":{"type":"access","content":"123456","success":true}}
ask/pwr/all/info               {"timestamp":0,"datahold":{"powerstate":"AUX"}}
ask/terminal/0242ac110002/info {"timestamp":1716400011,"datahold":{"type":"hack","success":false}}
ask/lock/b827eb0a1b2c/ack      {"timestamp":1716400006,"hash":"…","task_id":"t-17"}
ask/rgb/a4cf12aabbcc/sup       {"online"}                                     (malformed: not JSON)
"#;

const MAC: &str = "b827eb0a1b2c";

/// One line of [`WIRE`], split.
struct Line<'a> {
    topic: &'a str,
    payload: &'a str,
    comment: Option<&'a str>,
}

/// Topic, then payload, then an optional `(comment)`; separated by runs of spaces (the
/// payloads have none).
fn lines() -> Vec<Line<'static>> {
    WIRE.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (topic, rest) = l.split_once(' ').unwrap_or((l, ""));
            let rest = rest.trim_start();
            let (payload, comment) = match rest.split_once("  ") {
                Some((p, c)) => (p, Some(c.trim())),
                None => (rest, None),
            };
            Line {
                topic,
                payload,
                comment,
            }
        })
        .collect()
}

/// What a line of the list must give.
enum Expect {
    /// Device → server: the parsed topic and payload.
    Inbound(Inbound, Payload),
    /// Device → server, topic fine, payload not JSON.
    NotJson(Inbound),
    /// Server → device PING.
    Ping { device_type: &'static str },
    /// Server → device CUP, to one device or to all of the type.
    Cup {
        device_type: &'static str,
        target: Target,
    },
}

fn inbound(device_type: &str, id: Option<&str>, command: Command) -> Inbound {
    Inbound {
        device_type: device_type.into(),
        target: id.map_or(Target::All, |id| Target::Device(id.into())),
        command,
    }
}

fn payload(value: Value) -> Payload {
    Payload::from_value(value).unwrap()
}

/// The expectations, in the order of [`WIRE`].
fn expected() -> Vec<Expect> {
    use Command::*;
    vec![
        Expect::Ping {
            device_type: "lock",
        },
        Expect::Inbound(
            inbound("lock", Some(MAC), Pong),
            Payload {
                timestamp: Some(1716399990),
                hash: Some("d9766421904225c7f5de0e061004bb78".into()),
                ..Payload::default()
            },
        ),
        Expect::Inbound(
            inbound("rgb", Some("a4cf12aabbcc"), Pong),
            Payload {
                timestamp: Some(1716400000),
                ..Payload::default()
            },
        ),
        Expect::Inbound(
            inbound("lock", Some(MAC), Cup),
            Payload {
                timestamp: Some(1716399990),
                datahold: Some(json!({"request": "all"})),
                task_id: Some("4821937465".into()),
                ..Payload::default()
            },
        ),
        Expect::Inbound(
            inbound("pwr", None, Cup),
            Payload {
                timestamp: Some(1),
                ..Payload::default()
            },
        ),
        Expect::Cup {
            device_type: "lock",
            target: Target::Device(MAC.into()),
        },
        Expect::Cup {
            device_type: "rgb",
            target: Target::All,
        },
        Expect::Cup {
            device_type: "scl",
            target: Target::All,
        },
        Expect::Inbound(
            inbound("lock", Some(MAC), Sup),
            payload(json!({
                "timestamp": 1716400010,
                "datahold": {"closed": false},
                "task_id": "4821937466",
            })),
        ),
        Expect::Inbound(
            inbound("lock", Some(MAC), Info),
            payload(json!({
                "timestamp": 1716400010,
                "datahold": {"type": "access", "content": "123456", "success": true},
            })),
        ),
        Expect::Inbound(
            inbound("pwr", None, Info),
            payload(json!({"timestamp": 0, "datahold": {"powerstate": "AUX"}})),
        ),
        Expect::Inbound(
            inbound("terminal", Some("0242ac110002"), Info),
            payload(json!({
                "timestamp": 1716400011,
                "datahold": {"type": "hack", "success": false},
            })),
        ),
        Expect::Inbound(
            inbound("lock", Some(MAC), Ack),
            Payload {
                timestamp: Some(1716400006),
                hash: Some("…".into()),
                task_id: Some("t-17".into()),
                ..Payload::default()
            },
        ),
        Expect::NotJson(inbound("rgb", Some("a4cf12aabbcc"), Sup)),
    ]
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn every_wire_example() {
    let lines = lines();
    let expected = expected();
    assert_eq!(lines.len(), 14, "the spec lists 14 wire examples");
    assert_eq!(lines.len(), expected.len());
    for (line, expect) in lines.iter().zip(expected) {
        let at = format!("wire example {} {}", line.topic, line.payload);
        match expect {
            Expect::Inbound(topic, fields) => {
                assert_eq!(Inbound::parse(line.topic).as_ref(), Ok(&topic), "{at}");
                let parsed = Payload::parse(line.payload.as_bytes());
                assert_eq!(parsed.as_ref(), Ok(&fields), "{at}");
                // What a parsed payload encodes to is what came in.
                assert_eq!(fields.to_value(), json_of(line.payload), "{at}");
                assert!(
                    Outbound::parse(line.topic).is_err(),
                    "{at}: an inbound topic must not read as an outbound one"
                );
            }
            Expect::NotJson(topic) => {
                assert_eq!(Inbound::parse(line.topic).as_ref(), Ok(&topic), "{at}");
                let err = Payload::parse(line.payload.as_bytes()).unwrap_err();
                assert!(matches!(err, PayloadError::NotJson { .. }), "{at}: {err:?}");
                assert!(
                    line.comment.is_some_and(|c| c.contains("not JSON")),
                    "{at}: the spec marks it malformed"
                );
            }
            Expect::Ping { device_type } => {
                check_ping(line, device_type);
            }
            Expect::Cup {
                device_type,
                target,
            } => {
                check_cup(line, device_type, target);
            }
        }
    }
}

/// The builders give the example's topic and payload, and the payload parses back.
fn check_ping(line: &Line, device_type: &str) {
    let at = format!("wire example {} {}", line.topic, line.payload);
    assert_eq!(ping_topic(device_type).unwrap(), line.topic, "{at}");
    assert_eq!(
        Outbound::parse(line.topic).unwrap(),
        Outbound {
            device_type: device_type.into(),
            target: Target::All,
            command: OutboundCommand::Ping,
        },
        "{at}"
    );
    let example = Payload::parse(line.payload.as_bytes()).unwrap();
    let ts = example.timestamp.unwrap();
    let built = ping_payload(ts);
    assert_eq!(built, json_of(line.payload), "{at}");
    assert_eq!(built.to_string(), line.payload, "{at}: byte for byte");
    assert_eq!(
        Payload::parse(built.to_string().as_bytes()).unwrap(),
        example
    );
}

/// The builders give the example's topic, and a standard CUP with the example's fields that
/// parses back to them. The public server sent dumb types (`rgb`, `scl`) no `task_id` or
/// `hash`; gatehouse always sends both, so the built payload is the example plus those two.
fn check_cup(line: &Line, device_type: &str, target: Target) {
    let at = format!("wire example {} {}", line.topic, line.payload);
    let topic = match &target {
        Target::Device(id) => cup_topic(device_type, id).unwrap(),
        Target::All => cup_all_topic(device_type).unwrap(),
    };
    assert_eq!(topic, line.topic, "{at}");
    assert_eq!(
        Outbound::parse(line.topic).unwrap(),
        Outbound {
            device_type: device_type.into(),
            target,
            command: OutboundCommand::Cup,
        },
        "{at}"
    );

    let example = Payload::parse(line.payload.as_bytes()).unwrap();
    let datahold = example.datahold.clone().unwrap();
    let task_id = example.task_id.clone().unwrap_or_else(|| "t-1".into());
    let hash = example
        .hash
        .clone()
        .unwrap_or_else(|| config_hash(&datahold));
    let built = cup_payload(
        ClientProfile::Standard,
        &datahold,
        &task_id,
        &hash,
        false,
        example.timestamp.unwrap(),
    );
    let parsed = Payload::parse(built.to_string().as_bytes()).unwrap();
    assert_eq!(parsed.to_value(), built, "{at}: round trip");
    assert_eq!(parsed.timestamp, example.timestamp, "{at}");
    assert_eq!(parsed.datahold, example.datahold, "{at}");
    assert_eq!(parsed.task_id.as_deref(), Some(task_id.as_str()), "{at}");
    assert_eq!(parsed.hash.as_deref(), Some(hash.as_str()), "{at}");
    assert_eq!(parsed.overwrite, None, "{at}: a merge has no overwrite");

    let mut without_meta = built.clone();
    if let Value::Object(map) = &mut without_meta {
        if example.task_id.is_none() {
            map.remove("task_id");
        }
        if example.hash.is_none() {
            map.remove("hash");
        }
    }
    assert_eq!(without_meta, json_of(line.payload), "{at}");

    // With the real hash in place of the example's "…", the hash is that of the datahold.
    let real = cup_payload(
        ClientProfile::Standard,
        &datahold,
        &task_id,
        &config_hash(&datahold),
        false,
        0,
    );
    assert_eq!(real["hash"], json!(config_hash(&real["datahold"])), "{at}");
}

// --- Compatibility with the reference client: the encoding side ---

/// The lock config of the wire example `lock/b827eb0a1b2c/cup`.
fn lock_config() -> Value {
    json!({"closed": true, "blocked": false, "sound": false, "timer": 10, "acl": {"123456": [4, 5]}})
}

#[test]
fn reference_client_cup_request_parses() {
    // With spaces, as Python's json.dumps writes it.
    let p = Payload::parse(
        br#"{"timestamp": 0, "datahold": {"request": "all"}, "task_id": "6417540345"}"#,
    )
    .unwrap();
    assert_eq!(p.timestamp, Some(0));
    assert_eq!(p.datahold, Some(json!({"request": "all"})));
    assert_eq!(p.task_id.as_deref(), Some("6417540345"));
    assert_eq!(p.hash, None);
    // A numeric task id means the same id.
    let p = Payload::parse(
        br#"{"timestamp": 0, "datahold": {"request": "all"}, "task_id": 6417540345}"#,
    )
    .unwrap();
    assert_eq!(p.task_id.as_deref(), Some("6417540345"));
    // Once it holds a hash, it adds it.
    let p = Payload::parse(
        br#"{"timestamp": 0, "datahold": {"request": "all"}, "task_id": "1", "hash": "abc"}"#,
    )
    .unwrap();
    assert_eq!(p.hash.as_deref(), Some("abc"));
}

#[test]
fn reference_cup_has_task_id_and_hash_inside_datahold() {
    let config = lock_config();
    let hash = config_hash(&config);
    let built = cup_payload(
        ClientProfile::Reference,
        &config,
        "t-17",
        &hash,
        false,
        1716400005,
    );
    let p = Payload::parse(built.to_string().as_bytes()).unwrap();
    assert_eq!(p.timestamp, Some(1716400005));
    assert_eq!(p.task_id.as_deref(), Some("t-17"));
    assert_eq!(p.hash.as_deref(), Some(hash.as_str()));
    assert_eq!(p.overwrite, None);
    let datahold = p.datahold.unwrap();
    assert_eq!(datahold["task_id"], json!("t-17"));
    assert_eq!(datahold["hash"], json!(hash));
    assert!(datahold.get("FORCE").is_none(), "a merge carries no FORCE");
    for (key, value) in config.as_object().unwrap() {
        assert_eq!(&datahold[key], value, "config key {key}");
    }

    // The standard profile leaves the datahold alone.
    let standard = cup_payload(ClientProfile::Standard, &config, "t-17", &hash, false, 1);
    assert_eq!(standard["datahold"], config);
}

#[test]
fn reference_replacing_cup_has_force_inside_and_overwrite_outside() {
    let config = lock_config();
    let built = cup_payload(
        ClientProfile::Reference,
        &config,
        "t-18",
        &config_hash(&config),
        true,
        1,
    );
    assert_eq!(built["overwrite"], json!(true));
    assert_eq!(built["datahold"]["FORCE"], json!(true));
    let p = Payload::parse(built.to_string().as_bytes()).unwrap();
    assert_eq!(p.overwrite, Some(true));

    // A stale FORCE in the config does not make a merge replace.
    let mut stale = config.clone();
    stale["FORCE"] = json!(true);
    let merge = cup_payload(ClientProfile::Reference, &stale, "t-19", "h", false, 1);
    assert!(merge["datahold"].get("FORCE").is_none());
    assert!(merge.get("overwrite").is_none());
}

#[test]
fn strip_meta_gives_back_the_config_and_its_hash_is_the_one_sent() {
    let config = lock_config();
    for overwrite in [false, true] {
        let built = cup_payload(
            ClientProfile::Reference,
            &config,
            "t-17",
            &config_hash(&config),
            overwrite,
            1,
        );
        let p = Payload::parse(built.to_string().as_bytes()).unwrap();
        let mut datahold = p.datahold.unwrap();
        assert_ne!(datahold, config, "the meta keys are inside");
        strip_meta(&mut datahold);
        assert_eq!(datahold, config);
        for key in META_KEYS {
            assert!(datahold.get(key).is_none(), "{key} stripped");
        }
        assert_eq!(p.hash, Some(config_hash(&datahold)));
        assert_eq!(canonical_json(&datahold), canonical_json(&config));
    }
}

/// The reference client merges the datahold, meta keys and all, into its saved config and
/// sends the saved `hash` back in later PONGs: stripped, its saved config hashes to that hash,
/// so the server sees it in sync and does not resend.
#[test]
fn reference_client_saved_config_stays_in_sync() {
    let config = lock_config();
    let hash = config_hash(&config);
    for overwrite in [false, true] {
        let mut saved = json!({"closed": false, "task_id": "old", "hash": "old"});
        let push = cup_payload(
            ClientProfile::Reference,
            &config,
            "t-20",
            &hash,
            overwrite,
            1,
        );
        let datahold = &push["datahold"];
        if datahold.get("FORCE") == Some(&json!(true)) {
            saved = datahold.clone();
        } else {
            merge_patch(&mut saved, datahold);
        }

        let pong = json!({"timestamp": 1, "hash": saved["hash"]}).to_string();
        let pong = Payload::parse(pong.as_bytes()).unwrap();
        assert_eq!(
            pong.hash.as_deref(),
            Some(hash.as_str()),
            "overwrite {overwrite}"
        );
        let mut stored = saved.clone();
        strip_meta(&mut stored);
        assert_eq!(stored, config, "overwrite {overwrite}");
        assert_eq!(config_hash(&stored), hash, "overwrite {overwrite}");
    }

    // Its later SUPs may carry the saved meta keys: they stay out of the reported state.
    let sup = Payload::parse(
        br#"{"timestamp":2,"datahold":{"closed":true,"task_id":"t-20","hash":"x","FORCE":true}}"#,
    )
    .unwrap();
    let mut changed = sup.datahold.unwrap();
    strip_meta(&mut changed);
    let mut reported = config.clone();
    merge_patch(&mut reported, &changed);
    let mut want = config.clone();
    want["closed"] = json!(true);
    assert_eq!(reported, want);
}

/// The reference client sends no ACK for an empty datahold; the reference profile's meta keys
/// make a CUP of an empty config non-empty, so it is still acknowledged.
#[test]
fn reference_cup_of_an_empty_config_is_not_empty() {
    let built = cup_payload(
        ClientProfile::Reference,
        &json!({}),
        "t-21",
        &config_hash(&json!({})),
        true,
        1,
    );
    assert!(!built["datahold"].as_object().unwrap().is_empty());
}

/// The reference client drops payloads without `timestamp`: every payload the server builds
/// has one.
#[test]
fn built_payloads_always_have_a_timestamp() {
    for profile in ClientProfile::ALL {
        for overwrite in [false, true] {
            let p = cup_payload(profile, &json!({"a": 1}), "t", "h", overwrite, 0);
            assert_eq!(
                Payload::parse(p.to_string().as_bytes()).unwrap().timestamp,
                Some(0)
            );
        }
    }
    assert_eq!(
        Payload::parse(ping_payload(0).to_string().as_bytes())
            .unwrap()
            .timestamp,
        Some(0)
    );
}

#[test]
fn reference_client_ack_without_task_id_parses() {
    let p = Payload::parse(br#"{"timestamp": 1716400006, "hash": "d9766421904225c7f5de0e061004bb78", "task_id": "missing"}"#)
        .unwrap();
    assert_eq!(p.task_id.as_deref(), Some("missing"));
}

/// Small ESP devices echo the ping payload as their PONG.
#[test]
fn echoed_ping_is_a_pong() {
    let ping = ping_payload(1716400000).to_string();
    let topic = Inbound::parse("ask/rgb/a4cf12aabbcc/pong").unwrap();
    assert_eq!(topic.command, Command::Pong);
    let pong = Payload::parse(ping.as_bytes()).unwrap();
    assert_eq!(pong.timestamp, Some(1716400000));
}

/// Older firmware writes topics in uppercase.
#[test]
fn uppercase_topics_from_older_firmware() {
    assert_eq!(
        Inbound::parse("ASK/LOCK/B827EB0A1B2C/SUP").unwrap(),
        inbound("lock", Some(MAC), Command::Sup)
    );
    assert_eq!(
        Inbound::parse("ASK/PWR/ALL/CUP").unwrap(),
        inbound("pwr", None, Command::Cup)
    );
}
