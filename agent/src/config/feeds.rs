//! `[[feeds]]` (lists fetched on a schedule) and `[crowdsec]` (the fleet reporter's LAPI
//! machine login), validated like every other section.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ACTION_NAMES, Validator};
use crate::policy::Action;
use crate::sources::formats::Format;

/// What a feed's body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FeedFormat {
    /// One of the list formats `block import` reads too.
    List(Format),
    /// `address,score` lines; [`Feed::thresholds`] map scores to actions.
    Csv,
    /// A CrowdSec LAPI: `source` is its base URL, the decision stream is read with a bouncer
    /// key.
    CrowdSec,
}

impl FeedFormat {
    /// Every format as the config spells it.
    pub const NAMES: [(FeedFormat, &'static str); 6] = [
        (FeedFormat::List(Format::Plain), "plain"),
        (FeedFormat::List(Format::SpamhausDrop), "spamhaus-drop"),
        // The parser takes either form; the name says what the site fetches.
        (FeedFormat::List(Format::SpamhausDrop), "spamhaus-drop-json"),
        (FeedFormat::List(Format::Rbldnsd), "rbldnsd"),
        (FeedFormat::Csv, "csv"),
        (FeedFormat::CrowdSec, "crowdsec"),
    ];

    /// The name shown by `feeds list`.
    pub fn name(self) -> &'static str {
        match self {
            FeedFormat::List(f) => f.name(),
            FeedFormat::Csv => "csv",
            FeedFormat::CrowdSec => "crowdsec",
        }
    }
}

impl Feed {
    /// What the feed's entries get, as `feeds list` shows it: the action, or for a csv
    /// feed its thresholds (`score>=90 drop, score>=50 tempfail`), which decide instead.
    pub fn action_label(&self) -> String {
        if self.format != FeedFormat::Csv {
            return self.action.name().to_owned();
        }
        self.thresholds
            .iter()
            .map(|(score, a)| format!("score>={score} {}", a.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Where a feed is fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedSource {
    /// An `http://` or `https://` URL.
    Http(String),
    /// A `file://` path (absolute).
    File(PathBuf),
}

impl std::fmt::Display for FeedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedSource::Http(u) => f.write_str(u),
            FeedSource::File(p) => write!(f, "file://{}", p.display()),
        }
    }
}

/// A validated `[[feeds]]` entry. Its entries live in the store list of the same name.
#[derive(Clone, Debug, PartialEq)]
pub struct Feed {
    /// Unique among feeds and lists.
    pub name: String,
    pub source: FeedSource,
    pub format: FeedFormat,
    /// The format as the config spells it (`spamhaus-drop-json` parses as
    /// `spamhaus-drop`): what `feeds list` shows.
    pub format_name: &'static str,
    /// What a listed address gets (csv: the thresholds decide instead).
    pub action: Action,
    /// Time between fetches.
    pub interval: Duration,
    /// Whole fetch, connect to last byte.
    pub timeout: Duration,
    /// Largest body accepted (after gzip decoding).
    pub max_bytes: u64,
    /// More entries than this refuse the update (a wrong URL must not fill the maps).
    pub max_entries: Option<usize>,
    /// Largest share of the list one update may remove without `feeds sync --force`.
    pub max_shrink: f64,
    /// More bad lines than this share of the body's lines refuse the update.
    pub max_bad_lines: f64,
    /// csv only: (lowest score, action), highest score first.
    pub thresholds: Vec<(f64, Action)>,
    /// crowdsec only: the bouncer key (`cscli bouncers add`).
    pub api_key: Option<String>,
}

/// `[crowdsec]`: the LAPI this gateway reports what it learned to, as a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrowdSec {
    /// The LAPI's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Machine login (`cscli machines add NAME`).
    pub machine_id: String,
    pub password: String,
    /// Learned sources reported (`dnsbl`, `escalation`, `pregreet`, `cli`).
    pub report: Vec<String>,
}

/// Learned sources the reporter knows.
pub const REPORTABLE: [&str; 4] = ["dnsbl", "escalation", "pregreet", "cli"];

