//! The store: everything gatehouse must not lose.
//!
//! The core talks to a [`Store`] and never to a database directly. Writes are submitted as
//! one unit per inbound message or operator action ([`Store::submit`]) and applied by a single
//! writer in batches (group commit: many units per transaction, one fsync per batch); a unit
//! is acknowledged only once its transaction is durable. Reads of history (messages, events)
//! go to the store; the live device table is kept in memory by the core and loaded from the
//! store at start-up.
//!
//! Backends: SQLite ([`sqlite::SqliteStore`], the default, one file under the data directory).
//! PostgreSQL follows behind the same trait.

pub mod health;
pub mod retention;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use thiserror::Error;
use tokio::sync::oneshot;

/// A store failure, with enough context for an operator to act.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(String),
    #[error("the store is shut down")]
    Closed,
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    /// The database file is not one, or is damaged: refused at start.
    #[error("{0}")]
    Damaged(String),
}

pub type StoreResult<T> = Result<T, StoreError>;
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// A device, as persisted: identity, presence, desired config and reported state.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub kind: String,
    pub id: String,
    pub protocol: String,
    pub name: String,
    pub notes: String,
    pub first_seen: i64,
    pub last_seen: Option<i64>,
    pub online: bool,
    pub presence_changed_at: i64,
    pub desired_version: i64,
    /// JSON document; its shape belongs to the protocol's part of the core.
    pub desired: String,
    /// JSON document; its shape belongs to the protocol's part of the core.
    pub reported: String,
}

/// A device as loaded at start-up: its row and its newest message.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDevice {
    pub record: DeviceRecord,
    pub last_message: Option<MessageRecord>,
}

/// One inbound message with the answer it got.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRecord {
    /// `<kind>/<id>`.
    pub device: String,
    pub at: i64,
    pub send: Option<i64>,
    pub peer: String,
    pub raw: String,
    /// The parsed message, JSON.
    pub parsed: String,
    /// The answer sent, as on the wire (empty if none).
    pub answer: String,
}

/// One entry of the append-only event log.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub at: i64,
    /// `<kind>/<id>`, if the event concerns a device.
    pub device: Option<String>,
    pub kind: String,
    /// Who caused it: `device`, `server`, or the operator (`admin`).
    pub actor: String,
    /// JSON object with the event's details.
    pub data: String,
}

/// A SKABEN device type, as persisted (its shape belongs to the core).
#[derive(Debug, Clone, PartialEq)]
pub struct TypeRecord {
    pub name: String,
    /// JSON document.
    pub data: String,
}

/// An MQTT credential, as persisted (the secret only hashed; its shape belongs to the core).
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRecord {
    pub username: String,
    /// Who it lets a client act as (`device:<type>/<id>`, `type:<type>`, `observer:<name>`).
    pub subject: String,
    pub hash: String,
    pub created_at: i64,
}

/// One write of a unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Device(DeviceRecord),
    Message(MessageRecord),
    Event(EventRecord),
    /// Insert or replace a device type.
    DeviceType(TypeRecord),
    /// Insert or replace a credential (by username).
    Credential(CredentialRecord),
    /// Remove the credential with this username.
    DeleteCredential(String),
    /// Insert or replace a row of the game: `rules` (the rule file, TOML) or `state` (the game
    /// state, JSON; its shape belongs to `core::game`).
    Game {
        key: String,
        data: String,
    },
    /// Insert or replace (`Some`) or remove (`None`) a row of the console's accounts:
    /// `user:<name>`, `token:<name>`, `session:<hash>` (JSON; shapes belong to
    /// `core::accounts`).
    Account {
        key: String,
        data: Option<String>,
    },
}

/// A stored message, read back.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: i64,
    pub record: MessageRecord,
}

/// A stored event, read back.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub record: EventRecord,
}

/// Which events to read: newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub device: Option<String>,
    pub kind: Option<String>,
    pub limit: u32,
}

/// Which events to search for ([`Store::search_events`]): every field that is set narrows
/// the search; the answer is newest first (by `seq`), at most `limit`. What the console's
/// event log, its export and the audit read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSearch {
    /// Only this device's (`acon/1`, `lock/1`).
    pub device: Option<String>,
    /// Only events of one of these kinds (empty: of any kind).
    pub kinds: Vec<String>,
    /// Only this actor's (`device`, `server`, an account, `token:<name>`).
    pub actor: Option<String>,
    /// Only what an operator did: an actor that is not `device`, `server` or a rule's
    /// (`rule:<name>`), i.e. an account or a token.
    pub operators_only: bool,
    /// Only events with `from <= at` (ms).
    pub from: Option<i64>,
    /// Only events with `at < to` (ms).
    pub to: Option<i64>,
    /// Only events with `seq < before`: the next page back.
    pub before: Option<i64>,
    /// Only events with `seq > after`: what came since.
    pub after: Option<i64>,
    pub limit: u32,
}

/// What a stream catching up reads ([`Store::events_after`]): the events after a seq that
/// match a filter, and the bounds of the log, all from one snapshot of the store.
#[derive(Debug, Clone, Default)]
pub struct EventsAfter {
    /// Oldest first.
    pub events: Vec<StoredEvent>,
    /// The oldest and newest seq kept, of any event (`None`: the log is empty).
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
}

