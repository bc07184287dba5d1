//! `imgforge build`, run as a user would, its output read back with e2fsprogs.
//!
//! Fast tier: small GPT/MBR disks made here with sfdisk and `mkfs.ext4 -E offset=`;
//! the baked files are read with `debugfs 'disk.raw?offset=…'` and the filesystem
//! checked with `e2fsck -fn`. Needs qemu-utils, e2fsprogs and fdisk (sfdisk). The
//! baked image's boot is in the QEMU tier (tests/boot/baked.rs).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

const CFG: &str = "/etc/cloud/cloud.cfg.d/90-imgforge.cfg";
const BUNDLE: &str = "/var/lib/imgforge/bundle.oci.tar";

/// A partition of a test disk: size, filesystem label (None: left empty).
struct Part {
    mib: u64,
    ext4_label: Option<&'static str>,
}

/// A raw disk with `parts` (1 MiB aligned, GPT or MBR "dos"), each ext4 one made with
/// `mkfs.ext4 -E offset=`; the root one gets /etc/cloud/cloud.cfg.d like a cloud image.
/// Returns the disk and each partition's byte offset.
fn make_disk(dir: &Path, name: &str, table: &str, parts: &[Part]) -> (PathBuf, Vec<u64>) {
    let disk = dir.join(name);
    let total: u64 = parts.iter().map(|p| p.mib).sum::<u64>() + 2;
    fs::File::create(&disk)
        .unwrap()
        .set_len(total * MIB)
        .unwrap();
    let mut script = format!("label: {table}\n");
    let mut offsets = Vec::new();
    let mut start = MIB;
    for p in parts {
        script += &format!(
            "start={}, size={}, type=linux\n",
            start / 512,
            p.mib * MIB / 512
        );
        offsets.push(start);
        start += p.mib * MIB;
    }
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {script}");

    let content = dir.join(format!("{name}.root"));
    fs::create_dir_all(content.join("etc/cloud/cloud.cfg.d")).unwrap();
    fs::write(
        content.join("etc/cloud/cloud.cfg.d/05_logging.cfg"),
        "# from the base image\n",
    )
    .unwrap();
    for (p, off) in parts.iter().zip(&offsets) {
        if let Some(label) = p.ext4_label {
            run(Command::new("mkfs.ext4")
                .env("E2FSPROGS_FAKE_TIME", "1600000000")
                .args(["-q", "-F", "-L", label, "-d"])
                .arg(&content)
                .arg("-E")
                .arg(format!("offset={off}"))
                .arg(&disk)
                .arg(format!("{}k", p.mib * 1024)));
        }
    }
    (disk, offsets)
}

/// The usual test disk: GPT, a small unlabelled ext4 (like /boot), then the root.
fn cloud_disk(dir: &Path) -> (PathBuf, u64, u64) {
    let (disk, offs) = make_disk(
        dir,
        "base.raw",
        "gpt",
        &[
            Part {
                mib: 4,
                ext4_label: None,
            },
            Part {
                mib: 8,
                ext4_label: Some("BOOT"),
            },
            Part {
                mib: 40,
                ext4_label: Some("cloudimg-rootfs"),
            },
        ],
    );
    (disk, offs[1], offs[2])
}

