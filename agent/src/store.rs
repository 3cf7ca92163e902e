//! The policy store: the one source of truth for every allow and block entry.
//!
//! Entries live in named lists (the config's static lists, `cli`, imported lists, later
//! feeds). The store computes, per prefix, the verdict the XDP tables must hold and reports
//! only what changed, so the maps are updated by difference.
//!
//! Persistence (state directory): each non-config list is a text file `lists/NAME.list`
//! rewritten atomically (temp file, fsync, rename, fsync dir) when a list is imported or
//! compacted, and every single add/delete is appended to `journal` and fsynced before the
//! change is acknowledged. Start-up loads the list files and replays the journal over them,
//! so a `kill -9` at any instant loses nothing that was acknowledged.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use prefilter_common::{action, verdict};
use serde::{Deserialize, Serialize};

use crate::{prefix::Prefix, xdp::v4table::Kind};

/// Compact the journal into list files after this many records.
const COMPACT_AFTER: usize = 10_000;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a list comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A `[[block]]`/`[[allow]]` table of the config file: replaced on reload, not persisted.
    Config,
    /// `prefilter block|allow add`.
    Cli,
    /// `prefilter block import`.
    Import,
}

/// One entry of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// For block lists, one of drop, reset, tempfail, reject, observe.
    pub action: u8,
    /// Free text shown by `check` and `block list` (e.g. an SBL id).
    pub reason: Option<Arc<str>>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds after which the entry no longer applies.
    pub expires: Option<u64>,
}

/// A named list.
#[derive(Clone, Debug)]
pub struct List {
    /// Carried in the XDP verdict and counters (12 bits).
    pub id: u16,
    pub kind: Kind,
    pub origin: Origin,
    pub entries: HashMap<Prefix, Entry>,
}

