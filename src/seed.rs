//! The NoCloud seed disk: a small volume labelled CIDATA holding `user-data`,
//! `meta-data`, optionally `network-config` and the OCI bundle, that cloud-init finds
//! on first boot. imgforge writes the FAT image itself, byte for byte reproducible.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::exit::usage;

/// The filesystem label cloud-init's NoCloud datasource looks for.
pub const LABEL: &str = "CIDATA";

/// Fixed FAT volume serial: a seed disk's bytes depend only on its files.
const VOLUME_ID: u32 = 0x1A6F_0CE5;

const MIB: u64 = 1024 * 1024;
/// Below this FAT16 would need clusters smaller than a sector; small seeds are
/// padded up to it (the file is sparse, so the padding costs no disk space).
const MIN_VOLUME: u64 = 8 * MIB;
/// Above this the volume is FAT32: FAT16 would need clusters over 8 KiB.
const FAT16_MAX_VOLUME: u64 = 512 * MIB;
/// A seed disk is written in one go; refuse anything FAT32 cannot hold sensibly.
const MAX_VOLUME: u64 = 64 * 1024 * MIB;

/// One file placed at the root of the seed disk.
#[derive(Debug, Clone)]
pub struct SeedFile {
    /// The file name on the seed disk, e.g. `user-data`.
    pub name: String,
    /// Where its content comes from.
    pub source: SeedSource,
}

/// The content of a [`SeedFile`].
#[derive(Debug, Clone)]
pub enum SeedSource {
    /// Content held in memory (user-data, meta-data).
    Bytes(Vec<u8>),
    /// A host file streamed onto the disk (the OCI bundle), never loaded whole.
    Path(PathBuf),
}

impl SeedFile {
    /// A seed file with in-memory content.
    pub fn bytes(name: impl Into<String>, content: impl Into<Vec<u8>>) -> Self {
        SeedFile {
            name: name.into(),
            source: SeedSource::Bytes(content.into()),
        }
    }

    /// A seed file copied from a host path when the disk is written.
    pub fn path(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        SeedFile {
            name: name.into(),
            source: SeedSource::Path(path.into()),
        }
    }

    fn len(&self) -> Result<u64> {
        match &self.source {
            SeedSource::Bytes(b) => Ok(b.len() as u64),
            SeedSource::Path(p) => {
                let meta = fs::metadata(p)
                    .with_context(|| format!("reading seed file {}", p.display()))?;
                if !meta.is_file() {
                    return Err(usage(format!(
                        "seed file {} is not a regular file",
                        p.display()
                    )));
                }
                Ok(meta.len())
            }
        }
    }
}

/// The on-disk format of a seed disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeedFormat {
    /// A raw FAT volume (FAT16, or FAT32 for large bundles), written by imgforge.
    #[default]
    Vfat,
    /// An ISO 9660 image with Joliet and Rock Ridge, written by `xorriso`.
    Iso9660,
}

/// The NoCloud `meta-data` for a user-data: a new instance-id whenever the user-data
/// changes (cloud-init then runs it as a new instance), and the hostname.
pub fn meta_data(user_data: &str, hostname: &str) -> Result<(String, String)> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "kebab-case")]
    struct MetaData<'a> {
        instance_id: &'a str,
        local_hostname: &'a str,
    }
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(user_data.as_bytes()));
    let instance_id = format!("imgforge-{}", &digest[..16]);
    let yaml = serde_yaml_ng::to_string(&MetaData {
        instance_id: &instance_id,
        local_hostname: hostname,
    })?;
    Ok((instance_id, yaml))
}

/// Writes a seed disk in the given format to `out`, atomically and readable by its
/// owner only (it holds the app's environment, maybe a host key): the same files always
/// give the same bytes.
pub fn write_seed(out: &Path, files: &[SeedFile], format: SeedFormat) -> Result<()> {
    check_names(files)?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Written inside a private directory (0700) next to the output, then renamed: no
    // one else can open it while it is written, whatever mode xorriso gives its file.
    let private = tempfile::Builder::new()
        .prefix(".imgforge-seed-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a temporary directory in {}", dir.display()))?;
    let tmp = private.path().join("seed");
    match format {
        SeedFormat::Vfat => {
            let file = fs::OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            write_vfat(&file, files)
                .with_context(|| format!("writing seed disk {}", out.display()))?
        }
        SeedFormat::Iso9660 => write_iso(&tmp, files)
            .with_context(|| format!("writing seed disk {}", out.display()))?,
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", out.display()))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", out.display()))?;
    fs::rename(&tmp, out)
        .with_context(|| format!("renaming a temporary file onto {}", out.display()))?;
    Ok(())
}

