//! Helpers both test binaries share: the imgforge binary, commands that must succeed,
//! hashes, the guest test image, and SSH into a booted guest.
#![allow(dead_code)] // each binary uses its own subset

pub mod apps;
pub mod sshd;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const MIB: u64 = 1024 * 1024;

/// The imgforge binary with `args`, its output captured; SOURCE_DATE_EPOCH unset.
pub fn imgforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgforge"))
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("running imgforge")
}

/// The output of a command that must have succeeded.
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`, which must succeed.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn sha256_file(path: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = fs::File::open(path).expect("open for hashing");
    std::io::copy(&mut f, &mut h).expect("hash");
    hex::encode(h.finalize())
}

/// Incompressible bytes, the same for the same seed (xorshift).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The guest test image, built (or taken from the cache) by tests/guest/build-image.sh.
/// `IMGFORGE_GUEST_SUITE` picks the Debian release (bookworm by default).
#[derive(Clone)]
pub struct Guest {
    pub dir: PathBuf,
}

impl Guest {
    pub fn get(scratch: &Path) -> Guest {
        Guest::variant("", scratch)
    }

    /// `variant` is passed to build-image.sh as the third argument ("" for the default).
    pub fn variant(variant: &str, scratch: &Path) -> Guest {
        let suite = std::env::var("IMGFORGE_GUEST_SUITE").unwrap_or_else(|_| "bookworm".into());
        Guest::of(&suite, variant, scratch)
    }

    /// The guest of Debian release `suite` (bookworm, trixie).
    pub fn of(suite: &str, variant: &str, scratch: &Path) -> Guest {
        let started = Instant::now();
        let mut cmd = Command::new("bash");
        cmd.arg(format!("{ROOT}/tests/guest/build-image.sh"))
            .arg(suite)
            .arg(scratch.join(format!("guest{variant}")));
        if !variant.is_empty() {
            cmd.arg(variant);
        }
        let out = run(&mut cmd);
        let dir = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_owned();
        eprintln!(
            "guest image {dir} ready in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        Guest {
            dir: PathBuf::from(dir),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A QEMU configuration booting `disk` (default: the guest's own) with the guest's
    /// kernel, and `extra_append` on the kernel command line.
    pub fn vm_config(
        &self,
        disk: Option<&Path>,
        seed: Option<&Path>,
        run_dir: &Path,
        extra_append: &str,
    ) -> imgforge::qemu::VmConfig {
        let disk = disk.map_or_else(|| self.file("disk.qcow2"), Path::to_path_buf);
        let mut cfg = imgforge::qemu::VmConfig::new(disk, run_dir);
        cfg.seed = seed.map(Path::to_path_buf);
        cfg.kernel = Some(self.file("vmlinuz"));
        cfg.initrd = Some(self.file("initrd.img"));
        let cmdline = fs::read_to_string(self.file("cmdline")).unwrap();
        cfg.append = Some(format!("{} {extra_append}", cmdline.trim()));
        cfg
    }
}

/// The classifier packed from images/classifier (needs images/classifier/build.sh).
pub fn classifier_bundle(dir: &Path) -> PathBuf {
    let bin = Path::new(ROOT).join("images/classifier/dist/classifier");
    assert!(
        bin.exists(),
        "{} is missing: run images/classifier/build.sh",
        bin.display()
    );
    let out = dir.join("classifier.oci.tar");
    run(Command::new(env!("CARGO_BIN_EXE_imgforge"))
        .args(["pack", "images/classifier", "-o"])
        .arg(&out)
        .current_dir(ROOT));
    out
}

/// UFW's rate-limit window for SSH, with a margin.
pub const SSH_WINDOW: Duration = Duration::from_secs(32);

/// SSH into a guest as `user`. UFW's `limit 22/tcp` refuses a sixth connection from
/// one address within 30 s (and through QEMU every connection comes from the same
/// address), so connections are spaced to stay under it, as a person's would be.
pub struct Ssh {
    pub key: PathBuf,
    pub port: u16,
    pub user: String,
    /// Pins the host key when set; otherwise any key is accepted.
    pub known_hosts: Option<PathBuf>,
    times: std::cell::RefCell<std::collections::VecDeque<Instant>>,
}

impl Ssh {
    pub fn new(key: &Path, port: u16, user: &str) -> Ssh {
        Ssh {
            key: key.to_path_buf(),
            port,
            user: user.to_owned(),
            known_hosts: None,
            times: Default::default(),
        }
    }

    /// Waits until a new connection would stay under UFW's limit, and counts it.
    pub fn pace(&self, connections: usize) {
        let mut times = self.times.borrow_mut();
        for _ in 0..connections {
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
    }

    /// Counts the last `connections` paced ones as made now: a command that made them
    /// over a while (seconds apart under emulation) may have made its last one just now.
    pub fn made_until_now(&self, connections: usize) {
        let mut times = self.times.borrow_mut();
        let n = times.len();
        for t in times.iter_mut().skip(n.saturating_sub(connections)) {
            *t = Instant::now();
        }
    }

    /// Forgets the window after a long enough pause (another tool made connections).
    pub fn wait_window(&self) {
        std::thread::sleep(SSH_WINDOW);
        self.times.borrow_mut().clear();
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"]);
        match &self.known_hosts {
            Some(path) => {
                cmd.args(["-o", "StrictHostKeyChecking=yes", "-o"])
                    .arg(format!("UserKnownHostsFile={}", path.display()));
            }
            None => {
                cmd.args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ]);
            }
        }
        cmd.arg(format!("{}@127.0.0.1", self.user));
        cmd
    }

    /// One SSH command, paced.
    pub fn run(&self, command: &str) -> Output {
        self.pace(1);
        self.command().arg(command).output().unwrap()
    }

    /// One SSH command with `input` on its stdin (a secret stays out of every command
    /// line, which sudo and the shell would log).
    pub fn run_with_input(&self, command: &str, input: &str) -> Output {
        use std::io::Write;
        self.pace(1);
        let mut child = self
            .command()
            .arg(command)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The command may end before it read it all (it refused the request).
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
        child.wait_with_output().unwrap()
    }

    /// [`Ssh::run_with_input`], which must succeed; its stdout.
    pub fn ok_with_input(&self, command: &str, input: &str) -> String {
        let out = self.run_with_input(command, input);
        assert!(
            out.status.success(),
            "ssh {command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Where on the VM a secret (given on stdin, never on a command line) appears: the
    /// files under the logs and imgforge's state that hold it, then how many journal
    /// entries do.
    pub fn leaks(&self, secret: &str) -> (Vec<String>, usize) {
        let out = self.ok_with_input(
            "umask 077; p=$(mktemp); cat > \"$p\"; \
             sudo grep -rlaFf \"$p\" /var/log /var/lib/imgforge /run/log 2>/dev/null; \
             echo @@; sudo journalctl --no-pager -o export | grep -caFf \"$p\"; rm -f \"$p\"",
            &format!("{secret}\n"),
        );
        let (files, count) = out.split_once("@@\n").unwrap_or((&out, "0"));
        (
            files.lines().map(str::to_owned).collect(),
            count.trim().parse().unwrap_or(usize::MAX),
        )
    }

    /// One SSH command that must succeed; its stdout.
    pub fn ok(&self, command: &str) -> String {
        let out = self.run(command);
        assert!(
            out.status.success(),
            "ssh {command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
