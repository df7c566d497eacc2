//! The guards of a protocol without authentication: `--acon-allow`, the board ↔ connection
//! binding, the networks a board uses (and `--acon-pin-peers`), and the cap on new boards.
//! Real server, real sockets: the boards at several addresses are client sockets bound to
//! 127.0.0.x / 127.0.y.z before connecting.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gatehouse::cidr::AllowList;
use gatehouse::server::{Settings, start};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::common::{Board, Server, msg, settings};
use crate::durability::spawn;

const WAIT: Duration = Duration::from_secs(5);

fn allow(list: &str) -> Option<AllowList> {
    Some(AllowList::parse(list).unwrap())
}

/// A server on the data directory `dir` (for a restart on the same data).
async fn serve_in(dir: &Path, f: impl FnOnce(&mut Settings)) -> Server {
    let mut s = settings(dir);
    f(&mut s);
    Server {
        running: Some(start(s).await.unwrap()),
        _dir: tempfile::tempdir().unwrap(),
        http: reqwest::Client::new(),
    }
}

async fn stat(s: &Server, name: &str) -> u64 {
    let (st, v) = s.get("/api/stats").await;
    assert_eq!(st, 200, "{v}");
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// Events, oldest first, of a device (`None`: of every device) and kind.
async fn events(s: &Server, device: Option<&str>, kind: &str) -> Vec<Value> {
    let mut path = format!("/api/events?kind={kind}&limit=10000");
    if let Some(d) = device {
        path.push_str(&format!("&device={d}"));
    }
    let (st, v) = s.get(&path).await;
    assert_eq!(st, 200, "{v}");
    let mut all = v.as_array().cloned().unwrap_or_default();
    all.reverse();
    all
}

/// Polls `GET path` until `pred` holds (5 s at most).
async fn until(s: &Server, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..250 {
        let (st, v) = s.get(path).await;
        if st == 200 && pred(&v) {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("GET {path} never matched; last: {last:#}");
}

/// Sends `bytes` and expects no answer and the connection closed.
async fn refused(b: &mut Board, bytes: &str) {
    // The server may have closed already: a failed write is part of being refused.
    let _ = b.stream.write_all(bytes.as_bytes()).await;
    let answer = b.raw_answer(Duration::from_secs(2)).await;
    assert!(
        answer.is_none(),
        "refused frames get no answer, got {:?}",
        answer.map(|a| String::from_utf8_lossy(&a).into_owned())
    );
    assert!(b.closed(WAIT).await, "the refused connection is closed");
}

// ---- --acon-allow ----

#[tokio::test]
async fn acon_allow_closes_a_peer_outside_the_list_unanswered_and_records_nothing() {
    let s = Server::start_with(|s| s.acon.allow = allow("10.0.0.0/8")).await;
    for _ in 0..3 {
        let mut b = s.board().await;
        refused(&mut b, &msg("1953", 1, "")).await;
    }
    let (_, devices) = s.get("/api/devices").await;
    assert_eq!(devices, json!([]));
    let (_, ev) = s.get("/api/events?limit=100").await;
    let ev: Vec<&Value> = ev
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] != "user_added")
        .collect();
    assert!(
        ev.is_empty(),
        "nothing recorded (but the first start's account): {ev:?}"
    );
    assert_eq!(stat(&s, "acon_not_allowed").await, 3);
    assert_eq!(stat(&s, "acon_messages").await, 0, "not a byte was read");

    // Inside the list: answered as always.
    let s = Server::start_with(|s| s.acon.allow = allow("192.168.0.0/16, 127.0.0.0/8")).await;
    let a = s.board().await.exchange(&msg("1953", 1, "")).await;
    assert_eq!((a.id.as_str(), a.send), ("1953", 1));
    assert_eq!(stat(&s, "acon_not_allowed").await, 0);
    // A bare address is one host: 127.0.0.1 is in, 127.0.0.2 is not.
    let s = Server::start_with(|s| s.acon.allow = allow("127.0.0.1")).await;
    let addr = s.running().acon_addr;
    Board::connect_from(addr, "127.0.0.1")
        .await
        .exchange(&msg("1", 1, ""))
        .await;
    refused(
        &mut Board::connect_from(addr, "127.0.0.2").await,
        &msg("2", 1, ""),
    )
    .await;
}

/// A dual-stack listener sees an IPv4 peer as `::ffff:a.b.c.d`; it matches IPv4 networks.
#[tokio::test]
async fn a_mapped_ipv4_peer_matches_ipv4_networks() {
    let dual_stack = std::net::TcpListener::bind("[::]:0").is_ok_and(|l| {
        l.local_addr()
            .is_ok_and(|a| std::net::TcpStream::connect(("127.0.0.1", a.port())).is_ok())
    });
    if !dual_stack {
        eprintln!("no dual-stack IPv6 on this machine; skipped");
        return;
    }
    for (list, answered) in [("127.0.0.0/8", true), ("10.0.0.0/8", false)] {
        let s = Server::start_with(|s| {
            s.acon_listen = "[::]:0".into();
            s.acon.allow = allow(list);
        })
        .await;
        let port = s.running().acon_addr.port();
        let mut b = Board::connect(([127, 0, 0, 1], port).into()).await;
        if answered {
            b.exchange(&msg("7", 1, "")).await;
            let (_, m) = s.get("/api/devices/acon/7/messages").await;
            assert!(
                m[0]["peer"].as_str().unwrap().contains("::ffff:127.0.0.1"),
                "{m}"
            );
        } else {
            refused(&mut b, &msg("7", 1, "")).await;
        }
    }
}

fn gatehouse(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_network_stops_start_up_naming_the_setting_and_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let base = [
        "serve",
        "--data-dir",
        data,
        "--acon-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "127.0.0.1:0",
    ];
    let mut args = base.to_vec();
    args.extend(["--acon-allow", "10.0.0.0/8,10.1.2.0/33"]);
    let (ok, err) = gatehouse(&args, &[]);
    assert!(!ok);
    assert!(
        err.contains("--acon-allow") && err.contains("\"10.1.2.0/33\"") && err.contains("32"),
        "{err}"
    );
    let (ok, err) = gatehouse(&base, &[("GATEHOUSE_ACON_ALLOW", "10.0.0.0/8, lan")]);
    assert!(!ok);
    assert!(
        err.contains("--acon-allow") && err.contains("\"lan\""),
        "{err}"
    );
    let conf = dir.path().join("g.toml");
    std::fs::write(&conf, "acon_allow = \"192.168.1.0/24,192.168.300.0/24\"\n").unwrap();
    let mut args = base.to_vec();
    args.extend(["--config", conf.to_str().unwrap()]);
    let (ok, err) = gatehouse(&args, &[]);
    assert!(!ok);
    assert!(
        err.contains("--acon-allow") && err.contains("192.168.300.0/24"),
        "{err}"
    );
    // The other guards are settings like the rest.
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for s in [
        "--acon-allow",
        "GATEHOUSE_ACON_ALLOW",
        "--acon-pin-peers",
        "GATEHOUSE_ACON_PIN_PEERS",
        "--acon-max-new-boards-per-min",
        "GATEHOUSE_ACON_MAX_NEW_BOARDS_PER_MIN",
        "default: 60",
    ] {
        assert!(help.contains(s), "{s} in --help:\n{help}");
    }
}

#[test]
fn a_listener_on_every_interface_without_acon_allow_warns_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = |acon: &'static str| {
        vec![
            "--data-dir",
            data,
            "--acon-listen",
            acon,
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ]
    };
    let warned = |p: &crate::durability::Proc| {
        p.stderr
            .iter()
            .any(|l| l.contains("WARN") && l.contains("accepts boards from any address"))
    };
    let p = spawn(&args("0.0.0.0:0"), &[]);
    assert!(warned(&p), "{:#?}", p.stderr);
    drop(p);
    let p = spawn(
        &args("0.0.0.0:0"),
        &[("GATEHOUSE_ACON_ALLOW", "10.0.0.0/8")],
    );
    assert!(!warned(&p), "{:#?}", p.stderr);
    assert!(
        p.stderr.iter().any(|l| l.contains("10.0.0.0/8")),
        "the list is logged: {:#?}",
        p.stderr
    );
    drop(p);
    let p = spawn(&args("127.0.0.1:0"), &[]);
    assert!(!warned(&p), "{:#?}", p.stderr);
}

