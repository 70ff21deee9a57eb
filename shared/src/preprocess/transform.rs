//! The evaluation transform's settings and steps after resizing: center crop, `ToTensor` +
//! `Normalize`, and the whole pipeline (decode → resize → crop → normalise), with the
//! magnification-aware variants of [`EvalTransform`] (native-resolution center crop, or a
//! grid of native-resolution crops whose features are averaged).

use std::path::Path;

use image::RgbImage;

use super::{decode_image, load_image, resize_shorter_side};
use crate::{Error, Result};

/// ImageNet channel means (RGB), as used by torchvision's pretrained models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];

/// ImageNet channel standard deviations (RGB), as used by torchvision's pretrained models.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Maximum windows per image side of [`EvalTransform::Grid`] (so at most 16 views).
pub const GRID_MAX_PER_SIDE: u32 = 4;

/// How an evaluation image becomes network input.
///
/// A trunk trained on native-resolution crops sees nuclei at the scan's scale; resizing a
/// large tile to the crop side shrinks them (a 417 px tile resized to 128 px loses ×3.3).
/// `CenterCrop` and `Grid` keep the native scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalTransform {
    /// Resize the shorter side to `resize_shorter`, center-crop `crop` (torchvision's
    /// standard evaluation transform; bit-exact with it).
    #[default]
    Resize,
    /// Center-crop `crop` at native resolution; an image smaller than `crop` along a side
    /// first has its shorter side resized to `crop`.
    CenterCrop,
    /// Non-overlapping `crop` windows at native resolution on a centred grid (at most
    /// [`GRID_MAX_PER_SIDE`] per side, spread evenly when the image holds more); the image's
    /// features are the mean over the windows. Images smaller than `crop` are handled as by
    /// `CenterCrop` (one window).
    Grid,
}

impl EvalTransform {
    /// Every transform, in the order the CLI lists them.
    pub const ALL: [EvalTransform; 3] = [
        EvalTransform::Resize,
        EvalTransform::CenterCrop,
        EvalTransform::Grid,
    ];

    /// The CLI / JSON name (`resize`, `center-crop`, `grid`).
    pub fn as_str(self) -> &'static str {
        match self {
            EvalTransform::Resize => "resize",
            EvalTransform::CenterCrop => "center-crop",
            EvalTransform::Grid => "grid",
        }
    }
}

impl std::fmt::Display for EvalTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EvalTransform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        EvalTransform::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown evaluation transform `{s}`; use resize, center-crop or grid"
                ))
            })
    }
}

/// Settings of the evaluation transform: resize the shorter side, center-crop a square,
/// normalise per channel (or, per [`EvalTransform`], crop at native resolution).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreprocessConfig {
    /// Target length of the shorter image side after resizing (torchvision `Resize(int)`).
    pub resize_shorter: u32,
    /// Side of the square center crop (torchvision `CenterCrop(int)`).
    pub crop: u32,
    /// Per-channel (RGB) mean subtracted after scaling pixel values to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Resize then crop (default), or crop(s) at native resolution.
    pub transform: EvalTransform,
}

impl Default for PreprocessConfig {
    /// torchvision's standard ImageNet evaluation transform: resize to 256, crop 224,
    /// ImageNet mean/std.
    fn default() -> Self {
        Self::imagenet(256, 224)
    }
}

impl PreprocessConfig {
    /// A config with the given resize and crop sizes and ImageNet mean/std.
    pub fn imagenet(resize_shorter: u32, crop: u32) -> Self {
        Self {
            resize_shorter,
            crop,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            transform: EvalTransform::Resize,
        }
    }

    /// The same settings with another [`EvalTransform`].
    pub fn with_transform(self, transform: EvalTransform) -> Self {
        Self { transform, ..self }
    }

    /// Check the settings: sizes positive, `crop <= resize_shorter`, means finite and standard
    /// deviations finite and strictly positive.
    pub fn validate(&self) -> Result<()> {
        if self.resize_shorter == 0 || self.crop == 0 {
            return Err(Error::invalid(format!(
                "preprocess config: resize_shorter ({}) and crop ({}) must be positive",
                self.resize_shorter, self.crop
            )));
        }
        if self.crop > self.resize_shorter {
            return Err(Error::invalid(format!(
                "preprocess config: crop ({}) must not exceed resize_shorter ({})",
                self.crop, self.resize_shorter
            )));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::invalid(format!(
                "preprocess config: mean {:?} must be finite",
                self.mean
            )));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::invalid(format!(
                "preprocess config: std {:?} must be finite and > 0",
                self.std
            )));
        }
        Ok(())
    }
}

/// Python's `int(round(d / 2.0))` for `d >= 0`: halves round to even.
pub(super) fn half_round_even(d: u32) -> u32 {
    let k = d / 2;
    if d % 2 == 1 && k % 2 == 1 {
        k + 1
    } else {
        k
    }
}

