//! The game layer: global state (alert level, counter, variables), rules as data, timers,
//! game runs, traces, dry runs and replays.
//!
//! - [`def`] — the rule file's shape (TOML, round-trips exactly).
//! - [`validate`] — a rule file checked as a whole and compiled into a [`RuleSet`]: indexed
//!   by trigger, expressions compiled, every name resolved; errors name the rule, the field
//!   and the reason.
//! - [`matcher`], [`template`], [`expr`] — what a rule's `if` and its templates see and do:
//!   pure functions of a [`View`].
//! - [`schedule`] — cron lines in the venue's time zone.
//! - [`engine`] — the changes on [`crate::core::State`]: a firing (match, actions, trace), the
//!   level/counter rules, variables, timers, runs, the per-level pushes. Every action goes
//!   through the core's one change path, so a firing is one unit: its trace event, the state
//!   it changed, the CUPs and cells it caused, all with the same [`Cause`].
//! - [`replay`] — a rule set run over recorded events, compared with what happened.
//!
//! Invariants:
//! - The game state lives in [`crate::core::State`] and changes only through
//!   [`crate::core::Hub::change`]; every change is an event with its actor and, when a rule
//!   caused it, the [`Cause`] (rule, firing, depth).
//! - Rules are evaluated only for their trigger's key (an index lookup per committed event);
//!   a chain of firings stops at the depth limit, a rule over its rate is paused; nothing
//!   here waits (webhooks go to a queue).
//! - A dry run is the same function on a copy of the state: its trace equals the live one.

pub mod def;
pub mod engine;
pub mod expr;
pub mod live;
pub mod matcher;
pub mod replay;
pub mod schedule;
pub mod template;
#[cfg(test)]
mod tests;
pub mod validate;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use self::def::RuleFile;
pub use self::validate::{RuleError, RuleSet};
pub use crate::core::event::Cause;

/// What a rule, a template and the console see of the game state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GameState {
    pub level: String,
    pub counter: i64,
    /// User variables by name (int, string, bool).
    pub vars: BTreeMap<String, Value>,
    /// The access list as it is now (the file's, plus codes rules added); stored in a row
    /// of its own.
    #[serde(skip)]
    pub access: Vec<def::AccessCode>,
    /// Named timers (durable).
    pub timers: BTreeMap<String, Timer>,
    /// The current game run, if any (ended runs move to `runs`).
    pub run: Option<Run>,
    /// Ended runs, newest last (the last [`RUNS_KEPT`]).
    pub runs: Vec<Run>,
    pub next_run: u64,
    /// Queued firings of rules in `queued` mode, by rule.
    #[serde(default)]
    pub queued: BTreeMap<String, VecDeque<Value>>,
    /// When the level's drift last moved the counter (Unix ms).
    #[serde(default)]
    pub drift_at: Option<i64>,
}

/// Ended runs kept in the state.
pub const RUNS_KEPT: usize = 50;
/// Timers at most (a rule that starts timers with generated names cannot fill memory).
pub const TIMERS_MAX: usize = 1000;
/// Firings waiting per rule in `queued` mode, and runs side by side in `parallel` mode.
pub const RUNS_PER_RULE: usize = 10;
/// Access codes at most.
pub const CODES_MAX: usize = 10_000;

/// A named timer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    pub name: String,
    /// Wall clock: Unix ms when it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<i64>,
    /// Game time: the game ms of run `run` at which it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_game_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u64>,
    pub secs: u64,
    /// Asked to count game time (started without a run, it counts wall time).
    #[serde(default)]
    pub game_time: bool,
    pub started_at: i64,
    /// Who started it: an operator's name, or `rule:<name>`.
    pub started_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// A `delay`ed rest of a rule's actions (not a named timer of the game).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<Continuation>,
}

/// The rest of a rule's actions after a `delay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Continuation {
    pub rule: String,
    /// Index of the next action.
    pub step: usize,
    /// The trigger the run started with (its view's `event`).
    pub trigger: Value,
    pub device: Option<String>,
    pub depth: u32,
}

/// A game run's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
    Ended,
}

/// A game run: start, pause, resume, end. Game time stops while paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: u64,
    pub state: RunState,
    pub started_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    /// Pauses: `[from, to]` Unix ms; `to` is `None` while paused.
    pub pauses: Vec<(i64, Option<i64>)>,
    /// Who started it.
    pub started_by: String,
    /// The state when it started (what a replay of the run starts from).
    pub initial: Snapshot,
}

