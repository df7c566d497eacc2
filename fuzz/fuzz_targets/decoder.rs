//! Fuzzes the whole receive path: bytes in chunks → `Decoder` → `Message::parse` /
//! `Answer::parse`.
//!
//! The first input byte picks the chunk size, the rest is the stream. Besides "no panic", it
//! checks what must hold for any input:
//! - no frame is longer than the limit, and nothing comes out after a fatal error;
//! - what a parser accepts encodes to bytes that parse back to the same value;
//! - the chunked stream gives the same frames and errors as the whole stream fed at once,
//!   unless a line starts with `CLOSE` and goes on with more text: cut right after `CLOSE`,
//!   such a line ends the frame (a board may send its last `CLOSE` without a line end), so
//!   for it the result depends on the cut, by design.

#![no_main]

use acon::{Answer, Decoder, DecoderError, Frame, Message};
use libfuzzer_sys::fuzz_target;

/// Small, so that inputs of a few hundred bytes reach the limit.
const MAX_FRAME: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 32) + 1;

    let chunked = decode(stream.chunks(chunk));
    for frame in chunked.iter().flatten() {
        assert!(frame.bytes.len() <= MAX_FRAME, "frame over the limit");
        check_parsers(&frame.bytes);
    }
    check_parsers(stream);

    if !has_close_prefixed_line(stream) {
        assert_eq!(chunked, decode([stream]), "chunk size {chunk}");
    }
});

/// Feeds the pieces one by one, collecting everything the decoder yields.
fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Result<Frame, DecoderError>> {
    let mut d = Decoder::new(MAX_FRAME);
    let mut out: Vec<Result<Frame, DecoderError>> = Vec::new();
    for piece in pieces {
        d.feed(piece);
        let failed = out
            .last()
            .is_some_and(|r| r.as_ref().is_err_and(DecoderError::is_fatal));
        while let Some(item) = d.next_frame() {
            assert!(!failed, "output after a fatal error");
            out.push(item);
        }
    }
    out
}

fn check_parsers(bytes: &[u8]) {
    if let Ok(m) = Message::parse(bytes) {
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(Message::parse(&out), Ok(m), "message re-encoded as {out:?}");
    }
    if let Ok(a) = Answer::parse(bytes) {
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(Answer::parse(&out), Ok(a), "answer re-encoded as {out:?}");
    }
}

/// Whether some line is `CLOSE` followed by more text (white space around it aside).
fn has_close_prefixed_line(stream: &[u8]) -> bool {
    stream.split(|&b| b == b'\n').any(|line| {
        let line = line.trim_ascii();
        line.starts_with(b"CLOSE") && line != b"CLOSE"
    })
}
