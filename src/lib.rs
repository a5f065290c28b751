#![doc = include_str!("../README.md")]
#![warn(missing_docs, unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod barrier;
mod buf;
mod error;
pub mod event;
#[cfg(feature = "image")]
#[cfg_attr(docsrs, doc(cfg(feature = "image")))]
pub mod frame;
mod global;
pub mod io;
mod large;
mod limits;
mod os;
mod pool;
mod report;
mod retention;
mod shared_tier;
mod size_class;
pub mod stats;
mod sync;
#[cfg(feature = "metrics")]
mod telemetry;
mod thread_cache;
mod trim;

pub use buf::PooledBuf;
pub use bytes;
pub use error::{Error, ErrorKind};
pub use event::{AllocReason, DropReason, Event, TrimReason};
#[cfg(feature = "image")]
pub use frame::{DecodeError, Frame, ImageCost, PooledImage};
pub use global::GlobalPool;
pub use io::{Chunks, ChunksBody, PooledWriter};
pub use limits::{
    ContainerMemory, MemoryEvents, MemoryLimit, PageCache, Pressure, PressureStall, Thresholds,
};
pub use pool::{Acquire, AdmitFuture, Permit, Pool, PoolBuilder, global};
pub use report::MemoryReport;
pub use size_class::SizeClasses;
pub use stats::{ClassStats, GlobalStats, LargeStats, Stats};

// `RUSTFLAGS="--cfg tierpool_global_alloc"`: every binary that links the
// crate (the test suite in CI) runs on `GlobalPool`.
#[cfg(tierpool_global_alloc)]
#[global_allocator]
static TEST_GLOBAL: GlobalPool = GlobalPool::new();

// The unit tests use real threads and atomics; under loom only the model
// tests build.
#[cfg(all(test, tierpool_loom))]
#[path = "tests/loom.rs"]
mod loom_tests;
#[cfg(all(test, not(tierpool_loom)))]
mod tests;
