//! The one allocator setting of `cohort-coordinator serve`: blocks of [`MMAP_THRESHOLD`] bytes
//! and more are always mapped on their own and unmapped when freed (glibc only).
//!
//! glibc maps large blocks from 128 KiB on, but each time such a block is freed it raises that
//! threshold to the block's size (up to 32 MiB), so later blocks of that size are carved out of
//! its heaps instead, and a heap keeps the pages of its largest use. The coordinator's large
//! blocks are transient and grow with the number of accounts: the identity log a device that
//! never verified it is sent in its first round with the consistency check, copied into the
//! roster, encoded into one frame and queued on the stream (about 1 KB per account at once for
//! each new device in a round). With the dynamic threshold each new high-water mark of those
//! copies stayed resident: the soak with a new account every round grew by +1.76 to +1.86 KiB per
//! round after warm-up, and by +0.39 to +0.50 KiB with the threshold fixed, which is the identity
//! log held in memory (`docs/benchmarks.md`, "Soak"). Fixing the threshold costs a `mmap` and a
//! `munmap` per large block, nothing next to a round.

/// Blocks this large or larger are mapped and unmapped on their own: glibc's initial threshold,
/// kept from rising.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] for the whole process, unless
/// `MALLOC_MMAP_THRESHOLD_` in the environment chose one already (the operator's setting wins;
/// glibc then fixes that one). Returns whether this call set it: `false` as well with another C
/// library, where it does nothing.
pub fn map_large_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
            return false;
        }
        // SAFETY: `mallopt` only sets a malloc parameter under malloc's own lock; it has no
        // other effect on memory already allocated.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
