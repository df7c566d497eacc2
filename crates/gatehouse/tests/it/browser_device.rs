//! The SKABEN prop's page in headless Chromium: an operator edits a lock's config and sees the
//! lock confirm it without a reload; a stale save shows who changed the config and when, and
//! reload and overwrite both work; a viewer sees the page without a form.

use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::{Browser, add_user, first_password};
use crate::common::{Bench, Broker, Prop, Server, TOKEN};

const LOCK: &str = "b827eb0a1b2c";

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What the public reference client does with a CUP: it reads `task_id` and `hash` from
/// inside the datahold and ACKs with both.
async fn ack(lock: &Prop, cup: &Value) {
    let dh = &cup["datahold"];
    assert!(dh["task_id"].is_string() && dh["hash"].is_string(), "{cup}");
    lock.send(
        &format!("ask/lock/{LOCK}/ack"),
        json!({"timestamp": now_s(), "hash": dh["hash"], "task_id": dh["task_id"]}),
    )
    .await;
}

/// A lock that asked for its config, applied it, then reported `closed` and `sound` by SUP:
/// in sync, with both keys reported.
async fn lock_in_sync(b: &Bench) -> Prop {
    let mut lock = b.prop("lock", &[&format!("lock/{LOCK}/#")]).await;
    lock.send(
        &format!("ask/lock/{LOCK}/cup"),
        json!({"timestamp": 0, "datahold": {"request": "all"}, "task_id": "6417540345"}),
    )
    .await;
    let cup = lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    ack(&lock, &cup).await;
    b.until(&format!("/api/devices/lock/{LOCK}"), |v| {
        v["in_sync"] == true
    })
    .await;
    lock.send(
        &format!("ask/lock/{LOCK}/sup"),
        json!({"timestamp": now_s(), "datahold": {"closed": true, "sound": false}}),
    )
    .await;
    b.until(&format!("/api/devices/lock/{LOCK}"), |v| {
        v["in_sync"] == true && v["desired"]["config"]["closed"] == true
    })
    .await;
    lock
}

/// Replaces the editor's text the way a person does: clear it, type the new config.
async fn type_config(b: &Browser, config: &Value) {
    let text = b.wait_css("#config-text").await;
    text.clear().await.unwrap();
    text.send_keys(&config.to_string()).await.unwrap();
}

/// The acceptance test of the page: an operator opens a lock's page (from the device list),
/// changes a key in the JSON editor and saves; the simulated lock receives the CUP and ACKs
/// it as the reference client does; the page shows the key differing, then in sync, without
/// a reload. On a phone (390 px), with the README's screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_a_lock_config_and_see_the_lock_confirm_it() {
    let b = Bench::start(Broker::Embedded).await;
    let s = &b.server;
    let password = add_user(s, "olga", "operator").await;
    let mut lock = lock_in_sync(&b).await;
    let cup_topic = format!("lock/{LOCK}/cup");

    let w = Browser::start(390, 844).await;
    w.client.goto(&s.url("/login?next=/devices")).await.unwrap();
    w.log_in("olga", &password).await;
    // The device list links to the page.
    w.click(&format!("tr[data-key=\"lock/{LOCK}\"] a")).await;
    w.wait_css("#config-form").await;
    assert_eq!(
        w.client.current_url().await.unwrap().path(),
        format!("/devices/lock/{LOCK}")
    );
    let row = "#config-diff tr[data-key=\"closed\"]";
    let t = w.wait_text(row, |t| t.contains("same")).await;
    assert!(t.contains("true"), "{t}");
    w.wait_text("#push-state", |t| t.contains("confirmed by SUP"))
        .await;
    w.client
        .execute("window.__still_this_page = true;", vec![])
        .await
        .unwrap();

    // Change one key and save.
    type_config(&w, &json!({"closed": false, "sound": false})).await;
    w.click("#config-form button[type=submit]").await;
    w.wait_text("#config-form output", |t| t.starts_with("Saved"))
        .await;

    // The lock gets the new config; until it says so, the key differs and the push is sent.
    let cup = lock.recv_on(&cup_topic).await;
    assert_eq!(cup["datahold"]["closed"], false, "{cup}");
    assert_eq!(cup["datahold"]["FORCE"], true, "a PUT replaces: {cup}");
    let t = w.wait_text(row, |t| t.contains("differs")).await;
    assert!(
        t.contains("false") && t.contains("true"),
        "both values: {t}"
    );
    w.wait_text("#push-state", |t| t.trim_start().starts_with("Push: sent"))
        .await;
    w.wait_text("#config-diff tr[data-key=\"sound\"]", |t| {
        t.contains("same")
    })
    .await;
    // The README's screenshot: the page's top, with the key that differs.
    w.client
        .execute(
            "document.activeElement.blur(); window.scrollTo(0, 0);",
            vec![],
        )
        .await
        .unwrap();
    w.screenshot("device-phone").await;

    // The lock ACKs: the diff clears, live.
    ack(&lock, &cup).await;
    let t = w.wait_text(row, |t| t.contains("same")).await;
    assert!(t.contains("false") && !t.contains("true"), "{t}");
    w.wait_text("#push-state", |t| t.contains("acked")).await;
    w.wait_text("#device-events", |t| t.contains("config_confirmed"))
        .await;
    let same = w
        .client
        .execute("return window.__still_this_page === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "the page was reloaded");
    let (_, dev) = s.get(&format!("/api/devices/lock/{LOCK}")).await;
    assert_eq!(dev["desired"]["author"], "olga", "{dev}");
    assert_eq!(dev["delivery"]["confirmed_by"], "ack", "{dev}");
}

