//! WebAssembly bindings over `mtpath-shared`: the browser explorer's entry points.
//!
//! Everything runs on the user's machine; nothing here performs I/O beyond the bytes passed in.

use candle_core::Device;
use mtpath_shared::features::FeatureExtractor;
use wasm_bindgen::prelude::*;

fn js_err(e: mtpath_shared::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// A model loaded once and used to embed many images.
#[wasm_bindgen]
pub struct FeatureModel {
    inner: FeatureExtractor,
}

#[wasm_bindgen]
impl FeatureModel {
    /// Load safetensors weights (mtpath checkpoint, export, or a torchvision state dict).
    #[wasm_bindgen(constructor)]
    pub fn new(weights: &[u8]) -> Result<FeatureModel, JsError> {
        let inner = FeatureExtractor::from_safetensors_bytes(weights, "model", &Device::Cpu)
            .map_err(js_err)?;
        Ok(Self { inner })
    }

    /// Architecture name, e.g. `resnet50`.
    #[wasm_bindgen(getter)]
    pub fn architecture(&self) -> String {
        self.inner.metadata().architecture.name().to_string()
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

    /// Features of one encoded image (JPEG, PNG or TIFF bytes).
    pub fn extract(&self, image: &[u8]) -> Result<Vec<f32>, JsError> {
        self.inner.extract_bytes(image).map_err(js_err)
    }
}

/// One-shot: load `weights` (safetensors bytes) and return the features of `image`.
#[wasm_bindgen]
pub fn extract_features(weights: &[u8], image: &[u8]) -> Result<Vec<f32>, JsError> {
    FeatureModel::new(weights)?.extract(image)
}
