//! Blocklist files in the formats sites already have: plain IP/CIDR lists, Spamhaus
//! DROP/EDROP (text and JSON lines) and rbldnsd ip4set/ip4trie/ip6trie/ip6tset data.
//!
//! A bad line never aborts a parse: it is collected with its number and the good lines are
//! kept, so the caller decides whether a list with errors is still worth loading (the config
//! refuses it; a feed may keep its last good copy).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::Deserialize;

use crate::policy::prefix::Prefix;

/// A list file's syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// One address or CIDR per line; `#` and `;` start comments.
    Plain,
    /// Spamhaus DROP/EDROP: `CIDR ; SBLnnn` lines, or the JSON-lines `drop_v4.json` form.
    SpamhausDrop,
    /// rbldnsd ip4set, ip4trie, ip6trie and ip6tset data files, exclusions (`!`) applied.
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
    /// Usable entries: in file order for plain and Spamhaus lists (a range contributes
    /// several); for rbldnsd, what the zone lists after exclusions, merged and in address
    /// order.
    pub entries: Vec<ImportEntry>,
    /// Unusable lines, in file order.
    pub errors: Vec<LineError>,
    /// Good lines deliberately not imported (rbldnsd entries whose value is a DNSBL error
    /// code), in file order.
    pub skipped: Vec<SkippedLine>,
}

/// A line that was understood but lists nothing on purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// The line as written, cut to [`MAX_LINE_SHOWN`] characters.
    pub text: String,
    /// Why it was skipped.
    pub message: String,
}

impl fmt::Display for SkippedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a whole list in `format`.
pub fn parse(text: &str, format: Format) -> Parsed {
    // Files saved by Windows editors start with a byte order mark; it is not part of line 1.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if format == Format::Rbldnsd {
        return rbldnsd(text);
    }
    // A big list's second half is parsed on another thread: lines are independent, and a
    // 6M-line DNSBL dump took over a second on one core.
    let half = text.len() / 2;
    let split = text.as_bytes()[half..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| half + i + 1);
    let (first, second) = match split {
        Some(at) if text.len() >= PARALLEL_BYTES => text.split_at(at),
        _ => return parse_lines(text, format).0,
    };
    let ((mut out, before), (rest, _)) = std::thread::scope(|s| {
        let rest = s.spawn(|| parse_lines(second, format));
        let out = parse_lines(first, format);
        let rest = rest
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (out, rest)
    });
    out.entries.extend(rest.entries);
    // The second half's line numbers go on from the first half's.
    out.errors
        .extend(rest.errors.into_iter().map(|e| LineError {
            line: before + e.line,
            ..e
        }));
    out
}

/// Texts this long are parsed on two threads.
const PARALLEL_BYTES: usize = 4 << 20;

/// Parses plain or Spamhaus lines; returns them and how many lines there were.
fn parse_lines(text: &str, format: Format) -> (Parsed, usize) {
    // About one entry per line of a dozen bytes or more: reserved at once rather than grown
    // by copies of millions; untouched where lines are longer.
    let mut out = Parsed {
        entries: Vec::with_capacity(text.len() / 12 + 1),
        ..Parsed::default()
    };
    let mut lines = 0;
    for (i, line) in text.lines().enumerate() {
        let res = match format {
            Format::Plain => plain_line(line, &mut out.entries),
            Format::SpamhausDrop => spamhaus_line(line, &mut out.entries),
            Format::Rbldnsd => unreachable!("parsed by rbldnsd()"),
        };
        if let Err(message) = res {
            out.errors.push(LineError {
                line: i + 1,
                text: cut(line),
                message,
            });
        }
        lines = i + 1;
    }
    (out, lines)
}