/// A save whose version someone else changed after the page loaded: the dialog names who and
/// when; reload puts the current config in the editor; overwrite saves over the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_save_shows_who_changed_the_config_and_overwrite_wins() {
    let s = Server::start().await;
    let path = format!("/api/devices/lock/{LOCK}");
    let (st, v) = s
        .send(Method::PUT, &path, Some(json!({"name": "hall door"})))
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = s
        .send(
            Method::PUT,
            &format!("{path}/config"),
            Some(json!({"closed": true})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, t) = s
        .send(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "night-shift", "role": "operator"})),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    let night = t["token"].as_str().unwrap().to_string();
    let theirs = |config: Value| {
        let req = s
            .http
            .put(s.url(&format!("{path}/config")))
            .bearer_auth(&night)
            .json(&config);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    };

    let w = Browser::start(1280, 860).await;
    w.client
        .goto(&s.url(&format!("/login?next=/devices/lock/{LOCK}")))
        .await
        .unwrap();
    w.log_in("admin", &first_password(&s)).await;
    w.wait_css("#config-form").await;
    w.wait_text("#config-version", |t| t == "2").await;

    // Someone else saves after the page loaded; this save is stale.
    theirs(json!({"closed": false, "timer": 30})).await;
    type_config(&w, &json!({"closed": true, "sound": true})).await;
    w.click("#config-form button[type=submit]").await;
    let (_, dev) = s.get(&path).await;
    let changed_at = dev["desired"]["updated_at"].as_str().unwrap().to_string();
    let t = w
        .wait_text("#config-conflict", |t| t.contains("token:night-shift"))
        .await;
    assert!(t.contains('3'), "the version: {t}");
    let when = w
        .client
        .execute(
            "const d = document.getElementById('config-conflict'); return [d.open, document.getElementById('conflict-when').getAttribute('datetime')];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(when, json!([true, changed_at]));
    w.wait_text("#config-form output", |t| t.contains("token:night-shift"))
        .await;

    // Reload: their config in the editor, their version to match.
    w.click("#conflict-reload").await;
    w.wait_text("#config-form output", |t| t.contains("Reloaded version 3"))
        .await;
    let text = w
        .client
        .execute(
            "return document.getElementById('config-text').value;",
            vec![],
        )
        .await
        .unwrap();
    let text: Value = serde_json::from_str(text.as_str().unwrap()).unwrap();
    assert_eq!(text, json!({"closed": false, "timer": 30}));
    w.wait_text("#config-version", |t| t == "3").await;
    // Saved over what was reloaded: no conflict.
    type_config(&w, &json!({"closed": false, "timer": 45})).await;
    w.click("#config-form button[type=submit]").await;
    w.wait_text("#config-form output", |t| t.starts_with("Saved"))
        .await;
    w.wait_text("#config-version", |t| t == "4").await;

    // They change it again; this save conflicts; overwrite wins.
    theirs(json!({"closed": true})).await;
    type_config(&w, &json!({"closed": false, "timer": 60})).await;
    w.click("#config-form button[type=submit]").await;
    w.wait_text("#config-form output", |t| {
        t.contains("version 5 was made by token:night-shift")
    })
    .await;
    w.wait_text("#conflict-version", |t| t == "5").await;
    w.click("#conflict-overwrite").await;
    w.wait_text("#config-form output", |t| t.starts_with("Saved"))
        .await;
    let (_, dev) = s.get(&path).await;
    assert_eq!(
        dev["desired"]["config"],
        json!({"closed": false, "timer": 60})
    );
    assert_eq!(dev["desired"]["version"], 6);
    assert_eq!(dev["desired"]["author"], "admin");
    w.wait_text("#config-version", |t| t == "6").await;
    w.client
        .execute(
            "document.activeElement.blur(); window.scrollTo(0, 0);",
            vec![],
        )
        .await
        .unwrap();
    w.screenshot("device-desktop").await;
}

