//! SKABEN over MQTT, end to end: real MQTT clients (rumqttc) through the embedded broker and
//! through a Mosquitto process, the server's HTTP API, its SQLite store.
//!
//! Each scenario is an `async fn(Broker)`; `both!` runs it against both brokers.

use std::time::Duration;

use gatehouse::core::{CommittedEvent, Event, RecordedEvent};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{Bench, Broker};

const LOCK: &str = "b827eb0a1b2c";
const RGB: &str = "a4cf12aabbcc";

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(crate::common::Broker::Embedded).await })*
        }
        mod mosquitto {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(crate::common::Broker::Mosquitto).await })*
        }
    };
}

both!(
    cup_request_and_wire_examples,
    pong_rules,
    sup_info_and_all,
    malformed_packets_are_events,
    config_put_patch_if_match,
    push_tracking_ack_pong_and_resend,
    presence_offline_and_back,
    type_added_through_the_api,
    reference_client_compatibility,
);

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn req(
    b: &Bench,
    method: Method,
    path: &str,
    body: Value,
    if_match: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut r = b
        .server
        .http
        .request(method, b.server.url(path))
        .bearer_auth(crate::common::TOKEN)
        .json(&body);
    if let Some(m) = if_match {
        r = r.header("If-Match", m);
    }
    let resp = r.send().await.unwrap();
    let etag = resp
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    let (s, v) = crate::common::decode(resp).await;
    (s, v, etag)
}

