//! A deployed VM, day two: the system `ssh` as the admin user, the host key checked
//! against known_hosts (never accepted blindly), and the VM program doing the work
//! (`imgforge-vm deploy-version | rollback | status`). Each call is one SSH connection;
//! requests go on stdin, so no secret is ever in a command line.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};

use anyhow::{anyhow, Context, Result};

use crate::contract::remote::{Installed, StatusAnswer, Upload};
use crate::exit::usage;

/// Where the VM is and how to log in.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct Host {
    /// The VM's address or name
    #[arg(long, value_name = "HOST")]
    pub host: String,
    /// The VM's SSH port
    #[arg(long, default_value_t = 22, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ssh_port: u16,
    /// The admin user the deployment created
    #[arg(long, default_value = "deploy", value_name = "NAME")]
    pub user: String,
    /// Private key to log in with [default: ssh's own choice]
    #[arg(long, value_name = "KEY")]
    pub identity: Option<PathBuf>,
    /// known_hosts file pinning the VM's host key [default: ~/.ssh/known_hosts]
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
}

/// The VM program's exit code for a request it refuses (bad input, a deploy running).
const REFUSED: i32 = 2;
/// ssh's own exit code for its own errors (connection, authentication, host key).
const SSH_ERROR: i32 = 255;

impl Host {
    fn check(&self) -> Result<()> {
        let ok = !self.host.is_empty()
            && !self.host.starts_with('-')
            && self
                .host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        if !ok {
            return Err(usage(format!(
                "--host {:?}: not a host name or address",
                self.host
            )));
        }
        let user_ok = !self.user.is_empty()
            && !self.user.starts_with('-')
            && self
                .user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !user_ok {
            return Err(usage(format!("--user {:?}: not a user name", self.user)));
        }
        Ok(())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=20"])
            .args(["-o", "ServerAliveInterval=10", "-o", "LogLevel=ERROR"])
            .args(["-p", &self.port_string()]);
        if let Some(path) = &self.known_hosts {
            cmd.arg("-o")
                .arg(format!("UserKnownHostsFile={}", path.display()))
                .args(["-o", "GlobalKnownHostsFile=/dev/null"]);
        }
        if let Some(key) = &self.identity {
            cmd.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
        }
        cmd.arg(format!("{}@{}", self.user, self.host));
        cmd.args(["sudo", "-n", &crate::contract::layout().program]);
        cmd.args(args);
        cmd
    }

    fn port_string(&self) -> String {
        self.ssh_port.to_string()
    }

    /// Runs the VM program's `args`, with `request` writing its stdin. The program's
    /// progress lines go to stderr as they come; its one JSON line is the result.
    pub fn call<T: serde::de::DeserializeOwned>(
        &self,
        args: &[&str],
        request: impl FnOnce(&mut ChildStdin) -> std::io::Result<()>,
    ) -> Result<T> {
        let mut stdout = Vec::new();
        self.stream(args, request, |line| {
            stdout.push(line.to_owned());
            Ok(())
        })?;
        // The answer is the last line; anything before it is not imgforge-vm's.
        let last = stdout.iter().rev().find(|l| !l.trim().is_empty());
        serde_json::from_str(last.map_or("", |l| l.as_str()))
            .with_context(|| format!("the VM answered {:?}", stdout.join("\n").trim()))
    }

