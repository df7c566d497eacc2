//! SKABEN props in the core: device types as data, each prop's versioned config, push
//! tracking, presence by type, and the packet path: parse, register, mark seen, apply the
//! rule of the command ([`rules`]: pong, cup request, sup, info, ack, nack), send the CUPs it
//! decided on, record the packet with what went out in answer. The operator's changes to
//! props and types are here too.
//!
//! Invariants:
//! - A prop's desired config is its own config if it has one, else its type's config; its
//!   version only grows (an own config starts at the version it replaces + 1).
//! - Every hash is [`skaben::config_hash`] of exactly the datahold sent (meta keys stripped),
//!   so a device that sends the hash back proves it holds that config.
//! - At most one push is tracked per prop: the newest. Any CUP the server sends carrying the
//!   current config counts as a (re)send of it; it ends when the device confirms (ACK of one of
//!   its task ids, or a hash equal to the pushed one) or a NACK fails it.
//! - A packet is never dropped for being late or odd: it is recorded, and the config is sent
//!   besides when the device looks stale.
//! - Publishes are effects of the change like its rows and events: nothing goes out while a
//!   rule is computing, and a dry run sends nothing.

pub mod rules;

use std::collections::hash_map::Entry;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skaben::{ClientProfile, Command, Inbound, Payload, Target};

use super::acon::clip;
use super::change::{Effects, State};
use super::device::{Device, DeviceState, DeviceView, key, to_json};
use super::event::{DEVICE, Event, Registration, SERVER};
use super::{CoreError, Outcome, UnknownPolicy, invalid};
use crate::bus::Qos;
use crate::store::{MessageRecord, StoreError, TypeRecord, Write};

/// Smart devices keep a structured config and merge updates; dumb ones take the whole config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypeKind {
    Smart,
    Dumb,
}

/// The most of a packet's answer (the CUPs sent) its message row keeps, bytes.
pub const KEPT_ANSWER: usize = 4096;

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
    /// Largest payload a device of this type may send, bytes; `None`: the server's setting
    /// (`--skaben-max-payload-bytes`). A larger packet is refused unrecorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_bytes: Option<u32>,
    /// The type-level config: what devices without a config of their own get.
    pub config: Value,
    pub config_version: i64,
    pub config_hash: String,
    /// JSON Schema every config of this type (and every config a SUP produces) must satisfy.
    pub schema: Option<Value>,
    pub updated_at: i64,
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

/// A type with its compiled schema.
#[derive(Clone)]
pub struct TypeEntry {
    pub def: DeviceType,
    validator: Option<Arc<jsonschema::Validator>>,
}

impl TypeEntry {
    pub fn new(def: DeviceType) -> Result<TypeEntry, String> {
        let validator = match &def.schema {
            None => None,
            Some(s) => Some(Arc::new(
                jsonschema::validator_for(s)
                    .map_err(|e| format!("not a valid JSON Schema: {e}"))?,
            )),
        };
        Ok(TypeEntry { def, validator })
    }

    /// Checks a config against the type's schema.
    pub fn check(&self, config: &Value) -> Result<(), String> {
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

    pub fn keepalive_ms(&self, default_ms: i64) -> i64 {
        self.def
            .keepalive_secs
            .map(|s| (s * 1000.0) as i64)
            .unwrap_or(default_ms)
    }
}

/// The types written on first start (lock and terminal are smart; rgb, pwr, scl and box
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
        max_payload_bytes: None,
        config_hash: skaben::config_hash(&config),
        config,
        config_version: 1,
        schema: None,
        updated_at: now,
    }
}

impl Delivery {
    /// The device is known to hold exactly this version (the one "in sync" rule).
    pub fn holds(&self, version: i64, hash: &str) -> bool {
        self.confirmed_hash.as_deref() == Some(hash) && self.confirmed_version == Some(version)
    }

    /// The tracked push, while it waits for a confirmation.
    pub fn pending_push(&self) -> Option<&Push> {
        self.pending
            .as_ref()
            .filter(|p| p.state == PushState::Pending)
    }
}

/// A prop's part of the device model: its own config (if any), profile override, delivery
/// state and what it reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PropState {
    pub own: Option<OwnConfig>,
    pub profile: Option<ClientProfile>,
    pub delivery: Delivery,
    pub reported: Reported,
}

/// The stored `desired` document of a prop.
#[derive(Serialize, Deserialize)]
struct StoredDesired {
    own: Option<OwnConfig>,
    profile: Option<ClientProfile>,
    delivery: Delivery,
}

/// The config a prop should hold, wherever it comes from.
pub struct Effective<'a> {
    pub value: &'a Value,
    pub version: i64,
    pub hash: &'a str,
    pub from_type: bool,
}

