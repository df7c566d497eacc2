//! The SQLite store: one file (`gatehouse.db`) under the data directory, in WAL mode.
//!
//! One writer thread owns the write connection. It takes every unit queued while the previous
//! transaction was committing and applies them in one transaction (group commit), with
//! `synchronous=FULL` so that a commit is on disk (fsync) before any unit of it is
//! acknowledged. Reads use a second connection, which WAL lets run beside the writer.
//!
//! **Messages per device without a per-device index.** An index on (device, seq) costs one
//! dirty B-tree page per distinct device in every commit, which with hundreds of boards
//! costs more than the messages themselves (measured: 26k vs 39k messages/s at 100
//! connections, see docs/benchmarks.md). Instead each message row links to the device's
//! previous message (`prev_seq`), and the writer keeps each device's newest seq (its *head*)
//! in memory. Heads are saved to `device_heads` about once a second, in the same transaction
//! as a batch, together with `meta.heads_upto`: the seq up to which the saved heads are
//! complete. At start-up the saved heads are read and the few messages after `heads_upto` are
//! scanned to bring them up to date. A device's newest messages are its head and the chain.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::oneshot;

use super::health::{FileWatch, Shared};
use super::retention::{self, Pass, Retention};
use super::{
    Commit, CredentialRecord, DeviceRecord, EventFilter, EventRecord, EventSearch, EventsAfter,
    LoadedDevice, MessageRecord, Seqs, Store, StoreError, StoreFuture, StoreHealth, StoreResult,
    StoredEvent, StoredMessage, TypeRecord, Write,
};

/// Most units in one transaction; more wait for the next one.
const MAX_BATCH: usize = 4096;

/// How long a batch of units nobody waits for may wait for company (see `Writer::run`).
const GATHER: Duration = Duration::from_millis(2);

/// A commit slower than this is logged: every answer in the batch waited for it.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// How often the device heads are saved (see the module doc).
const HEADS_EVERY: Duration = Duration::from_secs(1);

/// How often the idle writer checks that the database file is still there and measures it
/// (a busy writer checks the file before every commit).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A problem with the store is logged at once, then at most this often while it lasts.
const PROBLEM_LOG_EVERY: Duration = Duration::from_secs(60);

/// The start-up integrity check (`PRAGMA quick_check`) is abandoned after this long: on a
/// database of many gigabytes it would delay every start by minutes.
const QUICK_CHECK_LIMIT: Duration = Duration::from_secs(10);

/// While units keep coming, a retention step is followed by this many times its duration of
/// other work (a pass takes at most 1/(1 + this) of the writer, and of a CPU-bound machine).
const STEP_SPACING: u32 = 19;

/// The writer counts as idle (retention steps back to back) this long after the last unit.
const IDLE: Duration = Duration::from_millis(100);

/// The WAL is truncated back to this after a checkpoint (it can grow while a backup reads).
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Each device's newest message seq, shared by the writer (which advances it after each
/// commit) and the readers.
type Heads = Arc<Mutex<HashMap<String, i64>>>;

fn lock_heads(heads: &Heads) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
    heads.lock().unwrap_or_else(|p| p.into_inner())
}

const SCHEMA: &[&str] = &[
    // version 1
    "CREATE TABLE devices (
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        protocol TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        notes TEXT NOT NULL DEFAULT '',
        first_seen INTEGER NOT NULL,
        last_seen INTEGER,
        online INTEGER NOT NULL,
        presence_changed_at INTEGER NOT NULL,
        desired_version INTEGER NOT NULL,
        desired TEXT NOT NULL,
        reported TEXT NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        at INTEGER NOT NULL,
        send INTEGER,
        peer TEXT NOT NULL,
        raw TEXT NOT NULL,
        parsed TEXT NOT NULL,
        answer TEXT NOT NULL,
        prev_seq INTEGER
    );
    CREATE TABLE device_heads (
        device TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('heads_upto', 0);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        device TEXT,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX events_by_device ON events (device, seq);
    CREATE INDEX events_by_kind ON events (kind, seq);",
    // version 2: SKABEN device types
    "CREATE TABLE device_types (
        name TEXT PRIMARY KEY,
        data TEXT NOT NULL
    ) WITHOUT ROWID;",
    // version 3: MQTT credentials (secrets hashed)
    "CREATE TABLE credentials (
        username TEXT PRIMARY KEY,
        subject TEXT NOT NULL UNIQUE,
        hash TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // version 4: the game (rule file, state); events by time (replays, run timelines)
    "CREATE TABLE game (
        key TEXT PRIMARY KEY,
        data TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX events_by_at ON events (at);
    CREATE INDEX events_rule_traces ON events (json_extract(data, '$.rule'), seq)
        WHERE kind = 'rule_fired';",
    // version 5: the console's accounts, API tokens and sessions (secrets hashed)
    "CREATE TABLE accounts (
        key TEXT PRIMARY KEY,
        data TEXT NOT NULL
    ) WITHOUT ROWID;",
];

pub(crate) fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

enum Request {
    /// A unit of writes; `urgent` when somebody waits for its commit to answer; when it was
    /// submitted.
    Unit(Vec<Write>, Done, bool, Instant),
    Close(oneshot::Sender<StoreResult<()>>),
}

/// The SQLite backend. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    tx: mpsc::Sender<Request>,
    reader: Arc<Mutex<Connection>>,
    heads: Heads,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What a damaged database is told to do.
const RESTORE_HINT: &str = "gatehouse will not start on it. Restore the newest backup \
    (README, \"Backup and restore\"), or move the file away to start with an empty database";

