//! The game panel: the alert level as big coloured buttons, the counter with the thresholds
//! around it, the game run, the running timers, the variables; live.
//!
//! The page is made of parts, each refreshed on its own from the live stream by the kinds of
//! event that change it (`/game/{part}`, rendered by the template the page includes). The
//! parts hold no text field: what an operator types (a counter change, a timer, a variable)
//! is in forms outside them, so a refresh never takes away what is being typed.
//!
//! Levels are the rule file's data: a button per level, in the file's order, coloured by the
//! level's `colour` (or its name, when that names a colour), and asking for a confirmation
//! where [`needs_confirm`] says so. The colour is an SVG `fill` attribute, not a `style`:
//! the CSP forbids inline styles, not presentation attributes.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{Nav, html, nav};
use crate::clock::now_ms;
use crate::core::game::def::{LevelDef, VarType};
use crate::core::game::engine::GameSnapshot;
use crate::core::game::{RuleFile, RunState};
use crate::http::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/game", get(game_page))
        .route("/game/{part}", get(game_part))
}

/// One level as a button (or, for a viewer, a label).
pub(super) struct LevelView {
    pub name: String,
    pub id: i64,
    /// `#rrggbb`, or none: the button keeps the theme's colours.
    pub colour: Option<String>,
    /// The text on the colour is dark (a light colour) rather than light.
    pub dark_text: bool,
    pub current: bool,
    pub ingame: bool,
    /// The question asked before the level is set, if one is.
    pub confirm: Option<String>,
}

/// Where the counter takes the level next: from `at` (up: at or above; down: below) to
/// `level`.
pub(super) struct Step {
    pub at: i64,
    pub level: String,
}

/// The counter and what it does at the current level.
pub(super) struct CounterView {
    pub value: i64,
    /// The current level follows the counter.
    pub ingame: bool,
    pub up: Option<Step>,
    pub down: Option<Step>,
    /// What a player's failure / success adds at this level (0: nothing).
    pub failure: i64,
    pub success: i64,
}

/// A running timer (or a rule's `delay`).
pub(super) struct TimerRow {
    pub name: String,
    /// Unix ms it fires at; none while a game-time timer's run is paused.
    pub until: Option<i64>,
    /// The time left when the page was made (`m:ss`): the countdown's first text.
    pub left: String,
    pub game_time: bool,
    pub secs: u64,
    pub started_by: String,
    /// The rule whose `delay` this is (not a named timer: it has no cancel button).
    pub delay_of: Option<String>,
}

/// The current game run.
pub(super) struct RunRow {
    pub id: u64,
    pub paused: bool,
    /// Game time so far, `h:mm:ss` or `m:ss`.
    pub game_time: String,
    pub started_by: String,
}

/// A variable, with its type and value as text.
pub(super) struct VarRow {
    pub name: String,
    /// `int`, `string`, `bool`.
    pub ty: &'static str,
    pub value: String,
    pub description: String,
}

/// Everything the panel shows, from one snapshot of the game.
pub(super) struct Panel {
    pub level: LevelView,
    pub levels: Vec<LevelView>,
    pub counter: CounterView,
    pub run: Option<RunRow>,
    pub timers: Vec<TimerRow>,
    pub vars: Vec<VarRow>,
    /// The loaded rule file has no levels (no rule file was imported).
    pub no_rules: bool,
}

/// Colours by name, for a level without a `colour` (or one that is a name).
const NAMED: &[(&str, &str)] = &[
    ("white", "#f5f5f5"),
    ("black", "#111111"),
    ("red", "#c62828"),
    ("green", "#2e7d32"),
    ("blue", "#1e4fd8"),
    ("yellow", "#f9a825"),
    ("cyan", "#00bcd4"),
    ("orange", "#ef6c00"),
    ("purple", "#7b1fa2"),
    ("magenta", "#d81b60"),
    ("pink", "#ec407a"),
    ("brown", "#6d4c41"),
    ("grey", "#757575"),
    ("gray", "#757575"),
];

/// `#rgb` or `#rrggbb` as `#rrggbb` (lowercase); anything else is none.
fn hex_colour(s: &str) -> Option<String> {
    let h = s.trim().strip_prefix('#')?;
    if !h.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let h = h.to_ascii_lowercase();
    match h.len() {
        6 => Some(format!("#{h}")),
        3 => Some(format!(
            "#{}",
            h.chars().flat_map(|c| [c, c]).collect::<String>()
        )),
        _ => None,
    }
}

fn named_colour(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    NAMED
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, c)| (*c).to_string())
}

/// The colour a level is shown in: its `colour` (a hex colour or a known name), else its
/// name if that is a known colour. Only `#rrggbb` comes out, so nothing from the rule file
/// reaches the page as markup or CSS.
pub(super) fn level_colour(l: &LevelDef) -> Option<String> {
    l.colour
        .as_deref()
        .and_then(|c| hex_colour(c).or_else(|| named_colour(c)))
        .or_else(|| named_colour(&l.name))
}

