//! Replay: a rule set run over the recorded events of a past time window or game run, against
//! the state as it was, compared with what happened.
//!
//! The recorded events are split in two. **Inputs** are what the rules did not cause: device
//! events, and operator changes to the game (a level set, a run paused). **Outcomes** are
//! what rules caused (`rule_fired` and everything with a `cause`). A replay starts from the
//! state recorded at the window's start (a run's initial state, or the newest state change
//! before the window), feeds the inputs in order to a scratch copy of the server (devices
//! and types as they are now, the game as it was), lets the replayed rules fire their
//! chains and timers, and lists where the replayed firings and state changes differ from the
//! recorded ones. Nothing it does leaves the scratch copy.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::engine::{CounterOp, Trigger};
use super::{GameState, Snapshot};
use crate::core::change::{Effects, State};
use crate::core::event::Event;
use crate::store::StoredEvent;

/// Recorded events that are neither inputs nor compared outcomes: the replay makes its own.
const SKIPPED: &[&str] = &[
    "timer_fired",
    "timer_started",
    "timer_cancelled",
    "rule_paused",
    "rule_chain_stopped",
    "webhook_result",
    "rules_imported",
    "rule_changed",
    "game_push_failed",
];

/// The replay's tick (ms).
const TICK_MS: i64 = 1000;
/// Ticks between two inputs at most (a day of quiet).
const TICKS_MAX: i64 = 86_400;

/// Differences reported at most.
pub const DIFFERENCES_MAX: usize = 500;

/// One thing that happened (recorded) or would have (replayed), for the comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct Happening {
    /// Unix ms of the input that led to it.
    pub at: i64,
    /// `rule_fired:<rule>` or `level:<from>-><to>` / `counter:<from>-><to>`.
    pub what: String,
}

/// A difference between the recorded and the replayed run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub at: String,
    /// `only_recorded` (it happened, the replayed rules would not have done it) or
    /// `only_replayed` (the replayed rules would have done it, it did not happen).
    pub side: &'static str,
    pub what: String,
    /// The input event that led to it.
    pub input: Value,
}

/// What a replay reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayOutcome {
    pub from: String,
    pub to: String,
    pub inputs: usize,
    pub recorded_firings: usize,
    pub replayed_firings: usize,
    pub differences: Vec<Difference>,
    /// More differences than [`DIFFERENCES_MAX`] were found.
    pub truncated: bool,
    /// The window held more than `live::REPLAY_EVENTS_MAX` recorded events: only the first
    /// ones were replayed (replay a shorter window).
    pub events_cut: bool,
    pub recorded_end: Snapshot,
    pub replayed_end: Snapshot,
    /// Firings per rule, recorded vs replayed.
    pub by_rule: BTreeMap<String, (usize, usize)>,
}

fn data(e: &StoredEvent) -> Value {
    serde_json::from_str(&e.record.data).unwrap_or(Value::Null)
}

fn caused(d: &Value) -> bool {
    d.get("cause").is_some_and(|c| !c.is_null())
}

