//! Load generators for the operator console: its device list page over many devices
//! (`gatehouse bench pages`), and its live stream under an event load (`gatehouse bench
//! stream`). Both talk to a running server over HTTP/1.1 (and MQTT), like a browser and a
//! venue's devices would.
//!
//! - **pages**: registers `--devices` devices through the API (half ACon boards, half SKABEN
//!   locks; skipped for those already there), logs in through the login form like a browser,
//!   then requests each page of a fixed set `--requests` times in turn, one at a time on one
//!   keep-alive connection, and reports the time to the last byte of each (p50/p95/p99/max).
//!   The reference, measured in the same run on the same connection, is `GET /healthz`: the
//!   server's HTTP path with nothing rendered. On the loopback the time to the last byte is
//!   the server's time plus a few tens of µs.
//! - **stream**: `--devices` SKABEN props publish INFO packets at `--rate` per second in all,
//!   each carrying its send time; in a first phase nobody listens, in a second `--clients`
//!   SSE clients read `GET /api/events/stream` (every event, as a console tab does) and
//!   record, for each INFO event they receive, the delay from its publish to its arrival.
//!   With `--server-pid` each phase also reports the server's CPU (utime + stime from
//!   `/proc/<pid>/stat`) over its measured seconds: the clients' cost is the difference.
//!
//! ```text
//! bench pages: 10 000 devices, 200 requests per page
//!   /healthz (reference)            p50 0.1 ms  p95 0.1 ms  p99 0.2 ms  max 0.4 ms    2 B
//!   /devices                        p50 9.8 ms  p95 11 ms   p99 13 ms   max 15 ms  41 210 B
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rumqttc::QoS;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::latency::Latencies;
use crate::simulate_skaben::mqtt::{self, Broker};

/// Where the server's HTTP API is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Base {
    host: String,
    port: u16,
}

impl Base {
    fn parse(url: &str) -> anyhow::Result<Base> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--url {url:?}: expected http://HOST:PORT"))?
            .trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .with_context(|| format!("--url {url:?}: expected http://HOST:PORT"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("--url {url:?}: the port must be 1..=65535"))?;
        Ok(Base {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
        })
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    base: Base,
    send: SendRequest<Full<Bytes>>,
}

/// An answer read whole.
struct Answer {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Conn {
    async fn open(base: &Base) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect((base.host.as_str(), base.port))
            .await
            .with_context(|| format!("cannot connect to http://{}", base.host_header()))?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            base: base.clone(),
            send,
        })
    }

    fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.base.host_header())
    }

    /// Sends a request and reads the whole answer.
    async fn call(&mut self, req: Request<Full<Bytes>>) -> anyhow::Result<Answer> {
        self.send.ready().await.context("the connection closed")?;
        let r = self.send.send_request(req).await.context("HTTP request")?;
        let (parts, body) = r.into_parts();
        let body = body.collect().await.context("HTTP body")?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Percentiles of a histogram in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub count: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Spread {
    fn of(l: &Latencies) -> anyhow::Result<Spread> {
        let h = l.merged()?;
        Ok(Spread {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        })
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:<8} p95 {:<8} p99 {:<8} max {:<8}",
            mqtt::ms(self.p50_us),
            mqtt::ms(self.p95_us),
            mqtt::ms(self.p99_us),
            mqtt::ms(self.max_us)
        )
    }
}

/// Load the console's device list: many devices, each page timed to its last byte, next to
/// the server's bare HTTP path (`/healthz`) on the same connection.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchPagesArgs {
    /// The server's HTTP address.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// An admin API token, to register the devices (the server's `<data dir>/admin-token`).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "GATEHOUSE_TOKEN",
        hide_env_values = true
    )]
    pub token: String,

    /// The console account the pages are requested as.
    #[arg(long, value_name = "NAME", default_value = "admin")]
    pub user: String,

    /// A file holding that account's password (the first start's `<data dir>/admin-password`).
    #[arg(long, value_name = "FILE")]
    pub password_file: PathBuf,

    /// Devices the server should hold: half ACon boards, half SKABEN locks, registered
    /// through the API unless they are there already.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(2..=1_000_000))]
    pub devices: u64,

    /// Timed requests of each page (after 10 untimed ones).
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
}

