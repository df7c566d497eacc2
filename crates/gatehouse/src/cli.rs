//! The command line: `serve`, `simulate`, `bench`. Settings of `serve` come from flags, then
//! environment variables, then the TOML file given with `--config`, then defaults.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use gatehouse_tools::{bench_acon, bench_console, bench_skaben, simulate_acon, simulate_skaben};

use crate::cidr::AllowList;
use crate::core::{CoreConfig, UnknownPolicy};
use crate::gateway::access::MqttAuth;
use crate::gateway::acon::AconLimits;
use crate::gateway::broker::BrokerLimits;
use crate::gateway::mqtt::MqttSettings;
use crate::http::serve::HttpLimits;
use crate::server::Settings;

/// gatehouse: a server for the devices of a venue.
///
/// ACon lock boards connect over raw TCP and get their cells' codes; everything they say is
/// recorded before it is answered. SKABEN props (locks, terminals, lamps, …) talk JSON over
/// MQTT, to the embedded broker or an external one, and get their configs kept in sync. The
/// HTTP API (Bearer token) manages devices, configs and device types.
#[derive(Parser, Debug)]
#[command(name = "gatehouse", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (embedded SQLite store under --data-dir; nothing else to install).
    Serve(ServeArgs),
    /// Run virtual devices against a server, for demos and tests.
    #[command(subcommand)]
    Simulate(SimulateCommand),
    /// Generate load against a server and report rate and latency.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// MQTT access for an external broker (`--mqtt-url`).
    #[command(subcommand)]
    Mqtt(MqttCommand),
    /// Copy the database to FILE: a consistent snapshot, taken while the server runs (SQLite's
    /// `VACUUM INTO` on a read-only connection; the server is not paused). Restore: stop the
    /// server, put the copy in place as <data dir>/gatehouse.db, start it (README, "Backup and
    /// restore").
    Backup(BackupArgs),
    /// The game's rules: import and export a rule file (against a running server with --url
    /// and --token, or a stopped server's --data-dir), test a rule file on a sample event
    /// without a server, replay a rule file over a recorded game (docs/scenarios.md).
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Console accounts: add, change a password or a role, remove, list (against a running
    /// server with --url and --token, or a stopped server's --data-dir).
    #[command(subcommand)]
    User(UserCommand),
    /// Print the OpenAPI document of the HTTP API (what `GET /api/openapi.json` serves) to
    /// stdout, and start nothing. The repository's `openapi.json` is this output.
    Openapi,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add an account. Its password is read from standard input with --password-stdin,
    /// else generated and printed once.
    Add(UserAddArgs),
    /// Set an account's password (read from standard input with --password-stdin, else
    /// generated and printed once). Its sessions end.
    Passwd(UserPasswdArgs),
    /// Change an account's role.
    Role(UserRoleArgs),
    /// Remove an account (not the last admin); its sessions end.
    Remove(UserNameArgs),
    /// List the accounts.
    List(RulesTarget),
}

#[derive(Args, Debug, Clone)]
pub struct UserAddArgs {
    /// The account's name (letters, digits, '.', '_', '-').
    #[arg(value_name = "NAME")]
    pub name: String,
    /// viewer (sees everything, changes nothing), operator (runs the venue) or admin (also
    /// accounts, tokens, credentials, types and rules).
    #[arg(long, value_enum)]
    pub role: crate::core::accounts::Role,
    /// Read the password (8 to 256 characters) from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub target: RulesTarget,
}

#[derive(Args, Debug, Clone)]
pub struct UserPasswdArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Read the password (8 to 256 characters) from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub target: RulesTarget,
}

#[derive(Args, Debug, Clone)]
pub struct UserRoleArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    #[arg(value_name = "ROLE", value_enum)]
    pub role: crate::core::accounts::Role,
    #[command(flatten)]
    pub target: RulesTarget,
}

