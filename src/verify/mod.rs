//! Checking a deployed server from outside, as its owner would: SSH key login and
//! hardening, HTTPS with a certificate for the domain, the HTTP redirect, ports that
//! must stay closed, and the server's own record of its first boot (read over SSH).

mod http;
mod ports;
mod ssh;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::exit::usage;

/// Ports that commonly leak from a Docker host besides the app's slot ports (another app
/// port, the Docker API, a registry); on a real server none of them may be reachable.
pub const COMMON_PROBE_PORTS: [u16; 4] = [8080, 2375, 2376, 5000];

/// Where the server is and how to reach its ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Host name or address to connect to.
    pub host: String,
    pub ssh_port: u16,
    pub http_port: u16,
    pub https_port: u16,
    /// Ports that must not answer, each with the port to connect to for it.
    pub probe_ports: Vec<ProbePort>,
    /// True when the ports are QEMU user-networking forwards: those accept a TCP
    /// connection whether or not anything listens behind them, so only an answer
    /// counts as "reachable".
    pub forwarded: bool,
}

/// A port on the server that must not answer from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProbePort {
    /// The port on the server.
    pub port: u16,
    /// The port to connect to on [`Target::host`] (differs through forwards).
    pub connect: u16,
}

impl Target {
    /// A server reached directly: ports 22/80/443 and the common probe ports.
    pub fn direct(host: impl Into<String>) -> Target {
        Target {
            host: host.into(),
            ssh_port: 22,
            http_port: 80,
            https_port: 443,
            probe_ports: crate::qemu::probe_ports()
                .into_iter()
                .chain(COMMON_PROBE_PORTS)
                .map(|p| ProbePort {
                    port: p,
                    connect: p,
                })
                .collect(),
            forwarded: false,
        }
    }

    /// The VM started by `imgforge boot`, from its `boot.json`, and the known_hosts file
    /// boot wrote from the host keys the VM reported on its console, when there is one.
    pub fn from_boot_json(path: &Path) -> Result<(Target, Option<PathBuf>)> {
        let boot = crate::qemu::BootInfo::read(path).map_err(|e| usage(format!("{e:#}")))?;
        let mut probe_ports = Vec::new();
        for port in crate::qemu::probe_ports() {
            match boot.host_port(port) {
                Some(connect) => probe_ports.push(ProbePort { port, connect }),
                None => {
                    return Err(usage(format!(
                        "boot file {} has no forward for guest port {port}",
                        path.display()
                    )))
                }
            }
        }
        let target = Target {
            host: boot.host,
            ssh_port: boot.ssh_port,
            http_port: boot.http_port,
            https_port: boot.https_port,
            probe_ports,
            forwarded: true,
        };
        Ok((target, boot.known_hosts.filter(|p| p.exists())))
    }
}

/// Groups of checks that can be skipped together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Group {
    /// SSH login, password and root refusal, sshd settings
    Ssh,
    /// HTTPS, certificate, HTTP redirect, health
    Web,
    /// Ports that must not answer
    Ports,
    /// The domain resolves to the host
    Dns,
    /// cloud-init, systemd and imgforge status, read over SSH
    Server,
}

/// What to check and with which credentials.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The domain the site is served on (SNI, Host header, certificate name).
    pub domain: String,
    /// The admin user to log in as.
    pub user: String,
    /// The admin's private key; without it, ssh's default keys are tried.
    pub identity: Option<PathBuf>,
    /// PEM roots to verify the certificate against instead of the public roots.
    pub ca_bundle: Option<PathBuf>,
    /// A known_hosts file pinning the server's host key.
    pub known_hosts: Option<PathBuf>,
    /// False for HTTP-only deployments: the app is checked on HTTP, no certificate.
    pub tls: bool,
    /// Check groups not to run.
    pub skip: BTreeSet<Group>,
    /// Timeout of one network operation.
    pub timeout: Duration,
    /// Timeout for an SSH command as a whole (login included).
    pub ssh_timeout: Duration,
}

