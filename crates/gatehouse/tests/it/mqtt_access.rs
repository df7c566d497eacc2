//! Who may talk to the embedded broker: logins with device, type and observer credentials,
//! the topic rules, no kicking a device off by its client id, rotation and revocation; and
//! the same refusals from Mosquitto configured with the README's `password_file` and the
//! `acl_file` that `gatehouse mqtt acl` prints. Real MQTT clients (rumqttc) over TCP.

use std::time::Duration;

use gatehouse::gateway::access::MqttAuth;
use gatehouse::gateway::mqtt::MqttSettings;
use reqwest::Method;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::common::{Bench, Broker, Mosquitto, Server, rand_suffix};

const LOCK: &str = "b827eb0a1b2c";
const OTHER: &str = "b827eb0a1b2d";

/// What a test client saw.
#[derive(Debug)]
enum Seen {
    Connected,
    Refused(ConnectReturnCode),
    SubAck(Vec<SubscribeReasonCode>),
    Publish(String, Value),
    Closed(String),
}

/// A raw MQTT client that reports everything and never reconnects (so a kick shows).
struct Client {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn start(port: u16, client_id: &str, login: Option<(&str, &str)>) -> Client {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some((u, p)) = login {
            opts.set_credentials(u, p);
        }
        let (client, mut ev) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let seen = match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Seen::Connected,
                    Ok(Event::Incoming(Packet::SubAck(a))) => Seen::SubAck(a.return_codes),
                    Ok(Event::Incoming(Packet::Publish(p))) => Seen::Publish(
                        p.topic.clone(),
                        serde_json::from_slice(&p.payload).unwrap_or(Value::Null),
                    ),
                    Ok(_) => continue,
                    Err(ConnectionError::ConnectionRefused(code)) => {
                        let _ = tx.send(Seen::Refused(code));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Seen::Closed(e.to_string()));
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        Client { client, rx, task }
    }

    async fn next(&mut self, wait: Duration) -> Option<Seen> {
        tokio::time::timeout(wait, self.rx.recv()).await.ok()?
    }

    /// Logs in; panics unless the broker accepts.
    async fn connect(port: u16, client_id: &str, login: Option<(&str, &str)>) -> Client {
        let mut c = Client::start(port, client_id, login);
        match c.next(Duration::from_secs(10)).await {
            Some(Seen::Connected) => c,
            other => panic!("login of {client_id} not accepted: {other:?}"),
        }
    }

    /// Logs in and returns the broker's refusal; panics if it accepts.
    async fn refused(port: u16, client_id: &str, login: Option<(&str, &str)>) -> ConnectReturnCode {
        let mut c = Client::start(port, client_id, login);
        match c.next(Duration::from_secs(10)).await {
            Some(Seen::Refused(code)) => code,
            other => panic!("login of {client_id} should be refused: {other:?}"),
        }
    }

    /// Subscribes and returns whether the broker granted it.
    async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(Seen::SubAck(codes)) => {
                    return matches!(codes.as_slice(), [SubscribeReasonCode::Success(_)]);
                }
                Some(Seen::Publish(..)) => continue,
                other => panic!("no SUBACK for {filter}: {other:?}"),
            }
        }
    }

    async fn publish(&self, topic: &str, payload: Value) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .unwrap();
    }

    /// The next publish on `topic` within `wait` (others skipped).
    async fn recv_on(&mut self, topic: &str, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Seen::Publish(t, v) if t == topic => return Some(v),
                Seen::Closed(_) => return None,
                _ => continue,
            }
        }
    }

    /// Whether the broker closed the connection within `wait`.
    async fn closed(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Seen::Closed(why)) => {
                    eprintln!("closed by the broker: {why}");
                    return true;
                }
                Some(_) => continue,
                None => return false,
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn id(name: &str) -> String {
    format!("t-{name}-{}", rand_suffix())
}

async fn bench(auth: MqttAuth) -> Bench {
    Bench::start_with(Broker::Embedded, |s| {
        s.mqtt = MqttSettings::Embedded {
            listen: "127.0.0.1:0".into(),
            auth,
        };
    })
    .await
}

