//! The HTTP server itself: health and readiness without the token, Prometheus metrics (with the
//! token, and on `--metrics-listen` without), the header and request deadlines against slow
//! clients, the connection caps, and the input checks (engage bounds, 415).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{Mosquitto, Server, TOKEN, msg};
use gatehouse::gateway::mqtt::MqttSettings;

/// Waits (at most `limit`) until the peer closes `c`; `false` if it is still open then.
async fn closed_within(c: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads one HTTP/1.1 answer (headers and a `Content-Length` body) from `c`.
async fn read_answer(c: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body.to_string());
            }
        }
    }
}

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// Polls until the HTTP gauge shows `n` open connections.
async fn wait_http_connections(s: &Server, n: u64) {
    for _ in 0..400 {
        if s.running()
            .hub
            .stats
            .http_connections
            .load(Ordering::Relaxed)
            == n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "http_connections stayed at {}, expected {n}",
        s.running()
            .hub
            .stats
            .http_connections
            .load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn healthz_and_readyz_need_no_token_and_say_nothing_else() {
    let s = Server::start().await;
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "ok");
    let r = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"ready": true}));
    // The rest of the API still needs the token.
    let r = s.http.get(s.url("/api/stats")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn readyz_is_503_until_the_external_broker_is_reached() {
    // A port where nothing listens (yet): the client keeps trying.
    let mut m = Mosquitto::start().await;
    m.stop();
    let url = m.url();
    let s = Server::start_with(|s| s.mqtt = MqttSettings::External { url }).await;
    let r = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ready"], false, "{v}");
    assert_eq!(
        v["reasons"],
        json!(["mqtt: not connected to the external broker"]),
        "{v}"
    );
    let (_, metrics) = metrics_text(&s, true).await;
    assert!(
        metrics.lines().any(|l| l == "gatehouse_mqtt_up 0"),
        "{metrics}"
    );

    m.restart().await;
    // The client retries with backoff up to 5 s.
    wait_readyz(&s, 200).await;
    let v: Value = s
        .http
        .get(s.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"ready": true}));
    // The broker goes away: unready again until the client is back.
    m.stop();
    wait_readyz(&s, 503).await;
    m.restart().await;
    wait_readyz(&s, 200).await;
}

async fn wait_readyz(s: &Server, want: u16) {
    let mut last = None;
    for _ in 0..120 {
        let r = s.http.get(s.url("/readyz")).send().await.unwrap();
        if r.status() == want {
            return;
        }
        last = Some(r.status());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("/readyz stayed {last:?}, never {want}");
}

async fn metrics_text(s: &Server, token: bool) -> (u16, String) {
    let mut req = s.http.get(s.url("/metrics"));
    if token {
        req = req.bearer_auth(TOKEN);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    }
    (status, r.text().await.unwrap())
}

fn assert_scrape(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        "# TYPE gatehouse_acon_messages counter",
        "gatehouse_acon_messages 1",
        "# TYPE gatehouse_http_connections gauge",
        "# TYPE gatehouse_acon_connections gauge",
        "gatehouse_refusals_total{reason=\"acon_rejected\"} 0",
        "# TYPE gatehouse_store_commit_seconds histogram",
        "gatehouse_store_commit_seconds_bucket{le=\"+Inf\"}",
        "gatehouse_store_commit_seconds_sum",
        "gatehouse_store_commit_seconds_count",
        "gatehouse_db_bytes",
        "gatehouse_store_queue_depth",
        "gatehouse_store_failed_units",
        "gatehouse_store_failures",
        "gatehouse_retention_removed_messages",
        "gatehouse_retention_removed_events",
        "gatehouse_skaben_pending_pushes 0",
        "gatehouse_skaben_packets",
        "gatehouse_skaben_cups_sent",
        "gatehouse_mqtt_up 1",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| *l == want || l.starts_with(&format!("{want} "))),
            "missing {want:?} in\n{text}"
        );
    }
    // Every sample of the histogram has a number.
    for l in lines
        .iter()
        .filter(|l| l.starts_with("gatehouse_store_commit_seconds"))
    {
        let v = l.rsplit_once(' ').unwrap().1;
        assert!(v.parse::<f64>().is_ok(), "{l}");
    }
}

