//! Training augmentation and the evaluation transform of one decoded image.
//!
//! [`augment`]: crop to `size x size` per the task's [`CropPolicy`], then random horizontal
//! and vertical flips, optional random quarter turns, optional H&E stain jitter and colour
//! jitter, then ImageNet normalisation to a `[3, size, size]` buffer. Every random draw comes
//! from a generator keyed by the image's augment seed (from the sampler's batch plan), with a
//! separate stream per step, so enabling one augmentation does not change the draws of
//! another.
//!
//! Resampling is Pillow's antialiased bilinear (bit-exact), as in the evaluation transform of
//! `mtpath_shared::preprocess`.

use std::borrow::Cow;

use anyhow::{ensure, Result};
use image::{imageops, RgbImage};
use mtpath_shared::preprocess::{
    center_crop, normalize_chw, resize_exact, resize_shorter_side, IMAGENET_MEAN, IMAGENET_STD,
};
use serde::{Deserialize, Serialize};

use super::rng::Rng;
use super::CropPolicy;

/// Augmentation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AugmentConfig {
    /// Side of the square network input, in pixels.
    pub size: u32,
    /// Random horizontal flip with probability 0.5 (the paper's: on).
    pub hflip: bool,
    /// Random vertical flip with probability 0.5 (the paper's: on).
    pub vflip: bool,
    /// Random rotation by `k * 90°` clockwise, `k` uniform in `{0, 1, 2, 3}` (default off).
    pub rot90: bool,
    /// Colour jitter strength `j`: brightness, contrast and saturation factors each uniform in
    /// `[max(0, 1 - j), 1 + j]`, applied in a random order (torchvision `ColorJitter(j, j, j)`
    /// on float tensors; no hue). `0` disables it (default).
    pub jitter: f32,
    /// H&E stain jitter strength σ (Tellez et al. 2018, "HED" augmentation): the image is
    /// colour-deconvolved into haematoxylin, eosin and DAB optical densities (Ruifrok &
    /// Johnston's stain vectors, scikit-image's `rgb2hed`), each density `d` becomes
    /// `α·d + β` with `α` uniform in `[1 - σ, 1 + σ]` and `β` in `[-σ, σ]`, and the image is
    /// recomposed. Applied before colour jitter. `0` disables it (default).
    pub stain_jitter: f32,
    /// Area fraction range of [`CropPolicy::RandomResizedCrop`] (torchvision's
    /// `scale`, default `(0.08, 1.0)`); the aspect ratio range is torchvision's `(3/4, 4/3)`.
    pub rrc_scale: (f32, f32),
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            size: 224,
            hflip: true,
            vflip: true,
            rot90: false,
            jitter: 0.0,
            stain_jitter: 0.0,
            rrc_scale: (0.08, 1.0),
        }
    }
}

impl AugmentConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(self.size > 0, "augment: size must be > 0");
        ensure!(
            self.jitter.is_finite() && self.jitter >= 0.0,
            "augment: jitter {} must be finite and >= 0",
            self.jitter
        );
        ensure!(
            self.stain_jitter.is_finite() && (0.0..1.0).contains(&self.stain_jitter),
            "augment: stain jitter {} must be in [0, 1)",
            self.stain_jitter
        );
        let (lo, hi) = self.rrc_scale;
        ensure!(
            lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi,
            "augment: rrc_scale ({lo}, {hi}) must satisfy 0 < lo <= hi"
        );
        Ok(())
    }
}

/// Stream tags: one independent generator per augmentation step.
const TAG_CROP: u64 = 1;
const TAG_FLIP: u64 = 2;
const TAG_JITTER: u64 = 3;
const TAG_STAIN: u64 = 4;

