//! The global allocator of this binary: glibc's (no feature), jemalloc's,
//! mimalloc's or tierpool's `GlobalPool` (over glibc), so plain `Vec` is
//! measured on each, one binary per allocator.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "globalpool")]
#[global_allocator]
static GLOBAL: tierpool::GlobalPool = tierpool::GlobalPool::new();
