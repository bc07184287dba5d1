//! `imgforge status`: what a deployed VM runs, since when, whether the path users take
//! answers and everything on the VM agrees on what serves, its certificate, the last
//! deploys and the disk its data and backups take. Exits 1 when it does not serve or
//! disagrees with itself.

use anyhow::Result;

use indexmap::IndexMap;

use crate::contract::remote::{ClusterStatus, Replica, StatusAnswer};
use crate::remote::Host;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub host: Host,
    /// Print the VM's answer as JSON (guest/schema/status-answer.schema.json)
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    // The VM's answer comes from this imgforge's program (first boot's lacks day two).
    args.host.update_program()?;
    let answer = args.host.status()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", summary(&args.host.host, &answer));
    }
    anyhow::ensure!(
        answer.healthy,
        "{} does not serve as it should (see above)",
        args.host.host
    );
    Ok(())
}

/// The answer as a few lines a person reads.
pub fn summary(host: &str, answer: &StatusAnswer) -> String {
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let st = answer.status.as_ref();
    let state = st.map_or("no status.json yet".to_owned(), |s| {
        serde_json::to_value(s.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    });
    let mut out = format!("{host}: {state}\n");
    match st.and_then(|s| s.app.as_ref()) {
        Some(app) => out.push_str(&format!(
            "  app          {} ({}) on the {} slot since {}\n",
            app.version,
            app.image,
            app.slot,
            or_dash(app.since.as_deref()),
        )),
        None if answer.cluster.is_some() => {
            out.push_str("  app          the cluster's Swarm service\n")
        }
        None => out.push_str("  app          none yet\n"),
    }
    if let Some(cluster) = &answer.cluster {
        out.push_str(&cluster_lines(cluster));
    }
    let serving = &answer.serving;
    let said = match serving.answer {
        0 => "no answer".to_owned(),
        code => format!("HTTP {code}"),
    };
    out.push_str(&format!(
        "  serving      {} {}: {said}\n",
        serving.path,
        if serving.answers {
            "answers"
        } else {
            "does NOT answer"
        },
    ));
    for problem in &serving.problems {
        out.push_str(&format!("  PROBLEM      {problem}\n"));
    }
    if let Some(job) = &answer.deploy {
        out.push_str(&format!(
            "  deploying    {job} (imgforge deploy --attach follows it)\n"
        ));
    }
    match &answer.certificate {
        Some(cert) => out.push_str(&format!(
            "  certificate  from {}, expires {}\n",
            cert.issuer, cert.not_after
        )),
        None => out.push_str(&format!(
            "  certificate  {}\n",
            or_dash(st.and_then(|s| s.certificate.as_deref()))
        )),
    }
    if let Some(first_boot) = st.and_then(|s| s.first_boot.as_ref()) {
        if first_boot.runs > 1 {
            out.push_str(&format!(
                "  first boot   ran {} times (a new instance: it kept {})\n",
                first_boot.runs,
                or_dash(first_boot.kept.as_deref())
            ));
        }
    }
    for d in st.map(|s| s.deploys.as_slice()).unwrap_or_default() {
        out.push_str(&format!(
            "  {:<12} {} {} -> {} slot: {}{}\n",
            d.kind,
            or_dash(d.finished.as_deref()),
            d.version,
            d.slot,
            d.result,
            d.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    for (window, t) in &answer.traffic {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |s| format!("{:.0} ms", s * 1000.0));
        out.push_str(&format!(
            "  traffic {window:<4} {:.2} req/s ({} requests), 4xx {:.1}%, 5xx {:.1}%, p50 {}, p95 {}, p99 {}\n",
            t.per_second,
            t.requests,
            t.share_4xx * 100.0,
            t.share_5xx * 100.0,
            ms(t.p50),
            ms(t.p95),
            ms(t.p99)
        ));
    }
    if let Some(m) = &answer.machine {
        let human = crate::disk::human;
        out.push_str(&format!(
            "  machine      CPU {:.0}%, memory {} of {}, disk {} of {}\n",
            m.cpu * 100.0,
            human(m.memory_used),
            human(m.memory_total),
            human(m.disk_used),
            human(m.disk_total)
        ));
    }
    let backup = &answer.backup;
    match (&backup.last, &backup.last_ok) {
        (None, _) => out.push_str("  backup       none yet\n"),
        (Some(last), ok) => {
            out.push_str(&format!(
                "  backup       {}\n",
                crate::cli::backup::describe(last)
            ));
            if last.result != "ok" {
                if let Some(ok) = ok {
                    out.push_str(&format!(
                        "  last good    {}\n",
                        crate::cli::backup::describe(ok)
                    ));
                }
            }
        }
    }
    for (name, bytes) in &answer.disk {
        out.push_str(&format!(
            "  disk         {name}: {}\n",
            crate::disk::human(*bytes)
        ));
    }
    out
}

/// The swarm as its manager sees it: the nodes, the replicas per version, the last update.
fn cluster_lines(c: &ClusterStatus) -> String {
    if !c.manager {
        return format!(
            "  cluster      a node ({}); the manager's status shows the cluster\n",
            c.state
        );
    }
    let ready = c.nodes.iter().filter(|n| n.state == "ready").count();
    let mut out = format!("  cluster      {} nodes, {ready} ready\n", c.nodes.len());
    for n in &c.nodes {
        out.push_str(&format!(
            "  node         {} {} {}, {}{}\n",
            n.hostname,
            n.addr,
            n.state,
            n.availability,
            if n.manager { " (manager)" } else { "" }
        ));
    }
    let mut versions: IndexMap<&str, Vec<&Replica>> = IndexMap::new();
    for r in &c.replicas {
        versions.entry(&r.version).or_default().push(r);
    }
    if versions.is_empty() {
        out.push_str("  replicas     none\n");
    }
    for (version, replicas) in versions {
        let running = replicas.iter().filter(|r| r.state == "running").count();
        let nodes: Vec<String> = replicas
            .iter()
            .map(|r| {
                if r.state == "running" {
                    r.node.clone()
                } else {
                    format!("{} {}", r.node, r.state)
                }
            })
            .collect();
        out.push_str(&format!(
            "  replicas     {version}: {running} of {} running ({})\n",
            replicas.len(),
            nodes.join(", ")
        ));
    }
    if let Some(update) = &c.update {
        out.push_str(&format!("  update       {update}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::contract::remote::StatusAnswer;

    /// guest/tests/fixtures/status-answer-v1.json is the VM program's own answer, written
    /// by its unit test (guest/tests/test_remote.py): a disagreement in it is printed.
    #[test]
    fn the_vm_programs_answer_parses_and_a_disagreement_is_printed() {
        let text = include_str!("../../guest/tests/fixtures/status-answer-v1.json");
        let answer: StatusAnswer = serde_json::from_str(text).unwrap();
        crate::contract::assert_every_field_present(&answer, text);
        let summary = super::summary("h", &answer);
        assert!(
            summary.contains("http://api.example.com/health answers: HTTP 200"),
            "{summary}"
        );
        assert!(
            summary.contains("PROBLEM      the upstream file names port 8001"),
            "{summary}"
        );
        assert!(!answer.healthy);
        assert!(
            summary.contains("traffic 5m   0.01 req/s (3 requests), 4xx 33.3%, 5xx 33.3%, p50 20 ms, p95 900 ms, p99 900 ms"),
            "{summary}"
        );
        assert!(
            summary.contains(
                "backup       data-20261207T030000Z at 2026-12-07T03:00:00Z: FAILED: disk full"
            ),
            "{summary}"
        );
        assert!(
            summary.contains("last good    data-20261206T030000Z at 2026-12-06T03:00:00Z: 2 files (1 SQLite databases), 40.0 KiB in 1.2 s, on the VM's own disk (lost with the VM)"),
            "{summary}"
        );
    }

    #[test]
    fn a_clusters_nodes_and_replicas_per_version_are_printed() {
        let text = include_str!("../../guest/tests/fixtures/status-answer-v1.json");
        let mut answer: StatusAnswer = serde_json::from_str(text).unwrap();
        answer.cluster = Some(
            serde_json::from_value(serde_json::json!({
                "manager": true, "state": "active", "update": "rollback_completed",
                "nodes": [
                    {"hostname": "api-1", "addr": "10.0.0.2", "state": "ready", "availability": "active", "manager": true},
                    {"hostname": "api-2", "addr": "10.0.0.3", "state": "down", "availability": "active", "manager": false}],
                "replicas": [
                    {"node": "api-1", "version": "2", "state": "running"},
                    {"node": "api-2", "version": "2", "state": "pending"},
                    {"node": "api-1", "version": "1", "state": "running"}]
            }))
            .unwrap(),
        );
        let summary = super::summary("h", &answer);
        for line in [
            "  cluster      2 nodes, 1 ready\n",
            "  node         api-1 10.0.0.2 ready, active (manager)\n",
            "  node         api-2 10.0.0.3 down, active\n",
            "  replicas     2: 1 of 2 running (api-1, api-2 pending)\n",
            "  replicas     1: 1 of 1 running (api-1)\n",
            "  update       rollback_completed\n",
        ] {
            assert!(summary.contains(line), "{line:?} not in:\n{summary}");
        }
        answer.cluster.as_mut().unwrap().manager = false;
        let summary = super::summary("h", &answer);
        assert!(
            summary.contains("  cluster      a node (active)"),
            "{summary}"
        );
        assert!(!summary.contains("  node "), "{summary}");
    }
}
