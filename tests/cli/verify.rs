//! `imgforge verify` against real servers the tests start on 127.0.0.1: an HTTPS
//! server with a certificate from a test CA, an HTTP redirector, listeners on ports
//! that must stay closed, and OpenSSH's sshd with a throwaway config.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::common::sshd::{closed_port, current_user, keygen, sshd};
use imgforge::verify::{verify, Group, ProbePort, Report, Status, Target, VerifyOptions};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const DOMAIN: &str = "api.imgforge.test";

/// A test CA and a server certificate it signed for `names`.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki(names: &[&str]) -> Pki {
    // Distinct CA names, so a wrong CA is an unknown issuer rather than a
    // same-named issuer with a bad signature.
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("imgforge test CA {n}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Reads a request head and returns (path, Host header).
fn read_request(stream: &mut impl Read) -> Option<(String, String)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut host = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("host:") {
            host = v.trim().to_string();
        }
    }
    Some((path, host))
}

fn respond(stream: &mut impl Write, status: &str, extra: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

/// The app as the VM serves it: JSON on /, /health, 404 elsewhere.
fn app(stream: &mut (impl Read + Write)) {
    match read_request(stream) {
        Some((p, _)) if p == "/" => respond(stream, "200 OK", "", r#"{"service":"classifier"}"#),
        Some((p, _)) if p == "/health" => respond(stream, "200 OK", "", r#"{"status":"ok"}"#),
        Some(_) => respond(stream, "404 Not Found", "", r#"{"error":"not found"}"#),
        None => {}
    }
}

fn spawn_server(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handler = Arc::new(handler);
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let h = handler.clone();
            thread::spawn(move || h(s));
        }
    });
    port
}

fn https_server(pki: &Pki) -> u16 {
    let certs = vec![CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let config = Arc::new(config);
    spawn_server(move |sock| {
        sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
            return;
        };
        let mut tls = rustls::StreamOwned::new(conn, sock);
        app(&mut tls);
        tls.conn.send_close_notify();
        let _ = tls.flush();
    })
}

/// nginx's certbot redirect: `return 301 https://$host$request_uri;`
fn redirect_server() -> u16 {
    spawn_server(|mut sock| {
        if let Some((path, host)) = read_request(&mut sock) {
            let location = format!("Location: https://{host}{path}\r\n");
            respond(&mut sock, "301 Moved Permanently", &location, "");
        }
    })
}

fn plain_app_server() -> u16 {
    spawn_server(|mut sock| app(&mut sock))
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn target(https: u16, http: u16, probes: &[u16]) -> Target {
    let mut t = Target::direct("127.0.0.1");
    t.https_port = https;
    t.http_port = http;
    t.probe_ports = probes
        .iter()
        .map(|&p| ProbePort {
            port: p,
            connect: p,
        })
        .collect();
    t
}

fn web_only(ca: Option<PathBuf>, domain: &str) -> VerifyOptions {
    let mut o = VerifyOptions::new(domain, "deploy");
    o.ca_bundle = ca;
    // The test domain resolves nowhere on this machine: dns.resolves has its own test.
    o.skip = [Group::Ssh, Group::Server, Group::Dns]
        .into_iter()
        .collect();
    o.timeout = Duration::from_secs(3);
    o
}

#[test]
fn dns_check_fails_for_a_domain_that_does_not_resolve() {
    let mut o = VerifyOptions::new("nothing.invalid", "deploy");
    o.skip = [Group::Ssh, Group::Server, Group::Web, Group::Ports]
        .into_iter()
        .collect();
    let r = verify(&Target::direct("127.0.0.1"), &o).unwrap();
    assert_eq!(
        status(&r, "dns.resolves"),
        Status::Failed,
        "{}",
        r.to_text()
    );
    assert!(r.to_text().contains("does not resolve"));
}

fn status(r: &Report, name: &str) -> Status {
    r.check(name)
        .unwrap_or_else(|| panic!("no check {name} in\n{}", r.to_text()))
        .status
}

#[test]
fn tls_app_health_and_redirect_pass_with_the_right_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&[DOMAIN]);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let closed = closed_port();
    let t = target(https_server(&pki), redirect_server(), &[closed]);
    let r = verify(&t, &web_only(Some(ca), DOMAIN)).unwrap();
    let text = r.to_text();
    for name in [
        "tls.certificate",
        "https.app",
        "https.health",
        "http.redirect",
        &format!("port.{closed}.closed"),
    ] {
        assert_eq!(status(&r, name), Status::Ok, "{name}\n{text}");
    }
    assert!(r.ok, "{text}");
    assert!(r.check("ssh.login").is_none(), "ssh was skipped\n{text}");
}

