//! `cargo xtask bench`: what the XDP program costs per packet, measured with
//! BPF_PROG_TEST_RUN, and what filling its tables costs.
//!
//! The program is loaded and configured as the daemon does it with the shipped config
//! (`deploy/prefilter.toml`: map sizes, ports, events on), and its event ring is read
//! between calls as the daemon reads it. `--quick` measures the 1M and 5M+1M tables only,
//! with fewer rounds and program loads, and skips aya-log and xdp-filter; `--table N` (0–3) measures table N
//! alone the same way, for a quick look while working on the program. `--ab A B [LOADS]`
//! compares two builds of the program (their object files) side by side instead, hot: see
//! [`ab`]; `--ab-cold A B N [LOADS]` cold, with N prefixes of each family: see [`ab_cold`].
//!
//! - hot: one frame run `REPEAT` times in the kernel, median of `ROUNDS` rounds: the cost of
//!   the code path with every table line in cache;
//! - cold: `COLD_FRAMES` distinct frames (random sources spread over the table), one run
//!   each, median: the cost including the cache misses a table of that size brings. A
//!   single run's figure includes one clock read, so the same figure of a trivial
//!   program is subtracted; each cold row is the median over `COLD_LOADS` fresh loads, as
//!   a load's placement moves every cold figure of it;
//! - beside the trivial program, a hand-assembled minimal filter (parse, one /24 load from a
//!   128 MiB array, drop), hot and cold: the least any filter costs on the machine; and the
//!   same with one per-CPU counter bumped per drop, hot: what counting a verdict costs;
//! - cold blocked IPv6 SYNs by the length of the listed prefix the source is in;
//! - between loads: blocked v6 ÷ v4, hot (/48 ÷ /24) and cold (random sources in each
//!   table), over several fresh loads of the program (a ratio moves with where a load
//!   lands; one load per table hides that);
//! - loading the prefixes into the maps (v4 and v6 separately);
//! - aya-log: the same frames with logging compiled out (level 0) and on (level 5);
//! - xdp-filter (xdp-tools) on the same frames, when it is installed.
//!
//! The random tables hold prefixes anywhere in the address space; only the frames of the
//! cold runs come from there, and BPF_PROG_TEST_RUN frames never leave the kernel call.
//! Every frame that is the subject of a named row uses the documentation ranges.

use std::{
    collections::HashSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, BorrowedFd},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use aya::{
    maps::{Map, MapData, MapError, MapInfo, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::loaded_programs,
};
use prefilter::{
    config::Config as FileConfig,
    daemon::Settings,
    xdp::{
        Filter, Options, test_run,
        v4table::{Kind, SlotKind},
    },
};
use prefilter_common::{action, config::FLAG_RATELIMIT, verdict};
use prefilter_tests::{
    Rng, is_root,
    netns::{Netns, PerCpuCounter, U64Array, xdp_min_filter_program, xdp_pass_program},
    packet::{Frame, flags},
};

/// The hand-assembled reference filter's row name.
const MINIMAL: &str = "minimal filter: parse, one /24 load, drop";
const MINIMAL_COUNTING: &str = "minimal filter + one per-CPU counter";

/// Runs per kernel call in the hot measurements.
const REPEAT: u32 = 1_000_000;
/// Kernel calls per hot figure; the median is reported (`--quick`: 5). Ratios pair the
/// calls of one round (`paired_ratio`).
static ROUNDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(21);

fn rounds() -> usize {
    ROUNDS.load(std::sync::atomic::Ordering::Relaxed)
}
/// Distinct frames per cold figure.
const COLD_FRAMES: usize = 4096;
/// Fresh program loads each table's cold rows are the median over.
const COLD_LOADS: usize = 3;
/// Fresh threads the hot spread is taken from.
const CALLING_THREADS: usize = 9;

/// A cold row with fewer sources than this (one slice of the interleaving) is not reported.
const MIN_COLD_SAMPLES: usize = 256;

/// `a / b`, none where `b` is none or under 1 ns.
fn ratio(a: f64, b: f64) -> f64 {
    if b >= 1.0 { a / b } else { f64::NAN }
}

/// A figure for the report, `—` where there is none.
fn num(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "—".to_owned()
    }
}
/// The tables measured.
#[derive(Clone, Copy)]
enum Table {
    /// N random IPv4 prefixes /16–/32 and N IPv6 prefixes.
    Random(usize),
    /// Random host /32s over the whole IPv4 space plus mixed /8–/31 prefixes; 100k IPv6.
    Hosts { hosts: usize, mixed: usize },
}

const TABLES: [Table; 4] = [
    Table::Random(1_000),
    Table::Random(100_000),
    Table::Random(1_000_000),
    Table::Hosts {
        hosts: 5_000_000,
        mixed: 1_000_000,
    },
];

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// bpf_map_update_elem flag: only add, never overwrite.
const BPF_NOEXIST: u64 = 1;

const MX4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const MX6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const CLEAN4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const CLEAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// In 198.51.100.0/24 (drop): a TBL24 leaf, one array lookup.
const LEAF4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// In 203.0.113.0/26 (drop): a /24 with longer prefixes, two lookups.
const LONG4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// In 203.0.113.64/26 (reset).
const RESET4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 70);
/// A /32 alone in its /24 (the named clean sources' /24): held in TBL24, one load.
const HOST4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
/// A /32 in the /24 of the /26s: held in a group, three loads.
const GHOST4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
/// In 2001:db8:bad::/48 (drop).
const DROP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);
/// The documentation /24s the random v4 prefixes stay clear of.
const DOC24: [u32; 3] = [0xc000_0200, 0xc633_6400, 0xcb00_7100];

fn mask4(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// `n` distinct random IPv4 prefixes, lengths /16–/32 drawn uniformly (redrawn on a
/// duplicate, so short lengths are a little rarer), none touching the documentation /24s.
fn random_v4(rng: &mut Rng, n: usize) -> Vec<(u32, u8)> {
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = 16 + rng.below(17) as u8;
        let addr = rng.next() as u32 & mask4(len);
        let touches = DOC24.iter().any(|&d| {
            if len <= 24 {
                d & mask4(len) == addr
            } else {
                addr & mask4(24) == d
            }
        });
        if !touches && seen.insert((addr, len)) {
            out.push((addr, len));
        }
    }
    out
}

/// `n` distinct random IPv6 prefixes in 2000::/3, none in 2001:db8::/32, with the lengths
/// real lists have: 12 % /32, 24 % /48, 8 % /56, 20 % /64, 12 % /128, and 4 % each of /29,
/// /36, /44, /52, /60 and /96.
fn random_v6(rng: &mut Rng, n: usize) -> Vec<(u128, u8)> {
    const LENGTHS: [u8; 25] = [
        32, 32, 32, 48, 48, 48, 48, 48, 48, 56, 56, 64, 64, 64, 64, 64, 128, 128, 128, 29, 36, 44,
        52, 60, 96,
    ];
    let doc: u128 = 0x2001_0db8 << 96;
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = LENGTHS[rng.below(LENGTHS.len() as u64) as usize];
        let raw = (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let addr = ((raw >> 3) | (1 << 125)) & mask6(len);
        if addr & mask6(32) != doc && seen.insert((addr, len)) {
            out.push((addr, len));
        }
    }
    out
}

/// `n` distinct random host /32s over the whole IPv4 space, none in the documentation /24s.
fn random_hosts(rng: &mut Rng, n: usize) -> Vec<u32> {
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let a = rng.next() as u32;
        if !DOC24.contains(&(a & mask4(24))) && seen.insert(a) {
            out.push(a);
        }
    }
    out
}

/// `n` distinct random prefixes /8–/31 in a mix like merged feeds: as many of each length
/// /24–/31, and each shorter length half as many as the next, so every length up to /24
/// covers about as much address space (11 % of it in all); none touching the
/// documentation /24s.
fn random_mixed(rng: &mut Rng, n: usize) -> Vec<(u32, u8)> {
    // Weights in 1/65536: /8 weighs 1, /23 32768, /24../31 65536 each.
    let weight = |l: u8| if l >= 24 { 1u64 << 16 } else { 1u64 << (l - 8) };
    let total: u64 = (8..=31).map(weight).sum();
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut r = rng.below(total);
        let mut len = 8;
        while r >= weight(len) {
            r -= weight(len);
            len += 1;
        }
        let addr = rng.next() as u32 & mask4(len);
        let touches = DOC24.iter().any(|&d| {
            if len <= 24 {
                d & mask4(len) == addr
            } else {
                addr & mask4(24) == d
            }
        });
        if !touches && seen.insert((addr, len)) {
            out.push((addr, len));
        }
    }
    out
}

fn syn(src: impl Into<IpAddr>) -> Vec<u8> {
    let src = src.into();
    let dst: IpAddr = match src {
        IpAddr::V4(_) => MX4.into(),
        IpAddr::V6(_) => MX6.into(),
    };
    Frame::syn(src, dst, 25).build()
}

/// An ACK of an established SMTP session: the program's earliest exit for TCP.
fn ack() -> Vec<u8> {
    let mut f = Frame::syn(CLEAN4.into(), MX4.into(), 25);
    f.flags = flags::ACK;
    f.ack = 1;
    f.build()
}

/// A SYN whose IPv4 total length claims more than the frame holds: malformed, passed, and
/// the one debug! log site on the way.
fn malformed() -> Vec<u8> {
    let mut f = syn(CLEAN4);
    f[16..18].copy_from_slice(&1500u16.to_be_bytes());
    f
}

/// A random address in a random prefix of `v4`.
fn random_in4(rng: &mut Rng, v4: &[(u32, u8)]) -> u32 {
    let (a, l) = v4[rng.below(v4.len() as u64) as usize];
    a | (rng.next() as u32 & !mask4(l))
}

