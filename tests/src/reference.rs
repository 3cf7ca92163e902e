//! The data plane's decision written a second time, in plain Rust, from the rules of
//! design.md ("Data plane") and the protocol specifications rather than from the XDP
//! program. The end-to-end tests run every frame through both and compare.
//!
//! What "fully parsed" means here, header by header:
//!
//! - Ethernet II: 14 bytes, EtherType at offset 12.
//! - VLAN: up to [`MAX_VLAN_TAGS`] tags, each a TPID (802.1Q 0x8100 or 802.1ad 0x88a8, in
//!   either position) followed by the TCI and the next EtherType. One tag more is more than
//!   the design parses: malformed.
//! - IPv4 (RFC 791): the 20-byte base header present, version 4, IHL >= 5, total length at
//!   least IHL * 4 and within the frame (what follows it is Ethernet padding, ignored). Then
//!   a non-zero fragment offset means a non-first fragment, which carries no TCP header: not
//!   judged; a protocol other than TCP: not judged.
//! - IPv6 (RFC 8200): the 40-byte header present, version 6, payload length within the
//!   frame. Then the chain of extension headers: hop-by-hop (0), routing (43), destination
//!   options (60) of (length + 1) * 8 bytes, and fragment headers (44) of 8 bytes, each
//!   within the payload; a fragment header with a non-zero offset: not judged; more than
//!   [`MAX_V6_EXT_HEADERS`] of them: malformed (the design's "bounded chain"); any other
//!   next header (no next header, ESP, AH, UDP, ICMPv6...): not judged.
//! - TCP (RFC 9293): the 20-byte header within the IP payload, data offset >= 5 and the
//!   options within the IP payload; judged only with SYN set and ACK clear (other flags
//!   are ignored), to a judged destination port. The payload is what the IP length fields
//!   say follows the TCP header, not what the frame holds.
//!
//! Checksums are not verified (the kernel does that after the prefilter), nor are the
//! contents of IPv4 options or IPv6 option TLVs.
//!
//! Decision for a judged SYN, in order: allow prefix (any length) → pass; rate limit over
//! the burst → drop; live dynamic verdict (expiry 0 = never, else CLOCK_BOOTTIME before it)
//! → its action; the longest block prefix → its action; otherwise pass. Dynamic verdicts
//! and rate buckets are keyed by the IPv4 address (as `::ffff:a.b.c.d`) or the IPv6 /64
//! (/128 with `FLAG_V6_FULL`).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use prefilter::xdp::{Filter, Options, v4table::Kind as AgentKind};
use prefilter_common::{
    AddrKey, action,
    config::{self, Config},
    counters,
    dynamic::DynVerdict,
    ports, reason, v4_key, verdict,
};

use crate::packet::{checksum, flags, hex, tcp_checksum};

/// XDP return codes (include/uapi/linux/bpf.h).
pub const XDP_DROP: u32 = 1;
/// Let the frame go on to the stack.
pub const XDP_PASS: u32 = 2;
/// Send the (rewritten) frame back out of the interface it came in on.
pub const XDP_TX: u32 = 3;

/// VLAN tags the design parses (802.1Q, or QinQ).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers the design parses before the TCP header ("a bounded chain").
pub const MAX_V6_EXT_HEADERS: usize = 5;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TPIDS: [u16; 2] = [0x8100, 0x88a8];

/// A TCP SYN to a judged port, as the reference parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syn {
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// Offset of the IP header: Ethernet plus VLAN tags.
    pub l3: usize,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    /// The TCP flags byte.
    pub flags: u8,
    /// TCP payload length according to the IP length fields.
    pub payload_len: usize,
}

impl Syn {
    /// The acknowledgment number a reset must carry: SEG.SEQ + SEG.LEN, where SEG.LEN
    /// counts the payload, the SYN and a FIN (RFC 9293 3.4 and 3.10.7.1).
    pub fn reset_ack(&self) -> u32 {
        let fin = u32::from(self.flags & flags::FIN != 0);
        self.seq
            .wrapping_add(1 + fin)
            .wrapping_add(self.payload_len as u32)
    }
}

