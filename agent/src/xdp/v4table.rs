//! The IPv4 prefix table in the kernel: DIR-24-8's first level (as in DPDK's rte_lpm) and
//! compressed second-level groups (as in Poptrie), written through mmap of three array maps.
//!
//! Why not the kernel LPM trie: measured here it costs 63 ns per lookup at 1k prefixes and
//! 115 ns at 1M, and 2.2 s to insert 1M prefixes one syscall at a time. This table costs one
//! array load for a /24 that holds no longer prefix (or holds a single host in otherwise
//! unlisted space), three for the other /24s, whatever the table holds.
//!
//! A TBL24 entry is one of:
//! - a leaf: the verdict of the whole /24 (low 16 bits);
//! - `EXT | HOST | octet << 16 | verdict`, and in the high 32 bits maybe a second host the
//!   same way: one or two hosts with a verdict, nothing else in the /24. Host lists (DNSBL
//!   dumps) are mostly lone hosts in clean /24s, and at 5M random hosts 96 % of them share
//!   their /24 with at most one other, so most need no group;
//! - `EXT | HOST | SPAN | lo << 16 | verdict`, the high 32 bits `hi | h1 << 8 | h2 << 16 |
//!   h3 << 24`: one verdict for octets lo–hi and hosts h1–h3 (unused ones repeat lo),
//!   nothing else in the /24. Up to four hosts of one list, or a /25–/31 with up to three
//!   hosts, fit: with the bench's 5M random hosts and 1M mixed prefixes this leaves a group
//!   (a second dependent cache miss) to 0.1 % of the hosts instead of 7.2 %;
//! - the same with `BG`, the high 32 bits `hi | h1 << 8 | bg << 16`: the rest of the /24
//!   has verdict bg. A listed /24 with an allowed host, or with hosts of another list,
//!   needs no group;
//! - `EXT | group`: a [`v4::Group`], 40 bytes: a 256-bit map of where a run of equal
//!   verdicts starts, and the index of its run verdicts in the shared RUNS array. Identical
//!   run sequences are stored once (interned), so RUNS stays small and cache-resident.
//!
//! A group is never changed in place: a new version goes to a fresh slot (and new verdicts
//! to free space in RUNS), then the TBL24 entry is switched with one store. Freed slots are
//! reused oldest first, so an XDP run in flight never reads a group refilled for another /24.
//!
//! Allow and block rules share the table. Each /24 leaf remembers (here, in user space) the
//! priority of the rule that owns it: a block /n has priority n+1, an allow /n has n+34, so
//! an allow beats every block whatever the lengths, and the longest prefix wins within a
//! kind. A rule up to /24 is written over the leaves where the owner's priority is not
//! higher; delete hands the leaves the rule owned to the best rule covering it, then replays
//! rules nested inside it that it was hiding (only an allow can hide longer rules). A /24
//! holding longer rules is recomputed from its leaf and those rules whenever either changes.

use std::{
    collections::{BTreeMap, HashMap, VecDeque, btree_map},
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
};

use prefilter_common::{action, v4, verdict};
use rustc_hash::FxHashMap;

use super::mmap::Mmap;

pub use crate::policy::Kind;

/// Errors of the v4 table.
#[derive(Debug, thiserror::Error)]
pub enum V4Error {
    /// Every /25–/32 group is in use.
    #[error(
        "IPv4 table full: all {capacity} groups for /24s with several verdicts are in use (raise [limits] v4_long_groups)"
    )]
    GroupsFull {
        /// Configured number of groups.
        capacity: u32,
    },
    /// The shared run verdicts are full.
    #[error(
        "IPv4 table full: no room for {runs} more group verdicts (raise [limits] v4_long_groups)"
    )]
    RunsFull {
        /// Verdicts that did not fit.
        runs: usize,
    },
    /// A prefix length above 32.
    #[error("invalid IPv4 prefix length /{0}")]
    BadLength(u8),
}

#[derive(Clone, Copy, Default)]
struct Rule {
    block: Option<u16>,
    allow: Option<u16>,
}

impl Rule {
    fn get(&self, kind: Kind) -> Option<u16> {
        match kind {
            Kind::Block => self.block,
            Kind::Allow => self.allow,
        }
    }
    fn slot(&mut self, kind: Kind) -> &mut Option<u16> {
        match kind {
            Kind::Block => &mut self.block,
            Kind::Allow => &mut self.allow,
        }
    }
}

fn prio(len: u8, kind: Kind) -> u8 {
    match kind {
        Kind::Block => len + 1,
        Kind::Allow => len + 34,
    }
}

