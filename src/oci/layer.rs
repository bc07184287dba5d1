//! Layer contents: the base layer imgforge writes itself, the spec's layers resolved
//! against the files on disk, and the reproducible tar stream of each.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::spec::{ValidFile, ValidSpec};

/// What one tar entry holds.
#[derive(Debug, Clone)]
pub enum Content {
    Dir,
    /// A file on disk and the size it had when the plan was made.
    File {
        path: PathBuf,
        size: u64,
    },
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub content: Content,
}

/// One layer's entries keyed by path without the leading `/` (`app/classifier`).
/// A BTreeMap sorts parents before children, which is also the byte order
/// tar readers expect.
#[derive(Debug, Clone, Default)]
pub struct LayerPlan {
    pub name: String,
    pub entries: BTreeMap<String, Entry>,
    /// Directories the base layer sets up (`/tmp` 1777, volumes owned by the
    /// user): a later layer that touches them must repeat their metadata, or its
    /// tar entry would replace it.
    base_dirs: BTreeMap<String, Entry>,
}

impl LayerPlan {
    /// Bytes of file content, for progress reporting.
    pub fn content_size(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match &e.content {
                Content::File { size, .. } => *size,
                Content::Bytes(b) => b.len() as u64,
                Content::Dir => 0,
            })
            .sum()
    }

    fn dir_entry(&self, path: &str) -> Entry {
        self.base_dirs.get(path).cloned().unwrap_or(Entry {
            mode: 0o755,
            uid: 0,
            gid: 0,
            content: Content::Dir,
        })
    }

    /// Adds an entry and its missing parent directories. A path listed twice, or a
    /// file where a directory must be, is the spec's mistake.
    fn insert(&mut self, path: String, entry: Entry) -> Result<()> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            let parent = &path[..end];
            match self.entries.get(parent) {
                Some(e) if !matches!(e.content, Content::Dir) => {
                    return Err(crate::exit::usage(format!(
                        "layer {:?}: /{parent} is a file, but /{path} needs it to be a directory",
                        self.name
                    )));
                }
                Some(_) => {}
                None => {
                    let dir = self.dir_entry(parent);
                    self.entries.insert(parent.to_owned(), dir);
                }
            }
            end += 1;
        }
        if let Some(old) = self.entries.get(&path) {
            let both_dirs =
                matches!(old.content, Content::Dir) && matches!(entry.content, Content::Dir);
            if !both_dirs {
                return Err(crate::exit::usage(format!(
                    "layer {:?}: /{path} is listed twice (check overlapping file and directory sources)",
                    self.name
                )));
            }
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    fn insert_dir(&mut self, path: String) -> Result<()> {
        let entry = self.dir_entry(&path);
        self.insert(path, entry)
    }
}

/// The base layer: `/etc/passwd` and `/etc/group` naming the service user, `/tmp`
/// (1777), and every volume directory owned by the user so the service can write
/// its data without root.
pub fn base_layer(spec: &ValidSpec) -> Result<LayerPlan> {
    let u = &spec.user;
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\n{name}:x:{uid}:{gid}:{name}:{home}:/sbin/nologin\n",
        name = u.name,
        uid = u.uid,
        gid = u.gid,
        home = spec.workdir.as_deref().unwrap_or("/"),
    );
    let group = format!("root:x:0:\n{}:x:{}:\n", u.name, u.gid);
    let file = |text: String| Entry {
        mode: 0o644,
        uid: 0,
        gid: 0,
        content: Content::Bytes(text.into_bytes()),
    };
    let dir = |mode, uid, gid| Entry {
        mode,
        uid,
        gid,
        content: Content::Dir,
    };
    let mut plan = LayerPlan {
        name: "base: /etc/passwd, /etc/group, /tmp, volumes".into(),
        ..Default::default()
    };
    plan.insert("etc/passwd".into(), file(passwd))?;
    plan.insert("etc/group".into(), file(group))?;
    plan.insert("tmp".into(), dir(0o1777, 0, 0))?;
    if let Some(w) = &spec.workdir {
        plan.insert(w[1..].to_owned(), dir(0o755, 0, 0))?;
    }
    for v in &spec.volumes {
        plan.insert(v[1..].to_owned(), dir(0o755, u.uid, u.gid))?;
    }
    Ok(plan)
}

/// A source file the spec names that is not there.
#[derive(Debug)]
pub struct Missing {
    pub what: String,
    pub path: PathBuf,
}