impl VerifyOptions {
    /// Options with defaults: TLS on, all groups, 5 s network timeout.
    pub fn new(domain: impl Into<String>, user: impl Into<String>) -> Self {
        VerifyOptions {
            domain: domain.into(),
            user: user.into(),
            identity: None,
            ca_bundle: None,
            known_hosts: None,
            tls: true,
            skip: BTreeSet::new(),
            timeout: Duration::from_secs(5),
            ssh_timeout: Duration::from_secs(60),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

/// One named check with its outcome and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

/// Everything `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub host: String,
    pub domain: String,
    /// True when no check failed.
    pub ok: bool,
    /// True when the SSH host key was checked against a known_hosts file: without it, a
    /// man in the middle would pass every SSH check.
    pub host_authenticated: bool,
    pub checks: Vec<Check>,
}

impl Report {
    /// The check with this name, if it ran or was skipped.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Failed)
    }

    /// The report as aligned text, one check a line, then a summary line.
    pub fn to_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = format!("verify {} at {}\n", self.domain, self.host);
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        for c in &self.checks {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Failed => "FAILED",
                Status::Skipped => "skipped",
            };
            let _ = writeln!(out, "  {status:<7}  {:<width$}  {}", c.name, c.detail);
        }
        if !self.host_authenticated {
            out.push_str("WARNING: the host was NOT authenticated: no known_hosts file pinned its SSH host key, so these results could come from a machine in the middle. Pass --known-hosts (the line `imgforge render --host-key` printed, the known_hosts file `imgforge boot` wrote, or one saved from a connection you trust).\n");
        }
        let _ = writeln!(
            out,
            "{}: {} ok, {} failed, {} skipped",
            if self.ok { "passed" } else { "FAILED" },
            count(Status::Ok),
            count(Status::Failed),
            count(Status::Skipped)
        );
        out
    }
}

/// Collects checks in order.
#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn push(&mut self, name: &str, status: Status, detail: impl Into<String>) {
        self.0.push(Check {
            name: name.to_string(),
            status,
            detail: detail.into(),
        });
    }
    fn ok(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Status::Ok, detail);
    }
    fn failed(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Status::Failed, detail);
    }
    fn skipped(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Status::Skipped, detail);
    }
    fn result(&mut self, name: &str, r: Result<String, String>) {
        match r {
            Ok(d) => self.ok(name, d),
            Err(d) => self.failed(name, d),
        }
    }
}

/// Checks the server at `target`. Bad input (a missing key file, an unreadable CA
/// bundle, a malformed domain) is an error that exits 2; everything found on the
/// server, good or bad, is in the report.
///
/// Check names, by group: `ssh.login`, `ssh.host_key`, `ssh.password_refused`,
/// `ssh.root_refused`, `ssh.sshd_config` (ssh); `tls.certificate`, `https.app`,
/// `https.health`, `http.redirect`, or `http.app`, `http.health` without TLS (web);
/// `port.<port>.closed` (ports); `server.cloud_init`, `server.failed_units`,
/// `server.imgforge_status`, `server.cluster` (server).
pub fn verify(target: &Target, opts: &VerifyOptions) -> Result<Report> {
    check_input(target, opts)?;
    let tls = if opts.tls && !opts.skip.contains(&Group::Web) {
        Some(http::client_config(opts.ca_bundle.as_deref())?)
    } else {
        None
    };

    let mut checks = Checks::default();
    let ssh_needed = !opts.skip.contains(&Group::Ssh) || !opts.skip.contains(&Group::Server);
    let session = if ssh_needed {
        Some(ssh::Ssh::new(target, opts))
    } else {
        None
    };

    // Login first: the server checks ride on the same session.
    let login = session.as_ref().map(|s| s.login());
    if let (Some(s), Some(login)) = (&session, &login) {
        if !opts.skip.contains(&Group::Ssh) {
            ssh::login_checks(s, login, opts, &mut checks);
        }
    }
    if !opts.skip.contains(&Group::Dns) {
        dns_check(target, opts, &mut checks);
    }
    if !opts.skip.contains(&Group::Web) {
        http::web_checks(target, opts, tls.as_ref(), &mut checks);
    }
    if !opts.skip.contains(&Group::Ports) {
        ports::port_checks(target, opts, &mut checks);
    }
    if let Some(login) = &login {
        if !opts.skip.contains(&Group::Server) {
            ssh::server_checks(login, opts, &mut checks);
        }
    }

    let checks = checks.0;
    let host_authenticated = checks
        .iter()
        .any(|c| c.name == "ssh.host_key" && c.status == Status::Ok);
    Ok(Report {
        host: target.host.clone(),
        domain: opts.domain.clone(),
        ok: checks.iter().all(|c| c.status != Status::Failed),
        host_authenticated,
        checks,
    })
}

/// `dns.resolves`: the domain's addresses (the system resolver's answer) include the
/// host's. Through forwarded loopback ports there is nothing to compare.
fn dns_check(target: &Target, opts: &VerifyOptions, checks: &mut Checks) {
    use std::net::ToSocketAddrs;
    if target.forwarded {
        checks.skipped(
            "dns.resolves",
            "the VM is reached through forwarded loopback ports",
        );
        return;
    }
    let addrs = |name: &str| -> Addrs {
        (name, 443)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default()
    };
    let r = dns_result(
        &opts.domain,
        &addrs(&opts.domain),
        &target.host,
        &addrs(&target.host),
    );
    checks.result("dns.resolves", r);
}

type Addrs = std::collections::BTreeSet<std::net::IpAddr>;

