//! `--database-url-file`: the PostgreSQL database the app keeps its state in, instead of
//! files in its data directory (the classifier's `DATABASE_URL`). The URL usually carries
//! a password, so it comes from a file only its owner reads, is never shown, and reaches
//! the VM in the app's environment file (0600), never in an argument list.

use std::fmt;

use super::types::{Parsed, Problem};

/// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|require]`.
/// Each part is restricted to characters that mean themselves in a URL and an env file.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseUrl(<hidden>)")
    }
}

/// The app's variable that carries it.
pub const DATABASE_URL: &str = "DATABASE_URL";

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// A DNS name, an IPv4 address, or an IPv6 address in brackets.
fn is_host(s: &str) -> bool {
    if let Some(v6) = s.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A password as a URL carries it: unreserved characters, sub-delimiters and %XX.
fn is_password(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 1024
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b))
}

impl DatabaseUrl {
    /// Problems never show the URL: it may hold the password.
    pub fn parse(s: &str) -> Parsed<Self> {
        let s = s.trim_end_matches(['\n', '\r']);
        let help = "put one URL in the file, e.g. postgres://app:PASSWORD@10.0.0.2:5432/app?sslmode=require";
        let problem =
            |what: &str| Err(Problem::new(format!("{what} (the URL is not shown)"), help));
        let Some(rest) = s
            .strip_prefix("postgres://")
            .or_else(|| s.strip_prefix("postgresql://"))
        else {
            return problem("the file does not hold a postgres:// URL");
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        let Some((userinfo, hostport)) = authority.rsplit_once('@') else {
            return problem("the URL names no user (USER@HOST)");
        };
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        if !is_name(user) {
            return problem("the URL's user is missing or not letters, digits and _-.");
        }
        if password.is_some_and(|p| !is_password(p)) {
            return problem("the URL's password is empty or has characters a URL must %-encode");
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, Some(port)),
            _ => (hostport, None),
        };
        if host.is_empty() {
            return problem("the URL names no host: replicas on other VMs need one");
        }
        if !is_host(host) {
            return problem("the URL's host is not a DNS name or an IP address");
        }
        if port.is_some_and(|p| !p.parse::<u16>().is_ok_and(|n| n > 0)) {
            return problem("the URL's port is not a number from 1 to 65535");
        }
        if !is_name(database) {
            return problem(
                "the URL names no database (…/DATABASE), or not letters, digits and _-.",
            );
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair {
                "sslmode=disable" | "sslmode=require" => {}
                p if p.starts_with("sslmode=verify") => {
                    return problem(
                        "use sslmode=require, which the classifier always verifies (verify-full)",
                    )
                }
                _ => {
                    return problem(
                        "the URL's only parameter may be sslmode=disable|prefer|require",
                    )
                }
            }
        }
        Ok(DatabaseUrl(s.to_owned()))
    }

    /// The URL itself, for the app's environment file on the VM (0600).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_every_part_in_order_are_taken() {
        for ok in [
            "postgres://app:s3cr%2Ft@10.0.0.2:5432/app?sslmode=require\n",
            "postgresql://app@db.internal/history",
            "postgres://app@[fd00::2]:6432/app",
        ] {
            let url = DatabaseUrl::parse(ok).unwrap();
            assert_eq!(url.expose(), ok.trim_end());
            assert_eq!(format!("{url:?}"), "DatabaseUrl(<hidden>)");
        }
    }

    #[test]
    fn bad_urls_are_refused_without_showing_them() {
        for (bad, says) in [
            ("mysql://app:hunter2@h/app", "postgres://"),
            ("postgres://app:hunter2@/app", "no host"),
            ("postgres://app:hunter2@:5432/app", "no host"),
            ("postgres://h/app", "no user"),
            ("postgres://app:hunter2@h", "no database"),
            ("postgres://app:hunter2@h:0/app", "port"),
            ("postgres://app:hunter2@h:x/app", "port"),
            ("postgres://app:hunter2@bad_host/app", "host"),
            ("postgres://app:hunt er2@h/app", "password"),
            (
                "postgres://app:hunter2@h/app?sslmode=verify-full",
                "sslmode=require",
            ),
            (
                "postgres://app:hunter2@h/app?options=-c%20x",
                "only parameter",
            ),
            ("postgres://app:hunter2@h/app\nDATABASE_URL=x", "database"),
        ] {
            let p = DatabaseUrl::parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} taken"));
            assert!(p.message.contains(says), "{bad}: {}", p.message);
            assert!(!p.message.contains("hunter2") && !p.help.contains("hunter2"));
        }
    }
}
