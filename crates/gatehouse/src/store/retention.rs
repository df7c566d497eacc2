//! Retention: old messages and events are removed so that the database stops growing.
//!
//! A *pass* starts every [`Retention::every`] on the writer thread (which owns the only write
//! connection) and runs as small steps, each one transaction removing at most [`STEP_ROWS`]
//! rows, between the writer's normal commits. While units keep coming, a step starts only after
//! the writer has spent 19 times the last step's duration on other work, so answers never wait
//! behind more than one short step and a pass takes at most about 5 % of the writer's time
//! (docs/benchmarks.md: 0.92 of the throughput at 100 connections during a pass); when no unit
//! has come for 100 ms, steps run back to back.
//!
//! In order, a pass removes:
//! 1. messages older than `messages_max_age` (by the row's `at`), oldest first;
//! 2. events older than `events_max_age`;
//! 3. while the database's content (pages in use) is over `max_db_bytes`: the oldest messages,
//!    and only if no message is left to remove, the oldest events — down to 90 % of the cap.
//!
//! Never removed: a device's newest message (its head: it carries the device's last reported
//! state and last-seen time, read at start-up), and the newest event (so that event numbers
//! keep growing: SQLite reuses the largest rowid once it is deleted). Removing older messages
//! of a device is safe for its chain: a reader walking `prev_seq` back from the head stops at
//! the first row that is gone. Rows are visited in `seq` order; an age phase stops at the
//! first row younger than its cutoff (rows are written in time order; one written under a
//! clock set back waits for a later pass).
//!
//! Space: deleted rows' pages go to SQLite's free list and are reused by the next inserts, so
//! under retention the file stops growing at the size of the retained data (plus the WAL,
//! bounded by `journal_size_limit`); it does not shrink. Measured in docs/benchmarks.md.
//!
//! Each pass that removed anything records one `retention_pruned` event (server actor) with
//! the counts and the oldest and newest time removed.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::StoreResult;
use super::sqlite::db_err;
use crate::core::event::{Event, RecordedEvent, SERVER};

/// Most rows one step removes (one transaction).
pub const STEP_ROWS: usize = 1000;

/// What to keep. `None`: no limit of that kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    pub messages_max_age: Option<Duration>,
    pub events_max_age: Option<Duration>,
    /// The database's content (pages in use), bytes.
    pub max_db_bytes: Option<u64>,
    /// Between the starts of two passes.
    pub every: Duration,
}

impl Default for Retention {
    /// The defaults of `gatehouse serve`: messages 30 days, events 365 days, no size cap,
    /// a pass a minute.
    fn default() -> Self {
        Retention {
            messages_max_age: Some(Duration::from_secs(30 * 86_400)),
            events_max_age: Some(Duration::from_secs(365 * 86_400)),
            max_db_bytes: None,
            every: Duration::from_secs(60),
        }
    }
}

impl Retention {
    /// Nothing to do, ever.
    pub fn keeps_everything(&self) -> bool {
        self.messages_max_age.is_none()
            && self.events_max_age.is_none()
            && self.max_db_bytes.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AgeMessages,
    AgeEvents,
    SizeMessages,
    SizeEvents,
    Done,
}

/// A pass in progress.
#[derive(Debug)]
pub struct Pass {
    phase: Phase,
    now_ms: i64,
    cursor: i64,
    messages: u64,
    events: u64,
    oldest: Option<i64>,
    newest: Option<i64>,
    by_size: bool,
    /// Something was removed for its age.
    aged: bool,
    /// The cap could not be reached with what may be removed.
    cap_unreachable: bool,
}

/// What a finished pass removed.
#[derive(Debug)]
pub struct Outcome {
    pub messages: u64,
    pub events: u64,
    pub cap_unreachable: bool,
    /// The `retention_pruned` event to record, if anything was removed.
    pub event: Option<super::EventRecord>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Pages in use × page size.
pub fn content_bytes(conn: &Connection) -> StoreResult<u64> {
    let q = |p: &str| -> StoreResult<i64> {
        conn.pragma_query_value(None, p, |r| r.get(0))
            .map_err(db_err)
    };
    let used = q("page_count")? - q("freelist_count")?;
    Ok(u64::try_from(used.max(0) * q("page_size")?).unwrap_or(0))
}

impl Pass {
    pub fn new(now_ms: i64) -> Pass {
        Pass {
            phase: Phase::AgeMessages,
            now_ms,
            cursor: 0,
            messages: 0,
            events: 0,
            oldest: None,
            newest: None,
            by_size: false,
            aged: false,
            cap_unreachable: false,
        }
    }

    fn next_phase(&mut self) {
        self.cursor = 0;
        self.phase = match self.phase {
            Phase::AgeMessages => Phase::AgeEvents,
            Phase::AgeEvents => Phase::SizeMessages,
            Phase::SizeMessages => Phase::SizeEvents,
            Phase::SizeEvents | Phase::Done => Phase::Done,
        };
    }

