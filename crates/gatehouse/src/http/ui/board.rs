//! An ACon board's page: its cells laid out `COLS`×`ROWS` as the board numbers them (row by
//! row from the top left, cell `r × COLS + c + 1`), what each one holds, and how far every
//! change has got between the server and the board. Tapping a cell opens its panel (a
//! `<dialog>` that `assets/board.js` opens once htmx has loaded it), with the forms to engage
//! or release it; the board-wide forms (reset, block, unblock) are under the grid.
//!
//! What the protocol lets the page know, and so what "sent" and "reported" mean here. ACon is
//! request/answer: the server never speaks first, and every answer carries the whole table of
//! engaged cells. So a change is:
//! - **waiting** until the board sends a message: it goes out in the answer to that message;
//! - **sent** once an answer recorded after the change carried it (the page reads the answers
//!   from the message history, exactly as they were written to the socket). Nothing says
//!   whether the board took that answer (a late one is ignored by the board);
//! - **reported** once a later message of the board shows it: the cell in `BOX_ENG`, `STATE`
//!   holding 3 for a block. The board reports which cells are engaged, never their codes or
//!   minutes: "reported" is the cell listed after an answer carried its code, not proof that
//!   the board holds that code;
//! - **not listed** when the board's messages after the answer do not list the cell: it did
//!   not take the answer, or the cell timed out or was opened on the board since.
//!
//! Invariants:
//! - Read only: the board and its cells come from the core's snapshots, the answers from the
//!   store's message history; every change the page offers is an `/api` call (`console.js`).
//! - The grid's live fragment (`/devices/acon/{id}/grid`) and the cell panel's
//!   (`…/cells/{cell}/state`) are rendered by the templates the page and the panel include,
//!   so a refresh and a reload agree. While something is waiting, sent or not listed, they
//!   also poll (every [`POLL_SECS`] s): a board's message that changes nothing else is not an
//!   event, so the live stream does not announce it.
//! - Forms are rendered only for a role that may make the call (`Nav::operate`); a viewer
//!   sees the grid and the panels with no form.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use ::acon::{Answer, Message, StateCode};

use super::{Nav, ago, html, nav};
use crate::clock::{now_ms, rfc3339};
use crate::core::acon::board_key;
use crate::core::{BoardSnapshot, CellSnapshot};
use crate::http::AppState;
use crate::store::StoredMessage;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/devices/acon/{id}", get(board_page))
        .route("/devices/acon/{id}/grid", get(board_grid))
        .route("/devices/acon/{id}/cells/{cell}", get(cell_panel))
        .route("/devices/acon/{id}/cells/{cell}/state", get(cell_state))
}

/// How many of the board's newest messages the page reads to tell sent from reported. A
/// change older than all of them is shown as sent "in every answer since" the oldest.
pub const HISTORY: u32 = 32;
/// How often the live parts poll while a change is on its way (the stream does not announce
/// a message that changes nothing else).
pub const POLL_SECS: u32 = 3;
/// An opening this recent (ms) marks its cell as "opened recently".
pub const RECENT_MS: i64 = 10 * 60_000;

/// One message of the history, oldest first: its answer as sent, and (for the newest only)
/// the message parsed.
struct Exchange {
    at: i64,
    send: Option<i64>,
    answer: Option<Answer>,
    message: Option<Message>,
}

/// The board's newest messages, oldest first. `full`: there may be older ones.
#[derive(Default)]
struct History {
    exchanges: Vec<Exchange>,
    full: bool,
}

impl History {
    fn of(mut stored: Vec<StoredMessage>, limit: u32) -> History {
        let full = stored.len() >= limit as usize;
        stored.reverse();
        let n = stored.len();
        let exchanges = stored
            .into_iter()
            .enumerate()
            .map(|(i, m)| Exchange {
                at: m.record.at,
                send: m.record.send,
                answer: Answer::parse(m.record.answer.as_bytes()).ok(),
                message: (i + 1 == n)
                    .then(|| serde_json::from_str::<Message>(&m.record.parsed).ok())
                    .flatten(),
            })
            .collect();
        History { exchanges, full }
    }