#[derive(Args, Debug, Clone)]
pub struct UserNameArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub target: RulesTarget,
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Replace the server's rules and state definitions with FILE (checked as a whole; an
    /// error names the rule, the field and the reason).
    Import(RulesImportArgs),
    /// Print the server's rule file (TOML; export → import → export gives the same bytes).
    Export(RulesTarget),
    /// Dry-run FILE on the sample event in EVENT (JSON: {"kind": "info", "device":
    /// "pwr/all", "datahold": {...}, "state": {"level": "blue"}}): prints every rule's trace.
    /// Needs no server; changes nothing.
    Test(RulesTestArgs),
    /// Replay FILE over the recorded events of a game run (--run) or a time window
    /// (--from/--to), against the state as it was: prints what would have differed.
    Replay(RulesReplayArgs),
}

/// Which server: a running one (--url, --token) or a stopped one's data directory.
#[derive(Args, Debug, Clone)]
pub struct RulesTarget {
    /// A running server's HTTP address (http://127.0.0.1:8080).
    #[arg(
        long,
        env = "GATEHOUSE_URL",
        value_name = "URL",
        conflicts_with = "data_dir"
    )]
    pub url: Option<String>,
    /// The API token (the data directory's admin-token file).
    #[arg(long, env = "GATEHOUSE_TOKEN", value_name = "TOKEN", requires = "url")]
    pub token: Option<String>,
    /// A stopped server's data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct RulesImportArgs {
    /// The rule file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub target: RulesTarget,
}

#[derive(Args, Debug, Clone)]
pub struct RulesTestArgs {
    /// The rule file (TOML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The sample event (JSON).
    #[arg(value_name = "EVENT")]
    pub event: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct RulesReplayArgs {
    /// The rule file to replay (TOML); without it, the server's own rules.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A recorded game run (GET /api/runs).
    #[arg(long, value_name = "N", conflicts_with_all = ["from", "to"])]
    pub run: Option<u64>,
    /// The window's start (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// The window's end (RFC 3339; default now).
    #[arg(long, value_name = "TIME", requires = "from")]
    pub to: Option<String>,
    #[command(flatten)]
    pub target: RulesTarget,
}

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Where to write the copy (a new file; see --force).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// The server's data directory.
    #[arg(
        long,
        env = "GATEHOUSE_DATA_DIR",
        default_value = "./gatehouse-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum MqttCommand {
    /// Print a Mosquitto `acl_file` for the credentials in a data directory: the topic rules
    /// the embedded broker enforces, for a broker gatehouse cannot police itself. Reads the
    /// database read-only; the server may be running.
    Acl(AclArgs),
}

#[derive(Args, Debug, Clone)]
pub struct AclArgs {
    /// The server's data directory.
    #[arg(
        long,
        env = "GATEHOUSE_DATA_DIR",
        default_value = "./gatehouse-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// The username gatehouse itself logs in to the broker with (the user of --mqtt-url).
    #[arg(long, default_value = "gatehouse", value_name = "USER")]
    pub server_user: String,
}

#[derive(Subcommand, Debug)]
pub enum SimulateCommand {
    /// Virtual ACon boards that keep the server's cell table as a real board does.
    Acon(simulate_acon::SimulateAconArgs),
    /// Virtual SKABEN props (locks and lamps) that behave like the public clients.
    Skaben(simulate_skaben::SimulateSkabenArgs),
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Closed-loop (or paced) ACon load: messages/s and answer latency percentiles.
    Acon(bench_acon::BenchAconArgs),
    /// Closed-loop SKABEN CUP request → CUP round trips, with the broker's own rate alongside.
    Skaben(bench_skaben::BenchSkabenArgs),
    /// The console's device list: many devices registered, each page timed to its last byte,
    /// next to the bare HTTP path (`/healthz`).
    Pages(bench_console::BenchPagesArgs),
    /// The console's live stream: devices publishing INFO at a fixed rate, first with no
    /// client, then with SSE clients measuring each event's delay (and the server's CPU).
    Stream(bench_console::BenchStreamArgs),
}

