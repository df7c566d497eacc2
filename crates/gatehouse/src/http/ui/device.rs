//! A SKABEN prop's page: who it is and when it was heard from, what the server wants it to
//! hold next to what it is known to hold (key by key), the push that carries the difference
//! with a retry, the config editor, and the prop's messages and events.
//!
//! Invariants:
//! - The page and its two live parts (`/devices/{type}/{id}/state`: presence, push, diff;
//!   `/devices/{type}/{id}/history`: presence history, messages, events) are rendered from
//!   one snapshot of the core and one read of the store each, by the templates the page
//!   includes, so a refresh and a reload agree.
//! - The editor and the retry are rendered for operators and admins only; they are forms that
//!   call `PUT /api/devices/{type}/{id}/config` (with `If-Match`) and
//!   `POST /api/devices/{type}/{id}/push`, which check the role again.
//! - `/devices/acon/{id}` is the board's page (its own module); a board's key or an unknown
//!   prop here is a 404 page.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use super::{Nav, ago, html, nav};
use crate::clock::{now_ms, rfc3339};
use crate::core::PropSnapshot;
use crate::core::skaben::{PushState, TypeKind};
use crate::http::AppState;
use crate::store::EventFilter;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/devices/{type}/{id}", get(page))
        .route("/devices/{type}/{id}/state", get(state_part))
        .route("/devices/{type}/{id}/history", get(history_part))
}

/// Messages the page lists at most, newest first.
const MESSAGES_SHOWN: u32 = 20;
/// Events the page lists at most, newest first.
const EVENTS_SHOWN: u32 = 30;
/// Presence changes the page lists at most, newest first.
const PRESENCE_SHOWN: usize = 10;
/// The most characters of a value, a payload or an event's data a cell shows.
const CELL_CHARS: usize = 300;

/// A moment for people: the short text shown and the RFC 3339 time it stands for.
struct When {
    text: String,
    rfc: String,
}

/// `HH:MM:SS` (UTC) when on the same day as `now`, else `YYYY-MM-DD HH:MM`.
fn when(ms: i64, now: i64) -> When {
    let rfc = rfc3339(ms);
    let same_day = rfc.get(..10) == rfc3339(now).get(..10);
    let text = if same_day {
        rfc.get(11..19).unwrap_or(&rfc).to_string()
    } else {
        format!(
            "{} {}",
            rfc.get(..10).unwrap_or(&rfc),
            rfc.get(11..16).unwrap_or("")
        )
    };
    When { text, rfc }
}

