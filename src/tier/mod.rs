//! The tiers that keep idle blocks, each a leaf that knows nothing of the
//! pool: the thread caches (one a thread a pool), the shared tier (one
//! lock-free queue a class), the retention budget every idle byte holds,
//! and the large tier of page runs for the mapped classes.

pub(crate) mod large;
pub(crate) mod retention;
pub(crate) mod shared;
pub(crate) mod thread_cache;
