//! The SKABEN preset (`presets/skaben.toml`) against the rule-file spec (`def.rs`) and against
//! the original game it reproduces.
//!
//! Invariants checked: the file parses; export → import → export gives the same bytes; the level
//! table, the per-type configs, the access list and the rules are exactly the original's (each a
//! table below, so a changed number or name fails here, not at the venue); every dumb type has a
//! config for every level; every lamp program is one the lamp's firmware accepts; every name a
//! part of the file uses (a level, a timer, a variable) is one the file defines.

use std::collections::{BTreeMap, BTreeSet};

use gatehouse::core::game::def::{Action, Cond, Match, RuleFile, Trigger};
use serde_json::{Value, json};

mod lamp;
use lamp::{Step, program};

const PRESET: &str = include_str!("../../../../../presets/skaben.toml");

/// The play order (white → blue → cyan → green ⇄ yellow ⇄ red → black).
const LEVELS: [&str; 7] = ["white", "blue", "cyan", "green", "yellow", "red", "black"];

/// The types that take one config for the whole type (the SKABEN protocol, "Device types").
const DUMB: [&str; 4] = ["box", "pwr", "rgb", "scl"];
/// The types whose devices each get a merge patch.
const SMART: [&str; 2] = ["lock", "terminal"];

fn preset() -> RuleFile {
    RuleFile::from_toml(PRESET).unwrap()
}

