//! Load generator for the SKABEN gateway (`gatehouse bench skaben`), with the broker's own
//! forwarding rate as the reference figure.
//!
//! Two phases, each with N fresh MQTT connections at the same QoS, closed loop (each
//! connection has one request outstanding and sends the next as soon as the answer comes):
//! - **broker** (the reference): each connection publishes to `gatehouse-bench/<id>/echo`, a
//!   topic only it subscribes to, and waits to receive its own message: publish → broker →
//!   receive, the most any MQTT application behind this broker could answer.
//! - **server**: each connection is a device `<type>/<id>` that sends a CUP request
//!   `ask/<type>/<id>/cup` `{"timestamp":0,"datahold":{"request":"all"},"task_id":"<seq>"}` and
//!   waits for the server's CUP on `<type>/<id>/cup`. The server answers with the device's
//!   config and its own task id, so answers are matched by order: one request outstanding per
//!   device, the next CUP on its topic is the answer. An answer that is not a SKABEN payload
//!   with a datahold counts as an error.
//!
//! A request unanswered in 5 s is a time-out; the device sends a new one (an answer that comes
//! later, with nothing outstanding, is counted as late). Round trips whose request was sent
//! during `--warmup` are not counted. Latencies go to an HDR histogram in microseconds.
//! Connections are opened at `--connect-rate` per second, in batches every 100 ms, and every
//! connection is subscribed before the load starts; how long that took is reported.
//!
//! Logins: each connection logs in as its device would in `simulate skaben`: with its line of
//! `--credentials FILE`, else `--username`/`--password`, else anonymously; the reference
//! phase's connection for device `<id>` (client id `echo-<id>`) uses the same login. A broker that refuses a login (CONNACK 4 or 5) or a subscription
//! (SUBACK 0x80) stops the bench with an error saying which. Under a device ACL the reference's
//! `gatehouse-bench/…` topics are refused (or never echo): with a login, a reference phase with
//! a refused subscription or no round trip at all fails with "the broker refuses the
//! reference's topics; …" before the server phase runs.
//!
//! ```text
//! bench skaben: 100 devices (type lock), 10 s after 1 s warm-up, QoS 1, against 127.0.0.1:1883
//!   server  CUP request→CUP   21 345 round trips/s  p50 3.9 ms  p90 6.0 ms  p99 9.8 ms  max 40 ms  timeouts 0  errors 0
//!   broker  publish→receive   24 100 /s             p50 3.6 ms  p90 5.2 ms  p99 8.1 ms  max 31 ms  timeouts 0  errors 0
//!   ratio 0.89
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until};

use crate::args::{non_negative_secs, positive_secs};
use crate::latency::Latencies;
use crate::simulate_skaben::login::{self, Logins};
use crate::simulate_skaben::mqtt::{self, Broker};

/// A request unanswered this long is a time-out, and the device sends a new one.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Highest latency the histogram resolves; slower answers are recorded as this.
/// Requests one connection may queue (it has one outstanding, plus the subscription).
const QUEUE: usize = 4;
/// QoS 1 publishes one connection may have unacknowledged.
const INFLIGHT: u16 = 4;
/// How long connecting may take beyond what --connect-rate needs.
const CONNECT_SLACK: Duration = Duration::from_secs(30);
/// First pause before reconnecting a lost connection; doubles up to 2 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Pause between the two phases, for the first phase's disconnects to settle.
const BETWEEN_PHASES: Duration = Duration::from_millis(500);
/// The reference phase's topic prefix; the server subscribes to none of it.
const ECHO_PREFIX: &str = "gatehouse-bench";
/// Why the reference phase cannot run under a device ACL, and what to do instead.
const REFERENCE_REFUSED: &str = "the broker refuses the reference's topics; measure the \
    reference with the server's --mqtt-auth off, or pass --no-reference";

