//! The state of the core and what a change produces.
//!
//! [`State`] is everything the rules read and change: the devices, the SKABEN types, the rate
//! limits, the push task counter. A change is a function over `&mut State` and `&mut Effects`
//! (see [`crate::core::Hub::change`]): it validates first, then mutates, and collects here
//! what must happen because of it — rows to write, events to record, packets to publish,
//! counters to bump. Nothing in this module does I/O: the hub submits the effects, or a dry
//! run returns them.

use std::collections::HashMap;

use super::acon::Holder;
use super::device::{Device, DeviceState};
use super::event::{Event, RecordedEvent};
use super::skaben::{DeviceType, TypeEntry};
use super::{Command, CoreConfig, CoreError, Outcome};
use crate::bus::Qos;
use crate::store::Write;

/// One packet to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: String,
    pub qos: Qos,
}

/// Counter increments of one change (added to [`super::Stats`] when it is submitted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub acon_messages: u64,
    pub acon_malformed: u64,
    pub acon_rejected: u64,
    pub acon_id_conflicts: u64,
    pub acon_peer_refused: u64,
    pub acon_registrations_capped: u64,
    pub skaben_packets: u64,
    pub skaben_malformed: u64,
    pub skaben_rejected: u64,
    pub skaben_cups_sent: u64,
    pub mqtt_refused_logins: u64,
    pub mqtt_refused_publishes: u64,
    pub mqtt_refused_subscribes: u64,
    pub skaben_too_large: u64,
    pub skaben_rate_limited: u64,
    pub acon_rate_limited: u64,
    pub rule_firings: u64,
    pub rule_chains_stopped: u64,
    pub rule_firings_skipped: u64,
}

/// What one change makes happen, collected while it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    /// The time of the change (Unix ms).
    pub now: i64,
    /// Events, in the order they happened.
    pub events: Vec<RecordedEvent>,
    /// Device, type and message rows.
    pub writes: Vec<Write>,
    /// Packets to devices.
    pub publishes: Vec<Publish>,
    pub counts: Counts,
    /// MQTT sessions to disconnect, by the identity they logged in as (a credential's
    /// subject key): its credential was revoked or rotated.
    pub disconnects: Vec<String>,
    /// The rule firing these effects belong to: every event recorded carries it.
    pub cause: Option<super::event::Cause>,
    /// Webhook calls to hand to the sender once the unit is submitted (never awaited).
    pub webhooks: Vec<crate::gateway::webhook::WebhookCall>,
    /// The caller waits for the commit (`true`), or nobody does and the store may hold the
    /// unit a moment to commit it with others (`false`: records of packets that need no
    /// acknowledgement once durable).
    pub wait: bool,
}

impl Effects {
    pub fn new(now: i64) -> Effects {
        Effects {
            now,
            events: Vec::new(),
            writes: Vec::with_capacity(2),
            publishes: Vec::new(),
            counts: Counts::default(),
            disconnects: Vec::new(),
            cause: None,
            webhooks: Vec::new(),
            wait: true,
        }
    }

    /// Records an event about `device` (or about nothing in particular).
    pub fn event(&mut self, device: Option<String>, actor: &str, event: Event) {
        self.events.push(RecordedEvent {
            at: self.now,
            device,
            actor: actor.to_string(),
            event,
            cause: self.cause.clone(),
        });
    }

    /// Records an event about `device`.
    pub fn device_event(&mut self, device: &str, actor: &str, event: Event) {
        self.event(Some(device.to_string()), actor, event);
    }

    pub fn push_event(&mut self, e: Option<RecordedEvent>) {
        self.events.extend(e);
    }

    /// Writes the device row.
    pub fn device_row(&mut self, dev: &Device, ty: Option<&DeviceType>) {
        self.writes.push(Write::Device(dev.record(ty)));
    }

