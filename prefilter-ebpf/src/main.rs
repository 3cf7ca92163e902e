//! The XDP program: judges TCP SYNs to the SMTP ports from the maps the agent fills.
//!
//! Fail open: a frame we cannot fully parse is counted and passed, never judged.
#![no_std]
#![no_main]
// BPF inline assembly: one load for a multi-byte header field (see `frame_word`).
#![feature(asm_experimental_arch)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns, bpf_xdp_adjust_tail},
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use prefilter_common::{
    AddrKey, action,
    config::{self, Config, Settings},
    counters::{self, Stats},
    dynamic::{self, DynVerdict},
    events::{self, Budget, Event},
    ratelimit::{self, Bucket},
    reason, v4, v6, verdict,
};

/// BPF_F_MMAPABLE: the agent writes the v4 tables through mmap, not a syscall per entry.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The agent's record of the settings (see [`config::MAP`]); never read here.
#[map(name = "PF_CONFIG")]
static PF_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// The settings and judged ports, written by the agent (the `.data` map).
#[unsafe(no_mangle)]
static mut PF_SETTINGS: Settings = Settings::INITIAL;
/// The /24 table: global data of its own (a `.bss.NAME` section is the map NAME, created
/// mmapable: vendor/README.md), read with a plain load from a fixed address. A map lookup
/// passes its key through the stack, and LLVM, seeing a call, spills the values live
/// across it.
#[unsafe(link_section = ".bss.PF_V4_TBL24")]
#[unsafe(no_mangle)]
static mut PF_V4_TBL24: [v4::Chunk24; v4::TBL24_CHUNKS as usize] =
    [[0; 256]; v4::TBL24_CHUNKS as usize];
#[map(name = "PF_V4_GROUPS")]
static PF_V4_GROUPS: Array<v4::Group> =
    Array::with_max_entries(v4::group_slots(v4::DEFAULT_GROUPS), BPF_F_MMAPABLE);
#[map(name = "PF_V4_RUNS")]
static PF_V4_RUNS: Array<v4::Runs> =
    Array::with_max_entries(v4::runs_entries(v4::DEFAULT_GROUPS), BPF_F_MMAPABLE);
/// The IPv6 /16 entries: global data of its own, as [`PF_V4_TBL24`].
#[unsafe(link_section = ".bss.PF_V6_TOP")]
#[unsafe(no_mangle)]
static mut PF_V6_TOP: [v6::Entry; v6::TOP_ENTRIES as usize] = [0; v6::TOP_ENTRIES as usize];
/// HX, global data of its own: declared as large as `v6::MAX_ENTRIES` makes it, created
/// as large as `[limits] v6_entries` asks (the agent sets the map's size, in bytes,
/// through aya's max-entries override: vendor/README.md); every index is masked with
/// the mask of [`PF_V6_HX_SHAPE`], which the verifier reads as the constant the agent froze.
#[unsafe(link_section = ".bss.PF_V6_HX")]
#[unsafe(no_mangle)]
static mut PF_V6_HX: [v6::Bucket; 1 << v6::hx_bits(v6::MAX_ENTRIES)] =
    [[v6::Slot::EMPTY; v6::BUCKET_SLOTS]; 1 << v6::hx_bits(v6::MAX_ENTRIES)];
/// HH, as [`PF_V6_HX`].
#[unsafe(link_section = ".bss.PF_V6_HH")]
#[unsafe(no_mangle)]
static mut PF_V6_HH: [v6::HostBucket; 1 << v6::hh_bits(v6::MAX_ENTRIES)] =
    [[v6::HostSlot::EMPTY; v6::HOST_SLOTS]; 1 << v6::hh_bits(v6::MAX_ENTRIES)];
/// The odd lengths in use, global data of its own as [`PF_V6_TOP`]: the agent rewrites
/// it as lengths come and go.
#[unsafe(link_section = ".bss.PF_V6_ODD")]
#[unsafe(no_mangle)]
static mut PF_V6_ODD: v6::OddLengths = v6::OddLengths { short: 0, host: 0 };
#[map(name = "PF_DYNAMIC")]
static PF_DYNAMIC: LruHashMap<AddrKey, DynVerdict> =
    LruHashMap::with_max_entries(dynamic::DEFAULT_ENTRIES, 0);
#[map(name = "PF_RATELIMIT")]
static PF_RATELIMIT: LruHashMap<AddrKey, Bucket> =
    LruHashMap::with_max_entries(ratelimit::DEFAULT_ENTRIES, 0);
#[map(name = "PF_COUNTERS")]
static PF_COUNTERS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "PF_EVENTS")]
static PF_EVENTS: RingBuf = RingBuf::with_byte_size(events::BYTES, 0);
#[map(name = "PF_SEEN")]
static PF_SEEN: LruHashMap<AddrKey, u64> = LruHashMap::with_max_entries(events::SEEN_ENTRIES, 0);

/// bpf_ringbuf_submit flags and bpf_ringbuf_query's "bytes waiting" (uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
/// IPv6 extension headers we walk; more than this many is "could not parse" (fail open).
const MAX_EXT_HEADERS: usize = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// What was wrong with a malformed frame, for the debug log. A code, not a `&str`, inside
/// `Skip`: LLVM stores a string pointer inside the packed result byte-wise (shifts), which
/// the verifier refuses as pointer arithmetic.
#[derive(Clone, Copy)]
enum Why {
    Truncated,
    VlanTags,
    V4Version,
    V4HeaderLength,
    V4TotalLength,
    V6Version,
    V6PayloadLength,
    V6ExtLength,
    V6FragLength,
    TcpTruncated,
    TcpDataOffset,
}

impl Why {
    #[inline(always)]
    fn text(self) -> &'static str {
        match self {
            Why::Truncated => "truncated",
            Why::VlanTags => "more than two VLAN tags",
            Why::V4Version => "IPv4 version",
            Why::V4HeaderLength => "IPv4 header length",
            Why::V4TotalLength => "IPv4 total length",
            Why::V6Version => "IPv6 version",
            Why::V6PayloadLength => "IPv6 payload length",
            Why::V6ExtLength => "IPv6 extension header length",
            Why::V6FragLength => "IPv6 fragment header length",
            Why::TcpTruncated => "TCP header truncated",
            Why::TcpDataOffset => "TCP data offset",
        }
    }
}

/// An address as two big-endian 64-bit halves (IPv4 as `::ffff:a.b.c.d`, the AddrKey form):
/// it travels in two registers. Sixteen bytes got spilled to the stack byte by byte at each
/// move, which cost more than the lookup itself.
#[derive(Clone, Copy)]
struct Addr {
    hi: u64,
    lo: u64,
}

impl Addr {
    #[inline(always)]
    fn v4(a: u32) -> Addr {
        Addr {
            hi: 0,
            lo: 0xffff_0000_0000 | a as u64,
        }
    }

    /// The IPv4 address, host order.
    #[inline(always)]
    fn v4_addr(self) -> u32 {
        self.lo as u32
    }

    /// The map key form, 8-byte aligned so that it is written with two stores.
    #[inline(always)]
    fn key(self) -> Key16 {
        Key16([self.hi.to_be(), self.lo.to_be()])
    }
}