/// The geometric part of [`augment`] (crop, flips, quarter turns): a `size x size` image.
pub fn augment_image(
    img: &RgbImage,
    policy: CropPolicy,
    cfg: &AugmentConfig,
    seed: u64,
) -> Result<RgbImage> {
    cfg.validate()?;
    let s = cfg.size;
    let mut rng = Rng::keyed(&[TAG_CROP, seed]);
    let mut out = match policy {
        CropPolicy::RandomCrop => random_crop(img, s, &mut rng)?,
        CropPolicy::RandomResizedCrop => {
            let (x, y, w, h) = rrc_params(img.width(), img.height(), cfg.rrc_scale, &mut rng);
            let crop = imageops::crop_imm(img, x, y, w, h).to_image();
            resize_exact(&crop, s, s)?
        }
        CropPolicy::Resize => center_crop(&resize_shorter_side(img, s)?, s)?,
    };
    // Always draw all three, so that switching one on or off leaves the others unchanged.
    let mut rng = Rng::keyed(&[TAG_FLIP, seed]);
    let (h, v, k) = (rng.chance(0.5), rng.chance(0.5), rng.below(4));
    if cfg.hflip && h {
        imageops::flip_horizontal_in_place(&mut out);
    }
    if cfg.vflip && v {
        imageops::flip_vertical_in_place(&mut out);
    }
    if cfg.rot90 {
        out = match k {
            1 => imageops::rotate90(&out),
            2 => imageops::rotate180(&out),
            3 => imageops::rotate270(&out),
            _ => out,
        };
    }
    Ok(out)
}

/// The training transform: [`augment_image`], stain jitter, colour jitter, ImageNet
/// normalisation; returns `[3, size, size]` floats. A pure function of the image, policy,
/// config and `seed`.
pub fn augment(
    img: &RgbImage,
    policy: CropPolicy,
    cfg: &AugmentConfig,
    seed: u64,
) -> Result<Vec<f32>> {
    let out = augment_image(img, policy, cfg, seed)?;
    if cfg.jitter == 0.0 && cfg.stain_jitter == 0.0 {
        return Ok(normalize_chw(&out, IMAGENET_MEAN, IMAGENET_STD));
    }
    let mut px = unit_pixels(&out);
    if cfg.stain_jitter > 0.0 {
        let mut rng = Rng::keyed(&[TAG_STAIN, seed]);
        stain_jitter(&mut px, cfg.stain_jitter, &mut rng);
    }
    if cfg.jitter > 0.0 {
        let mut rng = Rng::keyed(&[TAG_JITTER, seed]);
        colour_jitter(&mut px, cfg.jitter, &mut rng);
    }
    Ok(normalize_pixels(&px))
}

/// The deterministic validation transform for images of a task trained with `policy`:
///
/// * [`CropPolicy::RandomCrop`] on an image at least `size` on both sides: center crop `size`
///   at native resolution (the scale training saw);
/// * otherwise (smaller images, [`CropPolicy::Resize`], [`CropPolicy::RandomResizedCrop`]):
///   resize the shorter side to `size`, then center crop `size`.
///
/// Then ImageNet normalisation; returns `[3, size, size]` floats.
pub fn eval_transform(img: &RgbImage, policy: CropPolicy, size: u32) -> Result<Vec<f32>> {
    ensure!(size > 0, "eval transform: size must be > 0");
    let (w, h) = img.dimensions();
    let out = if policy == CropPolicy::RandomCrop && w >= size && h >= size {
        center_crop(img, size)?
    } else {
        center_crop(&resize_shorter_side(img, size)?, size)?
    };
    Ok(normalize_chw(&out, IMAGENET_MEAN, IMAGENET_STD))
}

/// A uniformly placed `s x s` window; an image smaller than `s` along a side first has its
/// shorter side resized to `s`.
fn random_crop(img: &RgbImage, s: u32, rng: &mut Rng) -> Result<RgbImage> {
    let img = if img.width() < s || img.height() < s {
        Cow::Owned(resize_shorter_side(img, s)?)
    } else {
        Cow::Borrowed(img)
    };
    let (w, h) = img.dimensions();
    let x = rng.below(u64::from(w - s) + 1) as u32;
    let y = rng.below(u64::from(h - s) + 1) as u32;
    Ok(imageops::crop_imm(img.as_ref(), x, y, s, s).to_image())
}

