//! The SMTP proxy: the only way from the internet to the content filter.
//!
//! Per accepted connection the client's verdict is read from the daemon's readers (the
//! published View and the KernelView, never the writer's lock, so an import never delays a
//! greeting). `tempfail` and `reject` are answered here (`421 4.7.0` / `554 5.7.1`) and the
//! connection is closed: a refused client never reaches the backend. Everything else is
//! relayed to the first backend that answers, after a PROXY protocol header carrying the
//! client's real address and port. Over a connection limit, or with no backend reachable
//! within `connect_timeout`, the client gets a `421` at once, never a hung connection.
//!
//! Before relaying a client with no verdict, the daemon's screen (DNSBL) runs, and with
//! `greet_wait` the pregreet test: `220-` first, and a client that talks before the wait
//! ends is refused and learned as a dynamic verdict. With `reject_at = "rcpt"` a `reject`
//! client gets a dummy dialogue that refuses every recipient and logs the envelope.

pub mod header;
pub mod smtp;

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, tcp::ReadHalf},
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};
use tracing::{info, warn};

use crate::config::{Backend, Balance, Proxy as Config, RejectAt};
use crate::policy::Action;

/// What the proxy does with a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowlisted: relayed.
    Allow,
    /// No verdict: relayed.
    Pass,
    /// Shadow mode: relayed, counted.
    Observe,
    /// Answered `421 4.7.0`, closed.
    Tempfail,
    /// Answered `554 5.7.1`, closed. Also `drop`/`reset` verdicts the XDP program did not
    /// apply (a listener on an interface it is not attached to): refused, never relayed.
    Reject,
}

impl Decision {
    /// The metric label and log word.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Pass => "pass",
            Decision::Observe => "observe",
            Decision::Tempfail => "tempfail",
            Decision::Reject => "reject",
        }
    }
}

/// A client's verdict as the daemon's readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// The list that decided, or "dynamic" for a verdict learned at run time.
    pub list: Option<String>,
}

/// What the daemon's screen (DNSBL lookups) says about a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Screen {
    /// A decision that replaces the verdict's (e.g. `Reject` over the score threshold).
    pub decision: Option<Decision>,
    /// The weighted score.
    pub score: i32,
    /// The zones that listed the client.
    pub listed: Vec<String>,
}

/// The screen's answer, awaited while the pregreet test waits.
pub type ScreenFuture = Pin<Box<dyn Future<Output = Screen> + Send>>;

/// Where verdicts come from: the daemon (its readers only), or a table in unit tests.
pub trait Verdicts: Send + Sync + 'static {
    /// The verdict for a client address (IPv4-mapped addresses already made IPv4).
    fn verdict(&self, ip: IpAddr) -> Verdict;

    /// Screens a client with no verdict (DNSBL), connected to our `local` address; runs
    /// beside the pregreet wait. None here.
    fn screen(&self, _client: SocketAddr, _local: SocketAddr) -> ScreenFuture {
        Box::pin(std::future::ready(Screen::default()))
    }

    /// Makes `ip` a dynamic verdict for `ttl` (a pregreet violator). May wait on the
    /// daemon's writer: the proxy calls it off the async threads.
    fn learn(
        &self,
        ip: IpAddr,
        action: Action,
        ttl: Duration,
        source: &str,
        reason: &str,
    ) -> Result<(), String>;

    /// Told whenever the proxy answers a client with a tempfail or reject (escalation).
    fn refused(&self, _ip: IpAddr) {}
}

// ---- Metrics ------------------------------------------------------------------------------

/// Labels of `prefilter_proxy_connections_total`: the decisions, `pregreet` and `limit`.
const VERDICT_LABELS: [&str; 7] = [
    "allow", "pass", "observe", "tempfail", "reject", "pregreet", "limit",
];

static CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "prefilter_proxy_connections_total",
            "Connections accepted by the SMTP proxy, by final verdict (pregreet: failed the \
             pregreet test; limit: refused over a connection limit).",
        ),
        &["verdict"],
    )
    .expect("constant metric definition")
});

static ACTIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    IntGauge::new(
        "prefilter_proxy_active_sessions",
        "SMTP proxy sessions open now.",
    )
    .expect("constant metric definition")
});

static BACKEND_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "prefilter_proxy_backend_errors_total",
        "Failed connection attempts to a backend (refused, timed out, unresolvable).",
    )
    .expect("constant metric definition")
});

static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "prefilter_proxy_bytes_total",
            "Bytes relayed or answered by the SMTP proxy (in: from clients, out: to clients).",
        ),
        &["direction"],
    )
    .expect("constant metric definition")
});

static BACKEND_CONNECT: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::with_opts(
        HistogramOpts::new(
            "prefilter_proxy_backend_connect_seconds",
            "Time to connect to a backend (successful connections).",
        )
        .buckets(vec![
            0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]),
    )
    .expect("constant metric definition")
});

