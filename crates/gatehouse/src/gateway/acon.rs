//! The ACon TCP listener: one task per connection, "decode what is buffered, else read more".
//!
//! Invariants:
//! - Frames of one connection are answered in order, each after its record is durable.
//! - A bad frame costs that frame only (an error event, no answer); the connection closes on
//!   an oversized frame, too many bad frames in a row, an idle or slow peer, or shutdown.
//! - At most `max_connections` connections, and at most `max_connections_per_addr` from one
//!   address; one more is accepted and closed at once, counted (`acon_refused_full`,
//!   `acon_refused_per_addr`), and logged at most once per [`REFUSED_LOG_EVERY`] with the
//!   number since the last line. `acon_connections` counts the open ones.
//! - A failing `accept` (out of file descriptors, which the start-up budget makes unlikely)
//!   is retried after a back-off (5 ms doubling to 1 s) and logged at most once per
//!   [`REFUSED_LOG_EVERY`] with the count.
//! - A started frame must be complete within `frame_timeout` of its first byte (a deadline:
//!   bytes that trickle in do not extend it), and an answer must be taken within it too.
//! - A peer outside `--acon-allow` is closed at accept, before a byte is read; those closes
//!   are counted, and logged at most once per [`REFUSED_LOG_EVERY`] with their number.
//! - A connection the core refuses a frame of (see `core::acon`'s guards) gets no answer for
//!   it and is closed; so is a connection a newer one from the same address took its board
//!   from.
//! - On shutdown, frames already received are answered before the connection closes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use acon::{Decoder, DecoderError, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tracing::{debug, info, warn};

use crate::cidr::AllowList;
use crate::clock::now_ms;
use crate::core::{AconConn, AconOutcome, Hub};

/// How long shutdown waits for bytes a board has already sent.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

/// Limits of the listener.
#[derive(Debug, Clone)]
pub struct AconLimits {
    pub max_frame: usize,
    pub max_connections: usize,
    /// Connections from one address at once (boards behind one carrier NAT share one).
    pub max_connections_per_addr: usize,
    /// Close a connection that sends nothing for this long.
    pub idle_timeout: Duration,
    /// Close a connection that takes longer than this, from the frame's first byte, to finish
    /// a started frame, or longer than this to take an answer.
    pub frame_timeout: Duration,
    /// Close a connection after this many malformed frames in a row.
    pub max_bad_frames: u32,
    /// The networks boards may connect from (`--acon-allow`); `None`: anywhere.
    pub allow: Option<AllowList>,
}

/// Connections closed at accept (outside `--acon-allow`, over a connection cap) and failed
/// accepts are logged at most once per this time, with their number.
pub const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts events and says when one log line is due: the first, then at most one per period.
struct LogEvery {
    period: Duration,
    last: Option<Instant>,
    since: u64,
}

impl LogEvery {
    fn new(period: Duration) -> LogEvery {
        LogEvery {
            period,
            last: None,
            since: 0,
        }
    }

    /// Counts one; `Some(n)` when a line is due, `n` counting this one and those not logged
    /// since the last line.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// The open connections' close signals, for a newer connection that takes a board over.
#[derive(Default)]
struct Live(Mutex<HashMap<u64, Arc<Notify>>>);

impl Live {
    fn open(&self, id: u64) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        self.lock().insert(id, n.clone());
        n
    }

