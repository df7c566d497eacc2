//! The embedded MQTT broker: mqtt5 0.49 (pinned, see `docs/decisions/mqtt-broker.md`) run
//! inside `gatehouse serve`, so that a venue needs no separate broker.
//!
//! This module and [`super::inproc`] (the core's in-process link: mqtt5's publish hook in, its
//! router out) are the only places that know mqtt5; replacing it (rmqtt is the fallback) means
//! rewriting those two. Devices and the tools connect to it over TCP like to any broker.
//!
//! Invariants:
//! - [`EmbeddedBroker::start`] returns only once the listener is bound and the broker accepts
//!   connections; a bind failure (port in use, bad address) is an error naming the setting and
//!   the ways out, never a log line.
//! - Exactly the given address is bound (the first one it resolves to), never mqtt5's default
//!   `0.0.0.0:1883` plus `[::]:1883`.
//! - Nothing is written to disk (mqtt5's default persistence would create `./mqtt_storage`),
//!   no `$SYS` topics are published, packets are limited to [`MAX_PACKET_SIZE`].
//! - Connection limits come from [`BrokerLimits`] (`gatehouse serve`: `--mqtt-max-connections`
//!   inside the file-descriptor budget, `--mqtt-max-connections-per-addr`; see
//!   [`super::budget`] for why connections waiting for their CONNECT are bounded by the
//!   connection-rate limit); no per-client message-rate or bandwidth limits.
//! - What the broker holds for one client that does not read is bounded: its delivery lanes
//!   hold [`LANE_CAPACITY`] messages each and its in-flight window [`OUTBOUND_INFLIGHT`]; the rest
//!   waits in its queue, which a linked broker's gatekeeper watches ([`super::access`]): past
//!   `--mqtt-max-queued-messages` or `--mqtt-max-queued-bytes` the client is disconnected
//!   (event `mqtt_client_too_slow`). mqtt5's own queue limit, twice ours, is the backstop: it
//!   drops the oldest messages if a client outgrows the cap between two checks.
//! - After [`EmbeddedBroker::shutdown`] returns, the port is free again (the broker can be
//!   started again on the same address).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mqtt5::broker::{
    BrokerConfig, BrokerShutdownHandle, MqttBroker, ResourceLimits, StorageBackendType,
    StorageConfig,
};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::gateway::access::{Access, MqttAuth};

/// The largest MQTT packet the broker accepts or sends (SKABEN configs are a few KiB).
pub const MAX_PACKET_SIZE: usize = 256 * 1024;

/// Messages each of a client's two delivery lanes (QoS 0, QoS 1) holds between the router and
/// the client's connection task (mqtt5's default, 10 000, bounded nothing in bytes: 10 000
/// configs of 250 KB queued for one subscriber that never read made the server grow to
/// 2.5 GB). Past it, QoS 1 messages wait in the client's queue (capped) and QoS 0 ones drop.
pub const LANE_CAPACITY: usize = 16;
/// QoS 1 messages sent to a client and not yet acknowledged.
pub const OUTBOUND_INFLIGHT: u16 = 32;

/// The embedded broker's limits (see the module's invariants).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrokerLimits {
    /// Connected clients at once.
    pub max_connections: usize,
    /// Connected clients from one address at once.
    pub max_connections_per_addr: usize,
    /// New connections admitted per [`super::budget::HANDSHAKE_WINDOW`] (bounds those waiting
    /// for their CONNECT).
    pub handshakes: usize,
    /// A client whose queue holds more messages, or more bytes, is disconnected.
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// A client connected with keep-alive 0 that sends nothing for this long is closed.
    pub silence_timeout: Duration,
}

impl Default for BrokerLimits {
    /// A plain broker (tests of the MQTT client, tools): high connection limits.
    fn default() -> Self {
        BrokerLimits {
            max_connections: 100_000,
            max_connections_per_addr: 100_000,
            handshakes: 100_000,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            silence_timeout: Duration::from_secs(300),
        }
    }
}
/// How long `shutdown` waits for mqtt5's graceful stop (it gives connections 5 s) before it
/// aborts the broker's task.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(7);
/// How long `shutdown` waits for the port to become free after the broker stopped.
const PORT_FREE_WAIT: Duration = Duration::from_secs(2);

/// The setting that chooses the embedded broker's address, as the operator knows it.
const LISTEN_SETTING: &str = "--mqtt-listen / GATEHOUSE_MQTT_LISTEN";

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The address is not `HOST:PORT`, or the host does not resolve.
    #[error(
        "{LISTEN_SETTING}: cannot use {listen:?} as the embedded MQTT broker's address ({reason}); expected HOST:PORT, e.g. 0.0.0.0:1883"
    )]
    Address { listen: String, reason: String },
    /// Something already listens there.
    #[error(
        "{LISTEN_SETTING}: {addr} is already in use (another MQTT broker?); choose another address with --mqtt-listen, or use the broker already running there with --mqtt-url mqtt://HOST:PORT"
    )]
    AddrInUse { addr: SocketAddr },
    /// The address cannot be bound for another reason (not a local address, a privileged
    /// port, ...).
    #[error(
        "{LISTEN_SETTING}: cannot listen on {addr}: {reason}; choose another address with --mqtt-listen (a port above 1023 on an address of this machine), or use an external broker with --mqtt-url"
    )]
    Bind { addr: SocketAddr, reason: String },
    /// mqtt5 refused to start for a reason of its own.
    #[error("the embedded MQTT broker did not start on {addr}: {reason}")]
    Start { addr: SocketAddr, reason: String },
}

