//! WebAssembly bindings over `mtpath-shared`: the browser explorer's entry points.
//!
//! Everything runs on the user's machine; nothing here performs I/O beyond the bytes passed
//! in. Feature matrices cross the boundary as row-major `Float32Array`s (`n × d`).

use candle_core::Device;
use mtpath_shared::embed::{pca_2d, Tsne, TsneConfig};
use mtpath_shared::eval::knn::centred_unit_rows;
use mtpath_shared::features_file::FeaturesFile;
use mtpath_shared::inference::FeatureExtractor;
use mtpath_shared::parallel::on_pool;
use mtpath_shared::preprocess::{decode_image, resize_exact, EvalTransform};
use mtpath_shared::probe::file::{CvSummary, FeatureSource};
use mtpath_shared::probe::{
    fit_linear, grid_search_c, GridConfig, GridSearch, LinearModel, ModelKind, ProbeFile,
};
use std::cell::RefCell;
use wasm_bindgen::prelude::*;

thread_local! {
    /// The last [`probe_cross_validate`]'s search, for the [`Probe`] fitted next at its best
    /// C: a logistic probe on the same rows then reuses the search's principal axes
    /// ([`GridSearch::fit_best`] checks that the rows are the same). Taken by that fit, so
    /// the axes' memory is held only between the two calls.
    static LAST_SEARCH: RefCell<Option<GridSearch>> = const { RefCell::new(None) };
}

fn js_err(e: mtpath_shared::Error) -> JsError {
    JsError::new(&e.to_string())
}

fn check_matrix(x: &[f32], n: usize, d: usize) -> Result<(), JsError> {
    if d == 0 || x.len() != n * d {
        return Err(JsError::new(&format!(
            "feature matrix of {} values is not {n} × {d}",
            x.len()
        )));
    }
    Ok(())
}

/// A model loaded once and used to embed many images.
#[wasm_bindgen]
pub struct FeatureModel {
    inner: FeatureExtractor,
}

/// The features of one image and a small RGBA thumbnail from the same decode.
#[wasm_bindgen]
pub struct Embedded {
    features: Vec<f32>,
    thumbnail: Vec<u8>,
    width: u32,
    height: u32,
    source_width: u32,
    source_height: u32,
}

#[wasm_bindgen]
impl Embedded {
    /// The feature vector.
    #[wasm_bindgen(getter)]
    pub fn features(&self) -> Vec<f32> {
        self.features.clone()
    }
    /// Thumbnail pixels, RGBA, `width × height`.
    #[wasm_bindgen(getter)]
    pub fn thumbnail(&self) -> Vec<u8> {
        self.thumbnail.clone()
    }
    /// Thumbnail width.
    #[wasm_bindgen(getter)]
    pub fn width(&self) -> u32 {
        self.width
    }
    /// Thumbnail height.
    #[wasm_bindgen(getter)]
    pub fn height(&self) -> u32 {
        self.height
    }
    /// Width of the decoded image.
    #[wasm_bindgen(getter, js_name = sourceWidth)]
    pub fn source_width(&self) -> u32 {
        self.source_width
    }
    /// Height of the decoded image.
    #[wasm_bindgen(getter, js_name = sourceHeight)]
    pub fn source_height(&self) -> u32 {
        self.source_height
    }
}

#[wasm_bindgen]
impl FeatureModel {
    /// Load safetensors weights (mtpath checkpoint, `mtpath export`, or a torchvision state
    /// dict).
    #[wasm_bindgen(constructor)]
    pub fn new(weights: &[u8]) -> Result<FeatureModel, JsError> {
        let inner = FeatureExtractor::from_safetensors_bytes(weights, "model", &Device::Cpu)
            .map_err(js_err)?;
        Ok(Self { inner })
    }

    /// Architecture name, e.g. `resnet50`.
    #[wasm_bindgen(getter)]
    pub fn architecture(&self) -> String {
        self.inner.metadata().trunk.architecture.name().to_string()
    }