    fn closed(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Tells connection `id` to close (it closes at its next wait for bytes).
    fn close(&self, id: u64) {
        if let Some(n) = self.lock().get(&id) {
            n.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Notify>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Open connections per address.
#[derive(Default)]
struct PerAddr(Mutex<HashMap<std::net::IpAddr, usize>>);

impl PerAddr {
    /// Counts one more from `ip` unless it has `max` open.
    fn try_open(&self, ip: std::net::IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn closed(&self, ip: std::net::IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Accepts connections until `shutdown` turns true, then waits for the open ones to finish
/// what they have received.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    limits: AconLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    let live = Arc::new(Live::default());
    let per_addr = Arc::new(PerAddr::default());
    let mut not_allowed = LogEvery::new(REFUSED_LOG_EVERY);
    let mut full = LogEvery::new(REFUSED_LOG_EVERY);
    let mut addr_full = LogEvery::new(REFUSED_LOG_EVERY);
    let mut accept_failed = LogEvery::new(REFUSED_LOG_EVERY);
    let mut next_id = 0u64;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|&s| s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(c) => {
                backoff = Duration::from_millis(5);
                c
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, then try again.
                hub.stats.acon_accept_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = accept_failed.hit(Instant::now()) {
                    warn!(error = %e, failed = n, "ACon accept failed (this one and those since the last such line); retrying after a back-off of up to 1 s");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        if let Some(allow) = &limits.allow
            && !allow.permits(ip)
        {
            drop(stream);
            hub.stats.acon_not_allowed.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = not_allowed.hit(Instant::now()) {
                warn!(%peer, closed = n, "connections from outside --acon-allow closed at accept (this one and those since the last such line)");
            }
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            hub.stats.acon_refused_full.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = full.hit(Instant::now()) {
                warn!(%peer, max = limits.max_connections, closed = n, "ACon connections closed at accept: --acon-max-connections are open (this one and those since the last such line)");
            }
            continue;
        };
        if !per_addr.try_open(ip, limits.max_connections_per_addr) {
            drop(stream);
            hub.stats
                .acon_refused_per_addr
                .fetch_add(1, Ordering::Relaxed);
            if let Some(n) = addr_full.hit(Instant::now()) {
                warn!(%peer, max = limits.max_connections_per_addr, closed = n, "ACon connections closed at accept: --acon-max-connections-per-addr are open from this address (this one and those since the last such line, from any address)");
            }
            continue;
        }
        hub.stats.acon_connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let mut conn = AconConn {
            id: next_id,
            ip,
            peer: peer.to_string(),
            holds: None,
        };
        let (hub, limits, live, shutdown, per_addr) = (
            hub.clone(),
            limits.clone(),
            live.clone(),
            shutdown.clone(),
            per_addr.clone(),
        );
        tokio::spawn(async move {
            let kill = live.open(conn.id);
            let reason = connection(stream, &mut conn, &hub, &limits, &live, &kill, shutdown).await;
            hub.acon_closed(&conn, now_ms());
            live.closed(conn.id);
            per_addr.closed(ip);
            hub.stats.acon_connections.fetch_sub(1, Ordering::Relaxed);
            debug!(%peer, reason, "connection closed");
            drop(permit);
        });
    }
    drop(listener);
    // Every connection holds a slot: holding them all means every connection is done.
    let total = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(total).await;
}

/// Serves one connection; returns why it ended. `kill` is notified when a newer connection
/// took this one's board over.
async fn connection(
    mut stream: TcpStream,
    conn: &mut AconConn,
    hub: &Hub,
    limits: &AconLimits,
    live: &Live,
    kill: &Notify,
    mut shutdown: watch::Receiver<bool>,
) -> &'static str {
    let peer_s = conn.peer.clone();
    let mut decoder = Decoder::new(limits.max_frame);
    let mut out = Vec::new();
    let mut bad_in_row = 0u32;
    // When the frame being received must be complete: its first byte + `frame_timeout`.
    let mut frame_deadline: Option<tokio::time::Instant> = None;
    // Answers waiting for their commit: (commit, board ID, SEND, encoded answer).
    let mut pending: Vec<(crate::store::Commit, String, u64, Vec<u8>)> = Vec::new();
    loop {
        // Everything already buffered: decode, record, queue the answers.
        let mut malformed = Vec::new();
        while let Some(item) = decoder.next_frame() {
            let now = now_ms();
            match item {
                Ok(frame) => match Message::parse(&frame.bytes) {
                    Ok(msg) => {
                        bad_in_row = 0;
                        match hub.acon_message(&frame.bytes, &msg, conn, now) {
                            AconOutcome::Answer {
                                commit,
                                answer,
                                displaced,
                            } => {
                                if let Some(old) = displaced {
                                    live.close(old);
                                }
                                if conn.holds.is_none() {
                                    conn.holds = Some(msg.id.clone());
                                }
                                pending.push((commit, msg.id, msg.send, answer))
                            }
                            AconOutcome::Refused { commit, why } => {
                                // Answers already due on this connection go out first.
                                for (commit, _, _, answer) in pending.drain(..) {
                                    if commit.wait().await.is_ok() {
                                        out.extend_from_slice(&answer);
                                    }
                                }
                                if !out.is_empty() {
                                    let _ = tokio::time::timeout(
                                        limits.frame_timeout,
                                        stream.write_all(&out),
                                    )
                                    .await;
                                }
                                // Events of refusals are rate-limited; so is this line.
                                let logged = commit.is_some();
                                if let Some(commit) = commit {
                                    let _ = commit.wait().await;
                                }
                                if logged {
                                    info!(peer = %peer_s, device = %msg.id, reason = why.reason(), "frame refused; connection closed");
                                } else {
                                    debug!(peer = %peer_s, device = %msg.id, reason = why.reason(), "frame refused; connection closed");
                                }
                                return why.reason();
                            }
                        }
                    }
                    Err(e) => {
                        bad_in_row += 1;
                        warn!(peer = %peer_s, error = %e, "malformed ACon frame");
                        malformed.push(hub.acon_malformed(
                            &frame.bytes,
                            &e.to_string(),
                            &peer_s,
                            now,
                        ));
                    }
                },
                Err(DecoderError::Unterminated { bytes }) => {
                    bad_in_row += 1;
                    let reason = DecoderError::Unterminated { bytes: Vec::new() }.to_string();
                    warn!(peer = %peer_s, "ACon frame without CLOSE");
                    malformed.push(hub.acon_malformed(&bytes, &reason, &peer_s, now));
                }
                Err(e @ DecoderError::TooLarge { .. }) => {
                    warn!(peer = %peer_s, error = %e, "closing connection");
                    let c = hub.acon_malformed(b"", &e.to_string(), &peer_s, now);
                    let _ = c.wait().await;
                    return "frame too large";
                }
            }
            if bad_in_row > limits.max_bad_frames {
                break;
            }
        }
        // Answer in order, each once durable.
        for (commit, device, send, answer) in pending.drain(..) {
            if let Err(e) = commit.wait().await {
                warn!(peer = %peer_s, %device, send, error = %e, "message not recorded; no answer");
                return "store failure";
            }
            out.extend_from_slice(&answer);
        }
        for c in malformed {
            let _ = c.wait().await;
        }
        if !out.is_empty() {
            match tokio::time::timeout(limits.frame_timeout, stream.write_all(&out)).await {
                Ok(Ok(())) => out.clear(),
                Ok(Err(_)) => return "write failed",
                Err(_) => return "peer too slow to take answers",
            }
        }
        if bad_in_row > limits.max_bad_frames {
            warn!(peer = %peer_s, limit = limits.max_bad_frames, "too many malformed frames in a row; closing");
            return "too many malformed frames";
        }
        if *shutdown.borrow() {
            return "shutdown";
        }
        // Read more.
        let wait = if decoder.in_frame() {
            let now = tokio::time::Instant::now();
            let deadline = *frame_deadline.get_or_insert(now + limits.frame_timeout);
            deadline.saturating_duration_since(now)
        } else {
            frame_deadline = None;
            limits.idle_timeout
        };
        let buf = decoder.buffer_mut();
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(2048);
        }
        let read = tokio::select! {
            r = tokio::time::timeout(wait, stream.read_buf(buf)) => Some(r),
            _ = shutdown.wait_for(|&s| s) => None,
            _ = kill.notified() => {
                debug!(peer = %peer_s, "a newer connection from the same address took the board over");
                return "board taken over by a newer connection from the same address";
            }
        };
        let Some(read) = read else {
            // What the board has already sent is in flight: take it, answer it, then close
            // (the check after answering, above).
            drain_received(&mut stream, &mut decoder, limits.max_frame).await;
            continue;
        };
        match read {
            Ok(Ok(0)) => return "closed by peer",
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return "read failed",
            Err(_) => {
                let in_frame = decoder.in_frame();
                info!(peer = %peer_s, in_frame, "connection timed out");
                return if in_frame {
                    "frame not finished in time"
                } else {
                    "idle"
                };
            }
        }
        if decoder.pending() == 0 {
            let buf = decoder.buffer_mut();
            if buf.capacity() > 16 * 1024 {
                buf.shrink_to(4096);
            }
        }
    }
}

/// Moves the bytes already on their way into the decoder: reads until nothing arrives for
/// [`SHUTDOWN_GRACE`] (the reactor may not have seen bytes that are already in the socket).
/// Stops at `limit` bytes so a peer that keeps sending cannot hold up shutdown.
async fn drain_received(stream: &mut TcpStream, decoder: &mut Decoder, limit: usize) {
    let mut taken = 0;
    while taken < limit {
        let buf = decoder.buffer_mut();
        buf.reserve(4096);
        match tokio::time::timeout(SHUTDOWN_GRACE, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => taken += n,
            _ => break,
        }
    }
}
