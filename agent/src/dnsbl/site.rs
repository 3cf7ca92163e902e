//! postscreen's `postscreen_dnsbl_sites` syntax and scoring, so a site moves its postscreen
//! settings over unchanged (postconf(5)): `domain[=filter][*weight]`, where the filter is
//! `d.d.d.d` and each `d` is a number or `[...]` holding `;`-separated numbers and `a..b`
//! ranges. Hand-written: no crate parses this syntax.

use std::{fmt, net::Ipv4Addr, str::FromStr};

/// One `postscreen_dnsbl_sites` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The zone, lower case, without a trailing dot.
    pub domain: String,
    /// Which answers count; `None`: any answer that is not an error code.
    pub filter: Option<Filter>,
    /// Added to the score once when any answer matches (postscreen: "at most once" per entry);
    /// negative for allowlists (DNSWL).
    pub weight: i32,
}

/// The `=filter` of a site: a set of allowed values per octet of the answer.
#[derive(Clone, PartialEq, Eq)]
pub struct Filter {
    /// 256 bits per octet.
    octets: [[u64; 4]; 4],
    text: String,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Filter {
    /// Whether `a` is one of the answers the filter accepts.
    pub fn matches(&self, a: Ipv4Addr) -> bool {
        a.octets()
            .iter()
            .zip(&self.octets)
            .all(|(&o, set)| set[usize::from(o / 64)] & (1 << (o % 64)) != 0)
    }
}

/// Why a site spec was refused; the spec is named by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    /// Nothing before `=` or `*`.
    #[error("no domain")]
    NoDomain,
    /// The domain is not a DNS name.
    #[error("{0:?} is not a domain name (labels of letters, digits, - and _)")]
    BadDomain(String),
    /// The weight is not an integer.
    #[error("weight {0:?} is not an integer such as 3 or -2")]
    BadWeight(String),
    /// The filter is not `d.d.d.d` with numbers or `[..]` patterns.
    #[error("filter {filter:?}: {why}")]
    BadFilter {
        /// The filter as written.
        filter: String,
        /// What is wrong with it.
        why: String,
    },
}

impl FromStr for Site {
    type Err = SiteError;

    fn from_str(spec: &str) -> Result<Self, SiteError> {
        // postscreen splits the weight at the last '*', then the filter at the first '='.
        let (rest, weight) = match spec.rsplit_once('*') {
            Some((r, w)) => (
                r,
                w.trim()
                    .parse::<i32>()
                    .map_err(|_| SiteError::BadWeight(w.to_owned()))?,
            ),
            None => (spec, 1),
        };
        let (domain, filter) = match rest.split_once('=') {
            Some((d, f)) => (d, Some(parse_filter(f)?)),
            None => (rest, None),
        };
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() {
            return Err(SiteError::NoDomain);
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if domain.len() > 200 || !domain.split('.').all(label_ok) {
            return Err(SiteError::BadDomain(domain));
        }
        Ok(Site {
            domain,
            filter,
            weight,
        })
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.domain)?;
        if let Some(flt) = &self.filter {
            write!(f, "={}", flt.text)?;
        }
        if self.weight != 1 {
            write!(f, "*{}", self.weight)?;
        }
        Ok(())
    }
}

