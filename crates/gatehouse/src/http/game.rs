//! The game routes: the state (level, counter, variables), the rule set (import, export, one
//! rule, dry runs, replays, traces), timers and game runs.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, ApiResult, AppState, ErrorBody, body, ok};
use crate::clock::{now_ms, rfc3339};
use crate::core::CoreError;
use crate::core::game::def::{Rule, RuleFile};
use crate::core::game::engine::{CounterOp, GameSnapshot};
use crate::core::game::live::{GameCommand, TestInput};

/// Largest rule file accepted, bytes.
const RULE_FILE_MAX: usize = 1024 * 1024;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_state))
        .routes(routes!(put_level))
        .routes(routes!(post_counter))
        .routes(routes!(put_variable))
        .routes(routes!(list_rules))
        .routes(routes!(import))
        .routes(routes!(export))
        .routes(routes!(test))
        .routes(routes!(replay))
        .routes(routes!(get_rule, put_rule, delete_rule))
        .routes(routes!(traces))
        .routes(routes!(list_timers, start_timer))
        .routes(routes!(cancel_timer))
        .routes(routes!(list_runs, start_run))
        .routes(routes!(pause_run))
        .routes(routes!(resume_run))
        .routes(routes!(end_run))
        .routes(routes!(reset))
        .routes(routes!(get_run))
        .routes(routes!(timeline))
}

// The schema of [`TestInput`], which the core owns; `tests` checks that the core takes every
// field documented here.
/// A dry run's input: the event, and optionally the state and the rule file to test.
#[derive(utoipa::ToSchema)]
#[schema(as = TestInput)]
#[allow(dead_code)]
struct TestInputDoc {
    /// The event: `kind`, `device`, and its fields (`datahold`, `cell`, …), as rules see it.
    #[schema(value_type = Object)]
    event: Value,
    /// The state to test against (default: the current one): `level`, `counter`,
    /// `variables`.
    #[schema(value_type = Option<Object>)]
    state: Option<Value>,
    /// A rule file to test instead of the loaded one (TOML text).
    rules: Option<String>,
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

/// The game's state.
///
/// The level, the counter, the variables, the current run and the timers.
#[utoipa::path(
    get,
    path = "/api/state",
    tag = "game",
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
    )
)]
async fn get_state(State(s): State<AppState>) -> ApiResult {
    ok(state_json(&s.hub.game_snapshot(now_ms())))
}

/// The body of `PUT /api/state/level`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LevelBody {
    /// The level's name, one of the rule file's.
    level: String,
    /// Why, for the event log.
    reason: Option<String>,
}

/// Set the level.
#[utoipa::path(
    put,
    path = "/api/state/level",
    tag = "game",
    request_body(content = LevelBody, description = "The level", content_type = "application/json"),
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
    )
)]
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

/// The body of `POST /api/state/counter`: `add` or `set`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CounterBody {
    /// Added to the counter (or `set`).
    add: Option<i64>,
    /// The counter's new value (or `add`).
    set: Option<i64>,
    /// Why, for the event log.
    reason: Option<String>,
}

/// Add to the counter or set it.
#[utoipa::path(
    post,
    path = "/api/state/counter",
    tag = "game",
    request_body(content = CounterBody, description = "`add` or `set`", content_type = "application/json"),
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
    )
)]
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

/// The body of `PUT /api/state/variables/{name}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VarBody {
    /// The variable's new value, of its declared type.
    #[schema(value_type = Object)]
    value: Value,
    /// Why, for the event log.
    reason: Option<String>,
}

/// Set a variable.
#[utoipa::path(
    put,
    path = "/api/state/variables/{name}",
    tag = "game",
    params(
        ("name" = String, Path, description = "The variable's name, as the rule file declares it"),
    ),
    request_body(content = VarBody, description = "The value", content_type = "application/json"),
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "The rule file declares no such variable", body = ErrorBody),
    )
)]
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

/// Every rule, with its stats.
#[utoipa::path(
    get,
    path = "/api/rules",
    tag = "rules",
    responses(
        (status = 200, description = "The rules in order: name, the rule, its stats", body = Vec<Object>),
    )
)]
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

