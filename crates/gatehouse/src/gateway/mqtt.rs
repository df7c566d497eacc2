//! The MQTT client gateway: the client (rumqttc) that connects the core to an external SKABEN
//! broker given by `--mqtt-url` (Mosquitto, EMQX, RabbitMQ's MQTT plugin…), and the parsing of
//! that URL. With the embedded broker the core is linked in-process instead
//! ([`super::inproc`]); this client can still connect to the embedded broker over TCP (the
//! gateway's own tests do).
//!
//! The parts:
//! - [`MqttSettings`] (from the command line: embedded or external) and [`connect`], which
//!   builds the client for an external broker: the call `server.rs` makes;
//! - [`MqttUrl`]: `mqtt://[user[:password]@]host[:port]`, parsed here (rumqttc's parser wants a
//!   `?client_id=`), the password never printed;
//! - [`client`] → ([`MqttBus`], [`MqttConnection`]): the bus is the core's [`Bus`]; the
//!   connection is the event loop, driven by [`MqttConnection::run`] in a task of its own.
//!
//! Invariants:
//! - The core sees the same [`Bus`] and [`PacketHandler`] whichever link is used.
//! - [`MqttBus::publish`] never blocks and never awaits: it queues (up to [`REQUEST_QUEUE`]
//!   requests) or refuses, counts the refusal ([`MqttBus::dropped`]) and logs it, at most one
//!   line per 10 s.
//! - Only [`MqttConnection::run`] polls the event loop, and it never awaits a publish.
//! - After every CONNACK the client subscribes to [`skaben::SUBSCRIPTIONS`] (QoS 1) ahead of
//!   anything queued, and calls [`PacketHandler::connected`] once the broker has acknowledged
//!   the subscription: packets published while the client was away may be lost (the session is
//!   clean), so the core re-sends what it still expects to be answered.
//! - An unreachable broker never stops the server: the client retries, 100 ms doubling to 5 s,
//!   reset by a successful connection, logging at most one line per 10 s while it fails.
//! - On shutdown the client sends what is queued (at most [`SHUTDOWN_FLUSH`]), disconnects
//!   cleanly and returns; nothing more is handed to the handler after shutdown is seen.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions,
    Outgoing, Packet, QoS, Request, Subscribe, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use super::broker::{BrokerError, EmbeddedBroker, MAX_PACKET_SIZE};
use crate::bus::{Bus, PacketHandler, Qos};

/// Where the SKABEN devices' broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttSettings {
    /// Run the embedded broker on this address (`--mqtt-listen`), with these logins
    /// (`--mqtt-auth`).
    Embedded {
        listen: String,
        auth: crate::gateway::access::MqttAuth,
    },
    /// Use the broker at this URL (`--mqtt-url`, `mqtt://user:pass@host:port`); start none.
    External { url: String },
}

/// Requests (publishes) the client queues while the event loop is busy or disconnected: a
/// config push to every device of a venue fits.
pub const REQUEST_QUEUE: usize = 100_000;
/// QoS 1 publishes sent and not yet acknowledged by the broker.
const INFLIGHT: u16 = 1000;
/// PINGREQ interval when nothing else is sent.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// TCP connect + CONNACK time limit, seconds (rumqttc's unit).
const CONNECT_TIMEOUT_SECS: u64 = 5;
/// First wait after a failed poll; doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// At most one log line per this period for repeated failures.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown keeps sending queued publishes before it disconnects.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);
/// Fixed header (≤ 5), topic length (2) and packet id (2) of a PUBLISH, on top of topic and
/// payload.
const PUBLISH_OVERHEAD: usize = 9;

const URL_SETTING: &str = "--mqtt-url / GATEHOUSE_MQTT_URL";
const URL_SHAPE: &str = "expected mqtt://[user[:password]@]host[:port] (port 1883 if omitted), e.g. mqtt://gatehouse:secret@192.168.1.10:1883; percent-encode any of : @ / ? # % in the user or password";

/// The default MQTT port.
pub const DEFAULT_PORT: u16 = 1883;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Url(#[from] UrlError),
}

