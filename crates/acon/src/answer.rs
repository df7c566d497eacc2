//! The server's answer: the full list of engaged cells, a reboot or a block command.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::message::{LineEnding, ParseError};

/// One `BOX_ENG=(cell,code,minutes)` line: an engaged cell, its code and the minutes left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engaged {
    pub cell: u32,
    pub code: String,
    pub minutes: u32,
}

/// An answer to one message. The board replaces its whole cell table with `cells`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The header of the message answered (`ACon_V1.0`).
    pub version: String,
    pub id: String,
    /// The SEND of the message answered: the board ignores answers with another number.
    pub send: u64,
    /// `RESET=1`: reboot.
    pub reset: bool,
    /// `STATE=3`: refuse every code.
    pub block: bool,
    pub cells: Vec<Engaged>,
    pub line_ending: LineEnding,
}

impl Answer {
    /// Appends the answer's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let nl = self.line_ending.as_str();
        let mut s = String::with_capacity(64 + self.cells.len() * 24);
        let _ = write!(
            s,
            "{}{nl}ID={}{nl}SEND={}{nl}RESET={}{nl}STATE={}{nl}",
            self.version,
            self.id,
            self.send,
            u8::from(self.reset),
            if self.block { 3 } else { 0 },
        );
        for e in &self.cells {
            let _ = write!(s, "BOX_ENG=({},{},{}){nl}", e.cell, e.code, e.minutes);
        }
        let _ = write!(s, "CLOSE{nl}");
        out.extend_from_slice(s.as_bytes());
    }

    /// Parses an answer frame (for the simulator and the load generator, which play the board).
    pub fn parse(frame: &[u8]) -> Result<Answer, ParseError> {
        let text = std::str::from_utf8(frame).map_err(|_| ParseError::InvalidUtf8)?;
        let line_ending = if text.contains("\r\n") {
            LineEnding::Crlf
        } else {
            LineEnding::Lf
        };
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let version = match lines.next() {
            Some(h) if h.starts_with("ACon_") => h.to_string(),
            _ => return Err(ParseError::NoHeader),
        };
        let (mut id, mut send, mut reset, mut block) = (None, None, false, false);
        let mut cells = Vec::new();
        let mut closed = false;
        for line in lines {
            if line == "CLOSE" {
                closed = true;
                break;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(ParseError::NotKeyValue {
                    line: line.to_string(),
                });
            };
            let bad = |key: &'static str, reason: &str| ParseError::BadValue {
                key,
                value: value.to_string(),
                reason: reason.to_string(),
            };
            match key.trim() {
                "ID" => id = Some(value.trim().to_string()),
                "SEND" => {
                    send = Some(
                        value
                            .trim()
                            .parse()
                            .map_err(|_| bad("SEND", "not a number"))?,
                    )
                }
                "RESET" => reset = value.trim() == "1",
                "STATE" => block = value.trim() == "3",
                "BOX_ENG" => {
                    let inner = value
                        .trim()
                        .strip_prefix('(')
                        .and_then(|v| v.strip_suffix(')'))
                        .ok_or_else(|| bad("BOX_ENG", "expected (cell,code,minutes)"))?;
                    let mut parts = inner.split(',').map(str::trim);
                    let (Some(cell), Some(code), Some(minutes), None) =
                        (parts.next(), parts.next(), parts.next(), parts.next())
                    else {
                        return Err(bad("BOX_ENG", "expected (cell,code,minutes)"));
                    };
                    cells.push(Engaged {
                        cell: cell.parse().map_err(|_| bad("BOX_ENG", "bad cell"))?,
                        code: code.to_string(),
                        minutes: minutes.parse().map_err(|_| bad("BOX_ENG", "bad minutes"))?,
                    });
                }
                _ => {}
            }
        }
        if !closed {
            return Err(ParseError::NoClose);
        }
        Ok(Answer {
            version,
            id: id.ok_or(ParseError::Missing("ID"))?,
            send: send.ok_or(ParseError::Missing("SEND"))?,
            reset,
            block,
            cells,
            line_ending,
        })
    }
}
