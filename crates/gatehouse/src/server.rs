//! Start-up and shutdown of `gatehouse serve`: open the store, load the core, bind the
//! listeners, run until told to stop, then stop in order (listeners, in-flight answers, store).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::core::{CoreConfig, Hub};
use crate::gateway::access::MqttAuth;
use crate::gateway::acon::AconLimits;
use crate::gateway::broker::{BrokerLimits, EmbeddedBroker};
use crate::gateway::mqtt::MqttSettings;
use crate::http::health::{Readiness, WatchLink};
use crate::http::serve::HttpLimits;
use crate::http::{AppState, app, metrics_app};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

/// Everything `serve` needs, resolved from flags, environment and config file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub acon_listen: String,
    pub http_listen: String,
    /// `/metrics` without the token on its own listener (`--metrics-listen`).
    pub metrics_listen: Option<String>,
    pub http: HttpLimits,
    pub admin_token: Option<String>,
    pub console: ConsoleSettings,
    pub core: CoreConfig,
    pub acon: AconLimits,
    pub mqtt: MqttSettings,
    /// The embedded broker's limits (unused with an external broker).
    pub mqtt_limits: BrokerLimits,
    pub store: StoreSettings,
}

/// The console's access settings.
#[derive(Debug, Clone, Default)]
pub struct ConsoleSettings {
    /// `--public-origin`.
    pub public_origin: Option<String>,
    pub session: crate::core::accounts::SessionPolicy,
}

/// The store's settings: retention, and `--init`.
#[derive(Debug, Clone, Default)]
pub struct StoreSettings {
    pub retention: crate::store::retention::Retention,
    /// Start with a new, empty database even where the data directory shows there was one
    /// (`--init`: see [`check_database_file`]).
    pub init: bool,
}

/// How the core reaches the MQTT broker.
enum Link {
    InProcess(crate::gateway::inproc::InProcessConnection),
    Client(Box<crate::gateway::mqtt::MqttConnection>),
}

/// A running server.
pub struct Running {
    pub acon_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The `--metrics-listen` listener's address.
    pub metrics_addr: Option<SocketAddr>,
    /// The embedded MQTT broker's address (`None` with an external broker).
    pub mqtt_addr: Option<SocketAddr>,
    pub admin_token: String,
    pub hub: Arc<Hub>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    broker: Option<EmbeddedBroker>,
    store: Arc<dyn Store>,
    _lock: std::fs::File,
}

impl Running {
    /// Graceful stop: no new connections, answer what has been received, flush the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        info!("shutting down: no new connections; answering what is in flight");
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(b) = self.broker {
            b.shutdown().await;
        }
        self.store.close().await.context("flushing the store")?;
        info!("store flushed; stopped");
        Ok(())
    }
}

