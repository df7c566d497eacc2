//! The embedded broker's gatekeeper: logins against the core's credentials, the topic rules
//! of [`crate::core::access`] on every publish and subscription, and no kicking a device off
//! by connecting with its client id.
//!
//! Invariants:
//! - With `--mqtt-auth devices` (the default) a client without a valid credential gets
//!   CONNACK "not authorised" (3.1.1: return code 5; a wrong password: 4). With `off`, a
//!   client without a username is anonymous; a username that names a credential must still
//!   come with its password.
//! - The topic rules hold in both modes. A refused publish is dropped (MQTT 3.1.1 has no way
//!   to say no), a refused subscription gets the failure return code; both are counted and
//!   reported by a rate-limited event naming the client.
//! - A client id held by a live session of one identity cannot be taken by another identity
//!   (an anonymous client or another device): the newcomer is refused. The same identity
//!   takes it over, as MQTT says.
//! - Argon2id checks (passwords an operator chose) run off the broker's tasks, one at a time,
//!   and a success is remembered (by a fingerprint of hash and password), so a fleet
//!   reconnecting after a power cut costs one check per credential, and a stranger guessing
//!   passwords costs at most one core and gets about 20 guesses a minute per address (past
//!   that, logins from there that would need a check are refused unchecked until the minute
//!   ends; a remembered login still passes).
//! - Revoking or rotating a credential disconnects its sessions ([`Access::disconnect`]).
//! - At most `--mqtt-max-connections-per-addr` clients are connected from one address: one
//!   more gets CONNACK "quota exceeded" (3.1.1: "server unavailable"), counted
//!   (`mqtt_refused_per_addr`) and reported like any refused login (rate-limited event).
//!   `mqtt_connections` counts the connected clients.
//! - [`Access::watch`] disconnects, with the broker's session takeover, a client whose queue
//!   passed `--mqtt-max-queued-messages` or `--mqtt-max-queued-bytes` (counted, event
//!   `mqtt_client_too_slow`), and a client connected with keep-alive 0 that sent no publish or
//!   subscription for `--mqtt-silence-timeout-secs` (mqtt5 itself closes those only after a
//!   hard-coded 300 s without a packet).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mqtt5::broker::auth::{AuthProvider, AuthResult};
use mqtt5::broker::router::{DeliveryLanes, MessageRouter};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::core::Hub;
use crate::core::access::{self, Principal, Refusal};
use crate::gateway::broker::{BrokerLimits, MAX_PACKET_SIZE};

/// Whether the embedded broker asks for credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttAuth {
    /// Every client logs in with a device, type or observer credential.
    Devices,
    /// Anonymous clients are let in (a closed bench); the topic rules still hold.
    Off,
}

/// Remembered successful Argon2id checks (username → fingerprint) before the memory restarts.
const VERIFIED_KEPT: usize = 100_000;
/// How long a kick waits for the displaced session to hand off.
const KICK_WAIT: Duration = Duration::from_secs(2);
/// Failed logins from one address in [`FAILURE_WINDOW`] after which its logins that need an
/// Argon2id check are refused unchecked until the window ends (a guesser gets about 20 tries
/// a minute; a device whose login is remembered is not affected; nothing is banned for good).
const MAX_FAILURES: u32 = 20;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked for failures before the memory restarts.
const FAILURES_TRACKED: usize = 10_000;

type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The broker's [`AuthProvider`]. Created with the broker; the core is attached once loaded
/// (logins that arrive before wait for it).
pub struct Access {
    mode: MqttAuth,
    hub: OnceLock<Arc<Hub>>,
    ready: watch::Sender<bool>,
    router: OnceLock<Arc<MessageRouter>>,
    /// Client id → the identity (subject key) that last logged in with it.
    sessions: Mutex<HashMap<String, String>>,
    verified: Mutex<HashMap<String, [u8; 32]>>,
    slow_checks: Semaphore,
    /// Failed logins per address: (window start, failures in it).
    failures: Mutex<HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
    limits: BrokerLimits,
    /// Who is connected from where.
    conns: Mutex<Conns>,
    /// Clients connected with keep-alive 0 → when they last published or subscribed.
    quiet: Mutex<HashMap<String, std::time::Instant>>,
}