/// torchvision `CenterCrop(size)`: a `size x size` crop whose offset is
/// `int(round((side - size) / 2.0))` (Python rounding, halves to even). An image smaller than
/// `size` along a side is first zero-padded on that side, `(size - side) // 2` before and the
/// rest after, as torchvision does.
pub fn center_crop(img: &RgbImage, size: u32) -> Result<RgbImage> {
    if size == 0 {
        return Err(Error::invalid("center crop size must be > 0"));
    }
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Image(format!("cannot crop an empty {w}x{h} image")));
    }
    // Padding (left, top) and the padded size, per torchvision's center_crop.
    let (pad_l, pw) = if size > w {
        ((size - w) / 2, size)
    } else {
        (0, w)
    };
    let (pad_t, ph) = if size > h {
        ((size - h) / 2, size)
    } else {
        (0, h)
    };
    let top = half_round_even(ph - size);
    let left = half_round_even(pw - size);

    let mut out = RgbImage::new(size, size);
    let src = img.as_raw();
    let stride = w as usize * 3;
    for oy in 0..size {
        // Row in the padded image, then in the source.
        let py = oy + top;
        if py < pad_t || py - pad_t >= h {
            continue;
        }
        let sy = (py - pad_t) as usize;
        // Columns [left, left + size) of the padded image that fall inside the source.
        let x0 = left.max(pad_l);
        let x1 = (left + size).min(pad_l + w);
        if x0 >= x1 {
            continue;
        }
        let (sx0, sx1) = ((x0 - pad_l) as usize, (x1 - pad_l) as usize);
        let (dx0, dx1) = ((x0 - left) as usize, (x1 - left) as usize);
        let dst_stride = size as usize * 3;
        let dst = &mut out.as_mut()[oy as usize * dst_stride..(oy as usize + 1) * dst_stride];
        dst[dx0 * 3..dx1 * 3].copy_from_slice(&src[sy * stride + sx0 * 3..sy * stride + sx1 * 3]);
    }
    Ok(out)
}

/// torchvision `ToTensor` + `Normalize(mean, std)`: a `[3, H, W]` row-major `f32` buffer with
/// `(v / 255 - mean[c]) / std[c]`.
///
/// Computed in `f32` exactly as PyTorch does (`v * (1 / 255)`, since PyTorch divides by a
/// scalar through its reciprocal, then a true division by `std`), so results are bit-equal.
pub fn normalize_chw(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = w as usize * h as usize;
    let mut out = vec![0f32; 3 * plane];
    let inv255 = 1.0f32 / 255.0;
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) * inv255 - mean[c]) / std[c];
        }
    }
    out
}

/// The evaluation transform on a decoded image, one view: for [`EvalTransform::Resize`],
/// [`resize_shorter_side`] -> [`center_crop`] -> [`normalize_chw`] (torchvision's); for
/// `CenterCrop` and `Grid`, the native-resolution center crop. Returns `3 * crop * crop`
/// floats, `[3, crop, crop]`. [`preprocess_views`] gives every view of a `Grid`.
pub fn preprocess_rgb(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    cfg.validate()?;
    let cropped = match cfg.transform {
        EvalTransform::Resize => {
            center_crop(&resize_shorter_side(img, cfg.resize_shorter)?, cfg.crop)?
        }
        EvalTransform::CenterCrop | EvalTransform::Grid => native_center_crop(img, cfg.crop)?,
    };
    Ok(normalize_chw(&cropped, cfg.mean, cfg.std))
}

/// Every view of the evaluation transform, each `[3, crop, crop]` floats: one view for
/// `Resize` and `CenterCrop`, the grid's windows (row by row) for `Grid`. An image's features
/// are the mean of its views' features.
pub fn preprocess_views(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Vec<Vec<f32>>> {
    if cfg.transform != EvalTransform::Grid {
        return Ok(vec![preprocess_rgb(img, cfg)?]);
    }
    cfg.validate()?;
    let s = cfg.crop;
    let (w, h) = img.dimensions();
    if w < s || h < s {
        return Ok(vec![preprocess_rgb(img, cfg)?]);
    }
    let xs = grid_offsets(w, s);
    let ys = grid_offsets(h, s);
    let mut views = Vec::with_capacity(xs.len() * ys.len());
    for &y in &ys {
        for &x in &xs {
            let window = image::imageops::crop_imm(img, x, y, s, s).to_image();
            views.push(normalize_chw(&window, cfg.mean, cfg.std));
        }
    }
    Ok(views)
}

/// Left edges of the grid's windows along a side of `len >= s` pixels: `len / s`
/// non-overlapping windows centred as a block, or, when more than [`GRID_MAX_PER_SIDE`] fit,
/// that many spread evenly over the centred block.
fn grid_offsets(len: u32, s: u32) -> Vec<u32> {
    let fit = len / s;
    let margin = (len - fit * s) / 2;
    let n = fit.min(GRID_MAX_PER_SIDE);
    (0..n)
        .map(|i| {
            // Window index i of n, spread over the `fit` slots (both ends included).
            let slot = if n == 1 {
                (fit - 1) / 2
            } else {
                i * (fit - 1) / (n - 1)
            };
            margin + slot * s
        })
        .collect()
}

/// A `s x s` center crop at native resolution; an image smaller than `s` along a side first
/// has its shorter side resized to `s` (as the training crops do).
fn native_center_crop(img: &RgbImage, s: u32) -> Result<RgbImage> {
    if img.width() < s || img.height() < s {
        center_crop(&resize_shorter_side(img, s)?, s)
    } else {
        center_crop(img, s)
    }
}

/// [`decode_image`] then [`preprocess_rgb`].
pub fn preprocess_bytes(bytes: &[u8], cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    cfg.validate()?;
    preprocess_rgb(&decode_image(bytes)?, cfg)
}

/// [`load_image`] then [`preprocess_views`]; errors name the file.
pub fn preprocess_file_views(path: &Path, cfg: &PreprocessConfig) -> Result<Vec<Vec<f32>>> {
    cfg.validate()?;
    let img = load_image(path)?;
    preprocess_views(&img, cfg).map_err(|e| match e {
        Error::Image(msg) => Error::Image(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// [`load_image`] then [`preprocess_rgb`]; errors name the file.
pub fn preprocess_file(path: &Path, cfg: &PreprocessConfig) -> Result<Vec<f32>> {
    cfg.validate()?;
    let img = load_image(path)?;
    preprocess_rgb(&img, cfg).map_err(|e| match e {
        Error::Image(msg) => Error::Image(format!("{}: {msg}", path.display())),
        other => other,
    })
}