/// A random prefix of `v6`.
fn random_prefix6(rng: &mut Rng, v6: &[(u128, u8)]) -> (u128, u8) {
    v6[rng.below(v6.len() as u64) as usize]
}

/// A random address in IPv6 prefix `a`/`l`.
fn random_in6(rng: &mut Rng, a: u128, l: u8) -> Ipv6Addr {
    let raw = (u128::from(rng.next()) << 64) | u128::from(rng.next());
    Ipv6Addr::from(a | (raw & !mask6(l)))
}

/// The lowest and highest of a sample.
fn lowest_highest(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// Median of a sample.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median of `a[i] / b[i]`: two figures taken one right after the other are compared
/// on the same machine state, so a slow stretch of the VM cancels out of the ratio instead
/// of landing on one side of it (calls of one frame vary by 10–20 % here).
fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return f64::NAN;
    }
    median(a.iter().zip(b).map(|(x, y)| x / y).collect())
}

/// One frame run `REPEAT` times per call, `ROUNDS` calls: the median of the kernel's
/// figure (whole ns per run). The kernel stops its clock while the loop yields the CPU, so
/// unlike the wall time this holds up on a machine with other work running.
fn hot(prog: BorrowedFd<'_>, frame: &[u8], want: u32) -> f64 {
    let first = test_run::run(prog, frame, 1).expect("BPF_PROG_TEST_RUN");
    assert_eq!(first.action, want, "action of the benchmarked frame");
    let v = (0..rounds())
        .map(|_| {
            let r = test_run::run(prog, frame, REPEAT).expect("BPF_PROG_TEST_RUN");
            f64::from(r.ns_per_run)
        })
        .collect();
    median(v)
}

/// Each frame once: the median of the kernel's per-call figure.
fn cold(prog: BorrowedFd<'_>, frames: &[Vec<u8>], want: u32) -> f64 {
    let mut v = Vec::with_capacity(frames.len());
    for f in frames {
        let r = test_run::run(prog, f, 1).expect("BPF_PROG_TEST_RUN");
        assert_eq!(r.action, want, "action of a cold frame");
        v.push(f64::from(r.ns_per_run));
    }
    median(v)
}

