//! One virtual board's memory and rules, without I/O.
//!
//! The simulator's loop owns the socket and the clock; it asks a [`Board`] for the next
//! message, hands it every answer, and tells it when someone types a code. Each call returns
//! the [`Event`]s to print. Keeping the rules here makes them testable without a network.
//!
//! The rules, as a board follows them (`docs/protocol/acon.md`, "Message numbers and retries"):
//! - SEND goes up by one for every message, retries included; only an answer whose SEND is
//!   the latest message's is taken, once. Any other answer is late and ignored.
//! - A taken answer replaces the whole cell table with its `BOX_ENG` lines; minutes become
//!   an absolute expiry. A cell whose expiry passes leaves the table and goes to `BOX_TO`.
//! - Things the board has to report (`BOX_ACC`, `BOX_TO`, `STATE=2`, `RESET=1`) ride on every
//!   message, retries included, until the server has answered a message that carried them:
//!   - `BOX_ACC`: a cell stays until an answer to a message that carried it no longer lists
//!     it engaged, and rides on at most [`MAX_REPORTS`] messages. (A server that keeps the
//!     cell engaged after an opening gets the report three times, then no more.)
//!   - `BOX_TO`: a cell stays until an answer to a message that carried it, or until an
//!     answer engages the cell again, at most [`MAX_REPORTS`] messages.
//!   - `STATE=2` (three wrong codes in a row) and `RESET=1` (rebooted): until answered.
//! - An answer with `RESET=1` reboots the board: table and reports cleared, SEND back to 1,
//!   the next message says `RESET=1`. An answer with `STATE=3` blocks it: it reports
//!   `STATE=3` and refuses every code until an answer without it.
//! - Opening a cell does not change the table: the server says in its next answer whether
//!   the cell stays engaged.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use acon::{Answer, Connection, LineEnding, LinkState, Matrix, Message, StateCode};
use rand::RngExt;
use rand::rngs::SmallRng;
use tokio::time::Instant;

/// The most messages one opening or time-out report rides on.
pub(crate) const MAX_REPORTS: u8 = 3;
/// Wrong codes in a row that raise `STATE=2`.
const WRONG_CODES_FOR_ALARM: u8 = 3;
/// When a cell is engaged, the chance that a typed code is one of the right ones.
const RIGHT_CODE_CHANCE: f64 = 0.6;
/// Digits in a wrong code a visitor types.
const CODE_DIGITS: u32 = 4;

/// An engaged cell as the board holds it.
#[derive(Debug, Clone)]
struct Cell {
    code: String,
    expires: Instant,
}

/// What the latest message carried, kept until its answer comes.
#[derive(Debug, Clone)]
struct Awaiting {
    send: u64,
    reset: bool,
    wrong_code_alarm: bool,
    opened: Vec<u32>,
    timed_out: Vec<u32>,
}

/// Something the board did or saw; printed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Sent {
        send: u64,
        reset: bool,
        state: Vec<u16>,
        engaged: Vec<u32>,
        timed_out: Vec<u32>,
        opened: Vec<u32>,
    },
    Answered {
        send: u64,
        cells: Vec<u32>,
        reset: bool,
        block: bool,
    },
    Late {
        send: u64,
        latest: Option<u64>,
    },
    OtherBoard {
        id: String,
    },
    Rebooted,
    Blocked,
    Unblocked,
    TimedOut {
        cell: u32,
    },
    RightCode {
        cell: u32,
        code: String,
    },
    WrongCode {
        code: String,
        in_a_row: u8,
    },
    Refused {
        code: String,
    },
}

impl Event {
    /// The `Sent` event describing `message`.
    pub(crate) fn sent(message: &Message) -> Event {
        Event::Sent {
            send: message.send,
            reset: message.reset.unwrap_or(false),
            state: message
                .state
                .iter()
                .flatten()
                .map(|&c| u16::from(c))
                .collect(),
            engaged: message.box_eng.clone().unwrap_or_default(),
            timed_out: message.box_to.clone().unwrap_or_default(),
            opened: message.box_acc.clone().unwrap_or_default(),
        }
    }
}