#[test]
fn tls_fails_with_a_wrong_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki_a = pki(&[DOMAIN]);
    let other = pki(&[DOMAIN]);
    let wrong_ca = write(dir.path(), "other-ca.pem", &other.ca_pem);
    let t = target(https_server(&pki_a), redirect_server(), &[]);
    let r = verify(&t, &web_only(Some(wrong_ca), DOMAIN)).unwrap();
    let c = r.check("tls.certificate").unwrap();
    assert_eq!(c.status, Status::Failed, "{}", r.to_text());
    assert!(c.detail.contains("UnknownIssuer"), "{}", c.detail);
    assert_eq!(status(&r, "https.app"), Status::Skipped);
    assert!(!r.ok);

    // Nor do the public roots trust a private CA.
    let r = verify(&t, &web_only(None, DOMAIN)).unwrap();
    assert_eq!(
        status(&r, "tls.certificate"),
        Status::Failed,
        "{}",
        r.to_text()
    );
}

#[test]
fn tls_fails_for_another_domain() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&["other.imgforge.test"]);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let t = target(https_server(&pki), redirect_server(), &[]);
    let r = verify(&t, &web_only(Some(ca), DOMAIN)).unwrap();
    let c = r.check("tls.certificate").unwrap();
    assert_eq!(c.status, Status::Failed, "{}", r.to_text());
    assert!(c.detail.contains("NotValidForName"), "{}", c.detail);
}

#[test]
fn a_port_that_answers_http_fails_and_a_closed_one_passes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&[DOMAIN]);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let open = plain_app_server();
    let closed = closed_port();
    let t = target(https_server(&pki), redirect_server(), &[open, closed]);
    let r = verify(&t, &web_only(Some(ca), DOMAIN)).unwrap();
    let c = r.check(&format!("port.{open}.closed")).unwrap();
    assert_eq!(c.status, Status::Failed, "{}", r.to_text());
    assert!(c.detail.contains("HTTP/1.1 200"), "{}", c.detail);
    assert_eq!(status(&r, &format!("port.{closed}.closed")), Status::Ok);
    assert!(!r.ok);
}

#[test]
fn through_qemu_forwards_only_an_answer_counts() {
    // A QEMU forward accepts the connection even when nothing listens in the
    // guest; a silent listener stands in for it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let open = plain_app_server();
    let mut t = target(closed_port(), closed_port(), &[]);
    t.forwarded = true;
    t.probe_ports = vec![
        ProbePort {
            port: 8000,
            connect: silent_port,
        },
        ProbePort {
            port: 8080,
            connect: open,
        },
    ];
    let mut o = web_only(None, DOMAIN);
    o.skip.insert(Group::Web);
    o.timeout = Duration::from_millis(500);
    let r = verify(&t, &o).unwrap();
    assert_eq!(
        status(&r, "port.8000.closed"),
        Status::Ok,
        "{}",
        r.to_text()
    );
    assert_eq!(
        status(&r, "port.8080.closed"),
        Status::Failed,
        "{}",
        r.to_text()
    );

    // Reached directly, a port that accepts connections is open.
    t.forwarded = false;
    let r = verify(&t, &o).unwrap();
    assert_eq!(
        status(&r, "port.8000.closed"),
        Status::Failed,
        "{}",
        r.to_text()
    );
    drop(silent);
}

