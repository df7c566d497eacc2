//! The engine on a `State`, no network: the level and counter rules, drift, modes, rate
//! limits, failing actions, missing configs, schedules, webhooks, the trigger index.

use serde_json::{Value, json};

use super::def::RuleFile;
use super::engine::{CounterOp, Trigger, drift_step};
use super::validate::RuleSet;
use crate::core::change::{Effects, State};
use crate::core::event::Event;

const T0: i64 = 1_800_000_000_000;

const LEVELS: &str = r#"
version = 1
[game]
initial_level = "white"
initial_counter = -1

[[levels]]
name = "white"
id = 1
threshold = -1
[[levels]]
name = "green"
id = 4
ingame = true
threshold = 1
failure = 50
success = -25
[[levels]]
name = "yellow"
id = 5
ingame = true
threshold = 500
failure = 25
[[levels]]
name = "red"
id = 6
ingame = true
threshold = 1000
failure = 25
[[levels]]
name = "black"
id = 7
threshold = -100
"#;

fn state(extra: &str) -> State {
    let cfg = crate::rules_cli::default_core_for_tests();
    let mut st = State::new(cfg, T0);
    st.load_types(Vec::new(), T0).unwrap();
    let file = RuleFile::from_toml(&format!("{LEVELS}\n{extra}")).unwrap();
    let mut fx = Effects::new(T0);
    st.game_import(&mut fx, file, "test")
        .unwrap_or_else(|e| panic!("{e:?}"));
    st
}

fn info(device: &str, datahold: Value, at: i64) -> Trigger {
    Trigger::from_parts(
        "info",
        Some(device),
        "device",
        at,
        json!({ "datahold": datahold }),
        0,
    )
    .unwrap()
}

fn kinds(fx: &Effects) -> Vec<String> {
    fx.events.iter().map(|e| e.event.kind()).collect()
}

#[test]
fn the_counter_moves_the_level_only_while_ingame() {
    let mut st = state("");
    let mut fx = Effects::new(T0);
    // White is not ingame: the counter does not move the level.
    st.game_counter(&mut fx, CounterOp::Set(700), None, "admin");
    assert_eq!(st.game.state.level, "white");
    st.game_set_level(&mut fx, "green", None, true, "admin")
        .unwrap();
    assert_eq!(
        st.game.state.counter, 1,
        "an operator's set resets to the threshold"
    );
    for (counter, level) in [
        (499, "green"),
        (500, "yellow"),
        (999, "yellow"),
        (1000, "red"),
        (1500, "red"),
        (999, "yellow"),
        (0, "green"),
        (-300, "green"),
        (1, "green"),
    ] {
        st.game_counter(&mut fx, CounterOp::Set(counter), None, "admin");
        assert_eq!(st.game.state.level, level, "counter {counter}");
    }
    // A rule's set does not reset; black is not ingame: the counter stays.
    st.game_set_level(&mut fx, "black", None, false, "rule:x")
        .unwrap();
    assert_eq!(st.game.state.counter, 1);
    st.game_counter(&mut fx, CounterOp::Add(5000), None, "admin");
    assert_eq!(st.game.state.level, "black");
}

#[test]
fn drift_is_damped_at_the_borders() {
    let st = state("");
    let rules = &st.game.rules;
    let (green, yellow, red) = (1, 2, 3);
    let cases = [
        // Up at green: stops at yellow's threshold + 30, then holds.
        (green, 400, 50, 450),
        (green, 500, 50, 530),
        (green, 530, 50, 530),
        (green, 600, 50, 600),
        // Down at yellow: stops at its threshold − 30 (green is ingame).
        (yellow, 520, -50, 470),
        (yellow, 470, -50, 470),
        // Down at green: white is not ingame, so it stops at the border (the threshold).
        (green, 20, -50, 1),
        (green, 1, -50, 1),
        // Up at red: the last range is open-ended.
        (red, 1200, 100, 1300),
    ];
    for (level, counter, by, want) in cases {
        assert_eq!(
            drift_step(rules, level, counter, by),
            want,
            "level {level} counter {counter} by {by}"
        );
    }
}

