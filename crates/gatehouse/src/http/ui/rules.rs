//! The rules pages: the rule set as a list (trigger, enabled, the last firing and its
//! outcome, live), import and export, and a page per rule (its definition, its traces newest
//! first, an editor, delete and a dry run).
//!
//! Invariants:
//! - Everything shown is read from the core (`Hub::rules_list`, the game snapshot) and the
//!   event log (`rule_fired`, `rule_chain_stopped`, `rule_paused`); nothing here changes
//!   anything. Saving, deleting, importing and dry runs are `/api/rules…` calls made by the
//!   browser (`console.js` for the JSON forms, `rules.js` for the TOML import and to show a
//!   dry run's traces), with the API's role checks.
//! - A form is rendered only for a role that may make its call: the editor, delete and import
//!   for admins, the dry run for operators and admins; a viewer gets no form at all.
//! - A fragment (`?part=list`, `?part=definition`, `?part=traces`) is rendered by the template
//!   its page includes, from the same reads, so the live view and a reload agree. Fragments
//!   are a query rather than a path of their own because any path segment can be a rule's
//!   name.

use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Nav, ago, html, nav};
use crate::clock::{now_ms, rfc3339};
use crate::core::game::RuleStats;
use crate::core::game::def::{Cond, Rule};
use crate::core::game::engine::{GameSnapshot, Trace, Trigger};
use crate::http::AppState;
use crate::store::{EventFilter, StoredEvent};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/rules", get(rules))
        .route("/rules/{name}", get(rule))
}

/// The event kinds after which the list and a rule's page are read again.
const LIVE_KINDS: &str = "rule_fired rule_chain_stopped rule_paused rules_imported rule_changed";
/// Traces a rule's page shows at most.
const TRACES_SHOWN: u32 = 50;
/// Newest `rule_chain_stopped` / `rule_paused` events read to find each rule's latest.
const STOPS_READ: u32 = 500;
/// Recorded events a dry run offers at most, and how many of the trigger's kind are read to
/// find them.
const RECORDED_SHOWN: usize = 20;
const RECORDED_READ: u32 = 200;

/// Which part of a page to render: the whole page, or one of the fragments it refreshes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    #[serde(default)]
    part: Option<String>,
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A rule's trigger in words: `event info · type pwr`, `state level`, `timer x`, ….
fn trigger_text(r: &Rule) -> String {
    let w = &r.when;
    let mut parts = Vec::new();
    for (k, v) in [
        ("event", &w.event),
        ("type", &w.device_type),
        ("device", &w.device),
        ("state", &w.state),
        ("timer", &w.timer),
        ("schedule", &w.schedule),
        ("run", &w.run),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k} {v}"));
        }
    }
    parts.join(" · ")
}

/// The index key of a rule's trigger, as the engine computes it for an event
/// ([`Trigger::key`]): a recorded event can be offered to a rule's dry run when its key is
/// the rule's.
fn trigger_key(r: &Rule) -> Option<String> {
    let w = &r.when;
    if let Some(k) = &w.event {
        return Some(format!("event:{k}"));
    }
    if let Some(s) = &w.state {
        return Some(format!("state:{s}"));
    }
    if let Some(t) = &w.timer {
        return Some(format!("timer:{t}"));
    }
    w.run.as_ref().map(|r| format!("run:{r}"))
}

/// The stored kind a trigger's events are recorded as (a SUP is a `config_changed`).
fn stored_kind(r: &Rule) -> Option<String> {
    let w = &r.when;
    if let Some(k) = &w.event {
        return Some(if k == "sup" {
            "config_changed".into()
        } else {
            k.clone()
        });
    }
    if w.state.is_some() {
        return Some("state_changed".into());
    }
    if w.timer.is_some() {
        return Some("timer_fired".into());
    }
    w.run.as_ref().map(|r| match r.as_str() {
        "start" => "run_started".into(),
        "pause" => "run_paused".into(),
        "resume" => "run_resumed".into(),
        _ => "run_ended".into(),
    })
}