    pub fn publish(&mut self, topic: String, payload: String, qos: Qos) {
        self.publishes.push(Publish {
            topic,
            payload,
            qos,
        });
    }
}

/// At most one `rejected` event per unknown device in this time (ms).
pub const REJECTED_EVENT_EVERY_MS: i64 = 60_000;

/// Unknown devices remembered for [`REJECTED_EVENT_EVERY_MS`]; past this, the memory restarts.
const REJECTED_TRACKED: usize = 10_000;

/// Everything the rules read and change. `Clone` for dry runs.
#[derive(Clone)]
pub struct State {
    pub(crate) cfg: CoreConfig,
    /// Every device by key (`<kind>/<id>`).
    pub(crate) devices: HashMap<String, Device>,
    /// SKABEN device types by name.
    pub(crate) types: HashMap<String, TypeEntry>,
    /// Refusals lately, for events at most once a minute: key (an unknown device's key, or a
    /// guard's key: `acon/<id>#<guard>`, `#registrations`) → (time of the last event,
    /// refusals since).
    rejected: HashMap<String, (i64, u64)>,
    /// Which connection holds each board (`acon/<id>`), from its first accepted frame until
    /// it closes. Not stored: connections do not survive a restart.
    pub(crate) acon_holders: HashMap<String, Holder>,
    /// New-board registrations in the current minute: (start of the minute, count).
    pub(crate) registrations: (i64, u32),
    /// Per type: when `<type>/all/cup` was last broadcast in answer to a request from `all`,
    /// and whether another request wants one.
    pub(crate) broadcasts: HashMap<String, (i64, bool)>,
    /// Next push task id (starts at the start-up time in ms, so ids never repeat across runs).
    pub(crate) next_task: u64,
    /// MQTT credentials by username.
    pub(crate) credentials: HashMap<String, super::access::Credential>,
    /// Per device: the token bucket of its packet/message rate.
    buckets: HashMap<String, Bucket>,
    /// The game: rule set, level, counter, variables, timers, runs.
    pub(crate) game: super::game::Game,
    /// Console accounts, API tokens, sessions.
    pub(crate) accounts: super::accounts::Accounts,
}

/// A token bucket: `tokens` left at time `at` (ms).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: i64,
}

/// A device may send this many seconds' worth of its rate at once.
const BURST_SECS: f64 = 2.0;
/// ...and at least this many packets at once.
const MIN_BURST: f64 = 10.0;
/// Devices tracked for their rate before the memory restarts (every bucket full again).
const BUCKETS_TRACKED: usize = 200_000;

impl State {
    pub fn new(cfg: CoreConfig, now: i64) -> State {
        State {
            cfg,
            devices: HashMap::new(),
            types: HashMap::new(),
            rejected: HashMap::new(),
            acon_holders: HashMap::new(),
            registrations: (now, 0),
            broadcasts: HashMap::new(),
            next_task: u64::try_from(now).unwrap_or(1),
            credentials: HashMap::new(),
            buckets: HashMap::new(),
            game: super::game::Game::empty(now),
            accounts: super::accounts::Accounts::default(),
        }
    }

    pub fn device(&self, key: &str) -> Option<&Device> {
        self.devices.get(key)
    }

    /// Runs a typed command.
    pub fn execute(
        &mut self,
        cmd: Command,
        actor: &str,
        fx: &mut Effects,
    ) -> Result<Outcome, CoreError> {
        match cmd {
            Command::RegisterBoard { id, req } => self.register_board(fx, &id, req, actor),
            Command::Engage { id, cell, req } => self.engage(fx, &id, cell, req, actor),
            Command::Release { id, cell } => self.release(fx, &id, cell, actor),
            Command::Reset { id } => self.reset(fx, &id, actor),
            Command::Block { id, blocked } => self.block(fx, &id, blocked, actor),
            Command::AcceptNetwork { id, network } => self.accept_network(fx, &id, network, actor),
            Command::RegisterProp { ty, id, req } => self.register_prop(fx, &ty, &id, req, actor),
            Command::SetConfig { ty, id, edit } => self.set_config(fx, &ty, &id, edit, actor),
            Command::PushDevice { ty, id } => self.push_device(fx, &ty, &id, actor),
            Command::PutType { name, update } => self.put_type(fx, &name, update, actor),
            Command::PushType { name } => self.push_type(fx, &name, actor),
            Command::IssueCredential {
                subject,
                username,
                hash,
            } => self.issue_credential(fx, subject, username, hash, actor),
            Command::RevokeCredential { subject } => self.revoke_credential(fx, subject, actor),
        }
    }

