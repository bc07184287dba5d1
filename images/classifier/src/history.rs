//! The prediction history: every answered `/predict` is kept in SQLite at
//! `$DATA_DIR/history.sqlite3`, so `/history` survives restarts of the service.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::Prediction;

pub const HISTORY_FILE: &str = "history.sqlite3";
/// Stored file names are cut to this many characters.
pub const MAX_FILENAME_CHARS: usize = 100;
/// Longer content types are not stored.
pub const MAX_CONTENT_TYPE_LEN: usize = 100;
/// Only the best few predictions are kept, whatever `top_k` the client asked for.
pub const STORED_PREDICTIONS: usize = 5;
/// Age-based pruning runs at most this often.
const AGE_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct Entry {
    pub id: i64,
    /// UTC, RFC 3339 with milliseconds.
    pub created_at: String,
    /// The upload's file name (sanitised, at most 100 characters); `null` when the
    /// history is shown anonymously or none was sent.
    pub filename: Option<String>,
    /// The upload's content type; `null` when shown anonymously or not valid.
    pub content_type: Option<String>,
    pub top_label: String,
    pub top_score: f32,
    pub inference_ms: f64,
    /// The best (at most 5) predictions.
    #[schema(value_type = Vec<Prediction>)]
    pub predictions: serde_json::Value,
}

/// What is recorded for one prediction.
pub struct NewEntry<'a> {
    pub filename: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub predictions: &'a [Prediction],
    pub inference_ms: f64,
}

/// How much history is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Newest rows kept; 0 records nothing.
    pub max_rows: u64,
    /// Rows older than this many days are deleted; 0 keeps them.
    pub max_age_days: u64,
}

struct Db {
    conn: Connection,
    last_age_prune: Instant,
}

pub struct History {
    path: PathBuf,
    retention: Retention,
    db: Mutex<Db>,
}

/// A client-supplied file name made safe to store and show: the last path component,
/// control and bidi-override characters replaced, at most [`MAX_FILENAME_CHARS`].
pub fn sanitize_filename(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                '_'
            } else {
                c
            }
        })
        .take(MAX_FILENAME_CHARS)
        .collect();
    let clean = clean.trim().to_owned();
    (!clean.is_empty()).then_some(clean)
}

/// A client-supplied content type, kept only if it is a plain `type/subtype` token
/// (parameters dropped, lower-cased, at most [`MAX_CONTENT_TYPE_LEN`] bytes).
pub fn sanitize_content_type(ct: &str) -> Option<String> {
    let essence = ct.split(';').next()?.trim().to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    let (kind, sub) = essence.split_once('/')?;
    (essence.len() <= MAX_CONTENT_TYPE_LEN && token(kind) && token(sub)).then_some(essence)
}

