//! Randomized comparison of the XDP program with the reference rules: well over 100k
//! random and mutated frames (bit flips, truncations, bogus IPv4/IPv6/TCP lengths, VLAN tag
//! counts, IPv6 extension header chains) around valid SYNs from blocked, allowed, dynamic
//! and clean sources, through BPF_PROG_TEST_RUN. Every frame must get exactly the reference's
//! XDP action and counter, be passed untouched or answered with a correct reset.
//!
//! Seeded and reproducible: the seed is printed, and `PREFILTER_SEED=n` replays a run
//! (`PREFILTER_FRAMES=n` changes the number of frames).

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, time::Instant};

use prefilter_common::{action, reason};
use prefilter_tests::{
    packet::{Ext, Frame, LINUX_SYN_OPTIONS, flags},
    reference::{Rig, XDP_DROP, XDP_PASS, XDP_TX, boottime_ns, xdp_name},
    require_root,
};

/// xorshift64* (Vigna 2016), seeded through splitmix64 so that any seed works.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    fn range(&mut self, lo: usize, hi_inclusive: usize) -> usize {
        lo + self.below(hi_inclusive - lo + 1)
    }

    /// True with probability `pct`%.
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn u8(&mut self) -> u8 {
        self.next() as u8
    }

    fn u16(&mut self) -> u16 {
        self.next() as u16
    }

    fn u32(&mut self) -> u32 {
        self.next() as u32
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Addresses the policy says something about, and their neighbours.
const V4_INTERESTING: &[&str] = &[
    "198.51.100.1",
    "198.51.100.7",
    "198.51.100.8",
    "198.51.100.10",
    "198.51.100.11",
    "198.51.100.127",
    "198.51.100.128",
    "198.51.100.200",
    "198.51.100.201",
    "198.51.100.255",
    "203.0.113.1",
    "203.0.113.10",
    "203.0.113.64",
    "203.0.113.66",
    "203.0.113.67",
    "203.0.113.127",
    "203.0.113.128",
    "192.0.2.9",
    "192.0.2.10",
    "192.0.2.50",
    "240.0.0.0",
    "240.1.2.3",
    "240.1.3.255",
    "240.1.4.0",
    "255.255.255.255",
    "0.0.0.0",
    "198.18.0.5",
    "198.18.0.6",
    "198.18.0.7",
    "198.18.0.8",
    "198.18.0.9",
];
const V4_NETS: &[&str] = &[
    "198.51.100.0",
    "203.0.113.0",
    "192.0.2.0",
    "198.18.0.0",
    "240.1.2.0",
];
const V6_INTERESTING: &[&str] = &[
    "2001:db8:bad::",
    "2001:db8:bad::1",
    "2001:db8:bad:1::7",
    "2001:db8:bad:1::8",
    "2001:db8:bad:2::1",
    "2001:db8:bad:ffff:ffff:ffff:ffff:ffff",
    "2001:db8:dead::9",
    "2001:db8:600d::1",
    "2001:db8:600d:1::1",
    "2001:db8:f00::1",
    "2001:db8:fff::1",
    "2001:db8:1000::1",
    "2001:db8:d1::",
    "2001:db8:d1::1",
    "2001:db8:d2::",
    "2001:db8:d2::5",
    "2001:db8:d3::5",
    "2001:db8:d3::6",
    "::",
    "::ffff:198.51.100.1",
    "2001:db8::1",
];
/// /48s and /64s of the policy; random low bits are added.
const V6_NETS: &[&str] = &[
    "2001:db8:bad::",
    "2001:db8:bad:1::",
    "2001:db8:dead::",
    "2001:db8:600d::",
    "2001:db8:600d:1::",
    "2001:db8:f00::",
    "2001:db8:d1::",
    "2001:db8:d2::",
    "2001:db8:d3::",
];

fn policy(rig: &mut Rig) {
    let now = boottime_ns();
    let hour = 3_600_000_000_000;
    rig.block("198.51.100.0/24", action::DROP, 1);
    rig.block("198.51.100.128/25", action::RESET, 2);
    rig.block("198.51.100.200/32", action::OBSERVE, 3);
    rig.allow("198.51.100.7/32", 4);
    rig.block("203.0.113.0/24", action::RESET, 5);
    rig.block("203.0.113.64/26", action::TEMPFAIL, 6);
    rig.block("203.0.113.66/32", action::REJECT, 7);
    rig.allow("192.0.2.0/25", 8);
    rig.block("192.0.2.9/32", action::DROP, 9);
    rig.block("240.0.0.0/4", action::DROP, 10);
    rig.allow("240.1.2.0/23", 11);
    rig.block("240.1.3.128/25", action::RESET, 12);
    rig.block("2001:db8:bad::/48", action::DROP, 20);
    rig.block("2001:db8:bad:1::/64", action::RESET, 21);
    rig.allow("2001:db8:bad:1::7/128", 22);
    rig.block("2001:db8:dead::/48", action::RESET, 23);
    rig.allow("2001:db8:600d::/48", 24);
    rig.block("2001:db8:600d:1::/64", action::DROP, 25);
    rig.block("2001:db8:f00::/40", action::OBSERVE, 26);
    rig.block("2001:db8:1000::/36", action::DROP, 27);
    rig.dynamic("198.18.0.5", action::RESET, 40, 0);
    rig.dynamic("198.18.0.6", action::DROP, 41, 1);
    rig.dynamic("198.18.0.7", action::TEMPFAIL, 42, now + hour);
    rig.dynamic("198.18.0.8", action::DROP, 43, now + hour);
    rig.dynamic("198.51.100.10", action::PASS, 44, 0);
    rig.dynamic("198.51.100.11", action::RESET, 45, now - 1);
    rig.dynamic("203.0.113.10", action::DROP, 46, 0);
    rig.dynamic("192.0.2.50", action::DROP, 47, 0);
    rig.dynamic("2001:db8:d1::", action::DROP, 50, 0);
    rig.dynamic("2001:db8:d2::", action::RESET, 51, 1);
    rig.dynamic("2001:db8:bad:2::", action::PASS, 52, now + hour);
    rig.dynamic("2001:db8:dead::", action::DROP, 53, 0);
    rig.ports(&[25, 587]);
}

fn source(rng: &mut Rng, v6: bool, pool: Option<usize>) -> IpAddr {
    if let Some(n) = pool {
        // A small pool of sources, so that rate limits are reached.
        let i = rng.below(n) as u32;
        return if v6 {
            IpAddr::V6(
                (0x2001_0db8_0077_0000_0000_0000_0000_0000u128
                    | u128::from(i % 8) << 64
                    | u128::from(i))
                .into(),
            )
        } else {
            // 198.51.100.x (blocked, allowed, dynamic) or 192.0.2.128+x (clean).
            let base = if i.is_multiple_of(2) {
                0xc633_6400
            } else {
                0xc000_0280
            };
            IpAddr::V4((base | (i % 128)).into())
        };
    }
    match (v6, rng.below(10)) {
        (false, 0..=3) => ip(rng.pick(V4_INTERESTING)),
        (false, 4..=7) => match ip(rng.pick(V4_NETS)) {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) | u32::from(rng.u8())).into()),
            IpAddr::V6(_) => unreachable!(),
        },
        (false, _) => IpAddr::V4(rng.u32().into()),
        (true, 0..=3) => ip(rng.pick(V6_INTERESTING)),
        (true, 4..=7) => match ip(rng.pick(V6_NETS)) {
            IpAddr::V6(a) => {
                let low = if rng.chance(50) {
                    u128::from(rng.u16())
                } else {
                    u128::from(rng.next()) | u128::from(rng.u16()) << 64
                };
                IpAddr::V6((u128::from(a) | low).into())
            }
            IpAddr::V4(_) => unreachable!(),
        },
        (true, _) => {
            let hi = 0x2001_0db8u128 << 96;
            IpAddr::V6((hi | u128::from(rng.next()) << 32 | u128::from(rng.u32())).into())
        }
    }
}