/// Refuses a database that is not one or is damaged: SQLite's answer to the first read of the
/// header, then `PRAGMA quick_check`, abandoned (with a warning) after [`QUICK_CHECK_LIMIT`].
fn check_integrity(conn: &Connection, path: &Path) -> StoreResult<()> {
    let damaged = |detail: String| {
        StoreError::Damaged(format!(
            "the database {} is damaged ({detail}); {RESTORE_HINT}",
            path.display()
        ))
    };
    let interrupt = conn.get_interrupt_handle();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let timer = std::thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(QUICK_CHECK_LIMIT) {
            interrupt.interrupt();
        }
    });
    let t0 = Instant::now();
    let result: rusqlite::Result<Vec<String>> =
        conn.prepare("PRAGMA quick_check(20)").and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        });
    let _ = stop.send(());
    let _ = timer.join();
    match result {
        Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(()),
        Ok(rows) => Err(damaged(rows.join("; "))),
        Err(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            tracing::warn!(
                path = %path.display(),
                after = ?t0.elapsed(),
                "the start-up integrity check (quick_check) did not finish in time and was skipped; \
                 check the database offline with `sqlite3 gatehouse.db 'PRAGMA integrity_check'` \
                 while gatehouse is stopped"
            );
            Ok(())
        }
        Err(e) => Err(damaged(e.to_string())),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `path` and migrates it to the current schema; keeps
    /// everything (no retention).
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        Self::open_with(
            path,
            Retention {
                messages_max_age: None,
                events_max_age: None,
                max_db_bytes: None,
                every: Duration::from_secs(60),
            },
        )
    }

    /// Opens (creating if needed) `path`, refuses it if it is damaged, migrates it to the
    /// current schema, and starts the writer with this retention.
    pub fn open_with(path: &Path, retention: Retention) -> StoreResult<SqliteStore> {
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError::Db(format!("cannot open database {}: {e}", path.display())))?;
        // The first statement reads the header: a file that is not a database fails here.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| {
                StoreError::Damaged(format!(
                    "{} is not a readable SQLite database ({e}); {RESTORE_HINT}",
                    path.display()
                ))
            })?;
        check_integrity(&conn, path)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_err)?;
        migrate(&mut conn)?;
        let heads: Heads = Arc::new(Mutex::new(load_heads(&conn)?));
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let watch = FileWatch::new(path);
        shared.db_bytes.store(watch.size(), Ordering::Relaxed);
        let now = Instant::now();
        let writer = Writer {
            conn,
            heads: heads.clone(),
            dirty: lock_heads(&heads).keys().cloned().collect(),
            last_saved: now,
            path: path.to_path_buf(),
            shared: shared.clone(),
            watch,
            last_check: now,
            problem_logged: None,
            unlogged_failures: 0,
            next_pass: (!retention.keeps_everything())
                .then(|| now + retention.every.min(Duration::from_secs(5))),
            retention,
            pass: None,
            next_step: now,
            last_unit: now,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            tx,
            reader: Arc::new(Mutex::new(reader)),
            heads,
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    fn send(&self, writes: Vec<Write>, urgent: bool) -> Commit {
        let (done, rx) = oneshot::channel();
        self.shared.queue_depth.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(Request::Unit(_, done, _, _))) =
            self.tx
                .send(Request::Unit(writes, done, urgent, Instant::now()))
        {
            self.shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
            let _ = done.send(Err(StoreError::Closed));
        }
        Commit::new(rx)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .map_err(|_| StoreError::Db("reader lock poisoned".into()))?;
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Db(format!("read task failed: {e}")))?
    }
}

/// Every credential, by username.
pub fn read_credentials(conn: &Connection) -> StoreResult<Vec<CredentialRecord>> {
    let mut stmt = conn
        .prepare("SELECT username, subject, hash, created_at FROM credentials ORDER BY username")
        .map_err(db_err)?;
    stmt.query_map([], |r| {
        Ok(CredentialRecord {
            username: r.get(0)?,
            subject: r.get(1)?,
            hash: r.get(2)?,
            created_at: r.get(3)?,
        })
    })
    .map_err(db_err)?
    .collect::<Result<Vec<_>, _>>()
    .map_err(db_err)
}

fn event_row(r: &rusqlite::Row) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: r.get(0)?,
        record: EventRecord {
            at: r.get(1)?,
            device: r.get(2)?,
            kind: r.get(3)?,
            actor: r.get(4)?,
            data: r.get(5)?,
        },
    })
}

/// The statement and its arguments for a search: only the conditions that are set, so that
/// SQLite can pick the (device, seq), (kind, seq) or (at) index, and the text depends only on
/// which are set (a handful of cached statements).
fn search_sql(s: &EventSearch) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let mut sql = String::from("SELECT seq, at, device, kind, actor, data FROM events WHERE 1");
    let mut args: Vec<V> = Vec::new();
    if let Some(d) = &s.device {
        sql.push_str(" AND device = ?");
        args.push(V::Text(d.clone()));
    }
    if !s.kinds.is_empty() {
        sql.push_str(" AND kind IN (");
        for (i, k) in s.kinds.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            args.push(V::Text(k.clone()));
        }
        sql.push(')');
    }
    if let Some(a) = &s.actor {
        sql.push_str(" AND actor = ?");
        args.push(V::Text(a.clone()));
    }
    if s.operators_only {
        sql.push_str(" AND actor NOT IN ('device', 'server') AND substr(actor, 1, 5) <> 'rule:'");
    }
    for (cond, v) in [
        (" AND at >= ?", s.from),
        (" AND at < ?", s.to),
        (" AND seq < ?", s.before),
        (" AND seq > ?", s.after),
    ] {
        if let Some(v) = v {
            sql.push_str(cond);
            args.push(V::Integer(v));
        }
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    args.push(V::Integer(i64::from(s.limit)));
    (sql, args)
}

fn read_game(conn: &Connection) -> StoreResult<Vec<(String, String)>> {
    read_keyed(conn, "SELECT key, data FROM game ORDER BY key")
}

fn read_accounts(conn: &Connection) -> StoreResult<Vec<(String, String)>> {
    read_keyed(conn, "SELECT key, data FROM accounts ORDER BY key")
}

fn read_keyed(conn: &Connection, sql: &str) -> StoreResult<Vec<(String, String)>> {
    let mut stmt = conn.prepare(sql).map_err(db_err)?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)
}

