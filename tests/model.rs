//! A proptest state machine: random sequences of get, write, resize, freeze,
//! drop (on any of three threads) and trim, checked after every step against
//! a simple model.
//!
//! Invariants:
//! 1. A new buffer is empty, and its capacity is its class (or at most two
//!    classes above, when it borrowed an idle larger buffer; a mapped class
//!    gets exactly its class, cut from or assembled out of idle pages), or
//!    exactly the request above the largest class.
//! 2. No buffer is handed out twice: live buffers never share memory.
//! 3. Contents are exactly what was written; no stale byte is ever visible.
//! 4. The statistics match the model when quiescent: bytes and buffers in use,
//!    hits + misses = buffers handed out, returns = buffers given back.
//! 5. Retained bytes never exceed the cap, and `trim()` leaves none, even in
//!    the caches of the (idle, alive) worker threads.
//!
//! Two configurations: small heap classes (100, 200, 300 bytes), and mapped
//! classes of 128 KiB to 4 MiB (Linux), whose idle memory is the large
//! tier's pages: a request is cut from an idle run or assembled from moved
//! runs (`mremap`).
//! Threads are real, but driven one command at a time, so every run is
//! deterministic and failures shrink.

use std::sync::mpsc;
use std::thread;

use bytes::Bytes;
use proptest::prelude::*;
use tierpool::{Pool, PooledBuf, SizeClasses};

const THREADS: usize = 3;

/// A pool configuration and the scale of the operations' sizes.
#[derive(Debug, Clone, Copy)]
struct Config {
    classes: &'static [usize],
    cap: usize,
    thread_cache: usize,
    shared_tier: usize,
    /// Every size in an `Op` is multiplied by this.
    scale: usize,
}

const SMALL: Config = Config {
    classes: &[100, 200, 300],
    cap: 1000,
    thread_cache: 400,
    shared_tier: 600,
    scale: 1,
};

const K: usize = 1 << 10;

const MAPPED: Config = Config {
    classes: &[128 * K, 256 * K, 512 * K, 1024 * K, 2048 * K, 4096 * K],
    cap: 12 << 20,
    // Small enough that large returns reach the shared tier, where fit
    // matches them (a third of the runs match by fit at least once).
    thread_cache: 1 << 20,
    shared_tier: 8 << 20,
    scale: 12 * K,
};

impl Config {
    fn largest(&self) -> usize {
        *self.classes.last().unwrap()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Get { thread: usize, size: usize },
    Write { buf: usize, len: usize, byte: u8 },
    Resize { buf: usize, len: usize, byte: u8 },
    Freeze { buf: usize },
    DropBuf { buf: usize, thread: usize },
    DropBytes { bytes: usize, thread: usize },
    Trim,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..THREADS, 0usize..420).prop_map(|(thread, size)| Op::Get { thread, size }),
        2 => (any::<usize>(), 0usize..180, any::<u8>()).prop_map(|(buf, len, byte)| Op::Write { buf, len, byte }),
        1 => (any::<usize>(), 0usize..350, any::<u8>()).prop_map(|(buf, len, byte)| Op::Resize { buf, len, byte }),
        1 => any::<usize>().prop_map(|buf| Op::Freeze { buf }),
        3 => (any::<usize>(), 0..THREADS).prop_map(|(buf, thread)| Op::DropBuf { buf, thread }),
        1 => (any::<usize>(), 0..THREADS).prop_map(|(bytes, thread)| Op::DropBytes { bytes, thread }),
        1 => Just(Op::Trim),
    ]
}

/// A command for a worker thread.
enum Command {
    Get(usize, mpsc::Sender<PooledBuf>),
    DropBuf(PooledBuf, mpsc::Sender<()>),
    DropBytes(Bytes, mpsc::Sender<()>),
}

struct Worker {
    tx: mpsc::Sender<Command>,
    handle: thread::JoinHandle<()>,
}