    /// Length of the feature vectors.
    #[wasm_bindgen(getter, js_name = featureDim)]
    pub fn feature_dim(&self) -> usize {
        self.inner.feature_dim()
    }

    /// Input side in pixels after cropping.
    #[wasm_bindgen(getter, js_name = inputSize)]
    pub fn input_size(&self) -> u32 {
        self.inner.preprocess_config().crop
    }

    /// Shorter side after resizing, before the crop.
    #[wasm_bindgen(getter, js_name = resizeShorter)]
    pub fn resize_shorter(&self) -> u32 {
        self.inner.preprocess_config().resize_shorter
    }

    /// How images become input: `resize`, `center-crop` (native resolution) or `grid` (mean
    /// over native-resolution crops).
    #[wasm_bindgen(getter, js_name = evalTransform)]
    pub fn eval_transform(&self) -> String {
        self.inner.preprocess_config().transform.to_string()
    }

    /// Set how images become input (`resize`, `center-crop` or `grid`); an unknown name is an
    /// error listing the three.
    #[wasm_bindgen(js_name = setEvalTransform)]
    pub fn set_eval_transform(&mut self, name: &str) -> Result<(), JsError> {
        let t = name.parse::<EvalTransform>().map_err(js_err)?;
        self.inner.set_transform(t);
        Ok(())
    }

    /// Whether BatchNorm is folded away (an `mtpath export` model).
    #[wasm_bindgen(getter)]
    pub fn folded(&self) -> bool {
        self.inner.is_folded()
    }

    /// The model card as JSON: architecture, preprocessing and, for exports, tasks and dtype.
    #[wasm_bindgen(js_name = cardJson)]
    pub fn card_json(&self) -> String {
        let cfg = self.inner.preprocess_config();
        serde_json::json!({
            "architecture": self.architecture(),
            "feature_dim": self.feature_dim(),
            "input_size": cfg.crop,
            "resize_shorter": cfg.resize_shorter,
            "mean": cfg.mean,
            "std": cfg.std,
            "eval_transform": cfg.transform.as_str(),
            "folded": self.inner.is_folded(),
            "export": self.inner.export_card().and_then(|c| serde_json::to_value(c).ok()),
        })
        .to_string()
    }

    /// Features of one encoded image (JPEG, PNG or TIFF bytes).
    pub fn extract(&self, image: &[u8]) -> Result<Vec<f32>, JsError> {
        on_pool(|| self.inner.extract_bytes(image)).map_err(js_err)
    }

    /// Features of a preprocessed image: `3 × S × S` floats, CHW, already normalised
    /// (S = `inputSize`). The network alone, for benchmarks.
    #[wasm_bindgen(js_name = extractPreprocessed)]
    pub fn extract_preprocessed(&self, chw: &[f32]) -> Result<Vec<f32>, JsError> {
        let rows = on_pool(|| self.inner.extract_preprocessed(&[chw.to_vec()])).map_err(js_err)?;
        rows.into_iter()
            .next()
            .ok_or_else(|| JsError::new("no features returned"))
    }

    /// Features and a thumbnail (longest side `thumb`) of one encoded image, decoded once.
    #[wasm_bindgen(js_name = extractWithThumbnail)]
    pub fn extract_with_thumbnail(&self, image: &[u8], thumb: u32) -> Result<Embedded, JsError> {
        let rgb = decode_image(image).map_err(js_err)?;
        let features = on_pool(|| self.inner.extract_rgb(&rgb)).map_err(js_err)?;
        let (w, h) = (rgb.width(), rgb.height());
        let scale = thumb.max(1) as f64 / w.max(h) as f64;
        let (tw, th) = if scale < 1.0 {
            (
                ((w as f64 * scale).round() as u32).max(1),
                ((h as f64 * scale).round() as u32).max(1),
            )
        } else {
            (w, h)
        };
        let small = if (tw, th) == (w, h) {
            rgb
        } else {
            resize_exact(&rgb, tw, th).map_err(js_err)?
        };
        let mut rgba = Vec::with_capacity((tw * th * 4) as usize);
        for p in small.pixels() {
            rgba.extend_from_slice(&[p[0], p[1], p[2], 255]);
        }
        Ok(Embedded {
            features,
            thumbnail: rgba,
            width: tw,
            height: th,
            source_width: w,
            source_height: h,
        })
    }
}

