//! The overview: devices online and offline by kind, the alarms and errors of the last hour,
//! the game in short, and the newest events; every part live.
//!
//! What counts as an alarm or an error is [`ALARMS`] (a list of event kinds, each read from
//! the event log by its kind index, the newest [`PER_KIND`] of each) and the rules whose last
//! firing failed ([`crate::core::game::RuleStats`], kept in memory). The page says so.

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::Value;

use super::game::{Panel, operates, panel};
use super::{Nav, ago, html, nav};
use crate::clock::{now_ms, rfc3339};
use crate::core::DeviceSummary;
use crate::http::AppState;
use crate::store::{EventFilter, StoredEvent};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/overview/counts", get(overview_counts))
        .route("/overview/alarms", get(overview_alarms))
        .route("/overview/game", get(overview_game))
        .route("/overview/events", get(overview_events))
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

/// An event kind the overview shows as an alarm or an error.
struct Alarm {
    kind: &'static str,
    label: &'static str,
    /// Shown to admins only (who may act on it: accounts).
    admin: bool,
}

const fn alarm(kind: &'static str, label: &'static str) -> Alarm {
    Alarm {
        kind,
        label,
        admin: false,
    }
}

/// What the overview counts as an alarm or an error: device faults (an ACon short circuit,
/// a wrong code typed at a board, a lock disconnected from its cell), devices going offline,
/// pushes a device refused or the game could not make, what the server could not read or
/// refused (unreadable messages, unknown devices, the boards' guards, rate and size limits,
/// the broker's refusals), the rule engine's stops, failed webhook calls, and, for admins,
/// refused logins. `webhook_result` counts only when the call failed.
const ALARMS: &[Alarm] = &[
    alarm("short_circuit", "short circuit"),
    alarm("wrong_code", "wrong code"),
    alarm("lock_disconnected", "lock disconnected"),
    alarm("offline", "went offline"),
    alarm("push_failed", "push refused"),
    alarm("game_push_failed", "level push failed"),
    alarm("sup_rejected", "SUP refused"),
    alarm("malformed", "unreadable message"),
    alarm("rejected", "unknown device refused"),
    alarm("id_conflict", "board id conflict"),
    alarm("peer_network_refused", "board from a new network refused"),
    alarm("registrations_capped", "new boards capped"),
    alarm("rate_limited", "too fast"),
    alarm("payload_too_large", "packet too large"),
    alarm("mqtt_refused", "MQTT refused"),
    alarm("mqtt_client_too_slow", "MQTT client too slow"),
    alarm("rule_chain_stopped", "rule chain stopped"),
    alarm("rule_paused", "rule paused"),
    alarm("webhook_result", "webhook failed"),
    Alarm {
        kind: "login_failed",
        label: "login refused",
        admin: true,
    },
];

/// How far back the alarms go.
pub const ALARM_WINDOW_MS: i64 = 3_600_000;
/// Events read per alarm kind (newest first); a kind with as many in the window shows `N+`.
pub const PER_KIND: u32 = 20;
/// Alarm rows shown at most.
pub const ALARMS_SHOWN: usize = 30;
/// Newest events shown.
pub const EVENTS_SHOWN: u32 = 20;

struct AlarmRow {
    at: i64,
    seq: i64,
    ago: String,
    time: String,
    label: &'static str,
    device: Option<String>,
    detail: String,
}

/// One kind's count in the window (`more`: there may be more than `count`).
struct AlarmKind {
    label: &'static str,
    count: usize,
    more: bool,
}

