//! Telemetry through the `metrics` facade (feature `metrics`): a pool's
//! figures published on every trimmer tick and on
//! [`Pool::publish_metrics`], never from the fast path.
//!
//! The figures are read from [`Pool::stats`] and published whole: gauges are
//! set, counters are set to their absolute totals, so a publish after a
//! missed one loses nothing and two publishes of the same figures agree.

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

use crate::{Pool, Pressure, Stats};

/// Gauges, label `pool`.
const RETAINED: &str = "tierpool_retained_bytes";
const IN_USE: &str = "tierpool_in_use_bytes";
const WORKING_SET: &str = "tierpool_working_set_bytes";
const MEMORY_LIMIT: &str = "tierpool_memory_limit_bytes";
const PRESSURE: &str = "tierpool_pressure";
const RETENTION_LIMIT: &str = "tierpool_retention_limit_bytes";
const WAITING: &str = "tierpool_waiting_requests";
const SET_ASIDE: &str = "tierpool_set_aside_bytes";
/// Counters, labels `pool` and `class`.
const HITS: &str = "tierpool_hits_total";
const MISSES: &str = "tierpool_misses_total";
const DROPPED_FULL: &str = "tierpool_dropped_full_total";
/// Counters, label `pool`.
const TRIMMED: &str = "tierpool_trimmed_bytes_total";
const RELEASED: &str = "tierpool_released_bytes_total";
const REFUSED: &str = "tierpool_refused_total";
const OVERSIZE: &str = "tierpool_oversize_allocations_total";
const READS: &str = "tierpool_adapter_reads_total";
const READ_BYTES: &str = "tierpool_adapter_bytes_total";
const READ_ERRORS: &str = "tierpool_adapter_errors_total";
const TOO_LARGE: &str = "tierpool_adapter_too_large_total";
const LARGE_IDLE: &str = "tierpool_large_idle_bytes";
const LARGE_MAPPINGS: &str = "tierpool_large_mappings";
const LARGE_ASSEMBLED: &str = "tierpool_large_assembled_total";
const LARGE_MOVED: &str = "tierpool_large_moved_bytes_total";
const LARGE_FRESH: &str = "tierpool_large_fresh_bytes_total";
/// Gauge, label `kind` (process-wide, no `pool` label).
const MEMORY: &str = "tierpool_memory_bytes";
/// The global allocator's tier (process-wide, no label).
const GLOBAL_IN_USE: &str = "tierpool_global_in_use_bytes";
const GLOBAL_IDLE: &str = "tierpool_global_idle_bytes";
const GLOBAL_MAPPINGS: &str = "tierpool_global_mappings";
const GLOBAL_ALLOCATIONS: &str = "tierpool_global_allocations_total";
const GLOBAL_REUSED: &str = "tierpool_global_reused_total";
const GLOBAL_FRESH: &str = "tierpool_global_fresh_bytes_total";
const GLOBAL_TRIMMED: &str = "tierpool_global_trimmed_bytes_total";

#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
impl Pool {
    /// Publishes the pool's figures through the `metrics` facade now (the
    /// trimmer also does on every tick), to whatever recorder the
    /// application installed. Label `pool` is the pool's
    /// [`name`](crate::PoolBuilder::name), or `pool-<id>` for an unnamed one.
    ///
    /// Gauges: `tierpool_retained_bytes`, `tierpool_in_use_bytes`,
    /// `tierpool_working_set_bytes` and `tierpool_memory_limit_bytes` (0
    /// without a limit or a sample), `tierpool_pressure` (0 normal,
    /// 1 elevated, 2 critical), `tierpool_retention_limit_bytes`, and the
    /// large tier's `tierpool_large_idle_bytes` and `tierpool_large_mappings`.
    ///
    /// Counters, per class (label `class`, the capacity in bytes):
    /// `tierpool_hits_total`, `tierpool_misses_total`,
    /// `tierpool_dropped_full_total`. Per pool: `tierpool_trimmed_bytes_total`,
    /// `tierpool_released_bytes_total`, `tierpool_refused_total`,
    /// `tierpool_oversize_allocations_total`, and the adapters'
    /// `tierpool_adapter_reads_total`, `tierpool_adapter_bytes_total`,
    /// `tierpool_adapter_errors_total`, `tierpool_adapter_too_large_total`;
    /// the large tier's `tierpool_large_assembled_total` (blocks assembled
    /// from moved idle pages), `tierpool_large_moved_bytes_total` and
    /// `tierpool_large_fresh_bytes_total` (what assemblies moved, and what
    /// they had to fault fresh).
    ///
    /// Every figure is published, zeros included, so dashboards see the
    /// series from the first publish.
    ///
    /// ```
    /// let pool = tierpool::Pool::builder().name("thumbnails").build();
    /// drop(pool.get(4096));
    /// pool.publish_metrics(); // with no recorder installed: a no-op
    /// ```
    pub fn publish_metrics(&self) {
        self.publish_figures();
    }
}