/// Load the SKABEN server through its MQTT broker with CUP requests, and compare with the
/// broker's own publish→receive rate.
///
/// Each of N device connections sends a CUP request and waits for the server's CUP, then sends
/// the next (closed loop), measuring round trips/s and latency. The reference phase uses N
/// other connections at the same QoS, each publishing to a topic only it subscribes to: the
/// broker's forwarding rate, the ceiling for any server behind it.
///
/// Connections log in with their device's line of --credentials, else --username/--password,
/// else anonymously (the reference phase too). A refused login or subscription stops the
/// bench with an error.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchSkabenArgs {
    /// MQTT broker the server listens on, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    pub mqtt: String,

    /// Number of connections (devices) in each phase.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub devices: u64,

    /// Seconds to measure in each phase, after the warm-up.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_secs)]
    pub duration: f64,

    /// Seconds of load before measuring starts; round trips begun then are not counted.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = non_negative_secs)]
    pub warmup: f64,

    /// Device type the bench devices claim to be.
    #[arg(long = "type", value_name = "TYPE", default_value = "lock",
          value_parser = parse_type)]
    pub device_type: String,

    /// QoS of every subscription and publish, in both phases.
    #[arg(long, value_name = "0|1|2", default_value_t = 1, value_parser = mqtt::parse_qos)]
    pub qos: u8,

    /// Measure only the broker's publish→receive rate (no server needed).
    #[arg(long, conflicts_with = "no_reference")]
    pub reference_only: bool,

    /// Measure only the server, not the broker's rate.
    #[arg(long)]
    pub no_reference: bool,

    /// First hex digits of the bench devices' ids (12 hex digits in all).
    #[arg(long, value_name = "HEX", default_value = "be4c00", value_parser = mqtt::parse_prefix)]
    pub id_prefix: String,

    /// Connections opened per second (in batches every 100 ms).
    #[arg(long, value_name = "PER_SEC", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_rate: u32,

    /// MQTT user name of every connection whose device has no line in --credentials: a type
    /// credential, one secret for a fleet of identical devices. Without it (and without a
    /// line) a connection is anonymous. The broker's reference phase needs its own topics:
    /// under a device ACL, pass --no-reference.
    #[arg(long, value_name = "USER", env = "GATEHOUSE_MQTT_USERNAME")]
    pub username: Option<String>,

    /// Password that goes with --username (which it needs).
    #[arg(
        long,
        value_name = "PASS",
        env = "GATEHOUSE_MQTT_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// Per-device logins, read once at start: one line per device, `<device-id> <username>
    /// <password>`, whitespace-separated; blank lines and lines starting with # are ignored.
    /// A device with a line logs in with it; the others use --username/--password.
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
}

fn parse_type(s: &str) -> Result<String, String> {
    skaben::validate_device_type(s).map_err(|e| e.to_string())
}

/// What one phase measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseReport {
    /// Connections that were subscribed when the load started (or joined later).
    pub connections: usize,
    /// Seconds from the first connect until every connection was subscribed (or until the
    /// bench gave up waiting).
    pub connect_seconds: f64,
    /// Round trips whose request was sent in the measured window.
    pub round_trips: u64,
    /// Length of the measured window.
    pub seconds: f64,
    /// `round_trips / seconds`.
    pub rate: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Requests unanswered within [`ANSWER_TIMEOUT`] (whole run, warm-up included).
    pub timeouts: u64,
    /// Lost connections, failed connects, publishes that could not be queued, and answers
    /// that were not a CUP payload (whole run).
    pub errors: u64,
    /// Answers that came with no request outstanding (after a time-out).
    pub late: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// What a run measured: the server, the broker, or both.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchSkabenReport {
    pub devices: u64,
    pub device_type: String,
    pub qos: u8,
    /// Length of each measured window.
    pub seconds: f64,
    pub warmup: f64,
    pub server: Option<PhaseReport>,
    pub broker: Option<PhaseReport>,
}

impl BenchSkabenReport {
    /// Server round trips/s over the broker's publish→receive rate, when both ran.
    pub fn ratio(&self) -> Option<f64> {
        match (&self.server, &self.broker) {
            (Some(s), Some(b)) if b.rate > 0.0 => Some(s.rate / b.rate),
            _ => None,
        }
    }
}

impl PhaseReport {
    fn line(&self, f: &mut fmt::Formatter<'_>, label: &str, unit: &str) -> fmt::Result {
        let rate = format!("{} {unit}", mqtt::grouped(self.rate.round() as u64));
        let latency = if self.round_trips == 0 {
            "no round trips".to_string()
        } else {
            format!(
                "p50 {}  p90 {}  p99 {}  max {}",
                mqtt::ms(self.p50_us),
                mqtt::ms(self.p90_us),
                mqtt::ms(self.p99_us),
                mqtt::ms(self.max_us),
            )
        };
        write!(
            f,
            "  {label:<24}  {rate:<20}  {latency}  timeouts {}  errors {}",
            self.timeouts, self.errors,
        )?;
        if self.late > 0 {
            write!(f, "  late {}", self.late)?;
        }
        Ok(())
    }
}