#[tokio::test]
async fn metrics_need_the_token_and_show_every_counter() {
    let s = Server::start().await;
    s.board().await.exchange(&msg("1", 1, "")).await;
    let (status, body) = metrics_text(&s, false).await;
    assert_eq!(status, 401, "{body}");
    let (status, text) = metrics_text(&s, true).await;
    assert_eq!(status, 200);
    assert_scrape(&text);
    // Every /api/stats counter is a metric of the same name.
    let (_, stats) = s.get("/api/stats").await;
    for (name, v) in stats.as_object().unwrap() {
        if v.is_u64() {
            assert!(
                text.contains(&format!("# TYPE gatehouse_{name} ")),
                "{name} not in /metrics"
            );
        }
    }
}

#[tokio::test]
async fn metrics_listen_serves_metrics_without_the_token_and_nothing_else() {
    let s = Server::start_with(|s| s.metrics_listen = Some("127.0.0.1:0".into())).await;
    s.board().await.exchange(&msg("1", 1, "")).await;
    let addr = s.running().metrics_addr.expect("a metrics listener");
    let r = s
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_scrape(&r.text().await.unwrap());
    for path in ["/api/stats", "/api/devices", "/readyz"] {
        let r = s
            .http
            .get(format!("http://{addr}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the metrics listener");
    }
}

#[tokio::test]
async fn slow_headers_are_closed_at_the_deadline_while_requests_keep_working() {
    let s = Server::start_with(|s| s.http.header_timeout = Duration::from_secs(2)).await;
    let addr = s.running().http_addr;
    const SLOW: usize = 40;
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /api/stats HTTP/1.1\r\nHost: gatehouse\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(c);
    }
    // A byte every 500 ms on each, and a normal request meanwhile: answered.
    let mut closed = [false; SLOW];
    for _ in 0..40 {
        for (i, c) in slow.iter_mut().enumerate() {
            if !closed[i] && c.write_all(b"a").await.is_err() {
                closed[i] = true;
            }
        }
        let (st, _) = s.get("/api/stats").await;
        assert_eq!(st, 200);
        for (i, c) in slow.iter_mut().enumerate() {
            if !closed[i] {
                closed[i] = closed_within(c, Duration::from_millis(10)).await;
            }
        }
        if closed.iter().all(|&c| c) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        closed.iter().all(|&c| c),
        "{} of {SLOW} slow connections still open after 20 s with a 2 s header deadline",
        closed.iter().filter(|&&c| !c).count()
    );
    assert!(
        s.running()
            .hub
            .stats
            .http_header_timeouts
            .load(Ordering::Relaxed)
            >= SLOW as u64
    );
    let (st, _) = s.get("/api/stats").await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_deadline() {
    let s = Server::start_with(|s| s.http.header_timeout = Duration::from_secs(1)).await;
    let mut c = TcpStream::connect(s.running().http_addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        .await
        .unwrap();
    let (st, body) = read_answer(&mut c).await;
    assert_eq!((st, body.trim()), (200, "ok"));
    assert!(
        closed_within(&mut c, Duration::from_secs(15)).await,
        "an idle keep-alive connection stayed open"
    );
}

#[tokio::test]
async fn a_request_whose_body_never_arrives_is_answered_503_at_the_request_deadline() {
    let s = Server::start_with(|s| s.http.request_timeout = Duration::from_secs(1)).await;
    s.board().await.exchange(&msg("1", 1, "")).await;
    let mut c = TcpStream::connect(s.running().http_addr).await.unwrap();
    c.write_all(
        format!(
            "PUT /api/devices/acon/1/cells/2 HTTP/1.1\r\nHost: gatehouse\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"min"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (st, body) = read_answer(&mut c).await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("--http-request-timeout-secs"), "{body}");
    assert_eq!(
        s.running()
            .hub
            .stats
            .http_request_timeouts
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn the_per_address_cap_closes_the_extra_connection_at_once() {
    let s = Server::start_with(|s| {
        s.http.max_connections_per_addr = 3;
        s.http.header_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = s.running().http_addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.1", addr).await);
    }
    wait_http_connections(&s, 3).await;
    let mut extra = connect_from("127.0.0.1", addr).await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(10)).await,
        "a 4th connection from one address stayed open"
    );
    let stats = &s.running().hub.stats;
    assert_eq!(stats.http_refused_per_addr.load(Ordering::Relaxed), 1);
    // Another address is not affected.
    let mut other = connect_from("127.0.0.2", addr).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut other).await.0, 200);
    // A place freed is a place again.
    drop(held.pop());
    wait_http_connections(&s, 3).await;
    let mut again = connect_from("127.0.0.1", addr).await;
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut again).await.0, 200);
    assert_eq!(stats.http_refused_per_addr.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_connection_cap_closes_connections_over_it_at_once() {
    let s = Server::start_with(|s| {
        s.http.max_connections = 2;
        s.http.header_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = s.running().http_addr;
    let a = connect_from("127.0.0.1", addr).await;
    let _b = connect_from("127.0.0.2", addr).await;
    wait_http_connections(&s, 2).await;
    let mut c = connect_from("127.0.0.3", addr).await;
    assert!(
        closed_within(&mut c, Duration::from_secs(10)).await,
        "a connection over --http-max-connections stayed open"
    );
    let stats = &s.running().hub.stats;
    assert_eq!(stats.http_refused_full.load(Ordering::Relaxed), 1);
    drop(a);
    wait_http_connections(&s, 1).await;
    // The freed place takes the next connection (the test's client, kept alive).
    let (st, v) = s.get("/api/stats").await;
    assert_eq!(st, 200);
    assert_eq!(v["http_refused_full"], 1, "{v}");
}

#[tokio::test]
async fn engage_bounds_name_the_field() {
    let s = Server::start().await;
    s.board().await.exchange(&msg("1", 1, "")).await;
    let year_and_a_day = time::OffsetDateTime::now_utc() + time::Duration::days(366);
    let cases = [
        (json!({"minutes": 99_999_999_999i64}), "minutes"),
        (json!({"minutes": 525_601}), "minutes"),
        (
            json!({"expires_at": year_and_a_day.format(&time::format_description::well_known::Rfc3339).unwrap()}),
            "expires_at",
        ),
    ];
    for (body, field) in cases {
        let (st, e) = s
            .send(
                Method::PUT,
                "/api/devices/acon/1/cells/2",
                Some(body.clone()),
            )
            .await;
        assert_eq!(st, 400, "{body}: {e}");
        assert_eq!(e["field"], field, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains("one year"), "{e}");
    }
    // The bound itself is allowed.
    let (st, v) = s
        .send(
            Method::PUT,
            "/api/devices/acon/1/cells/2",
            Some(json!({"minutes": 525_600})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["expires_at"].as_str().unwrap().contains('T'), "{v}");
}

async fn raw(s: &Server, method: Method, path: &str, ct: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = s
        .http
        .request(method, s.url(path))
        .bearer_auth(TOKEN)
        .body(body.to_string());
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
    }
    let r = req.send().await.unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415_on_every_route() {
    let s = Server::start().await;
    s.board().await.exchange(&msg("1", 1, "")).await;
    let routes = [
        (Method::PUT, "/api/devices/acon/1"),
        (Method::PUT, "/api/devices/acon/1/cells/2"),
        (Method::POST, "/api/devices/acon/1/peers"),
        (Method::PUT, "/api/devices/lock/abc"),
        (Method::PUT, "/api/devices/lock/abc/config"),
        (Method::PATCH, "/api/devices/lock/abc/config"),
        (Method::PUT, "/api/types/lock"),
        (Method::POST, "/api/devices/lock/abc/credentials"),
        (Method::POST, "/api/types/lock/credentials"),
        (Method::POST, "/api/observers/me/credentials"),
    ];
    for (method, path) in &routes {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("application/json; charset=latin1"),
        ] {
            let (st, e) = raw(&s, method.clone(), path, ct, "{\"minutes\": 5}").await;
            assert_eq!(st, 415, "{method} {path} {ct:?}: {e}");
            assert!(
                e["error"].as_str().unwrap().contains("application/json"),
                "{e}"
            );
        }
    }
    // merge-patch only for PATCH.
    let (st, e) = raw(
        &s,
        Method::PUT,
        "/api/devices/acon/1/cells/2",
        Some("application/merge-patch+json"),
        "{\"minutes\": 5}",
    )
    .await;
    assert_eq!(st, 415, "{e}");
    let (st, e) = raw(
        &s,
        Method::PATCH,
        "/api/devices/lock/abc/config",
        Some("application/merge-patch+json"),
        "{\"on\": true}",
    )
    .await;
    assert_ne!(st, 415, "{e}");
    // JSON with its charset is JSON.
    let (st, e) = raw(
        &s,
        Method::PUT,
        "/api/devices/acon/1/cells/2",
        Some("application/json; charset=utf-8"),
        "{\"minutes\": 5}",
    )
    .await;
    assert_eq!(st, 200, "{e}");
    // No body needs no content type.
    let r = s
        .http
        .post(s.url("/api/devices/acon/1/reset"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, e) = raw(&s, Method::POST, "/api/devices/acon/1/block", None, "").await;
    assert_eq!(st, 200, "{e}");
}
