//! `GET /api/events/stream`: live events of real boards over TCP, the filters, resuming with
//! `Last-Event-ID` / `?after=`, `resync`, the coalesced `device` messages, the cap on open
//! streams, refused parameters, and the end of a stream at shutdown. Read with reqwest and a
//! small SSE parser.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{Server, TOKEN, msg};

/// One server-sent message (comments are skipped).
#[derive(Debug, Clone)]
struct Msg {
    event: String,
    id: Option<i64>,
    data: Value,
}

/// An open stream and what has been read of it.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    /// The next message; `None` when the server ended the stream. Panics after 10 s without
    /// one (a stream that hangs fails the test instead of holding it).
    async fn next(&mut self) -> Option<Msg> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = ("message".to_string(), None, Vec::new());
                for line in block.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event = value.to_string(),
                        "id" => id = Some(value.parse::<i64>().expect("a numeric id")),
                        "data" => data.push(value.to_string()),
                        _ => {}
                    }
                }
                if data.is_empty() {
                    continue; // a comment: the opening line, a keep-alive
                }
                let data = serde_json::from_str(&data.join("\n")).expect("JSON data");
                return Some(Msg { event, id, data });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("a message within 10 s")
                .expect("the stream reads");
            match chunk {
                Some(c) => self.buf.push_str(std::str::from_utf8(&c).expect("UTF-8")),
                None => return None,
            }
        }
    }

    /// The next `event` message (the `device` ones in between are skipped).
    async fn next_event(&mut self) -> Msg {
        loop {
            let m = self.next().await.expect("the stream goes on");
            if m.event != "device" {
                return m;
            }
        }
    }

    /// The next `n` `event` messages.
    async fn events(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(self.next_event().await);
        }
        out
    }

    /// The next `n` events of boards (the server's own, like the PINGs at start, skipped).
    async fn board_events(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::new();
        while out.len() < n {
            let m = self.next_event().await;
            if m.data["device"]
                .as_str()
                .is_some_and(|d| d.starts_with("acon/"))
            {
                out.push(m);
            }
        }
        out
    }
}

async fn open_with(s: &Server, query: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut req = s
        .http
        .get(s.url(&format!("/api/events/stream{query}")))
        .bearer_auth(TOKEN);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    req.send().await.unwrap()
}

/// Opens a stream; it is subscribed once the answer's head is here.
async fn open(s: &Server, query: &str, last_event_id: Option<&str>) -> Stream {
    let resp = open_with(s, query, last_event_id).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    Stream {
        resp,
        buf: String::new(),
    }
}

/// A server that sends its PINGs (events of `<type>/all`) at start only.
async fn server(f: impl FnOnce(&mut gatehouse::server::Settings)) -> Server {
    Server::start_with(|s| {
        s.core.ping_interval_ms = 3_600_000;
        f(s)
    })
    .await
}

/// A board's first message: it is registered and comes online (two events).
async fn first_message(s: &Server, id: &str) {
    let mut b = s.board().await;
    b.exchange(&msg(id, 1, "")).await;
}

/// `/api/events` for `query`, oldest first.
async fn logged(s: &Server, query: &str) -> Vec<Value> {
    let (status, v) = s.get(&format!("/api/events?limit=10000{query}")).await;
    assert_eq!(status, 200, "{v}");
    let mut all = v.as_array().unwrap().clone();
    all.reverse();
    all
}

