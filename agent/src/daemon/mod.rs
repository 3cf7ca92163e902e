//! `prefilter run`: loads and attaches the filter, keeps its tables equal to the store, and
//! serves the control socket and the metrics endpoint.

mod control;
mod escalation;
mod events;
pub mod feeds;
mod fleet;
pub mod learned;
mod metrics;
mod settings;
mod verify;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use anyhow::Context as _;
use aya::programs::XdpMode;
use prefilter_common::{action, config::FLAG_FIRST_SEEN, config::FLAG_RATELIMIT, verdict};
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tracing::{error, info, warn};

pub use self::settings::{ListSpec, Settings};
use crate::{
    policy::Kind,
    policy::prefix::Prefix,
    policy::store::{self, Change, Entries, Entry, Origin, Store, Undo},
    sources::formats::ImportEntry,
    xdp::{Filter, FilterError, KernelView, Options},
};

/// Name of the list that `block add` writes to when none is given.
pub const CLI_LIST: &str = "cli";
/// Name of the list that keeps `block add ADDR --ttl` entries of single addresses, whose
/// verdicts live in the kernel's dynamic map.
pub const CLI_TTL_LIST: &str = "cli-ttl";
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

/// The status of an update the shrink guard refused (412 Precondition Failed).
pub const SHRINK_REFUSED: u16 = 412;

impl From<store::StoreError> for OpError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::Io { .. } | store::StoreError::Corrupt { .. } => {
                Self::internal(e.to_string())
            }
            // Its own status: a feed tells the guard's refusals from its other conflicts.
            store::StoreError::Shrink(_) => Self {
                status: SHRINK_REFUSED,
                message: e.to_string(),
            },
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
    /// Accept prefixes shorter than /8 (IPv4) or /16 (IPv6): one typo there blocks all mail.
    pub force: bool,
}

/// The longest TTL accepted: ten years. Longer is a typo, and the expiry must not overflow.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

/// One attached interface.
#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub interface: String,
    /// "native", "skb", or "adopted" (the pinned link of a previous agent was reused).
    pub mode: &'static str,
}

/// What the single writer owns: the kernel tables and the settings. Only mutations (CLI
/// changes, imports, reloads, expiry; later feeds and DNSBL results) take it, one at a time,
/// so store, tables and journal always change in the same order.
pub struct State {
    pub settings: Settings,
    pub config_path: PathBuf,
    pub filter: Filter,
    pub attached: Vec<Attachment>,
    pub pin_dir: PathBuf,
    pub started: Instant,
}

/// A list as readers see it, without its entries.
#[derive(Clone, Debug)]
pub struct ListInfo {
    pub name: String,
    pub id: u16,
    pub kind: Kind,
    pub origin: Origin,
    pub entries: usize,
}

/// Fill of the XDP tables.
#[derive(Clone, Debug, Default)]
pub struct TableFill {
    pub v4_block: usize,
    pub v4_allow: usize,
    pub v4_groups_used: u32,
    pub v4_groups_capacity: u32,
    pub v6_block: usize,
    pub v6_allow: usize,
    pub v6_entries_used: u32,
    pub v6_capacity: u32,
    pub adopted: bool,
}

/// What the writer publishes after every change: `status`, metrics and events read it
/// without waiting on an import.
#[derive(Clone, Debug)]
pub struct View {
    pub config_path: PathBuf,
    pub started: Instant,
    pub attached: Vec<Attachment>,
    pub ports: Vec<u16>,
    pub lists: Vec<ListInfo>,
    pub tables: TableFill,
    /// Store entries by (origin, kind).
    pub store_entries: Vec<(Origin, Kind, usize)>,
}

impl View {
    /// The name of the list with `id`.
    pub fn list_name(&self, id: u16) -> Option<&str> {
        self.lists
            .iter()
            .find(|l| l.id == id)
            .map(|l| l.name.as_str())
    }
}

/// Shared handle.
///
/// One writer, many readers: mutations serialise on `writer`; the store sits behind a
/// read-write lock that the writer takes for writing only to swap in-memory state (never
/// while it writes files or tables of a large import); `view` and `kernel` are read with no
/// lock the writer ever holds, so a metrics scrape or the proxy never waits on an import.
#[derive(Clone)]
pub struct Daemon {
    writer: Arc<Mutex<State>>,
    store: Arc<RwLock<Store>>,
    view: Arc<ArcSwap<View>>,
    kernel: Arc<KernelView>,
    events: broadcast::Sender<events::EventJson>,
    expiry_wake: Arc<tokio::sync::Notify>,
    /// Wakes [`compact_loop`]: a change left the journal long enough to fold.
    compact_wake: Arc<tokio::sync::Notify>,
    learned: broadcast::Sender<learned::Learned>,
    /// What taught each recent learned verdict, for `check`.
    taught: Arc<Mutex<learned::Taught>>,
    /// `[dnsbl]`, when configured.
    dnsbl: Option<Arc<crate::dnsbl::Dnsbl>>,
    /// `[escalation]`, when configured.
    escalation: Option<Arc<escalation::Escalation>>,
    feeds: Arc<feeds::Feeds>,
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
/// IPv4 removals go first, then IPv4 additions, each as one batch (removals cannot fail, and
/// the table depends only on the rules it ends up with, not on their order).
fn apply(filter: &mut Filter, changes: &[Change]) -> Result<(), OpError> {
    // One pass over the changes (millions in a first load): each pass costs tens of ms.
    // Sized at once for the common case (grown by doubling, millions cost copies).
    let mut set = Vec::with_capacity(changes.len());
    let (mut removed, mut rest) = (Vec::new(), Vec::new());
    for c in changes {
        match (c.prefix, c.verdict) {
            (Prefix::V6 { .. }, _) => rest.push(c),
            (Prefix::V4 { .. }, None) => removed.push(c),
            (Prefix::V4 { .. }, Some(_)) => set.push(c),
        }
    }
    filter
        .v4
        .remove_batch(removed.iter().filter_map(|c| v4_rule(c)));
    // Then IPv4 additions and changes as one batch: each /24 computed once.
    let batch = set
        .iter()
        .filter_map(|c| v4_rule(c).zip(c.verdict))
        .map(|((addr, len, kind), v)| (addr, len, kind, v))
        .collect();
    if let Err(e) = filter.v4.set_batch(batch) {
        undo(filter, set.iter().chain(removed.iter()).copied());
        return Err(OpError {
            status: 507,
            message: format!("nothing applied: {e}"),
        });
    }
    // Removals first, so that a list replaced near the table's capacity never needs room for
    // both lists at once; then by length and address: consecutive changes then work on
    // neighbouring entries of the v6 table's ordered bookkeeping, which loads 1M random
    // prefixes in half the time.
    rest.sort_by_key(|c| match c.prefix {
        Prefix::V6 { addr, len } => (c.verdict.is_some(), len, addr),
        Prefix::V4 { .. } => (false, 0, 0),
    });
    // The HX entries of a few changes ahead are fetched while this one is applied.
    const AHEAD: usize = 4;
    for (i, c) in rest.iter().enumerate() {
        if let Some(Prefix::V6 { addr, len }) = rest.get(i + AHEAD).map(|c| c.prefix) {
            filter.v6.prefetch(addr, len);
        }
        if let Err(e) = apply_one(filter, c.prefix, c.kind, c.verdict) {
            // In reverse: the additions made go before the removals come back, so that a
            // replacement that did not fit finds room to put the old list back.
            undo(
                filter,
                rest[..i]
                    .iter()
                    .rev()
                    .chain(set.iter())
                    .chain(removed.iter())
                    .copied(),
            );
            return Err(OpError {
                status: 507,
                message: format!("nothing applied: {e}"),
            });
        }
    }
    Ok(())
}

/// Puts back the old verdicts of changes already applied (best effort: they were accepted
/// once). IPv4 rules that did not exist before are removed as one batch: undoing a big
/// import that did not fit must not take longer than the import.
fn undo<'a>(filter: &mut Filter, done: impl Iterator<Item = &'a Change>) {
    let (gone, back): (Vec<&Change>, Vec<&Change>) =
        done.partition(|c| c.old.is_none() && v4_rule(c).is_some());
    filter
        .v4
        .remove_batch(gone.iter().filter_map(|c| v4_rule(c)));
    for c in back {
        let _ = apply_one(filter, c.prefix, c.kind, c.old);
    }
}

