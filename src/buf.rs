//! `PooledBuf`: a byte buffer that goes back to its pool when dropped.

use std::borrow::{Borrow, BorrowMut};
use std::fmt;
use std::io;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::ops::{Deref, DerefMut};
use std::ptr::{self, NonNull};
use std::slice;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};

use crate::Error;
use crate::pool::{BlockPool, OVERSIZE, ReturnTo};
use crate::sys::mem;
use crate::tier::thread_cache;

/// A byte buffer from a [`Pool`](crate::Pool): like a `Vec<u8>` whose memory
/// goes back to the pool when it is dropped, on whatever thread.
///
/// It derefs to the `len()` initialised bytes. A reused buffer starts empty,
/// and every safe way to lengthen it writes the new bytes first, so no safe
/// method shows what a previous user wrote. Growing past the capacity moves
/// the contents to a buffer of a larger class, taken from the same pool.
///
/// ```
/// use std::io::Write;
///
/// let pool = tierpool::Pool::new();
/// let mut buf = pool.get(4096);
/// write!(buf, "{} x {}", 640, 480)?;
/// assert_eq!(&buf[..], b"640 x 480");
///
/// let bytes = buf.freeze(); // shareable; the memory returns with the last clone
/// assert_eq!(&bytes[..], b"640 x 480");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct PooledBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    /// The pool this block belongs to, whose strong count the block holds;
    /// `None` only for the empty buffer of [`PooledBuf::new`].
    pool: Option<BlockPool>,
    /// The block's class index, or `OVERSIZE` for an exact allocation.
    class: u32,
}

// SAFETY: a `PooledBuf` owns its block exclusively, like a `Vec<u8>`. The pool
// it points to is `Send + Sync` (atomics, a mutex and lock-free queues) and is
// kept alive by the count the buffer holds.
unsafe impl Send for PooledBuf {}
// SAFETY: `&PooledBuf` only reads the initialised bytes; no interior
// mutability.
unsafe impl Sync for PooledBuf {}

// A buffer owns its bytes like a `Vec<u8>`; its pool stays consistent
// across panics (see `Pool`'s `UnwindSafe`).
impl std::panic::UnwindSafe for PooledBuf {}
impl std::panic::RefUnwindSafe for PooledBuf {}

// === impl PooledBuf ===

impl PooledBuf {
    /// An empty buffer that owns no memory and belongs to no pool yet; the
    /// first write takes a buffer from [`global()`](crate::global).
    pub const fn new() -> Self {
        PooledBuf {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
            pool: None,
            class: OVERSIZE,
        }
    }

    /// Wraps a block of class `class` (or `OVERSIZE`) and `cap` bytes taken
    /// from `pool`.
    ///
    /// # Safety
    ///
    /// `ptr` is a block of class `class` whose capacity is `cap` (or, with
    /// `OVERSIZE`, an exact allocation of `cap` bytes from `mem::alloc`)
    /// that nobody else owns, and the caller hands over one strong count of
    /// `pool` along with it.
    #[inline]
    pub(crate) unsafe fn from_block(
        ptr: NonNull<u8>,
        cap: usize,
        pool: BlockPool,
        class: u32,
    ) -> Self {
        PooledBuf {
            ptr,
            len: 0,
            cap,
            pool: Some(pool),
            class,
        }
    }

    /// Gives up the block and the pool count it holds, as
    /// `(block, capacity)`, without returning either; a buffer from
    /// `from_block` that `from_block` can wrap again.
    #[inline]
    pub(crate) fn into_block(self) -> (NonNull<u8>, usize) {
        let this = ManuallyDrop::new(self);
        (this.ptr, this.cap)
    }

    /// Moves the block to the smallest class that holds its data when
    /// that is a smaller mapped class: the block is cut in place, its tail's
    /// pages go to the large tier's idle runs, resident, so whatever takes
    /// them next (the same read's full chunk, next time) faults nothing.
    /// Returns whether it did.
    pub(crate) fn shrink_to_class(&mut self) -> bool {
        let Some(pool) = self.pool else { return false };
        // SAFETY: our block holds a count of `pool`; it is of class `class`.
        match unsafe { pool.shrink_to_class(self.ptr, self.len, self.class) } {
            Some((class, cap)) => {
                self.class = class;
                self.cap = cap;
                true
            }
            None => false,
        }
    }

    /// Drops the buffer, its block going to the large tier's idle runs
    /// rather than the hot slot of its class (for a block of a mapped
    /// class; any other buffer drops as usual). For a block cut down by
    /// [`shrink_to_class`](Self::shrink_to_class): in the runs it joins the
    /// idle pages it was cut from, which the next read of the same size
    /// takes whole again; in the hot slot of a class nothing else uses, it
    /// would pin them apart.
    pub(crate) fn drop_to_runs(self) {
        let this = ManuallyDrop::new(self);
        let Some(pool) = this.pool else { return };
        // SAFETY: the block and its count are this buffer's, given up here
        // (`this` is never dropped).
        unsafe { pool.release(this.ptr, this.cap, this.class, ReturnTo::Runs) }
    }