/// The union of `a` and `b`, each sorted and duplicate-free, sorted and duplicate-free.
fn merge_sorted(a: Vec<u32>, b: &[u32]) -> Vec<u32> {
    if b.is_empty() {
        return a;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        out.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// u64 words of one group in the GROUPS mapping.
const GROUP_WORDS: usize = size_of::<v4::Group>() / 8;

/// Freed run ranges of one length are kept back until this many wait, so a range is not
/// refilled right after the group that used it was replaced.
const RUNS_QUARANTINE: usize = 16;

/// What a /24 holds, as the program reads it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Content {
    Leaf(u16),
    /// One host and its verdict, and maybe a second.
    Hosts(u8, u16, Option<(u8, u16)>),
    /// `verdict` for octets `lo..=hi` and three more octets (repeating `lo` when unused), `bg`
    /// for the rest; with a `bg` other than 0, one more octet only.
    Span {
        verdict: u16,
        lo: u8,
        hi: u8,
        hosts: [u8; 3],
        bg: u16,
    },
    /// Run-start bitmap and the verdict of each run.
    Runs([u64; 4], Vec<u16>),
}

/// Encodes 256 verdicts the cheapest way the program can read them.
pub(crate) fn encode(leaf: u16, arr: &[u16; 256]) -> Content {
    let first = arr[0];
    if arr.iter().all(|&v| v == first) {
        return Content::Leaf(first);
    }
    if leaf == 0 {
        let mut set = arr.iter().enumerate().filter(|&(_, &v)| v != 0);
        match (set.next(), set.next(), set.next()) {
            (Some((o, &v)), None, _) => return Content::Hosts(o as u8, v, None),
            (Some((o, &v)), Some((o2, &v2)), None) => {
                return Content::Hosts(o as u8, v, Some((o2 as u8, v2)));
            }
            _ => {}
        }
    }
    if let Some(span) = span(arr) {
        return span;
    }
    let mut bits = [0u64; 4];
    let mut runs = Vec::new();
    for (j, &v) in arr.iter().enumerate() {
        if j == 0 || arr[j - 1] != v {
            bits[j >> 6] |= 1 << (j & 63);
            runs.push(v);
        }
    }
    Content::Runs(bits, runs)
}

/// 256 verdicts as a [`Content::Span`], if they hold two verdicts, one of them (`verdict`)
/// on at most four runs of octets where the other (`bg`) is 0, two otherwise, at most one
/// of them longer than one octet.
fn span(arr: &[u16; 256]) -> Option<Content> {
    // Runs of equal verdicts, (first, last, verdict): more than nine cannot fit.
    let mut all = [(0u8, 0u8, 0u16); 9];
    let mut n = 0;
    let mut j = 0;
    while j < 256 {
        if n == all.len() {
            return None;
        }
        let (start, v) = (j, arr[j]);
        while j < 256 && arr[j] == v {
            j += 1;
        }
        all[n] = (start as u8, (j - 1) as u8, v);
        n += 1;
    }
    let all = &all[..n];
    let a = all[0].2;
    let b = all.iter().map(|r| r.2).find(|&v| v != a)?;
    if all.iter().any(|r| r.2 != a && r.2 != b) {
        return None;
    }
    // A background of none holds more octets: tried first.
    let tries = if a == 0 {
        [(a, b), (b, a)]
    } else {
        [(b, a), (a, b)]
    };
    'tries: for (bg, verdict) in tries {
        let mut mine = [(0u8, 0u8); 4];
        let mut k = 0;
        let cap = if bg == 0 { 4 } else { 2 };
        for &(first, last, _) in all.iter().filter(|r| r.2 == verdict) {
            if k == cap {
                continue 'tries;
            }
            mine[k] = (first, last);
            k += 1;
        }
        let mine = &mut mine[..k];
        // The long run first: it takes the lo–hi slot.
        mine.sort_by_key(|&(a, b)| a == b);
        if mine.get(1).is_some_and(|&(a, b)| a != b) {
            continue;
        }
        let (lo, hi) = mine[0];
        let mut hosts = [lo; 3];
        for (h, &(first, _)) in hosts.iter_mut().zip(&mine[1..]) {
            *h = first;
        }
        return Some(Content::Span {
            verdict,
            lo,
            hi,
            hosts,
            bg,
        });
    }
    None
}

/// Popcount of the words before each word, as stored in [`v4::Group::rank`].
pub(crate) fn ranks(bits: &[u64; 4]) -> [u8; 4] {
    let mut r = [0u8; 4];
    for w in 1..4 {
        r[w] = r[w - 1] + bits[w - 1].count_ones() as u8;
    }
    r
}

/// The verdict of last octet `o` in a group, exactly as the program computes it.
pub(crate) fn group_verdict(
    bits: &[u64; 4],
    base: u32,
    rank: [u8; 4],
    o: u8,
    runs: impl Fn(u32) -> u16,
) -> u16 {
    let w = (o >> 6) as usize;
    let m = (2u64 << (o & 63)).wrapping_sub(1);
    let r = u32::from(rank[w]) + (bits[w] & m).count_ones();
    runs((base + r).wrapping_sub(1))
}

fn lookup(t24: &[AtomicU64], groups: &[AtomicU64], runs: &[AtomicU16], addr: u32) -> u16 {
    let e64 = t24[(addr >> 8) as usize].load(Ordering::Acquire);
    let e = e64 as u32;
    if e & v4::EXT == 0 {
        return e as u16;
    }
    let o = addr as u8;
    if e & v4::HOST != 0 {
        let h = (e64 >> 32) as u32;
        let lo = (e >> 16) as u8;
        if e & v4::SPAN != 0 {
            let b = h.to_le_bytes();
            let (more, miss) = if e & v4::BG != 0 {
                (&b[1..2], (h >> 16) as u16)
            } else {
                (&b[1..], 0)
            };
            let hit = (lo..=b[0]).contains(&o) || more.contains(&o);
            return if hit { e as u16 } else { miss };
        }
        return if lo == o {
            e as u16
        } else if (h >> 16) as u8 == o {
            h as u16
        } else {
            0
        };
    }
    let g = (e & v4::GROUP_MASK) as usize * GROUP_WORDS;
    let Some(w) = groups.get(g..g + GROUP_WORDS) else {
        return 0;
    };
    let bits = [0, 1, 2, 3].map(|k| w[k].load(Ordering::Relaxed));
    let tail = w[4].load(Ordering::Relaxed);
    let rank = ((tail >> 32) as u32).to_le_bytes();
    group_verdict(&bits, tail as u32, rank, o, |i| {
        runs.get(i as usize)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    })
}

/// The kernel's IPv4 arrays, read as the XDP program reads them, without the writer's
/// bookkeeping: `check` answers from it while an import runs.
#[derive(Clone)]
pub struct V4View {
    tbl24: Arc<Mmap>,
    groups: Arc<Mmap>,
    runs: Arc<Mmap>,
}

