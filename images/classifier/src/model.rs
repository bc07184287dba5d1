//! Loading EfficientNet-Lite0 and its labels from `MODEL_DIR`, decoding uploads, and
//! turning an image into the top-k ImageNet classes. Inference is ONNX Runtime, loaded at
//! start-up from a shared library (`libonnxruntime.so`) that ships with the service.
//! Nothing is fetched at run time.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::{anyhow, bail, ensure, Context, Result};
use fast_image_resize as fr;
use image::{ColorType, DynamicImage, ImageDecoder, ImageReader};
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;
use ort::value::Tensor;
use serde::Serialize;
use utoipa::ToSchema;

pub const MODEL_NAME: &str = "efficientnet-lite0";
pub const MODEL_FILE: &str = "efficientnet-lite0.onnx";
pub const LABELS_FILE: &str = "labels.txt";
/// The ONNX Runtime library build.sh ships next to the binary (`lib/` beside it).
pub const ORT_LIBRARY_FILE: &str = "libonnxruntime.so.1.23.2";
pub const INPUT_SIZE: u32 = 224;
/// The shorter side is scaled to this before the centre crop (the ImageNet 0.875 crop).
pub const RESIZE_SIZE: u32 = 256;
pub const NUM_CLASSES: usize = 1000;
const INPUT_LEN: usize = 3 * (INPUT_SIZE as usize) * (INPUT_SIZE as usize);

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct Prediction {
    /// ImageNet class index, 0-999.
    pub index: usize,
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// What decoding an upload may cost.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Refuse images with more pixels than this.
    pub max_pixels: u64,
    /// Refuse images with a side longer than this.
    pub max_side: u32,
    /// Refuse images whose decoded pixels would take more bytes than this.
    pub max_bytes: u64,
}

/// Why an upload could not be turned into pixels.
#[derive(Debug)]
pub enum DecodeError {
    /// Not a format we can recognise at all.
    NotAnImage,
    /// Recognised, but corrupt or truncated.
    Corrupt(String),
    /// More pixels (or a longer side) than we classify.
    TooManyPixels { width: u32, height: u32 },
    /// Its decoded pixels would take more memory than one decode may use.
    TooLarge { bytes: u64 },
}

/// An image's header: its size and what holding its decoded pixels costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// Bytes of memory decoding may take at its peak: the decoded pixels, and for the
    /// formats whose decoders keep a second full-size buffer, that too.
    pub decoded_bytes: u64,
    is_jpeg: bool,
}

fn map_image_error(e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::Limits(l) => DecodeError::Corrupt(format!("over a decoder limit: {l}")),
        other => DecodeError::Corrupt(other.to_string()),
    }
}

fn decoder<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
) -> Result<(impl ImageDecoder + 'a, Header), DecodeError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError::NotAnImage);
    }
    let format = reader.format();
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt("the image has no pixels".into()));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels
        || width.max(height) > limits.max_side
    {
        return Err(DecodeError::TooManyPixels { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    let scaled_jpeg = match format {
        Some(image::ImageFormat::Jpeg) => jpeg_plan(bytes),
        _ => None,
    };
    let decoded_bytes = match scaled_jpeg {
        // The decoder keeps its component planes beside the output.
        Some(plan) => plan.bytes().saturating_mul(2),
        None => decoder.total_bytes(),
    };
    let decoded_bytes = decoded_bytes.saturating_add(match format {
        // WebP decodes into a buffer of its own before the output (measured: 2.2 copies).
        Some(image::ImageFormat::WebP) => decoder.total_bytes().saturating_add(pixels),
        // GIF keeps the frame's palette indices beside the RGBA canvas.
        Some(image::ImageFormat::Gif) => pixels,
        _ => 0,
    });
    if decoded_bytes > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            bytes: decoded_bytes,
        });
    }
    // The decoder's own working memory is bounded too (e.g. PNG text chunks).
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_bytes.max(64 << 20));
    decoder
        .set_limits(decoder_limits)
        .map_err(map_image_error)?;
    Ok((
        decoder,
        Header {
            width,
            height,
            decoded_bytes,
            is_jpeg: format == Some(image::ImageFormat::Jpeg),
        },
    ))
}

/// Reads only the header: cheap, and tells what [`decode_image`] would allocate.
pub fn probe(bytes: &[u8], limits: &DecodeLimits) -> Result<Header, DecodeError> {
    decoder(bytes, limits).map(|(_, header)| header)
}

