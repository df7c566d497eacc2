//! Virtual SKABEN devices over MQTT, for demos, tests and load (`gatehouse simulate skaben`).
//!
//! Every device is its own MQTT connection, as a real prop is, with a tokio task that polls
//! it; ten thousand of them fit in one process (small request queues and in-flight windows,
//! no per-device timers unless SUP/INFO are on). Devices are started gently, in batches every
//! 100 ms (`--connect-rate`), and the time until every one of them had its first CONNACK is
//! reported.
//!
//! What a device says and how it takes a CUP (standard or reference profile, smart or dumb
//! type) lives in [`device`], apart from the connection; this module is the event loop around
//! it and the counters. Every `--report-every` seconds a line of counters is printed, and a
//! full [`SimulateReport`] at the end; [`Simulation`] gives tests the same figures.
//!
//! Devices log in with their own line of `--credentials FILE`, else the type credential
//! `--username`/`--password`, else anonymously (the `login` module). A broker that refuses a
//! login (CONNACK 4 or 5) stops the whole run with an error naming the device; other
//! connection errors are retried, 500 ms doubling to 30 s.
//!
//! ```text
//! simulate skaben: 10000 devices (lock, rgb), profile standard, QoS 1, against 127.0.0.1:1883
//! all 10000 devices connected in 5.1 s
//! [  10 s] connected 10000/10000  pings 5000 answered 5000  CUPs 10000 applied 10000  ACKs 5000  SUP 0  INFO 0  in sync 10000 (differs 0)
//! ```

mod device;
pub(crate) mod login;
pub(crate) mod mqtt;
#[cfg(test)]
pub(crate) mod test_broker;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter};
use skaben::ClientProfile;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until};

use self::device::{ConfigMatch, Device, Seen, Sent};
use self::login::Logins;
use self::mqtt::Broker;
use crate::args::positive_secs;

/// Requests one device may queue for its connection: a CUP request, an answer or two.
const DEVICE_QUEUE: usize = 8;
/// QoS 1 publishes one device may have unacknowledged.
const DEVICE_INFLIGHT: u16 = 8;
/// First pause before reconnecting; it doubles on each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a stopping device waits for its DISCONNECT to go out.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// Run virtual SKABEN devices (locks, lamps, …) against an MQTT broker and the server behind it.
///
/// Each device has its own MQTT connection. Smart types (lock, terminal) ask for their config
/// on every (re)connect, answer pings with the previous ping's timestamp and their config hash,
/// merge or replace their config from CUPs and ACK them; dumb types (rgb, pwr, scl, box, and
/// any other) ask for their type's config, echo pings and take a CUP's datahold as their whole
/// config. Counters are printed every --report-every seconds and at the end, including how
/// many devices hold exactly the config the server last sent them. Stop with Ctrl-C or
/// --duration.
///
/// Devices log in with their line of --credentials, else --username/--password, else
/// anonymously; a broker that refuses a login stops the run with an error.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateSkabenArgs {
    /// MQTT broker the server listens on, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    pub mqtt: String,

    /// Number of virtual devices, spread over --types in turn.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub devices: u64,

    /// Device types, comma-separated; device i has type i mod the number of types. lock and
    /// terminal are smart (merge configs, ACK); any other type is dumb.
    #[arg(long, value_name = "TYPE,…", value_delimiter = ',', default_value = "lock,rgb",
          value_parser = parse_type)]
    pub types: Vec<String>,

    /// How smart devices read a CUP: standard (top-level task_id/hash/overwrite) or reference
    /// (the public Python client: task_id/hash inside datahold, FORCE to replace).
    #[arg(long, value_name = "PROFILE", default_value = "standard",
          value_parser = parse_profile)]
    pub profile: ClientProfile,

    /// Each smart device sends a SUP (lock opened/closed) about this often, jittered ± 25 %.
    /// Off without it.
    #[arg(long, value_name = "SECS", value_parser = positive_secs)]
    pub sup_every: Option<f64>,

    /// Each smart device sends an INFO (a code typed) about this often, jittered ± 25 %.
    /// Off without it.
    #[arg(long, value_name = "SECS", value_parser = positive_secs)]
    pub info_every: Option<f64>,

    /// Stop after this many seconds. Without it the devices run until Ctrl-C.
    #[arg(long, value_name = "SECS", value_parser = positive_secs)]
    pub duration: Option<f64>,

    /// First hex digits of every device id; the rest is the device's index, so a rerun with
    /// the same prefix is the same devices. Ids are 12 lowercase hex digits.
    #[arg(long, value_name = "HEX", default_value = "5ca1ab", value_parser = mqtt::parse_prefix)]
    pub id_prefix: String,

    /// QoS of the devices' subscriptions and publishes.
    #[arg(long, value_name = "0|1|2", default_value_t = 1, value_parser = mqtt::parse_qos)]
    pub qos: u8,

    /// Devices started per second (in batches every 100 ms), so that thousands of
    /// connections do not arrive in one burst.
    #[arg(long, value_name = "PER_SEC", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_rate: u32,

    /// Seconds between two lines of counters.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_secs)]
    pub report_every: f64,

    /// Print every packet each device sends and receives (for a few devices).
    #[arg(long)]
    pub verbose: bool,

    /// MQTT user name of every device without a line in --credentials: a type credential,
    /// one secret for a fleet of identical devices. Without it (and without a line) a device
    /// connects anonymously.
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