/// Names must be usable as FAT long names and unique ignoring case, since FAT
/// (and cloud-init reading it through the kernel's vfat) folds case.
fn check_names(files: &[SeedFile]) -> Result<()> {
    let mut seen = HashSet::new();
    for f in files {
        let name = f.name.as_str();
        let bad_char = name
            .chars()
            .find(|c| c.is_control() || "/\\:*?\"<>|".contains(*c));
        if name.is_empty() || name == "." || name == ".." || name.len() > 255 {
            return Err(usage(format!("invalid seed file name {name:?}")));
        }
        if let Some(c) = bad_char {
            return Err(usage(format!(
                "invalid seed file name {name:?}: it contains {c:?}"
            )));
        }
        if name.starts_with(' ') || name.ends_with(' ') || name.ends_with('.') {
            return Err(usage(format!(
                "invalid seed file name {name:?}: FAT drops leading spaces and trailing dots or spaces"
            )));
        }
        if !seen.insert(name.to_lowercase()) {
            return Err(usage(format!("seed file {name:?} is given twice")));
        }
    }
    Ok(())
}

#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 2000,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

/// The volume size and FAT layout for the given file sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FatGeometry {
    volume_bytes: u64,
    fat32: bool,
    cluster: u32,
}

fn fat_geometry(sizes: &[u64]) -> Result<FatGeometry> {
    // Size for the worst cluster rounding (32 KiB per file), directory entries
    // and FATs, plus slack so cloud-init never sees a full disk.
    let content: u64 = sizes
        .iter()
        .map(|s| s.div_ceil(32 * 1024) * 32 * 1024)
        .sum();
    let wanted = content + content / 16 + 2 * MIB;
    let volume_bytes = wanted.div_ceil(MIB).max(MIN_VOLUME / MIB) * MIB;
    if volume_bytes > MAX_VOLUME {
        bail!(
            "the seed files total {} MiB, more than a seed disk holds ({} MiB)",
            content / MIB,
            MAX_VOLUME / MIB
        );
    }
    if volume_bytes <= FAT16_MAX_VOLUME {
        // 4 KiB clusters where FAT16's 4085-cluster minimum allows (fewer FAT
        // updates per MiB copied), smaller on small volumes, larger where the
        // 65524-cluster maximum demands.
        let mut cluster = 4096u32;
        while cluster > 512 && volume_bytes / u64::from(cluster) < 4_300 {
            cluster /= 2;
        }
        while volume_bytes / u64::from(cluster) > 65_000 {
            cluster *= 2;
        }
        Ok(FatGeometry {
            volume_bytes,
            fat32: false,
            cluster,
        })
    } else {
        Ok(FatGeometry {
            volume_bytes,
            fat32: true,
            cluster: if volume_bytes <= 8 * 1024 * MIB {
                4096
            } else {
                16384
            },
        })
    }
}

fn write_vfat(file: &fs::File, files: &[SeedFile]) -> Result<()> {
    let sizes = files
        .iter()
        .map(SeedFile::len)
        .collect::<Result<Vec<_>>>()?;
    let layout = fat_geometry(&sizes)?;
    let mut disk = file;
    disk.set_len(0).context("truncating the image")?;
    disk.set_len(layout.volume_bytes)
        .context("sizing the image")?;
    disk.seek(SeekFrom::Start(0))?;

    let mut label = [b' '; 11];
    label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
    let options = fatfs::FormatVolumeOptions::new()
        .volume_label(label)
        .volume_id(VOLUME_ID)
        .fat_type(if layout.fat32 {
            fatfs::FatType::Fat32
        } else {
            fatfs::FatType::Fat16
        })
        .bytes_per_cluster(layout.cluster);
    fatfs::format_volume(disk, options).context("formatting the FAT volume")?;

    let fs = fatfs::FileSystem::new(
        &mut disk,
        fatfs::FsOptions::new()
            .time_provider(&FIXED_TIME)
            .update_accessed_date(false),
    )
    .context("opening the new FAT volume")?;
    let root = fs.root_dir();
    for (f, size) in files.iter().zip(&sizes) {
        let mut dst = root
            .create_file(&f.name)
            .with_context(|| format!("creating {} on the seed disk", f.name))?;
        let copied = match &f.source {
            SeedSource::Bytes(b) => {
                dst.write_all(b)
                    .with_context(|| format!("writing {} to the seed disk", f.name))?;
                b.len() as u64
            }
            SeedSource::Path(p) => {
                let src = fs::File::open(p)
                    .with_context(|| format!("opening seed file {}", p.display()))?;
                // Copy only the size the layout was planned for: a file growing
                // underneath must not overflow the volume.
                let mut src = src.take(*size);
                let mut buf = vec![0u8; 1024 * 1024];
                let mut n = 0u64;
                loop {
                    let k = src
                        .read(&mut buf)
                        .with_context(|| format!("reading seed file {}", p.display()))?;
                    if k == 0 {
                        break;
                    }
                    dst.write_all(&buf[..k])
                        .with_context(|| format!("writing {} to the seed disk", f.name))?;
                    n += k as u64;
                }
                n
            }
        };
        if copied != *size {
            bail!(
                "seed file {} changed size while it was copied ({} bytes expected, {} copied)",
                f.name,
                size,
                copied
            );
        }
        dst.flush()
            .with_context(|| format!("writing {} to the seed disk", f.name))?;
    }
    drop(root);
    fs.unmount().context("closing the FAT volume")?;
    Ok(())
}

