//! The fuzz targets: one check per parser that reads user bytes. Each returns `Ok(label)`
//! when the parser behaved (an image, a file, or an error value) and `Err` when a property
//! failed; panics, hangs and oversized allocations are the harness's to catch.

use std::io::Cursor;
use std::path::PathBuf;

use candle_core::Device;
use image::{ImageFormat, ImageReader, Limits};

use super::harness::{repo_root, Target};
use crate::features_file::FeaturesFile;
use crate::preprocess::jpeg::{self, JpegError};
use crate::preprocess::{decode_image, MAX_IMAGE_BYTES, MAX_IMAGE_SIDE};
use crate::probe::ProbeFile;
use crate::weights::{is_folded, read_safetensors_bytes, read_weights_file};

/// Largest difference, in levels, between our JPEG decoder and the `image` crate's
/// (`zune-jpeg`) on any pixel of an image both decode: the few levels by which zune-jpeg's
/// IDCT and upsampling differ from libjpeg-turbo's (the preprocessing parity tests allow 4.4
/// levels after normalisation, ~0.075).
pub const JPEG_MAX_LEVELS: u8 = 6;
/// Largest mean absolute difference, in levels, between the two JPEG decoders (the parity
/// tests saw ~0.5 with zune-jpeg).
pub const JPEG_MEAN_LEVELS: f64 = 1.0;

fn label<T, E: std::fmt::Display>(r: &Result<T, E>, ok: impl FnOnce(&T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => format!("error: {e}"),
    }
}

/// The `image` crate's decode of JPEG bytes, with the product's limits.
fn reference_jpeg(bytes: &[u8]) -> Option<image::RgbImage> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Jpeg);
    reader.limits(limits);
    reader.decode().ok().map(|img| img.to_rgb8())
}

/// Whether any Huffman table (in the DHT segments before the first scan) lists a symbol
/// twice.
fn has_duplicate_huffman_symbols(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            i += 1;
            continue;
        }
        let marker = bytes[i + 1];
        if marker == 0xDA || marker == 0xD9 {
            return false;
        }
        if marker == 0xFF || marker == 0x00 || (0xD0..=0xD8).contains(&marker) {
            i += 1;
            continue;
        }
        let len = usize::from(bytes[i + 2]) << 8 | usize::from(bytes[i + 3]);
        let seg = &bytes[(i + 4).min(bytes.len())..(i + 2 + len).min(bytes.len())];
        if marker == 0xC4 {
            let mut p = 0;
            while p + 17 <= seg.len() {
                let n: usize = seg[p + 1..p + 17].iter().map(|&c| usize::from(c)).sum();
                let values = &seg[p + 17..(p + 17 + n).min(seg.len())];
                let mut seen = [false; 256];
                for &v in values {
                    if std::mem::replace(&mut seen[usize::from(v)], true) {
                        return true;
                    }
                }
                p += 17 + n;
            }
        }
        i += 2 + len.max(2);
    }
    false
}

/// Our baseline JPEG decoder, differentially against the `image` crate's: when both decode
/// an input, sizes must agree, and with `MTPATH_FUZZ_JPEG_PIXELS` set pixels too, within
/// [`JPEG_MAX_LEVELS`] and [`JPEG_MEAN_LEVELS`] (the bit-exactness of ours on valid files is
/// checked against Pillow by the JPEG tests).
pub fn jpeg(bytes: &[u8]) -> Result<String, String> {
    let lim = jpeg::Limits {
        max_side: MAX_IMAGE_SIDE,
        max_bytes: MAX_IMAGE_BYTES,
    };
    let ours = match jpeg::decode(bytes, lim) {
        Ok(img) => img,
        Err(JpegError::Unsupported(m)) => return Ok(format!("unsupported: {m}")),
        Err(JpegError::Corrupt(m)) => return Ok(format!("corrupt: {m}")),
    };
    let Some(theirs) = reference_jpeg(bytes) else {
        return Ok("decoded by ours only".into());
    };
    if ours.dimensions() != theirs.dimensions() {
        return Err(format!(
            "ours decodes {:?}, the image crate {:?}",
            ours.dimensions(),
            theirs.dimensions()
        ));
    }
    if std::env::var_os("MTPATH_FUZZ_JPEG_PIXELS").is_none() {
        // By default only sizes are compared: on damaged data (which libjpeg-turbo decodes
        // with warnings) the decoders legitimately part ways, and telling a bug from that
        // takes libjpeg-turbo as the judge (`djpeg`). Set MTPATH_FUZZ_JPEG_PIXELS=1 to
        // compare pixels too, and check each finding against `djpeg -ppm`.
        return Ok("decoded by both, same size".into());
    }
    if has_duplicate_huffman_symbols(bytes) {
        // Open divergence (fuzz finding, `jpeg_damaged_ac_table_matches_libjpeg`): on tables
        // that list a symbol twice, which no encoder writes, ours differs from libjpeg-turbo.
        return Ok("decoded by both (duplicate Huffman symbols, not compared)".into());
    }
    if ours.width() <= 4 || ours.height() <= 4 {
        // Subsampled chroma at most 2 samples wide or high: libjpeg (and so ours) replicates
        // it instead of interpolating, zune-jpeg does not (up to ~20 levels apart; ours is
        // checked bit-exact with Pillow on such files in the JPEG tests).
        return Ok("decoded by both (tiny, not compared)".into());
    }
    let (mut max, mut sum) = (0u8, 0u64);
    for (a, b) in ours.as_raw().iter().zip(theirs.as_raw()) {
        let d = a.abs_diff(*b);
        max = max.max(d);
        sum += u64::from(d);
    }
    let mean = sum as f64 / ours.as_raw().len().max(1) as f64;
    if max > JPEG_MAX_LEVELS || mean > JPEG_MEAN_LEVELS {
        return Err(format!(
            "{}x{} image: ours and the image crate differ by up to {max} levels (mean {mean:.3})",
            ours.width(),
            ours.height()
        ));
    }
    Ok("decoded by both, agreeing".into())
}

