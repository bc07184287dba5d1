//! Streaming a layer into a blob in one pass: the tar is produced on one thread,
//! compressed (gzip on every core, pigz-style) and hashed on the way to the output,
//! so nothing is buffered whole and nothing is read twice.
//!
//! gzip output is independent of the number of threads: the stream is cut into
//! fixed 1 MiB blocks, each compressed alone with the previous block's last 32 KiB
//! as its dictionary and ended with a sync flush, so the raw deflate pieces
//! concatenate into one valid stream (as pigz does).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use flate2::{Compress, FlushCompress, Status};
use sha2::{Digest, Sha256};

/// Layer compression. The level is part of the output: change it and digests change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip { level: u32 },
    Zstd { level: i32 },
}

impl Compression {
    /// zlib-rs level 1 uses static Huffman trees only (fast, poor ratio on text);
    /// level 2 costs about what `gzip -1` does per byte and compresses like `gzip -6`.
    pub const DEFAULT_GZIP_LEVEL: u32 = 2;
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip { .. } => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd { .. } => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
        }
    }
}

/// A blob written to the output.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    /// `sha256:<hex>` of the bytes written.
    pub digest: String,
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

const BLOCK: usize = 1 << 20;
const DICT: usize = 32 << 10;

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Runs `produce` on its own thread to write the uncompressed stream, and writes
/// the compressed blob to `out`, hashing both sides on the way.
pub fn stream_blob<W, P>(out: &mut W, compression: Compression, produce: P) -> Result<BlobInfo>
where
    W: Write,
    P: FnOnce(&mut dyn Write) -> Result<()> + Send,
{
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    stream_blob_with(out, compression, workers.clamp(1, 16), produce)
}

/// [`stream_blob`] with a given number of gzip workers (the output does not depend on it).
fn stream_blob_with<W, P>(
    out: &mut W,
    compression: Compression,
    workers: usize,
    produce: P,
) -> Result<BlobInfo>
where
    W: Write,
    P: FnOnce(&mut dyn Write) -> Result<()> + Send,
{
    let mut out = HashWriter {
        inner: out,
        hasher: Sha256::new(),
        count: 0,
    };
    let diff_id = match compression {
        Compression::None | Compression::Zstd { .. } => serial(&mut out, compression, produce)?,
        Compression::Gzip { level } => parallel_gzip(&mut out, level, workers, produce)?,
    };
    let digest = format!("sha256:{}", hex::encode(out.hasher.finalize()));
    let diff_id = if compression == Compression::None {
        digest.clone()
    } else {
        diff_id
    };
    Ok(BlobInfo {
        digest,
        size: out.count,
        diff_id,
    })
}

/// Producer side: cuts the stream into blocks, hashes it, hands blocks to `sink`.
struct BlockWriter<F: FnMut(Vec<u8>, bool) -> io::Result<()>> {
    buf: Vec<u8>,
    hasher: Sha256,
    sink: F,
}

impl<F: FnMut(Vec<u8>, bool) -> io::Result<()>> Write for BlockWriter<F> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (BLOCK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == BLOCK {
                let block = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
                self.hasher.update(&block);
                (self.sink)(block, false)?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<F: FnMut(Vec<u8>, bool) -> io::Result<()>> BlockWriter<F> {
    fn new(sink: F) -> Self {
        BlockWriter {
            buf: Vec::with_capacity(BLOCK),
            hasher: Sha256::new(),
            sink,
        }
    }

    /// Sends the final (possibly empty) block and returns the stream's digest.
    fn finish(mut self) -> io::Result<String> {
        let block = std::mem::take(&mut self.buf);
        self.hasher.update(&block);
        (self.sink)(block, true)?;
        Ok(format!("sha256:{}", hex::encode(self.hasher.finalize())))
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped")
}

/// The consumer saw the stream stop before its last block: the producer failed
/// (its error is the one to report) or a worker died.
#[derive(Debug, thiserror::Error)]
#[error("the layer stream ended before its last block")]
struct EndedEarly;

/// The root cause when either side failed: a producer that stopped because the
/// consumer hung up is not it, and a consumer that ran dry is not either.
fn pick_error(consumed: Result<()>, produced: Result<String>) -> Result<String> {
    match (consumed, produced) {
        (Ok(()), produced) => produced,
        (Err(c), Err(p)) if c.is::<EndedEarly>() => Err(p),
        (Err(c), _) => Err(c),
    }
}

/// Joins the producer, preferring its error (the root cause) over a broken pipe.
fn join_producer(handle: std::thread::ScopedJoinHandle<'_, Result<String>>) -> Result<String> {
    handle
        .join()
        .map_err(|_| anyhow!("the layer writer panicked"))?
}

/// No compression or zstd: one compressor, on the calling thread.
fn serial<W, P>(out: &mut HashWriter<W>, compression: Compression, produce: P) -> Result<String>
where
    W: Write,
    P: FnOnce(&mut dyn Write) -> Result<()> + Send,
{
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, bool)>(4);
        let producer = s.spawn(move || -> Result<String> {
            let mut w = BlockWriter::new(|b, last| tx.send((b, last)).map_err(|_| closed()));
            produce(&mut w)?;
            Ok(w.finish()?)
        });
        let consumed = consume_serial(out, compression, rx);
        pick_error(consumed, join_producer(producer))
    })
}