/// A `--mqtt-url` that cannot be used. The messages never contain the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(
        "{URL_SETTING}: TLS is not supported yet (mqtts://); use mqtt:// to a broker on a trusted network, or leave --mqtt-url unset to run the embedded broker"
    )]
    TlsNotSupported,
    #[error("{URL_SETTING}: {reason}; {URL_SHAPE}")]
    Invalid { reason: String },
}

fn invalid(reason: impl Into<String>) -> UrlError {
    UrlError::Invalid {
        reason: reason.into(),
    }
}

/// A parsed `--mqtt-url`. `Display` and `Debug` show the password as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    pub port: u16,
    /// User name, percent-decoded.
    pub username: Option<String>,
    /// Password, percent-decoded (only with a user name).
    pub password: Option<String>,
}

impl MqttUrl {
    /// Parses `mqtt://[user[:password]@]host[:port]` (`tcp://` is a synonym; port 1883 if
    /// omitted; user and password percent-decoded; an IPv6 host in brackets).
    pub fn parse(url: &str) -> Result<MqttUrl, UrlError> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid("no scheme (mqtt://)"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => {}
            "mqtts" | "ssl" | "tls" | "tcps" => return Err(UrlError::TlsNotSupported),
            other => {
                return Err(invalid(format!(
                    "unsupported scheme {other:?} (only mqtt:// and tcp://)"
                )));
            }
        }
        // The user information ends at the last '@', so that an unencoded '@' or '/' in a
        // password still works.
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let (authority, tail) = match hostpart.find(['/', '?', '#']) {
            Some(i) => hostpart.split_at(i),
            None => (hostpart, ""),
        };
        if !tail.is_empty() && tail != "/" {
            return Err(invalid(format!(
                "{tail:?} after the host is not supported (no path, query or client_id)"
            )));
        }
        let (host, port) = parse_host_port(authority)?;
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, pass) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let user = percent_decode(user).map_err(|e| invalid(format!("user name: {e}")))?;
                if user.is_empty() {
                    return Err(invalid("empty user name before '@'"));
                }
                let pass = pass
                    .map(percent_decode)
                    .transpose()
                    .map_err(|e| invalid(format!("password: {e}")))?;
                (Some(user), pass)
            }
        };
        Ok(MqttUrl {
            host,
            port,
            username,
            password,
        })
    }

    /// User and password for the client (an empty password when the URL has a user only).
    pub fn credentials(&self) -> Option<(String, String)> {
        self.username
            .clone()
            .map(|u| (u, self.password.clone().unwrap_or_default()))
    }

    /// `host:port` (an IPv6 host in brackets), for connecting and for logs.
    pub fn address(&self) -> String {
        host_port(&self.host, self.port)
    }
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mqtt://")?;
        if let Some(user) = &self.username {
            // Shown as given to the broker, not re-encoded: this is for people to read.
            write!(f, "{user}")?;
            if self.password.is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.address())
    }
}

impl fmt::Debug for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MqttUrl({self})")
    }
}

/// `host[:port]` or `[v6][:port]` → (host without brackets, port).
fn parse_host_port(authority: &str) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(after_bracket) = authority.strip_prefix('[') {
        let Some((host, after)) = after_bracket.split_once(']') else {
            return Err(invalid("'[' without ']' around an IPv6 address"));
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(invalid(format!("{host:?} is not an IPv6 address")));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(invalid(format!("{after:?} after the IPv6 address"))),
            },
        };
        (host, port)
    } else {
        if authority.matches(':').count() > 1 {
            return Err(invalid(
                "an IPv6 address must be in brackets, e.g. mqtt://[::1]:1883",
            ));
        }
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    if host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!("{host:?} is not a host name")));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => {
                return Err(invalid(format!(
                    "port {p:?} is not a number from 1 to 65535"
                )));
            }
        },
    };
    Ok((host.to_string(), port))
}

/// `%XX` → byte; the result must be UTF-8. Errors never include the text (it may be a
/// password).
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or("'%' not followed by two hex digits")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "'%' not followed by two hex digits")?;
            let byte =
                u8::from_str_radix(hex, 16).map_err(|_| "'%' not followed by two hex digits")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding that is not UTF-8")
}