/// A list update as a difference (`block import --patch`).
#[derive(Clone, Debug, PartialEq)]
pub struct Patch {
    /// The format the changed lines were read in.
    pub format: Format,
    /// Entries of `+` lines, in file order.
    pub adds: Vec<ImportEntry>,
    /// Prefixes of `-` lines, in file order.
    pub removes: Vec<Prefix>,
    /// Unusable changed lines, numbered as in the patch.
    pub errors: Vec<LineError>,
}

/// Parses a list update as `diff -u old new` prints it (headers, `@@` hunks and context
/// lines are ignored) or as bare `+`/`-` lines: each changed line is a line of a plain or
/// Spamhaus DROP list, `format` (detected from the changed lines when None). rbldnsd data
/// is refused: its exclusions make a line removed from one place change a range elsewhere,
/// so only a replacement says what the zone means. Err for input that holds no changed line
/// yet is not empty: likely a whole list sent with `--patch` by mistake.
pub fn parse_patch(text: &str, format: Option<Format>) -> Result<Patch, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // A header names the files; its content is never a list line, so it cannot hide one.
    // Whether a line adds (true) or removes (false); None for the rest.
    let changed = |line: &str| -> Option<bool> {
        if line.starts_with("--- ") || line.starts_with("+++ ") {
            return None;
        }
        match line.as_bytes().first() {
            Some(b'+') => Some(true),
            Some(b'-') => Some(false),
            _ => None,
        }
    };
    let format = match format {
        Some(f) => f,
        None => {
            let head: String = text
                .lines()
                .filter(|l| changed(l).is_some())
                .map(|l| &l[1..])
                .take(64)
                .flat_map(|l| [l, "\n"])
                .collect();
            Format::detect(&head)
        }
    };
    if format == Format::Rbldnsd {
        return Err(
            "--patch takes plain or Spamhaus DROP lines, not rbldnsd data (its \
                    exclusions change ranges elsewhere): replace the list with --replace"
                .to_owned(),
        );
    }
    let mut out = Patch {
        format,
        adds: Vec::new(),
        removes: Vec::new(),
        errors: Vec::new(),
    };
    let mut seen_change = false;
    let mut removed = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(add) = changed(line) else {
            continue;
        };
        seen_change = true;
        // The mark is one ASCII byte.
        let body = &line[1..];
        let into = if add { &mut out.adds } else { &mut removed };
        let res = match format {
            Format::SpamhausDrop => spamhaus_line(body, into),
            _ => plain_line(body, into),
        };
        if let Err(message) = res {
            out.errors.push(LineError {
                line: i + 1,
                text: cut(line),
                message,
            });
        }
        out.removes.extend(removed.drain(..).map(|e| e.prefix));
    }
    if !seen_change && text.lines().any(|l| !l.trim().is_empty()) {
        return Err(
            "no line starts with + or -: --patch takes a difference such as \
                    `diff -u old new` prints (to add a whole list, import it without --patch)"
                .to_owned(),
        );
    }
    Ok(out)
}

/// What a CSV `address,score` list holds: each prefix with its score.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scored {
    /// In file order.
    pub entries: Vec<(Prefix, f64)>,
    /// Unusable lines, in file order.
    pub errors: Vec<LineError>,
}