static BACKEND_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "prefilter_proxy_backend_up",
            "1 while a backend is taking connections, 0 while it is marked down.",
        ),
        &["backend"],
    )
    .expect("constant metric definition")
});

static PREGREET: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "prefilter_proxy_pregreet_violations_total",
        "Clients that talked before the greeting ended (the pregreet test).",
    )
    .expect("constant metric definition")
});

/// Adds the proxy's metrics to `r`, every verdict at 0 so rate() works from the start.
pub fn register(r: &Registry) {
    for v in VERDICT_LABELS {
        CONNECTIONS.with_label_values(&[v]);
    }
    for d in ["in", "out"] {
        BYTES.with_label_values(&[d]);
    }
    // Distinct names in a registry that holds none of them: cannot fail.
    let _ = r.register(Box::new(CONNECTIONS.clone()));
    let _ = r.register(Box::new(ACTIVE.clone()));
    let _ = r.register(Box::new(BACKEND_ERRORS.clone()));
    let _ = r.register(Box::new(BYTES.clone()));
    let _ = r.register(Box::new(BACKEND_CONNECT.clone()));
    let _ = r.register(Box::new(BACKEND_UP.clone()));
    let _ = r.register(Box::new(PREGREET.clone()));
}

/// Raises the soft RLIMIT_NOFILE to what `max_connections` sessions need (two sockets
/// each, plus the daemon's own), up to the hard limit. Returns (soft limit now, needed).
pub fn raise_nofile(max_connections: u32) -> io::Result<(u64, u64)> {
    let need = u64::from(max_connections) * 2 + 256;
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if r.rlim_cur >= need {
        return Ok((r.rlim_cur, need));
    }
    let want = libc::rlimit {
        rlim_cur: need.min(r.rlim_max),
        rlim_max: r.rlim_max,
    };
    // SAFETY: a valid rlimit, soft at most hard.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((want.rlim_cur, need))
}

// ---- Listening ----------------------------------------------------------------------------

/// Binds every `listen` address with an accept queue of `backlog`: IPv6 sockets are
/// v6-only, so `0.0.0.0:25` and `[::]:25` can both be given. Fails on the first address that
/// cannot be bound.
pub fn bind(listen: &[SocketAddr], backlog: u32) -> io::Result<Vec<TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut out = Vec::new();
    for &a in listen {
        let s = Socket::new(Domain::for_address(a), Type::STREAM, None)?;
        if a.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&a.into())
            .map_err(|e| io::Error::new(e.kind(), format!("bind {a}: {e}")))?;
        s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        out.push(TcpListener::from_std(s.into())?);
    }
    Ok(out)
}

// ---- Backends -----------------------------------------------------------------------------

/// First wait before a failed backend is tried again; doubled per failure up to the max.
const BACKOFF_MIN: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How long a backend name's addresses are reused. Looking up a name (`localhost`, a
/// content-filter host) is a blocking getaddrinfo on another thread: not for every session,
/// but a change in DNS or /etc/hosts is still followed within this time, and at once after a
/// failed connect.
const RESOLVED_FOR: Duration = Duration::from_secs(30);

struct BackendState {
    cfg: Backend,
    /// (retry no earlier than, consecutive failures) while marked down.
    down: Mutex<Option<(Instant, u32)>>,
    /// The name's addresses and when they were looked up (IP literals are never cached).
    resolved: Mutex<Option<(Instant, Vec<SocketAddr>)>>,
}

impl BackendState {
    fn retry_at(&self) -> Option<Instant> {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|d| d.0)
    }

    fn failed(&self, why: &str) {
        BACKEND_ERRORS.inc();
        BACKEND_UP
            .with_label_values(&[&self.cfg.to_string()])
            .set(0);
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        let n = d.map_or(0, |d| d.1) + 1;
        let wait = BACKOFF_MIN
            .saturating_mul(1 << (n - 1).min(8))
            .min(BACKOFF_MAX);
        if d.is_none() {
            warn!(backend = %self.cfg, error = why, retry_secs = wait.as_secs(), "proxy backend down");
        }
        *d = Some((Instant::now() + wait, n));
    }

    fn succeeded(&self) {
        BACKEND_UP
            .with_label_values(&[&self.cfg.to_string()])
            .set(1);
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if d.take().is_some() {
            info!(backend = %self.cfg, "proxy backend up again");
        }
    }

    async fn addrs(&self) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.cfg.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.cfg.port)]);
        }
        if let Some((at, addrs)) = &*self.resolved.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < RESOLVED_FOR
        {
            return Ok(addrs.clone());
        }
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((self.cfg.host.as_str(), self.cfg.port))
                .await?
                .collect();
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), addrs.clone()));
        Ok(addrs)
    }

    async fn connect(&self) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in self.addrs().await? {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        // The name may point elsewhere now: look it up again next time.
        *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Err(last)
    }
}

/// The backends in configured order, each with its health.
struct Backends {
    list: Vec<BackendState>,
    balance: Balance,
    /// Round robin: where the next session starts.
    next: AtomicUsize,
}

