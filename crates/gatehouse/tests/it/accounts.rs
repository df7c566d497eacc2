//! The console's access: the first account, logins and sessions, roles on the server, API
//! tokens, cross-site refusal, login backoff, and `gatehouse user` — against a real server.

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, ORIGIN, SET_COOKIE};
use serde_json::{Value, json};

use crate::common::{Server, decode};

/// A browser-like client: no redirects followed, the session cookie sent by hand.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(s: &Server) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: s.url(""),
            cookie: None,
        }
    }

    /// `POST /login`; keeps the cookie on success. Returns the status and headers.
    async fn login(&mut self, name: &str, password: &str) -> (u16, HeaderMap) {
        let body = format!("name={}&password={}", enc(name), enc(password));
        let r = self
            .http
            .post(format!("{}/login", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ORIGIN, self.base.clone())
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        if let Some(c) = headers.get(SET_COOKIE) {
            let c = c.to_str().unwrap();
            self.cookie = Some(c.split(';').next().unwrap().to_string());
        }
        (status, headers)
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            r = r.header(COOKIE, c);
        }
        r
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .req(method, path)
            .header(ORIGIN, self.base.clone())
            .header("sec-fetch-site", "same-origin");
        if let Some(b) = body {
            r = r.json(&b);
        }
        decode(r.send().await.unwrap()).await
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn first_password(s: &Server) -> String {
    std::fs::read_to_string(s._dir.path().join("admin-password"))
        .unwrap()
        .trim()
        .to_string()
}

async fn add_user(s: &Server, name: &str, role: &str) -> String {
    let password = format!("{name}-password-1");
    let (st, v) = s
        .send(
            Method::POST,
            "/api/users",
            Some(json!({"name": name, "password": password, "role": role})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    password
}

/// First start: an `admin` account with a generated password in the data directory (mode
/// 0600); logging in with it gives an `HttpOnly; SameSite=Strict` cookie that acts as admin,
/// and a new login rotates the session.
#[tokio::test]
async fn the_first_start_creates_an_admin_who_can_log_in() {
    let s = Server::start().await;
    let path = s._dir.path().join("admin-password");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let password = first_password(&s);
    let mut b = Browser::new(&s);
    let (st, h) = b.login("admin", &password).await;
    assert_eq!(st, 303);
    assert_eq!(h["location"], "/");
    let cookie = h[SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let (st, me) = b.call(Method::GET, "/api/me", None).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["user"], "admin");
    let first = b.cookie.clone().unwrap();
    // A second login is a new session; the secret is never stored, only its hash.
    b.login("admin", &password).await;
    assert_ne!(b.cookie.clone().unwrap(), first);
    let (_, sessions) = s.get("/api/sessions").await;
    assert_eq!(sessions.as_array().unwrap().len(), 2, "{sessions}");
    let secret = first.split('=').nth(1).unwrap();
    let (_, events) = s.get("/api/events?limit=1000").await;
    let db = std::fs::read(s._dir.path().join("gatehouse.db")).unwrap_or_default();
    for hay in [events.to_string().into_bytes(), db] {
        let hay = String::from_utf8_lossy(&hay);
        assert!(
            !hay.contains(secret),
            "the session secret is stored somewhere"
        );
        assert!(!hay.contains(&password), "the password is stored somewhere");
    }
    // The first start's account is not made again on the next start.
    let (_, users) = s.get("/api/users").await;
    assert_eq!(users.as_array().unwrap().len(), 1);
    assert_eq!(users[0]["name"], "admin");
}

/// Viewers change nothing, operators run the venue, only admins manage accounts; a role
/// change applies to a live session at once.
#[tokio::test]
async fn roles_are_enforced_on_the_server() {
    let s = Server::start().await;
    let viewer_pw = add_user(&s, "vera", "viewer").await;
    let op_pw = add_user(&s, "otto", "operator").await;
    let mut viewer = Browser::new(&s);
    assert_eq!(viewer.login("vera", &viewer_pw).await.0, 303);
    let mut op = Browser::new(&s);
    assert_eq!(op.login("otto", &op_pw).await.0, 303);

    assert_eq!(viewer.call(Method::GET, "/api/state", None).await.0, 200);
    assert_eq!(viewer.call(Method::GET, "/api/devices", None).await.0, 200);
    let add = json!({"add": 5, "reason": "test"});
    let (st, v) = viewer
        .call(Method::POST, "/api/state/counter", Some(add.clone()))
        .await;
    assert_eq!(st, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("operator"), "{v}");
    let (st, v) = op
        .call(Method::POST, "/api/state/counter", Some(add.clone()))
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, _) = op.call(Method::GET, "/api/users", None).await;
    assert_eq!(st, 403, "operators don't see accounts");
    let (st, _) = op
        .call(
            Method::POST,
            "/api/users",
            Some(json!({"name": "x", "role": "admin"})),
        )
        .await;
    assert_eq!(st, 403);
    // The operator's change is recorded as the operator's.
    let (_, events) = s.get("/api/events?kind=state_changed&limit=10").await;
    assert_eq!(events[0]["actor"], "otto", "{events}");

    // Demoted: the same session is a viewer on its next request.
    let (st, v) = s
        .send(
            Method::PATCH,
            "/api/users/otto",
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        op.call(Method::POST, "/api/state/counter", Some(add))
            .await
            .0,
        403
    );
    // The last admin can be neither removed nor demoted.
    let (st, v) = s.send(Method::DELETE, "/api/users/admin", None).await;
    assert_eq!(st, 409, "{v}");
    let (st, _) = s
        .send(
            Method::PATCH,
            "/api/users/admin",
            Some(json!({"role": "operator"})),
        )
        .await;
    assert_eq!(st, 409);
}

/// Tokens: created with a role and shown once, used, last use shown, revoked; an expired one
/// is refused; a Bearer request never falls back to the cookie.
#[tokio::test]
async fn api_tokens_are_created_used_revoked_and_expire() {
    let s = Server::start().await;
    let (st, t) = s
        .send(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "scoreboard", "role": "viewer"})),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    let secret = t["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("gh_"));
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, token: &str| {
        http.request(method, s.url(path)).bearer_auth(token).send()
    };
    assert_eq!(
        call(Method::GET, "/api/state", &secret)
            .await
            .unwrap()
            .status(),
        200
    );
    let r = call(Method::POST, "/api/runs", &secret).await.unwrap();
    assert_eq!(r.status(), 403, "a viewer token changes nothing");
    let (_, list) = s.get("/api/tokens").await;
    assert_eq!(list[0]["name"], "scoreboard");
    assert!(list[0]["last_used"].is_string(), "{list}");
    assert!(list[0].get("token").is_none(), "the secret is shown once");
    assert!(!list.to_string().contains(&secret));
    // Same name twice: refused.
    let (st, _) = s
        .send(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "scoreboard", "role": "viewer"})),
        )
        .await;
    assert_eq!(st, 409);
    assert_eq!(
        s.send(Method::DELETE, "/api/tokens/scoreboard", None)
            .await
            .0,
        204
    );
    assert_eq!(
        call(Method::GET, "/api/state", &secret)
            .await
            .unwrap()
            .status(),
        401
    );

    // Expiry: in the past is refused; one that passes stops working.
    let (st, v) = s
        .send(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "old", "role": "operator", "expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!((st, v["field"].as_str()), (400, Some("expires_at")), "{v}");
    let soon = gatehouse::clock::rfc3339(gatehouse::clock::now_ms() + 1500);
    let (st, t) = s
        .send(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "brief", "role": "operator", "expires_at": soon})),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    let brief = t["token"].as_str().unwrap().to_string();
    assert_eq!(
        call(Method::GET, "/api/state", &brief)
            .await
            .unwrap()
            .status(),
        200
    );
    let mut expired = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if call(Method::GET, "/api/state", &brief)
            .await
            .unwrap()
            .status()
            == 401
        {
            expired = true;
            break;
        }
    }
    assert!(expired, "the token outlived its expiry");
    let (_, list) = s.get("/api/tokens").await;
    assert_eq!(list[0]["expired"], true, "{list}");

    // A wrong Bearer token with a valid cookie: refused (the cookie is not looked at).
    let mut b = Browser::new(&s);
    b.login("admin", &first_password(&s)).await;
    let r = b
        .req(Method::GET, "/api/state")
        .bearer_auth("gh_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// An admin sees the sessions and revokes one: its cookie stops working; logging out ends
/// one's own; a password change ends the account's sessions.
#[tokio::test]
async fn sessions_are_listed_and_revoked() {
    let s = Server::start().await;
    let pw = add_user(&s, "otto", "operator").await;
    let mut a = Browser::new(&s);
    a.login("otto", &pw).await;
    let mut b = Browser::new(&s);
    b.login("otto", &pw).await;
    let (_, list) = s.get("/api/sessions").await;
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert_eq!(list[0]["user"], "otto");
    // a's session, as it sees itself.
    let (_, me) = a.call(Method::GET, "/api/me", None).await;
    let mine = me["session"].as_str().unwrap().to_string();
    assert!(ids.contains(&mine), "{me} {list}");
    let (st, _) = s
        .send(Method::DELETE, &format!("/api/sessions/{mine}"), None)
        .await;
    assert_eq!(st, 204);
    assert_eq!(a.call(Method::GET, "/api/me", None).await.0, 401);
    assert_eq!(b.call(Method::GET, "/api/me", None).await.0, 200);
    // Logout.
    let r = b
        .req(Method::POST, "/logout")
        .header(ORIGIN, b.base.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(b.call(Method::GET, "/api/me", None).await.0, 401);
    // A password change ends the sessions.
    let mut c = Browser::new(&s);
    c.login("otto", &pw).await;
    assert_eq!(c.call(Method::GET, "/api/me", None).await.0, 200);
    let (st, _) = s
        .send(
            Method::PATCH,
            "/api/users/otto",
            Some(json!({"password": "a-new-password"})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(c.call(Method::GET, "/api/me", None).await.0, 401);
    let (_, ev) = s.get("/api/events?kind=session_ended&limit=10").await;
    let reasons: Vec<&str> = ev
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"revoked")
            && reasons.contains(&"logged out")
            && reasons.contains(&"password changed"),
        "{ev}"
    );
}

/// A state-changing request with the session cookie from another site is refused, and so is
/// a cross-site login; the same request from the console's own origin passes.
#[tokio::test]
async fn cross_site_requests_are_refused() {
    let s = Server::start().await;
    let mut b = Browser::new(&s);
    b.login("admin", &first_password(&s)).await;
    let post = |origin: Option<&str>, site: Option<&str>| {
        let mut r = b
            .req(Method::POST, "/api/state/counter")
            .json(&json!({"add": 1}));
        if let Some(o) = origin {
            r = r.header(ORIGIN, o);
        }
        if let Some(x) = site {
            r = r.header("sec-fetch-site", x);
        }
        r.send()
    };
    let r = post(Some("http://evil.example"), None).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post(None, Some("cross-site")).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post(Some(&b.base), Some("same-origin")).await.unwrap();
    assert_eq!(r.status(), 200);
    // Reads are not refused (they change nothing).
    let r = b
        .req(Method::GET, "/api/state")
        .header(ORIGIN, "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A login posted from another site.
    let r = b
        .http
        .post(s.url("/login"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ORIGIN, "http://evil.example")
        .body(format!("name=admin&password={}", first_password(&s)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get(SET_COOKIE).is_none());
}

/// Wrong passwords are refused and then backed off (429 with Retry-After, even for the right
/// password while it lasts), recorded without the password; another account is not affected.
#[tokio::test]
async fn wrong_passwords_are_refused_and_backed_off() {
    let s = Server::start().await;
    let pw = add_user(&s, "otto", "operator").await;
    let mut b = Browser::new(&s);
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(b.login("admin", &format!("guess-{i}")).await.0);
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    assert!(statuses[3..].iter().all(|&s| s == 429), "{statuses:?}");
    let (st, h) = b.login("admin", &first_password(&s)).await;
    assert_eq!(st, 429, "the right password waits too");
    let wait: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    assert!(b.cookie.is_none());
    // Another account from the same address still logs in (the address has slack).
    assert_eq!(b.login("otto", &pw).await.0, 303);
    let (_, ev) = s.get("/api/events?kind=login_failed&limit=100").await;
    let ev = ev.as_array().unwrap();
    assert_eq!(
        ev.len(),
        3,
        "refusals while backing off are counted, not recorded"
    );
    assert_eq!(ev[0]["data"]["user"], "admin");
    assert_eq!(ev[0]["data"]["addr"], "127.0.0.1");
    assert!(!serde_json::to_string(ev).unwrap().contains("guess-"));
    let (_, stats) = s.get("/api/stats").await;
    assert_eq!(stats["logins_failed"], 3);
    assert!(stats["logins_backed_off"].as_u64().unwrap() >= 3);
    // An unknown account is refused the same way.
    let mut c = Browser::new(&s);
    let (st, _) = c.login("nobody", "whatever-1").await;
    assert_eq!(st, 401);
}

/// `gatehouse user add|passwd|role|list|remove` on a stopped server's data directory; the
/// server started there afterwards logs the new account in.
#[tokio::test]
async fn the_user_command_line_on_a_data_directory() {
    let s = Server::start().await;
    let dir = s._dir.path().to_path_buf();
    let mut s = s;
    s.running.take().unwrap().shutdown().await.unwrap();
    let bin = env!("CARGO_BIN_EXE_gatehouse");
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut c = std::process::Command::new(bin);
        c.args(args).arg("--data-dir").arg(&dir);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(
        &[
            "user",
            "add",
            "greta",
            "--role",
            "operator",
            "--password-stdin",
        ],
        Some("greta-secret-1\n"),
    );
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&["user", "add", "hans", "--role", "viewer"], None);
    assert!(ok, "{out}{err}");
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap()
        .to_string();
    assert_eq!(generated.len(), 20);
    let (ok, _, err) = run(&["user", "add", "hans", "--role", "viewer"], None);
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = run(&["user", "role", "hans", "admin"], None);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["user", "list"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "admin\tadmin\ngreta\toperator\nhans\tadmin\n");
    let (ok, _, err) = run(&["user", "remove", "greta"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = run(
        &["user", "passwd", "hans", "--password-stdin"],
        Some("short\n"),
    );
    assert!(!ok && err.contains("password"), "{err}");

    // The server started on the directory knows them.
    let mut settings = crate::common::settings(&dir);
    settings.http_listen = "127.0.0.1:0".into();
    let running = gatehouse::server::start(settings).await.unwrap();
    let base = format!("http://{}", running.http_addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |name: &str, pw: &str| {
        http.post(format!("{base}/login"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!("name={name}&password={}", enc(pw)))
            .send()
    };
    assert_eq!(login("hans", &generated).await.unwrap().status(), 303);
    assert_eq!(
        login("greta", "greta-secret-1").await.unwrap().status(),
        401
    );
    // While it runs, the directory is refused for changes (use --url), listing still works.
    let (ok, _, err) = run(&["user", "remove", "hans"], None);
    assert!(!ok && err.contains("--url"), "{err}");
    let (ok, out, _) = run(&["user", "list"], None);
    assert!(ok && out.contains("hans"), "{out}");
    running.shutdown().await.unwrap();
}