fn parse_profile(s: &str) -> Result<ClientProfile, String> {
    s.parse::<ClientProfile>().map_err(|e| e.to_string())
}

/// Counters of a run, as they stand. `connected` and the sync figures are "now"; the rest add
/// up from the start.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateReport {
    /// Devices asked for.
    pub devices: u64,
    /// Devices started so far (the ramp may not be over).
    pub started: u64,
    /// Devices connected now.
    pub connected: u64,
    /// Devices that have connected at least once.
    pub ever_connected: u64,
    /// Seconds from the start until every device had connected once.
    pub all_connected_after: Option<f64>,
    /// CONNACKs received (first connects and reconnects).
    pub connects: u64,
    /// Connections lost after a CONNACK.
    pub disconnects: u64,
    /// Connect attempts that failed.
    pub connect_failures: u64,
    pub cup_requests_sent: u64,
    pub pings_received: u64,
    /// Pings answered with a PONG (the rest were dropped: no timestamp, or older than the
    /// stored one for the reference profile).
    pub pings_answered: u64,
    pub cups_received: u64,
    /// CUPs taken into the config (the rest were dropped: not JSON, no datahold, …).
    pub cups_applied: u64,
    pub acks_sent: u64,
    pub sups_sent: u64,
    pub infos_sent: u64,
    /// Publishes on topics a device does not handle.
    pub other_received: u64,
    /// Publishes that could not be queued (the device's queue was full).
    pub publish_failures: u64,
    /// Devices whose config hashes to what the server last sent them.
    pub in_sync: u64,
    /// Devices whose config does not.
    pub differs: u64,
    /// Devices that have had no CUP with a hash yet.
    pub no_hash: u64,
    /// Seconds since the start.
    pub elapsed: f64,
    /// The last connection error seen, if any.
    pub last_error: Option<String>,
}

impl SimulateReport {
    /// One line of the main counters, for progress.
    pub fn progress_line(&self) -> String {
        let mut line = format!(
            "[{:>4.0} s] connected {}/{}  pings {} answered {}  CUPs {} applied {}  ACKs {}  \
             SUP {}  INFO {}  in sync {} (differs {}, no hash {})",
            self.elapsed,
            self.connected,
            self.devices,
            self.pings_received,
            self.pings_answered,
            self.cups_received,
            self.cups_applied,
            self.acks_sent,
            self.sups_sent,
            self.infos_sent,
            self.in_sync,
            self.differs,
            self.no_hash,
        );
        if self.connected < self.started
            && let Some(e) = &self.last_error
        {
            line.push_str("  last error: ");
            line.push_str(e);
        }
        line
    }
}