/// Whether a device (of an event) is one the rule's trigger takes (its `device`, `type`).
fn device_applies(r: &Rule, device: Option<&str>) -> bool {
    let w = &r.when;
    if let Some(d) = &w.device
        && device != Some(d.as_str())
    {
        return false;
    }
    if let Some(ty) = &w.device_type
        && device.and_then(|d| d.split_once('/')).map(|(k, _)| k) != Some(ty.as_str())
    {
        return false;
    }
    true
}

/// What a rule's last evaluation came to, as the list shows it.
struct Outcome {
    at: i64,
    /// `ok`, `action failed`, `stopped by the depth limit`, `paused by the rate limit`.
    label: &'static str,
    class: &'static str,
    /// The error, or the limit that stopped it.
    detail: String,
}

impl Outcome {
    fn of_trace(at: i64, outcome: &str) -> Outcome {
        match outcome.strip_prefix("error: ") {
            Some(e) => Outcome {
                at,
                label: "action failed",
                class: "bad",
                detail: e.to_string(),
            },
            None if outcome == "ok" => Outcome {
                at,
                label: "ok",
                class: "ok",
                detail: String::new(),
            },
            None => Outcome {
                at,
                label: "action failed",
                class: "bad",
                detail: outcome.to_string(),
            },
        }
    }

    fn of_stop(e: &StoredEvent, data: &Value) -> Outcome {
        if e.record.kind == "rule_chain_stopped" {
            Outcome {
                at: e.record.at,
                label: "stopped by the depth limit",
                class: "bad",
                detail: format!(
                    "depth {} over the limit {}",
                    data["depth"].as_u64().unwrap_or(0),
                    data["limit"].as_u64().unwrap_or(0)
                ),
            }
        } else {
            Outcome {
                at: e.record.at,
                label: "paused by the rate limit",
                class: "warn",
                detail: format!(
                    "over {} firings/s, paused until {}",
                    data["per_sec"].as_u64().unwrap_or(0),
                    data["until"].as_str().unwrap_or("?")
                ),
            }
        }
    }
}

/// The newest `rule_chain_stopped` and `rule_paused` events, newest first, with their data.
async fn stops(s: &AppState) -> Vec<(StoredEvent, Value)> {
    let mut out = Vec::new();
    for kind in ["rule_chain_stopped", "rule_paused"] {
        let rows = s
            .hub
            .store()
            .events(EventFilter {
                device: None,
                kind: Some(kind.into()),
                limit: STOPS_READ,
            })
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the rules page could not read the rule events");
                Vec::new()
            });
        for e in rows {
            let data = serde_json::from_str(&e.record.data).unwrap_or(Value::Null);
            out.push((e, data));
        }
    }
    out.sort_by_key(|(e, _)| std::cmp::Reverse(e.seq));
    out
}

/// One row of the list.
struct Row {
    name: String,
    description: String,
    trigger: String,
    enabled: bool,
    firings: u64,
    last: Option<Outcome>,
    last_at: String,
    last_ago: String,
    paused_until: Option<String>,
}

/// Every rule in file order, with its last evaluation: the engine's own record of its last
/// firing since start (else the newest stored trace), or a depth-limit stop or a rate-limit
/// pause if one came later.
async fn rows(s: &AppState, now: i64) -> Vec<Row> {
    let list = s.hub.rules_list();
    let stops = stops(s).await;
    let mut latest_stop: HashMap<&str, Outcome> = HashMap::new();
    for (e, data) in &stops {
        if let Some(r) = data["rule"].as_str() {
            latest_stop
                .entry(r)
                .or_insert_with(|| Outcome::of_stop(e, data));
        }
    }
    let mut out = Vec::with_capacity(list.len());
    for (r, st) in list {
        let mut last = fired_outcome(s, &r.name, &st).await;
        if let Some(stop) = latest_stop.remove(r.name.as_str())
            && last.as_ref().is_none_or(|l| stop.at >= l.at)
        {
            last = Some(stop);
        }
        out.push(Row {
            description: r.description.clone(),
            trigger: trigger_text(&r),
            enabled: r.enabled,
            firings: st.firings,
            last_at: last.as_ref().map_or(String::new(), |l| rfc3339(l.at)),
            last_ago: last.as_ref().map_or(String::new(), |l| ago(l.at, now)),
            last,
            paused_until: st.paused_until.filter(|&u| u > now).map(rfc3339),
            name: r.name,
        });
    }
    out
}