/// A change the XDP tables must make: `verdict` None = remove the prefix of that kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub prefix: Prefix,
    pub kind: Kind,
    pub old: Option<u16>,
    pub verdict: Option<u16>,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the state directory failed.
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A state file is damaged.
    #[error("{path}:{line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A list of the other kind already has this name.
    #[error("list {name} is a {existing} list")]
    KindMismatch {
        name: String,
        existing: &'static str,
    },
    /// The config owns this list; edit the config file instead.
    #[error("list {name} comes from the config file; change it there and reload")]
    ConfigOwned { name: String },
    /// All 4095 list ids are taken.
    #[error("too many lists (at most {})", verdict::MAX_LIST_ID)]
    TooManyLists,
    /// A list name that cannot be a file name.
    #[error("invalid list name {0:?}: use 1-64 of a-z 0-9 _ . -")]
    BadName(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether `name` is a valid list name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// How strongly a block action refuses: the strongest wins when lists overlap exactly.
fn severity(a: u8) -> u8 {
    match a {
        action::DROP => 5,
        action::RESET => 4,
        action::REJECT => 3,
        action::TEMPFAIL => 2,
        action::OBSERVE => 1,
        _ => 0,
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Record {
    Set {
        list: String,
        kind: KindName,
        origin: Origin,
        id: u16,
        prefix: Prefix,
        action: String,
        created: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Del {
        list: String,
        prefix: Prefix,
    },
}

impl Record {
    fn list(&self) -> &str {
        match self {
            Record::Set { list, .. } | Record::Del { list, .. } => list,
        }
    }
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum KindName {
    Block,
    Allow,
}

impl From<Kind> for KindName {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Block => Self::Block,
            Kind::Allow => Self::Allow,
        }
    }
}
impl From<KindName> for Kind {
    fn from(k: KindName) -> Self {
        match k {
            KindName::Block => Self::Block,
            KindName::Allow => Self::Allow,
        }
    }
}

/// Name of a kind as shown to users.
pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Block => "block",
        Kind::Allow => "allow",
    }
}

/// A match of an address against the store, for `check`.
#[derive(Clone, Debug, Serialize)]
pub struct Match {
    pub list: String,
    pub kind: &'static str,
    pub origin: Origin,
    pub prefix: Prefix,
    pub action: &'static str,
    pub reason: Option<String>,
    pub created: u64,
    pub expires: Option<u64>,
}

/// The store.
pub struct Store {
    dir: Option<PathBuf>,
    lists: BTreeMap<String, List>,
    journal: Option<File>,
    journal_records: usize,
    /// Lists with journal records not yet folded into their file.
    dirty: std::collections::BTreeSet<String>,
}

impl Store {
    /// A store that persists nothing (tests).
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            lists: BTreeMap::new(),
            journal: None,
            journal_records: 0,
            dirty: std::collections::BTreeSet::new(),
        }
    }

    /// Opens (creating) the state directory, loads the lists and replays the journal.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let lists_dir = dir.join("lists");
        fs::create_dir_all(&lists_dir).map_err(io_err(&lists_dir))?;
        let mut store = Self {
            dir: Some(dir.to_owned()),
            ..Self::in_memory()
        };
        for e in fs::read_dir(&lists_dir).map_err(io_err(&lists_dir))? {
            let path = e.map_err(io_err(&lists_dir))?.path();
            if path.extension().is_some_and(|x| x == "list") {
                store.load_list(&path)?;
            }
        }
        let jpath = dir.join("journal");
        if jpath.exists() {
            let f = File::open(&jpath).map_err(io_err(&jpath))?;
            for (i, line) in BufReader::new(f).lines().enumerate() {
                let line = line.map_err(io_err(&jpath))?;
                match serde_json::from_str::<Record>(&line) {
                    Ok(r) => {
                        store.dirty.insert(r.list().to_owned());
                        store.replay(r);
                    }
                    // A torn last record from a crash mid-append was never acknowledged.
                    Err(e) if e.is_eof() => break,
                    Err(e) => {
                        return Err(StoreError::Corrupt {
                            path: jpath,
                            line: i + 1,
                            message: e.to_string(),
                        });
                    }
                }
                store.journal_records += 1;
            }
        }
        // Fold the journal into the list files it touched, so it starts empty.
        if store.journal_records > 0 {
            store.compact()?;
        }
        Ok(store)
    }

    fn load_list(&mut self, path: &Path) -> Result<(), StoreError> {
        let corrupt = |line, message: &str| StoreError::Corrupt {
            path: path.to_owned(),
            line,
            message: message.to_owned(),
        };
        let f = File::open(path).map_err(io_err(path))?;
        let mut lines = BufReader::with_capacity(1 << 20, f).lines();
        let header = lines
            .next()
            .transpose()
            .map_err(io_err(path))?
            .ok_or_else(|| corrupt(1, "empty list file"))?;
        // # prefilter list v1 NAME ID KIND ORIGIN
        let h: Vec<&str> = header.split(' ').collect();
        if h.len() != 8 || h[..4] != ["#", "prefilter", "list", "v1"] {
            return Err(corrupt(1, "not a prefilter list file"));
        }
        let name = h[4].to_owned();
        let id: u16 = h[5].parse().map_err(|_| corrupt(1, "bad list id"))?;
        let kind = match h[6] {
            "block" => Kind::Block,
            "allow" => Kind::Allow,
            _ => return Err(corrupt(1, "bad list kind")),
        };
        let origin = match h[7] {
            "cli" => Origin::Cli,
            "import" => Origin::Import,
            _ => return Err(corrupt(1, "bad list origin")),
        };
        let mut entries = HashMap::new();
        for (i, line) in lines.enumerate() {
            let line = line.map_err(io_err(path))?;
            let mut f = line.splitn(5, '\t');
            let mut next = || f.next().ok_or_else(|| corrupt(i + 2, "missing field"));
            let prefix: Prefix = next()?.parse().map_err(|_| corrupt(i + 2, "bad prefix"))?;
            let act = action::from_name(next()?).ok_or_else(|| corrupt(i + 2, "bad action"))?;
            let created = next()?.parse().map_err(|_| corrupt(i + 2, "bad time"))?;
            let expires: u64 = next()?.parse().map_err(|_| corrupt(i + 2, "bad time"))?;
            let reason = next().ok().filter(|r| !r.is_empty()).map(Arc::from);
            entries.insert(
                prefix,
                Entry {
                    action: act,
                    reason,
                    created,
                    expires: (expires != 0).then_some(expires),
                },
            );
        }
        self.lists.insert(
            name,
            List {
                id,
                kind,
                origin,
                entries,
            },
        );
        Ok(())
    }

    fn replay(&mut self, r: Record) {
        match r {
            Record::Set {
                list,
                kind,
                origin,
                id,
                prefix,
                action: a,
                created,
                expires,
                reason,
            } => {
                let l = self.lists.entry(list).or_insert_with(|| List {
                    id,
                    kind: kind.into(),
                    origin,
                    entries: HashMap::new(),
                });
                l.entries.insert(
                    prefix,
                    Entry {
                        action: action::from_name(&a).unwrap_or(action::DROP),
                        reason: reason.map(Arc::from),
                        created,
                        expires,
                    },
                );
            }
            Record::Del { list, prefix } => {
                if let Some(l) = self.lists.get_mut(&list) {
                    l.entries.remove(&prefix);
                }
            }
        }
    }

    /// The lists, by name.
    pub fn lists(&self) -> &BTreeMap<String, List> {
        &self.lists
    }

    /// Number of entries by origin.
    pub fn entries_by_origin(&self) -> Vec<(Origin, Kind, usize)> {
        let mut out: Vec<(Origin, Kind, usize)> = Vec::new();
        for l in self.lists.values() {
            match out
                .iter_mut()
                .find(|(o, k, _)| *o == l.origin && *k == l.kind)
            {
                Some(e) => e.2 += l.entries.len(),
                None => out.push((l.origin, l.kind, l.entries.len())),
            }
        }
        out
    }

    /// The verdict the tables must hold for `prefix` of `kind`, from every list at once.
    pub fn effective(&self, prefix: &Prefix, kind: Kind, at: u64) -> Option<u16> {
        let mut best: Option<(u8, u16, u16)> = None; // (severity, list id, action)
        for l in self.lists.values().filter(|l| l.kind == kind) {
            let Some(e) = l.entries.get(prefix) else {
                continue;
            };
            if e.expires.is_some_and(|x| x <= at) {
                continue;
            }
            let sev = if kind == Kind::Allow {
                1
            } else {
                severity(e.action)
            };
            let better = match best {
                None => true,
                Some((s, id, _)) => sev > s || (sev == s && l.id < id),
            };
            if better {
                best = Some((sev, l.id, u16::from(e.action)));
            }
        }
        best.map(|(_, id, a)| {
            let a = if kind == Kind::Allow {
                action::ALLOW
            } else {
                a as u8
            };
            verdict::pack(a, id)
        })
    }

    /// Every (prefix, kind, verdict) the tables must hold now.
    pub fn compiled(&self, at: u64) -> Vec<Change> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for l in self.lists.values() {
            for p in l.entries.keys() {
                if seen.insert((*p, l.kind))
                    && let Some(v) = self.effective(p, l.kind, at)
                {
                    out.push(Change {
                        prefix: *p,
                        kind: l.kind,
                        old: None,
                        verdict: Some(v),
                    });
                }
            }
        }
        out
    }

    fn list_for_write(
        &mut self,
        name: &str,
        kind: Kind,
        origin: Origin,
    ) -> Result<&mut List, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::BadName(name.to_owned()));
        }
        if let Some(l) = self.lists.get(name) {
            if l.kind != kind {
                return Err(StoreError::KindMismatch {
                    name: name.to_owned(),
                    existing: kind_name(l.kind),
                });
            }
            if l.origin == Origin::Config && origin != Origin::Config {
                return Err(StoreError::ConfigOwned {
                    name: name.to_owned(),
                });
            }
        } else {
            let id = self.free_id()?;
            self.lists.insert(
                name.to_owned(),
                List {
                    id,
                    kind,
                    origin,
                    entries: HashMap::new(),
                },
            );
        }
        Ok(self.lists.get_mut(name).expect("just ensured"))
    }

    fn free_id(&self) -> Result<u16, StoreError> {
        let used: std::collections::HashSet<u16> = self.lists.values().map(|l| l.id).collect();
        (1..=verdict::MAX_LIST_ID)
            .find(|i| !used.contains(i))
            .ok_or(StoreError::TooManyLists)
    }

    /// Runs `f` on the store and reports how the effective verdicts of `touched` changed.
    fn diff<T>(
        &mut self,
        touched: &[(Prefix, Kind)],
        f: impl FnOnce(&mut Self) -> T,
    ) -> (T, Vec<Change>) {
        let at = now();
        let before: Vec<Option<u16>> = touched
            .iter()
            .map(|(p, k)| self.effective(p, *k, at))
            .collect();
        let r = f(self);
        let changes = touched
            .iter()
            .zip(before)
            .filter_map(|(&(prefix, kind), old)| {
                let new = self.effective(&prefix, kind, at);
                (new != old).then_some(Change {
                    prefix,
                    kind,
                    old,
                    verdict: new,
                })
            })
            .collect();
        (r, changes)
    }

    /// Adds or updates entries of list `name` (created if needed). Not yet persisted: call
    /// [`Self::commit_set`] once the tables accepted the changes, or [`Self::rollback`].
    pub fn set(
        &mut self,
        name: &str,
        kind: Kind,
        origin: Origin,
        entries: Vec<(Prefix, Entry)>,
    ) -> Result<(Vec<Change>, Undo), StoreError> {
        self.list_for_write(name, kind, origin)?;
        let touched: Vec<(Prefix, Kind)> = entries.iter().map(|(p, _)| (*p, kind)).collect();
        let (undo, changes) = self.diff(&touched, |s| {
            let l = s.lists.get_mut(name).expect("ensured");
            let mut undo = Vec::with_capacity(entries.len());
            for (p, e) in entries {
                undo.push((p, l.entries.insert(p, e)));
            }
            Undo::Entries {
                list: name.to_owned(),
                prev: undo,
            }
        });
        Ok((changes, undo))
    }

    /// Removes prefixes from list `name`; returns the changes and how many were there.
    pub fn remove(
        &mut self,
        name: &str,
        prefixes: &[Prefix],
    ) -> Result<(Vec<Change>, Undo, usize), StoreError> {
        let Some(l) = self.lists.get(name) else {
            return Ok((Vec::new(), Undo::Nothing, 0));
        };
        if l.origin == Origin::Config {
            return Err(StoreError::ConfigOwned {
                name: name.to_owned(),
            });
        }
        let kind = l.kind;
        let touched: Vec<(Prefix, Kind)> = prefixes.iter().map(|p| (*p, kind)).collect();
        let ((undo, n), changes) = self.diff(&touched, |s| {
            let l = s.lists.get_mut(name).expect("exists");
            let mut prev = Vec::new();
            for p in prefixes {
                if let Some(e) = l.entries.remove(p) {
                    prev.push((*p, Some(e)));
                }
            }
            let n = prev.len();
            (
                Undo::Entries {
                    list: name.to_owned(),
                    prev,
                },
                n,
            )
        });
        Ok((changes, undo, n))
    }

    /// Replaces the whole content of list `name` (import --replace, config reload).
    pub fn replace(
        &mut self,
        name: &str,
        kind: Kind,
        origin: Origin,
        entries: HashMap<Prefix, Entry>,
    ) -> Result<(Vec<Change>, Undo), StoreError> {
        self.list_for_write(name, kind, origin)?;
        let old = &self.lists[name].entries;
        let mut touched: Vec<(Prefix, Kind)> = old.keys().map(|p| (*p, kind)).collect();
        touched.extend(
            entries
                .keys()
                .filter(|p| !old.contains_key(p))
                .map(|p| (*p, kind)),
        );
        let (undo, changes) = self.diff(&touched, |s| {
            let l = s.lists.get_mut(name).expect("ensured");
            Undo::List {
                list: name.to_owned(),
                prev: std::mem::replace(&mut l.entries, entries),
            }
        });
        Ok((changes, undo))
    }

    /// Drops a whole list (config list gone after reload).
    pub fn drop_list(&mut self, name: &str) -> (Vec<Change>, Undo) {
        let Some(l) = self.lists.get(name) else {
            return (Vec::new(), Undo::Nothing);
        };
        let kind = l.kind;
        let touched: Vec<(Prefix, Kind)> = l.entries.keys().map(|p| (*p, kind)).collect();
        let (undo, changes) = self.diff(&touched, |s| {
            let l = s.lists.remove(name).expect("exists");
            Undo::Dropped {
                list: name.to_owned(),
                prev: l,
            }
        });
        (changes, undo)
    }

    /// Entries whose expiry has passed: removed, with the resulting changes.
    pub fn expire(&mut self, at: u64) -> Result<Vec<Change>, StoreError> {
        let mut changes = Vec::new();
        let expired: Vec<(String, Vec<Prefix>)> = self
            .lists
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    l.entries
                        .iter()
                        .filter(|(_, e)| e.expires.is_some_and(|x| x <= at))
                        .map(|(p, _)| *p)
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        for (name, prefixes) in expired {
            let kind = self.lists[&name].kind;
            // Expired entries already count as absent in `effective`, so compare against
            // the verdict just before expiry to report the removal.
            let touched: Vec<(Prefix, Kind)> = prefixes.iter().map(|p| (*p, kind)).collect();
            let before: Vec<Option<u16>> = touched
                .iter()
                .map(|(p, k)| self.effective(p, *k, at.saturating_sub(1)))
                .collect();
            let l = self.lists.get_mut(&name).expect("exists");
            for p in &prefixes {
                l.entries.remove(p);
            }
            if l.origin != Origin::Config {
                for p in &prefixes {
                    self.append(&Record::Del {
                        list: name.clone(),
                        prefix: *p,
                    })?;
                }
            }
            for ((prefix, kind), old) in touched.into_iter().zip(before) {
                let new = self.effective(&prefix, kind, at);
                if new != old {
                    changes.push(Change {
                        prefix,
                        kind,
                        old,
                        verdict: new,
                    });
                }
            }
        }
        self.sync_journal()?;
        Ok(changes)
    }

    /// The earliest expiry among all entries.
    pub fn next_expiry(&self) -> Option<u64> {
        self.lists
            .values()
            .flat_map(|l| l.entries.values().filter_map(|e| e.expires))
            .min()
    }

    /// Reverts an uncommitted change.
    pub fn rollback(&mut self, undo: Undo) {
        match undo {
            Undo::Nothing => {}
            Undo::Entries { list, prev } => {
                if let Some(l) = self.lists.get_mut(&list) {
                    for (p, e) in prev.into_iter().rev() {
                        match e {
                            Some(e) => l.entries.insert(p, e),
                            None => l.entries.remove(&p),
                        };
                    }
                }
            }
            Undo::List { list, prev } => {
                if let Some(l) = self.lists.get_mut(&list) {
                    l.entries = prev;
                }
            }
            Undo::Dropped { list, prev } => {
                self.lists.insert(list, prev);
            }
        }
    }

    /// Persists entries just set in `name`: one journal record each, fsynced.
    pub fn commit_set(&mut self, name: &str, prefixes: &[Prefix]) -> Result<(), StoreError> {
        let Some(l) = self.lists.get(name) else {
            return Ok(());
        };
        if l.origin == Origin::Config || self.dir.is_none() {
            return Ok(());
        }
        let recs: Vec<Record> = prefixes
            .iter()
            .filter_map(|p| {
                l.entries.get(p).map(|e| Record::Set {
                    list: name.to_owned(),
                    kind: l.kind.into(),
                    origin: l.origin,
                    id: l.id,
                    prefix: *p,
                    action: action::NAMES[e.action as usize].to_owned(),
                    created: e.created,
                    expires: e.expires,
                    reason: e.reason.as_deref().map(str::to_owned),
                })
            })
            .collect();
        for r in &recs {
            self.append(r)?;
        }
        self.sync_journal()
    }

    /// Persists deletions from `name`.
    pub fn commit_remove(&mut self, name: &str, prefixes: &[Prefix]) -> Result<(), StoreError> {
        if self.dir.is_none() {
            return Ok(());
        }
        for p in prefixes {
            self.append(&Record::Del {
                list: name.to_owned(),
                prefix: *p,
            })?;
        }
        self.sync_journal()
    }

    /// Persists a whole list (after replace/import) atomically.
    pub fn commit_list(&mut self, name: &str) -> Result<(), StoreError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        match self.lists.get(name) {
            Some(l) if l.origin != Origin::Config => {
                write_list(&dir, name, l)?;
                // Older journal records of this list would replay over the new file after a
                // crash: fold the journal into the other lists and empty it now.
                if self.dirty.remove(name) {
                    self.compact()?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn append(&mut self, r: &Record) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = dir.join("journal");
        if self.journal.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.journal = Some(f);
        }
        self.dirty.insert(r.list().to_owned());
        let mut line = serde_json::to_string(r).expect("records serialize");
        line.push('\n');
        let j = self.journal.as_mut().expect("opened");
        j.write_all(line.as_bytes()).map_err(io_err(&path))?;
        self.journal_records += 1;
        Ok(())
    }

    fn sync_journal(&mut self) -> Result<(), StoreError> {
        if let (Some(dir), Some(j)) = (&self.dir, &self.journal) {
            j.sync_data().map_err(io_err(&dir.join("journal")))?;
        }
        if self.journal_records >= COMPACT_AFTER {
            self.compact()?;
        }
        Ok(())
    }

    /// Writes the lists the journal changed to their files and empties the journal.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        let lists_dir = dir.join("lists");
        for name in &self.dirty {
            if let Some(l) = self.lists.get(name)
                && l.origin != Origin::Config
            {
                write_list(&dir, name, l)?;
            }
        }
        // Lists that no longer exist (emptied CLI lists stay; dropped ones go).
        for e in fs::read_dir(&lists_dir).map_err(io_err(&lists_dir))? {
            let path = e.map_err(io_err(&lists_dir))?.path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if path.extension().is_some_and(|x| x == "list") && !self.lists.contains_key(stem) {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        // Only now that every list file is durable may the journal go.
        let jpath = dir.join("journal");
        self.journal = None;
        if jpath.exists() {
            File::create(&jpath)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&jpath))?;
        }
        self.journal_records = 0;
        self.dirty.clear();
        Ok(())
    }

    /// Everything in the store that covers `ip`, most specific first.
    pub fn explain(&self, ip: std::net::IpAddr) -> Vec<Match> {
        let mut out: Vec<Match> = Vec::new();
        for (name, l) in &self.lists {
            for (p, e) in &l.entries {
                if p.contains(ip) {
                    out.push(Match {
                        list: name.clone(),
                        kind: kind_name(l.kind),
                        origin: l.origin,
                        prefix: *p,
                        action: if l.kind == Kind::Allow {
                            "allow"
                        } else {
                            action::NAMES[e.action as usize]
                        },
                        reason: e.reason.as_deref().map(str::to_owned),
                        created: e.created,
                        expires: e.expires,
                    });
                }
            }
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.prefix.prefix_len()));
        out
    }

    /// The name of the list with `id`.
    pub fn list_name(&self, id: u16) -> Option<&str> {
        self.lists
            .iter()
            .find(|(_, l)| l.id == id)
            .map(|(n, _)| n.as_str())
    }
}