// ---- the binding of a board to its connection ----

/// The attack: a stranger with the board's ID on a second connection. It gets no codes, and
/// its ten forged openings count nothing.
#[tokio::test]
async fn a_second_connection_with_a_held_id_is_refused_and_its_forged_openings_do_not_count() {
    let s = Server::start().await;
    let addr = s.running().acon_addr;
    let mut board = Board::connect_from(addr, "127.0.0.1").await;
    board.exchange(&msg("1953", 1, "BOX_ACC=0\n")).await;
    let (st, e) = s
        .send(
            Method::PUT,
            "/api/devices/acon/1953/cells/3",
            Some(json!({"minutes": 60, "code": "1492", "single_use": true})),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let a = board.exchange(&msg("1953", 2, "BOX_ACC=0\n")).await;
    assert_eq!(a.cells.len(), 1, "the board has its code");

    // Ten forged frames reporting the cell opened, on one connection from another address.
    let mut forger = Board::connect_from(addr, "127.0.0.2").await;
    let forged: String = (0..10)
        .map(|i| {
            msg(
                "1953",
                100 + i,
                if i % 2 == 0 {
                    "BOX_ACC=3\n"
                } else {
                    "BOX_ACC=0\n"
                },
            )
        })
        .collect();
    refused(&mut forger, &forged).await;
    // And nine more strangers, one frame each.
    for i in 0..9 {
        let mut f = Board::connect_from(addr, "127.0.0.3").await;
        refused(&mut f, &msg("1953", 200 + i, "BOX_ACC=3\n")).await;
    }

    let kinds = s.event_kinds("acon/1953").await;
    assert!(!kinds.iter().any(|k| k == "cell_opened"), "{kinds:?}");
    assert!(!kinds.iter().any(|k| k == "assignment_ended"), "{kinds:?}");
    let conflicts = events(&s, Some("acon/1953"), "id_conflict").await;
    assert_eq!(conflicts.len(), 1, "rate-limited: {conflicts:#?}");
    let d = &conflicts[0]["data"];
    assert!(d["peer"].as_str().unwrap().starts_with("127.0.0.2:"), "{d}");
    assert!(
        d["holder_peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{d}"
    );
    assert_eq!(d["send"], 100);
    assert_eq!(stat(&s, "acon_id_conflicts").await, 10);
    let (_, m) = s.get("/api/devices/acon/1953/messages?limit=100").await;
    assert_eq!(
        m.as_array().unwrap().len(),
        2,
        "forged frames are not its messages"
    );
    let (_, cells) = s.get("/api/devices/acon/1953/cells").await;
    assert_eq!(cells[2]["engaged"]["code"], "1492", "still engaged");
    assert_eq!(cells[2]["last_opened"], Value::Null);
    let (_, page) = s.get("/api/devices/acon/1953").await;
    assert!(
        page["peers"]["connected"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{page}"
    );

    // The board itself is still answered, with its code, and its own opening counts.
    let a = board.exchange(&msg("1953", 3, "BOX_ACC=0\n")).await;
    assert_eq!((a.cells[0].cell, a.cells[0].code.as_str()), (3, "1492"));
    let a = board.exchange(&msg("1953", 4, "BOX_ACC=3\n")).await;
    assert!(a.cells.is_empty(), "the single-use assignment ended");
    let kinds = s.event_kinds("acon/1953").await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "cell_opened").count(),
        1,
        "{kinds:?}"
    );

    // Once the board's connection closes, the ID is free for the next one.
    drop(board);
    until(&s, "/api/devices/acon/1953", |p| {
        p["peers"]["connected"].is_null()
    })
    .await;
    let mut moved = Board::connect_from(addr, "127.0.0.2").await;
    moved.exchange(&msg("1953", 5, "")).await;
}

#[tokio::test]
async fn a_connection_that_holds_a_board_cannot_speak_for_another() {
    let s = Server::start().await;
    let mut b = s.board().await;
    b.exchange(&msg("1", 1, "")).await;
    refused(&mut b, &msg("2", 1, "BOX_ACC=1\n")).await;
    let (st, _) = s.get("/api/devices/acon/2").await;
    assert_eq!(st, 404, "the second ID is not registered");
    let conflicts = events(&s, Some("acon/2"), "id_conflict").await;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0]["data"]["holds"], "acon/1");
    assert_eq!(stat(&s, "acon_id_conflicts").await, 1);
    // Closing the connection freed board 1.
    until(&s, "/api/devices/acon/1", |p| {
        p["peers"]["connected"].is_null()
    })
    .await;
}

