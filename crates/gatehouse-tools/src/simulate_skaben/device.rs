//! One virtual SKABEN device's memory and rules, without I/O.
//!
//! The simulator's loop owns the MQTT connection; it asks a [`Device`] what to subscribe to and
//! what to send on connect, hands it every publish that arrives, and tells it when to send a
//! SUP or an INFO. Each call returns the packets to publish. Keeping the rules here makes them
//! testable without a network.
//!
//! The rules follow `docs/protocol/skaben.md` ("Compatibility with the reference client"):
//!
//! **Smart devices** (`lock`, `terminal`) keep a structured config.
//! - On every (re)connect: a CUP request `ask/<type>/<id>/cup`
//!   `{"timestamp": <stored ping time or 0>, "datahold": {"request": "all"}, "task_id": "<digits>"}`,
//!   plus `"hash"` once the device holds one.
//! - PING (`<type>/all/ping`): the device answers PONG `ask/<type>/<id>/pong` with the
//!   timestamp it stored from the **previous** ping (0 at first) and the hash it holds, then
//!   stores the new one. A ping without a timestamp (or not JSON) is dropped. The reference
//!   profile also drops a ping older than its stored timestamp.
//! - CUP (`<type>/<id>/cup`, `<type>/all/cup`):
//!   - standard profile: reads the top-level `task_id`, `hash` and `overwrite`; `overwrite:
//!     true` replaces the config with the datahold, otherwise the datahold is merged in
//!     (RFC 7386, [`skaben::merge_patch`]). The hash it holds (and reports) is the top-level
//!     `hash` the server sent. It ACKs every CUP it applies.
//!   - reference profile (the public Python client): drops a payload without `timestamp`;
//!     reads `task_id` and `hash` only from inside the datahold; `"FORCE": true` inside the
//!     datahold means replace; the whole datahold (meta keys included) is merged into, or
//!     replaces, its saved config, so the `hash` it holds is the one saved there. It ACKs
//!     with `"task_id": "missing"` when the datahold has none, and not at all for an empty
//!     datahold. The merge is RFC 7386 too (the Python client's exact merge is not
//!     documented; for flat configs, which is what locks and terminals hold, they agree).
//!   - ACK: `ask/<type>/<id>/ack` `{"timestamp": <the CUP's>, "hash": …, "task_id": …}`.
//! - SUP, when told to: `{"timestamp": …, "datahold": {"closed": <toggled>}}`, the toggle
//!   applied to its own config too (a player opened the lock). INFO, when told to:
//!   `{"timestamp": …, "datahold": {"type": "access", "content": "<code>", "success": …}}`,
//!   a code from the config's `acl` (success) or a random one (failure).
//!
//! **Dumb devices** (every other type: `rgb`, `pwr`, `scl`, `box`, …), the small ESP boards:
//! on connect `{"timestamp":1}` to `ask/<type>/all/cup`; each PING payload is echoed, byte for
//! byte, as the PONG on `ask/<type>/<id>/pong`; a CUP's datahold becomes the whole config; no
//! ACK, no SUP, no INFO.
//!
//! **In sync**: whatever the profile, the device remembers the hash the server put in the last
//! CUP it took (top level, or inside the datahold when the top level has none) and is *in
//! sync* when the [`skaben::config_hash`] of its config, without the [`skaben::META_KEYS`],
//! equals it: it holds exactly the config the server last sent.

use rand::RngExt;
use rand::rngs::SmallRng;
use serde_json::{Map, Value, json};
use skaben::{ClientProfile, Payload, config_hash, strip_meta};

/// Types whose devices keep a structured config and merge updates; any other is dumb.
pub(crate) const SMART_TYPES: [&str; 2] = ["lock", "terminal"];

/// A packet to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) kind: Sent,
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
}

impl Outgoing {
    /// The payload as text (tests, logs).
    #[cfg(test)]
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap()
    }
}

/// What an [`Outgoing`] packet is, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    CupRequest,
    Pong,
    Ack,
    Sup,
    Info,
}

/// What an inbound publish was, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A PING; `answered` is false when the device dropped it (no timestamp, older than
    /// the stored one).
    Ping { answered: bool },
    /// A CUP; `applied` is false when the device dropped it (not JSON, no timestamp for the
    /// reference profile, no datahold).
    Cup { applied: bool },
    /// A topic the device does not handle.
    Other,
}

