//! The seed disk checked with the tools that read it for real: dosfstools' fsck,
//! blkid, file and mtools for FAT; xorriso/isoinfo-free checks through blkid for ISO.

use std::fs;
use std::path::Path;
use std::process::Command;

use imgforge::seed::{write_seed, SeedFile, SeedFormat};

use crate::common::{imgforge, pseudo_random, sha256_file as sha256};

fn run(cmd: &mut Command) -> (bool, String, Vec<u8>) {
    let out = cmd.output().expect("running a checker tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.stdout,
    )
}

/// A pseudo-random multi-MiB payload: repeating patterns would hide offset bugs.
fn payload(len: usize) -> Vec<u8> {
    pseudo_random(len, 0)
}

fn sample(dir: &Path) -> Vec<SeedFile> {
    let bundle = dir.join("bundle.oci.tar");
    fs::write(&bundle, payload(6 * 1024 * 1024 + 12345)).unwrap();
    vec![
        SeedFile::bytes("user-data", "#cloud-config\nhostname: api\n"),
        SeedFile::bytes(
            "meta-data",
            "instance-id: iid-imgforge\nlocal-hostname: api\n",
        ),
        SeedFile::bytes("network-config", "version: 2\nethernets: {}\n"),
        SeedFile::path("bundle.oci.tar", &bundle),
    ]
}

fn mcopy(img: &Path, name: &str) -> Vec<u8> {
    let (ok, err, out) = run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-n", "-i"])
        .arg(img)
        .arg(format!("::{name}"))
        .arg("-"));
    assert!(ok, "mcopy {name}: {err}");
    out
}

#[test]
fn vfat_seed_passes_fsck_and_reads_back_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let files = sample(dir.path());
    let img = dir.path().join("seed.img");
    write_seed(&img, &files, SeedFormat::Vfat).unwrap();

    let (ok, err, out) = run(Command::new("fsck.vfat").arg("-n").arg(&img));
    assert!(ok, "fsck.vfat -n: {err}{}", String::from_utf8_lossy(&out));

    let (ok, err, out) = run(Command::new("blkid").args(["-p", "-o", "export"]).arg(&img));
    let blkid = String::from_utf8_lossy(&out);
    assert!(ok, "blkid: {err}");
    assert!(blkid.contains("LABEL=CIDATA"), "{blkid}");
    assert!(blkid.contains("TYPE=vfat"), "{blkid}");

    let (_, _, out) = run(Command::new("file").arg("-s").arg(&img));
    let file = String::from_utf8_lossy(&out);
    assert!(file.contains("CIDATA"), "{file}");
    assert!(file.contains("FAT (16 bit)"), "{file}");

    let (ok, err, out) = run(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(&img)
        .arg("::"));
    assert!(ok, "mdir: {err}");
    let listing = String::from_utf8_lossy(&out);
    for f in &files {
        assert!(listing.contains(&f.name), "{} missing in {listing}", f.name);
        let expected = match &f.source {
            imgforge::seed::SeedSource::Bytes(b) => b.clone(),
            imgforge::seed::SeedSource::Path(p) => fs::read(p).unwrap(),
        };
        let got = mcopy(&img, &f.name);
        assert_eq!(got.len(), expected.len(), "{}", f.name);
        assert!(got == expected, "{} differs after read-back", f.name);
    }
}

#[test]
fn same_inputs_give_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let files = sample(dir.path());
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    write_seed(&a, &files, SeedFormat::Vfat).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write_seed(&b, &files, SeedFormat::Vfat).unwrap();
    assert_eq!(sha256(&a), sha256(&b));

    // And different inputs give different bytes: the digest is not a constant.
    let mut changed = files.clone();
    changed[0] = SeedFile::bytes("user-data", "#cloud-config\nhostname: other\n");
    let c = dir.path().join("c.img");
    write_seed(&c, &changed, SeedFormat::Vfat).unwrap();
    assert_ne!(sha256(&a), sha256(&c));
}

