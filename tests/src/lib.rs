//! Helpers for prefilter's privileged end-to-end tests: frames, namespaces, and the
//! reference decision the randomized test compares the XDP program with.

pub mod crowdsec;
pub mod daemon;
pub mod feedserver;
pub mod netns;
pub mod packet;
pub mod postfix;
pub mod rbldnsd;
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

/// splitmix64: a seeded, reproducible PRNG for test data, benches and floods (no crate
/// needed for ten lines, and the sequence must stay the same across versions).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[expect(
        clippy::should_implement_trait,
        reason = "not an iterator: it never ends"
    )]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
