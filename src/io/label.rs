//! Instrumentation of the adapters, per label: how much each pipeline reads,
//! in how many calls and chunks, how long it takes, and the distribution of
//! its final sizes, which also calibrates where its reads start.

use std::io;
use std::time::Duration;

use crate::Pool;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// Samples after which the histogram is halved, so the distribution follows
/// recent traffic.
const DECAY_EVERY: u64 = 1024;
/// Samples before calibration starts to pick a first chunk size.
const MIN_SAMPLES: u64 = 8;
/// The share of recent bodies (by count) that should fit the first chunk.
const CALIBRATION_QUANTILE: f64 = 0.9;

/// The adapter counters of a pool, or of one label.
#[derive(Debug, Default)]
pub(crate) struct AdapterCounters {
    reads: AtomicU64,
    bytes: AtomicU64,
    read_calls: AtomicU64,
    chunks: AtomicU64,
    nanos: AtomicU64,
    errors: AtomicU64,
    too_large: AtomicU64,
    /// The length of the last read that ended, for the next read's plan.
    last_len: AtomicUsize,
}

/// What one adapter call did, recorded when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Activity {
    pub(crate) bytes: usize,
    pub(crate) read_calls: u64,
    pub(crate) chunks: u64,
    pub(crate) elapsed: Duration,
    pub(crate) outcome: Outcome,
}

/// How an adapter call ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    #[default]
    Done,
    /// The input passed the caller's limit.
    TooLarge,
    /// Any other error: the reader's, the allocator's, admission's.
    Failed,
}

impl Activity {
    /// Records how the call ended.
    pub(crate) fn finish<T>(&mut self, result: &io::Result<T>) {
        self.outcome = match result {
            Ok(_) => Outcome::Done,
            Err(e) if crate::Error::from_io(e).is_some_and(crate::Error::is_too_large) => {
                Outcome::TooLarge
            }
            Err(_) => Outcome::Failed,
        };
    }
}

impl AdapterCounters {
    /// Notes the length of a read that ended: the next read sizes its
    /// last chunk by it (see `ChunkPlan::expecting`).
    pub(crate) fn note_len(&self, len: usize) {
        self.last_len.store(len, Ordering::Relaxed);
    }

    /// The length of the last read that ended, if any did.
    pub(crate) fn last_len(&self) -> Option<usize> {
        Some(self.last_len.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    pub(crate) fn record(&self, a: &Activity) {
        let add = |c: &AtomicU64, v: u64| {
            c.fetch_add(v, Ordering::Relaxed);
        };
        match a.outcome {
            Outcome::Done => {
                add(&self.reads, 1);
                add(&self.bytes, a.bytes as u64);
            }
            Outcome::TooLarge => add(&self.too_large, 1),
            Outcome::Failed => add(&self.errors, 1),
        }
        add(&self.read_calls, a.read_calls);
        add(&self.chunks, a.chunks);
        add(
            &self.nanos,
            a.elapsed.as_nanos().min(u64::MAX as u128) as u64,
        );
    }

    pub(crate) fn snapshot(&self) -> AdapterStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AdapterStats {
            reads: load(&self.reads),
            bytes: load(&self.bytes),
            read_calls: load(&self.read_calls),
            chunks: load(&self.chunks),
            time: Duration::from_nanos(load(&self.nanos)),
            errors: load(&self.errors),
            too_large: load(&self.too_large),
        }
    }
}

/// What the adapters did, pool-wide or for one label, in
/// [`Stats`](crate::Stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdapterStats {
    /// Completed reads (`read_to_end` and friends) and finished writers.
    pub reads: u64,
    /// Their bytes.
    pub bytes: u64,
    /// `read` calls made on readers (write calls, for writers).
    pub read_calls: u64,
    /// Pooled chunks taken.
    pub chunks: u64,
    /// Time spent in reads, including waiting on the reader.
    pub time: Duration,
    /// Reads that ended in an error other than a limit (the reader's, the
    /// allocator's, admission's); their chunks went back to the pool.
    pub errors: u64,
    /// Reads refused or stopped because the input passed the caller's limit
    /// ([`Error::TooLarge`](crate::Error::TooLarge)): counted here, not in
    /// `errors`.
    pub too_large: u64,
}

