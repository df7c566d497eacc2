//! The rules for ACon boards: what a status message changes, which events it causes, and
//! what the board is answered ([`BoardState`], pure: the caller passes the time and persists
//! the result); then a board in the core's [`State`]: registration, presence, the message
//! record, and the operator's changes (engage, release, reset, block).
//!
//! Counting rules (the protocol cannot tell a retry from a repeat, so they are edges):
//! - **Opening**: a cell is counted as opened when it is in `BOX_ACC` and was not in the
//!   `BOX_ACC` of the board's previous message. A retry (SEND+1, same list) is therefore one
//!   opening, and a cell reported in two consecutive messages is one opening.
//! - **Timed out** (`BOX_TO`), **short circuit** (`STATE` 1), **wrong code** (`STATE` 2): an
//!   event when the cell/code appears, not again while it stays.
//! - **Reboot**: `RESET=1`, unless the previous message also had `RESET=1` and this one's SEND
//!   is the previous SEND + 1 (that is a retry of the same report), or this message is the
//!   previous one again (same ID, SEND and content): every copy is recorded, one is counted.
//! - **Lock self-test**: an event per cell whose `ACT_CON` bit changed since the previous
//!   message of the same matrix size.
//!
//! Guards (the protocol has no authentication; docs/acon.md, "Guards"), checked before a frame
//! changes anything:
//! - **Binding**: a connection holds a board from its first accepted frame until it closes.
//!   Another connection's frame for that board is refused (`id_conflict`), unless it comes
//!   from the same IP address on a newer connection: then the newer one takes the board over
//!   and the older is closed (a board that rebooted). A connection that holds a board and
//!   sends another board's ID is refused too.
//! - **Networks**: each board keeps the last [`KNOWN_NETWORKS`] networks (the /24 or /64 of
//!   its peer) it was seen from; a new one is an event, and with `--acon-pin-peers` a refusal
//!   until an operator accepts it (the first network of a board is trusted).
//! - **Registrations**: at most `--acon-max-new-boards-per-min` new boards a minute.

use std::collections::BTreeMap;
use std::net::IpAddr;

use acon::{Answer, Engaged, Message, StateCode};
use serde::{Deserialize, Serialize};

use rand::RngExt as _;

use super::change::{Effects, State};
use super::device::{Device, DeviceState, DeviceView, key, to_json};
use super::event::{DEVICE, Event, Registration, SERVER, VersionChange};
use super::{CoreError, Outcome, UnknownPolicy, invalid};
use crate::cidr::Net;
use crate::store::{MessageRecord, Write};

/// One engaged cell: its code, when it stops working, and whether the first opening ends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub code: String,
    /// Unix milliseconds.
    pub expires_at: i64,
    pub single_use: bool,
    pub assigned_at: i64,
    pub assigned_by: String,
}

impl Assignment {
    /// Whole minutes left, rounded up, at least 1 (the wire's rule). `None` once expired.
    pub fn minutes_left(&self, now: i64) -> Option<u32> {
        let left = self.expires_at - now;
        if left <= 0 {
            return None;
        }
        let minutes = (left + 59_999) / 60_000;
        Some(u32::try_from(minutes).unwrap_or(u32::MAX).max(1))
    }
}

/// What the server wants of the board: the ACon board's desired config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Send `RESET=1` until the board reports it has rebooted.
    pub pending_reset: bool,
    /// Send `STATE=3` while set.
    pub blocked: bool,
    pub cells: BTreeMap<u32, Assignment>,
}

/// What the board last told us, plus what the server derived from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    /// The latest well-formed message. Not in the device row: it is the device's newest row
    /// of the messages table, restored from there at start-up.
    #[serde(skip)]
    pub message: Option<Message>,
    /// The peer of the latest message (restored like `message`).
    #[serde(skip)]
    pub peer: Option<String>,
    /// When each cell was last counted as opened (Unix ms).
    #[serde(default)]
    pub last_opened: BTreeMap<u32, i64>,
    /// Cells whose assignment ran out on the server's clock and was not renewed.
    #[serde(default)]
    pub expired: BTreeMap<u32, i64>,
    #[serde(default)]
    pub reboots: u64,
    /// Matrix size given by an operator before the board reported one.
    #[serde(default)]
    pub provisioned_size: Option<(u16, u16)>,
    /// The networks the board may connect from: those it was seen from (the /24 or /64 of
    /// its peer) and those an operator accepted; least recently used first, at most
    /// [`KNOWN_NETWORKS`].
    #[serde(default)]
    pub networks: Vec<Net>,
    /// The network last refused under `--acon-pin-peers`, for an operator to accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_network: Option<PendingNetwork>,
}

/// Networks kept per board.
pub const KNOWN_NETWORKS: usize = 8;

/// A network a board's frame was refused from, waiting for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingNetwork {
    pub network: Net,
    pub peer: String,
    /// Unix ms of the refusal.
    pub at: i64,
}

impl Reported {
    /// Makes `net` the most recently used known network, dropping the least recently used
    /// one past [`KNOWN_NETWORKS`]. Returns whether the list changed.
    fn use_network(&mut self, net: Net) -> bool {
        if self.networks.last() == Some(&net) {
            return false;
        }
        self.networks.retain(|n| *n != net);
        self.networks.push(net);
        if self.networks.len() > KNOWN_NETWORKS {
            self.networks.remove(0);
        }
        true
    }
}

fn list(l: &Option<Vec<u32>>) -> &[u32] {
    l.as_deref().unwrap_or(&[])
}

/// A board's desired config and reported state, with the rules that change them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoardState {
    pub desired: Desired,
    pub desired_version: i64,
    pub reported: Reported,
}

impl BoardState {
    /// (cols, rows) of the matrix, from the last message or from provisioning.
    pub fn size(&self) -> Option<(u16, u16)> {
        match &self.reported.message {
            Some(Message {
                cols: Some(c),
                rows: Some(r),
                ..
            }) => Some((*c, *r)),
            _ => self.reported.provisioned_size,
        }
    }

