//! Every event gatehouse records, for both protocols: the one list of what can happen.
//!
//! An [`Event`] is what happened; a [`RecordedEvent`] adds when, to which device and who caused
//! it. The store keeps each in the `events` table: `kind` is the serde tag, `data` the rest of the
//! fields as a JSON object (so rows written before this enum existed read the same way).
//! Recorded events are also delivered, once their unit is committed, to in-process subscribers
//! ([`crate::core::Hub::subscribe`]): the scenario engine and the console's live stream.
//!
//! `device` is `<kind>/<id>` (`acon/1953`, `lock/b827eb0a1b2c`), or `<type>/all` for what
//! concerns a whole SKABEN type. `actor` is `device`, `server`, or the operator's name (`admin`).

use serde::Serialize;
use serde_json::Value;

use super::skaben::DeviceType;
use crate::cidr::Net;
use crate::store::EventRecord;

/// Who caused an event that no operator asked for.
pub const DEVICE: &str = "device";
/// The server itself (timers, presence, pushes it decided on).
pub const SERVER: &str = "server";

/// A version change of a device's desired config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VersionChange {
    pub from: i64,
    pub to: i64,
}

/// The most of an INFO's datahold an event keeps, bytes of JSON.
pub const INFO_KEPT: usize = 2048;

impl Event {
    /// An INFO event of `datahold`, kept whole up to [`INFO_KEPT`] bytes of JSON, else as an
    /// excerpt (the events table must not grow with whatever a device sends).
    pub fn info(datahold: Option<&Value>) -> Event {
        let Some(v) = datahold else {
            return Event::Info {
                datahold: Value::Null,
                truncated_from: None,
            };
        };
        let text = v.to_string();
        if text.len() <= INFO_KEPT {
            return Event::Info {
                datahold: v.clone(),
                truncated_from: None,
            };
        }
        Event::Info {
            datahold: Value::String(super::clip_text(&text, INFO_KEPT)),
            truncated_from: Some(text.len()),
        }
    }
}

/// What caused an event a rule's action made: the rule, the firing (its `rule_fired` event
/// carries the same id and the trigger), and the firing's depth in its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Cause {
    pub rule: String,
    pub firing: u64,
    pub depth: u32,
}