/// torchvision `RandomResizedCrop.get_params` with ratio `(3/4, 4/3)`: `(left, top, w, h)`.
///
/// Up to 10 attempts at an area fraction uniform in `scale` and a log-uniform aspect ratio;
/// sides rounded half-to-even like Python's `round`; if none fits, the center crop clamped to
/// the ratio range. (`ln`/`exp` come from the platform's libm; a last-ulp difference there
/// could only matter when a side lands exactly on a rounding boundary.)
pub fn rrc_params(
    width: u32,
    height: u32,
    scale: (f32, f32),
    rng: &mut Rng,
) -> (u32, u32, u32, u32) {
    let (rmin, rmax) = (3.0f64 / 4.0, 4.0f64 / 3.0);
    let area = f64::from(width) * f64::from(height);
    let (lr0, lr1) = (rmin.ln(), rmax.ln());
    for _ in 0..10 {
        let target = area * rng.uniform(f64::from(scale.0), f64::from(scale.1));
        let ratio = rng.uniform(lr0, lr1).exp();
        let w = (target * ratio).sqrt().round_ties_even();
        let h = (target / ratio).sqrt().round_ties_even();
        if w > 0.0 && w <= f64::from(width) && h > 0.0 && h <= f64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let top = rng.below(u64::from(height - h) + 1) as u32;
            let left = rng.below(u64::from(width - w) + 1) as u32;
            return (left, top, w, h);
        }
    }
    let in_ratio = f64::from(width) / f64::from(height);
    let (w, h) = if in_ratio < rmin {
        (width, (f64::from(width) / rmin).round_ties_even() as u32)
    } else if in_ratio > rmax {
        ((f64::from(height) * rmax).round_ties_even() as u32, height)
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// An image's pixels as RGB floats in `[0, 1]`.
fn unit_pixels(img: &RgbImage) -> Vec<[f32; 3]> {
    let inv255 = 1.0f32 / 255.0;
    img.as_raw()
        .chunks_exact(3)
        .map(|p| [0, 1, 2].map(|c| f32::from(p[c]) * inv255))
        .collect()
}

/// ImageNet normalisation of `[0, 1]` pixels into a `[3, h·w]` plane-major buffer.
fn normalize_pixels(px: &[[f32; 3]]) -> Vec<f32> {
    let plane = px.len();
    let mut out = vec![0f32; 3 * plane];
    for (i, p) in px.iter().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (p[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

/// Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in RGB optical
/// density, as scikit-image's `rgb_from_hed`.
const RGB_FROM_HED: [[f64; 3]; 3] = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]];

/// The inverse of a 3×3 matrix (by cofactors; the stain matrix is well conditioned).
fn inverse3(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let c = |r: usize, k: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (k1, k2) = ((k + 1) % 3, (k + 2) % 3);
        m[r1][k1] * m[r2][k2] - m[r1][k2] * m[r2][k1]
    };
    let det: f64 = (0..3).map(|k| m[0][k] * c(0, k)).sum();
    let mut inv = [[0.0; 3]; 3];
    for (r, row) in inv.iter_mut().enumerate() {
        for (k, v) in row.iter_mut().enumerate() {
            *v = c(k, r) / det;
        }
    }
    inv
}

/// H&E stain jitter (see [`AugmentConfig::stain_jitter`]) of `[0, 1]` pixels in place.
///
/// Draws `α` for haematoxylin, eosin and DAB, then `β` for the three. Densities are natural-log
/// optical densities of the pixel (floored at 1e-6, as scikit-image does) and are not clipped,
/// so with `α = 1, β = 0` the image comes back unchanged up to rounding.
fn stain_jitter(px: &mut [[f32; 3]], sigma: f32, rng: &mut Rng) {
    let s = f64::from(sigma);
    let alpha = [0; 3].map(|_| rng.uniform(1.0 - s, 1.0 + s));
    let beta = [0; 3].map(|_| rng.uniform(-s, s));
    scale_stains(px, alpha, beta);
}

/// Each pixel's stain densities `d_k` become `alpha[k]·d_k + beta[k]` (H, E, DAB order).
fn scale_stains(px: &mut [[f32; 3]], alpha: [f64; 3], beta: [f64; 3]) {
    let hed_from_rgb = inverse3(&RGB_FROM_HED);
    // Fold the per-stain affine map into one RGB-density map: od' = od·A + b with
    // A = hed_from_rgb · diag(α) · rgb_from_hed and b = β · rgb_from_hed.
    let mut a = [[0f32; 3]; 3];
    let mut b = [0f32; 3];
    for (i, row) in a.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3)
                .map(|k| hed_from_rgb[i][k] * alpha[k] * RGB_FROM_HED[k][j])
                .sum::<f64>() as f32;
        }
    }
    for (j, v) in b.iter_mut().enumerate() {
        *v = (0..3).map(|k| beta[k] * RGB_FROM_HED[k][j]).sum::<f64>() as f32;
    }
    for p in px.iter_mut() {
        let od = p.map(|x| -x.max(1e-6).ln());
        *p = [0, 1, 2].map(|j| {
            let d = od[0] * a[0][j] + od[1] * a[1][j] + od[2] * a[2][j] + b[j];
            (-d).exp().clamp(0.0, 1.0)
        });
    }
}

