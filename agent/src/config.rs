//! The daemon's configuration: one TOML file, `deploy/prefilter.toml` being the annotated
//! example.
//!
//! The file is read in two steps. serde turns it into the raw sections below, whose fields
//! are wide on purpose (strings, `i64`) so that only syntax, unknown keys and plain type
//! mismatches fail there (one error, as serde stops at the first). Everything else is
//! checked afterwards and *every* bad value is reported in one run, each with its dotted
//! key and line, so an administrator fixes the file in one pass.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use prefilter_common::{action, dynamic, v4, v6};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use crate::policy::prefix::Prefix;
use crate::sources::formats::{self, Format, ImportEntry};

/// Where the daemon looks for its config unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/prefilter/prefilter.toml";

/// One problem in the file: its dotted key (`xdp.ports[1]`, `block[0].prefixes[2]`) and
/// line, when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line in the config file.
    pub line: Option<usize>,
    /// Dotted path of the key; empty for a syntax error that belongs to no key.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in one config file, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file, as named to [`Config::parse`].
    pub path: PathBuf,
    /// At least one.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// One error a line: `prefilter.toml:12: xdp.ports[1]: 70000 is not a port (1-65535)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = e.line {
                write!(f, ":{line}")?;
            }
            if !e.key.is_empty() {
                write!(f, ": {}", e.key)?;
            }
            write!(f, ": {}", e.message)?;
        }
        Ok(())
    }
}

/// Why [`Config::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read at all.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was read and has errors.
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from; relative list files are resolved against its directory.
    pub path: PathBuf,
    /// `[daemon]`.
    pub daemon: Daemon,
    /// `[xdp]`.
    pub xdp: Xdp,
    /// `[limits]`.
    pub limits: Limits,
    /// `[metrics]`.
    pub metrics: Metrics,
    /// `[proxy]`; `None` when the section is absent (no proxy runs).
    pub proxy: Option<Proxy>,
    /// `[dnsbl]`; `None` when the section is absent (no lookups).
    pub dnsbl: Option<Dnsbl>,
    /// `[escalation]`; `None` when the section is absent (no promotion).
    pub escalation: Option<Escalation>,
    /// Every `[[block]]` then every `[[allow]]`, each in file order.
    pub lists: Vec<ListDef>,
    /// `[[feeds]]`, in file order.
    pub feeds: Vec<Feed>,
    /// `[crowdsec]`: the LAPI that learned verdicts are reported to; `None` when absent.
    pub crowdsec: Option<CrowdSec>,
}

/// `[daemon]`: where the daemon keeps things.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Daemon {
    /// The policy store's directory.
    pub state_dir: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// Group that may use the socket (mode 0660); `None` for root only.
    pub socket_group: Option<String>,
    /// bpffs mount point; pins go to [`Daemon::pin_dir`].
    pub bpffs: PathBuf,
}

impl Daemon {
    /// Directory of our pinned maps and link.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("prefilter")
    }
}

/// `[xdp]`: what the program judges and how it is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xdp {
    /// Interfaces to attach to; at least one, each present at parse time.
    pub interfaces: Vec<String>,
    /// Attach mode.
    pub mode: AttachMode,
    /// Judged destination ports, no duplicates, in file order.
    pub ports: Vec<u16>,
    /// aya-log level compiled into the program.
    pub log_level: LogLevel,
    /// Verdict and first-seen events per second per CPU at most; 0 = none.
    pub events_per_second: u32,
    /// Per-source SYN rate limit; `None` when disabled.
    pub ratelimit: Option<RateLimit>,
}

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// Native (driver) mode where the NIC supports it, skb mode otherwise.
    Auto,
    /// Driver mode or fail.
    Native,
    /// Generic (skb) mode: works everywhere, slower.
    Skb,
}

impl AttachMode {
    const NAMES: [(AttachMode, &'static str); 3] = [
        (AttachMode::Auto, "auto"),
        (AttachMode::Native, "native"),
        (AttachMode::Skb, "skb"),
    ];
}

/// aya-log level of the XDP program; `as u8` is the value the program is loaded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum LogLevel {
    /// Logging compiled out: no cost per packet.
    Off = 0,
    /// Errors only.
    Error = 1,
    /// And warnings.
    Warn = 2,
    /// And information.
    Info = 3,
    /// And debugging.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl LogLevel {
    const NAMES: [(LogLevel, &'static str); 6] = [
        (LogLevel::Off, "off"),
        (LogLevel::Error, "error"),
        (LogLevel::Warn, "warn"),
        (LogLevel::Info, "info"),
        (LogLevel::Debug, "debug"),
        (LogLevel::Trace, "trace"),
    ];
}

/// `[xdp.ratelimit]` when enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained SYNs per second and source.
    pub syn_per_second: u32,
    /// SYNs a source may send at once above the rate.
    pub burst: u32,
}

/// The rate limit as the program's token bucket counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Nanoseconds of credit one SYN costs (1e9 / rate).
    pub cost_ns: u64,
    /// Bucket capacity in nanoseconds of credit (burst * cost).
    pub cap_ns: u64,
}

impl RateLimit {
    /// The bucket parameters the XDP config map takes.
    pub fn bucket(&self) -> TokenBucket {
        let cost_ns = 1_000_000_000 / u64::from(self.syn_per_second);
        TokenBucket {
            cost_ns,
            // Cannot overflow: u32::MAX * 1e9 < u64::MAX.
            cap_ns: u64::from(self.burst) * cost_ns,
        }
    }
}

/// `[limits]`: map sizes, fixed when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// IPv4 groups for /24s holding several verdicts (40 bytes each plus shared verdicts).
    pub v4_long_groups: u32,
    /// IPv6 table capacity: entries of each of its two hashes.
    pub v6_entries: u32,
    /// Dynamic verdict map capacity.
    pub dynamic_entries: u32,
    /// Largest share (percent) of a list that one `import --replace` (later: a feed update)
    /// may remove without `--force`: a truncated download must not empty a list.
    pub max_shrink_percent: u32,
}

/// `[metrics]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metrics {
    /// Prometheus listener; `None` when disabled.
    pub listen: Option<SocketAddr>,
}