/// What happened. Field names are the stored `data` keys; optional fields are left out when
/// they do not apply (a board has a peer, a prop a topic).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    // ---- both protocols: identity and presence ----
    /// A device was registered: on its first message/packet (`peer` or `topic` + `type`) or
    /// by an operator (`name`, `notes`, and a board's `size` or a prop's `profile`).
    Registered(Registration),
    /// An operator changed a device's name, notes, size or profile.
    DeviceUpdated(Registration),
    /// The device was heard from after being offline (or for the first time).
    Online {
        reason: String,
        /// The SKABEN command that brought it back.
        #[serde(skip_serializing_if = "Option::is_none")]
        command: Option<String>,
    },
    /// The device was silent for longer than its timeout.
    Offline {
        reason: String,
        /// RFC 3339.
        last_seen: Option<String>,
        timeout_ms: i64,
    },
    /// An unknown device (or a device of an unknown SKABEN type) was refused; at most one
    /// event per device per minute, with the refusals since the last one.
    Rejected {
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        send: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        refused_since_last_event: u64,
    },
    /// A frame or packet that could not be read: why, and the raw bytes (cut to 2 KiB).
    Malformed {
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        raw: String,
        raw_len: usize,
        truncated: bool,
    },

    // ---- ACon boards: what a status message showed ----
    /// The board reported a reboot (`RESET=1` that is not a retry).
    Rebooted {
        send: u64,
    },
    /// A requested reset happened.
    ResetDone {
        send: u64,
    },
    /// A cell was opened (edge: it was not in the previous `BOX_ACC`).
    CellOpened {
        cell: u32,
        code: Option<String>,
    },
    /// A single-use assignment ended with its opening.
    AssignmentEnded {
        cell: u32,
        code: String,
        reason: String,
    },
    /// The board reported a cell timed out (`BOX_TO`).
    CellTimedOut {
        cell: u32,
    },
    ShortCircuit {
        send: u64,
    },
    WrongCode {
        send: u64,
    },
    LockConnected {
        cell: usize,
    },
    LockDisconnected {
        cell: usize,
    },
    /// The lock self-test matrix changed size: `[cols, rows]`.
    MatrixChanged {
        from: [u16; 2],
        to: [u16; 2],
    },
    /// An assignment ran out on the server's clock.
    AssignmentExpired {
        cell: u32,
        code: String,
        /// RFC 3339.
        expires_at: String,
    },

    // ---- ACon boards: the connection guards (docs/acon.md, "Guards") ----
    /// A frame was refused because of who holds its board: another connection, from another
    /// address, holds it (`holder_peer`), or the frame's connection already holds another
    /// board (`holds`). The frame is not recorded as the board's message and not answered; its
    /// connection is closed. At most one event per board per minute, with the refusals since
    /// the last one (every refusal is counted in `/api/stats`).
    IdConflict {
        reason: String,
        /// The refused connection's peer.
        peer: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        holder_peer: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        holds: Option<String>,
        send: u64,
        refused_since_last_event: u64,
    },
    /// A newer connection from the same IP address took a board over (a board that rebooted
    /// and reconnected); the older connection was closed. At most one event per board per
    /// minute, with the takeovers since the last one.
    ConnectionReplaced {
        peer: String,
        old_peer: String,
        replaced_since_last_event: u64,
    },
    /// A known board was seen from a network (its /24 or /64) it had not used; the network
    /// was added to its known networks (`known`: the ones before).
    NewPeerNetwork {
        network: Net,
        peer: String,
        known: Vec<Net>,
    },
    /// `--acon-pin-peers`: a known board's frame came from a network it has not used. Not
    /// recorded as its message, not answered, the connection closed; the network is kept as
    /// the board's pending network for an operator to accept. At most one event per board per
    /// minute, with the refusals since the last one.
    PeerNetworkRefused {
        network: Net,
        peer: String,
        send: u64,
        refused_since_last_event: u64,
    },
    /// An operator accepted a network for a board (`pending_cleared`: it covered the board's
    /// pending network).
    PeerNetworkAccepted {
        network: Net,
        pending_cleared: bool,
    },
    /// A new board's first frame was refused: `--acon-max-new-boards-per-min` boards were
    /// registered in the current minute already. Not about one device; at most one event per
    /// minute, naming the first board refused, with the refusals since the last event.
    RegistrationsCapped {
        limit_per_minute: u32,
        id: String,
        peer: String,
        refused_since_last_event: u64,
    },

    /// A retention pass removed old rows (`--retain-messages-days`, `--retain-events-days`,
    /// `--max-db-mb`): at most one event per pass, server actor, about no device. Recorded by
    /// the store's writer directly, so not delivered to [`crate::core::Hub::subscribe`].
    RetentionPruned {
        messages: u64,
        events: u64,
        /// RFC 3339: the `at` of the oldest and the newest row removed.
        oldest_removed: Option<String>,
        newest_removed: Option<String>,
        /// `age`, `size` or `age and size`.
        reason: String,
    },

    // ---- ACon boards: operator changes (each bumps the desired version) ----
    CellEngaged {
        cell: u32,
        code: String,
        /// RFC 3339.
        expires_at: String,
        single_use: bool,
        version: VersionChange,
    },
    CellReleased {
        cell: u32,
        code: String,
        version: VersionChange,
    },
    ResetRequested {
        version: VersionChange,
    },
    Blocked {
        version: VersionChange,
    },
    Unblocked {
        version: VersionChange,
    },

    // ---- SKABEN props ----
    /// A PING went out to a type.
    Ping {
        topic: String,
        payload: String,
    },
    /// A CUP went out that answers no packet (operator push, type change, reconnect, coalesced
    /// broadcast). CUPs in answer to a packet are in the packet's message row.
    Cup {
        topic: String,
        payload: String,
        reason: String,
    },
    /// A device's own config got a new version: by an operator (`put`/`patch`, with the
    /// `body`) or by the device (`sup`, with the `keys` it reported).
    ConfigChanged {
        old_version: i64,
        new_version: i64,
        hash: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        keys: Option<Value>,
        via: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<Value>,
    },
    /// The device proved it holds a config version: `by` `ack`, `hash`, `sup` or `ping`.
    ConfigConfirmed {
        version: i64,
        hash: String,
        by: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        command: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
    },
    /// A NACK: the device refused a push (`matched`: it named the tracked push).
    PushFailed {
        task_id: Option<String>,
        matched: bool,
        datahold: Option<Value>,
        raw: String,
    },
    /// An ACK that names no tracked push and carries no matching hash.
    AckUnmatched {
        task_id: Option<String>,
        hash: Option<String>,
    },
    /// An INFO packet (`device` may be `<type>/all`).
    Info {
        /// The packet's datahold; past [`INFO_KEPT`] bytes of JSON, a string holding the start
        /// of it (and `truncated_from` says how long it was).
        datahold: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        truncated_from: Option<usize>,
    },
    /// A SUP the server refused (not an object, or its result breaks the type's schema).
    SupRejected {
        reason: String,
        raw: String,
    },
    /// A packet from `<type>/all` that names no device to apply it to.
    Ignored {
        reason: String,
    },
    TypeCreated {
        #[serde(rename = "type")]
        def: DeviceType,
        config_changed: bool,
    },
    TypeChanged {
        #[serde(rename = "type")]
        def: DeviceType,
        config_changed: bool,
    },

    // ---- limits ----
    /// A device's packets (a board's messages) were refused: it sent faster than its rate
    /// (`--skaben-max-packets-per-sec`, `--acon-max-messages-per-sec`). At most one event per
    /// device per minute, with the refusals since the last one. Refused packets are not
    /// recorded; a board's connection is closed.
    RateLimited {
        /// The SKABEN command refused (none for a board).
        #[serde(skip_serializing_if = "Option::is_none")]
        command: Option<String>,
        limit_per_sec: f64,
        refused_since_last_event: u64,
    },
    /// A SKABEN packet larger than its type's payload limit was refused unrecorded. At most
    /// one event per device per minute, with the refusals since the last one.
    PayloadTooLarge {
        command: String,
        bytes: usize,
        limit: usize,
        refused_since_last_event: u64,
    },

    // ---- who may talk to the broker ----
    /// An MQTT credential was issued (`rotated`: it replaced the subject's previous one,
    /// whose sessions were disconnected). The secret is never in an event.
    CredentialIssued {
        username: String,
        /// `device:<type>/<id>`, `type:<type>` or `observer:<name>`.
        subject: String,
        /// Generated by the server (else chosen by the operator).
        generated: bool,
        rotated: bool,
    },
    /// An MQTT credential was revoked; its sessions were disconnected.
    CredentialRevoked {
        username: String,
        subject: String,
    },
    // ---- the console: accounts, tokens, sessions (the actor is who did it) ----
    /// A console account was added.
    UserAdded {
        name: String,
        role: String,
    },
    /// An account's role or password changed (a new password ends its sessions).
    UserChanged {
        name: String,
        role_from: String,
        role_to: String,
        password_changed: bool,
    },
    /// An account was removed; its sessions ended.
    UserRemoved {
        name: String,
        role: String,
    },
    /// An API token was created (its secret is never recorded).
    TokenCreated {
        name: String,
        role: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    /// An API token was revoked.
    TokenRevoked {
        name: String,
    },
    /// Someone logged in to the console (`session` is the id an admin sees).
    LoggedIn {
        user: String,
        session: String,
        addr: String,
    },
    /// A login was refused (`failures`: in a row, for this account or address). While a
    /// login is being backed off, its refusals are counted, not recorded one by one.
    LoginFailed {
        user: String,
        addr: String,
        reason: String,
        failures: u32,
    },
    /// A console session ended: logged out, revoked by an admin, expired, its account's
    /// password changed or the account removed.
    SessionEnded {
        user: String,
        session: String,
        reason: String,
    },
    /// The broker refused an MQTT client something: a login (`connect`), a publish or a
    /// subscription. At most one event per client (per address for logins) per minute, with
    /// the refusals since the last one.
    MqttRefused {
        action: String,
        reason: String,
        client_id: String,
        /// Who it was logged in as (a credential's subject), if anyone.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The topic or filter refused.
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        /// The client's address (logins).
        #[serde(skip_serializing_if = "Option::is_none")]
        addr: Option<String>,
        refused_since: u64,
    },
    /// The embedded broker disconnected a client that did not take the messages sent to it:
    /// its outbound queue passed `limit` (`--mqtt-max-queued-messages` or
    /// `--mqtt-max-queued-bytes`). At most one event per client per minute, with the
    /// disconnections since the last one.
    MqttClientTooSlow {
        client_id: String,
        /// Messages queued for it when it was disconnected.
        queued: usize,
        limit: String,
        closed_since: u64,
    },

    // ---- the game ----
    /// A state variable changed: `name` is `level`, `counter` or a user variable; the state
    /// after the change is `state`.
    StateChanged {
        name: String,
        from: Value,
        to: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        state: super::game::Snapshot,
    },
    /// A rule fired: its trace.
    RuleFired(Box<super::game::engine::Trace>),
    /// A chain of firings reached the depth limit: `rule` did not fire for `trigger`.
    RuleChainStopped {
        rule: String,
        depth: u32,
        limit: u32,
        trigger: Value,
    },
    /// A rule fired more often than its rate allows and is paused until `until` (RFC 3339).
    RulePaused {
        rule: String,
        per_sec: u32,
        until: String,
    },
    /// A rule set was imported (replacing the rules and the state definitions).
    RulesImported {
        rules: usize,
        levels: usize,
        hash: String,
    },
    /// One rule was created, replaced or deleted through the API.
    RuleChanged {
        rule: String,
        change: String,
    },
    TimerStarted {
        name: String,
        secs: u64,
        game_time: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        due_at: Option<String>,
    },
    TimerCancelled {
        name: String,
        reason: String,
    },
    /// A timer fired, `late_ms` after its time (a server that was down fires it at start).
    TimerFired {
        name: String,
        late_ms: i64,
        started_by: String,
    },
    RunStarted {
        run: u64,
        initial: super::game::Snapshot,
    },
    RunPaused {
        run: u64,
        game_ms: i64,
    },
    RunResumed {
        run: u64,
        game_ms: i64,
    },
    RunEnded {
        run: u64,
        game_ms: i64,
    },
    /// The game went back to its initial state (levels, counter, variables, pushes).
    GameReset {
        state: super::game::Snapshot,
    },
    /// A level (or counter) push to a type could not be made.
    GamePushFailed {
        #[serde(rename = "type")]
        device_type: String,
        level: String,
        reason: String,
    },
    /// A webhook call ended (`status` 2xx: delivered).
    WebhookResult {
        name: String,
        url: String,
        attempts: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        elapsed_ms: u64,
    },
}