/// A cell list as on the wire: `0` for none.
struct List<'a>(&'a [u32]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("0");
        }
        for (i, cell) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{cell}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Sent {
                send,
                reset,
                state,
                engaged,
                timed_out,
                opened,
            } => {
                let state: Vec<String> = state.iter().map(u16::to_string).collect();
                write!(
                    f,
                    "sent SEND={send} RESET={} STATE={} BOX_ENG={} BOX_TO={} BOX_ACC={}",
                    u8::from(*reset),
                    state.join(","),
                    List(engaged),
                    List(timed_out),
                    List(opened),
                )
            }
            Event::Answered {
                send,
                cells,
                reset,
                block,
            } => {
                write!(
                    f,
                    "got answer to SEND={send} with {} engaged cells",
                    cells.len()
                )?;
                if !cells.is_empty() {
                    write!(f, " ({})", List(cells))?;
                }
                if *reset {
                    f.write_str(", RESET=1")?;
                }
                if *block {
                    f.write_str(", STATE=3")?;
                }
                Ok(())
            }
            Event::Late {
                send,
                latest: Some(latest),
            } => {
                write!(
                    f,
                    "late answer to SEND={send} ignored (latest message is SEND={latest})"
                )
            }
            Event::Late { send, latest: None } => {
                write!(
                    f,
                    "answer to SEND={send} ignored (no message awaits an answer)"
                )
            }
            Event::OtherBoard { id } => write!(f, "answer for board ID={id} ignored"),
            Event::Rebooted => f.write_str(
                "rebooted: cell table cleared, SEND restarts at 1, next message has RESET=1",
            ),
            Event::Blocked => {
                f.write_str("blocked by the server: reporting STATE=3, refusing codes")
            }
            Event::Unblocked => f.write_str("unblocked by the server: accepting codes again"),
            Event::TimedOut { cell } => write!(f, "cell {cell} timed out: reporting it in BOX_TO"),
            Event::RightCode { cell, code } => {
                write!(f, "typed right code {code} for cell {cell}: opened")
            }
            Event::WrongCode { code, in_a_row } if *in_a_row >= WRONG_CODES_FOR_ALARM => {
                write!(
                    f,
                    "typed wrong code {code} ({in_a_row} in a row: STATE=2 on the next message)"
                )
            }
            Event::WrongCode { code, in_a_row } => {
                write!(f, "typed wrong code {code} ({in_a_row} in a row)")
            }
            Event::Refused { code } => write!(f, "typed code {code} while blocked: refused"),
        }
    }
}

/// What came of an answer.
#[derive(Debug)]
pub(crate) struct AnswerOutcome {
    pub events: Vec<Event>,
    /// The answer was the one awaited (its SEND and ID match the latest message).
    pub accepted: bool,
    /// The answer made the board reboot.
    pub rebooted: bool,
}

/// One virtual board: its fixed hardware and the state a real board keeps in RAM.
#[derive(Debug)]
pub(crate) struct Board {
    id: String,
    cols: u16,
    rows: u16,
    connection: Connection,
    wifi_state: LinkState,
    gsm_state: LinkState,
    /// `None` only if the matrix could not be built (it always can): ACT_CON is left out.
    act_con: Option<Matrix>,
    rng: SmallRng,
    next_send: u64,
    /// SEND of the latest message, for telling late answers apart.
    latest: Option<u64>,
    /// The latest message, while its answer has not come.
    awaiting: Option<Awaiting>,
    rebooted: bool,
    blocked: bool,
    table: BTreeMap<u32, Cell>,
    /// Opened cells still to report → messages that carried them.
    opened: BTreeMap<u32, u8>,
    /// Timed-out cells still to report → messages that carried them.
    timed_out: BTreeMap<u32, u8>,
    wrong_in_a_row: u8,
    wrong_code_alarm: bool,
}

impl Board {
    /// A board that has just powered on: its first message says `RESET=1`.
    pub(crate) fn new(id: String, cols: u16, rows: u16, mut rng: SmallRng) -> Board {
        let act_con = self_test(cols, rows, &mut rng);
        // Most boards are on Wi-Fi; one in five falls back to GSM for want of an access point.
        let (connection, wifi_state) = if rng.random_bool(0.2) {
            (Connection::Gsm, LinkState::NoAccessPoint)
        } else {
            (Connection::Wifi, LinkState::Ok)
        };
        Board {
            id,
            cols,
            rows,
            connection,
            wifi_state,
            gsm_state: LinkState::Ok,
            act_con,
            rng,
            next_send: 1,
            latest: None,
            awaiting: None,
            rebooted: true,
            blocked: false,
            table: BTreeMap::new(),
            opened: BTreeMap::new(),
            timed_out: BTreeMap::new(),
            wrong_in_a_row: 0,
            wrong_code_alarm: false,
        }
    }

