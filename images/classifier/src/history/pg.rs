//! The history in PostgreSQL (`DATABASE_URL`): one history for every replica of the
//! service, on as many VMs as there are. Connections come from a small pool; the schema is
//! a numbered list of migrations, applied at start-up under an advisory lock so that
//! replicas starting together apply each one once. TLS, when the URL asks for it
//! (`sslmode=require`), always verifies the server's certificate and name.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::config::{Host, SslMode};
use r2d2_postgres::PostgresConnectionManager;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{predictions_value, Entry, Retention, Row, AGE_PRUNE_INTERVAL};

/// Connections kept by default: a request holds one for one statement, and a VM's few
/// inference slots bound how many write at once.
pub const DEFAULT_POOL_SIZE: u32 = 4;
pub const MAX_POOL_SIZE: u32 = 64;
/// How long start-up, and then a request, waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The advisory lock held while migrating (any constant that other programs sharing the
/// database are unlikely to take: "classify" in ASCII).
const MIGRATION_LOCK: i64 = 0x636c_6173_7369_6679;

/// The schema, one step per entry, never edited once released: a new version appends.
/// `classifier_migrations` records which steps a database has.
const MIGRATIONS: &[&str] = &["CREATE TABLE predictions (
         id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
         filename TEXT,
         content_type TEXT,
         top_label TEXT NOT NULL,
         top_score REAL NOT NULL,
         inference_ms DOUBLE PRECISION NOT NULL,
         predictions JSONB NOT NULL
     );
     CREATE INDEX predictions_created_at ON predictions (created_at);"];

/// What the service needs to reach its database, checked when the settings are read.
#[derive(Clone)]
pub struct Settings {
    config: postgres::Config,
    ca_file: Option<PathBuf>,
    roots: Arc<rustls::RootCertStore>,
    pool_size: u32,
    target: String,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("target", &self.target)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// `url` is `DATABASE_URL`; `password_file` (`DATABASE_PASSWORD_FILE`) holds the
    /// password, so that it is in no URL and no argument list; `ca_file`
    /// (`DATABASE_CA_FILE`) the PEM certificates that may sign the server's (default: the
    /// public web PKI's roots). Error messages name the variable and never show a password.
    pub fn new(
        url: &str,
        password_file: Option<&Path>,
        ca_file: Option<&Path>,
        pool_size: u32,
    ) -> Result<Self> {
        const FORM: &str = "postgres://USER@HOST[:PORT]/DATABASE[?sslmode=require]";
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("DATABASE_URL must have the form {FORM}");
        }
        let sslmode = url
            .split_once('?')
            .into_iter()
            .flat_map(|(_, query)| query.split('&'))
            .find_map(|pair| pair.strip_prefix("sslmode="));
        match sslmode {
            None | Some("disable" | "require") => {}
            Some(mode @ ("verify-ca" | "verify-full")) => bail!(
                "DATABASE_URL's sslmode={mode}: use sslmode=require, which here always \
                 verifies the server's certificate and name (verify-full)"
            ),
            // libpq's prefer falls back to plain when TLS fails; a verified TLS that
            // silently turns plain would hide an attack, so the choice is explicit.
            Some(_) => bail!(
                "DATABASE_URL's sslmode must be require (TLS, the server verified) or \
                 disable (plain)"
            ),
        }
        // Without an sslmode the connection is plain: TLS only when the URL asks for it.
        let mut config = postgres::Config::from_str(url).map_err(|e| {
            anyhow::anyhow!("DATABASE_URL is not a PostgreSQL URL ({e}); expected {FORM}")
        })?;
        if sslmode.is_none() {
            config.ssl_mode(SslMode::Disable);
        }
        let host = match config.get_hosts() {
            [Host::Tcp(host)] if !host.is_empty() => host.clone(),
            [] => bail!("DATABASE_URL names no host; expected {FORM}"),
            [_] => bail!(
                "DATABASE_URL must name a TCP host (replicas on other VMs use it); expected {FORM}"
            ),
            _ => bail!("DATABASE_URL must name one host; expected {FORM}"),
        };
        let user = match config.get_user() {
            Some(user) if !user.is_empty() => user.to_owned(),
            _ => bail!("DATABASE_URL names no user; expected {FORM}"),
        };
        let dbname = config.get_dbname().unwrap_or(&user).to_owned();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        if let Some(file) = password_file {
            if config.get_password().is_some() {
                bail!(
                    "DATABASE_URL carries a password and DATABASE_PASSWORD_FILE is set: \
                     give the password once, in the file"
                );
            }
            let password = std::fs::read_to_string(file)
                .with_context(|| format!("reading DATABASE_PASSWORD_FILE {}", file.display()))?;
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                bail!("DATABASE_PASSWORD_FILE {} is empty", file.display());
            }
            config.password(password);
        }
        if !(1..=MAX_POOL_SIZE).contains(&pool_size) {
            bail!("DATABASE_POOL_SIZE {pool_size} must be from 1 to {MAX_POOL_SIZE}");
        }
        let roots = match ca_file {
            Some(file) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(file)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .with_context(|| format!("reading DATABASE_CA_FILE {}", file.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    bail!(
                        "DATABASE_CA_FILE {} holds no usable PEM certificate",
                        file.display()
                    );
                }
                roots
            }
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        config
            .application_name("classifier")
            .connect_timeout(CONNECT_TIMEOUT);
        Ok(Self {
            config,
            ca_file: ca_file.map(Path::to_path_buf),
            roots: Arc::new(roots),
            pool_size,
            target: format!("postgres://{user}@{host}:{port}/{dbname}"),
        })
    }

    /// `postgres://USER@HOST:PORT/DATABASE`, without the password.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn tls(&self) -> Result<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("setting up TLS")?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

