//! The game on a running hub: the engine task that fires rules for each committed event, the
//! tick (timers, drift, schedules), webhooks, and the operator's game commands, dry runs and
//! rule edits.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{broadcast, watch};

use super::def::{Rule, RuleFile};
use super::engine::{CounterOp, Fired, GameSnapshot, Trace, Trigger};
use super::validate::RuleError;
use crate::core::change::{Effects, State};
use crate::core::event::{Cause, Event, SERVER};
use crate::core::{CoreError, Hub};
use crate::gateway::webhook::{WebhookResult, Webhooks};

/// Firings one dry run may make at most (a chain of chains).
const DRY_RUN_FIRINGS: usize = 1000;

/// A sample for a dry run (`POST /api/rules/test`, `gatehouse rules test`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestInput {
    /// The event: `kind`, `device`, and its fields (`datahold`, `cell`, …), as rules see it.
    pub event: Value,
    /// The state to test against (default: the current one).
    #[serde(default)]
    pub state: Option<TestState>,
    /// A rule file to test instead of the loaded one (TOML text).
    #[serde(default)]
    pub rules: Option<String>,
}

/// The state a dry run starts from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestState {
    pub level: Option<String>,
    pub counter: Option<i64>,
    #[serde(default)]
    pub variables: Map<String, Value>,
}

/// What a dry run answers: every evaluation's trace (matched or not) and the effects the live
/// run would have had.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestOutcome {
    pub traces: Vec<Trace>,
    /// Topics of the packets it would publish, with payloads.
    pub publishes: Vec<(String, String)>,
    /// Kinds of the events it would record, in order.
    pub events: Vec<String>,
    pub state_after: super::Snapshot,
}

impl State {
    /// A trigger and the chain it starts, fired in order on this state (a dry run or a
    /// replay: what the live engine does across commits, done at once).
    pub fn fire_chain(&mut self, fx: &mut Effects, first: Trigger, keep_unmatched: bool) -> Fired {
        let mut out = Fired::default();
        let mut queue = VecDeque::from([first]);
        let mut firings = 0;
        while let Some(t) = queue.pop_front() {
            let start = fx.events.len();
            let fired = self.fire_keep(fx, &t, keep_unmatched);
            firings += fired.traces.len();
            out.traces.extend(fired.traces);
            out.logs.extend(fired.logs);
            if firings > DRY_RUN_FIRINGS {
                break;
            }
            for e in &fx.events[start..] {
                if let Some(next) = Trigger::from_event(e) {
                    queue.push_back(next);
                }
            }
        }
        out
    }

    /// Applies a dry run's sample state (no events: it is a copy).
    fn apply_test_state(&mut self, s: &TestState) -> Result<(), CoreError> {
        let rules = self.game.rules.clone();
        if let Some(l) = &s.level {
            if rules.level(l).is_none() {
                return Err(crate::core::invalid(
                    "state.level",
                    format!("unknown level {l:?}"),
                ));
            }
            self.game.state.level = l.clone();
        }
        if let Some(c) = s.counter {
            self.game.state.counter = c;
        }
        for (k, v) in &s.variables {
            let ty = rules.var_type(k).ok_or_else(|| {
                crate::core::invalid("state.variables", format!("unknown variable {k:?}"))
            })?;
            let v = super::engine::coerce(ty, v.clone())
                .map_err(|e| crate::core::invalid("state.variables", e))?;
            self.game.state.vars.insert(k.clone(), v);
        }
        Ok(())
    }

    /// A dry run on this state (call it on a copy): import `input.rules` if given, apply the
    /// sample state, fire the event's chain.
    pub fn rules_test(
        &mut self,
        fx: &mut Effects,
        input: &TestInput,
    ) -> Result<TestOutcome, CoreError> {
        if let Some(text) = &input.rules {
            let file = RuleFile::from_toml(text).map_err(|e| {
                CoreError::Rules(vec![RuleError {
                    rule: None,
                    field: "rules".into(),
                    reason: e,
                }])
            })?;
            self.game_import(fx, file, "dry-run")
                .map_err(CoreError::Rules)?;
        }
        if let Some(s) = &input.state {
            self.apply_test_state(s)?;
        }
        let trigger = sample_trigger(&input.event, fx.now)?;
        let start_events = fx.events.len();
        let start_pub = fx.publishes.len();
        let fired = self.fire_chain(fx, trigger, true);
        Ok(TestOutcome {
            traces: fired.traces,
            publishes: fx.publishes[start_pub..]
                .iter()
                .map(|p| (p.topic.clone(), p.payload.clone()))
                .collect(),
            events: fx.events[start_events..]
                .iter()
                .map(|e| e.event.kind())
                .collect(),
            state_after: self.game.state.snapshot(),
        })
    }
}

