//! Socket helpers shared by the tools: reading whole frames through the `acon` decoder and
//! retrying connects with backoff.

use std::io;
use std::time::Duration;

use acon::{Decoder, DecoderError, Frame};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, ToSocketAddrs};

/// How much room to make in the decoder's buffer before each read. Answers and messages are a
/// few hundred bytes; this keeps one read per frame without holding much per connection.
const READ_RESERVE: usize = 2048;

/// Reads until the decoder has a frame (or a framing error) and returns it.
///
/// Cancel safe: the only await is `read_buf`, and bytes already read stay in the decoder, so
/// this can sit in a `select!` next to a timer.
pub(crate) async fn next_frame(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
) -> io::Result<Result<Frame, DecoderError>> {
    loop {
        if let Some(frame) = decoder.next_frame() {
            return Ok(frame);
        }
        let buf = decoder.buffer_mut();
        buf.reserve(READ_RESERVE);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the peer",
            ));
        }
    }
}

/// Connects with `TCP_NODELAY`, giving up on one attempt after `timeout`.
pub(crate) async fn connect(addr: impl ToSocketAddrs, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
