#![doc = include_str!("../README.md")]
#![warn(missing_docs, unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod buf;
mod copy;
mod error;
mod event;
mod ext;
mod global;
mod io;
mod limits;
mod pool;
mod report;
mod size_class;
mod stats;
mod sync;
mod sys;
mod tier;
mod trimmer;

pub use buf::PooledBuf;
pub use bytes;
pub use error::{Error, ErrorKind};
pub use event::{AllocReason, DropReason, Event, TrimReason};
#[cfg(feature = "http-body")]
pub use ext::http::BodyError;
#[cfg(feature = "image")]
pub use ext::image::{DecodeError, Frame, ImageCost, PooledImage, Sample};
pub use global::GlobalPool;
pub use io::{
    AdapterStats, Chunks, ChunksBody, Label, LabelStats, MAX_LABELS, OTHER_LABEL, PooledWriter,
    ReadOptions,
};
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
