//! The reader against the writer, on slides built from real tiles.

use std::sync::{Arc, OnceLock};

use image::RgbImage;

use super::writer::{
    encode_jpeg, encode_rgb_jpeg, pyramid_levels, real_tissue_image, split_jpeg_tables,
    write_slide, Codec, Layout, WriteOptions,
};
use super::*;

/// 1536 × 1152 px: 4 × 3 real 224-px tiles (896 × 672) at (192, 128) on glass.
fn image() -> &'static RgbImage {
    static IMG: OnceLock<RgbImage> = OnceLock::new();
    IMG.get_or_init(|| real_tissue_image(1536, 1152, 4, 3, (192, 128)))
}

fn open(bytes: Vec<u8>) -> Slide {
    Slide::from_source("test.svs", Box::new(bytes)).unwrap()
}

fn whole(slide: &Slide, level: usize) -> RgbImage {
    let l = &slide.levels()[level];
    slide.read_region(level, 0, 0, l.width, l.height).unwrap()
}

#[test]
fn lossless_slides_read_back_exactly_in_every_layout() {
    let img = image();
    let expected = pyramid_levels(img, 3);
    let cases = [
        (Layout::Aperio { mpp: 0.5 }, Codec::Lzw, false, false, false),
        (
            Layout::Ome { mpp: 0.25 },
            Codec::Deflate,
            true,
            false,
            false,
        ),
        (
            Layout::Generic { mpp: Some(0.5) },
            Codec::None,
            false,
            true,
            false,
        ),
        (Layout::Generic { mpp: None }, Codec::Lzw, true, true, true),
    ];
    for (layout, codec, big_tiff, big_endian, strips) in cases {
        let what =
            format!("{layout:?} {codec:?} big_tiff={big_tiff} be={big_endian} strips={strips}");
        let opts = WriteOptions {
            tile: 240,
            codec,
            layout,
            levels: 3,
            big_tiff,
            big_endian,
            strips,
        };
        let slide = open(write_slide(img, &opts));
        assert_eq!(slide.levels().len(), 3, "{what}");
        for (l, want) in expected.iter().enumerate() {
            let lvl = &slide.levels()[l];
            assert_eq!((lvl.width, lvl.height), want.dimensions(), "{what}");
            assert!(
                (lvl.downsample - f64::from(1u32 << l)).abs() < 1e-9,
                "{what}"
            );
            assert!(whole(&slide, l) == *want, "{what}: level {l} differs");
        }
        // A region across tile borders and past the right edge: white outside.
        let r = slide.read_region(0, 1400, 230, 200, 20).unwrap();
        for y in 0..20 {
            for x in 0..200 {
                let want = if 1400 + x < 1536 {
                    *img.get_pixel(1400 + x, 230 + y)
                } else {
                    image::Rgb([255, 255, 255])
                };
                assert_eq!(*r.get_pixel(x, y), want, "{what}");
            }
        }
        let mpp = match layout {
            Layout::Aperio { mpp } | Layout::Ome { mpp } => Some(mpp),
            Layout::Generic { mpp } => mpp,
        };
        match (slide.mpp(), mpp) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-3, "{what}: {a} vs {b}"),
            (a, b) => assert_eq!(a, b, "{what}"),
        }
    }
}

#[test]
fn jpeg_tiles_with_shared_tables_decode_like_their_complete_streams() {
    let img = image();
    // Aperio's RGB-coded tiles labelled RGB, and libtiff's YCbCr-coded ones labelled YCbCr.
    for codec in [Codec::JpegRgb(85), Codec::Jpeg(85)] {
        let opts = WriteOptions {
            tile: 256,
            codec,
            ..WriteOptions::default()
        };
        let slide = open(write_slide(img, &opts));
        assert_eq!(slide.format(), SlideFormat::Aperio);
        assert_eq!(slide.mpp(), Some(0.5));
        // Level 0, two levels; the thumbnail, label and macro are not levels.
        assert_eq!(slide.levels().len(), 3);
        assert_eq!(slide.levels()[0].compression, "JPEG");
        let level0 = whole(&slide, 0);
        // Every tile equals the decoding of the same pixels as one complete JPEG stream.
        for ty in 0..1152u32.div_ceil(256) {
            for tx in 0..1536u32.div_ceil(256) {
                let mut raw = Vec::new();
                for y in ty * 256..ty * 256 + 256 {
                    for x in tx * 256..tx * 256 + 256 {
                        raw.extend_from_slice(&img.get_pixel(x.min(1535), y.min(1151)).0);
                    }
                }
                let want = match codec {
                    Codec::JpegRgb(q) => crate::preprocess::decode_tiff_jpeg(
                        &encode_rgb_jpeg(&raw, 256, 256, q),
                        true,
                    ),
                    _ => crate::preprocess::decode_image(&encode_jpeg(&raw, 256, 256, 85))
                        .map_err(|e| e.to_string()),
                }
                .unwrap();
                for y in 0..256.min(1152 - ty * 256) {
                    for x in 0..256.min(1536 - tx * 256) {
                        assert_eq!(
                            level0.get_pixel(tx * 256 + x, ty * 256 + y),
                            want.get_pixel(x, y),
                            "{codec:?} tile ({tx}, {ty}) pixel ({x}, {y})"
                        );
                    }
                }
            }
        }
        // And it is the image, up to JPEG's loss (no colour mix-up).
        let diff: f64 = level0
            .as_raw()
            .iter()
            .zip(img.as_raw())
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / img.as_raw().len() as f64;
        assert!(diff < 4.0, "{codec:?}: mean absolute difference {diff}");
    }
}

