//! QEMU boot tests: the user-data a person would paste, booted for real in a Debian
//! cloud-style guest (tests/guest) and checked from outside with `imgforge verify`
//! and direct requests. Apart from the ACME server, its CA bundle and the package
//! source (`--offline --docker-source distro`), the user-data is what a user renders.
//!
//! Slow (minutes per boot under TCG), so ignored by default:
//!   IMGFORGE_BOOT_TESTS=1 cargo test --test boot -- --ignored --test-threads=1 --nocapture
//! Needs `images/classifier/build.sh` to have run (the classifier bundle is packed here).
//! On failure the serial log and the guest's cloud-init lines are printed.
//! `IMGFORGE_GUEST_SUITE=trixie` boots Debian 13 (cloud-init 25.x, close to Ubuntu
//! 24.04's) instead of bookworm.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use imgforge::qemu::{Status, Vm, VmConfig};
use imgforge::verify::{Target, VerifyOptions};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const DOMAIN: &str = "api.imgforge.test";
/// Quotes, `$`, `%`, spaces and a backslash: must arrive byte-exact in the container.
const ENV_VALUE: &str = r#"it's "quoted" $HOME %h 100% a\b  two  spaces"#;

fn imgforge(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_imgforge"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imgforge {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The guest test image, built (or taken from the cache) by tests/guest/build-image.sh.
struct Guest {
    dir: PathBuf,
}

impl Guest {
    fn get(suite: &str, scratch: &Path) -> Guest {
        let out = Command::new("bash")
            .arg(format!("{ROOT}/tests/guest/build-image.sh"))
            .args([suite, &scratch.join("guest").display().to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the guest image failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_owned();
        Guest {
            dir: PathBuf::from(dir),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn vm_config(&self, seed: Option<&Path>, run_dir: &Path, extra_append: &str) -> VmConfig {
        let mut cfg = VmConfig::new(self.file("disk.qcow2"), run_dir);
        cfg.seed = seed.map(Path::to_path_buf);
        cfg.kernel = Some(self.file("vmlinuz"));
        cfg.initrd = Some(self.file("initrd.img"));
        let cmdline = std::fs::read_to_string(self.file("cmdline")).unwrap();
        cfg.append = Some(format!("{} {extra_append}", cmdline.trim()));
        cfg
    }
}

/// The classifier packed from images/classifier (needs images/classifier/build.sh).
fn classifier_bundle(dir: &Path) -> PathBuf {
    let bin = Path::new(ROOT).join("images/classifier/dist/classifier");
    assert!(
        bin.exists(),
        "{} is missing: run images/classifier/build.sh",
        bin.display()
    );
    let out = dir.join("classifier.oci.tar");
    let status = Command::new(env!("CARGO_BIN_EXE_imgforge"))
        .args(["pack", "images/classifier", "-o"])
        .arg(&out)
        .current_dir(ROOT)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// UFW's rate-limit window for SSH, with a margin.
const SSH_WINDOW: Duration = Duration::from_secs(32);

struct Deployment {
    /// When the last SSH connections were made (see [`Deployment::ssh`]).
    ssh_times: std::cell::RefCell<std::collections::VecDeque<Instant>>,
    /// Kept after a failure (serial log, seed, overlay); removed by [`Deployment::finish`].
    dir: PathBuf,
    key: PathBuf,
    vm: Vm,
    power_on: Instant,
}

impl Deployment {
    /// Renders the seed exactly as a user would (plus the test-only ACME server) and boots it.
    fn boot(name: &str, extra_append: &str) -> Deployment {
        let dir = std::env::temp_dir().join(format!("imgforge-boot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let suite = std::env::var("IMGFORGE_GUEST_SUITE").unwrap_or_else(|_| "bookworm".into());
        let guest = Guest::get(&suite, &dir);
        let bundle = classifier_bundle(&dir);
        let key = dir.join("id_ed25519");
        imgforge(&["keygen", "-o", key.to_str().unwrap()]);
        let seed = dir.join("seed.img");
        let env = format!("GREETING={ENV_VALUE}");
        imgforge(&[
            "seed",
            "--domain",
            DOMAIN,
            "--email",
            "ops@example.com",
            "--ssh-key",
            &format!("{}.pub", key.display()),
            "--offline",
            "--docker-source",
            "distro",
            "--acme-server",
            "https://localhost:14000/dir",
            "--acme-ca-bundle",
            guest.file("pebble-tls-ca.pem").to_str().unwrap(),
            "--env",
            &env,
            "--bundle",
            bundle.to_str().unwrap(),
            "-o",
            seed.to_str().unwrap(),
        ]);
        let cfg = guest.vm_config(Some(&seed), &dir.join("run"), extra_append);
        let power_on = Instant::now();
        let vm = Vm::start(&cfg).unwrap();
        eprintln!("[{name}] booting; serial log {}", vm.serial_log().display());
        Deployment {
            ssh_times: Default::default(),
            dir,
            key,
            vm,
            power_on,
        }
    }

    /// Stops the VM and removes the run directory: only a passing test cleans up.
    fn finish(self) {
        let Deployment { dir, vm, .. } = self;
        vm.stop(Duration::from_secs(30)).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Waits for a status report of the current boot that satisfies `accept`; on
    /// timeout or failure, prints what the guest said and fails.
    fn wait(&mut self, what: &str, timeout: Duration, accept: &dyn Fn(&Status) -> bool) -> Status {
        let mut last = Instant::now();
        let res = self.vm.wait_until(timeout, accept, &mut |p| {
            if last.elapsed() > Duration::from_secs(30) {
                last = Instant::now();
                eprintln!(
                    "  … {}s {}",
                    p.elapsed.as_secs(),
                    p.last_line
                        .as_deref()
                        .unwrap_or("")
                        .chars()
                        .take(100)
                        .collect::<String>()
                );
            }
        });
        match res {
            Ok(s) => s,
            Err(e) => {
                let lines = self.vm.failure_lines(40).join("\n");
                let cloud_init_log = self.ssh("sudo tail -n 80 /var/log/cloud-init-output.log");
                let tail: Vec<String> = self.vm.serial_lines().into_iter().rev().take(60).collect();
                panic!(
                    "waiting for {what}: {e}\nlast status: {:?}\nfailure lines:\n{lines}\nserial tail:\n{}\n\
                     cloud-init-output.log (over SSH):\n{}\nkept: {}",
                    self.vm.latest_status(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                    String::from_utf8_lossy(&cloud_init_log.stdout),
                    self.dir.display()
                );
            }
        }
    }

    /// One SSH command. UFW's `limit 22/tcp` refuses a sixth connection from one address
    /// within 30 s (and through QEMU every connection comes from the same address), so
    /// connections are spaced to stay under it, as a person's would be.
    fn ssh(&self, command: &str) -> Output {
        {
            let mut times = self.ssh_times.borrow_mut();
            while times.len() >= 4 {
                let oldest = times[0];
                if oldest.elapsed() >= SSH_WINDOW {
                    times.pop_front();
                } else {
                    std::thread::sleep(SSH_WINDOW - oldest.elapsed());
                }
            }
            times.push_back(Instant::now());
        }
        Command::new("ssh")
            .args([
                "-i",
                self.key.to_str().unwrap(),
                "-p",
                &self.vm.info().ssh_port.to_string(),
            ])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
            ])
            .arg("deploy@127.0.0.1")
            .arg(command)
            .output()
            .unwrap()
    }

    fn ssh_ok(&self, command: &str) -> String {
        let out = self.ssh(command);
        assert!(
            out.status.success(),
            "ssh {command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Pebble's issuing root (new at every Pebble start), from inside the guest: UFW
    /// keeps its management port closed from outside, as it should.
    fn pebble_root(&self) -> PathBuf {
        let pem = self.ssh_ok("curl -sSk https://localhost:15000/roots/0");
        assert!(pem.contains("BEGIN CERTIFICATE"), "no Pebble root: {pem}");
        let path = self.dir.join("pebble-root.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// curl against the forwarded port, with the domain resolved to it (as DNS would).
    fn curl(&self, scheme: &str, path: &str, extra: &[&str]) -> Output {
        let port = if scheme == "https" {
            self.vm.info().https_port
        } else {
            self.vm.info().http_port
        };
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "60",
            "--resolve",
            &format!("{DOMAIN}:{port}:127.0.0.1"),
        ]);
        cmd.args(extra);
        cmd.arg(format!("{scheme}://{DOMAIN}:{port}{path}"));
        cmd.output().unwrap()
    }

    fn https_json(&self, root: &Path, path: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["--fail", "--cacert", root.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = self.curl("https", path, &args);
        assert!(
            out.status.success(),
            "GET {path} over HTTPS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn verify(&self, root: &Path) -> imgforge::verify::Report {
        let target = Target::from_boot_json(&self.vm.run_dir().join("boot.json")).unwrap();
        // verify makes a few SSH connections of its own (login, password, root).
        std::thread::sleep(SSH_WINDOW);
        self.ssh_times.borrow_mut().clear();
        let mut opts = VerifyOptions::new(DOMAIN, "deploy");
        opts.identity = Some(self.key.clone());
        opts.ca_bundle = Some(root.to_path_buf());
        let report = imgforge::verify::verify(&target, &opts).unwrap();
        self.ssh_times.borrow_mut().extend([Instant::now(); 4]);
        report
    }
}

fn predict_cat(d: &Deployment, root: &Path) -> serde_json::Value {
    let photo = format!("{ROOT}/images/classifier/dist/testdata/chelsea.png");
    let form = format!("file=@{photo};type=image/png");
    d.https_json(root, "/predict", &["-F", &form])
}

fn top1(prediction: &serde_json::Value) -> String {
    let first = &prediction["predictions"][0];
    first["label"]
        .as_str()
        .unwrap_or_else(|| panic!("no top-1 label in {prediction}"))
        .to_owned()
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0}s", d.as_secs_f64()))
}

/// Scenarios a, b, c, e, f on one VM: first boot deploys everything; only 22/80/443
/// answer and SSH is hardened; the env value arrives byte-exact; a killed container
/// comes back; after a reboot everything is back and the history survived.
#[test]
#[ignore = "boots a VM for minutes: IMGFORGE_BOOT_TESTS=1 cargo test --test boot -- --ignored"]
fn first_boot_deploys_everything_and_survives_kill_and_reboot() {
    let mut d = Deployment::boot("main", "");

    // a. First boot: ready, certificate from Pebble, the classifier answers over HTTPS.
    let finished = d.wait("first boot to finish", Duration::from_secs(1800), &|s| {
        s.is_finished()
    });
    assert!(
        finished.is_ready(),
        "first boot did not end ready: {finished:?}\n{}",
        d.vm.failure_lines(40).join("\n")
    );
    let with_cert = d.wait("the certificate", Duration::from_secs(600), &|s| {
        s.is_ready() && s.certificate.as_deref() == Some("ok")
    });
    let https_at = d.power_on.elapsed();
    assert!(with_cert.is_ready());
    let first = d.vm.timings();
    let root = d.pebble_root();
    let about = d.https_json(&root, "/", &[]);
    assert!(
        about.to_string().contains("classifier"),
        "GET / answered {about}"
    );
    let prediction = predict_cat(&d, &root);
    let label = top1(&prediction);
    assert!(
        ["tabby", "tiger cat", "Egyptian cat"]
            .iter()
            .any(|c| label.contains(c)),
        "chelsea.png predicted as {label:?}: {prediction}"
    );

    // e. From outside: SSH key login works, passwords and root are refused, only
    // 22/80/443 answer, HTTP redirects to HTTPS, the server's own record says ready.
    let report = d.verify(&root);
    let failed: Vec<_> = report.failed().collect();
    assert!(report.ok, "verify failed: {failed:#?}");
    for name in report.checks.iter().map(|c| c.name.as_str()) {
        eprintln!("  verify: {name}: {:?}", report.check(name).unwrap().status);
    }
    let redirect = d.curl(
        "http",
        "/health",
        &["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"],
    );
    let redirect = String::from_utf8_lossy(&redirect.stdout).into_owned();
    assert!(
        redirect.starts_with("301 https://api.imgforge.test/"),
        "HTTP answered {redirect:?}"
    );

    // f. The env value arrived byte-exact: what Docker gave the container's process.
    let env_json = d.ssh_ok("sudo docker inspect --format '{{json .Config.Env}}' imgforge-app");
    let env: Vec<String> = serde_json::from_str(env_json.trim()).unwrap();
    assert!(
        env.contains(&format!("GREETING={ENV_VALUE}")),
        "container env: {env:?}"
    );

    // c. The container is killed: systemd brings a new one back within seconds.
    let inspect_id = "sudo docker inspect --format '{{.Id}}' imgforge-app";
    let before = d.ssh_ok(inspect_id);
    d.ssh_ok("sudo docker kill imgforge-app");
    let killed = Instant::now();
    let cacert = root.to_str().unwrap();
    let back = loop {
        let health = d.curl(
            "https",
            "/health",
            &["--fail", "--cacert", cacert, "-o", "/dev/null"],
        );
        if health.status.success() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(180),
            "the app did not come back within 180 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let after = d.ssh_ok(inspect_id);
    assert_ne!(
        before, after,
        "the same container answered: it was not killed"
    );

    // b. Reboot: everything comes back, the history survived.
    d.vm.note_reboot();
    let _ = d.ssh("sudo systemctl reboot");
    let rebooted = d.wait("the reboot to finish", Duration::from_secs(1200), &|s| {
        s.is_finished()
    });
    assert!(rebooted.is_ready(), "after reboot: {rebooted:?}");
    let reboot_times = d.vm.timings();
    // The certificate nginx serves is the one issued before the reboot: it chains to the
    // root fetched then (Pebble makes a new root each time it starts, Let's Encrypt does not).
    let history = d.https_json(&root, "/history", &[]);
    let text = history.to_string();
    assert!(
        text.contains(&label),
        "history after reboot lost the prediction {label:?}: {text}"
    );
    assert!(d.verify(&root).ok, "verify after reboot failed");

    eprintln!(
        "\nboot timings (TCG, {}):",
        if d.vm.accel() == imgforge::qemu::Accel::Kvm {
            "kvm"
        } else {
            "tcg"
        }
    );
    eprintln!("  first boot: login prompt {}, cloud-init finished {}, HTTPS serving {:.0}s; overhead over a bare boot {:.1}x",
        secs(first.login_prompt), secs(first.finished), https_at.as_secs_f64(),
        first.login_prompt.map_or(0.0, |l| https_at.as_secs_f64() / l.as_secs_f64()));
    eprintln!("  killed container back in {:.1}s", back.as_secs_f64());
    eprintln!(
        "  reboot: login prompt {}, finished {}",
        secs(reboot_times.login_prompt),
        secs(reboot_times.finished)
    );
    eprintln!("  inference: {}", prediction["inference_ms"]);
    d.finish();
}

/// Scenario d: the ACME server is down during first boot. HTTP serves the app, the
/// certificate unit keeps retrying, and once the ACME server is up the certificate is
/// obtained and HTTPS served, with nobody logging in.
#[test]
#[ignore = "boots a VM for minutes: IMGFORGE_BOOT_TESTS=1 cargo test --test boot -- --ignored"]
fn certificate_arrives_when_the_acme_server_comes_up_late() {
    // Pebble starts this long after the guest's early boot: well after first boot ends.
    let mut d = Deployment::boot("late-acme", "imgforge.test.pebble_delay=600");
    let finished = d.wait("first boot to finish", Duration::from_secs(1800), &|s| {
        s.is_finished()
    });
    assert!(
        finished.is_ready(),
        "first boot did not end ready: {finished:?}"
    );
    assert_eq!(
        finished.certificate.as_deref(),
        Some("pending"),
        "the certificate was not pending at the end of first boot: the ACME server came up too early for this scenario"
    );
    let finished_at = d.power_on.elapsed();
    // Meanwhile HTTP serves the app itself, not a redirect.
    let http = d.curl("http", "/", &["--fail"]);
    assert!(
        http.status.success() && String::from_utf8_lossy(&http.stdout).contains("classifier"),
        "HTTP while pending: {}",
        String::from_utf8_lossy(&http.stdout)
    );
    let https = d.curl("https", "/", &["-k", "-o", "/dev/null"]);
    assert!(
        !https.status.success(),
        "HTTPS answered before there was a certificate"
    );

    let with_cert = d.wait(
        "the certificate after the ACME server came up",
        Duration::from_secs(1800),
        &|s| s.is_ready() && s.certificate.as_deref() == Some("ok"),
    );
    assert!(with_cert.is_ready());
    let root = d.pebble_root();
    let about = d.https_json(&root, "/", &[]);
    assert!(about.to_string().contains("classifier"));
    eprintln!(
        "late ACME: first boot finished at {:.0}s with the certificate pending; HTTPS at {:.0}s",
        finished_at.as_secs_f64(),
        d.power_on.elapsed().as_secs_f64()
    );
    d.finish();
}
