//! The control API's wire types: every request and response body of the control socket, as
//! the daemon writes them and the CLI (and the tests) read them. One definition on both
//! sides, so a renamed field is a compile error, not a blank column.
//!
//! Errors are `{"error": "..."}` ([`ErrorBody`]) with a 4xx/5xx status. `GET /v1/block` and
//! `GET /v1/allow` answer a JSON array of [`ListEntry`] streamed one entry per line (see
//! [`list_line`]); `GET /v1/watch` answers NDJSON [`WatchLine`]s.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::policy::prefix::Prefix;
pub use crate::policy::store::Origin;

/// Block or allow: the policy layer's kind, as the wire spells it ("block", "allow").
pub use crate::policy::Kind as ListKind;

/// Any refused request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// Every bad line of an import refused by `strict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<BadLine>,
}

/// `POST /v1/block`, `POST /v1/allow`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    /// Addresses or CIDRs with no host bits set.
    pub prefixes: Vec<String>,
    /// Default: `cli` (block) or `cli-allow` (allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// Block action name (default `drop`); ignored for allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Accept prefixes shorter than /8 (IPv4) or /16 (IPv6).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// Answer to [`AddBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    pub added: usize,
    pub table_changes: usize,
    pub list: String,
}

/// `POST /v1/block/delete`, `POST /v1/allow/delete`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    pub prefixes: Vec<String>,
    /// Only from this list; default: every CLI and imported list of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
}

/// Answer to [`DeleteBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    pub removed: usize,
    pub lists: Vec<ListRemoved>,
    /// Learned verdicts lifted (`block del ADDR` with nothing listed).
    #[serde(default)]
    pub lifted: usize,
    /// Prefixes given that another list still blocks: a feed's, the config's, an import's.
    #[serde(default)]
    pub still_blocked: Vec<StillBlocked>,
}

/// A prefix `block del` was given that is still blocked, and by what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StillBlocked {
    pub prefix: String,
    pub list: String,
    /// Who fills that list: config, cli, import, feed.
    pub origin: String,
    /// What lifts it there.
    pub hint: String,
}

/// How many entries one list lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRemoved {
    pub list: String,
    pub removed: usize,
}

/// One entry of `GET /v1/block` or `GET /v1/allow`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    pub prefix: Prefix,
    pub list: String,
    pub origin: Origin,
    /// Action name; `allow` for allow lists.
    pub action: String,
    pub reason: Option<String>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds.
    pub expires: Option<u64>,
}

/// Opens a streamed list body: `[`, then entries one per line, then `]`.
pub const LIST_OPEN: &str = "[\n";
/// Closes a non-empty streamed list body.
pub const LIST_CLOSE: &str = "\n]\n";
/// The whole body of an empty list.
pub const LIST_EMPTY: &str = "[]\n";

/// Parses one line of a streamed list body: `Ok(None)` for the brackets.
pub fn list_line(line: &str) -> Result<Option<ListEntry>, serde_json::Error> {
    let l = line.trim().trim_end_matches(',');
    if matches!(l, "" | "[" | "]" | "[]") {
        return Ok(None);
    }
    serde_json::from_str(l).map(Some)
}

/// Query of `POST /v1/block/import?...`; the body is the list text (any transfer encoding).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportParams {
    /// Default `import`.
    pub list: Option<String>,
    /// Default `drop`.
    pub action: Option<String>,
    /// `plain`, `spamhaus-drop`, `rbldnsd`; default: detected.
    pub format: Option<String>,
    /// Replace the whole list instead of adding to it.
    pub replace: bool,
    /// The body is a difference (`diff -u old new`): `+` lines added, `-` lines removed.
    pub patch: bool,
    /// Apply nothing if any line is bad.
    pub strict: bool,
    /// Allow `replace` or `patch` to empty the list or shrink it past the configured share.
    pub force: bool,
}

impl ImportParams {
    /// The request target, query encoded.
    pub fn target(&self) -> String {
        let mut t = String::from("/v1/block/import?");
        let mut sep = "";
        let mut push = |k: &str, v: &str| {
            t.push_str(sep);
            t.push_str(k);
            t.push('=');
            t.push_str(&crate::http::encode(v));
            sep = "&";
        };
        for (k, v) in [
            ("list", &self.list),
            ("action", &self.action),
            ("format", &self.format),
        ] {
            if let Some(v) = v {
                push(k, v);
            }
        }
        for (k, on) in [
            ("replace", self.replace),
            ("patch", self.patch),
            ("strict", self.strict),
            ("force", self.force),
        ] {
            if on {
                push(k, "1");
            }
        }
        t
    }

