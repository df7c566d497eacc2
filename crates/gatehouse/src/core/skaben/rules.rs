//! The SKABEN rules, one function per inbound command of a known prop: what the packet changes
//! in the prop's state, which events it causes, and whether the prop gets its config (a CUP).
//! Pure: no lock, no store, no bus; the caller ([`super`]) registers the prop, marks it seen,
//! sends the CUP decided here and records the packet.
//!
//! - **pong**: a CUP when the device's timestamp is older than the keep-alive (it missed
//!   pings), when its hash differs from the desired config (unless that push failed), or
//!   while a push it can confirm is unconfirmed; a device that never reports a hash confirms a
//!   push by echoing a ping sent after it.
//! - **cup request**: always answered with the full config.
//! - **sup**: the changed keys are checked against the type's schema and merged into the
//!   prop's own config as a version by the device; no echo (a device in sync holds the result).
//! - **info**: an event (the scenario engine's main input).
//! - **ack**: confirms the tracked push it names (any of its task ids), else a matching hash
//!   confirms the current config, else it is recorded as unmatched.
//! - **nack**: fails the tracked push it names; a failed push is not re-sent automatically.
//!
//! Every command: a hash the device sends is what it holds (recorded; equal to the desired
//! config's hash, it confirms it — an ACK is judged by its task id first).

use serde_json::{Value, json};
use skaben::{Command, Payload};

use super::{OwnConfig, PropState, PushState, TypeEntry, secs};
use crate::core::acon::clip;
use crate::core::event::Event;

/// One inbound packet of a prop.
pub struct Packet<'a> {
    pub command: Command,
    pub payload: &'a Payload,
    pub raw: &'a [u8],
    pub now: i64,
}

/// What a rule decided.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Events about the prop, caused by the device, in order.
    pub events: Vec<Event>,
    /// Send the prop its full config, for this reason (the first reason found wins).
    pub cup: Option<&'static str>,
    /// The prop's stored row changed.
    pub dirty: bool,
    /// The packet was refused as malformed (counted in the stats).
    pub malformed: bool,
}

/// A hash in any packet: what the device holds.
pub fn hash_report(prop: &mut PropState, ty: &TypeEntry, p: &Packet, d: &mut Decision) {
    let Some(h) = &p.payload.hash else {
        return;
    };
    prop.delivery.confirms = true;
    if prop.reported.hash.as_ref() != Some(h) {
        prop.reported.hash = Some(h.clone());
        d.dirty = true;
    }
    let eff = prop.effective(&ty.def);
    let (version, current) = (eff.version, eff.hash.to_string());
    // An ACK is judged by its task id first (see `ack`).
    if p.command != Command::Ack && *h == current && prop.confirm(version, h, "hash", p.now) {
        d.dirty = true;
        d.events.push(Event::ConfigConfirmed {
            version,
            hash: h.clone(),
            by: "hash".into(),
            command: Some(p.command.as_str().into()),
            task_id: None,
        });
    }
}

/// PONG: the answer to a PING, with the timestamp the device stored and maybe its hash.
pub fn pong(
    prop: &mut PropState,
    ty: &TypeEntry,
    p: &Packet,
    server_keepalive_ms: i64,
    d: &mut Decision,
) {
    let eff = prop.effective(&ty.def);
    let (version, current) = (eff.version, eff.hash.to_string());
    prop.reported.pong_timestamp = p.payload.timestamp;
    let keepalive = ty.keepalive_ms(server_keepalive_ms);
    if let Some(ts) = p.payload.timestamp
        && secs(p.now) - ts > keepalive / 1000
    {
        d.cup
            .get_or_insert("timestamp older than the keep-alive timeout");
    }
    let failed = prop
        .delivery
        .pending
        .as_ref()
        .is_some_and(|x| x.state == PushState::Failed && x.hash == current);
    if let Some(h) = &p.payload.hash
        && *h != current
        && !failed
    {
        d.cup.get_or_insert("hash differs from the current config");
    }
    let Some(sent_at) = prop.delivery.pending_push().map(|x| x.first_sent_at) else {
        return;
    };
    if prop.delivery.confirms {
        d.cup.get_or_insert("push not yet confirmed");
    } else if p.payload.timestamp.is_some_and(|ts| ts >= secs(sent_at)) {
        // A device that reports no hash echoed a ping sent after the push: MQTT kept the
        // order, so it had the push first.
        if prop.confirm(version, &current, "ping", p.now) {
            d.dirty = true;
            d.events.push(Event::ConfigConfirmed {
                version,
                hash: current,
                by: "ping".into(),
                command: None,
                task_id: None,
            });
        }
    }
}

