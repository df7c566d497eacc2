//! The rule file: a game's definitions and rules as data (`presets/skaben.toml`).
//!
//! This module is only the shape of the file (serde): what each part means is documented on
//! its type, and `docs/scenarios.md` teaches it. Checking a file as a whole (unknown levels,
//! variables, types, bad expressions) is [`super::validate`]; what the engine makes of it is
//! [`super::engine`].
//!
//! The file round-trips exactly: [`RuleFile::to_toml`] of a parsed file, parsed again and
//! written again, gives the same bytes (maps are ordered, optional parts left out when unset),
//! so a game's rules can live in version control and the server's export diffs cleanly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The file format version this server reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// A whole rule file. `POST /api/rules/import` replaces the server's rule set and state
/// definitions with one of these, checked as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    #[serde(default, skip_serializing_if = "GameSettings::is_default")]
    pub game: GameSettings,
    /// The alert levels in play order (white → blue → cyan → green ⇄ yellow ⇄ red → black
    /// in the SKABEN preset). May be empty: a rule set without levels has no level or counter
    /// rules (the counter still exists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<LevelDef>,
    /// User-defined state variables that rules read and set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<VariableDef>,
    /// Per SKABEN device type: what a level (or counter) change pushes to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub types: BTreeMap<String, TypeGame>,
    /// The access list: which codes open locks at which levels (a lock's `acl`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessCode>,
    /// HTTP webhooks rules may call, by name. Only an admin's import sets these URLs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub webhooks: BTreeMap<String, WebhookDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// Settings of the whole game.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GameSettings {
    /// The level at start and after a game run's reset; default: the first level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_level: Option<String>,
    /// The counter at start and after a reset (SKABEN: −1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub initial_counter: i64,
    /// A chain of rule firings (a rule's action causing an event that fires a rule, …) stops
    /// at this depth; the trace says where. Default 8.
    #[serde(default = "default_depth", skip_serializing_if = "is_default_depth")]
    pub max_depth: u32,
    /// Firings per second a rule may make before it is paused (and reported); a rule may set
    /// its own. Default 20.
    #[serde(default = "default_rate", skip_serializing_if = "is_default_rate")]
    pub max_firings_per_sec: u32,
    /// The venue's time zone (IANA name, e.g. `Europe/Moscow`) for schedules; default the
    /// server's `--timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

impl Default for GameSettings {
    fn default() -> Self {
        GameSettings {
            initial_level: None,
            initial_counter: 0,
            max_depth: default_depth(),
            max_firings_per_sec: default_rate(),
            timezone: None,
        }
    }
}

impl GameSettings {
    fn is_default(&self) -> bool {
        *self == GameSettings::default()
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}
fn default_depth() -> u32 {
    8
}
fn is_default_depth(n: &u32) -> bool {
    *n == default_depth()
}
fn default_rate() -> u32 {
    20
}
fn is_default_rate(n: &u32) -> bool {
    *n == default_rate()
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_true(b: &bool) -> bool {
    *b
}
fn yes() -> bool {
    true
}

/// One alert level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelDef {
    /// What rules, files and the API call it (`green`).
    pub name: String,
    /// The number devices see (a lock's `alert`, the level lists of its `acl`): part of the
    /// wire format, so pinned here, not derived from the order.
    pub id: i64,
    /// An ingame level follows the counter (counter → level); the others ignore it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ingame: bool,
    /// Ingame: the level holds from this counter value up to the next ingame level's
    /// threshold (the last range is open-ended). An operator setting this level resets the
    /// counter to it.
    pub threshold: i64,
    /// Counter change on a player's failure at this level (`{ counter = { add = "failure" } }`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failure: i64,
    /// Counter change on a player's success at this level (usually negative).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub success: i64,
    /// The counter drifts while this level holds (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    /// The console shows the level in this colour (CSS colour), default its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<String>,
}

/// Every `every_secs` seconds (of game time while a run is on, else wall time; not while
/// paused) the counter moves by `by`, at ingame levels damped at the borders: going up it
/// stops at the next level's threshold + 30 when that level is ingame (so the crossing
/// happens, then the game holds) and does not stop when it is not (the last ingame range is
/// open-ended); going down it stops at this level's threshold − 30 when the level before is
/// ingame, else at the threshold itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drift {
    pub every_secs: u32,
    pub by: i64,
}

