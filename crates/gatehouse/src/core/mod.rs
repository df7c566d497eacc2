//! The core: one device table, and one path every change takes through it.
//!
//! - [`change`] — the state ([`State`]: devices, SKABEN types, the rate limits) and the change
//!   path ([`Hub::change`]): a closure over the state and an [`Effects`] collector; the
//!   effects (store writes, publishes, typed events) are submitted as one unit under the same
//!   lock, or returned without being submitted by a dry run ([`Hub::dry_run`]).
//! - [`device`] — the device model: identity, presence, and the protocol state of a board or
//!   a prop, stored and loaded one way.
//! - [`acon`] — the ACon rules: what a board's message changes and what it is answered, and
//!   the operator's changes to a board.
//! - [`skaben`] — the SKABEN rules: device types, versioned configs, push tracking, one
//!   function per inbound command, and the operator's changes to props and types.
//! - [`event`] — the one list of events.
//!
//! Invariants:
//! - Every change and its effects are submitted while the state is locked, so the store's
//!   order is the order of changes; the caller answers (the board, the API client, the
//!   broker's PUBACK of a SUP/INFO) only after its unit is durable.
//! - A change validates before it mutates: a change that fails leaves the state as it was and
//!   submits nothing.
//! - The table in memory is what the store holds plus the units in flight; it is rebuilt from
//!   the store at start-up.
//! - Events reach subscribers only after their unit is committed, in commit order.
//! - No I/O here besides the store and the bus: the gateways own sockets, and time is passed in.

pub mod access;
pub mod accounts;
pub mod acon;
pub mod change;
pub mod device;
pub mod event;
pub mod game;
pub mod skaben;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ::acon::Message;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use self::acon::{
    AconConn, BoardSnapshot, CellSnapshot, EngageRequest, EngagedSnapshot, NetworkChoice,
    PendingNetwork, Refusal, RegisterRequest, ReportedSnapshot,
};
pub use self::change::{Counts, Effects, Publish, State};
pub use self::device::{Device, DeviceState, DeviceSummary, DeviceView};
pub use self::event::{CommittedEvent, Event, RecordedEvent};
pub use self::skaben::{ConfigEdit, PropSnapshot, SkabenRegister, TypeSnapshot, TypeUpdate};
use crate::bus::{Bus, PacketHandler};
use crate::store::{Commit, Seqs, Store, StoreError, StoreResult};

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
#[derive(Debug, Clone, PartialEq)]
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
    /// Refuse a known board's frames from a network it has not used until an operator
    /// accepts the network (`--acon-pin-peers`).
    pub acon_pin_peers: bool,
    /// New boards registered per minute at most; 0: no cap (`--acon-max-new-boards-per-min`).
    pub acon_max_new_boards_per_min: u32,
    /// Messages per second one board may send (bursts of twice that); 0: no limit.
    pub acon_max_messages_per_sec: f64,
    /// Packets per second one SKABEN device may send (bursts of twice that); 0: no limit.
    pub skaben_max_packets_per_sec: f64,
    /// Largest SKABEN payload, bytes, unless the type says otherwise; 0: the broker's limit.
    pub skaben_max_payload_bytes: usize,
    /// The venue's time zone for rule schedules (IANA name); `None`: the system's.
    pub timezone: Option<String>,
}

