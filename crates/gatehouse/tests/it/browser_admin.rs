//! The event log, its export, and the admin pages, in a real headless Chromium (and the
//! export over plain HTTP against `/api/events`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::{Browser, WAIT, first_password};
use crate::common::{Server, TOKEN, msg};

const PASSWORD: &str = "correct-horse-battery-9";

/// Reads a CSV document (RFC 4180: quoted cells, doubled quotes, CRLF) into rows.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let (mut row, mut cell) = (Vec::new(), String::new());
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    assert!(cell.is_empty() && row.is_empty(), "the CSV ends mid-row");
    rows
}

/// The export's JSON lines, parsed.
fn parse_jsonl(text: &str) -> Vec<Value> {
    assert!(text.is_empty() || text.ends_with('\n'), "a line is cut");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// An export, over HTTP with the admin token: the status, the headers, the body.
async fn export(s: &Server, query: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = s
        .http
        .get(s.url(&format!("/api/events/export?{query}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// The CSV rows of the export as `/api/events` shows events (seq, at, device, kind, actor,
/// data), for comparing.
fn csv_as_json(rows: &[Vec<String>]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            assert_eq!(r.len(), 6, "{r:?}");
            json!({
                "seq": r[0].parse::<i64>().unwrap(),
                "at": r[1],
                "device": if r[2].is_empty() { Value::Null } else { json!(r[2]) },
                "kind": r[3],
                "actor": r[4],
                "data": serde_json::from_str::<Value>(&r[5]).unwrap(),
            })
        })
        .collect()
}

/// The export holds exactly what `/api/events` shows for the same filters (kinds, device,
/// actor, time range), in the same order, as CSV and as JSON lines, across more than one of
/// the store pages it streams in; it is an attachment; a bad format or filter is a 400.
#[tokio::test]
async fn the_export_is_exactly_the_filtered_log() {
    let s = Server::start().await;
    let mut board = s.board().await;
    board.exchange(&msg("1953", 1, "")).await;
    // More state changes than one page of the export (500).
    for i in 0..620 {
        let (st, v) = s
            .send(
                reqwest::Method::POST,
                "/api/state/counter",
                Some(json!({"add": 1, "reason": format!("=round {i}")})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    board.exchange(&msg("1953", 2, "")).await;
    let (_, all) = s.get("/api/events?limit=10000").await;
    let all = all.as_array().unwrap().clone();
    let mid = all[all.len() / 2]["at"].as_str().unwrap().to_string();
    let late = all[all.len() / 5]["at"].as_str().unwrap().to_string();
    let filters = [
        "kind=state_changed".to_string(),
        "kind=registered,online&device=acon/1953".to_string(),
        "actor=admin".to_string(),
        format!("from={mid}&to={late}"),
        "kind=state_changed&limit=7".to_string(),
        "kind=no_such_kind".to_string(),
    ];
    for f in &filters {
        let limit = if f.contains("limit=") {
            ""
        } else {
            "&limit=10000"
        };
        let (st, want) = s.get(&format!("/api/events?{f}{limit}")).await;
        assert_eq!(st, 200, "{f}: {want}");
        let want = want.as_array().unwrap().clone();
        if f == "kind=state_changed" {
            assert_eq!(want.len(), 620);
        }
        let (st, h, body) = export(&s, &format!("format=jsonl&{f}")).await;
        assert_eq!(st, 200, "{f}: {body}");
        assert!(
            h["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("attachment; filename=\"gatehouse-events-"),
            "{h:?}"
        );
        assert_eq!(parse_jsonl(&body), want, "jsonl, {f}");
        let (st, h, body) = export(&s, &format!("format=csv&{f}")).await;
        assert_eq!(st, 200, "{f}: {body}");
        assert!(h["content-type"].to_str().unwrap().starts_with("text/csv"));
        let rows = parse_csv(&body);
        assert_eq!(rows[0], ["seq", "at", "device", "kind", "actor", "data"]);
        assert_eq!(csv_as_json(&rows[1..]), want, "csv, {f}");
    }
    // The time range did narrow (neither empty nor everything).
    let (_, ranged) = s
        .get(&format!("/api/events?from={mid}&to={late}&limit=10000"))
        .await;
    let n = ranged.as_array().unwrap().len();
    assert!(n > 0 && n < all.len(), "{n} of {}", all.len());
    for (q, field) in [
        ("format=xlsx", "format"),
        ("format=csv&from=yesterday", "from"),
        ("format=csv&before=x", "before"),
    ] {
        let (st, _, body) = export(&s, q).await;
        assert_eq!(st, 400, "{q}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["field"], field, "{q}: {v}");
    }
}

/// Logs in as `name` in a fresh window.
async fn logged_in(s: &Server, name: &str, password: &str, page: &str) -> Browser {
    let b = Browser::start(1280, 900).await;
    b.client
        .goto(&s.url(&format!("/login?next={page}")))
        .await
        .unwrap();
    b.log_in(name, password).await;
    b.wait_css("nav .who").await;
    b
}

/// Clicks the first element matching `css` (in one script call: no stale handle).
async fn click(b: &Browser, css: &str) {
    let found = b
        .client
        .execute(
            "const e = document.querySelector(arguments[0]); if (e) { e.click(); } return !!e;",
            vec![json!(css)],
        )
        .await
        .unwrap();
    assert_eq!(found, json!(true), "no {css} to click");
}

/// Sets a form field's value.
async fn fill(b: &Browser, css: &str, value: &str) {
    let found = b
        .client
        .execute(
            "const e = document.querySelector(arguments[0]); if (e) { e.value = arguments[1]; } return !!e;",
            vec![json!(css), json!(value)],
        )
        .await
        .unwrap();
    assert_eq!(found, json!(true), "no {css} to fill");
}

/// An admin adds an operator account in the console, is refused removing the last admin,
/// creates a token (its secret shown once, working as a Bearer token) and revokes it; the
/// operator gets the admin pages' 403 page and no Admin link.
#[tokio::test]
async fn an_admin_manages_accounts_and_tokens_in_the_console() {
    let s = Server::start().await;
    let b = logged_in(&s, "admin", &first_password(&s), "/admin/accounts").await;
    b.wait_css("#account-add").await;
    let nav = b.wait_text("nav", |_| true).await;
    assert!(
        nav.contains("Admin") && nav.contains("Events") && nav.contains("API"),
        "{nav}"
    );
    // Confirmations are accepted (window.confirm would block WebDriver).
    b.client
        .execute("window.confirm = () => true;", vec![])
        .await
        .unwrap();

    // The last admin cannot be removed: the API says so, in the form.
    click(&b, "tr[data-user=\"admin\"] .remove-form button").await;
    b.wait_text("tr[data-user=\"admin\"] .remove-form output", |t| {
        t.contains("last admin")
    })
    .await;

    fill(&b, "#account-add input[name=name]", "olga").await;
    fill(&b, "#account-add input[name=password]", PASSWORD).await;
    click(&b, "#account-add button[type=submit]").await;
    b.wait_text("tr[data-user=\"olga\"]", |t| t.contains("operator"))
        .await;
    let (_, users) = s.get("/api/users").await;
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["name"] == "olga" && u["role"] == "operator"),
        "{users}"
    );

    b.client.goto(&s.url("/admin/tokens")).await.unwrap();
    b.wait_css("#token-create").await;
    b.client
        .execute("window.confirm = () => true;", vec![])
        .await
        .unwrap();
    fill(&b, "#token-create input[name=name]", "ci").await;
    fill(&b, "#token-create select[name=role]", "operator").await;
    click(&b, "#token-create button[type=submit]").await;
    let secret = b.wait_text("#token-secret", |t| !t.is_empty()).await;
    b.wait_text("tr[data-token=\"ci\"]", |t| t.contains("operator"))
        .await;
    let me = |secret: String| {
        let s = &s;
        async move {
            let r = s
                .http
                .get(s.url("/api/me"))
                .bearer_auth(secret)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (st, v) = me(secret.clone()).await;
    assert_eq!((st, v["actor"].as_str()), (200, Some("token:ci")), "{v}");
    // Shown once: a reload of the page does not have it.
    b.client.refresh().await.unwrap();
    b.wait_css("tr[data-token=\"ci\"]").await;
    let source = b.client.source().await.unwrap();
    assert!(!source.contains(&secret), "the secret is on the page again");

    b.client
        .execute("window.confirm = () => true;", vec![])
        .await
        .unwrap();
    click(&b, "tr[data-token=\"ci\"] button").await;
    b.wait_text("#token-rows", |t| t.contains("No token."))
        .await;
    let (st, _) = me(secret).await;
    assert_eq!(st, 401, "a revoked token still works");

    // The operator: no Admin link, and the admin pages answer 403 with a page.
    let o = logged_in(&s, "olga", PASSWORD, "/events").await;
    let nav = o.wait_text("nav", |_| true).await;
    assert!(!nav.contains("Admin") && nav.contains("Events"), "{nav}");
    for page in [
        "/admin/accounts",
        "/admin/tokens",
        "/admin/sessions",
        "/admin/audit",
        "/admin/types",
    ] {
        o.client.goto(&s.url(page)).await.unwrap();
        o.wait_text("#admin-denied", |t| t.contains("for admins"))
            .await;
        assert!(o.client.current_url().await.unwrap().path() == page);
    }
    let r = s
        .http
        .get(s.url("/admin/accounts"))
        .header("cookie", session_cookie(&o).await)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // The audit shows what the admin did, with the before → after of the role change.
    let (st, v) = s
        .send(
            reqwest::Method::PATCH,
            "/api/users/olga",
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    b.client.goto(&s.url("/admin/audit")).await.unwrap();
    let audit = b
        .wait_text("#audit-rows", |t| t.contains("user_changed"))
        .await;
    assert!(audit.contains("operator → viewer"), "{audit}");
    assert!(
        audit.contains("token_created") && audit.contains("user_added"),
        "{audit}"
    );
    assert!(!audit.contains("registered"), "{audit}");
}

async fn session_cookie(b: &Browser) -> String {
    let c = b
        .client
        .get_named_cookie("gatehouse_session")
        .await
        .unwrap();
    format!("gatehouse_session={}", c.value())
}

/// The seqs of the event rows on the page, newest first (one script call).
async fn row_seqs(b: &Browser) -> Vec<i64> {
    let v = b
        .client
        .execute(
            "return Array.from(document.querySelectorAll('#event-rows tr[data-seq]')).map(r => [Number(r.dataset.seq), r.dataset.kind]);",
            vec![],
        )
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r[1], "state_changed", "a row of another kind: {r}");
            r[0].as_i64().unwrap()
        })
        .collect()
}

async fn counter_add(s: &Server) -> i64 {
    let (st, v) = s
        .send(
            reqwest::Method::POST,
            "/api/state/counter",
            Some(json!({"add": 1})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (_, e) = s.get("/api/events?kind=state_changed&limit=1").await;
    e[0]["seq"].as_i64().unwrap()
}

/// Fetches a link of the page from the page (its session) and returns the body.
async fn fetch_link(b: &Browser, css: &str) -> String {
    let v = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(document.querySelector(arguments[0]).href, {credentials: 'same-origin'})
               .then(r => r.text()).then(done, e => done('fetch failed: ' + e));",
            vec![json!(css)],
        )
        .await
        .unwrap();
    v.as_str().unwrap_or_default().to_string()
}

/// The event log filters by kind in the URL, and its export links download exactly the rows
/// it shows; the live tail prepends a new matching event, and while paused prepends nothing
/// (a count shows instead) until resumed.
#[tokio::test]
async fn the_event_log_filters_exports_and_tails_live() {
    let s = Server::start().await;
    let mut board = s.board().await;
    board.exchange(&msg("1953", 1, "")).await;
    for _ in 0..3 {
        counter_add(&s).await;
    }
    let b = logged_in(
        &s,
        "admin",
        &first_password(&s),
        "/events?kind=state_changed",
    )
    .await;
    b.wait_css("#event-rows tr[data-seq]").await;
    let shown = row_seqs(&b).await;
    let (_, want) = s.get("/api/events?kind=state_changed").await;
    let want: Vec<i64> = want
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(shown, want);
    assert_eq!(shown.len(), 3);
    let kind = b
        .client
        .execute(
            "return document.querySelector('input[name=kind]').value;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kind, json!("state_changed"));

    // The exports, fetched from the page with its session: the rows shown, no more.
    let jsonl = fetch_link(&b, "#export-jsonl").await;
    let seqs: Vec<i64> = parse_jsonl(&jsonl)
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, shown, "{jsonl}");
    let csv = fetch_link(&b, "#export-csv").await;
    let rows = parse_csv(&csv);
    let seqs: Vec<i64> = rows[1..].iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(seqs, shown, "{csv}");
    assert!(rows[1..].iter().all(|r| r[3] == "state_changed"));
    b.screenshot("events-desktop").await;

    // Live: a new matching event is prepended (the stream may still be opening when the
    // first is made: make another until one shows). A board's events are not (other kinds).
    let deadline = tokio::time::Instant::now() + WAIT;
    let live = loop {
        board.exchange(&msg("1953", 2, "")).await;
        let seq = counter_add(&s).await;
        let mut shown_now = false;
        for _ in 0..30 {
            if row_seqs(&b).await.first() == Some(&seq) {
                shown_now = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if shown_now {
            break seq;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event was prepended live"
        );
    };
    let before_pause = row_seqs(&b).await;
    assert_eq!(before_pause.first(), Some(&live));
    assert!(
        before_pause.windows(2).all(|w| w[0] > w[1]),
        "{before_pause:?}"
    );

    // Paused: nothing is prepended, the count says what arrived.
    click(&b, "#events-pause").await;
    b.wait_text("#events-pause", |t| t == "Resume").await;
    let a = counter_add(&s).await;
    let c = counter_add(&s).await;
    b.wait_text("#events-missed", |t| t == "2 new").await;
    assert_eq!(row_seqs(&b).await, before_pause, "rows came while paused");
    // Resumed: the gap is filled, newest first.
    click(&b, "#events-pause").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = row_seqs(&b).await;
        if now.len() == before_pause.len() + 2 {
            assert_eq!(&now[..2], &[c, a]);
            assert_eq!(&now[2..], &before_pause[..]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gap was not filled: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hidden = b
        .client
        .execute(
            "return document.getElementById('events-missed').hidden;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(hidden, json!(true));
}

/// A viewer sees the event log and the API viewer without a single action form, and no
/// Admin link; the API viewer lists the operations by tag, with the export among them.
#[tokio::test]
async fn a_viewer_reads_the_log_and_the_api_without_forms() {
    let s = Server::start().await;
    let (st, v) = s
        .send(
            reqwest::Method::POST,
            "/api/users",
            Some(json!({"name": "vera", "password": PASSWORD, "role": "viewer"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let b = logged_in(&s, "vera", PASSWORD, "/events").await;
    b.wait_css("#event-rows").await;
    let nav = b.wait_text("nav", |_| true).await;
    assert!(!nav.contains("Admin") && nav.contains("API"), "{nav}");
    for page in ["/events", "/api-docs"] {
        b.client.goto(&s.url(page)).await.unwrap();
        b.wait_css("main h1").await;
        let forms = b
            .client
            .execute(
                "return document.querySelectorAll('form[data-api]').length;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(forms, json!(0), "{page}");
    }
    let docs = b
        .wait_text("#tag-history", |t| t.contains("/api/events/export"))
        .await;
    assert!(
        docs.contains("/api/events") && docs.contains("format"),
        "{docs}"
    );
    b.wait_text("#tag-accounts", |t| t.contains("/api/tokens"))
        .await;
}
