//! The game panel and the overview in headless Chromium, with the SKABEN preset loaded and
//! simulated `rgb` lamps on the embedded broker: a level button pushes the level's config to
//! the lamps and the panel follows without a reload; the overview's alarms, game panel and
//! newest events are live; a viewer sees the panels without a button or a form.

use std::time::Duration;

use fantoccini::Locator;
use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::{Browser, WAIT, first_password};
use crate::common::{Bench, Broker, Prop, TOKEN, msg};
use gatehouse::core::game::RuleFile;

const PRESET: &str = include_str!("../../../../presets/skaben.toml");
const LAMPS: [&str; 2] = ["a4cf12aabbcc", "a4cf12ddeeff"];

/// A variable the preset does not have, for the panel's variables.
const VARIABLE: &str = "\n[[variables]]\nname = \"reactor_hits\"\ntype = \"int\"\ninitial = 0\ndescription = \"Hits the reactor took\"\n";

/// A bench with the SKABEN preset imported, and `extra` appended to it.
async fn preset_bench(extra: &str) -> Bench {
    let b = Bench::start(Broker::Embedded).await;
    let r = b
        .server
        .http
        .post(b.server.url("/api/rules/import"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/toml")
        .body(format!("{PRESET}{extra}"))
        .send()
        .await
        .unwrap();
    let (st, v) = crate::common::decode(r).await;
    assert_eq!(st, 200, "{v}");
    b
}

/// The preset's `rgb` config at `level`.
fn rgb_config(level: &str) -> Value {
    RuleFile::from_toml(PRESET).unwrap().types["rgb"].levels[level].clone()
}

/// Simulated lamps: each listens to its type's broadcast and says hello once (so it is a
/// registered device).
async fn lamps(b: &Bench) -> Vec<Prop> {
    let mut out = Vec::new();
    for id in LAMPS {
        let p = b.prop(&format!("rgb-{id}"), &["rgb/all/cup"]).await;
        p.send(&format!("ask/rgb/{id}/pong"), json!({"timestamp": 1}))
            .await;
        out.push(p);
    }
    out
}

/// Waits until every lamp has received a CUP on `rgb/all/cup` carrying `want` (earlier
/// ones, of other levels, are skipped).
async fn lamps_get(lamps: &mut [Prop], want: &Value) {
    for p in lamps.iter_mut() {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match p.try_recv(left).await {
                Some((t, v)) if t == "rgb/all/cup" && v["datahold"] == *want => break,
                Some(_) => continue,
                None => panic!("a lamp never got {want}"),
            }
        }
    }
}

/// Waits for the browser's confirmation dialog (the click's handler opens it).
async fn wait_alert(b: &Browser) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(t) = b.client.get_alert_text().await {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no confirmation was asked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(b: &Browser, css: &str) -> u64 {
    b.client
        .execute(
            "return document.querySelectorAll(arguments[0]).length;",
            vec![json!(css)],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap()
}

/// The acceptance test of the game panel, on a phone: a level's button sets the level, the
/// lamps get that level's config and the panel shows it without a reload; black asks first
/// (declined: nothing is sent; accepted: the lamps go black); the counter form and a run's
/// start work from the page, a timer started elsewhere appears with its countdown, and a
/// variable is set from its form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_button_pushes_the_level_to_the_lamps_and_the_panel_follows() {
    let bench = preset_bench(VARIABLE).await;
    let s = &bench.server;
    let mut lamps = lamps(&bench).await;
    let b = Browser::start(390, 844).await;
    b.client.goto(&s.url("/game")).await.unwrap();
    b.wait_css("form.login").await;
    b.log_in("admin", &first_password(s)).await;
    b.wait_text("#game-level-now", |t| t == "white").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/game");
    b.client
        .execute("window.__still_this_page = true;", vec![])
        .await
        .unwrap();

    // Every level of the rule file is a button, in the file's order, in its colour.
    let names = b
        .client
        .execute(
            "return [...document.querySelectorAll('button.level')].map(e => e.dataset.level);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        names,
        json!(["white", "blue", "cyan", "green", "yellow", "red", "black"])
    );
    let fill = b
        .client
        .execute(
            "return getComputedStyle(document.querySelector('button.level[data-level=red] rect')).fill;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fill, json!("rgb(198, 40, 40)"), "red is #c62828");

    // Red: no question; the lamps get red's config; the panel shows red.
    b.click("button.level[data-level=red]").await;
    lamps_get(&mut lamps, &rgb_config("red")).await;
    b.wait_text("#game-level-now", |t| t == "red").await;
    b.wait_text("#game-counter-value", |t| t == "1000").await;
    b.wait_text("#game-counter", |t| {
        t.contains("below 1000") && t.contains("yellow")
    })
    .await;

    // The counter form: red's threshold 1000 − 300 is yellow's range (the level follows).
    b.wait_css("#counter-add input[name=add]")
        .await
        .send_keys("-300")
        .await
        .unwrap();
    b.wait_css("#counter-add input[name=reason]")
        .await
        .send_keys("the crew calmed the reactor")
        .await
        .unwrap();
    b.click("#counter-add button[type=submit]").await;
    b.wait_text("#game-counter-value", |t| t == "700").await;
    b.wait_text("#game-level-now", |t| t == "yellow").await;
    lamps_get(&mut lamps, &rgb_config("yellow")).await;
    let (_, ev) = s.get("/api/events?kind=state_changed&limit=5").await;
    assert!(
        ev.as_array()
            .unwrap()
            .iter()
            .any(|e| e["data"]["name"] == "counter"
                && e["data"]["reason"] == "the crew calmed the reactor"),
        "{ev}"
    );

    // Black asks first. Declined: nothing is sent, the level stays.
    b.click("button.level[data-level=black]").await;
    let q = wait_alert(&b).await;
    assert!(q.contains("black"), "{q}");
    b.client.dismiss_alert().await.unwrap();
    let (_, st) = s.get("/api/state").await;
    assert_eq!(st["level"], "yellow");
    // Accepted: the lamps go black, the panel shows it.
    b.click("button.level[data-level=black]").await;
    wait_alert(&b).await;
    b.client.accept_alert().await.unwrap();
    lamps_get(&mut lamps, &rgb_config("black")).await;
    b.wait_text("#game-level-now", |t| t == "black").await;
    b.wait_text("#game-counter", |t| t.contains("moves no level"))
        .await;

    // A run started from the page; a timer started elsewhere appears, counting down.
    b.click("#game-run button.primary").await;
    b.wait_text("#game-run-state", |t| t.contains("running"))
        .await;
    let (st, v) = s
        .send(
            Method::POST,
            "/api/timers",
            Some(json!({"name": "self-destruct", "secs": 900})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    b.wait_text("li[data-timer=self-destruct] [data-until]", |t| {
        t.starts_with("15:") || t.starts_with("14:")
    })
    .await;

    // A variable set from its form.
    b.wait_text("tr[data-var=reactor_hits]", |t| {
        t.contains('0') && t.contains("Hits the reactor took")
    })
    .await;
    b.wait_css("form.var-form input[name=value]")
        .await
        .send_keys("3")
        .await
        .unwrap();
    b.click("form.var-form button[type=submit]").await;
    b.wait_text("tr[data-var=reactor_hits] code", |t| t == "3")
        .await;

    let same = b
        .client
        .execute("return window.__still_this_page === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "the page was reloaded");
    b.client
        .execute("window.scrollTo(0, 0);", vec![])
        .await
        .unwrap();
    b.screenshot("game-phone").await;
    let base = s.url("");
    for url in b.loaded_urls().await {
        assert!(url.starts_with(&base), "a request left the server: {url}");
    }
}

/// The overview: a short circuit and a refused login appear in the last hour's alarms (the
/// login for an admin only), a level change in the game panel and the newest events, all
/// without a reload; a viewer sees the overview and the game panel with no form or button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_is_live_and_a_viewer_gets_no_buttons() {
    let bench = preset_bench("").await;
    let s = &bench.server;
    let _lamps = lamps(&bench).await;
    let (st, v) = s
        .send(
            Method::POST,
            "/api/users",
            Some(json!({"name": "vera", "password": "vera-password-1", "role": "viewer"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");

    let b = Browser::start(1280, 860).await;
    b.client.goto(&s.url("/login")).await.unwrap();
    b.log_in("admin", "not-the-password").await;
    b.wait_css("p.error").await;
    b.client.goto(&s.url("/login")).await.unwrap();
    b.log_in("admin", &first_password(s)).await;
    b.wait_text("#game-level-now", |t| t == "white").await;
    assert_eq!(b.client.current_url().await.unwrap().path(), "/");
    b.wait_text("#overview-alarms", |t| t.contains("login refused"))
        .await;
    b.client
        .execute("window.__still_this_page = true;", vec![])
        .await
        .unwrap();

    // A board reports a short circuit: an alarm, and the newest event.
    let mut board = s.board().await;
    board.exchange(&msg("1953", 1, "")).await;
    board
        .exchange(&msg("1953", 2, "").replace("STATE=0", "STATE=1"))
        .await;
    b.wait_text("#overview-alarms", |t| {
        t.contains("short circuit") && t.contains("acon/1953")
    })
    .await;
    b.wait_text("#overview-events", |t| t.contains("short_circuit"))
        .await;
    // A level set elsewhere: the compact panel and the events follow.
    let (st, v) = s
        .send(
            Method::PUT,
            "/api/state/level",
            Some(json!({"level": "green", "reason": "doors open"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    b.wait_text("#game-level-now", |t| t == "green").await;
    b.wait_text("#overview-counter", |t| t == "1").await;
    b.wait_text("#overview-events", |t| {
        t.contains("level: white → green (doors open)")
    })
    .await;
    b.wait_text("#overview-counts", |t| t.contains("rgb")).await;
    // An operator's panel has the level buttons here too.
    assert_eq!(count(&b, "#overview-game button.level").await, 7);
    let same = b
        .client
        .execute("return window.__still_this_page === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "the page was reloaded");
    b.screenshot("overview-desktop").await;

    // A viewer: the same panels, no action.
    b.click("nav form button[type=submit]").await;
    b.wait_css("form.login").await;
    b.log_in("vera", "vera-password-1").await;
    b.wait_text("#game-level-now", |t| t == "green").await;
    b.wait_text("#overview-alarms", |t| t.contains("short circuit"))
        .await;
    let alarms = b.wait_text("#overview-alarms", |_| true).await;
    assert!(
        !alarms.contains("login refused"),
        "a viewer sees no login failures: {alarms}"
    );
    assert_eq!(count(&b, "#overview-game .level").await, 7);
    assert_eq!(count(&b, "main form, main button, main input").await, 0);
    b.client.goto(&s.url("/game")).await.unwrap();
    b.wait_text("#game-level-now", |t| t == "green").await;
    b.wait_text("#game-counter-value", |t| t == "1").await;
    assert_eq!(count(&b, ".levels .level").await, 7);
    assert_eq!(count(&b, "main form, main button, main input").await, 0);
    // The nav shows the page.
    let current = b
        .client
        .find(Locator::Css("nav a[aria-current=page]"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(current, "Game");
}
