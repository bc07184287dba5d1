//! The prediction history: every answered `/predict` is kept, so `/history` survives
//! restarts of the service. One VM keeps it in SQLite at `$DATA_DIR/history.sqlite3`;
//! replicas on several VMs share one PostgreSQL database (`DATABASE_URL`), so any replica
//! answers `/history` for all of them.

mod pg;
mod sqlite;

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::Prediction;

pub use pg::{Settings as PostgresSettings, DEFAULT_POOL_SIZE};
pub use sqlite::HISTORY_FILE;
/// Stored file names are cut to this many characters.
pub const MAX_FILENAME_CHARS: usize = 100;
/// Longer content types are not stored.
pub const MAX_CONTENT_TYPE_LEN: usize = 100;
/// Only the best few predictions are kept, whatever `top_k` the client asked for.
pub const STORED_PREDICTIONS: usize = 5;
/// Age-based pruning runs at most this often.
pub(crate) const AGE_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

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

/// One row to store: the client's strings already cleaned, the predictions cut to the
/// best few and serialized.
pub(crate) struct Row {
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub top_label: String,
    pub top_score: f32,
    pub inference_ms: f64,
    /// A JSON array of at most [`STORED_PREDICTIONS`] predictions.
    pub predictions: String,
}

enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(pg::Postgres),
}

pub struct History {
    store: Store,
    retention: Retention,
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

impl History {
    /// Opens (creating if needed) the SQLite history in `data_dir` and applies the
    /// retention limits to what is already there.
    pub fn open(data_dir: &Path, retention: Retention) -> Result<Self> {
        Ok(Self {
            store: Store::Sqlite(sqlite::Sqlite::open(data_dir, retention)?),
            retention,
        })
    }

    /// Connects to PostgreSQL, applies the schema's migrations that the database lacks and
    /// the retention limits to what is already there.
    pub fn open_postgres(settings: &PostgresSettings, retention: Retention) -> Result<Self> {
        Ok(Self {
            store: Store::Postgres(pg::Postgres::open(settings, retention)?),
            retention,
        })
    }

    /// Where the history lives, for logs: a file's path, or `postgres://USER@HOST:PORT/DB`
    /// (never the password).
    pub fn location(&self) -> String {
        match &self.store {
            Store::Sqlite(s) => s.path().display().to_string(),
            Store::Postgres(p) => p.target().to_owned(),
        }
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
        let row = Row {
            filename: entry.filename.and_then(sanitize_filename),
            content_type: entry.content_type.and_then(sanitize_content_type),
            top_label: top.label.clone(),
            top_score: top.score,
            inference_ms: entry.inference_ms,
            predictions: serde_json::to_string(stored)?,
        };
        let id = match &self.store {
            Store::Sqlite(s) => s.record(&row)?,
            Store::Postgres(p) => p.record(&row)?,
        };
        Ok(Some(id))
    }

    /// Up to `limit` entries with ids below `before` (all when `None`), newest first.
    pub fn recent(&self, limit: usize, before: Option<i64>) -> Result<Vec<Entry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let before = before.unwrap_or(i64::MAX);
        match &self.store {
            Store::Sqlite(s) => s.recent(limit, before),
            Store::Postgres(p) => p.recent(limit, before),
        }
    }

    /// Whether any entry has an id below `id`.
    pub fn has_older(&self, id: i64) -> Result<bool> {
        match &self.store {
            Store::Sqlite(s) => s.has_older(id),
            Store::Postgres(p) => p.has_older(id),
        }
    }

    pub fn count(&self) -> Result<i64> {
        match &self.store {
            Store::Sqlite(s) => s.count(),
            Store::Postgres(p) => p.count(),
        }
    }
}

