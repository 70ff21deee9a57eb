//! Whole-slide images in the browser explorer, end to end in headless Chromium: a folder holds
//! labelled tiles (cut from two slides by `mtpath tile`) and a third slide, half tumour, half
//! normal lung. The page cuts the slide into tissue tiles in its workers, embeds them, trains
//! the probe on the labelled tiles and draws the heatmap over the slide. Checked against the
//! native commands: the slide's tiles and features equal `mtpath features --slide` (1e-5),
//! and the exported probe applied by `mtpath predict --slide` gives the page's predictions.
//! The slides are built from real tiles of ../shared/data. Runs when MTPATH_E2E=1 (after
//! `bash scripts/build-web.sh`); screenshots go to tests/artifacts/e2e/.

#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/webdriver.rs"]
mod webdriver;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{chromium, mtpath_bin, repo, run, serve};
use mtpath_shared::export::relative_difference;
use mtpath_shared::features_file::FeaturesFile;
use mtpath_shared::slide::writer::{mosaic_slide, real_tiles, Codec};

/// An Aperio slide with RGB-coded JPEG tiles (as Aperio writes them) of 8 × 4 real tiles.
fn slide_of(path: &Path, tiles: &[PathBuf]) {
    std::fs::write(path, mosaic_slide(tiles, Codec::JpegRgb(90))).unwrap();
}
use serde_json::json;

/// `xX_yY` of a tile name `SLIDE@xX_yY`.
fn at(name: &str) -> String {
    name.rsplit_once('@')
        .map(|(_, a)| a.to_string())
        .unwrap_or_default()
}