/// POST a credential request; returns (username, password) of a new one.
async fn issue(server: &Server, path: &str, body: Value) -> (String, String) {
    let (s, v) = server.send(Method::POST, path, Some(body)).await;
    assert!(s == 201 || s == 200, "{path}: {s} {v}");
    (
        v["username"].as_str().unwrap().to_string(),
        v["password"].as_str().unwrap_or_default().to_string(),
    )
}

fn device_cred(ty: &str, id: &str) -> String {
    format!("/api/devices/{ty}/{id}/credentials")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_wrong_passwords_are_refused_by_default() {
    let b = bench(MqttAuth::Devices).await;
    let port = b.mqtt_port;
    assert_eq!(
        Client::refused(port, &id("anon"), None).await,
        ConnectReturnCode::NotAuthorized
    );
    let (user, pw) = issue(&b.server, &device_cred("lock", LOCK), json!({})).await;
    assert_eq!(user, format!("lock/{LOCK}"));
    assert_eq!(pw.len(), 48);
    assert_eq!(
        Client::refused(port, &id("wrong"), Some((&user, "not-the-password"))).await,
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        Client::refused(port, &id("nobody"), Some(("nobody", "x"))).await,
        ConnectReturnCode::BadUserNamePassword
    );
    Client::connect(port, &id("right"), Some((&user, &pw))).await;
    let stats = b.server.get("/api/stats").await.1;
    assert_eq!(stats["mqtt_auth"], "devices");
    assert!(stats["mqtt_auth_warning"].is_null());
    assert_eq!(stats["mqtt_refused_logins"], 3, "{stats}");
    // One event per address per minute, with the refusals since.
    let (_, events) = b.server.get("/api/events?kind=mqtt_refused").await;
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["action"], "connect");
    assert_eq!(events[0]["data"]["addr"], "127.0.0.1");
    // The password is in the answer that created it, nowhere else.
    let (_, all) = b.server.get("/api/events?limit=1000").await;
    assert!(!all.to_string().contains(&pw));
    let (_, list) = b.server.get("/api/credentials").await;
    assert!(!list.to_string().contains(&pw));
    assert!(list.to_string().contains(&user));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_credential_does_what_the_wire_list_says_and_no_more() {
    let b = bench(MqttAuth::Devices).await;
    let port = b.mqtt_port;
    let (lock_user, lock_pw) = issue(&b.server, &device_cred("lock", LOCK), json!({})).await;
    let (other_user, other_pw) = issue(&b.server, &device_cred("lock", OTHER), json!({})).await;

    // The victim: a real lock, subscribed as the spec says, with a config of its own.
    let victim_id = id("victim");
    let mut victim = Client::connect(port, &victim_id, Some((&other_user, &other_pw))).await;
    assert!(victim.subscribe(&format!("lock/{OTHER}/#")).await);
    assert!(victim.subscribe("lock/all/#").await);
    victim
        .publish(&format!("ask/lock/{OTHER}/cup"), json!({"timestamp": 1}))
        .await;
    victim
        .recv_on(&format!("lock/{OTHER}/cup"), Duration::from_secs(10))
        .await
        .expect("the victim's CUP");
    let (s, _) = b
        .server
        .send(
            Method::PUT,
            &format!("/api/devices/lock/{OTHER}/config"),
            Some(json!({"closed": true, "acl": {"1234": [1]}})),
        )
        .await;
    assert_eq!(s, 200);
    victim
        .recv_on(&format!("lock/{OTHER}/cup"), Duration::from_secs(10))
        .await
        .expect("the victim's new config");

    // The attacker holds a real credential of another lock.
    let mut me = Client::connect(port, &id("attacker"), Some((&lock_user, &lock_pw))).await;
    // What the wire list lets a lock do works.
    assert!(me.subscribe(&format!("lock/{LOCK}/#")).await);
    assert!(me.subscribe("lock/all/#").await);
    me.publish(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp": 1}))
        .await;
    me.recv_on(&format!("lock/{LOCK}/cup"), Duration::from_secs(10))
        .await
        .expect("its own CUP");
    // Reading everything, another device's topics, or the server's inbox: refused.
    for filter in [
        "#",
        "+/all/cup",
        "ask/#",
        &format!("lock/{OTHER}/#"),
        "lock/#",
        "rgb/all/#",
    ] {
        assert!(!me.subscribe(filter).await, "subscribe {filter}");
    }
    // Publishing a server topic: a FORCE config to every lock. Dropped.
    me.publish(
        "lock/all/cup",
        json!({"timestamp": 2, "datahold": {"FORCE": true, "acl": {"0000": [1, 2, 3]}}}),
    )
    .await;
    me.publish(
        &format!("lock/{OTHER}/cup"),
        json!({"timestamp": 2, "datahold": {"blocked": true}}),
    )
    .await;
    // Forging the other lock's SUP, INFO and PONG, and made-up devices' PONGs.
    let before = b.server.get(&format!("/api/devices/lock/{OTHER}")).await.1;
    me.publish(
        &format!("ask/lock/{OTHER}/sup"),
        json!({"timestamp": 3, "datahold": {"blocked": true}}),
    )
    .await;
    me.publish(
        &format!("ask/lock/{OTHER}/info"),
        json!({"timestamp": 3, "datahold": {"opened": true}}),
    )
    .await;
    me.publish(&format!("ask/lock/{OTHER}/pong"), json!({"timestamp": 3}))
        .await;
    for n in 0..20 {
        me.publish(
            &format!("ask/lock/{:012x}/pong", 0xaa00_0000_0000u64 + n),
            json!({"timestamp": 3}),
        )
        .await;
    }
    // Its own PONG still goes through after all that (the publishes above were processed).
    me.publish(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp": 4}))
        .await;
    me.recv_on(&format!("lock/{LOCK}/cup"), Duration::from_secs(10))
        .await
        .expect("its own CUP after the attack");
    assert!(
        victim
            .recv_on("lock/all/cup", Duration::from_millis(500))
            .await
            .is_none(),
        "the forged broadcast reached a lock"
    );
    let after = b.server.get(&format!("/api/devices/lock/{OTHER}")).await.1;
    assert_eq!(before["desired"], after["desired"], "forged SUP applied");
    assert_eq!(
        before["reported"], after["reported"],
        "forged report applied"
    );
    let kinds = b.server.event_kinds(&format!("lock/{OTHER}")).await;
    assert!(!kinds.iter().any(|k| k == "info"), "{kinds:?}");
    let (_, devices) = b.server.get("/api/devices?kind=lock").await;
    assert_eq!(
        devices.as_array().unwrap().len(),
        2,
        "made-up devices: {devices}"
    );
    let stats = b.server.get("/api/stats").await.1;
    assert_eq!(stats["mqtt_refused_publishes"], 2 + 3 + 20, "{stats}");
    assert_eq!(stats["mqtt_refused_subscribes"], 6, "{stats}");
    // Rate-limited: one event for the attacker, naming it, counting from there.
    let (_, events) = b
        .server
        .get(&format!("/api/events?device=lock/{LOCK}&kind=mqtt_refused"))
        .await;
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0]["data"]["client_id"]
            .as_str()
            .unwrap()
            .starts_with("t-attacker")
    );
    assert_eq!(events[0]["data"]["user"], format!("device:lock/{LOCK}"));

    // Kicking the victim off by its client id: refused, even with a valid credential.
    assert_eq!(
        Client::refused(port, &victim_id, Some((&lock_user, &lock_pw))).await,
        ConnectReturnCode::NotAuthorized
    );
    // The victim is still connected and served.
    let (s, _) = b
        .server
        .send(
            Method::POST,
            &format!("/api/devices/lock/{OTHER}/push"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        victim
            .recv_on(&format!("lock/{OTHER}/cup"), Duration::from_secs(10))
            .await
            .is_some(),
        "the victim was kicked off"
    );
    // With its own credential, a newer session of the victim takes its client id over.
    let _again = Client::connect(port, &victim_id, Some((&other_user, &other_pw))).await;
    assert!(victim.closed(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_credential_serves_a_fleet_with_its_own_secret() {
    let b = bench(MqttAuth::Devices).await;
    let port = b.mqtt_port;
    // The venue's rgb lamps already carry one username and password.
    let (user, pw) = issue(
        &b.server,
        "/api/types/rgb/credentials",
        json!({"username": "venue-lamps", "password": "lamps-secret-2019"}),
    )
    .await;
    assert_eq!(
        (user.as_str(), pw.as_str()),
        ("venue-lamps", ""),
        "a chosen password is not echoed"
    );
    let (s, v) = b
        .server
        .send(
            Method::POST,
            "/api/types/rgb/credentials",
            Some(json!({"password": "short"})),
        )
        .await;
    assert_eq!((s, v["field"].as_str()), (400, Some("password")), "{v}");
    let (s, _) = b
        .server
        .send(
            Method::POST,
            "/api/types/nosuch/credentials",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 404);
    // A username taken by another subject: a conflict.
    let (s, _) = b
        .server
        .send(
            Method::POST,
            "/api/types/scl/credentials",
            Some(json!({"username": "venue-lamps", "password": "another-secret"})),
        )
        .await;
    assert_eq!(s, 409);
    let login = Some(("venue-lamps", "lamps-secret-2019"));
    let mut lamps = Vec::new();
    for lamp in ["a4cf12aabb01", "a4cf12aabb02"] {
        let mut c = Client::connect(port, &id("lamp"), login).await;
        assert!(c.subscribe(&format!("rgb/{lamp}/#")).await);
        assert!(c.subscribe("rgb/all/#").await);
        assert!(!c.subscribe("lock/all/#").await);
        c.publish(&format!("ask/rgb/{lamp}/cup"), json!({"timestamp": 1}))
            .await;
        c.recv_on(&format!("rgb/{lamp}/cup"), Duration::from_secs(10))
            .await
            .expect("a CUP for each lamp");
        lamps.push(c);
    }
    // Not another type's topics.
    lamps[0]
        .publish(&format!("ask/lock/{LOCK}/pong"), json!({"timestamp": 1}))
        .await;
    // Its own packet after it, answered: the refused one was handled before.
    lamps[0]
        .publish("ask/rgb/a4cf12aabb01/cup", json!({"timestamp": 2}))
        .await;
    lamps[0]
        .recv_on("rgb/a4cf12aabb01/cup", Duration::from_secs(10))
        .await
        .expect("a CUP after the refused publish");
    assert_eq!(
        Client::refused(
            port,
            &id("lamp"),
            Some(("venue-lamps", "lamps-secret-2018"))
        )
        .await,
        ConnectReturnCode::BadUserNamePassword
    );
    let (s, _) = b.server.get(&format!("/api/devices/lock/{LOCK}")).await;
    assert_eq!(s, 404, "a lamp's credential registered a lock");
}

/// Guessing a chosen (Argon2id) password: about 20 tries a minute per address; a device whose
/// login was checked before is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_slowed_per_address() {
    let b = bench(MqttAuth::Devices).await;
    let port = b.mqtt_port;
    for (ty, user) in [("rgb", "lamps"), ("scl", "scales")] {
        let (s, v) = b
            .server
            .send(
                Method::POST,
                &format!("/api/types/{ty}/credentials"),
                Some(json!({"username": user, "password": "venue-secret-1"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let lamps = Some(("lamps", "venue-secret-1"));
    Client::connect(port, &id("lamp"), lamps).await;
    for _ in 0..20 {
        assert_eq!(
            Client::refused(port, &id("guess"), Some(("scales", "guess"))).await,
            ConnectReturnCode::BadUserNamePassword
        );
    }
    // The right password of a credential not checked before: refused unchecked for now.
    assert_eq!(
        Client::refused(port, &id("scale"), Some(("scales", "venue-secret-1"))).await,
        ConnectReturnCode::BadUserNamePassword
    );
    // A login checked before still passes from the same address.
    Client::connect(port, &id("lamp"), lamps).await;
    let (_, events) = b.server.get("/api/events?kind=mqtt_refused").await;
    assert_eq!(
        events.as_array().unwrap().len(),
        1,
        "rate-limited: {events}"
    );
    assert_eq!(
        b.server.get("/api/stats").await.1["mqtt_refused_logins"],
        21
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_revocation_disconnect_the_old_sessions() {
    let b = bench(MqttAuth::Devices).await;
    let port = b.mqtt_port;
    let path = device_cred("lock", LOCK);
    let (user, old) = issue(&b.server, &path, json!({})).await;
    let mut dev = Client::connect(port, &id("dev"), Some((&user, &old))).await;
    assert!(dev.subscribe(&format!("lock/{LOCK}/#")).await);
    // Re-posting rotates: the old secret stops working, its session is closed.
    let (s, v) = b.server.send(Method::POST, &path, Some(json!({}))).await;
    assert_eq!((s, v["rotated"].as_bool()), (200, Some(true)), "{v}");
    let new = v["password"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(
        dev.closed(Duration::from_secs(5)).await,
        "rotated session still open"
    );
    assert_eq!(
        Client::refused(port, &id("dev"), Some((&user, &old))).await,
        ConnectReturnCode::BadUserNamePassword
    );
    let mut dev = Client::connect(port, &id("dev"), Some((&user, &new))).await;
    assert!(dev.subscribe(&format!("lock/{LOCK}/#")).await);
    // Revoking closes it and refuses it from then on.
    let (s, _) = b.server.send(Method::DELETE, &path, None).await;
    assert_eq!(s, 204);
    assert!(
        dev.closed(Duration::from_secs(5)).await,
        "revoked session still open"
    );
    assert_eq!(
        Client::refused(port, &id("dev"), Some((&user, &new))).await,
        ConnectReturnCode::BadUserNamePassword
    );
    let (s, _) = b.server.send(Method::DELETE, &path, None).await;
    assert_eq!(s, 404);
    let kinds = b.server.event_kinds(&format!("lock/{LOCK}")).await;
    let issued = kinds.iter().filter(|k| *k == "credential_issued").count();
    assert_eq!(issued, 2, "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "credential_revoked"), "{kinds:?}");
    // Revocation survives a restart: the credential list is what the store holds.
    let (_, list) = b.server.get("/api/credentials").await;
    assert!(
        !list.to_string().contains(&format!("lock/{LOCK}")),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_reads_everything_and_writes_nothing() {
    let b = bench(MqttAuth::Devices).await;
    let port = b.mqtt_port;
    let (s, _) = b
        .server
        .send(
            Method::POST,
            "/api/observers/debug/credentials",
            Some(json!({"password": "chosen-for-observer"})),
        )
        .await;
    assert_eq!(s, 400, "an observer's secret is always generated");
    let (user, pw) = issue(&b.server, "/api/observers/debug/credentials", json!({})).await;
    assert_eq!(user, "observer/debug");
    let mut obs = Client::connect(port, &id("obs"), Some((&user, &pw))).await;
    assert!(obs.subscribe("#").await);
    let (lu, lp) = issue(&b.server, &device_cred("lock", LOCK), json!({})).await;
    let lock = Client::connect(port, &id("lock"), Some((&lu, &lp))).await;
    lock.publish(&format!("ask/lock/{LOCK}/cup"), json!({"timestamp": 1}))
        .await;
    // Both, in either order: the server's answer may be routed before the request is.
    let (ask, answer) = (format!("ask/lock/{LOCK}/cup"), format!("lock/{LOCK}/cup"));
    let (mut saw_ask, mut saw_answer) = (false, false);
    while !(saw_ask && saw_answer) {
        match obs.next(Duration::from_secs(10)).await {
            Some(Seen::Publish(t, _)) if t == ask => saw_ask = true,
            Some(Seen::Publish(t, _)) if t == answer => saw_answer = true,
            Some(_) => {}
            None => panic!(
                "the observer saw the device's packet: {saw_ask}, the server's answer: {saw_answer}"
            ),
        }
    }
    obs.publish(&format!("ask/lock/{OTHER}/pong"), json!({"timestamp": 1}))
        .await;
    obs.publish("lock/all/cup", json!({"timestamp": 1, "datahold": {}}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, _) = b.server.get(&format!("/api/devices/lock/{OTHER}")).await;
    assert_eq!(s, 404);
    let stats = b.server.get("/api/stats").await.1;
    assert_eq!(stats["mqtt_refused_publishes"], 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_off_the_topic_rules_still_hold() {
    let b = bench(MqttAuth::Off).await;
    let port = b.mqtt_port;
    let stats = b.server.get("/api/stats").await.1;
    assert_eq!(stats["mqtt_auth"], "off");
    assert!(stats["mqtt_auth_warning"].as_str().unwrap().contains("off"));
    let mut lamp = Client::connect(port, &id("lamp"), None).await;
    assert!(lamp.subscribe("rgb/all/#").await);
    let mut intruder = Client::connect(port, &id("intruder"), None).await;
    assert!(!intruder.subscribe("#").await);
    assert!(!intruder.subscribe("ask/#").await);
    assert!(!intruder.subscribe("+/all/cup").await);
    intruder
        .publish(
            "rgb/all/cup",
            json!({"timestamp": 1, "datahold": {"FORCE": true}}),
        )
        .await;
    assert!(
        lamp.recv_on("rgb/all/cup", Duration::from_millis(500))
            .await
            .is_none(),
        "an anonymous client published a server topic"
    );
    // A device's credential still binds its username to its password, and its client id.
    let (user, pw) = issue(&b.server, &device_cred("lock", LOCK), json!({})).await;
    assert_eq!(
        Client::refused(port, &id("x"), Some((&user, "wrong-password"))).await,
        ConnectReturnCode::BadUserNamePassword
    );
    let held = id("held");
    let mut dev = Client::connect(port, &held, Some((&user, &pw))).await;
    assert!(dev.subscribe(&format!("lock/{LOCK}/#")).await);
    assert_eq!(
        Client::refused(port, &held, None).await,
        ConnectReturnCode::NotAuthorized,
        "an anonymous client took a device's client id"
    );
    assert!(!dev.closed(Duration::from_millis(300)).await);
    let stats = b.server.get("/api/stats").await.1;
    assert_eq!(stats["mqtt_refused_publishes"], 1, "{stats}");
    assert_eq!(stats["mqtt_refused_subscribes"], 3, "{stats}");
}

/// The README's recipe for an external broker: Mosquitto with a `password_file` (made with
/// `mosquitto_passwd`) and the `acl_file` `gatehouse mqtt acl` prints; gatehouse connects with
/// `--mqtt-url mqtt://gatehouse:<password>@…`. The same attacks fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_with_the_readme_password_and_acl_files_refuses_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("gatehouse.passwd");
    let acl = dir.path().join("gatehouse.acl");
    let server_pw = "server-secret-1";
    mosquitto_passwd(&passwd, "gatehouse", server_pw, true);
    std::fs::write(&acl, "user gatehouse\ntopic read ask/#\ntopic write #\n").unwrap();
    let m = Mosquitto::start_with_conf(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwd.display(),
        acl.display()
    ))
    .await;
    let port = m.port;
    let url = format!("mqtt://gatehouse:{server_pw}@127.0.0.1:{port}");
    let server = Server::start_with(|s| {
        s.core.ping_interval_ms = 3_600_000;
        s.mqtt = MqttSettings::External { url };
    })
    .await;
    // Credentials come from the API, as with the embedded broker; the password file gets them
    // with mosquitto_passwd, the ACL from `gatehouse mqtt acl`, then Mosquitto reloads.
    let (lu, lp) = issue(&server, &device_cred("lock", LOCK), json!({})).await;
    let (ou, op) = issue(&server, &device_cred("lock", OTHER), json!({})).await;
    mosquitto_passwd(&passwd, &lu, &lp, false);
    mosquitto_passwd(&passwd, &ou, &op, false);
    let data_dir = server._dir.path().to_path_buf();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["mqtt", "acl", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("user {lu}\n")), "{text}");
    std::fs::write(&acl, &text).unwrap();
    m.reload();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(
        Client::refused(port, &id("anon"), None).await,
        ConnectReturnCode::NotAuthorized
    );
    let mut victim = Client::connect(port, &id("victim"), Some((&ou, &op))).await;
    assert!(victim.subscribe(&format!("lock/{OTHER}/#")).await);
    assert!(victim.subscribe("lock/all/#").await);
    let mut me = Client::connect(port, &id("me"), Some((&lu, &lp))).await;
    assert!(me.subscribe(&format!("lock/{LOCK}/#")).await);
    // The wire list works through Mosquitto and gatehouse.
    for (c, dev) in [(&mut victim, OTHER), (&mut me, LOCK)] {
        let mut got = None;
        for _ in 0..50 {
            c.publish(&format!("ask/lock/{dev}/cup"), json!({"timestamp": 1}))
                .await;
            got = c
                .recv_on(&format!("lock/{dev}/cup"), Duration::from_millis(200))
                .await;
            if got.is_some() {
                break;
            }
        }
        assert!(got.is_some(), "no CUP through Mosquitto for {dev}");
    }
    // Mosquitto grants a subscription outside the ACL but delivers nothing on it: what
    // matters is that nothing arrives.
    let _ = me.subscribe("#").await;
    let _ = me.subscribe(&format!("lock/{OTHER}/#")).await;
    me.publish(
        "lock/all/cup",
        json!({"timestamp": 2, "datahold": {"FORCE": true}}),
    )
    .await;
    me.publish(
        &format!("ask/lock/{OTHER}/sup"),
        json!({"timestamp": 3, "datahold": {"blocked": true}}),
    )
    .await;
    me.publish(
        &format!("ask/lock/{:012x}/pong", 0xaa00_0000_0001u64),
        json!({"timestamp": 3}),
    )
    .await;
    let (s, _) = server
        .send(
            Method::PUT,
            &format!("/api/devices/lock/{OTHER}/config"),
            Some(json!({"closed": true, "acl": {"4321": [2]}})),
        )
        .await;
    assert_eq!(s, 200);
    victim
        .recv_on(&format!("lock/{OTHER}/cup"), Duration::from_secs(10))
        .await
        .expect("the victim's config");
    assert!(
        me.recv_on(&format!("lock/{OTHER}/cup"), Duration::from_millis(500))
            .await
            .is_none(),
        "the attacker read another lock's config"
    );
    assert!(
        victim
            .recv_on("lock/all/cup", Duration::from_millis(300))
            .await
            .is_none(),
        "the forged broadcast reached a lock"
    );
    let dev = server.get(&format!("/api/devices/lock/{OTHER}")).await.1;
    assert_ne!(dev["desired"]["config"]["blocked"], true, "{dev}");
    let (_, devices) = server.get("/api/devices?kind=lock").await;
    assert_eq!(devices.as_array().unwrap().len(), 2, "{devices}");
}

/// `mosquitto_passwd -b [-c] FILE USER PASSWORD`, as the README says.
fn mosquitto_passwd(file: &std::path::Path, user: &str, password: &str, create: bool) {
    let mut cmd = std::process::Command::new("mosquitto_passwd");
    if create {
        cmd.arg("-c");
    }
    let s = cmd
        .arg("-b")
        .arg(file)
        .arg(user)
        .arg(password)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run mosquitto_passwd ({e}); install mosquitto (.ci/run does)")
        });
    assert!(s.success(), "mosquitto_passwd failed");
}