    /// The board's random source, also used by the loop for its timing choices.
    pub(crate) fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// Moves cells whose time has run out from the table to the time-out reports.
    fn expire(&mut self, now: Instant) -> Vec<Event> {
        let expired: Vec<u32> = self
            .table
            .iter()
            .filter(|(_, c)| c.expires <= now)
            .map(|(&cell, _)| cell)
            .collect();
        expired
            .into_iter()
            .map(|cell| {
                self.table.remove(&cell);
                self.timed_out.insert(cell, 0);
                Event::TimedOut { cell }
            })
            .collect()
    }

    /// The next status message (a retry too: same rules, next SEND), and the time-outs
    /// noticed while building it.
    pub(crate) fn next_message(&mut self, now: Instant) -> (Message, Vec<Event>) {
        let events = self.expire(now);
        self.opened.retain(|_, carried| *carried < MAX_REPORTS);
        self.timed_out.retain(|_, carried| *carried < MAX_REPORTS);
        for carried in self.opened.values_mut().chain(self.timed_out.values_mut()) {
            *carried += 1;
        }
        let send = self.next_send;
        self.next_send += 1;
        self.latest = Some(send);
        let awaiting = Awaiting {
            send,
            reset: self.rebooted,
            wrong_code_alarm: self.wrong_code_alarm,
            opened: self.opened.keys().copied().collect(),
            timed_out: self.timed_out.keys().copied().collect(),
        };
        let mut state = Vec::new();
        if self.wrong_code_alarm {
            state.push(StateCode::WrongCode);
        }
        if self.blocked {
            state.push(StateCode::Blocked);
        }
        if state.is_empty() {
            state.push(StateCode::Normal);
        }
        let message = Message {
            version: "ACon_V1.0".to_string(),
            id: self.id.clone(),
            send,
            connection: Some(self.connection),
            wifi_state: Some(self.wifi_state),
            gsm_state: Some(self.gsm_state),
            reset: Some(self.rebooted),
            state: Some(state),
            cols: Some(self.cols),
            rows: Some(self.rows),
            act_con: self.act_con.clone(),
            box_eng: Some(self.table.keys().copied().collect()),
            box_to: Some(awaiting.timed_out.clone()),
            box_acc: Some(awaiting.opened.clone()),
            extra: Vec::new(),
            line_ending: LineEnding::Crlf,
        };
        self.awaiting = Some(awaiting);
        (message, events)
    }

    /// Takes an answer if it is the one awaited, and follows what it says.
    pub(crate) fn on_answer(&mut self, answer: &Answer, now: Instant) -> AnswerOutcome {
        let ignored = |event| AnswerOutcome {
            events: vec![event],
            accepted: false,
            rebooted: false,
        };
        if answer.id != self.id {
            return ignored(Event::OtherBoard {
                id: answer.id.clone(),
            });
        }
        let Some(awaiting) = self.awaiting.take_if(|a| a.send == answer.send) else {
            return ignored(Event::Late {
                send: answer.send,
                latest: self.latest,
            });
        };
        let mut events = vec![Event::Answered {
            send: answer.send,
            cells: answer.cells.iter().map(|e| e.cell).collect(),
            reset: answer.reset,
            block: answer.block,
        }];

        self.table = answer
            .cells
            .iter()
            .map(|e| {
                let expires = now + Duration::from_secs(u64::from(e.minutes) * 60);
                (
                    e.cell,
                    Cell {
                        code: e.code.clone(),
                        expires,
                    },
                )
            })
            .collect();
        if awaiting.reset {
            self.rebooted = false;
        }
        if awaiting.wrong_code_alarm {
            self.wrong_code_alarm = false;
        }
        for cell in &awaiting.opened {
            let still_engaged = self.table.contains_key(cell);
            if !still_engaged || self.opened.get(cell).is_some_and(|&n| n >= MAX_REPORTS) {
                self.opened.remove(cell);
            }
        }
        for cell in &awaiting.timed_out {
            self.timed_out.remove(cell);
        }
        self.timed_out
            .retain(|cell, _| !self.table.contains_key(cell));

        if answer.block != self.blocked {
            self.blocked = answer.block;
            events.push(if answer.block {
                Event::Blocked
            } else {
                Event::Unblocked
            });
        }
        if answer.reset {
            self.reboot();
            events.push(Event::Rebooted);
        }
        AnswerOutcome {
            events,
            accepted: true,
            rebooted: answer.reset,
        }
    }

