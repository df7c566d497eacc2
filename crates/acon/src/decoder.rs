//! Framing: finds `ACon_…` … `CLOSE` frames in a byte stream.
//!
//! TCP gives no message boundaries: one read may hold half a frame or three. The decoder keeps
//! the bytes it has been given and hands out whole frames, one at a time, in order. It never
//! searches a byte twice for a line end (the scan position survives across reads) and never
//! allocates per line. Bytes outside a frame are noise and are skipped.

use thiserror::Error;

/// Default cap on one frame (header to CLOSE) and on one line of noise: 64 KiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// One complete frame, exactly as received from `ACon_` through `CLOSE`.
///
/// White space before the header and after `CLOSE` (including the CLOSE line's ending) is not
/// part of the frame: a board may send its final `CLOSE` without a line end, and the same bytes
/// must give the same frame however TCP happens to split them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Vec<u8>,
}

/// What can go wrong while framing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecoderError {
    /// A frame (or a run of noise without a line end) grew past the size limit. The stream
    /// cannot be resynchronised cheaply, so the connection should be closed.
    #[error("frame exceeds the {limit}-byte limit without a CLOSE line")]
    TooLarge { limit: usize },
    /// A header line started a new frame before the previous one was closed; the unclosed
    /// part is returned so it can be recorded. Decoding carries on with the new frame.
    #[error("frame not closed before the next ACon header")]
    Unterminated { bytes: Vec<u8> },
}

impl DecoderError {
    /// Whether the connection can carry on after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, DecoderError::TooLarge { .. })
    }
}