/// An [`AddrKey`] in 8-byte aligned storage.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Key16([u64; 2]);

impl Key16 {
    #[inline(always)]
    fn get(&self) -> &AddrKey {
        // SAFETY: 16 bytes of plain data, more strictly aligned than AddrKey.
        unsafe { &*(self as *const Key16 as *const AddrKey) }
    }
}

/// Why a frame is not judged.
#[derive(Clone, Copy)]
enum Skip {
    NotJudged,
    Malformed(Why),
    /// Cannot be parsed to the TCP flags, yet the kernel would accept it: a tiny first
    /// fragment (RFC 1858) or an IPv6 header chain longer than we walk. Judged by source
    /// alone, so a blocked sender cannot slip a SYN through this way.
    SourceOnly {
        v6: bool,
        saddr: Addr,
    },
    /// A pure ACK to a judged port while first-seen events are on: not judged, but maybe the
    /// first contact of a completed handshake. `dport` in host order.
    Ack {
        v6: bool,
        saddr: Addr,
        dport: u16,
    },
}

/// A SYN to a judged port, with what a reset needs.
struct Syn {
    v6: bool,
    /// Offset of the L3 header (after Ethernet and VLAN tags).
    l3: usize,
    saddr: Addr,
    daddr: Addr,
    /// Network byte order, as on the wire.
    sport: u16,
    dport: u16,
    /// Host order.
    seq: u32,
    /// Sequence space the SYN occupies: SYN + FIN flags + payload (RFC 9293 3.10.7.1).
    seg_len: u32,
}

/// The frame's `$t` at `p + OFF`, read big-endian with one BPF load.
///
/// Why assembly: these fields are not aligned to their size in Rust's terms (the IPv6
/// source is at offset 22 of the frame), so a plain read would be undefined behaviour and
/// `read_unaligned` is lowered to a load per byte, since LLVM's BPF backend has no
/// misaligned-access mode: 16 loads and 30 shifts for an IPv6 source, 3-7 ns per IPv6 SYN.
/// The BPF load itself is fine: the verifier accepts it where the CPU does unaligned access
/// and, elsewhere, checks alignment assuming the frame starts at `NET_IP_ALIGN`, which
/// makes these offsets aligned.
macro_rules! frame_word {
    ($name:ident, $t:ty, $size:literal) => {
        /// # Safety
        /// `p + OFF .. p + OFF + size` must lie within the frame (checked against data_end).
        #[inline(always)]
        unsafe fn $name<const OFF: usize>(p: *const u8) -> $t {
            let v: u64;
            // SAFETY: the caller checked the bounds; the asm only reads those bytes.
            unsafe {
                core::arch::asm!(
                    concat!("{v} = *(", $size, " *)({p} + {off})"),
                    v = out(reg) v,
                    p = in(reg) p,
                    off = const OFF,
                    options(readonly, nostack, preserves_flags),
                );
            }
            <$t>::from_be(v as $t)
        }
    };
}
frame_word!(frame_u16, u16, "u16");
frame_word!(frame_u32, u32, "u32");
frame_word!(frame_u64, u64, "u64");

#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, Skip> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return Err(Skip::Malformed(Why::Truncated));
    }
    // SAFETY: bounds checked against data_end just above.
    Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

#[inline(always)]
fn be16(ctx: &XdpContext, off: usize) -> Result<u16, Skip> {
    load::<u16>(ctx, off).map(u16::from_be)
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Syn, Skip> {
    let mut proto = be16(ctx, 12)?;
    let mut l3 = ETH_HLEN;
    // Up to two tags: 802.1Q, or 802.1ad outer + 802.1Q inner (QinQ).
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(ctx, l3 + 2)?;
        l3 += 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = be16(ctx, l3 + 2)?;
            l3 += 4;
            if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
                return Err(Skip::Malformed(Why::VlanTags));
            }
        }
    }
    match proto {
        ETH_P_IP => parse_v4(ctx, l3),
        ETH_P_IPV6 => parse_v6(ctx, l3),
        _ => Err(Skip::NotJudged),
    }
}

/// Frame length, opaque to LLVM: otherwise it derives packet bounds from length checks and
/// drops the pointer checks the verifier needs before each load. A register move in asm,
/// not `black_box`, which passes the value through the stack (a store and a load per
/// frame); not an empty template either, whose line record the kernel refuses (two at one
/// instruction).
#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    let mut n = ctx.data_end() - ctx.data();
    // SAFETY: a move of the register to itself; it only hides the value from LLVM.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) n, options(pure, nomem, nostack)) };
    n
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize) -> Result<Syn, Skip> {
    // One bounds check for the whole base header: separate small checks get merged by
    // LLVM in ways the verifier cannot follow.
    let h: [u8; 20] = load(ctx, l3)?;
    if h[0] >> 4 != 4 {
        return Err(Skip::Malformed(Why::V4Version));
    }
    let ihl = ((h[0] & 0x0f) as usize) << 2;
    if ihl < 20 {
        return Err(Skip::Malformed(Why::V4HeaderLength));
    }
    let total = u16::from_be_bytes([h[2], h[3]]) as usize;
    if total < ihl || l3 + total > frame_len(ctx) {
        return Err(Skip::Malformed(Why::V4TotalLength));
    }
    // Non-first fragments carry no TCP header: nothing to judge.
    let frag = u16::from_be_bytes([h[6], h[7]]);
    if frag & 0x1fff != 0 || h[9] != IPPROTO_TCP {
        return Err(Skip::NotJudged);
    }
    let saddr = Addr::v4(u32::from_be_bytes([h[12], h[13], h[14], h[15]]));
    let mut syn = match parse_tcp(ctx, l3 + ihl, l3 + total) {
        // More fragments follow: the kernel would reassemble what we could not read.
        Err(Skip::Malformed(_)) if frag & 0x2000 != 0 => {
            return Err(Skip::SourceOnly { v6: false, saddr });
        }
        Err(Skip::Ack { dport, .. }) => {
            return Err(Skip::Ack {
                v6: false,
                saddr,
                dport,
            });
        }
        r => r?,
    };
    syn.l3 = l3;
    syn.saddr = saddr;
    syn.daddr = Addr::v4(u32::from_be_bytes([h[16], h[17], h[18], h[19]]));
    Ok(syn)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize) -> Result<Syn, Skip> {
    let h: [u8; 40] = load(ctx, l3)?;
    if h[0] >> 4 != 6 {
        return Err(Skip::Malformed(Why::V6Version));
    }
    let end = l3 + 40 + u16::from_be_bytes([h[4], h[5]]) as usize;
    if end > frame_len(ctx) {
        return Err(Skip::Malformed(Why::V6PayloadLength));
    }
    let mut nh = h[6];
    let half = |i: usize| {
        u64::from_be_bytes([
            h[i],
            h[i + 1],
            h[i + 2],
            h[i + 3],
            h[i + 4],
            h[i + 5],
            h[i + 6],
            h[i + 7],
        ])
    };
    let saddr = Addr {
        hi: half(8),
        lo: half(16),
    };
    let daddr = Addr {
        hi: half(24),
        lo: half(32),
    };
    let mut off = l3 + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match nh {
            IPPROTO_TCP => {
                let mut syn = match parse_tcp(ctx, off, end) {
                    Err(Skip::Ack { dport, .. }) => {
                        return Err(Skip::Ack {
                            v6: true,
                            saddr,
                            dport,
                        });
                    }
                    r => r?,
                };
                syn.v6 = true;
                syn.l3 = l3;
                syn.saddr = saddr;
                syn.daddr = daddr;
                return Ok(syn);
            }
            // Hop-by-hop, routing, destination options: length in 8-octet units after the first 8.
            0 | 43 | 60 => {
                let hdr: [u8; 2] = load(ctx, off)?;
                let len = (hdr[1] as usize + 1) << 3;
                if off + len > end {
                    return Err(Skip::Malformed(Why::V6ExtLength));
                }
                nh = hdr[0];
                off += len;
            }
            44 => {
                if off + 8 > end {
                    return Err(Skip::Malformed(Why::V6FragLength));
                }
                let start = ctx.data();
                if start + off + 4 > ctx.data_end() {
                    return Err(Skip::Malformed(Why::Truncated));
                }
                // Both read through the one pointer just checked, the offset with one load
                // (`frame_u16`): a 4-byte array read let LLVM rebuild its bytes from the
                // frame pointer on the failing branch, or load a byte through another
                // register than the checked one, which the verifier refuses.
                let h = (start + off) as *const u8;
                // SAFETY: within the 4 bytes checked just above.
                let (next, frag) = unsafe { (core::ptr::read_volatile(h), frame_u16::<2>(h)) };
                if frag & 0xfff8 != 0 {
                    return Err(Skip::NotJudged);
                }
                nh = next;
                off += 8;
            }
            _ => return Err(Skip::NotJudged),
        }
    }
    // Too many extension headers to walk.
    Err(Skip::SourceOnly { v6: true, saddr })
}