fn dns_result(domain: &str, got: &Addrs, host: &str, want: &Addrs) -> Result<String, String> {
    let shown = |set: &Addrs| {
        set.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if got.is_empty() {
        Err(format!("{domain} does not resolve"))
    } else if got.is_disjoint(want) {
        Err(format!(
            "{domain} resolves to {}, not to {host} ({})",
            shown(got),
            shown(want)
        ))
    } else {
        Ok(format!("{domain} resolves to {}", shown(got)))
    }
}

fn check_input(target: &Target, opts: &VerifyOptions) -> Result<()> {
    if target.host.is_empty()
        || target.host.starts_with('-')
        || target.host.contains(char::is_whitespace)
    {
        return Err(usage(format!("invalid host {:?}", target.host)));
    }
    if rustls_pki_types::ServerName::try_from(opts.domain.as_str()).is_err()
        || opts.domain.parse::<std::net::IpAddr>().is_ok()
        || !opts.domain.contains('.')
    {
        return Err(usage(format!(
            "invalid domain {:?}: expected a DNS name such as api.example.com",
            opts.domain
        )));
    }
    let user_ok = opts
        .user
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && opts
            .user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && opts.user.len() <= 32;
    if !user_ok {
        return Err(usage(format!("invalid user name {:?}", opts.user)));
    }
    if let Some(key) = &opts.identity {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(key)
            .map_err(|e| usage(format!("reading ssh key {}: {e}", key.display())))?;
        // ssh ignores such a key and the login would fail for a reason that is
        // not the server's.
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(usage(format!(
                "ssh key {} is readable by others and ssh refuses it: chmod 600 it",
                key.display()
            )));
        }
    }
    for (what, path) in [
        ("ssh key", &opts.identity),
        ("known_hosts file", &opts.known_hosts),
        ("CA bundle", &opts.ca_bundle),
    ] {
        if let Some(p) = path {
            std::fs::File::open(p)
                .map_err(|e| usage(format!("reading {what} {}: {e}", p.display())))?;
        }
    }
    Ok(())
}

/// The first line of `s`, shortened for a report line.
fn short(s: &str, max: usize) -> String {
    let line = s.trim().lines().next().unwrap_or("").trim();
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_checked_before_anything_connects() {
        let t = Target::direct("127.0.0.1");
        let ok = VerifyOptions::new("api.imgforge.test", "deploy");
        assert!(check_input(&t, &ok).is_ok());
        for (domain, user) in [
            ("api", "deploy"),
            ("127.0.0.1", "deploy"),
            ("api.imgforge.test", "-oProxyCommand=sh"),
            ("api.imgforge.test", "Deploy"),
            ("api imgforge.test", "deploy"),
        ] {
            let o = VerifyOptions::new(domain, user);
            let err = check_input(&t, &o).unwrap_err();
            assert_eq!(
                crate::exit::code_for(&err),
                crate::exit::USAGE,
                "{domain} {user}"
            );
        }
        let err = check_input(&Target::direct("-oProxyCommand=sh"), &ok).unwrap_err();
        assert_eq!(crate::exit::code_for(&err), crate::exit::USAGE);
    }

    #[test]
    fn short_cuts_on_characters() {
        assert_eq!(short("ééé\nsecond", 2), "éé…");
        assert_eq!(short("  one line  ", 20), "one line");
    }

    #[test]
    fn dns_resolves_when_the_domain_names_one_of_the_hosts_addresses() {
        let set = |a: &[&str]| a.iter().map(|s| s.parse().unwrap()).collect::<Addrs>();
        let host = set(&["203.0.113.7"]);
        assert!(dns_result(
            "a.example.com",
            &set(&["203.0.113.7", "2001:db8::1"]),
            "h",
            &host
        )
        .is_ok());
        let e = dns_result("a.example.com", &set(&["198.51.100.1"]), "h", &host).unwrap_err();
        assert!(e.contains("not to h (203.0.113.7)"), "{e}");
        assert!(dns_result("a.example.com", &set(&[]), "h", &host).is_err());
    }

    #[test]
    fn text_report_counts_outcomes() {
        let r = Report {
            host: "h".into(),
            domain: "d.test".into(),
            ok: false,
            host_authenticated: false,
            checks: vec![
                Check {
                    name: "a".into(),
                    status: Status::Ok,
                    detail: "fine".into(),
                },
                Check {
                    name: "bb".into(),
                    status: Status::Failed,
                    detail: "bad".into(),
                },
            ],
        };
        let text = r.to_text();
        assert!(text.contains("  FAILED   bb  bad"), "{text}");
        assert!(
            text.ends_with("FAILED: 1 ok, 1 failed, 0 skipped\n"),
            "{text}"
        );
        assert_eq!(r.failed().count(), 1);
        assert!(text.contains("NOT authenticated"), "{text}");
        let pinned = Report {
            host_authenticated: true,
            ..r
        };
        assert!(!pinned.to_text().contains("NOT authenticated"));
    }
}