/// The details of a registration or an identity change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Registration {
    /// A board, on its first message.
    Board { peer: String },
    /// A prop, on its first packet.
    Prop {
        topic: String,
        #[serde(rename = "type")]
        device_type: String,
    },
    /// An operator's registration or change of a board.
    BoardByOperator {
        name: String,
        notes: String,
        size: Option<(u16, u16)>,
    },
    /// An operator's registration or change of a prop.
    PropByOperator {
        name: String,
        notes: String,
        profile: Option<skaben::ClientProfile>,
    },
}

/// An event with its time, device and cause: one row of the event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedEvent {
    /// Unix ms.
    pub at: i64,
    pub device: Option<String>,
    pub actor: String,
    pub event: Event,
    /// The rule firing that caused it (stored as `data.cause`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

/// A recorded event once its unit is committed, as [`crate::core::Hub::subscribe`] delivers
/// it: the event and the seq the store gave it (its row's key in the event log, growing in
/// commit order). Derefs to the [`RecordedEvent`].
#[derive(Debug)]
pub struct CommittedEvent {
    pub seq: i64,
    pub recorded: RecordedEvent,
    /// The stored columns, made once for every reader that needs them.
    stored: std::sync::OnceLock<EventRecord>,
    /// The event as a reader sends it on (the live stream's JSON), made once for every reader.
    wire: std::sync::OnceLock<String>,
}

