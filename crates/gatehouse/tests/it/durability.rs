//! Durability: what was answered survives `kill -9`. Runs the real binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::common::{Board, TOKEN, decode, msg};

/// `serve` flags for a server on port 0 with its data in `data`.
pub fn local_args<'a>(data: &'a str, token: Option<&'a str>) -> Vec<&'a str> {
    let mut args = vec![
        "--data-dir",
        data,
        "--acon-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "127.0.0.1:0",
    ];
    if let Some(t) = token {
        args.extend(["--admin-token", t]);
    }
    args
}

/// A `gatehouse serve` process on port 0, with the addresses it logged.
pub struct Proc {
    pub child: Child,
    pub acon: SocketAddr,
    pub http: SocketAddr,
    /// The embedded MQTT broker.
    pub mqtt: Option<SocketAddr>,
    pub stderr: Vec<String>,
}

impl Drop for Proc {
    /// A failing test must not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `gatehouse serve` with `args` and `env`, and reads its log until both listeners are up.
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let (mut acon, mut http, mut mqtt, mut seen) = (None, None, None, Vec::new());
    while acon.is_none() || http.is_none() {
        let Some(Ok(line)) = lines.next() else {
            panic!("gatehouse exited before listening: {seen:#?}");
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
        seen.push(line);
    }
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Proc {
        child,
        acon: acon.unwrap(),
        http: http.unwrap(),
        mqtt,
        stderr: seen,
    }
}

async fn api(
    http: SocketAddr,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{http}{path}"))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    decode(req.send().await.unwrap()).await
}

#[tokio::test]
async fn answered_messages_and_assigned_codes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut args = local_args(data, Some(TOKEN));
    // Boards here send as fast as they are answered, far past a real board's rate.
    args.extend(["--acon-max-messages-per-sec", "0"]);
    let mut p = spawn(&args, &[]);
    let mut b = Board::connect(p.acon).await;
    b.exchange(&msg("1953", 1, "")).await;
    let (st, _) = api(
        p.http,
        Method::PUT,
        "/api/devices/acon/1953/cells/5",
        Some(json!({"minutes": 600, "code": "4321"})),
    )
    .await;
    assert_eq!(st, 200);
    // Many messages from several boards, then SIGKILL right after the last answer.
    let mut boards = Vec::new();
    for i in 0..8 {
        boards.push(Board::connect(p.acon).await);
        boards[i].exchange(&msg(&format!("b{i}"), 1, "")).await;
    }
    for send in 2..=50 {
        for (i, board) in boards.iter_mut().enumerate() {
            board
                .write(msg(&format!("b{i}"), send, "").as_bytes())
                .await;
        }
        for board in boards.iter_mut() {
            assert_eq!(board.answer().await.send, send);
        }
    }
    let a = b.exchange(&msg("1953", 141349, "BOX_ACC=5\n")).await;
    assert_eq!(a.send, 141349);
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();

    let mut p = spawn(&args, &[]);
    let (st, v) = api(
        p.http,
        Method::GET,
        "/api/devices/acon/1953/messages?limit=1",
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        v[0]["send"], 141349,
        "the last answered message was recorded: {v}"
    );
    for i in 0..8 {
        let (_, v) = api(
            p.http,
            Method::GET,
            &format!("/api/devices/acon/b{i}/messages?limit=100"),
            None,
        )
        .await;
        assert_eq!(
            v.as_array().unwrap().len(),
            50,
            "board b{i}: all 50 answered messages"
        );
        assert_eq!(v[0]["send"], 50);
    }
    let (_, v) = api(p.http, Method::GET, "/api/devices/acon/1953", None).await;
    assert_eq!(
        v["reported"]["last_send"], 141349,
        "latest message restored: {v}"
    );
    let mut b = Board::connect(p.acon).await;
    // The board retries with SEND+1 and the same BOX_ACC: still one opening across the restart.
    let a = b.exchange(&msg("1953", 141350, "BOX_ACC=5\n")).await;
    let (_, opened) = api(
        p.http,
        Method::GET,
        "/api/events?device=acon/1953&kind=cell_opened",
        None,
    )
    .await;
    assert_eq!(opened.as_array().unwrap().len(), 1, "{opened}");
    assert_eq!(a.cells.len(), 1);
    assert_eq!(
        (a.cells[0].cell, a.cells[0].code.as_str()),
        (5, "4321"),
        "codes survive the restart"
    );
    assert!(a.cells[0].minutes > 590);
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = local_args(data, Some(TOKEN));
    let mut p = spawn(&args, &[]);
    let mut b = Board::connect(p.acon).await;
    b.exchange(&msg("1", 1, "")).await;
    let pid = p.child.id().to_string();
    assert!(
        // The shell's own `kill`: /bin/kill (procps) is not on every machine.
        Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(
        b.closed(Duration::from_secs(5)).await,
        "connections closed on shutdown"
    );
    // The WAL was checkpointed into the database file on the way out.
    let wal = dir.path().join("gatehouse.db-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "WAL flushed"
    );
}

/// A SUP the embedded broker acknowledged is recorded: SIGKILL right after the last PUBACK,
/// restart, and every key is in the device's config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sups_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = local_args(data, Some(TOKEN));
    let mut p = spawn(&args, &[]);
    let port = p
        .mqtt
        .expect("the embedded broker's address in the log")
        .port();
    // Logins are on by default: the lock logs in with its own credential.
    let (st, cred) = api(
        p.http,
        Method::POST,
        "/api/devices/lock/b827eb0a1b2c/credentials",
        Some(json!({})),
    )
    .await;
    assert_eq!(st, 201, "{cred}");
    let login = Some((
        cred["username"].as_str().unwrap().to_string(),
        cred["password"].as_str().unwrap().to_string(),
    ));
    let mut lock = crate::common::Prop::connect_with(port, "sup-lock", &[], login).await;
    for i in 0..40 {
        lock.send(
            "ask/lock/b827eb0a1b2c/sup",
            json!({"timestamp": 1, "datahold": {format!("k{i}"): i}}),
        )
        .await;
    }
    lock.wait_acks(40).await;
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();

    let mut p = spawn(&args, &[]);
    let (st, v) = api(p.http, Method::GET, "/api/devices/lock/b827eb0a1b2c", None).await;
    assert_eq!(st, 200, "{v}");
    let config = v["desired"]["config"].as_object().unwrap();
    for i in 0..40 {
        assert_eq!(
            config[&format!("k{i}")],
            i,
            "SUP {i} acknowledged but lost: {v}"
        );
    }
    assert_eq!(v["desired"]["author"], "device");
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}