/// A docker-archive bundle with `payload_len` pseudo-random bytes in it.
fn bundle(dir: &Path, name: &str, payload_len: usize) -> PathBuf {
    let path = dir.join(name);
    let mut builder = tar::Builder::new(fs::File::create(&path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        builder.append_data(&mut h, name, data).unwrap();
    };
    add(
        "manifest.json",
        br#"[{"Config":"config.json","RepoTags":["example/app:1"],"Layers":["layer.tar"]}]"#,
    );
    add("layer.tar", &pseudo_random(payload_len, 7));
    builder.finish().unwrap();
    path
}

fn key(dir: &Path) -> PathBuf {
    let key = dir.join("id_ed25519");
    if !key.exists() {
        ok(imgforge(&["keygen", "-o", key.to_str().unwrap()]));
    }
    key.with_extension("pub")
}

fn deploy_args(pubkey: &Path) -> Vec<String> {
    [
        "--domain",
        "api.imgforge.test",
        "--email",
        "ops@example.com",
        "--offline",
        "--docker-source",
        "distro",
        "--ssh-key",
        pubkey.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn build(base: &Path, out: &Path, extra: &[&str], pubkey: &Path) -> Output {
    let mut args: Vec<String> = vec!["build".into(), "--base".into(), base.display().to_string()];
    let mut deploy = deploy_args(pubkey);
    if let Some(i) = extra.iter().position(|a| *a == "--email") {
        let at = deploy.iter().position(|a| a == "--email").unwrap();
        deploy[at + 1] = extra[i + 1].to_string();
        args.extend(deploy);
        args.extend(
            extra[..i]
                .iter()
                .chain(&extra[i + 2..])
                .map(|s| s.to_string()),
        );
    } else {
        args.extend(deploy);
        args.extend(extra.iter().map(|s| s.to_string()));
    }
    args.extend(["-o".into(), out.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    imgforge(&args)
}

fn device(disk: &Path, offset: u64) -> String {
    format!("{}?offset={offset}", disk.display())
}

fn debugfs(disk: &Path, offset: u64, request: &str) -> Vec<u8> {
    run(Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(device(disk, offset)))
    .stdout
}

/// (mode, uid, gid, size) of an inode, from `debugfs stat`.
fn stat(disk: &Path, offset: u64, path: &str) -> (String, u64, u64, u64) {
    let text = String::from_utf8(debugfs(disk, offset, &format!("stat {path}"))).unwrap();
    let t: Vec<&str> = text.split_whitespace().collect();
    let after = |k: &str| {
        let i = t
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} in stat {path}: {text}"));
        t[i + 1].to_string()
    };
    (
        after("Mode:"),
        after("User:").parse().unwrap(),
        after("Group:").parse().unwrap(),
        after("Size:").parse().unwrap(),
    )
}

fn e2fsck_clean(disk: &Path, offset: u64) {
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(device(disk, offset))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cloud-config imgforge renders for these flags with the bundle at BUNDLE:
/// computed through the library, independently of the build path.
fn expected_cloud_config(pubkey: &Path, bundle: &Path) -> String {
    let info = imgforge::oci::bundle::inspect(bundle).unwrap();
    let mut flags = imgforge::input::Settings {
        domain: Some("api.imgforge.test".into()),
        email: Some("ops@example.com".into()),
        ..Default::default()
    };
    flags.admin.ssh_key_files = vec![pubkey.to_path_buf()];
    flags.offline = true;
    flags.docker_source = Some(imgforge::input::DockerSource::Distro);
    flags.app.image = Some(info.image.to_string());
    let bundle = imgforge::input::Bundle::File {
        sha256: info.sha256,
    };
    let (spec, _) = imgforge::input::load(&flags, None, Some(bundle), None).unwrap();
    let templates = imgforge::render::Templates::load(None).unwrap();
    imgforge::render::user_data(&spec, &templates).unwrap().text
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn bakes_config_and_bundle_into_the_labelled_root_of_a_qcow2_base() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, boot_off, root_off) = cloud_disk(dir.path());
    let base = dir.path().join("base.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&base));
    let base_sha = sha256_file(&base);
    let pubkey = key(dir.path());
    let bundle = bundle(dir.path(), "app.oci.tar", 5 * MIB as usize + 4321);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("deploy.raw");

    let res = ok(build(
        &base,
        &out,
        &["--bundle", bundle.to_str().unwrap()],
        &pubkey,
    ));
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("partition 3"), "{stderr}");

    assert_eq!(sha256_file(&base), base_sha, "the base was modified");
    assert_eq!(
        dir_entries(&out_dir),
        ["deploy.raw"],
        "work files left behind"
    );
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let info: serde_json::Value = serde_json::from_slice(
        &run(Command::new("qemu-img")
            .args(["info", "--output", "json"])
            .arg(&out))
        .stdout,
    )
    .unwrap();
    assert_eq!(info["format"], "raw");

    // The cloud-config is exactly what render gives for these inputs, bundle included.
    let cfg = String::from_utf8(debugfs(&out, root_off, &format!("cat {CFG}"))).unwrap();
    assert_eq!(cfg, expected_cloud_config(&pubkey, &bundle));
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&cfg).unwrap();
    let deploy_json = doc["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/imgforge/deploy.json")
        .expect("deploy.json in write_files");
    let deploy: serde_json::Value =
        serde_json::from_str(deploy_json["content"].as_str().unwrap()).unwrap();
    assert_eq!(deploy["bundle"]["kind"], "file");
    assert_eq!(deploy["bundle"]["sha256"], sha256_file(&bundle));
    assert_eq!(deploy["image"], "example/app:1");

    // The bundle reads back byte-exact; ownership and modes are root's.
    let dumped = dir.path().join("dumped.tar");
    debugfs(
        &out,
        root_off,
        &format!("dump {BUNDLE} {}", dumped.display()),
    );
    assert_eq!(sha256_file(&dumped), sha256_file(&bundle));
    assert_eq!(
        stat(&out, root_off, CFG),
        ("0600".into(), 0, 0, cfg.len() as u64)
    );
    assert_eq!(
        stat(&out, root_off, BUNDLE),
        ("0600".into(), 0, 0, fs::metadata(&bundle).unwrap().len())
    );
    assert_eq!(stat(&out, root_off, "/var/lib/imgforge").0, "0755");
    assert_eq!(stat(&out, root_off, "/var/lib").0, "0755");
    // What the base had is still there.
    assert_eq!(
        debugfs(&out, root_off, "cat /etc/cloud/cloud.cfg.d/05_logging.cfg"),
        b"# from the base image\n"
    );
    e2fsck_clean(&out, root_off);

    // The other ext4 partition was not touched.
    let boot_len = 8 * MIB as usize;
    let read = |p: &Path| {
        let bytes = fs::read(p).unwrap();
        bytes[boot_off as usize..boot_off as usize + boot_len].to_vec()
    };
    assert!(read(&raw) == read(&out), "the BOOT partition changed");
}

#[test]
fn same_inputs_give_the_same_image_and_other_inputs_another() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _, _) = cloud_disk(dir.path());
    let pubkey = key(dir.path());
    let bundle = bundle(dir.path(), "app.oci.tar", 300_000);
    let b = ["--bundle", bundle.to_str().unwrap()];
    let mut digests = Vec::new();
    for (i, format) in ["raw", "raw", "qcow2", "qcow2"].iter().enumerate() {
        let out = dir.path().join(format!("out{i}.{format}"));
        ok(build(
            &base,
            &out,
            &[b[0], b[1], "--format", format],
            &pubkey,
        ));
        digests.push(sha256_file(&out));
        // Whole seconds pass between builds: a timestamp leak would show.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(digests[0], digests[1], "raw output is not reproducible");
    assert_eq!(digests[2], digests[3], "qcow2 output is not reproducible");
    assert_ne!(digests[0], digests[2]);

    let other = dir.path().join("other.raw");
    ok(build(
        &base,
        &other,
        &[b[0], b[1], "--email", "other@example.com"],
        &pubkey,
    ));
    assert_ne!(sha256_file(&other), digests[0]);
}

#[test]
fn rebuilding_from_a_built_image_replaces_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _, root_off) = cloud_disk(dir.path());
    let pubkey = key(dir.path());
    let first = dir.path().join("first.raw");
    ok(build(&base, &first, &[], &pubkey));
    let second = dir.path().join("second.raw");
    ok(build(
        &first,
        &second,
        &["--email", "second@example.com"],
        &pubkey,
    ));
    let cfg = String::from_utf8(debugfs(&second, root_off, &format!("cat {CFG}"))).unwrap();
    assert!(cfg.contains("second@example.com"), "{cfg}");
    assert!(!cfg.contains("ops@example.com"));
    e2fsck_clean(&second, root_off);
}

