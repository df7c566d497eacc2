//! The core: the device table and the rules that turn inbound messages and operator actions
//! into store writes, answers and events.
//!
//! Invariants:
//! - Every change to a device and the events it causes are submitted to the store as one unit,
//!   while the device table is locked, so units reach the store in the order the changes were
//!   made; the caller answers (the board, the API client) only after the unit is durable.
//! - The table in memory is what the store holds plus the units in flight; it is rebuilt from
//!   the store at start-up.
//! - No I/O here besides the store: the gateways own sockets, and time is passed in.

pub mod acon;
pub mod skaben;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ::acon::Message;
use rand::RngExt as _;
use serde::Serialize;
use serde_json::json;
use thiserror::Error;

use self::acon::{Assignment, BoardState, RuleEvent};
use crate::bus::{Bus, PacketHandler};
use crate::store::{Commit, DeviceRecord, EventRecord, MessageRecord, Store, StoreError, Write};

/// What to do with a device the server has never seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPolicy {
    /// Register it on its first message.
    Register,
    /// Refuse it (no answer, an event) until an operator registers it.
    Reject,
}

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub unknown_devices: UnknownPolicy,
    /// A device is offline once it has been silent this long (ms).
    pub presence_timeout_ms: i64,
    /// Digits in a generated cell code.
    pub code_length: usize,
    /// Time between PING broadcasts to the active SKABEN types (ms).
    pub ping_interval_ms: i64,
    /// A SKABEN device is offline once silent this long, unless its type says otherwise (ms).
    pub skaben_keepalive_ms: i64,
}

/// Errors of operator actions, each mapped to an HTTP status by the console.
#[derive(Debug, Error)]
pub enum CoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> CoreError {
    CoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Counters since start, for `/api/stats` and the logs.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub acon_messages: AtomicU64,
    pub acon_malformed: AtomicU64,
    pub acon_rejected: AtomicU64,
    pub store_failures: AtomicU64,
    pub skaben_packets: AtomicU64,
    pub skaben_malformed: AtomicU64,
    pub skaben_rejected: AtomicU64,
    pub skaben_cups_sent: AtomicU64,
    pub skaben_publish_failures: AtomicU64,
}

/// A device in the table.
#[derive(Debug, Clone)]
struct Device {
    kind: String,
    id: String,
    name: String,
    notes: String,
    first_seen: i64,
    last_seen: Option<i64>,
    online: bool,
    presence_changed_at: i64,
    board: BoardState,
}

impl Device {
    fn key(&self) -> String {
        format!("{}/{}", self.kind, self.id)
    }

    fn record(&self) -> DeviceRecord {
        DeviceRecord {
            kind: self.kind.clone(),
            id: self.id.clone(),
            protocol: "acon".into(),
            name: self.name.clone(),
            notes: self.notes.clone(),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            online: self.online,
            presence_changed_at: self.presence_changed_at,
            desired_version: self.board.desired_version,
            desired: to_json(&self.board.desired),
            reported: to_json(&self.board.reported),
        }
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Our own types serialise infallibly (string or integer map keys only).
    serde_json::to_string(v)
        .unwrap_or_else(|e| json!({"serialization_error": e.to_string()}).to_string())
}

/// A unit of writes being assembled under the table lock.
struct Unit {
    writes: Vec<Write>,
    now: i64,
}

impl Unit {
    fn new(now: i64) -> Unit {
        Unit {
            writes: Vec::with_capacity(4),
            now,
        }
    }

    fn event(&mut self, device: Option<String>, kind: &str, actor: &str, data: serde_json::Value) {
        self.writes.push(Write::Event(EventRecord {
            at: self.now,
            device,
            kind: kind.to_string(),
            actor: actor.to_string(),
            data: data.to_string(),
        }));
    }

