//! Reading the container's memory the way cadvisor and the kubelet do.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The kernel's memory events for a cgroup: how often it hit its limits
/// and what the OOM killer did (v2 `memory.events`; on v1, `failcnt` as
/// `max` and `memory.oom_control`'s `oom_kill`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryEvents {
    /// Times usage went over `memory.high` (v2).
    pub high: u64,
    /// Times usage hit the limit (v2 `max`; v1 `failcnt`).
    pub max: u64,
    /// Times the OOM killer was invoked (v2).
    pub oom: u64,
    /// Processes the OOM killer killed.
    pub oom_kill: u64,
}

/// Pressure stall information: the share of wall time in which some (or
/// all) tasks of the cgroup waited for memory, in percent, averaged over
/// 10 and 60 seconds (v2 `memory.pressure`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct PressureStall {
    /// Some task stalled, last 10 s.
    pub some_avg10: f64,
    /// Some task stalled, last 60 s.
    pub some_avg60: f64,
    /// Every task stalled, last 10 s.
    pub full_avg10: f64,
    /// Every task stalled, last 60 s.
    pub full_avg60: f64,
}

// `PressureStall` holds floats, read from the kernel: never NaN.
impl Eq for PressureStall {}

/// v1's "no limit": the page counter's maximum times the page size, or
/// anything near it (`9223372036854771712` on 4 KiB pages).
const V1_UNLIMITED: u64 = 1 << 62;

/// The container's memory as its cgroup reports it, read like cadvisor:
/// the numbers the kubelet evicts on and the OOM killer acts on.
///
/// `working_set = usage − inactive_file` (never below zero): resident
/// memory plus the *active* page cache of every file the container read or
/// wrote. That is `container_memory_working_set_bytes`.
///
/// ```no_run
/// let mem = tierpool::ContainerMemory::read()?;
/// if let Some(limit) = mem.limit {
///     println!("{} of {} bytes", mem.working_set, limit);
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContainerMemory {
    /// The memory limit in bytes; `None` when the cgroup (and every
    /// ancestor) sets none.
    pub limit: Option<u64>,
    /// The cgroup's memory usage in bytes (v2 `memory.current`, v1
    /// `memory.usage_in_bytes`).
    pub usage: u64,
    /// `usage − inactive_file`: what the kubelet compares with the limit.
    pub working_set: u64,
    /// Anonymous memory (heap, stacks, mapped buffers) in bytes.
    pub anon: u64,
    /// Page cache recently used, counted in the working set.
    pub active_file: u64,
    /// Page cache not recently used, which the kernel reclaims first.
    pub inactive_file: u64,
    /// The soft limit above which the kernel throttles and reclaims (v2
    /// `memory.high`, which Kubernetes memory QoS sets); `None` when unset.
    /// The pool's pressure is at least elevated above it.
    pub high: Option<u64>,
    /// The kernel's memory events for the cgroup since it was made.
    pub events: MemoryEvents,
    /// Pressure stall information for the cgroup (v2 `memory.pressure`),
    /// where the kernel provides it.
    pub stall: Option<PressureStall>,
    /// 1 or 2.
    pub cgroup_version: u8,
    /// The cgroup's directory.
    pub path: PathBuf,
}

impl ContainerMemory {
    /// Reads this process's memory cgroup: found through `/proc/self/cgroup`
    /// and `/proc/self/mountinfo` (nested paths as in a pod), cgroup v1 (the
    /// `memory` controller) or v2. The limit is the smallest of the cgroup's
    /// and its ancestors'.
    ///
    /// # Errors
    ///
    /// `NotFound` when the process has no memory cgroup (not Linux, or no
    /// cgroup file system mounted); the I/O error of a file that cannot be
    /// read; `InvalidData` for a file that does not parse.
    pub fn read() -> io::Result<ContainerMemory> {
        ContainerMemory::read_under(Path::new("/"))
    }

