//! The global allocator of a per-allocator binary: glibc's (no feature),
//! jemalloc's, mimalloc's or tierpool's `GlobalPool` (over glibc), so plain
//! `Vec` is measured on each, one binary per allocator.

/// Installs the global allocator that the package's features choose: none
/// (glibc), `jemalloc`, `mimalloc` or `globalpool`, the first of them when
/// several are on (`--all-features`). Called once at the top level of a
/// binary.
#[macro_export]
macro_rules! global_allocator {
    () => {
        #[cfg(feature = "jemalloc")]
        #[global_allocator]
        static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

        #[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
        #[global_allocator]
        static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

        #[cfg(all(
            feature = "globalpool",
            not(any(feature = "jemalloc", feature = "mimalloc"))
        ))]
        #[global_allocator]
        static GLOBAL: tierpool::GlobalPool = tierpool::GlobalPool::new();
    };
}