/// Incremental frame decoder. Feed bytes with [`Decoder::feed`] (or read straight into
/// [`Decoder::buffer_mut`]), then call [`Decoder::next_frame`] until it returns `None`.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the first line not yet examined.
    line_start: usize,
    /// Start of the frame being collected, if a header has been seen.
    frame_start: Option<usize>,
    /// How far the search for the end of the line at `line_start` has got: `buf[line_start..
    /// scanned]` holds no `\n`. Without it a long line trickled in one byte per read would be
    /// searched again on every read (quadratic time, a cheap way to burn the server's CPU).
    scanned: usize,
    max_frame: usize,
    /// Set after a fatal error: the decoder yields nothing more.
    failed: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder {
    pub fn new(max_frame: usize) -> Self {
        Decoder {
            buf: Vec::new(),
            line_start: 0,
            frame_start: None,
            scanned: 0,
            max_frame,
            failed: false,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The receive buffer, for reading from a socket without a copy (e.g. tokio's
    /// `read_buf`). Only append to it.
    pub fn buffer_mut(&mut self) -> &mut Vec<u8> {
        self.compact();
        &mut self.buf
    }

    /// Bytes held that are not yet part of a returned frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.frame_start.unwrap_or(self.line_start)
    }

    /// Whether a frame has been started (header seen) but not yet closed.
    pub fn in_frame(&self) -> bool {
        self.frame_start.is_some()
    }

    /// Drops the consumed prefix of the buffer once it is worth moving the rest.
    fn compact(&mut self) {
        let keep_from = self.frame_start.unwrap_or(self.line_start);
        if keep_from == 0 {
            return;
        }
        if keep_from == self.buf.len() {
            self.buf.clear();
        } else if keep_from >= 4096 || keep_from * 2 >= self.buf.len() {
            self.buf.drain(..keep_from);
        } else {
            return;
        }
        self.line_start -= keep_from;
        self.scanned = self.scanned.saturating_sub(keep_from);
        if let Some(start) = self.frame_start.as_mut() {
            *start -= keep_from;
        }
    }

    /// The next complete frame, an error, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, DecoderError>> {
        if self.failed {
            return None;
        }
        loop {
            if self.frame_start.is_none() {
                // Outside a frame only where a line's text starts matters: white space (blank
                // lines, the line end after a bare CLOSE) is dropped as it arrives, so it never
                // counts against the limit and a frame starts at its `ACon_`.
                self.line_start += leading_space(&self.buf[self.line_start..]);
            }
            let from = self.scanned.max(self.line_start);
            let Some(nl) = self.buf[from..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                return self.incomplete_line(from);
            };
            let line_end = from + nl + 1;
            let raw = &self.buf[self.line_start..line_end];
            let line = trim(raw);
            match self.frame_start {
                None => {
                    if line.starts_with(b"ACon_") {
                        self.frame_start = Some(self.line_start);
                    } else if line_end - self.line_start > self.max_frame {
                        return Some(Err(self.fail()));
                    }
                    self.line_start = line_end;
                }
                Some(start) => {
                    if line == b"CLOSE" {
                        let end = line_end - trailing_space(raw);
                        return Some(self.take_frame(start, end, line_end));
                    }
                    if line_end - start > self.max_frame {
                        return Some(Err(self.fail()));
                    }
                    if line.starts_with(b"ACon_") {
                        let bytes = self.buf[start..self.line_start].to_vec();
                        self.frame_start = Some(self.line_start + leading_space(raw));
                        self.line_start = line_end;
                        return Some(Err(DecoderError::Unterminated { bytes }));
                    }
                    self.line_start = line_end;
                }
            }
        }
    }

    /// No line end in the rest of the buffer: accept a final `CLOSE` without a line end (a
    /// board that waits for the answer would otherwise wait forever), enforce the limit.
    /// `buf[line_start..checked]` was seen by the previous call (and was no bare CLOSE).
    fn incomplete_line(&mut self, checked: usize) -> Option<Result<Frame, DecoderError>> {
        let end = self.buf.len();
        match self.frame_start {
            Some(start) => {
                let rest = &self.buf[self.line_start..];
                if let Some(close_len) = bare_close(rest, checked - self.line_start) {
                    let close_end = self.line_start + close_len;
                    return Some(self.take_frame(start, close_end, end));
                }
                if end - start > self.max_frame {
                    return Some(Err(self.fail()));
                }
            }
            None => {
                if end - self.line_start > self.max_frame {
                    return Some(Err(self.fail()));
                }
            }
        }
        None
    }

    /// Hands out `buf[start..end]` (`end` just after `CLOSE`) and goes on from `resume`, past
    /// the CLOSE line. The limit applies to the frame itself, so that whether a frame near the
    /// limit is accepted does not depend on where its line ending arrives.
    fn take_frame(
        &mut self,
        start: usize,
        end: usize,
        resume: usize,
    ) -> Result<Frame, DecoderError> {
        if end - start > self.max_frame {
            return Err(self.fail());
        }
        let bytes = self.buf[start..end].to_vec();
        self.frame_start = None;
        self.line_start = resume;
        Ok(Frame { bytes })
    }

    fn fail(&mut self) -> DecoderError {
        self.failed = true;
        self.buf = Vec::new();
        self.line_start = 0;
        self.scanned = 0;
        self.frame_start = None;
        DecoderError::TooLarge {
            limit: self.max_frame,
        }
    }
}

/// Whether the unfinished line `line` is `CLOSE` with white space around it, knowing that its
/// first `old` bytes were not: if so, the length of the line up to the end of `CLOSE`.
///
/// Plain `trim(line) == b"CLOSE"` would look at a long run of white space again on every read
/// when it arrives one byte at a time. This looks at the new bytes, and at a run of white space
/// only when a `CLOSE` has just been completed after it, so each byte is looked at a bounded
/// number of times.
fn bare_close(line: &[u8], old: usize) -> Option<usize> {
    let content_end = line.len() - trailing_space(&line[old..]);
    if content_end <= old {
        // Only white space arrived: the answer is still no.
        return None;
    }
    let before = line[..content_end].strip_suffix(b"CLOSE")?;
    (trailing_space(before) == before.len()).then_some(content_end)
}

/// Number of ASCII white-space bytes at the start of `s`.
fn leading_space(s: &[u8]) -> usize {
    s.iter().take_while(|b| b.is_ascii_whitespace()).count()
}

/// Number of ASCII white-space bytes at the end of `s`.
fn trailing_space(s: &[u8]) -> usize {
    s.iter()
        .rev()
        .take_while(|b| b.is_ascii_whitespace())
        .count()
}

/// Trims ASCII white space (including the CR of CRLF) from both ends.
pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(d: &mut Decoder) -> Vec<Result<Frame, DecoderError>> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn noise_is_skipped_and_frames_come_in_order() {
        let mut d = Decoder::default();
        d.feed(b"hello\r\nACon_V1.0\r\nID=1\r\nCLOSE\r\nxx\nACon_V1.0\nID=2\nCLOSE\n");
        let got = frames(&mut d);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].as_ref().unwrap().bytes,
            b"ACon_V1.0\r\nID=1\r\nCLOSE"
        );
        assert_eq!(got[1].as_ref().unwrap().bytes, b"ACon_V1.0\nID=2\nCLOSE");
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn close_without_line_end_completes_the_frame() {
        let mut d = Decoder::default();
        d.feed(b"ACon_V1.0\nID=1\nCLOSE");
        assert_eq!(frames(&mut d).len(), 1);
        d.feed(b"\r\n");
        assert!(frames(&mut d).is_empty());
    }

    #[test]
    fn header_before_close_reports_the_unterminated_part() {
        let mut d = Decoder::default();
        d.feed(b"ACon_V1.0\nID=1\nACon_V1.0\nID=2\nCLOSE\n");
        let got = frames(&mut d);
        assert_eq!(
            got[0],
            Err(DecoderError::Unterminated {
                bytes: b"ACon_V1.0\nID=1\n".to_vec()
            })
        );
        assert_eq!(got[1].as_ref().unwrap().bytes, b"ACon_V1.0\nID=2\nCLOSE");
    }

    #[test]
    fn oversized_frame_is_fatal() {
        let mut d = Decoder::new(1000);
        d.feed(b"ACon_V1.0\n");
        for _ in 0..100 {
            d.feed(b"X=0123456789\n");
        }
        let got = frames(&mut d);
        assert_eq!(got, vec![Err(DecoderError::TooLarge { limit: 1000 })]);
        assert!(got[0].as_ref().unwrap_err().is_fatal());
        d.feed(b"ACon_V1.0\nCLOSE\n");
        assert!(frames(&mut d).is_empty(), "nothing after a fatal error");
    }

    #[test]
    fn oversized_noise_without_line_end_is_fatal() {
        let mut d = Decoder::new(1000);
        d.feed(&[b'a'; 1001]);
        assert_eq!(
            frames(&mut d),
            vec![Err(DecoderError::TooLarge { limit: 1000 })]
        );
    }
}