/// Per table.
struct Sized {
    name: String,
    v4_n: usize,
    v6_n: usize,
    filter_load: Duration,
    v4_load: Duration,
    v6_load: Duration,
    groups: (u32, u32),
    runs: (u32, u32),
    /// Kernel memory of all the program's maps (memlock, as `bpftool map show`).
    memlock: u64,
    /// Share of the table's host /32s held in a group rather than in TBL24.
    hosts_in_groups: f64,
    /// The trivial program's hot figures, one per round, taken with the rows below.
    floor: Vec<f64>,
    /// The minimal filter's (parse, one /24 load) hot figures on the blocked /24 SYN, one
    /// per round, and its cold figure on the random sources in the table.
    minimal: (Vec<f64>, f64),
    /// The minimal filter with one per-CPU counter, hot, one figure per round.
    minimal_counting: Vec<f64>,
    /// Each hot row's figures, one per round (rows taken round robin).
    hot: Vec<(&'static str, Vec<f64>)>,
    cold: Vec<(&'static str, f64)>,
    /// Cold blocked IPv6 SYNs by the length of the listed prefix they are in.
    v6_by_len: Vec<(u8, f64)>,
    /// Blocked /24 SYN, hot, with the shipped event budget and with events off,
    /// interleaved call by call: the figures of each.
    events: (Vec<f64>, Vec<f64>),
    /// Hot figures from fresh calling threads, one (trivial, minimal, blocked /24 leaf)
    /// triple per thread.
    threads: Vec<(f64, f64, f64)>,
}

/// The shipped config, as the daemon reads it (interfaces not checked).
fn shipped() -> Settings {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prefilter.toml");
    Settings::from(FileConfig::load(path.as_ref(), &|_| true).expect("deploy/prefilter.toml"))
}

/// Loads the program and sets its runtime config as the daemon does with `s`; the event
/// ring is returned for the caller to read as the daemon would.
fn load_as_daemon(s: &Settings, v6_prefixes: usize) -> (Filter, RingBuf<MapData>) {
    load_object_as_daemon(s, v6_prefixes, None).expect("load the XDP program")
}

/// [`load_as_daemon`] with another build of the program (`--ab`).
fn load_object_as_daemon(
    s: &Settings,
    v6_prefixes: usize,
    object: Option<&[u8]>,
) -> Result<(Filter, RingBuf<MapData>), prefilter::xdp::FilterError> {
    // A list past the shipped IPv6 limit needs `[limits] v6_entries` raised, as the README
    // says: random prefixes share no /32 (a marker each) and /44, /52, /60 take 16 entries.
    let v6_entries = (4 * v6_prefixes as u32).next_power_of_two().max(s.limits.1);
    let opts = Options {
        v4_long_groups: s.limits.0,
        v6_entries,
        dynamic_entries: s.limits.2,
        log_level: s.log_level,
        pin_dir: None,
    };
    let mut f = match object {
        Some(o) => Filter::load_object(&opts, o),
        None => Filter::load(&opts),
    }?;
    let mut c = f.config();
    if let Some((cost, cap)) = s.ratelimit {
        c.flags |= FLAG_RATELIMIT;
        c.rl_cost_ns = cost;
        c.rl_cap_ns = cap;
    }
    c.set_events_per_sec(s.events_per_second);
    f.set_config(c).expect("runtime config");
    f.set_ports(&s.ports).expect("ports");
    let ring = f.take_events().expect("event ring");
    Ok((f, ring))
}

/// `frame` hot with the configured event budget and with events off, alternating calls so
/// that both see the same machine; the figures of each call. The difference is a few ns in
/// 25–35, so this takes six times the rounds of a hot row.
fn events_on_off(
    f: &mut Filter,
    ring: &mut RingBuf<MapData>,
    frame: &[u8],
) -> (Vec<f64>, Vec<f64>) {
    let shipped = f.config();
    let mut off_cfg = shipped;
    off_cfg.set_events_per_sec(0);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..rounds() * 6 {
        for (cfg, v) in [(shipped, &mut on), (off_cfg, &mut off)] {
            f.set_config(cfg).expect("config");
            let r = test_run::run(f.program_fd(), frame, REPEAT).expect("BPF_PROG_TEST_RUN");
            assert_eq!(r.action, XDP_DROP);
            v.push(f64::from(r.ns_per_run));
            drain(ring);
        }
    }
    f.set_config(shipped).expect("config");
    (on, off)
}

fn bench_table(table: Table, settings: &Settings, pass: BorrowedFd<'_>, floor1: f64) -> Sized {
    let (seed, n6) = match table {
        Table::Random(n) => (n as u64, n),
        Table::Hosts { hosts, .. } => (hosts as u64, 100_000),
    };
    let mut rng = Rng(0x5eed_0000 + seed);
    let (v4, hosts): (Vec<(u32, u8)>, Vec<u32>) = match table {
        Table::Random(n) => {
            let v4 = random_v4(&mut rng, n - 5);
            let hosts = v4.iter().filter(|p| p.1 == 32).map(|p| p.0).collect();
            (v4, hosts)
        }
        Table::Hosts { hosts, mixed } => {
            let h = random_hosts(&mut rng, hosts);
            let mut v4 = random_mixed(&mut rng, mixed);
            v4.extend(h.iter().map(|&a| (a, 32)));
            (v4, h)
        }
    };
    let mut v6 = random_v6(&mut rng, n6 - 1);
    // In the order the daemon applies IPv6 changes: by length, then address.
    v6.sort_unstable_by_key(|&(a, l)| (l, a));
    let drop = verdict::pack(action::DROP, 1);
    let reset = verdict::pack(action::RESET, 2);

    let t = Instant::now();
    let (mut f, mut ring) = load_as_daemon(settings, n6);
    let filter_load = t.elapsed();

    let mut rules: Vec<(u32, u8, Kind, u16)> =
        v4.iter().map(|&(a, l)| (a, l, Kind::Block, drop)).collect();
    rules.extend([
        (u32::from(LEAF4) & mask4(24), 24, Kind::Block, drop),
        (u32::from(LONG4) & mask4(26), 26, Kind::Block, drop),
        (u32::from(RESET4) & mask4(26), 26, Kind::Block, reset),
        (u32::from(HOST4), 32, Kind::Block, drop),
        (u32::from(GHOST4), 32, Kind::Block, drop),
    ]);
    let t = Instant::now();
    f.v4.set_batch(rules.clone()).expect("v4 prefixes");
    let v4_load = t.elapsed();

    let t = Instant::now();
    fill_v6(&mut f, &v6, drop);
    let v6_load = t.elapsed();
    assert_eq!(f.v4.slot_kind(u32::from(LEAF4)), SlotKind::Leaf);
    assert_eq!(f.v4.slot_kind(u32::from(HOST4)), SlotKind::Host);
    assert_eq!(f.v4.slot_kind(u32::from(GHOST4)), SlotKind::Group);

    let events = events_on_off(&mut f, &mut ring, &syn(LEAF4));
    let prog = f.program_fd();
    // The floor of any filter beside it: its /24 array as large as prefilter's /24 table
    // over the whole IPv4 space (2^24 u64s, 128 MiB), the named /24 set.
    let mut min_table = U64Array::new(1 << 24).expect("the minimal filter's array");
    min_table.set(u32::from(LEAF4) >> 8, 1);
    let min_prog = xdp_min_filter_program(&min_table, None, 25).expect("load the minimal filter");
    let min_counter = PerCpuCounter::new().expect("the minimal filter's counter");
    let min_count_prog = xdp_min_filter_program(&min_table, Some(&min_counter), 25)
        .expect("load the minimal filter with a counter");
    let mut min_hot = Vec::new();
    let mut min_count_hot = Vec::new();
    let hot_set = [
        ("ACK to :25 (not judged)", ack(), XDP_PASS),
        ("malformed (IPv4 length)", malformed(), XDP_PASS),
        ("clean SYN v4", syn(CLEAN4), XDP_PASS),
        ("blocked SYN v4, /24 leaf", syn(LEAF4), XDP_DROP),
        (
            "blocked SYN v4, host /32 alone in its /24",
            syn(HOST4),
            XDP_DROP,
        ),
        ("blocked SYN v4, host /32 in a group", syn(GHOST4), XDP_DROP),
        ("blocked SYN v4, /26 (group)", syn(LONG4), XDP_DROP),
        ("clean SYN v6", syn(CLEAN6), XDP_PASS),
        ("blocked SYN v6, /48", syn(DROP6), XDP_DROP),
    ];
    // Round robin over the rows, the trivial program first, so that rows compared in a
    // ratio see the same machine.
    let mut samples = vec![Vec::new(); hot_set.len()];
    let mut floor = Vec::new();
    for (name, frame, want) in &hot_set {
        let r = test_run::run(prog, frame, 1).expect("BPF_PROG_TEST_RUN");
        assert_eq!(r.action, *want, "action of {name}");
    }
    for _ in 0..rounds() {
        let r = test_run::run(pass, &syn(CLEAN4), REPEAT).expect("BPF_PROG_TEST_RUN");
        floor.push(f64::from(r.ns_per_run));
        let r = test_run::run(min_prog.as_fd(), &syn(LEAF4), REPEAT).expect("BPF_PROG_TEST_RUN");
        assert_eq!(r.action, XDP_DROP, "action of the minimal filter");
        min_hot.push(f64::from(r.ns_per_run));
        let r =
            test_run::run(min_count_prog.as_fd(), &syn(LEAF4), REPEAT).expect("BPF_PROG_TEST_RUN");
        assert_eq!(
            r.action, XDP_DROP,
            "action of the minimal filter with a counter"
        );
        min_count_hot.push(f64::from(r.ns_per_run));
        for ((_, frame, _), v) in hot_set.iter().zip(&mut samples) {
            let r = test_run::run(prog, frame, REPEAT).expect("BPF_PROG_TEST_RUN");
            v.push(f64::from(r.ns_per_run));
        }
        drain(&mut ring);
    }
    let hot_rows: Vec<(&'static str, Vec<f64>)> = hot_set
        .iter()
        .zip(samples)
        .map(|((name, ..), v)| (*name, v))
        .collect();
    // The same three programs from fresh threads: a thread's kernel stack (the BPF stack)
    // and its frame buffer land anew against the maps, and that alone moves a hot figure
    // by a third here; the rows above are one thread's.
    let (leaf, clean) = (syn(LEAF4), syn(CLEAN4));
    let threads: Vec<(f64, f64, f64)> = (0..CALLING_THREADS)
        .map(|_| {
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    let ns = |p: BorrowedFd<'_>, f: &[u8]| {
                        f64::from(
                            test_run::run(p, f, REPEAT)
                                .expect("BPF_PROG_TEST_RUN")
                                .ns_per_run,
                        )
                    };
                    (
                        ns(pass, &clean),
                        ns(min_prog.as_fd(), &leaf),
                        ns(prog, &leaf),
                    )
                })
                .join()
                .expect("a calling thread")
            })
        })
        .collect();

    // Cold: sources spread over the table.
    let mut rng = Rng(0xc01d + seed);
    let pick = |rng: &mut Rng, ok: &dyn Fn(u32) -> bool| -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(COLD_FRAMES);
        for _ in 0..COLD_FRAMES * 1000 {
            if out.len() == COLD_FRAMES {
                break;
            }
            let a = random_in4(rng, &v4);
            if ok(a) {
                out.push(syn(Ipv4Addr::from(a)));
            }
        }
        out
    };
    let blocked4 = pick(&mut rng, &|_| true);
    // For the IPv6 ÷ IPv4 pass: sources of its own, so that neither family's run before.
    let paired4 = pick(&mut rng, &|_| true);
    // A /24 leaf: one load, the reference for the host rows.
    let leaf4 = pick(&mut rng, &|a| f.v4.slot_kind(a) == SlotKind::Leaf);
    let host4: Vec<Vec<u8>> = (0..COLD_FRAMES)
        .map(|_| {
            syn(Ipv4Addr::from(
                hosts[rng.below(hosts.len() as u64) as usize],
            ))
        })
        .collect();
    let in_groups = hosts
        .iter()
        .filter(|&&h| f.v4.slot_kind(h) == SlotKind::Group)
        .count();
    let ghost4: Vec<Vec<u8>> = hosts
        .iter()
        .filter(|&&h| f.v4.slot_kind(h) == SlotKind::Group)
        .take(COLD_FRAMES * 4)
        .step_by(4)
        .map(|&h| syn(Ipv4Addr::from(h)))
        .collect();
    let mut clean4 = Vec::with_capacity(COLD_FRAMES);
    while clean4.len() < COLD_FRAMES {
        let a = rng.next() as u32;
        if f.v4.lookup(a) == 0 {
            clean4.push(syn(Ipv4Addr::from(a)));
        }
    }
    let blocked6: Vec<Vec<u8>> = (0..COLD_FRAMES)
        .map(|_| {
            let (a, l) = random_prefix6(&mut rng, &v6);
            syn(random_in6(&mut rng, a, l))
        })
        .collect();
    // The same, by the length of the listed prefix the source is in (up to 256 each).
    let mut by_len: std::collections::BTreeMap<u8, Vec<Vec<u8>>> = Default::default();
    for _ in 0..COLD_FRAMES * 4 {
        let (a, l) = random_prefix6(&mut rng, &v6);
        let src = random_in6(&mut rng, a, l);
        let frames = by_len.entry(l).or_default();
        if frames.len() < 256 {
            frames.push(syn(src));
        }
    }
    drain(&mut ring);
    // XDP_TX rewrites the frame in place and the kernel reuses it for the next repetition,
    // so a reset is only meaningful one run per call.
    let reset4 = vec![syn(RESET4); COLD_FRAMES];
    let cold_set = [
        (
            "blocked SYN v4, random source in table",
            &blocked4,
            XDP_DROP,
        ),
        ("blocked SYN v4, random /24-leaf source", &leaf4, XDP_DROP),
        ("blocked SYN v4, random host /32", &host4, XDP_DROP),
        (
            "blocked SYN v4, random host /32 in a group",
            &ghost4,
            XDP_DROP,
        ),
        ("clean SYN v4, random source", &clean4, XDP_PASS),
        ("reset SYN v4 (RST+ACK built, XDP_TX)", &reset4, XDP_TX),
    ];
    let (v4_n, v6_n) = (f.v4.len(Kind::Block), f.v6.len(Kind::Block));
    let (groups, runs) = (f.v4.groups_used(), f.v4.runs_used());
    let memlock = f.map_memlock().expect("map memory");
    std::mem::drop((min_prog, min_count_prog, min_table));
    // Cold, a figure moves with where a load's maps landed (on a VM, by up to 2× between
    // loads: host memory of another kind behind them), so each cold row is the median of
    // its medians over fresh loads of the program and the minimal filter, the first load
    // the one measured above.
    let mut loads = Vec::with_capacity(COLD_LOADS);
    for load in 0..COLD_LOADS {
        if load > 0 {
            std::mem::drop((f, ring));
            (f, ring) = load_as_daemon(settings, n6);
            f.v4.set_batch(rules.clone()).expect("v4 prefixes");
            fill_v6(&mut f, &v6, drop);
        }
        loads.push(cold_pass(
            f.program_fd(),
            &mut ring,
            &cold_set,
            [&blocked6, &paired4],
            &by_len,
        ));
    }
    let per_row = |get: &dyn Fn(&ColdPass) -> f64| {
        let v: Vec<f64> = loads.iter().map(get).collect();
        if v.iter().any(|x| x.is_nan()) {
            f64::NAN
        } else {
            median(v) - floor1
        }
    };
    let mut cold_rows: Vec<(&'static str, f64)> = cold_set
        .iter()
        .enumerate()
        .map(|(i, (name, ..))| (*name, per_row(&|l| l.rows[i])))
        .collect();
    cold_rows.extend([
        (COLD_PAIR[0], per_row(&|l| l.pair[0])),
        (COLD_PAIR[1], per_row(&|l| l.pair[1])),
    ]);
    let v6_by_len: Vec<(u8, f64)> = by_len
        .keys()
        .enumerate()
        .map(|(i, &l)| (l, per_row(&|c| c.by_len[i])))
        .collect();
    let min_cold = per_row(&|l| l.minimal);
    Sized {
        name: label(table),
        v4_n,
        v6_n,
        filter_load,
        v4_load,
        v6_load,
        groups,
        runs,
        memlock,
        hosts_in_groups: in_groups as f64 / hosts.len().max(1) as f64,
        floor,
        minimal: (min_hot, min_cold),
        minimal_counting: min_count_hot,
        hot: hot_rows,
        cold: cold_rows,
        v6_by_len,
        events,
        threads,
    }
}

/// The aya-log ring of a loaded filter, to drain it between runs.
fn log_ring(f: &mut Filter) -> Option<RingBuf<MapData>> {
    let ids = f.program().info().ok()?.map_ids().ok()??;
    let id = ids
        .into_iter()
        .find(|&id| MapInfo::from_id(id).is_ok_and(|m| m.name_as_str() == Some("AYA_LOGS")))?;
    RingBuf::try_from(Map::RingBuf(MapData::from_id(id).ok()?)).ok()
}

