//! `MemoryReport`: where the working set is, in one call.

use std::fmt;
use std::fs;
use std::io;

use crate::ContainerMemory;

/// The working set as the kubelet computes it (`usage − inactive_file`),
/// split into what tierpool hands out and keeps, the rest of the process's
/// anonymous memory, page cache and kernel memory: the question the
/// operator of an OOM-looping pod asks first.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// let report = tierpool::MemoryReport::read()?;
/// assert_eq!(
///     report.in_use + report.idle + report.other_anon + report.active_file + report.kernel,
///     report.working_set
/// );
/// println!("{report}");
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// In a container with a memory limit the figures are the cgroup's (every
/// process in it). Without one (a cgroup that sets no limit, or none at
/// all) they are this process's own, never other processes' in the same
/// cgroup: the working set is its resident memory, and its resident file
/// pages count as active page cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryReport {
    /// `usage − inactive_file`: what the kubelet compares with the limit
    /// (and `container_memory_working_set_bytes` shows).
    pub working_set: u64,
    /// The memory limit, if there is one.
    pub limit: Option<u64>,
    /// Memory usage: the cgroup's, or the process's resident memory.
    pub usage: u64,
    /// Bytes tierpool has handed out: every pool's buffers in use and
    /// [`GlobalPool`](crate::GlobalPool)'s blocks.
    pub in_use: u64,
    /// Bytes tierpool keeps idle for reuse (every pool and `GlobalPool`).
    pub idle: u64,
    /// The rest of the anonymous memory: the heap of the system allocator
    /// (`allocator_free` of it freed but kept), stacks, other mappings.
    pub other_anon: u64,
    /// Of `other_anon`, what the system allocator holds freed (glibc's
    /// `mallinfo2`: free bytes in its arenas), where it can tell.
    pub allocator_free: Option<u64>,
    /// Page cache recently used: part of the working set.
    pub active_file: u64,
    /// Page cache not recently used: not part of the working set.
    pub inactive_file: u64,
    /// The rest of the working set: kernel memory charged to the cgroup
    /// (page tables, socket buffers, slab), shared memory.
    pub kernel: u64,
    /// Whether the figures are the cgroup's (`true`) or this process's.
    pub from_cgroup: bool,
}

impl MemoryReport {
    /// Reads the cgroup (or the process) and every pool's and the global
    /// allocator's figures now.
    ///
    /// # Errors
    ///
    /// The I/O error of `/proc/self/status` when neither a cgroup with a
    /// limit nor the process's own figures can be read (not Linux).
    pub fn read() -> io::Result<MemoryReport> {
        let (in_use, idle) = crate::pool::tierpool_bytes();
        let cgroup = if cfg!(miri) {
            None
        } else {
            ContainerMemory::read().ok().filter(|m| m.limit.is_some())
        };
        let (usage, working_set, anon, active_file, inactive_file, limit, from_cgroup) =
            match cgroup {
                Some(m) => (
                    m.usage,
                    m.working_set,
                    m.anon,
                    m.active_file,
                    m.inactive_file,
                    m.limit,
                    true,
                ),
                None => {
                    let own = own_memory()?;
                    (own.rss, own.rss, own.anon, own.file, 0, None, false)
                }
            };
        Ok(MemoryReport::split(
            working_set,
            usage,
            limit,
            (in_use, idle),
            anon,
            (active_file, inactive_file),
            allocator_free(),
            from_cgroup,
        ))
    }

    /// The parts, made to add up to the working set: tierpool's bytes are
    /// anonymous memory (so the anonymous figure is at least them); the
    /// kernel's share is what is left.
    #[allow(clippy::too_many_arguments)]
    fn split(
        working_set: u64,
        usage: u64,
        limit: Option<u64>,
        (in_use, idle): (u64, u64),
        anon: u64,
        (active_file, inactive_file): (u64, u64),
        allocator_free: Option<u64>,
        from_cgroup: bool,
    ) -> MemoryReport {
        // Idle pages the pools count may have been handed back to the
        // kernel since (a discarded tail): never report more than is there.
        let tierpool = in_use.saturating_add(idle);
        let anon = anon.max(tierpool).min(working_set);
        let (in_use, idle) = if tierpool > anon {
            let in_use = in_use.min(anon);
            (in_use, anon - in_use)
        } else {
            (in_use, idle)
        };
        let active_file = active_file.min(working_set.saturating_sub(anon));
        let kernel = working_set.saturating_sub(anon + active_file);
        let other_anon = working_set - kernel - active_file - in_use - idle;
        MemoryReport {
            working_set,
            limit,
            usage,
            in_use,
            idle,
            other_anon,
            allocator_free: allocator_free.map(|f| f.min(other_anon)),
            active_file,
            inactive_file,
            kernel,
            from_cgroup,
        }
    }