    /// Like [`read`](Self::read), with every absolute path taken under
    /// `root` (`root/proc/self/cgroup`, mount points under `root`): for
    /// tests with fixture trees, and for reading a chroot.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn read_under(root: &Path) -> io::Result<ContainerMemory> {
        let under = |p: &str| root.join(p.trim_start_matches('/'));
        let cgroups = fs::read_to_string(under("/proc/self/cgroup"))?;
        let mountinfo = fs::read_to_string(under("/proc/self/mountinfo"))?;
        let (version, dir, mount) = find_memory_cgroup(&cgroups, &mountinfo).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "this process has no memory cgroup (no v1 memory controller and no v2 \
                 hierarchy in /proc/self/cgroup and /proc/self/mountinfo)",
            )
        })?;
        let dir = under(&dir);
        let mount = under(&mount);
        match version {
            1 => read_v1(dir),
            _ => read_v2(dir, &mount),
        }
    }
}

/// Finds the memory cgroup: `(version, directory, mount point)`, both
/// absolute paths in the process's view. The v1 memory controller wins
/// over the v2 hierarchy (a hybrid system charges memory to v1).
fn find_memory_cgroup(cgroups: &str, mountinfo: &str) -> Option<(u8, String, String)> {
    let mut v1_path = None;
    let mut v2_path = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2_path = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1_path = Some(path.to_string());
        }
    }
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let (Some(fstype), _, Some(superopts)) = (right.next(), right.next(), right.next()) else {
            continue;
        };
        if fields.len() < 5 {
            continue;
        }
        let (root, mount_point) = (unescape(fields[3]), unescape(fields[4]));
        if fstype == "cgroup" && superopts.split(',').any(|o| o == "memory") {
            if let Some(path) = &v1_path {
                return Some((1, join_cgroup(&mount_point, &root, path), mount_point));
            }
        }
        if fstype == "cgroup2" && v1_path.is_none() {
            if let Some(path) = &v2_path {
                return Some((2, join_cgroup(&mount_point, &root, path), mount_point));
            }
        }
    }
    None
}

/// The directory of cgroup `path` on a mount of the hierarchy's `root` at
/// `mount_point`. Inside a cgroup namespace the process sees `/` for its own
/// cgroup, which is the mount's root.
fn join_cgroup(mount_point: &str, root: &str, path: &str) -> String {
    let relative = if root == "/" {
        path
    } else {
        path.strip_prefix(root).unwrap_or("/")
    };
    let relative = relative.trim_start_matches('/');
    if relative.is_empty() {
        mount_point.to_string()
    } else {
        format!("{}/{}", mount_point.trim_end_matches('/'), relative)
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(octal, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_v1(dir: PathBuf) -> io::Result<ContainerMemory> {
    let limit = read_u64(&dir.join("memory.limit_in_bytes"))?;
    let usage = read_u64(&dir.join("memory.usage_in_bytes"))?;
    let stat = read_stat(&dir.join("memory.stat"))?;
    let field = |name: &str| stat.iter().find(|(k, _)| k == name).map(|&(_, v)| v);
    // The `total_` fields include descendants; v1 cgroups with
    // use_hierarchy have them. Older kernels without them: the local ones.
    let pick = |name: &str| {
        field(&format!("total_{name}"))
            .or_else(|| field(name))
            .unwrap_or(0)
    };
    let hierarchical = field("hierarchical_memory_limit").unwrap_or(u64::MAX);
    let limit = limit.min(hierarchical);
    let inactive_file = pick("inactive_file");
    Ok(ContainerMemory {
        limit: (limit < V1_UNLIMITED).then_some(limit),
        usage,
        working_set: usage.saturating_sub(inactive_file),
        anon: field("total_rss")
            .or_else(|| field("rss"))
            .unwrap_or_else(|| pick("active_anon") + pick("inactive_anon")),
        active_file: pick("active_file"),
        inactive_file,
        high: None,
        events: MemoryEvents {
            max: read_u64(&dir.join("memory.failcnt")).unwrap_or(0),
            oom_kill: fs::read_to_string(dir.join("memory.oom_control"))
                .map(|t| keyed(&t, "oom_kill"))
                .unwrap_or(0),
            ..MemoryEvents::default()
        },
        stall: None,
        cgroup_version: 1,
        path: dir,
    })
}

/// The number after `key ` on its own line of `text`, or 0.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// v2 `memory.pressure`: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0`
/// and the same for `full`.
fn read_stall(path: &Path) -> Option<PressureStall> {
    let text = fs::read_to_string(path).ok()?;
    let avg = |kind: &str, window: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(kind))?;
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(window)?.strip_prefix('=')?.parse().ok())
    };
    Some(PressureStall {
        some_avg10: avg("some", "avg10")?,
        some_avg60: avg("some", "avg60")?,
        full_avg10: avg("full", "avg10").unwrap_or(0.0),
        full_avg60: avg("full", "avg60").unwrap_or(0.0),
    })
}