impl V4View {
    /// The packed verdict the kernel finds for `addr` (0 = none).
    pub fn lookup(&self, addr: u32) -> u16 {
        lookup(
            self.tbl24.as_slice(),
            self.groups.as_slice(),
            self.runs.as_slice(),
            addr,
        )
    }
}

/// How a /24 is held in TBL24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// One verdict for the whole /24: one array load.
    Leaf,
    /// Held in the /24's own entry (one or two hosts, or a span): one array load.
    Host,
    /// A group: three array loads.
    Group,
}

/// An interned run sequence in RUNS.
struct Interned {
    offset: u32,
    refs: u32,
}

/// The table: kernel arrays through mmap plus the user-space bookkeeping to update them by
/// difference.
pub struct V4Table {
    tbl24: Arc<Mmap>,
    groups_map: Arc<Mmap>,
    runs_map: Arc<Mmap>,
    /// Configured number of groups in use at once.
    groups: u32,
    /// Group slots in the map: `groups` plus spares for copy-on-write.
    slots: u32,
    /// The leaf (the verdict the rules up to /24 give it, its group's background) of each
    /// /24 that holds longer rules, where not 0. Any other /24's leaf is its TBL24 entry:
    /// an array of 2^24 leaves beside it cost 32 MiB once a list spreads over the space.
    /// Fx-hashed (one multiply per /24 index, not SipHash); a large batch reads it sorted.
    long_leaf: FxHashMap<u32, u16>,
    /// Owner priority of each leaf.
    prio24: Vec<u8>,
    /// Bit per /24: it holds rules longer than /24.
    long: Vec<u64>,
    live: u32,
    /// Freed group slots, reused oldest first (see the module comment).
    free: VecDeque<u32>,
    next_slot: u32,
    intern: HashMap<Box<[u16]>, Interned>,
    /// Freed run ranges by length, oldest first.
    free_runs: Vec<VecDeque<u32>>,
    next_run: u32,
    run_cap: u32,
    rules: BTreeMap<(u32, u8), Rule>,
    /// Rules (keys of `rules`) per prefix length: a removal looks for a cover at the
    /// lengths that hold rules only (a 1M list of /24s: one lookup, not 25).
    per_len: [u32; 33],
    counts: [usize; 2],
    /// While a batch runs: /24s to recompute at its end instead of at once.
    deferred: Option<Vec<u32>>,
}

impl V4Table {
    /// Wraps the mmapped maps (TBL24, `slots` groups, RUNS). They must be zeroed (fresh).
    /// `groups` of the `slots` may be in use at once; the rest are spares for copy-on-write.
    pub(crate) fn new(
        tbl24: Mmap,
        groups_map: Mmap,
        runs_map: Mmap,
        groups: u32,
        slots: u32,
    ) -> Self {
        let run_cap = (runs_map.as_slice::<AtomicU16>().len()).min(u32::MAX as usize) as u32;
        Self {
            tbl24: Arc::new(tbl24),
            groups_map: Arc::new(groups_map),
            runs_map: Arc::new(runs_map),
            groups,
            slots,
            long_leaf: FxHashMap::default(),
            prio24: vec![0; 1 << 24],
            long: vec![0; (1 << 24) / 64],
            live: 0,
            free: VecDeque::new(),
            next_slot: 0,
            intern: HashMap::new(),
            free_runs: (0..=256).map(|_| VecDeque::new()).collect(),
            next_run: 0,
            run_cap,
            rules: BTreeMap::new(),
            per_len: [0; 33],
            counts: [0; 2],
            deferred: None,
        }
    }

    fn t24(&self) -> &[AtomicU64] {
        self.tbl24.as_slice()
    }

    /// Number of (block, allow) rules.
    pub fn len(&self, kind: Kind) -> usize {
        self.counts[kind as usize]
    }

    /// Groups in use out of the capacity.
    pub fn groups_used(&self) -> (u32, u32) {
        (self.live, self.groups)
    }

    /// Group verdicts stored (shared between groups) out of the capacity.
    pub fn runs_used(&self) -> (u32, u32) {
        let free: usize = self
            .free_runs
            .iter()
            .enumerate()
            .map(|(n, q)| n * q.len())
            .sum();
        (self.next_run - free as u32, self.run_cap)
    }

    fn has_long(&self, i: u32) -> bool {
        self.long[(i >> 6) as usize] & (1 << (i & 63)) != 0
    }

    /// Marks /24 `i` as holding rules longer than /24 or not, moving its leaf between its
    /// TBL24 entry and `long_leaf`. Unmarked, the entry becomes that leaf at once.
    fn set_long(&mut self, i: u32, on: bool) {
        if on == self.has_long(i) {
            return;
        }
        let b = 1u64 << (i & 63);
        if on {
            let leaf = self.leaf(i);
            if leaf != 0 {
                self.long_leaf.insert(i, leaf);
            }
            self.long[(i >> 6) as usize] |= b;
        } else {
            let leaf = self.long_leaf.remove(&i).unwrap_or(0);
            self.long[(i >> 6) as usize] &= !b;
            // A plain leaf takes no group or run verdicts: this cannot fail.
            if let Err(e) = self.publish(i, Content::Leaf(leaf)) {
                log::error!("IPv4 table: writing the leaf of {i:#x}/24: {e}");
            }
        }
    }

    /// The verdict of /24 `i` from the rules up to /24.
    fn leaf(&self, i: u32) -> u16 {
        // No owner, no verdict: spares the lookup for most /24s of a host list.
        if self.prio24[i as usize] == 0 {
            return 0;
        }
        if self.has_long(i) {
            self.long_leaf.get(&i).copied().unwrap_or(0)
        } else {
            // Without longer rules the entry is always the plain leaf.
            self.t24()[i as usize].load(Ordering::Relaxed) as u16
        }
    }