/// The product's image entry point (`decode_image`: JPEG, PNG, TIFF by content).
pub fn image(bytes: &[u8]) -> Result<String, String> {
    let r = decode_image(bytes);
    if let Ok(img) = &r {
        if img.as_raw().len() != img.width() as usize * img.height() as usize * 3 {
            return Err("decoded buffer does not match the image's size".into());
        }
    }
    Ok(label(&r, |img| {
        format!("ok {}x{}", img.width(), img.height())
    }))
}

/// safetensors weights, and the metadata readers run on what they load.
pub fn safetensors(bytes: &[u8]) -> Result<String, String> {
    let r = read_safetensors_bytes(bytes, "fuzz.safetensors", &Device::Cpu);
    if let Ok(file) = &r {
        let _ = file.model_card();
        let _ = file.arch();
        let _ = is_folded(file);
    }
    Ok(label(&r, |f| format!("ok {} tensors", f.tensors.len())))
}

/// A per-thread scratch file for the readers that take a path.
fn scratch(name: &str) -> PathBuf {
    let dir = repo_root().join("target/fuzz-tmp");
    let _ = std::fs::create_dir_all(&dir);
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    dir.join(format!("{}-{thread}-{name}", std::process::id()))
}

/// The weights-file entry point (`read_weights_file`: `.pth` zip archives, safetensors), on
/// bytes written to a scratch file.
pub fn weights_file(bytes: &[u8]) -> Result<String, String> {
    let path = scratch("weights.pth");
    std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let r = read_weights_file(&path, &Device::Cpu);
    if let Ok(file) = &r {
        let _ = file.arch();
    }
    // The scratch file's name appears in errors; drop it so that labels compare.
    let l = label(&r, |f| format!("ok {} tensors", f.tensors.len()));
    Ok(l.replace(&path.display().to_string(), "FILE"))
}

/// The features file reader.
pub fn features(bytes: &[u8]) -> Result<String, String> {
    let r = FeaturesFile::from_bytes(bytes, "fuzz.features");
    if let Ok(f) = &r {
        if Some(f.features.len()) != f.n.checked_mul(f.dim) || f.images.len() != f.n {
            return Err(format!(
                "accepted a file whose shapes disagree: {} values, {} names, {} x {}",
                f.features.len(),
                f.images.len(),
                f.n,
                f.dim
            ));
        }
    }
    Ok(label(&r, |f| format!("ok {} x {}", f.n, f.dim)))
}

/// The probe file reader, and a prediction with what it accepted.
pub fn probe(bytes: &[u8]) -> Result<String, String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok("not UTF-8".into());
    };
    let r = ProbeFile::from_json(text, "fuzz.json");
    if let Ok(p) = &r {
        let model = p
            .model()
            .map_err(|e| format!("accepted probe has no model: {e}"))?;
        let x = vec![0.5f32; p.n_features];
        model
            .decision_function(&x, 1)
            .map_err(|e| format!("accepted probe cannot predict: {e}"))?;
    }
    Ok(label(&r, |p| format!("ok {} classes", p.classes.len())))
}

/// Markers and segment starts of JPEG files.
const JPEG_DICT: &[&[u8]] = &[
    b"\xFF\xD8",
    b"\xFF\xD9",
    b"\xFF\xC0\x00\x11\x08",
    b"\xFF\xC1",
    b"\xFF\xC2",
    b"\xFF\xC4",
    b"\xFF\xDB\x00\x43\x00",
    b"\xFF\xDA\x00\x0C\x03",
    b"\xFF\xDD\x00\x04\x00\x01",
    b"\xFF\xD0",
    b"\xFF\xD7",
    b"\xFF\x00",
    b"\xFF\xE0\x00\x10JFIF\x00",
    b"\xFF\xEE\x00\x0EAdobe",
    b"\x11",
    b"\x22",
    b"\x21",
    b"\x12",
    b"\x41",
];

