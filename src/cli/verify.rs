//! `imgforge verify`: check a deployed server from outside and print a report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::verify::{self, Group, ProbePort, Target, VerifyOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Checks: SSH key login as the admin, password and root login refused, effective
sshd settings; HTTPS certificate and app answer, /health, HTTP redirect; ports
that must not answer; cloud-init, failed units and imgforge's status record.

Exit codes: 0 all checks passed, 1 a check failed, 2 bad usage or bad input.")]
pub struct Args {
    /// The server's address or host name; a cluster's nodes: each one (repeat, or A,B,C)
    #[arg(
        long,
        required_unless_present = "boot",
        conflicts_with = "boot",
        value_delimiter = ','
    )]
    pub host: Vec<String>,
    /// SSH port (with --host)
    #[arg(long, default_value_t = 22, conflicts_with = "boot", value_parser = clap::value_parser!(u16).range(1..))]
    pub ssh_port: u16,
    /// HTTP port (with --host)
    #[arg(long, default_value_t = 80, conflicts_with = "boot", value_parser = clap::value_parser!(u16).range(1..))]
    pub http_port: u16,
    /// HTTPS port (with --host)
    #[arg(long, default_value_t = 443, conflicts_with = "boot", value_parser = clap::value_parser!(u16).range(1..))]
    pub https_port: u16,
    /// Check the VM described by the boot.json that `imgforge boot` wrote (repeat for
    /// each node of a local cluster)
    #[arg(long, value_name = "BOOT_JSON")]
    pub boot: Vec<PathBuf>,
    /// The domain the site is served on
    #[arg(long)]
    pub domain: String,
    /// The admin user
    #[arg(long, default_value = "deploy")]
    pub user: String,
    /// The admin's SSH private key (default: ssh's own keys and agent)
    #[arg(long, short = 'i', value_name = "PRIVATE_KEY")]
    pub identity: Option<PathBuf>,
    /// PEM roots for the certificate (default: the public web roots)
    #[arg(long, value_name = "PEM")]
    pub ca_bundle: Option<PathBuf>,
    /// known_hosts file pinning the server's host key
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// The deployment serves plain HTTP only: no certificate, no redirect
    #[arg(long, conflicts_with = "ca_bundle")]
    pub no_tls: bool,
    /// Ports that must not answer, instead of 8000,8080,2375,2376,5000 (with --host)
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "PORT",
        conflicts_with = "boot",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub probe_port: Vec<u16>,
    /// Check groups to skip
    #[arg(long, value_enum, value_delimiter = ',', value_name = "GROUP")]
    pub skip: Vec<Group>,
    /// Timeout of one network operation, in seconds
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Report format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: Args) -> Result<()> {
    // Every target read before any is checked: a bad boot file is an error with nothing
    // checked.
    let mut targets: Vec<(Target, Option<PathBuf>)> = Vec::new();
    for boot in &args.boot {
        targets.push(Target::from_boot_json(boot)?);
    }
    for host in &args.host {
        let mut t = Target::direct(host.clone());
        t.ssh_port = args.ssh_port;
        t.http_port = args.http_port;
        t.https_port = args.https_port;
        if !args.probe_port.is_empty() {
            t.probe_ports = args
                .probe_port
                .iter()
                .map(|&p| ProbePort {
                    port: p,
                    connect: p,
                })
                .collect();
        }
        targets.push((t, None));
    }
    if targets.is_empty() {
        return Err(crate::exit::usage("give --host or --boot"));
    }
    let mut opts = VerifyOptions::new(args.domain, args.user);
    opts.identity = args.identity;
    opts.ca_bundle = args.ca_bundle;
    opts.tls = !args.no_tls;
    opts.skip = args.skip.into_iter().collect();
    opts.timeout = Duration::from_secs(args.timeout.max(1));

    let mut reports = Vec::new();
    for (target, boot_known_hosts) in &targets {
        let opts = VerifyOptions {
            known_hosts: args.known_hosts.clone().or(boot_known_hosts.clone()),
            ..opts.clone()
        };
        reports.push(verify::verify(target, &opts)?);
    }
    // Several local VMs share one address: their SSH ports tell them apart.
    let labels: Vec<String> = targets
        .iter()
        .map(|(t, _)| {
            if targets.iter().filter(|(o, _)| o.host == t.host).count() > 1 {
                format!("{}:{}", t.host, t.ssh_port)
            } else {
                t.host.clone()
            }
        })
        .collect();
    let several = reports.len() > 1;
    let failed: Vec<String> = reports
        .iter()
        .zip(&labels)
        .flat_map(|(r, label)| {
            r.failed().map(move |c| match several {
                false => c.name.clone(),
                true => format!("{label} {}", c.name),
            })
        })
        .collect();
    match (args.format, reports.as_slice()) {
        (Format::Text, [report]) => print!("{}", report.to_text()),
        (Format::Json, [report]) => println!("{}", serde_json::to_string_pretty(report)?),
        (Format::Text, _) => {
            for (report, label) in reports.iter().zip(&labels) {
                println!("== node {label}");
                print!("{}", report.to_text());
            }
            let passed = reports.iter().filter(|r| r.ok).count();
            println!(
                "{}: {passed} of {} nodes passed",
                if failed.is_empty() {
                    "passed"
                } else {
                    "FAILED"
                },
                reports.len()
            );
        }
        (Format::Json, _) => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": failed.is_empty(),
                "nodes": reports,
            }))?
        ),
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} check(s) failed: {}", failed.len(), failed.join(", "))
    }
}