#[test]
fn an_mbr_disk_without_the_label_uses_its_largest_ext4() {
    let dir = tempfile::tempdir().unwrap();
    let (base, offs) = make_disk(
        dir.path(),
        "mbr.raw",
        "dos",
        &[
            Part {
                mib: 6,
                ext4_label: Some("small"),
            },
            Part {
                mib: 30,
                ext4_label: Some("root"),
            },
        ],
    );
    let pubkey = key(dir.path());
    let out = dir.path().join("out.qcow2");
    ok(build(&base, &out, &[], &pubkey));
    // Read the qcow2 back through a raw conversion.
    let raw = dir.path().join("check.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&out)
        .arg(&raw));
    assert!(!debugfs(&raw, offs[1], &format!("cat {CFG}")).is_empty());
    let small = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {CFG}"))
        .arg(device(&raw, offs[0]))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&small.stderr).contains("not found"));
}

fn assert_usage_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn a_disk_without_ext4_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = make_disk(
        dir.path(),
        "empty.raw",
        "gpt",
        &[Part {
            mib: 8,
            ext4_label: None,
        }],
    );
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = build(&base, &out_dir.join("x.qcow2"), &[], &key(dir.path()));
    assert_usage_error(&out, "no ext4 root filesystem");
    assert!(
        dir_entries(&out_dir).is_empty(),
        "{:?}",
        dir_entries(&out_dir)
    );

    // Not a disk at all: zeros, no partition table.
    let zeros = dir.path().join("zeros.raw");
    fs::File::create(&zeros).unwrap().set_len(4 * MIB).unwrap();
    let out = build(&zeros, &out_dir.join("x.qcow2"), &[], &key(dir.path()));
    assert_usage_error(&out, "no ext4 root filesystem");
}

