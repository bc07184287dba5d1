//! What a careless or hostile user might pass: secrets where a config belongs, special
//! files, outputs over inputs, symlinks out of a spec directory, system directories as
//! the app's data. Each one exit 2 with the flag or field named, nothing echoed that
//! could be a secret, nothing written.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn run(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgforge"))
        .args(args)
        .env("HOME", home)
        .env_remove("SOURCE_DATE_EPOCH")
        .current_dir(home)
        .output()
        .unwrap()
}

fn refused(out: &Output, needle: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "expected exit 2: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn render_args<'a>(key: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "render",
        "--domain",
        "api.example.com",
        "--email",
        "ops@example.com",
        "--ssh-key",
        key,
        "--image",
        "ghcr.io/acme/app:1.0",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_secret_passed_as_a_config_or_spec_file_is_not_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let private = home.join("id_ed25519");
    let out = run(home, &["keygen", "-o", private.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key_text = fs::read_to_string(&private).unwrap();
    let body = key_text.lines().nth(1).unwrap().to_owned();
    let token = home.join("token");
    fs::write(&token, "SECRETTOKEN123\n").unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let env = home.join("app.env");
    fs::write(&env, "SECRET=hunter2\n").unwrap();
    for (file, secret) in [
        (&private, body.as_str()),
        (&token, "SECRETTOKEN123"),
        (&env, "hunter2"),
    ] {
        let out = run(home, &["render", "-c", file.to_str().unwrap()]);
        let err = refused(&out, "error");
        assert!(!err.contains(secret), "render -c echoed the secret: {err}");
        let out = run(home, &["pack", file.to_str().unwrap(), "-o", "x.oci.tar"]);
        let err = refused(&out, "error");
        assert!(!err.contains(secret), "pack echoed the secret: {err}");
    }
    assert!(!home.join("x.oci.tar").exists());
}

#[test]
fn outputs_are_never_devices_directories_or_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let key = format!("{FIXTURES}/admin_ed25519.pub");
    let out = run(home, &render_args(&key, &["-o", "/dev/full"]));
    refused(&out, "not a regular file");
    assert!(fs::metadata("/dev/full")
        .unwrap()
        .file_type()
        .is_char_device());
    let out = run(home, &render_args(&key, &["-o", home.to_str().unwrap()]));
    refused(&out, "is a directory");
    let out = run(home, &render_args(&key, &["-o", "no/such/dir/user-data"]));
    refused(&out, "does not exist");
    // The config file as the output: refused, the config untouched.
    let config = home.join("imgforge.yaml");
    fs::write(&config, "domain: api.example.com\nemail: ops@example.com\n").unwrap();
    let out = run(
        home,
        &render_args(&key, &["-c", "imgforge.yaml", "-o", "imgforge.yaml"]),
    );
    refused(&out, "an input of this command");
    assert_eq!(
        fs::read_to_string(&config).unwrap(),
        "domain: api.example.com\nemail: ops@example.com\n"
    );
    let out = run(home, &["init", "-o", home.to_str().unwrap()]);
    refused(&out, "is a directory");
    let out = run(home, &["keygen", "-o", "/dev/null"]);
    refused(&out, "not a regular file");
    let out = run(
        home,
        &["keygen", "-o", "k", "--comment", "evil\nssh-rsa AAAA x"],
    );
    refused(&out, "--comment");
    assert!(!home.join("k").exists());
}

#[test]
fn input_files_must_be_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    // /dev/zero never ends: refused at once, not read.
    let out = run(home, &render_args("/dev/zero", &[]));
    refused(&out, "not a regular file");
    let big = home.join("big.pub");
    fs::write(&big, vec![b'a'; 2 << 20]).unwrap();
    let out = run(home, &render_args(big.to_str().unwrap(), &[]));
    refused(&out, "bytes or more");
    let key = format!("{FIXTURES}/admin_ed25519.pub");
    let out = run(home, &render_args(&key, &["-c", "/dev/zero"]));
    refused(&out, "not a regular file");
    let out = run(home, &render_args(&key, &["--acme-ca-bundle", "/dev/zero"]));
    refused(&out, "not a regular file");
}