impl PropState {
    pub fn effective<'a>(&'a self, ty: &'a DeviceType) -> Effective<'a> {
        match &self.own {
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

    pub fn profile(&self, ty: &DeviceType) -> ClientProfile {
        self.profile.unwrap_or(ty.profile)
    }

    /// The device is known to hold its desired config.
    pub fn in_sync(&self, ty: &DeviceType) -> bool {
        let eff = self.effective(ty);
        self.delivery.holds(eff.version, eff.hash)
    }

    /// Records that the device holds `version`/`hash`; ends the push it confirms. Whether
    /// anything changed.
    pub fn confirm(&mut self, version: i64, hash: &str, by: &str, now: i64) -> bool {
        let d = &mut self.delivery;
        if d.holds(version, hash) {
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

    pub(crate) fn desired_version(&self, ty: Option<&DeviceType>) -> i64 {
        match (&self.own, ty) {
            (Some(o), _) => o.version,
            (None, Some(t)) => t.config_version,
            (None, None) => 0,
        }
    }

    pub(crate) fn desired_json(&self) -> String {
        to_json(&StoredDesired {
            own: self.own.clone(),
            profile: self.profile,
            delivery: self.delivery.clone(),
        })
    }

    pub(crate) fn reported_json(&self) -> String {
        to_json(&self.reported)
    }

    pub(crate) fn from_json(
        desired: &str,
        reported: &str,
    ) -> Result<PropState, (&'static str, serde_json::Error)> {
        let d: StoredDesired = serde_json::from_str(desired).map_err(|e| ("desired config", e))?;
        let reported = serde_json::from_str(reported).map_err(|e| ("reported state", e))?;
        Ok(PropState {
            own: d.own,
            profile: d.profile,
            delivery: d.delivery,
            reported,
        })
    }
}

/// Operator changes to a device type (`PUT /api/types/{type}`); omitted fields keep their value
/// (a new type needs `kind`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeUpdate {
    pub kind: Option<TypeKind>,
    pub active: Option<bool>,
    pub profile: Option<ClientProfile>,
    /// `null` goes back to the server's setting.
    #[serde(default, deserialize_with = "double_option")]
    pub keepalive_secs: Option<Option<f64>>,
    /// `null` goes back to the server's setting.
    #[serde(default, deserialize_with = "double_option")]
    pub max_payload_bytes: Option<Option<u32>>,
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
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkabenRegister {
    pub name: Option<String>,
    pub notes: Option<String>,
    /// `null` goes back to the type's profile.
    #[serde(default, deserialize_with = "double_option")]
    pub profile: Option<Option<ClientProfile>>,
}

/// An operator's change to a device config.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigEdit {
    /// The new config (`PUT`) or an RFC 7386 merge patch (`PATCH`).
    pub body: Value,
    /// `true` for a merge patch.
    pub merge: bool,
    /// The version the operator read (`If-Match`); a stale one is a conflict.
    pub if_match: Option<i64>,
}

/// A prop's page (a snapshot; `http` renders it).
#[derive(Debug, Clone, PartialEq)]
pub struct PropSnapshot {
    pub device: DeviceView,
    pub type_kind: TypeKind,
    pub profile: ClientProfile,
    pub desired: DesiredSnapshot,
    pub reported: Reported,
    pub delivery: Delivery,
    /// The device is known to hold the desired config.
    pub in_sync: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredSnapshot {
    pub config: Value,
    pub version: i64,
    pub hash: String,
    /// `type` (the type's config) or `device` (its own).
    pub source: &'static str,
    /// Who made this version of the device's own config: the actor (`device` for a SUP);
    /// `None` for the type's config.
    pub author: Option<String>,
    /// When this version was made (Unix ms): the own config's time, or the type's last change.
    pub updated_at: i64,
}

/// A type with the number of its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeSnapshot {
    pub def: DeviceType,
    pub devices: usize,
}

/// At most one answer broadcast to `<type>/all/cup` per type in this time (ms).
pub const BROADCAST_EVERY_MS: i64 = 1000;
/// Task ids of a push kept to match ACKs of earlier sends.
const TASK_IDS_KEPT: usize = 8;

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// A topic from a builder of the `skaben` crate. Types and ids are validated when they enter
/// the table, so a refusal here is a bug; it is logged and the publish skipped.
fn topic(built: Result<String, skaben::TopicError>) -> Option<String> {
    built
        .inspect_err(|e| tracing::error!(error = %e, "cannot build a SKABEN topic"))
        .ok()
}

/// What a CUP publish was: for the packet's message row and `cup` events.
struct CupOut {
    topic: String,
    payload: String,
    task_id: String,
}

fn cup_event(cup: &CupOut, reason: &str) -> Event {
    Event::Cup {
        topic: cup.topic.clone(),
        payload: cup.payload.clone(),
        reason: reason.to_string(),
    }
}

fn type_record(d: &DeviceType) -> TypeRecord {
    TypeRecord {
        name: d.name.clone(),
        data: to_json(d),
    }
}

fn prop_not_found(key: &str) -> CoreError {
    CoreError::NotFound(format!("no device {key}"))
}

fn type_not_found(ty: &str) -> CoreError {
    CoreError::NotFound(format!("no device type {ty:?}"))
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

fn snapshot(dev: &Device, ty: &DeviceType) -> Option<PropSnapshot> {
    let prop = dev.prop()?;
    let eff = prop.effective(ty);
    Some(PropSnapshot {
        device: dev.view(),
        type_kind: ty.kind,
        profile: prop.profile(ty),
        in_sync: prop.in_sync(ty),
        desired: DesiredSnapshot {
            config: eff.value.clone(),
            version: eff.version,
            hash: eff.hash.to_string(),
            source: if eff.from_type { "type" } else { "device" },
            author: prop.own.as_ref().map(|o| o.author.clone()),
            updated_at: prop.own.as_ref().map_or(ty.updated_at, |o| o.updated_at),
        },
        reported: prop.reported.clone(),
        delivery: prop.delivery.clone(),
    })
}

/// An inbound packet, read before the state is locked (parsing holds no lock).
pub struct Packet<'a> {
    pub topic: &'a str,
    pub raw: &'a [u8],
    /// The topic and payload parsed, with the device key; or the device the topic seems to
    /// name and why it could not be read.
    read: Result<(Inbound, Payload, String), (Option<String>, String)>,
    /// What the server read from the payload (the message row's `parsed`).
    summary: String,
    /// The raw payload as kept in the message row.
    clipped: String,
}

impl<'a> Packet<'a> {
    pub fn read(topic: &'a str, raw: &'a [u8]) -> Packet<'a> {
        let read = match Inbound::parse(topic) {
            Err(e) => Err((skaben::device_of_topic(topic), e.to_string())),
            Ok(inbound) => {
                let key = key(&inbound.device_type, inbound.target.as_str());
                match Payload::parse(raw) {
                    Ok(p) => Ok((inbound, p, key)),
                    Err(e) => Err((Some(key), e.to_string())),
                }
            }
        };
        // The payload itself is the raw column; this is what the server read from it.
        let summary = match &read {
            Ok((inbound, p, _)) => json!({"command": inbound.command.as_str(),
                "timestamp": p.timestamp, "task_id": p.task_id, "hash": p.hash})
            .to_string(),
            Err(_) => String::new(),
        };
        Packet {
            topic,
            raw,
            read,
            summary,
            clipped: clip(raw),
        }
    }
}

impl State {
    /// Loads (seeding on first start) the device types; returns the seed's writes.
    pub(crate) fn load_types(
        &mut self,
        stored: Vec<TypeRecord>,
        now: i64,
    ) -> Result<Vec<Write>, StoreError> {
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
                defs.push(
                    serde_json::from_str(&r.data)
                        .map_err(|e| StoreError::Corrupt(format!("device type {}: {e}", r.name)))?,
                );
            }
            defs
        };
        for def in defs {
            let name = def.name.clone();
            let entry = TypeEntry::new(def)
                .map_err(|e| StoreError::Corrupt(format!("device type {name}: {e}")))?;
            self.types.insert(name, entry);
        }
        Ok(seed)
    }

