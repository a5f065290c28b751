//! The trimmer: one background thread for all pools with a trim interval.
//!
//! Started on the first pool that asks for it, named `tierpool-trimmer`. It
//! holds pools weakly, so a dropped pool simply leaves; it sleeps on a condition
//! variable until the next pool is due, and never keeps the process alive (a
//! Rust process exits when `main` returns, whatever other threads do).

use std::sync::{Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::pool::PoolInner;
use crate::sync::Arc;

/// A pool the trimmer looks after.
struct Entry {
    pool: Weak<PoolInner>,
    interval: Duration,
    next: Instant,
}

struct Trimmer {
    pools: Mutex<Vec<Entry>>,
    wake: Condvar,
}

fn trimmer() -> &'static Trimmer {
    static TRIMMER: OnceLock<Trimmer> = OnceLock::new();
    static STARTED: OnceLock<()> = OnceLock::new();
    let trimmer = TRIMMER.get_or_init(|| Trimmer {
        pools: Mutex::new(Vec::new()),
        wake: Condvar::new(),
    });
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("tierpool-trimmer".into())
            .spawn(move || run(trimmer));
        if let Err(e) = spawned {
            // Without the thread the pools still work; they just do not
            // shrink on their own. `Pool::trim` still does.
            eprintln!("tierpool: could not start the trimmer thread: {e}");
        }
    });
    trimmer
}

/// Puts `pool` on the trimmer's schedule.
pub(crate) fn register(pool: &Arc<PoolInner>, interval: Duration) {
    let trimmer = trimmer();
    let mut pools = trimmer.pools.lock().unwrap_or_else(|e| e.into_inner());
    pools.push(Entry {
        pool: Arc::downgrade(pool),
        interval,
        next: Instant::now() + interval,
    });
    trimmer.wake.notify_one();
}

fn run(trimmer: &'static Trimmer) {
    let mut due: Vec<Arc<PoolInner>> = Vec::new();
    let mut pools = trimmer.pools.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        pools.retain(|e| e.pool.strong_count() > 0);
        let mut earliest: Option<Instant> = None;
        for entry in pools.iter_mut() {
            if entry.next <= now {
                if let Some(pool) = entry.pool.upgrade() {
                    due.push(pool);
                }
                // Skip missed ticks rather than running them back to back.
                while entry.next <= now {
                    entry.next += entry.interval;
                }
            }
            earliest = Some(earliest.map_or(entry.next, |e| e.min(entry.next)));
        }
        if !due.is_empty() {
            drop(pools);
            for pool in due.drain(..) {
                PoolInner::tick(&pool);
            }
            pools = trimmer.pools.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        pools = match earliest {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                trimmer
                    .wake
                    .wait_timeout(pools, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => trimmer.wake.wait(pools).unwrap_or_else(|e| e.into_inner()),
        };
    }
}
