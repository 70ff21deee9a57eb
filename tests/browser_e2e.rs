//! End-to-end test of the browser explorer in Debian's headless Chromium (WebDriver through
//! chromedriver): serve the app with `mtpath serve`, load an exported model, pick a folder of
//! real tiles from two tasks of ../shared/data (labelled subfolders, loose unlabelled tiles, a
//! broken file and a text file), wait for extraction, and check:
//!
//! - the map is drawn (non-blank canvas) and a click shows the nearest neighbours;
//! - the browser's features equal `mtpath features` on the same files (1e-5 relative), with
//!   the default pool and again with one worker on every core (the threaded module);
//! - the probe's cross-validated balanced accuracy is above chance and the unlabelled tiles
//!   get predictions, which `mtpath predict` reproduces natively from the exported probe JSON;
//! - the broken and non-image files are listed as skipped, with a reason;
//! - no request left the page's origin (Chromium's network log and the server's log).
//!
//! Screenshots of each stage go to tests/artifacts/e2e/. Needs `bash scripts/build-web.sh`
//! (www/pkg and www/pkg-threads), chromium and chromedriver; runs when MTPATH_E2E=1 (scripts/test.sh sets it),
//! otherwise it says why it did not run.

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
use serde_json::{json, Value};

fn data_dir() -> PathBuf {
    std::env::var_os("MTPATH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"))
}

fn fixtures_dir() -> PathBuf {
    std::env::var_os("MTPATH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/fixtures"))
}

/// The first `n` images of `task/images/label/`, sorted.
fn images_of(task: &str, label: &str, n: usize, skip: usize) -> Vec<PathBuf> {
    let dir = data_dir().join(task).join("images").join(label);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.into_iter().skip(skip).take(n).collect()
}

/// A script returning the page's features: `{ names, dim, x (row-major n × dim), labels }`.
const PAGE_FEATURES: &str = "const a = window.mtpathApp; return { names: a.items.map(i => i.name), dim: a.dim, x: Array.from(a.features), labels: a.items.map(i => i.label) };";

/// The worst relative L2 difference between the page's features (`got`: names, dim, x) and
/// the native features file of the same tiles (its names are paths under `tiles`).
fn worst_against_native(got: &Value, native: &Path, tiles: &Path) -> f64 {
    let names: Vec<String> = serde_json::from_value(got["names"].clone()).unwrap();
    let dim = got["dim"].as_u64().unwrap() as usize;
    let xb: Vec<f32> = got["x"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        xb.len(),
        names.len() * dim,
        "{} names, dim {dim}",
        names.len()
    );
    let FeaturesFile {
        images: nat_names,
        features: xn,
        dim: nd,
        ..
    } = FeaturesFile::read(native).unwrap();
    assert_eq!(nd, dim);
    assert_eq!(names.len(), nat_names.len(), "{names:?}");
    let by_name: HashMap<String, usize> = nat_names
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                p.strip_prefix(&format!("{}/", tiles.display()))
                    .unwrap_or(p)
                    .to_string(),
                i,
            )
        })
        .collect();
    let mut worst = 0f64;
    for (i, name) in names.iter().enumerate() {
        let j = *by_name
            .get(name)
            .unwrap_or_else(|| panic!("{name} not embedded natively"));
        worst = worst.max(relative_difference(
            &xb[i * dim..(i + 1) * dim],
            &xn[j * dim..(j + 1) * dim],
        ));
    }
    worst
}

