//! Helpers for prefilter's privileged end-to-end tests: frames, namespaces, and the
//! reference decision the randomized test compares the XDP program with.

pub mod daemon;
pub mod netns;
pub mod packet;

/// Whether we run as root; privileged tests skip (saying so) otherwise.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
pub mod reference;
