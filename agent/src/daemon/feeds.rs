//! The feed scheduler: fetches each `[[feeds]]` source on its interval (or now, for
//! `prefilter feeds sync`) and applies it to its store list through the writer's replace
//! path, so the tables change by the difference. Any failure keeps the last good copy in
//! force; the last good body and its validators stay on disk for the next start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use super::{Daemon, OpError, trim_heap};
use crate::api;
use crate::config::{Feed, FeedFormat};
use crate::policy::{Kind, Origin, store};
use crate::sources::feeds::{
    self as src, Cache, CacheMeta, FeedEntry, FetchError, Fetched, Validators,
};

/// What `feeds list` shows of a feed between runs.
#[derive(Clone, Debug, Default)]
struct FeedState {
    last_attempt: Option<u64>,
    last_success: Option<u64>,
    next_run: u64,
    failures: u64,
    consecutive_failures: u64,
    last_error: Option<String>,
    lines_rejected: usize,
    bad_lines: Vec<api::BadLine>,
    bytes: u64,
    guard_refusals: u64,
    last_refusal: Option<String>,
    last_outcome: Option<api::FeedOutcome>,
    validators: Option<Validators>,
    /// CrowdSec: the full set was read since this agent started; deltas follow.
    stream_started: bool,
    /// CrowdSec: when the full set was last read (unix seconds).
    last_full_read: u64,
    running: bool,
}

/// Every feed's state and the shared HTTP client.
pub struct Feeds {
    client: reqwest::Client,
    config: Mutex<Vec<Feed>>,
    state: Mutex<BTreeMap<String, FeedState>>,
    /// One run of a feed at a time: a `feeds sync` waits for a scheduled run in progress.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cache: Cache,
    wake: Notify,
}

// Per-feed series: the label values are the config's feed names, a bounded set.
static ENTRIES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "prefilter_feed_entries",
            "Entries of the feed's list in force.",
        ),
        &["feed"],
    )
    .expect("constant metric definition")
});
static LAST_SUCCESS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "prefilter_feed_last_success_timestamp_seconds",
            "Unix time of the feed's last successful fetch (200 applied or 304).",
        ),
        &["feed"],
    )
    .expect("constant metric definition")
});
static FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "prefilter_feed_failures_total",
            "Feed runs that changed nothing because the fetch or the body failed.",
        ),
        &["feed"],
    )
    .expect("constant metric definition")
});
static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "prefilter_feed_lines_rejected_total",
            "Feed lines that could not be used.",
        ),
        &["feed"],
    )
    .expect("constant metric definition")
});
static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "prefilter_feed_bytes_total",
            "Body bytes fetched (after gzip decoding).",
        ),
        &["feed"],
    )
    .expect("constant metric definition")
});
static REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "prefilter_feed_guard_refusals_total",
            "Feed updates refused by the shrink guard (the last good copy stayed).",
        ),
        &["feed"],
    )
    .expect("constant metric definition")
});

/// Adds the feed metrics to a registry.
pub fn register(r: &Registry) {
    let _ = r.register(Box::new(ENTRIES.clone()));
    let _ = r.register(Box::new(LAST_SUCCESS.clone()));
    let _ = r.register(Box::new(FAILURES.clone()));
    let _ = r.register(Box::new(REJECTED.clone()));
    let _ = r.register(Box::new(BYTES.clone()));
    let _ = r.register(Box::new(REFUSALS.clone()));
}

impl Feeds {
    pub fn new(state_dir: &std::path::Path, feeds: Vec<Feed>) -> Self {
        let f = Self {
            client: src::client(),
            config: Mutex::new(Vec::new()),
            state: Mutex::new(BTreeMap::new()),
            locks: Mutex::new(HashMap::new()),
            cache: Cache::new(state_dir),
            wake: Notify::new(),
        };
        f.set_config(feeds);
        f
    }