#[test]
fn explorer_end_to_end_in_chromium() {
    if std::env::var("MTPATH_E2E").ok().as_deref() != Some("1") {
        eprintln!(
            "skipped: set MTPATH_E2E=1 (scripts/test.sh does) after bash scripts/build-web.sh"
        );
        return;
    }
    let www = repo().join("www");
    assert!(
        www.join("pkg/mtpath_web_bg.wasm").is_file(),
        "www/pkg missing: run bash scripts/build-web.sh"
    );
    let artifacts = repo().join("tests/artifacts/e2e");
    std::fs::create_dir_all(&artifacts).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // The tiles: two real tasks, labelled subfolders, loose unlabelled tiles, bad files.
    let tiles = tmp.path().join("tiles");
    let picks = [
        ("lymphoma", "cll", "lymphoma-cll"),
        ("lymphoma", "fl", "lymphoma-fl"),
        ("tcga-luad-lusc", "luad", "tcga-luad"),
        ("tcga-luad-lusc", "lusc", "tcga-lusc"),
    ];
    let mut labelled = 0;
    let mut unlabelled = 0;
    for (task, label, folder) in picks {
        std::fs::create_dir_all(tiles.join(folder)).unwrap();
        for f in images_of(task, label, 10, 0) {
            std::fs::copy(&f, tiles.join(folder).join(f.file_name().unwrap())).unwrap();
            labelled += 1;
        }
        for f in images_of(task, label, 2, 10) {
            let name = format!("{folder}-{}", f.file_name().unwrap().to_string_lossy());
            std::fs::copy(&f, tiles.join(name)).unwrap();
            unlabelled += 1;
        }
    }
    std::fs::write(
        tiles.join("broken.jpg"),
        b"\xff\xd8\xff\xe0 this is not a JPEG",
    )
    .unwrap();
    std::fs::write(tiles.join("notes.txt"), b"not an image").unwrap();
    let n_images = labelled + unlabelled;

    // The model: the ResNet-18 fixture, exported with BatchNorm folded.
    let model_dir = tmp.path().join("model");
    run(Command::new(mtpath_bin())
        .arg("export")
        .arg(fixtures_dir().join("resnet18.safetensors"))
        .arg("--out")
        .arg(&model_dir));
    let model_file = model_dir.join("model.safetensors");

    // Native reference features and the server.
    let native = tmp.path().join("native.safetensors");
    let mut valid_images: Vec<PathBuf> = std::fs::read_dir(&tiles)
        .unwrap()
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                std::fs::read_dir(&p)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect()
            } else {
                vec![p]
            }
        })
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n != "broken.jpg" && n != "notes.txt"
        })
        .collect();
    valid_images.sort();
    run(Command::new(mtpath_bin())
        .arg("features")
        .arg("--weights")
        .arg(&model_file)
        .arg("--out")
        .arg(&native)
        .args(&valid_images));

    let (_server, url, server_log) = serve(&www, &model_dir);
    let origin = url.trim_end_matches('/').to_string();
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
        let status = s.eval(
            "return document.getElementById('model-status').textContent",
            json!([]),
        )?;
        assert!(
            status.as_str().unwrap().contains("resnet18")
                && status.as_str().unwrap().contains("folded"),
            "{status}"
        );
        shot("1-model-loaded");

        let input = s.find("#folder-input")?;
        s.send_keys(&input, tiles.to_str().unwrap())?;
        s.wait_for(
            "document.body.dataset.stage === 'extracting' || document.body.dataset.map === 'pca'",
            Duration::from_secs(60),
            "document.getElementById('input-status').textContent",
        )?;
        shot("2-extracting");
        s.wait_for(
            "document.body.dataset.map === 'pca'",
            Duration::from_secs(600),
            "document.getElementById('input-status').textContent + ' | ' + document.getElementById('map-status').textContent",
        )?;
        shot("3-map");

        // Skipped files are listed with a reason.
        let skipped = s.eval("return window.mtpathApp.skipped", json!([]))?;
        let skipped = skipped.as_array().unwrap();
        let reason = |name: &str| {
            skipped
                .iter()
                .find(|v| v["name"].as_str() == Some(name))
                .map(|v| v["reason"].as_str().unwrap().to_string())
        };
        assert!(
            reason("notes.txt").is_some_and(|r| r.contains("not an image")),
            "{skipped:?}"
        );
        assert!(reason("broken.jpg").is_some(), "{skipped:?}");

        // The map is drawn: many non-white pixels on the canvas.
        let painted = s.eval(
            "const c = document.getElementById('map'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let k = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) k++; return k;",
            json!([]),
        )?;
        assert!(
            painted.as_u64().unwrap() > 200,
            "map has {painted} painted pixels"
        );

        // Browser features equal native ones.
        let got = s.eval(PAGE_FEATURES, json!([]))?;
        let worst = worst_against_native(&got, &native, &tiles);
        eprintln!(
            "browser vs native features: worst relative L2 {worst:.2e} over {n_images} tiles"
        );
        assert!(
            worst < 1e-5,
            "browser features differ from native: {worst:e}"
        );
        let labels = got["labels"].as_array().unwrap();
        assert_eq!(labels.iter().filter(|l| l.is_null()).count(), unlabelled);

        // Neighbours on click: synthesise a click at the first point.
        s.eval(
            "const a = window.mtpathApp, c = document.getElementById('map'), r = c.getBoundingClientRect();
             const x = r.left + a.screen[0] * r.width / c.width, y = r.top + a.screen[1] * r.height / c.height;
             for (const t of ['pointerdown', 'pointerup']) c.dispatchEvent(new PointerEvent(t, { clientX: x, clientY: y, bubbles: true, pointerId: 1 }));
             return true;",
            json!([]),
        )?;
        s.wait_for(
            "document.querySelectorAll('#neighbours figure').length >= 9",
            Duration::from_secs(60),
            "document.getElementById('neighbours').textContent",
        )?;
        shot("4-neighbours");

        // t-SNE on request.
        s.eval("const p = document.getElementById('projection'); p.value = 'tsne'; p.dispatchEvent(new Event('change')); return true;", json!([]))?;
        s.wait_for(
            "document.body.dataset.map === 'tsne' && document.getElementById('map-status').textContent.startsWith('t-SNE done')",
            Duration::from_secs(300),
            "document.getElementById('map-status').textContent",
        )?;
        shot("5-tsne");

        // The probe.
        let run_probe = s.find("#run-probe")?;
        s.click(&run_probe)?;
        s.wait_for(
            "document.body.dataset.probe === 'done' || document.getElementById('probe-status').classList.contains('error')",
            Duration::from_secs(300),
            "document.getElementById('probe-status').textContent",
        )?;
        let probe = s.eval(
            "const p = window.mtpathApp.probe; return p ? { cv: p.cv, json: p.json, csv: window.mtpathPredictionsCsv(), rows: document.querySelectorAll('#predictions-table tr').length, threads: p.threads, isolated: self.crossOriginIsolated, cores: navigator.hardwareConcurrency } : document.getElementById('probe-status').textContent;",
            json!([]),
        )?;
        assert!(probe.is_object(), "probe failed: {probe}");
        shot("6-probe");
        let bacc = probe["cv"]["balanced_accuracy"].as_f64().unwrap();
        eprintln!(
            "browser probe: CV balanced accuracy {bacc:.3} (chance 0.25), C = {}",
            probe["cv"]["best_c"]
        );
        assert!(bacc > 0.25, "CV balanced accuracy {bacc} not above chance");
        // On a cross-origin isolated page with several cores, the analysis worker fits the
        // folds on the threaded module's pool (one thread per core, at most five).
        let (threads, cores) = (
            probe["threads"].as_u64().unwrap_or(0),
            probe["cores"].as_u64().unwrap_or(1),
        );
        eprintln!("browser probe: folds on {threads} thread(s), {cores} cores");
        if probe["isolated"] == json!(true) && cores > 1 {
            assert_eq!(threads, cores.min(5), "probe threads");
        } else {
            assert_eq!(threads, 1, "probe threads");
        }
        assert_eq!(
            probe["rows"].as_u64().unwrap() as usize,
            unlabelled + 1,
            "prediction table rows"
        );

        // The exported probe applied natively gives the browser's predictions.
        let probe_file = tmp.path().join("probe.json");
        std::fs::write(&probe_file, probe["json"].as_str().unwrap()).unwrap();
        let native_csv = run(Command::new(mtpath_bin())
            .arg("predict")
            .arg("--probe")
            .arg(&probe_file)
            .arg("--features")
            .arg(&native));
        let browser_csv = probe["csv"].as_str().unwrap();
        let parse = |csv: &str, strip: bool| -> HashMap<String, (String, Vec<f64>)> {
            csv.lines()
                .skip(1)
                .map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    let name = if strip {
                        f[0].strip_prefix(&format!("{}/", tiles.display()))
                            .unwrap_or(f[0])
                            .to_string()
                    } else {
                        f[0].to_string()
                    };
                    let k = f.len() - 2 - usize::from(!strip);
                    (
                        name,
                        (
                            f[1].to_string(),
                            f[2..2 + k].iter().map(|v| v.parse().unwrap()).collect(),
                        ),
                    )
                })
                .collect()
        };
        let (nat, web) = (parse(&native_csv, true), parse(browser_csv, false));
        assert_eq!(nat.len(), web.len());
        let mut worst_p = 0f64;
        for (name, (pred, p)) in &web {
            let (npred, np) = &nat[name];
            assert_eq!(pred, npred, "{name}: browser {pred}, native {npred}");
            for (a, b) in p.iter().zip(np) {
                worst_p = worst_p.max((a - b).abs());
            }
        }
        eprintln!("browser vs native probe probabilities: worst abs diff {worst_p:.1e}");
        assert!(worst_p < 1e-4, "{worst_p}");

        // One worker on every core: the page is cross-origin isolated (mtpath serve's
        // headers), so its worker runs the threaded module, each tile split over the cores;
        // the features are the native ones all the same.
        let env = s.eval(
            "document.getElementById('workers').value = '1'; document.getElementById('input-status').textContent = ''; return { isolated: self.crossOriginIsolated, cores: navigator.hardwareConcurrency };",
            json!([]),
        )?;
        assert_eq!(
            env["isolated"],
            json!(true),
            "the explorer is not cross-origin isolated"
        );
        let cores = env["cores"].as_u64().unwrap_or(1);
        let input = s.find("#folder-input")?;
        s.send_keys(&input, tiles.to_str().unwrap())?;
        s.wait_for(
            "document.getElementById('input-status').textContent.includes('tiles embedded')",
            Duration::from_secs(600),
            "document.getElementById('input-status').textContent",
        )?;
        let status = s.eval(
            "return document.getElementById('input-status').textContent",
            json!([]),
        )?;
        let status = status.as_str().unwrap_or_default().to_string();
        eprintln!("one worker on {cores} cores: {status}");
        if cores > 1 {
            assert!(
                status.contains(&format!("1 worker × {cores} threads")),
                "the worker did not run on {cores} threads: {status}"
            );
        }
        let got = s.eval(PAGE_FEATURES, json!([]))?;
        let worst = worst_against_native(&got, &native, &tiles);
        eprintln!("threaded browser vs native features: worst relative L2 {worst:.2e}");
        assert!(
            worst < 1e-5,
            "threaded browser features differ from native: {worst:e}"
        );

        // Cancel: pick the folder again (one worker) and cancel after the first tiles; what
        // was embedded stays and the page says it was cancelled. Cancel is pressed from a
        // MutationObserver on the progress text, which runs right after the update that
        // reports the second tile: on all cores the folder takes about 3 s and the page's
        // replies can arrive in a burst, too fast for WebDriver's polls or a timer to catch
        // the extraction in flight.
        s.eval(
            "const bar = document.getElementById('progress-bar');
             const watch = new MutationObserver(() => {
               if (document.body.dataset.stage === 'extracting' && bar.value >= 2) {
                 watch.disconnect();
                 document.getElementById('cancel').click();
               }
             });
             watch.observe(document.getElementById('progress-text'), { childList: true, characterData: true, subtree: true });
             return true;",
            json!([]),
        )?;
        let input = s.find("#folder-input")?;
        s.send_keys(&input, tiles.to_str().unwrap())?;
        s.wait_for(
            "document.getElementById('input-status').textContent.startsWith('Cancelled')",
            Duration::from_secs(60),
            "document.getElementById('input-status').textContent",
        )?;
        let kept = s.eval("return window.mtpathApp.items.length", json!([]))?;
        let kept = kept.as_u64().unwrap() as usize;
        assert!(
            kept >= 1 && kept < n_images,
            "kept {kept} of {n_images} after cancel"
        );
        // That folder was picked while the previous one's map was still being computed: the
        // map drawn is of the tiles kept (none for fewer than two), not a late answer for the
        // 48 before.
        s.wait_for(
            "document.body.dataset.stage === 'map-drawn' || (window.mtpathApp.items.length < 2 && document.body.dataset.stage === 'extracted')",
            Duration::from_secs(60),
            "[document.body.dataset.stage, window.mtpathApp.items.length, document.getElementById('map-status').textContent]",
        )?;
        let points = s.eval(
            "const xy = window.mtpathApp.xy; return xy ? xy.length / 2 : 0",
            json!([]),
        )?;
        eprintln!("cancelled with {kept} of {n_images} tiles kept; the map has {points} points");
        let expected = if kept >= 2 { kept } else { 0 };
        assert_eq!(
            points.as_u64(),
            Some(expected as u64),
            "the map shows {points} points for {kept} tiles"
        );
        // The probe of the earlier tiles went with them: no status line or table about tiles
        // no longer on the page.
        let probe_left = s.eval(
            "return [document.getElementById('probe-status').textContent, document.getElementById('probe-results').innerHTML, window.mtpathApp.probe === null]",
            json!([]),
        )?;
        assert_eq!(
            probe_left,
            json!(["", "", true]),
            "the previous probe is still shown after a new drop"
        );
        shot("7-cancelled");
        Ok(())
    })();

    // No request left the origin: Chromium's network log and the server's own log.
    let perf = s.log("performance").unwrap_or_default();
    s.quit();
    result.unwrap();
    let mut urls = Vec::new();
    for entry in &perf {
        let msg: Value =
            serde_json::from_str(entry["message"].as_str().unwrap_or("{}")).unwrap_or_default();
        if msg["message"]["method"] == "Network.requestWillBeSent" {
            urls.push(
                msg["message"]["params"]["request"]["url"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
        }
    }
    assert!(!urls.is_empty(), "the network log is empty");
    let foreign: Vec<&String> = urls
        .iter()
        .filter(|u| !(u.starts_with(&origin) || u.starts_with("blob:") || u.starts_with("data:")))
        .collect();
    assert!(foreign.is_empty(), "requests left the origin: {foreign:?}");
    let served = server_log.lock().unwrap().clone();
    assert!(served.iter().any(|l| l.contains("/models/")), "{served:?}");
    assert!(
        !served
            .iter()
            .any(|l| l.starts_with("POST") || l.starts_with("PUT")),
        "a request tried to upload: {served:?}"
    );
    eprintln!(
        "{} requests, all to {origin}; screenshots in {}",
        urls.len(),
        artifacts.display()
    );
}