fn drain(ring: &mut RingBuf<MapData>) -> usize {
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    n
}

/// Translated and JIT-compiled size of a loaded filter's program, in bytes.
fn prog_size(f: &mut Filter) -> (u32, u32) {
    f.program().info().map_or((0, 0), |i| {
        (i.size_translated().unwrap_or(0), i.size_jitted())
    })
}

/// aya-log cost of one frame.
struct LogRow {
    frame: &'static str,
    /// Level 0 and level 5 (ring drained before each call), in batches of `LOG_BATCH`.
    quiet_batch: f64,
    loud_drained: f64,
    /// Level 0 and level 5 with the ring full (nobody reading), `REPEAT` per call.
    quiet_hot: f64,
    loud_full: f64,
}

/// Runs per call when the log ring must not fill: a record is about 100 bytes and the
/// ring 128 KiB.
const LOG_BATCH: u32 = 256;
/// Calls per batched figure.
const LOG_CALLS: usize = 200;

/// Median ns per run over `LOG_CALLS` calls of `LOG_BATCH` runs, draining `ring` (if any)
/// before each call; returns it with the number of records read.
fn batched(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    mut ring: Option<&mut RingBuf<MapData>>,
) -> (f64, usize) {
    let mut v = Vec::with_capacity(LOG_CALLS);
    let mut records = 0;
    for _ in 0..LOG_CALLS {
        if let Some(r) = ring.as_deref_mut() {
            drain(r);
        }
        let r = test_run::run(prog, frame, LOG_BATCH).expect("BPF_PROG_TEST_RUN");
        assert_eq!(r.action, XDP_PASS);
        v.push(f64::from(r.ns_per_run));
        if let Some(r) = ring.as_deref_mut() {
            records += drain(r);
        }
    }
    (median(v), records)
}

/// aya-log: the same frames through the program loaded at level 0 (log code removed by the
/// verifier) and at level 5 (debug on). Returns the rows and the program sizes.
fn bench_log() -> (Vec<LogRow>, [(u32, u32); 2]) {
    let mut quiet = Filter::load(&Options::default()).expect("load, log level 0");
    let mut loud = Filter::load(&Options {
        log_level: 5,
        ..Options::default()
    })
    .expect("load, log level 5");
    let mut ring = log_ring(&mut loud).expect("the AYA_LOGS ring of the level-5 program");
    let mut rows = Vec::new();
    for (frame, bytes, logs) in [
        ("malformed (debug! site)", malformed(), true),
        ("clean SYN v4 (no log site)", syn(CLEAN4), false),
    ] {
        let (quiet_batch, _) = batched(quiet.program_fd(), &bytes, None);
        // Drained: room for every record of a call, as with a reader keeping up.
        let (loud_drained, records) = batched(loud.program_fd(), &bytes, Some(&mut ring));
        let want = if logs {
            LOG_CALLS * LOG_BATCH as usize
        } else {
            0
        };
        assert_eq!(records, want, "{frame}: log records written");
        let quiet_hot = hot(quiet.program_fd(), &bytes, XDP_PASS);
        // No reader: the ring fills after about a thousand records and every log then fails
        // to reserve.
        let loud_full = hot(loud.program_fd(), &bytes, XDP_PASS);
        drain(&mut ring);
        rows.push(LogRow {
            frame,
            quiet_batch,
            loud_drained,
            quiet_hot,
            loud_full,
        });
    }
    (rows, [prog_size(&mut quiet), prog_size(&mut loud)])
}

/// xdp-filter (xdp-tools), IP features only (exact source addresses in a per-CPU hash; it
/// has no prefixes): hot clean and blocked SYN, with one address and with its hash full,
/// and cold blocked sources. Runs whatever libxdp attached (its dispatcher, or the filter
/// program alone when libxdp falls back), which is what a packet meets. Returns the
/// program's name and the rows.
fn bench_xdp_filter() -> Result<(String, Vec<(String, f64)>), String> {
    if Command::new("xdp-filter").arg("help").output().is_err() {
        return Err("xdp-filter is not installed (xdp-tools)".into());
    }
    let ns = Netns::new("pxb");
    let (a, b) = (format!("{}a", ns.name), format!("{}b", ns.name));
    ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    ns.ip(&["link", "set", &a, "up"]);
    ns.ip(&["link", "set", &b, "up"]);
    // `ip netns exec` gives the command a fresh /sys without bpffs; libxdp wants one for
    // its pins, private to this command. The attachment outlives it (netlink).
    let script = format!(
        "mount -t bpf bpf /sys/fs/bpf && xdp-filter load -m skb -p allow -f ipv4,ipv6 {a} \
         && xdp-filter ip -m src {LEAF4}"
    );
    let out = ns
        .command("sh")
        .args(["-c", &script])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "xdp-filter load failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let link = String::from_utf8_lossy(&ns.ip(&["link", "show", "dev", &a]).stdout).into_owned();
    let id: u32 = link
        .split_whitespace()
        .skip_while(|w| *w != "id")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("no XDP program on {a}: {link}"))?;
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or("the attached program is not loaded")?;
    let name = info.name_as_str().unwrap_or("?").to_owned();
    let prog = info.fd().map_err(|e| e.to_string())?;
    // The filter program's source-address map: the one holding our address.
    let key = u32::from(LEAF4).to_be();
    let mut map: PerCpuHashMap<MapData, u32, u64> = loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("xdpfilt")))
        .filter_map(|p| p.map_ids().ok().flatten())
        .flatten()
        .filter(|&m| MapInfo::from_id(m).is_ok_and(|i| i.name_as_str() == Some("filter_ipv4")))
        .filter_map(|m| MapData::from_id(m).ok())
        .filter_map(|d| PerCpuHashMap::try_from(Map::PerCpuHashMap(d)).ok())
        .find(|m: &PerCpuHashMap<MapData, u32, u64>| m.get(&key, 0).is_ok())
        .ok_or("xdp-filter's filter_ipv4 map not found")?;
    let fd = prog.as_fd();
    let mut rows = vec![
        (
            "clean SYN v4, 1 address".to_owned(),
            hot(fd, &syn(CLEAN4), XDP_PASS),
        ),
        (
            "blocked SYN v4, 1 address".to_owned(),
            hot(fd, &syn(LEAF4), XDP_DROP),
        ),
    ];
    // Fill its hash with random sources, as xdp-filter's own `ip` command would (value:
    // u64 hit counter << 6 | flags, per CPU; flag 1 = source).
    let cpus = aya::util::nr_cpus().map_err(|(m, e)| format!("{m}: {e}"))?;
    let mut rng = Rng(0xf117);
    // Its hash is small (10,000 entries in the Debian build): fill it until the kernel says
    // it is full (E2BIG), with bounded attempts.
    let mut keys = Vec::new();
    let mut last_err = None;
    for _ in 0..200_000 {
        let k = (rng.next() as u32).to_be();
        let src_flag = PerCpuValues::try_from(vec![1u64; cpus]).map_err(|e| e.to_string())?;
        match map.insert(k, src_flag, BPF_NOEXIST) {
            Ok(()) => keys.push(k),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    if keys.len() < 1000 {
        return Err(format!(
            "filling xdp-filter's map stopped at {} addresses: {last_err:?}",
            keys.len()
        ));
    }
    let filled = keys.len() + 1;
    rows.push((
        format!("clean SYN v4, {filled} addresses"),
        hot(fd, &syn(CLEAN4), XDP_PASS),
    ));
    rows.push((
        format!("blocked SYN v4, {filled} addresses"),
        hot(fd, &syn(LEAF4), XDP_DROP),
    ));
    let pass = xdp_pass_program().map_err(|e| e.to_string())?;
    let floor1 = cold(pass.as_fd(), &vec![syn(CLEAN4); COLD_FRAMES], XDP_PASS);
    let frames: Vec<Vec<u8>> = (0..COLD_FRAMES)
        .map(|_| {
            syn(Ipv4Addr::from(u32::from_be(
                keys[rng.below(keys.len() as u64) as usize],
            )))
        })
        .collect();
    rows.push((
        "blocked SYN v4, random source in hash (cold, one run each)".into(),
        cold(fd, &frames, XDP_DROP) - floor1,
    ));
    // Dropping `ns` deletes the veth, which detaches the program; the maps go with the
    // last descriptor.
    Ok((name, rows))
}

fn count(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1000)
    }
}

fn label(t: Table) -> String {
    match t {
        Table::Random(n) => count(n),
        Table::Hosts { hosts, mixed } => format!("{} /32 + {}", count(hosts), count(mixed)),
    }
}

/// The IPv6 list `v6` (sorted by length, then address) and the named /48, all `drop`, as
/// the daemon applies them: the HX entries of a few prefixes ahead fetched meanwhile.
fn fill_v6(f: &mut Filter, v6: &[(u128, u8)], drop: u16) {
    for (i, &(a, l)) in v6.iter().enumerate() {
        if let Some(&(a, l)) = v6.get(i + 4) {
            f.v6.prefetch(a, l);
        }
        f.v6.set(a, l, Kind::Block, drop).expect("v6 prefix");
    }
    f.v6.set(u128::from(DROP6) & mask6(48), 48, Kind::Block, drop)
        .expect("v6 prefix");
}

/// One load's cold medians, the trivial program's figure not subtracted: each row of
/// `cold_set` (NaN where it has too few frames), the minimal filter on `blocked4` (an
/// array of its own, fresh like the load, holding their /24s) and the IPv6 sources by
/// listed length.
struct ColdPass {
    rows: Vec<f64>,
    minimal: f64,
    by_len: Vec<f64>,
    /// [`COLD_PAIR`]: random blocked IPv6 and IPv4 sources, alternating.
    pair: [f64; 2],
}

