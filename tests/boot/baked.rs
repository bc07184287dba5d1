//! `imgforge build`'s image booted with no seed at all: cloud-init finds no datasource but
//! the system configuration, deploys the bundle from the disk, and Pebble issues the
//! certificate; checked from outside with `imgforge verify` and a direct request.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::deployment::*;

/// The baked image boots with no seed and serves HTTPS.
#[test]
#[ignore = "boots a VM for minutes: cargo test --test boot -- --ignored"]
fn baked_image_boots_without_a_seed_and_serves_https() {
    let (dir, guest, key) = Deployment::prepare("baked");
    // It answers only after SLOW_START seconds: first boot gives it its time.
    let bundle = crate::common::apps::webapp_bundle(&dir, Some(crate::day_two::SLOW_START));
    let base = guest.file("disk.qcow2");
    let base_sha = sha256_file(&base);
    let baked = dir.join("baked.qcow2");
    let started = Instant::now();
    let mut args: Vec<String> = vec!["build".into(), "--base".into(), base.display().to_string()];
    args.extend(user_flags(&guest, &key, true));
    args.extend(["--bundle".into(), bundle.display().to_string()]);
    args.extend(["-o".into(), baked.display().to_string()]);
    let res = ok(imgforge(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    eprintln!(
        "{}build took {:.1}s",
        String::from_utf8_lossy(&res.stderr),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(sha256_file(&base), base_sha, "the base image was modified");

    let mut d = Deployment::boot("baked", dir, guest, key, Some(&baked), None, "");
    d.wait_ready_with_certificate();
    let first = d.vm.timings();
    let root = d.pebble_root();
    let https = |path: &str| {
        d.curl(
            "https",
            path,
            &["--fail", "--cacert", root.to_str().unwrap()],
        )
    };
    let serving = loop {
        let out = https("/");
        if out.status.success() {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                crate::common::apps::WEBAPP_INDEX
            );
            break d.power_on.elapsed();
        }
        assert!(
            d.power_on.elapsed() < Duration::from_secs(2400),
            "HTTPS never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert_eq!(String::from_utf8_lossy(&https("/health").stdout), "ok\n");
    let report = d.verify(&root);
    assert!(
        report.ok && report.host_authenticated,
        "verify failed: {:#?}",
        report.failed().collect::<Vec<_>>()
    );

    // It really came from the disk: no seed, cloud-init's fallback datasource, the
    // baked config root-only, and the bundle loaded from its baked path.
    let layout = imgforge::contract::layout();
    let stat = format!("sudo stat -c '%a %U' {}", layout.system_cloud_config);
    let script = [
        "sudo cloud-init query platform",
        stat.as_str(),
        "sudo docker image ls --format '{{.Repository}}:{{.Tag}}'",
    ]
    .join("; echo @@; ");
    let out = d.ssh.ok(&script);
    let parts: Vec<&str> = out.split("@@\n").collect();
    assert_eq!(parts.len(), 3, "unexpected output: {out}");
    let (ds, mode, images) = (parts[0], parts[1], parts[2]);
    assert_eq!(ds.trim(), "none", "datasource platform");
    assert_eq!(mode.trim(), "600 root");
    assert!(images.contains("imgforge/webapp:test"), "{images}");

    eprintln!(
        "baked image ({:?}): login prompt {}, cloud-init finished {}, HTTPS serving after {:.0}s from power-on",
        d.vm.accel(),
        secs(first.login_prompt),
        secs(first.finished),
        serving.as_secs_f64()
    );
    d.finish();
}
