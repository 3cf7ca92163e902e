//! IP prefixes (CIDR blocks) as every list, feed and the policy store hold them.
//!
//! Our own small type rather than a crate: we need exactly the postscreen/iptables parsing
//! convention (host bits are masked, a bare address is a host route, IPv4-mapped IPv6 is
//! IPv4), integer addresses that feed the map builders directly, and speed on feeds of a
//! million lines.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 or IPv6 network. The host bits of `addr` are always zero when the value comes
/// from [`Prefix::new`], parsing or deserializing; the fields are public for matching.
///
/// The derived order puts IPv4 before IPv6 and a network before the networks inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prefix {
    /// IPv4: `addr` in host byte order, `len` 0..=32.
    V4 {
        /// Network address, host byte order.
        addr: u32,
        /// Prefix length in bits.
        len: u8,
    },
    /// IPv6: `addr` in host byte order, `len` 0..=128.
    V6 {
        /// Network address, host byte order.
        addr: u128,
        /// Prefix length in bits.
        len: u8,
    },
}

/// Why a text is not a prefix. Every variant names the text, shortened if it is long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The part before `/` is neither an IPv4 nor an IPv6 address.
    #[error("invalid prefix {text:?}: not an IP address")]
    Address {
        /// The offending text.
        text: String,
    },
    /// The part after `/` is not a decimal number.
    #[error("invalid prefix {text:?}: prefix length is not a number")]
    Length {
        /// The offending text.
        text: String,
    },
    /// The prefix length exceeds the address width.
    #[error("invalid prefix {text:?}: /{len} is longer than the {max}-bit address")]
    TooLong {
        /// The offending text.
        text: String,
        /// The length given.
        len: u32,
        /// 32 or 128.
        max: u8,
    },
    /// [`Prefix::parse_strict`] only: bits are set past the prefix length.
    #[error("invalid prefix {text:?}: host bits are set (the network is {network})")]
    HostBits {
        /// The offending text.
        text: String,
        /// What the lenient parser would have made of it.
        network: Prefix,
    },
}

/// Longest text quoted in an error: a garbage line of megabytes must not be copied around.
const MAX_SHOWN: usize = 100;