/// The cold rows of the IPv6 ÷ IPv4 ratio, taken in a pass of their own on sources of
/// their own, the families alternating by 256 frames, so that each runs after the other
/// and neither after its own rows (as [`between_loads`]). What moves this ratio most here
/// is where a load's tables landed: on this VM a random IPv4 lookup at 1M costs 170–260 ns
/// in some loads and ~400 in others, the minimal filter's one load ~250–400, while IPv6's
/// two or three random pages rarely all land well (1.0–2.5× IPv4 between loads and
/// moments; hence medians over loads).
const COLD_PAIR: [&str; 2] = [
    "blocked SYN v6, random source in table (alternating with v4)",
    "blocked SYN v4, random source in table (alternating with v6)",
];

fn cold_pass(
    prog: BorrowedFd<'_>,
    ring: &mut RingBuf<MapData>,
    cold_set: &[(&'static str, &Vec<Vec<u8>>, u32)],
    [blocked6, blocked4]: [&[Vec<u8>]; 2],
    by_len: &std::collections::BTreeMap<u8, Vec<Vec<u8>>>,
) -> ColdPass {
    let by_len = by_len
        .values()
        .map(|frames| cold(prog, frames, XDP_DROP))
        .collect();
    drain(ring);
    let mut min_table = U64Array::new(1 << 24).expect("the minimal filter's array");
    for frame in blocked4 {
        min_table.set(
            u32::from_be_bytes([frame[26], frame[27], frame[28], 0]) >> 8,
            1,
        );
    }
    let min_prog = xdp_min_filter_program(&min_table, None, 25).expect("load the minimal filter");
    let mut min_cold = Vec::new();
    // Interleaved in slices of 256 frames per row, so that rows compared in a ratio see
    // the same machine.
    let mut samples = vec![Vec::new(); cold_set.len()];
    for chunk in 0..COLD_FRAMES / 256 {
        for frame in blocked4.iter().skip(chunk * 256).take(256) {
            let r = test_run::run(min_prog.as_fd(), frame, 1).expect("BPF_PROG_TEST_RUN");
            assert_eq!(r.action, XDP_DROP, "action of the minimal filter, cold");
            min_cold.push(f64::from(r.ns_per_run));
        }
        for ((_, frames, want), v) in cold_set.iter().zip(&mut samples) {
            for frame in frames.iter().skip(chunk * 256).take(256) {
                let r = test_run::run(prog, frame, 1).expect("BPF_PROG_TEST_RUN");
                assert_eq!(r.action, *want, "action of a cold frame");
                v.push(f64::from(r.ns_per_run));
            }
        }
        drain(ring);
    }
    // A median of a few runs, all in the first slice, says nothing about a random source:
    // the random /16–/32 tables hold few hosts that share a /24 with a longer prefix.
    let rows = samples
        .into_iter()
        .map(|v| {
            if v.len() < MIN_COLD_SAMPLES {
                f64::NAN
            } else {
                median(v)
            }
        })
        .collect();
    let mut pair = [Vec::new(), Vec::new()];
    for chunk in 0..COLD_FRAMES / 256 {
        for (frames, v) in [blocked6, blocked4].iter().zip(&mut pair) {
            for frame in frames.iter().skip(chunk * 256).take(256) {
                let r = test_run::run(prog, frame, 1).expect("BPF_PROG_TEST_RUN");
                assert_eq!(r.action, XDP_DROP, "action of a cold frame");
                v.push(f64::from(r.ns_per_run));
            }
        }
        drain(ring);
    }
    ColdPass {
        rows,
        minimal: median(min_cold),
        by_len,
        pair: pair.map(median),
    }
}

/// Blocked v6 ÷ blocked v4 per program load, hot and cold: each load places the program
/// and its maps elsewhere (and on a VM, host memory of another kind behind them), and a
/// ratio moves with that by ±0.1 hot and by more cold, which one load per table cannot show.
/// `loads` fresh loads with `n` random IPv4 and `n` random IPv6 prefixes (the tables'
/// generators) and the named /24 and /48; per load, the paired hot ratio of the /48 to the
/// /24, and the ratio of the cold medians of random sources in each table (interleaved by
/// 256 as in [`bench_table`], `floor1` subtracted).
fn between_loads(s: &Settings, n: usize, loads: usize, floor1: f64) -> Vec<(f64, f64)> {
    let mut rng = Rng(0x5eed_0000 + n as u64);
    let mut v6 = random_v6(&mut rng, n - 1);
    v6.sort_unstable_by_key(|&(a, l)| (l, a));
    let v4 = random_v4(&mut rng, n - 1);
    let drop = verdict::pack(action::DROP, 1);
    let blocked4: Vec<Vec<u8>> = (0..COLD_FRAMES / 2)
        .map(|_| syn(Ipv4Addr::from(random_in4(&mut rng, &v4))))
        .collect();
    let blocked6: Vec<Vec<u8>> = (0..COLD_FRAMES / 2)
        .map(|_| {
            let (a, l) = random_prefix6(&mut rng, &v6);
            syn(random_in6(&mut rng, a, l))
        })
        .collect();
    (0..loads)
        .map(|_| {
            let (mut f, mut ring) = load_as_daemon(s, n);
            let mut rules: Vec<(u32, u8, Kind, u16)> =
                v4.iter().map(|&(a, l)| (a, l, Kind::Block, drop)).collect();
            rules.push((u32::from(LEAF4) & mask4(24), 24, Kind::Block, drop));
            f.v4.set_batch(rules).expect("v4 prefixes");
            fill_v6(&mut f, &v6, drop);
            let prog = f.program_fd();
            let (v4, v6) = (syn(LEAF4), syn(DROP6));
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..rounds() {
                for (frame, v) in [(&v6, &mut a), (&v4, &mut b)] {
                    let r = test_run::run(prog, frame, REPEAT).expect("BPF_PROG_TEST_RUN");
                    assert_eq!(r.action, XDP_DROP);
                    v.push(f64::from(r.ns_per_run));
                }
                drain(&mut ring);
            }
            let (mut c6, mut c4) = (Vec::new(), Vec::new());
            for chunk in 0..blocked4.len() / 256 {
                for (frames, v) in [(&blocked6, &mut c6), (&blocked4, &mut c4)] {
                    for frame in frames.iter().skip(chunk * 256).take(256) {
                        let r = test_run::run(prog, frame, 1).expect("BPF_PROG_TEST_RUN");
                        assert_eq!(r.action, XDP_DROP, "action of a cold frame");
                        v.push(f64::from(r.ns_per_run));
                    }
                }
                drain(&mut ring);
            }
            (
                paired_ratio(&a, &b),
                (median(c6) - floor1) / (median(c4) - floor1),
            )
        })
        .collect()
}

/// The object files of `--ab` and `--ab-cold`; exits naming the one it cannot read.
fn read_objects(paths: [&str; 2]) -> [Vec<u8>; 2] {
    paths.map(|p| match std::fs::read(p) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: cannot read the object {p}: {e}");
            std::process::exit(2);
        }
    })
}

/// Both builds loaded as the daemon would with room for `n6` IPv6 prefixes, each filled
/// by `fill`, returned in the order A, B; the one loaded first alternates with `round`, as
/// the first gets the first free memory. Exits naming a build that does not load.
fn load_both(
    s: &Settings,
    paths: [&str; 2],
    objects: &[Vec<u8>; 2],
    n6: usize,
    round: usize,
    fill: impl Fn(&mut Filter),
) -> (Vec<Filter>, Vec<RingBuf<MapData>>) {
    let order = if round.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    };
    let mut slots: [Option<(Filter, RingBuf<MapData>)>; 2] = [None, None];
    for i in order {
        let (mut f, ring) = match load_object_as_daemon(s, n6, Some(&objects[i])) {
            Ok(loaded) => loaded,
            Err(e) => {
                eprintln!("bench: cannot load {}: {e}", paths[i]);
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    eprintln!("  caused by: {inner}");
                    source = inner.source();
                }
                std::process::exit(2);
            }
        };
        fill(&mut f);
        slots[i] = Some((f, ring));
    }
    slots.into_iter().flatten().unzip()
}

