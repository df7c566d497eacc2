//! The game layer end to end: the SKABEN preset through the embedded broker and a real ACon
//! connection, timers across a restart, runs, dry runs against live firings, loop protection,
//! validation on save, the file's round trip, and replays.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{Bench, Broker, Server, TOKEN, msg, settings};
use gatehouse::core::game::RuleFile;

const PRESET: &str = include_str!("../../../../presets/skaben.toml");
const LOCK: &str = "b827eb0a1b2c";

async fn import(s: &Server, text: &str) -> (u16, Value) {
    let r = s
        .http
        .post(s.url("/api/rules/import"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/toml")
        .body(text.to_string())
        .send()
        .await
        .unwrap();
    crate::common::decode(r).await
}

async fn export(s: &Server) -> String {
    let r = s
        .http
        .get(s.url("/api/rules/export"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

async fn set_level(s: &Server, level: &str) -> Value {
    let (st, v) = s
        .send(
            Method::PUT,
            "/api/state/level",
            Some(json!({"level": level, "reason": "test"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Polls `GET path` until `pred` holds (10 s at most): what the store holds runs behind the
/// state in memory by the commits in flight.
async fn until(s: &Server, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..500 {
        let (status, v) = s.get(path).await;
        if status == 200 && pred(&v) {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("GET {path} never matched; last: {last:#}");
}

fn nonempty(v: &Value) -> bool {
    v.as_array().is_some_and(|a| !a.is_empty())
}

fn preset() -> RuleFile {
    RuleFile::from_toml(PRESET).unwrap()
}

/// The preset's config of a dumb type at a level.
fn level_config(ty: &str, level: &str) -> Value {
    preset().types[ty].levels[level].clone()
}

/// Waits until `pred` holds for GET /api/state.
async fn until_state(b: &Bench, pred: impl Fn(&Value) -> bool) -> Value {
    b.until("/api/state", pred).await
}

/// The next CUP on `topic` whose datahold satisfies `pred` (earlier ones skipped).
async fn cup_where(
    p: &mut crate::common::Prop,
    topic: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..50 {
        let v = p.recv_on(topic).await;
        if pred(&v["datahold"]) {
            return v;
        }
    }
    panic!("no CUP on {topic} matched");
}

async fn preset_bench() -> Bench {
    let b = Bench::start(Broker::Embedded).await;
    let (st, v) = import(&b.server, PRESET).await;
    assert_eq!(st, 200, "{v}");
    b
}

fn lock_attempt(success: bool) -> Value {
    json!({"timestamp": 1, "datahold": {"type": "access", "content": "999999", "success": success}})
}

/// The shield's `{AUX}` at blue moves the level to cyan, and `rgb/all/cup` carries the
/// preset's cyan config.
#[tokio::test]
async fn the_shield_at_blue_moves_the_game_to_cyan_and_the_lamps_follow() {
    let b = preset_bench().await;
    let mut rgb = b.prop("rgb-lamp", &["rgb/all/cup"]).await;
    let pwr = b.prop("pwr-shield", &["pwr/all/cup"]).await;
    set_level(&b.server, "blue").await;
    let blue = level_config("rgb", "blue");
    cup_where(&mut rgb, "rgb/all/cup", |d| *d == blue).await;
    pwr.send(
        "ask/pwr/all/info",
        json!({"timestamp": 0, "datahold": {"powerstate": "{AUX}"}}),
    )
    .await;
    let s = until_state(&b, |v| v["level"] == "cyan").await;
    assert_eq!(s["level_id"], 2);
    assert_eq!(
        s["counter"], -1,
        "a rule's level set does not reset the counter"
    );
    let cyan = level_config("rgb", "cyan");
    cup_where(&mut rgb, "rgb/all/cup", |d| *d == cyan).await;
    // The change is an event with its cause: the rule and its firing.
    // (The state in memory runs ahead of the store by the commits in flight: wait for them.)
    let ev = b
        .until("/api/events?kind=state_changed&limit=10", |v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|e| e["data"]["to"] == "cyan"))
        })
        .await;
    let change = ev
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"]["to"] == "cyan")
        .expect("the level change")
        .clone();
    assert_eq!(change["actor"], "rule:shield-aux-at-blue");
    assert_eq!(change["data"]["cause"]["rule"], "shield-aux-at-blue");
    let firing = change["data"]["cause"]["firing"].clone();
    let (_, traces) = b.server.get("/api/rules/shield-aux-at-blue/traces").await;
    let t = &traces[0]["trace"];
    assert_eq!(
        t["firing"], firing,
        "the effect links to the firing's trace"
    );
    assert_eq!(t["trigger"]["datahold"]["powerstate"], "{AUX}");
    // The CUP to the lamps links back to the rule too.
    let (_, cups) = b
        .server
        .get("/api/events?device=rgb/all&kind=cup&limit=5")
        .await;
    assert_eq!(cups[0]["data"]["cause"]["firing"], firing, "{cups}");
    // The PWR step then reaches green, the first ingame level.
    pwr.send(
        "ask/pwr/all/info",
        json!({"timestamp": 0, "datahold": {"powerstate": " pwr "}}),
    )
    .await;
    until_state(&b, |v| v["level"] == "green").await;
}

/// Failed lock attempts at green add the level's failure amount; crossing 500 makes it
/// yellow, and the alert scales get the counter and the new level.
#[tokio::test]
async fn failed_lock_attempts_cross_into_yellow_and_the_scales_follow() {
    let b = preset_bench().await;
    let mut scl = b.prop("scale", &["scl/all/cup"]).await;
    let lock = b.prop("lock", &[]).await;
    let s = set_level(&b.server, "green").await;
    assert_eq!(
        s["counter"], 1,
        "an operator's level set resets the counter to the threshold"
    );
    // A success counts nothing; each failure adds 50.
    lock.send(&format!("ask/lock/{LOCK}/info"), lock_attempt(true))
        .await;
    for _ in 0..10 {
        lock.send(&format!("ask/lock/{LOCK}/info"), lock_attempt(false))
            .await;
    }
    let s = until_state(&b, |v| v["counter"] == 501).await;
    assert_eq!(s["level"], "yellow");
    let last = cup_where(&mut scl, "scl/all/cup", |d| d["level"] == 501).await;
    assert_eq!(
        last["datahold"],
        json!({"level": 501, "state": "yellow", "borders": [334, 667, 1000]})
    );
    // Every attempt is logged by the access-log rule.
    // (The state in memory runs ahead of the store by the commits in flight: wait for them.)
    let traces = b
        .until("/api/rules/lock-access-log/traces?limit=20", |v| {
            v.as_array().is_some_and(|a| a.len() >= 11)
        })
        .await;
    assert_eq!(traces.as_array().unwrap().len(), 11);
    // At yellow a failure adds 25.
    lock.send(&format!("ask/lock/{LOCK}/info"), lock_attempt(false))
        .await;
    until_state(&b, |v| v["counter"] == 526).await;
}

/// A lock's pushed `alert` and `acl` follow the level; an operator's level set resets the
/// counter.
#[tokio::test]
async fn locks_get_alert_and_acl_for_the_level() {
    let b = preset_bench().await;
    let topic = format!("lock/{LOCK}/cup");
    let mut lock = b.prop("lock", &[&topic]).await;
    // The lock asks for its config (and is registered).
    lock.send(
        &format!("ask/lock/{LOCK}/cup"),
        json!({"timestamp": 0, "datahold": {"request": "all"}, "task_id": "1"}),
    )
    .await;
    lock.recv_on(&topic).await;
    let acl_at = |level_id: i64| -> Value {
        let mut m = serde_json::Map::new();
        for c in preset().access {
            let ids: Vec<Value> = c
                .levels
                .iter()
                .map(|l| json!(preset().levels.iter().find(|d| &d.name == l).unwrap().id))
                .collect();
            m.insert(c.code, Value::Array(ids));
        }
        let _ = level_id;
        Value::Object(m)
    };
    for (level, id) in [("green", 4), ("red", 6), ("black", 7)] {
        set_level(&b.server, level).await;
        let cup = cup_where(&mut lock, &topic, |d| d["alert"] == json!(id.to_string())).await;
        assert_eq!(cup["datahold"]["acl"], acl_at(id), "{cup}");
        let want_blocked = level == "black";
        assert_eq!(
            cup["datahold"]["blocked"],
            json!(want_blocked),
            "{level}: {cup}"
        );
        let s = b.server.get("/api/state").await.1;
        let threshold = preset()
            .levels
            .iter()
            .find(|l| l.name == level)
            .unwrap()
            .threshold;
        assert_eq!(
            s["counter"], threshold,
            "the operator's set reset the counter"
        );
    }
    // The device page shows the rendered config.
    let (_, page) = b.server.get(&format!("/api/devices/lock/{LOCK}")).await;
    assert_eq!(page["desired"]["config"]["alert"], "7", "{page}");
}

/// An ACon cell opening fires a rule that engages another cell: the board's next answer
/// carries it.
#[tokio::test]
async fn a_cell_opening_engages_another_cell() {
    let s = Server::start().await;
    let rules = r#"
version = 1

[[rules]]
name = "open-3-gives-5"
when = { event = "cell_opened", device = "acon/1953" }
if = { "event.cell" = 3 }
then = [{ engage = { device = "acon/1953", cell = 5, code = "4321", minutes = 10 } }]
"#;
    let (st, v) = import(&s, rules).await;
    assert_eq!(st, 200, "{v}");
    let mut board = s.board().await;
    board.exchange(&msg("1953", 1, "BOX_ACC=0\n")).await;
    board.exchange(&msg("1953", 2, "BOX_ACC=3\n")).await;
    let mut carried = None;
    for send in 3..100 {
        let a = board.exchange(&msg("1953", send, "BOX_ACC=3\n")).await;
        if let Some(c) = a.cells.iter().find(|c| c.cell == 5) {
            carried = Some((c.code.clone(), c.minutes));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, minutes) = carried.expect("the board's answer carries cell 5");
    assert_eq!(code, "4321");
    assert!((9..=10).contains(&minutes), "{minutes}");
    // The engagement's event links back to the rule.
    let ev = until(
        &s,
        "/api/events?device=acon/1953&kind=cell_engaged",
        nonempty,
    )
    .await;
    assert_eq!(ev[0]["actor"], "rule:open-3-gives-5");
    assert_eq!(ev[0]["data"]["cause"]["rule"], "open-3-gives-5");
    // The same opening again (an identical frame) counts nothing: one firing.
    let (_, traces) = s.get("/api/rules/open-3-gives-5/traces").await;
    assert_eq!(traces.as_array().unwrap().len(), 1);
}

/// A timer set before a restart fires after it, late, and says by how much.
#[tokio::test]
async fn a_timer_set_before_a_restart_fires_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let running = gatehouse::server::start(settings(dir.path()))
        .await
        .unwrap();
    let s = Server {
        running: Some(running),
        _dir: tempfile::tempdir().unwrap(),
        http: reqwest::Client::new(),
    };
    let rules = r#"
version = 1

[[variables]]
name = "rang"
type = "bool"
initial = false

[[rules]]
name = "on-bell"
when = { timer = "bell" }
then = [{ set_var = { name = "rang", value = true } }]
"#;
    assert_eq!(import(&s, rules).await.0, 200);
    let (st, v) = s
        .send(
            Method::POST,
            "/api/timers",
            Some(json!({"name": "bell", "secs": 1})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["timers"][0]["name"], "bell");
    let Server { running, .. } = s;
    running.unwrap().shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let running = gatehouse::server::start(settings(dir.path()))
        .await
        .unwrap();
    let s = Server {
        running: Some(running),
        _dir: tempfile::tempdir().unwrap(),
        http: reqwest::Client::new(),
    };
    let mut fired = None;
    for _ in 0..100 {
        let (_, state) = s.get("/api/state").await;
        if state["variables"]["rang"] == true {
            fired = Some(state);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = fired.expect("the timer fired after the restart");
    assert!(state["timers"].as_array().unwrap().is_empty(), "{state}");
    let ev = until(&s, "/api/events?kind=timer_fired", nonempty).await;
    let late = ev[0]["data"]["late_ms"].as_i64().unwrap();
    assert!(late >= 500, "fired late, with the delay recorded: {late}");
    let traces = until(&s, "/api/rules/on-bell/traces", nonempty).await;
    assert_eq!(traces[0]["trace"]["trigger"]["late_ms"], late);
    s.running.unwrap().shutdown().await.unwrap();
}

/// Pausing a run stops game time, and a game-time timer with it.
#[tokio::test]
async fn pause_stops_game_time() {
    let s = Server::start().await;
    let (st, v) = s.send(Method::POST, "/api/runs", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["run"]["state"], "running");
    let (st, v) = s
        .send(
            Method::POST,
            "/api/timers",
            Some(json!({"name": "g", "secs": 1, "game_time": true})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = s.send(Method::POST, "/api/runs/current/pause", None).await;
    assert_eq!(v["run"]["state"], "paused");
    let g1 = v["run"]["game_ms"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, v) = s.get("/api/state").await;
    assert_eq!(
        v["run"]["game_ms"].as_i64().unwrap(),
        g1,
        "game time stands still while paused"
    );
    assert_eq!(
        v["timers"][0]["name"], "g",
        "the game-time timer has not fired: {v}"
    );
    assert!(
        v["timers"][0]["due_at"].is_null(),
        "no due time while paused"
    );
    let (_, v) = s.send(Method::POST, "/api/runs/current/resume", None).await;
    assert_eq!(v["run"]["state"], "running");
    let mut gone = false;
    for _ in 0..60 {
        let (_, v) = s.get("/api/timers").await;
        if v.as_array().unwrap().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the timer fired once game time ran again");
    let (_, v) = s.send(Method::POST, "/api/runs/current/end", None).await;
    assert!(v["run"].is_null(), "{v}");
    let (_, runs) = s.get("/api/runs").await;
    assert_eq!(runs[0]["state"], "ended");
    let (_, tl) = s.get("/api/runs/1/timeline").await;
    let kinds: Vec<&str> = tl["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "timer_started",
            "run_paused",
            "run_resumed",
            "timer_fired",
            "run_ended"
        ],
        "{tl}"
    );
}

fn masked(mut t: Value) -> Value {
    t["firing"] = Value::Null;
    t["trigger"]["at"] = Value::Null;
    t
}

/// A dry run's trace equals the live firing's on the same input and state.
#[tokio::test]
async fn dry_run_traces_equal_live_traces() {
    let b = preset_bench().await;
    set_level(&b.server, "green").await;
    let sample = json!({"event": {"kind": "info", "device": format!("lock/{LOCK}"), "datahold": {"type": "access", "content": "999999", "success": false}}});
    let (st, dry) = b
        .server
        .send(Method::POST, "/api/rules/test", Some(sample))
        .await;
    assert_eq!(st, 200, "{dry}");
    // Nothing happened.
    assert_eq!(b.server.get("/api/state").await.1["counter"], 1);
    let lock = b.prop("lock", &[]).await;
    lock.send(&format!("ask/lock/{LOCK}/info"), lock_attempt(false))
        .await;
    until_state(&b, |v| v["counter"] == 51).await;
    let live = until(&b.server, "/api/rules/lock-failure-adds/traces", nonempty).await;
    let live = masked(live[0]["trace"].clone());
    let dry_t = dry["traces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["rule"] == "lock-failure-adds")
        .unwrap()
        .clone();
    let mut dry_t = masked(dry_t);
    // The live trigger has what the store keeps of an INFO (no sample-only keys).
    dry_t["trigger"]["actor"] = live["trigger"]["actor"].clone();
    assert_eq!(dry_t, live);
}

/// A pair of rules that trigger each other is stopped at the depth limit and reported; the
/// server goes on.
#[tokio::test]
async fn a_looping_rule_pair_stops_at_the_depth_limit() {
    let s = Server::start().await;
    let rules = r#"
version = 1

[[variables]]
name = "n"
type = "int"
initial = 0

[[rules]]
name = "follow"
when = { state = "counter" }
then = [{ set_var = { name = "n", value = { "$" = "counter" } } }]

[[rules]]
name = "bump"
when = { state = "n" }
then = [{ counter = { add = 1 } }]
"#;
    assert_eq!(import(&s, rules).await.0, 200);
    let (st, _) = s
        .send(Method::POST, "/api/state/counter", Some(json!({"add": 1})))
        .await;
    assert_eq!(st, 200);
    let mut stopped = Value::Null;
    for _ in 0..100 {
        let (_, ev) = s.get("/api/events?kind=rule_chain_stopped").await;
        if !ev.as_array().unwrap().is_empty() {
            stopped = ev[0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(stopped["data"]["limit"], 8, "{stopped}");
    assert_eq!(stopped["data"]["depth"], 9);
    assert_eq!(stopped["data"]["rule"], "follow");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, state) = s.get("/api/state").await;
    // 1 (operator) + 4 bumps (depths 2, 4, 6, 8); `follow` at depth 9 was stopped.
    assert_eq!(state["counter"], 5, "{state}");
    assert_eq!(
        state["variables"]["n"], 4,
        "the stopped firing changed nothing"
    );
}

/// Validation on save: the error names the rule, the field and the reason; a bad expression
/// says where.
#[tokio::test]
async fn bad_rules_are_refused_on_save_with_the_reason() {
    let s = Server::start().await;
    assert_eq!(import(&s, PRESET).await.0, 200);
    let cases = [
        (
            json!({"name": "x", "when": {"event": "info", "type": "lamp"}, "then": [{"log": "hi"}]}),
            "when.type",
            "unknown device type",
        ),
        (
            json!({"name": "x", "when": {"event": "infoo"}, "then": [{"log": "hi"}]}),
            "when.event",
            "unknown event kind",
        ),
        (
            json!({"name": "x", "when": {"event": "info"}, "then": [{"set_level": "purple"}]}),
            "then[0].set_level",
            "unknown level",
        ),
        (
            json!({"name": "x", "when": {"event": "info"}, "if": {"var.nope": 1}, "then": [{"log": "hi"}]}),
            "if.var.nope",
            "unknown variable",
        ),
        (
            json!({"name": "x", "when": {"event": "info"}, "then": [{"log": "{levle}"}]}),
            "then[0].log",
            "unknown name",
        ),
        (
            json!({"name": "x", "when": {"event": "info"}, "if": {"expr": "level == "}, "then": [{"log": "hi"}]}),
            "if.expr",
            "line 1, column",
        ),
        (
            json!({"name": "x", "when": {"event": "info"}, "if": {"event.datahold.powerstate": {"eqq": "aux"}}, "then": [{"log": "hi"}]}),
            "if.event.datahold.powerstate",
            "unknown test eqq",
        ),
        (
            json!({"name": "x", "when": {"event": "info"}, "if": {"expr": "levle == \"red\""}, "then": [{"log": "hi"}]}),
            "if.expr",
            "line 1, column 1",
        ),
    ];
    for (rule, field, reason) in cases {
        let (st, v) = s
            .send(Method::PUT, "/api/rules/x", Some(rule.clone()))
            .await;
        assert_eq!(st, 400, "{rule}: {v}");
        assert_eq!(v["rule"], "x", "{v}");
        assert_eq!(v["field"], field, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains(reason),
            "{reason}: {v}"
        );
    }
    // Nothing was saved.
    assert_eq!(s.get("/api/rules/x").await.0, 404);
    // A TOML error in an import names the line.
    let (st, v) = import(&s, "version = 1\n[[rules]\n").await;
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap().contains("line 2"), "{v}");
    // An import with the wrong content type is refused.
    let (st, _) = s
        .send(Method::POST, "/api/rules/import", Some(json!({})))
        .await;
    assert_eq!(st, 415);
}

/// export → import → export gives the same bytes; the preset's rules survive it.
#[tokio::test]
async fn export_import_export_is_byte_identical() {
    let s = Server::start().await;
    assert_eq!(import(&s, PRESET).await.0, 200);
    let first = export(&s).await;
    assert_eq!(
        RuleFile::from_toml(&first).unwrap(),
        preset(),
        "the export is the preset"
    );
    let (st, v) = import(&s, &first).await;
    assert_eq!(st, 200, "{v}");
    let second = export(&s).await;
    assert_eq!(first, second);
}

/// Replaying a recorded run with a changed threshold reports what would have differed; the
/// same rules replayed report nothing.
#[tokio::test]
async fn replay_reports_what_a_changed_threshold_changes() {
    let b = preset_bench().await;
    let lock = b.prop("lock", &[]).await;
    set_level(&b.server, "green").await;
    let (st, v) = b.server.send(Method::POST, "/api/runs", None).await;
    assert_eq!(st, 200, "{v}");
    let run = v["run"]["id"].as_u64().unwrap();
    for i in 0..10 {
        lock.send(&format!("ask/lock/{LOCK}/info"), lock_attempt(false))
            .await;
        until_state(&b, |v| v["counter"] == 1 + 50 * (i + 1)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until_state(&b, |v| v["level"] == "yellow").await;
    // The operator takes 100 off: back to green (the level follows the counter).
    let (st, v) = b
        .server
        .send(
            Method::POST,
            "/api/state/counter",
            Some(json!({"add": -100, "reason": "mercy"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["counter"].as_i64(), v["level"].as_str()),
        (Some(401), Some("green"))
    );
    assert_eq!(
        b.server
            .send(Method::POST, "/api/runs/current/end", None)
            .await
            .0,
        200
    );

    // The same rules: nothing differs.
    let (st, same) = b
        .server
        .send(Method::POST, "/api/rules/replay", Some(json!({"run": run})))
        .await;
    assert_eq!(st, 200, "{same}");
    assert_eq!(same["differences"], json!([]), "{same:#}");
    // The inputs: the lock's registration and coming online, its 10 INFOs, the operator's
    // counter change, the run's start and end.
    assert_eq!(same["inputs"], 15, "{same:#}");
    assert_eq!(same["recorded_firings"], 20);
    assert_eq!(same["replayed_firings"], 20);
    assert_eq!(same["replayed_end"], same["recorded_end"]);
    assert_eq!(same["replayed_end"]["level"], "green");

    // Yellow from 300: the crossing comes four failures earlier.
    let changed = PRESET.replacen("threshold = 500", "threshold = 300", 1);
    assert_ne!(changed, PRESET);
    let (st, r) = b
        .server
        .send(
            Method::POST,
            "/api/rules/replay",
            Some(json!({"run": run, "rules": changed})),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let diffs = r["differences"].as_array().unwrap();
    let level: Vec<(&str, &str)> = diffs
        .iter()
        .filter(|d| d["what"] == "level:green->yellow")
        .map(|d| (d["side"].as_str().unwrap(), d["at"].as_str().unwrap()))
        .collect();
    assert_eq!(level.len(), 2, "{r:#}");
    let replayed = level.iter().find(|(s, _)| *s == "only_replayed").unwrap().1;
    let recorded = level.iter().find(|(s, _)| *s == "only_recorded").unwrap().1;
    assert!(
        replayed < recorded,
        "the replayed crossing is earlier: {r:#}"
    );
    // From yellow on a failure adds 25, not 50: the replayed run reaches 401 and the
    // operator's -100 leaves it at 301, still yellow.
    assert_eq!(
        r["recorded_end"],
        json!({"level": "green", "counter": 401, "vars": {}})
    );
    assert_eq!(
        r["replayed_end"],
        json!({"level": "yellow", "counter": 301, "vars": {}}),
        "{r:#}"
    );
}

/// `gatehouse rules test` dry-runs a file on a sample without a server; `rules import` and
/// `rules export` work on a stopped server's data directory.
#[tokio::test]
async fn the_rules_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_gatehouse");
    let preset_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../presets/skaben.toml");
    let event = dir.path().join("event.json");
    std::fs::write(&event, r#"{"kind":"info","device":"pwr/all","datahold":{"powerstate":"{AUX}"},"state":{"level":"blue"}}"#).unwrap();
    let out = std::process::Command::new(bin)
        .args(["rules", "test", preset_path])
        .arg(&event)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = v["traces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["matched"] == true)
        .unwrap();
    assert_eq!(t["rule"], "shield-aux-at-blue");
    assert_eq!(t["after"]["level"], "cyan");
    assert!(
        v["publishes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p[0] == "rgb/all/cup")
    );

    // A stopped server's data directory.
    let data = dir.path().join("data");
    let running = gatehouse::server::start(settings(&data)).await.unwrap();
    running.shutdown().await.unwrap();
    let out = std::process::Command::new(bin)
        .args(["rules", "import", preset_path, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(bin)
        .args(["rules", "export", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        RuleFile::from_toml(&String::from_utf8_lossy(&out.stdout)).unwrap(),
        preset()
    );
    // A bad file is refused with the rule and the field.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = 1\n[[rules]]\nname = \"r\"\nwhen = { event = \"info\" }\nthen = [{ set_level = \"mauve\" }]\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["rules", "import"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rule \"r\": then[0].set_level: unknown level \"mauve\""),
        "{err}"
    );
    // While a server runs there, --data-dir is refused (use --url).
    let running = gatehouse::server::start(settings(&data)).await.unwrap();
    let out = std::process::Command::new(bin)
        .args(["rules", "import", preset_path, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--url"));
    let url = format!("http://{}", running.http_addr);
    // The server runs on this test's runtime: wait for the command without blocking it.
    let out = tokio::process::Command::new(bin)
        .args(["rules", "export", "--url", &url, "--token", TOKEN])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        RuleFile::from_toml(&String::from_utf8_lossy(&out.stdout)).unwrap(),
        preset(),
        "the import survived the restart"
    );
    running.shutdown().await.unwrap();
}

/// A webhook action reaches a real HTTP server with the rendered body; its result is an
/// event linked to the firing; a webhook that is down fails without holding anything up.
#[tokio::test]
async fn webhooks_are_called_and_their_results_recorded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                loop {
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = tx.send(body.to_string());
                            let _ = c
                                .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            got.clear();
                        }
                    }
                }
            });
        }
    });
    // Nothing listens on the second URL.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let s = Server::start().await;
    let rules = format!(
        r#"
version = 1

[webhooks.scoreboard]
url = "http://{addr}/hook"

[webhooks.down]
url = "http://{dead_addr}/hook"
timeout_secs = 1

[[rules]]
name = "tell"
when = {{ event = "cell_opened" }}
then = [{{ webhook = {{ name = "down" }} }}, {{ webhook = {{ name = "scoreboard", body = {{ board = "{{device}}", cell = {{ "$" = "event.cell" }} }} }} }}]
"#
    );
    let (st, v) = import(&s, &rules).await;
    assert_eq!(st, 200, "{v}");
    let mut board = s.board().await;
    board.exchange(&msg("77", 1, "BOX_ACC=0\n")).await;
    board.exchange(&msg("77", 2, "BOX_ACC=2\n")).await;
    let body = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"board": "acon/77", "cell": 2})
    );
    let mut results = Vec::new();
    for _ in 0..100 {
        let (_, ev) = s.get("/api/events?kind=webhook_result").await;
        results = ev.as_array().unwrap().clone();
        if results.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(results.len(), 2, "{results:?}");
    let ok = results
        .iter()
        .find(|e| e["data"]["name"] == "scoreboard")
        .unwrap();
    assert_eq!(ok["data"]["status"], 204);
    assert_eq!(ok["data"]["cause"]["rule"], "tell");
    let down = results
        .iter()
        .find(|e| e["data"]["name"] == "down")
        .unwrap();
    assert!(down["data"]["error"].is_string(), "{down}");
    // The board was answered all along.
    board.exchange(&msg("77", 3, "")).await;
}