/// The database at `path` opened read-only, without the server (which may be running: it is
/// never migrated), and its schema step.
fn open_read_only(path: &Path) -> StoreResult<(Connection, i64)> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Db(format!("cannot open database {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db_err)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    Ok((conn, version))
}

/// The game's rows in the database at `path`, read-only (the server may be running).
pub fn game_at(path: &Path) -> StoreResult<Vec<(String, String)>> {
    let (conn, version) = open_read_only(path)?;
    if version < 4 {
        // Made by a gatehouse from before the game: no rules.
        return Ok(Vec::new());
    }
    read_game(&conn)
}

/// The console's account rows in the database at `path`, read-only (the server may be
/// running).
pub fn accounts_at(path: &Path) -> StoreResult<Vec<(String, String)>> {
    let (conn, version) = open_read_only(path)?;
    if version < 5 {
        // Made by a gatehouse from before accounts: there are none.
        return Ok(Vec::new());
    }
    read_accounts(&conn)
}

/// The credentials in the database at `path`, read without the server (which may be running:
/// the database is opened read-only and never migrated).
pub fn credentials_at(path: &Path) -> StoreResult<Vec<CredentialRecord>> {
    let (conn, version) = open_read_only(path)?;
    if version < 3 {
        // Made by a gatehouse from before credentials: there are none.
        return Ok(Vec::new());
    }
    read_credentials(&conn)
}

/// What `gatehouse backup` copied.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    pub bytes: u64,
    pub devices: u64,
    pub messages: u64,
    pub newest_message_at: Option<i64>,
    pub events: u64,
    pub credentials: u64,
    pub types: u64,
}

/// Copies the database at `db` to `to`: a consistent snapshot (`VACUUM INTO` in one read
/// transaction on a read-only connection, so a running server keeps writing beside it),
/// checked (`quick_check`) and fsynced under a temporary name, then renamed into place. An
/// existing `to` is refused unless `force`.
pub fn backup(db: &Path, to: &Path, force: bool) -> StoreResult<BackupSummary> {
    if !db.exists() {
        return Err(StoreError::Db(format!(
            "no database at {} (--data-dir): nothing to back up",
            db.display()
        )));
    }
    if to.exists() && !force {
        return Err(StoreError::Db(format!(
            "{} exists; choose another FILE or pass --force to replace it",
            to.display()
        )));
    }
    let name = to
        .file_name()
        .ok_or_else(|| StoreError::Db(format!("{} is not a file name", to.display())))?;
    let dir = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".partial-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let tmp_str = tmp.to_str().ok_or_else(|| {
        StoreError::Db(format!(
            "{} is not valid UTF-8; choose another FILE",
            tmp.display()
        ))
    })?;
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", db.display())))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db_err)?;
        conn.execute("VACUUM INTO ?1", [tmp_str])
            .map_err(|e| StoreError::Db(format!("cannot write {}: {e}", tmp.display())))?;
        drop(conn);
        let copy =
            Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db_err)?;
        let check: String = copy
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(db_err)?;
        if check != "ok" {
            return Err(StoreError::Db(format!(
                "the copy does not check out: {check}"
            )));
        }
        let count = |sql: &str| -> u64 {
            copy.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
                .unwrap_or(0)
        };
        let summary = BackupSummary {
            bytes: std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0),
            devices: count("SELECT count(*) FROM devices"),
            messages: count("SELECT count(*) FROM messages"),
            newest_message_at: copy
                .query_row(
                    "SELECT at FROM messages ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .ok(),
            events: count("SELECT count(*) FROM events"),
            credentials: count("SELECT count(*) FROM credentials"),
            types: count("SELECT count(*) FROM device_types"),
        };
        drop(copy);
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::Db(format!("cannot sync {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, to).map_err(|e| {
            StoreError::Db(format!("cannot move the copy to {}: {e}", to.display()))
        })?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(summary)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > SCHEMA.len() {
        return Err(StoreError::Db(format!(
            "the database has schema version {version}, newer than this gatehouse knows ({}); \
             use a newer gatehouse",
            SCHEMA.len()
        )));
    }
    for (i, step) in SCHEMA.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute_batch(step).map_err(db_err)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
    }
    Ok(())
}

/// The saved heads, brought up to date with the messages written after they were saved.
fn load_heads(conn: &Connection) -> StoreResult<HashMap<String, i64>> {
    let mut heads = HashMap::new();
    let mut stmt = conn
        .prepare("SELECT device, seq FROM device_heads")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(db_err)?;
    for row in rows {
        let (device, seq) = row.map_err(db_err)?;
        heads.insert(device, seq);
    }
    let upto: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'heads_upto'", [], |r| {
            r.get(0)
        })
        .map_err(db_err)?;
    let mut stmt = conn
        .prepare("SELECT device, seq FROM messages WHERE seq > ?1 ORDER BY seq")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([upto], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(db_err)?;
    for row in rows {
        let (device, seq) = row.map_err(db_err)?;
        heads.insert(device, seq);
    }
    Ok(heads)
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    heads: Heads,
    /// Devices whose head moved since the heads were last saved.
    dirty: HashSet<String>,
    last_saved: Instant,
    path: PathBuf,
    shared: Arc<Shared>,
    watch: FileWatch,
    last_check: Instant,
    /// When a store problem was last logged, and the failed units not logged since.
    problem_logged: Option<Instant>,
    unlogged_failures: u64,
    retention: Retention,
    /// When the next retention pass starts (`None`: no retention).
    next_pass: Option<Instant>,
    pass: Option<Pass>,
    /// The earliest time for the pass's next step while units keep coming.
    next_step: Instant,
    /// When the last unit arrived.
    last_unit: Instant,
}

/// Where a unit's outcome goes: the seqs of its events once committed.
type Done = oneshot::Sender<StoreResult<Seqs>>;

