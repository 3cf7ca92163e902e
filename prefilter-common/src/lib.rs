//! Types and constants shared by the XDP program (`prefilter-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree on the byte
//! layout without mirroring structs by hand. Bump [`ABI_VERSION`] whenever a map's key, value,
//! size or meaning changes: the agent refuses to adopt pinned maps of another ABI.
#![no_std]

/// Layout version of every map below. Written into [`config::Config::abi`] when the maps are
/// created, and part of the program's name, so a stale pinned program or map set is detected.
pub const ABI_VERSION: u32 = 8;

/// Name of the XDP program function; it carries the ABI so `bpftool prog` shows it too.
pub const PROG_NAME: &str = "prefilter_v8";

/// Verdict actions, as stored in map values and used as counter indices.
pub mod action {
    /// No entry: the slot is empty.
    pub const NONE: u8 = 0;
    /// Let the SYN through.
    pub const PASS: u8 = 1;
    /// XDP_DROP: the sender times out and retries later.
    pub const DROP: u8 = 2;
    /// XDP_TX of a TCP RST+ACK: the sender sees a refused connection at once.
    pub const RESET: u8 = 3;
    /// Pass; the SMTP proxy answers `421 4.7.0`.
    pub const TEMPFAIL: u8 = 4;
    /// Pass; the SMTP proxy answers `554 5.7.1`.
    pub const REJECT: u8 = 5;
    /// Pass, counted as "would have been dropped" (shadow mode).
    pub const OBSERVE: u8 = 6;
    /// Allowlisted: exempt from every check. Only the prefix tables hold it.
    pub const ALLOW: u8 = 7;
    /// Number of action slots in the counter matrix.
    pub const COUNT: usize = 8;

    /// How strong a refusal `a` is: where a learned (dynamic) verdict and a listed one
    /// meet, the stronger applies, as across lists. 0 for none, pass and allow.
    pub const fn severity(a: u8) -> u8 {
        match a {
            DROP => 5,
            RESET => 4,
            REJECT => 3,
            TEMPFAIL => 2,
            OBSERVE => 1,
            _ => 0,
        }
    }

    /// Names used by the CLI, the config and metric labels, indexed by action.
    pub const NAMES: [&str; COUNT] = [
        "none", "pass", "drop", "reset", "tempfail", "reject", "observe", "allow",
    ];

    /// The action for a name as typed by an administrator.
    pub fn from_name(name: &str) -> Option<u8> {
        NAMES
            .iter()
            .position(|n| *n == name)
            .filter(|&i| i != NONE as usize)
            .map(|i| i as u8)
    }
}

/// Why a packet got its verdict; the other counter dimension.
pub mod reason {
    /// Not a SYN without ACK to a judged port (ARP, established flows, other ports...).
    pub const NOT_JUDGED: u8 = 0;
    /// Truncated or inconsistent headers, or more than we parse: passed, never judged.
    pub const MALFORMED: u8 = 1;
    /// Source in an allow prefix.
    pub const ALLOW: u8 = 2;
    /// Source over the per-source SYN rate.
    pub const RATELIMIT: u8 = 3;
    /// A dynamic verdict (DNSBL, CLI with TTL, escalation) matched.
    pub const DYNAMIC: u8 = 4;
    /// A block prefix matched (local list or feed).
    pub const BLOCK: u8 = 5;
    /// A judged SYN that matched nothing.
    pub const NO_MATCH: u8 = 6;
    /// Number of reasons.
    pub const COUNT: usize = 7;
    /// Metric label values, indexed by reason.
    pub const NAMES: [&str; COUNT] = [
        "not_judged",
        "malformed",
        "allow",
        "ratelimit",
        "dynamic",
        "block",
        "no_match",
    ];
}

/// A prefix-table verdict packed in 16 bits: action in the top 4, list id in the low 12.
pub mod verdict {
    /// The list id bits of a verdict.
    pub const LIST_ID_MASK: u16 = 0x0fff;
    /// Largest list id given out: short of what 12 bits hold, so that every list's hit
    /// counter fits in one per-CPU value with the others ([`crate::counters::Stats`]).
    pub const MAX_LIST_ID: u16 = crate::counters::LIST_SLOTS as u16 - 1;

    /// Packs an action and the id of the list or feed that set it.
    pub const fn pack(action: u8, list_id: u16) -> u16 {
        ((action as u16) << 12) | (list_id & LIST_ID_MASK)
    }