/// The device's answer to one inbound publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handled {
    pub(crate) seen: Seen,
    pub(crate) out: Option<Outgoing>,
}

/// Whether the device holds the config the server last sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigMatch {
    /// No CUP with a hash taken yet.
    NoHash = 0,
    Same = 1,
    Differs = 2,
}

/// One virtual device.
#[derive(Debug)]
pub(crate) struct Device {
    device_type: String,
    id: String,
    smart: bool,
    profile: ClientProfile,
    /// The timestamp of the last ping taken (0 before the first).
    stored_ts: i64,
    config: Value,
    /// Standard profile: the top-level hash of the last CUP applied. (The reference profile
    /// keeps its hash inside `config`.)
    hash: Option<String>,
    /// The hash the server sent with the last CUP applied, for [`Device::sync`].
    server_hash: Option<String>,
    rng: SmallRng,
    // Topics, built once.
    ask_cup: String,
    ask_pong: String,
    ask_ack: String,
    ask_sup: String,
    ask_info: String,
    ping_all: String,
    cup_all: String,
    cup_own: String,
}

impl Device {
    /// A device of `device_type` (already validated, lowercase) with `id` (12 lowercase hex
    /// digits). `profile` matters only for smart types.
    pub(crate) fn new(device_type: &str, id: &str, profile: ClientProfile, rng: SmallRng) -> Self {
        let smart = SMART_TYPES.contains(&device_type);
        let ask = |cmd: &str| format!("ask/{device_type}/{id}/{cmd}");
        Device {
            device_type: device_type.to_string(),
            id: id.to_string(),
            smart,
            profile,
            stored_ts: 0,
            config: Value::Object(Map::new()),
            hash: None,
            server_hash: None,
            rng,
            ask_cup: if smart {
                ask("cup")
            } else {
                format!("ask/{device_type}/all/cup")
            },
            ask_pong: ask("pong"),
            ask_ack: ask("ack"),
            ask_sup: ask("sup"),
            ask_info: ask("info"),
            ping_all: format!("{device_type}/all/ping"),
            cup_all: format!("{device_type}/all/cup"),
            cup_own: format!("{device_type}/{id}/cup"),
        }
    }

    pub(crate) fn is_smart(&self) -> bool {
        self.smart
    }

    #[cfg(test)]
    pub(crate) fn config(&self) -> &Value {
        &self.config
    }

    #[cfg(test)]
    pub(crate) fn stored_ts(&self) -> i64 {
        self.stored_ts
    }

    /// The topic filters to subscribe to: the type's pings and CUPs, and the device's CUPs.
    pub(crate) fn subscriptions(&self) -> [&str; 3] {
        [&self.ping_all, &self.cup_all, &self.cup_own]
    }

    /// What the device sends once it is connected and subscribed.
    pub(crate) fn on_connect(&mut self) -> Outgoing {
        let payload = if self.smart {
            let mut p = json!({
                "timestamp": self.stored_ts,
                "datahold": {"request": "all"},
                "task_id": self.task_id(),
            });
            if let Some(hash) = self.held_hash() {
                p["hash"] = hash.into();
            }
            p.to_string().into_bytes()
        } else {
            br#"{"timestamp":1}"#.to_vec()
        };
        Outgoing {
            kind: Sent::CupRequest,
            topic: self.ask_cup.clone(),
            payload,
        }
    }

    /// Takes one publish from the server.
    pub(crate) fn on_publish(&mut self, topic: &str, payload: &[u8]) -> Handled {
        if topic == self.ping_all {
            let out = self.on_ping(payload);
            Handled {
                seen: Seen::Ping {
                    answered: out.is_some(),
                },
                out,
            }
        } else if topic == self.cup_own || topic == self.cup_all {
            match self.on_cup(payload) {
                None => Handled {
                    seen: Seen::Cup { applied: false },
                    out: None,
                },
                Some(ack) => Handled {
                    seen: Seen::Cup { applied: true },
                    out: ack,
                },
            }
        } else {
            Handled {
                seen: Seen::Other,
                out: None,
            }
        }
    }

