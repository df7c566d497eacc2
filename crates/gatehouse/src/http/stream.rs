//! `GET /api/events/stream`: the event log as server-sent events, live, resumable, with the
//! devices' state coalesced.
//!
//! A stream carries three kinds of message:
//! - `event: event`, `id: <seq>`, `data:` the event as `/api/events` shows it: every event
//!   that matches the stream's filter (`device`, `kind`), none dropped;
//! - `event: device`, `data:` the device's summary as `/api/devices` lists it, for each
//!   device the stream's events concern, at most once per [`DEVICE_EVERY`] per stream (a burst
//!   of events gives one message with the latest state). Its `id` is the stream's resume
//!   point at that moment: every event of the stream up to it has been sent before it (so the
//!   state shown includes them), and a browser that reconnects after it misses nothing;
//! - `event: resync`, `data: {"reason", "message"}`: the stream cannot show every event
//!   since the client's last one (the backlog is over [`BACKLOG_MAX`], retention removed it,
//!   the id is not from this log, or the stream fell behind the live events); read the state
//!   again (`/api/devices`, `/api/events`). The stream goes on with live events.
//!
//! Invariants:
//! - ids are the event log's seqs, so they grow along a stream and `Last-Event-ID` (or
//!   `?after=`) resumes exactly: the stream subscribes to the committed events *before* it
//!   reads what the client missed, sends the stored events after the id oldest first, then
//!   the live ones above the newest seq it read: no gap, no duplicate. Without an id the
//!   stream starts live. The store's own `retention_pruned` events are in the log, so a
//!   resumed stream's backlog may show them; live streams do not (the store writes them
//!   without the core).
//! - a stream never slows the core: it reads the committed events' broadcast, and one that
//!   falls more than the broadcast's buffer behind (a client that does not read) is told
//!   with a `resync`;
//! - at most `--http-max-streams` are open (counted in `http_streams`); one more is refused
//!   with 503 before anything is read;
//! - a stream ends when the server shuts down, so the drain does not wait for it; the
//!   request deadline covers only the answer's head, not the stream.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::history::event_json;
use super::{ApiError, AppState, summary_json};
use crate::core::{CommittedEvent, CoreError, Hub};
use crate::store::{EventFilter, EventRecord, StoredEvent};

/// Most stored events a resumed stream sends before going live; more is a `resync`.
pub const BACKLOG_MAX: u32 = 10_000;
/// The shortest time between two `device` messages of a stream.
pub const DEVICE_EVERY: Duration = Duration::from_millis(250);
/// How often an open stream checks that its session or token is still live.
pub const AUTH_EVERY: Duration = Duration::from_secs(5);

/// A keep-alive comment after this long without a message.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// The event streams' settings: how many may be open (`--http-max-streams`; the count is the
/// `http_streams` gauge) and the server's shutdown, which ends them.
#[derive(Clone)]
pub struct Streams {
    max: u64,
    shutdown: watch::Receiver<bool>,
}

impl Streams {
    pub fn new(max: usize, shutdown: watch::Receiver<bool>) -> Streams {
        Streams {
            max: u64::try_from(max.max(1)).unwrap_or(u64::MAX),
            shutdown,
        }
    }
}

/// One open stream's place under the cap; freed when the stream is dropped (the client went
/// away, or the stream ended).
struct Slot(Arc<Hub>);