/// Parses `address,score` lines (`#` comments, blank lines, an optional header line such
/// as `ip,score` before the first entry; further columns are ignored). Host bits are
/// cleared like everywhere else.
pub fn parse_csv(text: &str) -> Scored {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Scored::default();
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let data = line.find('#').map_or(line, |at| &line[..at]).trim();
        if data.is_empty() {
            continue;
        }
        let mut fields = data
            .split([',', ';', '\t'])
            .map(|f| f.trim().trim_matches('"'));
        let addr = fields.next().unwrap_or("");
        let score = fields.next();
        let was_first = std::mem::replace(&mut first, false);
        let res = match (addr.parse::<Prefix>(), score.map(str::parse::<f64>)) {
            (Ok(p), Some(Ok(s))) if s.is_finite() => not_everything(p, addr).map(|p| (p, s)),
            (Ok(_), Some(_)) => Err(format!("score {:?} is not a number", score.unwrap_or(""))),
            (Ok(_), None) => Err("no score: expected address,score".to_owned()),
            // A first line naming its columns is a header.
            (Err(_), _)
                if was_first
                    && addr.parse::<f64>().is_err()
                    && score.is_some_and(|s| s.parse::<f64>().is_err()) =>
            {
                continue;
            }
            (Err(e), _) => Err(e.to_string()),
        };
        match res {
            Ok(e) => out.entries.push(e),
            Err(message) => out.errors.push(LineError {
                line: i + 1,
                text: cut(line),
                message,
            }),
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

/// Refuses a /0: in a list it blocks every sender, and a list is where a typo or a broken
/// generator puts one (`0.0.0.0/0`, `::/0`, `::ffff:0:0/96`); `block add PREFIX --force`
/// takes it on purpose.
/// `written` is the text `p` was parsed from: named as written where that is not `p`
/// (`::ffff:0:0/96` is 0.0.0.0/0, rbldnsd's `0/0` too).
pub fn not_everything(p: Prefix, written: &str) -> Result<Prefix, String> {
    if p.prefix_len() == 0 {
        let written = written.trim();
        let what = if written == p.to_string() {
            p.to_string()
        } else {
            format!("{written} ({p})")
        };
        Err(format!(
            "{what} covers every address: refused in a list (`prefilter block add {p} --force` \
             takes it on purpose)"
        ))
    } else {
        Ok(p)
    }
}

fn plain_line(line: &str, out: &mut Vec<ImportEntry>) -> LineResult {
    let data = line.find(['#', ';']).map_or(line, |i| &line[..i]).trim();
    if data.is_empty() {
        return Ok(());
    }
    match data.parse::<Prefix>() {
        Ok(prefix) => {
            let prefix = not_everything(prefix, data)?;
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
        let prefix = not_everything(cidr.parse::<Prefix>().map_err(|e| e.to_string())?, &cidr)?;
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
    let prefix = not_everything(data.parse::<Prefix>().map_err(|e| e.to_string())?, data)?;
    out.push(ImportEntry {
        prefix,
        reason: reason.map(str::to_owned),
    });
    Ok(())
}

/// rbldnsd's A value for entries that neither the entry nor a `:` line gives one.
const DEFAULT_A: u32 = 0x7f00_0002;

/// 127.255.255.0/24: the answers DNSBLs use for errors (Spamhaus: query refused, ...).
fn is_error_code(a: u32) -> bool {
    a >> 8 == 0x007f_ffff
}

/// One entry of an rbldnsd zone. All are kept until the whole file is read, because a
/// later, more specific entry can cut into an earlier one.
struct Rule {
    prefix: Prefix,
    /// False for exclusions and for entries whose value is an error code.
    listed: bool,
    reason: Option<String>,
}

/// What one data line says.
struct RbldnsdEntry<'a> {
    /// The key as written (`0/0`, a range, an address).
    key: &'a str,
    prefixes: Vec<Prefix>,
    exclude: bool,
    a: u32,
    txt: Option<&'a str>,
}

fn rbldnsd(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut rules = Vec::new();
    let mut default = (DEFAULT_A, None);
    for (i, line) in text.lines().enumerate() {
        let e = match rbldnsd_line(line, &mut default) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(message) => {
                out.errors.push(LineError {
                    line: i + 1,
                    text: cut(line),
                    message,
                });
                continue;
            }
        };
        let listed = !e.exclude && !is_error_code(e.a);
        if !e.exclude && !listed {
            out.skipped.push(SkippedLine {
                line: i + 1,
                text: cut(line),
                message: format!(
                    "value {} is a DNSBL error code, not a listing",
                    Ipv4Addr::from(e.a)
                ),
            });
        }
        // An error-code entry still takes part as a non-listing: the zone answers it,
        // not the wider listing around it, for its addresses.
        let reason = e.txt.filter(|_| listed);
        // A listed /0 fails its line even where exclusions cut it: as a block list, "every
        // sender but these" is a slip far more often than a zone's intent.
        if listed && let Some(&p) = e.prefixes.iter().find(|p| p.prefix_len() == 0) {
            out.errors.push(LineError {
                line: i + 1,
                text: cut(line),
                message: not_everything(p, e.key).expect_err("a /0"),
            });
            continue;
        }
        rules.extend(e.prefixes.into_iter().map(|prefix| Rule {
            prefix,
            listed,
            reason: reason.map(str::to_owned),
        }));
    }
    out.entries = resolve(rules);
    out
}

/// One line of an rbldnsd data file; `None` for lines that list nothing. `default`: the
/// A value and text a `:A:TXT` line set, for the entries after it that give none (the
/// text is the reason a listing shows, as rbldnsd answers it to a TXT query; its `$`,
/// the queried address there, is kept as written).
fn rbldnsd_line<'a>(
    line: &'a str,
    default: &mut (u32, Option<&'a str>),
) -> Result<Option<RbldnsdEntry<'a>>, String> {
    let t = line.trim();
    // `$` lines (also `#$`, `:$`) are specials such as $SOA, $TTL or $DATASET.
    if t.is_empty() || t.starts_with(['#', ';', '$']) || t.starts_with(":$") {
        return Ok(None);
    }
    // A `:` line sets the default value; "::" starts an IPv6 address, as in ip6trie.
    if t.starts_with(':') && !t.starts_with("::") {
        *default = rbldnsd_value(t, default.0)
            .map_err(|why| format!("invalid default value {:?}: {why}", shown(t)))?;
        return Ok(None);
    }
    let (exclude, rest) = match t.strip_prefix('!') {
        Some(r) => (true, r.trim_start()),
        None => (false, t),
    };
    let (key, value) = split_key(rest);
    if key.is_empty() {
        return Err("an exclusion (!) needs an address".to_owned());
    }
    let prefixes = if key.contains(':') {
        vec![ip6_key(key)?]
    } else {
        ip4set_entry(key).map_err(|why| format!("invalid ip4set entry {:?}: {why}", shown(key)))?
    };
    // rbldnsd ignores what follows an exclusion.
    let (a, txt) = if exclude {
        (0, None)
    } else {
        let (a, txt) = rbldnsd_value(value, default.0)
            .map_err(|why| format!("invalid value {:?}: {why}", shown(value)))?;
        (a, txt.or(default.1))
    };
    Ok(Some(RbldnsdEntry {
        key,
        prefixes,
        exclude,
        a,
        txt,
    }))
}

/// The key ends at white space or a comment; an IPv4 key also at a value written straight
/// after it (`192.0.2.1:2:text`), which rbldnsd allows.
fn split_key(rest: &str) -> (&str, &str) {
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '#' || c == ';')
        .unwrap_or(rest.len());
    let mut key = &rest[..end];
    if let Some(colon) = key.find(':')
        && key[..colon].contains('.')
    {
        key = &key[..colon];
    }
    (key, rest[key.len()..].trim_start())
}

