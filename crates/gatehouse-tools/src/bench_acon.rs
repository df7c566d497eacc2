//! Load generator for the ACon gateway (`gatehouse bench acon`).
//!
//! Every connection plays one board: it sends realistic 8×8 status messages (CRLF, ACT_CON,
//! BOX lists, SEND going up by one) and reads each answer with the `acon` decoder. An answer
//! whose SEND or ID does not echo the message is a mismatch, and an error: a board would
//! ignore it and retry.
//!
//! Two ways to load:
//! - **closed loop** (no `--rate`): each connection sends its next message as soon as the
//!   answer to the last one arrives. Measures the most the server can answer.
//! - **open loop** (`--rate R`): each connection sends at R/conns messages a second, from a
//!   random start offset, and keeps its connection open for the whole run (this is how the
//!   server's memory with 10 000 boards connected is measured). Latency counts from the
//!   time a message was *due*, so a slow server is not hidden by the client waiting for it
//!   (no coordinated omission); see [`drive`] for the one exception, the client's own timer.
//!
//! Latencies go to an HDR histogram in microseconds. Messages due during `--warmup` are sent
//! but not counted; errors are counted from the first connect to the end.
//!
//! `--reference` starts the bare [`crate::reference`] server in-process, on its own
//! multi-thread runtime, and loads it instead of `--addr`: the ceiling to compare with.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use acon::{Answer, Connection, Decoder, LineEnding, LinkState, Matrix, Message, StateCode};
use anyhow::{Context as _, bail};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};

use crate::args::{non_negative_secs, positive_rate, positive_secs};
use crate::latency::Latencies;
use crate::net;

/// How long a connection waits for one answer before it counts an error and reconnects.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// One connect attempt gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect attempts per connection before it counts as failed.
const CONNECT_ATTEMPTS: u32 = 8;
/// Highest latency the histogram resolves; slower answers are recorded as this.
/// File descriptors kept free for everything that is not a load connection.
const SPARE_FDS: u64 = 256;

/// Load an ACon server with many boards and measure messages/s and latency.
///
/// Each connection is one board sending realistic status messages; every answer must echo
/// the message's SEND and ID. Without --rate each connection sends as soon as it has its
/// answer (closed loop); with --rate the load is paced and latency is measured from when
/// each message was due.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchAconArgs {
    /// Server to load, HOST:PORT (ignored with --reference).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5000")]
    pub addr: String,

    /// Number of connections, each its own board.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub conns: usize,

    /// Seconds to measure, after the warm-up.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = positive_secs)]
    pub seconds: f64,

    /// Total messages per second across all connections (open loop). Without it each
    /// connection sends its next message as soon as the answer arrives (closed loop).
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = positive_rate)]
    pub rate: Option<f64>,

    /// Seconds of load before measuring starts; messages due then are not counted.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = non_negative_secs)]
    pub warmup: f64,

    /// Board ID of the first connection; connection i is board FIRST_ID+i.
    #[arg(long, value_name = "ID", default_value_t = 100_000)]
    pub first_id: u64,

    /// Load the bare reference server (parse and answer, no store), started in this
    /// process on 127.0.0.1 and its own runtime, instead of --addr.
    #[arg(long)]
    pub reference: bool,

    /// Connects in flight at once while opening the connections.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub connect_concurrency: usize,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Messages answered correctly that were due in the measured window.
    pub messages: u64,
    /// Length of the measured window (warm-up excluded).
    pub seconds: f64,
    /// `messages / seconds`.
    pub rate: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Failed connects, I/O errors, answer time-outs, unreadable answers and mismatches,
    /// over the whole run (warm-up included).
    pub errors: u64,
    /// Answers whose SEND or ID did not echo the message (also counted in `errors`).
    pub send_mismatches: u64,
    /// Connections that were opened and loaded.
    pub conns: usize,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "connections   {}", self.conns)?;
        writeln!(
            f,
            "messages      {} in {:.1} s = {:.0} msg/s",
            self.messages, self.seconds, self.rate
        )?;
        writeln!(
            f,
            "latency (µs)  p50 {}   p99 {}   p99.9 {}   max {}",
            self.p50_us, self.p99_us, self.p999_us, self.max_us
        )?;
        write!(
            f,
            "errors        {} (SEND/ID mismatches: {})",
            self.errors, self.send_mismatches
        )
    }
}

