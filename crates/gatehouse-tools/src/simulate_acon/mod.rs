//! Virtual ACon boards for demos and end-to-end tests (`gatehouse simulate acon`).
//!
//! Each board keeps one TCP connection to the server (reconnecting with backoff when it
//! drops), sends a full status message every `--interval`, and keeps the server's cell table
//! exactly as a real board does. Now and then someone types a code on its keypad. Every
//! action is printed to stdout, one line each, prefixed with the board ID:
//!
//! ```text
//! [1000] sent SEND=3 RESET=0 STATE=0 BOX_ENG=1,2 BOX_TO=0 BOX_ACC=0
//! [1000] got answer to SEND=3 with 2 engaged cells (1,2)
//! [1000] typed right code 1492 for cell 1: opened
//! ```
//!
//! The board's rules (what it reports, when it takes an answer) live in [`board`], apart
//! from the socket; this module is the event loop around them.

mod board;

use std::sync::Arc;
use std::time::Duration;

use acon::{Answer, Decoder, DecoderError, Frame};
use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use self::board::{Board, Event};
use crate::args::positive_secs;
use crate::net;

/// Chance, per interval, that someone types a code on a board's keypad.
const TYPE_CHANCE: f64 = 0.25;
/// How long a board takes to come back after a reboot.
const BOOT_TIME: Duration = Duration::from_secs(1);
/// First pause before reconnecting; it doubles on each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// One connect attempt gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Run virtual ACon boards against a server.
///
/// Each board keeps one TCP connection, sends a status message every interval (SEND
/// incrementing, CRLF, all fields), keeps the cell table from the server's answers, retries
/// with SEND+1 when an answer is late, and now and then has a right or wrong code typed on
/// its keypad. It obeys RESET=1 (reboot) and STATE=3 (blocked). Each action is printed on
/// one line. Stop with Ctrl-C.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateAconArgs {
    /// Server to connect to, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:5000")]
    pub addr: String,

    /// Number of virtual boards.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub boards: u64,

    /// Seconds between status messages of one board.
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = positive_secs)]
    pub interval: f64,

    /// ID of the first board; the boards are FIRST_ID, FIRST_ID+1, … FIRST_ID+N-1.
    #[arg(long, value_name = "ID", default_value_t = 1000)]
    pub first_id: u64,

    /// Columns of each board's cell matrix.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(acon::MAX_DIMENSION)))]
    pub cols: u16,

    /// Rows of each board's cell matrix.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(acon::MAX_DIMENSION)))]
    pub rows: u16,

    /// Seconds a board waits for an answer before it sends a new message with SEND+1.
    #[arg(long, value_name = "SECS", default_value_t = 3.0, value_parser = positive_secs)]
    pub answer_timeout: f64,

    /// Seed for the boards' random choices (disconnected locks, typed codes), so that a run
    /// can be repeated. Without it every run differs.
    #[arg(long, value_name = "U64")]
    pub seed: Option<u64>,

    /// Stop each board after it has had this many answers (for tests). Without it the
    /// boards run until Ctrl-C.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

/// What every board of a run shares.
#[derive(Debug)]
struct Config {
    addr: String,
    interval: Duration,
    answer_timeout: Duration,
    count: Option<u64>,
}

