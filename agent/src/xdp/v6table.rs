//! The IPv6 prefix table: exact matches on a few lengths instead of the kernel LPM trie,
//! whose walk of up to 128 nodes cost 2–4× an IPv4 lookup hot and 1–2 µs cold at 100k–1M
//! prefixes; no trie is left.
//!
//! Real IPv6 lists are /32 (allocations), /48 (sites), /56 (homes, RFC 6177), /64
//! (subscribers) and /128 (hosts), so each of those is one entry: the /16 in an array
//! (`TOP`), the /32–/64 in one open-addressing hash of our own (`HX`: 16-byte slots, four to
//! a cache line, so a probe costs one cache miss where a kernel hash costs a bucket and an
//! element; written through mmap, no syscall per entry), the /128 in a second one of our
//! own (`HH`: 32-byte slots holding the whole address, two to a cache line). Every
//! entry holds the verdict of the longest match down to its length (leaf pushing, with
//! allow folded in: an allow beats any block, however long), and flags naming the longer
//! lengths that have entries inside it. The program reads the /16, the /32, then only the
//! lengths flagged, each in the entry found last; a clean source costs one or two reads.
//!
//! Placement of a rule of length `l`: a level's own length is written there; up to
//! [`MAX_EXPAND_BITS`] shorter is expanded into entries of the next level (/24–/31 → /32s,
//! /40–/47 → /48s, /49–/55 → /56s, /57–/63 → /64s, /0–/15 → the /16 array); the rest
//! ("odd": /17–/23, /33–/39, /65–/127, rare in real lists) is an entry of its own length,
//! in HX up to /39 and in HH past /64, probed only under a /16 or /32 entry flagged
//! `ODD_X` or `ODD_H`, and only at the lengths in use ([`OddLengths`]: a few bytes the
//! program reads). Odd entries are leaf-pushed like the others, so the walk keeps the
//! longest odd entry found past the level it reached. A /32 entry also exists, as a marker,
//! wherever something longer does; when that is one /48 and nothing else, the /32's slot
//! holds the /48 too ([`holds_inline`]), so it costs one probe, not two.
//!
//! Concurrency: the program reads HX while the agent writes it. A slot's key is written
//! before its tag and value (one 64-bit store), so a reader that sees the tag sees the key;
//! a deleted slot is marked gone and reused only after [`GRACE`], far longer than any
//! program run, so no reader can pair a reused slot's key with another value.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    mem::offset_of,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::MapError;
use prefilter_common::{
    action,
    v6::{
        BUCKET_SLOTS, HOST_SLOTS, INLINE, LEVELS, MAX_EXPAND_BITS, MAX_PROBE, ODD_H, ODD_HOST_MAX,
        ODD_MID, ODD_PROBE, ODD_TOP, OddLengths, TAG_EMPTY, TAG_GONE, TAG_HOST, hh_bucket,
        hx_bucket, inline_child, inline_word, inside, odd_bit, tag_len,
    },
    verdict,
};

use super::mmap::Mmap;
use crate::policy::Kind;

/// How long a deleted HX slot stays unused.
pub const GRACE: Duration = Duration::from_secs(1);

/// Errors writing the IPv6 table.
#[derive(Debug, thiserror::Error)]
pub enum V6Error {
    /// A part of the table has no room left.
    #[error("IPv6 table full: the {what} holds {capacity} entries (raise [limits] v6_entries)")]
    Full {
        /// Which part, e.g. "/17–/64 hash".
        what: &'static str,
        /// Its capacity.
        capacity: u32,
    },
    /// One more /65–/127 length than the program probes.
    #[error(
        "IPv6 table: /{len} would be one more prefix length between /65 and /127 than the \
         {ODD_HOST_MAX} held at once (list such prefixes as /64s or /128s, or fewer lengths)"
    )]
    Lengths {
        /// The length refused.
        len: u8,
    },
    /// A map operation failed.
    #[error("IPv6 table: {0}")]
    Map(#[from] MapError),
}

#[derive(Clone, Copy, Default)]
struct Rule {
    block: Option<u16>,
    allow: Option<u16>,
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// Counts one more, or one less, of what lies inside an entry.
fn bump(c: &mut u32, added: bool) {
    if added { *c += 1 } else { *c -= 1 }
}

/// Where rules of one length go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Place {
    /// Entries of level `LEVELS[i]`.
    Level(usize),
    /// An odd-length entry of its own.
    Odd,
}

fn place(len: u8) -> Place {
    let i = LEVELS.iter().position(|&l| l >= len).expect("len <= 128");
    let lv = LEVELS[i];
    if i == 0 || lv == len || (lv != 128 && lv - len <= MAX_EXPAND_BITS) {
        Place::Level(i)
    } else {
        debug_assert!(odd_bit(len).is_some());
        Place::Odd
    }
}

/// A mask of the first `len` bits of a 64-bit half (`len` 0 to 64).
fn mask64(len: u32) -> u64 {
    if len == 0 { 0 } else { u64::MAX << (64 - len) }
}

/// HX as the program reads it.
#[derive(Clone)]
struct HxView {
    map: Arc<Mmap>,
    bits: u32,
}

impl HxView {
    fn words(&self) -> &[AtomicU64] {
        self.map.as_slice()
    }

