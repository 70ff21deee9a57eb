//! References: CRC-32 of `Image.open(f).convert("RGB").tobytes()` with Pillow 13.0.0 built
//! against libjpeg-turbo 3.2.0 (`PIL.features.version("libjpeg_turbo")`).
use super::*;
use crate::testdata::data_dir;
use std::path::{Path, PathBuf};

const LIMITS: Limits = Limits {
    max_side: 30_000,
    max_bytes: 1 << 30,
};

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

fn synthetic(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/jpeg")
        .join(name)
}

fn check(path: &Path, w: u32, h: u32, crc: u32) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let img = decode(&bytes, LIMITS).map_err(|e| format!("{}: {e:?}", path.display()))?;
    if img.dimensions() != (w, h) {
        return Err(format!("{}: size {:?}", path.display(), img.dimensions()));
    }
    let got = crc32(img.as_raw());
    if got != crc {
        return Err(format!(
            "{}: crc {got:08x}, Pillow {crc:08x}",
            path.display()
        ));
    }
    Ok(())
}

/// Small JPEGs written by Pillow (`tests/data/jpeg/make_jpegs.py`) for the layouts the
/// data sets lack: grayscale, 4:2:2, restart markers, chroma only 1-2 samples wide.
#[test]
fn jpeg_synthetic_files_bit_exact_with_pillow() {
    let cases: [(&str, u32, u32, u32); 9] = [
        ("gray_37x29.jpg", 37, 29, 0xd1cfb34f),
        ("s422_41x23.jpg", 41, 23, 0x29fa2ebc),
        ("s420_45x31_rst.jpg", 45, 31, 0x05fc9303),
        ("s444_19x17_rst.jpg", 19, 17, 0xe9d33d41),
        ("s420_3x5.jpg", 3, 5, 0x2dfa902a),
        ("s422_4x9.jpg", 4, 9, 0x1856db16),
        ("gray_rst_33x20.jpg", 33, 20, 0xa20b116a),
        // CMYK (Adobe, inverted samples) through Pillow's convert("RGB"), 4:4:4 and with
        // Pillow's 4:2:0 (the first component full size, the others halved).
        ("cmyk_29x21.jpg", 29, 21, 0x18dda382),
        ("cmyk_s420_35x27.jpg", 35, 27, 0x118235b2),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|&(n, w, h, c)| check(&synthetic(n), w, h, c).err())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn jpeg_progressive_is_left_to_the_general_decoder() {
    let bytes = std::fs::read(synthetic("progressive_24x16.jpg")).unwrap();
    assert!(matches!(
        decode(&bytes, LIMITS),
        Err(JpegError::Unsupported(_))
    ));
    let img = crate::preprocess::decode_image(&bytes).expect("fallback decodes");
    assert_eq!(img.dimensions(), (24, 16));
}

/// Real JPEGs from every data set, covering the layouts present there (4:2:0 and 4:4:4
/// baseline, odd sizes): decoded RGB identical to Pillow's.
#[test]
fn jpeg_data_set_files_bit_exact_with_pillow() {
    let cases: [(&str, u32, u32, u32); 8] = [
        (
            "lbc-pap/images/hsil/HSIL_10__10__0_4446.jpg",
            320,
            320,
            0x3d54dead,
        ),
        (
            "lc25000-lung/images/lung_aca/lungaca1.jpeg",
            224,
            224,
            0x25f7f346,
        ),
        ("lymphoma/images/cll/cll_0.jpg", 417, 312, 0x982730d7),
        ("lymphoma/images/fl/fl_113.jpg", 417, 312, 0x782626e9),
        (
            "pbc-blood/images/basophil/BA_115777.jpg",
            360,
            363,
            0xd83e7442,
        ),
        (
            "pbc-blood/images/basophil/BA_128084.jpg",
            366,
            369,
            0x1878fe4c,
        ),
        (
            "pbc-blood/images/monocyte/MO_107333.jpg",
            366,
            369,
            0xf55d31b8,
        ),
        (
            "tcga-luad-lusc/images/luad/test_0_0_507.jpg",
            256,
            256,
            0xc32af4d1,
        ),
    ];
    let dir = data_dir();
    if !dir.join(cases[0].0).exists() {
        eprintln!("skipping: {} not found (set MTPATH_DATA)", dir.display());
        return;
    }
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|&(n, w, h, c)| check(&dir.join(n), w, h, c).err())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Every JPEG of the data sets against a list of `path width height crc32` lines made with
/// Pillow (`MTPATH_JPEG_REF=list cargo test -- --ignored jpeg_all`).
#[test]
#[ignore]
fn jpeg_all_data_set_files_against_reference_list() {
    let list = std::env::var("MTPATH_JPEG_REF").expect("set MTPATH_JPEG_REF");
    let text = std::fs::read_to_string(list).unwrap();
    let dir = data_dir();
    let mut n = 0;
    let mut failures = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (w, h) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let crc = u32::from_str_radix(f[3], 16).unwrap();
        if let Err(e) = check(&dir.join(f[0]), w, h, crc) {
            failures.push(e);
        }
        n += 1;
    }
    eprintln!("{n} files, {} differ", failures.len());
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A frame header declaring far more pixels than the file's data can encode (10000 x 10000
/// grey in a 919-byte file: 200 MB of coefficients) is corrupt, found before allocating.
#[test]
fn jpeg_frame_larger_than_its_data_is_rejected_before_allocating() {
    let mut bytes = std::fs::read(synthetic("gray_37x29.jpg")).unwrap();
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("SOF0");
    // FF C0, length (2), precision (1), height (2), width (2)
    bytes[sof + 5..sof + 9].copy_from_slice(&[0x27, 0x10, 0x27, 0x10]);
    match decode(&bytes, LIMITS) {
        Err(JpegError::Corrupt(m)) => assert!(m.contains("10000x10000"), "{m}"),
        other => panic!("{:?}", other.map(|i| i.dimensions())),
    }
    // The original size still decodes.
    bytes[sof + 5..sof + 9].copy_from_slice(&[0, 29, 0, 37]);
    assert!(decode(&bytes, LIMITS).is_ok());
}

/// Found by the differential fuzz target (`fuzz/`): `s420_45x31_rst.jpg` with 4 bytes
/// inserted into its luma AC Huffman table (duplicated symbols, the table's last 4 values
/// pushed out of the segment). libjpeg-turbo 2.1.5's `djpeg` decodes it (CRC-32 below, only a
/// warning about the extraneous bytes), and so does zune-jpeg within ~2 levels on average;
/// ours decodes it too but differs in the second restart interval (up to 255 levels, mean
/// 11). Not yet explained: kept as an open case until the divergence is found.
#[test]
#[ignore = "open: differs from libjpeg-turbo on a damaged Huffman table (fuzz finding)"]
fn jpeg_damaged_ac_table_matches_libjpeg() {
    check(
        &synthetic("fuzz_damaged_ac_table_45x31.jpg"),
        45,
        31,
        0xed98edc3,
    )
    .unwrap();
}

fn fuzz_one(bytes: &[u8]) {
    // Either result is fine; panicking is not.
    let _ = decode(bytes, LIMITS);
    let _ = crate::preprocess::decode_image(bytes);
}

/// Truncated, garbled and length-corrupted variants of real JPEGs: errors or images,
/// never a panic.
#[test]
fn jpeg_corrupt_input_never_panics() {
    let mut sources = vec![
        std::fs::read(synthetic("s420_45x31_rst.jpg")).unwrap(),
        std::fs::read(synthetic("gray_rst_33x20.jpg")).unwrap(),
        std::fs::read(synthetic("s422_4x9.jpg")).unwrap(),
    ];
    if let Ok(real) = std::fs::read(data_dir().join("pbc-blood/images/monocyte/MO_107333.jpg")) {
        sources.push(real);
    }
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for src in &sources {
        let n = src.len();
        // Truncations (the header region byte by byte, then spread over the data).
        let step = (n / 300).max(1);
        for cut in (0..n.min(700)).chain((700..n).step_by(step)) {
            fuzz_one(&src[..cut]);
            // Truncated but with an end marker appended (passes the EOI check).
            let mut v = src[..cut].to_vec();
            v.extend_from_slice(&[0xFF, 0xD9]);
            fuzz_one(&v);
        }
        // Single flipped or overwritten bytes, concentrated on the headers.
        for i in 0..400 {
            let mut v = src.clone();
            let pos = if i % 2 == 0 {
                (rand() as usize) % n.min(700)
            } else {
                (rand() as usize) % n
            };
            v[pos] = match i % 4 {
                0 => v[pos] ^ (1 << (rand() % 8)),
                1 => 0xFF,
                2 => 0x00,
                _ => rand() as u8,
            };
            fuzz_one(&v);
        }
        // Several random bytes at once.
        for _ in 0..100 {
            let mut v = src.clone();
            for _ in 0..8 {
                let pos = (rand() as usize) % n;
                v[pos] = rand() as u8;
            }
            fuzz_one(&v);
        }
    }
}
