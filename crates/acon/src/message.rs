//! The board's status message: typed fields, parsing from a frame and encoding back.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::decoder::trim;

/// Largest COLS or ROWS accepted. Today's boards are 8×8 at most; 64 leaves room.
pub const MAX_DIMENSION: u16 = 64;

/// Longest board ID accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The line ending a frame used. Answers use the ending of the message they answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEnding {
    #[default]
    Crlf,
    Lf,
}

impl LineEnding {
    pub fn as_str(self) -> &'static str {
        match self {
            LineEnding::Crlf => "\r\n",
            LineEnding::Lf => "\n",
        }
    }
}

/// `CONNECTION`: the link carrying the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum Connection {
    Wifi,
    Gsm,
    /// A value later firmware may send; kept as is.
    Other(u8),
}

impl From<u8> for Connection {
    fn from(v: u8) -> Self {
        match v {
            1 => Connection::Wifi,
            2 => Connection::Gsm,
            v => Connection::Other(v),
        }
    }
}

impl From<Connection> for u8 {
    fn from(c: Connection) -> u8 {
        match c {
            Connection::Wifi => 1,
            Connection::Gsm => 2,
            Connection::Other(v) => v,
        }
    }
}

/// `WIFI_STATE` / `GSM_STATE`: the state of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum LinkState {
    Ok,
    HardwareFault,
    NoAccessPoint,
    NoInternet,
    Other(u8),
}

impl From<u8> for LinkState {
    fn from(v: u8) -> Self {
        match v {
            0 => LinkState::Ok,
            1 => LinkState::HardwareFault,
            2 => LinkState::NoAccessPoint,
            3 => LinkState::NoInternet,
            v => LinkState::Other(v),
        }
    }
}

impl From<LinkState> for u8 {
    fn from(s: LinkState) -> u8 {
        match s {
            LinkState::Ok => 0,
            LinkState::HardwareFault => 1,
            LinkState::NoAccessPoint => 2,
            LinkState::NoInternet => 3,
            LinkState::Other(v) => v,
        }
    }
}

/// One code of the `STATE` list. The list may grow in later firmware: unknown codes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
pub enum StateCode {
    Normal,
    ShortCircuit,
    /// A wrong code was typed three times in a row.
    WrongCode,
    /// The board refuses every code because the server blocked it.
    Blocked,
    Unknown(u16),
}

impl From<u16> for StateCode {
    fn from(v: u16) -> Self {
        match v {
            0 => StateCode::Normal,
            1 => StateCode::ShortCircuit,
            2 => StateCode::WrongCode,
            3 => StateCode::Blocked,
            v => StateCode::Unknown(v),
        }
    }
}

impl From<StateCode> for u16 {
    fn from(s: StateCode) -> u16 {
        match s {
            StateCode::Normal => 0,
            StateCode::ShortCircuit => 1,
            StateCode::WrongCode => 2,
            StateCode::Blocked => 3,
            StateCode::Unknown(v) => v,
        }
    }
}

/// `ACT_CON`: which cells have a lock that answered the self-test. Serialised as the row
/// strings of the wire format (`["01011011", …]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Vec<String>", try_from = "Vec<String>")]
pub struct Matrix {
    cols: u16,
    rows: u16,
    bits: Vec<bool>,
}

impl Matrix {
    /// A matrix from its bits, row by row. `None` if the sizes disagree.
    pub fn new(cols: u16, rows: u16, bits: Vec<bool>) -> Option<Matrix> {
        (bits.len() == usize::from(cols) * usize::from(rows)).then_some(Matrix { cols, rows, bits })
    }

    pub fn cols(&self) -> u16 {
        self.cols
    }

    pub fn rows(&self) -> u16 {
        self.rows
    }

