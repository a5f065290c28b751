//! A tiered buffer pool for allocation-heavy services.
//!
//! Image services, QR-code batch generators and PDF renderers allocate big,
//! short-lived byte buffers all day. Every fresh large allocation is fresh
//! pages (`mmap`, page faults, zeroing), and freed memory tends to stay in the
//! allocator's arenas, so a pod's working set climbs until it is OOM-killed.
//! tierpool hands the same warm buffers back, keeps the hot ones in
//! lock-free thread caches, bounds what it keeps, and shows what it holds.
//!
//! ```text
//!  get(n) ──► size class ──► thread cache ──► shared tier ──► allocator
//!               (round up)    (per thread,     (per class,     (miss)
//!                              per class,       bounded MPMC
//!                              no locks)        queue)
//!  drop   ──► thread cache ──(spill batch)──► shared tier ──(over cap)──► free
//!  trimmer (every trim_interval) ──► buffers idle a whole interval, in every
//!                                    tier, idle threads' caches too ──► free
//! ```
//!
//! # Usage
//!
//! ```
//! use std::io::Write;
//! use tierpool::{Pool, SizeClasses};
//!
//! let pool = Pool::builder()
//!     .size_classes(SizeClasses::geometric(4096, 64 << 20, 4)?)
//!     .max_retained_bytes(256 << 20)
//!     .build();
//!
//! let mut row = pool.get(150_000);          // rounded up to a class: 160 KiB
//! assert_eq!(row.capacity(), 160 << 10);
//! row.write_all(&[0x7f; 1000])?;            // `io::Write` and `bytes::BufMut`
//! let frozen = row.freeze();                // `bytes::Bytes`, no copy
//! drop(frozen);                             // back to this thread's cache
//!
//! let again = pool.get(150_000);            // a hit: the same warm memory,
//! assert!(again.is_empty());                // but never the old bytes
//! println!("{}", pool.stats());             // a table per class
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Adapters: reading and writing without doubling
//!
//! `Vec::read_to_end` (like Go's `ioutil.ReadAll`) grows by doubling and
//! copying, and can end up holding twice what it read. [`Pool::read_to_end`]
//! reads straight into a chain of pooled chunks instead, [`Chunks`], which
//! reads back as `Read + BufRead + Seek` with `io::Cursor`'s semantics and as
//! `bytes::Buf`, so decoders consume it directly:
//!
//! ```
//! use std::io::Read;
//!
//! let pool = tierpool::Pool::new();
//! let upload = std::io::repeat(7).take(3 << 20);        // length unknown up front
//! let mut body = pool.read_to_end_limited(upload, 64 << 20)?;
//! assert_eq!(body.len(), 3 << 20);
//! let mut header = [0; 8];
//! body.read_exact(&mut header)?;                         // or bytes::Buf, or BufRead
//!
//! let thumbnails = pool.reader("thumbnail.decode");      // labelled: learns its sizes
//! let mut out = pool.writer();                           // io::Write + BufMut
//! std::io::copy(&mut body, &mut out)?;
//! let encoded: bytes::Bytes = out.freeze();
//! # drop((thumbnails, encoded));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! With the `tokio` feature the same exists for `AsyncRead`/`AsyncWrite`.
//! Every adapter records bytes, read calls, chunks and time in
//! [`Stats::adapters`], and per label in [`Stats::labels`] with the size
//! distribution (p50/p95/max).
//!
//! # Configuration
//!
//! [`PoolBuilder`] sets the [`SizeClasses`], the cap on idle memory across
//! all tiers (`max_retained_bytes`, thread caches included), the bytes each
//! thread may cache per class (small classes keep up to 32 buffers per
//! thread; classes larger than that budget go straight to the shared tier),
//! the shared tier's depth, the trim interval and its floor, and an
//! [`Event`] callback for telemetry.
//!
//! # Memory goes back
//!
//! - **Trimming on idle.** Every pool with a `trim_interval` (default
//!   [`DEFAULT_TRIM_INTERVAL`], 5 s) is ticked by one background thread. A
//!   buffer that stays idle through a whole interval, in any tier, is freed
//!   by the end of the next: thread caches keep a low-water mark of their
//!   LIFO, and the FIFO shared tier counts its pops, so what was used during
//!   the interval stays and what was not goes, including the caches of
//!   threads that are alive but idle. Two intervals after the last traffic
//!   the pool holds at most `min_retained_bytes`.
//! - **Pages leave the process.** Blocks of [`MMAP_THRESHOLD`] (128 KiB) and
//!   more are mapped from the OS on Unix and unmapped when freed, so their
//!   pages leave the resident set and the cgroup at once, whatever the
//!   allocator. (glibc's malloc keeps freed large blocks in its arenas once
//!   its dynamic mmap threshold has risen; jemalloc and mimalloc decay them
//!   on their own schedule.) Smaller blocks go through the global allocator;
//!   on other platforms all do, and what reaches the OS is up to it.
//! - **The demand cap.** When more bytes sit idle than are in use
//!   ([`PoolBuilder::demand_cap`]), a miss reshapes an idle mapped buffer of
//!   another class into the class it needs (`mremap` on Linux: the pages
//!   keep serving) or frees idle buffers before allocating, so a burst's
//!   peak does not grow by every class it touched.
//!
//! # Safety and correctness
//!
//! - **No stale data.** A reused buffer starts at `len() == 0`; every safe
//!   way to lengthen it writes the new bytes. Spare capacity is only handed
//!   out as `MaybeUninit` or `bytes::buf::UninitSlice`.
//! - **Bad input is an error.** [`Pool::try_get`] and the `SizeClasses`
//!   constructors return [`Error`]s; [`Pool::get`] panics on impossible sizes
//!   like `Vec`.
//! - **Any-thread drops.** A buffer may be dropped on any thread, after its
//!   `Pool` handles are gone, or from another thread-local's destructor.
//! - The `unsafe` code is checked by miri (unit tests), loom (every handoff
//!   between a thread cache, the shared tier and the trimmer) and a
//!   model-based property test.
//!
//! # Implementation notes
//!
//! Each thread cache slot is an `AtomicPtr`: the owner fills it with a plain
//! store and empties it with a swap, which `trim()` can do too, so trimming
//! reaches threads that never call into the pool again. Retention is bounded
//! by a reservation counter: a thread reserves a batch of budget at once and
//! keeps it as credit, so the hot path touches no shared cache line. Every
//! block in use or in a thread cache owns one strong count of its pool's
//! shared state, moved (not copied) between a cache and a buffer, so a buffer
//! can always find its pool and the hot path never touches a reference
//! count; blocks queued in the shared tier own none, so a pool whose handles
//! and buffers are all gone frees itself and whatever is still queued.