/// Runs the load and prints the report to stdout.
pub async fn run(args: BenchAconArgs) -> anyhow::Result<()> {
    let target = if args.reference {
        "reference (bare parse-and-answer, no store)".to_string()
    } else {
        args.addr.clone()
    };
    let mode = match args.rate {
        Some(rate) => format!("open loop at {rate} msg/s"),
        None => "closed loop".to_string(),
    };
    println!(
        "bench acon: {target}; {} connections, {mode}, {} s after {} s warm-up",
        args.conns, args.seconds, args.warmup
    );
    let report = measure(&args).await?;
    println!("{report}");
    Ok(())
}

/// Runs the load and returns what it measured (no output).
pub async fn measure(args: &BenchAconArgs) -> anyhow::Result<BenchReport> {
    let window = Window::new(args)?;
    anyhow::ensure!(args.conns > 0, "--conns must be at least 1");
    anyhow::ensure!(
        args.connect_concurrency > 0,
        "--connect-concurrency must be at least 1"
    );
    let conns = u64::try_from(args.conns).context("--conns is too large")?;
    args.first_id
        .checked_add(conns - 1)
        .context("--first-id + --conns overflows a u64")?;
    raise_fd_limit(conns, args.reference)?;

    if !args.reference {
        let addr = tokio::net::lookup_host(&args.addr)
            .await
            .with_context(|| format!("cannot resolve --addr {}", args.addr))?
            .next()
            .with_context(|| format!("--addr {} resolves to no address", args.addr))?;
        return load(args, addr, window).await;
    }
    let reference = ReferenceServer::start().await?;
    let report = load(args, reference.addr, window).await;
    reference.stop().await?;
    report
}

/// The run's timing, from the arguments.
#[derive(Debug, Clone, Copy)]
struct Window {
    warmup: Duration,
    seconds: Duration,
    /// Pause between two messages of one connection in open loop.
    interval: Option<Duration>,
}

impl Window {
    fn new(args: &BenchAconArgs) -> anyhow::Result<Window> {
        let secs = |name: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .with_context(|| format!("--{name} must be a number of seconds, not {v}"))
        };
        let seconds = secs("seconds", args.seconds)?;
        anyhow::ensure!(!seconds.is_zero(), "--seconds must be more than 0");
        let interval = match args.rate {
            None => None,
            Some(rate) => {
                anyhow::ensure!(
                    rate.is_finite() && rate > 0.0,
                    "--rate must be a positive number, not {rate}"
                );
                Some(secs("rate", args.conns as f64 / rate)?)
            }
        };
        Ok(Window {
            warmup: secs("warmup", args.warmup)?,
            seconds,
            interval,
        })
    }
}

/// Makes room for one descriptor per connection (two with the in-process reference server,
/// which holds the other end).
fn raise_fd_limit(conns: u64, reference: bool) -> anyhow::Result<()> {
    let needed = conns * if reference { 2 } else { 1 } + SPARE_FDS;
    let got =
        rlimit::increase_nofile_limit(needed).context("cannot read or raise RLIMIT_NOFILE")?;
    if got < needed {
        bail!(
            "{conns} connections need about {needed} open files, but RLIMIT_NOFILE is {got}: \
             raise the hard limit (ulimit -Hn, or LimitNOFILE= in systemd) or use fewer --conns"
        );
    }
    Ok(())
}

