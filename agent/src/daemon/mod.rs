//! `prefilter run`: loads and attaches the filter, keeps its tables equal to the store, and
//! serves the control socket and the metrics endpoint.

mod control;
mod events;
mod metrics;
mod settings;
mod verify;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::programs::XdpMode;
use prefilter_common::{action, config::FLAG_FIRST_SEEN, config::FLAG_RATELIMIT, verdict};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tracing::{error, info, warn};

pub use self::settings::{ListSpec, Settings};
use crate::{
    prefix::Prefix,
    store::{self, Change, Entry, Origin, Store, Undo},
    xdp::{Filter, FilterError, Options, v4table::Kind},
};

/// Name of the list that `block add` writes to when none is given.
pub const CLI_LIST: &str = "cli";
/// Name of the list that `allow add` writes to when none is given (a list holds one kind).
pub const CLI_ALLOW_LIST: &str = "cli-allow";

/// An error answered to a control client, with the HTTP status that fits it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    pub status: u16,
    pub message: String,
}

impl OpError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
    fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: 409,
            message: message.into(),
        }
    }
    fn internal(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
        }
    }
}

impl From<store::StoreError> for OpError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::Io { .. } | store::StoreError::Corrupt { .. } => {
                Self::internal(e.to_string())
            }
            _ => Self::conflict(e.to_string()),
        }
    }
}

/// Entries to add to one list.
pub struct AddRequest {
    pub kind: Kind,
    pub list: String,
    pub prefixes: Vec<Prefix>,
    /// One of the block actions, or `action::ALLOW`.
    pub action: u8,
    /// Seconds until the entries expire.
    pub ttl: Option<u64>,
    pub reason: Option<String>,
}

/// One attached interface.
#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub interface: String,
    /// "native", "skb", or "adopted" (the pinned link of a previous agent was reused).
    pub mode: &'static str,
}

/// Everything the daemon owns, behind one lock: operations are short, and a single writer
/// keeps store, tables and journal in the same order.
pub struct State {
    pub settings: Settings,
    pub config_path: PathBuf,
    pub filter: Filter,
    pub store: Store,
    pub attached: Vec<Attachment>,
    pub pin_dir: PathBuf,
    pub started: Instant,
    /// Control requests by (endpoint, status).
    pub requests: HashMap<(String, u16), u64>,
}

/// Shared handle.
#[derive(Clone)]
pub struct Daemon {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<events::EventJson>,
    expiry_wake: Arc<tokio::sync::Notify>,
}

fn mode_name(m: Option<XdpMode>) -> &'static str {
    match m {
        Some(XdpMode::Driver) => "native",
        Some(XdpMode::Skb) => "skb",
        Some(_) => "default",
        None => "adopted",
    }
}

/// Applies table changes; on failure reverts the ones already made and reports the error.
fn apply(filter: &mut Filter, changes: &[Change]) -> Result<(), OpError> {
    for (i, c) in changes.iter().enumerate() {
        if let Err(e) = apply_one(filter, c.prefix, c.kind, c.verdict) {
            for c in changes[..i].iter().rev() {
                let _ = apply_one(filter, c.prefix, c.kind, c.old);
            }
            return Err(OpError {
                status: 507,
                message: format!("nothing applied: {e}"),
            });
        }
    }
    Ok(())
}

fn apply_one(filter: &mut Filter, p: Prefix, kind: Kind, v: Option<u16>) -> anyhow::Result<()> {
    match (p, v) {
        (Prefix::V4 { addr, len }, Some(v)) => filter.v4.set(addr, len, kind, v)?,
        (Prefix::V4 { addr, len }, None) => {
            filter.v4.remove(addr, len, kind);
        }
        (Prefix::V6 { addr, len }, Some(v)) => filter.v6.set(addr, len, kind, v)?,
        (Prefix::V6 { addr, len }, None) => {
            filter.v6.remove(addr, len, kind)?;
        }
    }
    Ok(())
}