/// What the parser made of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Fully parsed, and not a SYN to a judged port (or not TCP, not IP...).
    NotJudged(&'static str),
    /// Could not be fully parsed. `or_not_judged`: the same header also shows the frame is
    /// not a judged SYN, and the rules do not say which finding counts: either reason is
    /// right.
    Malformed {
        why: &'static str,
        or_not_judged: bool,
    },
    /// Cannot be read to the TCP flags, yet the kernel would take it: an IPv4 first fragment
    /// whose TCP header is cut (RFC 1858 tiny fragment), or an IPv6 header chain longer than
    /// parsed. Judged by its source alone: a block or dynamic refusal drops it, anything else
    /// passes (counted malformed).
    SourceOnly { src: IpAddr, why: &'static str },
    /// A SYN to judge.
    Syn(Syn),
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn malformed(why: &'static str) -> Parsed {
    Parsed::Malformed {
        why,
        or_not_judged: false,
    }
}

/// Parses `frame` (at least 14 bytes) as the rules above say; `judged` tells whether a
/// destination port is judged.
pub fn parse(frame: &[u8], judged: &dyn Fn(u16) -> bool) -> Parsed {
    assert!(frame.len() >= 14, "frames are at least an Ethernet header");
    let mut ethertype = be16(frame, 12);
    let mut l3 = 14;
    let mut tags = 0;
    while TPIDS.contains(&ethertype) {
        if tags == MAX_VLAN_TAGS {
            return malformed("more VLAN tags than parsed");
        }
        if frame.len() < l3 + 4 {
            return malformed("VLAN tag truncated");
        }
        ethertype = be16(frame, l3 + 2);
        l3 += 4;
        tags += 1;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, l3, judged),
        ETH_P_IPV6 => parse_ipv6(frame, l3, judged),
        _ => Parsed::NotJudged("not IP"),
    }
}

fn parse_ipv4(frame: &[u8], l3: usize, judged: &dyn Fn(u16) -> bool) -> Parsed {
    let avail = frame.len() - l3;
    let ip = &frame[l3..];
    if avail < 20 {
        return malformed("IPv4 header truncated");
    }
    let not_for_us = be16(ip, 6) & 0x1fff != 0 || ip[9] != 6;
    let bad = |why| Parsed::Malformed {
        why,
        or_not_judged: not_for_us,
    };
    if ip[0] >> 4 != 4 {
        return bad("IPv4 version");
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return bad("IPv4 IHL below 5");
    }
    let total = usize::from(be16(ip, 2));
    if total < ihl {
        return bad("IPv4 total length below IHL");
    }
    if total > avail {
        return bad("IPv4 total length beyond the frame");
    }
    if be16(ip, 6) & 0x1fff != 0 {
        return Parsed::NotJudged("IPv4 non-first fragment");
    }
    if ip[9] != 6 {
        return Parsed::NotJudged("IPv4 not TCP");
    }
    let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    let more_fragments = be16(ip, 6) & 0x2000 != 0;
    match parse_tcp(frame, l3, l3 + ihl, l3 + total, src, dst, judged) {
        // Reassembly would complete what we could not read.
        Parsed::Malformed { why, .. } if more_fragments => {
            first_fragment(frame, l3 + ihl, l3 + total, src, why, judged)
        }
        p => p,
    }
}

/// A first fragment whose TCP header is cut or inconsistent: if the 20 fixed bytes are there
/// and show it is not a SYN to a judged port, it is simply not judged; else by source only.
fn first_fragment(
    frame: &[u8],
    l4: usize,
    end: usize,
    src: IpAddr,
    why: &'static str,
    judged: &dyn Fn(u16) -> bool,
) -> Parsed {
    if l4 + 20 <= end {
        let t = &frame[l4..end];
        if !syn_only(t[13]) || !judged(be16(t, 2)) {
            return Parsed::NotJudged("first fragment, not a SYN to a judged port");
        }
    }
    Parsed::SourceOnly { src, why }
}

fn parse_ipv6(frame: &[u8], l3: usize, judged: &dyn Fn(u16) -> bool) -> Parsed {
    let avail = frame.len() - l3;
    let ip = &frame[l3..];
    if avail < 40 {
        return malformed("IPv6 header truncated");
    }
    if ip[0] >> 4 != 6 {
        return malformed("IPv6 version");
    }
    let end = l3 + 40 + usize::from(be16(ip, 4));
    if end > frame.len() {
        return malformed("IPv6 payload length beyond the frame");
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&ip[24..40]);
    let (src, dst) = (IpAddr::V6(src.into()), IpAddr::V6(dst.into()));
    let mut next = ip[6];
    let mut off = l3 + 40;
    let mut count = 0;
    loop {
        match next {
            6 => return parse_tcp(frame, l3, off, end, src, dst, judged),
            0 | 43 | 60 | 44 => {
                count += 1;
                // Both the 8-byte fragment header and the options headers are at least
                // 8 bytes, their length byte among them.
                if off + 8 > end {
                    return malformed("IPv6 extension header beyond the payload");
                }
                let len = if next == 44 {
                    8
                } else {
                    (usize::from(frame[off + 1]) + 1) * 8
                };
                if off + len > end {
                    return malformed("IPv6 extension header beyond the payload");
                }
                if next == 44 && be16(frame, off + 2) >> 3 != 0 {
                    return Parsed::NotJudged("IPv6 non-first fragment");
                }
                next = frame[off];
                off += len;
                if count == MAX_V6_EXT_HEADERS + 1 {
                    // The kernel walks longer chains than we do.
                    return Parsed::SourceOnly {
                        src,
                        why: "more IPv6 extension headers than parsed",
                    };
                }
            }
            _ => return Parsed::NotJudged("IPv6 not TCP"),
        }
    }
}

/// SYN alone among SYN, ACK, RST and FIN: SYN|FIN and SYN|RST are invalid and a listener
/// drops them, so they are not judged (and never answered with a reset).
fn syn_only(tcp_flags: u8) -> bool {
    tcp_flags & (flags::SYN | flags::ACK | flags::RST | flags::FIN) == flags::SYN
}

fn parse_tcp(
    frame: &[u8],
    l3: usize,
    l4: usize,
    end: usize,
    src: IpAddr,
    dst: IpAddr,
    judged: &dyn Fn(u16) -> bool,
) -> Parsed {
    if l4 + 20 > end {
        return malformed("TCP header beyond the IP payload");
    }
    let t = &frame[l4..end];
    let tcp_flags = t[13];
    let dport = be16(t, 2);
    let syn_only = syn_only(tcp_flags);
    let not_for_us = !syn_only || !judged(dport);
    let doff = usize::from(t[12] >> 4) * 4;
    if doff < 20 || doff > t.len() {
        return Parsed::Malformed {
            why: "TCP data offset",
            or_not_judged: not_for_us,
        };
    }
    if !syn_only {
        return Parsed::NotJudged("not a SYN without ACK");
    }
    if !judged(dport) {
        return Parsed::NotJudged("port not judged");
    }
    Parsed::Syn(Syn {
        v6: src.is_ipv6(),
        l3,
        src,
        dst,
        sport: be16(t, 0),
        dport,
        seq: be32(t, 4),
        flags: tcp_flags,
        payload_len: t.len() - doff,
    })
}

/// Allow beats every block; otherwise the longest block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Allow,
    Block,
}