/// The reference server on its own runtime and thread, so that its work does not share the
/// load generator's scheduler.
struct ReferenceServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl ReferenceServer {
    async fn start() -> anyhow::Result<ReferenceServer> {
        let (addr_tx, addr_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("reference-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .thread_name("reference-worker")
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return Ok(());
                    }
                };
                runtime.block_on(async move {
                    let listener =
                        match crate::reference::bind(SocketAddr::from(([127, 0, 0, 1], 0))) {
                            Ok(listener) => listener,
                            Err(e) => {
                                let _ = addr_tx.send(Err(e));
                                return Ok(());
                            }
                        };
                    let _ = addr_tx.send(listener.local_addr());
                    tokio::select! {
                        served = crate::reference::serve(listener) => served,
                        // Sent or dropped: either way the run is over.
                        _ = stop_rx => Ok(()),
                    }
                })
                // Dropping the runtime here ends every connection task.
            })
            .context("cannot start the reference server's thread")?;
        let addr = addr_rx
            .await
            .context("the reference server's thread ended before it was listening")?
            .context("cannot start the reference server")?;
        Ok(ReferenceServer { addr, stop, thread })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("waiting for the reference server")?
            .map_err(|_| anyhow::anyhow!("the reference server panicked"))?
            .context("the reference server stopped accepting")
    }
}

/// One connection's counts.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    messages: u64,
    errors: u64,
    mismatches: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.messages += other.messages;
        self.errors += other.errors;
        self.mismatches += other.mismatches;
    }
}

/// Opens the connections, loads them for warm-up + seconds, and adds up.
async fn load(
    args: &BenchAconArgs,
    addr: SocketAddr,
    window: Window,
) -> anyhow::Result<BenchReport> {
    let connects = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut opening = JoinSet::new();
    for index in 0..args.conns {
        let connects = Arc::clone(&connects);
        opening.spawn(async move { (index, connect_with_retry(addr, &connects).await) });
    }
    let mut streams: Vec<Option<TcpStream>> = (0..args.conns).map(|_| None).collect();
    let mut failed = 0u64;
    let mut last_error = None;
    while let Some(opened) = opening.join_next().await {
        let (index, stream) = opened.context("a connect task crashed")?;
        match stream {
            Ok(stream) => streams[index] = Some(stream),
            Err(e) => {
                failed += 1;
                last_error = Some(e);
            }
        }
    }
    if let Some(e) = last_error.as_ref().filter(|_| failed == args.conns as u64) {
        bail!("cannot connect to {addr}: {e} (is the server running and listening there?)");
    }

    let latencies = Arc::new(Latencies::new(args.conns)?);
    let mut rng: SmallRng = rand::make_rng();
    let start = Instant::now();
    let clock = Clock {
        measure_from: start + window.warmup,
        end: start + window.warmup + window.seconds,
    };
    let mut running = JoinSet::new();
    for (index, stream) in streams.into_iter().enumerate() {
        let Some(stream) = stream else { continue };
        let id = (args.first_id + index as u64).to_string();
        let conn = Conn {
            index,
            template: Template::new(&id, &mut SmallRng::seed_from_u64(rng.random()))?,
            id,
            first_due: start
                + window
                    .interval
                    .map_or(Duration::ZERO, |iv| iv.mul_f64(rng.random())),
            interval: window.interval,
            addr,
            connects: Arc::clone(&connects),
            latencies: Arc::clone(&latencies),
        };
        running.spawn(drive(conn, stream, clock));
    }
    let conns = running.len();
    let mut total = Counts {
        errors: failed,
        ..Counts::default()
    };
    while let Some(counts) = running.join_next().await {
        match counts {
            Ok(counts) => total += counts,
            Err(_) => total.errors += 1,
        }
    }

    let histogram = latencies.merged()?;
    let seconds = window.seconds.as_secs_f64();
    Ok(BenchReport {
        messages: total.messages,
        seconds,
        rate: total.messages as f64 / seconds,
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        errors: total.errors,
        send_mismatches: total.mismatches,
        conns,
    })
}