/// One-shot: load `weights` (safetensors bytes) and return the features of `image`.
#[wasm_bindgen]
pub fn extract_features(weights: &[u8], image: &[u8]) -> Result<Vec<f32>, JsError> {
    FeatureModel::new(weights)?.extract(image)
}

/// 2-D PCA map of `n × d` features: `[x0, y0, x1, y1, …]` followed by the two explained
/// variance ratios (so the result has `2n + 2` values).
#[wasm_bindgen(js_name = pca2d)]
pub fn pca2d(x: &[f32], n: usize, d: usize) -> Result<Vec<f32>, JsError> {
    check_matrix(x, n, d)?;
    let p = pca_2d(x, n, d).map_err(js_err)?;
    let mut out = p.embedding;
    out.extend(p.explained_variance_ratio.iter().map(|&v| v as f32));
    Ok(out)
}

/// t-SNE run step by step so the page can draw it as it goes.
#[wasm_bindgen]
pub struct TsneRun {
    inner: Tsne,
}

#[wasm_bindgen]
impl TsneRun {
    /// Prepare t-SNE of `n × d` features (affinities computed here: the slow part for large
    /// `n`). `perplexity` ≤ 0 uses the default (30); `iterations` 0 the default (750).
    #[wasm_bindgen(constructor)]
    pub fn new(
        x: &[f32],
        n: usize,
        d: usize,
        perplexity: f64,
        iterations: usize,
        seed: u64,
    ) -> Result<TsneRun, JsError> {
        check_matrix(x, n, d)?;
        let mut cfg = TsneConfig {
            seed,
            ..TsneConfig::default()
        };
        if perplexity > 0.0 {
            cfg.perplexity = perplexity;
        }
        if iterations > 0 {
            cfg.total_iterations = iterations;
        }
        Ok(Self {
            inner: Tsne::new(x, n, d, cfg).map_err(js_err)?,
        })
    }

    /// Run up to `iterations` more iterations; returns the current `n × 2` embedding.
    pub fn step(&mut self, iterations: usize) -> Vec<f32> {
        self.inner.step(iterations).to_vec()
    }

    /// Iterations done.
    #[wasm_bindgen(getter)]
    pub fn iteration(&self) -> usize {
        self.inner.iteration()
    }

    /// Iterations planned.
    #[wasm_bindgen(getter, js_name = totalIterations)]
    pub fn total_iterations(&self) -> usize {
        self.inner.total_iterations()
    }

    /// Whether every planned iteration ran.
    #[wasm_bindgen(getter, js_name = isDone)]
    pub fn is_done(&self) -> bool {
        self.inner.is_done()
    }
}

/// Cosine nearest neighbours over centred, L2-normalised features (as the kNN probe).
#[wasm_bindgen]
pub struct Neighbours {
    normed: Vec<f32>,
    n: usize,
    d: usize,
}

#[wasm_bindgen]
impl Neighbours {
    /// Index `n × d` features.
    #[wasm_bindgen(constructor)]
    pub fn new(x: &[f32], n: usize, d: usize) -> Result<Neighbours, JsError> {
        check_matrix(x, n, d)?;
        let (_, unit) = centred_unit_rows(x, d);
        let normed = unit.into_iter().map(|v| v as f32).collect();
        Ok(Self { normed, n, d })
    }