/// A rule, with its stats.
#[utoipa::path(
    get,
    path = "/api/rules/{name}",
    tag = "rules",
    params(
        ("name" = String, Path, description = "The rule's name"),
    ),
    responses(
        (status = 200, description = "The rule and its stats", body = Object),
        (status = 404, description = "No such rule", body = ErrorBody),
    )
)]
async fn get_rule(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    s.hub
        .rules_list()
        .into_iter()
        .find(|(r, _)| r.name == name)
        .map(|(r, st)| rule_json(&r, &st))
        .map(ok)
        .unwrap_or_else(|| Err(CoreError::NotFound(format!("no rule {name:?}")).into()))
}

/// Add a rule or replace it.
#[utoipa::path(
    put,
    path = "/api/rules/{name}",
    tag = "rules",
    params(
        ("name" = String, Path, description = "The rule's name"),
    ),
    request_body(content = Object, description = "The rule, as in the rule file (its `name` is the path's)", content_type = "application/json"),
    responses(
        (status = 200, description = "The rule and its stats", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
    )
)]
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

/// Delete a rule.
#[utoipa::path(
    delete,
    path = "/api/rules/{name}",
    tag = "rules",
    params(
        ("name" = String, Path, description = "The rule's name"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such rule", body = ErrorBody),
    )
)]
async fn delete_rule(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    game(&s, GameCommand::DeleteRule { name })
        .await
        .map(|_| axum::http::StatusCode::NO_CONTENT.into_response())
}

/// Import a rule file, replacing the rule set.
///
/// The file as it is written (TOML, at most 1 MiB); all of it is checked before any of it is used.
#[utoipa::path(
    post,
    path = "/api/rules/import",
    tag = "rules",
    request_body(content = String, description = "The rule file, TOML", content_type = "application/toml"),
    responses(
        (status = 200, description = "Imported: how many rules, levels and variables, and the file's hash", body = Object),
        (status = 400, description = "The file is refused: `rule` and `errors` say every problem found", body = ErrorBody),
    )
)]
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

/// Export the rule set as a rule file.
#[utoipa::path(
    get,
    path = "/api/rules/export",
    tag = "rules",
    responses(
        (status = 200, description = "The rule file, TOML", body = String, content_type = "application/toml",
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"rules.toml\"`: a browser saves it as a file"))),
    )
)]
async fn export(State(s): State<AppState>) -> ApiResult {
    let (text, _) = s.hub.rules_export();
    Ok((
        [
            (header::CONTENT_TYPE, "application/toml; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"rules.toml\"",
            ),
        ],
        text,
    )
        .into_response())
}

/// Dry-run the rules on a sample event.
///
/// Nothing is changed: the traces and effects are what the live run would have done.
#[utoipa::path(
    post,
    path = "/api/rules/test",
    tag = "rules",
    request_body(content = TestInputDoc, description = "The event, and optionally a state and a rule file", content_type = "application/json"),
    responses(
        (status = 200, description = "Every evaluation's trace and the effects a live run would have had", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
    )
)]
async fn test(State(s): State<AppState>, b: Bytes) -> ApiResult {
    let input: TestInput = body(&b)?;
    ok(s.hub.rules_test(&input, now_ms())?)
}

/// The body of `POST /api/rules/replay`: a run, or a window.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    /// A rule file (TOML) to replay instead of the loaded one.
    rules: Option<String>,
    /// A recorded game run, or a window (RFC 3339).
    run: Option<u64>,
    /// The window's start, RFC 3339 (with `to`, or until now).
    from: Option<String>,
    /// The window's end, RFC 3339.
    to: Option<String>,
}

/// Replay a recorded game through the rules.
///
/// A recorded run or a window of time, through the loaded rules or a rule file given; nothing is changed.
#[utoipa::path(
    post,
    path = "/api/rules/replay",
    tag = "rules",
    request_body(content = ReplayBody, description = "A run or a window, and optionally another rule file", content_type = "application/json"),
    responses(
        (status = 200, description = "What the rules would have done, event by event", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
    )
)]
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

/// The query of a rule's traces and a run's timeline.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LimitQuery {
    /// The most entries (traces: default 50, at most 1000; a timeline: default 1000, at most
    /// 10000).
    limit: Option<u32>,
}

/// A rule's recent evaluations.
#[utoipa::path(
    get,
    path = "/api/rules/{name}/traces",
    tag = "rules",
    params(
        ("name" = String, Path, description = "The rule's name"),
        LimitQuery,
    ),
    responses(
        (status = 200, description = "The traces, newest first: time, device, the trace", body = Vec<Object>),
        (status = 404, description = "No such rule", body = ErrorBody),
    )
)]
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