/// Runs the boards until each has had `--count` answers, or until Ctrl-C.
pub async fn run(args: SimulateAconArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.boards > 0, "--boards must be at least 1");
    let last_id = args
        .first_id
        .checked_add(args.boards - 1)
        .context("--first-id + --boards overflows a u64")?;
    let seconds = |name: &str, secs: f64| {
        Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .with_context(|| format!("--{name} must be a positive number of seconds, not {secs}"))
    };
    let config = Arc::new(Config {
        addr: args.addr.clone(),
        interval: seconds("interval", args.interval)?,
        answer_timeout: seconds("answer-timeout", args.answer_timeout)?,
        count: args.count,
    });
    for (name, n) in [("cols", args.cols), ("rows", args.rows)] {
        anyhow::ensure!(
            (1..=acon::MAX_DIMENSION).contains(&n),
            "--{name} must be 1..={}, not {n}",
            acon::MAX_DIMENSION
        );
    }

    println!(
        "simulating {} ACon boards (IDs {}..={last_id}) against {}, a message every {:?}",
        args.boards, args.first_id, args.addr, config.interval
    );
    let mut boards = JoinSet::new();
    for id in args.first_id..=last_id {
        let rng = match args.seed {
            // Mix the ID in so that boards of one seed do not all make the same choices.
            Some(seed) => SmallRng::seed_from_u64(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            None => rand::make_rng(),
        };
        let board = Board::new(id.to_string(), args.cols, args.rows, rng);
        boards.spawn(run_board(Arc::clone(&config), board, id));
    }
    let all_done = async {
        while let Some(done) = boards.join_next().await {
            done.context("a virtual board crashed")?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        done = all_done => done,
        signal = tokio::signal::ctrl_c() => {
            signal.context("cannot listen for Ctrl-C")?;
            println!("stopped (Ctrl-C)");
            Ok(())
        }
    }
}

/// Why a conversation on one connection ended.
enum End {
    /// `--count` answers had.
    Done,
    /// The server asked for a reboot: reconnect after [`BOOT_TIME`].
    Rebooted,
    /// The connection failed; reconnect after a backoff.
    Lost(String),
}

/// One board for its whole life: connect, converse, reconnect.
async fn run_board(config: Arc<Config>, mut board: Board, id: u64) {
    let say = |event: &dyn std::fmt::Display| println!("[{id}] {event}");
    let mut answered = 0;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut stream = match net::connect(config.addr.as_str(), CONNECT_TIMEOUT).await {
            Ok(stream) => stream,
            Err(e) => {
                let pause = jitter(&mut board, backoff);
                say(&format_args!(
                    "cannot connect to {}: {e}; retrying in {:.1}s",
                    config.addr,
                    pause.as_secs_f64()
                ));
                sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        say(&format_args!("connected to {}", config.addr));
        match converse(
            &config,
            &mut board,
            &mut stream,
            &mut answered,
            &mut backoff,
            &say,
        )
        .await
        {
            End::Done => {
                say(&format_args!("done after {answered} answered messages"));
                return;
            }
            End::Rebooted => {
                drop(stream);
                sleep(BOOT_TIME).await;
            }
            End::Lost(e) => {
                let pause = jitter(&mut board, backoff);
                say(&format_args!(
                    "connection lost: {e}; reconnecting in {:.1}s",
                    pause.as_secs_f64()
                ));
                sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// `pause` ± 25 %, so that boards dropped together do not come back together.
fn jitter(board: &mut Board, pause: Duration) -> Duration {
    pause.mul_f64(board.rng().random_range(0.75..1.25))
}

/// Messages and answers on one connection until it fails, the board reboots or is done.
async fn converse(
    config: &Config,
    board: &mut Board,
    stream: &mut TcpStream,
    answered: &mut u64,
    backoff: &mut Duration,
    say: &impl Fn(&dyn std::fmt::Display),
) -> End {
    let mut decoder = Decoder::default();
    let mut out = Vec::with_capacity(512);
    loop {
        let sent_at = Instant::now();
        let (message, events) = board.next_message(sent_at);
        events.iter().for_each(|e| say(e));
        out.clear();
        message.encode(&mut out);
        if let Err(e) = stream.write_all(&out).await {
            return End::Lost(e.to_string());
        }
        say(&Event::sent(&message));

        // Wait for the answer to this message; others are late and ignored.
        let give_up = sent_at + config.answer_timeout;
        let rebooted = loop {
            tokio::select! {
                frame = net::next_frame(stream, &mut decoder) => {
                    match frame {
                        Err(e) => return End::Lost(e.to_string()),
                        Ok(frame) => match take_frame(board, frame, say) {
                            Err(e) => return End::Lost(e),
                            Ok(Some(rebooted)) => break Some(rebooted),
                            Ok(None) => {}
                        },
                    }
                }
                () = sleep_until(give_up) => break None,
            }
        };
        let Some(rebooted) = rebooted else {
            say(&format_args!(
                "no answer to SEND={} within {:?}: retry with a new message",
                message.send, config.answer_timeout
            ));
            continue;
        };
        *answered += 1;
        *backoff = FIRST_BACKOFF;
        if config.count.is_some_and(|count| *answered >= count) {
            return End::Done;
        }
        if rebooted {
            return End::Rebooted;
        }

        // Idle until the next message, reading what comes (late answers) and maybe having
        // a code typed at a random moment.
        let next_at = (sent_at + config.interval).max(Instant::now());
        let mut type_at = board
            .rng()
            .random_bool(TYPE_CHANCE)
            .then(|| Instant::now() + (next_at - Instant::now()).mul_f64(board.rng().random()));
        loop {
            tokio::select! {
                frame = net::next_frame(stream, &mut decoder) => {
                    let taken = match frame {
                        Err(e) => return End::Lost(e.to_string()),
                        Ok(frame) => take_frame(board, frame, say),
                    };
                    match taken {
                        Err(e) => return End::Lost(e),
                        // Nothing awaits an answer while idle, so none is taken; if one
                        // ever were, a reboot still has to be obeyed.
                        Ok(Some(true)) => return End::Rebooted,
                        Ok(_) => {}
                    }
                }
                () = sleep_until(type_at.unwrap_or(next_at)), if type_at.is_some() => {
                    type_at = None;
                    board.type_code(Instant::now()).iter().for_each(|e| say(e));
                }
                () = sleep_until(next_at) => break,
            }
        }
    }
}

/// Hands one received frame to the board. `Ok(Some(rebooted))` when it was the awaited
/// answer, `Ok(None)` when it was ignored, `Err` when the stream cannot go on.
fn take_frame(
    board: &mut Board,
    frame: Result<Frame, DecoderError>,
    say: &impl Fn(&dyn std::fmt::Display),
) -> Result<Option<bool>, String> {
    let frame = match frame {
        Ok(frame) => frame,
        Err(e) if e.is_fatal() => return Err(e.to_string()),
        Err(e) => {
            say(&format_args!("garbled answer ignored: {e}"));
            return Ok(None);
        }
    };
    let answer = match Answer::parse(&frame.bytes) {
        Ok(answer) => answer,
        Err(e) => {
            say(&format_args!("unreadable answer ignored: {e}"));
            return Ok(None);
        }
    };
    let outcome = board.on_answer(&answer, Instant::now());
    outcome.events.iter().for_each(|e| say(e));
    Ok(outcome.accepted.then_some(outcome.rebooted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: SimulateAconArgs,
    }

    #[test]
    fn defaults_and_help_are_sound() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["simulate"]).unwrap();
        let a = cli.args;
        assert_eq!(
            (a.addr.as_str(), a.boards, a.first_id, a.cols, a.rows),
            ("127.0.0.1:5000", 3, 1000, 8, 8)
        );
        assert_eq!(
            (a.interval, a.answer_timeout, a.seed, a.count),
            (5.0, 3.0, None, None)
        );
        assert!(Cli::try_parse_from(["simulate", "--interval", "0"]).is_err());
        assert!(Cli::try_parse_from(["simulate", "--cols", "65"]).is_err());
        assert!(Cli::try_parse_from(["simulate", "--count", "0"]).is_err());
    }
}
