//! A memory cgroup of an example's own (v1 `memory` or v2), under the
//! process's own cgroup, for the children it starts; removed on drop.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tierpool::ContainerMemory;

/// A memory cgroup under the process's own, for children this program
/// starts; removed on drop.
pub struct Cgroup {
    dir: PathBuf,
    version: u8,
}

impl Cgroup {
    /// Creates `name` under `own` with a memory limit of `limit` bytes and
    /// no swap.
    pub fn create(own: &ContainerMemory, name: &str, limit: u64) -> std::io::Result<Cgroup> {
        let dir = own.path.join(name);
        fs::create_dir(&dir)?;
        let cgroup = Cgroup {
            dir,
            version: own.cgroup_version,
        };
        let limit = limit.to_string();
        if cgroup.version == 1 {
            cgroup.write("memory.limit_in_bytes", &limit)?;
            // No swap: the limit is the memory the children may use.
            let _ = cgroup.write("memory.memsw.limit_in_bytes", &limit);
        } else {
            cgroup.write("memory.max", &limit)?;
            let _ = cgroup.write("memory.swap.max", "0");
        }
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> std::io::Result<()> {
        fs::write(self.dir.join(file), value)
    }

    /// Moves process `pid` into the cgroup.
    pub fn adopt(&self, pid: u32) -> std::io::Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The file a process writes its pid (or "0", itself) to to join.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// A handle that reads the cgroup's figures from another thread (and
    /// does not remove it).
    pub fn clone_handle(&self) -> Probe {
        Probe {
            dir: self.dir.clone(),
            version: self.version,
        }
    }

    /// Usage minus inactive page cache, as the kubelet computes it.
    pub fn working_set(&self) -> u64 {
        self.clone_handle().working_set()
    }

    /// Whether the kernel's OOM killer killed a process of the cgroup.
    pub fn oom_killed(&self) -> bool {
        let file = if self.version == 1 {
            "memory.oom_control"
        } else {
            "memory.events"
        };
        let text = fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        stat_field(&text, "oom_kill") > 0
    }
}

impl Probe {
    /// The memory.stat fields `names` (v1: their `total_` forms) and the
    /// kernel memory charged (v1 `memory.kmem.usage_in_bytes`, v2 the
    /// `kernel` field), for a breakdown of the working set.
    pub fn breakdown(&self, names: &[&str]) -> Vec<(String, u64)> {
        let stat = fs::read_to_string(self.dir.join("memory.stat")).unwrap_or_default();
        let mut out: Vec<(String, u64)> = names
            .iter()
            .map(|n| {
                let field = if self.version == 1 {
                    format!("total_{n}")
                } else {
                    (*n).to_owned()
                };
                ((*n).to_owned(), stat_field(&stat, &field))
            })
            .collect();
        let kernel = if self.version == 1 {
            fs::read_to_string(self.dir.join("memory.kmem.usage_in_bytes"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        } else {
            stat_field(&stat, "kernel")
        };
        out.push(("kernel".into(), kernel));
        out
    }
}

/// Reads a cgroup's figures; see [`Cgroup::clone_handle`].
pub struct Probe {
    dir: PathBuf,
    version: u8,
}

impl Probe {
    /// Usage minus inactive page cache, as the kubelet computes it.
    pub fn working_set(&self) -> u64 {
        let read = |file: &str| fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        let (usage, inactive) = if self.version == 1 {
            ("memory.usage_in_bytes", "total_inactive_file")
        } else {
            ("memory.current", "inactive_file")
        };
        let usage: u64 = read(usage).trim().parse().unwrap_or(0);
        let inactive = stat_field(&read("memory.stat"), inactive);
        usage.saturating_sub(inactive)
    }
}

fn stat_field(stat: &str, name: &str) -> u64 {
    stat.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The child has exited; its cgroup empties as the kernel reaps it.
        for _ in 0..100 {
            if fs::remove_dir(&self.dir).is_ok() || !Path::new(&self.dir).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove the cgroup {}", self.dir.display());
    }
}