/// What one page measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PageReport {
    pub path: String,
    pub spread: Spread,
    pub bytes: usize,
}

/// Connections registering devices at once.
const REGISTER_CONNS: u64 = 8;
/// Requests of each page before the timed ones.
const UNTIMED: u64 = 10;

pub async fn run_pages(args: BenchPagesArgs) -> anyhow::Result<()> {
    let base = Base::parse(&args.url)?;
    let password = std::fs::read_to_string(&args.password_file)
        .with_context(|| {
            format!(
                "cannot read --password-file {}",
                args.password_file.display()
            )
        })?
        .trim()
        .to_string();
    let started = Instant::now();
    let added = register(&base, &args.token, args.devices).await?;
    eprintln!(
        "bench pages: {added} devices registered in {:.1} s ({} were there)",
        started.elapsed().as_secs_f64(),
        args.devices - added
    );
    let mut conn = Conn::open(&base).await?;
    let cookie = log_in(&mut conn, &args.user, &password).await?;
    let boards = args.devices / 2;
    let pages = [
        "/healthz".to_string(),
        "/devices".to_string(),
        "/devices/list".to_string(),
        "/devices?state=wrong".to_string(),
        "/devices?kind=lock".to_string(),
        format!("/devices?after=acon/{}", board_id(boards / 2)),
        "/devices?q=bench%20lock%2099".to_string(),
        "/devices?limit=500".to_string(),
        "/".to_string(),
    ];
    let mut reports = Vec::new();
    for path in &pages {
        reports.push(time_page(&mut conn, path, &cookie, args.requests).await?);
    }
    println!(
        "bench pages: {} devices, {} requests per page, one connection",
        args.devices, args.requests
    );
    for r in &reports {
        let label = if r.path == "/healthz" {
            format!("{} (reference)", r.path)
        } else {
            r.path.clone()
        };
        println!(
            "  {label:<34} {}  {:>9} B",
            r.spread,
            mqtt::grouped(r.bytes as u64)
        );
    }
    Ok(())
}

fn board_id(i: u64) -> String {
    format!("{}", 900_000 + i)
}

/// Registers the devices not there yet; returns how many it added.
async fn register(base: &Base, token: &str, devices: u64) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicU64::new(0));
    let added = Arc::new(AtomicU64::new(0));
    let boards = devices / 2;
    let mut tasks = JoinSet::new();
    for _ in 0..REGISTER_CONNS {
        let (base, token, next, added) =
            (base.clone(), token.to_string(), next.clone(), added.clone());
        tasks.spawn(async move {
            let mut conn = Conn::open(&base).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= devices {
                    return anyhow::Ok(());
                }
                let (path, name) = if i < boards {
                    let id = board_id(i);
                    (
                        format!("/api/devices/acon/{id}"),
                        format!("bench board {i}"),
                    )
                } else {
                    let j = i - boards;
                    (
                        format!("/api/devices/lock/{}", mqtt::device_id("be4c", j)),
                        format!("bench lock {j}"),
                    )
                };
                let get = conn
                    .request(Method::GET, &path)
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(empty())?;
                if conn.call(get).await?.status == StatusCode::OK {
                    continue;
                }
                let body = serde_json::json!({ "name": name }).to_string();
                let put = conn
                    .request(Method::PUT, &path)
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))?;
                let a = conn.call(put).await?;
                if !a.status.is_success() {
                    bail!(
                        "PUT {path}: {} {}",
                        a.status,
                        String::from_utf8_lossy(&a.body)
                    );
                }
                added.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a registering task failed")??;
    }
    Ok(added.load(Ordering::Relaxed))
}

