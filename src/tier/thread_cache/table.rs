//! The per-thread table of caches, and the front pointer the fast path
//! reaches its cache through.

use super::*;
use crate::sync::thread_local;

// === the per-thread table ===

/// This thread's caches, indexed by pool slot number.
struct Table {
    entries: std::cell::UnsafeCell<Vec<Option<Arc<ThreadCache>>>>,
}

impl Drop for Table {
    /// Thread exit: hand every open cache back to its pool.
    fn drop(&mut self) {
        clear_front();
        for cache in self.entries.get_mut().drain(..).flatten() {
            flush_exiting(&cache);
        }
    }
}

#[cfg(not(tierpool_loom))]
thread_local! {
    static TABLE: Table = const {
        Table { entries: std::cell::UnsafeCell::new(Vec::new()) }
    };
}

#[cfg(tierpool_loom)]
thread_local! {
    static TABLE: Table = Table { entries: std::cell::UnsafeCell::new(Vec::new()) };
}

/// The cache this thread reached last, found again without the table: the
/// fast path's one thread-local look-up.
///
/// `cache` points into an `Arc` that the table holds, and every change to
/// the table (install, uninstall, the table's own destruction) clears this
/// first, so while `pool_id` is not 0 the pointer is valid. Pool ids start at
/// 1 and are never reused, so a match is always the right pool.
#[derive(Clone, Copy)]
struct Front {
    pool_id: u64,
    cache: *const ThreadCache,
}

impl Front {
    const NONE: Front = Front {
        pool_id: 0,
        cache: std::ptr::null(),
    };
}

// No destructor, so reaching it needs no liveness check, and it stays
// readable while the table is being destroyed.
#[cfg(not(tierpool_loom))]
thread_local! {
    static FRONT: std::cell::Cell<Front> = const { std::cell::Cell::new(Front::NONE) };
}

#[cfg(tierpool_loom)]
thread_local! {
    static FRONT: std::cell::Cell<Front> = std::cell::Cell::new(Front::NONE);
}

/// Forgets the front cache; before any change to the table.
fn clear_front() {
    // Under loom a thread-local may already be gone in a destructor.
    let _ = FRONT.try_with(|front| front.set(Front::NONE));
}

/// Runs `f` on this thread's cache for the pool in `slot` with id
/// `pool_id`, holding the cache's flag.
///
/// `None` when there is no such cache (never registered, or the thread-local
/// is being destroyed: a buffer dropped from another thread-local's
/// destructor) or another thread holds its flag. `f` must not call user code
/// (event callbacks, wakers) or reach this table again.
#[inline]
pub(crate) fn with_cache<R>(
    slot: usize,
    pool_id: u64,
    f: impl FnOnce(&mut CacheState) -> R,
) -> Option<R> {
    match with_front(pool_id, f) {
        Ok(r) => r,
        Err(f) => with_cache_slow(slot, pool_id, f),
    }
}

/// The fast path's [`with_cache`]: only if the pool's cache is the one this
/// thread reached last. `Err(f)` when it is not (the caller's slow path
/// goes through the table); `Ok(None)` when another thread holds its flag.
#[inline(always)]
pub(crate) fn with_front<R, F: FnOnce(&mut CacheState) -> R>(
    pool_id: u64,
    f: F,
) -> Result<Option<R>, F> {
    let front = FRONT.try_with(std::cell::Cell::get).unwrap_or(Front::NONE);
    if front.pool_id != pool_id {
        return Err(f);
    }
    // SAFETY: a front with this (non-zero) id points into an `Arc` the
    // table holds (see `Front`), and nothing changes the table while this
    // reference lives: `f` promises not to reach it.
    let cache = unsafe { &*front.cache };
    Ok(cache.try_lock().map(|mut guard| guard.with(f)))
}

/// [`with_cache`] through the table, making the cache found the front.
#[cold]
fn with_cache_slow<R>(
    slot: usize,
    pool_id: u64,
    f: impl FnOnce(&mut CacheState) -> R,
) -> Option<R> {
    TABLE
        .try_with(|table| {
            // SAFETY: only this module reaches `entries`, and none of its
            // functions runs code that reaches it again while this shared
            // reference lives (`f` promises not to).
            let entries = unsafe { &*table.entries.get() };
            let cache = entries.get(slot)?.as_ref()?;
            if cache.pool_id != pool_id {
                return None;
            }
            let _ = FRONT.try_with(|front| {
                front.set(Front {
                    pool_id,
                    cache: Arc::as_ptr(cache),
                });
            });
            let mut guard = cache.try_lock()?;
            Some(guard.with(f))
        })
        .ok()
        .flatten()
}

/// Whether this thread has a cache for the pool (`slot`, `pool_id`).
pub(crate) fn has_cache(slot: usize, pool_id: u64) -> bool {
    TABLE
        .try_with(|table| {
            // SAFETY: as in `with_cache`; nothing runs while it lives.
            let entries = unsafe { &*table.entries.get() };
            entries
                .get(slot)
                .and_then(|e| e.as_deref())
                .is_some_and(|c| c.pool_id == pool_id)
        })
        .unwrap_or(false)
}

/// Makes `cache` this thread's cache for the pool in `slot`. `false` when the
/// thread-local is being destroyed. A cache of an earlier pool that held the
/// same slot (closed: its pool is gone) is dropped.
pub(crate) fn install(slot: usize, cache: Arc<ThreadCache>) -> bool {
    clear_front();
    let replaced = TABLE.try_with(|table| {
        // SAFETY: as in `with_cache`; the only code run while this unique
        // reference lives is `Vec`'s own.
        let entries = unsafe { &mut *table.entries.get() };
        if entries.len() <= slot {
            entries.resize_with(slot + 1, || None);
        }
        entries[slot].replace(cache)
    });
    // Dropped outside the table: a cache's drop runs no code of ours, but
    // keep the rule simple.
    replaced.is_ok()
}

/// Removes and returns this thread's cache for the pool (`slot`, `pool_id`).
pub(crate) fn uninstall(slot: usize, pool_id: u64) -> Option<Arc<ThreadCache>> {
    clear_front();
    TABLE
        .try_with(|table| {
            // SAFETY: as in `install`.
            let entries = unsafe { &mut *table.entries.get() };
            let entry = entries.get_mut(slot)?;
            if entry.as_ref().is_some_and(|c| c.pool_id == pool_id) {
                entry.take()
            } else {
                None
            }
        })
        .ok()
        .flatten()
}

/// Hands an exiting thread's cache back to its pool, unless it is closed.
fn flush_exiting(cache: &ThreadCache) {
    // Unbounded patience would be wrong only for a cache whose flag is held
    // by a thread that no longer exists; the owner is this thread.
    let Some(mut guard) = cache.lock_as_owner(u32::MAX) else {
        return;
    };
    let exit = &cache.exit;
    guard.with(|state| {
        if !state.closed {
            // SAFETY: locked and not closed, as `run` requires.
            unsafe { (exit.run)(exit.pool, cache, state) };
            state.closed = true;
        }
    });
}