#[inline(always)]
fn parse_tcp(ctx: &XdpContext, l4: usize, end: usize) -> Result<Syn, Skip> {
    if l4 + 20 > end {
        return Err(Skip::Malformed(Why::TcpTruncated));
    }
    let h: [u8; 20] = load(ctx, l4)?;
    let flags = h[13];
    // SYN|FIN and SYN|RST are invalid; a listener drops them (and a RST is never answered).
    let dport = u16::from_be_bytes([h[2], h[3]]);
    if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) != TCP_SYN {
        if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_ACK
            && settings().config.flags & config::FLAG_FIRST_SEEN != 0
            && settings().judged(dport)
        {
            return Err(Skip::Ack {
                v6: false,
                saddr: Addr { hi: 0, lo: 0 },
                dport,
            });
        }
        return Err(Skip::NotJudged);
    }
    if !settings().judged(dport) {
        return Err(Skip::NotJudged);
    }
    let doff = ((h[12] >> 4) as usize) << 2;
    if doff < 20 || l4 + doff > end {
        return Err(Skip::Malformed(Why::TcpDataOffset));
    }
    let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let seg_len = (end - l4 - doff) as u32 + 1 + (flags & TCP_FIN) as u32;
    Ok(Syn {
        v6: false,
        l3: 0,
        saddr: Addr { hi: 0, lo: 0 },
        daddr: Addr { hi: 0, lo: 0 },
        sport: u16::from_ne_bytes([h[0], h[1]]),
        dport: u16::from_ne_bytes([h[2], h[3]]),
        seq,
        seg_len,
    })
}

/// The outcome of one frame: what to count and what to do.
struct Outcome {
    reason: u8,
    action: u8,
    list_id: u16,
}

/// The settings the agent wrote.
#[inline(always)]
fn settings() -> &'static Settings {
    // SAFETY: plain data the program only reads; the agent rewrites it whole through the
    // map, so a frame judged during a write may see some old and some new fields.
    unsafe { &*core::ptr::addr_of!(PF_SETTINGS) }
}

/// This CPU's counters and event budget.
#[inline(always)]
fn stats() -> Option<&'static mut Stats> {
    // SAFETY: this CPU's copy; only this CPU writes it, and an XDP program runs to
    // completion without preemption by itself.
    PF_COUNTERS.get_ptr_mut(0).map(|c| unsafe { &mut *c })
}