    /// The action of a packed verdict.
    pub const fn action(v: u16) -> u8 {
        (v >> 12) as u8
    }

    /// The list id of a packed verdict.
    pub const fn list_id(v: u16) -> u16 {
        v & LIST_ID_MASK
    }
}

/// Runtime settings the agent writes; the program reads them on every judged SYN.
pub mod config {
    /// Array map with one [`Config`]: the agent's pinned record of the settings, which a
    /// restarted agent adopts with the other pinned maps, and the ABI marker. The program
    /// does not read it: it reads the copy in its global [`Settings`].
    pub const MAP: &str = "PF_CONFIG";
    /// The program's global data section (an array map of one [`Settings`] that aya
    /// creates for it): the settings and the judged ports, which the program reads with
    /// plain loads from a fixed address. A map lookup passes its key through the stack and
    /// returns a pointer to wait for; two of them (settings and ports) were a fifth of a
    /// blocked SYN's cost. Not pinned: each loaded program has its own, written before any
    /// link points at it.
    pub const SETTINGS_MAP: &str = ".data";

    /// Per-source SYN rate limit is on.
    pub const FLAG_RATELIMIT: u32 = 1 << 0;
    /// Key IPv6 dynamic verdicts and rate buckets by /128 instead of /64.
    pub const FLAG_V6_FULL: u32 = 1 << 1;
    /// Emit "first contact from an address without a verdict" events, on the client's ACK
    /// (a completed handshake), never on a bare SYN: spoofed sources cause none.
    pub const FLAG_FIRST_SEEN: u32 = 1 << 2;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Config {
        /// [`crate::ABI_VERSION`] of whoever created the maps.
        pub abi: u32,
        /// `FLAG_*` bits.
        pub flags: u32,
        /// Token-bucket cost of one SYN, in nanoseconds of credit (1e9 / rate).
        pub rl_cost_ns: u64,
        /// Bucket capacity in nanoseconds of credit (burst * cost).
        pub rl_cap_ns: u64,
        /// Events (verdict samples and first-seen) per second per CPU; 0 = none. The
        /// program reads `ev_cost_ns` and `ev_cap_ns`; this is kept for readers.
        pub events_per_sec: u32,
        /// Number of live dynamic entries as the agent knows it; 0 lets the program skip
        /// the hash lookup entirely.
        pub dyn_entries: u32,
        /// Event token-bucket cost of one event in ns of credit (1e9 / events_per_sec).
        pub ev_cost_ns: u64,
        /// Event bucket capacity in ns of credit (burst * cost).
        pub ev_cap_ns: u64,
    }

    impl Config {
        /// Sets the per-CPU event budget: `per_sec` events per second, bursts of as many.
        pub fn set_events_per_sec(&mut self, per_sec: u32) {
            self.events_per_sec = per_sec;
            if per_sec == 0 {
                self.ev_cost_ns = 0;
                self.ev_cap_ns = 0;
            } else {
                self.ev_cost_ns = 1_000_000_000 / per_sec as u64;
                // One second's worth: a quiet CPU can report a short burst at once.
                self.ev_cap_ns = self.ev_cost_ns * per_sec as u64;
            }
        }
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), only integers, no implicit padding (4+4+8+8+4+4+8+8).
    unsafe impl aya::Pod for Config {}

    /// The program's global settings: the config and the judged ports.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Settings {
        pub config: Config,
        /// Non-zero when a judged SYN may need more than the prefix tables: rate limiting is
        /// on or dynamic verdicts exist. Derived from `config` by the agent, so that the
        /// common case costs the program one load and one branch.
        pub slow: u32,
        pub _pad: u32,
        /// Bit `port % 64` of word `port / 64` set: SYNs to that port are judged.
        pub ports: [u64; crate::ports::WORDS],
    }

    impl Settings {
        /// What a freshly loaded program holds until the agent writes it: nothing judged.
        /// The ABI is set so that the value is not all zeros, which would put it in `.bss`
        /// (a map of another name) instead of `.data`.
        pub const INITIAL: Settings = Settings {
            config: Config {
                abi: crate::ABI_VERSION,
                flags: 0,
                rl_cost_ns: 0,
                rl_cap_ns: 0,
                events_per_sec: 0,
                dyn_entries: 0,
                ev_cost_ns: 0,
                ev_cap_ns: 0,
            },
            slow: 0,
            _pad: 0,
            ports: [0; crate::ports::WORDS],
        };

        /// The settings for `config` and the judged ports of `list`.
        pub fn new(config: Config, list: &[u16]) -> Settings {
            let mut s = Settings {
                config,
                slow: u32::from(config.flags & FLAG_RATELIMIT != 0 || config.dyn_entries != 0),
                ..Settings::INITIAL
            };
            s.set_ports(list);
            s
        }

        /// Whether SYNs to `port` are judged.
        pub const fn judged(&self, port: u16) -> bool {
            self.ports[(port >> 6) as usize] >> (port & 63) & 1 != 0
        }

        /// Judges exactly the ports of `list`.
        pub fn set_ports(&mut self, list: &[u16]) {
            self.ports = [0; crate::ports::WORDS];
            for &p in list {
                self.ports[(p >> 6) as usize] |= 1 << (p & 63);
            }
        }
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), a Config, two u32 and u64 words, no implicit padding.
    unsafe impl aya::Pod for Settings {}
}

