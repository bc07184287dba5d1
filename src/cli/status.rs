//! `imgforge status`: what a deployed VM runs, since when, whether the path users take
//! answers and everything on the VM agrees on what serves, its certificate, the last
//! deploys and the disk its data and backups take. Exits 1 when it does not serve or
//! disagrees with itself.

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
    // The VM's answer comes from this imgforge's program (first boot's lacks day two).
    args.host.update_program()?;
    let doc = args
        .host
        .call(&["status"], |stdin| send(stdin, &json!({}), None))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", summary(&args.host.host, &doc));
    }
    anyhow::ensure!(
        doc["healthy"] == true,
        "{} does not serve as it should (see above)",
        args.host.host
    );
    Ok(())
}

/// The answer as a few lines a person reads.
pub fn summary(host: &str, doc: &Value) -> String {
    let st = &doc["status"];
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = format!("{host}: {}\n", s(&st["state"]));
    let app = &st["app"];
    let serving = &doc["serving"];
    out.push_str(&format!(
        "  app          {} ({}) on the {} slot since {}\n",
        s(&app["version"]),
        s(&app["image"]),
        s(&app["slot"]),
        s(&app["since"]),
    ));
    let answer = match &serving["answer"] {
        Value::Number(n) => format!("HTTP {n}"),
        other => other.as_str().unwrap_or("no answer").to_owned(),
    };
    out.push_str(&format!(
        "  serving      {} {}: {answer}\n",
        s(&serving["path"]),
        if serving["answers"] == true {
            "answers"
        } else {
            "does NOT answer"
        },
    ));
    for problem in serving["problems"].as_array().into_iter().flatten() {
        out.push_str(&format!("  PROBLEM      {}\n", s(problem)));
    }
    if let Some(job) = doc["deploy"].as_str() {
        out.push_str(&format!(
            "  deploying    {job} (imgforge deploy --attach follows it)\n"
        ));
    }
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
    if let Some(runs) = st["first_boot"]["runs"].as_u64().filter(|r| *r > 1) {
        out.push_str(&format!(
            "  first boot   ran {runs} times (a new instance: it kept {})\n",
            s(&st["first_boot"]["kept"])
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_disagreement_is_printed_as_a_problem_and_the_path_users_take_is_named() {
        let doc = json!({
            "status": {"state": "ready", "app": {"version": "0.2.0", "image": "a/b:0.2.0",
                       "slot": "green", "since": "t"}, "deploys": [], "certificate": "ok",
                       "first_boot": {"runs": 2, "kept": "0.2.0"}},
            "serving": {"answers": true, "answer": 200, "path": "https://api.example.com/health",
                        "problems": ["nginx runs with port 8000, not the green slot's (8001)"]},
            "healthy": false, "deploy": null, "certificate": null, "disk": {}
        });
        let text = super::summary("h", &doc);
        assert!(
            text.contains("https://api.example.com/health answers: HTTP 200"),
            "{text}"
        );
        assert!(
            text.contains("PROBLEM      nginx runs with port 8000"),
            "{text}"
        );
        assert!(
            text.contains("ran 2 times (a new instance: it kept 0.2.0)"),
            "{text}"
        );
    }
}