#[test]
fn drift_moves_the_counter_on_the_tick() {
    let mut st = state("");
    // Green drifts up by 10 every 60 s.
    let mut file = st.game.rules.file.clone();
    file.levels[1].drift = Some(super::def::Drift {
        every_secs: 60,
        by: 10,
    });
    let mut fx = Effects::new(T0);
    st.game_import(&mut fx, file, "test").unwrap();
    st.game_set_level(&mut fx, "green", None, true, "admin")
        .unwrap();
    for (at, want) in [
        (T0, 1),
        (T0 + 30_000, 1),
        (T0 + 60_000, 11),
        (T0 + 90_000, 11),
        (T0 + 120_000, 21),
    ] {
        let mut fx = Effects::new(at);
        st.game_tick(&mut fx);
        assert_eq!(st.game.state.counter, want, "at +{} s", (at - T0) / 1000);
    }
}

const DELAYED: &str = r#"
[[rules]]
name = "slow"
mode = "MODE"
when = { event = "info", type = "lock" }
then = [{ log = "start" }, { delay = { secs = 10 } }, { log = "end {event.datahold.n}" }]
"#;

/// Fires three triggers 1 s apart and lets the delays run out; the log lines per mode.
fn mode_run(mode: &str) -> Vec<String> {
    let mut st = state(&DELAYED.replace("MODE", mode));
    let mut lines = Vec::new();
    for i in 0..3 {
        let at = T0 + i * 1000;
        let mut fx = Effects::new(at);
        let f = st.fire(&mut fx, &info("lock/ab", json!({"n": i}), at));
        lines.extend(f.logs.into_iter().map(|(_, l)| l));
        for t in f.traces {
            if let Some(s) = t.skipped {
                lines.push(format!("skipped: {s}"));
            }
        }
    }
    for s in 1..40 {
        let mut fx = Effects::new(T0 + s * 1000);
        let f = st.game_tick(&mut fx);
        lines.extend(f.logs.into_iter().map(|(_, l)| l));
    }
    lines
}

#[test]
fn modes_decide_what_a_second_firing_does_while_a_run_is_in_progress() {
    assert_eq!(
        mode_run("single"),
        [
            "start",
            "skipped: single mode: a run of this rule is in progress",
            "skipped: single mode: a run of this rule is in progress",
            "end 0"
        ]
    );
    // Restart: each firing cancels the run in progress; only the last one ends.
    assert_eq!(mode_run("restart"), ["start", "start", "start", "end 2"]);
    // Queued: one at a time, in order.
    let q = mode_run("queued");
    assert_eq!(q.iter().filter(|l| *l == "start").count(), 3, "{q:?}");
    let ends: Vec<&String> = q.iter().filter(|l| l.starts_with("end")).collect();
    assert_eq!(ends, ["end 0", "end 1", "end 2"], "{q:?}");
    // Parallel: side by side.
    assert_eq!(
        mode_run("parallel"),
        ["start", "start", "start", "end 0", "end 1", "end 2"]
    );
}

#[test]
fn a_rule_over_its_rate_is_paused_and_reported() {
    let mut st = state(
        r#"
[[rules]]
name = "chatty"
max_firings_per_sec = 5
when = { event = "info" }
then = [{ log = "x" }]
"#,
    );
    let mut fired = 0;
    let mut fx = Effects::new(T0);
    for _ in 0..8 {
        fired += st.fire(&mut fx, &info("lock/ab", json!({}), T0)).logs.len();
    }
    assert_eq!(fired, 5, "the burst is the rate");
    assert_eq!(
        kinds(&fx).iter().filter(|k| *k == "rule_paused").count(),
        1,
        "reported once"
    );
    // Paused for 10 s even though tokens come back.
    let mut fx = Effects::new(T0 + 5000);
    assert!(
        st.fire(&mut fx, &info("lock/ab", json!({}), T0 + 5000))
            .logs
            .is_empty()
    );
    let mut fx = Effects::new(T0 + 10_001);
    assert_eq!(
        st.fire(&mut fx, &info("lock/ab", json!({}), T0 + 10_001))
            .logs
            .len(),
        1
    );
}

