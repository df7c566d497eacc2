//! The game's changes on [`State`]: rule firings with their traces, the level and counter
//! rules, variables, the per-level pushes, timers, runs, and the rule set itself.
//!
//! A firing is a function of the state and a [`Trigger`]: the conditions are tested on a
//! [`View`] built from both, then the actions run through the core's own changes (`engage`,
//! `set_config`, …) with [`Effects::cause`] set, so every event they record links back to the
//! rule and the firing; the firing's `rule_fired` event carries the [`Trace`]. The hub runs a
//! firing per committed event (live) or on a copy of the state (dry run, replay): the same
//! code, so the same trace.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::def::{Action, Amount, Mode, PushOn, RuleFile, VarType};
use super::expr::ExprInput;
use super::matcher::{self, Step, View};
use super::validate::{CompiledRule, RuleError, RuleSet};
use super::{Continuation, GameState, Run, RunState, Snapshot, Timer, template};
use crate::core::change::{Effects, State};
use crate::core::device::DeviceState;
use crate::core::event::{Cause, Event, RecordedEvent, SERVER};
use crate::core::skaben::{ConfigEdit, TypeKind};
use crate::core::{CoreError, EngageRequest, invalid};
use crate::store::Write;

/// Why a firing was started: the trigger event as rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// The index key (`event:info`, `state:level`, `timer:x`, `run:start`, `schedule`).
    pub key: String,
    /// `event` in the view: `kind`, `device`, `at`, `actor`, and the event's fields.
    pub event: Value,
    pub device: Option<String>,
    /// The depth of the event in its chain (0: not caused by a rule).
    pub depth: u32,
}

impl Trigger {
    /// The trigger a committed event is, if rules can listen to it.
    pub fn from_event(e: &RecordedEvent) -> Option<Trigger> {
        let (kind, data) = e.event.split();
        Trigger::from_parts(
            &kind,
            e.device.as_deref(),
            &e.actor,
            e.at,
            data,
            e.cause.as_ref().map_or(0, |c| c.depth),
        )
    }

    /// The same from a stored row (`kind`, the data object with its `cause`): for replays.
    pub fn from_parts(
        kind: &str,
        device: Option<&str>,
        actor: &str,
        at: i64,
        data: Value,
        depth: u32,
    ) -> Option<Trigger> {
        let Value::Object(mut m) = data else {
            return None;
        };
        m.remove("cause");
        let (key, kind) = match kind {
            "config_changed" if m.get("via").and_then(Value::as_str) == Some("sup") => {
                if let Some(keys) = m.remove("keys") {
                    m.insert("datahold".into(), keys);
                }
                ("event:sup".to_string(), "sup")
            }
            "state_changed" => (
                format!(
                    "state:{}",
                    m.get("name").and_then(Value::as_str).unwrap_or("")
                ),
                kind,
            ),
            "timer_fired" => (
                format!(
                    "timer:{}",
                    m.get("name").and_then(Value::as_str).unwrap_or("")
                ),
                kind,
            ),
            "run_started" => ("run:start".into(), kind),
            "run_paused" => ("run:pause".into(), kind),
            "run_resumed" => ("run:resume".into(), kind),
            "run_ended" => ("run:end".into(), kind),
            k if super::validate::TRIGGER_KINDS.contains(&k) => (format!("event:{k}"), kind),
            _ => return None,
        };
        let depth = if kind == "timer_fired" { 0 } else { depth };
        m.insert("kind".into(), json!(kind));
        m.insert("device".into(), json!(device));
        m.insert("actor".into(), json!(actor));
        m.insert("at".into(), json!(at));
        Some(Trigger {
            key,
            event: Value::Object(m),
            device: device.map(str::to_string),
            depth,
        })
    }
}

/// One action's outcome in a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResult {
    /// The action as written.
    pub action: Value,
    /// `ok`, `skipped`, or `error`.
    pub result: String,
    /// What it did (the rendered line, the CUP's topic, the new value) or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// The expression of a rule's `if`, as the trace shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExprStep {
    pub source: String,
    pub value: Value,
    pub passed: bool,
}

/// A firing's trace: what fired it, each condition and the expression with its value, each
/// action with its result, the state before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub rule: String,
    pub firing: u64,
    pub depth: u32,
    pub trigger: Value,
    pub conditions: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<ExprStep>,
    pub matched: bool,
    /// Why a firing that matched did nothing (`single` mode with a run in progress, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub actions: Vec<ActionResult>,
    /// The step a `delay`ed run went on from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<usize>,
    /// A timer or delay that fired late (the server was down): by how much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_ms: Option<i64>,
    pub before: Snapshot,
    pub after: Snapshot,
}

impl Trace {
    /// `ok`, or the first action error.
    pub fn outcome(&self) -> String {
        self.actions
            .iter()
            .find(|a| a.result == "error")
            .and_then(|a| a.detail.as_ref())
            .map_or_else(|| "ok".to_string(), |d| format!("error: {}", text_of(d)))
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// How long a rule over its rate stays paused (ms).
pub const PAUSE_MS: i64 = 10_000;

/// What one call of [`State::fire`] did: traces (matched or not, for dry runs) and the log
/// lines to write once the unit is submitted.
#[derive(Debug, Default)]
pub struct Fired {
    pub traces: Vec<Trace>,
    pub logs: Vec<(String, String)>,
    /// Keep the traces of evaluations that did not match (dry runs).
    pub keep_unmatched: bool,
}

/// An operator's (or a rule's) change to the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterOp {
    Add(i64),
    Set(i64),
}

/// The game state as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GameSnapshot {
    pub level: String,
    pub level_id: Option<i64>,
    pub counter: i64,
    pub ingame: bool,
    /// The counter value at which the level goes up next (ingame levels), if any.
    pub next_threshold: Option<i64>,
    pub variables: BTreeMap<String, Value>,
    pub levels: Vec<super::def::LevelDef>,
    pub run: Option<RunView>,
    pub timers: Vec<TimerView>,
    pub rules: usize,
    pub rules_hash: String,
}

/// A run as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunView {
    pub id: u64,
    pub state: RunState,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub game_ms: i64,
    pub started_by: String,
    pub pauses: Vec<(i64, Option<i64>)>,
    pub initial: Snapshot,
}

/// A timer as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimerView {
    pub name: String,
    pub game_time: bool,
    pub secs: u64,
    pub started_at: i64,
    pub started_by: String,
    /// Unix ms it fires at if nothing changes (a game-time timer: None while paused).
    pub due_at: Option<i64>,
    pub remaining_ms: Option<i64>,
    /// A rule's `delay` (not a named timer).
    pub continuation: Option<String>,
}

fn run_view(r: &Run, now: i64) -> RunView {
    RunView {
        id: r.id,
        state: r.state,
        started_at: r.started_at,
        ended_at: r.ended_at,
        game_ms: r.game_ms(now),
        started_by: r.started_by.clone(),
        pauses: r.pauses.clone(),
        initial: r.initial.clone(),
    }
}

impl State {
    // ---- reading ----