fn shown(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

const fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

const fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

impl Prefix {
    /// The network of `len` bits around `addr`; host bits are cleared. An IPv4-mapped IPv6
    /// address with `len >= 96` becomes the IPv4 prefix it stands for.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let too_long = |max| PrefixError::TooLong {
            text: format!("{addr}/{len}"),
            len: len.into(),
            max,
        };
        match addr {
            IpAddr::V4(a) if len <= 32 => Ok(Self::v4_masked(a.into(), len)),
            IpAddr::V4(_) => Err(too_long(32)),
            IpAddr::V6(a) if len <= 128 => Ok(Self::v6_masked(a, len)),
            IpAddr::V6(_) => Err(too_long(128)),
        }
    }

    fn v4_masked(addr: u32, len: u8) -> Self {
        Self::V4 {
            addr: addr & mask4(len),
            len,
        }
    }

    /// `len <= 128` is the caller's promise.
    fn v6_masked(addr: Ipv6Addr, len: u8) -> Self {
        // A mapped address shorter than /96 also covers non-mapped space: it stays IPv6.
        match addr.to_ipv4_mapped() {
            Some(v4) if len >= 96 => Self::v4_masked(v4.into(), len - 96),
            _ => Self::V6 {
                addr: u128::from(addr) & mask6(len),
                len,
            },
        }
    }

    /// Parses `ADDR` or `ADDR/LEN` and refuses set host bits (`192.0.2.1/24`), for inputs
    /// where a typo must not silently widen or move a rule.
    pub fn parse_strict(text: &str) -> Result<Self, PrefixError> {
        let (addr, len) = split(text)?;
        let p = Self::new(addr, len).map_err(|_| too_long(text, addr, len))?;
        if p.first() != normalize(addr) {
            return Err(PrefixError::HostBits {
                text: shown(text),
                network: p,
            });
        }
        Ok(p)
    }

    /// Shorter than /8 (IPv4) or /16 (IPv6): a rule this wide blocks a large share of all
    /// mail, so the CLI and API take it only with `--force`.
    /// One address as the dynamic map keys it: an IPv4 /32, or an IPv6 /64 or longer.
    pub fn is_host_or_v6_64(&self) -> bool {
        match *self {
            Self::V4 { len, .. } => len == 32,
            Self::V6 { len, .. } => len >= 64,
        }
    }

    pub fn too_broad(&self) -> bool {
        match *self {
            Self::V4 { len, .. } => len < 8,
            Self::V6 { len, .. } => len < 16,
        }
    }

    /// Prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        match *self {
            Self::V4 { len, .. } | Self::V6 { len, .. } => len,
        }
    }

    /// True for IPv4 (including IPv4-mapped IPv6 input, which is normalized to IPv4).
    pub fn is_v4(&self) -> bool {
        matches!(self, Self::V4 { .. })
    }

    /// True for a single address (/32 or /128).
    pub fn is_host(&self) -> bool {
        match *self {
            Self::V4 { len, .. } => len == 32,
            Self::V6 { len, .. } => len == 128,
        }
    }

    /// The network address, the lowest address inside.
    pub fn first(&self) -> IpAddr {
        match *self {
            Self::V4 { addr, .. } => IpAddr::V4(addr.into()),
            Self::V6 { addr, .. } => IpAddr::V6(addr.into()),
        }
    }

    /// The highest address inside.
    pub fn last(&self) -> IpAddr {
        match *self {
            Self::V4 { addr, len } => IpAddr::V4((addr | !mask4(len)).into()),
            Self::V6 { addr, len } => IpAddr::V6((addr | !mask6(len)).into()),
        }
    }

    /// Whether `ip` is inside. An IPv4-mapped IPv6 address counts as its IPv4 address, as
    /// a dual-stack socket reports IPv4 clients that way.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, normalize(ip)) {
            (Self::V4 { addr, len }, IpAddr::V4(a)) => u32::from(a) & mask4(len) == addr,
            (Self::V6 { addr, len }, IpAddr::V6(a)) => u128::from(a) & mask6(len) == addr,
            _ => false,
        }
    }

    /// Whether `other` lies entirely inside `self` (a prefix contains itself).
    pub fn contains_prefix(&self, other: &Prefix) -> bool {
        match (*self, *other) {
            (Self::V4 { addr, len }, Self::V4 { addr: o, len: ol }) => {
                ol >= len && o & mask4(len) == addr
            }
            (Self::V6 { addr, len }, Self::V6 { addr: o, len: ol }) => {
                ol >= len && o & mask6(len) == addr
            }
            _ => false,
        }
    }

    /// The fewest prefixes that cover exactly `first..=last`, in address order; `None` when
    /// the two are of different families or `last < first`. An IPv4 range never needs more
    /// than 62 prefixes, an IPv6 one 254.
    pub fn cover_range(first: IpAddr, last: IpAddr) -> Option<Vec<Prefix>> {
        match (normalize(first), normalize(last)) {
            (IpAddr::V4(f), IpAddr::V4(l)) if f <= l => Some(
                cover(u32::from(f).into(), u32::from(l).into(), 32)
                    .map(|(a, len)| Self::V4 {
                        addr: a as u32,
                        len,
                    })
                    .collect(),
            ),
            (IpAddr::V6(f), IpAddr::V6(l)) if f <= l => Some(
                cover(f.into(), l.into(), 128)
                    .map(|(addr, len)| Self::V6 { addr, len })
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// Aligned blocks covering `lo..=hi` in a `width`-bit space, as (address, length).
fn cover(lo: u128, hi: u128, width: u32) -> impl Iterator<Item = (u128, u8)> {
    let mut next = Some(lo);
    std::iter::from_fn(move || {
        let lo = next?;
        // The biggest block is limited by the alignment of `lo` and by what is left.
        let align = lo.trailing_zeros().min(width);
        let left = hi - lo; // number of addresses left, minus one
        let fits = if left == u128::MAX {
            128
        } else {
            127 - (left + 1).leading_zeros()
        };
        let bits = align.min(fits);
        let end = if bits == 128 {
            u128::MAX
        } else {
            lo | ((1u128 << bits) - 1)
        };
        next = (end < hi).then(|| end + 1);
        Some((lo, (width - bits) as u8))
    })
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they carry.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn too_long(text: &str, addr: IpAddr, len: u8) -> PrefixError {
    PrefixError::TooLong {
        text: shown(text),
        len: len.into(),
        max: if addr.is_ipv4() { 32 } else { 128 },
    }
}

/// `ADDR[/LEN]` into its parts; a bare address gets the full length of its family.
fn split(text: &str) -> Result<(IpAddr, u8), PrefixError> {
    let (a, l) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr = if a.contains(':') {
        Ipv6Addr::from_str(a).map(IpAddr::V6)
    } else {
        Ipv4Addr::from_str(a).map(IpAddr::V4)
    }
    .map_err(|_| PrefixError::Address { text: shown(text) })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let Some(l) = l else { return Ok((addr, max)) };
    // Digits only: u32's FromStr would also take "+24", which no prefix list writes.
    if l.is_empty() || l.len() > 9 || !l.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PrefixError::Length { text: shown(text) });
    }
    let len: u32 = l
        .parse()
        .map_err(|_| PrefixError::Length { text: shown(text) })?;
    if len > max.into() {
        return Err(PrefixError::TooLong {
            text: shown(text),
            len,
            max,
        });
    }
    Ok((addr, len as u8))
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Lenient, as postscreen and iptables are: host bits are cleared
    /// (`192.0.2.1/24` is `192.0.2.0/24`), a bare address is a /32 or /128.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, len) = split(text)?;
        Self::new(addr, len).map_err(|_| too_long(text, addr, len))
    }
}

impl From<IpAddr> for Prefix {
    /// The host prefix of one address.
    fn from(ip: IpAddr) -> Self {
        match normalize(ip) {
            IpAddr::V4(a) => Self::V4 {
                addr: a.into(),
                len: 32,
            },
            IpAddr::V6(a) => Self::V6 {
                addr: a.into(),
                len: 128,
            },
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4 { addr, len } => write!(f, "{}/{len}", Ipv4Addr::from(addr)),
            Self::V6 { addr, len } => write!(f, "{}/{len}", Ipv6Addr::from(addr)),
        }
    }
}

/// The text of an IPv4 prefix as [`Display`](fmt::Display) writes it, put together without
/// `fmt`: the journal and the list files write one per entry, and std's address formatting
/// (padding support per octet) was most of their time. The longest is 18 bytes.
pub struct V4Text {
    buf: [u8; 18],
    len: usize,
}

impl V4Text {
    pub fn new(addr: u32, len: u8) -> Self {
        let mut t = Self {
            buf: [0; 18],
            len: 0,
        };
        let mut num = itoa::Buffer::new();
        for (i, o) in addr.to_be_bytes().into_iter().enumerate() {
            if i > 0 {
                t.push(b".");
            }
            t.push(num.format(o).as_bytes());
        }
        t.push(b"/");
        t.push(num.format(len).as_bytes());
        t
    }

    fn push(&mut self, s: &[u8]) {
        self.buf[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
    }

    pub fn as_str(&self) -> &str {
        // Digits, dots and a slash only.
        std::str::from_utf8(&self.buf[..self.len]).expect("ASCII")
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Self::V4 { addr, len } => s.serialize_str(V4Text::new(addr, len).as_str()),
            Self::V6 { .. } => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Prefix;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address or CIDR prefix such as \"192.0.2.0/24\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Prefix, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests;