    fn task_id(&mut self) -> String {
        let id = self.next_task;
        self.next_task += 1;
        id.to_string()
    }

    /// Sends a prop its current config (or `datahold`, a patch) and tracks it as the push of
    /// that version.
    fn send_cup(
        &mut self,
        fx: &mut Effects,
        key: &str,
        overwrite: bool,
        datahold: Option<&Value>,
        reason: &str,
    ) -> Option<CupOut> {
        let task_id = self.task_id();
        let now = fx.now;
        let dev = self.devices.get_mut(key)?;
        let ty = &self.types.get(&dev.kind)?.def;
        let topic = topic(skaben::cup_topic(&dev.kind, &dev.id))?;
        let DeviceState::Prop(prop) = &mut dev.state else {
            return None;
        };
        let eff = prop.effective(ty);
        let (version, hash) = (eff.version, eff.hash.to_string());
        // A dumb device replaces its config whatever the flag says; say so.
        let overwrite = overwrite || ty.kind == TypeKind::Dumb;
        let payload = skaben::cup_payload(
            prop.profile(ty),
            datahold.unwrap_or(eff.value),
            &task_id,
            &hash,
            overwrite,
            secs(now),
        )
        .to_string();
        fx.publish(topic.clone(), payload.clone(), Qos::AtLeastOnce);
        fx.counts.skaben_cups_sent += 1;
        let out = CupOut {
            topic,
            payload,
            task_id: task_id.clone(),
        };
        let d = &mut prop.delivery;
        if d.holds(version, &hash) {
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
        Some(out)
    }

    /// Broadcasts a type's config to `<type>/all/cup`.
    fn broadcast_type(&mut self, fx: &mut Effects, name: &str) -> Option<CupOut> {
        let task_id = self.task_id();
        let ty = &self.types.get(name)?.def;
        let topic = topic(skaben::cup_all_topic(&ty.name))?;
        let payload = skaben::cup_payload(
            ty.profile,
            &ty.config,
            &task_id,
            &ty.config_hash,
            true,
            secs(fx.now),
        )
        .to_string();
        fx.publish(topic.clone(), payload.clone(), Qos::AtLeastOnce);
        fx.counts.skaben_cups_sent += 1;
        Some(CupOut {
            topic,
            payload,
            task_id,
        })
    }

    /// Writes a prop's row.
    fn prop_row(&self, fx: &mut Effects, key: &str) {
        if let Some(dev) = self.devices.get(key) {
            fx.device_row(dev, self.types.get(&dev.kind).map(|t| &t.def));
        }
    }

    /// Refuses an unknown prop or type: counted, and a `rejected` event at most once a minute.
    /// The payload limit of a type's devices (the server's for an unknown type).
    fn payload_limit(&self, device_type: &str) -> Option<usize> {
        let own = self
            .types
            .get(device_type)
            .and_then(|t| t.def.max_payload_bytes);
        let n = own.map_or(self.cfg.skaben_max_payload_bytes, |n| n as usize);
        (n > 0).then_some(n)
    }

    fn refuse_prop(&mut self, fx: &mut Effects, key: &str, topic: &str, reason: String) {
        fx.counts.skaben_rejected += 1;
        if let Some(since) = self.rejected_event_due(key, fx.now) {
            fx.device_event(
                key,
                SERVER,
                Event::Rejected {
                    reason,
                    peer: None,
                    send: None,
                    topic: Some(topic.to_string()),
                    refused_since_last_event: since,
                },
            );
        }
    }

    /// A packet that could not be read: an event with the reason and the raw payload; a known
    /// prop it names is still marked seen. Nobody waits for it.
    fn skaben_malformed(
        &mut self,
        fx: &mut Effects,
        packet: &Packet,
        device: Option<String>,
        reason: String,
    ) {
        let raw = packet.raw;
        fx.counts.skaben_malformed += 1;
        fx.wait = false;
        if let Some(key) = &device
            && let Some(dev) = self.devices.get_mut(key)
            && dev.prop().is_some()
            && let Some(e) = dev.seen(fx.now, "packet after silence (malformed)", None)
        {
            fx.events.push(e);
            self.prop_row(fx, key);
        }
        fx.event(
            device,
            DEVICE,
            Event::Malformed {
                reason,
                peer: None,
                topic: Some(packet.topic.to_string()),
                raw: packet.clipped.clone(),
                raw_len: raw.len(),
                truncated: raw.len() > super::acon::KEEP_RAW,
            },
        );
    }

    /// One inbound MQTT publish. Never fails: whatever is wrong becomes an event. Returns
    /// whether its acknowledgement must wait for the commit (a SUP or INFO, which change
    /// state); other packets' records go to the store as background units.
    pub fn skaben_packet(&mut self, fx: &mut Effects, topic: &str, raw: &[u8]) -> bool {
        self.skaben_parsed(fx, &Packet::read(topic, raw))
    }

    /// [`State::skaben_packet`] on a packet read beforehand (outside the lock).
    pub fn skaben_parsed(&mut self, fx: &mut Effects, packet: &Packet) -> bool {
        fx.counts.skaben_packets += 1;
        let (topic, raw) = (packet.topic, packet.raw);
        let (inbound, payload, key) = match &packet.read {
            Err((device, reason)) => {
                self.skaben_malformed(fx, packet, device.clone(), reason.clone());
                return false;
            }
            Ok(ok) => ok,
        };
        let durable = matches!(inbound.command, Command::Sup | Command::Info);
        fx.wait = durable;
        if let Some(limit) = self.payload_limit(&inbound.device_type)
            && raw.len() > limit
        {
            fx.wait = false;
            fx.counts.skaben_too_large += 1;
            self.limited(
                fx,
                key,
                "size",
                Event::PayloadTooLarge {
                    command: inbound.command.as_str().to_string(),
                    bytes: raw.len(),
                    limit,
                    refused_since_last_event: 0,
                },
            );
            return false;
        }
        if !self.take_token(key, self.cfg.skaben_max_packets_per_sec, fx.now) {
            fx.wait = false;
            fx.counts.skaben_rate_limited += 1;
            self.limited(
                fx,
                key,
                "rate",
                Event::RateLimited {
                    command: Some(inbound.command.as_str().to_string()),
                    limit_per_sec: self.cfg.skaben_max_packets_per_sec,
                    refused_since_last_event: 0,
                },
            );
            return false;
        }
        if !self.types.contains_key(&inbound.device_type) {
            let reason = format!(
                "unknown device type {:?}; add it with PUT /api/types/{}",
                inbound.device_type, inbound.device_type
            );
            self.refuse_prop(fx, key, topic, reason);
            return false;
        }
        let out = match &inbound.target {
            Target::All => self.packet_from_all(fx, inbound, payload, key),
            Target::Device(id) => {
                match self.packet_from_prop(fx, inbound, id, payload, raw, key, topic) {
                    Some(out) => out,
                    None => return false,
                }
            }
        };
        // What went out in answer, kept to its first bytes: a CUP carries the whole config,
        // which the device's versioned config already holds; a device asking for a big
        // config again and again must not fill the store with copies of it.
        let answer = out
            .iter()
            .map(|c| format!("{} {}", c.topic, c.payload))
            .collect::<Vec<_>>()
            .join("\n");
        let answer = super::clip_text(&answer, KEPT_ANSWER);
        fx.writes.push(Write::Message(MessageRecord {
            device: key.clone(),
            at: fx.now,
            send: None,
            peer: topic.to_string(),
            raw: packet.clipped.clone(),
            parsed: packet.summary.clone(),
            answer,
        }));
        durable
    }

    /// A packet of one prop: register (or refuse), mark seen, apply the command's rule, send
    /// the CUP it decided on. `None` when the prop is refused.
    #[allow(clippy::too_many_arguments)]
    fn packet_from_prop(
        &mut self,
        fx: &mut Effects,
        inbound: &Inbound,
        id: &str,
        payload: &Payload,
        raw: &[u8],
        key: &str,
        topic: &str,
    ) -> Option<Vec<CupOut>> {
        let now = fx.now;
        let is_new = !self.devices.contains_key(key);
        if is_new && self.cfg.unknown_devices == UnknownPolicy::Reject {
            self.refuse_prop(fx, key, topic, "unknown device, policy reject".into());
            return None;
        }
        let ty = self.types.get(&inbound.device_type)?;
        let dev = match self.devices.entry(key.to_string()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                fx.device_event(
                    key,
                    DEVICE,
                    Event::Registered(Registration::Prop {
                        topic: topic.to_string(),
                        device_type: ty.def.name.clone(),
                    }),
                );
                e.insert(Device::new(
                    &inbound.device_type,
                    id,
                    now,
                    DeviceState::Prop(PropState::default()),
                ))
            }
        };
        let mut d = rules::Decision {
            dirty: is_new,
            ..Default::default()
        };
        let reason = if is_new {
            "first packet"
        } else {
            "packet after silence"
        };
        if let Some(e) = dev.seen(now, reason, Some(inbound.command.as_str())) {
            fx.events.push(e);
            d.dirty = true;
            d.cup = Some("device was away");
        }
        let DeviceState::Prop(prop) = &mut dev.state else {
            // `<type>/<id>` of a SKABEN type is never a board: `acon` is not a type name.
            return None;
        };
        let packet = rules::Packet {
            command: inbound.command,
            payload,
            raw,
            now,
        };
        rules::apply(prop, ty, &packet, self.cfg.skaben_keepalive_ms, &mut d);
        if d.malformed {
            fx.counts.skaben_malformed += 1;
        }
        for e in d.events {
            fx.device_event(key, DEVICE, e);
        }
        let mut out = Vec::new();
        if let Some(reason) = d.cup {
            out.extend(self.send_cup(fx, key, true, None, reason));
            d.dirty = true;
        }
        if d.dirty {
            self.prop_row(fx, key);
        }
        Some(out)
    }

