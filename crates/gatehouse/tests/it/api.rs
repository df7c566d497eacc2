//! The HTTP API and the board's answers, end to end: engage a cell over HTTP, see it in the
//! board's next answer over TCP.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::common::{Server, TOKEN, msg};

#[tokio::test]
async fn every_route_needs_the_token() {
    let s = Server::start().await;
    s.board().await.exchange(&msg("1", 1, "")).await;
    let routes = [
        (Method::GET, "/api/devices"),
        (Method::GET, "/api/devices/acon/1"),
        (Method::PUT, "/api/devices/acon/1"),
        (Method::GET, "/api/devices/acon/1/cells"),
        (Method::PUT, "/api/devices/acon/1/cells/1"),
        (Method::DELETE, "/api/devices/acon/1/cells/1"),
        (Method::POST, "/api/devices/acon/1/reset"),
        (Method::POST, "/api/devices/acon/1/block"),
        (Method::POST, "/api/devices/acon/1/unblock"),
        (Method::GET, "/api/devices/acon/1/messages"),
        (Method::GET, "/api/events"),
        (Method::GET, "/api/stats"),
        (Method::GET, "/api/nonexistent"),
    ];
    for (method, path) in routes {
        let r = s
            .http
            .request(method.clone(), s.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without token");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
        let r = s
            .http
            .request(method.clone(), s.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with a wrong token");
    }
    let r = s
        .http
        .get(s.url("/api/devices"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn devices_list_and_board_page() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.exchange(&msg("42", 7, "BOX_ENG=0\n")).await;
    let (st, list) = s.get("/api/devices").await;
    assert_eq!(st, 200);
    assert_eq!(list[0]["kind"], "acon");
    assert_eq!(list[0]["id"], "42");
    assert_eq!(list[0]["online"], true);
    assert!(list[0]["last_seen"].as_str().unwrap().ends_with('Z'));
    let (st, board) = s.get("/api/devices/acon/42").await;
    assert_eq!(st, 200);
    assert_eq!(board["reported"]["last_send"], 7);
    assert_eq!(board["cols"], 4);
    assert_eq!(board["pending_reset"], false);
    assert_eq!(board["blocked"], false);
    let (st, err) = s.get("/api/devices/acon/nope").await;
    assert_eq!(st, 404);
    assert!(err["error"].as_str().unwrap().contains("acon/nope"));
    let kinds = s.event_kinds("acon/42").await;
    assert_eq!(kinds[..2], ["registered", "online"]);
}

#[tokio::test]
async fn engage_with_code_shows_in_the_answer_and_cells_and_release_removes_it() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.exchange(&msg("9", 1, "")).await;
    let (st, a) = s
        .send(
            Method::PUT,
            "/api/devices/acon/9/cells/3",
            Some(json!({"minutes": 60, "code": "1492"})),
        )
        .await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["code"], "1492");
    assert_eq!(a["minutes_left"], 60);
    assert_eq!(a["single_use"], false);
    let ans = b.exchange(&msg("9", 2, "")).await;
    assert_eq!(ans.cells.len(), 1);
    assert_eq!(
        (
            ans.cells[0].cell,
            ans.cells[0].code.as_str(),
            ans.cells[0].minutes
        ),
        (3, "1492", 60)
    );

    let (_, cells) = s.get("/api/devices/acon/9/cells").await;
    let cells = cells.as_array().unwrap();
    assert_eq!(cells.len(), 8);
    assert_eq!(cells[2]["cell"], 3);
    assert_eq!(cells[2]["engaged"]["code"], "1492");
    assert_eq!(cells[2]["lock_connected"], true);
    assert_eq!(cells[0]["engaged"], serde_json::Value::Null);

    let (st, _) = s
        .send(Method::DELETE, "/api/devices/acon/9/cells/3", None)
        .await;
    assert_eq!(st, 204);
    let (st, e) = s
        .send(Method::DELETE, "/api/devices/acon/9/cells/3", None)
        .await;
    assert_eq!(st, 404, "{e}");
    assert!(b.exchange(&msg("9", 3, "")).await.cells.is_empty());

    let (_, events) = s.get("/api/events?device=acon/9&kind=cell_engaged").await;
    assert_eq!(
        events[0]["actor"], "admin",
        "API changes name who made them"
    );
    assert_eq!(events[0]["data"]["version"]["to"], 1);
    let (_, events) = s.get("/api/events?device=acon/9&kind=cell_released").await;
    assert_eq!(events[0]["actor"], "admin");
}

#[tokio::test]
async fn bad_engage_requests_say_which_field() {
    let s = Server::start().await;
    s.board().await.exchange(&msg("9", 1, "")).await;
    let cases = [
        ("/api/devices/acon/9/cells/9", json!({"minutes": 5}), "cell"),
        ("/api/devices/acon/9/cells/0", json!({"minutes": 5}), "cell"),
        ("/api/devices/acon/9/cells/x", json!({"minutes": 5}), "cell"),
        (
            "/api/devices/acon/9/cells/1",
            json!({"minutes": 0}),
            "minutes",
        ),
        (
            "/api/devices/acon/9/cells/1",
            json!({"minutes": -3}),
            "minutes",
        ),
        (
            "/api/devices/acon/9/cells/1",
            json!({"minutes": "ten"}),
            "minutes",
        ),
        ("/api/devices/acon/9/cells/1", json!({}), "minutes"),
        (
            "/api/devices/acon/9/cells/1",
            json!({"minutes": 5, "code": "12a4"}),
            "code",
        ),
        (
            "/api/devices/acon/9/cells/1",
            json!({"minutes": 5, "code": ""}),
            "code",
        ),
        (
            "/api/devices/acon/9/cells/1",
            json!({"minutes": 5, "code": 1234}),
            "code",
        ),
        (
            "/api/devices/acon/9/cells/1",
            json!({"minutes": 5, "single_use": "yes"}),
            "single_use",
        ),
        (
            "/api/devices/acon/9/cells/1",
            json!({"minutes": 5, "colour": "red"}),
            "body",
        ),
        (
            "/api/devices/acon/9/cells/1",
            json!({"expires_at": "tomorrow"}),
            "expires_at",
        ),
    ];
    for (path, body, field) in cases {
        let (st, e) = s.send(Method::PUT, path, Some(body.clone())).await;
        assert_eq!(st, 400, "{path} {body}: {e}");
        assert_eq!(e["field"], field, "{path} {body}: {e}");
        assert!(!e["error"].as_str().unwrap().is_empty());
    }
    let r = s
        .http
        .put(s.url("/api/devices/acon/9/cells/1"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (st, _) = s
        .send(
            Method::PUT,
            "/api/devices/acon/404/cells/1",
            Some(json!({"minutes": 5})),
        )
        .await;
    assert_eq!(st, 404);
    let (st, e) = s.get("/api/devices/acon/9/messages?limit=0").await;
    assert_eq!((st, e["field"].as_str()), (400, Some("limit")));
}

#[tokio::test]
async fn generated_codes_have_the_configured_length_and_are_unique_per_board() {
    let s = Server::start_with(|c| c.core.code_length = 1).await;
    let mut b = s.board().await;
    let six = |send| {
        msg("3", send, "")
            .replace("COLS=4", "COLS=6")
            .replace("ACT_CON=1111,1111", "ACT_CON=111111,111111")
    };
    b.exchange(&six(1)).await; // 6×2 = 12 cells
    let mut codes = Vec::new();
    for cell in 1..=10 {
        let (st, a) = s
            .send(
                Method::PUT,
                &format!("/api/devices/acon/3/cells/{cell}"),
                Some(json!({"minutes": 5})),
            )
            .await;
        assert_eq!(st, 200, "{a}");
        let code = a["code"].as_str().unwrap().to_string();
        assert_eq!(code.len(), 1);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        codes.push(code);
    }
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 10, "ten cells, ten different one-digit codes");
    let (st, e) = s
        .send(
            Method::PUT,
            "/api/devices/acon/3/cells/11",
            Some(json!({"minutes": 5})),
        )
        .await;
    assert_eq!(st, 409, "code space used up: {e}");
    // A given code that another cell has is refused too.
    let (st, e) = s
        .send(
            Method::PUT,
            "/api/devices/acon/3/cells/11",
            Some(json!({"minutes": 5, "code": codes[0]})),
        )
        .await;
    assert_eq!(st, 409, "{e}");
    let ans = b.exchange(&six(2)).await;
    assert_eq!(ans.cells.len(), 10);
}

#[tokio::test]
async fn a_single_use_cell_ends_when_opened_and_a_retry_counts_once() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.exchange(&msg("5", 1, "BOX_ACC=0\n")).await;
    let (st, _) = s
        .send(
            Method::PUT,
            "/api/devices/acon/5/cells/2",
            Some(json!({"minutes": 30, "code": "777", "single_use": true})),
        )
        .await;
    assert_eq!(st, 200);
    s.send(
        Method::PUT,
        "/api/devices/acon/5/cells/4",
        Some(json!({"minutes": 30, "code": "888"})),
    )
    .await;
    assert_eq!(b.exchange(&msg("5", 2, "BOX_ACC=0\n")).await.cells.len(), 2);
    // The board reports cell 2 opened, then retries with SEND+1 and the same list.
    let a = b.exchange(&msg("5", 3, "BOX_ACC=2\n")).await;
    assert_eq!(a.cells.iter().map(|c| c.cell).collect::<Vec<_>>(), [4]);
    b.exchange(&msg("5", 4, "BOX_ACC=2\n")).await;
    let (_, opened) = s.get("/api/events?device=acon/5&kind=cell_opened").await;
    assert_eq!(opened.as_array().unwrap().len(), 1, "one opening: {opened}");
    assert_eq!(opened[0]["data"]["cell"], 2);
    let (_, ended) = s
        .get("/api/events?device=acon/5&kind=assignment_ended")
        .await;
    assert_eq!(ended.as_array().unwrap().len(), 1);
    let (_, cells) = s.get("/api/devices/acon/5/cells").await;
    assert!(cells[1]["last_opened"].is_string());
    assert!(cells[1]["engaged"].is_null());
}

#[tokio::test]
async fn an_expired_assignment_is_not_sent() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.exchange(&msg("6", 1, "")).await;
    let soon = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (st, a) = s
        .send(
            Method::PUT,
            "/api/devices/acon/6/cells/1",
            Some(json!({"expires_at": soon, "code": "12"})),
        )
        .await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["minutes_left"], 1, "rounded up to a whole minute");
    s.send(
        Method::PUT,
        "/api/devices/acon/6/cells/2",
        Some(json!({"minutes": 90, "code": "34"})),
    )
    .await;
    let a = b.exchange(&msg("6", 2, "")).await;
    assert_eq!(a.cells.len(), 2);
    assert_eq!(a.cells[0].minutes, 1);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let a = b.exchange(&msg("6", 3, "")).await;
    assert_eq!(
        a.cells
            .iter()
            .map(|c| (c.cell, c.minutes))
            .collect::<Vec<_>>(),
        [(2, 90)]
    );
    let (_, cells) = s.get("/api/devices/acon/6/cells").await;
    assert_eq!(cells[0]["timed_out"], true);
    assert!(
        s.event_kinds("acon/6")
            .await
            .contains(&"assignment_expired".to_string())
    );
}