/// Shortest interval: a list server is not polled in a loop. The LAPI is local and cheap,
/// and its bouncers poll every 10 s by default.
const MIN_INTERVAL: u64 = 60;
const MIN_INTERVAL_CROWDSEC: u64 = 10;

/// Seconds, or a number with a unit: `90s`, `30m`, `1h`, `1d`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Secs(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeed {
    name: String,
    source: String,
    format: String,
    #[serde(default = "super::default_action")]
    action: String,
    /// An hour: what list publishers ask for; Spamhaus DROP changes a few times a day.
    #[serde(default = "default_interval")]
    interval: RawDuration,
    #[serde(default = "default_timeout")]
    timeout: RawDuration,
    /// 256 MiB: a 5M-line host list is ~80 MiB.
    #[serde(default = "default_max_bytes")]
    max_bytes: i64,
    #[serde(default)]
    max_entries: Option<i64>,
    /// Default: `[limits] max_shrink_percent`.
    #[serde(default)]
    max_shrink_percent: Option<i64>,
    /// A few bad lines are typos in a list; many mean it is not the format we think.
    #[serde(default = "default_max_bad")]
    max_bad_lines_percent: i64,
    #[serde(default)]
    thresholds: Vec<RawThreshold>,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    api_key_file: Option<PathBuf>,
}