/// Stored predictions as JSON; `null` if a row holds something else (never written so).
fn predictions_value(json: &str) -> serde_json::Value {
    serde_json::from_str(json).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
#[path = "../../tests/support/postgres.rs"]
mod test_postgres;

/// The same tests for both stores: SQLite in a temporary directory, and a fresh database
/// of a real PostgreSQL server (tests/support/postgres.rs).
#[cfg(test)]
mod tests {
    use super::test_postgres::{cluster, Database};
    use super::*;

    const KEEP_ALL: Retention = Retention {
        max_rows: 1000,
        max_age_days: 0,
    };

    enum Place {
        Sqlite(tempfile::TempDir),
        Postgres(Database),
    }

    impl Place {
        fn both() -> [Place; 2] {
            [
                Place::Sqlite(tempfile::tempdir().unwrap()),
                Place::Postgres(cluster().database()),
            ]
        }

        fn name(&self) -> &'static str {
            match self {
                Place::Sqlite(_) => "sqlite",
                Place::Postgres(_) => "postgres",
            }
        }

        fn settings(db: &Database) -> PostgresSettings {
            PostgresSettings::new(
                &db.url,
                Some(&db.password_file),
                Some(&db.ca_file),
                DEFAULT_POOL_SIZE,
            )
            .unwrap()
        }

        fn open(&self, retention: Retention) -> History {
            match self {
                Place::Sqlite(dir) => History::open(dir.path(), retention).unwrap(),
                Place::Postgres(db) => {
                    History::open_postgres(&Self::settings(db), retention).unwrap()
                }
            }
        }

        /// Makes the rows labelled `label` 25 years old, behind the service's back.
        fn backdate(&self, label: &str) {
            let sql = format!(
                "UPDATE predictions SET created_at = '2001-01-01T00:00:00.000Z'
                 WHERE top_label = '{label}'"
            );
            match self {
                Place::Sqlite(dir) => {
                    rusqlite::Connection::open(dir.path().join(HISTORY_FILE))
                        .unwrap()
                        .execute(&sql, [])
                        .unwrap();
                }
                Place::Postgres(db) => {
                    cluster().psql(&db.name, &sql);
                }
            }
        }
    }

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

    fn labels(h: &History) -> Vec<String> {
        h.recent(1000, None)
            .unwrap()
            .into_iter()
            .map(|e| e.top_label)
            .collect()
    }

    #[test]
    fn entries_survive_reopening_newest_first() {
        for place in Place::both() {
            let at = place.name();
            {
                let h = place.open(KEEP_ALL);
                add(&h, "first");
                add(&h, "second");
            }
            let h = place.open(KEEP_ALL);
            let recent = h.recent(10, None).unwrap();
            assert_eq!(recent.len(), 2, "{at}");
            assert_eq!(recent[0].top_label, "second", "{at}");
            assert_eq!(recent[1].top_label, "first", "{at}");
            assert_eq!(recent[0].predictions[0]["label"], "second", "{at}");
            assert_eq!(recent[0].top_score, 0.5, "{at}");
            assert_eq!(recent[0].inference_ms, 12.5, "{at}");
            assert_eq!(recent[0].filename.as_deref(), Some("x.png"), "{at}");
            // RFC 3339, UTC, milliseconds: 2026-12-07T08:01:02.345Z
            let t = &recent[0].created_at;
            assert!(
                t.len() == 24 && t.ends_with('Z') && &t[10..11] == "T" && &t[19..20] == ".",
                "{at}: {t}"
            );
            assert_eq!(h.recent(1, None).unwrap().len(), 1, "{at}");
            assert_eq!(h.count().unwrap(), 2, "{at}");
            // The next page starts below the last id seen.
            let older = h.recent(10, Some(recent[0].id)).unwrap();
            assert_eq!(older.len(), 1, "{at}");
            assert_eq!(older[0].top_label, "first", "{at}");
            assert!(!h.has_older(older[0].id).unwrap(), "{at}");
            assert!(h.has_older(recent[0].id).unwrap(), "{at}");
        }
    }

    /// Two versions of the service writing during a blue-green switch, or two replicas on
    /// two VMs: two stores open on one history, from two threads, every write kept.
    #[test]
    fn two_writers_on_one_history_lose_nothing() {
        for place in Place::both() {
            let at = place.name();
            let a = place.open(KEEP_ALL);
            let b = place.open(KEEP_ALL);
            std::thread::scope(|s| {
                for (h, label) in [(&a, "blue"), (&b, "green")] {
                    s.spawn(move || {
                        for _ in 0..200 {
                            assert!(add(h, label).is_some());
                        }
                    });
                }
            });
            assert_eq!(a.count().unwrap(), 400, "{at}");
            let labels = labels(&b);
            assert_eq!(labels.iter().filter(|l| *l == "blue").count(), 200, "{at}");
        }
    }

    #[test]
    fn recording_nothing_is_an_error() {
        for place in Place::both() {
            let h = place.open(KEEP_ALL);
            let e = NewEntry {
                filename: None,
                content_type: None,
                predictions: &[],
                inference_ms: 0.0,
            };
            assert!(h.record(&e).is_err(), "{}", place.name());
        }
    }

    #[test]
    fn only_the_newest_rows_are_kept() {
        let rows = |max_rows| Retention {
            max_rows,
            max_age_days: 30,
        };
        for place in Place::both() {
            let at = place.name();
            let h = place.open(rows(3));
            for i in 0..10 {
                add(&h, &format!("label {i}"));
            }
            assert_eq!(h.count().unwrap(), 3, "{at}");
            assert_eq!(labels(&h), ["label 9", "label 8", "label 7"], "{at}");
            drop(h);
            // A smaller limit applies to what is already there when the service starts.
            let h = place.open(rows(1));
            assert_eq!(h.count().unwrap(), 1, "{at}");
            let off = place.open(rows(0));
            assert_eq!(add(&off, "not kept"), None, "{at}");
            // 0 keeps nothing, not even what was there.
            assert_eq!(off.count().unwrap(), 0, "{at}");
        }
    }

    #[test]
    fn old_rows_are_deleted_at_start_up() {
        for place in Place::both() {
            let at = place.name();
            let h = place.open(KEEP_ALL);
            add(&h, "old");
            add(&h, "new");
            drop(h);
            place.backdate("old");
            // No age limit: the old row stays.
            assert_eq!(place.open(KEEP_ALL).count().unwrap(), 2, "{at}");
            let h = place.open(Retention {
                max_rows: 1000,
                max_age_days: 30,
            });
            assert_eq!(labels(&h), ["new"], "{at}");
        }
    }

    #[test]
    fn stored_client_strings_are_capped_and_cleaned() {
        for place in Place::both() {
            let at = place.name();
            let h = place.open(KEEP_ALL);
            let long = "a".repeat(100_000);
            let preds: Vec<Prediction> = (0..1000).map(|i| pred(&format!("l{i}"), 0.001)).collect();
            h.record(&NewEntry {
                filename: Some(&long),
                content_type: Some(&long),
                predictions: &preds,
                inference_ms: 1.0,
            })
            .unwrap();
            // A NUL, which PostgreSQL's text refuses, and a bidi override.
            h.record(&NewEntry {
                filename: Some("../../etc/pass\u{0}wd\u{202e}gnp.exe"),
                content_type: Some("image/png\u{0}"),
                predictions: &[pred("cat", 0.5)],
                inference_ms: 1.0,
            })
            .unwrap();
            let recent = h.recent(2, None).unwrap();
            let e = &recent[1];
            assert_eq!(
                e.filename.as_deref().map(str::len),
                Some(MAX_FILENAME_CHARS),
                "{at}"
            );
            assert_eq!(e.content_type, None, "{at}");
            assert_eq!(
                e.predictions.as_array().unwrap().len(),
                STORED_PREDICTIONS,
                "{at}"
            );
            assert_eq!(
                recent[0].filename.as_deref(),
                Some("pass_wd_gnp.exe"),
                "{at}"
            );
            assert_eq!(recent[0].content_type, None, "{at}");
        }
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