/// A frame around a valid SYN, with random knobs.
fn base(rng: &mut Rng, pool: Option<usize>) -> Frame {
    let v6 = rng.chance(50);
    let src = source(rng, v6, pool);
    let dst = if v6 {
        ip("2001:db8::1")
    } else {
        ip("192.0.2.1")
    };
    let dport = match rng.below(100) {
        0..=49 => 25,
        50..=64 => 587,
        65..=84 => rng.pick(&[465, 2525, 80, 443, 24, 26, 0, 65535, 6400]),
        _ => rng.u16(),
    };
    let mut f = Frame::syn(src, dst, dport);
    f.sport = rng.u16();
    f.seq = rng.u32();
    f.flags = match rng.below(100) {
        0..=59 => flags::SYN,
        60..=89 => rng.pick(&[
            flags::SYN | flags::ACK,
            flags::ACK,
            flags::RST,
            flags::RST | flags::ACK,
            flags::FIN | flags::ACK,
            flags::PSH | flags::ACK,
            flags::SYN | flags::FIN,
            flags::SYN | flags::RST,
            flags::SYN | 0xc0,
            flags::SYN | flags::PSH,
            0,
        ]),
        _ => rng.u8(),
    };
    if f.flags & flags::ACK != 0 {
        f.ack = rng.u32();
    }
    let tags = match rng.below(100) {
        0..=49 => 0,
        50..=74 => 1,
        75..=94 => 2,
        _ => 3,
    };
    f.vlans = (0..tags)
        .map(|_| {
            let tpid = match rng.below(20) {
                0..=8 => 0x8100,
                9..=17 => 0x88a8,
                _ => 0x9100,
            };
            (tpid, rng.u16() & 0x0fff)
        })
        .collect();
    if v6 {
        let n = match rng.below(100) {
            0..=39 => 0,
            40..=74 => rng.range(1, 3),
            75..=89 => rng.range(4, 5),
            _ => rng.range(6, 8),
        };
        f.ext = (0..n)
            .map(|_| match rng.below(4) {
                0 => Ext::options(0, rng.pick(&[0, 0, 1, 2])),
                1 => Ext::options(43, rng.pick(&[0, 1, 2, 3])),
                2 => Ext::options(60, rng.pick(&[0, 0, 1, 4])),
                _ => {
                    let off = if rng.chance(70) {
                        0
                    } else {
                        rng.range(1, 0x1fff) as u16
                    };
                    Ext::fragment(off, rng.chance(50))
                }
            })
            .collect();
    } else {
        if rng.chance(30) {
            let n = rng.range(1, 40);
            f.ip_options = if rng.chance(50) {
                vec![1; n]
            } else {
                rng.bytes(n)
            };
        }
        f.frag = match rng.below(100) {
            0..=74 => 0,
            75..=79 => 0x4000,
            80..=84 => 0x2000,
            85..=89 => rng.range(1, 0x1fff) as u16,
            90..=94 => 0x2000 | rng.range(1, 0x1fff) as u16,
            _ => rng.u16(),
        };
    }
    f.tcp_options = match rng.below(10) {
        0..=3 => LINUX_SYN_OPTIONS.to_vec(),
        4..=6 => Vec::new(),
        _ => {
            let n = rng.range(1, 40);
            rng.bytes(n)
        }
    };
    if rng.chance(30) {
        let n = rng.range(1, 200);
        f.payload = rng.bytes(n);
    }
    f
}

