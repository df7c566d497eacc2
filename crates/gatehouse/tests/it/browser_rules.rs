//! The rules pages in headless Chromium: importing the preset through the page, the list
//! with each rule's last firing (live), a refused edit naming the field, a dry run's trace,
//! and what a viewer and an operator are offered. Also the export's download header.

use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::{Browser, add_user, first_password};
use crate::common::{Server, TOKEN};

const PRESET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../presets/skaben.toml");

/// Sets a field's value in the page (a textarea's text, in one call).
async fn set_value(b: &Browser, css: &str, value: &str) {
    let ok = b
        .client
        .execute(
            "const e = document.querySelector(arguments[0]); if (!e) return false; e.value = arguments[1]; return true;",
            vec![json!(css), json!(value)],
        )
        .await
        .unwrap();
    assert_eq!(ok, json!(true), "no {css} on the page");
}

/// What a script on the page answers.
async fn eval(b: &Browser, script: &str) -> Value {
    b.client.execute(script, vec![]).await.unwrap()
}

async fn import_preset(s: &Server) {
    let r = s
        .http
        .post(s.url("/api/rules/import"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/toml")
        .body(std::fs::read_to_string(PRESET).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

async fn put_rule(s: &Server, rule: Value) {
    let name = rule["name"].as_str().unwrap().to_string();
    let (status, v) = s
        .send(Method::PUT, &format!("/api/rules/{name}"), Some(rule))
        .await;
    assert_eq!(status, 200, "{v}");
}

/// An admin imports the SKABEN preset through the page (a file), sees every rule listed, and
/// each rule's last firing appear without a reload: ok, an action that failed, a chain stopped
/// by the depth limit. On a rule's page a dry run of the prefilled sample shows the trace, an
/// edit with an unknown level is refused with the API's message naming the field, and a good
/// edit is saved and shown.
#[tokio::test]
async fn an_admin_imports_edits_and_dry_runs_rules() {
    let s = Server::start().await;
    let b = Browser::start(1280, 900).await;
    b.client.goto(&s.url("/rules")).await.unwrap();
    b.log_in("admin", &first_password(&s)).await;
    b.wait_text("#rule-rows", |t| t.contains("No rules")).await;

    // Import the preset file through the form (confirmed).
    let path = std::fs::canonicalize(PRESET).unwrap();
    b.wait_css("#rules-import-file")
        .await
        .send_keys(path.to_str().unwrap())
        .await
        .unwrap();
    eval(&b, "window.confirm = function () { return true; };").await;
    b.click("#rules-import button[type=submit]").await;
    b.wait_text("#rules-import output", |t| t.contains("Imported: 13 rules"))
        .await;
    b.wait_text("#rule-rows", |t| {
        t.contains("shield-aux-at-blue") && t.contains("red-timeout-fired")
    })
    .await;
    b.wait_text("tr[data-rule=\"cyan-30-min-to-blue\"]", |t| {
        t.contains("disabled") && t.contains("state level")
    })
    .await;

    // A bad file is refused with the rule and the field named, and nothing changes.
    set_value(
        &b,
        "#rules-import-text",
        "version = 1\n[[rules]]\nname = \"bad\"\nwhen = { state = \"level\" }\nthen = [{ set_level = \"purple\" }]\n",
    )
    .await;
    b.click("#rules-import button[type=submit]").await;
    b.wait_text("#rules-import output", |t| {
        t.contains("rule \"bad\": then[0].set_level") && t.contains("purple")
    })
    .await;
    let (_, rules) = s.get("/api/rules").await;
    assert_eq!(rules.as_array().unwrap().len(), 13);

    // Rules that fire on a level change: one does fine, one's action fails; one on the
    // counter feeds itself until the depth limit stops it. The list follows live.
    put_rule(
        &s,
        json!({"name": "level-log", "when": {"state": "level"}, "then": [{"log": "level {level}"}]}),
    )
    .await;
    put_rule(
        &s,
        json!({"name": "level-release", "when": {"state": "level"},
               "then": [{"release": {"device": "acon/9999", "cell": 1}}]}),
    )
    .await;
    put_rule(
        &s,
        json!({"name": "counter-loop", "when": {"state": "counter"},
               "then": [{"counter": {"add": 1}}]}),
    )
    .await;
    b.wait_text("tr[data-rule=\"counter-loop\"]", |t| t.contains("never"))
        .await;
    let (status, v) = s
        .send(
            Method::PUT,
            "/api/state/level",
            Some(json!({"level": "blue"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .send(Method::POST, "/api/state/counter", Some(json!({"add": 1})))
        .await;
    assert_eq!(status, 200, "{v}");
    b.wait_text("tr[data-rule=\"level-log\"] .last", |t| {
        t.contains("ok") && t.contains("ago")
    })
    .await;
    b.wait_text("tr[data-rule=\"level-release\"] .last", |t| {
        t.contains("action failed")
    })
    .await;
    b.wait_text("tr[data-rule=\"counter-loop\"] .last", |t| {
        t.contains("stopped by the depth limit")
    })
    .await;
    eval(&b, "window.scrollTo(0, 0);").await;
    b.screenshot("rules-desktop").await;

    // A rule's page: its definition as the rule file has it, its traces.
    b.client.goto(&s.url("/rules/level-release")).await.unwrap();
    b.wait_text("#rule-definition", |t| {
        t.contains("[[rules]]") && t.contains("name = \"level-release\"")
    })
    .await;
    b.wait_text("#rule-traces", |t| {
        t.contains("action failed") && t.contains("\"release\"") && t.contains("level blue")
    })
    .await;

    // A dry run of a recorded event: the level change to blue, picked from the list.
    let recorded = b.wait_css("#dry-run-recorded").await;
    recorded.select_by_index(1).await.unwrap();
    let event = eval(&b, "return document.querySelector('#dry-run-event').value;").await;
    let event: Value = serde_json::from_str(event.as_str().unwrap()).unwrap();
    assert_eq!(event["kind"], "state_changed", "{event}");
    assert_eq!(event["to"], "blue", "{event}");
    b.click("#dry-run button[type=submit]").await;
    b.wait_text("#dry-run-result .trace.own", |t| {
        t.contains("level-release") && t.contains("action failed: no board acon/9999")
    })
    .await;
    b.wait_text("#dry-run-result", |t| t.contains("level-log"))
        .await;

    // The dry run of the prefilled sample: an AUX report at blue goes to cyan.
    b.client
        .goto(&s.url("/rules/shield-aux-at-blue"))
        .await
        .unwrap();
    b.wait_css("#dry-run").await;
    let sample = eval(&b, "return document.querySelector('#dry-run-event').value;").await;
    let sample: Value = serde_json::from_str(sample.as_str().unwrap()).unwrap();
    assert_eq!(sample["datahold"]["powerstate"], "aux", "{sample}");
    b.click("#dry-run button[type=submit]").await;
    b.wait_text("#dry-run output", |t| t.contains("nothing was changed"))
        .await;
    b.wait_text("#dry-run-result .trace.own", |t| {
        t.contains("shield-aux-at-blue")
            && t.contains("event.datahold.powerstate")
            && t.contains("held")
            && t.contains("{\"set_level\":\"cyan\"}")
            && t.contains("level blue · counter")
            && t.contains("→ level cyan")
    })
    .await;
    eval(&b, "window.scrollTo(0, 0);").await;
    b.screenshot("rules-rule-desktop").await;
    // Nothing changed.
    let (_, st) = s.get("/api/state").await;
    assert_eq!(st["level"], "blue", "{st}");

    // An edit naming an unknown level: the API's 400, naming the field, in the form.
    set_value(&b, "#rule-then", "[{\"set_level\": \"purple\"}]").await;
    b.click("#rule-editor button[type=submit]").await;
    let msg = b
        .wait_text("#rule-editor output", |t| t.contains("then[0].set_level"))
        .await;
    assert!(msg.contains("unknown level \"purple\""), "{msg}");
    let invalid = eval(
        &b,
        "return document.querySelector('#rule-then').getAttribute('aria-invalid');",
    )
    .await;
    assert_eq!(invalid, json!("true"));
    let (_, r) = s.get("/api/rules/shield-aux-at-blue").await;
    assert_eq!(r["rule"]["then"], json!([{"set_level": "cyan"}]), "{r}");

    // A good edit is saved, and the definition shows it without a reload.
    set_value(&b, "#rule-then", "[{\"set_level\": \"green\"}]").await;
    set_value(&b, "#rule-description", "Edited in the console.").await;
    b.click("#rule-editor button[type=submit]").await;
    b.wait_text("#rule-editor output", |t| t.starts_with("Saved"))
        .await;
    b.wait_text("#rule-definition", |t| {
        t.contains("Edited in the console.") && t.contains("set_level = \"green\"")
    })
    .await;
    let (_, r) = s.get("/api/rules/shield-aux-at-blue").await;
    assert_eq!(r["rule"]["then"], json!([{"set_level": "green"}]), "{r}");

    // Delete, confirmed: back to the list, without it.
    eval(&b, "window.confirm = function () { return true; };").await;
    b.click("#rule-delete button[type=submit]").await;
    b.wait_text("#rule-rows", |t| {
        !t.contains("shield-aux-at-blue") && t.contains("shield-pwr-at-cyan")
    })
    .await;
    let (status, _) = s.get("/api/rules/shield-aux-at-blue").await;
    assert_eq!(status, 404);
}

/// A viewer reads the rules and a rule's page but is offered no form or button at all (no
/// import, editor, delete or dry run); an operator gets the dry run and nothing else.
#[tokio::test]
async fn a_viewer_gets_no_forms_and_an_operator_only_the_dry_run() {
    let s = Server::start().await;
    import_preset(&s).await;
    let viewer = add_user(&s, "vera", "viewer").await;
    let operator = add_user(&s, "otto", "operator").await;
    let forms = "return document.querySelectorAll('main form, main button, main textarea').length;";

    let b = Browser::start(1280, 900).await;
    b.client.goto(&s.url("/login?next=/rules")).await.unwrap();
    b.log_in("vera", &viewer).await;
    b.wait_text("#rule-rows", |t| t.contains("shield-aux-at-blue"))
        .await;
    b.wait_css("#rules-export").await;
    assert_eq!(eval(&b, forms).await, json!(0));
    b.client
        .goto(&s.url("/rules/shield-aux-at-blue"))
        .await
        .unwrap();
    b.wait_text("#rule-definition", |t| t.contains("[[rules]]"))
        .await;
    b.wait_css("#rule-traces").await;
    assert_eq!(eval(&b, forms).await, json!(0));
    drop(b);

    let b = Browser::start(1280, 900).await;
    b.client
        .goto(&s.url("/login?next=/rules/shield-aux-at-blue"))
        .await
        .unwrap();
    b.log_in("otto", &operator).await;
    b.wait_css("#dry-run").await;
    let present = eval(
        &b,
        "return ['#rule-editor', '#rule-delete', '#dry-run'].map(s => !!document.querySelector(s));",
    )
    .await;
    assert_eq!(present, json!([false, false, true]));
    b.click("#dry-run button[type=submit]").await;
    b.wait_text("#dry-run-result .trace.own", |t| t.contains("ok"))
        .await;
    b.client.goto(&s.url("/rules")).await.unwrap();
    b.wait_text("#rule-rows", |t| t.contains("shield-aux-at-blue"))
        .await;
    assert_eq!(eval(&b, forms).await, json!(0));
}

/// The rule pages fit a phone's width (390 px): nothing wider than the screen.
#[tokio::test]
async fn the_rules_pages_fit_a_phone() {
    let s = Server::start().await;
    import_preset(&s).await;
    let (status, v) = s
        .send(
            Method::PUT,
            "/api/state/level",
            Some(json!({"level": "blue"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let b = Browser::start(390, 844).await;
    b.client.goto(&s.url("/login?next=/rules")).await.unwrap();
    b.log_in("admin", &first_password(&s)).await;
    b.wait_text("#rule-rows", |t| t.contains("shield-aux-at-blue"))
        .await;
    let wide = "return document.documentElement.scrollWidth <= window.innerWidth;";
    assert_eq!(
        eval(&b, wide).await,
        json!(true),
        "the list is wider than the phone"
    );
    b.client
        .goto(&s.url("/rules/shield-aux-at-blue"))
        .await
        .unwrap();
    b.click("#dry-run button[type=submit]").await;
    b.wait_text("#dry-run-result .trace.own", |t| t.contains("ok"))
        .await;
    assert_eq!(
        eval(&b, wide).await,
        json!(true),
        "the rule's page is wider than the phone"
    );
    eval(
        &b,
        "document.getElementById('dry-run-result').scrollIntoView();",
    )
    .await;
    b.screenshot("rules-phone").await;
}

/// The export is a download named rules.toml.
#[tokio::test]
async fn the_export_is_a_download() {
    let s = Server::start().await;
    import_preset(&s).await;
    let r = s
        .http
        .get(s.url("/api/rules/export"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("content-disposition")
            .and_then(|v| v.to_str().ok()),
        Some("attachment; filename=\"rules.toml\"")
    );
    assert!(r.text().await.unwrap().contains("shield-aux-at-blue"));
}