/// What it takes to revert an uncommitted change.
pub enum Undo {
    Nothing,
    Entries {
        list: String,
        prev: Vec<(Prefix, Option<Entry>)>,
    },
    List {
        list: String,
        prev: HashMap<Prefix, Entry>,
    },
    Dropped {
        list: String,
        prev: List,
    },
}

fn write_list(dir: &Path, name: &str, l: &List) -> Result<(), StoreError> {
    let lists_dir = dir.join("lists");
    let path = lists_dir.join(format!("{name}.list"));
    let tmp = lists_dir.join(format!(".{name}.list.tmp"));
    let write = || -> io::Result<()> {
        let f = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let origin = match l.origin {
            Origin::Cli => "cli",
            _ => "import",
        };
        writeln!(
            w,
            "# prefilter list v1 {name} {} {} {origin}",
            l.id,
            kind_name(l.kind)
        )?;
        for (p, e) in &l.entries {
            let reason = e.reason.as_deref().unwrap_or("").replace(['\t', '\n'], " ");
            writeln!(
                w,
                "{p}\t{}\t{}\t{}\t{reason}",
                action::NAMES[e.action as usize],
                e.created,
                e.expires.unwrap_or(0)
            )?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&lists_dir)?.sync_all()
    };
    write().map_err(io_err(&path))
}

#[cfg(test)]
mod tests;
