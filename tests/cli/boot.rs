//! The QEMU runner (`imgforge boot`, `imgforge::qemu::Vm`).
//!
//! Usage errors and the overlay, without booting; the boots are in tests/boot.

use std::process::Command;

use assert_cmd::Command as BinCommand;
use imgforge::qemu_img;

use crate::common::{run, sha256_file};

/// A command that must succeed; its stdout.
fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
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
        assert_eq!(qemu_img::info(&base).expect("info").format, format);
        let before = sha256_file(&base);

        let overlay = dir.path().join(format!("overlay-{format}.qcow2"));
        qemu_img::create_overlay(&base, format, &overlay, None).expect("overlay");
        run(Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0x22 0 64k"])
            .arg(&overlay));

        assert_eq!(sha256_file(&base), before, "{format} base was written");
        let read_overlay = stdout(
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", "read -P 0x22 0 64k"])
                .arg(&overlay),
        );
        assert!(
            !read_overlay.contains("Pattern verification failed"),
            "{read_overlay}"
        );
        let read_base = stdout(
            Command::new("qemu-io")
                .args(["-f", format, "-c", "read -P 0x11 0 64k"])
                .arg(&base),
        );
        assert!(
            !read_base.contains("Pattern verification failed"),
            "{read_base}"
        );
    }
}