/// A type's `levels` entry for `level`, as JSON.
fn at(file: &RuleFile, ty: &str, level: &str) -> Value {
    file.types[ty]
        .levels
        .get(level)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn preset_round_trips_export_import_export() {
    let parsed = preset();
    let first = parsed.to_toml().unwrap();
    let reparsed = RuleFile::from_toml(&first).unwrap();
    assert_eq!(reparsed, parsed, "the export must keep the whole content");
    let second = reparsed.to_toml().unwrap();
    assert_eq!(
        second, first,
        "export → import → export must be byte-identical"
    );
}

#[test]
fn game_settings_are_the_originals() {
    let g = preset().game;
    assert_eq!(g.initial_level.as_deref(), Some("white"));
    assert_eq!(g.initial_counter, -1);
    assert_eq!(
        (g.max_depth, g.max_firings_per_sec),
        (8, 20),
        "loop protection at its defaults"
    );
    assert_eq!(g.timezone, None, "the server's --timezone");
}

#[test]
fn levels_are_the_original_table_in_play_order() {
    // name, id, ingame, threshold, failure, success
    let want: [(&str, i64, bool, i64, i64, i64); 7] = [
        ("white", 1, false, -1, 0, 0),
        ("blue", 3, false, -1, 0, 0),
        ("cyan", 2, false, -1, 0, 0),
        ("green", 4, true, 1, 50, -25),
        ("yellow", 5, true, 500, 25, -25),
        ("red", 6, true, 1000, 25, -25),
        ("black", 7, false, -100, 0, 0),
    ];
    let file = preset();
    let got: Vec<_> = file
        .levels
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.id,
                l.ingame,
                l.threshold,
                l.failure,
                l.success,
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn levels_have_a_console_colour_and_no_drift() {
    for l in preset().levels {
        assert_eq!(l.drift, None, "{}: drift is off in the original", l.name);
        let colour = l.colour.unwrap_or_default();
        let hex = colour.strip_prefix('#').unwrap_or_default();
        assert!(
            hex.len() == 6 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{}: colour {colour:?} is not #rrggbb",
            l.name
        );
    }
}

#[test]
fn types_are_exactly_the_skaben_types() {
    let file = preset();
    let got: BTreeSet<&str> = file.types.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = DUMB.iter().chain(SMART.iter()).copied().collect();
    assert_eq!(got, want);
}

#[test]
fn every_dumb_type_has_a_config_for_every_level() {
    let file = preset();
    for ty in DUMB {
        let t = &file.types[ty];
        for level in LEVELS {
            assert!(
                t.levels.contains_key(level) || t.template.is_some(),
                "{ty} has no config at {level}: the push would be an error event"
            );
        }
    }
}

#[test]
fn type_levels_name_only_known_levels() {
    let file = preset();
    for (ty, t) in &file.types {
        for level in t.levels.keys().chain(t.override_except.iter()) {
            assert!(
                LEVELS.contains(&level.as_str()),
                "{ty} names unknown level {level}"
            );
        }
    }
}

#[test]
fn power_shield_state_per_level() {
    let file = preset();
    let want = [
        ("white", "PWR"),
        ("blue", "OFF"),
        ("cyan", "AUX"),
        ("green", "PWR"),
        ("yellow", "PWR"),
        ("red", "PWR"),
        ("black", "PWR"),
    ];
    for (level, state) in want {
        assert_eq!(
            at(&file, "pwr", level),
            json!({ "powerstate": state }),
            "pwr at {level}"
        );
    }
    assert_eq!(file.types["pwr"].template, None);
}

#[test]
fn box_is_open_only_at_white() {
    let file = preset();
    for level in LEVELS {
        let open = level == "white";
        assert_eq!(
            at(&file, "box", level),
            json!({ "open": open }),
            "box at {level}"
        );
    }
}

#[test]
fn alert_scale_is_pushed_on_level_and_counter_with_its_template() {
    let file = preset();
    let scl = &file.types["scl"];
    let push_on = serde_json::to_value(&scl.push_on).unwrap();
    assert_eq!(push_on, json!(["level", "counter"]));
    assert_eq!(
        scl.template,
        Some(
            json!({ "level": { "$": "counter" }, "state": "{level}", "borders": [334, 667, 1000] })
        )
    );
    assert!(scl.levels.is_empty(), "the template is the whole config");
}

#[test]
fn lock_template_override_and_settings_per_level() {
    let file = preset();
    let lock = &file.types["lock"];
    assert_eq!(
        lock.template,
        Some(json!({ "alert": "{level_id}", "acl": { "$": "acl" } }))
    );
    assert_eq!(lock.override_key.as_deref(), Some("override"));
    assert_eq!(lock.override_except, ["white"]);
    let playing = json!({ "closed": true, "sound": true, "blocked": false });
    let want = [
        (
            "white",
            json!({ "closed": false, "sound": false, "blocked": false, "timer": 10 }),
        ),
        ("blue", playing.clone()),
        ("cyan", playing.clone()),
        ("green", playing.clone()),
        ("yellow", playing.clone()),
        ("red", playing),
        (
            "black",
            json!({ "closed": true, "sound": true, "blocked": true }),
        ),
    ];
    for (level, settings) in want {
        assert_eq!(at(&file, "lock", level), settings, "lock at {level}");
    }
    assert_eq!(lock.levels.len(), LEVELS.len());
}

#[test]
fn terminal_template_override_and_settings_per_level() {
    let file = preset();
    let term = &file.types["terminal"];
    assert_eq!(term.template, Some(json!({ "alert": "{level_id}" })));
    assert_eq!(term.override_key.as_deref(), Some("override"));
    assert_eq!(term.override_except, ["white"]);
    let off = json!({ "powered": false });
    let on = json!({ "powered": true, "blocked": false });
    let want = [
        ("white", json!({ "powered": false, "reset": true })),
        ("blue", off.clone()),
        ("cyan", off),
        ("green", on.clone()),
        ("yellow", on.clone()),
        ("red", on),
        ("black", json!({ "powered": true, "blocked": true })),
    ];
    for (level, settings) in want {
        assert_eq!(
            at(&file, "terminal", level),
            settings,
            "terminal at {level}"
        );
    }
    assert_eq!(term.levels.len(), LEVELS.len());
}

// ---- the lamp's channel programs ----

#[test]
fn the_program_checker_rejects_what_the_lamp_would_ignore() {
    let cases = [
        ("RGB", "FF0000/1000/0/C", true),
        ("RGB", "FF0000/3000/1000/00FF00/3000/2000/S", true),
        ("RGB", "ff0000/100-1000/0/C", true),
        ("RGB", "F00/1000/0/C", false),
        ("RGB", "FF0000/1000/C", false),
        ("RGB", "FF0000/0/0/C", false),
        ("RGB", "FF0000/1000/0/X", false),
        ("RGB", "FF0000/1000/0", false),
        ("LGT", "1/1000/C", true),
        ("STR", "1/3000/0/1000/C", true),
        ("STR", "1/1000/0/C", false),
        ("STR", "2/1000/C", false),
        ("STR", "1/0/C", false),
        ("STR", "1/900-100/C", false),
        ("LGT", "C", false),
        ("XYZ", "1/1000/C", false),
    ];
    for (channel, text, ok) in cases {
        assert_eq!(program(channel, text).is_ok(), ok, "{channel} {text:?}");
    }
}

/// What a discrete channel does.
#[derive(Debug, PartialEq)]
enum Discrete {
    Off,
    On,
    /// On and off in turn, one cycle in `period_ms`.
    Flashing {
        period_ms: u64,
    },
}

fn discrete(steps: &[Step]) -> Discrete {
    if steps.iter().all(|s| s.value == "0") {
        Discrete::Off
    } else if steps.iter().all(|s| s.value == "1") {
        Discrete::On
    } else {
        Discrete::Flashing {
            period_ms: steps.iter().map(|s| s.ms).sum(),
        }
    }
}

/// The three channels of the rgb config at `level`, checked.
fn lamp(file: &RuleFile, level: &str) -> (Vec<Step>, Vec<Step>, Vec<Step>) {
    let cfg = at(file, "rgb", level);
    let obj = cfg.as_object().unwrap();
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["LGT", "RGB", "STR"]),
        "rgb at {level}"
    );
    let chan = |c: &str| {
        let text = obj[c].as_str().unwrap();
        program(c, text).unwrap_or_else(|e| panic!("rgb at {level}: {e}"))
    };
    (chan("RGB"), chan("LGT"), chan("STR"))
}