    /// From a decoded query string; flags take `1` or `true`.
    pub fn from_query(q: &std::collections::HashMap<String, String>) -> Self {
        let flag = |k: &str| q.get(k).is_some_and(|v| v == "1" || v == "true");
        let text = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
        Self {
            list: text("list"),
            action: text("action"),
            format: text("format"),
            replace: flag("replace"),
            patch: flag("patch"),
            strict: flag("strict"),
            force: flag("force"),
        }
    }
}

/// A line of an imported list that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadLine {
    /// 1-based.
    pub line: usize,
    pub text: String,
    pub message: String,
}

impl From<&crate::sources::formats::SkippedLine> for BadLine {
    fn from(e: &crate::sources::formats::SkippedLine) -> Self {
        Self {
            line: e.line,
            text: e.text.clone(),
            message: e.message.clone(),
        }
    }
}

impl From<&crate::sources::formats::LineError> for BadLine {
    fn from(e: &crate::sources::formats::LineError) -> Self {
        Self {
            line: e.line,
            text: e.text.clone(),
            message: e.message.clone(),
        }
    }
}

/// Answer to an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResult {
    pub list: String,
    pub format: String,
    pub applied: usize,
    pub table_changes: usize,
    pub replaced: bool,
    /// A `patch`: `applied` counts its `+` entries, `removed` the `-` ones that were listed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub patched: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub removed: usize,
    /// Every bad line, skipped.
    pub errors: Vec<BadLine>,
    /// Lines that are valid but not listings (an rbldnsd entry under a DNSBL error code).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<BadLine>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `POST /v1/reload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    pub reloaded: bool,
    pub table_changes: usize,
}

/// `POST /v1/detach[?iface=IF]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachResult {
    pub detached: Vec<String>,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub abi: u32,
    pub config: PathBuf,
    pub uptime_secs: u64,
    pub interfaces: Vec<Interface>,
    pub ports: Vec<u16>,
    pub maps: Maps,
    pub lists: Vec<ListInfo>,
    /// Non-zero (reason, action) counters of judged traffic.
    pub counters: Vec<Counter>,
    pub events: EventCounts,
    /// `[dnsbl]` zones and their health, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnsbl: Option<DnsblStatus>,
    /// Added by `prefilter status --verify --json`, never by the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// An attached interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub interface: String,
    /// `native`, `skb`, `default` or `adopted`.
    pub mode: String,
}

/// Fill of the XDP tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maps {
    pub v4_block: usize,
    pub v4_allow: usize,
    pub v4_long_groups: Usage,
    pub v6_block: usize,
    pub v6_allow: usize,
    /// Entries of the fullest part of the IPv6 table (/17–/64 hash, /65–/128 hash)
    /// against `[limits] v6_entries`.
    pub v6_entries: Usage,
    /// The maps were taken over from a previous agent.
    pub adopted: bool,
}

/// Used of capacity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub used: u32,
    pub capacity: u32,
}

/// A list in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListInfo {
    pub name: String,
    pub id: u16,
    pub kind: ListKind,
    pub origin: Origin,
    pub entries: usize,
}

/// Packets with one (reason, action).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub reason: String,
    pub action: String,
    pub packets: u64,
}

/// Ring-buffer events; `None` when the counters could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    pub sent: Option<u64>,
    pub lost: Option<u64>,
}

/// `GET /v1/check?ip=ADDR`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub ip: String,
    /// `pass`, `drop`, `reset`, `tempfail`, `reject`, `observe`.
    pub verdict: String,
    /// `XDP_PASS`, `XDP_DROP`, `XDP_TX (TCP RST)`.
    pub xdp_action: String,
    pub explanation: String,
    /// The list whose entry decided, if any.
    pub list: Option<String>,
    pub judged_ports: Vec<u16>,
    pub matches: Vec<CheckMatch>,
    pub dynamic: Option<Dynamic>,
    /// The cached DNSBL score, when every healthy zone has an answer cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnsbl: Option<DnsblScore>,
}

/// A DNSBL score as `check` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsblScore {
    pub score: i32,
    /// `zone=answer` of the matching entries with a positive weight.
    pub listed: Vec<String>,
    /// `zone=answer` of the matching entries with a negative weight.
    pub allowed_by: Vec<String>,
    /// The first-contact action when the score reached the threshold.
    pub verdict: Option<String>,
    pub allowlisted: bool,
}

impl From<crate::dnsbl::Score> for DnsblScore {
    fn from(s: crate::dnsbl::Score) -> Self {
        Self {
            score: s.score,
            listed: s.listed,
            allowed_by: s.allowed_by,
            verdict: s.verdict.map(|a| a.to_string()),
            allowlisted: s.allowlisted,
        }
    }
}