impl fmt::Display for BenchSkabenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bench skaben: {} devices (type {}), {} s after {} s warm-up, QoS {}",
            self.devices, self.device_type, self.seconds, self.warmup, self.qos
        )?;
        if let Some(s) = &self.server {
            s.line(f, "server  CUP request→CUP", "round trips/s")?;
            writeln!(f)?;
        }
        if let Some(b) = &self.broker {
            b.line(f, "broker  publish→receive", "/s")?;
            writeln!(f)?;
        }
        if let Some(ratio) = self.ratio() {
            writeln!(f, "  ratio {ratio:.2}")?;
        }
        let mut connects = Vec::new();
        for (name, phase) in [("server", &self.server), ("broker", &self.broker)] {
            if let Some(p) = phase {
                connects.push(format!(
                    "{name} {} in {:.1} s",
                    p.connections, p.connect_seconds
                ));
            }
        }
        write!(f, "  connected: {}", connects.join(", "))?;
        for (name, phase) in [("server", &self.server), ("broker", &self.broker)] {
            if let Some(e) = phase.as_ref().and_then(|p| p.last_error.as_ref()) {
                write!(f, "\n  last {name} connection error: {e}")?;
            }
        }
        Ok(())
    }
}

/// Runs the bench and prints the report to stdout. Fails when a phase had no round trip.
pub async fn run(args: BenchSkabenArgs) -> anyhow::Result<()> {
    let phases = match (args.reference_only, args.no_reference) {
        (true, _) => "broker only",
        (_, true) => "server only",
        _ => "broker, then server",
    };
    println!(
        "bench skaben: {} devices (type {}), {} s after {} s warm-up, QoS {}, against {} ({phases})",
        args.devices, args.device_type, args.duration, args.warmup, args.qos, args.mqtt
    );
    let logins = logins(&args)?;
    if let Some(line) = logins.describe(&args.id_prefix, args.devices) {
        println!("{line}");
    }
    let report = measure_with(&args, logins).await?;
    // The header is already out.
    let text = report.to_string();
    println!(
        "{}",
        text.split_once('\n').map_or(text.as_str(), |(_, r)| r)
    );
    if let Some(server) = &report.server {
        anyhow::ensure!(
            server.round_trips > 0,
            "no CUP request was answered in the measured window: is `gatehouse serve` \
             connected to the broker at {} and serving devices of type {:?}?",
            args.mqtt,
            args.device_type
        );
    }
    if let Some(broker) = &report.broker {
        anyhow::ensure!(
            broker.round_trips > 0,
            "no message came back through the broker at {}",
            args.mqtt
        );
    }
    Ok(())
}

/// Runs the bench and returns what it measured (no output): the broker phase first (unless
/// --no-reference), then the server phase (unless --reference-only). Fails when the broker
/// refuses a login or a subscription, and, with a login, when the reference phase had no
/// round trip.
pub async fn measure(args: &BenchSkabenArgs) -> anyhow::Result<BenchSkabenReport> {
    measure_with(args, logins(args)?).await
}

/// The logins of --username/--password/--credentials (the file read now).
fn logins(args: &BenchSkabenArgs) -> anyhow::Result<Logins> {
    Logins::from_args(
        args.username.as_deref(),
        args.password.as_deref(),
        args.credentials.as_deref(),
    )
}

