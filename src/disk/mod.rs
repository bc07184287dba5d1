//! Baking files into a copy of a cloud disk image (`imgforge build`): the base is
//! converted to a raw work file, its ext4 root is found by reading the partition table,
//! files are written with e2fsprogs' debugfs, and the result is converted to the output.

pub mod ext4;
pub mod partition;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::exit::usage;

/// Room kept free beyond the files themselves: extent blocks, directory growth and
/// a little for the first boot before the root filesystem is grown.
const MARGIN_BYTES: u64 = 4 << 20;

/// The output image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

/// A file to put into the image, owned by root.
#[derive(Debug, Clone)]
pub struct DiskFile {
    /// Absolute path in the image (letters, digits, `._-+@/` only).
    pub path: String,
    pub source: Source,
    /// Permission bits, e.g. 0o600.
    pub mode: u32,
}

impl DiskFile {
    pub fn bytes(path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> DiskFile {
        DiskFile {
            path: path.to_string(),
            source: Source::Bytes(bytes.into()),
            mode,
        }
    }
    pub fn path(path: &str, source: impl Into<PathBuf>, mode: u32) -> DiskFile {
        DiskFile {
            path: path.to_string(),
            source: Source::Path(source.into()),
            mode,
        }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    /// The base cloud image (qcow2 or raw); only read.
    pub base: PathBuf,
    pub output: PathBuf,
    pub format: Format,
    pub files: Vec<DiskFile>,
    /// Timestamp for everything written; `None`: `SOURCE_DATE_EPOCH`, else the base
    /// filesystem's last write time, so the same inputs give the same image.
    pub epoch: Option<u64>,
    /// qcow2 output compressed (`qemu-img convert -c`): smaller to upload, slower to write.
    pub compress: bool,
}

/// What was built.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub base_format: String,
    pub virtual_size: u64,
    pub root: partition::RootFs,
    pub table: partition::Table,
    /// Bytes written into the filesystem.
    pub written: u64,
    /// Bytes the filesystem had available before.
    pub available: u64,
    pub epoch: u64,
}

/// Builds `plan.output` from `plan.base` with `plan.files` added. `progress` gets one
/// line per phase. The output appears atomically, mode 0600 (it may hold keys); on
/// failure nothing is left behind and the base is untouched.
pub fn build(plan: &BuildPlan, progress: &mut dyn FnMut(&str)) -> Result<BuildReport> {
    let qemu_img = crate::qemu_img::find()?;
    for f in &plan.files {
        check_guest_path(&f.path)?;
    }
    let base = &plan.base;
    if !base.is_file() {
        return Err(usage(format!(
            "base image {} does not exist",
            base.display()
        )));
    }
    if let (Ok(a), Ok(b)) = (base.canonicalize(), plan.output.canonicalize()) {
        if a == b {
            return Err(usage(format!(
                "the output {} is the base image: the base is never modified, write elsewhere",
                plan.output.display()
            )));
        }
    }
    let crate::qemu_img::Info {
        format: base_format,
        virtual_size,
    } = crate::qemu_img::info(base)?;
    if base_format != "qcow2" && base_format != "raw" {
        return Err(usage(format!(
            "base image {} is {base_format}: imgforge build reads qcow2 or raw (convert it with qemu-img convert -O qcow2)",
            base.display()
        )));
    }

    let out_dir = match plan.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !out_dir.is_dir() {
        return Err(usage(format!(
            "the output directory {} does not exist",
            out_dir.display()
        )));
    }
    // The work copy lives next to the output so the final rename stays on one filesystem.
    let work = tempfile::Builder::new()
        .prefix(".imgforge-build-")
        .suffix(".raw")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(&out_dir)
        .with_context(|| format!("creating a work file in {}", out_dir.display()))?;
    progress(&format!(
        "converting {} ({base_format}, {} virtual) to a raw work copy",
        base.display(),
        human(virtual_size)
    ));
    run_tool(
        Command::new(&qemu_img)
            .args(["convert", "-f", &base_format, "-O", "raw"])
            .arg(base)
            .arg(work.path()),
        "qemu-img convert",
    )?;
    set_private(work.path())?;

    let (table, root, device) = root_of(work.path(), base)?;
    let stats = ext4::stats(&device).map_err(|e| {
        if crate::exit::code_for(&e) == crate::exit::USAGE {
            e
        } else {
            usage(format!(
                "base image {}: reading its root filesystem: {e:#}",
                base.display()
            ))
        }
    })?;
    // dumpe2fs reads the same superblock: numbers that disagree with it, or more free
    // blocks than there are, mean a damaged one.
    if stats.block_size != root.fs.block_size || stats.free_blocks > root.fs.blocks {
        return Err(usage(format!(
            "base image {}: the root filesystem's superblock is inconsistent ({} free blocks of {} bytes; {} blocks of {} bytes in all): run e2fsck on the base first",
            base.display(),
            stats.free_blocks,
            stats.block_size,
            root.fs.blocks,
            root.fs.block_size
        )));
    }
    progress(&format!(
        "root filesystem: partition {} {:?} label {:?} at byte {}, {}, {} available",
        root.partition.number,
        root.partition.name,
        root.fs.label,
        root.partition.offset,
        human(root.fs.bytes()),
        human(stats.available_bytes())
    ));
    if stats.features.iter().any(|f| f == "needs_recovery") || stats.state != "clean" {
        return Err(usage(format!(
            "the root filesystem of {} was not cleanly unmounted (state {:?}{}): run e2fsck on the base first",
            base.display(),
            stats.state,
            if stats.features.iter().any(|f| f == "needs_recovery") {
                ", journal needs recovery"
            } else {
                ""
            }
        )));
    }

    let staging = tempfile::Builder::new()
        .prefix("imgforge-build-")
        .tempdir()
        .context("creating a staging directory")?;
    let mut written = 0u64;
    let mut needed = MARGIN_BYTES;
    let mut staged = Vec::new();
    for (i, f) in plan.files.iter().enumerate() {
        // debugfs reads each file from a staged name without spaces or quotes, so no
        // user path is ever parsed by debugfs' command line.
        let name = staging.path().join(format!("f{i}"));
        let len = match &f.source {
            Source::Bytes(b) => {
                crate::fsutil::write_file_atomic(&name, b, 0o600)?;
                b.len() as u64
            }
            Source::Path(p) => {
                let meta = std::fs::metadata(p)
                    .with_context(|| format!("reading {}", p.display()))
                    .map_err(|e| usage(format!("{e:#}")))?;
                if !meta.is_file() {
                    return Err(usage(format!("{} is not a regular file", p.display())));
                }
                let abs = std::fs::canonicalize(p)
                    .with_context(|| format!("resolving {}", p.display()))?;
                std::os::unix::fs::symlink(&abs, &name)
                    .with_context(|| format!("linking {} for debugfs", abs.display()))?;
                meta.len()
            }
        };
        // Saturating: a sum that wrapped would let an oversized write through.
        written = written.saturating_add(len);
        needed = needed
            .saturating_add(
                len.div_ceil(stats.block_size)
                    .saturating_mul(stats.block_size),
            )
            .saturating_add(len / 100);
        staged.push((f, name, len));
    }
    if needed > stats.available_bytes() {
        return Err(usage(format!(
            "the root filesystem of {} has {} available but the files need {} (with {} margin): use a base image with more free space or a smaller bundle",
            base.display(),
            human(stats.available_bytes()),
            human(needed),
            human(MARGIN_BYTES)
        )));
    }

    let epoch = match plan.epoch {
        Some(e) => e,
        None => source_date_epoch()?.unwrap_or(root.fs.write_time),
    }
    .max(1);

    let script = script(&device, &staged)?;
    let script_path = staging.path().join("commands");
    crate::fsutil::write_file_atomic(&script_path, script.as_bytes(), 0o600)?;
    progress(&format!(
        "writing {} file(s), {}, into the root filesystem (timestamps {epoch})",
        staged.len(),
        human(written)
    ));
    ext4::run_script(&device, &script_path, epoch)?;
    for (f, _, len) in &staged {
        let inode = ext4::stat(&device, &f.path)?
            .with_context(|| format!("{} is missing after debugfs wrote it", f.path))?;
        if inode.kind != ext4::Kind::Regular
            || inode.size != *len
            || inode.mode != f.mode
            || inode.uid != 0
            || inode.gid != 0
        {
            bail!(
                "{} reads back as {inode:?} after debugfs wrote {len} bytes mode {:o}",
                f.path,
                f.mode
            );
        }
    }

    progress(&format!(
        "writing {} ({})",
        plan.output.display(),
        plan.format.as_str()
    ));
    match plan.format {
        // The work file already is the raw image: renaming it saves a full copy.
        Format::Raw => {
            sync(work.path())?;
            work.persist(&plan.output).with_context(|| {
                format!("renaming the work file onto {}", plan.output.display())
            })?;
        }
        Format::Qcow2 => {
            let out = tempfile::Builder::new()
                .prefix(".imgforge-build-")
                .suffix(".qcow2")
                .permissions(std::fs::Permissions::from_mode(0o600))
                .tempfile_in(&out_dir)
                .with_context(|| format!("creating a temporary file in {}", out_dir.display()))?;
            let mut convert = Command::new(&qemu_img);
            convert.args(["convert", "-f", "raw", "-O", "qcow2"]);
            if plan.compress {
                convert.arg("-c");
            }
            run_tool(convert.arg(work.path()).arg(out.path()), "qemu-img convert")?;
            set_private(out.path())?;
            sync(out.path())?;
            out.persist(&plan.output).with_context(|| {
                format!("renaming a temporary file onto {}", plan.output.display())
            })?;
        }
    }
    Ok(BuildReport {
        base_format,
        virtual_size,
        root,
        table,
        written,
        available: stats.available_bytes(),
        epoch,
    })
}

/// What a base's root filesystem holds: whether `path` is a regular file in it, and the
/// bytes still free for files. Reads a raw copy made in the system's temporary directory.
pub fn inspect_root(base: &Path, path: &str) -> Result<(bool, u64)> {
    let info = crate::qemu_img::info(base)?;
    let work = tempfile::Builder::new()
        .prefix(".imgforge-inspect-")
        .suffix(".raw")
        .tempfile()
        .context("creating a work file")?;
    run_tool(
        Command::new(crate::qemu_img::find()?)
            .args(["convert", "-f", &info.format, "-O", "raw"])
            .arg(base)
            .arg(work.path()),
        "qemu-img convert",
    )?;
    let (_, _, device) = root_of(work.path(), base)?;
    let found = ext4::stat(&device, path)?.is_some_and(|i| i.kind == ext4::Kind::Regular);
    Ok((found, ext4::stats(&device)?.available_bytes()))
}

/// The root filesystem of `work`, a raw copy of `base`, and its debugfs device; an image
/// without one is the user's to fix (exit 2).
fn root_of(work: &Path, base: &Path) -> Result<(partition::Table, partition::RootFs, String)> {
    let (table, root) = partition::find_root(work)
        .map_err(|e| usage(format!("base image {}: {e:#}", base.display())))?;
    let Some(root) = root else {
        return Err(usage(format!(
            "base image {} has no ext4 root filesystem (partition table: {table:?}); imgforge build needs a cloud image whose root is ext4, such as Ubuntu's",
            base.display()
        )));
    };
    let device = ext4::device(work, root.partition.offset)?;
    Ok((table, root, device))
}

/// The debugfs commands that create missing parent directories (0755) and write each
/// file, replacing one already there, then set its mode and root ownership.
fn script(device: &str, files: &[(&DiskFile, PathBuf, u64)]) -> Result<String> {
    let mut s = String::new();
    let mut made: Vec<String> = Vec::new();
    for (f, staged, _) in files {
        let mut dir = String::new();
        let parts: Vec<&str> = f.path.split('/').filter(|p| !p.is_empty()).collect();
        let (dirs, _) = parts.split_at(parts.len() - 1);
        for part in dirs {
            dir.push('/');
            dir.push_str(part);
            if made.contains(&dir) {
                continue;
            }
            match ext4::stat(device, &dir)? {
                Some(i) if i.kind == ext4::Kind::Directory => {}
                Some(_) => {
                    return Err(usage(format!(
                        "{dir} in the base image is not a directory: cannot write {}",
                        f.path
                    )))
                }
                None => {
                    s += &format!(
                        "mkdir {dir}\nsif {dir} mode 040755\nsif {dir} uid 0\nsif {dir} gid 0\n"
                    );
                }
            }
            made.push(dir.clone());
        }
        match ext4::stat(device, &f.path)? {
            None => {}
            Some(i) if i.kind == ext4::Kind::Regular => s += &format!("rm {}\n", f.path),
            Some(_) => {
                return Err(usage(format!(
                    "{} in the base image is not a regular file",
                    f.path
                )))
            }
        }
        let staged = staged
            .to_str()
            .context("the staging directory path is not UTF-8")?;
        if staged.contains(char::is_whitespace) || staged.contains('"') {
            bail!("the staging path {staged:?} cannot be passed to debugfs");
        }
        s += &format!(
            "write {staged} {p}\nsif {p} mode 0100{m:03o}\nsif {p} uid 0\nsif {p} gid 0\n",
            p = f.path,
            m = f.mode & 0o7777
        );
    }
    Ok(s)
}

/// Syncs by path: qemu-img may have replaced the file behind an open handle.
fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// qemu-img may recreate its target with the umask's mode; images can hold keys.
fn set_private(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 600 on {}", path.display()))
}

fn check_guest_path(p: &str) -> Result<()> {
    let ok = p.starts_with('/')
        && p.len() > 1
        && !p.ends_with('/')
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@' | '/'))
        && !p.split('/').any(|c| c == "." || c == "..");
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "{p:?} is not a path imgforge writes into an image (absolute, letters, digits, ._-+@)"
        )))
    }
}

fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse().map(Some).map_err(|_| {
            usage(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
            ))
        }),
        _ => Ok(None),
    }
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if msg.is_empty() {
            msg = format!("exit status {}", out.status);
        }
        bail!("{what} failed: {msg}");
    }
    Ok(())
}

/// A byte count for people: 1.5 GiB, 12.0 MiB, 900 B.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Writes `line` to stderr prefixed the way `imgforge build` reports its phases.
pub fn stderr_progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "imgforge build: {line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_checked_before_reaching_debugfs() {
        assert!(check_guest_path(&crate::contract::layout().system_cloud_config).is_ok());
        assert!(check_guest_path(&crate::contract::layout().baked_bundle).is_ok());
        for bad in [
            "relative",
            "/a b",
            "/a/../etc/shadow",
            "/",
            "/x\ny",
            "/a/",
            "/\"q",
        ] {
            let err = check_guest_path(bad).unwrap_err();
            assert_eq!(crate::exit::code_for(&err), crate::exit::USAGE, "{bad:?}");
        }
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human(900), "900 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(10 << 30), "10.0 GiB");
    }
}