    /// Whether a `rejected` event for `key` is due (at most one per
    /// [`REJECTED_EVENT_EVERY_MS`]): `Some(refusals since the last one)`, or `None` when the
    /// refusal is only counted.
    pub(crate) fn rejected_event_due(&mut self, key: &str, now: i64) -> Option<u64> {
        match self.rejected.get_mut(key) {
            Some((last, refused)) if now - *last < REJECTED_EVENT_EVERY_MS => {
                *refused += 1;
                None
            }
            Some((last, refused)) => {
                *last = now;
                Some(std::mem::take(refused))
            }
            None => {
                if self.rejected.len() >= REJECTED_TRACKED {
                    self.rejected.clear();
                }
                self.rejected.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    /// Takes one packet from `key`'s rate of `per_sec` (0: no limit); `false` when the device
    /// is over it. A device may send `max(per_sec × 2 s, 10)` at once, then `per_sec`.
    pub(crate) fn take_token(&mut self, key: &str, per_sec: f64, now: i64) -> bool {
        if per_sec <= 0.0 {
            return true;
        }
        let burst = (per_sec * BURST_SECS).max(MIN_BURST);
        if self.buckets.len() >= BUCKETS_TRACKED && !self.buckets.contains_key(key) {
            self.buckets.clear();
        }
        let b = self.buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = (now - b.at).max(0) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * per_sec).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A device's packet refused by a limit (`what`: `rate`, `size`): the event at most once a
    /// minute per device and limit, with the refusals since the last one.
    pub(crate) fn limited(&mut self, fx: &mut Effects, key: &str, what: &str, mut event: Event) {
        let Some(since) = self.rejected_event_due(&format!("{what}:{key}"), fx.now) else {
            return;
        };
        match &mut event {
            Event::RateLimited {
                refused_since_last_event,
                ..
            }
            | Event::PayloadTooLarge {
                refused_since_last_event,
                ..
            } => *refused_since_last_event = since,
            _ => {}
        }
        fx.device_event(key, super::event::SERVER, event);
    }

    /// The silence after which a device is offline: a board's presence timeout, a prop's
    /// type keep-alive (else the server's).
    fn timeout_ms(cfg: &CoreConfig, types: &HashMap<String, TypeEntry>, dev: &Device) -> i64 {
        match &dev.state {
            DeviceState::Board(_) => cfg.presence_timeout_ms,
            DeviceState::Prop(_) => types.get(&dev.kind).map_or(cfg.skaben_keepalive_ms, |t| {
                t.keepalive_ms(cfg.skaben_keepalive_ms)
            }),
        }
    }

    /// Marks silent devices offline, one event and row each. Returns how many changed.
    pub fn sweep_presence(&mut self, fx: &mut Effects) -> usize {
        let now = fx.now;
        let (cfg, types) = (&self.cfg, &self.types);
        let mut changed = 0;
        for dev in self.devices.values_mut() {
            if !dev.presence.online {
                continue;
            }
            if let Some(e) = dev.sweep(now, Self::timeout_ms(cfg, types, dev)) {
                fx.events.push(e);
                fx.device_row(dev, types.get(&dev.kind).map(|t| &t.def));
                changed += 1;
            }
        }
        changed
    }
}
