//! The event log: every event, newest first, filtered in the URL (device, kinds, actor, time
//! range), paged back by seq, with a live tail and its export.
//!
//! Invariants:
//! - The filters are those of `/api/events` ([`EventQuery`]), read the same way, so the page,
//!   its live rows and the export links (`/api/events/export?format=…&<the same filters>`)
//!   show the same events.
//! - The live tail (`/events/rows?after=<seq>`) prepends only events newer than the newest
//!   row shown; when more arrived than a fragment holds, it asks for a reload rather than
//!   leave a hole in the list.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use super::{Nav, html, nav, urlencode};
use crate::clock::rfc3339;
use crate::http::AppState;
use crate::http::history::{EventQuery, parse_time};
use crate::store::{EventSearch, StoredEvent};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/events", get(events))
        .route("/events/rows", get(event_rows))
        .route("/events/count", get(event_count))
}

/// Rows a page shows by default, and the most a live fragment brings.
const PAGE: u32 = 100;
const TAIL_MAX: u32 = 500;
/// The most characters of an event's data a row shows.
const DATA_SHOWN: usize = 240;

/// One event as a row of the log (and of the audit).
pub(super) struct EventRow {
    pub seq: i64,
    /// RFC 3339.
    pub at: String,
    /// `YYYY-MM-DD HH:MM:SS`, UTC.
    pub at_short: String,
    pub device: String,
    pub kind: String,
    pub actor: String,
    /// The data as compact JSON, cut to [`DATA_SHOWN`] characters.
    pub data: String,
    /// The data, parsed (`Null` if the stored text is not JSON).
    pub value: Value,
}

impl EventRow {
    pub(super) fn new(e: &StoredEvent) -> EventRow {
        let r = &e.record;
        let at = rfc3339(r.at);
        let at_short = at.get(..19).unwrap_or(&at).replacen('T', " ", 1);
        let value = serde_json::from_str::<Value>(&r.data).unwrap_or(Value::Null);
        let mut data = r.data.clone();
        if data.chars().count() > DATA_SHOWN {
            data = data.chars().take(DATA_SHOWN).collect::<String>() + "…";
        }
        EventRow {
            seq: e.seq,
            at,
            at_short,
            device: r.device.clone().unwrap_or_default(),
            kind: r.kind.clone(),
            actor: r.actor.clone(),
            data,
            value,
        }
    }
}

/// The query string of a filter's fields (device, kind, actor, from, to), values as given.
pub(super) fn filter_query(q: &EventQuery) -> String {
    [
        ("device", &q.device),
        ("kind", &q.kind),
        ("actor", &q.actor),
        ("from", &q.from),
        ("to", &q.to),
    ]
    .into_iter()
    .filter_map(|(k, v)| {
        let v = v.as_deref().map(str::trim).filter(|v| !v.is_empty())?;
        Some(format!("{k}={}", urlencode(v)))
    })
    .collect::<Vec<_>>()
    .join("&")
}

/// `a&b`, leaving out an empty side.
pub(super) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}&{b}"),
    }
}

/// A time filter as a `datetime-local` input shows it (UTC, to the second).
fn local_value(v: &Option<String>) -> String {
    v.as_deref()
        .and_then(parse_time)
        .map(|ms| rfc3339(ms).get(..19).unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// A 400 page for filters the log cannot read.
pub(super) fn bad_filter(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("bad filter: {e}")).into_response()
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    nav: Option<Nav>,
    device: String,
    kind: String,
    actor: String,
    from: String,
    to: String,
    /// The filters' query string (no paging).
    query: String,
    /// Whether this is the newest page (the live tail runs only there).
    live: bool,
    /// The newest seq of the whole log when the page was made: the tail's start when the
    /// page shows no row.
    head: i64,
    rows: Vec<EventRow>,
    /// The query of the next page back, if there is one.
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "event_rows.html")]
struct EventRows {
    rows: Vec<EventRow>,
}

async fn events(
    State(s): State<AppState>,
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_filter("the query is not one of the log's filters");
    };
    let search = match q.search(PAGE) {
        Ok(s) => s,
        Err(e) => return bad_filter(&e.message),
    };
    let store = s.hub.store();
    let limit = search.limit;
    let rows = match store.search_events(search.clone()).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let head = store
        .search_events(EventSearch {
            limit: 1,
            ..EventSearch::default()
        })
        .await
        .ok()
        .and_then(|r| r.first().map(|e| e.seq))
        .unwrap_or(0);
    let query = filter_query(&q);
    let next = (rows.len() == limit as usize)
        .then(|| {
            rows.last()
                .map(|e| join(&query, &format!("before={}", e.seq)))
        })
        .flatten();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    html(
        EventsPage {
            nav: nav("events"),
            device: text(&q.device),
            kind: text(&q.kind),
            actor: text(&q.actor),
            from: local_value(&q.from),
            to: local_value(&q.to),
            live: search.before.is_none(),
            head,
            query,
            rows: rows.iter().map(EventRow::new).collect(),
            next,
        },
        StatusCode::OK,
    )
}

/// The search of a live fragment: the filters, and `after` (required: the newest seq the
/// page shows).
fn tail_search(
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
    limit: u32,
) -> Result<EventSearch, String> {
    let Ok(Query(q)) = q else {
        return Err("the query is not one of the log's filters".into());
    };
    let mut search = q.search(limit).map_err(|e| e.message)?;
    if search.after.is_none() {
        return Err("after: the newest seq shown is needed".into());
    }
    search.limit = limit;
    Ok(search)
}

/// The rows newer than `after` that match the filters, newest first: what the live tail
/// prepends. More than [`TAIL_MAX`]: `HX-Refresh`, the page is loaded again.
async fn event_rows(
    State(s): State<AppState>,
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let search = match tail_search(q, TAIL_MAX + 1) {
        Ok(s) => s,
        Err(e) => return bad_filter(e),
    };
    let rows = match s.hub.store().search_events(search).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    if rows.len() > TAIL_MAX as usize {
        let mut r = StatusCode::OK.into_response();
        r.headers_mut()
            .insert("hx-refresh", HeaderValue::from_static("true"));
        return r;
    }
    html(
        EventRows {
            rows: rows.iter().map(EventRow::new).collect(),
        },
        StatusCode::OK,
    )
}

/// How many events newer than `after` match the filters (what arrived while the tail is
/// paused): `N new`, or `more than N new`.
async fn event_count(
    State(s): State<AppState>,
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let search = match tail_search(q, TAIL_MAX + 1) {
        Ok(s) => s,
        Err(e) => return bad_filter(e),
    };
    let n = match s.hub.store().search_events(search).await {
        Ok(r) => r.len(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let text = if n > TAIL_MAX as usize {
        format!("more than {TAIL_MAX} new")
    } else {
        format!("{n} new")
    };
    ([(axum::http::header::CACHE_CONTROL, "no-store")], text).into_response()
}