/// How a large JPEG is decoded straight to a smaller size in the DCT domain (1/2, 1/4 or
/// 1/8), keeping the shorter side at least [`RESIZE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct JpegPlan {
    width: u32,
    height: u32,
    channels: u32,
}

impl JpegPlan {
    fn bytes(self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * u64::from(self.channels)
    }
}

/// `Some` for a baseline or progressive 8-bit grey or RGB JPEG that can be decoded at 1/2
/// or less of its size; `None` (decode at full size) for anything else.
fn jpeg_plan(bytes: &[u8]) -> Option<JpegPlan> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    // The decoder has asserts for inputs it does not expect; such a file is decoded (or
    // refused) by the full-size path instead.
    let info = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decoder.read_info().ok().and_then(|()| decoder.info())
    }))
    .ok()
    .flatten()?;
    let channels = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => 1,
        jpeg_decoder::PixelFormat::RGB24 => 3,
        _ => return None,
    };
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let denominator = [8, 4, 2]
        .into_iter()
        .find(|d| w.min(h) / d >= RESIZE_SIZE)?;
    Some(JpegPlan {
        width: w.div_ceil(denominator),
        height: h.div_ceil(denominator),
        channels,
    })
}

fn decode_scaled_jpeg(bytes: &[u8], plan: JpegPlan) -> Result<DynamicImage, DecodeError> {
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
        let requested = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let (w, h) = decoder.scale(requested(plan.width), requested(plan.height))?;
        decoder.set_max_decoding_buffer_size(
            usize::try_from(plan.bytes().saturating_mul(2)).unwrap_or(0),
        );
        decoder
            .decode()
            .map(|pixels| (u32::from(w), u32::from(h), pixels))
    }))
    .map_err(|_| DecodeError::Corrupt("the JPEG decoder gave up on this file".into()))?;
    let (w, h, pixels) = decoded.map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    let image = match plan.channels {
        1 => image::GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8),
        _ => image::RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8),
    };
    image.ok_or_else(|| {
        DecodeError::Corrupt("the JPEG decoded to fewer pixels than it declares".into())
    })
}

/// Decodes into one buffer in the image's own pixel format (no RGB copy is made). Large
/// JPEGs are decoded at 1/2, 1/4 or 1/8 of their size (shorter side still at least 256).
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage, DecodeError> {
    let (decoder, header) = decoder(bytes, limits)?;
    if header.is_jpeg {
        if let Some(plan) = jpeg_plan(bytes) {
            drop(decoder);
            return decode_scaled_jpeg(bytes, plan);
        }
    }
    DynamicImage::from_decoder(decoder).map_err(map_image_error)
}

/// The part of the source that becomes the model input: the source-space equivalent of
/// "shorter side to 256, centre crop 224" as `(left, top, width, height)`.
pub fn crop_box(width: u32, height: u32) -> (f64, f64, f64, f64) {
    let (w, h) = (f64::from(width), f64::from(height));
    let scale = f64::from(RESIZE_SIZE) / w.min(h).max(1.0);
    let nw = (w * scale).round().max(f64::from(INPUT_SIZE));
    let nh = (h * scale).round().max(f64::from(INPUT_SIZE));
    let left = ((nw - f64::from(INPUT_SIZE)) / 2.0).floor();
    let top = ((nh - f64::from(INPUT_SIZE)) / 2.0).floor();
    let (sx, sy) = (w / nw, h / nh);
    (
        left * sx,
        top * sy,
        f64::from(INPUT_SIZE) * sx,
        f64::from(INPUT_SIZE) * sy,
    )
}

/// RGB, shorter side to 256, centre crop 224, `(px - 127) / 128`, NCHW, as one flat
/// `[1, 3, 224, 224]` buffer. The crop is resized straight from the decoded pixels
/// (SIMD, chosen at run time), so only a 224 x 224 image is ever converted to RGB.
pub fn preprocess(img: &DynamicImage) -> Result<Vec<f32>> {
    let color = match img.color() {
        c @ (ColorType::L8
        | ColorType::La8
        | ColorType::Rgb8
        | ColorType::Rgba8
        | ColorType::L16
        | ColorType::La16
        | ColorType::Rgb16
        | ColorType::Rgba16
        | ColorType::Rgb32F
        | ColorType::Rgba32F) => c,
        other => bail!("unsupported pixel format {other:?}"),
    };
    let mut small = DynamicImage::new(INPUT_SIZE, INPUT_SIZE, color);
    let (left, top, width, height) = crop_box(img.width(), img.height());
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(left, top, width, height)
        // Like PIL's convert("RGB"): alpha is dropped, not composited.
        .use_alpha(false);
    fr::Resizer::new()
        .resize(img, &mut small, &options)
        .context("resizing the image")?;
    let rgb = small.to_rgb8();
    let plane = (INPUT_SIZE * INPUT_SIZE) as usize;
    let mut out = vec![0f32; INPUT_LEN];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) - 127.0) / 128.0;
        }
    }
    Ok(out)
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|z| (z - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Where the ONNX Runtime library is when `ORT_DYLIB_PATH` is not set: `lib/` beside the
/// binary (`/app/lib` in the image, also when `/proc` is not mounted).
pub fn default_ort_library() -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/app"));
    dir.join("lib").join(ORT_LIBRARY_FILE)
}