    pub fn cell_count(&self) -> Option<u32> {
        self.size().map(|(c, r)| u32::from(c) * u32::from(r))
    }

    /// Drops assignments whose time has run out; one event each.
    pub fn expire(&mut self, now: i64) -> Vec<Event> {
        let gone: Vec<u32> = self
            .desired
            .cells
            .iter()
            .filter(|(_, a)| a.expires_at <= now)
            .map(|(&c, _)| c)
            .collect();
        let mut events = Vec::new();
        for cell in gone {
            if let Some(a) = self.desired.cells.remove(&cell) {
                self.reported.expired.insert(cell, a.expires_at);
                events.push(Event::AssignmentExpired {
                    cell,
                    code: a.code,
                    expires_at: crate::clock::rfc3339(a.expires_at),
                });
            }
        }
        if !events.is_empty() {
            self.desired_version += 1;
        }
        events
    }

    /// Applies a well-formed message from the board: updates the reported state, ends what
    /// the message ends, and returns the events it caused. Call [`BoardState::answer`] after.
    ///
    /// Invariant: every change besides `reported.message` and `reported.peer` comes with at
    /// least one event, so the core persists the device row exactly when events are returned.
    pub fn on_message(&mut self, msg: &Message, peer: &str, now: i64) -> Vec<Event> {
        let mut events = Vec::new();
        let prev = self.reported.message.take();
        let prev_acc = prev.as_ref().map(|p| list(&p.box_acc)).unwrap_or(&[]);
        let prev_to = prev.as_ref().map(|p| list(&p.box_to)).unwrap_or(&[]);
        let mut desired_changed = false;

        // Reboot, and the end of a pending reset.
        if msg.reset == Some(true) {
            // A retry (SEND + 1), or the very same frame again (a board that resends it, a
            // client that opens several connections): the reboot was counted already.
            let retry = prev.as_ref().is_some_and(|p| {
                p.reset == Some(true) && (p.send.checked_add(1) == Some(msg.send) || p == msg)
            });
            if !retry {
                self.reported.reboots += 1;
                events.push(Event::Rebooted { send: msg.send });
            }
            if self.desired.pending_reset {
                self.desired.pending_reset = false;
                desired_changed = true;
                events.push(Event::ResetDone { send: msg.send });
            }
        }

        // Openings (edge-counted); a single-use assignment ends with its opening.
        for &cell in list(&msg.box_acc) {
            if prev_acc.contains(&cell) {
                continue;
            }
            self.reported.last_opened.insert(cell, now);
            let assignment = self.desired.cells.get(&cell).cloned();
            events.push(Event::CellOpened {
                cell,
                code: assignment.as_ref().map(|a| a.code.clone()),
            });
            if let Some(a) = assignment.filter(|a| a.single_use) {
                self.desired.cells.remove(&cell);
                desired_changed = true;
                events.push(Event::AssignmentEnded {
                    cell,
                    code: a.code,
                    reason: "single-use cell opened".into(),
                });
            }
        }

        for &cell in list(&msg.box_to) {
            if !prev_to.contains(&cell) {
                events.push(Event::CellTimedOut { cell });
            }
        }

        for (code, event) in [
            (
                StateCode::ShortCircuit,
                Event::ShortCircuit { send: msg.send },
            ),
            (StateCode::WrongCode, Event::WrongCode { send: msg.send }),
        ] {
            if msg.has_state(code) && !prev.as_ref().is_some_and(|p| p.has_state(code)) {
                events.push(event);
            }
        }

        // Lock self-test changes.
        if let (Some(new), Some(old)) =
            (&msg.act_con, prev.as_ref().and_then(|p| p.act_con.as_ref()))
        {
            if new.cols() == old.cols() && new.rows() == old.rows() {
                for (i, (&now_on, &was_on)) in new.bits().iter().zip(old.bits()).enumerate() {
                    if now_on != was_on {
                        let cell = i + 1;
                        events.push(if now_on {
                            Event::LockConnected { cell }
                        } else {
                            Event::LockDisconnected { cell }
                        });
                    }
                }
            } else {
                events.push(Event::MatrixChanged {
                    from: [old.cols(), old.rows()],
                    to: [new.cols(), new.rows()],
                });
            }
        }

        if desired_changed {
            self.desired_version += 1;
        }
        self.reported.message = Some(msg.clone());
        self.reported.peer = Some(peer.to_string());
        events.extend(self.expire(now));
        events
    }

    /// The answer to `msg`: echo header, ID, SEND and line ending; the current desired config.
    pub fn answer(&self, msg: &Message, now: i64) -> Answer {
        Answer {
            version: msg.version.clone(),
            id: msg.id.clone(),
            send: msg.send,
            reset: self.desired.pending_reset,
            block: self.desired.blocked,
            cells: self
                .desired
                .cells
                .iter()
                .filter_map(|(&cell, a)| {
                    a.minutes_left(now).map(|minutes| Engaged {
                        cell,
                        code: a.code.clone(),
                        minutes,
                    })
                })
                .collect(),
            line_ending: msg.line_ending,
        }
    }
}

// ---- Connections and the guards ----

/// The connection a board's frame came on, as the guards see it. The gateway owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AconConn {
    /// Unique per connection, growing in accept order (a newer connection has a larger id).
    pub id: u64,
    /// The peer's IP address (an IPv4-mapped IPv6 address as IPv4).
    pub ip: IpAddr,
    /// `ip:port`, as recorded with messages and events.
    pub peer: String,
    /// The board this connection holds: the ID of its first accepted frame.
    pub holds: Option<String>,
}

/// The connection holding a board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub conn: u64,
    pub ip: IpAddr,
    pub peer: String,
}

