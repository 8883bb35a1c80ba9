//! How memory is asked for: the large, short-lived buffers of a forward pass, and the weights,
//! which live as long as the model.
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

/// `len` values of `T` from zeroed memory, backed by huge pages where Linux allows: fresh pages
/// that the threads filling them fault in (`vec![…]` would write all of them on the loading thread
/// first: at 8B, 8.5 GB of page faults while the other threads wait), under `MADV_HUGEPAGE` (for
/// systems whose transparent huge pages are on "madvise"). Weights are written once at load and
/// read whole for every token: 2 MiB pages take 512 times fewer page faults than 4 KiB ones, and
/// streaming them misses the TLB far less. (1B bf16 decode on the AMD EPYC of issue 23: 9.8-11.0
/// -> 11.0-11.2 tokens/s with them, `bench_gen --quantize bf16 --prompt 128 --new 32`; at 8B
/// q8_0 load, zeroing the fresh pages stayed the cost, not the faults.)
///
/// # Safety
/// All-zero bytes must be a valid `T` (plain integers and floats, and structs of them).
pub(crate) unsafe fn zeroed_weights<T>(len: usize) -> Vec<T> {
    let layout = std::alloc::Layout::array::<T>(len).expect("a weight matrix fits the address space");
    if layout.size() == 0 {
        return Vec::new();
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    advise_huge_pages(ptr as *mut u8, layout.size());
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `len` values, as
    // `Vec` frees it; all-zero bytes are a valid `T` (the caller's promise).
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// Asks Linux to back the 2 MiB-aligned part of a fresh allocation with huge pages. Advice only:
/// a refusal changes nothing.
fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) / HUGE * HUGE;
        if end > start {
            // SAFETY: [start, end) lies inside the allocation just made; madvise with
            // MADV_HUGEPAGE changes how pages are backed, never their contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}
