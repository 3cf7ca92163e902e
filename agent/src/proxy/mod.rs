//! The SMTP proxy: the only way from the internet to the content filter.
//!
//! Per accepted connection the client's verdict is read from the daemon's readers (the
//! published View and the KernelView, never the writer's lock, so an import never delays a
//! greeting). `tempfail` and `reject` are answered here (`421 4.7.0` / `554 5.7.1`) and the
//! connection is closed: a refused client never reaches the backend. Everything else is
//! relayed to the first backend that answers, after a PROXY protocol header carrying the
//! client's real address and port. Over a connection limit, or with no backend reachable
//! within `connect_timeout`, the client gets a `421` at once, never a hung connection.

pub mod header;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};
use tracing::{info, warn};

use crate::config::{Backend, Proxy as Config};

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

/// Where verdicts come from: the daemon (its readers only), or a table in unit tests.
pub trait Verdicts: Send + Sync + 'static {
    /// The verdict for a client address (IPv4-mapped addresses already made IPv4).
    fn verdict(&self, ip: IpAddr) -> Verdict;
}

// ---- Metrics ------------------------------------------------------------------------------

/// Labels of `prefilter_proxy_connections_total`: the decisions, and `limit`.
const VERDICT_LABELS: [&str; 6] = ["allow", "pass", "observe", "tempfail", "reject", "limit"];

static CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "prefilter_proxy_connections_total",
            "Connections accepted by the SMTP proxy, by verdict (limit: refused over a connection limit).",
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

/// Adds the proxy's metrics to `r`, every verdict at 0 so rate() works from the start.
pub fn register(r: &Registry) {
    for v in VERDICT_LABELS {
        CONNECTIONS.with_label_values(&[v]);
    }
    // Distinct names in a registry that holds none of them: cannot fail.
    let _ = r.register(Box::new(CONNECTIONS.clone()));
    let _ = r.register(Box::new(ACTIVE.clone()));
    let _ = r.register(Box::new(BACKEND_ERRORS.clone()));
}

// ---- Listening ----------------------------------------------------------------------------

/// Binds every `listen` address: IPv6 sockets are v6-only, so `0.0.0.0:25` and `[::]:25`
/// can both be given. Fails on the first address that cannot be bound.
pub fn bind(listen: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
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
        s.listen(1024)?;
        out.push(TcpListener::from_std(s.into())?);
    }
    Ok(out)
}

// ---- Backends -----------------------------------------------------------------------------

/// First wait before a failed backend is tried again; doubled per failure up to the max.
const BACKOFF_MIN: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