impl State {
    /// Runs a store mutation, applies its changes to the tables, persists it, or undoes
    /// it all: the store and the tables never disagree.
    fn mutate(
        &mut self,
        op: impl FnOnce(&mut Store) -> Result<(Vec<Change>, Undo), store::StoreError>,
        persist: impl FnOnce(&mut Store) -> Result<(), store::StoreError>,
    ) -> Result<Vec<Change>, OpError> {
        let (mut changes, undo) = op(&mut self.store)?;
        // Shortest prefixes first: the v4 table then writes each address range once.
        changes.sort_unstable_by_key(|c| c.prefix.prefix_len());
        if let Err(e) = apply(&mut self.filter, &changes) {
            self.store.rollback(undo);
            return Err(e);
        }
        if let Err(e) = persist(&mut self.store) {
            let reverse: Vec<Change> = changes
                .iter()
                .rev()
                .map(|c| Change {
                    old: c.verdict,
                    verdict: c.old,
                    ..*c
                })
                .collect();
            let _ = apply(&mut self.filter, &reverse);
            self.store.rollback(undo);
            return Err(OpError::internal(format!(
                "not saved, nothing applied: {e}"
            )));
        }
        Ok(changes)
    }

    fn runtime_config(&mut self) -> Result<(), FilterError> {
        let s = &self.settings;
        let mut c = self.filter.config();
        c.flags &= !(FLAG_RATELIMIT | FLAG_FIRST_SEEN);
        if let Some((cost, cap)) = s.ratelimit {
            c.flags |= FLAG_RATELIMIT;
            c.rl_cost_ns = cost;
            c.rl_cap_ns = cap;
        }
        c.set_events_per_sec(s.events_per_second);
        self.filter.set_config(c)?;
        let ports = s.ports.clone();
        self.filter.set_ports(&ports)
    }

    /// Puts the config's static lists into the store (replacing what an older config had).
    fn load_config_lists(&mut self) -> Result<usize, OpError> {
        let at = store::now();
        let wanted: Vec<String> = self.settings.lists.iter().map(|l| l.name.clone()).collect();
        let stale: Vec<String> = self
            .store
            .lists()
            .iter()
            .filter(|(n, l)| l.origin == Origin::Config && !wanted.contains(n))
            .map(|(n, _)| n.clone())
            .collect();
        let mut n = 0;
        for name in stale {
            n += self.mutate(|s| Ok(s.drop_list(&name)), |_| Ok(()))?.len();
        }
        for spec in self.settings.lists.clone() {
            let entries = spec
                .prefixes
                .iter()
                .map(|(p, reason)| {
                    (
                        *p,
                        Entry {
                            action: spec.action,
                            reason: reason.as_deref().map(Into::into),
                            created: at,
                            expires: None,
                        },
                    )
                })
                .collect();
            n += self
                .mutate(
                    |s| s.replace(&spec.name, spec.kind, Origin::Config, entries),
                    |_| Ok(()),
                )?
                .len();
        }
        Ok(n)
    }
}

impl Daemon {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not wedge the control plane.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or updates entries; returns how many table entries changed.
    pub fn add(&self, req: AddRequest, by: &str) -> Result<usize, OpError> {
        let AddRequest {
            kind,
            list,
            prefixes,
            action: act,
            ttl,
            reason,
        } = req;
        let list = list.as_str();
        if prefixes.is_empty() {
            return Err(OpError::bad("no prefix given"));
        }
        let at = store::now();
        let reason: Option<Arc<str>> = reason.map(Into::into);
        let entries: Vec<(Prefix, Entry)> = prefixes
            .iter()
            .map(|p| {
                (
                    *p,
                    Entry {
                        action: act,
                        reason: reason.clone(),
                        created: at,
                        expires: ttl.map(|t| at + t),
                    },
                )
            })
            .collect();
        let mut st = self.lock();
        // A list created by `add` is a CLI list whatever its name; an existing one keeps
        // its origin.
        let origin = Origin::Cli;
        let changes = st.mutate(
            |s| s.set(list, kind, origin, entries),
            |s| s.commit_set(list, &prefixes),
        )?;
        for p in &prefixes {
            info!(
                prefix = %p,
                kind = store::kind_name(kind),
                action = action::NAMES[act as usize],
                list,
                by,
                reason = reason.as_deref().unwrap_or(""),
                ttl_secs = ttl.unwrap_or(0),
                "entry set"
            );
        }
        drop(st);
        if ttl.is_some() {
            self.expiry_wake.notify_one();
        }
        Ok(changes.len())
    }