/// A board that rebooted reconnects from the same address while its old connection is still
/// open: the newer connection takes over, the older is closed.
#[tokio::test]
async fn a_board_reconnecting_from_the_same_address_takes_over_and_the_old_connection_closes() {
    let s = Server::start().await;
    let addr = s.running().acon_addr;
    let mut old = Board::connect_from(addr, "127.0.0.1").await;
    old.exchange(&msg("5", 1, "")).await;
    let mut new = Board::connect_from(addr, "127.0.0.1").await;
    new.exchange(&msg("5", 1, "")).await;
    assert!(old.closed(WAIT).await, "the older connection is closed");
    let new_peer = new.stream.local_addr().unwrap().to_string();
    let replaced = events(&s, Some("acon/5"), "connection_replaced").await;
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0]["data"]["peer"], new_peer);
    assert_eq!(stat(&s, "acon_id_conflicts").await, 0);
    new.exchange(&msg("5", 2, "")).await;
    let (_, page) = s.get("/api/devices/acon/5").await;
    assert_eq!(page["peers"]["connected"], new_peer);
}

// ---- the networks a board uses, and --acon-pin-peers ----

#[tokio::test]
async fn a_new_network_is_an_event_remembered_across_a_restart_and_pinned_until_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve_in(dir.path(), |_| {}).await;
    let addr = s.running().acon_addr;
    let mut b = Board::connect_from(addr, "127.0.0.1").await;
    b.exchange(&msg("9", 1, "")).await;
    let kinds = s.event_kinds("acon/9").await;
    assert_eq!(
        kinds,
        ["registered", "online"],
        "the first network is no news"
    );
    drop(b);
    until(&s, "/api/devices/acon/9", |p| {
        p["peers"]["connected"].is_null()
    })
    .await;
    // The same /24 is no news either; another /24 is.
    Board::connect_from(addr, "127.0.0.7")
        .await
        .exchange(&msg("9", 2, ""))
        .await;
    until(&s, "/api/devices/acon/9", |p| {
        p["peers"]["connected"].is_null()
    })
    .await;
    assert!(
        events(&s, Some("acon/9"), "new_peer_network")
            .await
            .is_empty()
    );
    let mut b = Board::connect_from(addr, "127.0.1.1").await;
    b.exchange(&msg("9", 3, "")).await;
    let news = events(&s, Some("acon/9"), "new_peer_network").await;
    assert_eq!(news.len(), 1, "{news:#?}");
    assert_eq!(news[0]["data"]["network"], "127.0.1.0/24");
    assert_eq!(news[0]["data"]["known"], json!(["127.0.0.0/24"]));
    assert!(
        news[0]["data"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.1.1:")
    );
    drop(b);

    // A restart keeps the networks; now pinned.
    s.running.unwrap().shutdown().await.unwrap();
    let s = serve_in(dir.path(), |s| s.core.acon_pin_peers = true).await;
    let addr = s.running().acon_addr;
    let (_, page) = s.get("/api/devices/acon/9").await;
    assert_eq!(
        page["peers"]["networks"],
        json!(["127.0.0.0/24", "127.0.1.0/24"]),
        "{page}"
    );
    assert_eq!(page["peers"]["pending"], Value::Null);
    let mut b = Board::connect_from(addr, "127.0.0.1").await;
    b.exchange(&msg("9", 4, "")).await;
    drop(b);
    until(&s, "/api/devices/acon/9", |p| {
        p["peers"]["connected"].is_null()
    })
    .await;

    // A network the board has not used: refused, not recorded, kept for the operator.
    let (_, before) = s.get("/api/devices/acon/9/messages?limit=100").await;
    let mut b = Board::connect_from(addr, "127.0.2.1").await;
    refused(&mut b, &msg("9", 5, "BOX_ACC=1\n")).await;
    let (_, after) = s.get("/api/devices/acon/9/messages?limit=100").await;
    assert_eq!(before, after, "a refused frame is not the board's message");
    let refusals = events(&s, Some("acon/9"), "peer_network_refused").await;
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0]["data"]["network"], "127.0.2.0/24");
    assert!(
        !s.event_kinds("acon/9")
            .await
            .contains(&"cell_opened".to_string())
    );
    let (_, page) = s.get("/api/devices/acon/9").await;
    assert_eq!(
        page["peers"]["pending"]["network"], "127.0.2.0/24",
        "{page}"
    );
    assert!(
        page["peers"]["pending"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.2.1:")
    );
    // Again: refused, counted, no second event within the minute.
    refused(
        &mut Board::connect_from(addr, "127.0.2.1").await,
        &msg("9", 6, ""),
    )
    .await;
    assert_eq!(
        events(&s, Some("acon/9"), "peer_network_refused")
            .await
            .len(),
        1
    );
    assert_eq!(stat(&s, "acon_peer_refused").await, 2);

    // The operator accepts the pending network; the board is answered from it.
    let (st, page) = s
        .send(
            Method::POST,
            "/api/devices/acon/9/peers",
            Some(json!({"accept_pending": true})),
        )
        .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(page["peers"]["pending"], Value::Null);
    // Least recently used first: the board came from 127.0.0.x after the restart.
    assert_eq!(
        page["peers"]["networks"],
        json!(["127.0.1.0/24", "127.0.0.0/24", "127.0.2.0/24"])
    );
    let accepted = events(&s, Some("acon/9"), "peer_network_accepted").await;
    assert_eq!(accepted[0]["actor"], "admin");
    assert_eq!(accepted[0]["data"]["network"], "127.0.2.0/24");
    let mut b = Board::connect_from(addr, "127.0.2.1").await;
    b.exchange(&msg("9", 7, "")).await;
    drop(b);
    until(&s, "/api/devices/acon/9", |p| {
        p["peers"]["connected"].is_null()
    })
    .await;

    // A network given by the operator, before the board comes from it.
    let (st, e) = s
        .send(
            Method::POST,
            "/api/devices/acon/9/peers",
            Some(json!({"network": "127.0.8.0/22"})),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    Board::connect_from(addr, "127.0.9.9")
        .await
        .exchange(&msg("9", 8, ""))
        .await;

    // What the endpoint refuses.
    for (body, status, field) in [
        (json!({"network": "127.0.300.0/24"}), 400, Some("network")),
        (json!({"network": 5}), 400, Some("network")),
        (
            json!({"network": "10.0.0.0/8", "accept_pending": true}),
            400,
            Some("network"),
        ),
        (json!({}), 400, Some("body")),
        (
            json!({"accept_pending": "yes"}),
            400,
            Some("accept_pending"),
        ),
        (json!({"colour": "red"}), 400, Some("body")),
        (json!({"accept_pending": true}), 409, None),
    ] {
        let (st, e) = s
            .send(
                Method::POST,
                "/api/devices/acon/9/peers",
                Some(body.clone()),
            )
            .await;
        assert_eq!(st, status, "{body}: {e}");
        if let Some(f) = field {
            assert_eq!(e["field"], f, "{body}: {e}");
        }
    }
    let (st, _) = s
        .send(
            Method::POST,
            "/api/devices/acon/nope/peers",
            Some(json!({"network": "10.0.0.0/8"})),
        )
        .await;
    assert_eq!(st, 404);
    let r = s
        .http
        .post(s.url("/api/devices/acon/9/peers"))
        .json(&json!({"accept_pending": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "behind the token like every route");
}

// ---- the cap on new boards ----

/// 2 000 made-up IDs, each on a connection of its own: only the cap's worth is registered
/// within the minute, one `registrations_capped` event, and a known board is answered all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_capped_under_a_flood_of_made_up_ids() {
    let s = Server::start().await;
    let addr = s.running().acon_addr;
    let mut known = Board::connect_from(addr, "127.0.0.1").await;
    known.exchange(&msg("known", 1, "")).await;

    let keep_answering = tokio::spawn(async move {
        let mut answered = 0u64;
        for send in 2.. {
            let a = known.exchange(&msg("known", send, "")).await;
            assert_eq!(a.send, send);
            answered += 1;
            if answered >= 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        answered
    });

    let mut flood = tokio::task::JoinSet::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..2000u32 {
        let slots = slots.clone();
        flood.spawn(async move {
            let _slot = slots.acquire().await.unwrap();
            let local = format!("127.1.{}.{}", i / 250, i % 250 + 1);
            let mut b = Board::connect_from(addr, &local).await;
            let _ = b
                .stream
                .write_all(msg(&format!("fake{i}"), 1, "").as_bytes())
                .await;
            b.raw_answer(Duration::from_secs(10)).await.is_some()
        });
    }
    let mut answered = 0;
    while let Some(r) = flood.join_next().await {
        if r.unwrap() {
            answered += 1;
        }
    }
    assert_eq!(
        keep_answering.await.unwrap(),
        50,
        "the known board was answered throughout"
    );

    // "known" used one registration of the minute.
    assert_eq!(
        answered, 59,
        "only the cap's worth of new boards is answered"
    );
    let (_, devices) = s.get("/api/devices").await;
    assert_eq!(devices.as_array().unwrap().len(), 60);
    assert_eq!(stat(&s, "acon_registrations_capped").await, 2000 - 59);
    let capped = events(&s, None, "registrations_capped").await;
    assert_eq!(capped.len(), 1, "one rate-limited event: {capped:#?}");
    assert_eq!(capped[0]["device"], Value::Null);
    assert_eq!(capped[0]["data"]["limit_per_minute"], 60);
    let (_, registered) = s.get("/api/events?kind=registered&limit=10000").await;
    assert_eq!(registered.as_array().unwrap().len(), 60);
}

#[tokio::test]
async fn no_cap_with_zero() {
    let s = Server::start_with(|s| s.core.acon_max_new_boards_per_min = 0).await;
    let addr = s.running().acon_addr;
    for i in 0..80 {
        Board::connect(addr)
            .await
            .exchange(&msg(&i.to_string(), 1, ""))
            .await;
    }
    let (_, devices) = s.get("/api/devices").await;
    assert_eq!(devices.as_array().unwrap().len(), 80);
    assert_eq!(stat(&s, "acon_registrations_capped").await, 0);
}