/// DNSBL state in `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsblStatus {
    /// Lookups start from XDP first-seen events (no proxy).
    pub inline: bool,
    pub zones: Vec<DnsblZone>,
    pub cache_entries: usize,
}

/// One DNSBL zone's health.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsblZone {
    pub zone: String,
    /// `unknown` (not probed yet), `healthy` or `quarantined`.
    pub state: String,
    /// Why it is quarantined.
    pub note: String,
}

/// A store entry covering the checked address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckMatch {
    pub list: String,
    pub kind: ListKind,
    pub origin: Origin,
    pub prefix: Prefix,
    pub action: String,
    pub reason: Option<String>,
    pub created: u64,
    pub expires: Option<u64>,
}

/// A dynamic verdict in the kernel for the address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dynamic {
    pub action: String,
    pub expires_boottime_ns: u64,
    /// Seconds until it expires; None: never.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// What learned it (`dnsbl`, `pregreet`, `escalation`, `cli`, `fleet`...), when known.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    /// Whether the program applies it: a listed verdict at least as strong wins.
    #[serde(default = "yes")]
    pub applies: bool,
}

fn yes() -> bool {
    true
}

/// `GET /v1/verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verify {
    pub ok: bool,
    pub store_prefixes: usize,
    pub table_prefixes: usize,
    pub addresses_checked: u64,
    pub mismatches: Vec<Mismatch>,
}

/// One difference between the store and the kernel tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Mismatch {
    /// A rule in one and not the other.
    Rule {
        prefix: String,
        kind: ListKind,
        problem: String,
    },
    /// An address the kernel answers differently from the rule set.
    Address {
        address: String,
        kernel: String,
        expected: String,
    },
}

/// One line of `GET /v1/watch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchLine {
    /// The client was too slow: this many events were skipped.
    Lagged {
        lagged: u64,
    },
    Event(Event),
}

/// A verdict or first-contact event of the XDP program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time in seconds with fraction.
    pub time: f64,
    /// `verdict` or `first_seen`.
    pub kind: String,
    pub source: String,
    pub action: String,
    pub reason: String,
    pub list: Option<String>,
    pub port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_params_round_trip() {
        let p = ImportParams {
            list: Some("sbl drop".into()),
            action: Some("reset".into()),
            format: None,
            replace: true,
            patch: true,
            strict: false,
            force: true,
        };
        let t = p.target();
        let q = crate::http::parse_query(t.split_once('?').unwrap().1);
        assert_eq!(ImportParams::from_query(&q), p);
    }

    #[test]
    fn list_lines() {
        assert_eq!(list_line("[").unwrap(), None);
        assert_eq!(list_line("]").unwrap(), None);
        let l = r#"{"prefix":"192.0.2.0/24","list":"cli","origin":"cli","action":"drop","reason":null,"created":1,"expires":null},"#;
        assert_eq!(list_line(l).unwrap().unwrap().list, "cli");
    }
}

/// How a feed run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedOutcome {
    /// A new body (or stream delta) applied.
    Updated,
    /// 304: the copy in force is current.
    NotModified,
    /// The shrink guard refused it; `feeds sync NAME --force` applies it.
    Refused,
    /// Fetching or parsing failed; the last good copy stays in force.
    Failed,
}

/// `POST /v1/feeds/sync?name=NAME[&force=true]`: answered when the run ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedSyncResult {
    pub feed: String,
    pub outcome: FeedOutcome,
    /// Entries of the feed's list in force after the run.
    pub entries: usize,
    pub table_changes: usize,
    pub lines_rejected: usize,
    /// The first bad lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_lines: Vec<BadLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/feeds`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedList {
    pub feeds: Vec<FeedInfo>,
}

/// One feed in [`FeedList`]; times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedInfo {
    pub name: String,
    pub source: String,
    pub format: String,
    pub action: String,
    pub interval_secs: u64,
    pub entries: usize,
    pub last_attempt: Option<u64>,
    pub last_success: Option<u64>,
    pub next_run: Option<u64>,
    pub running: bool,
    pub last_outcome: Option<FeedOutcome>,
    /// Failed runs since the agent started.
    pub failures: u64,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
    /// Bad lines of the last body read.
    pub lines_rejected: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_lines: Vec<BadLine>,
    /// Size of the last body fetched.
    pub bytes: u64,
    /// Updates refused by the shrink guard since the agent started.
    pub guard_refusals: u64,
    pub last_refusal: Option<String>,
    pub etag: Option<String>,
}
