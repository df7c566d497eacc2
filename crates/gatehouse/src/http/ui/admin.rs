//! The admin pages: device types, console accounts, API tokens, sessions, and the audit of
//! what operators did. Admins only: any other role gets a 403 page (not a redirect, so no
//! loop), and the nav offers the pages to admins only.
//!
//! Invariants: as every page, these only read; each change they offer is a form calling the
//! `/api` route that makes it (`/api/users`, `/api/tokens`, `/api/sessions`, `/api/types`),
//! and the API checks the role again. A token's secret is shown once, from the API's answer
//! to its creation; no page can show it again.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::Value;

use super::events::{EventRow, bad_filter, join};
use super::{Nav, html, nav, urlencode};
use crate::clock::{now_ms, rfc3339};
use crate::core::accounts::Role;
use crate::http::AppState;
use crate::http::auth;
use crate::store::EventSearch;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/accounts") }))
        .route("/admin/types", get(types))
        .route("/admin/types/{name}", get(type_page))
        .route("/admin/accounts", get(accounts))
        .route("/admin/tokens", get(tokens))
        .route("/admin/tokens/list", get(token_list))
        .route("/admin/sessions", get(sessions))
        .route("/admin/audit", get(audit))
}

/// The admin sections, for the sub-navigation: (path, label).
const SECTIONS: &[(&str, &str)] = &[
    ("/admin/types", "Types"),
    ("/admin/accounts", "Accounts"),
    ("/admin/tokens", "Tokens"),
    ("/admin/sessions", "Sessions"),
    ("/admin/audit", "Audit"),
];

#[derive(Template)]
#[template(path = "admin_denied.html")]
struct Denied {
    nav: Option<Nav>,
}

/// The nav of an admin page; `None` for any other role (which gets [`denied`]).
fn admin_nav() -> Option<Nav> {
    nav("admin").filter(|n| n.admin)
}

/// The 403 page of the admin pages.
fn denied() -> Response {
    html(Denied { nav: nav("admin") }, StatusCode::FORBIDDEN)
}

/// `YYYY-MM-DD HH:MM` UTC, for a table.
fn short(ms: i64) -> String {
    let t = rfc3339(ms);
    t.get(..16).unwrap_or(&t).replacen('T', " ", 1)
}

fn short_opt(ms: Option<i64>) -> String {
    ms.map_or_else(|| "–".to_string(), short)
}

// ---- types ----

struct TypeRow {
    name: String,
    kind: String,
    active: bool,
    profile: String,
    devices: usize,
    config_version: i64,
    updated: String,
}

/// A serde enum's name (`smart`, `standard`).
fn tag(v: impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

#[derive(Template)]
#[template(path = "admin_types.html")]
struct TypesPage {
    nav: Option<Nav>,
    sections: &'static [(&'static str, &'static str)],
    here: &'static str,
    rows: Vec<TypeRow>,
}

async fn types(State(s): State<AppState>) -> Response {
    let Some(nav) = admin_nav() else {
        return denied();
    };
    let rows = s
        .hub
        .skaben_types()
        .into_iter()
        .map(|t| TypeRow {
            kind: tag(t.def.kind),
            profile: tag(t.def.profile),
            active: t.def.active,
            devices: t.devices,
            config_version: t.def.config_version,
            updated: short(t.def.updated_at),
            name: t.def.name,
        })
        .collect();
    html(
        TypesPage {
            nav: Some(nav),
            sections: SECTIONS,
            here: "/admin/types",
            rows,
        },
        StatusCode::OK,
    )
}

#[derive(Template)]
#[template(path = "admin_type.html")]
struct TypePage {
    nav: Option<Nav>,
    sections: &'static [(&'static str, &'static str)],
    here: &'static str,
    row: TypeRow,
    /// The name as a path segment of the API.
    path: String,
    keepalive: String,
    max_payload: String,
    config_hash: String,
    config: String,
    schema: String,
}

async fn type_page(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(nav) = admin_nav() else {
        return denied();
    };
    let Some(t) = s.hub.skaben_type(&name.to_ascii_lowercase()) else {
        return (StatusCode::NOT_FOUND, format!("no device type {name:?}")).into_response();
    };
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    let d = t.def;
    html(
        TypePage {
            nav: Some(nav),
            sections: SECTIONS,
            here: "/admin/types",
            path: urlencode(&d.name),
            keepalive: d.keepalive_secs.map(|k| k.to_string()).unwrap_or_default(),
            max_payload: d
                .max_payload_bytes
                .map(|k| k.to_string())
                .unwrap_or_default(),
            config_hash: d.config_hash.clone(),
            config: pretty(&d.config),
            schema: d.schema.as_ref().map(pretty).unwrap_or_default(),
            row: TypeRow {
                kind: tag(d.kind),
                profile: tag(d.profile),
                active: d.active,
                devices: t.devices,
                config_version: d.config_version,
                updated: short(d.updated_at),
                name: d.name,
            },
        },
        StatusCode::OK,
    )
}

// ---- accounts ----

struct UserRow {
    name: String,
    /// The name as a path segment of the API.
    path: String,
    role: &'static str,
    created: String,
    password_changed: String,
    sessions: usize,
    last_seen: String,
    /// The only admin: the API refuses to remove or demote it.
    last_admin: bool,
}

#[derive(Template)]
#[template(path = "admin_accounts.html")]
struct AccountsPage {
    nav: Option<Nav>,
    sections: &'static [(&'static str, &'static str)],
    here: &'static str,
    roles: &'static [&'static str],
    rows: Vec<UserRow>,
}