    /// The `k` most similar other rows to row `i`: `[index, similarity, index, similarity,
    /// …]` (indices as floats), most similar first.
    pub fn query(&self, i: usize, k: usize) -> Result<Vec<f32>, JsError> {
        if i >= self.n {
            return Err(JsError::new(&format!("row {i} of {}", self.n)));
        }
        let q = &self.normed[i * self.d..(i + 1) * self.d];
        let mut sims: Vec<(usize, f32)> = self
            .normed
            .chunks_exact(self.d)
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, r)| (j, r.iter().zip(q).map(|(a, b)| a * b).sum::<f32>()))
            .collect();
        let k = k.min(sims.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        sims.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        sims.truncate(k);
        sims.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(sims.into_iter().flat_map(|(j, s)| [j as f32, s]).collect())
    }
}

/// A fitted linear probe.
#[wasm_bindgen]
pub struct Probe {
    model: LinearModel,
    file: ProbeFile,
}

fn kind_of(name: &str) -> Result<ModelKind, JsError> {
    match name {
        // The CLI's names for the same probe (`--protocol linear`, `logreg`) are accepted too.
        "logistic" | "linear" | "logreg" | "" => Ok(ModelKind::Logistic),
        "svm" => Ok(ModelKind::Svm),
        other => Err(JsError::new(&format!(
            "probe kind {other:?}: use \"logistic\" or \"svm\""
        ))),
    }
}

/// Grouped, stratified k-fold cross-validation over `c_grid` (the shared solver, as the CLI):
/// returns JSON `{best_c, folds, scores: [{c, balanced_accuracy, accuracy, folds_used}],
/// widened: [C added], confusion: [[…]], oof_pred: [class or -1], accuracy,
/// balanced_accuracy}` where the last two are the out-of-fold scores at `best_c`. When the
/// best C is at an edge of the grid and beats its neighbour, up to two more C values beyond
/// it are tried (`widened`), so that the page never settles on the edge of its own grid.
#[allow(clippy::too_many_arguments)]
#[wasm_bindgen(js_name = probeCrossValidate)]
pub fn probe_cross_validate(
    x: &[f32],
    n: usize,
    d: usize,
    labels: &[u32],
    n_classes: usize,
    groups: Vec<String>,
    c_grid: &[f64],
    folds: usize,
    seed: u64,
    kind: &str,
) -> Result<String, JsError> {
    check_matrix(x, n, d)?;
    let mut cfg = GridConfig {
        kind: kind_of(kind)?,
        folds,
        seed,
        widen: 2,
        ..GridConfig::default()
    };
    if !c_grid.is_empty() {
        cfg.c_grid = c_grid.to_vec();
    }
    LAST_SEARCH.with(|last| last.borrow_mut().take());
    let r = grid_search_c(x, n, d, labels, n_classes, &groups, &cfg).map_err(js_err)?;
    let json = serde_json::json!({
        "best_c": r.best_c,
        "folds": r.folds,
        "scores": r.scores.iter().map(|s| serde_json::json!({
            "c": s.c,
            "balanced_accuracy": s.balanced_accuracy,
            "accuracy": s.accuracy,
            "folds_used": s.folds_used,
        })).collect::<Vec<_>>(),
        "widened": r.widened,
        "confusion": r.confusion.rows(),
        "accuracy": r.confusion.accuracy(),
        "balanced_accuracy": r.confusion.balanced_accuracy(),
        "oof_pred": r.oof_pred.iter().map(|p| p.map(i64::from).unwrap_or(-1)).collect::<Vec<_>>(),
    })
    .to_string();
    LAST_SEARCH.with(|last| *last.borrow_mut() = Some(r));
    Ok(json)
}

