//! Run-time settings, read from the environment so the same image runs anywhere.
//! Every variable is listed in the README; each has a default that suits a 512 MiB
//! container on a small VM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

use crate::history::PostgresSettings;

pub const DEFAULT_PORT: u16 = 8000;
pub const DEFAULT_MODEL_DIR: &str = "/app/model";
pub const DEFAULT_DATA_DIR: &str = "/app/data";
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// 50 megapixels: far more than a 224 x 224 classifier can use.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 50_000_000;
pub const DEFAULT_MAX_IMAGE_SIDE: u32 = 12_000;
/// Decoded pixels held at once, over all requests: one 50 MP RGBA image fits.
pub const DEFAULT_DECODE_MEMORY_BYTES: u64 = 200 * 1024 * 1024;
/// Uploads whose bodies may be held in memory at once.
pub const DEFAULT_MAX_PENDING_UPLOADS: usize = 8;
pub const DEFAULT_HISTORY_MAX_ROWS: u64 = 10_000;
pub const DEFAULT_HISTORY_MAX_AGE_DAYS: u64 = 30;

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub model_dir: PathBuf,
    pub data_dir: PathBuf,
    /// `GET /`'s `version` (`APP_VERSION`, default the crate version).
    pub version: String,
    pub max_body_bytes: usize,
    pub max_image_pixels: u64,
    pub max_image_side: u32,
    pub decode_memory_bytes: u64,
    pub decode_concurrency: usize,
    pub max_pending_uploads: usize,
    pub inference_sessions: usize,
    pub inference_threads: usize,
    /// 0: nothing is recorded.
    pub history_max_rows: u64,
    /// 0: no age limit.
    pub history_max_age_days: u64,
    /// With a token, `GET /history` needs `Authorization: Bearer <token>` and shows
    /// everything; without one it is public and anonymous.
    pub history_token: Option<String>,
    /// `ORT_DYLIB_PATH`; `None`: `lib/` beside the binary.
    pub ort_library: Option<PathBuf>,
    /// `DATABASE_URL` and the variables beside it: the history in PostgreSQL; `None`:
    /// SQLite in `data_dir`.
    pub database: Option<PostgresSettings>,
}

fn parse<T: FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
    what: &str,
    ok: impl Fn(&T) -> bool,
) -> Result<T> {
    match lookup(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<T>()
            .ok()
            .filter(|n| ok(n))
            .with_context(|| format!("parsing {key} {v:?} as {what}")),
    }
}