    /// The rule `addr/len` (masked), added empty if there was none.
    fn rule_entry(&mut self, addr: u32, len: u8) -> &mut Rule {
        match self.rules.entry((addr, len)) {
            btree_map::Entry::Occupied(e) => e.into_mut(),
            btree_map::Entry::Vacant(e) => {
                self.per_len[usize::from(len)] += 1;
                e.insert(Rule::default())
            }
        }
    }

    /// Forgets the rule `addr/len` (masked) whole.
    fn remove_key(&mut self, addr: u32, len: u8) {
        if self.rules.remove(&(addr, len)).is_some() {
            self.per_len[usize::from(len)] -= 1;
        }
    }

    /// Bit l set: some rule has length l.
    fn lens(&self) -> u64 {
        (0..=32)
            .filter(|&l| self.per_len[l] != 0)
            .fold(0, |m, l| m | 1 << l)
    }

    /// Rules longer than /24 inside /24 `i`.
    fn long_rules(&self, i: u32) -> impl Iterator<Item = (u32, u8, &Rule)> + Clone {
        let base = i << 8;
        self.rules
            .range((base, 25)..=(base | 0xff, 32))
            .filter(|((_, l), _)| *l > 24)
            .map(|(&(a, l), r)| (a, l, r))
    }

    /// Sets (adds or changes) the rule `addr/len` of `kind` with the packed verdict `v`.
    pub fn set(&mut self, addr: u32, len: u8, kind: Kind, v: u16) -> Result<(), V4Error> {
        if len > 32 {
            return Err(V4Error::BadLength(len));
        }
        let addr = addr & mask(len);
        let v = if kind == Kind::Allow {
            verdict::pack(action::ALLOW, verdict::list_id(v))
        } else {
            v
        };
        let prev = self.rule_entry(addr, len).slot(kind).replace(v);
        if prev.is_none() {
            self.counts[kind as usize] += 1;
        }
        if len > 24 {
            let i = addr >> 8;
            let had_long = self.has_long(i);
            self.set_long(i, true);
            if let Err(e) = self.touch(i) {
                // Nothing was published: forget the rule again.
                let r = self.rules.get_mut(&(addr, len)).expect("just set");
                *r.slot(kind) = prev;
                if r.block.is_none() && r.allow.is_none() {
                    self.remove_key(addr, len);
                }
                if prev.is_none() {
                    self.counts[kind as usize] -= 1;
                }
                self.set_long(i, had_long);
                return Err(e);
            }
            return Ok(());
        }
        let result = self.write(addr, len, prio(len, kind), v, |old, p| old <= p);
        if result.is_err() {
            // A /24 below ran out of room (groups or run verdicts): undo, so the caller can
            // report that nothing was applied.
            match prev {
                Some(pv) => {
                    let _ = self.set(addr, len, kind, pv);
                }
                None => {
                    self.remove(addr, len, kind);
                }
            }
        }
        result
    }

