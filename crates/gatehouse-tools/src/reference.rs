//! The bare reference server: frame, parse, answer — nothing else.
//!
//! It is the ceiling the real server is measured against (`bench acon --reference`): the same
//! codec and the same socket work, but no store, no per-board state and no logging per
//! message. The gap between it and gatehouse under the same load is what gatehouse's own
//! work costs.
//!
//! Every well-formed message gets an answer that echoes its version, ID, SEND and line
//! ending, with `RESET=0`, `STATE=0` and the same two engaged cells ([`FIXED_CELLS`]).
//! Frames that do not parse get no answer, as in the real server.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use acon::{Answer, Decoder, Engaged, LineEnding, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Listen backlog: a benchmark opens thousands of connections at once, and the default
/// (1024 in std/tokio) would drop SYNs and turn connects into one-second retransmits.
pub const BACKLOG: u32 = 4096;

/// The cells every answer engages: `(cell, code, minutes)`.
pub const FIXED_CELLS: [(u32, &str, u32); 2] = [(1, "1492", 4800), (2, "2805", 4800)];

/// Accept errors (usually out of file descriptors) are retried with a doubling pause; past
/// this pause the server gives up and returns the error.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(64);

/// Binds a listener the way the reference server wants it: `SO_REUSEADDR` and a backlog of
/// [`BACKLOG`]. Must be called inside a tokio runtime. Bind port 0 to get a free port.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves connections on `listener` until accepting keeps failing (see
/// [`MAX_ACCEPT_BACKOFF`]); each connection runs in its own task. Stop it by dropping the
/// future (or the runtime).
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    let mut backoff = Duration::from_millis(1);
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                backoff = Duration::from_millis(1);
                tokio::spawn(async move {
                    // A peer that resets or sends garbage only ends its own connection.
                    let _ = answer_connection(stream).await;
                });
            }
            Err(e) => {
                if backoff > MAX_ACCEPT_BACKOFF {
                    return Err(e);
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "reference server: accept failed");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
}

/// Answers every message on one connection, in order. All answers to the frames of one
/// read go out in one write.
async fn answer_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut decoder = Decoder::default();
    let mut out = Vec::with_capacity(512);
    // One answer reused for the connection's life: only the echoed fields change.
    let mut answer = Answer {
        version: String::new(),
        id: String::new(),
        send: 0,
        reset: false,
        block: false,
        cells: FIXED_CELLS
            .iter()
            .map(|&(cell, code, minutes)| Engaged {
                cell,
                code: code.to_string(),
                minutes,
            })
            .collect(),
        line_ending: LineEnding::Crlf,
    };
    loop {
        let buf = decoder.buffer_mut();
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            return Ok(());
        }
        let mut fatal = false;
        while let Some(frame) = decoder.next_frame() {
            match frame {
                Ok(frame) => {
                    if let Ok(message) = Message::parse(&frame.bytes) {
                        answer.version = message.version;
                        answer.id = message.id;
                        answer.send = message.send;
                        answer.line_ending = message.line_ending;
                        answer.encode(&mut out);
                    }
                }
                Err(e) => fatal |= e.is_fatal(),
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if fatal {
            return Ok(());
        }
    }
}