/// A prefix rule: network as u128 (IPv4 in the low 32 bits), length, kind, packed verdict.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub net: u128,
    pub len: u8,
    pub kind: Kind,
    pub verdict: u16,
}

/// The prefix rules of one family.
#[derive(Clone, Debug, Default)]
pub struct Prefixes {
    /// 32 or 128.
    pub bits: u8,
    pub rules: Vec<Rule>,
}

impl Prefixes {
    fn covers(&self, r: &Rule, addr: u128) -> bool {
        r.len == 0 || (addr ^ r.net) >> (self.bits - r.len) == 0
    }

    /// The most specific matching rule of `kind`.
    pub fn longest(&self, addr: u128, kind: Kind) -> Option<Rule> {
        self.rules
            .iter()
            .filter(|r| r.kind == kind && self.covers(r, addr))
            .max_by_key(|r| r.len)
            .copied()
    }

    /// Removes a rule.
    pub fn remove(&mut self, net: u128, len: u8, kind: Kind) {
        self.rules
            .retain(|r| !(r.net == net && r.len == len && r.kind == kind));
    }

    /// Sets (or replaces) a rule.
    pub fn set(&mut self, net: u128, len: u8, kind: Kind, verdict: u16) {
        let net = if len == 0 {
            0
        } else {
            net >> (self.bits - len) << (self.bits - len)
        };
        self.rules
            .retain(|r| !(r.net == net && r.len == len && r.kind == kind));
        self.rules.push(Rule {
            net,
            len,
            kind,
            verdict,
        });
    }
}