/// An rbldnsd value, `:A:TXT` (TXT optional), a bare `TXT` (with the default A), or a
/// comment after the entry (`127/8 ; loopback`), which means the default value.
fn rbldnsd_value(value: &str, default_a: u32) -> Result<(u32, Option<&str>), String> {
    if value.is_empty() || value.starts_with(['#', ';']) {
        return Ok((default_a, None));
    }
    let Some(rest) = value.strip_prefix(':') else {
        return Ok((default_a, txt(value)));
    };
    let end = rest
        .find(|c: char| c == ':' || c == '#' || c.is_whitespace())
        .unwrap_or(rest.len());
    let a = a_value(&rest[..end])?;
    let rest = rest[end..].trim_start();
    match rest.strip_prefix(':') {
        Some(t) => Ok((a, txt(t))),
        None if rest.is_empty() || rest.starts_with('#') => Ok((a, None)),
        None => Err("text after the A value needs a \":\" before it".to_owned()),
    }
}

/// A TXT value; one that starts with `#` is a comment, as in rbldnsd.
fn txt(t: &str) -> Option<&str> {
    let t = t.trim();
    (!t.is_empty() && !t.starts_with('#')).then_some(t)
}

/// An A value as rbldnsd reads it: like inet_aton the last number written is the last
/// octet (`127.2` is 127.0.0.2), and a lone number is in 127.0.0.0/24 (`2` is 127.0.0.2).
fn a_value(text: &str) -> Result<u32, String> {
    if text.is_empty() {
        return Err("the A value is missing".to_owned());
    }
    let (addr, n) = octets(text).map_err(|why| format!("bad A value: {why}"))?;
    let last = (addr >> (32 - 8 * n)) & 0xff;
    let a = match n {
        1 => 0x7f00_0000 | last,
        _ => (addr & (u32::MAX << (32 - 8 * (n - 1)))) | last,
    };
    if last == 0 && n == 1 || a == 0 {
        return Err(format!("A value {:?} is not an address", shown(text)));
    }
    Ok(a)
}

