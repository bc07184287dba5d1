//! `imgforge deploy`, `rollback` and `status` against what is not a good deployment:
//! each refused with a clear message and exit 2 before anything changes. The deploys
//! themselves run against a booted VM (tests/boot/deploy.rs).

use std::process::Output;

use crate::common::sshd::{closed_port, current_user, keygen, sshd};
use crate::common::*;

fn deploy(args: &[&str]) -> Output {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    imgforge(&all)
}

fn refused(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "expected exit 2: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_env_value_with_a_line_break_is_refused_before_connecting() {
    // Nothing listens on the port: the refusal comes before any connection.
    let port = closed_port().to_string();
    let out = deploy(&[
        "--host",
        "127.0.0.1",
        "--ssh-port",
        &port,
        "--image",
        "example/app:2",
        "--env",
        "TOKEN=a\nb",
    ]);
    refused(&out, "TOKEN");
    let out = deploy(&[
        "--host",
        "127.0.0.1",
        "--ssh-port",
        &port,
        "--image",
        "Bad Name",
    ]);
    refused(&out, "--image");
    let out = deploy(&["--host=-oProxyCommand=x", "--image", "example/app:2"]);
    refused(&out, "not a host name");
}

#[test]
fn an_unreachable_host_is_named() {
    let port = closed_port().to_string();
    let out = deploy(&[
        "--host",
        "127.0.0.1",
        "--ssh-port",
        &port,
        "--image",
        "example/app:2",
    ]);
    refused(&out, &format!("cannot reach {}@127.0.0.1:{port}", "deploy"));
    let out = imgforge(&["status", "--host", "127.0.0.1", "--ssh-port", &port]);
    refused(&out, "cannot reach");
}

#[test]
fn a_host_key_other_than_the_pinned_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let client_pub = keygen(&dir.path().join("id_ed25519"));
    std::fs::write(dir.path().join("authorized_keys"), client_pub).unwrap();
    let server = sshd(dir.path(), "real", "");
    // known_hosts pins another key for this address.
    let other = keygen(&dir.path().join("other_host"));
    let known = dir.path().join("known_hosts");
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}", server.port, other.trim()),
    )
    .unwrap();
    let port = server.port.to_string();
    let user = current_user();
    let identity = dir.path().join("id_ed25519");
    let common = [
        "--host",
        "127.0.0.1",
        "--ssh-port",
        port.as_str(),
        "--user",
        user.as_str(),
        "--identity",
        identity.to_str().unwrap(),
        "--known-hosts",
        known.to_str().unwrap(),
    ];
    let mut args = common.to_vec();
    args.extend(["--image", "example/app:2"]);
    refused(&deploy(&args), "is not the one");
    let mut args = vec!["rollback"];
    args.extend(common);
    refused(&imgforge(&args), "is not the one");
    // No key pinned at all: refused too, never accepted blindly.
    std::fs::write(&known, "").unwrap();
    let mut args = common.to_vec();
    args.extend(["--image", "example/app:2"]);
    refused(&deploy(&args), "pins no host key");
}

#[test]
fn env_on_the_command_line_is_accepted_with_a_warning_that_names_env_file() {
    let port = closed_port().to_string();
    let out = deploy(&[
        "--host",
        "127.0.0.1",
        "--ssh-port",
        &port,
        "--image",
        "example/app:2",
        "--env",
        "TOKEN=s3cret",
    ]);
    // Refused for the unreachable host only after the warning.
    refused(&out, "cannot reach");
    let err = stderr(&out);
    assert!(
        err.contains("warning: --env") && err.contains("--env-file"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "the value was echoed: {err}");
}

#[test]
fn attach_takes_no_deploy_of_its_own() {
    let out = deploy(&["--host", "h", "--attach", "--image", "example/app:2"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = deploy(&["--host", "h", "--attach", "--env", "A=1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn cluster_token_refuses_a_bad_host_and_an_existing_file_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("swarm.token");
    let out_arg = out_file.to_str().unwrap();
    let out = imgforge(&["cluster", "token", "--host=-oProxyCommand=x", "-o", out_arg]);
    refused(&out, "not a host name");
    assert!(!out_file.exists());
    std::fs::write(&out_file, "kept\n").unwrap();
    let port = closed_port().to_string();
    let token = |extra: &[&str]| {
        let mut args = vec![
            "cluster",
            "token",
            "--host",
            "127.0.0.1",
            "--ssh-port",
            &port,
        ];
        args.extend_from_slice(&["-o", out_arg]);
        args.extend_from_slice(extra);
        imgforge(&args)
    };
    refused(&token(&[]), "--force");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "kept\n");
    let out = token(&["--force"]);
    refused(&out, "cannot reach");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "kept\n");
}