    /// The number of initialised bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// `len() == 0`.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes this buffer holds without moving: its class's capacity, or
    /// the exact request above the largest class.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Empties the buffer, keeping its capacity.
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Shortens the buffer to `len` bytes; no effect if it is not longer.
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends `data`, growing if needed.
    ///
    /// # Panics
    ///
    /// Like `Vec`: if the new length overflows `isize::MAX` (and aborts if
    /// the allocator fails).
    #[inline]
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.reserve(data.len());
        // SAFETY: `reserve` made room for `data.len()` bytes after `len`; a
        // `&[u8]` cannot overlap the buffer we hold `&mut` to.
        unsafe { crate::copy::copy(data.as_ptr(), self.ptr.as_ptr().add(self.len), data.len()) };
        self.len += data.len();
    }

    /// Sets the length to `new_len`, filling new bytes with `value`.
    ///
    /// # Panics
    ///
    /// As [`extend_from_slice`](Self::extend_from_slice).
    pub fn resize(&mut self, new_len: usize, value: u8) {
        if new_len <= self.len {
            self.len = new_len;
            return;
        }
        let extra = new_len - self.len;
        self.reserve(extra);
        // SAFETY: `reserve` made room for `extra` bytes after `len`.
        unsafe { ptr::write_bytes(self.ptr.as_ptr().add(self.len), value, extra) };
        self.len = new_len;
    }

    /// Makes room for at least `additional` more bytes, moving to a larger
    /// class (through the pool) if needed.
    ///
    /// # Panics
    ///
    /// As [`extend_from_slice`](Self::extend_from_slice).
    #[inline]
    pub fn reserve(&mut self, additional: usize) {
        if self.cap - self.len < additional {
            if let Err(e) = self.grow(additional) {
                grow_failed(e)
            }
        }
    }

    /// Like [`reserve`](Self::reserve), but an overflow or failed allocation
    /// is an error and the buffer is unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::CapacityOverflow`] or [`Error::AllocFailed`].
    pub fn try_reserve(&mut self, additional: usize) -> Result<(), Error> {
        if self.cap - self.len < additional {
            self.grow(additional)?;
        }
        Ok(())
    }

    /// Moves the contents into a buffer from the same pool with room for
    /// `additional` more bytes: at least twice the current capacity (capped
    /// at the largest class) so that repeated appends stay amortised O(1).
    #[cold]
    fn grow(&mut self, additional: usize) -> Result<(), Error> {
        let requested = self
            .len
            .checked_add(additional)
            .ok_or(Error::CapacityOverflow {
                requested: usize::MAX,
            })?;
        // SAFETY: our block, if any, holds a count of its pool.
        let mut bigger = unsafe { BlockPool::for_growth(self.pool, self.cap, requested) }?;
        // SAFETY: `bigger` has at least `requested >= len` bytes of room and is
        // a different allocation from ours.
        unsafe { ptr::copy_nonoverlapping(self.ptr.as_ptr(), bigger.ptr.as_ptr(), self.len) };
        bigger.len = self.len;
        std::mem::swap(self, &mut bigger);
        drop(bigger); // our old block goes back to the pool
        Ok(())
    }

    /// The spare capacity after the initialised bytes, for code that fills a
    /// buffer itself (a decoder writing rows); then
    /// [`set_len`](Self::set_len). The bytes are `MaybeUninit`: reading them
    /// needs `unsafe`, and may show a previous user's bytes, so don't.
    #[inline]
    pub fn spare_capacity_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        // SAFETY: the block has `cap` bytes; `[len, cap)` is ours to hand out
        // as uninitialised memory.
        unsafe {
            slice::from_raw_parts_mut(
                self.ptr.as_ptr().add(self.len).cast::<MaybeUninit<u8>>(),
                self.cap - self.len,
            )
        }
    }

    /// Sets the length without writing anything.
    ///
    /// # Safety
    ///
    /// `new_len <= capacity()`, and the bytes up to `new_len` were written
    /// (through [`spare_capacity_mut`](Self::spare_capacity_mut) or the raw
    /// pointer) since this buffer was handed out: otherwise they may hold a
    /// previous user's data.
    #[inline]
    pub unsafe fn set_len(&mut self, new_len: usize) {
        debug_assert!(new_len <= self.cap);
        self.len = new_len;
    }

    /// A raw pointer to the first byte.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// A raw mutable pointer to the first byte.
    #[inline]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// An immutable, cheaply cloneable [`Bytes`] over the contents, without a
    /// copy. The memory goes back to the pool when the last clone drops.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }

    /// The contents as a `Vec<u8>`. Below 128 KiB (and everywhere off Unix) the memory itself is detached from the pool,
    /// without a copy, and never comes back. Larger blocks are mapped from the
    /// OS, which `Vec` cannot free: their contents are copied into a new
    /// `Vec` and the block goes back to the pool.
    pub fn into_vec(self) -> Vec<u8> {
        if mem::is_mapped(self.cap) {
            return self[..].to_vec();
        }
        let this = ManuallyDrop::new(self);
        let Some(pool) = this.pool else {
            return Vec::new();
        };
        // The block came from `alloc_block(cap)` below the mapping threshold,
        // i.e. from the global allocator with `u8`'s layout for `cap` bytes.
        // SAFETY: that is exactly what a `Vec<u8>` of capacity `cap` frees
        // with; `len <= cap` bytes are initialised; `this` is never dropped.
        let vec = unsafe { Vec::from_raw_parts(this.ptr.as_ptr(), this.len, this.cap) };
        // SAFETY: the block leaves the pool with its count; nothing below
        // touches the pool.
        unsafe { pool.detach(this.class, this.cap) };
        vec
    }
}