impl fmt::Display for SimulateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "after {:.1} s", self.elapsed)?;
        let ramp = match self.all_connected_after {
            Some(secs) => format!("all connected in {secs:.1} s"),
            None => format!(
                "{} of {} ever connected, {} started",
                self.ever_connected, self.devices, self.started
            ),
        };
        writeln!(
            f,
            "devices       {} connected of {} ({ramp})",
            self.connected, self.devices
        )?;
        writeln!(
            f,
            "connections   {} connects, {} lost, {} failed attempts",
            self.connects, self.disconnects, self.connect_failures
        )?;
        writeln!(
            f,
            "sent          {} CUP requests, {} PONGs, {} ACKs, {} SUPs, {} INFOs ({} not queued)",
            self.cup_requests_sent,
            self.pings_answered,
            self.acks_sent,
            self.sups_sent,
            self.infos_sent,
            self.publish_failures
        )?;
        writeln!(
            f,
            "received      {} pings ({} answered), {} CUPs ({} applied), {} on other topics",
            self.pings_received,
            self.pings_answered,
            self.cups_received,
            self.cups_applied,
            self.other_received
        )?;
        write!(
            f,
            "config        {} in sync with the server's last CUP, {} differ, {} had no hashed CUP",
            self.in_sync, self.differs, self.no_hash
        )?;
        if let Some(e) = &self.last_error {
            write!(f, "\nlast error    {e}")?;
        }
        Ok(())
    }
}

/// Runs the devices until --duration or Ctrl-C, printing counters, then the report.
pub async fn run(args: SimulateSkabenArgs) -> anyhow::Result<()> {
    let sim = Simulation::start(&args).await?;
    println!(
        "simulate skaben: {} devices ({}), profile {}, QoS {}, against {}, ids {}…",
        args.devices,
        args.types.join(", "),
        args.profile,
        args.qos,
        sim.broker,
        mqtt::device_id(&args.id_prefix, 0),
    );
    if let Some(line) = sim.shared.logins.describe(&args.id_prefix, args.devices) {
        println!("{line}");
    }
    let every = Duration::try_from_secs_f64(args.report_every)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--report-every must be a positive number of seconds")?;
    let deadline = match args.duration {
        Some(secs) => Some(
            Instant::now()
                + Duration::try_from_secs_f64(secs)
                    .context("--duration must be a positive number of seconds")?,
        ),
        None => None,
    };
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut all_up = sim.all_up.subscribe();
    let mut announced = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = ticker.tick() => println!("{}", sim.report().progress_line()),
            changed = all_up.changed(), if !announced => {
                announced = true;
                if changed.is_ok() && let Some(after) = *all_up.borrow() {
                    println!("all {} devices connected in {:.1} s", args.devices, after.as_secs_f64());
                }
            }
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => break,
            // The devices are stopping already; `stop` returns the refusal as the error.
            _ = sim.refused() => break,
            signal = &mut ctrl_c => {
                signal.context("cannot listen for Ctrl-C")?;
                println!("stopping (Ctrl-C)");
                break;
            }
        }
    }
    let report = sim.stop().await?;
    println!("{report}");
    Ok(())
}

/// A running simulation: the devices are started in the background, gently; [`report`]
/// reads the counters at any time, [`stop`] disconnects every device and gives the final
/// counters (dropping it stops the devices too). If the broker refuses a device's login,
/// every device stops at once, [`refused`] says why, and [`stop`] returns that as its error.
///
/// [`report`]: Simulation::report
/// [`stop`]: Simulation::stop
/// [`refused`]: Simulation::refused
pub struct Simulation {
    shared: Arc<Shared>,
    broker: Broker,
    all_up: watch::Sender<Option<Duration>>,
    /// Always there until [`Simulation::stop`].
    spawner: Option<tokio::task::JoinHandle<u64>>,
}

