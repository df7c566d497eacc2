//! The rules for ACon boards: what a status message changes, which events it causes, and
//! what the board is answered. Pure: the caller passes the time and persists the result.
//!
//! Counting rules (the protocol cannot tell a retry from a repeat, so they are edges):
//! - **Opening**: a cell is counted as opened when it is in `BOX_ACC` and was not in the
//!   `BOX_ACC` of the board's previous message. A retry (SEND+1, same list) is therefore one
//!   opening, and a cell reported in two consecutive messages is one opening.
//! - **Timed out** (`BOX_TO`), **short circuit** (`STATE` 1), **wrong code** (`STATE` 2): an
//!   event when the cell/code appears, not again while it stays.
//! - **Reboot**: `RESET=1`, unless the previous message also had `RESET=1` and this one's SEND
//!   is the previous SEND + 1 (that is a retry of the same report).
//! - **Lock self-test**: an event per cell whose `ACT_CON` bit changed since the previous
//!   message of the same matrix size.

use std::collections::BTreeMap;

use acon::{Answer, Engaged, Message, StateCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// One engaged cell: its code, when it stops working, and whether the first opening ends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub code: String,
    /// Unix milliseconds.
    pub expires_at: i64,
    pub single_use: bool,
    pub assigned_at: i64,
    pub assigned_by: String,
}

impl Assignment {
    /// Whole minutes left, rounded up, at least 1 (the wire's rule). `None` once expired.
    pub fn minutes_left(&self, now: i64) -> Option<u32> {
        let left = self.expires_at - now;
        if left <= 0 {
            return None;
        }
        let minutes = (left + 59_999) / 60_000;
        Some(u32::try_from(minutes).unwrap_or(u32::MAX).max(1))
    }
}

/// What the server wants of the board: the ACon board's desired config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Send `RESET=1` until the board reports it has rebooted.
    pub pending_reset: bool,
    /// Send `STATE=3` while set.
    pub blocked: bool,
    pub cells: BTreeMap<u32, Assignment>,
}

/// What the board last told us, plus what the server derived from it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    /// The latest well-formed message. Not in the device row: it is the device's newest row
    /// of the messages table, restored from there at start-up.
    #[serde(skip)]
    pub message: Option<Message>,
    /// The peer of the latest message (restored like `message`).
    #[serde(skip)]
    pub peer: Option<String>,
    /// When each cell was last counted as opened (Unix ms).
    #[serde(default)]
    pub last_opened: BTreeMap<u32, i64>,
    /// Cells whose assignment ran out on the server's clock and was not renewed.
    #[serde(default)]
    pub expired: BTreeMap<u32, i64>,
    #[serde(default)]
    pub reboots: u64,
    /// Matrix size given by an operator before the board reported one.
    #[serde(default)]
    pub provisioned_size: Option<(u16, u16)>,
}

/// An event the rules produced: kind, details.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleEvent {
    pub kind: &'static str,
    pub data: serde_json::Value,
}

fn ev(kind: &'static str, data: serde_json::Value) -> RuleEvent {
    RuleEvent { kind, data }
}

fn list(l: &Option<Vec<u32>>) -> &[u32] {
    l.as_deref().unwrap_or(&[])
}

/// A board's desired config and reported state, with the rules that change them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoardState {
    pub desired: Desired,
    pub desired_version: i64,
    pub reported: Reported,
}

impl BoardState {
    /// (cols, rows) of the matrix, from the last message or from provisioning.
    pub fn size(&self) -> Option<(u16, u16)> {
        match &self.reported.message {
            Some(Message {
                cols: Some(c),
                rows: Some(r),
                ..
            }) => Some((*c, *r)),
            _ => self.reported.provisioned_size,
        }
    }

    pub fn cell_count(&self) -> Option<u32> {
        self.size().map(|(c, r)| u32::from(c) * u32::from(r))
    }

    /// Drops assignments whose time has run out; one event each.
    pub fn expire(&mut self, now: i64) -> Vec<RuleEvent> {
        let gone: Vec<u32> = self
            .desired
            .cells
            .iter()
            .filter(|(_, a)| a.expires_at <= now)
            .map(|(&c, _)| c)
            .collect();
        let mut events = Vec::new();
        for cell in gone {
            if let Some(a) = self.desired.cells.remove(&cell) {
                self.reported.expired.insert(cell, a.expires_at);
                events.push(ev(
                    "assignment_expired",
                    json!({"cell": cell, "code": a.code, "expires_at": crate::clock::rfc3339(a.expires_at)}),
                ));
            }
        }
        if !events.is_empty() {
            self.desired_version += 1;
        }
        events
    }