/// Logs in through the console's form; returns the `Cookie` header to send.
async fn log_in(conn: &mut Conn, user: &str, password: &str) -> anyhow::Result<String> {
    let form = format!(
        "name={}&password={}",
        form_encode(user),
        form_encode(password)
    );
    let req = conn
        .request(Method::POST, "/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))?;
    let a = conn.call(req).await?;
    let cookie = a
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gatehouse_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    match cookie {
        Some(c) => Ok(c),
        None => bail!(
            "the login as {user:?} was refused: {} {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        ),
    }
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn time_page(
    conn: &mut Conn,
    path: &str,
    cookie: &str,
    requests: u64,
) -> anyhow::Result<PageReport> {
    let times = Latencies::new(1)?;
    let mut bytes = 0;
    for n in 0..UNTIMED + requests {
        let req = conn
            .request(Method::GET, path)
            .header(header::COOKIE, cookie)
            .header(header::ACCEPT, "text/html")
            .body(empty())?;
        let t = Instant::now();
        let a = conn.call(req).await?;
        let took = t.elapsed();
        if a.status != StatusCode::OK {
            bail!(
                "GET {path}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        bytes = a.body.len();
        if n >= UNTIMED {
            times.record(0, took);
        }
    }
    Ok(PageReport {
        path: path.to_string(),
        spread: Spread::of(&times)?,
        bytes,
    })
}

/// Load the live stream: devices publishing INFO at a fixed rate, first with nobody
/// listening, then with SSE clients reading every event, each INFO's delay from its publish
/// to each client measured.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchStreamArgs {
    /// The server's HTTP address.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// An API token the clients read the stream with (any role).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "GATEHOUSE_TOKEN",
        hide_env_values = true
    )]
    pub token: String,

    /// MQTT broker the server listens on, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    pub mqtt: String,

    /// Devices publishing.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub devices: u64,

    /// INFO packets per second, all devices together.
    #[arg(long, value_name = "PER_SEC", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rate: u64,

    /// SSE clients in the second phase.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub clients: u64,

    /// Seconds measured in each phase, after 2 s of warm-up.
    #[arg(long, value_name = "SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,

    /// The server's process id, to report its CPU in each phase.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
}

/// Warm-up of each phase: publishing, not measured.
const STREAM_WARMUP: Duration = Duration::from_secs(2);
/// How long the clients go on reading after the last publish: an event later than this
/// counts as not received.
const STREAM_GRACE: Duration = Duration::from_secs(3);

/// The measured seconds on the wall clock (µs since the epoch): what the INFO packets carry.
#[derive(Debug, Clone, Copy)]
struct Window {
    from_us: u64,
    to_us: u64,
}

impl Window {
    fn holds(&self, t: u64) -> bool {
        (self.from_us..self.to_us).contains(&t)
    }
}
/// The datahold key an INFO carries its send time in (µs since the epoch).
const SENT_KEY: &str = "bench_sent_us";

/// What one phase of `bench stream` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPhase {
    pub clients: u64,
    pub published: u64,
    /// INFO events published in the measured seconds that the clients received (all clients
    /// together; `published × clients` when none was lost or later than 3 s).
    pub received: u64,
    pub delay: Option<Spread>,
    /// `resync` messages the clients got (a client fell behind or the stream lost events).
    pub resyncs: u64,
    /// The server's CPU over the measured seconds, one core = 100 %.
    pub server_cpu: Option<f64>,
}

pub async fn run_stream(args: BenchStreamArgs) -> anyhow::Result<()> {
    let base = Base::parse(&args.url)?;
    let broker = Broker::parse(&args.mqtt)?;
    mqtt::raise_fd_limit(args.devices + args.clients)?;
    let quiet = stream_phase(&args, &base, &broker, 0).await?;
    let loaded = stream_phase(&args, &base, &broker, args.clients).await?;
    println!(
        "bench stream: {} devices publishing INFO at {}/s in all, {} s measured after {} s warm-up",
        args.devices,
        mqtt::grouped(args.rate),
        args.duration,
        STREAM_WARMUP.as_secs()
    );
    for p in [&quiet, &loaded] {
        let cpu = p
            .server_cpu
            .map_or("server CPU not measured (--server-pid)".into(), |c| {
                format!("server CPU {c:.1} %")
            });
        let delay = p.delay.map_or("—".to_string(), |d| format!("delay {d}"));
        println!(
            "  {:>3} clients  published {:>7}  received {:>9}  resyncs {}  {cpu}  {delay}",
            p.clients,
            mqtt::grouped(p.published),
            mqtt::grouped(p.received),
            p.resyncs,
        );
    }
    Ok(())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (--server-pid)"))?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/<pid>/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are the 12th and 13th after the name.
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .context("unexpected /proc/<pid>/stat")
    };
    Ok(tick(11)? + tick(12)?)
}

