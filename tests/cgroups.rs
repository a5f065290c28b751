//! Reading cgroups: fixture trees of both versions, their kernel signals
//! (events, high, pressure stall), and the real one.

mod common;

use std::path::Path;

use common::scratch::Scratch;
use tierpool::ContainerMemory;

const V2_STAT: &str =
    "anon 52428800\nfile 31457280\nactive_file 10485760\ninactive_file 20971520\n";

fn v2_tree(name: &str, cgroup: &str, mount_root: &str) -> Scratch {
    let s = Scratch::new(name);
    s.write("/proc/self/cgroup", &format!("0::{cgroup}\n"));
    s.write(
        "/proc/self/mountinfo",
        &format!(
            "22 1 0:20 / / rw - ext4 /dev/vda rw\n\
             30 22 0:26 {mount_root} /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        ),
    );
    s
}

#[test]
fn reads_a_nested_v2_cgroup_with_the_smallest_ancestor_limit() {
    let s = v2_tree("v2", "/kubepods/pod1/c1", "/");
    s.write("/sys/fs/cgroup/kubepods/memory.max", "max\n");
    s.write("/sys/fs/cgroup/kubepods/pod1/memory.max", "209715200\n");
    s.write("/sys/fs/cgroup/kubepods/pod1/c1/memory.max", "268435456\n");
    s.write(
        "/sys/fs/cgroup/kubepods/pod1/c1/memory.current",
        "94371840\n",
    );
    s.write("/sys/fs/cgroup/kubepods/pod1/c1/memory.stat", V2_STAT);
    let mem = ContainerMemory::read_under(&s.0).unwrap();
    assert_eq!(mem.cgroup_version, 2);
    assert_eq!(mem.limit, Some(209_715_200), "the pod's limit is smaller");
    assert_eq!(mem.usage, 94_371_840);
    assert_eq!(mem.inactive_file, 20_971_520);
    assert_eq!(mem.active_file, 10_485_760);
    assert_eq!(mem.anon, 52_428_800);
    assert_eq!(
        mem.working_set,
        94_371_840 - 20_971_520,
        "usage - inactive_file"
    );
    assert!(mem.path.ends_with("kubepods/pod1/c1"));
}

#[test]
fn reads_a_v2_cgroup_namespace_and_no_limit() {
    // Inside a cgroup namespace the process sees "/" for its own cgroup,
    // mounted from the hierarchy's "/kubepods/pod1/c1".
    let s = v2_tree("v2ns", "/", "/kubepods/pod1/c1");
    s.write("/sys/fs/cgroup/memory.max", "max\n");
    s.write("/sys/fs/cgroup/memory.current", "1000\n");
    s.write(
        "/sys/fs/cgroup/memory.stat",
        "anon 10\ninactive_file 5000\n",
    );
    let mem = ContainerMemory::read_under(&s.0).unwrap();
    assert_eq!(mem.limit, None);
    assert_eq!(mem.working_set, 0, "never below zero");
}

fn v1_tree(name: &str) -> Scratch {
    let s = Scratch::new(name);
    s.write(
        "/proc/self/cgroup",
        "11:cpu,cpuacct:/kubepods/pod1/c1\n4:memory:/kubepods/pod1/c1\n0::/\n",
    );
    s.write(
        "/proc/self/mountinfo",
        "22 1 0:20 / / rw - ext4 /dev/vda rw\n\
         31 22 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
         35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
         36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
    );
    s
}

#[test]
fn reads_a_v1_cgroup_with_total_fields_and_the_hierarchical_limit() {
    let s = v1_tree("v1");
    let dir = "/sys/fs/cgroup/memory/kubepods/pod1/c1";
    s.write(
        &format!("{dir}/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    s.write(&format!("{dir}/memory.usage_in_bytes"), "73400320\n");
    s.write(
        &format!("{dir}/memory.stat"),
        "cache 1\nrss 2\ninactive_file 3\nhierarchical_memory_limit 134217728\n\
         total_rss 41943040\ntotal_active_file 8388608\ntotal_inactive_file 16777216\n",
    );
    let mem = ContainerMemory::read_under(&s.0).unwrap();
    assert_eq!(mem.cgroup_version, 1);
    assert_eq!(mem.limit, Some(134_217_728), "the ancestor's limit applies");
    assert_eq!(mem.anon, 41_943_040);
    assert_eq!(mem.inactive_file, 16_777_216, "total_ fields win");
    assert_eq!(mem.working_set, 73_400_320 - 16_777_216);
}

#[test]
fn v1_sentinel_means_no_limit() {
    let s = v1_tree("v1-unlimited");
    let dir = "/sys/fs/cgroup/memory/kubepods/pod1/c1";
    s.write(
        &format!("{dir}/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    s.write(&format!("{dir}/memory.usage_in_bytes"), "100\n");
    s.write(&format!("{dir}/memory.stat"), "total_inactive_file 40\n");
    let mem = ContainerMemory::read_under(&s.0).unwrap();
    assert_eq!(mem.limit, None);
    assert_eq!(mem.working_set, 60);
}

#[test]
fn missing_and_broken_cgroups_are_clear_errors() {
    let s = Scratch::new("nocgroup");
    s.write("/proc/self/cgroup", "");
    s.write(
        "/proc/self/mountinfo",
        "22 1 0:20 / / rw - ext4 /dev/vda rw\n",
    );
    let err = ContainerMemory::read_under(&s.0).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("no memory cgroup"), "{err}");

    let s = v2_tree("broken", "/c", "/");
    s.write("/sys/fs/cgroup/c/memory.max", "lots\n");
    s.write("/sys/fs/cgroup/c/memory.current", "1\n");
    s.write("/sys/fs/cgroup/c/memory.stat", "");
    let err = ContainerMemory::read_under(&s.0).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("lots"), "{err}");

    let s = v2_tree("unreadable", "/c", "/");
    let err = ContainerMemory::read_under(&s.0).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert!(ContainerMemory::read_under(Path::new("/nonexistent-root")).is_err());
}

#[cfg(target_os = "linux")]
#[test]
fn reads_the_real_cgroup_when_there_is_one() {
    match ContainerMemory::read() {
        Ok(mem) => {
            assert!(mem.usage > 0, "{mem:?}");
            assert!(mem.working_set <= mem.usage);
            assert!(mem.path.exists(), "{mem:?}");
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}"),
    }
}

#[test]
fn reads_the_kernel_s_signals_v2_high_events_and_pressure_stall() {
    let s = v2_tree("v2-signals", "/pod/c", "/");
    let dir = "/sys/fs/cgroup/pod/c";
    s.write(&format!("{dir}/memory.max"), "268435456\n");
    s.write(&format!("{dir}/memory.high"), "201326592\n");
    s.write(&format!("{dir}/memory.current"), "94371840\n");
    s.write(&format!("{dir}/memory.stat"), V2_STAT);
    s.write(
        &format!("{dir}/memory.events"),
        "low 0\nhigh 17\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n",
    );
    s.write(
        &format!("{dir}/memory.pressure"),
        "some avg10=1.50 avg60=0.75 avg300=0.10 total=12345\nfull avg10=0.50 avg60=0.25 avg300=0.00 total=678\n",
    );
    let mem = ContainerMemory::read_under(&s.0).unwrap();
    assert_eq!(mem.high, Some(201_326_592));
    assert_eq!(
        (
            mem.events.high,
            mem.events.max,
            mem.events.oom,
            mem.events.oom_kill
        ),
        (17, 3, 2, 1)
    );
    let stall = mem.stall.expect("memory.pressure");
    assert_eq!((stall.some_avg10, stall.some_avg60), (1.5, 0.75));
    assert_eq!((stall.full_avg10, stall.full_avg60), (0.5, 0.25));
    // A read-only or partial cgroupfs: no high, no events, no stall.
    s.write(&format!("{dir}/memory.high"), "max\n");
    std::fs::remove_file(s.0.join(&dir[1..]).join("memory.events")).unwrap();
    std::fs::remove_file(s.0.join(&dir[1..]).join("memory.pressure")).unwrap();
    let mem = ContainerMemory::read_under(&s.0).unwrap();
    assert_eq!(
        (mem.high, mem.events, mem.stall),
        (None, Default::default(), None)
    );
}

#[test]
fn reads_v1_failcnt_and_oom_kills() {
    let s = v1_tree("v1-signals");
    let dir = "/sys/fs/cgroup/memory/kubepods/pod1/c1";
    s.write(&format!("{dir}/memory.limit_in_bytes"), "134217728\n");
    s.write(&format!("{dir}/memory.usage_in_bytes"), "73400320\n");
    s.write(&format!("{dir}/memory.stat"), "total_rss 41943040\n");
    s.write(&format!("{dir}/memory.failcnt"), "42\n");
    s.write(
        &format!("{dir}/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    );
    let mem = ContainerMemory::read_under(&s.0).unwrap();
    assert_eq!((mem.events.max, mem.events.oom_kill), (42, 3));
}