#[test]
fn a_bundle_too_big_for_the_filesystem_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = make_disk(
        dir.path(),
        "small.raw",
        "gpt",
        &[Part {
            mib: 12,
            ext4_label: Some("cloudimg-rootfs"),
        }],
    );
    let big = bundle(dir.path(), "big.oci.tar", 12 * MIB as usize);
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = build(
        &base,
        &out_dir.join("x.raw"),
        &["--bundle", big.to_str().unwrap()],
        &key(dir.path()),
    );
    assert_usage_error(&out, "available but the files need");
    assert!(dir_entries(&out_dir).is_empty());

    // The same filesystem takes a bundle that fits.
    let fits = bundle(dir.path(), "fits.oci.tar", 2 * MIB as usize);
    ok(build(
        &base,
        &out_dir.join("y.raw"),
        &["--bundle", fits.to_str().unwrap()],
        &key(dir.path()),
    ));
}

#[test]
fn unsupported_formats_missing_inputs_and_tools_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _, _) = cloud_disk(dir.path());
    let pubkey = key(dir.path());
    let out = dir.path().join("o.img");

    assert_usage_error(&build(&base, &out, &["--format", "vmdk"], &pubkey), "vmdk");

    let vmdk = dir.path().join("base.vmdk");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "vmdk"])
        .arg(&base)
        .arg(&vmdk));
    assert_usage_error(&build(&vmdk, &out, &[], &pubkey), "qcow2 or raw");

    assert_usage_error(
        &build(&dir.path().join("nope.qcow2"), &out, &[], &pubkey),
        "does not exist",
    );
    assert_usage_error(
        &build(&base, &dir.path().join("no/such/dir/o.raw"), &[], &pubkey),
        "no/such/dir does not exist",
    );
    let sha = sha256_file(&base);
    assert_usage_error(&build(&base, &base, &[], &pubkey), "never modified");
    assert_eq!(sha256_file(&base), sha);

    // No qemu-img on PATH: the message names the package.
    let empty = dir.path().join("empty-path");
    fs::create_dir(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_imgforge"))
        .args(["build", "--base"])
        .arg(&base)
        .args(deploy_args(&pubkey))
        .arg("-o")
        .arg(&out)
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_usage_error(&out, "qemu-utils");
}

/// A host key baked into an image would be every VM's: refused, nothing written.
/// `--provision` checks what it can before booting anything.
#[test]
fn host_keys_and_impossible_provisioning_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _, _) = cloud_disk(dir.path());
    let pubkey = key(dir.path());
    let out = dir.path().join("o.qcow2");
    assert_usage_error(
        &build(&base, &out, &["--host-key"], &pubkey),
        "share its host key",
    );
    assert!(!out.exists());
    // Provisioning needs packages online, a size at least the base's, and cloud-init.
    let online: Vec<String> = deploy_args(&pubkey)
        .into_iter()
        .filter(|a| a != "--offline")
        .collect();
    let provision = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "build".into(),
            "--base".into(),
            base.display().to_string(),
            "--provision".into(),
        ];
        args.extend(online.clone());
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["-o".into(), out.display().to_string()]);
        imgforge(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_usage_error(&provision(&["--size", "1M"]), "smaller than the base");
    assert_usage_error(&provision(&["--size", "lots"]), "not a size");
    assert_usage_error(&provision(&[]), "no cloud-init");
    // With cloud-init in the root, a bundle larger than the room left is refused too.
    let (_, _, root_off) = cloud_disk(dir.path());
    let dev = device(&base, root_off);
    for request in [
        "mkdir /usr",
        "mkdir /usr/bin",
        "write /etc/hostname /usr/bin/cloud-init",
    ] {
        run(Command::new("debugfs")
            .args(["-w", "-R", request])
            .arg(&dev));
    }
    let big = bundle(dir.path(), "big.oci.tar", 30 * MIB as usize);
    assert_usage_error(
        &provision(&["--size", "1100M", "--bundle", big.to_str().unwrap()]),
        "pass a larger --size",
    );
    assert_usage_error(&provision(&["--offline"]), "--offline");
    assert!(!out.exists());
    assert_eq!(
        dir_entries(dir.path())
            .iter()
            .filter(|n| n.starts_with(".imgforge"))
            .count(),
        0
    );
}