impl Slot {
    fn take(hub: &Arc<Hub>, max: u64) -> Option<Slot> {
        hub.stats
            .http_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(hub.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.stats.http_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a stream shows, as `/api/events` filters: one device, some kinds, one actor (each
/// absent or blank: any).
#[derive(Debug, Default, Clone)]
struct Filter {
    device: Option<String>,
    /// Empty: every kind.
    kinds: Vec<String>,
    actor: Option<String>,
}

impl Filter {
    fn matches(&self, e: &CommittedEvent) -> bool {
        self.matches_record(e.stored())
    }

    fn matches_record(&self, r: &EventRecord) -> bool {
        self.device
            .as_ref()
            .is_none_or(|d| r.device.as_deref() == Some(d.as_str()))
            && (self.kinds.is_empty() || self.kinds.contains(&r.kind))
            && self.actor.as_ref().is_none_or(|a| r.actor == *a)
    }
}

/// The request: the filter and the seq to resume after (`Last-Event-ID`, else `?after=`).
fn parse(
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> Result<(Filter, Option<i64>), ApiError> {
    let mut filter = Filter::default();
    let (mut device, mut kind, mut actor, mut after) = (None, None, None, None);
    for (name, value) in pairs {
        let slot = match name.as_str() {
            "device" => &mut device,
            "kind" => &mut kind,
            "actor" => &mut actor,
            "after" => &mut after,
            "limit" => {
                return Err(ApiError::field(
                    "limit",
                    "limit: a stream has no limit; resume after an event with Last-Event-ID or ?after=<seq>",
                ));
            }
            other => {
                return Err(ApiError {
                    status: StatusCode::BAD_REQUEST,
                    message: format!(
                        "unknown parameter {other:?}: the stream takes device, kind, actor and after"
                    ),
                    field: Some(other.to_string()),
                    extra: None,
                });
            }
        };
        if slot.replace(value.clone()).is_some() {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                message: format!("{name}: given more than once"),
                field: Some(name.clone()),
                extra: None,
            });
        }
    }
    let given = |v: Option<String>| v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    filter.device = given(device);
    filter.actor = given(actor);
    filter.kinds = kind
        .iter()
        .flat_map(|k| k.split(','))
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    let seq = |field: &'static str, v: &str| {
        v.trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::field(
                    field,
                    format!("{field}: {v:?} is not an event id (a seq, 0 or more)"),
                )
            })
    };
    // A browser reconnects to the same URL with the id of the last message it got: the
    // header is newer than the query.
    let header = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .filter(|v| !v.trim().is_empty());
    let after = match (header, after) {
        (Some(h), _) => Some(seq("Last-Event-ID", h)?),
        (None, Some(a)) => Some(seq("after", &a)?),
        (None, None) => None,
    };
    Ok((filter, after))
}

/// The event log as server-sent events: live, filtered, resumable.
#[utoipa::path(
    get,
    path = "/api/events/stream",
    tag = "history",
    params(
        ("device" = Option<String>, Query, description = "Only this device's events (`acon/1953`, `lock/all`)"),
        ("kind" = Option<String>, Query, description = "Only events of these kinds, comma-separated (`online,offline`)"),
        ("actor" = Option<String>, Query, description = "Only events of this actor (`device`, `server`, an account, `token:<name>`, `rule:<name>`)"),
        ("after" = Option<i64>, Query, description = "Resume after this event id (a seq); the `Last-Event-ID` header wins"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id: the events missed, then live ones"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `event` messages (id = seq, data = the event as `/api/events` gives it), coalesced `device` messages (the device's summary), `resync` when a gap cannot be filled, keep-alive comments", content_type = "text/event-stream", body = String),
        (status = 400, description = "A parameter is wrong (`field` names it)", body = super::ErrorBody),
        (status = 503, description = "`--http-max-streams` streams are open", body = super::ErrorBody),
    )
)]
async fn stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let (filter, after) = parse(&pairs, &headers)?;
    let Some(slot) = Slot::take(&s.hub, s.streams.max) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} event streams are open, the most --http-max-streams allows: close one (a console tab) or raise the flag",
                s.streams.max
            ),
        ));
    };
    // Subscribe first: whatever commits from now on is in `rx`; what committed before is in
    // the store for the backlog read below.
    let rx = s.hub.subscribe();
    let mut feed = Feed {
        hub: s.hub.clone(),
        rx,
        filter,
        out: VecDeque::new(),
        backlog: VecDeque::new(),
        skip_upto: 0,
        sent_upto: 0,
        devices: Coalesce::default(),
        shutdown: s.streams.shutdown.clone(),
        who: super::auth::identity(),
        policy: s.auth.policy,
        check_at: Instant::now() + AUTH_EVERY,
        ended: false,
        _slot: slot,
    };
    feed.out
        .push_back(SseEvent::default().comment("gatehouse events"));
    if let Some(after) = after {
        feed.catch_up(after).await?;
    }
    let body = futures_util::stream::unfold(feed, |mut f| async move {
        let e = f.next().await?;
        Some((Ok::<_, Infallible>(e), f))
    });
    let mut r = Sse::new(body)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(r)
}