const ROLES: &[&str] = &["viewer", "operator", "admin"];

async fn accounts(State(s): State<AppState>) -> Response {
    let Some(nav) = admin_nav() else {
        return denied();
    };
    let rows = s.hub.accounts_read(|a| {
        let sessions = a.sessions();
        let admins = a.users().filter(|u| u.role == Role::Admin).count();
        a.users()
            .map(|u| {
                let mine: Vec<_> = sessions.iter().filter(|x| x.user == u.name).collect();
                UserRow {
                    path: urlencode(&u.name),
                    name: u.name.clone(),
                    role: u.role.as_str(),
                    created: short(u.created_at),
                    password_changed: short(u.password_changed_at),
                    sessions: mine.len(),
                    last_seen: short_opt(mine.iter().map(|x| x.last_seen).max()),
                    last_admin: admins == 1 && u.role == Role::Admin,
                }
            })
            .collect()
    });
    html(
        AccountsPage {
            nav: Some(nav),
            sections: SECTIONS,
            here: "/admin/accounts",
            roles: ROLES,
            rows,
        },
        StatusCode::OK,
    )
}

// ---- tokens ----

struct TokenRow {
    name: String,
    path: String,
    role: &'static str,
    created: String,
    created_by: String,
    expires: String,
    expired: bool,
    last_used: String,
}

fn token_rows(s: &AppState) -> Vec<TokenRow> {
    let now = now_ms();
    s.hub.accounts_read(|a| {
        a.tokens()
            .map(|t| TokenRow {
                path: urlencode(&t.name),
                name: t.name.clone(),
                role: t.role.as_str(),
                created: short(t.created_at),
                created_by: t.created_by.clone(),
                expires: t.expires_at.map_or_else(|| "never".to_string(), short),
                expired: t.expires_at.is_some_and(|e| e <= now),
                last_used: t.last_used.map_or_else(|| "never".to_string(), short),
            })
            .collect()
    })
}

#[derive(Template)]
#[template(path = "admin_tokens.html")]
struct TokensPage {
    nav: Option<Nav>,
    sections: &'static [(&'static str, &'static str)],
    here: &'static str,
    roles: &'static [&'static str],
    rows: Vec<TokenRow>,
}

#[derive(Template)]
#[template(path = "admin_token_list.html")]
struct TokenList {
    rows: Vec<TokenRow>,
}

async fn tokens(State(s): State<AppState>) -> Response {
    let Some(nav) = admin_nav() else {
        return denied();
    };
    html(
        TokensPage {
            nav: Some(nav),
            sections: SECTIONS,
            here: "/admin/tokens",
            roles: ROLES,
            rows: token_rows(&s),
        },
        StatusCode::OK,
    )
}

/// The token table, for the refresh after a token is created or revoked.
async fn token_list(State(s): State<AppState>) -> Response {
    if admin_nav().is_none() {
        return denied();
    }
    html(
        TokenList {
            rows: token_rows(&s),
        },
        StatusCode::OK,
    )
}

// ---- sessions ----

struct SessionRow {
    id: String,
    user: String,
    addr: String,
    agent: String,
    created: String,
    last_seen: String,
    expires: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "admin_sessions.html")]
struct SessionsPage {
    nav: Option<Nav>,
    sections: &'static [(&'static str, &'static str)],
    here: &'static str,
    rows: Vec<SessionRow>,
}

