//! `tierpool-instructions SUBJECT OP N`: runs N operations, for callgrind.
//!
//! SUBJECT: `tierpool` or `vec`. OP:
//! - `get-drop`: a 4096-byte buffer taken and dropped on one thread (for
//!   tierpool, a cached class);
//! - `get-drop-large`: the same with 1 MiB, nothing written (for tierpool,
//!   a mapped class of the large tier);
//! - `freeze`: 16 bytes written, frozen into `Bytes`, and the `Bytes`
//!   dropped: the path every HTTP response takes;
//! - `cross-thread`: taken on one thread and dropped on another, in batches
//!   of 64.
//!
//! Everything but the N operations is the same for any N, so the
//! difference between two runs divided by the difference of their N is
//! the cost of one operation (`scripts/instructions.sh` does this).

use std::hint::black_box;

use bytes::Bytes;
use tierpool::Pool;

tierpool_harness::global_allocator!();

const SIZE: usize = 4096;
const LARGE: usize = 1 << 20;
const BATCH: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: tierpool-instructions tierpool|vec get-drop|get-drop-large|freeze|cross-thread N";
    let (subject, op, n) = match &args[1..] {
        [s, o, n] => (s.as_str(), o.as_str(), n.parse::<usize>().expect(usage)),
        _ => panic!("{usage}"),
    };
    let pool = Pool::builder()
        .trim_interval(std::time::Duration::ZERO)
        .memory_limit(tierpool::MemoryLimit::Unlimited)
        .build();
    // Warm up: the class cached, the allocator's bins filled.
    for _ in 0..BATCH {
        run(subject, op, &pool, 1);
    }
    run(subject, op, &pool, n);
}

fn run(subject: &str, op: &str, pool: &Pool, n: usize) {
    match (subject, op) {
        // `black_box(buf.as_ptr())`: the block must exist and escape, so
        // neither the pool's work nor the allocator's can be optimised
        // away, but the handle is not moved through memory for it (that
        // would count stores and loads of the harness, not of the pool).
        ("tierpool", "get-drop") => pool_get_drop(pool, n, SIZE),
        ("tierpool", "get-drop-large") => pool_get_drop(pool, n, LARGE),
        ("vec", "get-drop") => vec_get_drop(n, SIZE),
        ("vec", "get-drop-large") => vec_get_drop(n, LARGE),
        ("tierpool", "freeze") => {
            for _ in 0..n {
                let mut buf = pool.get(black_box(SIZE));
                buf.extend_from_slice(&[7; 16]);
                drop(black_box(buf.freeze()));
            }
        }
        ("vec", "freeze") => {
            for _ in 0..n {
                let mut buf = Vec::with_capacity(black_box(SIZE));
                buf.extend_from_slice(&[7; 16]);
                drop(black_box(Bytes::from(buf)));
            }
        }
        ("tierpool", "cross-thread") => {
            cross_thread(n, || pool.get(black_box(SIZE)));
        }
        ("vec", "cross-thread") => {
            cross_thread(n, || Vec::<u8>::with_capacity(black_box(SIZE)));
        }
        _ => panic!("unknown subject or op: {subject} {op}"),
    }
}

/// `n` times `pool.get(size)` and drop. Inlined, so `size` is the
/// caller's constant, as a literal would be (a size read from a variable
/// costs the loop an instruction more).
#[inline(always)]
fn pool_get_drop(pool: &Pool, n: usize, size: usize) {
    for _ in 0..n {
        let buf = pool.get(black_box(size));
        black_box(buf.as_ptr());
        drop(buf);
    }
}

/// [`pool_get_drop`] for `Vec`.
#[inline(always)]
fn vec_get_drop(n: usize, size: usize) {
    for _ in 0..n {
        let buf = Vec::<u8>::with_capacity(black_box(size));
        black_box(buf.as_ptr());
        drop(buf);
    }
}

/// Takes `n` buffers on this thread and drops them on another, `BATCH` at
/// a time.
fn cross_thread<B: Send + 'static>(n: usize, get: impl Fn() -> B) {
    let (to_dropper, batches) = std::sync::mpsc::sync_channel::<Vec<B>>(2);
    let dropper = std::thread::spawn(move || {
        for batch in batches {
            drop(black_box(batch));
        }
    });
    let mut left = n;
    while left > 0 {
        let take = left.min(BATCH);
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..take {
            batch.push(get());
        }
        to_dropper.send(batch).expect("the dropper runs");
        left -= take;
    }
    drop(to_dropper);
    dropper.join().expect("the dropper finishes");
}