/// `[dnsbl]`: DNSBL scoring as postscreen does it (postscreen_dnsbl_* parameters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dnsbl {
    /// `postscreen_dnsbl_sites` entries, in file order.
    pub sites: Vec<crate::dnsbl::Site>,
    /// Block at this score or above (postscreen_dnsbl_threshold).
    pub threshold: i32,
    /// Allowlist at this score or below when negative (postscreen_dnsbl_allowlist_threshold).
    pub allowlist_threshold: i32,
    /// What a listed client gets at first contact (the proxy answers it).
    pub action: Action,
    /// What the kernel's dynamic map holds for the rest of the listing's TTL; `None` = nothing.
    pub repeat_action: Option<Action>,
    /// Resolvers asked, in order; never /etc/resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Per query attempt.
    pub timeout: std::time::Duration,
    /// Query attempts per lookup.
    pub attempts: u32,
    /// Answer TTLs (positive and negative) are clamped to `min_ttl..=max_ttl`.
    pub min_ttl: std::time::Duration,
    pub max_ttl: std::time::Duration,
    /// DNS queries in flight at most.
    pub concurrency: u32,
    /// (address, zone) answers cached at most.
    pub cache_size: u32,
    /// How often each zone's RFC 5782 test points are probed.
    pub probe_interval: std::time::Duration,
    /// Destination ports whose clients are judged (submission ports are not, unless listed).
    pub ports: Vec<u16>,
    /// Lookups start from XDP first-seen events (completed handshakes), not from the proxy.
    pub inline: bool,
}

/// `[escalation]`: an address refused more than `after` times within `within` gets `action`
/// in XDP for `ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    pub after: u32,
    pub within: std::time::Duration,
    pub action: Action,
    pub ttl: std::time::Duration,
    /// Addresses tracked at most (memory bound).
    pub max_tracked: u32,
}

/// `[proxy]`: the SMTP proxy in front of the content filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    /// Addresses to accept SMTP on (v4 and v6), at least one, no repeats.
    pub listen: Vec<SocketAddr>,
    /// `host:port` of the content filters, tried in order; at least one.
    pub backends: Vec<Backend>,
    /// Header sent to the backend before the client's bytes.
    pub proxy_protocol: ProxyProtocol,
    /// Name in the proxy's own replies (`{hostname}`).
    pub hostname: String,
    /// Reply to a `tempfail` verdict (`421 ...`), with `{hostname}`, `{list}`, `{client}`.
    pub tempfail_reply: String,
    /// Reply to a `reject` verdict (`554 ...`), same placeholders.
    pub reject_reply: String,
    /// Seconds to reach a backend before the client gets `421 4.4.2`.
    pub connect_timeout: std::time::Duration,
    /// Seconds a backend gets, after the PROXY header, to send its greeting.
    pub backend_greeting_timeout: std::time::Duration,
    /// Seconds without a byte either way before a relayed session is closed.
    pub idle_timeout: std::time::Duration,
    /// Seconds sessions get to finish when the daemon stops.
    pub shutdown_timeout: std::time::Duration,
    /// Sessions at once, all clients together.
    pub max_connections: u32,
    /// Sessions at once from one address (one IPv6 /64).
    pub max_per_client: u32,
    /// When a `reject` verdict is answered: at once, or (like postscreen's `enforce`) at
    /// every RCPT TO after a dummy dialogue that logs the envelope.
    pub reject_at: RejectAt,
    /// Reply to each RCPT TO with `reject_at = "rcpt"` (`550 ...`), same placeholders.
    pub rcpt_reply: String,
    /// Pregreet test: how long to wait after `220-` for a client that talks first; `None`
    /// turns the test off.
    pub greet_wait: Option<std::time::Duration>,
    /// What a pregreet violator becomes (a dynamic verdict) and is answered.
    pub greet_action: Action,
    /// How long that dynamic verdict lasts.
    pub greet_ttl: std::time::Duration,
    /// How sessions are spread over the backends.
    pub balance: Balance,
    /// Implicit TLS listeners (port 465): the client speaks TLS first, so the proxy never
    /// answers there itself (a refused client is closed) and relays to `smtps_backends`.
    pub smtps_listen: Vec<SocketAddr>,
    /// The backend's implicit TLS ports (Postfix smtps, `smtpd_tls_wrappermode = yes`).
    pub smtps_backends: Vec<Backend>,
    /// Accept queue length of each listening socket (the kernel caps it at somaxconn).
    pub backlog: u32,
}

/// When a `reject` verdict is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectAt {
    /// `554 5.7.1` instead of the greeting, then close.
    Connect,
    /// Greet, accept HELO and MAIL, answer every RCPT TO with `550 5.7.1`, log the envelope.
    Rcpt,
}

impl RejectAt {
    const NAMES: [(RejectAt, &'static str); 2] =
        [(RejectAt::Connect, "connect"), (RejectAt::Rcpt, "rcpt")];
}

/// How sessions are spread over the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Balance {
    /// The first healthy backend in configured order.
    Order,
    /// The healthy backends in turn.
    RoundRobin,
}

impl Balance {
    const NAMES: [(Balance, &'static str); 2] = [
        (Balance::Order, "order"),
        (Balance::RoundRobin, "round-robin"),
    ];
}

/// A backend as configured: a host (address or name) and a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// An IP address or a DNS name, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The PROXY protocol header sent to backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyProtocol {
    /// Binary version 2 (Postfix `smtpd_upstream_proxy_protocol = haproxy` reads both).
    V2,
    /// Text version 1.
    V1,
    /// No header: the backend sees the proxy's address (for tests and odd backends only).
    None,
}

impl ProxyProtocol {
    const NAMES: [(ProxyProtocol, &'static str); 3] = [
        (ProxyProtocol::V2, "v2"),
        (ProxyProtocol::V1, "v1"),
        (ProxyProtocol::None, "none"),
    ];
}

/// Placeholders a reply text may use.
pub const REPLY_PLACEHOLDERS: [&str; 3] = ["{hostname}", "{list}", "{client}"];

pub use crate::policy::Action;

mod feeds;
pub use self::feeds::{CrowdSec, Feed, FeedFormat, FeedSource, REPORTABLE, read_credentials};

/// The actions in the order the config's error messages name them.
const ACTION_NAMES: [(Action, &str); 5] = [
    (Action::Drop, "drop"),
    (Action::Reset, "reset"),
    (Action::Tempfail, "tempfail"),
    (Action::Reject, "reject"),
    (Action::Observe, "observe"),
];

/// Whether a list blocks or exempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `[[block]]` with its action.
    Block {
        /// What a match does.
        action: Action,
    },
    /// `[[allow]]`: exempt from every check.
    Allow,
}

/// A `[[block]]` or `[[allow]]` list with its prefixes resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListDef {
    /// Unique among all lists.
    pub name: String,
    /// Block (with action) or allow.
    pub kind: ListKind,
    /// The list file, made absolute against the config's directory.
    pub file: Option<PathBuf>,
    /// The file's format as configured; `None` means it was detected.
    pub format: Option<Format>,
    /// Inline prefixes first, then the file's, without repeats.
    pub entries: Vec<ImportEntry>,
}