    fn on_ping(&mut self, payload: &[u8]) -> Option<Outgoing> {
        if !self.smart {
            return Some(Outgoing {
                kind: Sent::Pong,
                topic: self.ask_pong.clone(),
                payload: payload.to_vec(),
            });
        }
        let timestamp = Payload::parse(payload).ok()?.timestamp?;
        if self.profile == ClientProfile::Reference && timestamp < self.stored_ts {
            return None;
        }
        let mut pong = json!({ "timestamp": self.stored_ts });
        if let Some(hash) = self.held_hash() {
            pong["hash"] = hash.into();
        }
        self.stored_ts = timestamp;
        Some(Outgoing {
            kind: Sent::Pong,
            topic: self.ask_pong.clone(),
            payload: pong.to_string().into_bytes(),
        })
    }

    /// `None`: dropped. `Some(ack)`: applied, with the ACK to send if any.
    fn on_cup(&mut self, payload: &[u8]) -> Option<Option<Outgoing>> {
        let cup = Payload::parse(payload).ok()?;
        if !self.smart {
            let datahold = cup.datahold?;
            self.server_hash = cup.hash;
            self.config = datahold;
            return Some(None);
        }
        match self.profile {
            ClientProfile::Standard => {
                let datahold = cup.datahold?;
                if cup.overwrite == Some(true) {
                    self.config = datahold;
                } else {
                    skaben::merge_patch(&mut self.config, &datahold);
                }
                if cup.hash.is_some() {
                    self.hash = cup.hash.clone();
                }
                self.server_hash = cup.hash;
                let mut ack = Map::new();
                ack.insert(
                    "timestamp".into(),
                    cup.timestamp.unwrap_or(self.stored_ts).into(),
                );
                if let Some(hash) = &self.hash {
                    ack.insert("hash".into(), hash.as_str().into());
                }
                if let Some(task_id) = cup.task_id {
                    ack.insert("task_id".into(), task_id.into());
                }
                Some(Some(self.ack(ack)))
            }
            ClientProfile::Reference => {
                let timestamp = cup.timestamp?;
                let Some(Value::Object(datahold)) = cup.datahold else {
                    return None;
                };
                if datahold.is_empty() {
                    // Applied (nothing to apply), and never ACKed.
                    return Some(None);
                }
                let task_id = match datahold.get("task_id") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => "missing".to_string(),
                };
                let sent_hash = datahold
                    .get("hash")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                self.server_hash = cup.hash.or(sent_hash);
                let datahold = Value::Object(datahold);
                if datahold.get("FORCE") == Some(&Value::Bool(true)) {
                    self.config = datahold;
                } else {
                    skaben::merge_patch(&mut self.config, &datahold);
                }
                let mut ack = Map::new();
                ack.insert("timestamp".into(), timestamp.into());
                if let Some(hash) = self.held_hash() {
                    ack.insert("hash".into(), hash.into());
                }
                ack.insert("task_id".into(), task_id.into());
                Some(Some(self.ack(ack)))
            }
        }
    }

    fn ack(&self, payload: Map<String, Value>) -> Outgoing {
        Outgoing {
            kind: Sent::Ack,
            topic: self.ask_ack.clone(),
            payload: Value::Object(payload).to_string().into_bytes(),
        }
    }

    /// A SUP: a player opened or closed the lock. `None` for a dumb device.
    pub(crate) fn sup(&mut self) -> Option<Outgoing> {
        if !self.smart {
            return None;
        }
        let closed = !self
            .config
            .get("closed")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let change = json!({ "closed": closed });
        skaben::merge_patch(&mut self.config, &change);
        let payload = json!({ "timestamp": self.stored_ts, "datahold": change });
        Some(Outgoing {
            kind: Sent::Sup,
            topic: self.ask_sup.clone(),
            payload: payload.to_string().into_bytes(),
        })
    }

    /// An INFO: someone typed a code; a code from the config's `acl` opens (success), any
    /// other does not. `None` for a dumb device.
    pub(crate) fn info(&mut self) -> Option<Outgoing> {
        if !self.smart {
            return None;
        }
        let known: Vec<&String> = self
            .config
            .get("acl")
            .and_then(Value::as_object)
            .map(|acl| acl.keys().collect())
            .unwrap_or_default();
        let (content, success) = if !known.is_empty() && self.rng.random_bool(0.5) {
            let pick = self.rng.random_range(0..known.len());
            (known[pick].clone(), true)
        } else {
            let code = format!("{:06}", self.rng.random_range(0..1_000_000u32));
            let success = known.iter().any(|k| **k == code);
            (code, success)
        };
        let payload = json!({
            "timestamp": self.stored_ts,
            "datahold": {"type": "access", "content": content, "success": success},
        });
        Some(Outgoing {
            kind: Sent::Info,
            topic: self.ask_info.clone(),
            payload: payload.to_string().into_bytes(),
        })
    }

    /// Whether the config equals the one the server last sent.
    pub(crate) fn sync(&self) -> ConfigMatch {
        let Some(server_hash) = &self.server_hash else {
            return ConfigMatch::NoHash;
        };
        let mut config = self.config.clone();
        strip_meta(&mut config);
        if config_hash(&config) == *server_hash {
            ConfigMatch::Same
        } else {
            ConfigMatch::Differs
        }
    }

    /// The hash the device holds and reports: standard, the last top-level hash; reference,
    /// the `hash` saved in its config.
    fn held_hash(&self) -> Option<String> {
        match self.profile {
            ClientProfile::Standard => self.hash.clone(),
            ClientProfile::Reference => self
                .config
                .get("hash")
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }

    /// Ten random digits, like the reference client's.
    fn task_id(&mut self) -> String {
        self.rng
            .random_range(1_000_000_000u64..10_000_000_000)
            .to_string()
    }

    pub(crate) fn device_type(&self) -> &str {
        &self.device_type
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use skaben::cup_payload;

    use super::*;

    const ID: &str = "5ca1ab000001";

    fn device(device_type: &str, profile: ClientProfile) -> Device {
        Device::new(device_type, ID, profile, SmallRng::seed_from_u64(7))
    }

    fn ping(d: &mut Device, ts: i64) -> Handled {
        let topic = format!("{}/all/ping", d.device_type());
        d.on_publish(&topic, skaben::ping_payload(ts).to_string().as_bytes())
    }

    fn cup(d: &mut Device, payload: &Value) -> Handled {
        let topic = format!("{}/{}/cup", d.device_type(), d.id());
        d.on_publish(&topic, payload.to_string().as_bytes())
    }

    /// A CUP as the server builds it for `profile`: the hash of the full config after the push.
    fn server_cup(
        profile: ClientProfile,
        datahold: &Value,
        full: &Value,
        task: &str,
        overwrite: bool,
    ) -> Value {
        cup_payload(profile, datahold, task, &config_hash(full), overwrite, 1000)
    }

    #[test]
    fn subscriptions_and_topics() {
        let d = device("lock", ClientProfile::Standard);
        assert!(d.is_smart());
        assert_eq!(
            d.subscriptions(),
            ["lock/all/ping", "lock/all/cup", "lock/5ca1ab000001/cup"]
        );
        assert!(!device("rgb", ClientProfile::Standard).is_smart());
    }

    #[test]
    fn smart_connects_with_a_cup_request_and_later_its_hash() {
        let mut d = device("lock", ClientProfile::Standard);
        let first = d.on_connect();
        assert_eq!(first.kind, Sent::CupRequest);
        assert_eq!(first.topic, "ask/lock/5ca1ab000001/cup");
        let p = first.json();
        assert_eq!(p["timestamp"], 0);
        assert_eq!(p["datahold"], json!({"request": "all"}));
        let task = p["task_id"].as_str().unwrap();
        assert_eq!(task.len(), 10);
        assert!(task.bytes().all(|b| b.is_ascii_digit()));
        assert!(p.get("hash").is_none());

        let config = json!({"closed": true});
        cup(
            &mut d,
            &server_cup(ClientProfile::Standard, &config, &config, "t-1", true),
        );
        ping(&mut d, 500);
        let again = d.on_connect().json();
        assert_eq!(again["timestamp"], 500);
        assert_eq!(again["hash"], config_hash(&config));
        assert_ne!(again["task_id"], p["task_id"]);
    }

    #[test]
    fn dumb_connects_for_its_whole_type() {
        let mut d = device("rgb", ClientProfile::Reference);
        let out = d.on_connect();
        assert_eq!(out.topic, "ask/rgb/all/cup");
        assert_eq!(out.payload, br#"{"timestamp":1}"#);
    }

    #[test]
    fn pong_carries_the_previous_ping_timestamp() {
        for profile in ClientProfile::ALL {
            let mut d = device("terminal", profile);
            let first = ping(&mut d, 100);
            assert_eq!(first.seen, Seen::Ping { answered: true });
            let out = first.out.unwrap();
            assert_eq!(
                (out.kind, out.topic.as_str()),
                (Sent::Pong, "ask/terminal/5ca1ab000001/pong")
            );
            assert_eq!(out.json(), json!({"timestamp": 0}), "{profile}");
            assert_eq!(d.stored_ts(), 100);
            assert_eq!(
                ping(&mut d, 110).out.unwrap().json(),
                json!({"timestamp": 100})
            );
            assert_eq!(d.stored_ts(), 110);
        }
    }

    #[test]
    fn reference_ignores_an_older_ping_standard_answers_it() {
        let mut r = device("lock", ClientProfile::Reference);
        ping(&mut r, 100);
        let old = ping(&mut r, 90);
        assert_eq!(old.seen, Seen::Ping { answered: false });
        assert!(old.out.is_none());
        assert_eq!(r.stored_ts(), 100);

        let mut s = device("lock", ClientProfile::Standard);
        ping(&mut s, 100);
        assert_eq!(
            ping(&mut s, 90).out.unwrap().json(),
            json!({"timestamp": 100})
        );
    }

    #[test]
    fn ping_without_timestamp_is_dropped_by_smart_echoed_by_dumb() {
        let mut smart = device("lock", ClientProfile::Standard);
        for bad in [&b"{}"[..], b"{\"online\"}", b"[1]"] {
            let h = smart.on_publish("lock/all/ping", bad);
            assert_eq!(h.seen, Seen::Ping { answered: false });
        }
        let mut dumb = device("pwr", ClientProfile::Standard);
        for payload in [&b"{\"timestamp\": 1716400000}"[..], b"not json"] {
            let out = dumb.on_publish("pwr/all/ping", payload).out.unwrap();
            assert_eq!(out.topic, "ask/pwr/5ca1ab000001/pong");
            assert_eq!(out.payload, payload);
        }
    }

    #[test]
    fn standard_merges_unless_overwrite_and_acks_with_top_level_meta() {
        let mut d = device("lock", ClientProfile::Standard);
        let first = json!({"closed": true, "acl": {"123456": [4, 5]}, "timer": 10});
        let h = cup(
            &mut d,
            &server_cup(ClientProfile::Standard, &first, &first, "t-1", true),
        );
        assert_eq!(h.seen, Seen::Cup { applied: true });
        let ack = h.out.unwrap();
        assert_eq!(ack.topic, "ask/lock/5ca1ab000001/ack");
        assert_eq!(
            ack.json(),
            json!({"timestamp": 1000, "hash": config_hash(&first), "task_id": "t-1"})
        );
        assert_eq!(d.config(), &first);
        assert_eq!(d.sync(), ConfigMatch::Same);

        // A merge: one key changed, one removed.
        let patch = json!({"closed": false, "timer": null});
        let merged = json!({"closed": false, "acl": {"123456": [4, 5]}});
        let ack = cup(
            &mut d,
            &server_cup(ClientProfile::Standard, &patch, &merged, "t-2", false),
        )
        .out
        .unwrap();
        assert_eq!(d.config(), &merged);
        assert_eq!(ack.json()["hash"], config_hash(&merged));
        assert_eq!(d.sync(), ConfigMatch::Same);

        // A replace.
        let whole = json!({"blocked": true});
        cup(
            &mut d,
            &server_cup(ClientProfile::Standard, &whole, &whole, "t-3", true),
        );
        assert_eq!(d.config(), &whole);
        assert_eq!(d.sync(), ConfigMatch::Same);

        // The server's idea of the result is wrong: the device reports it differs.
        cup(
            &mut d,
            &server_cup(
                ClientProfile::Standard,
                &json!({"sound": true}),
                &json!({"sound": true}),
                "t-4",
                false,
            ),
        );
        assert_eq!(d.sync(), ConfigMatch::Differs);
    }

    #[test]
    fn standard_ignores_meta_inside_datahold() {
        let mut d = device("lock", ClientProfile::Standard);
        // A reference-shaped CUP: the standard client takes top-level task_id/hash and keeps
        // the datahold as config (meta keys included), which stripping takes out of the hash.
        let config = json!({"closed": true});
        let p = server_cup(ClientProfile::Reference, &config, &config, "t-9", true);
        let ack = cup(&mut d, &p).out.unwrap().json();
        assert_eq!(ack["task_id"], "t-9");
        assert_eq!(ack["hash"], config_hash(&config));
        assert_eq!(d.sync(), ConfigMatch::Same);
    }

    #[test]
    fn reference_reads_meta_only_inside_datahold_and_merges_it() {
        let mut d = device("lock", ClientProfile::Reference);
        let first = json!({"closed": true, "timer": 10});
        let h = cup(
            &mut d,
            &server_cup(ClientProfile::Reference, &first, &first, "t-1", false),
        );
        assert_eq!(h.seen, Seen::Cup { applied: true });
        assert_eq!(
            h.out.unwrap().json(),
            json!({"timestamp": 1000, "hash": config_hash(&first), "task_id": "t-1"})
        );
        // Meta keys are saved in its config, as the real client does.
        assert_eq!(
            d.config(),
            &json!({"closed": true, "timer": 10, "task_id": "t-1", "hash": config_hash(&first)})
        );
        assert_eq!(d.sync(), ConfigMatch::Same);

        // The hash it holds comes back in PONGs and CUP requests.
        ping(&mut d, 100);
        assert_eq!(
            ping(&mut d, 110).out.unwrap().json(),
            json!({"timestamp": 100, "hash": config_hash(&first)})
        );
        assert_eq!(d.on_connect().json()["hash"], config_hash(&first));

        // Merge (no FORCE): the new key joins the old ones.
        let patch = json!({"sound": true});
        let merged = json!({"closed": true, "timer": 10, "sound": true});
        cup(
            &mut d,
            &server_cup(ClientProfile::Reference, &patch, &merged, "t-2", false),
        );
        assert_eq!(d.config()["sound"], true);
        assert_eq!(d.config()["timer"], 10);
        assert_eq!(d.config()["task_id"], "t-2");
        assert_eq!(d.sync(), ConfigMatch::Same);
    }

    #[test]
    fn reference_force_replaces() {
        let mut d = device("lock", ClientProfile::Reference);
        let first = json!({"closed": true, "timer": 10});
        cup(
            &mut d,
            &server_cup(ClientProfile::Reference, &first, &first, "t-1", false),
        );
        let whole = json!({"blocked": true});
        let h = cup(
            &mut d,
            &server_cup(ClientProfile::Reference, &whole, &whole, "t-2", true),
        );
        assert_eq!(h.out.unwrap().json()["task_id"], "t-2");
        assert_eq!(
            d.config(),
            &json!({"blocked": true, "task_id": "t-2", "hash": config_hash(&whole), "FORCE": true})
        );
        assert_eq!(d.sync(), ConfigMatch::Same);

        // A top-level overwrite means nothing to it: it merges.
        let other = json!({"sound": false});
        cup(
            &mut d,
            &server_cup(ClientProfile::Standard, &other, &other, "t-3", true),
        );
        assert_eq!(d.config()["blocked"], true);
        assert_eq!(d.config()["sound"], false);
    }

    #[test]
    fn reference_task_id_missing_and_no_ack_for_empty_datahold() {
        let mut d = device("lock", ClientProfile::Reference);
        // A standard-shaped CUP: meta at the top level only.
        let config = json!({"closed": true});
        let p = server_cup(ClientProfile::Standard, &config, &config, "t-1", false);
        let ack = cup(&mut d, &p).out.unwrap().json();
        assert_eq!(ack["task_id"], "missing");
        assert!(ack.get("hash").is_none(), "{ack}");
        assert_eq!(d.config(), &config);
        // It never learned the hash, but it does hold the config.
        assert_eq!(d.sync(), ConfigMatch::Same);
        assert!(ping(&mut d, 5).out.unwrap().json().get("hash").is_none());

        let empty = cup(&mut d, &json!({"timestamp": 5, "datahold": {}}));
        assert_eq!(
            empty,
            Handled {
                seen: Seen::Cup { applied: true },
                out: None
            }
        );
        // Numeric task ids keep their digits.
        let ack = cup(
            &mut d,
            &json!({"timestamp": 6, "datahold": {"timer": 3, "task_id": 42}}),
        )
        .out
        .unwrap()
        .json();
        assert_eq!(ack["task_id"], "42");
    }

    #[test]
    fn reference_drops_cups_without_timestamp_or_json() {
        let mut d = device("lock", ClientProfile::Reference);
        for bad in [
            json!({"datahold": {"closed": true}, "task_id": "t"}).to_string(),
            "{\"online\"}".to_string(),
            json!({"timestamp": 5, "datahold": "FF0000"}).to_string(),
        ] {
            let h = d.on_publish("lock/5ca1ab000001/cup", bad.as_bytes());
            assert_eq!(h.seen, Seen::Cup { applied: false }, "{bad}");
            assert!(h.out.is_none());
        }
        assert_eq!(d.config(), &json!({}));
        assert_eq!(d.sync(), ConfigMatch::NoHash);
    }

    #[test]
    fn dumb_takes_datahold_whole_on_either_topic_and_never_acks() {
        let mut d = device("rgb", ClientProfile::Standard);
        let first = json!({"RGB": "FF0000/3000/C", "STR": "0/1000/C"});
        let p = cup_payload(
            ClientProfile::Standard,
            &first,
            "t",
            &config_hash(&first),
            false,
            9,
        );
        let h = d.on_publish("rgb/all/cup", p.to_string().as_bytes());
        assert_eq!(
            h,
            Handled {
                seen: Seen::Cup { applied: true },
                out: None
            }
        );
        assert_eq!(d.config(), &first);
        assert_eq!(d.sync(), ConfigMatch::Same);
        // No merge: the second config replaces the first, even without overwrite.
        let second = json!({"RGB": "00FF00/1000/0/C"});
        let h = d.on_publish(
            "rgb/5ca1ab000001/cup",
            json!({"timestamp": 10, "datahold": second})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(h.seen, Seen::Cup { applied: true });
        assert_eq!(d.config(), &second);
        // That CUP carried no hash, so nothing can be checked.
        assert_eq!(d.sync(), ConfigMatch::NoHash);
        assert!(d.sup().is_none() && d.info().is_none());
    }

    #[test]
    fn other_topics_are_ignored() {
        let mut d = device("lock", ClientProfile::Standard);
        assert_eq!(
            d.on_publish("lock/000000000000/cup", b"{}").seen,
            Seen::Other
        );
        assert_eq!(d.on_publish("rgb/all/ping", b"{}").seen, Seen::Other);
    }

    #[test]
    fn sup_toggles_closed_in_its_own_config() {
        let mut d = device("lock", ClientProfile::Standard);
        let config = json!({"closed": true});
        cup(
            &mut d,
            &server_cup(ClientProfile::Standard, &config, &config, "t", true),
        );
        ping(&mut d, 77);
        let sup = d.sup().unwrap();
        assert_eq!(sup.topic, "ask/lock/5ca1ab000001/sup");
        assert_eq!(
            sup.json(),
            json!({"timestamp": 77, "datahold": {"closed": false}})
        );
        assert_eq!(d.config()["closed"], false);
        assert_eq!(d.sync(), ConfigMatch::Differs);
        assert_eq!(d.sup().unwrap().json()["datahold"]["closed"], true);
        assert_eq!(d.sync(), ConfigMatch::Same);
    }

    #[test]
    fn info_types_codes_from_the_acl() {
        let mut d = device("lock", ClientProfile::Standard);
        let info = d.info().unwrap();
        assert_eq!(info.topic, "ask/lock/5ca1ab000001/info");
        let p = info.json();
        assert_eq!(p["datahold"]["type"], "access");
        assert_eq!(p["datahold"]["content"].as_str().unwrap().len(), 6);
        assert_eq!(p["datahold"]["success"], false);

        let config = json!({"acl": {"123456": [4, 5]}});
        cup(
            &mut d,
            &server_cup(ClientProfile::Standard, &config, &config, "t", true),
        );
        let infos: Vec<Value> = (0..40).map(|_| d.info().unwrap().json()).collect();
        assert!(
            infos
                .iter()
                .any(|p| p["datahold"]["content"] == "123456" && p["datahold"]["success"] == true)
        );
        assert!(infos.iter().any(|p| p["datahold"]["success"] == false));
    }
}
