//! A deployment booted in QEMU from what a user would render, and the ways a user checks
//! it from outside: SSH (host key pinned from the console), curl, `imgforge verify`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use imgforge::qemu::{Status, Vm, WaitError};
use imgforge::verify::{Target, VerifyOptions};

use crate::common::*;

pub const DOMAIN: &str = "api.imgforge.test";
/// Pebble's ACME directory inside the guest (tests/guest).
pub const ACME: &str = "https://localhost:14000/dir";

/// The flags of a deployment like the boot tests render it: what a user passes, plus
/// the test-only ACME server and, with `offline`, the packages the guest image carries.
pub fn user_flags(guest: &Guest, key: &Path, offline: bool) -> Vec<String> {
    user_flags_for(DOMAIN, guest, key, offline)
}

/// [`user_flags`] for another domain.
pub fn user_flags_for(domain: &str, guest: &Guest, key: &Path, offline: bool) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--domain",
        domain,
        "--email",
        "ops@example.com",
        "--ssh-key",
        &format!("{}.pub", key.display()),
        "--acme-server",
        ACME,
        "--acme-ca-bundle",
        guest.file("pebble-tls-ca.pem").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if offline {
        flags.extend(["--offline", "--docker-source", "distro"].map(String::from));
    }
    flags
}

pub struct Deployment {
    pub name: String,
    /// The domain the deployment serves (DOMAIN unless the test renders another).
    pub domain: String,
    /// Kept after a failure (serial log, seed, overlay); removed by [`Deployment::finish`].
    pub dir: PathBuf,
    #[allow(dead_code)] // the deploy tests boot it again
    pub guest: Guest,
    pub key: PathBuf,
    pub vm: Vm,
    pub ssh: Ssh,
    pub power_on: Instant,
}

impl Deployment {
    /// A scratch directory, the guest image and an admin key pair.
    pub fn prepare(name: &str) -> (PathBuf, Guest, PathBuf) {
        Deployment::prepare_on(name, None)
    }