    fn rule_events(&mut self, device: &str, events: Vec<RuleEvent>, actor: &str) {
        for e in events {
            self.event(Some(device.to_string()), e.kind, actor, e.data);
        }
    }
}

/// What became of an inbound ACon message.
pub enum AconOutcome {
    /// Send these bytes (the encoded answer) once the commit is durable.
    Answer(Commit, Vec<u8>),
    /// The board is unknown and the policy refuses it: no answer. The commit of its
    /// `rejected` event, if one was written (see `Hub::refuse`).
    Rejected(Option<Commit>),
}

/// The device table and its rules. Shared by the gateways and the console.
pub struct Hub {
    store: Arc<dyn Store>,
    cfg: CoreConfig,
    devices: Mutex<HashMap<String, Device>>,
    /// Unknown boards refused lately: key → (time of the last `rejected` event, refusals since).
    rejected: Mutex<HashMap<String, (i64, u64)>>,
    /// SKABEN types and devices (see [`skaben`]).
    skaben: Mutex<skaben::SkabenTable>,
    /// Where SKABEN packets go out.
    bus: Arc<dyn Bus>,
    /// Per type: when `<type>/all/cup` was last broadcast in answer to a request from `all`,
    /// and whether another request wants one.
    broadcasts: Mutex<HashMap<String, (i64, bool)>>,
    /// INFO and SUP for the scenario engine.
    scenario: tokio::sync::broadcast::Sender<skaben::ScenarioInput>,
    /// Next push task id (starts at the start-up time in ms, so ids never repeat across runs).
    task_seq: AtomicU64,
    pub stats: Stats,
}

/// At most one `rejected` event per unknown board in this time (ms).
const REJECTED_EVENT_EVERY_MS: i64 = 60_000;

/// Unknown boards remembered for [`REJECTED_EVENT_EVERY_MS`]; past this, the memory restarts.
const REJECTED_TRACKED: usize = 10_000;

impl PacketHandler for Hub {
    fn packet(&self, topic: &str, payload: &[u8]) {
        drop(self.skaben_packet(topic, payload, crate::clock::now_ms()));
    }

    fn packet_durable(&self, topic: &str, payload: &[u8]) -> Option<Commit> {
        self.skaben_packet(topic, payload, crate::clock::now_ms())
    }

