//! `imgforge deploy` and `imgforge rollback`: a new version of the app on a running VM,
//! blue-green (the new one started beside the old, checked, then given the traffic), or
//! back to the version before it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::contract::remote::{DeployRequest, Upload};
use crate::contract::status::{Deploy, SWARM_SLOT};
use crate::input::{EnvName, EnvValue, ImageRef};
use crate::remote::{send, Host};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  imgforge deploy --host api.example.com --bundle classifier-0.2.oci.tar
  imgforge deploy --host api.example.com --image ghcr.io/acme/app:1.1 \\
      --env-file app.env --known-hosts known_hosts
  imgforge rollback --host api.example.com

  imgforge deploy --host api.example.com --attach

The new version starts beside the running one, on the other loopback port.
Once it answers its health path, nginx sends new requests to it (a reload:
requests in flight finish). For --watch seconds the old one stays ready as
nginx's backup server and the new one is watched: a failing health path, or
more 5xx answers than the old one gave, switches traffic back by itself and
deploy exits 1 naming the watch. Then the old one drains and stops. If it never gets
healthy nothing switches, it is removed, and deploy exits 1 with its last log
lines. A reboot keeps the version that serves. Without --env/--env-file the
new version gets the running one's environment; with them, exactly the
environment they give; with --env-clear alone, none.

The deploy runs on the VM as its own unit, not in this SSH session: deploy
shows its progress, and Ctrl-C (or a dropped connection) leaves it running.
--attach follows it again, or says how the last one ended.