/// A unit taken from the queue: its writes, who waits, when it was submitted.
type Queued = (Vec<Write>, Done, Instant);

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut batch: Vec<Queued> = Vec::new();
        let mut close: Option<oneshot::Sender<StoreResult<()>>> = None;
        loop {
            // Wait for a unit, or for the next timer: the file check, a retention step.
            let wait = self.next_timer().saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                let mut next = Some(first);
                let mut urgent = false;
                let mut gathered = false;
                loop {
                    while let Some(req) = next.take() {
                        match req {
                            Request::Unit(w, done, u, at) => {
                                self.shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
                                self.last_unit = at;
                                urgent |= u;
                                batch.push((w, done, at));
                            }
                            Request::Close(done) => {
                                close = Some(done);
                                break;
                            }
                        }
                        if batch.len() >= MAX_BATCH {
                            break;
                        }
                        next = rx.try_recv().ok();
                    }
                    // Nobody waits on these units (records of SKABEN packets): let a few more
                    // milliseconds' worth join the transaction. Each commit rewrites the pages
                    // it touches, so small commits cost far more CPU and disk per row.
                    if urgent || gathered || close.is_some() || batch.len() >= MAX_BATCH {
                        break;
                    }
                    gathered = true;
                    std::thread::sleep(GATHER);
                    next = rx.try_recv().ok();
                    if next.is_none() {
                        break;
                    }
                }
                self.commit(&mut batch);
                if close.is_some() {
                    break;
                }
            }
            self.timers();
        }
        // Close: nothing new is taken; save the heads and flush the WAL into the main file.
        while let Ok(req) = rx.try_recv() {
            if let Request::Unit(w, done, _, at) = req {
                self.shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
                batch.push((w, done, at));
            }
        }
        drop(rx);
        self.commit(&mut batch);
        let r = self
            .apply(std::iter::empty(), true)
            .and_then(|_| {
                self.conn
                    .pragma_update(None, "wal_checkpoint", "TRUNCATE")
                    .map_err(db_err)
            })
            .and_then(|()| self.conn.close().map_err(|(_, e)| db_err(e)));
        if let Some(done) = close {
            let _ = done.send(r);
        }
    }

    /// The next time [`Writer::timers`] has something to do.
    fn next_timer(&self) -> Instant {
        let mut t = self.last_check + CHECK_EVERY;
        if self.pass.is_some() {
            t = t.min(self.next_step.min(self.last_unit + IDLE));
        } else if let Some(p) = self.next_pass {
            t = t.min(p);
        }
        t
    }

    /// The file check and the store's size once a second; retention passes and their steps.
    fn timers(&mut self) {
        let now = Instant::now();
        if now >= self.last_check + CHECK_EVERY {
            self.last_check = now;
            if let Some(p) = self.watch.check() {
                self.file_lost(p);
            }
            self.shared
                .db_bytes
                .store(self.watch.size(), Ordering::Relaxed);
        }
        if self.shared.lost().is_some() {
            return;
        }
        if self.pass.is_none() {
            match self.next_pass {
                Some(at) if now >= at => {
                    self.next_pass = Some(now + self.retention.every);
                    self.pass = Some(Pass::new(crate::clock::now_ms()));
                    self.next_step = now;
                }
                _ => return,
            }
        }
        // Busy: one step per [`STEP_SPACING`] times its duration; idle: back to back.
        if now < self.next_step && now < self.last_unit + IDLE {
            return;
        }
        let Some(pass) = self.pass.as_mut() else {
            return;
        };
        let heads = lock_heads(&self.heads).clone();
        let t0 = Instant::now();
        let r = pass.step(&mut self.conn, &self.retention, &heads);
        self.next_step = Instant::now() + t0.elapsed() * STEP_SPACING;
        match r {
            Ok(None) => {}
            Ok(Some(done)) => {
                self.pass = None;
                self.retention_done(done);
            }
            Err(e) => {
                self.pass = None;
                tracing::warn!(error = %e, path = %self.path.display(), "retention pass stopped; the next one starts in {:?}", self.retention.every);
            }
        }
    }

    fn retention_done(&mut self, done: retention::Outcome) {
        self.shared
            .removed_messages
            .fetch_add(done.messages, Ordering::Relaxed);
        self.shared
            .removed_events
            .fetch_add(done.events, Ordering::Relaxed);
        if let Some(ev) = done.event {
            tracing::info!(
                messages = done.messages,
                events = done.events,
                data = %ev.data,
                "retention removed old rows"
            );
            let (tx, _rx) = oneshot::channel();
            let mut batch = vec![(vec![Write::Event(ev)], tx, Instant::now())];
            self.commit(&mut batch);
        }
        if done.cap_unreachable {
            tracing::warn!(
                path = %self.path.display(),
                max_db_bytes = ?self.retention.max_db_bytes,
                "the database is over --max-db-mb with only the devices' newest messages, the \
                 newest event and the device rows left: raise --max-db-mb"
            );
        }
        self.shared
            .db_bytes
            .store(self.watch.size(), Ordering::Relaxed);
    }

    /// The file is gone or replaced: every commit fails from now on (until restart).
    fn file_lost(&mut self, problem: String) {
        if self.shared.set_lost(&problem) {
            self.problem_logged = None;
            self.log_problem(&problem, 0);
        }
    }

    /// ERROR once, then at most once per [`PROBLEM_LOG_EVERY`] while it lasts.
    fn log_problem(&mut self, problem: &str, failed: u64) {
        self.unlogged_failures += failed;
        if self
            .problem_logged
            .is_some_and(|t| t.elapsed() < PROBLEM_LOG_EVERY)
        {
            return;
        }
        self.problem_logged = Some(Instant::now());
        tracing::error!(
            path = %self.path.display(),
            failed_units = self.unlogged_failures,
            total_failed_units = self.shared.failures.load(Ordering::Relaxed),
            "{problem}"
        );
        self.unlogged_failures = 0;
    }

    fn failed(&mut self, n: u64) {
        self.shared.failures.fetch_add(n, Ordering::Relaxed);
    }

    /// Applies a batch in one transaction and acknowledges every unit of it.
    fn commit(&mut self, batch: &mut Vec<Queued>) {
        if batch.is_empty() {
            return;
        }
        if let Some(p) = self.watch.check() {
            self.file_lost(p);
        }
        if let Some(problem) = self.shared.lost() {
            let n = batch.len() as u64;
            self.failed(n);
            self.log_problem(&problem, n);
            for (_, done, _) in batch.drain(..) {
                let _ = done.send(Err(StoreError::Db(problem.clone())));
            }
            return;
        }
        let save_heads = self.last_saved.elapsed() >= HEADS_EVERY;
        match self.apply(batch.iter().map(|(w, _, _)| w.as_slice()), save_heads) {
            Ok(seqs) => {
                for ((_, done, at), seqs) in batch.drain(..).zip(seqs) {
                    self.shared.observe_commit(at.elapsed());
                    let _ = done.send(Ok(seqs));
                }
                self.recovered();
            }
            Err(e) => {
                // One bad unit must not sink the others: retry each on its own.
                tracing::debug!(error = %e, units = batch.len(), "batch commit failed; retrying units one by one");
                let mut failed = 0;
                let mut last_error = None;
                for (w, done, at) in batch.drain(..) {
                    let r = self
                        .apply(std::iter::once(w.as_slice()), false)
                        .map(|mut s| s.pop().unwrap_or_default());
                    match &r {
                        Ok(_) => self.shared.observe_commit(at.elapsed()),
                        Err(e) => {
                            failed += 1;
                            last_error = Some(e.to_string());
                        }
                    }
                    let _ = done.send(r);
                }
                self.failed(failed);
                match last_error {
                    Some(e) => {
                        let problem = format!(
                            "writes to the database {} fail ({e}): units are not stored and not \
                             answered. If the disk is full, free space: gatehouse resumes by itself \
                             with the next write that succeeds",
                            self.path.display()
                        );
                        if self.shared.set_failing(problem.clone()) {
                            self.problem_logged = None;
                        }
                        self.log_problem(&problem, failed);
                    }
                    None => self.recovered(),
                }
            }
        }
    }

    /// A commit succeeded: if commits were failing, they no longer are.
    fn recovered(&mut self) {
        if self.shared.clear_failing() {
            tracing::warn!(
                path = %self.path.display(),
                total_failed_units = self.shared.failures.load(Ordering::Relaxed),
                "writes to the database succeed again"
            );
            self.problem_logged = None;
            self.unlogged_failures = 0;
        }
    }

    /// One transaction: the units, and the heads when `save_heads`. The shared heads move
    /// only once the transaction is committed. Returns, per unit, the seqs its events were
    /// given (the rowids of their inserts: no query).
    fn apply<'a>(
        &mut self,
        units: impl Iterator<Item = &'a [Write]>,
        save_heads: bool,
    ) -> StoreResult<Vec<Seqs>> {
        let mut moved: HashMap<&'a str, i64> = HashMap::new();
        let mut seqs: Vec<Seqs> = Vec::new();
        let t0 = Instant::now();
        let tx = self.conn.transaction().map_err(db_err)?;
        {
            let mut dev = tx
                .prepare_cached(
                    "INSERT INTO devices (kind, id, protocol, name, notes, first_seen, last_seen, online,
                        presence_changed_at, desired_version, desired, reported)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                     ON CONFLICT (kind, id) DO UPDATE SET protocol = excluded.protocol,
                        name = excluded.name, notes = excluded.notes, first_seen = excluded.first_seen,
                        last_seen = excluded.last_seen, online = excluded.online,
                        presence_changed_at = excluded.presence_changed_at,
                        desired_version = excluded.desired_version, desired = excluded.desired,
                        reported = excluded.reported",
                )
                .map_err(db_err)?;
            let mut msg = tx
                .prepare_cached(
                    "INSERT INTO messages (device, at, send, peer, raw, parsed, answer, prev_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db_err)?;
            let mut ev = tx
                .prepare_cached(
                    "INSERT INTO events (at, device, kind, actor, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db_err)?;
            let mut ty = tx
                .prepare_cached(
                    "INSERT INTO device_types (name, data) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                )
                .map_err(db_err)?;
            let mut cred = tx
                .prepare_cached(
                    "INSERT INTO credentials (username, subject, hash, created_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (username) DO UPDATE SET subject = excluded.subject,
                        hash = excluded.hash, created_at = excluded.created_at",
                )
                .map_err(db_err)?;
            let mut uncred = tx
                .prepare_cached("DELETE FROM credentials WHERE username = ?1")
                .map_err(db_err)?;
            let mut game = tx
                .prepare_cached(
                    "INSERT INTO game (key, data) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET data = excluded.data",
                )
                .map_err(db_err)?;
            let mut account = tx
                .prepare_cached(
                    "INSERT INTO accounts (key, data) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET data = excluded.data",
                )
                .map_err(db_err)?;
            let mut unaccount = tx
                .prepare_cached("DELETE FROM accounts WHERE key = ?1")
                .map_err(db_err)?;
            let heads = lock_heads(&self.heads);
            for unit in units {
                let mut unit_seqs = Seqs::new();
                for w in unit {
                    match w {
                        Write::Device(d) => dev
                            .execute(params![
                                d.kind,
                                d.id,
                                d.protocol,
                                d.name,
                                d.notes,
                                d.first_seen,
                                d.last_seen,
                                d.online,
                                d.presence_changed_at,
                                d.desired_version,
                                d.desired,
                                d.reported
                            ])
                            .map(drop),
                        Write::Message(m) => {
                            let prev = moved
                                .get(m.device.as_str())
                                .or_else(|| heads.get(&m.device))
                                .copied();
                            msg.execute(params![
                                m.device, m.at, m.send, m.peer, m.raw, m.parsed, m.answer, prev
                            ])
                            .map(|_| {
                                moved.insert(m.device.as_str(), tx.last_insert_rowid());
                            })
                        }
                        Write::Event(e) => ev
                            .execute(params![e.at, e.device, e.kind, e.actor, e.data])
                            .map(|_| unit_seqs.push(tx.last_insert_rowid())),
                        Write::DeviceType(t) => ty.execute(params![t.name, t.data]).map(drop),
                        Write::Credential(c) => cred
                            .execute(params![c.username, c.subject, c.hash, c.created_at])
                            .map(drop),
                        Write::DeleteCredential(username) => uncred.execute([username]).map(drop),
                        Write::Game { key, data } => game.execute(params![key, data]).map(drop),
                        Write::Account {
                            key,
                            data: Some(data),
                        } => account.execute(params![key, data]).map(drop),
                        Write::Account { key, data: None } => unaccount.execute([key]).map(drop),
                    }
                    .map_err(db_err)?;
                }
                seqs.push(unit_seqs);
            }
            drop(heads);
            if save_heads {
                let mut save = tx
                    .prepare_cached(
                        "INSERT INTO device_heads (device, seq) VALUES (?1, ?2)
                         ON CONFLICT (device) DO UPDATE SET seq = excluded.seq",
                    )
                    .map_err(db_err)?;
                let heads = lock_heads(&self.heads);
                let dirty = self
                    .dirty
                    .iter()
                    .map(String::as_str)
                    .chain(moved.keys().copied());
                for device in dirty {
                    if let Some(seq) = moved.get(device).or_else(|| heads.get(device)) {
                        save.execute(params![device, seq]).map_err(db_err)?;
                    }
                }
                drop(heads);
                tx.execute(
                    "UPDATE meta SET value = (SELECT coalesce(max(seq), 0) FROM messages)
                     WHERE key = 'heads_upto'",
                    [],
                )
                .map_err(db_err)?;
            }
        }
        let t_stmts = t0.elapsed();
        tx.commit().map_err(db_err)?;
        let t_all = t0.elapsed();
        if t_all > SLOW_COMMIT {
            // Nearly always the disk: fsync stalls of 100 ms and more happen on shared VMs.
            tracing::warn!(statements = ?t_stmts, total = ?t_all, messages = moved.len(), "slow store commit");
        }
        let mut heads = lock_heads(&self.heads);
        if save_heads {
            self.dirty.clear();
            self.last_saved = Instant::now();
            for (device, seq) in moved {
                heads.insert(device.to_string(), seq);
            }
        } else {
            for (device, seq) in moved {
                match heads.get_mut(device) {
                    Some(h) => *h = seq,
                    None => drop(heads.insert(device.to_string(), seq)),
                }
                if !self.dirty.contains(device) {
                    self.dirty.insert(device.to_string());
                }
            }
        }
        Ok(seqs)
    }
}

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        seq: r.get(0)?,
        record: MessageRecord {
            device: r.get(1)?,
            at: r.get(2)?,
            send: r.get(3)?,
            peer: r.get(4)?,
            raw: r.get(5)?,
            parsed: r.get(6)?,
            answer: r.get(7)?,
        },
    })
}

