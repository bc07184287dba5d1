//! `imgforge backup`: a backup of a deployed VM's data now, or the list of its archives.
//! The copy is taken while the app serves (SQLite through its online backup API).

use anyhow::Result;

use std::time::Instant;

use crate::cli::deploy::{print_result, Timing};
use crate::contract::remote::{BackupList, BackupRecord, DeployRequest};
use crate::contract::status::Deploy;
use crate::remote::Host;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `now`: back up now and wait for it; `list`: the archives and the last backup
    #[arg(value_enum)]
    pub action: Action,
    #[command(flatten)]
    pub host: Host,
    /// Print the VM's answer as JSON (guest/schema/backup-answer.schema.json, backup-list.schema.json)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Action {
    Now,
    List,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The archive to restore (`imgforge backup list` names them) [default: the newest]
    #[arg(long, value_name = "NAME")]
    pub archive: Option<String>,
    #[command(flatten)]
    pub timing: Timing,
    #[command(flatten)]
    pub host: Host,
}

/// The archive's data under the running version: extracted and checked beside the live
/// data, then the version starts again on it in the idle slot and takes the traffic as
/// a deploy would. Until then the app serves from its data as it was.
pub fn restore(args: RestoreArgs) -> Result<()> {
    if let Some(name) = &args.archive {
        let ok = name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(crate::exit::usage(format!(
                "--archive {name:?}: not an archive name; `imgforge backup list --host {}` names them",
                args.host.host
            )));
        }
    }
    let started = Instant::now();
    args.host.update_program()?;
    let head = DeployRequest {
        archive: args.archive.clone(),
        ..args.timing.request()
    };
    let result: Deploy = args.host.call(&["restore"], |stdin| {
        crate::remote::send(stdin, &head, None)
    })?;
    print_result("restored the data; serving", &result, Some(started));
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    args.host.update_program()?;
    let empty = serde_json::json!({});
    let request = |stdin: &mut _| crate::remote::send(stdin, &empty, None);
    match args.action {
        Action::Now => {
            let record: BackupRecord = args.host.call(&["backup-now"], request)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                println!("{}", describe(&record));
            }
        }
        Action::List => {
            let list: BackupList = args.host.call(&["backup-list"], request)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for a in &list.archives {
                    println!(
                        "{}  {}  {:>10}  {}",
                        a.name,
                        a.time,
                        a.bytes.map_or("-".to_owned(), crate::disk::human),
                        where_(&a.location)
                    );
                }
                if list.archives.is_empty() {
                    println!("no archives yet");
                }
                if let Some(last) = &list.last {
                    println!("last backup: {}", describe(last));
                }
            }
        }
    }
    Ok(())
}

/// Where an archive is, in words.
pub fn where_(location: &str) -> &str {
    match location {
        "local" => "on the VM's own disk (lost with the VM)",
        "borg" => "in the backup repository, off the VM",
        other => other,
    }
}

/// A backup's record in one line.
pub fn describe(r: &BackupRecord) -> String {
    match r.result.as_str() {
        "ok" => format!(
            "{} at {}: {} files ({} SQLite databases), {} in {:.1} s, {}",
            r.archive,
            r.started,
            r.files.unwrap_or(0),
            r.databases.unwrap_or(0),
            crate::disk::human(r.bytes.unwrap_or(0)),
            r.seconds,
            where_(&r.location)
        ),
        _ => format!(
            "{} at {}: FAILED: {}",
            r.archive,
            r.started,
            r.error.as_deref().unwrap_or("no reason given")
        ),
    }
}