    /// Whether cell `cell` (numbered from 1) has a lock connected. `None` outside the matrix.
    pub fn connected(&self, cell: u32) -> Option<bool> {
        let index = usize::try_from(cell).ok()?.checked_sub(1)?;
        self.bits.get(index).copied()
    }

    /// The bits, cell 1 first.
    pub fn bits(&self) -> &[bool] {
        &self.bits
    }

    fn row_strings(&self) -> Vec<String> {
        let cols = usize::from(self.cols).max(1);
        self.bits
            .chunks(cols)
            .map(|row| row.iter().map(|&b| if b { '1' } else { '0' }).collect())
            .collect()
    }
}

impl From<Matrix> for Vec<String> {
    fn from(m: Matrix) -> Self {
        m.row_strings()
    }
}

impl TryFrom<Vec<String>> for Matrix {
    type Error = String;

    fn try_from(rows: Vec<String>) -> Result<Self, String> {
        let cols = rows.first().map_or(0, |r| r.len());
        let mut bits = Vec::with_capacity(cols * rows.len());
        for row in &rows {
            if row.len() != cols {
                return Err("ACT_CON rows differ in length".into());
            }
            for c in row.chars() {
                match c {
                    '0' => bits.push(false),
                    '1' => bits.push(true),
                    _ => return Err(format!("ACT_CON digit {c:?} is not 0 or 1")),
                }
            }
        }
        let cols = u16::try_from(cols).map_err(|_| "ACT_CON row too long".to_string())?;
        let n_rows =
            u16::try_from(rows.len()).map_err(|_| "ACT_CON has too many rows".to_string())?;
        Ok(Matrix {
            cols,
            rows: n_rows,
            bits,
        })
    }
}

/// A status message from a board.
///
/// Fields other than `ID` and `SEND` are optional: a board that leaves one out still gets its
/// answer. A field that is present must be well formed, or the whole frame is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The header line, e.g. `ACon_V1.0`; echoed in the answer.
    pub version: String,
    pub id: String,
    pub send: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wifi_state: Option<LinkState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsm_state: Option<LinkState>,
    /// `RESET=1`: the board has rebooted since its last message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Vec<StateCode>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_con: Option<Matrix>,
    /// Cells that have a code and time left (`0` on the wire = empty list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_eng: Option<Vec<u32>>,
    /// Cells whose time ran out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_to: Option<Vec<u32>>,
    /// Cells opened with their code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_acc: Option<Vec<u32>>,
    /// Keys this version does not know, in order, kept for the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<(String, String)>,
    #[serde(default)]
    pub line_ending: LineEnding,
}

/// Why a frame is not a valid message. Shown to operators: each says what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("frame is not valid UTF-8")]
    InvalidUtf8,
    #[error("frame does not start with an ACon_ header")]
    NoHeader,
    #[error("frame has no CLOSE line")]
    NoClose,
    #[error("required field {0} is missing")]
    Missing(&'static str),
    #[error("field {key} appears twice")]
    Duplicate { key: String },
    #[error("line {line:?} is not KEY=VALUE")]
    NotKeyValue { line: String },
    #[error("field {key}={value:?}: {reason}")]
    BadValue {
        key: &'static str,
        value: String,
        reason: String,
    },
}

fn bad(key: &'static str, value: &str, reason: impl Into<String>) -> ParseError {
    let mut value = value.to_string();
    if value.len() > 80 {
        let mut cut = 80;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
        value.push('…');
    }
    ParseError::BadValue {
        key,
        value,
        reason: reason.into(),
    }
}

fn parse_num<T: std::str::FromStr>(key: &'static str, value: &str) -> Result<T, ParseError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(key, value, "not a decimal number"));
    }
    value
        .parse()
        .map_err(|_| bad(key, value, "number out of range"))
}

fn parse_list<T: std::str::FromStr>(key: &'static str, value: &str) -> Result<Vec<T>, ParseError> {
    value
        .split(',')
        .map(|item| parse_num(key, item.trim()))
        .collect()
}

