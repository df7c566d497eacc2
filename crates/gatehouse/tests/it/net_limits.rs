//! Network limits: the file-descriptor budget under a flood from one address, the per-address
//! connection caps, frame deadlines, silent MQTT clients, and MQTT clients that never read.
//! Some run the real binary (a lowered open-files limit, the log, the RSS).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::{Board, Prop, Server, TOKEN, decode, msg};

// ---- a raw MQTT 3.1.1 client: only what the tests need ----

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02]);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    string(client_id, &mut body);
    packet(0x10, &body)
}

fn subscribe_packet(filter: &str) -> Vec<u8> {
    let mut body = vec![0, 1];
    string(filter, &mut body);
    body.push(1);
    packet(0x82, &body)
}

/// Connects over raw TCP (from `local`, a 127.x address) and sends CONNECT; returns the
/// stream and the CONNACK's return code (`None`: closed without one).
async fn raw_mqtt(
    addr: SocketAddr,
    local: &str,
    client_id: &str,
    keep_alive: u16,
) -> (TcpStream, Option<u8>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(&connect_packet(client_id, keep_alive))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    let rc = match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut connack)).await {
        Ok(Ok(_)) if connack[0] == 0x20 => Some(connack[3]),
        _ => None,
    };
    (s, rc)
}

/// True if the peer closed `s` within `wait` (bytes it sends meanwhile are skipped).
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

// ---- the real binary ----

/// A `gatehouse serve` process whose every stderr line is kept.
struct Proc {
    child: Child,
    acon: SocketAddr,
    http: SocketAddr,
    mqtt: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `gatehouse serve` on port 0 with `args`; with `nofile`, under that open-files
    /// limit (soft and hard, so the start-up raise cannot lift it).
    fn spawn(args: &[&str], nofile: Option<u64>) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let bin = env!("CARGO_BIN_EXE_gatehouse");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("serve")
            .args([
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--acon-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--admin-token",
                TOKEN,
                "--log",
                "info,mqtt5=error",
            ])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (mut acon, mut http, mut mqtt) = (None, None, None);
        while acon.is_none() || http.is_none() || mqtt.is_none() {
            let Some(Ok(line)) = lines.next() else {
                panic!(
                    "gatehouse exited before listening: {:#?}",
                    log.lock().unwrap()
                );
            };
            let find = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            };
            acon = acon.or(find("acon_addr="));
            http = http.or(find("http_addr="));
            if line.contains("MQTT broker ready") {
                mqtt = mqtt.or(find("addr="));
            }
            log.lock().unwrap().push(line);
        }
        let l = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Proc {
            child,
            acon: acon.unwrap(),
            http: http.unwrap(),
            mqtt: mqtt.unwrap(),
            log,
            _dir: dir,
        }
    }

    fn log_lines(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The process's resident set, from `/proc/<pid>/status`.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .request(method, format!("http://{}{path}", self.http))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        decode(req.send().await.unwrap()).await
    }

    async fn stat(&self, name: &str) -> u64 {
        let (st, v) = self.api(Method::GET, "/api/stats", None).await;
        assert_eq!(st, 200, "{v}");
        v[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    }
}

async fn stat(s: &Server, name: &str) -> u64 {
    let (st, v) = s.get("/api/stats").await;
    assert_eq!(st, 200, "{v}");
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// Opens up to `n` TCP connections to `addr` from `local`; returns those that connected.
async fn flood(addr: SocketAddr, local: &str, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await
        {
            held.push(s);
        }
    }
    held
}

// ---- the tests ----