fn spawn_worker(pool: Pool) -> Worker {
    let (tx, rx) = mpsc::channel::<Command>();
    let handle = thread::spawn(move || {
        for command in rx {
            match command {
                Command::Get(size, reply) => reply.send(pool.get(size)).unwrap(),
                Command::DropBuf(buf, done) => {
                    drop(buf);
                    done.send(()).unwrap();
                }
                Command::DropBytes(bytes, done) => {
                    drop(bytes);
                    done.send(()).unwrap();
                }
            }
        }
    });
    Worker { tx, handle }
}

/// A live buffer and what the model says it holds.
struct Live {
    buf: PooledBuf,
    expected: Vec<u8>,
}

/// A frozen buffer: its bytes, base address and capacity.
struct Frozen {
    bytes: Bytes,
    capacity: usize,
}

struct Model {
    config: Config,
    handed_out: u64,
    oversize: u64,
}

impl Model {
    /// Records a block handed out with `capacity`, and checks it.
    fn handed(&mut self, requested: usize, capacity: usize) -> Result<(), TestCaseError> {
        let classes = self.config.classes;
        prop_assert!(capacity >= requested);
        if requested > self.config.largest() || capacity > self.config.largest() {
            // Growing may ask for more than requested but stays exact above
            // the largest class.
            self.oversize += 1;
        } else {
            let class = classes.iter().position(|&c| c >= requested.max(1)).unwrap();
            let index = classes.iter().position(|&c| c == capacity);
            prop_assert!(
                matches!(index, Some(i) if i >= class && i <= class + 2),
                "capacity {capacity} for a request of {requested}"
            );
            self.handed_out += 1;
        }
        Ok(())
    }
}

fn check(
    pool: &Pool,
    live: &[Live],
    frozen: &[Frozen],
    model: &Model,
) -> Result<(), TestCaseError> {
    let largest = model.config.largest();
    let stats = pool.stats();
    let in_use: usize = live.iter().map(|l| l.buf.capacity()).sum::<usize>()
        + frozen.iter().map(|f| f.capacity).sum::<usize>();
    prop_assert_eq!(stats.in_use_bytes, in_use, "{}", stats);
    prop_assert_eq!(stats.in_use_buffers, live.len() + frozen.len());
    prop_assert!(stats.retained_bytes <= model.config.cap);
    let handed: u64 = stats.classes.iter().map(|c| c.hits + c.misses).sum();
    let returned: u64 = stats.classes.iter().map(|c| c.returns).sum();
    let pooled_live = live.iter().filter(|l| l.buf.capacity() <= largest).count()
        + frozen.iter().filter(|f| f.capacity <= largest).count();
    prop_assert_eq!(handed, model.handed_out);
    prop_assert_eq!(returned, model.handed_out - pooled_live as u64);
    prop_assert_eq!(stats.oversize_allocations, model.oversize);
    // No two live buffers share memory.
    let mut ranges: Vec<(usize, usize)> = live
        .iter()
        .map(|l| (l.buf.as_ptr() as usize, l.buf.capacity()))
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        prop_assert!(w[0].0 + w[0].1 <= w[1].0, "overlapping buffers");
    }
    for l in live {
        prop_assert_eq!(&l.buf[..], &l.expected[..]);
    }
    Ok(())
}

