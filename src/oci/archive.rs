//! The outer tarball: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) that is also a `docker save` archive (`manifest.json`).
//! Blobs are streamed in; each header is written after its blob, by seeking back,
//! because the blob's name is its digest.

use std::io::{Seek, SeekFrom, Write};

use anyhow::{Context, Result};

use super::compress::{self, BlobInfo, Compression};

/// An uncompressed tar being written to a seekable file.
pub struct Archive<F: Write + Seek> {
    out: F,
    epoch: u64,
    /// Blobs already in the archive: the same digest is stored once.
    blobs: Vec<String>,
}

impl<F: Write + Seek> Archive<F> {
    pub fn new(out: F, epoch: u64) -> Result<Self> {
        let mut a = Archive {
            out,
            epoch,
            blobs: Vec::new(),
        };
        a.dir("blobs/")?;
        a.dir("blobs/sha256/")?;
        Ok(a)
    }

    fn header(&self, path: &str, size: u64, dir: bool) -> Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        h.set_path(path)
            .with_context(|| format!("naming archive entry {path}"))?;
        h.set_size(size);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.epoch);
        h.set_cksum();
        Ok(h)
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let h = self.header(path, 0, true)?;
        self.out.write_all(h.as_bytes()).context("writing archive")
    }

    /// Adds a file whose bytes are known.
    pub fn file(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        let h = self.header(path, bytes.len() as u64, false)?;
        self.out
            .write_all(h.as_bytes())
            .context("writing archive")?;
        self.out.write_all(bytes).context("writing archive")?;
        self.pad(bytes.len() as u64)
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let pad = (512 - size % 512) % 512;
        self.out
            .write_all(&[0u8; 512][..pad as usize])
            .context("writing archive")
    }

    /// Adds a small blob (config, manifest) held in memory.
    pub fn blob(&mut self, bytes: &[u8]) -> Result<BlobInfo> {
        let digest = compress::sha256_digest(bytes);
        if !self.blobs.contains(&digest) {
            self.file(&blob_path(&digest), bytes)?;
            self.blobs.push(digest.clone());
        }
        Ok(BlobInfo {
            digest: digest.clone(),
            size: bytes.len() as u64,
            diff_id: digest,
        })
    }

    /// Streams a layer blob: a placeholder header, the compressed bytes, then the
    /// real header once the digest is known.
    pub fn layer<P>(&mut self, compression: Compression, produce: P) -> Result<BlobInfo>
    where
        P: FnOnce(&mut dyn Write) -> Result<()> + Send,
    {
        let start = self.out.stream_position().context("writing archive")?;
        self.out.write_all(&[0u8; 512]).context("writing archive")?;
        let info = compress::stream_blob(&mut self.out, compression, produce)?;
        if self.blobs.contains(&info.digest) {
            // An identical layer is already stored; drop this copy.
            self.out
                .seek(SeekFrom::Start(start))
                .context("writing archive")?;
            return Ok(info);
        }
        self.pad(info.size)?;
        let end = self.out.stream_position().context("writing archive")?;
        let h = self.header(&blob_path(&info.digest), info.size, false)?;
        self.out
            .seek(SeekFrom::Start(start))
            .context("writing archive")?;
        self.out
            .write_all(h.as_bytes())
            .context("writing archive")?;
        self.out
            .seek(SeekFrom::Start(end))
            .context("writing archive")?;
        self.blobs.push(info.digest.clone());
        Ok(info)
    }

    /// Writes the end-of-archive marker and returns the writer, positioned at
    /// the archive's end (the caller truncates any dropped tail there).
    pub fn finish(mut self) -> Result<(F, u64)> {
        self.out
            .write_all(&[0u8; 1024])
            .context("writing archive")?;
        let end = self.out.stream_position().context("writing archive")?;
        Ok((self.out, end))
    }
}

/// `blobs/sha256/<hex>` for `sha256:<hex>`.
pub fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}
