//! The copy behind [`PooledBuf::extend_from_slice`](crate::PooledBuf) and
//! every write into a pooled buffer: as fast whatever the source's
//! alignment.
//!
//! Pooled blocks of the mapped classes start on a page, so a write's
//! destination sits where the buffer's length puts it, usually on 32
//! bytes. The source is the caller's: a heap row buffer sits on any
//! 16-byte boundary. For copies of a few KiB and up, `memcpy` (glibc's
//! `rep movsb` path) runs at one speed when source and destination agree
//! modulo 32 and at about two thirds of it when they differ by 16. The
//! system allocator's own large blocks start 16 bytes into a page, so a
//! `Vec` wins exactly where the pool loses, and which one a program gets
//! depends on where its source happens to sit.
//!
//! So copies from 4 KiB up to 1 MiB whose source and destination differ
//! modulo 32 take a loop of 32-byte AVX2 loads and stores when the CPU has
//! AVX2; everything else (small copies, agreeing alignments, copies large
//! enough for `memcpy`'s non-temporal path, CPUs without AVX2) stays with
//! `memcpy`. Measured on the project's AMD EPYC (Zen 4), 2026-12-06
//! (`docs/BENCHMARKS.md`): 16 KiB rows into 8 MiB destinations took
//! 10.9–11.4 ms with `memcpy` aligned, 15.3–15.5 ms misaligned by 16, and
//! 10.2–11.4 ms with this loop misaligned; 4–16 KiB copies that stay in
//! the L1 cache ran at 90–99 GB/s with `memcpy` and 104–116 GB/s with this
//! loop (a 16-byte SSE2 loop: 31–59 GB/s, so not SSE2).

use std::ptr;

/// Copies shorter than this stay with `memcpy`: below it glibc copies with
/// vector loops itself.
const LOOP_FROM: usize = 4096;
/// Copies from this size on stay with `memcpy`, whose non-temporal stores
/// beat any loop of ordinary ones there.
const LOOP_BELOW: usize = 1 << 20;

/// Copies `len` bytes from `src` to `dst`.
///
/// # Safety
///
/// As [`ptr::copy_nonoverlapping`]: `src` valid for reads and `dst` for
/// writes of `len` bytes, and the two ranges do not overlap.
#[inline]
pub(crate) unsafe fn copy(src: *const u8, dst: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if (LOOP_FROM..LOOP_BELOW).contains(&len)
        && (dst as usize).wrapping_sub(src as usize) % 32 != 0
        && std::arch::is_x86_feature_detected!("avx2")
    {
        // SAFETY: forwarded from the caller; the CPU has AVX2 (checked).
        unsafe { x86_64::copy_avx2(src, dst, len) };
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { ptr::copy_nonoverlapping(src, dst, len) };
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_storeu_si256};
    use std::ptr;

    /// 128 bytes a step in four 32-byte loads and stores, the rest with
    /// `memcpy`.
    ///
    /// # Safety
    ///
    /// As [`copy`](super::copy), and the CPU has AVX2.
    #[cold]
    #[inline(never)]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn copy_avx2(mut src: *const u8, mut dst: *mut u8, mut len: usize) {
        while len >= 128 {
            // SAFETY: `len >= 128` bytes are left in both ranges (the
            // caller's promise, less what was copied); the loads and stores
            // are unaligned ones, and the caller checked for AVX2.
            unsafe {
                let a = _mm256_loadu_si256(src.cast::<__m256i>());
                let b = _mm256_loadu_si256(src.add(32).cast::<__m256i>());
                let c = _mm256_loadu_si256(src.add(64).cast::<__m256i>());
                let d = _mm256_loadu_si256(src.add(96).cast::<__m256i>());
                _mm256_storeu_si256(dst.cast::<__m256i>(), a);
                _mm256_storeu_si256(dst.add(32).cast::<__m256i>(), b);
                _mm256_storeu_si256(dst.add(64).cast::<__m256i>(), c);
                _mm256_storeu_si256(dst.add(96).cast::<__m256i>(), d);
                src = src.add(128);
                dst = dst.add(128);
            }
            len -= 128;
        }
        // SAFETY: the `len < 128` bytes left of both ranges.
        unsafe { ptr::copy_nonoverlapping(src, dst, len) };
    }
}

#[cfg(test)]
mod tests {
    use super::copy;

    /// Every length around the loop's bounds and its 128-byte steps, at
    /// every relative alignment that picks the loop and one that does not.
    #[test]
    fn copies_exactly_the_bytes() {
        // Under miri the lengths about the loop's lower bound only.
        let lens: &[usize] = if cfg!(miri) {
            &[0, 63, 4095, 4096, 4096 + 129]
        } else {
            &[
                0,
                1,
                63,
                4095,
                4096,
                4097,
                4096 + 63,
                4096 + 64,
                4096 + 127,
                4096 + 128,
                70_001,
                (1 << 20) - 1,
                1 << 20,
            ]
        };
        let longest = lens.iter().max().copied().unwrap_or(0);
        let src: Vec<u8> = (0..longest + 128)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let mut dst = vec![0u8; longest + 256];
        for &len in lens {
            for src_off in [0usize, 1, 16, 33, 48] {
                for dst_off in [0usize, 16, 32, 47] {
                    if cfg!(miri) && (src_off % 16 != 0 || dst_off == 47) {
                        continue;
                    }
                    dst.fill(0xee);
                    let from = &src[src_off..src_off + len];
                    // SAFETY: both ranges in bounds (the vectors have 128
                    // and 256 bytes beyond the longest length), distinct
                    // vectors.
                    unsafe { copy(from.as_ptr(), dst.as_mut_ptr().add(dst_off), len) };
                    assert_eq!(
                        &dst[dst_off..dst_off + len],
                        from,
                        "len {len}, {src_off}/{dst_off}"
                    );
                    assert!(dst[..dst_off].iter().all(|&b| b == 0xee), "wrote before");
                    assert!(
                        dst[dst_off + len..].iter().all(|&b| b == 0xee),
                        "wrote after"
                    );
                }
            }
        }
    }
}