/// What the rules say about one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// [`reason`] constant.
    pub reason: u8,
    /// Another reason that is just as right (see [`Parsed::Malformed`]).
    pub alt_reason: Option<u8>,
    /// [`action`] constant: PASS for everything not judged.
    pub action: u8,
    /// List or source id of the matching block or dynamic entry.
    pub list_id: u16,
    /// The SYN, when judged.
    pub syn: Option<Syn>,
    /// Why, in words.
    pub why: &'static str,
}

impl Decision {
    /// The XDP return code the action maps to.
    pub fn xdp(&self) -> u32 {
        match self.action {
            action::DROP => XDP_DROP,
            action::RESET => XDP_TX,
            _ => XDP_PASS,
        }
    }

    fn judged(reason: u8, action: u8, list_id: u16, syn: Syn, why: &'static str) -> Self {
        Self {
            reason,
            alt_reason: None,
            action,
            list_id,
            syn: Some(syn),
            why,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}/{}, list {}{}: {})",
            xdp_name(self.xdp()),
            reason::NAMES[usize::from(self.reason)],
            action::NAMES[usize::from(self.action)],
            self.list_id,
            match self.alt_reason {
                Some(r) => format!(", or reason {}", reason::NAMES[usize::from(r)]),
                None => String::new(),
            },
            self.why
        )
    }
}

/// "DROP", "PASS", "TX" or the number.
pub fn xdp_name(code: u32) -> String {
    match code {
        0 => "ABORTED".into(),
        XDP_DROP => "DROP".into(),
        XDP_PASS => "PASS".into(),
        XDP_TX => "TX".into(),
        n => format!("XDP action {n}"),
    }
}

/// CLOCK_BOOTTIME in nanoseconds: the clock of dynamic verdict expiry.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The policy and state the rules decide from.
#[derive(Clone, Debug)]
pub struct Model {
    pub v4: Prefixes,
    pub v6: Prefixes,
    /// Keyed as the data plane keys them (see [`Model::key`]).
    pub dynamic: HashMap<AddrKey, DynVerdict>,
    /// Judged destination ports.
    pub ports: Vec<bool>,
    /// Key IPv6 state by /128 instead of /64.
    pub v6_full: bool,
    /// Rate limit: SYNs a source may send (the bucket's capacity over the cost). Modelled
    /// without refill, so tests set a cost far longer than they run.
    pub burst: Option<u64>,
    /// SYNs each rate bucket has let through.
    pub taken: HashMap<AddrKey, u64>,
}

impl Default for Model {
    fn default() -> Self {
        let mut ports = vec![false; 65536];
        for &p in ports::DEFAULT {
            ports[usize::from(p)] = true;
        }
        Self {
            v4: Prefixes {
                bits: 32,
                rules: Vec::new(),
            },
            v6: Prefixes {
                bits: 128,
                rules: Vec::new(),
            },
            dynamic: HashMap::new(),
            ports,
            v6_full: false,
            burst: None,
            taken: HashMap::new(),
        }
    }
}

impl Model {
    /// Key of the dynamic and rate-limit state for a source.
    pub fn key(&self, src: IpAddr) -> AddrKey {
        match src {
            IpAddr::V4(a) => v4_key(a.octets()),
            IpAddr::V6(a) => {
                let mut k = a.octets();
                if !self.v6_full {
                    k[8..].fill(0);
                }
                k
            }
        }
    }

    /// Parses `frame` with the judged ports of this model.
    pub fn parse(&self, frame: &[u8]) -> Parsed {
        parse(frame, &|p| self.ports[usize::from(p)])
    }