    /// Deletes prefixes from `list`, or from every CLI and imported list of `kind`.
    pub fn delete(
        &self,
        kind: Kind,
        list: Option<&str>,
        prefixes: Vec<Prefix>,
        by: &str,
    ) -> Result<Vec<(String, usize)>, OpError> {
        let mut st = self.lock();
        let names: Vec<String> = match list {
            Some(l) => vec![l.to_owned()],
            None => st
                .store
                .lists()
                .iter()
                .filter(|(_, l)| l.kind == kind && l.origin != Origin::Config)
                .filter(|(_, l)| prefixes.iter().any(|p| l.entries.contains_key(p)))
                .map(|(n, _)| n.clone())
                .collect(),
        };
        let mut out = Vec::new();
        for name in names {
            let mut removed = 0;
            st.mutate(
                |s| {
                    let (c, u, n) = s.remove(&name, &prefixes)?;
                    removed = n;
                    Ok((c, u))
                },
                |s| s.commit_remove(&name, &prefixes),
            )?;
            out.push((name, removed));
        }
        for p in &prefixes {
            info!(prefix = %p, kind = store::kind_name(kind), by, "entry deleted");
        }
        Ok(out)
    }

    /// Imports a parsed list into `list`, adding to it or replacing it whole.
    pub fn import(
        &self,
        list: &str,
        act: u8,
        entries: Vec<(Prefix, Option<String>)>,
        replace: bool,
    ) -> Result<usize, OpError> {
        let at = store::now();
        let n = entries.len();
        let mut st = self.lock();
        let started = Instant::now();
        let entries: Vec<(Prefix, Entry)> = entries
            .into_iter()
            .map(|(p, r)| {
                let e = Entry {
                    action: act,
                    reason: r.map(Into::into),
                    created: at,
                    expires: None,
                };
                (p, e)
            })
            .collect();
        let changes = if replace {
            let map = entries.into_iter().collect();
            st.mutate(
                |s| s.replace(list, Kind::Block, Origin::Import, map),
                |s| s.commit_list(list),
            )?
        } else {
            st.mutate(
                |s| s.set(list, Kind::Block, Origin::Import, entries),
                |s| s.commit_list(list),
            )?
        };
        info!(
            list,
            entries = n,
            table_changes = changes.len(),
            replace,
            action = action::NAMES[act as usize],
            elapsed_ms = started.elapsed().as_millis() as u64,
            "list imported"
        );
        Ok(changes.len())
    }

    /// Re-reads the config file; a bad one is refused and the old one stays in force.
    pub fn reload(&self) -> Result<usize, OpError> {
        let path = self.lock().config_path.clone();
        let new = Settings::load(&path).map_err(|e| OpError {
            status: 422,
            message: format!("config refused, the previous one stays in force:\n{e}"),
        })?;
        let mut st = self.lock();
        let old = std::mem::replace(&mut st.settings, new);
        if let Err(e) = st.runtime_config() {
            st.settings = old;
            let _ = st.runtime_config();
            return Err(OpError::internal(format!("reload failed: {e}")));
        }
        let n = match st.load_config_lists() {
            Ok(n) => n,
            Err(e) => {
                st.settings = old;
                let _ = st.runtime_config();
                let _ = st.load_config_lists();
                return Err(e);
            }
        };
        // Interfaces added to the config get attached; removed ones detached.
        let wanted = st.settings.interfaces.clone();
        for iface in &wanted {
            if !st.attached.iter().any(|a| &a.interface == iface)
                && let Err(e) = attach_one(&mut st, iface)
            {
                error!(interface = %iface, "attach on reload failed: {e:#}");
            }
        }
        let gone: Vec<String> = st
            .attached
            .iter()
            .map(|a| a.interface.clone())
            .filter(|i| !wanted.contains(i))
            .collect();
        for iface in gone {
            let _ = detach_one(&mut st, &iface);
        }
        info!(table_changes = n, "config reloaded");
        Ok(n)
    }