/// Connections per client id and per address. A login's address waits in `pending` until the
/// broker reports the connection (its connect event carries no address); a client id can
/// have two connections for a moment (a takeover), so both lists are in order.
#[derive(Default)]
struct Conns {
    pending: HashMap<String, VecDeque<IpAddr>>,
    live: HashMap<String, VecDeque<IpAddr>>,
    per_ip: HashMap<IpAddr, usize>,
}

/// Logins whose connection was never reported (a handshake that failed after the login)
/// leave an entry in `pending`; past this many, the oldest guesses are forgotten.
const PENDING_KEPT: usize = 100_000;
/// How often [`Access::watch`] looks at queues and silent clients, at most.
const WATCH_EVERY: Duration = Duration::from_millis(250);

impl Access {
    pub fn new(mode: MqttAuth, limits: BrokerLimits) -> Access {
        Access {
            mode,
            hub: OnceLock::new(),
            ready: watch::Sender::new(false),
            router: OnceLock::new(),
            sessions: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
            slow_checks: Semaphore::new(1),
            failures: Mutex::new(HashMap::new()),
            limits,
            conns: Mutex::new(Conns::default()),
            quiet: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> MqttAuth {
        self.mode
    }

    pub(crate) fn set_router(&self, router: Arc<MessageRouter>) {
        let _ = self.router.set(router);
    }

    /// Gives the gatekeeper the core's credentials.
    pub fn attach(&self, hub: Arc<Hub>) {
        if self.hub.set(hub).is_err() {
            warn!("the broker's credential source was already set; keeping the first");
        }
        self.ready.send_replace(true);
    }

    async fn hub(&self) -> Option<Arc<Hub>> {
        if let Some(h) = self.hub.get() {
            return Some(h.clone());
        }
        let mut ready = self.ready.subscribe();
        ready.wait_for(|&r| r).await.ok()?;
        self.hub.get().cloned()
    }

    fn refused(&self, hub: &Hub, r: Refusal) {
        hub.mqtt_refused(r, now_ms());
    }

    async fn login(&self, connect: &ConnectPacket, addr: SocketAddr) -> AuthResult {
        let Some(hub) = self.hub().await else {
            return AuthResult::fail(ReasonCode::ServerUnavailable);
        };
        let client_id = connect.client_id.clone();
        let username = connect.username.as_deref().filter(|u| !u.is_empty());
        let refuse = |code: ReasonCode, reason: &'static str| {
            if code == ReasonCode::BadUsernameOrPassword {
                self.failed(addr.ip());
            }
            self.refused(
                &hub,
                Refusal {
                    action: "connect",
                    reason,
                    client_id: client_id.clone(),
                    user: username.map(str::to_string),
                    topic: None,
                    addr: Some(addr.ip().to_string()),
                },
            );
            AuthResult::fail(code)
        };
        let identity = match username {
            None if self.mode == MqttAuth::Devices => {
                return refuse(ReasonCode::NotAuthorized, "no credential");
            }
            None => None,
            Some(name) => match hub.credential(name) {
                None if self.mode == MqttAuth::Off => None,
                None => return refuse(ReasonCode::BadUsernameOrPassword, "unknown username"),
                Some(cred) => {
                    let password = connect.password.as_deref().unwrap_or_default();
                    if access::is_slow(&cred.hash)
                        && !self.remembered(&cred, password)
                        && self.too_many_failures(addr.ip())
                    {
                        return refuse(
                            ReasonCode::BadUsernameOrPassword,
                            "too many failed logins from this address; try again in a minute",
                        );
                    }
                    if !self.check(&cred, password).await {
                        return refuse(ReasonCode::BadUsernameOrPassword, "wrong password");
                    }
                    Some(cred.subject.key())
                }
            },
        };
        // One address holds at most `max_connections_per_addr` connections (a client id that
        // takes its own session over from the same address replaces one, it adds none).
        let (connected_here, replaces) = {
            let c = self.conns_lock();
            let here = c.per_ip.get(&addr.ip()).copied().unwrap_or(0);
            let replaces = c
                .live
                .get(&client_id)
                .is_some_and(|l| l.contains(&addr.ip()));
            (here, replaces)
        };
        if connected_here >= self.limits.max_connections_per_addr && !replaces {
            hub.stats
                .mqtt_refused_per_addr
                .fetch_add(1, Ordering::Relaxed);
            return refuse(
                ReasonCode::QuotaExceeded,
                "--mqtt-max-connections-per-addr clients connected from this address",
            );
        }
        // A live session of another identity keeps its client id.
        let holder = self.sessions_lock().get(&client_id).cloned();
        if let Some(holder) = holder
            && Some(&holder) != identity.as_ref()
            && self.is_connected(&client_id).await
        {
            return refuse(
                ReasonCode::NotAuthorized,
                "client id in use by another identity",
            );
        }
        {
            let mut c = self.conns_lock();
            if c.pending.len() >= PENDING_KEPT {
                c.pending.clear();
            }
            c.pending
                .entry(client_id.clone())
                .or_default()
                .push_back(addr.ip());
        }
        {
            let mut q = self.quiet_lock();
            if connect.keep_alive == 0 {
                q.insert(client_id.clone(), std::time::Instant::now());
            } else {
                q.remove(&client_id);
            }
        }
        match identity {
            Some(id) => {
                self.sessions_lock().insert(client_id, id.clone());
                AuthResult::success_with_user(id)
            }
            None => AuthResult::success(),
        }
    }

    /// Whether this (chosen) password of this credential verified before.
    fn remembered(&self, cred: &access::Credential, password: &[u8]) -> bool {
        let print = access::fingerprint(&cred.hash, password);
        self.verified_lock().get(&cred.username) == Some(&print)
    }

    fn failures_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<std::net::IpAddr, (std::time::Instant, u32)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, ip: std::net::IpAddr) {
        let now = std::time::Instant::now();
        let mut f = self.failures_lock();
        if f.len() >= FAILURES_TRACKED && !f.contains_key(&ip) {
            f.retain(|_, (start, _)| now.duration_since(*start) < FAILURE_WINDOW);
            if f.len() >= FAILURES_TRACKED {
                f.clear();
            }
        }
        let e = f.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= FAILURE_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
    }