async fn measure_with(args: &BenchSkabenArgs, logins: Logins) -> anyhow::Result<BenchSkabenReport> {
    let window = Window::new(args)?;
    let device_type = skaben::validate_device_type(&args.device_type)
        .with_context(|| format!("--type {:?}", args.device_type))?;
    let prefix = mqtt::parse_prefix(&args.id_prefix).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(args.connect_rate > 0, "--connect-rate must be at least 1");
    mqtt::check_ids(&prefix, args.devices)?;
    mqtt::raise_fd_limit(args.devices)?;
    let given = Broker::parse(&args.mqtt)?;
    let addr = tokio::net::lookup_host((given.host.as_str(), given.port))
        .await
        .with_context(|| format!("cannot resolve --mqtt {given}"))?
        .next()
        .with_context(|| format!("--mqtt {given} resolves to no address"))?;
    let broker = Broker {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let setup = Setup {
        broker,
        qos: mqtt::qos(args.qos),
        devices: args.devices,
        prefix,
        batch: mqtt::ramp_batch(args.connect_rate),
        connect_wait: CONNECT_SLACK
            + Duration::from_secs_f64(args.devices as f64 / f64::from(args.connect_rate)),
        window,
        logins: Arc::new(logins),
    };
    let broker_phase = if args.no_reference {
        None
    } else {
        let broker = phase(&setup, &Target::Echo).await?;
        // Under a device ACL the broker may take the echo publishes and drop them.
        anyhow::ensure!(
            broker.round_trips > 0 || !setup.logins.any(),
            "{REFERENCE_REFUSED} (no message came back on {ECHO_PREFIX}/…/echo in {} s)",
            window.seconds.as_secs_f64() + window.warmup.as_secs_f64()
        );
        Some(broker)
    };
    let server_phase = if args.reference_only {
        None
    } else {
        if broker_phase.is_some() {
            sleep(BETWEEN_PHASES).await;
        }
        Some(
            phase(
                &setup,
                &Target::Server {
                    device_type: device_type.clone(),
                },
            )
            .await?,
        )
    };
    Ok(BenchSkabenReport {
        devices: args.devices,
        device_type,
        qos: args.qos,
        seconds: window.seconds.as_secs_f64(),
        warmup: window.warmup.as_secs_f64(),
        server: server_phase,
        broker: broker_phase,
    })
}

/// The run's timing, from the arguments.
#[derive(Debug, Clone, Copy)]
struct Window {
    warmup: Duration,
    seconds: Duration,
}

impl Window {
    fn new(args: &BenchSkabenArgs) -> anyhow::Result<Window> {
        let secs = |name: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .with_context(|| format!("--{name} must be a number of seconds, not {v}"))
        };
        let seconds = secs("duration", args.duration)?;
        anyhow::ensure!(!seconds.is_zero(), "--duration must be more than 0");
        Ok(Window {
            warmup: secs("warmup", args.warmup)?,
            seconds,
        })
    }
}

/// Everything both phases share.
#[derive(Debug)]
struct Setup {
    broker: Broker,
    qos: QoS,
    devices: u64,
    prefix: String,
    batch: usize,
    connect_wait: Duration,
    window: Window,
    logins: Arc<Logins>,
}

/// Who answers a connection's requests.
#[derive(Debug, Clone)]
enum Target {
    /// The gatehouse server: CUP request → CUP.
    Server { device_type: String },
    /// The broker alone: publish → the same message back.
    Echo,
}

/// One connection's topics and identity.
#[derive(Debug, Clone)]
struct Route {
    /// The device's id: what its login is found by.
    device_id: String,
    client_id: String,
    /// Where requests go.
    request: String,
    /// Where answers come, and the one subscription.
    answer: String,
    /// Whether an answer must be a CUP payload.
    check_cup: bool,
}

impl Target {
    fn route(&self, id: &str) -> Route {
        match self {
            Target::Server { device_type } => Route {
                device_id: id.to_string(),
                client_id: id.to_string(),
                request: format!("ask/{device_type}/{id}/cup"),
                answer: format!("{device_type}/{id}/cup"),
                check_cup: true,
            },
            Target::Echo => {
                let topic = format!("{ECHO_PREFIX}/{id}/echo");
                Route {
                    device_id: id.to_string(),
                    client_id: format!("echo-{id}"),
                    request: topic.clone(),
                    answer: topic,
                    check_cup: false,
                }
            }
        }
    }
}

/// When the measured window starts and when the load stops.
#[derive(Debug, Clone, Copy)]
struct Clock {
    measure_from: Instant,
    end: Instant,
}

/// One connection's counts.
#[derive(Debug, Default, Clone)]
struct Counts {
    round_trips: u64,
    timeouts: u64,
    errors: u64,
    late: u64,
    last_error: Option<String>,
}

/// What the connections share with the phase that runs them.
struct Phase {
    setup_qos: QoS,
    broker: Broker,
    logins: Arc<Logins>,
    latencies: Latencies,
    /// Connections subscribed at least once.
    ready: AtomicUsize,
    /// Wakes the phase when `ready` grows or `refused` is set.
    ready_changed: Notify,
    /// The first refusal; it stops the phase.
    refused: Mutex<Option<Refusal>>,
}

/// What the broker refused a connection; either stops the phase.
#[derive(Debug, Clone)]
enum Refusal {
    /// CONNACK 4 or 5: the message naming the device.
    Login(String),
    /// SUBACK 0x80.
    Subscription { device_id: String, topic: String },
}