/// Colour jitter (torchvision `ColorJitter(j, j, j)` semantics on a float tensor in `[0, 1]`,
/// no hue) of `[0, 1]` pixels in place.
///
/// Draws a random order of the three operations, then the brightness, contrast and saturation
/// factors, each uniform in `[max(0, 1 - j), 1 + j]`. With `g(p) = 0.2989 R + 0.587 G + 0.114 B`:
/// brightness `x' = clamp(b x)`; contrast `x' = clamp(c x + (1 - c) mean(g))` (mean over the
/// image); saturation `x' = clamp(s x + (1 - s) g(p))`; clamps to `[0, 1]`.
fn colour_jitter(px: &mut [[f32; 3]], j: f32, rng: &mut Rng) {
    // Random order: a Fisher-Yates shuffle of [0, 1, 2].
    let mut order = [0usize, 1, 2];
    for i in (1..3).rev() {
        let k = rng.below(i as u64 + 1) as usize;
        order.swap(i, k);
    }
    let lo = f64::from((1.0 - j).max(0.0));
    let hi = f64::from(1.0 + j);
    let factors = [0; 3].map(|_| rng.uniform(lo, hi) as f32);
    let gray = |p: &[f32; 3]| 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let blend = |x: f32, y: f32, f: f32| (f * x + (1.0 - f) * y).clamp(0.0, 1.0);
    for op in order {
        let f = factors[op];
        match op {
            0 => px
                .iter_mut()
                .for_each(|p| *p = p.map(|x| (f * x).clamp(0.0, 1.0))),
            1 => {
                let sum: f64 = px.iter().map(|p| f64::from(gray(p))).sum();
                let mean = (sum / px.len().max(1) as f64) as f32;
                px.iter_mut()
                    .for_each(|p| *p = p.map(|x| blend(x, mean, f)));
            }
            _ => px.iter_mut().for_each(|p| {
                let g = gray(p);
                *p = p.map(|x| blend(x, g, f));
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtpath_shared::preprocess::{load_image, preprocess_rgb, PreprocessConfig};
    use mtpath_shared::testdata::data_dir;

    /// A `w x h` image whose pixels encode their coordinates (sides up to 4096).
    fn coord_image(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x & 255) as u8,
                (y & 255) as u8,
                ((x >> 8) | ((y >> 8) << 4)) as u8,
            ])
        })
    }

    fn decode(p: &image::Rgb<u8>) -> (u32, u32) {
        let [r, g, b] = p.0;
        (
            u32::from(r) | (u32::from(b & 15) << 8),
            u32::from(g) | (u32::from(b >> 4) << 8),
        )
    }

    fn plain(size: u32) -> AugmentConfig {
        AugmentConfig {
            size,
            hflip: false,
            vflip: false,
            rot90: false,
            ..AugmentConfig::default()
        }
    }

    #[test]
    fn random_crop_of_417x312_is_a_window_inside_the_image() {
        let img = coord_image(417, 312);
        let cfg = plain(224);
        let mut origins = std::collections::HashSet::new();
        for seed in 0..200 {
            let out = augment_image(&img, CropPolicy::RandomCrop, &cfg, seed).unwrap();
            assert_eq!(out.dimensions(), (224, 224));
            let (x0, y0) = decode(out.get_pixel(0, 0));
            assert!(
                x0 + 224 <= 417 && y0 + 224 <= 312,
                "seed {seed}: ({x0}, {y0})"
            );
            for (x, y, p) in out.enumerate_pixels() {
                assert_eq!(decode(p), (x0 + x, y0 + y), "seed {seed}: not a window");
            }
            origins.insert((x0, y0));
        }
        // 194 x 89 possible windows: 200 draws hit many distinct ones, including near edges.
        assert!(origins.len() > 150, "{}", origins.len());
        assert!(origins.iter().any(|o| o.0 < 20) && origins.iter().any(|o| o.0 > 173));
        assert!(origins.iter().any(|o| o.1 < 10) && origins.iter().any(|o| o.1 > 78));
    }

    #[test]
    fn random_crop_upsizes_small_images_first() {
        let img = coord_image(50, 80);
        let out = augment_image(&img, CropPolicy::RandomCrop, &plain(112), 3).unwrap();
        let resized = resize_shorter_side(&img, 112).unwrap();
        assert_eq!(resized.dimensions(), (112, 179));
        // The output is a 112 x 112 window of the resized image.
        let found = (0..=179 - 112)
            .any(|y0| imageops::crop_imm(&resized, 0, y0, 112, 112).to_image() == out);
        assert!(found);
        // Exactly the input size: identity.
        let img = coord_image(112, 112);
        let out = augment_image(&img, CropPolicy::RandomCrop, &plain(112), 9).unwrap();
        assert_eq!(out, img);
    }

    #[test]
    fn random_resized_crop_params_inside_and_fallback() {
        for (w, h) in [(417u32, 312u32), (50, 50), (360, 363), (1000, 30)] {
            for scale in [(0.08f32, 1.0f32), (0.5, 1.0), (1.0, 1.0)] {
                for seed in 0..300 {
                    let mut rng = Rng::new(seed);
                    let (x, y, cw, ch) = rrc_params(w, h, scale, &mut rng);
                    assert!(cw > 0 && ch > 0 && x + cw <= w && y + ch <= h);
                }
            }
        }
        // A 1000 x 30 image never fits a 4/3 crop of its whole area: fallback center crop
        // at ratio 4/3: h = 30, w = round(40) = 40, left = 480.
        let mut rng = Rng::new(0);
        assert_eq!(rrc_params(1000, 30, (1.0, 1.0), &mut rng), (480, 0, 40, 30));
        // A square image with scale (1, 1) and ratio 1 attempts: the whole image is possible.
        let mut rng = Rng::new(0);
        let (_, _, cw, ch) = rrc_params(100, 100, (1.0, 1.0), &mut rng);
        assert!(cw <= 100 && ch <= 100);
    }

    #[test]
    fn random_resized_crop_is_crop_then_pillow_resize() {
        let img = coord_image(417, 312);
        let cfg = AugmentConfig {
            rrc_scale: (0.2, 0.6),
            ..plain(112)
        };
        for seed in 0..10 {
            let out = augment_image(&img, CropPolicy::RandomResizedCrop, &cfg, seed).unwrap();
            let mut rng = Rng::keyed(&[TAG_CROP, seed]);
            let (x, y, w, h) = rrc_params(417, 312, cfg.rrc_scale, &mut rng);
            let area = f64::from(w * h) / (417.0 * 312.0);
            assert!((0.18..0.62).contains(&area), "area fraction {area}");
            let crop = imageops::crop_imm(&img, x, y, w, h).to_image();
            assert_eq!(out, resize_exact(&crop, 112, 112).unwrap());
        }
    }

    /// The 8 symmetries of the square applied to `img`.
    fn dihedral(img: &RgbImage) -> Vec<RgbImage> {
        let mut out = Vec::new();
        for base in [img.clone(), imageops::flip_horizontal(img)] {
            out.push(base.clone());
            out.push(imageops::rotate90(&base));
            out.push(imageops::rotate180(&base));
            out.push(imageops::rotate270(&base));
        }
        out
    }

    #[test]
    fn flips_and_quarter_turns_are_exact_permutations() {
        let img = coord_image(64, 64);
        let sym = dihedral(&img);
        let cfg = AugmentConfig {
            rot90: true,
            ..AugmentConfig {
                size: 64,
                ..AugmentConfig::default()
            }
        };
        let mut hit = [0usize; 8];
        for seed in 0..400 {
            let out = augment_image(&img, CropPolicy::Resize, &cfg, seed).unwrap();
            let k = sym
                .iter()
                .position(|s| *s == out)
                .expect("a symmetry of the input");
            hit[k] += 1;
        }
        // All 8 reached: the 16 equally likely (h, v, k) draws cover each symmetry twice
        // (h and v together are a half turn), so each has probability 1/8.
        assert!(hit.iter().all(|&c| c > 20), "{hit:?}");
        // Flips alone: only identity, h, v, and 180°.
        let cfg = AugmentConfig {
            size: 64,
            ..AugmentConfig::default()
        };
        let allowed = [
            img.clone(),
            imageops::flip_horizontal(&img),
            imageops::flip_vertical(&img),
            imageops::rotate180(&img),
        ];
        let mut seen = [false; 4];
        for seed in 0..100 {
            let out = augment_image(&img, CropPolicy::Resize, &cfg, seed).unwrap();
            seen[allowed.iter().position(|a| *a == out).expect("a flip")] = true;
        }
        assert_eq!(seen, [true; 4]);
    }

    #[test]
    fn toggling_one_augmentation_keeps_the_others_draws() {
        let img = coord_image(417, 312);
        let with = AugmentConfig {
            rot90: true,
            ..AugmentConfig::default()
        };
        let without = AugmentConfig::default();
        for seed in 0..20 {
            let a = augment_image(&img, CropPolicy::RandomCrop, &with, seed).unwrap();
            let b = augment_image(&img, CropPolicy::RandomCrop, &without, seed).unwrap();
            // Same crop and flips: same set of pixels.
            let mut pa: Vec<_> = a.pixels().map(|p| p.0).collect();
            let mut pb: Vec<_> = b.pixels().map(|p| p.0).collect();
            pa.sort();
            pb.sort();
            assert_eq!(pa, pb);
        }
    }

    /// `scale_stains` step by step in f64: deconvolve, scale and shift, recompose.
    fn scale_stains_reference(p: [f32; 3], alpha: [f64; 3], beta: [f64; 3]) -> [f64; 3] {
        let hed_from_rgb = inverse3(&RGB_FROM_HED);
        let od = p.map(|x| -f64::from(x.max(1e-6)).ln());
        let hed: [f64; 3] = [0, 1, 2].map(|k| {
            let d: f64 = (0..3).map(|c| od[c] * hed_from_rgb[c][k]).sum();
            alpha[k] * d + beta[k]
        });
        [0, 1, 2].map(|c| {
            let d: f64 = (0..3).map(|k| hed[k] * RGB_FROM_HED[k][c]).sum();
            (-d).exp().clamp(0.0, 1.0)
        })
    }

    #[test]
    fn stain_matrix_inverse_is_an_inverse() {
        let inv = inverse3(&RGB_FROM_HED);
        let product =
            |i: usize, j: usize| -> f64 { (0..3).map(|k| RGB_FROM_HED[i][k] * inv[k][j]).sum() };
        for (i, j) in (0..3).flat_map(|i| (0..3).map(move |j| (i, j))) {
            let v = product(i, j);
            assert!(
                (v - f64::from(u8::from(i == j))).abs() < 1e-12,
                "{i},{j}: {v}"
            );
        }
    }

    #[test]
    fn stain_jitter_scales_each_stain_alone() {
        // A pixel of pure haematoxylin (density 0.8) and one of pure eosin (0.5).
        let stain = |k: usize, d: f64| RGB_FROM_HED[k].map(|v| (-(d * v)).exp() as f32);
        let mut px = vec![stain(0, 0.8), stain(1, 0.5)];
        scale_stains(&mut px, [1.5, 1.0, 1.0], [0.0, 0.1, 0.0]);
        // Haematoxylin darkened 1.5× where it is; eosin untouched by that, but shifted by
        // 0.1 everywhere (β is an offset of the whole image's eosin density).
        let e = stain(1, 0.6);
        let h = [0, 1, 2]
            .map(|c| (-(1.2 * RGB_FROM_HED[0][c] + 0.1 * RGB_FROM_HED[1][c])).exp() as f32);
        for c in 0..3 {
            assert!((px[0][c] - h[c]).abs() < 1e-5, "{:?} vs {h:?}", px[0]);
            assert!((px[1][c] - e[c]).abs() < 1e-5, "{:?} vs {e:?}", px[1]);
        }
    }

    #[test]
    fn stain_jitter_matches_the_stepwise_reference_and_is_identity_at_rest() {
        let img = coord_image(40, 30);
        let mut px = unit_pixels(&img);
        let before = px.clone();
        scale_stains(&mut px, [1.0; 3], [0.0; 3]);
        let worst = px
            .iter()
            .zip(&before)
            .flat_map(|(a, b)| (0..3).map(move |c| (a[c] - b[c]).abs()))
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "identity off by {worst}");
        let (alpha, beta) = ([0.93, 1.07, 1.02], [0.04, -0.03, 0.01]);
        let mut px = before.clone();
        scale_stains(&mut px, alpha, beta);
        for (got, p) in px.iter().zip(&before) {
            let want = scale_stains_reference(*p, alpha, beta);
            for c in 0..3 {
                assert!(
                    (f64::from(got[c]) - want[c]).abs() < 1e-5,
                    "{got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn stain_jitter_is_seeded_bounded_and_changes_the_image() {
        // A real H&E tile where the data is present, else a synthetic one.
        let img = std::fs::read_dir(data_dir().join("lymphoma").join("images").join("cll"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| load_image(&e.ok()?.path()).ok())
            .unwrap_or_else(|| coord_image(120, 90));
        let cfg = AugmentConfig {
            size: 64,
            stain_jitter: 0.05,
            ..plain(64)
        };
        let a = augment(&img, CropPolicy::Resize, &cfg, 11).unwrap();
        assert_eq!(a, augment(&img, CropPolicy::Resize, &cfg, 11).unwrap());
        let b = augment(&img, CropPolicy::Resize, &cfg, 12).unwrap();
        let plain_out = augment(&img, CropPolicy::Resize, &plain(64), 11).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, plain_out);
        // Inside the normalised range of [0, 1] pixels.
        let plane = 64 * 64;
        for (i, v) in a.iter().enumerate() {
            let c = i / plane;
            let x = v * IMAGENET_STD[c] + IMAGENET_MEAN[c];
            assert!((-1e-5..=1.0 + 1e-5).contains(&x), "{x}");
        }
        let bad = AugmentConfig {
            stain_jitter: 1.5,
            ..cfg
        };
        assert!(augment(&img, CropPolicy::Resize, &bad, 0).is_err());
    }

    #[test]
    fn normalisation_matches_preprocess() {
        let img = coord_image(300, 200);
        let cfg = plain(112);
        let ours = augment(&img, CropPolicy::Resize, &cfg, 5).unwrap();
        let reference = preprocess_rgb(&img, &PreprocessConfig::imagenet(112, 112)).unwrap();
        assert_eq!(ours, reference);
        assert_eq!(
            eval_transform(&img, CropPolicy::Resize, 112).unwrap(),
            reference
        );
    }

    #[test]
    fn eval_transform_is_deterministic_and_crops_large_images() {
        let img = coord_image(417, 312);
        let a = eval_transform(&img, CropPolicy::RandomCrop, 224).unwrap();
        assert_eq!(
            a,
            eval_transform(&img, CropPolicy::RandomCrop, 224).unwrap()
        );
        let expected = normalize_chw(
            &center_crop(&img, 224).unwrap(),
            IMAGENET_MEAN,
            IMAGENET_STD,
        );
        assert_eq!(a, expected);
        // Small images and the other policies: resize then crop.
        let small = coord_image(50, 50);
        let reference = preprocess_rgb(&small, &PreprocessConfig::imagenet(224, 224)).unwrap();
        for p in [
            CropPolicy::RandomCrop,
            CropPolicy::RandomResizedCrop,
            CropPolicy::Resize,
        ] {
            assert_eq!(eval_transform(&small, p, 224).unwrap(), reference);
        }
        let rrc = eval_transform(&img, CropPolicy::RandomResizedCrop, 224).unwrap();
        assert_eq!(
            rrc,
            preprocess_rgb(&img, &PreprocessConfig::imagenet(224, 224)).unwrap()
        );
    }

    #[test]
    fn jitter_is_seeded_bounded_and_identity_at_zero_strength() {
        let path = data_dir().join("lymphoma/images/cll/cll_0.jpg");
        let img = if path.exists() {
            load_image(&path).unwrap()
        } else {
            coord_image(417, 312)
        };
        let cfg = AugmentConfig {
            jitter: 0.4,
            ..plain(112)
        };
        let a = augment(&img, CropPolicy::RandomCrop, &cfg, 11).unwrap();
        assert_eq!(a, augment(&img, CropPolicy::RandomCrop, &cfg, 11).unwrap());
        let plain_out = augment(&img, CropPolicy::RandomCrop, &plain(112), 11).unwrap();
        assert_ne!(a, plain_out);
        let plane = 112 * 112;
        for c in 0..3 {
            let lo = (0.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            let hi = (1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            assert!(a[c * plane..(c + 1) * plane]
                .iter()
                .all(|&v| v >= lo - 1e-6 && v <= hi + 1e-6));
        }
        // A vanishing strength changes values by at most float rounding.
        let tiny = AugmentConfig {
            jitter: 1e-7,
            ..plain(112)
        };
        let t = augment(&img, CropPolicy::RandomCrop, &tiny, 11).unwrap();
        let max = t
            .iter()
            .zip(&plain_out)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-5, "{max}");
    }

    #[test]
    fn config_serde_and_validation() {
        let cfg: AugmentConfig = serde_json::from_str(r#"{"size": 112, "rot90": true}"#).unwrap();
        assert_eq!(
            cfg,
            AugmentConfig {
                size: 112,
                rot90: true,
                ..AugmentConfig::default()
            }
        );
        let back: AugmentConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        assert!(AugmentConfig { size: 0, ..cfg }.validate().is_err());
        assert!(AugmentConfig {
            jitter: -1.0,
            ..cfg
        }
        .validate()
        .is_err());
        assert!(AugmentConfig {
            rrc_scale: (0.5, 0.1),
            ..cfg
        }
        .validate()
        .is_err());
    }
}
