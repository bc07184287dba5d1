//! Choosing QEMU's accelerator. KVM can be present and still hang (nested setups), so it
//! is used only when a short probe shows it running guest code; otherwise TCG.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation: slow, works everywhere.
    Tcg,
    /// Hardware virtualization, without probing first.
    Kvm,
    /// KVM if a short probe proves it works, else TCG.
    Auto,
}

/// How long KVM gets to show it runs guest code.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Resolves `Auto` to `Tcg` or `Kvm`, probing KVM with `kernel` (the one the VM will
/// boot, else the host's own if readable). With no kernel to probe with, TCG.
/// Never returns `Auto`.
pub fn resolve(accel: Accel, kernel: Option<&Path>) -> Accel {
    match accel {
        Accel::Auto if kvm_works(kernel, PROBE_TIMEOUT) => Accel::Kvm,
        Accel::Auto => Accel::Tcg,
        other => other,
    }
}

/// QEMU arguments for a resolved accelerator.
pub fn qemu_args(accel: Accel) -> Vec<String> {
    let args: &[&str] = match accel {
        Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
        Accel::Tcg | Accel::Auto => &["-accel", "tcg,tb-size=256", "-cpu", "max"],
    };
    args.iter().map(|s| s.to_string()).collect()
}

/// Starts a Linux kernel under KVM (no disk, no initrd) and waits up to `timeout` for its
/// banner on the serial console. Firmware alone is not proof: where KVM hangs, SeaBIOS
/// still runs and the hang comes once the kernel switches to long mode. The probe process
/// is always killed.
pub fn kvm_works(kernel: Option<&Path>, timeout: Duration) -> bool {
    if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let host_kernel = host_kernel();
    let Some(kernel) = kernel.or(host_kernel.as_deref()) else {
        return false;
    };
    probe(kernel, timeout).unwrap_or(false)
}

fn host_kernel() -> Option<PathBuf> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let path = PathBuf::from(format!("/boot/vmlinuz-{}", release.trim()));
    std::fs::File::open(&path).ok().map(|_| path)
}

fn probe(kernel: &Path, timeout: Duration) -> Result<bool> {
    let dir = tempfile::tempdir().context("creating a directory for the KVM probe")?;
    let log = dir.path().join("serial.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-m", "256",
        ])
        .args(["-nodefaults", "-display", "none", "-no-reboot", "-serial"])
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 for the KVM probe")?;
    let deadline = Instant::now() + timeout;
    let mut works = false;
    while Instant::now() < deadline {
        if std::fs::read(&log).is_ok_and(|b| b.windows(14).any(|w| w == b"Linux version ")) {
            works = true;
            break;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    // A process stuck inside KVM may not die at once; do not wait for it forever.
    let reap_deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < reap_deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(works)
}
