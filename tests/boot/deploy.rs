//! Day two on a booted VM, with a steady stream of HTTPS requests (10 a second, each
//! checked) the whole time: deploy v2, deploy a broken v3, roll back, reboot. No request
//! may fail, and traffic moves from one version to the next exactly once per switch.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::*;
use crate::deployment::*;
use crate::first_boot::{predict_cat, top1};

/// The classifier packed as another version: the same model and binary, its version in
/// the image's name, label and `APP_VERSION` (what `GET /` reports), plus `env`.
fn classifier_version(dir: &Path, version: &str, env: &[(&str, &str)]) -> PathBuf {
    let src = dir.join(format!("classifier-{version}"));
    run(Command::new("cp")
        .args(["-a", &format!("{ROOT}/images/classifier")])
        .arg(&src));
    let spec_path = src.join("image.yaml");
    let mut spec: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    spec["name"] = format!("imgforge/classifier:{version}").into();
    spec["labels"]["org.opencontainers.image.version"] = version.into();
    spec["env"]["APP_VERSION"] = version.into();
    for (k, v) in env {
        spec["env"][*k] = (*v).into();
    }
    std::fs::write(&spec_path, serde_yaml_ng::to_string(&spec).unwrap()).unwrap();
    let out = dir.join(format!("classifier-{version}.oci.tar"));
    ok(imgforge(&[
        "pack",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]));
    out
}

/// `curl --rate 10/s` over one connection at a time, GET / with a counter in the query,
/// recording each response's status and the version it names.
struct Stream {
    child: Child,
    out: PathBuf,
}

impl Stream {
    fn start(d: &Deployment, root: &Path, name: &str) -> Stream {
        let port = d.vm.info().https_port;
        let out = d.dir.join(format!("stream-{name}.log"));
        let child = Command::new("curl")
            .args(["-sS", "--rate", "10/s", "--max-time", "3600", "--cacert"])
            .arg(root)
            .args(["--resolve", &format!("{DOMAIN}:{port}:127.0.0.1")])
            .args(["-w", "\n@@ %{http_code}\n"])
            .arg(format!("https://{DOMAIN}:{port}/?n=[1-100000]"))
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        Stream { child, out }
    }

    /// Stops the stream; the versions answered, in order, and the failed requests.
    fn stop(mut self) -> (Vec<String>, Vec<String>) {
        std::thread::sleep(Duration::from_secs(3));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        std::fs::File::open(&self.out)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let mut versions = Vec::new();
        let mut failed = Vec::new();
        let mut body = String::new();
        for line in text.lines() {
            match line.strip_prefix("@@ ") {
                Some("200") => match serde_json::from_str::<serde_json::Value>(body.trim()) {
                    Ok(v) => versions.push(v["version"].as_str().unwrap_or("?").to_owned()),
                    Err(_) => failed.push(format!("200 with a body that is not JSON: {body:?}")),
                },
                // The last request, cut by the kill, is not a failure of the server.
                Some(code) => failed.push(format!("{code}: {}", body.trim())),
                None => {
                    body.push_str(line);
                    continue;
                }
            }
            body.clear();
        }
        if failed.last().is_some_and(|f| f.starts_with("000")) {
            failed.pop();
        }
        (versions, failed)
    }
}

/// The versions in the order traffic saw them, each run of equal answers once.
fn runs(versions: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in versions {
        if out.last() != Some(v) {
            out.push(v.clone());
        }
    }
    out
}