/// Loads the ONNX Runtime library. Once per process, before any [`Classifier::load`].
pub fn init_runtime(library: &Path) -> Result<()> {
    ensure!(
        library.is_file(),
        "ONNX Runtime library {} not found (set ORT_DYLIB_PATH)",
        library.display()
    );
    let builder = ort::init_from(library)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("loading ONNX Runtime from {}", library.display()))?;
    // No global thread pool: each session has its own (see EngineConfig).
    builder
        .with_name("classifier")
        .with_telemetry(false)
        .commit();
    Ok(())
}

/// How inference is spread over the cores: `sessions` inferences can run at once. The
/// first session has `lead_threads` intra-op threads, the others one each (the calling
/// thread). An inference that starts while no other runs takes the first session, so a
/// lone request has `lead_threads` cores; one that starts beside others takes a one-thread
/// session while one is free, so that under steady load the threads at work are about as
/// many as the sessions, not sessions x threads (the README has the measurements).
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub sessions: usize,
    pub lead_threads: usize,
}

pub struct Classifier {
    /// The many-thread session first, then the one-thread ones.
    sessions: Vec<Mutex<Session>>,
    running: AtomicUsize,
    labels: Vec<String>,
}

/// The order in which an inference tries the sessions: the many-thread one first when it
/// runs alone, last when others run.
fn session_order(sessions: usize, alone: bool) -> impl Iterator<Item = usize> {
    let lead = sessions.min(1);
    let (before, after) = if alone {
        (0..lead, 0..0)
    } else {
        (0..0, 0..lead)
    };
    before.chain(lead..sessions).chain(after)
}

