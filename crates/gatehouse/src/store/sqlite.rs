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
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    Commit, CredentialRecord, DeviceRecord, EventFilter, EventRecord, LoadedDevice, MessageRecord,
    Store, StoreError, StoreFuture, StoreResult, StoredEvent, StoredMessage, TypeRecord, Write,
};

/// Most units in one transaction; more wait for the next one.
const MAX_BATCH: usize = 4096;

/// How long a batch of units nobody waits for may wait for company (see `Writer::run`).
const GATHER: Duration = Duration::from_millis(2);

/// A commit slower than this is logged: every answer in the batch waited for it.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

/// How often the device heads are saved (see the module doc).
const HEADS_EVERY: Duration = Duration::from_secs(1);

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
];

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

enum Request {
    /// A unit of writes; `urgent` when somebody waits for its commit to answer.
    Unit(Vec<Write>, oneshot::Sender<StoreResult<()>>, bool),
    Close(oneshot::Sender<StoreResult<()>>),
}

/// The SQLite backend. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    tx: mpsc::UnboundedSender<Request>,
    reader: Arc<Mutex<Connection>>,
    heads: Heads,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) `path` and migrates it to the current schema.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError::Db(format!("cannot open database {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
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
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            conn,
            heads: heads.clone(),
            dirty: lock_heads(&heads).keys().cloned().collect(),
            last_saved: Instant::now(),
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            tx,
            reader: Arc::new(Mutex::new(reader)),
            heads,
            writer: Mutex::new(Some(writer)),
        })
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

/// The credentials in the database at `path`, read without the server (which may be running:
/// the database is opened read-only and never migrated).
pub fn credentials_at(path: &Path) -> StoreResult<Vec<CredentialRecord>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Db(format!("cannot open database {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db_err)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    if version < 3 {
        // Made by a gatehouse from before credentials: there are none.
        return Ok(Vec::new());
    }
    read_credentials(&conn)
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
}

type Done = oneshot::Sender<StoreResult<()>>;

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut batch: Vec<(Vec<Write>, Done)> = Vec::new();
        let mut close: Option<Done> = None;
        while close.is_none() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let mut next = Some(first);
            let mut urgent = false;
            let mut gathered = false;
            loop {
                while let Some(req) = next.take() {
                    match req {
                        Request::Unit(w, done, u) => {
                            urgent |= u;
                            batch.push((w, done));
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
                // milliseconds' worth join the transaction. Each commit rewrites the pages it
                // touches, so small commits cost far more CPU and disk per row.
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
        }
        // Close: nothing new is accepted; save the heads and flush the WAL into the main file.
        rx.close();
        while let Ok(req) = rx.try_recv() {
            if let Request::Unit(w, done, _) = req {
                batch.push((w, done));
            }
        }
        self.commit(&mut batch);
        let r = self
            .apply(std::iter::empty(), true)
            .and_then(|()| {
                self.conn
                    .pragma_update(None, "wal_checkpoint", "TRUNCATE")
                    .map_err(db_err)
            })
            .and_then(|()| self.conn.close().map_err(|(_, e)| db_err(e)));
        if let Some(done) = close {
            let _ = done.send(r);
        }
    }

    /// Applies a batch in one transaction and acknowledges every unit of it.
    fn commit(&mut self, batch: &mut Vec<(Vec<Write>, Done)>) {
        if batch.is_empty() {
            return;
        }
        let save_heads = self.last_saved.elapsed() >= HEADS_EVERY;
        match self.apply(batch.iter().map(|(w, _)| w.as_slice()), save_heads) {
            Ok(()) => {
                for (_, done) in batch.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                // One bad unit must not sink the others: retry each on its own.
                tracing::error!(error = %e, units = batch.len(), "batch commit failed; retrying units one by one");
                for (w, done) in batch.drain(..) {
                    let r = self.apply(std::iter::once(w.as_slice()), false);
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "unit not stored");
                    }
                    let _ = done.send(r);
                }
            }
        }
    }

    /// One transaction: the units, and the heads when `save_heads`. The shared heads move
    /// only once the transaction is committed.
    fn apply<'a>(
        &mut self,
        units: impl Iterator<Item = &'a [Write]>,
        save_heads: bool,
    ) -> StoreResult<()> {
        let mut moved: HashMap<&'a str, i64> = HashMap::new();
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
            let heads = lock_heads(&self.heads);
            for unit in units {
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
                            .map(drop),
                        Write::DeviceType(t) => ty.execute(params![t.name, t.data]).map(drop),
                        Write::Credential(c) => cred
                            .execute(params![c.username, c.subject, c.hash, c.created_at])
                            .map(drop),
                        Write::DeleteCredential(username) => uncred.execute([username]).map(drop),
                    }
                    .map_err(db_err)?;
                }
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
        Ok(())
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
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Request::Unit(_, done, _))) =
            self.tx.send(Request::Unit(writes, done, true))
        {
            let _ = done.send(Err(StoreError::Closed));
        }
        Commit::new(rx)
    }

    fn submit_background(&self, writes: Vec<Write>) -> Commit {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Request::Unit(_, done, _))) =
            self.tx.send(Request::Unit(writes, done, false))
        {
            let _ = done.send(Err(StoreError::Closed));
        }
        Commit::new(rx)
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
                .query_map(params![filter.device, filter.kind, filter.limit], |r| {
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
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
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
