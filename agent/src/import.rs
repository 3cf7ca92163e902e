//! Blocklist files in the formats sites already have: plain IP/CIDR lists, Spamhaus
//! DROP/EDROP (text and JSON lines) and rbldnsd ip4set/ip4trie/ip6trie data.
//!
//! A bad line never aborts a parse: it is collected with its number and the good lines are
//! kept, so the caller decides whether a list with errors is still worth loading (the config
//! refuses it; a feed may keep its last good copy).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::Deserialize;

use crate::prefix::Prefix;

/// A list file's syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// One address or CIDR per line; `#` and `;` start comments.
    Plain,
    /// Spamhaus DROP/EDROP: `CIDR ; SBLnnn` lines, or the JSON-lines `drop_v4.json` form.
    SpamhausDrop,
    /// rbldnsd ip4set, ip4trie and ip6trie data files.
    Rbldnsd,
}

/// A format name that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The name is not `plain`, `spamhaus-drop` or `rbldnsd`.
    #[error("unknown list format {text:?} (expected plain, spamhaus-drop or rbldnsd)")]
    Unknown {
        /// The name given.
        text: String,
    },
}

impl Format {
    /// Every format with its name, as the config and the CLI spell them.
    pub const ALL: [(Format, &'static str); 3] = [
        (Format::Plain, "plain"),
        (Format::SpamhausDrop, "spamhaus-drop"),
        (Format::Rbldnsd, "rbldnsd"),
    ];

    /// The name as the config and the CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::SpamhausDrop => "spamhaus-drop",
            Format::Rbldnsd => "rbldnsd",
        }
    }

    /// Guesses the format from the start of a file (the first 64 lines are looked at):
    /// a `; Spamhaus` header, `; SBL` trailers or JSON objects with a `cidr` mean Spamhaus
    /// DROP; rbldnsd's `:` default-value, `$` special and `!` exclusion lines mean rbldnsd;
    /// anything else is plain. Spamhaus wins over rbldnsd because its marks are unambiguous.
    pub fn detect(head: &str) -> Format {
        let mut rbldnsd = false;
        for line in head.lines().take(64) {
            let t = line.trim();
            if t.starts_with(';') && t.to_ascii_lowercase().contains("spamhaus")
                || t.contains("; SBL")
                || t.starts_with('{') && t.contains("\"cidr\"")
            {
                return Format::SpamhausDrop;
            }
            rbldnsd |= t.starts_with([':', '$', '!']);
        }
        if rbldnsd {
            Format::Rbldnsd
        } else {
            Format::Plain
        }
    }
}

impl FromStr for Format {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(f, _)| *f)
            .ok_or_else(|| FormatError::Unknown { text: s.to_owned() })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One listed prefix and what the list says about it (Spamhaus SBL id, rbldnsd TXT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportEntry {
    /// The listed network.
    pub prefix: Prefix,
    /// The list's own words for it, if any.
    pub reason: Option<String>,
}

/// A line that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// The line as written, cut to [`MAX_LINE_SHOWN`] characters.
    pub text: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Longest line text kept in a [`LineError`]: enough to recognize it, not a megabyte.
pub const MAX_LINE_SHOWN: usize = 200;

/// What a parse found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Usable entries, in file order (a range contributes several).
    pub entries: Vec<ImportEntry>,
    /// Unusable lines, in file order.
    pub errors: Vec<LineError>,
}

/// Parses a whole list in `format`.
pub fn parse(text: &str, format: Format) -> Parsed {
    // Files saved by Windows editors start with a byte order mark; it is not part of line 1.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Parsed::default();
    for (i, line) in text.lines().enumerate() {
        let res = match format {
            Format::Plain => plain_line(line, &mut out.entries),
            Format::SpamhausDrop => spamhaus_line(line, &mut out.entries),
            Format::Rbldnsd => rbldnsd_line(line, &mut out.entries),
        };
        if let Err(message) = res {
            out.errors.push(LineError {
                line: i + 1,
                text: cut(line),
                message,
            });
        }
    }
    out
}

fn cut(line: &str) -> String {
    match line.char_indices().nth(MAX_LINE_SHOWN) {
        Some((at, _)) => line[..at].to_owned(),
        None => line.to_owned(),
    }
}

/// A line's failure, already worded for the administrator.
type LineResult = Result<(), String>;

fn plain_line(line: &str, out: &mut Vec<ImportEntry>) -> LineResult {
    let data = line.find(['#', ';']).map_or(line, |i| &line[..i]).trim();
    if data.is_empty() {
        return Ok(());
    }
    match data.parse::<Prefix>() {
        Ok(prefix) => {
            out.push(ImportEntry {
                prefix,
                reason: None,
            });
            Ok(())
        }
        // Ranges are an rbldnsd feature; say so rather than only "not an IP address".
        Err(e) if looks_like_range(data) => Err(format!("{e}; address ranges need format rbldnsd")),
        Err(e) => Err(e.to_string()),
    }
}

fn looks_like_range(data: &str) -> bool {
    data.split_once('-')
        .is_some_and(|(a, _)| a.trim().parse::<std::net::IpAddr>().is_ok())
}

/// One record of Spamhaus' JSON-lines DROP files; other fields (`rir`, ...) are ignored.
#[derive(Deserialize)]
struct DropRecord<'a> {
    #[serde(borrow)]
    cidr: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    sblid: Option<std::borrow::Cow<'a, str>>,
    /// `"metadata"` on the trailing line with the timestamp and record count.
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