/// The embedded broker, running in its own task until [`EmbeddedBroker::shutdown`] (or drop,
/// which signals the same graceful stop without waiting for it).
pub struct EmbeddedBroker {
    local_addr: SocketAddr,
    /// Hands devices' publishes to the core in-process (see `gateway::inproc`).
    hook: Arc<crate::gateway::inproc::InboundHook>,
    /// Logins and topic rules (a linked broker only; an unlinked one lets everyone in).
    access: Option<Arc<Access>>,
    router: Arc<mqtt5::broker::router::MessageRouter>,
    stop: BrokerShutdownHandle,
    task: Option<JoinHandle<Result<(), String>>>,
    /// The gatekeeper's watch over queues and silent clients (a linked broker).
    watcher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("local_addr", &self.local_addr)
            .field("running", &self.task.is_some())
            .finish()
    }
}

impl EmbeddedBroker {
    /// Binds `listen` (`HOST:PORT`; port 0 = any free port, see [`Self::local_addr`]) and
    /// starts accepting MQTT 3.1.1 and 5 clients, anonymous, without topic rules (a plain
    /// broker, for tests of the MQTT client). Returns once the broker accepts connections.
    pub async fn start(listen: &str) -> Result<EmbeddedBroker, BrokerError> {
        Self::start_with(listen, None, BrokerLimits::default()).await
    }

    /// Like [`Self::start`], for a broker the core will link to in-process
    /// ([`Self::in_process`], [`Self::access`]): logins are checked against the core's
    /// credentials (`auth`) and every client is held to the topic rules; devices' `ask/…`
    /// packets and logins that arrive before the link is made wait for it.
    pub async fn start_linked(
        listen: &str,
        auth: MqttAuth,
        limits: BrokerLimits,
    ) -> Result<EmbeddedBroker, BrokerError> {
        Self::start_with(listen, Some(Arc::new(Access::new(auth, limits))), limits).await
    }

    async fn start_with(
        listen: &str,
        access: Option<Arc<Access>>,
        limits: BrokerLimits,
    ) -> Result<EmbeddedBroker, BrokerError> {
        let addr = resolve(listen).await?;
        let hook = Arc::new(crate::gateway::inproc::InboundHook::new(access.clone()));
        let cfg = config(addr, &limits).with_event_handler(hook.clone());
        let mut broker = match MqttBroker::with_config(cfg).await {
            Ok(broker) => broker,
            Err(e) => return Err(classify_start_error(addr, e.to_string())),
        };
        if let Some(a) = &access {
            a.set_router(broker.router());
            broker = broker.with_auth_provider(a.clone());
        }
        let Some(local_addr) = broker.local_addr() else {
            return Err(BrokerError::Start {
                addr,
                reason: "the broker reports no bound listener".to_string(),
            });
        };
        // mqtt5 0.49 hard-codes 10 000 connections per IP and 10 000 new connections per
        // second in the monitor it builds; the monitor takes new limits before `run`. mqtt5
        // refuses at accept, silently; a linked broker's gatekeeper refuses over
        // `max_connections_per_addr` at login (counted, with an event), so mqtt5's per-address
        // check is only the backstop for logins that race.
        let per_ip_backstop = if access.is_some() {
            limits.max_connections_per_addr + (limits.max_connections_per_addr / 8).max(8)
        } else {
            limits.max_connections_per_addr
        };
        broker.resource_monitor().update_limits(ResourceLimits {
            max_connections: limits.max_connections,
            max_connections_per_ip: per_ip_backstop,
            max_message_rate_per_client: 0,
            max_bandwidth_per_client: 0,
            max_connection_rate: u32::try_from(limits.handshakes).unwrap_or(u32::MAX),
            rate_limit_window: crate::gateway::budget::HANDSHAKE_WINDOW,
        });
        let stop = broker.shutdown_handle();
        let router = broker.router();
        let watcher = access
            .as_ref()
            .map(|a| tokio::spawn(a.clone().watch(router.clone())));
        let mut ready = broker.ready_receiver();
        let mut task = tokio::spawn(async move {
            let mut broker = broker;
            broker.run().await.map_err(|e| e.to_string())
        });
        // `ready` turns true once the accept loop runs; if `run` fails first, the broker (and
        // the sender with it) is dropped and `wait_for` returns an error.
        if ready.wait_for(|&r| r).await.is_err() {
            let reason = match (&mut task).await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => "the broker stopped during start-up".to_string(),
                Err(e) => format!("the broker's task failed: {e}"),
            };
            return Err(BrokerError::Start { addr, reason });
        }
        info!(addr = %local_addr, "embedded MQTT broker listening");
        Ok(EmbeddedBroker {
            local_addr,
            hook,
            access,
            router,
            stop,
            task: Some(task),
            watcher,
        })
    }

    /// The core's connection to this broker without a socket: devices' publishes reach the
    /// handler from the broker's own tasks, and the bus routes publishes straight to the
    /// subscribers. Used by `serve`; the loopback client ([`crate::gateway::mqtt::connect`])
    /// works too and is what an external broker gets.
    pub fn in_process(
        &self,
    ) -> (
        crate::gateway::inproc::InProcessBus,
        crate::gateway::inproc::InProcessConnection,
    ) {
        crate::gateway::inproc::new(self.hook.clone(), self.router.clone(), self.access.clone())
    }

    /// The gatekeeper of a linked broker: attach the core to it once loaded.
    pub fn access(&self) -> Option<&Arc<Access>> {
        self.access.as_ref()
    }

    /// The address the broker is bound to (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the broker: closes the listener, disconnects every client (MQTT 5 clients get a
    /// "server shutting down" DISCONNECT) and returns once the port is free again.
    pub async fn shutdown(mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        self.stop.shutdown();
        if let Some(mut task) = self.task.take() {
            match tokio::time::timeout(SHUTDOWN_WAIT, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!(error = %e, "embedded MQTT broker stopped with an error"),
                Ok(Err(e)) => warn!(error = %e, "embedded MQTT broker task failed"),
                Err(_) => {
                    warn!(
                        "embedded MQTT broker did not stop within {SHUTDOWN_WAIT:?}; aborting it"
                    );
                    task.abort();
                    let _ = task.await;
                }
            }
        }
        // mqtt5 joins its accept tasks (which own the listeners) before `run` returns; check
        // anyway, so that a restart on the same address cannot race a listener being dropped.
        wait_port_free(self.local_addr).await;
        info!(addr = %self.local_addr, "embedded MQTT broker stopped");
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        if self.task.is_some() {
            // Dropped without `shutdown`: start the graceful stop, don't wait for it.
            self.stop.shutdown();
        }
    }
}

