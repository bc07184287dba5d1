//! The engine alone, without HTTP: the cost of each stage for one image (decode,
//! preprocess, inference) and the throughput of whole requests from CALLERS threads, with
//! a given layout of sessions (see `EngineConfig`). For choosing defaults; prints numbers.
//!
//! Usage: engine_probe MODEL_DIR IMAGE SESSIONS LEAD_THREADS CALLERS REQUESTS
//! (the ONNX Runtime library is taken from MODEL_DIR/../lib, as in dist/).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use classifier::model::{self, Classifier, DecodeLimits, EngineConfig};

/// This process's CPU time (user + system) so far, in seconds.
fn cpu_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_name = stat.rsplit(')').next().context("/proc/self/stat")?;
    let fields: Vec<f64> = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    Ok(fields.iter().sum::<f64>() / 100.0)
}

/// Mean wall and CPU time of `f`, in ms, over `n` calls.
fn timed(n: u32, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    let (start, cpu) = (Instant::now(), cpu_secs()?);
    for _ in 0..n {
        f()?;
    }
    let n = f64::from(n);
    Ok((
        start.elapsed().as_secs_f64() * 1e3 / n,
        (cpu_secs()? - cpu) * 1e3 / n,
    ))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, image, sessions, lead_threads, callers, requests] = &args[..] else {
        anyhow::bail!("usage: engine_probe MODEL_DIR IMAGE SESSIONS LEAD_THREADS CALLERS REQUESTS");
    };
    let model_dir = PathBuf::from(model_dir);
    let bytes = std::fs::read(image).with_context(|| format!("reading {image}"))?;
    let engine = EngineConfig {
        sessions: sessions.parse()?,
        lead_threads: lead_threads.parse()?,
    };
    let (callers, requests): (usize, usize) = (callers.parse()?, requests.parse()?);
    model::init_runtime(&model_dir.join("../lib").join(model::ORT_LIBRARY_FILE))?;
    let classifier = Classifier::load(&model_dir, &engine)?;
    let limits = DecodeLimits {
        max_pixels: 50_000_000,
        max_side: 12_000,
        max_bytes: 256 << 20,
    };
    let decode = || model::decode_image(&bytes, &limits).map_err(|e| anyhow::anyhow!("{e:?}"));

    let (decode_ms, _) = timed(50, || decode().map(drop))?;
    let img = decode()?;
    let (preprocess_ms, _) = timed(50, || model::preprocess(&img).map(drop))?;
    let input = model::preprocess(&img)?;
    timed(10, || classifier.scores(input.clone()).map(drop))?;
    let (inference_ms, inference_cpu_ms) =
        timed(50, || classifier.scores(input.clone()).map(drop))?;

    let left = AtomicUsize::new(requests);
    let (start, cpu) = (Instant::now(), cpu_secs()?);
    std::thread::scope(|s| {
        let callers: Vec<_> = (0..callers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                        .is_ok()
                    {
                        classifier.scores(model::preprocess(&decode()?)?)?;
                    }
                    Ok(())
                })
            })
            .collect();
        callers.into_iter().try_for_each(|c| {
            c.join()
                .unwrap_or_else(|_| anyhow::bail!("a caller panicked"))
        })
    })?;
    let wall = start.elapsed().as_secs_f64();
    let cpu_ms = (cpu_secs()? - cpu) * 1e3 / requests as f64;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("");
    println!(
        "{engine:?}, {callers} callers: decode {decode_ms:.2} ms, preprocess {preprocess_ms:.2} ms, \
         inference {inference_ms:.2} ms ({inference_cpu_ms:.2} ms CPU); {:.1} req/s, \
         {cpu_ms:.2} ms CPU/req; {}",
        requests as f64 / wall,
        peak.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}