    /// Runs the VM program's `args` like [`Host::call`], handing each line it prints on
    /// stdout to `line` as it comes (`imgforge logs`). An error from `line` ends the call.
    pub fn stream(
        &self,
        args: &[&str],
        request: impl FnOnce(&mut ChildStdin) -> std::io::Result<()>,
        mut line: impl FnMut(&str) -> Result<()>,
    ) -> Result<()> {
        self.check()?;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ssh (install openssh-client)")?;
        let stderr = child.stderr.take().context("ssh stderr")?;
        let relay = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("imgforge: ") {
                    eprintln!("  {}", line.trim_start_matches("imgforge: "));
                }
                lines.push(line);
            }
            lines
        });
        let mut stdin = child.stdin.take().context("ssh stdin")?;
        // A closed pipe means the remote side ended early: its exit status says why.
        let written = request(&mut stdin).and_then(|()| stdin.flush());
        drop(stdin);
        let stdout = child.stdout.take().context("ssh stdout")?;
        for text in BufReader::new(stdout).lines() {
            let text = text.context("reading the VM's answer")?;
            if let Err(e) = line(&text) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
        let status = child.wait().context("waiting for ssh")?;
        let lines = relay.join().unwrap_or_default();
        let last = lines
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .cloned()
            .unwrap_or_default();
        match status.code() {
            Some(0) => Ok(()),
            Some(SSH_ERROR) => Err(self.ssh_error(&lines.join("\n"))),
            Some(REFUSED) => Err(usage(last.trim_start_matches("imgforge-vm: error: "))),
            _ => {
                let reason = last.trim_start_matches("imgforge-vm: error: ").to_owned();
                match written {
                    Err(e) if reason.is_empty() => Err(anyhow!("sending the request: {e}")),
                    _ => Err(anyhow!(reason)),
                }
            }
        }
    }

    /// ssh's own failures are the user's to fix: the address, the key, the host key.
    fn ssh_error(&self, stderr: &str) -> anyhow::Error {
        let dest = format!("{}@{}:{}", self.user, self.host, self.ssh_port);
        let known = match &self.known_hosts {
            Some(p) => p.display().to_string(),
            None => "~/.ssh/known_hosts".into(),
        };
        let msg = if stderr.contains("host key is known") {
            format!("{known} pins no host key for {}: add the line `imgforge render --host-key` printed, or the key the VM reported on its console (`imgforge boot` writes it as known_hosts)", self.host)
        } else if stderr.contains("IDENTIFICATION HAS CHANGED")
            || stderr.contains("Host key verification failed")
        {
            format!("the host key of {} is not the one {known} pins: refusing to connect (if the VM was rebuilt, check its new key on its console, then update {known})", self.host)
        } else if stderr.contains("Permission denied") {
            format!("{dest} refused the login: pass the admin's key with --identity, and the user with --user")
        } else if stderr.contains("Could not resolve")
            || stderr.contains("Connection refused")
            || stderr.contains("timed out")
            || stderr.contains("No route")
            || stderr.contains("Network is unreachable")
        {
            format!("cannot reach {dest}: {}", stderr.trim())
        } else {
            format!("ssh to {dest} failed: {}", stderr.trim())
        };
        usage(msg)
    }
}

impl Host {
    /// Makes the VM run this imgforge's VM program: sends it (`install-program`), and the
    /// VM replaces its own only when the sha256 differs, after checking that the new one
    /// runs there. Returns whether it was replaced.
    pub fn update_program(&self) -> Result<bool> {
        use sha2::{Digest, Sha256};
        let program = crate::render::program::zipapp();
        let sha256 = hex::encode(Sha256::digest(&program));
        let head = Upload {
            size: program.len() as u64,
            sha256: sha256.clone(),
        };
        let Installed { replaced } = self.call(&["install-program"], |stdin| {
            send(stdin, &head, Some(&mut program.as_slice()))
        })?;
        if replaced {
            eprintln!(
                "imgforge: updated the VM program on {} to this imgforge's ({})",
                self.host,
                &sha256[..12]
            );
        }
        Ok(replaced)
    }

    /// `imgforge-vm status`: status.json and what only root sees.
    pub fn status(&self) -> Result<StatusAnswer> {
        self.call(&["status"], |stdin| {
            send(stdin, &serde_json::json!({}), None)
        })
    }
}

/// Writes a request line (JSON) and then the bytes of `body`, if any.
pub fn send(
    stdin: &mut ChildStdin,
    head: &impl serde::Serialize,
    body: Option<&mut dyn Read>,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(head)?;
    line.push(b'\n');
    stdin.write_all(&line)?;
    if let Some(body) = body {
        std::io::copy(body, stdin)?;
    }
    Ok(())
}
