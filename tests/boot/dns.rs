//! No manual DNS step: the VM registers its own address with DuckDNS or Cloudflare (their
//! stand-ins in the test guest, on top of a mock DNS server that knows no name until one
//! is registered), and the certificate follows with no step by the test. A wrong token is
//! reported, HTTP still serves, and the token leaks nowhere.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::common::*;
use crate::day_two::status_json;
use crate::deployment::*;

/// The tokens the stand-ins accept (tests/guest/rootfs/usr/local/libexec/imgforge-test-dnsapi).
const DUCKDNS_TOKEN: &str = "d0c0ffee-0000-4000-8000-00000000dd05";
const CLOUDFLARE_TOKEN: &str = "imgforge-test-cloudflare-token-0123456789";

fn boot(name: &str, domain: &str, provider: &str, token: &str) -> Deployment {
    let (dir, guest, key) = Deployment::prepare(name);
    let token_file = dir.join("dns.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bundle = classifier_bundle(&dir);
    let seed = dir.join("seed.img");
    let mut args: Vec<String> = vec!["seed".into()];
    args.extend(user_flags_for(domain, &guest, &key, true));
    args.extend(
        [
            "--dns",
            provider,
            "--dns-token-file",
            token_file.to_str().unwrap(),
            "--dns-api-url",
            "http://127.0.0.1:8081",
            "--bundle",
            bundle.to_str().unwrap(),
            "-o",
            seed.to_str().unwrap(),
        ]
        .map(String::from),
    );
    ok(imgforge(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let mut d = Deployment::boot(
        name,
        dir,
        guest,
        key,
        None,
        Some(&seed),
        "imgforge.test.dns=1",
    );
    d.domain = domain.to_owned();
    d
}

fn registers_then_gets_a_certificate(name: &str, domain: &str, provider: &str, token: &str) {
    let mut d = boot(name, domain, provider, token);
    let st = d.wait_ready_with_certificate();
    let status = status_json(&d);
    assert_eq!(status.dns.as_deref(), Some("ok"), "{status:?}");
    assert!(st.is_ready());
    let root = d.pebble_root();
    let about = d.https_json(&root, "/", &[]);
    assert!(about.to_string().contains("classifier"), "{about}");
    eprintln!(
        "[{name}] registered with {provider} and served HTTPS {:.0}s after power-on",
        d.power_on.elapsed().as_secs_f64()
    );
    d.finish();
}

/// The slow tier: CI boots Cloudflare's registration, and DuckDNS's request in the
/// refused-token test below.
#[test]
#[ignore = "boots a VM for minutes: IMGFORGE_SLOW_TESTS=1 tests/ci.sh"]
fn duckdns_registration_then_the_certificate_with_no_step_by_anyone() {
    registers_then_gets_a_certificate(
        "dns-duckdns",
        "imgforge-test.duckdns.org",
        "duckdns",
        DUCKDNS_TOKEN,
    );
}

#[test]
#[ignore = "boots a VM for minutes: cargo test --test boot -- --ignored"]
fn cloudflare_registration_then_the_certificate_with_no_step_by_anyone() {
    registers_then_gets_a_certificate(
        "dns-cloudflare",
        "api.imgforge-dns.test",
        "cloudflare",
        CLOUDFLARE_TOKEN,
    );
}

#[test]
#[ignore = "boots a VM for minutes: IMGFORGE_SLOW_TESTS=1 tests/ci.sh"]
fn a_refused_token_is_reported_http_serves_and_nothing_leaks() {
    let wrong = "ffffffff-0000-4000-8000-0000000bad00";
    let domain = "imgforge-test.duckdns.org";
    let mut d = boot("dns-refused", domain, "duckdns", wrong);
    let finished = d.wait("first boot to finish", Duration::from_secs(1800), &|s| {
        s.is_finished()
    });
    assert!(
        finished.is_ready(),
        "the deploy failed because of DNS: {finished:?}"
    );
    let status = status_json(&d);
    assert_eq!(status.dns.as_deref(), Some("refused"), "{status:?}");
    assert!(
        status.dns_detail.as_deref().unwrap_or("").contains("KO"),
        "{status:?}"
    );
    assert_eq!(status.certificate.as_deref(), Some("pending"), "{status:?}");
    // Nothing registered the name: it does not resolve, even inside the VM.
    let lookup = d.ssh.run(&format!("getent hosts {domain}"));
    assert!(
        !lookup.status.success(),
        "{domain} resolves without a registration"
    );
    // HTTP serves the app meanwhile.
    let http = d.curl("http", "/", &["--fail"]);
    assert!(
        String::from_utf8_lossy(&http.stdout).contains("classifier"),
        "HTTP: {}",
        String::from_utf8_lossy(&http.stdout)
    );
    // The token is on the VM in one root-only file, and in no log, status or journal.
    let (files, journal) = d.ssh.leaks(wrong);
    assert!(files.is_empty(), "the token is in {files:?}");
    assert_eq!(journal, 0, "the token is in the journal");
    let mode = d.ssh.ok(&format!(
        "sudo stat -c '%a %U' {}",
        imgforge::contract::layout().dns_token
    ));
    assert_eq!(mode.trim(), "600 root");
    d.finish();
}
