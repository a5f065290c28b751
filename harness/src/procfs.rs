//! Memory figures of a process from `/proc/<pid>/status`.
#![allow(dead_code)]

/// A `kB` field of the status file (`"VmRSS:"`, `"VmHWM:"`) of process
/// `pid`, or of this process for `None`; `None` if it cannot be read.
pub fn status_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.strip_prefix(field)?
            .trim()
            .strip_suffix(" kB")?
            .parse()
            .ok()
    })
}