fn consume_serial<W: Write>(
    out: &mut HashWriter<W>,
    compression: Compression,
    rx: Receiver<(Vec<u8>, bool)>,
) -> Result<()> {
    match compression {
        Compression::Zstd { level } => {
            let mut enc =
                zstd::stream::write::Encoder::new(&mut *out, level).context("starting zstd")?;
            drain(&rx, &mut enc).context("compressing with zstd")?;
            enc.finish().context("finishing zstd stream")?;
            Ok(())
        }
        _ => drain(&rx, out).context("writing layer"),
    }
}

fn drain(rx: &Receiver<(Vec<u8>, bool)>, out: &mut dyn Write) -> Result<()> {
    loop {
        let Ok((block, last)) = rx.recv() else {
            return Err(EndedEarly.into());
        };
        out.write_all(&block)?;
        if last {
            return Ok(());
        }
    }
}

struct Job {
    idx: u64,
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
}

struct Done {
    idx: u64,
    deflated: io::Result<Vec<u8>>,
    crc: crc32fast::Hasher,
    len: u64,
    last: bool,
}

fn parallel_gzip<W, P>(
    out: &mut HashWriter<W>,
    level: u32,
    workers: usize,
    produce: P,
) -> Result<String>
where
    W: Write,
    P: FnOnce(&mut dyn Write) -> Result<()> + Send,
{
    // Tokens bound the blocks in flight, so a slow block cannot make the others pile
    // up. Generous (16+ MiB), so on a busy machine the workers always find queued work
    // instead of waiting for the producer and writer to be scheduled again.
    let in_flight = (workers * 8).max(16);
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    // Workers share one queue; the lock is held only while taking a job.
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|s| {
        let (token_tx, token_rx) = mpsc::sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            token_tx
                .send(())
                .map_err(|_| anyhow!("internal: token channel"))?;
        }
        let (done_tx, done_rx) = mpsc::channel::<Done>();

        let producer = s.spawn(move || -> Result<String> {
            let mut idx = 0u64;
            let mut dict = Vec::new();
            let mut w = BlockWriter::new(|data: Vec<u8>, last| {
                token_rx.recv().map_err(|_| closed())?;
                let next_dict = data[data.len().saturating_sub(DICT)..].to_vec();
                let job = Job {
                    idx,
                    data,
                    dict: std::mem::replace(&mut dict, next_dict),
                    last,
                };
                idx += 1;
                job_tx.send(job).map_err(|_| closed())
            });
            produce(&mut w)?;
            Ok(w.finish()?)
        });

        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let job_rx = &job_rx;
            s.spawn(move || loop {
                let job = match job_rx.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                let mut crc = crc32fast::Hasher::new();
                crc.update(&job.data);
                let done = Done {
                    idx: job.idx,
                    deflated: deflate_block(level, &job.data, &job.dict, job.last),
                    crc,
                    len: job.data.len() as u64,
                    last: job.last,
                };
                if done_tx.send(done).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);

        let written = write_gzip(out, level, done_rx, token_tx);
        pick_error(written, join_producer(producer))
    })
}