#[wasm_bindgen]
impl Probe {
    /// Fit on all labelled rows with regularisation `c`; `classes` names the labels. Right
    /// after `probeCrossValidate` on the same rows, at its best C, the fit reuses that
    /// search's principal axes (the same model, without their eigendecomposition).
    #[wasm_bindgen(constructor)]
    pub fn new(
        x: &[f32],
        n: usize,
        d: usize,
        labels: &[u32],
        classes: Vec<String>,
        c: f64,
        kind: &str,
    ) -> Result<Probe, JsError> {
        check_matrix(x, n, d)?;
        let kind = kind_of(kind)?;
        let search = LAST_SEARCH.with(|last| last.borrow_mut().take());
        let model = match search {
            Some(search) if search.best_c == c && search.kind == kind => {
                search.fit_best(x, n, d, labels, classes.len())
            }
            _ => fit_linear(kind, c, x, n, d, labels, classes.len()),
        }
        .map_err(js_err)?;
        let file = ProbeFile::new(&model, classes, c).map_err(js_err)?;
        Ok(Self { model, file })
    }

    /// Class probabilities (logistic) or decision values (SVM), `n × width` row-major, where
    /// width is the number of classes (or 1 for a two-class SVM).
    pub fn scores(&self, x: &[f32], n: usize) -> Result<Vec<f64>, JsError> {
        match self.model.kind {
            ModelKind::Logistic => self.model.predict_proba(x, n),
            ModelKind::Svm => self.model.decision_function(x, n),
        }
        .map_err(js_err)
    }

    /// Predicted classes.
    pub fn predict(&self, x: &[f32], n: usize) -> Result<Vec<u32>, JsError> {
        self.model.predict(x, n).map_err(js_err)
    }

    /// The probe file (`mtpath-probe/1` JSON) that `mtpath predict` applies natively.
    /// `card_json` is the feature model's `cardJson()`; the CV numbers are recorded as given.
    #[allow(clippy::too_many_arguments)]
    #[wasm_bindgen(js_name = toJson)]
    pub fn to_json(
        &self,
        card_json: &str,
        model_sha256: Option<String>,
        cv_folds: usize,
        cv_balanced_accuracy: f64,
        cv_accuracy: f64,
        n_train: usize,
    ) -> Result<String, JsError> {
        let card: serde_json::Value = serde_json::from_str(card_json)
            .map_err(|e| JsError::new(&format!("model card: {e}")))?;
        let mut file = self.file.clone();
        file.features = Some(FeatureSource {
            architecture: card["architecture"].as_str().unwrap_or("").to_string(),
            feature_dim: self.model.n_features,
            input_size: card["input_size"].as_u64().unwrap_or(0) as u32,
            // `resize_shorter` as the model card names it; `resize` from older pages.
            resize: card["resize_shorter"]
                .as_u64()
                .or_else(|| card["resize"].as_u64())
                .unwrap_or(0) as u32,
            model_sha256,
            // The page adds its evaluation transform to the card it passes.
            transform: card["transform"].as_str().map(str::to_string),
        });
        if cv_folds > 0 {
            file.cv = Some(CvSummary {
                folds: cv_folds,
                balanced_accuracy: cv_balanced_accuracy,
                accuracy: cv_accuracy,
                n_train,
            });
        }
        file.to_json().map_err(js_err)
    }
}

/// Starts the pool of `n` threads one tile's convolutions are split over (a Promise; call it
/// once, after `init`, before any extraction). Only in the threaded module (`pkg-threads`,
/// built with atomics), which needs a cross-origin isolated page (SharedArrayBuffer).
#[cfg(feature = "threads")]
pub use wasm_bindgen_rayon::init_thread_pool;

/// Whether this module was built with threads (shared memory, `initThreadPool`).
#[wasm_bindgen]
pub fn threaded() -> bool {
    cfg!(target_feature = "atomics")
}

/// The extensions (lower case, no dot) of the image files the decoder reads: the page accepts
/// exactly these.
#[wasm_bindgen(js_name = imageExtensions)]
pub fn image_extensions() -> Vec<String> {
    mtpath_shared::preprocess::IMAGE_EXTENSIONS
        .iter()
        .map(|e| e.to_string())
        .collect()
}

