//! Reading and writing an ext4 filesystem inside a raw disk file with e2fsprogs
//! (`dumpe2fs`, `debugfs`), addressed as `disk.raw?offset=BYTES`: no mounts, no loop
//! devices, no root needed beyond write access to the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// What `dumpe2fs -h` says about a filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsStats {
    pub block_size: u64,
    pub free_blocks: u64,
    pub reserved_blocks: u64,
    /// "clean", "not clean", "clean with errors", ...
    pub state: String,
    pub features: Vec<String>,
}

impl FsStats {
    /// Bytes an unprivileged writer could still use: free minus root's reserve.
    /// Saturates: the counts come from the image.
    pub fn available_bytes(&self) -> u64 {
        self.free_blocks
            .saturating_sub(self.reserved_blocks)
            .saturating_mul(self.block_size)
    }
}

/// The kind of an inode, as `debugfs stat` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Directory,
    Other,
}

/// An inode as `debugfs stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

/// An e2fsprogs device name for the filesystem at `offset` in `raw`.
pub fn device(raw: &Path, offset: u64) -> Result<String> {
    let s = raw
        .to_str()
        .with_context(|| format!("disk path {} is not UTF-8", raw.display()))?;
    Ok(format!("{s}?offset={offset}"))
}

/// Finds an e2fsprogs tool: on PATH, or in the sbin directories that a non-root PATH
/// often leaves out.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn need(name: &str) -> Result<PathBuf> {
    tool(name).ok_or_else(|| {
        crate::exit::usage(format!(
            "{name} not found: install e2fsprogs (apt-get install e2fsprogs)"
        ))
    })
}

/// Reads the superblock summary with `dumpe2fs -h`.
pub fn stats(device: &str) -> Result<FsStats> {
    let out = Command::new(need("dumpe2fs")?)
        .arg("-h")
        .arg(device)
        .output()
        .context("running dumpe2fs")?;
    if !out.status.success() {
        bail!(
            "dumpe2fs -h {device} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_stats(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading dumpe2fs -h output for {device}"))
}

fn parse_stats(text: &str) -> Result<FsStats> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    let number = |name: &str| -> Result<u64> {
        let v = field(name).with_context(|| format!("no {name:?} line"))?;
        v.parse()
            .with_context(|| format!("{name:?} is {v:?}, not a number"))
    };
    let block_size = number("Block size")?;
    if !(1024..=65536).contains(&block_size) || !block_size.is_power_of_two() {
        bail!("a block size of {block_size} bytes: ext4 blocks are 1 KiB to 64 KiB");
    }
    Ok(FsStats {
        block_size,
        free_blocks: number("Free blocks")?,
        reserved_blocks: number("Reserved block count").unwrap_or(0),
        state: field("Filesystem state").unwrap_or("").to_string(),
        features: field("Filesystem features")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    })
}

fn debugfs() -> Result<Command> {
    let mut cmd = Command::new(need("debugfs")?);
    // Output is parsed: never page it.
    cmd.env("DEBUGFS_PAGER", "__none__")
        .env("PAGER", "__none__");
    Ok(cmd)
}

/// The inode at `path` in the filesystem, or `None` when nothing is there.
pub fn stat(device: &str, path: &str) -> Result<Option<Inode>> {
    let out = debugfs()?
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(device)
        .output()
        .context("running debugfs")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("File not found by ext2_lookup") {
        return Ok(None);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("Inode:") {
        bail!("debugfs stat {path} on {device} failed: {}", stderr.trim());
    }
    parse_stat(&stdout)
        .with_context(|| format!("reading debugfs stat {path} on {device}"))
        .map(Some)
}

fn parse_stat(text: &str) -> Result<Inode> {
    // "Inode: 14   Type: regular    Mode:  0600   Flags: 0x80000"
    // "User:     0   Group:     0   Project:     0   Size: 3"
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let after = |key: &str| -> Option<&str> {
        tokens
            .iter()
            .position(|t| *t == key)
            .and_then(|i| tokens.get(i + 1).copied())
    };
    let num = |key: &str| -> Result<u64> {
        let v = after(key).with_context(|| format!("no {key} field"))?;
        v.parse()
            .with_context(|| format!("{key} {v:?} is not a number"))
    };
    let kind = match after("Type:") {
        Some("regular") => Kind::Regular,
        Some("directory") => Kind::Directory,
        _ => Kind::Other,
    };
    let mode = after("Mode:").context("no Mode: field")?;
    Ok(Inode {
        kind,
        mode: u32::from_str_radix(mode, 8)
            .with_context(|| format!("mode {mode:?} is not octal"))?,
        uid: num("User:")? as u32,
        gid: num("Group:")? as u32,
        size: num("Size:")?,
    })
}

/// Runs a `debugfs -w -f` command file against `device`, with every timestamp the
/// library writes fixed at `epoch`. Any complaint on stderr is a failure: debugfs exits
/// 0 even when a command in the file fails.
pub fn run_script(device: &str, script: &Path, epoch: u64) -> Result<()> {
    let out = debugfs()?
        .arg("-w")
        .arg("-f")
        .arg(script)
        .arg(device)
        .env("E2FSPROGS_FAKE_TIME", epoch.max(1).to_string())
        .output()
        .context("running debugfs")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !complaints.is_empty() {
        bail!(
            "debugfs -w on {device} failed: {}",
            if complaints.is_empty() {
                stderr.trim().to_string()
            } else {
                complaints.join("; ")
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumpe2fs_header_fields_are_read() {
        let text = "\
Filesystem volume name:   cloudimg-rootfs
Filesystem features:      has_journal ext_attr resize_inode dir_index filetype extent 64bit
Filesystem state:         clean
Reserved block count:     3072
Free blocks:              52180
Block size:               1024
";
        let s = parse_stats(text).unwrap();
        assert_eq!(s.block_size, 1024);
        assert_eq!(s.free_blocks, 52180);
        assert_eq!(s.reserved_blocks, 3072);
        assert_eq!(s.state, "clean");
        assert!(s.features.iter().any(|f| f == "64bit"));
        assert_eq!(s.available_bytes(), (52180 - 3072) * 1024);
        assert!(parse_stats("Block size: 4096\n").is_err());
        for bad in ["0", "512", "3072", "131072"] {
            let err = parse_stats(&format!("Block size: {bad}\nFree blocks: 1\n")).unwrap_err();
            assert!(err.to_string().contains("1 KiB to 64 KiB"), "{bad}: {err}");
        }
        let huge = FsStats {
            free_blocks: u64::MAX,
            ..s
        };
        assert_eq!(huge.available_bytes(), u64::MAX);
    }

    #[test]
    fn debugfs_stat_output_is_read() {
        let text = "\
Inode: 14   Type: regular    Mode:  0600   Flags: 0x80000
Generation: 0    Version: 0x00000000:00000000
User:  1000   Group:    50   Project:     0   Size: 12345
";
        let i = parse_stat(text).unwrap();
        assert_eq!(
            i,
            Inode {
                kind: Kind::Regular,
                mode: 0o600,
                uid: 1000,
                gid: 50,
                size: 12345
            }
        );
        let dir =
            parse_stat("Inode: 2   Type: directory    Mode:  0755\nUser: 0 Group: 0 Size: 4096\n")
                .unwrap();
        assert_eq!(dir.kind, Kind::Directory);
    }
}
