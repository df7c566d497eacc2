//! Who may do what in the console, in headless Chromium: a viewer sees no action on any page
//! and a request forged from a viewer's session is refused; a page of another origin cannot
//! make a logged-in browser change anything; and the live view comes back by itself after the
//! server restarts.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::browser::{Browser, add_user, first_password};
use crate::common::{Server, TOKEN, msg, settings};

const PRESET: &str = include_str!("../../../../presets/skaben.toml");

async fn import_preset(s: &Server) {
    let r = s
        .http
        .post(s.url("/api/rules/import"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/toml")
        .body(PRESET)
        .send()
        .await
        .unwrap();
    let (st, v) = crate::common::decode(r).await;
    assert_eq!(st, 200, "{v}");
}

/// Every way a page can send a change: a form that calls the API (console.js sends only
/// those), a form that posts, an element with an htmx verb other than GET. Anything else on
/// a page only reads (filters, the log's pause, a cell that opens its panel).
const ACTIONS: &str = r#"
const found = [];
for (const f of document.querySelectorAll('form[data-api]')) {
  found.push('form ' + f.getAttribute('data-method') + ' ' + f.getAttribute('data-api'));
}
for (const f of document.querySelectorAll('main form[method=post], main form[method=POST]')) {
  found.push('post form ' + f.getAttribute('action'));
}
for (const e of document.querySelectorAll('[hx-post], [hx-put], [hx-patch], [hx-delete]')) {
  found.push('htmx ' + e.outerHTML.slice(0, 80));
}
return found;
"#;

async fn actions(b: &Browser) -> Vec<String> {
    let v = b
        .client
        .execute(ACTIONS, vec![])
        .await
        .unwrap_or_else(|e| panic!("reading the page's actions: {e}"));
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A viewer logs in and walks every page: none offers an action; the admin pages refuse;
/// and calls forged from the viewer's own session (the page's cookie, same origin) are
/// refused by the server with 403 and change nothing.
#[tokio::test]
async fn a_viewer_sees_no_action_anywhere_and_a_forged_post_is_refused() {
    let s = Server::start().await;
    import_preset(&s).await;
    let mut board = s.board().await;
    board.exchange(&msg("1953", 1, "")).await;
    let (st, v) = s
        .send(
            Method::PUT,
            "/api/devices/lock/0a0b0c0d0e0f",
            Some(json!({"name": "vault door"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (_, rules) = s.get("/api/rules").await;
    let rule = rules
        .as_array()
        .and_then(|a| a.first())
        .and_then(|r| r["name"].as_str())
        .expect("the preset has rules")
        .to_string();
    let password = add_user(&s, "vera", "viewer").await;

    let b = Browser::start(1280, 900).await;
    b.client.goto(&s.url("/login")).await.unwrap();
    b.log_in("vera", &password).await;
    b.wait_css("nav .who").await;
    let pages = [
        "/".to_string(),
        "/devices".into(),
        "/devices/acon/1953".into(),
        "/devices/lock/0a0b0c0d0e0f".into(),
        "/game".into(),
        "/rules".into(),
        format!("/rules/{rule}"),
        "/events".into(),
        "/api-docs".into(),
    ];
    for page in &pages {
        b.client.goto(&s.url(page)).await.unwrap();
        b.wait_css("main h1").await;
        let found = actions(&b).await;
        assert!(found.is_empty(), "{page} offers a viewer: {found:?}");
    }
    // The nav has no Admin link, and the admin pages refuse.
    let admin_link = b
        .client
        .execute(
            "return document.querySelector('nav a[href^=\"/admin\"]') !== null;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(admin_link, json!(false));
    for page in ["/admin/accounts", "/admin/tokens", "/admin/audit"] {
        let status = b
            .client
            .execute(
                "return fetch(arguments[0]).then(r => r.status);",
                vec![json!(page)],
            )
            .await
            .unwrap();
        assert_eq!(status, json!(403), "{page}");
    }

    // Forged calls from the viewer's session: what a page's button would send.
    let forged = [
        ("PUT", "/api/state/level", json!({"level": "red"})),
        ("POST", "/api/state/counter", json!({"add": 100})),
        (
            "PUT",
            "/api/devices/acon/1953/cells/3",
            json!({"code": "4711", "minutes": 30}),
        ),
        ("POST", "/api/devices/acon/1953/block", json!({})),
        (
            "PUT",
            "/api/devices/lock/0a0b0c0d0e0f/config",
            json!({"closed": false}),
        ),
        (
            "POST",
            "/api/users",
            json!({"name": "mallory", "password": "mallory-password-1", "role": "admin"}),
        ),
    ];
    let (_, before) = s.get("/api/state").await;
    for (method, path, body) in &forged {
        let status = b
            .client
            .execute(
                "return fetch(arguments[1], {method: arguments[0], credentials: 'same-origin', \
                 headers: {'Content-Type': 'application/json'}, body: JSON.stringify(arguments[2])}) \
                 .then(r => r.status);",
                vec![json!(method), json!(path), body.clone()],
            )
            .await
            .unwrap();
        assert_eq!(
            status,
            json!(403),
            "{method} {path} from a viewer's session"
        );
    }
    let (_, after) = s.get("/api/state").await;
    assert_eq!(before["level"], after["level"]);
    assert_eq!(before["counter"], after["counter"]);
    let (_, cells) = s.get("/api/devices/acon/1953/cells").await;
    assert!(
        !cells.to_string().contains("4711"),
        "a viewer's forged engagement went through: {cells}"
    );
    let (_, users) = s.get("/api/users").await;
    assert!(!users.to_string().contains("mallory"), "{users}");
}

/// Serves one page of "another site" (another port of the same host: another origin, the
/// same site, so a `SameSite=Strict` cookie still goes along) whose form and script try to
/// change the server's state.
async fn foreign_site(target: String) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let page = format!(
        r#"<!doctype html><html><body>
<form id="csrf" method="post" action="{target}/api/state/counter" enctype="text/plain">
<input name='{{"add":500,"x":"' value='"}}'><button type="submit">win a prize</button></form>
<form id="logout" method="post" action="{target}/logout"><button type="submit">out</button></form>
<script>
window.sent = fetch("{target}/api/state/counter", {{method: "POST", mode: "no-cors",
  credentials: "include", headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{add: 7}})}}).then(() => "sent", e => "error " + e);
</script></body></html>"#
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    page.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(page.as_bytes()).await;
            });
        }
    });
    (port, task)
}

/// An admin is logged in; a page of another origin posts a form (the JSON-in-text/plain
/// trick), sends a no-cors fetch and a logout. The server refuses all three: the counter
/// does not move, and the admin's session still works.
#[tokio::test]
async fn a_cross_site_post_is_refused_in_the_browser() {
    let s = Server::start().await;
    import_preset(&s).await;
    let b = Browser::start(1280, 900).await;
    b.client.goto(&s.url("/login?next=/game")).await.unwrap();
    b.log_in("admin", &first_password(&s)).await;
    b.wait_css("nav .who").await;
    let (_, before) = s.get("/api/state").await;

    let base = s.url("");
    let (port, site) = foreign_site(base.trim_end_matches('/').to_string()).await;
    b.client
        .goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    // The no-cors fetch ran (its answer is opaque to the page, but it went out).
    let mut sent = Value::Null;
    for _ in 0..100 {
        sent = b
            .client
            .execute("return window.sent ? window.sent : null;", vec![])
            .await
            .unwrap();
        if sent.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sent,
        json!("sent"),
        "the foreign page's fetch did not go out"
    );
    // The form post: the browser goes to the server's answer, a refusal.
    b.client
        .execute("document.getElementById('csrf').submit();", vec![])
        .await
        .unwrap();
    let text = b
        .wait_text("body", |t| t.contains("cross-site") || t.contains("error"))
        .await;
    assert!(text.contains("cross-site"), "{text}");
    // And the logout.
    b.client
        .goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    b.client
        .execute("document.getElementById('logout').submit();", vec![])
        .await
        .unwrap();
    b.wait_text("body", |t| t.contains("cross-site")).await;
    site.abort();

    let (_, after) = s.get("/api/state").await;
    assert_eq!(
        before["counter"], after["counter"],
        "a cross-site form moved the counter"
    );
    assert_eq!(
        before["level"], after["level"],
        "a cross-site fetch set the level"
    );
    // The session survived the forged logout.
    b.client.goto(&s.url("/game")).await.unwrap();
    let who = b.wait_css("nav .who").await.text().await.unwrap();
    assert!(who.contains("admin"), "{who}");
    // Neither the form nor the fetch changed the counter.
    let (_, events) = s.get("/api/events?kind=counter_changed").await;
    assert_eq!(events.as_array().map(Vec::len), Some(0), "{events}");
}

/// The device list is open while the server stops and starts again on the same address:
/// the page reconnects by itself, and a board that reports after the restart shows up
/// without a reload (the session, stored, outlives the restart).
#[tokio::test]
async fn the_live_view_recovers_after_the_server_restarts() {
    let mut s = Server::start().await;
    let mut board = s.board().await;
    board.exchange(&msg("1953", 1, "")).await;
    let b = Browser::start(1280, 860).await;
    b.client.goto(&s.url("/login?next=/devices")).await.unwrap();
    b.log_in("admin", &first_password(&s)).await;
    b.wait_text("tr[data-key=\"acon/1953\"]", |t| t.contains("online"))
        .await;
    b.client
        .execute("window.__still_this_page = true;", vec![])
        .await
        .unwrap();

    let http = s.running().http_addr;
    drop(board);
    s.running.take().unwrap().shutdown().await.unwrap();
    let mut cfg = settings(s._dir.path());
    cfg.http_listen = http.to_string();
    s.running = Some(gatehouse::server::start(cfg).await.unwrap());

    // Right after the start, before the page has reconnected: the page must catch up on
    // what it missed, not only on what comes after it is back.
    let mut board2 = s.board().await;
    board2.exchange(&msg("2024", 1, "")).await;
    b.wait_text("tr[data-key=\"acon/2024\"]", |t| t.contains("online"))
        .await;
    b.wait_text("#device-count", |t| t == "2 of 2").await;
    let same = b
        .client
        .execute("return window.__still_this_page === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "the page was reloaded");
    // And it is live again: a change after the reconnect arrives too.
    let (st, v) = s
        .send(
            Method::PUT,
            "/api/devices/acon/2024",
            Some(json!({"name": "after the restart"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    b.wait_text("tr[data-key=\"acon/2024\"]", |t| {
        t.contains("after the restart")
    })
    .await;
}

/// "What is wrong now" includes an alarm: a board that reported a short circuit in the last
/// hour is listed under the `alarm` state (and `wrong`), a quiet one is not.
#[tokio::test]
async fn the_device_list_filters_devices_in_alarm() {
    let s = Server::start().await;
    let mut quiet = s.board().await;
    quiet.exchange(&msg("12", 1, "")).await;
    let mut faulty = s.board().await;
    faulty.exchange(&msg("11", 1, "")).await;
    faulty
        .exchange(&msg("11", 2, "").replace("STATE=0", "STATE=1"))
        .await;
    let kinds = s.event_kinds("acon/11").await;
    assert!(kinds.iter().any(|k| k == "short_circuit"), "{kinds:?}");

    let b = Browser::start(1280, 860).await;
    b.client
        .goto(&s.url("/login?next=/devices?state=alarm"))
        .await
        .unwrap();
    b.log_in("admin", &first_password(&s)).await;
    b.wait_text("#device-count", |t| t == "1 of 1").await;
    b.wait_text("tr[data-key=\"acon/11\"]", |t| t.contains("acon/11"))
        .await;
    let quiet_listed = b
        .client
        .execute(
            "return document.querySelector('tr[data-key=\"acon/12\"]') !== null;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(quiet_listed, json!(false));
    let selected = b
        .client
        .execute(
            "return document.querySelector('select[name=state]').value;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(selected, json!("alarm"));
}