/// The last firing of a rule: the engine's stats since start, else its newest stored trace.
async fn fired_outcome(s: &AppState, name: &str, st: &RuleStats) -> Option<Outcome> {
    if let (Some(at), Some(o)) = (st.last_fired_at, &st.last_outcome) {
        return Some(Outcome::of_trace(at, o));
    }
    let rows = s
        .hub
        .store()
        .rule_traces(name.to_string(), 1)
        .await
        .unwrap_or_default();
    let e = rows.into_iter().next()?;
    let t: Trace = serde_json::from_str(&e.record.data).ok()?;
    Some(Outcome::of_trace(e.record.at, &t.outcome()))
}

#[derive(Template)]
#[template(path = "rules.html")]
struct RulesPage {
    nav: Option<Nav>,
    live_kinds: &'static str,
    rows: Vec<Row>,
    hash: String,
}

#[derive(Template)]
#[template(path = "rules_list.html")]
struct RulesList {
    rows: Vec<Row>,
}

async fn rules(
    State(s): State<AppState>,
    q: Result<Query<Part>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let part = match q {
        Ok(Query(p)) => p.part,
        Err(e) => return bad_query(e),
    };
    let now = now_ms();
    let rows = rows(&s, now).await;
    match part.as_deref() {
        None => html(
            RulesPage {
                nav: nav("rules"),
                live_kinds: LIVE_KINDS,
                rows,
                hash: s.hub.rules_export().1,
            },
            StatusCode::OK,
        ),
        Some("list") => html(RulesList { rows }, StatusCode::OK),
        Some(other) => no_part(other),
    }
}

fn bad_query(e: axum::extract::rejection::QueryRejection) -> Response {
    use axum::response::IntoResponse;
    (StatusCode::BAD_REQUEST, format!("bad query: {e}")).into_response()
}

fn no_part(part: &str) -> Response {
    use axum::response::IntoResponse;
    (
        StatusCode::NOT_FOUND,
        format!("no part {part:?} of this page"),
    )
        .into_response()
}

// ---- one rule ----

/// A condition of a trace: the path, the test as written, the value found, whether it held.
struct StepView {
    key: String,
    test: String,
    value: String,
    passed: bool,
}

/// An action of a trace: as written, its result (`ok`, `skipped`, `error`), what it did or
/// why it failed.
struct ActionView {
    action: String,
    result: String,
    class: &'static str,
    detail: String,
}

/// One entry of a rule's history: a firing with its trace, or a stop (depth limit) or a
/// pause (rate limit), which have no trace.
struct TraceView {
    seq: i64,
    at: String,
    ago: String,
    device: String,
    outcome: String,
    class: &'static str,
    /// Firing number and depth (firings only).
    firing: Option<(u64, u32)>,
    trigger_kind: String,
    trigger: String,
    conditions: Vec<StepView>,
    expr: Option<StepView>,
    actions: Vec<ActionView>,
    before: String,
    after: String,
    notes: Vec<String>,
}

fn snapshot_text(s: &crate::core::game::Snapshot) -> String {
    let mut t = format!("level {} · counter {}", s.level, s.counter);
    for (k, v) in &s.vars {
        t.push_str(&format!(" · {k} = {}", compact(v)));
    }
    t
}