fn run(ops: Vec<Op>, config: Config) -> Result<(), TestCaseError> {
    let pool = Pool::builder()
        .size_classes(SizeClasses::from_sizes(config.classes).unwrap())
        .thread_cache_bytes(config.thread_cache)
        .shared_tier_bytes(config.shared_tier)
        .max_retained_bytes(config.cap)
        .memory_limit(tierpool::MemoryLimit::Unlimited)
        .trim_interval(std::time::Duration::ZERO)
        .build();
    let workers: Vec<Worker> = (0..THREADS).map(|_| spawn_worker(pool.clone())).collect();
    let mut live: Vec<Live> = Vec::new();
    let mut frozen: Vec<Frozen> = Vec::new();
    let mut model = Model {
        config,
        handed_out: 0,
        oversize: 0,
    };
    for op in ops {
        match op.scaled(config.scale) {
            Op::Get { thread, size } => {
                let (tx, rx) = mpsc::channel();
                workers[thread].tx.send(Command::Get(size, tx)).unwrap();
                let buf = rx.recv().unwrap();
                prop_assert!(buf.is_empty());
                model.handed(size, buf.capacity())?;
                live.push(Live {
                    buf,
                    expected: Vec::new(),
                });
            }
            Op::Write { buf, len, byte } if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[buf % n];
                let before = l.buf.capacity();
                let data = vec![byte; len];
                std::io::Write::write_all(&mut l.buf, &data).unwrap();
                l.expected.extend_from_slice(&data);
                if l.buf.capacity() != before {
                    model.handed(l.expected.len(), l.buf.capacity())?;
                }
            }
            Op::Resize { buf, len, byte } if !live.is_empty() => {
                let n = live.len();
                let l = &mut live[buf % n];
                let before = l.buf.capacity();
                l.buf.resize(len, byte);
                l.expected.resize(len, byte);
                if l.buf.capacity() != before {
                    model.handed(len, l.buf.capacity())?;
                }
            }
            Op::Freeze { buf } if !live.is_empty() => {
                let l = live.swap_remove(buf % live.len());
                let capacity = l.buf.capacity();
                let bytes = l.buf.freeze();
                prop_assert_eq!(&bytes[..], &l.expected[..]);
                frozen.push(Frozen { bytes, capacity });
            }
            Op::DropBuf { buf, thread } if !live.is_empty() => {
                let l = live.swap_remove(buf % live.len());
                let (tx, rx) = mpsc::channel();
                workers[thread]
                    .tx
                    .send(Command::DropBuf(l.buf, tx))
                    .unwrap();
                rx.recv().unwrap();
            }
            Op::DropBytes { bytes, thread } if !frozen.is_empty() => {
                let f = frozen.swap_remove(bytes % frozen.len());
                let (tx, rx) = mpsc::channel();
                workers[thread]
                    .tx
                    .send(Command::DropBytes(f.bytes, tx))
                    .unwrap();
                rx.recv().unwrap();
            }
            Op::Trim => {
                pool.trim();
                prop_assert_eq!(pool.stats().retained_bytes, 0);
            }
            _ => {}
        }
        check(&pool, &live, &frozen, &model)?;
    }
    drop(live);
    drop(frozen);
    for w in workers {
        drop(w.tx);
        w.handle.join().unwrap();
    }
    // Growing buffers on this thread may have given it a cache too.
    pool.flush_thread_cache();
    let stats = pool.stats();

    prop_assert_eq!(stats.in_use_bytes, 0);
    prop_assert_eq!(stats.thread_caches, 0, "exited workers left the registry");
    pool.trim();
    prop_assert_eq!(pool.stats().retained_bytes, 0);
    Ok(())
}

impl Op {
    /// The op with its sizes multiplied by `scale`.
    fn scaled(self, scale: usize) -> Op {
        match self {
            Op::Get { thread, size } => Op::Get {
                thread,
                size: size * scale,
            },
            Op::Write { buf, len, byte } => Op::Write {
                buf,
                len: len * scale,
                byte,
            },
            Op::Resize { buf, len, byte } => Op::Resize {
                buf,
                len: len * scale,
                byte,
            },
            other => other,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn pool_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops, SMALL)?;
    }
}

#[cfg(target_os = "linux")]
proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Mapped classes: blocks cut from idle runs and assembled from moved
    /// ones (`mremap`) keep capacities, contents and the statistics exact.
    #[test]
    fn mapped_pool_matches_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops, MAPPED)?;
    }
}