/// Writes the gzip member: header, the deflate pieces in order, trailer.
fn write_gzip<W: Write>(
    out: &mut HashWriter<W>,
    level: u32,
    done_rx: Receiver<Done>,
    token_tx: SyncSender<()>,
) -> Result<()> {
    // RFC 1952 header: no name, mtime 0, OS "unknown", so the bytes do not
    // depend on the machine.
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255])
        .context("writing layer")?;
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0u64;
    loop {
        let Ok(done) = done_rx.recv() else {
            return Err(EndedEarly.into());
        };
        pending.insert(done.idx, done);
        while let Some(done) = pending.remove(&next) {
            let deflated = done.deflated.context("compressing with gzip")?;
            out.write_all(&deflated).context("writing layer")?;
            crc.combine(&done.crc);
            len += done.len;
            next += 1;
            // The producer may be gone already when this was the last block.
            let _ = token_tx.send(());
            if done.last {
                out.write_all(&crc.clone().finalize().to_le_bytes())
                    .context("writing layer")?;
                // ISIZE is the length modulo 2^32 (RFC 1952).
                out.write_all(&(len as u32).to_le_bytes())
                    .context("writing layer")?;
                return Ok(());
            }
        }
    }
}

/// Raw deflate of one block: primed with `dict`, ended by a sync flush (or the
/// final block), so pieces concatenate.
fn deflate_block(level: u32, data: &[u8], dict: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(flate2::Compression::new(level), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() + data.len() / 16 + 1024);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity() / 2 + 4096);
        }
        let consumed = usize::try_from(c.total_in()).map_err(io::Error::other)?;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => return Ok(out),
            // A flush is complete once deflate stops short of filling the output.
            Status::Ok | Status::BufError if !last && all_in && out.len() < out.capacity() => {
                return Ok(out)
            }
            Status::Ok | Status::BufError => {}
        }
    }
}

struct HashWriter<'a, W: Write> {
    inner: &'a mut W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        // Mixed: repetitive text and pseudo-random bytes.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|i| {
                if (i / 100_000) % 2 == 0 {
                    b"the quick brown fox "[i % 20]
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            })
            .collect()
    }

    fn pack(data: &[u8], c: Compression) -> (Vec<u8>, BlobInfo) {
        let mut out = Vec::new();
        let owned = data.to_vec();
        let info = stream_blob(&mut out, c, move |w| Ok(w.write_all(&owned)?)).unwrap();
        (out, info)
    }

    #[test]
    fn gzip_round_trips_across_block_edges() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 777] {
            let data = sample(len);
            let (gz, info) = pack(&data, Compression::Gzip { level: 6 });
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(gz.as_slice())
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == data, "round trip failed at len {len}");
            assert_eq!(info.diff_id, sha256_digest(&data));
            assert_eq!(info.digest, sha256_digest(&gz));
            assert_eq!(info.size, gz.len() as u64);
        }
    }

    #[test]
    fn gzip_bytes_do_not_depend_on_the_number_of_workers() {
        let data = sample(5 * BLOCK + 123);
        let run = |workers| {
            let mut out = Vec::new();
            let owned = data.clone();
            stream_blob_with(
                &mut out,
                Compression::Gzip { level: 2 },
                workers,
                move |w| Ok(w.write_all(&owned)?),
            )
            .unwrap();
            out
        };
        let one = run(1);
        assert!(
            one == run(2) && one == run(7),
            "worker count changed the output"
        );
    }

    #[test]
    fn zstd_and_none_round_trip() {
        let data = sample(2 * BLOCK + 5);
        let (z, info) = pack(&data, Compression::Zstd { level: 3 });
        assert_eq!(zstd::decode_all(z.as_slice()).unwrap(), data);
        assert_eq!(info.diff_id, sha256_digest(&data));
        let (raw, info) = pack(&data, Compression::None);
        assert_eq!(raw, data);
        assert_eq!(info.digest, info.diff_id);
    }

    #[test]
    fn producer_error_is_reported() {
        let mut out = Vec::new();
        let err = stream_blob(&mut out, Compression::Gzip { level: 1 }, |w| {
            w.write_all(&sample(3 * BLOCK))?;
            anyhow::bail!("source vanished")
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("source vanished"), "{err:#}");
    }
}
