//! The SQLite store: one file (`gatehouse.db`) under the data directory, in WAL mode.
//!
//! One writer thread owns the write connection. It takes every unit queued while the previous
//! transaction was committing and applies them in one transaction (group commit), with
//! `synchronous=FULL` so that a commit is on disk (fsync) before any unit of it is
//! acknowledged. Reads use a second connection, which WAL lets run beside the writer.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    Commit, DeviceRecord, EventFilter, EventRecord, LoadedDevice, MessageRecord, Store, StoreError,
    StoreFuture, StoreResult, StoredEvent, StoredMessage, Write,
};

/// Most units in one transaction; more wait for the next one.
const MAX_BATCH: usize = 4096;

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
        answer TEXT NOT NULL
    );
    CREATE INDEX messages_by_device ON messages (device, seq);
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
];

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

enum Request {
    Unit(Vec<Write>, oneshot::Sender<StoreResult<()>>),
    Close(oneshot::Sender<StoreResult<()>>),
}

/// The SQLite backend. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    tx: mpsc::UnboundedSender<Request>,
    reader: Arc<Mutex<Connection>>,
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
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Db(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            tx,
            reader: Arc::new(Mutex::new(reader)),
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

fn writer_loop(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut batch: Vec<(Vec<Write>, oneshot::Sender<StoreResult<()>>)> = Vec::new();
    let mut close: Option<oneshot::Sender<StoreResult<()>>> = None;
    while close.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Unit(w, done) => batch.push((w, done)),
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
        if batch.is_empty() {
            continue;
        }
        match apply(&mut conn, batch.iter().map(|(w, _)| w.as_slice())) {
            Ok(()) => {
                for (_, done) in batch.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                // One bad unit must not sink the others: retry each on its own.
                tracing::error!(error = %e, units = batch.len(), "batch commit failed; retrying units one by one");
                for (w, done) in batch.drain(..) {
                    let r = apply(&mut conn, std::iter::once(w.as_slice()));
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "unit not stored");
                    }
                    let _ = done.send(r);
                }
            }
        }
    }
    // Close: nothing new is accepted; flush the WAL into the main file.
    rx.close();
    while let Ok(req) = rx.try_recv() {
        if let Request::Unit(w, done) = req {
            let _ = done.send(apply(&mut conn, std::iter::once(w.as_slice())));
        }
    }
    let r = conn
        .pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .map_err(db_err)
        .and_then(|()| conn.close().map_err(|(_, e)| db_err(e)));
    if let Some(done) = close {
        let _ = done.send(r);
    }
}

fn apply<'a>(conn: &mut Connection, units: impl Iterator<Item = &'a [Write]>) -> StoreResult<()> {
    let tx = conn.transaction().map_err(db_err)?;
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
                "INSERT INTO messages (device, at, send, peer, raw, parsed, answer)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(db_err)?;
        let mut ev = tx
            .prepare_cached(
                "INSERT INTO events (at, device, kind, actor, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db_err)?;
        for unit in units {
            for w in unit {
                match w {
                    Write::Device(d) => dev.execute(params![
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
                    ]),
                    Write::Message(m) => msg.execute(params![
                        m.device, m.at, m.send, m.peer, m.raw, m.parsed, m.answer
                    ]),
                    Write::Event(e) => ev.execute(params![e.at, e.device, e.kind, e.actor, e.data]),
                }
                .map_err(db_err)?;
            }
        }
    }
    tx.commit().map_err(db_err)
}

impl Store for SqliteStore {
    fn submit(&self, writes: Vec<Write>) -> Commit {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Request::Unit(_, done))) =
            self.tx.send(Request::Unit(writes, done))
        {
            let _ = done.send(Err(StoreError::Closed));
        }
        Commit::new(rx)
    }

    fn load_devices(&self) -> StoreFuture<'_, Vec<LoadedDevice>> {
        Box::pin(self.read(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT d.kind, d.id, d.protocol, d.name, d.notes, d.first_seen, d.last_seen,
                        d.online, d.presence_changed_at, d.desired_version, d.desired, d.reported,
                        m.device, m.at, m.send, m.peer, m.raw, m.parsed, m.answer
                     FROM devices d
                     LEFT JOIN messages m ON m.seq =
                        (SELECT max(seq) FROM messages WHERE device = d.kind || '/' || d.id)
                     ORDER BY d.kind, d.id",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    let device: Option<String> = r.get(12)?;
                    let last_message = match device {
                        Some(device) => Some(MessageRecord {
                            device,
                            at: r.get(13)?,
                            send: r.get(14)?,
                            peer: r.get(15)?,
                            raw: r.get(16)?,
                            parsed: r.get(17)?,
                            answer: r.get(18)?,
                        }),
                        None => None,
                    };
                    let record = DeviceRecord {
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
                    };
                    Ok(LoadedDevice {
                        record,
                        last_message,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        }))
    }

    fn messages(&self, device: String, limit: u32) -> StoreFuture<'_, Vec<StoredMessage>> {
        Box::pin(self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, device, at, send, peer, raw, parsed, answer FROM messages
                     WHERE device = ?1 ORDER BY seq DESC LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![device, limit], |r| {
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
                })
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        }))
    }

    fn events(&self, filter: EventFilter) -> StoreFuture<'_, Vec<StoredEvent>> {
        Box::pin(self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, at, device, kind, actor, data FROM events
                     WHERE (?1 IS NULL OR device = ?1) AND (?2 IS NULL OR kind = ?2)
                     ORDER BY seq DESC LIMIT ?3",
                )
                .map_err(db_err)?;
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
}
