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
//! is freed exactly once, by [`free`] with the same `size`, or, mapped, page
//! by page with [`unmap`]. [`move_pages`] and [`grow_pages`] move physical
//! pages between mappings (`mremap`), which is how the large tier
//! (`tier::large`) reuses idle pages for a block of any size. Nothing here
//! tracks ownership: the callers do.

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
/// `ptr` is a block of exactly `size` bytes from [`alloc`]
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

/// The bytes a block of `size` occupies: whole pages when it is mapped
/// (the kernel maps and unmaps whole pages), `size` itself otherwise.
#[inline]
pub(crate) fn span(size: usize) -> usize {
    if is_mapped(size) {
        size.next_multiple_of(PAGE)
    } else {
        size
    }
}

/// Faults in every page of `[ptr, ptr + len)` now, writable
/// (`madvise(MADV_POPULATE_WRITE)`, Linux 5.14; before that, one write per
/// page), so the range is resident from the start.
///
/// The large tier does this to every page it maps: what it holds is then
/// resident, so the pool's byte count is the memory it really uses, and
/// admission's estimate (the last sample plus what the pool grew by since)
/// cannot miss pages that were mapped but untouched at the sample and
/// written after it.
///
/// # Safety
///
/// `ptr` page-aligned, `len` a multiple of [`PAGE`], the range lies in
/// writable mappings made here that the caller owns, and nothing in it
/// needs its contents (a page written here may read as zero or not).
#[allow(unused_variables)]
pub(crate) unsafe fn populate(ptr: NonNull<u8>, len: usize) {
    debug_assert!(ptr.as_ptr() as usize % PAGE == 0 && len % PAGE == 0);
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: by the caller's promise, a range of our own writable
        // private anonymous mappings; MADV_POPULATE_WRITE only faults the
        // pages in (contents unchanged).
        let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_POPULATE_WRITE) };
        if rc == 0 {
            return;
        }
    }
    #[cfg(all(unix, not(miri)))]
    for page in (0..len).step_by(PAGE) {
        // SAFETY: inside the caller's writable range, whose contents the
        // caller does not need.
        unsafe { ptr.as_ptr().add(page).write_volatile(0) };
    }
}

/// Whether the kernel can move pages between mappings ([`move_pages`],
/// [`grow_pages`]): Linux only.
pub(crate) const CAN_MOVE_PAGES: bool = cfg!(all(target_os = "linux", not(miri)));

/// Unmaps `[ptr, ptr + len)`: whole pages of mappings made here (by
/// [`alloc`], [`grow_pages`] or [`move_pages`]), which may span several of
/// them.
///
/// # Safety
///
/// `ptr` is page-aligned, `len` a non-zero multiple of [`PAGE`], every page
/// of the range is mapped by this module, the caller owns them all, and
/// nothing uses them afterwards.
#[allow(unused_variables)]
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    debug_assert!(ptr.as_ptr() as usize % PAGE == 0 && len % PAGE == 0 && len > 0);
    #[cfg(all(unix, not(miri)))]
    {
        // SAFETY: by the caller's promise, pages of our own mappings that
        // nothing uses any more.
        let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
        debug_assert_eq!(rc, 0, "munmap of pages we mapped");
    }
}

/// Moves the pages of `[from, from + len)` to `[to, to + len)`
/// (`mremap(MREMAP_FIXED)`): the physical pages go along, nothing is
/// copied or faulted, whatever was mapped at `to` is unmapped first, and
/// `from` is left unmapped. `false` (the kernel refused, or not Linux)
/// leaves both ranges as they were.
///
/// # Safety
///
/// Both addresses page-aligned, `len` a non-zero multiple of [`PAGE`]; the
/// source lies in one mapping made by this module (a kernel before 6.17
/// refuses a range across several); the destination is pages of our own
/// mappings; the caller owns both ranges, the ranges do not overlap, and
/// the caller does not need the destination's contents.
#[allow(unused_variables)]
pub(crate) unsafe fn move_pages(from: NonNull<u8>, len: usize, to: NonNull<u8>) -> bool {
    debug_assert!(from.as_ptr() as usize % PAGE == 0 && to.as_ptr() as usize % PAGE == 0);
    debug_assert!(len % PAGE == 0 && len > 0);
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: by the caller's promise, both ranges are private
        // anonymous pages the caller owns and nothing else uses;
        // MREMAP_FIXED replaces the destination's pages, and on failure the
        // kernel leaves both ranges untouched.
        let moved = unsafe {
            libc::mremap(
                from.as_ptr().cast(),
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to.as_ptr().cast::<libc::c_void>(),
            )
        };
        return moved != libc::MAP_FAILED;
    }
    #[allow(unreachable_code)]
    false
}

/// Turns the pages of `[ptr, ptr + old)` into a mapping of `new` (> `old`)
/// bytes, in place or moved (`mremap(MREMAP_MAYMOVE)`): the first `old`
/// bytes keep their physical pages, the rest is fresh. `None` (the kernel
/// refused, or not Linux) leaves the range as it was.
///
/// # Safety
///
/// `ptr` page-aligned, `old` and `new` non-zero multiples of [`PAGE`]; the
/// range lies in one mapping made by this module, the caller owns it, and
/// on `Some` the old address is gone.
#[allow(unused_variables)]
pub(crate) unsafe fn grow_pages(ptr: NonNull<u8>, old: usize, new: usize) -> Option<NonNull<u8>> {
    debug_assert!(ptr.as_ptr() as usize % PAGE == 0 && old % PAGE == 0 && new % PAGE == 0);
    debug_assert!(0 < old && old < new);
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: by the caller's promise, a range of one private anonymous
        // mapping that nothing else uses; MREMAP_MAYMOVE lets the kernel
        // move it, and on failure it is left untouched.
        let moved = unsafe { libc::mremap(ptr.as_ptr().cast(), old, new, libc::MREMAP_MAYMOVE) };
        if moved != libc::MAP_FAILED {
            return NonNull::new(moved.cast::<u8>());
        }
    }
    None
}