    /// A packet from `ask/<type>/all/<command>`: a small device speaking for its type.
    fn packet_from_all(
        &mut self,
        fx: &mut Effects,
        inbound: &Inbound,
        payload: &Payload,
        key: &str,
    ) -> Vec<CupOut> {
        let name = &inbound.device_type;
        match inbound.command {
            Command::Cup => {
                // Every small device asks on connect, and each broadcast reaches all of them:
                // at most one broadcast per type per BROADCAST_EVERY_MS, the late askers get
                // the next one (sent by `skaben_flush_broadcasts`).
                let entry = self
                    .broadcasts
                    .entry(name.clone())
                    .or_insert((i64::MIN / 2, false));
                if fx.now - entry.0 >= BROADCAST_EVERY_MS {
                    *entry = (fx.now, false);
                    return self.broadcast_type(fx, name).into_iter().collect();
                }
                entry.1 = true;
            }
            Command::Info => fx.device_event(key, DEVICE, Event::info(payload.datahold.as_ref())),
            Command::Pong | Command::Ack => {}
            Command::Sup | Command::Nack => fx.device_event(
                key,
                DEVICE,
                Event::Ignored {
                    reason: format!(
                        "{} from `all` names no device; nothing to apply it to",
                        inbound.command.as_str()
                    ),
                },
            ),
        }
        Vec::new()
    }