impl Phase {
    /// Keeps the first refusal and wakes the phase.
    fn refuse(&self, refusal: Refusal) {
        let mut first = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(refusal);
        }
        drop(first);
        self.ready_changed.notify_one();
    }

    fn refusal(&self) -> Option<Refusal> {
        self.refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Opens N connections, waits until all are subscribed (or the connect wait is over), loads
/// them for warm-up + duration, and adds up. A refused login or subscription stops it at once,
/// with an error.
async fn phase(setup: &Setup, target: &Target) -> anyhow::Result<PhaseReport> {
    let n = usize::try_from(setup.devices).context("--devices is too large")?;
    let shared = Arc::new(Phase {
        setup_qos: setup.qos,
        broker: setup.broker.clone(),
        logins: Arc::clone(&setup.logins),
        latencies: Latencies::new(n)?,
        ready: AtomicUsize::new(0),
        ready_changed: Notify::new(),
        refused: Mutex::new(None),
    });
    let (go, _) = watch::channel(None::<Clock>);
    let started = Instant::now();
    let give_up = started + setup.connect_wait;
    let mut running = JoinSet::new();
    let mut tick = tokio::time::interval(mqtt::RAMP_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut index = 0usize;
    while index < n {
        tick.tick().await;
        if shared.refusal().is_some() {
            break;
        }
        for _ in 0..setup.batch.min(n - index) {
            let route = target.route(&mqtt::device_id(&setup.prefix, index as u64));
            running.spawn(drive(Arc::clone(&shared), index, route, go.subscribe()));
            index += 1;
        }
    }
    // Wait until every connection is subscribed, or one is refused, or the time allowed is
    // over.
    loop {
        if shared.ready.load(Ordering::Relaxed) >= n || shared.refusal().is_some() {
            break;
        }
        tokio::select! {
            () = shared.ready_changed.notified() => {}
            () = sleep_until(give_up) => break,
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let connections = shared.ready.load(Ordering::Relaxed);
    let now = Instant::now();
    let clock = if connections == 0 || shared.refusal().is_some() {
        // Nobody could connect, or the broker refuses them: stop them all now.
        Clock {
            measure_from: now,
            end: now,
        }
    } else {
        Clock {
            measure_from: now + setup.window.warmup,
            end: now + setup.window.warmup + setup.window.seconds,
        }
    };
    go.send_replace(Some(clock));

    let mut total = Counts::default();
    while let Some(counts) = running.join_next().await {
        match counts {
            Ok(c) => {
                total.round_trips += c.round_trips;
                total.timeouts += c.timeouts;
                total.errors += c.errors;
                total.late += c.late;
                if c.last_error.is_some() {
                    total.last_error = c.last_error;
                }
            }
            Err(_) => total.errors += 1,
        }
    }
    match shared.refusal() {
        None => {}
        // The reference's connections are not the devices (their client ids are `echo-<id>`):
        // a broker may refuse them what it lets the devices do.
        Some(Refusal::Login(message)) => match target {
            Target::Echo => anyhow::bail!("{REFERENCE_REFUSED} ({message})"),
            Target::Server { .. } => anyhow::bail!(message),
        },
        Some(Refusal::Subscription { device_id, topic }) => match target {
            Target::Echo => anyhow::bail!(
                "{REFERENCE_REFUSED} (SUBACK failure 0x80 for {topic}, device {device_id})"
            ),
            Target::Server { .. } => anyhow::bail!(
                "the broker refused device {device_id} the subscription to {topic} (SUBACK \
                 failure 0x80): check the broker's ACL for the device's own topics"
            ),
        },
    }
    if connections == 0 {
        anyhow::bail!(
            "no connection to the broker at {} was subscribed within {:.0} s{}",
            setup.broker,
            setup.connect_wait.as_secs_f64(),
            total
                .last_error
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    let histogram = shared.latencies.merged()?;
    let seconds = setup.window.seconds.as_secs_f64();
    let connections = shared.ready.load(Ordering::Relaxed);
    Ok(PhaseReport {
        connections,
        connect_seconds,
        round_trips: total.round_trips,
        seconds,
        rate: total.round_trips as f64 / seconds,
        p50_us: histogram.value_at_quantile(0.50),
        p90_us: histogram.value_at_quantile(0.90),
        p99_us: histogram.value_at_quantile(0.99),
        max_us: histogram.max(),
        timeouts: total.timeouts,
        errors: total.errors,
        late: total.late,
        last_error: total.last_error,
    })
}

/// The request payload: what the reference client sends on connect, with a sequence number as
/// its task id.
fn request_payload(seq: u64) -> Vec<u8> {
    format!(r#"{{"timestamp":0,"datahold":{{"request":"all"}},"task_id":"{seq}"}}"#).into_bytes()
}

/// One connection, closed loop, until the clock's end.
async fn drive(
    shared: Arc<Phase>,
    index: usize,
    route: Route,
    mut go: watch::Receiver<Option<Clock>>,
) -> Counts {
    let mut counts = Counts::default();
    let (client, mut eventloop) = mqtt::client(
        &shared.broker,
        &route.client_id,
        shared.logins.get(&route.device_id),
        QUEUE,
        INFLIGHT,
    );
    eventloop.state.events = Default::default();
    let qos = shared.setup_qos;
    let mut clock: Option<Clock> = *go.borrow_and_update();
    let mut subscribed = false;
    let mut ready_reported = false;
    let mut outstanding: Option<Instant> = None;
    let mut seq: u64 = 0;
    let mut backoff = FIRST_BACKOFF;
    let mut connected = false;
    let timer = sleep(Duration::from_secs(86_400));
    tokio::pin!(timer);

    // Queues the next request; `outstanding` is set even when queueing fails, so that the
    // time-out sends another.
    let mut send = |counts: &mut Counts, outstanding: &mut Option<Instant>| {
        seq += 1;
        let now = Instant::now();
        if client
            .try_publish(route.request.as_str(), qos, false, request_payload(seq))
            .is_err()
        {
            counts.errors += 1;
        }
        *outstanding = Some(now);
    };

    loop {
        if let Some(c) = clock {
            let at = outstanding.map_or(c.end, |sent| (sent + ANSWER_TIMEOUT).min(c.end));
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
        }
        tokio::select! {
            biased;
            changed = go.changed(), if clock.is_none() => {
                if changed.is_err() {
                    break;
                }
                clock = *go.borrow_and_update();
                if clock.is_some() && subscribed && outstanding.is_none() {
                    send(&mut counts, &mut outstanding);
                }
            }
            () = &mut timer, if clock.is_some() => {
                let now = Instant::now();
                if clock.is_some_and(|c| now >= c.end) {
                    break;
                }
                if outstanding.is_some_and(|sent| now >= sent + ANSWER_TIMEOUT) {
                    counts.timeouts += 1;
                    outstanding = None;
                    if subscribed {
                        send(&mut counts, &mut outstanding);
                    }
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    backoff = FIRST_BACKOFF;
                    if client.try_subscribe(route.answer.as_str(), qos).is_err() {
                        counts.errors += 1;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    if suback.return_codes.contains(&SubscribeReasonCode::Failure) {
                        shared.refuse(Refusal::Subscription {
                            device_id: route.device_id.clone(),
                            topic: route.answer.clone(),
                        });
                        break;
                    }
                    subscribed = true;
                    if !ready_reported {
                        ready_reported = true;
                        shared.ready.fetch_add(1, Ordering::Relaxed);
                        shared.ready_changed.notify_one();
                    }
                    if clock.is_some() && outstanding.is_none() {
                        send(&mut counts, &mut outstanding);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == route.answer => {
                    let answered = Instant::now();
                    let Some(sent) = outstanding.take() else {
                        counts.late += 1;
                        continue;
                    };
                    let Some(c) = clock else { continue };
                    if route.check_cup && !is_cup(&publish.payload) {
                        counts.errors += 1;
                    } else if sent >= c.measure_from && answered <= c.end {
                        counts.round_trips += 1;
                        shared.latencies.record(index, answered - sent);
                    }
                    if answered < c.end {
                        send(&mut counts, &mut outstanding);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    counts.errors += 1;
                    counts.last_error = Some(format!("{}: {e}", route.client_id));
                    // A refused login does not get better by retrying: stop the phase.
                    if let Some(message) = login::refusal(&shared.logins, &route.device_id, &e) {
                        shared.refuse(Refusal::Login(message));
                        break;
                    }
                    connected = false;
                    subscribed = false;
                    outstanding = None;
                    let pause = mqtt::jitter(backoff, index as u64 ^ counts.errors);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    let until = Instant::now() + pause;
                    let until = clock.map_or(until, |c| until.min(c.end));
                    tokio::select! {
                        () = sleep_until(until) => {}
                        changed = go.changed(), if clock.is_none() => {
                            if changed.is_err() {
                                break;
                            }
                            clock = *go.borrow_and_update();
                        }
                    }
                }
            },
        }
    }
    if connected && client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    counts
}

/// Whether an answer is a SKABEN CUP: a JSON object with a datahold.
fn is_cup(payload: &[u8]) -> bool {
    skaben::Payload::parse(payload).is_ok_and(|p| p.datahold.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate_skaben::test_broker::{Script, TestBroker};
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: BenchSkabenArgs,
    }

    #[test]
    fn defaults_and_help_are_sound() {
        Cli::command().debug_assert();
        let a = Cli::try_parse_from(["bench"]).unwrap().args;
        assert_eq!(
            (a.mqtt.as_str(), a.devices, a.duration, a.warmup),
            ("127.0.0.1:1883", 100, 10.0, 1.0)
        );
        assert_eq!(
            (
                a.device_type.as_str(),
                a.qos,
                a.reference_only,
                a.no_reference
            ),
            ("lock", 1, false, false)
        );
        assert_eq!((a.id_prefix.as_str(), a.connect_rate), ("be4c00", 2000));
        let a = Cli::try_parse_from(["bench", "--type", "Terminal", "--qos", "0"])
            .unwrap()
            .args;
        assert_eq!((a.device_type.as_str(), a.qos), ("terminal", 0));
        for bad in [
            &["--reference-only", "--no-reference"][..],
            &["--devices", "0"],
            &["--duration", "0"],
            &["--warmup", "-1"],
            &["--type", "a/b"],
            &["--qos", "5"],
        ] {
            let argv = std::iter::once("bench").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn login_flags() {
        let a = Cli::try_parse_from(["bench"]).unwrap().args;
        // (Unless the environment gives them.)
        if std::env::var_os("GATEHOUSE_MQTT_USERNAME").is_none()
            && std::env::var_os("GATEHOUSE_MQTT_PASSWORD").is_none()
        {
            assert_eq!((a.username, a.password, a.credentials), (None, None, None));
        }
        let a = Cli::try_parse_from([
            "bench",
            "--username",
            "lock",
            "--password",
            "s3cret",
            "--credentials",
            "creds.txt",
        ])
        .unwrap()
        .args;
        assert_eq!(a.username.as_deref(), Some("lock"));
        assert_eq!(a.password.as_deref(), Some("s3cret"));
        assert_eq!(a.credentials, Some(PathBuf::from("creds.txt")));
    }

    fn args_for(broker: &TestBroker, prefix: &str, extra: &[&str]) -> BenchSkabenArgs {
        let mqtt = broker.addr.to_string();
        let argv = [
            "bench",
            "--mqtt",
            &mqtt,
            "--devices",
            "3",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--qos",
            "0",
            "--id-prefix",
            prefix,
        ];
        Cli::try_parse_from(argv.iter().chain(extra)).unwrap().args
    }

    async fn bench_error(script: Script, prefix: &str, extra: &[&str]) -> String {
        let broker = TestBroker::start(script).await;
        let args = args_for(&broker, prefix, extra);
        let run = tokio::time::timeout(Duration::from_secs(10), measure(&args));
        format!("{:#}", run.await.expect("no hang").unwrap_err())
    }

    const ACCEPT: Script = Script {
        connack: 0,
        refuse_subscriptions: false,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_login_stops_the_bench() {
        let refuse = Script {
            connack: 5,
            ..ACCEPT
        };
        let login = ["--username", "fleet", "--password", "pw"];
        let e = bench_error(
            refuse,
            "be4c01",
            &[&login[..], &["--no-reference"]].concat(),
        )
        .await;
        assert!(
            e.starts_with("the broker refused the login of device be4c0100000")
                && e.contains(": not authorised; check --username/--password/--credentials")
                && e.contains("as \"fleet\", from --username"),
            "{e}"
        );
        // The reference phase's connections say it is the reference.
        let e = bench_error(refuse, "be4c02", &login).await;
        assert!(e.starts_with(REFERENCE_REFUSED), "{e}");
        assert!(
            e.contains("the broker refused the login of device be4c02"),
            "{e}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_subscriptions_stop_the_bench() {
        let refuse = Script {
            refuse_subscriptions: true,
            ..ACCEPT
        };
        let e = bench_error(refuse, "be4c03", &["--username", "fleet"]).await;
        assert!(e.starts_with(REFERENCE_REFUSED), "{e}");
        assert!(
            e.contains("SUBACK failure 0x80 for gatehouse-bench/be4c03"),
            "{e}"
        );
        let e = bench_error(refuse, "be4c04", &["--no-reference"]).await;
        assert!(
            e.starts_with("the broker refused device be4c0400000")
                && e.contains("the subscription to lock/be4c0400000"),
            "{e}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reference_that_never_echoes_under_a_login_is_an_error() {
        let e = bench_error(ACCEPT, "be4c05", &["--reference-only", "--username", "u"]).await;
        assert!(e.starts_with(REFERENCE_REFUSED), "{e}");
        assert!(e.contains("no message came back"), "{e}");
        // Anonymous, the figure is reported as measured (0), as before.
        let broker = TestBroker::start(ACCEPT).await;
        let args = args_for(&broker, "be4c06", &["--reference-only"]);
        let report = measure(&args).await.unwrap();
        assert_eq!(report.broker.map(|b| b.round_trips), Some(0));
        let logins: Vec<_> = broker.connects().into_iter().map(|c| c.username).collect();
        assert_eq!(logins, [None, None, None]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bench_connections_log_in_with_their_device_line() {
        let dir = std::env::temp_dir().join(format!("gatehouse-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bench-logins.txt");
        std::fs::write(&path, "BE4C07000002 own secret\n").unwrap();
        let broker = TestBroker::start(ACCEPT).await;
        let file = path.display().to_string();
        let args = args_for(
            &broker,
            "be4c07",
            &[
                "--reference-only",
                "--username",
                "fleet",
                "--credentials",
                &file,
            ],
        );
        // Nothing echoes here: the error is expected; the logins are what is checked.
        assert!(measure(&args).await.is_err());
        let mut logins: Vec<_> = broker
            .connects()
            .into_iter()
            .map(|c| (c.client_id, c.username, c.password))
            .collect();
        logins.sort();
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            logins,
            [
                ("echo-be4c07000000".into(), some("fleet"), None),
                ("echo-be4c07000001".into(), some("fleet"), None),
                ("echo-be4c07000002".into(), some("own"), some("secret")),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn routes() {
        let id = mqtt::device_id("be4c00", 3);
        let server = Target::Server {
            device_type: "lock".into(),
        }
        .route(&id);
        assert_eq!(server.client_id, "be4c00000003");
        assert_eq!(server.request, "ask/lock/be4c00000003/cup");
        assert_eq!(server.answer, "lock/be4c00000003/cup");
        assert!(skaben::Inbound::parse(&server.request).is_ok());
        assert!(skaben::Outbound::parse(&server.answer).is_ok());
        let echo = Target::Echo.route(&id);
        assert_eq!(echo.request, echo.answer);
        assert_eq!(echo.answer, "gatehouse-bench/be4c00000003/echo");
        assert_ne!(echo.client_id, server.client_id);
    }

    #[test]
    fn request_is_a_reference_cup_request() {
        let p = skaben::Payload::parse(&request_payload(42)).unwrap();
        assert_eq!(p.timestamp, Some(0));
        assert_eq!(p.task_id.as_deref(), Some("42"));
        assert_eq!(p.datahold, Some(serde_json::json!({"request": "all"})));
        assert!(is_cup(
            br#"{"timestamp":5,"datahold":{"closed":true},"task_id":"t","hash":"h"}"#
        ));
        assert!(!is_cup(b"{\"timestamp\":5}"));
        assert!(!is_cup(b"{\"online\"}"));
    }

    #[test]
    fn report_prints_both_phases_and_the_ratio() {
        let phase = |rate: f64| PhaseReport {
            connections: 100,
            connect_seconds: 0.3,
            round_trips: (rate * 10.0) as u64,
            seconds: 10.0,
            rate,
            p50_us: 3_900,
            p90_us: 6_000,
            p99_us: 9_800,
            max_us: 40_000,
            timeouts: 0,
            errors: 0,
            late: 0,
            last_error: None,
        };
        let report = BenchSkabenReport {
            devices: 100,
            device_type: "lock".into(),
            qos: 1,
            seconds: 10.0,
            warmup: 1.0,
            server: Some(phase(21_345.0)),
            broker: Some(phase(24_100.0)),
        };
        let text = report.to_string();
        assert!(text.contains("21 345 round trips/s"), "{text}");
        assert!(text.contains("24 100 /s"), "{text}");
        assert!(text.contains("p50 3.9 ms"), "{text}");
        assert!(text.contains("max 40 ms"), "{text}");
        assert!(text.contains("ratio 0.89"), "{text}");
        assert_eq!(
            BenchSkabenReport {
                broker: None,
                ..report
            }
            .ratio(),
            None
        );
    }
}
