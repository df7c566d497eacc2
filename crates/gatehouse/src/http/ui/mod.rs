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

mod admin;
mod apidoc;
mod board;
mod device;
mod devices;
mod events;
mod game;
mod overview;
mod rules;

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
use crate::core::accounts::{Identity, Role};

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
        body: include_bytes!("../../../assets/htmx-2.0.11.min.js"),
    },
    Asset {
        name: "htmx-ext-sse-2.2.4.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../assets/htmx-ext-sse-2.2.4.js"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../assets/console.js"),
    },
    Asset {
        name: "board.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../assets/board.js"),
    },
    Asset {
        name: "device.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../assets/device.js"),
    },
    Asset {
        name: "events.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../assets/events.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../assets/console.css"),
    },
    Asset {
        name: "rules.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../assets/rules.js"),
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
        .merge(overview::routes())
        .merge(devices::routes())
        .merge(game::routes())
        .merge(board::routes())
        .merge(rules::routes())
        .merge(device::routes())
        .merge(events::routes())
        .merge(admin::routes())
        .merge(apidoc::routes())
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

pub(super) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the navigation bar shows, and what the page may offer: a page renders an action's
/// form only when the role may make the call (`operate`, `admin`). That is for the eye
/// only: the API checks the role of every call again.
pub struct Nav {
    pub actor: String,
    pub role: &'static str,
    pub active: &'static str,
    /// An operator or an admin: may change devices and the game.
    pub operate: bool,
    /// An admin: may manage accounts, tokens, types and rules.
    pub admin: bool,
}

pub(super) fn nav(active: &'static str) -> Option<Nav> {
    auth::identity().map(|i: Identity| Nav {
        actor: i.actor,
        role: i.role.as_str(),
        active,
        operate: i.role >= Role::Operator,
        admin: i.role >= Role::Admin,
    })
}

/// How long ago `ms` was, at `now`, in the largest whole unit: `12 s ago`, `3 min ago`,
/// `2 h ago`, `4 d ago` (a time in the future reads `0 s ago`).
pub(super) fn ago(ms: i64, now: i64) -> String {
    let s = (now - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

pub(super) fn html(t: impl Template, status: StatusCode) -> Response {
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