    /// Re-sends every pending push (the broker connection is back: what was published while
    /// it was down may be lost). Returns how many.
    pub fn skaben_resend_pending(&mut self, fx: &mut Effects, reason: &str) -> usize {
        fx.wait = false;
        let mut keys: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                self.types.contains_key(&d.kind)
                    && d.prop()
                        .is_some_and(|p| p.delivery.pending_push().is_some())
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        for key in &keys {
            if let Some(cup) = self.send_cup(fx, key, true, None, reason) {
                fx.device_event(key, SERVER, cup_event(&cup, reason));
            }
            self.prop_row(fx, key);
        }
        keys.len()
    }

    /// Sends the type broadcasts that CUP requests from `all` asked for while one had just
    /// gone out.
    pub fn skaben_flush_broadcasts(&mut self, fx: &mut Effects) -> usize {
        fx.wait = false;
        let now = fx.now;
        let mut due = Vec::new();
        for (name, (at, wanted)) in self.broadcasts.iter_mut() {
            if *wanted && now - *at >= BROADCAST_EVERY_MS {
                *at = now;
                *wanted = false;
                due.push(name.clone());
            }
        }
        due.sort();
        for name in &due {
            let reason = "cup requests from all";
            if let Some(cup) = self.broadcast_type(fx, name) {
                fx.device_event(&key(name, "all"), SERVER, cup_event(&cup, reason));
            }
        }
        due.len()
    }

