//! Fetching a feed and turning its body into entries: HTTP(S) with reqwest and rustls
//! (conditional requests, gzip, timeouts, bounded redirects and body), `file://`, the
//! CrowdSec LAPI decision stream, and the last good copy kept on disk.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Feed, FeedFormat, FeedSource};
use crate::policy::{Action, Prefix};
use crate::sources::formats::{self, LineError};

/// Redirects followed at most: list mirrors redirect once or twice, never more.
const MAX_REDIRECTS: usize = 5;

/// What the server said about the copy we have (RFC 9110 validators).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

/// A fetch's outcome.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the copy we have is current.
    NotModified,
    /// A whole body with its validators.
    Body {
        body: Vec<u8>,
        validators: Validators,
    },
}

/// Why a fetch gave nothing usable. The last good copy stays in force for every one.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered with an error status.
    #[error("HTTP status {status}")]
    Status { status: u16 },
    /// No whole answer within the feed's timeout.
    #[error("timed out after {secs}s")]
    Timeout { secs: u64 },
    /// The body ended before its announced length, or the connection broke mid-body.
    #[error("body cut short after {got} bytes: {detail}")]
    Truncated { got: u64, detail: String },
    /// The body is larger than `max_bytes`.
    #[error("body larger than {max} bytes")]
    TooLarge { max: u64 },
    /// Connecting, TLS, redirects or the request failed.
    #[error("request failed: {0}")]
    Request(String),
    /// A `file://` source could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The HTTP client every feed shares (connection pool, TLS roots).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("prefilter/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .connect_timeout(Duration::from_secs(15))
        .gzip(true)
        .build()
        .expect("a client with static settings builds")
}

fn request_error(e: reqwest::Error, secs: u64) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout { secs }
    } else {
        // The chain carries the useful part (connection refused, certificate, ...).
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        FetchError::Request(msg)
    }
}

/// Fetches `url` with `headers`, reading at most `max` bytes, within `timeout`.
async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, String)],
    timeout: Duration,
    max: u64,
) -> Result<(reqwest::StatusCode, Validators, Vec<u8>), FetchError> {
    let secs = timeout.as_secs();
    let mut req = client.get(url).timeout(timeout);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let mut resp = req.send().await.map_err(|e| request_error(e, secs))?;
    let status = resp.status();
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let validators = Validators {
        etag: header(reqwest::header::ETAG),
        last_modified: header(reqwest::header::LAST_MODIFIED),
    };
    let mut body = Vec::new();
    if status.is_success() {
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if body.len() as u64 + c.len() as u64 > max {
                        return Err(FetchError::TooLarge { max });
                    }
                    body.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Err(FetchError::Timeout { secs }),
                Err(e) => {
                    return Err(FetchError::Truncated {
                        got: body.len() as u64,
                        detail: match request_error(e, secs) {
                            FetchError::Request(m) => m,
                            other => other.to_string(),
                        },
                    });
                }
            }
        }
    }
    Ok((status, validators, body))
}