#[test]
fn http_only_deployments_check_the_app_on_http() {
    let mut o = web_only(None, DOMAIN);
    o.tls = false;
    let t = target(closed_port(), plain_app_server(), &[]);
    let r = verify(&t, &o).unwrap();
    assert_eq!(status(&r, "http.app"), Status::Ok, "{}", r.to_text());
    assert_eq!(status(&r, "http.health"), Status::Ok, "{}", r.to_text());
    assert!(r.check("tls.certificate").is_none());
    // The redirector answers 301 with no JSON: not the app.
    let t = target(closed_port(), redirect_server(), &[]);
    let r = verify(&t, &o).unwrap();
    assert_eq!(status(&r, "http.app"), Status::Failed, "{}", r.to_text());
}

fn imgforge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imgforge"))
}

#[test]
fn cli_json_report_parses_and_exit_codes_follow_the_checks() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&[DOMAIN]);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let https = https_server(&pki).to_string();
    let http = redirect_server().to_string();
    let closed = closed_port().to_string();
    let base = |ca: &Path| {
        let mut c = imgforge();
        c.args(["verify", "--host", "127.0.0.1", "--domain", DOMAIN])
            .args(["--https-port", &https, "--http-port", &http])
            .args([
                "--probe-port",
                &closed,
                "--skip",
                "ssh,server,dns",
                "--format",
                "json",
            ])
            .arg("--ca-bundle")
            .arg(ca);
        c
    };
    let out = base(&ca).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.ok);
    assert_eq!(report.domain, DOMAIN);
    assert_eq!(report.check("https.app").unwrap().status, Status::Ok);
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(raw["checks"][0]["status"], "ok", "{raw}");

    let wrong = write(dir.path(), "wrong.pem", &self::pki(&[DOMAIN]).ca_pem);
    let out = base(&wrong).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report.check("tls.certificate").unwrap().status,
        Status::Failed
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls.certificate"));

    // Text report: one line per check.
    let out = imgforge()
        .args(["verify", "--host", "127.0.0.1", "--domain", DOMAIN])
        .args([
            "--https-port",
            &https,
            "--http-port",
            &http,
            "--probe-port",
            &closed,
        ])
        .args(["--skip", "ssh,server,dns", "--ca-bundle"])
        .arg(&ca)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok       tls.certificate"), "{text}");
    assert!(text.contains("passed: 5 ok, 0 failed"), "{text}");
}