/// `BOX_*`: `0` alone means none; otherwise cell numbers from 1.
fn parse_cells(key: &'static str, value: &str) -> Result<Vec<u32>, ParseError> {
    if value == "0" {
        return Ok(Vec::new());
    }
    let cells: Vec<u32> = parse_list(key, value)?;
    if cells.contains(&0) {
        return Err(bad(key, value, "cell 0 in a list (0 alone means none)"));
    }
    Ok(cells)
}

fn parse_bit(key: &'static str, value: &str) -> Result<bool, ParseError> {
    match value {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(bad(key, value, "must be 0 or 1")),
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The board ID of a frame that does not parse, if one of its lines is a valid `ID=`: lets a
/// server file the malformed frame under the board that sent it. Looks at every line (the
/// frame may be broken anywhere), ignores surrounding spaces, and takes the first valid one.
pub fn sniff_id(frame: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(frame);
    text.lines().find_map(|l| {
        let (k, v) = l.trim().split_once('=')?;
        (k.trim() == "ID" && valid_id(v.trim())).then(|| v.trim().to_string())
    })
}

/// Whether `id` is a board ID this crate accepts: 1 to [`MAX_ID_LEN`] bytes of ASCII letters,
/// digits, `-`, `_` and `.`.
pub fn is_valid_id(id: &str) -> bool {
    valid_id(id)
}

/// The keys [`Message::parse`] reads; any other is kept in [`Message::extra`].
const KNOWN_KEYS: [&str; 13] = [
    "ID",
    "SEND",
    "CONNECTION",
    "WIFI_STATE",
    "GSM_STATE",
    "RESET",
    "STATE",
    "COLS",
    "ROWS",
    "ACT_CON",
    "BOX_ENG",
    "BOX_TO",
    "BOX_ACC",
];

/// One line of a frame, trimmed: as is when it is UTF-8, else decoded lossily (`lossy`).
struct Line<'a> {
    text: Cow<'a, str>,
    lossy: bool,
}

impl<'a> Line<'a> {
    fn read(raw: &'a [u8]) -> Line<'a> {
        match std::str::from_utf8(raw) {
            Ok(text) => Line {
                text: Cow::Borrowed(text.trim()),
                lossy: false,
            },
            Err(_) => Line {
                text: Cow::Owned(String::from_utf8_lossy(raw).trim().to_string()),
                lossy: true,
            },
        }
    }
}

impl Message {
    /// Parses one frame (as returned by the [`crate::Decoder`]).
    pub fn parse(frame: &[u8]) -> Result<Message, ParseError> {
        let line_ending = if frame.windows(2).any(|w| w == b"\r\n") {
            LineEnding::Crlf
        } else {
            LineEnding::Lf
        };
        // Line by line, so that invalid UTF-8 in an unknown key's line costs that line its
        // exact bytes, not the frame: such a line is read lossily (U+FFFD for each bad
        // sequence) and kept in `extra`; anywhere else it is an error, as below.
        let mut lines = frame
            .split(|&b| b == b'\n')
            .map(Line::read)
            .filter(|l| !l.text.is_empty());
        let version = match lines.next() {
            Some(h) if h.lossy => return Err(ParseError::InvalidUtf8),
            Some(h) if h.text.starts_with("ACon_") => h.text.into_owned(),
            _ => return Err(ParseError::NoHeader),
        };
        let mut m = Message {
            version,
            id: String::new(),
            send: 0,
            connection: None,
            wifi_state: None,
            gsm_state: None,
            reset: None,
            state: None,
            cols: None,
            rows: None,
            act_con: None,
            box_eng: None,
            box_to: None,
            box_acc: None,
            extra: Vec::new(),
            line_ending,
        };
        let mut id = None;
        let mut send = None;
        let mut act_con_raw: Option<String> = None;
        let mut closed = false;
        for line in lines {
            let lossy = line.lossy;
            let line: &str = &line.text;
            if closed {
                return Err(ParseError::NotKeyValue {
                    line: line.to_string(),
                });
            }
            if line == "CLOSE" {
                closed = true;
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(ParseError::NotKeyValue {
                    line: truncate(line),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            if lossy && KNOWN_KEYS.contains(&key) {
                // A known key's value must be read exactly: not UTF-8, the frame is malformed.
                return Err(ParseError::InvalidUtf8);
            }
            fn set<T>(slot: &mut Option<T>, key: &str, v: T) -> Result<(), ParseError> {
                if slot.is_some() {
                    return Err(ParseError::Duplicate {
                        key: key.to_string(),
                    });
                }
                *slot = Some(v);
                Ok(())
            }
            match key {
                "ID" => {
                    if !valid_id(value) {
                        return Err(bad(
                            "ID",
                            value,
                            "must be 1-64 letters, digits, '-', '_' or '.'",
                        ));
                    }
                    set(&mut id, key, value.to_string())?
                }
                "SEND" => set(&mut send, key, parse_num::<u64>("SEND", value)?)?,
                "CONNECTION" => set(
                    &mut m.connection,
                    key,
                    Connection::from(parse_num::<u8>("CONNECTION", value)?),
                )?,
                "WIFI_STATE" => set(
                    &mut m.wifi_state,
                    key,
                    LinkState::from(parse_num::<u8>("WIFI_STATE", value)?),
                )?,
                "GSM_STATE" => set(
                    &mut m.gsm_state,
                    key,
                    LinkState::from(parse_num::<u8>("GSM_STATE", value)?),
                )?,
                "RESET" => set(&mut m.reset, key, parse_bit("RESET", value)?)?,
                "STATE" => {
                    let codes = parse_list::<u16>("STATE", value)?;
                    set(
                        &mut m.state,
                        key,
                        codes.into_iter().map(StateCode::from).collect(),
                    )?
                }
                "COLS" => set(&mut m.cols, key, parse_dimension("COLS", value)?)?,
                "ROWS" => set(&mut m.rows, key, parse_dimension("ROWS", value)?)?,
                "ACT_CON" => set(&mut act_con_raw, key, value.to_string())?,
                "BOX_ENG" => set(&mut m.box_eng, key, parse_cells("BOX_ENG", value)?)?,
                "BOX_TO" => set(&mut m.box_to, key, parse_cells("BOX_TO", value)?)?,
                "BOX_ACC" => set(&mut m.box_acc, key, parse_cells("BOX_ACC", value)?)?,
                _ => {
                    if key.is_empty() {
                        return Err(ParseError::NotKeyValue {
                            line: truncate(line),
                        });
                    }
                    m.extra.push((key.to_string(), value.to_string()))
                }
            }
        }
        if !closed {
            return Err(ParseError::NoClose);
        }
        m.id = id.ok_or(ParseError::Missing("ID"))?;
        m.send = send.ok_or(ParseError::Missing("SEND"))?;
        if let Some(raw) = act_con_raw {
            m.act_con = Some(parse_matrix(&raw, m.cols, m.rows)?);
        }
        if let (Some(cols), Some(rows)) = (m.cols, m.rows) {
            let cells = u32::from(cols) * u32::from(rows);
            for (key, list) in [
                ("BOX_ENG", &m.box_eng),
                ("BOX_TO", &m.box_to),
                ("BOX_ACC", &m.box_acc),
            ] {
                if let Some(&cell) = list.iter().flatten().find(|&&c| c > cells) {
                    return Err(bad(
                        key,
                        &cell.to_string(),
                        format!("cell outside the {cols}×{rows} matrix (1..={cells})"),
                    ));
                }
            }
        }
        Ok(m)
    }

    /// The number of cells in the board's matrix, when it reported COLS and ROWS.
    pub fn cell_count(&self) -> Option<u32> {
        Some(u32::from(self.cols?) * u32::from(self.rows?))
    }

    /// Whether the STATE list holds `code`.
    pub fn has_state(&self, code: StateCode) -> bool {
        self.state.iter().flatten().any(|&c| c == code)
    }

    /// Encodes the message as a board would send it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let nl = self.line_ending.as_str();
        let mut s = String::with_capacity(256);
        let _ = write!(
            s,
            "{}{nl}ID={}{nl}SEND={}{nl}",
            self.version, self.id, self.send
        );
        if let Some(c) = self.connection {
            let _ = write!(s, "CONNECTION={}{nl}", u8::from(c));
        }
        if let Some(w) = self.wifi_state {
            let _ = write!(s, "WIFI_STATE={}{nl}", u8::from(w));
        }
        if let Some(g) = self.gsm_state {
            let _ = write!(s, "GSM_STATE={}{nl}", u8::from(g));
        }
        if let Some(r) = self.reset {
            let _ = write!(s, "RESET={}{nl}", u8::from(r));
        }
        if let Some(state) = &self.state {
            s.push_str("STATE=");
            join(&mut s, state.iter().map(|&c| u16::from(c)));
            s.push_str(nl);
        }
        if let Some(c) = self.cols {
            let _ = write!(s, "COLS={c}{nl}");
        }
        if let Some(r) = self.rows {
            let _ = write!(s, "ROWS={r}{nl}");
        }
        if let Some(m) = &self.act_con {
            s.push_str("ACT_CON=");
            s.push_str(&m.row_strings().join(","));
            s.push_str(nl);
        }
        for (key, list) in [
            ("BOX_ENG", &self.box_eng),
            ("BOX_TO", &self.box_to),
            ("BOX_ACC", &self.box_acc),
        ] {
            if let Some(list) = list {
                s.push_str(key);
                s.push('=');
                if list.is_empty() {
                    s.push('0');
                } else {
                    join(&mut s, list.iter().copied());
                }
                s.push_str(nl);
            }
        }
        for (k, v) in &self.extra {
            let _ = write!(s, "{k}={v}{nl}");
        }
        let _ = write!(s, "CLOSE{nl}");
        out.extend_from_slice(s.as_bytes());
    }
}

fn join<T: std::fmt::Display>(s: &mut String, items: impl Iterator<Item = T>) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{item}");
    }
}

fn truncate(line: &str) -> String {
    let mut cut = line.len().min(80);
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    line[..cut].to_string()
}

fn parse_dimension(key: &'static str, value: &str) -> Result<u16, ParseError> {
    let n: u16 = parse_num(key, value)?;
    if n == 0 || n > MAX_DIMENSION {
        return Err(bad(key, value, format!("must be 1..={MAX_DIMENSION}")));
    }
    Ok(n)
}

fn parse_matrix(raw: &str, cols: Option<u16>, rows: Option<u16>) -> Result<Matrix, ParseError> {
    let (Some(cols), Some(rows)) = (cols, rows) else {
        return Err(bad(
            "ACT_CON",
            raw,
            "COLS and ROWS are needed to read the matrix",
        ));
    };
    let groups: Vec<&str> = raw.split(',').map(str::trim).collect();
    if groups.len() != usize::from(rows) {
        return Err(bad(
            "ACT_CON",
            raw,
            format!("{} groups, ROWS={rows}", groups.len()),
        ));
    }
    let mut bits = Vec::with_capacity(usize::from(cols) * usize::from(rows));
    for (r, group) in groups.iter().enumerate() {
        if group.len() != usize::from(cols) {
            return Err(bad(
                "ACT_CON",
                raw,
                format!("group {} has {} digits, COLS={cols}", r + 1, group.len()),
            ));
        }
        for b in trim(group.as_bytes()) {
            match b {
                b'0' => bits.push(false),
                b'1' => bits.push(true),
                _ => return Err(bad("ACT_CON", raw, "digits must be 0 or 1")),
            }
        }
    }
    Ok(Matrix { cols, rows, bits })
}

#[cfg(test)]
mod sniff_tests {
    use super::*;

    #[test]
    fn the_id_of_a_malformed_frame_is_found_on_any_line() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (
                b"ACon_V1.0\r\nID=1953\r\nSEND=abc\r\nCLOSE\r\n",
                Some("1953"),
            ),
            (b"ACon_V1.0\nSEND=1\n  ID = b-7.x \nCLOSE\n", Some("b-7.x")),
            (b"ACon_V1.0\nSEND=1\nCLOSE\n", None),
            (b"ACon_V1.0\nID=\nID=bad id\nID=42\nCLOSE\n", Some("42")),
            (b"\xff\xfeID=9\n", None),
            (b"ID=9\n", Some("9")),
        ];
        for (raw, want) in cases {
            assert_eq!(
                sniff_id(raw).as_deref(),
                *want,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let long = format!("ID={}\n", "1".repeat(MAX_ID_LEN + 1));
        assert_eq!(sniff_id(long.as_bytes()), None);
    }
}

#[cfg(test)]
mod utf8_tests {
    use super::*;

    /// The spec keeps unknown keys; one that is not UTF-8 is kept too, decoded lossily, and
    /// the known keys of its frame are read as usual.
    #[test]
    fn invalid_utf8_in_an_unknown_key_keeps_the_frame() {
        let cases: &[(&[u8], (&str, &str))] = &[
            (b"FW=v2\xff\xfe", ("FW", "v2\u{fffd}\u{fffd}")),
            (b"N\xc3ME=x", ("N\u{fffd}ME", "x")),
            (b"  T\xe2\x82=\xe2\x82 ", ("T\u{fffd}", "\u{fffd}")),
        ];
        for (line, (key, value)) in cases {
            let mut frame = b"ACon_V1.0\r\nID=1953\r\nSEND=7\r\nRESET=1\r\n".to_vec();
            frame.extend_from_slice(line);
            frame.extend_from_slice(b"\r\nCOLS=2\r\nCLOSE\r\n");
            let m = Message::parse(&frame)
                .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(&frame)));
            assert_eq!((m.id.as_str(), m.send), ("1953", 7));
            assert_eq!((m.reset, m.cols), (Some(true), Some(2)));
            assert_eq!(m.line_ending, LineEnding::Crlf);
            assert_eq!(m.extra, vec![(key.to_string(), value.to_string())]);

            // What it kept encodes and parses back to itself.
            let mut out = Vec::new();
            m.encode(&mut out);
            assert_eq!(Message::parse(&out), Ok(m));
        }
    }

    #[test]
    fn invalid_utf8_in_a_known_key_or_the_header_is_still_an_error() {
        for frame in [
            &b"ACon_V1.0\nID=19\xff53\nSEND=7\nCLOSE\n"[..],
            b"ACon_V1.0\nID=1953\nSEND=7\nSTATE=0,\xff\nCLOSE\n",
            b"ACon_V1.0\nID=1953\nSEND=7\nBOX_ENG = 1\xc3 \nCLOSE\n",
            b"ACon_V1.\xff\nID=1953\nSEND=7\nCLOSE\n",
        ] {
            assert_eq!(
                Message::parse(frame),
                Err(ParseError::InvalidUtf8),
                "{:?}",
                String::from_utf8_lossy(frame)
            );
        }
    }

    #[test]
    fn a_line_that_is_not_utf8_and_not_key_value_is_still_an_error() {
        let frame = b"ACon_V1.0\nID=1953\nSEND=7\n\xff\xfe\nCLOSE\n";
        assert_eq!(
            Message::parse(frame),
            Err(ParseError::NotKeyValue {
                line: "\u{fffd}\u{fffd}".into()
            })
        );
    }
}
