//! The QEMU runner (`imgforge boot`, `imgforge::qemu::Vm`).
//!
//! Fast tests check usage errors and the overlay. The boot tests are `#[ignore]`d because
//! they build the guest image (cached, ~7 min cold) and boot it under TCG (minutes):
//!   cargo test --test boot_runner -- --ignored --nocapture
//! They need root, mmdebstrap, qemu-system-x86, qemu-utils, e2fsprogs, fdisk, openssl,
//! dosfstools, mtools, openssh-client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use assert_cmd::Command as BinCommand;
use imgforge::qemu::{disk, BootInfo, State, Vm, VmConfig};
use sha2::{Digest, Sha256};

fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).expect("open for hashing");
    std::io::copy(&mut file, &mut hasher).expect("hash");
    hex::encode(hasher.finalize())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn boot_rejects_a_missing_disk_as_bad_usage() {
    let dir = tempfile::tempdir().expect("tempdir");
    BinCommand::cargo_bin("imgforge")
        .expect("binary")
        .args(["boot", "--disk", "/nonexistent/disk.qcow2", "--run-dir"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "disk /nonexistent/disk.qcow2 does not exist",
        ));
}

#[test]
fn boot_rejects_append_without_kernel() {
    BinCommand::cargo_bin("imgforge")
        .expect("binary")
        .args(["boot", "--disk", "d.qcow2", "--append", "console=ttyS0"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--kernel"));
}

#[test]
fn overlay_takes_the_writes_and_the_base_stays_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    for format in ["raw", "qcow2"] {
        let base = dir.path().join(format!("base.{format}"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", format])
            .arg(&base)
            .arg("4M"));
        run(Command::new("qemu-io")
            .args(["-f", format, "-c", "write -P 0x11 0 64k"])
            .arg(&base));
        assert_eq!(disk::detect_format(&base).expect("detect"), format);
        let before = sha256_file(&base);

        let overlay = dir.path().join(format!("overlay-{format}.qcow2"));
        disk::create_overlay(&base, format, &overlay).expect("overlay");
        run(Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0x22 0 64k"])
            .arg(&overlay));

        assert_eq!(sha256_file(&base), before, "{format} base was written");
        let read_overlay = run(Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "read -P 0x22 0 64k"])
            .arg(&overlay));
        assert!(
            !read_overlay.contains("Pattern verification failed"),
            "{read_overlay}"
        );
        let read_base = run(Command::new("qemu-io")
            .args(["-f", format, "-c", "read -P 0x11 0 64k"])
            .arg(&base));
        assert!(
            !read_base.contains("Pattern verification failed"),
            "{read_base}"
        );
    }
}

/// The guest image, built by tests/guest/build-image.sh or taken from its cache.
struct GuestImage {
    disk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

fn guest_image(out: &Path) -> GuestImage {
    let suite = std::env::var("IMGFORGE_TEST_SUITE").unwrap_or_else(|_| "bookworm".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/build-image.sh");
    let started = Instant::now();
    let cache = run(Command::new(&script).arg(&suite).arg(out));
    eprintln!(
        "guest image {} ready in {:.0}s",
        cache.trim(),
        started.elapsed().as_secs_f64()
    );
    let cmdline = std::fs::read_to_string(out.join("cmdline")).expect("cmdline");
    GuestImage {
        disk: out.join("disk.qcow2"),
        kernel: out.join("vmlinuz"),
        initrd: out.join("initrd.img"),
        cmdline: cmdline.trim().to_string(),
    }
}

/// A NoCloud seed made with the plain tools (mkfs.vfat + mcopy), carrying the minimal
/// fixture with `pubkey` authorized for the `deploy` user.
fn minimal_seed(dir: &Path, pubkey: &str) -> PathBuf {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/fixtures/minimal-user-data.yaml");
    let text = std::fs::read_to_string(&fixture).expect("fixture");
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("fixture yaml");
    doc["users"][0]["ssh_authorized_keys"] =
        serde_yaml_ng::Value::Sequence(vec![pubkey.trim().into()]);
    let user_data = format!(
        "#cloud-config\n{}",
        serde_yaml_ng::to_string(&doc).expect("yaml")
    );
    std::fs::write(dir.join("user-data"), user_data).expect("user-data");
    let instance = format!("imgforge-test-{}", std::process::id());
    std::fs::write(
        dir.join("meta-data"),
        format!("instance-id: {instance}\nlocal-hostname: imgforge-test\n"),
    )
    .expect("meta-data");
    let seed = dir.join("seed.img");
    run(Command::new("mkfs.vfat")
        .args(["-n", "CIDATA", "-C"])
        .arg(&seed)
        .arg("2048"));
    run(Command::new("mcopy")
        .arg("-i")
        .arg(&seed)
        .arg(dir.join("user-data"))
        .arg(dir.join("meta-data"))
        .arg("::"));
    seed
}

fn ssh(key: &Path, port: u16, command: &str) -> Result<String, String> {
    let out = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=20",
        ])
        .args(["-o", "LogLevel=ERROR", "deploy@127.0.0.1", command])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Retries while sshd comes up; the status line can precede its first accepted login.
fn ssh_retry(key: &Path, port: u16, command: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match ssh(key, port, command) {
            Ok(out) => return out,
            Err(e) if Instant::now() > deadline => panic!("ssh {command}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(3)),
        }
    }
}

fn print_progress(p: &imgforge::qemu::Progress) {
    if p.elapsed.as_secs() % 15 == 0 {
        eprintln!(
            "[{:>4}s] {}",
            p.elapsed.as_secs(),
            p.last_line.as_deref().unwrap_or("")
        );
    }
}

#[test]
#[ignore = "builds the guest image and boots it under TCG (minutes); run with --ignored"]
fn minimal_fixture_boots_through_an_overlay_reports_status_and_answers_ssh() {
    let work = tempfile::tempdir().expect("tempdir");
    let image = guest_image(&work.path().join("image"));
    let base_before = sha256_file(&image.disk);

    let key = work.path().join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).expect("pubkey");
    let seed = minimal_seed(work.path(), &pubkey);