fn message_at(conn: &Connection, seq: i64) -> StoreResult<Option<StoredMessage>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, device, at, send, peer, raw, parsed, answer FROM messages WHERE seq = ?1",
        )
        .map_err(db_err)?;
    let mut rows = stmt.query_map([seq], message_row).map_err(db_err)?;
    rows.next().transpose().map_err(db_err)
}

impl Store for SqliteStore {
    fn submit(&self, writes: Vec<Write>) -> Commit {
        self.send(writes, true)
    }

    fn submit_background(&self, writes: Vec<Write>) -> Commit {
        self.send(writes, false)
    }

    fn health(&self) -> StoreHealth {
        self.shared.snapshot()
    }

    fn failure_counter(&self) -> Arc<AtomicU64> {
        self.shared.failures.clone()
    }

    fn load_devices(&self) -> StoreFuture<'_, Vec<LoadedDevice>> {
        let heads = self.heads.clone();
        Box::pin(self.read(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT kind, id, protocol, name, notes, first_seen, last_seen, online,
                        presence_changed_at, desired_version, desired, reported
                     FROM devices ORDER BY kind, id",
                )
                .map_err(db_err)?;
            let records = stmt
                .query_map([], |r| {
                    Ok(DeviceRecord {
                        kind: r.get(0)?,
                        id: r.get(1)?,
                        protocol: r.get(2)?,
                        name: r.get(3)?,
                        notes: r.get(4)?,
                        first_seen: r.get(5)?,
                        last_seen: r.get(6)?,
                        online: r.get(7)?,
                        presence_changed_at: r.get(8)?,
                        desired_version: r.get(9)?,
                        desired: r.get(10)?,
                        reported: r.get(11)?,
                    })
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            let heads = lock_heads(&heads).clone();
            let mut out = Vec::with_capacity(records.len());
            for record in records {
                let head = heads.get(&format!("{}/{}", record.kind, record.id));
                let last_message = match head {
                    Some(&seq) => message_at(conn, seq)?.map(|m| m.record),
                    None => None,
                };
                out.push(LoadedDevice {
                    record,
                    last_message,
                });
            }
            Ok(out)
        }))
    }

    fn load_types(&self) -> StoreFuture<'_, Vec<TypeRecord>> {
        Box::pin(self.read(move |conn| {
            let mut stmt = conn
                .prepare("SELECT name, data FROM device_types ORDER BY name")
                .map_err(db_err)?;
            stmt.query_map([], |r| {
                Ok(TypeRecord {
                    name: r.get(0)?,
                    data: r.get(1)?,
                })
            })
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)
        }))
    }

    fn load_credentials(&self) -> StoreFuture<'_, Vec<CredentialRecord>> {
        Box::pin(self.read(read_credentials))
    }

    fn load_game(&self) -> StoreFuture<'_, Vec<(String, String)>> {
        Box::pin(self.read(read_game))
    }

    fn load_accounts(&self) -> StoreFuture<'_, Vec<(String, String)>> {
        Box::pin(self.read(read_accounts))
    }

    fn events_between(
        &self,
        from: i64,
        to: i64,
        after: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<StoredEvent>> {
        Box::pin(self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE at >= ?1 AND at < ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![from, to, after, limit], event_row)
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        }))
    }

    fn rule_traces(&self, rule: String, limit: u32) -> StoreFuture<'_, Vec<StoredEvent>> {
        Box::pin(self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE kind = 'rule_fired' AND json_extract(data, '$.rule') = ?1
                     ORDER BY seq DESC LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![rule, limit], event_row)
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        }))
    }

    fn messages(&self, device: String, limit: u32) -> StoreFuture<'_, Vec<StoredMessage>> {
        let head = lock_heads(&self.heads).get(&device).copied();
        Box::pin(self.read(move |conn| {
            let Some(head) = head else {
                return Ok(Vec::new());
            };
            // Walk the device's chain back from its head.
            let mut stmt = conn
                .prepare_cached(
                    "WITH RECURSIVE chain(seq, n) AS (
                        SELECT ?1, 1
                        UNION ALL
                        SELECT m.prev_seq, c.n + 1 FROM chain c JOIN messages m ON m.seq = c.seq
                        WHERE m.prev_seq IS NOT NULL AND c.n < ?2
                     )
                     SELECT m.seq, m.device, m.at, m.send, m.peer, m.raw, m.parsed, m.answer
                     FROM chain c JOIN messages m ON m.seq = c.seq
                     ORDER BY m.seq DESC",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![head, limit], message_row)
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        }))
    }

    fn events(&self, filter: EventFilter) -> StoreFuture<'_, Vec<StoredEvent>> {
        Box::pin(self.read(move |conn| {
            // One statement per filter shape, so that SQLite can use the (device, seq) or
            // (kind, seq) index; `?1 IS NULL OR …` would make it scan the whole log.
            let sql = match (&filter.device, &filter.kind) {
                (Some(_), Some(_)) => {
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE device = ?1 AND kind = ?2 ORDER BY seq DESC LIMIT ?3"
                }
                (Some(_), None) => {
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE device = ?1 AND ?2 IS NULL ORDER BY seq DESC LIMIT ?3"
                }
                (None, Some(_)) => {
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE ?1 IS NULL AND kind = ?2 ORDER BY seq DESC LIMIT ?3"
                }
                (None, None) => {
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE ?1 IS NULL AND ?2 IS NULL ORDER BY seq DESC LIMIT ?3"
                }
            };
            let mut stmt = conn.prepare_cached(sql).map_err(db_err)?;
            let rows = stmt
                .query_map(params![filter.device, filter.kind, filter.limit], event_row)
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        }))
    }

    fn search_events(&self, search: EventSearch) -> StoreFuture<'_, Vec<StoredEvent>> {
        Box::pin(self.read(move |conn| {
            let (sql, args) = search_sql(&search);
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), event_row)
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        }))
    }

    fn events_after(&self, filter: EventFilter, after: i64) -> StoreFuture<'_, EventsAfter> {
        Box::pin(self.read(move |conn| {
            // One read transaction: the bounds and the rows from the same snapshot.
            let tx = conn.unchecked_transaction().map_err(db_err)?;
            let (oldest, newest): (Option<i64>, Option<i64>) = tx
                .query_row(
                    "SELECT (SELECT min(seq) FROM events), (SELECT max(seq) FROM events)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(db_err)?;
            // One statement per filter shape, as in `events`, for the (device, seq) and
            // (kind, seq) indexes.
            let sql = match (&filter.device, &filter.kind) {
                (Some(_), Some(_)) => {
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE device = ?1 AND kind = ?2 AND seq > ?3 AND seq <= ?4
                     ORDER BY seq LIMIT ?5"
                }
                (Some(_), None) => {
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE device = ?1 AND ?2 IS NULL AND seq > ?3 AND seq <= ?4
                     ORDER BY seq LIMIT ?5"
                }
                (None, Some(_)) => {
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE ?1 IS NULL AND kind = ?2 AND seq > ?3 AND seq <= ?4
                     ORDER BY seq LIMIT ?5"
                }
                (None, None) => {
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE ?1 IS NULL AND ?2 IS NULL AND seq > ?3 AND seq <= ?4
                     ORDER BY seq LIMIT ?5"
                }
            };
            let events = {
                let mut stmt = tx.prepare_cached(sql).map_err(db_err)?;
                let rows = stmt
                    .query_map(
                        params![
                            filter.device,
                            filter.kind,
                            after,
                            newest.unwrap_or(0),
                            filter.limit
                        ],
                        event_row,
                    )
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?
            };
            tx.finish().map_err(db_err)?;
            Ok(EventsAfter {
                events,
                oldest,
                newest,
            })
        }))
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let (done, rx) = oneshot::channel();
            if self.tx.send(Request::Close(done)).is_err() {
                return Ok(());
            }
            let r = rx.await.unwrap_or(Err(StoreError::Closed));
            let handle = self.writer.lock().ok().and_then(|mut h| h.take());
            if let Some(h) = handle {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str) -> Write {
        Write::Event(EventRecord {
            at: 1,
            device: Some("acon/1".into()),
            kind: kind.into(),
            actor: "server".into(),
            data: "{}".into(),
        })
    }

    #[tokio::test]
    async fn units_survive_reopen_and_read_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let store = SqliteStore::open(&path).unwrap();
        let commits: Vec<_> = (0..100)
            .map(|i| store.submit(vec![event(&format!("k{i}"))]))
            .collect();
        for c in commits {
            c.wait().await.unwrap();
        }
        store.close().await.unwrap();
        assert!(matches!(
            store.submit(vec![event("late")]).wait().await,
            Err(StoreError::Closed)
        ));
        let store = SqliteStore::open(&path).unwrap();
        let got = store
            .events(EventFilter {
                device: Some("acon/1".into()),
                kind: None,
                limit: 3,
            })
            .await
            .unwrap();
        let kinds: Vec<_> = got.iter().map(|e| e.record.kind.as_str()).collect();
        assert_eq!(kinds, ["k99", "k98", "k97"]);
    }

    /// A commit hands back its events' seqs, in the unit's order, units in a batch and units
    /// retried alone alike.
    #[tokio::test]
    async fn commits_give_their_events_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("g.db")).unwrap();
        // Several units in one batch, one of them without events, one with a message first.
        let commits = vec![
            store.submit(vec![event("a"), event("b")]),
            store.submit(vec![message("acon/1", 1)]),
            store.submit(vec![message("acon/1", 2), event("c")]),
        ];
        let mut seqs = Vec::new();
        for c in commits {
            seqs.push(c.seqs().await.unwrap());
        }
        assert_eq!(seqs, [vec![1, 2], vec![], vec![3]]);
        // A failing unit (a second credential for one subject) makes its batch retry unit
        // by unit, if they shared one: the seqs are right either way, and the failed unit's
        // are not used.
        let cred = |user: &str| {
            Write::Credential(CredentialRecord {
                username: user.into(),
                subject: "type:lock".into(),
                hash: "h".into(),
                created_at: 0,
            })
        };
        let commits = vec![
            store.submit(vec![event("d")]),
            store.submit(vec![cred("u1")]),
            store.submit(vec![event("x"), cred("u2")]),
            store.submit(vec![event("e")]),
        ];
        let mut results = Vec::new();
        for c in commits {
            results.push(c.seqs().await.ok());
        }
        assert_eq!(results, [Some(vec![4]), Some(vec![]), None, Some(vec![5])]);
        store.close().await.unwrap();
    }

    /// A search narrows by every condition set: device, kinds, actor, operators only, time
    /// range, and pages back by seq; newest first.
    #[tokio::test]
    async fn search_events_narrows_by_each_condition() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("g.db")).unwrap();
        let rows = [
            (10, "acon/1", "a", "server"),
            (20, "acon/2", "b", "alice"),
            (30, "acon/1", "b", "device"),
            (40, "acon/1", "c", "token:ci"),
            (50, "acon/2", "a", "rule:x"),
        ];
        for (at, device, kind, actor) in rows {
            store
                .submit(vec![Write::Event(EventRecord {
                    at,
                    device: Some(device.into()),
                    kind: kind.into(),
                    actor: actor.into(),
                    data: "{}".into(),
                })])
                .wait()
                .await
                .unwrap();
        }
        let ats = |v: Vec<StoredEvent>| v.into_iter().map(|e| e.record.at).collect::<Vec<_>>();
        let all = EventSearch {
            limit: 100,
            ..EventSearch::default()
        };
        assert_eq!(
            ats(store.search_events(all.clone()).await.unwrap()),
            [50, 40, 30, 20, 10]
        );
        let q = |f: fn(&mut EventSearch)| {
            let mut s = all.clone();
            f(&mut s);
            s
        };
        let cases: [(EventSearch, &[i64]); 8] = [
            (q(|s| s.device = Some("acon/1".into())), &[40, 30, 10]),
            (q(|s| s.kinds = vec!["a".into(), "c".into()]), &[50, 40, 10]),
            (q(|s| s.actor = Some("alice".into())), &[20]),
            (q(|s| s.operators_only = true), &[40, 20]),
            (q(|s| (s.from, s.to) = (Some(20), Some(40))), &[30, 20]),
            (q(|s| s.before = Some(3)), &[20, 10]),
            (q(|s| s.after = Some(3)), &[50, 40]),
            (
                q(|s| {
                    s.device = Some("acon/1".into());
                    s.kinds = vec!["b".into(), "c".into()];
                    s.limit = 1;
                }),
                &[40],
            ),
        ];
        for (search, want) in cases {
            let got = ats(store.search_events(search.clone()).await.unwrap());
            assert_eq!(got, want, "{search:?}");
        }
    }

    /// `events_after`: the matching events after a seq, oldest first, up to the limit, with
    /// the log's bounds.
    #[tokio::test]
    async fn events_after_reads_what_follows_a_seq_with_the_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("g.db")).unwrap();
        let empty = store.events_after(EventFilter::default(), 0).await.unwrap();
        assert!(empty.events.is_empty());
        assert_eq!((empty.oldest, empty.newest), (None, None));
        for k in ["a", "b", "c", "b", "a"] {
            store.submit(vec![event(k)]).wait().await.unwrap();
        }
        let read = |kind: Option<&str>, after: i64, limit: u32| {
            let filter = EventFilter {
                device: Some("acon/1".into()),
                kind: kind.map(str::to_string),
                limit,
            };
            let store = &store;
            async move { store.events_after(filter, after).await.unwrap() }
        };
        let got = read(None, 1, 10).await;
        let seqs: Vec<i64> = got.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3, 4, 5]);
        assert_eq!((got.oldest, got.newest), (Some(1), Some(5)));
        let seqs: Vec<i64> = read(Some("b"), 0, 10)
            .await
            .events
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [2, 4]);
        let seqs: Vec<i64> = read(None, 0, 2)
            .await
            .events
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2], "oldest first, up to the limit");
        store.close().await.unwrap();
    }

    fn message(device: &str, send: i64) -> Write {
        Write::Message(MessageRecord {
            device: device.into(),
            at: send,
            send: Some(send),
            peer: "p".into(),
            raw: format!("raw {send}"),
            parsed: "{}".into(),
            answer: String::new(),
        })
    }

    async fn sends(store: &SqliteStore, device: &str, limit: u32) -> Vec<i64> {
        let got = store.messages(device.into(), limit).await.unwrap();
        got.iter().map(|m| m.record.send.unwrap()).collect()
    }

    #[tokio::test]
    async fn a_devices_messages_come_newest_first_across_batches_reopen_and_stale_heads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let store = SqliteStore::open(&path).unwrap();
        // Interleaved devices, some units in one batch, some in separate ones.
        let mut commits = Vec::new();
        for send in 1..=20 {
            commits
                .push(store.submit(vec![message("acon/a", send), message("acon/b", 100 + send)]));
            if send % 5 == 0 {
                for c in commits.drain(..) {
                    c.wait().await.unwrap();
                }
            }
        }
        assert_eq!(sends(&store, "acon/a", 3).await, [20, 19, 18]);
        assert_eq!(sends(&store, "acon/b", 2).await, [120, 119]);
        assert_eq!(sends(&store, "acon/a", 100).await.len(), 20);
        assert!(sends(&store, "acon/none", 5).await.is_empty());
        store.close().await.unwrap();

        // As after a crash before the heads were saved: heads say nothing about the tail.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DELETE FROM device_heads WHERE device = 'acon/b';
             UPDATE device_heads SET seq = (SELECT min(seq) FROM messages WHERE device = 'acon/a');
             UPDATE meta SET value = 5 WHERE key = 'heads_upto';",
        )
        .unwrap();
        drop(conn);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(sends(&store, "acon/a", 2).await, [20, 19]);
        assert_eq!(sends(&store, "acon/b", 2).await, [120, 119]);
        store
            .submit(vec![message("acon/a", 21)])
            .wait()
            .await
            .unwrap();
        assert_eq!(sends(&store, "acon/a", 2).await, [21, 20]);
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    fn message(device: &str, at: i64) -> Write {
        Write::Message(MessageRecord {
            device: device.into(),
            at,
            send: Some(at),
            peer: "p".into(),
            raw: "x".repeat(200),
            parsed: "{}".into(),
            answer: String::new(),
        })
    }

    #[tokio::test]
    async fn old_messages_go_but_each_devices_newest_stays_and_one_event_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let now = crate::clock::now_ms();
        let old = now - 10 * 86_400_000;
        let store = SqliteStore::open_with(
            &path,
            Retention {
                messages_max_age: Some(Duration::from_secs(86_400)),
                events_max_age: None,
                max_db_bytes: None,
                every: Duration::from_millis(100),
            },
        )
        .unwrap();
        let mut commits = Vec::new();
        for i in 0..5000 {
            commits.push(store.submit(vec![message("acon/a", old + i)]));
        }
        commits.push(store.submit(vec![message("acon/b", old)]));
        for i in 0..10 {
            commits.push(store.submit(vec![message("acon/a", now + i)]));
        }
        for c in commits {
            c.wait().await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.health().retention_removed_messages < 5000 {
            assert!(Instant::now() < deadline, "{:?}", store.health());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let h = store.health();
        assert_eq!(h.retention_removed_messages, 5000);
        assert!(h.writable);
        let a = store.messages("acon/a".into(), 100).await.unwrap();
        assert_eq!(a.len(), 10);
        assert_eq!(a[0].record.at, now + 9);
        let b = store.messages("acon/b".into(), 100).await.unwrap();
        assert_eq!(b.len(), 1, "a device's newest message stays");
        let ev = store
            .events(EventFilter {
                device: None,
                kind: Some("retention_pruned".into()),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(ev.len(), 1, "{ev:?}");
        store.close().await.unwrap();
    }
}
