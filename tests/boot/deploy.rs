//! Day two on a booted VM, with a steady stream of HTTPS requests (10 a second, each
//! checked) the whole time: a deploy whose client is interrupted, a broken version, bad
//! input, a rollback, a version that dies after the switch (the watch switches back), a
//! backup; then the logs of all of it, before and after a reboot.
//! (A version slower to start than any timeout the VM used to have, and a new
//! instance-id with first boot running again, are in the slow tier: faults.rs.)
//! No request may fail, and traffic moves from one version to the next once per switch.

use std::time::Duration;

use sha2::{Digest, Sha256};

use imgforge::contract::layout;
use imgforge::contract::logs::{LogLine, Source};
use imgforge::contract::remote::{BackupList, BackupRecord};

use crate::common::*;
use crate::day_two::*;
use crate::deployment::*;

#[test]
#[ignore = "boots a VM for minutes: cargo test --test boot -- --ignored"]
fn deploys_switch_with_zero_failed_requests_and_survive_faults() {
    let mut d = Deployment::seeded("deploy", &["--env", "GREETING=v1 env"], "");
    d.wait_ready_with_certificate();
    let root = d.pebble_root();
    let v1_label = top1(&predict_cat(&d, &root));
    let fast = classifier_version(&d.dir, "0.2.0", &[], Behaviour::Plain);
    let broken = classifier_version(
        &d.dir,
        "0.3.0",
        &[("MODEL_DIR", "/nonexistent")],
        Behaviour::Plain,
    );

    // 1. v2, with the client interrupted (Ctrl-C) while the VM waits for v2's health: the
    //    deploy goes on on the VM, `--attach` follows it to its end, traffic moves from v1
    //    to v2 once, and everything on the VM agrees on what serves.
    let stream = Stream::start(&d, &root, "v2");
    hold(&d, "health");
    let client = Client::spawn(&d, "deploy", &["--bundle", fast.to_str().unwrap()]);
    client.wait_for("held at health", Duration::from_secs(900));
    let lines = client.kill("INT", &d);
    // First boot wrote the VM program without day two; deploy sent the whole program,
    // which the VM now runs (and ran the deploy with).
    assert!(
        lines.iter().any(|l| l.contains("updated the VM program")),
        "{lines:?}"
    );
    // The deploy waits on the VM; --attach picks it up there (its log from the start)
    // and follows it to its end once it goes on.
    let attach = Client::spawn(&d, "deploy", &["--attach"]);
    attach.wait_for("held at health", Duration::from_secs(300));
    release(&d);
    let (ok, lines) = attach.wait(&d);
    assert!(ok, "--attach after the interrupted deploy: {lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("0.2.0 serves")),
        "{lines:?}"
    );
    stream.stop_expecting("the interrupted deploy of v2", &["0.1.0", "0.2.0"]);
    assert_eq!(serving_version(&d), "0.2.0");
    let program = hex::encode(Sha256::digest(imgforge::render::program::zipapp()));
    let on_vm = d.ssh.ok(&format!("sha256sum {}", layout().program));
    assert!(on_vm.starts_with(&program), "{on_vm} is not {program}");
    // The history v1 wrote is there under v2, and v2 kept v1's environment.
    let history = d.https_json(&root, "/history", &[]).to_string();
    assert!(
        history.contains(&v1_label),
        "history lost under v2: {history}"
    );
    let env = d.ssh.ok(&format!(
        "sudo docker inspect --format '{{{{json .Config.Env}}}}' {}-green",
        layout().container
    ));
    assert!(env.contains("GREETING=v1 env"), "{env}");

    // 2. A broken v3: refused with the reason, its log lines on this terminal only (not
    //    in status.json, which others may read), v2 serves on.
    let stream = Stream::start(&d, &root, "v3");
    let out = cli(
        &d,
        "deploy",
        &[
            "--bundle",
            broken.to_str().unwrap(),
            "--health-timeout",
            "90",
        ],
    );
    stream.stop_expecting("the failed deploy of v3", &["0.2.0"]);
    assert_eq!(out.status.code(), Some(1), "a broken v3 did not fail");
    let err = stderr(&out);
    assert!(err.contains("did not answer /health"), "{err}");
    assert!(
        err.contains("nonexistent"),
        "the app's last lines are not shown: {err}"
    );
    let status_json = d.ssh.ok(&format!("cat {}", layout().status));
    let doc = imgforge::contract::status::Status::parse(&status_json).unwrap();
    let last = doc.deploys.last().expect("a deploy in status.json");
    assert_eq!(
        (last.version.as_str(), last.result.as_str()),
        ("0.3.0", "failed")
    );
    assert!(
        !status_json.contains("nonexistent") && !status_json.contains("\"log\""),
        "the app's output reached status.json: {status_json}"
    );
    assert_eq!(doc.app.map(|a| a.version).as_deref(), Some("0.2.0"));

    // 3. Bad input: exit 2, nothing changes.
    let out = cli(&d, "deploy", &["--attach"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--attach with no deploy running"
    );
    assert!(
        stderr(&out).contains("no deploy is running"),
        "{}",
        stderr(&out)
    );
    let other = crate::common::apps::webapp_bundle(&d.dir, None);
    let out = cli(&d, "deploy", &["--bundle", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("pass --image"), "{}", stderr(&out));
    // Another deploy holds the lock until this test lets it go (however slow the
    // client's own steps before it asks for the lock are).
    let lock = &layout().deploy_lock;
    d.ssh.ok(&format!(
        "sudo systemd-run --unit imgforge-test-lock --collect --quiet \
         flock {lock} sleep infinity \
         && until ! sudo flock -n {lock} true; do sleep 1; done",
    ));
    let out = cli(&d, "deploy", &["--bundle", fast.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another deploy is running"),
        "{}",
        stderr(&out)
    );
    // A bundle that is not the one the request names (a transfer gone wrong).
    let request = format!(
        "{{\"image\":\"imgforge/classifier:0.5.0\",\"bundle\":{{\"size\":4,\"sha256\":\"{}\"}}}}\nabcd",
        "0".repeat(64)
    );
    d.ssh.ok("sudo systemctl stop imgforge-test-lock");
    let out = d.ssh.run_with_input(
        &format!("sudo -n {} deploy-version", layout().program),
        &request,
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256"));
    assert_eq!(
        serving_version(&d),
        "0.2.0",
        "bad input changed what serves"
    );

    // 4. Rollback to v1, nothing failed. (A version slower to start than any timeout the
    //    VM used to have deploys in the slow tier's faults test; the baked test's app
    //    starts that slowly at first boot.)
    let stream = Stream::start(&d, &root, "rollback");
    let out = cli(&d, "rollback", &[]);
    assert!(out.status.success(), "rollback failed");
    let (_, slowest_before) = stream.stop_timed("rollback", &["0.2.0", "0.1.0"]);
    let out = cli(&d, "status", &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0.1.0") && text.contains("answers"), "{text}");

    // The app's metrics are the VM's: nginx answers 404 for them, the slot's own port
    // serves them on the VM, counting the requests streamed so far.
    let out = d.curl(
        "https",
        "/metrics",
        &[
            "--cacert",
            root.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    let slot = crate::day_two::status_json(&d).app.expect("an app").slot;
    let metrics = d.ssh.ok(&format!(
        "curl -sS http://127.0.0.1:{}/metrics",
        layout().slots[&slot]
    ));
    assert!(
        metrics.contains("classifier_requests_total{route=\"/\",status=\"200\"}"),
        "{metrics}"
    );

    // 5. v5 dies 20 s after it first serves a request of the stream. The deploy's watch
    //    (60 s by default) keeps v1 ready as nginx's backup server, sees v5's health
    //    fail, and switches traffic back by itself: the deploy exits 1 naming the watch,
    //    and no request fails but those v5 had in flight when it died (counted).
    let dies = classifier_version(&d.dir, "0.5.0", &[], Behaviour::DiesAfterServing(20));
    let stream = Stream::start(&d, &root, "watch");
    let out = cli(&d, "deploy", &["--bundle", dies.to_str().unwrap()]);
    let (versions, failed, _) = stream.stop();
    eprintln!(
        "the watch: {} requests, {} failed ({failed:?}), traffic {:?}",
        versions.len() + failed.len(),
        failed.len(),
        runs(&versions)
    );
    assert_eq!(out.status.code(), Some(1), "v5's deploy did not fail");
    let err = stderr(&out);
    assert!(err.contains("the watch switched traffic back"), "{err}");
    assert!(
        failed.len() <= 1,
        "failed requests during the watch: {failed:?}"
    );
    let seen = runs(&versions);
    assert!(
        seen.first().map(String::as_str) == Some("0.1.0")
            && seen.last().map(String::as_str) == Some("0.1.0")
            && seen.contains(&"0.5.0".to_owned()),
        "traffic during the watch: {seen:?}"
    );
    assert_eq!(serving_version(&d), "0.1.0");
    let doc = crate::day_two::status_json(&d);
    let last = doc.deploys.last().expect("a deploy in status.json");
    assert_eq!(
        (last.version.as_str(), last.result.as_str()),
        ("0.5.0", "rolled-back"),
        "{last:?}"
    );

    // 6. A backup while requests stream: SQLite is copied through its online backup, the
    //    app is never paused, so no request fails or waits a second.
    let stream = Stream::start(&d, &root, "backup");
    let out = cli(&d, "backup", &["now", "--json"]);
    let (count, slowest) = stream.stop_timed("the backup", &["0.1.0"]);
    assert!(out.status.success(), "backup now failed");
    let record: BackupRecord = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "backup: {} files, {} databases, {} bytes in {:.2} s; {count} requests meanwhile, \
         the slowest {slowest:.3} s (during the rollback before: {slowest_before:.3} s)",
        record.files.unwrap_or(0),
        record.databases.unwrap_or(0),
        record.bytes.unwrap_or(0),
        record.seconds
    );
    assert_eq!((record.result.as_str(), record.databases), ("ok", Some(1)));
    assert!(
        slowest < 1.0,
        "a request took {slowest:.3} s during the backup"
    );
    let out = cli(&d, "backup", &["list", "--json"]);
    let list: BackupList = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list.archives.iter().any(|a| a.name == record.archive),
        "{list:?}"
    );
    let out = cli(&d, "status", &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("backup       {}", record.archive)),
        "{text}"
    );

    // 7. Logs: the requests just made are in nginx's access log; the app's lines name
    //    the version that wrote them, from v1 on, and outlive a reboot; the deploys' and
    //    first boot's steps are there.
    let lines = logs(&d, &["--since", "3h"]);
    let requests: Vec<&LogLine> = lines
        .iter()
        .filter(|l| {
            l.request
                .as_ref()
                .is_some_and(|r| r.uri.starts_with("/?n="))
        })
        .collect();
    assert!(
        requests.len() >= count,
        "{} of the stream's {count} requests in the proxy's log",
        requests.len()
    );
    let ran = |lines: &[LogLine]| -> Vec<String> {
        let mut v: Vec<String> = lines
            .iter()
            .filter(|l| l.source == Source::App && l.message.contains("\"listening\""))
            .filter_map(|l| l.version.clone())
            .collect();
        v.dedup();
        v
    };
    let before = ran(&lines);
    for version in ["0.1.0", "0.2.0", "0.5.0"] {
        assert!(before.contains(&version.to_owned()), "{before:?}");
    }
    for (source, says) in [
        (Source::Deploy, "[switch]"),
        (Source::Deploy, "[watch]"),
        (Source::Boot, "step app: ok"),
        (Source::Backup, "SQLite"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.source == source && l.message.contains(says)),
            "no {source:?} line says {says:?}"
        );
    }
    reboot(&mut d);
    let after = ran(&logs(&d, &["--since", "4h", "--source", "app"]));
    for version in ["0.1.0", "0.2.0"] {
        assert!(
            after.contains(&version.to_owned()),
            "after the reboot: {after:?}"
        );
    }
    d.finish();
}

/// `imgforge logs --json EXTRA`, parsed.
fn logs(d: &Deployment, extra: &[&str]) -> Vec<LogLine> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = cli(d, "logs", &args);
    assert!(out.status.success(), "imgforge logs {extra:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}
