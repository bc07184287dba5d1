//! Day two under faults (the slow tier): under a steady stream of HTTPS requests, the
//! deploy client is killed, with SIGINT and then with SIGKILL, at every phase of a deploy;
//! then the power is cut during a switch and during a drain. After each fault the VM
//! either finished the deploy or kept the version before, by itself; app.json, nginx's
//! upstream and running configuration and the units enabled for boot agree; and after a
//! boot the version it recorded as active serves. Then a version slower to start than any
//! built-in timeout, and a new instance-id: first boot runs again and keeps it all.
//!
//! Each fault lands where it should: the VM program holds a deploy at a phase while
//! /run/imgforge/hold names it (a tmpfs file: a power cut clears it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::day_two::*;
use crate::deployment::*;

const PHASES: [&str; 6] = ["upload", "load", "start", "health", "switch", "drain"];

/// Deploys `bundle`, cuts the power while the deploy is held at `phase`, and waits for
/// the next boot to finish ready.
fn power_cut_at(d: &mut Deployment, phase: &str, bundle: &Path) {
    hold(d, phase);
    let client = Client::spawn(d, "deploy", &["--bundle", bundle.to_str().unwrap()]);
    client.wait_for(&format!("held at {phase}"), Duration::from_secs(900));
    d.vm.power_cut().unwrap();
    drop(client);
    booted(
        d,
        &format!("the boot after the power cut during the {phase}"),
    );
}

#[test]
#[ignore = "boots a VM for tens of minutes: IMGFORGE_SLOW_TESTS=1 tests/ci.sh"]
fn a_killed_client_or_a_power_cut_never_leaves_a_version_nobody_chose() {
    let mut d = Deployment::seeded("faults", &[], "");
    d.wait_ready_with_certificate();
    let root = d.pebble_root();
    let label = top1(&predict_cat(&d, &root));
    let bundles: Vec<(String, PathBuf)> = ["0.2.0", "0.3.0"]
        .iter()
        .map(|v| {
            (
                v.to_string(),
                classifier_version(&d.dir, v, &[], Behaviour::Plain),
            )
        })
        .collect();
    let mut serving = "0.1.0".to_owned();
    let mut expected = vec![serving.clone()];

    // 1. The client killed at each phase: only a cut upload changes nothing; from the
    //    image load on, the deploy is the VM's own and ends there.
    let stream = Stream::start(&d, &root, "kills");
    let mut n = 0;
    for phase in PHASES {
        for signal in ["INT", "KILL"] {
            let (next, bundle) = &bundles[n % 2];
            n += 1;
            hold(&d, phase);
            let client = Client::spawn(&d, "deploy", &["--bundle", bundle.to_str().unwrap()]);
            client.wait_for(&format!("held at {phase}"), Duration::from_secs(900));
            client.kill(signal, &d);
            release(&d);
            settle(&d);
            let now = serving_version(&d);
            let want = if phase == "upload" { &serving } else { next };
            assert_eq!(&now, want, "after SIG{signal} at {phase}");
            eprintln!("SIG{signal} at {phase}: {now} serves, everything agrees");
            if now != serving {
                expected.push(now.clone());
                serving = now;
            }
        }
    }
    let expected_runs: Vec<&str> = expected.iter().map(String::as_str).collect();
    stream.stop_expecting("the killed deploys", &expected_runs);

    // 2. A reboot serves the version recorded as active.
    reboot(&mut d);
    assert_eq!(d.https_json(&root, "/", &[])["version"], serving.as_str());

    // 3. The power cut during the switch (nginx already sends requests to the new slot,
    //    app.json still names the old one): the next boot undoes it.
    let (next, bundle) = &bundles[n % 2];
    n += 1;
    power_cut_at(&mut d, "switch", bundle);
    assert_eq!(d.https_json(&root, "/", &[])["version"], serving.as_str());
    assert_eq!(serving_version(&d), serving);
    let doc = status_json(&d);
    let last = doc.deploys.last().expect("a deploy in status.json");
    assert_eq!(
        (last.version.as_str(), last.result.as_str()),
        (next.as_str(), "interrupted"),
        "{last:?}"
    );

    // 4. The power cut during the drain (app.json names the new slot): the next boot
    //    keeps the new version.
    let (next, bundle) = &bundles[n % 2];
    power_cut_at(&mut d, "drain", bundle);
    assert_eq!(d.https_json(&root, "/", &[])["version"], next.as_str());
    assert_eq!(&serving_version(&d), next);

    // 5. A version slower to start than any built-in timeout deploys; then a new
    //    instance-id (a restored snapshot, a provider's migration): first boot runs again.
    //    It keeps the version that serves (the slow one, given its time again), its data
    //    and its certificate.
    let slow = classifier_version(&d.dir, "0.4.0", &[], Behaviour::SlowStart(SLOW_START));
    let stream = Stream::start(&d, &root, "slow");
    let out = cli(&d, "deploy", &["--bundle", slow.to_str().unwrap()]);
    assert!(out.status.success(), "the deploy of the slow 0.4.0 failed");
    stream.stop_expecting("the deploy of the slow 0.4.0", &[next.as_str(), "0.4.0"]);
    // deploy waited for it (the VM's start allowance, no flag); nothing killed it.
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let healthy_after: f64 = said
        .split("healthy after ")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no health time in {said:?}"));
    assert!(
        healthy_after >= SLOW_START as f64,
        "0.4.0 was healthy after {healthy_after}s: it did not start slowly"
    );
    let certificate = served_certificate(&d);
    d.ssh.ok("sudo cloud-init clean --logs");
    d.reboot();
    let again = d.wait("first boot to run again", Duration::from_secs(2400), &|s| {
        s.is_finished()
    });
    assert!(again.is_ready(), "first boot run again: {again:?}");
    let first_boot = again.first_boot.clone().expect("first_boot in status.json");
    assert_eq!(
        (first_boot.runs, first_boot.kept.as_deref()),
        (2, Some("0.4.0")),
        "{first_boot:?}"
    );
    for step in ["image", "app"] {
        assert_eq!(
            again.steps.get(step).map(String::as_str),
            Some("kept"),
            "{step}"
        );
    }
    assert_eq!(
        served_certificate(&d),
        certificate,
        "the certificate changed"
    );
    let about = d.https_json(&root, "/", &[]);
    assert_eq!(
        about["version"], "0.4.0",
        "after first boot ran again: {about}"
    );
    let history = d.https_json(&root, "/history", &[]).to_string();
    assert!(history.contains(&label), "history lost: {history}");
    let http = d.curl("http", "/", &["-o", "/dev/null", "-w", "%{http_code}"]);
    assert_eq!(
        String::from_utf8_lossy(&http.stdout),
        "301",
        "HTTP serves the API"
    );
    assert_eq!(serving_version(&d), "0.4.0");

    d.finish();
}
