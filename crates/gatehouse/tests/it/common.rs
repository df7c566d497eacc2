//! Test harness: an in-process server on port 0 with its own data directory, a board that
//! speaks raw bytes over TCP, and an HTTP client with the admin token.

use std::time::Duration;

use acon::{Answer, Decoder};
use gatehouse::core::{CoreConfig, UnknownPolicy};
use gatehouse::gateway::acon::AconLimits;
use gatehouse::gateway::mqtt::MqttSettings;
use gatehouse::server::{Running, Settings, start};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TOKEN: &str = "test-token-123";

/// The seed's example message (spec test vector 1), CRLF.
pub const SEED: &str = "ACon_V1.0\r\nID=1953\r\nSEND=141349\r\nCONNECTION=1\r\nWIFI_STATE=0\r\nGSM_STATE=0\r\nRESET=1\r\nSTATE=0\r\nCOLS=8\r\nROWS=8\r\nACT_CON=01011011,11111111,10110111,11111111,10011111,11111111,10110111,11111111\r\nBOX_ENG=2,5,8,23,24,25\r\nBOX_TO=33,34\r\nBOX_ACC=1,54,43\r\nCLOSE\r\n";

pub fn settings(dir: &std::path::Path) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        acon_listen: "127.0.0.1:0".into(),
        http_listen: "127.0.0.1:0".into(),
        metrics_listen: None,
        http: gatehouse::http::serve::HttpLimits::default(),
        admin_token: Some(TOKEN.into()),
        core: CoreConfig {
            unknown_devices: UnknownPolicy::Register,
            presence_timeout_ms: 300_000,
            code_length: 4,
            ping_interval_ms: 10_000,
            skaben_keepalive_ms: 60_000,
            acon_pin_peers: false,
            acon_max_new_boards_per_min: 60,
            // No rate limits: the scenarios and the tools' tests send as fast as they can;
            // the limits tests set them.
            acon_max_messages_per_sec: 0.0,
            skaben_max_packets_per_sec: 0.0,
            skaben_max_payload_bytes: 8192,
            timezone: None,
        },
        acon: AconLimits {
            max_frame: 64 * 1024,
            max_connections: 1000,
            max_connections_per_addr: 1000,
            idle_timeout: Duration::from_secs(60),
            frame_timeout: Duration::from_secs(10),
            max_bad_frames: 10,
            allow: None,
        },
        mqtt: MqttSettings::Embedded {
            listen: "127.0.0.1:0".into(),
            // The scenarios' props connect anonymously; the access tests turn it on.
            auth: gatehouse::gateway::access::MqttAuth::Off,
        },
        store: Default::default(),
        mqtt_limits: gatehouse::gateway::broker::BrokerLimits::default(),
        console: Default::default(),
    }
}

pub struct Server {
    pub running: Option<Running>,
    pub _dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Settings)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        f(&mut s);
        let running = start(s).await.unwrap();
        Server {
            running: Some(running),
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub async fn board(&self) -> Board {
        Board::connect(self.running().acon_addr).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().http_addr)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        decode(r).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        decode(req.send().await.unwrap()).await
    }

    /// Events of a device, oldest first, as kinds.
    pub async fn event_kinds(&self, device: &str) -> Vec<String> {
        let (status, v) = self
            .get(&format!("/api/events?device={device}&limit=1000"))
            .await;
        assert_eq!(status, 200, "{v}");
        let mut kinds: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect();
        kinds.reverse();
        kinds
    }
}