/// One label's figures and final-size distribution, in
/// [`Stats::labels`](crate::Stats::labels).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LabelStats {
    /// The label given to [`Pool::label`].
    pub label: String,
    /// Reads, bytes, calls, chunks, time.
    pub activity: AdapterStats,
    /// Median final size, as the class that holds it (an upper bound).
    pub p50: usize,
    /// 95th percentile of the final size, as the class that holds it.
    pub p95: usize,
    /// The largest final size seen.
    pub max: usize,
    /// Where this label's reads start now: the class that held 90% of
    /// recent bodies, or 0 while it is still learning.
    pub first_chunk: usize,
}

/// The most distinct labels a pool tracks; reads under further labels are
/// counted under [`OTHER_LABEL`]. Labels often come from input (a route, a
/// tenant), and must not grow without bound.
pub const MAX_LABELS: usize = 64;
/// The label that reads past [`MAX_LABELS`] distinct labels are counted under.
pub const OTHER_LABEL: &str = "other";

/// A pool's labels: found by name in O(1), listed in order of first use,
/// at most [`MAX_LABELS`] of them plus [`OTHER_LABEL`].
#[derive(Debug, Default)]
pub(crate) struct Labels {
    inner: crate::sync::Mutex<LabelTable>,
}

#[derive(Debug, Default)]
struct LabelTable {
    by_name: std::collections::HashMap<String, crate::sync::Arc<LabelState>>,
    in_order: Vec<crate::sync::Arc<LabelState>>,
}

impl Labels {
    /// The label named `name`, created on first use; [`OTHER_LABEL`] once
    /// [`MAX_LABELS`] exist.
    pub(crate) fn get(&self, name: &str, classes: usize) -> crate::sync::Arc<LabelState> {
        let mut table = self.inner.lock();
        if let Some(label) = table.by_name.get(name) {
            return label.clone();
        }
        let name = if table.in_order.len() >= MAX_LABELS {
            if let Some(other) = table.by_name.get(OTHER_LABEL) {
                return other.clone();
            }
            OTHER_LABEL
        } else {
            name
        };
        let label = crate::sync::Arc::new(LabelState::new(name.to_string(), classes));
        table.by_name.insert(name.to_string(), label.clone());
        table.in_order.push(label.clone());
        label
    }

    /// Every label's snapshot, in order of first use.
    pub(crate) fn stats(&self, sizes: &[usize]) -> Vec<LabelStats> {
        self.inner
            .lock()
            .in_order
            .iter()
            .map(|l| label_stats(l, sizes))
            .collect()
    }
}

/// A label's live state in the pool.
#[derive(Debug)]
pub(crate) struct LabelState {
    pub(crate) name: String,
    pub(crate) counters: AdapterCounters,
    max: AtomicU64,
    /// Recent final sizes, one bucket per class plus one for oversize.
    histogram: crate::sync::Mutex<Histogram>,
}

#[derive(Debug)]
struct Histogram {
    buckets: Vec<u64>,
    samples: u64,
}

impl LabelState {
    fn new(name: String, classes: usize) -> LabelState {
        LabelState {
            name,
            counters: AdapterCounters::default(),
            max: AtomicU64::new(0),
            histogram: crate::sync::Mutex::new(Histogram {
                buckets: vec![0; classes + 1],
                samples: 0,
            }),
        }
    }

    /// Records one read that ended with `size` bytes in bucket `bucket`.
    fn record_size(&self, size: usize, bucket: usize) {
        self.max.fetch_max(size as u64, Ordering::Relaxed);
        let mut h = self.histogram.lock();
        h.buckets[bucket] += 1;
        h.samples += 1;
        if h.samples % DECAY_EVERY == 0 {
            for b in &mut h.buckets {
                *b /= 2;
            }
        }
    }

    /// The bucket that holds quantile `q` of recent bodies, if it has seen
    /// at least `min_samples` of them.
    fn quantile(&self, q: f64, min_samples: u64) -> Option<usize> {
        let h = self.histogram.lock();
        let total: u64 = h.buckets.iter().sum();
        if h.samples < min_samples.max(1) || total == 0 {
            return None;
        }
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        h.buckets.iter().position(|&n| {
            seen += n;
            seen >= want
        })
    }
}