/// Describes the metrics (units and help text for the exporter) to the
/// recorder in force. On every publish, not once per process: the recorder
/// may have changed (a local recorder, one installed late), and a publish
/// is once a tick.
fn describe() {
    {
        describe_gauge!(RETAINED, Unit::Bytes, "Idle capacity held in every tier.");
        describe_gauge!(
            IN_USE,
            Unit::Bytes,
            "Capacity handed out and not yet returned."
        );
        describe_gauge!(
            WORKING_SET,
            Unit::Bytes,
            "The container's working set at the last sample (0 without a limit)."
        );
        describe_gauge!(
            MEMORY_LIMIT,
            Unit::Bytes,
            "The memory limit the pool steers by (0: none)."
        );
        describe_gauge!(
            PRESSURE,
            "Memory pressure: 0 normal, 1 elevated, 2 critical."
        );
        describe_gauge!(
            RETENTION_LIMIT,
            Unit::Bytes,
            "The retention limit in force (lowered under pressure)."
        );
        describe_gauge!(
            WAITING,
            "Requests waiting in admission's queue (a signal to scale out on)."
        );
        describe_gauge!(
            SET_ASIDE,
            Unit::Bytes,
            "Bytes admitted and not allocated yet (permits, requests on their way)."
        );
        describe_counter!(HITS, "Requests served by an idle buffer, per class.");
        describe_counter!(MISSES, "Requests that allocated, per class.");
        describe_counter!(
            DROPPED_FULL,
            "Returned buffers freed because the pool was full, per class."
        );
        describe_counter!(TRIMMED, Unit::Bytes, "Idle bytes freed by trimming.");
        describe_counter!(
            RELEASED,
            Unit::Bytes,
            "Bytes whose pages went straight back to the OS."
        );
        describe_counter!(REFUSED, "Requests admission control refused.");
        describe_counter!(
            OVERSIZE,
            "Requests above the largest class, served exactly."
        );
        describe_counter!(READS, "Completed adapter reads and writers.");
        describe_counter!(READ_BYTES, Unit::Bytes, "Bytes of completed adapter reads.");
        describe_counter!(
            READ_ERRORS,
            "Adapter reads that failed (the reader's, the allocator's or admission's error)."
        );
        describe_counter!(TOO_LARGE, "Adapter reads refused for passing their limit.");
        describe_gauge!(
            LARGE_IDLE,
            Unit::Bytes,
            "Idle bytes in the large tier's runs (mapped classes; hot blocks are in retained bytes)."
        );
        describe_gauge!(LARGE_MAPPINGS, "Mappings the large tier tracks.");
        describe_counter!(
            LARGE_ASSEMBLED,
            "Large blocks assembled from idle pages moved together."
        );
        describe_counter!(
            LARGE_MOVED,
            Unit::Bytes,
            "Idle bytes moved into assembled large blocks."
        );
        describe_counter!(
            LARGE_FRESH,
            Unit::Bytes,
            "Bytes of assembled large blocks that no idle page covered."
        );
    }
}

/// Publishes a pool's figures, `stats`, under the label `pool="<name>"`;
/// per class only for the classes in use unless `all_classes`. Runs on the
/// trimmer thread after each tick (inside its `catch_unwind`, so a
/// panicking recorder cannot stop it) and from `publish_metrics`.
pub(crate) fn publish(stats: &Stats, name: &str, all_classes: bool) {
    describe();
    let pool = name.to_owned();
    let set = |name: &'static str, value: f64| {
        gauge!(name, "pool" => pool.clone()).set(value);
    };
    set(RETAINED, stats.retained_bytes as f64);
    set(IN_USE, stats.in_use_bytes as f64);
    // Without a limit there is no container to speak of: the cgroup's
    // figure would be other processes' too.
    set(
        WORKING_SET,
        stats
            .memory_limit_bytes
            .and(stats.memory.as_ref())
            .map_or(0, |m| m.working_set) as f64,
    );
    set(MEMORY_LIMIT, stats.memory_limit_bytes.unwrap_or(0) as f64);
    set(
        PRESSURE,
        match stats.pressure {
            Pressure::Normal => 0.0,
            Pressure::Elevated => 1.0,
            Pressure::Critical => 2.0,
        },
    );
    set(RETENTION_LIMIT, stats.retention_limit_bytes as f64);
    set(WAITING, stats.waiting as f64);
    set(SET_ASIDE, stats.set_aside_bytes as f64);
    set(LARGE_IDLE, stats.large.idle_bytes as f64);
    set(LARGE_MAPPINGS, stats.large.mappings as f64);
    // Per class: the classes that ever served a request or hold memory,
    // unless every class was asked for (`PoolBuilder::metrics_per_class`):
    // 49 default classes times three counters is many series for nothing.
    for class in stats
        .classes
        .iter()
        .filter(|c| all_classes || c.hits + c.misses + c.returns > 0 || c.retained_bytes > 0)
    {
        let labels = [
            ("pool", pool.clone()),
            ("class", class.capacity.to_string()),
        ];
        counter!(HITS, &labels).absolute(class.hits);
        counter!(MISSES, &labels).absolute(class.misses);
        counter!(DROPPED_FULL, &labels).absolute(class.dropped_full);
    }
    let total = |name: &'static str, value: u64| {
        counter!(name, "pool" => pool.clone()).absolute(value);
    };
    total(TRIMMED, stats.trimmed_bytes);
    total(RELEASED, stats.released_bytes);
    total(REFUSED, stats.refused);
    total(OVERSIZE, stats.oversize_allocations);
    total(READS, stats.adapters.reads);
    total(READ_BYTES, stats.adapters.bytes);
    total(READ_ERRORS, stats.adapters.errors);
    total(TOO_LARGE, stats.adapters.too_large);
    total(LARGE_ASSEMBLED, stats.large.assembled);
    total(LARGE_MOVED, stats.large.moved_bytes);
    total(LARGE_FRESH, stats.large.assembled_fresh_bytes);
    publish_report_now_and_then();
}

