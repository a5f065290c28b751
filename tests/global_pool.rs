//! `GlobalPool` through the `GlobalAlloc` interface, not installed: large
//! blocks from the large tier and back, `realloc` by `mremap`, small ones
//! to the inner allocator, zeroed memory, the runtime switch, trimming.
//! The tier is process-wide, so these tests take turns (`serial`) and read
//! its figures as differences.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

use tierpool::GlobalPool;

static POOL: GlobalPool = GlobalPool::new();
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

#[cfg(all(unix, not(miri)))]
#[test]
fn a_freed_large_block_serves_the_next_request_without_fresh_pages() {
    let _turn = serial();
    // 1 MiB plus a bit: between page and class boundaries.
    let size = (1 << 20) + 12_345;
    // SAFETY: a valid layout; the block is freed with it below.
    let a = unsafe { POOL.alloc(layout(size)) };
    assert!(!a.is_null());
    assert_eq!(a as usize % 4096, 16, "16 bytes into its page, as glibc's");
    // SAFETY: `size` bytes of ours.
    unsafe { std::ptr::write_bytes(a, 0xA5, size) };
    let before = POOL.stats();
    assert!(before.in_use_bytes >= size);
    // SAFETY: allocated above with this layout.
    unsafe { POOL.dealloc(a, layout(size)) };
    let freed = POOL.stats();
    assert!(freed.idle_bytes >= size, "{freed}");
    // SAFETY: as above.
    let b = unsafe { POOL.alloc(layout(size - 4096)) };
    let after = POOL.stats();
    assert_eq!(
        after.fresh_bytes, freed.fresh_bytes,
        "no fresh page: {after}"
    );
    assert_eq!(after.reused, freed.reused + 1);
    // SAFETY: as above.
    unsafe { POOL.dealloc(b, layout(size - 4096)) };
}

#[cfg(all(unix, not(miri)))]
#[test]
fn realloc_grows_and_shrinks_without_losing_a_byte() {
    let _turn = serial();
    let before = POOL.stats();
    // A Vec growing to 16 MiB by 64 KiB appends, through realloc.
    let step = 64 << 10;
    let mut size = 2 * step;
    // SAFETY: a valid layout.
    let mut p = unsafe { POOL.alloc(layout(size)) };
    // SAFETY: `size` bytes of ours.
    unsafe { std::ptr::write_bytes(p, 1, size) };
    while size < 16 << 20 {
        let new = size + step;
        // SAFETY: `p` is ours with `layout(size)`.
        p = unsafe { POOL.realloc(p, layout(size), new) };
        assert!(!p.is_null());
        // SAFETY: the grown part, ours.
        unsafe { std::ptr::write_bytes(p.add(size), (new / step % 251) as u8, step) };
        size = new;
    }
    // SAFETY: `size` bytes of ours.
    let bytes = unsafe { std::slice::from_raw_parts(p, size) };
    assert!(bytes[..2 * step].iter().all(|&b| b == 1));
    for (i, chunk) in bytes[2 * step..].chunks(step).enumerate() {
        let tag = ((3 + i) % 251) as u8;
        assert!(chunk.iter().all(|&b| b == tag), "chunk {i}");
    }
    let grown = POOL.stats();
    assert!(
        grown.remapped - before.remapped > 200,
        "grown by mremap, not copied: {grown}"
    );
    // Shrinking keeps the front and gives the tail to the idle pages.
    // SAFETY: ours with `layout(size)`.
    let q = unsafe { POOL.realloc(p, layout(size), 1 << 20) };
    assert_eq!(q, p, "shrunk in place");
    let shrunk = POOL.stats();
    assert!(shrunk.in_use_bytes <= grown.in_use_bytes - (15 << 20));
    // Below the threshold the block moves to the inner allocator.
    // SAFETY: ours with `layout(1 MiB)`.
    let r = unsafe { POOL.realloc(q, layout(1 << 20), 1000) };
    // SAFETY: 1000 bytes of the inner allocator's.
    let moved = unsafe { std::slice::from_raw_parts(r, 1000) };
    assert!(moved.iter().all(|&b| b == 1));
    // SAFETY: the inner allocator's block, with the layout it has now.
    unsafe { POOL.dealloc(r, layout(1000)) };
    assert_eq!(POOL.stats().in_use_bytes, before.in_use_bytes);
}

#[test]
fn small_blocks_are_the_inner_allocators() {
    let _turn = serial();
    let before = POOL.stats();
    // SAFETY: valid layouts; freed below.
    unsafe {
        let p = POOL.alloc(layout(48));
        assert!(!p.is_null());
        // A small block grown past the threshold moves into the tier...
        let q = POOL.realloc(p, layout(48), 256 << 10);
        assert!(!q.is_null());
        // ... and back out when it shrinks below it.
        let r = POOL.realloc(q, layout(256 << 10), 64);
        POOL.dealloc(r, layout(64));
    }
    let after = POOL.stats();
    assert_eq!(after.in_use_bytes, before.in_use_bytes);
}