/// Every running timer.
#[utoipa::path(
    get,
    path = "/api/timers",
    tag = "timers",
    responses(
        (status = 200, description = "The timers: name, when started, when due, left", body = Vec<Object>),
    )
)]
async fn list_timers(State(s): State<AppState>) -> ApiResult {
    ok(list_json(s.hub.timers(now_ms())))
}

/// The body of `POST /api/timers`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TimerBody {
    /// The timer's name, 1 to 64 characters.
    name: String,
    /// How long, seconds (1 to 604800).
    secs: u64,
    /// Whether it counts game time (stops while the run is paused).
    #[serde(default)]
    game_time: bool,
}

/// Start a timer (or restart it).
#[utoipa::path(
    post,
    path = "/api/timers",
    tag = "timers",
    request_body(content = TimerBody, description = "The timer", content_type = "application/json"),
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 409, description = "As many timers are running as there can be", body = ErrorBody),
    )
)]
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

/// Cancel a timer.
#[utoipa::path(
    delete,
    path = "/api/timers/{name}",
    tag = "timers",
    params(
        ("name" = String, Path, description = "The timer's name"),
    ),
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
        (status = 404, description = "No such timer", body = ErrorBody),
    )
)]
async fn cancel_timer(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    game(&s, GameCommand::CancelTimer { name }).await
}

/// Every game run.
#[utoipa::path(
    get,
    path = "/api/runs",
    tag = "runs",
    responses(
        (status = 200, description = "The runs: number, when started, paused, ended, game time", body = Vec<Object>),
    )
)]
async fn list_runs(State(s): State<AppState>) -> ApiResult {
    ok(list_json(s.hub.game_runs(now_ms())))
}

/// Start a game run.
#[utoipa::path(
    post,
    path = "/api/runs",
    tag = "runs",
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
        (status = 409, description = "A run is on already", body = ErrorBody),
    )
)]
async fn start_run(State(s): State<AppState>) -> ApiResult {
    game(&s, GameCommand::StartRun).await
}
/// Pause the current run.
#[utoipa::path(
    post,
    path = "/api/runs/current/pause",
    tag = "runs",
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
        (status = 409, description = "No run is on, or it is paused already", body = ErrorBody),
    )
)]
async fn pause_run(State(s): State<AppState>) -> ApiResult {
    game(&s, GameCommand::PauseRun).await
}
/// Resume the current run.
#[utoipa::path(
    post,
    path = "/api/runs/current/resume",
    tag = "runs",
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
        (status = 409, description = "No run is on, or it is not paused", body = ErrorBody),
    )
)]
async fn resume_run(State(s): State<AppState>) -> ApiResult {
    game(&s, GameCommand::ResumeRun).await
}
/// End the current run.
#[utoipa::path(
    post,
    path = "/api/runs/current/end",
    tag = "runs",
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
        (status = 409, description = "No run is on", body = ErrorBody),
    )
)]
async fn end_run(State(s): State<AppState>) -> ApiResult {
    game(&s, GameCommand::EndRun).await
}
/// Reset the game to its start.
///
/// The level, counter and variables back to the rule file's, the timers gone.
#[utoipa::path(
    post,
    path = "/api/runs/reset",
    tag = "runs",
    responses(
        (status = 200, description = "The game's state: level, counter, variables, the run, timers", body = Object),
    )
)]
async fn reset(State(s): State<AppState>) -> ApiResult {
    game(&s, GameCommand::Reset).await
}

fn run_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::field("id", format!("{id:?} is not a run number")))
}

/// A game run.
#[utoipa::path(
    get,
    path = "/api/runs/{id}",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run's number, e.g. `1`"),
    ),
    responses(
        (status = 200, description = "The run", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
    )
)]
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

/// A run's timeline.
///
/// Its game events (state changes, rule firings, timers, the run's own, operator actions), each with its wall time and game time.
#[utoipa::path(
    get,
    path = "/api/runs/{id}/timeline",
    tag = "runs",
    params(
        ("id" = String, Path, description = "The run's number, e.g. `1`"),
        LimitQuery,
    ),
    responses(
        (status = 200, description = "`{\"run\", \"events\"}`: the events, oldest first, each with its game time", body = Object),
        (status = 400, description = "A field is wrong (`field` names it)", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
    )
)]
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