/// CUP request: the device wants its config now.
pub fn cup_request(d: &mut Decision) {
    d.cup = Some("cup request");
}

/// SUP: the keys players changed on the device, merged into its own config.
pub fn sup(prop: &mut PropState, ty: &TypeEntry, p: &Packet, d: &mut Decision) {
    match merge_sup(prop, ty, p) {
        Ok(Some(e)) => {
            d.dirty = true;
            d.events.push(e);
        }
        Ok(None) => {}
        Err(reason) => {
            d.malformed = true;
            d.events.push(Event::SupRejected {
                reason,
                raw: clip(p.raw),
            });
        }
    }
}

fn merge_sup(prop: &mut PropState, ty: &TypeEntry, p: &Packet) -> Result<Option<Event>, String> {
    let mut keys = match &p.payload.datahold {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        Some(other) => {
            return Err(format!(
                "datahold is {}, expected an object of changed keys",
                json_kind(other)
            ));
        }
        None => return Err("no datahold: a SUP carries the changed keys in datahold".into()),
    };
    skaben::strip_meta(&mut keys);
    let Value::Object(map) = &keys else {
        return Ok(None);
    };
    if map.is_empty() {
        return Ok(None);
    }
    let eff = prop.effective(&ty.def);
    let old_version = eff.version;
    let in_sync = prop.delivery.holds(eff.version, eff.hash);
    let mut config = eff.value.clone();
    if !config.is_object() {
        config = json!({});
    }
    skaben::merge_patch(&mut config, &keys);
    ty.check(&config)?;
    for (k, v) in map {
        prop.reported.values.insert(k.clone(), v.clone());
    }
    prop.reported.last_sup_at = Some(p.now);
    let hash = skaben::config_hash(&config);
    let version = old_version + 1;
    prop.own = Some(OwnConfig {
        value: config,
        version,
        hash: hash.clone(),
        updated_at: p.now,
        author: "device".into(),
    });
    if in_sync {
        // It holds what it had plus the keys it reported: no echo needed.
        prop.confirm(version, &hash, "sup", p.now);
    }
    Ok(Some(Event::ConfigChanged {
        old_version,
        new_version: version,
        hash,
        keys: Some(keys),
        via: "sup".into(),
        body: None,
    }))
}

/// INFO: something happened on the device (a code typed, a hack failed).
pub fn info(p: &Packet, d: &mut Decision) {
    d.events.push(Event::info(p.payload.datahold.as_ref()));
}

/// ACK: the device applied a CUP.
pub fn ack(prop: &mut PropState, ty: &TypeEntry, p: &Packet, d: &mut Decision) {
    prop.delivery.confirms = true;
    let matched = prop.delivery.pending.as_ref().and_then(|x| {
        p.payload
            .task_id
            .as_ref()
            .filter(|t| x.task_ids.contains(t))
            .map(|_| (x.version, x.hash.clone()))
    });
    let eff = prop.effective(&ty.def);
    let (version, current) = (eff.version, eff.hash.to_string());
    if let Some((v, hash)) = matched {
        if prop.confirm(v, &hash, "ack", p.now) {
            d.events.push(Event::ConfigConfirmed {
                version: v,
                hash,
                by: "ack".into(),
                command: None,
                task_id: p.payload.task_id.clone(),
            });
        }
        d.dirty = true;
    } else if p.payload.hash.as_deref() == Some(current.as_str()) {
        // The task id is unknown (`"missing"`, or an old one) but the hash proves it.
        if prop.confirm(version, &current, "hash", p.now) {
            d.dirty = true;
            d.events.push(Event::ConfigConfirmed {
                version,
                hash: current,
                by: "hash".into(),
                command: Some("ack".into()),
                task_id: None,
            });
        }
    } else {
        d.events.push(Event::AckUnmatched {
            task_id: p.payload.task_id.clone(),
            hash: p.payload.hash.clone(),
        });
    }
}

/// NACK: the device refused a CUP.
pub fn nack(prop: &mut PropState, p: &Packet, d: &mut Decision) {
    let task = p.payload.task_id.clone();
    let mut matched = false;
    if let Some(x) = &mut prop.delivery.pending
        && task.as_ref().is_some_and(|t| x.task_ids.contains(t))
    {
        x.state = PushState::Failed;
        matched = true;
        d.dirty = true;
    }
    d.events.push(Event::PushFailed {
        task_id: task,
        matched,
        datahold: p.payload.datahold.clone(),
        raw: clip(p.raw),
    });
}