/// The trigger of a sample event (`{"kind": "info", "device": "pwr/all", "datahold": …}`).
pub fn sample_trigger(event: &Value, now: i64) -> Result<Trigger, CoreError> {
    let Value::Object(m) = event else {
        return Err(crate::core::invalid(
            "event",
            "an object with kind, device and the event's fields",
        ));
    };
    let kind = m.get("kind").and_then(Value::as_str).ok_or_else(|| {
        crate::core::invalid(
            "event.kind",
            "missing (info, sup, cell_opened, state_changed, timer_fired, …)",
        )
    })?;
    let device = m.get("device").and_then(Value::as_str);
    let actor = m
        .get("actor")
        .and_then(Value::as_str)
        .unwrap_or(crate::core::event::DEVICE);
    let at = m.get("at").and_then(Value::as_i64).unwrap_or(now);
    let mut data = m.clone();
    for k in ["kind", "device", "actor", "at"] {
        data.remove(k);
    }
    Trigger::from_parts(kind, device, actor, at, Value::Object(data), 0).ok_or_else(|| {
        crate::core::invalid(
            "event.kind",
            format!("{kind:?} is not something rules listen to"),
        )
    })
}

impl Hub {
    /// Starts the engine: a task that fires the rules for each committed event, in commit
    /// order, until `shutdown`. A lag (more than 8192 events behind) is logged and counted;
    /// the events it skipped fire nothing.
    pub fn start_engine(
        self: &Arc<Hub>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        let mut rx = self.subscribe();
        let report = {
            let hub = Arc::downgrade(self);
            Arc::new(move |r: WebhookResult| {
                if let Some(h) = hub.upgrade() {
                    h.webhook_result(r, crate::clock::now_ms());
                }
            })
        };
        let _ = self.webhooks.set(Webhooks::start(4, 1024, report));
        tokio::spawn(async move {
            loop {
                let e = tokio::select! {
                    e = rx.recv() => e,
                    _ = shutdown.wait_for(|&s| s) => return,
                };
                match e {
                    Ok(e) => hub.game_event(&e, crate::clock::now_ms()),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        hub.stats
                            .rules_lagged
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(
                            skipped = n,
                            "the rule engine fell behind the event stream: rules did not see these events"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }

    /// Fires the rules a committed event triggers.
    pub fn game_event(&self, e: &crate::core::RecordedEvent, now: i64) {
        // The engine's own bookkeeping triggers nothing: skip it before serializing it.
        if matches!(
            e.event,
            Event::RuleFired(_)
                | Event::RulePaused { .. }
                | Event::RuleChainStopped { .. }
                | Event::WebhookResult { .. }
                | Event::RulesImported { .. }
                | Event::RuleChanged { .. }
                | Event::TimerStarted { .. }
                | Event::TimerCancelled { .. }
                | Event::GamePushFailed { .. }
                | Event::TypeChanged { .. }
                | Event::Ping { .. }
        ) || self.lock().game.rules.rules.is_empty()
        {
            return;
        }
        let Some(t) = Trigger::from_event(e) else {
            return;
        };
        if let Ok((fired, _)) = self.change(now, |st, fx| {
            fx.wait = false;
            Ok(st.fire(fx, &t))
        }) {
            log(&fired);
        }
    }

    /// Timers, drift and schedules that are due.
    pub fn game_tick(&self, now: i64) {
        if let Ok((fired, _)) = self.change(now, |st, fx| {
            fx.wait = false;
            Ok(st.game_tick(fx))
        }) {
            log(&fired);
        }
    }

    fn webhook_result(&self, r: WebhookResult, now: i64) {
        let mut parts = r.tag.split('\u{1f}');
        let name = parts.next().unwrap_or("").to_string();
        let rule = parts.next().unwrap_or("").to_string();
        let firing = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let depth = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if r.error.is_some() || !r.status.is_some_and(|s| (200..300).contains(&s)) {
            tracing::warn!(webhook = %name, url = %r.url, status = ?r.status, error = ?r.error, "a webhook call failed");
        }
        let _ = self.change(now, |_, fx| {
            fx.wait = false;
            fx.cause = Some(Cause {
                rule: rule.clone(),
                firing,
                depth,
            });
            fx.event(
                None,
                SERVER,
                Event::WebhookResult {
                    name,
                    url: r.url,
                    attempts: r.attempts,
                    status: r.status,
                    error: r.error,
                    elapsed_ms: r.elapsed_ms,
                },
            );
            Ok(())
        });
    }

    // ---- reads ----

    pub fn game_snapshot(&self, now: i64) -> GameSnapshot {
        self.lock().game_snapshot(now)
    }

    /// The loaded rule file as the server writes it, and its hash.
    pub fn rules_export(&self) -> (String, String) {
        let st = self.lock();
        (st.game.rules.text.clone(), st.game.rules.hash.clone())
    }

    pub fn rules_file(&self) -> RuleFile {
        self.lock().game.rules.file.clone()
    }

    /// The rules with what the engine knows of each (firings, last outcome, paused).
    pub fn rules_list(&self) -> Vec<(Rule, super::RuleStats)> {
        let st = self.lock();
        st.game
            .rules
            .rules
            .iter()
            .map(|r| {
                (
                    r.def.clone(),
                    st.game.stats.get(&r.def.name).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    pub fn game_runs(&self, now: i64) -> Vec<super::engine::RunView> {
        self.lock().game_runs(now)
    }

    pub fn game_run(&self, id: u64) -> Option<super::Run> {
        self.lock().game_run(id)
    }

    pub fn timers(&self, now: i64) -> Vec<super::engine::TimerView> {
        self.lock().timer_views(now)
    }

    /// A dry run: the traces and effects of `input` on a copy of the state.
    pub fn rules_test(&self, input: &TestInput, now: i64) -> Result<TestOutcome, CoreError> {
        self.simulate(now, |st, fx| st.rules_test(fx, input))
            .map(|(o, _)| o)
    }

    /// Runs a game command (waits for its commit).
    pub async fn game(
        &self,
        cmd: GameCommand,
        actor: &str,
        now: i64,
    ) -> Result<GameSnapshot, CoreError> {
        let (fired, commit) = self.change(now, |st, fx| {
            let mut fired = Fired::default();
            match cmd {
                GameCommand::SetLevel { level, reason } => {
                    st.game_set_level(fx, &level, reason, true, actor)?
                }
                GameCommand::Counter { op, reason } => {
                    st.game_counter(fx, op, reason, actor);
                }
                GameCommand::SetVariable {
                    name,
                    value,
                    reason,
                } => st.game_set_var(fx, &name, value, reason, actor)?,
                GameCommand::StartRun => {
                    st.game_start_run(fx, actor)?;
                }
                GameCommand::PauseRun => {
                    st.game_pause_run(fx, true, actor)?;
                }
                GameCommand::ResumeRun => {
                    st.game_pause_run(fx, false, actor)?;
                }
                GameCommand::EndRun => {
                    st.game_end_run(fx, actor)?;
                }
                GameCommand::Reset => st.game_reset(fx, actor),
                GameCommand::StartTimer {
                    name,
                    secs,
                    game_time,
                } => st.game_start_timer(fx, &name, secs, game_time, actor)?,
                GameCommand::CancelTimer { name } => {
                    if !st.game_cancel_timer(fx, &name, &format!("cancelled by {actor}")) {
                        return Err(CoreError::NotFound(format!("no timer {name:?} is running")));
                    }
                }
                GameCommand::Import { file } => {
                    st.game_import(fx, *file, actor).map_err(CoreError::Rules)?;
                }
                GameCommand::PutRule { rule } => {
                    let mut file = st.game.rules.file.clone();
                    let name = rule.name.clone();
                    let change = match file.rules.iter_mut().find(|r| r.name == name) {
                        Some(r) => {
                            *r = *rule;
                            "replaced"
                        }
                        None => {
                            file.rules.push(*rule);
                            "created"
                        }
                    };
                    st.game_import(fx, file, actor).map_err(CoreError::Rules)?;
                    rule_changed(fx, &name, change, actor);
                }
                GameCommand::DeleteRule { name } => {
                    let mut file = st.game.rules.file.clone();
                    let before = file.rules.len();
                    file.rules.retain(|r| r.name != name);
                    if file.rules.len() == before {
                        return Err(CoreError::NotFound(format!("no rule {name:?}")));
                    }
                    st.game_import(fx, file, actor).map_err(CoreError::Rules)?;
                    rule_changed(fx, &name, "deleted", actor);
                }
            }
            fired.logs.clear();
            Ok((st.game_snapshot(now), fired))
        })?;
        if let Some(c) = commit {
            c.wait().await?;
        }
        Ok(fired.0)
    }
}

/// A single-rule edit is recorded as that, not as an import.
fn rule_changed(fx: &mut Effects, name: &str, change: &str, actor: &str) {
    if let Some(i) = fx
        .events
        .iter()
        .rposition(|e| matches!(e.event, Event::RulesImported { .. }))
    {
        fx.events.remove(i);
    }
    fx.event(
        None,
        actor,
        Event::RuleChanged {
            rule: name.to_string(),
            change: change.to_string(),
        },
    );
}

fn log(fired: &Fired) {
    for (rule, line) in &fired.logs {
        tracing::info!(rule = %rule, "{line}");
    }
}

/// An operator's change to the game (through `http`, or a test).
#[derive(Debug, Clone)]
pub enum GameCommand {
    SetLevel {
        level: String,
        reason: Option<String>,
    },
    Counter {
        op: CounterOp,
        reason: Option<String>,
    },
    SetVariable {
        name: String,
        value: Value,
        reason: Option<String>,
    },
    StartRun,
    PauseRun,
    ResumeRun,
    EndRun,
    Reset,
    StartTimer {
        name: String,
        secs: u64,
        game_time: bool,
    },
    CancelTimer {
        name: String,
    },
    Import {
        file: Box<RuleFile>,
    },
    PutRule {
        rule: Box<Rule>,
    },
    DeleteRule {
        name: String,
    },
}

/// What a replay runs over.
#[derive(Debug, Clone, Copy)]
pub enum Window {
    /// A recorded game run (from its start to its end, or now).
    Run(u64),
    /// Unix ms, `from <= at < to`.
    Between(i64, i64),
}

/// Recorded events one replay reads at most.
pub const REPLAY_EVENTS_MAX: usize = 50_000;

impl Hub {
    /// Replays `rules` (default: the loaded set) over the recorded events of `window`, on a
    /// copy of the state, and reports what would have differed.
    pub async fn replay(
        &self,
        rules: Option<RuleFile>,
        window: Window,
        now: i64,
    ) -> Result<super::replay::ReplayOutcome, CoreError> {
        let (from, to, start) = match window {
            Window::Run(id) => {
                let run = self.game_run(id).ok_or_else(|| {
                    CoreError::NotFound(format!("no run {id} (GET /api/runs lists them)"))
                })?;
                (
                    run.started_at,
                    run.ended_at.map_or(now + 1, |e| e + 1),
                    Some(run.initial),
                )
            }
            Window::Between(f, t) if f < t => (f, t, None),
            Window::Between(..) => {
                return Err(crate::core::invalid("from", "from must be before to"));
            }
        };
        let mut events = Vec::new();
        let mut after = 0;
        let mut cut = false;
        loop {
            let page = self.store().events_between(from, to, after, 5000).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.seq;
            events.extend(page);
            if events.len() >= REPLAY_EVENTS_MAX {
                events.truncate(REPLAY_EVENTS_MAX);
                cut = true;
                break;
            }
        }
        // A window starts in the state its first state change started from.
        let start = match start {
            Some(s) => s,
            None => events
                .iter()
                .filter(|e| e.record.kind == "state_changed")
                .find_map(|e| {
                    let d: Value = serde_json::from_str(&e.record.data).ok()?;
                    let mut s: super::Snapshot =
                        serde_json::from_value(d.get("state")?.clone()).ok()?;
                    let name = d.get("name")?.as_str()?;
                    let from = d.get("from")?.clone();
                    match name {
                        "level" => s.level = from.as_str()?.to_string(),
                        "counter" => s.counter = from.as_i64()?,
                        var => {
                            s.vars.insert(var.to_string(), from);
                        }
                    }
                    Some(s)
                })
                .unwrap_or_else(|| self.lock().game.state.snapshot()),
        };
        let (mut out, _) = self.simulate(now, |st, fx| {
            if let Some(file) = rules {
                st.game_import(fx, file, "replay")
                    .map_err(CoreError::Rules)?;
            }
            Ok(st.replay(&events, &start, from, to))
        })?;
        out.events_cut = cut;
        Ok(out)
    }
}
