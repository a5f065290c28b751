//! Files: dropping a file's pages from the page cache, so that a
//! container's working set does not keep what the pool read or wrote.

#![allow(clippy::disallowed_methods)] // with `mem`, the modules allowed to
// make these calls (`clippy.toml`).

/// Drops the page cache of `file`'s pages (all of them), after flushing
/// them if `written`: `fdatasync`, then `posix_fadvise(POSIX_FADV_DONTNEED)`.
/// The file's data is untouched; only the kernel's cached copy goes, so a
/// container's working set does not keep it as active page cache.
#[cfg(unix)]
pub(crate) fn drop_page_cache(file: &std::fs::File, written: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if written {
        file.sync_data()?;
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        // SAFETY: a valid open descriptor borrowed from `file`; offset 0 and
        // length 0 mean the whole file; the call has no memory effects.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let _ = file.as_raw_fd();
    Ok(())
}

/// Off Unix there is no portable way to drop a file's cached pages.
#[cfg(not(unix))]
pub(crate) fn drop_page_cache(file: &std::fs::File, written: bool) -> std::io::Result<()> {
    if written {
        file.sync_data()?;
    }
    Ok(())
}