#[xdp]
// Inlined into the section's entry point: a BPF-to-BPF call per packet costs a frame setup.
#[inline(always)]
pub fn prefilter_v8(ctx: XdpContext) -> u32 {
    let out = match fast(&ctx) {
        Fast::Done(xdp) => return xdp,
        Fast::Judged(out) => out,
        Fast::Other => general(&ctx),
    };
    // The common exit: every verdict judge_fast did not finish is counted here.
    count(out.reason, out.action, out.list_id);
    match out.action {
        action::DROP => xdp_action::XDP_DROP,
        action::RESET => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}

/// What the fast path made of a frame.
enum Fast {
    /// Judged, counted and reported: the XDP action.
    Done(u32),
    /// Judged: the outcome to count and act on.
    Judged(Outcome),
    /// Not a frame it takes: the general parser's.
    Other,
}

/// Bumps the per-CPU counter of `reason` and `action`, and for a block the list's.
#[inline(always)]
fn count(reason: u8, action: u8, list_id: u16) {
    if let Some(st) = stats() {
        count_in(st, reason, action, list_id);
    }
}

/// [`count`] with this CPU's stats at hand.
#[inline(always)]
fn count_in(st: &mut Stats, reason: u8, action: u8, list_id: u16) {
    // An XDP program runs to completion on one CPU: no atomics.
    if let Some(c) = st.n.get_mut(counters::slot(reason, action) as usize) {
        *c += 1;
    }
    if reason == reason::BLOCK
        && let Some(c) = st.hits.get_mut(list_id as usize)
    {
        *c += 1;
    }
}

/// A SYN to a judged port, from the fast path: the config and the table read once. When
/// neither rate limiting nor dynamic verdicts are in play and the table says allow, drop or
/// nothing, it is judged, counted and reported to the end here, on a path of its own:
/// merged into the common exit, the outcome's three fields were kept on the stack across
/// every lookup after the table's. Anything else (a reset, a rate limit, dynamic verdicts)
/// goes to [`verdict_of`] and the common exit.
#[inline(always)]
fn judge_fast(ctx: &XdpContext, v6: bool, saddr: Addr, dport: u16) -> Fast {
    let cfg = &settings().config;
    let table = table_lookup(v6, saddr);
    if settings().slow == 0 {
        match verdict::action(table) {
            action::NONE => {
                count(reason::NO_MATCH, action::PASS, 0);
                return Fast::Done(xdp_action::XDP_PASS);
            }
            action::ALLOW => {
                count(reason::ALLOW, action::PASS, 0);
                return Fast::Done(xdp_action::XDP_PASS);
            }
            action::DROP => {
                let list_id = verdict::list_id(table);
                let Some(st) = stats() else {
                    return Fast::Done(xdp_action::XDP_DROP);
                };
                count_in(st, reason::BLOCK, action::DROP, list_id);
                if event_token(cfg, &mut st.budget) {
                    let out = Outcome {
                        reason: reason::BLOCK,
                        action: action::DROP,
                        list_id,
                    };
                    emit(ctx, events::KIND_VERDICT, v6, saddr, dport, &out);
                }
                return Fast::Done(xdp_action::XDP_DROP);
            }
            _ => {}
        }
    }
    let mut out = verdict_of(ctx, cfg, v6, saddr, dport, table);
    // A reset needs the whole SYN: parsed again, which only refusals by reset pay for.
    if out.action == action::RESET && !parse(ctx).is_ok_and(|syn| send_reset(ctx, &syn).is_ok()) {
        out.action = action::DROP;
    }
    Fast::Judged(out)
}

/// The common frames in one pass: untagged IPv4 without IP options or untagged IPv6 without
/// extension headers, carrying a SYN to a judged port (judged) or any other TCP segment
/// (passed; a pure ACK may be a first contact). None for anything else, which the general
/// parser takes; for the frames it takes, the outcome is the general path's. It
/// exists because the verifier inlines array lookups but LLVM sees each as a call and spills
/// every value live across it: the general parser keeps the whole header live and spent
/// more on spills than on judging.
#[inline(always)]
fn fast(ctx: &XdpContext) -> Fast {
    let start = ctx.data();
    // Ethernet 14 + IPv4 20 + TCP 20: the shortest frame taken.
    if start + ETH_HLEN + 40 > ctx.data_end() {
        return Fast::Other;
    }
    let p = start as *const u8;
    // 16-bit fields with one load each (`frame_u16`): assembled from two byte loads they
    // took five instructions apiece, a quarter of the parse.
    // SAFETY: within the 54 bytes checked above.
    let ethertype = unsafe { frame_u16::<12>(p) };
    if ethertype == ETH_P_IP {
        const L3: usize = ETH_HLEN;
        // SAFETY: within the 54 bytes checked above.
        let (vihl, total, frag, proto) = unsafe {
            (
                *p.add(L3),
                frame_u16::<{ L3 + 2 }>(p) as usize,
                frame_u16::<{ L3 + 6 }>(p) & 0x1fff,
                *p.add(L3 + 9),
            )
        };
        if vihl != 0x45 || frag != 0 || proto != IPPROTO_TCP || L3 + total > frame_len(ctx) {
            return Fast::Other;
        }
        // SAFETY: as above.
        let a = unsafe { frame_u32::<{ L3 + 12 }>(p) };
        fast_tcp::<false>(ctx, L3 + 20, L3 + total, Addr::v4(a))
    } else if ethertype == ETH_P_IPV6 {
        const L3: usize = ETH_HLEN;
        // Ethernet 14 + IPv6 40 + TCP 20.
        if start + L3 + 60 > ctx.data_end() {
            return Fast::Other;
        }
        // SAFETY: within the 74 bytes checked just above.
        let (ver, plen, nh) = unsafe {
            (
                *p.add(L3) >> 4,
                frame_u16::<{ L3 + 4 }>(p) as usize,
                *p.add(L3 + 6),
            )
        };
        if ver != 6 || nh != IPPROTO_TCP || L3 + 40 + plen > frame_len(ctx) {
            return Fast::Other;
        }
        // SAFETY: as above.
        let a = unsafe {
            Addr {
                hi: frame_u64::<{ L3 + 8 }>(p),
                lo: frame_u64::<{ L3 + 16 }>(p),
            }
        };
        fast_tcp::<true>(ctx, L3 + 40, L3 + 40 + plen, a)
    } else {
        Fast::Other
    }
}

/// [`fast`] from the TCP header at `l4` on (`end`: where the IP payload ends), a copy for
/// each family: merged, the family and the IPv6 source's upper half were carried (and
/// spilled to the stack) through the IPv4 path, and each step tested the family again.
#[inline(always)]
fn fast_tcp<const V6: bool>(ctx: &XdpContext, l4: usize, end: usize, saddr: Addr) -> Fast {
    let v6 = V6;
    let start = ctx.data();
    let p = start as *const u8;
    if start + l4 + 20 > ctx.data_end() {
        return Fast::Other;
    }
    // SAFETY: within the 20 bytes of TCP header checked just above.
    let (flags, doff, dport) = unsafe {
        let tcp = p.add(l4);
        (
            *tcp.add(13),
            ((*tcp.add(12) >> 4) as usize) << 2,
            frame_u16::<2>(tcp),
        )
    };
    let masked = flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN);
    if masked != TCP_SYN {
        // ACKs and data segments, most of an MX's frames: finished here with what was read
        // rather than parsed again. A short TCP header goes on to the general parser,
        // which names it.
        if l4 + 20 > end {
            return Fast::Other;
        }
        if masked == TCP_ACK
            && settings().config.flags & config::FLAG_FIRST_SEEN != 0
            && settings().judged(dport)
        {
            first_contact(ctx, v6, saddr, dport);
        }
        return Fast::Judged(Outcome {
            reason: reason::NOT_JUDGED,
            action: action::PASS,
            list_id: 0,
        });
    }
    if doff < 20 || l4 + doff > end {
        return Fast::Other;
    }
    if !settings().judged(dport) {
        // Counted here rather than returned: an outcome returned is set up before the
        // branch, on the judged SYN's path too.
        count(reason::NOT_JUDGED, action::PASS, 0);
        return Fast::Done(xdp_action::XDP_PASS);
    }
    judge_fast(ctx, v6, saddr, dport)
}

/// Every frame the fast path does not take.
#[inline(always)]
fn general(ctx: &XdpContext) -> Outcome {
    match parse(ctx) {
        Ok(syn) => judge(ctx, &syn),
        Err(Skip::NotJudged) => Outcome {
            reason: reason::NOT_JUDGED,
            action: action::PASS,
            list_id: 0,
        },
        Err(Skip::Malformed(why)) => {
            debug!(ctx, "not judged: {}", why.text());
            Outcome {
                reason: reason::MALFORMED,
                action: action::PASS,
                list_id: 0,
            }
        }
        Err(Skip::SourceOnly { v6, saddr }) => {
            debug!(
                ctx,
                "tiny fragment or long IPv6 header chain: judged by source only"
            );
            judge_source(v6, saddr)
        }
        Err(Skip::Ack { v6, saddr, dport }) => {
            first_contact(ctx, v6, saddr, dport);
            Outcome {
                reason: reason::NOT_JUDGED,
                action: action::PASS,
                list_id: 0,
            }
        }
    }
}