/// Devices whose `device` message is due: each at most once per flush, flushes at least
/// [`DEVICE_EVERY`] apart.
#[derive(Default)]
struct Coalesce {
    /// In the order their first event came.
    pending: Vec<String>,
    queued: HashSet<String>,
    last_flush: Option<Instant>,
    /// When the pending devices go out (`None`: nothing pending).
    due: Option<Instant>,
}

impl Coalesce {
    fn touch(&mut self, device: &str) {
        if !self.queued.contains(device) {
            self.queued.insert(device.to_string());
            self.pending.push(device.to_string());
        }
        if self.due.is_none() {
            let now = Instant::now();
            self.due = Some(self.last_flush.map_or(now, |t| (t + DEVICE_EVERY).max(now)));
        }
    }

    /// The devices to show now, if their time has come.
    fn take_due(&mut self, now: Instant) -> Option<Vec<String>> {
        if self.due.is_none_or(|d| d > now) {
            return None;
        }
        self.due = None;
        self.last_flush = Some(now);
        self.queued.clear();
        Some(std::mem::take(&mut self.pending))
    }
}

/// One open stream: what it still has to send, where it is in the log, and its devices.
struct Feed {
    hub: Arc<Hub>,
    rx: broadcast::Receiver<Arc<CommittedEvent>>,
    filter: Filter,
    /// Messages ready to go, in order.
    out: VecDeque<SseEvent>,
    /// Stored events still to send before the live ones, oldest first.
    backlog: VecDeque<StoredEvent>,
    /// Live events up to this seq were covered by the backlog read (or a resync): skipped.
    skip_upto: i64,
    /// The resume point: every event of the stream up to this seq has been sent.
    sent_upto: i64,
    devices: Coalesce,
    shutdown: watch::Receiver<bool>,
    /// Who opened the stream: checked every [`AUTH_EVERY`], so a revoked or expired session
    /// or token ends it with a `logout` message.
    who: Option<crate::core::accounts::Identity>,
    policy: crate::core::accounts::SessionPolicy,
    check_at: Instant,
    /// The `logout` message went out: the stream ends.
    ended: bool,
    _slot: Slot,
}

impl Feed {
    /// Reads what a client that saw everything up to `after` missed: the backlog, or a
    /// `resync` when it cannot be shown.
    async fn catch_up(&mut self, after: i64) -> Result<(), ApiError> {
        let read = self
            .hub
            .store()
            .events_after(
                EventFilter {
                    device: self.filter.device.clone(),
                    // One kind is read by the store's index; several, and the actor, are
                    // matched here (the backlog's cap then counts the rows read).
                    kind: match self.filter.kinds.as_slice() {
                        [one] => Some(one.clone()),
                        _ => None,
                    },
                    limit: BACKLOG_MAX + 1,
                },
                after,
            )
            .await
            .map_err(CoreError::from)?;
        let newest = read.newest.unwrap_or(0);
        let gone = match read.oldest {
            // Seqs have no holes but those retention makes: a first kept seq above the next
            // one after `after` means events the client did not see were removed.
            Some(oldest) if oldest > after.saturating_add(1) => Some((
                "retention",
                format!(
                    "events after {after} were removed by retention (the oldest kept is {oldest})"
                ),
            )),
            _ if after > newest => Some((
                "unknown_id",
                format!(
                    "{after} is not an event of this log (the newest is {newest}): the database was replaced or restored"
                ),
            )),
            _ if read.events.len() > BACKLOG_MAX as usize => Some((
                "backlog_too_long",
                format!("more than {BACKLOG_MAX} events after {after}"),
            )),
            _ => None,
        };
        // Live events up to the newest seq read are covered: shown from the backlog, or
        // behind the resync.
        self.skip_upto = newest;
        match gone {
            Some((reason, message)) => {
                self.sent_upto = self.skip_upto;
                self.out
                    .push_back(resync(Some(self.sent_upto), reason, &message));
            }
            // Nothing missed: the stream is at the newest event already.
            None if read.events.is_empty() => self.sent_upto = self.skip_upto,
            None => {
                let filter = &self.filter;
                let backlog: VecDeque<StoredEvent> = read
                    .events
                    .into_iter()
                    .filter(|e| filter.matches_record(&e.record))
                    .collect();
                // Nothing of what was missed matches: the stream is at the newest already.
                self.sent_upto = if backlog.is_empty() {
                    self.skip_upto
                } else {
                    after
                };
                self.backlog = backlog;
            }
        }
        Ok(())
    }