    /// The decision for `frame`; a judged SYN takes a rate-limit token as the data plane
    /// would. `now_ns` is CLOCK_BOOTTIME.
    pub fn decide(&mut self, frame: &[u8], now_ns: u64) -> Decision {
        let syn = match self.parse(frame) {
            Parsed::NotJudged(why) => {
                return Decision {
                    reason: reason::NOT_JUDGED,
                    alt_reason: None,
                    action: action::PASS,
                    list_id: 0,
                    syn: None,
                    why,
                };
            }
            Parsed::Malformed { why, or_not_judged } => {
                return Decision {
                    reason: reason::MALFORMED,
                    alt_reason: or_not_judged.then_some(reason::NOT_JUDGED),
                    action: action::PASS,
                    list_id: 0,
                    syn: None,
                    why,
                };
            }
            Parsed::SourceOnly { src, why } => return self.by_source(src, now_ns, why),
            Parsed::Syn(s) => s,
        };
        let (table, addr) = match syn.src {
            IpAddr::V4(a) => (&self.v4, u128::from(u32::from(a))),
            IpAddr::V6(a) => (&self.v6, u128::from(a)),
        };
        if let Some(r) = table.longest(addr, Kind::Allow) {
            let id = verdict::list_id(r.verdict);
            return Decision::judged(reason::ALLOW, action::PASS, id, syn, "allow prefix");
        }
        let block = table.longest(addr, Kind::Block);
        let key = self.key(syn.src);
        if let Some(burst) = self.burst {
            let taken = self.taken.entry(key).or_default();
            if *taken >= burst {
                return Decision::judged(reason::RATELIMIT, action::DROP, 0, syn, "over the rate");
            }
            *taken += 1;
        }
        let listed = block.map_or(0, |r| action::severity(verdict::action(r.verdict)));
        if let Some(d) = self.dynamic.get(&key)
            && (d.expires_ns == 0 || now_ns < d.expires_ns)
            && action::severity(d.action) >= listed
        {
            return Decision::judged(reason::DYNAMIC, d.action, d.list_id, syn, "dynamic verdict");
        }
        if let Some(r) = block {
            let (act, id) = (verdict::action(r.verdict), verdict::list_id(r.verdict));
            return Decision::judged(reason::BLOCK, act, id, syn, "block prefix");
        }
        Decision::judged(reason::NO_MATCH, action::PASS, 0, syn, "no match")
    }
}

impl Model {
    /// The decision for a frame judged by its source alone: no rate limit, a refusal is a
    /// drop, anything else passes as malformed.
    fn by_source(&self, src: IpAddr, now_ns: u64, why: &'static str) -> Decision {
        let (table, addr) = match src {
            IpAddr::V4(a) => (&self.v4, u128::from(u32::from(a))),
            IpAddr::V6(a) => (&self.v6, u128::from(a)),
        };
        let pass = Decision {
            reason: reason::MALFORMED,
            alt_reason: None,
            action: action::PASS,
            list_id: 0,
            syn: None,
            why,
        };
        if table.longest(addr, Kind::Allow).is_some() {
            return pass;
        }
        let refused = |a: u8| a == action::DROP || a == action::RESET;
        let key = self.key(src);
        let block = table.longest(addr, Kind::Block);
        let listed = block.map_or(0, |r| action::severity(verdict::action(r.verdict)));
        let (reason, act, id) = if let Some(d) = self.dynamic.get(&key)
            && (d.expires_ns == 0 || now_ns < d.expires_ns)
            && action::severity(d.action) >= listed
        {
            (reason::DYNAMIC, d.action, d.list_id)
        } else if let Some(r) = block {
            (
                reason::BLOCK,
                verdict::action(r.verdict),
                verdict::list_id(r.verdict),
            )
        } else {
            return pass;
        };
        if !refused(act) {
            return pass;
        }
        Decision {
            reason,
            alt_reason: None,
            action: action::DROP,
            list_id: id,
            syn: None,
            why,
        }
    }
}