/// Resolves the spec's layers against `spec_dir`: stats every source, expands
/// directories (sorted, recursively). Missing sources are collected, not fatal,
/// so the user hears about all of them at once.
pub fn resolve(
    spec: &ValidSpec,
    spec_dir: &Path,
    base: &LayerPlan,
) -> Result<(Vec<LayerPlan>, Vec<Missing>)> {
    let base_dirs: BTreeMap<String, Entry> = base
        .entries
        .iter()
        .filter(|(_, e)| matches!(e.content, Content::Dir))
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    let mut missing = Vec::new();
    let mut plans = Vec::new();
    let root = spec_dir
        .canonicalize()
        .with_context(|| format!("reading {}", spec_dir.display()))?;
    for (li, layer) in spec.layers.iter().enumerate() {
        let mut plan = LayerPlan {
            name: layer.name.clone(),
            entries: BTreeMap::new(),
            base_dirs: base_dirs.clone(),
        };
        for (fi, f) in layer.files.iter().enumerate() {
            let src = spec_dir.join(&f.src);
            let meta = match fs::metadata(&src) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing.push(Missing {
                        what: format!("layers[{li}].files[{fi}].src"),
                        path: src,
                    });
                    continue;
                }
                Err(e) => {
                    return Err(crate::exit::usage(format!(
                        "{} (layers[{li}].files[{fi}].src): {e}",
                        src.display()
                    )))
                }
            };
            // A symlink on the way may lead out of the spec directory: pack only what is in it.
            match src.canonicalize() {
                Ok(real) if real.starts_with(&root) => {}
                Ok(real) => {
                    return Err(crate::exit::usage(format!(
                        "{} (layers[{li}].files[{fi}].src) leads through a symlink to {}, outside the spec directory {}: copy what the image needs into it",
                        src.display(),
                        real.display(),
                        root.display()
                    )))
                }
                Err(e) => {
                    return Err(crate::exit::usage(format!(
                        "{} (layers[{li}].files[{fi}].src): {e}",
                        src.display()
                    )))
                }
            }
            if meta.is_dir() {
                add_dir(&mut plan, f, &src, f.dest[1..].to_owned())?;
            } else if meta.is_file() {
                plan.insert(f.dest[1..].to_owned(), file_entry(f, &src, &meta))?;
            } else {
                return Err(crate::exit::usage(format!(
                    "{} (layers[{li}].files[{fi}].src) is neither a file nor a directory",
                    src.display()
                )));
            }
        }
        plans.push(plan);
    }
    Ok((plans, missing))
}

fn file_entry(f: &ValidFile, src: &Path, meta: &fs::Metadata) -> Entry {
    let exec = meta.permissions().mode() & 0o111 != 0;
    let mode = f.mode.unwrap_or(if exec { 0o755 } else { 0o644 });
    Entry {
        mode,
        uid: 0,
        gid: 0,
        content: Content::File {
            path: src.to_path_buf(),
            size: meta.len(),
        },
    }
}

fn add_dir(plan: &mut LayerPlan, f: &ValidFile, dir: &Path, dest: String) -> Result<()> {
    plan.insert_dir(dest.clone())?;
    let mut children: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .collect::<io::Result<_>>()
        .with_context(|| format!("reading directory {}", dir.display()))?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let Some(name) = child.file_name().to_str().map(str::to_owned) else {
            return Err(crate::exit::usage(format!(
                "{} has a name that is not UTF-8",
                path.display()
            )));
        };
        // symlink_metadata: a link could point outside the spec directory.
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let child_dest = format!("{dest}/{name}");
        if meta.is_dir() {
            add_dir(plan, f, &path, child_dest)?;
        } else if meta.is_file() {
            plan.insert(child_dest, file_entry(f, &path, &meta))?;
        } else {
            return Err(crate::exit::usage(format!(
                "{} is a symlink or special file; only files and directories are packed",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Writes the layer as an uncompressed tar: GNU headers, entries in path order,
/// numeric owners only, every mtime `epoch`. `progress` hears every content byte.
pub fn write_tar(
    plan: &LayerPlan,
    epoch: u64,
    out: &mut dyn Write,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let mut tar = tar::Builder::new(out);
    let mut buf = vec![0u8; 1 << 20];
    for (path, entry) in &plan.entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(epoch);
        h.set_uid(entry.uid.into());
        h.set_gid(entry.gid.into());
        h.set_mode(entry.mode);
        match &entry.content {
            Content::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, format!("{path}/"), io::empty())
            }
            Content::Bytes(b) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(b.len() as u64);
                progress(b.len() as u64);
                tar.append_data(&mut h, path, b.as_slice())
            }
            Content::File { path: src, size } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
                // The header alone (the tar crate pads nothing for empty data), then the
                // content through a large buffer: far fewer syscalls than io::copy's 8 KiB.
                tar.append_data(&mut h, path, io::empty())
                    .and_then(|()| copy_exact(src, *size, tar.get_mut(), &mut buf, progress))
            }
        }
        .with_context(|| format!("adding /{path} to layer {:?}", plan.name))?;
    }
    tar.finish()
        .with_context(|| format!("finishing layer {:?}", plan.name))?;
    Ok(())
}

/// Copies exactly the size recorded in the tar header, then the padding to 512
/// bytes: a file that changed size since it was planned would otherwise corrupt
/// the archive.
fn copy_exact(
    src: &Path,
    size: u64,
    out: &mut dyn Write,
    buf: &mut [u8],
    progress: &dyn Fn(u64),
) -> io::Result<()> {
    let mut file = fs::File::open(src)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", src.display())))?;
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while being packed", src.display()),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading {}: {e}", src.display()),
                ))
            }
        };
        out.write_all(&buf[..n])?;
        left -= n as u64;
        progress(n as u64);
    }
    if file.read(&mut buf[..1])? != 0 {
        return Err(io::Error::other(format!(
            "{} grew while being packed",
            src.display()
        )));
    }
    let pad = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..pad as usize])
}