#[tokio::test]
async fn reset_is_sent_until_the_board_reboots() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.exchange(&msg("8", 100, "")).await;
    let (st, v) = s
        .send(Method::POST, "/api/devices/acon/8/reset", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["pending_reset"], true);
    assert!(b.exchange(&msg("8", 101, "")).await.reset);
    assert!(
        b.exchange(&msg("8", 102, "")).await.reset,
        "until the board reports RESET=1"
    );
    let a = b
        .exchange(&msg("8", 1, "").replace("RESET=0", "RESET=1"))
        .await;
    assert!(!a.reset);
    let (_, v) = s.get("/api/devices/acon/8").await;
    assert_eq!(v["pending_reset"], false);
    assert_eq!(v["reported"]["reboots"], 1);
    let kinds = s.event_kinds("acon/8").await;
    for k in ["reset_requested", "rebooted", "reset_done"] {
        assert!(kinds.contains(&k.to_string()), "{k} in {kinds:?}");
    }
}

#[tokio::test]
async fn block_and_unblock_round_trip() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.exchange(&msg("4", 1, "")).await;
    let (st, v) = s
        .send(Method::POST, "/api/devices/acon/4/block", None)
        .await;
    assert_eq!((st, v["blocked"].as_bool()), (200, Some(true)));
    let raw = {
        b.write(msg("4", 2, "").as_bytes()).await;
        String::from_utf8(b.raw_answer(Duration::from_secs(5)).await.unwrap()).unwrap()
    };
    assert!(raw.contains("\nSTATE=3\n"), "{raw}");
    assert!(
        b.exchange(&msg("4", 3, "")).await.block,
        "on every answer while blocked"
    );
    let (st, v) = s
        .send(Method::POST, "/api/devices/acon/4/unblock", None)
        .await;
    assert_eq!((st, v["blocked"].as_bool()), (200, Some(false)));
    assert!(!b.exchange(&msg("4", 4, "")).await.block);
    let (st, _) = s
        .send(Method::POST, "/api/devices/acon/nope/block", None)
        .await;
    assert_eq!(st, 404);
    let (_, ev) = s.get("/api/events?device=acon/4&kind=blocked").await;
    assert_eq!(ev[0]["actor"], "admin");
}