/// The state change an event shows (`level:a->b`), if it is one.
fn change_of(name: &str, from: &Value, to: &Value) -> Option<String> {
    match name {
        "level" | "counter" => Some(format!("{name}:{}->{}", text(from), text(to))),
        _ => Some(format!("var.{name}:{}->{}", text(from), text(to))),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl State {
    /// Replays `events` (oldest first, the window's whole log) with this state's rule set,
    /// starting from `start`. Call on a copy.
    pub fn replay(
        &mut self,
        events: &[StoredEvent],
        start: &Snapshot,
        from: i64,
        to: i64,
    ) -> ReplayOutcome {
        // The game as it was.
        let init = GameState::initial(&self.game.rules);
        let s = &mut self.game.state;
        s.level = if self.game.rules.level(&start.level).is_some() {
            start.level.clone()
        } else {
            init.level
        };
        s.counter = start.counter;
        for (k, v) in &start.vars {
            if s.vars.contains_key(k) {
                s.vars.insert(k.clone(), v.clone());
            }
        }
        s.timers.clear();
        s.queued.clear();
        s.drift_at = None;
        self.game.stats.clear();
        self.game.schedule_next.clear();
        let mut recorded = Vec::new();
        let mut replayed = Vec::new();
        let mut inputs_at: BTreeMap<i64, Value> = BTreeMap::new();
        let mut inputs = 0;
        let mut recorded_end = start.clone();
        let mut by_rule: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut last_input_at = from;
        // How far the replay's time has gone (its ticks).
        let mut clock = from;
        // The last operator command replayed: its time and the seq its unit has reached.
        let mut unit: Option<(i64, i64)> = None;
        for e in events {
            let d = data(e);
            let r = &e.record;
            // A unit's events have consecutive seqs and one time. A device's event, or a
            // device coming or going, is another unit's (an input), whatever its time.
            let presence = r.kind == "online" || r.kind == "offline";
            let in_unit = match &mut unit {
                Some((at, last))
                    if e.seq == *last + 1
                        && r.at == *at
                        && r.actor != crate::core::event::DEVICE
                        && !presence =>
                {
                    *last = e.seq;
                    true
                }
                _ => {
                    unit = None;
                    false
                }
            };
            if r.kind == "state_changed"
                && let Some(s) = d
                    .get("state")
                    .and_then(|s| serde_json::from_value::<Snapshot>(s.clone()).ok())
            {
                recorded_end = s;
            }
            if caused(&d) || r.kind == "rule_fired" {
                if r.kind == "rule_fired" {
                    let rule = d["rule"].as_str().unwrap_or("").to_string();
                    by_rule.entry(rule.clone()).or_default().0 += 1;
                    recorded.push(Happening {
                        at: last_input_at,
                        what: format!("rule_fired:{rule}"),
                    });
                } else if r.kind == "state_changed"
                    && let Some(w) =
                        change_of(d["name"].as_str().unwrap_or(""), &d["from"], &d["to"])
                {
                    recorded.push(Happening {
                        at: last_input_at,
                        what: w,
                    });
                }
                continue;
            }
            // An input: time passes (timers, drift) up to it, then it happens.
            self.advance(&mut clock, r.at, last_input_at, &mut replayed, &mut by_rule);
            let mut fx = Effects::new(r.at);
            let input = json!({"kind": r.kind, "device": r.device, "actor": r.actor, "at": crate::clock::rfc3339(r.at), "data": d});
            let person =
                r.actor != crate::core::event::DEVICE && r.actor != crate::core::event::SERVER;
            let operator = r.kind == "state_changed" && person;
            if SKIPPED.contains(&r.kind.as_str()) || (r.kind == "state_changed" && !operator) {
                // The replay's own timers, drift and bookkeeping stand for these.
                continue;
            }
            // What an operator's game command did besides the change itself (the level push's
            // CUPs, …) is in its unit. Replaying the command does it again.
            if in_unit
                && r.kind != "state_changed"
                && !r.kind.starts_with("run_")
                && r.kind != "game_reset"
            {
                continue;
            }
            if operator || r.kind.starts_with("run_") || r.kind == "game_reset" {
                unit = Some((r.at, e.seq));
            }
            let applied = if operator {
                // An operator's change happened whatever the rules: apply it, then its chain.
                if !self.apply_operator(&mut fx, &d, &r.actor) {
                    continue;
                }
                true
            } else if r.kind.starts_with("run_") {
                self.apply_run(&mut fx, &r.kind, &r.actor);
                true
            } else if r.kind == "game_reset" {
                self.game_reset(&mut fx, &r.actor);
                true
            } else if let Some(t) =
                Trigger::from_parts(&r.kind, r.device.as_deref(), &r.actor, r.at, d.clone(), 0)
            {
                self.fire_chain(&mut fx, t, false);
                false
            } else {
                continue;
            };
            if applied {
                let produced: Vec<_> = fx.events.clone();
                for ev in produced {
                    if let Some(t) = Trigger::from_event(&ev) {
                        self.fire_chain(&mut fx, t, false);
                    }
                }
            }
            inputs += 1;
            last_input_at = r.at;
            inputs_at.insert(r.at, input);
            self.collect(&fx, r.at, &mut replayed, &mut by_rule);
        }
        self.advance(&mut clock, to, last_input_at, &mut replayed, &mut by_rule);
        // Compare as multisets per input time.
        let mut differences = Vec::new();
        let mut truncated = false;
        let mut rec = recorded.clone();
        let mut rep = replayed.clone();
        rec.sort();
        rep.sort();
        let (mut i, mut j) = (0, 0);
        let mut push = |h: &Happening, side: &'static str| {
            if differences.len() >= DIFFERENCES_MAX {
                truncated = true;
                return;
            }
            differences.push(Difference {
                at: crate::clock::rfc3339(h.at),
                side,
                what: h.what.clone(),
                input: inputs_at.get(&h.at).cloned().unwrap_or(Value::Null),
            });
        };
        while i < rec.len() || j < rep.len() {
            match (rec.get(i), rep.get(j)) {
                (Some(a), Some(b)) if a == b => {
                    i += 1;
                    j += 1;
                }
                (Some(a), Some(b)) if a < b => {
                    push(a, "only_recorded");
                    i += 1;
                }
                (Some(_), Some(b)) => {
                    push(b, "only_replayed");
                    j += 1;
                }
                (Some(a), None) => {
                    push(a, "only_recorded");
                    i += 1;
                }
                (None, Some(b)) => {
                    push(b, "only_replayed");
                    j += 1;
                }
                (None, None) => break,
            }
        }
        differences.sort_by(|a, b| a.at.cmp(&b.at));
        ReplayOutcome {
            from: crate::clock::rfc3339(from),
            to: crate::clock::rfc3339(to),
            inputs,
            recorded_firings: recorded
                .iter()
                .filter(|h| h.what.starts_with("rule_fired:"))
                .count(),
            replayed_firings: replayed
                .iter()
                .filter(|h| h.what.starts_with("rule_fired:"))
                .count(),
            differences,
            truncated,
            events_cut: false,
            recorded_end,
            replayed_end: self.game.state.snapshot(),
            by_rule,
        }
    }

    /// Lets time pass from `clock` to `until` in ticks of [`TICK_MS`] (as the live tick does,
    /// more coarsely): timers fire and the level drifts on time. A quiet stretch longer than
    /// [`TICKS_MAX`] ticks is jumped over at its end.
    fn advance(
        &mut self,
        clock: &mut i64,
        until: i64,
        at: i64,
        out: &mut Vec<Happening>,
        by_rule: &mut BTreeMap<String, (usize, usize)>,
    ) {
        if until - *clock > TICK_MS * TICKS_MAX {
            *clock = until - TICK_MS * TICKS_MAX;
        }
        while *clock < until {
            *clock = (*clock + TICK_MS).min(until);
            let mut fx = Effects::new(*clock);
            self.game_tick(&mut fx);
            self.collect(&fx, at, out, by_rule);
        }
    }

    fn collect(
        &self,
        fx: &Effects,
        at: i64,
        out: &mut Vec<Happening>,
        by_rule: &mut BTreeMap<String, (usize, usize)>,
    ) {
        for e in &fx.events {
            match &e.event {
                Event::RuleFired(t) => {
                    by_rule.entry(t.rule.clone()).or_default().1 += 1;
                    out.push(Happening {
                        at,
                        what: format!("rule_fired:{}", t.rule),
                    });
                }
                Event::StateChanged { name, from, to, .. } if e.cause.is_some() => {
                    if let Some(w) = change_of(name, from, to) {
                        out.push(Happening { at, what: w });
                    }
                }
                _ => {}
            }
        }
    }

    /// An operator's recorded state change, applied as the operator made it; `false` when it
    /// was a consequence of the operator's previous change (replaying that makes it).
    fn apply_operator(&mut self, fx: &mut Effects, d: &Value, actor: &str) -> bool {
        let name = d["name"].as_str().unwrap_or("");
        let reason = d["reason"].as_str().unwrap_or("");
        match name {
            // The level followed the operator's counter change.
            "level" if reason.starts_with("counter ") => false,
            "level" => {
                if let Some(l) = d["to"].as_str() {
                    let _ = self.game_set_level(fx, l, None, true, actor);
                }
                true
            }
            // An operator's level set reset the counter.
            "counter" if reason.starts_with("level set to") => false,
            "counter" => {
                // The operator's change as a difference, so that it applies to the replayed
                // counter as it did to the recorded one.
                match (d["from"].as_i64(), d["to"].as_i64()) {
                    (Some(from), Some(to)) => {
                        self.game_counter(fx, CounterOp::Add(to - from), None, actor);
                    }
                    (_, Some(to)) => {
                        self.game_counter(fx, CounterOp::Set(to), None, actor);
                    }
                    _ => {}
                }
                true
            }
            var => {
                let _ = self.game_set_var(fx, var, d["to"].clone(), None, actor);
                true
            }
        }
    }

    fn apply_run(&mut self, fx: &mut Effects, kind: &str, actor: &str) {
        let _ = match kind {
            "run_started" => self.game_start_run(fx, actor).map(drop),
            "run_paused" => self.game_pause_run(fx, true, actor).map(drop),
            "run_resumed" => self.game_pause_run(fx, false, actor).map(drop),
            "run_ended" => self.game_end_run(fx, actor).map(drop),
            _ => Ok(()),
        };
    }
}