/// An IPv6 key: ordinary IPv6 text with an optional length, or rbldnsd's own form of 2 to
/// 7 whole groups without "::" (`2001:db8:1:2` is 2001:db8:1:2::/64, as ip6tset files
/// write their /64s).
fn ip6_key(key: &str) -> Result<Prefix, String> {
    key.parse::<Prefix>()
        .or_else(|e| ip6_groups(key).ok_or_else(|| e.to_string()))
}

fn ip6_groups(key: &str) -> Option<Prefix> {
    let (a, len) = match key.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (key, None),
    };
    let mut addr = 0u128;
    let mut n = 0u32;
    for part in a.split(':') {
        if n == 7 || part.is_empty() || part.len() > 4 {
            return None;
        }
        addr |= u128::from(u16::from_str_radix(part, 16).ok()?) << (112 - 16 * n);
        n += 1;
    }
    let len = match len {
        None => (16 * n) as u8,
        Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
            l.parse().ok()?
        }
        Some(_) => return None,
    };
    if n < 2 {
        return None;
    }
    Prefix::new(Ipv6Addr::from(addr).into(), len).ok()
}

/// What the zone lists: for every address the most specific entry covering it decides, as
/// in rbldnsd's longest-prefix lookups. Of entries for the same prefix an exclusion wins
/// (rbldnsd ip4set answers "not listed" then), then the first listing in the file (ip6trie
/// ignores later duplicates), whose TXT is kept.
///
/// Prefixes are either nested or disjoint, so one sweep in address order with a stack of
/// the entries around the current one finds every span's deciding entry.
fn resolve(mut rules: Vec<Rule>) -> Vec<ImportEntry> {
    // Stable: equal keys stay in file order. Prefix orders IPv4 first, then by address,
    // then the wider before the narrower.
    rules.sort_by(|a, b| a.prefix.cmp(&b.prefix).then(a.listed.cmp(&b.listed)));
    let mut out = Runs::default();
    // The entries containing the current one: (last address, rule).
    let mut stack: Vec<(u128, usize)> = Vec::new();
    // The first address not yet decided; `None` once past the end of the family.
    let mut cursor = Some(0u128);
    let mut family_v6 = false;
    for (i, r) in rules.iter().enumerate() {
        if i > 0 && rules[i - 1].prefix == r.prefix {
            continue;
        }
        let v6 = !r.prefix.is_v4();
        if v6 != family_v6 {
            close(&mut stack, &mut cursor, None, &rules, &mut out);
            out.flush();
            (family_v6, cursor) = (v6, Some(0));
        }
        let lo = ip_bits(r.prefix.first());
        close(&mut stack, &mut cursor, Some(lo), &rules, &mut out);
        // What is left of the enclosing entry before this one is that entry's.
        if let (Some(&(_, outer)), Some(c)) = (stack.last(), cursor)
            && c < lo
        {
            out.add(c, lo - 1, &rules[outer], v6);
        }
        cursor = Some(lo);
        stack.push((ip_bits(r.prefix.last()), i));
    }
    close(&mut stack, &mut cursor, None, &rules, &mut out);
    out.flush();
    out.entries
}