/// The IPv4 rule a change is about, as the v4 table names it.
fn v4_rule(c: &Change) -> Option<(u32, u8, Kind)> {
    match c.prefix {
        Prefix::V4 { addr, len } => Some((addr, len, c.kind)),
        Prefix::V6 { .. } => None,
    }
}

/// An address as the program sees it: `::ffff:a.b.c.d` is the IPv4 address.
fn as_seen(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key per-source state uses, as the program's dynamic map: an IPv4 address, or an
/// IPv6 /64 (one host's usual share).
fn source_key(ip: IpAddr) -> IpAddr {
    match as_seen(ip) {
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        v4 => v4,
    }
}

/// A dynamic entry that still applies: the kernel ignores one whose expiry passed (it stays
/// in the LRU map until evicted), so readers must too.
fn live(d: prefilter_common::dynamic::DynVerdict) -> Option<prefilter_common::dynamic::DynVerdict> {
    (d.action != action::NONE && (d.expires_ns == 0 || d.expires_ns > learned::boottime_ns()))
        .then_some(d)
}

/// Takes back changes already applied to the tables (best effort: they were accepted once).
fn revert(filter: &mut Filter, changes: &[Change]) {
    let reverse: Vec<Change> = changes
        .iter()
        .rev()
        .map(|c| Change {
            old: c.verdict,
            verdict: c.old,
            ..*c
        })
        .collect();
    let _ = apply(filter, &reverse);
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
    /// it all: the store and the tables never disagree. (A patch does the same in
    /// [`Daemon::patch`], with the store and the tables on two threads.)
    fn mutate(
        &mut self,
        store: &RwLock<Store>,
        op: impl FnOnce(&mut Store) -> Result<(Vec<Change>, Undo), store::StoreError>,
        persist: impl FnOnce(&mut Store) -> Result<(), store::StoreError>,
    ) -> Result<Vec<Change>, OpError> {
        let (mut changes, undo) = op(&mut write(store))?;
        // Shortest prefixes first: the v4 table then writes each address range once.
        changes.sort_unstable_by_key(|c| c.prefix.prefix_len());
        if let Err(e) = apply(&mut self.filter, &changes) {
            write(store).rollback(undo);
            return Err(e);
        }
        let persisted = persist(&mut write(store));
        if let Err(e) = persisted {
            revert(&mut self.filter, &changes);
            write(store).rollback(undo);
            return Err(OpError::internal(format!(
                "not saved, nothing applied: {e}"
            )));
        }
        Ok(changes)
    }

    /// The summary readers see, from the writer's state and the store.
    fn view(&self, store: &Store) -> View {
        let (g_used, g_cap) = self.filter.v4.groups_used();
        View {
            config_path: self.config_path.clone(),
            started: self.started,
            attached: self.attached.clone(),
            ports: self.settings.ports.clone(),
            lists: store
                .lists()
                .iter()
                .map(|(n, l)| ListInfo {
                    name: n.clone(),
                    id: l.id,
                    kind: l.kind,
                    origin: l.origin,
                    entries: l.entries.len(),
                })
                .collect(),
            store_entries: store.entries_by_origin(),
            tables: TableFill {
                v4_block: self.filter.v4.len(Kind::Block),
                v4_allow: self.filter.v4.len(Kind::Allow),
                v4_groups_used: g_used,
                v4_groups_capacity: g_cap,
                v6_block: self.filter.v6.len(Kind::Block),
                v6_allow: self.filter.v6.len(Kind::Allow),
                v6_entries_used: self.filter.v6.fullest() as u32,
                v6_capacity: self.settings.limits.1,
                adopted: self.filter.adopted,
            },
        }
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
        // First-seen events start inline DNSBL lookups; nothing else needs them.
        if s.dnsbl.as_ref().is_some_and(|d| d.inline) {
            c.flags |= FLAG_FIRST_SEEN;
        }
        c.set_events_per_sec(s.events_per_second);
        self.filter.set_config(c)?;
        let ports = s.ports.clone();
        self.filter.set_ports(&ports)
    }

    /// Puts the config's static lists into the store (replacing what an older config had).
    /// An entry keeps its `created` time while the config keeps it; a new one gets the config
    /// file's modification time, so a restart does not make every config entry look new.
    fn load_config_lists(&mut self, store: &RwLock<Store>) -> Result<usize, OpError> {
        let at = std::fs::metadata(&self.config_path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(store::now, |d| d.as_secs());
        let wanted: Vec<String> = self.settings.lists.iter().map(|l| l.name.clone()).collect();
        // Checked before anything changes: a config list may not take over a list that
        // the CLI, an import or a feed filled (its entries would be replaced now and come
        // back at the next start).
        for name in &wanted {
            if let Some(l) = read(store).lists().get(name)
                && l.origin != Origin::Config
            {
                return Err(OpError::conflict(format!(
                    "config list {name:?}: a list of that name already holds {} entries \
                     from {}; nothing changed: choose another name",
                    l.entries.len(),
                    metrics::origin_name(l.origin)
                )));
            }
        }
        // Nor may a feed: its next fetch would replace what the CLI or an import put there.
        for feed in &self.settings.feeds {
            if let Some(l) = read(store).lists().get(&feed.name)
                && l.origin != Origin::Feed
                && l.origin != Origin::Config
            {
                return Err(OpError::conflict(format!(
                    "feed {:?}: a list of that name already holds {} entries from {}; \
                     nothing changed: choose another name",
                    feed.name,
                    l.entries.len(),
                    metrics::origin_name(l.origin)
                )));
            }
        }
        let stale: Vec<String> = read(store)
            .lists()
            .iter()
            .filter(|(n, l)| l.origin == Origin::Config && !wanted.contains(n))
            .map(|(n, _)| n.clone())
            .collect();
        let mut n = 0;
        for name in stale {
            n += self
                .mutate(store, |s| Ok(s.drop_list(&name)), |_| Ok(()))?
                .len();
        }
        for spec in self.settings.lists.clone() {
            let entries = {
                let st = read(store);
                let old = st.lists().get(&spec.name);
                spec.prefixes
                    .iter()
                    .map(|(p, reason)| {
                        let reason: Option<Arc<str>> = reason.as_deref().map(Into::into);
                        let created = old
                            .and_then(|l| l.entries.get(p))
                            .filter(|e| e.action == spec.action && e.reason == reason)
                            .map_or(at, |e| e.created);
                        (
                            *p,
                            Entry {
                                action: spec.action,
                                reason,
                                created,
                                expires: None,
                            },
                        )
                    })
                    .collect()
            };
            n += self
                .mutate(
                    store,
                    |s| s.replace(&spec.name, spec.kind, Origin::Config, entries),
                    |_| Ok(()),
                )?
                .len();
        }
        Ok(n)
    }
}

fn read(store: &RwLock<Store>) -> RwLockReadGuard<'_, Store> {
    // A panic in a reader must not wedge the control plane: the store is never left half
    // changed by one (mutations are swaps or undone as a whole).
    store.read().unwrap_or_else(|p| p.into_inner())
}

fn write(store: &RwLock<Store>) -> RwLockWriteGuard<'_, Store> {
    store.write().unwrap_or_else(|p| p.into_inner())
}