/// Applies the rule of `p.command` (after the hash report every packet makes).
pub fn apply(
    prop: &mut PropState,
    ty: &TypeEntry,
    p: &Packet,
    server_keepalive_ms: i64,
    d: &mut Decision,
) {
    hash_report(prop, ty, p, d);
    match p.command {
        Command::Pong => pong(prop, ty, p, server_keepalive_ms, d),
        Command::Cup => cup_request(d),
        Command::Sup => sup(prop, ty, p, d),
        Command::Info => info(p, d),
        Command::Ack => ack(prop, ty, p, d),
        Command::Nack => nack(prop, p, d),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    //! The rules per command, table-driven over the protocol's wire examples: packets in, the
    //! events and CUPs out, through the core's state without a broker or a store.

    use serde_json::{Value, json};

    use crate::core::change::{Effects, State};
    use crate::core::{CoreConfig, UnknownPolicy};

    const T0: i64 = 1_716_400_000_000;

    fn state() -> State {
        let cfg = CoreConfig {
            unknown_devices: UnknownPolicy::Register,
            presence_timeout_ms: 300_000,
            code_length: 4,
            ping_interval_ms: 10_000,
            skaben_keepalive_ms: 60_000,
            acon_pin_peers: false,
            acon_max_new_boards_per_min: 60,
            acon_max_messages_per_sec: 20.0,
            skaben_max_packets_per_sec: 50.0,
            skaben_max_payload_bytes: 8192,
            timezone: None,
        };
        // Task ids start at 1000.
        let mut st = State::new(cfg, 1000);
        st.load_types(Vec::new(), T0).unwrap();
        st
    }

    /// What one packet did.
    struct Out {
        events: Vec<(String, String)>,
        cups: Vec<(String, Value)>,
        durable: bool,
    }

    fn send(st: &mut State, topic: &str, payload: &str, now: i64) -> Out {
        let hash = skaben::config_hash(&json!({}));
        let payload = payload.replace("{hash}", &hash);
        let mut fx = Effects::new(now);
        let durable = st.skaben_packet(&mut fx, topic, payload.as_bytes());
        Out {
            events: fx
                .events
                .iter()
                .map(|e| (e.device.clone().unwrap_or_default(), e.event.kind()))
                .collect(),
            cups: fx
                .publishes
                .iter()
                .map(|p| (p.topic.clone(), serde_json::from_str(&p.payload).unwrap()))
                .collect(),
            durable,
        }
    }

    /// (what, packets sent first, the packet, events (device, kind), CUP topics, durable)
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        (&'static str, &'static str),
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
        bool,
    );

    const LOCK_PONG: &str = "ask/lock/b827eb0a1b2c/pong";
    const LOCK_CUP: &str = "ask/lock/b827eb0a1b2c/cup";
    const LOCK_ACK: &str = "ask/lock/b827eb0a1b2c/ack";
    const CUP_REQUEST: &str =
        r#"{"timestamp":1716399990,"datahold":{"request":"all"},"task_id":"4821937465"}"#;
    /// Registers the lock and confirms its config by hash.
    const IN_SYNC: &[(&str, &str)] = &[
        (LOCK_CUP, CUP_REQUEST),
        (
            LOCK_ACK,
            r#"{"timestamp":1716400006,"hash":"{hash}","task_id":"1000"}"#,
        ),
    ];

    const CASES: &[Case] = &[
        (
            "pong from an unknown lock with a foreign hash: registered, online, its config",
            &[],
            (
                LOCK_PONG,
                r#"{"timestamp":1716399990,"hash":"d9766421904225c7f5de0e061004bb78"}"#,
            ),
            &[
                ("lock/b827eb0a1b2c", "registered"),
                ("lock/b827eb0a1b2c", "online"),
            ],
            &["lock/b827eb0a1b2c/cup"],
            false,
        ),
        (
            "pong with the current hash from a lock in sync: nothing to send",
            IN_SYNC,
            (LOCK_PONG, r#"{"timestamp":1716399999,"hash":"{hash}"}"#),
            &[],
            &[],
            false,
        ),
        (
            "pong with a foreign hash from a known lock: its config",
            IN_SYNC,
            (
                LOCK_PONG,
                r#"{"timestamp":1716399999,"hash":"d9766421904225c7f5de0e061004bb78"}"#,
            ),
            &[],
            &["lock/b827eb0a1b2c/cup"],
            false,
        ),
        (
            "pong older than the keep-alive (it missed pings): its config",
            IN_SYNC,
            (LOCK_PONG, r#"{"timestamp":1716390000,"hash":"{hash}"}"#),
            &[],
            &["lock/b827eb0a1b2c/cup"],
            false,
        ),
        (
            "an lamp that echoes the ping after its push: confirmed by ping",
            &[("ask/rgb/a4cf12aabbcc/pong", r#"{"timestamp":1716400000}"#)],
            ("ask/rgb/a4cf12aabbcc/pong", r#"{"timestamp":1716400000}"#),
            &[("rgb/a4cf12aabbcc", "config_confirmed")],
            &[],
            false,
        ),
        (
            "cup request from an unknown lock",
            &[],
            (LOCK_CUP, CUP_REQUEST),
            &[
                ("lock/b827eb0a1b2c", "registered"),
                ("lock/b827eb0a1b2c", "online"),
            ],
            &["lock/b827eb0a1b2c/cup"],
            false,
        ),
        (
            "cup request in uppercase from a lock in sync: answered",
            IN_SYNC,
            ("ASK/LOCK/B827EB0A1B2C/CUP", CUP_REQUEST),
            &[],
            &["lock/b827eb0a1b2c/cup"],
            false,
        ),
        (
            "cup request from all: a broadcast",
            &[],
            ("ask/pwr/all/cup", r#"{"timestamp":1}"#),
            &[],
            &["pwr/all/cup"],
            false,
        ),
        (
            "a second cup request from all within the second: coalesced",
            &[("ask/pwr/all/cup", r#"{"timestamp":1}"#)],
            ("ask/pwr/all/cup", r#"{"timestamp":1}"#),
            &[],
            &[],
            false,
        ),
        (
            "sup: merged as a version by the device, no echo, durable",
            IN_SYNC,
            (
                "ask/lock/b827eb0a1b2c/sup",
                r#"{"timestamp":1716400010,"datahold":{"closed":false},"task_id":"4821937466"}"#,
            ),
            &[("lock/b827eb0a1b2c", "config_changed")],
            &[],
            true,
        ),
        (
            "sup whose datahold is not an object: rejected with the reason",
            IN_SYNC,
            (
                "ask/lock/b827eb0a1b2c/sup",
                r#"{"timestamp":1,"datahold":"open"}"#,
            ),
            &[("lock/b827eb0a1b2c", "sup_rejected")],
            &[],
            true,
        ),
        (
            "sup from all names no device",
            &[],
            ("ask/pwr/all/sup", r#"{"timestamp":1,"datahold":{"x":1}}"#),
            &[("pwr/all", "ignored")],
            &[],
            true,
        ),
        (
            "info from a lock: an event, durable",
            IN_SYNC,
            (
                "ask/lock/b827eb0a1b2c/info",
                r#"{"timestamp":1716400010,"datahold":{"type":"access","content":"123456","success":true}}"#,
            ),
            &[("lock/b827eb0a1b2c", "info")],
            &[],
            true,
        ),
        (
            "info from all",
            &[],
            (
                "ask/pwr/all/info",
                r#"{"timestamp":0,"datahold":{"powerstate":"AUX"}}"#,
            ),
            &[("pwr/all", "info")],
            &[],
            true,
        ),
        (
            "info from an unknown terminal: registered, online, its config, the event",
            &[],
            (
                "ask/terminal/0242ac110002/info",
                r#"{"timestamp":1716400011,"datahold":{"type":"hack","success":false}}"#,
            ),
            &[
                ("terminal/0242ac110002", "registered"),
                ("terminal/0242ac110002", "online"),
                ("terminal/0242ac110002", "info"),
            ],
            &["terminal/0242ac110002/cup"],
            true,
        ),
        (
            "ack of the tracked push: confirmed",
            &[(LOCK_CUP, CUP_REQUEST)],
            (
                LOCK_ACK,
                r#"{"timestamp":1716400006,"hash":"{hash}","task_id":"1000"}"#,
            ),
            &[("lock/b827eb0a1b2c", "config_confirmed")],
            &[],
            false,
        ),
        (
            "ack with a task id of no push and a foreign hash: unmatched",
            &[(LOCK_CUP, CUP_REQUEST)],
            (
                LOCK_ACK,
                r#"{"timestamp":1716400006,"hash":"ffff","task_id":"t-17"}"#,
            ),
            &[("lock/b827eb0a1b2c", "ack_unmatched")],
            &[],
            false,
        ),
        (
            "nack of the tracked push: failed",
            &[(LOCK_CUP, CUP_REQUEST)],
            (
                "ask/lock/b827eb0a1b2c/nack",
                r#"{"timestamp":1716400006,"task_id":"1000"}"#,
            ),
            &[("lock/b827eb0a1b2c", "push_failed")],
            &[],
            false,
        ),
        (
            "malformed payload: an event under the device",
            &[],
            ("ask/rgb/a4cf12aabbcc/sup", r#"{"online"}"#),
            &[("rgb/a4cf12aabbcc", "malformed")],
            &[],
            false,
        ),
        (
            "unknown command: malformed, filed under the device the topic names",
            &[],
            ("ask/lock/b827eb0a1b2c/bogus", r#"{"timestamp":1}"#),
            &[("lock/b827eb0a1b2c", "malformed")],
            &[],
            false,
        ),
        (
            "unknown type: rejected",
            &[],
            ("ask/nosuch/00aabbccddee/pong", r#"{"timestamp":1}"#),
            &[("nosuch/00aabbccddee", "rejected")],
            &[],
            false,
        ),
    ];

    #[test]
    fn packets_in_events_and_cups_out() {
        for (what, before, (topic, payload), events, cups, durable) in CASES {
            let mut st = state();
            for (i, (t, p)) in before.iter().enumerate() {
                send(&mut st, t, p, T0 + i as i64);
            }
            let out = send(&mut st, topic, payload, T0 + 500);
            let got: Vec<(&str, &str)> = out
                .events
                .iter()
                .map(|(d, k)| (d.as_str(), k.as_str()))
                .collect();
            assert_eq!(got, *events, "{what}: events");
            let topics: Vec<&str> = out.cups.iter().map(|(t, _)| t.as_str()).collect();
            assert_eq!(topics, *cups, "{what}: CUPs");
            assert_eq!(out.durable, *durable, "{what}: durable");
        }
    }

    #[test]
    fn a_cup_carries_the_full_config_with_the_profiles_meta_keys() {
        let mut st = state();
        let out = send(&mut st, LOCK_CUP, CUP_REQUEST, T0);
        let (_, cup) = &out.cups[0];
        let hash = skaben::config_hash(&json!({}));
        // The lock type uses the reference client's profile: task id, hash and FORCE inside.
        assert_eq!(cup["task_id"], "1000");
        assert_eq!(cup["hash"], hash.as_str());
        assert_eq!(cup["overwrite"], true);
        assert_eq!(cup["timestamp"], T0 / 1000);
        assert_eq!(
            cup["datahold"],
            json!({"task_id": "1000", "hash": hash, "FORCE": true})
        );
        // A NACKed push is not re-sent on a later pong with the old hash.
        send(
            &mut st,
            "ask/lock/b827eb0a1b2c/nack",
            r#"{"timestamp":1,"task_id":"1000"}"#,
            T0 + 1,
        );
        let out = send(
            &mut st,
            LOCK_PONG,
            r#"{"timestamp":1716400000,"hash":"ffff"}"#,
            T0 + 2,
        );
        assert!(out.cups.is_empty(), "{:?}", out.cups);
    }

    /// The copies that had drifted apart: an unknown type is counted as a refusal like an
    /// unknown device, and malformed input keeps the same 2 KiB on both protocols.
    #[test]
    fn refusals_are_counted_and_malformed_input_is_kept_alike_on_both_protocols() {
        let mut st = state();
        let mut fx = Effects::new(T0);
        st.skaben_packet(
            &mut fx,
            "ask/nosuch/00aabbccddee/pong",
            b"{\"timestamp\":1}",
        );
        assert_eq!(fx.counts.skaben_rejected, 1, "unknown type");
        let big = vec![b'x'; 3000];
        let mut prop = Effects::new(T0);
        st.skaben_packet(&mut prop, "ask/rgb/a4cf12aabbcc/sup", &big);
        let mut board = Effects::new(T0);
        st.acon_malformed(&mut board, &big, "not a frame", "10.0.0.5:4000");
        for fx in [prop, board] {
            let rec = fx.events[0].record();
            assert_eq!(rec.kind, "malformed");
            let data: Value = serde_json::from_str(&rec.data).unwrap();
            assert_eq!(data["raw"].as_str().unwrap().len(), 2048);
            assert_eq!(
                (data["raw_len"].as_u64(), data["truncated"].as_bool()),
                (Some(3000), Some(true))
            );
        }
    }
}
