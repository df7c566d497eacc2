//! The device list: both families in one table, filtered in the URL, paged by key, live.

use std::collections::HashSet;

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{Nav, ago, html, nav, urlencode};
use crate::clock::now_ms;
use crate::core::DeviceSummary;
use crate::http::AppState;
use crate::store::EventSearch;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/devices", get(devices))
        .route("/devices/list", get(device_list))
}

/// The device list's filters, as in the URL.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    #[serde(default)]
    pub kind: String,
    /// ``, `wrong` (offline, blocked, a config not in sync, or an alarm), `offline`,
    /// `online`, `out_of_sync`, `push_failed`, `blocked`, `alarm` (an alarm in the last hour:
    /// [`DEVICE_ALARMS`]).
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub q: String,
    /// The key (`<kind>/<id>`) of the last row of the previous page.
    #[serde(default)]
    pub after: String,
    #[serde(default)]
    pub limit: Option<usize>,
}

const STATES: &[(&str, &str)] = &[
    ("", "any state"),
    ("wrong", "what is wrong now"),
    ("offline", "offline"),
    ("online", "online"),
    ("out_of_sync", "config not in sync"),
    ("push_failed", "push failed"),
    ("blocked", "blocked"),
    ("alarm", "alarm in the last hour"),
];

/// The event kinds that put a device in the "alarm" state for [`ALARM_WINDOW_MS`]: a fault
/// the device reported (an ACon short circuit, a wrong code typed, a lock disconnected from
/// its cell) or a packet or push of its that went wrong.
pub const DEVICE_ALARMS: &[&str] = &[
    "short_circuit",
    "wrong_code",
    "lock_disconnected",
    "push_failed",
    "sup_rejected",
    "malformed",
    "rate_limited",
    "payload_too_large",
    "id_conflict",
];

/// How long an alarm keeps its device in the "alarm" state.
pub const ALARM_WINDOW_MS: i64 = 3_600_000;

/// Alarm events read at most to find the devices in alarm (newest first).
const ALARMS_READ: u32 = 2000;

/// The devices with an alarm in the last hour (empty when the filter does not ask, or the
/// event log cannot be read: logged).
async fn alarmed(s: &AppState, f: &DeviceFilter, now: i64) -> HashSet<String> {
    if f.state != "alarm" && f.state != "wrong" {
        return HashSet::new();
    }
    let search = EventSearch {
        kinds: DEVICE_ALARMS.iter().map(|k| k.to_string()).collect(),
        from: Some(now - ALARM_WINDOW_MS),
        limit: ALARMS_READ,
        ..EventSearch::default()
    };
    match s.hub.store().search_events(search).await {
        Ok(found) => found.into_iter().filter_map(|e| e.record.device).collect(),
        Err(e) => {
            tracing::error!(error = %e, "the device list could not read the alarms");
            HashSet::new()
        }
    }
}

/// Rows a page shows at most (and by default).
pub const PAGE_MAX: usize = 500;
pub const PAGE_DEFAULT: usize = 100;

impl DeviceFilter {
    fn matches(&self, d: &DeviceSummary, alarmed: &HashSet<String>) -> bool {
        let v = &d.device;
        let not_synced = matches!(d.sync, Some("pending" | "failed" | "out_of_sync"));
        let state = match self.state.as_str() {
            "" => true,
            "wrong" => {
                !v.online
                    || d.blocked
                    || not_synced
                    || alarmed.contains(&format!("{}/{}", v.kind, v.id))
            }
            "alarm" => alarmed.contains(&format!("{}/{}", v.kind, v.id)),
            "offline" => !v.online,
            "online" => v.online,
            "out_of_sync" => not_synced,
            "push_failed" => d.sync == Some("failed"),
            "blocked" => d.blocked,
            _ => false,
        };
        let q = self.q.trim().to_lowercase();
        state
            && (q.is_empty()
                || v.id.to_lowercase().contains(&q)
                || v.name.to_lowercase().contains(&q)
                || format!("{}/{}", v.kind, v.id).to_lowercase().contains(&q))
    }

    /// The query string of this filter (without `after`).
    fn query(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [("kind", &self.kind), ("state", &self.state), ("q", &self.q)] {
            if !v.is_empty() {
                parts.push(format!("{k}={}", urlencode(v)));
            }
        }
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        parts.join("&")
    }
}