#[inline(always)]
fn v4_lookup(a: u32) -> u16 {
    // SAFETY: a >> 8 < 2^24, within the table; the agent writes entries whole (one 64-bit
    // store each); volatile, as the agent writes what the program only reads.
    let e64 = unsafe {
        core::ptr::read_volatile(
            core::ptr::addr_of!(PF_V4_TBL24)
                .cast::<u64>()
                .add((a >> 8) as usize),
        )
    };
    let e = e64 as u32;
    if e & v4::EXT == 0 {
        return e as u16;
    }
    let o = a as u8;
    if e & v4::HOST != 0 {
        // The first host, or a span's first octet.
        if (e >> 16) as u8 == o {
            return e as u16;
        }
        let h = (e64 >> 32) as u32;
        if e & v4::SPAN != 0 {
            let lo = (e >> 16) as u8;
            let hit = (o > lo && o <= h as u8) | (o == (h >> 8) as u8);
            if e & v4::BG != 0 {
                return if hit { e as u16 } else { (h >> 16) as u16 };
            }
            let hit = hit | (o == (h >> 16) as u8) | (o == (h >> 24) as u8);
            return if hit { e as u16 } else { 0 };
        }
        // The second host, or none (all zero: verdict 0).
        return if (h >> 16) as u8 == o { h as u16 } else { 0 };
    }
    let Some(g) = PF_V4_GROUPS.get(e & v4::GROUP_MASK) else {
        return 0;
    };
    // Rank of the run holding octet o: run starts before its word, plus those in its word
    // up to o. LLVM lowers the popcount to shifts and masks (BPF has no instruction for it).
    let w = (o >> 6) as usize;
    let m = (2u64 << (o & 63)).wrapping_sub(1);
    let r = g.rank[w] as u32 + (g.bits[w] & m).count_ones();
    let i = g.base.wrapping_add(r).wrapping_sub(1);
    match PF_V4_RUNS.get(i >> 2) {
        Some(runs) => runs[(i & 3) as usize],
        None => 0,
    }
}

#[inline(always)]
fn judge(ctx: &XdpContext, syn: &Syn) -> Outcome {
    let mut out = verdict_for(ctx, syn.v6, syn.saddr, u16::from_be(syn.dport));
    if out.action == action::RESET && send_reset(ctx, syn).is_err() {
        out.action = action::DROP;
    }
    out
}

/// The verdict for a SYN from `saddr` to `dport` (host order), with its event sample.
#[inline(always)]
fn verdict_for(ctx: &XdpContext, v6: bool, saddr: Addr, dport: u16) -> Outcome {
    let cfg = &settings().config;
    let table = table_lookup(v6, saddr);
    verdict_of(ctx, cfg, v6, saddr, dport, table)
}

/// [`verdict_for`] with this CPU's config and the source's table verdict already read.
#[inline(always)]
fn verdict_of(
    ctx: &XdpContext,
    cfg: &Config,
    v6: bool,
    saddr: Addr,
    dport: u16,
    table: u16,
) -> Outcome {
    let out = if verdict::action(table) == action::ALLOW {
        Outcome {
            reason: reason::ALLOW,
            action: action::PASS,
            list_id: verdict::list_id(table),
        }
    } else {
        decide(cfg, v6, saddr, table, true)
    };
    // Verdict samples within the per-CPU time budget; a clean SYN (no match) is not
    // reported: first contact is the client's ACK.
    if out.reason != reason::NO_MATCH
        && out.reason != reason::ALLOW
        && stats().is_some_and(|st| event_token(cfg, &mut st.budget))
    {
        emit(ctx, events::KIND_VERDICT, v6, saddr, dport, &out);
    }
    out
}

#[inline(always)]
fn table_lookup(v6: bool, saddr: Addr) -> u16 {
    if v6 {
        v6_lookup(saddr)
    } else {
        v4_lookup(saddr.v4_addr())
    }
}

/// PF_V6_HX's shape; the agent sets it with the map's size before loading.
#[unsafe(no_mangle)]
static PF_V6_HX_SHAPE: v6::Shape = v6::Shape::of(v6::hx_bits(v6::DEFAULT_ENTRIES));

/// PF_V6_HH's shape; the agent sets it with the map's size before loading.
#[unsafe(no_mangle)]
static PF_V6_HH_SHAPE: v6::Shape = v6::Shape::of(v6::hh_bits(v6::DEFAULT_ENTRIES));

/// The top bits of `hash` that [`v6::Shape`] `shape` says are a bucket index.
#[inline(always)]
fn top_bits(hash: u64, shape: v6::Shape) -> u64 {
    // SAFETY: the shift is 64 - bits, and bits is 8 to 30 (`hx_bits`, `hh_bits`): below 64,
    // so the shift needs no masking (Rust's `>>` would add an instruction for it).
    unsafe { hash.unchecked_shr(shape.shift) }
}

/// HH's shape, read once per lookup.
#[inline(always)]
fn hh_shape() -> v6::Shape {
    // SAFETY: a global the loader froze; volatile so it is read, not folded.
    unsafe { core::ptr::read_volatile(&PF_V6_HH_SHAPE) }
}

/// Looks for `hi`, `lo` with tag `tag` in HH bucket `i` (masked by the caller).
#[inline(always)]
fn hh_probe(hi: u64, lo: u64, tag: u32, i: u64) -> Probe {
    // SAFETY: within the map, as the caller masks `i` to the buckets it holds.
    let b = unsafe {
        core::ptr::addr_of!(PF_V6_HH)
            .cast::<v6::HostBucket>()
            .add(i as usize)
    };
    for i in 0..v6::HOST_SLOTS {
        // SAFETY: a valid value pointer of the array. The tag (with the value) is read
        // before the address: the agent writes the address first.
        let (word, h, l) = unsafe {
            let s = (b as *const v6::HostSlot).add(i) as *const u64;
            let w = core::ptr::read_volatile(s.add(2));
            (
                w,
                core::ptr::read_volatile(s),
                core::ptr::read_volatile(s.add(1)),
            )
        };
        let t = (word >> 32) as u32;
        if t == tag && h == hi && l == lo {
            return Probe::Found(word);
        }
        if t == v6::TAG_EMPTY {
            return Probe::Absent;
        }
    }
    Probe::Full
}

/// The entry of /128 `hi`, `lo` in HH, if any: as [`hx_find`], two slots a bucket,
/// buckets past the home one in a function of their own ([`hh_find_past`]).
#[inline(always)]
fn hh_find(hi: u64, lo: u64) -> Option<u32> {
    let shape = hh_shape();
    let mask = shape.mask as u64;
    let home = top_bits(v6::hh_hash(hi, lo), shape);
    match hh_probe(hi, lo, v6::TAG_HOST, home & mask) {
        Probe::Found(w) => Some(w as u32),
        Probe::Absent => None,
        Probe::Full => match hh_find_past(hi, lo, home, mask) {
            0 => None,
            w => Some(w as u32),
        },
    }
}

/// [`hh_find`] past the home bucket: the slot word, or 0 (never a used slot's: its tag is
/// not zero).
#[inline(never)]
fn hh_find_past(hi: u64, lo: u64, home: u64, mask: u64) -> u64 {
    probe_seq(home, mask, 1..v6::MAX_PROBE, |i| {
        hh_probe(hi, lo, v6::TAG_HOST, i)
    })
    .unwrap_or(0)
}