#[cold]
#[track_caller]
fn grow_failed(e: Error) -> ! {
    match e {
        Error::AllocFailed { size } => std::alloc::handle_alloc_error(
            std::alloc::Layout::array::<u8>(size).expect("size was allocatable"),
        ),
        e => panic!("tierpool: {e}"),
    }
}

impl Drop for PooledBuf {
    #[inline]
    fn drop(&mut self) {
        let Some(pool) = self.pool else { return };
        if self.class != OVERSIZE {
            // The fast path: onto this thread's front cache, calling
            // nothing (so it saves no registers).
            // SAFETY: the block holds a count of `pool`.
            let id = unsafe { pool.id() };
            let (block, class) = (self.ptr, self.class as usize);
            if let Ok(Some(true)) = thread_cache::with_front(id, |cache| cache.put(class, block)) {
                // The count went into the thread cache with the block.
                return;
            }
        }
        // SAFETY: the block and its count are this buffer's, given up here.
        unsafe { pool.release(self.ptr, self.cap, self.class, ReturnTo::Class) }
    }
}

impl Default for PooledBuf {
    fn default() -> Self {
        PooledBuf::new()
    }
}

impl Deref for PooledBuf {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes were written since the buffer was
        // handed out (every way of raising `len` writes first, or is unsafe
        // and says so); `ptr` is dangling-but-aligned only when `len == 0`.
        unsafe { slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PooledBuf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and we hold `&mut self`.
        unsafe { slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for PooledBuf {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for PooledBuf {
    #[inline]
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl Borrow<[u8]> for PooledBuf {
    fn borrow(&self) -> &[u8] {
        self
    }
}

impl BorrowMut<[u8]> for PooledBuf {
    fn borrow_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl PartialEq for PooledBuf {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for PooledBuf {}

impl PartialEq<[u8]> for PooledBuf {
    fn eq(&self, other: &[u8]) -> bool {
        self[..] == *other
    }
}

impl Extend<u8> for PooledBuf {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, iter: I) {
        let iter = iter.into_iter();
        self.reserve(iter.size_hint().0);
        for byte in iter {
            if self.len == self.cap {
                self.reserve(1);
            }
            // SAFETY: `len < cap` after the check above.
            unsafe { self.ptr.as_ptr().add(self.len).write(byte) };
            self.len += 1;
        }
    }
}

impl<'a> Extend<&'a u8> for PooledBuf {
    fn extend<I: IntoIterator<Item = &'a u8>>(&mut self, iter: I) {
        self.extend(iter.into_iter().copied());
    }
}

/// Shows length, capacity and class, never the contents (they may be
/// another request's image).
impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PooledBuf");
        d.field("len", &self.len).field("capacity", &self.cap);
        if self.class == OVERSIZE {
            d.field("pooled", &false);
        }
        d.finish()
    }
}

impl io::Write for PooledBuf {
    /// Appends all of `data`; growing moves to a larger class. An allocation
    /// failure is an `OutOfMemory` error, with the buffer unchanged.
    #[inline]
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.write_all(data)?;
        Ok(data.len())
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let total = bufs.iter().try_fold(0usize, |n, b| n.checked_add(b.len()));
        let total = total.ok_or(Error::CapacityOverflow {
            requested: usize::MAX,
        })?;
        self.try_reserve(total)?;
        for b in bufs {
            self.extend_from_slice(b);
        }
        Ok(total)
    }

    #[inline]
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.try_reserve(data.len())?;
        self.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// SAFETY: `chunk_mut` hands out exactly the spare capacity `[len, cap)`;
// `advance_mut` only moves `len` within the capacity, over bytes the caller
// promises to have written (its `# Safety` contract).
unsafe impl BufMut for PooledBuf {
    #[inline]
    fn remaining_mut(&self) -> usize {
        isize::MAX as usize - self.len
    }

    #[inline]
    unsafe fn advance_mut(&mut self, cnt: usize) {
        let remaining = self.cap - self.len;
        assert!(
            cnt <= remaining,
            "advance_mut({cnt}) past the {remaining} bytes of spare capacity"
        );
        self.len += cnt;
    }

    #[inline]
    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.len == self.cap {
            // Like `Vec`: grow so the chunk is never empty.
            self.reserve(64);
        }
        // SAFETY: `[len, cap)` is spare capacity of our block; `UninitSlice`
        // never lets safe code read it.
        unsafe {
            UninitSlice::from_raw_parts_mut(self.ptr.as_ptr().add(self.len), self.cap - self.len)
        }
    }

    #[inline]
    fn put_slice(&mut self, src: &[u8]) {
        self.extend_from_slice(src);
    }
}
