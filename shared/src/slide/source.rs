//! Random access to a slide's bytes: a slide is gigabytes, so only the directories and the
//! tiles that are needed are ever read.

#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;
use std::sync::Arc;

/// `Send + Sync` natively, where tiles are decoded on several threads; nothing on wasm32, where
/// a browser `File` (a JS object, bound to its worker) is the source.
#[cfg(not(target_arch = "wasm32"))]
pub trait ThreadSafe: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> ThreadSafe for T {}
/// `Send + Sync` natively, where tiles are decoded on several threads; nothing on wasm32, where
/// a browser `File` (a JS object, bound to its worker) is the source.
#[cfg(target_arch = "wasm32")]
pub trait ThreadSafe {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> ThreadSafe for T {}

/// Bytes that can be read at any offset (natively from several threads at once).
///
/// Natively a file (positioned reads, no shared cursor); in a browser worker a `File` read
/// through `Blob.slice` (the web crate implements it); in tests a buffer.
pub trait ByteSource: ThreadSafe {
    /// Total length in bytes.
    fn len(&self) -> u64;

    /// Whether the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `buf` with the bytes at `offset..offset + buf.len()`; an error if any lies past
    /// the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl ByteSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        read_from_slice(self, offset, buf)
    }
}

impl ByteSource for Arc<[u8]> {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        read_from_slice(self, offset, buf)
    }
}

fn read_from_slice(bytes: &[u8], offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    match start
        .checked_add(buf.len())
        .and_then(|end| bytes.get(start..end))
    {
        Some(src) => {
            buf.copy_from_slice(src);
            Ok(())
        }
        None => Err(std::io::ErrorKind::UnexpectedEof.into()),
    }
}

/// A slide file on disk, read with positioned reads (`pread`), so threads never contend for
/// a cursor.
#[cfg(not(target_arch = "wasm32"))]
pub struct FileSource {
    file: std::fs::File,
    len: u64,
    #[cfg(not(unix))]
    cursor: std::sync::Mutex<()>,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSource {
    /// Open `path` for reading.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            #[cfg(not(unix))]
            cursor: std::sync::Mutex::new(()),
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ByteSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    #[cfg(unix)]
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset)
    }

    #[cfg(not(unix))]
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let _guard = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_reads_in_range_and_refuses_past_the_end() {
        let src: Vec<u8> = (0..10).collect();
        let mut buf = [0u8; 3];
        src.read_at(7, &mut buf).unwrap();
        assert_eq!(buf, [7, 8, 9]);
        assert!(src.read_at(8, &mut buf).is_err());
        assert!(src.read_at(u64::MAX, &mut buf).is_err());
    }
}
