//! `imgforge backup`: a backup of a deployed VM's data now, or the list of its archives.
//! The copy is taken while the app serves (SQLite through its online backup API).

use anyhow::Result;

use crate::contract::remote::{BackupList, BackupRecord};
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
                        crate::disk::human(a.bytes),
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