    /// Applies a well-formed message from the board: updates the reported state, ends what
    /// the message ends, and returns the events it caused. Call [`BoardState::answer`] after.
    ///
    /// Invariant: every change besides `reported.message` and `reported.peer` comes with at
    /// least one event, so the core persists the device row exactly when events are returned.
    pub fn on_message(&mut self, msg: &Message, peer: &str, now: i64) -> Vec<RuleEvent> {
        let mut events = Vec::new();
        let prev = self.reported.message.take();
        let prev_acc = prev.as_ref().map(|p| list(&p.box_acc)).unwrap_or(&[]);
        let prev_to = prev.as_ref().map(|p| list(&p.box_to)).unwrap_or(&[]);
        let mut desired_changed = false;

        // Reboot, and the end of a pending reset.
        if msg.reset == Some(true) {
            let retry = prev
                .as_ref()
                .is_some_and(|p| p.reset == Some(true) && p.send.checked_add(1) == Some(msg.send));
            if !retry {
                self.reported.reboots += 1;
                events.push(ev("rebooted", json!({"send": msg.send})));
            }
            if self.desired.pending_reset {
                self.desired.pending_reset = false;
                desired_changed = true;
                events.push(ev("reset_done", json!({"send": msg.send})));
            }
        }

        // Openings (edge-counted); a single-use assignment ends with its opening.
        for &cell in list(&msg.box_acc) {
            if prev_acc.contains(&cell) {
                continue;
            }
            self.reported.last_opened.insert(cell, now);
            let assignment = self.desired.cells.get(&cell).cloned();
            events.push(ev(
                "cell_opened",
                json!({"cell": cell, "code": assignment.as_ref().map(|a| &a.code)}),
            ));
            if let Some(a) = assignment.filter(|a| a.single_use) {
                self.desired.cells.remove(&cell);
                desired_changed = true;
                events.push(ev(
                    "assignment_ended",
                    json!({"cell": cell, "code": a.code, "reason": "single-use cell opened"}),
                ));
            }
        }

        for &cell in list(&msg.box_to) {
            if !prev_to.contains(&cell) {
                events.push(ev("cell_timed_out", json!({"cell": cell})));
            }
        }

        for (code, kind) in [
            (StateCode::ShortCircuit, "short_circuit"),
            (StateCode::WrongCode, "wrong_code"),
        ] {
            if msg.has_state(code) && !prev.as_ref().is_some_and(|p| p.has_state(code)) {
                events.push(ev(kind, json!({"send": msg.send})));
            }
        }

        // Lock self-test changes.
        if let (Some(new), Some(old)) =
            (&msg.act_con, prev.as_ref().and_then(|p| p.act_con.as_ref()))
        {
            if new.cols() == old.cols() && new.rows() == old.rows() {
                for (i, (&now_on, &was_on)) in new.bits().iter().zip(old.bits()).enumerate() {
                    if now_on != was_on {
                        let kind = if now_on {
                            "lock_connected"
                        } else {
                            "lock_disconnected"
                        };
                        events.push(ev(kind, json!({"cell": i + 1})));
                    }
                }
            } else {
                events.push(ev(
                    "matrix_changed",
                    json!({"from": [old.cols(), old.rows()], "to": [new.cols(), new.rows()]}),
                ));
            }
        }

        if desired_changed {
            self.desired_version += 1;
        }
        self.reported.message = Some(msg.clone());
        self.reported.peer = Some(peer.to_string());
        events.extend(self.expire(now));
        events
    }

