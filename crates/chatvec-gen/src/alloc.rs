//! How the process's allocator treats the large, short-lived buffers of a forward pass.
//!
//! Each layer of a forward pass allocates activations of a few to a few tens of MiB and frees
//! them a moment later. glibc serves blocks above its mmap threshold (128 KiB, rising to at most
//! 32 MiB) with fresh `mmap`s and gives them back on free, so every one of those buffers was
//! faulted in and zeroed by the kernel again, and trims the heap's free top above 2× that. On the
//! AMD EPYC of issue 23 (2 cores), 512-token prefill of the 1B q8_0 model spent 4.6 s of system
//! time in that for 7.4 s of user time; with the limits below, 0.8 s of system time, and prefill
//! ran at 155 instead of 116 tokens/s (`bench_gen --quantize q8_0 --prompt 512 --new 16`, two
//! alternating runs each). Peak RSS did not grow (1.45 vs 1.47 GB).

/// Blocks up to this size come from the heap and are reused after they are freed.
const MMAP_THRESHOLD: usize = 64 << 20;
/// Free memory at the heap's top kept for the next allocation instead of returned at once.
const TRIM_THRESHOLD: usize = 512 << 20;

/// Lets the allocator keep and reuse freed activation buffers (see the module docs). A binary
/// calls it first thing in `main`, before other threads start; it changes nothing but where
/// memory comes from. Does nothing outside glibc.
pub fn reuse_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; both values are in range for a c_int.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}
