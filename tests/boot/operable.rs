//! A deployment operated as its owner would for a year. Prometheus (Debian's) scrapes
//! its /metrics over HTTPS with the token: the classifier's request count and
//! node_exporter's series; without the token, 401. Backups outlive the VM: it backs up to
//! a BorgBackup repository on this host (OpenSSH's sshd on a loopback port, which the
//! guest reaches through QEMU's user network at 10.0.2.2, running `borg serve`
//! restricted to the repository). The VM writes history, backs up, and is destroyed; a
//! new VM boots from the same image and seed, `imgforge restore` brings the rows back
//! while a stream of requests runs, and none of them fails. Then the repository goes
//! away: the next backup fails, and the webhook (`--notify-url`, a receiver on this host)
//! is told by systemd's OnFailure=.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::sshd::{closed_port, current_user, sshd};
use crate::common::*;
use crate::day_two::*;
use crate::deployment::*;

/// The history's ids, newest first.
fn history_ids(d: &Deployment, root: &Path) -> Vec<i64> {
    let page = d.https_json(root, "/history", &[]);
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(|e| e["id"].as_i64().unwrap_or_else(|| panic!("no id in {e}")))
        .collect()
}

/// A webhook receiver on a loopback port (the guest's 10.0.2.2): the JSON bodies POSTed.
fn webhook() -> (u16, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                if let Ok(doc) = serde_json::from_slice(&body) {
                    sink.lock().unwrap().push(doc);
                }
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

/// Prometheus on a loopback port, scraping the VM's /metrics every 2 s over HTTPS with
/// the token (as a user's Prometheus would, across the internet).
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(d: &Deployment, root: &Path, token: &Path) -> Prometheus {
        let dir = d.dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        let doc = serde_json::json!({
            "global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
            "scrape_configs": [{
                "job_name": "imgforge",
                "scheme": "https",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials_file": token},
                "tls_config": {"ca_file": root, "server_name": d.domain},
                "static_configs": [{"targets": [format!("127.0.0.1:{}", d.vm.info().https_port)]}],
            }],
        });
        std::fs::write(&config, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
        let port = closed_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::fs::File::create(dir.join("log")).unwrap())
            .stderr(std::fs::File::create(dir.join("err")).unwrap())
            .spawn()
            .expect("prometheus (apt install prometheus)");
        Prometheus { child, port }
    }

    /// The value of an instant PromQL query's single sample, once `accept` takes it.
    fn wait_for(&self, query: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = Command::new("curl")
                .args(["-sS", "--data-urlencode", &format!("query={query}")])
                .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
                .output()
                .unwrap();
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            let value = serde_json::from_str::<serde_json::Value>(&last)
                .ok()
                .and_then(|v| {
                    v["data"]["result"][0]["value"][1]
                        .as_str()
                        .map(String::from)
                })
                .and_then(|v| v.parse::<f64>().ok());
            if let Some(v) = value.filter(|v| accept(*v)) {
                eprintln!("[prometheus] {query} = {v}");
                return v;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        panic!("{query}: no accepted answer in 180 s; last: {last}");
    }
}

#[test]
#[ignore = "boots two VMs under TCG (tens of minutes); IMGFORGE_SLOW_TESTS=1 tests/ci.sh"]
fn backups_outlive_the_vm_and_prometheus_scrapes_its_metrics() {
    // The repository's host: a throwaway sshd whose one key may only run `borg serve`.
    let host = tempfile::tempdir().unwrap();
    let repo = host.path().join("repo");
    let vm_key = host.path().join("vm_key");
    ok(imgforge(&["keygen", "-o", vm_key.to_str().unwrap()]));
    let vm_pub = std::fs::read_to_string(vm_key.with_extension("pub")).unwrap();
    std::fs::write(
        host.path().join("authorized_keys"),
        format!(
            "command=\"borg serve --restrict-to-path {}\",restrict {}",
            repo.display(),
            vm_pub.trim()
        ),
    )
    .unwrap();
    let server = sshd(host.path(), "borg", "PermitRootLogin prohibit-password");
    let known = host.path().join("known_hosts");
    std::fs::write(
        &known,
        format!("[10.0.2.2]:{} {}", server.port, server.host_pub),
    )
    .unwrap();
    let private = |name: &str, text: &str| -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = host.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let passphrase = private("passphrase", "imgforge restore test passphrase\n");
    let token = private("metrics.token", "imgforge-metrics-test-token-5f2c9a\n");
    let url = format!(
        "ssh://{}@10.0.2.2:{}{}",
        current_user(),
        server.port,
        repo.display()
    );
    let (hook_port, told) = webhook();
    let hook = format!("http://10.0.2.2:{hook_port}/hook");
    let flags = [
        "--notify-url",
        &hook,
        "--backup-repo",
        &url,
        "--backup-passphrase-file",
        passphrase.to_str().unwrap(),
        "--backup-ssh-key-file",
        vm_key.to_str().unwrap(),
        "--backup-known-hosts",
        known.to_str().unwrap(),
        "--metrics-token-file",
        token.to_str().unwrap(),
    ];

    // 1. The first VM: three predictions, a backup to the repository.
    // QEMU's user network without restrict=on: the guest reaches this host (10.0.2.2).
    let (dir, guest, key, seed) = Deployment::seed_on(None, "restore", &flags);
    let boot = |name: &str, dir: PathBuf, guest: Guest, key: PathBuf| {
        let mut cfg = guest.vm_config(None, Some(&seed), &dir.join("run"), "");
        cfg.network = true;
        Deployment::boot_config(name, dir, guest, key, &cfg)
    };
    let mut d = boot("restore", dir.clone(), guest, key);
    d.wait_ready_with_certificate();
    let root = d.pebble_root();
    for _ in 0..3 {
        predict_cat(&d, &root);
    }
    let backed_up = history_ids(&d, &root);
    assert_eq!(backed_up.len(), 3, "{backed_up:?}");

    // Metrics: Prometheus scrapes them with the token; nobody else gets them.
    let prometheus = Prometheus::start(&d, &root, &token);
    prometheus.wait_for(r#"up{job="imgforge"}"#, |v| v == 1.0);
    prometheus.wait_for(
        r#"sum(classifier_requests_total{route="/predict",status="200"})"#,
        |v| v == 3.0,
    );
    let memory = prometheus.wait_for("node_memory_MemTotal_bytes", |v| v > 0.0);
    assert!(memory > 256e6, "node_exporter's memory total: {memory}");
    drop(prometheus);
    let code = |scheme: &str, extra: &[&str]| {
        let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}", "--cacert"];
        args.push(root.to_str().unwrap());
        args.extend_from_slice(extra);
        String::from_utf8(d.curl(scheme, "/metrics", &args).stdout).unwrap()
    };
    assert_eq!(code("https", &[]), "401", "/metrics without the token");
    assert_eq!(
        code(
            "https",
            &["-H", "Authorization: Bearer not-the-token-at-all"]
        ),
        "401"
    );
    let bearer = "Authorization: Bearer imgforge-metrics-test-token-5f2c9a";
    assert_eq!(code("https", &["-H", bearer]), "200");
    assert_ne!(code("http", &["-H", bearer]), "200", "/metrics in clear");
    // node_exporter listens on loopback only.
    let listening = d.ssh.ok("sudo ss -Hltn");
    assert!(
        listening.contains("127.0.0.1:9100") && !listening.contains("*:9100"),
        "{listening}"
    );
    let started = Instant::now();
    let out = cli(&d, "backup", &["now", "--json"]);
    let backup_s = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", stderr(&out));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["where"], "borg", "{record}");
    let archive = record["archive"].as_str().unwrap().to_owned();
    // The archive is in the repository on this host, encrypted (borg reads it with the
    // passphrase only).
    let listed = std::process::Command::new("borg")
        .args(["list", "--short"])
        .arg(&repo)
        .env("BORG_PASSPHRASE", "imgforge restore test passphrase")
        .env("BORG_BASE_DIR", host.path().join("borg-base"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&archive),
        "borg list: {}{}",
        String::from_utf8_lossy(&listed.stdout),
        String::from_utf8_lossy(&listed.stderr)
    );
    let config = std::fs::read_to_string(repo.join("config")).unwrap();
    assert!(
        config.contains("key = "),
        "not encrypted (repokey): {config}"
    );
    // A row written after the backup is not in it.
    predict_cat(&d, &root);

    // 2. The VM is destroyed: its disk is gone with it.
    let Deployment {
        vm: mut old_vm,
        dir,
        guest,
        key,
        ..
    } = d;
    old_vm.kill();
    drop(old_vm);

    // 3. A new VM from the same image and seed: an empty history until the restore.
    let powered_on = Instant::now();
    let mut d = boot("restore-new", dir.join("new"), guest, key);
    d.wait_ready_with_certificate();
    let ready_s = powered_on.elapsed().as_secs_f64();
    let root = d.pebble_root();
    assert_eq!(history_ids(&d, &root), Vec::<i64>::new());
    let out = cli(&d, "backup", &["list"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&archive),
        "the new VM does not see the old one's archive: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );

    // An archive that does not exist: refused (exit 2), nothing changed.
    let out = cli(&d, "restore", &["--archive", "data-20200101T000000Z"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no archive named"),
        "{}",
        stderr(&out)
    );
    assert_eq!(history_ids(&d, &root), Vec::<i64>::new());
    assert_eq!(serving_version(&d), "0.1.0");

    // 4. The restore, under a stream of requests: none fails.
    let stream = Stream::start(&d, &root, "restore");
    let started = Instant::now();
    let out = cli(&d, "restore", &["--archive", &archive]);
    let restore_s = started.elapsed().as_secs_f64();
    let (served, slowest) = stream.stop_timed("the restore", &["0.1.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        history_ids(&d, &root),
        backed_up,
        "the rows are not all back"
    );
    assert_eq!(serving_version(&d), "0.1.0");
    // 5. The repository goes away: the next backup fails, and the webhook hears of it.
    drop(server);
    let out = cli(&d, "backup", &["now"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(120);
    while told.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
    }
    let messages = told.lock().unwrap().clone();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["event"], "backup-failed", "{messages:?}");
    assert!(
        messages[0]["text"]
            .as_str()
            .unwrap()
            .contains("--source backup"),
        "{messages:?}"
    );
    eprintln!(
        "[restore] backup to the repository {backup_s:.1} s (VM side {} s); new VM ready \
         {ready_s:.0} s after power-on; restore {restore_s:.1} s; {served} requests during \
         it, 0 failed, slowest {slowest:.3} s",
        record["seconds"]
    );
    d.finish();
}
