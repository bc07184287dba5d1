//! `imgforge status`: what a deployed VM runs, since when, its certificate, the last
//! deploys and the disk its data and backups take, over one SSH connection.

use anyhow::Result;
use serde_json::{json, Value};

use crate::remote::{send, Host};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub host: Host,
    /// Print the VM's answer as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let doc = args
        .host
        .call(&["status"], |stdin| send(stdin, &json!({}), None))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print!("{}", summary(&args.host.host, &doc));
    Ok(())
}

/// The answer as a few lines a person reads.
pub fn summary(host: &str, doc: &Value) -> String {
    let st = &doc["status"];
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = format!("{host}: {}\n", s(&st["state"]));
    let app = &st["app"];
    out.push_str(&format!(
        "  app          {} ({}) on the {} slot since {}; {}\n",
        s(&app["version"]),
        s(&app["image"]),
        s(&app["slot"]),
        s(&app["since"]),
        if doc["healthy"] == true {
            "healthy"
        } else {
            "NOT answering its health path"
        }
    ));
    let cert = &doc["certificate"];
    if cert.is_null() {
        out.push_str(&format!("  certificate  {}\n", s(&st["certificate"])));
    } else {
        out.push_str(&format!(
            "  certificate  from {}, expires {}\n",
            s(&cert["issuer"]),
            s(&cert["not_after"])
        ));
    }
    for d in st["deploys"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<12} {} {} -> {} slot: {}{}\n",
            s(&d["kind"]),
            s(&d["finished"]),
            s(&d["version"]),
            s(&d["slot"]),
            s(&d["result"]),
            d["error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    for (name, bytes) in doc["disk"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "  disk         {name}: {}\n",
            crate::disk::human(bytes.as_u64().unwrap_or(0))
        ));
    }
    out
}