    pub fn game_snapshot(&self, now: i64) -> GameSnapshot {
        let g = &self.game;
        let rules = &g.rules;
        let level = rules.level(&g.state.level);
        let next_threshold = level.filter(|l| l.ingame).and_then(|l| {
            rules
                .file
                .levels
                .iter()
                .filter(|n| n.ingame && n.threshold > l.threshold)
                .map(|n| n.threshold)
                .min()
        });
        GameSnapshot {
            level: g.state.level.clone(),
            level_id: level.map(|l| l.id),
            counter: g.state.counter,
            ingame: level.is_some_and(|l| l.ingame),
            next_threshold,
            variables: g.state.vars.clone(),
            levels: rules.file.levels.clone(),
            run: g.state.run.as_ref().map(|r| run_view(r, now)),
            timers: self.timer_views(now),
            rules: rules.rules.len(),
            rules_hash: rules.hash.clone(),
        }
    }

    pub fn timer_views(&self, now: i64) -> Vec<TimerView> {
        let run = self.game.state.run.as_ref();
        self.game
            .state
            .timers
            .values()
            .map(|t| {
                let due_at = match (t.due_at, t.due_game_ms) {
                    (Some(at), _) => Some(at),
                    (None, Some(g)) => run
                        .filter(|r| Some(r.id) == t.run)
                        .and_then(|r| r.wall_at(g, now)),
                    _ => None,
                };
                TimerView {
                    name: t.name.clone(),
                    game_time: t.game_time,
                    secs: t.secs,
                    started_at: t.started_at,
                    started_by: t.started_by.clone(),
                    due_at,
                    remaining_ms: due_at.map(|d| (d - now).max(0)),
                    continuation: t.continuation.as_ref().map(|c| c.rule.clone()),
                }
            })
            .collect()
    }

    pub fn game_runs(&self, now: i64) -> Vec<RunView> {
        let s = &self.game.state;
        s.runs
            .iter()
            .chain(s.run.iter())
            .map(|r| run_view(r, now))
            .collect()
    }

    pub fn game_run(&self, id: u64) -> Option<Run> {
        let s = &self.game.state;
        s.runs
            .iter()
            .chain(s.run.iter())
            .find(|r| r.id == id)
            .cloned()
    }

    /// The view a rule's conditions see for `trigger`.
    pub fn view(&self, event: &Value, device: Option<&str>) -> View {
        let g = &self.game;
        let level = g.rules.level(&g.state.level);
        let dev = device.map_or(Value::Null, |key| self.device_view(key));
        json!({
            "event": event,
            "device": dev,
            "level": g.state.level,
            "level_id": level.map(|l| l.id),
            "counter": g.state.counter,
            "ingame": level.is_some_and(|l| l.ingame),
            "run": g.state.run_state(),
            "var": g.state.vars,
        })
    }

    fn device_view(&self, key: &str) -> Value {
        let (ty, id) = key.split_once('/').unwrap_or((key, ""));
        let Some(dev) = self.devices.get(key) else {
            return json!({"key": key, "type": ty, "id": id, "known": false});
        };
        let (config, reported) = match &dev.state {
            DeviceState::Prop(p) => {
                let config = self
                    .types
                    .get(&dev.kind)
                    .map_or(Value::Null, |t| p.effective(&t.def).value.clone());
                (config, Value::Object(p.reported.values.clone()))
            }
            DeviceState::Board(b) => (
                json!({"blocked": b.desired.blocked}),
                serde_json::to_value(&b.reported.message).unwrap_or(Value::Null),
            ),
        };
        json!({
            "key": key, "type": ty, "id": id, "known": true,
            "online": dev.presence.online, "name": dev.identity.name,
            "config": config, "reported": reported,
        })
    }

    // ---- firing ----

    /// Fires the rules that listen to `trigger`, in file order. Returns every evaluation's
    /// trace (the ones that did not match too: a dry run shows them) and the log lines.
    pub fn fire(&mut self, fx: &mut Effects, trigger: &Trigger) -> Fired {
        self.fire_keep(fx, trigger, false)
    }

    /// [`State::fire`]; with `keep_unmatched` the traces of rules whose conditions did not
    /// hold are returned too (a dry run shows why a rule did not fire; live, an evaluation
    /// that does not match costs its tests only).
    pub fn fire_keep(
        &mut self,
        fx: &mut Effects,
        trigger: &Trigger,
        keep_unmatched: bool,
    ) -> Fired {
        let mut out = Fired {
            keep_unmatched,
            ..Fired::default()
        };
        let rules = self.game.rules.clone();
        let candidates = rules.candidates(&trigger.key);
        if candidates.is_empty() {
            return out;
        }
        // Built once per trigger, again only after a rule's actions may have changed it.
        let mut view: Option<View> = None;
        for &i in candidates {
            let rule = &rules.rules[i];
            if !applies(rule, trigger) {
                continue;
            }
            let v = match view.take() {
                Some(v) => v,
                None => self.view(&trigger.event, trigger.device.as_deref()),
            };
            if !self.fire_rule(fx, &rules, rule, trigger, 0, None, &v, &mut out) {
                view = Some(v);
            }
        }
        out
    }

    /// Fires a rule with a schedule trigger (from the tick).
    fn fire_schedule(&mut self, fx: &mut Effects, idx: usize, line: &str, out: &mut Fired) {
        let rules = self.game.rules.clone();
        let Some(rule) = rules.rules.get(idx) else {
            return;
        };
        let trigger = Trigger {
            key: "schedule".into(),
            event: json!({"kind": "schedule", "schedule": line, "at": fx.now, "device": null, "actor": SERVER}),
            device: None,
            depth: 0,
        };
        let view = self.view(&trigger.event, None);
        self.fire_rule(fx, &rules, rule, &trigger, 0, None, &view, out);
    }