    /// New feeds run at once; feeds gone from the config are forgotten.
    pub fn set_config(&self, feeds: Vec<Feed>) {
        let old = lock(&self.config).clone();
        let mut st = lock(&self.state);
        st.retain(|n, _| feeds.iter().any(|f| &f.name == n));
        // A feed taken out has no series left: its frozen last success would fire the
        // staleness alert for a feed that no longer exists.
        for o in old
            .iter()
            .filter(|o| !feeds.iter().any(|f| f.name == o.name))
        {
            for g in [&*ENTRIES, &*LAST_SUCCESS] {
                let _ = g.remove_label_values(&[&o.name]);
            }
            for c in [&*FAILURES, &*REJECTED, &*BYTES, &*REFUSALS] {
                let _ = c.remove_label_values(&[&o.name]);
            }
        }
        for f in &feeds {
            let s = st.entry(f.name.clone()).or_default();
            // A changed source, format or action: the validators belong to the old one (a 304
            // would keep its content), so fetch it whole, now.
            let changed = old.iter().any(|o| o.name == f.name && o != f);
            if changed {
                s.validators = None;
                s.stream_started = false;
                s.next_run = 0;
            }
            // Series exist from the start, so rate() and absent() work before a failure.
            for c in [&*FAILURES, &*REJECTED, &*BYTES, &*REFUSALS] {
                c.with_label_values(&[&f.name]);
            }
            // 0 (1970) until the first success: a feed that never worked is the stalest.
            LAST_SUCCESS.with_label_values(&[&f.name]);
            if !changed && s.validators.is_none() {
                s.validators = self.cache.validators(&f.name, &f.source.to_string());
            }
        }
        *lock(&self.config) = feeds;
        self.wake.notify_one();
    }

    pub(super) fn feed(&self, name: &str) -> Option<Feed> {
        lock(&self.config).iter().find(|f| f.name == name).cloned()
    }