/// Opens everything and starts serving. Returns once the listeners are bound.
pub async fn start(mut s: Settings) -> anyhow::Result<Running> {
    fit_in_fd_budget(&mut s)?;
    std::fs::create_dir_all(&s.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (--data-dir / GATEHOUSE_DATA_DIR)",
            s.data_dir.display()
        )
    })?;
    // What the directory held before this start: a used one has a lock file.
    let used_before = ["lock", "admin-token", "gatehouse.db-wal"]
        .iter()
        .map(|f| s.data_dir.join(f))
        .find(|p| p.exists());
    if let Some(o) = &s.console.public_origin {
        check_origin(o)?;
    }
    let lock = lock_data_dir(&s.data_dir)?;
    let db = s.data_dir.join("gatehouse.db");
    check_database_file(&db, used_before.as_deref(), s.store.init)?;
    let admin_token = match &s.admin_token {
        Some(t) if t.trim().is_empty() => bail!("--admin-token / GATEHOUSE_ADMIN_TOKEN is empty"),
        Some(t) => t.trim().to_string(),
        None => admin_token_from_file(&s.data_dir)?,
    };
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open_with(&db, s.store.retention.clone())
            .with_context(|| format!("opening the store {}", db.display()))?,
    );
    let r = &s.store.retention;
    let days = |d: Option<Duration>| {
        d.map_or("forever".to_string(), |d| {
            format!("{:.3} days", d.as_secs_f64() / 86_400.0)
        })
    };
    info!(
        messages = %days(r.messages_max_age),
        events = %days(r.events_max_age),
        max_db_mb = r.max_db_bytes.map_or(0, |b| b / 1_000_000),
        "retention"
    );
    // The embedded broker is reached in-process; an external one through the MQTT client.
    let (broker, bus, connection): (Option<EmbeddedBroker>, Arc<dyn crate::bus::Bus>, Link) =
        match &s.mqtt {
            MqttSettings::Embedded { listen, auth } => {
                let b = EmbeddedBroker::start_linked(listen, *auth, s.mqtt_limits).await?;
                match auth {
                    MqttAuth::Devices => {
                        info!("MQTT logins: device credentials only (--mqtt-auth devices)")
                    }
                    MqttAuth::Off => warn!(
                        "MQTT logins are OFF (--mqtt-auth off): any client on the network may connect without a credential; the topic rules still hold. Use this on a closed bench only"
                    ),
                }
                let (bus, conn) = b.in_process();
                (Some(b), Arc::new(bus), Link::InProcess(conn))
            }
            MqttSettings::External { .. } => {
                let gw =
                    crate::gateway::mqtt::connect(&s.mqtt, crate::gateway::mqtt::new_client_id())
                        .await?;
                info!(broker = %gw.broker_address, "using the external MQTT broker");
                (
                    None,
                    Arc::new(gw.bus),
                    Link::Client(Box::new(gw.connection)),
                )
            }
        };
    if let MqttSettings::External { .. } = &s.mqtt {
        info!(
            "MQTT logins and topic rules are the external broker's to enforce (see the README: a Mosquitto password_file and `gatehouse mqtt acl`)"
        );
    }
    let mqtt_addr = broker.as_ref().map(|b| b.local_addr());
    if let Some(addr) = mqtt_addr {
        info!(%addr, "embedded MQTT broker ready");
    }
    let hub = Arc::new(
        Hub::load(store.clone(), s.core.clone(), bus, now_ms())
            .await
            .context("loading devices")?,
    );

    if let Some(access) = broker.as_ref().and_then(|b| b.access()) {
        access.attach(hub.clone());
    }
    first_account(&hub, &s.data_dir).await?;

    let acon_listener = bind_tcp(&s.acon_listen, "--acon-listen / GATEHOUSE_ACON_LISTEN").await?;
    let http_listener = bind_tcp(&s.http_listen, "--http-listen / GATEHOUSE_HTTP_LISTEN").await?;
    let metrics_listener = match &s.metrics_listen {
        Some(a) => Some(bind_tcp(a, "--metrics-listen / GATEHOUSE_METRICS_LISTEN").await?),
        None => None,
    };
    let acon_addr = acon_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    match &s.acon.allow {
        Some(allow) => info!(%allow, "ACon boards accepted only from these networks"),
        None if crate::cidr::faces_public(acon_addr.ip()) => warn!(
            %acon_addr,
            "the ACon listener accepts boards from any address, and ACon has no authentication: \
             whoever reaches this port can read the codes of engaged cells and report openings. \
             Set --acon-allow / GATEHOUSE_ACON_ALLOW to the boards' networks (README, \
             \"What the ACon protocol cannot do\")"
        ),
        None => {}
    }
    info!(%acon_addr, "ACon listener ready");
    info!(%http_addr, "HTTP API ready");
    if let Some(addr) = metrics_addr {
        info!(%addr, "metrics listener ready (GET /metrics, no token)");
        if crate::cidr::faces_public(addr.ip()) {
            warn!(%addr, "--metrics-listen serves /metrics without a token on more than private networks; bind it to a private address");
        }
    }
    info!(data_dir = %s.data_dir.display(), devices = hub.list(None).len(), "store open");

    let (shutdown, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(crate::gateway::acon::serve(
        acon_listener,
        hub.clone(),
        s.acon.clone(),
        rx.clone(),
    )));
    let ready = match &s.mqtt {
        MqttSettings::Embedded { .. } => Readiness::embedded(),
        MqttSettings::External { .. } => Readiness::external(),
    };
    let state = AppState {
        hub: hub.clone(),
        auth: Arc::new(crate::http::auth::Auth::new(
            admin_token.clone().into(),
            s.console.session,
            s.console.public_origin.clone(),
        )),
        mqtt_auth: match &s.mqtt {
            MqttSettings::Embedded { auth, .. } => Some(*auth),
            MqttSettings::External { .. } => None,
        },
        ready: ready.clone(),
        streams: crate::http::Streams::new(s.http.max_streams, rx.clone()),
    };
    if let Some(l) = metrics_listener {
        tasks.push(tokio::spawn(crate::http::serve::serve(
            l,
            metrics_app(state.clone()),
            s.http.clone(),
            hub.clone(),
            "metrics",
            rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::http::serve::serve(
        http_listener,
        app(state),
        s.http.clone(),
        hub.clone(),
        "HTTP API",
        rx.clone(),
    )));
    tasks.push(tokio::spawn(presence_sweeper(hub.clone(), rx.clone())));
    // The rule engine: the rules each committed event triggers, then timers, drift and
    // schedules four times a second.
    tasks.push(hub.start_engine(rx.clone()));
    let h = hub.clone();
    tasks.push(tokio::spawn(every(
        Duration::from_millis(250),
        rx.clone(),
        move || {
            h.game_tick(now_ms());
            std::future::ready(())
        },
    )));
    {
        let g = hub.game_snapshot(now_ms());
        info!(rules = g.rules, level = %g.level, counter = g.counter, timers = g.timers.len(), "game loaded");
    }
    // PING to every active SKABEN type every `ping_interval`.
    let ping_every = Duration::from_millis(
        u64::try_from(hub.config().ping_interval_ms)
            .unwrap_or(10_000)
            .max(10),
    );
    let h = hub.clone();
    tasks.push(tokio::spawn(every(ping_every, rx.clone(), move || {
        h.skaben_ping(now_ms());
        std::future::ready(())
    })));
    // The coalesced `<type>/all/cup` broadcasts that are due.
    let h = hub.clone();
    tasks.push(tokio::spawn(every(
        Duration::from_millis(
            u64::try_from(crate::core::skaben::BROADCAST_EVERY_MS / 4).unwrap_or(250),
        ),
        rx.clone(),
        move || {
            h.skaben_flush_broadcasts(now_ms());
            std::future::ready(())
        },
    )));
    let hub_for_mqtt: Arc<dyn crate::bus::PacketHandler> = Arc::new(WatchLink {
        inner: hub.clone(),
        ready,
    });
    tasks.push(tokio::spawn(async move {
        match connection {
            Link::InProcess(c) => c.run(hub_for_mqtt, rx).await,
            Link::Client(c) => c.run(hub_for_mqtt, rx).await,
        }
    }));
    Ok(Running {
        acon_addr,
        mqtt_addr,
        broker,
        http_addr,
        metrics_addr,
        admin_token,
        hub,
        shutdown,
        tasks,
        store,
        _lock: lock,
    })
}

/// Cuts the connection caps to the open-files limit (see `gateway::budget`) and logs the budget.
fn fit_in_fd_budget(s: &mut Settings) -> anyhow::Result<()> {
    let limit = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _hard)) => soft,
        Err(e) => {
            warn!(error = %e, "cannot read the open-files limit; connection caps are not checked against it");
            return Ok(());
        }
    };
    let embedded = matches!(s.mqtt, MqttSettings::Embedded { .. });
    // Each HTTP listener (the API, and `--metrics-listen` if set) has its own cap.
    let http_listeners = 1 + u64::from(s.metrics_listen.is_some());
    let b = crate::gateway::budget::plan_with_http(
        limit,
        s.acon.max_connections,
        embedded.then_some(s.mqtt_limits.max_connections),
        s.http.max_connections as u64 * http_listeners,
    )?;
    for w in &b.warnings {
        warn!("{w}");
    }
    s.acon.max_connections = b.acon;
    if let Some(m) = b.mqtt {
        s.mqtt_limits.max_connections = m.connections;
        s.mqtt_limits.handshakes = m.handshakes;
    }
    info!(
        limit = b.limit,
        reserve = b.reserve,
        acon = b.acon,
        acon_per_addr = s.acon.max_connections_per_addr,
        mqtt = b.mqtt.map_or(0, |m| m.connections),
        mqtt_handshakes = b.mqtt.map_or(0, |m| m.handshakes),
        mqtt_per_addr = s.mqtt_limits.max_connections_per_addr,
        http = b.http,
        "file-descriptor budget (open-files limit = reserve + ACon + MQTT connections and handshakes + HTTP)"
    );
    Ok(())
}