/// A pipeline's name for its reads: [`Pool::label`], passed to a read
/// with [`ReadOptions::label`](crate::ReadOptions::label).
///
/// Each label learns the distribution of its final sizes. After a few reads,
/// its reads start with a chunk of the class that held 90% of its recent
/// bodies (by count), so typical bodies land in one buffer. Rare outliers
/// move a 90th percentile no more than their share: a single 1 GiB upload
/// does not make every later read of the label start at 1 GiB. The
/// histogram halves every 1024 reads to follow changing traffic.
///
/// ```
/// use tierpool::{Pool, ReadOptions};
///
/// let pool = Pool::new();
/// let thumbnails = ReadOptions::new().label(&pool.label("thumbnail.decode"));
/// for _ in 0..20 {
///     let body = pool.read_with(&[0u8; 150_000][..], &thumbnails)?;
///     assert_eq!(body.len(), 150_000);
/// }
/// // Calibrated: one chunk of the class that holds 150 000 bytes.
/// assert_eq!(pool.read_with(&[0u8; 150_000][..], &thumbnails)?.iter().count(), 1);
/// let stats = pool.stats();
/// assert_eq!(stats.labels[0].label, "thumbnail.decode");
/// assert_eq!(stats.labels[0].max, 150_000);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Label {
    pool: Pool,
    label: crate::sync::Arc<LabelState>,
}

impl Pool {
    /// The reads of the pipeline `label`: counted under that label in
    /// [`Stats::labels`](crate::Stats::labels), and started at its learned
    /// size. Labels are few and long-lived (one per pipeline); asking again
    /// for the same label returns the same one. At most [`MAX_LABELS`]
    /// distinct labels are kept; further ones share [`OTHER_LABEL`].
    pub fn label(&self, label: &str) -> Label {
        Label {
            pool: self.clone(),
            label: self.label_state(label),
        }
    }
}

impl Label {
    /// The label.
    pub fn label(&self) -> &str {
        &self.label.name
    }

    /// The first chunk size this label's reads start with now (0 while it is
    /// still learning).
    pub fn first_chunk(&self) -> usize {
        self.label
            .quantile(CALIBRATION_QUANTILE, MIN_SAMPLES)
            .and_then(|b| self.pool.size_classes().sizes().get(b).copied())
            .unwrap_or(0)
    }

    /// The length of this label's last read that ended, if any did.
    pub(crate) fn last_len(&self) -> Option<usize> {
        self.label.counters.last_len()
    }

    /// Where this label's reads start: its learned size, if any.
    pub(crate) fn hint(&self) -> Option<usize> {
        Some(self.first_chunk()).filter(|&n| n > 0)
    }

    /// Counts a call under the label, and the final size of what was read
    /// whole in its distribution (the pool's own count is the caller's).
    pub(crate) fn note(&self, activity: &Activity, len: Option<usize>) {
        self.label.counters.record(activity);
        if let Some(len) = len {
            self.label.counters.note_len(len);
            let classes = self.pool.size_classes();
            let bucket = classes.index_for(len).unwrap_or(classes.len());
            self.label.record_size(len, bucket);
        }
    }
}

/// The snapshot of a label for `Stats`.
fn label_stats(label: &LabelState, sizes: &[usize]) -> LabelStats {
    let max = label.max.load(Ordering::Relaxed) as usize;
    // A bucket's size: its class, or the largest size seen for oversize.
    let size = |bucket: Option<usize>| bucket.map_or(0, |b| sizes.get(b).copied().unwrap_or(max));
    LabelStats {
        label: label.name.clone(),
        activity: label.counters.snapshot(),
        p50: size(label.quantile(0.5, 1)),
        p95: size(label.quantile(0.95, 1)),
        max,
        first_chunk: label
            .quantile(CALIBRATION_QUANTILE, MIN_SAMPLES)
            .and_then(|b| sizes.get(b).copied())
            .unwrap_or(0),
    }
}