/// Fetches a list feed; `have` are the validators of the last good copy, if any.
pub async fn fetch(
    client: &reqwest::Client,
    feed: &Feed,
    have: Option<&Validators>,
) -> Result<Fetched, FetchError> {
    match &feed.source {
        FeedSource::File(path) => {
            use tokio::io::AsyncReadExt;
            let file_err = |source| FetchError::File {
                path: path.clone(),
                source,
            };
            // Bounded as a download is: a file on a hung mount must not hold the feed
            // forever, nor a huge file fill memory before its size is checked. Only a
            // regular file: opening a FIFO waits for a writer in a thread that no timeout
            // frees, and a device (/dev/zero) never ends.
            let read = async {
                let meta = tokio::fs::metadata(path).await.map_err(file_err)?;
                if !meta.is_file() {
                    return Err(file_err(std::io::Error::other(
                        "not a regular file (a FIFO, device or directory)",
                    )));
                }
                let f = tokio::fs::File::open(path).await.map_err(file_err)?;
                let mut body = Vec::new();
                f.take(feed.max_bytes.saturating_add(1))
                    .read_to_end(&mut body)
                    .await
                    .map_err(file_err)?;
                Ok::<_, FetchError>(body)
            };
            let read = tokio::time::timeout(feed.timeout, read)
                .await
                .map_err(|_| FetchError::Timeout {
                    secs: feed.timeout.as_secs(),
                })??;
            if read.len() as u64 > feed.max_bytes {
                return Err(FetchError::TooLarge {
                    max: feed.max_bytes,
                });
            }
            Ok(Fetched::Body {
                body: read,
                validators: Validators::default(),
            })
        }
        FeedSource::Http(url) => {
            let mut headers = Vec::new();
            if let Some(v) = have {
                if let Some(e) = &v.etag {
                    headers.push(("if-none-match", e.clone()));
                }
                if let Some(m) = &v.last_modified {
                    headers.push(("if-modified-since", m.clone()));
                }
            }
            let (status, validators, body) =
                get(client, url, &headers, feed.timeout, feed.max_bytes).await?;
            if status == reqwest::StatusCode::NOT_MODIFIED && have.is_some() {
                return Ok(Fetched::NotModified);
            }
            if !status.is_success() {
                return Err(FetchError::Status {
                    status: status.as_u16(),
                });
            }
            Ok(Fetched::Body { body, validators })
        }
    }
}

/// One entry a feed lists.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedEntry {
    pub prefix: Prefix,
    pub action: Action,
    pub reason: Option<String>,
    /// Unix seconds (CrowdSec decisions).
    pub expires: Option<u64>,
}

/// A parsed body.
#[derive(Debug, Default)]
pub struct ParsedFeed {
    pub entries: Vec<FeedEntry>,
    /// Unusable lines, in order.
    pub errors: Vec<LineError>,
    /// Lines that carried data (for the bad-line share).
    pub lines: usize,
}

/// Why a body is refused as a whole: the last good copy stays.
#[derive(Debug, thiserror::Error)]
pub enum ParseRefused {
    /// Too many bad lines: not the format we think, or damaged.
    #[error(
        "{bad} of {lines} lines are not {format} (limit {limit}%); first: line {line}: {message}"
    )]
    TooManyBad {
        bad: usize,
        lines: usize,
        format: &'static str,
        limit: u32,
        line: usize,
        message: String,
    },
    /// More entries than `max_entries`.
    #[error("{got} entries, more than max_entries = {max}")]
    TooMany { got: usize, max: usize },
}