impl Backends {
    fn new(cfg: &[Backend], balance: Balance) -> Self {
        for b in cfg {
            // Up until a connection fails: nothing is known to be wrong yet.
            BACKEND_UP.with_label_values(&[&b.to_string()]).set(1);
        }
        Self {
            list: cfg
                .iter()
                .map(|b| BackendState {
                    cfg: b.clone(),
                    down: Mutex::new(None),
                    resolved: Mutex::new(None),
                })
                .collect(),
            balance,
            next: AtomicUsize::new(0),
        }
    }

    /// The first backend but those in `skip` that accepts before `deadline`: those up (in
    /// configured order, or in turn for round robin), then those marked down, soonest retry
    /// first (a backend back from a restart is found before its backoff ends, when every
    /// other one is down too). Its index comes with it; the caller says whether it
    /// [`succeeded`](BackendState::succeeded) once it greeted.
    async fn connect(
        &self,
        deadline: Instant,
        skip: &[usize],
    ) -> Result<(TcpStream, usize), String> {
        let now = Instant::now();
        let n = self.list.len();
        let first = match self.balance {
            Balance::Order => 0,
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        let mut order: Vec<(bool, Option<Instant>, usize, usize)> = self
            .list
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let r = b.retry_at();
                (r.is_some_and(|t| t > now), r, (i + n - first) % n, i)
            })
            .collect();
        order.sort();
        let mut errors = Vec::new();
        for (_, _, _, i) in order {
            if skip.contains(&i) {
                continue;
            }
            let b = &self.list[i];
            let started = Instant::now();
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                errors.push(format!("{}: not tried, out of time", b.cfg));
                break;
            };
            match tokio::time::timeout(left, b.connect()).await {
                Ok(Ok(s)) => {
                    BACKEND_CONNECT.observe(started.elapsed().as_secs_f64());
                    let _ = s.set_nodelay(true);
                    return Ok((s, i));
                }
                Ok(Err(e)) => {
                    b.failed(&e.to_string());
                    errors.push(format!("{}: {e}", b.cfg));
                }
                Err(_) => {
                    b.failed("connect timed out");
                    errors.push(format!("{}: connect timed out", b.cfg));
                }
            }
        }
        Err(errors.join("; "))
    }
}

// ---- Limits -------------------------------------------------------------------------------

/// Sessions per client key (an IPv4 address or an IPv6 /64).
type PerClient = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// A client's place in the per-client count, given back on drop.
struct ClientSlot {
    map: PerClient,
    key: IpAddr,
}

impl ClientSlot {
    fn take(map: &PerClient, ip: IpAddr, max: u32) -> Option<Self> {
        let key = match ip {
            IpAddr::V6(a) => {
                let mut o = a.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
            v4 => v4,
        };
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Self {
            map: map.clone(),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Counts a session in `prefilter_proxy_active_sessions` while it lives.
struct Active;

impl Active {
    fn new() -> Self {
        ACTIVE.inc();
        Active
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.dec();
    }
}

// ---- The server ---------------------------------------------------------------------------

/// How long a refusal may take to write before the client is dropped.
const REPLY_WRITE: Duration = Duration::from_secs(10);
/// After a refusal, how long the proxy reads what the client still sends (so its own close
/// does not reset the connection before the client read the reply).
const LINGER: Duration = Duration::from_secs(2);
/// Relay buffer per direction.
const BUF: usize = 16 * 1024;
/// The screen (DNSBL) gets this long; then the client is relayed without it (fail open).
const SCREEN_MAX: Duration = Duration::from_secs(10);
/// Longest wait for one command in a dummy dialogue (the idle timeout, when shorter).
const COMMAND_WAIT: Duration = Duration::from_secs(60);

struct Shared {
    cfg: Config,
    verdicts: Arc<dyn Verdicts>,
    backends: Backends,
    /// For the implicit TLS listeners.
    smtps_backends: Backends,
    per_client: PerClient,
    slots: Arc<Semaphore>,
    /// Session ids: the start time's seconds, then a counter.
    id_base: u64,
    next_id: AtomicU64,
}

impl Shared {
    fn session_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:06x}", self.id_base & 0xffff_ffff, n & 0xff_ffff)
    }

    /// `text` with its placeholders filled, and CRLF.
    fn reply(&self, text: &str, client: IpAddr, list: Option<&str>) -> Vec<u8> {
        let mut s = text
            .replace("{hostname}", &self.cfg.hostname)
            .replace("{list}", list.unwrap_or("-"))
            .replace("{client}", &client.to_string());
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// Serves the proxy on `listeners` (SMTP) and `smtps` (implicit TLS) until `stop` turns
/// true; then stops accepting, lets the sessions finish for `shutdown_timeout`, and closes
/// the rest.
pub async fn serve(
    cfg: Config,
    verdicts: Arc<dyn Verdicts>,
    listeners: Vec<TcpListener>,
    smtps: Vec<TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    let shutdown = cfg.shutdown_timeout;
    let sh = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(cfg.max_connections as usize)),
        backends: Backends::new(&cfg.backends, cfg.balance),
        smtps_backends: Backends::new(&cfg.smtps_backends, cfg.balance),
        cfg,
        verdicts,
        per_client: Arc::default(),
        id_base: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        next_id: AtomicU64::new(0),
    });
    // One accept task per listener feeds the session spawner.
    let (tx, mut rx) = mpsc::channel::<(TcpStream, SocketAddr, SocketAddr, bool)>(256);
    let mut acceptors = JoinSet::new();
    let tagged = listeners
        .into_iter()
        .map(|l| (l, false))
        .chain(smtps.into_iter().map(|l| (l, true)));
    for (l, tls) in tagged {
        let tx = tx.clone();
        acceptors.spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, peer)) => {
                        let local = s.local_addr().unwrap_or(peer);
                        if tx.send((s, peer, local, tls)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!("proxy accept: {e}");
                        // Out of descriptors: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    drop(tx);
    let (hard_tx, hard_rx) = watch::channel(false);
    let mut sessions = JoinSet::new();
    let trim = Trim::default();
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some((s, peer, local, tls)) => {
                    admit(&sh, &mut sessions, s, (peer, local, tls), &hard_rx)
                }
                None => break,
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {
                if sessions.is_empty() {
                    trim.idle();
                }
            }
            _ = stop.changed() => break,
        }
    }
    // Stop accepting: the listening sockets close with their tasks.
    acceptors.abort_all();
    drop(rx);
    if !sessions.is_empty() {
        info!(
            sessions = sessions.len(),
            deadline_secs = shutdown.as_secs(),
            "proxy: stopped accepting, letting sessions finish"
        );
    }
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(shutdown, drain).await.is_err() {
        warn!(
            sessions = sessions.len(),
            "proxy: closing the sessions still open"
        );
        // Each session logs its end ("shutdown") and closes both sides.
        let _ = hard_tx.send(true);
        let drain = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(1), drain)
            .await
            .is_err()
        {
            sessions.abort_all();
        }
    }
    info!("proxy stopped");
}