/// Whether dark text reads better than light on `#rrggbb`.
fn wants_dark_text(hex: &str) -> bool {
    let n = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap_or(0);
    let (r, g, b) = ((n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    // Rec. 601 luma, 0..=255 000.
    299 * r + 587 * g + 114 * b > 150_000
}

/// Whether setting `l` asks first. The rule file has no field for it, so: `black`, the end of
/// the game (in the SKABEN preset: every lock blocked, the siren on).
pub(super) fn needs_confirm(l: &LevelDef) -> bool {
    l.name.eq_ignore_ascii_case("black")
}

fn level_view(l: &LevelDef, current: &str) -> LevelView {
    let colour = level_colour(l);
    LevelView {
        name: l.name.clone(),
        id: l.id,
        dark_text: colour.as_deref().is_some_and(wants_dark_text),
        colour,
        current: l.name == current,
        ingame: l.ingame,
        confirm: needs_confirm(l).then(|| {
            format!(
                "Set the level to {}? Every device gets the {} configuration now.",
                l.name, l.name
            )
        }),
    }
}

/// The counter's steps at the current level: up, at the next ingame threshold; down, below
/// this level's threshold to the ingame level under it (the lowest ingame level has none:
/// the engine keeps it whatever the counter).
fn counter_view(g: &GameSnapshot) -> CounterView {
    let cur = g.levels.iter().find(|l| l.name == g.level);
    let ingame: Vec<&LevelDef> = g.levels.iter().filter(|l| l.ingame).collect();
    let (up, down) = match cur.filter(|l| l.ingame) {
        Some(c) => (
            ingame
                .iter()
                .filter(|l| l.threshold > c.threshold)
                .min_by_key(|l| l.threshold)
                .map(|l| Step {
                    at: l.threshold,
                    level: l.name.clone(),
                }),
            ingame
                .iter()
                .filter(|l| l.threshold < c.threshold)
                .max_by_key(|l| l.threshold)
                .map(|l| Step {
                    at: c.threshold,
                    level: l.name.clone(),
                }),
        ),
        None => (None, None),
    };
    CounterView {
        value: g.counter,
        ingame: g.ingame,
        up,
        down,
        failure: cur.map_or(0, |l| l.failure),
        success: cur.map_or(0, |l| l.success),
    }
}

/// `h:mm:ss` or `m:ss`.
pub(super) fn clock(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The panel from the game's snapshot and, for the variables, the rule file's definitions
/// (without it the panel has no variables).
pub(super) fn panel_of(g: &GameSnapshot, file: Option<&RuleFile>) -> Panel {
    let levels: Vec<LevelView> = g.levels.iter().map(|l| level_view(l, &g.level)).collect();
    let level = g
        .levels
        .iter()
        .find(|l| l.name == g.level)
        .map(|l| level_view(l, &g.level))
        .unwrap_or_else(|| LevelView {
            name: g.level.clone(),
            id: g.level_id.unwrap_or(0),
            colour: None,
            dark_text: false,
            current: true,
            ingame: g.ingame,
            confirm: None,
        });
    let mut timers: Vec<TimerRow> = g
        .timers
        .iter()
        .map(|t| TimerRow {
            name: t.name.clone(),
            until: t.due_at,
            left: clock(t.remaining_ms.unwrap_or(0)),
            game_time: t.game_time,
            secs: t.secs,
            started_by: t.started_by.clone(),
            delay_of: t.continuation.clone(),
        })
        .collect();
    // Soonest first; paused ones last.
    timers.sort_by_key(|t| (t.until.is_none(), t.until, t.name.clone()));
    let run = g
        .run
        .as_ref()
        .filter(|r| r.state != RunState::Ended)
        .map(|r| RunRow {
            id: r.id,
            paused: r.state == RunState::Paused,
            game_time: clock(r.game_ms),
            started_by: r.started_by.clone(),
        });
    let vars = file
        .map_or(&[][..], |f| &f.variables[..])
        .iter()
        .map(|v| VarRow {
            name: v.name.clone(),
            ty: match v.ty {
                VarType::Int => "int",
                VarType::String => "string",
                VarType::Bool => "bool",
            },
            value: g
                .variables
                .get(&v.name)
                .map_or_else(|| value_text(&v.initial), value_text),
            description: v.description.clone(),
        })
        .collect();
    Panel {
        level,
        counter: counter_view(g),
        no_rules: g.levels.is_empty(),
        levels,
        run,
        timers,
        vars,
    }
}

/// The panel as the game is now; with `vars`, its variables too (which copies the rule file
/// out of the core: the parts that do not show them skip it).
pub(super) fn panel(s: &AppState, vars: bool) -> Panel {
    let g = s.hub.game_snapshot(now_ms());
    let file = vars.then(|| s.hub.rules_file());
    panel_of(&g, file.as_ref())
}

/// Whether the caller may change the game (operator or admin): the page shows its forms.
pub(super) fn operates(nav: Option<&Nav>) -> bool {
    nav.is_some_and(|n| n.operate)
}

#[derive(Template)]
#[template(path = "game.html")]
struct GamePage {
    nav: Option<Nav>,
    operate: bool,
    panel: Panel,
}

/// One live part of the page: `part` names the template it includes.
#[derive(Template)]
#[template(path = "game_part.html")]
struct GamePart {
    operate: bool,
    panel: Panel,
    part: &'static str,
}

/// The parts `/game/{part}` serves.
const PARTS: &[&str] = &["levels", "counter", "run", "timers", "variables", "forms"];

async fn game_page(State(s): State<AppState>) -> Response {
    let nav = nav("game");
    html(
        GamePage {
            operate: operates(nav.as_ref()),
            nav,
            panel: panel(&s, true),
        },
        StatusCode::OK,
    )
}

async fn game_part(State(s): State<AppState>, Path(part): Path<String>) -> Response {
    let Some(part) = PARTS.iter().find(|p| **p == part) else {
        return (StatusCode::NOT_FOUND, "no such part of the game panel").into_response();
    };
    html(
        GamePart {
            operate: operates(nav("game").as_ref()),
            panel: panel(&s, matches!(*part, "variables" | "forms")),
            part,
        },
        StatusCode::OK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(name: &str, colour: Option<&str>) -> LevelDef {
        LevelDef {
            name: name.into(),
            id: 1,
            ingame: false,
            threshold: 0,
            failure: 0,
            success: 0,
            drift: None,
            colour: colour.map(str::to_string),
        }
    }

    #[test]
    fn a_level_colour_is_a_hex_colour_or_a_known_name_and_nothing_else() {
        let cases = [
            (level("blue", Some("#1E4FD8")), Some("#1e4fd8")),
            (level("x", Some("#abc")), Some("#aabbcc")),
            (level("x", Some("orange")), Some("#ef6c00")),
            (level("red", None), Some("#c62828")),
            (level("x", None), None),
            // Not a colour this page makes: the name's, if any.
            (level("green", Some("rgb(1,2,3)")), Some("#2e7d32")),
            (level("x", Some("#12345g")), None),
            (level("x", Some("\"><script>")), None),
        ];
        for (l, want) in cases {
            assert_eq!(level_colour(&l).as_deref(), want, "{:?}", l.colour);
        }
    }

    #[test]
    fn text_on_a_colour_is_dark_on_light_colours() {
        assert!(wants_dark_text("#f5f5f5"));
        assert!(wants_dark_text("#f9a825"));
        assert!(!wants_dark_text("#111111"));
        assert!(!wants_dark_text("#1e4fd8"));
        assert!(!wants_dark_text("#c62828"));
    }

    #[test]
    fn black_asks_for_a_confirmation() {
        assert!(needs_confirm(&level("black", None)));
        assert!(!needs_confirm(&level("red", None)));
    }

    #[test]
    fn the_counter_steps_are_the_thresholds_around_the_level() {
        let file = RuleFile::from_toml(include_str!("../../../../../presets/skaben.toml"))
            .expect("the preset parses");
        let snap = |level: &str, counter: i64| GameSnapshot {
            level: level.into(),
            level_id: None,
            counter,
            ingame: file.levels.iter().any(|l| l.name == level && l.ingame),
            next_threshold: None,
            variables: Default::default(),
            levels: file.levels.clone(),
            run: None,
            timers: vec![],
            rules: 0,
            rules_hash: String::new(),
        };
        let steps = |c: &CounterView| {
            (
                c.up.as_ref().map(|s| (s.at, s.level.clone())),
                c.down.as_ref().map(|s| (s.at, s.level.clone())),
            )
        };
        let green = counter_view(&snap("green", 10));
        assert_eq!(steps(&green), (Some((500, "yellow".into())), None));
        assert_eq!((green.failure, green.success), (50, -25));
        let yellow = counter_view(&snap("yellow", 600));
        assert_eq!(
            steps(&yellow),
            (Some((1000, "red".into())), Some((500, "green".into())))
        );
        let red = counter_view(&snap("red", 1000));
        assert_eq!(steps(&red), (None, Some((1000, "yellow".into()))));
        // Not ingame: the counter moves no level.
        let blue = counter_view(&snap("blue", -1));
        assert_eq!(steps(&blue), (None, None));
        assert!(!blue.ingame);
    }

    #[test]
    fn game_time_reads_as_a_clock() {
        assert_eq!(clock(0), "0:00");
        assert_eq!(clock(61_500), "1:01");
        assert_eq!(clock(3_723_000), "1:02:03");
        assert_eq!(clock(-5), "0:00");
    }
}
