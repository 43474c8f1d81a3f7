//! The process's heap policy for training and decoding.
//!
//! A training step allocates and frees the same large buffers every time: the caches
//! backward reads, each part's gradients, gemm's packing space. glibc's malloc hands
//! big blocks back to the kernel when they are freed (`mmap` above a threshold, and
//! trimming the top of each thread's heap), so the next step faults every page in
//! again, and in a multi-threaded process each write fault on a fresh page also
//! interrupts the other cores to flush their TLBs. On the reference training step
//! (2 threads) that kernel work was 12-17% of the time (`perf`), and the step's time
//! varied by a fifth between runs. [`keep_freed_memory`] makes glibc keep freed
//! memory for reuse instead; the resident size then stays at the step's high-water
//! mark, which it reaches on every step anyway.

/// Tells glibc's malloc to keep freed memory for reuse: blocks up to 32 MiB (glibc's
/// largest `mmap` threshold) come from the heap instead of fresh mappings, and a heap
/// is trimmed only when more than 1 GiB at its top is free. Each heap grows by 64 MiB
/// at a time, so growing it is rare (untouched address space costs no memory).
///
/// Call it at the start of `main`, before other threads exist; it changes the whole
/// process, so a library never calls it on its own. Returns whether the allocator
/// accepted the settings; on systems other than 64-bit glibc (whose limits these
/// values are chosen for) it does nothing and returns false.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    {
        // SAFETY: mallopt only sets allocator parameters; the values are in range
        // (the threshold is glibc's maximum on 64-bit targets). Each is tried even if
        // another is refused.
        let accepted = unsafe {
            [
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20),
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30),
                libc::mallopt(libc::M_TOP_PAD, 64 << 20),
            ]
        };
        accepted.iter().all(|&ok| ok == 1)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    /// glibc refuses values out of its range (an `mmap` threshold over 32 MiB, say) by
    /// returning 0; the settings above must all be accepted where they apply.
    #[test]
    fn glibc_accepts_the_settings() {
        let accepted = super::keep_freed_memory();
        assert_eq!(
            accepted,
            cfg!(all(
                target_os = "linux",
                target_env = "gnu",
                target_pointer_width = "64"
            ))
        );
    }
}
