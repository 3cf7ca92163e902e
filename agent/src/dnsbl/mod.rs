//! DNSBL scoring as postscreen does it (`site.rs`), with hickory-resolver lookups, a cache
//! keyed by (address, zone) with clamped TTLs, one query per key in flight, a concurrency
//! bound, and zone health probes (`health.rs`) that quarantine a zone that broke.
//!
//! Fail open everywhere: a timeout, SERVFAIL, REFUSED or error code is never a listing.

mod health;
mod metrics;
pub mod site;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{NameServerConfig, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    proto::{ProtoErrorKind, op::ResponseCode, rr::RecordType, xfer::Protocol},
};
use serde::Serialize;
use tokio::sync::{OnceCell, Semaphore, mpsc};
use tracing::{info, warn};

pub use self::site::{Site, SiteError};
use crate::{config, daemon::learned::Learned, policy::Action};

/// What the DNSBLs say about one address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Score {
    /// Sum of the weights of the matching site entries.
    pub score: i32,
    /// `zone=answer` of the entries with a positive weight that matched.
    pub listed: Vec<String>,
    /// The first-contact action (`[dnsbl] action`) when the score reached the threshold.
    pub verdict: Option<Action>,
    /// The score reached `allowlist_threshold` (postscreen's DNSWL allowlisting).
    pub allowlisted: bool,
    /// `zone=answer` of the entries with a negative weight that matched.
    pub allowed_by: Vec<String>,
}

/// One zone's answer for one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Listing answers (error codes removed).
    Listed(Vec<Ipv4Addr>),
    NotListed,
    /// Not an answer to score: counted, logged, ignored (fail open).
    Error(ErrorKind),
}

/// Why a zone gave no usable answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Timeout,
    ServFail,
    Refused,
    /// Only error codes (127.255.255.x, or outside 127/8).
    ErrorCode(Ipv4Addr),
    Other,
}

impl ErrorKind {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::ServFail => "servfail",
            ErrorKind::Refused => "refused",
            ErrorKind::ErrorCode(_) => "error_code",
            ErrorKind::Other => "other",
        }
    }
}

/// Health of a zone.
const UNKNOWN: u8 = 0;
const HEALTHY: u8 = 1;
const QUARANTINED: u8 = 2;

