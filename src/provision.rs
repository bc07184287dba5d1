//! `imgforge build --provision`: the base image booted once in QEMU, as Packer's QEMU
//! builder does, with its own kernel and cloud-init and a network, to install the stack
//! and load the app's image; then generalized and powered off by the VM program. The
//! result is an overlay over the base (which stays untouched), baked like any base.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::exit::usage;
use crate::input::Deployment;
use crate::qemu::{Accel, Vm, VmConfig, WaitError};
use crate::seed::{SeedFile, SeedFormat};

/// How to run the provisioning boot.
pub struct Provisioning<'a> {
    pub base: &'a Path,
    /// The spec as the provisioning boot sees it (bundle on its seed, packages online).
    pub spec: &'a Deployment,
    pub bundle: Option<&'a Path>,
    /// The disk's new virtual size, when larger than the base's.
    pub size: Option<u64>,
    /// Direct kernel boot, for test images without a bootloader.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    pub accel: Accel,
    pub timeout: Duration,
    /// Holds the overlay, seed and serial log; kept on failure.
    pub work: &'a Path,
}

/// Room a provisioning boot needs besides the bundle: the packages and their downloads.
const PACKAGES_ROOM: u64 = 1 << 30;

/// Checks what can be known before booting: the size, a root filesystem with cloud-init
/// to run the provisioning, and room for the packages and the bundle (the archive, then
/// its layers unpacked: three times its size, to be safe).
pub fn check_base(base: &Path, size: Option<u64>, bundle: Option<&Path>) -> Result<u64> {
    let info = crate::qemu_img::info(base)?;
    if let Some(size) = size {
        if size < info.virtual_size {
            return Err(usage(format!(
                "--size {} is smaller than the base image's {} ({}): give at least that",
                crate::disk::human(size),
                crate::disk::human(info.virtual_size),
                base.display()
            )));
        }
    }
    let (cloud_init, available) = crate::disk::inspect_root(base, "/usr/bin/cloud-init")?;
    if !cloud_init {
        return Err(usage(format!(
            "base image {} has no cloud-init (/usr/bin/cloud-init): provisioning boots it with a NoCloud seed, so use a cloud image",
            base.display()
        )));
    }
    let size = size.unwrap_or(info.virtual_size);
    let bundle_bytes = match bundle {
        Some(b) => std::fs::metadata(b)
            .with_context(|| format!("reading bundle {}", b.display()))?
            .len(),
        None => 0,
    };
    let room = available.saturating_add(size - info.virtual_size);
    let needed = bundle_bytes.saturating_mul(3).saturating_add(PACKAGES_ROOM);
    if needed > room {
        return Err(usage(format!(
            "the packages and the bundle need about {} and the disk would have {} free: pass a larger --size (e.g. {}G)",
            crate::disk::human(needed),
            crate::disk::human(room),
            (info.virtual_size + needed - room).div_ceil(1 << 30) + 1
        )));
    }
    Ok(size)
}

/// Boots the base with the provisioning seed and waits for it to power itself off.
/// Returns the provisioned overlay.
pub fn run(p: &Provisioning, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let seed = p.work.join("provision-seed.img");
    let user_data = crate::render::provisioning_user_data(p.spec)?;
    let (instance_id, meta) = crate::seed::meta_data(&user_data, "imgforge-provision")?;
    let mut files = vec![
        SeedFile::bytes("user-data", user_data),
        SeedFile::bytes("meta-data", meta),
    ];
    if let Some(bundle) = p.bundle {
        files.push(SeedFile::path(
            &crate::contract::layout().seed_bundle,
            bundle,
        ));
    }
    crate::seed::write_seed(&seed, &files, SeedFormat::Vfat)?;

    let mut cfg = VmConfig::new(p.base, p.work.join("run"));
    cfg.seed = Some(seed);
    cfg.kernel = p.kernel.clone();
    cfg.initrd = p.initrd.clone();
    cfg.append = p.append.clone();
    cfg.accel = p.accel;
    cfg.disk_size = p.size;
    cfg.network = true;
    progress(&format!(
        "provisioning boot ({instance_id}): serial log {}",
        p.work.join("run/serial.log").display()
    ));
    let started = Instant::now();
    let mut vm = Vm::start(&cfg)?;
    // One line per step as the guest reports it (`imgforge: step NAME: starting|ok|…`),
    // with the time since power-on: a log file shows where a long provisioning is.
    let outcome = vm.wait_until(p.timeout, &|_| false, &mut |pr| {
        for (at, line) in &pr.new_lines {
            if let Some(step) = line.split_once("imgforge: step ").map(|(_, s)| s.trim()) {
                progress(&format!("[{:>4}s] {step}", at.as_secs()));
            }
        }
    });
    let status = vm.latest_status();
    match outcome {
        // The VM powers itself off when it is done: QEMU exiting is the normal end.
        Err(WaitError::Exited { .. }) => {}
        Err(WaitError::Timeout { waited }) => {
            let lines = vm.failure_lines(30).join("\n");
            let _ = vm.stop(Duration::from_secs(10));
            anyhow::bail!(
                "provisioning did not finish within {}s; last status {:?}\n{lines}\n(serial log kept in {})",
                waited.as_secs(),
                status.map(|s| s.steps),
                p.work.display()
            );
        }
        Err(e) => return Err(anyhow::Error::new(e).context("provisioning boot")),
        Ok(_) => unreachable!("the wait accepts no status"),
    }
    match status {
        Some(s) if s.provisioned == Some(true) => {
            progress(&format!(
                "provisioned in {:.0}s: {}",
                started.elapsed().as_secs_f64(),
                s.steps
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            Ok::<PathBuf, anyhow::Error>(p.work.join("run/overlay.qcow2"))
        }
        other => {
            let error = other
                .as_ref()
                .and_then(|s| s.error.clone())
                .unwrap_or_else(|| "the VM powered off without reporting".into());
            let mut msg = format!("provisioning failed: {error}");
            if error.contains("Temporary failure resolving") || error.contains("Could not resolve")
            {
                msg.push_str(
                    " (the provisioning VM reached no package mirror: it needs a network)",
                );
            }
            let lines = vm.failure_lines(30).join("\n");
            anyhow::bail!("{msg}\n{lines}\n(serial log kept in {})", p.work.display())
        }
    }
    .context("provisioning the image")
}