impl Drop for Simulation {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

impl Simulation {
    /// Checks the arguments, reads --credentials, and starts the devices (in the background,
    /// at --connect-rate). --duration is not applied here: the caller decides when to
    /// [`Simulation::stop`].
    pub async fn start(args: &SimulateSkabenArgs) -> anyhow::Result<Simulation> {
        anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
        anyhow::ensure!(
            !args.types.is_empty(),
            "--types must name at least one type"
        );
        anyhow::ensure!(args.connect_rate > 0, "--connect-rate must be at least 1");
        let types = args
            .types
            .iter()
            .map(|t| skaben::validate_device_type(t).with_context(|| format!("--types {t:?}")))
            .collect::<anyhow::Result<Vec<String>>>()?;
        let prefix = mqtt::parse_prefix(&args.id_prefix).map_err(anyhow::Error::msg)?;
        mqtt::check_ids(&prefix, args.devices)?;
        let logins = Logins::from_args(
            args.username.as_deref(),
            args.password.as_deref(),
            args.credentials.as_deref(),
        )?;
        let given = Broker::parse(&args.mqtt)?;
        let broker = resolve(&given).await?;
        mqtt::raise_fd_limit(args.devices)?;
        let every = |name: &str, secs: Option<f64>| -> anyhow::Result<Option<Duration>> {
            secs.map(|s| {
                Duration::try_from_secs_f64(s)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .with_context(|| format!("--{name} must be a positive number of seconds"))
            })
            .transpose()
        };
        let devices = usize::try_from(args.devices).context("--devices is too large")?;
        let (all_up, _) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            broker: broker.clone(),
            logins,
            qos: mqtt::qos(args.qos),
            sup_every: every("sup-every", args.sup_every)?,
            info_every: every("info-every", args.info_every)?,
            verbose: args.verbose,
            start: Instant::now(),
            devices: args.devices,
            counters: Counters::default(),
            sync: (0..devices)
                .map(|_| AtomicU8::new(ConfigMatch::NoHash as u8))
                .collect(),
            last_error: Mutex::new(None),
            all_up: all_up.clone(),
            stop,
            refused: watch::channel(None).0,
        });
        let spawner = tokio::spawn(spawn_devices(
            Arc::clone(&shared),
            types,
            args.profile,
            prefix,
            mqtt::ramp_batch(args.connect_rate),
            stop_rx,
        ));
        Ok(Simulation {
            shared,
            broker: given,
            all_up,
            spawner: Some(spawner),
        })
    }

    /// The counters as they stand.
    pub fn report(&self) -> SimulateReport {
        self.shared.report()
    }

    /// Waits until every device has connected once; returns how long that took from the start.
    /// After a refused login it never returns: wait for [`Simulation::refused`] alongside.
    pub async fn all_connected(&self) -> Duration {
        let mut up = self.all_up.subscribe();
        match up.wait_for(Option::is_some).await {
            Ok(after) => after.unwrap_or_default(),
            // The sender lives as long as `self`: not reached.
            Err(_) => Duration::ZERO,
        }
    }

    /// Waits until the broker refuses a device's login (CONNACK 4 or 5; every device is
    /// stopping then), and returns the message naming it. Never returns otherwise.
    pub async fn refused(&self) -> String {
        let mut refused = self.shared.refused.subscribe();
        match refused.wait_for(Option::is_some).await {
            Ok(message) => message.clone().unwrap_or_default(),
            // The sender lives as long as `self`.
            Err(_) => std::future::pending().await,
        }
    }

    /// Disconnects every device and returns the final counters; an error if the broker
    /// refused a login (the message names the device) or a device task crashed.
    pub async fn stop(mut self) -> anyhow::Result<SimulateReport> {
        self.shared.stop.send_replace(true);
        let crashed = match self.spawner.take() {
            Some(spawner) => spawner
                .await
                .context("the task starting the devices crashed")?,
            None => 0,
        };
        if let Some(message) = self.shared.refused.borrow().clone() {
            anyhow::bail!(message);
        }
        anyhow::ensure!(crashed == 0, "{crashed} virtual devices crashed");
        Ok(self.shared.report())
    }
}

/// Resolves the broker's host once, so that ten thousand connects do not each ask DNS and a
/// wrong name fails at once.
async fn resolve(broker: &Broker) -> anyhow::Result<Broker> {
    let addr = tokio::net::lookup_host((broker.host.as_str(), broker.port))
        .await
        .with_context(|| format!("cannot resolve --mqtt {broker}"))?
        .next()
        .with_context(|| format!("--mqtt {broker} resolves to no address"))?;
    Ok(Broker {
        host: addr.ip().to_string(),
        port: addr.port(),
    })
}

/// What every device task shares: settings, counters, and one sync slot per device.
struct Shared {
    broker: Broker,
    logins: Logins,
    qos: QoS,
    sup_every: Option<Duration>,
    info_every: Option<Duration>,
    verbose: bool,
    start: Instant,
    devices: u64,
    counters: Counters,
    /// Each device's [`ConfigMatch`], as a `u8`.
    sync: Box<[AtomicU8]>,
    last_error: Mutex<Option<String>>,
    all_up: watch::Sender<Option<Duration>>,
    /// Stops every device (and the ramp).
    stop: watch::Sender<bool>,
    /// The first refused login's message.
    refused: watch::Sender<Option<String>>,
}

