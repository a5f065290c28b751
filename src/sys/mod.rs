//! The OS layer: every system call of the crate, and nothing else.
//!
//! - [`mem`]: memory from the system and back (`mmap`, `mremap`, `madvise`);
//! - [`membarrier`]: the process-wide barrier of the thread-cache protocol;
//! - [`fork`]: the gate that keeps every lock of the crate out of a `fork`;
//! - [`files`]: the page cache of the files the pool reads and writes.
//!
//! The modules above ask this one and never name a system call (clippy's
//! `disallowed-methods` in `clippy.toml` keeps it that way).

pub(crate) mod files;
pub(crate) mod fork;
pub(crate) mod mem;
pub(crate) mod membarrier;