/// The broker's settings: everything mqtt5 would otherwise default to something unfit.
fn config(addr: SocketAddr, limits: &BrokerLimits) -> BrokerConfig {
    let storage = StorageConfig {
        // The default (file persistence in ./mqtt_storage) writes wherever the server was
        // started. Sessions live in memory only; the SKABEN clients use clean sessions.
        enable_persistence: false,
        backend: StorageBackendType::Memory,
        // The backstop behind the gatekeeper's cap (which disconnects the client).
        max_queued_messages_per_client: limits.max_queued_messages.saturating_mul(2),
        max_queued_bytes_per_client: limits.max_queued_bytes.saturating_mul(2),
        ..StorageConfig::default()
    };
    let mut config = BrokerConfig::default()
        .with_bind_address(addr)
        .with_max_clients(limits.max_connections)
        .with_client_channel_capacity(LANE_CAPACITY)
        .with_max_outbound_inflight(OUTBOUND_INFLIGHT)
        .with_max_packet_size(MAX_PACKET_SIZE)
        .with_sys_topics_enabled(false)
        .with_storage(storage);
    config.max_message_rate_per_client = 0;
    config.max_bandwidth_per_client = 0;
    config.max_outbound_rate_per_client = 0;
    // Logins are judged by `gateway::access` (a linked broker) or let in (a plain one).
    // mqtt5's failed-login lock-out (per IP, 5 attempts) would lock a whole NAT of devices out
    // for one misconfigured one; generated passwords cannot be guessed, and chosen ones are
    // checked one at a time.
    config.auth_config.allow_anonymous = true;
    config.auth_config.rate_limit.enabled = false;
    config
}

/// `HOST:PORT` → the first address it resolves to.
async fn resolve(listen: &str) -> Result<SocketAddr, BrokerError> {
    let err = |reason: String| BrokerError::Address {
        listen: listen.to_string(),
        reason,
    };
    let mut addrs = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| err(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| err("it resolves to no address".to_string()))
}

/// mqtt5 reports bind failures as text; bind the address once more to learn what went wrong.
fn classify_start_error(addr: SocketAddr, mqtt5_error: String) -> BrokerError {
    match std::net::TcpListener::bind(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => BrokerError::AddrInUse { addr },
        Err(e) => BrokerError::Bind {
            addr,
            reason: e.to_string(),
        },
        Ok(probe) => {
            drop(probe);
            if mqtt5_error.contains("address already in use") {
                // Taken when mqtt5 tried, free again now.
                BrokerError::AddrInUse { addr }
            } else {
                BrokerError::Start {
                    addr,
                    reason: mqtt5_error,
                }
            }
        }
    }
}

/// Waits (bounded) until `addr` can be bound again.
async fn wait_port_free(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + PORT_FREE_WAIT;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(probe) => {
                drop(probe);
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if tokio::time::Instant::now() >= deadline {
                    error!(%addr, "the embedded MQTT broker's port is still in use after shutdown");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                // Not ours to judge (e.g. the address went away); the listener is gone.
                debug!(%addr, error = %e, "port check after shutdown");
                return;
            }
        }
    }
}