async fn sessions(State(s): State<AppState>) -> Response {
    let Some(nav) = admin_nav() else {
        return denied();
    };
    let policy = s.auth.policy;
    let current = auth::identity().and_then(|i| i.session);
    let rows = s.hub.accounts_read(|a| {
        a.sessions()
            .into_iter()
            .map(|x| SessionRow {
                id: x.id().to_string(),
                user: x.user.clone(),
                addr: x.addr.clone(),
                agent: x.agent.clone(),
                created: short(x.created_at),
                last_seen: short(x.last_seen),
                expires: short(policy.expires_at(x)),
                current: current.as_deref() == Some(x.id()),
            })
            .collect()
    });
    html(
        SessionsPage {
            nav: Some(nav),
            sections: SECTIONS,
            here: "/admin/sessions",
            rows,
        },
        StatusCode::OK,
    )
}

// ---- audit ----

/// One operator action as the audit shows it.
struct AuditRow {
    event: EventRow,
    /// The event's details, without what the other columns show.
    what: String,
    /// `before → after`, when the event carries both.
    before: Option<String>,
    after: Option<String>,
    reason: String,
}

/// A JSON value as a cell shows it: a string without its quotes.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl AuditRow {
    /// What the event's data says changed. The pairs events carry: `from`/`to` (a game
    /// state variable), `role_from`/`role_to` (an account), `old_version`/`new_version` (a
    /// prop's config), `version.from`/`version.to` (a board's desired config). Events that
    /// carry no before value show none.
    fn new(event: EventRow) -> AuditRow {
        let d = event.value.as_object().cloned().unwrap_or_default();
        let pair = |a: &str, b: &str| match (d.get(a), d.get(b)) {
            (Some(x), Some(y)) => Some((cell(x), cell(y))),
            _ => None,
        };
        let version = d.get("version").and_then(|v| {
            let (f, t) = (v.get("from")?, v.get("to")?);
            Some((format!("version {f}"), format!("version {t}")))
        });
        let change = pair("from", "to")
            .or_else(|| pair("role_from", "role_to"))
            .or_else(|| {
                pair("old_version", "new_version")
                    .map(|(a, b)| (format!("version {a}"), format!("version {b}")))
            })
            .or(version);
        let reason = d.get("reason").map(cell).unwrap_or_default();
        let shown = [
            "from",
            "to",
            "role_from",
            "role_to",
            "old_version",
            "new_version",
            "version",
            "reason",
            "state",
        ];
        let rest: serde_json::Map<String, Value> = d
            .into_iter()
            .filter(|(k, _)| !shown.contains(&k.as_str()))
            .collect();
        let mut what = if rest.is_empty() {
            String::new()
        } else {
            Value::Object(rest).to_string()
        };
        if what.chars().count() > 200 {
            what = what.chars().take(200).collect::<String>() + "…";
        }
        let (before, after) = change.unzip();
        AuditRow {
            event,
            what,
            before,
            after,
            reason,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "admin_audit.html")]
struct AuditPage {
    nav: Option<Nav>,
    sections: &'static [(&'static str, &'static str)],
    here: &'static str,
    actor: String,
    rows: Vec<AuditRow>,
    next: Option<String>,
}

const AUDIT_PAGE: u32 = 100;

async fn audit(
    State(s): State<AppState>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(nav) = admin_nav() else {
        return denied();
    };
    let Ok(Query(q)) = q else {
        return bad_filter("the audit takes actor and before (a seq)");
    };
    let actor = q.actor.trim().to_string();
    let search = EventSearch {
        actor: (!actor.is_empty()).then(|| actor.clone()),
        operators_only: true,
        before: q.before,
        limit: AUDIT_PAGE,
        ..EventSearch::default()
    };
    let rows = match s.hub.store().search_events(search).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let filter = if actor.is_empty() {
        String::new()
    } else {
        format!("actor={}", urlencode(&actor))
    };
    let next = (rows.len() == AUDIT_PAGE as usize)
        .then(|| {
            rows.last()
                .map(|e| join(&filter, &format!("before={}", e.seq)))
        })
        .flatten();
    html(
        AuditPage {
            nav: Some(nav),
            sections: SECTIONS,
            here: "/admin/audit",
            actor,
            rows: rows
                .iter()
                .map(|e| AuditRow::new(EventRow::new(e)))
                .collect(),
            next,
        },
        StatusCode::OK,
    )
}
