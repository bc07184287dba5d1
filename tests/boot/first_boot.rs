//! The user-data a person would paste, booted for real and checked from outside: first
//! boot deploys everything; tools nobody here wrote find nothing weak; a killed
//! container comes back; a reboot keeps everything; a failed step leaves the firewall on.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::deployment::*;
use crate::security;

/// Quotes, `$`, `%`, spaces and a backslash: must arrive byte-exact in the container.
const ENV_VALUE: &str = r#"it's "quoted" $HOME %h 100% a\b  two  spaces"#;

/// First boot, then everything a user would check; a killed container; a reboot.
#[test]
#[ignore = "boots a VM for minutes: cargo test --test boot -- --ignored"]
fn first_boot_deploys_everything_and_survives_kill_and_reboot() {
    main_scenario(None, "main");
}

/// The same on Debian 13, the nearest release to Ubuntu 24.04 that boots here (nginx 1.26
/// with server_tokens in its own nginx.conf, OpenSSH 10, cloud-init 25, Python 3.13).
#[test]
#[ignore = "boots a VM for minutes: IMGFORGE_SLOW_TESTS=1 tests/ci.sh"]
fn first_boot_on_debian_13_deploys_everything_and_survives_kill_and_reboot() {
    main_scenario(Some("trixie"), "trixie");
}