#[tokio::test]
async fn a_connection_flood_from_one_address_leaves_every_listener_answering() {
    // 1100 descriptors: reserve 256, HTTP 512, the rest for ACon and MQTT.
    let p = Proc::spawn(&["--acon-max-connections-per-addr", "100"], Some(1100));
    let budget = p.log_text();
    assert!(
        budget.contains("file-descriptor budget") && budget.contains("limit=1100"),
        "{budget}"
    );
    assert!(
        budget.contains("--acon-max-connections / GATEHOUSE_ACON_MAX_CONNECTIONS lowered"),
        "{budget}"
    );
    let lines_before = p.log_lines();
    // More connections from 127.0.0.1 than the process has descriptors: idle ACon
    // connections, and MQTT connections that never send CONNECT.
    let acon_flood = flood(p.acon, "127.0.0.1", 700).await;
    let mqtt_flood = flood(p.mqtt, "127.0.0.1", 500).await;
    // A board from another address is answered.
    let mut b = Board::connect_from(p.acon, "127.0.0.2").await;
    b.exchange(&msg("1953", 1, "")).await;
    // HTTP answers.
    let (st, _) = p.api(Method::GET, "/api/stats", None).await;
    assert_eq!(st, 200);
    assert!(p.stat("acon_refused_per_addr").await >= 500);
    assert_eq!(p.stat("acon_connections").await, 101);
    // MQTT answers: a CONNACK (here "not authorised": no credential), once the connections
    // waiting for their CONNECT time out at worst.
    let mut answered = false;
    for _ in 0..30 {
        if let (_, Some(_)) = raw_mqtt(p.mqtt, "127.0.0.3", "probe", 30).await {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        answered,
        "the embedded broker never answered a CONNECT:\n{}",
        p.log_text()
    );
    drop((acon_flood, mqtt_flood));
    // The log stays small: no line per refused connection, no accept-error loop.
    let logged = p.log_lines() - lines_before;
    assert!(logged < 60, "{logged} lines:\n{}", p.log_text());
    assert!(
        !p.log_text().contains("Too many open files"),
        "{}",
        p.log_text()
    );
}

#[tokio::test]
async fn a_frame_trickled_one_byte_a_second_is_closed_at_its_deadline() {
    let s = Server::start_with(|s| s.acon.frame_timeout = Duration::from_secs(3)).await;
    let mut b = s.board().await;
    let frame = msg("1953", 1, "");
    // One byte a second: every read would restart a timeout; the deadline counts from the
    // first byte, so the server closes long before the frame could be complete.
    let mut closed = false;
    for byte in frame.as_bytes().iter().take(20) {
        if b.stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        if b.closed(Duration::from_secs(1)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a frame trickled over 20 s was still open");
    // A board that sends whole frames is unaffected.
    let mut ok = s.board().await;
    ok.exchange(&msg("1954", 1, "")).await;
}

#[tokio::test]
async fn the_acon_per_address_cap_closes_one_more_at_accept() {
    let s = Server::start_with(|s| s.acon.max_connections_per_addr = 3).await;
    let addr = s.running().acon_addr;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut b = Board::connect_from(addr, "127.0.0.1").await;
        b.exchange(&msg(&format!("b{i}"), 1, "")).await;
        held.push(b);
    }
    let mut over = Board::connect_from(addr, "127.0.0.1").await;
    assert!(over.closed(Duration::from_secs(5)).await);
    // Another address has its own allowance.
    let mut other = Board::connect_from(addr, "127.0.0.2").await;
    other.exchange(&msg("b9", 1, "")).await;
    assert_eq!(stat(&s, "acon_refused_per_addr").await, 1);
    assert_eq!(stat(&s, "acon_connections").await, 4);
    // A slot freed is a slot again.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut b = Board::connect_from(addr, "127.0.0.1").await;
        b.write(msg("b2", 2, "").as_bytes()).await;
        if b.raw_answer(Duration::from_millis(500)).await.is_some() {
            again = Some(b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the freed slot was not given back");
}

#[tokio::test]
async fn the_mqtt_per_address_cap_refuses_one_more_login() {
    let s = Server::start_with(|s| s.mqtt_limits.max_connections_per_addr = 2).await;
    let mqtt = s.running().mqtt_addr.unwrap();
    let (_a, rc_a) = raw_mqtt(mqtt, "127.0.0.1", "cap-a", 30).await;
    let (_b, rc_b) = raw_mqtt(mqtt, "127.0.0.1", "cap-b", 30).await;
    assert_eq!((rc_a, rc_b), (Some(0), Some(0)));
    let (mut c, rc_c) = raw_mqtt(mqtt, "127.0.0.1", "cap-c", 30).await;
    assert!(
        matches!(rc_c, Some(rc) if rc != 0) || rc_c.is_none(),
        "third login from one address: {rc_c:?}"
    );
    assert!(closed_within(&mut c, Duration::from_secs(5)).await);
    // Another address has its own allowance.
    let (_d, rc_d) = raw_mqtt(mqtt, "127.0.0.2", "cap-d", 30).await;
    assert_eq!(rc_d, Some(0));
    assert_eq!(stat(&s, "mqtt_refused_per_addr").await, 1);
    assert_eq!(stat(&s, "mqtt_connections").await, 3);
    // A client that leaves frees its place.
    drop(_a);
    let mut ok = false;
    for _ in 0..50 {
        if let (_e, Some(0)) = raw_mqtt(mqtt, "127.0.0.1", "cap-e", 30).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the place of a client that left was not given back");
}

#[tokio::test]
async fn a_keep_alive_0_client_that_says_nothing_is_closed_at_the_silence_timeout() {
    let s = Server::start_with(|s| s.mqtt_limits.silence_timeout = Duration::from_secs(2)).await;
    let mqtt = s.running().mqtt_addr.unwrap();
    let (mut silent, rc) = raw_mqtt(mqtt, "127.0.0.1", "silent", 0).await;
    assert_eq!(rc, Some(0));
    // A keep-alive-0 client that publishes now and then stays.
    let (mut talker, rc) = raw_mqtt(mqtt, "127.0.0.1", "talker", 0).await;
    assert_eq!(rc, Some(0));
    let mut body = Vec::new();
    string("gatehouse-bench/talk", &mut body);
    body.extend_from_slice(b"hi");
    let publish = packet(0x30, &body);
    let talk = tokio::spawn(async move {
        for _ in 0..20 {
            if talker.write_all(&publish).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        true
    });
    // mqtt5 alone would keep it 300 s.
    assert!(closed_within(&mut silent, Duration::from_secs(20)).await);
    assert_eq!(stat(&s, "mqtt_silent_closed").await, 1);
    assert!(
        talk.await.unwrap(),
        "the talking keep-alive-0 client was closed"
    );
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_disconnected_and_the_rss_stays_bounded() {
    let p = Proc::spawn(
        &[
            "--mqtt-auth",
            "off",
            "--mqtt-max-queued-messages",
            "100",
            "--mqtt-max-queued-bytes",
            "8388608",
        ],
        None,
    );
    // The subscriber that never reads its socket.
    let (mut slow, rc) = raw_mqtt(p.mqtt, "127.0.0.1", "slow", 30).await;
    assert_eq!(rc, Some(0));
    slow.write_all(&subscribe_packet("gatehouse-bench/#"))
        .await
        .unwrap();
    // A publisher of 200 KiB messages (QoS 1), 10 000 of them: 2 GB for the subscriber.
    let publisher = Prop::connect(p.mqtt.port(), "publisher", &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = p.rss_kib();
    let mut max_rss = rss_before;
    let big = "x".repeat(200 * 1024);
    for i in 0..10_000u32 {
        publisher.publish("gatehouse-bench/big", &big).await;
        if i % 100 == 0 {
            max_rss = max_rss.max(p.rss_kib());
        }
    }
    max_rss = max_rss.max(p.rss_kib());
    let grew_mb = max_rss.saturating_sub(rss_before) / 1024;
    eprintln!("RSS before {rss_before} KiB, at most {max_rss} KiB");
    assert!(
        grew_mb < 300,
        "RSS grew by {grew_mb} MB for one subscriber that never reads"
    );
    // It was disconnected, with the event.
    assert!(p.stat("mqtt_too_slow").await >= 1);
    let (st, v) = p
        .api(
            Method::GET,
            "/api/events?kind=mqtt_client_too_slow&limit=100",
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v[0]["data"]["client_id"], "slow", "{v}");
    // Once it reads, it finds its connection closed.
    assert!(closed_within(&mut slow, Duration::from_secs(120)).await);
}