/// The API's 409 names the current version, who made it and when (the dialog's source).
#[tokio::test]
async fn the_config_conflict_says_who_and_when() {
    let s = Server::start().await;
    let path = format!("/api/devices/lock/{LOCK}");
    s.send(Method::PUT, &path, Some(json!({}))).await;
    let (st, _) = s
        .send(
            Method::PUT,
            &format!("{path}/config"),
            Some(json!({"a": 1})),
        )
        .await;
    assert_eq!(st, 200);
    let r = s
        .http
        .patch(s.url(&format!("{path}/config")))
        .bearer_auth(TOKEN)
        .header("If-Match", "\"1\"")
        .json(&json!({"a": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    let (_, dev) = s.get(&path).await;
    assert_eq!(v["version"], 2, "{v}");
    assert_eq!(v["changed_by"], "admin", "{v}");
    assert_eq!(v["changed_at"], dev["desired"]["updated_at"], "{v}");
    assert_eq!(v["field"], "If-Match", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("version 2 was made by admin"),
        "{v}"
    );
    // A config inherited from the type: traced to the type's change.
    let (st, _) = s
        .send(
            Method::PUT,
            "/api/devices/lock/aa0000000001",
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 201);
    let (st, _) = s
        .send(
            Method::PUT,
            "/api/types/lock",
            Some(json!({"config": {"sound": true}})),
        )
        .await;
    assert_eq!(st, 200);
    let r = s
        .http
        .put(s.url("/api/devices/lock/aa0000000001/config"))
        .bearer_auth(TOKEN)
        .header("If-Match", "\"1\"")
        .json(&json!({"sound": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["version"].as_i64(), v["changed_by"].as_str()),
        (Some(2), Some("admin")),
        "{v}"
    );
}

/// A viewer sees the same page, with no form at all.
#[tokio::test]
async fn a_viewer_sees_the_page_without_a_form() {
    let s = Server::start().await;
    let path = format!("/api/devices/lock/{LOCK}");
    s.send(Method::PUT, &path, Some(json!({}))).await;
    let (st, _) = s
        .send(
            Method::PUT,
            &format!("{path}/config"),
            Some(json!({"closed": true})),
        )
        .await;
    assert_eq!(st, 200);
    let password = add_user(&s, "vera", "viewer").await;
    let w = Browser::start(1280, 860).await;
    w.client
        .goto(&s.url(&format!("/login?next=/devices/lock/{LOCK}")))
        .await
        .unwrap();
    w.log_in("vera", &password).await;
    w.wait_text("#config-diff tr[data-key=\"closed\"]", |t| {
        t.contains("only desired")
    })
    .await;
    w.wait_text("#config-view", |t| t.contains("\"closed\": true"))
        .await;
    let forms = w
        .client
        .execute(
            "return [document.querySelectorAll('main form, main button, main textarea').length, !!document.getElementById('config-conflict')];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(forms, json!([0, false]), "a viewer sees no action");
}