#[tokio::test]
async fn messages_are_listed_newest_first_with_raw_parsed_and_answer() {
    let s = Server::start().await;
    let mut b = s.board().await;
    for send in 1..=5 {
        b.exchange(&msg("2", send, "")).await;
    }
    let (st, v) = s.get("/api/devices/acon/2/messages?limit=3").await;
    assert_eq!(st, 200);
    let sends: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["send"].as_u64().unwrap())
        .collect();
    assert_eq!(sends, [5, 4, 3]);
    assert!(
        v[0]["raw"]
            .as_str()
            .unwrap()
            .starts_with("ACon_V1.0\nID=2\nSEND=5")
    );
    assert_eq!(v[0]["parsed"]["id"], "2");
    assert_eq!(v[0]["parsed"]["cols"], 4);
    assert!(v[0]["answer"].as_str().unwrap().contains("SEND=5"));
    assert!(v[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v[0]["at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn board_events_openings_timeouts_locks_and_short_circuit() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.exchange(&msg("11", 1, "BOX_TO=0\n")).await;
    b.exchange(
        &msg("11", 2, "BOX_TO=3\n")
            .replace("STATE=0", "STATE=1")
            .replace("ACT_CON=1111,1111", "ACT_CON=1101,1111"),
    )
    .await;
    b.exchange(
        &msg("11", 3, "BOX_TO=3\n")
            .replace("STATE=0", "STATE=1")
            .replace("ACT_CON=1111,1111", "ACT_CON=1101,1111"),
    )
    .await;
    let kinds = s.event_kinds("acon/11").await;
    assert_eq!(
        kinds,
        [
            "registered",
            "online",
            "cell_timed_out",
            "short_circuit",
            "lock_disconnected"
        ]
    );
    let (_, ev) = s
        .get("/api/events?device=acon/11&kind=lock_disconnected")
        .await;
    assert_eq!(ev[0]["data"]["cell"], 3);
    assert_eq!(ev[0]["actor"], "device");
}

#[tokio::test]
async fn presence_goes_offline_and_back_with_events() {
    let s = Server::start_with(|c| c.core.presence_timeout_ms = 300).await;
    let mut b = s.board().await;
    b.exchange(&msg("12", 1, "")).await;
    let mut offline = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, v) = s.get("/api/devices/acon/12").await;
        if v["online"] == false {
            offline = true;
            break;
        }
    }
    assert!(offline, "board went offline after the timeout");
    b.exchange(&msg("12", 2, "")).await;
    // The message brought it back (recorded before the answer). Read the events rather than
    // the state: on a loaded machine the 300 ms can pass again before the next request, and
    // a second `offline` then follows, rightly.
    let kinds = s.event_kinds("acon/12").await;
    assert_eq!(kinds[..4], ["registered", "online", "offline", "online"]);
}