/// The judged destination ports: a bitmap in [`crate::config::Settings`].
pub mod ports {
    /// 64-bit words of the bitmap, one bit per port.
    pub const WORDS: usize = 65536 / 64;
    /// Judged by default: submission ports carry authenticated users on dynamic addresses.
    pub const DEFAULT: &[u16] = &[25];
}

/// IPv4 prefix table: DIR-24-8's first level (Gupta, Lin, McKeown 1998; DPDK's rte_lpm) and
/// compressed second-level groups (Poptrie, Asai and Ohara 2015), allow and block folded in by
/// the agent. One array load for most sources, three for a /24 holding several verdicts,
/// whatever the number of prefixes; bulk writes through mmap instead of a syscall per prefix.
pub mod v4 {
    /// The program's global data (`.bss.PF_V4_TBL24`: a map of one value, mmapable):
    /// [`TBL24_CHUNKS`] [`Chunk24`]s, one 64-bit entry per /24, index `addr >> 8`.
    pub const TBL24: &str = "PF_V4_TBL24";
    /// Array map of [`Group`]: one per /24 that holds several verdicts.
    pub const GROUPS: &str = "PF_V4_GROUPS";
    /// Array map of [`Runs`]: the verdicts of the groups' runs, as one flat u16 array.
    pub const RUNS: &str = "PF_V4_RUNS";
    /// Entries of TBL24 (2^24 / 256).
    pub const TBL24_CHUNKS: u32 = 1 << 16;
    /// Default number of groups in use at once (20 MiB): 5M random host /32s plus 1M mixed
    /// prefixes need 11k (one list) to 214k (a list per prefix length, the hosts in another).
    /// The agent sizes it from its config.
    pub const DEFAULT_GROUPS: u32 = 1 << 19;
    /// Group slots beyond the configured number: a changed group is written to a fresh
    /// slot before the old one is let go, and a freed slot waits for these to be used first.
    pub const SPARE_GROUPS: u32 = 4096;
    /// TBL24 entry flag: not a plain verdict.
    pub const EXT: u32 = 1 << 31;
    /// With [`EXT`]: one host `(entry >> 16) & 0xff` has verdict `entry & 0xffff`, and a
    /// second one may sit in the high 32 bits the same way (verdict 0: none); the rest of the
    /// /24 has none. Without: the low 24 bits index a group.
    pub const HOST: u32 = 1 << 30;
    /// With [`EXT`] and [`HOST`]: one verdict `entry & 0xffff` for the octets
    /// `(entry >> 16) & 0xff` to `(entry >> 32) & 0xff` and for the octets in bytes 5, 6 and 7
    /// of the entry (unused ones repeat the first octet); the rest of the /24 has none. A /24
    /// holding up to four hosts of one list, or one /25–/31 and up to three hosts, needs no
    /// group.
    pub const SPAN: u32 = 1 << 29;
    /// With [`SPAN`]: the rest of the /24 has verdict `entry >> 48` instead, and only byte 5
    /// holds another octet: a listed /24 with one or two runs of another verdict (an allowed
    /// host, a longer prefix of another list) needs no group either.
    pub const BG: u32 = 1 << 28;
    /// Group index mask of an `EXT` entry.
    pub const GROUP_MASK: u32 = 0x00ff_ffff;