/// CUP request → CUP with the device's config; the wire list's lines a device sends.
async fn cup_request_and_wire_examples(broker: Broker) {
    let b = Bench::start(broker).await;
    let mut lock = b
        .prop("lock", &[&format!("lock/{LOCK}/#"), "lock/all/#"])
        .await;
    // Give the lock a config, through the API.
    lock.send(
        &format!("ask/lock/{LOCK}/cup"),
        json!({"timestamp":1716399990,"datahold":{"request":"all"},"task_id":"4821937465"}),
    )
    .await;
    let cup = lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    assert!(cup["timestamp"].as_i64().unwrap() >= now_s() - 5, "{cup}");
    assert_eq!(
        cup["datahold"]["task_id"], cup["task_id"],
        "reference profile: meta inside too"
    );
    let hash = cup["hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 32);
    let (s, _, _) = req(
        &b,
        Method::PUT,
        &format!("/api/devices/lock/{LOCK}/config"),
        json!({"closed":true,"blocked":false,"sound":false,"timer":10,"acl":{"123456":[4,5]}}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let cup = lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    let dh = cup["datahold"].as_object().unwrap();
    assert_eq!(dh["acl"], json!({"123456":[4,5]}));
    assert_eq!(dh["FORCE"], true, "a PUT replaces");
    assert_eq!(cup["overwrite"], true);
    // The hash is of exactly the datahold without the meta keys, canonical.
    let mut sent = cup["datahold"].clone();
    skaben::strip_meta(&mut sent);
    assert_eq!(cup["hash"].as_str().unwrap(), skaben::config_hash(&sent));
    // Uppercase topic (old firmware) is answered on the lowercase topic.
    lock.send(
        &format!("ASK/LOCK/{}/CUP", LOCK.to_uppercase()),
        json!({"timestamp":1}),
    )
    .await;
    let again = lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    assert_eq!(again["hash"], cup["hash"]);
    // ask/pwr/all/cup {"timestamp":1}: a broadcast of the type config.
    let mut pwr = b.prop("pwr", &["pwr/all/#"]).await;
    let (s, _, _) = req(
        &b,
        Method::PUT,
        "/api/types/pwr",
        json!({"config":{"powerstate":"PWR"}}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let bc = pwr.recv_on("pwr/all/cup").await;
    assert_eq!(bc["datahold"], json!({"powerstate":"PWR"}));
    pwr.send("ask/pwr/all/cup", json!({"timestamp":1})).await;
    let bc2 = pwr.recv_on("pwr/all/cup").await;
    assert_eq!(bc2["datahold"], json!({"powerstate":"PWR"}));
    assert_eq!(bc2["hash"], bc["hash"]);
    // The wire list's lamp and alert-scale broadcasts: a type config saved → `<type>/all/cup`.
    let mut dumb = b.prop("dumb", &["rgb/all/#", "scl/all/#"]).await;
    let rgb = json!({"RGB":"00FF00/1000/0/C","STR":"0/1000/C","LGT":"1/1000/C"});
    let scl = json!({"level":120,"state":"green","borders":[334,667,1000]});
    for (ty, config) in [("rgb", &rgb), ("scl", &scl)] {
        let (s, _, _) = req(
            &b,
            Method::PUT,
            &format!("/api/types/{ty}"),
            json!({"config": config}),
            None,
        )
        .await;
        assert_eq!(s, 200);
        let bc = dumb.recv_on(&format!("{ty}/all/cup")).await;
        assert_eq!(&bc["datahold"], config);
        assert!(bc["timestamp"].as_i64().unwrap() >= now_s() - 5);
        assert_eq!(bc["hash"].as_str().unwrap(), skaben::config_hash(config));
    }
    // 30 small devices asking at once (a power cut ends): one broadcast reaches them all, so
    // they are answered by at most one broadcast a second, the last one after the last ask.
    for _ in 0..30 {
        pwr.send("ask/pwr/all/cup", json!({"timestamp":1})).await;
    }
    let mut broadcasts = 0;
    while let Some((t, _)) = pwr.try_recv(Duration::from_millis(1600)).await {
        if t == "pwr/all/cup" {
            broadcasts += 1;
        }
    }
    assert!(
        (1..=3).contains(&broadcasts),
        "{broadcasts} broadcasts for 30 asks"
    );
    // Every packet in is in the device's messages, with what went out.
    let msgs = b
        .until(&format!("/api/devices/lock/{LOCK}/messages"), |v| {
            v.as_array().is_some_and(|a| a.len() >= 2)
        })
        .await;
    let first = msgs.as_array().unwrap().last().unwrap();
    assert_eq!(first["peer"], format!("ask/lock/{LOCK}/cup"));
    assert!(
        first["answer"]
            .as_str()
            .unwrap()
            .starts_with(&format!("lock/{LOCK}/cup {{"))
    );
}

/// PONG: seen; CUP when unknown/offline, when its timestamp is stale, when its hash differs;
/// nothing when all is well; never dropped.
async fn pong_rules(broker: Broker) {
    let b = Bench::start_with(broker, |s| s.core.ping_interval_ms = 300).await;
    let mut lock = b
        .prop("lock", &[&format!("lock/{LOCK}/#"), "lock/all/#"])
        .await;
    // The server pings every active type.
    let ping = lock.recv_on("lock/all/ping").await;
    let ts = ping["timestamp"].as_i64().unwrap();
    assert!((ts - now_s()).abs() <= 2, "{ping}");
    // Unknown device's PONG: registered, and sent its config.
    lock.send(&format!("ask/lock/{LOCK}/pong"), json!({"timestamp": ts}))
        .await;
    let cup = lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    let hash = cup["hash"].as_str().unwrap().to_string();
    let dev = b
        .until(&format!("/api/devices/lock/{LOCK}"), |v| {
            v["online"] == true
        })
        .await;
    assert_eq!(dev["protocol"], "skaben");
    // A PONG with the right hash and a fresh timestamp: no CUP.
    lock.send(
        &format!("ask/lock/{LOCK}/pong"),
        json!({"timestamp": now_s(), "hash": hash}),
    )
    .await;
    lock.nothing_on(&format!("lock/{LOCK}/cup"), Duration::from_millis(700))
        .await;
    let dev = b
        .until(&format!("/api/devices/lock/{LOCK}"), |v| {
            v["in_sync"] == true
        })
        .await;
    assert_eq!(dev["delivery"]["confirmed_by"], "hash");
    // A hash that differs: CUP.
    lock.send(
        &format!("ask/lock/{LOCK}/pong"),
        json!({"timestamp": now_s(), "hash": "d9766421904225c7f5de0e061004bb78"}),
    )
    .await;
    let c = lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    assert_eq!(c["hash"], hash);
    // A timestamp older than the keep-alive timeout (60 s): CUP, and the packet is recorded.
    lock.send(
        &format!("ask/lock/{LOCK}/pong"),
        json!({"timestamp": now_s() - 600, "hash": hash}),
    )
    .await;
    lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    // A small device echoes the ping without a hash.
    let mut rgb = b.prop("rgb", &[&format!("rgb/{RGB}/#"), "rgb/all/#"]).await;
    let p = rgb.recv_on("rgb/all/ping").await;
    rgb.send(&format!("ask/rgb/{RGB}/pong"), p.clone()).await;
    let c = rgb.recv_on(&format!("rgb/{RGB}/cup")).await;
    assert_eq!(c["datahold"], json!({}), "rgb's type config");
    let p = rgb.recv_on("rgb/all/ping").await;
    rgb.send(&format!("ask/rgb/{RGB}/pong"), p).await;
    rgb.nothing_on(&format!("rgb/{RGB}/cup"), Duration::from_millis(500))
        .await;
    // Every PONG is in the log.
    let msgs = b
        .until(&format!("/api/devices/lock/{LOCK}/messages"), |v| {
            v.as_array().is_some_and(|a| a.len() >= 4)
        })
        .await;
    assert!(
        msgs.as_array()
            .unwrap()
            .iter()
            .all(|m| m["parsed"]["command"] == "pong")
    );
    let ev = b.until_event("lock/all", "ping").await;
    assert_eq!(ev.last().unwrap()["data"]["topic"], "lock/all/ping");
}

/// The next recorded event a subscriber gets that matches `want` (others are skipped).
async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<CommittedEvent>>,
    want: impl Fn(&RecordedEvent) -> bool,
) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = rx.recv().await.unwrap();
            if want(&e) {
                return e.recorded.clone();
            }
        }
    })
    .await
    .unwrap()
}