struct BackendState {
    cfg: Backend,
    /// (retry no earlier than, consecutive failures) while marked down.
    down: Mutex<Option<(Instant, u32)>>,
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
        let mut d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if d.take().is_some() {
            info!(backend = %self.cfg, "proxy backend up again");
        }
    }

    async fn connect(&self) -> io::Result<TcpStream> {
        let addrs = tokio::net::lookup_host((self.cfg.host.as_str(), self.cfg.port)).await?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// The backends in configured order, each with its health.
struct Backends(Vec<BackendState>);

impl Backends {
    /// The first backend that accepts before `deadline`: those up in configured order, then
    /// those marked down, soonest retry first (a backend back from a restart is found
    /// before its backoff ends, when every other one is down too).
    async fn connect(&self, deadline: Instant) -> Result<(TcpStream, &Backend), String> {
        let now = Instant::now();
        let mut order: Vec<(bool, Option<Instant>, usize)> = self
            .0
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let r = b.retry_at();
                (r.is_some_and(|t| t > now), r, i)
            })
            .collect();
        order.sort();
        let mut errors = Vec::new();
        for (_, _, i) in order {
            let b = &self.0[i];
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                errors.push(format!("{}: not tried, out of time", b.cfg));
                break;
            };
            match tokio::time::timeout(left, b.connect()).await {
                Ok(Ok(s)) => {
                    b.succeeded();
                    let _ = s.set_nodelay(true);
                    return Ok((s, &b.cfg));
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

struct Shared {
    cfg: Config,
    verdicts: Arc<dyn Verdicts>,
    backends: Backends,
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

/// Serves the proxy on `listeners` until `stop` turns true; then stops accepting, lets the
/// sessions finish for `shutdown_timeout`, and closes the rest.
pub async fn serve(
    cfg: Config,
    verdicts: Arc<dyn Verdicts>,
    listeners: Vec<TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    let shutdown = cfg.shutdown_timeout;
    let sh = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(cfg.max_connections as usize)),
        backends: Backends(
            cfg.backends
                .iter()
                .map(|b| BackendState {
                    cfg: b.clone(),
                    down: Mutex::new(None),
                })
                .collect(),
        ),
        cfg,
        verdicts,
        per_client: Arc::default(),
        id_base: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        next_id: AtomicU64::new(0),
    });
    // One accept task per listener feeds the session spawner.
    let (tx, mut rx) = mpsc::channel::<(TcpStream, SocketAddr, SocketAddr)>(256);
    let mut acceptors = JoinSet::new();
    for l in listeners {
        let tx = tx.clone();
        acceptors.spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, peer)) => {
                        let local = s.local_addr().unwrap_or(peer);
                        if tx.send((s, peer, local)).await.is_err() {
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
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some((s, peer, local)) => admit(&sh, &mut sessions, s, peer, local, &hard_rx),
                None => break,
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
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

/// Checks the limits and starts a session, or refuses the client at once.
fn admit(
    sh: &Arc<Shared>,
    sessions: &mut JoinSet<()>,
    s: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    hard: &watch::Receiver<bool>,
) {
    let peer = header::canonical(peer);
    let local = header::canonical(local);
    let permit = sh.slots.clone().try_acquire_owned().ok();
    let slot = permit
        .as_ref()
        .and_then(|_| ClientSlot::take(&sh.per_client, peer.ip(), sh.cfg.max_per_client));
    match (permit, slot) {
        (Some(permit), Some(slot)) => {
            let sh = sh.clone();
            let hard = hard.clone();
            sessions.spawn(async move {
                session(&sh, s, peer, local, hard).await;
                drop((permit, slot));
            });
        }
        (permit, _) => {
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
            // and no task is spent on a client over a limit.
            let sent = s.try_write(&reply).unwrap_or(0);
            info!(
                session = %sh.session_id(),
                client = %peer,
                verdict = "limit",
                limit = which,
                bytes_in = 0u64,
                bytes_out = sent as u64,
                duration_ms = 0u64,
                end = "refused over a limit",
                "proxy session"
            );
        }
    }
}

/// Writes `reply`, closes our side, and reads what the client still sends for a moment, so
/// the reply is not lost to a reset. Returns the bytes written.
async fn refuse(client: &mut TcpStream, reply: &[u8]) -> u64 {
    let written = match tokio::time::timeout(REPLY_WRITE, client.write_all(reply)).await {
        Ok(Ok(())) => reply.len() as u64,
        _ => return 0,
    };
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
    written
}

async fn session(
    sh: &Shared,
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    mut hard: watch::Receiver<bool>,
) {
    let _active = Active::new();
    let started = Instant::now();
    let id = sh.session_id();
    let _ = client.set_nodelay(true);
    let v = sh.verdicts.verdict(peer.ip());
    CONNECTIONS.with_label_values(&[v.decision.name()]).inc();
    let list = v.list.as_deref();
    let (backend, up, down, end): (Option<String>, u64, u64, String) = match v.decision {
        Decision::Tempfail | Decision::Reject => {
            let text = if v.decision == Decision::Tempfail {
                &sh.cfg.tempfail_reply
            } else {
                &sh.cfg.reject_reply
            };
            let n = refuse(&mut client, &sh.reply(text, peer.ip(), list)).await;
            (None, 0, n, "refused".into())
        }
        Decision::Allow | Decision::Pass | Decision::Observe => {
            let deadline = Instant::now() + sh.cfg.connect_timeout;
            match sh.backends.connect(deadline).await {
                Err(e) => {
                    let reply = sh.reply(
                        "421 4.4.2 {hostname} Service temporarily unavailable, try again later",
                        peer.ip(),
                        None,
                    );
                    let n = refuse(&mut client, &reply).await;
                    (None, 0, n, format!("no backend: {e}"))
                }
                Ok((mut b, name)) => {
                    let hdr = header::build(sh.cfg.proxy_protocol, peer, local);
                    let sent =
                        tokio::time::timeout(sh.cfg.connect_timeout, b.write_all(&hdr)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        BACKEND_ERRORS.inc();
                        let reply = sh.reply(
                            "421 4.4.2 {hostname} Service temporarily unavailable, try again later",
                            peer.ip(),
                            None,
                        );
                        let n = refuse(&mut client, &reply).await;
                        (
                            Some(name.to_string()),
                            0,
                            n,
                            "backend did not take the PROXY header".into(),
                        )
                    } else {
                        let (up, down, end) =
                            relay(&mut client, &mut b, sh.cfg.idle_timeout, &mut hard).await;
                        (Some(name.to_string()), up, down, end)
                    }
                }
            }
        }
    };
    info!(
        session = %id,
        client = %peer,
        verdict = v.decision.name(),
        list = list.unwrap_or("-"),
        backend = backend.as_deref().unwrap_or("-"),
        bytes_in = up,
        bytes_out = down,
        duration_ms = started.elapsed().as_millis() as u64,
        end = %end,
        "proxy session"
    );
}

/// Copies one direction until EOF, then half-closes the other side.
async fn pipe<R, W>(
    r: &mut R,
    w: &mut W,
    bytes: &AtomicU64,
    last: &AtomicU64,
    base: Instant,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Half-close: the other side sees EOF and may still answer.
            let _ = w.shutdown().await;
            return Ok(());
        }
        last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
        w.write_all(&buf[..n]).await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Relays both ways until both sides closed, an error, `idle` without a byte, or a hard
/// stop. Returns (client to backend bytes, backend to client bytes, how it ended).
async fn relay(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    idle: Duration,
    hard: &mut watch::Receiver<bool>,
) -> (u64, u64, String) {
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut cr, mut cw) = client.split();
    let (mut br, mut bw) = backend.split();
    let both = async {
        tokio::try_join!(
            pipe(&mut cr, &mut bw, &up, &last, base),
            pipe(&mut br, &mut cw, &down, &last, base)
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
    let end = tokio::select! {
        r = both => match r {
            Ok(_) => "closed".to_owned(),
            Err(e) => format!("error: {e}"),
        },
        _ = idle_watch => "idle timeout".to_owned(),
        _ = hard.wait_for(|&v| v) => "shutdown".to_owned(),
    };
    (
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
        end,
    )
}

#[cfg(test)]
mod tests;
