//! The game routes: the state (level, counter, variables), the rule set (import, export, one
//! rule, dry runs, replays, traces), timers and game runs.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, AppState, body, ok};
use crate::clock::{now_ms, rfc3339};
use crate::core::CoreError;
use crate::core::game::def::{Rule, RuleFile};
use crate::core::game::engine::{CounterOp, GameSnapshot};
use crate::core::game::live::{GameCommand, TestInput};

/// Largest rule file accepted, bytes.
const RULE_FILE_MAX: usize = 1024 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/state", get(get_state))
        .route("/api/state/level", put(put_level))
        .route("/api/state/counter", post(post_counter))
        .route("/api/state/variables/{name}", put(put_variable))
        .route("/api/rules", get(list_rules))
        .route("/api/rules/import", post(import))
        .route("/api/rules/export", get(export))
        .route("/api/rules/test", post(test))
        .route("/api/rules/replay", post(replay))
        .route(
            "/api/rules/{name}",
            get(get_rule).put(put_rule).delete(delete_rule),
        )
        .route("/api/rules/{name}/traces", get(traces))
        .route("/api/timers", get(list_timers).post(start_timer))
        .route("/api/timers/{name}", axum::routing::delete(cancel_timer))
        .route("/api/runs", get(list_runs).post(start_run))
        .route("/api/runs/current/pause", post(pause_run))
        .route("/api/runs/current/resume", post(resume_run))
        .route("/api/runs/current/end", post(end_run))
        .route("/api/runs/reset", post(reset))
        .route("/api/runs/{id}", get(get_run))
        .route("/api/runs/{id}/timeline", get(timeline))
}

fn state_json(g: &GameSnapshot) -> Value {
    let mut v = serde_json::to_value(g).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        // The API's name for the user variables.
        if let Some(vars) = m.get("variables").cloned() {
            m.insert("variables".into(), vars);
        }
        if let Some(run) = m.get_mut("run").and_then(Value::as_object_mut) {
            times(run);
        }
        if let Some(Value::Array(ts)) = m.get_mut("timers") {
            for t in ts.iter_mut().filter_map(Value::as_object_mut) {
                times(t);
            }
        }
    }
    v
}

/// Unix ms fields shown as RFC 3339 (`*_at`).
fn times(m: &mut serde_json::Map<String, Value>) {
    for (k, v) in m.iter_mut() {
        if k.ends_with("_at")
            && let Some(ms) = v.as_i64()
        {
            *v = json!(rfc3339(ms));
        }
    }
}

async fn game(s: &AppState, cmd: GameCommand) -> ApiResult {
    let g = s.hub.game(cmd, &super::auth::actor(), now_ms()).await?;
    ok(state_json(&g))
}