    fn newest(&self) -> Option<&Exchange> {
        self.exchanges.last()
    }

    /// How far a change has got: `since` is when it was made, `carries` whether an answer
    /// carried it, `listed` whether a message shows it. The answers that carry it are the
    /// unbroken run ending with the newest one (the server sends a change in every answer
    /// while it holds); the first of that run is the one that "sent" it.
    fn delivery(
        &self,
        since: i64,
        carries: impl Fn(&Answer) -> bool,
        listed: impl Fn(&Message) -> bool,
    ) -> Delivery {
        let run = self
            .exchanges
            .iter()
            .rev()
            .take_while(|e| e.at >= since && e.answer.as_ref().is_some_and(&carries))
            .count();
        if run == 0 {
            return Delivery::Waiting;
        }
        let first = self.exchanges.len() - run;
        let sent = &self.exchanges[first];
        let sent = Sent {
            send: sent.send,
            at: sent.at,
            or_earlier: first == 0 && self.full,
        };
        if run == 1 {
            return Delivery::Sent(sent);
        }
        let Some(newest) = self.newest() else {
            return Delivery::Sent(sent);
        };
        if newest.message.as_ref().is_some_and(listed) {
            Delivery::Reported(sent, newest.send)
        } else {
            Delivery::NotListed(sent, newest.send)
        }
    }
}

/// The answer that first carried a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    send: Option<i64>,
    at: i64,
    /// The history read does not go back far enough to see the first one.
    or_earlier: bool,
}

/// How far a change has got (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Waiting,
    Sent(Sent),
    /// Sent, and the board's newest message (its SEND) shows it.
    Reported(Sent, Option<i64>),
    /// Sent, and the board's newest message (its SEND) does not show it.
    NotListed(Sent, Option<i64>),
}

fn send_text(s: Option<i64>) -> String {
    s.map_or_else(|| "?".into(), |s| s.to_string())
}

impl Delivery {
    /// A class for the mark: `waiting`, `sent`, `reported`, `unlisted`.
    fn class(self) -> &'static str {
        match self {
            Delivery::Waiting => "waiting",
            Delivery::Sent(_) => "sent",
            Delivery::Reported(..) => "reported",
            Delivery::NotListed(..) => "unlisted",
        }
    }

    /// A short word for the grid and the panel's heading.
    fn word(self) -> &'static str {
        match self {
            Delivery::Waiting => "waiting for the board",
            Delivery::Sent(_) => "sent to the board",
            Delivery::Reported(..) => "reported by the board",
            Delivery::NotListed(..) => "not listed by the board",
        }
    }

    /// Whether the page should poll: the next message of the board changes what it shows.
    fn moving(self) -> bool {
        !matches!(self, Delivery::Reported(..))
    }

    fn sent_text(s: Sent, now: i64) -> String {
        if s.or_earlier {
            format!(
                "in every answer since SEND {} ({}) or earlier",
                send_text(s.send),
                ago(s.at, now)
            )
        } else {
            format!(
                "with the answer to SEND {} ({})",
                send_text(s.send),
                ago(s.at, now)
            )
        }
    }

    /// What is known, in a sentence, for a cell's code (`what` = "the code") or the block.
    fn explain(self, what: &str, shows: &str, now: i64) -> String {
        match self {
            Delivery::Waiting => {
                format!("Not sent yet: {what} goes out in the answer to the board's next message.")
            }
            Delivery::Sent(s) => format!(
                "Sent {}. The board's next message will tell whether it took it.",
                Self::sent_text(s, now)
            ),
            Delivery::Reported(s, newest) => format!(
                "Sent {}; the board's message SEND {} {shows}.",
                Self::sent_text(s, now),
                send_text(newest)
            ),
            Delivery::NotListed(s, newest) => format!(
                "Sent {}, but the board's message SEND {} does not show it: the board did not take that answer, or it changed on the board since.",
                Self::sent_text(s, now),
                send_text(newest)
            ),
        }
    }
}

