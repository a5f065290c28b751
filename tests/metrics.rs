//! Telemetry (feature `metrics`): the pool's figures through the `metrics`
//! facade, checked with `metrics-util`'s debugging recorder, and rendered
//! by the Prometheus exporter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tierpool::{MemoryLimit, Pool, SizeClasses};

/// The published figures as `name{labels} -> value`, labels sorted.
fn figures(snapshotter: &Snapshotter) -> BTreeMap<String, f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let value = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => f64::NAN,
            };
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

#[test]
fn publish_metrics_reports_the_contract_s_figures() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = Pool::builder()
        .name("thumbnails")
        .size_classes(SizeClasses::from_sizes(&[4096, 65536]).unwrap())
        .memory_limit(MemoryLimit::Unlimited)
        .max_in_use_bytes(100_000)
        .build();
    let held = pool.get(4096);
    drop(pool.get(4096)); // a miss, returned
    drop(pool.get(4096)); // a hit
    assert!(pool.try_get(65536).is_ok());
    let _big = pool.get(65536);
    assert!(
        pool.try_get(65536).is_err(),
        "refused: over the in-use budget"
    );
    assert!(pool.read_to_end_limited(&[0u8; 100][..], 10).is_err());
    metrics::with_local_recorder(&recorder, || pool.publish_metrics());
    let f = figures(&snapshotter);
    let get = |k: &str| {
        *f.get(k)
            .unwrap_or_else(|| panic!("{k} missing from {f:#?}"))
    };
    let stats = pool.stats();
    assert_eq!(
        get("tierpool_in_use_bytes{pool=thumbnails}"),
        stats.in_use_bytes as f64
    );
    assert_eq!(
        get("tierpool_retained_bytes{pool=thumbnails}"),
        stats.retained_bytes as f64
    );
    // Published even at 0: no limit here.
    assert_eq!(get("tierpool_memory_limit_bytes{pool=thumbnails}"), 0.0);
    assert_eq!(get("tierpool_working_set_bytes{pool=thumbnails}"), 0.0);
    assert_eq!(get("tierpool_pressure{pool=thumbnails}"), 0.0);
    // Two gets while one was held, and the limited read's chunk.
    assert_eq!(stats.classes[0].misses, 3);
    assert_eq!(
        get("tierpool_misses_total{class=4096,pool=thumbnails}"),
        3.0
    );
    assert_eq!(get("tierpool_hits_total{class=4096,pool=thumbnails}"), 1.0);
    assert_eq!(get("tierpool_hits_total{class=65536,pool=thumbnails}"), 1.0);
    assert_eq!(get("tierpool_refused_total{pool=thumbnails}"), 1.0);
    // The refusal first freed the idle 4 KiB buffer.
    assert_eq!(stats.trimmed_bytes, 4096);
    assert_eq!(get("tierpool_trimmed_bytes_total{pool=thumbnails}"), 4096.0);
    assert_eq!(
        get("tierpool_released_bytes_total{pool=thumbnails}"),
        stats.released_bytes as f64
    );
    assert_eq!(
        get("tierpool_adapter_too_large_total{pool=thumbnails}"),
        1.0
    );
    assert_eq!(get("tierpool_adapter_errors_total{pool=thumbnails}"), 0.0);
    // No mapped class here: the large tier's series are there, at 0.
    assert_eq!(get("tierpool_large_idle_bytes{pool=thumbnails}"), 0.0);
    assert_eq!(get("tierpool_large_mappings{pool=thumbnails}"), 0.0);
    assert_eq!(get("tierpool_large_assembled_total{pool=thumbnails}"), 0.0);
    assert_eq!(
        get("tierpool_large_moved_bytes_total{pool=thumbnails}"),
        0.0
    );
    assert_eq!(
        get("tierpool_large_fresh_bytes_total{pool=thumbnails}"),
        0.0
    );
    drop(held);

    // Counters are absolute: publishing again after more traffic moves
    // them to the new totals, not by a second copy of the old ones.
    drop(pool.get(4096));
    pool.trim();
    metrics::with_local_recorder(&recorder, || pool.publish_metrics());
    let f = figures(&snapshotter);
    assert_eq!(
        f["tierpool_hits_total{class=4096,pool=thumbnails}"],
        pool.stats().classes[0].hits as f64
    );
    assert!(pool.stats().trimmed_bytes > 4096);
    assert_eq!(
        f["tierpool_trimmed_bytes_total{pool=thumbnails}"],
        pool.stats().trimmed_bytes as f64
    );
    assert!(f["tierpool_trimmed_bytes_total{pool=thumbnails}"] > 0.0);
}

#[test]
fn unnamed_pools_get_distinct_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (a, b) = (Pool::new(), Pool::new());
    drop(a.get(100));
    metrics::with_local_recorder(&recorder, || {
        a.publish_metrics();
        b.publish_metrics();
    });
    let pools: std::collections::BTreeSet<String> = figures(&snapshotter)
        .keys()
        .filter(|k| k.starts_with("tierpool_in_use_bytes"))
        .cloned()
        .collect();
    assert_eq!(pools.len(), 2, "{pools:?}");
    assert!(pools.iter().all(|k| k.contains("pool=pool-")), "{pools:?}");
}