/// PNG chunk names and TIFF headers and tags, plus the JPEG tokens.
const IMAGE_DICT: &[&[u8]] = &[
    b"\x89PNG\r\n\x1a\n",
    b"IHDR",
    b"IDAT",
    b"IEND",
    b"PLTE",
    b"tRNS",
    b"acTL",
    b"fcTL",
    b"fdAT",
    b"iCCP",
    b"II*\x00",
    b"MM\x00*",
    b"\x00\x01\x03\x00\x01\x00\x00\x00",
    b"\x01\x01\x03\x00\x01\x00\x00\x00",
    b"\x03\x01\x03\x00\x01\x00\x00\x00",
    b"\x11\x01\x04\x00",
    b"\x16\x01\x03\x00",
    b"\x17\x01\x04\x00",
    b"\x02\x01\x03\x00\x03\x00\x00\x00",
    b"\xFF\xD8",
    b"\xFF\xC0\x00\x11\x08",
    b"\xFF\xDA",
    b"\xFF\xD9",
];

/// safetensors header vocabulary.
const SAFETENSORS_DICT: &[&[u8]] = &[
    b"\"dtype\":\"F32\"",
    b"\"dtype\":\"F16\"",
    b"\"dtype\":\"BF16\"",
    b"\"dtype\":\"I64\"",
    b"\"dtype\":\"U8\"",
    b"\"dtype\":\"F64\"",
    b"\"shape\":[",
    b"\"data_offsets\":[",
    b"\"__metadata__\":{",
    b"\"mtpath\":",
    b"\"images\":",
    b"\"features\":",
    b"\"labels\":",
    b"\"task\":",
    b"18446744073709551615",
    b"4294967296",
    b"[]",
    b"{}",
    b",",
    b"\\\"",
    b"\\u0000",
];

/// `.pth` (zip + pickle) vocabulary.
const PTH_DICT: &[&[u8]] = &[
    b"PK\x03\x04",
    b"PK\x01\x02",
    b"PK\x05\x06",
    b"PK\x06\x06",
    b"PK\x06\x07",
    b"data.pkl",
    b"archive/data/0",
    b"\x80\x02",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ctorch\nFloatStorage\n",
    b"ccollections\nOrderedDict\n",
    b"}q\x00(",
    b"X\x06\x00\x00\x00weight",
    b"K\x01",
    b"M\x00\x01",
    b"J\xff\xff\xff\x7f",
    b"\x85",
    b"\x86",
    b"R",
    b"t",
    b".",
];

/// JSON vocabulary for probe files.
const PROBE_DICT: &[&[u8]] = &[
    b"\"format\":\"mtpath-probe/1\"",
    b"\"kind\":\"logistic\"",
    b"\"kind\":\"svm\"",
    b"\"classes\":",
    b"\"coef\":",
    b"\"intercept\":",
    b"\"n_features\":",
    b"\"features\":",
    b"\"cv\":",
    b"\"c\":",
    b"1e308",
    b"-1e400",
    b"NaN",
    b"18446744073709551615",
    b"[[",
    b"]]",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"null",
    b"\"\\ud800\"",
];

/// Input size limits: large enough for the seeds and real structure, small enough to be fast.
const MAX_LEN: usize = 48 << 10;

/// Our JPEG decoder against the image crate's.
pub const JPEG: Target<'static> = Target {
    name: "jpeg",
    dict: JPEG_DICT,
    max_len: MAX_LEN,
    // The coefficient buffers are proportional to the data (at least two bits a block); the
    // reference decoder's image is decoded only once ours succeeded.
    alloc_limit: |n| (16 << 20) + n * 4096,
    check: &jpeg,
};

/// The product's image decoding (JPEG, PNG, TIFF).
pub const IMAGE: Target<'static> = Target {
    name: "image",
    dict: IMAGE_DICT,
    max_len: MAX_LEN,
    alloc_limit: |_| MAX_IMAGE_BYTES as usize,
    check: &image,
};

/// safetensors weights.
pub const SAFETENSORS: Target<'static> = Target {
    name: "safetensors",
    dict: SAFETENSORS_DICT,
    max_len: MAX_LEN,
    alloc_limit: |n| (16 << 20) + n * 16,
    check: &safetensors,
};

/// Weights files by path (`.pth` archives).
pub const PTH: Target<'static> = Target {
    name: "pth",
    dict: PTH_DICT,
    max_len: MAX_LEN,
    alloc_limit: |n| (16 << 20) + n * 16,
    check: &weights_file,
};

/// Features files.
pub const FEATURES: Target<'static> = Target {
    name: "features",
    dict: SAFETENSORS_DICT,
    max_len: MAX_LEN,
    alloc_limit: |n| (16 << 20) + n * 16,
    check: &features,
};

/// Probe JSON.
pub const PROBE: Target<'static> = Target {
    name: "probe",
    dict: PROBE_DICT,
    max_len: MAX_LEN,
    alloc_limit: |n| (16 << 20) + n * 16,
    check: &probe,
};