/// Writes a big-endian u16 at `off` if the frame still has those bytes.
fn put16(b: &mut [u8], off: usize, v: u16) -> bool {
    if off + 2 <= b.len() {
        b[off..off + 2].copy_from_slice(&v.to_be_bytes());
        true
    } else {
        false
    }
}

fn put8(b: &mut [u8], off: usize, v: u8) -> bool {
    if off < b.len() {
        b[off] = v;
        true
    } else {
        false
    }
}

/// Applies one random mutation to `b`, a build of `f`; says what it did.
fn mutate(rng: &mut Rng, f: &Frame, b: &mut Vec<u8>) -> String {
    let l = f.layout();
    let v6 = f.src.is_ipv6();
    let small = |rng: &mut Rng| rng.range(1, 12) as i32 * if rng.chance(50) { 1 } else { -1 };
    match rng.below(14) {
        0 | 1 => {
            let span = if rng.chance(80) {
                b.len().min(l.payload + 8)
            } else {
                b.len()
            };
            let pos = rng.below(span);
            let bit = rng.below(8);
            b[pos] ^= 1 << bit;
            format!("flip bit {bit} of byte {pos}")
        }
        2 if b.len() > 14 => {
            let len = rng.range(14, b.len() - 1);
            b.truncate(len);
            format!("truncate to {len}")
        }
        3 if !v6 => {
            let old = (20 + f.ip_options.len().div_ceil(4) * 4 + l.end - l.l4) as i32;
            let v = match rng.below(4) {
                0 => rng.u16(),
                1 => (old + small(rng)).clamp(0, 65535) as u16,
                2 => rng.range(0, 64) as u16,
                _ => 0,
            };
            put16(b, l.l3 + 2, v);
            format!("IPv4 total length {v}")
        }
        4 if !v6 => {
            let ihl = rng.below(16) as u8;
            put8(b, l.l3, 0x40 | ihl);
            format!("IPv4 IHL {ihl}")
        }
        3 | 4 => {
            let old = (l.end - l.l3 - 40) as i32;
            let v = match rng.below(4) {
                0 => rng.u16(),
                1 => (old + small(rng)).clamp(0, 65535) as u16,
                2 => rng.range(0, 80) as u16,
                _ => 0,
            };
            put16(b, l.l3 + 4, v);
            format!("IPv6 payload length {v}")
        }
        5 => {
            let d = rng.below(16) as u8;
            if l.l4 + 12 < b.len() {
                b[l.l4 + 12] = d << 4 | (b[l.l4 + 12] & 0x0f);
            }
            format!("TCP data offset {d}")
        }
        6 if v6 && !l.ext.is_empty() => {
            let i = rng.below(l.ext.len());
            let v = if rng.chance(70) {
                rng.below(5) as u8
            } else {
                rng.u8()
            };
            put8(b, l.ext[i] + 1, v);
            format!("extension header {i} length byte {v}")
        }
        7 if v6 => {
            let nh = rng.pick(&[0u8, 43, 44, 60, 6, 6, 17, 59, 50, 51, 58, 135]);
            let nh = if rng.chance(10) { rng.u8() } else { nh };
            let k = rng.below(l.ext.len() + 1);
            let off = if k == 0 { l.l3 + 6 } else { l.ext[k - 1] };
            put8(b, off, nh);
            format!("next header {nh} at {off}")
        }
        8 if v6 && !l.ext.is_empty() => {
            let i = rng.below(l.ext.len());
            let v = rng.u16();
            put16(b, l.ext[i] + 2, v);
            format!("extension header {i} bytes 2-3 = {v:#06x}")
        }
        6..=8 => {
            let p = rng.pick(&[6u8, 6, 17, 1, 0, 41]);
            let p = if rng.chance(10) { rng.u8() } else { p };
            if v6 {
                put8(b, l.l3 + 6, p);
            } else {
                put8(b, l.l3 + 9, p);
            }
            format!("IP protocol {p}")
        }
        9 => {
            let fl = rng.u8();
            put8(b, l.l4 + 13, fl);
            format!("TCP flags {fl:#04x}")
        }
        10 => {
            let t = rng.pick(&[0x0800u16, 0x86dd, 0x0806, 0x8100, 0x88a8, 0x9100, 0x88cc]);
            let t = if rng.chance(10) { rng.u16() } else { t };
            let off = if rng.chance(50) { 12 } else { l.l3 - 2 };
            put16(b, off, t);
            format!("EtherType/TPID {t:#06x} at {off}")
        }
        11 => {
            let v = rng.below(16) as u8;
            if l.l3 < b.len() {
                b[l.l3] = v << 4 | (b[l.l3] & 0x0f);
            }
            format!("IP version {v}")
        }
        12 => {
            // A whole VLAN tag more or less.
            if rng.chance(50) || f.vlans.is_empty() || b.len() < 18 {
                let tpid = rng.pick(&[0x8100u16, 0x88a8]);
                let at = 12;
                let mut tag = tpid.to_be_bytes().to_vec();
                tag.extend_from_slice(&rng.u16().to_be_bytes());
                b.splice(at..at, tag);
                format!("insert a {tpid:#06x} tag")
            } else {
                b.drain(12..16);
                "remove the outer tag".into()
            }
        }
        _ => {
            let n = rng.range(1, 40);
            let pos = rng.range(14, b.len());
            let junk = rng.bytes(n);
            b.splice(pos..pos, junk);
            format!("insert {n} random bytes at {pos}")
        }
    }
}