/// Settings of `gatehouse serve`. Each can be given as a flag, as an environment variable, or
/// as a key of the `--config` TOML file (the flag's name, with `-` or `_`), in that order of
/// precedence.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// TOML file with settings, e.g. `acon_listen = "0.0.0.0:5000"`.
    #[arg(long, env = "GATEHOUSE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for the database, the admin token and the lock file.
    #[arg(
        long,
        env = "GATEHOUSE_DATA_DIR",
        default_value = "./gatehouse-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Address the ACon boards connect to (port 0: any free port, logged at start).
    #[arg(
        long,
        env = "GATEHOUSE_ACON_LISTEN",
        default_value = "0.0.0.0:5000",
        value_name = "HOST:PORT"
    )]
    pub acon_listen: String,

    /// Address of the HTTP API.
    #[arg(
        long,
        env = "GATEHOUSE_HTTP_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "HOST:PORT"
    )]
    pub http_listen: String,

    /// Also serve GET /metrics (Prometheus) here, WITHOUT the token: bind it to a private
    /// address (loopback, the monitoring network). /metrics on --http-listen always needs the
    /// token.
    #[arg(long, env = "GATEHOUSE_METRICS_LISTEN", value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,

    /// Close an HTTP connection whose request headers are not complete this many seconds
    /// after it opened or after its last answer (slow clients, and keep-alive connections
    /// left idle).
    #[arg(long, env = "GATEHOUSE_HTTP_HEADER_TIMEOUT_SECS", default_value = "10", value_name = "SECS",
          value_parser = parse_secs)]
    pub http_header_timeout_secs: f64,

    /// Answer 503 to an HTTP request not finished this many seconds after its headers
    /// (reading its body included).
    #[arg(long, env = "GATEHOUSE_HTTP_REQUEST_TIMEOUT_SECS", default_value = "30", value_name = "SECS",
          value_parser = parse_secs)]
    pub http_request_timeout_secs: f64,

    /// Most HTTP connections open at once (per listener); more are accepted and closed.
    #[arg(long, env = "GATEHOUSE_HTTP_MAX_CONNECTIONS", default_value = "512", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,

    /// Most HTTP connections open at once from one address; more are accepted and closed.
    #[arg(long, env = "GATEHOUSE_HTTP_MAX_CONNECTIONS_PER_ADDR", default_value = "64", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections_per_addr: u32,

    /// Most event streams open at once (GET /api/events/stream: one per console tab, plus
    /// scripts); one more is answered 503.
    #[arg(long, env = "GATEHOUSE_HTTP_MAX_STREAMS", default_value = "64", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_streams: u32,

    /// Bearer token for the HTTP API. Default: generated on first start, stored in
    /// <data dir>/admin-token (mode 0600) and printed once.
    #[arg(
        long,
        env = "GATEHOUSE_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,

    /// The console's address as browsers see it, when it is behind a reverse proxy
    /// (https://console.example): state-changing browser requests must come from it.
    /// Default: the Host the request was sent to. An https origin also marks the session
    /// cookie Secure.
    #[arg(long, env = "GATEHOUSE_PUBLIC_ORIGIN", value_name = "URL")]
    pub public_origin: Option<String>,

    /// A console session ends after this many hours without a request.
    #[arg(long, env = "GATEHOUSE_SESSION_IDLE_HOURS", default_value = "12", value_name = "HOURS",
          value_parser = parse_positive)]
    pub session_idle_hours: f64,

    /// A console session ends this many days after its login, however busy.
    #[arg(long, env = "GATEHOUSE_SESSION_MAX_DAYS", default_value = "7", value_name = "DAYS",
          value_parser = parse_positive)]
    pub session_max_days: f64,

    /// What to do with a device never seen before: register it, or reject it until an
    /// operator registers it (PUT /api/devices/acon/{id}).
    #[arg(
        long,
        env = "GATEHOUSE_UNKNOWN_DEVICES",
        value_enum,
        default_value = "register"
    )]
    pub unknown_devices: UnknownPolicy,

    /// A device is offline after this many seconds without a message.
    #[arg(long, env = "GATEHOUSE_PRESENCE_TIMEOUT_SECS", default_value = "300", value_name = "SECS",
          value_parser = parse_secs)]
    pub presence_timeout_secs: f64,

    /// Digits in a generated cell code.
    #[arg(long, env = "GATEHOUSE_CODE_LENGTH", default_value = "4", value_name = "DIGITS",
          value_parser = clap::value_parser!(u8).range(1..=16))]
    pub code_length: u8,

    /// Largest ACon frame in bytes; a larger one closes its connection.
    #[arg(long, env = "GATEHOUSE_ACON_MAX_FRAME", default_value = "65536", value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(256..))]
    pub acon_max_frame: u32,

    /// Most ACon connections at once; more are accepted and closed. Lowered at start, with a
    /// warning, when the open-files limit cannot hold it (README, "Limits").
    #[arg(long, env = "GATEHOUSE_ACON_MAX_CONNECTIONS", default_value = "20000", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub acon_max_connections: u32,

    /// Most ACon connections from one IP address at once; more are accepted and closed.
    /// Generous by default: GSM boards of one operator can share one public address.
    #[arg(long, env = "GATEHOUSE_ACON_MAX_CONNECTIONS_PER_ADDR", default_value = "1000",
          value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub acon_max_connections_per_addr: u32,

    /// Close an ACon connection silent for this many seconds.
    #[arg(long, env = "GATEHOUSE_ACON_IDLE_TIMEOUT_SECS", default_value = "600", value_name = "SECS",
          value_parser = parse_secs)]
    pub acon_idle_timeout_secs: f64,

    /// Close an ACon connection that takes longer than this to finish a started frame or to
    /// take its answer.
    #[arg(long, env = "GATEHOUSE_ACON_FRAME_TIMEOUT_SECS", default_value = "30", value_name = "SECS",
          value_parser = parse_secs)]
    pub acon_frame_timeout_secs: f64,

    /// Close an ACon connection after this many malformed frames in a row.
    #[arg(
        long,
        env = "GATEHOUSE_ACON_MAX_BAD_FRAMES",
        default_value = "10",
        value_name = "N"
    )]
    pub acon_max_bad_frames: u32,

    /// Networks ACon boards may connect from, comma-separated: `10.0.0.0/8,192.168.1.0/24`,
    /// IPv6 too; a bare address is one host. Others are closed at accept. Default: anywhere.
    #[arg(long, env = "GATEHOUSE_ACON_ALLOW", value_name = "NETWORKS",
          value_parser = parse_allow)]
    pub acon_allow: Option<AllowList>,

    /// Refuse a known board's frames from a network (/24, /64) it has not used until an
    /// operator accepts it (POST /api/devices/acon/{id}/peers).
    #[arg(long, env = "GATEHOUSE_ACON_PIN_PEERS", num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub acon_pin_peers: bool,

    /// New ACon boards registered per minute at most (0: no cap); the excess is refused.
    #[arg(
        long,
        env = "GATEHOUSE_ACON_MAX_NEW_BOARDS_PER_MIN",
        default_value = "60",
        value_name = "N"
    )]
    pub acon_max_new_boards_per_min: u32,

    /// Messages per second one ACon board may send, with bursts of twice that (0: no limit).
    /// A board over it gets no answer, its connection is closed, and a `rate_limited` event
    /// is written (at most one a minute). Real boards send one every few seconds.
    #[arg(long, env = "GATEHOUSE_ACON_MAX_MESSAGES_PER_SEC", default_value = "20", value_name = "N",
          value_parser = parse_rate)]
    pub acon_max_messages_per_sec: f64,

    /// Packets per second one SKABEN device may send, with bursts of twice that (0: no
    /// limit). Packets over it are refused unrecorded, with a `rate_limited` event at most
    /// once a minute.
    #[arg(long, env = "GATEHOUSE_SKABEN_MAX_PACKETS_PER_SEC", default_value = "50", value_name = "N",
          value_parser = parse_rate)]
    pub skaben_max_packets_per_sec: f64,

    /// Largest SKABEN payload in bytes, unless the device's type sets `max_payload_bytes`
    /// (0: the broker's packet limit, 256 KiB). A larger packet is refused unrecorded, with
    /// a `payload_too_large` event at most once a minute.
    #[arg(
        long,
        env = "GATEHOUSE_SKABEN_MAX_PAYLOAD_BYTES",
        default_value = "8192",
        value_name = "BYTES"
    )]
    pub skaben_max_payload_bytes: u32,

    /// The venue's time zone for rule schedules (`when = { schedule = "…" }`), an IANA name
    /// such as `Europe/Moscow`; a rule file's `game.timezone` wins. Default: the system's
    /// zone (UTC when it has none).
    #[arg(long, env = "GATEHOUSE_TIMEZONE", value_name = "ZONE", value_parser = parse_zone)]
    pub timezone: Option<String>,

    /// Address of the embedded MQTT broker the SKABEN props connect to (port 0: any free port,
    /// logged at start). Not used with --mqtt-url.
    #[arg(
        long,
        env = "GATEHOUSE_MQTT_LISTEN",
        default_value = "0.0.0.0:1883",
        value_name = "HOST:PORT"
    )]
    pub mqtt_listen: String,

    /// Use this MQTT broker instead of the embedded one (Mosquitto, EMQX, RabbitMQ's MQTT
    /// plugin): `mqtt://[user:password@]host[:port]`. No embedded broker is started.
    #[arg(
        long,
        env = "GATEHOUSE_MQTT_URL",
        hide_env_values = true,
        conflicts_with = "mqtt_listen",
        value_name = "URL"
    )]
    pub mqtt_url: Option<String>,

    /// Who may log in to the embedded broker: `devices` — only clients with a credential
    /// (POST /api/devices/{type}/{id}/credentials, /api/types/{type}/credentials); `off` —
    /// anonymous clients too, for a closed bench (warned at start and in /api/stats). The
    /// topic rules hold either way. Not used with --mqtt-url: that broker enforces its own.
    #[arg(
        long,
        env = "GATEHOUSE_MQTT_AUTH",
        value_enum,
        default_value = "devices"
    )]
    pub mqtt_auth: MqttAuth,

    /// Most clients connected to the embedded broker at once; more are refused. Lowered at
    /// start, with a warning, when the open-files limit cannot hold it (README, "Limits").
    #[arg(long, env = "GATEHOUSE_MQTT_MAX_CONNECTIONS", default_value = "10000", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub mqtt_max_connections: u32,

    /// Most clients connected to the embedded broker from one IP address at once; one more
    /// gets CONNACK "quota exceeded". Generous by default: props behind one NAT share one.
    #[arg(long, env = "GATEHOUSE_MQTT_MAX_CONNECTIONS_PER_ADDR", default_value = "1000",
          value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub mqtt_max_connections_per_addr: u32,

    /// Messages the embedded broker queues for one client that does not take them; past it
    /// the client is disconnected (event `mqtt_client_too_slow`).
    #[arg(long, env = "GATEHOUSE_MQTT_MAX_QUEUED_MESSAGES", default_value = "1000",
          value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub mqtt_max_queued_messages: u32,

    /// Bytes (payloads and topics) the embedded broker queues for one client that does not
    /// take them; past it the client is disconnected (event `mqtt_client_too_slow`).
    #[arg(long, env = "GATEHOUSE_MQTT_MAX_QUEUED_BYTES", default_value = "16777216",
          value_name = "BYTES", value_parser = clap::value_parser!(u64).range(262144..))]
    pub mqtt_max_queued_bytes: u64,

    /// Close a client connected to the embedded broker with keep-alive 0 (no keep-alive)
    /// that sends no publish or subscription for this many seconds. Clients with a
    /// keep-alive are closed by the broker after 1.5 × their keep-alive of silence.
    #[arg(long, env = "GATEHOUSE_MQTT_SILENCE_TIMEOUT_SECS", default_value = "300",
          value_name = "SECS", value_parser = parse_secs)]
    pub mqtt_silence_timeout_secs: f64,

    /// Seconds between PING broadcasts to every active SKABEN device type.
    #[arg(long, env = "GATEHOUSE_PING_INTERVAL_SECS", default_value = "10", value_name = "SECS",
          value_parser = parse_secs)]
    pub ping_interval_secs: f64,

    /// A SKABEN device is offline after this many seconds without a packet (a device type can
    /// override it: `keepalive_secs` in PUT /api/types/{type}).
    #[arg(long, env = "GATEHOUSE_SKABEN_KEEPALIVE_SECS", default_value = "60", value_name = "SECS",
          value_parser = parse_secs)]
    pub skaben_keepalive_secs: f64,

    /// Keep messages this many days (fractions allowed: 0.5 is 12 hours); older ones are
    /// removed, except each device's newest. 0: keep forever.
    #[arg(long, env = "GATEHOUSE_RETAIN_MESSAGES_DAYS", default_value = "30", value_name = "DAYS",
          value_parser = parse_days)]
    pub retain_messages_days: f64,

    /// Keep events (the audit log) this many days; 0: keep forever.
    #[arg(long, env = "GATEHOUSE_RETAIN_EVENTS_DAYS", default_value = "365", value_name = "DAYS",
          value_parser = parse_days)]
    pub retain_events_days: f64,

    /// Cap on the database's content in MB (10^6 bytes): past it the oldest messages are
    /// removed, then — only if that is not enough — the oldest events. 0: no cap.
    #[arg(
        long,
        env = "GATEHOUSE_MAX_DB_MB",
        default_value = "0",
        value_name = "MB"
    )]
    pub max_db_mb: u64,

    /// Seconds between retention passes (for tests; the default suits a venue).
    #[arg(long, env = "GATEHOUSE_RETENTION_INTERVAL_SECS", default_value = "60", value_name = "SECS",
          value_parser = parse_secs, hide = true)]
    pub retention_interval_secs: f64,

    /// Start with a new, empty database even though the data directory was used before (its
    /// lock file or admin token exists) and gatehouse.db is missing or empty. Without it such
    /// a start is refused: the database was deleted or truncated; restore a backup instead.
    #[arg(long, env = "GATEHOUSE_INIT", num_args = 0..=1, default_value = "false",
          default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub init: bool,

    /// Log filter (tracing's EnvFilter syntax: `info`, `gatehouse=debug`, …).
    #[arg(
        long,
        env = "GATEHOUSE_LOG",
        default_value = "info,mqtt5=error",
        value_name = "FILTER"
    )]
    pub log: String,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() && v < 1e9 => Ok(v),
        _ => Err(format!("{s:?} is not a rate: a number ≥ 0 (0: no limit)")),
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1e9 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn parse_positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1e5 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn parse_days(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() && v < 1e6 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of days (0 or more; 0 keeps forever)"
        )),
    }
}

