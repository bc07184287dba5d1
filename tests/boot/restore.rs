//! Backups that outlive the VM: a deployment backs up to a BorgBackup repository on this
//! host (OpenSSH's sshd on a loopback port, which the guest reaches through QEMU's user
//! network at 10.0.2.2, running `borg serve` restricted to the repository). The VM
//! writes history, backs up, and is destroyed; a new VM boots from the same image and
//! seed, `imgforge restore` brings the rows back while a stream of requests runs, and
//! none of them fails.

use std::path::Path;
use std::time::Instant;

use crate::common::sshd::{current_user, sshd};
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

#[test]
#[ignore = "boots two VMs under TCG (tens of minutes); run with --ignored"]
fn a_new_vm_restores_the_history_an_old_one_backed_up_off_the_vm() {
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
    let passphrase = host.path().join("passphrase");
    std::fs::write(&passphrase, "imgforge restore test passphrase\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let url = format!(
        "ssh://{}@10.0.2.2:{}{}",
        current_user(),
        server.port,
        repo.display()
    );
    let flags = [
        "--backup-repo",
        &url,
        "--backup-passphrase-file",
        passphrase.to_str().unwrap(),
        "--backup-ssh-key-file",
        vm_key.to_str().unwrap(),
        "--backup-known-hosts",
        known.to_str().unwrap(),
    ];

    // 1. The first VM: three predictions, a backup to the repository.
    let mut d = Deployment::seeded("restore", &flags, "");
    d.wait_ready_with_certificate();
    let root = d.pebble_root();
    for _ in 0..3 {
        predict_cat(&d, &root);
    }
    let backed_up = history_ids(&d, &root);
    assert_eq!(backed_up.len(), 3, "{backed_up:?}");
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
    let mut d = Deployment::boot(
        "restore-new",
        dir.join("new"),
        guest,
        key,
        None,
        Some(&dir.join("seed.img")),
        "",
    );
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
    eprintln!(
        "[restore] backup to the repository {backup_s:.1} s (VM side {} s); new VM ready \
         {ready_s:.0} s after power-on; restore {restore_s:.1} s; {served} requests during \
         it, 0 failed, slowest {slowest:.3} s",
        record["seconds"]
    );
    d.finish();
}