/// Gives freed memory back to the system when the proxy goes idle after a burst.
#[derive(Default)]
struct Trim {
    pending: Arc<std::sync::atomic::AtomicBool>,
}

impl Trim {
    /// A second after the last session ended, if none is open by then, at most once a
    /// second: glibc keeps the
    /// memory of freed sessions in its per-thread arenas (only the main heap's top is
    /// trimmed on free), so a burst of thousands of sessions would stay in the RSS for
    /// good. No crate does this.
    fn idle(&self) {
        if self.pending.swap(true, Ordering::Relaxed) {
            return;
        }
        let pending = self.pending.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            pending.store(false, Ordering::Relaxed);
            // Only when still idle: malloc_trim takes the arenas' locks, and a session
            // allocating meanwhile would wait milliseconds for its greeting.
            if ACTIVE.get() > 0 {
                return;
            }
            #[cfg(target_env = "gnu")]
            let _ = tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim only returns free memory; no pointer is involved.
                unsafe { libc::malloc_trim(0) };
            })
            .await;
        });
    }
}

/// Checks the limits and starts a session, or refuses the client at once.
fn admit(
    sh: &Arc<Shared>,
    sessions: &mut JoinSet<()>,
    s: TcpStream,
    (peer, local, tls): (SocketAddr, SocketAddr, bool),
    hard: &watch::Receiver<bool>,
) {
    let peer = header::canonical(peer);
    let local = header::canonical(local);
    let permit = sh.slots.clone().try_acquire_owned().ok();
    // Read once, here: the session goes on with it.
    let verdict = permit.is_some().then(|| sh.verdicts.verdict(peer.ip()));
    // An allowlisted client (a relay, a partner's outbound pool) is exempt from the
    // per-client limit, as from every other check; max_connections still bounds it.
    let slot = match &verdict {
        Some(v) if v.decision == Decision::Allow => Some(None),
        Some(_) => ClientSlot::take(&sh.per_client, peer.ip(), sh.cfg.max_per_client).map(Some),
        None => None,
    };
    match (permit, slot, verdict) {
        (Some(permit), Some(slot), Some(v)) => {
            let sh = sh.clone();
            let hard = hard.clone();
            sessions.spawn(async move {
                session(&sh, s, (peer, local, tls), v, hard).await;
                drop((permit, slot));
            });
        }
        (permit, _, _) => {
            let which = if permit.is_none() {
                "max_connections"
            } else {
                "max_per_client"
            };
            CONNECTIONS.with_label_values(&["limit"]).inc();
            let reply = sh.reply(
                "421 4.7.0 {hostname} Too many connections, try again later",
                peer.ip(),
                None,
            );
            // A fresh socket's send buffer is empty: one non-blocking write fits the line,
            // and no task is spent on a client over a limit. A TLS client would not read
            // plain text: closed.
            let sent = if tls {
                0
            } else {
                s.try_write(&reply).unwrap_or(0)
            };
            BYTES.with_label_values(&["out"]).inc_by(sent as u64);
            info!(
                session = %sh.session_id(),
                client = %peer,
                // Unquoted like every other session line's verdict (`%`: Display).
                verdict = %"limit",
                limit = %which,
                bytes_in = 0u64,
                bytes_out = sent as u64,
                duration_ms = 0u64,
                end = "refused over a limit",
                "proxy session"
            );
        }
    }
}