#[test]
fn abbreviated_streams_carry_no_tables() {
    let raw = vec![128u8; 16 * 16 * 3];
    let full = encode_jpeg(&raw, 16, 16, 90);
    let (tables, stream) = split_jpeg_tables(&full);
    let has = |b: &[u8], m: u8| b.windows(2).any(|w| w == [0xFF, m]);
    assert!(has(&tables, 0xDB) && has(&tables, 0xC4) && !has(&tables, 0xDA));
    assert!(!has(&stream, 0xDB) && has(&stream, 0xDA));
}

#[test]
fn tissue_grid_keeps_the_tissue_and_drops_the_glass() {
    let img = image();
    let slide = open(write_slide(
        img,
        &WriteOptions {
            codec: Codec::Lzw,
            ..WriteOptions::default()
        },
    ));
    let (thumb, scale) = slide.thumbnail(512).unwrap();
    assert_eq!(thumb.dimensions(), (512, 384));
    assert!((scale - 3.0).abs() < 1e-9);
    let mask = detect_tissue(&thumb, scale);
    let tissue = (896.0 * 672.0) / (1536.0 * 1152.0);
    // Lung tissue has air spaces: most of the tissue's area, and nothing of the glass.
    let coverage = f64::from(mask.coverage());
    assert!(
        coverage > 0.75 * tissue && coverage < 1.01 * tissue,
        "{coverage} vs {tissue}"
    );
    let spec = TileSpec {
        size: 128,
        at: Magnification::Level(0),
        min_tissue: 0.5,
    };
    let plan = plan_tiles(&slide, spec, Some(&mask)).unwrap();
    assert_eq!((plan.columns, plan.rows), (12, 9));
    // Tissue spans x 192..1088, y 128..800: columns 1.5..8.5, rows 1..6.25.
    for t in &plan.tiles {
        let (cx, cy) = (t.x as f64 + 64.0, t.y as f64 + 64.0);
        assert!(
            (192.0..1088.0).contains(&cx) && (128.0..800.0).contains(&cy),
            "{t:?}"
        );
    }
    // 6 × 5 tiles lie wholly on tissue, 2 × 5 half on it; air spaces may drop a few.
    assert!(
        (25..=40).contains(&plan.tiles.len()),
        "{}",
        plan.tiles.len()
    );
    let t = plan.tiles[0];
    let tile = slide.read_tile(&plan, &t).unwrap();
    let want = image::imageops::crop_imm(img, t.x as u32, t.y as u32, 128, 128).to_image();
    assert!(tile == want);
}

#[test]
fn tiles_at_a_resolution_read_the_right_level() {
    let img = image();
    let slide = open(write_slide(
        img,
        &WriteOptions {
            codec: Codec::Deflate,
            ..WriteOptions::default()
        },
    ));
    let levels = pyramid_levels(img, 3);
    // 1.0 µm/px on a 0.5 µm/px slide: level 1's own pixels.
    let plan = plan_tiles(
        &slide,
        TileSpec {
            size: 100,
            at: Magnification::Mpp(1.0),
            min_tissue: 0.0,
        },
        None,
    )
    .unwrap();
    assert_eq!(plan.read_level, 1);
    assert_eq!((plan.columns, plan.rows), (7, 5));
    assert_eq!(plan.tiles.len(), 35);
    let t = plan.tiles[8];
    let tile = slide.read_tile(&plan, &t).unwrap();
    let want =
        image::imageops::crop_imm(&levels[1], t.x as u32 / 2, t.y as u32 / 2, 100, 100).to_image();
    assert!(tile == want);
    // 0.75 µm/px: 150 level-0 pixels resized to 100.
    let plan = plan_tiles(
        &slide,
        TileSpec {
            size: 100,
            at: Magnification::Mpp(0.75),
            min_tissue: 0.0,
        },
        None,
    )
    .unwrap();
    assert_eq!(plan.read_level, 0);
    let t = plan.tiles[3];
    assert_eq!((t.x, t.y), (450, 0));
    let region = image::imageops::crop_imm(img, 450, 0, 150, 150).to_image();
    let want = crate::preprocess::resize_exact(&region, 100, 100).unwrap();
    assert!(slide.read_tile(&plan, &t).unwrap() == want);
    // Without a recorded MPP, --mpp cannot be honoured.
    let mut bare = open(write_slide(
        img,
        &WriteOptions {
            codec: Codec::None,
            layout: Layout::Generic { mpp: None },
            levels: 1,
            ..WriteOptions::default()
        },
    ));
    let spec = TileSpec {
        size: 100,
        at: Magnification::Mpp(1.0),
        min_tissue: 0.0,
    };
    let e = plan_tiles(&bare, spec, None).unwrap_err().to_string();
    assert!(e.contains("test.svs") && e.contains("--slide-mpp"), "{e}");
    bare.set_mpp(0.5);
    assert_eq!(plan_tiles(&bare, spec, None).unwrap().read_level, 0);
}