#[derive(Debug, Default)]
struct Counters {
    started: AtomicU64,
    connected: AtomicU64,
    ever_connected: AtomicU64,
    connects: AtomicU64,
    disconnects: AtomicU64,
    connect_failures: AtomicU64,
    cup_requests: AtomicU64,
    pings: AtomicU64,
    pongs: AtomicU64,
    cups: AtomicU64,
    cups_applied: AtomicU64,
    acks: AtomicU64,
    sups: AtomicU64,
    infos: AtomicU64,
    other: AtomicU64,
    publish_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Shared {
    fn report(&self) -> SimulateReport {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (mut in_sync, mut differs, mut no_hash) = (0, 0, 0);
        for slot in &self.sync {
            match slot.load(Ordering::Relaxed) {
                s if s == ConfigMatch::Same as u8 => in_sync += 1,
                s if s == ConfigMatch::Differs as u8 => differs += 1,
                _ => no_hash += 1,
            }
        }
        SimulateReport {
            devices: self.devices,
            started: get(&c.started),
            connected: get(&c.connected),
            ever_connected: get(&c.ever_connected),
            all_connected_after: self.all_up.borrow().map(|d| d.as_secs_f64()),
            connects: get(&c.connects),
            disconnects: get(&c.disconnects),
            connect_failures: get(&c.connect_failures),
            cup_requests_sent: get(&c.cup_requests),
            pings_received: get(&c.pings),
            pings_answered: get(&c.pongs),
            cups_received: get(&c.cups),
            cups_applied: get(&c.cups_applied),
            acks_sent: get(&c.acks),
            sups_sent: get(&c.sups),
            infos_sent: get(&c.infos),
            other_received: get(&c.other),
            publish_failures: get(&c.publish_failures),
            in_sync,
            differs,
            no_hash,
            elapsed: self.start.elapsed().as_secs_f64(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// A device had its first CONNACK.
    fn first_connect(&self) {
        let ever = self.counters.ever_connected.fetch_add(1, Ordering::Relaxed) + 1;
        if ever == self.devices {
            let after = self.start.elapsed();
            self.all_up.send_replace(Some(after));
        }
    }

    fn error(&self, e: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e);
    }

    /// The broker refused a login: keeps the first message and stops every device.
    fn refuse(&self, message: String) {
        self.refused.send_if_modified(|refused| {
            let first = refused.is_none();
            if first {
                *refused = Some(message);
            }
            first
        });
        self.stop.send_replace(true);
    }
}

/// Starts `batch` devices every [`mqtt::RAMP_TICK`] until all are running or the stop, then
/// waits for them all; returns how many crashed.
async fn spawn_devices(
    shared: Arc<Shared>,
    types: Vec<String>,
    profile: ClientProfile,
    prefix: String,
    batch: usize,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let mut running = JoinSet::new();
    let mut tick = tokio::time::interval(mqtt::RAMP_TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seeds: SmallRng = rand::make_rng();
    let mut index: u64 = 0;
    'ramp: while index < shared.devices {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break 'ramp,
        }
        if *stop.borrow() {
            break;
        }
        for _ in 0..batch {
            if index >= shared.devices {
                break;
            }
            let Ok(slot) = usize::try_from(index) else {
                break 'ramp;
            };
            let device_type = &types[slot % types.len()];
            let id = mqtt::device_id(&prefix, index);
            let rng = SmallRng::seed_from_u64(seeds.random());
            let device = Device::new(device_type, &id, profile, rng);
            running.spawn(run_device(
                Arc::clone(&shared),
                slot,
                device,
                stop.clone(),
                seeds.random(),
            ));
            bump(&shared.counters.started);
            index += 1;
        }
    }
    let mut crashed = 0;
    while let Some(done) = running.join_next().await {
        if done.is_err() {
            crashed += 1;
        }
    }
    crashed
}

/// SUP/INFO schedule of one device.
struct Chores {
    rng: SmallRng,
    next_sup: Option<Instant>,
    next_info: Option<Instant>,
}

impl Chores {
    fn new(shared: &Shared, smart: bool, seed: u64) -> Chores {
        let mut rng = SmallRng::seed_from_u64(seed);
        let now = Instant::now();
        // The first one at a random point of the first period, so devices do not go together.
        let mut first = |every: Option<Duration>| {
            every
                .filter(|_| smart)
                .map(|e| now + e.mul_f64(rng.random()))
        };
        let next_sup = first(shared.sup_every);
        let next_info = first(shared.info_every);
        Chores {
            rng,
            next_sup,
            next_info,
        }
    }

    fn next(&self) -> Option<Instant> {
        match (self.next_sup, self.next_info) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The chores due at `now` (SUP, INFO), rescheduling each one period later ± 25 %.
    fn due(&mut self, shared: &Shared, now: Instant) -> (bool, bool) {
        let mut again = |at: &mut Option<Instant>, every: Option<Duration>| -> bool {
            match (*at, every) {
                (Some(when), Some(every)) if when <= now => {
                    *at = Some(now + every.mul_f64(self.rng.random_range(0.75..1.25)));
                    true
                }
                _ => false,
            }
        };
        let sup = again(&mut self.next_sup, shared.sup_every);
        let info = again(&mut self.next_info, shared.info_every);
        (sup, info)
    }
}

/// One device for its whole life: connect, subscribe, converse, reconnect; until the stop.
async fn run_device(
    shared: Arc<Shared>,
    slot: usize,
    mut device: Device,
    mut stop: watch::Receiver<bool>,
    seed: u64,
) {
    if *stop.borrow() {
        return;
    }
    let (client, mut eventloop) = mqtt::client(
        &shared.broker,
        device.id(),
        shared.logins.get(device.id()),
        DEVICE_QUEUE,
        DEVICE_INFLIGHT,
    );
    // rumqttc reserves room for 100 buffered events per connection (kilobytes each); a device
    // rarely has more than two.
    eventloop.state.events = Default::default();
    let mut chores = Chores::new(&shared, device.is_smart(), seed);
    let timer = sleep(Duration::from_secs(86_400));
    tokio::pin!(timer);
    let mut connected = false;
    let mut ever_connected = false;
    let mut backoff = FIRST_BACKOFF;
    let mut failures: u64 = 0;
    loop {
        let wake = chores.next().filter(|_| connected);
        if let Some(at) = wake
            && timer.deadline() != at
        {
            timer.as_mut().reset(at);
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            () = &mut timer, if wake.is_some() => {
                let (sup, info) = chores.due(&shared, Instant::now());
                if sup && let Some(out) = device.sup() {
                    send(&shared, &client, &device, out);
                    record_sync(&shared, slot, &device);
                }
                if info && let Some(out) = device.info() {
                    send(&shared, &client, &device, out);
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    backoff = FIRST_BACKOFF;
                    bump(&shared.counters.connects);
                    bump(&shared.counters.connected);
                    if !ever_connected {
                        ever_connected = true;
                        shared.first_connect();
                    }
                    let filters = device
                        .subscriptions()
                        .map(|t| SubscribeFilter::new(t.to_string(), shared.qos));
                    if client.try_subscribe_many(filters).is_err() {
                        bump(&shared.counters.publish_failures);
                    }
                }
                // Subscribed: now answers can reach the device, so it asks for its config.
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let out = device.on_connect();
                    send(&shared, &client, &device, out);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    receive(&shared, &client, slot, &mut device, &publish.topic, &publish.payload);
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        connected = false;
                        shared.counters.connected.fetch_sub(1, Ordering::Relaxed);
                        bump(&shared.counters.disconnects);
                    } else {
                        bump(&shared.counters.connect_failures);
                    }
                    failures += 1;
                    let message = format!("{}/{}: {e}", device.device_type(), device.id());
                    tracing::debug!(device = device.id(), error = %e, "connection failed");
                    if shared.verbose {
                        println!("[{}/{}] connection lost: {e}", device.device_type(), device.id());
                    }
                    shared.error(message);
                    // A refused login does not get better by retrying: stop the run.
                    if let Some(refusal) = login::refusal(&shared.logins, device.id(), &e) {
                        shared.refuse(refusal);
                        break;
                    }
                    let pause = mqtt::jitter(backoff, seed ^ failures);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tokio::select! {
                        _ = stop.changed() => break,
                        () = sleep(pause) => {}
                    }
                }
            },
        }
    }
    if connected {
        shared.counters.connected.fetch_sub(1, Ordering::Relaxed);
        if client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
    }
}

/// Hands one publish to the device, sends its answer, and counts.
fn receive(
    shared: &Shared,
    client: &AsyncClient,
    slot: usize,
    device: &mut Device,
    topic: &str,
    payload: &[u8],
) {
    let handled = device.on_publish(topic, payload);
    if shared.verbose {
        println!(
            "[{}/{}] got {topic} {}",
            device.device_type(),
            device.id(),
            String::from_utf8_lossy(payload)
        );
    }
    let c = &shared.counters;
    match handled.seen {
        Seen::Ping { answered } => {
            bump(&c.pings);
            if answered {
                bump(&c.pongs);
            }
        }
        Seen::Cup { applied } => {
            bump(&c.cups);
            if applied {
                bump(&c.cups_applied);
                record_sync(shared, slot, device);
            }
        }
        Seen::Other => bump(&c.other),
    }
    if let Some(out) = handled.out {
        send(shared, client, device, out);
    }
}

fn record_sync(shared: &Shared, slot: usize, device: &Device) {
    if let Some(s) = shared.sync.get(slot) {
        s.store(device.sync() as u8, Ordering::Relaxed);
    }
}

/// Queues one publish (never waits: this runs in the task that polls the connection).
fn send(shared: &Shared, client: &AsyncClient, device: &Device, out: device::Outgoing) {
    if shared.verbose {
        println!(
            "[{}/{}] sent {} {}",
            device.device_type(),
            device.id(),
            out.topic,
            String::from_utf8_lossy(&out.payload)
        );
    }
    let c = &shared.counters;
    match client.try_publish(out.topic, shared.qos, false, out.payload) {
        Ok(()) => bump(match out.kind {
            Sent::CupRequest => &c.cup_requests,
            // PONGs are counted as pings answered.
            Sent::Pong => return,
            Sent::Ack => &c.acks,
            Sent::Sup => &c.sups,
            Sent::Info => &c.infos,
        }),
        Err(_) => bump(&c.publish_failures),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: SimulateSkabenArgs,
    }

    #[test]
    fn defaults_and_help_are_sound() {
        Cli::command().debug_assert();
        let a = Cli::try_parse_from(["simulate"]).unwrap().args;
        assert_eq!(
            (a.mqtt.as_str(), a.devices, a.types.clone(), a.profile),
            (
                "127.0.0.1:1883",
                10,
                vec!["lock".to_string(), "rgb".to_string()],
                ClientProfile::Standard
            )
        );
        assert_eq!(
            (a.sup_every, a.info_every, a.duration, a.id_prefix.as_str()),
            (None, None, None, "5ca1ab")
        );
        assert_eq!((a.qos, a.connect_rate, a.report_every), (1, 2000, 10.0));
        let a = Cli::try_parse_from([
            "simulate",
            "--types",
            "Terminal,pwr,scl",
            "--profile",
            "Reference",
            "--id-prefix",
            "ABCD",
        ])
        .unwrap()
        .args;
        assert_eq!(a.types, ["terminal", "pwr", "scl"]);
        assert_eq!(a.profile, ClientProfile::Reference);
        assert_eq!(a.id_prefix, "abcd");
        for bad in [
            &["--devices", "0"][..],
            &["--types", "lo ck"],
            &["--types", "ask"],
            &["--profile", "python"],
            &["--qos", "3"],
            &["--sup-every", "0"],
            &["--id-prefix", "123456789012"],
            &["--connect-rate", "0"],
        ] {
            let argv = std::iter::once("simulate").chain(bad.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn report_reads() {
        let r = SimulateReport {
            devices: 3,
            started: 3,
            connected: 2,
            ever_connected: 3,
            all_connected_after: Some(0.4),
            connects: 4,
            disconnects: 1,
            connect_failures: 0,
            cup_requests_sent: 4,
            pings_received: 6,
            pings_answered: 6,
            cups_received: 4,
            cups_applied: 4,
            acks_sent: 2,
            sups_sent: 0,
            infos_sent: 0,
            other_received: 0,
            publish_failures: 0,
            in_sync: 3,
            differs: 0,
            no_hash: 0,
            elapsed: 12.0,
            last_error: None,
        };
        assert!(r.progress_line().contains("connected 2/3"));
        let text = r.to_string();
        assert!(text.contains("all connected in 0.4 s"), "{text}");
        assert!(text.contains("3 in sync"), "{text}");
    }

    #[test]
    fn login_flags() {
        let a = Cli::try_parse_from(["simulate"]).unwrap().args;
        // (Unless the environment gives them.)
        if std::env::var_os("GATEHOUSE_MQTT_USERNAME").is_none()
            && std::env::var_os("GATEHOUSE_MQTT_PASSWORD").is_none()
        {
            assert_eq!((a.username, a.password, a.credentials), (None, None, None));
        }
        let a = Cli::try_parse_from([
            "simulate",
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
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("GATEHOUSE_MQTT_USERNAME"), "{help}");
        assert!(help.contains("GATEHOUSE_MQTT_PASSWORD"), "{help}");
    }

    fn args_for(broker: &test_broker::TestBroker, prefix: &str) -> SimulateSkabenArgs {
        let mut args = Cli::try_parse_from(["simulate", "--devices", "3", "--types", "lock"])
            .unwrap()
            .args;
        args.mqtt = broker.addr.to_string();
        args.id_prefix = prefix.into();
        args.connect_rate = 1000;
        args
    }

    fn credentials_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gatehouse-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn devices_log_in_with_their_line_else_the_type_credential() {
        let broker = test_broker::TestBroker::start(test_broker::Script {
            connack: 0,
            refuse_subscriptions: false,
        })
        .await;
        let mut args = args_for(&broker, "10c1");
        args.username = Some("fleet".into());
        args.password = Some("pw".into());
        args.credentials = Some(credentials_file(
            "sim-logins.txt",
            "# one device of its own\n10C100000001 own secret\n",
        ));
        let sim = Simulation::start(&args).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), sim.all_connected())
            .await
            .unwrap();
        let r = sim.stop().await.unwrap();
        assert_eq!(r.ever_connected, 3, "{r}");
        let mut logins: Vec<_> = broker
            .connects()
            .into_iter()
            .map(|c| (c.client_id, c.username, c.password))
            .collect();
        logins.sort();
        logins.dedup();
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            logins,
            [
                ("10c100000000".into(), some("fleet"), some("pw")),
                ("10c100000001".into(), some("own"), some("secret")),
                ("10c100000002".into(), some("fleet"), some("pw")),
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_login_stops_the_run() {
        for (code, reason) in [(5, "not authorised"), (4, "bad user name or password")] {
            let broker = test_broker::TestBroker::start(test_broker::Script {
                connack: code,
                refuse_subscriptions: false,
            })
            .await;
            let sim = Simulation::start(&args_for(&broker, "10c2")).await.unwrap();
            let message = tokio::time::timeout(Duration::from_secs(5), sim.refused())
                .await
                .expect("the refusal stops the run");
            assert!(
                message.starts_with("the broker refused the login of device 10c2000000")
                    && message.contains(&format!(
                        ": {reason}; check --username/--password/--credentials"
                    ))
                    && message.ends_with("(it connected anonymously)"),
                "{message}"
            );
            let e = sim.stop().await.unwrap_err().to_string();
            assert_eq!(e, message);
            // Stopped, not retrying: one CONNECT per device at most.
            sleep(Duration::from_millis(700)).await;
            assert!(broker.connects().len() <= 3, "{:?}", broker.connects());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_password_without_a_user_name_is_refused_at_start() {
        let broker = test_broker::TestBroker::start(test_broker::Script {
            connack: 0,
            refuse_subscriptions: false,
        })
        .await;
        let mut args = args_for(&broker, "10c3");
        args.password = Some("pw".into());
        let e = Simulation::start(&args).await.err().unwrap().to_string();
        assert!(e.contains("without --username"), "{e}");
        args.password = None;
        args.credentials = Some(credentials_file("sim-bad.txt", "10c300000000 user\n"));
        let e = format!("{:#}", Simulation::start(&args).await.err().unwrap());
        assert!(e.contains("sim-bad.txt line 1"), "{e}");
        assert!(broker.connects().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_broker_shows_in_the_report() {
        let args = SimulateSkabenArgs {
            mqtt: "127.0.0.1:1".into(),
            devices: 3,
            types: vec!["lock".into()],
            profile: ClientProfile::Standard,
            sup_every: None,
            info_every: None,
            duration: None,
            id_prefix: "e2e6".into(),
            qos: 1,
            connect_rate: 100,
            report_every: 10.0,
            verbose: false,
            username: None,
            password: None,
            credentials: None,
        };
        let sim = Simulation::start(&args).await.unwrap();
        sleep(Duration::from_millis(700)).await;
        let r = sim.stop().await.unwrap();
        println!("{r}");
        assert_eq!(r.ever_connected, 0);
        assert!(r.connect_failures >= 3, "{r}");
        assert!(r.last_error.is_some());
    }
}
