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
pub mod smtp;

use std::{path::PathBuf, sync::OnceLock};

static SCRATCH_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Puts every later [`scratch_dir`] under `root` with a fixed name per role, instead of a
/// unique one under /tmp: the lab's, so that a run killed outright leaves its files where
/// the next run finds and removes them by exact name. Set once, before anything starts.
pub fn set_scratch_root(root: PathBuf) {
    assert!(
        SCRATCH_ROOT.set(root).is_ok(),
        "the scratch root is set already"
    );
}

/// The directory a component keeps its files in (not created here): `/tmp/prefilter-test-
/// {unique(tag)}`, or `{root}/{role}` under [`set_scratch_root`].
pub fn scratch_dir(role: &str, tag: &str) -> PathBuf {
    match SCRATCH_ROOT.get() {
        Some(root) => root.join(role),
        None => PathBuf::from(format!("/tmp/prefilter-test-{}", netns::unique(tag))),
    }
}

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

/// The DNSBL-sized IPv4 list as (address, length): `hosts` distinct random host
/// addresses over the whole space, then `mixed` distinct prefixes /8–/31, as many of each
/// length /24–/31 and half as many per shorter length. List content only: no packet is
/// ever sent to or from these addresses.
pub fn dnsbl_prefixes(rng: &mut Rng, hosts: usize, mixed: usize) -> Vec<(u32, u8)> {
    let mut seen = std::collections::HashSet::with_capacity(hosts + mixed);
    let mut out = Vec::with_capacity(hosts + mixed);
    while out.len() < hosts {
        let a = rng.next() as u32;
        if seen.insert((a, 32u8)) {
            out.push((a, 32));
        }
    }
    let weight = |l: u8| if l >= 24 { 1u64 << 16 } else { 1u64 << (l - 8) };
    let total: u64 = (8..=31).map(weight).sum();
    while out.len() < hosts + mixed {
        let mut r = rng.below(total);
        let mut len = 8u8;
        while r >= weight(len) {
            r -= weight(len);
            len += 1;
        }
        let a = rng.next() as u32 & (u32::MAX << (32 - len));
        if seen.insert((a, len)) {
            out.push((a, len));
        }
    }
    out
}