/// What one session did, for its log line: filled as it goes, so a session ended by the
/// stop still logs what it had.
#[derive(Default)]
struct Record {
    up: AtomicU64,
    down: AtomicU64,
    info: Mutex<Info>,
}

#[derive(Default)]
struct Info {
    verdict: &'static str,
    list: Option<String>,
    score: i32,
    listed: Vec<String>,
    backend: Option<String>,
    helo: Option<String>,
    mail: Option<String>,
    rcpts: Vec<String>,
    rcpt_count: usize,
    queue_ids: Vec<String>,
    end: String,
}

impl Record {
    fn with<T>(&self, f: impl FnOnce(&mut Info) -> T) -> T {
        f(&mut self.info.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn end(&self, why: impl Into<String>) {
        let why = why.into();
        self.with(|i| i.end = why);
    }
}

/// Writes `reply`, closes our side, and reads what the client still sends for a moment, so
/// the reply is not lost to a reset.
async fn refuse(client: &mut TcpStream, reply: &[u8], rec: &Record) {
    match tokio::time::timeout(REPLY_WRITE, client.write_all(reply)).await {
        Ok(Ok(())) => {
            rec.down.fetch_add(reply.len() as u64, Ordering::Relaxed);
        }
        _ => return,
    };
    linger(client).await;
}

/// Closes our side and reads what the client still sends for a moment (bounded in time
/// and bytes): closing with unread input resets the connection, and the client's stack
/// drops the replies it had not read yet.
async fn linger(client: &mut TcpStream) {
    let _ = client.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        let mut total = 0usize;
        while total < 64 * 1024 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Writes one reply of a dialogue; false when the client is gone.
async fn say(client: &mut TcpStream, reply: &[u8], rec: &Record) -> bool {
    let ok = matches!(
        tokio::time::timeout(REPLY_WRITE, client.write_all(reply)).await,
        Ok(Ok(()))
    );
    if ok {
        rec.down.fetch_add(reply.len() as u64, Ordering::Relaxed);
    }
    ok
}

async fn session(
    sh: &Shared,
    mut client: TcpStream,
    (peer, local, tls): (SocketAddr, SocketAddr, bool),
    v: Verdict,
    mut hard: watch::Receiver<bool>,
) {
    let _active = Active::new();
    let started = Instant::now();
    let id = sh.session_id();
    let _ = client.set_nodelay(true);
    let rec = Record::default();
    let stopped = {
        let work = run(sh, &mut client, (peer, local, tls), v, &rec);
        tokio::select! {
            () = work => false,
            _ = hard.wait_for(|&v| v) => true,
        }
    };
    if stopped {
        rec.end("shutdown");
    }
    let (up, down) = (
        rec.up.load(Ordering::Relaxed),
        rec.down.load(Ordering::Relaxed),
    );
    BYTES.with_label_values(&["in"]).inc_by(up);
    BYTES.with_label_values(&["out"]).inc_by(down);
    let i = rec.info.into_inner().unwrap_or_else(|p| p.into_inner());
    CONNECTIONS.with_label_values(&[i.verdict]).inc();
    let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let join = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(",")
        }
    };
    let mut rcpts = join(&i.rcpts);
    if i.rcpt_count > i.rcpts.len() {
        rcpts.push_str(&format!(",+{}", i.rcpt_count - i.rcpts.len()));
    }
    info!(
        session = %id,
        client = %peer,
        verdict = %i.verdict,
        list = %or_dash(&i.list),
        score = i.score,
        listed = %join(&i.listed),
        helo = %or_dash(&i.helo),
        mail_from = %or_dash(&i.mail),
        rcpt_to = %rcpts,
        queue_id = %join(&i.queue_ids),
        backend = %or_dash(&i.backend),
        bytes_in = up,
        bytes_out = down,
        duration_ms = started.elapsed().as_millis() as u64,
        end = %i.end,
        "proxy session"
    );
}

/// How a refused client is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Tempfail,
    Reject,
}

