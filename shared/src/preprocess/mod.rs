//! Image preprocessing, numerically equal to torchvision's standard evaluation transform on
//! PIL images:
//!
//! ```text
//! Image.open(path).convert("RGB")
//!   -> Resize(256)        (PIL bilinear, antialiased)
//!   -> CenterCrop(224)
//!   -> ToTensor()         (/255)
//!   -> Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
//! ```
//!
//! The resize is a line-by-line port of Pillow's `ImagingResample` (`libImaging/Resample.c`):
//! separable convolution with a triangle filter whose support grows with the downscale factor,
//! horizontal pass first into an 8-bit intermediate, then the vertical pass, with Pillow's
//! 22-bit fixed-point coefficients and rounding. It is bit-exact with Pillow for 8-bit RGB.
//! (`fast_image_resize`'s convolution follows Pillow-SIMD instead, which stores coefficients as
//! `i16` with a data-dependent precision and therefore differs from Pillow by one level on
//! some pixels.)
//!
//! Decoding: baseline (sequential Huffman, 8-bit) grayscale and YCbCr JPEGs go through our
//! own decoder (module `jpeg`), a port of libjpeg-turbo's default decompression path (accurate
//! integer IDCT, fancy chroma upsampling, fixed-point YCbCr conversion), so they decode to
//! exactly the pixels Pillow gets from libjpeg-turbo. Everything else goes through the `image`
//! crate: PNG and TIFF (which decode exactly as Pillow does), and the JPEG variants our
//! decoder leaves alone (progressive, arithmetic, 12-bit, lossless, unusual sampling
//! ratios), which `zune-jpeg` decodes within a few levels of libjpeg-turbo.
//! The whole transform is therefore bit-exact with torchvision for PNG, TIFF and baseline
//! JPEG.
//!
//! Everything here is pure Rust and builds for `wasm32-unknown-unknown`.

mod decode;
mod extensions;
pub(crate) mod jpeg;
mod resize;
#[cfg(test)]
mod tests;
mod transform;

pub(crate) use decode::decode_tiff_jpeg;
pub use decode::{decode_image, load_image, MAX_IMAGE_BYTES, MAX_IMAGE_SIDE};
pub use extensions::{has_image_extension, IMAGE_EXTENSIONS};
pub use resize::{resize_exact, resize_shorter_side, resized_size};
pub use transform::{
    center_crop, normalize_chw, preprocess_bytes, preprocess_file, preprocess_file_views,
    preprocess_rgb, preprocess_views, EvalTransform, PreprocessConfig, GRID_MAX_PER_SIDE,
    IMAGENET_MEAN, IMAGENET_STD,
};
