//! `serve`'s malloc setting ([`cohort_coordinator::allocator`]): once a large block was freed,
//! the next large block is still mapped on its own (so it leaves nothing resident when freed),
//! not carved out of a heap as glibc's dynamic threshold would have it.
//!
//! Its own test binary: the setting is process-wide.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_freed_large_block_does_not_move_the_next_ones_into_the_heap() {
    use cohort_coordinator::allocator::{MMAP_THRESHOLD, map_large_blocks};

    let set = map_large_blocks();
    assert!(
        set || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some(),
        "mallopt refused the threshold"
    );
    // With glibc's dynamic threshold, freeing this mapped block raises the threshold to 8 MiB.
    drop(std::hint::black_box(vec![1u8; 8 << 20]));
    // SAFETY: `mallinfo2` only reads malloc's statistics.
    let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
    let before = mapped();
    let size = 16 * MMAP_THRESHOLD;
    let block = std::hint::black_box(vec![1u8; size]);
    let during = mapped();
    drop(block);
    assert!(
        during >= before + size,
        "a {size}-byte block after a freed 8 MiB one was not mapped on its own ({before} bytes \
         mapped before it, {during} with it)"
    );
    assert!(mapped() < during, "freeing the mapped block unmaps it");
}