/// The session's work: verdict, screen and pregreet, then a refusal, a dummy dialogue or
/// the relay. Everything it learns goes into `rec`.
async fn run(
    sh: &Shared,
    client: &mut TcpStream,
    (peer, local, tls): (SocketAddr, SocketAddr, bool),
    v: Verdict,
    rec: &Record,
) {
    rec.with(|i| {
        i.verdict = v.decision.name();
        i.list = v.list.clone();
    });
    let mut list = v.list;
    let mut decision = v.decision;
    // Set once `220-` went out: every answer from then on completes that greeting.
    let mut greeted = false;
    if matches!(decision, Decision::Pass | Decision::Observe) {
        let screen = async {
            match tokio::time::timeout(SCREEN_MAX, sh.verdicts.screen(peer, local)).await {
                Ok(s) => s,
                Err(_) => {
                    warn!(client = %peer, "proxy: the screen took over 10s; relaying without it");
                    Screen::default()
                }
            }
        };
        // No pregreet on implicit TLS: the client speaks first there.
        let greet_wait = sh.cfg.greet_wait.filter(|_| !tls);
        let (screen, talked) = match greet_wait {
            None => (screen.await, None),
            Some(wait) => {
                let first = format!("220-{} ESMTP\r\n", sh.cfg.hostname);
                if !say(client, first.as_bytes(), rec).await {
                    rec.end("client gone before the greeting");
                    return;
                }
                greeted = true;
                let mut byte = [0u8; 64];
                let listen = async {
                    match tokio::time::timeout(wait, client.read(&mut byte)).await {
                        Err(_) => None,
                        Ok(Ok(0) | Err(_)) => Some(0),
                        Ok(Ok(n)) => Some(n),
                    }
                };
                let (s, t) = tokio::join!(screen, listen);
                (s, t)
            }
        };
        rec.with(|i| {
            i.score = screen.score;
            i.listed = screen.listed.clone();
        });
        match talked {
            Some(0) => {
                rec.end("client closed during the greet wait");
                return;
            }
            Some(n) => {
                rec.up.fetch_add(n as u64, Ordering::Relaxed);
                return pregreet_violation(sh, client, peer, rec).await;
            }
            None => {}
        }
        if let Some(d) = screen.decision {
            decision = d;
            rec.with(|i| i.verdict = d.name());
            // The reply names the zones that listed it, as postscreen's does.
            if !screen.listed.is_empty() {
                let zones: Vec<&str> = screen
                    .listed
                    .iter()
                    .map(|l| l.split('=').next().unwrap_or(l))
                    .collect();
                list = Some(zones.join(", "));
                // The session line names what the reply names.
                rec.with(|i| i.list = list.clone());
            }
        }
    }
    let list = list.as_deref();
    let refusal = match decision {
        Decision::Tempfail => Refusal::Tempfail,
        Decision::Reject => Refusal::Reject,
        Decision::Allow | Decision::Pass | Decision::Observe => {
            return relay_session(sh, client, (peer, local, tls), decision, rec).await;
        }
    };
    sh.verdicts.refused(peer.ip());
    if tls {
        // The client expects a TLS handshake: no plain-text reply it could read.
        rec.end("refused: closed (implicit TLS)");
        return;
    }
    let text = match refusal {
        Refusal::Tempfail => &sh.cfg.tempfail_reply,
        Refusal::Reject => &sh.cfg.reject_reply,
    };
    let reply = sh.reply(text, peer.ip(), list);
    if refusal == Refusal::Reject && sh.cfg.reject_at == RejectAt::Rcpt {
        dialogue(sh, client, peer, list, None, rec).await;
    } else if greeted {
        // 220- went out: complete the greeting, refuse the first command.
        dialogue(sh, client, peer, list, Some(&reply), rec).await;
    } else {
        refuse(client, &reply, rec).await;
        rec.end("refused");
    }
}

/// A client that talked before the greeting ended: refused and learned.
async fn pregreet_violation(sh: &Shared, client: &mut TcpStream, peer: SocketAddr, rec: &Record) {
    PREGREET.inc();
    let action = sh.cfg.greet_action;
    rec.with(|i| i.verdict = "pregreet");
    let verdicts = sh.verdicts.clone();
    let (ip, ttl) = (peer.ip(), sh.cfg.greet_ttl);
    // The daemon's writer may be busy with an import: not on this thread.
    let learned = tokio::task::spawn_blocking(move || {
        verdicts.learn(ip, action, ttl, "pregreet", "talked before the greeting")
    })
    .await;
    if let Ok(Err(e)) | Err(e) = learned.map_err(|e| e.to_string()) {
        warn!(client = %peer, "proxy: could not learn the pregreet verdict: {e}");
    }
    sh.verdicts.refused(ip);
    let text = if action == Action::Tempfail {
        &sh.cfg.tempfail_reply
    } else {
        &sh.cfg.reject_reply
    };
    // After `220-` a different code is not well-formed, but the client broke the protocol
    // first, and every SMTP client reads the last line's code.
    refuse(client, &sh.reply(text, ip, Some("pregreet")), rec).await;
    rec.end("pregreet: talked before the greeting");
}