    /// The slot holding `key` of length `tag`: the program's probe sequence.
    fn find(&self, key: u64, tag: u32) -> Option<usize> {
        let w = self.words();
        let buckets = 1usize << self.bits;
        let home = hx_bucket(key, tag, self.bits) as usize;
        for p in 0..MAX_PROBE as usize {
            let b = (home + p) & (buckets - 1);
            for i in 0..BUCKET_SLOTS {
                let s = b * BUCKET_SLOTS + i;
                let word = w[2 * s + 1].load(Ordering::Acquire);
                let t = (word >> 32) as u32;
                if tag_len(t) == tag && w[2 * s].load(Ordering::Relaxed) == key {
                    return Some(s);
                }
                if t == TAG_EMPTY {
                    return None;
                }
            }
        }
        None
    }

    /// The slot's word: its entry, and its tag above it.
    fn get(&self, key: u64, tag: u32) -> Option<u64> {
        self.find(key, tag)
            .map(|s| self.words()[2 * s + 1].load(Ordering::Acquire))
    }
}

/// Words of an HH slot: the address's halves, the tag-and-entry word, padding.
const HH_WORDS: usize = 4;

/// HH as the program reads it.
#[derive(Clone)]
struct HhView {
    map: Arc<Mmap>,
    bits: u32,
}

impl HhView {
    fn words(&self) -> &[AtomicU64] {
        self.map.as_slice()
    }

    /// The slot holding `hi`, `lo` with tag `tag` (128, or an odd length with `lo` masked
    /// to it): the program's probe sequence.
    fn find(&self, hi: u64, lo: u64, tag: u32) -> Option<usize> {
        let w = self.words();
        let home = hh_bucket(hi, lo, self.bits) as usize;
        for p in 0..MAX_PROBE as usize {
            let b = (home + p) & ((1 << self.bits) - 1);
            for i in 0..HOST_SLOTS {
                let s = b * HOST_SLOTS + i;
                let word = w[HH_WORDS * s + 2].load(Ordering::Acquire);
                let t = (word >> 32) as u32;
                if t == tag
                    && w[HH_WORDS * s].load(Ordering::Relaxed) == hi
                    && w[HH_WORDS * s + 1].load(Ordering::Relaxed) == lo
                {
                    return Some(s);
                }
                if t == TAG_EMPTY {
                    return None;
                }
            }
        }
        None
    }

    fn get(&self, hi: u64, lo: u64, tag: u32) -> Option<u32> {
        self.find(hi, lo, tag)
            .map(|s| self.words()[HH_WORDS * s + 2].load(Ordering::Acquire) as u32)
    }
}

/// The first never-used slot, or one deleted at least [`GRACE`] ago, on the probe sequence
/// of HX or HH from bucket `home`; `tag(s)` reads slot `s`'s tag. Where the sequence has
/// none but a slot deleted less than GRACE ago, it waits for that slot, once: a list
/// replaced near the table's capacity deletes as many slots as it fills, and without the
/// wait its additions would find the table full for a second. Only the writer waits; the
/// program keeps reading.
fn free_slot(
    gone: &StdHashMap<usize, Instant>,
    (bits, per_bucket): (u32, usize),
    (home, window): (usize, u32),
    tag: impl Fn(usize) -> u32,
) -> Option<usize> {
    for waited in [false, true] {
        // Read only where a gone slot is met: a clock read per insert showed in profiles.
        let mut now = None;
        let mut soonest: Option<Duration> = None;
        for p in 0..window as usize {
            let b = (home + p) & ((1 << bits) - 1);
            for i in 0..per_bucket {
                let s = b * per_bucket + i;
                let t = tag(s);
                if t == TAG_EMPTY {
                    return Some(s);
                }
                if t == TAG_GONE
                    && let Some(&at) = gone.get(&s)
                {
                    let age = now.get_or_insert_with(Instant::now).duration_since(at);
                    if age >= GRACE {
                        return Some(s);
                    }
                    let left = GRACE - age;
                    soonest = Some(soonest.map_or(left, |d| d.min(left)));
                }
            }
        }
        match soonest {
            Some(wait) if !waited => std::thread::sleep(wait),
            _ => break,
        }
    }
    None
}

/// TOP, the /16 entries, mapped: the program reads it as global data of its own.
struct TopView {
    map: Arc<Mmap>,
}

impl TopView {
    fn entries(&self) -> &[AtomicU32] {
        self.map.as_slice()
    }

    fn get(&self, i: usize) -> u32 {
        self.entries()[i].load(Ordering::Acquire)
    }

    /// One 32-bit store: the program sees the old entry or the new one.
    fn set(&self, i: usize, e: u32) {
        self.entries()[i].store(e, Ordering::Release);
    }
}

/// [`OddLengths`], mapped: the odd lengths in use, as bitmaps.
struct OddView {
    map: Arc<Mmap>,
}

impl OddView {
    /// The bitmap of `short` (false) or `host` (true).
    fn word(&self, host: bool) -> &AtomicU64 {
        let words: &[AtomicU64] = self.map.as_slice();
        let at = if host {
            offset_of!(OddLengths, host)
        } else {
            offset_of!(OddLengths, short)
        };
        &words[at / 8]
    }

    /// Whether length `len` is listed.
    fn has(&self, len: u8) -> bool {
        odd_bit(len).is_some_and(|(host, b)| self.word(host).load(Ordering::Acquire) >> b & 1 != 0)
    }

    /// The /65–/127 lengths listed.
    fn host_lens(&self) -> u32 {
        self.word(true).load(Ordering::Acquire).count_ones()
    }

    /// Lists or unlists `len`: one store the program sees whole.
    fn set(&self, len: u8, on: bool) {
        let (host, b) = odd_bit(len).expect("an odd length");
        let w = self.word(host);
        if on {
            w.fetch_or(1 << b, Ordering::Release);
        } else {
            w.fetch_and(!(1 << b), Ordering::Release);
        }
    }
}

