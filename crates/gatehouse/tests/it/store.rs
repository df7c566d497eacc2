//! The store over weeks: retention by age and by size, the database file deleted under a running
//! server, start-up refusals (empty where data should be, damaged), and `gatehouse backup`.
//! Real SQLite files, real TCP boards, and the real binary where a process is needed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse::server::{Running, start};
use gatehouse::store::retention::Retention;

use crate::common::{Board, TOKEN, msg, settings};
use crate::durability::local_args;

fn retention(age: Option<Duration>, cap: Option<u64>) -> Retention {
    Retention {
        messages_max_age: age,
        events_max_age: None,
        max_db_bytes: cap,
        every: Duration::from_millis(200),
    }
}

async fn start_in(dir: &Path, r: Retention) -> Running {
    let mut s = settings(dir);
    s.store.retention = r;
    start(s).await.unwrap()
}

async fn get(running: &Running, path: &str) -> serde_json::Value {
    let r = reqwest::Client::new()
        .get(format!("http://{}{path}", running.http_addr))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

fn sends(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["send"].as_i64().unwrap())
        .collect()
}

/// Waits (up to 30 s) until `pred` holds for the store's health.
async fn until_health(
    running: &Running,
    what: &str,
    pred: impl Fn(&gatehouse::store::StoreHealth) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = running.hub.store().health();
        if pred(&h) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_removes_old_messages_keeps_the_newest_readable_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let age = Duration::from_secs(2);
    let running = start_in(dir.path(), retention(Some(age), None)).await;
    let mut a = Board::connect(running.acon_addr).await;
    let mut b = Board::connect(running.acon_addr).await;
    for send in 1..=40 {
        a.exchange(&msg("71", send, "")).await;
    }
    // Board 72 says one thing and falls silent: its only message outlives the cutoff.
    b.exchange(&msg("72", 1, "")).await;
    tokio::time::sleep(age + Duration::from_millis(300)).await;
    for send in 41..=45 {
        a.exchange(&msg("71", send, "")).await;
    }
    until_health(&running, "40 old messages removed", |h| {
        h.retention_removed_messages >= 40
    })
    .await;
    assert_eq!(running.hub.store().health().retention_removed_messages, 40);
    let v = get(&running, "/api/devices/acon/71/messages?limit=100").await;
    assert_eq!(
        sends(&v),
        [45, 44, 43, 42, 41],
        "newest first, the old ones gone"
    );
    let v = get(&running, "/api/devices/acon/72/messages?limit=100").await;
    assert_eq!(sends(&v), [1], "a device's newest message is never removed");
    let ev = get(&running, "/api/events?kind=retention_pruned").await;
    let ev = ev.as_array().unwrap();
    // One event per pass that removed something (the 40 cross the cutoff over as long as
    // they took to send, so several passes may share them), never one per row.
    assert!(!ev.is_empty() && ev.len() < 40, "{ev:?}");
    let total: u64 = ev
        .iter()
        .map(|e| e["data"]["messages"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 40, "{ev:?}");
    for e in ev {
        assert_eq!(e["actor"], "server");
        assert_eq!(e["data"]["reason"], "age");
        assert!(e["data"]["oldest_removed"].is_string() && e["data"]["newest_removed"].is_string());
    }
    running.shutdown().await.unwrap();

    // After a restart (retention off): the chains and the devices' last messages load.
    let running = start_in(dir.path(), retention(None, None)).await;
    let v = get(&running, "/api/devices/acon/71/messages?limit=3").await;
    assert_eq!(sends(&v), [45, 44, 43]);
    let v = get(&running, "/api/devices/acon/72/messages?limit=100").await;
    assert_eq!(sends(&v), [1]);
    let board = get(&running, "/api/devices/acon/72").await;
    assert_eq!(board["reported"]["last_send"], 1, "{board}");
    let mut a = Board::connect(running.acon_addr).await;
    a.exchange(&msg("71", 46, "")).await;
    let v = get(&running, "/api/devices/acon/71/messages?limit=2").await;
    assert_eq!(sends(&v), [46, 45]);
    running.shutdown().await.unwrap();
}

/// Sends `rounds` messages from each of `boards`, in lockstep.
async fn load(boards: &mut [(String, Board)], next: &mut u64, rounds: u64) {
    for _ in 0..rounds {
        *next += 1;
        for (id, b) in boards.iter_mut() {
            b.write(msg(id, *next, "").as_bytes()).await;
        }
        for (_, b) in boards.iter_mut() {
            assert_eq!(b.answer().await.send, *next);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_cap_keeps_the_database_flat_under_steady_load() {
    let dir = tempfile::tempdir().unwrap();
    let cap: u64 = 2_000_000;
    let running = start_in(dir.path(), retention(None, Some(cap))).await;
    let mut boards = Vec::new();
    for i in 0..10 {
        let id = format!("9{i}");
        boards.push((id, Board::connect(running.acon_addr).await));
    }
    let mut next = 0;
    // Fill until the cap is reached and pruning has started.
    while running.hub.store().health().retention_removed_messages == 0 {
        load(&mut boards, &mut next, 50).await;
        assert!(next < 100_000, "the cap was never reached");
    }
    let per_cap = next; // rounds that filled the cap once
    let db = dir.path().join("gatehouse.db");
    let main = |db: &Path| std::fs::metadata(db).unwrap().len();
    let first = (main(&db), running.hub.store().health().db_bytes);
    // Five times the cap's worth more, sampling after each.
    let mut samples = Vec::new();
    for _ in 0..5 {
        load(&mut boards, &mut next, per_cap).await;
        // Let the pass in progress catch up before sampling.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        samples.push((main(&db), running.hub.store().health().db_bytes));
    }
    let h = running.hub.store().health();
    assert!(h.retention_removed_messages > 0);
    for (file, db_bytes) in &samples {
        // Without pruning each sample would be a cap's worth (2 MB) bigger than the last.
        assert!(
            *file <= first.0 + cap / 2,
            "the file grew: first {first:?}, samples {samples:?}"
        );
        assert!(
            *db_bytes <= first.1 + cap,
            "db_bytes grew: first {first:?}, samples {samples:?}"
        );
    }
    // Every board still reads newest first, its latest message included.
    let v = get(&running, "/api/devices/acon/90/messages?limit=3").await;
    let n = i64::try_from(next).unwrap();
    assert_eq!(sends(&v), [n, n - 1, n - 2]);
    let ev = get(&running, "/api/events?kind=retention_pruned&limit=1").await;
    assert_eq!(ev[0]["data"]["reason"], "size", "{ev}");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_deleted_while_running_stops_answers_and_marks_the_store_unwritable() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_in(dir.path(), Retention::default()).await;
    let mut b = Board::connect(running.acon_addr).await;
    b.exchange(&msg("81", 1, "")).await;
    for f in ["gatehouse.db", "gatehouse.db-wal", "gatehouse.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    b.write(msg("81", 2, "").as_bytes()).await;
    assert!(
        b.raw_answer(Duration::from_secs(3)).await.is_none(),
        "answered although nothing can be durable"
    );
    let h = running.hub.store().health();
    assert!(!h.writable, "{h:?}");
    let problem = h.problem.unwrap_or_default();
    assert!(
        problem.contains(&dir.path().join("gatehouse.db").display().to_string())
            && problem.contains("deleted"),
        "{problem}"
    );
    assert!(h.failures > 0);
    let stats = get(&running, "/api/stats").await;
    assert!(
        stats["store_failures"].as_u64().unwrap() > 0,
        "/api/stats counts the failed units: {stats}"
    );
    assert_eq!(stats["store_failures"].as_u64(), Some(h.failures));
    // Unready, and /readyz says why (without the path: it reveals nothing).
    let r = reqwest::get(format!("http://{}/readyz", running.http_addr))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["reasons"].to_string().contains("store"), "{v}");
    // It stays so: nothing written from now on would survive a restart.
    let mut c = Board::connect(running.acon_addr).await;
    c.write(msg("82", 1, "").as_bytes()).await;
    assert!(c.raw_answer(Duration::from_secs(2)).await.is_none());
    assert!(!running.hub.store().health().writable);
    drop(running);
}

/// `gatehouse serve` with its whole log collected as it comes.
struct Logged {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Logged {
    fn spawn(args: &[&str]) -> Logged {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Logged { child, lines }
    }

    /// Waits (up to 30 s) for a log line containing `needle`.
    async fn until_line(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {needle:?}: {:#?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn addr(&self, key: &str) -> std::net::SocketAddr {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|a| a.parse().ok())
            })
            .unwrap()
    }

    /// Waits (up to 30 s) for the process to exit; its status and log.
    async fn exit(mut self) -> (std::process::ExitStatus, String) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                tokio::time::sleep(Duration::from_millis(100)).await; // the reader's last lines
                return (st, self.lines.lock().unwrap().join("\n"));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still running: {:#?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_deleted_under_the_binary_is_logged_as_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let p = Logged::spawn(&local_args(data, Some(TOKEN)));
    p.until_line("HTTP API ready").await;
    let mut b = Board::connect(p.addr("acon_addr=")).await;
    b.exchange(&msg("1", 1, "")).await;
    std::fs::remove_file(dir.path().join("gatehouse.db")).unwrap();
    b.write(msg("1", 2, "").as_bytes()).await;
    assert!(b.raw_answer(Duration::from_secs(3)).await.is_none());
    let line = p.until_line("ERROR").await;
    let path = dir.path().join("gatehouse.db").display().to_string();
    assert!(line.contains(&path) && line.contains("deleted"), "{line}");
    let stats: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/api/stats", p.addr("http_addr=")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["store_failures"].as_u64().unwrap() > 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_where_data_should_be_is_refused_unless_init() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // A directory a gatehouse ran in (its lock file and token) with the database truncated.
    std::fs::write(dir.path().join("lock"), "").unwrap();
    std::fs::write(dir.path().join("admin-token"), "t0ken\n").unwrap();
    std::fs::write(dir.path().join("gatehouse.db"), "").unwrap();
    let (st, log) = Logged::spawn(&local_args(data, None)).exit().await;
    assert!(!st.success());
    assert!(
        log.contains("empty (0 bytes)") && log.contains("--init") && log.contains("backup"),
        "{log}"
    );
    // Missing entirely: the same.
    std::fs::remove_file(dir.path().join("gatehouse.db")).unwrap();
    let (st, log) = Logged::spawn(&local_args(data, None)).exit().await;
    assert!(!st.success());
    assert!(log.contains("missing") && log.contains("--init"), "{log}");
    // With --init it starts, on a new database.
    let mut args = local_args(data, None);
    args.push("--init");
    let p = Logged::spawn(&args);
    p.until_line("HTTP API ready").await;
    let mut b = Board::connect(p.addr("acon_addr=")).await;
    b.exchange(&msg("1", 1, "")).await;
    drop(p);
    // A new directory needs no flag.
    let fresh = tempfile::tempdir().unwrap();
    let p = Logged::spawn(&local_args(fresh.path().to_str().unwrap(), None));
    p.until_line("HTTP API ready").await;
}

/// A database the server wrote and closed, in `dir`.
async fn written_database(dir: &Path) {
    let running = start_in(dir, Retention::default()).await;
    let mut b = Board::connect(running.acon_addr).await;
    for send in 1..=200 {
        b.exchange(&msg("5", send, "")).await;
    }
    running.shutdown().await.unwrap();
}

fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_refused_with_what_to_do() {
    // The header overwritten.
    let dir = tempfile::tempdir().unwrap();
    written_database(dir.path()).await;
    let db = dir.path().join("gatehouse.db");
    overwrite(&db, 0, b"this is not sqlite at all");
    let (st, log) = Logged::spawn(&local_args(dir.path().to_str().unwrap(), Some(TOKEN)))
        .exit()
        .await;
    assert!(!st.success());
    assert!(
        log.contains("not a readable SQLite database") && log.contains("Restore"),
        "{log}"
    );

    // A page in the middle overwritten (the header intact).
    let dir = tempfile::tempdir().unwrap();
    written_database(dir.path()).await;
    let db = dir.path().join("gatehouse.db");
    let pages = std::fs::metadata(&db).unwrap().len() / 4096;
    assert!(pages > 4, "{pages} pages");
    overwrite(&db, 4096 * (pages / 2), &[0xa5; 4096]);
    let (st, log) = Logged::spawn(&local_args(dir.path().to_str().unwrap(), Some(TOKEN)))
        .exit()
        .await;
    assert!(!st.success());
    assert!(
        log.contains("is damaged") && log.contains("Restore the newest backup"),
        "{log}"
    );
}

fn backup(data: &Path, file: &Path, force: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.arg("backup").arg(file).arg("--data-dir").arg(data);
    if force {
        cmd.arg("--force");
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_boards_send_holds_every_message_answered_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_in(dir.path(), Retention::default()).await;
    let addr = running.acon_addr;
    // Boards sending without pause; each reports the last SEND answered.
    let answered: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..8).map(|_| Default::default()).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (answered, stop) = (answered.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut b = Board::connect(addr).await;
            let mut send = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                send += 1;
                b.exchange(&msg(&format!("6{i}"), send, "")).await;
                answered[i].store(send, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    while answered[7].load(std::sync::atomic::Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before: Vec<u64> = answered
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    let out_dir = tempfile::tempdir().unwrap();
    let file = out_dir.path().join("copy.db");
    let data = dir.path().to_path_buf();
    let f = file.clone();
    let out = tokio::task::spawn_blocking(move || backup(&data, &f, false))
        .await
        .unwrap();
    let during = answered[0].load(std::sync::atomic::Ordering::SeqCst);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("copied") && stdout.contains("messages"),
        "{stdout}"
    );
    assert!(
        during > before[0],
        "the boards were answered while the backup ran"
    );

    let copy =
        rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    for (i, &upto) in before.iter().enumerate() {
        let have: Vec<i64> = copy
            .prepare("SELECT send FROM messages WHERE device = ?1 ORDER BY send")
            .unwrap()
            .query_map([format!("acon/6{i}")], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<i64> = (1..=i64::try_from(upto).unwrap()).collect();
        assert_eq!(
            &have[..want.len().min(have.len())],
            &want[..],
            "board 6{i}: every message answered before the backup is in the copy"
        );
    }
    drop(copy);

    // An existing file is not overwritten without --force.
    let data = dir.path().to_path_buf();
    let out = backup(&data, &file, false);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = backup(&data, &file, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The copy is a data directory's database: a server starts on it.
    running.shutdown().await.unwrap();
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(&file, restored.path().join("gatehouse.db")).unwrap();
    let running = start_in(restored.path(), Retention::default()).await;
    let v = get(&running, "/api/devices/acon/60/messages?limit=1").await;
    assert!(v[0]["send"].as_u64().unwrap() >= before[0], "{v}");
    running.shutdown().await.unwrap();
}
