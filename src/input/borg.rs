//! Backups off the VM: a BorgBackup repository reached over SSH, its passphrase, the key
//! the VM logs in with, and the repository host's key. Each value is checked here; the
//! secrets are never shown, in an error or anywhere else.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::types::{Domain, Parsed, Problem, Secret};

/// A BorgBackup repository over SSH: `ssh://USER@HOST[:PORT]/PATH`. User, host and path
/// are restricted to characters that mean themselves in a URL, in ssh's argv and in JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRepo {
    user: String,
    host: String,
    port: Option<u16>,
    path: String,
}

impl BackupRepo {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "use ssh://USER@HOST/PATH (BorgBackup over SSH), e.g. ssh://borg@backup.example.com/./imgforge";
        let Some(rest) = s.strip_prefix("ssh://") else {
            return Err(Problem::new("not an ssh:// repository URL", help));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Some((user, hostport)) = authority.split_once('@') else {
            return Err(Problem::new("the URL names no user (USER@HOST)", help));
        };
        let user_ok = !user.is_empty()
            && user.len() <= 32
            && !user.starts_with('-')
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !user_ok {
            return Err(Problem::new(
                format!("{user:?} is not a user name"),
                "use letters, digits, '.', '_' and '-'",
            ));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(n) if n > 0 => (h, Some(n)),
                _ => {
                    return Err(Problem::new(
                        format!("{p:?} is not a port"),
                        "use a port from 1 to 65535, or leave it out for 22",
                    ))
                }
            },
            None => (hostport, None),
        };
        let ipv4 = host.parse::<std::net::Ipv4Addr>().is_ok();
        if !ipv4 && Domain::parse(host).is_err() && !is_label(host) {
            return Err(Problem::new(
                format!("{host:?} is not a host name or IPv4 address"),
                help,
            ));
        }
        let path_ok = !path.is_empty()
            && path.len() <= 255
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._~/-".contains(c))
            && !path.split('/').any(|part| part == "..");
        if !path_ok {
            return Err(Problem::new(
                "the URL's path is empty or has characters other than letters, digits, '.', '_', '~', '/' and '-' (or a '..')",
                help,
            ));
        }
        Ok(BackupRepo {
            user: user.to_owned(),
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }
}

/// One DNS label (a host on a private network, `backup`).
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl fmt::Display for BackupRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ssh://{}@{}", self.user, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write!(f, "/{}", self.path)
    }
}

/// known_hosts lines for the repository's host: `HOST[,HOST…] TYPE BASE64`, each key
/// parsed, re-encoded without its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHosts(String);

impl KnownHosts {
    pub fn parse(s: &str) -> Parsed<Self> {
        let help = "pass lines like `[backup.example.com]:2222 ssh-ed25519 AAAA…` (ssh-keyscan -p PORT HOST prints them)";
        let mut out = String::new();
        for line in s.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(hosts), Some(kind), Some(data)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(Problem::new(
                    format!("{line:?} is not a known_hosts line"),
                    help,
                ));
            };
            let hosts_ok = !hosts.starts_with('@')
                && hosts
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_[]:,*?|=+/".contains(c));
            let key = ssh_key::PublicKey::from_openssh(&format!("{kind} {data}"));
            match (hosts_ok, key) {
                (true, Ok(key)) => {
                    let encoded = key
                        .to_openssh()
                        .map_err(|e| Problem::new(format!("re-encoding the key: {e}"), help))?;
                    out.push_str(&format!("{hosts} {encoded}\n"));
                }
                _ => {
                    return Err(Problem::new(
                        format!("{line:?} is not a known_hosts line"),
                        help,
                    ))
                }
            }
        }
        if out.is_empty() {
            return Err(Problem::new("the known_hosts file has no key", help));
        }
        Ok(KnownHosts(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How often the VM backs up.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BackupEvery {
    /// once an hour (the repository keeps the last 24 hourly archives too)
    Hourly,
    /// once a day
    #[default]
    Daily,
}

/// The repository, validated: `--backup-repo` and what comes with it.
#[derive(Debug, Clone)]
pub struct Borg {
    pub repo: BackupRepo,
    pub passphrase: Secret,
    pub ssh_key: Secret,
    /// `None`: the host's key is trusted at the first backup, then pinned.
    pub known_hosts: Option<KnownHosts>,
    pub every: BackupEvery,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_urls_are_ssh_with_a_user_a_host_and_a_path() {
        for ok in [
            "ssh://borg@backup.example.com/./imgforge",
            "ssh://u1234@u1234.your-storagebox.de:23/./backups/api",
            "ssh://root@10.0.2.2:2222/var/backups/borg",
            "ssh://borg@backup/~/repo",
        ] {
            assert_eq!(BackupRepo::parse(ok).unwrap().to_string(), ok);
        }
        for (bad, says) in [
            ("/var/backups/repo", "not an ssh://"),
            ("https://backup.example.com/repo", "not an ssh://"),
            ("ssh://backup.example.com/repo", "no user"),
            ("ssh://borg@backup.example.com", "path"),
            ("ssh://borg@backup.example.com:0/r", "port"),
            ("ssh://borg@backup.example.com:99999/r", "port"),
            ("ssh://-oProxyCommand=x@h/r", "user name"),
            ("ssh://borg@-oProxyCommand=x/r", "host name"),
            ("ssh://borg@h/../etc", "path"),
            ("ssh://borg@h/a b", "path"),
            ("ssh://borg@h/a;reboot", "path"),
        ] {
            let p = BackupRepo::parse(bad).unwrap_err();
            assert!(p.message.contains(says), "{bad}: {}", p.message);
        }
    }

    #[test]
    fn passphrases_and_keys_are_refused_without_being_shown() {
        assert!(Secret::passphrase("correct horse battery staple\n").is_ok());
        for bad in ["short\n", "two lines of a\npassphrase here\n"] {
            let p = Secret::passphrase(bad).unwrap_err();
            assert!(!p.message.contains("short\n") && !p.message.contains("lines of"));
        }
        assert!(
            format!("{:?}", Secret::passphrase("correct horse battery").unwrap())
                .contains("hidden")
        );
        let key = crate::keys::KeyPair::generate("backup").unwrap();
        let private = key.private_openssh().unwrap().to_string();
        assert!(Secret::ssh_private_key(&private).is_ok());
        let public = key.public_openssh().unwrap();
        let p = Secret::ssh_private_key(&public).unwrap_err();
        assert!(!p.message.contains("AAAA"), "{}", p.message);
    }

    #[test]
    fn known_hosts_lines_are_parsed_and_re_encoded() {
        let key = crate::keys::KeyPair::generate("repo host").unwrap();
        let public = key.public_openssh().unwrap();
        let text = format!("# the repository\n[10.0.2.2]:2222 {public}\n");
        let parsed = KnownHosts::parse(&text).unwrap();
        assert!(parsed
            .as_str()
            .starts_with("[10.0.2.2]:2222 ssh-ed25519 AAAA"));
        assert!(!parsed.as_str().contains("repo host"), "comment dropped");
        for bad in [
            "",
            "# nothing\n",
            "host ssh-ed25519\n",
            "@revoked h ssh-ed25519 AAAA\n",
        ] {
            assert!(KnownHosts::parse(bad).is_err(), "{bad:?}");
        }
    }
}