/// Runs `job` every `period` until shutdown (a late tick is delayed, not bunched).
async fn every<F: std::future::Future<Output = ()>>(
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut job: impl FnMut() -> F,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|&s| s) => return,
        }
        job().await;
    }
}

/// Marks silent devices offline, a few times per timeout.
async fn presence_sweeper(hub: Arc<Hub>, shutdown: watch::Receiver<bool>) {
    let cfg = hub.config();
    let timeout = cfg
        .presence_timeout_ms
        .min(cfg.skaben_keepalive_ms)
        .max(100);
    let period = Duration::from_millis(u64::try_from(timeout / 5).unwrap_or(1000).clamp(50, 5000));
    every(period, shutdown, || async {
        match hub.sweep_presence(now_ms()).await {
            Ok(0) => {}
            Ok(n) => info!(devices = n, "devices went offline"),
            Err(e) => warn!(error = %e, "presence sweep not recorded"),
        }
    })
    .await
}

/// One gatehouse per data directory: a second one would answer from a stale table.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another gatehouse is already using the data directory {}; stop it or pass another --data-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Refuses to start on a missing or zero-length `gatehouse.db` when the data directory was used
/// before (`used_before`: its lock file, admin token or WAL existed before this start): the
/// database was deleted or truncated, and starting would silently begin an empty history.
/// `--init` starts a new, empty database there instead (a zero-length file and any stale
/// `-wal`/`-shm` beside it are removed first). A new directory needs no flag.
fn check_database_file(db: &Path, used_before: Option<&Path>, init: bool) -> anyhow::Result<()> {
    let len = match std::fs::metadata(db) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", db.display())),
    };
    if len.is_some_and(|l| l > 0) {
        return Ok(());
    }
    let Some(sign) = used_before else {
        return Ok(()); // a new data directory
    };
    let what = if len.is_none() {
        "missing"
    } else {
        "empty (0 bytes)"
    };
    if !init {
        bail!(
            "the database {} is {what}, but the data directory was used before ({} exists): \
             the database was deleted or truncated. Restore it from a backup (README, \"Backup \
             and restore\"), or start with --init / GATEHOUSE_INIT=true to begin a new, empty \
             database there",
            db.display(),
            sign.display()
        );
    }
    warn!(database = %db.display(), "--init: starting a new, empty database");
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        if suffix.is_empty() && len.is_none() {
            continue;
        }
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("--init: cannot remove {}", p.display()));
            }
        }
    }
    Ok(())
}