    fn too_many_failures(&self, ip: std::net::IpAddr) -> bool {
        let f = self.failures_lock();
        f.get(&ip)
            .is_some_and(|(start, n)| *n >= MAX_FAILURES && start.elapsed() < FAILURE_WINDOW)
    }

    async fn check(&self, cred: &access::Credential, password: &[u8]) -> bool {
        if !access::is_slow(&cred.hash) {
            return access::verify(password, &cred.hash);
        }
        let print = access::fingerprint(&cred.hash, password);
        if self.remembered(cred, password) {
            return true;
        }
        let Ok(_permit) = self.slow_checks.acquire().await else {
            return false;
        };
        let (hash, pw) = (cred.hash.clone(), password.to_vec());
        let ok = tokio::task::spawn_blocking(move || access::verify(&pw, &hash))
            .await
            .unwrap_or(false);
        if ok {
            let mut v = self.verified_lock();
            if v.len() >= VERIFIED_KEPT {
                v.clear();
            }
            v.insert(cred.username.clone(), print);
        }
        ok
    }

    async fn is_connected(&self, client_id: &str) -> bool {
        match self.router.get() {
            Some(r) => r.is_connected(client_id).await,
            None => false,
        }
    }

    fn sessions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn verified_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, [u8; 32]>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conns_lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn quiet_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        self.quiet.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The broker reports a connection (after its CONNACK): count it at its login's address.
    pub(crate) fn connected(&self, client_id: &str) {
        let mut c = self.conns_lock();
        let ip = c.pending.get_mut(client_id).and_then(VecDeque::pop_front);
        if c.pending.get(client_id).is_some_and(VecDeque::is_empty) {
            c.pending.remove(client_id);
        }
        // No login seen (cannot happen with this gatekeeper installed): count it nowhere.
        let ip = ip.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        c.live
            .entry(client_id.to_string())
            .or_default()
            .push_back(ip);
        *c.per_ip.entry(ip).or_insert(0) += 1;
        drop(c);
        if let Some(hub) = self.hub.get() {
            hub.stats.mqtt_connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A session ended: uncount its connection (the oldest of its client id), and forget its
    /// client id unless another session holds it now.
    pub(crate) async fn disconnected(&self, client_id: &str) {
        let ended = {
            let mut c = self.conns_lock();
            let ip = c.live.get_mut(client_id).and_then(VecDeque::pop_front);
            if c.live.get(client_id).is_some_and(VecDeque::is_empty) {
                c.live.remove(client_id);
            }
            if let Some(ip) = ip
                && let Some(n) = c.per_ip.get_mut(&ip)
            {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
            ip.is_some()
        };
        if ended && let Some(hub) = self.hub.get() {
            hub.stats.mqtt_connections.fetch_sub(1, Ordering::Relaxed);
        }
        if self.is_connected(client_id).await {
            return;
        }
        self.sessions_lock().remove(client_id);
        self.quiet_lock().remove(client_id);
    }

    /// A client sent a publish or a subscription: it is not silent.
    fn active(&self, client_id: &str) {
        if let Some(t) = self.quiet_lock().get_mut(client_id) {
            *t = std::time::Instant::now();
        }
    }

    /// Until aborted (the broker's shutdown): every [`WATCH_EVERY`] (or a quarter of the silence timeout),
    /// disconnects the clients whose queue passed its cap, and the keep-alive-0 clients
    /// silent for the silence timeout.
    pub(crate) async fn watch(self: Arc<Self>, router: Arc<MessageRouter>) {
        let period = WATCH_EVERY.min(self.limits.silence_timeout / 4);
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let kicking: Arc<Mutex<HashSet<String>>> = Arc::default();
        // Peeking at a queue's bytes copies it: only when it could hold more than the cap.
        let peek_over = (self.limits.max_queued_bytes / MAX_PACKET_SIZE).max(1);
        loop {
            tick.tick().await;
            let Some(hub) = self.hub.get().cloned() else {
                continue;
            };
            let clients: Vec<String> = self.conns_lock().live.keys().cloned().collect();
            let mut due: Vec<(String, Option<(usize, &'static str)>)> = Vec::new();
            for id in clients {
                let queue = router.queue_handle(&id);
                let n = queue.count();
                if n >= self.limits.max_queued_messages {
                    due.push((id, Some((n, "--mqtt-max-queued-messages"))));
                } else if n >= peek_over {
                    let bytes: usize = queue
                        .peek_all()
                        .await
                        .iter()
                        .map(|m| m.payload.len() + m.topic.len())
                        .sum();
                    if bytes > self.limits.max_queued_bytes {
                        due.push((id, Some((n, "--mqtt-max-queued-bytes"))));
                    }
                }
            }
            let silence = self.limits.silence_timeout;
            let silent: Vec<String> = self
                .quiet_lock()
                .iter()
                .filter(|(_, t)| t.elapsed() >= silence)
                .map(|(c, _)| c.clone())
                .collect();
            for id in silent {
                self.quiet_lock().remove(&id);
                due.push((id, None));
            }
            for (id, why) in due {
                if !kicking
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone())
                {
                    continue;
                }
                match why {
                    Some((queued, limit)) => {
                        warn!(client_id = %id, queued, limit, "MQTT client not taking its messages; disconnecting it");
                        hub.mqtt_too_slow(&id, queued, limit, now_ms());
                    }
                    None => {
                        hub.stats.mqtt_silent_closed.fetch_add(1, Ordering::Relaxed);
                        info!(client_id = %id, timeout = ?silence, "MQTT client with keep-alive 0 silent for --mqtt-silence-timeout-secs; disconnecting it");
                    }
                }
                let (router, kicking) = (router.clone(), kicking.clone());
                tokio::spawn(async move {
                    kick(&router, &id).await;
                    kicking
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                });
            }
        }
    }

    /// Disconnects every session logged in as `user` (a subject key), with the broker's own
    /// session takeover: the displaced handler closes its connection.
    pub fn disconnect(self: &Arc<Self>, user: &str) {
        let clients: Vec<String> = self
            .sessions_lock()
            .iter()
            .filter(|(_, u)| u.as_str() == user)
            .map(|(c, _)| c.clone())
            .collect();
        let Some(router) = self.router.get().cloned() else {
            return;
        };
        if clients.is_empty() {
            return;
        }
        info!(
            user,
            sessions = clients.len(),
            "disconnecting the sessions of a revoked or rotated credential"
        );
        let this = self.clone();
        tokio::spawn(async move {
            for client_id in clients {
                kick(&router, &client_id).await;
                this.sessions_lock().remove(&client_id);
            }
        });
    }

    fn judge(
        &self,
        action: &'static str,
        client_id: &str,
        user: Option<&str>,
        topic: &str,
        ok: bool,
    ) -> bool {
        if !ok && let Some(hub) = self.hub.get() {
            self.refused(
                hub,
                Refusal {
                    action,
                    reason: "topic not allowed",
                    client_id: client_id.to_string(),
                    user: user.map(str::to_string),
                    topic: Some(topic.to_string()),
                    addr: None,
                },
            );
        }
        ok
    }
}

/// Takes `client_id`'s session over with a session of nobody's, then releases it: the live
/// handler gets the broker's takeover notice and closes its connection.
async fn kick(router: &MessageRouter, client_id: &str) {
    let slot = router.lock_session(client_id).await;
    let (lanes, _receivers) = DeliveryLanes::channel(1);
    let queue = router.queue_handle(client_id);
    let (notice_tx, _notice_rx) = tokio::sync::oneshot::channel();
    let generation = router.allocate_generation();
    let registration = router
        .register_session_as(
            generation,
            client_id.to_string(),
            lanes,
            queue.clone(),
            notice_tx,
            true,
        )
        .await;
    drop(slot);
    if let Some(released) = registration.released {
        let _ = tokio::time::timeout(KICK_WAIT, released).await;
    }
    let slot = router.lock_session(client_id).await;
    router.release_client(client_id, generation, false).await;
    queue.clear(None);
    drop(slot);
}

impl AuthProvider for Access {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        client_addr: SocketAddr,
    ) -> BoxFuture<'a, mqtt5::Result<AuthResult>> {
        Box::pin(async move { Ok(self.login(connect, client_addr).await) })
    }

    fn authorize_publish<'a>(
        &'a self,
        client_id: &str,
        user_id: Option<&'a str>,
        topic: &'a str,
    ) -> BoxFuture<'a, bool> {
        self.active(client_id);
        let ok = access::may_publish(&Principal::of(user_id), topic);
        let ok = self.judge("publish", client_id, user_id, topic, ok);
        Box::pin(std::future::ready(ok))
    }

    fn authorize_subscribe<'a>(
        &'a self,
        client_id: &str,
        user_id: Option<&'a str>,
        topic_filter: &'a str,
    ) -> BoxFuture<'a, bool> {
        self.active(client_id);
        let ok = access::may_subscribe(&Principal::of(user_id), topic_filter);
        let ok = self.judge("subscribe", client_id, user_id, topic_filter, ok);
        Box::pin(std::future::ready(ok))
    }
}
