//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the model crate.
///
/// Variants that concern a file name it, and say what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A file could not be read or written. The OS error is part of the message, not a
    /// separate source, so that error chains do not print it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// A weights file is malformed, truncated, or of a format we do not read.
    #[error("{path}: {message}")]
    BadWeights { path: String, message: String },

    /// Weights do not fit the architecture they are loaded into.
    #[error("{path}: {message}")]
    WeightsMismatch { path: String, message: String },

    /// An image could not be decoded or preprocessed.
    #[error("{0}")]
    Image(String),

    /// A whole-slide image could not be read.
    #[error(transparent)]
    Slide(#[from] crate::slide::SlideError),

    /// A caller passed an invalid argument or configuration.
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for results carrying [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Build an [`Error::Invalid`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