    /// The answer to `msg`: echo header, ID, SEND and line ending; the current desired config.
    pub fn answer(&self, msg: &Message, now: i64) -> Answer {
        Answer {
            version: msg.version.clone(),
            id: msg.id.clone(),
            send: msg.send,
            reset: self.desired.pending_reset,
            block: self.desired.blocked,
            cells: self
                .desired
                .cells
                .iter()
                .filter_map(|(&cell, a)| {
                    a.minutes_left(now).map(|minutes| Engaged {
                        cell,
                        code: a.code.clone(),
                        minutes,
                    })
                })
                .collect(),
            line_ending: msg.line_ending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(send: u64, extra: &str) -> Message {
        let text = format!("ACon_V1.0\nID=7\nSEND={send}\nCOLS=2\nROWS=2\n{extra}CLOSE\n");
        Message::parse(text.as_bytes()).unwrap()
    }

    fn kinds(events: &[RuleEvent]) -> Vec<&str> {
        events.iter().map(|e| e.kind).collect()
    }

    fn engage(b: &mut BoardState, cell: u32, code: &str, expires_at: i64, single_use: bool) {
        b.desired.cells.insert(
            cell,
            Assignment {
                code: code.into(),
                expires_at,
                single_use,
                assigned_at: 0,
                assigned_by: "test".into(),
            },
        );
    }

    #[test]
    fn minutes_are_rounded_up_and_at_least_one() {
        let a = Assignment {
            code: "1".into(),
            expires_at: 120_000,
            single_use: false,
            assigned_at: 0,
            assigned_by: "t".into(),
        };
        assert_eq!(a.minutes_left(0), Some(2));
        assert_eq!(a.minutes_left(1), Some(2));
        assert_eq!(a.minutes_left(60_001), Some(1));
        assert_eq!(a.minutes_left(119_999), Some(1));
        assert_eq!(a.minutes_left(120_000), None);
    }

    #[test]
    fn an_opening_retried_with_send_plus_one_counts_once() {
        let mut b = BoardState::default();
        engage(&mut b, 3, "1492", 10_000_000, false);
        assert!(kinds(&b.on_message(&msg(1, "BOX_ACC=0\n"), "p", 0)).is_empty());
        assert_eq!(
            kinds(&b.on_message(&msg(2, "BOX_ACC=3\n"), "p", 1)),
            ["cell_opened"]
        );
        assert!(kinds(&b.on_message(&msg(3, "BOX_ACC=3\n"), "p", 2)).is_empty());
        assert!(kinds(&b.on_message(&msg(4, "BOX_ACC=0\n"), "p", 3)).is_empty());
        assert_eq!(
            kinds(&b.on_message(&msg(5, "BOX_ACC=3\n"), "p", 4)),
            ["cell_opened"]
        );
        assert_eq!(b.reported.last_opened.get(&3), Some(&4));
    }

    #[test]
    fn single_use_assignment_ends_when_opened() {
        let mut b = BoardState::default();
        engage(&mut b, 1, "11", 10_000_000, true);
        engage(&mut b, 2, "22", 10_000_000, false);
        let m = msg(1, "BOX_ACC=1,2\n");
        assert_eq!(
            kinds(&b.on_message(&m, "p", 0)),
            ["cell_opened", "assignment_ended", "cell_opened"]
        );
        let cells: Vec<u32> = b.answer(&m, 0).cells.iter().map(|e| e.cell).collect();
        assert_eq!(cells, [2]);
        assert_eq!(b.desired_version, 1);
    }

    #[test]
    fn reset_is_sent_until_the_board_reports_it_and_a_retry_is_not_a_second_reboot() {
        let mut b = BoardState {
            desired: Desired {
                pending_reset: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let m = msg(10, "RESET=0\n");
        b.on_message(&m, "p", 0);
        assert!(b.answer(&m, 0).reset);
        let m = msg(1, "RESET=1\n");
        assert_eq!(kinds(&b.on_message(&m, "p", 0)), ["rebooted", "reset_done"]);
        assert!(!b.answer(&m, 0).reset);
        assert!(kinds(&b.on_message(&msg(2, "RESET=1\n"), "p", 0)).is_empty());
        assert_eq!(
            kinds(&b.on_message(&msg(1, "RESET=1\n"), "p", 0)),
            ["rebooted"]
        );
        assert_eq!(b.reported.reboots, 2);
    }

    #[test]
    fn state_codes_and_lock_changes_are_edges() {
        let mut b = BoardState::default();
        b.on_message(&msg(1, "STATE=0\nACT_CON=11,11\n"), "p", 0);
        let e = b.on_message(&msg(2, "STATE=1,2\nACT_CON=10,11\n"), "p", 0);
        assert_eq!(
            kinds(&e),
            ["short_circuit", "wrong_code", "lock_disconnected"]
        );
        assert_eq!(e[2].data["cell"], 2);
        assert!(kinds(&b.on_message(&msg(3, "STATE=1,2\nACT_CON=10,11\n"), "p", 0)).is_empty());
        assert_eq!(
            kinds(&b.on_message(&msg(4, "STATE=0\nACT_CON=11,11\n"), "p", 0)),
            ["lock_connected"]
        );
    }

    #[test]
    fn expired_assignments_are_not_sent() {
        let mut b = BoardState::default();
        engage(&mut b, 1, "11", 1000, false);
        engage(&mut b, 2, "22", 100_000, false);
        let m = msg(1, "");
        assert_eq!(kinds(&b.on_message(&m, "p", 1000)), ["assignment_expired"]);
        let a = b.answer(&m, 1000);
        assert_eq!(
            a.cells,
            vec![Engaged {
                cell: 2,
                code: "22".into(),
                minutes: 2
            }]
        );
        assert!(b.reported.expired.contains_key(&1));
    }
}