/// A safetensors file holding `features` (float32 `n × d`), with `images` (a JSON list of
/// names) and any extra string entries of `metadata_json` (an object) in its metadata — the
/// layout `mtpath features` writes ([`mtpath_shared::features_file`]).
#[wasm_bindgen(js_name = featuresSafetensors)]
pub fn features_safetensors(
    x: &[f32],
    n: usize,
    d: usize,
    names: Vec<String>,
    metadata_json: &str,
) -> Result<Vec<u8>, JsError> {
    check_matrix(x, n, d)?;
    if names.len() != n {
        return Err(JsError::new(&format!("{} names for {n} rows", names.len())));
    }
    let mut file = FeaturesFile::new(x.to_vec(), n, d, names).map_err(js_err)?;
    if !metadata_json.is_empty() {
        let extra: serde_json::Map<String, serde_json::Value> = serde_json::from_str(metadata_json)
            .map_err(|e| JsError::new(&format!("metadata: {e}")))?;
        for (k, v) in extra {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            file = file.with(&k, s);
        }
    }
    file.to_bytes().map_err(js_err)
}

/// A slide (`File` or `Blob`) read in a worker: `Blob.slice` and `FileReaderSync`, so only the
/// directories and the tiles needed ever cross into memory.
struct BlobSource {
    blob: web_sys::Blob,
    reader: web_sys::FileReaderSync,
}

impl mtpath_shared::slide::ByteSource for BlobSource {
    fn len(&self) -> u64 {
        self.blob.size() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let fail = |e: JsValue| std::io::Error::other(format!("{e:?}"));
        let end = offset + buf.len() as u64;
        if end > self.len() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let piece = self
            .blob
            .slice_with_f64_and_f64(offset as f64, end as f64)
            .map_err(fail)?;
        let buffer = self.reader.read_as_array_buffer(&piece).map_err(fail)?;
        let bytes = js_sys::Uint8Array::new(&buffer);
        if bytes.length() as usize != buf.len() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        bytes.copy_to(buf);
        Ok(())
    }
}

/// How a slide is cut, from the page: `{ "size": 224, "mpp": 0.5 | null, "level": null,
/// "minTissue": 0.5, "slideMpp": null, "thumbnail": null }` (null: the default side, as the
/// command line's).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlideCut {
    size: u32,
    mpp: Option<f64>,
    level: Option<usize>,
    min_tissue: f32,
    slide_mpp: Option<f64>,
    thumbnail: Option<u32>,
}

/// An open slide in a worker, with its tile plan once [`SlideReader::plan`] has run.
#[wasm_bindgen]
pub struct SlideReader {
    slide: mtpath_shared::slide::Slide,
    plan: Option<mtpath_shared::slide::TilePlan>,
    thumb: Option<(image::RgbImage, f64)>,
    mask: Option<mtpath_shared::slide::TissueMask>,
}

fn rgba(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 3 * 4);
    for p in img.pixels() {
        out.extend_from_slice(&[p[0], p[1], p[2], 255]);
    }
    out
}

#[wasm_bindgen]
impl SlideReader {
    /// Open `file` (a worker's `File`); `name` names it in messages. Only the directories are
    /// read.
    #[wasm_bindgen(constructor)]
    pub fn new(file: web_sys::Blob, name: &str) -> Result<SlideReader, JsError> {
        let reader = web_sys::FileReaderSync::new()
            .map_err(|_| JsError::new("slides are read in a worker (FileReaderSync)"))?;
        let source = BlobSource { blob: file, reader };
        let slide = mtpath_shared::slide::Slide::from_source(name, Box::new(source))
            .map_err(|e| JsError::new(&e.to_string()))?;
        // A worker's share of memory: decoded tiles kept for neighbouring reads.
        slide.set_cache_bytes(64 << 20);
        Ok(SlideReader {
            slide,
            plan: None,
            thumb: None,
            mask: None,
        })
    }

