//! SKABEN props in the core: device types as data, each device's versioned config, push
//! tracking, presence by type, and the rules that turn an inbound packet into store writes,
//! outbound packets and events.
//!
//! Invariants:
//! - A device's desired config is its own config if it has one, else its type's config; its
//!   version only grows (an own config starts at the version it replaces + 1).
//! - Every hash is [`skaben::config_hash`] of exactly the datahold sent (meta keys stripped),
//!   so a device that sends the hash back proves it holds that config.
//! - At most one push is tracked per device: the newest. Any CUP the server sends carrying the
//!   current config counts as a (re)send of it; it ends when the device confirms (ACK of one of
//!   its task ids, or a hash equal to the pushed one) or a NACK fails it.
//! - A packet is never dropped for being late or odd: it is recorded, and the config is sent
//!   besides when the device looks stale.
//! - Changes happen under the SKABEN table lock, and the unit of writes is submitted before the
//!   lock is released (the same ordering rule as the ACon side).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skaben::{ClientProfile, Command, Inbound, Payload, Target};

use super::{CoreError, Hub, Unit, UnknownPolicy, invalid, to_json};
use crate::bus::Qos;
use crate::store::{Commit, DeviceRecord, MessageRecord, TypeRecord, Write};

/// Smart devices keep a structured config and merge updates; dumb ones take the whole config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypeKind {
    Smart,
    Dumb,
}

/// A device type, as stored and shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceType {
    pub name: String,
    pub kind: TypeKind,
    /// Inactive types get no PING.
    pub active: bool,
    /// How devices of this type read a CUP (a device may override it).
    pub profile: ClientProfile,
    /// Silence after which a device of this type is offline; `None`: the server's setting.
    pub keepalive_secs: Option<f64>,
    /// The type-level config: what devices without a config of their own get.
    pub config: Value,
    pub config_version: i64,
    pub config_hash: String,
    /// JSON Schema every config of this type (and every config a SUP produces) must satisfy.
    pub schema: Option<Value>,
    pub updated_at: i64,
}

/// A type with its compiled schema.
struct TypeEntry {
    def: DeviceType,
    validator: Option<Arc<jsonschema::Validator>>,
}

impl TypeEntry {
    fn new(def: DeviceType) -> Result<TypeEntry, String> {
        let validator = match &def.schema {
            None => None,
            Some(s) => Some(Arc::new(
                jsonschema::validator_for(s)
                    .map_err(|e| format!("not a valid JSON Schema: {e}"))?,
            )),
        };
        Ok(TypeEntry { def, validator })
    }

    fn check(&self, config: &Value) -> Result<(), String> {
        let Some(v) = &self.validator else {
            return Ok(());
        };
        let errors: Vec<String> = v
            .iter_errors(config)
            .take(3)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "does not match the type's schema: {}",
                errors.join("; ")
            ))
        }
    }

    fn keepalive_ms(&self, default_ms: i64) -> i64 {
        self.def
            .keepalive_secs
            .map(|s| (s * 1000.0) as i64)
            .unwrap_or(default_ms)
    }
}

/// The types written on first start (spec: lock and terminal are smart; rgb, pwr, scl and box
/// dumb). Locks and terminals in the field run the public Python client, hence its profile.
fn seed_types(now: i64) -> Vec<DeviceType> {
    let smart = [
        ("lock", ClientProfile::Reference),
        ("terminal", ClientProfile::Reference),
    ];
    let dumb = ["rgb", "pwr", "scl", "box"];
    let mut out = Vec::new();
    for (name, profile) in smart {
        out.push(new_type(name, TypeKind::Smart, profile, json!({}), now));
    }
    for name in dumb {
        out.push(new_type(
            name,
            TypeKind::Dumb,
            ClientProfile::Standard,
            json!({}),
            now,
        ));
    }
    out
}

fn new_type(
    name: &str,
    kind: TypeKind,
    profile: ClientProfile,
    config: Value,
    now: i64,
) -> DeviceType {
    DeviceType {
        name: name.to_string(),
        kind,
        active: true,
        profile,
        keepalive_secs: None,
        config_hash: skaben::config_hash(&config),
        config,
        config_version: 1,
        schema: None,
        updated_at: now,
    }
}

/// A config version held by a device itself (not inherited from its type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnConfig {
    pub value: Value,
    pub version: i64,
    pub hash: String,
    pub updated_at: i64,
    /// `admin`, `device` (a SUP), or `server`.
    pub author: String,
}

/// State of the tracked push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushState {
    /// Sent, not yet confirmed: re-sent on the device's next PONG or CUP request.
    Pending,
    /// The device answered NACK: not re-sent automatically.
    Failed,
}

/// The newest push of a config to a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    pub version: i64,
    pub hash: String,
    /// Task ids of every send of this version, oldest first (the last few).
    pub task_ids: Vec<String>,
    pub overwrite: bool,
    pub first_sent_at: i64,
    pub last_sent_at: i64,
    pub attempts: u32,
    pub state: PushState,
    /// Why it was sent: `operator`, `sup`, `pong`, `cup_request`, `type_push`, …
    pub reason: String,
}

/// What the device is known to hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub confirmed_version: Option<i64>,
    pub confirmed_hash: Option<String>,
    pub confirmed_at: Option<i64>,
    /// `ack`, `hash` (a PONG/CUP/ACK carrying the hash), `sup`, `ping` (a device that reports
    /// no hash answered a ping sent after the push).
    pub confirmed_by: Option<String>,
    pub pending: Option<Push>,
    /// The device has sent a hash or an ACK: its confirmations can be waited for.
    pub confirms: bool,
}

/// The SKABEN part of a stored device's `desired` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct StoredDesired {
    own: Option<OwnConfig>,
    profile: Option<ClientProfile>,
    delivery: Delivery,
}

/// What the device reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    /// Every key any SUP carried, latest value.
    pub values: serde_json::Map<String, Value>,
    pub last_sup_at: Option<i64>,
    /// The hash it last sent (PONG, CUP request or ACK).
    pub hash: Option<String>,
    /// The timestamp of its last PONG.
    pub pong_timestamp: Option<i64>,
}

/// A SKABEN device in the table.
#[derive(Debug, Clone)]
struct SkDevice {
    ty: String,
    id: String,
    name: String,
    notes: String,
    first_seen: i64,
    last_seen: Option<i64>,
    online: bool,
    presence_changed_at: i64,
    stored: StoredDesired,
    reported: Reported,
}