    fn run_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut FeedState)) {
        if let Some(s) = lock(&self.state).get_mut(name) {
            f(s);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A failure reported to `feeds list`, the log and the metrics.
fn failed(
    d: &Daemon,
    feed: &Feed,
    outcome: api::FeedOutcome,
    error: String,
) -> api::FeedSyncResult {
    let refused = outcome == api::FeedOutcome::Refused;
    if refused {
        REFUSALS.with_label_values(&[&feed.name]).inc();
    } else {
        FAILURES.with_label_values(&[&feed.name]).inc();
    }
    warn!(feed = %feed.name, source = %feed.source, error = %error, refused, "feed not applied: the last good copy stays in force");
    d.feeds.update(&feed.name, |s| {
        s.last_outcome = Some(outcome);
        if refused {
            s.guard_refusals += 1;
            s.last_refusal = Some(error.clone());
        } else {
            s.failures += 1;
            s.consecutive_failures += 1;
        }
        s.last_error = Some(error.clone());
    });
    api::FeedSyncResult {
        feed: feed.name.clone(),
        outcome,
        entries: list_len(d, &feed.name),
        table_changes: 0,
        lines_rejected: 0,
        bad_lines: Vec::new(),
        error: Some(error),
    }
}

fn list_len(d: &Daemon, name: &str) -> usize {
    d.store().lists().get(name).map_or(0, |l| l.entries.len())
}

/// First bad lines shown by `feeds list` and `feeds sync`: enough to find the problem.
const BAD_LINES_SHOWN: usize = 5;

/// Applies `entries` as the whole content of the feed's list, on a blocking thread.
async fn apply(
    d: &Daemon,
    feed: &Feed,
    entries: Vec<FeedEntry>,
    guard: Option<f64>,
) -> Result<usize, OpError> {
    let d2 = d.clone();
    let name = feed.name.clone();
    tokio::task::spawn_blocking(move || {
        let at = store::now();
        let mut new = store::Entries::with_capacity(entries.len());
        for e in &entries {
            new.insert_parts(
                e.prefix,
                e.action.code(),
                e.reason.as_deref(),
                at,
                e.expires,
            );
        }
        drop(entries);
        let mut st = d2.lock();
        let expiring = new.iter().any(|(_, e)| e.expires.is_some());
        let r = d2.replace_list(&mut st, &name, Kind::Block, Origin::Feed, new, guard);
        d2.publish(&st);
        drop(st);
        if expiring {
            // The expiry task sleeps until the earliest expiry it knew of.
            d2.expiry_wake.notify_one();
        }
        trim_heap();
        r.map(|c| c.len())
    })
    .await
    .map_err(|e| OpError::internal(format!("feed apply failed: {e}")))?
    .map_err(|mut e| {
        if e.status == super::SHRINK_REFUSED {
            // The guard speaks of an import and its --force: say what a feed's admin runs.
            e.message = e
                .message
                .replacen("import would remove", "the update would remove", 1)
                .replace(
                    "add --force to apply it anyway",
                    &format!(
                        "`prefilter feeds sync {} --force` applies it anyway",
                        feed.name
                    ),
                );
        }
        e
    })
}

/// Runs feed `name` now: fetch, parse, guard, apply. `force` skips the shrink guard.
pub async fn sync(d: &Daemon, name: &str, force: bool) -> Result<api::FeedSyncResult, OpError> {
    let Some(feed) = d.feeds.feed(name) else {
        return Err(OpError {
            status: 404,
            message: format!("no feed {name:?} in the config"),
        });
    };
    let run = d.feeds.run_lock(name);
    let _running = run.lock().await;
    let started = Instant::now();
    let at = store::now();
    d.feeds.update(name, |s| {
        s.last_attempt = Some(at);
        s.running = true;
    });
    let r = match feed.format {
        FeedFormat::CrowdSec => sync_crowdsec(d, &feed, force).await,
        _ => sync_list(d, &feed, force).await,
    };
    // A failure is tried again sooner than the interval, from a minute on, doubling: a
    // gateway that booted before its network, or a source down for a moment, would
    // otherwise wait an hour. A guard refusal waits for the admin or the next interval.
    let failures = if r.outcome == api::FeedOutcome::Failed {
        lock(&d.feeds.state)
            .get(name)
            .map_or(0, |s| s.consecutive_failures)
    } else {
        0
    };
    let next = store::now() + retry_after(feed.interval.as_secs(), failures);
    d.feeds.update(name, |s| {
        s.running = false;
        s.next_run = next;
    });
    // The scheduler sleeps until the time it knew when it started this run.
    d.feeds.wake.notify_one();
    ENTRIES
        .with_label_values(&[name])
        .set(list_len(d, name) as i64);
    info!(
        feed = name,
        outcome = ?r.outcome,
        entries = r.entries,
        table_changes = r.table_changes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "feed run"
    );
    Ok(r)
}

/// A success at `at` (seconds): the caller's one clock read, so that the time shown and
/// the one kept with the disk copy (the last success after a restart) are the same.
fn succeeded(d: &Daemon, feed: &Feed, outcome: api::FeedOutcome, at: u64) {
    LAST_SUCCESS.with_label_values(&[&feed.name]).set(at as i64);
    d.feeds.update(&feed.name, |s| {
        s.last_success = Some(at);
        s.consecutive_failures = 0;
        s.last_error = None;
        s.last_outcome = Some(outcome);
    });
}

/// A sync that applied the feed's new content: recorded as a success, and its result.
fn updated(
    d: &Daemon,
    feed: &Feed,
    table_changes: usize,
    lines_rejected: usize,
    bad_lines: Vec<api::BadLine>,
    at: u64,
) -> api::FeedSyncResult {
    succeeded(d, feed, api::FeedOutcome::Updated, at);
    api::FeedSyncResult {
        feed: feed.name.clone(),
        outcome: api::FeedOutcome::Updated,
        entries: list_len(d, &feed.name),
        table_changes,
        lines_rejected,
        bad_lines,
        error: None,
    }
}

fn refusal_or_failure(e: &OpError) -> api::FeedOutcome {
    if e.status == super::SHRINK_REFUSED {
        api::FeedOutcome::Refused
    } else {
        api::FeedOutcome::Failed
    }
}

async fn sync_list(d: &Daemon, feed: &Feed, force: bool) -> api::FeedSyncResult {
    let have = lock(&d.feeds.state)
        .get(&feed.name)
        .and_then(|s| s.validators.clone())
        // Without its list a 304 would leave nothing in force: ask for the whole body.
        .filter(|_| d.store().lists().contains_key(&feed.name));
    let fetched = match src::fetch(&d.feeds.client, feed, have.as_ref()).await {
        Ok(f) => f,
        Err(e) => return failed(d, feed, api::FeedOutcome::Failed, e.to_string()),
    };
    let (body, validators) = match fetched {
        Fetched::NotModified => {
            succeeded(d, feed, api::FeedOutcome::NotModified, store::now());
            return api::FeedSyncResult {
                feed: feed.name.clone(),
                outcome: api::FeedOutcome::NotModified,
                entries: list_len(d, &feed.name),
                table_changes: 0,
                lines_rejected: 0,
                bad_lines: Vec::new(),
                error: None,
            };
        }
        Fetched::Body { body, validators } => (body, validators),
    };
    BYTES
        .with_label_values(&[&feed.name])
        .inc_by(body.len() as u64);
    let len = body.len() as u64;
    d.feeds.update(&feed.name, |s| s.bytes = len);
    apply_body(d, feed, body, validators, !force, true).await
}

/// Parses and applies a body; `keep` stores it as the last good copy once applied.
async fn apply_body(
    d: &Daemon,
    feed: &Feed,
    body: Vec<u8>,
    validators: Validators,
    guarded: bool,
    keep: bool,
) -> api::FeedSyncResult {
    let f2 = feed.clone();
    let (parsed, body) =
        match tokio::task::spawn_blocking(move || (src::parse_body(&f2, &body), body)).await {
            Ok(p) => p,
            Err(e) => return failed(d, feed, api::FeedOutcome::Failed, e.to_string()),
        };
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => return failed(d, feed, api::FeedOutcome::Failed, e.to_string()),
    };
    let rejected = parsed.errors.len();
    REJECTED
        .with_label_values(&[&feed.name])
        .inc_by(rejected as u64);
    let bad_lines: Vec<api::BadLine> = parsed
        .errors
        .iter()
        .take(BAD_LINES_SHOWN)
        .map(api::BadLine::from)
        .collect();
    if let Some(first) = parsed.errors.first() {
        warn!(feed = %feed.name, rejected, first_line = first.line, first_error = %first.message, "feed lines rejected; the rest is applied");
    }
    d.feeds.update(&feed.name, |s| {
        s.lines_rejected = rejected;
        s.bad_lines = bad_lines.clone();
    });
    let guard = guarded.then_some(feed.max_shrink);
    match apply(d, feed, parsed.entries, guard).await {
        Ok(changes) => {
            let at = store::now();
            if keep {
                let meta = CacheMeta {
                    validators: validators.clone(),
                    fetched: at,
                    source: feed.source.to_string(),
                    crc32: None,
                };
                // The list is in force and persisted by the store; only the next start's
                // copy and the validators are stale if this fails.
                if let Err(e) = d.feeds.cache.store(&feed.name, &body, &meta) {
                    warn!(feed = %feed.name, error = %e, "keeping the last good copy on disk failed");
                }
                d.feeds
                    .update(&feed.name, |s| s.validators = Some(validators));
            }
            updated(d, feed, changes, rejected, bad_lines, at)
        }
        Err(e) => {
            let mut r = failed(d, feed, refusal_or_failure(&e), e.message);
            r.lines_rejected = rejected;
            r.bad_lines = bad_lines;
            r
        }
    }
}

/// The decision stream: the whole set at the first run, then what changed.
async fn sync_crowdsec(d: &Daemon, feed: &Feed, force: bool) -> api::FeedSyncResult {
    // The whole set again now and then: a delta can miss decisions (the LAPI's window of a
    // bulk import committed during a poll left 50 of 100,000 out for good), a full read
    // puts the list back in step with the LAPI.
    // `feeds sync NAME --force` reads it whole as well.
    let started = !force
        && lock(&d.feeds.state).get(&feed.name).is_some_and(|s| {
            s.stream_started && store::now().saturating_sub(s.last_full_read) < FULL_READ_EVERY_SECS
        });
    let (stream, bytes) = match src::crowdsec_stream(&d.feeds.client, feed, !started).await {
        Ok(s) => s,
        Err(e) => return failed(d, feed, api::FeedOutcome::Failed, e.to_string()),
    };
    BYTES.with_label_values(&[&feed.name]).inc_by(bytes);
    let now = store::now();
    let mut rejected = Vec::new();
    let to_entry = |dec: &src::Decision, rejected: &mut Vec<api::BadLine>| match decision_entry(
        dec,
        feed.action,
        now,
    )? {
        Ok(e) => Some(e),
        Err(bad) => {
            rejected.push(bad);
            None
        }
    };
    // Only bans block; captcha and other remediations are for web bouncers.
    let is_ban = |dec: &&src::Decision| dec.kind.eq_ignore_ascii_case("ban");
    let new: Vec<FeedEntry> = stream
        .new
        .iter()
        .flatten()
        .filter(is_ban)
        .filter_map(|dec| to_entry(dec, &mut rejected))
        .filter(|e| e.expires.is_none_or(|x| x > now))
        .collect();
    let r = if !started {
        // No shrink guard: the full set is the LAPI's own state, whose deletions arrive
        // as deltas without one anyway; guarded, a restart after a wave of deletions froze
        // the feed on its old content, new bans unapplied, until forced.
        match within_max_entries(feed, new.len()) {
            Ok(()) => apply(d, feed, new, None).await,
            Err(e) => Err(e),
        }
    } else {
        // Only a ban's deletion lifts an entry: the LAPI keeps one decision per value and
        // type, so a captcha expiring beside a ban on the same address is deleted alone.
        let deleted: std::collections::HashSet<_> = stream
            .deleted
            .iter()
            .flatten()
            .filter(is_ban)
            .filter_map(|dec| src::decision_prefix(dec)?.ok())
            .collect();
        if new.is_empty() && deleted.is_empty() {
            Ok(0)
        } else {
            // The delta on a copy of the list, applied as a replacement: one path to the
            // tables and the disk, by difference.
            let mut all: Vec<FeedEntry> = d
                .store()
                .lists()
                .get(&feed.name)
                .map(|l| {
                    l.entries
                        .iter()
                        .map(|(p, e)| FeedEntry {
                            prefix: p,
                            action: crate::policy::Action::from_code(e.action)
                                .unwrap_or(feed.action),
                            reason: e.reason.as_deref().map(str::to_owned),
                            expires: e.expires,
                        })
                        .collect()
                })
                .unwrap_or_default();
            all.retain(|e| !deleted.contains(&e.prefix));
            all.extend(new);
            match within_max_entries(feed, all.len()) {
                Ok(()) => apply(d, feed, all, None).await,
                Err(e) => Err(e),
            }
        }
    };
    let n = rejected.len();
    REJECTED.with_label_values(&[&feed.name]).inc_by(n as u64);
    match r {
        Ok(changes) => {
            d.feeds.update(&feed.name, |s| {
                if !started {
                    s.last_full_read = store::now();
                }
                s.stream_started = true;
                s.bytes = bytes;
                s.lines_rejected = n;
                s.bad_lines = rejected.iter().take(BAD_LINES_SHOWN).cloned().collect();
            });
            let shown = rejected.into_iter().take(BAD_LINES_SHOWN).collect();
            let at = store::now();
            // Its last success outlives a restart, as a list feed's does with its copy: a
            // LAPI down at a restart must not look a day stale after a quarter of an hour.
            let meta = CacheMeta {
                validators: Validators::default(),
                fetched: at,
                source: feed.source.to_string(),
                crc32: None,
            };
            if let Err(e) = d.feeds.cache.store_meta(&feed.name, &meta) {
                warn!(feed = %feed.name, error = %e, "keeping the feed's last success on disk failed");
            }
            updated(d, feed, changes, n, shown, at)
        }
        Err(e) => failed(d, feed, refusal_or_failure(&e), e.message),
    }
}

/// The entry of one CrowdSec decision at `now`: None for a scope that is not an address
/// (`Country`, `AS`), Err naming what was wrong (not an address, a /0, no readable
/// duration: a decision always has one, and one taken as forever would never lift).
fn decision_entry(
    dec: &src::Decision,
    action: crate::policy::Action,
    now: u64,
) -> Option<Result<FeedEntry, api::BadLine>> {
    let bad = |message: String| api::BadLine {
        line: 0,
        text: dec.value.clone(),
        message,
    };
    let p = match src::decision_prefix(dec)? {
        Ok(p) => p,
        Err(message) => return Some(Err(bad(message))),
    };
    let Some(secs) = dec.duration.as_deref().and_then(src::go_duration_secs) else {
        return Some(Err(bad(format!(
            "decision duration {:?} is not a duration: decision skipped",
            dec.duration.as_deref().unwrap_or("")
        ))));
    };
    Some(Ok(FeedEntry {
        prefix: p,
        action,
        reason: Some(format!(
            "crowdsec: {} ({})",
            dec.scenario.as_deref().unwrap_or("no scenario"),
            dec.origin.as_deref().unwrap_or("no origin")
        )),
        expires: Some(now + secs),
    }))
}

/// Seconds until a feed's next run: its interval, or after `failures` failures in a row,
/// 60 s doubling per failure up to the interval.
fn retry_after(interval: u64, failures: u64) -> u64 {
    if failures == 0 {
        return interval;
    }
    let backoff = 60u64.saturating_mul(1 << (failures - 1).min(16));
    backoff.min(interval)
}

/// How often a CrowdSec feed reads the LAPI's whole set again.
const FULL_READ_EVERY_SECS: u64 = 3600;

/// `max_entries` of a CrowdSec feed, as a list feed's: more keeps the list as it is.
fn within_max_entries(feed: &Feed, n: usize) -> Result<(), OpError> {
    match feed.max_entries {
        Some(max) if n > max => Err(OpError {
            status: 413,
            message: format!(
                "{n} decisions, more than max_entries = {max}: the list stays as it is"
            ),
        }),
        _ => Ok(()),
    }
}

/// Each feed as `feeds list` shows it.
pub fn list(d: &Daemon) -> api::FeedList {
    let config = lock(&d.feeds.config).clone();
    let state = lock(&d.feeds.state).clone();
    let feeds = config
        .iter()
        .map(|f| {
            let s = state.get(&f.name).cloned().unwrap_or_default();
            api::FeedInfo {
                name: f.name.clone(),
                source: f.source.to_string(),
                format: f.format_name.to_owned(),
                action: f.action_label(),
                interval_secs: f.interval.as_secs(),
                entries: list_len(d, &f.name),
                last_attempt: s.last_attempt,
                last_success: s.last_success,
                next_run: (s.next_run > 0).then_some(s.next_run),
                running: s.running,
                last_outcome: s.last_outcome,
                failures: s.failures,
                consecutive_failures: s.consecutive_failures,
                last_error: s.last_error,
                lines_rejected: s.lines_rejected,
                bad_lines: s.bad_lines,
                bytes: s.bytes,
                guard_refusals: s.guard_refusals,
                last_refusal: s.last_refusal,
                etag: s.validators.as_ref().and_then(|v| v.etag.clone()),
            }
        })
        .collect();
    api::FeedList { feeds }
}

/// Start-up: the last good copies on disk are put in force before any fetch (the store's
/// lists already hold them; this also brings a config change of action or format to
/// them), and feed lists whose feed left the config are emptied.
async fn load_cached(d: &Daemon) {
    let config = lock(&d.feeds.config).clone();
    let stale: Vec<String> = d
        .store()
        .lists()
        .iter()
        .filter(|(n, l)| {
            l.origin == Origin::Feed
                && !l.entries.is_empty()
                && !config.iter().any(|f| &f.name == *n)
        })
        .map(|(n, _)| n.clone())
        .collect();
    for name in stale {
        let d2 = d.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut st = d2.lock();
            empty_removed(&d2, &mut st, &name);
            d2.publish(&st);
        })
        .await;
        if let Err(e) = r {
            warn!(error = %e, "emptying the list of a removed feed");
        }
    }
    for f in config.iter().filter(|f| f.format == FeedFormat::CrowdSec) {
        if let Some(meta) = d.feeds.cache.load_meta(&f.name, &f.source.to_string()) {
            LAST_SUCCESS
                .with_label_values(&[&f.name])
                .set(meta.fetched as i64);
            d.feeds
                .update(&f.name, |s| s.last_success = Some(meta.fetched));
        }
    }
    for f in config.iter().filter(|f| f.format != FeedFormat::CrowdSec) {
        let Some((body, meta)) = d.feeds.cache.load(&f.name, &f.source.to_string()) else {
            continue;
        };
        let run = d.feeds.run_lock(&f.name);
        let _running = run.lock().await;
        // The copy was applied once already: no guard against itself.
        let r = apply_body(d, f, body, meta.validators.clone(), false, false).await;
        if matches!(
            r.outcome,
            api::FeedOutcome::Failed | api::FeedOutcome::Refused
        ) {
            // Not in force: its validators would have the next fetch answered 304.
            warn!(feed = %f.name, error = r.error.as_deref().unwrap_or(""), "the feed's last good copy on disk was not applied; the next fetch asks for the whole body");
            continue;
        }
        // Its success is the fetch that brought it, not this start.
        LAST_SUCCESS
            .with_label_values(&[&f.name])
            .set(meta.fetched as i64);
        d.feeds.update(&f.name, |s| {
            s.validators = Some(meta.validators);
            s.last_success = Some(meta.fetched);
            s.last_outcome = None;
        });
        ENTRIES
            .with_label_values(&[&f.name])
            .set(list_len(d, &f.name) as i64);
        info!(feed = %f.name, entries = r.entries, fetched = meta.fetched, "feed's last good copy loaded from disk");
    }
}

