//! The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by `.ci/run`; nothing downloads a browser), driven over WebDriver with
//! fantoccini, against a server the test starts. These tests fail, not skip, when the
//! browser or its driver is missing. They also take the README's screenshots
//! (`docs/screenshots/`).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common::{Server, msg};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a page may take to show something: generous, as CI runs every test at once on
/// two cores.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// A chromedriver process and a headless Chromium session through it; both end on drop.
pub(crate) struct Browser {
    pub(crate) client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Ends chromedriver and the browsers it started: they are in its own process group
    /// (killing chromedriver alone would leave Chromium running).
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        // bash's `kill` takes a process group (dash's does not; .ci/run is bash).
        let _ = Command::new("bash")
            .args(["-c", &format!("kill -KILL -- {group}")])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a Chromium window of `width`×`height` CSS pixels.
    pub(crate) async fn start(width: u32, height: u32) -> Browser {
        for p in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(p).exists(),
                "{p} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            }
        });
        let mut caps = caps;
        if width < 500 {
            // A desktop window cannot be this narrow: a phone's viewport.
            caps["goog:chromeOptions"]["mobileEmulation"] = json!({
                "deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0},
            });
        }
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        driver,
                        _profile: profile,
                    };
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("no WebDriver session from chromedriver: {last:?}");
    }

    pub(crate) async fn wait_css(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    /// The text of the first element matching `css` once `ok` holds for it. Read in one
    /// script call: a live swap replaces the list's elements at any moment, so an element
    /// found by one WebDriver call can be stale by the next.
    pub(crate) async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = None;
        loop {
            let v = self
                .client
                .execute(
                    "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                    vec![json!(css)],
                )
                .await
                .unwrap_or_else(|e| panic!("reading {css}: {e}"));
            if let Some(t) = v.as_str() {
                if ok(t) {
                    return t.to_string();
                }
                last = Some(t.to_string());
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{css} never read as expected; last: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element matching `css` as a user would (WebDriver's click), finding
    /// it again when a live swap replaced it between the find and the click.
    pub(crate) async fn click(&self, css: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.wait_css(css).await.click().await {
                Ok(()) => return,
                Err(e)
                    if e.to_string().contains("stale")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
    }

    /// Fills the login form and submits it.
    pub(crate) async fn log_in(&self, name: &str, password: &str) {
        self.wait_css("input[name=name]")
            .await
            .send_keys(name)
            .await
            .unwrap();
        self.wait_css("input[name=password]")
            .await
            .send_keys(password)
            .await
            .unwrap();
        self.wait_css("form.login button[type=submit]")
            .await
            .click()
            .await
            .unwrap();
    }

    /// Every URL the page loaded (its own, its scripts, styles and requests since).
    pub(crate) async fn loaded_urls(&self) -> Vec<String> {
        let v = self
            .client
            .execute(
                "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));",
                vec![],
            )
            .await
            .unwrap_or_else(|e| panic!("reading the performance entries: {e}"));
        v.as_array()
            .unwrap_or_else(|| panic!("the performance entries are not a list: {v}"))
            .iter()
            .map(|u| u.as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub(crate) async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/screenshots");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(format!("{dir}/{name}.png"), png).unwrap();
    }
}

/// A console account with this role; returns its password.
pub(crate) async fn add_user(s: &Server, name: &str, role: &str) -> String {
    let password = format!("{name}-password-1");
    let (st, v) = s
        .send(
            reqwest::Method::POST,
            "/api/users",
            Some(json!({"name": name, "password": password, "role": role})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    password
}

pub(crate) fn first_password(s: &Server) -> String {
    std::fs::read_to_string(s._dir.path().join("admin-password"))
        .unwrap()
        .trim()
        .to_string()
}

/// The first login with the password the first start printed (and stored); a board that
/// connects afterwards appears in the device list without a reload; nothing the page loads
/// comes from anywhere but the server.
#[tokio::test]
async fn first_login_and_a_board_appears_without_a_reload() {
    let s = Server::start().await;
    let base = s.url("");
    let b = Browser::start(1280, 860).await;
    b.client.goto(&s.url("/devices")).await.unwrap();
    // No session: the login page, which comes back to the list.
    b.wait_css("form.login").await;
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains("/login?next=/devices")
    );
    b.log_in("admin", &first_password(&s)).await;
    b.wait_css("#device-rows").await;
    assert!(b.client.current_url().await.unwrap().path() == "/devices");
    let who = b.wait_css("nav .who").await.text().await.unwrap();
    assert!(who.contains("admin"), "{who}");

    // A board reports; the list shows it without a reload (the live stream).
    let mut board = s.board().await;
    board.exchange(&msg("1953", 1, "")).await;
    b.wait_text("tr[data-key=\"acon/1953\"]", |t| t.contains("online"))
        .await;
    // A mark on this page: gone if the page is loaded again.
    b.client
        .execute("window.__still_this_page = true;", vec![])
        .await
        .unwrap();
    let mut board2 = s.board().await;
    board2.exchange(&msg("2024", 1, "")).await;
    b.wait_text("tr[data-key=\"acon/2024\"]", |t| t.contains("online"))
        .await;
    // The count is swapped with the rows: it follows the list.
    b.wait_text("#device-count", |t| t == "2 of 2").await;
    let same = b
        .client
        .execute("return window.__still_this_page === true;", vec![])
        .await
        .unwrap();
    assert_eq!(same, json!(true), "the page was reloaded");
    b.screenshot("devices-desktop").await;

    for url in b.loaded_urls().await {
        assert!(url.starts_with(&base), "a request left the server: {url}");
    }
}

/// The phone layout of the device list (390 px wide), for the README.
#[tokio::test]
async fn the_device_list_on_a_phone() {
    let s = Server::start().await;
    let mut board = s.board().await;
    board.exchange(&msg("1953", 1, "")).await;
    let b = Browser::start(390, 844).await;
    b.client.goto(&s.url("/login?next=/devices")).await.unwrap();
    b.log_in("admin", &first_password(&s)).await;
    b.wait_css("tr[data-key=\"acon/1953\"]").await;
    b.screenshot("devices-phone").await;
}

/// A wrong password is refused on the login page (and no session is made); after a few,
/// the page says to wait.
#[tokio::test]
async fn a_wrong_password_is_refused_and_backed_off_in_the_browser() {
    let s = Server::start().await;
    let b = Browser::start(1280, 860).await;
    // The first three are checked and refused; after them the waits double from 1 s, so
    // however slow the browser, one of the next attempts comes while a wait is on.
    let mut waited = false;
    for i in 0..10 {
        b.client.goto(&s.url("/login")).await.unwrap();
        b.log_in("admin", &format!("wrong-{i}")).await;
        let e = b.wait_css("p.error").await.text().await.unwrap();
        if i < 3 {
            assert!(e.contains("wrong name or password"), "{e}");
        } else if e.contains("try again in") {
            waited = true;
            break;
        } else {
            assert!(e.contains("wrong name or password"), "{e}");
        }
    }
    assert!(waited, "the login never backed off");
    assert!(b.client.get_all_cookies().await.unwrap().is_empty());
}
