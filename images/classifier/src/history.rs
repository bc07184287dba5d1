//! The prediction history: every answered `/predict` is kept in SQLite at
//! `$DATA_DIR/history.sqlite3`, so `/history` survives restarts of the service.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use rusqlite::{params, Connection};
use serde::Serialize;

use crate::model::Prediction;

pub const HISTORY_FILE: &str = "history.sqlite3";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub id: i64,
    /// UTC, RFC 3339 with milliseconds.
    pub created_at: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub top_label: String,
    pub top_score: f32,
    pub inference_ms: f64,
    pub predictions: serde_json::Value,
}

/// What is recorded for one prediction.
pub struct NewEntry<'a> {
    pub filename: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub predictions: &'a [Prediction],
    pub inference_ms: f64,
}

pub struct History {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl History {
    /// Opens (creating if needed) the history database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join(HISTORY_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("opening history database {}", path.display()))?;
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
        .with_context(|| format!("initialising history database {}", path.display()))?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&self, entry: &NewEntry<'_>) -> Result<i64> {
        let top = entry
            .predictions
            .first()
            .ok_or_else(|| anyhow!("no predictions to record"))?;
        let json = serde_json::to_string(entry.predictions)?;
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO predictions
                 (filename, content_type, top_label, top_score, inference_ms, predictions)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                entry.filename,
                entry.content_type,
                top.label,
                top.score as f64,
                entry.inference_ms,
                json
            ],
        )
        .with_context(|| format!("writing to history database {}", self.path.display()))?;
        Ok(conn.last_insert_rowid())
    }

    /// The most recent `limit` entries, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<Entry>> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, created_at, filename, content_type, top_label, top_score,
                        inference_ms, predictions
                 FROM predictions ORDER BY id DESC LIMIT ?1",
            )
            .with_context(|| format!("reading history database {}", self.path.display()))?;
        let rows = stmt
            .query_map(params![limit as i64], |row| {
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

    pub fn count(&self) -> Result<i64> {
        let conn = self.lock()?;
        conn.query_row("SELECT COUNT(*) FROM predictions", [], |r| r.get(0))
            .with_context(|| format!("reading history database {}", self.path.display()))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        // A panic while holding the lock cannot leave SQLite half-written (each
        // statement is its own transaction), so a poisoned lock is still usable.
        Ok(self.conn.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(label: &str, score: f32) -> Prediction {
        Prediction {
            index: 1,
            label: label.into(),
            score,
        }
    }

    #[test]
    fn entries_survive_reopening_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let h = History::open(dir.path()).unwrap();
            for label in ["first", "second"] {
                h.record(&NewEntry {
                    filename: Some("x.png"),
                    content_type: Some("image/png"),
                    predictions: &[pred(label, 0.5)],
                    inference_ms: 12.5,
                })
                .unwrap();
            }
        }
        let h = History::open(dir.path()).unwrap();
        let recent = h.recent(10).unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].top_label, "second");
        assert_eq!(recent[1].top_label, "first");
        assert_eq!(recent[0].predictions[0]["label"], "second");
        assert!(recent[0].created_at.ends_with('Z'));
        assert_eq!(h.recent(1).unwrap().len(), 1);
        assert_eq!(h.count().unwrap(), 2);
    }

    #[test]
    fn recording_nothing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let e = NewEntry {
            filename: None,
            content_type: None,
            predictions: &[],
            inference_ms: 0.0,
        };
        assert!(h.record(&e).is_err());
    }
}