/// The config a device should hold, wherever it comes from.
struct Effective<'a> {
    value: &'a Value,
    version: i64,
    hash: &'a str,
    from_type: bool,
}

impl SkDevice {
    fn key(&self) -> String {
        format!("{}/{}", self.ty, self.id)
    }

    fn effective<'a>(&'a self, ty: &'a DeviceType) -> Effective<'a> {
        match &self.stored.own {
            Some(o) => Effective {
                value: &o.value,
                version: o.version,
                hash: &o.hash,
                from_type: false,
            },
            None => Effective {
                value: &ty.config,
                version: ty.config_version,
                hash: &ty.config_hash,
                from_type: true,
            },
        }
    }

    fn profile(&self, ty: &DeviceType) -> ClientProfile {
        self.stored.profile.unwrap_or(ty.profile)
    }

    fn record(&self, ty: Option<&DeviceType>) -> DeviceRecord {
        DeviceRecord {
            kind: self.ty.clone(),
            id: self.id.clone(),
            protocol: "skaben".into(),
            name: self.name.clone(),
            notes: self.notes.clone(),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            online: self.online,
            presence_changed_at: self.presence_changed_at,
            desired_version: match (&self.stored.own, ty) {
                (Some(o), _) => o.version,
                (None, Some(t)) => t.config_version,
                (None, None) => 0,
            },
            desired: to_json(&self.stored),
            reported: to_json(&self.reported),
        }
    }

    /// Records that the device holds `version`/`hash`; ends the push it confirms.
    fn confirm(&mut self, version: i64, hash: &str, by: &str, now: i64) -> bool {
        let d = &mut self.stored.delivery;
        if d.confirmed_hash.as_deref() == Some(hash) && d.confirmed_version == Some(version) {
            if d.pending.as_ref().is_some_and(|p| p.hash == hash) {
                d.pending = None;
                return true;
            }
            return false;
        }
        d.confirmed_version = Some(version);
        d.confirmed_hash = Some(hash.to_string());
        d.confirmed_at = Some(now);
        d.confirmed_by = Some(by.to_string());
        if d.pending.as_ref().is_some_and(|p| p.version <= version) {
            d.pending = None;
        }
        true
    }
}

/// The SKABEN side of the hub: types and devices under one lock.
#[derive(Default)]
pub(super) struct SkabenTable {
    types: HashMap<String, TypeEntry>,
    devices: HashMap<String, SkDevice>,
}

/// What the scenario engine is handed.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum ScenarioInput {
    /// An INFO packet: `device` is `<type>/<id>` or `<type>/all`.
    Info {
        device: String,
        datahold: Value,
        at: i64,
    },
    /// A SUP accepted into the device's config: the keys it changed.
    Sup {
        device: String,
        keys: Value,
        at: i64,
    },
}

/// Operator changes to a device type (`PUT /api/types/{type}`); omitted fields keep their value
/// (a new type needs `kind`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeUpdate {
    pub kind: Option<TypeKind>,
    pub active: Option<bool>,
    pub profile: Option<ClientProfile>,
    /// `null` goes back to the server's setting.
    #[serde(default, deserialize_with = "double_option")]
    pub keepalive_secs: Option<Option<f64>>,
    pub config: Option<Value>,
    /// `null` removes the schema.
    #[serde(default, deserialize_with = "double_option")]
    pub schema: Option<Option<Value>>,
}

fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Operator changes to a SKABEN device (`PUT /api/devices/{type}/{id}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkabenRegister {
    pub name: Option<String>,
    pub notes: Option<String>,
    /// `null` goes back to the type's profile.
    #[serde(default, deserialize_with = "double_option")]
    pub profile: Option<Option<ClientProfile>>,
}

/// An operator's change to a device config.
#[derive(Debug, Clone)]
pub struct ConfigEdit {
    /// The new config (`PUT`) or an RFC 7386 merge patch (`PATCH`).
    pub body: Value,
    /// `true` for a merge patch.
    pub merge: bool,
    /// The version the operator read (`If-Match`); a stale one is a conflict.
    pub if_match: Option<i64>,
}

/// A device page.
#[derive(Debug, Clone, Serialize)]
pub struct SkabenView {
    pub kind: String,
    pub id: String,
    pub protocol: &'static str,
    pub type_kind: TypeKind,
    pub name: String,
    pub notes: String,
    #[serde(serialize_with = "crate::clock::ser")]
    pub first_seen: i64,
    #[serde(serialize_with = "crate::clock::ser_opt")]
    pub last_seen: Option<i64>,
    pub online: bool,
    #[serde(serialize_with = "crate::clock::ser")]
    pub presence_changed_at: i64,
    pub profile: ClientProfile,
    pub desired: DesiredView,
    pub reported: Reported,
    pub delivery: Delivery,
    /// The device is known to hold the desired config.
    pub in_sync: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DesiredView {
    pub config: Value,
    pub version: i64,
    pub hash: String,
    /// `type` (the type's config) or `device` (its own).
    pub source: &'static str,
    pub author: Option<String>,
}

/// A type with the number of its devices, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct TypeView {
    #[serde(flatten)]
    pub def: DeviceType,
    pub devices: usize,
}

/// A CUP going out.
struct CupOut {
    topic: String,
    payload: String,
}

const KEEP_RAW: usize = 2048;
/// At most one answer broadcast to `<type>/all/cup` per type in this time (ms).
pub const BROADCAST_EVERY_MS: i64 = 1000;
const TASK_IDS_KEPT: usize = 8;

fn clip(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(KEEP_RAW)]).into_owned()
}

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

impl Hub {
    /// Loads (seeding on first start) the device types into the table.
    pub(super) fn load_types(
        table: &mut SkabenTable,
        stored: Vec<TypeRecord>,
        now: i64,
    ) -> Result<Vec<Write>, crate::store::StoreError> {
        let mut seed = Vec::new();
        let defs: Vec<DeviceType> = if stored.is_empty() {
            let defs = seed_types(now);
            for d in &defs {
                seed.push(Write::DeviceType(type_record(d)));
            }
            defs
        } else {
            let mut defs = Vec::new();
            for r in stored {
                defs.push(serde_json::from_str(&r.data).map_err(|e| {
                    crate::store::StoreError::Corrupt(format!("device type {}: {e}", r.name))
                })?);
            }
            defs
        };
        for def in defs {
            let name = def.name.clone();
            let entry = TypeEntry::new(def).map_err(|e| {
                crate::store::StoreError::Corrupt(format!("device type {name}: {e}"))
            })?;
            table.types.insert(name, entry);
        }
        Ok(seed)
    }

    /// A stored SKABEN device row back into the table.
    pub(super) fn load_skaben_device(
        table: &mut SkabenTable,
        r: DeviceRecord,
        last_message_at: Option<i64>,
    ) -> Result<(), crate::store::StoreError> {
        let key = format!("{}/{}", r.kind, r.id);
        let stored: StoredDesired = serde_json::from_str(&r.desired).map_err(|e| {
            crate::store::StoreError::Corrupt(format!("desired config of {key}: {e}"))
        })?;
        let reported: Reported = serde_json::from_str(&r.reported).map_err(|e| {
            crate::store::StoreError::Corrupt(format!("reported state of {key}: {e}"))
        })?;
        table.devices.insert(
            key,
            SkDevice {
                ty: r.kind,
                id: r.id,
                name: r.name,
                notes: r.notes,
                first_seen: r.first_seen,
                last_seen: r.last_seen.max(last_message_at),
                online: r.online,
                presence_changed_at: r.presence_changed_at,
                stored,
                reported,
            },
        );
        Ok(())
    }

    fn sk(&self) -> std::sync::MutexGuard<'_, SkabenTable> {
        self.skaben.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn task_id(&self) -> String {
        self.task_seq.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Publishes a CUP with the device's current config and tracks it.
    fn send_cup(
        &self,
        dev: &mut SkDevice,
        ty: &DeviceType,
        overwrite: bool,
        datahold: Option<&Value>,
        reason: &str,
        now: i64,
    ) -> CupOut {
        let eff = dev.effective(ty);
        let (version, hash) = (eff.version, eff.hash.to_string());
        let task_id = self.task_id();
        // A dumb device replaces its config whatever the flag says; say so.
        let overwrite = overwrite || ty.kind == TypeKind::Dumb;
        let body = skaben::cup_payload(
            dev.profile(ty),
            datahold.unwrap_or(eff.value),
            &task_id,
            &hash,
            overwrite,
            secs(now),
        );
        let topic = format!("{}/{}/cup", dev.ty, dev.id);
        let payload = body.to_string();
        self.publish(topic.clone(), payload.clone(), Qos::AtLeastOnce);
        self.stats.skaben_cups_sent.fetch_add(1, Ordering::Relaxed);
        let d = &mut dev.stored.delivery;
        let in_sync = d.confirmed_hash.as_deref() == Some(hash.as_str())
            && d.confirmed_version == Some(version);
        if in_sync {
            d.pending = None;
        } else {
            match &mut d.pending {
                Some(p) if p.version == version && p.hash == hash => {
                    p.task_ids.push(task_id);
                    if p.task_ids.len() > TASK_IDS_KEPT {
                        p.task_ids.remove(0);
                    }
                    p.attempts += 1;
                    p.last_sent_at = now;
                    p.overwrite = overwrite;
                    p.state = PushState::Pending;
                }
                _ => {
                    d.pending = Some(Push {
                        version,
                        hash,
                        task_ids: vec![task_id],
                        overwrite,
                        first_sent_at: now,
                        last_sent_at: now,
                        attempts: 1,
                        state: PushState::Pending,
                        reason: reason.to_string(),
                    })
                }
            }
        }
        CupOut { topic, payload }
    }

    fn publish(&self, topic: String, payload: String, qos: Qos) {
        if !self.bus.publish(topic, payload.into_bytes(), qos) {
            self.stats
                .skaben_publish_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One inbound MQTT publish. Never fails: whatever is wrong becomes an event. Returns the
    /// commit of a packet that changes state (SUP, INFO), which its acknowledgement waits for.
    pub fn skaben_packet(&self, topic: &str, raw: &[u8], now: i64) -> Option<Commit> {
        self.stats.skaben_packets.fetch_add(1, Ordering::Relaxed);
        let inbound = match Inbound::parse(topic) {
            Ok(i) => i,
            Err(e) => {
                let device = guess_device(topic);
                self.skaben_malformed(device, topic, raw, &e.to_string(), now);
                return None;
            }
        };
        let key = format!("{}/{}", inbound.device_type, inbound.target.as_str());
        let payload = match Payload::parse(raw) {
            Ok(p) => p,
            Err(e) => {
                // Still a sign of life.
                self.touch(&key, now);
                self.skaben_malformed(Some(key), topic, raw, &e.to_string(), now);
                return None;
            }
        };
        let mut unit = Unit::new(now);
        let mut out: Vec<CupOut> = Vec::new();
        let mut table = self.sk();
        let SkabenTable { types, devices } = &mut *table;
        let Some(ty) = types.get(&inbound.device_type) else {
            drop(table);
            let reason = format!(
                "unknown device type {:?}; add it with PUT /api/types/{}",
                inbound.device_type, inbound.device_type
            );
            drop(self.refuse_skaben(key, topic, &reason, now));
            return None;
        };
        let ty_def = &ty.def;
        // The payload itself is the raw column; this is what the server read from it.
        let parsed = json!({"command": inbound.command.as_str(), "timestamp": payload.timestamp,
                            "task_id": payload.task_id, "hash": payload.hash});
        let Target::Device(id) = &inbound.target else {
            self.skaben_for_all(&inbound, &payload, ty_def, &key, now, &mut unit, &mut out);
            let durable = inbound.command == Command::Info;
            return self.finish(unit, key, topic, raw, parsed, out, now, durable);
        };
        let is_new = !devices.contains_key(&key);
        if is_new && self.cfg.unknown_devices == UnknownPolicy::Reject {
            drop(table);
            self.stats.skaben_rejected.fetch_add(1, Ordering::Relaxed);
            drop(self.refuse_skaben(key, topic, "unknown device, policy reject", now));
            return None;
        }
        let dev = devices.entry(key.clone()).or_insert_with(|| SkDevice {
            ty: inbound.device_type.clone(),
            id: id.clone(),
            name: String::new(),
            notes: String::new(),
            first_seen: now,
            last_seen: None,
            online: false,
            presence_changed_at: now,
            stored: StoredDesired::default(),
            reported: Reported::default(),
        });
        let mut dirty = false;
        if is_new {
            dirty = true;
            unit.event(
                Some(key.clone()),
                "registered",
                "device",
                json!({"topic": topic, "type": ty_def.name}),
            );
        }
        let was_away = !dev.online;
        dev.last_seen = Some(now);
        if was_away {
            dev.online = true;
            dev.presence_changed_at = now;
            dirty = true;
            unit.event(
                Some(key.clone()),
                "online",
                "server",
                json!({"reason": if is_new { "first packet" } else { "packet after silence" }, "command": inbound.command.as_str()}),
            );
        }
        // Any hash the device sends proves what it holds.
        let current_hash = dev.effective(ty_def).hash.to_string();
        let current_version = dev.effective(ty_def).version;
        if let Some(h) = &payload.hash {
            dev.stored.delivery.confirms = true;
            if dev.reported.hash.as_ref() != Some(h) {
                dev.reported.hash = Some(h.clone());
                dirty = true;
            }
            // An ACK is judged by its task id first (below).
            if inbound.command != Command::Ack
                && *h == current_hash
                && dev.confirm(current_version, h, "hash", now)
            {
                dirty = true;
                unit.event(
                    Some(key.clone()),
                    "config_confirmed",
                    "device",
                    json!({"version": current_version, "hash": h, "by": "hash", "command": inbound.command.as_str()}),
                );
            }
        }
        let mut cup_reason: Option<&str> = if was_away {
            Some("device was away")
        } else {
            None
        };
        match inbound.command {
            Command::Pong => {
                dev.reported.pong_timestamp = payload.timestamp;
                let keepalive = ty.keepalive_ms(self.cfg.skaben_keepalive_ms);
                if let Some(ts) = payload.timestamp
                    && secs(now) - ts > keepalive / 1000
                {
                    cup_reason.get_or_insert("timestamp older than the keep-alive timeout");
                }
                let failed = dev
                    .stored
                    .delivery
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.state == PushState::Failed && p.hash == current_hash);
                if let Some(h) = &payload.hash
                    && *h != current_hash
                    && !failed
                {
                    cup_reason.get_or_insert("hash differs from the current config");
                }
                let pending = dev
                    .stored
                    .delivery
                    .pending
                    .as_ref()
                    .filter(|p| p.state == PushState::Pending)
                    .map(|p| p.first_sent_at);
                if let Some(sent_at) = pending {
                    if dev.stored.delivery.confirms {
                        cup_reason.get_or_insert("push not yet confirmed");
                    } else if payload.timestamp.is_some_and(|ts| ts >= secs(sent_at)) {
                        // A device that reports no hash echoed a ping sent after the push:
                        // MQTT kept the order, so it had the push first.
                        if dev.confirm(current_version, &current_hash, "ping", now) {
                            dirty = true;
                            unit.event(
                                Some(key.clone()),
                                "config_confirmed",
                                "device",
                                json!({"version": current_version, "hash": current_hash, "by": "ping"}),
                            );
                        }
                    }
                }
            }
            Command::Cup => {
                cup_reason = Some("cup request");
            }
            Command::Sup => match self.apply_sup(dev, ty, &payload, &key, now, &mut unit) {
                Ok(changed) => dirty |= changed,
                Err(reason) => {
                    self.stats.skaben_malformed.fetch_add(1, Ordering::Relaxed);
                    unit.event(
                        Some(key.clone()),
                        "sup_rejected",
                        "device",
                        json!({"reason": reason, "raw": clip(raw)}),
                    );
                }
            },
            Command::Info => {
                let datahold = payload.datahold.clone().unwrap_or(Value::Null);
                unit.event(
                    Some(key.clone()),
                    "info",
                    "device",
                    json!({"datahold": datahold}),
                );
                let _ = self.scenario.send(ScenarioInput::Info {
                    device: key.clone(),
                    datahold,
                    at: now,
                });
            }
            Command::Ack => {
                dev.stored.delivery.confirms = true;
                let matched = dev.stored.delivery.pending.as_ref().and_then(|p| {
                    payload
                        .task_id
                        .as_ref()
                        .filter(|t| p.task_ids.contains(t))
                        .map(|_| (p.version, p.hash.clone()))
                });
                if let Some((version, hash)) = matched {
                    if dev.confirm(version, &hash, "ack", now) {
                        unit.event(
                            Some(key.clone()),
                            "config_confirmed",
                            "device",
                            json!({"version": version, "hash": hash, "by": "ack", "task_id": payload.task_id}),
                        );
                    }
                    dirty = true;
                } else if payload.hash.as_deref() == Some(current_hash.as_str()) {
                    // The task id is unknown (`"missing"`, or an old one) but the hash proves it.
                    if dev.confirm(current_version, &current_hash, "hash", now) {
                        dirty = true;
                        unit.event(
                            Some(key.clone()),
                            "config_confirmed",
                            "device",
                            json!({"version": current_version, "hash": current_hash, "by": "hash", "command": "ack"}),
                        );
                    }
                } else {
                    unit.event(
                        Some(key.clone()),
                        "ack_unmatched",
                        "device",
                        json!({"task_id": payload.task_id, "hash": payload.hash}),
                    );
                }
            }
            Command::Nack => {
                let task = payload.task_id.clone();
                let mut matched = false;
                if let Some(p) = &mut dev.stored.delivery.pending
                    && task.as_ref().is_some_and(|t| p.task_ids.contains(t))
                {
                    p.state = PushState::Failed;
                    matched = true;
                    dirty = true;
                }
                unit.event(
                    Some(key.clone()),
                    "push_failed",
                    "device",
                    json!({"task_id": task, "matched": matched, "datahold": payload.datahold, "raw": clip(raw)}),
                );
            }
        }
        if let Some(reason) = cup_reason {
            out.push(self.send_cup(dev, ty_def, true, None, reason, now));
            dirty = true;
        }
        if dirty {
            unit.writes.push(Write::Device(dev.record(Some(ty_def))));
        }
        let durable = matches!(inbound.command, Command::Sup | Command::Info);
        let commit = self.finish(unit, key, topic, raw, parsed, out, now, durable);
        drop(table);
        commit
    }

    /// Records the inbound packet with what went out in answer, and submits the unit. Called
    /// with the table locked.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mut unit: Unit,
        key: String,
        topic: &str,
        raw: &[u8],
        parsed: Value,
        out: Vec<CupOut>,
        now: i64,
        durable: bool,
    ) -> Option<Commit> {
        let answer = out
            .iter()
            .map(|c| format!("{} {}", c.topic, c.payload))
            .collect::<Vec<_>>()
            .join("\n");
        unit.writes.push(Write::Message(MessageRecord {
            device: key,
            at: now,
            send: None,
            peer: topic.to_string(),
            raw: clip(raw),
            parsed: parsed.to_string(),
            answer,
        }));
        if durable {
            Some(self.submit(unit))
        } else {
            self.store.submit_background(unit.writes);
            None
        }
    }

    /// A packet from `ask/<type>/all/<command>`: a small device speaking for its type.
    #[allow(clippy::too_many_arguments)]
    fn skaben_for_all(
        &self,
        inbound: &Inbound,
        payload: &Payload,
        ty: &DeviceType,
        key: &str,
        now: i64,
        unit: &mut Unit,
        out: &mut Vec<CupOut>,
    ) {
        match inbound.command {
            Command::Cup => {
                // Every small device asks on connect, and each broadcast reaches all of them:
                // at most one broadcast per type per BROADCAST_EVERY_MS, the late askers get
                // the next one (sent by `skaben_flush_broadcasts`).
                let mut last = self.broadcasts.lock().unwrap_or_else(|p| p.into_inner());
                let entry = last.entry(ty.name.clone()).or_insert((i64::MIN / 2, false));
                if now - entry.0 >= BROADCAST_EVERY_MS {
                    *entry = (now, false);
                    drop(last);
                    out.push(self.broadcast_type(ty, "cup request from all", now));
                } else {
                    entry.1 = true;
                }
            }
            Command::Info => {
                let datahold = payload.datahold.clone().unwrap_or(Value::Null);
                unit.event(Some(key.to_string()), "info", "device", json!({"datahold": datahold}));
                let _ = self.scenario.send(ScenarioInput::Info {
                    device: key.to_string(),
                    datahold,
                    at: now,
                });
            }
            Command::Pong | Command::Ack => {}
            Command::Sup | Command::Nack => unit.event(
                Some(key.to_string()),
                "ignored",
                "device",
                json!({"reason": format!("{} from `all` names no device; nothing to apply it to", inbound.command.as_str())}),
            ),
        }
    }

    fn broadcast_type(&self, ty: &DeviceType, _reason: &str, now: i64) -> CupOut {
        let task_id = self.task_id();
        let body = skaben::cup_payload(
            ty.profile,
            &ty.config,
            &task_id,
            &ty.config_hash,
            true,
            secs(now),
        );
        let topic = format!("{}/all/cup", ty.name);
        let payload = body.to_string();
        self.publish(topic.clone(), payload.clone(), Qos::AtLeastOnce);
        self.stats.skaben_cups_sent.fetch_add(1, Ordering::Relaxed);
        CupOut { topic, payload }
    }

    /// SUP: validate, merge into the device's config as a version by the device; no CUP echo.
    fn apply_sup(
        &self,
        dev: &mut SkDevice,
        ty: &TypeEntry,
        payload: &Payload,
        key: &str,
        now: i64,
        unit: &mut Unit,
    ) -> Result<bool, String> {
        let mut keys = match &payload.datahold {
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
            return Ok(false);
        };
        if map.is_empty() {
            return Ok(false);
        }
        let eff = dev.effective(&ty.def);
        let (old_version, old_hash) = (eff.version, eff.hash.to_string());
        let mut config = eff.value.clone();
        if !config.is_object() {
            config = json!({});
        }
        skaben::merge_patch(&mut config, &keys);
        ty.check(&config)?;
        for (k, v) in map {
            dev.reported.values.insert(k.clone(), v.clone());
        }
        dev.reported.last_sup_at = Some(now);
        let hash = skaben::config_hash(&config);
        let in_sync = dev.stored.delivery.confirmed_hash.as_deref() == Some(old_hash.as_str());
        let version = old_version + 1;
        dev.stored.own = Some(OwnConfig {
            value: config,
            version,
            hash: hash.clone(),
            updated_at: now,
            author: "device".into(),
        });
        if in_sync {
            // It holds what it had plus the keys it reported: no echo needed.
            dev.confirm(version, &hash, "sup", now);
        }
        unit.event(
            Some(key.to_string()),
            "config_changed",
            "device",
            json!({"old_version": old_version, "new_version": version, "hash": hash, "keys": keys, "via": "sup"}),
        );
        let _ = self.scenario.send(ScenarioInput::Sup {
            device: key.to_string(),
            keys,
            at: now,
        });
        Ok(true)
    }

    /// A malformed packet: an error event with the reason and the raw payload.
    fn skaben_malformed(
        &self,
        device: Option<String>,
        topic: &str,
        raw: &[u8],
        reason: &str,
        now: i64,
    ) {
        self.stats.skaben_malformed.fetch_add(1, Ordering::Relaxed);
        let mut unit = Unit::new(now);
        unit.event(
            device,
            "malformed",
            "device",
            json!({"reason": reason, "topic": topic, "raw": clip(raw), "raw_len": raw.len(), "truncated": raw.len() > KEEP_RAW}),
        );
        self.store.submit_background(unit.writes);
    }

    /// Marks a known device seen (a malformed packet is still a sign of life).
    fn touch(&self, key: &str, now: i64) {
        let mut table = self.sk();
        let SkabenTable { types, devices } = &mut *table;
        let Some(dev) = devices.get_mut(key) else {
            return;
        };
        dev.last_seen = Some(now);
        if !dev.online {
            dev.online = true;
            dev.presence_changed_at = now;
            let mut unit = Unit::new(now);
            unit.event(
                Some(key.to_string()),
                "online",
                "server",
                json!({"reason": "packet after silence (malformed)"}),
            );
            unit.writes.push(Write::Device(
                dev.record(types.get(&dev.ty).map(|t| &t.def)),
            ));
            self.store.submit_background(unit.writes);
        }
    }

    fn refuse_skaben(
        &self,
        key: String,
        topic: &str,
        reason: &str,
        now: i64,
    ) -> Option<crate::store::Commit> {
        let mut unit = Unit::new(now);
        let refused_since = self.rejected_event_due(&key, now)?;
        unit.event(
            Some(key),
            "rejected",
            "server",
            json!({"reason": reason, "topic": topic, "refused_since_last_event": refused_since}),
        );
        Some(self.submit(unit))
    }

    /// The broker connection is (back) up: what was published while it was down may be lost,
    /// so every pending push goes out again.
    pub fn skaben_connected(&self, now: i64) -> usize {
        let mut unit = Unit::new(now);
        let mut table = self.sk();
        let SkabenTable { types, devices } = &mut *table;
        let mut n = 0;
        for dev in devices.values_mut() {
            let Some(ty) = types.get(&dev.ty) else {
                continue;
            };
            if dev
                .stored
                .delivery
                .pending
                .as_ref()
                .is_some_and(|p| p.state == PushState::Pending)
            {
                let cup = self.send_cup(dev, &ty.def, true, None, "broker reconnected", now);
                unit.event(
                    Some(dev.key()),
                    "cup",
                    "server",
                    cup_event(&cup, "broker reconnected"),
                );
                unit.writes.push(Write::Device(dev.record(Some(&ty.def))));
                n += 1;
            }
        }
        if n > 0 {
            self.store.submit_background(unit.writes);
        }
        n
    }

    /// Sends the type broadcasts that CUP requests from `all` asked for while one had just
    /// gone out. Call a few times per [`BROADCAST_EVERY_MS`].
    pub fn skaben_flush_broadcasts(&self, now: i64) -> usize {
        let due: Vec<String> = {
            let mut last = self.broadcasts.lock().unwrap_or_else(|p| p.into_inner());
            let mut due = Vec::new();
            for (name, (at, wanted)) in last.iter_mut() {
                if *wanted && now - *at >= BROADCAST_EVERY_MS {
                    *at = now;
                    *wanted = false;
                    due.push(name.clone());
                }
            }
            due
        };
        if due.is_empty() {
            return 0;
        }
        let mut unit = Unit::new(now);
        let table = self.sk();
        for name in &due {
            if let Some(t) = table.types.get(name) {
                let cup = self.broadcast_type(&t.def, "cup requests from all", now);
                unit.event(
                    Some(format!("{name}/all")),
                    "cup",
                    "server",
                    cup_event(&cup, "cup requests from all"),
                );
            }
        }
        self.store.submit_background(unit.writes);
        due.len()
    }

    /// PING to every active type. Returns the number of types pinged.
    pub fn skaben_ping(&self, now: i64) -> usize {
        let mut unit = Unit::new(now);
        let table = self.sk();
        let mut n = 0;
        for t in table.types.values().filter(|t| t.def.active) {
            let topic = format!("{}/all/ping", t.def.name);
            let payload = skaben::ping_payload(secs(now)).to_string();
            self.publish(topic.clone(), payload.clone(), Qos::AtMostOnce);
            unit.event(
                Some(format!("{}/all", t.def.name)),
                "ping",
                "server",
                json!({"topic": topic, "payload": payload}),
            );
            n += 1;
        }
        if n > 0 {
            self.store.submit_background(unit.writes);
        }
        n
    }

    /// Marks silent SKABEN devices offline (per-type keep-alive). Returns the commit and count.
    pub(super) fn sweep_skaben(&self, unit: &mut Unit, now: i64) -> usize {
        let mut table = self.sk();
        let SkabenTable { types, devices } = &mut *table;
        let mut changed = 0;
        for dev in devices.values_mut() {
            let ty = types.get(&dev.ty);
            let timeout = ty.map_or(self.cfg.skaben_keepalive_ms, |t| {
                t.keepalive_ms(self.cfg.skaben_keepalive_ms)
            });
            let since = dev.last_seen.unwrap_or(dev.first_seen);
            if dev.online && now - since >= timeout {
                dev.online = false;
                dev.presence_changed_at = now;
                changed += 1;
                unit.event(
                    Some(dev.key()),
                    "offline",
                    "server",
                    json!({"reason": "silent", "last_seen": dev.last_seen.map(crate::clock::rfc3339), "timeout_ms": timeout}),
                );
                unit.writes
                    .push(Write::Device(dev.record(ty.map(|t| &t.def))));
            }
        }
        changed
    }

    pub(super) fn skaben_summaries(&self, kind: Option<&str>, out: &mut Vec<super::DeviceSummary>) {
        let table = self.sk();
        out.extend(
            table
                .devices
                .values()
                .filter(|d| kind.is_none_or(|k| d.ty == k))
                .map(|d| super::DeviceSummary {
                    kind: d.ty.clone(),
                    id: d.id.clone(),
                    protocol: "skaben",
                    name: d.name.clone(),
                    online: d.online,
                    last_seen: d.last_seen,
                    first_seen: d.first_seen,
                    blocked: false,
                }),
        );
    }

    /// Hands INFO and SUP to whoever listens (the scenario engine).
    pub fn scenario_inputs(&self) -> tokio::sync::broadcast::Receiver<ScenarioInput> {
        self.scenario.subscribe()
    }

    // ---- operator side ----

    pub fn skaben_device(&self, ty: &str, id: &str) -> Option<SkabenView> {
        let table = self.sk();
        let dev = table.devices.get(&format!("{ty}/{id}"))?;
        let t = table.types.get(ty)?;
        Some(view(dev, &t.def))
    }

    /// Replaces or merge-patches a device's config, then pushes it.
    pub async fn skaben_set_config(
        &self,
        ty: &str,
        id: &str,
        edit: ConfigEdit,
        actor: &str,
        now: i64,
    ) -> Result<SkabenView, CoreError> {
        let ConfigEdit {
            body,
            merge,
            if_match,
        } = edit;
        self.operator_change(ty, id, now, |dev, t, key, unit| {
            let eff = dev.effective(&t.def);
            let (old_version, old_value) = (eff.version, eff.value.clone());
            if let Some(expected) = if_match
                && expected != old_version
            {
                return Err(CoreError::Conflict(format!(
                    "the config of {key} is at version {old_version}, not {expected}; read it again and retry"
                )));
            }
            check_meta(&body)?;
            let new = if merge {
                let mut v = old_value.clone();
                skaben::merge_patch(&mut v, &body);
                v
            } else {
                body.clone()
            };
            if t.def.kind == TypeKind::Smart && !new.is_object() {
                return Err(invalid(
                    "config",
                    "a smart device's config must be a JSON object",
                ));
            }
            t.check(&new).map_err(|e| invalid("config", e))?;
            let hash = skaben::config_hash(&new);
            let version = old_version + 1;
            dev.stored.own = Some(OwnConfig {
                value: new,
                version,
                hash: hash.clone(),
                updated_at: now,
                author: actor.to_string(),
            });
            unit.event(
                Some(key.to_string()),
                "config_changed",
                actor,
                json!({"old_version": old_version, "new_version": version, "hash": hash,
                       "via": if merge { "patch" } else { "put" }, "body": body}),
            );
            // A merge goes out as the patch, unless it deletes keys (a `null` the reference
            // client would store as a value) or the device replaces anyway.
            let as_merge = merge && !has_null(&body) && t.def.kind == TypeKind::Smart;
            let cup = if as_merge {
                self.send_cup(dev, &t.def, false, Some(&body), "operator", now)
            } else {
                self.send_cup(dev, &t.def, true, None, "operator", now)
            };
            unit.event(
                Some(key.to_string()),
                "cup",
                "server",
                cup_event(&cup, "operator"),
            );
            Ok(())
        })
        .await
    }

    /// Sends a device its config again (tracked like any push).
    pub async fn skaben_push(
        &self,
        ty: &str,
        id: &str,
        actor: &str,
        now: i64,
    ) -> Result<SkabenView, CoreError> {
        self.operator_change(ty, id, now, |dev, t, key, unit| {
            // An operator's push is a new attempt even if the device seemed to hold it.
            dev.stored.delivery.confirmed_hash = None;
            dev.stored.delivery.confirmed_version = None;
            let cup = self.send_cup(dev, &t.def, true, None, "operator push", now);
            unit.event(
                Some(key.to_string()),
                "cup",
                actor,
                cup_event(&cup, "operator push"),
            );
            Ok(())
        })
        .await
    }

    /// An operator's change to an existing device: `change` runs with the table locked and
    /// adds its events to the unit; the device row goes with them, and the answer (the device
    /// page) comes once the unit is durable.
    async fn operator_change(
        &self,
        ty: &str,
        id: &str,
        now: i64,
        change: impl FnOnce(&mut SkDevice, &TypeEntry, &str, &mut Unit) -> Result<(), CoreError>,
    ) -> Result<SkabenView, CoreError> {
        let key = format!("{ty}/{id}");
        let (commit, v) = {
            let mut unit = Unit::new(now);
            let mut table = self.sk();
            let SkabenTable { types, devices } = &mut *table;
            let t = types
                .get(ty)
                .ok_or_else(|| CoreError::NotFound(format!("no device type {ty:?}")))?;
            let dev = devices
                .get_mut(&key)
                .ok_or_else(|| CoreError::NotFound(format!("no device {key}")))?;
            change(dev, t, &key, &mut unit)?;
            unit.writes.push(Write::Device(dev.record(Some(&t.def))));
            (self.submit(unit), view(dev, &t.def))
        };
        commit.wait().await?;
        Ok(v)
    }

    /// Registers a device, or changes its name, notes or profile.
    pub async fn skaben_register(
        &self,
        ty: &str,
        id: &str,
        req: SkabenRegister,
        actor: &str,
        now: i64,
    ) -> Result<(SkabenView, bool), CoreError> {
        let id = skaben::validate_device_id(id).map_err(|e| invalid("id", e.to_string()))?;
        let key = format!("{ty}/{id}");
        let (commit, v, created) = {
            let mut unit = Unit::new(now);
            let mut table = self.sk();
            let SkabenTable { types, devices } = &mut *table;
            let t = types.get(ty).ok_or_else(|| {
                CoreError::NotFound(format!(
                    "no device type {ty:?}; add it with PUT /api/types/{ty}"
                ))
            })?;
            let created = !devices.contains_key(&key);
            let dev = devices.entry(key.clone()).or_insert_with(|| SkDevice {
                ty: ty.to_string(),
                id: id.clone(),
                name: String::new(),
                notes: String::new(),
                first_seen: now,
                last_seen: None,
                online: false,
                presence_changed_at: now,
                stored: StoredDesired::default(),
                reported: Reported::default(),
            });
            if let Some(n) = req.name {
                dev.name = n;
            }
            if let Some(n) = req.notes {
                dev.notes = n;
            }
            if let Some(p) = req.profile {
                dev.stored.profile = p;
            }
            unit.event(
                Some(key.clone()),
                if created { "registered" } else { "updated" },
                actor,
                json!({"name": dev.name, "notes": dev.notes, "profile": dev.stored.profile}),
            );
            unit.writes.push(Write::Device(dev.record(Some(&t.def))));
            (self.submit(unit), view(dev, &t.def), created)
        };
        commit.wait().await?;
        Ok((v, created))
    }

    pub fn skaben_types(&self) -> Vec<TypeView> {
        let table = self.sk();
        let mut out: Vec<TypeView> = table
            .types
            .values()
            .map(|t| TypeView {
                def: t.def.clone(),
                devices: table
                    .devices
                    .values()
                    .filter(|d| d.ty == t.def.name)
                    .count(),
            })
            .collect();
        out.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        out
    }

    pub fn skaben_type(&self, name: &str) -> Option<TypeView> {
        let table = self.sk();
        let t = table.types.get(name)?;
        Some(TypeView {
            def: t.def.clone(),
            devices: table.devices.values().filter(|d| d.ty == name).count(),
        })
    }

    /// Creates or changes a type. A changed type config is broadcast to `<type>/all/cup` when
    /// the type is active.
    pub async fn skaben_put_type(
        &self,
        name: &str,
        upd: TypeUpdate,
        actor: &str,
        now: i64,
    ) -> Result<(TypeView, bool), CoreError> {
        let name =
            skaben::validate_device_type(name).map_err(|e| invalid("type", e.to_string()))?;
        if name == "ask" || name == "acon" {
            return Err(invalid("type", format!("{name:?} is reserved")));
        }
        if let Some(Some(k)) = upd.keepalive_secs
            && !(k > 0.0 && k.is_finite() && k < 1e9)
        {
            return Err(invalid(
                "keepalive_secs",
                "must be a positive number of seconds",
            ));
        }
        let (commit, v, created) = {
            let mut unit = Unit::new(now);
            let mut table = self.sk();
            let created = !table.types.contains_key(&name);
            let mut def = match table.types.get(&name) {
                Some(t) => t.def.clone(),
                None => {
                    let kind = upd.kind.ok_or_else(|| {
                        invalid("kind", "a new type needs \"kind\": \"smart\" or \"dumb\"")
                    })?;
                    let mut d = new_type(&name, kind, ClientProfile::Standard, json!({}), now);
                    d.config_version = 0;
                    d
                }
            };
            if let Some(k) = upd.kind {
                def.kind = k;
            }
            if let Some(a) = upd.active {
                def.active = a;
            }
            if let Some(p) = upd.profile {
                def.profile = p;
            }
            if let Some(k) = upd.keepalive_secs {
                def.keepalive_secs = k;
            }
            if let Some(s) = upd.schema {
                def.schema = s;
            }
            let mut config_changed = created;
            if let Some(c) = upd.config {
                check_meta(&c)?;
                if skaben::config_hash(&c) != def.config_hash {
                    def.config = c;
                    config_changed = true;
                }
            }
            if config_changed {
                def.config_hash = skaben::config_hash(&def.config);
                def.config_version += 1;
            }
            if def.kind == TypeKind::Smart && !def.config.is_object() {
                return Err(invalid(
                    "config",
                    "a smart type's config must be a JSON object",
                ));
            }
            def.updated_at = now;
            let entry = TypeEntry::new(def.clone()).map_err(|e| invalid("schema", e))?;
            entry.check(&def.config).map_err(|e| invalid("config", e))?;
            unit.event(
                Some(format!("{name}/all")),
                if created {
                    "type_created"
                } else {
                    "type_changed"
                },
                actor,
                json!({"type": def, "config_changed": config_changed}),
            );
            unit.writes.push(Write::DeviceType(type_record(&def)));
            table.types.insert(name.clone(), entry);
            if config_changed && !created && def.active {
                let cup = self.broadcast_type(&def, "type config changed", now);
                unit.event(
                    Some(format!("{name}/all")),
                    "cup",
                    "server",
                    cup_event(&cup, "type config changed"),
                );
                Self::track_type_push(&mut table, &def, &cup, now, &mut unit);
            }
            let devices = table.devices.values().filter(|d| d.ty == name).count();
            (self.submit(unit), TypeView { def, devices }, created)
        };
        commit.wait().await?;
        Ok((v, created))
    }

    /// Broadcasts the type config to `<type>/all/cup`.
    pub async fn skaben_push_type(
        &self,
        name: &str,
        actor: &str,
        now: i64,
    ) -> Result<TypeView, CoreError> {
        let (commit, v) = {
            let mut unit = Unit::new(now);
            let mut table = self.sk();
            let def = table
                .types
                .get(name)
                .map(|t| t.def.clone())
                .ok_or_else(|| CoreError::NotFound(format!("no device type {name:?}")))?;
            let cup = self.broadcast_type(&def, "operator push", now);
            unit.event(
                Some(format!("{name}/all")),
                "cup",
                actor,
                cup_event(&cup, "operator push"),
            );
            Self::track_type_push(&mut table, &def, &cup, now, &mut unit);
            let devices = table.devices.values().filter(|d| d.ty == name).count();
            (self.submit(unit), TypeView { def, devices })
        };
        commit.wait().await?;
        Ok(v)
    }

    /// Devices that follow the type config now wait for the broadcast's confirmation.
    fn track_type_push(
        table: &mut SkabenTable,
        def: &DeviceType,
        cup: &CupOut,
        now: i64,
        unit: &mut Unit,
    ) {
        let task_id = serde_json::from_str::<Value>(&cup.payload)
            .ok()
            .and_then(|v| v.get("task_id").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default();
        for dev in table
            .devices
            .values_mut()
            .filter(|d| d.ty == def.name && d.stored.own.is_none())
        {
            let d = &mut dev.stored.delivery;
            if d.confirmed_hash.as_deref() == Some(def.config_hash.as_str())
                && d.confirmed_version == Some(def.config_version)
            {
                continue;
            }
            d.pending = Some(Push {
                version: def.config_version,
                hash: def.config_hash.clone(),
                task_ids: vec![task_id.clone()],
                overwrite: true,
                first_sent_at: now,
                last_sent_at: now,
                attempts: 1,
                state: PushState::Pending,
                reason: "type push".into(),
            });
            unit.writes.push(Write::Device(dev.record(Some(def))));
        }
    }
}

fn type_record(d: &DeviceType) -> TypeRecord {
    TypeRecord {
        name: d.name.clone(),
        data: to_json(d),
    }
}

fn cup_event(cup: &CupOut, reason: &str) -> Value {
    json!({"topic": cup.topic, "payload": cup.payload, "reason": reason})
}

fn view(dev: &SkDevice, ty: &DeviceType) -> SkabenView {
    let eff = dev.effective(ty);
    let d = &dev.stored.delivery;
    SkabenView {
        kind: dev.ty.clone(),
        id: dev.id.clone(),
        protocol: "skaben",
        type_kind: ty.kind,
        name: dev.name.clone(),
        notes: dev.notes.clone(),
        first_seen: dev.first_seen,
        last_seen: dev.last_seen,
        online: dev.online,
        presence_changed_at: dev.presence_changed_at,
        profile: dev.profile(ty),
        in_sync: d.confirmed_hash.as_deref() == Some(eff.hash)
            && d.confirmed_version == Some(eff.version),
        desired: DesiredView {
            config: eff.value.clone(),
            version: eff.version,
            hash: eff.hash.to_string(),
            source: if eff.from_type { "type" } else { "device" },
            author: dev.stored.own.as_ref().map(|o| o.author.clone()),
        },
        reported: dev.reported.clone(),
        delivery: d.clone(),
    }
}

/// The meta keys of the reference profile can't be config: they would be stripped on the way.
fn check_meta(v: &Value) -> Result<(), CoreError> {
    if let Value::Object(m) = v {
        for k in skaben::META_KEYS {
            if m.contains_key(k) {
                return Err(invalid(
                    "config",
                    format!(
                        "{k:?} is reserved for the protocol (task_id, hash, FORCE) and can't be a config key"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn has_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().any(has_null),
        _ => false,
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

/// The `<type>/<id>` a malformed topic seems to be about, to file its event under.
fn guess_device(topic: &str) -> Option<String> {
    let s: Vec<&str> = topic.split('/').collect();
    match s[..] {
        [ask, ty, id, _] if ask.eq_ignore_ascii_case("ask") && !ty.is_empty() && !id.is_empty() => {
            let ty = skaben::validate_device_type(ty).ok()?;
            let id = if id.eq_ignore_ascii_case("all") {
                "all".to_string()
            } else {
                skaben::validate_device_id(id).ok()?
            };
            Some(format!("{ty}/{id}"))
        }
        _ => None,
    }
}