impl CommittedEvent {
    pub fn new(seq: i64, recorded: RecordedEvent) -> CommittedEvent {
        CommittedEvent {
            seq,
            recorded,
            stored: std::sync::OnceLock::new(),
            wire: std::sync::OnceLock::new(),
        }
    }

    /// The event as the store keeps it (`kind`, `data` as JSON text, …): serialized on the
    /// first call and shared by every later one, so several readers of the stream pay for it
    /// once.
    pub fn stored(&self) -> &EventRecord {
        self.stored.get_or_init(|| self.recorded.record())
    }

    /// The event's text for the wire, made by `make` from its stored columns on the first
    /// call and shared by every later one (50 stream clients serialize it once, not 50 times).
    /// Every caller must pass the same `make`: the first one's text is the one kept.
    pub fn wire(&self, make: impl FnOnce(i64, &EventRecord) -> String) -> &str {
        self.wire.get_or_init(|| make(self.seq, self.stored()))
    }
}

impl std::ops::Deref for CommittedEvent {
    type Target = RecordedEvent;

    fn deref(&self) -> &RecordedEvent {
        &self.recorded
    }
}

impl Event {
    /// `registered` when `created`, else `device_updated`.
    pub fn registration(created: bool, details: Registration) -> Event {
        if created {
            Event::Registered(details)
        } else {
            Event::DeviceUpdated(details)
        }
    }