/// A time to the minute, in UTC: `2026-12-01 22:42 UTC`.
fn minute_text(ms: i64) -> String {
    let t = rfc3339(ms);
    match (t.get(..10), t.get(11..16)) {
        (Some(day), Some(hm)) => format!("{day} {hm} UTC"),
        _ => t,
    }
}

/// An engaged cell as the page shows it.
struct EngagedView {
    code: String,
    /// Unix ms of the expiry (the countdown's `data-until`).
    until: i64,
    until_text: String,
    minutes_left: u32,
    single_use: bool,
    assigned_by: String,
    assigned_ago: String,
    /// An id naming this assignment (cell and time), so a revealed code stays revealed
    /// across refreshes of the same assignment (`hx-preserve`) and not past it.
    reveal_id: String,
    delivery_class: &'static str,
    delivery_word: &'static str,
    delivery_text: String,
}

/// One cell of the grid or of a panel.
struct CellView {
    cell: u32,
    row: u32,
    col: u32,
    /// `Some(true)`: a lock is connected; `Some(false)`: none; `None`: not reported.
    lock: Option<bool>,
    engaged: Option<EngagedView>,
    timed_out: bool,
    opened_recently: bool,
    last_opened: Option<String>,
    /// The board's newest message lists the cell in `BOX_ENG` while the server does not
    /// engage it (released, expired or ended, and the board has not taken that yet).
    stale_on_board: bool,
    /// Engaged, but the board reports no lock on the cell.
    fault: bool,
    /// The classes of the cell's button: its states.
    classes: String,
    /// Its accessible name: the number and every state, in words.
    label: String,
    /// The short state under the number in the grid.
    short: &'static str,
    /// Something about this cell changes with the board's next message.
    moving: bool,
}

fn cell_view(c: CellSnapshot, h: &History, now: i64) -> CellView {
    let newest = h.newest().and_then(|e| e.message.as_ref());
    let listed_now =
        newest.is_some_and(|m| m.box_eng.as_deref().is_some_and(|l| l.contains(&c.cell)));
    let engaged = c.engaged.as_ref().map(|e| {
        let cell = c.cell;
        let code = e.code.clone();
        let d = h.delivery(
            e.assigned_at,
            |a| a.cells.iter().any(|x| x.cell == cell && x.code == code),
            |m| m.box_eng.as_deref().is_some_and(|l| l.contains(&cell)),
        );
        EngagedView {
            code: e.code.clone(),
            until: e.expires_at,
            until_text: minute_text(e.expires_at),
            minutes_left: e.minutes_left,
            single_use: e.single_use,
            assigned_by: e.assigned_by.clone(),
            assigned_ago: ago(e.assigned_at, now),
            reveal_id: format!("code-{}-{}", c.cell, e.assigned_at),
            delivery_class: d.class(),
            delivery_word: d.word(),
            delivery_text: d.explain(
                "the code",
                "lists the cell engaged (boards report cells, not codes)",
                now,
            ),
        }
    });
    let stale_on_board = engaged.is_none() && listed_now;
    let opened_recently = c.last_opened.is_some_and(|t| now - t < RECENT_MS);
    let fault = engaged.is_some() && c.lock_connected == Some(false);
    let mut classes = vec![];
    let mut words = vec![format!("Cell {}", c.cell)];
    let short = match &engaged {
        Some(e) => {
            classes.push("engaged");
            classes.push(e.delivery_class);
            words.push(format!(
                "engaged, {} minutes left, {}",
                e.minutes_left, e.delivery_word
            ));
            if e.single_use {
                words.push("single use".into());
            }
            ""
        }
        None if c.timed_out => {
            classes.push("timedout");
            words.push("timed out".into());
            "timed out"
        }
        None => {
            classes.push("free");
            ""
        }
    };
    if stale_on_board {
        classes.push("stale");
        words.push("the board still lists it engaged".into());
    }
    if opened_recently {
        classes.push("opened");
        words.push("opened recently".into());
    }
    match c.lock_connected {
        Some(false) => {
            classes.push("nolock");
            words.push("no lock connected".into());
        }
        Some(true) => words.push("lock connected".into()),
        None => {}
    }
    if fault {
        classes.push("fault");
        words.push("fault: engaged, but no lock is connected".into());
    }
    let moving = stale_on_board
        || engaged
            .as_ref()
            .is_some_and(|e| e.delivery_class != "reported");
    CellView {
        cell: c.cell,
        row: c.row + 1,
        col: c.col + 1,
        lock: c.lock_connected,
        engaged,
        timed_out: c.timed_out,
        opened_recently,
        last_opened: c.last_opened.map(|t| ago(t, now)),
        stale_on_board,
        fault,
        classes: classes.join(" "),
        label: words.join("; "),
        short: if opened_recently && short.is_empty() && c.engaged.is_none() {
            "opened"
        } else {
            short
        },
        moving,
    }
}

