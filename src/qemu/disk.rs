//! Disk images on the host: detecting a base image's format and putting a copy-on-write
//! overlay in front of it, so the base is never written.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The format `qemu-img` detects for `path` (`qcow2`, `raw`, ...).
pub fn detect_format(path: &Path) -> Result<String> {
    let out = Command::new("qemu-img")
        .args(["info", "--output", "json"])
        .arg(path)
        .output()
        .context("running qemu-img (is qemu-utils installed?)")?;
    if !out.status.success() {
        bail!(
            "qemu-img info {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing qemu-img info output for {}", path.display()))?;
    match info.get("format").and_then(|f| f.as_str()) {
        Some(f) => Ok(f.to_string()),
        None => bail!("qemu-img info gave no format for {}", path.display()),
    }
}

/// Creates `overlay` as a qcow2 image backed by `base` (given as an absolute path so
/// the overlay works from any directory). Replaces an existing overlay.
pub fn create_overlay(base: &Path, base_format: &str, overlay: &Path) -> Result<()> {
    let base = std::fs::canonicalize(base)
        .with_context(|| format!("resolving disk image {}", base.display()))?;
    if overlay.exists() {
        std::fs::remove_file(overlay)
            .with_context(|| format!("removing old overlay {}", overlay.display()))?;
    }
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", base_format, "-b"])
        .arg(&base)
        .arg(overlay)
        .output()
        .context("running qemu-img (is qemu-utils installed?)")?;
    if !out.status.success() {
        bail!(
            "qemu-img create {} over {} failed: {}",
            overlay.display(),
            base.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