/// The dummy SMTP dialogue: completes the greeting, then either refuses the first command
/// with `first` (a refusal decided after `220-` went out), or (`first` = None, reject at
/// RCPT) accepts HELO and MAIL and refuses every RCPT TO, logging the envelope. Bounded in
/// line length, commands and time.
async fn dialogue(
    sh: &Shared,
    client: &mut TcpStream,
    peer: SocketAddr,
    list: Option<&str>,
    first: Option<&[u8]>,
    rec: &Record,
) {
    let host = &sh.cfg.hostname;
    if !say(client, format!("220 {host} ESMTP\r\n").as_bytes(), rec).await {
        rec.end("client gone");
        return;
    }
    let rcpt_reply = sh.reply(&sh.cfg.rcpt_reply, peer.ip(), list);
    let wait = sh.cfg.idle_timeout.min(COMMAND_WAIT);
    let mut lines = smtp::Lines::default();
    let mut seen = 0u64;
    let talk = async {
        for _ in 0..smtp::MAX_COMMANDS {
            let line = match tokio::time::timeout(wait, lines.next(client)).await {
                Err(_) => return format!("no command within {}s", wait.as_secs()),
                Ok(Ok(None)) => return "client closed".to_owned(),
                Ok(Err(bad)) => {
                    rec.up.fetch_add(lines.bytes - seen, Ordering::Relaxed);
                    let _ = say(client, b"500 5.5.2 Error: bad input\r\n", rec).await;
                    return bad.text().to_owned();
                }
                Ok(Ok(Some(l))) => l,
            };
            rec.up.fetch_add(lines.bytes - seen, Ordering::Relaxed);
            seen = lines.bytes;
            let cmd = smtp::command(&line);
            if cmd == smtp::Cmd::Quit {
                let _ = say(client, b"221 2.0.0 Bye\r\n", rec).await;
                return "quit".to_owned();
            }
            if let Some(reply) = first {
                let _ = say(client, reply, rec).await;
                return "refused".to_owned();
            }
            let reply: Vec<u8> = match cmd {
                smtp::Cmd::Helo(h) => {
                    rec.with(|i| i.helo = Some(h));
                    format!("250 {host}\r\n").into_bytes()
                }
                smtp::Cmd::Mail(m) => {
                    rec.with(|i| i.mail = Some(m));
                    b"250 2.1.0 Ok\r\n".to_vec()
                }
                smtp::Cmd::Rcpt(r) => {
                    rec.with(|i| {
                        i.rcpt_count += 1;
                        if i.rcpts.len() < smtp::MAX_LOGGED_RCPTS {
                            i.rcpts.push(r);
                        }
                    });
                    rcpt_reply.clone()
                }
                smtp::Cmd::Data => b"554 5.5.1 Error: no valid recipients\r\n".to_vec(),
                smtp::Cmd::Rset | smtp::Cmd::Noop => b"250 2.0.0 Ok\r\n".to_vec(),
                smtp::Cmd::Quit => unreachable!("answered above"),
                smtp::Cmd::Other => b"502 5.5.2 Error: command not recognized\r\n".to_vec(),
            };
            if !say(client, &reply, rec).await {
                return "client gone".to_owned();
            }
        }
        let _ = say(client, b"421 4.7.0 Too many commands\r\n", rec).await;
        format!("over {} commands", smtp::MAX_COMMANDS)
    };
    let end = match tokio::time::timeout(smtp::DIALOGUE_MAX, talk).await {
        Ok(e) => e,
        Err(_) => format!("dialogue over {}s", smtp::DIALOGUE_MAX.as_secs()),
    };
    linger(client).await;
    rec.end(format!("refused: {end}"));
}

/// Connects a backend, sends the PROXY header, waits for its greeting, and relays. A
/// backend that does not take the header, closes or stays silent instead of greeting is
/// marked down and the next one is tried; with none left the client gets `421 4.4.2`.
async fn relay_session(
    sh: &Shared,
    client: &mut TcpStream,
    (peer, local, tls): (SocketAddr, SocketAddr, bool),
    decision: Decision,
    rec: &Record,
) {
    let backends = if tls {
        &sh.smtps_backends
    } else {
        &sh.backends
    };
    let tlv = rec.with(|i| header::summary(decision.name(), i.list.as_deref(), i.score, &i.listed));
    let hdr = header::build(sh.cfg.proxy_protocol, peer, local, &tlv);
    let mut tried = Vec::new();
    let mut errors = Vec::new();
    let mut b = loop {
        let deadline = Instant::now() + sh.cfg.connect_timeout;
        let (mut b, i) = match backends.connect(deadline, &tried).await {
            Ok(x) => x,
            Err(e) => {
                if !e.is_empty() {
                    errors.push(e);
                }
                // A TLS client cannot read a plain-text 421: it is closed and retries.
                if !tls {
                    let text =
                        "421 4.4.2 {hostname} Service temporarily unavailable, try again later";
                    refuse(client, &sh.reply(text, peer.ip(), None), rec).await;
                }
                rec.end(format!("no backend: {}", errors.join("; ")));
                return;
            }
        };
        tried.push(i);
        let state = &backends.list[i];
        let sent = tokio::time::timeout(sh.cfg.connect_timeout, b.write_all(&hdr)).await;
        // On implicit TLS the backend waits for the client's handshake: nothing to wait for.
        let greeted = match sent {
            Ok(Ok(())) if tls => Ok(()),
            Ok(Ok(())) => greeting(&b, sh.cfg.backend_greeting_timeout).await,
            _ => Err("did not take the PROXY header".to_owned()),
        };
        match greeted {
            Ok(()) => {
                state.succeeded();
                rec.with(|r| r.backend = Some(state.cfg.to_string()));
                break b;
            }
            Err(why) => {
                state.failed(&why);
                errors.push(format!("{}: {why}", state.cfg));
            }
        }
    };
    let end = relay(client, &mut b, (sh.cfg.idle_timeout, tls), rec).await;
    rec.end(end);
}