fn read_v2(dir: PathBuf, mount: &Path) -> io::Result<ContainerMemory> {
    let usage = read_u64(&dir.join("memory.current"))?;
    let stat = read_stat(&dir.join("memory.stat"))?;
    let field = |name: &str| stat.iter().find(|(k, _)| k == name).map_or(0, |&(_, v)| v);
    // The effective limit is the smallest `memory.max` from here up to the
    // hierarchy's root (the root itself has none).
    let mut limit: Option<u64> = None;
    let mut at = dir.as_path();
    loop {
        match fs::read_to_string(at.join("memory.max")) {
            Ok(text) => {
                let text = text.trim();
                if text != "max" {
                    let v = parse_u64(text, &at.join("memory.max"))?;
                    limit = Some(limit.map_or(v, |l| l.min(v)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if at == dir => return Err(e),
            Err(_) => {}
        }
        if at == mount {
            break;
        }
        match at.parent() {
            Some(parent) if parent.starts_with(mount) => at = parent,
            _ => break,
        }
    }
    let inactive_file = field("inactive_file");
    Ok(ContainerMemory {
        limit,
        usage,
        working_set: usage.saturating_sub(inactive_file),
        anon: field("anon"),
        active_file: field("active_file"),
        inactive_file,
        high: fs::read_to_string(dir.join("memory.high"))
            .ok()
            .and_then(|t| t.trim().parse().ok()),
        events: fs::read_to_string(dir.join("memory.events"))
            .map(|t| MemoryEvents {
                high: keyed(&t, "high"),
                max: keyed(&t, "max"),
                oom: keyed(&t, "oom"),
                oom_kill: keyed(&t, "oom_kill"),
            })
            .unwrap_or_default(),
        stall: read_stall(&dir.join("memory.pressure")),
        cgroup_version: 2,
        path: dir,
    })
}

fn read_u64(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    parse_u64(text.trim(), path)
}

fn parse_u64(text: &str, path: &Path) -> io::Result<u64> {
    text.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: expected a number of bytes, found {text:?}",
                path.display()
            ),
        )
    })
}

fn read_stat(path: &Path) -> io::Result<Vec<(String, u64)>> {
    let text = fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (k, v) = line.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// The resident memory of this process (from `/proc/self/statm`), for a
/// `MemoryLimit::Bytes` limit where no cgroup can be read.
pub(crate) fn process_rss() -> Option<u64> {
    let statm = fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * crate::sys::mem::PAGE as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_nested_and_namespaced_paths() {
        assert_eq!(
            join_cgroup("/sys/fs/cgroup", "/", "/kubepods/pod1/c1"),
            "/sys/fs/cgroup/kubepods/pod1/c1"
        );
        assert_eq!(
            join_cgroup("/sys/fs/cgroup", "/kubepods/pod1", "/kubepods/pod1/c1"),
            "/sys/fs/cgroup/c1"
        );
        assert_eq!(
            join_cgroup("/sys/fs/cgroup/memory", "/", "/"),
            "/sys/fs/cgroup/memory"
        );
        assert_eq!(join_cgroup("/sys/fs/cgroup", "/a", "/"), "/sys/fs/cgroup");
    }

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\"), "/trailing\\");
    }
}
