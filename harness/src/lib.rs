//! What tierpool's harnesses share: memory cgroups, `/proc` readings,
//! charts, test images, the mixed workload of the benchmarks, and the
//! global allocator of the per-allocator binaries.
//!
//! Three modules are the library's own files, included so that the
//! harnesses run exactly what the service and the tests do: the service's
//! work (`examples/common/work.rs`, which the main job runs beside plain
//! `Vec`) and the tests' HTTP client and PNG helper (`tests/common/`).

pub mod cgroup;
pub mod chart;
mod global_alloc;
#[path = "../../tests/common/http.rs"]
pub mod http;
pub mod photo;
#[path = "../../tests/common/png.rs"]
pub mod png;
pub mod procfs;
#[path = "../../examples/common/work.rs"]
pub mod work;
pub mod workload;