fn spamhaus_line(line: &str, out: &mut Vec<ImportEntry>) -> LineResult {
    let t = line.trim();
    if t.is_empty() || t.starts_with([';', '#']) {
        return Ok(());
    }
    if t.starts_with('{') {
        let rec: DropRecord<'_> =
            serde_json::from_str(t).map_err(|e| format!("invalid JSON record: {e}"))?;
        if rec.kind.as_deref() == Some("metadata") {
            return Ok(());
        }
        let cidr = rec.cidr.ok_or("JSON record has no \"cidr\"")?;
        let prefix = cidr.parse::<Prefix>().map_err(|e| e.to_string())?;
        out.push(ImportEntry {
            prefix,
            reason: rec.sblid.map(|s| s.into_owned()).filter(|s| !s.is_empty()),
        });
        return Ok(());
    }
    let (data, reason) = match t.split_once(';') {
        Some((d, r)) => (d.trim(), Some(r.trim()).filter(|r| !r.is_empty())),
        None => (t, None),
    };
    let prefix = data.parse::<Prefix>().map_err(|e| e.to_string())?;
    out.push(ImportEntry {
        prefix,
        reason: reason.map(str::to_owned),
    });
    Ok(())
}

fn rbldnsd_line(line: &str, out: &mut Vec<ImportEntry>) -> LineResult {
    let t = line.trim();
    // `:` sets the default A/TXT, `$` (also `#$`, `;$`, `:$`) are specials like $SOA,
    // $TTL or $DATASET: none of them lists anything.
    if t.is_empty() || t.starts_with(['#', ';', ':', '$']) {
        return Ok(());
    }
    // An exclusion carves a hole into a wider entry, which a list of prefixes cannot
    // express; dropping it silently would block what the list means to exempt.
    if t.starts_with('!') {
        return Err("exclusions (!) are not supported".to_owned());
    }
    let (key, value) = match t.split_once(char::is_whitespace) {
        Some((k, v)) => (k, v.trim_start()),
        None => (t, ""),
    };
    let reason = rbldnsd_txt(value);
    let push = |out: &mut Vec<ImportEntry>, prefix| {
        out.push(ImportEntry {
            prefix,
            reason: reason.map(str::to_owned),
        })
    };
    if key.contains(':') {
        // ip6trie: ordinary IPv6 text with an optional length. One that starts with "::"
        // was taken for a default-value line above, as rbldnsd does: write "0::" there.
        push(out, key.parse::<Prefix>().map_err(|e| e.to_string())?);
    } else {
        for p in ip4set_entry(key).map_err(|why| format!("invalid ip4set entry {key:?}: {why}"))? {
            push(out, p);
        }
    }
    Ok(())
}

/// The TXT part of an rbldnsd value: `:A:TXT` (both parts optional), a bare `TXT`, or a
/// comment after the entry (`127/8 ; loopback`), which means no value.
fn rbldnsd_txt(value: &str) -> Option<&str> {
    let txt = if value.starts_with(['#', ';']) {
        ""
    } else if let Some(rest) = value.strip_prefix(':') {
        rest.split_once(':').map_or("", |(_a, txt)| txt)
    } else {
        value
    };
    let txt = txt.trim();
    (!txt.is_empty()).then_some(txt)
}

/// An ip4set key: `a.b.c.d`, an octet prefix (`10.1.2` is 10.1.2.0/24, `10` is 10/8),
/// either with `/len`, or a range of them with `-`, where a one-octet end replaces the last
/// octet written in the start (`127.0.0.1-255`, `127.16-31`) and the end is filled with 255s.
fn ip4set_entry(key: &str) -> Result<Vec<Prefix>, String> {
    if let Some((a, b)) = key.split_once('-') {
        let (first, n) = octets(a)?;
        let (end, m) = octets(b)?;
        let last = if m == 1 && n > 1 {
            let shift = 8 * (4 - n);
            (first & !(0xff << shift)) | (end >> 24 << shift) | ones(n)
        } else {
            end | ones(m)
        };
        return Prefix::cover_range(Ipv4Addr::from(first).into(), Ipv4Addr::from(last).into())
            .ok_or_else(|| "the range ends before it starts".to_owned());
    }
    let (a, len) = match key.split_once('/') {
        Some((a, l)) => {
            let len = (!l.is_empty() && l.len() <= 2 && l.bytes().all(|b| b.is_ascii_digit()))
                .then(|| l.parse::<u8>().ok())
                .flatten()
                .filter(|&l| l <= 32)
                .ok_or_else(|| format!("bad prefix length {l:?}"))?;
            (a, Some(len))
        }
        None => (key, None),
    };
    let (addr, n) = octets(a)?;
    let len = len.unwrap_or(8 * n as u8);
    Prefix::new(Ipv4Addr::from(addr).into(), len)
        .map(|p| vec![p])
        .map_err(|e| e.to_string())
}

/// The host bits below `n` written octets, all ones.
fn ones(n: u32) -> u32 {
    if n >= 4 { 0 } else { u32::MAX >> (8 * n) }
}

/// 1 to 4 dotted decimal octets, left-aligned into an address, and how many there were.
fn octets(text: &str) -> Result<(u32, u32), String> {
    let mut addr = 0u32;
    let mut n = 0u32;
    for part in text.split('.') {
        if n == 4 {
            return Err("more than 4 octets".to_owned());
        }
        let v = (!part.is_empty() && part.len() <= 3 && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<u32>().ok())
            .flatten()
            .filter(|&v| v <= 255)
            .ok_or_else(|| format!("bad octet {part:?}"))?;
        addr |= v << (24 - 8 * n);
        n += 1;
    }
    Ok((addr, n))
}

#[cfg(test)]
mod tests;
