//! Files under the served folder only: a tower-http [`Backend`] that refuses hidden names and
//! paths (symlinks included) that resolve outside the folder.
//!
//! `ServeDir` already refuses `..` and absolute parts in the URL; this backend checks the path
//! it then opens, and so also every precompressed variant (`NAME.br`, `NAME.gz`) it tries.

use std::future::Future;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tower_http::services::fs::{Backend, File};

/// A file-system backend confined to one folder.
#[derive(Clone, Debug)]
pub struct Confined {
    root: Arc<PathBuf>,
}

impl Confined {
    /// Confine to `root` (resolved now, so a symlinked folder serves its target).
    pub fn new(root: &Path) -> io::Result<Self> {
        Ok(Self {
            root: Arc::new(std::fs::canonicalize(root)?),
        })
    }

    /// The folder, with symlinks resolved: `ServeDir` must be built on this path.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn refused() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "outside the served folder")
}

/// True unless every part of `rel` is a plain, non-hidden name.
fn hidden_or_escaping(rel: &Path) -> bool {
    rel.components().any(|c| match c {
        Component::Normal(name) => name.to_string_lossy().starts_with('.'),
        _ => true,
    })
}

/// `path` (a path under `root`) with symlinks resolved, if neither it nor what it resolves to
/// has a hidden part below `root`, and it resolves inside `root`; else a `NotFound` error.
/// `root` must already be canonical.
pub fn confine(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let rel = path.strip_prefix(root).map_err(|_| refused())?;
    if hidden_or_escaping(rel) {
        return Err(refused());
    }
    let real = std::fs::canonicalize(path)?;
    match real.strip_prefix(root) {
        Ok(real_rel) if !hidden_or_escaping(real_rel) => Ok(real),
        _ => Err(refused()),
    }
}

/// Runs a blocking file-system call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

impl Backend for Confined {
    type File = ConfinedFile;
    type Metadata = std::fs::Metadata;
    type OpenFuture = BoxFuture<ConfinedFile>;
    type MetadataFuture = BoxFuture<std::fs::Metadata>;

    fn open(&self, path: PathBuf) -> Self::OpenFuture {
        let root = Arc::clone(&self.root);
        Box::pin(async move {
            let file = blocking(move || std::fs::File::open(confine(&root, &path)?)).await?;
            Ok(ConfinedFile(tokio::fs::File::from_std(file)))
        })
    }

    fn metadata(&self, path: PathBuf) -> Self::MetadataFuture {
        let root = Arc::clone(&self.root);
        Box::pin(blocking(move || std::fs::metadata(confine(&root, &path)?)))
    }
}

/// A file opened through [`Confined`].
#[derive(Debug)]
pub struct ConfinedFile(tokio::fs::File);

impl AsyncRead for ConfinedFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncSeek for ConfinedFile {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.0).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.0).poll_complete(cx)
    }
}

impl File for ConfinedFile {
    type Metadata = std::fs::Metadata;
    type MetadataFuture<'a> =
        Pin<Box<dyn Future<Output = io::Result<std::fs::Metadata>> + Send + 'a>>;

    fn metadata(&self) -> Self::MetadataFuture<'_> {
        Box::pin(self.0.metadata())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confine_refuses_escapes_and_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let root = base.join("www");
        std::fs::create_dir_all(root.join("pkg")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("pkg/a.js"), "a").unwrap();
        std::fs::write(root.join("a b.js"), "a").unwrap();
        std::fs::write(root.join(".git/config"), "secret").unwrap();
        std::fs::write(base.join("secret.txt"), "secret").unwrap();

        assert_eq!(
            confine(&root, &root.join("pkg/a.js")).unwrap(),
            root.join("pkg/a.js")
        );
        assert_eq!(
            confine(&root, &root.join("a b.js")).unwrap(),
            root.join("a b.js")
        );
        assert!(confine(&root, &root).is_ok());
        for bad in [
            root.join("../secret.txt"),
            root.join("pkg/../../secret.txt"),
            root.join(".git/config"),
            base.join("secret.txt"),
            PathBuf::from("/etc/passwd"),
        ] {
            let err = confine(&root, &bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{}", bad.display());
        }
        assert_eq!(
            confine(&root, &root.join("missing.js")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[cfg(unix)]
    #[test]
    fn confine_follows_symlinks_only_inside_the_folder() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let root = base.join("www");
        std::fs::create_dir_all(root.join(".hidden")).unwrap();
        std::fs::write(root.join("real.js"), "a").unwrap();
        std::fs::write(root.join(".hidden/h.js"), "h").unwrap();
        std::fs::write(base.join("secret.txt"), "secret").unwrap();
        symlink(root.join("real.js"), root.join("alias.js")).unwrap();
        symlink(base.join("secret.txt"), root.join("out.txt")).unwrap();
        symlink(&base, root.join("up")).unwrap();
        symlink(root.join(".hidden/h.js"), root.join("to-hidden.js")).unwrap();

        assert_eq!(
            confine(&root, &root.join("alias.js")).unwrap(),
            root.join("real.js")
        );
        for bad in ["out.txt", "up/secret.txt", "to-hidden.js"] {
            assert!(confine(&root, &root.join(bad)).is_err(), "{bad}");
        }
    }
}