/// Empties the list of a feed taken out of the config, through the replace path (persisted
/// like any update; the empty list stays, blocking nothing), and forgets its disk copy.
/// Returns the table changes.
pub(super) fn empty_removed(d: &Daemon, st: &mut super::State, name: &str) -> usize {
    match d.replace_list(
        st,
        name,
        Kind::Block,
        Origin::Feed,
        store::Entries::default(),
        None,
    ) {
        Ok(c) => {
            d.feeds.cache.remove(name);
            info!(list = %name, "feed removed from the config: its list emptied");
            c.len()
        }
        Err(e) => {
            warn!(list = %name, error = %e.message, "emptying the list of a removed feed");
            0
        }
    }
}

/// Runs every feed when due until stopped. Each run is its own task, so a slow source
/// does not hold up the others; their writes still take turns on the writer.
pub async fn schedule(d: Daemon, mut stop: watch::Receiver<bool>) {
    load_cached(&d).await;
    loop {
        let now = store::now();
        let config = lock(&d.feeds.config).clone();
        let mut next = now + 3600;
        for f in &config {
            let (due, running) = {
                let st = lock(&d.feeds.state);
                let s = st.get(&f.name);
                (s.map_or(0, |s| s.next_run), s.is_some_and(|s| s.running))
            };
            if running {
                continue;
            }
            if due <= now {
                // Marked now so the loop does not start it twice before it begins.
                d.feeds
                    .update(&f.name, |s| s.next_run = now + f.interval.as_secs());
                next = next.min(now + f.interval.as_secs());
                let d2 = d.clone();
                let name = f.name.clone();
                tokio::spawn(async move {
                    let _ = sync(&d2, &name, false).await;
                });
            } else {
                next = next.min(due);
            }
        }
        let wait = Duration::from_secs(next.saturating_sub(store::now()).max(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = d.feeds.wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

impl From<FetchError> for OpError {
    fn from(e: FetchError) -> Self {
        OpError {
            status: 502,
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{decision_entry, retry_after, src};
    use crate::policy::Action;

    fn decision(json: &str) -> src::Decision {
        serde_json::from_str(json).expect("a decision")
    }

    /// What a decision becomes: an entry with its expiry, nothing for a scope that is not an
    /// address, a named refusal for the rest.
    #[test]
    fn decisions_become_entries_or_named_refusals() {
        let now = 1_000_000;
        let ok = decision(
            r#"{"duration":"3h59m58.5s","scope":"Ip","value":"192.0.2.7","type":"ban","scenario":"crowdsecurity/ssh-bf","origin":"crowdsec"}"#,
        );
        let e = decision_entry(&ok, Action::Drop, now).unwrap().unwrap();
        assert_eq!(e.prefix.to_string(), "192.0.2.7/32");
        assert_eq!(e.expires, Some(now + 4 * 3600 - 1));
        assert_eq!(
            e.reason.as_deref(),
            Some("crowdsec: crowdsecurity/ssh-bf (crowdsec)")
        );
        let country = decision(r#"{"duration":"1h","scope":"Country","value":"XX","type":"ban"}"#);
        assert!(decision_entry(&country, Action::Drop, now).is_none());
        for (json, why) in [
            (
                r#"{"duration":"bogus","scope":"Ip","value":"203.0.113.7","type":"ban"}"#,
                "not a duration",
            ),
            (
                r#"{"scope":"Ip","value":"203.0.113.8","type":"ban"}"#,
                "not a duration",
            ),
            (
                r#"{"duration":"1h","scope":"Range","value":"0.0.0.0/0","type":"ban"}"#,
                "covers every address",
            ),
            (
                r#"{"duration":"1h","scope":"Ip","value":"mx.example","type":"ban"}"#,
                "decision value",
            ),
        ] {
            let got = decision_entry(&decision(json), Action::Drop, now).unwrap();
            let bad = got.err().unwrap_or_else(|| panic!("{json} taken"));
            assert!(bad.message.contains(why), "{json}: {}", bad.message);
        }
    }

    #[test]
    fn failed_feeds_are_tried_again_sooner() {
        let hour = 3600;
        assert_eq!(retry_after(hour, 0), hour);
        let waits: Vec<u64> = (1..=7).map(|f| retry_after(hour, f)).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600]);
        assert_eq!(
            retry_after(600, 40),
            600,
            "never past the interval, no overflow"
        );
    }
}