/// The frame for index `i`: random knobs, then zero to three mutations.
fn frame(rng: &mut Rng, pool: Option<usize>) -> (Vec<u8>, String) {
    if rng.chance(1) {
        let n = rng.range(14, 120);
        return (rng.bytes(n), format!("{n} random bytes"));
    }
    let f = base(rng, pool);
    let mut b = f.build();
    let mut what = format!(
        "{} -> {}:{} flags {:#04x}, {} tags, {} ext, {} ip opt, {} tcp opt, {} payload",
        f.src,
        f.dst,
        f.dport,
        f.flags,
        f.vlans.len(),
        f.ext.len(),
        f.ip_options.len(),
        f.tcp_options.len(),
        f.payload.len()
    );
    if rng.chance(15) {
        let n = rng.range(1, 30);
        b.extend(rng.bytes(n));
        write!(what, ", {n} bytes of padding").unwrap();
    }
    let mutations = match rng.below(100) {
        0..=34 => 0,
        35..=74 => 1,
        75..=89 => 2,
        _ => 3,
    };
    for _ in 0..mutations {
        let m = mutate(rng, &f, &mut b);
        write!(what, "; {m}").unwrap();
    }
    (b, what)
}

#[test]
fn random_and_mutated_frames_match_the_rules() {
    require_root();
    let seed: u64 = match std::env::var("PREFILTER_SEED") {
        Ok(s) => s.parse().expect("PREFILTER_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    };
    let total: usize = std::env::var("PREFILTER_FRAMES")
        .ok()
        .map(|s| s.parse().expect("PREFILTER_FRAMES must be a number"))
        .unwrap_or(200_000);
    eprintln!("randomized: seed {seed} (set PREFILTER_SEED={seed} to replay), {total} frames");

    let mut rig = Rig::load();
    policy(&mut rig);
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut failed = 0usize;
    let mut tally: BTreeMap<(u8, u8), usize> = BTreeMap::new();
    let mut xdp: BTreeMap<u32, usize> = BTreeMap::new();
    let mut ns = 0u64;
    // Phases: the policy keyed by /64; then by /128; then rate limited (burst 4) with a
    // small pool of sources, keyed by /64 and then by /128.
    let phase2 = total * 6 / 10;
    let phase3 = total * 7 / 10;
    let phase4 = total * 9 / 10;
    for i in 0..total {
        if i == phase2 {
            rig.v6_full(true);
            rig.dynamic("2001:db8:d3::5", action::DROP, 54, 0);
        }
        if i == phase3 {
            rig.v6_full(false);
            rig.ratelimit(Some(4));
        }
        if i == phase4 {
            rig.v6_full(true);
        }
        let pool = (i >= phase3).then_some(64);
        let (b, what) = frame(&mut rng, pool);
        match rig.check(&b) {
            Ok(o) => {
                ns += u64::from(o.ns_per_run);
                *tally
                    .entry((o.decision.reason, o.decision.action))
                    .or_default() += 1;
                *xdp.entry(o.action).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                if failures.len() < 25 {
                    failures.push(format!("frame #{i} ({what}):\n    {e}"));
                }
            }
        }
    }
    let elapsed = start.elapsed();
    if let Err(e) = rig.check_list_hits() {
        failed += 1;
        failures.push(e);
    }
    let mut summary = String::new();
    for ((r, a), n) in &tally {
        write!(
            summary,
            " {}/{}={n}",
            reason::NAMES[usize::from(*r)],
            action::NAMES[usize::from(*a)]
        )
        .unwrap();
    }
    eprintln!(
        "randomized: {total} frames in {elapsed:?} (program {} ns per run on average); XDP actions {:?}; by reason/action:{summary}",
        ns / total as u64,
        xdp.iter()
            .map(|(a, n)| format!("{}={n}", xdp_name(*a)))
            .collect::<Vec<_>>()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {failed} of {total} frames disagree with the rules (replay with PREFILTER_SEED={seed}); first ones:\n{}",
        failures.join("\n")
    );
    // The generator must reach every outcome often enough to mean something.
    if total >= 100_000 {
        let count = |r: u8| {
            tally
                .iter()
                .filter(|((rr, _), _)| *rr == r)
                .map(|(_, n)| n)
                .sum::<usize>()
        };
        for (what, n, min) in [
            ("dropped", *xdp.get(&XDP_DROP).unwrap_or(&0), 5_000),
            ("reset", *xdp.get(&XDP_TX).unwrap_or(&0), 1_000),
            ("passed", *xdp.get(&XDP_PASS).unwrap_or(&0), 20_000),
            ("malformed", count(reason::MALFORMED), 5_000),
            ("not judged", count(reason::NOT_JUDGED), 5_000),
            ("allowed", count(reason::ALLOW), 1_000),
            ("rate limited", count(reason::RATELIMIT), 1_000),
            ("dynamic", count(reason::DYNAMIC), 500),
            ("blocked", count(reason::BLOCK), 3_000),
            ("unmatched", count(reason::NO_MATCH), 3_000),
        ] {
            assert!(
                n >= min,
                "seed {seed}: only {n} frames {what} (want {min}): the generator is off"
            );
        }
    }
}