    /// PING to every active type. Returns the number of types pinged.
    pub fn skaben_ping(&mut self, fx: &mut Effects) -> usize {
        fx.wait = false;
        let mut names: Vec<&String> = self
            .types
            .values()
            .filter(|t| t.def.active)
            .map(|t| &t.def.name)
            .collect();
        names.sort();
        let payload = skaben::ping_payload(secs(fx.now)).to_string();
        let mut n = 0;
        for name in names {
            let Some(topic) = topic(skaben::ping_topic(name)) else {
                continue;
            };
            fx.publish(topic.clone(), payload.clone(), Qos::AtMostOnce);
            fx.device_event(
                &key(name, "all"),
                SERVER,
                Event::Ping {
                    topic,
                    payload: payload.clone(),
                },
            );
            n += 1;
        }
        n
    }

    // ---- snapshots ----

    pub(crate) fn prop_snapshot(&self, ty: &str, id: &str) -> Option<PropSnapshot> {
        let dev = self.devices.get(&key(ty, id))?;
        snapshot(dev, &self.types.get(ty)?.def)
    }

    fn prop_outcome(&self, key: &str, created: bool) -> Result<Outcome, CoreError> {
        let dev = self.devices.get(key).ok_or_else(|| prop_not_found(key))?;
        let ty = self
            .types
            .get(&dev.kind)
            .ok_or_else(|| type_not_found(&dev.kind))?;
        let page = snapshot(dev, &ty.def).ok_or_else(|| prop_not_found(key))?;
        Ok(Outcome::Prop {
            page: Box::new(page),
            created,
        })
    }

    fn devices_of(&self, name: &str) -> usize {
        self.devices
            .values()
            .filter(|d| d.kind == name && d.prop().is_some())
            .count()
    }

    pub(crate) fn type_snapshot(&self, name: &str) -> Option<TypeSnapshot> {
        let t = self.types.get(name)?;
        Some(TypeSnapshot {
            def: t.def.clone(),
            devices: self.devices_of(name),
        })
    }

    pub(crate) fn type_snapshots(&self) -> Vec<TypeSnapshot> {
        let mut out: Vec<TypeSnapshot> = self
            .types
            .keys()
            .filter_map(|n| self.type_snapshot(n))
            .collect();
        out.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        out
    }