fn main_scenario(suite: Option<&str>, name: &str) {
    let blue = format!("{}-blue", imgforge::contract::layout().container);
    let greeting = format!("GREETING={ENV_VALUE}");
    let secret = format!("API_TOKEN={}", security::SECRET);
    let mut d = Deployment::seeded_on(suite, name, &["--env", &greeting, "--env", &secret], "");

    // First boot: ready, certificate from Pebble, the classifier answers over HTTPS.
    d.wait_ready_with_certificate();
    let https_at = d.power_on.elapsed();
    let first = d.vm.timings();
    let root = d.pebble_root();
    let about = d.https_json(&root, "/", &[]);
    assert!(
        about.to_string().contains("classifier"),
        "GET / answered {about}"
    );
    let prediction = predict_cat(&d, &root);
    let label = top1(&prediction);
    assert!(
        ["tabby", "tiger cat", "Egyptian cat"]
            .iter()
            .any(|c| label.contains(c)),
        "chelsea.png predicted as {label:?}: {prediction}"
    );

    // From outside, with imgforge's own checker: the host key pinned from the console.
    let report = d.verify(&root);
    assert!(
        report.ok,
        "verify failed: {:#?}",
        report.failed().collect::<Vec<_>>()
    );
    assert!(report.host_authenticated, "the host key was not checked");

    // And with tools nobody here wrote.
    security::check_from_outside(&d, &root);
    security::check_inside(&d, "blue");

    // The env value arrived byte-exact: what Docker gave the container's process.
    let env_json = d.ssh.ok(&format!(
        "sudo docker inspect --format '{{{{json .Config.Env}}}}' {blue}"
    ));
    let env: Vec<String> = serde_json::from_str(env_json.trim()).unwrap();
    assert!(env.contains(&greeting), "container env: {env:?}");

    // The container is killed: systemd brings a new one back.
    let inspect_id = &format!("sudo docker inspect --format '{{{{.Id}}}}' {blue}");
    let before = d.ssh.ok(inspect_id);
    d.ssh.ok(&format!("sudo docker kill {blue}"));
    let killed = Instant::now();
    let cacert = root.to_str().unwrap();
    let back = loop {
        let health = d.curl(
            "https",
            "/health",
            &["--fail", "--cacert", cacert, "-o", "/dev/null"],
        );
        if health.status.success() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(180),
            "the app did not come back within 180 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let after = d.ssh.ok(inspect_id);
    assert_ne!(
        before, after,
        "the same container answered: it was not killed"
    );

    // Reboot: everything comes back, the history survived.
    d.reboot();
    let rebooted = d.wait("the reboot to finish", Duration::from_secs(1200), &|s| {
        s.is_finished()
    });
    assert!(rebooted.is_ready(), "after reboot: {rebooted:?}");
    let reboot_times = d.vm.timings();
    // The certificate nginx serves is the one issued before the reboot: it chains to the
    // root fetched then (Pebble makes a new root each time it starts, Let's Encrypt does not).
    let history = d.https_json(&root, "/history", &[]);
    let text = history.to_string();
    assert!(
        text.contains(&label),
        "history after reboot lost the prediction {label:?}: {text}"
    );
    assert!(d.verify(&root).ok, "verify after reboot failed");

    eprintln!("\n[{name}] boot timings ({:?}):", d.vm.accel());
    eprintln!(
        "  first boot: login prompt {}, cloud-init finished {}, HTTPS serving {:.0}s; overhead over a bare boot {:.1}x",
        secs(first.login_prompt),
        secs(first.finished),
        https_at.as_secs_f64(),
        first
            .login_prompt
            .map_or(0.0, |l| https_at.as_secs_f64() / l.as_secs_f64())
    );
    eprintln!("  killed container back in {:.1}s", back.as_secs_f64());
    eprintln!(
        "  reboot: login prompt {}, finished {}",
        secs(reboot_times.login_prompt),
        secs(reboot_times.finished)
    );
    eprintln!("  one inference: {} ms", prediction["inference_ms"]);
    d.finish();
}

/// The ACME server is down during first boot. HTTP serves the app, the certificate
/// unit keeps retrying, and once the ACME server is up the certificate is obtained and
/// HTTPS served, with nobody logging in.
#[test]
#[ignore = "boots a VM for minutes: cargo test --test boot -- --ignored"]
fn certificate_arrives_when_the_acme_server_comes_up_late() {
    // Pebble starts this long after the guest's early boot: well after first boot ends.
    let mut d = Deployment::seeded("late-acme", &[], "imgforge.test.pebble_delay=600");
    let finished = d.wait("first boot to finish", Duration::from_secs(1800), &|s| {
        s.is_finished()
    });
    assert!(
        finished.is_ready(),
        "first boot did not end ready: {finished:?}"
    );
    assert_eq!(
        finished.certificate.as_deref(),
        Some("pending"),
        "the certificate was not pending at the end of first boot: the ACME server came up too early for this scenario"
    );
    let finished_at = d.power_on.elapsed();
    // Meanwhile HTTP serves the app itself, not a redirect.
    let http = d.curl("http", "/", &["--fail"]);
    assert!(
        http.status.success() && String::from_utf8_lossy(&http.stdout).contains("classifier"),
        "HTTP while pending: {}",
        String::from_utf8_lossy(&http.stdout)
    );
    let https = d.curl("https", "/", &["-k", "-o", "/dev/null"]);
    assert!(
        !https.status.success(),
        "HTTPS answered before there was a certificate"
    );

    let with_cert = d.wait(
        "the certificate after the ACME server came up",
        Duration::from_secs(1800),
        &|s| s.is_ready() && s.certificate.as_deref() == Some("ok"),
    );
    assert!(with_cert.is_ready());
    let root = d.pebble_root();
    let about = d.https_json(&root, "/", &[]);
    assert!(about.to_string().contains("classifier"));
    eprintln!(
        "late ACME: first boot finished at {:.0}s with the certificate pending; HTTPS at {:.0}s",
        finished_at.as_secs_f64(),
        d.power_on.elapsed().as_secs_f64()
    );
    d.finish();
}

/// A step fails (the bundle on the seed is not the one the user-data names): the
/// deployment ends failed, saying why, and the firewall is already on.
#[test]
#[ignore = "boots a VM for minutes: cargo test --test boot -- --ignored"]
fn a_failed_step_leaves_the_firewall_on_and_says_why() {
    let (dir, guest, key) = Deployment::prepare("failed-step");
    let bundle = classifier_bundle(&dir);
    let seed = dir.join("seed.img");
    let mut args: Vec<String> = vec!["seed".into()];
    args.extend(user_flags(&guest, &key, true));
    args.extend(["--bundle".into(), bundle.display().to_string()]);
    args.extend(["-o".into(), seed.display().to_string()]);
    ok(imgforge(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    // Another file in the bundle's place: its sha256 is not the one rendered.
    let other = dir.join("other.tar");
    std::fs::write(&other, pseudo_random(1 << 20, 3)).unwrap();
    run(std::process::Command::new("mcopy")
        .args(["-o", "-i"])
        .arg(&seed)
        .arg(&other)
        .arg(format!("::{}", imgforge::contract::layout().seed_bundle)));

    let mut d = Deployment::boot("failed-step", dir, guest, key, None, Some(&seed), "");
    let done = d.wait("first boot to settle", Duration::from_secs(1800), &|s| {
        s.is_settled()
    });
    assert_eq!(
        done.state,
        imgforge::qemu::State::Failed,
        "a wrong bundle did not fail the deployment: {done:?}"
    );
    assert_eq!(done.steps.get("image").map(String::as_str), Some("failed"));
    assert_eq!(done.steps.get("firewall").map(String::as_str), Some("ok"));
    let error = done.error.clone().unwrap_or_default();
    assert!(
        error.contains("sha256"),
        "the error does not say why: {error:?}"
    );
    let ufw = d.ssh.ok("sudo ufw status verbose");
    assert!(
        ufw.contains("Status: active") && ufw.contains("deny (incoming)"),
        "UFW after a failed step:\n{ufw}"
    );
    d.finish();
}
