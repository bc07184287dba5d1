//! The history in one SQLite file, `$DATA_DIR/history.sqlite3`: the default, for one VM.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use super::{predictions_value, Entry, Retention, Row, AGE_PRUNE_INTERVAL};

pub const HISTORY_FILE: &str = "history.sqlite3";

struct Db {
    conn: Connection,
    last_age_prune: Instant,
}

pub struct Sqlite {
    path: PathBuf,
    retention: Retention,
    db: Mutex<Db>,
}

/// How long a write waits for the other version's, during a blue-green switch.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Sqlite {
    /// Opens (creating if needed) the history database in `data_dir` and applies the
    /// retention limits to what is already there.
    pub fn open(data_dir: &Path, retention: Retention) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join(HISTORY_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("opening history database {}", path.display()))?;
        // During a blue-green deploy two versions write this file at once: WAL lets readers
        // and one writer go together, and a writer that finds the lock taken waits for it
        // (SQLite's file locks serialize the two processes) instead of failing.
        conn.busy_timeout(BUSY_TIMEOUT)
            .with_context(|| format!("opening history database {}", path.display()))?;
        let init = || -> rusqlite::Result<()> {
            // Freed pages go back to the file system (set before the first table exists;
            // an older database is converted by the VACUUM below).
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS predictions (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                     filename TEXT,
                     content_type TEXT,
                     top_label TEXT NOT NULL,
                     top_score REAL NOT NULL,
                     inference_ms REAL NOT NULL,
                     predictions TEXT NOT NULL
                 );",
            )
        };
        init().with_context(|| format!("initialising history database {}", path.display()))?;
        let history = Self {
            path,
            retention,
            db: Mutex::new(Db {
                conn,
                last_age_prune: Instant::now(),
            }),
        };
        {
            let mut db = history.lock();
            history.prune(&mut db, true)?;
            let auto_vacuum: i64 = db
                .conn
                .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
                .context("reading auto_vacuum")?;
            if auto_vacuum != 2 {
                // A database from an older version: shrink it once, and from now on.
                db.conn
                    .execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
                    .with_context(|| format!("compacting {}", history.path.display()))?;
            }
        }
        Ok(history)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes rows beyond the retention limits: the row count after every insert, the
    /// age at most once a minute (and when `force`).
    fn prune(&self, db: &mut Db, force: bool) -> Result<()> {
        let ctx = || format!("pruning history database {}", self.path.display());
        // Ids only grow, so the newest `max_rows` rows are those above this one.
        let newest: Option<i64> = db
            .conn
            .query_row("SELECT max(id) FROM predictions", [], |r| r.get(0))
            .with_context(ctx)?;
        let mut deleted = 0;
        if let Some(newest) = newest {
            let keep = i64::try_from(self.retention.max_rows).unwrap_or(i64::MAX);
            deleted += db
                .conn
                .execute(
                    "DELETE FROM predictions WHERE id <= ?1",
                    params![newest.saturating_sub(keep)],
                )
                .with_context(ctx)?;
        }
        if self.retention.max_age_days > 0
            && (force || db.last_age_prune.elapsed() >= AGE_PRUNE_INTERVAL)
        {
            db.last_age_prune = Instant::now();
            deleted += db
                .conn
                .execute(
                    "DELETE FROM predictions WHERE created_at <
                         strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)",
                    params![format!("-{} days", self.retention.max_age_days)],
                )
                .with_context(ctx)?;
            if deleted > 0 {
                db.conn
                    .execute_batch("PRAGMA incremental_vacuum;")
                    .with_context(ctx)?;
            }
        }
        Ok(())
    }

    /// Stores one row and applies the retention limits; returns the row's id.
    pub fn record(&self, row: &Row) -> Result<i64> {
        let mut db = self.lock();
        db.conn
            .execute(
                "INSERT INTO predictions
                     (filename, content_type, top_label, top_score, inference_ms, predictions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.filename,
                    row.content_type,
                    row.top_label,
                    f64::from(row.top_score),
                    row.inference_ms,
                    row.predictions
                ],
            )
            .with_context(|| format!("writing to history database {}", self.path.display()))?;
        let id = db.conn.last_insert_rowid();
        self.prune(&mut db, false)?;
        Ok(id)
    }

    /// Up to `limit` entries with ids below `before`, newest first.
    pub fn recent(&self, limit: i64, before: i64) -> Result<Vec<Entry>> {
        let db = self.lock();
        let mut stmt = db
            .conn
            .prepare_cached(
                "SELECT id, created_at, filename, content_type, top_label, top_score,
                        inference_ms, predictions
                 FROM predictions WHERE id < ?2 ORDER BY id DESC LIMIT ?1",
            )
            .with_context(|| format!("reading history database {}", self.path.display()))?;
        let rows = stmt
            .query_map(params![limit, before], |row| {
                let predictions: String = row.get(7)?;
                Ok(Entry {
                    id: row.get(0)?,
                    created_at: row.get(1)?,
                    filename: row.get(2)?,
                    content_type: row.get(3)?,
                    top_label: row.get(4)?,
                    top_score: row.get::<_, f64>(5)? as f32,
                    inference_ms: row.get(6)?,
                    predictions: predictions_value(&predictions),
                })
            })
            .with_context(|| format!("reading history database {}", self.path.display()))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .with_context(|| format!("reading history database {}", self.path.display()))
    }

    pub fn has_older(&self, id: i64) -> Result<bool> {
        let db = self.lock();
        db.conn
            .query_row(
                "SELECT 1 FROM predictions WHERE id < ?1 LIMIT 1",
                params![id],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .with_context(|| format!("reading history database {}", self.path.display()))
    }

    pub fn count(&self) -> Result<i64> {
        let db = self.lock();
        db.conn
            .query_row("SELECT COUNT(*) FROM predictions", [], |r| r.get(0))
            .with_context(|| format!("reading history database {}", self.path.display()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Db> {
        // A panic while holding the lock cannot leave SQLite half-written (each
        // statement is its own transaction), so a poisoned lock is still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_filled_by_an_older_version_shrinks_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_FILE);
        {
            // The schema and settings of the previous version: no auto_vacuum.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE predictions (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                     filename TEXT, content_type TEXT, top_label TEXT NOT NULL,
                     top_score REAL NOT NULL, inference_ms REAL NOT NULL,
                     predictions TEXT NOT NULL);",
            )
            .unwrap();
            let name = "x".repeat(100_000);
            for _ in 0..50 {
                conn.execute(
                    "INSERT INTO predictions (filename, top_label, top_score, inference_ms,
                         predictions) VALUES (?1, 'cat', 0.5, 1.0, '[]')",
                    params![name],
                )
                .unwrap();
            }
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let wal = dir.path().join(format!("{HISTORY_FILE}-wal"));
        assert!(size(&path) + size(&wal) > 5_000_000);
        let h = Sqlite::open(
            dir.path(),
            Retention {
                max_rows: 2,
                max_age_days: 30,
            },
        )
        .unwrap();
        assert_eq!(h.count().unwrap(), 2);
        drop(h);
        assert!(
            size(&path) + size(&wal) < 1_000_000,
            "{} + {} bytes",
            size(&path),
            size(&wal)
        );
    }
}