    /// [`Deployment::prepare`] on Debian release `suite` (default: IMGFORGE_GUEST_SUITE,
    /// else bookworm).
    pub fn prepare_on(name: &str, suite: Option<&str>) -> (PathBuf, Guest, PathBuf) {
        let dir = std::env::temp_dir().join(format!("imgforge-boot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let guest = match suite {
            Some(suite) => Guest::of(suite, "", &dir),
            None => Guest::get(&dir),
        };
        let key = dir.join("id_ed25519");
        ok(imgforge(&["keygen", "-o", key.to_str().unwrap()]));
        (dir, guest, key)
    }

    /// Seeds the classifier bundle with the user's flags plus `extra`, and boots it.
    pub fn seeded(name: &str, extra: &[&str], extra_append: &str) -> Deployment {
        Deployment::seeded_on(None, name, extra, extra_append)
    }

    /// [`Deployment::seeded`] on Debian release `suite`.
    pub fn seeded_on(
        suite: Option<&str>,
        name: &str,
        extra: &[&str],
        extra_append: &str,
    ) -> Deployment {
        let (dir, guest, key, seed) = Deployment::seed_on(suite, name, extra);
        Deployment::boot(name, dir, guest, key, None, Some(&seed), extra_append)
    }

    /// The seed [`Deployment::seeded_on`] boots (`dir/seed.img`), not booted yet.
    pub fn seed_on(
        suite: Option<&str>,
        name: &str,
        extra: &[&str],
    ) -> (PathBuf, Guest, PathBuf, PathBuf) {
        let (dir, guest, key) = Deployment::prepare_on(name, suite);
        let bundle = classifier_bundle(&dir);
        let seed = dir.join("seed.img");
        let mut args: Vec<String> = vec!["seed".into()];
        args.extend(user_flags(&guest, &key, true));
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--bundle".into(), bundle.display().to_string()]);
        args.extend(["-o".into(), seed.display().to_string()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(imgforge(&argv));
        (dir, guest, key, seed)
    }

    /// Boots `disk` (default: the guest image) with `seed`.
    pub fn boot(
        name: &str,
        dir: PathBuf,
        guest: Guest,
        key: PathBuf,
        disk: Option<&Path>,
        seed: Option<&Path>,
        extra_append: &str,
    ) -> Deployment {
        let cfg = guest.vm_config(disk, seed, &dir.join("run"), extra_append);
        Deployment::boot_config(name, dir, guest, key, &cfg)
    }

    /// Boots `cfg` (a VmConfig of `guest`).
    pub fn boot_config(
        name: &str,
        dir: PathBuf,
        guest: Guest,
        key: PathBuf,
        cfg: &imgforge::qemu::VmConfig,
    ) -> Deployment {
        std::fs::create_dir_all(&dir).unwrap();
        let power_on = Instant::now();
        let vm = Vm::start(cfg).unwrap();
        eprintln!("[{name}] booting; serial log {}", vm.serial_log().display());
        let ssh = Ssh::new(&key, vm.info().ssh_port, "deploy");
        Deployment {
            name: name.to_owned(),
            domain: DOMAIN.to_owned(),
            dir,
            guest,
            key,
            vm,
            ssh,
            power_on,
        }
    }

    /// Stops the VM and removes the run directory: only a passing test cleans up.
    pub fn finish(self) {
        let Deployment {
            name,
            dir,
            vm,
            power_on,
            ..
        } = self;
        eprintln!(
            "[{name}] passed {:.0}s after power-on",
            power_on.elapsed().as_secs_f64()
        );
        vm.stop(Duration::from_secs(30)).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Reboots the guest as a provider's reboot does: an orderly `systemctl poweroff`
    /// inside, then a cold start of the same disk (`Vm::power_on_after_shutdown` says why
    /// not the guest's own warm reboot). Waits then look at the new boot.
    pub fn reboot(&mut self) {
        let _ = self.ssh.run("sudo systemctl poweroff");
        if let Err(e) = self.vm.power_on_after_shutdown(Duration::from_secs(600)) {
            panic!("[{}] rebooting: {e:#}", self.name);
        }
    }

    /// Waits for a status report of the current boot that satisfies `accept`; on
    /// timeout or failure, prints what the guest said and fails.
    pub fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        accept: &dyn Fn(&Status) -> bool,
    ) -> Status {
        let mut last = Instant::now();
        let name = self.name.clone();
        let mut powered_on_again = false;
        let res = loop {
            let res = self.vm.wait_until(timeout, accept, &mut |p| {
                if last.elapsed() > Duration::from_secs(30) {
                    last = Instant::now();
                    let line: String = p
                        .last_line
                        .as_deref()
                        .unwrap_or("")
                        .chars()
                        .take(100)
                        .collect();
                    eprintln!("  [{name}] {}s {line}", p.elapsed.as_secs());
                }
            });
            match res {
                // QEMU itself crashed (under TCG it once failed its own assertion,
                // physmem.c's iotlb_to_section, 1 s into a guest's boot) before the
                // guest said anything of this boot: nothing of the deployment ran, so
                // it is powered on again, once, and said so.
                Err(WaitError::Exited { status, log_tail })
                    if status.starts_with("signal")
                        && self.vm.latest_status().is_none()
                        && !powered_on_again =>
                {
                    eprintln!(
                        "[{name}] QEMU crashed ({status}) before the guest reported \
                         anything: {log_tail}; powering on again, once"
                    );
                    self.vm.power_cut().unwrap();
                    powered_on_again = true;
                }
                res => break res,
            }
        };
        match res {
            Ok(s) => {
                self.pin_host_key();
                s
            }
            Err(e) => {
                let lines = self.vm.failure_lines(40).join("\n");
                let log = self
                    .ssh
                    .run("sudo tail -n 80 /var/log/cloud-init-output.log");
                let tail: Vec<String> = self.vm.serial_lines().into_iter().rev().take(60).collect();
                panic!(
                    "[{}] waiting for {what}: {e}\nlast status: {:?}\nfailure lines:\n{lines}\nserial tail:\n{}\n\
                     cloud-init-output.log (over SSH):\n{}\nkept: {}",
                    self.name,
                    self.vm.latest_status(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                    String::from_utf8_lossy(&log.stdout),
                    self.dir.display()
                );
            }
        }
    }

    /// First boot finished ready, and the certificate issued (reports are searched in
    /// order: the certificate can arrive before cloud-init ends).
    pub fn wait_ready_with_certificate(&mut self) -> Status {
        let finished = self.wait("first boot to finish", Duration::from_secs(1800), &|s| {
            s.is_finished()
        });
        assert!(
            finished.is_ready(),
            "[{}] first boot did not end ready: {finished:?}\n{}",
            self.name,
            self.vm.failure_lines(40).join("\n")
        );
        self.wait("the certificate", Duration::from_secs(900), &|s| {
            s.is_ready() && s.certificate.as_deref() == Some("ok")
        })
    }

    /// SSH authenticates the guest from here on: its host keys, as its console reported.
    fn pin_host_key(&mut self) {
        if let Ok(Some(path)) = self.vm.write_known_hosts() {
            self.ssh.known_hosts = Some(path);
        }
    }

    /// Pebble's issuing root (new at every Pebble start), from inside the guest: UFW
    /// keeps its management port closed from outside, as it should.
    pub fn pebble_root(&self) -> PathBuf {
        let pem = self.ssh.ok("curl -sSk https://localhost:15000/roots/0");
        assert!(pem.contains("BEGIN CERTIFICATE"), "no Pebble root: {pem}");
        let path = self.dir.join("pebble-root.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// curl against the forwarded port, with the domain resolved to it (as DNS would).
    pub fn curl(&self, scheme: &str, path: &str, extra: &[&str]) -> Output {
        let port = if scheme == "https" {
            self.vm.info().https_port
        } else {
            self.vm.info().http_port
        };
        let mut cmd = Command::new("curl");
        let domain = &self.domain;
        cmd.args([
            "-sS",
            "--max-time",
            "60",
            "--resolve",
            &format!("{domain}:{port}:127.0.0.1"),
        ]);
        cmd.args(extra);
        cmd.arg(format!("{scheme}://{domain}:{port}{path}"));
        cmd.output().unwrap()
    }

    pub fn https_json(&self, root: &Path, path: &str, extra: &[&str]) -> serde_json::Value {
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

    /// `imgforge verify` against the VM, the host key pinned from the console.
    pub fn verify(&self, root: &Path) -> imgforge::verify::Report {
        let (target, known_hosts) =
            Target::from_boot_json(&self.vm.run_dir().join("boot.json")).unwrap();
        // verify makes a few SSH connections of its own (login, password, root).
        self.ssh.wait_window();
        let mut opts = VerifyOptions::new(&self.domain, "deploy");
        opts.identity = Some(self.key.clone());
        opts.ca_bundle = Some(root.to_path_buf());
        opts.known_hosts = known_hosts;
        let report = imgforge::verify::verify(&target, &opts).unwrap();
        self.ssh.pace(4);
        eprint!("{}", report.to_text());
        report
    }
}

pub fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0}s", d.as_secs_f64()))
}

/// The classifier's answer for the test photo of a cat, over HTTPS with `root` as CA.
pub fn predict_cat(d: &Deployment, root: &Path) -> serde_json::Value {
    let photo = format!("{ROOT}/images/classifier/dist/testdata/chelsea.png");
    let form = format!("file=@{photo};type=image/png");
    d.https_json(root, "/predict", &["-F", &form])
}

/// The top-1 label of a prediction.
pub fn top1(prediction: &serde_json::Value) -> String {
    let first = &prediction["predictions"][0];
    first["label"]
        .as_str()
        .unwrap_or_else(|| panic!("no top-1 label in {prediction}"))
        .to_owned()
}