/// The kernel side of the table, for the walk the program does.
pub struct V6Maps {
    top: TopView,
    hx: HxView,
    hh: HhView,
    odd: OddView,
}

impl V6Maps {
    pub(crate) fn new(
        top: Arc<Mmap>,
        (hx, hx_bits): (Arc<Mmap>, u32),
        (hh, hh_bits): (Arc<Mmap>, u32),
        odd: Arc<Mmap>,
    ) -> Self {
        Self {
            top: TopView { map: top },
            hx: HxView {
                map: hx,
                bits: hx_bits,
            },
            hh: HhView {
                map: hh,
                bits: hh_bits,
            },
            odd: OddView { map: odd },
        }
    }

    /// What the program answers for `addr`: the same walk (0 = no match).
    pub fn lookup(&self, addr: u128) -> u16 {
        let mut e = self.top.get((addr >> 112) as usize);
        let mut odd = e & ODD_TOP;
        let (hi, lo) = ((addr >> 64) as u64, addr as u64);
        if e & inside(1) != 0
            && let Some(w) = self.hx.get(hi & (u64::MAX << 32), 32)
        {
            let x = w as u32;
            e = x;
            let mut flags = x;
            if x & INLINE != 0 {
                let (key16, child) = inline_child(w);
                if key16 == (hi >> 16) as u16 {
                    e = u32::from(child);
                }
                // Nothing else inside: no flags.
                flags = 0;
            }
            for (i, len) in [(2, 48u8), (3, 56), (4, 64)] {
                if flags & inside(i) != 0
                    && let Some(x) = self.hx.get(hi & (u64::MAX << (64 - len)), u32::from(len))
                {
                    let x = x as u32;
                    (e, flags) = (x, x);
                }
            }
            if flags & inside(5) != 0
                && let Some(x) = self.hh.get(hi, lo, TAG_HOST)
            {
                (e, flags) = (x, 0);
            }
            odd = flags & (ODD_MID | ODD_H);
        }
        if odd != 0
            && let Some(v) = self.odd_lookup(hi, lo, odd)
        {
            return v;
        }
        e as u16
    }

    /// The program's `odd_lookup`: the longest odd entry inside the entry whose flags are
    /// `odd`.
    fn odd_lookup(&self, hi: u64, lo: u64, odd: u32) -> Option<u16> {
        if odd & ODD_H != 0 {
            for l in (65..=127u8).rev().filter(|&l| self.odd.has(l)) {
                let tag = u32::from(l);
                if let Some(v) = self.hh.get(hi, lo & mask64(tag - 64), tag) {
                    return Some(v as u16);
                }
            }
        }
        let lens = if odd & ODD_TOP != 0 {
            17..=23u8
        } else if odd & ODD_MID != 0 {
            33..=39
        } else {
            return None;
        };
        for l in lens.rev().filter(|&l| self.odd.has(l)) {
            let tag = u32::from(l);
            if let Some(w) = self.hx.get(hi & mask64(tag), tag) {
                return Some(w as u16);
            }
        }
        None
    }
}

/// The table as the program reads it, for readers on other threads.
pub struct V6View {
    maps: V6Maps,
}

impl V6View {
    pub(crate) fn new(maps: V6Maps) -> Self {
        Self { maps }
    }

    /// What the kernel table answers for `addr` (0 = no match).
    pub fn lookup(&self, addr: u128) -> u16 {
        self.maps.lookup(addr)
    }
}

/// One entry as the agent keeps it.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Node {
    verdict: u16,
    /// A rule is placed on it (not only a /32 marker).
    own: bool,
    /// Entries of each longer level inside it (TOP counts only the /32s, and the /64s: its
    /// flag for them tells the program whether loading the /64's bucket early can pay).
    inside: [u32; 6],
    /// Odd entries inside it: in HX (TOP: /17–/23; a /32: /33–/39), and in HH (/65–/127,
    /// counted by each /32, /48, /56 and /64 entry they lie in).
    odd: [u32; 2],
    /// Its HX slot (/32–/64) or HH slot (/128); [`NO_SLOT`] for a /48 held in its /32's
    /// slot.
    slot: u32,
    /// A /32's /48 held in its slot: that /48's bits 32–47.
    inline: Option<u16>,
}

/// The slot of a /48 held inline by its /32.
const NO_SLOT: u32 = u32::MAX;

/// Whether a /32 holds its /48 in its own slot: that /48 is all it has inside. A /48 alone
/// in its /32 is most of a list of random /48s, and the program then stops at the /32.
fn holds_inline(n: &Node) -> bool {
    n.inside[2] == 1 && n.inside[3..].iter().all(|&c| c == 0) && n.odd == [0; 2]
}

impl Node {
    /// The kernel's value for it on level `i`.
    fn entry(&self, i: usize) -> u32 {
        let mut e = u32::from(self.verdict);
        for j in i + 1..LEVELS.len() {
            if self.inside[j] > 0 {
                e |= inside(j);
            }
        }
        if self.odd[0] > 0 {
            e |= if i == 0 { ODD_TOP } else { ODD_MID };
        }
        if self.odd[1] > 0 {
            e |= ODD_H;
        }
        e
    }

    /// Whether level `i` needs it: a /32 also as the way to anything longer inside.
    fn needed(&self, i: usize) -> bool {
        self.own || (i == 1 && (self.odd != [0; 2] || self.inside.iter().any(|&n| n > 0)))
    }
}