/// Clock ticks per second (USER_HZ): 100 on Linux.
const TICKS_PER_SEC: f64 = 100.0;

async fn stream_phase(
    args: &BenchStreamArgs,
    base: &Base,
    broker: &Broker,
    clients: u64,
) -> anyhow::Result<StreamPhase> {
    let delays = Arc::new(Latencies::new(
        usize::try_from(clients.max(1)).unwrap_or(64),
    )?);
    let received = Arc::new(AtomicU64::new(0));
    let resyncs = Arc::new(AtomicU64::new(0));
    let lead = STREAM_WARMUP + Duration::from_secs(1);
    let measure_from = Instant::now() + lead;
    let measure_to = measure_from + Duration::from_secs(args.duration);
    // The same window on the wall clock, which the INFO packets carry.
    let from_us = now_us() + u64::try_from(lead.as_micros()).unwrap_or(0);
    let window = Window {
        from_us,
        to_us: from_us + args.duration * 1_000_000,
    };
    let mut readers = JoinSet::new();
    for c in 0..clients {
        let (base, token) = (base.clone(), args.token.clone());
        let (delays, received, resyncs) = (delays.clone(), received.clone(), resyncs.clone());
        readers.spawn(async move {
            read_stream(c, &base, &token, window, &delays, &received, &resyncs).await
        });
    }
    // The readers are subscribed before the load starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some(Ok(Err(e))) = readers.try_join_next() {
        return Err(e);
    }

    let published = Arc::new(AtomicU64::new(0));
    let mut devices = JoinSet::new();
    let per_device = args.rate as f64 / args.devices as f64;
    for d in 0..args.devices {
        let broker = broker.clone();
        let published = published.clone();
        let id = mqtt::device_id("be5e", d);
        devices.spawn(async move {
            publish_info(&broker, &id, per_device, d, window, measure_to, &published).await
        });
    }
    tokio::time::sleep_until(measure_from).await;
    let cpu0 = args.server_pid.map(cpu_ticks).transpose()?;
    tokio::time::sleep_until(measure_to).await;
    let cpu1 = args.server_pid.map(cpu_ticks).transpose()?;
    while let Some(r) = devices.join_next().await {
        r.context("a publishing device failed")??;
    }
    // Events published at the end may still be on their way.
    tokio::time::sleep(STREAM_GRACE).await;
    readers.abort_all();
    while let Some(r) = readers.join_next().await {
        if let Ok(Err(e)) = r {
            return Err(e);
        }
    }
    let server_cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some((b - a) as f64 / TICKS_PER_SEC / args.duration as f64 * 100.0),
        _ => None,
    };
    Ok(StreamPhase {
        clients,
        // Only publishes sent in the window were counted: read once every device is done.
        published: published.load(Ordering::Relaxed),
        received: received.load(Ordering::Relaxed),
        delay: (clients > 0).then(|| Spread::of(&delays)).transpose()?,
        resyncs: resyncs.load(Ordering::Relaxed),
        server_cpu,
    })
}

