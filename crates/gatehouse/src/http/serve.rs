//! The HTTP accept loop: hyper's HTTP/1.1 connection per peer, with the limits a stranger on
//! the network must not get past.
//!
//! - a header deadline (`--http-header-timeout-secs`): a request's headers must be complete
//!   within it, and a keep-alive connection idle between requests is closed after it (hyper
//!   starts the same clock when it waits for the next request), so a slow or silent client
//!   cannot hold a connection;
//! - a request deadline (`--http-request-timeout-secs`) around the handler, which includes
//!   reading the body: past it the answer is 503;
//! - at most `--http-max-connections` open, and `--http-max-connections-per-addr` from one
//!   address: more are accepted and closed at once, counted, logged at most once per 10 s;
//! - a failing accept (out of file descriptors) backs off 5 ms doubling to 1 s, logged at
//!   most once per 10 s with the count;
//! - shutdown: stop accepting, let each connection finish the request it is on (bounded by the
//!   request deadline), close idle ones.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use super::ApiError;
use crate::core::Hub;

/// The HTTP listeners' limits (`--http-*`).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_addr: usize,
    /// Event streams open at once (`--http-max-streams`, `GET /api/events/stream`).
    pub max_streams: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
            max_connections_per_addr: 64,
            max_streams: 64,
        }
    }
}

const BACKOFF_START: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(10);

/// At most one log line per period, carrying how many happened since the last one.
struct Throttle {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            last: None,
            held: 0,
        }
    }

    /// `Some(count since the last line, this one included)` when a line is due.
    fn hit(&mut self) -> Option<u64> {
        self.held += 1;
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// Why a connection is closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Full,
    PerAddr,
}

/// The open connections of one listener: in all and per address.
struct Open {
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
    max: usize,
    max_per_addr: usize,
    /// Signalled each time a connection closes (for the drain at shutdown).
    closed: Notify,
}

impl Open {
    fn admit(self: &Arc<Self>, ip: IpAddr, stats: Arc<Hub>) -> Result<Slot, Refusal> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *g;
        if *total >= self.max {
            return Err(Refusal::Full);
        }
        let n = per.entry(ip).or_insert(0);
        if *n >= self.max_per_addr {
            return Err(Refusal::PerAddr);
        }
        *n += 1;
        *total += 1;
        stats.stats.http_connections.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            open: self.clone(),
            ip,
            stats,
        })
    }

    fn count(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

/// One admitted connection; frees its place when dropped.
struct Slot {
    open: Arc<Open>,
    ip: IpAddr,
    stats: Arc<Hub>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.open.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *g;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
        drop(g);
        self.stats
            .stats
            .http_connections
            .fetch_sub(1, Ordering::Relaxed);
        self.open.closed.notify_waiters();
    }
}

/// Serves `router` on `listener` until `shutdown` turns true, then drains. `what` names the
/// listener in logs (`HTTP API`, `metrics`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    hub: Arc<Hub>,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
) {
    let stats = hub;
    let open = Arc::new(Open {
        inner: Mutex::new((0, HashMap::new())),
        max: limits.max_connections.max(1),
        max_per_addr: limits.max_connections_per_addr.max(1),
        closed: Notify::new(),
    });
    let mut backoff = BACKOFF_START;
    let mut accept_log = Throttle::new();
    let mut full_log = Throttle::new();
    let mut per_addr_log = Throttle::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|&s| s) => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = BACKOFF_START;
                a
            }
            Err(e) => {
                stats
                    .stats
                    .http_accept_errors
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(n) = accept_log.hit() {
                    warn!(listener = what, error = %e, failed_accepts = n, retry_in = ?backoff,
                        "cannot accept HTTP connections (out of file descriptors? raise the limit with ulimit -n)");
                }
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|&s| s) => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        let slot = match open.admit(ip, stats.clone()) {
            Ok(s) => s,
            Err(Refusal::Full) => {
                stats
                    .stats
                    .http_refused_full
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(n) = full_log.hit() {
                    warn!(listener = what, %peer, closed = n, max = open.max,
                        "HTTP connections closed at accept: --http-max-connections are open");
                }
                continue;
            }
            Err(Refusal::PerAddr) => {
                stats
                    .stats
                    .http_refused_per_addr
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(n) = per_addr_log.hit() {
                    warn!(listener = what, %peer, closed = n, max = open.max_per_addr,
                        "HTTP connections closed at accept: --http-max-connections-per-addr are open from this address");
                }
                continue;
            }
        };
        tokio::spawn(connection(
            stream,
            peer,
            router.clone(),
            limits.clone(),
            slot,
            shutdown.clone(),
        ));
    }
    drop(listener);
    // Drain: every connection task sees the shutdown and finishes; each is bounded by the
    // request deadline after it.
    loop {
        let closed = open.closed.notified();
        if open.count() == 0 {
            break;
        }
        closed.await;
    }
}

/// One connection, until the peer closes, a deadline passes, or shutdown.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    slot: Slot,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let inner = TowerToHyperService::new(router);
    let request_timeout = limits.request_timeout;
    let stats = slot.stats.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // The peer's address, for the handlers (`ConnectInfo`): logins back off by it.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let fut = hyper::service::Service::call(&inner, req);
        let stats = stats.clone();
        async move {
            match tokio::time::timeout(request_timeout, fut).await {
                Ok(r) => r,
                Err(_) => {
                    stats
                        .stats
                        .http_request_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(
                        ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "the request was not finished within {} s (--http-request-timeout-secs); a change it asked for may or may not have been made: read the resource again",
                                request_timeout.as_secs_f64()
                            ),
                        )
                        .into_response(),
                    )
                }
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async { let _ = shutdown.wait_for(|&s| s).await; } => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.request_timeout, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            slot.stats
                .stats
                .http_header_timeouts
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "HTTP connection closed: headers not complete within --http-header-timeout-secs");
        } else {
            debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
    }
    drop(slot);
}