impl Config {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Same as [`Config::from_env`] with the variables supplied by `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let positive = |n: &usize| *n > 0;
        let port = parse(&lookup, "PORT", DEFAULT_PORT, "a port number", |_| true)?;
        let ip = parse(
            &lookup,
            "BIND_ADDR",
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "an IP address",
            |_| true,
        )?;
        let max_body_bytes = parse(
            &lookup,
            "MAX_BODY_BYTES",
            DEFAULT_MAX_BODY_BYTES,
            "a positive byte count",
            positive,
        )?;
        let max_image_pixels = parse(
            &lookup,
            "MAX_IMAGE_PIXELS",
            DEFAULT_MAX_IMAGE_PIXELS,
            "a positive pixel count",
            |n| *n > 0,
        )?;
        let max_image_side = parse(
            &lookup,
            "MAX_IMAGE_SIDE",
            DEFAULT_MAX_IMAGE_SIDE,
            "a positive pixel count",
            |n| *n > 0,
        )?;
        let decode_memory_bytes = parse(
            &lookup,
            "DECODE_MEMORY_BYTES",
            DEFAULT_DECODE_MEMORY_BYTES,
            "a byte count of at least 64 KiB",
            |n| *n >= 64 << 10,
        )?;
        let decode_concurrency = parse(
            &lookup,
            "DECODE_CONCURRENCY",
            cores,
            "a positive count",
            positive,
        )?;
        let max_pending_uploads = parse(
            &lookup,
            "MAX_PENDING_UPLOADS",
            DEFAULT_MAX_PENDING_UPLOADS,
            "a positive count",
            positive,
        )?;
        let inference_sessions = parse(
            &lookup,
            "INFERENCE_SESSIONS",
            cores,
            "a positive count",
            positive,
        )?;
        // The threads of the session a lone request takes (the others have one each): all
        // the cores, up to 4 (measured on 2; a model this small gains little from more).
        let inference_threads = parse(
            &lookup,
            "INFERENCE_THREADS",
            cores.min(4),
            "a positive count",
            positive,
        )?;
        let history_max_rows = parse(
            &lookup,
            "HISTORY_MAX_ROWS",
            DEFAULT_HISTORY_MAX_ROWS,
            "a row count",
            |_| true,
        )?;
        let history_max_age_days = parse(
            &lookup,
            "HISTORY_MAX_AGE_DAYS",
            DEFAULT_HISTORY_MAX_AGE_DAYS,
            "a number of days",
            |n| *n <= 100_000,
        )?;
        let history_token = match lookup("HISTORY_TOKEN") {
            None => None,
            Some(t) if t.is_empty() => None,
            Some(t) => {
                if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    bail!("HISTORY_TOKEN must be at least 16 printable ASCII characters");
                }
                Some(t)
            }
        };
        let database = database(&lookup)?;
        let version = match lookup("APP_VERSION") {
            Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
            _ => env!("CARGO_PKG_VERSION").to_owned(),
        };
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            model_dir: lookup("MODEL_DIR")
                .unwrap_or_else(|| DEFAULT_MODEL_DIR.into())
                .into(),
            data_dir: lookup("DATA_DIR")
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into())
                .into(),
            version,
            max_body_bytes,
            max_image_pixels,
            max_image_side,
            decode_memory_bytes,
            decode_concurrency,
            max_pending_uploads,
            inference_sessions,
            inference_threads,
            history_max_rows,
            history_max_age_days,
            history_token,
            ort_library: lookup("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            database,
        })
    }
}

/// `DATABASE_URL`, `DATABASE_PASSWORD_FILE`, `DATABASE_CA_FILE`, `DATABASE_POOL_SIZE`.
fn database(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<PostgresSettings>> {
    let set = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
    let Some(url) = set("DATABASE_URL") else {
        for key in [
            "DATABASE_PASSWORD_FILE",
            "DATABASE_CA_FILE",
            "DATABASE_POOL_SIZE",
        ] {
            if set(key).is_some() {
                bail!("{key} is set without DATABASE_URL: set both, or neither");
            }
        }
        return Ok(None);
    };
    let pool_size = parse(
        lookup,
        "DATABASE_POOL_SIZE",
        crate::history::DEFAULT_POOL_SIZE,
        "a connection count",
        |_| true,
    )?;
    let password_file = set("DATABASE_PASSWORD_FILE").map(PathBuf::from);
    let ca_file = set("DATABASE_CA_FILE").map(PathBuf::from);
    PostgresSettings::new(
        &url,
        password_file.as_deref(),
        ca_file.as_deref(),
        pool_size,
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_listen_on_all_interfaces_port_8000() {
        let c = with(&[]).unwrap();
        assert_eq!(c.addr, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(c.model_dir, PathBuf::from("/app/model"));
        assert_eq!(c.data_dir, PathBuf::from("/app/data"));
        assert_eq!(c.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.max_image_pixels, 50_000_000);
        assert_eq!(c.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(c.history_max_rows, 10_000);
        assert!(c.history_token.is_none());
        assert!(c.inference_sessions >= 1 && c.decode_concurrency >= 1);
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = with(&[
            ("PORT", "0"),
            ("BIND_ADDR", "127.0.0.1"),
            ("MAX_BODY_BYTES", "1024"),
            ("APP_VERSION", "v2"),
            ("MAX_IMAGE_PIXELS", "1000"),
            ("HISTORY_MAX_ROWS", "0"),
            ("HISTORY_TOKEN", "0123456789abcdef"),
            ("INFERENCE_SESSIONS", "3"),
        ])
        .unwrap();
        assert_eq!(c.addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.max_body_bytes, 1024);
        assert_eq!(c.version, "v2");
        assert_eq!(c.max_image_pixels, 1000);
        assert_eq!(c.history_max_rows, 0);
        assert_eq!(c.history_token.as_deref(), Some("0123456789abcdef"));
        assert_eq!(c.inference_sessions, 3);
        assert!(c.database.is_none());
        let c = with(&[
            (
                "DATABASE_URL",
                "postgres://app@db.internal/history?sslmode=require",
            ),
            ("DATABASE_POOL_SIZE", "8"),
        ])
        .unwrap();
        let db = c.database.expect("DATABASE_URL: PostgreSQL");
        assert_eq!(db.target(), "postgres://app@db.internal:5432/history");
        let e = with(&[
            ("DATABASE_URL", "postgres://app@db.internal/history"),
            ("DATABASE_POOL_SIZE", "1000"),
        ])
        .unwrap_err();
        assert!(format!("{e:#}").contains("DATABASE_POOL_SIZE"), "{e:#}");
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        for (key, value) in [
            ("PORT", "80000"),
            ("MAX_BODY_BYTES", "0"),
            ("BIND_ADDR", "localhost"),
            ("MAX_IMAGE_PIXELS", "-1"),
            ("DECODE_MEMORY_BYTES", "1000"),
            ("INFERENCE_SESSIONS", "0"),
            ("HISTORY_MAX_ROWS", "many"),
            ("HISTORY_TOKEN", "short"),
            ("DATABASE_URL", "sqlite:///app/data/history.sqlite3"),
            ("DATABASE_URL", "postgres://app@/history"),
            ("DATABASE_PASSWORD_FILE", "/run/secrets/db"),
            ("DATABASE_CA_FILE", "/run/secrets/ca.pem"),
        ] {
            let e = with(&[(key, value)]).unwrap_err();
            assert!(format!("{e:#}").contains(key), "{key}: {e:#}");
        }
    }
}
