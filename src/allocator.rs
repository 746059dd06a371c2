//! Allocator settings for a steady footprint (glibc). Called once from
//! `main` before any thread starts.
//!
//! glibc serves large allocations with `mmap` and returns them to the
//! system when freed, but by default it raises that threshold each time
//! such a block is freed (up to 32 MiB); after the first 10 MiB request
//! body, later ones came from per-thread arenas that do not shrink.
//! Measured before this setting: eight concurrent 10 MiB bodies left the
//! process at 58 MiB RSS after they were answered. A fixed threshold keeps
//! every large buffer (bodies, upstream answers) mmapped, so RSS falls back
//! once a burst has passed.

/// Blocks of this size and more are always mmapped (and unmapped on free).
const MMAP_THRESHOLD_BYTES: i32 = 256 * 1024;

pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}