fn days(v: f64) -> Option<Duration> {
    (v > 0.0).then(|| Duration::from_secs_f64(v * 86_400.0))
}

fn parse_allow(s: &str) -> Result<AllowList, String> {
    AllowList::parse(s).map_err(|e| {
        format!("entry {e}; give networks like 10.0.0.0/8,192.168.1.0/24 or single addresses")
    })
}

fn parse_zone(s: &str) -> Result<String, String> {
    crate::core::game::schedule::zone(Some(s)).map(|_| s.to_string())
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}

impl ServeArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            data_dir: self.data_dir.clone(),
            acon_listen: self.acon_listen.clone(),
            http_listen: self.http_listen.clone(),
            metrics_listen: self.metrics_listen.clone(),
            http: HttpLimits {
                header_timeout: secs(self.http_header_timeout_secs),
                request_timeout: secs(self.http_request_timeout_secs),
                max_connections: self.http_max_connections as usize,
                max_connections_per_addr: self.http_max_connections_per_addr as usize,
                max_streams: self.http_max_streams as usize,
            },
            admin_token: self.admin_token.clone(),
            console: crate::server::ConsoleSettings {
                public_origin: self.public_origin.clone(),
                session: crate::core::accounts::SessionPolicy {
                    idle_ms: (self.session_idle_hours * 3_600_000.0) as i64,
                    max_ms: (self.session_max_days * 86_400_000.0) as i64,
                },
            },
            core: CoreConfig {
                unknown_devices: self.unknown_devices,
                presence_timeout_ms: (self.presence_timeout_secs * 1000.0) as i64,
                code_length: usize::from(self.code_length),
                ping_interval_ms: (self.ping_interval_secs * 1000.0) as i64,
                skaben_keepalive_ms: (self.skaben_keepalive_secs * 1000.0) as i64,
                acon_pin_peers: self.acon_pin_peers,
                acon_max_new_boards_per_min: self.acon_max_new_boards_per_min,
                acon_max_messages_per_sec: self.acon_max_messages_per_sec,
                skaben_max_packets_per_sec: self.skaben_max_packets_per_sec,
                skaben_max_payload_bytes: self.skaben_max_payload_bytes as usize,
                timezone: self.timezone.clone(),
            },
            mqtt: match &self.mqtt_url {
                Some(url) => MqttSettings::External { url: url.clone() },
                None => MqttSettings::Embedded {
                    listen: self.mqtt_listen.clone(),
                    auth: self.mqtt_auth,
                },
            },
            mqtt_limits: BrokerLimits {
                max_connections: self.mqtt_max_connections as usize,
                max_connections_per_addr: self.mqtt_max_connections_per_addr as usize,
                // Set from the file-descriptor budget at start.
                handshakes: self.mqtt_max_connections as usize,
                max_queued_messages: self.mqtt_max_queued_messages as usize,
                max_queued_bytes: usize::try_from(self.mqtt_max_queued_bytes).unwrap_or(usize::MAX),
                silence_timeout: secs(self.mqtt_silence_timeout_secs),
            },
            acon: AconLimits {
                max_frame: self.acon_max_frame as usize,
                max_connections: self.acon_max_connections as usize,
                max_connections_per_addr: self.acon_max_connections_per_addr as usize,
                idle_timeout: secs(self.acon_idle_timeout_secs),
                frame_timeout: secs(self.acon_frame_timeout_secs),
                max_bad_frames: self.acon_max_bad_frames,
                allow: self.acon_allow.clone(),
            },
            store: crate::server::StoreSettings {
                retention: crate::store::retention::Retention {
                    messages_max_age: days(self.retain_messages_days),
                    events_max_age: days(self.retain_events_days),
                    max_db_bytes: (self.max_db_mb > 0)
                        .then(|| self.max_db_mb.saturating_mul(1_000_000)),
                    every: secs(self.retention_interval_secs),
                },
                init: self.init,
            },
        }
    }
}

