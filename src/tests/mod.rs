//! Unit tests over every unsafe path; they run under miri too, so sizes
//! scale with `cfg!(miri)`.

use std::sync::Arc as StdArc;
use std::sync::Mutex as StdMutex;

use bytes::BufMut;

use crate::{AllocReason, DropReason, Error, Event, Pool, PooledBuf, SizeClasses, TrimReason};

mod buf;
mod close;
mod large;
mod pool;
mod trim;

const ROUNDS: usize = if cfg!(miri) { 20 } else { 2_000 };

fn small_pool_builder() -> crate::PoolBuilder {
    Pool::builder()
        .size_classes(SizeClasses::from_sizes(&[100, 200, 300]).unwrap())
        .thread_cache_bytes(400)
}

/// Small classes; no idle trimming, so exact counts never race a tick.
fn small_pool() -> Pool {
    small_pool_builder()
        .trim_interval(std::time::Duration::ZERO)
        .build()
}

fn recording_pool(builder: crate::PoolBuilder) -> (Pool, StdArc<StdMutex<Vec<Event>>>) {
    let events = StdArc::new(StdMutex::new(Vec::new()));
    let sink = events.clone();
    let pool = builder
        .on_event(move |e| sink.lock().unwrap().push(*e))
        .build();
    (pool, events)
}