#[test]
fn the_trimmer_publishes_on_every_tick_and_prometheus_renders_it() {
    // The trimmer runs on its own thread: this needs the global recorder,
    // the only one this test binary installs.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only global recorder here");
    let pool = Pool::builder()
        .name("ticked")
        .trim_interval(Duration::from_millis(20))
        .build();
    for _ in 0..3 {
        drop(pool.get(300_000));
    }
    let class = pool.size_classes().class_for(300_000).unwrap();
    let misses = format!("tierpool_misses_total{{pool=\"ticked\",class=\"{class}\"}} 1");
    let hits = format!("tierpool_hits_total{{pool=\"ticked\",class=\"{class}\"}} 2");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = handle.render();
        // Published by a tick (nobody called publish_metrics), with the
        // idle buffer trimmed by then.
        if text.contains(&misses) && text.contains(&hits) {
            assert!(
                text.contains("# TYPE tierpool_in_use_bytes gauge"),
                "{text}"
            );
            assert!(text.contains("# HELP tierpool_pressure"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no tick published:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn the_large_tier_s_figures_are_published() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = Pool::builder()
        .name("frames")
        .size_classes(SizeClasses::from_sizes(&[1 << 20, 2 << 20]).unwrap())
        .memory_limit(MemoryLimit::Unlimited)
        .thread_cache_bytes(0)
        .build();
    drop(pool.get(1 << 20)); // 1 MiB of idle pages
    let big = pool.get(2 << 20); // assembled: 1 MiB moved, 1 MiB fresh
    metrics::with_local_recorder(&recorder, || pool.publish_metrics());
    let f = figures(&snapshotter);
    let stats = pool.stats();
    assert_eq!(stats.large.assembled, 1, "{stats}");
    assert_eq!(f["tierpool_large_assembled_total{pool=frames}"], 1.0);
    assert_eq!(
        f["tierpool_large_moved_bytes_total{pool=frames}"],
        (1 << 20) as f64
    );
    assert_eq!(
        f["tierpool_large_fresh_bytes_total{pool=frames}"],
        (1 << 20) as f64
    );
    assert_eq!(
        f["tierpool_large_mappings{pool=frames}"],
        stats.large.mappings as f64
    );
    assert_eq!(f["tierpool_large_idle_bytes{pool=frames}"], 0.0);
    drop(big); // the hot block of its class
    pool.get(1 << 20).resize(1 << 20, 1); // drains it into the runs, cuts 1 MiB
    metrics::with_local_recorder(&recorder, || pool.publish_metrics());
    let f = figures(&snapshotter);
    assert_eq!(
        f["tierpool_large_idle_bytes{pool=frames}"],
        (1 << 20) as f64
    );
    assert_eq!(f["tierpool_retained_bytes{pool=frames}"], (2 << 20) as f64);
}

#[test]
fn the_memory_report_is_published_by_kind() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = Pool::builder()
        .name("report")
        .memory_limit(MemoryLimit::Unlimited)
        .build();
    let mut held = pool.get(1 << 20);
    held.resize(1 << 20, 1);
    let report = tierpool::MemoryReport::read().unwrap();
    metrics::with_local_recorder(&recorder, || report.publish_metrics());
    let f = figures(&snapshotter);
    for kind in [
        "in_use",
        "idle",
        "other_anon",
        "allocator_free",
        "active_file",
        "kernel",
        "inactive_file",
        "working_set",
        "limit",
    ] {
        let key = format!("tierpool_memory_bytes{{kind={kind}}}");
        assert!(f.contains_key(&key), "{key} missing from {f:#?}");
    }
    assert!(f["tierpool_memory_bytes{kind=in_use}"] >= (1 << 20) as f64);
    assert_eq!(
        f["tierpool_memory_bytes{kind=working_set}"],
        report.working_set as f64
    );
    // Without a limit the pool's working-set gauge says 0, not a
    // cgroup's figure that other processes share.
    metrics::with_local_recorder(&recorder, || pool.publish_metrics());
    let f = figures(&snapshotter);
    assert_eq!(f["tierpool_working_set_bytes{pool=report}"], 0.0);
}

#[test]
fn per_class_series_are_the_classes_in_use_unless_all_are_asked_for() {
    let count = |all: bool| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let pool = Pool::builder()
            .name(if all { "all" } else { "used" })
            .memory_limit(MemoryLimit::Unlimited)
            .metrics_per_class(all)
            .build();
        drop(pool.get(4096));
        drop(pool.get(1 << 20));
        metrics::with_local_recorder(&recorder, || pool.publish_metrics());
        let f = figures(&snapshotter);
        assert!(f.contains_key(&format!(
            "tierpool_waiting_requests{{pool={}}}",
            if all { "all" } else { "used" }
        )));
        f.keys()
            .filter(|k| k.starts_with("tierpool_hits_total{"))
            .count()
    };
    assert_eq!(count(false), 2, "the two classes that served");
    assert_eq!(count(true), tierpool::SizeClasses::default().len());
}

#[test]
fn the_global_allocator_s_figures_are_published() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    static GLOBAL: tierpool::GlobalPool = tierpool::GlobalPool::new();
    metrics::with_local_recorder(&recorder, || GLOBAL.publish_metrics());
    let f = figures(&snapshotter);
    for name in [
        "tierpool_global_in_use_bytes{}",
        "tierpool_global_idle_bytes{}",
        "tierpool_global_mappings{}",
        "tierpool_global_allocations_total{}",
        "tierpool_global_reused_total{}",
        "tierpool_global_fresh_bytes_total{}",
        "tierpool_global_trimmed_bytes_total{}",
    ] {
        assert!(f.contains_key(name), "{name} missing from {f:#?}");
    }
}