    /// Power cycle: RAM is lost, the self-test runs again.
    fn reboot(&mut self) {
        self.act_con = self_test(self.cols, self.rows, &mut self.rng);
        self.next_send = 1;
        self.latest = None;
        self.awaiting = None;
        self.rebooted = true;
        self.blocked = false;
        self.table.clear();
        self.opened.clear();
        self.timed_out.clear();
        self.wrong_in_a_row = 0;
        self.wrong_code_alarm = false;
    }

    /// Someone types a code on the keypad: a right one for a random engaged cell (when there
    /// is one, most of the time), otherwise a wrong one.
    pub(crate) fn type_code(&mut self, now: Instant) -> Vec<Event> {
        let mut events = self.expire(now);
        let right = if !self.table.is_empty() && self.rng.random_bool(RIGHT_CODE_CHANCE) {
            let index = self.rng.random_range(0..self.table.len());
            self.table
                .iter()
                .nth(index)
                .map(|(&cell, c)| (cell, c.code.clone()))
        } else {
            None
        };
        let code = match &right {
            Some((_, code)) => code.clone(),
            None => self.wrong_code(),
        };
        events.push(self.enter(code, right.map(|(cell, _)| cell)));
        events
    }

    /// A code that opens no engaged cell.
    fn wrong_code(&mut self) -> String {
        loop {
            let code = format!(
                "{:0width$}",
                self.rng.random_range(0..10u32.pow(CODE_DIGITS)),
                width = CODE_DIGITS as usize
            );
            if !self.table.values().any(|c| c.code == code) {
                return code;
            }
        }
    }

    /// The keypad logic: `cell` is the engaged cell the code belongs to, if any.
    fn enter(&mut self, code: String, cell: Option<u32>) -> Event {
        if self.blocked {
            return Event::Refused { code };
        }
        match cell {
            Some(cell) => {
                self.wrong_in_a_row = 0;
                self.opened.insert(cell, 0);
                Event::RightCode { cell, code }
            }
            None => {
                self.wrong_in_a_row += 1;
                let in_a_row = self.wrong_in_a_row;
                if in_a_row >= WRONG_CODES_FOR_ALARM {
                    self.wrong_code_alarm = true;
                    self.wrong_in_a_row = 0;
                }
                Event::WrongCode { code, in_a_row }
            }
        }
    }
}