#[test]
fn slide_heatmap_in_chromium_matches_native_predict() {
    if std::env::var("MTPATH_E2E").ok().as_deref() != Some("1") {
        eprintln!(
            "skipped: set MTPATH_E2E=1 (scripts/test.sh does) after bash scripts/build-web.sh"
        );
        return;
    }
    let www = repo().join("www");
    assert!(
        www.join("pkg/mtpath_web_bg.wasm").is_file(),
        "run bash scripts/build-web.sh"
    );
    let artifacts = repo().join("tests/artifacts/e2e");
    std::fs::create_dir_all(&artifacts).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let aca = real_tiles("lc25000-lung/images/lung_aca");
    let normal = real_tiles("lc25000-lung/images/lung_n");

    // Labelled tiles from four slides (two per class, so that grouped cross-validation has
    // a slide of each class to hold out), and the slide to classify, in one folder.
    let mut training = Vec::new();
    for (name, tiles) in [
        ("a1", &aca[..16]),
        ("a2", &aca[16..32]),
        ("n1", &normal[..16]),
        ("n2", &normal[16..32]),
    ] {
        let path = tmp.path().join(format!("{name}.svs"));
        slide_of(&path, tiles);
        training.push(path);
    }
    let labels = tmp.path().join("labels.csv");
    std::fs::write(
        &labels,
        "slide,label\na1,aca\na2,aca\nn1,normal\nn2,normal\n",
    )
    .unwrap();
    let folder = tmp.path().join("case");
    let cut = ["--mpp", "1.0", "--min-tissue", "0.5"];
    run(Command::new(mtpath_bin())
        .args(["tile", "--size", "112", "--labels"])
        .arg(&labels)
        .arg("--out")
        .arg(&folder)
        .args(cut)
        .args(&training));
    let mixed: Vec<PathBuf> = (0..32)
        .map(|i| {
            if i % 8 < 4 {
                aca[40 + i].clone()
            } else {
                normal[40 + i].clone()
            }
        })
        .collect();
    let slide = folder.join("mixed.svs");
    slide_of(&slide, &mixed);

    // The model: the ResNet-18 fixture, exported with BatchNorm folded.
    let fixtures = std::env::var_os("MTPATH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/fixtures"));
    let model_dir = tmp.path().join("model");
    run(Command::new(mtpath_bin())
        .arg("export")
        .arg(fixtures.join("resnet18.safetensors"))
        .arg("--out")
        .arg(&model_dir));
    let model_file = model_dir.join("model.safetensors");
    let native = tmp.path().join("slide.safetensors");
    run(Command::new(mtpath_bin())
        .arg("features")
        .arg("--weights")
        .arg(&model_file)
        .arg("--slide")
        .arg(&slide)
        .args(["--tile-size", "112"])
        .args(cut)
        .arg("--out")
        .arg(&native));

    let (_server, url, _log) = serve(&www, &model_dir);
    let (_driver, s) = chromium();
    let shot = |name: &str| {
        let png = s.screenshot().expect("screenshot");
        std::fs::write(artifacts.join(format!("{name}.png")), png).unwrap();
    };
    let result = (|| -> Result<(), String> {
        s.script_timeout(600_000)?;
        s.goto(&url)?;
        s.wait_for(
            "document.body.dataset.stage === 'model-loaded'",
            Duration::from_secs(120),
            "document.getElementById('model-status').textContent",
        )?;
        s.eval(
            "document.getElementById('slide-size').value = '112'; document.getElementById('slide-mpp').value = '1.0'; document.getElementById('slide-tissue').value = '0.5'; return true;",
            json!([]),
        )?;
        let input = s.find("#folder-input")?;
        s.send_keys(&input, folder.to_str().unwrap())?;
        s.wait_for(
            "document.body.dataset.map === 'pca' && document.body.dataset.slides === 'tiles'",
            Duration::from_secs(600),
            "document.getElementById('input-status').textContent + ' | ' + document.getElementById('map-status').textContent",
        )?;
        shot("slide-1-tiles");

        // The slide's tiles and features equal the native ones.
        let got = s.eval(
            "const a = window.mtpathApp; const rows = a.items.map((it, i) => [it, i]).filter(([it]) => it.slide !== undefined);
             return { names: rows.map(([it]) => it.name), dim: a.dim,
                      x: rows.flatMap(([, i]) => Array.from(a.features.slice(i * a.dim, (i + 1) * a.dim))),
                      labelled: a.items.filter((it) => it.label !== null).length };",
            json!([]),
        )?;
        let names: Vec<String> = serde_json::from_value(got["names"].clone()).unwrap();
        let dim = got["dim"].as_u64().unwrap() as usize;
        let xb: Vec<f32> = (got["x"].as_array().unwrap().iter())
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let FeaturesFile {
            images: nat_names,
            features: xn,
            dim: nd,
            ..
        } = FeaturesFile::read(&native).unwrap();
        assert_eq!(
            (names.len(), dim),
            (nat_names.len(), nd),
            "page {names:?}\nnative {nat_names:?}"
        );
        let index: HashMap<String, usize> = nat_names
            .iter()
            .enumerate()
            .map(|(i, n)| (at(n), i))
            .collect();
        let mut worst = 0f64;
        for (i, name) in names.iter().enumerate() {
            let j = index[&at(name)];
            worst = worst.max(relative_difference(
                &xb[i * dim..(i + 1) * dim],
                &xn[j * dim..(j + 1) * dim],
            ));
        }
        eprintln!(
            "slide tiles, browser vs native features: worst relative L2 {worst:.2e} over {} tiles",
            names.len()
        );
        assert!(worst < 1e-5, "{worst:e}");
        assert!(got["labelled"].as_u64().unwrap() >= 40);

        // The probe, then the heatmap.
        let run_probe = s.find("#run-probe")?;
        s.click(&run_probe)?;
        s.wait_for(
            "document.body.dataset.slides === 'heatmap' || document.getElementById('probe-status').classList.contains('error')",
            Duration::from_secs(300),
            "document.getElementById('probe-status').textContent",
        )?;
        s.eval(
            "document.getElementById('slide-panel').scrollIntoView(); return true;",
            json!([]),
        )?;
        shot("slide-2-heatmap");
        let probe = s.eval(
            "const p = window.mtpathApp.probe; return p ? { json: p.json, csv: window.mtpathPredictionsCsv() } : document.getElementById('probe-status').textContent;",
            json!([]),
        )?;
        assert!(probe.is_object(), "probe failed: {probe}");
        let heat = s.eval(
            "const c = document.querySelector('#slides canvas'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let red = 0, blue = 0; for (let i = 0; i < d.length; i += 4) { if (d[i] > 120 && d[i + 1] < 90 && d[i + 2] < 90) red++; if (d[i + 2] > 100 && d[i] < 90) blue++; }
             return [red, blue];",
            json!([]),
        )?;
        eprintln!("heatmap: {heat} (red, blue) pixels");
        assert!(
            heat[0].as_u64().unwrap() > 100 && heat[1].as_u64().unwrap() > 100,
            "{heat}"
        );

        // The exported probe on the slide natively: the page's predictions, tile by tile.
        let probe_file = tmp.path().join("probe.json");
        std::fs::write(&probe_file, probe["json"].as_str().unwrap()).unwrap();
        let native_csv = tmp.path().join("native.csv");
        let heatmap = tmp.path().join("native.png");
        run(Command::new(mtpath_bin())
            .arg("predict")
            .arg("--probe")
            .arg(&probe_file)
            .arg("--weights")
            .arg(&model_file)
            .arg("--slide")
            .arg(&slide)
            .args(["--tile-size", "112"])
            .args(cut)
            .arg("--out")
            .arg(&native_csv)
            .arg("--heatmap")
            .arg(&heatmap));
        let text = std::fs::read_to_string(&native_csv).unwrap();
        let native: HashMap<String, (String, f64)> = (text.lines().skip(1))
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (
                    format!("x{}_y{}", f[1], f[2]),
                    (f[5].to_string(), f[7].parse().unwrap()),
                )
            })
            .collect();
        let mut compared = 0;
        let mut worst_p = 0f64;
        let (mut right, mut total) = (0, 0);
        for line in probe["csv"].as_str().unwrap().lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            if !f[0].starts_with("mixed.svs@") {
                continue;
            }
            let (pred, p_normal) = &native[&at(f[0])];
            assert_eq!(f[1], pred, "{line}");
            let p: f64 = f[3].parse().unwrap();
            worst_p = worst_p.max((p - p_normal).abs());
            compared += 1;
            let x: f64 = at(f[0])
                .trim_start_matches('x')
                .split('_')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            total += 1;
            right += usize::from((x + 112.0 < 1152.0) == (pred == "aca"));
        }
        eprintln!("{compared} slide tiles: browser = native predictions, worst p diff {worst_p:.1e}; {right}/{total} on the right side");
        assert_eq!(compared, names.len());
        assert!(
            right * 10 >= total * 8,
            "{right}/{total} tiles on the right side of the slide"
        );
        assert!(worst_p < 1e-4, "{worst_p}");

        // A click on a tile shows it at full resolution.
        s.eval(
            "const c = document.querySelector('#slides canvas'), r = c.getBoundingClientRect();
             const s = window.mtpathApp.slides[0], it = window.mtpathApp.items[s.rows[0]];
             const x = r.left + (it.x / s.scale + 2) * r.width / c.width, y = r.top + (it.y / s.scale + 2) * r.height / c.height;
             c.dispatchEvent(new MouseEvent('click', { clientX: x, clientY: y, bubbles: true })); return true;",
            json!([]),
        )?;
        s.wait_for(
            "document.querySelector('#slide-zoom canvas')?.width === 112",
            Duration::from_secs(60),
            "document.getElementById('slide-zoom').textContent",
        )?;
        shot("slide-3-zoom");

        // Labelling on the map: a box over the whole map selects every tile; "Label these"
        // gives them one label (then the probe has a single class and is disabled).
        s.eval(
            "const c = document.getElementById('map'), r = c.getBoundingClientRect();
             const ev = (t, x, y) => c.dispatchEvent(new PointerEvent(t, { clientX: x, clientY: y, bubbles: true, pointerId: 1 }));
             document.getElementById('select-mode').value = 'box';
             ev('pointerdown', r.left + 1, r.top + 1); ev('pointermove', r.right - 1, r.bottom - 1); ev('pointerup', r.right - 1, r.bottom - 1);
             document.getElementById('selection-label').value = 'tumour';
             document.getElementById('label-selection').click();
             return true;",
            json!([]),
        )?;
        let labelled = s.eval(
            "const a = window.mtpathApp; return [a.selection.size, a.items.length, a.items.filter((it) => it.label === 'tumour').length, document.getElementById('run-probe').disabled];",
            json!([]),
        )?;
        let n_items = labelled[1].as_u64().unwrap();
        assert_eq!(labelled[0].as_u64(), Some(n_items), "{labelled}");
        assert_eq!(labelled[2].as_u64(), Some(n_items), "{labelled}");
        assert_eq!(labelled[3].as_bool(), Some(true), "{labelled}");
        Ok(())
    })();
    // Nothing left the page's origin: the slide was read where it lies.
    let perf = s.log("performance").unwrap_or_default();
    s.quit();
    result.unwrap();
    let origin = url.trim_end_matches('/');
    let foreign: Vec<String> = perf
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e["message"].as_str()?).ok())
        .filter(|m| m["message"]["method"] == "Network.requestWillBeSent")
        .filter_map(|m| {
            m["message"]["params"]["request"]["url"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|u| !(u.starts_with(origin) || u.starts_with("blob:") || u.starts_with("data:")))
        .collect();
    assert!(foreign.is_empty(), "requests left the origin: {foreign:?}");
}