    fn connected(&self) {
        let n = self.skaben_connected(crate::clock::now_ms());
        if n > 0 {
            tracing::info!(
                pushes = n,
                "re-sent pending config pushes after (re)connecting to the broker"
            );
        }
    }
}

pub fn acon_key(id: &str) -> String {
    format!("acon/{id}")
}

impl Hub {
    /// Builds the table from the store.
    pub async fn load(
        store: Arc<dyn Store>,
        cfg: CoreConfig,
        bus: Arc<dyn Bus>,
        now: i64,
    ) -> Result<Hub, StoreError> {
        let mut devices = HashMap::new();
        let mut sk = skaben::SkabenTable::default();
        let seed = Hub::load_types(&mut sk, store.load_types().await?, now)?;
        if !seed.is_empty() {
            store.submit(seed).wait().await?;
        }
        for loaded in store.load_devices().await? {
            let r = loaded.record;
            if r.protocol == "skaben" {
                Hub::load_skaben_device(&mut sk, r, loaded.last_message.map(|m| m.at))?;
                continue;
            }
            let key = format!("{}/{}", r.kind, r.id);
            let desired = serde_json::from_str(&r.desired)
                .map_err(|e| StoreError::Corrupt(format!("desired config of {key}: {e}")))?;
            let mut reported: acon::Reported = serde_json::from_str(&r.reported)
                .map_err(|e| StoreError::Corrupt(format!("reported state of {key}: {e}")))?;
            let mut last_seen = r.last_seen;
            if let Some(m) = loaded.last_message {
                reported.message =
                    Some(serde_json::from_str(&m.parsed).map_err(|e| {
                        StoreError::Corrupt(format!("latest message of {key}: {e}"))
                    })?);
                reported.peer = Some(m.peer);
                last_seen = last_seen.max(Some(m.at));
            }
            devices.insert(
                key,
                Device {
                    kind: r.kind,
                    id: r.id,
                    name: r.name,
                    notes: r.notes,
                    first_seen: r.first_seen,
                    last_seen,
                    online: r.online,
                    presence_changed_at: r.presence_changed_at,
                    board: BoardState {
                        desired,
                        desired_version: r.desired_version,
                        reported,
                    },
                },
            );
        }
        Ok(Hub {
            store,
            cfg,
            devices: Mutex::new(devices),
            rejected: Mutex::new(HashMap::new()),
            skaben: Mutex::new(sk),
            bus,
            broadcasts: Mutex::new(HashMap::new()),
            scenario: tokio::sync::broadcast::channel(4096).0,
            task_seq: AtomicU64::new(u64::try_from(now).unwrap_or(1)),
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Device>> {
        // A panic while holding the lock leaves the table as the last completed change left
        // it (every change is applied before the unit is submitted), so carry on.
        self.devices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn submit(&self, unit: Unit) -> Commit {
        self.store.submit(unit.writes)
    }

    /// A well-formed message from a board: update, record, and decide the answer.
    pub fn acon_message(&self, raw: &[u8], msg: &Message, peer: &str, now: i64) -> AconOutcome {
        self.stats.acon_messages.fetch_add(1, Ordering::Relaxed);
        let key = acon_key(&msg.id);
        let mut unit = Unit::new(now);
        let mut table = self.table();
        let dev = match table.entry(key.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if self.cfg.unknown_devices == UnknownPolicy::Reject => {
                drop(table);
                return AconOutcome::Rejected(self.refuse(key, peer, msg.send, unit));
            }
            Entry::Vacant(e) => {
                unit.event(
                    Some(key.clone()),
                    "registered",
                    "server",
                    json!({"peer": peer}),
                );
                e.insert(new_device("acon", &msg.id, now))
            }
        };
        dev.last_seen = Some(now);
        if !dev.online {
            dev.online = true;
            dev.presence_changed_at = now;
            unit.event(
                Some(key.clone()),
                "online",
                "server",
                json!({"reason": "message received"}),
            );
        }
        let events = dev.board.on_message(msg, peer, now);
        unit.rule_events(&key, events, "device");
        let answer = dev.board.answer(msg, now);
        let mut answer_bytes = Vec::with_capacity(128);
        answer.encode(&mut answer_bytes);
        // Every change to the device row comes with an event (see core/acon.rs); a message
        // that changes nothing else is recorded by its message row alone, which also carries
        // the latest message and last-seen time the row leaves out.
        if !unit.writes.is_empty() {
            unit.writes.push(Write::Device(dev.record()));
        }
        unit.writes.push(Write::Message(MessageRecord {
            device: key,
            at: now,
            send: i64::try_from(msg.send).ok(),
            peer: peer.to_string(),
            raw: String::from_utf8_lossy(raw).into_owned(),
            parsed: to_json(msg),
            answer: String::from_utf8_lossy(&answer_bytes).into_owned(),
        }));
        let commit = self.submit(unit);
        drop(table);
        AconOutcome::Answer(commit, answer_bytes)
    }

    /// Records a refused unknown board: one `rejected` event per board per
    /// [`REJECTED_EVENT_EVERY_MS`] (with the number refused since the last one), so a board
    /// retrying every second cannot flood the log. Every refusal is counted in the stats.
    fn refuse(&self, key: String, peer: &str, send: u64, mut unit: Unit) -> Option<Commit> {
        self.stats.acon_rejected.fetch_add(1, Ordering::Relaxed);
        let now = unit.now;
        let refused_since = self.rejected_event_due(&key, now)?;
        unit.event(
            Some(key),
            "rejected",
            "server",
            json!({"reason": "unknown device, policy reject", "peer": peer, "send": send,
                   "refused_since_last_event": refused_since}),
        );
        Some(self.submit(unit))
    }

    /// Whether a `rejected` event for `key` is due (at most one per
    /// [`REJECTED_EVENT_EVERY_MS`]): `Some(refusals since the last one)`, or `None` when the
    /// refusal is only counted.
    fn rejected_event_due(&self, key: &str, now: i64) -> Option<u64> {
        let mut seen = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(key) {
            Some((last, refused)) if now - *last < REJECTED_EVENT_EVERY_MS => {
                *refused += 1;
                None
            }
            Some((last, refused)) => {
                *last = now;
                Some(std::mem::take(refused))
            }
            None => {
                if seen.len() >= REJECTED_TRACKED {
                    seen.clear();
                }
                seen.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }

    /// A frame that is not a valid message: an error event with the reason and the raw bytes.
    pub fn acon_malformed(&self, raw: &[u8], reason: &str, peer: &str, now: i64) -> Commit {
        self.stats.acon_malformed.fetch_add(1, Ordering::Relaxed);
        const KEEP: usize = 1024;
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(KEEP)]).into_owned();
        let device = find_id(raw).map(|id| acon_key(&id));
        let mut unit = Unit::new(now);
        unit.event(
            device,
            "malformed",
            "device",
            json!({"reason": reason, "peer": peer, "raw": shown, "raw_len": raw.len(), "truncated": raw.len() > KEEP}),
        );
        self.submit(unit)
    }

    /// Marks silent devices offline. Returns the number that changed.
    pub async fn sweep_presence(&self, now: i64) -> Result<usize, StoreError> {
        let mut unit = Unit::new(now);
        let mut changed = 0;
        let commit = {
            let mut table = self.table();
            for dev in table.values_mut() {
                let silent_since = dev.last_seen.unwrap_or(dev.first_seen);
                if dev.online && now - silent_since >= self.cfg.presence_timeout_ms {
                    dev.online = false;
                    dev.presence_changed_at = now;
                    changed += 1;
                    unit.event(
                        Some(dev.key()),
                        "offline",
                        "server",
                        json!({"reason": "silent", "last_seen": dev.last_seen.map(crate::clock::rfc3339), "timeout_ms": self.cfg.presence_timeout_ms}),
                    );
                    unit.writes.push(Write::Device(dev.record()));
                }
            }
            drop(table);
            changed += self.sweep_skaben(&mut unit, now);
            if changed == 0 {
                return Ok(0);
            }
            self.submit(unit)
        };
        commit.wait().await?;
        Ok(changed)
    }

    /// Every device, ordered by key, optionally of one kind.
    pub fn list(&self, kind: Option<&str>) -> Vec<DeviceSummary> {
        let table = self.table();
        let mut out: Vec<DeviceSummary> = table
            .values()
            .filter(|d| kind.is_none_or(|k| d.kind == k))
            .map(|d| DeviceSummary {
                kind: d.kind.clone(),
                id: d.id.clone(),
                protocol: "acon",
                name: d.name.clone(),
                online: d.online,
                last_seen: d.last_seen,
                first_seen: d.first_seen,
                blocked: d.board.desired.blocked,
            })
            .collect();
        drop(table);
        self.skaben_summaries(kind, &mut out);
        out.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
        out
    }

    /// One ACon board: identity, presence, desired config, reported state.
    pub fn acon_board(&self, id: &str) -> Option<BoardView> {
        let table = self.table();
        let d = table.get(&acon_key(id))?;
        Some(BoardView {
            kind: d.kind.clone(),
            id: d.id.clone(),
            protocol: "acon",
            name: d.name.clone(),
            notes: d.notes.clone(),
            first_seen: d.first_seen,
            last_seen: d.last_seen,
            online: d.online,
            presence_changed_at: d.presence_changed_at,
            pending_reset: d.board.desired.pending_reset,
            blocked: d.board.desired.blocked,
            desired_version: d.board.desired_version,
            cols: d.board.size().map(|s| s.0),
            rows: d.board.size().map(|s| s.1),
            engaged_cells: d.board.desired.cells.len(),
            reported: ReportedView {
                message: d.board.reported.message.clone(),
                peer: d.board.reported.peer.clone(),
                last_send: d.board.reported.message.as_ref().map(|m| m.send),
                reboots: d.board.reported.reboots,
            },
        })
    }

    /// Every cell of a board's matrix with its lock, assignment, time-out and last opening.
    pub fn acon_cells(&self, id: &str, now: i64) -> Result<Vec<CellView>, CoreError> {
        let table = self.table();
        let d = table.get(&acon_key(id)).ok_or_else(|| not_found(id))?;
        let b = &d.board;
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
                    a.minutes_left(now).map(|m| EngagedView {
                        code: a.code.clone(),
                        expires_at: a.expires_at,
                        minutes_left: m,
                        single_use: a.single_use,
                        assigned_at: a.assigned_at,
                        assigned_by: a.assigned_by.clone(),
                    })
                });
                let expired_on_server = engaged.is_none()
                    && (b.reported.expired.contains_key(&cell)
                        || b.desired
                            .cells
                            .get(&cell)
                            .is_some_and(|a| a.expires_at <= now));
                CellView {
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

    /// Registers a board (or updates its name/notes/size) on an operator's request.
    pub async fn acon_register(
        &self,
        id: &str,
        req: RegisterRequest,
        actor: &str,
        now: i64,
    ) -> Result<(), CoreError> {
        if !valid_board_id(id) {
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
        let key = acon_key(id);
        let commit = {
            let mut table = self.table();
            let mut unit = Unit::new(now);
            let created = !table.contains_key(&key);
            let dev = table.entry(key.clone()).or_insert_with(|| {
                let mut d = new_device("acon", id, now);
                d.online = false;
                d
            });
            if let Some(name) = req.name {
                dev.name = name;
            }
            if let Some(notes) = req.notes {
                dev.notes = notes;
            }
            if size.is_some() {
                dev.board.reported.provisioned_size = size;
            }
            unit.event(
                Some(key),
                if created {
                    "registered"
                } else {
                    "device_updated"
                },
                actor,
                json!({"name": dev.name, "notes": dev.notes, "size": size}),
            );
            unit.writes.push(Write::Device(dev.record()));
            self.submit(unit)
        };
        commit.wait().await?;
        Ok(())
    }

    /// Engages a cell: gives it a code (generated when none is given) and a time limit.
    pub async fn acon_engage(
        &self,
        id: &str,
        cell: u32,
        req: EngageRequest,
        actor: &str,
        now: i64,
    ) -> Result<EngagedView, CoreError> {
        let expires_at = match (req.minutes, req.expires_at) {
            (Some(_), Some(_)) => {
                return Err(invalid("minutes", "give minutes or expires_at, not both"));
            }
            (None, None) => return Err(invalid("minutes", "required (or expires_at)")),
            (Some(m), None) if m < 1 => return Err(invalid("minutes", "must be at least 1")),
            (Some(m), None) => {
                let ms = m.checked_mul(60_000).and_then(|ms| now.checked_add(ms));
                ms.ok_or_else(|| invalid("minutes", "too large"))?
            }
            (None, Some(at)) if at <= now => {
                return Err(invalid("expires_at", "must be in the future"));
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
        let key = acon_key(id);
        let (commit, view) = {
            let mut table = self.table();
            let dev = table.get_mut(&key).ok_or_else(|| not_found(id))?;
            let mut unit = Unit::new(now);
            let expired = dev.board.expire(now);
            unit.rule_events(&key, expired, "server");
            let count = dev.board.cell_count().ok_or_else(|| {
                CoreError::Conflict(format!(
                    "board {id} has not reported its matrix (COLS/ROWS) yet; register it with cols and rows first"
                ))
            })?;
            if cell < 1 || cell > count {
                return Err(invalid(
                    "cell",
                    format!("outside the board's matrix: 1..={count}"),
                ));
            }
            let taken: Vec<&str> = dev
                .board
                .desired
                .cells
                .iter()
                .filter(|(c, _)| **c != cell)
                .map(|(_, a)| a.code.as_str())
                .collect();
            let code = match req.code {
                Some(code) => {
                    if let Some((other, _)) = dev
                        .board
                        .desired
                        .cells
                        .iter()
                        .find(|(c, a)| **c != cell && a.code == code)
                    {
                        return Err(CoreError::Conflict(format!(
                            "code {code} is already engaged on cell {other} of board {id}; two cells of a board never share a code"
                        )));
                    }
                    code
                }
                None => generate_code(self.cfg.code_length, &taken).ok_or_else(|| {
                    CoreError::Conflict(format!(
                        "no free {}-digit code left on board {id}; raise --code-length",
                        self.cfg.code_length
                    ))
                })?,
            };
            let a = Assignment {
                code,
                expires_at,
                single_use: req.single_use.unwrap_or(false),
                assigned_at: now,
                assigned_by: actor.to_string(),
            };
            let from = dev.board.desired_version;
            dev.board.desired.cells.insert(cell, a.clone());
            dev.board.reported.expired.remove(&cell);
            dev.board.desired_version += 1;
            unit.event(
                Some(key),
                "cell_engaged",
                actor,
                json!({"cell": cell, "code": a.code, "expires_at": crate::clock::rfc3339(a.expires_at), "single_use": a.single_use,
                       "version": {"from": from, "to": dev.board.desired_version}}),
            );
            unit.writes.push(Write::Device(dev.record()));
            let view = EngagedView {
                minutes_left: a.minutes_left(now).unwrap_or(1),
                code: a.code,
                expires_at: a.expires_at,
                single_use: a.single_use,
                assigned_at: a.assigned_at,
                assigned_by: a.assigned_by,
            };
            (self.submit(unit), view)
        };
        commit.wait().await?;
        Ok(view)
    }

    /// Releases a cell's assignment. `NotFound` if the cell was not engaged.
    pub async fn acon_release(
        &self,
        id: &str,
        cell: u32,
        actor: &str,
        now: i64,
    ) -> Result<(), CoreError> {
        self.acon_change(id, actor, now, |board| {
            let count = board.cell_count().unwrap_or(0);
            if cell < 1 || cell > count {
                return Err(invalid(
                    "cell",
                    format!("outside the board's matrix: 1..={count}"),
                ));
            }
            match board.desired.cells.remove(&cell) {
                Some(a) => Ok(("cell_released", json!({"cell": cell, "code": a.code}))),
                None => Err(CoreError::NotFound(format!(
                    "cell {cell} of board {id} is not engaged"
                ))),
            }
        })
        .await
    }

    /// Asks the board to reboot (RESET=1 until it reports the reboot).
    pub async fn acon_reset(&self, id: &str, actor: &str, now: i64) -> Result<(), CoreError> {
        self.acon_change(id, actor, now, |board| {
            board.desired.pending_reset = true;
            Ok(("reset_requested", json!({})))
        })
        .await
    }

    /// Blocks (STATE=3) or unblocks the board's keypad.
    pub async fn acon_block(
        &self,
        id: &str,
        blocked: bool,
        actor: &str,
        now: i64,
    ) -> Result<(), CoreError> {
        self.acon_change(id, actor, now, |board| {
            board.desired.blocked = blocked;
            Ok((if blocked { "blocked" } else { "unblocked" }, json!({})))
        })
        .await
    }

    /// An operator change to a board's desired config: applied, versioned, recorded with who
    /// made it, durable before it returns.
    async fn acon_change(
        &self,
        id: &str,
        actor: &str,
        now: i64,
        change: impl FnOnce(&mut BoardState) -> Result<(&'static str, serde_json::Value), CoreError>,
    ) -> Result<(), CoreError> {
        let key = acon_key(id);
        let commit = {
            let mut table = self.table();
            let dev = table.get_mut(&key).ok_or_else(|| not_found(id))?;
            let (kind, mut data) = change(&mut dev.board)?;
            let from = dev.board.desired_version;
            dev.board.desired_version += 1;
            data["version"] = json!({"from": from, "to": dev.board.desired_version});
            let mut unit = Unit::new(now);
            unit.event(Some(key), kind, actor, data);
            unit.writes.push(Write::Device(dev.record()));
            self.submit(unit)
        };
        commit.wait().await?;
        Ok(())
    }
}

fn not_found(id: &str) -> CoreError {
    CoreError::NotFound(format!("no board acon/{id}"))
}

fn new_device(kind: &str, id: &str, now: i64) -> Device {
    Device {
        kind: kind.to_string(),
        id: id.to_string(),
        name: String::new(),
        notes: String::new(),
        first_seen: now,
        last_seen: None,
        online: false,
        presence_changed_at: now,
        board: BoardState::default(),
    }
}

fn valid_board_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
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

/// Looks for an `ID=` line in a malformed frame, to file its event under the board.
fn find_id(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == "ID" && valid_board_id(v.trim())).then(|| v.trim().to_string())
    })
}

/// Body of `PUT /api/devices/acon/{id}/cells/{cell}`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
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
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub name: Option<String>,
    pub notes: Option<String>,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceSummary {
    pub kind: String,
    pub id: String,
    pub protocol: &'static str,
    pub name: String,
    pub online: bool,
    #[serde(serialize_with = "crate::clock::ser_opt")]
    pub last_seen: Option<i64>,
    #[serde(serialize_with = "crate::clock::ser")]
    pub first_seen: i64,
    pub blocked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BoardView {
    pub kind: String,
    pub id: String,
    pub protocol: &'static str,
    pub name: String,
    pub notes: String,
    #[serde(serialize_with = "crate::clock::ser")]
    pub first_seen: i64,
    #[serde(serialize_with = "crate::clock::ser_opt")]
    pub last_seen: Option<i64>,
    pub online: bool,
    #[serde(serialize_with = "crate::clock::ser")]
    pub presence_changed_at: i64,
    pub pending_reset: bool,
    pub blocked: bool,
    pub desired_version: i64,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    pub engaged_cells: usize,
    pub reported: ReportedView,
}

/// What the board last reported, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct ReportedView {
    /// The latest well-formed message, parsed.
    pub message: Option<Message>,
    pub peer: Option<String>,
    pub last_send: Option<u64>,
    pub reboots: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EngagedView {
    pub code: String,
    #[serde(serialize_with = "crate::clock::ser")]
    pub expires_at: i64,
    pub minutes_left: u32,
    pub single_use: bool,
    #[serde(serialize_with = "crate::clock::ser")]
    pub assigned_at: i64,
    pub assigned_by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellView {
    pub cell: u32,
    pub row: u32,
    pub col: u32,
    /// From the last ACT_CON; `None` if the board has not reported one.
    pub lock_connected: Option<bool>,
    pub engaged: Option<EngagedView>,
    /// The board listed the cell in BOX_ENG in its last message.
    pub engaged_on_board: bool,
    pub timed_out: bool,
    #[serde(serialize_with = "crate::clock::ser_opt")]
    pub last_opened: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn id_is_found_in_a_malformed_frame() {
        assert_eq!(
            find_id(b"ACon_V1.0\r\nID=1953\r\nSEND=abc\r\nCLOSE\r\n").as_deref(),
            Some("1953")
        );
        assert_eq!(find_id(b"ACon_V1.0\nSEND=1\nCLOSE\n"), None);
    }
}