/// The lock self-test: every lock answers but one or two, picked at random.
fn self_test(cols: u16, rows: u16, rng: &mut SmallRng) -> Option<Matrix> {
    let n = usize::from(cols) * usize::from(rows);
    let mut bits = vec![true; n];
    let missing = if n > 1 && rng.random_bool(0.5) { 2 } else { 1 };
    for _ in 0..missing.min(n) {
        let i = rng.random_range(0..n);
        bits[i] = false;
    }
    // cols*rows bits by construction, so `new` does not refuse them.
    Matrix::new(cols, rows, bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use acon::Engaged;
    use rand::SeedableRng;

    fn board() -> Board {
        Board::new("1000".into(), 8, 8, SmallRng::seed_from_u64(7))
    }

    fn answer(send: u64, cells: &[(u32, &str, u32)]) -> Answer {
        Answer {
            version: "ACon_V1.0".into(),
            id: "1000".into(),
            send,
            reset: false,
            block: false,
            cells: cells
                .iter()
                .map(|&(cell, code, minutes)| Engaged {
                    cell,
                    code: code.into(),
                    minutes,
                })
                .collect(),
            line_ending: LineEnding::Crlf,
        }
    }

    /// Round trip through the wire format, as the server would see it.
    fn sent(b: &mut Board, now: Instant) -> Message {
        let (m, _) = b.next_message(now);
        let mut bytes = Vec::new();
        m.encode(&mut bytes);
        assert!(bytes.ends_with(b"CLOSE\r\n"));
        Message::parse(&bytes).unwrap()
    }

    #[test]
    fn first_message_is_a_full_crlf_message_with_reset() {
        let mut b = board();
        let m = sent(&mut b, Instant::now());
        assert_eq!(
            (m.send, m.reset, m.cols, m.rows),
            (1, Some(true), Some(8), Some(8))
        );
        assert_eq!(m.state, Some(vec![StateCode::Normal]));
        assert_eq!(
            (m.box_eng, m.box_to, m.box_acc),
            (Some(vec![]), Some(vec![]), Some(vec![]))
        );
        let off = m.act_con.unwrap().bits().iter().filter(|b| !**b).count();
        assert!((1..=2).contains(&off), "{off} locks disconnected");
        assert_eq!(m.line_ending, LineEnding::Crlf);
    }

    #[test]
    fn answer_replaces_table_and_late_answers_are_ignored() {
        let mut b = board();
        let now = Instant::now();
        sent(&mut b, now);
        let out = b.on_answer(&answer(1, &[(2, "1111", 10), (5, "2222", 10)]), now);
        assert!(out.accepted);
        let m = sent(&mut b, now);
        assert_eq!((m.send, m.reset), (2, Some(false)));
        assert_eq!(m.box_eng, Some(vec![2, 5]));
        // A retry (no answer to 2) then the answer to 2 arrives: late, ignored.
        let m = sent(&mut b, now);
        assert_eq!(m.send, 3);
        let out = b.on_answer(&answer(2, &[]), now);
        assert!(!out.accepted);
        assert_eq!(
            out.events,
            vec![Event::Late {
                send: 2,
                latest: Some(3)
            }]
        );
        // The answer to 3 replaces the whole table; a second copy of it is ignored.
        assert!(b.on_answer(&answer(3, &[(7, "3333", 1)]), now).accepted);
        assert!(!b.on_answer(&answer(3, &[]), now).accepted);
        assert_eq!(sent(&mut b, now).box_eng, Some(vec![7]));
    }

    #[test]
    fn expired_cells_go_to_box_to_until_answered() {
        let mut b = board();
        let now = Instant::now();
        sent(&mut b, now);
        b.on_answer(&answer(1, &[(3, "1234", 1), (4, "5678", 10)]), now);
        let later = now + Duration::from_secs(61);
        let (m, events) = b.next_message(later);
        assert_eq!(events, vec![Event::TimedOut { cell: 3 }]);
        assert_eq!(
            (m.box_eng, m.box_to.clone()),
            (Some(vec![4]), Some(vec![3]))
        );
        b.on_answer(&answer(m.send, &[(4, "5678", 9)]), later);
        assert_eq!(sent(&mut b, later).box_to, Some(vec![]));
    }

    #[test]
    fn an_opening_is_reported_until_the_answer_drops_the_cell() {
        let mut b = board();
        let now = Instant::now();
        sent(&mut b, now);
        b.on_answer(&answer(1, &[(9, "4321", 10)]), now);
        assert_eq!(
            b.enter("4321".into(), Some(9)),
            Event::RightCode {
                cell: 9,
                code: "4321".into()
            }
        );
        let m = sent(&mut b, now);
        assert_eq!(m.box_acc, Some(vec![9]));
        // No answer: the retry carries it again.
        let m = sent(&mut b, now);
        assert_eq!(m.box_acc, Some(vec![9]));
        b.on_answer(&answer(m.send, &[]), now);
        assert_eq!(sent(&mut b, now).box_acc, Some(vec![]));
    }

    #[test]
    fn an_opening_is_reported_at_most_three_times() {
        let mut b = board();
        let now = Instant::now();
        sent(&mut b, now);
        b.on_answer(&answer(1, &[(9, "4321", 10)]), now);
        b.enter("4321".into(), Some(9));
        for _ in 0..MAX_REPORTS {
            let m = sent(&mut b, now);
            assert_eq!(m.box_acc, Some(vec![9]));
            // The server keeps the cell engaged.
            b.on_answer(&answer(m.send, &[(9, "4321", 10)]), now);
        }
        assert_eq!(sent(&mut b, now).box_acc, Some(vec![]));
    }

    #[test]
    fn an_answer_to_an_older_message_does_not_end_an_opening_report() {
        let mut b = board();
        let now = Instant::now();
        let m = sent(&mut b, now);
        b.on_answer(&answer(m.send, &[(9, "4321", 10)]), now);
        let m = sent(&mut b, now);
        b.enter("4321".into(), Some(9)); // typed while SEND=2 awaits its answer
        b.on_answer(&answer(m.send, &[]), now); // the server dropped the cell meanwhile
        assert_eq!(sent(&mut b, now).box_acc, Some(vec![9]));
    }

    #[test]
    fn three_wrong_codes_raise_state_2_until_answered() {
        let mut b = board();
        let now = Instant::now();
        for n in 1..=3 {
            assert_eq!(
                b.enter("0000".into(), None),
                Event::WrongCode {
                    code: "0000".into(),
                    in_a_row: n
                }
            );
        }
        let m = sent(&mut b, now);
        assert_eq!(m.state, Some(vec![StateCode::WrongCode]));
        b.on_answer(&answer(m.send, &[]), now);
        assert_eq!(sent(&mut b, now).state, Some(vec![StateCode::Normal]));
    }

    #[test]
    fn a_right_code_breaks_the_wrong_streak() {
        let mut b = board();
        b.enter("0000".into(), None);
        b.enter("0000".into(), None);
        b.enter("1111".into(), Some(1));
        assert_eq!(
            b.enter("0000".into(), None),
            Event::WrongCode {
                code: "0000".into(),
                in_a_row: 1
            }
        );
    }

    #[test]
    fn reset_reboots_and_block_refuses_codes() {
        let mut b = board();
        let now = Instant::now();
        let m = sent(&mut b, now);
        let mut a = answer(m.send, &[(1, "1111", 10)]);
        a.block = true;
        let out = b.on_answer(&a, now);
        assert!(out.events.contains(&Event::Blocked));
        assert_eq!(
            b.enter("1111".into(), Some(1)),
            Event::Refused {
                code: "1111".into()
            }
        );
        let m = sent(&mut b, now);
        assert_eq!(
            (m.state, m.box_acc),
            (Some(vec![StateCode::Blocked]), Some(vec![]))
        );

        let mut a = answer(m.send, &[(1, "1111", 10)]);
        a.reset = true;
        let out = b.on_answer(&a, now);
        assert!(out.rebooted);
        assert_eq!(out.events.last(), Some(&Event::Rebooted));
        assert!(out.events.contains(&Event::Unblocked));
        let m = sent(&mut b, now);
        assert_eq!((m.send, m.reset, m.box_eng), (1, Some(true), Some(vec![])));
        // An answer to the pre-reboot SEND is late.
        assert!(!b.on_answer(&answer(2, &[]), now).accepted);
        assert!(b.on_answer(&answer(1, &[]), now).accepted);
        assert_eq!(sent(&mut b, now).reset, Some(false));
    }

    #[test]
    fn typing_picks_engaged_cells_and_wrong_codes_differ_from_right_ones() {
        let mut b = board();
        let now = Instant::now();
        sent(&mut b, now);
        b.on_answer(&answer(1, &[(1, "1111", 10), (2, "2222", 10)]), now);
        for _ in 0..200 {
            match b.type_code(now).pop() {
                Some(Event::RightCode { cell, code }) => {
                    assert_eq!(code, if cell == 1 { "1111" } else { "2222" })
                }
                Some(Event::WrongCode { code, .. }) => {
                    assert!(code != "1111" && code != "2222" && code.len() == 4)
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn events_read_well() {
        let e = Event::Sent {
            send: 4,
            reset: false,
            state: vec![0],
            engaged: vec![2, 5],
            timed_out: vec![],
            opened: vec![5],
        };
        assert_eq!(
            e.to_string(),
            "sent SEND=4 RESET=0 STATE=0 BOX_ENG=2,5 BOX_TO=0 BOX_ACC=5"
        );
        let e = Event::Answered {
            send: 4,
            cells: vec![2],
            reset: false,
            block: true,
        };
        assert_eq!(
            e.to_string(),
            "got answer to SEND=4 with 1 engaged cells (2), STATE=3"
        );
    }
}