/// The board-wide part of the live fragment: presence, the last message, the block and the
/// reset with how far they have got, what the board's `STATE` says.
struct BoardView {
    id: String,
    key: String,
    name: String,
    online: bool,
    last_message: Option<String>,
    peer: Option<String>,
    /// `COLS×ROWS`, once known.
    size: Option<String>,
    engaged: usize,
    reboots: u64,
    blocked: bool,
    /// How far the block has got, in a sentence (`None` when not blocked).
    block_text: Option<String>,
    block_class: &'static str,
    /// The board reports itself blocked while the server does not block it.
    board_still_blocked: bool,
    reset_text: Option<String>,
    short_circuit: bool,
    wrong_code: bool,
    moving: bool,
}

fn board_view(b: &BoardSnapshot, h: &History, now: i64) -> BoardView {
    let newest = h.newest();
    let msg = newest.and_then(|e| e.message.as_ref());
    let reports_blocked = msg.is_some_and(|m| m.has_state(StateCode::Blocked));
    let block = b
        .blocked
        .then(|| h.delivery(i64::MIN, |a| a.block, |m| m.has_state(StateCode::Blocked)));
    let reset = b
        .pending_reset
        .then(|| h.delivery(i64::MIN, |a| a.reset, |m| m.reset == Some(true)));
    BoardView {
        id: b.device.id.clone(),
        key: board_key(&b.device.id),
        name: b.device.name.clone(),
        online: b.device.online,
        last_message: newest.map(|e| format!("SEND {}, {}", send_text(e.send), ago(e.at, now))),
        peer: b.held_by.clone().or_else(|| b.reported.peer.clone()),
        size: b.cols.zip(b.rows).map(|(c, r)| format!("{c}×{r}")),
        engaged: b.engaged_cells,
        reboots: b.reported.reboots,
        blocked: b.blocked,
        block_text: block.map(|d| {
            d.explain(
                "STATE=3",
                "reports the keypad blocked (STATE 3)",
                now,
            )
        }),
        block_class: block.map_or("", Delivery::class),
        board_still_blocked: !b.blocked && reports_blocked,
        reset_text: reset.map(|d| match d {
            Delivery::Waiting => "Reset requested: RESET=1 goes out in the answer to the board's next message, until the board reports a reboot.".to_string(),
            Delivery::Sent(s) | Delivery::Reported(s, _) | Delivery::NotListed(s, _) => format!(
                "Reset requested: RESET=1 sent {}; it is sent again until the board reports a reboot (RESET=1).",
                Delivery::sent_text(s, now)
            ),
        }),
        short_circuit: msg.is_some_and(|m| m.has_state(StateCode::ShortCircuit)),
        wrong_code: msg.is_some_and(|m| m.has_state(StateCode::WrongCode)),
        moving: block.is_some_and(Delivery::moving)
            || b.pending_reset
            || (!b.blocked && reports_blocked),
    }
}

/// The page: the live fragment's fields (it includes `board_grid.html`), the board-wide
/// forms, the cells' dialog.
#[derive(Template)]
#[template(path = "board.html")]
struct BoardPage {
    nav: Option<Nav>,
    id: String,
    found: bool,
    board: Option<BoardView>,
    rows: Vec<Vec<CellView>>,
    poll: bool,
    poll_secs: u32,
}