#[test]
fn lamp_programs_are_valid_and_look_as_the_original() {
    let file = preset();
    assert_eq!(file.types["rgb"].template, None);
    // level, the lamp's colour, the white light, whether the siren and strobe sound
    let want = [
        ("white", "FFFFFF", "on", "off"),
        ("blue", "0000FF", "flashing", "off"),
        ("cyan", "40E0D0", "flashing", "off"),
        ("green", "00FF00", "on", "off"),
        ("yellow", "FFFF00", "on", "flashing"),
        ("red", "FF0000", "on", "flashing"),
        ("black", "000000", "off", "on"),
    ];
    let kind = |d: &Discrete| match d {
        Discrete::Off => "off",
        Discrete::On => "on",
        Discrete::Flashing { .. } => "flashing",
    };
    let mut siren_period = BTreeMap::new();
    for (level, colour, light, siren) in want {
        let (rgb, lgt, str_) = lamp(&file, level);
        let colours: BTreeSet<&str> = rgb.iter().map(|s| s.value.as_str()).collect();
        assert_eq!(colours, BTreeSet::from([colour]), "rgb colour at {level}");
        assert_eq!(kind(&discrete(&lgt)), light, "white light at {level}");
        let s = discrete(&str_);
        assert_eq!(kind(&s), siren, "siren and strobe at {level}");
        if let Discrete::Flashing { period_ms } = s {
            siren_period.insert(level, period_ms);
        }
    }
    assert!(
        siren_period["red"] < siren_period["yellow"],
        "the siren is more frequent at red than at yellow: {siren_period:?}"
    );
}

// ---- the access list ----