fn default_interval() -> RawDuration {
    RawDuration::Secs(3600)
}
fn default_timeout() -> RawDuration {
    RawDuration::Secs(60)
}
fn default_max_bytes() -> i64 {
    256 << 20
}
fn default_max_bad() -> i64 {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThreshold {
    score: f64,
    action: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCrowdSec {
    url: String,
    #[serde(default)]
    machine_id: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// What `cscli machines add -f FILE` writes: `url`, `login`, `password`.
    #[serde(default)]
    credentials_file: Option<PathBuf>,
    /// DNSBL listings and escalations: what one gateway learns that others cannot see.
    #[serde(default = "default_report")]
    report: Vec<String>,
}

fn default_report() -> Vec<String> {
    vec!["dnsbl".into(), "escalation".into()]
}

/// `90`, `90s`, `30m`, `12h`, `7d` as seconds.
fn parse_secs(d: &RawDuration) -> Result<u64, String> {
    match d {
        RawDuration::Secs(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
        RawDuration::Text(s) => {
            let t = s.trim();
            let at = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(at);
            let mult = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86400,
                _ => {
                    return Err(format!(
                        "{s:?} is not a duration such as \"90s\", \"30m\", \"1h\""
                    ));
                }
            };
            num.parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(|| format!("{s:?} is not a duration such as \"90s\", \"30m\", \"1h\""))
        }
    }
}

/// A cscli credentials file (`cscli machines add NAME -f FILE`): YAML with `url`, `login`
/// and `password`, read by a YAML parser since cscli quotes a password as YAML does.
pub fn read_credentials(text: &str) -> Result<(String, String, String), String> {
    #[derive(serde::Deserialize)]
    struct Credentials {
        url: Option<String>,
        login: Option<String>,
        password: Option<String>,
    }
    let c: Credentials =
        serde_norway::from_str(text).map_err(|e| format!("not a credentials file: {e}"))?;
    match (c.url, c.login, c.password) {
        (Some(u), Some(l), Some(p)) if !l.is_empty() && !p.is_empty() => Ok((u, l, p)),
        _ => Err("needs url, login and password".into()),
    }
}

fn http_url_ok(u: &str) -> bool {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

impl Validator<'_> {
    pub(super) fn feeds(
        &mut self,
        raw: Vec<RawFeed>,
        list_names: &HashSet<String>,
        max_shrink_percent: u32,
        base: &Path,
    ) -> Vec<Feed> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("feeds[{i}].{k}");
            if !crate::policy::store::valid_name(&r.name) {
                self.err(
                    &key("name"),
                    format!("{:?} is not a list name (1 to 64 of a-z 0-9 _ . -)", r.name),
                );
            } else if crate::config::RESERVED_LISTS.contains(&r.name.as_str()) {
                self.err(
                    &key("name"),
                    format!(
                        "{:?} is the CLI's own list ({} are reserved): choose another name",
                        r.name,
                        crate::config::RESERVED_LISTS.join(", ")
                    ),
                );
            } else if list_names.contains(&r.name) || !seen.insert(r.name.clone()) {
                self.err(
                    &key("name"),
                    format!("name {:?} is already used by another list or feed", r.name),
                );
            }
            let format = self.choice(
                &key("format"),
                &r.format,
                "a feed format",
                &FeedFormat::NAMES,
            );
            let source = if let Some(p) = r.source.strip_prefix("file://") {
                let p = base.join(p);
                if format == FeedFormat::CrowdSec {
                    self.err(
                        &key("source"),
                        "a crowdsec feed needs the LAPI's http(s):// URL",
                    );
                }
                FeedSource::File(p)
            } else if http_url_ok(&r.source) {
                FeedSource::Http(r.source.trim_end_matches('/').to_owned())
            } else {
                self.err(
                    &key("source"),
                    format!("{:?} is not an http://, https:// or file:// URL", r.source),
                );
                FeedSource::Http(String::new())
            };
            let action = self.choice(&key("action"), &r.action, "an action", &ACTION_NAMES);
            let min = if format == FeedFormat::CrowdSec {
                MIN_INTERVAL_CROWDSEC
            } else {
                MIN_INTERVAL
            };
            let interval = match parse_secs(&r.interval) {
                Ok(s) if s < min => {
                    self.err(
                        &key("interval"),
                        format!(
                            "{s}s is too short for a {} feed (at least {min}s)",
                            format.name()
                        ),
                    );
                    min
                }
                Ok(s) if s > 7 * 86400 => {
                    self.err(&key("interval"), format!("{s}s is longer than a week"));
                    min
                }
                Ok(s) => s,
                Err(e) => {
                    self.err(&key("interval"), e);
                    min
                }
            };
            let timeout = match parse_secs(&r.timeout) {
                Ok(s) if (1..=3600).contains(&s) => s,
                Ok(s) => {
                    self.err(&key("timeout"), format!("{s}s is out of range (1s-3600s)"));
                    60
                }
                Err(e) => {
                    self.err(&key("timeout"), e);
                    60
                }
            };
            let max_bytes = match u64::try_from(r.max_bytes) {
                Ok(n) if (1024..=(4u64 << 30)).contains(&n) => n,
                _ => {
                    self.err(
                        &key("max_bytes"),
                        format!("{} is out of range (1024 to 4 GiB)", r.max_bytes),
                    );
                    1024
                }
            };
            let max_entries = r
                .max_entries
                .map(|n| self.int(&key("max_entries"), n, 1, u32::MAX) as usize);
            let shrink = match r.max_shrink_percent {
                Some(n) => self.int(&key("max_shrink_percent"), n, 0, 100),
                None => max_shrink_percent,
            };
            let bad = self.int(
                &key("max_bad_lines_percent"),
                r.max_bad_lines_percent,
                0,
                100,
            );
            let mut thresholds = Vec::new();
            for (j, t) in r.thresholds.iter().enumerate() {
                let k = format!("feeds[{i}].thresholds[{j}]");
                if !t.score.is_finite() {
                    self.err(&format!("{k}.score"), "not a number");
                }
                let a = self.choice(
                    &format!("{k}.action"),
                    &t.action,
                    "an action",
                    &ACTION_NAMES,
                );
                if thresholds.iter().any(|(s, _)| *s == t.score) {
                    self.err(
                        &format!("{k}.score"),
                        format!("score {} is listed twice", t.score),
                    );
                }
                thresholds.push((t.score, a));
            }
            thresholds.sort_by(|a, b| b.0.total_cmp(&a.0));
            match format {
                FeedFormat::Csv if thresholds.is_empty() => self.err(
                    &key("thresholds"),
                    "a csv feed needs thresholds, e.g. [{ score = 80, action = \"drop\" }]",
                ),
                FeedFormat::Csv => {}
                _ if !thresholds.is_empty() => {
                    self.err(&key("thresholds"), "thresholds apply to csv feeds only")
                }
                _ => {}
            }
            let api_key = match (r.api_key, r.api_key_file) {
                (Some(_), Some(_)) => {
                    self.err(
                        &key("api_key_file"),
                        "give api_key or api_key_file, not both",
                    );
                    None
                }
                (Some(k), None) => Some(k),
                (None, Some(f)) => {
                    let f = base.join(f);
                    match std::fs::read_to_string(&f) {
                        Ok(k) if !k.trim().is_empty() => Some(k.trim().to_owned()),
                        Ok(_) => {
                            self.err(&key("api_key_file"), format!("{} is empty", f.display()));
                            None
                        }
                        Err(e) => {
                            self.err(
                                &key("api_key_file"),
                                format!("cannot read {}: {e}", f.display()),
                            );
                            None
                        }
                    }
                }
                (None, None) => None,
            };
            match (format, &api_key) {
                (FeedFormat::CrowdSec, None) => self.err(
                    &key("api_key"),
                    "a crowdsec feed needs a bouncer key (api_key or api_key_file; cscli bouncers add NAME)",
                ),
                (FeedFormat::CrowdSec, Some(k)) if k.contains(['\r', '\n']) || k.is_empty() => {
                    self.err(&key("api_key"), "not a bouncer key")
                }
                (FeedFormat::CrowdSec, _) => {}
                (_, Some(_)) => self.err(&key("api_key"), "api_key applies to crowdsec feeds only"),
                _ => {}
            }
            out.push(Feed {
                name: r.name,
                source,
                format,
                format_name: FeedFormat::NAMES
                    .iter()
                    .find(|(_, n)| *n == r.format)
                    .map_or(format.name(), |(_, n)| n),
                action,
                interval: Duration::from_secs(interval),
                timeout: Duration::from_secs(timeout),
                max_bytes,
                max_entries,
                max_shrink: f64::from(shrink) / 100.0,
                max_bad_lines: f64::from(bad) / 100.0,
                thresholds,
                api_key,
            });
        }
        out
    }

    pub(super) fn crowdsec(&mut self, r: RawCrowdSec, base: &Path) -> CrowdSec {
        if !http_url_ok(&r.url) {
            self.err(
                "crowdsec.url",
                format!("{:?} is not an http:// or https:// URL", r.url),
            );
        }
        let (mut machine_id, mut password) = (r.machine_id, r.password);
        let file_given = r.credentials_file.is_some();
        if let Some(f) = r.credentials_file {
            if machine_id.is_some() || password.is_some() {
                self.err(
                    "crowdsec.credentials_file",
                    "give machine_id and password, or credentials_file, not both",
                );
            }
            let f = base.join(f);
            match std::fs::read_to_string(&f)
                .map_err(|e| e.to_string())
                .and_then(|t| read_credentials(&t))
            {
                Ok((_, l, p)) => {
                    machine_id = Some(l);
                    password = Some(p);
                }
                Err(e) => self.err("crowdsec.credentials_file", format!("{}: {e}", f.display())),
            }
        }
        let machine_id = machine_id.unwrap_or_default();
        let password = password.unwrap_or_default();
        // A credentials file that failed was named above.
        if !file_given && (machine_id.is_empty() || password.is_empty()) {
            self.err(
                "crowdsec",
                "needs machine_id and password, or credentials_file (cscli machines add NAME -f FILE)",
            );
        }
        for (i, s) in r.report.iter().enumerate() {
            if !REPORTABLE.contains(&s.as_str()) {
                self.err(
                    &format!("crowdsec.report[{i}]"),
                    format!("{s:?} is not a learned source ({})", REPORTABLE.join(", ")),
                );
            }
        }
        CrowdSec {
            url: r.url.trim_end_matches('/').to_owned(),
            machine_id,
            password,
            report: r.report,
        }
    }
}