fn trace_view(e: &StoredEvent, now: i64) -> Option<TraceView> {
    let t: Trace = serde_json::from_str(&e.record.data).ok()?;
    let o = Outcome::of_trace(e.record.at, &t.outcome());
    let mut notes = Vec::new();
    if let Some(s) = &t.skipped {
        notes.push(format!("skipped: {s}"));
    }
    if let Some(step) = t.resumed_at {
        notes.push(format!(
            "the rest of a delayed run, from action {}",
            step + 1
        ));
    }
    if let Some(l) = t.late_ms {
        notes.push(format!("{l} ms late (the server was down)"));
    }
    Some(TraceView {
        seq: e.seq,
        at: rfc3339(e.record.at),
        ago: ago(e.record.at, now),
        device: e.record.device.clone().unwrap_or_default(),
        outcome: if o.detail.is_empty() {
            o.label.to_string()
        } else {
            format!("{}: {}", o.label, o.detail)
        },
        class: o.class,
        firing: Some((t.firing, t.depth)),
        trigger_kind: t.trigger["kind"].as_str().unwrap_or("?").to_string(),
        trigger: pretty(&t.trigger),
        conditions: t
            .conditions
            .iter()
            .map(|c| StepView {
                key: c.key.clone(),
                test: compact(&c.test),
                value: compact(&c.value),
                passed: c.passed,
            })
            .collect(),
        expr: t.expr.as_ref().map(|x| StepView {
            key: "expr".into(),
            test: x.source.clone(),
            value: compact(&x.value),
            passed: x.passed,
        }),
        actions: t
            .actions
            .iter()
            .map(|a| ActionView {
                action: compact(&a.action),
                class: match a.result.as_str() {
                    "ok" => "ok",
                    "error" => "bad",
                    _ => "off",
                },
                result: a.result.clone(),
                detail: a.detail.as_ref().map_or(String::new(), |d| match d {
                    Value::String(s) => s.clone(),
                    other => compact(other),
                }),
            })
            .collect(),
        before: snapshot_text(&t.before),
        after: snapshot_text(&t.after),
        notes,
    })
}

fn stop_view(e: &StoredEvent, data: &Value, now: i64) -> TraceView {
    let o = Outcome::of_stop(e, data);
    let trigger = &data["trigger"];
    TraceView {
        seq: e.seq,
        at: rfc3339(e.record.at),
        ago: ago(e.record.at, now),
        device: e.record.device.clone().unwrap_or_default(),
        outcome: format!("{}: {}", o.label, o.detail),
        class: o.class,
        firing: None,
        trigger_kind: trigger["kind"].as_str().unwrap_or("").to_string(),
        trigger: if trigger.is_null() {
            String::new()
        } else {
            pretty(trigger)
        },
        conditions: Vec::new(),
        expr: None,
        actions: Vec::new(),
        before: String::new(),
        after: String::new(),
        notes: Vec::new(),
    }
}

/// A rule's history, newest first: its stored traces and its stops and pauses.
async fn history(s: &AppState, name: &str, now: i64) -> Vec<TraceView> {
    let traces = s
        .hub
        .store()
        .rule_traces(name.to_string(), TRACES_SHOWN)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the rule page could not read the traces");
            Vec::new()
        });
    let mut out: Vec<TraceView> = traces.iter().filter_map(|e| trace_view(e, now)).collect();
    for (e, data) in stops(s).await {
        if data["rule"].as_str() == Some(name) {
            out.push(stop_view(&e, &data, now));
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.seq));
    out.truncate(TRACES_SHOWN as usize);
    out
}

/// The rule as the export writes it: a `[[rules]]` entry of the rule file.
fn rule_toml(r: &Rule) -> String {
    #[derive(Serialize)]
    struct One<'a> {
        rules: [&'a Rule; 1],
    }
    toml::to_string(&One { rules: [r] }).unwrap_or_else(|e| format!("# not shown: {e}"))
}