#[test]
fn access_list_examples() {
    let file = preset();
    let mut codes = BTreeSet::new();
    for a in &file.access {
        assert!(
            a.code.len() == 6 && a.code.chars().all(|c| c.is_ascii_digit()),
            "{}: a card code is 6 digits",
            a.code
        );
        assert!(codes.insert(a.code.as_str()), "{} twice", a.code);
        for l in &a.levels {
            assert!(
                LEVELS.contains(&l.as_str()),
                "{}: unknown level {l}",
                a.code
            );
        }
        assert!(
            !a.levels.iter().any(|l| l == "black"),
            "black blocks every lock"
        );
        for lock in &a.locks {
            assert!(
                lock.starts_with("lock/"),
                "{}: {lock} is not lock/<id>",
                a.code
            );
        }
    }
    assert!((2..=3).contains(&file.access.len()));
    let levels_of = |code: &str| -> Vec<&str> {
        file.access
            .iter()
            .find(|a| a.code == code)
            .map(|a| a.levels.iter().map(String::as_str).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        levels_of("100001"),
        LEVELS[..6],
        "staff: every level but black"
    );
    assert_eq!(levels_of("424242"), ["green", "yellow"], "player");
}

// ---- the rules ----

const RULES: [&str; 13] = [
    "shield-aux-at-blue",
    "shield-pwr-at-cyan",
    "lock-access-log",
    "lock-failure-adds",
    "lock-new-card-at-white",
    "terminal-hack-lost",
    "terminal-hack-lost-info",
    "cyan-30-min-to-blue",
    "stop-cyan-timer",
    "cyan-timeout-fired",
    "red-15-min-to-black",
    "stop-red-timer",
    "red-timeout-fired",
];

#[test]
fn rules_are_exactly_these_in_order() {
    let got: Vec<String> = preset().rules.into_iter().map(|r| r.name).collect();
    assert_eq!(got, RULES);
}

#[test]
fn each_rule_is_as_the_original() {
    let failure = |reason: &str| json!([{ "counter": { "add": "failure", "reason": reason } }]);
    // name, enabled, when, if, then
    let want: Vec<(&str, bool, Value, Value, Value)> = vec![
        (
            "shield-aux-at-blue",
            true,
            json!({ "event": "info", "type": "pwr" }),
            json!({ "event.datahold.powerstate": { "eq": "aux", "normalize": true }, "level": "blue" }),
            json!([{ "set_level": "cyan" }]),
        ),
        (
            "shield-pwr-at-cyan",
            true,
            json!({ "event": "info", "type": "pwr" }),
            json!({ "event.datahold.powerstate": { "eq": "pwr", "normalize": true }, "level": "cyan" }),
            json!([{ "set_level": "green" }]),
        ),
        (
            "lock-access-log",
            true,
            json!({ "event": "info", "type": "lock" }),
            json!({ "event.datahold.type": "access" }),
            json!([{ "log": "lock {device}: code {event.datahold.content}, success {event.datahold.success}, level {level}" }]),
        ),
        (
            "lock-failure-adds",
            true,
            json!({ "event": "info", "type": "lock" }),
            json!({ "event.datahold.type": "access", "event.datahold.success": false, "ingame": true }),
            failure("failed lock attempt"),
        ),
        (
            "lock-new-card-at-white",
            true,
            json!({ "event": "info", "type": "lock" }),
            json!({
                "event.datahold.type": "access",
                "level": "white",
                "expr": "is_digits(event.datahold.content, 6) && !(event.datahold.content in codes)"
            }),
            json!([{ "add_code": { "code": "{event.datahold.content}", "levels": [] } }]),
        ),
        (
            "terminal-hack-lost",
            true,
            json!({ "event": "sup", "type": "terminal" }),
            json!({ "event.datahold.blocked": true, "ingame": true }),
            failure("terminal hack lost"),
        ),
        (
            "terminal-hack-lost-info",
            true,
            json!({ "event": "info", "type": "terminal" }),
            json!({ "event.datahold.type": "hack", "event.datahold.success": false, "ingame": true }),
            failure("terminal hack lost"),
        ),
        (
            "cyan-30-min-to-blue",
            false,
            json!({ "state": "level" }),
            json!({ "event.to": "cyan" }),
            json!([{ "start_timer": { "name": "cyan-timeout", "secs": 1800, "game_time": true } }]),
        ),
        (
            "stop-cyan-timer",
            false,
            json!({ "state": "level" }),
            json!({ "event.to": "green" }),
            json!([{ "cancel_timer": "cyan-timeout" }]),
        ),
        (
            "cyan-timeout-fired",
            false,
            json!({ "timer": "cyan-timeout" }),
            json!({ "level": "cyan" }),
            json!([{ "set_level": "blue" }]),
        ),
        (
            "red-15-min-to-black",
            false,
            json!({ "state": "level" }),
            json!({ "event.to": "red" }),
            json!([{ "start_timer": { "name": "red-timeout", "secs": 900, "game_time": true } }]),
        ),
        (
            "stop-red-timer",
            false,
            json!({ "state": "level" }),
            json!({ "event.from": "red" }),
            json!([{ "cancel_timer": "red-timeout" }]),
        ),
        (
            "red-timeout-fired",
            false,
            json!({ "timer": "red-timeout" }),
            json!({ "level": "red" }),
            json!([{ "set_level": "black" }]),
        ),
    ];
    let file = preset();
    assert_eq!(file.rules.len(), want.len());
    for (rule, (name, enabled, when, if_, then)) in file.rules.iter().zip(want) {
        assert_eq!(rule.name, name);
        assert_eq!(rule.enabled, enabled, "{name}: enabled");
        assert_eq!(
            serde_json::to_value(&rule.when).unwrap(),
            when,
            "{name}: when"
        );
        assert_eq!(
            serde_json::to_value(&rule.match_).unwrap(),
            if_,
            "{name}: if"
        );
        assert_eq!(
            serde_json::to_value(&rule.then).unwrap(),
            then,
            "{name}: then"
        );
        assert!(
            !rule.description.is_empty(),
            "{name}: a description for the console"
        );
        assert_eq!(rule.max_firings_per_sec, None, "{name}: the game's rate");
        assert_eq!(
            serde_json::to_value(rule.mode).unwrap(),
            json!("single"),
            "{name}: mode"
        );
    }
}

/// What one trigger listens to: `event`, `state`, `timer`, `schedule` or `run`.
fn trigger_kinds(t: &Trigger) -> usize {
    [&t.event, &t.state, &t.timer, &t.schedule, &t.run]
        .iter()
        .filter(|x| x.is_some())
        .count()
}

#[test]
fn rule_names_and_triggers_are_well_formed() {
    let mut names = BTreeSet::new();
    for r in preset().rules {
        assert!(
            !r.name.is_empty()
                && r.name.len() <= 64
                && r.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'),
            "{}: a rule name is [a-z0-9_-], at most 64 bytes",
            r.name
        );
        assert!(names.insert(r.name.clone()), "{} twice", r.name);
        assert_eq!(trigger_kinds(&r.when), 1, "{}: exactly one trigger", r.name);
        assert!(!r.then.is_empty(), "{}: a rule does something", r.name);
    }
}

/// A condition written with an unquoted dotted key (`event.datahold.type = "access"`) parses as
/// the key `event` equal to a table: a rule that never fires. No condition of the preset may be
/// a table or a list compared for equality, and every key starts at a root the engine knows.
#[test]
fn conditions_are_paths_not_nested_tables() {
    let roots = [
        "event", "device", "level", "level_id", "counter", "ingame", "var", "run", "expr",
    ];
    for r in preset().rules {
        let Match(conds) = &r.match_;
        for (key, cond) in conds {
            let root = key.split('.').next().unwrap_or_default();
            assert!(roots.contains(&root), "{}: unknown path {key}", r.name);
            if let Cond::Equals(v) = cond {
                assert!(
                    !v.is_object() && !v.is_array(),
                    "{}: {key} compared to a table: quote the dotted path",
                    r.name
                );
            }
        }
    }
}

#[test]
fn every_level_and_timer_a_rule_names_is_defined() {
    let file = preset();
    let mut started = BTreeSet::new();
    let mut listened = BTreeSet::new();
    let mut cancelled = BTreeSet::new();
    let level_ok = |rule: &str, v: &Value| {
        let l = v.as_str().unwrap_or_default();
        assert!(LEVELS.contains(&l), "{rule}: unknown level {v}");
    };
    for r in &file.rules {
        if let Some(t) = &r.when.timer {
            listened.insert(t.clone());
        }
        if let Some(s) = &r.when.state {
            assert_eq!(s, "level", "{}: the preset has no variables", r.name);
        }
        for (key, cond) in &r.match_.0 {
            assert!(
                !key.starts_with("var."),
                "{}: the preset has no variables",
                r.name
            );
            if ["level", "event.to", "event.from"].contains(&key.as_str()) {
                match cond {
                    Cond::Equals(v) => level_ok(&r.name, v),
                    Cond::Tests(_) => panic!("{}: {key} is compared to a level by name", r.name),
                }
            }
        }
        for a in &r.then {
            match a {
                Action::SetLevel(l) => level_ok(&r.name, &json!(l)),
                Action::StartTimer(t) => {
                    assert!(t.game_time, "{}: lore timers count game time", r.name);
                    started.insert(t.name.clone());
                }
                Action::CancelTimer(t) => {
                    cancelled.insert(t.clone());
                }
                Action::AddCode(c) => c.levels.iter().for_each(|l| level_ok(&r.name, &json!(l))),
                _ => {}
            }
        }
    }
    assert_eq!(
        started, listened,
        "every timer started is listened to, and back"
    );
    assert!(
        cancelled.is_subset(&started),
        "only started timers are cancelled"
    );
    assert!(file.variables.is_empty());
    assert!(file.webhooks.is_empty());
}

/// The rules that turn the lore on are all off, and the game's own rules all on.
#[test]
fn lore_rules_are_off_and_the_rest_on() {
    let lore = ["cyan-", "stop-", "red-"];
    for r in preset().rules {
        let is_lore = lore.iter().any(|p| r.name.starts_with(p));
        assert_eq!(r.enabled, !is_lore, "{}", r.name);
    }
}