struct Row {
    key: String,
    dom_id: String,
    name: String,
    online: bool,
    blocked: bool,
    last_seen: String,
    sync: Option<&'static str>,
    sync_class: &'static str,
}

/// One page of the filtered list, by key: the rows, the next page's query, how many match.
fn page(
    all: Vec<DeviceSummary>,
    f: &DeviceFilter,
    alarmed: &HashSet<String>,
    now: i64,
) -> (Vec<Row>, Option<String>, usize) {
    let limit = f.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let after = f
        .after
        .split_once('/')
        .map(|(k, i)| (k.to_string(), i.to_string()));
    let matching: Vec<DeviceSummary> = all.into_iter().filter(|d| f.matches(d, alarmed)).collect();
    let total = matching.len();
    let mut rows = Vec::new();
    let mut more = false;
    for d in matching.into_iter().filter(|d| {
        after
            .as_ref()
            .is_none_or(|(k, i)| (&d.device.kind, &d.device.id) > (k, i))
    }) {
        if rows.len() == limit {
            more = true;
            break;
        }
        let v = &d.device;
        let key = format!("{}/{}", v.kind, v.id);
        rows.push(Row {
            dom_id: key.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
            key,
            name: v.name.clone(),
            online: v.online,
            blocked: d.blocked,
            last_seen: v.last_seen.map_or("never".into(), |t| ago(t, now)),
            sync: d.sync,
            sync_class: match d.sync {
                Some("in_sync") => "ok",
                Some("pending") => "warn",
                Some(_) => "bad",
                None => "off",
            },
        });
    }
    let next = (more && !rows.is_empty()).then(|| {
        let last = rows.last().map(|r| r.key.clone()).unwrap_or_default();
        let q = f.query();
        let after = format!("after={}", urlencode(&last));
        if q.is_empty() {
            after
        } else {
            format!("{q}&{after}")
        }
    });
    (rows, next, total)
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    nav: Option<Nav>,
    kinds: Vec<(String, bool)>,
    states: Vec<(&'static str, &'static str, bool)>,
    filter: DeviceFilter,
    query: String,
    rows: Vec<Row>,
    next: Option<String>,
    shown: usize,
    matching: usize,
}

#[derive(Template)]
#[template(path = "device_list.html")]
struct DeviceList {
    rows: Vec<Row>,
    next: Option<String>,
    shown: usize,
    matching: usize,
}

fn bad_filter(e: axum::extract::rejection::QueryRejection) -> Response {
    (StatusCode::BAD_REQUEST, format!("bad filter: {e}")).into_response()
}

async fn devices(
    State(s): State<AppState>,
    q: Result<Query<DeviceFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let f = match q {
        Ok(Query(f)) => f,
        Err(e) => return bad_filter(e),
    };
    let all = s.hub.list(None);
    let mut kinds: Vec<String> = all.iter().map(|d| d.device.kind.clone()).collect();
    kinds.dedup();
    kinds.sort();
    kinds.dedup();
    let now = now_ms();
    let alarmed = alarmed(&s, &f, now).await;
    let (rows, next, matching) = page(all, &f, &alarmed, now);
    let mut query = f.query();
    if !f.after.is_empty() {
        let after = format!("after={}", urlencode(&f.after));
        query = if query.is_empty() {
            after
        } else {
            format!("{query}&{after}")
        };
    }
    let kinds = kinds
        .into_iter()
        .map(|k| {
            let on = k == f.kind;
            (k, on)
        })
        .collect();
    let states = STATES
        .iter()
        .map(|&(v, label)| (v, label, v == f.state))
        .collect();
    html(
        DevicesPage {
            nav: nav("devices"),
            kinds,
            states,
            shown: rows.len(),
            filter: f,
            query,
            rows,
            next,
            matching,
        },
        StatusCode::OK,
    )
}

/// The list and its count, for the live refresh: the same page of the same filter.
async fn device_list(
    State(s): State<AppState>,
    q: Result<Query<DeviceFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let f = match q {
        Ok(Query(f)) => f,
        Err(e) => return bad_filter(e),
    };
    let now = now_ms();
    let alarmed = alarmed(&s, &f, now).await;
    let (rows, next, matching) = page(s.hub.list(None), &f, &alarmed, now);
    html(
        DeviceList {
            shown: rows.len(),
            rows,
            next,
            matching,
        },
        StatusCode::OK,
    )
}