    // ---- operator changes ----

    /// An operator's change to an existing prop: `change` validates, then mutates, and adds
    /// its events; the row goes with them, and the answer is the prop's page.
    fn prop_change(
        &mut self,
        fx: &mut Effects,
        ty: &str,
        id: &str,
        change: impl FnOnce(&mut PropState, &TypeEntry, &str, &mut Effects) -> Result<(), CoreError>,
    ) -> Result<String, CoreError> {
        let key = key(ty, id);
        let t = self.types.get(ty).ok_or_else(|| type_not_found(ty))?;
        let prop = match self.devices.get_mut(&key).map(|d| &mut d.state) {
            Some(DeviceState::Prop(p)) => p,
            _ => return Err(prop_not_found(&key)),
        };
        change(prop, t, &key, fx)?;
        Ok(key)
    }

    /// Replaces or merge-patches a prop's config, then pushes it.
    pub(crate) fn set_config(
        &mut self,
        fx: &mut Effects,
        ty: &str,
        id: &str,
        edit: ConfigEdit,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        let ConfigEdit {
            body,
            merge,
            if_match,
        } = edit;
        let now = fx.now;
        let mut as_merge = false;
        let key = self.prop_change(fx, ty, id, |prop, t, key, fx| {
            let eff = prop.effective(&t.def);
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
                let mut v = old_value;
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
            prop.own = Some(OwnConfig {
                value: new,
                version,
                hash: hash.clone(),
                updated_at: now,
                author: actor.to_string(),
            });
            // A merge goes out as the patch, unless it deletes keys (a `null` the reference
            // client would store as a value) or the device replaces anyway.
            as_merge = merge && !has_null(&body) && t.def.kind == TypeKind::Smart;
            fx.device_event(
                key,
                actor,
                Event::ConfigChanged {
                    old_version,
                    new_version: version,
                    hash,
                    keys: None,
                    via: if merge { "patch" } else { "put" }.into(),
                    body: Some(body.clone()),
                },
            );
            Ok(())
        })?;
        let cup = if as_merge {
            self.send_cup(fx, &key, false, Some(&body), "operator")
        } else {
            self.send_cup(fx, &key, true, None, "operator")
        };
        if let Some(cup) = cup {
            fx.device_event(&key, SERVER, cup_event(&cup, "operator"));
        }
        self.prop_row(fx, &key);
        self.prop_outcome(&key, false)
    }

    /// Sends a prop its config again (tracked like any push).
    pub(crate) fn push_device(
        &mut self,
        fx: &mut Effects,
        ty: &str,
        id: &str,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        let key = self.prop_change(fx, ty, id, |prop, _, _, _| {
            // An operator's push is a new attempt even if the device seemed to hold it.
            prop.delivery.confirmed_hash = None;
            prop.delivery.confirmed_version = None;
            Ok(())
        })?;
        if let Some(cup) = self.send_cup(fx, &key, true, None, "operator push") {
            fx.device_event(&key, actor, cup_event(&cup, "operator push"));
        }
        self.prop_row(fx, &key);
        self.prop_outcome(&key, false)
    }

    /// Registers a prop, or changes its name, notes or profile.
    pub(crate) fn register_prop(
        &mut self,
        fx: &mut Effects,
        ty: &str,
        id: &str,
        req: SkabenRegister,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        let id = skaben::validate_device_id(id).map_err(|e| invalid("id", e.to_string()))?;
        if !self.types.contains_key(ty) {
            return Err(CoreError::NotFound(format!(
                "no device type {ty:?}; add it with PUT /api/types/{ty}"
            )));
        }
        let key = key(ty, &id);
        let created = !self.devices.contains_key(&key);
        let dev = self.devices.entry(key.clone()).or_insert_with(|| {
            Device::new(ty, &id, fx.now, DeviceState::Prop(PropState::default()))
        });
        let DeviceState::Prop(prop) = &mut dev.state else {
            return Err(prop_not_found(&key));
        };
        if let Some(p) = req.profile {
            prop.profile = p;
        }
        let profile = prop.profile;
        let event = dev.operator_update(created, req.name, req.notes, |name, notes| {
            Registration::PropByOperator {
                name,
                notes,
                profile,
            }
        });
        fx.device_event(&key, actor, event);
        self.prop_row(fx, &key);
        self.prop_outcome(&key, created)
    }

