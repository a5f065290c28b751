//! The OS layer: every call that gets memory from the system, gives it
//! back, or tells the kernel about pages, and nothing else.
//!
//! The rest of the crate asks this module for blocks and never names
//! `mmap`, `alloc` or `madvise` (clippy's `disallowed-methods` in
//! `clippy.toml` keeps it that way).
//!
//! # Contract
//!
//! A *block* is `size` (non-zero) bytes from [`alloc`]: mapped straight from
//! the OS when [`is_mapped`]`(size)` (Unix, 128 KiB and up), otherwise from
//! the global allocator with `u8`'s layout, the layout `Vec<u8>` uses. A block
//! is freed exactly once, by [`free`] with the same `size`; [`remap`] turns a
//! mapped block of one size into a mapped block of another, keeping its
//! physical pages. Nothing here tracks ownership: the callers do.

#![allow(clippy::disallowed_methods)] // this is the one module allowed to

use std::alloc::{Layout, alloc as global_alloc, dealloc};
use std::ptr::NonNull;

use crate::Error;

/// Blocks of at least this many bytes are mapped straight from the OS on
/// Unix, so freeing one hands its pages back at once (glibc would keep them
/// in an arena once its dynamic mmap threshold has risen).
pub(crate) const MAP_THRESHOLD: usize = 128 << 10;

/// The page size the kernel maps in (4 KiB here; only used to round).
pub(crate) const PAGE: usize = 4096;

/// Whether blocks of `size` bytes are mapped straight from the OS.
#[inline]
pub(crate) fn is_mapped(size: usize) -> bool {
    cfg!(all(unix, not(miri))) && size >= MAP_THRESHOLD
}

/// Allocates a block of `size` (non-zero) uninitialised bytes.
pub(crate) fn alloc(size: usize) -> Result<NonNull<u8>, Error> {
    debug_assert!(size > 0);
    let layout =
        Layout::array::<u8>(size).map_err(|_| Error::CapacityOverflow { requested: size })?;
    #[cfg(all(unix, not(miri)))]
    if is_mapped(size) {
        // SAFETY: a fresh private anonymous mapping: no address hint, no file
        // descriptor; the kernel checks the length.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::AllocFailed { size });
        }
        return NonNull::new(ptr.cast::<u8>()).ok_or(Error::AllocFailed { size });
    }
    // SAFETY: `layout` has a non-zero size (every class and every oversize
    // request is at least one byte).
    let ptr = unsafe { global_alloc(layout) };
    NonNull::new(ptr).ok_or(Error::AllocFailed { size })
}

/// Frees a block. Returns whether its pages went straight back to the OS
/// (a mapped block).
///
/// # Safety
///
/// `ptr` is a block of exactly `size` bytes (from [`alloc`] or [`remap`])
/// that the caller owns, and nothing uses it afterwards.
pub(crate) unsafe fn free(ptr: NonNull<u8>, size: usize) -> bool {
    #[cfg(all(unix, not(miri)))]
    if is_mapped(size) {
        // SAFETY: by the caller's promise, a mapping of exactly `size` bytes
        // made here, unused from now on.
        let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), size) };
        debug_assert_eq!(rc, 0, "munmap of a block we mapped");
        return true;
    }
    // SAFETY: by the caller's promise, allocated with exactly this layout,
    // which `alloc` already checked to be valid.
    unsafe { dealloc(ptr.as_ptr(), Layout::from_size_align_unchecked(size, 1)) };
    false
}

/// Resizes a mapped block in place or by moving its pages (`mremap`), so
/// the physical pages it has keep serving: shrinking hands the tail back,
/// growing faults only the extension. `None` leaves the block as it was
/// (other platforms, or the kernel refused).
///
/// # Safety
///
/// `ptr` is a block of exactly `old` bytes that the caller owns, and both
/// `old` and `new` are mapped sizes ([`is_mapped`]). On `Some`, the old
/// pointer is gone and the new one is a block of `new` bytes whose first
/// `min(old, new)` bytes are the old contents.
#[allow(unused_variables)]
pub(crate) unsafe fn remap(ptr: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
    debug_assert!(is_mapped(old) && is_mapped(new));
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: by the caller's promise, `ptr` is a private anonymous
        // mapping of `old` bytes that nothing else uses; MREMAP_MAYMOVE lets
        // the kernel move it, and on failure it is left untouched.
        let moved = unsafe { libc::mremap(ptr.as_ptr().cast(), old, new, libc::MREMAP_MAYMOVE) };
        if moved != libc::MAP_FAILED {
            return NonNull::new(moved.cast::<u8>());
        }
    }
    None
}

/// Hands the pages of `[ptr + from, ptr + size)` (rounded inwards to whole
/// pages) back to the OS while the block stays mapped; they read as zeros
/// and fault afresh when touched again. Returns the bytes handed back.
///
/// # Safety
///
/// `ptr` is a mapped block of `size` bytes that the caller owns, and nothing
/// in `[from, size)` needs to keep its contents.
#[allow(unused_variables)]
pub(crate) unsafe fn discard_tail(ptr: NonNull<u8>, size: usize, from: usize) -> usize {
    debug_assert!(is_mapped(size) && from <= size);
    #[cfg(all(unix, not(miri)))]
    {
        let start = from.next_multiple_of(PAGE);
        if start >= size {
            return 0;
        }
        let len = size - start;
        // SAFETY: `[start, size)` lies inside the caller's mapping; the
        // caller does not need its contents; MADV_DONTNEED on a private
        // anonymous mapping only drops pages (they read back as zeros).
        let rc = unsafe { libc::madvise(ptr.as_ptr().add(start).cast(), len, libc::MADV_DONTNEED) };
        if rc == 0 {
            return len;
        }
    }
    0
}

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
