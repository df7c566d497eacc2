//! The guards of a protocol without authentication, starting with `--acon-allow`.
//! Real server, real sockets: boards at several addresses are client sockets bound to
//! 127.0.0.x before connecting.

use std::process::Command;
use std::time::Duration;

use gatehouse::cidr::AllowList;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::common::{Board, Server, msg};
use crate::durability::spawn;

const WAIT: Duration = Duration::from_secs(5);

fn allow(list: &str) -> Option<AllowList> {
    Some(AllowList::parse(list).unwrap())
}

async fn stat(s: &Server, name: &str) -> u64 {
    let (st, v) = s.get("/api/stats").await;
    assert_eq!(st, 200, "{v}");
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
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
    assert_eq!(ev, json!([]), "nothing recorded");
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
    // The setting is listed with its variable.
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for s in ["--acon-allow", "GATEHOUSE_ACON_ALLOW"] {
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