    /// Detaches from `iface`, or from every interface.
    pub fn detach(&self, iface: Option<&str>) -> Result<Vec<String>, OpError> {
        let mut st = self.lock();
        let names: Vec<String> = match iface {
            Some(i) => {
                if !st.attached.iter().any(|a| a.interface == i) {
                    return Err(OpError::bad(format!("not attached to {i}")));
                }
                vec![i.to_owned()]
            }
            None => st.attached.iter().map(|a| a.interface.clone()).collect(),
        };
        for n in &names {
            detach_one(&mut st, n).map_err(|e| OpError::internal(e.to_string()))?;
        }
        Ok(names)
    }

    /// Removes entries whose TTL passed; returns when the next one is due.
    fn expire(&self) -> Option<u64> {
        let mut st = self.lock();
        let at = store::now();
        match st.store.expire(at) {
            Ok(changes) => {
                if let Err(e) = apply(&mut st.filter, &changes) {
                    error!("removing expired entries from the tables: {e}");
                }
                for c in &changes {
                    info!(prefix = %c.prefix, by = "ttl", "entry expired");
                }
            }
            Err(e) => error!("expiring entries: {e}"),
        }
        st.store.next_expiry()
    }

    /// Explains what happens to a SYN from `ip`.
    pub fn check(&self, ip: IpAddr) -> serde_json::Value {
        // ::ffff:a.b.c.d is the IPv4 address, as the program sees it.
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let st = self.lock();
        let matches = st.store.explain(ip);
        let (table, key) = match ip {
            IpAddr::V4(a) => (
                st.filter.v4.lookup(a.into()),
                prefilter_common::v4_key(a.octets()),
            ),
            IpAddr::V6(a) => {
                let mut k = a.octets();
                // Dynamic verdicts are keyed by /64 (see FLAG_V6_FULL).
                k[8..].fill(0);
                (st.filter.v6.lookup(a.into()), k)
            }
        };
        let dynamic = st.filter.dynamic(&key);
        let act = verdict::action(table);
        let list = st
            .store
            .list_name(verdict::list_id(table))
            .map(str::to_owned);
        let (xdp, why) = if act == action::ALLOW {
            (
                "pass",
                format!("allowlisted by list {}", list.as_deref().unwrap_or("?")),
            )
        } else if let Some(d) = dynamic.filter(|d| d.action != action::NONE) {
            (
                action::NAMES[d.action as usize],
                "dynamic verdict".to_owned(),
            )
        } else if act != action::NONE {
            (
                action::NAMES[act as usize],
                format!("blocked by list {}", list.as_deref().unwrap_or("?")),
            )
        } else {
            ("pass", "no entry matches".to_owned())
        };
        let xdp_action = match xdp {
            "drop" => "XDP_DROP",
            "reset" => "XDP_TX (TCP RST)",
            _ => "XDP_PASS",
        };
        let ports = st.settings.ports.clone();
        serde_json::json!({
            "ip": ip.to_string(),
            "verdict": xdp,
            "xdp_action": xdp_action,
            "explanation": why,
            "list": list,
            "judged_ports": ports,
            "matches": matches,
            "dynamic": dynamic.map(|d| serde_json::json!({
                "action": action::NAMES[d.action as usize],
                "expires_boottime_ns": d.expires_ns,
            })),
        })
    }

    /// Counts a control request for the metrics.
    pub fn count_request(&self, endpoint: &str, status: u16) {
        *self
            .lock()
            .requests
            .entry((endpoint.to_owned(), status))
            .or_default() += 1;
    }
}

fn attach_one(st: &mut State, iface: &str) -> anyhow::Result<()> {
    let pin = st.pin_dir.join(format!("link_{iface}"));
    let mode = st.settings.mode;
    let got = st
        .filter
        .attach_pinned(iface, mode, &pin)
        .with_context(|| format!("attaching to {iface}"))?;
    info!(interface = iface, mode = mode_name(got), "XDP attached");
    st.attached.push(Attachment {
        interface: iface.to_owned(),
        mode: mode_name(got),
    });
    Ok(())
}

fn detach_one(st: &mut State, iface: &str) -> std::io::Result<()> {
    let pin = st.pin_dir.join(format!("link_{iface}"));
    crate::xdp::detach_pinned(&pin)?;
    st.attached.retain(|a| a.interface != iface);
    info!(interface = iface, "XDP detached");
    Ok(())
}

