//! Reading an OCI bundle someone packed (`imgforge pack`, `docker save`): the image
//! name it loads as, and the sha256 the VM checks before loading it.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::DockerManifest;
use crate::input::{ImageRef, Sha256Hex};

pub struct BundleInfo {
    /// The first RepoTag of Docker's manifest.json: what `docker load` tags.
    pub image: ImageRef,
    /// sha256 of the whole archive file.
    pub sha256: Sha256Hex,
}

/// Reads the image name from `path`'s manifest.json and hashes the file. A file that is
/// not a bundle is the user's input (exit 2), named with what was wrong.
pub fn inspect(path: &Path) -> Result<BundleInfo> {
    let shown = path.display();
    let not_a_bundle = |e: &dyn std::fmt::Display| {
        // The archive's own bytes may be in the message: printable characters only.
        let why: String = e
            .to_string()
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(160)
            .collect();
        crate::exit::usage(format!(
            "bundle {shown}: not a readable image archive ({why}); pass an archive from `imgforge pack` or `docker save`"
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| not_a_bundle(&e))?;
    if !meta.is_file() {
        return Err(not_a_bundle(&"not a regular file"));
    }
    let file = File::open(path).map_err(|e| not_a_bundle(&e))?;
    let mut archive = tar::Archive::new(file);
    let mut manifest = None;
    for entry in archive.entries().map_err(|e| not_a_bundle(&e))? {
        let mut entry = entry.map_err(|e| not_a_bundle(&e))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == "manifest.json" || name == "./manifest.json" {
            let mut text = String::new();
            entry
                .by_ref()
                .take(crate::fsutil::SMALL_INPUT_MAX)
                .read_to_string(&mut text)
                .map_err(|e| not_a_bundle(&format!("manifest.json: {e}")))?;
            manifest = Some(text);
            break;
        }
    }
    let Some(text) = manifest else {
        return Err(crate::exit::usage(format!(
            "bundle {shown} has no manifest.json: pass an archive from `imgforge pack` or `docker save`"
        )));
    };
    let parsed: Vec<DockerManifest> =
        serde_json::from_str(&text).map_err(|e| not_a_bundle(&format!("manifest.json: {e}")))?;
    let tag = parsed
        .first()
        .and_then(|m| m.repo_tags.as_ref())
        .and_then(|t| t.first())
        .ok_or_else(|| {
            crate::exit::usage(format!(
                "bundle {shown} names no image (RepoTags is empty): re-pack it with a name"
            ))
        })?;
    let image = ImageRef::parse(tag).map_err(|p| {
        crate::exit::usage(format!(
            "bundle {shown} names the image {tag:?}: {}",
            p.message
        ))
    })?;

    let mut hasher = Sha256::new();
    let mut file = File::open(path).with_context(|| format!("opening bundle {shown}"))?;
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("hashing bundle {shown}"))?;
    let sha256 = Sha256Hex::parse(&hex::encode(hasher.finalize()))
        .map_err(|p| anyhow::anyhow!(p.message))?;
    Ok(BundleInfo { image, sha256 })
}