/// Why a well-formed frame got no answer; its connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An unknown board under `--unknown-devices reject`.
    UnknownBoard,
    /// Another connection, from another address, holds the board.
    HeldElsewhere,
    /// A newer connection from the same address took the board over.
    Replaced,
    /// The connection already holds another board.
    SecondBoard,
    /// `--acon-pin-peers`: a network the board has not used.
    NewNetwork,
    /// `--acon-max-new-boards-per-min` reached.
    RegistrationsCapped,
    /// The board sends faster than `--acon-max-messages-per-sec`.
    RateLimited,
    /// The store refused the record.
    NotRecorded,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::UnknownBoard => "unknown board refused (policy reject)",
            Refusal::HeldElsewhere => "board held by another connection",
            Refusal::Replaced => "board taken over by a newer connection from the same address",
            Refusal::SecondBoard => "connection already holds another board",
            Refusal::NewNetwork => "board seen from a network it has not used (pinned peers)",
            Refusal::RegistrationsCapped => "new-board registrations capped this minute",
            Refusal::RateLimited => "board over its message rate",
            Refusal::NotRecorded => "message not recorded",
        }
    }
}

/// What [`State::acon_message`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send the encoded answer; close `displaced` (an older connection from the same
    /// address that held the board).
    Answer {
        answer: Vec<u8>,
        displaced: Option<u64>,
    },
    Refused(Refusal),
}

/// How a frame's connection stands to its board.
enum Claim {
    /// It holds the board already.
    Held,
    /// Nobody holds the board: take it.
    Free,
    /// An older connection from the same address holds it: take it over.
    TakeOver(Holder),
}

/// Which network an operator accepts for a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkChoice {
    Network(Net),
    /// The board's pending network (the last refused).
    Pending,
}

// ---- A board in the core's state: inbound messages and operator changes ----

/// Raw bytes of a malformed frame or packet kept in its event.
pub const KEEP_RAW: usize = 2048;

/// The first [`KEEP_RAW`] bytes, as text.
pub(crate) fn clip(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(KEEP_RAW)]).into_owned()
}

/// The longest a cell can be engaged for: one year, in minutes (`minutes` and `expires_at`
/// beyond it are refused, naming the field).
pub const MAX_ENGAGE_MINUTES: i64 = 525_600;

/// Body of `PUT /api/devices/acon/{id}/cells/{cell}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngageRequest {
    pub minutes: Option<i64>,
    /// Unix ms; an alternative to `minutes` (the API takes RFC 3339).
    #[serde(skip)]
    pub expires_at: Option<i64>,
    pub code: Option<String>,
    pub single_use: Option<bool>,
}

/// Body of `PUT /api/devices/acon/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub name: Option<String>,
    pub notes: Option<String>,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

/// A board as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardSnapshot {
    pub device: DeviceView,
    pub pending_reset: bool,
    pub blocked: bool,
    pub desired_version: i64,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    pub engaged_cells: usize,
    pub reported: ReportedSnapshot,
    /// The networks the board may connect from, least recently used first.
    pub networks: Vec<Net>,
    pub pending_network: Option<PendingNetwork>,
    /// The peer of the connection that holds the board now.
    pub held_by: Option<String>,
}

/// What the board last reported.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedSnapshot {
    /// The latest well-formed message, parsed.
    pub message: Option<Message>,
    pub peer: Option<String>,
    pub last_send: Option<u64>,
    pub reboots: u64,
}

/// An engaged cell.
#[derive(Debug, Clone, PartialEq)]
pub struct EngagedSnapshot {
    pub cell: u32,
    pub device: String,
    pub code: String,
    pub expires_at: i64,
    pub minutes_left: u32,
    pub single_use: bool,
    pub assigned_at: i64,
    pub assigned_by: String,
}

/// One cell of a board's matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSnapshot {
    pub cell: u32,
    pub row: u32,
    pub col: u32,
    /// From the last ACT_CON; `None` if the board has not reported one.
    pub lock_connected: Option<bool>,
    pub engaged: Option<EngagedSnapshot>,
    /// The board listed the cell in BOX_ENG in its last message.
    pub engaged_on_board: bool,
    pub timed_out: bool,
    pub last_opened: Option<i64>,
}

impl EngagedSnapshot {
    fn of(key: &str, cell: u32, a: &Assignment, minutes_left: u32) -> EngagedSnapshot {
        EngagedSnapshot {
            cell,
            device: key.to_string(),
            code: a.code.clone(),
            expires_at: a.expires_at,
            minutes_left,
            single_use: a.single_use,
            assigned_at: a.assigned_at,
            assigned_by: a.assigned_by.clone(),
        }
    }
}

pub fn board_key(id: &str) -> String {
    key("acon", id)
}

fn not_found(id: &str) -> CoreError {
    CoreError::NotFound(format!("no board acon/{id}"))
}

fn outside(count: u32) -> CoreError {
    invalid("cell", format!("outside the board's matrix: 1..={count}"))
}

/// A random code of `len` digits not in `taken`; `None` when the space is used up.
fn generate_code(len: usize, taken: &[&str]) -> Option<String> {
    let space = 10u64
        .checked_pow(u32::try_from(len).ok()?)
        .unwrap_or(u64::MAX);
    if (taken.len() as u64) >= space {
        return None;
    }
    let mut rng = rand::rng();
    // With at least one free code, random tries find one fast unless the space is nearly
    // full; then walk from a random start.
    for _ in 0..64 {
        let code: String = (0..len)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect();
        if !taken.contains(&code.as_str()) {
            return Some(code);
        }
    }
    let start = rng.random_range(0..space);
    (0..space)
        .map(|i| (start + i) % space)
        .map(|n| format!("{n:0len$}"))
        .find(|c| !taken.contains(&c.as_str()))
}

impl State {
    fn board_mut(&mut self, id: &str) -> Result<(&mut Device, String), CoreError> {
        let key = board_key(id);
        match self.devices.get_mut(&key) {
            Some(
                d @ Device {
                    state: DeviceState::Board(_),
                    ..
                },
            ) => Ok((d, key)),
            _ => Err(not_found(id)),
        }
    }