/// Parses a list feed's body with its format, and checks the bad-line share and size.
pub fn parse_body(feed: &Feed, body: &[u8]) -> Result<ParsedFeed, ParseRefused> {
    // Lossy: a stray Latin-1 byte in a comment must not lose the whole feed.
    let text = String::from_utf8_lossy(body);
    let lines = text
        .lines()
        .filter(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with(['#', ';'])
        })
        .count();
    let mut out = ParsedFeed {
        lines,
        ..Default::default()
    };
    match feed.format {
        FeedFormat::List(f) => {
            let p = formats::parse(&text, f);
            out.errors = p.errors;
            out.entries = p
                .entries
                .into_iter()
                .map(|e| FeedEntry {
                    prefix: e.prefix,
                    action: feed.action,
                    reason: e.reason,
                    expires: None,
                })
                .collect();
        }
        FeedFormat::Csv => {
            let p = formats::parse_csv(&text);
            out.errors = p.errors;
            // An address listed twice (feeds concatenated upstream) keeps its highest
            // score, as the strongest action wins between lists; not the last line's,
            // which a store applying the batch in order would keep.
            let mut best: std::collections::HashMap<Prefix, usize> = Default::default();
            let mut scored: Vec<(Prefix, f64)> = Vec::with_capacity(p.entries.len());
            for (prefix, score) in p.entries {
                match best.entry(prefix) {
                    std::collections::hash_map::Entry::Occupied(at) => {
                        let s = &mut scored[*at.get()].1;
                        *s = s.max(score);
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(scored.len());
                        scored.push((prefix, score));
                    }
                }
            }
            out.entries = scored
                .into_iter()
                .filter_map(|(prefix, score)| {
                    // Highest threshold reached wins; below the lowest, not listed.
                    let (_, action) = feed.thresholds.iter().find(|(t, _)| score >= *t)?;
                    Some(FeedEntry {
                        prefix,
                        action: *action,
                        reason: Some(format!("score {score}")),
                        expires: None,
                    })
                })
                .collect();
        }
        FeedFormat::CrowdSec => unreachable!("the decision stream is not a body"),
    }
    let bad = out.errors.len();
    if bad > 0 && bad as f64 > feed.max_bad_lines * lines.max(1) as f64 {
        let first = &out.errors[0];
        return Err(ParseRefused::TooManyBad {
            bad,
            lines,
            format: feed.format.name(),
            limit: (feed.max_bad_lines * 100.0).round() as u32,
            line: first.line,
            message: first.message.clone(),
        });
    }
    if let Some(max) = feed.max_entries
        && out.entries.len() > max
    {
        return Err(ParseRefused::TooMany {
            got: out.entries.len(),
            max,
        });
    }
    Ok(out)
}

// ---- The last good copy ----------------------------------------------------------------

/// What is kept beside the body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CacheMeta {
    pub validators: Validators,
    /// Unix seconds of the fetch that brought this body.
    pub fetched: u64,
    /// The source it came from: a body of another URL is not a copy of this feed.
    pub source: String,
    /// CRC-32 of the body written with it: a body damaged or replaced on disk is not
    /// applied at start, nor are its validators sent (a 304 would keep it in force). None
    /// in metadata written by older agents.
    #[serde(default)]
    pub crc32: Option<u32>,
}

/// `STATE/feeds/NAME.body` and `.meta`: the last good body and its validators.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("feeds"),
        }
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.body")),
            self.dir.join(format!("{name}.meta")),
        )
    }

    /// The metadata alone (a CrowdSec feed keeps no body: its last success), if it is of
    /// `source`.
    pub fn load_meta(&self, name: &str, source: &str) -> Option<CacheMeta> {
        let (_, meta) = self.paths(name);
        let meta: CacheMeta = serde_json::from_slice(&std::fs::read(meta).ok()?).ok()?;
        (meta.source == source).then_some(meta)
    }

    /// Forgets feed `name`'s copy: the feed left the config.
    pub fn remove(&self, name: &str) {
        let (body, meta) = self.paths(name);
        for p in [body.with_extension("tmp"), body, meta] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The last good copy of feed `name` from `source`, if one is kept; a damaged one is
    /// logged.
    pub fn load(&self, name: &str, source: &str) -> Option<(Vec<u8>, CacheMeta)> {
        self.read(name, source, true)
    }

    /// The validators of feed `name`'s last good copy, if one is kept and whole. Silent
    /// about a damaged copy: a start reads the copy twice (these for the scheduler, then
    /// the body to apply), and [`Self::load`] reports it once.
    pub fn validators(&self, name: &str, source: &str) -> Option<Validators> {
        self.read(name, source, false).map(|(_, m)| m.validators)
    }

    fn read(&self, name: &str, source: &str, report: bool) -> Option<(Vec<u8>, CacheMeta)> {
        let (body, meta) = self.paths(name);
        // What a write cut short by a crash left; the pair it was replacing is whole.
        let _ = std::fs::remove_file(body.with_extension("tmp"));
        let meta: CacheMeta = serde_json::from_slice(&std::fs::read(meta).ok()?).ok()?;
        if meta.source != source {
            return None;
        }
        let body = std::fs::read(body).ok()?;
        if meta.crc32.is_some_and(|c| c != crc32fast::hash(&body)) {
            if !report {
                return None;
            }
            tracing::warn!(
                feed = name,
                "the feed's last good copy on disk does not match its metadata (damaged or \
                 replaced): not applied, the list stays as stored, and the next fetch asks \
                 for the whole body"
            );
            return None;
        }
        Some((body, meta))
    }

    /// Keeps `body` as the last good copy: body first, then the metadata that points at
    /// it, each written whole and renamed, so a crash leaves the old pair or the new one
    /// (a new body under old validators is only a wasted 200 on the next fetch).
    pub fn store(&self, name: &str, body: &[u8], meta: &CacheMeta) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let (b, m) = self.paths(name);
        atomic_write(&b, body)?;
        let meta = CacheMeta {
            crc32: Some(crc32fast::hash(body)),
            ..meta.clone()
        };
        atomic_write(
            &m,
            &serde_json::to_vec(&meta).map_err(std::io::Error::other)?,
        )
    }

    /// Updates only the metadata (a 304 with new validators).
    pub fn store_meta(&self, name: &str, meta: &CacheMeta) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let (_, m) = self.paths(name);
        atomic_write(
            &m,
            &serde_json::to_vec(meta).map_err(std::io::Error::other)?,
        )
    }
}