pub async fn decode(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

/// A board: raw bytes out, answers in.
pub struct Board {
    pub stream: TcpStream,
    decoder: Decoder,
}

impl Board {
    pub async fn connect(addr: std::net::SocketAddr) -> Board {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Board {
            stream,
            decoder: Decoder::default(),
        }
    }

    /// A board whose socket is bound to `local` before connecting (on Linux any 127.x.y.z
    /// is a loopback address), to play boards at several addresses.
    pub async fn connect_from(addr: std::net::SocketAddr, local: &str) -> Board {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Board {
            stream,
            decoder: Decoder::default(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next answer frame, raw; `None` on timeout or close.
    pub async fn raw_answer(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(f) = self.decoder.next_frame() {
                return Some(f.unwrap().bytes);
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.decoder.feed(&buf[..n]);
        }
    }

    pub async fn answer(&mut self) -> Answer {
        let raw = self
            .raw_answer(Duration::from_secs(10))
            .await
            .expect("an answer");
        Answer::parse(&raw).unwrap()
    }

    /// Sends a message and waits for its answer.
    pub async fn exchange(&mut self, msg: &str) -> Answer {
        self.write(msg.as_bytes()).await;
        self.answer().await
    }

    /// True if the server closed the connection within `wait`.
    pub async fn closed(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(wait, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A message from board `id` with SEND `send` and extra lines (LF).
pub fn msg(id: &str, send: u64, extra: &str) -> String {
    format!(
        "ACon_V1.0\nID={id}\nSEND={send}\nRESET=0\nSTATE=0\nCOLS=4\nROWS=2\nACT_CON=1111,1111\n{extra}CLOSE\n"
    )
}

/// Which broker a SKABEN test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// The broker embedded in `gatehouse serve`.
    Embedded,
    /// A Mosquitto process the test starts (the binary comes from `.ci/run`).
    Mosquitto,
}

/// A Mosquitto broker on a port of its own, started and stopped by the test.
pub struct Mosquitto {
    child: Option<std::process::Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Lines after the listener (default: anonymous clients allowed).
    conf: String,
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        Self::start_with_conf("allow_anonymous true\n").await
    }

    /// Mosquitto with these configuration lines (after `listener`, before `persistence`).
    pub async fn start_with_conf(conf: &str) -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut m = Mosquitto {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            conf: conf.to_string(),
        };
        m.spawn().await;
        m
    }

    /// SIGHUP: Mosquitto reloads its password and ACL files.
    pub fn reload(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let s = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(s.success());
    }

    async fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\n{}persistence false\nlog_dest none\n",
                self.port, self.conf
            ),
        )
        .unwrap();
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run mosquitto ({e}); install it: apt-get install -y mosquitto (.ci/run does)")
            });
        self.child = Some(child);
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("mosquitto did not start listening on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A SKABEN test bench: a server, its broker, and MQTT props.
pub struct Bench {
    pub server: Server,
    pub mosquitto: Option<Mosquitto>,
    pub mqtt_port: u16,
}

impl Bench {
    pub async fn start(broker: Broker) -> Bench {
        Self::start_with(broker, |_| {}).await
    }

    pub async fn start_with(broker: Broker, f: impl FnOnce(&mut Settings)) -> Bench {
        let mosquitto = match broker {
            Broker::Embedded => None,
            Broker::Mosquitto => Some(Mosquitto::start().await),
        };
        let url = mosquitto.as_ref().map(Mosquitto::url);
        let server = Server::start_with(|s| {
            // No PING unless a test asks for it: pings would interleave with what it checks.
            s.core.ping_interval_ms = 3_600_000;
            if let Some(url) = url {
                s.mqtt = MqttSettings::External { url };
            }
            f(s)
        })
        .await;
        let mqtt_port = match &mosquitto {
            Some(m) => m.port,
            None => server.running().mqtt_addr.expect("embedded broker").port(),
        };
        let b = Bench {
            server,
            mosquitto,
            mqtt_port,
        };
        b.wait_gateway_connected().await;
        b
    }

    /// Waits until the server's MQTT client is subscribed (a CUP request gets an answer).
    pub async fn wait_gateway_connected(&self) {
        // With logins on, the probe logs in with a credential for the `box` type.
        let login = if self.server.get("/api/stats").await.1["mqtt_auth"] == "devices" {
            let (s, v) = self
                .server
                .send(
                    reqwest::Method::POST,
                    "/api/types/box/credentials",
                    Some(serde_json::json!({})),
                )
                .await;
            assert_eq!(s, 201, "{v}");
            Some((
                v["username"].as_str().unwrap().to_string(),
                v["password"].as_str().unwrap().to_string(),
            ))
        } else {
            None
        };
        let mut probe = Prop::connect_with(self.mqtt_port, "probe", &["box/all/cup"], login).await;
        for _ in 0..100 {
            probe.publish("ask/box/all/cup", r#"{"timestamp":1}"#).await;
            if probe.try_recv(Duration::from_millis(200)).await.is_some() {
                return;
            }
        }
        panic!("the server's MQTT client never answered");
    }

    pub async fn prop(&self, name: &str, subs: &[&str]) -> Prop {
        Prop::connect(self.mqtt_port, name, subs).await
    }

    /// A prop that logs in with a credential.
    pub async fn prop_as(&self, name: &str, subs: &[&str], user: &str, password: &str) -> Prop {
        Prop::connect_with(
            self.mqtt_port,
            name,
            subs,
            Some((user.to_string(), password.to_string())),
        )
        .await
    }

    /// Polls `GET path` until `pred` holds (10 s at most) and returns the last body.
    pub async fn until(&self, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..500 {
            let (status, v) = self.server.get(path).await;
            if status == 200 && pred(&v) {
                return v;
            }
            last = v;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("GET {path} never matched; last: {last:#}");
    }

    /// Events of a device, oldest first, waiting until one of `kind` is there.
    pub async fn until_event(&self, device: &str, kind: &str) -> Vec<Value> {
        let path = format!("/api/events?device={device}&limit=1000");
        let v = self
            .until(&path, |v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|e| e["kind"] == kind))
            })
            .await;
        let mut all = v.as_array().cloned().unwrap_or_default();
        all.reverse();
        all
    }
}

/// An MQTT prop (or a probe): a real rumqttc client.
pub struct Prop {
    pub client: rumqttc::AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    connects: tokio::sync::watch::Receiver<u32>,
    acks: tokio::sync::watch::Receiver<u32>,
    task: tokio::task::JoinHandle<()>,
}

impl Prop {
    pub async fn connect(port: u16, name: &str, subs: &[&str]) -> Prop {
        Self::connect_with(port, name, subs, None).await
    }

    pub async fn connect_with(
        port: u16,
        name: &str,
        subs: &[&str],
        login: Option<(String, String)>,
    ) -> Prop {
        use rumqttc::{Event, MqttOptions, Packet, QoS};
        let id = format!("test-{name}-{}", rand_suffix());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut ev) = rumqttc::AsyncClient::new(opts, 1000);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (ctx, connects) = tokio::sync::watch::channel(0u32);
        let (atx, acks) = tokio::sync::watch::channel(0u32);
        let subs: Vec<String> = subs.iter().map(|s| s.to_string()).collect();
        let c2 = client.clone();
        let task = tokio::spawn(async move {
            let mut pending_subs = 0usize;
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        pending_subs = subs.len();
                        for s in &subs {
                            let _ = c2.try_subscribe(s.clone(), QoS::AtLeastOnce);
                        }
                        if subs.is_empty() {
                            ctx.send_modify(|n| *n += 1);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        pending_subs = pending_subs.saturating_sub(1);
                        if pending_subs == 0 {
                            ctx.send_modify(|n| *n += 1);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => atx.send_modify(|n| *n += 1),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let mut p = Prop {
            client,
            rx,
            connects,
            acks,
            task,
        };
        p.wait_connects(1).await;
        p
    }

    /// Waits until the prop has connected (and subscribed) `n` times in all.
    pub async fn wait_connects(&mut self, n: u32) {
        tokio::time::timeout(Duration::from_secs(15), self.connects.wait_for(|&c| c >= n))
            .await
            .expect("prop (re)connected in time")
            .unwrap();
    }

    /// Waits until the broker has acknowledged `n` of this prop's QoS 1 publishes in all.
    pub async fn wait_acks(&mut self, n: u32) {
        tokio::time::timeout(Duration::from_secs(15), self.acks.wait_for(|&c| c >= n))
            .await
            .expect("publishes acknowledged in time")
            .unwrap();
    }

    pub async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
            )
            .await
            .unwrap();
    }

    pub async fn send(&self, topic: &str, payload: Value) {
        self.publish(topic, &payload.to_string()).await
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<(String, Value)> {
        let (t, p) = tokio::time::timeout(wait, self.rx.recv()).await.ok()??;
        let v = serde_json::from_slice(&p)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&p).into_owned()));
        Some((t, v))
    }

    /// The next packet on `topic` (others are skipped), within 10 s.
    pub async fn recv_on(&mut self, topic: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_recv(left).await {
                Some((t, v)) if t == topic => return v,
                Some(_) => continue,
                None => panic!("nothing on {topic} within 10 s"),
            }
        }
    }

    /// Asserts nothing arrives on `topic` within `wait`.
    pub async fn nothing_on(&mut self, topic: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_recv(left).await {
                Some((t, v)) if t == topic => panic!("unexpected packet on {topic}: {v}"),
                Some(_) => continue,
                None => return,
            }
        }
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