    /// A well-formed message from a board on `conn`: checks the guards (who holds the board,
    /// the network, the registration cap), registers the board (or refuses it), marks it
    /// seen, applies the rules, records the message with its answer. A refused frame changes
    /// nothing but the guard's own record (a rate-limited event, a pending network).
    pub fn acon_message(
        &mut self,
        fx: &mut Effects,
        raw: &[u8],
        msg: &Message,
        conn: &AconConn,
    ) -> Verdict {
        fx.counts.acon_messages += 1;
        let now = fx.now;
        let key = board_key(&msg.id);
        let claim = match self.claim(fx, &key, msg, conn) {
            Ok(c) => c,
            Err(why) => return Verdict::Refused(why),
        };
        // Only frames of the connection that holds (or may take) the board spend its rate: a
        // forger on another connection cannot use it up.
        let rate = self.cfg.acon_max_messages_per_sec;
        if !self.take_token(&key, rate, now) {
            fx.counts.acon_rate_limited += 1;
            self.limited(
                fx,
                &key,
                "rate",
                Event::RateLimited {
                    command: None,
                    limit_per_sec: rate,
                    refused_since_last_event: 0,
                },
            );
            return Verdict::Refused(Refusal::RateLimited);
        }
        let fresh = !self.devices.contains_key(&key);
        if fresh {
            if let Err(why) = self.may_register(fx, &key, msg, conn) {
                return Verdict::Refused(why);
            }
            fx.device_event(
                &key,
                SERVER,
                Event::Registered(Registration::Board {
                    peer: conn.peer.clone(),
                }),
            );
            let mut board = BoardState::default();
            board.reported.networks.push(Net::of(conn.ip));
            self.devices.insert(
                key.clone(),
                Device::new("acon", &msg.id, now, DeviceState::Board(board)),
            );
        }
        let mut row = false;
        let mut displaced = None;
        if !matches!(claim, Claim::Held) {
            if !fresh {
                match self.check_network(fx, &key, msg, conn) {
                    Ok(changed) => row = changed,
                    Err(why) => return Verdict::Refused(why),
                }
            }
            // Every check passed: take the board.
            let holder = Holder {
                conn: conn.id,
                ip: conn.ip,
                peer: conn.peer.clone(),
            };
            self.acon_holders.insert(key.clone(), holder);
            if let Claim::TakeOver(old) = claim {
                displaced = Some(old.conn);
                if let Some(since) = self.rejected_event_due(&format!("{key}#replaced"), now) {
                    fx.device_event(
                        &key,
                        SERVER,
                        Event::ConnectionReplaced {
                            peer: conn.peer.clone(),
                            old_peer: old.peer,
                            replaced_since_last_event: since,
                        },
                    );
                }
            }
        }
        let Some(dev) = self.devices.get_mut(&key) else {
            return Verdict::Refused(Refusal::NotRecorded);
        };
        fx.push_event(dev.seen(now, "message received", None));
        let DeviceState::Board(board) = &mut dev.state else {
            // `acon/<id>` is always a board: types named `acon` are refused.
            return Verdict::Refused(Refusal::NotRecorded);
        };
        for e in board.on_message(msg, &conn.peer, now) {
            fx.device_event(&key, DEVICE, e);
        }
        let mut answer = Vec::with_capacity(128);
        board.answer(msg, now).encode(&mut answer);
        // Every change to the device row comes with an event (see `on_message`), or is the
        // order of its known networks (at most once per connection); a message that changes
        // nothing else is recorded by its message row alone, which also carries the latest
        // message and last-seen time the row leaves out.
        if row || !fx.events.is_empty() {
            fx.device_row(dev, None);
        }
        fx.writes.push(Write::Message(MessageRecord {
            device: key,
            at: now,
            send: i64::try_from(msg.send).ok(),
            peer: conn.peer.clone(),
            raw: String::from_utf8_lossy(raw).into_owned(),
            parsed: to_json(msg),
            answer: String::from_utf8_lossy(&answer).into_owned(),
        }));
        Verdict::Answer { answer, displaced }
    }

    /// The binding guard: whether `conn` holds the board `key`, may take it, or is refused.
    /// Changes nothing but the guard's event.
    fn claim(
        &mut self,
        fx: &mut Effects,
        key: &str,
        msg: &Message,
        conn: &AconConn,
    ) -> Result<Claim, Refusal> {
        let holder = self.acon_holders.get(key);
        let (why, holder_peer, holds) = match (conn.holds.as_deref(), holder) {
            (Some(held), Some(h)) if held == msg.id => {
                return if h.conn == conn.id {
                    Ok(Claim::Held)
                } else {
                    Err(Refusal::Replaced)
                };
            }
            // Held once, released since: only if a newer connection took it and closed.
            (Some(held), None) if held == msg.id => return Err(Refusal::Replaced),
            (Some(held), _) => (Refusal::SecondBoard, None, Some(board_key(held))),
            (None, None) => return Ok(Claim::Free),
            (None, Some(h)) if h.ip == conn.ip && h.conn < conn.id => {
                return Ok(Claim::TakeOver(h.clone()));
            }
            (None, Some(h)) if h.ip == conn.ip => return Err(Refusal::Replaced),
            (None, Some(h)) => (Refusal::HeldElsewhere, Some(h.peer.clone()), None),
        };
        fx.counts.acon_id_conflicts += 1;
        if let Some(since) = self.rejected_event_due(&format!("{key}#id_conflict"), fx.now) {
            fx.device_event(
                key,
                SERVER,
                Event::IdConflict {
                    reason: why.reason().into(),
                    peer: conn.peer.clone(),
                    holder_peer,
                    holds,
                    send: msg.send,
                    refused_since_last_event: since,
                },
            );
        }
        Err(why)
    }

