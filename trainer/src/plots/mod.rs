//! Figures of results and runs, each written twice: SVG (text stays text) and PNG (rendered
//! with an embedded font, so it looks the same on every machine). Grouped bars with error bars,
//! confusion matrices, and training curves.

mod bars;
mod confusion;
mod curves;

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

pub use bars::{BarChart, BarSeries};
pub use confusion::ConfusionPlot;
pub use curves::training_curves;

/// DejaVu Sans, subset to Latin and a few symbols (see assets/DejaVuSans-LICENSE.txt).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");
/// The font family every figure asks for.
pub(crate) const FAMILY: &str = "sans-serif";

/// Tableau 10: distinguishable, colour-blind-friendlier than plotters' defaults.
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The `i`-th palette colour (cycling).
pub(crate) fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; a failure here is a build defect, and the SVG still works.
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            eprintln!("warning: the embedded plot font did not load; PNG text will be missing");
        }
    });
}

/// Turns a plotters error (whose type depends on the backend) into an `anyhow` error.
pub(crate) fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// Something that can be drawn on any plotters backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draw onto a white area of [`Figure::size`].
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

fn with_extension(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// The SVG text of a figure.
pub fn render_svg(fig: &impl Figure) -> Result<String> {
    // Layout (label areas, legends) measures text with the font, even for SVG.
    register_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, fig.size()).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        fig.draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// A figure rendered to RGB pixels.
pub fn render_rgb(fig: &impl Figure) -> Result<image::RgbImage> {
    register_font();
    let (w, h) = fig.size();
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        fig.draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    image::RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("pixel buffer of the wrong size"))
}

/// Write `STEM.svg` and `STEM.png` (atomically; the folder is created); returns both paths.
pub fn save(fig: &impl Figure, stem: &Path) -> Result<[PathBuf; 2]> {
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let svg_path = with_extension(stem, "svg");
    mtpath_shared::fsutil::write_atomic(&svg_path, render_svg(fig)?.as_bytes())?;
    let png_path = with_extension(stem, "png");
    let mut png = std::io::Cursor::new(Vec::new());
    render_rgb(fig)?
        .write_to(&mut png, image::ImageFormat::Png)
        .context("encoding the PNG")?;
    mtpath_shared::fsutil::write_atomic(&png_path, png.get_ref())?;
    Ok([svg_path, png_path])
}

/// A file-name-safe version of a label (task names, model names).
pub fn slug(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if out.is_empty() {
        "x".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_keeps_names_readable_and_safe() {
        assert_eq!(slug("lc25000-lung"), "lc25000-lung");
        assert_eq!(slug("a/b c.d"), "a-b-c-d");
        assert_eq!(slug(""), "x");
    }

    #[test]
    fn extension_is_appended_not_replaced() {
        assert_eq!(
            with_extension(Path::new("out/seed0-lr0.01"), "svg"),
            PathBuf::from("out/seed0-lr0.01.svg")
        );
    }
}
