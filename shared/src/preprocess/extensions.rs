//! The file extensions of the formats [`super::decode_image`] reads: one list for the CLI's
//! folder walks, the task pool and the browser's drop zone.

use std::path::Path;

/// Extensions (lower case, without the dot) of the JPEG, PNG and TIFF files the decoder reads.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "tif", "tiff"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_match_case_insensitively() {
        assert!(has_image_extension(Path::new("a/b.TIF")));
        assert!(has_image_extension(Path::new("x.jpeg")));
        assert!(!has_image_extension(Path::new("x.bmp")));
        assert!(!has_image_extension(Path::new("jpg")));
    }
}