impl ListDef {
    /// The action code for the maps: the block action, or `action::ALLOW`.
    pub fn action_code(&self) -> u8 {
        match self.kind {
            ListKind::Block { action } => action.code(),
            ListKind::Allow => action::ALLOW,
        }
    }

    /// The prefixes alone.
    pub fn prefixes(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.entries.iter().map(|e| e.prefix)
    }
}

impl Config {
    /// Reads and validates the file at `path`. `iface_exists` answers whether a network
    /// interface exists (the daemon passes an `if_nametoindex` check).
    pub fn load(path: &Path, iface_exists: &dyn Fn(&str) -> bool) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::parse(&text, path, iface_exists)?)
    }

    /// Validates config `text` that was read from `path` (named in errors; relative list
    /// files are resolved against its directory, and are read here).
    pub fn parse(
        text: &str,
        path: &Path,
        iface_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Config, ConfigErrors> {
        let spans = Spans::new(text);
        let fail = |errors| ConfigErrors {
            path: path.to_owned(),
            errors,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start);
            let key = at
                .and_then(|at| spans.as_ref().and_then(|s| s.key_at(at)))
                .unwrap_or_default();
            fail(vec![ConfigError {
                line: at.map(|at| line_at(text, at)),
                key: key.to_owned(),
                message: e.message().to_owned(),
            }])
        })?;
        let mut v = Validator {
            text,
            spans: spans.unwrap_or_default(),
            errors: Vec::new(),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let config = Config {
            path: path.to_owned(),
            daemon: v.daemon(raw.daemon),
            xdp: v.xdp(raw.xdp, iface_exists),
            limits: v.limits(raw.limits),
            metrics: v.metrics(raw.metrics),
            dnsbl: raw.dnsbl.map(|d| v.dnsbl(d, raw.proxy.is_some())),
            escalation: raw.escalation.map(|e| v.escalation(e)),
            proxy: raw.proxy.map(|p| v.proxy(p)),
            lists: v.lists(raw.block, raw.allow, base),
            feeds: Vec::new(),
            crowdsec: raw.crowdsec.map(|c| v.crowdsec(c, base)),
        };
        let names: HashSet<String> = config.lists.iter().map(|l| l.name.clone()).collect();
        let mut config = config;
        config.feeds = v.feeds(raw.feeds, &names, config.limits.max_shrink_percent, base);
        if v.errors.is_empty() {
            return Ok(config);
        }
        // File order reads best; errors without a line go last.
        v.errors.sort_by_key(|e| (e.line.is_none(), e.line));
        Err(fail(v.errors))
    }

    /// Judged destination ports.
    pub fn ports(&self) -> &[u16] {
        &self.xdp.ports
    }

    /// How to attach.
    pub fn attach_mode(&self) -> AttachMode {
        self.xdp.mode
    }

    /// aya-log level for the program: off=0, error=1, warn=2, info=3, debug=4, trace=5.
    pub fn log_level(&self) -> u8 {
        self.xdp.log_level as u8
    }

    /// Token bucket of the SYN rate limit, `None` when disabled.
    pub fn ratelimit(&self) -> Option<TokenBucket> {
        self.xdp.ratelimit.map(|r| r.bucket())
    }

    /// Every list, blocks first.
    pub fn lists(&self) -> &[ListDef] {
        &self.lists
    }

    /// The `[[block]]` lists.
    pub fn block_lists(&self) -> impl Iterator<Item = &ListDef> {
        self.lists.iter().filter(|l| l.kind != ListKind::Allow)
    }

    /// The `[[allow]]` lists.
    pub fn allow_lists(&self) -> impl Iterator<Item = &ListDef> {
        self.lists.iter().filter(|l| l.kind == ListKind::Allow)
    }
}

// ---- The file as serde reads it ------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawFile {
    daemon: RawDaemon,
    xdp: RawXdp,
    limits: RawLimits,
    metrics: RawMetrics,
    proxy: Option<RawProxy>,
    dnsbl: Option<RawDnsbl>,
    escalation: Option<RawEscalation>,
    block: Vec<RawBlock>,
    allow: Vec<RawAllow>,
    feeds: Vec<feeds::RawFeed>,
    crowdsec: Option<feeds::RawCrowdSec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDaemon {
    state_dir: PathBuf,
    socket: PathBuf,
    socket_group: String,
    bpffs: PathBuf,
}

impl Default for RawDaemon {
    fn default() -> Self {
        Self {
            // Matches StateDirectory=prefilter in the systemd unit.
            state_dir: "/var/lib/prefilter".into(),
            // Matches RuntimeDirectory=prefilter; also the CLI's default.
            socket: "/run/prefilter/control.sock".into(),
            // Created by the package; if missing, the daemon warns and only root gets in.
            socket_group: "prefilter".into(),
            bpffs: "/sys/fs/bpf".into(),
        }
    }
}

/// Enough for `prefilter watch` to show a live picture; a time budget per CPU, so a flood
/// costs the data path nothing more than a clock read per judged SYN.
const DEFAULT_EVENTS_PER_SECOND: u32 = prefilter_common::events::DEFAULT_PER_SEC;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawXdp {
    interfaces: Vec<String>,
    mode: String,
    ports: Vec<i64>,
    log_level: String,
    events_per_second: Option<i64>,
    /// Replaced by `events_per_second`; still read so an older config keeps working
    /// (0 turns events off, any other value keeps the default budget).
    sample_every: Option<i64>,
    ratelimit: RawRateLimit,
}