/// What the editor's fields hold: each part of the rule as `PUT /api/rules/{name}` takes it.
struct Editor {
    description: String,
    enabled: bool,
    modes: Vec<(&'static str, bool)>,
    max_firings_per_sec: String,
    when: String,
    match_: String,
    then: String,
}

fn editor(r: &Rule) -> Editor {
    let mode = serde_json::to_value(r.mode).unwrap_or(Value::Null);
    Editor {
        description: r.description.clone(),
        enabled: r.enabled,
        modes: ["single", "restart", "queued", "parallel"]
            .into_iter()
            .map(|m| (m, mode.as_str() == Some(m)))
            .collect(),
        max_firings_per_sec: r
            .max_firings_per_sec
            .map_or(String::new(), |n| n.to_string()),
        when: pretty_of(&r.when),
        match_: if r.match_.is_empty() {
            String::new()
        } else {
            pretty_of(&r.match_)
        },
        then: pretty_of(&r.then),
    }
}

fn pretty_of(v: &impl Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The value a condition is satisfied by, where one is plain to see (equality, `eq`, the
/// first of `in`, `min`, `max`).
fn satisfying(c: &Cond) -> Option<Value> {
    match c {
        Cond::Equals(v) => Some(v.clone()),
        Cond::Tests(t) => {
            t.eq.clone()
                .or_else(|| t.one_of.as_ref().and_then(|l| l.first().cloned()))
                .or_else(|| {
                    t.min.or(t.max).map(|n| {
                        if n.fract() == 0.0 && n.abs() < 1e15 {
                            json!(n as i64)
                        } else {
                            json!(n)
                        }
                    })
                })
                .or_else(|| {
                    t.at_least
                        .clone()
                        .or_else(|| t.at_most.clone())
                        .map(Value::String)
                })
        }
    }
}

fn set_path(m: &mut Map<String, Value>, path: &[&str], v: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        m.insert((*first).to_string(), v);
        return;
    }
    let e = m
        .entry((*first).to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !e.is_object() {
        *e = Value::Object(Map::new());
    }
    if let Value::Object(inner) = e {
        set_path(inner, rest, v);
    }
}

/// A dry run's sample for the rule: an event of its trigger with the fields its `if` tests
/// set to values that pass, and the state its conditions on the level, the counter,
/// `ingame` and variables ask for (empty: the current state). `None` for a schedule, which a
/// dry run cannot take.
fn sample(r: &Rule, g: &GameSnapshot) -> Option<(String, String)> {
    let w = &r.when;
    let mut ev = Map::new();
    if let Some(k) = &w.event {
        ev.insert("kind".into(), json!(k));
        let device = w
            .device
            .clone()
            .or_else(|| w.device_type.as_ref().map(|t| format!("{t}/all")));
        ev.insert("device".into(), json!(device));
        if k == "info" || k == "sup" {
            ev.insert("datahold".into(), json!({}));
        }
    } else if let Some(name) = &w.state {
        let now = match name.as_str() {
            "level" => json!(g.level),
            "counter" => json!(g.counter),
            v => g.variables.get(v).cloned().unwrap_or(Value::Null),
        };
        ev.insert("kind".into(), json!("state_changed"));
        ev.insert("name".into(), json!(name));
        ev.insert("from".into(), now.clone());
        ev.insert("to".into(), now);
    } else if let Some(t) = &w.timer {
        ev.insert("kind".into(), json!("timer_fired"));
        ev.insert("name".into(), json!(t));
        ev.insert("late_ms".into(), json!(0));
    } else if let Some(run) = &w.run {
        let kind = match run.as_str() {
            "start" => "run_started",
            "pause" => "run_paused",
            "resume" => "run_resumed",
            _ => "run_ended",
        };
        ev.insert("kind".into(), json!(kind));
        ev.insert("run".into(), json!(1));
    } else {
        return None;
    }
    let mut state = Map::new();
    let mut want_ingame = None;
    for (key, c) in &r.match_.0 {
        let Some(v) = satisfying(c) else { continue };
        if let Some(path) = key.strip_prefix("event.") {
            let parts: Vec<&str> = path.split('.').collect();
            set_path(&mut ev, &parts, v);
        } else if key == "device" && v.is_string() {
            ev.insert("device".into(), v);
        } else if key == "level" && v.is_string() {
            state.insert("level".into(), v);
        } else if key == "counter" && v.is_number() {
            state.insert("counter".into(), v);
        } else if key == "ingame" {
            want_ingame = v.as_bool();
        } else if let Some(var) = key.strip_prefix("var.") {
            set_path(&mut state, &["variables", var], v);
        }
    }
    if want_ingame == Some(true)
        && !state.contains_key("level")
        && !g.ingame
        && let Some(l) = g.levels.iter().find(|l| l.ingame)
    {
        state.insert("level".into(), json!(l.name));
        state.entry("counter").or_insert_with(|| json!(l.threshold));
    }
    let state = if state.is_empty() {
        String::new()
    } else {
        pretty(&Value::Object(state))
    };
    Some((pretty(&Value::Object(ev)), state))
}

/// A recorded event a dry run can start from: the event as the rule saw it.
struct Recorded {
    seq: i64,
    at: String,
    device: String,
    json: String,
}

/// The newest recorded events of the rule's trigger (its kind, and its device or type).
async fn recorded(s: &AppState, r: &Rule) -> Vec<Recorded> {
    let (Some(key), Some(kind)) = (trigger_key(r), stored_kind(r)) else {
        return Vec::new();
    };
    let rows = s
        .hub
        .store()
        .events(EventFilter {
            device: r.when.device.clone(),
            kind: Some(kind),
            limit: RECORDED_READ,
        })
        .await
        .unwrap_or_default();
    rows.into_iter()
        .filter(|e| device_applies(r, e.record.device.as_deref()))
        .filter_map(|e| {
            let data = serde_json::from_str(&e.record.data).ok()?;
            let t = Trigger::from_parts(
                &e.record.kind,
                e.record.device.as_deref(),
                &e.record.actor,
                e.record.at,
                data,
                0,
            )?;
            (t.key == key).then(|| Recorded {
                seq: e.seq,
                at: rfc3339(e.record.at),
                device: e.record.device.clone().unwrap_or_default(),
                json: pretty(&t.event),
            })
        })
        .take(RECORDED_SHOWN)
        .collect()
}

/// The definition part: the rule as the export writes it, and what the engine knows of it.
struct Definition {
    description: String,
    trigger: String,
    enabled: bool,
    toml: String,
    firings: u64,
    skipped: u64,
    last: Option<Outcome>,
    last_at: String,
    last_ago: String,
    paused_until: Option<String>,
}

#[derive(Template)]
#[template(path = "rules_rule.html")]
struct RulePage {
    nav: Option<Nav>,
    live_kinds: &'static str,
    name: String,
    def: Definition,
    editor: Editor,
    sample: Option<(String, String)>,
    recorded: Vec<Recorded>,
    traces: Vec<TraceView>,
}

#[derive(Template)]
#[template(path = "rules_definition.html")]
struct RuleDefinition {
    def: Definition,
}

#[derive(Template)]
#[template(path = "rules_traces.html")]
struct RuleTraces {
    traces: Vec<TraceView>,
}

#[derive(Template)]
#[template(path = "rules_missing.html")]
struct RuleMissing {
    nav: Option<Nav>,
    name: String,
}

async fn definition(s: &AppState, r: &Rule, st: &RuleStats, now: i64) -> Definition {
    let mut last = fired_outcome(s, &r.name, st).await;
    if let Some((e, data)) = stops(s)
        .await
        .into_iter()
        .find(|(_, d)| d["rule"].as_str() == Some(r.name.as_str()))
        && last.as_ref().is_none_or(|l| e.record.at >= l.at)
    {
        last = Some(Outcome::of_stop(&e, &data));
    }
    Definition {
        description: r.description.clone(),
        trigger: trigger_text(r),
        enabled: r.enabled,
        toml: rule_toml(r),
        firings: st.firings,
        skipped: st.skipped,
        last_at: last.as_ref().map_or(String::new(), |l| rfc3339(l.at)),
        last_ago: last.as_ref().map_or(String::new(), |l| ago(l.at, now)),
        last,
        paused_until: st.paused_until.filter(|&u| u > now).map(rfc3339),
    }
}

async fn rule(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<Part>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let part = match q {
        Ok(Query(p)) => p.part,
        Err(e) => return bad_query(e),
    };
    let now = now_ms();
    let Some((r, st)) = s.hub.rules_list().into_iter().find(|(r, _)| r.name == name) else {
        return html(
            RuleMissing {
                nav: nav("rules"),
                name,
            },
            StatusCode::NOT_FOUND,
        );
    };
    match part.as_deref() {
        None => {
            let g = s.hub.game_snapshot(now);
            html(
                RulePage {
                    nav: nav("rules"),
                    live_kinds: LIVE_KINDS,
                    def: definition(&s, &r, &st, now).await,
                    editor: editor(&r),
                    sample: sample(&r, &g),
                    recorded: recorded(&s, &r).await,
                    traces: history(&s, &name, now).await,
                    name,
                },
                StatusCode::OK,
            )
        }
        Some("definition") => html(
            RuleDefinition {
                def: definition(&s, &r, &st, now).await,
            },
            StatusCode::OK,
        ),
        Some("traces") => html(
            RuleTraces {
                traces: history(&s, &name, now).await,
            },
            StatusCode::OK,
        ),
        Some(other) => no_part(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::game::RuleFile;

    fn preset_rule(name: &str) -> Rule {
        let text = include_str!("../../../../../presets/skaben.toml");
        let file = RuleFile::from_toml(text).unwrap();
        file.rules.into_iter().find(|r| r.name == name).unwrap()
    }

    fn snapshot() -> GameSnapshot {
        let text = include_str!("../../../../../presets/skaben.toml");
        let file = RuleFile::from_toml(text).unwrap();
        GameSnapshot {
            level: "white".into(),
            level_id: Some(1),
            counter: -1,
            ingame: false,
            next_threshold: None,
            variables: Default::default(),
            levels: file.levels,
            run: None,
            timers: Vec::new(),
            rules: 13,
            rules_hash: String::new(),
        }
    }

    /// The sample of a rule passes its conditions: the event's fields and the state they test.
    #[test]
    fn a_sample_sets_what_the_conditions_test() {
        let (ev, st) = sample(&preset_rule("shield-aux-at-blue"), &snapshot()).unwrap();
        let ev: Value = serde_json::from_str(&ev).unwrap();
        assert_eq!(ev["kind"], "info");
        assert_eq!(ev["device"], "pwr/all");
        assert_eq!(ev["datahold"]["powerstate"], "aux");
        let st: Value = serde_json::from_str(&st).unwrap();
        assert_eq!(st, json!({"level": "blue"}));

        // `ingame = true` at a level that is not: the first ingame level, at its threshold.
        let (_, st) = sample(&preset_rule("lock-failure-adds"), &snapshot()).unwrap();
        let st: Value = serde_json::from_str(&st).unwrap();
        assert_eq!(st, json!({"level": "green", "counter": 1}));

        let (ev, st) = sample(&preset_rule("cyan-30-min-to-blue"), &snapshot()).unwrap();
        let ev: Value = serde_json::from_str(&ev).unwrap();
        assert_eq!(ev["kind"], "state_changed");
        assert_eq!(ev["to"], "cyan");
        assert_eq!(st, "");
    }

    /// The editor's fields, put back together, are the rule the API takes.
    #[test]
    fn the_editor_holds_the_rule() {
        let r = preset_rule("lock-new-card-at-white");
        let e = editor(&r);
        let mut body = json!({
            "name": r.name,
            "description": e.description,
            "enabled": e.enabled,
            "mode": e.modes.iter().find(|m| m.1).unwrap().0,
            "when": serde_json::from_str::<Value>(&e.when).unwrap(),
            "if": serde_json::from_str::<Value>(&e.match_).unwrap(),
            "then": serde_json::from_str::<Value>(&e.then).unwrap(),
        });
        if !e.max_firings_per_sec.is_empty() {
            body["max_firings_per_sec"] = json!(e.max_firings_per_sec.parse::<u32>().unwrap());
        }
        let back: Rule = serde_json::from_value(body).unwrap();
        assert_eq!(back, r);
        assert!(rule_toml(&r).starts_with("[[rules]]"), "{}", rule_toml(&r));
    }
}