    fn saw(&mut self, at: i64) {
        self.oldest = Some(self.oldest.map_or(at, |o| o.min(at)));
        self.newest = Some(self.newest.map_or(at, |n| n.max(at)));
    }

    /// Runs one step: at most [`STEP_ROWS`] rows removed in one transaction (none when a phase
    /// has nothing to do). `Some` when the pass is over. `heads` are the devices' newest
    /// messages, never removed.
    pub fn step(
        &mut self,
        conn: &mut Connection,
        policy: &Retention,
        heads: &HashMap<String, i64>,
    ) -> StoreResult<Option<Outcome>> {
        loop {
            let (table, cutoff) = match self.phase {
                Phase::Done => return Ok(Some(self.outcome())),
                Phase::AgeMessages => match policy.messages_max_age {
                    Some(age) => ("messages", Some(self.now_ms.saturating_sub(ms(age)))),
                    None => {
                        self.next_phase();
                        continue;
                    }
                },
                Phase::AgeEvents => match policy.events_max_age {
                    Some(age) => ("events", Some(self.now_ms.saturating_sub(ms(age)))),
                    None => {
                        self.next_phase();
                        continue;
                    }
                },
                Phase::SizeMessages | Phase::SizeEvents => {
                    let over = match policy.max_db_bytes {
                        // Down to 90 % of the cap, so that a pass is not needed per insert.
                        Some(cap) if self.by_size => content_bytes(conn)? > cap / 10 * 9,
                        Some(cap) => content_bytes(conn)? > cap,
                        None => false,
                    };
                    if !over {
                        self.phase = Phase::Done;
                        continue;
                    }
                    self.by_size = true;
                    let table = if self.phase == Phase::SizeMessages {
                        "messages"
                    } else {
                        "events"
                    };
                    (table, None)
                }
            };
            let removed = self.remove(conn, table, cutoff, heads)?;
            match removed {
                Some(0) => continue, // a phase ended without removing anything
                _ => return Ok(None),
            }
        }
    }

    /// One batch of `table` after the cursor: removes the rows older than `cutoff` (all, with
    /// no cutoff) except the protected ones. `Some(n)` when the phase ended (after removing
    /// `n`), `None` when there may be more.
    fn remove(
        &mut self,
        conn: &mut Connection,
        table: &str,
        cutoff: Option<i64>,
        heads: &HashMap<String, i64>,
    ) -> StoreResult<Option<u64>> {
        let messages = table == "messages";
        let tx = conn.transaction().map_err(db_err)?;
        let newest_event: i64 = if messages {
            0
        } else {
            tx.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))
                .map_err(db_err)?
        };
        let rows: Vec<(i64, Option<String>, i64)> = {
            let mut stmt = tx
                .prepare_cached(if messages {
                    "SELECT seq, device, at FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                } else {
                    "SELECT seq, device, at FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                })
                .map_err(db_err)?;
            stmt.query_map(params![self.cursor, STEP_ROWS as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(db_err)?
            .collect::<Result<_, _>>()
            .map_err(db_err)?
        };
        let mut ended = rows.len() < STEP_ROWS;
        let mut n = 0u64;
        {
            let mut del = tx
                .prepare_cached(if messages {
                    "DELETE FROM messages WHERE seq = ?1"
                } else {
                    "DELETE FROM events WHERE seq = ?1"
                })
                .map_err(db_err)?;
            for (seq, device, at) in &rows {
                self.cursor = *seq;
                if cutoff.is_some_and(|c| *at >= c) {
                    ended = true;
                    break;
                }
                let protected = if messages {
                    device
                        .as_ref()
                        .is_some_and(|d| heads.get(d).copied() == Some(*seq))
                } else {
                    *seq >= newest_event
                };
                if protected {
                    continue;
                }
                del.execute([seq]).map_err(db_err)?;
                n += 1;
                self.saw(*at);
            }
        }
        tx.commit().map_err(db_err)?;
        if cutoff.is_some() && n > 0 {
            self.aged = true;
        }
        if messages {
            self.messages += n;
        } else {
            self.events += n;
        }
        if ended {
            if self.phase == Phase::SizeEvents {
                // Everything removable is gone and the content is still over the cap.
                self.cap_unreachable = true;
                self.phase = Phase::Done;
            } else {
                self.next_phase();
            }
            return Ok(Some(n));
        }
        Ok(None)
    }

    fn outcome(&self) -> Outcome {
        let event = (self.messages + self.events > 0).then(|| {
            RecordedEvent {
                at: self.now_ms,
                device: None,
                actor: SERVER.into(),
                event: Event::RetentionPruned {
                    messages: self.messages,
                    events: self.events,
                    oldest_removed: self.oldest.map(crate::clock::rfc3339),
                    newest_removed: self.newest.map(crate::clock::rfc3339),
                    reason: match (self.by_size, self.aged) {
                        (true, true) => "age and size",
                        (true, false) => "size",
                        _ => "age",
                    }
                    .into(),
                },
                cause: None,
            }
            .record()
        });
        Outcome {
            messages: self.messages,
            events: self.events,
            cap_unreachable: self.cap_unreachable,
            event,
        }
    }
}