fn parse_filter(text: &str) -> Result<Filter, SiteError> {
    let bad = |why: String| SiteError::BadFilter {
        filter: text.to_owned(),
        why,
    };
    // Octets are split at dots outside brackets: `[2..11]` holds dots of its own.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(bad("unbalanced [ ]".into()));
        }
    }
    parts.push(&text[start..]);
    if parts.len() != 4 {
        return Err(bad("needs four octets, d.d.d.d".into()));
    }
    let mut octets = [[0u64; 4]; 4];
    for (set, part) in octets.iter_mut().zip(parts) {
        let num = |s: &str| {
            s.trim()
                .parse::<u8>()
                .map_err(|_| bad(format!("{s:?} is not a number 0-255")))
        };
        let mut add = |lo: u8, hi: u8| {
            for o in lo..=hi {
                set[usize::from(o / 64)] |= 1 << (o % 64);
            }
        };
        match part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            Some(inner) => {
                for item in inner.split(';') {
                    match item.split_once("..") {
                        Some((a, b)) => {
                            let (a, b) = (num(a)?, num(b)?);
                            if a > b {
                                return Err(bad(format!("range {item:?} runs backwards")));
                            }
                            add(a, b);
                        }
                        None => {
                            let n = num(item)?;
                            add(n, n);
                        }
                    }
                }
            }
            None => {
                let n = num(part)?;
                add(n, n);
            }
        }
    }
    Ok(Filter {
        octets,
        text: text.to_owned(),
    })
}

/// Parses a site list as postscreen takes it: entries separated by commas or whitespace.
pub fn parse_sites(text: &str) -> Vec<Result<Site, (String, SiteError)>> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|e| (s.to_owned(), e)))
        .collect()
}

/// Whether an answer is a DNSBL error code rather than a listing: Spamhaus's
/// 127.255.255.252 (typing error), .254 (query via a public resolver) and .255 (excessive
/// queries), and anything outside 127/8 (RFC 5782 2.3: answers are in 127/8; a wildcard or a
/// hijacking resolver answers elsewhere).
pub fn is_error_code(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] != 127 || (o[1] == 255 && o[2] == 255 && matches!(o[3], 252 | 254 | 255))
}

/// The result of scoring one address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub score: i32,
    /// `zone=answer` of every entry with a positive weight that matched.
    pub listed: Vec<String>,
    /// `zone=answer` of every entry with a negative (or zero) weight that matched.
    pub allowed_by: Vec<String>,
}

/// Adds up the weights of the entries whose zone answered a matching address, each entry
/// once. `answers(domain)` gives the zone's listing answers (error codes already removed),
/// or `None` when it did not list the address or could not be asked.
pub fn tally<'a>(sites: &[Site], answers: impl Fn(&str) -> Option<&'a [Ipv4Addr]>) -> Tally {
    let mut t = Tally::default();
    for s in sites {
        let Some(got) = answers(&s.domain) else {
            continue;
        };
        let hit = got
            .iter()
            .find(|a| s.filter.as_ref().is_none_or(|f| f.matches(**a)));
        if let Some(a) = hit {
            t.score = t.score.saturating_add(s.weight);
            let name = format!("{}={a}", s.domain);
            if s.weight > 0 {
                t.listed.push(name);
            } else {
                t.allowed_by.push(name);
            }
        }
    }
    t
}

/// What postscreen makes of a score: blocked at `threshold` or above (an inclusive lower
/// bound, postscreen_dnsbl_threshold), allowlisted at `allowlist_threshold` or below when
/// that is negative (postscreen_dnsbl_allowlist_threshold: 0 disables it).
pub fn judge(score: i32, threshold: i32, allowlist_threshold: i32) -> (bool, bool) {
    let blocked = score >= threshold;
    let allowlisted = allowlist_threshold < 0 && score <= allowlist_threshold;
    (blocked && !allowlisted, allowlisted)
}

/// The name to query for `ip` in `zone`: IPv4 octets reversed, IPv6 nibbles reversed
/// (RFC 5782 2.1, 2.4), fully qualified so no search domain is ever appended.
pub fn query_name(ip: std::net::IpAddr, zone: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(80);
    match ip {
        std::net::IpAddr::V4(a) => {
            let o = a.octets();
            let _ = write!(s, "{}.{}.{}.{}", o[3], o[2], o[1], o[0]);
        }
        std::net::IpAddr::V6(a) => {
            for b in a.octets().iter().rev() {
                let _ = write!(s, "{:x}.{:x}.", b & 0xf, b >> 4);
            }
            s.pop();
        }
    }
    let _ = write!(s, ".{zone}.");
    s
}