/// Connects, retrying failed attempts with a doubling pause (up to [`CONNECT_ATTEMPTS`]);
/// each attempt holds a permit of `connects`, which bounds the connects in flight.
async fn connect_with_retry(addr: SocketAddr, connects: &Semaphore) -> std::io::Result<TcpStream> {
    let mut pause = Duration::from_millis(10);
    let mut attempt = 1;
    loop {
        let connected = {
            // The semaphore is never closed; if it were, connecting unthrottled is harmless.
            let _permit = connects.acquire().await.ok();
            net::connect(addr, CONNECT_TIMEOUT).await
        };
        match connected {
            Ok(stream) => return Ok(stream),
            Err(e) if attempt >= CONNECT_ATTEMPTS => return Err(e),
            Err(_) => {
                sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                attempt += 1;
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

/// One connection's board.
struct Conn {
    index: usize,
    id: String,
    template: Template,
    /// Open loop: when the first message is due, and the pause between messages.
    first_due: Instant,
    interval: Option<Duration>,
    addr: SocketAddr,
    connects: Arc<Semaphore>,
    latencies: Arc<Latencies>,
}

/// Plays one board until the end of the run.
///
/// Latency runs from the message's due time to its answer. In open loop the due time is the
/// schedule's, so a message that had to wait for a slow answer to the one before is charged
/// the wait. The exception: when the connection was idle at the due time (the last answer
/// had come) and the client's timer woke late (tokio's timer has 1 ms granularity), that
/// lateness is the client's, not the server's, and latency counts from the actual send.
async fn drive(conn: Conn, stream: TcpStream, clock: Clock) -> Counts {
    let mut counts = Counts::default();
    let mut stream = Some(stream);
    let mut decoder = Decoder::default();
    let mut out = Vec::with_capacity(conn.template.len() + 20);
    let mut send: u64 = 1;
    let mut due = conn.first_due;
    // Until when the connection was waiting for the server.
    let mut busy_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let scheduled = match conn.interval {
            None => now,
            Some(interval) => {
                let at = due;
                due += interval;
                at
            }
        };
        if scheduled >= clock.end {
            break;
        }
        if scheduled > now {
            sleep_until(scheduled).await;
        }
        let Some(live) = stream.as_mut() else {
            match timeout_at(clock.end, connect_with_retry(conn.addr, &conn.connects)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    decoder = Decoder::default();
                }
                Ok(Err(_)) | Err(_) => counts.errors += 1,
            }
            busy_until = Some(Instant::now());
            continue;
        };

        let sent_at = Instant::now();
        let counted_from = match busy_until {
            Some(busy) if busy > scheduled => scheduled,
            _ => sent_at,
        };
        out.clear();
        conn.template.render(send, &mut out);
        let exchange = async {
            live.write_all(&out).await?;
            net::next_frame(live, &mut decoder).await
        };
        let exchanged = timeout_at(sent_at + ANSWER_TIMEOUT, exchange).await;
        let answered = Instant::now();
        busy_until = Some(answered);
        let this_send = send;
        send += 1;
        let frame = match exchanged {
            Ok(Ok(frame)) => frame,
            // I/O error, closed by the server, or no answer in time: reconnect.
            Ok(Err(_)) | Err(_) => {
                counts.errors += 1;
                stream = None;
                continue;
            }
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                counts.errors += 1;
                if e.is_fatal() {
                    stream = None;
                }
                continue;
            }
        };
        match Answer::parse(&frame.bytes) {
            Ok(answer) if answer.send == this_send && answer.id == conn.id => {
                if scheduled >= clock.measure_from {
                    counts.messages += 1;
                    conn.latencies.record(conn.index, answered - counted_from);
                }
            }
            Ok(_) => {
                counts.errors += 1;
                counts.mismatches += 1;
            }
            Err(_) => counts.errors += 1,
        }
    }
    counts
}

/// A board's message with the SEND value cut out, so that each message costs two copies
/// and a number format rather than a full encode.
#[derive(Debug, Clone)]
struct Template {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Template {
    /// A realistic 8×8 board: one or two locks disconnected, a few engaged cells, now and
    /// then an opening or a time-out to report.
    fn new(id: &str, rng: &mut SmallRng) -> anyhow::Result<Template> {
        let mut bits = vec![true; 64];
        for _ in 0..rng.random_range(1..=2) {
            bits[rng.random_range(0..64)] = false;
        }
        let engaged = random_cells(rng, 6);
        let (to, acc) = (rng.random_bool(0.2), rng.random_bool(0.2));
        let timed_out = random_cells(rng, usize::from(to));
        let opened = random_cells(rng, usize::from(acc));
        let message = Message {
            version: "ACon_V1.0".into(),
            id: id.into(),
            send: 0,
            connection: Some(Connection::Wifi),
            wifi_state: Some(LinkState::Ok),
            gsm_state: Some(LinkState::Ok),
            reset: Some(false),
            state: Some(vec![StateCode::Normal]),
            cols: Some(8),
            rows: Some(8),
            act_con: Matrix::new(8, 8, bits),
            box_eng: Some(engaged),
            box_to: Some(timed_out),
            box_acc: Some(opened),
            extra: Vec::new(),
            line_ending: LineEnding::Crlf,
        };
        let mut bytes = Vec::new();
        message.encode(&mut bytes);
        const SEND: &[u8] = b"\r\nSEND=0\r\n";
        let at = bytes
            .windows(SEND.len())
            .position(|w| w == SEND)
            .context("the encoded message has no SEND line to template")?;
        Ok(Template {
            head: bytes[..at + 7].to_vec(),
            tail: bytes[at + 8..].to_vec(),
        })
    }

    fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    fn render(&self, send: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        let _ = write!(out, "{send}");
        out.extend_from_slice(&self.tail);
    }
}

/// Up to `n` distinct cells of an 8×8 board, sorted.
fn random_cells(rng: &mut SmallRng, n: usize) -> Vec<u32> {
    let mut cells: Vec<u32> = (0..n).map(|_| rng.random_range(1..=64)).collect();
    cells.sort_unstable();
    cells.dedup();
    cells
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: BenchAconArgs,
    }

    #[test]
    fn defaults_and_help_are_sound() {
        Cli::command().debug_assert();
        let a = Cli::try_parse_from(["bench"]).unwrap().args;
        assert_eq!(
            (a.addr.as_str(), a.conns, a.seconds, a.rate, a.warmup),
            ("127.0.0.1:5000", 100, 10.0, None, 1.0)
        );
        assert_eq!(
            (a.first_id, a.reference, a.connect_concurrency),
            (100_000, false, 200)
        );
        assert!(Cli::try_parse_from(["bench", "--warmup", "0"]).is_ok());
        assert!(Cli::try_parse_from(["bench", "--warmup", "-1"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--rate", "0"]).is_err());
    }

    #[test]
    fn template_renders_a_valid_message_with_the_send() {
        let t = Template::new("100042", &mut SmallRng::seed_from_u64(1)).unwrap();
        for send in [1, 9, 10, 123_456_789] {
            let mut out = Vec::new();
            t.render(send, &mut out);
            let m = Message::parse(&out).unwrap();
            assert_eq!(
                (m.id.as_str(), m.send, m.line_ending),
                ("100042", send, LineEnding::Crlf)
            );
            assert_eq!((m.cols, m.rows), (Some(8), Some(8)));
            let off = m.act_con.unwrap().bits().iter().filter(|b| !**b).count();
            assert!((1..=2).contains(&off));
            assert!(!m.box_eng.unwrap().is_empty());
        }
    }
}