    /// Whether the rule may fire now (its rate), counting the firing.
    fn take_rule_token(&mut self, fx: &mut Effects, rule: &CompiledRule) -> bool {
        let now = fx.now;
        let st = self.game.stats.entry(rule.def.name.clone()).or_default();
        if st.paused_until.is_some_and(|u| now < u) {
            st.skipped += 1;
            return false;
        }
        let rate = f64::from(rule.rate);
        if st.bucket_at == 0 {
            st.tokens = rate;
            st.bucket_at = now;
        }
        let elapsed = (now - st.bucket_at).max(0) as f64 / 1000.0;
        st.tokens = (st.tokens + elapsed * rate).min(rate);
        st.bucket_at = now;
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            st.paused_until = None;
            return true;
        }
        let until = now + PAUSE_MS;
        st.paused_until = Some(until);
        st.skipped += 1;
        fx.event(
            None,
            SERVER,
            Event::RulePaused {
                rule: rule.def.name.clone(),
                per_sec: rule.rate,
                until: crate::clock::rfc3339(until),
            },
        );
        tracing::warn!(rule = %rule.def.name, per_sec = rule.rate, "rule over its firing rate: paused for 10 s");
        false
    }

    /// Evaluates one rule on `view` and, if it matches, runs it. Returns whether its actions
    /// ran (the state may have changed: the view is stale).
    #[allow(clippy::too_many_arguments)]
    fn fire_rule(
        &mut self,
        fx: &mut Effects,
        rules: &Arc<RuleSet>,
        rule: &CompiledRule,
        trigger: &Trigger,
        from_step: usize,
        late_ms: Option<i64>,
        view: &View,
        out: &mut Fired,
    ) -> bool {
        // The hot path: most evaluations do not match. Test first, without building a trace.
        if from_step == 0
            && !out.keep_unmatched
            && !rule.def.match_.0.iter().all(|(key, cond)| {
                key == "expr" || matcher::test(matcher::lookup(view, key), cond, rules)
            })
        {
            return false;
        }
        let name = rule.def.name.clone();
        let depth = trigger.depth + 1;
        // The conditions, unless this is the rest of a delayed run (they held when it began).
        let mut conditions = Vec::new();
        let mut expr_step = None;
        let mut matched = true;
        if from_step == 0 {
            for (key, cond) in &rule.def.match_.0 {
                if key == "expr" {
                    continue;
                }
                let value = matcher::lookup(view, key);
                let passed = matcher::test(value, cond, rules);
                conditions.push(Step {
                    key: key.clone(),
                    value: value.cloned().unwrap_or(Value::Null),
                    test: matcher::written(cond),
                    passed,
                });
                if !passed {
                    matched = false;
                    break;
                }
            }
            if matched && let Some(e) = &rule.expr {
                let codes = self.game.state.codes_for(trigger.device.as_deref());
                let empty = serde_json::Map::new();
                let input = ExprInput {
                    event: &view["event"],
                    device: &view["device"],
                    level: &self.game.state.level,
                    level_id: view["level_id"].as_i64().unwrap_or(0),
                    counter: self.game.state.counter,
                    ingame: view["ingame"].as_bool().unwrap_or(false),
                    run: self.game.state.run_state(),
                    var: view["var"].as_object().unwrap_or(&empty),
                    codes: &codes,
                };
                let (value, passed) = match rules.exprs.eval(e, &input) {
                    Ok(Value::Bool(b)) => (Value::Bool(b), b),
                    Ok(other) => (
                        json!({"error": format!("the expression gave {other}, not true/false")}),
                        false,
                    ),
                    Err(err) => (json!({"error": err}), false),
                };
                matched = passed;
                expr_step = Some(ExprStep {
                    source: e.source().to_string(),
                    value,
                    passed,
                });
            }
        }
        let before = self.game.state.snapshot();
        let firing = self.game.next_firing;
        let mut trace = Trace {
            rule: name.clone(),
            firing,
            depth,
            trigger: trigger.event.clone(),
            conditions,
            expr: expr_step,
            matched,
            skipped: None,
            actions: Vec::new(),
            resumed_at: (from_step > 0).then_some(from_step),
            late_ms,
            before: before.clone(),
            after: before,
        };
        if !matched {
            if out.keep_unmatched {
                out.traces.push(trace);
            }
            return false;
        }
        if depth > rules.file.game.max_depth {
            fx.event(
                trigger.device.clone(),
                SERVER,
                Event::RuleChainStopped {
                    rule: name.clone(),
                    depth,
                    limit: rules.file.game.max_depth,
                    trigger: trigger.event.clone(),
                },
            );
            tracing::warn!(rule = %name, depth, "a chain of rule firings reached the depth limit: stopped");
            trace.skipped = Some(format!(
                "the chain reached the depth limit ({})",
                rules.file.game.max_depth
            ));
            fx.counts.rule_chains_stopped += 1;
            out.traces.push(trace);
            return false;
        }
        if from_step == 0 {
            if !self.take_rule_token(fx, rule) {
                trace.skipped = Some("paused: over its firing rate".into());
                fx.counts.rule_firings_skipped += 1;
                out.traces.push(trace);
                return false;
            }
            if let Some(why) = self.mode_blocks(fx, rule, trigger) {
                trace.skipped = Some(why);
                fx.counts.rule_firings_skipped += 1;
                self.game.stats.entry(name.clone()).or_default().skipped += 1;
                out.traces.push(trace);
                return false;
            }
        }
        self.game.next_firing += 1;
        fx.counts.rule_firings += 1;
        let actor = format!("rule:{name}");
        let saved = fx.cause.replace(Cause {
            rule: name.clone(),
            firing,
            depth,
        });
        let at = fx.events.len();
        for (step, action) in rule.def.then.iter().enumerate().skip(from_step) {
            if let Action::Delay(d) = action {
                let r = self.delay(
                    fx,
                    rules,
                    rule,
                    trigger,
                    step + 1,
                    d.secs,
                    d.game_time,
                    depth,
                );
                trace.actions.push(r);
                break;
            }
            let r = self.act(fx, rules, &name, action, view, &actor, firing, out);
            trace.actions.push(r);
        }
        trace.after = self.game.state.snapshot();
        let st = self.game.stats.entry(name.clone()).or_default();
        st.firings += 1;
        st.last_fired_at = Some(fx.now);
        st.last_outcome = Some(trace.outcome());
        let rec = RecordedEvent {
            at: fx.now,
            device: trigger.device.clone(),
            actor: actor.clone(),
            event: Event::RuleFired(Box::new(trace.clone())),
            // The trace names its rule, firing and depth itself.
            cause: None,
        };
        fx.events.insert(at, rec);
        fx.cause = saved;
        // Each change of the game state wrote its row; a firing that changed nothing writes
        // none.
        out.traces.push(trace);
        true
    }

    /// Whether the rule's mode keeps this firing from running (`Some(why)`); a `restart`
    /// cancels the runs in progress, a `queued` firing waits.
    fn mode_blocks(
        &mut self,
        fx: &mut Effects,
        rule: &CompiledRule,
        trigger: &Trigger,
    ) -> Option<String> {
        let name = &rule.def.name;
        let running: Vec<String> = self
            .game
            .state
            .timers
            .values()
            .filter(|t| t.continuation.as_ref().is_some_and(|c| &c.rule == name))
            .map(|t| t.name.clone())
            .collect();
        if running.is_empty() {
            return None;
        }
        match rule.def.mode {
            Mode::Single => Some("single mode: a run of this rule is in progress".into()),
            Mode::Restart => {
                for t in running {
                    self.game.state.timers.remove(&t);
                    fx.event(
                        None,
                        SERVER,
                        Event::TimerCancelled {
                            name: t,
                            reason: "restart mode: the rule fired again".into(),
                        },
                    );
                }
                None
            }
            Mode::Queued => {
                let q = self.game.state.queued.entry(name.clone()).or_default();
                if q.len() >= super::RUNS_PER_RULE {
                    return Some(format!("queued mode: {} firings already wait", q.len()));
                }
                q.push_back(json!({"event": trigger.event, "device": trigger.device, "depth": trigger.depth}));
                self.game_row(fx);
                Some("queued: runs when the one in progress ends".into())
            }
            Mode::Parallel => (running.len() >= super::RUNS_PER_RULE)
                .then(|| format!("parallel mode: {} runs in progress", running.len())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn delay(
        &mut self,
        fx: &mut Effects,
        rules: &RuleSet,
        rule: &CompiledRule,
        trigger: &Trigger,
        step: usize,
        secs: u64,
        game_time: bool,
        depth: u32,
    ) -> ActionResult {
        let action = json!({"delay": {"secs": secs, "game_time": game_time}});
        if self.game.state.timers.len() >= super::TIMERS_MAX {
            return failed(
                action,
                format!(
                    "{} timers are running: the most there can be",
                    super::TIMERS_MAX
                ),
            );
        }
        let name = format!("{}#{}", rule.def.name, self.game.next_firing);
        let mut t = self.new_timer(
            fx.now,
            &name,
            secs,
            game_time,
            &format!("rule:{}", rule.def.name),
        );
        t.continuation = Some(Continuation {
            rule: rule.def.name.clone(),
            step,
            trigger: trigger.event.clone(),
            device: trigger.device.clone(),
            depth: depth.saturating_sub(1),
        });
        t.cause = fx.cause.clone();
        let _ = rules;
        self.game.state.timers.insert(name.clone(), t);
        ActionResult {
            action,
            result: "ok".into(),
            detail: Some(json!(format!("the rest runs in {secs} s ({name})"))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn act(
        &mut self,
        fx: &mut Effects,
        rules: &Arc<RuleSet>,
        rule: &str,
        action: &Action,
        view: &View,
        actor: &str,
        firing: u64,
        out: &mut Fired,
    ) -> ActionResult {
        let written = serde_json::to_value(action).unwrap_or(Value::Null);
        let device = view["device"]["key"].as_str().map(str::to_string);
        let acl_dev = device.clone();
        let state = self.game.state.clone_access();
        let acl = move || state.acl_for(acl_dev.as_deref(), rules);
        let r: Result<Option<Value>, String> = (|| {
            Ok(match action {
                Action::SetLevel(l) => {
                    self.game_set_level(fx, l, None, false, actor)
                        .map_err(|e| e.to_string())?;
                    None
                }
                Action::Counter(c) => {
                    let op = match (&c.add, c.set) {
                        (Some(Amount::Number(n)), _) => CounterOp::Add(*n),
                        (Some(Amount::Level(which)), _) => {
                            let l = rules.level(&self.game.state.level);
                            let n = match which.as_str() {
                                "failure" => l.map_or(0, |l| l.failure),
                                _ => l.map_or(0, |l| l.success),
                            };
                            CounterOp::Add(n)
                        }
                        (None, Some(s)) => CounterOp::Set(s),
                        (None, None) => return Err("no add or set".into()),
                    };
                    let to = self.game_counter(fx, op, c.reason.clone(), actor);
                    Some(json!(to))
                }
                Action::SetVar(sv) => {
                    let v = template::render(&sv.value, view, &acl)?;
                    self.game_set_var(fx, &sv.name, v.clone(), None, actor)
                        .map_err(|e| e.to_string())?;
                    Some(v)
                }
                Action::Push(p) => {
                    let patch = match &p.patch {
                        Some(t) => Some(template::render(t, view, &acl)?),
                        None => None,
                    };
                    if let Some(d) = &p.device {
                        let (ty, id) = d.split_once('/').unwrap_or((d, ""));
                        match &patch {
                            Some(body) => self
                                .set_config(
                                    fx,
                                    ty,
                                    id,
                                    ConfigEdit {
                                        body: body.clone(),
                                        merge: true,
                                        if_match: None,
                                    },
                                    actor,
                                )
                                .map_err(|e| e.to_string())?,
                            None => self
                                .push_device(fx, ty, id, actor)
                                .map_err(|e| e.to_string())?,
                        };
                        Some(json!(d))
                    } else if let Some(t) = &p.device_type {
                        let n = self.push_game_type(fx, rules, t, patch.as_ref(), actor)?;
                        Some(json!(format!("{t}: {n} pushed")))
                    } else {
                        let n =
                            self.push_level(fx, rules, &[PushOn::Level, PushOn::Counter], actor);
                        Some(json!(format!("{n} types pushed")))
                    }
                }
                Action::Engage(e) => {
                    let id = board_id(&e.device)?;
                    let code = match &e.code {
                        Some(c) => Some(template::text(c, view)?),
                        None => None,
                    };
                    let req = EngageRequest {
                        minutes: e.minutes,
                        expires_at: None,
                        code,
                        single_use: Some(e.single_use),
                    };
                    self.engage(fx, id, e.cell, req, actor)
                        .map_err(|e| e.to_string())?;
                    Some(json!(format!("{} cell {}", e.device, e.cell)))
                }
                Action::Release(c) => {
                    self.release(fx, board_id(&c.device)?, c.cell, actor)
                        .map_err(|e| e.to_string())?;
                    None
                }
                Action::Reset(d) => {
                    self.reset(fx, board_id(d)?, actor)
                        .map_err(|e| e.to_string())?;
                    None
                }
                Action::Block(d) => {
                    self.block(fx, board_id(d)?, true, actor)
                        .map_err(|e| e.to_string())?;
                    None
                }
                Action::Unblock(d) => {
                    self.block(fx, board_id(d)?, false, actor)
                        .map_err(|e| e.to_string())?;
                    None
                }
                Action::Publish(p) => {
                    let payload = template::render(&p.payload, view, &acl)?;
                    fx.publish(
                        p.topic.clone(),
                        payload.to_string(),
                        crate::bus::Qos::AtLeastOnce,
                    );
                    Some(json!(p.topic))
                }
                Action::StartTimer(t) => {
                    self.game_start_timer(fx, &t.name, t.secs, t.game_time, actor)
                        .map_err(|e| e.to_string())?;
                    None
                }
                Action::CancelTimer(n) => {
                    let was = self.game_cancel_timer(fx, n, &format!("cancelled by {actor}"));
                    Some(json!(if was { "cancelled" } else { "was not running" }))
                }
                Action::Log(s) => {
                    let line = template::text(s, view)?;
                    out.logs.push((rule.to_string(), line.clone()));
                    Some(json!(line))
                }
                Action::Webhook(w) => {
                    let def = rules.file.webhooks.get(&w.name).ok_or("unknown webhook")?;
                    let body = match &w.body {
                        Some(b) => template::render(b, view, &acl)?,
                        None => json!({"rule": rule, "firing": firing, "trigger": view["event"]}),
                    };
                    fx.webhooks.push(crate::gateway::webhook::WebhookCall {
                        url: def.url.clone(),
                        body,
                        timeout: std::time::Duration::from_secs(u64::from(
                            def.timeout_secs.unwrap_or(5),
                        )),
                        retries: w.retries,
                        tag: format!(
                            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
                            w.name,
                            rule,
                            firing,
                            fx.cause.as_ref().map_or(0, |c| c.depth)
                        ),
                    });
                    Some(json!(format!("queued to {}", def.url)))
                }
                Action::AddCode(a) => {
                    let code = template::text(&a.code, view)?;
                    if code.is_empty() || code.len() > 64 {
                        return Err(format!("{code:?}: a code is 1 to 64 characters"));
                    }
                    let s = &mut self.game.state;
                    if s.access.iter().any(|c| c.code == code) {
                        Some(json!(format!("{code} is already known")))
                    } else if s.access.len() >= super::CODES_MAX {
                        return Err(format!(
                            "the access list has {} codes: the most there can be",
                            super::CODES_MAX
                        ));
                    } else {
                        s.access.push(super::def::AccessCode {
                            code: code.clone(),
                            levels: a.levels.clone(),
                            locks: Vec::new(),
                            note: format!("added by {actor}"),
                        });
                        self.access_row(fx);
                        Some(json!(code))
                    }
                }
                Action::Delay(_) => None,
            })
        })();
        match r {
            Ok(detail) => ActionResult {
                action: written,
                result: "ok".into(),
                detail,
            },
            Err(e) => failed(written, e),
        }
    }

    // ---- the level, the counter, variables ----

    /// Sets the level. An operator's set resets the counter to the level's threshold (and
    /// pushes even if the level does not change); a rule's does not.
    pub fn game_set_level(
        &mut self,
        fx: &mut Effects,
        name: &str,
        reason: Option<String>,
        by_operator: bool,
        actor: &str,
    ) -> Result<(), CoreError> {
        let rules = self.game.rules.clone();
        let def = rules.level(name).ok_or_else(|| {
            let known: Vec<&str> = rules.file.levels.iter().map(|l| l.name.as_str()).collect();
            invalid(
                "level",
                format!("unknown level {name:?} (levels: {})", known.join(", ")),
            )
        })?;
        let from = self.game.state.level.clone();
        let changed = from != name;
        if changed {
            self.game.state.level = name.to_string();
            self.state_event(fx, "level", json!(from), json!(name), reason.clone(), actor);
        }
        let mut counter_changed = false;
        if by_operator && self.game.state.counter != def.threshold {
            let old = self.game.state.counter;
            self.game.state.counter = def.threshold;
            counter_changed = true;
            self.state_event(
                fx,
                "counter",
                json!(old),
                json!(def.threshold),
                Some(format!("level set to {name}")),
                actor,
            );
        }
        if changed || by_operator {
            self.push_level(fx, &rules, &[PushOn::Level, PushOn::Counter], actor);
        } else if counter_changed {
            self.push_level(fx, &rules, &[PushOn::Counter], actor);
        }
        self.game_row(fx);
        Ok(())
    }

    /// Changes the counter; while the level is ingame the level follows it. Returns the new
    /// value.
    pub fn game_counter(
        &mut self,
        fx: &mut Effects,
        op: CounterOp,
        reason: Option<String>,
        actor: &str,
    ) -> i64 {
        let rules = self.game.rules.clone();
        let old = self.game.state.counter;
        let new = match op {
            CounterOp::Add(n) => old.saturating_add(n),
            CounterOp::Set(n) => n,
        };
        if new == old {
            return new;
        }
        self.game.state.counter = new;
        self.state_event(fx, "counter", json!(old), json!(new), reason, actor);
        let level_changed = self.follow_counter(fx, &rules, actor);
        if level_changed {
            self.push_level(fx, &rules, &[PushOn::Level, PushOn::Counter], actor);
        } else {
            self.push_level(fx, &rules, &[PushOn::Counter], actor);
        }
        self.game_row(fx);
        new
    }

    /// Counter → level: while the level is ingame, the ingame level with the highest
    /// threshold ≤ counter (the lowest ingame level below them all).
    fn follow_counter(&mut self, fx: &mut Effects, rules: &RuleSet, actor: &str) -> bool {
        let Some(cur) = rules.level(&self.game.state.level) else {
            return false;
        };
        if !cur.ingame {
            return false;
        }
        let counter = self.game.state.counter;
        let ingame = rules.file.levels.iter().filter(|l| l.ingame);
        let target = ingame
            .clone()
            .filter(|l| l.threshold <= counter)
            .max_by_key(|l| l.threshold)
            .or_else(|| ingame.min_by_key(|l| l.threshold));
        let Some(target) = target else {
            return false;
        };
        if target.name == cur.name {
            return false;
        }
        let from = std::mem::replace(&mut self.game.state.level, target.name.clone());
        let to = target.name.clone();
        self.state_event(
            fx,
            "level",
            json!(from),
            json!(to),
            Some(format!("counter {counter}")),
            actor,
        );
        true
    }

    pub fn game_set_var(
        &mut self,
        fx: &mut Effects,
        name: &str,
        value: Value,
        reason: Option<String>,
        actor: &str,
    ) -> Result<(), CoreError> {
        let rules = self.game.rules.clone();
        let ty = rules
            .var_type(name)
            .ok_or_else(|| CoreError::NotFound(format!("no variable {name:?} in the rule set")))?;
        let value = coerce(ty, value).map_err(|e| invalid("value", e))?;
        let old = self
            .game
            .state
            .vars
            .get(name)
            .cloned()
            .unwrap_or(Value::Null);
        if old == value {
            return Ok(());
        }
        self.game.state.vars.insert(name.to_string(), value.clone());
        self.state_event(fx, name, old, value, reason, actor);
        self.game_row(fx);
        Ok(())
    }

    fn state_event(
        &mut self,
        fx: &mut Effects,
        name: &str,
        from: Value,
        to: Value,
        reason: Option<String>,
        actor: &str,
    ) {
        fx.event(
            None,
            actor,
            Event::StateChanged {
                name: name.to_string(),
                from,
                to,
                reason: reason.map(|r| crate::core::clip_text(&r, 500)),
                state: self.game.state.snapshot(),
            },
        );
    }

    // ---- pushes ----

    /// Pushes every active type whose `push_on` shares one of `on`. Returns how many.
    pub fn push_level(
        &mut self,
        fx: &mut Effects,
        rules: &Arc<RuleSet>,
        on: &[PushOn],
        actor: &str,
    ) -> usize {
        let mut n = 0;
        for (ty, tg) in &rules.file.types {
            if !tg.push_on.iter().any(|p| on.contains(p)) {
                continue;
            }
            if !self.types.get(ty).is_some_and(|t| t.def.active) {
                continue;
            }
            if self.push_game_type(fx, rules, ty, None, actor).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// What the game says type `ty` should hold now: its level entry with the rendered
    /// template merged over it (and `extra`, a rendered patch).
    fn game_config(
        &self,
        rules: &RuleSet,
        ty: &str,
        device: Option<&str>,
        extra: Option<&Value>,
    ) -> Result<Value, String> {
        let tg = rules.file.types.get(ty);
        let level = &self.game.state.level;
        let mut cfg = tg.and_then(|t| t.levels.get(level)).cloned();
        let template = tg.and_then(|t| t.template.as_ref());
        if cfg.is_none() && template.is_none() && extra.is_none() {
            return Err(format!("no config for level {level:?}"));
        }
        let view = self.view(&Value::Null, device);
        let acl = || self.game.state.acl_for(device, rules);
        if let Some(c) = cfg.take() {
            cfg = Some(template::render(&c, &view, &acl)?);
        }
        let mut out = cfg.unwrap_or_else(|| json!({}));
        for t in [template, extra].into_iter().flatten() {
            let r = template::render(t, &view, &acl)?;
            if out.is_object() && r.is_object() {
                skaben::merge_patch(&mut out, &r);
            } else {
                out = r;
            }
        }
        Ok(out)
    }

    /// Pushes one type as the game says: a dumb type's config broadcast; each device of a
    /// smart type its patch. Returns the number of devices (or 1 for a broadcast).
    fn push_game_type(
        &mut self,
        fx: &mut Effects,
        rules: &Arc<RuleSet>,
        ty: &str,
        extra: Option<&Value>,
        actor: &str,
    ) -> Result<usize, String> {
        let Some(kind) = self.types.get(ty).map(|t| t.def.kind) else {
            return Err(format!("unknown type {ty:?}"));
        };
        let level = self.game.state.level.clone();
        if kind == TypeKind::Dumb {
            let cfg = match self.game_config(rules, ty, None, extra) {
                Ok(c) => c,
                Err(reason) => {
                    fx.event(
                        Some(format!("{ty}/all")),
                        actor,
                        Event::GamePushFailed {
                            device_type: ty.into(),
                            level,
                            reason: reason.clone(),
                        },
                    );
                    return Err(reason);
                }
            };
            return self
                .game_type_config(fx, ty, cfg, actor)
                .map(|_| 1)
                .map_err(|e| e.to_string());
        }
        let tg = rules.file.types.get(ty);
        let skip_key = tg.and_then(|t| t.override_key.clone());
        let except = tg.is_some_and(|t| t.override_except.contains(&level));
        let mut keys: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| d.kind == ty && d.prop().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        let mut n = 0;
        for key in keys {
            if let Some(k) = &skip_key
                && !except
                && self.device_view(&key)["config"][k.as_str()] == Value::Bool(true)
            {
                continue;
            }
            let patch = match self.game_config(rules, ty, Some(&key), extra) {
                Ok(p) => p,
                Err(reason) => {
                    fx.event(
                        Some(key.clone()),
                        actor,
                        Event::GamePushFailed {
                            device_type: ty.into(),
                            level: level.clone(),
                            reason,
                        },
                    );
                    continue;
                }
            };
            // Each key the game sets replaces the device's (an `acl` is the whole list, not
            // merged into the old one), and the device gets its whole config with `overwrite`:
            // a merge could never take a code out of a lock's list.
            let mut config = self.device_view(&key)["config"].clone();
            if !config.is_object() {
                config = json!({});
            }
            if let (Value::Object(c), Value::Object(p)) = (&mut config, patch) {
                c.extend(p);
            }
            let id = key.split_once('/').map_or("", |(_, id)| id).to_string();
            match self.set_config(
                fx,
                ty,
                &id,
                ConfigEdit {
                    body: config,
                    merge: false,
                    if_match: None,
                },
                actor,
            ) {
                Ok(_) => n += 1,
                Err(e) => fx.event(
                    Some(key.clone()),
                    actor,
                    Event::GamePushFailed {
                        device_type: ty.into(),
                        level: level.clone(),
                        reason: e.to_string(),
                    },
                ),
            }
        }
        Ok(n)
    }

    // ---- timers ----

    fn new_timer(&self, now: i64, name: &str, secs: u64, game_time: bool, by: &str) -> Timer {
        let ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let run = self
            .game
            .state
            .run
            .as_ref()
            .filter(|r| r.state != RunState::Ended);
        let (due_at, due_game_ms, run_id) = match (game_time, run) {
            (true, Some(r)) => (None, Some(r.game_ms(now) + ms), Some(r.id)),
            // Game time without a run: wall time (the run is what stops game time).
            _ => (Some(now.saturating_add(ms)), None, None),
        };
        Timer {
            name: name.to_string(),
            due_at,
            due_game_ms,
            run: run_id,
            secs,
            game_time,
            started_at: now,
            started_by: by.to_string(),
            cause: None,
            continuation: None,
        }
    }

    /// Starts (or restarts) a named timer.
    pub fn game_start_timer(
        &mut self,
        fx: &mut Effects,
        name: &str,
        secs: u64,
        game_time: bool,
        actor: &str,
    ) -> Result<(), CoreError> {
        if secs == 0 || secs > 7 * 24 * 3600 {
            return Err(invalid("secs", "1 to 604800 seconds (a week)"));
        }
        if !self.game.state.timers.contains_key(name)
            && self.game.state.timers.len() >= super::TIMERS_MAX
        {
            return Err(CoreError::Conflict(format!(
                "{} timers are running: the most there can be",
                super::TIMERS_MAX
            )));
        }
        let mut t = self.new_timer(fx.now, name, secs, game_time, actor);
        t.cause = fx.cause.clone();
        let due_at = t.due_at.map(crate::clock::rfc3339);
        self.game.state.timers.insert(name.to_string(), t);
        fx.event(
            None,
            actor,
            Event::TimerStarted {
                name: name.to_string(),
                secs,
                game_time,
                due_at,
            },
        );
        self.game_row(fx);
        Ok(())
    }

    /// Cancels a named timer; false if it was not running.
    pub fn game_cancel_timer(&mut self, fx: &mut Effects, name: &str, reason: &str) -> bool {
        if self.game.state.timers.remove(name).is_none() {
            return false;
        }
        fx.event(
            None,
            SERVER,
            Event::TimerCancelled {
                name: name.to_string(),
                reason: reason.to_string(),
            },
        );
        self.game_row(fx);
        true
    }

    /// Fires what is due: timers (late ones with their delay), `delay`ed runs, the level's
    /// drift, schedules. Call about every 250 ms.
    pub fn game_tick(&mut self, fx: &mut Effects) -> Fired {
        let now = fx.now;
        let mut out = Fired::default();
        let run = self.game.state.run.clone();
        let due: Vec<(String, i64)> = self
            .game
            .state
            .timers
            .values()
            .filter_map(|t| {
                let late = match (t.due_at, t.due_game_ms) {
                    (Some(at), _) => (now >= at).then_some(now - at),
                    (None, Some(g)) => run
                        .as_ref()
                        .filter(|r| Some(r.id) == t.run && r.state == RunState::Running)
                        .and_then(|r| {
                            let gm = r.game_ms(now);
                            (gm >= g).then_some(gm - g)
                        }),
                    _ => None,
                };
                late.map(|l| (t.name.clone(), l))
            })
            .collect();
        for (name, late) in due {
            let Some(t) = self.game.state.timers.remove(&name) else {
                continue;
            };
            self.game_row(fx);
            match t.continuation {
                Some(c) => self.resume(fx, c, late, &mut out),
                None => {
                    if late > 1000 {
                        tracing::info!(timer = %name, late_ms = late, "a timer fired late (the server was not running when it was due)");
                    }
                    fx.event(
                        None,
                        SERVER,
                        Event::TimerFired {
                            name,
                            late_ms: late,
                            started_by: t.started_by,
                        },
                    );
                }
            }
        }
        self.drift(fx);
        let rules = self.game.rules.clone();
        if rules.schedules.is_empty() {
            return out;
        }
        // The zone was checked when the file (or the flag) was given; an error here is a
        // zone that has gone from the system since, and the bundled database has them all.
        let Ok(tz) = super::schedule::zone(
            rules
                .file
                .game
                .timezone
                .as_deref()
                .or(self.cfg.timezone.as_deref()),
        ) else {
            return out;
        };
        for (idx, sched) in &rules.schedules {
            let name = &rules.rules[*idx].def.name;
            let next = *self
                .game
                .schedule_next
                .entry(name.clone())
                .or_insert_with(|| sched.next_after(now, &tz).unwrap_or(i64::MAX));
            if now >= next {
                self.game
                    .schedule_next
                    .insert(name.clone(), sched.next_after(now, &tz).unwrap_or(i64::MAX));
                self.fire_schedule(fx, *idx, sched.source(), &mut out);
            }
        }
        out
    }

    /// The rest of a delayed run; then the next queued firing of the rule, if any.
    fn resume(&mut self, fx: &mut Effects, c: Continuation, late: i64, out: &mut Fired) {
        let rules = self.game.rules.clone();
        let Some(rule) = rules.rule(&c.rule) else {
            return;
        };
        let trigger = Trigger {
            key: rule.key.clone(),
            event: c.trigger,
            device: c.device,
            depth: c.depth,
        };
        let view = self.view(&trigger.event, trigger.device.as_deref());
        self.fire_rule(
            fx,
            &rules,
            rule,
            &trigger,
            c.step,
            (late > 1000).then_some(late),
            &view,
            out,
        );
        let in_progress = self
            .game
            .state
            .timers
            .values()
            .any(|t| t.continuation.as_ref().is_some_and(|k| k.rule == c.rule));
        if !in_progress
            && let Some(next) = self
                .game
                .state
                .queued
                .get_mut(&c.rule)
                .and_then(|q| q.pop_front())
        {
            let trigger = Trigger {
                key: rule.key.clone(),
                event: next["event"].clone(),
                device: next["device"].as_str().map(str::to_string),
                depth: u32::try_from(next["depth"].as_u64().unwrap_or(0)).unwrap_or(0),
            };
            self.game_row(fx);
            let view = self.view(&trigger.event, trigger.device.as_deref());
            self.fire_rule(fx, &rules, rule, &trigger, 0, None, &view, out);
        }
    }

    /// The level's drift: every N s ±M, damped at the borders.
    fn drift(&mut self, fx: &mut Effects) {
        let rules = self.game.rules.clone();
        let Some(i) = rules.level_index(&self.game.state.level) else {
            return;
        };
        let cur = &rules.file.levels[i];
        let Some(d) = &cur.drift else {
            self.game.state.drift_at = None;
            return;
        };
        let now = fx.now;
        // Game time while a run is on (a pause stops the drift), else wall time.
        let clock = match &self.game.state.run {
            Some(r) if r.state == RunState::Running => r.game_ms(now),
            Some(r) if r.state == RunState::Paused => return,
            _ => now,
        };
        let Some(last) = self.game.state.drift_at else {
            self.game.state.drift_at = Some(clock);
            return;
        };
        let every = i64::from(d.every_secs) * 1000;
        if clock - last < every || clock < last {
            if clock < last {
                self.game.state.drift_at = Some(clock);
            }
            return;
        }
        self.game.state.drift_at = Some(clock);
        let counter = self.game.state.counter;
        let new = drift_step(&rules, i, counter, d.by);
        if new != counter {
            self.game_counter(
                fx,
                CounterOp::Set(new),
                Some(format!("drift {:+} at {}", d.by, cur.name)),
                SERVER,
            );
        }
    }

    // ---- runs ----

    pub fn game_start_run(&mut self, fx: &mut Effects, actor: &str) -> Result<u64, CoreError> {
        if let Some(r) = &self.game.state.run
            && r.state != RunState::Ended
        {
            return Err(CoreError::Conflict(
                format!("run {} is {:?}: end it first", r.id, r.state).to_lowercase(),
            ));
        }
        let id = self.game.state.next_run;
        self.game.state.next_run += 1;
        let initial = self.game.state.snapshot();
        self.game.state.run = Some(Run {
            id,
            state: RunState::Running,
            started_at: fx.now,
            ended_at: None,
            pauses: Vec::new(),
            started_by: actor.to_string(),
            initial: initial.clone(),
        });
        fx.event(None, actor, Event::RunStarted { run: id, initial });
        self.game_row(fx);
        Ok(id)
    }

    pub fn game_pause_run(
        &mut self,
        fx: &mut Effects,
        pause: bool,
        actor: &str,
    ) -> Result<u64, CoreError> {
        let now = fx.now;
        let r = self
            .game
            .state
            .run
            .as_mut()
            .filter(|r| r.state != RunState::Ended)
            .ok_or_else(|| CoreError::Conflict("no game run is on".into()))?;
        let (id, game_ms) = (r.id, r.game_ms(now));
        match (pause, r.state) {
            (true, RunState::Running) => {
                r.state = RunState::Paused;
                r.pauses.push((now, None));
                fx.event(None, actor, Event::RunPaused { run: id, game_ms });
            }
            (false, RunState::Paused) => {
                r.state = RunState::Running;
                if let Some(p) = r.pauses.last_mut() {
                    p.1 = Some(now);
                }
                fx.event(None, actor, Event::RunResumed { run: id, game_ms });
            }
            (true, _) => return Err(CoreError::Conflict(format!("run {id} is already paused"))),
            (false, _) => return Err(CoreError::Conflict(format!("run {id} is not paused"))),
        }
        self.game_row(fx);
        Ok(id)
    }

    pub fn game_end_run(&mut self, fx: &mut Effects, actor: &str) -> Result<u64, CoreError> {
        let now = fx.now;
        let mut r = self
            .game
            .state
            .run
            .take()
            .filter(|r| r.state != RunState::Ended)
            .ok_or_else(|| CoreError::Conflict("no game run is on".into()))?;
        if let Some(p) = r.pauses.last_mut()
            && p.1.is_none()
        {
            p.1 = Some(now);
        }
        r.state = RunState::Ended;
        r.ended_at = Some(now);
        let (id, game_ms) = (r.id, r.game_ms(now));
        let game_timers: Vec<String> = self
            .game
            .state
            .timers
            .values()
            .filter(|t| t.run == Some(id))
            .map(|t| t.name.clone())
            .collect();
        for t in game_timers {
            self.game_cancel_timer(fx, &t, "the game run ended");
        }
        self.game.state.runs.push(r);
        if self.game.state.runs.len() > super::RUNS_KEPT {
            self.game.state.runs.remove(0);
        }
        fx.event(None, actor, Event::RunEnded { run: id, game_ms });
        self.game_row(fx);
        Ok(id)
    }

    /// Back to the initial state: level, counter, variables, access list; every timer
    /// cancelled; every type pushed for the initial level.
    pub fn game_reset(&mut self, fx: &mut Effects, actor: &str) {
        let rules = self.game.rules.clone();
        let names: Vec<String> = self.game.state.timers.keys().cloned().collect();
        for n in names {
            self.game_cancel_timer(fx, &n, "game reset");
        }
        let init = GameState::initial(&rules);
        let s = &mut self.game.state;
        s.level = init.level;
        s.counter = init.counter;
        s.vars = init.vars;
        s.access = init.access;
        s.queued.clear();
        s.drift_at = None;
        fx.event(
            None,
            actor,
            Event::GameReset {
                state: self.game.state.snapshot(),
            },
        );
        self.push_level(fx, &rules, &[PushOn::Level, PushOn::Counter], actor);
        self.game_row(fx);
        self.access_row(fx);
    }

    // ---- the rule set ----

    /// The server's device type names (what a rule file may name).
    pub fn type_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.types.keys().cloned().collect();
        v.sort();
        v
    }

    /// Replaces the rule set and the state definitions with `file`, checked as a whole.
    /// Values of variables and the level that still exist are kept.
    pub fn game_import(
        &mut self,
        fx: &mut Effects,
        file: RuleFile,
        actor: &str,
    ) -> Result<Arc<RuleSet>, Vec<RuleError>> {
        let types = self.type_names();
        let refs: Vec<&str> = types.iter().map(String::as_str).collect();
        let rules = Arc::new(RuleSet::compile(file, &refs)?);
        let init = GameState::initial(&rules);
        let fresh =
            self.game.rules.file.levels.is_empty() && self.game.rules.file.variables.is_empty();
        let s = &mut self.game.state;
        if fresh {
            // The first rule file of a server: the game starts in its initial state.
            s.level = init.level.clone();
            s.counter = init.counter;
        }
        if rules.level(&s.level).is_none() {
            s.level = init.level;
        }
        let mut vars = init.vars;
        for (k, v) in vars.iter_mut() {
            if let Some(old) = s.vars.get(k)
                && rules
                    .var_type(k)
                    .is_some_and(|t| coerce(t, old.clone()).is_ok())
            {
                *v = old.clone();
            }
        }
        s.vars = vars;
        // The file's codes, and the cards rules registered since (a new card at white).
        let mut access = init.access;
        for c in std::mem::take(&mut s.access) {
            if c.note.starts_with("added by rule:") && !access.iter().any(|a| a.code == c.code) {
                access.push(c);
            }
        }
        s.access = access;
        s.queued.clear();
        self.game.rules = rules.clone();
        self.game.schedule_next.clear();
        self.game.stats.retain(|k, _| rules.rule(k).is_some());
        fx.event(
            None,
            actor,
            Event::RulesImported {
                rules: rules.rules.len(),
                levels: rules.file.levels.len(),
                hash: rules.hash.clone(),
            },
        );
        fx.writes.push(Write::Game {
            key: "rules".into(),
            data: rules.text.clone(),
        });
        self.game_row(fx);
        self.access_row(fx);
        Ok(rules)
    }

    /// Writes the access list's row (apart from the state: it can hold thousands of codes and
    /// changes far less often than the counter).
    pub(crate) fn access_row(&self, fx: &mut Effects) {
        fx.writes
            .retain(|w| !matches!(w, Write::Game { key, .. } if key == "access"));
        fx.writes.push(Write::Game {
            key: "access".into(),
            data: serde_json::to_string(&self.game.state.access).unwrap_or_default(),
        });
    }

    /// Writes the game state row (once per unit: a later write replaces an earlier one).
    pub(crate) fn game_row(&self, fx: &mut Effects) {
        fx.writes
            .retain(|w| !matches!(w, Write::Game { key, .. } if key == "state"));
        fx.writes.push(Write::Game {
            key: "state".into(),
            data: serde_json::to_string(&self.game.state).unwrap_or_default(),
        });
    }

    /// Loads the stored rule set and state (at start-up). A stored rule set that no longer
    /// compiles is an error the caller reports.
    pub fn game_load(
        &mut self,
        rules_text: Option<&str>,
        state_json: Option<&str>,
        access_json: Option<&str>,
    ) -> Result<(), String> {
        if let Some(text) = rules_text {
            let rules = RuleSet::from_toml(text, &[]).map_err(|e| {
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            self.game.rules = Arc::new(rules);
        }
        self.game.state = match state_json {
            Some(j) => {
                serde_json::from_str(j).map_err(|e| format!("the stored game state: {e}"))?
            }
            None => GameState::initial(&self.game.rules),
        };
        self.game.state.access = match access_json {
            Some(j) => {
                serde_json::from_str(j).map_err(|e| format!("the stored access list: {e}"))?
            }
            None => self.game.rules.file.access.clone(),
        };
        Ok(())
    }
}

impl GameState {
    /// A copy of what rendering an `acl` needs (the access list), so a template can render it
    /// while the state is borrowed mutably.
    fn clone_access(&self) -> GameState {
        GameState {
            level: String::new(),
            counter: 0,
            vars: BTreeMap::new(),
            access: self.access.clone(),
            timers: BTreeMap::new(),
            run: None,
            runs: Vec::new(),
            next_run: 0,
            queued: BTreeMap::new(),
            drift_at: None,
        }
    }
}

/// A drift step from `counter` at level `i`, damped at the borders: up to the next level's
/// threshold + 30 when it is ingame (so the crossing happens, then the game holds); down to
/// this level's threshold − 30 when the level before is ingame; clamped at the border of a
/// neighbour that is not ingame. A counter already past the stop is left alone.
pub fn drift_step(rules: &RuleSet, i: usize, counter: i64, by: i64) -> i64 {
    let levels = &rules.file.levels;
    let cur = &levels[i];
    if !cur.ingame {
        return counter.saturating_add(by);
    }
    if by > 0 {
        let stop = match levels.get(i + 1) {
            Some(n) if n.ingame => Some(n.threshold + 30),
            // The last ingame range is open-ended.
            _ => None,
        };
        match stop {
            Some(s) if counter >= s => counter,
            Some(s) => counter.saturating_add(by).min(s),
            None => counter.saturating_add(by),
        }
    } else {
        let stop = match i.checked_sub(1).and_then(|p| levels.get(p)) {
            Some(p) if p.ingame => cur.threshold - 30,
            _ => cur.threshold,
        };
        if counter <= stop {
            counter
        } else {
            counter.saturating_add(by).max(stop)
        }
    }
}

fn applies(rule: &CompiledRule, t: &Trigger) -> bool {
    let w = &rule.def.when;
    if let Some(d) = &w.device
        && t.device.as_deref() != Some(d.as_str())
    {
        return false;
    }
    if let Some(ty) = &w.device_type
        && t.device
            .as_deref()
            .and_then(|d| d.split_once('/'))
            .map(|(k, _)| k)
            != Some(ty.as_str())
    {
        return false;
    }
    true
}

fn failed(action: Value, e: impl Into<String>) -> ActionResult {
    ActionResult {
        action,
        result: "error".into(),
        detail: Some(Value::String(e.into())),
    }
}

fn board_id(key: &str) -> Result<&str, String> {
    key.strip_prefix("acon/")
        .ok_or_else(|| format!("{key:?} is not a board (acon/<id>)"))
}

/// A variable's value in its type (a rendered template is a string: `"12"` for an int).
pub fn coerce(ty: VarType, v: Value) -> Result<Value, String> {
    match (ty, v) {
        (VarType::Int, Value::Number(n)) if n.is_i64() => Ok(Value::Number(n)),
        (VarType::Int, Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(|n| json!(n))
            .map_err(|_| format!("{s:?} is not an integer")),
        (VarType::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
        (VarType::Bool, Value::String(s)) if s == "true" || s == "false" => {
            Ok(Value::Bool(s == "true"))
        }
        (VarType::String, Value::String(s)) => Ok(Value::String(crate::core::clip_text(&s, 1000))),
        (ty, v) => Err(format!("{v} is not a {ty:?}").to_lowercase()),
    }
}