/// Waits until the backend has sent its first bytes (its `220` greeting), without reading
/// them: they are relayed to the client as they are.
async fn greeting(b: &TcpStream, within: Duration) -> Result<(), String> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, b.peek(&mut byte)).await {
        Ok(Ok(0)) => Err("closed before its greeting".to_owned()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{e} before its greeting")),
        Err(_) => Err(format!(
            "no greeting within {}s (backend_greeting_timeout)",
            within.as_secs()
        )),
    }
}

/// Copies the client's bytes to the backend until EOF, each read checked by the guard
/// first (a possible PROXY header at the stream's start is read whole before it is judged).
async fn pipe_up<W>(
    r: &ReadHalf<'_>,
    w: &mut W,
    tls: bool,
    rec: &Record,
    last: &AtomicU64,
    base: Instant,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut guard = smtp::Guard::new(tls);
    let mut started = false;
    let mut buf = Vec::new();
    loop {
        let have = buf.len();
        let n = read_fresh(r, &mut buf).await?;
        if n == 0 {
            if have > 0 {
                guard.feed(&buf).map_err(bad)?;
                w.write_all(&buf).await?;
            }
            // Half-close: the other side sees EOF and may still answer.
            let _ = w.shutdown().await;
            return Ok(());
        }
        last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
        rec.up.fetch_add(n as u64, Ordering::Relaxed);
        // Only the stream's start can be a header: held back later, a lone CRLF (a client
        // that writes the line end apart) would wait for the next command.
        if !started && smtp::maybe_proxy_header(&buf) {
            continue;
        }
        started = true;
        guard.feed(&buf).map_err(bad)?;
        w.write_all(&buf).await?;
        // Freed while the client is quiet.
        buf = Vec::new();
        last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Waits until `r` has bytes, and only then grows `buf` to read them: an idle session
/// (most of them, most of the time) holds no relay buffer. Returns the bytes read, 0 at EOF.
async fn read_fresh(r: &ReadHalf<'_>, buf: &mut Vec<u8>) -> io::Result<usize> {
    let s: &TcpStream = r.as_ref();
    loop {
        s.readable().await?;
        // Capacity only: the pages a short SMTP line does not fill are never touched.
        buf.reserve(BUF);
        match s.try_read_buf(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

fn bad(b: smtp::Bad) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, b.text())
}

/// Copies the backend's bytes to the client until EOF, noting queue ids as they pass.
async fn pipe_down<W>(
    r: &ReadHalf<'_>,
    w: &mut W,
    rec: &Record,
    last: &AtomicU64,
    base: Instant,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut watch = smtp::QueueWatch::default();
    loop {
        let mut buf = Vec::new();
        let n = read_fresh(r, &mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
        watch.feed(&buf[..n], |id| {
            rec.with(|i| {
                if i.queue_ids.len() < smtp::MAX_LOGGED_RCPTS {
                    i.queue_ids.push(id);
                }
            })
        });
        w.write_all(&buf[..n]).await?;
        rec.down.fetch_add(n as u64, Ordering::Relaxed);
        last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Relays both ways until both sides closed, an error, bad input from the client, or
/// `idle` without a byte. Returns how it ended.
async fn relay(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    (idle, tls): (Duration, bool),
    rec: &Record,
) -> String {
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let (cr, mut cw) = client.split();
    let (br, mut bw) = backend.split();
    let both = async {
        tokio::try_join!(
            pipe_up(&cr, &mut bw, tls, rec, &last, base),
            pipe_down(&br, &mut cw, rec, &last, base)
        )
    };
    let idle_watch = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let quiet = base.elapsed().saturating_sub(since);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    };
    tokio::select! {
        r = both => match r {
            Ok(_) => "closed".to_owned(),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => e.to_string(),
            Err(e) => format!("error: {e}"),
        },
        _ = idle_watch => "idle timeout".to_owned(),
    }
}

#[cfg(test)]
mod tests;
