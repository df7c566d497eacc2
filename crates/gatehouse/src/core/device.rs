//! The device model: one [`Device`] for every protocol — a key, an identity, a presence and a
//! protocol state ([`DeviceState`]: a board's or a prop's) — with one way to store and load it
//! and one set of presence rules.
//!
//! Invariants:
//! - A device's key is `<kind>/<id>`: `acon/<id>` for a board, `<type>/<id>` for a prop.
//! - Presence uses the server's clock only: seen on every message or packet (a malformed one
//!   too), offline once silent for its timeout (a board: `--presence-timeout`; a prop: its
//!   type's keep-alive, else the server's), and every change of `online` is an event.

use serde::Serialize;

use super::acon::BoardState;
use super::event::{Event, RecordedEvent, SERVER};
use super::skaben::{DeviceType, PropState};
use crate::store::{DeviceRecord, LoadedDevice, StoreError};

/// Who a device is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    pub name: String,
    pub notes: String,
    /// Unix ms: registered (first message, first packet, or an operator).
    pub first_seen: i64,
}

impl Identity {
    /// An operator's change: the fields given replace the old ones.
    pub fn update(&mut self, name: Option<String>, notes: Option<String>) {
        if let Some(name) = name {
            self.name = name;
        }
        if let Some(notes) = notes {
            self.notes = notes;
        }
    }
}

/// Whether a device is heard from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Presence {
    pub last_seen: Option<i64>,
    pub online: bool,
    pub changed_at: i64,
}

/// What a device's protocol keeps: desired config and reported state.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceState {
    /// An ACon lock board.
    Board(BoardState),
    /// A SKABEN prop.
    Prop(PropState),
}

impl DeviceState {
    pub fn protocol(&self) -> &'static str {
        match self {
            DeviceState::Board(_) => "acon",
            DeviceState::Prop(_) => "skaben",
        }
    }
}

/// A device in the core's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// `acon` for a board, the device type for a prop.
    pub kind: String,
    pub id: String,
    pub identity: Identity,
    pub presence: Presence,
    pub state: DeviceState,
}

impl Device {
    /// A device seen for the first time (or registered by an operator) at `now`, offline until
    /// it is heard from.
    pub fn new(kind: &str, id: &str, now: i64, state: DeviceState) -> Device {
        Device {
            kind: kind.to_string(),
            id: id.to_string(),
            identity: Identity {
                first_seen: now,
                ..Identity::default()
            },
            presence: Presence {
                last_seen: None,
                online: false,
                changed_at: now,
            },
            state,
        }
    }

    pub fn key(&self) -> String {
        key(&self.kind, &self.id)
    }

    pub fn board(&self) -> Option<&BoardState> {
        match &self.state {
            DeviceState::Board(b) => Some(b),
            DeviceState::Prop(_) => None,
        }
    }

    pub fn prop(&self) -> Option<&PropState> {
        match &self.state {
            DeviceState::Prop(p) => Some(p),
            DeviceState::Board(_) => None,
        }
    }

    /// The device was heard from: last seen now, and online if it was not (the event
    /// returned says why).
    pub fn seen(&mut self, now: i64, reason: &str, command: Option<&str>) -> Option<RecordedEvent> {
        self.presence.last_seen = Some(now);
        if self.presence.online {
            return None;
        }
        let event = Event::Online {
            reason: reason.to_string(),
            command: command.map(str::to_string),
        };
        Some(self.set_online(true, now, event))
    }

    /// Offline if silent for `timeout_ms`: the event, or `None` when nothing changes.
    pub fn sweep(&mut self, now: i64, timeout_ms: i64) -> Option<RecordedEvent> {
        let silent_since = self.presence.last_seen.unwrap_or(self.identity.first_seen);
        if !self.presence.online || now - silent_since < timeout_ms {
            return None;
        }
        let event = Event::Offline {
            reason: "silent".into(),
            last_seen: self.presence.last_seen.map(crate::clock::rfc3339),
            timeout_ms,
        };
        Some(self.set_online(false, now, event))
    }

    /// A presence change, and its event (the server's).
    fn set_online(&mut self, online: bool, now: i64, event: Event) -> RecordedEvent {
        self.presence.online = online;
        self.presence.changed_at = now;
        RecordedEvent {
            at: now,
            device: Some(self.key()),
            actor: SERVER.into(),
            event,
            cause: None,
        }
    }

    /// An operator's registration (`created`) or change of the identity: the fields given
    /// replace the old ones; the event carries the result and the protocol's `details`.
    pub fn operator_update(
        &mut self,
        created: bool,
        name: Option<String>,
        notes: Option<String>,
        details: impl FnOnce(String, String) -> super::event::Registration,
    ) -> Event {
        self.identity.update(name, notes);
        let r = details(self.identity.name.clone(), self.identity.notes.clone());
        Event::registration(created, r)
    }

