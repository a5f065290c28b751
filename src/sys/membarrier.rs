//! Asymmetric fences for the thread caches' flags: the owner of a cache, on
//! every hit and return, pays only a compiler fence ([`light`]); the rare
//! other thread that reaches into the cache (the trimmer, `stats()`, a
//! closing pool) pays a process-wide barrier ([`heavy`]): Linux's
//! `membarrier`, which runs a full memory barrier on every thread of the
//! process. Together they order a store before a load on both sides, as a
//! `SeqCst` fence on each side would, and the fast path needs no atomic
//! read-modify-write (an `xchg` costs about 20 cycles; the whole hit, 25).
//!
//! # Contract
//!
//! If thread A runs `store X; light(); load Y` and thread B runs
//! `store Y; heavy(); load X` and `heavy` returned `true`, at least one of
//! the loads sees the other thread's store. [`available`] says once per
//! process whether `heavy` can work at all (the pool keeps no thread caches
//! where it cannot).
//!
//! Off Linux, and under loom and miri (which model it), `light` is a real
//! `SeqCst` fence and `heavy` another, which is the same contract at the
//! price of a fence on the fast path.

/// Whether a test refused the heavy barrier on this thread, as a seccomp
/// filter refusing `membarrier` to one thread would.
#[cfg(all(test, not(tierpool_loom)))]
fn refused_here() -> bool {
    REFUSED.with(std::cell::Cell::get)
}

#[cfg(not(all(test, not(tierpool_loom))))]
#[inline(always)]
fn refused_here() -> bool {
    false
}

#[cfg(all(test, not(tierpool_loom)))]
std::thread_local! {
    static REFUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes [`heavy`] fail on this thread from now on (tests only).
#[cfg(all(test, not(tierpool_loom)))]
pub(crate) fn refuse_on_this_thread() {
    REFUSED.with(|r| r.set(true));
}

#[cfg(any(tierpool_loom, miri, not(target_os = "linux")))]
mod imp {
    use crate::sync::{Ordering, fence};

    pub(crate) fn available() -> bool {
        true
    }

    #[inline(always)]
    pub(crate) fn light() {
        fence(Ordering::SeqCst);
    }

    pub(crate) fn heavy() -> bool {
        fence(Ordering::SeqCst);
        !super::refused_here()
    }
}

#[cfg(not(any(tierpool_loom, miri, not(target_os = "linux"))))]
mod imp {
    use std::sync::atomic::compiler_fence;

    use crate::sync::{Ordering, fence};

    // From <linux/membarrier.h>.
    const CMD_QUERY: libc::c_long = 0;
    const CMD_GLOBAL: libc::c_long = 1;
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    /// Which `membarrier` command serves as the heavy barrier.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        /// Interrupts only the CPUs running this process's threads:
        /// microseconds (Linux 4.14 and later, once registered).
        PrivateExpedited,
        /// Waits until every CPU has passed a barrier: milliseconds, but
        /// everywhere since Linux 4.3.
        Global,
        /// No `membarrier` (an older kernel, or a seccomp profile that
        /// refuses it).
        None,
    }

    fn membarrier(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: `membarrier(cmd, flags = 0, cpu_id = 0)` reads and
        // writes no memory of ours; an unknown command is an error code.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        }
    }

    /// Decided once per process, without a lock: threads that ask first
    /// all probe (registering twice is harmless) and store the same
    /// answer. A `OnceLock` would leave a forked child waiting for ever on a
    /// probe that a thread of the parent had under way.
    fn mode() -> Mode {
        use std::sync::atomic::AtomicU8;
        static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);
        const UNKNOWN: u8 = 0;
        let known = match MODE.load(Ordering::Acquire) {
            UNKNOWN => None,
            1 => Some(Mode::PrivateExpedited),
            2 => Some(Mode::Global),
            _ => Some(Mode::None),
        };
        if let Some(mode) = known {
            return mode;
        }
        let mode = probe();
        let code = match mode {
            Mode::PrivateExpedited => 1,
            Mode::Global => 2,
            Mode::None => 3,
        };
        MODE.store(code, Ordering::Release);
        mode
    }

    fn probe() -> Mode {
        let supported = membarrier(CMD_QUERY);
        if supported < 0 {
            return Mode::None;
        }
        if supported & CMD_PRIVATE_EXPEDITED != 0 && membarrier(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
        {
            return Mode::PrivateExpedited;
        }
        if supported & CMD_GLOBAL != 0 {
            return Mode::Global;
        }
        Mode::None
    }

    /// Whether [`heavy`] works here; decided once per process.
    pub(crate) fn available() -> bool {
        mode() != Mode::None
    }

    #[inline(always)]
    pub(crate) fn light() {
        compiler_fence(Ordering::SeqCst);
    }

    /// `false` if the barrier could not be had, in which case the caller
    /// must not touch what it guards.
    pub(crate) fn heavy() -> bool {
        fence(Ordering::SeqCst);
        let done = match mode() {
            Mode::PrivateExpedited => {
                membarrier(CMD_PRIVATE_EXPEDITED) == 0
                    // The registration belongs to the address space; should
                    // it ever be missing (it survives `fork` today), make it
                    // again.
                    || (membarrier(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
                        && membarrier(CMD_PRIVATE_EXPEDITED) == 0)
                    || membarrier(CMD_GLOBAL) == 0
            }
            Mode::Global => membarrier(CMD_GLOBAL) == 0,
            Mode::None => false,
        } && !super::refused_here();
        fence(Ordering::SeqCst);
        done
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn this_kernel_has_a_heavy_barrier() {
            // The CI machine runs a kernel with `membarrier`; elsewhere this
            // only checks that asking does not fail.
            if super::available() {
                assert!(super::heavy());
            }
        }
    }
}

pub(crate) use imp::{available, heavy, light};
