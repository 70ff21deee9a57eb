//! Pictures over a slide's thumbnail: the tissue mask with the kept tiles, and per-tile
//! predictions as a heatmap.

use image::RgbImage;

use super::{TilePlan, TissueMask};

/// What each tile shows.
#[derive(Clone, Copy, Debug)]
pub enum TileValues<'a> {
    /// One class's probability (0–1) per tile, on a blue–red colour scale.
    Probability(&'a [f32]),
    /// The predicted class per tile in its categorical colour, more opaque when the
    /// confidence (0–1) is higher.
    Classes {
        predicted: &'a [usize],
        confidence: &'a [f32],
    },
}

/// The categorical colour of class `i` (matplotlib's tab10, repeating).
pub fn class_colour(i: usize) -> [u8; 3] {
    const TAB10: [[u8; 3]; 10] = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ];
    TAB10[i % TAB10.len()]
}

/// A probability's colour: dark blue (0) through cyan, yellow to dark red (1), matplotlib's
/// "turbo" sampled at five stops.
pub fn probability_colour(p: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [48.0, 18.0, 59.0],
        [40.0, 188.0, 235.0],
        [164.0, 252.0, 60.0],
        [251.0, 128.0, 34.0],
        [122.0, 4.0, 3.0],
    ];
    let t = if p.is_finite() {
        p.clamp(0.0, 1.0)
    } else {
        0.0
    } * 4.0;
    let i = (t.floor() as usize).min(3);
    let f = t - i as f32;
    let mut c = [0u8; 3];
    for k in 0..3 {
        c[k] = (STOPS[i][k] * (1.0 - f) + STOPS[i + 1][k] * f).round() as u8;
    }
    c
}

/// The thumbnail, paled so colours stand out.
fn paled(thumb: &RgbImage) -> RgbImage {
    let mut out = thumb.clone();
    for px in out.pixels_mut() {
        let [r, g, b] = px.0.map(f32::from);
        let luma = 0.299 * r + 0.587 * g + 0.114 * b;
        px.0 = [r, g, b].map(|v| (0.5 * v + 0.5 * luma).round() as u8);
    }
    out
}

/// The thumbnail pixels a tile at level-0 (`x`, `y`) covers.
fn tile_rect(plan: &TilePlan, scale: f64, x: u64, y: u64, w: u32, h: u32) -> (u32, u32, u32, u32) {
    let to = |v: f64, max: u32| ((v / scale).round().max(0.0) as u32).min(max);
    (
        to(x as f64, w),
        to(y as f64, h),
        to(x as f64 + plan.footprint, w),
        to(y as f64 + plan.footprint, h),
    )
}

fn blend(px: &mut image::Rgb<u8>, colour: [u8; 3], alpha: f32) {
    for (v, c) in px.0.iter_mut().zip(colour) {
        *v = (f32::from(*v) * (1.0 - alpha) + f32::from(c) * alpha).round() as u8;
    }
}

/// Per-tile values over a thumbnail whose pixels cover `scale` level-0 pixels each.
/// `values` has one entry per tile of `plan`, in its order.
pub fn render_heatmap(
    thumb: &RgbImage,
    scale: f64,
    plan: &TilePlan,
    values: TileValues<'_>,
) -> RgbImage {
    let mut out = paled(thumb);
    let (w, h) = out.dimensions();
    for (i, t) in plan.tiles.iter().enumerate() {
        let (colour, alpha) = match values {
            TileValues::Probability(p) => (probability_colour(p[i]), 0.6),
            TileValues::Classes {
                predicted,
                confidence,
            } => (
                class_colour(predicted[i]),
                0.25 + 0.5 * confidence[i].clamp(0.0, 1.0),
            ),
        };
        let (x0, y0, x1, y1) = tile_rect(plan, scale, t.x, t.y, w, h);
        for y in y0..y1 {
            for x in x0..x1 {
                blend(out.get_pixel_mut(x, y), colour, alpha);
            }
        }
    }
    out
}

/// The tissue mask (tinted green) and the outlines of the kept tiles (blue) over the
/// thumbnail: what `mtpath tile` and the explorer show before any tile is embedded.
pub fn render_tiles(thumb: &RgbImage, mask: &TissueMask, plan: &TilePlan) -> RgbImage {
    let mut out = paled(thumb);
    let (w, h) = out.dimensions();
    for (i, px) in out.pixels_mut().enumerate() {
        let (x, y) = (i as u32 % w, i as u32 / w);
        if x < mask.width && y < mask.height && mask.mask[(y * mask.width + x) as usize] {
            blend(px, [0, 170, 0], 0.3);
        }
    }
    for t in &plan.tiles {
        let (x0, y0, x1, y1) = tile_rect(plan, mask.scale, t.x, t.y, w, h);
        if x1 <= x0 || y1 <= y0 {
            continue;
        }
        for x in x0..x1 {
            out.put_pixel(x, y0, image::Rgb([0, 60, 255]));
            out.put_pixel(x, y1 - 1, image::Rgb([0, 60, 255]));
        }
        for y in y0..y1 {
            out.put_pixel(x0, y, image::Rgb([0, 60, 255]));
            out.put_pixel(x1 - 1, y, image::Rgb([0, 60, 255]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_scales_reach_their_ends() {
        assert_eq!(probability_colour(0.0), [48, 18, 59]);
        assert_eq!(probability_colour(1.0), [122, 4, 3]);
        assert_eq!(probability_colour(f32::NAN), [48, 18, 59]);
        assert_ne!(class_colour(0), class_colour(1));
    }
}
