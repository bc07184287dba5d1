//! qemu-img, the one way imgforge reads and writes disk image formats: what an image is
//! (`info`), a copy-on-write overlay in front of a base that stays untouched, and
//! conversions.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::exit::usage;

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// `qcow2`, `raw`, ...
    pub format: String,
    pub virtual_size: u64,
}

/// qemu-img from PATH, or a usage error naming the package.
pub fn find() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-img"))
        .find(|p| p.is_file())
        .ok_or_else(|| usage("qemu-img not found: install qemu-utils (apt-get install qemu-utils)"))
}

/// The format and virtual size of `path`. An image qemu-img cannot read is the user's
/// to fix (exit 2).
pub fn info(path: &Path) -> Result<Info> {
    let out = Command::new(find()?)
        .args(["info", "--output", "json", "-U"])
        .arg(path)
        .output()
        .context("running qemu-img info")?;
    if !out.status.success() {
        return Err(usage(format!(
            "qemu-img cannot read the image {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing qemu-img info output for {}", path.display()))?;
    let format = v
        .get("format")
        .and_then(|f| f.as_str())
        .with_context(|| format!("qemu-img info gave no format for {}", path.display()))?;
    let virtual_size = v
        .get("virtual-size")
        .and_then(|f| f.as_u64())
        .with_context(|| format!("qemu-img info gave no virtual size for {}", path.display()))?;
    Ok(Info {
        format: format.to_owned(),
        virtual_size,
    })
}

/// Creates `overlay` as a qcow2 image backed by `base` (by absolute path, so it works
/// from any directory), `size` bytes large when given (a larger disk than the base; the
/// guest grows its root into it). Replaces an existing overlay.
pub fn create_overlay(
    base: &Path,
    base_format: &str,
    overlay: &Path,
    size: Option<u64>,
) -> Result<()> {
    let base = std::fs::canonicalize(base)
        .with_context(|| format!("resolving disk image {}", base.display()))?;
    if overlay.exists() {
        std::fs::remove_file(overlay)
            .with_context(|| format!("removing old overlay {}", overlay.display()))?;
    }
    let mut cmd = Command::new(find()?);
    cmd.args(["create", "-q", "-f", "qcow2", "-F", base_format, "-b"])
        .arg(&base)
        .arg(overlay);
    if let Some(size) = size {
        cmd.arg(size.to_string());
    }
    run(&mut cmd, "qemu-img create")
}

/// Runs a qemu-img command; its stderr becomes the error.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
