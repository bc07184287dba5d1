//! The QEMU runner (`imgforge::qemu::Vm`) on the smallest user-data: an overlay over
//! the guest image, boot.json, status reports per boot, a reset, a clean stop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imgforge::qemu::{BootInfo, State, Vm, VmConfig};

use crate::common::*;

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

/// Retries while sshd comes up; the status line can precede its first accepted login.
fn ssh_retry(key: &Path, port: u16, command: &str) -> String {
    let ssh = Ssh::new(key, port, "deploy");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = ssh.command().arg(command).output().unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "ssh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(3));
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
    let guest = Guest::get(work.path());
    let disk = guest.file("disk.qcow2");
    let base_before = sha256_file(&disk);

    let key = work.path().join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).expect("pubkey");
    let seed = minimal_seed(work.path(), &pubkey);

    let run_dir = work.path().join("run");
    let mut config: VmConfig = guest.vm_config(None, Some(&seed), &run_dir, "");
    config.forwards = vec![15000];
    let mut vm = Vm::start(&config).expect("start VM");

    // boot.json is the protocol's: what tests and `imgforge verify` read.
    let info = BootInfo::read(&run_dir.join("boot.json")).expect("boot.json");
    assert_eq!(&info, vm.info());
    assert_eq!(info.host, "127.0.0.1");
    for guest in [22, 80, 443, 8000, 8001, 15000] {
        assert!(
            info.host_port(guest).is_some(),
            "guest port {guest} not forwarded"
        );
    }
    assert_eq!(Some(info.ssh_port), info.host_port(22));
    let overlay_info = run(Command::new("qemu-img")
        .args(["info", "--output", "json", "-U"])
        .arg(&info.overlay));
    let overlay_info: serde_json::Value =
        serde_json::from_slice(&overlay_info.stdout).expect("json");
    assert_eq!(overlay_info["format"], "qcow2");
    assert_eq!(
        overlay_info["backing-filename"].as_str().map(PathBuf::from),
        Some(std::fs::canonicalize(&disk).expect("canonical base"))
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
    assert_eq!(sha256_file(&disk), base_before, "base image was modified");
}