/// Rewrites a field of the primary GPT of `disk` (512-byte sectors) and makes both
/// checksums match again, as a hostile image would: `entry` 0-based, `at` the offset
/// in that entry.
fn patch_gpt_entry(disk: &Path, entry: usize, at: usize, value: u64) {
    let mut d = fs::read(disk).unwrap();
    let u32_at = |d: &[u8], i: usize| u32::from_le_bytes(d[i..i + 4].try_into().unwrap());
    let h = 512;
    let lba = u64::from_le_bytes(d[h + 72..h + 80].try_into().unwrap()) as usize;
    let (count, size) = (u32_at(&d, h + 80) as usize, u32_at(&d, h + 84) as usize);
    let e = lba * 512 + entry * size + at;
    d[e..e + 8].copy_from_slice(&value.to_le_bytes());
    let crc = crc32fast::hash(&d[lba * 512..lba * 512 + count * size]);
    d[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
    let header_size = u32_at(&d, h + 12) as usize;
    d[h + 16..h + 20].fill(0);
    let crc = crc32fast::hash(&d[h..h + header_size]);
    d[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
    fs::write(disk, d).unwrap();
}

/// Builds from a hostile base: exit 2 with `needle` in the message, and nothing in the
/// output directory, the work file included.
fn assert_refused(dir: &Path, base: &Path, needle: &str) {
    let out_dir = dir.join("out");
    fs::create_dir_all(&out_dir).unwrap();
    for format in ["raw", "qcow2"] {
        let out = build(
            base,
            &out_dir.join(format!("x.{format}")),
            &["--format", format],
            &key(dir),
        );
        assert_usage_error(&out, needle);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&base.display().to_string()), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            dir_entries(&out_dir).is_empty(),
            "{:?}",
            dir_entries(&out_dir)
        );
    }
}

#[test]
fn a_base_whose_partitions_leave_the_disk_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = || Part {
        mib: 8,
        ext4_label: Some("cloudimg-rootfs"),
    };

    // GPT: the root partition's last LBA (entry offset 40) past the disk's 10 MiB.
    let (gpt, _) = make_disk(dir.path(), "gpt.raw", "gpt", &[root()]);
    patch_gpt_entry(&gpt, 0, 40, 10 * MIB / 512 + 100);
    assert_refused(
        dir.path(),
        &gpt,
        "GPT partition 1 ends at sector 20580, beyond the disk's 20480 sectors",
    );
    // A last LBA before the first.
    let (gpt, _) = make_disk(dir.path(), "gpt2.raw", "gpt", &[root()]);
    patch_gpt_entry(&gpt, 0, 40, 100);
    assert_refused(dir.path(), &gpt, "before its first sector 2048");

    // MBR: the root partition's sector count (at 446 + 12) runs past the disk; its
    // filesystem is intact, so only the table's bound refuses it.
    let (mbr, _) = make_disk(dir.path(), "mbr.raw", "dos", &[root()]);
    let mut d = fs::read(&mbr).unwrap();
    d[446 + 12..446 + 16].copy_from_slice(&(1u32 << 30).to_le_bytes());
    fs::write(&mbr, d).unwrap();
    assert_refused(
        dir.path(),
        &mbr,
        "MBR partition 1 ends at sector 1073743871, beyond the disk's 20480 sectors",
    );
}

#[test]
fn a_root_filesystem_larger_than_its_partition_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (base, offs) = make_disk(
        dir.path(),
        "overlap.raw",
        "gpt",
        &[
            Part {
                mib: 8,
                ext4_label: None,
            },
            Part {
                mib: 8,
                ext4_label: Some("data"),
            },
        ],
    );
    // A root filesystem made 16 MiB in partition 1's 8 MiB: it spans partition 2, and
    // debugfs, which knows only its offset, would write wherever its blocks are.
    run(Command::new("mkfs.ext4")
        .env("E2FSPROGS_FAKE_TIME", "1600000000")
        .args(["-q", "-F", "-b", "1024", "-L", "cloudimg-rootfs", "-E"])
        .arg(format!("offset={}", offs[0]))
        .arg(&base)
        .arg("16384k"));
    assert_refused(
        dir.path(),
        &base,
        "partition 1: the ext4 filesystem is 16384 blocks of 1024 bytes (16777216 bytes), larger than the 8388608 bytes it lies in",
    );
}

#[test]
fn a_root_superblock_claiming_more_free_blocks_than_blocks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, offs) = make_disk(
        dir.path(),
        "free.raw",
        "gpt",
        &[Part {
            mib: 8,
            ext4_label: Some("cloudimg-rootfs"),
        }],
    );
    // dumpe2fs reports what the superblock says: 2^64 - 1 free blocks.
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg("ssv free_blocks_count 18446744073709551615")
        .arg(device(&base, offs[0])));
    assert_refused(
        dir.path(),
        &base,
        "the root filesystem's superblock is inconsistent (18446744073709551615 free blocks",
    );
}
