//! Run-time settings, read from the environment so the same image runs anywhere:
//! `PORT`, `BIND_ADDR`, `MODEL_DIR`, `DATA_DIR`, `MAX_BODY_BYTES`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};

pub const DEFAULT_PORT: u16 = 8000;
pub const DEFAULT_MODEL_DIR: &str = "/app/model";
pub const DEFAULT_DATA_DIR: &str = "/app/data";
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub model_dir: PathBuf,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
}

impl Config {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Same as [`Config::from_env`] with the variables supplied by `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let port = match lookup("PORT") {
            Some(v) => v
                .trim()
                .parse::<u16>()
                .with_context(|| format!("parsing PORT {v:?} as a port number"))?,
            None => DEFAULT_PORT,
        };
        let ip = match lookup("BIND_ADDR") {
            Some(v) => v
                .trim()
                .parse::<IpAddr>()
                .with_context(|| format!("parsing BIND_ADDR {v:?} as an IP address"))?,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let max_body_bytes = match lookup("MAX_BODY_BYTES") {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| {
                    format!("parsing MAX_BODY_BYTES {v:?} as a positive byte count")
                })?,
            None => DEFAULT_MAX_BODY_BYTES,
        };
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            model_dir: lookup("MODEL_DIR")
                .unwrap_or_else(|| DEFAULT_MODEL_DIR.into())
                .into(),
            data_dir: lookup("DATA_DIR")
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into())
                .into(),
            max_body_bytes,
        })
    }
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
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = with(&[
            ("PORT", "0"),
            ("BIND_ADDR", "127.0.0.1"),
            ("MAX_BODY_BYTES", "1024"),
        ])
        .unwrap();
        assert_eq!(c.addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.max_body_bytes, 1024);
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        let e = with(&[("PORT", "80000")]).unwrap_err();
        assert!(format!("{e:#}").contains("PORT"), "{e:#}");
        let e = with(&[("MAX_BODY_BYTES", "0")]).unwrap_err();
        assert!(format!("{e:#}").contains("MAX_BODY_BYTES"), "{e:#}");
        let e = with(&[("BIND_ADDR", "localhost")]).unwrap_err();
        assert!(format!("{e:#}").contains("BIND_ADDR"), "{e:#}");
    }
}