/// `bench --ab A B [LOADS]`: two builds of the program (their object files,
/// `target/*/build/prefilter-*/out/prefilter-xdp` of each) side by side, for a change worth
/// a few percent: one run of one build moves by a third with where its program, maps and
/// the calling thread's stack land, so figures from two runs cannot tell such a change.
/// Each round loads both afresh with the same tables (1k random IPv6 prefixes, a /24 and a
/// /48 blocked), then calls them alternately from fresh threads; the ratio B ÷ A of each
/// thread's medians, per frame, summarized over rounds and threads.
fn ab(s: &Settings, paths: [&str; 2], loads: usize) -> ExitCode {
    let objects = read_objects(paths);
    let mut rng = Rng(0x5eed_00ab);
    let mut v6 = random_v6(&mut rng, 999);
    v6.sort_unstable_by_key(|&(a, l)| (l, a));
    let drop = verdict::pack(action::DROP, 1);
    let frames: [(&str, Vec<u8>, u32); 4] = [
        ("blocked SYN v4, /24 leaf", syn(LEAF4), XDP_DROP),
        ("blocked SYN v6, /48", syn(DROP6), XDP_DROP),
        ("clean SYN v4", syn(CLEAN4), XDP_PASS),
        ("clean SYN v6", syn(CLEAN6), XDP_PASS),
    ];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); frames.len()];
    let mut ns: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; frames.len()];
    let mut within: [[Vec<f64>; 2]; 2] = Default::default();
    let pass = xdp_pass_program().expect("load a trivial XDP program");
    for round in 0..loads {
        let (filters, mut rings) = load_both(s, paths, &objects, v6.len(), round, |f| {
            f.v4.set_batch(vec![(u32::from(LEAF4) & mask4(24), 24, Kind::Block, drop)])
                .expect("v4 prefix");
            fill_v6(f, &v6, drop);
        });
        let fds = [filters[0].program_fd(), filters[1].program_fd()];
        for _ in 0..CALLING_THREADS {
            let per_thread = std::thread::scope(|sc| {
                sc.spawn(|| {
                    let floor = (0..rounds())
                        .map(|_| {
                            let r = test_run::run(pass.as_fd(), &frames[0].1, REPEAT / 4)
                                .expect("BPF_PROG_TEST_RUN");
                            f64::from(r.ns_per_run)
                        })
                        .sum::<f64>()
                        / rounds() as f64;
                    let row = frames
                        .iter()
                        .map(|(_, frame, want)| {
                            let (mut a, mut b) = (Vec::new(), Vec::new());
                            for _ in 0..rounds() {
                                for (fd, v) in [(fds[0], &mut a), (fds[1], &mut b)] {
                                    let r = test_run::run(fd, frame, REPEAT / 4)
                                        .expect("BPF_PROG_TEST_RUN");
                                    assert_eq!(r.action, *want, "action of a compared frame");
                                    v.push(f64::from(r.ns_per_run));
                                }
                            }
                            // Means: the kernel gives whole ns per call, which a median
                            // keeps and a mean of several calls refines.
                            let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
                            (mean(a), mean(b))
                        })
                        .collect::<Vec<_>>();
                    (floor, row)
                })
                .join()
                .expect("calling thread")
            });
            let (floor, per_thread) = per_thread;
            // Within each build, this thread's: blocked v4 ÷ trivial, blocked v6 ÷ v4.
            for (k, side) in [(0, 0usize), (1, 1)] {
                let (v4, v6) = (per_thread[0], per_thread[1]);
                let pick = |p: (f64, f64)| if side == 0 { p.0 } else { p.1 };
                within[k][0].push(pick(v4) / floor);
                within[k][1].push(pick(v6) / pick(v4));
            }
            for (i, (a, b)) in per_thread.into_iter().enumerate() {
                ratios[i].push(b / a);
                ns[i][0].push(a);
                ns[i][1].push(b);
            }
        }
        for ring in &mut rings {
            drain(ring);
        }
        eprintln!("bench: --ab round {}/{loads}", round + 1);
    }
    println!("A: {}\nB: {}\n", paths[0], paths[1]);
    println!(
        "| frame | A ns | B ns | B ÷ A median | geometric mean (95 % interval) | lowest | highest |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, (name, _, _)) in frames.iter().enumerate() {
        let r = &ratios[i];
        let (lo, hi) = lowest_highest(r);
        println!(
            "| {name} | {:.1} | {:.1} | {:.3} | {} | {lo:.2} | {hi:.2} |",
            median(ns[i][0].clone()),
            median(ns[i][1].clone()),
            median(r.clone()),
            geomean(r),
        );
    }
    println!("\n| within a build, per thread | A | B |\n|---|---:|---:|");
    for (j, what) in [
        "blocked SYN v4 /24 ÷ trivial",
        "blocked SYN v6 /48 ÷ v4 /24",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {what} | {} | {} |",
            geomean(&within[0][j]),
            geomean(&within[1][j])
        );
    }
    ExitCode::SUCCESS
}

/// `bench --ab-cold A B N [LOADS]`: two builds side by side cold, loaded alike with `n`
/// random IPv4 and IPv6 prefixes each round: random sources in each table (and IPv6 ones
/// by listed length), one run each, the rows interleaved by 256. Per row, each
/// build's median over rounds and the median of the per-round B ÷ A ratio.
fn ab_cold(s: &Settings, paths: [&str; 2], n: usize, loads: usize) -> ExitCode {
    let objects = read_objects(paths);
    let mut rng = Rng(0x5eed_0000 + n as u64);
    let mut v6 = random_v6(&mut rng, n - 1);
    v6.sort_unstable_by_key(|&(a, l)| (l, a));
    let v4 = random_v4(&mut rng, n - 1);
    let drop = verdict::pack(action::DROP, 1);
    let src6 = |rng: &mut Rng, want: Option<u8>| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        // Bounded: a length the generator gave few prefixes yields fewer sources.
        for _ in 0..1024 * 1000 {
            if out.len() == 1024 {
                break;
            }
            let (a, l) = random_prefix6(rng, &v6);
            if want.is_some_and(|w| w != l) {
                continue;
            }
            out.push(syn(random_in6(rng, a, l)));
        }
        out
    };
    let mut rows: Vec<(String, Vec<Vec<u8>>)> = vec![(
        "blocked v4, random in table".into(),
        (0..1024)
            .map(|_| syn(Ipv4Addr::from(random_in4(&mut rng, &v4))))
            .collect(),
    )];
    rows.push(("blocked v6, random in table".into(), src6(&mut rng, None)));
    for l in [32, 48, 64, 128, 36, 96] {
        rows.push((format!("blocked v6, in a /{l}"), src6(&mut rng, Some(l))));
    }
    // A median of fewer sources says little; such a row is left out.
    rows.retain(|(_, frames)| frames.len() >= 256);
    let pass = xdp_pass_program().expect("load a trivial XDP program");
    let mut med: Vec<[Vec<f64>; 2]> = vec![Default::default(); rows.len()];
    for round in 0..loads {
        let (filters, mut rings) = load_both(s, paths, &objects, n, round, |f| {
            f.v4.set_batch(v4.iter().map(|&(a, l)| (a, l, Kind::Block, drop)).collect())
                .expect("v4 prefixes");
            fill_v6(f, &v6, drop);
        });
        let fds = [filters[0].program_fd(), filters[1].program_fd()];
        let floor = cold(pass.as_fd(), &vec![syn(CLEAN4); 1024], XDP_PASS);
        let mut v: Vec<[Vec<f64>; 2]> = vec![Default::default(); rows.len()];
        for chunk in 0..4 {
            for (r, (_, frames)) in rows.iter().enumerate() {
                for (k, fd) in fds.iter().enumerate() {
                    for frame in frames.iter().skip(chunk * 256).take(256) {
                        let t = test_run::run(*fd, frame, 1).expect("BPF_PROG_TEST_RUN");
                        assert_eq!(t.action, XDP_DROP, "action of a cold frame");
                        v[r][k].push(f64::from(t.ns_per_run));
                    }
                }
            }
            for ring in &mut rings {
                drain(ring);
            }
        }
        for (r, pair) in v.into_iter().enumerate() {
            for (k, x) in pair.into_iter().enumerate() {
                med[r][k].push(median(x) - floor);
            }
        }
        eprintln!("bench: --ab-cold round {}/{loads}", round + 1);
    }
    println!("A: {}\nB: {}\n", paths[0], paths[1]);
    println!("| cold row | A ns | B ns | B ÷ A median | lowest | highest |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (r, (name, _)) in rows.iter().enumerate() {
        let ratios: Vec<f64> = med[r][0]
            .iter()
            .zip(&med[r][1])
            .map(|(a, b)| b / a)
            .collect();
        let (lo, hi) = lowest_highest(&ratios);
        println!(
            "| {name} | {:.0} | {:.0} | {:.3} | {lo:.2} | {hi:.2} |",
            median(med[r][0].clone()),
            median(med[r][1].clone()),
            median(ratios),
        );
    }
    ExitCode::SUCCESS
}