/// SUP merges into the config as a version by the device, without a CUP echo; a SUP against
/// the type's schema is refused with the reason; INFO is an event handed to the scenario hook.
async fn sup_info_and_all(broker: Broker) {
    let b = Bench::start(broker).await;
    let mut scenario = b.server.running().hub.subscribe();
    let mut lock = b.prop("lock", &[&format!("lock/{LOCK}/#")]).await;
    lock.send(
        &format!("ask/lock/{LOCK}/cup"),
        json!({"timestamp":0,"datahold":{"request":"all"},"task_id":"1"}),
    )
    .await;
    let cup = lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    lock.send(
        &format!("ask/lock/{LOCK}/ack"),
        json!({"timestamp":1,"hash":cup["hash"],"task_id":cup["task_id"]}),
    )
    .await;
    let before = b
        .until(&format!("/api/devices/lock/{LOCK}"), |v| {
            v["in_sync"] == true
        })
        .await;
    let v0 = before["desired"]["version"].as_i64().unwrap();
    lock.send(
        &format!("ask/lock/{LOCK}/sup"),
        json!({"timestamp":1716400010,"datahold":{"closed":false},"task_id":"4821937466"}),
    )
    .await;
    let dev = b
        .until(&format!("/api/devices/lock/{LOCK}"), |v| {
            v["desired"]["version"].as_i64() == Some(v0 + 1)
        })
        .await;
    assert_eq!(dev["desired"]["config"]["closed"], false);
    assert_eq!(dev["desired"]["author"], "device");
    assert!(
        dev["desired"]["config"].get("task_id").is_none(),
        "meta keys stay out"
    );
    assert_eq!(dev["reported"]["values"]["closed"], false);
    assert_eq!(dev["in_sync"], true, "the device holds what it reported");
    lock.nothing_on(&format!("lock/{LOCK}/cup"), Duration::from_millis(500))
        .await;
    // The subscriber sees every committed event; the SUP is the config change via `sup`.
    match next_event(
        &mut scenario,
        |e| matches!(&e.event, Event::ConfigChanged { via, .. } if via == "sup"),
    )
    .await
    {
        RecordedEvent {
            device: Some(device),
            event: Event::ConfigChanged {
                keys: Some(keys), ..
            },
            ..
        } => {
            assert_eq!(device, format!("lock/{LOCK}"));
            assert_eq!(keys, json!({"closed": false}));
        }
        other => panic!("expected the SUP, got {other:?}"),
    }
    // INFO: an event with the datahold, and the scenario hook.
    lock.send(&format!("ask/lock/{LOCK}/info"), json!({"timestamp":1716400010,"datahold":{"type":"access","content":"123456","success":true}})).await;
    let ev = b.until_event(&format!("lock/{LOCK}"), "info").await;
    assert_eq!(
        ev.iter().rev().find(|e| e["kind"] == "info").unwrap()["data"]["datahold"]["content"],
        "123456"
    );
    match next_event(&mut scenario, |e| matches!(e.event, Event::Info { .. })).await {
        RecordedEvent {
            device: Some(device),
            event: Event::Info { datahold, .. },
            ..
        } => {
            assert_eq!(device, format!("lock/{LOCK}"));
            assert_eq!(datahold["type"], "access");
        }
        other => panic!("expected the INFO, got {other:?}"),
    }
    let probe = b.prop("pwr-info", &[]).await;
    probe
        .send(
            "ask/pwr/all/info",
            json!({"timestamp":0,"datahold":{"powerstate":"AUX"}}),
        )
        .await;
    let ev = b.until_event("pwr/all", "info").await;
    assert_eq!(ev.last().unwrap()["data"]["datahold"]["powerstate"], "AUX");
    probe
        .send(
            "ask/terminal/0242ac110002/info",
            json!({"timestamp":1716400011,"datahold":{"type":"hack","success":false}}),
        )
        .await;
    let ev = b.until_event("terminal/0242ac110002", "info").await;
    assert_eq!(
        ev.iter().find(|e| e["kind"] == "info").unwrap()["data"]["datahold"]["type"],
        "hack"
    );
    // A schema on the type: a SUP that breaks it is refused with the reason.
    let (s, v, _) = req(
        &b,
        Method::PUT,
        "/api/types/lock",
        json!({"schema": {"type":"object","properties":{"closed":{"type":"boolean"}}}}),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    lock.send(
        &format!("ask/lock/{LOCK}/sup"),
        json!({"timestamp":1,"datahold":{"closed":"yes"}}),
    )
    .await;
    let ev = b.until_event(&format!("lock/{LOCK}"), "sup_rejected").await;
    let rej = ev.iter().find(|e| e["kind"] == "sup_rejected").unwrap();
    assert!(
        rej["data"]["reason"].as_str().unwrap().contains("schema"),
        "{rej}"
    );
    let dev = b.server.get(&format!("/api/devices/lock/{LOCK}")).await.1;
    assert_eq!(dev["desired"]["config"]["closed"], false, "unchanged");
    // A config PUT that breaks the schema: 400 naming the field.
    let (s, v, _) = req(
        &b,
        Method::PUT,
        &format!("/api/devices/lock/{LOCK}/config"),
        json!({"closed": 3}),
        None,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["field"], "config");
}

/// Not JSON, not an object, wrong field types, unknown command, wrong topic shape: each an
/// error event with the reason and the raw payload; the server carries on.
async fn malformed_packets_are_events(broker: Broker) {
    let b = Bench::start(broker).await;
    let mut p = b.prop("bad", &[&format!("lock/{LOCK}/#")]).await;
    p.publish(&format!("ask/rgb/{RGB}/sup"), r#"{"online"}"#)
        .await;
    p.publish(&format!("ask/rgb/{RGB}/pong"), "[1,2]").await;
    p.publish(
        &format!("ask/rgb/{RGB}/pong"),
        r#"{"timestamp":"yesterday"}"#,
    )
    .await;
    p.publish(&format!("ask/rgb/{RGB}/reboot"), r#"{"timestamp":1}"#)
        .await;
    p.publish("ask/rgb/pong", r#"{"timestamp":1}"#).await;
    p.publish(
        &format!("ask/lock/{LOCK}/sup"),
        r#"{"timestamp":1,"datahold":"open"}"#,
    )
    .await;
    let ev = b
        .until("/api/events?kind=malformed&limit=100", |v| {
            v.as_array().is_some_and(|a| a.len() >= 5)
        })
        .await;
    let reasons: Vec<(String, String)> = ev
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["data"]["reason"].as_str().unwrap().to_string(),
                e["data"]["raw"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        reasons[0].0.contains("not JSON") && reasons[0].1 == r#"{"online"}"#,
        "{reasons:?}"
    );
    assert!(reasons[1].0.contains("expected an object"), "{reasons:?}");
    assert!(reasons[2].0.contains("timestamp"), "{reasons:?}");
    assert!(reasons[3].0.contains("unknown command"), "{reasons:?}");
    assert!(reasons[4].0.contains("segments"), "{reasons:?}");
    assert_eq!(
        ev.as_array().unwrap().last().unwrap()["device"],
        format!("rgb/{RGB}")
    );
    let ev = b.until_event(&format!("lock/{LOCK}"), "sup_rejected").await;
    assert!(ev.iter().any(|e| e["kind"] == "sup_rejected"
        && e["data"]["raw"] == r#"{"timestamp":1,"datahold":"open"}"#));
    // Still serving.
    p.send(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp":1}))
        .await;
    p.recv_on(&format!("lock/{LOCK}/cup")).await;
}

/// PUT replaces (pushed with overwrite), PATCH merges (pushed as a merge), If-Match → 409.
async fn config_put_patch_if_match(broker: Broker) {
    let b = Bench::start(broker).await;
    let id = "0242ac110002";
    let (s, _, _) = req(
        &b,
        Method::PUT,
        "/api/types/terminal",
        json!({"profile":"standard"}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let mut t = b.prop("terminal", &[&format!("terminal/{id}/#")]).await;
    t.send(&format!("ask/terminal/{id}/cup"), json!({"timestamp":1}))
        .await;
    t.recv_on(&format!("terminal/{id}/cup")).await;
    let (s, dev, etag) = req(
        &b,
        Method::GET,
        &format!("/api/devices/terminal/{id}"),
        Value::Null,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let v0 = dev["desired"]["version"].as_i64().unwrap();
    assert_eq!(etag.unwrap(), format!("\"{v0}\""));
    let path = format!("/api/devices/terminal/{id}/config");
    let (s, dev, _) = req(
        &b,
        Method::PUT,
        &path,
        json!({"mode":"hack","menu":{"a":1,"b":2}}),
        Some(&format!("\"{v0}\"")),
    )
    .await;
    assert_eq!(s, 200, "{dev}");
    assert_eq!(dev["desired"]["version"], v0 + 1);
    assert_eq!(dev["desired"]["source"], "device");
    assert_eq!(dev["in_sync"], false);
    assert_eq!(dev["delivery"]["pending"]["state"], "pending");
    let cup = t.recv_on(&format!("terminal/{id}/cup")).await;
    assert_eq!(cup["overwrite"], true);
    assert_eq!(
        cup["datahold"],
        json!({"mode":"hack","menu":{"a":1,"b":2}}),
        "standard profile: no meta inside"
    );
    // Stale version: 409, nothing changes.
    let (s, v, _) = req(
        &b,
        Method::PUT,
        &path,
        json!({"mode":"x"}),
        Some(&format!("\"{v0}\"")),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    let (s, v, _) = req(
        &b,
        Method::PATCH,
        &path,
        json!({"mode":"x"}),
        Some(&v0.to_string()),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    let (s, v, _) = req(&b, Method::PUT, &path, json!({"mode":"x"}), Some("soon")).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["field"], "If-Match");
    // PATCH with the current version: merged, pushed as the patch (no overwrite).
    let (s, dev, _) = req(
        &b,
        Method::PATCH,
        &path,
        json!({"menu":{"b":3}}),
        Some(&format!("W/\"{}\"", v0 + 1)),
    )
    .await;
    assert_eq!(s, 200, "{dev}");
    assert_eq!(
        dev["desired"]["config"],
        json!({"mode":"hack","menu":{"a":1,"b":3}})
    );
    let cup = t.recv_on(&format!("terminal/{id}/cup")).await;
    assert!(cup.get("overwrite").is_none(), "{cup}");
    assert_eq!(cup["datahold"], json!({"menu":{"b":3}}));
    assert_eq!(
        cup["hash"].as_str().unwrap(),
        skaben::config_hash(&json!({"mode":"hack","menu":{"a":1,"b":3}}))
    );
    // A patch that deletes a key goes out as a full replace.
    let (s, _, _) = req(&b, Method::PATCH, &path, json!({"menu":{"a":null}}), None).await;
    assert_eq!(s, 200);
    let cup = t.recv_on(&format!("terminal/{id}/cup")).await;
    assert_eq!(cup["overwrite"], true);
    assert_eq!(cup["datahold"], json!({"mode":"hack","menu":{"b":3}}));
    // A profile for this one device: the reference client's layout.
    let (s, dev, _) = req(
        &b,
        Method::PUT,
        &format!("/api/devices/terminal/{id}"),
        json!({"profile":"reference","name":"hall terminal"}),
        None,
    )
    .await;
    assert_eq!(
        (s, dev["profile"].as_str(), dev["name"].as_str()),
        (200, Some("reference"), Some("hall terminal")),
        "{dev}"
    );
    req(
        &b,
        Method::POST,
        &format!("/api/devices/terminal/{id}/push"),
        Value::Null,
        None,
    )
    .await;
    let cup = t.recv_on(&format!("terminal/{id}/cup")).await;
    assert_eq!(cup["datahold"]["task_id"], cup["task_id"], "{cup}");
    assert_eq!(cup["datahold"]["FORCE"], true, "{cup}");
    // Bad input.
    let (s, v, _) = req(&b, Method::PUT, &path, json!([1, 2]), None).await;
    assert_eq!((s, v["field"].as_str()), (400, Some("config")), "{v}");
    let (s, v, _) = req(&b, Method::PUT, &path, json!({"hash": "x"}), None).await;
    assert_eq!((s, v["field"].as_str()), (400, Some("config")), "{v}");
    let (s, _, _) = req(
        &b,
        Method::PUT,
        "/api/devices/terminal/ffffffffffff/config",
        json!({}),
        None,
    )
    .await;
    assert_eq!(s, 404);
    // The log has who changed what.
    let ev = b
        .until_event(&format!("terminal/{id}"), "config_changed")
        .await;
    let changes: Vec<&Value> = ev
        .iter()
        .filter(|e| e["kind"] == "config_changed")
        .collect();
    assert_eq!(changes.len(), 3);
    assert_eq!(changes[0]["actor"], "admin");
    assert_eq!(changes[0]["data"]["old_version"], v0);
}

/// Each push is tracked: confirmed by ACK with its task_id, or by a PONG carrying its hash;
/// re-sent on the next PONG/CUP request when the device was away; NACK is a failure event.
async fn push_tracking_ack_pong_and_resend(broker: Broker) {
    let b = Bench::start(broker).await;
    let (s, _, _) = req(
        &b,
        Method::PUT,
        "/api/types/lock",
        json!({"profile":"standard"}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let dev_path = format!("/api/devices/lock/{LOCK}");
    let cfg_path = format!("{dev_path}/config");
    let cup_topic = format!("lock/{LOCK}/cup");
    let mut lock = b.prop("lock", &[&format!("lock/{LOCK}/#")]).await;
    lock.send(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp":0}))
        .await;
    lock.recv_on(&cup_topic).await;
    // 1. ACK with the push's task_id confirms it.
    req(&b, Method::PUT, &cfg_path, json!({"closed":true}), None).await;
    let cup = lock.recv_on(&cup_topic).await;
    lock.send(
        &format!("ask/lock/{LOCK}/ack"),
        json!({"timestamp":1,"task_id":cup["task_id"]}),
    )
    .await;
    let dev = b.until(&dev_path, |v| v["in_sync"] == true).await;
    assert_eq!(dev["delivery"]["confirmed_by"], "ack");
    assert!(dev["delivery"]["pending"].is_null());
    // 2. No ACK; a PONG carrying the new hash confirms it.
    req(&b, Method::PUT, &cfg_path, json!({"closed":false}), None).await;
    let cup = lock.recv_on(&cup_topic).await;
    let dev = b.server.get(&dev_path).await.1;
    assert_eq!(dev["in_sync"], false);
    lock.send(
        &format!("ask/lock/{LOCK}/pong"),
        json!({"timestamp":now_s(),"hash":cup["hash"]}),
    )
    .await;
    let dev = b.until(&dev_path, |v| v["in_sync"] == true).await;
    assert_eq!(dev["delivery"]["confirmed_by"], "hash");
    lock.nothing_on(&cup_topic, Duration::from_millis(300))
        .await;
    // 3. The device is away when the push goes out: re-sent when it is back.
    lock.disconnect().await;
    let (s, dev, _) = req(
        &b,
        Method::PUT,
        &cfg_path,
        json!({"closed":true,"timer":30}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let want_hash = dev["desired"]["hash"].clone();
    let mut lock = b.prop("lock-back", &[&format!("lock/{LOCK}/#")]).await;
    // Back with its old config: its PONG shows the old hash → the push goes again.
    lock.send(
        &format!("ask/lock/{LOCK}/pong"),
        json!({"timestamp":now_s(),"hash":cup["hash"]}),
    )
    .await;
    let again = lock.recv_on(&cup_topic).await;
    assert_eq!(again["hash"], want_hash);
    assert_eq!(again["datahold"], json!({"closed":true,"timer":30}));
    let dev = b.server.get(&dev_path).await.1;
    assert!(
        dev["delivery"]["pending"]["attempts"].as_u64().unwrap() >= 2,
        "{dev}"
    );
    // An unconfirmed push is re-sent on the next CUP request too.
    lock.send(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp":0}))
        .await;
    let third = lock.recv_on(&cup_topic).await;
    assert_ne!(third["task_id"], again["task_id"]);
    // ACK of an earlier send of the same version still confirms it.
    lock.send(
        &format!("ask/lock/{LOCK}/ack"),
        json!({"timestamp":1,"task_id":again["task_id"]}),
    )
    .await;
    b.until(&dev_path, |v| v["in_sync"] == true).await;
    // 4. NACK: a failure event; the push is not retried on every PONG.
    req(
        &b,
        Method::POST,
        &format!("{dev_path}/push"),
        Value::Null,
        None,
    )
    .await;
    let cup = lock.recv_on(&cup_topic).await;
    lock.send(
        &format!("ask/lock/{LOCK}/nack"),
        json!({"timestamp":1,"task_id":cup["task_id"],"datahold":{"error":"disk full"}}),
    )
    .await;
    let ev = b.until_event(&format!("lock/{LOCK}"), "push_failed").await;
    let f = ev.iter().find(|e| e["kind"] == "push_failed").unwrap();
    assert_eq!(f["data"]["matched"], true);
    assert_eq!(f["data"]["datahold"]["error"], "disk full");
    let dev = b
        .until(&dev_path, |v| v["delivery"]["pending"]["state"] == "failed")
        .await;
    assert_eq!(dev["in_sync"], false);
    lock.send(
        &format!("ask/lock/{LOCK}/pong"),
        json!({"timestamp":now_s(),"hash":again["hash"]}),
    )
    .await;
    lock.nothing_on(&cup_topic, Duration::from_millis(500))
        .await;
}

/// Offline after the type's keep-alive; back online on the next packet, with its config.
async fn presence_offline_and_back(broker: Broker) {
    let b = Bench::start_with(broker, |s| s.core.skaben_keepalive_ms = 1_000).await;
    let mut rgb = b.prop("rgb", &[&format!("rgb/{RGB}/#")]).await;
    rgb.send(
        &format!("ask/rgb/{RGB}/pong"),
        json!({"timestamp": now_s()}),
    )
    .await;
    rgb.recv_on(&format!("rgb/{RGB}/cup")).await;
    let path = format!("/api/devices/rgb/{RGB}");
    b.until(&path, |v| v["online"] == true).await;
    let dev = b.until(&path, |v| v["online"] == false).await;
    assert!(dev["presence_changed_at"].is_string());
    let ev = b.until_event(&format!("rgb/{RGB}"), "offline").await;
    assert_eq!(
        ev.iter().find(|e| e["kind"] == "offline").unwrap()["data"]["timeout_ms"],
        1000
    );
    // Back: an INFO (not dropped) makes it online and brings its config.
    rgb.send(
        &format!("ask/rgb/{RGB}/info"),
        json!({"timestamp": now_s(), "datahold": {"button": 1}}),
    )
    .await;
    rgb.recv_on(&format!("rgb/{RGB}/cup")).await;
    b.until(&path, |v| v["online"] == true).await;
    let kinds: Vec<String> = b
        .until_event(&format!("rgb/{RGB}"), "info")
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    let off = kinds.iter().position(|k| k == "offline").unwrap();
    assert!(
        kinds[off..].contains(&"online".to_string()) && kinds[off..].contains(&"info".to_string()),
        "{kinds:?}"
    );
    // A type's own keep-alive overrides the server's.
    let (s, _, _) = req(
        &b,
        Method::PUT,
        "/api/types/rgb",
        json!({"keepalive_secs": 3600}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.server.get(&path).await.1["online"], true);
    let list = b
        .until("/api/devices?kind=rgb", |v| {
            v.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    assert_eq!(list[0]["protocol"], "skaben");
}

/// An operator adds a type; its devices are served like the seeded ones.
async fn type_added_through_the_api(broker: Broker) {
    let b = Bench::start(broker).await;
    let (s, v) = b.server.get("/api/types").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["box", "lock", "pwr", "rgb", "scl", "terminal"]);
    let (s, v, _) = req(
        &b,
        Method::PUT,
        "/api/types/siren",
        json!({"active": true}),
        None,
    )
    .await;
    assert_eq!((s, v["field"].as_str()), (400, Some("kind")), "{v}");
    let (s, v, _) = req(
        &b,
        Method::PUT,
        "/api/types/siren",
        json!({"kind":"dumb","config":{"RGB":"FF0000/3000/1000/00FF00/3000/2000/C"},"color":1}),
        None,
    )
    .await;
    assert_eq!(s, 400, "unknown key: {v}");
    let (s, v, _) = req(
        &b,
        Method::PUT,
        "/api/types/siren",
        json!({"kind":"dumb","config":{"RGB":"FF0000/3000/1000/00FF00/3000/2000/C"}}),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v, _) = req(
        &b,
        Method::PUT,
        "/api/types/a.b",
        json!({"kind":"dumb"}),
        None,
    )
    .await;
    assert_eq!((s, v["field"].as_str()), (400, Some("type")), "{v}");
    let mut siren = b.prop("siren", &["siren/#"]).await;
    // Pinged with the others.
    siren
        .send("ask/siren/00aabbccddee/cup", json!({"timestamp":1}))
        .await;
    let cup = siren.recv_on("siren/00aabbccddee/cup").await;
    assert_eq!(
        cup["datahold"]["RGB"],
        "FF0000/3000/1000/00FF00/3000/2000/C"
    );
    // The type's config changes: broadcast; POST push broadcasts again.
    let (s, _, _) = req(
        &b,
        Method::PUT,
        "/api/types/siren",
        json!({"config":{"RGB":"00FF00/1000/0/C"}}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let bc = siren.recv_on("siren/all/cup").await;
    assert_eq!(bc["datahold"], json!({"RGB":"00FF00/1000/0/C"}));
    let (s, t, _) = req(&b, Method::POST, "/api/types/siren/push", Value::Null, None).await;
    assert_eq!(s, 200);
    assert_eq!(t["config_version"], 2);
    assert_eq!(t["devices"], 1);
    let bc2 = siren.recv_on("siren/all/cup").await;
    assert_eq!(bc2["hash"], bc["hash"]);
    // Inactive types get no ping; an unknown type is refused with an event.
    let (s, _) = b.server.get("/api/types/siren").await;
    assert_eq!(s, 200);
    siren
        .send("ask/nosuch/00aabbccddee/pong", json!({"timestamp":1}))
        .await;
    let ev = b.until_event("nosuch/00aabbccddee", "rejected").await;
    assert!(
        ev[0]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("PUT /api/types/nosuch")
    );
}

/// The public Python client, as the spec's compatibility section describes it.
struct ReferenceClient {
    ty: &'static str,
    id: &'static str,
    config: serde_json::Map<String, Value>,
    stored_ts: i64,
    next_task: u64,
}

impl ReferenceClient {
    fn topic(&self, cmd: &str) -> String {
        format!("ask/{}/{}/{cmd}", self.ty, self.id)
    }

    /// The CUP request it sends on (re)connect: timestamp 0 at first, `hash` once it holds one.
    fn cup_request(&mut self) -> Value {
        self.next_task += 1;
        let mut p = json!({"timestamp": self.stored_ts, "datahold": {"request": "all"}, "task_id": format!("64175403{}", self.next_task)});
        if let Some(h) = self.config.get("hash") {
            p["hash"] = h.clone();
        }
        p
    }

    /// Answers a PING with the previous stored timestamp; ignores an older ping.
    fn on_ping(&mut self, ping: &Value) -> Option<Value> {
        let ts = ping["timestamp"].as_i64()?;
        if ts < self.stored_ts {
            return None;
        }
        let mut p = json!({"timestamp": self.stored_ts});
        if let Some(h) = self.config.get("hash") {
            p["hash"] = h.clone();
        }
        self.stored_ts = ts;
        Some(p)
    }

    /// Applies a CUP: reads task_id/hash only inside datahold; FORCE replaces; merges the whole
    /// datahold (meta keys included); ACKs unless the datahold is empty.
    fn on_cup(&mut self, cup: &Value) -> Option<Value> {
        cup.get("timestamp")?;
        let dh = cup.get("datahold")?.as_object()?.clone();
        if dh.is_empty() {
            return None;
        }
        if dh.get("FORCE") == Some(&Value::Bool(true)) {
            self.config = dh.clone();
        } else {
            for (k, v) in &dh {
                self.config.insert(k.clone(), v.clone());
            }
        }
        Some(json!({
            "timestamp": self.stored_ts,
            "hash": dh.get("hash").cloned().unwrap_or(Value::Null),
            "task_id": dh.get("task_id").cloned().unwrap_or(json!("missing")),
        }))
    }
}

async fn reference_client_compatibility(broker: Broker) {
    // Through the embedded broker with logins on (the default), as a venue runs it.
    let b = Bench::start_with(broker, |s| {
        s.core.ping_interval_ms = 400;
        if let gatehouse::gateway::mqtt::MqttSettings::Embedded { auth, .. } = &mut s.mqtt {
            *auth = gatehouse::gateway::access::MqttAuth::Devices;
        }
    })
    .await;
    let id = "b827eb0a1b2d";
    let dev_path = format!("/api/devices/lock/{id}");
    // Seeded lock type uses the reference profile.
    let (s, t) = b.server.get("/api/types/lock").await;
    assert_eq!((s, t["profile"].as_str()), (200, Some("reference")));
    let mut rc = ReferenceClient {
        ty: "lock",
        id,
        config: Default::default(),
        stored_ts: 0,
        next_task: 0,
    };
    // Its credential, as its system.yml carries it (username/password).
    let subs = [format!("lock/{id}/#"), "lock/all/#".to_string()];
    let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
    let mut mq = if broker == Broker::Embedded {
        let (s, cred) = b
            .server
            .send(
                Method::POST,
                &format!("/api/devices/lock/{id}/credentials"),
                Some(json!({})),
            )
            .await;
        assert_eq!(s, 201, "{cred}");
        b.prop_as(
            "reference",
            &subs,
            cred["username"].as_str().unwrap(),
            cred["password"].as_str().unwrap(),
        )
        .await
    } else {
        b.prop("reference", &subs).await
    };
    let cup_topic = format!("lock/{id}/cup");
    // CUP twice on connect, ~100 ms apart, different task ids.
    let r1 = rc.cup_request();
    mq.send(&rc.topic("cup"), r1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r2 = rc.cup_request();
    mq.send(&rc.topic("cup"), r2).await;
    for _ in 0..2 {
        let cup = mq.recv_on(&cup_topic).await;
        let ack = rc.on_cup(&cup).expect("non-empty datahold");
        assert_ne!(ack["task_id"], "missing", "task_id inside datahold");
        mq.send(&rc.topic("ack"), ack).await;
    }
    let dev = b.until(&dev_path, |v| v["in_sync"] == true).await;
    // The first ACK confirms it, or the second request, which carries the hash it learnt.
    let by = dev["delivery"]["confirmed_by"].as_str().unwrap();
    assert!(by == "ack" || by == "hash", "{dev}");
    // An operator's config: delivered, ACKed with its task id (read from inside datahold).
    let (s, dev, _) = req(
        &b,
        Method::PUT,
        &format!("{dev_path}/config"),
        json!({"closed":true,"acl":{"123456":[4,5]}}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let want = dev["desired"]["hash"].clone();
    let cup = mq.recv_on(&cup_topic).await;
    let ack = rc.on_cup(&cup).unwrap();
    assert_eq!(ack["hash"], want);
    mq.send(&rc.topic("ack"), ack).await;
    let dev = b
        .until(&dev_path, |v| {
            v["in_sync"] == true && v["desired"]["hash"] == want
        })
        .await;
    assert_eq!(dev["delivery"]["confirmed_by"], "ack");
    // Its saved config holds the keys and the meta keys; the server's doesn't.
    assert_eq!(rc.config["closed"], true);
    assert!(rc.config.contains_key("task_id") && rc.config.contains_key("hash"));
    assert!(dev["desired"]["config"].get("hash").is_none());
    // A PATCH it applies but doesn't ACK: its PONG (previous-ping timestamp + stored hash)
    // confirms it.
    let (s, dev, _) = req(
        &b,
        Method::PATCH,
        &format!("{dev_path}/config"),
        json!({"sound":true}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let want = dev["desired"]["hash"].clone();
    let cup = mq.recv_on(&cup_topic).await;
    assert!(cup["datahold"].get("FORCE").is_none(), "a merge");
    rc.on_cup(&cup).unwrap();
    assert_eq!(rc.config["closed"], true, "merged");
    let mut confirmed = false;
    for _ in 0..10 {
        let ping = mq.recv_on("lock/all/ping").await;
        if let Some(pong) = rc.on_ping(&ping) {
            mq.send(&rc.topic("pong"), pong).await;
        }
        let dev = b.server.get(&dev_path).await.1;
        if dev["in_sync"] == true && dev["desired"]["hash"] == want {
            assert_eq!(dev["delivery"]["confirmed_by"], "hash");
            confirmed = true;
            break;
        }
    }
    assert!(confirmed, "a PONG with the new hash confirms the push");
    // A PUT replaces its config (FORCE inside datahold).
    let (s, dev, _) = req(
        &b,
        Method::PUT,
        &format!("{dev_path}/config"),
        json!({"blocked":true}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let want = dev["desired"]["hash"].clone();
    let cup = loop {
        let (t, v) = mq.try_recv(Duration::from_secs(10)).await.expect("the CUP");
        if t == cup_topic {
            if v["hash"] == want {
                break v;
            }
            // A catch-up CUP of the previous config (its first PONG carried timestamp 0).
            rc.on_cup(&v);
            continue;
        }
        if t == "lock/all/ping"
            && let Some(pong) = rc.on_ping(&v)
        {
            mq.send(&rc.topic("pong"), pong).await;
        }
    };
    assert_eq!(cup["datahold"]["FORCE"], true);
    let ack = rc.on_cup(&cup).unwrap();
    let mut kept: Vec<&String> = rc.config.keys().collect();
    kept.sort();
    assert_eq!(
        kept,
        ["FORCE", "blocked", "hash", "task_id"],
        "replaced, not merged"
    );
    mq.send(&rc.topic("ack"), ack).await;
    b.until(&dev_path, |v| {
        v["in_sync"] == true && v["desired"]["config"] == json!({"blocked":true})
    })
    .await;
}

/// Mosquitto restarts under the server: it reconnects, resubscribes, and a push made while the
/// broker was down reaches the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_restart_is_survived() {
    let mut b = Bench::start(Broker::Mosquitto).await;
    let (s, _, _) = req(
        &b,
        Method::PUT,
        "/api/types/lock",
        json!({"profile":"standard"}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let topic = format!("lock/{LOCK}/cup");
    let mut lock = b.prop("lock", &[&format!("lock/{LOCK}/#")]).await;
    lock.send(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp":0}))
        .await;
    lock.recv_on(&topic).await;
    b.mosquitto.as_mut().unwrap().restart().await;
    // A change while the server may not be connected yet.
    let (s, dev, _) = req(
        &b,
        Method::PUT,
        &format!("/api/devices/lock/{LOCK}/config"),
        json!({"closed":true}),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let want = dev["desired"]["hash"].clone();
    lock.wait_connects(2).await;
    b.wait_gateway_connected().await;
    // Delivered after the restart: re-sent on reconnect, or on the device's next CUP request.
    let mut got = None;
    for _ in 0..3 {
        if let Some((t, v)) = lock.try_recv(Duration::from_secs(2)).await
            && t == topic
            && v["hash"] == want
        {
            got = Some(v);
            break;
        }
        lock.send(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp":0}))
            .await;
    }
    let cup = got.expect("the push after the broker restart");
    lock.send(
        &format!("ask/lock/{LOCK}/ack"),
        json!({"timestamp":1,"task_id":cup["task_id"]}),
    )
    .await;
    b.until(&format!("/api/devices/lock/{LOCK}"), |v| {
        v["in_sync"] == true
    })
    .await;
}

/// Policy `reject`: an unknown prop is refused (an event, no answer) until registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_props_rejected_by_policy_until_registered() {
    let b = Bench::start_with(Broker::Embedded, |s| {
        s.core.unknown_devices = gatehouse::core::UnknownPolicy::Reject
    })
    .await;
    let mut lock = b.prop("lock", &[&format!("lock/{LOCK}/#")]).await;
    lock.send(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp":0}))
        .await;
    lock.nothing_on(&format!("lock/{LOCK}/cup"), Duration::from_millis(500))
        .await;
    b.until_event(&format!("lock/{LOCK}"), "rejected").await;
    assert_eq!(
        b.server.get(&format!("/api/devices/lock/{LOCK}")).await.0,
        404
    );
    let (s, v, _) = req(
        &b,
        Method::PUT,
        &format!("/api/devices/lock/{LOCK}"),
        json!({"name":"front door"}),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    lock.send(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp":0}))
        .await;
    lock.recv_on(&format!("lock/{LOCK}/cup")).await;
    let (s, v, _) = req(
        &b,
        Method::PUT,
        "/api/devices/lock/not-a-mac!",
        json!({}),
        None,
    )
    .await;
    assert_eq!((s, v["field"].as_str()), (400, Some("id")), "{v}");
}