/// Checks a frame the program sent back (XDP_TX) as the reset answering `syn`, which came
/// in as `input`: every field a peer's TCP looks at.
pub fn check_reset(input: &[u8], syn: &Syn, out: &[u8]) -> Result<(), String> {
    let mut errs = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            errs.push(what);
        }
    };
    let l3 = syn.l3;
    let ip_len = if syn.v6 { 40 } else { 20 };
    let want_len = l3 + ip_len + 20;
    if out.len() != want_len {
        return Err(format!(
            "reset frame is {} bytes, want {want_len} (l2 {l3} + ip {ip_len} + tcp 20): {}",
            out.len(),
            hex(out)
        ));
    }
    check(
        out[0..6] == input[6..12],
        "destination MAC is not the SYN's source".into(),
    );
    check(
        out[6..12] == input[0..6],
        "source MAC is not the SYN's destination".into(),
    );
    check(
        out[12..l3] == input[12..l3],
        format!(
            "VLAN tags/EtherType changed: {} -> {}",
            hex(&input[12..l3]),
            hex(&out[12..l3])
        ),
    );
    let ip = &out[l3..l3 + ip_len];
    let tcp = &out[l3 + ip_len..];
    let (src, dst): (Vec<u8>, Vec<u8>) = match (syn.src, syn.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            check(
                ip[0] == 0x45,
                format!("IPv4 version/IHL {:#04x}, want 0x45", ip[0]),
            );
            check(
                be16(ip, 2) == 40,
                format!("IPv4 total length {}, want 40", be16(ip, 2)),
            );
            check(
                be16(ip, 6) & 0x3fff == 0,
                format!(
                    "IPv4 reset is a fragment: flags/offset {:#06x}",
                    be16(ip, 6)
                ),
            );
            check(ip[8] > 0, "IPv4 TTL 0".into());
            check(ip[9] == 6, format!("IPv4 protocol {}, want 6", ip[9]));
            check(
                ip[12..16] == d.octets(),
                "IPv4 source is not the SYN's destination".into(),
            );
            check(
                ip[16..20] == s.octets(),
                "IPv4 destination is not the SYN's source".into(),
            );
            check(
                checksum(ip) == 0,
                format!("IPv4 header checksum {:#06x} invalid", be16(ip, 10)),
            );
            (d.octets().to_vec(), s.octets().to_vec())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            check(ip[0] >> 4 == 6, format!("IPv6 version {}", ip[0] >> 4));
            check(
                be16(ip, 4) == 20,
                format!("IPv6 payload length {}, want 20", be16(ip, 4)),
            );
            check(ip[6] == 6, format!("IPv6 next header {}, want 6", ip[6]));
            check(ip[7] > 0, "IPv6 hop limit 0".into());
            check(
                ip[8..24] == d.octets(),
                "IPv6 source is not the SYN's destination".into(),
            );
            check(
                ip[24..40] == s.octets(),
                "IPv6 destination is not the SYN's source".into(),
            );
            (d.octets().to_vec(), s.octets().to_vec())
        }
        _ => unreachable!("one family"),
    };
    check(
        be16(tcp, 0) == syn.dport,
        format!("TCP source port {}, want {}", be16(tcp, 0), syn.dport),
    );
    check(
        be16(tcp, 2) == syn.sport,
        format!("TCP destination port {}, want {}", be16(tcp, 2), syn.sport),
    );
    check(
        be32(tcp, 4) == 0,
        format!("TCP seq {}, want 0", be32(tcp, 4)),
    );
    check(
        be32(tcp, 8) == syn.reset_ack(),
        format!(
            "TCP ack {:#010x}, want {:#010x} (seq {:#010x} + SYN + {} payload{})",
            be32(tcp, 8),
            syn.reset_ack(),
            syn.seq,
            syn.payload_len,
            if syn.flags & flags::FIN != 0 {
                " + FIN"
            } else {
                ""
            }
        ),
    );
    check(
        tcp[12] == 0x50,
        format!("TCP data offset/reserved {:#04x}, want 0x50", tcp[12]),
    );
    check(
        tcp[13] == flags::RST | flags::ACK,
        format!("TCP flags {:#04x}, want RST|ACK 0x14", tcp[13]),
    );
    check(
        tcp_checksum(&src, &dst, tcp) == 0,
        format!("TCP checksum {:#06x} invalid", be16(tcp, 16)),
    );
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "bad reset: {}; frame {}",
            errs.join("; "),
            hex(out)
        ))
    }
}