First, deploy and rollback make the VM run this imgforge's VM program: it is
sent, and the VM replaces its own when it differs and the new one runs there.")]
pub struct Args {
    /// OCI bundle to upload (`imgforge pack`); its sha256 is checked on the VM
    #[arg(long, value_name = "FILE", required_unless_present_any = ["image", "attach"])]
    pub bundle: Option<PathBuf>,
    /// Follow the deploy running on the VM (or say how the last one ended)
    #[arg(long, conflicts_with_all = ["bundle", "image", "env", "env_file", "env_clear"])]
    pub attach: bool,
    /// Image to deploy: pulled from its registry, or the name the bundle must hold
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Environment variable for the new version (repeatable)
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// File of NAME=VALUE lines for the new version (# comments)
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Start the new version with only the environment --env/--env-file give (none
    /// without them), instead of keeping the running one's
    #[arg(long)]
    pub env_clear: bool,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub host: Host,
}

#[derive(Debug, clap::Args)]
pub struct Timing {
    /// Seconds the new version has to answer its health path [default: the VM's
    /// --app-start-timeout]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub health_timeout: Option<u64>,
    /// Most seconds the old version keeps finishing its requests after the switch
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub drain: u64,
    /// Seconds after the switch to keep the old version ready and watch the new one:
    /// if its health fails or its 5xx share rises above the old one's, traffic goes
    /// back by itself and the deploy exits 1 (0: no watch)
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub watch: u64,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub host: Host,
}

pub fn run(args: Args) -> Result<()> {
    if args.attach {
        args.host.update_program()?;
        let result: Deploy = args
            .host
            .call(&["attach"], |stdin| send(stdin, &json!({}), None))?;
        print_result("deployed", &result, None);
        return Ok(());
    }
    let env = environment(&args)?;
    if !args.env.is_empty() {
        eprintln!("warning: --env puts the value in this machine's process list and shell history; pass secrets with --env-file FILE (chmod 600)");
    }
    let image = match &args.image {
        Some(i) => Some(ImageRef::parse(i).map_err(|p| {
            crate::exit::usage(format!("--image {i:?}: {}; {}", p.message, p.help))
        })?),
        None => None,
    };
    let bundle = match &args.bundle {
        Some(path) => {
            let info = crate::oci::bundle::inspect(path)?;
            if let Some(image) = &image {
                if image.familiar() != info.image.familiar() {
                    return Err(crate::exit::usage(format!(
                        "--image {image} but the bundle {} holds {}",
                        path.display(),
                        info.image
                    )));
                }
            }
            Some((path, info))
        }
        None => None,
    };
    let started = Instant::now();
    args.host.update_program()?;
    let name = match (&bundle, &image) {
        (Some((_, info)), None) => {
            // Another repository than the one running is a different app: say so first.
            let running = args.host.status()?;
            let current = running.status.and_then(|s| s.app).map(|a| a.image);
            if let Some(Ok(current)) = current.as_deref().map(ImageRef::parse) {
                if repository(&current) != repository(&info.image) {
                    return Err(crate::exit::usage(format!(
                        "the bundle holds {} but the VM runs {}: pass --image {} to replace the app with another one",
                        info.image, current, info.image
                    )));
                }
            }
            info.image.to_string()
        }
        (Some((_, info)), Some(_)) => info.image.to_string(),
        (None, Some(image)) => image.to_string(),
        (None, None) => unreachable!("clap requires --bundle or --image"),
    };
    let mut head = DeployRequest {
        image: Some(name),
        env,
        health_timeout: args.timing.health_timeout,
        drain: args.timing.drain,
        watch: Some(args.timing.watch),
        bundle: None,
        archive: None,
    };
    let result = match &bundle {
        Some((path, info)) => {
            let mut file = std::fs::File::open(path)
                .with_context(|| format!("opening bundle {}", path.display()))?;
            let size = file
                .metadata()
                .with_context(|| format!("reading bundle {}", path.display()))?
                .len();
            head.bundle = Some(Upload {
                size,
                sha256: info.sha256.to_string(),
            });
            eprintln!(
                "imgforge: uploading {} ({size} bytes) to {}",
                path.display(),
                args.host.host
            );
            args.host.call::<Deploy>(&["deploy-version"], |stdin| {
                send(stdin, &head, Some(&mut file))
            })?
        }
        None => args
            .host
            .call::<Deploy>(&["deploy-version"], |stdin| send(stdin, &head, None))?,
    };
    print_result("deployed", &result, Some(started));
    Ok(())
}

impl Timing {
    /// A request with these timings and nothing else (a rollback's; a restore adds the
    /// archive).
    pub fn request(&self) -> DeployRequest {
        DeployRequest {
            health_timeout: self.health_timeout,
            drain: self.drain,
            watch: Some(self.watch),
            ..DeployRequest::default()
        }
    }
}

pub fn rollback(args: RollbackArgs) -> Result<()> {
    let started = Instant::now();
    args.host.update_program()?;
    let head = args.timing.request();
    let result: Deploy = args
        .host
        .call(&["rollback"], |stdin| send(stdin, &head, None))?;
    print_result("rolled back to", &result, Some(started));
    Ok(())
}

pub fn print_result(what: &str, r: &Deploy, started: Option<Instant>) {
    let secs = |s: Option<f64>| s.map_or("?".to_owned(), |s| s.to_string());
    let total = started.map_or(String::new(), |s| {
        format!("; {:.1}s in all", s.elapsed().as_secs_f64())
    });
    if r.slot == SWARM_SLOT {
        println!(
            "{what} {} ({}) on every node of the swarm: Swarm's rolling update ended after {}s{total}",
            r.version,
            r.image,
            secs(r.healthy_s)
        );
        return;
    }
    println!(
        "{what} {} ({}) on the {} slot: healthy after {}s, traffic on it {}s later{total}",
        r.version,
        r.image,
        r.slot,
        secs(r.healthy_s),
        secs(r.switch_s),
    );
}

/// `registry/path` without tag or digest: the same app, another version.
fn repository(image: &ImageRef) -> String {
    let familiar = image.familiar();
    match familiar.rsplit_once(':') {
        Some((repo, _)) => repo.to_owned(),
        None => familiar,
    }
}

/// The new version's environment file text, or `None` to keep the running one's.
fn environment(args: &Args) -> Result<Option<String>> {
    let mut items: Vec<(String, String, String)> = Vec::new();
    if let Some(path) = &args.env_file {
        let text = crate::fsutil::read_small(path)
            .map_err(|e| crate::exit::usage(format!("--env-file {}: {e}", path.display())))?;
        for (line, item) in crate::input::env_file_lines(&text) {
            let origin = format!("--env-file {}:{line}", path.display());
            let (name, value) =
                item.ok_or_else(|| crate::exit::usage(format!("{origin}: expected NAME=VALUE")))?;
            items.push((origin, name, value));
        }
    }
    for item in &args.env {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| crate::exit::usage(format!("--env {item:?}: expected NAME=VALUE")))?;
        items.push(("--env".into(), name.to_owned(), value.to_owned()));
    }
    if args.env_file.is_none() && args.env.is_empty() && !args.env_clear {
        return Ok(None);
    }
    let mut merged: indexmap::IndexMap<String, String> = indexmap::IndexMap::new();
    for (origin, name, value) in items {
        let name = EnvName::parse(&name).map_err(|p| {
            crate::exit::usage(format!("{origin}: {name:?}: {}; {}", p.message, p.help))
        })?;
        let value = EnvValue::parse(&value).map_err(|p| {
            crate::exit::usage(format!(
                "{origin}: the value of {name}: {}; {}",
                p.message, p.help
            ))
        })?;
        merged.insert(name.to_string(), value.to_string());
    }
    let mut text = String::from("# Written by imgforge deploy: the app's environment.\n");
    for (name, value) in merged {
        text.push_str(&format!("{name}={value}\n"));
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn env_of(flags: &[&str]) -> Option<String> {
        let mut argv = vec!["imgforge", "deploy", "--host", "h", "--image", "a/b:1"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Deploy(args) => environment(&args).expect("valid"),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_environment_is_kept_replaced_or_cleared() {
        assert_eq!(env_of(&[]), None, "no flag keeps the running environment");
        let replaced = env_of(&["--env", "A=1", "--env", "B=x y"]).expect("replaced");
        assert!(replaced.ends_with("\nA=1\nB=x y\n"), "{replaced:?}");
        let cleared = env_of(&["--env-clear"]).expect("cleared");
        assert_eq!(cleared.lines().filter(|l| !l.starts_with('#')).count(), 0);
        assert_eq!(
            env_of(&["--env-clear", "--env", "A=1"]),
            env_of(&["--env", "A=1"])
        );
    }
}