/// `host:port`, with an IPv6 host in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A client id unique to this process: `gatehouse-` and 16 random hex digits.
pub fn new_client_id() -> String {
    format!("gatehouse-{:016x}", rand::random::<u64>())
}

/// Logs at most once per period; counts what it held back.
#[derive(Debug)]
struct LogThrottle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    fn new(every: Duration) -> Self {
        LogThrottle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(events held back since the last line)` if this one should be logged.
    fn check(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, held_back) = &mut *state;
        let now = Instant::now();
        match last {
            Some(t) if now.duration_since(*t) < self.every => {
                *held_back += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held_back))
            }
        }
    }
}

/// State shared by the bus (any thread) and the connection task.
#[derive(Debug)]
struct Shared {
    broker: String,
    dropped: AtomicU64,
    stopped: AtomicBool,
    drop_log: LogThrottle,
}

impl Shared {
    fn count_dropped(&self, n: u64, topic: &str, why: &str) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(held_back) = self.drop_log.check() {
            warn!(
                broker = %self.broker,
                topic,
                reason = why,
                dropped = n,
                dropped_since_last_log = held_back,
                dropped_total = self.dropped.load(Ordering::Relaxed),
                "MQTT publish dropped"
            );
        }
    }
}

/// The core's outbound [`Bus`] over the MQTT client. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct MqttBus {
    client: AsyncClient,
    shared: Arc<Shared>,
}

impl MqttBus {
    /// Publishes refused so far: queue full, client stopped, topic invalid, packet too large,
    /// or discarded by a reconnect (queued when the connection dropped; the session is clean).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Bus for MqttBus {
    fn publish(&self, topic: String, payload: Vec<u8>, qos: Qos) -> bool {
        if self.shared.stopped.load(Ordering::Relaxed) {
            self.shared
                .count_dropped(1, &topic, "the MQTT client is stopped");
            return false;
        }
        if topic.len() + payload.len() + PUBLISH_OVERHEAD > MAX_PACKET_SIZE {
            // Queued, it would fail in the event loop and cost the whole connection.
            self.shared
                .count_dropped(1, &topic, "larger than the maximum packet size (256 KiB)");
            return false;
        }
        let qos = match qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        match self.client.try_publish(topic.as_str(), qos, false, payload) {
            Ok(()) => true,
            Err(_) => {
                let why = if topic.is_empty() || topic.contains(['+', '#']) {
                    "invalid topic"
                } else {
                    "the client's queue is full (broker slow or unreachable)"
                };
                self.shared.count_dropped(1, &topic, why);
                false
            }
        }
    }
}

/// The client's event loop; drive it with [`MqttConnection::run`].
pub struct MqttConnection {
    client: AsyncClient,
    eventloop: EventLoop,
    shared: Arc<Shared>,
}

impl fmt::Debug for MqttConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConnection")
            .field("broker", &self.shared.broker)
            .finish_non_exhaustive()
    }
}

/// Builds the client for the broker at `host:port` (an IPv6 host with or without brackets).
/// Nothing connects until [`MqttConnection::run`] runs; publishes are queued meanwhile.
pub fn client(
    host: &str,
    port: u16,
    credentials: Option<(String, String)>,
    client_id: String,
) -> (MqttBus, MqttConnection) {
    let host = if host.contains(':') && !host.starts_with('[') {
        // rumqttc connects to "{host}:{port}".
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let broker = format!("{host}:{port}");
    let mut options = MqttOptions::new(client_id, host, port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE)
        .set_inflight(INFLIGHT)
        .set_request_channel_capacity(REQUEST_QUEUE);
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    eventloop.set_network_options(network);
    let shared = Arc::new(Shared {
        broker,
        dropped: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        drop_log: LogThrottle::new(LOG_EVERY),
    });
    let bus = MqttBus {
        client: client.clone(),
        shared: shared.clone(),
    };
    (
        bus,
        MqttConnection {
            client,
            eventloop,
            shared,
        },
    )
}

/// What [`connect`] built.
#[derive(Debug)]
pub struct MqttGateway {
    /// The embedded broker, when the settings asked for one; shut it down after the
    /// connection's `run` has returned.
    pub broker: Option<EmbeddedBroker>,
    /// The core's bus.
    pub bus: MqttBus,
    /// The event loop: spawn `connection.run(handler, shutdown)`.
    pub connection: MqttConnection,
    /// Where the client connects (`host:port`, no password), for logs.
    pub broker_address: String,
}

/// Starts the embedded broker (for [`MqttSettings::Embedded`]) or parses the URL (for
/// [`MqttSettings::External`]), and builds the client for it. An external broker that is down
/// is not an error: the client keeps trying once it runs.
pub async fn connect(settings: &MqttSettings, client_id: String) -> Result<MqttGateway, MqttError> {
    match settings {
        // A plain broker and a loopback client, for tests of the client: no logins.
        MqttSettings::Embedded { listen, .. } => {
            let broker = EmbeddedBroker::start(listen).await?;
            let target = loopback_for(broker.local_addr());
            let (bus, connection) =
                client(&target.ip().to_string(), target.port(), None, client_id);
            Ok(MqttGateway {
                broker: Some(broker),
                broker_address: connection.broker_address().to_string(),
                bus,
                connection,
            })
        }
        MqttSettings::External { url } => {
            let url = MqttUrl::parse(url)?;
            let (bus, connection) = client(&url.host, url.port, url.credentials(), client_id);
            Ok(MqttGateway {
                broker: None,
                broker_address: connection.broker_address().to_string(),
                bus,
                connection,
            })
        }
    }
}

/// The address to reach a listener bound to `bound` from this machine: loopback for a
/// wildcard address, else the address itself.
fn loopback_for(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), bound.port())
        }
        _ => bound,
    }
}

impl MqttConnection {
    /// `host:port` of the broker this client connects to.
    pub fn broker_address(&self) -> &str {
        &self.shared.broker
    }

    /// Runs the event loop until `shutdown` turns true (or its sender is dropped): connects,
    /// reconnects with backoff, subscribes after every connection, hands inbound publishes
    /// to `handler`. On shutdown, sends what is queued (bounded), disconnects and returns.
    pub async fn run(
        mut self,
        handler: Arc<dyn PacketHandler>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let broker = self.shared.broker.clone();
        let retry_log = LogThrottle::new(LOG_EVERY);
        let mut backoff = BACKOFF_START;
        let mut connected = false;
        let mut awaiting_suback = false;
        // Publishes moved back to rumqttc's pending list by the last disconnect; a clean
        // session discards them on the next CONNACK.
        let mut pending_publishes = 0u64;
        loop {
            let polled = tokio::select! {
                biased;
                _ = shutdown.wait_for(|&s| s) => break,
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    connected = true;
                    backoff = BACKOFF_START;
                    info!(%broker, "connected to MQTT broker");
                    if !ack.session_present && pending_publishes > 0 {
                        self.shared.count_dropped(
                            pending_publishes,
                            "",
                            "queued when the connection was lost (clean session)",
                        );
                    }
                    pending_publishes = 0;
                    // Ahead of everything queued: the pending list goes before the channel.
                    let filters = skaben::SUBSCRIPTIONS
                        .iter()
                        .map(|f| SubscribeFilter::new((*f).to_string(), QoS::AtLeastOnce));
                    self.eventloop
                        .pending
                        .push_front(Request::Subscribe(Subscribe::new_many(filters)));
                    awaiting_suback = true;
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) if awaiting_suback => {
                    awaiting_suback = false;
                    let refused: Vec<&str> = ack
                        .return_codes
                        .iter()
                        .zip(skaben::SUBSCRIPTIONS)
                        .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                        .map(|(_, filter)| *filter)
                        .collect();
                    if refused.is_empty() {
                        debug!(%broker, filters = ?skaben::SUBSCRIPTIONS, "subscribed");
                    } else {
                        warn!(
                            %broker,
                            refused = ?refused,
                            "the MQTT broker refused the subscription; devices' packets will not arrive: allow this client to subscribe to these topics (broker ACL)"
                        );
                    }
                    handler.connected();
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    handler.packet(&publish.topic, &publish.payload);
                }
                Ok(_) => {}
                Err(e) => {
                    if self.eventloop.network.is_none() {
                        pending_publishes = self
                            .eventloop
                            .pending
                            .iter()
                            .filter(|r| matches!(r, Request::Publish(_)))
                            .count() as u64;
                    }
                    let hint = hint(&e);
                    if connected {
                        connected = false;
                        awaiting_suback = false;
                        handler.disconnected();
                        warn!(%broker, error = %e, retry_in = ?backoff, "lost the connection to the MQTT broker; reconnecting{hint}");
                    } else if let Some(held_back) = retry_log.check() {
                        warn!(%broker, error = %e, retry_in = ?backoff, failed_attempts = held_back + 1, "cannot connect to the MQTT broker; retrying{hint}");
                    }
                    tokio::select! {
                        biased;
                        _ = shutdown.wait_for(|&s| s) => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.shared.stopped.store(true, Ordering::Relaxed);
        if connected {
            self.flush_and_disconnect().await;
        }
        info!(%broker, "MQTT client stopped");
    }

    /// Sends what is queued, then DISCONNECT, then waits for the broker to close the
    /// connection, for at most [`SHUTDOWN_FLUSH`] in all. Closing right after DISCONNECT
    /// would leave the broker's PUBACKs unread, and the kernel would then reset the connection,
    /// which can make the broker drop publishes it has received but not yet read.
    async fn flush_and_disconnect(&mut self) {
        // Behind the queued publishes: they go out first. A full queue gets no DISCONNECT;
        // the connection is then closed when the time is up.
        if self.client.try_disconnect().is_err() {
            debug!("MQTT request queue full at shutdown; closing without DISCONNECT");
        }
        let eventloop = &mut self.eventloop;
        let mut sent = false;
        let flushed = tokio::time::timeout(SHUTDOWN_FLUSH, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => sent = true,
                    Ok(_) => {}
                    // After DISCONNECT, the broker closing the connection is the end we want.
                    Err(_) if sent => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        match flushed {
            Ok(Ok(())) => debug!("MQTT client disconnected cleanly"),
            Ok(Err(e)) => warn!(error = %e, "MQTT connection failed while flushing at shutdown"),
            Err(_) if sent => debug!("MQTT broker did not close the connection after DISCONNECT"),
            Err(_) => warn!(
                "MQTT client could not send everything queued within {SHUTDOWN_FLUSH:?}; closing"
            ),
        }
    }
}

/// What the operator can do about a connection error, when we know.
fn hint(e: &ConnectionError) -> &'static str {
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => " (check the user and password in --mqtt-url)",
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadClientId) => {
            " (the broker refused the client id)"
        }
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            " (is a broker running at this address?)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> MqttUrl {
        MqttUrl::parse(s).unwrap()
    }

    fn err(s: &str) -> String {
        MqttUrl::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn host_only_gets_the_default_port() {
        let u = ok("mqtt://broker.local");
        assert_eq!(u.host, "broker.local");
        assert_eq!(u.port, 1883);
        assert_eq!(u.credentials(), None);
        assert_eq!(u.address(), "broker.local:1883");
    }

    #[test]
    fn full_url_with_credentials() {
        let u = ok("mqtt://gatehouse:s3cret@192.168.1.10:1884");
        assert_eq!(u.host, "192.168.1.10");
        assert_eq!(u.port, 1884);
        assert_eq!(
            u.credentials(),
            Some(("gatehouse".to_string(), "s3cret".to_string()))
        );
    }

    #[test]
    fn tcp_is_a_synonym_and_the_scheme_is_case_insensitive() {
        assert_eq!(ok("tcp://h:1"), ok("MQTT://h:1"));
        assert_eq!(ok("mqtt://h:1/"), ok("mqtt://h:1"));
        assert_eq!(ok("  mqtt://h  "), ok("mqtt://h:1883"));
    }

    #[test]
    fn user_and_password_are_percent_decoded() {
        let u = ok("mqtt://us%40er:p%3Aa%2Fss%25@h");
        assert_eq!(
            u.credentials(),
            Some(("us@er".to_string(), "p:a/ss%".to_string()))
        );
        let u = ok("mqtt://%C3%A9t%C3%A9:x@h");
        assert_eq!(u.username.as_deref(), Some("été"));
    }

    #[test]
    fn unencoded_at_and_colon_in_the_password_still_work() {
        let u = ok("mqtt://user:pa:ss@word@h:1");
        assert_eq!(
            u.credentials(),
            Some(("user".to_string(), "pa:ss@word".to_string()))
        );
        assert_eq!(u.host, "h");
    }

    #[test]
    fn user_without_password() {
        let u = ok("mqtt://user@h");
        assert_eq!(u.username.as_deref(), Some("user"));
        assert_eq!(u.password, None);
        assert_eq!(u.credentials(), Some(("user".to_string(), String::new())));
        let u = ok("mqtt://user:@h");
        assert_eq!(u.password.as_deref(), Some(""));
    }

    #[test]
    fn ipv6_hosts_in_brackets() {
        let u = ok("mqtt://[::1]:1884");
        assert_eq!(u.host, "::1");
        assert_eq!(u.port, 1884);
        assert_eq!(u.address(), "[::1]:1884");
        assert_eq!(ok("mqtt://[fe80::1]").port, 1883);
        assert!(err("mqtt://::1:1883").contains("brackets"));
        assert!(err("mqtt://[::1").contains("']'"));
        assert!(err("mqtt://[nothost]:1").contains("IPv6"));
        assert!(err("mqtt://[::1]x").contains("after the IPv6"));
    }

    #[test]
    fn tls_is_refused_clearly() {
        assert_eq!(
            MqttUrl::parse("mqtts://h:8883"),
            Err(UrlError::TlsNotSupported)
        );
        assert!(err("ssl://h").contains("TLS is not supported yet"));
        assert!(err("mqtts://u:p@h").contains("--mqtt-url"));
    }

    #[test]
    fn other_shapes_name_the_setting_and_the_expected_form() {
        for bad in [
            "",
            "broker.local:1883",
            "http://h",
            "ws://h:9001",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://h:",
            "mqtt://h:0",
            "mqtt://h:65536",
            "mqtt://h:port",
            "mqtt://h:1883?client_id=x",
            "mqtt://h/path",
            "mqtt://@h",
            "mqtt://u:p%zz@h",
            "mqtt://u:%FF@h",
            "mqtt://h st:1",
        ] {
            let e = err(bad);
            assert!(e.contains("--mqtt-url"), "{bad:?}: {e}");
            assert!(
                e.contains("mqtt://[user[:password]@]host[:port]"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn the_password_is_never_shown() {
        let u = ok("mqtt://gatehouse:hunter2@h:1");
        assert_eq!(u.to_string(), "mqtt://gatehouse:***@h:1");
        assert!(!format!("{u:?}").contains("hunter2"));
        // Not in errors either, even when it is what is wrong.
        let e = err("mqtt://u:hunter2%@h");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("password"), "{e}");
        let e = err("mqtt://u:hunter2@h:bad");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn loopback_for_wildcards() {
        let a: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(loopback_for(a), "127.0.0.1:1883".parse().unwrap());
        let a: SocketAddr = "[::]:1883".parse().unwrap();
        assert_eq!(loopback_for(a), "[::1]:1883".parse().unwrap());
        let a: SocketAddr = "192.168.1.5:1883".parse().unwrap();
        assert_eq!(loopback_for(a), a);
    }

    #[test]
    fn client_ids_are_distinct() {
        let a = new_client_id();
        assert!(a.starts_with("gatehouse-") && a.len() == "gatehouse-".len() + 16);
        assert_ne!(a, new_client_id());
    }

    #[test]
    fn log_throttle_counts_what_it_holds_back() {
        let t = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(t.check(), Some(0));
        assert_eq!(t.check(), None);
        assert_eq!(t.check(), None);
        let t = LogThrottle::new(Duration::ZERO);
        assert_eq!(t.check(), Some(0));
        assert_eq!(t.check(), Some(0));
    }
}