#![warn(missing_docs, unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "tokio")]
mod async_io;
mod buf;
mod chunks;
mod error;
mod event;
mod label;
mod pool;
mod read;
mod shared_tier;
mod size_class;
mod stats;
mod sync;
mod thread_cache;
#[cfg(not(any(loom, miri)))]
mod trimmer;
mod writer;

pub use buf::PooledBuf;
pub use chunks::Chunks;
pub use error::Error;
pub use event::{AllocReason, DropReason, Event, TrimReason};
pub use label::{AdapterStats, LabelStats, Reader};
pub use pool::{
    DEFAULT_DEMAND_CAP, DEFAULT_MAX_RETAINED_BYTES, DEFAULT_SHARED_TIER_BYTES,
    DEFAULT_THREAD_CACHE_BYTES, DEFAULT_TRIM_INTERVAL, MAX_SHARED_TIER_DEPTH,
    MAX_THREAD_CACHE_DEPTH, MMAP_THRESHOLD, Pool, PoolBuilder, global,
};
pub use read::{FIRST_CHUNK, MAX_CHUNK};
pub use size_class::{MAX_CLASS_SIZE, MAX_CLASSES, SizeClasses};
pub use stats::{ClassStats, Stats};
pub use writer::PooledWriter;

// The unit tests use real threads and atomics; under loom only the model
// tests (at the end of `thread_cache.rs`) build.
#[cfg(all(test, not(loom)))]
mod tests;