fn atomic_write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

// ---- CrowdSec LAPI decision stream ------------------------------------------------------

/// One decision of `/v1/decisions/stream`; other fields are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct Decision {
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub value: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub scenario: Option<String>,
    #[serde(default)]
    pub origin: Option<String>,
}

/// A stream answer: `null` when a side is empty.
#[derive(Debug, Default, Deserialize)]
pub struct Stream {
    #[serde(default)]
    pub new: Option<Vec<Decision>>,
    #[serde(default)]
    pub deleted: Option<Vec<Decision>>,
}

/// Reads the decision stream: the whole set when `startup`, else what changed since the
/// last call with this key.
pub async fn crowdsec_stream(
    client: &reqwest::Client,
    feed: &Feed,
    startup: bool,
) -> Result<(Stream, u64), FetchError> {
    let FeedSource::Http(base) = &feed.source else {
        return Err(FetchError::Request(
            "a crowdsec feed needs an http(s) URL".into(),
        ));
    };
    let url = format!("{base}/v1/decisions/stream?startup={startup}");
    let key = feed.api_key.clone().unwrap_or_default();
    let (status, _, body) = get(
        client,
        &url,
        &[("x-api-key", key)],
        feed.timeout,
        feed.max_bytes,
    )
    .await?;
    if !status.is_success() {
        return Err(FetchError::Status {
            status: status.as_u16(),
        });
    }
    let stream = serde_json::from_slice(&body)
        .map_err(|e| FetchError::Request(format!("not a decision stream: {e}")))?;
    Ok((stream, body.len() as u64))
}

/// A decision's prefix: scope `Ip` (an address) or `Range` (a CIDR); other scopes
/// (`Country`, `AS`, ...) are not addresses and are skipped with `None`.
pub fn decision_prefix(d: &Decision) -> Option<Result<Prefix, String>> {
    match d.scope.to_ascii_lowercase().as_str() {
        "ip" | "range" => Some(
            d.value
                .parse::<Prefix>()
                .map_err(|e| e.to_string())
                .and_then(|p| super::formats::not_everything(p, &d.value))
                .map_err(|e| format!("decision value: {e}")),
        ),
        _ => None,
    }
}