impl Default for RawXdp {
    fn default() -> Self {
        Self {
            // No sensible default: the MX-facing NIC differs per host, so it is required.
            interfaces: Vec::new(),
            // Native where the driver has it: same behaviour, far cheaper per packet.
            mode: "auto".into(),
            // Port 25 only: submission ports carry authenticated users on dynamic addresses.
            ports: prefilter_common::ports::DEFAULT
                .iter()
                .map(|&p| p.into())
                .collect(),
            // Any level but off costs cycles on every packet.
            log_level: "off".into(),
            // See events_per_second() below.
            events_per_second: None,
            sample_every: None,
            ratelimit: RawRateLimit::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimit {
    enabled: bool,
    syn_per_second: i64,
    burst: i64,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        Self {
            // Off: a busy legitimate relay behind one address must not be throttled by
            // surprise; sites turn it on knowingly.
            enabled: false,
            // A real MTA opens a few connections per second at most, retries far slower.
            syn_per_second: 5,
            // Room for a burst of parallel deliveries from one relay.
            burst: 20,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    v4_long_groups: i64,
    v6_entries: i64,
    dynamic_entries: i64,
    max_shrink_percent: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            // 80 MiB of groups (plus 8 MiB of shared verdicts): two million /24s holding
            // several verdicts, enough for 5M random host /32s plus 1M mixed prefixes; a
            // lone host in an unlisted /24 needs none.
            v4_long_groups: v4::DEFAULT_GROUPS.into(),
            v6_entries: v6::DEFAULT_ENTRIES.into(),
            dynamic_entries: dynamic::DEFAULT_ENTRIES.into(),
            max_shrink_percent: 50,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            // Loopback: the exporter has no authentication; a local Prometheus or a proxy
            // in front of it decides who sees it.
            listen: "127.0.0.1:9750".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    listen: Vec<String>,
    backends: Vec<String>,
    proxy_protocol: String,
    hostname: String,
    tempfail_reply: String,
    reject_reply: String,
    connect_timeout: i64,
    backend_greeting_timeout: i64,
    idle_timeout: i64,
    shutdown_timeout: i64,
    max_connections: i64,
    max_per_client: i64,
    reject_at: String,
    rcpt_reply: String,
    greet_wait: RawDuration,
    greet_action: String,
    greet_ttl: RawDuration,
    balance: String,
    smtps_listen: Vec<String>,
    smtps_backends: Vec<String>,
    backlog: i64,
}

/// A duration as whole seconds (`2`) or text with a unit (`"500ms"`, `"2s"`, `"1h"`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawDuration {
    Secs(i64),
    Text(String),
}

impl RawDuration {
    /// Milliseconds, or a message saying what is wrong.
    fn millis(&self) -> Result<u64, String> {
        let s = match self {
            RawDuration::Secs(n) => {
                return u64::try_from(*n)
                    .ok()
                    .and_then(|n| n.checked_mul(1000))
                    .ok_or_else(|| format!("{n} is not a number of seconds"));
            }
            RawDuration::Text(s) => s.trim(),
        };
        let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(at);
        let mult: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "{s:?} is not a duration such as \"500ms\", \"2s\", \"1h\""
                ));
            }
        };
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .ok_or_else(|| format!("{s:?} is not a duration such as \"500ms\", \"2s\", \"1h\""))
    }
}