    /// Sets many rules: records them all, writes those up to /24 shortest first, then
    /// computes each /24 holding longer prefixes once. Same result as setting them one by one,
    /// in any order. On an error (table full), the rules of the /24s that could not be
    /// written are dropped again and every other rule stays set.
    pub fn set_batch(&mut self, mut rules: Vec<(u32, u8, Kind, u16)>) -> Result<(), V4Error> {
        if let Some(&(_, len, ..)) = rules.iter().find(|r| r.1 > 32) {
            return Err(V4Error::BadLength(len));
        }
        for r in &mut rules {
            r.0 &= mask(r.1);
            if r.2 == Kind::Allow {
                r.3 = verdict::pack(action::ALLOW, verdict::list_id(r.3));
            }
        }
        // Stable: a rule given twice keeps its last verdict, as one by one. A radix sort
        // (five byte passes): a comparison sort of 6M rules took 0.2-0.4 s of a 6M load.
        radsort::sort_by_key(&mut rules, |&(a, len, ..)| (a, len));
        let mut short = Vec::new();
        let mut dirty = Vec::new();
        let mut merged: Vec<((u32, u8), Rule)> = Vec::with_capacity(rules.len());
        for &(a, l, k, v) in &rules {
            match merged.last_mut() {
                Some((key, r)) if *key == (a, l) => *r.slot(k) = Some(v),
                _ => {
                    let mut r = Rule::default();
                    *r.slot(k) = Some(v);
                    merged.push(((a, l), r));
                }
            }
        }
        drop(rules);
        // The longer-than-/24 rules of /24s that held none before: the batch holds all of
        // them, so those /24s are computed from here without a search in the rules.
        // Kept only for a batch small beside the rules (a delta): a large one (a first load)
        // walks the rules in order instead, and would copy millions for nothing.
        let keep_fresh = merged.len() * 8 < self.rules.len();
        let mut fresh: Vec<(u32, u8, Rule)> = Vec::new();
        for &((a, l), r) in &merged {
            if keep_fresh
                && l > 24
                && (fresh.last().is_some_and(|f| f.0 >> 8 == a >> 8) || !self.has_long(a >> 8))
            {
                fresh.push((a, l, r));
            }
            for (k, v) in [(Kind::Block, r.block), (Kind::Allow, r.allow)] {
                let Some(v) = v else { continue };
                if l > 24 {
                    self.set_long(a >> 8, true);
                    // In address order: each /24 once, and `dirty` stays sorted.
                    if dirty.last() != Some(&(a >> 8)) {
                        dirty.push(a >> 8);
                    }
                } else {
                    short.push((prio(l, k), a, l, v));
                }
            }
        }
        if self.rules.is_empty() {
            // Built from sorted input in one pass: far faster than millions of inserts.
            self.counts[0] = merged.iter().filter(|(_, r)| r.block.is_some()).count();
            self.counts[1] = merged.iter().filter(|(_, r)| r.allow.is_some()).count();
            for &((_, l), _) in &merged {
                self.per_len[usize::from(l)] += 1;
            }
            self.rules = merged.into_iter().collect();
        } else {
            for ((a, l), r) in merged {
                let e = self.rule_entry(a, l);
                let mut new = [0; 2];
                for k in [Kind::Block, Kind::Allow] {
                    if let Some(v) = r.get(k)
                        && e.slot(k).replace(v).is_none()
                    {
                        new[k as usize] += 1;
                    }
                }
                self.counts[0] += new[0];
                self.counts[1] += new[1];
            }
        }
        // Shortest first: each leaf is then written by the rule that ends up owning it,
        // and a /24 already holding a group is recomputed once, below.
        short.sort_by_key(|&(_, _, l, _)| l);
        // Kept apart from `dirty` (sorted, millions in a first load): only these are sorted.
        self.deferred = Some(Vec::new());
        let mut first_err = None;
        for (p, a, l, v) in short {
            if let Err(e) = self.write(a, l, p, v, |old, p| old <= p) {
                first_err.get_or_insert(e);
            }
        }
        let mut touched = self.deferred.take().unwrap_or_default();
        touched.sort_unstable();
        touched.dedup();
        let dirty = merge_sorted(dirty, &touched);
        for i in self.refresh_all(&dirty, &fresh) {
            self.drop_long_rules(i.0);
            first_err.get_or_insert(i.1);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Recomputes the sorted /24s `dirty`; returns those that could not be written, with
    /// why. When they are many beside the rules (a first load of millions of hosts), the
    /// rules are walked once in order beside them, rather than searched from the root of
    /// the tree for each /24.
    /// `fresh`: sorted, all the longer rules of the /24s it names (none in the tree are
    /// missing from it).
    fn refresh_all(&mut self, dirty: &[u32], fresh: &[(u32, u8, Rule)]) -> Vec<(u32, V4Error)> {
        let mut failed = Vec::new();
        if dirty.len() < 4096 || dirty.len() * 8 < self.rules.len() {
            let mut fresh = fresh;
            for &i in dirty {
                while fresh.first().is_some_and(|f| f.0 >> 8 < i) {
                    fresh = &fresh[1..];
                }
                let n = fresh.iter().take_while(|f| f.0 >> 8 == i).count();
                let result = if n > 0 {
                    let want = self.want(i, fresh[..n].iter().copied());
                    self.publish(i, want)
                } else {
                    self.refresh(i)
                };
                if let Err(e) = result {
                    failed.push((i, e));
                }
            }
            return failed;
        }
        // Taken out for the walk: writing the entries needs the rest of `self`.
        let rules = std::mem::take(&mut self.rules);
        let mut walk = rules
            .range((dirty[0] << 8, 25)..)
            .filter(|((_, l), _)| *l > 24)
            .peekable();
        // The kept-aside leaves in order too: looked up one by one in the hash, each was a
        // cache miss (0.3 s for a million).
        let mut leaves: Vec<(u32, u16)> = self.long_leaf.iter().map(|(&i, &v)| (i, v)).collect();
        leaves.sort_unstable();
        let mut leaves = leaves.into_iter().peekable();
        let mut here: Vec<(u32, u8, Rule)> = Vec::new();
        for &i in dirty {
            here.clear();
            while walk.next_if(|((a, _), _)| a >> 8 < i).is_some() {}
            while let Some((&(a, l), &r)) = walk.next_if(|((a, _), _)| a >> 8 == i) {
                here.push((a, l, r));
            }
            while leaves.next_if(|&(j, _)| j < i).is_some() {}
            let leaf = leaves.next_if(|&(j, _)| j == i).map_or(0, |(_, v)| v);
            let want = if self.has_long(i) {
                self.content(i, leaf, here.iter().copied())
            } else {
                Content::Leaf(self.leaf(i))
            };
            if let Err(e) = self.publish(i, want) {
                failed.push((i, e));
            }
        }
        drop(walk);
        self.rules = rules;
        failed
    }

    /// Forgets the longer-than-/24 rules of /24 `i` and writes its leaf back.
    fn drop_long_rules(&mut self, i: u32) {
        let gone: Vec<((u32, u8), Rule)> =
            self.long_rules(i).map(|(a, l, r)| ((a, l), *r)).collect();
        for ((a, l), r) in gone {
            self.counts[0] -= usize::from(r.block.is_some());
            self.counts[1] -= usize::from(r.allow.is_some());
            self.remove_key(a, l);
        }
        // Unmarked, the /24's entry is its leaf again.
        self.set_long(i, false);
    }

    /// Removes the rule `addr/len` of `kind`; returns whether it existed.
    pub fn remove(&mut self, addr: u32, len: u8, kind: Kind) -> bool {
        if len > 32 {
            return false;
        }
        let addr = addr & mask(len);
        let Some(rule) = self.rules.get_mut(&(addr, len)) else {
            return false;
        };
        if rule.slot(kind).take().is_none() {
            return false;
        }
        if rule.block.is_none() && rule.allow.is_none() {
            self.remove_key(addr, len);
        }
        self.counts[kind as usize] -= 1;
        if len > 24 {
            let i = addr >> 8;
            if self.long_rules(i).next().is_none() {
                self.set_long(i, false);
            }
            // Fewer verdicts never need more room; an error here would be a bug.
            if let Err(e) = self.touch(i) {
                log::error!("IPv4 table: rewriting {i:#x}/24 after a removal: {e}");
            }
            return true;
        }
        if let Err(e) = self.uncover(addr, len, kind, self.lens()) {
            log::error!("IPv4 table: after removing {addr:#x}/{len}: {e}");
        }
        true
    }

    /// Removes many rules; the same result as removing them one by one, in any order, but
    /// every rule is forgotten first, so each leaf it owned is written once with what
    /// covers it among the rules that stay, and each /24 with longer rules is recomputed
    /// once. A list of a million /24s replaced by a short one costs seconds one by one:
    /// each removal looks up every shorter length for a cover.
    pub fn remove_batch(&mut self, rules: impl IntoIterator<Item = (u32, u8, Kind)>) {
        let mut batch: Vec<(u32, u8, Kind)> = rules
            .into_iter()
            .filter(|&(_, len, _)| len <= 32)
            .map(|(addr, len, kind)| (addr & mask(len), len, kind))
            .collect();
        let mut removed = Vec::with_capacity(batch.len());
        if batch.len() > self.rules.len() / 8 {
            // A large share: one ordered pass over the rules beside the sorted batch
            // instead of a search from the root per rule.
            batch.sort_unstable_by_key(|&(a, l, _)| (a, l));
            let mut next = batch.iter().peekable();
            let per_len = &mut self.per_len;
            self.rules.retain(|&key, r| {
                while next.next_if(|&&(a, l, _)| (a, l) < key).is_some() {}
                let first = removed.len();
                while let Some(&(a, l, kind)) = next.next_if(|&&(a, l, _)| (a, l) == key) {
                    if r.slot(kind).take().is_some() {
                        removed.push((a, l, kind, false));
                    }
                }
                let keep = r.block.is_some() || r.allow.is_some();
                if !keep {
                    per_len[usize::from(key.1)] -= 1;
                    for x in &mut removed[first..] {
                        x.3 = true;
                    }
                }
                keep
            });
        } else {
            for (addr, len, kind) in batch {
                // One search per rule, also when it goes: an entry, not a get then a remove.
                let btree_map::Entry::Occupied(mut e) = self.rules.entry((addr, len)) else {
                    continue;
                };
                if e.get_mut().slot(kind).take().is_none() {
                    continue;
                }
                let whole = e.get().block.is_none() && e.get().allow.is_none();
                if whole {
                    e.remove();
                    self.per_len[usize::from(len)] -= 1;
                }
                removed.push((addr, len, kind, whole));
            }
        }
        let mut short = Vec::new();
        let mut dirty = Vec::new();
        for (addr, len, kind, whole) in removed {
            self.counts[kind as usize] -= 1;
            if len > 24 {
                dirty.push(addr >> 8);
            } else {
                short.push((addr, len, kind, whole));
            }
        }
        // The lengths that still hold rules: a cover is looked up at those only.
        let lens = self.lens();
        self.deferred = Some(dirty);
        for (addr, len, kind, whole) in short {
            // Gone whole, the rule's own key holds no other kind to fall back to.
            let lens = if whole { lens & !(1 << len) } else { lens };
            if let Err(e) = self.uncover(addr, len, kind, lens) {
                log::error!("IPv4 table: after removing {addr:#x}/{len}: {e}");
            }
        }
        let mut dirty = self.deferred.take().unwrap_or_default();
        dirty.sort_unstable();
        dirty.dedup();
        let mut here = Vec::new();
        for i in dirty {
            // One search for the /24's remaining longer rules, used for both steps.
            here.clear();
            here.extend(self.long_rules(i).map(|(a, l, r)| (a, l, *r)));
            if here.is_empty() && self.has_long(i) {
                // Unmarked, its entry is written back as the plain leaf.
                self.set_long(i, false);
                continue;
            }
            let want = self.want(i, here.iter().copied());
            // Fewer verdicts never need more room; an error here would be a bug.
            if let Err(e) = self.publish(i, want) {
                log::error!("IPv4 table: rewriting {i:#x}/24 after a removal: {e}");
            }
        }
    }

    /// Gives the leaves a removed rule `addr/len` (len <= 24) of `kind` owned to the best
    /// remaining rule covering its range.
    fn uncover(&mut self, addr: u32, len: u8, kind: Kind, lens: u64) -> Result<(), V4Error> {
        let p = prio(len, kind);
        let (rv, rp) = self.best_cover(addr, len, p, lens);
        let mut result = self.write(addr, len, rp, rv, |old, _| old == p);
        // An allow hid shorter-than-/25 rules inside it: put them back, lowest priority
        // first (longer ones are recomputed with their /24).
        if kind == Kind::Allow && len < 24 {
            let end = addr | !mask(len);
            let mut inner: Vec<(u8, u32, u8, u16)> = self
                .rules
                .range((addr, len + 1)..=(end, 24))
                .filter(|((_, l), _)| *l > len && *l <= 24)
                .flat_map(|(&(a, l), r)| {
                    [(Kind::Block, r.block), (Kind::Allow, r.allow)]
                        .into_iter()
                        .filter_map(move |(k, v)| v.map(|v| (prio(l, k), a, l, v)))
                })
                .filter(|&(ip, ..)| ip < p)
                .collect();
            inner.sort_unstable();
            for (ip, a, l, v) in inner {
                let r = self.write(a, l, ip, v, |old, p| old <= p);
                result = result.and(r);
            }
        }
        result
    }

    /// Highest-priority rule other than (len, prio `below`) covering all of `addr/len`;
    /// only lengths set in `lens` (bit l = some rule has length l) are looked up.
    fn best_cover(&self, addr: u32, len: u8, below: u8, lens: u64) -> (u16, u8) {
        let mut best = (0u16, 0u8);
        for l in 0..=len {
            if lens & (1 << l) == 0 {
                continue;
            }
            let Some(r) = self.rules.get(&(addr & mask(l), l)) else {
                continue;
            };
            for kind in [Kind::Block, Kind::Allow] {
                let p = prio(l, kind);
                if let Some(v) = r.get(kind)
                    && p < below
                    && p > best.1
                {
                    best = (v, p);
                }
            }
        }
        best
    }

    /// Writes `v` with priority `p` over the leaves of `addr/len` (len <= 24) wherever
    /// `cond(owner_prio, p)` holds, and recomputes the /24s there that hold longer rules.
    fn write(
        &mut self,
        addr: u32,
        len: u8,
        p: u8,
        v: u16,
        cond: impl Fn(u8, u8) -> bool,
    ) -> Result<(), V4Error> {
        let first = addr >> 8;
        let mut result = Ok(());
        for i in first..first + (1u32 << (24 - len)) {
            let iu = i as usize;
            if !cond(self.prio24[iu], p) {
                continue;
            }
            // A /24 with longer rules is recomputed even if its leaf verdict stays: the
            // leaf's priority decides which of them it hides.
            self.prio24[iu] = p;
            if self.has_long(i) {
                if v == 0 {
                    self.long_leaf.remove(&i);
                } else {
                    self.long_leaf.insert(i, v);
                }
                if let Err(e) = self.touch(i) {
                    result = result.and(Err(e));
                }
            } else if self.t24()[iu].load(Ordering::Relaxed) != u64::from(v) {
                // Without longer rules the entry is the plain leaf.
                self.t24()[iu].store(u64::from(v), Ordering::Release);
            }
        }
        result
    }

    /// Recomputes /24 `i` now, or at the end of the batch in progress.
    fn touch(&mut self, i: u32) -> Result<(), V4Error> {
        match &mut self.deferred {
            Some(d) => {
                d.push(i);
                Ok(())
            }
            None => self.refresh(i),
        }
    }

    /// What /24 `i` should hold given its `leaf` and `long`, its rules longer than /24 in
    /// address order: `encode` of its 256 verdicts. The common case of a DNSBL dump, one or
    /// two hosts in a /24 nothing else covers, is decided from the rules alone: building and
    /// scanning the 256-entry arrays for each of millions of such /24s cost more than the
    /// rest of a load.
    fn content(
        &self,
        i: u32,
        leaf: u16,
        long: impl Iterator<Item = (u32, u8, Rule)> + Clone,
    ) -> Content {
        if leaf == 0 && self.prio24[i as usize] == 0 {
            let mut hosts = [(0u8, 0u16); 2];
            let mut n = 0;
            let mut simple = true;
            for (a, l, r) in long.clone() {
                // An allow beats a block on the same host (its priority is higher).
                let v = r.allow.or(r.block).unwrap_or(0);
                if l != 32 || (v != 0 && n == 2) {
                    simple = false;
                    break;
                }
                if v != 0 {
                    hosts[n] = (a as u8, v);
                    n += 1;
                }
            }
            if simple {
                return match n {
                    0 => Content::Leaf(0),
                    1 => Content::Hosts(hosts[0].0, hosts[0].1, None),
                    _ => Content::Hosts(hosts[0].0, hosts[0].1, Some(hosts[1])),
                };
            }
        }
        encode(leaf, &self.verdicts(i, leaf, long))
    }

    /// The 256 verdicts of /24 `i`: its `leaf`, then its longer rules `long` by priority.
    fn verdicts(
        &self,
        i: u32,
        leaf: u16,
        long: impl Iterator<Item = (u32, u8, Rule)>,
    ) -> [u16; 256] {
        let iu = i as usize;
        let mut arr = [leaf; 256];
        if !self.has_long(i) {
            return arr;
        }
        let mut pr = [self.prio24[iu]; 256];
        let mut inner: Vec<(u8, u8, u8, u16)> = long
            .flat_map(|(a, l, r)| {
                [(Kind::Block, r.block), (Kind::Allow, r.allow)]
                    .into_iter()
                    .filter_map(move |(k, v)| v.map(|v| (prio(l, k), a as u8, l, v)))
            })
            .collect();
        inner.sort_unstable();
        for (p, lo, l, v) in inner {
            let lo = lo as usize;
            for j in lo..lo + (1usize << (32 - l)) {
                if pr[j] <= p {
                    pr[j] = p;
                    arr[j] = v;
                }
            }
        }
        arr
    }

    /// Brings the kernel's entry for /24 `i` in line with the rules. On error nothing
    /// visible changed.
    fn refresh(&mut self, i: u32) -> Result<(), V4Error> {
        let want = self.want(i, self.long_rules(i).map(|(a, l, r)| (a, l, *r)));
        self.publish(i, want)
    }

    /// What /24 `i`'s entry must hold, given all its longer rules `long`.
    fn want(&self, i: u32, long: impl Iterator<Item = (u32, u8, Rule)> + Clone) -> Content {
        if self.has_long(i) {
            self.content(i, self.leaf(i), long)
        } else {
            Content::Leaf(self.leaf(i))
        }
    }

    /// Writes `want` as /24 `i`'s entry (a group first, then the entry that points to it).
    /// On error nothing visible changed.
    fn publish(&mut self, i: u32, want: Content) -> Result<(), V4Error> {
        let iu = i as usize;
        let e = self.t24()[iu].load(Ordering::Relaxed);
        let old_group =
            (e as u32 & (v4::EXT | v4::HOST) == v4::EXT).then_some(e as u32 & v4::GROUP_MASK);
        let entry = match want {
            Content::Leaf(v) => u64::from(v),
            Content::Hosts(o, v, second) => {
                let (o2, v2) = second.unwrap_or((0, 0));
                u64::from(v4::EXT | v4::HOST | u32::from(o) << 16 | u32::from(v))
                    | u64::from(u32::from(o2) << 16 | u32::from(v2)) << 32
            }
            Content::Span {
                verdict,
                lo,
                hi,
                hosts: [h1, h2, h3],
                bg,
            } => {
                let (flags, high) = if bg == 0 {
                    (v4::SPAN, u32::from_le_bytes([hi, h1, h2, h3]))
                } else {
                    (
                        v4::SPAN | v4::BG,
                        u32::from_le_bytes([hi, h1, 0, 0]) | u32::from(bg) << 16,
                    )
                };
                u64::from(v4::EXT | v4::HOST | flags | u32::from(lo) << 16 | u32::from(verdict))
                    | u64::from(high) << 32
            }
            Content::Runs(bits, runs) => {
                if let Some(g) = old_group
                    && self.group_content(g) == (bits, runs.clone())
                {
                    return Ok(());
                }
                if old_group.is_none() && self.live >= self.groups {
                    return Err(V4Error::GroupsFull {
                        capacity: self.groups,
                    });
                }
                let Some(slot) = self.alloc_slot() else {
                    return Err(V4Error::GroupsFull {
                        capacity: self.groups,
                    });
                };
                let base = match self.intern_runs(&runs) {
                    Ok(b) => b,
                    Err(e) => {
                        // Unused: back at the front, it is the next one taken.
                        self.free.push_front(slot);
                        return Err(e);
                    }
                };
                self.write_group(slot, &bits, base);
                if old_group.is_none() {
                    self.live += 1;
                }
                u64::from(v4::EXT | slot)
            }
        };
        if entry != e {
            // Publish only once the group is written.
            self.t24()[iu].store(entry, Ordering::Release);
        }
        if let Some(g) = old_group
            && entry != e
        {
            self.release_group(g);
            if entry as u32 & (v4::EXT | v4::HOST) != v4::EXT {
                self.live -= 1;
            }
        }
        Ok(())
    }

    fn group_words(&self, g: u32) -> &[AtomicU64] {
        let w = g as usize * GROUP_WORDS;
        &self.groups_map.as_slice::<AtomicU64>()[w..w + GROUP_WORDS]
    }

    /// Bitmap and run verdicts of group `g`, read back from the maps.
    fn group_content(&self, g: u32) -> ([u64; 4], Vec<u16>) {
        let w = self.group_words(g);
        let bits = [0, 1, 2, 3].map(|k| w[k].load(Ordering::Relaxed));
        let base = w[4].load(Ordering::Relaxed) as u32 as usize;
        let n = bits.iter().map(|b| b.count_ones() as usize).sum::<usize>();
        let runs = self.runs_map.as_slice::<AtomicU16>()[base..base + n]
            .iter()
            .map(|v| v.load(Ordering::Relaxed))
            .collect();
        (bits, runs)
    }

    fn write_group(&self, g: u32, bits: &[u64; 4], base: u32) {
        let w = self.group_words(g);
        for k in 0..4 {
            w[k].store(bits[k], Ordering::Relaxed);
        }
        let rank = u32::from_le_bytes(ranks(bits));
        w[4].store(u64::from(base) | u64::from(rank) << 32, Ordering::Relaxed);
    }

    fn alloc_slot(&mut self) -> Option<u32> {
        // Fresh slots first: a freed one then waits for every spare to be taken first.
        if self.next_slot < self.slots {
            self.next_slot += 1;
            return Some(self.next_slot - 1);
        }
        self.free.pop_front()
    }

    fn release_group(&mut self, g: u32) {
        let (_, runs) = self.group_content(g);
        self.unintern(&runs);
        self.free.push_back(g);
    }

    /// Index in RUNS of a copy of `runs`, shared with every group holding the same ones.
    fn intern_runs(&mut self, runs: &[u16]) -> Result<u32, V4Error> {
        if let Some(e) = self.intern.get_mut(runs) {
            e.refs += 1;
            return Ok(e.offset);
        }
        let n = runs.len();
        let q = &mut self.free_runs[n];
        let offset = if q.len() > RUNS_QUARANTINE {
            q.pop_front().expect("not empty")
        } else if self.next_run as usize + n <= self.run_cap as usize {
            self.next_run += n as u32;
            self.next_run - n as u32
        } else if let Some(o) = q.pop_front() {
            o
        } else {
            return Err(V4Error::RunsFull { runs: n });
        };
        let dst = &self.runs_map.as_slice::<AtomicU16>()[offset as usize..offset as usize + n];
        for (d, &v) in dst.iter().zip(runs) {
            d.store(v, Ordering::Relaxed);
        }
        self.intern
            .insert(runs.into(), Interned { offset, refs: 1 });
        Ok(offset)
    }

    fn unintern(&mut self, runs: &[u16]) {
        let Some(e) = self.intern.get_mut(runs) else {
            debug_assert!(false, "released runs were not interned");
            return;
        };
        e.refs -= 1;
        if e.refs == 0 {
            let offset = e.offset;
            self.intern.remove(runs);
            self.free_runs[runs.len()].push_back(offset);
        }
    }

    /// What the kernel would find for `addr`: the packed verdict (0 = none).
    pub fn lookup(&self, addr: u32) -> u16 {
        lookup(
            self.t24(),
            self.groups_map.as_slice(),
            self.runs_map.as_slice(),
            addr,
        )
    }

    /// How the kernel holds the /24 of `addr`: what a lookup of it costs.
    pub fn slot_kind(&self, addr: u32) -> SlotKind {
        let e = self.t24()[(addr >> 8) as usize].load(Ordering::Relaxed) as u32;
        match (e & v4::EXT != 0, e & v4::HOST != 0) {
            (false, _) => SlotKind::Leaf,
            (true, true) => SlotKind::Host,
            (true, false) => SlotKind::Group,
        }
    }

    /// A read-only view of the kernel arrays for readers on other threads.
    pub fn view(&self) -> V4View {
        V4View {
            tbl24: self.tbl24.clone(),
            groups: self.groups_map.clone(),
            runs: self.runs_map.clone(),
        }
    }

    /// Every rule, in address order.
    pub fn rules(&self) -> impl Iterator<Item = (u32, u8, Kind, u16)> + '_ {
        self.rules.iter().flat_map(|(&(a, l), r)| {
            [(Kind::Block, r.block), (Kind::Allow, r.allow)]
                .into_iter()
                .filter_map(move |(k, v)| v.map(|v| (a, l, k, v)))
        })
    }
}

#[cfg(test)]
mod tests;
