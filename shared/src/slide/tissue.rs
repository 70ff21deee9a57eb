//! Tissue detection on a thumbnail: Otsu's threshold on colour saturation, as slideflow and
//! TIAToolbox do. Glass is bright and grey; stained tissue is coloured.

use image::RgbImage;

/// Longer side, in pixels, of the thumbnail tissue is found on, unless the caller says
/// otherwise: the same for the command line and the browser, so both keep the same tiles.
pub const DEFAULT_THUMBNAIL_SIDE: u32 = 2048;

/// Saturation never counted as tissue, whatever Otsu says (on a slide that is nearly all
/// glass the threshold would otherwise fall into the noise): 0.06 of full scale.
const MIN_SATURATION: u8 = 15;

/// Which thumbnail pixels hold tissue.
#[derive(Clone, Debug)]
pub struct TissueMask {
    /// Size of the mask (the thumbnail's).
    pub width: u32,
    pub height: u32,
    /// Level-0 pixels per mask pixel.
    pub scale: f64,
    /// Saturation threshold used (0–255).
    pub threshold: u8,
    /// Row-major, `true` where there is tissue.
    pub mask: Vec<bool>,
}

/// The tissue of a thumbnail whose pixels each cover `scale` level-0 pixels.
pub fn detect_tissue(thumb: &RgbImage, scale: f64) -> TissueMask {
    let sat: Vec<u8> = thumb.pixels().map(|p| saturation(p.0)).collect();
    let threshold = otsu(&sat).max(MIN_SATURATION);
    TissueMask {
        width: thumb.width(),
        height: thumb.height(),
        scale,
        threshold,
        mask: sat.iter().map(|&s| s > threshold).collect(),
    }
}

impl TissueMask {
    /// Fraction of tissue in the level-0 rectangle (`x`, `y`, `w`, `h`): the mask pixels
    /// whose centres fall inside it (the nearest one when none does).
    pub fn fraction(&self, x: f64, y: f64, w: f64, h: f64) -> f32 {
        let to_mask = |v: f64| v / self.scale - 0.5;
        let (x0, x1) = (to_mask(x).ceil().max(0.0), to_mask(x + w).floor());
        let (y0, y1) = (to_mask(y).ceil().max(0.0), to_mask(y + h).floor());
        let (mw, mh) = (f64::from(self.width), f64::from(self.height));
        let (x1, y1) = (x1.min(mw - 1.0), y1.min(mh - 1.0));
        if x1 < x0 || y1 < y0 {
            let cx = ((x + w / 2.0) / self.scale).floor().clamp(0.0, mw - 1.0) as usize;
            let cy = ((y + h / 2.0) / self.scale).floor().clamp(0.0, mh - 1.0) as usize;
            return f32::from(u8::from(self.mask[cy * self.width as usize + cx]));
        }
        let (mut n, mut on) = (0usize, 0usize);
        for my in y0 as usize..=y1 as usize {
            for mx in x0 as usize..=x1 as usize {
                n += 1;
                on += usize::from(self.mask[my * self.width as usize + mx]);
            }
        }
        on as f32 / n as f32
    }

    /// Fraction of the whole thumbnail that is tissue.
    pub fn coverage(&self) -> f32 {
        self.mask.iter().filter(|&&m| m).count() as f32 / self.mask.len().max(1) as f32
    }
}

/// HSV saturation, 0–255.
fn saturation([r, g, b]: [u8; 3]) -> u8 {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    if max == 0 {
        0
    } else {
        ((u32::from(max - min) * 255 + u32::from(max) / 2) / u32::from(max)) as u8
    }
}

/// Otsu's threshold: the level `t` that maximises the between-class variance of `v <= t`
/// and `v > t`.
fn otsu(values: &[u8]) -> u8 {
    let mut hist = [0u64; 256];
    for &v in values {
        hist[v as usize] += 1;
    }
    let total = values.len() as f64;
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let (mut w0, mut sum0) = (0f64, 0f64);
    let (mut best, mut best_t) = (-1f64, 0u8);
    for (t, &c) in hist.iter().enumerate() {
        w0 += c as f64;
        sum0 += t as f64 * c as f64;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otsu_splits_two_populations() {
        let mut v = vec![10u8; 500];
        v.extend(vec![200u8; 300]);
        let t = otsu(&v);
        assert!((10..200).contains(&t), "{t}");
    }

    #[test]
    fn pink_tissue_on_white_glass() {
        // Left half glass (near white, grey), right half eosin pink.
        let img = RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([242, 240, 244])
            } else {
                image::Rgb([220, 120, 180])
            }
        });
        let m = detect_tissue(&img, 10.0);
        assert!((m.coverage() - 0.5).abs() < 1e-6);
        assert_eq!(m.fraction(0.0, 0.0, 200.0, 200.0), 0.0);
        assert_eq!(m.fraction(200.0, 0.0, 200.0, 200.0), 1.0);
        assert!((m.fraction(100.0, 0.0, 200.0, 200.0) - 0.5).abs() < 1e-6);
        // Smaller than a mask pixel: the nearest one decides.
        assert_eq!(m.fraction(301.0, 51.0, 3.0, 3.0), 1.0);
    }

    #[test]
    fn blank_glass_has_no_tissue() {
        let img = RgbImage::from_fn(30, 30, |x, y| {
            let n = ((x * 7 + y * 13) % 5) as u8;
            image::Rgb([240 + n, 241, 239 + n])
        });
        assert_eq!(detect_tissue(&img, 1.0).coverage(), 0.0);
    }
}