/// Writes an ISO 9660 seed with xorriso, mapping host files in place so the bundle
/// is not copied first. Volume dates come from SOURCE_DATE_EPOCH; file dates,
/// owners and modes are pinned so only the content decides the bytes.
fn write_iso(out: &Path, files: &[SeedFile]) -> Result<()> {
    let staging = tempfile::tempdir().context("creating a staging directory")?;
    let mut cmd = Command::new("xorriso");
    cmd.env("SOURCE_DATE_EPOCH", "946684800")
        .args(["-report_about", "SORRY", "-outdev"])
        .arg(out)
        .args(["-volid", "cidata", "-joliet", "on", "-rockridge", "on"]);
    for (i, f) in files.iter().enumerate() {
        let src = match &f.source {
            SeedSource::Bytes(b) => {
                let p = staging.path().join(format!("f{i}"));
                fs::write(&p, b).with_context(|| format!("writing {}", p.display()))?;
                p
            }
            SeedSource::Path(p) => {
                f.len()?;
                fs::canonicalize(p).with_context(|| format!("reading seed file {}", p.display()))?
            }
        };
        cmd.arg("-map").arg(src).arg(format!("/{}", f.name));
    }
    cmd.args(["-chown_r", "0", "/", "--", "-chgrp_r", "0", "/", "--"])
        .args(["-chmod_r", "a+r,go-w", "/", "--"])
        .args(["-alter_date_r", "b", "2000.01.01.000000", "/", "--"])
        .args(["-alter_date_r", "c", "2000.01.01.000000", "/", "--"])
        .arg("-commit");
    let output = cmd.output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            anyhow::anyhow!("running xorriso: it is not installed (apt install xorriso)")
        }
        _ => anyhow::Error::new(e).context("running xorriso"),
    })?;
    if !output.status.success() {
        bail!(
            "xorriso failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_seeds_are_fat16_at_the_floor() {
        let l = fat_geometry(&[100, 200]).unwrap();
        assert_eq!(l.volume_bytes, MIN_VOLUME);
        assert!(!l.fat32);
        assert_eq!(l.cluster, 1024);
    }

    #[test]
    fn cluster_count_stays_in_fat16_range() {
        for size in [40 * MIB, 200 * MIB, 450 * MIB] {
            let l = fat_geometry(&[size]).unwrap();
            assert!(!l.fat32, "{size}");
            let clusters = l.volume_bytes / u64::from(l.cluster);
            assert!((4085..65_525).contains(&clusters), "{size}: {clusters}");
            assert!(l.volume_bytes > size);
        }
    }

    #[test]
    fn large_seeds_are_fat32() {
        let l = fat_geometry(&[600 * MIB]).unwrap();
        assert!(l.fat32);
        assert!(l.volume_bytes / u64::from(l.cluster) >= 65_525);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_names(&[SeedFile::bytes("a/b", "")]).is_err());
        assert!(check_names(&[SeedFile::bytes("", "")]).is_err());
        assert!(check_names(&[SeedFile::bytes("x", ""), SeedFile::bytes("X", "")]).is_err());
        assert!(check_names(&[
            SeedFile::bytes("user-data", ""),
            SeedFile::bytes("meta-data", ""),
            SeedFile::bytes("bundle.oci.tar", "")
        ])
        .is_ok());
    }
}