pub struct Postgres {
    /// `None` only while dropping.
    pool: Option<Pool>,
    target: String,
    retention: Retention,
    last_age_prune: Mutex<Instant>,
}

/// The pool's connection failures go to the service's log (r2d2 would use `log`).
#[derive(Debug)]
struct LogErrors;

impl r2d2::HandleError<postgres::Error> for LogErrors {
    fn handle_error(&self, error: postgres::Error) {
        tracing::warn!(error = %error, "history database connection failed");
    }
}

impl Postgres {
    /// Connects, migrates, prunes. A first connection that fails ends start-up with the
    /// server's or the TLS layer's reason (the pool would only say it timed out).
    pub fn open(settings: &Settings, retention: Retention) -> Result<Self> {
        let tls = settings.tls()?;
        settings
            .config
            .connect(tls.clone())
            .map_err(anyhow::Error::from)
            .with_context(|| format!("connecting to history database {}", settings.target))?;
        let manager = PostgresConnectionManager::new(settings.config.clone(), tls);
        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_size)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            .error_handler(Box::new(LogErrors))
            .build(manager)
            .with_context(|| format!("connecting to history database {}", settings.target))?;
        let history = Self {
            pool: Some(pool),
            target: settings.target.clone(),
            retention,
            last_age_prune: Mutex::new(Instant::now()),
        };
        history.migrate()?;
        history.prune(None, true)?;
        Ok(history)
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    fn client(
        &self,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>> {
        self.pool
            .as_ref()
            .context("the history database's pool is closed")?
            .get()
            .with_context(|| format!("connecting to history database {}", self.target))
    }

    /// Applies the steps of [`MIGRATIONS`] the database lacks, in one transaction.
    fn migrate(&self) -> Result<()> {
        let ctx = || format!("migrating history database {}", self.target);
        let mut client = self.client()?;
        let mut tx = client.transaction().with_context(ctx)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .with_context(ctx)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS classifier_migrations (
                 version INTEGER PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .with_context(ctx)?;
        let current: i32 = tx
            .query_one(
                "SELECT COALESCE(max(version), 0) FROM classifier_migrations",
                &[],
            )
            .with_context(ctx)?
            .get(0);
        let known = MIGRATIONS.len();
        let current = usize::try_from(current).unwrap_or(0);
        if current > known {
            // A newer version migrated this database (a rollback, or replicas of two
            // versions during an update). Steps only add, so this version still works.
            tracing::warn!(
                database = self.target,
                schema = current,
                known,
                "the history database's schema is newer than this version knows"
            );
        }
        for (step, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let version = i32::try_from(step + 1).context("migration number")?;
            tx.batch_execute(sql)
                .with_context(|| format!("{}: step {version}", ctx()))?;
            tx.execute(
                "INSERT INTO classifier_migrations (version) VALUES ($1)",
                &[&version],
            )
            .with_context(ctx)?;
        }
        tx.commit().with_context(ctx)
    }

    /// Deletes rows beyond the retention limits: the count once `newest` was written, the
    /// age at most once a minute (and when `force`).
    fn prune(&self, newest: Option<i64>, force: bool) -> Result<()> {
        let ctx = || format!("pruning history database {}", self.target);
        let keep = i64::try_from(self.retention.max_rows).unwrap_or(i64::MAX);
        let mut client = self.client()?;
        let newest = match newest {
            Some(id) => Some(id),
            None => client
                .query_one("SELECT max(id) FROM predictions", &[])
                .with_context(ctx)?
                .get(0),
        };
        // Ids only grow, so the newest `max_rows` rows are those above this one.
        if let Some(newest) = newest.filter(|id| *id > keep) {
            client
                .execute(
                    "DELETE FROM predictions WHERE id <= $1",
                    &[&(newest - keep)],
                )
                .with_context(ctx)?;
        }
        if self.retention.max_age_days > 0 {
            let due = {
                let mut last = self
                    .last_age_prune
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let due = force || last.elapsed() >= AGE_PRUNE_INTERVAL;
                if due {
                    *last = Instant::now();
                }
                due
            };
            if due {
                let days = i32::try_from(self.retention.max_age_days).unwrap_or(i32::MAX);
                client
                    .execute(
                        "DELETE FROM predictions
                         WHERE created_at < now() - make_interval(days => $1)",
                        &[&days],
                    )
                    .with_context(ctx)?;
            }
        }
        Ok(())
    }

    pub fn record(&self, row: &Row) -> Result<i64> {
        let id: i64 = self
            .client()?
            .query_one(
                "INSERT INTO predictions
                     (filename, content_type, top_label, top_score, inference_ms, predictions)
                 VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)
                 RETURNING id",
                &[
                    &row.filename,
                    &row.content_type,
                    &row.top_label,
                    &row.top_score,
                    &row.inference_ms,
                    &row.predictions,
                ],
            )
            .with_context(|| format!("writing to history database {}", self.target))?
            .get(0);
        self.prune(Some(id), false)?;
        Ok(id)
    }

    pub fn recent(&self, limit: i64, before: i64) -> Result<Vec<Entry>> {
        let ctx = || format!("reading history database {}", self.target);
        let rows = self
            .client()?
            .query(
                "SELECT id,
                        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                        filename, content_type, top_label, top_score, inference_ms,
                        predictions::text
                 FROM predictions WHERE id < $2 ORDER BY id DESC LIMIT $1",
                &[&limit, &before],
            )
            .with_context(ctx)?;
        rows.iter()
            .map(|row| {
                Ok(Entry {
                    id: row.try_get(0)?,
                    created_at: row.try_get(1)?,
                    filename: row.try_get(2)?,
                    content_type: row.try_get(3)?,
                    top_label: row.try_get(4)?,
                    top_score: row.try_get(5)?,
                    inference_ms: row.try_get(6)?,
                    predictions: predictions_value(row.try_get(7)?),
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()
            .with_context(ctx)
    }

    pub fn has_older(&self, id: i64) -> Result<bool> {
        Ok(self
            .client()?
            .query_opt("SELECT 1 FROM predictions WHERE id < $1 LIMIT 1", &[&id])
            .with_context(|| format!("reading history database {}", self.target))?
            .is_some())
    }

    pub fn count(&self) -> Result<i64> {
        Ok(self
            .client()?
            .query_one("SELECT count(*) FROM predictions", &[])
            .with_context(|| format!("reading history database {}", self.target))?
            .get(0))
    }
}

impl Drop for Postgres {
    /// Each connection owns a small runtime of its own, which may not be dropped on an
    /// async runtime's thread (the service drops its state there when it shuts down): the
    /// pool is closed on a thread of its own.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_postgres::{cluster, Database};
    use super::*;

    const KEEP: Retention = Retention {
        max_rows: 100,
        max_age_days: 30,
    };

    fn settings(url: &str, db: &Database) -> Result<Settings> {
        Settings::new(url, Some(&db.password_file), Some(&db.ca_file), 4)
    }

    fn open(url: &str, db: &Database) -> Result<Postgres> {
        Postgres::open(&settings(url, db)?, KEEP)
    }

    #[test]
    fn bad_settings_are_refused_naming_the_variable_and_never_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        // URL, password file, CA file, pool size, what the error says.
        type Case<'a> = (&'a str, Option<&'a Path>, Option<&'a Path>, u32, &'a str);
        let cases: [Case<'_>; 11] = [
            (
                "mysql://u@h/db",
                None,
                None,
                4,
                "DATABASE_URL must have the form",
            ),
            (
                "postgres:///db?user=u",
                None,
                None,
                4,
                "DATABASE_URL names no host",
            ),
            (
                "postgres://u@%2Frun%2Fpostgresql/db",
                None,
                None,
                4,
                "TCP host",
            ),
            ("postgres://h1,h2/db?user=u", None, None, 4, "one host"),
            ("postgres://h/db", None, None, 4, "names no user"),
            (
                "postgres://u@h/db?sslmode=verify-full",
                None,
                None,
                4,
                "sslmode=require",
            ),
            (
                "postgres://u@h/db?sslmode=prefer",
                None,
                None,
                4,
                "must be require",
            ),
            (
                "postgres://u:hunter2hunter2@h/db",
                Some(&pw),
                None,
                4,
                "give the password once",
            ),
            (
                "postgres://u@h/db",
                Some(&empty),
                None,
                4,
                "DATABASE_PASSWORD_FILE",
            ),
            (
                "postgres://u@h/db",
                None,
                Some(&not_pem),
                4,
                "DATABASE_CA_FILE",
            ),
            ("postgres://u@h/db", None, None, 0, "DATABASE_POOL_SIZE"),
        ];
        for (url, password_file, ca_file, pool, expected) in cases {
            let e = Settings::new(url, password_file, ca_file, pool).unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains(expected), "{url}: {e}");
            assert!(
                !e.contains("hunter2") && !e.contains("s3cret"),
                "{url}: {e}"
            );
        }
        let ok = Settings::new(
            "postgresql://u:hunter2hunter2@db.internal:6432/app",
            None,
            None,
            4,
        )
        .unwrap();
        assert_eq!(ok.target(), "postgres://u@db.internal:6432/app");
        assert!(!format!("{ok:?}").contains("hunter2"));
        // No sslmode: plain, as asked; sslmode=require: TLS.
        assert_eq!(ok.config.get_ssl_mode(), SslMode::Disable);
        let tls = Settings::new("postgres://u@h/db?sslmode=require", Some(&pw), None, 4).unwrap();
        assert_eq!(tls.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(tls.config.get_password(), Some(&b"s3cret"[..]));
    }

    /// The test server takes the service's role over TLS only: plain is refused by the
    /// server, and TLS with a certificate that does not chain to DATABASE_CA_FILE (here:
    /// the public roots) by the client.
    #[test]
    fn tls_is_used_and_the_server_certificate_is_verified() {
        let db = cluster().database();
        let h = open(&db.url, &db).expect("TLS with the test CA");
        assert_eq!(h.count().unwrap(), 0);
        let ssl = cluster().psql(
            &db.name,
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'classifier'",
        );
        assert_eq!(ssl, "t");
        drop(h);

        let plain = db.url.replace("sslmode=require", "sslmode=disable");
        let e = format!("{:#}", open(&plain, &db).err().expect("plain is refused"));
        assert!(e.contains("no encryption"), "{e}");

        let public_roots = Settings::new(&db.url, Some(&db.password_file), None, 4).unwrap();
        let e = Postgres::open(&public_roots, KEEP)
            .err()
            .expect("unknown issuer");
        let e = format!("{e:#}");
        assert!(e.contains("UnknownIssuer"), "{e}");

        // The right server, the wrong name: 127.0.0.2 is not in its certificate.
        let wrong_name = db.url.replace("@localhost:", "@127.0.0.2:");
        let e = format!("{:#}", open(&wrong_name, &db).err().expect("wrong name"));
        assert!(e.contains("not valid for name"), "{e}");
    }

    /// Replicas starting together on an empty database: each migration step runs once.
    #[test]
    fn replicas_starting_together_migrate_once() {
        let db = cluster().database();
        let opened: Vec<Result<Postgres>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(|| open(&db.url, &db))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for h in &opened {
            assert!(h.is_ok(), "{:#}", h.as_ref().err().unwrap());
        }
        let steps = cluster().psql(
            &db.name,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM classifier_migrations",
        );
        assert_eq!(
            steps,
            (1..=MIGRATIONS.len())
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        // A newer version's step (a rollback): this version still starts, and works.
        cluster().psql(
            &db.name,
            "INSERT INTO classifier_migrations (version) VALUES (99)",
        );
        let h = open(&db.url, &db).unwrap();
        assert!(h.count().is_ok());
    }
}
