//! Loading EfficientNet-Lite0 and its labels from `MODEL_DIR`, decoding uploads, and
//! turning an image into the top-k ImageNet classes. Nothing is fetched at run time.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, RgbImage};
use serde::Serialize;
use tract_onnx::prelude::*;

pub const MODEL_NAME: &str = "efficientnet-lite0";
pub const MODEL_FILE: &str = "efficientnet-lite0.onnx";
pub const LABELS_FILE: &str = "labels.txt";
pub const INPUT_SIZE: u32 = 224;
/// The shorter side is scaled to this before the centre crop (the ImageNet 0.875 crop).
pub const RESIZE_SIZE: u32 = 256;
pub const NUM_CLASSES: usize = 1000;
/// Decoding refuses images beyond this, so a tiny compressed upload cannot demand gigabytes.
pub const MAX_IMAGE_SIDE: u32 = 12_000;
pub const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub score: f32,
}

/// Why an upload could not be turned into pixels.
#[derive(Debug)]
pub enum DecodeError {
    /// Not a format we can recognise at all.
    NotAnImage,
    /// Recognised, but corrupt or truncated.
    Corrupt(String),
    /// Larger (in pixels) than we are willing to decode.
    TooLarge(String),
}

pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage, DecodeError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError::NotAnImage);
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => DecodeError::TooLarge(l.to_string()),
        image::ImageError::Unsupported(u) => DecodeError::Corrupt(u.to_string()),
        other => DecodeError::Corrupt(other.to_string()),
    })
}

/// RGB, shorter side to 256, centre crop 224, `(px - 127) / 128`, NCHW.
pub fn preprocess(img: &DynamicImage) -> Tensor {
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    let scale = RESIZE_SIZE as f64 / w.min(h).max(1) as f64;
    let nw = ((w as f64 * scale).round() as u32).max(INPUT_SIZE);
    let nh = ((h as f64 * scale).round() as u32).max(INPUT_SIZE);
    let resized: RgbImage = image::imageops::resize(&rgb, nw, nh, FilterType::Triangle);
    let left = (nw - INPUT_SIZE) / 2;
    let top = (nh - INPUT_SIZE) / 2;
    let side = INPUT_SIZE as usize;
    let tensor = tract_ndarray::Array4::from_shape_fn((1, 3, side, side), |(_, c, y, x)| {
        let px = resized.get_pixel(left + x as u32, top + y as u32);
        (px[c] as f32 - 127.0) / 128.0
    });
    tensor.into()
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|z| (z - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

pub struct Classifier {
    plan: Arc<TypedRunnableModel>,
    labels: Vec<String>,
}

impl Classifier {
    pub fn load(model_dir: &Path) -> Result<Self> {
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
        let side = INPUT_SIZE as usize;
        let plan = tract_onnx::onnx()
            .model_for_path(&model_path)
            .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, side, side]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .with_context(|| format!("loading model {}", model_path.display()))?;
        let classifier = Self { plan, labels };
        // One run at start-up proves the model answers with one score per label and
        // keeps the first user request from paying for lazy initialisation.
        classifier
            .scores(Tensor::zero::<f32>(&[1, 3, side, side])?)
            .with_context(|| format!("test inference with {}", model_path.display()))?;
        Ok(classifier)
    }

    /// Softmax probabilities for one preprocessed input.
    pub fn scores(&self, input: Tensor) -> Result<Vec<f32>> {
        let outputs = self.plan.run(tvec!(input.into()))?;
        let Some(first) = outputs.first() else {
            bail!("model produced no output");
        };
        let view = first.try_as_plain_ram()?;
        let logits = view.as_slice::<f32>()?;
        ensure!(
            logits.len() == NUM_CLASSES,
            "model produced {} scores, expected {NUM_CLASSES}",
            logits.len()
        );
        Ok(softmax(logits))
    }

    pub fn classify(&self, img: &DynamicImage, top_k: usize) -> Result<Vec<Prediction>> {
        let probs = self.scores(preprocess(img))?;
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
    fn preprocess_gives_nchw_224_scaled_pixels() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(640, 300, |x, _| {
            if x < 320 {
                image::Rgb([255, 0, 127])
            } else {
                image::Rgb([0, 255, 127])
            }
        }));
        let t = preprocess(&img);
        assert_eq!(t.shape(), &[1, 3, 224, 224]);
        let view = t.try_as_plain_ram().unwrap();
        let a = view.to_array_view::<f32>().unwrap();
        // Left edge of the crop is red, right edge green; the blue channel is 0 everywhere.
        assert!((a[[0, 0, 100, 0]] - 1.0).abs() < 1e-6);
        assert!((a[[0, 1, 100, 0]] + 127.0 / 128.0).abs() < 1e-6);
        assert!((a[[0, 1, 100, 223]] - 1.0).abs() < 1e-6);
        assert!(a[[0, 2, 10, 10]].abs() < 1e-6);
    }

    #[test]
    fn decode_tells_garbage_from_corrupt_images() {
        assert!(matches!(
            decode_image(b"hello, this is text"),
            Err(DecodeError::NotAnImage)
        ));
        let mut png = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::new(8, 8))
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert!(decode_image(&png).is_ok());
        png.truncate(png.len() / 2);
        assert!(matches!(decode_image(&png), Err(DecodeError::Corrupt(_))));
    }
}