/// One device: connects, then publishes INFO packets at `rate` per second until `to`;
/// counts those sent in the window.
async fn publish_info(
    broker: &Broker,
    id: &str,
    rate: f64,
    seed: u64,
    window: Window,
    to: Instant,
    published: &AtomicU64,
) -> anyhow::Result<()> {
    let (client, mut eventloop) = mqtt::client(broker, &format!("terminal-{id}"), None, 64, 16);
    // Drive the connection; a lost one ends the device with an error.
    let driver = tokio::spawn(async move {
        loop {
            if let Err(e) = eventloop.poll().await {
                return anyhow::Result::<()>::Err(anyhow::anyhow!("MQTT: {e}"));
            }
        }
    });
    let topic = format!("ask/terminal/{id}/info");
    let pause = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tick = tokio::time::interval_at(Instant::now() + mqtt::jitter(pause, seed), pause);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        let at = tick.tick().await;
        if at >= to {
            break;
        }
        let sent = now_us();
        let payload = serde_json::json!({
            "timestamp": sent / 1_000_000,
            "datahold": { SENT_KEY: sent },
        })
        .to_string();
        if client
            .publish(topic.as_str(), QoS::AtMostOnce, false, payload)
            .await
            .is_err()
            || driver.is_finished()
        {
            // The connection is gone: say why (a refused login, a lost broker).
            return match driver.await {
                Ok(Err(e)) => Err(e.context(format!("device {id}"))),
                _ => bail!("device {id}: the MQTT connection ended"),
            };
        }
        if window.holds(sent) {
            published.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = client.disconnect().await;
    driver.abort();
    Ok(())
}

/// One SSE client: reads every event, and for each INFO sent in the window, records its
/// delay from its publish to its arrival here.
async fn read_stream(
    c: u64,
    base: &Base,
    token: &str,
    window: Window,
    delays: &Latencies,
    received: &AtomicU64,
    resyncs: &AtomicU64,
) -> anyhow::Result<()> {
    let mut conn = Conn::open(base).await?;
    let req = conn
        .request(Method::GET, "/api/events/stream")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::ACCEPT, "text/event-stream")
        .body(empty())?;
    conn.send.ready().await.context("the connection closed")?;
    let r = conn.send.send_request(req).await.context("the stream")?;
    if r.status() != StatusCode::OK {
        bail!("GET /api/events/stream: {}", r.status());
    }
    let mut body = r.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut kind = String::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the stream")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(k) = line.strip_prefix("event:") {
                kind = k.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                if kind == "resync" {
                    resyncs.fetch_add(1, Ordering::Relaxed);
                } else if kind == "event" {
                    let arrived = now_us();
                    let sent = serde_json::from_str::<serde_json::Value>(d.trim())
                        .ok()
                        .and_then(|v| v["data"]["datahold"][SENT_KEY].as_u64());
                    if let Some(sent) = sent.filter(|&t| window.holds(t)) {
                        received.fetch_add(1, Ordering::Relaxed);
                        let us = arrived.saturating_sub(sent);
                        delays.record(usize::try_from(c).unwrap_or(0), Duration::from_micros(us));
                    }
                }
            } else if line.is_empty() {
                kind.clear();
            }
        }
    }
    bail!("client {c}: the server ended the stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_forms() {
        assert_eq!(
            Base::parse("http://127.0.0.1:8080/").unwrap(),
            Base {
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert!(Base::parse("https://x:1").is_err());
        assert!(Base::parse("http://x").is_err());
        assert!(Base::parse("http://x:0").is_err());
        assert_eq!(form_encode("a b&c=d"), "a%20b%26c%3Dd");
    }

    #[test]
    fn cpu_ticks_of_this_process() {
        let t = cpu_ticks(std::process::id()).expect("readable");
        // Spin a little: the count never goes down.
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_ticks(std::process::id()).expect("readable") >= t);
    }
}