/// A Go `time.Duration` string (`3h59m58.5s`, `150ms`, `-2s`) in whole seconds, rounded
/// up; negative is 0. Hand-written: it is the one format the LAPI uses and no crate reads
/// Go's spelling.
pub fn go_duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('-') {
        return go_duration_secs(rest).map(|_| 0);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * mult;
        rest = &rest[u..];
    }
    Some(total.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for (s, want) in [
            ("3h59m58.5s", Some(4 * 3600 - 1)),
            ("150ms", Some(1)),
            ("1h", Some(3600)),
            ("-2s", Some(0)),
            ("", None),
            ("5x", None),
            ("h", None),
        ] {
            assert_eq!(go_duration_secs(s), want, "{s}");
        }
    }

    #[test]
    fn decision_scopes() {
        let d = |scope: &str, value: &str| Decision {
            duration: None,
            scope: scope.into(),
            value: value.into(),
            kind: "ban".into(),
            scenario: None,
            origin: None,
        };
        assert_eq!(
            decision_prefix(&d("Ip", "192.0.2.7"))
                .unwrap()
                .unwrap()
                .to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            decision_prefix(&d("Range", "198.51.100.9/24"))
                .unwrap()
                .unwrap()
                .to_string(),
            "198.51.100.0/24"
        );
        assert!(decision_prefix(&d("Country", "FR")).is_none());
        assert!(decision_prefix(&d("Ip", "nonsense")).unwrap().is_err());
    }

    fn feed(format: FeedFormat) -> Feed {
        Feed {
            name: "t".into(),
            source: FeedSource::Http("http://192.0.2.1/x".into()),
            format,
            format_name: format.name(),
            action: Action::Drop,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            max_bytes: 1 << 20,
            max_entries: Some(3),
            max_shrink: 0.5,
            max_bad_lines: 0.25,
            thresholds: vec![(80.0, Action::Drop), (50.0, Action::Tempfail)],
            api_key: None,
        }
    }

    #[test]
    fn csv_thresholds_map_to_actions() {
        let p = parse_body(
            &feed(FeedFormat::Csv),
            b"ip,score\n192.0.2.1,95\n192.0.2.2,50\n192.0.2.3,49.9\n",
        )
        .unwrap();
        let got: Vec<(String, Action)> = p
            .entries
            .iter()
            .map(|e| (e.prefix.to_string(), e.action))
            .collect();
        assert_eq!(
            got,
            [
                ("192.0.2.1/32".to_owned(), Action::Drop),
                ("192.0.2.2/32".to_owned(), Action::Tempfail)
            ]
        );
    }

    /// An address listed twice keeps its highest score, whichever line comes last: one
    /// entry each, in first-seen order.
    #[test]
    fn csv_duplicates_keep_the_highest_score() {
        let p = parse_body(
            &feed(FeedFormat::Csv),
            b"192.0.2.1,95\n192.0.2.2,10\n192.0.2.1,60\n192.0.2.2,55\n192.0.2.3,20\n192.0.2.3,5\n",
        )
        .unwrap();
        let got: Vec<(String, Action, Option<&str>)> = p
            .entries
            .iter()
            .map(|e| (e.prefix.to_string(), e.action, e.reason.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("192.0.2.1/32".to_owned(), Action::Drop, Some("score 95")),
                (
                    "192.0.2.2/32".to_owned(),
                    Action::Tempfail,
                    Some("score 55")
                ),
            ]
        );
    }

    #[test]
    fn bad_share_and_size_refuse_the_body() {
        let f = feed(FeedFormat::List(formats::Format::Plain));
        // One bad line in four is at the limit: kept, and named.
        let p = parse_body(&f, b"192.0.2.1\n192.0.2.2\nbad\n192.0.2.3\n").unwrap();
        assert_eq!(p.entries.len(), 3);
        assert_eq!(p.errors[0].line, 3);
        let e = parse_body(&f, b"192.0.2.1\nbad\nworse\n192.0.2.3\n").unwrap_err();
        assert!(
            e.to_string().starts_with("2 of 4 lines are not plain"),
            "{e}"
        );
        let e = parse_body(&f, b"192.0.2.1\n192.0.2.2\n192.0.2.3\n192.0.2.4\n").unwrap_err();
        assert_eq!(e.to_string(), "4 entries, more than max_entries = 3");
    }
}