#[test]
fn the_data_directory_is_the_apps_own_and_the_admin_no_system_account() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let key = format!("{FIXTURES}/admin_ed25519.pub");
    for bad in [
        "/etc",
        "/var",
        "/var/lib",
        "/var/lib/docker/volumes/x",
        "/usr/local/data",
        "/home",
        "/home/deploy",
    ] {
        let out = run(home, &render_args(&key, &["--data-dir", bad]));
        refused(&out, "--data-dir");
    }
    for bad in ["/proc", "/dev/shm", "/sys/x"] {
        let out = run(home, &render_args(&key, &["--data-path", bad]));
        refused(&out, "--data-path");
    }
    let out = run(
        home,
        &render_args(
            &key,
            &[
                "--data-dir",
                "/srv/api/data",
                "--data-path",
                "/data",
                "-o",
                "ud",
            ],
        ),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for bad in ["plugdev", "users", "lxd", "systemd-timesync"] {
        let out = run(home, &render_args(&key, &["--user", bad]));
        refused(&out, "--user");
    }
}

#[test]
fn pack_takes_nothing_from_outside_the_spec_directory() {
    let dir = tempfile::tempdir().unwrap();
    let spec_dir = dir.path().join("app");
    fs::create_dir_all(spec_dir.join("dist")).unwrap();
    let outside = dir.path().join("outside-secret");
    fs::write(&outside, "not for the image").unwrap();
    std::os::unix::fs::symlink(&outside, spec_dir.join("dist/outlink")).unwrap();
    fs::write(
        spec_dir.join("image.yaml"),
        "name: acme/app:1\nuser: { name: app, uid: 1000, gid: 1000 }\nentrypoint: [/app/x]\nlayers:\n  - name: app\n    files:\n      - { src: dist/outlink, dest: /app/x }\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &["pack", spec_dir.to_str().unwrap(), "-o", "app.oci.tar"],
    );
    refused(&out, "outside the spec directory");
    assert!(!dir.path().join("app.oci.tar").exists());
    // The spec file as the output: refused, the spec untouched.
    let spec = spec_dir.join("image.yaml");
    let before = fs::read(&spec).unwrap();
    let out = run(
        dir.path(),
        &[
            "pack",
            spec_dir.to_str().unwrap(),
            "-o",
            spec.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(fs::read(&spec).unwrap(), before);
}

#[test]
fn a_file_that_is_not_a_bundle_is_exit_2_without_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let junk = home.join("junk.tar");
    fs::write(&junk, pseudo_random(4096, 7)).unwrap();
    let key = format!("{FIXTURES}/admin_ed25519.pub");
    for bundle in [
        junk.to_str().unwrap(),
        home.to_str().unwrap(),
        "missing.tar",
    ] {
        let out = run(
            home,
            &[
                "seed",
                "--domain",
                "api.example.com",
                "--email",
                "ops@example.com",
                "--ssh-key",
                &key,
                "--bundle",
                bundle,
                "-o",
                "seed.img",
            ],
        );
        let err = refused(&out, "bundle");
        assert!(
            err.chars().all(|c| c == '\n' || !c.is_control()) && !err.contains('\u{fffd}'),
            "raw bytes in the message: {err:?}"
        );
    }
    assert!(!home.join("seed.img").exists());
}

#[test]
fn flags_that_cannot_work_together_or_would_leak_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let key = format!("{FIXTURES}/admin_ed25519.pub");
    let out = run(
        home,
        &render_args(&key, &["--provider", "hetzner", "--base64"]),
    );
    refused(&out, "--base64");
    let out = run(
        home,
        &render_args(
            &key,
            &[
                "--bundle-url",
                "https://user:pass@files.example.com/b.tar",
                "--bundle-sha256",
                &"a".repeat(64),
            ],
        ),
    );
    refused(&out, "user name or password");
    // A byte order mark before the config's first key is not an error.
    fs::write(
        home.join("bom.yaml"),
        "\u{feff}domain: api.example.com\nemail: ops@example.com\n",
    )
    .unwrap();
    let out = run(
        home,
        &[
            "render",
            "-c",
            "bom.yaml",
            "--ssh-key",
            &key,
            "--image",
            "ghcr.io/acme/app:1.0",
            "-o",
            "ud",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A 100 KB value is shown by its start, not whole.
    let long = format!("A={}", "x".repeat(100_000));
    let out = run(
        home,
        &render_args(&key, &["--env", &long, "--health-path", "bad path"]),
    );
    let err = refused(&out, "--health-path");
    assert!(err.len() < 5_000, "{} bytes of error", err.len());
}
