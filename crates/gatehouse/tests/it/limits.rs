//! Per-device limits: a SKABEN payload cap (the server's, or its type's), a packet rate per
//! SKABEN device and a message rate per ACon board; what exceeds them is refused unrecorded,
//! with one rate-limited event; INFO events keep an excerpt of a big datahold, not all of it.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::common::{Bench, Broker, Server, msg};

const LOCK: &str = "b827eb0a1b2c";

async fn events(s: &Server, device: &str, kind: &str) -> Vec<serde_json::Value> {
    let (_, v) = s
        .get(&format!(
            "/api/events?device={device}&kind={kind}&limit=1000"
        ))
        .await;
    v.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skaben_payloads_over_the_cap_are_refused_and_big_infos_keep_an_excerpt() {
    let b = Bench::start_with(Broker::Embedded, |s| s.core.skaben_max_payload_bytes = 4096).await;
    let mut lock = b.prop("lock", &[&format!("lock/{LOCK}/#")]).await;
    let info = |n: usize| json!({"timestamp": 1, "datahold": {"blob": "x".repeat(n)}});
    // Under the cap, but past what an event keeps: recorded, the event holds an excerpt.
    lock.send(&format!("ask/lock/{LOCK}/info"), info(3000))
        .await;
    // Over the server's cap: refused twice, one event.
    lock.send(&format!("ask/lock/{LOCK}/info"), info(5000))
        .await;
    lock.send(&format!("ask/lock/{LOCK}/info"), info(200 * 1024))
        .await;
    lock.wait_acks(3).await;
    let device = format!("lock/{LOCK}");
    let infos = b.until_event(&device, "info").await;
    let infos: Vec<_> = infos.iter().filter(|e| e["kind"] == "info").collect();
    assert_eq!(infos.len(), 1, "{infos:?}");
    let kept = infos[0]["data"]["datahold"].as_str().expect("an excerpt");
    assert!(kept.len() <= 2048 + 4, "{}", kept.len());
    assert!(infos[0]["data"]["truncated_from"].as_u64().unwrap() > 3000);
    let big = b.until_event(&device, "payload_too_large").await;
    let big: Vec<_> = big
        .iter()
        .filter(|e| e["kind"] == "payload_too_large")
        .collect();
    assert_eq!(big.len(), 1, "rate-limited: {big:?}");
    assert_eq!(big[0]["data"]["limit"], 4096);
    assert_eq!(b.server.get("/api/stats").await.1["skaben_too_large"], 2);
    // Only the one recorded packet is in the history.
    let (_, msgs) = b
        .server
        .get(&format!("/api/devices/{device}/messages"))
        .await;
    assert_eq!(msgs.as_array().unwrap().len(), 1, "{msgs}");
    // A type may allow more.
    let (s, t) = b
        .server
        .send(
            Method::PUT,
            "/api/types/lock",
            Some(json!({"max_payload_bytes": 16384})),
        )
        .await;
    assert_eq!((s, &t["max_payload_bytes"]), (200, &json!(16384)), "{t}");
    lock.send(&format!("ask/lock/{LOCK}/info"), info(5000))
        .await;
    lock.wait_acks(4).await;
    b.until(&format!("/api/devices/{device}/messages"), |v| {
        v.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let (s, e) = b
        .server
        .send(
            Method::PUT,
            "/api/types/lock",
            Some(json!({"max_payload_bytes": 10})),
        )
        .await;
    assert_eq!(
        (s, e["field"].as_str()),
        (400, Some("max_payload_bytes")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skaben_device_over_its_packet_rate_is_refused_unrecorded() {
    let b = Bench::start_with(Broker::Embedded, |s| {
        s.core.skaben_max_packets_per_sec = 5.0
    })
    .await;
    let lock = b.prop("lock", &[&format!("lock/{LOCK}/#")]).await;
    let other = b.prop("other", &["lock/a4cf12aabbcc/#"]).await;
    for _ in 0..50 {
        lock.send(&format!("ask/lock/{LOCK}/pong"), json!({"timestamp": 1}))
            .await;
    }
    other
        .send("ask/lock/a4cf12aabbcc/pong", json!({"timestamp": 1}))
        .await;
    let device = format!("lock/{LOCK}");
    let limited = b.until_event(&device, "rate_limited").await;
    let limited: Vec<_> = limited
        .iter()
        .filter(|e| e["kind"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 1, "rate-limited: {limited:?}");
    assert_eq!(limited[0]["data"]["command"], "pong");
    // Another device is not affected.
    b.until("/api/devices/lock/a4cf12aabbcc/messages", |v| {
        v.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, msgs) = b
        .server
        .get(&format!("/api/devices/{device}/messages?limit=100"))
        .await;
    let recorded = msgs.as_array().unwrap().len() as u64;
    let refused = b.server.get("/api/stats").await.1["skaben_rate_limited"]
        .as_u64()
        .unwrap();
    // A burst of 10 (2 s × 5/s), plus what the rate refilled while they arrived.
    assert!((10..=20).contains(&recorded), "{recorded} recorded");
    assert_eq!(
        recorded + refused,
        50,
        "{recorded} recorded, {refused} refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acon_board_over_its_message_rate_is_cut_off_and_others_are_served() {
    let s = Server::start_with(|s| s.core.acon_max_messages_per_sec = 5.0).await;
    let mut board = s.board().await;
    let mut burst = String::new();
    for send in 1..=40 {
        burst.push_str(&msg("1953", send, ""));
    }
    board.write(burst.as_bytes()).await;
    let mut answered = 0u64;
    while board.raw_answer(Duration::from_secs(5)).await.is_some() {
        answered += 1;
    }
    assert!((10..=20).contains(&answered), "{answered} answered");
    assert!(board.closed(Duration::from_secs(2)).await);
    let limited = events(&s, "acon/1953", "rate_limited").await;
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert_eq!(s.get("/api/stats").await.1["acon_rate_limited"], 1);
    let (_, msgs) = s.get("/api/devices/acon/1953/messages?limit=100").await;
    assert_eq!(msgs.as_array().unwrap().len() as u64, answered);
    // Another board is served meanwhile; the limited one again once its rate refilled.
    let mut other = s.board().await;
    other.exchange(&msg("2000", 1, "")).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut again = s.board().await;
    again.exchange(&msg("1953", 41, "")).await;
}

/// A device asking again and again for a big config does not store a copy of it each time:
/// the message row keeps the first 4 KiB of what went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_config_sent_in_answer_is_kept_as_an_excerpt() {
    let b = Bench::start(Broker::Embedded).await;
    let mut lock = b.prop("lock", &[&format!("lock/{LOCK}/#")]).await;
    lock.send(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp": 1}))
        .await;
    lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    let (s, _) = b
        .server
        .send(
            Method::PUT,
            &format!("/api/devices/lock/{LOCK}/config"),
            Some(json!({"big": "y".repeat(64 * 1024)})),
        )
        .await;
    assert_eq!(s, 200);
    lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    lock.send(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp": 2}))
        .await;
    let cup = lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    assert!(cup.to_string().len() > 64 * 1024, "the device gets it all");
    let msgs = b
        .until(&format!("/api/devices/lock/{LOCK}/messages"), |v| {
            v.as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
    let answer = msgs[0]["answer"].as_str().unwrap();
    assert!(
        answer.starts_with(&format!("lock/{LOCK}/cup ")),
        "{}",
        &answer[..80]
    );
    assert!(answer.len() <= 4096 + 4, "{}", answer.len());
}
