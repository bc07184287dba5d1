//! What the deployed VM guarantees, checked with tools nobody here wrote: ssh-audit,
//! openssl s_client and curl from outside; ss, ufw, stat, grep, journalctl and
//! docker inspect inside.

use std::path::Path;
use std::process::Command;

use crate::deployment::{Deployment, DOMAIN};

/// The value of an app environment variable that must not leak into any log.
pub const SECRET: &str = "s3cr3t-7f1c9a0e5b2d4c6e";

/// The ssh-audit programs to run, with their options: Debian's package, and the current
/// release from PyPI when the test command installed it (its guidance is newer; its
/// connection-rate test would only measure UFW's SSH rate limit, so it is skipped).
fn ssh_audits() -> Vec<(String, Vec<&'static str>)> {
    let mut tools = vec![("ssh-audit".to_string(), vec![])];
    let cache = std::env::var("IMGFORGE_CACHE").unwrap_or_else(|_| "/var/cache/imgforge".into());
    let pypi = format!("{cache}/venv-ssh-audit/bin/ssh-audit");
    if Path::new(&pypi).exists() {
        tools.push((pypi, vec!["--skip-rate-test"]));
    }
    tools
}

pub fn check_from_outside(d: &Deployment, root: &Path) {
    let info = d.vm.info().clone();

    // SSH: no algorithm ssh-audit fails. It opens several connections: each run gets
    // UFW's rate-limit window to itself.
    for (tool, options) in ssh_audits() {
        d.ssh.wait_window();
        let out = Command::new(&tool)
            .args(&options)
            .args(["--no-colors", "-p", &info.ssh_port.to_string(), "127.0.0.1"])
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e} (apt-get install ssh-audit)"));
        let text = String::from_utf8_lossy(&out.stdout);
        let fails: Vec<&str> = text.lines().filter(|l| l.contains("[fail]")).collect();
        assert!(
            text.contains("(gen) banner") || text.contains("# general"),
            "{tool} did not reach the server:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(fails.is_empty(), "{tool} fails:\n{}", fails.join("\n"));
        let warns = text.lines().filter(|l| l.contains("[warn]")).count();
        eprintln!("  {tool}: no [fail], {warns} [warn]");
    }
    d.ssh.wait_window();

    // TLS: 1.0 and 1.1 refused (the client allows them at security level 0), 1.3 offered.
    let s_client = |version: &str| {
        Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{}", info.https_port))
            .args([
                "-servername",
                DOMAIN,
                version,
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    for old in ["-tls1", "-tls1_1"] {
        let out = s_client(old);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() || text.contains("Cipher is (NONE)"),
            "{old} was accepted:\n{text}"
        );
    }
    let tls13 = s_client("-tls1_3");
    let text = String::from_utf8_lossy(&tls13.stdout);
    assert!(text.contains("TLSv1.3"), "TLS 1.3 not offered:\n{text}");

    // HTTP headers: HSTS on HTTPS, no version in Server; HTTP redirects to HTTPS.
    let head = d.curl(
        "https",
        "/health",
        &[
            "--fail",
            "--cacert",
            root.to_str().unwrap(),
            "-D",
            "-",
            "-o",
            "/dev/null",
        ],
    );
    let headers = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(
        headers.contains("strict-transport-security: max-age="),
        "no HSTS header:\n{headers}"
    );
    let server = headers
        .lines()
        .find(|l| l.starts_with("server:"))
        .unwrap_or("");
    assert!(!server.contains('/'), "Server shows a version: {server}");
    let redirect = d.curl(
        "http",
        "/health",
        &["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"],
    );
    let redirect = String::from_utf8_lossy(&redirect.stdout).into_owned();
    assert!(
        redirect.starts_with(&format!("301 https://{DOMAIN}/")),
        "HTTP answered {redirect:?}"
    );
    // A 404 from nginx itself shows no version either.
    let missing = d.curl("http", "/", &["-H", "Host: unknown.example", "-D", "-"]);
    let missing = String::from_utf8_lossy(&missing.stdout).to_lowercase();
    assert!(
        !missing.contains("nginx/"),
        "nginx version shown:\n{missing}"
    );
}

/// Inside the VM, over one SSH connection: sockets, firewall, modes, leaks, container.
pub fn check_inside(d: &Deployment, slot: &str) {
    let layout = imgforge::contract::layout();
    let container = format!("{}-{slot}", layout.container);
    let etc = std::path::Path::new(&layout.config)
        .parent()
        .unwrap()
        .display();
    let sections = [
        ("listen", "sudo ss -Hltnp".to_string()),
        ("ufw", "sudo ufw status verbose".to_string()),
        (
            "modes",
            format!("sudo find {etc} -type f -printf '%m %p\\n'"),
        ),
        (
            "inspect",
            format!("sudo docker inspect --format '{{{{json .HostConfig}}}}' {container}"),
        ),
        (
            "daemon",
            "sudo docker info --format '{{json .LiveRestoreEnabled}}'".to_string(),
        ),
        ("dockeruser", "sudo iptables -S DOCKER-USER".to_string()),
    ];
    let script = sections
        .iter()
        .map(|(name, cmd)| format!("echo '@@{name}'; {cmd}"))
        .collect::<Vec<_>>()
        .join("; ");
    let out = d.ssh.ok(&script);
    let section = |name: &str| -> String {
        let start = out
            .find(&format!("@@{name}\n"))
            .unwrap_or_else(|| panic!("no section {name} in:\n{out}"))
            + name.len()
            + 3;
        let end = out[start..].find("@@").map_or(out.len(), |i| start + i);
        out[start..end].to_string()
    };

    // Every TCP socket listening beyond loopback is SSH, HTTP or HTTPS.
    for line in section("listen").lines() {
        let local = line.split_whitespace().nth(3).unwrap_or("");
        let (addr, port) = local.rsplit_once(':').unwrap_or((local, ""));
        let loopback = addr.starts_with("127.") || addr == "[::1]";
        assert!(
            loopback || ["22", "80", "443"].contains(&port),
            "listening beyond loopback: {line}"
        );
    }
    let ufw = section("ufw");
    assert!(
        ufw.contains("Status: active") && ufw.contains("deny (incoming)"),
        "UFW:\n{ufw}"
    );
    for line in section("modes").lines() {
        assert!(
            line.starts_with("600 "),
            "/etc/imgforge file not 0600: {line}"
        );
    }
    let (files, journal) = d.ssh.leaks(SECRET);
    assert!(files.is_empty(), "the app's secret is in {files:?}");
    assert_eq!(journal, 0, "the app's secret is in the journal");
    let host_config: serde_json::Value = serde_json::from_str(section("inspect").trim()).unwrap();
    assert_eq!(host_config["ReadonlyRootfs"], true, "{host_config}");
    assert!(
        host_config["CapDrop"].to_string().contains("ALL"),
        "{}",
        host_config["CapDrop"]
    );
    assert!(
        host_config["SecurityOpt"]
            .to_string()
            .contains("no-new-privileges"),
        "{}",
        host_config["SecurityOpt"]
    );
    assert!(host_config["PidsLimit"].as_i64().unwrap_or(0) > 0);
    assert!(host_config["Memory"].as_i64().unwrap_or(0) > 0);
    assert_eq!(section("daemon").trim(), "true", "live-restore is off");
    assert!(
        section("dockeruser").contains("169.254.169.254"),
        "no metadata block in DOCKER-USER:\n{}",
        section("dockeruser")
    );
}