/// The admin token from `<data dir>/admin-token`, generated (and printed once) on first start.
fn admin_token_from_file(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the admin token {}", path.display()));
        }
    }
    let bytes: [u8; 24] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_secret(&path, &token)
        .with_context(|| format!("cannot write the admin token {}", path.display()))?;
    // Printed once, on the start that created it; afterwards it is only in the file.
    eprintln!(
        "\n  gatehouse: generated the admin token (stored in {}, readable only by you):\n\n    {token}\n\n  Use it as: Authorization: Bearer {token}\n",
        path.display()
    );
    Ok(token)
}

/// `--public-origin` must be `http(s)://host[:port]`, what a browser sends as `Origin`.
fn check_origin(o: &str) -> anyhow::Result<()> {
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.trim_end_matches('/').contains('/') => Ok(()),
        _ => bail!(
            "--public-origin {o:?}: give the scheme and host browsers use, as https://console.example (no path)"
        ),
    }
}

/// On the first start without accounts: an `admin` account with a generated password,
/// stored in `<data dir>/admin-password` (readable only by the owner) and printed once.
async fn first_account(hub: &Hub, dir: &Path) -> anyhow::Result<()> {
    use crate::core::accounts::{Role, generate_password};
    if hub.accounts_read(|a| a.users().next().is_some()) {
        return Ok(());
    }
    let password = generate_password();
    let hashed = password.clone();
    let hash = tokio::task::spawn_blocking(move || crate::core::access::hash_chosen(&hashed))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing the first password: {e}"))?;
    let path = dir.join("admin-password");
    write_secret(&path, &password)
        .with_context(|| format!("cannot write the first password {}", path.display()))?;
    hub.accounts_change(now_ms(), |st, fx| {
        st.user_add(fx, "admin", Role::Admin, hash, crate::core::event::SERVER)
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the first account: {e}"))?;
    // Printed once, on the start that created it; afterwards it is only in the file.
    eprintln!(
        "\n  gatehouse: created the console account \"admin\" with the password (stored in {}, readable only by you):\n\n    {password}\n\n  Log in at the console (/) and change it: gatehouse user passwd admin\n",
        path.display()
    );
    Ok(())
}

/// Writes a secret to `path`, readable only by the owner, and syncs it.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(format!("{secret}\n").as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Binds a listener, with an error that names the setting when the address is taken.
async fn bind_tcp(addr: &str, setting: &str) -> anyhow::Result<TcpListener> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("{setting}: cannot resolve {addr:?} (expected HOST:PORT)"))?
        .collect();
    let Some(&sa) = addrs.first() else {
        bail!("{setting}: {addr:?} resolves to no address");
    };
    let socket = if sa.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if let Err(e) = socket.bind(sa) {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            bail!(
                "{setting}: {sa} is already in use by another program; choose another address with {setting}"
            );
        }
        return Err(e).with_context(|| format!("{setting}: cannot listen on {sa}"));
    }
    // A deep backlog: thousands of boards reconnect at once after an outage.
    socket
        .listen(4096)
        .with_context(|| format!("{setting}: cannot listen on {sa}"))
}