#[tokio::test]
async fn policy_reject_refuses_unknown_boards_until_registered() {
    let s = Server::start_with(|c| c.core.unknown_devices = gatehouse::core::UnknownPolicy::Reject)
        .await;
    let mut b = s.board().await;
    b.write(msg("77", 1, "").as_bytes()).await;
    assert!(b.raw_answer(Duration::from_millis(500)).await.is_none());
    assert!(b.closed(Duration::from_secs(2)).await);
    let (st, _) = s.get("/api/devices/acon/77").await;
    assert_eq!(st, 404);
    // The board keeps retrying: every refusal is counted, but one event per minute is written.
    for send in 2..=3 {
        let mut again = s.board().await;
        again.write(msg("77", send, "").as_bytes()).await;
        assert!(again.closed(Duration::from_secs(2)).await);
    }
    assert_eq!(s.event_kinds("acon/77").await, ["rejected"]);
    let (_, stats) = s.get("/api/stats").await;
    assert_eq!(stats["acon_rejected"], 3, "{stats}");
    let (st, v) = s
        .send(
            Method::PUT,
            "/api/devices/acon/77",
            Some(json!({"name": "lobby", "cols": 4, "rows": 2})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["name"], "lobby");
    // Cells can be engaged before the board ever spoke, within the given size.
    let (st, _) = s
        .send(
            Method::PUT,
            "/api/devices/acon/77/cells/8",
            Some(json!({"minutes": 5, "code": "55"})),
        )
        .await;
    assert_eq!(st, 200);
    let mut b = s.board().await;
    let a = b.exchange(&msg("77", 2, "")).await;
    assert_eq!(a.cells.len(), 1);
    let (st, e) = s
        .send(Method::PUT, "/api/devices/acon/bad%20id", Some(json!({})))
        .await;
    assert_eq!((st, e["field"].as_str()), (400, Some("id")));
}