/// Ends the stacked entries that end before `until` (all for `None`), each deciding what
/// is left of its span.
fn close(
    stack: &mut Vec<(u128, usize)>,
    cursor: &mut Option<u128>,
    until: Option<u128>,
    rules: &[Rule],
    out: &mut Runs,
) {
    while let Some(&(hi, r)) = stack.last()
        && until.is_none_or(|lo| hi < lo)
    {
        if let Some(c) = *cursor
            && c <= hi
        {
            out.add(c, hi, &rules[r], !rules[r].prefix.is_v4());
        }
        *cursor = hi.checked_add(1);
        stack.pop();
    }
}

fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

/// Listed spans as they come in address order, adjacent ones with the same TXT merged
/// before they become prefixes.
#[derive(Default)]
struct Runs {
    run: Option<(u128, u128, Option<String>, bool)>,
    entries: Vec<ImportEntry>,
}

impl Runs {
    fn add(&mut self, lo: u128, hi: u128, rule: &Rule, v6: bool) {
        if !rule.listed {
            return;
        }
        if let Some((_, end, reason, _)) = &mut self.run
            && end.checked_add(1) == Some(lo)
            && *reason == rule.reason
        {
            *end = hi;
            return;
        }
        self.flush();
        self.run = Some((lo, hi, rule.reason.clone(), v6));
    }

    fn flush(&mut self) {
        if let Some(run) = self.run.take() {
            push_cover(run, &mut self.entries);
        }
    }
}

fn push_cover(
    (lo, hi, reason, v6): (u128, u128, Option<String>, bool),
    out: &mut Vec<ImportEntry>,
) {
    let ip = |a: u128| -> IpAddr {
        if v6 {
            Ipv6Addr::from(a).into()
        } else {
            Ipv4Addr::from(a as u32).into()
        }
    };
    // Prefix makes IPv4-mapped IPv6 addresses IPv4. In an IPv6 span, pieces inside the
    // mapped block would only match IPv6 packets with a mapped source, which do not occur,
    // while as IPv4 they would block real IPv4: they are left out. A span with one end in
    // the block has ends of two families, so it is covered around the block.
    const MAPPED: (u128, u128) = (0xffff_0000_0000, 0xffff_ffff_ffff);
    let pieces = match Prefix::cover_range(ip(lo), ip(hi)) {
        Some(p) => p,
        None => [(lo, hi.min(MAPPED.0 - 1)), (lo.max(MAPPED.1 + 1), hi)]
            .into_iter()
            .filter(|(a, b)| a <= b)
            .flat_map(|(a, b)| Prefix::cover_range(ip(a), ip(b)).unwrap_or_default())
            .collect(),
    };
    out.extend(
        pieces
            .into_iter()
            .filter(|p| p.is_v4() != v6)
            .map(|prefix| ImportEntry {
                prefix,
                reason: reason.clone(),
            }),
    );
}

/// At most 100 characters of `text` for a message: a garbage line of megabytes must not
/// be copied into every error.
fn shown(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
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
                .ok_or_else(|| format!("bad prefix length {:?}", shown(l)))?;
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
            .ok_or_else(|| format!("bad octet {:?}", shown(part)))?;
        addr |= v << (24 - 8 * n);
        n += 1;
    }
    Ok((addr, n))
}

#[cfg(test)]
mod tests;