/// The daemon's main: returns when SIGTERM or SIGINT arrives. The XDP program stays
/// attached (its link is pinned) so the MX is never unfiltered during a restart;
/// `prefilter detach` removes it.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let settings = Settings::load(config_path).map_err(|e| ExitError {
        code: 64,
        message: format!("{e}"),
    })?;
    let pin_root = settings.bpffs.clone();
    if crate::bpffs::ensure(&pin_root)
        .with_context(|| format!("mounting bpffs at {}", pin_root.display()))?
    {
        info!(path = %pin_root.display(), "mounted bpffs");
    }
    let pin_dir = pin_root.join("prefilter");
    std::fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let store = Store::open(&settings.state_dir)
        .with_context(|| format!("opening the store in {}", settings.state_dir.display()))?;
    let opts = Options {
        v4_long_groups: settings.limits.0,
        v6_entries: settings.limits.1,
        dynamic_entries: settings.limits.2,
        log_level: settings.log_level,
        pin_dir: Some(pin_dir.clone()),
    };
    let filter = match Filter::load(&opts) {
        Err(FilterError::AbiMismatch { found, .. }) => {
            warn!(found, "pinned maps of another version: replacing them");
            crate::xdp::remove_map_pins(&pin_dir)?;
            Filter::load(&opts)?
        }
        r => r?,
    };
    let mut st = State {
        settings,
        config_path: config_path.to_owned(),
        filter,
        store,
        attached: Vec::new(),
        pin_dir,
        started: Instant::now(),
        requests: HashMap::new(),
    };
    st.runtime_config()?;
    // Fill the fresh tables completely before any link points at this program.
    let at = store::now();
    let mut compiled = st.store.compiled(at);
    compiled.sort_unstable_by_key(|c| c.prefix.prefix_len());
    apply(&mut st.filter, &compiled).map_err(|e| anyhow::anyhow!("filling the tables: {e}"))?;
    let n = st.load_config_lists().map_err(|e| anyhow::anyhow!("{e}"))?;
    info!(
        entries = compiled.len() + n,
        adopted_maps = st.filter.adopted,
        "tables filled from the store"
    );
    for iface in st.settings.interfaces.clone() {
        attach_one(&mut st, &iface)?;
    }
    let events_ring = st.filter.take_events()?;
    let xdp_logger = if st.settings.log_level > 0 {
        st.filter.logger()
    } else {
        None
    };
    let socket = st.settings.socket.clone();
    let group = st.settings.socket_group.clone();
    let metrics_addr = st.settings.metrics;
    let (events_tx, _) = broadcast::channel(4096);
    let d = Daemon {
        state: Arc::new(Mutex::new(st)),
        events: events_tx,
        expiry_wake: Arc::new(tokio::sync::Notify::new()),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(control::serve(
        d.clone(),
        socket.clone(),
        group,
        stop_rx.clone(),
    )));
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics listen {addr}"))?;
        info!(%addr, "metrics listening");
        tasks.push(tokio::spawn(metrics::serve(
            d.clone(),
            listener,
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(events::read(
        d.clone(),
        events_ring,
        stop_rx.clone(),
    )));
    if let Some(l) = xdp_logger {
        tasks.push(tokio::spawn(events::forward_logs(l, stop_rx.clone())));
    }
    tasks.push(tokio::spawn(expiry_loop(d.clone(), stop_rx.clone())));

    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    info!("running");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match d.reload() {
                    Ok(_) => {}
                    Err(e) => error!("SIGHUP: {e}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping; the XDP filter stays attached (prefilter detach removes it)");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn expiry_loop(d: Daemon, mut stop: watch::Receiver<bool>) {
    loop {
        let next = d.expire();
        let wait = next.map_or(Duration::from_secs(3600), |t| {
            Duration::from_secs(t.saturating_sub(store::now())).max(Duration::from_millis(200))
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = d.expiry_wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// An error that maps to a specific exit status (64 = bad config, as sysexits EX_USAGE).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitError {
    pub code: i32,
    pub message: String,
}