#[test]
fn a_failing_action_does_not_stop_the_others() {
    let mut st = state(
        r#"
[[rules]]
name = "mixed"
when = { event = "info" }
then = [{ engage = { device = "acon/404", cell = 1 } }, { log = "after" }, { counter = { add = 5 } }]
"#,
    );
    let mut fx = Effects::new(T0);
    let f = st.fire(&mut fx, &info("lock/ab", json!({}), T0));
    let t = &f.traces[0];
    let results: Vec<&str> = t.actions.iter().map(|a| a.result.as_str()).collect();
    assert_eq!(results, ["error", "ok", "ok"]);
    assert!(t.outcome().starts_with("error: "), "{}", t.outcome());
    assert_eq!(st.game.state.counter, 4);
    assert_eq!(f.logs.len(), 1);
}

#[test]
fn a_level_without_a_config_is_an_error_event_and_nothing_is_sent() {
    let mut st = state(
        r#"
[types.rgb.levels]
white = { RGB = "FFFFFF/1000/0/C" }
"#,
    );
    let mut fx = Effects::new(T0);
    st.game_set_level(&mut fx, "white", None, true, "admin")
        .unwrap();
    assert_eq!(fx.publishes.len(), 1, "white has a config: one broadcast");
    assert_eq!(fx.publishes[0].topic, "rgb/all/cup");
    let mut fx = Effects::new(T0);
    st.game_set_level(&mut fx, "green", None, true, "admin")
        .unwrap();
    assert!(fx.publishes.is_empty());
    let failed: Vec<&Event> = fx
        .events
        .iter()
        .map(|e| &e.event)
        .filter(|e| matches!(e, Event::GamePushFailed { .. }))
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", kinds(&fx));
}

#[test]
fn schedules_fire_at_their_minute() {
    let mut st = state(
        r#"
[[rules]]
name = "every-minute"
when = { schedule = "* * * * *" }
then = [{ counter = { add = 1 } }]
"#,
    );
    let mut file = st.game.rules.file.clone();
    file.game.timezone = Some("UTC".into());
    st.game_import(&mut Effects::new(T0), file, "test").unwrap();
    let start = st.game.state.counter;
    // The first tick learns the next minute; ticks inside it fire once.
    let minute = (T0 / 60_000 + 1) * 60_000;
    for at in [
        T0,
        minute - 1,
        minute,
        minute + 250,
        minute + 59_000,
        minute + 60_000,
    ] {
        let mut fx = Effects::new(at);
        st.game_tick(&mut fx);
    }
    assert_eq!(st.game.state.counter, start + 2);
}

#[test]
fn a_webhook_is_queued_with_its_body_and_never_awaited() {
    let mut st = state(
        r#"
[webhooks.scoreboard]
url = "http://127.0.0.1:9/hook"

[[rules]]
name = "tell"
when = { event = "info" }
then = [{ webhook = { name = "scoreboard", body = { lock = "{device}", level = { "$" = "level_id" } }, retries = 2 } }]
"#,
    );
    let mut fx = Effects::new(T0);
    st.fire(&mut fx, &info("lock/ab", json!({}), T0));
    assert_eq!(fx.webhooks.len(), 1);
    let call = &fx.webhooks[0];
    assert_eq!(call.url, "http://127.0.0.1:9/hook");
    assert_eq!(call.body, json!({"lock": "lock/ab", "level": 1}));
    assert_eq!(call.retries, 2);
}

#[test]
fn rules_are_looked_up_by_trigger_only() {
    let mut extra = String::new();
    for i in 0..100 {
        extra.push_str(&format!("[[rules]]\nname = \"sup-{i}\"\nwhen = {{ event = \"sup\" }}\nthen = [{{ log = \"x\" }}]\n"));
    }
    extra.push_str("[[rules]]\nname = \"on-info\"\nwhen = { event = \"info\", type = \"pwr\" }\nthen = [{ log = \"x\" }]\n");
    let mut st = state(&extra);
    let mut fx = Effects::new(T0);
    let f = st.fire(&mut fx, &info("lock/ab", json!({}), T0));
    assert!(
        f.traces.is_empty(),
        "the INFO's one candidate is for another type"
    );
    let f = st.fire(&mut fx, &info("pwr/all", json!({}), T0));
    assert_eq!(f.traces.len(), 1, "only the INFO rule was evaluated");
    assert_eq!(st.game.rules.candidates("event:sup").len(), 100);
}