/// User-space rules plus the kernel entries holding their effective verdicts.
pub struct V6Table {
    maps: V6Maps,
    capacity: u32,
    /// HX slots deleted and when: reusable once [`GRACE`] has passed.
    gone: StdHashMap<usize, Instant>,
    /// The same for HH.
    hh_gone: StdHashMap<usize, Instant>,
    hx_used: usize,
    /// /48s held in their /32's slot. Each still counts as an entry of `v6_entries`, so
    /// that giving one its own slot back never finds the table full half-way through a
    /// change.
    held: usize,
    /// Hashed: the effective verdict probes it once per length in use, for every entry.
    rules: StdHashMap<(u128, u8), Rule>,
    counts: [usize; 2],
    /// Rules per length and kind, and the lengths in use (sorted), so the effective verdict
    /// of an entry looks only at lengths that hold rules.
    per_len: [[u32; 129]; 2],
    lens: [Vec<u8>; 2],
    /// TOP's entries.
    top: Vec<Node>,
    /// The other levels' entries (index 0 unused), ordered for the ones inside a prefix.
    levels: [BTreeMap<u128, Node>; 6],
    /// The odd-length entries, ordered for the ones inside a prefix.
    odd: BTreeMap<(u128, u8), OddEntry>,
    /// Odd entries per length: a length is listed for the program while it has any.
    odd_per_len: [u32; 129],
    /// Odd entries in HH (/65–/127), which share its capacity with the /128s.
    hh_odd: usize,
}

/// An odd-length entry: its verdict and its HX or HH slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct OddEntry {
    verdict: u16,
    slot: u32,
}

impl V6Table {
    pub(crate) fn new(maps: V6Maps, capacity: u32) -> Self {
        Self {
            maps,
            capacity,
            gone: StdHashMap::new(),
            hh_gone: StdHashMap::new(),
            hx_used: 0,
            held: 0,
            rules: StdHashMap::new(),
            counts: [0; 2],
            per_len: [[0; 129]; 2],
            lens: [Vec::new(), Vec::new()],
            top: vec![Node::default(); 1 << 16],
            levels: Default::default(),
            odd: BTreeMap::new(),
            odd_per_len: [0; 129],
            hh_odd: 0,
        }
    }

    /// Entries of the fullest part (the HX hash: /17–/64, the HH hash: /65–/128), each of
    /// which holds `[limits] v6_entries`.
    pub fn fullest(&self) -> usize {
        (self.hx_used + self.held).max(self.hh_used())
    }

    /// Entries in HH: /128s and odd /65–/127s.
    fn hh_used(&self) -> usize {
        self.levels[5].len() + self.hh_odd
    }

    /// /48s held in their /32's slot (each alone in its /32).
    pub fn held_in_32(&self) -> usize {
        self.held
    }

    /// The TOP entry of `addr`'s /16 as the program reads it from the map.
    pub fn top_entry(&self, addr: u128) -> u32 {
        self.maps.top.get((addr >> 112) as usize)
    }

    /// Number of rules of `kind`.
    pub fn len(&self, kind: Kind) -> usize {
        self.counts[kind as usize]
    }

    /// Entries the kernel holds: /16 (non-empty), /32, /48, /56, /64, /128, then the odd
    /// lengths (/17–/23, /33–/39, /65–/127).
    pub fn entries(&self) -> [usize; 7] {
        let mut out = [self.odd.len(); 7];
        out[0] = self.top.iter().filter(|n| n.entry(0) != 0).count();
        for (o, l) in out.iter_mut().zip(&self.levels).skip(1) {
            *o = l.len();
        }
        out
    }

    fn count(&mut self, kind: Kind, len: u8, add: bool) {
        let k = kind as usize;
        let c = &mut self.per_len[k][len as usize];
        let was = *c;
        if add {
            *c += 1;
            self.counts[k] += 1;
        } else {
            *c -= 1;
            self.counts[k] -= 1;
        }
        if (was == 0) != (*c == 0) {
            self.lens[k] = (0..=128u8)
                .filter(|&l| self.per_len[k][l as usize] > 0)
                .collect();
        }
    }

    /// The verdict an address range `addr/len` gets from rules of length `len` or less.
    fn effective(&self, addr: u128, len: u8) -> u16 {
        for &l in self.lens[Kind::Allow as usize]
            .iter()
            .rev()
            .skip_while(|&&l| l > len)
        {
            if let Some(a) = self.rules.get(&(addr & mask(l), l)).and_then(|r| r.allow) {
                return verdict::pack(action::ALLOW, verdict::list_id(a));
            }
        }
        for &l in self.lens[Kind::Block as usize]
            .iter()
            .rev()
            .skip_while(|&&l| l > len)
        {
            if let Some(b) = self.rules.get(&(addr & mask(l), l)).and_then(|r| r.block) {
                return b;
            }
        }
        0
    }

    /// Whether a rule placed on level `i` covers key `k` of that level.
    fn owns(&self, i: usize, k: u128) -> bool {
        (0..2).any(|kind| {
            self.lens[kind]
                .iter()
                .any(|&l| place(l) == Place::Level(i) && self.rules.contains_key(&(k & mask(l), l)))
        })
    }

    fn full(&self, what: &'static str) -> V6Error {
        V6Error::Full {
            what,
            capacity: self.capacity,
        }
    }

