//! Helpers for prefilter's privileged end-to-end tests: frames, namespaces, and the
//! reference decision the randomized test compares the XDP program with.

pub mod daemon;
pub mod netns;
pub mod packet;
pub mod postfix;
pub mod reference;

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The first line of every privileged test: it fails (never passes silently) when not run as
/// root, so a skipped test cannot be read as a passed one.
#[track_caller]
pub fn require_root() {
    assert!(
        is_root(),
        "needs root: run `cargo xtask test` (namespaces, XDP, bpffs, BPF_PROG_TEST_RUN)"
    );
}