#[test]
fn bad_slides_are_refused_with_the_file_named() {
    let img = image();
    let bytes = write_slide(
        img,
        &WriteOptions {
            codec: Codec::JpegRgb(80),
            ..WriteOptions::default()
        },
    );
    // Truncated: the directories are at the end, so a cut file has no valid directory; a
    // file with its last tiles cut fails when those tiles are read.
    let e = Slide::from_source("cut.svs", Box::new(bytes[..bytes.len() / 2].to_vec()))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("cut.svs: ") && e.contains("past the end"),
        "{e}"
    );
    let slide = Slide::from_source("x.svs", Box::new(Arc::<[u8]>::from(bytes.as_slice()))).unwrap();
    let page = &slide.pages[slide.levels()[0].page];
    let last = page.offsets.len() - 1;
    let mut cut = bytes.clone();
    // Point the last tile past the end of the file.
    let (off, n) = (page.offsets[last], page.byte_counts[last]);
    let pos = find_u32(&cut, off as u32).expect("the offset is stored");
    let past = cut.len() as u32 + 10;
    cut[pos..pos + 4].copy_from_slice(&past.to_le_bytes());
    let slide = open(cut);
    let e = slide
        .read_region(0, 1535, 1151, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test.svs: level 0, tile") && e.contains("truncated"),
        "{e} ({n})"
    );
    // An unknown compression.
    let mut odd = write_slide(
        img,
        &WriteOptions {
            codec: Codec::Lzw,
            levels: 1,
            layout: Layout::Generic { mpp: None },
            ..WriteOptions::default()
        },
    );
    let tag = find_entry(&odd, 259).expect("a compression entry");
    odd[tag + 8..tag + 10].copy_from_slice(&34887u16.to_le_bytes());
    let e = Slide::from_source("lerc.tif", Box::new(odd))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lerc.tif") && e.contains("LERC") && e.contains("convert"),
        "{e}"
    );
    // Not a TIFF.
    let e = Slide::from_source("a.png", Box::new(b"\x89PNG\r\n\x1a\n0000".to_vec()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("a.png") && e.contains("not a TIFF"), "{e}");
}

#[test]
fn aperio_ycbcr_jpeg2000_components_convert_as_openslide_does() {
    assert_eq!(super::codec::ycbcr_to_rgb(128, 128, 128), [128, 128, 128]);
    assert_eq!(super::codec::ycbcr_to_rgb(255, 128, 128), [255, 255, 255]);
    // Pure red in full-range BT.601: Y 76, Cb 85, Cr 255.
    let [r, g, b] = super::codec::ycbcr_to_rgb(76, 85, 255);
    assert!(r >= 253 && g <= 2 && b <= 2, "{r} {g} {b}");
    // OpenSlide's tables (make-tables.c) and fixed-point green, worked out by hand.
    assert_eq!(super::codec::ycbcr_to_rgb(100, 50, 200), [201, 75, 0]);
    assert_eq!(super::codec::ycbcr_to_rgb(30, 140, 120), [19, 32, 51]);
    assert_eq!(super::codec::ycbcr_to_rgb(76, 85, 255), [254, 0, 0]);
}

/// Where a little-endian u32 value sits in a directory's tile offsets (the value arrays are
/// written before the directory, so search from the end).
fn find_u32(bytes: &[u8], v: u32) -> Option<usize> {
    let needle = v.to_le_bytes();
    (0..bytes.len() - 4)
        .rev()
        .find(|&i| bytes[i..i + 4] == needle)
}

/// Where a classic little-endian TIFF's first directory has `tag`.
fn find_entry(bytes: &[u8], tag: u16) -> Option<usize> {
    let first = u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize;
    let n = u16::from_le_bytes(bytes[first..first + 2].try_into().ok()?) as usize;
    (0..n)
        .map(|i| first + 2 + i * 12)
        .find(|&e| u16::from_le_bytes([bytes[e], bytes[e + 1]]) == tag)
}