    /// The stored `kind` (the serde tag).
    pub fn kind(&self) -> String {
        self.split().0
    }

    /// The stored columns: the tag, and the other fields as a JSON object.
    pub(crate) fn split(&self) -> (String, Value) {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => {
                let kind = match m.remove("kind") {
                    Some(Value::String(k)) => k,
                    _ => "unknown".to_string(),
                };
                (kind, Value::Object(m))
            }
            // Every variant is a struct or a struct-like newtype: unreachable in practice, and
            // kept visible if it ever happens.
            Ok(other) => ("unknown".to_string(), other),
            Err(e) => (
                "unknown".to_string(),
                serde_json::json!({"serialization_error": e.to_string()}),
            ),
        }
    }
}

impl RecordedEvent {
    /// The row for the `events` table: `kind` from the tag, `data` the other fields.
    pub fn record(&self) -> EventRecord {
        let (kind, mut data) = self.event.split();
        if let (Some(c), Value::Object(m)) = (&self.cause, &mut data) {
            m.insert(
                "cause".into(),
                serde_json::to_value(c).unwrap_or(Value::Null),
            );
        }
        EventRecord {
            at: self.at,
            device: self.device.clone(),
            kind,
            actor: self.actor.clone(),
            data: data.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(e: Event) -> (String, Value) {
        let r = RecordedEvent {
            at: 1,
            device: Some("acon/1".into()),
            actor: DEVICE.into(),
            event: e,
            cause: None,
        }
        .record();
        (r.kind, serde_json::from_str(&r.data).expect("data is JSON"))
    }

    /// The stored rows keep the shape they had before the enum (existing data reads the same).
    #[test]
    fn events_are_stored_in_the_columns_of_before() {
        let cases = [
            (
                Event::Registered(Registration::Board {
                    peer: "1.2.3.4:5".into(),
                }),
                "registered",
                json!({"peer": "1.2.3.4:5"}),
            ),
            (
                Event::Registered(Registration::Prop {
                    topic: "ask/lock/ab/pong".into(),
                    device_type: "lock".into(),
                }),
                "registered",
                json!({"topic": "ask/lock/ab/pong", "type": "lock"}),
            ),
            (
                Event::CellOpened {
                    cell: 3,
                    code: None,
                },
                "cell_opened",
                json!({"cell": 3, "code": null}),
            ),
            (
                Event::Online {
                    reason: "message received".into(),
                    command: None,
                },
                "online",
                json!({"reason": "message received"}),
            ),
            (
                Event::MatrixChanged {
                    from: [2, 2],
                    to: [4, 4],
                },
                "matrix_changed",
                json!({"from": [2, 2], "to": [4, 4]}),
            ),
            (
                Event::Blocked {
                    version: VersionChange { from: 1, to: 2 },
                },
                "blocked",
                json!({"version": {"from": 1, "to": 2}}),
            ),
            (
                Event::DeviceUpdated(Registration::BoardByOperator {
                    name: "n".into(),
                    notes: String::new(),
                    size: Some((2, 3)),
                }),
                "device_updated",
                json!({"name": "n", "notes": "", "size": [2, 3]}),
            ),
            (
                Event::ConfigConfirmed {
                    version: 2,
                    hash: "h".into(),
                    by: "ack".into(),
                    command: None,
                    task_id: Some("7".into()),
                },
                "config_confirmed",
                json!({"version": 2, "hash": "h", "by": "ack", "task_id": "7"}),
            ),
        ];
        for (event, kind, want) in cases {
            assert_eq!(event.kind(), kind);
            assert_eq!(data(event), (kind.to_string(), want));
        }
    }
}