impl Run {
    /// Game time (ms) at wall time `at`: time since the start, minus the pauses.
    pub fn game_ms(&self, at: i64) -> i64 {
        let end = self.ended_at.map_or(at, |e| e.min(at));
        let mut paused = 0;
        for (from, to) in &self.pauses {
            let to = to.unwrap_or(end).min(end);
            if to > *from {
                paused += to - from;
            }
        }
        (end - self.started_at - paused).max(0)
    }

    /// The wall time at which game time reaches `game_ms`, if the run keeps running from
    /// `now` (None while paused or ended).
    pub fn wall_at(&self, game_ms: i64, now: i64) -> Option<i64> {
        if self.state != RunState::Running {
            return None;
        }
        Some(now + (game_ms - self.game_ms(now)).max(0))
    }
}

/// The level, counter and variables: what a state change event and a run's start record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub level: String,
    pub counter: i64,
    pub vars: BTreeMap<String, Value>,
}

impl GameState {
    /// The state a rule set starts in (and a run's reset goes back to).
    pub fn initial(rules: &RuleSet) -> GameState {
        GameState {
            level: rules.initial_level().to_string(),
            counter: rules.file.game.initial_counter,
            vars: rules.initial_vars(),
            access: rules.file.access.clone(),
            timers: BTreeMap::new(),
            run: None,
            runs: Vec::new(),
            next_run: 1,
            queued: BTreeMap::new(),
            drift_at: None,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            level: self.level.clone(),
            counter: self.counter,
            vars: self.vars.clone(),
        }
    }

    /// `none`, `running`, `paused`.
    pub fn run_state(&self) -> &'static str {
        match self.run.as_ref().map(|r| r.state) {
            None | Some(RunState::Ended) => "none",
            Some(RunState::Running) => "running",
            Some(RunState::Paused) => "paused",
        }
    }

    /// The codes of the access list that apply to `device` (every code when `None`).
    pub fn codes_for(&self, device: Option<&str>) -> Vec<String> {
        self.access
            .iter()
            .filter(|c| {
                c.locks.is_empty() || device.is_some_and(|d| c.locks.iter().any(|l| l == d))
            })
            .map(|c| c.code.clone())
            .collect()
    }

    /// A lock's `acl`: code → the ids of the levels where it opens.
    pub fn acl_for(&self, device: Option<&str>, rules: &RuleSet) -> Value {
        let mut m = serde_json::Map::new();
        for c in &self.access {
            if !(c.locks.is_empty() || device.is_some_and(|d| c.locks.iter().any(|l| l == d))) {
                continue;
            }
            let ids: Vec<Value> = c
                .levels
                .iter()
                .filter_map(|l| rules.level(l).map(|d| json!(d.id)))
                .collect();
            m.insert(c.code.clone(), Value::Array(ids));
        }
        Value::Object(m)
    }
}

/// The game part of the core's state: the compiled rule set and the state it drives.
#[derive(Clone)]
pub struct Game {
    pub rules: Arc<RuleSet>,
    pub state: GameState,
    /// Firings not yet recorded as traces, by rule (for `GET /api/rules`): not stored.
    pub(crate) stats: BTreeMap<String, RuleStats>,
    /// The next firing id (starts at the start-up time in ms, so ids do not repeat).
    pub(crate) next_firing: u64,
    /// Per schedule rule: when it fires next (Unix ms). Not stored: a schedule missed while
    /// the server was down is not made up for (as cron).
    pub(crate) schedule_next: BTreeMap<String, i64>,
}

/// What the console shows of a rule besides its definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleStats {
    pub firings: u64,
    pub last_fired_at: Option<i64>,
    /// `ok`, or the first error of the last firing.
    pub last_outcome: Option<String>,
    /// Paused by the rate limit until this time (Unix ms).
    pub paused_until: Option<i64>,
    /// Rate-limit bucket: tokens left at `bucket_at`.
    #[serde(skip)]
    pub(crate) tokens: f64,
    #[serde(skip)]
    pub(crate) bucket_at: i64,
    pub skipped: u64,
}

impl Game {
    /// The game with no rules (a server that was never given a rule file).
    pub fn empty(now: i64) -> Game {
        let rules = Arc::new(RuleSet::empty());
        Game {
            state: GameState::initial(&rules),
            rules,
            stats: BTreeMap::new(),
            next_firing: u64::try_from(now).unwrap_or(1),
            schedule_next: BTreeMap::new(),
        }
    }
}