/// A latency histogram, Prometheus-style: cumulative counts per upper bound (seconds), the sum
/// of all observations and their number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// `(upper bound in seconds, observations ≤ it)`, ascending; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

/// How the store is doing: for `/readyz`, `/metrics` and `/api/stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreHealth {
    /// Units are being committed durably. `false` once a commit failed (until one succeeds)
    /// or the database file is gone or replaced (until restart).
    pub writable: bool,
    /// Why not, naming the path, for logs and `/readyz`.
    pub problem: Option<String>,
    /// Units that failed to commit since start.
    pub failures: u64,
    /// Units waiting for the writer.
    pub queue_depth: u64,
    /// The database on disk (main file + WAL), bytes.
    pub db_bytes: u64,
    /// Time from a unit's submission to its commit.
    pub commit_latency: Histogram,
    /// Rows removed by retention since start.
    pub retention_removed_messages: u64,
    pub retention_removed_events: u64,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            writable: true,
            problem: None,
            failures: 0,
            queue_depth: 0,
            db_bytes: 0,
            commit_latency: Histogram::default(),
            retention_removed_messages: 0,
            retention_removed_events: 0,
        }
    }
}

/// The seqs a committed unit's events were given, in the order of its [`Write::Event`]s
/// (empty for a unit without events).
pub type Seqs = Vec<i64>;

/// Resolves when a submitted unit is durable (or failed); once durable, with the seqs of its
/// events.
pub struct Commit(oneshot::Receiver<StoreResult<Seqs>>);

impl Commit {
    pub fn new(rx: oneshot::Receiver<StoreResult<Seqs>>) -> Self {
        Commit(rx)
    }

    /// Waits for the unit to be durable.
    pub async fn wait(self) -> StoreResult<()> {
        self.seqs().await.map(drop)
    }

    /// Waits for the unit to be durable and returns the seqs of its events.
    pub async fn seqs(self) -> StoreResult<Seqs> {
        self.0.await.unwrap_or(Err(StoreError::Closed))
    }
}

/// The store as the core sees it.
pub trait Store: Send + Sync + 'static {
    /// Queues a unit of writes. Units are applied in the order they are submitted; the
    /// returned [`Commit`] resolves once the unit is durable. Never blocks.
    fn submit(&self, writes: Vec<Write>) -> Commit;

    /// Queues a unit nobody waits for (the record of a packet that needs no answer once
    /// durable). Same order and durability as [`Store::submit`]; the store may hold it a few
    /// milliseconds to commit it with others. The [`Commit`] may be dropped; the core keeps it
    /// to deliver the unit's events once it is durable.
    fn submit_background(&self, writes: Vec<Write>) -> Commit {
        self.submit(writes)
    }

    /// Every device with its newest message, for the core's table at start-up.
    fn load_devices(&self) -> StoreFuture<'_, Vec<LoadedDevice>>;

    /// Every device type.
    fn load_types(&self) -> StoreFuture<'_, Vec<TypeRecord>>;

    /// Every MQTT credential.
    fn load_credentials(&self) -> StoreFuture<'_, Vec<CredentialRecord>>;

    /// The game's rows (`rules`, `state`), if any.
    fn load_game(&self) -> StoreFuture<'_, Vec<(String, String)>>;

    /// The console's account rows (`user:…`, `token:…`, `session:…`), by key.
    fn load_accounts(&self) -> StoreFuture<'_, Vec<(String, String)>>;

    /// Events with `from <= at < to` and `seq > after`, oldest first, at most `limit`: a
    /// replay's input and a run's timeline, read in pages.
    fn events_between(
        &self,
        from: i64,
        to: i64,
        after: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<StoredEvent>>;

    /// The newest `limit` traces (`rule_fired` events) of a rule, newest first.
    fn rule_traces(&self, rule: String, limit: u32) -> StoreFuture<'_, Vec<StoredEvent>>;

    /// The newest `limit` messages of a device, newest first.
    fn messages(&self, device: String, limit: u32) -> StoreFuture<'_, Vec<StoredMessage>>;

    /// Events matching the filter, newest first.
    fn events(&self, filter: EventFilter) -> StoreFuture<'_, Vec<StoredEvent>>;

    /// Events matching the search, newest first, at most `search.limit`.
    fn search_events(&self, search: EventSearch) -> StoreFuture<'_, Vec<StoredEvent>>;

    /// Events matching the filter's device and kind with `after < seq <= newest`, oldest
    /// first, at most `filter.limit`, with the oldest and newest seq of the whole log, read
    /// from one snapshot: what an event stream resumed after `after` has missed.
    fn events_after(&self, filter: EventFilter, after: i64) -> StoreFuture<'_, EventsAfter>;

    /// How the store is doing (cheap: counters and the last check, no I/O on the caller's
    /// thread).
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }

    /// The count of units that failed to commit, shared with the core's `Stats` (so
    /// `store_failures` in `/api/stats` and `health().failures` are one number).
    fn failure_counter(&self) -> Arc<AtomicU64> {
        Arc::default()
    }

    /// Applies everything submitted so far and closes. Later submits fail with `Closed`.
    fn close(&self) -> StoreFuture<'_, ()>;
}