/// Parses `a.b.c.d/n` or `x::y/n` (a bare address is a host prefix).
pub fn cidr(s: &str) -> (IpAddr, u8) {
    let (a, l) = s.split_once('/').unwrap_or((s, ""));
    let addr: IpAddr = a.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
    let len = if l.is_empty() {
        if addr.is_ipv4() { 32 } else { 128 }
    } else {
        l.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    (addr, len)
}

/// What one run of the program did, and what the rules say.
#[derive(Clone, Debug)]
pub struct Observed {
    pub decision: Decision,
    /// XDP action returned.
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Counter slots that changed, with their increments.
    pub counted: Vec<(u32, u64)>,
    pub ns_per_run: u32,
}

/// Name of a counter slot: `reason/action`.
pub fn slot_name(slot: u32) -> String {
    let n = action::COUNT as u32;
    if slot < counters::EVENTS_SENT {
        format!(
            "{}/{}",
            reason::NAMES[(slot / n) as usize],
            action::NAMES[(slot % n) as usize]
        )
    } else if slot == counters::EVENTS_SENT {
        "events_sent".into()
    } else {
        "events_lost".into()
    }
}

/// The loaded program with a [`Model`] kept in step: every policy change goes to both.
pub struct Rig {
    pub filter: Filter,
    pub model: Model,
    counters: Vec<u64>,
    /// Block hits per list id the rules expect.
    pub hits: BTreeMap<u16, u64>,
}

fn addr_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Rig {
    /// Loads a private instance with default maps.
    pub fn load() -> Self {
        let filter = Filter::load(&Options::default()).expect("load the XDP program");
        let counters = filter.counters().expect("read counters");
        Self {
            filter,
            model: Model::default(),
            counters,
            hits: BTreeMap::new(),
        }
    }

    fn prefix(&mut self, c: &str, kind: Kind, v: u16) {
        let (addr, len) = cidr(c);
        let agent_kind = match kind {
            Kind::Allow => AgentKind::Allow,
            Kind::Block => AgentKind::Block,
        };
        match addr {
            IpAddr::V4(a) => {
                self.filter
                    .v4
                    .set(u32::from(a), len, agent_kind, v)
                    .expect("v4 set");
                self.model.v4.set(addr_u128(addr), len, kind, v);
            }
            IpAddr::V6(a) => {
                self.filter
                    .v6
                    .set(u128::from(a), len, agent_kind, v)
                    .expect("v6 set");
                self.model.v6.set(addr_u128(addr), len, kind, v);
            }
        }
    }

    /// Adds a block prefix with `act` from list `list`.
    pub fn block(&mut self, c: &str, act: u8, list: u16) {
        self.prefix(c, Kind::Block, verdict::pack(act, list));
    }

    /// Removes an IPv4 block prefix (given exactly as it was added).
    pub fn unblock_v4(&mut self, c: &str) {
        let (addr, len) = cidr(c);
        let IpAddr::V4(a) = addr else {
            panic!("{c}: not IPv4");
        };
        assert!(
            self.filter.v4.remove(u32::from(a), len, AgentKind::Block),
            "{c} was not in the table"
        );
        self.model.v4.remove(addr_u128(addr), len, Kind::Block);
    }

    /// Adds an allow prefix.
    pub fn allow(&mut self, c: &str, list: u16) {
        self.prefix(c, Kind::Allow, verdict::pack(action::ALLOW, list));
    }

    /// Sets a dynamic verdict for the source `addr` (keyed as the model keys it now).
    pub fn dynamic(&mut self, addr: &str, act: u8, list: u16, expires_ns: u64) {
        let key = self.model.key(addr.parse().expect("address"));
        let v = DynVerdict {
            expires_ns,
            action: act,
            list_id: list,
            ..DynVerdict::default()
        };
        self.filter.set_dynamic(key, v).expect("set dynamic");
        self.model.dynamic.insert(key, v);
    }

    /// Sets the judged ports.
    pub fn ports(&mut self, list: &[u16]) {
        self.filter.set_ports(list).expect("set ports");
        self.model.ports = vec![false; 65536];
        for &p in list {
            self.model.ports[usize::from(p)] = true;
        }
    }

    /// Turns the rate limit on with `burst` SYNs per source and a cost of one hour per SYN
    /// (so nothing refills while a test runs), or off.
    pub fn ratelimit(&mut self, burst: Option<u64>) {
        const COST: u64 = 3600 * 1_000_000_000;
        let c = self.filter.config();
        let c = match burst {
            Some(b) => Config {
                flags: c.flags | config::FLAG_RATELIMIT,
                rl_cost_ns: COST,
                rl_cap_ns: COST * b,
                ..c
            },
            None => Config {
                flags: c.flags & !config::FLAG_RATELIMIT,
                ..c
            },
        };
        self.filter.set_config(c).expect("set config");
        self.model.burst = burst;
    }

    /// Keys IPv6 state by /128 (`on`) or /64.
    pub fn v6_full(&mut self, on: bool) {
        let c = self.filter.config();
        let flags = if on {
            c.flags | config::FLAG_V6_FULL
        } else {
            c.flags & !config::FLAG_V6_FULL
        };
        self.filter
            .set_config(Config { flags, ..c })
            .expect("set config");
        self.model.v6_full = on;
    }

    /// Runs `frame` through the program once and the model, and reports both.
    pub fn run(&mut self, frame: &[u8]) -> Observed {
        let now = boottime_ns();
        let decision = self.model.decide(frame, now);
        if decision.reason == reason::BLOCK {
            *self.hits.entry(decision.list_id).or_default() += 1;
        }
        let tr = self
            .filter
            .test_run(frame, 1)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {}: {e}", hex(frame)));
        let after = self.filter.counters().expect("read counters");
        let counted = after
            .iter()
            .zip(&self.counters)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i as u32, a.wrapping_sub(*b)))
            .collect();
        self.counters = after;
        Observed {
            decision,
            action: tr.action,
            frame: tr.frame,
            counted,
            ns_per_run: tr.ns_per_run,
        }
    }

    /// Runs `frame` and checks the program against the rules: the XDP action, the one
    /// counter it must bump, an untouched frame on PASS and a correct reset on TX.
    pub fn check(&mut self, frame: &[u8]) -> Result<Observed, String> {
        let o = self.run(frame);
        let mut errs = Vec::new();
        let d = &o.decision;
        if o.action != d.xdp() {
            let kind = match (d.xdp(), o.action) {
                (XDP_DROP | XDP_TX, XDP_PASS) => "a SYN the rules stop was passed: ",
                (XDP_PASS, XDP_DROP | XDP_TX) => "a frame the rules pass was stopped: ",
                _ => "",
            };
            errs.push(format!(
                "{kind}program returned {}, rules say {d}",
                xdp_name(o.action)
            ));
        }
        let want: Vec<u32> = std::iter::once(d.reason)
            .chain(d.alt_reason)
            .map(|r| counters::slot(r, d.action))
            .collect();
        let ok = matches!(o.counted.as_slice(), [(s, 1)] if want.contains(s));
        if !ok {
            errs.push(format!(
                "counters changed {:?}, want exactly one of {:?} +1",
                o.counted
                    .iter()
                    .map(|(s, n)| format!("{} +{n}", slot_name(*s)))
                    .collect::<Vec<_>>(),
                want.iter().map(|s| slot_name(*s)).collect::<Vec<_>>()
            ));
        }
        match o.action {
            XDP_PASS if o.frame != frame => {
                errs.push(format!("passed frame was modified: {}", hex(&o.frame)));
            }
            XDP_TX => match &d.syn {
                Some(syn) => {
                    if let Err(e) = check_reset(frame, syn, &o.frame) {
                        errs.push(e);
                    }
                }
                None => errs.push(format!("TX of a frame that is no SYN: {}", hex(&o.frame))),
            },
            _ => {}
        }
        if errs.is_empty() {
            Ok(o)
        } else {
            Err(format!("{}\n    frame {}", errs.join("\n    "), hex(frame)))
        }
    }

    /// Compares the program's block hits per list id with what the rules expect.
    pub fn check_list_hits(&self) -> Result<(), String> {
        let got: BTreeMap<u16, u64> = self
            .filter
            .list_hits()
            .expect("read list hits")
            .into_iter()
            .collect();
        if got == self.hits {
            Ok(())
        } else {
            Err(format!("block hits per list {got:?}, want {:?}", self.hits))
        }
    }
}