/// The live fragment: the board's state and its grid.
#[derive(Template)]
#[template(path = "board_grid.html")]
struct BoardLive {
    board: Option<BoardView>,
    rows: Vec<Vec<CellView>>,
    poll: bool,
    poll_secs: u32,
}

/// A cell's panel: the live part's fields (it includes `board_cell.html`) and the forms.
#[derive(Template)]
#[template(path = "board_panel.html")]
struct CellPanel {
    nav: Option<Nav>,
    id: String,
    c: CellView,
    poll_secs: u32,
}

/// The live part of a cell's panel.
#[derive(Template)]
#[template(path = "board_cell.html")]
struct CellLive {
    nav: Option<Nav>,
    id: String,
    c: CellView,
    poll_secs: u32,
}

async fn history(s: &AppState, id: &str) -> History {
    match s.hub.store().messages(board_key(id), HISTORY).await {
        Ok(m) => History::of(m, HISTORY),
        Err(e) => {
            // The grid still shows what the core knows; every change then reads "waiting".
            tracing::warn!(error = %e, board = id, "the board page could not read the board's messages");
            History::default()
        }
    }
}

/// The board and its grid, from the core's snapshots and the store's answers; `None` when
/// there is no such board.
async fn live(s: &AppState, id: &str) -> Option<BoardLive> {
    let now = now_ms();
    let b = s.hub.acon_board(id)?;
    let cells = s.hub.acon_cells(id, now).ok()?;
    let h = history(s, id).await;
    let board = board_view(&b, &h, now);
    let cols = usize::from(b.cols.unwrap_or(1).max(1));
    let mut rows: Vec<Vec<CellView>> = Vec::new();
    for c in cells {
        let v = cell_view(c, &h, now);
        match rows.last_mut() {
            Some(r) if r.len() < cols => r.push(v),
            _ => rows.push(vec![v]),
        }
    }
    let poll = board.moving || rows.iter().flatten().any(|c| c.moving);
    Some(BoardLive {
        board: Some(board),
        rows,
        poll,
        poll_secs: POLL_SECS,
    })
}

