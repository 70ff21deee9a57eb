//! The decoder's shared vocabulary: its error type, the frame and component records the
//! stages fill in, and the zigzag order.

/// Why this decoder did not produce an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JpegError {
    /// Valid JPEG (as far as we know) that this decoder does not handle.
    Unsupported(String),
    /// Malformed data.
    Corrupt(String),
}

pub(super) type Res<T> = std::result::Result<T, JpegError>;

pub(super) fn corrupt<T>(msg: impl Into<String>) -> Res<T> {
    Err(JpegError::Corrupt(msg.into()))
}

pub(super) fn unsupported<T>(msg: impl Into<String>) -> Res<T> {
    Err(JpegError::Unsupported(msg.into()))
}

/// Zigzag index -> natural (row-major) index, with libjpeg's 16 extra entries of 63 so that a
/// corrupt run length cannot index out of the block.
pub(super) const NATURAL_ORDER: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

pub(super) struct Component {
    pub(super) id: u8,
    pub(super) h: usize,
    pub(super) v: usize,
    pub(super) tq: usize,
    /// Quantisation table latched when the component first appears in a scan.
    pub(super) quant: Option<[u16; 64]>,
    /// Blocks per row / column in the coefficient buffer (whole MCUs).
    pub(super) bw: usize,
    pub(super) bh: usize,
    /// Blocks actually coded in a non-interleaved scan.
    pub(super) cbw: usize,
    pub(super) cbh: usize,
    /// `downsampled_width` / `downsampled_height`.
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) coefs: Vec<i16>,
}

pub(super) struct Frame {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) hmax: usize,
    pub(super) vmax: usize,
    pub(super) mcux: usize,
    pub(super) mcuy: usize,
    pub(super) comps: Vec<Component>,
}