#[test]
fn cli_bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec![
            "--identity".into(),
            dir.path().join("missing-key").display().to_string(),
        ],
        vec![
            "--ca-bundle".into(),
            write(dir.path(), "empty.pem", "").display().to_string(),
        ],
        vec![
            "--ca-bundle".into(),
            dir.path().join("nope.pem").display().to_string(),
        ],
        vec![
            "--boot".into(),
            write(dir.path(), "boot.json", "{").display().to_string(),
        ],
    ];
    for extra in cases {
        let mut c = imgforge();
        c.args(["verify", "--domain", DOMAIN]);
        if !extra.contains(&"--boot".to_string()) {
            c.args(["--host", "127.0.0.1"]);
        }
        let out = c.args(&extra).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key = write(dir.path(), "open-key", "not really a key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = imgforge()
        .args([
            "verify",
            "--host",
            "127.0.0.1",
            "--domain",
            DOMAIN,
            "--identity",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    let out = imgforge()
        .args(["verify", "--host", "127.0.0.1", "--domain", "not a domain"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = imgforge()
        .args([
            "verify",
            "--host",
            "127.0.0.1",
            "--domain",
            DOMAIN,
            "--user",
            "-oProxyCommand=x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn boot_json_gives_the_forwarded_ports() {
    let dir = tempfile::tempdir().unwrap();
    let boot = write(
        dir.path(),
        "boot.json",
        r#"{"pid":1,"ssh_port":2222,"http_port":8080,"https_port":8443,
            "forwards":{"22":2222,"80":8080,"443":8443,"8000":18000,"8001":18001,"8002":18002,"15000":15000},
            "serial_log":"serial.log","overlay":"overlay.qcow2","host":"127.0.0.1",
            "known_hosts":"kh"}"#,
    );
    let (t, known_hosts) = Target::from_boot_json(&boot).unwrap();
    assert_eq!((t.ssh_port, t.http_port, t.https_port), (2222, 8080, 8443));
    assert_eq!(
        t.probe_ports,
        vec![
            ProbePort {
                port: 8000,
                connect: 18000
            },
            ProbePort {
                port: 8001,
                connect: 18001
            },
            ProbePort {
                port: 8002,
                connect: 18002
            }
        ]
    );
    assert!(t.forwarded);
    // The VM has not reported its host keys yet: no file, nothing pinned.
    assert_eq!(known_hosts, None);
    let no_probe = write(
        dir.path(),
        "boot2.json",
        r#"{"pid":1,"ssh_port":1,"http_port":2,"https_port":3,"forwards":{},
            "serial_log":"s","overlay":"o","host":"127.0.0.1"}"#,
    );
    let err = Target::from_boot_json(&no_probe).unwrap_err();
    assert_eq!(imgforge::exit::code_for(&err), imgforge::exit::USAGE);
}

// ---- SSH against a real sshd on loopback ----

fn ssh_opts(dir: &Path, user: &str) -> VerifyOptions {
    let mut o = VerifyOptions::new(DOMAIN, user);
    o.identity = Some(dir.join("id_ed25519"));
    o.skip = [Group::Web, Group::Ports].into_iter().collect();
    o.timeout = Duration::from_secs(5);
    o.ssh_timeout = Duration::from_secs(30);
    o
}

fn ssh_target(port: u16) -> Target {
    let mut t = Target::direct("127.0.0.1");
    t.ssh_port = port;
    t
}

#[test]
fn ssh_checks_against_a_real_sshd() {
    let dir = tempfile::tempdir().unwrap();
    let user = current_user();
    let client_pub = keygen(&dir.path().join("id_ed25519"));
    write(dir.path(), "authorized_keys", &client_pub);
    // Key-only, like the VM; root may log in with a key so the test user (root
    // here) can log in at all, which the root check must then flag.
    let hardened = sshd(
        dir.path(),
        "hardened",
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password",
    );
    let r = verify(&ssh_target(hardened.port), &ssh_opts(dir.path(), &user)).unwrap();
    let text = r.to_text();
    eprintln!("{text}");
    assert_eq!(status(&r, "ssh.login"), Status::Ok, "{text}");
    assert_eq!(status(&r, "ssh.password_refused"), Status::Ok, "{text}");
    assert!(
        r.check("ssh.password_refused")
            .unwrap()
            .detail
            .contains("publickey"),
        "{text}"
    );
    if user == "root" {
        assert_eq!(status(&r, "ssh.root_refused"), Status::Failed, "{text}");
    }
    assert_eq!(status(&r, "ssh.host_key"), Status::Skipped, "{text}");
    // These ran over the session (their verdicts describe this host, not a VM).
    for name in [
        "ssh.sshd_config",
        "server.cloud_init",
        "server.failed_units",
        "server.imgforge_status",
    ] {
        assert_ne!(status(&r, name), Status::Skipped, "{name}\n{text}");
    }

    // Pinned host key: right key passes, under the address or under the domain.
    let kh = write(
        dir.path(),
        "known_hosts",
        &format!("[127.0.0.1]:{} {}", hardened.port, hardened.host_pub),
    );
    let mut o = ssh_opts(dir.path(), &user);
    o.known_hosts = Some(kh);
    let r = verify(&ssh_target(hardened.port), &o).unwrap();
    assert_eq!(status(&r, "ssh.host_key"), Status::Ok, "{}", r.to_text());
    assert_eq!(status(&r, "ssh.login"), Status::Ok, "{}", r.to_text());
    let kh = write(
        dir.path(),
        "known_hosts_domain",
        &format!("{DOMAIN} {}", hardened.host_pub),
    );
    o.known_hosts = Some(kh);
    let r = verify(&ssh_target(hardened.port), &o).unwrap();
    assert_eq!(status(&r, "ssh.host_key"), Status::Ok, "{}", r.to_text());

    // A different pinned key: the login must not happen.
    let other_pub = keygen(&dir.path().join("other_host"));
    let kh = write(
        dir.path(),
        "known_hosts_wrong",
        &format!("{DOMAIN} {other_pub}"),
    );
    o.known_hosts = Some(kh);
    let r = verify(&ssh_target(hardened.port), &o).unwrap();
    assert_eq!(
        status(&r, "ssh.host_key"),
        Status::Failed,
        "{}",
        r.to_text()
    );
    assert_eq!(status(&r, "ssh.login"), Status::Failed, "{}", r.to_text());
    assert_eq!(
        status(&r, "server.cloud_init"),
        Status::Skipped,
        "{}",
        r.to_text()
    );

    // A key the server does not know: login fails.
    keygen(&dir.path().join("stranger"));
    let mut o = ssh_opts(dir.path(), &user);
    o.identity = Some(dir.path().join("stranger"));
    let r = verify(&ssh_target(hardened.port), &o).unwrap();
    assert_eq!(status(&r, "ssh.login"), Status::Failed, "{}", r.to_text());
    assert!(r
        .check("ssh.login")
        .unwrap()
        .detail
        .contains("Permission denied"));

    // A server that still offers passwords fails the password check.
    let lax = sshd(
        dir.path(),
        "lax",
        "PasswordAuthentication yes\nKbdInteractiveAuthentication no\nPermitRootLogin no",
    );
    let r = verify(&ssh_target(lax.port), &ssh_opts(dir.path(), &user)).unwrap();
    let c = r.check("ssh.password_refused").unwrap();
    assert_eq!(c.status, Status::Failed, "{}", r.to_text());
    assert!(c.detail.contains("password"), "{}", c.detail);
    if user == "root" {
        // PermitRootLogin no: the same key is refused for root.
        assert_eq!(
            status(&r, "ssh.root_refused"),
            Status::Ok,
            "{}",
            r.to_text()
        );
    }
}

#[test]
fn several_nodes_are_each_verified_and_the_failing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&[DOMAIN]);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let redirect = redirect_server();
    let closed = closed_port();
    // Two local VMs as `imgforge boot` describes them: the second serves another name's
    // certificate.
    let node = |name: &str, ssh: u16, https: u16| {
        write(
            dir.path(),
            name,
            &format!(
                r#"{{"pid":1,"ssh_port":{ssh},"http_port":{redirect},"https_port":{https},
                    "forwards":{{"8000":{closed},"8001":{closed},"8002":{closed}}},
                    "serial_log":"s","overlay":"o","host":"127.0.0.1"}}"#
            ),
        )
    };
    let good = node("a.json", 2201, https_server(&pki));
    let bad = node(
        "b.json",
        2202,
        https_server(&self::pki(&["other.example.com"])),
    );
    let run = |format: &str| {
        imgforge()
            .args(["verify", "--domain", DOMAIN, "--skip", "ssh,server,dns"])
            .args(["--format", format, "--ca-bundle"])
            .arg(&ca)
            .arg("--boot")
            .arg(&good)
            .arg("--boot")
            .arg(&bad)
            .output()
            .unwrap()
    };
    let out = run("json");
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    let nodes: Vec<Report> = serde_json::from_value(v["nodes"].clone()).unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(nodes[0].ok, "{}", nodes[0].to_text());
    assert_eq!(status(&nodes[1], "tls.certificate"), Status::Failed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("127.0.0.1:2202 tls.certificate") && !stderr.contains("127.0.0.1:2201"),
        "{stderr}"
    );

    let out = run("text");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("== node 127.0.0.1:2201\n"), "{text}");
    assert!(text.contains("== node 127.0.0.1:2202\n"), "{text}");
    assert!(text.ends_with("FAILED: 1 of 2 nodes passed\n"), "{text}");
}