/// The type of a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    Int,
    String,
    Bool,
}

/// A user-defined state variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: VarType,
    /// The value at start and after a reset (of `type`).
    pub initial: Value,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// When a type gets pushed by the game.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushOn {
    /// Every level change.
    Level,
    /// Every counter change (the alert scale).
    Counter,
}

/// What the game pushes to one SKABEN type.
///
/// - A **dumb** type gets one config for the whole type, broadcast to `<type>/all/cup`: its
///   `levels` entry for the new level, with `template` (rendered) merged over it. A level
///   without an entry and without a template is an error event, nothing sent.
/// - A **smart** type's devices each get a merge patch of their own config: the `levels`
///   entry for the new level with the rendered `template` merged over it, so the push carries
///   what applies now (the device page shows the result).
///
/// A template is JSON where a string may hold placeholders — `{level}`, `{level_id}`,
/// `{counter}`, `{var.NAME}`, `{device}`, `{device.id}` — rendered as text (`"{level_id}"` →
/// `"4"`), and a table `{ "$" = "counter" }` is replaced by the value itself (a number, the
/// access list for `{ "$" = "acl" }`). See [`super::template`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeGame {
    /// Default `["level"]`.
    #[serde(
        default = "default_push_on",
        skip_serializing_if = "is_default_push_on"
    )]
    pub push_on: Vec<PushOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Value>,
    /// Per level name: the config (dumb) or the settings (smart) at that level.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub levels: BTreeMap<String, Value>,
    /// Smart types: a device whose config has this key `true` (a manual override) is skipped,
    /// except at the levels in `override_except`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub override_except: Vec<String>,
}

fn default_push_on() -> Vec<PushOn> {
    vec![PushOn::Level]
}
fn is_default_push_on(v: &[PushOn]) -> bool {
    v == [PushOn::Level]
}

/// A code of the access list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessCode {
    pub code: String,
    /// Level names at which the code opens.
    #[serde(default)]
    pub levels: Vec<String>,
    /// Locks (`lock/<id>`) the code is for; empty: every lock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// An HTTP webhook (plain `http://`; the engine never waits for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDef {
    pub url: String,
    /// Per attempt; default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
}

/// What a rule does when it fires while a run of it is still in progress (a run is in
/// progress from its firing until its last `delay`ed action has run), as Home Assistant's
/// automation modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The new firing is dropped (traced as skipped).
    #[default]
    Single,
    /// The run in progress is cancelled and the new one starts.
    Restart,
    /// The new run waits until the one in progress ends (at most 10 waiting).
    Queued,
    /// Runs go side by side (at most 10).
    Parallel,
}

impl Mode {
    fn is_default(&self) -> bool {
        *self == Mode::Single
    }
}

/// A rule: when (a trigger), if (a match), then (actions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique; `[a-z0-9_-]`, at most 64 bytes.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Mode::is_default")]
    pub mode: Mode,
    /// Overrides [`GameSettings::max_firings_per_sec`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_firings_per_sec: Option<u32>,
    pub when: Trigger,
    #[serde(rename = "if", default, skip_serializing_if = "Match::is_empty")]
    pub match_: Match,
    pub then: Vec<Action>,
}