    /// The next message; `None` ends the stream (shutdown, or the core is gone).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if *self.shutdown.borrow() || self.ended {
                return None;
            }
            let now = Instant::now();
            if now >= self.check_at {
                self.check_at = now + AUTH_EVERY;
                if !self.still_allowed() {
                    self.ended = true;
                    return Some(
                        SseEvent::default()
                            .event("logout")
                            .data(r#"{"reason":"the session or token has ended: log in again"}"#),
                    );
                }
            }
            if let Some(e) = self.out.pop_front() {
                return Some(e);
            }
            if let Some(devices) = self.devices.take_due(now) {
                self.show_devices(devices);
                continue;
            }
            if let Some(row) = self.backlog.pop_front() {
                self.send(row.seq, &row.record);
                if self.backlog.is_empty() {
                    // The read covered everything up to `skip_upto`: what matched was sent.
                    self.sent_upto = self.skip_upto;
                }
                continue;
            }
            let due = self.devices.due;
            let check_at = self.check_at;
            let received = tokio::select! {
                biased;
                _ = async { self.shutdown.wait_for(|&s| s).await.is_ok() } => return None,
                () = tokio::time::sleep_until(check_at) => continue,
                () = async {
                    if let Some(d) = due {
                        tokio::time::sleep_until(d).await;
                    }
                }, if due.is_some() => continue,
                r = self.rx.recv() => r,
            };
            match received {
                Ok(e) => {
                    if e.seq <= self.skip_upto {
                        continue;
                    }
                    self.skip_upto = e.seq;
                    if self.filter.matches(&e) {
                        let text = e.wire(|seq, r| event_json(seq, r).to_string());
                        self.send_text(e.seq, text, e.device.as_deref());
                    }
                    self.sent_upto = e.seq;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.out.push_back(resync(
                        None,
                        "behind",
                        &format!(
                            "the stream fell behind and skipped {n} events: the client did not read fast enough"
                        ),
                    ));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Whether the stream's opener may still read.
    fn still_allowed(&self) -> bool {
        let Some(who) = &self.who else {
            return false;
        };
        let policy = self.policy;
        self.hub
            .accounts_check(crate::clock::now_ms(), |st, fx| {
                st.identity_live(fx, who, &policy).then(|| who.clone())
            })
            .is_some()
    }

    /// Queues a stored event (and marks its device for a `device` message).
    fn send(&mut self, seq: i64, r: &EventRecord) {
        let text = event_json(seq, r).to_string();
        self.send_text(seq, &text, r.device.as_deref());
    }

    /// Queues an event's JSON text (and marks its device for a `device` message).
    fn send_text(&mut self, seq: i64, text: &str, device: Option<&str>) {
        self.out.push_back(
            SseEvent::default()
                .event("event")
                .id(seq.to_string())
                .data(text),
        );
        self.sent_upto = self.sent_upto.max(seq);
        if let Some(d) = device {
            self.devices.touch(d);
        }
    }

    /// Queues the current summary of each device (those the table does not have, like
    /// `<type>/all`, have none).
    fn show_devices(&mut self, devices: Vec<String>) {
        for summary in self.hub.summaries(devices.iter().map(String::as_str)) {
            self.out.push_back(
                SseEvent::default()
                    .event("device")
                    .id(self.sent_upto.to_string())
                    .data(summary_json(&summary).to_string()),
            );
        }
    }
}

/// A `resync` message: why the stream cannot show every event since the client's last one.
/// With `id`, a client reconnecting after it resumes from there.
fn resync(id: Option<i64>, reason: &str, message: &str) -> SseEvent {
    let mut e = SseEvent::default().event("resync");
    if let Some(id) = id {
        e = e.id(id.to_string());
    }
    e.data(json!({"reason": reason, "message": message}).to_string())
}
