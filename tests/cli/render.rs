//! `imgforge render`, `init`, `keygen` and `docs` through the real binary: golden
//! user-data for every provider preset, checked by the real `cloud-init schema`, and
//! hostile values for every string input.
//!
//! Regenerate the golden files after an intended change with
//! `IMGFORGE_UPDATE_GOLDEN=1 cargo test --test render`, then review the diff.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

/// The binary, run with HOME in a fresh temporary directory.
struct Run {
    home: tempfile::TempDir,
}

impl Run {
    fn new() -> Self {
        Run {
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_imgforge"))
            .args(args)
            .env("HOME", self.home.path())
            .current_dir(self.home.path())
            .output()
            .unwrap()
    }
}

fn key() -> String {
    format!("{FIXTURES}/admin_ed25519.pub")
}

fn base_args() -> Vec<String> {
    [
        "--domain",
        "api.example.com",
        "--email",
        "ops@example.com",
        "--ssh-key",
        &key(),
        "--image",
        "ghcr.io/acme/classifier:1.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn render_ok(run: &Run, extra: &[&str]) -> Vec<u8> {
    let mut args: Vec<String> = vec!["render".into()];
    args.extend(base_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run.cmd(&argv);
    assert!(
        out.status.success(),
        "render {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Compares with tests/golden/NAME, or rewrites it under IMGFORGE_UPDATE_GOLDEN=1. The VM
/// program's content (gzip + base64 of a zip) is shown as a placeholder: its source is
/// reviewed in guest/, not as a blob here.
fn golden(name: &str, actual: &str) {
    let doc = yaml(actual.as_bytes());
    let program = written(&doc, &imgforge::contract::layout().program);
    let zip = gunzip(
        &base64::engine::general_purpose::STANDARD
            .decode(&program)
            .unwrap(),
    );
    // The program's own tests run on what ships (the_shipped_vm_program_…).
    assert!(
        zip.starts_with(b"#!/usr/bin/python3\n")
            && zip.windows(18).any(|w| w == b"imgforge_vm/cli.py"),
        "{name}: the program is not a zipapp of guest/"
    );
    let actual = actual.replace(&program, "<the VM program: gzip+base64 of a zipapp>");
    let actual = actual.as_str();
    let path = Path::new(GOLDEN).join(name);
    if std::env::var_os("IMGFORGE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}; run with IMGFORGE_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    similar_asserts::assert_eq!(expected, actual, "golden file {name}");
}

/// The real cloud-init schema validator (Debian's cloud-init package).
fn cloud_init_schema(text: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("user-data");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&file)
        .output()
        .expect("running cloud-init schema (install Debian's cloud-init package)");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && all.contains("Valid cloud-config"),
        "cloud-init schema rejected it:\n{all}"
    );
}

fn yaml(text: &[u8]) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_slice(text).unwrap()
}

/// The content of the write_files entry for `path`.
fn written(doc: &serde_yaml_ng::Value, path: &str) -> String {
    doc["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("no write_files entry for {path}"))["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn deploy_json(doc: &serde_yaml_ng::Value) -> serde_json::Value {
    serde_json::from_str(&written(doc, "/etc/imgforge/deploy.json")).unwrap()
}

/// A document gzipped as a whole carries the VM program as plain modules, which its first
/// command assembles with python3's zipapp: the modules are the shipped program's own, and
/// everything else is `plain`'s.
fn same_deployment(gzipped: &[u8], plain: &[u8]) {
    use imgforge::render::program;
    let layout = imgforge::contract::layout();
    let (gz, plain) = (yaml(gzipped), yaml(plain));
    let files = |doc: &serde_yaml_ng::Value| -> Vec<serde_yaml_ng::Value> {
        doc["write_files"].as_sequence().unwrap().clone()
    };
    let src = format!("{}/", layout.program_src);
    let (modules, rest): (Vec<_>, Vec<_>) = files(&gz)
        .into_iter()
        .partition(|f| f["path"].as_str().unwrap().starts_with(&src));
    let expected: Vec<_> = files(&plain)
        .into_iter()
        .filter(|f| f["path"].as_str() != Some(layout.program.as_str()))
        .collect();
    assert_eq!(rest, expected, "the files besides the program");
    let needs = program::Needs::CORE;
    let shipped = program::files_for(needs);
    let names: Vec<&str> = modules
        .iter()
        .map(|f| &f["path"].as_str().unwrap()[src.len()..])
        .collect();
    assert_eq!(names, shipped, "the program's modules");
    for (f, name) in modules.iter().zip(&shipped) {
        assert_eq!(
            f["content"].as_str().unwrap().as_bytes(),
            program::shipped_for(name, needs),
            "{name}"
        );
    }
    let runcmd = gz["runcmd"].as_sequence().unwrap();
    let assemble: Vec<&str> = runcmd[0]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        assemble,
        [
            "/usr/bin/python3",
            "-m",
            "zipapp",
            &layout.program_src,
            "-o",
            &layout.program,
            "-p",
            "/usr/bin/python3"
        ]
    );
    assert_eq!(runcmd[1..], plain["runcmd"].as_sequence().unwrap()[..]);
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn four_flags_render_schema_valid_user_data() {
    let run = Run::new();
    let text = render_ok(&run, &[]);
    golden("generic.yaml", std::str::from_utf8(&text).unwrap());
    cloud_init_schema(&text);
}

/// The VM program's unit tests run on the deploy.json the default deployment renders
/// (guest/tests/fixtures/deploy-v1.json, rewritten under IMGFORGE_UPDATE_GOLDEN=1), and
/// the Rust type reads it back with no key left over.
#[test]
fn the_vm_programs_tests_run_on_the_deploy_json_render_writes() {
    let run = Run::new();
    let doc = yaml(&render_ok(&run, &[]));
    let text = written(&doc, &imgforge::contract::layout().config);
    let parsed: imgforge::contract::deploy::DeployJson = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("deploy.json does not parse as DeployJson: {e}\n{text}"));
    assert_eq!(parsed.version, imgforge::contract::deploy::VERSION);
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/guest/tests/fixtures/deploy-v1.json"
    );
    if std::env::var_os("IMGFORGE_UPDATE_GOLDEN").is_some() {
        std::fs::write(fixture, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(fixture).unwrap_or_default(),
        text,
        "{fixture} is not what render writes: IMGFORGE_UPDATE_GOLDEN=1 cargo test --test cli the_vm_programs_tests"
    );
}

/// The absolute paths under the file system's top directories in `text` (not a URL's path,
/// not one followed by `:`: a PATH list or a mount spec), as VM_PATH in
/// guest/tests/test_contract.py finds them in the program.
fn vm_paths(text: &str) -> Vec<String> {
    const ROOTS: [&str; 17] = [
        "etc", "var", "usr", "run", "srv", "opt", "dev", "proc", "sys", "tmp", "home", "root",
        "boot", "lib", "bin", "sbin", "mnt",
    ];
    let path_char = |c: char| c.is_alphanumeric() || "_.@*[]-/".contains(c);
    let mut found = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let before_ok = i == 0 || !(path_char(chars[i - 1]) || chars[i - 1] == ':');
        if chars[i] == '/' && before_ok {
            let end = (i..chars.len())
                .find(|&j| !path_char(chars[j]))
                .unwrap_or(chars.len());
            let path: String = chars[i..end].iter().collect();
            let root = path[1..].split('/').next().unwrap_or("");
            if ROOTS.contains(&root) && chars.get(end) != Some(&':') {
                found.push(path.trim_end_matches('.').to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    found
}

/// Whether layout.json lists `path`: a value, under a directory value, or a glob's match.
fn listed(path: &str, values: &[String]) -> bool {
    values.iter().any(|v| {
        path == v
            || path.starts_with(&format!("{}/", v.trim_end_matches('/')))
            || v.split_once('*').is_some_and(|(head, tail)| {
                path.starts_with(head) && path.ends_with(tail) && path.len() >= v.len() - 1
            })
    })
}

fn layout_values(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) if s.starts_with('/') => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| layout_values(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| layout_values(x, out)),
        _ => {}
    }
}

/// Every VM path in the rendered files, their names and the first boot's commands (with
/// TLS, DNS and a CA bundle, so every optional file is there), and every port they listen
/// on or send to, is one layout.json lists (or deploy.json's data directory and the app's
/// port, which the user sets); the templates name no VM path themselves.
#[test]
fn every_path_and_port_the_deployment_names_is_layout_jsons() {
    let layout = imgforge::contract::layout();
    let mut values = Vec::new();
    layout_values(&serde_json::to_value(layout).unwrap(), &mut values);
    let run = Run::new();
    let token = run.path("dns.token");
    std::fs::write(&token, "imgforge-test-cloudflare-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let ca = format!("{FIXTURES}/private-ca.pem");
    let extra = [
        "--dns",
        "cloudflare",
        "--dns-token-file",
        token.to_str().unwrap(),
        "--acme-server",
        "https://acme.example.com/dir",
        "--acme-ca-bundle",
        &ca,
    ];
    let doc = yaml(&render_ok(&run, &extra));
    let conf = deploy_json(&doc);
    values.push(conf["data_dir"].as_str().unwrap().to_owned());
    let mut unlisted = Vec::new();
    let mut ports = Vec::new();
    for f in doc["write_files"].as_sequence().unwrap() {
        let path = f["path"].as_str().unwrap();
        if path == layout.program {
            continue; // the program's own paths: guest/tests/test_contract.py
        }
        let content = f["content"].as_str().unwrap_or("");
        for p in vm_paths(path).into_iter().chain(vm_paths(content)) {
            if !listed(&p, &values) {
                unlisted.push(format!("{path}: {p}"));
            }
        }
        for line in content.lines().map(str::trim) {
            let words: Vec<&str> = line.trim_end_matches(';').split_whitespace().collect();
            let port_of = |w: &str| w.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            match words.as_slice() {
                ["listen", addr, ..] | ["server", addr, ..] | ["Port", addr] => {
                    ports.extend(port_of(addr).map(|p| (path.to_owned(), p)))
                }
                _ => {}
            }
        }
    }
    for cmd in [&doc["runcmd"], &doc["bootcmd"]] {
        let text = serde_json::to_string(cmd).unwrap();
        for p in vm_paths(&text) {
            if !listed(&p, &values) {
                unlisted.push(format!("runcmd: {p}"));
            }
        }
    }
    assert_eq!(
        unlisted,
        Vec::<String>::new(),
        "paths layout.json does not list"
    );
    assert!(!listed("/etc/imgforge/other.conf", &values));
    let p = &layout.public_ports;
    let mut known: Vec<u16> = vec![p.ssh, p.http, p.https, layout.nginx_check_port];
    known.extend(layout.slots.values());
    known.push(conf["container_port"].as_u64().unwrap() as u16);
    let unknown: Vec<_> = ports.iter().filter(|(_, p)| !known.contains(p)).collect();
    assert!(
        !ports.is_empty(),
        "no listen directive found: the scan is out of date"
    );
    assert_eq!(
        unknown,
        Vec::<&(String, u16)>::new(),
        "ports layout.json does not list"
    );

    // The templates of VM files name no VM path themselves: each comes from layout.json
    // or deploy.json (imgforge.yaml is `imgforge init`'s settings file, not a VM file).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("hbs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let literal = vm_paths(&text);
        assert!(literal.is_empty(), "{}: {literal:?}", path.display());
    }
}

#[test]
fn no_tls_renders_an_http_only_deployment() {
    let run = Run::new();
    let out = run.cmd(&["render", "--no-tls", "--ssh-key", &key()]);
    assert!(out.status.success(), "{}", stderr(&out));
    golden("no-tls.yaml", std::str::from_utf8(&out.stdout).unwrap());
    cloud_init_schema(&out.stdout);
    let doc = yaml(&out.stdout);
    assert_eq!(deploy_json(&doc)["tls"], false);
    let layout = imgforge::contract::layout();
    assert!(written(&doc, &layout.nginx_site_http).contains("server_name _;"));
    // No HTTPS site to install, ever.
    let paths: Vec<&str> = doc["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert!(
        !paths.contains(&layout.nginx_site_tls.as_str()),
        "{paths:?}"
    );
}

#[test]
fn offline_private_acme_render_is_what_the_boot_tests_use() {
    let run = Run::new();
    let text = render_ok(
        &run,
        &[
            "--offline",
            "--docker-source",
            "distro",
            "--acme-server",
            "https://localhost:14000/dir",
            "--acme-ca-bundle",
            &format!("{FIXTURES}/private-ca.pem"),
        ],
    );
    golden(
        "offline-private-acme.yaml",
        std::str::from_utf8(&text).unwrap(),
    );
    cloud_init_schema(&text);
    let doc = yaml(&text);
    let ca = std::fs::read_to_string(format!("{FIXTURES}/private-ca.pem")).unwrap();
    assert_eq!(written(&doc, "/etc/imgforge/acme-ca.pem"), ca);
    assert_eq!(
        deploy_json(&doc)["acme_server"],
        "https://localhost:14000/dir"
    );
}

#[test]
fn every_provider_preset_gets_the_same_document_in_its_encoding() {
    // The default document fits every provider's limit without a flag.
    let run = Run::new();
    for provider in [
        "generic",
        "aws",
        "azure",
        "gcp",
        "hetzner",
        "digitalocean",
        "linode",
        "openstack",
    ] {
        let mut args = vec!["render".to_string(), "--provider".into(), provider.into()];
        args.extend(base_args());
        args.extend(["-o".to_string(), format!("{provider}.out")]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run.cmd(&argv);
        assert!(out.status.success(), "{provider}: {}", stderr(&out));
    }
    drop(run);

    let run = Run::new();
    let plain = render_ok(&run, &[]);
    for provider in [
        "generic",
        "gcp",
        "hetzner",
        "digitalocean",
        "azure",
        "openstack",
    ] {
        let got = render_ok(&run, &["--provider", provider]);
        assert_eq!(got, plain, "{provider} should take the plain document");
    }
    // AWS: the plain document is over 16 KB: render gzips it by itself and says so.
    let out = run.cmd(
        &{
            let mut args = vec!["render".to_string(), "--provider".into(), "aws".into()];
            args.extend(base_args());
            args.extend(["-o".to_string(), "ud.gz".to_string()]);
            args
        }
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("gzipped it"), "{}", stderr(&out));
    let file = std::fs::read(run.path("ud.gz")).unwrap();
    assert!(file.len() <= 16 * 1024);
    let gzipped = gunzip(&file);
    same_deployment(&gzipped, &plain);
    cloud_init_schema(&gzipped);
    let gz = render_ok(&run, &["--provider", "aws", "--gzip", "-o", "ud2.gz"]);
    assert!(gz.is_empty());
    assert_eq!(std::fs::read(run.path("ud2.gz")).unwrap(), file);
    // Linode: base64 always, 16 KiB decoded.
    let b64 = render_ok(&run, &["--provider", "linode", "--gzip"]);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8(b64).unwrap().trim())
        .unwrap();
    assert_eq!(gunzip(&decoded), gzipped);
    // Text-only consoles refuse gzip.
    let mut args = vec![
        "render".to_string(),
        "--provider".into(),
        "hetzner".into(),
        "--gzip".into(),
    ];
    args.extend(base_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(run.cmd(&argv).status.code(), Some(2));
}

#[test]
fn output_file_is_written_0600() {
    use std::os::unix::fs::PermissionsExt;
    let run = Run::new();
    render_ok(&run, &["-o", "user-data.yaml"]);
    let meta = std::fs::metadata(run.path("user-data.yaml")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn host_key_is_pinned_with_a_known_hosts_line() {
    let run = Run::new();
    let mut args = vec!["render".to_string(), "--host-key".into()];
    args.extend(base_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run.cmd(&argv);
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(err.contains("metadata service"), "no warning: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("api.example.com ssh-ed25519 "))
        .expect("known_hosts line");
    let doc = yaml(&out.stdout);
    let public = doc["ssh_keys"]["ed25519_public"].as_str().unwrap();
    assert_eq!(
        line.split_whitespace().nth(2),
        public.split_whitespace().nth(1)
    );
    let private =
        ssh_key::PrivateKey::from_openssh(doc["ssh_keys"]["ed25519_private"].as_str().unwrap())
            .unwrap();
    assert_eq!(
        private
            .public_key()
            .to_openssh()
            .unwrap()
            .split_whitespace()
            .nth(1),
        public.split_whitespace().nth(1)
    );
    cloud_init_schema(&out.stdout);
}

/// Runs render with one flag set to a hostile value and `-o out.yaml`. Returns the
/// document when it rendered; when it was refused, checks exit 2, the flag named, and
/// no output file.
fn try_flag(flag: &str, value: &str) -> Option<serde_yaml_ng::Value> {
    let run = Run::new();
    let mut args: Vec<String> = vec!["render".into(), "-o".into(), "out.yaml".into()];
    let base = base_args();
    let mut i = 0;
    while i < base.len() {
        if base[i] != flag {
            args.push(base[i].clone());
            args.push(base[i + 1].clone());
        }
        i += 2;
    }
    args.push(format!("{flag}={value}"));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run.cmd(&argv);
    if out.status.success() {
        let text = std::fs::read(run.path("out.yaml")).unwrap();
        return Some(yaml(&text));
    }
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{flag}={value:?}: expected exit 2, got {:?}: {err}",
        out.status.code()
    );
    assert!(
        err.contains(&format!("[{flag}]")),
        "{flag}={value:?}: error does not name the flag: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !run.path("out.yaml").exists(),
        "{flag}={value:?}: output written despite the error"
    );
    None
}

const HOSTILE: &[&str] = &[
    "a\nb",
    "a\rb",
    "it's",
    "say \"hi\"",
    "$(reboot)",
    "`reboot`",
    "a;reboot",
    "100%",
    "%h",
    "{{x}}",
    "{a}",
    "a #b",
    "no",
    "on",
    "é",
    "日本",
    "-rf",
    "--help",
    " lead",
    "trail ",
    "a b",
    "../../etc",
    // Over-long: a 70-character DNS label, a 300-character value.
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.com",
    LONG,
];
const LONG: &str = concat!("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");

#[test]
fn hostile_values_for_typed_flags_are_refused_or_land_inert() {
    let flags = [
        "--domain",
        "--email",
        "--user",
        "--image",
        "--app-port",
        "--data-dir",
        "--data-path",
        "--health-path",
        "--acme-server",
        "--backup-keep",
        "--max-body-size",
        "--app-memory",
    ];
    for flag in flags {
        for value in HOSTILE {
            if let Some(doc) = try_flag(flag, value) {
                // Accepted: the value must land exactly where it belongs, as a string.
                let dj = deploy_json(&doc);
                let landed = match flag {
                    "--user" => doc["users"][0]["name"].as_str().map(str::to_owned),
                    "--domain" => dj["domain"].as_str().map(str::to_owned),
                    "--email" => dj["email"].as_str().map(str::to_owned),
                    "--image" => dj["image"].as_str().map(str::to_owned),
                    "--data-dir" => dj["data_dir"].as_str().map(str::to_owned),
                    "--data-path" => dj["data_path"].as_str().map(str::to_owned),
                    "--health-path" => dj["health_path"].as_str().map(str::to_owned),
                    "--acme-server" => dj["acme_server"].as_str().map(str::to_owned),
                    "--app-port" => Some(dj["container_port"].to_string()),
                    "--backup-keep" => Some(dj["backup_keep"].to_string()),
                    "--max-body-size" => dj["max_body_size"].as_str().map(str::to_owned),
                    "--app-memory" => dj["app"]["memory"].as_str().map(str::to_owned),
                    _ => unreachable!(),
                };
                assert_eq!(
                    landed.as_deref(),
                    Some(*value),
                    "{flag}={value:?} was accepted but did not land byte-exact"
                );
            }
        }
    }
}

#[test]
fn env_values_arrive_byte_exact_or_are_refused() {
    for value in HOSTILE {
        let refused = value.contains(['\n', '\r']);
        let doc = try_flag("--env", &format!("GREETING={value}"));
        match doc {
            None => assert!(
                refused,
                "--env GREETING={value:?} was refused but an env file can carry it"
            ),
            Some(doc) => {
                assert!(!refused, "--env GREETING={value:?} was accepted");
                let env = written(&doc, "/etc/imgforge/app.env");
                let line = env.lines().find(|l| l.starts_with("GREETING=")).unwrap();
                assert_eq!(&line["GREETING=".len()..], *value);
            }
        }
    }
    // Names are typed.
    for name in ["1X", "A-B", "A B", "$X", ""] {
        assert!(
            try_flag("--env", &format!("{name}=v")).is_none(),
            "env name {name:?} accepted"
        );
    }
}

#[test]
fn nul_and_yaml_words_in_the_config_file() {
    let run = Run::new();
    std::fs::write(run.path("k.pub"), std::fs::read(key()).unwrap()).unwrap();
    let cfg = "domain: api.example.com\nemail: ops@example.com\nadmin:\n  ssh-key-files: [k.pub]\napp:\n  env:\n    A: \"no\"\n    B: \"on\"\n    C: \"x\\0y\"\n";
    std::fs::write(run.path("imgforge.yaml"), cfg).unwrap();
    let out = run.cmd(&["render", "--config", "imgforge.yaml", "-o", "out.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("error[app.env.C]") && err.contains("imgforge.yaml:9:"),
        "{err}"
    );
    assert!(!run.path("out.yaml").exists());
    // Without the NUL, YAML words stay strings, byte-exact.
    std::fs::write(
        run.path("imgforge.yaml"),
        cfg.replace("    C: \"x\\0y\"\n", ""),
    )
    .unwrap();
    let out = run.cmd(&["render", "--config", "imgforge.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let env = written(&yaml(&out.stdout), "/etc/imgforge/app.env");
    assert!(env.contains("\nA=no\nB=on\n"), "{env}");
    // An unquoted boolean is refused with the fix.
    std::fs::write(
        run.path("imgforge.yaml"),
        cfg.replace("\"no\"", "no")
            .replace("\"on\"", "true")
            .replace("    C: \"x\\0y\"\n", ""),
    )
    .unwrap();
    let out = run.cmd(&["render", "--config", "imgforge.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("error[app.env.B]") && stderr(&out).contains("quote it"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_file_unknown_key_is_an_error_with_its_position() {
    let run = Run::new();
    std::fs::write(
        run.path("imgforge.yaml"),
        "domain: api.example.com\napp:\n  imagee: x\n",
    )
    .unwrap();
    let out = run.cmd(&["render", "--config", "imgforge.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("unknown field `imagee`") && err.contains("imgforge.yaml:3:"),
        "{err}"
    );
}

#[test]
fn config_errors_are_all_reported_with_positions_and_flags_win() {
    let run = Run::new();
    std::fs::write(run.path("k.pub"), std::fs::read(key()).unwrap()).unwrap();
    std::fs::write(
        run.path("imgforge.yaml"),
        "domain: bad..domain\nemail: not-an-email\nadmin:\n  user: Root\n  ssh-key-files: [k.pub]\n",
    )
    .unwrap();
    let out = run.cmd(&["render", "--config", "imgforge.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for expected in [
        "error[domain]",
        "imgforge.yaml:1:9",
        "error[email]",
        "imgforge.yaml:2:8",
        "error[admin.user]",
        "imgforge.yaml:4:9",
        "3 error(s)",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // Flags override the file's values.
    let out = run.cmd(&[
        "render",
        "--config",
        "imgforge.yaml",
        "--domain",
        "api.example.org",
        "--email",
        "a@example.org",
        "--user",
        "ops",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = yaml(&out.stdout);
    assert_eq!(deploy_json(&doc)["domain"], "api.example.org");
    assert_eq!(doc["users"][0]["name"], "ops");
}

#[test]
fn private_key_given_as_public_is_refused_and_not_echoed() {
    let run = Run::new();
    let kg = run.cmd(&["keygen", "-o", "id"]);
    assert!(kg.status.success());
    let private = std::fs::read_to_string(run.path("id")).unwrap();
    let secret_line = private.lines().nth(1).unwrap();
    let out = run.cmd(&[
        "render",
        "--domain",
        "api.example.com",
        "--email",
        "a@example.com",
        "--ssh-key",
        "id",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("PRIVATE key") && err.contains("[--ssh-key]"),
        "{err}"
    );
    assert!(
        !err.contains(secret_line) && !String::from_utf8_lossy(&out.stdout).contains(secret_line)
    );
}

#[test]
fn missing_default_key_points_at_keygen_and_keygen_fixes_it() {
    let run = Run::new();
    let out = run.cmd(&[
        "render",
        "--domain",
        "api.example.com",
        "--email",
        "a@example.com",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("imgforge keygen"), "{}", stderr(&out));
    let kg = run.cmd(&["keygen"]);
    assert!(kg.status.success(), "{}", stderr(&kg));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(run.path(".ssh/id_ed25519"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = run.cmd(&[
        "render",
        "--domain",
        "api.example.com",
        "--email",
        "a@example.com",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let public = std::fs::read_to_string(run.path(".ssh/id_ed25519.pub")).unwrap();
    assert_eq!(
        yaml(&out.stdout)["users"][0]["ssh_authorized_keys"][0]
            .as_str()
            .unwrap(),
        public.trim()
    );
    // keygen does not overwrite; --if-missing keeps the pair.
    assert_eq!(run.cmd(&["keygen"]).status.code(), Some(2));
    let kept = run.cmd(&["keygen", "--if-missing"]);
    assert!(kept.status.success());
    assert_eq!(String::from_utf8_lossy(&kept.stdout), public);
}

#[test]
fn init_writes_a_starter_that_renders() {
    let run = Run::new();
    assert!(run.cmd(&["keygen"]).status.success());
    assert!(run.cmd(&["init"]).status.success());
    let out = run.cmd(&["render", "--config", "imgforge.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    cloud_init_schema(&out.stdout);
    assert_eq!(
        run.cmd(&["init"]).status.code(),
        Some(2),
        "init must not overwrite"
    );
}

#[test]
fn template_overrides_replace_built_in_files_and_unknown_names_are_refused() {
    let run = Run::new();
    std::fs::create_dir(run.path("tpl")).unwrap();
    std::fs::write(
        run.path("tpl/20auto-upgrades.hbs"),
        "// custom\nAPT::Periodic::Unattended-Upgrade \"0\";\n",
    )
    .unwrap();
    let text = render_ok(&run, &["--templates", "tpl"]);
    assert_eq!(
        written(&yaml(&text), "/etc/apt/apt.conf.d/20auto-upgrades"),
        "// custom\nAPT::Periodic::Unattended-Upgrade \"0\";\n"
    );
    // A missing variable is an error (strict mode), not an empty string.
    std::fs::write(
        run.path("tpl/20auto-upgrades.hbs"),
        "{{no_such_variable}}\n",
    )
    .unwrap();
    let mut args = vec!["render".to_string(), "--templates".into(), "tpl".into()];
    args.extend(base_args());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run.cmd(&argv);
    assert!(
        !out.status.success() && stderr(&out).contains("no_such_variable"),
        "{}",
        stderr(&out)
    );
    std::fs::write(run.path("tpl/typo.hbs"), "x").unwrap();
    let out = run.cmd(&argv);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_fits_80_columns_and_docs_generate() {
    let run = Run::new();
    for sub in [
        vec!["--help"],
        vec!["render", "--help"],
        vec!["keygen", "--help"],
        vec!["init", "--help"],
        vec!["seed", "--help"],
        vec!["boot", "--help"],
        vec!["verify", "--help"],
        vec!["pack", "--help"],
        vec!["build", "--help"],
        vec!["deploy", "--help"],
        vec!["rollback", "--help"],
        vec!["status", "--help"],
    ] {
        let out = run.cmd(&sub);
        assert!(out.status.success(), "{sub:?}");
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            assert!(
                line.chars().count() <= 80,
                "{sub:?}: line over 80 columns: {line:?}"
            );
        }
    }
    let man = run.cmd(&["docs", "man"]);
    assert!(man.status.success() && String::from_utf8_lossy(&man.stdout).contains(".TH imgforge"));
    let bash = run.cmd(&["docs", "completions", "bash"]);
    assert!(bash.status.success() && String::from_utf8_lossy(&bash.stdout).contains("render"));
}

#[test]
fn hostile_bundle_url_and_sha256_are_refused_or_land_inert() {
    let sha = "a".repeat(64);
    for value in HOSTILE {
        let run = Run::new();
        let mut args: Vec<String> = vec!["render".into()];
        args.extend(base_args());
        args.extend([
            "--bundle-url".into(),
            format!("https://objects.example.com/{value}"),
            "--bundle-sha256".into(),
            sha.clone(),
        ]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run.cmd(&argv);
        if out.status.success() {
            let bundle = &deploy_json(&yaml(&out.stdout))["bundle"];
            assert_eq!(
                bundle["url"].as_str(),
                Some(format!("https://objects.example.com/{value}").as_str())
            );
        } else {
            assert_eq!(out.status.code(), Some(2));
            assert!(stderr(&out).contains("[--bundle-url]"), "{}", stderr(&out));
        }
        assert!(try_flag("--bundle-sha256", value).is_none() || value.is_empty());
    }
}

#[test]
fn ssh_key_lines_with_options_or_hostile_comments() {
    let run = Run::new();
    let public = std::fs::read_to_string(key()).unwrap();
    let body: Vec<&str> = public.split_whitespace().take(2).collect();
    // authorized_keys options in front of the key would run a command at login: refused.
    std::fs::write(
        run.path("opts.pub"),
        format!("command=\"reboot\" {} {}\n", body[0], body[1]),
    )
    .unwrap();
    let out = run.cmd(&["render", "--no-tls", "--ssh-key", "opts.pub"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("[--ssh-key]"));
    // A comment is inert text at the end of the authorized_keys line.
    std::fs::write(
        run.path("c.pub"),
        format!("{} {} $(reboot) `x`; {{y}} %h\n", body[0], body[1]),
    )
    .unwrap();
    let out = run.cmd(&["render", "--no-tls", "--ssh-key", "c.pub"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc = yaml(&out.stdout);
    assert_eq!(
        doc["users"][0]["ssh_authorized_keys"][0].as_str().unwrap(),
        format!("{} {} $(reboot) `x`; {{y}} %h", body[0], body[1])
    );
}

#[test]
fn the_readme_run_command_renders() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.contains("cargo run --release -- render"))
        .expect("README has a run command");
    let render_args: Vec<&str> = line
        .split("cargo run --release -- ")
        .last()
        .unwrap()
        .split_whitespace()
        .collect();
    let run = Run::new();
    let keygen = run.cmd(&["keygen", "--if-missing"]);
    assert!(keygen.status.success());
    let out = run.cmd(&render_args);
    assert!(
        out.status.success(),
        "README's {render_args:?}: {}",
        stderr(&out)
    );
    let written_file = render_args
        .iter()
        .skip_while(|a| **a != "-o")
        .nth(1)
        .unwrap();
    let text = std::fs::read(run.path(written_file)).unwrap();
    cloud_init_schema(&text);
}

/// The VM program as the user-data carries it (minified, zipped) passes the same unit
/// tests as its source, and runs.
#[test]
fn the_shipped_vm_program_passes_its_unit_tests_and_runs() {
    use imgforge::render::program;
    let dir = tempfile::tempdir().unwrap();
    for name in program::files() {
        let path = dir.path().join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, program::shipped_for(&name, program::Needs::ALL)).unwrap();
    }
    let tests = dir.path().join("tests");
    std::fs::create_dir_all(tests.join("fixtures")).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/tests");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), tests.join(entry.file_name())).unwrap();
        }
    }
    // The fixtures, and what the contract tests check against: the schemas and the
    // templates (which read deploy.json's keys the program does not).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (from, to) in [
        (src.join("fixtures"), tests.join("fixtures")),
        (root.join("guest/schema"), dir.path().join("schema")),
        (root.join("templates"), dir.path().join("templates")),
    ] {
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests", "-t", "."])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the shipped program fails its tests:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let zipapp = dir.path().join("imgforge-vm");
    std::fs::write(&zipapp, program::zipapp()).unwrap();
    let out = Command::new("python3")
        .arg(&zipapp)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("run-slot"),
        "python3 imgforge-vm --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // As a document gzipped as a whole brings it: modules, which python3's zipapp puts
    // together on the VM (render::with_program_modules).
    let src = dir.path().join("src");
    let core = program::Needs::CORE;
    for name in program::files_for(core) {
        let path = src.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, program::shipped_for(&name, core)).unwrap();
    }
    let assembled = dir.path().join("assembled");
    let out = Command::new("python3")
        .args(["-m", "zipapp"])
        .arg(&src)
        .arg("-o")
        .arg(&assembled)
        .args(["-p", "/usr/bin/python3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&assembled).arg("--help").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("usage: imgforge-vm"),
        "the assembled program: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--dns`: the token comes from a file only its owner reads, lands 0600 on the VM and
/// nowhere else; bad input is refused with exit 2 and nothing written.
#[test]
fn dns_registration_takes_its_token_from_a_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let run = Run::new();
    let token = run.path("duckdns.token");
    std::fs::write(&token, "d0c0ffee-0000-4000-8000-00000000dd05\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = key();
    let render = |domain: &str, extra: &[&str]| {
        let mut args = vec![
            "render",
            "--domain",
            domain,
            "--email",
            "ops@example.com",
            "--ssh-key",
            &key,
            "--dns",
            "duckdns",
            "-o",
            "out.yaml",
        ];
        args.extend_from_slice(extra);
        run.cmd(&args)
    };
    let out = render(
        "vm1.duckdns.org",
        &["--dns-token-file", token.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("d0c0ffee"), "the token was printed");
    let text = std::fs::read(run.path("out.yaml")).unwrap();
    cloud_init_schema(&text);
    let doc = yaml(&text);
    assert_eq!(
        written(&doc, &imgforge::contract::layout().dns_token),
        "d0c0ffee-0000-4000-8000-00000000dd05\n"
    );
    let dj = deploy_json(&doc);
    assert_eq!(dj["dns"]["provider"], "duckdns");
    assert!(
        !dj.to_string().contains("d0c0ffee"),
        "the token is in deploy.json"
    );

    // Refused, each naming what to do, and nothing written.
    std::fs::remove_file(run.path("out.yaml")).unwrap();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "api.example.com",
            vec!["--dns-token-file", token.to_str().unwrap()],
            "NAME.duckdns.org",
        ),
        ("vm1.duckdns.org", vec![], "--dns-token-file"),
        (
            "vm1.duckdns.org",
            vec!["--dns-token-file", "/nonexistent/token"],
            "reading the DNS token file",
        ),
    ];
    for (domain, extra, needle) in cases {
        let out = render(domain, &extra);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{domain} {extra:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert!(!run.path("out.yaml").exists());
    }
    let empty = run.path("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = render(
        "vm1.duckdns.org",
        &["--dns-token-file", empty.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = render(
        "vm1.duckdns.org",
        &["--dns-token-file", token.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("d0c0ffee"), "the token was printed");
    // DNS without a certificate is allowed.
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run.cmd(&[
        "render",
        "--no-tls",
        "--domain",
        "vm1.duckdns.org",
        "--ssh-key",
        &key,
        "--dns",
        "duckdns",
        "--dns-token-file",
        token.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn env_file_values_reach_the_container_and_env_flags_warn_without_echoing() {
    let run = Run::new();
    std::fs::write(
        run.path("app.env"),
        "# secrets\nTOKEN=from the file\n\nLEVEL=debug\n",
    )
    .unwrap();
    let text = render_ok(&run, &["--env-file", "app.env", "--env", "LEVEL=warn"]);
    let env = written(&yaml(&text), "/etc/imgforge/app.env");
    assert!(env.contains("\nTOKEN=from the file\n"), "{env}");
    assert!(
        env.contains("\nLEVEL=warn\n") && !env.contains("LEVEL=debug"),
        "{env}"
    );
    let mut args = vec!["render".to_string()];
    args.extend(base_args());
    args.extend(["--env".into(), "TOKEN=s3cret".into()]);
    let out = run.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--env-file"),
        "no warning naming --env-file: {err}"
    );
    assert!(!err.contains("s3cret"), "the value was echoed: {err}");
    // A line that is not NAME=VALUE: exit 2, naming the file and the line.
    std::fs::write(run.path("bad.env"), "A=1\njust words\n").unwrap();
    let mut args = vec!["render".to_string()];
    args.extend(base_args());
    args.extend(["--env-file".into(), "bad.env".into()]);
    let out = run.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.env:2"), "{}", stderr(&out));
}

#[test]
fn a_backup_repository_takes_its_passphrase_and_key_from_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let run = Run::new();
    let private = |name: &str, text: &str| {
        let path = run.path(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let passphrase = private("borg.passphrase", "a passphrase of the repository\n");
    let keygen = run.cmd(&["keygen", "-o", run.path("borg_key").to_str().unwrap()]);
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let ssh_key = run.path("borg_key").to_str().unwrap().to_owned();
    let host_pub = std::fs::read_to_string(run.path("borg_key.pub")).unwrap();
    let known = private("known_hosts", &format!("[10.0.2.2]:2222 {host_pub}"));
    let repo = "ssh://root@10.0.2.2:2222/var/backups/imgforge";
    let base = [
        "--backup-repo",
        repo,
        "--backup-passphrase-file",
        &passphrase,
        "--backup-ssh-key-file",
        &ssh_key,
    ];
    let mut args = base.to_vec();
    args.extend(["--backup-known-hosts", &known, "--backup-every", "hourly"]);
    let text = render_ok(&run, &args);
    cloud_init_schema(&text);
    let doc = yaml(&text);
    let layout = imgforge::contract::layout();
    assert_eq!(
        written(&doc, &layout.borg_passphrase),
        "a passphrase of the repository\n"
    );
    assert!(written(&doc, &layout.borg_ssh_key).contains("OPENSSH PRIVATE KEY"));
    assert!(written(&doc, &layout.borg_known_hosts).starts_with("[10.0.2.2]:2222 ssh-ed25519 "));
    for path in [&layout.borg_passphrase, &layout.borg_ssh_key] {
        let file = doc["write_files"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|f| f["path"].as_str() == Some(path))
            .unwrap();
        assert_eq!(file["permissions"].as_str(), Some("0600"), "{path}");
    }
    let dj = deploy_json(&doc);
    assert_eq!(dj["borg"]["repo"], repo);
    assert_eq!(
        (
            dj["borg"]["every"].as_str(),
            dj["borg"]["keep_hourly"].as_u64()
        ),
        (Some("hourly"), Some(24))
    );
    assert!(
        !dj.to_string().contains("passphrase of"),
        "the passphrase is in deploy.json"
    );
    let timer = written(
        &doc,
        &format!("{}/{}", layout.units_dir, layout.units.backup_timer),
    );
    assert!(timer.contains("OnCalendar=hourly"), "{timer}");

    // Refused, each naming the setting and what to do, and nothing written.
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--backup-repo",
                "/var/backups/repo",
                "--backup-passphrase-file",
                &passphrase,
                "--backup-ssh-key-file",
                &ssh_key,
            ],
            "not an ssh:// repository URL",
        ),
        (
            vec![
                "--backup-repo",
                "sftp://u@h/r",
                "--backup-passphrase-file",
                &passphrase,
                "--backup-ssh-key-file",
                &ssh_key,
            ],
            "--backup-repo",
        ),
        (
            vec!["--backup-repo", repo, "--backup-ssh-key-file", &ssh_key],
            "--backup-passphrase-file",
        ),
        (
            vec![
                "--backup-repo",
                repo,
                "--backup-passphrase-file",
                &passphrase,
            ],
            "--backup-ssh-key-file",
        ),
        (
            vec!["--backup-passphrase-file", &passphrase],
            "without a repository",
        ),
        (
            vec![
                "--backup-repo",
                repo,
                "--backup-passphrase-file",
                &ssh_key,
                "--backup-ssh-key-file",
                &passphrase,
            ],
            "not an OpenSSH private key",
        ),
    ];
    // Exit 2, the secrets not shown, nothing written; what it said.
    let refused = |extra: &[&str]| {
        let key = key();
        let mut args = vec![
            "render",
            "--domain",
            "api.example.com",
            "--email",
            "ops@example.com",
            "--ssh-key",
            &key,
            "-o",
            "refused.yaml",
        ];
        args.extend_from_slice(extra);
        let out = run.cmd(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(!err.contains("a passphrase of the"), "{err}");
        assert!(!err.contains("PRIVATE KEY-----"), "{err}");
        assert!(!run.path("refused.yaml").exists());
        err
    };
    for (extra, needle) in cases {
        let err = refused(&extra);
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = refused(&base);
    assert!(
        err.contains("the passphrase file is readable by others (mode 640)")
            && err.contains("--backup-passphrase-file")
            && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn a_metrics_token_opens_metrics_over_https_only_and_node_exporter_on_loopback() {
    use std::os::unix::fs::PermissionsExt;
    let run = Run::new();
    let token = run.path("metrics.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = render_ok(&run, &["--metrics-token-file", token.to_str().unwrap()]);
    cloud_init_schema(&text);
    let doc = yaml(&text);
    let layout = imgforge::contract::layout();
    let auth = written(&doc, &layout.nginx_metrics_auth);
    assert!(
        auth.contains("\"Bearer 0123456789abcdef0123456789abcdef\" \"ok\";"),
        "{auth}"
    );
    let app = written(&doc, &layout.nginx_app);
    assert!(
        app.contains("$imgforge_metrics_auth != \"ok\"") && app.contains("$scheme != \"https\""),
        "{app}"
    );
    assert!(
        !app.contains("0123456789abcdef"),
        "the token is in app.conf"
    );
    // The drop-in the test guest image carries is the one render writes.
    let dropin = written(&doc, &layout.node_exporter_dropin);
    assert!(
        dropin.contains("--web.listen-address=127.0.0.1:9100"),
        "{dropin}"
    );
    let in_image = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/guest/rootfs{}", layout.node_exporter_dropin)),
    )
    .unwrap();
    assert_eq!(dropin, in_image);
    let dj = deploy_json(&doc);
    assert_eq!(dj["metrics"], true);
    assert_eq!(dj["packages"][0]["name"], "prometheus-node-exporter");
    assert!(!dj.to_string().contains("0123456789abcdef"));
    // Without it, /metrics answers 404 and nothing else changes.
    let plain = written(&yaml(&render_ok(&run, &[])), &layout.nginx_app);
    assert!(
        plain.contains("location = /metrics {\n    return 404;\n}"),
        "{plain}"
    );

    // Refused: a short token, a token others can read, a token without HTTPS.
    let refused = |token: &Path, extra: &[&str]| {
        let mut args = vec![
            "render",
            "-o",
            "refused.yaml",
            "--metrics-token-file",
            token.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = run.cmd(&args);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            !stderr(&out).contains("0123456789abcdef"),
            "{}",
            stderr(&out)
        );
        assert!(!run.path("refused.yaml").exists());
        stderr(&out)
    };
    let base = base_args();
    let base: Vec<&str> = base.iter().map(String::as_str).collect();
    let short = run.path("short.token");
    std::fs::write(&short, "abc\n").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = refused(&short, &base);
    assert!(err.contains("16 to 256"), "{err}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused(&token, &base);
    assert!(err.contains("readable by others"), "{err}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = refused(&token, &["--no-tls", "--ssh-key", &key()]);
    assert!(err.contains("in clear"), "{err}");
}

#[test]
fn a_database_url_file_reaches_the_app_environment_only() {
    use std::os::unix::fs::PermissionsExt;
    let run = Run::new();
    let secret = "postgres://app:Sup3r-s3cret@10.0.0.2:5432/history?sslmode=require";
    let file = run.path("database.url");
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write(&file, &format!("{secret}\n"), 0o600);
    let text = render_ok(&run, &["--database-url-file", file.to_str().unwrap()]);
    cloud_init_schema(&text);
    let doc = yaml(&text);
    let layout = imgforge::contract::layout();
    let env = written(&doc, &layout.app_env);
    assert!(
        env.lines().any(|l| l == format!("DATABASE_URL={secret}")),
        "{env}"
    );
    // Only in the app's environment file (0600), in no other file the VM gets.
    let text = String::from_utf8_lossy(&text);
    assert_eq!(text.matches("Sup3r-s3cret").count(), 1, "{text}");
    assert!(!deploy_json(&doc).to_string().contains("Sup3r"));

    // Refused, exit 2, nothing written, the URL never shown: no host, no database, a
    // file others can read, DATABASE_URL set twice.
    let refused = |extra: &[&str]| render_refused(&run, extra, "s3cret");
    let bad = run.path("bad.url");
    let file_arg = ["--database-url-file", bad.to_str().unwrap()];
    write(&bad, "postgres://app:Sup3r-s3cret@/history\n", 0o600);
    let err = refused(&file_arg);
    assert!(
        err.contains("--database-url-file") && err.contains("no host"),
        "{err}"
    );
    write(&bad, "postgres://app:Sup3r-s3cret@db.internal\n", 0o600);
    assert!(refused(&file_arg).contains("no database"));
    write(&bad, &format!("{secret}\n"), 0o644);
    assert!(refused(&file_arg).contains("readable by others"));
    let twice = [
        "--database-url-file",
        file.to_str().unwrap(),
        "--env",
        "DATABASE_URL=postgres://x@y/z",
    ];
    assert!(refused(&twice).contains("DATABASE_URL is set twice"));
}

#[test]
fn a_notify_url_is_told_of_failed_backups_and_renewals_from_a_root_only_file() {
    let run = Run::new();
    let url = "https://hooks.example.com/services/T000/B000/SECRETPART";
    let text = render_ok(&run, &["--notify-url", url]);
    cloud_init_schema(&text);
    let doc = yaml(&text);
    let layout = imgforge::contract::layout();
    assert_eq!(
        written(&doc, &layout.notify_curlrc),
        format!("url = \"{url}\"\n")
    );
    let file = |path: &str| {
        doc["write_files"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|f| f["path"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("{path} is not written"))
            .clone()
    };
    assert_eq!(file(&layout.notify_curlrc)["permissions"], "0600");
    for unit in [&layout.units.backup, &layout.units.certbot] {
        let dropin = written(
            &doc,
            &format!("{}/{unit}.d/imgforge-notify.conf", layout.units_dir),
        );
        assert!(
            dropin.contains("OnFailure=imgforge-notify@%n.service"),
            "{dropin}"
        );
        let message: serde_json::Value = serde_json::from_str(&written(
            &doc,
            &format!("{}/{unit}.json", layout.notify_dir),
        ))
        .unwrap();
        assert_eq!(message["host"], "api.example.com");
        assert_eq!(message["text"], message["content"]);
    }
    let unit = written(
        &doc,
        &format!("{}/{}", layout.units_dir, layout.units.notify),
    );
    assert!(
        unit.contains("--config /etc/imgforge/notify.curlrc"),
        "{unit}"
    );
    // The URL, which may be a secret, is only in curl's root-only configuration.
    let elsewhere: Vec<String> = doc["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|f| f["path"].as_str() != Some(layout.notify_curlrc.as_str()))
        .filter(|f| {
            f["content"]
                .as_str()
                .is_some_and(|c| c.contains("SECRETPART"))
        })
        .map(|f| f["path"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
    assert_eq!(deploy_json(&doc)["notify"], true);
    // Private receivers may be plain http; the internet's may not.
    assert!(!render_ok(&run, &["--notify-url", "http://10.0.2.2:8080/hook"]).is_empty());
    for bad in [
        "http://hooks.example.com/x",
        "ftp://10.0.0.1/x",
        "https://h/a b",
    ] {
        let mut args = vec!["render", "-o", "refused.yaml", "--notify-url", bad];
        let base = base_args();
        args.extend(base.iter().map(String::as_str));
        let out = run.cmd(&args);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("--notify-url"), "{}", stderr(&out));
        assert!(!run.path("refused.yaml").exists());
    }
}

#[test]
fn a_cluster_node_gets_its_role_its_network_and_the_join_token_in_a_root_only_file() {
    use std::os::unix::fs::PermissionsExt;
    let run = Run::new();
    let token =
        "SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx";
    let write = |path: &Path, text: &str, mode: u32| {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let token_file = run.path("swarm.token");
    write(&token_file, &format!("{token}\n"), 0o600);
    let token_arg = token_file.to_str().unwrap();
    let layout = imgforge::contract::layout();
    let daemon = |doc: &serde_yaml_ng::Value| -> serde_json::Value {
        serde_json::from_str(&written(doc, &layout.docker_daemon)).unwrap()
    };

    let text = render_ok(
        &run,
        &[
            "--cluster",
            "init",
            "--cluster-network",
            "10.0.0.0/16",
            "--replicas",
            "3",
        ],
    );
    cloud_init_schema(&text);
    let doc = yaml(&text);
    assert_eq!(
        deploy_json(&doc)["cluster"],
        serde_json::json!({"role": "init", "network": "10.0.0.0/16", "replicas": 3})
    );
    // Swarm mode refuses live-restore. Every node pulls deployed versions from the
    // manager's registry on the private network, over plain HTTP; only the manager runs it.
    assert_eq!(daemon(&doc)["live-restore"], false);
    assert_eq!(
        daemon(&doc)["insecure-registries"],
        serde_json::json!(["10.0.0.0/16"])
    );
    let registry_unit = format!("{}/{}", layout.units_dir, layout.units.registry);
    assert!(written(&doc, &registry_unit).contains(&format!("{} registry", layout.program)));

    let text = render_ok(
        &run,
        &[
            "--cluster",
            "join",
            "--cluster-network",
            "10.0.0.0/16",
            "--manager",
            "10.0.0.2",
            "--join-token-file",
            token_arg,
        ],
    );
    cloud_init_schema(&text);
    let doc = yaml(&text);
    assert_eq!(
        deploy_json(&doc)["cluster"],
        serde_json::json!({"role": "join", "network": "10.0.0.0/16", "manager": "10.0.0.2:2377"})
    );
    assert_eq!(
        written(&doc, &layout.swarm_join_token),
        format!("{token}\n")
    );
    let file = doc["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == Some(&layout.swarm_join_token))
        .unwrap();
    assert_eq!(file["permissions"], "0600");
    assert_eq!(
        daemon(&doc)["insecure-registries"],
        serde_json::json!(["10.0.0.0/16"])
    );
    assert!(!String::from_utf8_lossy(&text).contains(&layout.units.registry));
    let shown = String::from_utf8_lossy(&text);
    assert_eq!(shown.matches("1awxwuwd3z9j1z3puu7rcgdbx").count(), 1);

    // A VM on its own keeps live-restore and has no cluster.
    let doc = yaml(&render_ok(&run, &[]));
    assert_eq!(daemon(&doc)["live-restore"], true);
    assert!(daemon(&doc).get("insecure-registries").is_none());
    assert!(deploy_json(&doc).get("cluster").is_none());

    // Refused, exit 2, nothing written, the token never shown.
    let refused = |extra: &[&str]| render_refused(&run, extra, "1awxwuwd3z9j1z3puu7rcgdbx");
    let net = ["--cluster-network", "10.0.0.0/16"];
    let join = |extra: &[&str]| {
        let mut args = vec!["--cluster", "join"];
        args.extend_from_slice(&net);
        args.extend_from_slice(extra);
        refused(&args)
    };
    let err = join(&["--join-token-file", token_arg]);
    assert!(
        err.contains("--manager") && err.contains("manager's address"),
        "{err}"
    );
    let err = join(&["--manager", "10.0.0.2"]);
    assert!(
        err.contains("--join-token-file") && err.contains("join token"),
        "{err}"
    );
    let err = join(&["--manager", "10.1.0.2", "--join-token-file", token_arg]);
    assert!(
        err.contains("not on the cluster's network 10.0.0.0/16"),
        "{err}"
    );
    write(&token_file, &format!("{token}\n"), 0o644);
    let err = join(&["--manager", "10.0.0.2", "--join-token-file", token_arg]);
    assert!(err.contains("readable by others"), "{err}");
    write(&token_file, "not a token\n", 0o600);
    let err = join(&["--manager", "10.0.0.2", "--join-token-file", token_arg]);
    assert!(err.contains("no swarm join token"), "{err}");
    let err = join(&[
        "--manager",
        "10.0.0.2",
        "--join-token-file",
        token_arg,
        "--replicas",
        "2",
    ]);
    assert!(err.contains("--replicas"), "{err}");
    let err = refused(&[
        "--cluster",
        "init",
        "--cluster-network",
        "10.0.0.0/16",
        "--replicas",
        "0",
    ]);
    assert!(
        err.contains("--replicas") && err.contains("not a replica count"),
        "{err}"
    );
    let err = refused(&["--cluster", "init"]);
    assert!(err.contains("--cluster-network"), "{err}");
    let err = refused(&["--cluster", "init", "--cluster-network", "203.0.113.0/24"]);
    assert!(err.contains("not a private network"), "{err}");
    let err = refused(&[
        "--cluster",
        "init",
        "--cluster-network",
        "10.0.0.0/16",
        "--manager",
        "10.0.0.2",
    ]);
    assert!(err.contains("--manager is for a joining node"), "{err}");
    let err = refused(&["--manager", "10.0.0.2"]);
    assert!(err.contains("--manager without --cluster"), "{err}");
}

/// `render` with the base flags and `extra`, which must be refused: exit 2, nothing
/// written, `secret` in nothing it says. Its stderr.
fn render_refused(run: &Run, extra: &[&str], secret: &str) -> String {
    let mut args = vec!["render", "-o", "refused.yaml"];
    let base = base_args();
    args.extend(base.iter().map(String::as_str));
    args.extend_from_slice(extra);
    let out = run.cmd(&args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
    assert!(!err.contains(secret), "{err}");
    assert!(!run.path("refused.yaml").exists());
    err
}