#[test]
fn overwrites_atomically_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("seed.img");
    fs::write(&img, b"old").unwrap();
    write_seed(
        &img,
        &[
            SeedFile::bytes("user-data", "x"),
            SeedFile::bytes("meta-data", ""),
        ],
        SeedFormat::Vfat,
    )
    .unwrap();
    assert_eq!(
        fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(mcopy(&img, "user-data"), b"x");
    assert_eq!(mcopy(&img, "meta-data"), b"");
    // No temporary file is left next to the output.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn missing_bundle_is_a_usage_error_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("seed.img");
    let err = write_seed(
        &img,
        &[SeedFile::path(
            "bundle.oci.tar",
            dir.path().join("nope.tar"),
        )],
        SeedFormat::Vfat,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("nope.tar"), "{err:#}");
    assert!(!img.exists());
    let err = write_seed(
        &img,
        &[SeedFile::bytes("a", ""), SeedFile::bytes("A", "")],
        SeedFormat::Vfat,
    )
    .unwrap_err();
    assert_eq!(imgforge::exit::code_for(&err), imgforge::exit::USAGE);
}

#[test]
fn a_large_bundle_moves_to_fat32_and_still_checks() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.tar");
    // Sparse: 600 MiB of zeros costs no disk, yet forces FAT32.
    let f = fs::File::create(&big).unwrap();
    f.set_len(600 * 1024 * 1024).unwrap();
    drop(f);
    let img = dir.path().join("seed.img");
    write_seed(
        &img,
        &[
            SeedFile::bytes("meta-data", ""),
            SeedFile::path("bundle.oci.tar", &big),
        ],
        SeedFormat::Vfat,
    )
    .unwrap();
    let (ok, err, out) = run(Command::new("fsck.vfat").arg("-n").arg(&img));
    assert!(ok, "fsck.vfat -n: {err}{}", String::from_utf8_lossy(&out));
    let (_, _, out) = run(Command::new("file").arg("-s").arg(&img));
    let file = String::from_utf8_lossy(&out);
    assert!(file.contains("FAT (32 bit)"), "{file}");
    let (ok, _, out) = run(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i"])
        .arg(&img)
        .arg("::"));
    assert!(ok);
    assert!(
        String::from_utf8_lossy(&out).contains("629 145 600"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn iso9660_seed_is_labelled_cidata_and_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let files = sample(dir.path());
    let a = dir.path().join("a.iso");
    let b = dir.path().join("b.iso");
    write_seed(&a, &files, SeedFormat::Iso9660).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Rewriting the bundle with the same bytes changes its mtime, not the seed.
    let bundle = dir.path().join("bundle.oci.tar");
    let content = fs::read(&bundle).unwrap();
    fs::write(&bundle, content).unwrap();
    write_seed(&b, &files, SeedFormat::Iso9660).unwrap();
    assert_eq!(sha256(&a), sha256(&b));
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    let (ok, err, out) = run(Command::new("blkid").args(["-p", "-o", "export"]).arg(&a));
    let blkid = String::from_utf8_lossy(&out);
    assert!(ok, "blkid: {err}");
    assert!(blkid.contains("LABEL=cidata"), "{blkid}");
    assert!(blkid.contains("TYPE=iso9660"), "{blkid}");

    // Read each file back through xorriso's own extractor.
    for f in &files {
        let dst = dir.path().join(format!("x-{}", f.name));
        let (ok, err, _) = run(Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(&a)
            .args(["-extract", &format!("/{}", f.name)])
            .arg(&dst));
        assert!(ok, "extracting {}: {err}", f.name);
        let expected = match &f.source {
            imgforge::seed::SeedSource::Bytes(b) => b.clone(),
            imgforge::seed::SeedSource::Path(p) => fs::read(p).unwrap(),
        };
        assert!(fs::read(&dst).unwrap() == expected, "{} differs", f.name);
    }
}

/// `seed --host-key` says what `render --host-key` says: the known_hosts line, and that
/// the private key travels in the user-data.
#[test]
fn seed_with_a_host_key_prints_its_known_hosts_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let out = imgforge(&["keygen", "-o", key.to_str().unwrap()]);
    assert!(out.status.success());
    let seed = dir.path().join("seed.img");
    let out = imgforge(&[
        "seed",
        "--domain",
        "api.example.com",
        "--email",
        "ops@example.com",
        "--ssh-key",
        &format!("{}.pub", key.display()),
        "--image",
        "ghcr.io/acme/app:1",
        "--host-key",
        "-o",
        seed.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("metadata service"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("api.example.com ssh-ed25519 ")),
        "{err}"
    );
}