fn kinds(ms: &[Msg]) -> Vec<(String, String)> {
    ms.iter()
        .map(|m| {
            (
                m.data["device"].as_str().unwrap_or("").to_string(),
                m.data["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(device: &str, kind: &str) -> (String, String) {
    (device.to_string(), kind.to_string())
}

/// Every event reaches a live stream as `event: event` with its seq as id and the object
/// `/api/events` shows; `device` and `kind` filter as they do there.
#[tokio::test]
async fn live_events_arrive_with_their_seq_and_the_filters_hold() {
    let s = server(|_| {}).await;
    let mut all = open(&s, "", None).await;
    let mut one = open(&s, "?device=acon/2", None).await;
    let mut online = open(&s, "?kind=online", None).await;
    let mut both = open(&s, "?device=acon/2&kind=online", None).await;
    // Board 1's events are committed before board 2's: a filter that let them through would
    // show them first.
    first_message(&s, "1").await;
    first_message(&s, "2").await;

    let got = all.board_events(4).await;
    assert_eq!(
        kinds(&got),
        [
            pair("acon/1", "registered"),
            pair("acon/1", "online"),
            pair("acon/2", "registered"),
            pair("acon/2", "online")
        ]
    );
    let log = logged(&s, "").await;
    for m in &got {
        assert_eq!(m.event, "event");
        let id = m.id.expect("an id");
        assert_eq!(m.data["seq"], id);
        let stored = log.iter().find(|e| e["seq"] == id).expect("in the log");
        assert_eq!(&m.data, stored, "the object /api/events shows");
    }
    let ids: Vec<i64> = got.iter().map(|m| m.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    assert_eq!(
        kinds(&one.events(2).await),
        [pair("acon/2", "registered"), pair("acon/2", "online")]
    );
    assert_eq!(
        kinds(&online.events(2).await),
        [pair("acon/1", "online"), pair("acon/2", "online")]
    );
    assert_eq!(kinds(&both.events(1).await), [pair("acon/2", "online")]);
    // And what comes next still passes the filter: board 3, then board 2 again (operator).
    first_message(&s, "3").await;
    let (st, v) = s
        .send(Method::POST, "/api/devices/acon/2/block", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(kinds(&one.events(1).await), [pair("acon/2", "blocked")]);
    assert_eq!(kinds(&online.events(1).await), [pair("acon/3", "online")]);
}

/// A stream resumed with `Last-Event-ID` gets exactly the events it missed, oldest first,
/// then the live ones: no gap, no duplicate; `?after=` does the same for scripts, and the
/// header wins over it (a browser reconnects to the same URL).
#[tokio::test]
async fn resuming_gives_exactly_the_missed_events_then_live_ones() {
    let s = server(|_| {}).await;
    let mut first = open(&s, "", None).await;
    first_message(&s, "1").await;
    let seen = first.board_events(2).await;
    let last = seen[1].id.unwrap();
    drop(first);

    // Missed while away: boards 2 and 3.
    first_message(&s, "2").await;
    first_message(&s, "3").await;
    let missed = logged(&s, "&kind=online").await;
    assert_eq!(missed.len(), 3, "boards 1, 2 and 3 came online");

    let mut by_header = open(&s, "?after=0", Some(&last.to_string())).await;
    let mut by_query = open(&s, &format!("?after={last}"), None).await;
    let mut one_device = open(&s, "?device=acon/3", Some(&last.to_string())).await;
    // Live after the resume: board 4.
    first_message(&s, "4").await;
    // Every event after `last` (the server's own included), in the log's order.
    let expected: Vec<i64> = logged(&s, "")
        .await
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .filter(|&seq| seq > last)
        .collect();
    assert!(expected.len() >= 6, "{expected:?}");
    for stream in [&mut by_header, &mut by_query] {
        let got = stream.events(expected.len()).await;
        let ids: Vec<i64> = got.iter().map(|m| m.id.unwrap()).collect();
        assert_eq!(ids, expected, "the missed events, then the live ones");
        assert!(got.iter().all(|m| m.event == "event"));
    }
    let got = one_device.events(2).await;
    assert_eq!(
        kinds(&got),
        [pair("acon/3", "registered"), pair("acon/3", "online")]
    );
    // Nothing more for acon/3, and no duplicate of the backlog among the live ones.
    let (st, _) = s
        .send(Method::POST, "/api/devices/acon/3/block", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        kinds(&one_device.events(1).await),
        [pair("acon/3", "blocked")]
    );

    // Resuming from the newest event: nothing missed, straight to live.
    let newest = logged(&s, "").await.last().unwrap()["seq"]
        .as_i64()
        .unwrap();
    let mut caught_up = open(&s, "", Some(&newest.to_string())).await;
    first_message(&s, "5").await;
    let got = caught_up.events(2).await;
    assert_eq!(
        kinds(&got),
        [pair("acon/5", "registered"), pair("acon/5", "online")]
    );
    assert!(got[0].id.unwrap() > newest);
}

/// Resuming while events keep coming: every stream, whatever moment it opened at, gets each
/// event after its id exactly once, in the log's order (the events committed between its
/// subscription and its backlog read are the ones that could come twice or not at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_while_events_keep_coming_has_no_gap_and_no_duplicate() {
    let s = server(|_| {}).await;
    let rename = |i: usize| {
        s.http
            .put(s.url("/api/devices/acon/7"))
            .bearer_auth(TOKEN)
            .json(&json!({"name": format!("n{i}")}))
    };
    assert_eq!(rename(0).send().await.unwrap().status(), 200);
    const N: usize = 150;
    let mut writer = tokio::task::JoinSet::new();
    {
        let reqs: Vec<_> = (1..=N).map(rename).collect();
        writer.spawn(async move {
            for r in reqs {
                assert_eq!(r.send().await.unwrap().status(), 200);
            }
        });
    }
    // Streams opened while the renames go on, each resuming after the newest event then.
    let mut streams = Vec::new();
    for _ in 0..5 {
        let log = logged(&s, "&device=acon/7").await;
        let after = log.last().unwrap()["seq"].as_i64().unwrap();
        streams.push((
            after,
            open(&s, "?device=acon/7", Some(&after.to_string())).await,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.join_all().await;
    let log: Vec<i64> = logged(&s, "&device=acon/7")
        .await
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    for (after, mut stream) in streams {
        let expected: Vec<i64> = log.iter().copied().filter(|&q| q > after).collect();
        let got: Vec<i64> = stream
            .events(expected.len())
            .await
            .iter()
            .map(|m| m.id.unwrap())
            .collect();
        assert_eq!(got, expected, "resumed after {after}");
    }
}

/// `device` messages: a burst of events about one device gives fewer `device` messages than
/// events (at most one per 250 ms), the last one with the final state — the object
/// `/api/devices` lists; its id is the stream's resume point (no event after it was sent
/// before it). The events themselves all arrive.
#[tokio::test]
async fn a_burst_of_events_gives_fewer_device_messages_with_the_final_state() {
    let s = server(|_| {}).await;
    let (st, v) = s
        .send(
            Method::PUT,
            "/api/devices/acon/5",
            Some(json!({"name": "start"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut stream = open(&s, "?device=acon/5", None).await;
    // 40 renames at once: their units are committed together, their events delivered in a
    // burst.
    const N: usize = 40;
    let mut renames = tokio::task::JoinSet::new();
    for i in 0..N {
        let req = s
            .http
            .put(s.url("/api/devices/acon/5"))
            .bearer_auth(TOKEN)
            .json(&json!({"name": format!("name-{i}")}));
        renames.spawn(async move { req.send().await.unwrap().status() });
    }
    for st in renames.join_all().await {
        assert_eq!(st, 200);
    }
    let log = logged(&s, "&device=acon/5&kind=device_updated").await;
    assert_eq!(log.len(), N);
    let final_name = log.last().unwrap()["data"]["name"]
        .as_str()
        .unwrap()
        .to_string();

    let mut events = Vec::new();
    let mut devices = Vec::new();
    let mut last_event_id = 0;
    loop {
        let m = stream.next().await.expect("the stream goes on");
        match m.event.as_str() {
            "event" => {
                last_event_id = m.id.unwrap();
                events.push(m);
            }
            "device" => {
                assert!(m.id.unwrap() >= last_event_id, "the resume point: {m:?}");
                let done = events.len() == N && m.data["name"] == final_name.as_str();
                devices.push(m);
                if done {
                    break;
                }
            }
            other => panic!("unexpected {other}: {m:?}"),
        }
    }
    assert_eq!(events.len(), N, "every event arrives");
    assert!(
        devices.len() < N,
        "{} device messages for {N} events",
        devices.len()
    );
    let (_, list) = s.get("/api/devices").await;
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "5")
        .unwrap()
        .clone();
    assert_eq!(devices.last().unwrap().data, listed);
}

/// An id older than what retention kept, or one this log never had: one `resync` (with the
/// reason), then live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_older_than_kept_or_unknown_gets_a_resync_then_live_events() {
    let s = server(|s| {
        s.store.retention = gatehouse::store::retention::Retention {
            messages_max_age: None,
            events_max_age: Some(Duration::from_millis(500)),
            max_db_bytes: None,
            every: Duration::from_millis(100),
        };
    })
    .await;
    first_message(&s, "1").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Newer events, so the old ones are not the newest (which retention keeps).
    first_message(&s, "2").await;
    let store = s.running().hub.store().clone();
    for _ in 0..600 {
        if store.health().retention_removed_events >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(store.health().retention_removed_events >= 2);
    // The oldest events are gone: a client that saw seq 1 missed seq 2.
    let newest = logged(&s, "").await.last().unwrap()["seq"]
        .as_i64()
        .unwrap();
    for (id, reason, board) in [("1", "retention", "21"), ("999999", "unknown_id", "22")] {
        let mut stream = open(&s, "", Some(id)).await;
        let m = stream.next().await.unwrap();
        assert_eq!(m.event, "resync", "{m:?}");
        assert_eq!(m.data["reason"], reason, "{m:?}");
        assert!(m.data["message"].is_string());
        assert!(
            m.id.unwrap() >= newest,
            "a reconnect after it resumes from the newest event"
        );
        first_message(&s, board).await;
        let got = stream.board_events(2).await;
        let device = format!("acon/{board}");
        assert_eq!(
            kinds(&got),
            [pair(&device, "registered"), pair(&device, "online")]
        );
    }
}

/// At most `--http-max-streams` streams: one more is 503 naming the flag; the open ones are
/// the `http_streams` gauge in `/api/stats` and `/metrics`, and a closed one frees its place.
#[tokio::test]
async fn streams_over_the_cap_are_refused_and_counted() {
    let s = server(|s| s.http.max_streams = 2).await;
    let a = open(&s, "", None).await;
    let _b = open(&s, "?kind=online", None).await;
    let r = open_with(&s, "", None).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("--http-max-streams"),
        "{v}"
    );
    let (_, stats) = s.get("/api/stats").await;
    assert_eq!(stats["http_streams"], 2);
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "gatehouse_http_streams 2"),
        "{metrics}"
    );
    drop(a);
    let mut freed = false;
    for _ in 0..500 {
        if s.get("/api/stats").await.1["http_streams"] == 1 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "a closed stream frees its place");
    let _c = open(&s, "", None).await;
}

/// Parameters the stream does not take, and ids that are not seqs, are 400 naming them.
#[tokio::test]
async fn unknown_parameters_and_bad_ids_are_refused() {
    let s = server(|_| {}).await;
    for (query, id, field) in [
        ("?colour=red", None, "colour"),
        ("?limit=10", None, "limit"),
        ("?after=-1", None, "after"),
        ("?after=x", None, "after"),
        ("?kind=online&kind=offline", None, "kind"),
        ("", Some("abc"), "Last-Event-ID"),
    ] {
        let r = open_with(&s, query, id).await;
        assert_eq!(r.status(), 400, "{query} {id:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["field"], field, "{query}: {v}");
        assert!(v["error"].is_string());
    }
    let (_, stats) = s.get("/api/stats").await;
    assert_eq!(stats["http_streams"], 0, "a refused stream holds no place");
}

/// The request deadline bounds the answer's head only: a stream open for longer still
/// delivers.
#[tokio::test]
async fn a_stream_outlives_the_request_deadline() {
    let s = server(|s| s.http.request_timeout = Duration::from_millis(300)).await;
    let mut stream = open(&s, "?kind=online", None).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    first_message(&s, "1").await;
    assert_eq!(kinds(&stream.events(1).await), [pair("acon/1", "online")]);
}

/// Shutdown ends the open streams (the drain does not wait for them, even with a long
/// request deadline).
#[tokio::test]
async fn shutdown_ends_open_streams() {
    let mut s = server(|s| s.http.request_timeout = Duration::from_secs(3600)).await;
    let mut a = open(&s, "", None).await;
    let mut b = open(&s, "?kind=online", None).await;
    first_message(&s, "1").await;
    assert_eq!(a.board_events(1).await[0].data["kind"], "registered");
    let running = s.running.take().unwrap();
    tokio::time::timeout(Duration::from_secs(60), running.shutdown())
        .await
        .expect("shutdown does not wait for the streams")
        .unwrap();
    // Both streams end cleanly (what was still queued may come first).
    while a.next().await.is_some() {}
    while b.next().await.is_some() {}
}

/// A stream opened with a session or a token ends with a `logout` message once that session
/// is revoked or that token is revoked; the admin token's stream goes on.
#[tokio::test]
async fn a_revoked_session_or_token_ends_its_stream() {
    let s = Server::start().await;
    let (st, t) = s
        .send(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "wall", "role": "viewer"})),
        )
        .await;
    assert_eq!(st, 201, "{t}");
    let token = t["token"].as_str().unwrap().to_string();
    let (st, _) = s
        .send(
            Method::POST,
            "/api/users",
            Some(json!({"name": "vera", "password": "vera-password-1", "role": "viewer"})),
        )
        .await;
    assert_eq!(st, 201);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http
        .post(s.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=vera&password=vera-password-1")
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let by_cookie = http
        .get(s.url("/api/events/stream"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);
    let by_token = http
        .get(s.url("/api/events/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(by_token.status(), 200);
    let mut by_cookie = Stream {
        resp: by_cookie,
        buf: String::new(),
    };
    let mut by_token = Stream {
        resp: by_token,
        buf: String::new(),
    };
    let mut admin = open(&s, "", None).await;

    let (_, sessions) = s.get("/api/sessions").await;
    let id = sessions[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.send(Method::DELETE, &format!("/api/sessions/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        s.send(Method::DELETE, "/api/tokens/wall", None).await.0,
        204
    );
    for stream in [&mut by_cookie, &mut by_token] {
        let m = loop {
            let m = stream.next().await.expect("a logout before the end");
            if m.event == "logout" {
                break m;
            }
        };
        assert!(m.data["reason"].is_string());
        assert!(
            stream.next().await.is_none(),
            "the stream ends after logout"
        );
    }
    // The admin token's stream still delivers: the revocations themselves are events.
    let m = admin.next_event().await;
    assert_eq!(m.event, "event");
}

/// A prop's `device` message is its row of the device list, config sync state included (it
/// was left out once: the stream's summary had no `sync` for a prop).
#[tokio::test]
async fn a_props_device_message_is_its_row_of_the_list_with_its_sync_state() {
    let s = server(|_| {}).await;
    let mut stream = open(&s, "?device=lock/0a0b0c0d0e0f", None).await;
    let (st, v) = s
        .send(
            Method::PUT,
            "/api/devices/lock/0a0b0c0d0e0f",
            Some(json!({"name": "vault door"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let device = loop {
        let m = stream.next().await.expect("the stream goes on");
        if m.event == "device" {
            break m;
        }
    };
    let (_, list) = s.get("/api/devices").await;
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "0a0b0c0d0e0f")
        .unwrap()
        .clone();
    assert!(listed["sync"].is_string(), "{listed}");
    assert_eq!(device.data, listed);
}

/// The stream filters as `/api/events` does: several kinds at once, and an actor; live
/// and in a resumed backlog alike.
#[tokio::test]
async fn several_kinds_and_an_actor_filter_live_and_resumed() {
    let s = server(|_| {}).await;
    let mut kinds2 = open(&s, "?kind=registered,blocked", None).await;
    let mut admin = open(&s, "?actor=admin", None).await;
    first_message(&s, "1").await;
    let (st, v) = s
        .send(Method::POST, "/api/devices/acon/1/block", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        kinds(&kinds2.events(2).await),
        [pair("acon/1", "registered"), pair("acon/1", "blocked")]
    );
    let by_admin = admin.events(1).await;
    assert_eq!(kinds(&by_admin), [pair("acon/1", "blocked")]);
    assert_eq!(by_admin[0].data["actor"], "admin");

    // Resumed from before everything: the backlog is filtered the same way.
    let mut resumed = open(&s, "?kind=online,blocked&after=0", None).await;
    assert_eq!(
        kinds(&resumed.events(2).await),
        [pair("acon/1", "online"), pair("acon/1", "blocked")]
    );
    let (st, v) = s.get("/api/events/stream?who=me").await;
    assert_eq!(st, 400);
    assert!(v["error"].as_str().unwrap_or("").contains("actor"), "{v}");
}
