//! The I/O adapters: reading streams into pooled chunks, writing output
//! into them, per-pipeline labels, files that leave no page cache behind,
//! and the chunk-fill plan the async and HTTP reads in `ext` share.

pub(crate) mod chunks;
pub(crate) mod label;
pub(crate) mod read;
pub(crate) mod writer;

pub use chunks::{Chunks, ChunksBody};
pub use label::{AdapterStats, Label, LabelStats, MAX_LABELS, OTHER_LABEL};
pub use read::ReadOptions;
pub use writer::PooledWriter;

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use bytes::Buf;

use crate::{PageCache, Pool};

// === impl Pool (files) ===

impl Pool {
    /// Reads a whole file into pooled chunks (its length is the hint), then
    /// drops the file's pages from the page cache (unless the pool was built
    /// with [`PageCache::Keep`]), so a container's working set does not keep
    /// them as active page cache. The file's data is untouched.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("tierpool-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let pool = tierpool::Pool::new();
    /// let path = dir.join("upload.bin");
    /// pool.write_file(&path, &b"spooled upload"[..])?;
    /// assert_eq!(pool.read_file(&path)?.to_vec(), b"spooled upload");
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Opening or reading the file, as [`read_to_end`](Self::read_to_end).
    /// Dropping the page cache is advice to the kernel: its failure is not
    /// an error.
    pub fn read_file<P: AsRef<Path>>(&self, path: P) -> io::Result<Chunks> {
        let file = File::open(path)?;
        let hint = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let chunks = self.read_with(&file, &ReadOptions::new().size_hint(hint))?;
        if self.page_cache() == PageCache::Drop {
            let _ = crate::sys::files::drop_page_cache(&file, false);
        }
        Ok(chunks)
    }

    /// Writes `data` to a new file (or truncates an existing one), flushes
    /// it to storage, and drops its pages from the page cache (unless the
    /// pool was built with [`PageCache::Keep`]). `data` is any
    /// [`bytes::Buf`]: a [`Chunks`], `Bytes`, a `&[u8]`.
    ///
    /// The flush (`fdatasync`) is what lets the kernel drop written pages
    /// at once; it costs one wait for the storage per file.
    ///
    /// # Errors
    ///
    /// Creating, writing or flushing the file.
    pub fn write_file<P: AsRef<Path>>(&self, path: P, mut data: impl Buf) -> io::Result<()> {
        let mut file = File::create(path)?;
        while data.has_remaining() {
            let mut slices = [io::IoSlice::new(&[]); 16];
            let n = data.chunks_vectored(&mut slices);
            let written = match file.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            data.advance(written);
        }
        match self.page_cache() {
            PageCache::Drop => crate::sys::files::drop_page_cache(&file, true)?,
            PageCache::Keep => file.flush()?,
        }
        Ok(())
    }
}