struct Alarms {
    rows: Vec<AlarmRow>,
    kinds: Vec<AlarmKind>,
    /// Rows found beyond [`ALARMS_SHOWN`].
    hidden: usize,
    /// The kinds counted, as the page explains them.
    counted: String,
    /// The event log could not be read.
    error: Option<String>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn clip(s: String, max: usize) -> String {
    if s.chars().count() <= max {
        return s;
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// A webhook call that did not end in 2xx.
fn webhook_failed(d: &Value) -> bool {
    !d.get("status")
        .and_then(Value::as_u64)
        .is_some_and(|s| (200..300).contains(&s))
}

/// A rule firing's outcome: `ok`, or its first action error.
fn outcome(d: &Value) -> String {
    d.get("actions")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["result"] == "error"))
        .map_or_else(
            || "ok".to_string(),
            |a| format!("error: {}", text(&a["detail"])),
        )
}

/// One line saying what an event was, from its kind and data.
fn summary(kind: &str, d: &Value) -> String {
    let f = |k: &str| d.get(k).map(text).unwrap_or_default();
    let reason = match f("reason") {
        r if r.is_empty() => String::new(),
        r => format!(" ({r})"),
    };
    let out = match kind {
        "state_changed" => format!("{}: {} → {}{reason}", f("name"), f("from"), f("to")),
        "rule_fired" => format!("rule {}: {}", f("rule"), outcome(d)),
        "login_failed" => format!("{} from {}: {}", f("user"), f("addr"), f("reason")),
        "logged_in" => format!("{} from {}", f("user"), f("addr")),
        "cup" | "ping" => f("topic"),
        "webhook_result" => format!(
            "{}: {}",
            f("name"),
            d.get("status").map_or_else(|| f("error"), text)
        ),
        "game_push_failed" => format!("{} at {}: {}", f("type"), f("level"), f("reason")),
        "timer_started" | "timer_cancelled" | "timer_fired" => format!("{}{reason}", f("name")),
        "run_started" | "run_paused" | "run_resumed" | "run_ended" => format!("run {}", f("run")),
        _ => generic(d),
    };
    clip(out, 160)
}

/// The scalar fields of an event's data, `key value`, in order.
fn generic(d: &Value) -> String {
    let Some(m) = d.as_object() else {
        return text(d);
    };
    m.iter()
        .filter(|(k, v)| *k != "cause" && !v.is_object() && !v.is_array() && !v.is_null())
        .map(|(k, v)| format!("{} {}", k.replace('_', " "), text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn data(e: &StoredEvent) -> Value {
    serde_json::from_str(&e.record.data).unwrap_or(Value::Null)
}

/// The alarms and errors of the last hour: the kinds of [`ALARMS`] the caller may see, and
/// the rules whose last firing in the window failed.
async fn alarms(s: &AppState, admin: bool, now: i64) -> Alarms {
    let since = now - ALARM_WINDOW_MS;
    let mut rows = Vec::new();
    let mut kinds = Vec::new();
    let mut error = None;
    let shown: Vec<&Alarm> = ALARMS.iter().filter(|a| admin || !a.admin).collect();
    for a in &shown {
        let filter = EventFilter {
            device: None,
            kind: Some(a.kind.to_string()),
            limit: PER_KIND,
        };
        let found = match s.hub.store().events(filter).await {
            Ok(f) => f,
            Err(e) => {
                error = Some(format!("the event log could not be read: {e}"));
                break;
            }
        };
        // Every row read is in the window: older ones may be too.
        let more = found.len() == PER_KIND as usize && found.iter().all(|e| e.record.at >= since);
        let mut count = 0;
        for e in found.iter().filter(|e| e.record.at >= since) {
            let d = data(e);
            if a.kind == "webhook_result" && !webhook_failed(&d) {
                continue;
            }
            count += 1;
            rows.push(AlarmRow {
                at: e.record.at,
                seq: e.seq,
                ago: ago(e.record.at, now),
                time: rfc3339(e.record.at),
                label: a.label,
                device: e.record.device.clone(),
                detail: summary(&e.record.kind, &d),
            });
        }
        if count > 0 {
            kinds.push(AlarmKind {
                label: a.label,
                count,
                more,
            });
        }
    }
    let mut failed = 0;
    for (rule, st) in s.hub.rules_list() {
        let Some(at) = st.last_fired_at.filter(|at| *at >= since) else {
            continue;
        };
        let Some(o) = st.last_outcome.filter(|o| o.starts_with("error")) else {
            continue;
        };
        failed += 1;
        rows.push(AlarmRow {
            at,
            seq: i64::MAX,
            ago: ago(at, now),
            time: rfc3339(at),
            label: "rule failed",
            device: None,
            detail: clip(format!("rule {}: {o}", rule.name), 160),
        });
    }
    if failed > 0 {
        kinds.push(AlarmKind {
            label: "rule failed",
            count: failed,
            more: false,
        });
    }
    rows.sort_by_key(|r| std::cmp::Reverse((r.at, r.seq)));
    let hidden = rows.len().saturating_sub(ALARMS_SHOWN);
    rows.truncate(ALARMS_SHOWN);
    let mut counted: Vec<&str> = shown.iter().map(|a| a.label).collect();
    counted.push("a rule's last firing failed");
    Alarms {
        rows,
        kinds,
        hidden,
        counted: counted.join(", "),
        error,
    }
}

struct EventRow {
    ago: String,
    time: String,
    kind: String,
    device: Option<String>,
    actor: String,
    summary: String,
}

/// The newest events (or why the log could not be read).
async fn newest(s: &AppState, now: i64) -> Result<Vec<EventRow>, String> {
    let filter = EventFilter {
        device: None,
        kind: None,
        limit: EVENTS_SHOWN,
    };
    let found = s
        .hub
        .store()
        .events(filter)
        .await
        .map_err(|e| format!("the event log could not be read: {e}"))?;
    Ok(found
        .iter()
        .map(|e| EventRow {
            ago: ago(e.record.at, now),
            time: rfc3339(e.record.at),
            kind: e.record.kind.clone(),
            device: e.record.device.clone(),
            actor: e.record.actor.clone(),
            summary: summary(&e.record.kind, &data(e)),
        })
        .collect())
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Option<Nav>,
    operate: bool,
    counts: Vec<KindCount>,
    alarms: Alarms,
    panel: Panel,
    events: Result<Vec<EventRow>, String>,
    /// The kinds the alarms refresh on.
    alarm_kinds: String,
}

#[derive(Template)]
#[template(path = "overview_counts.html")]
struct OverviewCounts {
    counts: Vec<KindCount>,
}

#[derive(Template)]
#[template(path = "overview_alarms.html")]
struct OverviewAlarms {
    alarms: Alarms,
}

#[derive(Template)]
#[template(path = "overview_game.html")]
struct OverviewGame {
    operate: bool,
    panel: Panel,
}

#[derive(Template)]
#[template(path = "overview_events.html")]
struct OverviewEvents {
    events: Result<Vec<EventRow>, String>,
}

fn is_admin(nav: Option<&Nav>) -> bool {
    nav.is_some_and(|n| n.admin)
}

async fn overview(State(s): State<AppState>) -> Response {
    let nav = nav("overview");
    let now = now_ms();
    let page = OverviewPage {
        operate: operates(nav.as_ref()),
        counts: counts(&s.hub.list(None)),
        alarms: alarms(&s, is_admin(nav.as_ref()), now).await,
        panel: panel(&s, false),
        events: newest(&s, now).await,
        alarm_kinds: alarm_kinds(),
        nav,
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

async fn overview_alarms(State(s): State<AppState>) -> Response {
    let admin = is_admin(nav("overview").as_ref());
    html(
        OverviewAlarms {
            alarms: alarms(&s, admin, now_ms()).await,
        },
        StatusCode::OK,
    )
}

async fn overview_game(State(s): State<AppState>) -> Response {
    html(
        OverviewGame {
            operate: operates(nav("overview").as_ref()),
            panel: panel(&s, false),
        },
        StatusCode::OK,
    )
}

async fn overview_events(State(s): State<AppState>) -> Response {
    html(
        OverviewEvents {
            events: newest(&s, now_ms()).await,
        },
        StatusCode::OK,
    )
}

/// The kinds the alarm list refreshes on (`data-kinds`).
fn alarm_kinds() -> String {
    let mut k: Vec<&str> = ALARMS.iter().map(|a| a.kind).collect();
    // A rule's failure is in its `rule_fired` trace.
    k.push("rule_fired");
    k.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_alarm_kind_is_an_event_kind() {
        // The kinds are the serde tags of `Event`'s variants (snake case): each one names a
        // variant of core/event.rs, so a typo here fails instead of never matching.
        let events = include_str!("../../core/event.rs");
        for a in ALARMS {
            let variant: String = a
                .kind
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            assert!(
                events.contains(&format!("\n    {variant} {{"))
                    || events.contains(&format!("\n    {variant}(")),
                "{} is not an event kind (no variant {variant})",
                a.kind
            );
        }
        assert!(alarm_kinds().ends_with("rule_fired"));
    }

    #[test]
    fn summaries_say_what_happened() {
        assert_eq!(
            summary(
                "state_changed",
                &json!({"name": "level", "from": "white", "to": "red", "reason": "test", "state": {}})
            ),
            "level: white → red (test)"
        );
        assert_eq!(
            summary(
                "rule_fired",
                &json!({"rule": "r", "actions": [{"result": "ok"}, {"result": "error", "detail": "no such type"}]})
            ),
            "rule r: error: no such type"
        );
        assert_eq!(
            summary(
                "offline",
                &json!({"reason": "silent", "timeout_ms": 5, "cause": {"rule": "x"}})
            ),
            "reason silent, timeout ms 5"
        );
        assert!(webhook_failed(&json!({"status": 500})));
        assert!(webhook_failed(&json!({"error": "timeout"})));
        assert!(!webhook_failed(&json!({"status": 204})));
        assert_eq!(clip("é".repeat(200), 3), "ééé…");
    }
}