async fn get_state(State(s): State<AppState>) -> ApiResult {
    ok(state_json(&s.hub.game_snapshot(now_ms())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelBody {
    level: String,
    reason: Option<String>,
}

async fn put_level(State(s): State<AppState>, b: Bytes) -> ApiResult {
    let b: LevelBody = body(&b)?;
    game(
        &s,
        GameCommand::SetLevel {
            level: b.level,
            reason: b.reason,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterBody {
    add: Option<i64>,
    set: Option<i64>,
    reason: Option<String>,
}

async fn post_counter(State(s): State<AppState>, b: Bytes) -> ApiResult {
    let b: CounterBody = body(&b)?;
    let op = match (b.add, b.set) {
        (Some(n), None) => CounterOp::Add(n),
        (None, Some(n)) => CounterOp::Set(n),
        _ => {
            return Err(ApiError::field(
                "add",
                "give exactly one of \"add\" and \"set\"",
            ));
        }
    };
    game(
        &s,
        GameCommand::Counter {
            op,
            reason: b.reason,
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VarBody {
    value: Value,
    reason: Option<String>,
}

async fn put_variable(State(s): State<AppState>, Path(name): Path<String>, b: Bytes) -> ApiResult {
    let b: VarBody = body(&b)?;
    game(
        &s,
        GameCommand::SetVariable {
            name,
            value: b.value,
            reason: b.reason,
        },
    )
    .await
}

// ---- rules ----

async fn list_rules(State(s): State<AppState>) -> ApiResult {
    let list: Vec<Value> = s
        .hub
        .rules_list()
        .into_iter()
        .map(|(r, st)| rule_json(&r, &st))
        .collect();
    ok(list)
}

fn rule_json(r: &Rule, st: &crate::core::game::RuleStats) -> Value {
    let mut stats = serde_json::to_value(st).unwrap_or(Value::Null);
    if let Some(m) = stats.as_object_mut() {
        times(m);
        for k in ["paused_until"] {
            if let Some(ms) = m.get(k).and_then(Value::as_i64) {
                m.insert(k.into(), json!(rfc3339(ms)));
            }
        }
    }
    json!({"name": r.name, "rule": r, "stats": stats})
}

async fn get_rule(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    s.hub
        .rules_list()
        .into_iter()
        .find(|(r, _)| r.name == name)
        .map(|(r, st)| rule_json(&r, &st))
        .map(ok)
        .unwrap_or_else(|| Err(CoreError::NotFound(format!("no rule {name:?}")).into()))
}

async fn put_rule(State(s): State<AppState>, Path(name): Path<String>, b: Bytes) -> ApiResult {
    let rule: Rule = body(&b)?;
    if rule.name != name {
        return Err(ApiError::field(
            "name",
            format!("the body's name {:?} is not the path's {name:?}", rule.name),
        ));
    }
    game(
        &s,
        GameCommand::PutRule {
            rule: Box::new(rule),
        },
    )
    .await?;
    get_rule(State(s), Path(name)).await
}

async fn delete_rule(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    game(&s, GameCommand::DeleteRule { name })
        .await
        .map(|_| axum::http::StatusCode::NO_CONTENT.into_response())
}

async fn import(State(s): State<AppState>, b: Bytes) -> ApiResult {
    if b.len() > RULE_FILE_MAX {
        return Err(ApiError::field(
            "body",
            format!("a rule file is at most {RULE_FILE_MAX} bytes"),
        ));
    }
    let text = std::str::from_utf8(&b)
        .map_err(|_| ApiError::field("body", "the rule file is not UTF-8"))?;
    let file = RuleFile::from_toml(text).map_err(|e| {
        CoreError::Rules(vec![crate::core::game::RuleError {
            rule: None,
            field: "file".into(),
            reason: e.trim_end().to_string(),
        }])
    })?;
    game(
        &s,
        GameCommand::Import {
            file: Box::new(file),
        },
    )
    .await?;
    let (_, hash) = s.hub.rules_export();
    let f = s.hub.rules_file();
    ok(
        json!({"rules": f.rules.len(), "levels": f.levels.len(), "variables": f.variables.len(), "hash": hash}),
    )
}

async fn export(State(s): State<AppState>) -> ApiResult {
    let (text, _) = s.hub.rules_export();
    Ok((
        [(header::CONTENT_TYPE, "application/toml; charset=utf-8")],
        text,
    )
        .into_response())
}

async fn test(State(s): State<AppState>, b: Bytes) -> ApiResult {
    let input: TestInput = body(&b)?;
    ok(s.hub.rules_test(&input, now_ms())?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    /// A rule file (TOML) to replay instead of the loaded one.
    rules: Option<String>,
    /// A recorded game run, or a window (RFC 3339).
    run: Option<u64>,
    from: Option<String>,
    to: Option<String>,
}

async fn replay(State(s): State<AppState>, b: Bytes) -> ApiResult {
    let b: ReplayBody = body(&b)?;
    let rules = match &b.rules {
        Some(text) => Some(RuleFile::from_toml(text).map_err(|e| {
            CoreError::Rules(vec![crate::core::game::RuleError {
                rule: None,
                field: "rules".into(),
                reason: e.trim_end().to_string(),
            }])
        })?),
        None => None,
    };
    let window = match (b.run, &b.from, &b.to) {
        (Some(run), None, None) => crate::core::game::live::Window::Run(run),
        (None, Some(f), t) => crate::core::game::live::Window::Between(
            time(f, "from")?,
            match t {
                Some(t) => time(t, "to")?,
                None => now_ms(),
            },
        ),
        _ => return Err(ApiError::field("run", "give a run, or from (and to)")),
    };
    ok(s.hub.replay(rules, window, now_ms()).await?)
}

fn time(s: &str, field: &'static str) -> Result<i64, ApiError> {
    crate::clock::parse_rfc3339(s)
        .ok_or_else(|| ApiError::field(field, format!("{field}: {s:?} is not an RFC 3339 time")))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<u32>,
}

async fn traces(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    if !s.hub.rules_list().iter().any(|(r, _)| r.name == name) {
        return Err(CoreError::NotFound(format!("no rule {name:?}")).into());
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let rows = s
        .hub
        .store()
        .rule_traces(name, limit)
        .await
        .map_err(CoreError::from)?;
    let out: Vec<Value> = rows
        .into_iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "at": rfc3339(e.record.at),
                "device": e.record.device,
                "trace": serde_json::from_str::<Value>(&e.record.data).unwrap_or(Value::Null),
            })
        })
        .collect();
    ok(out)
}

// ---- timers and runs ----

/// A list of timers or runs, their `*_at` times in RFC 3339.
fn list_json(list: impl serde::Serialize) -> Value {
    let mut v = serde_json::to_value(list).unwrap_or(Value::Null);
    if let Value::Array(items) = &mut v {
        for i in items.iter_mut().filter_map(Value::as_object_mut) {
            times(i);
        }
    }
    v
}

async fn list_timers(State(s): State<AppState>) -> ApiResult {
    ok(list_json(s.hub.timers(now_ms())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimerBody {
    name: String,
    secs: u64,
    #[serde(default)]
    game_time: bool,
}

async fn start_timer(State(s): State<AppState>, b: Bytes) -> ApiResult {
    let b: TimerBody = body(&b)?;
    if b.name.is_empty() || b.name.len() > 64 {
        return Err(ApiError::field(
            "name",
            "a timer's name is 1 to 64 characters",
        ));
    }
    game(
        &s,
        GameCommand::StartTimer {
            name: b.name,
            secs: b.secs,
            game_time: b.game_time,
        },
    )
    .await
}

async fn cancel_timer(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    game(&s, GameCommand::CancelTimer { name }).await
}

async fn list_runs(State(s): State<AppState>) -> ApiResult {
    ok(list_json(s.hub.game_runs(now_ms())))
}

async fn start_run(State(s): State<AppState>) -> ApiResult {
    game(&s, GameCommand::StartRun).await
}
async fn pause_run(State(s): State<AppState>) -> ApiResult {
    game(&s, GameCommand::PauseRun).await
}
async fn resume_run(State(s): State<AppState>) -> ApiResult {
    game(&s, GameCommand::ResumeRun).await
}
async fn end_run(State(s): State<AppState>) -> ApiResult {
    game(&s, GameCommand::EndRun).await
}
async fn reset(State(s): State<AppState>) -> ApiResult {
    game(&s, GameCommand::Reset).await
}

fn run_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::field("id", format!("{id:?} is not a run number")))
}

async fn get_run(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = run_id(&id)?;
    let now = now_ms();
    let r = s
        .hub
        .game_runs(now)
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| CoreError::NotFound(format!("no run {id}")))?;
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        times(m);
    }
    ok(v)
}

/// A run's timeline: its game events (state changes, rule firings, timers, the run's own,
/// operator actions), each with its wall time and game time.
async fn timeline(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LimitQuery>,
) -> ApiResult {
    let id = run_id(&id)?;
    let run = s
        .hub
        .game_run(id)
        .ok_or_else(|| CoreError::NotFound(format!("no run {id}")))?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let to = run.ended_at.map_or(i64::MAX, |e| e + 1);
    let mut out = Vec::new();
    let mut after = 0;
    'pages: loop {
        let rows = s
            .hub
            .store()
            .events_between(run.started_at, to, after, 1000)
            .await
            .map_err(CoreError::from)?;
        if rows.is_empty() {
            break;
        }
        for e in rows {
            after = e.seq;
            let r = &e.record;
            let game_kind = matches!(
                r.kind.as_str(),
                "state_changed"
                    | "rule_fired"
                    | "rule_chain_stopped"
                    | "rule_paused"
                    | "timer_started"
                    | "timer_cancelled"
                    | "timer_fired"
                    | "run_started"
                    | "run_paused"
                    | "run_resumed"
                    | "run_ended"
                    | "game_reset"
                    | "rules_imported"
                    | "rule_changed"
            );
            let operator = r.actor != crate::core::event::DEVICE
                && r.actor != crate::core::event::SERVER
                && !r.actor.starts_with("rule:");
            if !game_kind && !operator {
                continue;
            }
            out.push(json!({
                "seq": e.seq,
                "at": rfc3339(r.at),
                "game_ms": run.game_ms(r.at),
                "kind": r.kind,
                "device": r.device,
                "actor": r.actor,
                "data": serde_json::from_str::<Value>(&r.data).unwrap_or(Value::Null),
            }));
            if out.len() >= limit as usize {
                break 'pages;
            }
        }
    }
    ok(json!({"run": id, "events": out}))
}