    /// The policy and the cap on new boards: `Ok` when the board `key` may be registered now
    /// (and counts it against the minute's cap).
    fn may_register(
        &mut self,
        fx: &mut Effects,
        key: &str,
        msg: &Message,
        conn: &AconConn,
    ) -> Result<(), Refusal> {
        let now = fx.now;
        if self.cfg.unknown_devices == UnknownPolicy::Reject {
            fx.counts.acon_rejected += 1;
            if let Some(since) = self.rejected_event_due(key, now) {
                fx.device_event(
                    key,
                    SERVER,
                    Event::Rejected {
                        reason: "unknown device, policy reject".into(),
                        peer: Some(conn.peer.clone()),
                        send: Some(msg.send),
                        topic: None,
                        refused_since_last_event: since,
                    },
                );
            }
            return Err(Refusal::UnknownBoard);
        }
        let limit = self.cfg.acon_max_new_boards_per_min;
        if limit == 0 {
            return Ok(());
        }
        let (start, count) = &mut self.registrations;
        if now - *start >= 60_000 || now < *start {
            (*start, *count) = (now, 0);
        }
        if *count < limit {
            *count += 1;
            return Ok(());
        }
        fx.counts.acon_registrations_capped += 1;
        if let Some(since) = self.rejected_event_due("#registrations", now) {
            fx.event(
                None,
                SERVER,
                Event::RegistrationsCapped {
                    limit_per_minute: limit,
                    id: msg.id.clone(),
                    peer: conn.peer.clone(),
                    refused_since_last_event: since,
                },
            );
        }
        Err(Refusal::RegistrationsCapped)
    }

    /// The network guard, on a connection's first frame for a known board: a known network
    /// becomes the most recent (`Ok(true)` if the order changed); a new one is learned with
    /// an event, or, with `--acon-pin-peers`, refused and kept as the board's pending network.
    /// A board with no known network yet (registered by an operator, or from before the
    /// guards) learns its first one whatever the setting.
    fn check_network(
        &mut self,
        fx: &mut Effects,
        key: &str,
        msg: &Message,
        conn: &AconConn,
    ) -> Result<bool, Refusal> {
        let now = fx.now;
        let pin = self.cfg.acon_pin_peers;
        let Some(board) = self.devices.get(key).and_then(Device::board) else {
            return Ok(false);
        };
        let known = &board.reported.networks;
        if let Some(n) = known.iter().rev().find(|n| n.contains(conn.ip)).copied() {
            let Some(DeviceState::Board(b)) = self.devices.get_mut(key).map(|d| &mut d.state)
            else {
                return Ok(false);
            };
            return Ok(b.reported.use_network(n));
        }
        let net = Net::of(conn.ip);
        if pin && !known.is_empty() {
            fx.counts.acon_peer_refused += 1;
            let due = self.rejected_event_due(&format!("{key}#network"), now);
            if let (Some(since), Some(dev)) = (due, self.devices.get_mut(key))
                && let DeviceState::Board(b) = &mut dev.state
            {
                b.reported.pending_network = Some(PendingNetwork {
                    network: net,
                    peer: conn.peer.clone(),
                    at: now,
                });
                fx.device_event(
                    key,
                    SERVER,
                    Event::PeerNetworkRefused {
                        network: net,
                        peer: conn.peer.clone(),
                        send: msg.send,
                        refused_since_last_event: since,
                    },
                );
                fx.device_row(dev, None);
            }
            return Err(Refusal::NewNetwork);
        }
        let Some(DeviceState::Board(b)) = self.devices.get_mut(key).map(|d| &mut d.state) else {
            return Ok(false);
        };
        let before = b.reported.networks.clone();
        b.reported.use_network(net);
        fx.device_event(
            key,
            SERVER,
            Event::NewPeerNetwork {
                network: net,
                peer: conn.peer.clone(),
                known: before,
            },
        );
        Ok(true)
    }

    /// A connection closed: the board it held is free.
    pub(crate) fn acon_release(&mut self, conn: &AconConn) {
        let Some(id) = &conn.holds else { return };
        let key = board_key(id);
        if self
            .acon_holders
            .get(&key)
            .is_some_and(|h| h.conn == conn.id)
        {
            self.acon_holders.remove(&key);
        }
    }

    /// An operator accepts a network for a board: a given one, or the board's pending one.
    pub(crate) fn accept_network(
        &mut self,
        fx: &mut Effects,
        id: &str,
        choice: NetworkChoice,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        let (dev, key) = self.board_mut(id)?;
        let DeviceState::Board(board) = &mut dev.state else {
            return Err(not_found(id));
        };
        let pending = board.reported.pending_network.as_ref().map(|p| p.network);
        let network = match choice {
            NetworkChoice::Network(n) => n,
            NetworkChoice::Pending => pending.ok_or_else(|| {
                CoreError::Conflict(format!(
                    "board {id} has no refused network waiting to be accepted; give one: {{\"network\": \"10.1.2.0/24\"}}"
                ))
            })?,
        };
        board.reported.use_network(network);
        let pending_cleared = pending.is_some_and(|p| network.covers(&p));
        if pending_cleared {
            board.reported.pending_network = None;
        }
        fx.device_event(
            &key,
            actor,
            Event::PeerNetworkAccepted {
                network,
                pending_cleared,
            },
        );
        fx.device_row(dev, None);
        self.board_outcome(id)
    }

    /// A frame that is not a valid message: an error event (filed under the board whose `ID=`
    /// it carries, if any) with the reason and the raw bytes.
    pub fn acon_malformed(&mut self, fx: &mut Effects, raw: &[u8], reason: &str, peer: &str) {
        fx.counts.acon_malformed += 1;
        fx.event(
            ::acon::sniff_id(raw).map(|id| board_key(&id)),
            DEVICE,
            Event::Malformed {
                reason: reason.to_string(),
                peer: Some(peer.to_string()),
                topic: None,
                raw: clip(raw),
                raw_len: raw.len(),
                truncated: raw.len() > KEEP_RAW,
            },
        );
    }