/// An odd /65–/127 entry (`lo` masked to its length `tag`) in HH: over
/// [`v6::ODD_PROBE`] buckets, inlined.
#[inline(always)]
fn hh_find_near(hi: u64, lo: u64, tag: u32) -> Option<u32> {
    let shape = hh_shape();
    let home = top_bits(v6::hh_hash(hi, lo), shape);
    probe_seq(home, shape.mask as u64, 0..v6::ODD_PROBE, |i| {
        hh_probe(hi, lo, tag, i)
    })
    .map(|w| w as u32)
}

/// An odd /17–/23 or /33–/39 entry in HX: over [`v6::ODD_PROBE`] buckets, inlined.
#[inline(always)]
fn hx_find_near(key: u64, tag: u32, home: u64, shape: v6::Shape) -> Option<u64> {
    probe_seq(home, shape.mask as u64, 0..v6::ODD_PROBE, |i| {
        hx_probe(key, tag, i)
    })
}

/// The shape of HX, read once per lookup.
#[inline(always)]
fn hx_shape() -> v6::Shape {
    // SAFETY: a global the loader froze; volatile so it is read, not folded.
    unsafe { core::ptr::read_volatile(&PF_V6_HX_SHAPE) }
}

/// The home bucket of `key` masked to `tag` bits.
#[inline(always)]
fn hx_home(key: u64, tag: u32, shape: v6::Shape) -> u64 {
    top_bits(v6::hx_hash(key, tag), shape)
}

/// Bucket `i` of HX; `i` masked to its size by the caller.
#[inline(always)]
fn hx_bucket_ptr(i: u64) -> *const v6::Bucket {
    // SAFETY: within the map, as the caller masks `i` to the buckets it holds.
    unsafe {
        core::ptr::addr_of!(PF_V6_HX)
            .cast::<v6::Bucket>()
            .add(i as usize)
    }
}

/// What a probe of one HX bucket found.
enum Probe {
    Found(u64),
    Absent,
    /// The bucket is full of other keys: the next one may hold it.
    Full,
}

/// Looks for `key` masked to `tag` bits in HX bucket `i` (masked by the caller).
#[inline(always)]
fn hx_probe(key: u64, tag: u32, i: u64) -> Probe {
    let b = hx_bucket_ptr(i);
    for i in 0..v6::BUCKET_SLOTS {
        // SAFETY: a valid value pointer of the array. The tag (with the value) is read
        // before the key: the agent writes the key first, so a tag seen means its key
        // is in place.
        let (word, k) = unsafe {
            let s = (b as *const v6::Slot).add(i);
            let w = core::ptr::read_volatile((s as *const u64).add(1));
            (w, core::ptr::read_volatile(s as *const u64))
        };
        let t = (word >> 32) as u32;
        if v6::tag_len(t) == tag && k == key {
            return Probe::Found(word);
        }
        if t == v6::TAG_EMPTY {
            return Probe::Absent;
        }
    }
    Probe::Full
}

/// The HX slot word (entry, and tag above it) of `key` masked to `tag` bits, if any, from
/// its home bucket on: linear probing, one cache line per bucket, stopping at the first
/// never-used slot. The home bucket is probed inline; the rare key past it (a table at most
/// half full) in a function of its own, whose loop, inlined, held its constants in
/// registers along every lookup's path and pushed other values to the stack.
#[inline(always)]
fn hx_find(key: u64, tag: u32, home: u64, shape: v6::Shape) -> Option<u64> {
    let mask = shape.mask as u64;
    match hx_probe(key, tag, home & mask) {
        Probe::Found(w) => Some(w),
        Probe::Absent => None,
        Probe::Full => match hx_find_past(key, tag, home, mask) {
            0 => None,
            w => Some(w),
        },
    }
}

/// [`hx_find`] past the home bucket: the slot word, or 0 (never a used slot's: its tag is
/// not zero).
#[inline(never)]
fn hx_find_past(key: u64, tag: u32, home: u64, mask: u64) -> u64 {
    probe_seq(home, mask, 1..v6::MAX_PROBE, |i| hx_probe(key, tag, i)).unwrap_or(0)
}

/// Buckets `steps` of the probe sequence from `home` (masked by `mask`), each looked at by
/// `probe`: the slot word found, or None at a never-used slot or the sequence's end.
#[inline(always)]
fn probe_seq(
    home: u64,
    mask: u64,
    steps: core::ops::Range<u32>,
    probe: impl Fn(u64) -> Probe,
) -> Option<u64> {
    for p in steps {
        match probe(home.wrapping_add(p as u64) & mask) {
            Probe::Found(w) => return Some(w),
            Probe::Absent => return None,
            Probe::Full => {}
        }
    }
    None
}

/// Reads the first word of a bucket and drops it: the load is issued and nothing waits for
/// it (BPF has no prefetch instruction).
#[inline(always)]
fn hx_touch(home: u64, shape: v6::Shape) {
    let b = hx_bucket_ptr(home & shape.mask as u64);
    // SAFETY: within the map.
    unsafe { core::ptr::read_volatile(b as *const u64) };
}

/// IPv6: the /16 entry, then the /32 (which may hold its only /48 itself), then only the
/// longer lengths its flags name (and that the last entry found still names), keeping the
/// last verdict found; odd lengths ([`odd_lookup`]) only where a flag says one lies inside.
#[inline(always)]
fn v6_lookup(a: Addr) -> u16 {
    // SAFETY: the index is 16 bits, TOP's size; read volatile as the agent writes it.
    let mut e = unsafe {
        core::ptr::read_volatile(
            core::ptr::addr_of!(PF_V6_TOP)
                .cast::<v6::Entry>()
                .add((a.hi >> 48) as usize),
        )
    };
    // The odd lengths inside the last entry found: TOP's, or past its /32 the deepest one's.
    let mut odd = e & v6::ODD_TOP;
    if e & v6::inside(1) != 0 {
        let hi = a.hi;
        let shape = hx_shape();
        let k32 = hi & 0xffff_ffff_0000_0000;
        // Cold, each probe below is a cache miss waiting for the one before it. Loading the
        // /64's home bucket first lets the CPU fetch it while the /32's arrives (a listed
        // /64 is as common as a /48, and unlike a /48 never held by its /32). Only the
        // /64's: the /48's too cost ~3 ns hot for every source (blocked /48 v6 ÷ v4 /24,
        // median of 10 loads: 1.39 with both, 1.23 with the /64's alone; map lookups then).
        let h64 = hx_home(hi, 64, shape);
        // Only where TOP says a /64 lies in this /16: elsewhere the early load is a miss
        // the run waits on for nothing (a random source in a listed /48 of a 1k list cost
        // 141 ns cold with it, a /128's, always the same /64, 20).
        if e & v6::inside(4) != 0 {
            hx_touch(h64, shape);
        }
        if let Some(w) = hx_find(k32, 32, hx_home(k32, 32, shape), shape) {
            e = w as u32;
            if e & v6::INLINE != 0 {
                // The /32's only content, a /48, is in its word (no flags, no trie): a
                // listed /48 alone in its /32 costs this one probe, and nothing is left
                // to look for.
                let (key16, child) = v6::inline_child(w);
                return if key16 == (hi >> 16) as u16 {
                    child
                } else {
                    e as u16
                };
            }
            let mut flags = e;
            let (k48, k56) = (hi & 0xffff_ffff_ffff_0000, hi & 0xffff_ffff_ffff_ff00);
            if flags & v6::inside(2) != 0
                && let Some(x) = hx_find(k48, 48, hx_home(k48, 48, shape), shape)
            {
                let x = x as u32;
                (e, flags) = (x, x);
            }
            if flags & v6::inside(3) != 0
                && let Some(x) = hx_find(k56, 56, hx_home(k56, 56, shape), shape)
            {
                let x = x as u32;
                (e, flags) = (x, x);
            }
            if flags & v6::inside(4) != 0
                && let Some(x) = hx_find(hi, 64, h64, shape)
            {
                let x = x as u32;
                (e, flags) = (x, x);
            }
            if flags & v6::inside(5) != 0
                && let Some(x) = hh_find(hi, a.lo)
            {
                // Nothing is longer than a /128.
                (e, flags) = (x, 0);
            }
            odd = flags & (v6::ODD_MID | v6::ODD_H);
        }
    }
    if odd != 0 {
        // Only the verdict goes on: `e`, with what the walk's tests taught the verifier
        // about its flags, would make each path a state of its own there.
        return odd_lookup(a.hi, a.lo, odd, e & 0xffff);
    }
    e as u16
}