    /// 256 TBL24 entries of 64 bits: a verdict (low 16 bits), one or two hosts, or
    /// `EXT | group` (the low 32 bits). 64 bits, not 32: at 5M random hosts a quarter of them
    /// share their /24 with another, and two hosts in the entry spare them a group (a second
    /// dependent cache miss); the table doubles to 128 MiB.
    pub type Chunk24 = [u64; 256];

    /// The verdicts of one /24 as runs: bit `o` of `bits` is set where a run of equal
    /// verdicts starts (bit 0 always), and the verdict of last octet `o` is
    /// `RUNS[base + rank[o / 64] + popcount(bits[o / 64] & (2 << o % 64) - 1) - 1]`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Group {
        pub bits: [u64; 4],
        /// Index of the first run's verdict in RUNS.
        pub base: u32,
        /// Run starts in the words before each word, so a lookup counts bits of one word.
        pub rank: [u8; 4],
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), 32 + 4 + 4 bytes, no implicit padding.
    unsafe impl aya::Pod for Group {}

    /// Four run verdicts: array values are padded to 8 bytes, so a map value holds four.
    pub type Runs = [u16; 4];

    /// RUNS entries (of four verdicts) for `groups` groups: identical run sequences are
    /// stored once (a host list gives a handful of distinct ones), so two verdicts per group
    /// on average, plus a floor, leave ample room.
    pub const fn runs_entries(groups: u32) -> u32 {
        (groups / 2).saturating_add(1 << 14)
    }

    /// Group slots in the map for `groups` configured ones.
    pub const fn group_slots(groups: u32) -> u32 {
        let s = groups.saturating_add(SPARE_GROUPS);
        if s > GROUP_MASK + 1 {
            GROUP_MASK + 1
        } else {
            s
        }
    }
}

pub mod v6 {
    //! IPv6 prefixes by exact match on a few lengths instead of the kernel LPM trie: the /16
    //! in an array, the /32, /48, /56 and /64 in one open-addressing hash of our own (one
    //! cache line per probe, written by the agent through mmap), the /128 in a second one
    //! with slots wide enough for the whole address. The lengths between that expansion
    //! would blow up (/17–/23, /33–/39, /65–/127: "odd") are entries of their own length in
    //! the same two hashes, probed only where a flag says one lies inside, and only at the
    //! lengths in use ([`OddLengths`]). Every entry holds the verdict of the longest match
    //! down to its length (leaf pushing) and flags saying which longer lengths have entries
    //! inside it, so the walk probes only those.

    /// The program's global data (a map of one value, mmapable): 65536 [`Entry`] values,
    /// index: the address's first 16 bits.
    pub const TOP: &str = "PF_V6_TOP";
    /// The program's global data, sized at load: [`Bucket`]s, the /32, /48, /56 and /64
    /// entries.
    pub const HX: &str = "PF_V6_HX";
    /// The program's global data, sized at load: [`HostBucket`]s, the /128 entries.
    pub const HH: &str = "PF_V6_HH";
    /// The program's global data (a map of one value, mmapable): the [`OddLengths`] in use.
    pub const ODD: &str = "PF_V6_ODD";
    /// Global (read-only data) of the program: the [`Shape`] of HX, set by the agent at load
    /// time with the map's size.
    pub const HX_SHAPE_GLOBAL: &str = "PF_V6_HX_SHAPE";
    /// The same for HH.
    pub const HH_SHAPE_GLOBAL: &str = "PF_V6_HH_SHAPE";