/// How long a write waits for the other version's, during a blue-green switch.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl History {
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

    /// Records one prediction (sanitised, best 5 only) and applies the retention limits.
    /// Returns the new row's id, or `None` when the history keeps nothing.
    pub fn record(&self, entry: &NewEntry<'_>) -> Result<Option<i64>> {
        let top = entry
            .predictions
            .first()
            .ok_or_else(|| anyhow!("no predictions to record"))?;
        if self.retention.max_rows == 0 {
            return Ok(None);
        }
        let stored = &entry.predictions[..entry.predictions.len().min(STORED_PREDICTIONS)];
        let json = serde_json::to_string(stored)?;
        let filename = entry.filename.and_then(sanitize_filename);
        let content_type = entry.content_type.and_then(sanitize_content_type);
        let mut db = self.lock();
        db.conn
            .execute(
                "INSERT INTO predictions
                     (filename, content_type, top_label, top_score, inference_ms, predictions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    filename,
                    content_type,
                    top.label,
                    top.score as f64,
                    entry.inference_ms,
                    json
                ],
            )
            .with_context(|| format!("writing to history database {}", self.path.display()))?;
        let id = db.conn.last_insert_rowid();
        self.prune(&mut db, false)?;
        Ok(Some(id))
    }

    /// Up to `limit` entries with ids below `before` (all when `None`), newest first.
    pub fn recent(&self, limit: usize, before: Option<i64>) -> Result<Vec<Entry>> {
        let db = self.lock();
        let mut stmt = db
            .conn
            .prepare_cached(
                "SELECT id, created_at, filename, content_type, top_label, top_score,
                        inference_ms, predictions
                 FROM predictions WHERE id < ?2 ORDER BY id DESC LIMIT ?1",
            )
            .with_context(|| format!("reading history database {}", self.path.display()))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![limit, before.unwrap_or(i64::MAX)], |row| {
                let predictions: String = row.get(7)?;
                Ok(Entry {
                    id: row.get(0)?,
                    created_at: row.get(1)?,
                    filename: row.get(2)?,
                    content_type: row.get(3)?,
                    top_label: row.get(4)?,
                    top_score: row.get::<_, f64>(5)? as f32,
                    inference_ms: row.get(6)?,
                    predictions: serde_json::from_str(&predictions)
                        .unwrap_or(serde_json::Value::Null),
                })
            })
            .with_context(|| format!("reading history database {}", self.path.display()))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .with_context(|| format!("reading history database {}", self.path.display()))
    }

    /// Whether any entry has an id below `id`.
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

    const KEEP_ALL: Retention = Retention {
        max_rows: 1000,
        max_age_days: 0,
    };

    fn pred(label: &str, score: f32) -> Prediction {
        Prediction {
            index: 1,
            label: label.into(),
            score,
        }
    }

    fn add(h: &History, label: &str) -> Option<i64> {
        h.record(&NewEntry {
            filename: Some("x.png"),
            content_type: Some("image/png"),
            predictions: &[pred(label, 0.5)],
            inference_ms: 12.5,
        })
        .unwrap()
    }

    #[test]
    fn entries_survive_reopening_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = History::open(dir.path(), KEEP_ALL).unwrap();
            add(&h, "first");
            add(&h, "second");
        }
        let h = History::open(dir.path(), KEEP_ALL).unwrap();
        let recent = h.recent(10, None).unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].top_label, "second");
        assert_eq!(recent[1].top_label, "first");
        assert_eq!(recent[0].predictions[0]["label"], "second");
        assert!(recent[0].created_at.ends_with('Z'));
        assert_eq!(h.recent(1, None).unwrap().len(), 1);
        assert_eq!(h.count().unwrap(), 2);
        // The next page starts below the last id seen.
        let older = h.recent(10, Some(recent[0].id)).unwrap();
        assert_eq!(older.len(), 1);
        assert_eq!(older[0].top_label, "first");
        assert!(!h.has_older(older[0].id).unwrap());
    }

    /// Two versions of the service writing during a blue-green switch: two connections
    /// to one file, from two threads, every write kept.
    #[test]
    fn two_writers_on_one_database_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = History::open(dir.path(), KEEP_ALL).unwrap();
        let b = History::open(dir.path(), KEEP_ALL).unwrap();
        std::thread::scope(|s| {
            for (h, label) in [(&a, "blue"), (&b, "green")] {
                s.spawn(move || {
                    for _ in 0..200 {
                        assert!(add(h, label).is_some());
                    }
                });
            }
        });
        assert_eq!(a.count().unwrap(), 400);
        let labels: Vec<String> = b
            .recent(1000, None)
            .unwrap()
            .into_iter()
            .map(|e| e.top_label)
            .collect();
        assert_eq!(labels.iter().filter(|l| *l == "blue").count(), 200);
    }

    #[test]
    fn recording_nothing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), KEEP_ALL).unwrap();
        let e = NewEntry {
            filename: None,
            content_type: None,
            predictions: &[],
            inference_ms: 0.0,
        };
        assert!(h.record(&e).is_err());
    }

    #[test]
    fn only_the_newest_rows_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(
            dir.path(),
            Retention {
                max_rows: 3,
                max_age_days: 30,
            },
        )
        .unwrap();
        for i in 0..10 {
            add(&h, &format!("label {i}"));
        }
        assert_eq!(h.count().unwrap(), 3);
        let labels: Vec<String> = h
            .recent(10, None)
            .unwrap()
            .into_iter()
            .map(|e| e.top_label)
            .collect();
        assert_eq!(labels, ["label 9", "label 8", "label 7"]);
        drop(h);
        // A smaller limit applies to what is already there when the service starts.
        let h = History::open(
            dir.path(),
            Retention {
                max_rows: 1,
                max_age_days: 30,
            },
        )
        .unwrap();
        assert_eq!(h.count().unwrap(), 1);
        let off = History::open(
            dir.path(),
            Retention {
                max_rows: 0,
                max_age_days: 0,
            },
        )
        .unwrap();
        assert_eq!(add(&off, "not kept"), None);
    }

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
        let h = History::open(
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

    #[test]
    fn old_rows_are_deleted_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), KEEP_ALL).unwrap();
        add(&h, "old");
        add(&h, "new");
        h.lock()
            .conn
            .execute(
                "UPDATE predictions SET created_at = '2001-01-01T00:00:00.000Z'
                 WHERE top_label = 'old'",
                [],
            )
            .unwrap();
        drop(h);
        let h = History::open(
            dir.path(),
            Retention {
                max_rows: 1000,
                max_age_days: 30,
            },
        )
        .unwrap();
        let left = h.recent(10, None).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].top_label, "new");
    }

    #[test]
    fn stored_client_strings_are_capped_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), KEEP_ALL).unwrap();
        let long = "a".repeat(100_000);
        let preds: Vec<Prediction> = (0..1000).map(|i| pred(&format!("l{i}"), 0.001)).collect();
        h.record(&NewEntry {
            filename: Some(&long),
            content_type: Some(&long),
            predictions: &preds,
            inference_ms: 1.0,
        })
        .unwrap();
        let e = &h.recent(1, None).unwrap()[0];
        assert_eq!(
            e.filename.as_deref().map(str::len),
            Some(MAX_FILENAME_CHARS)
        );
        assert_eq!(e.content_type, None);
        assert_eq!(e.predictions.as_array().unwrap().len(), STORED_PREDICTIONS);

        assert_eq!(
            sanitize_filename("../../etc/pass\u{0}wd\u{202e}gnp.exe").as_deref(),
            Some("pass_wd_gnp.exe")
        );
        assert_eq!(
            sanitize_filename("C:\\photos\\cat.png").as_deref(),
            Some("cat.png")
        );
        assert_eq!(sanitize_filename("dir/"), None);
        assert_eq!(
            sanitize_content_type("Image/PNG; charset=x").as_deref(),
            Some("image/png")
        );
        assert_eq!(sanitize_content_type("image/png\r\nX-Evil: 1"), None);
        assert_eq!(sanitize_content_type("nonsense"), None);
    }
}
