//! `make-test-slide OUT [--grid CxR] [--codec jpeg|jpeg-ycbcr|lzw|deflate|none] [--layout aperio|ome|generic]
//! [--bigtiff] [--tile N] [--mpp X]`: a pyramidal TIFF built from real tiles of
//! ../shared/data (8 × 6 tiles of lc25000-lung on glass, 3072 × 2304 px; `--grid` sets the
//! tiles across and down, cycling through the task's 486 adenocarcinoma tiles, with a margin
//! of glass), for the slide tests, the browser tests, timing and trying `mtpath tile` by hand.

use mtpath_shared::slide::writer::{
    real_tiles, real_tissue_image, tissue_from_tiles, write_slide, Codec, Layout, WriteOptions,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out = None;
    let mut opts = WriteOptions {
        tile: 256,
        levels: 4,
        ..WriteOptions::default()
    };
    let mut mpp = 0.5;
    let mut layout = "aperio".to_string();
    let mut grid: Option<(u32, u32)> = None;
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--codec" => {
                opts.codec = match value().as_str() {
                    "jpeg" => Codec::JpegRgb(90),
                    "jpeg-ycbcr" => Codec::Jpeg(90),
                    "lzw" => Codec::Lzw,
                    "deflate" => Codec::Deflate,
                    "none" => Codec::None,
                    other => panic!("unknown codec {other}"),
                }
            }
            "--layout" => layout = value(),
            "--bigtiff" => opts.big_tiff = true,
            "--grid" => {
                let v = value();
                let (c, r) = v.split_once('x').expect("--grid CxR");
                grid = Some((c.parse().expect("columns"), r.parse().expect("rows")));
            }
            "--tile" => opts.tile = value().parse().expect("a tile size"),
            "--mpp" => mpp = value().parse().expect("microns per pixel"),
            _ => out = Some(a),
        }
    }
    opts.layout = match layout.as_str() {
        "aperio" => Layout::Aperio { mpp },
        "ome" => Layout::Ome { mpp },
        "generic" => Layout::Generic { mpp: Some(mpp) },
        other => panic!("unknown layout {other}"),
    };
    let out = out.expect("usage: make-test-slide OUT [--codec ...] [--layout ...]");
    let img = match grid {
        None => real_tissue_image(3072, 2304, 8, 6, (448, 320)),
        Some((c, r)) => {
            let files = real_tiles("lc25000-lung/images/lung_aca");
            let cycled: Vec<_> = (0..(c * r) as usize)
                .map(|i| files[i % files.len()].clone())
                .collect();
            tissue_from_tiles(&cycled, (c + 2) * 224, (r + 2) * 224, c, (224, 224))
        }
    };
    std::fs::write(&out, write_slide(&img, &opts)).expect("writing the slide");
    eprintln!("wrote {out}");
}