    pub(crate) fn board_snapshot(&self, id: &str) -> Option<BoardSnapshot> {
        let key = board_key(id);
        let d = self.devices.get(&key)?;
        let b = d.board()?;
        Some(BoardSnapshot {
            device: d.view(),
            pending_reset: b.desired.pending_reset,
            blocked: b.desired.blocked,
            desired_version: b.desired_version,
            cols: b.size().map(|s| s.0),
            rows: b.size().map(|s| s.1),
            engaged_cells: b.desired.cells.len(),
            reported: ReportedSnapshot {
                message: b.reported.message.clone(),
                peer: b.reported.peer.clone(),
                last_send: b.reported.message.as_ref().map(|m| m.send),
                reboots: b.reported.reboots,
            },
            networks: b.reported.networks.clone(),
            pending_network: b.reported.pending_network.clone(),
            held_by: self.acon_holders.get(&key).map(|h| h.peer.clone()),
        })
    }

    fn board_outcome(&self, id: &str) -> Result<Outcome, CoreError> {
        self.board_snapshot(id)
            .map(|b| Outcome::Board(Box::new(b)))
            .ok_or_else(|| not_found(id))
    }

    pub(crate) fn cells(&self, id: &str, now: i64) -> Result<Vec<CellSnapshot>, CoreError> {
        let key = board_key(id);
        let b = self
            .devices
            .get(&key)
            .and_then(Device::board)
            .ok_or_else(|| not_found(id))?;
        let Some((cols, rows)) = b.size() else {
            return Ok(Vec::new());
        };
        let msg = b.reported.message.as_ref();
        let reported_to = msg.and_then(|m| m.box_to.as_deref()).unwrap_or(&[]);
        let reported_eng = msg.and_then(|m| m.box_eng.as_deref()).unwrap_or(&[]);
        let count = u32::from(cols) * u32::from(rows);
        Ok((1..=count)
            .map(|cell| {
                let engaged = b.desired.cells.get(&cell).and_then(|a| {
                    a.minutes_left(now)
                        .map(|m| EngagedSnapshot::of(&key, cell, a, m))
                });
                let expired_on_server = engaged.is_none()
                    && (b.reported.expired.contains_key(&cell)
                        || b.desired
                            .cells
                            .get(&cell)
                            .is_some_and(|a| a.expires_at <= now));
                CellSnapshot {
                    cell,
                    row: (cell - 1) / u32::from(cols),
                    col: (cell - 1) % u32::from(cols),
                    lock_connected: msg
                        .and_then(|m| m.act_con.as_ref())
                        .and_then(|m| m.connected(cell)),
                    engaged,
                    engaged_on_board: reported_eng.contains(&cell),
                    timed_out: reported_to.contains(&cell) || expired_on_server,
                    last_opened: b.reported.last_opened.get(&cell).copied(),
                }
            })
            .collect())
    }

    /// Registers a board (or updates its name, notes or size) on an operator's request.
    pub(crate) fn register_board(
        &mut self,
        fx: &mut Effects,
        id: &str,
        req: RegisterRequest,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        if !::acon::is_valid_id(id) {
            return Err(invalid(
                "id",
                "must be 1-64 letters, digits, '-', '_' or '.'",
            ));
        }
        let size = match (req.cols, req.rows) {
            (Some(c), Some(r)) => {
                for (field, v) in [("cols", c), ("rows", r)] {
                    if v == 0 || v > ::acon::MAX_DIMENSION {
                        return Err(invalid(
                            field,
                            format!("must be 1..={}", ::acon::MAX_DIMENSION),
                        ));
                    }
                }
                Some((c, r))
            }
            (None, None) => None,
            (Some(_), None) => return Err(invalid("rows", "give both cols and rows, or neither")),
            (None, Some(_)) => return Err(invalid("cols", "give both cols and rows, or neither")),
        };
        let key = board_key(id);
        let created = !self.devices.contains_key(&key);
        let dev = self.devices.entry(key.clone()).or_insert_with(|| {
            Device::new(
                "acon",
                id,
                fx.now,
                DeviceState::Board(BoardState::default()),
            )
        });
        let DeviceState::Board(board) = &mut dev.state else {
            return Err(not_found(id));
        };
        if size.is_some() {
            board.reported.provisioned_size = size;
        }
        let event = dev.operator_update(created, req.name, req.notes, |name, notes| {
            Registration::BoardByOperator { name, notes, size }
        });
        fx.device_event(&key, actor, event);
        fx.device_row(dev, None);
        self.board_outcome(id)
    }