#[cfg(all(unix, not(miri)))]
#[test]
fn zeroed_blocks_are_zero_even_when_reused() {
    let _turn = serial();
    let size = 3 << 20;
    // SAFETY: valid layouts; each block freed with its layout.
    unsafe {
        let dirty = POOL.alloc(layout(size));
        std::ptr::write_bytes(dirty, 0xFF, size);
        POOL.dealloc(dirty, layout(size));
        let zeroed = POOL.alloc_zeroed(layout(size));
        assert!(
            std::slice::from_raw_parts(zeroed, size)
                .iter()
                .all(|&b| b == 0)
        );
        POOL.dealloc(zeroed, layout(size));
    }
}

#[cfg(all(unix, not(miri)))]
#[test]
fn switched_off_new_blocks_go_inner_and_old_ones_still_come_back() {
    let _turn = serial();
    static OFF: GlobalPool = GlobalPool::new();
    let size = 2 << 20;
    // SAFETY: valid layouts; each block freed with its layout.
    unsafe {
        let ours = OFF.alloc(layout(size));
        OFF.set_enabled(false);
        let before = OFF.stats();
        let theirs = OFF.alloc(layout(size));
        assert_eq!(OFF.stats().allocations, before.allocations, "inner");
        OFF.dealloc(theirs, layout(size));
        OFF.dealloc(ours, layout(size));
        assert_eq!(
            OFF.stats().in_use_bytes,
            // Its pages: 16 bytes into the first, as glibc's blocks.
            before.in_use_bytes - (size + 16).next_multiple_of(4096)
        );
        OFF.set_enabled(true);
    }
}

#[cfg(all(unix, not(miri)))]
#[test]
fn trim_gives_every_idle_page_back() {
    let _turn = serial();
    let size = 8 << 20;
    // SAFETY: a valid layout; freed below.
    unsafe {
        let p = POOL.alloc(layout(size));
        std::ptr::write_bytes(p, 1, size);
        POOL.dealloc(p, layout(size));
    }
    assert!(POOL.stats().idle_bytes >= size);
    let trimmed = POOL.stats().trimmed_bytes;
    POOL.trim();
    let after = POOL.stats();
    assert_eq!(after.idle_bytes, 0, "{after}");
    assert!(after.trimmed_bytes >= trimmed + size as u64);
}

#[test]
fn over_aligned_and_absurd_layouts_are_handled() {
    let _turn = serial();
    // SAFETY: valid layouts; freed below.
    unsafe {
        // Alignment past a page: the inner allocator's.
        let big_align = Layout::from_size_align(1 << 20, 1 << 16).unwrap();
        let p = POOL.alloc(big_align);
        assert!(!p.is_null() && p as usize % (1 << 16) == 0);
        POOL.dealloc(p, big_align);
        // An allocation the OS refuses is a null pointer, not a crash.
        let huge = Layout::from_size_align(isize::MAX as usize - 4095, 4096).unwrap();
        assert!(POOL.alloc(huge).is_null());
    }
    let _ = System;
}

#[cfg(all(unix, not(miri)))]
#[test]
fn blocks_sit_where_the_allocator_they_replace_puts_them() {
    let _turn = serial();
    let size = 3 << 20;
    let paged: GlobalPool = GlobalPool::with(System);
    // SAFETY: valid layouts; each block is freed with its layout below, by
    // the pool that made it.
    unsafe {
        // `new()`: 16 bytes into the page, as glibc's large blocks.
        let a = POOL.alloc(layout(size));
        assert_eq!(a as usize % 4096, 16);
        // An alignment the offset does not keep: on the page.
        let wide = Layout::from_size_align(size, 64).unwrap();
        let b = POOL.alloc(wide);
        assert_eq!(b as usize % 4096, 0);
        // `with(...)`: on the page, as jemalloc's and mimalloc's.
        let c = paged.alloc(layout(size));
        assert_eq!(c as usize % 4096, 0);
        // Every byte of the data is usable, and growing by `mremap` keeps
        // the offset and the bytes.
        std::ptr::write_bytes(a, 0x3C, size);
        let a = POOL.realloc(a, layout(size), 4 * size);
        assert_eq!(a as usize % 4096, 16);
        assert!(
            std::slice::from_raw_parts(a, size)
                .iter()
                .all(|&x| x == 0x3C)
        );
        std::ptr::write_bytes(a.add(size), 0x3D, 3 * size);
        // Shrinking gives the tail back and keeps the head.
        let a = POOL.realloc(a, layout(4 * size), size + 1);
        assert!(
            std::slice::from_raw_parts(a, size)
                .iter()
                .all(|&x| x == 0x3C)
        );
        POOL.dealloc(a, layout(size + 1));
        POOL.dealloc(b, wide);
        paged.dealloc(c, layout(size));
    }
    let stats = POOL.stats();
    assert_eq!(stats.in_use_bytes, 0, "{stats}");
}
