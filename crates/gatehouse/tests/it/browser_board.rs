//! The ACon board's page in headless Chromium: the locker grid, a cell's panel, engaging a
//! cell from it and following the code to the board ("sent" with an answer, "reported" by
//! the board's next message), the board-wide block, what a viewer sees, the phone layout.
//! It takes the README's screenshots `board-desktop` and `board-phone`.

use reqwest::Method;
use serde_json::json;

use crate::browser::{Browser, WAIT, add_user, first_password};
use crate::common::Server;

/// A message of board 1953, an 8×8 locker whose last cell has no lock.
fn report(send: u64, state: &str, extra: &str) -> String {
    format!(
        "ACon_V1.0\nID=1953\nSEND={send}\nRESET=0\nSTATE={state}\nCOLS=8\nROWS=8\nACT_CON=11111111,11111111,11111111,11111111,11111111,11111111,11111111,11111110\n{extra}CLOSE\n"
    )
}

/// Waits until `script` (a function body returning a boolean, with `arguments`) holds on
/// the page; read in one script call, as the live parts are swapped at any moment.
async fn wait_true(b: &Browser, script: &str, args: Vec<serde_json::Value>, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = b
            .client
            .execute(script, args.clone())
            .await
            .unwrap_or_else(|e| panic!("checking {what}: {e}"));
        if v == json!(true) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("never true: {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Whether the grid's button of `cell` has the class `class` (read in one call).
async fn wait_cell_class(b: &Browser, cell: u32, class: &str) {
    wait_true(
        b,
        "const e = document.getElementById('cell-' + arguments[0]); return !!e && e.classList.contains(arguments[1]);",
        vec![json!(cell), json!(class)],
        &format!("cell {cell} is {class}"),
    )
    .await;
}

/// Opens the panel of `cell` by tapping it in the grid, and waits for the dialog.
async fn tap_cell(b: &Browser, cell: u32) {
    b.click(&format!("#cell-{cell}")).await;
    wait_true(
        b,
        "const d = document.getElementById('cell-dialog'); const h = document.getElementById('cell-title'); return !!d && d.open && !!h && h.textContent.startsWith('Cell ' + arguments[0] + ' ');",
        vec![json!(cell)],
        &format!("the panel of cell {cell} is open"),
    )
    .await;
}

/// The acceptance test of the page: tap a cell, give it a code, and the board's next answer
/// carries it; the page shows it waiting, then sent with that answer, then reported by the
/// board's message after it.
#[tokio::test]
async fn tap_a_cell_give_it_a_code_and_the_boards_next_answer_carries_it() {
    let s = Server::start().await;
    let mut board = s.board().await;
    let first = board.exchange(&report(1, "0", "")).await;
    assert!(first.cells.is_empty());

    let b = Browser::start(1280, 900).await;
    b.client
        .goto(&s.url("/login?next=/devices/acon/1953"))
        .await
        .unwrap();
    b.log_in("admin", &first_password(&s)).await;
    // The grid as the board numbers it: 8 rows of 8, cell r×8+c+1.
    b.wait_css("table.lockers").await;
    wait_true(
        &b,
        "const rows = document.querySelectorAll('table.lockers tr'); return rows.length === 8 && Array.from(rows).every((r, i) => r.querySelectorAll('button.cell').length === 8 && r.querySelector('button.cell').dataset.cell === String(i * 8 + 1));",
        vec![],
        "an 8×8 grid numbered row by row",
    )
    .await;
    wait_cell_class(&b, 64, "nolock").await;

    tap_cell(&b, 5).await;
    b.wait_css("#cell-dialog input[name=code]")
        .await
        .send_keys("4711")
        .await
        .unwrap();
    let minutes = b.wait_css("#cell-dialog input[name=minutes]").await;
    minutes.clear().await.unwrap();
    minutes.send_keys("30").await.unwrap();
    b.click("#cell-dialog form.engage button[type=submit]")
        .await;
    b.wait_text("#cell-dialog form.engage output", |t| {
        t.starts_with("Engaged")
    })
    .await;
    // Engaged on the server; the board has not sent a message since.
    b.wait_text("#cell-live .delivery", |t| {
        t.contains("waiting for the board")
    })
    .await;
    wait_cell_class(&b, 5, "waiting").await;

    // The board's next exchange: its answer carries the code for that cell.
    let a = board.exchange(&report(2, "0", "")).await;
    let e = a
        .cells
        .iter()
        .find(|e| e.cell == 5)
        .unwrap_or_else(|| panic!("the answer does not carry cell 5: {a:?}"));
    assert_eq!(e.code, "4711");
    assert!((1..=30).contains(&e.minutes), "{e:?}");
    // The page: sent with the answer to SEND 2, not yet reported.
    b.wait_text("#cell-live .delivery", |t| {
        t.contains("sent to the board") && t.contains("SEND 2")
    })
    .await;
    wait_cell_class(&b, 5, "sent").await;

    // The board's message after that answer lists the cell: reported.
    let a = board.exchange(&report(3, "0", "BOX_ENG=5\n")).await;
    assert!(a.cells.iter().any(|e| e.cell == 5 && e.code == "4711"));
    b.wait_text("#cell-live .delivery", |t| {
        t.contains("reported by the board") && t.contains("SEND 3")
    })
    .await;
    wait_cell_class(&b, 5, "reported").await;

    // The code is masked until tapped.
    wait_true(
        &b,
        "const d = document.querySelector('#cell-live details.reveal'); return !!d && !d.open && !d.querySelector('.code').checkVisibility() && d.querySelector('summary').textContent.includes('••••');",
        vec![],
        "the code is masked",
    )
    .await;
    b.click("#cell-live details.reveal summary").await;
    wait_true(
        &b,
        "const c = document.querySelector('#cell-live details.reveal .code'); return !!c && c.checkVisibility() && c.textContent === '4711';",
        vec![],
        "the code is shown once tapped",
    )
    .await;

    // Tapped again, it is masked again.
    b.click("#cell-live details.reveal summary").await;

    // More going on, for the screenshot: a single-use cell, an opening, a time-out.
    for (cell, body) in [
        (12, json!({"minutes": 90, "single_use": true})),
        (20, json!({"minutes": 15})),
    ] {
        let (st, v) = s
            .send(
                Method::PUT,
                &format!("/api/devices/acon/1953/cells/{cell}"),
                Some(body),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    board
        .exchange(&report(4, "0", "BOX_ENG=5\nBOX_TO=33\nBOX_ACC=41\n"))
        .await;
    board
        .exchange(&report(5, "0", "BOX_ENG=5,12,20\nBOX_TO=33\nBOX_ACC=41\n"))
        .await;
    wait_cell_class(&b, 12, "reported").await;
    wait_cell_class(&b, 33, "timedout").await;
    wait_cell_class(&b, 41, "opened").await;
    b.wait_text("#cell-live .delivery", |t| t.contains("SEND 5"))
        .await;
    b.screenshot("board-desktop").await;
    // Closing the dialog empties it.
    b.click("#cell-dialog button.close").await;
    wait_true(
        &b,
        "const d = document.getElementById('cell-dialog'); return !d.open && document.getElementById('cell-panel').children.length === 0;",
        vec![],
        "the dialog closed and emptied",
    )
    .await;

    let base = s.url("");
    for url in b.loaded_urls().await {
        assert!(url.starts_with(&base), "a request left the server: {url}");
    }
}

/// Blocking the keypad from the page: the board's next answer says STATE=3, the page shows
/// it sent, and reported once the board's message after it says STATE=3.
#[tokio::test]
async fn the_block_goes_out_with_the_next_answer_and_is_reported_by_the_board() {
    let s = Server::start().await;
    let mut board = s.board().await;
    board.exchange(&report(1, "0", "")).await;
    let b = Browser::start(1280, 900).await;
    b.client
        .goto(&s.url("/login?next=/devices/acon/1953"))
        .await
        .unwrap();
    b.log_in("admin", &first_password(&s)).await;
    b.click("form[data-api$=\"/block\"] button").await;
    // The form asks first.
    b.client.accept_alert().await.unwrap();
    b.wait_text("#board-block", |t| t.contains("Not sent yet"))
        .await;

    let a = board.exchange(&report(2, "0", "")).await;
    assert!(a.block, "{a:?}");
    b.wait_text("#board-block", |t| {
        t.contains("Sent with the answer to SEND 2")
    })
    .await;
    board.exchange(&report(3, "3", "")).await;
    b.wait_text("#board-block", |t| {
        t.contains("SEND 3 reports the keypad blocked")
    })
    .await;
}

/// A viewer sees the grid and a cell's panel, and no form or action button anywhere.
#[tokio::test]
async fn a_viewer_sees_the_grid_and_no_forms() {
    let s = Server::start().await;
    let mut board = s.board().await;
    board.exchange(&report(1, "0", "")).await;
    let (st, v) = s
        .send(
            Method::PUT,
            "/api/devices/acon/1953/cells/3",
            Some(json!({"minutes": 60, "code": "2580"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let password = add_user(&s, "vera", "viewer").await;

    let b = Browser::start(1280, 900).await;
    b.client
        .goto(&s.url("/login?next=/devices/acon/1953"))
        .await
        .unwrap();
    b.log_in("vera", &password).await;
    wait_cell_class(&b, 3, "engaged").await;
    tap_cell(&b, 3).await;
    b.wait_text("#cell-live .delivery", |t| {
        t.contains("waiting for the board")
    })
    .await;
    let actions = b
        .client
        .execute(
            "return Array.from(document.querySelectorAll('form[data-api], form.engage, button')).filter(e => !e.matches('button.cell, nav button, #cell-dialog button.close')).map(e => e.outerHTML.slice(0, 80));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(actions, json!([]), "a viewer is offered actions");
    // The same page for an operator has them (the check above would see them).
    let password = add_user(&s, "otto", "operator").await;
    let b = Browser::start(1280, 900).await;
    b.client
        .goto(&s.url("/login?next=/devices/acon/1953"))
        .await
        .unwrap();
    b.log_in("otto", &password).await;
    tap_cell(&b, 3).await;
    b.wait_css("#cell-dialog form.engage").await;
    b.wait_css("#cell-live form[data-method=DELETE]").await;
    b.wait_css("form[data-api$=\"/reset\"]").await;
    // A board that is not there: the page says so.
    b.client.goto(&s.url("/devices/acon/4242")).await.unwrap();
    b.wait_text("main", |t| t.contains("There is no board acon/4242"))
        .await;
}

/// On a phone (390 px wide) the 8×8 grid fits the width with cells big enough for a thumb,
/// and a cell's panel opens over it.
#[tokio::test]
async fn the_grid_on_a_phone() {
    let s = Server::start().await;
    let mut board = s.board().await;
    board.exchange(&report(1, "0", "")).await;
    for (cell, body) in [
        (5, json!({"minutes": 45, "code": "4711"})),
        (12, json!({"minutes": 90, "single_use": true})),
        (20, json!({"minutes": 15})),
    ] {
        let (st, v) = s
            .send(
                Method::PUT,
                &format!("/api/devices/acon/1953/cells/{cell}"),
                Some(body),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    }
    board
        .exchange(&report(2, "0", "BOX_TO=33\nBOX_ACC=41\n"))
        .await;
    board
        .exchange(&report(3, "0", "BOX_ENG=5,12\nBOX_TO=33\nBOX_ACC=41\n"))
        .await;

    let b = Browser::start(390, 844).await;
    b.client
        .goto(&s.url("/login?next=/devices/acon/1953"))
        .await
        .unwrap();
    b.log_in("admin", &first_password(&s)).await;
    wait_cell_class(&b, 5, "reported").await;
    wait_true(
        &b,
        "const cells = Array.from(document.querySelectorAll('button.cell')); return cells.length === 64 && document.documentElement.scrollWidth <= 390 && cells.every(c => { const r = c.getBoundingClientRect(); return r.width >= 40 && r.height >= 44 && r.right <= 390; });",
        vec![],
        "64 cells of at least 40×44 px within 390 px",
    )
    .await;
    b.screenshot("board-phone").await;
    tap_cell(&b, 5).await;
    b.wait_css("#cell-dialog form.engage button[type=submit]")
        .await;
    // The panel is as wide as the screen, and its submit button is in reach.
    wait_true(
        &b,
        "const d = document.getElementById('cell-dialog').getBoundingClientRect(); return d.width >= 380 && d.right <= 390;",
        vec![],
        "the panel fills the phone's width",
    )
    .await;
}