/// Counts an inference as running until dropped.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Classifier {
    pub fn load(model_dir: &Path, engine: &EngineConfig) -> Result<Self> {
        let labels_path = model_dir.join(LABELS_FILE);
        let text = std::fs::read_to_string(&labels_path)
            .with_context(|| format!("reading labels {}", labels_path.display()))?;
        let labels: Vec<String> = text.lines().map(str::to_owned).collect();
        ensure!(
            labels.len() == NUM_CLASSES,
            "labels {} has {} lines, expected {NUM_CLASSES}",
            labels_path.display(),
            labels.len()
        );

        let model_path = model_dir.join(MODEL_FILE);
        let model = std::fs::read(&model_path)
            .with_context(|| format!("reading model {}", model_path.display()))?;
        // Sessions share one copy of the pre-packed weights.
        let prepacked = PrepackedWeights::new();
        let new_session = |threads: usize| {
            Session::builder()
                .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3))
                .and_then(|b| b.with_intra_threads(threads))
                .and_then(|b| b.with_inter_threads(1))
                .and_then(|b| b.with_parallel_execution(false))
                .and_then(|b| b.with_intra_op_spinning(false))
                .and_then(|b| b.with_prepacked_weights(&prepacked))
                // Weights in buffers of their own size, not in the growing arena.
                .and_then(|b| b.with_device_allocator_for_initializers())
                .and_then(|b| b.commit_from_memory(&model))
                .map(Mutex::new)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("loading model {}", model_path.display()))
        };
        let sessions = (0..engine.sessions.max(1))
            .map(|i| {
                new_session(if i == 0 {
                    engine.lead_threads.max(1)
                } else {
                    1
                })
            })
            .collect::<Result<Vec<_>>>()?;
        drop(model);
        let classifier = Self {
            sessions,
            running: AtomicUsize::new(0),
            labels,
        };
        // One run per session at start-up proves the model answers with one score per
        // label and keeps the first user requests from paying for lazy initialisation.
        for session in &classifier.sessions {
            let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
            Self::run(&mut session, vec![0.0; INPUT_LEN])
                .with_context(|| format!("test inference with {}", model_path.display()))?;
        }
        Ok(classifier)
    }

    /// How many inferences can run at once.
    pub fn parallelism(&self) -> usize {
        self.sessions.len()
    }

    /// A free session, in [`session_order`]. Callers are bounded to `parallelism()` at
    /// once, so one is normally free.
    fn free_session(&self, alone: bool) -> MutexGuard<'_, Session> {
        session_order(self.sessions.len(), alone)
            .find_map(|i| self.sessions[i].try_lock().ok())
            .unwrap_or_else(|| self.sessions[0].lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn run(session: &mut Session, input: Vec<f32>) -> Result<Vec<f32>> {
        let side = INPUT_SIZE as usize;
        let tensor = Tensor::from_array(([1usize, 3, side, side], input))
            .map_err(|e| anyhow!("building the input tensor: {e}"))?;
        let outputs = session
            .run(ort::inputs![tensor])
            .map_err(|e| anyhow!("running the model: {e}"))?;
        if outputs.len() == 0 {
            bail!("model produced no output");
        }
        let (_, logits) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("reading the model output: {e}"))?;
        ensure!(
            logits.len() == NUM_CLASSES,
            "model produced {} scores, expected {NUM_CLASSES}",
            logits.len()
        );
        Ok(softmax(logits))
    }

    /// Softmax probabilities for one preprocessed `[1, 3, 224, 224]` input.
    pub fn scores(&self, input: Vec<f32>) -> Result<Vec<f32>> {
        ensure!(input.len() == INPUT_LEN, "input has {} values", input.len());
        let alone = self.running.fetch_add(1, Ordering::SeqCst) == 0;
        let _running = Running(&self.running);
        Self::run(&mut self.free_session(alone), input)
    }

    pub fn classify(&self, img: &DynamicImage, top_k: usize) -> Result<Vec<Prediction>> {
        let probs = self.scores(preprocess(img)?)?;
        Ok(self.top_k(&probs, top_k))
    }

    pub fn top_k(&self, probs: &[f32], k: usize) -> Vec<Prediction> {
        let mut idx: Vec<usize> = (0..probs.len()).collect();
        idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        idx.into_iter()
            .take(k)
            .map(|i| Prediction {
                index: i,
                label: self.labels.get(i).cloned().unwrap_or_default(),
                score: probs[i],
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_pixels: 50_000_000,
        max_side: 12_000,
        max_bytes: 256 << 20,
    };

    #[test]
    fn a_lone_inference_takes_the_many_thread_session_first_and_others_take_it_last() {
        let order = |n, alone| session_order(n, alone).collect::<Vec<_>>();
        assert_eq!(order(3, true), [0, 1, 2]);
        assert_eq!(order(3, false), [1, 2, 0]);
        assert_eq!(order(1, false), [0]);
        assert_eq!(order(1, true), [0]);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, 2.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(p[1] > p[2] && p[2] > p[0]);
        // Large logits must not overflow to NaN.
        let p = softmax(&[1.0, 1000.0]);
        assert!(p[1] > 0.99 && p.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn crop_box_is_the_centre_of_the_256_scaled_image() {
        // 512 x 512: scaled by 1/2, the centre 224 is 448 source pixels from 32.
        let (l, t, w, h) = crop_box(512, 512);
        assert!(
            (l - 32.0).abs() < 1e-9 && (t - 32.0).abs() < 1e-9,
            "{l} {t}"
        );
        assert!(
            (w - 448.0).abs() < 1e-9 && (h - 448.0).abs() < 1e-9,
            "{w} {h}"
        );
        // A wide image: 300 -> 256 high, the crop 16 rows down.
        let (_, t, _, h) = crop_box(1000, 300);
        let s = 300.0 / 256.0;
        assert!(
            (t - 16.0 * s).abs() < 1e-9 && (h - 224.0 * s).abs() < 1e-9,
            "{t} {h}"
        );
    }

    fn two_tone(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, _| {
            if x < w / 2 {
                image::Rgb([255, 0, 127])
            } else {
                image::Rgb([0, 255, 127])
            }
        }))
    }

    #[test]
    fn preprocess_gives_nchw_224_scaled_pixels() {
        let t = preprocess(&two_tone(640, 300)).unwrap();
        assert_eq!(t.len(), 3 * 224 * 224);
        let at = |c: usize, y: usize, x: usize| t[c * 224 * 224 + y * 224 + x];
        // Left edge of the crop is red, right edge green; blue is 127 -> 0 everywhere.
        assert!((at(0, 100, 0) - 1.0).abs() < 1e-6);
        assert!((at(1, 100, 0) + 127.0 / 128.0).abs() < 1e-6);
        assert!((at(1, 100, 223) - 1.0).abs() < 1e-6);
        assert!(at(2, 10, 10).abs() < 1e-6);
    }

    #[test]
    fn preprocess_takes_every_pixel_format() {
        let img = two_tone(300, 400);
        for converted in [
            DynamicImage::ImageLuma8(img.to_luma8()),
            DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
            DynamicImage::ImageRgba8(img.to_rgba8()),
            DynamicImage::ImageLuma16(img.to_luma16()),
            DynamicImage::ImageLumaA16(img.to_luma_alpha16()),
            DynamicImage::ImageRgb16(img.to_rgb16()),
            DynamicImage::ImageRgba16(img.to_rgba16()),
            DynamicImage::ImageRgb32F(img.to_rgb32f()),
            DynamicImage::ImageRgba32F(img.to_rgba32f()),
        ] {
            let t = preprocess(&converted).unwrap();
            assert!(
                t.iter().all(|v| (-1.0..=1.0).contains(v)),
                "{:?}",
                converted.color()
            );
        }
        // Tiny images are scaled up.
        assert_eq!(preprocess(&two_tone(3, 2)).unwrap().len(), 3 * 224 * 224);
    }

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn decode_tells_garbage_from_corrupt_images() {
        assert!(matches!(
            decode_image(b"hello, this is text", &LIMITS),
            Err(DecodeError::NotAnImage)
        ));
        let mut png = png(&DynamicImage::ImageRgb8(RgbImage::new(8, 8)));
        assert!(decode_image(&png, &LIMITS).is_ok());
        png.truncate(png.len() / 2);
        assert!(matches!(
            decode_image(&png, &LIMITS),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn large_jpegs_are_decoded_smaller_in_the_dct_domain() {
        let jpeg = |w: u32, h: u32| {
            let mut out = Vec::new();
            two_tone(w, h)
                .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg)
                .unwrap();
            out
        };
        // 1024 x 600: half size keeps the shorter side at 300 >= 256; a quarter would not.
        let big = jpeg(1024, 600);
        let h = probe(&big, &LIMITS).unwrap();
        assert_eq!((h.width, h.height), (1024, 600));
        assert_eq!(h.decoded_bytes, 512 * 300 * 3 * 2);
        let img = decode_image(&big, &LIMITS).unwrap();
        assert_eq!((img.width(), img.height()), (512, 300));
        let t = preprocess(&img).unwrap();
        assert!(t[0] > 0.9, "red on the left: {}", t[0]);
        // Small ones are decoded whole.
        let small = jpeg(400, 300);
        assert_eq!(probe(&small, &LIMITS).unwrap().decoded_bytes, 400 * 300 * 3);
        let img = decode_image(&small, &LIMITS).unwrap();
        assert_eq!((img.width(), img.height()), (400, 300));
        // A truncated large JPEG is still an error, not a panic.
        let cut = &big[..big.len() / 3];
        assert!(decode_image(cut, &LIMITS).is_err() || probe(cut, &LIMITS).is_err());
    }

    #[test]
    fn probe_reads_the_size_and_refuses_over_the_limits() {
        let bytes = png(&DynamicImage::ImageRgb8(RgbImage::new(40, 30)));
        let h = probe(&bytes, &LIMITS).unwrap();
        assert_eq!((h.width, h.height, h.decoded_bytes), (40, 30, 40 * 30 * 3));
        let small = DecodeLimits {
            max_pixels: 1000,
            ..LIMITS
        };
        assert!(matches!(
            probe(&bytes, &small),
            Err(DecodeError::TooManyPixels {
                width: 40,
                height: 30
            })
        ));
        let narrow = DecodeLimits {
            max_side: 39,
            ..LIMITS
        };
        assert!(matches!(
            decode_image(&bytes, &narrow),
            Err(DecodeError::TooManyPixels { .. })
        ));
        // WebP's decoder holds a second buffer: that is reserved too.
        let mut webp = Vec::new();
        DynamicImage::ImageRgba8(image::RgbaImage::new(10, 10))
            .write_to(&mut Cursor::new(&mut webp), image::ImageFormat::WebP)
            .unwrap();
        let h = probe(&webp, &LIMITS).unwrap();
        assert_eq!(h.decoded_bytes, 10 * 10 * 4 * 2 + 10 * 10);
        let tight = DecodeLimits {
            max_bytes: 3000,
            ..LIMITS
        };
        assert!(matches!(
            decode_image(&bytes, &tight),
            Err(DecodeError::TooLarge { bytes: 3600 })
        ));
    }
}