/// A zone (distinct domain of the site list) and its health.
struct Zone {
    name: String,
    state: AtomicU8,
    /// Why it is quarantined (or the last probe's note), for `status`.
    note: Mutex<String>,
    /// Errors are logged once per interval; the rest counted here.
    last_log: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

/// How often a zone's lookup errors are logged (the rest are counted in metrics).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

type Key = (IpAddr, usize);
/// An answer and when it stops being valid.
type Timed = (Answer, Instant);

/// The DNSBL engine; shared by the proxy (per connection) and the inline event reader.
pub struct Dnsbl {
    cfg: config::Dnsbl,
    zones: Vec<Zone>,
    resolver: TokioResolver,
    cache: Mutex<HashMap<Key, (Answer, Instant)>>,
    inflight: Mutex<HashMap<Key, Arc<OnceCell<Timed>>>>,
    sem: Semaphore,
    metrics: metrics::Metrics,
    learner: OnceLock<mpsc::Sender<Learned>>,
}

impl std::fmt::Debug for Dnsbl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dnsbl")
            .field(
                "zones",
                &self.zones.iter().map(|z| &z.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// An address as the program keys it is not needed here: DNSBLs list single addresses, so
/// the cache is per address; `::ffff:a.b.c.d` is the IPv4 address.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Dnsbl {
    /// A resolver that asks only `cfg.nameservers` (never /etc/resolv.conf), with hickory's
    /// own cache off: ours clamps TTLs and is what the metrics count.
    pub fn new(cfg: config::Dnsbl) -> Self {
        let mut rc = ResolverConfig::new();
        for ns in &cfg.nameservers {
            rc.add_name_server(NameServerConfig::new(*ns, Protocol::Udp));
        }
        let mut opts = ResolverOpts::default();
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts as usize;
        opts.cache_size = 0;
        opts.ndots = 0;
        opts.edns0 = false;
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        // Ask the servers in order, not two at a time: a DNSBL answer is cheap to wait for,
        // a doubled query rate is not (Spamhaus counts queries).
        opts.num_concurrent_reqs = 1;
        let resolver = TokioResolver::builder_with_config(rc, TokioConnectionProvider::default())
            .with_options(opts)
            .build();
        let mut names: Vec<String> = Vec::new();
        for s in &cfg.sites {
            if !names.contains(&s.domain) {
                names.push(s.domain.clone());
            }
        }
        let zones = names
            .into_iter()
            .map(|name| Zone {
                name,
                state: AtomicU8::new(UNKNOWN),
                note: Mutex::new("not probed yet".into()),
                last_log: Mutex::new(None),
                suppressed: AtomicU64::new(0),
            })
            .collect::<Vec<_>>();
        let metrics = metrics::Metrics::new(zones.iter().map(|z| z.name.as_str()));
        Self {
            sem: Semaphore::new(cfg.concurrency as usize),
            cfg,
            zones,
            resolver,
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            metrics,
            learner: OnceLock::new(),
        }
    }

    /// The settings it runs with.
    pub fn config(&self) -> &config::Dnsbl {
        &self.cfg
    }

    /// Where listings go (the daemon's learn task). Set once.
    pub fn set_learner(&self, tx: mpsc::Sender<Learned>) {
        let _ = self.learner.set(tx);
    }

    /// Whether connections to `port` are DNSBL-judged (`[dnsbl] ports`).
    pub fn judges_port(&self, port: u16) -> bool {
        self.cfg.ports.contains(&port)
    }

    /// Registers the per-zone metrics.
    pub fn register(&self, r: &prometheus::Registry) {
        self.metrics.register(r);
    }

    /// Every zone and its health.
    pub fn zones(&self) -> Vec<crate::api::DnsblZone> {
        self.zones
            .iter()
            .map(|z| crate::api::DnsblZone {
                zone: z.name.clone(),
                state: match z.state.load(Ordering::Relaxed) {
                    HEALTHY => "healthy",
                    QUARANTINED => "quarantined",
                    _ => "unknown",
                }
                .to_owned(),
                note: lock(&z.note).clone(),
            })
            .collect()
    }

    /// Entries in the cache.
    pub fn cache_len(&self) -> usize {
        lock(&self.cache).len()
    }

    /// Scores `ip` against every healthy zone (lookups in parallel, cached), and when the
    /// score reaches the threshold hands the kernel a `repeat_action` for the listing's TTL,
    /// so the sender's next SYN stops in XDP.
    pub async fn score(&self, ip: IpAddr) -> Score {
        let ip = unmapped(ip);
        let lookups = (0..self.zones.len())
            .filter(|&z| self.zones[z].state.load(Ordering::Relaxed) == HEALTHY)
            .map(|z| async move { (z, self.lookup(ip, z).await) });
        let got: Vec<(usize, (Answer, Instant))> = futures_util::future::join_all(lookups).await;
        let (score, ttl) = self.tally(&got);
        if score.verdict.is_some()
            && let (Some(act), Some(tx)) = (self.cfg.repeat_action, self.learner.get())
        {
            let l = Learned {
                ip,
                action: act,
                ttl,
                source: "dnsbl".into(),
                reason: format!("{} score {}", score.listed.join(" "), score.score),
            };
            // Full queue: the next connection of the sender tries again.
            let _ = tx.try_send(l);
        }
        score
    }

    /// The score from cached answers only, when every healthy zone has one (`check`).
    pub fn cached_score(&self, ip: IpAddr) -> Option<Score> {
        let ip = unmapped(ip);
        let now = Instant::now();
        let cache = lock(&self.cache);
        let mut got = Vec::new();
        for (z, zone) in self.zones.iter().enumerate() {
            if zone.state.load(Ordering::Relaxed) != HEALTHY {
                continue;
            }
            let (a, exp) = cache.get(&(ip, z)).filter(|(_, e)| *e > now)?;
            got.push((z, (a.clone(), *exp)));
        }
        drop(cache);
        (!got.is_empty()).then(|| self.tally(&got).0)
    }

    /// The score of a set of zone answers, and how long the shortest listing lasts.
    fn tally(&self, got: &[(usize, (Answer, Instant))]) -> (Score, Duration) {
        let now = Instant::now();
        let by_zone: HashMap<&str, (&[Ipv4Addr], Instant)> = got
            .iter()
            .filter_map(|(z, (a, exp))| match a {
                Answer::Listed(v) => Some((self.zones[*z].name.as_str(), (v.as_slice(), *exp))),
                _ => None,
            })
            .collect();
        let t = site::tally(&self.cfg.sites, |d| by_zone.get(d).map(|(v, _)| *v));
        let (blocked, allowlisted) =
            site::judge(t.score, self.cfg.threshold, self.cfg.allowlist_threshold);
        let ttl = t
            .listed
            .iter()
            .filter_map(|l| l.split_once('=').and_then(|(d, _)| by_zone.get(d)))
            .map(|(_, exp)| exp.saturating_duration_since(now))
            .min()
            .unwrap_or(self.cfg.min_ttl)
            .max(Duration::from_secs(1));
        (
            Score {
                score: t.score,
                listed: t.listed,
                verdict: blocked.then_some(self.cfg.action),
                allowlisted,
                allowed_by: t.allowed_by,
            },
            ttl,
        )
    }

    /// One zone's answer for `ip`: from the cache, or from the one query in flight for it,
    /// or from a new query.
    async fn lookup(&self, ip: IpAddr, z: usize) -> (Answer, Instant) {
        let key = (ip, z);
        if let Some(hit) = lock(&self.cache)
            .get(&key)
            .filter(|(_, e)| *e > Instant::now())
            .cloned()
        {
            self.metrics.cache_hit.inc();
            return hit;
        }
        self.metrics.cache_miss.inc();
        let cell = lock(&self.inflight).entry(key).or_default().clone();
        let got = cell
            .get_or_init(|| async {
                let name = site::query_name(ip, &self.zones[z].name);
                let (answer, ttl) = self.query(z, &name, false).await;
                let exp = Instant::now() + ttl.unwrap_or_default();
                if ttl.is_some() {
                    self.insert(key, answer.clone(), exp);
                }
                (answer, exp)
            })
            .await
            .clone();
        let mut inflight = lock(&self.inflight);
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        got
    }

    /// Caches an answer; a full cache first drops what expired, and takes nothing new while
    /// it is still full (memory stays bounded; the next lookup just asks again).
    fn insert(&self, key: Key, a: Answer, exp: Instant) {
        let mut cache = lock(&self.cache);
        if cache.len() >= self.cfg.cache_size as usize && !cache.contains_key(&key) {
            let now = Instant::now();
            cache.retain(|_, (_, e)| *e > now);
            if cache.len() >= self.cfg.cache_size as usize {
                return;
            }
        }
        cache.insert(key, (a, exp));
        self.metrics.cache_entries.set(cache.len() as i64);
    }

    /// One DNS query, bounded by the semaphore, counted per zone. The TTL to cache the
    /// answer for (clamped), or None for an error that is not cached (timeouts, SERVFAIL).
    /// One lookup of `name` in zone `z`; a `probe` (a test point) is not counted as a
    /// listing, or the listings panel would never show zero.
    async fn query(&self, z: usize, name: &str, probe: bool) -> (Answer, Option<Duration>) {
        let zone = &self.zones[z].name;
        let Ok(_permit) = self.sem.acquire().await else {
            return (Answer::Error(ErrorKind::Other), None);
        };
        let t0 = Instant::now();
        let r = self.resolver.lookup(name, RecordType::A).await;
        self.metrics.observe(zone, t0.elapsed());
        let clamp =
            |ttl: u32| Duration::from_secs(ttl.into()).clamp(self.cfg.min_ttl, self.cfg.max_ttl);
        let (answer, ttl) = match r {
            Ok(lookup) => {
                let mut ttl = u32::MAX;
                let mut listed = Vec::new();
                let mut error_code = None;
                for rec in lookup.records() {
                    if let Some(a) = rec.data().as_a() {
                        ttl = ttl.min(rec.ttl());
                        let a = a.0;
                        if site::is_error_code(a) {
                            error_code.get_or_insert(a);
                        } else {
                            listed.push(a);
                        }
                    }
                }
                match (listed.is_empty(), error_code) {
                    (false, _) => (Answer::Listed(listed), Some(clamp(ttl))),
                    (true, Some(a)) => (Answer::Error(ErrorKind::ErrorCode(a)), Some(clamp(ttl))),
                    (true, None) => (Answer::NotListed, Some(self.cfg.min_ttl)),
                }
            }
            Err(e) => match e.proto().map(|p| p.kind()) {
                Some(ProtoErrorKind::NoRecordsFound {
                    response_code,
                    negative_ttl,
                    ..
                }) => match *response_code {
                    ResponseCode::NXDomain | ResponseCode::NoError => {
                        (Answer::NotListed, Some(clamp(negative_ttl.unwrap_or(0))))
                    }
                    ResponseCode::Refused => (Answer::Error(ErrorKind::Refused), None),
                    ResponseCode::ServFail => (Answer::Error(ErrorKind::ServFail), None),
                    _ => (Answer::Error(ErrorKind::Other), None),
                },
                Some(ProtoErrorKind::Timeout) => (Answer::Error(ErrorKind::Timeout), None),
                _ => (Answer::Error(ErrorKind::Other), None),
            },
        };
        self.metrics.queries.with_label_values(&[zone]).inc();
        match &answer {
            Answer::Listed(_) if !probe => self.metrics.listings.with_label_values(&[zone]).inc(),
            Answer::Listed(_) => {}
            Answer::Error(k) => {
                self.metrics
                    .errors
                    .with_label_values(&[zone, k.label()])
                    .inc();
                self.log_error(z, name, *k);
            }
            Answer::NotListed => {}
        }
        (answer, ttl)
    }

    /// Logs a zone's lookup error at most once per [`ERROR_LOG_INTERVAL`], with how many
    /// were not logged since.
    fn log_error(&self, z: usize, name: &str, k: ErrorKind) {
        let zone = &self.zones[z];
        let mut last = lock(&zone.last_log);
        if last.is_some_and(|t| t.elapsed() < ERROR_LOG_INTERVAL) {
            zone.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let more = zone.suppressed.swap(0, Ordering::Relaxed);
        let what = match k {
            ErrorKind::ErrorCode(a) => format!("error code {a} (not a listing)"),
            k => k.label().to_owned(),
        };
        warn!(zone = %zone.name, query = name, error = %what, not_logged_since = more,
            "DNSBL lookup failed; counted as not listed");
    }

    fn set_state(&self, z: usize, state: u8, note: String) {
        let zone = &self.zones[z];
        let old = zone.state.swap(state, Ordering::Relaxed);
        self.metrics
            .quarantined
            .with_label_values(&[&zone.name])
            .set(i64::from(state == QUARANTINED));
        if old != state {
            match state {
                QUARANTINED => warn!(zone = %zone.name, why = %note,
                    "DNSBL zone quarantined: its answers are ignored until a probe passes"),
                _ => info!(zone = %zone.name, "DNSBL zone healthy"),
            }
        }
        *lock(&zone.note) = note;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing is left half-updated under these locks.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Parses `ip[:port]` / `[v6]:port` nameserver strings; port 53 when none is given.
pub fn parse_nameserver(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
        .filter(|a| a.port() != 0)
}