/// Publishes [`MemoryReport`](crate::MemoryReport) as
/// `tierpool_memory_bytes{kind=...}`, at most once a second however many
/// pools publish.
fn publish_report_now_and_then() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST.swap(now, Ordering::Relaxed) == now {
        return;
    }
    if let Ok(report) = crate::MemoryReport::read() {
        report.publish_metrics();
    }
    publish_global(&crate::global::stats());
}

/// Publishes the global allocator's figures (zeros when it is not
/// installed).
fn publish_global(stats: &crate::GlobalStats) {
    describe_gauge!(GLOBAL_IN_USE, Unit::Bytes, "GlobalPool: bytes handed out.");
    describe_gauge!(
        GLOBAL_IDLE,
        Unit::Bytes,
        "GlobalPool: idle pages kept for reuse."
    );
    describe_gauge!(
        GLOBAL_MAPPINGS,
        "GlobalPool: kernel mappings its tier keeps."
    );
    describe_counter!(
        GLOBAL_ALLOCATIONS,
        "GlobalPool: allocations its tier served."
    );
    describe_counter!(
        GLOBAL_REUSED,
        "GlobalPool: allocations served by idle pages alone."
    );
    describe_counter!(GLOBAL_FRESH, Unit::Bytes, "GlobalPool: bytes mapped fresh.");
    describe_counter!(
        GLOBAL_TRIMMED,
        Unit::Bytes,
        "GlobalPool: idle bytes given back to the OS."
    );
    gauge!(GLOBAL_IN_USE).set(stats.in_use_bytes as f64);
    gauge!(GLOBAL_IDLE).set(stats.idle_bytes as f64);
    gauge!(GLOBAL_MAPPINGS).set(stats.mappings as f64);
    counter!(GLOBAL_ALLOCATIONS).absolute(stats.allocations);
    counter!(GLOBAL_REUSED).absolute(stats.reused);
    counter!(GLOBAL_FRESH).absolute(stats.fresh_bytes);
    counter!(GLOBAL_TRIMMED).absolute(stats.trimmed_bytes);
}

#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
impl<A> crate::GlobalPool<A> {
    /// Publishes the global allocator's figures through the `metrics`
    /// facade: gauges `tierpool_global_in_use_bytes`,
    /// `tierpool_global_idle_bytes`, `tierpool_global_mappings`; counters
    /// `tierpool_global_allocations_total`, `tierpool_global_reused_total`,
    /// `tierpool_global_fresh_bytes_total`,
    /// `tierpool_global_trimmed_bytes_total`. Every pool's publish does this
    /// too, at most once a second.
    pub fn publish_metrics(&self) {
        publish_global(&self.stats());
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
impl crate::MemoryReport {
    /// Publishes the report as gauges `tierpool_memory_bytes{kind=...}`
    /// (kinds: `in_use`, `idle`, `other_anon`, `allocator_free`,
    /// `active_file`, `kernel`, `inactive_file`, `working_set`, `limit`),
    /// process-wide. Every pool's publish does this too, at most once a
    /// second.
    pub fn publish_metrics(&self) {
        describe_gauge!(
            MEMORY,
            Unit::Bytes,
            "Where the working set is (kind: in_use, idle, other_anon, allocator_free, active_file, kernel, inactive_file, working_set, limit)."
        );
        for (kind, bytes) in self.parts() {
            gauge!(MEMORY, "kind" => kind).set(bytes as f64);
        }
        gauge!(MEMORY, "kind" => "working_set").set(self.working_set as f64);
        gauge!(MEMORY, "kind" => "limit").set(self.limit.unwrap_or(0) as f64);
    }
}