    let run_dir = work.path().join("run");
    let mut config = VmConfig::new(&image.disk, &run_dir);
    config.seed = Some(seed);
    config.kernel = Some(image.kernel.clone());
    config.initrd = Some(image.initrd.clone());
    config.append = Some(image.cmdline.clone());
    config.forwards = vec![15000];
    let mut vm = Vm::start(&config).expect("start VM");

    // boot.json is the protocol's: what tests and `imgforge verify` read.
    let info = BootInfo::read(&run_dir.join("boot.json")).expect("boot.json");
    assert_eq!(&info, vm.info());
    assert_eq!(info.host, "127.0.0.1");
    for guest in [22, 80, 443, 8000, 15000] {
        assert!(
            info.host_port(guest).is_some(),
            "guest port {guest} not forwarded"
        );
    }
    assert_eq!(Some(info.ssh_port), info.host_port(22));
    let overlay_info = run(Command::new("qemu-img")
        .args(["info", "--output", "json", "-U"])
        .arg(&info.overlay));
    let overlay_info: serde_json::Value = serde_json::from_str(&overlay_info).expect("json");
    assert_eq!(overlay_info["format"], "qcow2");
    assert_eq!(
        overlay_info["backing-filename"].as_str().map(PathBuf::from),
        Some(std::fs::canonicalize(&image.disk).expect("canonical base"))
    );

    let status = vm
        .wait_finished(Duration::from_secs(900), &mut print_progress)
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.serial_lines().join("\n")));
    assert_eq!(status.state, State::Ready);
    assert_eq!(status.steps.get("fixture").map(String::as_str), Some("ok"));
    let first = vm.timings();
    eprintln!(
        "first boot: login prompt after {:?}, finished after {:?}",
        first.login_prompt, first.finished
    );
    assert!(first.finished.is_some());

    // The report is this VM's, this boot's: same boot_id as the kernel says over SSH.
    let boot_id = ssh_retry(&key, info.ssh_port, "cat /proc/sys/kernel/random/boot_id");
    assert_eq!(status.boot_id, boot_id);
    assert_eq!(ssh_retry(&key, info.ssh_port, "sudo -n id -u"), "0");
    // The image itself gives cloud-init nothing to complain about (it once failed the
    // locale module), and the services the deployment relies on are up.
    assert_eq!(
        ssh_retry(&key, info.ssh_port, "cloud-init status"),
        "status: done"
    );
    assert_eq!(
        ssh_retry(&key, info.ssh_port, "systemctl is-active docker pebble ssh"),
        "active\nactive\nactive"
    );

    // A reset starts a new boot: the wait ignores the first boot's report.
    vm.reset().expect("reset");
    let second = vm
        .wait_finished(Duration::from_secs(900), &mut print_progress)
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.serial_lines().join("\n")));
    assert_ne!(second.boot_id, status.boot_id);
    assert_eq!(
        second.boot_id,
        ssh_retry(&key, info.ssh_port, "cat /proc/sys/kernel/random/boot_id")
    );
    assert_eq!(vm.boot_count(), 2);
    let timings = vm.all_timings();
    eprintln!(
        "after reset: login prompt after {:?}, finished after {:?}",
        timings[1].login_prompt, timings[1].finished
    );

    let pid = vm.info().pid;
    vm.stop(Duration::from_secs(60)).expect("stop");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} still running after stop"
    );
    assert_eq!(
        sha256_file(&image.disk),
        base_before,
        "base image was modified"
    );
}