impl Default for RawProxy {
    fn default() -> Self {
        Self {
            // Port 25 on every address, both families (the v6 socket is v6-only).
            listen: vec!["0.0.0.0:25".into(), "[::]:25".into()],
            // No sensible default: where the content filter listens differs per site.
            backends: Vec::new(),
            // What Postfix (`smtpd_upstream_proxy_protocol = haproxy`) and HAProxy-aware
            // filters read; binary, so no parsing ambiguity.
            proxy_protocol: "v2".into(),
            // "" = the system's host name.
            hostname: String::new(),
            // The wording of postscreen's replies, plus the list that decided.
            tempfail_reply: "421 4.7.0 {hostname} Service unavailable, try again later ({list})"
                .into(),
            reject_reply:
                "554 5.7.1 {hostname} Service unavailable; client [{client}] blocked ({list})"
                    .into(),
            // A local content filter answers within milliseconds; a client waiting longer
            // than this for a 421 may give up on its own and count a failure.
            connect_timeout: 5,
            // Postfix greets at once, after its lookup of the client's name: seconds when
            // DNS is slow. A client waits 5 minutes for a greeting (RFC 5321 4.5.3.2.1).
            backend_greeting_timeout: 30,
            // RFC 5321 4.5.3.2.7: a server should wait at least 5 minutes for a command.
            idle_timeout: 300,
            // Long enough for a message in flight, short of systemd's stop timeout.
            shutdown_timeout: 10,
            // Postfix's default smtpd process limit is 100; the proxy's sessions are cheap,
            // the backend's are not: the backend's own limits still apply.
            max_connections: 1000,
            // Postfix's smtpd_client_connection_count_limit default is 50; bots open many.
            max_per_client: 20,
            // Refuse at once: the cheapest answer, and what most sites want from a list.
            reject_at: "connect".into(),
            // postscreen's enforce wording.
            rcpt_reply: "550 5.7.1 Service unavailable; client [{client}] blocked ({list})".into(),
            // Off: the wait delays every clean client's greeting (postscreen's default is
            // 6s when on); sites turn it on knowingly.
            greet_wait: RawDuration::Secs(0),
            // A bot that talks first is not a real MTA: refuse it for good.
            greet_action: "reject".into(),
            // postscreen keeps a pregreet verdict about this long before testing again.
            greet_ttl: RawDuration::Text("1h".into()),
            // The first backend takes everything while it is up: a standby stays cold.
            balance: "order".into(),
            // Off: port 465 carries submission (authenticated users), often not for an MX.
            smtps_listen: Vec::new(),
            smtps_backends: Vec::new(),
            // Room for a burst while the accept task catches up; SYN cookies cover worse.
            backlog: 1024,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDnsbl {
    sites: Vec<String>,
    threshold: i64,
    allowlist_threshold: i64,
    action: String,
    repeat_action: String,
    nameservers: Vec<String>,
    timeout: i64,
    attempts: i64,
    min_ttl: i64,
    max_ttl: i64,
    concurrency: i64,
    cache_size: i64,
    probe_interval: i64,
    ports: Vec<i64>,
    inline: Option<bool>,
}

impl Default for RawDnsbl {
    fn default() -> Self {
        Self {
            sites: Vec::new(),
            // postscreen's defaults.
            threshold: 1,
            allowlist_threshold: 0,
            // A permanent 554 naming the list: what postscreen's "enforce" answers.
            action: "reject".into(),
            // Only bots come back after a 554: their next SYN stops in XDP.
            repeat_action: "drop".into(),
            // A local recursive resolver: DNSBLs such as Spamhaus refuse public ones.
            nameservers: vec!["127.0.0.1:53".into()],
            timeout: 2,
            attempts: 2,
            // postscreen_dnsbl_min_ttl and postscreen_dnsbl_max_ttl.
            min_ttl: 60,
            max_ttl: 3600,
            concurrency: 100,
            cache_size: 100_000,
            probe_interval: 300,
            // Submission ports carry authenticated users on dynamic (PBL-listed) addresses.
            ports: vec![25],
            inline: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEscalation {
    after: i64,
    within: i64,
    action: String,
    ttl: i64,
    max_tracked: i64,
}

impl Default for RawEscalation {
    fn default() -> Self {
        Self {
            // A real MTA retries a 4xx a few times an hour; a bot reconnects at once.
            after: 5,
            within: 600,
            action: "drop".into(),
            ttl: 3600,
            max_tracked: 65_536,
        }
    }
}

/// `[[block]]`: no `default` at the struct level, `name` is required.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlock {
    name: String,
    /// A block list blocks unless told otherwise.
    #[serde(default = "default_action")]
    action: String,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    format: Option<String>,
    /// Takes prefixes shorter than /8 (IPv4) or /16 (IPv6), as `--force` does on the CLI.
    #[serde(default)]
    force: bool,
}

fn default_action() -> String {
    "drop".into()
}

/// `[[allow]]`: like a block list without an action.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    name: String,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    force: bool,
}

// ---- Locating keys in the text ----------------------------------------------------------

/// Where each key and array element of the document starts, by dotted path, so errors
/// found after deserialization still name a line.
#[derive(Default)]
struct Spans {
    /// (path, span of the key or array element, span of the value)
    entries: Vec<(String, Range<usize>, Range<usize>)>,
    /// path -> byte offset to report
    at: HashMap<String, usize>,
}

impl Spans {
    /// `None` for text that is not TOML (serde reports that).
    fn new(text: &str) -> Option<Spans> {
        let doc = DeTable::parse(text).ok()?;
        let mut s = Spans::default();
        s.walk(doc.get_ref(), "");
        s.at = s
            .entries
            .iter()
            .map(|(p, k, _)| (p.clone(), k.start))
            .collect();
        Some(s)
    }

    fn walk(&mut self, table: &DeTable<'_>, prefix: &str) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            self.entries.push((path.clone(), k.span(), v.span()));
            self.value(v.get_ref(), &path);
        }
    }

    fn value(&mut self, v: &DeValue<'_>, path: &str) {
        match v {
            DeValue::Table(t) => self.walk(t, path),
            DeValue::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.entries.push((p.clone(), e.span(), e.span()));
                    self.value(e.get_ref(), &p);
                }
            }
            _ => {}
        }
    }

    /// The deepest key whose key or value covers byte `at` (a serde error's position).
    fn key_at(&self, at: usize) -> Option<&str> {
        self.entries
            .iter()
            .filter(|(_, k, v)| k.contains(&at) || v.contains(&at) || k.start == at)
            .map(|(p, _, _)| p.as_str())
            .max_by_key(|p| p.len())
    }

    /// Offset of `path`, or of its nearest written ancestor when it was left at its default.
    fn offset(&self, mut path: &str) -> Option<usize> {
        loop {
            if let Some(&at) = self.at.get(path) {
                return Some(at);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }
}

fn line_at(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

// ---- Validation -------------------------------------------------------------------------

struct Validator<'a> {
    text: &'a str,
    spans: Spans,
    errors: Vec<ConfigError>,
}

fn names<T>(names: &[(T, &'static str)]) -> String {
    names.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

impl Validator<'_> {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            line: self.spans.offset(key).map(|at| line_at(self.text, at)),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// `v` within `lo..=hi`, else an error and `lo` (the config is refused anyway).
    fn int(&mut self, key: &str, v: i64, lo: u32, hi: u32) -> u32 {
        match u32::try_from(v) {
            Ok(x) if (lo..=hi).contains(&x) => x,
            _ => {
                self.err(key, format!("{v} is out of range ({lo}-{hi})"));
                lo
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        key: &str,
        text: &str,
        what: &str,
        all: &[(T, &'static str)],
    ) -> T {
        match all.iter().find(|(_, n)| *n == text) {
            Some((v, _)) => *v,
            None => {
                self.err(key, format!("{text:?} is not {what} ({})", names(all)));
                all[0].0
            }
        }
    }

    fn absolute(&mut self, key: &str, p: PathBuf) -> PathBuf {
        // The daemon's working directory is nobody's business: relative paths would move.
        if !p.is_absolute() {
            self.err(
                key,
                format!("{:?} is not an absolute path", p.display().to_string()),
            );
        }
        p
    }

    fn daemon(&mut self, r: RawDaemon) -> Daemon {
        Daemon {
            state_dir: self.absolute("daemon.state_dir", r.state_dir),
            socket: self.absolute("daemon.socket", r.socket),
            socket_group: Some(r.socket_group).filter(|g| !g.is_empty()),
            bpffs: self.absolute("daemon.bpffs", r.bpffs),
        }
    }

    fn xdp(&mut self, r: RawXdp, iface_exists: &dyn Fn(&str) -> bool) -> Xdp {
        if r.interfaces.is_empty() {
            self.err("xdp.interfaces", "at least one interface is required");
        }
        let mut seen = HashSet::new();
        for (i, name) in r.interfaces.iter().enumerate() {
            let key = format!("xdp.interfaces[{i}]");
            if !seen.insert(name.as_str()) {
                self.err(&key, format!("interface {name:?} is listed twice"));
            } else if !iface_exists(name) {
                self.err(&key, format!("no interface {name:?} on this host"));
            }
        }
        if r.ports.is_empty() {
            self.err("xdp.ports", "at least one port is required");
        }
        let mut ports = Vec::with_capacity(r.ports.len());
        for (i, &p) in r.ports.iter().enumerate() {
            let key = format!("xdp.ports[{i}]");
            match u16::try_from(p) {
                Ok(0) | Err(_) => self.err(&key, format!("{p} is not a port (1-65535)")),
                Ok(p) if ports.contains(&p) => self.err(&key, format!("port {p} is listed twice")),
                Ok(p) => ports.push(p),
            }
        }
        let ratelimit = r.ratelimit.enabled.then(|| RateLimit {
            // Above 1e9/s a SYN would cost less than a nanosecond of credit.
            syn_per_second: self.int(
                "xdp.ratelimit.syn_per_second",
                r.ratelimit.syn_per_second,
                1,
                1_000_000_000,
            ),
            burst: self.int("xdp.ratelimit.burst", r.ratelimit.burst, 1, u32::MAX),
        });
        Xdp {
            interfaces: r.interfaces,
            mode: self.choice("xdp.mode", &r.mode, "an attach mode", &AttachMode::NAMES),
            ports,
            log_level: self.choice(
                "xdp.log_level",
                &r.log_level,
                "a log level",
                &LogLevel::NAMES,
            ),
            events_per_second: match (r.events_per_second, r.sample_every) {
                (Some(n), _) => self.int("xdp.events_per_second", n, 0, 1_000_000),
                (None, Some(n)) => match self.int("xdp.sample_every", n, 0, u32::MAX) {
                    0 => 0,
                    _ => DEFAULT_EVENTS_PER_SECOND,
                },
                (None, None) => DEFAULT_EVENTS_PER_SECOND,
            },
            ratelimit,
        }
    }

    fn limits(&mut self, r: RawLimits) -> Limits {
        Limits {
            // A group index must fit the 24 bits beside the EXT flag of a TBL24 entry.
            v4_long_groups: self.int("limits.v4_long_groups", r.v4_long_groups, 1, v4::GROUP_MASK),
            v6_entries: self.int("limits.v6_entries", r.v6_entries, 1, v6::MAX_ENTRIES),
            dynamic_entries: self.int("limits.dynamic_entries", r.dynamic_entries, 1, u32::MAX),
            max_shrink_percent: self.int("limits.max_shrink_percent", r.max_shrink_percent, 0, 100),
        }
    }

    fn metrics(&mut self, r: RawMetrics) -> Metrics {
        let listen = if r.listen.is_empty() {
            None
        } else {
            match r.listen.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.err(
                        "metrics.listen",
                        format!(
                            "{:?} is not an address:port such as \"127.0.0.1:9750\" (\"\" disables)",
                            r.listen
                        ),
                    );
                    None
                }
            }
        };
        Metrics { listen }
    }

    fn dnsbl(&mut self, r: RawDnsbl, have_proxy: bool) -> Dnsbl {
        let mut sites = Vec::new();
        if r.sites.is_empty() {
            self.err(
                "dnsbl.sites",
                "at least one site is required, such as \"zen.spamhaus.org=127.0.0.[2..11]*3\"",
            );
        }
        for (i, text) in r.sites.iter().enumerate() {
            let key = format!("dnsbl.sites[{i}]");
            for got in crate::dnsbl::site::parse_sites(text) {
                match got {
                    Ok(s) => sites.push(s),
                    Err((spec, e)) => self.err(&key, format!("{spec:?}: {e}")),
                }
            }
        }
        let threshold = self.signed("dnsbl.threshold", r.threshold, 1, 1000);
        let allowlist_threshold =
            self.signed("dnsbl.allowlist_threshold", r.allowlist_threshold, -1000, 0);
        let action = self.choice("dnsbl.action", &r.action, "an action", &ACTION_NAMES);
        let repeat_action = if r.repeat_action == "none" {
            None
        } else {
            Some(self.choice(
                "dnsbl.repeat_action",
                &r.repeat_action,
                "an action (or \"none\")",
                &ACTION_NAMES,
            ))
        };
        if r.nameservers.is_empty() {
            self.err(
                "dnsbl.nameservers",
                "at least one nameserver is required, such as \"127.0.0.1:53\"",
            );
        }
        let mut nameservers = Vec::new();
        for (i, n) in r.nameservers.iter().enumerate() {
            match crate::dnsbl::parse_nameserver(n) {
                Some(a) => nameservers.push(a),
                None => self.err(
                    &format!("dnsbl.nameservers[{i}]"),
                    format!("{n:?} is not an address or address:port such as \"127.0.0.1:53\""),
                ),
            }
        }
        let secs = |v: &mut Self, key: &str, n: i64, lo: u32, hi: u32| {
            std::time::Duration::from_secs(v.int(key, n, lo, hi).into())
        };
        let min_ttl = secs(self, "dnsbl.min_ttl", r.min_ttl, 1, 86_400);
        let max_ttl = secs(self, "dnsbl.max_ttl", r.max_ttl, 1, 7 * 86_400);
        if max_ttl < min_ttl {
            self.err(
                "dnsbl.max_ttl",
                format!(
                    "{}s is below min_ttl ({}s)",
                    max_ttl.as_secs(),
                    min_ttl.as_secs()
                ),
            );
        }
        let mut ports = Vec::new();
        for (i, &p) in r.ports.iter().enumerate() {
            match u16::try_from(p) {
                Ok(p) if p != 0 && !ports.contains(&p) => ports.push(p),
                _ => self.err(
                    &format!("dnsbl.ports[{i}]"),
                    format!("{p} is not a port (1-65535) or is listed twice"),
                ),
            }
        }
        Dnsbl {
            sites,
            threshold,
            allowlist_threshold,
            action,
            repeat_action,
            nameservers,
            timeout: secs(self, "dnsbl.timeout", r.timeout, 1, 60),
            attempts: self.int("dnsbl.attempts", r.attempts, 1, 10),
            min_ttl,
            max_ttl,
            concurrency: self.int("dnsbl.concurrency", r.concurrency, 1, 10_000),
            cache_size: self.int("dnsbl.cache_size", r.cache_size, 1, 10_000_000),
            probe_interval: secs(self, "dnsbl.probe_interval", r.probe_interval, 1, 86_400),
            ports,
            // Without a proxy, nothing else would start a lookup.
            inline: r.inline.unwrap_or(!have_proxy),
        }
    }

    fn escalation(&mut self, r: RawEscalation) -> Escalation {
        let secs = |v: &mut Self, key: &str, n: i64, hi: u32| {
            std::time::Duration::from_secs(v.int(key, n, 1, hi).into())
        };
        Escalation {
            after: self.int("escalation.after", r.after, 1, 1_000_000),
            within: secs(self, "escalation.within", r.within, 86_400),
            action: self.choice("escalation.action", &r.action, "an action", &ACTION_NAMES),
            ttl: secs(self, "escalation.ttl", r.ttl, 7 * 86_400),
            max_tracked: self.int("escalation.max_tracked", r.max_tracked, 1, 10_000_000),
        }
    }

    /// A signed `v` within `lo..=hi`, else an error and `lo`.
    fn signed(&mut self, key: &str, v: i64, lo: i32, hi: i32) -> i32 {
        match i32::try_from(v) {
            Ok(x) if (lo..=hi).contains(&x) => x,
            _ => {
                self.err(key, format!("{v} is out of range ({lo} to {hi})"));
                lo
            }
        }
    }

    fn proxy(&mut self, r: RawProxy) -> Proxy {
        if r.listen.is_empty() {
            self.err("proxy.listen", "at least one address:port is required");
        }
        let listen = self.listen_addrs("proxy.listen", &r.listen, &[]);
        if r.backends.is_empty() {
            self.err(
                "proxy.backends",
                "at least one backend host:port is required (the content filter's SMTP port)",
            );
        }
        let smtps_listen = self.listen_addrs("proxy.smtps_listen", &r.smtps_listen, &listen);
        let all_listen: Vec<SocketAddr> = listen.iter().chain(&smtps_listen).copied().collect();
        let backends = self.backends("proxy.backends", &r.backends, &all_listen);
        if !smtps_listen.is_empty() && r.smtps_backends.is_empty() {
            self.err(
                "proxy.smtps_backends",
                "required with proxy.smtps_listen: the content filter's implicit TLS port",
            );
        }
        let smtps_backends = self.backends("proxy.smtps_backends", &r.smtps_backends, &all_listen);
        let hostname = if r.hostname.is_empty() {
            system_hostname()
        } else {
            if r.hostname.len() > 253
                || !r
                    .hostname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            {
                self.err(
                    "proxy.hostname",
                    format!(
                        "{:?} is not a host name (letters, digits, - and .)",
                        r.hostname
                    ),
                );
            }
            r.hostname
        };
        let tempfail_reply = self.reply("proxy.tempfail_reply", r.tempfail_reply, b'4');
        let reject_reply = self.reply("proxy.reject_reply", r.reject_reply, b'5');
        let rcpt_reply = self.reply("proxy.rcpt_reply", r.rcpt_reply, b'5');
        let secs = |v: &mut Self, key: &str, n: i64, hi: u32| {
            std::time::Duration::from_secs(v.int(key, n, 1, hi).into())
        };
        Proxy {
            listen,
            backends,
            proxy_protocol: self.choice(
                "proxy.proxy_protocol",
                &r.proxy_protocol,
                "a PROXY protocol version",
                &ProxyProtocol::NAMES,
            ),
            hostname,
            tempfail_reply,
            reject_reply,
            connect_timeout: secs(self, "proxy.connect_timeout", r.connect_timeout, 300),
            backend_greeting_timeout: secs(
                self,
                "proxy.backend_greeting_timeout",
                r.backend_greeting_timeout,
                300,
            ),
            idle_timeout: secs(self, "proxy.idle_timeout", r.idle_timeout, 86_400),
            shutdown_timeout: secs(self, "proxy.shutdown_timeout", r.shutdown_timeout, 3600),
            max_connections: self.int("proxy.max_connections", r.max_connections, 1, 1_000_000),
            max_per_client: self.int("proxy.max_per_client", r.max_per_client, 1, 1_000_000),
            reject_at: self.choice(
                "proxy.reject_at",
                &r.reject_at,
                "a place to reject",
                &RejectAt::NAMES,
            ),
            rcpt_reply,
            greet_wait: match r.greet_wait.millis() {
                Ok(0) => None,
                Ok(ms) if ms <= 60_000 => Some(std::time::Duration::from_millis(ms)),
                Ok(_) => {
                    self.err("proxy.greet_wait", "at most 60s (0 turns the test off)");
                    None
                }
                Err(e) => {
                    self.err("proxy.greet_wait", e);
                    None
                }
            },
            greet_action: self.choice(
                "proxy.greet_action",
                &r.greet_action,
                "an action for pregreet violators",
                &ACTION_NAMES[..4],
            ),
            greet_ttl: match r.greet_ttl.millis() {
                Ok(ms) if (1000..=30 * 86_400_000).contains(&ms) => {
                    std::time::Duration::from_millis(ms)
                }
                Ok(_) => {
                    self.err("proxy.greet_ttl", "from 1s to 30d");
                    std::time::Duration::from_secs(3600)
                }
                Err(e) => {
                    self.err("proxy.greet_ttl", e);
                    std::time::Duration::from_secs(3600)
                }
            },
            balance: self.choice(
                "proxy.balance",
                &r.balance,
                "a balance mode",
                &Balance::NAMES,
            ),
            smtps_listen,
            smtps_backends,
            backlog: self.int("proxy.backlog", r.backlog, 1, 65_535),
        }
    }

    /// Listen addresses of `key`, none repeated here or in `taken`.
    fn listen_addrs(
        &mut self,
        key: &str,
        list: &[String],
        taken: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        let mut listen = Vec::new();
        for (i, a) in list.iter().enumerate() {
            let key = format!("{key}[{i}]");
            match a.parse::<SocketAddr>() {
                Ok(s) if s.port() == 0 => self.err(&key, format!("{a:?} has port 0")),
                Ok(s) if listen.contains(&s) || taken.contains(&s) => {
                    self.err(&key, format!("{a:?} is listed twice"))
                }
                Ok(s) => listen.push(s),
                Err(_) => self.err(
                    &key,
                    format!("{a:?} is not an address:port such as \"0.0.0.0:25\" or \"[::]:25\""),
                ),
            }
        }
        listen
    }

    /// Backends of `key`, none repeated, none one of the proxy's own `listen` addresses.
    fn backends(&mut self, key: &str, list: &[String], listen: &[SocketAddr]) -> Vec<Backend> {
        let mut backends = Vec::new();
        for (i, b) in list.iter().enumerate() {
            let key = format!("{key}[{i}]");
            match parse_backend(b) {
                Some(be) if backends.contains(&be) => {
                    self.err(&key, format!("{b:?} is listed twice"))
                }
                Some(be) => {
                    if let Ok(ip) = be.host.parse::<std::net::IpAddr>()
                        && listen.iter().any(|l| l.port() == be.port && (l.ip() == ip))
                    {
                        self.err(
                            &key,
                            format!("{b:?} is one of proxy.listen: the proxy would loop"),
                        );
                    }
                    backends.push(be);
                }
                None => self.err(
                    &key,
                    format!(
                        "{b:?} is not a host:port such as \"127.0.0.1:10025\" or \"[::1]:10025\""
                    ),
                ),
            }
        }
        backends
    }

    /// A one-line SMTP reply whose code starts with `class` (4 or 5).
    fn reply(&mut self, key: &str, text: String, class: u8) -> String {
        let b = text.as_bytes();
        let code_ok =
            b.len() >= 4 && b[0] == class && b[1..3].iter().all(u8::is_ascii_digit) && b[3] == b' ';
        if !code_ok {
            self.err(
                key,
                format!(
                    "{text:?} does not start with a {}xx reply code and a space, such as \"{}\"",
                    class as char,
                    if class == b'4' {
                        "421 4.7.0 ..."
                    } else {
                        "554 5.7.1 ..."
                    }
                ),
            );
        } else if text.len() > 400 || text.bytes().any(|c| c.is_ascii_control()) {
            self.err(
                key,
                "a reply is one line of at most 400 characters, without control characters",
            );
        } else {
            let mut rest = text.as_str();
            while let Some(at) = rest.find('{') {
                rest = &rest[at..];
                match REPLY_PLACEHOLDERS.iter().find(|p| rest.starts_with(**p)) {
                    Some(p) => rest = &rest[p.len()..],
                    None => {
                        self.err(
                            key,
                            format!(
                                "unknown placeholder in {text:?} (known: {})",
                                REPLY_PLACEHOLDERS.join(", ")
                            ),
                        );
                        break;
                    }
                }
            }
        }
        text
    }

    fn lists(&mut self, block: Vec<RawBlock>, allow: Vec<RawAllow>, base: &Path) -> Vec<ListDef> {
        let mut names: HashMap<String, String> = HashMap::new();
        let blocks = block.into_iter().enumerate().map(|(i, b)| {
            let key = format!("block[{i}]");
            (
                key,
                b.name,
                Some(b.action),
                b.prefixes,
                b.file,
                b.format,
                b.force,
            )
        });
        let allows = allow.into_iter().enumerate().map(|(i, a)| {
            let key = format!("allow[{i}]");
            (key, a.name, None, a.prefixes, a.file, a.format, a.force)
        });
        let mut out = Vec::new();
        for (key, name, action, prefixes, file, format, force) in
            blocks.chain(allows).collect::<Vec<_>>()
        {
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
            if !name_ok {
                self.err(
                    &format!("{key}.name"),
                    format!("{name:?} is not a list name (1 to 64 of a-z 0-9 _ . -)"),
                );
            } else if RESERVED_LISTS.contains(&name.as_str()) {
                self.err(
                    &format!("{key}.name"),
                    format!(
                        "list name {name:?} is the CLI's own ({}): choose another name",
                        RESERVED_LISTS.join(", ")
                    ),
                );
            } else if let Some(first) = names.get(&name) {
                self.err(
                    &format!("{key}.name"),
                    format!("list name {name:?} is already used by {first}"),
                );
            } else {
                names.insert(name.clone(), key.clone());
            }
            let kind = match action {
                Some(a) => ListKind::Block {
                    action: self.choice(&format!("{key}.action"), &a, "an action", &ACTION_NAMES),
                },
                None => ListKind::Allow,
            };
            let mut entries = Vec::new();
            for (i, p) in prefixes.iter().enumerate() {
                match p.parse::<Prefix>() {
                    Ok(prefix) => entries.push(ImportEntry {
                        prefix,
                        reason: None,
                    }),
                    Err(e) => self.err(&format!("{key}.prefixes[{i}]"), e.to_string()),
                }
            }
            let format = format.and_then(|f| match f.parse::<Format>() {
                Ok(f) => Some(f),
                Err(e) => {
                    self.err(&format!("{key}.format"), e.to_string());
                    None
                }
            });
            let file = file.map(|f| base.join(f));
            let inline = entries.len();
            match &file {
                Some(f) => entries.extend(self.list_file(&format!("{key}.file"), f, format)),
                None if format.is_some() => {
                    self.err(
                        &format!("{key}.format"),
                        "format is set but there is no file",
                    );
                }
                None => {}
            }
            // One slip (a /0 for a /32) would drop or pass all mail: a /0 is refused. Other
            // prefixes shorter than /8 or /16 are warned of only: bogon lists hold some
            // (240.0.0.0/4, fc00::/7), and a config that started before must start after an
            // upgrade. `force = true` takes both without a word.
            if !force {
                let broad = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.prefix.too_broad());
                for (i, e) in broad.take(5) {
                    let where_ = if i < inline {
                        format!("{key}.prefixes[{i}]")
                    } else {
                        format!("{key}.file")
                    };
                    if e.prefix.prefix_len() == 0 {
                        self.err(
                            &where_,
                            format!(
                                "{} matches every address; add force = true to this list if \
                                 you mean it",
                                e.prefix
                            ),
                        );
                    } else {
                        let line = self.spans.offset(&where_).map(|at| line_at(self.text, at));
                        tracing::warn!(
                            key = %where_,
                            line = ?line,
                            prefix = %e.prefix,
                            "config: a prefix covering a large part of the address space \
                             (shorter than /8 for IPv4, /16 for IPv6); force = true in its \
                             list says it is meant"
                        );
                    }
                }
            }
            let mut seen = HashSet::new();
            entries.retain(|e| seen.insert(e.prefix));
            out.push(ListDef {
                name,
                kind,
                file,
                format,
                entries,
            });
        }
        out
    }

    /// A list file's entries; any unreadable or bad line refuses the config, since loading
    /// half a list would silently let through what the other half blocks.
    fn list_file(&mut self, key: &str, path: &Path, format: Option<Format>) -> Vec<ImportEntry> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.err(key, format!("cannot read {}: {e}", path.display()));
                return Vec::new();
            }
        };
        // Lossy: a stray Latin-1 byte in a comment must not make the whole list unreadable;
        // a bad byte in an address still fails that line.
        let text = String::from_utf8_lossy(&bytes);
        let format = format.unwrap_or_else(|| Format::detect(&text));
        let parsed = formats::parse(&text, format);
        if let Some(first) = parsed.errors.first() {
            let more = match parsed.errors.len() - 1 {
                0 => String::new(),
                1 => " (and 1 more bad line)".to_owned(),
                n => format!(" (and {n} more bad lines)"),
            };
            self.err(
                key,
                format!("{}:{}: {}{more}", path.display(), first.line, first.message),
            );
        }
        parsed.entries
    }
}

/// List names the daemon keeps for the CLI (`block add`, `allow add`, `block add --ttl`):
/// a config list of one of these names would take the CLI's entries over.
pub const RESERVED_LISTS: [&str; 3] = ["cli", "cli-allow", "cli-ttl"];

/// `host:port`, `[v6]:port`; `None` when it is neither.
fn parse_backend(s: &str) -> Option<Backend> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return (a.port() != 0).then(|| Backend {
            host: a.ip().to_string(),
            port: a.port(),
        });
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        && !host.starts_with(['-', '.']);
    name_ok.then(|| Backend {
        host: host.to_owned(),
        port,
    })
}

/// The system's host name, or "localhost" when it cannot be read.
fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests;