/// Gives freed heap back to the system after a large request (a million-entry import or
/// listing): glibc keeps it otherwise, and an MX should not carry a peak for days.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Daemon {
    /// The writer's state. Held only by mutations; readers use [`Self::store`],
    /// [`Self::view`] and [`Self::kernel`].
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not wedge the control plane.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store, for reading (check, list, verify). Never held across I/O.
    pub fn store(&self) -> RwLockReadGuard<'_, Store> {
        read(&self.store)
    }

    /// The latest published summary.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The DNSBL engine when `[dnsbl]` is configured. `score(ip)` also puts a listed
    /// address's `repeat_action` into the kernel's dynamic map.
    pub fn dnsbl(&self) -> Option<Arc<crate::dnsbl::Dnsbl>> {
        self.dnsbl.clone()
    }

    /// The kernel maps, read without the writer.
    pub fn kernel(&self) -> &KernelView {
        &self.kernel
    }

    /// Publishes a new view; called by the writer after every change.
    fn publish(&self, st: &State) {
        let store = self.store();
        let v = st.view(&store);
        self.view.store(Arc::new(v));
        if store.compact_due() {
            self.compact_wake.notify_one();
        }
    }

    /// Folds the journal into the list files if it is long enough. Holds the writer, so no
    /// change lands between writing the files and emptying the journal (it would be lost
    /// from both), but only the store's read lock: checks and views go on meanwhile.
    fn compact_if_due(&self) {
        let _writer = self.lock();
        if !self.store().compact_due() {
            return;
        }
        let t = Instant::now();
        // Bound first: a guard in the match scrutinee would live through the arms.
        let folded = self.store().fold();
        match folded {
            Ok(()) => {
                write(&self.store).folded();
                info!(
                    took_ms = t.elapsed().as_millis() as u64,
                    "journal folded into the list files"
                );
            }
            Err(e) => {
                warn!(error = %e, "compacting the journal (retried after the next change)");
            }
        }
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
            force,
        } = req;
        let list = list.as_str();
        if prefixes.is_empty() {
            return Err(OpError::bad("no prefix given"));
        }
        if let Some(t) = ttl
            && (t == 0 || t > MAX_TTL_SECS)
        {
            return Err(OpError::bad(format!(
                "nothing changed: ttl {t}s is out of range (1s to {MAX_TTL_SECS}s, ten years)"
            )));
        }
        if !force {
            let broad: Vec<String> = prefixes
                .iter()
                .filter(|p| p.too_broad())
                .map(|p| p.to_string())
                .collect();
            if !broad.is_empty() {
                return Err(OpError::bad(format!(
                    "nothing changed: {} covers a large part of the address space \
                     (shorter than /8 for IPv4, /16 for IPv6); add --force if you mean it",
                    broad.join(", ")
                )));
            }
        }
        // A single address (IPv6: a /64) with a TTL in the default list goes to the kernel's
        // dynamic map, so it ages out even while the agent is down, and can be reported.
        if let Some(t) = ttl
            && goes_dynamic(kind, list, ttl, &prefixes)
        {
            return self.add_dynamic(prefixes, act, t, reason, by);
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
            &self.store,
            |s| s.set(list, kind, origin, entries),
            |s| s.commit_set(list, &prefixes),
        )?;
        self.publish(&st);
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

    /// `block add ADDR --ttl`: the store keeps the entries (list [`CLI_TTL_LIST`]) for
    /// listings, `check` and restarts; the kernel's dynamic map enforces them.
    fn add_dynamic(
        &self,
        prefixes: Vec<Prefix>,
        act: u8,
        ttl: u64,
        reason: Option<String>,
        by: &str,
    ) -> Result<usize, OpError> {
        let action = crate::policy::Action::from_code(act)
            .ok_or_else(|| OpError::bad("a dynamic verdict needs a block action"))?;
        let at = store::now();
        let shared: Option<Arc<str>> = reason.as_deref().map(Into::into);
        let entries: Vec<(Prefix, Entry)> = prefixes
            .iter()
            .map(|p| {
                (
                    *p,
                    Entry {
                        action: act,
                        reason: shared.clone(),
                        created: at,
                        expires: Some(at + ttl),
                    },
                )
            })
            .collect();
        let mut st = self.lock();
        st.mutate(
            &self.store,
            |s| s.set(CLI_TTL_LIST, Kind::Block, Origin::Dynamic, entries),
            |s| s.commit_set(CLI_TTL_LIST, &prefixes),
        )?;
        self.publish(&st);
        drop(st);
        // The store counts whole seconds from `at` (rounded down); the kernel's entry must
        // end at that same instant, or `check` and XDP would keep dropping for up to a
        // second after the store's sweeper removed the entry.
        let remaining = Duration::from_secs(at + ttl).saturating_sub(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        for p in &prefixes {
            self.learn(learned::Learned {
                ip: p.first(),
                action,
                ttl: remaining,
                source: "cli".to_owned(),
                reason: reason
                    .clone()
                    .unwrap_or_else(|| format!("block add by {by}")),
            })?;
            info!(prefix = %p, action = action.name(), list = CLI_TTL_LIST, by, ttl_secs = ttl, "dynamic verdict set");
        }
        self.expiry_wake.notify_one();
        Ok(prefixes.len())
    }

    /// Deletes prefixes from `list`, or from every CLI and imported list of `kind`; with
    /// no list named and nothing listed, lifts the addresses' learned verdicts. Returns the
    /// entries removed per list and the learned verdicts lifted.
    pub fn delete(
        &self,
        kind: Kind,
        list: Option<&str>,
        prefixes: Vec<Prefix>,
        by: &str,
    ) -> Result<(Vec<(String, usize)>, usize), OpError> {
        let mut st = self.lock();
        let names: Vec<String> = match list {
            Some(l) => vec![l.to_owned()],
            None => self
                .store()
                .lists()
                .iter()
                .filter(|(_, l)| {
                    l.kind == kind
                        && matches!(l.origin, Origin::Cli | Origin::Import | Origin::Dynamic)
                })
                .filter(|(_, l)| prefixes.iter().any(|p| l.entries.contains_key(p)))
                .map(|(n, _)| n.clone())
                .collect(),
        };
        // For the audit log: only what was there.
        let present: Vec<Prefix> = {
            let store = self.store();
            prefixes
                .iter()
                .filter(|p| {
                    names.iter().any(|n| {
                        store
                            .lists()
                            .get(n)
                            .is_some_and(|l| l.entries.contains_key(p))
                    })
                })
                .copied()
                .collect()
        };
        let mut out = Vec::new();
        for name in names {
            let mut removed = 0;
            st.mutate(
                &self.store,
                |s| {
                    let (c, u, n) = s.remove(&name, &prefixes)?;
                    removed = n;
                    Ok((c, u))
                },
                |s| s.commit_remove(&name, &prefixes),
            )?;
            if removed > 0
                && self
                    .store()
                    .lists()
                    .get(&name)
                    .is_some_and(|l| l.origin == Origin::Dynamic)
            {
                for p in &prefixes {
                    let (_, key) = self.kernel().lookup(as_seen(p.first()));
                    if let Err(e) = st.filter.remove_dynamic(&key) {
                        warn!(prefix = %p, error = %e, "removing a dynamic verdict");
                    }
                }
            }
            out.push((name, removed));
        }
        // A verdict learned at run time (DNSBL, pregreet, escalation, another gateway) has
        // no list entry: `block del ADDR` is where an admin looks to lift it.
        let mut lifted = 0;
        if kind == Kind::Block && list.is_none() && out.iter().all(|(_, n)| *n == 0) {
            for p in prefixes.iter().filter(|p| p.is_host_or_v6_64()) {
                let (_, key) = self.kernel().lookup(as_seen(p.first()));
                if self.kernel().dynamic(&key).and_then(live).is_some() {
                    match st.filter.remove_dynamic(&key) {
                        Ok(_) => {
                            lifted += 1;
                            info!(prefix = %p, by, "dynamic verdict lifted");
                        }
                        Err(e) => warn!(prefix = %p, error = %e, "removing a dynamic verdict"),
                    }
                }
            }
        }
        self.publish(&st);
        for p in &present {
            info!(prefix = %p, kind = store::kind_name(kind), by, "entry deleted");
        }
        Ok((out, lifted))
    }

    /// Imports a parsed list into `list`, adding to it or replacing it whole.
    pub fn import(
        &self,
        list: &str,
        act: u8,
        entries: Vec<ImportEntry>,
        replace: bool,
        force: bool,
    ) -> Result<usize, OpError> {
        let at = store::now();
        let n = entries.len();
        let started = Instant::now();
        // Built before taking the writer: the compact form, reasons interned.
        let mut new = Entries::default();
        new.insert_many(
            entries.iter().map(|e| (e.prefix, e.reason.as_deref())),
            act,
            at,
        );
        drop(entries);
        let built = started.elapsed();
        let mut st = self.lock();
        let changes = if replace {
            let guard = (!force).then_some(st.settings.max_shrink);
            self.replace_list(&mut st, list, Kind::Block, Origin::Import, new, guard)
        } else {
            // Added to a copy of the list and planned as a replacement: readers never wait
            // on it, and only the entries that changed are persisted. A new or empty list
            // takes the parsed entries as they are: copying millions costs seconds.
            let current = self
                .store()
                .lists()
                .get(list)
                .filter(|l| !l.entries.is_empty())
                .map(|l| l.entries.clone());
            let merged = match current {
                Some(mut merged) => {
                    merged.extend(new.iter());
                    merged
                }
                None => new,
            };
            self.replace_list(&mut st, list, Kind::Block, Origin::Import, merged, None)
        };
        self.publish(&st);
        drop(st);
        // Whatever happened, a million parsed entries were freed just now.
        trim_heap();
        let changes = changes?;
        info!(
            list,
            entries = n,
            table_changes = changes.len(),
            replace,
            action = action::NAMES[act as usize],
            built_ms = built.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "list imported"
        );
        Ok(changes.len())
    }

    /// Applies a difference to imported list `list`: `removes` taken out, then `adds` set
    /// with action `act`. Costs what it touches, so a 1% update of a million-entry list takes
    /// tens of milliseconds, where a replacement plans against the whole list. `force`: skip the
    /// shrink guard, which a patch made against a truncated download would trip.
    /// Returns (table changes, entries removed).
    pub fn patch(
        &self,
        list: &str,
        act: u8,
        removes: Vec<Prefix>,
        adds: Vec<(Prefix, Option<String>)>,
        force: bool,
    ) -> Result<(usize, usize), OpError> {
        let started = Instant::now();
        let at = store::now();
        let mut st = self.lock();
        let guard = (!force).then_some(st.settings.max_shrink);
        let added = adds.len();
        let entries: Vec<(Prefix, Entry)> = adds
            .into_iter()
            .map(|(p, r)| {
                (
                    p,
                    Entry {
                        action: act,
                        reason: r.map(Into::into),
                        created: at,
                        expires: None,
                    },
                )
            })
            .collect();
        // The store finds the changes on one thread and hands them over in chunks, to this
        // one, which writes them to the tables, and their journal records to a third, which
        // frames them. For a 1 % delta of a million-entry list the three parts take about
        // as long each; run one after another they took twice as long.
        let filter = &mut st.filter;
        let store = &self.store;
        let (changes, removed, [store_in, tables_in, persist_in]) = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<Change>>();
            let (tx_recs, rx_recs) = std::sync::mpsc::channel::<store::Staged>();
            let framing = scope.spawn(move || {
                let mut framed = store::Framed::default();
                for staged in rx_recs {
                    framed.append(staged.frame());
                }
                framed
            });
            let finding = scope.spawn(move || {
                let t = Instant::now();
                // Each receiver reads until this side hangs up: a send cannot fail.
                let mut emit = |c: Vec<Change>, r: store::Staged| {
                    drop(tx_recs.send(r));
                    drop(tx.send(c));
                };
                let stored = write(store).patch_streamed(
                    list,
                    Kind::Block,
                    Origin::Import,
                    &removes,
                    entries,
                    guard,
                    &mut emit,
                );
                let store_in = t.elapsed();
                stored.map(|(undo, removed, rest)| {
                    drop(tx_recs.send(rest));
                    (undo, removed, store_in)
                })
            });
            let (mut applied, mut failed, mut tables_in) = (Vec::new(), None, Duration::ZERO);
            for mut chunk in rx {
                if failed.is_some() {
                    continue;
                }
                let t = Instant::now();
                // Shortest prefixes first: the v4 table then writes each range once.
                chunk.sort_unstable_by_key(|c| c.prefix.prefix_len());
                match apply(filter, &chunk) {
                    Ok(()) => applied.extend(chunk),
                    // The chunks before are undone here, the store's part below.
                    Err(e) => {
                        warn!(
                            list,
                            undone = applied.len(),
                            error = %e.message,
                            "patch refused by the tables part-way: undoing what was written"
                        );
                        revert(filter, &applied);
                        applied.clear();
                        failed = Some(e);
                    }
                }
                tables_in += t.elapsed();
            }
            let stored = finding
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let (undo, removed, store_in) = match (stored, failed) {
                (Ok(stored), None) => stored,
                (Ok((undo, ..)), Some(e)) => {
                    write(store).rollback(undo);
                    return Err(e);
                }
                // The store undid its own part. A refused guard is checked before any
                // change reaches the tables; this is for any later refusal.
                (Err(e), _) => {
                    revert(filter, &applied);
                    return Err(e.into());
                }
            };
            let t = Instant::now();
            let framed = framing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if let Err(e) = write(store).commit_patch(framed) {
                revert(filter, &applied);
                write(store).rollback(undo);
                return Err(OpError::internal(format!(
                    "not saved, nothing applied: {e}"
                )));
            }
            Ok((applied, removed, [store_in, tables_in, t.elapsed()]))
        })?;
        self.publish(&st);
        drop(st);
        info!(
            list,
            added,
            removed,
            table_changes = changes.len(),
            action = action::NAMES[act as usize],
            store_ms = store_in.as_millis() as u64,
            tables_ms = tables_in.as_millis() as u64,
            persist_ms = persist_in.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "list patched"
        );
        Ok((changes.len(), removed))
    }

    /// Replaces a whole list: planned under the store's read lock, tables and list file (or
    /// journal records of a small delta) written holding no store write lock, swapped in
    /// under a brief write lock. Readers keep answering from the old content until the swap.
    /// `max_shrink`: refuse, before anything changes, a replacement that empties the list or
    /// removes more than that share of it.
    fn replace_list(
        &self,
        st: &mut State,
        list: &str,
        kind: Kind,
        origin: Origin,
        entries: Entries,
        max_shrink: Option<f64>,
    ) -> Result<Vec<Change>, OpError> {
        let t0 = Instant::now();
        let mut planned = self.store().plan_replace(list, kind, origin, entries)?;
        let planned_in = t0.elapsed();
        if let Some(max) = max_shrink
            && planned.old_len > 0
        {
            crate::policy::guard::check_replace(
                list,
                planned.old_len,
                planned.len(),
                planned.removed,
                max,
            )
            .map_err(|e| OpError {
                status: SHRINK_REFUSED,
                message: e.to_string(),
            })?;
        }
        let changes = std::mem::take(&mut planned.changes);
        let t1 = Instant::now();
        // A rewritten list file (seconds for millions of entries) is written on the other
        // core while the tables are, and put in place only once both succeeded.
        let (applied, tables_in, staged) = std::thread::scope(|scope| {
            let planned = &planned;
            let staging = scope.spawn(move || {
                let t = Instant::now();
                let staged = self.store().stage_planned(planned);
                (staged, t.elapsed())
            });
            let applied = apply(&mut st.filter, &changes);
            let tables_in = t1.elapsed();
            let staged = staging
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (applied, tables_in, staged)
        });
        // An error drops the staged file, which removes it.
        applied?;
        let (staged, staged_in) = staged;
        let t2 = Instant::now();
        let written = match staged {
            Some(file) => file.and_then(store::commit_list),
            None => self.store().write_planned(&mut planned),
        };
        if let Err(e) = written {
            revert(&mut st.filter, &changes);
            return Err(OpError::internal(format!(
                "not saved, nothing applied: {e}"
            )));
        }
        let persisted_in = t2.elapsed();
        let delta = planned.journal_len();
        let t3 = Instant::now();
        let installed = write(&self.store).install(planned);
        let swapped_in = t3.elapsed();
        let undo = match installed {
            Ok(undo) => undo,
            Err(e) => {
                revert(&mut st.filter, &changes);
                return Err(OpError::internal(format!(
                    "not saved, nothing applied: {e}"
                )));
            }
        };
        // The old entries are freed here, outside the lock.
        let t4 = Instant::now();
        drop(undo);
        let freed_in = t4.elapsed();
        info!(
            list,
            plan_ms = planned_in.as_millis() as u64,
            tables_ms = tables_in.as_millis() as u64,
            persist_ms = persisted_in.as_millis() as u64,
            file_ms = staged_in.as_millis() as u64,
            journaled = delta.unwrap_or(0),
            file_rewritten = delta.is_none(),
            swap_us = swapped_in.as_micros() as u64,
            free_ms = freed_in.as_millis() as u64,
            "list replaced"
        );
        Ok(changes)
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
        if old.dnsbl != st.settings.dnsbl || old.escalation != st.settings.escalation {
            warn!(
                "[dnsbl] or [escalation] changed: they keep their settings until the next restart"
            );
        }
        if (
            &old.state_dir,
            &old.socket,
            &old.socket_group,
            &old.bpffs,
            &old.metrics,
        ) != (
            &st.settings.state_dir,
            &st.settings.socket,
            &st.settings.socket_group,
            &st.settings.bpffs,
            &st.settings.metrics,
        ) {
            warn!(
                "[daemon] or [metrics] changed (state_dir, socket, socket_group, bpffs, \
                 listen): they take effect at the next restart"
            );
        }
        if old.proxy != st.settings.proxy {
            // Listeners and sessions are not moved under a running proxy.
            warn!("[proxy] changed: the running proxy keeps its settings until the next restart");
        }
        if let Err(e) = st.runtime_config() {
            st.settings = old;
            let _ = st.runtime_config();
            return Err(OpError::internal(format!("reload failed: {e}")));
        }
        let n = match st.load_config_lists(&self.store) {
            Ok(n) => n,
            Err(e) => {
                st.settings = old;
                let _ = st.runtime_config();
                let _ = st.load_config_lists(&self.store);
                self.publish(&st);
                return Err(e);
            }
        };
        // Interfaces added to the config get attached; removed ones detached. One that
        // cannot be attached refuses the reload: what was attached for it is detached and
        // the previous config restored, as `run` would refuse it.
        let wanted = st.settings.interfaces.clone();
        let mut newly: Vec<String> = Vec::new();
        for iface in &wanted {
            if st.attached.iter().any(|a| &a.interface == iface) {
                continue;
            }
            if let Err(e) = attach_one(&mut st, iface) {
                for n in &newly {
                    let _ = detach_one(&mut st, n);
                }
                st.settings = old;
                let _ = st.runtime_config();
                let _ = st.load_config_lists(&self.store);
                self.publish(&st);
                return Err(OpError {
                    status: 422,
                    message: format!(
                        "config refused, the previous one stays in force: attaching \
                         {iface}: {e:#}"
                    ),
                });
            }
            newly.push(iface.clone());
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
        // A feed taken out of the config stops blocking now: removing it is how an admin
        // undoes a bad feed, and it can neither be synced nor edited any more.
        let mut n = n;
        let removed: Vec<String> = old
            .feeds
            .iter()
            .filter(|f| !st.settings.feeds.iter().any(|g| g.name == f.name))
            .map(|f| f.name.clone())
            .filter(|name| {
                self.store()
                    .lists()
                    .get(name)
                    .is_some_and(|l| l.origin == Origin::Feed && !l.entries.is_empty())
            })
            .collect();
        for name in removed {
            n += feeds::empty_removed(self, &mut st, &name);
        }
        self.publish(&st);
        self.feeds.set_config(st.settings.feeds.clone());
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
            let r = detach_one(&mut st, n);
            self.publish(&st);
            r.map_err(|e| OpError::internal(e.to_string()))?;
        }
        Ok(names)
    }

    /// Removes entries whose TTL passed; returns when the next one is due.
    fn expire(&self) -> Option<u64> {
        let mut st = self.lock();
        let at = store::now();
        let expired = write(&self.store).expire(at);
        match expired {
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
        self.publish(&st);
        drop(st);
        self.store().next_expiry()
    }

    /// What the proxy does with a client: the kernel's table and dynamic verdicts and the
    /// published View, the same answer as [`Self::check`] without the store's explanation.
    pub fn proxy_verdict(&self, ip: IpAddr) -> crate::proxy::Verdict {
        use crate::proxy::{Decision, Verdict};
        let ip = as_seen(ip);
        let kernel = self.kernel();
        let (table, key) = kernel.lookup(ip);
        let act = verdict::action(table);
        let list = || {
            self.view()
                .list_name(verdict::list_id(table))
                .map(str::to_owned)
        };
        let decide = |a: u8| match a {
            action::TEMPFAIL => Decision::Tempfail,
            action::OBSERVE => Decision::Observe,
            // drop/reset that reached a socket: the program is not on that interface.
            action::REJECT | action::DROP | action::RESET => Decision::Reject,
            _ => Decision::Pass,
        };
        if act == action::ALLOW {
            return Verdict {
                decision: Decision::Allow,
                list: list(),
            };
        }
        // As the program decides: the stronger of the learned and the listed verdict.
        if let Some(d) = kernel.dynamic(&key).and_then(live)
            && action::severity(d.action) >= action::severity(act)
        {
            return Verdict {
                decision: decide(d.action),
                list: Some("dynamic".to_owned()),
            };
        }
        if act != action::NONE {
            return Verdict {
                decision: decide(act),
                list: list(),
            };
        }
        Verdict {
            decision: Decision::Pass,
            list: None,
        }
    }

    /// Explains what happens to a SYN from `ip`.
    pub fn check(&self, ip: IpAddr) -> crate::api::Check {
        use crate::api;
        let ip = as_seen(ip);
        // Readers only: a check answers while an import runs.
        let matches = self.store().explain(ip);
        let kernel = self.kernel();
        let (table, key) = kernel.lookup(ip);
        let act = verdict::action(table);
        let dynamic = kernel.dynamic(&key).and_then(live);
        // The one the program applies: the stronger of the learned and the listed verdict.
        let applied = dynamic.filter(|d| action::severity(d.action) >= action::severity(act));
        let view = self.view();
        let list = view.list_name(verdict::list_id(table)).map(str::to_owned);
        let (xdp, why) = if act == action::ALLOW {
            (
                "pass",
                format!("allowlisted by list {}", list.as_deref().unwrap_or("?")),
            )
        } else if let Some(d) = applied {
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
        let xdp_action = xdp
            .parse::<crate::policy::Action>()
            .map_or("XDP_PASS", crate::policy::Action::xdp_action);
        api::Check {
            ip: ip.to_string(),
            verdict: xdp.to_owned(),
            xdp_action: xdp_action.to_owned(),
            explanation: why,
            list,
            judged_ports: view.ports.clone(),
            matches: matches
                .into_iter()
                .map(|m| api::CheckMatch {
                    list: m.list,
                    kind: m.kind,
                    origin: m.origin,
                    prefix: m.prefix,
                    action: m.action.to_owned(),
                    reason: m.reason,
                    created: m.created,
                    expires: m.expires,
                })
                .collect(),
            dynamic: dynamic.map(|d| {
                let taught = self.taught(ip);
                api::Dynamic {
                    action: action::NAMES[d.action as usize].to_owned(),
                    expires_boottime_ns: d.expires_ns,
                    expires_in_secs: (d.expires_ns != 0).then(|| {
                        d.expires_ns.saturating_sub(learned::boottime_ns()) / 1_000_000_000
                    }),
                    source: taught.as_ref().map(|t| t.0.clone()),
                    reason: taught.map(|t| t.1),
                    applies: applied.is_some(),
                }
            }),
            dnsbl: self
                .dnsbl
                .as_ref()
                .and_then(|dn| dn.cached_score(ip))
                .map(api::DnsblScore::from),
        }
    }
}

/// Whether `block add` of `prefixes` to `list` with `ttl` goes to the kernel's dynamic map
/// (and the store's [`CLI_TTL_LIST`]): single addresses (IPv6: a /64) with a TTL in the
/// default list.
pub fn goes_dynamic(kind: Kind, list: &str, ttl: Option<u64>, prefixes: &[Prefix]) -> bool {
    kind == Kind::Block
        && list == CLI_LIST
        && ttl.is_some()
        && prefixes
            .iter()
            .all(|p| (p.is_v4() && p.prefix_len() == 32) || (!p.is_v4() && p.prefix_len() == 64))
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
    if crate::xdp::bpffs::ensure(&pin_root)
        .with_context(|| format!("mounting bpffs at {}", pin_root.display()))?
    {
        info!(path = %pin_root.display(), "mounted bpffs");
    }
    let pin_dir = pin_root.join("prefilter");
    std::fs::create_dir_all(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let mut store = Store::open(&settings.state_dir)
        .with_context(|| format!("opening the store in {}", settings.state_dir.display()))?;
    // Folded by compact_loop after the change is answered, not inside it.
    store.defer_compaction();
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
    let mut filter = filter;
    let kernel = filter
        .take_kernel_view()
        .expect("a freshly loaded filter has its kernel view");
    let mut st = State {
        settings,
        config_path: config_path.to_owned(),
        filter,
        attached: Vec::new(),
        pin_dir,
        started: Instant::now(),
    };
    let store = RwLock::new(store);
    st.runtime_config()?;
    // Fill the fresh tables completely before any link points at this program.
    let at = store::now();
    // Scoped: the changes (48 bytes per entry) must not live as long as the daemon.
    let compiled = {
        let changes = read(&store).compiled(at);
        apply(&mut st.filter, &changes).map_err(|e| anyhow::anyhow!("filling the tables: {e}"))?;
        changes.len()
    };
    let n = st
        .load_config_lists(&store)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    info!(
        entries = compiled + n,
        adopted_maps = st.filter.adopted,
        "tables filled from the store"
    );
    // Reading millions of entries and compiling them left hundreds of megabytes free.
    trim_heap();
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
    let dnsbl_cfg = st.settings.dnsbl.clone();
    let escalation_cfg = st.settings.escalation.clone();
    let (events_tx, _) = broadcast::channel(4096);
    let view = st.view(&read(&store));
    let feeds_init = feeds::Feeds::new(&st.settings.state_dir, st.settings.feeds.clone());
    let d = Daemon {
        writer: Arc::new(Mutex::new(st)),
        store: Arc::new(store),
        view: Arc::new(ArcSwap::from_pointee(view)),
        kernel: Arc::new(kernel),
        events: events_tx,
        expiry_wake: Arc::new(tokio::sync::Notify::new()),
        compact_wake: Arc::new(tokio::sync::Notify::new()),
        learned: broadcast::channel(1024).0,
        taught: Arc::default(),
        dnsbl: dnsbl_cfg.map(|c| Arc::new(crate::dnsbl::Dnsbl::new(c))),
        escalation: escalation_cfg.map(|c| Arc::new(escalation::Escalation::new(c))),
        feeds: Arc::new(feeds_init),
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
    tasks.push(tokio::spawn(compact_loop(d.clone(), stop_rx.clone())));
    if let Some(dn) = d.dnsbl() {
        let c = dn.config();
        info!(
            sites = %c.sites.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "),
            threshold = c.threshold,
            inline = c.inline,
            "DNSBL scoring on"
        );
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        dn.set_learner(tx);
        tasks.push(tokio::spawn(learn_loop(d.clone(), rx, stop_rx.clone())));
        tasks.push(tokio::spawn(dn.clone().run_probes(stop_rx.clone())));
        if c.inline {
            tasks.push(tokio::spawn(inline_dnsbl(d.clone(), dn, stop_rx.clone())));
        }
    }
    tasks.push(tokio::spawn(feeds::schedule(d.clone(), stop_rx.clone())));
    // Read at start only, like [proxy]: the reporter keeps its LAPI login until a restart.
    let fleet_cfg = d.lock().settings.crowdsec.clone();
    if let Some(c) = fleet_cfg {
        tasks.push(tokio::spawn(fleet::report(d.clone(), c, stop_rx.clone())));
    }
    let proxy_cfg = d.lock().settings.proxy.clone();
    let mut proxy_task = None;
    if let Some(p) = proxy_cfg {
        match crate::proxy::raise_nofile(p.max_connections) {
            Ok((limit, need)) if limit < need => warn!(
                limit,
                need,
                "proxy: the open files limit is below what max_connections needs (2 per session)"
            ),
            Ok((limit, need)) => info!(limit, need, "proxy: open files limit"),
            Err(e) => warn!("proxy: could not raise the open files limit: {e}"),
        }
        let listeners = crate::proxy::bind(&p.listen, p.backlog).context("proxy listen")?;
        let smtps = crate::proxy::bind(&p.smtps_listen, p.backlog).context("proxy smtps_listen")?;
        info!(
            listen = ?p.listen,
            smtps_listen = ?p.smtps_listen,
            backends = %p.backends.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
            "proxy listening"
        );
        let deadline = p.shutdown_timeout;
        let verdicts: Arc<dyn crate::proxy::Verdicts> = Arc::new(d.clone());
        proxy_task = Some((
            deadline,
            tokio::spawn(crate::proxy::serve(
                p,
                verdicts,
                listeners,
                smtps,
                stop_rx.clone(),
            )),
        ));
    }

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
    // The proxy lets its sessions finish up to its deadline (plus a second to close them).
    if let Some((deadline, t)) = proxy_task {
        let _ = tokio::time::timeout(deadline + Duration::from_secs(2), t).await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

impl crate::proxy::Verdicts for Daemon {
    fn verdict(&self, ip: IpAddr) -> crate::proxy::Verdict {
        self.proxy_verdict(ip)
    }

    /// The DNSBL, when configured for the proxy (not inline) and judging the port the client
    /// came to: a listing over the threshold gets `[dnsbl] action` now, and the dynamic map
    /// its `repeat_action` (done by the DNSBL itself), so the next SYN stops in XDP.
    fn screen(&self, client: SocketAddr, local: SocketAddr) -> crate::proxy::ScreenFuture {
        use crate::proxy::{Decision, Screen};
        let Some(dnsbl) = self.dnsbl() else {
            return Box::pin(std::future::ready(Screen::default()));
        };
        if dnsbl.config().inline || !dnsbl.judges_port(local.port()) {
            return Box::pin(std::future::ready(Screen::default()));
        }
        Box::pin(async move {
            let s = dnsbl.score(client.ip()).await;
            let decision = s.verdict.map(|a| match a {
                crate::policy::Action::Tempfail => Decision::Tempfail,
                crate::policy::Action::Observe => Decision::Observe,
                // drop/reset reaching a socket: answer as a reject; the kernel takes the
                // next SYN.
                _ => Decision::Reject,
            });
            let decision = decision.or(s.allowlisted.then_some(Decision::Allow));
            Screen {
                decision,
                score: s.score,
                listed: s.listed,
            }
        })
    }

    fn refused(&self, ip: IpAddr) {
        self.note_refusal(ip);
    }

    fn learn(
        &self,
        ip: IpAddr,
        action: crate::policy::Action,
        ttl: Duration,
        source: &str,
        reason: &str,
    ) -> Result<(), String> {
        Daemon::learn(
            self,
            learned::Learned {
                ip,
                action,
                ttl,
                source: source.to_owned(),
                reason: reason.to_owned(),
            },
        )
        .map_err(|e| e.message)
    }
}

/// Puts DNSBL listings into the kernel's dynamic map, off the lookup's task (the writer may
/// be held by an import for seconds).
async fn learn_loop(
    d: Daemon,
    mut rx: tokio::sync::mpsc::Receiver<learned::Learned>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let l = tokio::select! {
            l = rx.recv() => match l { Some(l) => l, None => return },
            _ = stop.changed() => return,
        };
        info!(client = %l.ip, action = %l.action, ttl_secs = l.ttl.as_secs(), reason = %l.reason,
            "DNSBL listed: XDP verdict learned");
        let d = d.clone();
        let ip = l.ip;
        match tokio::task::spawn_blocking(move || d.learn(l)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(client = %ip, "DNSBL listing not applied: {e}"),
            Err(e) => warn!(client = %ip, "DNSBL listing not applied: {e}"),
        }
    }
}

/// Inline mode (no proxy): a lookup for each first-seen event of the XDP program, which
/// fires on the client's first ACK to a judged port, never on a bare SYN, so spoofed sources
/// cause no query.
async fn inline_dnsbl(d: Daemon, dn: Arc<crate::dnsbl::Dnsbl>, mut stop: watch::Receiver<bool>) {
    let mut rx = d.events.subscribe();
    loop {
        let ev = tokio::select! {
            r = rx.recv() => match r {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(missed = n, "DNSBL: first-seen events missed (reader too slow)");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        };
        if ev.kind != "first_seen" || !dn.judges_port(ev.port) {
            continue;
        }
        let Ok(ip) = ev.source.parse::<IpAddr>() else {
            continue;
        };
        let (d, dn) = (d.clone(), dn.clone());
        tokio::spawn(async move {
            let s = dn.score(ip).await;
            if s.verdict.is_some() {
                // The connection is already with the MTA; the listing still counts toward
                // escalation, and its repeat_action stops the next SYN.
                d.note_refusal(ip);
            }
        });
    }
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

/// Folds the journal whenever a change left it long enough ([`Daemon::compact_if_due`]),
/// one fold at a time; a change arriving meanwhile waits for the writer as it would for
/// another change.
async fn compact_loop(d: Daemon, mut stop: watch::Receiver<bool>) {
    loop {
        let job = d.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || job.compact_if_due()).await {
            error!("compacting the journal: {e}");
        }
        tokio::select! {
            _ = d.compact_wake.notified() => {}
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