    /// Plan the tiles of `cut` (JSON, see `SlideCut`). With `detect`, the thumbnail is read and
    /// tissue found, and only tiles with enough tissue are kept; without, every grid tile is
    /// planned (a worker that only reads the tiles another one chose). Returns the plan as
    /// JSON: the slide's format, size, levels and MPP, the tiles' MPP, level-0 footprint and
    /// read level, the grid, `tiles` as `[x, y, tissue]`, and the thumbnail's size and scale.
    pub fn plan(&mut self, cut: &str, detect: bool) -> Result<String, JsError> {
        use mtpath_shared::slide::{detect_tissue, plan_tiles, Magnification, TileSpec};
        let cut: SlideCut =
            serde_json::from_str(cut).map_err(|e| JsError::new(&format!("slide cut: {e}")))?;
        if let Some(m) = cut.slide_mpp {
            self.slide.set_mpp(m);
        }
        let at = match (cut.mpp, cut.level) {
            (Some(m), _) => Magnification::Mpp(m),
            (None, Some(l)) => Magnification::Level(l),
            (None, None) if self.slide.mpp().is_some() => Magnification::Mpp(0.5),
            (None, None) => Magnification::Level(0),
        };
        let spec = TileSpec {
            size: cut.size,
            at,
            min_tissue: if detect { cut.min_tissue } else { 0.0 },
        };
        let err = |e: mtpath_shared::slide::SlideError| JsError::new(&e.to_string());
        if detect {
            let (thumb, scale) = self
                .slide
                .thumbnail(
                    cut.thumbnail
                        .unwrap_or(mtpath_shared::slide::DEFAULT_THUMBNAIL_SIDE),
                )
                .map_err(err)?;
            let mask = detect_tissue(&thumb, scale);
            self.plan = Some(plan_tiles(&self.slide, spec, Some(&mask)).map_err(err)?);
            self.thumb = Some((thumb, scale));
            self.mask = Some(mask);
        } else {
            self.plan = Some(plan_tiles(&self.slide, spec, None).map_err(err)?);
        }
        let plan = self.plan.as_ref().ok_or_else(|| JsError::new("no plan"))?;
        let levels: Vec<_> = (self.slide.levels().iter())
            .map(|l| serde_json::json!([l.width, l.height, l.downsample, l.compression]))
            .collect();
        Ok(serde_json::json!({
            "format": self.slide.format().as_str(),
            "dimensions": self.slide.dimensions(),
            "levels": levels,
            "slideMpp": self.slide.mpp(),
            "tileMpp": plan.mpp,
            "footprint": plan.footprint,
            "readLevel": plan.read_level,
            "columns": plan.columns,
            "rows": plan.rows,
            "size": plan.spec.size,
            "coverage": self.mask.as_ref().map(|m| m.coverage()),
            "thumbnail": self.thumb.as_ref().map(|(t, s)| serde_json::json!([t.width(), t.height(), s])),
            "tiles": if detect {
                plan.tiles.iter().map(|t| serde_json::json!([t.x, t.y, t.tissue])).collect::<Vec<_>>()
            } else {
                Vec::new()
            },
        })
        .to_string())
    }

    /// The thumbnail (RGBA) with the tissue mask and the planned tiles drawn over it.
    pub fn overview(&self) -> Result<Vec<u8>, JsError> {
        match (&self.thumb, &self.mask, &self.plan) {
            (Some((thumb, _)), Some(mask), Some(plan)) => {
                Ok(rgba(&mtpath_shared::slide::render_tiles(thumb, mask, plan)))
            }
            _ => Err(JsError::new("plan the slide with tissue detection first")),
        }
    }

    /// The plain thumbnail (RGBA).
    pub fn thumbnail(&self) -> Result<Vec<u8>, JsError> {
        self.thumb
            .as_ref()
            .map(|(t, _)| rgba(t))
            .ok_or_else(|| JsError::new("plan the slide with tissue detection first"))
    }

