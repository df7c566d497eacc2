//! The console's pages: server-rendered (askama templates under `templates/`), with htmx and
//! its SSE extension vendored under `assets/` and embedded in the binary.
//!
//! Invariants:
//! - Nothing is loaded from anywhere but this server: every script and style is a file under
//!   `/assets/`, and every response says so (`Content-Security-Policy: default-src 'self'`,
//!   no inline scripts or styles, htmx with `allowEval` off).
//! - A page needs a live session; without one it answers 303 to `/login?next=<the page>`.
//!   Pages only read: every change a page offers is a call to the `/api` routes, with their
//!   role checks.
//! - A fragment a page refreshes (`/devices/list`, `/overview/counts`) is rendered by the same
//!   template the page includes, from the same query, so the live view and a reload agree.

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::AppState;
use super::auth::{self, COOKIE};
use crate::clock::now_ms;
use crate::core::DeviceSummary;
use crate::core::accounts::Identity;

/// The security headers of every response.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    for (k, v) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// A vendored or own static file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "htmx-2.0.11.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/htmx-2.0.11.min.js"),
    },
    Asset {
        name: "htmx-ext-sse-2.2.4.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/htmx-ext-sse-2.2.4.js"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/console.css"),
    },
];

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                // Versioned names (the vendored files) could be cached for good; the own
                // files change with the binary, so an hour for all is the simple choice.
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            a.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// The pages, behind the session check; the login page and the assets, open.
pub fn routes(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(overview))
        .route("/overview/counts", get(overview_counts))
        .route("/devices", get(devices))
        .route("/devices/list", get(device_list))
        .layer(axum::middleware::from_fn_with_state(state, session));
    Router::new()
        .route("/assets/{name}", get(asset))
        .route("/login", get(login_page))
        .merge(pages)
}

/// The session check of the pages: none → the login page, back here afterwards.
async fn session(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let secret = auth::cookie_value(req.headers(), COOKIE).map(str::to_string);
    let policy = s.auth.policy;
    let id = secret.and_then(|secret| {
        s.hub
            .accounts_check(now_ms(), |st, fx| st.session_check(fx, &secret, &policy))
    });
    match id {
        Some(id) => auth::scope(id, next.run(req)).await,
        None => {
            let here = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            // An htmx fragment's request: the whole page goes to the login page.
            if req.headers().contains_key("hx-request") {
                let mut r = StatusCode::UNAUTHORIZED.into_response();
                r.headers_mut()
                    .insert("hx-redirect", HeaderValue::from_static("/login"));
                return r;
            }
            Redirect::to(&format!("/login?next={}", urlencode(&here))).into_response()
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the navigation bar shows.
pub struct Nav {
    pub actor: String,
    pub role: &'static str,
    pub active: &'static str,
}

fn nav(active: &'static str) -> Option<Nav> {
    auth::identity().map(|i: Identity| Nav {
        actor: i.actor,
        role: i.role.as_str(),
        active,
    })
}

fn html(t: impl Template, status: StatusCode) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a console template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub nav: Option<Nav>,
    pub error: Option<String>,
    pub name: String,
    pub next: String,
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// A `next` that stays on this server.
pub fn safe_next(next: Option<String>) -> String {
    next.filter(|n| n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or_else(|| "/".into())
}

async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    html(
        LoginPage {
            nav: None,
            error: None,
            name: String::new(),
            next: safe_next(q.next),
        },
        StatusCode::OK,
    )
}

/// The login page again, with why the login was refused.
pub fn login_refused(status: StatusCode, error: String, name: String, next: String) -> Response {
    html(
        LoginPage {
            nav: None,
            error: Some(error),
            name,
            next,
        },
        status,
    )
}

/// Whether a request prefers a page to JSON (a browser's form post).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

struct KindCount {
    kind: String,
    total: usize,
    online: usize,
    offline: usize,
}

fn counts(list: &[DeviceSummary]) -> Vec<KindCount> {
    let mut m: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for d in list {
        let e = m.entry(d.device.kind.as_str()).or_default();
        e.0 += 1;
        if d.device.online {
            e.1 += 1;
        }
    }
    m.into_iter()
        .map(|(k, (total, online))| KindCount {
            kind: k.to_string(),
            total,
            online,
            offline: total - online,
        })
        .collect()
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Option<Nav>,
    counts: Vec<KindCount>,
}

#[derive(Template)]
#[template(path = "overview_counts.html")]
struct OverviewCounts {
    counts: Vec<KindCount>,
}

async fn overview(State(s): State<AppState>) -> Response {
    let page = OverviewPage {
        nav: nav("overview"),
        counts: counts(&s.hub.list(None)),
    };
    html(page, StatusCode::OK)
}

async fn overview_counts(State(s): State<AppState>) -> Response {
    html(
        OverviewCounts {
            counts: counts(&s.hub.list(None)),
        },
        StatusCode::OK,
    )
}

/// The device list's filters, as in the URL.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    #[serde(default)]
    pub kind: String,
    /// ``, `wrong` (offline, blocked, or a config not in sync), `offline`, `online`,
    /// `out_of_sync`, `push_failed`, `blocked`.
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
];

/// Rows a page shows at most (and by default).
pub const PAGE_MAX: usize = 500;
pub const PAGE_DEFAULT: usize = 100;

impl DeviceFilter {
    fn matches(&self, d: &DeviceSummary) -> bool {
        let v = &d.device;
        let not_synced = matches!(d.sync, Some("pending" | "failed" | "out_of_sync"));
        let state = match self.state.as_str() {
            "" => true,
            "wrong" => !v.online || d.blocked || not_synced,
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

fn ago(ms: i64, now: i64) -> String {
    let s = (now - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// One page of the filtered list, by key: the rows, the next page's query, how many match.
fn page(all: Vec<DeviceSummary>, f: &DeviceFilter, now: i64) -> (Vec<Row>, Option<String>, usize) {
    let limit = f.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let after = f
        .after
        .split_once('/')
        .map(|(k, i)| (k.to_string(), i.to_string()));
    let matching: Vec<DeviceSummary> = all.into_iter().filter(|d| f.matches(d)).collect();
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
    let (rows, next, matching) = page(all, &f, now_ms());
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
    let (rows, next, matching) = page(s.hub.list(None), &f, now_ms());
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