/// Geometric mean of ratios and its 95 % interval: the ratios' logs are about symmetric.
fn geomean(r: &[f64]) -> String {
    let logs: Vec<f64> = r.iter().map(|x| x.ln()).collect();
    let n = logs.len() as f64;
    let m = logs.iter().sum::<f64>() / n;
    let sd = (logs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let half = 1.96 * sd / n.sqrt();
    format!(
        "{:.3} ({:.3}–{:.3})",
        m.exp(),
        (m - half).exp(),
        (m + half).exp()
    )
}

/// The LOADS argument of `--ab` and `--ab-cold`: `default` when absent, None (said why)
/// when it is not a count from 1 to 100.
fn loads_arg(arg: Option<&String>, default: usize) -> Option<usize> {
    let Some(a) = arg else {
        return Some(default);
    };
    match a.parse::<usize>() {
        Ok(n) if (1..=100).contains(&n) => Some(n),
        _ => {
            eprintln!("bench: LOADS must be a count of program loads from 1 to 100, not {a:?}");
            None
        }
    }
}

fn main() -> ExitCode {
    if !is_root() {
        eprintln!("bench: needs root (BPF_PROG_LOAD, BPF_PROG_TEST_RUN)");
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let kernel = Command::new("uname").arg("-r").output().map_or_else(
        |_| "?".into(),
        |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
    );
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());

    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--ab") {
        let (Some(a), Some(b)) = (args.get(i + 1), args.get(i + 2)) else {
            eprintln!("bench: --ab needs two object files: --ab A B [LOADS]");
            return ExitCode::from(2);
        };
        let Some(loads) = loads_arg(args.get(i + 3), 8) else {
            return ExitCode::from(2);
        };
        ROUNDS.store(7, std::sync::atomic::Ordering::Relaxed);
        return ab(&shipped(), [a, b], loads);
    }
    if let Some(i) = args.iter().position(|a| a == "--ab-cold") {
        let (Some(a), Some(b), Some(n)) = (
            args.get(i + 1),
            args.get(i + 2),
            args.get(i + 3).and_then(|n| n.parse().ok()),
        ) else {
            eprintln!(
                "bench: --ab-cold needs two object files and a table size: --ab-cold A B N [LOADS]"
            );
            return ExitCode::from(2);
        };
        if !(1_000..=2_000_000).contains(&n) {
            eprintln!(
                "bench: --ab-cold table size {n} is out of range: 1000 to 2000000 prefixes \
                 of each family (the IPv6 tables stop at 8,388,608 entries)"
            );
            return ExitCode::from(2);
        }
        let Some(loads) = loads_arg(args.get(i + 4), 4) else {
            return ExitCode::from(2);
        };
        return ab_cold(&shipped(), [a, b], n, loads);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    // `--table N` (an index into TABLES) measures that table alone, for a quick look.
    let only = std::env::args()
        .skip_while(|a| a != "--table")
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok());
    let tables: Vec<Table> = if let Some(i) = only {
        ROUNDS.store(5, std::sync::atomic::Ordering::Relaxed);
        vec![TABLES[i.min(TABLES.len() - 1)]]
    } else if quick {
        ROUNDS.store(5, std::sync::atomic::Ordering::Relaxed);
        TABLES[2..].to_vec()
    } else {
        TABLES.to_vec()
    };
    let settings = shipped();

    let pass = xdp_pass_program().expect("load a trivial XDP program");
    let floor1 = cold(pass.as_fd(), &vec![syn(CLEAN4); COLD_FRAMES], XDP_PASS);

    let mut sized = Vec::new();
    for &t in &tables {
        eprintln!("bench: table {}...", label(t));
        sized.push(bench_table(t, &settings, pass.as_fd(), floor1));
    }
    drop(pass);
    let quick = quick || only.is_some();
    let (log, sizes) = if quick {
        (Vec::new(), [(0, 0); 2])
    } else {
        eprintln!("bench: aya-log...");
        bench_log()
    };
    // Fewer, and no 1M, for a quick look.
    let load_sets: &[(usize, usize)] = if quick {
        &[(1_000, 4), (100_000, 3)]
    } else {
        &[(1_000, 10), (100_000, 6), (1_000_000, 8)]
    };
    let loads: Vec<(usize, Vec<(f64, f64)>)> = load_sets
        .iter()
        .map(|&(n6, k)| {
            eprintln!("bench: {k} program loads with {n6} IPv4 and {n6} IPv6 prefixes...");
            (n6, between_loads(&settings, n6, k, floor1))
        })
        .collect();
    let xdpf = if quick {
        Err("--quick".to_owned())
    } else {
        eprintln!("bench: xdp-filter...");
        bench_xdp_filter()
    };

    let mut o = String::new();
    let _ = writeln!(o, "\n## XDP program cost (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        o,
        "Kernel {kernel}, {cpus} vCPU ({cpu}). Frames of 74 (v4) and 94 (v6) bytes to port 25. \
         The program as the daemon loads it with deploy/prefilter.toml (v4_long_groups {}, \
         events {} per second per CPU, ring read between calls; v6_entries raised to room for \
         the IPv6 list where it is past the shipped limit). Tables: N random IPv4 prefixes \
         /16–/32 (all drop) and N random IPv6 prefixes in 2000::/3 with the lengths of real \
         lists (12 % /32, 24 % /48, 8 % /56, 20 % /64, 12 % /128, 4 % each of /29, /36, /44, \
         /52, /60, /96); or random \
         host /32s over the whole IPv4 space plus mixed /8–/31 prefixes (as many of each \
         length /24–/31, half as many per shorter length) and 100k IPv6; seeded PRNG; the \
         named sources sit in documentation prefixes added to them. Figures are the kernel's \
         own (whole ns).\n",
        settings.limits.0, settings.events_per_second
    );
    let _ = writeln!(
        o,
        "### Hot: one frame repeated {REPEAT} times, median of {} calls, rows taken round robin, ns/packet\n",
        rounds()
    );
    let heads: Vec<&str> = sized.iter().map(|s| s.name.as_str()).collect();
    let n = heads.len();
    let _ = writeln!(
        o,
        "| frame | {} | last / first | last − floor | last / floor |",
        heads.join(" | ")
    );
    let _ = writeln!(o, "|---|{}---:|---:|---:|", "---:|".repeat(n));
    let floors: Vec<f64> = sized.iter().map(|s| median(s.floor.clone())).collect();
    let cells: Vec<String> = floors.iter().map(|x| format!("{x:.0}")).collect();
    let _ = writeln!(
        o,
        "| trivial `return XDP_PASS` (floor) | {} | {:.2} | 0 | 1.00 |",
        cells.join(" | "),
        floors[n - 1] / floors[0]
    );
    let last_table = &sized[n - 1];
    // A hot row: each table's median, last ÷ first, last − floor, last ÷ floor (paired).
    let mut hot_row = |name: &str, per_round: &dyn Fn(&Sized) -> &Vec<f64>| {
        let v: Vec<f64> = sized.iter().map(|s| median(per_round(s).clone())).collect();
        let cells: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
        let _ = writeln!(
            o,
            "| {name} | {} | {:.2} | {:.0} | {:.2} |",
            cells.join(" | "),
            v[n - 1] / v[0],
            v[n - 1] - floors[n - 1],
            paired_ratio(per_round(last_table), &last_table.floor)
        );
    };
    hot_row(MINIMAL, &|s| &s.minimal.0);
    hot_row(MINIMAL_COUNTING, &|s| &s.minimal_counting);
    for (i, (name, _)) in sized[0].hot.iter().enumerate() {
        hot_row(name, &|s| &s.hot[i].1);
    }
    let _ = writeln!(
        o,
        "\n### Cold: {COLD_FRAMES} distinct frames, one run each, rows interleaved by 256, median ns/packet above the \
         trivial program's one-run figure ({floor1:.0} ns: one run plus a clock read), median over {COLD_LOADS} fresh \
         loads of the program and its tables\n\n\
         The IPv6 row and the IPv4 row named *alternating* are a pass of their own on sources of their own, the \
         families alternating by 256 frames, so that each follows the other and neither its own rows; the \
         IPv6 ÷ IPv4 ratios below come from them. One random load from a 128 MiB table costs 170 to 400 ns \
         here depending on where a load's pages landed (on a VM, host memory of another kind behind them), \
         which moves every cold figure of a load together, IPv6 (two or three such pages per lookup) more \
         than IPv4.\n"
    );
    let _ = writeln!(o, "| frame | {} | last / first |", heads.join(" | "));
    let _ = writeln!(o, "|---|{}---:|", "---:|".repeat(n));
    for (i, (name, _)) in sized[0].cold.iter().enumerate() {
        let v: Vec<f64> = sized.iter().map(|s| s.cold[i].1).collect();
        let cells: Vec<String> = v.iter().map(|&x| num(x, 0)).collect();
        let _ = writeln!(
            o,
            "| {name} | {} | {} |",
            cells.join(" | "),
            num(ratio(v[v.len() - 1], v[0]), 2)
        );
    }
    let v: Vec<f64> = sized.iter().map(|s| s.minimal.1).collect();
    let cells: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
    let _ = writeln!(
        o,
        "| {MINIMAL}, random source in table | {} | {:.2} |",
        cells.join(" | "),
        v[n - 1] / v[0].max(1.0)
    );
    let _ = writeln!(
        o,
        "\n— : fewer than {MIN_COLD_SAMPLES} such sources in the table (a random /16–/32 \
         table holds few hosts that share their /24 with a longer prefix), too few for a cold \
         median."
    );
    let _ = writeln!(
        o,
        "\n*{MINIMAL}*: the least any SYN filter does, hand-assembled (36 BPF instructions, \
         `xdp_min_filter_program` in tests/src/netns.rs): Ethernet, IPv4 and TCP checked as \
         prefilter's fast path checks them, SYN alone to port 25, the source's /24 looked up \
         in a BPF array of 2^24 u64s (128 MiB, as large as prefilter's /24 table over the \
         whole IPv4 space), dropped where the entry is set; no counters, no events, no \
         configurable ports. Its hot ratio to the trivial program is the least a filter can \
         reach on this machine; its cold figure is one random load from a table that size. \
         *{MINIMAL_COUNTING}*: the same, bumping one per-CPU u64 per drop (its slot looked up \
         with the key through the stack, as compiled code passes it; 10 BPF instructions more): \
         the least a filter that counts its verdicts costs.\n"
    );
    let _ = writeln!(
        o,
        "\n#### Cold blocked IPv6 SYN by the length of the listed prefix the source is in\n\n\
         Median ns above the trivial program, up to 256 sources each (rows above: the same \
         list mix, sources drawn over all of it). /32–/64 and /128 are exact-match entries \
         (/29, /44, /52, /60 are expanded into them); /36 and /96 are entries of their own \
         length, probed where the /32 (or deeper entry) found flags one inside.\n"
    );
    let _ = writeln!(o, "| prefix length | {} |", heads.join(" | "));
    let _ = writeln!(o, "|---:|{}", "---:|".repeat(n));
    let lens: std::collections::BTreeSet<u8> = sized
        .iter()
        .flat_map(|s| s.v6_by_len.iter().map(|r| r.0))
        .collect();
    for l in lens {
        let cells: Vec<String> = sized
            .iter()
            .map(|s| {
                s.v6_by_len
                    .iter()
                    .find(|r| r.0 == l)
                    .map_or("—".to_owned(), |r| format!("{:.0}", r.1))
            })
            .collect();
        let _ = writeln!(o, "| /{l} | {} |", cells.join(" | "));
    }
    let _ = writeln!(o, "\n### Ratios within this run\n");
    let _ = writeln!(o, "| ratio | {} |", heads.join(" | "));
    let _ = writeln!(o, "|---|{}", "---:|".repeat(n));
    let hot_ns = |s: &Sized, name: &str| {
        s.hot
            .iter()
            .find(|r| r.0 == name)
            .map_or(f64::NAN, |r| median(r.1.clone()))
    };
    // Hot ratios pair each round's figures (`paired_ratio`); cold ones divide medians.
    let hot_of = |s: &Sized, a: &str, b: &str| {
        let row = |name: &str| s.hot.iter().find(|r| r.0 == name).map(|r| r.1.as_slice());
        match (row(a), row(b)) {
            (Some(a), Some(b)) => paired_ratio(a, b),
            _ => f64::NAN,
        }
    };
    let cold_of = |s: &Sized, name: &str| {
        s.cold
            .iter()
            .find(|r| r.0 == name)
            .map_or(f64::NAN, |r| r.1)
    };
    type Ratio<'a> = (&'a str, &'a dyn Fn(&Sized) -> f64);
    let rows: [Ratio; 11] = [
        (
            "blocked /24 SYN hot: events as shipped / events off (interleaved)",
            &|s| paired_ratio(&s.events.0, &s.events.1),
        ),
        ("host /32 alone / /24 leaf, hot", &|s| {
            hot_of(
                s,
                "blocked SYN v4, host /32 alone in its /24",
                "blocked SYN v4, /24 leaf",
            )
        }),
        ("host /32 in a group / /24 leaf, hot", &|s| {
            hot_of(
                s,
                "blocked SYN v4, host /32 in a group",
                "blocked SYN v4, /24 leaf",
            )
        }),
        ("random host /32 / random /24 leaf, cold", &|s| {
            cold_of(s, "blocked SYN v4, random host /32")
                / cold_of(s, "blocked SYN v4, random /24-leaf source")
        }),
        ("random host /32 in a group / random /24 leaf, cold", &|s| {
            cold_of(s, "blocked SYN v4, random host /32 in a group")
                / cold_of(s, "blocked SYN v4, random /24-leaf source")
        }),
        ("blocked v6 /48 / blocked v4 /24, hot", &|s| {
            hot_of(s, "blocked SYN v6, /48", "blocked SYN v4, /24 leaf")
        }),
        ("blocked v6 / blocked v4, random source, cold", &|s| {
            cold_of(s, COLD_PAIR[0]) / cold_of(s, COLD_PAIR[1])
        }),
        ("blocked /24 SYN hot / trivial floor", &|s| {
            let leaf = s.hot.iter().find(|r| r.0 == "blocked SYN v4, /24 leaf");
            leaf.map_or(f64::NAN, |r| paired_ratio(&r.1, &s.floor))
        }),
        ("minimal filter hot / trivial floor", &|s| {
            paired_ratio(&s.minimal.0, &s.floor)
        }),
        (
            "minimal filter + one per-CPU counter hot / trivial floor",
            &|s| paired_ratio(&s.minimal_counting, &s.floor),
        ),
        ("blocked /24 SYN hot / minimal filter", &|s| {
            let leaf = s.hot.iter().find(|r| r.0 == "blocked SYN v4, /24 leaf");
            leaf.map_or(f64::NAN, |r| paired_ratio(&r.1, &s.minimal.0))
        }),
    ];
    for (name, f) in rows {
        let cells: Vec<String> = sized.iter().map(|s| num(f(s), 2)).collect();
        let _ = writeln!(o, "| {name} | {} |", cells.join(" | "));
    }
    let cells: Vec<String> = sized
        .iter()
        .map(|s| {
            let (on, off) = (median(s.events.0.clone()), median(s.events.1.clone()));
            format!("{on:.0} / {off:.0}")
        })
        .collect();
    let _ = writeln!(
        o,
        "| (blocked /24 SYN hot ns: events on / off) | {} |",
        cells.join(" | ")
    );
    let cells: Vec<String> = sized
        .iter()
        .map(|s| format!("{:.1} %", s.hosts_in_groups * 100.0))
        .collect();
    let _ = writeln!(o, "| (host /32s held in a group) | {} |", cells.join(" | "));
    let _ = writeln!(
        o,
        "\n### Hot, over calling threads: ratio to the trivial program, median (lowest–highest)\n\n\
         The trivial program, the minimal filter and the blocked /24 SYN, called once each from \
         {CALLING_THREADS} fresh threads in turn, each figure divided by the same thread's \
         trivial one. Where a thread's kernel stack (the BPF stack) and frame buffer land \
         against the maps moves every hot figure above by up to a third; this is the spread.\n"
    );
    let _ = writeln!(o, "| ratio | {} |", heads.join(" | "));
    let _ = writeln!(o, "|---|{}", "---:|".repeat(n));
    let spread = |f: &dyn Fn(&(f64, f64, f64)) -> f64| -> Vec<String> {
        sized
            .iter()
            .map(|s| {
                let v: Vec<f64> = s.threads.iter().map(f).collect();
                let (lo, hi) = lowest_highest(&v);
                format!("{} ({}–{})", num(median(v), 2), num(lo, 2), num(hi, 2))
            })
            .collect()
    };
    let _ = writeln!(
        o,
        "| blocked /24 SYN / trivial | {} |",
        spread(&|t| t.2 / t.0).join(" | ")
    );
    let _ = writeln!(
        o,
        "| {MINIMAL} / trivial | {} |",
        spread(&|t| t.1 / t.0).join(" | ")
    );
    let _ = writeln!(
        o,
        "\n### Between program loads: blocked v6 / blocked v4, hot and cold\n\n\
         A ratio of one load above moves with where that load's program and maps landed. \
         Here the program is loaded afresh each time with N random IPv4 and N random IPv6 \
         prefixes (the generators above), the named /24 and /48. Hot: each load gives the \
         median of {} paired calls of the /48 and the /24. Cold: each load gives the ratio \
         of the medians of {} random sources in the IPv6 table and {} in the IPv4 table, \
         interleaved by 256, the trivial program's one-run figure subtracted. The median \
         over loads and the spread.\n",
        rounds(),
        COLD_FRAMES / 2,
        COLD_FRAMES / 2
    );
    let _ = writeln!(
        o,
        "| prefixes (each family) | loads | hot median | hot lowest | hot highest | cold median | cold lowest | cold highest |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, r) in &loads {
        let spread = |f: &dyn Fn(&(f64, f64)) -> f64| {
            let v: Vec<f64> = r.iter().map(f).collect();
            let (lo, hi) = lowest_highest(&v);
            format!("{:.2} | {lo:.2} | {hi:.2}", median(v))
        };
        let _ = writeln!(
            o,
            "| {n} | {} | {} | {} |",
            r.len(),
            spread(&|p| p.0),
            spread(&|p| p.1)
        );
    }
    let _ = writeln!(o, "\n### Loading the tables\n");
    let _ = writeln!(
        o,
        "| table | Filter::load | v4 prefixes | v4 load | v4 prefixes/s | groups used / capacity | run verdicts used | v6 prefixes | v6 load | v6 prefixes/s | map memory (memlock) |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &sized {
        let _ = writeln!(
            o,
            "| {} | {:.2} s | {} | {:.3} s | {:.0} | {} / {} | {} | {} | {:.3} s | {:.0} | {:.1} MiB |",
            s.name,
            s.filter_load.as_secs_f64(),
            s.v4_n,
            s.v4_load.as_secs_f64(),
            s.v4_n as f64 / s.v4_load.as_secs_f64(),
            s.groups.0,
            s.groups.1,
            s.runs.0,
            s.v6_n,
            s.v6_load.as_secs_f64(),
            s.v6_n as f64 / s.v6_load.as_secs_f64(),
            s.memlock as f64 / f64::from(1 << 20),
        );
    }
    let _ = writeln!(o, "\n### aya-log, ns/packet\n");
    let _ = writeln!(
        o,
        "Program size: level 0 {} B translated / {} B JIT; level 5 {} B / {} B.\n",
        sizes[0].0, sizes[0].1, sizes[1].0, sizes[1].1
    );
    let _ = writeln!(
        o,
        "| frame | level 0, {LOG_BATCH}/call | level 5, ring drained, {LOG_BATCH}/call | ratio | level 0, {REPEAT}/call | level 5, ring full, {REPEAT}/call | ratio |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
    for r in &log {
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} |",
            r.frame,
            r.quiet_batch,
            r.loud_drained,
            r.loud_drained / r.quiet_batch,
            r.quiet_hot,
            r.loud_full,
            r.loud_full / r.quiet_hot
        );
    }
    let _ = writeln!(o, "\n### xdp-filter (xdp-tools), same frames, ns/packet\n");
    match &xdpf {
        Ok((prog, rows)) => {
            let _ = writeln!(
                o,
                "`xdp-filter load -p allow -f ipv4,ipv6`, program `{prog}`; \
                 prefilter figures from the 1M table.\n"
            );
            let _ = writeln!(o, "| frame | xdp-filter | prefilter at 1M | ratio |");
            let _ = writeln!(o, "|---|---:|---:|---:|");
            // The largest random table: xdp-filter holds exact addresses only.
            let last = &sized[sized.len().min(3) - 1];
            for (name, v) in rows {
                let ours = if name.contains("random") {
                    cold_of(last, "blocked SYN v4, random source in table")
                } else if name.starts_with("clean") {
                    hot_ns(last, "clean SYN v4")
                } else {
                    hot_ns(last, "blocked SYN v4, /24 leaf")
                };
                let _ = writeln!(o, "| {name} | {v:.0} | {ours:.0} | {:.2} |", v / ours);
            }
        }
        Err(e) => {
            let _ = writeln!(o, "skipped: {e}");
        }
    }
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let _ = writeln!(
        o,
        "\nbench took {:.0} s; peak resident memory of the bench (user-space tables plus the mmapped v4 maps) {peak}",
        started.elapsed().as_secs_f64()
    );
    println!("{o}");
    ExitCode::SUCCESS
}