    /// Bytes left under the limit, if there is one.
    pub fn headroom(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.working_set))
    }

    /// The parts as `(kind, bytes)`, in the order of the table: the kinds
    /// of the `tierpool_memory_bytes{kind=...}` gauges.
    pub fn parts(&self) -> [(&'static str, u64); 7] {
        [
            ("in_use", self.in_use),
            ("idle", self.idle),
            ("other_anon", self.other_anon),
            ("allocator_free", self.allocator_free.unwrap_or(0)),
            ("active_file", self.active_file),
            ("kernel", self.kernel),
            ("inactive_file", self.inactive_file),
        ]
    }
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let pct = |b: u64| {
            if self.working_set == 0 {
                0.0
            } else {
                b as f64 * 100.0 / self.working_set as f64
            }
        };
        writeln!(
            f,
            "working set {:.1} MiB ({}){}",
            mib(self.working_set),
            if self.from_cgroup {
                "the container's"
            } else {
                "this process's"
            },
            match (self.limit, self.headroom()) {
                (Some(l), Some(h)) =>
                    format!(", limit {:.1} MiB, headroom {:.1} MiB", mib(l), mib(h)),
                _ => ", no limit".into(),
            }
        )?;
        let rows = [
            ("in use (tierpool)", self.in_use),
            ("idle (tierpool)", self.idle),
            ("other anonymous", self.other_anon),
            ("active page cache", self.active_file),
            ("kernel and other", self.kernel),
        ];
        for (name, bytes) in rows {
            writeln!(
                f,
                "  {name:<20} {:>9.1} MiB {:>5.1}%",
                mib(bytes),
                pct(bytes)
            )?;
        }
        if let Some(free) = self.allocator_free {
            writeln!(
                f,
                "  (of other anonymous, freed but kept by the allocator: {:.1} MiB)",
                mib(free)
            )?;
        }
        write!(
            f,
            "  not counted: inactive page cache {:.1} MiB",
            mib(self.inactive_file)
        )
    }
}

/// This process's resident memory, from `/proc/self/status`.
struct OwnMemory {
    rss: u64,
    anon: u64,
    file: u64,
}

fn own_memory() -> io::Result<OwnMemory> {
    let status = fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .strip_suffix(" kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    Ok(OwnMemory {
        rss: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:") + field("RssShmem:"),
    })
}

/// Free bytes glibc's malloc keeps in its arenas (`mallinfo2`).
#[cfg(all(target_os = "linux", target_env = "gnu", not(miri)))]
fn allocator_free() -> Option<u64> {
    // SAFETY: `mallinfo2` has no preconditions; it reads the allocator's
    // own statistics under its locks.
    let info = unsafe { libc::mallinfo2() };
    Some(info.fordblks as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(miri))))]
fn allocator_free() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_sum(r: &MemoryReport) {
        assert_eq!(
            r.in_use + r.idle + r.other_anon + r.active_file + r.kernel,
            r.working_set,
            "{r:?}"
        );
    }

    #[test]
    fn the_parts_add_up_to_the_working_set() {
        // A container: 300 MiB working set, 200 MiB anonymous (64 in use,
        // 32 idle), 80 MiB active page cache, the rest kernel.
        let mib = 1 << 20;
        let r = MemoryReport::split(
            300 * mib,
            400 * mib,
            Some(512 * mib),
            (64 * mib, 32 * mib),
            200 * mib,
            (80 * mib, 100 * mib),
            Some(10 * mib),
            true,
        );
        check_sum(&r);
        assert_eq!(
            (r.in_use, r.idle, r.other_anon),
            (64 * mib, 32 * mib, 104 * mib)
        );
        assert_eq!((r.active_file, r.kernel), (80 * mib, 20 * mib));
        assert_eq!(r.headroom(), Some(212 * mib));
        // tierpool's counted pages above the anonymous figure (discarded
        // tails): clamped, still adding up.
        let r = MemoryReport::split(100, 100, None, (80, 40), 90, (5, 0), None, false);
        check_sum(&r);
        assert!(r.in_use + r.idle <= 100);
        let r = MemoryReport::split(0, 0, None, (0, 0), 0, (0, 0), None, false);
        check_sum(&r);
        assert!(r.to_string().contains("working set 0.0 MiB"));
    }
}