    /// A new entry of level `i`: what already lies inside it, counted. Anything inside hangs
    /// below its /32, whose counts say which levels to look at; a /32 not there yet has
    /// nothing inside (the caller counts the entry it is made for).
    fn fresh(&self, i: usize, k: u128, verdict: u16) -> Node {
        let mut n = Node {
            verdict,
            ..Node::default()
        };
        if i < 2 {
            return n;
        }
        let Some(above) = self.levels[1].get(&(k & mask(32))) else {
            return n;
        };
        let end = k | !mask(LEVELS[i]);
        for j in i + 1..LEVELS.len() {
            if above.inside[j] > 0 {
                n.inside[j] = self.levels[j].range(k..=end).count() as u32;
            }
        }
        if above.odd[1] > 0 {
            n.odd[1] = self
                .odd
                .range((k, 0)..=(end, 128))
                .filter(|&(&(_, l), _)| l > 64)
                .count() as u32;
        }
        n
    }

    fn hx_words(&self) -> &[AtomicU64] {
        self.maps.hx.words()
    }

    /// Starts loading the HX bucket that `set(addr, len, ..)` will probe first, and the
    /// one of its /32 marker. Homes are random in a table of up to 128 MiB, so each new
    /// entry is a cache (and TLB) miss: a caller with a run of changes asks a few ahead and
    /// their misses overlap instead of coming one after the other (1M prefixes: 8–15 % of
    /// the load). A hint only; x86-64 has a stable prefetch, elsewhere it does nothing.
    pub fn prefetch(&self, addr: u128, len: u8) {
        let Place::Level(i) = place(len) else {
            return;
        };
        if !(1..LEVELS.len() - 1).contains(&i) {
            return;
        }
        let hi = (addr >> 64) as u64;
        for lv in [32, LEVELS[i]] {
            let key = hi & (u64::MAX << (64 - lv));
            let home = hx_bucket(key, u32::from(lv), self.maps.hx.bits) as usize;
            let words = self.hx_words();
            let first = &words[2 * BUCKET_SLOTS * home];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch reads nothing into the program and cannot fault; the
            // pointer is inside the mapping.
            unsafe {
                use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
                _mm_prefetch::<_MM_HINT_T0>(first.as_ptr().cast::<i8>());
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = first;
        }
    }

    /// Places a new HX entry (`word`: its entry, and its tag above it): the first
    /// never-used or long-gone slot of its probe sequence.
    fn hx_insert(&mut self, key: u64, word: u64) -> Result<u32, V6Error> {
        self.hx_insert_within(key, word, MAX_PROBE)
    }

    /// [`Self::hx_insert`] within the first `window` buckets of the probe sequence.
    fn hx_insert_within(&mut self, key: u64, word: u64, window: u32) -> Result<u32, V6Error> {
        let tag = tag_len((word >> 32) as u32);
        if self.hx_used + self.held >= self.capacity as usize {
            return Err(self.full("/17–/64 hash"));
        }
        let bits = self.maps.hx.bits;
        let home = hx_bucket(key, tag, bits) as usize;
        let w = self.hx_words();
        let found = free_slot(&self.gone, (bits, BUCKET_SLOTS), (home, window), |s| {
            (w[2 * s + 1].load(Ordering::Relaxed) >> 32) as u32
        });
        let Some(s) = found else {
            return Err(self.full("/17–/64 hash (no free slot near this key)"));
        };
        self.gone.remove(&s);
        let w = self.hx_words();
        w[2 * s].store(key, Ordering::Release);
        w[2 * s + 1].store(word, Ordering::Release);
        self.hx_used += 1;
        Ok(s as u32)
    }

    /// Places `addr` (a /128, or an odd /65–/127 masked to its length `tag`) with entry `e`
    /// in HH: the first free slot of its probe sequence, the address written before the
    /// word that makes it visible.
    /// An odd entry only within [`ODD_PROBE`] buckets, as far as the program looks.
    fn hh_insert(&mut self, addr: u128, tag: u32, e: u32) -> Result<u32, V6Error> {
        if self.hh_used() >= self.capacity as usize {
            return Err(self.full("/65–/128 hash"));
        }
        let hh = &self.maps.hh;
        let (hi, lo) = ((addr >> 64) as u64, addr as u64);
        let w = hh.words();
        let home = hh_bucket(hi, lo, hh.bits) as usize;
        let window = if tag == TAG_HOST {
            MAX_PROBE
        } else {
            ODD_PROBE
        };
        let found = free_slot(&self.hh_gone, (hh.bits, HOST_SLOTS), (home, window), |s| {
            (w[HH_WORDS * s + 2].load(Ordering::Relaxed) >> 32) as u32
        });
        let Some(s) = found else {
            return Err(self.full("/65–/128 hash (no free slot near this address)"));
        };
        w[HH_WORDS * s].store(hi, Ordering::Release);
        w[HH_WORDS * s + 1].store(lo, Ordering::Release);
        w[HH_WORDS * s + 2].store(u64::from(tag) << 32 | u64::from(e), Ordering::Release);
        self.hh_gone.remove(&s);
        Ok(s as u32)
    }

    /// HH slot `s`'s entry (its tag `tag`), in place.
    fn hh_set(&self, s: u32, tag: u32, e: u32) {
        self.maps.hh.words()[HH_WORDS * s as usize + 2]
            .store(u64::from(tag) << 32 | u64::from(e), Ordering::Release);
    }

    /// Marks HH slot `s` deleted.
    fn hh_free(&mut self, s: u32) {
        let s = s as usize;
        self.maps.hh.words()[HH_WORDS * s + 2].store(u64::from(TAG_GONE) << 32, Ordering::Release);
        self.hh_gone.insert(s, Instant::now());
    }

    /// Marks slot `s` deleted.
    fn hx_free(&mut self, s: u32) {
        let s = s as usize;
        self.hx_words()[2 * s + 1].store(u64::from(TAG_GONE) << 32, Ordering::Release);
        self.gone.insert(s, Instant::now());
        self.hx_used -= 1;
    }

    /// The word of /32 `k`'s slot for node `n`, with its /48 brought into the word or out
    /// of it as [`holds_inline`] says. The order keeps every reader right: a /48 leaving
    /// the word gets its own slot here, before the caller stores the /32's word without
    /// it; one coming in keeps its slot until that store (the slot returned, to free).
    fn word32(&mut self, k: u128, n: &mut Node) -> Result<(u64, Option<u32>), V6Error> {
        if holds_inline(n) {
            let (&ck, c) = self.levels[2]
                .range_mut(k..=k | !mask(32))
                .next()
                .expect("a /32 counts the /48 inside it");
            let key16 = (ck >> 80) as u16;
            let free = (c.slot != NO_SLOT).then_some(c.slot);
            c.slot = NO_SLOT;
            n.inline = Some(key16);
            return Ok((inline_word(n.entry(1), key16, c.verdict), free));
        }
        if let Some(key16) = n.inline {
            let ck = k | u128::from(key16) << 80;
            if let Some(c) = self.levels[2].get(&ck).copied() {
                // Its entry was counted while held: the slot is not a new one.
                self.held -= 1;
                let slot = match self.hx_insert((ck >> 64) as u64, 48 << 32 | u64::from(c.entry(2)))
                {
                    Ok(s) => s,
                    Err(e) => {
                        // Still held: the /32's word is left as it is.
                        self.held += 1;
                        return Err(e);
                    }
                };
                if let Some(c) = self.levels[2].get_mut(&ck) {
                    c.slot = slot;
                }
            }
            n.inline = None;
        }
        Ok((32 << 32 | u64::from(n.entry(1)), None))
    }

    /// Writes what level `i` holds for key `k`, then what the entries above count of it.
    fn write_node(&mut self, i: usize, k: u128, new: Option<Node>) -> Result<(), V6Error> {
        if i == 0 {
            let idx = (k >> 112) as usize;
            let n = new.unwrap_or_default();
            if self.top[idx].entry(0) != n.entry(0) {
                self.maps.top.set(idx, n.entry(0));
            }
            self.top[idx] = n;
            return Ok(());
        }
        let old = self.levels[i].get(&k).copied();
        let lv = LEVELS[i];
        let hi = (k >> 64) as u64;
        match (old, new) {
            (None, None) => {}
            (None, Some(mut n)) => {
                let k32 = k & mask(32);
                if i == 5 {
                    n.slot = self.hh_insert(k, TAG_HOST, n.entry(i))?;
                } else if i == 1 {
                    let (word, _) = self.word32(k, &mut n)?;
                    n.slot = self.hx_insert(hi, word)?;
                } else if i == 2
                    && self.levels[1].get(&k32).is_none_or(|&p| {
                        let mut p = p;
                        p.inside[2] += 1;
                        holds_inline(&p)
                    })
                {
                    // Its /32 will hold nothing else: it goes in that /32's word, written
                    // when counted() below updates the /32.
                    if self.hx_used + self.held >= self.capacity as usize {
                        return Err(self.full("/17–/64 hash"));
                    }
                    self.held += 1;
                    n.slot = NO_SLOT;
                } else {
                    n.slot = self.hx_insert(hi, u64::from(lv) << 32 | u64::from(n.entry(i)))?;
                }
                self.levels[i].insert(k, n);
                self.counted(i, k, true)?;
            }
            (Some(o), Some(mut n)) => {
                n.slot = o.slot;
                n.inline = o.inline;
                if i == 1 {
                    let (word, free) = match self.word32(k, &mut n) {
                        Ok(x) => x,
                        Err(e) => {
                            // The counts are kept, so that the caller's rollback undoes
                            // them; the word and its /48 stay as they were.
                            self.levels[i].insert(k, n);
                            return Err(e);
                        }
                    };
                    let w = &self.hx_words()[2 * n.slot as usize + 1];
                    if w.load(Ordering::Relaxed) != word {
                        w.store(word, Ordering::Release);
                    }
                    if let Some(s) = free {
                        self.hx_free(s);
                        self.held += 1;
                    }
                    self.levels[i].insert(k, n);
                } else if o.entry(i) != n.entry(i) {
                    if i == 5 {
                        self.hh_set(n.slot, TAG_HOST, n.entry(i));
                        self.levels[i].insert(k, n);
                    } else if n.slot == NO_SLOT {
                        // Held by its /32: that word is rewritten.
                        self.levels[i].insert(k, n);
                        let k32 = k & mask(32);
                        let p = self.levels[1][&k32];
                        self.write_node(1, k32, Some(p))?;
                    } else {
                        let s = n.slot as usize;
                        self.hx_words()[2 * s + 1].store(
                            u64::from(lv) << 32 | u64::from(n.entry(i)),
                            Ordering::Release,
                        );
                        self.levels[i].insert(k, n);
                    }
                } else {
                    self.levels[i].insert(k, n);
                }
            }
            (Some(o), None) => {
                if i == 5 {
                    self.hh_free(o.slot);
                } else if o.slot != NO_SLOT {
                    self.hx_free(o.slot);
                } else {
                    self.held -= 1;
                }
                self.levels[i].remove(&k);
                self.counted(i, k, false)?;
            }
        }
        Ok(())
    }

    /// Entry `k` of level `j` appeared (or went): the entries above it count it; a /32
    /// marker appears for it, or goes with the last thing inside it.
    fn counted(&mut self, j: usize, k: u128, added: bool) -> Result<(), V6Error> {
        // Every entry above is counted even when a write fails: the rollback that follows
        // an error uncounts them all.
        let mut res = Ok(());
        if j == 1 || j == 4 {
            let mut t = self.top[(k >> 112) as usize];
            bump(&mut t.inside[j], added);
            res = self.write_node(0, k, Some(t));
            if j == 1 {
                return res;
            }
        }
        for (i, &lv) in LEVELS.iter().enumerate().take(j).skip(1) {
            let a = k & mask(lv);
            let r = match self.levels[i].get(&a).copied() {
                Some(mut n) => {
                    bump(&mut n.inside[j], added);
                    let keep = n.needed(i);
                    self.write_node(i, a, keep.then_some(n))
                }
                None if i == 1 && added => {
                    let mut n = self.fresh(1, a, self.effective(a, 32));
                    n.inside[j] = 1;
                    // Without its /32 nothing below it exists yet.
                    return self.write_node(1, a, Some(n));
                }
                None => Ok(()),
            };
            if res.is_ok() {
                res = r;
            }
        }
        res
    }

    /// Writes the odd-length entry of rule `addr/len` as the rules say (there with its
    /// effective verdict while the rule exists), then the count of the entry above that
    /// flags it. A new length is listed for the program before its first entry is written;
    /// a length unlisted after its last entry is gone.
    fn write_odd(&mut self, addr: u128, len: u8) -> Result<(), V6Error> {
        let want = self
            .rules
            .contains_key(&(addr, len))
            .then(|| self.effective(addr, len));
        let have = self.odd.get(&(addr, len)).copied();
        if have.map(|o| o.verdict) == want {
            return Ok(());
        }
        let host = len > 64;
        let tag = u32::from(len);
        let hi = (addr >> 64) as u64;
        match (have, want) {
            (None, Some(v)) => {
                let first = self.odd_per_len[len as usize] == 0;
                if first {
                    if host && self.maps.odd.host_lens() >= ODD_HOST_MAX {
                        return Err(V6Error::Lengths { len });
                    }
                    self.maps.odd.set(len, true);
                }
                let slot = if host {
                    self.hh_insert(addr, tag, u32::from(v))
                } else {
                    self.hx_insert_within(hi, u64::from(tag) << 32 | u64::from(v), ODD_PROBE)
                };
                let slot = match slot {
                    Ok(s) => s,
                    Err(e) => {
                        if first {
                            self.maps.odd.set(len, false);
                        }
                        return Err(e);
                    }
                };
                self.odd_per_len[len as usize] += 1;
                if host {
                    self.hh_odd += 1;
                }
                self.odd.insert((addr, len), OddEntry { verdict: v, slot });
            }
            (Some(o), Some(v)) => {
                if host {
                    self.hh_set(o.slot, tag, u32::from(v));
                } else {
                    self.hx_words()[2 * o.slot as usize + 1]
                        .store(u64::from(tag) << 32 | u64::from(v), Ordering::Release);
                }
                self.odd.insert((addr, len), OddEntry { verdict: v, ..o });
                return Ok(());
            }
            (Some(o), None) => {
                if host {
                    self.hh_free(o.slot);
                    self.hh_odd -= 1;
                } else {
                    self.hx_free(o.slot);
                }
                self.odd.remove(&(addr, len));
                self.odd_per_len[len as usize] -= 1;
                if self.odd_per_len[len as usize] == 0 {
                    self.maps.odd.set(len, false);
                }
            }
            (None, None) => return Ok(()),
        }
        // The entries it lies in flag it: TOP, or its /32 (made if need be) and, for a
        // /65–/127, each /48, /56 and /64 there is.
        let added = want.is_some();
        if len < 32 {
            let mut t = self.top[(addr >> 112) as usize];
            bump(&mut t.odd[0], added);
            return self.write_node(0, addr, Some(t));
        }
        let set = usize::from(host);
        let a = addr & mask(32);
        let n = match self.levels[1].get(&a).copied() {
            Some(mut n) => {
                bump(&mut n.odd[set], added);
                Some(n)
            }
            None if added => {
                let mut n = self.fresh(1, a, self.effective(a, 32));
                n.odd[set] = 1;
                Some(n)
            }
            None => None,
        };
        // Every entry is counted even when a write fails: the rollback that follows an
        // error uncounts them all.
        let mut res = match n {
            Some(n) => {
                let keep = n.needed(1);
                self.write_node(1, a, keep.then_some(n))
            }
            None => Ok(()),
        };
        if host {
            for (i, &lv) in LEVELS.iter().enumerate().take(5).skip(2) {
                let k = addr & mask(lv);
                if let Some(mut n) = self.levels[i].get(&k).copied() {
                    bump(&mut n.odd[1], added);
                    let r = self.write_node(i, k, Some(n));
                    if res.is_ok() {
                        res = r;
                    }
                }
            }
        }
        res
    }

    /// Rewrites everything a change of the rule `addr/len` can affect: odd entries and
    /// entries inside it (inherited verdicts), and its own entries (with the /32 markers
    /// and flags above them).
    fn sync(&mut self, addr: u128, len: u8, kind: Kind) -> Result<(), V6Error> {
        let end = addr | !mask(len);
        let placed = place(len);
        // An odd entry's verdict is its own rule's, or an allow above it: only an allow
        // changes those inside.
        let mut odd: Vec<(u128, u8)> = Vec::new();
        if kind == Kind::Allow {
            odd.extend(
                self.odd
                    .range((addr, len)..=(end, 128))
                    .map(|(&p, _)| p)
                    .filter(|&(_, l)| l > len),
            );
        }
        if placed == Place::Odd {
            odd.push((addr, len));
        }
        for (a, l) in odd {
            self.write_odd(a, l)?;
        }
        // Entries inside inherit from the rule: a new verdict (its own are rewritten below).
        // Inside a /32 or longer, its /32's counts say which levels have any.
        let above = (len >= 32).then(|| self.levels[1].get(&(addr & mask(32))).copied());
        for (i, &lv) in LEVELS.iter().enumerate().skip(1) {
            if lv < len || placed == Place::Level(i) {
                continue;
            }
            match above {
                Some(None) => break,
                Some(Some(n)) if n.inside[i] == 0 => continue,
                _ => {}
            }
            let inner: Vec<u128> = self.levels[i].range(addr..=end).map(|(&k, _)| k).collect();
            for k in inner {
                let mut n = self.levels[i][&k];
                n.verdict = self.effective(k, lv);
                self.write_node(i, k, Some(n))?;
            }
        }
        if let Place::Level(i) = placed {
            let lv = LEVELS[i];
            let n = 1u128 << (lv - len);
            let step = if lv == 128 { 1 } else { 1u128 << (128 - lv) };
            for j in 0..n {
                let k = addr + j * step;
                let verdict = self.effective(k, lv);
                let own = self.owns(i, k);
                let mut node = match i {
                    0 => self.top[(k >> 112) as usize],
                    _ => match self.levels[i].get(&k) {
                        Some(&n) => n,
                        None if own => self.fresh(i, k, verdict),
                        None => continue,
                    },
                };
                node.verdict = verdict;
                node.own = own;
                let keep = i == 0 || node.needed(i);
                self.write_node(i, k, keep.then_some(node))?;
            }
        }
        Ok(())
    }

    fn slot(r: &mut Rule, kind: Kind) -> &mut Option<u16> {
        match kind {
            Kind::Block => &mut r.block,
            Kind::Allow => &mut r.allow,
        }
    }

    /// Puts back rule `addr/len` of `kind` as `old` after a failed write (best effort).
    fn restore(&mut self, addr: u128, len: u8, kind: Kind, old: Option<u16>) {
        let r = self.rules.entry((addr, len)).or_default();
        let was = Self::slot(r, kind).is_some();
        *Self::slot(r, kind) = old;
        if r.block.is_none() && r.allow.is_none() {
            self.rules.remove(&(addr, len));
        }
        match (was, old.is_some()) {
            (true, false) => self.count(kind, len, false),
            (false, true) => self.count(kind, len, true),
            _ => {}
        }
        let _ = self.sync(addr, len, kind);
    }

    /// Sets the rule `addr/len` of `kind`.
    pub fn set(&mut self, addr: u128, len: u8, kind: Kind, v: u16) -> Result<(), V6Error> {
        let addr = addr & mask(len);
        let r = self.rules.entry((addr, len)).or_default();
        let old = Self::slot(r, kind).replace(v);
        if old.is_none() {
            self.count(kind, len, true);
        }
        if let Err(e) = self.sync(addr, len, kind) {
            self.restore(addr, len, kind, old);
            return Err(e);
        }
        Ok(())
    }

    /// Removes the rule; returns whether it existed.
    pub fn remove(&mut self, addr: u128, len: u8, kind: Kind) -> Result<bool, V6Error> {
        let addr = addr & mask(len);
        let Some(r) = self.rules.get_mut(&(addr, len)) else {
            return Ok(false);
        };
        let Some(old) = Self::slot(r, kind).take() else {
            return Ok(false);
        };
        if r.block.is_none() && r.allow.is_none() {
            self.rules.remove(&(addr, len));
        }
        self.count(kind, len, false);
        if let Err(e) = self.sync(addr, len, kind) {
            self.restore(addr, len, kind, Some(old));
            return Err(e);
        }
        Ok(true)
    }

    /// What the kernel table answers for `addr` (0 = no match).
    pub fn lookup(&self, addr: u128) -> u16 {
        self.maps.lookup(addr)
    }

    /// Every rule.
    pub fn rules(&self) -> impl Iterator<Item = (u128, u8, Kind, u16)> + '_ {
        self.rules.iter().flat_map(|(&(a, l), r)| {
            [(Kind::Block, r.block), (Kind::Allow, r.allow)]
                .into_iter()
                .filter_map(move |(k, v)| v.map(|v| (a, l, k, v)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement() {
        assert_eq!(place(0), Place::Level(0));
        assert_eq!(place(16), Place::Level(0));
        assert_eq!(place(17), Place::Odd);
        assert_eq!(place(23), Place::Odd);
        assert_eq!(place(24), Place::Level(1));
        assert_eq!(place(32), Place::Level(1));
        assert_eq!(place(39), Place::Odd);
        assert_eq!(place(40), Place::Level(2));
        assert_eq!(place(48), Place::Level(2));
        assert_eq!(place(49), Place::Level(3));
        assert_eq!(place(56), Place::Level(3));
        assert_eq!(place(57), Place::Level(4));
        assert_eq!(place(64), Place::Level(4));
        assert_eq!(place(65), Place::Odd);
        assert_eq!(place(127), Place::Odd);
        assert_eq!(place(128), Place::Level(5));
    }
}