fn cli(d: &Deployment, command: &str, extra: &[&str]) -> Output {
    let port = d.vm.info().ssh_port.to_string();
    let known = d.ssh.known_hosts.clone().expect("host key pinned");
    let mut args = vec![
        command,
        "--host",
        "127.0.0.1",
        "--ssh-port",
        &port,
        "--identity",
        d.key.to_str().unwrap(),
        "--known-hosts",
        known.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    // deploy makes three connections (status, the VM program, the deploy itself).
    d.ssh.pace(3);
    let started = Instant::now();
    let out = imgforge(&args);
    eprintln!(
        "imgforge {command} {extra:?} ({:.0}s):\n{}{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Under TCG a start takes long: the model loads emulated.
const HEALTH: &str = "300";

#[test]
#[ignore = "boots a VM for minutes: cargo test --test boot -- --ignored"]
fn deploys_switch_with_zero_failed_requests_and_roll_back() {
    let mut d = Deployment::seeded("deploy", &["--env", "GREETING=v1 env"], "");
    d.wait_ready_with_certificate();
    let root = d.pebble_root();
    let v1_label = top1(&predict_cat(&d, &root));
    let v2 = classifier_version(&d.dir, "0.2.0", &[]);
    let v3 = classifier_version(&d.dir, "0.3.0", &[("MODEL_DIR", "/nonexistent")]);

    // 1. v2: every request answered, traffic moves from v1 to v2 once.
    let stream = Stream::start(&d, &root, "v2");
    let out = cli(
        &d,
        "deploy",
        &["--bundle", v2.to_str().unwrap(), "--health-timeout", HEALTH],
    );
    let (versions, failed) = stream.stop();
    assert!(out.status.success(), "deploy v2 failed");
    // First boot wrote the VM program without the modules this VM does not use; deploy
    // sent the whole program, which the VM now runs (and ran the deploy with).
    assert!(
        stderr(&out).contains("updated the VM program"),
        "{}",
        stderr(&out)
    );
    let program = hex::encode(Sha256::digest(imgforge::render::program::zipapp()));
    let on_vm = d.ssh.ok("sha256sum /usr/local/lib/imgforge/imgforge-vm");
    assert!(on_vm.starts_with(&program), "{on_vm} is not {program}");
    assert!(
        failed.is_empty(),
        "failed requests during deploy v2: {failed:?}"
    );
    assert_eq!(
        runs(&versions),
        ["0.1.0", "0.2.0"],
        "traffic during deploy v2"
    );
    eprintln!("deploy v2: {} requests, none failed", versions.len());
    // The history v1 wrote is there under v2, and v2 kept v1's environment.
    let history = d.https_json(&root, "/history", &[]).to_string();
    assert!(
        history.contains(&v1_label),
        "history lost under v2: {history}"
    );
    let env = d
        .ssh
        .ok("sudo docker inspect --format '{{json .Config.Env}}' imgforge-app-green");
    assert!(env.contains("GREETING=v1 env"), "{env}");

    // 2. A broken v3: refused with the reason, v2 serves on, nothing failed.
    let stream = Stream::start(&d, &root, "v3");
    let out = cli(
        &d,
        "deploy",
        &["--bundle", v3.to_str().unwrap(), "--health-timeout", "60"],
    );
    let (versions, failed) = stream.stop();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a broken v3 did not fail the deploy"
    );
    assert!(
        stderr(&out).contains("did not answer /health"),
        "{}",
        stderr(&out)
    );
    assert!(
        failed.is_empty(),
        "failed requests during deploy v3: {failed:?}"
    );
    assert_eq!(
        runs(&versions),
        ["0.2.0"],
        "traffic during the failed deploy"
    );
    let status: serde_json::Value =
        serde_json::from_str(&d.ssh.ok("cat /var/lib/imgforge/status.json")).unwrap();
    let last = status["deploys"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["version"].as_str(), last["result"].as_str()),
        (Some("0.3.0"), Some("failed"))
    );
    assert!(
        !last["log"].as_array().unwrap().is_empty(),
        "no log lines: {last}"
    );
    assert_eq!(status["app"]["version"], "0.2.0");

    // 3. Rollback: back to v1, nothing failed.
    let stream = Stream::start(&d, &root, "rollback");
    let out = cli(&d, "rollback", &["--health-timeout", HEALTH]);
    let (versions, failed) = stream.stop();
    assert!(out.status.success(), "rollback failed");
    assert!(
        !stderr(&out).contains("updated the VM program"),
        "the same program was sent again: {}",
        stderr(&out)
    );
    assert!(
        failed.is_empty(),
        "failed requests during rollback: {failed:?}"
    );
    assert_eq!(
        runs(&versions),
        ["0.2.0", "0.1.0"],
        "traffic during rollback"
    );

    // status, as its owner reads it.
    let out = cli(&d, "status", &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0.1.0") && text.contains("healthy"), "{text}");

    // A bundle of another app, without --image: refused, nothing changes.
    let other = crate::baked::webapp_bundle(&d.dir);
    let out = cli(&d, "deploy", &["--bundle", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("pass --image"), "{}", stderr(&out));
    // A second deploy while one runs: refused at once.
    d.ssh
        .ok("sudo sh -c 'flock /var/lib/imgforge/deploy.lock sleep 40 >/dev/null 2>&1 &'");
    let out = cli(&d, "deploy", &["--bundle", v2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another deploy is running"),
        "{}",
        stderr(&out)
    );

    // 4. Reboot: the version that served before serves after.
    std::thread::sleep(Duration::from_secs(40));
    d.vm.note_reboot();
    let _ = d.ssh.run("sudo systemctl reboot");
    let rebooted = d.wait("the reboot to finish", Duration::from_secs(1200), &|s| {
        s.is_finished()
    });
    assert!(rebooted.is_ready(), "after reboot: {rebooted:?}");
    let about = d.https_json(&root, "/", &[]);
    assert_eq!(about["version"], "0.1.0", "after reboot: {about}");
    d.finish();
}