#[test]
fn a_game_time_timer_waits_through_a_pause() {
    let mut st = state("");
    let mut fx = Effects::new(T0);
    st.game_start_run(&mut fx, "admin").unwrap();
    st.game_start_timer(&mut fx, "g", 10, true, "admin")
        .unwrap();
    let fired = |st: &mut State, at: i64| {
        let mut fx = Effects::new(at);
        st.game_tick(&mut fx);
        fx.events
            .iter()
            .any(|e| matches!(&e.event, Event::TimerFired { name, .. } if name == "g"))
    };
    assert!(!fired(&mut st, T0 + 5000));
    let mut fx = Effects::new(T0 + 5000);
    st.game_pause_run(&mut fx, true, "admin").unwrap();
    assert!(
        !fired(&mut st, T0 + 60_000),
        "paused: game time stands still"
    );
    let mut fx = Effects::new(T0 + 60_000);
    st.game_pause_run(&mut fx, false, "admin").unwrap();
    assert!(!fired(&mut st, T0 + 64_000));
    assert!(
        fired(&mut st, T0 + 65_000),
        "5 s before the pause and 5 s after"
    );
}

#[test]
fn the_stored_state_and_rules_load_back() {
    let mut st = state("[[variables]]\nname = \"v\"\ntype = \"int\"\ninitial = 3\n");
    let mut fx = Effects::new(T0);
    st.game_set_level(&mut fx, "yellow", None, true, "admin")
        .unwrap();
    st.game_start_timer(&mut fx, "t", 60, false, "admin")
        .unwrap();
    let rules = fx.writes.iter().rev().find_map(|w| match w {
        crate::store::Write::Game { key, data } if key == "rules" => Some(data.clone()),
        _ => None,
    });
    let state_row = fx.writes.iter().rev().find_map(|w| match w {
        crate::store::Write::Game { key, data } if key == "state" => Some(data.clone()),
        _ => None,
    });
    let mut back = State::new(crate::rules_cli::default_core_for_tests(), T0);
    let access_row = fx.writes.iter().rev().find_map(|w| match w {
        crate::store::Write::Game { key, data } if key == "access" => Some(data.clone()),
        _ => None,
    });
    back.game_load(
        Some(&st.game.rules.text),
        state_row.as_deref(),
        access_row.as_deref(),
    )
    .unwrap();
    assert!(
        rules.is_none(),
        "a level set writes the state, not the rules"
    );
    assert_eq!(back.game.state, st.game.state);
    assert_eq!(back.game.rules.text, st.game.rules.text);
    assert_eq!(
        RuleSet::from_toml(&back.game.rules.text, &[])
            .map(|r| r.hash)
            .ok(),
        Some(st.game.rules.hash.clone())
    );
}

#[test]
fn replay_keeps_another_unit_in_the_operators_millisecond() {
    // A run started by an operator (its unit: the start and a push the server made), and in
    // the same millisecond a lock came online (the server's event, another unit): the
    // coming online is an input, its rule fires again; the push is not.
    let mut st = state(
        "[[rules]]\nname = \"welcome\"\nwhen = { event = \"online\" }\nthen = [{ counter = { add = 1 } }]\n",
    );
    let ev = |seq: i64, kind: &str, device: Option<&str>, actor: &str, data: Value| {
        crate::store::StoredEvent {
            seq,
            record: crate::store::EventRecord {
                at: T0,
                device: device.map(str::to_string),
                kind: kind.to_string(),
                actor: actor.to_string(),
                data: data.to_string(),
            },
        }
    };
    let start = super::Snapshot {
        level: "green".into(),
        counter: 1,
        vars: Default::default(),
    };
    let events = [
        ev(
            1,
            "run_started",
            None,
            "admin",
            json!({"run": 1, "initial": start}),
        ),
        // The run's own push to a lock (the server's, in the run's unit): not an input.
        ev(
            2,
            "cup",
            Some("lock/aabbccddeeff"),
            "server",
            json!({"task": 1}),
        ),
        ev(
            3,
            "online",
            Some("lock/aabbccddeeff"),
            "server",
            json!({"reason": "first packet", "command": "info"}),
        ),
    ];
    let out = st.replay(&events, &start, T0, T0 + 1);
    assert_eq!(out.inputs, 2, "{out:#?}");
    assert_eq!(out.replayed_firings, 1, "{out:#?}");
    assert_eq!(out.replayed_end.counter, 2, "{out:#?}");
}