    /// The tile at level-0 (`x`, `y`) of the plan, `size` × `size`, RGB.
    fn tile_rgb(&self, x: f64, y: f64) -> Result<image::RgbImage, JsError> {
        let plan = self
            .plan
            .as_ref()
            .ok_or_else(|| JsError::new("plan the slide first"))?;
        let at = mtpath_shared::slide::TilePosition {
            col: 0,
            row: 0,
            x: x as u64,
            y: y as u64,
            tissue: 1.0,
        };
        self.slide
            .read_tile(plan, &at)
            .map_err(|e| JsError::new(&e.to_string()))
    }

    /// The tile at level-0 (`x`, `y`), RGBA, for a closer look.
    pub fn tile(&self, x: f64, y: f64) -> Result<Vec<u8>, JsError> {
        Ok(rgba(&self.tile_rgb(x, y)?))
    }
}

#[wasm_bindgen]
impl FeatureModel {
    /// Features of the tile at level-0 (`x`, `y`) of `slide`'s plan: the same pixels and
    /// preprocessing as `mtpath features --slide`.
    #[wasm_bindgen(js_name = extractSlideTile)]
    pub fn extract_slide_tile(
        &self,
        slide: &SlideReader,
        x: f64,
        y: f64,
    ) -> Result<Vec<f32>, JsError> {
        let tile = slide.tile_rgb(x, y)?;
        on_pool(|| self.inner.extract_rgb(&tile)).map_err(js_err)
    }
}

/// A heatmap over a slide's thumbnail (RGBA, `width` × `height`, `scale` level-0 pixels per
/// thumbnail pixel) for tiles at level-0 `xy` (x0, y0, x1, y1, ...) of side `footprint`:
/// with `classes` empty, `values` are one class's probabilities (blue to red); otherwise each
/// tile takes its class's colour, more opaque with its confidence in `values`. RGBA out.
// Flat typed arrays and numbers are what crosses to JavaScript without copies through JSON.
#[allow(clippy::too_many_arguments)]
#[wasm_bindgen(js_name = slideHeatmap)]
pub fn slide_heatmap(
    thumbnail: &[u8],
    width: u32,
    height: u32,
    scale: f64,
    footprint: f64,
    xy: &[f64],
    values: &[f32],
    classes: &[u32],
) -> Result<Vec<u8>, JsError> {
    use mtpath_shared::slide::{
        render_heatmap, Magnification, TilePlan, TilePosition, TileSpec, TileValues,
    };
    let n = values.len();
    if thumbnail.len() != (width * height * 4) as usize
        || xy.len() != 2 * n
        || (!classes.is_empty() && classes.len() != n)
    {
        return Err(JsError::new("heatmap: sizes do not match"));
    }
    let rgb: Vec<u8> = thumbnail
        .chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    let thumb = image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| JsError::new("heatmap: bad thumbnail"))?;
    let plan = TilePlan {
        spec: TileSpec {
            size: 1,
            at: Magnification::Level(0),
            min_tissue: 0.0,
        },
        footprint,
        read_level: 0,
        read_downsample: 1.0,
        mpp: None,
        columns: 0,
        rows: 0,
        tiles: xy
            .chunks_exact(2)
            .map(|p| TilePosition {
                col: 0,
                row: 0,
                x: p[0] as u64,
                y: p[1] as u64,
                tissue: 1.0,
            })
            .collect(),
    };
    let predicted: Vec<usize> = classes.iter().map(|&c| c as usize).collect();
    let tile_values = if classes.is_empty() {
        TileValues::Probability(values)
    } else {
        TileValues::Classes {
            predicted: &predicted,
            confidence: values,
        }
    };
    Ok(rgba(&render_heatmap(&thumb, scale, &plan, tile_values)))
}

/// The colour of class `i` on slide heatmaps, as `#rrggbb`.
#[wasm_bindgen(js_name = classColour)]
pub fn class_colour(i: usize) -> String {
    let [r, g, b] = mtpath_shared::slide::class_colour(i);
    format!("#{r:02x}{g:02x}{b:02x}")
}