/// `s` whole if it has at most [`CELL_CHARS`] characters, else its start and `…`.
fn clip(s: &str) -> String {
    match s.char_indices().nth(CELL_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn compact(v: &Value) -> String {
    clip(&v.to_string())
}

/// Who the prop is and whether it is heard from.
struct Head {
    key: String,
    name: String,
    notes: String,
    type_kind: &'static str,
    profile: &'static str,
    online: bool,
    last_seen: Option<String>,
    presence_since: When,
    first_seen: When,
}

/// How one key of the config compares: what the server wants, what the device is known to
/// hold.
struct DiffRow {
    key: String,
    desired: Option<String>,
    reported: Option<String>,
    /// `same`, `differs`, `only-desired`, `only-reported` (the CSS class).
    class: &'static str,
    label: &'static str,
}

/// Where the tracked push stands: `sent` (waiting for the device), `failed` (it refused),
/// `acked` / `confirmed by hash` / … (it holds the desired config), `not sent`.
struct PushView {
    label: String,
    class: &'static str,
    detail: String,
    at: Option<When>,
}

/// The live part about the prop's config: presence, push, diff.
struct Live {
    head: Head,
    version: i64,
    author: String,
    updated: When,
    source: &'static str,
    in_sync: bool,
    push: PushView,
    /// What the reported column is: the confirmed config, or the SUPs' keys.
    basis: String,
    rows: Vec<DiffRow>,
}

/// The rows of the diff: one per key of the desired config and of what the device is known
/// to hold. Once the device has proved it holds the desired version (an ACK of its push, its
/// hash, a SUP while in sync) it holds exactly that config; before, what it is known to hold
/// is the keys its SUPs reported, latest value each. A config that is not an object is one
/// row, `(whole config)`.
fn diff(v: &PropSnapshot) -> Vec<DiffRow> {
    let desired = match &v.desired.config {
        Value::Object(m) => m,
        other => {
            let d = compact(other);
            let reported = v.in_sync.then(|| d.clone());
            let (class, label) = if v.in_sync {
                ("same", "same")
            } else {
                ("only-desired", "only desired")
            };
            return vec![DiffRow {
                key: "(whole config)".into(),
                desired: Some(d),
                reported,
                class,
                label,
            }];
        }
    };
    let held = if v.in_sync {
        desired
    } else {
        &v.reported.values
    };
    let mut keys: Vec<&String> = desired.keys().chain(held.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let (d, r) = (desired.get(k), held.get(k));
            let (class, label) = match (d, r) {
                (Some(a), Some(b)) if a == b => ("same", "same"),
                (Some(_), Some(_)) => ("differs", "differs"),
                (Some(_), None) => ("only-desired", "only desired"),
                _ => ("only-reported", "only reported"),
            };
            DiffRow {
                key: k.clone(),
                desired: d.map(compact),
                reported: r.map(compact),
                class,
                label,
            }
        })
        .collect()
}

fn push_view(v: &PropSnapshot, now: i64) -> PushView {
    let d = &v.delivery;
    if let Some(p) = &d.pending {
        let tries = if p.attempts == 1 {
            "once".to_string()
        } else {
            format!("{} times", p.attempts)
        };
        let tasks = p.task_ids.join(", ");
        return match p.state {
            PushState::Pending => PushView {
                label: "sent".into(),
                class: "warn",
                detail: format!(
                    "version {} sent {tries} ({}; task {tasks}); waiting for the device to confirm it",
                    p.version, p.reason
                ),
                at: Some(when(p.last_sent_at, now)),
            },
            PushState::Failed => PushView {
                label: "failed".into(),
                class: "bad",
                detail: format!(
                    "the device refused version {} (NACK; sent {tries}, task {tasks}); it is not sent again by itself",
                    p.version
                ),
                at: Some(when(p.last_sent_at, now)),
            },
        };
    }
    if v.in_sync {
        let by = d.confirmed_by.as_deref().unwrap_or("");
        let label = match by {
            "ack" => "acked".to_string(),
            "hash" => "confirmed by hash".to_string(),
            "sup" => "confirmed by SUP".to_string(),
            "ping" => "confirmed by ping".to_string(),
            other => format!("confirmed ({other})"),
        };
        return PushView {
            label,
            class: "ok",
            detail: format!("the device holds version {}", v.desired.version),
            at: d.confirmed_at.map(|t| when(t, now)),
        };
    }
    let last = match (d.confirmed_version, d.confirmed_at) {
        (Some(cv), Some(at)) => {
            format!("; it last confirmed version {cv} ({})", when(at, now).text)
        }
        _ => String::new(),
    };
    PushView {
        label: "not sent".into(),
        class: "off",
        detail: format!(
            "version {} is not known to be on the device and no push is on its way{last}",
            v.desired.version
        ),
        at: None,
    }
}

fn live(v: &PropSnapshot, now: i64) -> Live {
    let dv = &v.device;
    let head = Head {
        key: format!("{}/{}", dv.kind, dv.id),
        name: dv.name.clone(),
        notes: dv.notes.clone(),
        type_kind: match v.type_kind {
            TypeKind::Smart => "smart",
            TypeKind::Dumb => "dumb",
        },
        profile: v.profile.as_str(),
        online: dv.online,
        last_seen: dv.last_seen.map(|t| ago(t, now)),
        presence_since: when(dv.presence_changed_at, now),
        first_seen: when(dv.first_seen, now),
    };
    let basis = if v.in_sync {
        format!(
            "the device confirmed it holds version {}, so it holds every key of it",
            v.desired.version
        )
    } else if let Some(at) = v.reported.last_sup_at {
        format!(
            "the keys the device's SUPs reported (the last at {}); it has not confirmed version {}",
            when(at, now).text,
            v.desired.version
        )
    } else {
        format!(
            "the device has reported no key and has not confirmed version {}",
            v.desired.version
        )
    };
    Live {
        head,
        version: v.desired.version,
        author: v
            .desired
            .author
            .clone()
            .unwrap_or_else(|| format!("the type {}", dv.kind)),
        updated: when(v.desired.updated_at, now),
        source: v.desired.source,
        in_sync: v.in_sync,
        push: push_view(v, now),
        basis,
        rows: diff(v),
    }
}

/// One presence change.
struct PresenceRow {
    at: When,
    online: bool,
    reason: String,
}

/// One packet in, with what went out in answer.
struct MessageRow {
    at: When,
    topic: String,
    raw: String,
    answer: String,
}

/// One event of the prop.
struct EventRow {
    at: When,
    kind: String,
    actor: String,
    data: String,
}

/// The live part about the prop's past: presence changes, messages, events.
struct History {
    presence: Vec<PresenceRow>,
    messages: Vec<MessageRow>,
    events: Vec<EventRow>,
    /// A read of the store failed: what is shown may be incomplete.
    error: Option<String>,
}

async fn history(s: &AppState, key: &str, now: i64) -> History {
    let store = s.hub.store();
    let mut error = None;
    let mut note = |e: crate::store::StoreError| {
        tracing::warn!(error = %e, "the device page could not read the store");
        error = Some(format!("the history could not be read in full: {e}"));
    };
    let filter = |kind: Option<&str>, limit: u32| EventFilter {
        device: Some(key.to_string()),
        kind: kind.map(str::to_string),
        limit,
    };
    let mut presence: Vec<(i64, PresenceRow)> = Vec::new();
    for kind in ["online", "offline"] {
        match store
            .events(filter(Some(kind), PRESENCE_SHOWN as u32))
            .await
        {
            Ok(rows) => presence.extend(rows.into_iter().map(|e| {
                let data: Value = serde_json::from_str(&e.record.data).unwrap_or(Value::Null);
                let reason = data["reason"].as_str().unwrap_or("").to_string();
                (
                    e.seq,
                    PresenceRow {
                        at: when(e.record.at, now),
                        online: kind == "online",
                        reason,
                    },
                )
            })),
            Err(e) => note(e),
        }
    }
    presence.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    presence.truncate(PRESENCE_SHOWN);
    let events = match store.events(filter(None, EVENTS_SHOWN)).await {
        Ok(rows) => rows
            .into_iter()
            .map(|e| EventRow {
                at: when(e.record.at, now),
                kind: e.record.kind,
                actor: e.record.actor,
                data: clip(&e.record.data),
            })
            .collect(),
        Err(e) => {
            note(e);
            Vec::new()
        }
    };
    let messages = match store.messages(key.to_string(), MESSAGES_SHOWN).await {
        Ok(rows) => rows
            .into_iter()
            .map(|m| MessageRow {
                at: when(m.record.at, now),
                topic: m.record.peer,
                raw: clip(&m.record.raw),
                answer: clip(&m.record.answer),
            })
            .collect(),
        Err(e) => {
            note(e);
            Vec::new()
        }
    };
    History {
        presence: presence.into_iter().map(|(_, r)| r).collect(),
        messages,
        events,
        error,
    }
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    nav: Option<Nav>,
    /// An operator or an admin: the editor and the retry are shown.
    operate: bool,
    key: String,
    st: Live,
    hist: History,
    /// The desired config as the editor (or a viewer's box) shows it.
    config_text: String,
    /// Whether the editor can save the config: this page sends a JSON object.
    object: bool,
    /// The type's JSON Schema as text (empty: none), for the editor's own checks.
    schema: String,
}

#[derive(Template)]
#[template(path = "device_state.html")]
struct StatePart {
    st: Live,
}

#[derive(Template)]
#[template(path = "device_history.html")]
struct HistoryPart {
    hist: History,
}

#[derive(Template)]
#[template(path = "device_missing.html")]
struct Missing {
    nav: Option<Nav>,
    key: String,
}

/// The prop (its type and id read in any case, as the API does).
fn find(s: &AppState, ty: &str, id: &str) -> Option<PropSnapshot> {
    s.hub
        .skaben_device(&ty.to_ascii_lowercase(), &id.to_ascii_lowercase())
}

/// The page that says there is no such prop.
fn missing(ty: &str, id: &str) -> Response {
    html(
        Missing {
            nav: nav("devices"),
            key: format!("{}/{}", ty.to_ascii_lowercase(), id.to_ascii_lowercase()),
        },
        StatusCode::NOT_FOUND,
    )
}

async fn page(State(s): State<AppState>, Path((ty, id)): Path<(String, String)>) -> Response {
    let Some(v) = find(&s, &ty, &id) else {
        return missing(&ty, &id);
    };
    let now = now_ms();
    let st = live(&v, now);
    let key = st.head.key.clone();
    let hist = history(&s, &key, now).await;
    let schema = s
        .hub
        .skaben_type(&v.device.kind)
        .and_then(|t| t.def.schema)
        .map(|sc| sc.to_string())
        .unwrap_or_default();
    let config_text =
        serde_json::to_string_pretty(&v.desired.config).unwrap_or_else(|_| "{}".into());
    let nav = nav("devices");
    html(
        DevicePage {
            operate: nav.as_ref().is_some_and(|n| n.operate),
            nav,
            key,
            st,
            hist,
            config_text,
            object: v.desired.config.is_object(),
            schema,
        },
        StatusCode::OK,
    )
}

/// Presence, push and diff, for the live refresh.
async fn state_part(State(s): State<AppState>, Path((ty, id)): Path<(String, String)>) -> Response {
    match find(&s, &ty, &id) {
        Some(v) => html(
            StatePart {
                st: live(&v, now_ms()),
            },
            StatusCode::OK,
        ),
        None => (StatusCode::NOT_FOUND, "no such device").into_response(),
    }
}

/// Presence history, messages and events, for the live refresh.
async fn history_part(
    State(s): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
) -> Response {
    match find(&s, &ty, &id) {
        Some(v) => {
            let key = format!("{}/{}", v.device.kind, v.device.id);
            html(
                HistoryPart {
                    hist: history(&s, &key, now_ms()).await,
                },
                StatusCode::OK,
            )
        }
        None => (StatusCode::NOT_FOUND, "no such device").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::DeviceView;
    use crate::core::skaben::{Delivery, DesiredSnapshot, Reported};
    use serde_json::json;

    fn prop(desired: Value, reported: Value, in_sync: bool) -> PropSnapshot {
        PropSnapshot {
            device: DeviceView {
                kind: "lock".into(),
                id: "1".into(),
                protocol: "skaben",
                name: String::new(),
                notes: String::new(),
                first_seen: 0,
                last_seen: None,
                online: false,
                presence_changed_at: 0,
            },
            type_kind: TypeKind::Smart,
            profile: skaben::ClientProfile::Reference,
            desired: DesiredSnapshot {
                config: desired,
                version: 3,
                hash: String::new(),
                source: "device",
                author: Some("olga".into()),
                updated_at: 0,
            },
            reported: Reported {
                values: reported.as_object().cloned().unwrap_or_default(),
                ..Reported::default()
            },
            delivery: Delivery::default(),
            in_sync,
        }
    }

    fn rows(p: &PropSnapshot) -> Vec<(String, &'static str)> {
        diff(p).into_iter().map(|r| (r.key, r.label)).collect()
    }

    /// One row per key of desired ∪ reported, in key order, each in one of the four states.
    #[test]
    fn the_diff_has_a_row_per_key_of_either_side() {
        let p = prop(
            json!({"closed": false, "sound": true, "timer": 10}),
            json!({"closed": true, "sound": true, "alarm": 1}),
            false,
        );
        assert_eq!(
            rows(&p),
            [
                ("alarm".into(), "only reported"),
                ("closed".into(), "differs"),
                ("sound".into(), "same"),
                ("timer".into(), "only desired"),
            ]
        );
    }

    /// A device that proved it holds the desired version holds every key of it.
    #[test]
    fn a_confirmed_config_is_the_same_everywhere() {
        let p = prop(
            json!({"closed": false, "timer": 10}),
            json!({"closed": true, "alarm": 1}),
            true,
        );
        assert_eq!(
            rows(&p),
            [("closed".into(), "same"), ("timer".into(), "same")]
        );
    }

    #[test]
    fn a_config_that_is_not_an_object_is_one_row() {
        let p = prop(json!("FF0000/1000/C"), json!({}), false);
        assert_eq!(rows(&p), [("(whole config)".into(), "only desired")]);
    }

    #[test]
    fn long_values_are_clipped() {
        let long = "x".repeat(CELL_CHARS + 10);
        assert_eq!(clip(&long).chars().count(), CELL_CHARS + 1);
        assert_eq!(clip("short"), "short");
    }
}
