//! The store's health, shared between the writer thread (which updates it) and callers of
//! [`crate::store::Store::health`] (which read it): atomics and one small mutex, never I/O on
//! the reader's side.
//!
//! Also the check that the database file is still the one the writer has open: a file deleted
//! or replaced under a running server (an `rm -rf` of the data directory, a restore copied over
//! it) keeps taking writes — into an unlinked inode that vanishes on restart. The writer
//! compares the path's device and inode (and its WAL's) with those it recorded at open before
//! every commit and once a second while idle: two `stat` calls, a few microseconds.
//! (Comparing with the open file's own `fstat`, `nlink == 0`, would need a second descriptor on
//! the database, and closing a descriptor drops every POSIX lock the process holds on the file,
//! SQLite's included; the path check finds the same cases without one.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Histogram, StoreHealth};

/// Upper bounds (seconds) of the commit latency histogram.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Status {
    /// The file is gone or replaced: stays until restart.
    lost: Option<String>,
    /// The last commit failed (cleared by the next that succeeds).
    failing: Option<String>,
}

/// What the writer tells the world. One per store.
#[derive(Debug, Default)]
pub struct Shared {
    /// Units that failed to commit: the one count, also `store_failures` in `/api/stats`.
    pub failures: Arc<AtomicU64>,
    pub queue_depth: AtomicU64,
    pub db_bytes: AtomicU64,
    pub removed_messages: AtomicU64,
    pub removed_events: AtomicU64,
    status: Mutex<Status>,
    /// Per bucket (not cumulative), then +Inf.
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn observe_commit(&self, latency: Duration) {
        let s = latency.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The file is gone or replaced; returns whether this is news.
    pub fn set_lost(&self, problem: &str) -> bool {
        let mut st = self.status();
        let new = st.lost.is_none();
        if new {
            st.lost = Some(problem.to_string());
        }
        new
    }

    pub fn lost(&self) -> Option<String> {
        self.status().lost.clone()
    }

    /// Commits fail; returns whether this is news.
    pub fn set_failing(&self, problem: String) -> bool {
        let mut st = self.status();
        let new = st.failing.is_none();
        st.failing = Some(problem);
        new
    }

    /// A commit succeeded; returns whether commits were failing until now.
    pub fn clear_failing(&self) -> bool {
        self.status().failing.take().is_some()
    }

    pub fn snapshot(&self) -> StoreHealth {
        let (writable, problem) = {
            let st = self.status();
            match (&st.lost, &st.failing) {
                (Some(p), _) | (None, Some(p)) => (false, Some(p.clone())),
                (None, None) => (true, None),
            }
        };
        let mut buckets = Vec::with_capacity(BUCKETS.len());
        let mut cumulative = 0;
        for (i, &b) in BUCKETS.iter().enumerate() {
            cumulative += self.latency[i].load(Ordering::Relaxed);
            buckets.push((b, cumulative));
        }
        let count = cumulative + self.latency[BUCKETS.len()].load(Ordering::Relaxed);
        StoreHealth {
            writable,
            problem,
            failures: self.failures.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            db_bytes: self.db_bytes.load(Ordering::Relaxed),
            commit_latency: Histogram {
                buckets,
                sum_seconds: self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
                count,
            },
            retention_removed_messages: self.removed_messages.load(Ordering::Relaxed),
            retention_removed_events: self.removed_events.load(Ordering::Relaxed),
        }
    }
}

/// `(device, inode)` of a path, `None` if it does not exist.
fn identity(path: &Path) -> std::io::Result<Option<(u64, u64)>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some((m.dev(), m.ino()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        match std::fs::metadata(path) {
            Ok(_) => Ok(Some((0, 0))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The path of a database's WAL.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// The database file and its WAL as they were when the writer opened them.
#[derive(Debug)]
pub struct FileWatch {
    db: PathBuf,
    wal: PathBuf,
    db_id: Option<(u64, u64)>,
    wal_id: Option<(u64, u64)>,
}

impl FileWatch {
    /// Records the identity of `db` and its WAL (call once the writer has them open).
    pub fn new(db: &Path) -> FileWatch {
        let wal = wal_path(db);
        FileWatch {
            db_id: identity(db).ok().flatten(),
            wal_id: identity(&wal).ok().flatten(),
            db: db.to_path_buf(),
            wal,
        }
    }

    /// `Some(problem)` when the file (or its WAL) is no longer the one open.
    pub fn check(&mut self) -> Option<String> {
        let what = |p: &Path, how: &str| {
            format!(
                "the database file {} was {how} while gatehouse was running: nothing written \
                 since is durable, so nothing is answered. Stop gatehouse; restore the data \
                 directory from a backup (README, \"Backup and restore\") or move it aside to \
                 start empty; then start it again",
                p.display()
            )
        };
        for (path, id) in [(&self.db, &mut self.db_id), (&self.wal, &mut self.wal_id)] {
            match (identity(path), *id) {
                (Ok(None), Some(_)) => return Some(what(path, "deleted")),
                (Ok(Some(now)), Some(then)) if now != then => {
                    return Some(what(path, "replaced by another file"));
                }
                // A WAL that appeared since open (SQLite creates it on the first write).
                (Ok(Some(now)), None) => *id = Some(now),
                _ => {}
            }
        }
        None
    }

    /// Main file + WAL, bytes.
    pub fn size(&self) -> u64 {
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        len(&self.db) + len(&self.wal)
    }
}