    /// Engages a cell: gives it a code (generated when none is given) and a time limit.
    /// Assignments that ran out are ended first, in the same unit — after every check passed.
    pub(crate) fn engage(
        &mut self,
        fx: &mut Effects,
        id: &str,
        cell: u32,
        req: EngageRequest,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        let now = fx.now;
        let expires_at = match (req.minutes, req.expires_at) {
            (Some(_), Some(_)) => {
                return Err(invalid("minutes", "give minutes or expires_at, not both"));
            }
            (None, None) => return Err(invalid("minutes", "required (or expires_at)")),
            (Some(m), None) if m < 1 => return Err(invalid("minutes", "must be at least 1")),
            (Some(m), None) if m > MAX_ENGAGE_MINUTES => {
                return Err(invalid(
                    "minutes",
                    format!("must be at most {MAX_ENGAGE_MINUTES} (one year)"),
                ));
            }
            (Some(m), None) => now + m * 60_000,
            (None, Some(at)) if at <= now => {
                return Err(invalid("expires_at", "must be in the future"));
            }
            (None, Some(at)) if at > now + MAX_ENGAGE_MINUTES * 60_000 => {
                return Err(invalid(
                    "expires_at",
                    "must be at most one year (525600 minutes) from now",
                ));
            }
            (None, Some(at)) => at,
        };
        if let Some(code) = &req.code
            && (code.is_empty() || code.len() > 16 || !code.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(invalid(
                "code",
                "must be 1 to 16 decimal digits (the keypad has digits only)",
            ));
        }
        let code_length = self.cfg.code_length;
        let (dev, key) = self.board_mut(id)?;
        let DeviceState::Board(board) = &mut dev.state else {
            return Err(not_found(id));
        };
        // Validate against the assignments that are still live; mutate only once valid.
        let count = board.cell_count().ok_or_else(|| {
            CoreError::Conflict(format!(
                "board {id} has not reported its matrix (COLS/ROWS) yet; register it with cols and rows first"
            ))
        })?;
        if cell < 1 || cell > count {
            return Err(outside(count));
        }
        let live = |c: &u32, a: &Assignment| *c != cell && a.expires_at > now;
        let code = match req.code {
            Some(code) => {
                if let Some((other, _)) = board
                    .desired
                    .cells
                    .iter()
                    .find(|(c, a)| live(c, a) && a.code == code)
                {
                    return Err(CoreError::Conflict(format!(
                        "code {code} is already engaged on cell {other} of board {id}; two cells of a board never share a code"
                    )));
                }
                code
            }
            None => {
                let taken: Vec<&str> = board
                    .desired
                    .cells
                    .iter()
                    .filter(|(c, a)| live(c, a))
                    .map(|(_, a)| a.code.as_str())
                    .collect();
                generate_code(code_length, &taken).ok_or_else(|| {
                    CoreError::Conflict(format!(
                        "no free {code_length}-digit code left on board {id}; raise --code-length"
                    ))
                })?
            }
        };
        for e in board.expire(now) {
            fx.device_event(&key, SERVER, e);
        }
        let a = Assignment {
            code,
            expires_at,
            single_use: req.single_use.unwrap_or(false),
            assigned_at: now,
            assigned_by: actor.to_string(),
        };
        let from = board.desired_version;
        board.desired.cells.insert(cell, a.clone());
        board.reported.expired.remove(&cell);
        board.desired_version += 1;
        fx.device_event(
            &key,
            actor,
            Event::CellEngaged {
                cell,
                code: a.code.clone(),
                expires_at: crate::clock::rfc3339(a.expires_at),
                single_use: a.single_use,
                version: VersionChange {
                    from,
                    to: board.desired_version,
                },
            },
        );
        let minutes = a.minutes_left(now).unwrap_or(1);
        fx.device_row(dev, None);
        Ok(Outcome::Engaged(EngagedSnapshot::of(
            &key, cell, &a, minutes,
        )))
    }

    /// Releases a cell's assignment. `NotFound` if the cell was not engaged.
    pub(crate) fn release(
        &mut self,
        fx: &mut Effects,
        id: &str,
        cell: u32,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        self.board_change(fx, id, actor, |board, version| {
            let count = board.cell_count().unwrap_or(0);
            if cell < 1 || cell > count {
                return Err(outside(count));
            }
            match board.desired.cells.remove(&cell) {
                Some(a) => Ok(Event::CellReleased {
                    cell,
                    code: a.code,
                    version,
                }),
                None => Err(CoreError::NotFound(format!(
                    "cell {cell} of board {id} is not engaged"
                ))),
            }
        })?;
        Ok(Outcome::Released)
    }

    /// Asks the board to reboot (RESET=1 until it reports the reboot).
    pub(crate) fn reset(
        &mut self,
        fx: &mut Effects,
        id: &str,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        self.board_change(fx, id, actor, |board, version| {
            board.desired.pending_reset = true;
            Ok(Event::ResetRequested { version })
        })?;
        self.board_outcome(id)
    }

    /// Blocks (STATE=3) or unblocks the board's keypad.
    pub(crate) fn block(
        &mut self,
        fx: &mut Effects,
        id: &str,
        blocked: bool,
        actor: &str,
    ) -> Result<Outcome, CoreError> {
        self.board_change(fx, id, actor, |board, version| {
            board.desired.blocked = blocked;
            Ok(if blocked {
                Event::Blocked { version }
            } else {
                Event::Unblocked { version }
            })
        })?;
        self.board_outcome(id)
    }