/// What fires a rule: exactly one of `event`, `state`, `timer`, `schedule`, `run`.
///
/// - `event`: a committed device event by kind (`info`, `sup`, `cup`, `online`, `offline`,
///   `cell_opened`, `wrong_code`, `short_circuit`, `cell_timed_out`, `rebooted`, … — the
///   event list), optionally only of one device `type` (`lock`, `acon`) or one `device`
///   (`lock/b827eb0a1b2c`, `acon/1953`).
/// - `state`: a state change: `level`, `counter`, or a variable's name.
/// - `timer`: the named timer fired.
/// - `schedule`: a cron line (`minute hour day-of-month month day-of-week`) in the venue's
///   time zone.
/// - `run`: a game run's `start`, `pause`, `resume` or `end`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// The `if` of a rule: every condition must hold.
///
/// Keys are paths into what the rule sees: `event.<field>…` (the trigger's fields: an INFO's
/// `event.datahold.type`, a cell's `event.cell`, a state change's `event.to`), `device`
/// (`lock/b827eb0a1b2c`), `device.type`, `device.id`, `device.config.<key>…`,
/// `device.reported.<key>…`, `level`, `level_id`, `counter`, `ingame`, `var.<name>`, `run`
/// (`running`, `paused`, `none`). The special key `expr` is a sandboxed expression
/// ([`super::expr`]) for what the conditions cannot say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Match(pub BTreeMap<String, Cond>);

impl Match {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One condition: a plain value (equality), or a table of tests that must all hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cond {
    Tests(Tests),
    Equals(Value),
}

/// Tests on one value. Strings compare exactly unless `normalize`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tests {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eq: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ne: Option<Value>,
    /// One of these.
    #[serde(rename = "in", default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_in: Option<Vec<Value>>,
    /// Numbers: at least / at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Levels (on `level`): this level or one after it in play order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<String>,
    /// Levels: this level or one before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<String>,
    /// The value is there (or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exists: Option<bool>,
    /// Compare strings with braces, spaces and case removed (`"{AUX}"` equals `"aux"`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub normalize: bool,
}

/// A counter change: `add` or `set`, a number or a level amount (`"failure"`, `"success"`:
/// the current level's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A number, or the current level's `failure` / `success` amount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Amount {
    Number(i64),
    Level(String),
}

/// Where a config push goes: one device, one type, or every active type (the level push).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// Every active type, as a level change does.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all_types: bool,
    /// A merge patch (a template) to apply before pushing; without it the current config
    /// (for a type: the game's config for the level) is pushed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Value>,
}

/// Engage an ACon cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngageAction {
    /// `acon/<id>`.
    pub device: String,
    pub cell: u32,
    /// Generated when absent; may hold placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minutes: Option<i64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub single_use: bool,
}

/// A cell of a board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellRef {
    pub device: String,
    pub cell: u32,
}

/// Publish an MQTT message (to a device topic, never `ask/…`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishAction {
    pub topic: String,
    /// JSON (a template).
    pub payload: Value,
}

/// Start (or restart) a named timer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerAction {
    pub name: String,
    pub secs: u64,
    /// Count game time (stops while the run is paused) instead of wall time.
    #[serde(default, skip_serializing_if = "is_false")]
    pub game_time: bool,
}

/// Set a variable (the value may be a template).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetVar {
    pub name: String,
    pub value: Value,
}

/// Call a configured webhook with a JSON body (a template; default: the trigger).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookCall {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Attempts after the first failure (default 0: no retry).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub retries: u32,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// Add a code to the access list (a new card).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddCode {
    /// May hold placeholders (`"{event.datahold.content}"`).
    pub code: String,
    #[serde(default)]
    pub levels: Vec<String>,
}

/// Wait, then go on with the rest of the actions (durable, like a timer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    pub secs: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub game_time: bool,
}

/// One action, written as a one-key table: `{ set_level = "cyan" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// A rule setting the level does not reset the counter (an operator's does).
    SetLevel(String),
    Counter(CounterChange),
    SetVar(SetVar),
    Push(PushTarget),
    Engage(EngageAction),
    Release(CellRef),
    Reset(String),
    Block(String),
    Unblock(String),
    Publish(PublishAction),
    StartTimer(TimerAction),
    CancelTimer(String),
    /// A line in the log and the trace (may hold placeholders).
    Log(String),
    Webhook(WebhookCall),
    AddCode(AddCode),
    Delay(Delay),
}

impl RuleFile {
    /// Parses a rule file; the error names the line and column.
    pub fn from_toml(text: &str) -> Result<RuleFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The file as TOML, the same bytes for the same rule set.
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string(self).map_err(|e| e.to_string())
    }
}