    /// Creates or changes a type. A changed type config is broadcast to `<type>/all/cup` when
    /// the type is active.
    pub(crate) fn put_type(
        &mut self,
        fx: &mut Effects,
        name: &str,
        upd: TypeUpdate,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        let now = fx.now;
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
        let created = !self.types.contains_key(&name);
        let mut def = match self.types.get(&name) {
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
        if let Some(m) = upd.max_payload_bytes {
            if let Some(n) = m
                && !(64..=crate::gateway::broker::MAX_PACKET_SIZE as u32).contains(&n)
            {
                return Err(invalid(
                    "max_payload_bytes",
                    format!(
                        "must be 64 to {} bytes (the broker's packet limit), or null for the server's setting",
                        crate::gateway::broker::MAX_PACKET_SIZE
                    ),
                ));
            }
            def.max_payload_bytes = m;
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
        // Valid: apply.
        let all = key(&name, "all");
        fx.device_event(
            &all,
            actor,
            if created {
                Event::TypeCreated {
                    def: def.clone(),
                    config_changed,
                }
            } else {
                Event::TypeChanged {
                    def: def.clone(),
                    config_changed,
                }
            },
        );
        fx.writes.push(Write::DeviceType(type_record(&def)));
        self.types.insert(name.clone(), entry);
        if config_changed && !created && def.active {
            self.push_type_config(fx, &name, "type config changed", SERVER);
        }
        Ok(Outcome::Type {
            view: self
                .type_snapshot(&name)
                .ok_or_else(|| type_not_found(&name))?,
            created,
        })
    }

    /// The game's push of a type's config (a level or counter change): the config replaced
    /// when it differs (checked like an operator's), then broadcast either way.
    pub(crate) fn game_type_config(
        &mut self,
        fx: &mut Effects,
        name: &str,
        config: Value,
        actor: &str,
    ) -> Result<(), CoreError> {
        let t = self.types.get(name).ok_or_else(|| type_not_found(name))?;
        check_meta(&config)?;
        if t.def.kind == TypeKind::Smart && !config.is_object() {
            return Err(invalid(
                "config",
                "a smart type's config must be a JSON object",
            ));
        }
        t.check(&config).map_err(|e| invalid("config", e))?;
        let hash = skaben::config_hash(&config);
        if hash != t.def.config_hash {
            let mut def = t.def.clone();
            def.config = config;
            def.config_hash = hash;
            def.config_version += 1;
            def.updated_at = fx.now;
            let entry = TypeEntry::new(def.clone()).map_err(|e| invalid("schema", e))?;
            fx.device_event(
                &key(name, "all"),
                actor,
                Event::TypeChanged {
                    def: def.clone(),
                    config_changed: true,
                },
            );
            fx.writes.push(Write::DeviceType(type_record(&def)));
            self.types.insert(name.to_string(), entry);
        }
        self.push_type_config(fx, name, "game", actor);
        Ok(())
    }

    /// Broadcasts the type config to `<type>/all/cup`.
    pub(crate) fn push_type(
        &mut self,
        fx: &mut Effects,
        name: &str,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        if !self.types.contains_key(name) {
            return Err(type_not_found(name));
        }
        self.push_type_config(fx, name, "operator push", actor);
        Ok(Outcome::Type {
            view: self
                .type_snapshot(name)
                .ok_or_else(|| type_not_found(name))?,
            created: false,
        })
    }

    /// The broadcast of a type's config; the type's props that follow the type config now
    /// wait for its confirmation.
    fn push_type_config(&mut self, fx: &mut Effects, name: &str, reason: &str, actor: &str) {
        let Some(cup) = self.broadcast_type(fx, name) else {
            return;
        };
        fx.device_event(&key(name, "all"), actor, cup_event(&cup, reason));
        let task_id = cup.task_id;
        let Some(def) = self.types.get(name).map(|t| &t.def) else {
            return;
        };
        let mut keys: Vec<&String> = self
            .devices
            .iter()
            .filter(|(_, d)| d.kind == name && d.prop().is_some_and(|p| p.own.is_none()))
            .map(|(k, _)| k)
            .collect();
        keys.sort();
        let keys: Vec<String> = keys.into_iter().cloned().collect();
        for key in keys {
            let Some(dev) = self.devices.get_mut(&key) else {
                continue;
            };
            let DeviceState::Prop(prop) = &mut dev.state else {
                continue;
            };
            if prop.delivery.holds(def.config_version, &def.config_hash) {
                continue;
            }
            prop.delivery.pending = Some(Push {
                version: def.config_version,
                hash: def.config_hash.clone(),
                task_ids: vec![task_id.clone()],
                overwrite: true,
                first_sent_at: fx.now,
                last_sent_at: fx.now,
                attempts: 1,
                state: PushState::Pending,
                reason: "type push".into(),
            });
            fx.device_row(dev, Some(def));
        }
    }
}