async fn board_page(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let live = live(&s, &id).await;
    let found = live.is_some();
    let live = live.unwrap_or(BoardLive {
        board: None,
        rows: Vec::new(),
        poll: false,
        poll_secs: POLL_SECS,
    });
    let page = BoardPage {
        nav: nav("devices"),
        id,
        found,
        board: live.board,
        rows: live.rows,
        poll: live.poll,
        poll_secs: live.poll_secs,
    };
    let status = if found {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    html(page, status)
}

fn gone(what: String) -> Response {
    use axum::response::IntoResponse;
    (StatusCode::NOT_FOUND, what).into_response()
}

/// The live fragment, for the refresh: the same board, read again.
async fn board_grid(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match live(&s, &id).await {
        Some(l) => html(l, StatusCode::OK),
        None => gone(format!("no board acon/{id}")),
    }
}

/// One cell, read again; `None` when the board or the cell is not there.
async fn one_cell(s: &AppState, id: &str, cell: &str) -> Option<CellView> {
    let cell: u32 = cell.parse().ok()?;
    let now = now_ms();
    let c = s
        .hub
        .acon_cells(id, now)
        .ok()?
        .into_iter()
        .find(|c| c.cell == cell)?;
    let h = history(s, id).await;
    Some(cell_view(c, &h, now))
}

/// A cell's panel (the dialog's content): the live part and, for an operator, the forms.
async fn cell_panel(
    State(s): State<AppState>,
    Path((id, cell)): Path<(String, String)>,
) -> Response {
    match one_cell(&s, &id, &cell).await {
        Some(c) => html(
            CellPanel {
                nav: nav("devices"),
                id,
                c,
                poll_secs: POLL_SECS,
            },
            StatusCode::OK,
        ),
        None => gone(format!("no cell {cell} on board acon/{id}")),
    }
}

/// The live part of a cell's panel, for the refresh.
async fn cell_state(
    State(s): State<AppState>,
    Path((id, cell)): Path<(String, String)>,
) -> Response {
    match one_cell(&s, &id, &cell).await {
        Some(c) => html(
            CellLive {
                nav: nav("devices"),
                id,
                c,
                poll_secs: POLL_SECS,
            },
            StatusCode::OK,
        ),
        None => gone(format!("no cell {cell} on board acon/{id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(at: i64, send: i64, answer: &str, message: Option<&str>) -> Exchange {
        let a = format!("ACon_V1.0\nID=7\nSEND={send}\nRESET=0\n{answer}CLOSE\n");
        Exchange {
            at,
            send: Some(send),
            answer: Answer::parse(a.as_bytes()).ok(),
            message: message.map(|m| {
                let text = format!("ACon_V1.0\nID=7\nSEND={send}\nCOLS=2\nROWS=2\n{m}CLOSE\n");
                Message::parse(text.as_bytes()).unwrap()
            }),
        }
    }

    fn cell3(h: &History, since: i64) -> Delivery {
        h.delivery(
            since,
            |a| a.cells.iter().any(|c| c.cell == 3 && c.code == "1492"),
            |m| m.box_eng.as_deref().is_some_and(|l| l.contains(&3)),
        )
    }

    const CARRIES: &str = "STATE=0\nBOX_ENG=(3,1492,60)\n";

    #[test]
    fn a_change_waits_is_sent_then_reported() {
        // Engaged at 100: the message at 50 was answered before it.
        let mut h = History {
            exchanges: vec![ex(50, 1, "STATE=0\n", None)],
            full: false,
        };
        assert_eq!(cell3(&h, 100), Delivery::Waiting);
        h.exchanges.push(ex(120, 2, CARRIES, None));
        let sent = Sent {
            send: Some(2),
            at: 120,
            or_earlier: false,
        };
        assert_eq!(cell3(&h, 100), Delivery::Sent(sent));
        h.exchanges.push(ex(130, 3, CARRIES, Some("BOX_ENG=3\n")));
        assert_eq!(cell3(&h, 100), Delivery::Reported(sent, Some(3)));
    }

    #[test]
    fn a_message_after_the_answer_without_the_cell_is_not_listed() {
        let h = History {
            exchanges: vec![
                ex(120, 2, CARRIES, None),
                ex(130, 3, CARRIES, Some("BOX_ENG=0\n")),
            ],
            full: false,
        };
        assert!(matches!(cell3(&h, 100), Delivery::NotListed(_, Some(3))));
    }

    #[test]
    fn an_answer_before_the_change_does_not_count_even_with_the_same_code() {
        // Re-engaged at 200 with the same code: the answer at 120 carried the old one.
        let h = History {
            exchanges: vec![ex(120, 2, CARRIES, Some("BOX_ENG=3\n"))],
            full: false,
        };
        assert_eq!(cell3(&h, 200), Delivery::Waiting);
    }

    #[test]
    fn the_first_answer_of_the_last_unbroken_run_sent_it() {
        // Blocked, unblocked, blocked again: the block was sent with the third answer.
        let block =
            |h: &History| h.delivery(i64::MIN, |a| a.block, |m| m.has_state(StateCode::Blocked));
        let h = History {
            exchanges: vec![
                ex(10, 1, "STATE=3\n", None),
                ex(20, 2, "STATE=0\n", None),
                ex(30, 3, "STATE=3\n", None),
                ex(40, 4, "STATE=3\n", Some("STATE=3\n")),
            ],
            full: false,
        };
        let sent = Sent {
            send: Some(3),
            at: 30,
            or_earlier: false,
        };
        assert_eq!(block(&h), Delivery::Reported(sent, Some(4)));
        // When the history read is all answers carrying it, it may have been sent earlier.
        let h = History {
            exchanges: vec![ex(30, 3, "STATE=3\n", None)],
            full: true,
        };
        assert!(matches!(
            block(&h),
            Delivery::Sent(Sent {
                or_earlier: true,
                ..
            })
        ));
    }
}