    /// The row for the `devices` table. A prop that inherits its type's config stores the
    /// type's version as its desired version (`ty`: its type, if it still exists).
    pub fn record(&self, ty: Option<&DeviceType>) -> DeviceRecord {
        let (desired_version, desired, reported) = match &self.state {
            DeviceState::Board(b) => (b.desired_version, to_json(&b.desired), to_json(&b.reported)),
            DeviceState::Prop(p) => (p.desired_version(ty), p.desired_json(), p.reported_json()),
        };
        DeviceRecord {
            kind: self.kind.clone(),
            id: self.id.clone(),
            protocol: self.state.protocol().into(),
            name: self.identity.name.clone(),
            notes: self.identity.notes.clone(),
            first_seen: self.identity.first_seen,
            last_seen: self.presence.last_seen,
            online: self.presence.online,
            presence_changed_at: self.presence.changed_at,
            desired_version,
            desired,
            reported,
        }
    }

    /// A stored row (and its newest message, which carries the latest report and last-seen
    /// time) back into a device.
    pub fn load(loaded: LoadedDevice) -> Result<Device, StoreError> {
        let r = loaded.record;
        let key = key(&r.kind, &r.id);
        let corrupt =
            |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("{what} of {key}: {e}"));
        let last_at = loaded.last_message.as_ref().map(|m| m.at);
        let state = match r.protocol.as_str() {
            "acon" => {
                let desired =
                    serde_json::from_str(&r.desired).map_err(|e| corrupt("desired config", e))?;
                let mut reported: super::acon::Reported =
                    serde_json::from_str(&r.reported).map_err(|e| corrupt("reported state", e))?;
                if let Some(m) = loaded.last_message {
                    reported.message = Some(
                        serde_json::from_str(&m.parsed)
                            .map_err(|e| corrupt("latest message", e))?,
                    );
                    reported.peer = Some(m.peer);
                }
                DeviceState::Board(BoardState {
                    desired,
                    desired_version: r.desired_version,
                    reported,
                })
            }
            "skaben" => DeviceState::Prop(
                PropState::from_json(&r.desired, &r.reported)
                    .map_err(|(what, e)| corrupt(what, e))?,
            ),
            other => {
                return Err(StoreError::Corrupt(format!(
                    "device {key} has an unknown protocol {other:?}"
                )));
            }
        };
        Ok(Device {
            kind: r.kind,
            id: r.id,
            identity: Identity {
                name: r.name,
                notes: r.notes,
                first_seen: r.first_seen,
            },
            presence: Presence {
                last_seen: r.last_seen.max(last_at),
                online: r.online,
                changed_at: r.presence_changed_at,
            },
            state,
        })
    }

    /// What every device shows, whatever its protocol.
    pub fn view(&self) -> DeviceView {
        DeviceView {
            kind: self.kind.clone(),
            id: self.id.clone(),
            protocol: self.state.protocol(),
            name: self.identity.name.clone(),
            notes: self.identity.notes.clone(),
            first_seen: self.identity.first_seen,
            last_seen: self.presence.last_seen,
            online: self.presence.online,
            presence_changed_at: self.presence.changed_at,
        }
    }

    /// What every device shows in a list.
    pub fn summary(&self) -> DeviceSummary {
        DeviceSummary {
            device: self.view(),
            blocked: self.board().is_some_and(|b| b.desired.blocked),
            sync: None,
        }
    }
}

/// `<kind>/<id>`.
pub fn key(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> String {
    // Our own types serialise infallibly (string or integer map keys only).
    serde_json::to_string(v)
        .unwrap_or_else(|e| serde_json::json!({"serialization_error": e.to_string()}).to_string())
}

/// What all devices share, in every snapshot of one (`http` renders it).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    pub kind: String,
    pub id: String,
    /// `acon` or `skaben`.
    pub protocol: &'static str,
    pub name: String,
    pub notes: String,
    pub first_seen: i64,
    pub last_seen: Option<i64>,
    pub online: bool,
    pub presence_changed_at: i64,
}

/// A device in a list.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSummary {
    pub device: DeviceView,
    /// A board whose keypad is blocked (props: always false).
    pub blocked: bool,
    /// A prop's config: `in_sync` (it holds its desired config), `pending` (a push waits for
    /// its confirmation), `failed` (the device refused the push), `out_of_sync` (nothing is
    /// on its way). `None` for a board.
    pub sync: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_goes_online_once_and_offline_after_the_timeout() {
        let mut d = Device::new("acon", "1", 0, DeviceState::Board(BoardState::default()));
        assert!(
            d.sweep(10_000, 100).is_none(),
            "never online: nothing to change"
        );
        let e = d.seen(5, "message received", None).expect("came online");
        assert_eq!(e.event.kind(), "online");
        assert!(d.seen(6, "message received", None).is_none());
        assert!(d.sweep(105, 100).is_none());
        let e = d.sweep(106, 100).expect("went offline");
        assert_eq!(e.event.kind(), "offline");
        assert_eq!((d.presence.online, d.presence.changed_at), (false, 106));
    }
}