/// The verdict of the longest odd-length entry `hi`, `lo` is in among those inside the
/// last entry the walk found (whose flags `odd` names them, and whose verdict `found` is
/// the answer otherwise): each length in use probed from the longest down, the first found
/// returned. A function of its own: rare (real lists hold few such prefixes), and its
/// loops inlined would cost every lookup registers. It takes no level: the entry's own
/// flags say what lies inside it, so the walk's paths reach it in one state or two and the
/// verifier follows it that often, not once per path.
#[inline(never)]
fn odd_lookup(hi: u64, lo: u64, odd: u32, found: u32) -> u16 {
    // SAFETY: global data the agent changes a whole word at a time; read volatile.
    let (short, host) = unsafe {
        let p = core::ptr::addr_of!(PF_V6_ODD);
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*p).short)),
            core::ptr::read_volatile(core::ptr::addr_of!((*p).host)),
        )
    };
    if odd & v6::ODD_H != 0 {
        let mut bits = host;
        // The agent holds at most ODD_HOST_MAX lengths here.
        for _ in 0..v6::ODD_HOST_MAX {
            if bits == 0 {
                break;
            }
            let b = 63 - bits.leading_zeros();
            bits ^= 1 << b;
            // b is 1 to 63: /65 to /127, and the mask of lo's first b bits.
            let m = u64::MAX << (64 - b);
            if let Some(x) = hh_find_near(hi, lo & m, 64 + b) {
                return x as u16;
            }
        }
    }
    // TOP's /17–/23 or a /32's /33–/39: one entry's flags, so one set.
    let mut bits = 0;
    if odd & v6::ODD_TOP != 0 {
        bits = short & v6::ODD_TOP_BITS;
    }
    if odd & v6::ODD_MID != 0 {
        bits = short & v6::ODD_MID_BITS;
    }
    let shape = hx_shape();
    for _ in 0..7 {
        if bits == 0 {
            break;
        }
        let b = 63 - bits.leading_zeros();
        bits ^= 1 << b;
        let l = 17 + b;
        let key = hi & (u64::MAX << (64 - l));
        if let Some(w) = hx_find_near(key, l, hx_home(key, l, shape), shape) {
            return w as u16;
        }
    }
    found as u16
}

/// The verdict for a frame we could not read to the TCP flags: what its source would get,
/// except that a refusal is always a drop (no ports for a reset) and nothing is rate-limited.
#[inline(always)]
fn judge_source(v6: bool, saddr: Addr) -> Outcome {
    let table = table_lookup(v6, saddr);
    if verdict::action(table) != action::ALLOW {
        let out = decide(&settings().config, v6, saddr, table, false);
        if matches!(out.action, action::DROP | action::RESET) {
            return Outcome {
                action: action::DROP,
                ..out
            };
        }
    }
    Outcome {
        reason: reason::MALFORMED,
        action: action::PASS,
        list_id: 0,
    }
}

#[inline(always)]
fn addr_key(cfg: &Config, v6: bool, saddr: Addr) -> Key16 {
    let mut a = saddr;
    if v6 && cfg.flags & config::FLAG_V6_FULL == 0 {
        // One /64 is one subscriber: per-address state would be trivially evaded.
        a.lo = 0;
    }
    a.key()
}

#[inline(always)]
fn decide(cfg: &Config, v6: bool, saddr: Addr, table: u16, rate_limit: bool) -> Outcome {
    let rate_limit = rate_limit && cfg.flags & config::FLAG_RATELIMIT != 0;
    if rate_limit || cfg.dyn_entries != 0 {
        let key = addr_key(cfg, v6, saddr);
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_boot_ns() };
        if rate_limit && !take_token(cfg, key.get(), now) {
            return Outcome {
                reason: reason::RATELIMIT,
                action: action::DROP,
                list_id: 0,
            };
        }
        if cfg.dyn_entries != 0
            && let Some(d) = PF_DYNAMIC.get_ptr(key.get())
        {
            // SAFETY: value pointer from the kernel; a concurrent update can at worst give
            // one packet the old or new verdict.
            let d = unsafe { *d };
            if d.expires_ns != 0 && now >= d.expires_ns {
                // Expired: removed here so verdicts age out even with no agent running.
                let _ = PF_DYNAMIC.remove(key.get());
            } else if action::severity(d.action) >= action::severity(verdict::action(table)) {
                // The stronger of the learned and the listed verdict: a softer learned one
                // (observe, a DNSBL's reject) never lifts a drop that a list holds.
                return Outcome {
                    reason: reason::DYNAMIC,
                    action: d.action,
                    list_id: d.list_id,
                };
            }
        }
    }
    let act = verdict::action(table);
    if act != action::NONE {
        return Outcome {
            reason: reason::BLOCK,
            action: act,
            list_id: verdict::list_id(table),
        };
    }
    Outcome {
        reason: reason::NO_MATCH,
        action: action::PASS,
        list_id: 0,
    }
}

/// Token bucket in nanoseconds of credit; races between CPUs only blur the count a little.
#[inline(always)]
fn take_token(cfg: &Config, key: &AddrKey, now: u64) -> bool {
    if let Some(b) = PF_RATELIMIT.get_ptr_mut(key) {
        // SAFETY: value pointer from the kernel.
        let b = unsafe { &mut *b };
        let mut credit = b.credit_ns.saturating_add(now.saturating_sub(b.last_ns));
        if credit > cfg.rl_cap_ns {
            credit = cfg.rl_cap_ns;
        }
        b.last_ns = now;
        if credit < cfg.rl_cost_ns {
            b.credit_ns = credit;
            return false;
        }
        b.credit_ns = credit - cfg.rl_cost_ns;
        return true;
    }
    let fresh = Bucket {
        credit_ns: cfg.rl_cap_ns.saturating_sub(cfg.rl_cost_ns),
        last_ns: now,
    };
    let _ = PF_RATELIMIT.insert(key, fresh, 0);
    true
}