    /// An operator change to a board's desired config: `change` validates, then applies, and
    /// names the event; the version goes up by one and the row is written.
    fn board_change(
        &mut self,
        fx: &mut Effects,
        id: &str,
        actor: &str,
        change: impl FnOnce(&mut BoardState, VersionChange) -> Result<Event, CoreError>,
    ) -> Result<(), CoreError> {
        let (dev, key) = self.board_mut(id)?;
        let DeviceState::Board(board) = &mut dev.state else {
            return Err(not_found(id));
        };
        let version = VersionChange {
            from: board.desired_version,
            to: board.desired_version + 1,
        };
        let event = change(board, version)?;
        board.desired_version = version.to;
        fx.device_event(&key, actor, event);
        fx.device_row(dev, None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(send: u64, extra: &str) -> Message {
        let text = format!("ACon_V1.0\nID=7\nSEND={send}\nCOLS=2\nROWS=2\n{extra}CLOSE\n");
        Message::parse(text.as_bytes()).unwrap()
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        events.iter().map(Event::kind).collect()
    }

    fn data(e: &Event) -> serde_json::Value {
        serde_json::to_value(e).unwrap()
    }

    fn engage(b: &mut BoardState, cell: u32, code: &str, expires_at: i64, single_use: bool) {
        b.desired.cells.insert(
            cell,
            Assignment {
                code: code.into(),
                expires_at,
                single_use,
                assigned_at: 0,
                assigned_by: "test".into(),
            },
        );
    }

    #[test]
    fn generated_codes_avoid_taken_ones_and_report_exhaustion() {
        let taken: Vec<String> = (0..9).map(|i| i.to_string()).collect();
        let taken: Vec<&str> = taken.iter().map(String::as_str).collect();
        assert_eq!(generate_code(1, &taken).as_deref(), Some("9"));
        let mut all = taken.clone();
        all.push("9");
        assert_eq!(generate_code(1, &all), None);
        let c = generate_code(4, &[]).unwrap();
        assert_eq!(c.len(), 4);
        assert!(c.bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn minutes_are_rounded_up_and_at_least_one() {
        let a = Assignment {
            code: "1".into(),
            expires_at: 120_000,
            single_use: false,
            assigned_at: 0,
            assigned_by: "t".into(),
        };
        assert_eq!(a.minutes_left(0), Some(2));
        assert_eq!(a.minutes_left(1), Some(2));
        assert_eq!(a.minutes_left(60_001), Some(1));
        assert_eq!(a.minutes_left(119_999), Some(1));
        assert_eq!(a.minutes_left(120_000), None);
    }

    #[test]
    fn an_opening_retried_with_send_plus_one_counts_once() {
        let mut b = BoardState::default();
        engage(&mut b, 3, "1492", 10_000_000, false);
        assert!(kinds(&b.on_message(&msg(1, "BOX_ACC=0\n"), "p", 0)).is_empty());
        assert_eq!(
            kinds(&b.on_message(&msg(2, "BOX_ACC=3\n"), "p", 1)),
            ["cell_opened"]
        );
        assert!(kinds(&b.on_message(&msg(3, "BOX_ACC=3\n"), "p", 2)).is_empty());
        assert!(kinds(&b.on_message(&msg(4, "BOX_ACC=0\n"), "p", 3)).is_empty());
        assert_eq!(
            kinds(&b.on_message(&msg(5, "BOX_ACC=3\n"), "p", 4)),
            ["cell_opened"]
        );
        assert_eq!(b.reported.last_opened.get(&3), Some(&4));
    }

    #[test]
    fn single_use_assignment_ends_when_opened() {
        let mut b = BoardState::default();
        engage(&mut b, 1, "11", 10_000_000, true);
        engage(&mut b, 2, "22", 10_000_000, false);
        let m = msg(1, "BOX_ACC=1,2\n");
        assert_eq!(
            kinds(&b.on_message(&m, "p", 0)),
            ["cell_opened", "assignment_ended", "cell_opened"]
        );
        let cells: Vec<u32> = b.answer(&m, 0).cells.iter().map(|e| e.cell).collect();
        assert_eq!(cells, [2]);
        assert_eq!(b.desired_version, 1);
    }

    #[test]
    fn reset_is_sent_until_the_board_reports_it_and_a_retry_is_not_a_second_reboot() {
        let mut b = BoardState {
            desired: Desired {
                pending_reset: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let m = msg(10, "RESET=0\n");
        b.on_message(&m, "p", 0);
        assert!(b.answer(&m, 0).reset);
        let m = msg(1, "RESET=1\n");
        assert_eq!(kinds(&b.on_message(&m, "p", 0)), ["rebooted", "reset_done"]);
        assert!(!b.answer(&m, 0).reset);
        assert!(kinds(&b.on_message(&msg(2, "RESET=1\n"), "p", 0)).is_empty());
        assert_eq!(
            kinds(&b.on_message(&msg(1, "RESET=1\n"), "p", 0)),
            ["rebooted"]
        );
        assert_eq!(b.reported.reboots, 2);
    }

    #[test]
    fn the_same_frame_ten_times_is_one_reboot() {
        let mut b = BoardState::default();
        let m = msg(7, "RESET=1\nBOX_ACC=1\nSTATE=2\n");
        assert_eq!(
            kinds(&b.on_message(&m, "p", 0)),
            ["rebooted", "cell_opened", "wrong_code"]
        );
        for i in 1..10 {
            assert!(kinds(&b.on_message(&m, "p", i)).is_empty(), "copy {i}");
        }
        assert_eq!(b.reported.reboots, 1);
        // A different frame with the same SEND (a real reboot right after) still counts.
        assert_eq!(
            kinds(&b.on_message(&msg(7, "RESET=1\n"), "p", 11)),
            ["rebooted"]
        );
    }

    #[test]
    fn state_codes_and_lock_changes_are_edges() {
        let mut b = BoardState::default();
        b.on_message(&msg(1, "STATE=0\nACT_CON=11,11\n"), "p", 0);
        let e = b.on_message(&msg(2, "STATE=1,2\nACT_CON=10,11\n"), "p", 0);
        assert_eq!(
            kinds(&e),
            ["short_circuit", "wrong_code", "lock_disconnected"]
        );
        assert_eq!(data(&e[2])["cell"], 2);
        assert!(kinds(&b.on_message(&msg(3, "STATE=1,2\nACT_CON=10,11\n"), "p", 0)).is_empty());
        assert_eq!(
            kinds(&b.on_message(&msg(4, "STATE=0\nACT_CON=11,11\n"), "p", 0)),
            ["lock_connected"]
        );
    }

    #[test]
    fn known_networks_are_kept_least_recently_used_first_and_bounded() {
        let net = |i: u8| Net::of(IpAddr::from([10, 0, i, 1]));
        let mut r = Reported::default();
        for i in 0..10 {
            assert!(r.use_network(net(i)));
        }
        let want: Vec<Net> = (2..10).map(net).collect();
        assert_eq!(r.networks, want, "the two least recently used are gone");
        assert!(!r.use_network(net(9)), "already the most recent");
        assert!(r.use_network(net(2)));
        assert_eq!(r.networks.first(), Some(&net(3)));
        assert_eq!(r.networks.last(), Some(&net(2)));
        assert_eq!(r.networks.len(), KNOWN_NETWORKS);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["networks"][0], "10.0.3.0/24");
        assert!(json.get("pending_network").is_none());
        let back: Reported = serde_json::from_value(json).unwrap();
        assert_eq!(back.networks, r.networks);
        let old: Reported = serde_json::from_str(r#"{"reboots": 2}"#).unwrap();
        assert!(old.networks.is_empty(), "rows from before the guards load");
    }

    #[test]
    fn expired_assignments_are_not_sent() {
        let mut b = BoardState::default();
        engage(&mut b, 1, "11", 1000, false);
        engage(&mut b, 2, "22", 100_000, false);
        let m = msg(1, "");
        assert_eq!(kinds(&b.on_message(&m, "p", 1000)), ["assignment_expired"]);
        let a = b.answer(&m, 1000);
        assert_eq!(
            a.cells,
            vec![Engaged {
                cell: 2,
                code: "22".into(),
                minutes: 2
            }]
        );
        assert!(b.reported.expired.contains_key(&1));
    }
}
