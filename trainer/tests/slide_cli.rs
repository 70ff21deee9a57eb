//! Whole-slide images end to end: `mtpath tile` writes a task folder, `features --slide`
//! embeds the same tiles without writing them, and `predict --slide` finds which half of a
//! slide is tumour. Slides are built from real tiles of ../shared/data.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{assert_ok, mtpath, s};
use mtpath_shared::features_file::FeaturesFile;
use mtpath_shared::probe::{FeatureSource, LogisticRegression, ProbeFile};
use mtpath_shared::slide::writer::{
    mosaic_slide, real_tiles, tissue_from_tiles, write_slide, Codec, Layout, WriteOptions,
};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An Aperio-layout slide with YCbCr JPEG tiles of 8 × 4 real tiles, written to `dir/name`.
fn slide_of(dir: &Path, name: &str, tiles: &[PathBuf]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, mosaic_slide(tiles, Codec::Jpeg(90))).unwrap();
    path
}

fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// 64-px tiles at 1 µm/px (level 1's own pixels), embedded by a random ResNet-18 at 64 px.
const CUT: [&str; 4] = ["--mpp", "1.0", "--min-tissue", "0.5"];
const MODEL: [&str; 4] = ["--weights", "random", "--size", "64"];

#[test]
fn tiles_written_by_tile_have_the_features_of_the_slide_itself() {
    let dir = tempfile::tempdir().unwrap();
    let aca = real_tiles("lc25000-lung/images/lung_aca");
    let slide = slide_of(dir.path(), "case-1.svs", &aca[..32]);
    let out = dir.path().join("tiles");
    let mut args = vec!["tile", "--size", "64", "--out", s(&out)];
    args.extend(CUT);
    args.push(s(&slide));
    let o = mtpath(&args);
    assert_ok(&o);
    assert!(stderr(&o).contains("Aperio SVS"), "{}", stderr(&o));
    let (header, rows) = csv_rows(&out.join("manifest.csv"));
    assert_eq!(header.join(","), "path,label,group,split,slide,x,y,size");
    // Tissue: 1792 × 896 level-0 px at (256, 192): 14 × 7 tiles of 128 level-0 px, give or
    // take the air spaces of lung tissue and the half-covered border.
    assert!((80..=120).contains(&rows.len()), "{} tiles", rows.len());
    for r in &rows {
        assert_eq!(
            (r[1].as_str(), r[2].as_str(), r[6 + 1].as_str()),
            ("unlabelled", "case-1", "128")
        );
        let (x, y): (u32, u32) = (r[5].parse().unwrap(), r[6].parse().unwrap());
        assert!((128..2048).contains(&x) && (64..1088).contains(&y), "{r:?}");
        let img = image::open(out.join(&r[0])).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    assert!(out.join("slides/case-1.png").exists());

    // Resumable: a second run writes nothing new; another cutting into the same folder is
    // refused.
    let o = mtpath(&args);
    assert_ok(&o);
    assert!(stderr(&o).contains("(0 new)"), "{}", stderr(&o));
    let mut other = args.clone();
    other[2] = "96";
    let o = mtpath(&other);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cut otherwise"), "{}", stderr(&o));

    // The written tiles, embedded as image files.
    let by_task = dir.path().join("task.safetensors");
    let images = out.join("images");
    let mut a = vec!["features", "--out", s(&by_task), s(&images)];
    a.extend(MODEL);
    assert_ok(&mtpath(&a));
    let by_task = FeaturesFile::read(&by_task).unwrap();
    assert_eq!(by_task.n, rows.len());

    // Embedding the slide directly gives the same features as its written tiles.
    let direct = dir.path().join("slide.safetensors");
    let mut a = vec![
        "features",
        "--out",
        s(&direct),
        "--slide",
        s(&slide),
        "--tile-size",
        "64",
    ];
    a.extend(CUT);
    a.extend(MODEL);
    let o = mtpath(&a);
    assert_ok(&o);
    let direct = FeaturesFile::read(&direct).unwrap();
    assert_eq!(direct.n, rows.len());
    let record: serde_json::Value = serde_json::from_str(&direct.metadata["slide"]).unwrap();
    assert_eq!(record["tiles"].as_array().unwrap().len(), rows.len());
    let by_name: HashMap<String, usize> = (by_task.images.iter().enumerate())
        .map(|(i, p)| {
            (
                Path::new(p)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                i,
            )
        })
        .collect();
    let mut worst = 0f32;
    for (i, name) in direct.images.iter().enumerate() {
        let (_, at) = name.rsplit_once('@').unwrap();
        let (x, y) = at.trim_start_matches('x').split_once("_y").unwrap();
        let j = by_name[&format!("case-1_x{x}_y{y}.png")];
        for (a, b) in direct.row(i).iter().zip(by_task.row(j)) {
            worst = worst.max((a - b).abs() / (1e-3 + b.abs()));
        }
    }
    assert!(worst < 1e-5, "features differ by {worst} (relative)");
}

#[test]
fn predict_on_a_slide_finds_the_tumour_half() {
    let dir = tempfile::tempdir().unwrap();
    let aca = real_tiles("lc25000-lung/images/lung_aca");
    let normal = real_tiles("lc25000-lung/images/lung_n");
    // Training slides: one of adenocarcinoma, one of normal lung, labelled by a CSV.
    let a = slide_of(dir.path(), "a.svs", &aca[..32]);
    let n = slide_of(dir.path(), "n.svs", &normal[..32]);
    let labels = dir.path().join("labels.csv");
    std::fs::write(&labels, "slide,label\na.svs,aca\nn,normal\n").unwrap();
    let out = dir.path().join("pool");
    let mut args = vec![
        "tile",
        "--size",
        "64",
        "--labels",
        s(&labels),
        "--out",
        s(&out),
    ];
    args.extend(CUT);
    args.extend([s(&a), s(&n)]);
    assert_ok(&mtpath(&args));
    let train = dir.path().join("train.safetensors");
    let mut args = vec!["features", "--out", s(&train), "--task", s(&out)];
    args.extend(MODEL);
    assert_ok(&mtpath(&args));
    let f = FeaturesFile::read(&train).unwrap();
    let tasks: serde_json::Value = serde_json::from_str(&f.metadata["tasks"]).unwrap();
    let classes: Vec<String> = serde_json::from_value(tasks[0]["classes"].clone()).unwrap();
    let y: Vec<u32> = f
        .labels
        .as_ref()
        .unwrap()
        .iter()
        .map(|&l| l as u32)
        .collect();
    let model = LogisticRegression::new(1.0)
        .fit(&f.features, f.n, f.dim, &y, classes.len())
        .unwrap();
    let mut probe = ProbeFile::new(&model, classes.clone(), 1.0).unwrap();
    probe.features = FeatureSource::from_features_metadata(&f.metadata, f.dim);
    let probe_path = dir.path().join("probe.json");
    std::fs::write(&probe_path, probe.to_json().unwrap()).unwrap();

    // A new slide, tumour on the left four columns and normal on the right, from tiles the
    // probe never saw.
    let mixed: Vec<PathBuf> = (0..32)
        .map(|i| {
            if i % 8 < 4 {
                aca[40 + i].clone()
            } else {
                normal[40 + i].clone()
            }
        })
        .collect();
    let m = slide_of(dir.path(), "mixed.svs", &mixed);
    let csv = dir.path().join("mixed.csv");
    let heat = dir.path().join("mixed.png");
    let mut args = vec![
        "predict",
        "--probe",
        s(&probe_path),
        "--slide",
        s(&m),
        "--tile-size",
        "64",
        "--out",
        s(&csv),
        "--heatmap",
        s(&heat),
    ];
    args.extend(CUT);
    args.extend(MODEL);
    let o = mtpath(&args);
    assert_ok(&o);
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let (header, rows) = csv_rows(&csv);
    assert_eq!(header[..6].join(","), "slide,x,y,size,tissue,predicted");
    assert_eq!(header[6..].join(","), "p_aca,p_normal");
    // Tissue spans x 256..2048: the tumour half is x < 1152 (tile centres).
    let (mut right, mut total) = (0, 0);
    for r in &rows {
        let x: f64 = r[1].parse::<f64>().unwrap() + 64.0;
        let want = if x < 1152.0 { "aca" } else { "normal" };
        total += 1;
        right += usize::from(r[5] == want);
    }
    let accuracy = right as f64 / total as f64;
    assert!(
        accuracy > 0.8,
        "{right}/{total} tiles on the right side of the slide"
    );
    let picture = image::open(&heat).unwrap();
    assert_eq!(picture.width(), 2048);
    assert!(
        stderr(&o).contains("probability of normal"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn slides_that_cannot_be_read_are_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let not_tiff = dir.path().join("notes.svs");
    std::fs::write(&not_tiff, b"hello, this is not a slide").unwrap();
    let out = dir.path().join("t");
    let o = mtpath(&["tile", "--out", s(&out), s(&not_tiff)]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("notes.svs") && stderr(&o).contains("not a TIFF"),
        "{}",
        stderr(&o)
    );

    // No recorded microns per pixel: --mpp asks for --slide-mpp, and --level works.
    let img = tissue_from_tiles(
        &real_tiles("lc25000-lung/images/lung_n")[..4],
        900,
        600,
        2,
        (100, 50),
    );
    let bare = dir.path().join("bare.tif");
    let opts = WriteOptions {
        tile: 128,
        codec: Codec::Lzw,
        layout: Layout::Generic { mpp: None },
        levels: 1,
        ..WriteOptions::default()
    };
    std::fs::write(&bare, write_slide(&img, &opts)).unwrap();
    let o = mtpath(&["tile", "--mpp", "0.5", "--out", s(&out), s(&bare)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--slide-mpp"), "{}", stderr(&o));
    let o = mtpath(&[
        "tile",
        "--level",
        "0",
        "--size",
        "100",
        "--out",
        s(&out),
        s(&bare),
    ]);
    assert_ok(&o);
    let o = mtpath(&[
        "tile",
        "--mpp",
        "1.0",
        "--slide-mpp",
        "0.5",
        "--size",
        "100",
        "--out",
        s(&dir.path().join("u")),
        s(&bare),
    ]);
    assert_ok(&o);

    // A slide cut short: its directories are at the end, so it is refused as truncated.
    let whole = std::fs::read(&bare).unwrap();
    let cut = dir.path().join("cut.tif");
    std::fs::write(&cut, &whole[..whole.len() * 2 / 3]).unwrap();
    let o = mtpath(&[
        "tile",
        "--level",
        "0",
        "--out",
        s(&dir.path().join("v")),
        s(&cut),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cut.tif") && stderr(&o).contains("truncated"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bench_reads_every_tile_of_a_level() {
    let dir = tempfile::tempdir().unwrap();
    let aca = real_tiles("lc25000-lung/images/lung_aca");
    let slide = slide_of(dir.path(), "b.svs", &aca[..32]);
    let o = mtpath(&[
        "bench",
        "--mode",
        "slide",
        "--slide",
        s(&slide),
        "--level",
        "1",
        "--size",
        "128",
        "--iters",
        "1",
    ]);
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    // Level 1 of 2304 × 1280 px is 1152 × 640: 9 × 5 whole tiles of 128 px.
    assert!(
        out.contains("level 1 (1152x640), 45 tiles of 128 px"),
        "{out}"
    );
    assert!(
        out.contains("tiles/s") && out.contains("pixel sum"),
        "{out}"
    );
    let o = mtpath(&["bench", "--mode", "slide"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--slide"), "{}", stderr(&o));
    let o = mtpath(&[
        "bench",
        "--mode",
        "slide",
        "--slide",
        s(&slide),
        "--level",
        "9",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no level 9"), "{}", stderr(&o));
}

/// Whether python3 with tifffile, imagecodecs, Pillow and OpenSlide is here; required when
/// MTPATH_SLIDE_CHECK=1 (scripts/test.sh installs them).
fn python_readers() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import tifffile, imagecodecs, PIL, numpy, openslide"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("MTPATH_SLIDE_CHECK").as_deref() == Ok("1") {
        panic!(
            "MTPATH_SLIDE_CHECK=1 but python3 lacks tifffile, imagecodecs, Pillow, numpy or \
             openslide (pip install openslide-bin openslide-python)"
        );
    }
    ok
}

#[test]
fn decoded_tiles_equal_tifffile_pillow_and_openslide_exactly() {
    if !python_readers() {
        eprintln!(
            "skipped: python3 with tifffile, imagecodecs, Pillow and OpenSlide is not installed"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = real_tiles("lc25000-lung/images/lung_aca");
    let img = tissue_from_tiles(&files[..12], 1200, 900, 4, (150, 100));
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/slide/check_with_tifffile.py");
    let cases = [
        (
            "aperio.svs",
            Codec::JpegRgb(80),
            Layout::Aperio { mpp: 0.25 },
            false,
            false,
        ),
        (
            "ycbcr.tif",
            Codec::Jpeg(90),
            Layout::Generic { mpp: Some(0.5) },
            true,
            false,
        ),
        (
            "ome.ome.tif",
            Codec::Deflate,
            Layout::Ome { mpp: 0.5 },
            false,
            false,
        ),
        (
            "strips.tif",
            Codec::Lzw,
            Layout::Generic { mpp: None },
            false,
            true,
        ),
    ];
    let mut slides = Vec::new();
    for (name, codec, layout, big_tiff, strips) in cases {
        let path = dir.path().join(name);
        let opts = WriteOptions {
            tile: 256,
            codec,
            layout,
            levels: 3,
            big_tiff,
            strips,
            ..WriteOptions::default()
        };
        std::fs::write(&path, write_slide(&img, &opts)).unwrap();
        slides.push((path, vec!["0", "1"], !strips));
    }
    // JPEG 2000 tiles written by OpenJPEG (lossless), as 34712, as Aperio's 33005 (RGB) and
    // as Aperio's 33003 (YCbCr components, converted back as OpenSlide does).
    let j2k_script = script.with_file_name("to_jpeg2000.py");
    for (name, extra) in [
        ("j2k.tif", None),
        ("j2k.svs", Some("--aperio")),
        ("j2k-ycbcr.svs", Some("--aperio-ycbcr")),
    ] {
        let path = dir.path().join(name);
        let mut cmd = std::process::Command::new("python3");
        cmd.args([s(&j2k_script), s(&slides[2].0), s(&path)]);
        cmd.args(extra);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        slides.push((path, vec!["0"], false));
    }
    for (path, levels, with_pillow) in &slides {
        let name = path.file_name().unwrap().to_string_lossy();
        for &level in levels {
            let out = dir.path().join(format!("{name}-{level}"));
            let o = mtpath(&[
                "tile",
                "--level",
                level,
                "--size",
                "128",
                "--min-tissue",
                "0",
                "--out",
                s(&out),
                s(path),
            ]);
            assert_ok(&o);
            let o = std::process::Command::new("python3")
                .args([s(&script), s(path), s(&out), level])
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(
                o.status.success(),
                "{name} level {level}: {said}{}",
                stderr(&o)
            );
            assert!(said.contains("tiles equal (max diff 0)"), "{said}");
            if level == "0" && *with_pillow {
                assert!(
                    said.contains("pillow") && !said.contains("pillow: cannot"),
                    "{said}"
                );
                let pillow = said.lines().find(|l| l.contains(": pillow ")).unwrap();
                assert!(pillow.ends_with("(max diff 0)"), "{said}");
            }
            // OpenSlide reads Aperio SVS (JPEG and JPEG 2000) and tiled generic TIFF, with
            // their levels and MPP as we do (it skips OME's SubIFD levels and stripped files).
            let vendor = match name.as_ref() {
                "aperio.svs" => Some("vendor aperio, 3 levels, mpp 0.25"),
                "j2k.svs" | "j2k-ycbcr.svs" => Some("vendor aperio"),
                "ycbcr.tif" => Some("vendor generic-tiff, 3 levels, mpp 0.5"),
                _ => None,
            };
            if let Some(vendor) = vendor {
                let line = said
                    .lines()
                    .find(|l| l.contains(": openslide "))
                    .unwrap_or_else(|| panic!("{name}: OpenSlide did not read it: {said}"));
                assert!(
                    line.contains("tiles equal (max diff 0)") && line.contains(vendor),
                    "{said}"
                );
            }
        }
    }
}