    /// A hash table of 2^bits buckets as the program uses it: the shift that takes a hash's
    /// top bits and the mask of a bucket index. Precomputed by the agent: derived from the
    /// bits in the program, they cost a blocked IPv6 SYN four more instructions on its path.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Shape {
        pub shift: u32,
        pub mask: u32,
    }

    impl Shape {
        pub const fn of(bits: u32) -> Shape {
            Shape {
                shift: 64 - bits,
                mask: (1 << bits) - 1,
            }
        }
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), two u32, no padding.
    unsafe impl aya::Pod for Shape {}
    /// Entries of TOP.
    pub const TOP_ENTRIES: u32 = 1 << 16;
    /// Default capacity: entries of HX (all its lengths together), of HH and of the trie.
    pub const DEFAULT_ENTRIES: u32 = 1 << 18;
    /// The most `[limits] v6_entries` may ask: the program reads HX and HH as global data
    /// of its own, and the verifier takes no offset into one of 512 MiB or more (HH has a
    /// 64-byte bucket per entry).
    pub const MAX_ENTRIES: u32 = 1 << 23;
    /// The lengths with entries; TOP is the first.
    pub const LEVELS: [u8; 6] = [16, 32, 48, 56, 64, 128];
    /// A prefix up to this many bits shorter than a level (other than /128) is written as
    /// that many entries of the level (at most 256); a longer gap goes to the trie.
    pub const MAX_EXPAND_BITS: u8 = 8;
    /// Buckets probed at most, from the hashed one on; the agent never places an entry
    /// further. Linear probing's clusters have a long tail: at half the slots in use, 32
    /// buckets (128 slots) make a failed placement practically impossible, while a lookup
    /// almost always ends in its first bucket.
    pub const MAX_PROBE: u32 = 32;
    /// Buckets probed at most for an odd-length entry, which the agent places no further:
    /// the program probes up to 15 odd lengths, each with this loop inlined, and at
    /// [`MAX_PROBE`] the verifier followed more than its million instructions. At the
    /// tables' fullest (half the slots), 1 placement in 30,000 needs more in HH and
    /// practically none in HX; the agent then refuses the entry, naming the limit.
    pub const ODD_PROBE: u32 = 12;

    /// An entry: the verdict (low 16 bits) and flags.
    pub type Entry = u32;
    /// Entries of level `LEVELS[i]` lie inside this one: `1 << (15 + i)`. TOP sets it for
    /// the /32s (the walk's way in) and the /64s (the program then loads the /64's bucket
    /// early).
    pub const fn inside(i: usize) -> u32 {
        1 << (15 + i)
    }
    /// Odd-length entries of /17–/23 lie inside this TOP entry.
    pub const ODD_TOP: u32 = 1 << 21;
    /// Odd-length entries of /33–/39 lie inside this /32 entry.
    pub const ODD_MID: u32 = 1 << 24;
    /// Odd-length entries of /65–/127 (in HH) lie inside this /32, /48, /56 or /64 entry.
    pub const ODD_H: u32 = 1 << 23;

    /// The odd lengths that have entries, as bitmaps the walk reads where an entry's
    /// [`ODD_TOP`], [`ODD_MID`] or [`ODD_H`] says one lies inside: from the longest length
    /// set down, it
    /// probes those longer than the entry it found and stops at the first found, the
    /// longest match (odd entries hold the verdict of the longest match down to their
    /// length too). Bitmaps, so that the agent adds or removes a length with one store the
    /// program sees whole; a list rewritten in place could hide a length from a reader.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct OddLengths {
        /// Bit `l - 17` for /17–/23 ([`ODD_TOP_BITS`]) and /33–/39 ([`ODD_MID_BITS`]),
        /// both in HX.
        pub short: u64,
        /// Bit `l - 64` for /65–/127 (a /32's [`ODD_H`]), in HH.
        pub host: u64,
    }

    /// Distinct /65–/127 lengths held at once: each is one more probe (and one more
    /// verified copy of it) for a source in a /32 that holds any. Real lists have none or
    /// one or two (/96, /112); /17–/23 and /33–/39 are seven each, all of which fit.
    pub const ODD_HOST_MAX: u32 = 8;

    /// The /17–/23 bits of [`OddLengths::short`].
    pub const ODD_TOP_BITS: u64 = 0x7f;
    /// The /33–/39 bits of [`OddLengths::short`].
    pub const ODD_MID_BITS: u64 = 0x7f << 16;

    /// Where odd length `len` is in [`OddLengths`]: (true for `host`, its bit).
    pub const fn odd_bit(len: u8) -> Option<(bool, u32)> {
        match len {
            17..=23 | 33..=39 => Some((false, len as u32 - 17)),
            65..=127 => Some((true, len as u32 - 64)),
            _ => None,
        }
    }

    /// A /32 entry that holds the only thing inside it, a /48 with nothing inside, in its
    /// own slot ([`inline_word`]): a listed /48 alone in its /32 costs one probe, not two.
    pub const INLINE: u32 = 1 << 22;

    /// One HX slot. `tag`'s low byte is the prefix length (32, 48, 56, 64), or the whole tag
    /// is [`TAG_EMPTY`] or [`TAG_GONE`]; `key` the address's first 64 bits, masked to that
    /// length. `val` and `tag` share one 64-bit word, written at once after the key; a /32
    /// with an inline /48 keeps the /48 in the rest of that word.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Slot {
        pub key: u64,
        pub val: Entry,
        pub tag: u32,
    }

    impl Slot {
        /// Never used ([`TAG_EMPTY`]): what a table starts as.
        pub const EMPTY: Slot = Slot {
            key: 0,
            val: 0,
            tag: TAG_EMPTY,
        };
    }

    /// The prefix length of a slot's tag.
    #[inline(always)]
    pub const fn tag_len(tag: u32) -> u32 {
        tag & 0xff
    }

    /// The `val | tag << 32` word of a /32 slot (entry `e`, no flags: nothing else lies
    /// inside) holding its /48 inline: that /48's bits 32–47 (`key16`) in tag bits 16–31,
    /// its verdict's low byte in tag bits 8–15 and high byte in val bits 24–31. One word,
    /// so a reader sees the /48 whole or not at all.
    pub const fn inline_word(e: u32, key16: u16, child: u16) -> u64 {
        let tag = 32 | (key16 as u64) << 16 | ((child & 0xff) as u64) << 8;
        let val = (e & 0xffff) | INLINE | ((child >> 8) as u32) << 24;
        tag << 32 | val as u64
    }

    /// The inline /48 of a /32 slot's word: its bits 32–47 and its verdict.
    #[inline(always)]
    pub const fn inline_child(word: u64) -> (u16, u16) {
        let key = (word >> 48) as u16;
        let verdict = ((word >> 40) & 0xff) as u16 | (((word >> 24) & 0xff) as u16) << 8;
        (key, verdict)
    }

    /// Never used: a lookup stops at the first one.
    pub const TAG_EMPTY: u32 = 0;
    /// Deleted: a lookup goes on past it. Reused only after a grace period.
    pub const TAG_GONE: u32 = u32::MAX;

    /// Slots per bucket: 4 × 16 bytes, one cache line.
    pub const BUCKET_SLOTS: usize = 4;
    pub type Bucket = [Slot; BUCKET_SLOTS];

    /// log2 of the HX buckets for `entries` entries: half the slots free at most.
    pub const fn hx_bits(entries: u32) -> u32 {
        let slots = (entries as u64).saturating_mul(2);
        let buckets = slots / BUCKET_SLOTS as u64;
        let mut bits = 8;
        while (1u64 << bits) < buckets && bits < 30 {
            bits += 1;
        }
        bits
    }

    /// The hash of an HX key: multiply-shift (Dietzfelbinger); the bucket is its top bits.
    #[inline(always)]
    pub const fn hx_bucket(key: u64, tag: u32, bits: u32) -> u32 {
        (hx_hash(key, tag) >> (64 - bits)) as u32
    }

    /// The full 64-bit hash behind [`hx_bucket`].
    #[inline(always)]
    pub const fn hx_hash(key: u64, tag: u32) -> u64 {
        (key ^ tag as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// One HH slot: a /128 (`hi`, `lo`: the address's halves) and its entry. `val` and `tag`
    /// share one 64-bit word as in [`Slot`], written after the address; `tag` is 128, the
    /// length of an odd /65–/127 entry (`lo` masked to it), or [`TAG_EMPTY`] or
    /// [`TAG_GONE`]. It replaced a kernel hash map, whose lookup (a helper
    /// call, jhash, a bucket, then an element) cost a /128 source one more cache miss cold
    /// than any other length.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct HostSlot {
        pub hi: u64,
        pub lo: u64,
        pub val: Entry,
        pub tag: u32,
        pub _pad: u64,
    }

    impl HostSlot {
        /// Never used ([`TAG_EMPTY`]): what a table starts as.
        pub const EMPTY: HostSlot = HostSlot {
            hi: 0,
            lo: 0,
            val: 0,
            tag: TAG_EMPTY,
            _pad: 0,
        };
    }

    /// HH slots per bucket: 2 × 32 bytes, one cache line.
    pub const HOST_SLOTS: usize = 2;
    pub type HostBucket = [HostSlot; HOST_SLOTS];
    /// The tag of a used HH slot.
    pub const TAG_HOST: u32 = 128;

    /// log2 of the HH buckets for `entries` /128s: as many buckets as entries, so half the
    /// slots free at most (64 bytes of kernel memory per /128 of capacity).
    pub const fn hh_bits(entries: u32) -> u32 {
        let mut bits = 8;
        while (1u64 << bits) < entries as u64 && bits < 30 {
            bits += 1;
        }
        bits
    }

    /// The HH bucket of address `hi`, `lo`: multiply-shift of both halves folded (the
    /// rotation keeps `hi == lo` from cancelling).
    #[inline(always)]
    pub const fn hh_bucket(hi: u64, lo: u64, bits: u32) -> u32 {
        (hh_hash(hi, lo) >> (64 - bits)) as u32
    }

    /// The full 64-bit hash behind [`hh_bucket`].
    #[inline(always)]
    pub const fn hh_hash(hi: u64, lo: u64) -> u64 {
        (hi.rotate_left(29) ^ lo).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// Address key of the dynamic, rate-limit and first-seen maps: IPv6, or IPv4-mapped
/// (`::ffff:a.b.c.d`); IPv6 sources masked to /64 unless `FLAG_V6_FULL`.
pub type AddrKey = [u8; 16];

/// Builds the key for an IPv4 address (network byte order octets).
pub const fn v4_key(a: [u8; 4]) -> AddrKey {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Verdicts learned at run time, each with its own expiry checked in the kernel.
pub mod dynamic {
    /// LruHash<AddrKey, DynVerdict>.
    pub const MAP: &str = "PF_DYNAMIC";
    /// Default capacity.
    pub const DEFAULT_ENTRIES: u32 = 1 << 18;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DynVerdict {
        /// CLOCK_BOOTTIME in ns (bpf_ktime_get_boot_ns) after which it no longer applies;
        /// 0 = never expires.
        pub expires_ns: u64,
        /// One of [`crate::action`].
        pub action: u8,
        pub _pad: u8,
        /// Source id for counters and events.
        pub list_id: u16,
        pub _pad2: u32,
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), integers with explicit padding fields.
    unsafe impl aya::Pod for DynVerdict {}
}

/// Per-source SYN token buckets.
pub mod ratelimit {
    /// LruHash<AddrKey, Bucket>.
    pub const MAP: &str = "PF_RATELIMIT";
    /// Default capacity.
    pub const DEFAULT_ENTRIES: u32 = 1 << 17;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Bucket {
        /// Credit in ns, at most `rl_cap_ns`.
        pub credit_ns: u64,
        /// Last refill, bpf_ktime_get_boot_ns.
        pub last_ns: u64,
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), two u64.
    unsafe impl aya::Pod for Bucket {}
}

/// Per-CPU counters.
pub mod counters {
    /// PerCpuArray of one [`Stats`] per CPU: the counter slots, the lists' hits and the
    /// CPU's event budget in one value, so that a judged SYN costs one lookup for all it
    /// counts and samples.
    pub const MAP: &str = "PF_COUNTERS";
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: u32 = (super::reason::COUNT * super::action::COUNT) as u32;
    /// Events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = EVENTS_SENT + 1;
    /// Number of slots.
    pub const SLOTS: u32 = EVENTS_LOST + 1;

    /// One CPU's counters, list hits and event budget; the program's to update, the agent
    /// sums the slots over CPUs. 32 KiB, the most a per-CPU value may hold.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Stats {
        /// SYNs judged by a block entry, by list id. First: the verifier bounds an index
        /// by the list id's 12 bits (up to 4095 slots of 8 bytes), which must stay within
        /// the value.
        pub hits: [u64; LIST_SLOTS as usize],
        /// `reason * action::COUNT + action` ([`slot`]), then the event slots.
        pub n: [u64; SLOTS as usize],
        pub budget: super::events::Budget,
    }

    impl Default for Stats {
        fn default() -> Self {
            Stats {
                hits: [0; LIST_SLOTS as usize],
                n: [0; SLOTS as usize],
                budget: Default::default(),
            }
        }
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), u64 hits and slots and a Budget (8 + 4 + 4), no implicit padding.
    unsafe impl aya::Pod for Stats {}

    /// Slot of a (reason, action) pair.
    pub const fn slot(reason: u8, action: u8) -> u32 {
        reason as u32 * super::action::COUNT as u32 + action as u32
    }

    /// List hit slots, one per list id (0 unused): what is left of a per-CPU value's
    /// 32 KiB after the counter slots and the budget.
    pub const LIST_SLOTS: u32 = (32768 - SLOTS * 8 - 16) / 8;
}

/// Ring buffer of verdict and first-seen events.
pub mod events {
    /// RingBuf of [`Event`].
    pub const MAP: &str = "PF_EVENTS";
    /// Ring size: 8192 events. A full ring drops events (counted), never packets.
    pub const BYTES: u32 = 1 << 18;
    /// LruHash<AddrKey, u64>: addresses already reported as first seen.
    pub const SEEN: &str = "PF_SEEN";
    /// Capacity of the first-seen dedup table.
    pub const SEEN_ENTRIES: u32 = 1 << 16;
    /// Events are submitted without waking the reader (it polls on a short timer); past
    /// this many bytes waiting in the ring the program forces a wake-up.
    pub const WAKE_BYTES: u64 = (BYTES / 2) as u64;
    /// Events per second per CPU when the config does not say.
    pub const DEFAULT_PER_SEC: u32 = 100;

    /// After the budget refused an event, this many more candidates are refused without
    /// reading the clock: under a flood the clock is read once per this many packets, and
    /// the budget is found refilled at most this many packets late.
    pub const SKIP_AFTER_REFUSAL: u32 = 63;

    /// Per-CPU event budget as a virtual scheduling clock (GCRA, the token bucket's
    /// equivalent): an event is allowed while `tat_ns` is at most `now + cap - cost`, and
    /// moves it by `cost`. Held in each CPU's [`crate::counters::Stats`].
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Budget {
        /// Theoretical arrival time of the next event, bpf_ktime_get_coarse_ns.
        pub tat_ns: u64,
        /// Candidates still to refuse without reading the clock.
        pub skip: u32,
        pub _pad: u32,
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), 8 + 4 + 4 bytes, no implicit padding.
    unsafe impl aya::Pod for Budget {}

    /// A sampled verdict on a judged SYN.
    pub const KIND_VERDICT: u8 = 1;
    /// First contact (the client's ACK of a handshake) from an address without any verdict.
    pub const KIND_FIRST_SEEN: u8 = 2;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Event {
        /// bpf_ktime_get_boot_ns.
        pub ts_ns: u64,
        /// Source address; IPv4 as `::ffff:a.b.c.d`.
        pub addr: [u8; 16],
        /// `KIND_*`.
        pub kind: u8,
        /// [`crate::action`].
        pub action: u8,
        /// [`crate::reason`].
        pub reason: u8,
        /// 4 or 6.
        pub family: u8,
        /// List or source id of the matching entry, 0 if none.
        pub list_id: u16,
        /// Destination port, host order.
        pub dport: u16,
    }

    #[cfg(feature = "user")]
    // SAFETY: repr(C), 8 + 16 + 8 bytes, no implicit padding.
    unsafe impl aya::Pod for Event {}
}

/// Log level global of aya-log-ebpf; the agent patches it before load (0 = off), and the
/// verifier then removes every disabled log site from the per-packet path.
pub const LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

#[cfg(test)]
mod tests {
    extern crate std;
    use super::config::Settings;
    use std::vec::Vec;

    #[test]
    fn a_shape_finds_the_bucket_the_agent_filled() {
        use crate::v6::{Shape, hh_bucket, hh_hash, hx_bucket, hx_hash};
        // The program takes a bucket through the precomputed shape, the agent through the
        // bits: every size the limits allow must agree, or a listed prefix is never found.
        for bits in 8..=30 {
            let shape = Shape::of(bits);
            for k in [0u64, 1, 0x2001_0db8_0bad_0000, u64::MAX] {
                let x = (hx_hash(k, 48) >> shape.shift) as u32;
                assert_eq!(x, hx_bucket(k, 48, bits));
                assert_eq!(x & shape.mask, x, "bits {bits}");
                let h = (hh_hash(k, !k) >> shape.shift) as u32;
                assert_eq!(h, hh_bucket(k, !k, bits));
            }
        }
    }

    #[test]
    fn judged_ports_are_exactly_the_ones_set() {
        let mut s = Settings::INITIAL;
        assert!(
            (0..=u16::MAX).all(|p| !s.judged(p)),
            "a fresh program judges nothing"
        );
        s.set_ports(&[0, 25, 63, 64, 587, 65535]);
        let judged: Vec<u16> = (0..=u16::MAX).filter(|&p| s.judged(p)).collect();
        assert_eq!(judged, [0, 25, 63, 64, 587, 65535]);
        s.set_ports(&[465]);
        let judged: Vec<u16> = (0..=u16::MAX).filter(|&p| s.judged(p)).collect();
        assert_eq!(judged, [465], "setting ports replaces the old ones");
    }
}