/// Errors of changes, each mapped to an HTTP status by `http`.
#[derive(Debug, Error)]
pub enum CoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0}")]
    Conflict(String),
    /// A rule file (or one rule) refused: every error found.
    #[error("{}", .0.first().map(ToString::to_string).unwrap_or_default())]
    Rules(Vec<game::RuleError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `s` whole if it has at most `max` bytes, else its first bytes (cut at a character
/// boundary) and `…`: what events and rows keep of text a device or a client chose.
pub(crate) fn clip_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> CoreError {
    CoreError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Counters since start, for `/api/stats` and the logs.
#[derive(Debug, Default)]
pub struct Stats {
    pub acon_messages: AtomicU64,
    pub acon_malformed: AtomicU64,
    pub acon_rejected: AtomicU64,
    /// Connections closed at accept: the peer is outside `--acon-allow`.
    pub acon_not_allowed: AtomicU64,
    /// Frames refused because another connection holds their board, or their connection
    /// holds another board.
    pub acon_id_conflicts: AtomicU64,
    /// Frames refused under `--acon-pin-peers` (a network the board has not used).
    pub acon_peer_refused: AtomicU64,
    /// New boards refused over `--acon-max-new-boards-per-min`.
    pub acon_registrations_capped: AtomicU64,
    /// Units that failed to commit: the store's own count (`Store::failure_counter`, also
    /// `StoreHealth::failures`), shared.
    pub store_failures: Arc<AtomicU64>,
    pub skaben_packets: AtomicU64,
    pub skaben_malformed: AtomicU64,
    pub skaben_rejected: AtomicU64,
    pub skaben_cups_sent: AtomicU64,
    pub skaben_publish_failures: AtomicU64,
    pub mqtt_refused_logins: AtomicU64,
    pub mqtt_refused_publishes: AtomicU64,
    pub mqtt_refused_subscribes: AtomicU64,
    /// SKABEN packets refused: larger than their type's payload limit.
    pub skaben_too_large: AtomicU64,
    /// SKABEN packets refused: their device is over its packet rate.
    pub skaben_rate_limited: AtomicU64,
    /// ACon frames refused: their board is over its message rate.
    pub acon_rate_limited: AtomicU64,
    /// HTTP connections closed at accept: `--http-max-connections` were open.
    pub http_refused_full: AtomicU64,
    /// HTTP connections closed at accept: `--http-max-connections-per-addr` were open from
    /// the peer's address.
    pub http_refused_per_addr: AtomicU64,
    /// HTTP connections closed by the header deadline (`--http-header-timeout-secs`).
    pub http_header_timeouts: AtomicU64,
    /// HTTP requests answered 503 after `--http-request-timeout-secs`.
    pub http_request_timeouts: AtomicU64,
    /// Failed accepts on the HTTP listeners (e.g. out of file descriptors).
    pub http_accept_errors: AtomicU64,
    /// ACon connections accepted and closed at once: the listener was full
    /// (`--acon-max-connections`, after the file-descriptor budget).
    pub acon_refused_full: AtomicU64,
    /// ACon connections accepted and closed at once: their address had
    /// `--acon-max-connections-per-addr` open.
    pub acon_refused_per_addr: AtomicU64,
    /// ACon `accept` failures (out of file descriptors and the like).
    pub acon_accept_errors: AtomicU64,
    /// MQTT logins refused: their address had `--mqtt-max-connections-per-addr` connected.
    pub mqtt_refused_per_addr: AtomicU64,
    /// MQTT clients disconnected for not taking their messages
    /// (`--mqtt-max-queued-messages` / `--mqtt-max-queued-bytes`).
    pub mqtt_too_slow: AtomicU64,
    /// MQTT clients with keep-alive 0 closed after `--mqtt-silence-timeout-secs` of silence.
    pub mqtt_silent_closed: AtomicU64,
    /// Gauges: connections open now, per listener (kept by the gateways and `http`).
    pub acon_connections: AtomicU64,
    pub mqtt_connections: AtomicU64,
    pub http_connections: AtomicU64,
    /// Event streams open (`GET /api/events/stream`), kept by `http`.
    pub http_streams: AtomicU64,
    /// Committed events the rule engine did not see: it fell behind the stream.
    pub rules_lagged: AtomicU64,
    /// Rule firings (matched and run).
    pub rule_firings: AtomicU64,
    /// Chains of firings stopped at the depth limit.
    pub rule_chains_stopped: AtomicU64,
    /// Firings that matched and did not run: the rule was paused by its rate, or its mode
    /// said so.
    pub rule_firings_skipped: AtomicU64,
    /// Webhook calls dropped: the queue was full (or the engine not started); shared with
    /// the delivery task, which hands them over.
    pub webhooks_dropped: Arc<AtomicU64>,
    /// Console logins refused: a wrong name or password.
    pub logins_failed: AtomicU64,
    /// Console logins refused unchecked: the account or the address was backing off.
    pub logins_backed_off: AtomicU64,
}

/// Whether a [`Stats`] entry only grows (a Prometheus counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    Counter,
    Gauge,
}

impl Stats {
    /// Every counter and gauge: `(name, kind, help, value)`. `/api/stats` and `/metrics`
    /// render this list, so a new counter is added here once and shows in both.
    pub fn entries(&self) -> Vec<(&'static str, StatKind, &'static str, u64)> {
        use StatKind::{Counter, Gauge};
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (
                "acon_messages",
                Counter,
                "ACon messages recorded and answered",
                n(&self.acon_messages),
            ),
            (
                "acon_malformed",
                Counter,
                "ACon frames that were not valid messages",
                n(&self.acon_malformed),
            ),
            (
                "acon_rejected",
                Counter,
                "ACon frames of unknown boards refused (--unknown-devices reject)",
                n(&self.acon_rejected),
            ),
            (
                "acon_not_allowed",
                Counter,
                "ACon connections closed at accept: outside --acon-allow",
                n(&self.acon_not_allowed),
            ),
            (
                "acon_id_conflicts",
                Counter,
                "ACon frames refused: another connection holds the board",
                n(&self.acon_id_conflicts),
            ),
            (
                "acon_peer_refused",
                Counter,
                "ACon frames refused from a network the board has not used (--acon-pin-peers)",
                n(&self.acon_peer_refused),
            ),
            (
                "acon_registrations_capped",
                Counter,
                "new ACon boards refused over --acon-max-new-boards-per-min",
                n(&self.acon_registrations_capped),
            ),
            (
                "store_failures",
                Counter,
                "store units that failed to commit",
                n(&self.store_failures),
            ),
            (
                "skaben_packets",
                Counter,
                "SKABEN packets recorded",
                n(&self.skaben_packets),
            ),
            (
                "skaben_malformed",
                Counter,
                "SKABEN packets that did not parse",
                n(&self.skaben_malformed),
            ),
            (
                "skaben_rejected",
                Counter,
                "SKABEN packets of unknown devices or types refused",
                n(&self.skaben_rejected),
            ),
            (
                "skaben_cups_sent",
                Counter,
                "SKABEN config pushes (CUP) sent",
                n(&self.skaben_cups_sent),
            ),
            (
                "skaben_publish_failures",
                Counter,
                "publishes to devices that could not be queued",
                n(&self.skaben_publish_failures),
            ),
            (
                "mqtt_refused_logins",
                Counter,
                "MQTT logins refused",
                n(&self.mqtt_refused_logins),
            ),
            (
                "mqtt_refused_publishes",
                Counter,
                "MQTT publishes refused by the topic rules",
                n(&self.mqtt_refused_publishes),
            ),
            (
                "mqtt_refused_subscribes",
                Counter,
                "MQTT subscriptions refused by the topic rules",
                n(&self.mqtt_refused_subscribes),
            ),
            (
                "skaben_too_large",
                Counter,
                "SKABEN packets refused: over the payload limit",
                n(&self.skaben_too_large),
            ),
            (
                "skaben_rate_limited",
                Counter,
                "SKABEN packets refused: the device is over its packet rate",
                n(&self.skaben_rate_limited),
            ),
            (
                "acon_rate_limited",
                Counter,
                "ACon frames refused: the board is over its message rate",
                n(&self.acon_rate_limited),
            ),
            (
                "http_refused_full",
                Counter,
                "HTTP connections closed at accept: --http-max-connections were open",
                n(&self.http_refused_full),
            ),
            (
                "http_refused_per_addr",
                Counter,
                "HTTP connections closed at accept: --http-max-connections-per-addr were open from the address",
                n(&self.http_refused_per_addr),
            ),
            (
                "http_header_timeouts",
                Counter,
                "HTTP connections closed by the header deadline: a request's headers incomplete, or idle between requests, for --http-header-timeout-secs",
                n(&self.http_header_timeouts),
            ),
            (
                "http_request_timeouts",
                Counter,
                "HTTP requests answered 503 after --http-request-timeout-secs",
                n(&self.http_request_timeouts),
            ),
            (
                "http_accept_errors",
                Counter,
                "failed accepts on the HTTP listeners (e.g. out of file descriptors)",
                n(&self.http_accept_errors),
            ),
            (
                "acon_refused_full",
                Counter,
                "ACon connections closed at accept: --acon-max-connections open",
                n(&self.acon_refused_full),
            ),
            (
                "acon_refused_per_addr",
                Counter,
                "ACon connections closed at accept: --acon-max-connections-per-addr open from their address",
                n(&self.acon_refused_per_addr),
            ),
            (
                "acon_accept_errors",
                Counter,
                "ACon accept failures (e.g. out of file descriptors)",
                n(&self.acon_accept_errors),
            ),
            (
                "mqtt_refused_per_addr",
                Counter,
                "MQTT logins refused: --mqtt-max-connections-per-addr connected from their address",
                n(&self.mqtt_refused_per_addr),
            ),
            (
                "mqtt_too_slow",
                Counter,
                "MQTT clients disconnected for not taking their messages (--mqtt-max-queued-messages/-bytes)",
                n(&self.mqtt_too_slow),
            ),
            (
                "mqtt_silent_closed",
                Counter,
                "MQTT clients with keep-alive 0 closed after --mqtt-silence-timeout-secs without a packet",
                n(&self.mqtt_silent_closed),
            ),
            (
                "rules_lagged",
                Counter,
                "committed events the rule engine skipped: it fell more than 8192 events behind",
                n(&self.rules_lagged),
            ),
            (
                "rule_firings",
                Counter,
                "rule firings (matched and run)",
                n(&self.rule_firings),
            ),
            (
                "rule_chains_stopped",
                Counter,
                "chains of rule firings stopped at the depth limit",
                n(&self.rule_chains_stopped),
            ),
            (
                "rule_firings_skipped",
                Counter,
                "rule firings that matched but did not run: paused by the rule's rate, or its mode",
                n(&self.rule_firings_skipped),
            ),
            (
                "webhooks_dropped",
                Counter,
                "webhook calls dropped: their queue was full",
                n(&self.webhooks_dropped),
            ),
            (
                "logins_failed",
                Counter,
                "console logins refused: a wrong name or password",
                n(&self.logins_failed),
            ),
            (
                "logins_backed_off",
                Counter,
                "console logins refused unchecked while their account or address backs off",
                n(&self.logins_backed_off),
            ),
            (
                "acon_connections",
                Gauge,
                "ACon connections open",
                n(&self.acon_connections),
            ),
            (
                "mqtt_connections",
                Gauge,
                "MQTT clients connected to the embedded broker",
                n(&self.mqtt_connections),
            ),
            (
                "http_connections",
                Gauge,
                "HTTP connections open",
                n(&self.http_connections),
            ),
            (
                "http_streams",
                Gauge,
                "event streams open (GET /api/events/stream)",
                n(&self.http_streams),
            ),
        ]
    }

    fn add(&self, c: &Counts) {
        for (stat, n) in [
            (&self.acon_messages, c.acon_messages),
            (&self.acon_malformed, c.acon_malformed),
            (&self.acon_rejected, c.acon_rejected),
            (&self.acon_id_conflicts, c.acon_id_conflicts),
            (&self.acon_peer_refused, c.acon_peer_refused),
            (&self.acon_registrations_capped, c.acon_registrations_capped),
            (&self.skaben_packets, c.skaben_packets),
            (&self.skaben_malformed, c.skaben_malformed),
            (&self.skaben_rejected, c.skaben_rejected),
            (&self.skaben_cups_sent, c.skaben_cups_sent),
            (&self.mqtt_refused_logins, c.mqtt_refused_logins),
            (&self.mqtt_refused_publishes, c.mqtt_refused_publishes),
            (&self.mqtt_refused_subscribes, c.mqtt_refused_subscribes),
            (&self.skaben_too_large, c.skaben_too_large),
            (&self.skaben_rate_limited, c.skaben_rate_limited),
            (&self.acon_rate_limited, c.acon_rate_limited),
            (&self.rule_firings, c.rule_firings),
            (&self.rule_chains_stopped, c.rule_chains_stopped),
            (&self.rule_firings_skipped, c.rule_firings_skipped),
        ] {
            if n > 0 {
                stat.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// A typed change an operator (through `http`) or a rule can ask for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Register a board, or change its name, notes or provisioned size.
    RegisterBoard { id: String, req: RegisterRequest },
    /// Give a cell a code (generated when none is given) and a time limit.
    Engage {
        id: String,
        cell: u32,
        req: EngageRequest,
    },
    /// End a cell's assignment.
    Release { id: String, cell: u32 },
    /// Ask a board to reboot.
    Reset { id: String },
    /// Block or unblock a board's keypad.
    Block { id: String, blocked: bool },
    /// Add a network to the ones a board may connect from (`--acon-pin-peers`), or accept the
    /// one last refused.
    AcceptNetwork { id: String, network: NetworkChoice },
    /// Register a prop, or change its name, notes or profile.
    RegisterProp {
        ty: String,
        id: String,
        req: SkabenRegister,
    },
    /// Replace or merge-patch a prop's config, then push it.
    SetConfig {
        ty: String,
        id: String,
        edit: ConfigEdit,
    },
    /// Send a prop its config again.
    PushDevice { ty: String, id: String },
    /// Create or change a device type.
    PutType { name: String, update: TypeUpdate },
    /// Broadcast a type's config to `<type>/all/cup`.
    PushType { name: String },
    /// Issue (or rotate) an MQTT credential; `hash` is the stored form of its password
    /// ([`access::hash_generated`] or [`access::hash_chosen`]).
    IssueCredential {
        subject: access::Subject,
        username: String,
        hash: String,
    },
    /// Revoke an MQTT credential and disconnect its sessions.
    RevokeCredential { subject: access::Subject },
}

/// What a [`Command`] returns: a snapshot of what it changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Board(Box<BoardSnapshot>),
    Engaged(EngagedSnapshot),
    Released,
    Prop {
        page: Box<PropSnapshot>,
        created: bool,
    },
    Type {
        view: TypeSnapshot,
        created: bool,
    },
    Credential {
        view: access::CredentialView,
        rotated: bool,
    },
    Revoked,
}

/// What became of an inbound ACon message.
pub enum AconOutcome {
    /// Send `answer` (the encoded answer) once `commit` is durable. `displaced`: the older
    /// connection (same address) this frame's connection took the board over from; close it.
    Answer {
        commit: Commit,
        answer: Vec<u8>,
        displaced: Option<u64>,
    },
    /// Refused (an unknown board under `--unknown-devices reject`, or a guard): no answer,
    /// close the connection. The commit of the event, if one was written (they are
    /// rate-limited).
    Refused {
        commit: Option<Commit>,
        why: Refusal,
    },
}

/// A committed unit's events on their way to subscribers, and the caller's commit.
struct Forward {
    commit: Commit,
    events: Vec<RecordedEvent>,
    /// Webhook calls of the unit's firings: sent once it is committed.
    webhooks: Vec<crate::gateway::webhook::WebhookCall>,
    reply: oneshot::Sender<StoreResult<Seqs>>,
}

/// How many recorded events a subscriber may fall behind before it is told it lagged.
const SUBSCRIBER_BUFFER: usize = 8192;

/// The device table and the change path. Shared by the gateways, the timers and `http`.
pub struct Hub {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    cfg: CoreConfig,
    state: Mutex<State>,
    /// Units with events, in submission order, to the task that delivers their events once
    /// committed.
    forward: mpsc::UnboundedSender<Forward>,
    events: broadcast::Sender<Arc<CommittedEvent>>,
    /// The webhook sender, once the engine is started (shared with the delivery task).
    webhooks: Arc<std::sync::OnceLock<crate::gateway::webhook::Webhooks>>,
    pub stats: Stats,
}

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

impl Hub {
    /// Builds the table from the store (seeding the SKABEN types on first start) and starts
    /// the task that delivers committed events. Call inside a Tokio runtime.
    pub async fn load(
        store: Arc<dyn Store>,
        cfg: CoreConfig,
        bus: Arc<dyn Bus>,
        now: i64,
    ) -> Result<Hub, StoreError> {
        let mut state = State::new(cfg.clone(), now);
        let seed = state.load_types(store.load_types().await?, now)?;
        if !seed.is_empty() {
            store.submit(seed).wait().await?;
        }
        for loaded in store.load_devices().await? {
            let dev = Device::load(loaded)?;
            state.devices.insert(dev.key(), dev);
        }
        for r in store.load_credentials().await? {
            let c = access::Credential::load(r)?;
            state.credentials.insert(c.username.clone(), c);
        }
        state.accounts = accounts::Accounts::load(store.load_accounts().await?)?;
        let game = store.load_game().await?;
        let row = |k: &str| {
            game.iter()
                .find(|(key, _)| key == k)
                .map(|(_, d)| d.as_str())
        };
        state
            .game_load(row("rules"), row("state"), row("access"))
            .map_err(|e| StoreError::Corrupt(format!("the game: {e}")))?;
        let (forward, queue) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let webhooks = Arc::new(std::sync::OnceLock::new());
        let stats = Stats {
            store_failures: store.failure_counter(),
            ..Stats::default()
        };
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(deliver(
            queue,
            events.clone(),
            webhooks.clone(),
            dropped.clone(),
        ));
        Ok(Hub {
            bus,
            cfg,
            state: Mutex::new(state),
            forward,
            events,
            webhooks,
            stats: Stats {
                webhooks_dropped: dropped,
                ..stats
            },
            store,
        })
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Recorded events, each delivered once its unit is committed, in commit order, with the
    /// seq the store gave it (so seqs grow along the stream; the store's own
    /// `retention_pruned` events are not in it). A subscriber that falls more than 8192
    /// events behind gets `broadcast::error::RecvError::Lagged(n)` and carries on from the
    /// oldest kept; it never slows the packet path.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommittedEvent>> {
        self.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A change validates before it mutates, so a panic inside one leaves at worst a
        // half-applied change in memory and nothing submitted; carry on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The change path. `f` runs with the state locked: it validates, then mutates, adding
    /// its effects to the collector, and returns its result. On `Ok` the effects are
    /// submitted as one unit before the lock is released; the commit to wait for is returned
    /// (`None` when the change had no effects). On `Err` nothing is submitted.
    pub fn change<R>(
        &self,
        now: i64,
        f: impl FnOnce(&mut State, &mut Effects) -> Result<R, CoreError>,
    ) -> Result<(R, Option<Commit>), CoreError> {
        let mut state = self.lock();
        let mut fx = Effects::new(now);
        let r = f(&mut state, &mut fx)?;
        let commit = self.submit(fx);
        drop(state);
        Ok((r, commit))
    }

    /// The same change on a copy of the state: returns its result and the effects a real run
    /// would submit, and submits, publishes and changes nothing.
    pub fn simulate<R>(
        &self,
        now: i64,
        f: impl FnOnce(&mut State, &mut Effects) -> Result<R, CoreError>,
    ) -> Result<(R, Effects), CoreError> {
        let mut copy = self.lock().clone();
        let mut fx = Effects::new(now);
        let r = f(&mut copy, &mut fx)?;
        Ok((r, fx))
    }

    /// Submits a change's effects: the store unit (events first, then rows), the publishes,
    /// the counters; the events go to subscribers once the unit is committed. Called with
    /// the state locked.
    fn submit(&self, fx: Effects) -> Option<Commit> {
        self.stats.add(&fx.counts);
        let Effects {
            events,
            writes,
            publishes,
            disconnects,
            wait,
            webhooks: fx_webhooks,
            ..
        } = fx;
        for user in disconnects {
            self.bus.disconnect(&user);
        }

        let commit = if events.is_empty() && writes.is_empty() {
            None
        } else {
            let mut unit = Vec::with_capacity(events.len() + writes.len());
            unit.extend(
                events
                    .iter()
                    .map(|e| crate::store::Write::Event(e.record())),
            );
            unit.extend(writes);
            Some(if wait {
                self.store.submit(unit)
            } else {
                self.store.submit_background(unit)
            })
        };
        for p in publishes {
            if !self.bus.publish(p.topic, p.payload.into_bytes(), p.qos) {
                self.stats
                    .skaben_publish_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let commit = commit?;
        if events.is_empty() {
            return Some(commit);
        }
        let (reply, rx) = oneshot::channel();
        match self.forward.send(Forward {
            commit,
            events,
            webhooks: fx_webhooks,
            reply,
        }) {
            Ok(()) => Some(Commit::new(rx)),
            // The delivery task is gone (the runtime is shutting down): no subscribers left.
            Err(mpsc::error::SendError(f)) => Some(f.commit),
        }
    }

    /// Runs a command: validated, applied, recorded with who asked, durable before it returns.
    pub async fn execute(&self, cmd: Command, actor: &str, now: i64) -> Result<Outcome, CoreError> {
        let (out, commit) = self.change(now, |st, fx| st.execute(cmd, actor, fx))?;
        if let Some(c) = commit {
            c.wait().await?;
        }
        Ok(out)
    }

    /// A command's dry run: what it would return and the effects it would have.
    pub fn dry_run(
        &self,
        cmd: Command,
        actor: &str,
        now: i64,
    ) -> Result<(Outcome, Effects), CoreError> {
        self.simulate(now, |st, fx| st.execute(cmd, actor, fx))
    }

    // ---- who may talk to the broker ----

    /// The credential logged in with `username`: its subject and stored hash.
    pub fn credential(&self, username: &str) -> Option<access::Credential> {
        self.lock().credential(username).cloned()
    }

    /// Every credential (never a secret).
    pub fn credentials(&self) -> Vec<access::CredentialView> {
        self.lock().credentials()
    }

    /// Every credential with its hash, for `gatehouse mqtt acl` of a running server's state.
    pub fn credential_records(&self) -> Vec<access::Credential> {
        self.lock().credentials.values().cloned().collect()
    }

    /// Something the broker refused (counted; an event at most once a minute per client).
    pub fn mqtt_refused(&self, refusal: access::Refusal, now: i64) {
        let _ = self.change(now, |st, fx| {
            st.mqtt_refused(fx, refusal);
            Ok(())
        });
    }

    /// The embedded broker disconnected a client that did not take its messages: counted,
    /// and an event at most once a minute per client.
    pub fn mqtt_too_slow(&self, client_id: &str, queued: usize, limit: &'static str, now: i64) {
        self.stats.mqtt_too_slow.fetch_add(1, Ordering::Relaxed);
        let _ = self.change(now, |st, fx| {
            let Some(closed_since) = st.rejected_event_due(&format!("mqtt-slow:{client_id}"), now)
            else {
                return Ok(());
            };
            fx.wait = false;
            let client_id: String = client_id.chars().take(128).collect();
            fx.event(
                None,
                event::SERVER,
                Event::MqttClientTooSlow {
                    client_id,
                    queued,
                    limit: limit.to_string(),
                    closed_since,
                },
            );
            Ok(())
        });
    }

    // ---- inbound traffic ----

    /// A well-formed message from a board on connection `conn`: check who holds the board,
    /// update, record, and decide the answer.
    pub fn acon_message(
        &self,
        raw: &[u8],
        msg: &Message,
        conn: &AconConn,
        now: i64,
    ) -> AconOutcome {
        match self.change(now, |st, fx| Ok(st.acon_message(fx, raw, msg, conn))) {
            Ok((acon::Verdict::Answer { answer, displaced }, Some(commit))) => {
                AconOutcome::Answer {
                    commit,
                    answer,
                    displaced,
                }
            }
            Ok((acon::Verdict::Refused(why), commit)) => AconOutcome::Refused { commit, why },
            // An answer always records its message; no commit means nothing was recorded.
            Ok((acon::Verdict::Answer { .. }, None)) | Err(_) => AconOutcome::Refused {
                commit: None,
                why: Refusal::NotRecorded,
            },
        }
    }

    /// A board connection closed: the board it held is free for another connection.
    pub fn acon_closed(&self, conn: &AconConn, now: i64) {
        let _ = self.change(now, |st, _| {
            st.acon_release(conn);
            Ok(())
        });
    }

    /// A frame that is not a valid message: an error event with the reason and the raw bytes.
    pub fn acon_malformed(&self, raw: &[u8], reason: &str, peer: &str, now: i64) -> Commit {
        match self.change(now, |st, fx| {
            st.acon_malformed(fx, raw, reason, peer);
            Ok(())
        }) {
            Ok(((), Some(c))) => c,
            _ => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Ok(Vec::new()));
                Commit::new(rx)
            }
        }
    }

    /// One inbound MQTT publish. Never fails: whatever is wrong becomes an event. Returns the
    /// commit of a packet that changes state (SUP, INFO), which its acknowledgement waits for.
    pub fn skaben_packet(&self, topic: &str, raw: &[u8], now: i64) -> Option<Commit> {
        let packet = skaben::Packet::read(topic, raw);
        let (durable, commit) = self
            .change(now, |st, fx| Ok(st.skaben_parsed(fx, &packet)))
            .ok()?;
        if durable { commit } else { None }
    }

    /// The broker connection is (back) up: every pending push goes out again.
    pub fn skaben_connected(&self, now: i64) -> usize {
        self.change(now, |st, fx| {
            Ok(st.skaben_resend_pending(fx, "broker reconnected"))
        })
        .map_or(0, |(n, _)| n)
    }

    // ---- timers ----

    /// Marks silent devices offline. Returns the number that changed.
    pub async fn sweep_presence(&self, now: i64) -> Result<usize, StoreError> {
        let (n, commit) = self
            .change(now, |st, fx| Ok(st.sweep_presence(fx)))
            .map_err(|e| StoreError::Db(e.to_string()))?;
        if let Some(c) = commit {
            c.wait().await?;
        }
        Ok(n)
    }

    /// PING to every active type. Returns the number of types pinged.
    pub fn skaben_ping(&self, now: i64) -> usize {
        self.change(now, |st, fx| Ok(st.skaben_ping(fx)))
            .map_or(0, |(n, _)| n)
    }

    /// Sends the type broadcasts that CUP requests from `all` asked for while one had just
    /// gone out. Call a few times per [`skaben::BROADCAST_EVERY_MS`].
    pub fn skaben_flush_broadcasts(&self, now: i64) -> usize {
        self.change(now, |st, fx| Ok(st.skaben_flush_broadcasts(fx)))
            .map_or(0, |(n, _)| n)
    }

    // ---- snapshots ----

    /// Every device, ordered by key, optionally of one kind.
    /// SKABEN props with a config push not yet confirmed (one pass over the table, no
    /// copies: for `/metrics`).
    pub fn pending_pushes(&self) -> usize {
        let st = self.lock();
        st.devices
            .values()
            .filter(|d| {
                d.prop()
                    .is_some_and(|p| p.delivery.pending_push().is_some())
            })
            .count()
    }

    /// One device's summary (its entry in [`Hub::list`]), by `<kind>/<id>`.
    /// One device's summary (with its config's sync state, as the list has it).
    pub fn summary(&self, key: &str) -> Option<DeviceSummary> {
        let st = self.lock();
        st.devices.get(key).map(|d| summarize(&st, d))
    }

    /// The summaries of these devices (those that exist), under one lock: what the live
    /// stream sends every 250 ms to each client.
    pub fn summaries<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Vec<DeviceSummary> {
        let st = self.lock();
        keys.into_iter()
            .filter_map(|k| st.devices.get(k).map(|d| summarize(&st, d)))
            .collect()
    }

    pub fn list(&self, kind: Option<&str>) -> Vec<DeviceSummary> {
        let st = self.lock();
        let mut out: Vec<DeviceSummary> = st
            .devices
            .values()
            .filter(|d| kind.is_none_or(|k| d.kind == k))
            .map(|d| summarize(&st, d))
            .collect();
        drop(st);
        out.sort_by(|a, b| (&a.device.kind, &a.device.id).cmp(&(&b.device.kind, &b.device.id)));
        out
    }

    /// One board: identity, presence, desired config, reported state.
    pub fn acon_board(&self, id: &str) -> Option<BoardSnapshot> {
        self.lock().board_snapshot(id)
    }

    /// Every cell of a board's matrix with its lock, assignment, time-out and last opening.
    pub fn acon_cells(&self, id: &str, now: i64) -> Result<Vec<CellSnapshot>, CoreError> {
        self.lock().cells(id, now)
    }

    /// One prop's page.
    pub fn skaben_device(&self, ty: &str, id: &str) -> Option<PropSnapshot> {
        self.lock().prop_snapshot(ty, id)
    }

    pub fn skaben_types(&self) -> Vec<TypeSnapshot> {
        self.lock().type_snapshots()
    }

    pub fn skaben_type(&self, name: &str) -> Option<TypeSnapshot> {
        self.lock().type_snapshot(name)
    }
}

/// Delivers each unit's events once it is committed, in submission order (commits resolve in
/// that order), each with the seq the store gave it, then hands the caller its result.
async fn deliver(
    mut queue: mpsc::UnboundedReceiver<Forward>,
    events: broadcast::Sender<Arc<CommittedEvent>>,
    webhooks: Arc<std::sync::OnceLock<crate::gateway::webhook::Webhooks>>,
    dropped: Arc<AtomicU64>,
) {
    while let Some(f) = queue.recv().await {
        let r = f.commit.seqs().await;
        if let Ok(seqs) = &r {
            // The unit's events are its first writes, in order (`Hub::submit`), so the store
            // handed back one seq per event.
            for (e, &seq) in f.events.into_iter().zip(seqs) {
                // No subscriber is not an error.
                let _ = events.send(Arc::new(CommittedEvent::new(seq, e)));
            }
            // A webhook tells the world about a firing: only once it is recorded.
            for call in f.webhooks {
                if !webhooks.get().is_some_and(|w| w.send(call)) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let _ = f.reply.send(r);
    }
}

/// A device's summary, with a prop's config sync state (`in_sync`, `failed`, `pending`,
/// `out_of_sync`) from its type's definition.
fn summarize(st: &State, d: &Device) -> DeviceSummary {
    let mut s = d.summary();
    if let (Some(p), Some(ty)) = (d.prop(), st.types.get(&d.kind)) {
        s.sync = Some(if p.in_sync(&ty.def) {
            "in_sync"
        } else {
            match p.delivery.pending.as_ref().map(|x| x.state) {
                Some(skaben::PushState::Failed) => "failed",
                Some(skaben::PushState::Pending) => "pending",
                None => "out_of_sync",
            }
        });
    }
    s
}