/// Parses the command line, filling `serve`'s unset settings from its `--config` file.
pub fn parse(args: Vec<OsString>) -> anyhow::Result<Cli> {
    let cmd = Cli::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(&args)
        .unwrap_or_else(|e| e.exit());
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let Some(path) = serve.get_one::<PathBuf>("config") else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {} (--config)", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let serve_cmd = cmd.find_subcommand("serve").context("serve subcommand")?;
    let mut injected: Vec<OsString> = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = serve_cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
        else {
            let known: Vec<String> = serve_cmd
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "config" && *l != "help")
                .map(|l| l.replace('-', "_"))
                .collect();
            bail!(
                "{}: unknown setting {key:?}; known settings: {}",
                path.display(),
                known.join(", ")
            );
        };
        let from_default = matches!(
            serve.value_source(arg.get_id().as_str()),
            None | Some(ValueSource::DefaultValue)
        );
        if !from_default {
            continue; // a flag or an environment variable wins
        }
        let value = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!(
                "{}: setting {key:?} must be a string or a number, not {}",
                path.display(),
                other.type_str()
            ),
        };
        injected.push(format!("--{long}={value}").into());
    }
    let serve_at = args.iter().position(|a| a == "serve").unwrap_or(1);
    let mut argv: Vec<OsString> = args[..=serve_at].to_vec();
    argv.extend(injected);
    argv.extend_from_slice(&args[serve_at + 1..]);
    let matches = Cli::command()
        .try_get_matches_from(&argv)
        .map_err(|e| anyhow::anyhow!("in the config file {}: {}", path.display(), e.render()))?;
    Ok(Cli::from_arg_matches(&matches)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Settings {
        let mut argv: Vec<OsString> = vec!["gatehouse".into(), "serve".into()];
        argv.extend(args.iter().map(OsString::from));
        match parse(argv).unwrap().command {
            Command::Serve(a) => a.settings(),
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn the_acon_guards_from_flags_and_from_the_config_file() {
        let s = serve(&[]);
        assert_eq!(s.acon.allow, None);
        assert!(!s.core.acon_pin_peers);
        assert_eq!(s.core.acon_max_new_boards_per_min, 60);
        let s = serve(&[
            "--acon-allow",
            "10.0.0.0/8, 192.168.1.7",
            "--acon-pin-peers",
            "--acon-max-new-boards-per-min",
            "0",
        ]);
        assert_eq!(
            s.acon.allow.map(|a| a.to_string()).as_deref(),
            Some("10.0.0.0/8,192.168.1.7/32")
        );
        assert!(s.core.acon_pin_peers);
        assert_eq!(s.core.acon_max_new_boards_per_min, 0);
        assert!(!serve(&["--acon-pin-peers=false"]).core.acon_pin_peers);

        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("g.toml");
        std::fs::write(
            &conf,
            "acon_allow = \"2001:db8::/32\"\nacon_pin_peers = true\nacon_max_new_boards_per_min = 5\n",
        )
        .unwrap();
        let s = serve(&["--config", conf.to_str().unwrap()]);
        assert_eq!(
            s.acon.allow.map(|a| a.to_string()).as_deref(),
            Some("2001:db8::/32")
        );
        assert!(s.core.acon_pin_peers);
        assert_eq!(s.core.acon_max_new_boards_per_min, 5);
        // A flag beats the file.
        let s = serve(&["--config", conf.to_str().unwrap(), "--acon-pin-peers=false"]);
        assert!(!s.core.acon_pin_peers);
    }

    #[test]
    fn retention_and_init_from_flags_and_the_config_file() {
        let s = serve(&[]);
        let r = &s.store.retention;
        assert_eq!(r.messages_max_age, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(r.events_max_age, Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(r.max_db_bytes, None);
        assert_eq!(r.every, Duration::from_secs(60));
        assert!(!s.store.init);
        let s = serve(&[
            "--retain-messages-days",
            "0.5",
            "--retain-events-days",
            "0",
            "--max-db-mb",
            "200",
            "--init",
        ]);
        let r = &s.store.retention;
        assert_eq!(r.messages_max_age, Some(Duration::from_secs(43_200)));
        assert_eq!(r.events_max_age, None, "0 keeps forever");
        assert_eq!(r.max_db_bytes, Some(200_000_000));
        assert!(s.store.init);
        let argv: Vec<OsString> = ["gatehouse", "serve", "--retain-messages-days", "-1"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(Cli::command().try_get_matches_from(argv).is_err());

        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("g.toml");
        std::fs::write(&conf, "retain_messages_days = 7\nmax_db_mb = 50\n").unwrap();
        let s = serve(&["--config", conf.to_str().unwrap()]);
        assert_eq!(
            s.store.retention.messages_max_age,
            Some(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(s.store.retention.max_db_bytes, Some(50_000_000));
    }
}