/// Takes one event from this CPU's time budget; false when it is spent or events are off.
/// Once the budget refused, the next candidates are refused without a clock read: under a
/// flood a blocked SYN then costs a per-CPU decrement, not a helper call.
#[inline(always)]
fn event_token(cfg: &Config, b: &mut Budget) -> bool {
    if cfg.ev_cost_ns == 0 {
        return false;
    }
    let (cost, cap) = (cfg.ev_cost_ns, cfg.ev_cap_ns);
    if b.skip != 0 {
        b.skip -= 1;
        return false;
    }
    // The coarse clock (tick resolution) is enough for a budget of events per second and
    // far cheaper than the precise one.
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let tat = b.tat_ns;
    if tat > now + cap - cost {
        b.skip = events::SKIP_AFTER_REFUSAL;
        return false;
    }
    b.tat_ns = if tat > now { tat } else { now } + cost;
    true
}

/// A pure ACK to a judged port: reports its source once if nothing judged it, within the
/// event budget. An ACK means a handshake completed, so spoofed sources never get here.
#[inline(always)]
fn first_contact(ctx: &XdpContext, v6: bool, saddr: Addr, dport: u16) {
    let cfg = &settings().config;
    let seen = saddr.key();
    if verdict::action(table_lookup(v6, saddr)) != action::NONE
        || PF_SEEN.get_ptr(seen.get()).is_some()
    {
        return;
    }
    if cfg.dyn_entries != 0 && PF_DYNAMIC.get_ptr(addr_key(cfg, v6, saddr).get()).is_some() {
        return;
    }
    // Over budget: not marked seen either, so it is reported on a later ACK.
    if !stats().is_some_and(|st| event_token(cfg, &mut st.budget)) {
        return;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Err(e) = PF_SEEN.insert(seen.get(), now, 0) {
        debug!(ctx, "first-seen table insert failed: {}", e);
    }
    let out = Outcome {
        reason: reason::NO_MATCH,
        action: action::PASS,
        list_id: 0,
    };
    emit(ctx, events::KIND_FIRST_SEEN, v6, saddr, dport, &out);
}

/// Writes one event without waking the reader (it polls on a timer), unless the ring is
/// filling up: a wake-up per event would cost more than the packet's verdict.
#[inline(always)]
fn emit(ctx: &XdpContext, kind: u8, v6: bool, saddr: Addr, dport: u16, out: &Outcome) {
    let slot = match PF_EVENTS.reserve::<Event>(0) {
        Some(mut e) => {
            // SAFETY: helper without arguments.
            let ts_ns = unsafe { bpf_ktime_get_boot_ns() };
            e.write(Event {
                ts_ns,
                addr: *saddr.key().get(),
                kind,
                action: out.action,
                reason: out.reason,
                family: if v6 { 6 } else { 4 },
                list_id: out.list_id,
                dport,
            });
            let wake = if PF_EVENTS.query(BPF_RB_AVAIL_DATA) >= events::WAKE_BYTES {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            e.submit(wake);
            counters::EVENTS_SENT
        }
        None => {
            debug!(ctx, "event ring buffer full: event dropped");
            counters::EVENTS_LOST
        }
    };
    if let Some(c) = stats().and_then(|st| st.n.get_mut(slot as usize)) {
        *c += 1;
    }
}

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Sum of big-endian 16-bit words.
#[inline(always)]
fn sum_words(b: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i + 1 < b.len() {
        s += u16::from_be_bytes([b[i], b[i + 1]]) as u64;
        i += 2;
    }
    s
}

/// Sum of the four big-endian 16-bit words of a host-order u64.
#[inline(always)]
fn sum64(x: u64) -> u64 {
    (x >> 48) + ((x >> 32) & 0xffff) + ((x >> 16) & 0xffff) + (x & 0xffff)
}

/// Rewrites the SYN in place into a RST+ACK back to its sender (XDP_TX), keeping the
/// Ethernet header and VLAN tags, dropping IP options, extension headers and TCP options.
#[inline(always)]
fn send_reset(ctx: &XdpContext, syn: &Syn) -> Result<(), ()> {
    let l3 = syn.l3;
    if l3 > ETH_HLEN + 8 {
        return Err(());
    }
    let ip_len = if syn.v6 { 40 } else { 20 };
    let new_len = l3 + ip_len + 20;
    let data = ctx.data();
    if data + new_len > ctx.data_end() {
        return Err(());
    }
    let p = data as *mut u8;
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&syn.dport.to_ne_bytes());
    tcp[2..4].copy_from_slice(&syn.sport.to_ne_bytes());
    // seq 0, ack = SYN's sequence space end (RFC 9293: <SEQ=0><ACK=SEG.SEQ+SEG.LEN>).
    tcp[8..12].copy_from_slice(&syn.seq.wrapping_add(syn.seg_len).to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = TCP_RST | TCP_ACK;
    // Pseudo-header: swapped addresses sum the same; protocol and TCP length 20.
    let mut sum = sum_words(&tcp) + IPPROTO_TCP as u64 + 20;
    // SAFETY: every access below is within data + new_len <= data_end, checked above.
    unsafe {
        // Swap MAC addresses.
        let dst: [u8; 6] = core::ptr::read_unaligned(p as *const [u8; 6]);
        let src: [u8; 6] = core::ptr::read_unaligned(p.add(6) as *const [u8; 6]);
        core::ptr::write_unaligned(p as *mut [u8; 6], src);
        core::ptr::write_unaligned(p.add(6) as *mut [u8; 6], dst);
        let ip = p.add(l3);
        if syn.v6 {
            sum += sum64(syn.saddr.hi)
                + sum64(syn.saddr.lo)
                + sum64(syn.daddr.hi)
                + sum64(syn.daddr.lo);
            let mut h = [0u8; 8];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&20u16.to_be_bytes());
            h[6] = IPPROTO_TCP;
            h[7] = 64;
            core::ptr::write_unaligned(ip as *mut [u8; 8], h);
            core::ptr::write_unaligned(ip.add(8) as *mut [u8; 16], *syn.daddr.key().get());
            core::ptr::write_unaligned(ip.add(24) as *mut [u8; 16], *syn.saddr.key().get());
        } else {
            let (s4, d4) = (syn.saddr.v4_addr(), syn.daddr.v4_addr());
            sum += sum64(s4 as u64) + sum64(d4 as u64);
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&40u16.to_be_bytes());
            h[6] = 0x40; // DF
            h[8] = 64;
            h[9] = IPPROTO_TCP;
            h[12..16].copy_from_slice(&d4.to_be_bytes());
            h[16..20].copy_from_slice(&s4.to_be_bytes());
            let c = fold(sum_words(&h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            core::ptr::write_unaligned(ip as *mut [u8; 20], h);
        }
        let c = fold(sum);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        core::ptr::write_unaligned(ip.add(ip_len) as *mut [u8; 20], tcp);
    }
    let delta = new_len as i32 - frame_len(ctx) as i32;
    // SAFETY: ctx.ctx is the program's context; shrinking keeps at least the new headers.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(());
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
