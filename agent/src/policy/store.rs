//! The policy store: the one source of truth for every allow and block entry.
//!
//! Entries live in named lists (the config's static lists, `cli`, imported lists, later
//! feeds). The store computes, per prefix, the verdict the XDP tables must hold and reports
//! only what changed, so the maps are updated by difference.
//!
//! Persistence (state directory): each non-config list is a text file `lists/NAME.list`
//! rewritten atomically (temp file, fsync, rename, fsync dir) when a list is created,
//! replaced by mostly new content, or compacted; every single add/delete is appended to
//! `journal` and fsynced before the change is acknowledged. A replacement that changes few
//! entries (a feed's daily 1%) is journaled as its delta, and a large list replaced by a
//! short one as `clear` plus the new entries, one fsync either way; the journal is folded
//! into the list files once it holds a quarter of their entries. Start-up loads the list
//! files and replays the journal over them, so a `kill -9` at any instant loses nothing that
//! was acknowledged.
//!
//! Memory: entries are kept compactly per list ([`Entries`]: 16-byte slots, interned
//! reasons), about 50 bytes an IPv4 entry.
//!
//! Journal records are checksummed lines (see [`journal`]); a commit that fails to write
//! is cut off again, and start-up drops a torn last record and skips (and keeps a copy of)
//! damaged ones, so a full or failing disk never stops the next start.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File},
    io::{self, BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use prefilter_common::{action, verdict};
use serde::{Deserialize, Serialize};

use crate::policy::{Kind, prefix::Prefix};

mod entries;
mod journal;

pub use entries::{Entries, Rule};
use journal::Journal;

/// Compact the journal into list files after this many records, or more when the lists it
/// touched are large (see [`Store::compact_due`]).
const COMPACT_AFTER: usize = 10_000;

/// A replacement that changes at most this many entries, or a tenth of the list if more, is
/// persisted as journal records (one fsync) rather than by rewriting the list file.
const DELTA_RECORDS: usize = 10_000;

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
    /// A `[[feeds]]` source: replaced by each successful fetch, persisted like imports, and
    /// written by nothing else.
    Feed,
    /// Single addresses whose verdict lives in the kernel's dynamic map (`block add ADDR
    /// --ttl`): kept here for listings, `check` and persistence, never compiled into the
    /// prefix tables.
    Dynamic,
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
    pub entries: Entries,
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
    #[error("list {name} holds {existing} entries, not entries of this kind")]
    KindMismatch {
        name: String,
        existing: &'static str,
    },
    /// The config owns this list; edit the config file instead.
    #[error("list {name} comes from the config file; change it there and reload")]
    ConfigOwned { name: String },
    /// A feed owns this list; its next fetch replaces it.
    #[error("list {name} is fed by the [[feeds]] entry of that name; change the feed instead")]
    FeedOwned { name: String },
    /// A feed may not take over a list the CLI or an import filled.
    #[error(
        "list {name} holds entries from {}; a feed may not take it over: give the feed another name",
        origin_label(*origin)
    )]
    NotFeedOwned { name: String, origin: Origin },
    /// A list of dynamic verdicts takes single addresses with a TTL only, and only it does.
    #[error(
        "list {name} holds dynamic verdicts (block add ADDR --ttl) or another kind of entries; use another list"
    )]
    DynamicOnly { name: String },
    /// All list ids (1 to `verdict::MAX_LIST_ID`, 4035) are taken.
    #[error("too many lists (at most {})", verdict::MAX_LIST_ID)]
    TooManyLists,
    /// A list name that cannot be a file name.
    #[error("invalid list name {0:?}: use 1-64 of a-z 0-9 _ . -")]
    BadName(String),
    /// An update that would remove too much of a list (the shrink guard).
    #[error(transparent)]
    Shrink(#[from] crate::policy::guard::ShrinkRefused),
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
    super::Action::from_code(a).map_or(0, super::Action::severity)
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
    /// Empties the list (it keeps its id, kind and origin): written before the `set`s of its
    /// whole new content when a large list is replaced by a short one.
    Clear {
        list: String,
    },
    /// Opens one change of `records` records (those that follow): a change is replayed
    /// whole or, cut short at the end of the journal (never acknowledged), not at all.
    /// Written before every change of more than one record.
    Begin {
        records: u64,
    },
}

impl Record {
    fn list(&self) -> &str {
        match self {
            Record::Set { list, .. } | Record::Del { list, .. } | Record::Clear { list } => list,
            Record::Begin { .. } => "",
        }
    }
}

/// A change read from the journal, held until its last record.
struct Group {
    /// Where its `begin` record starts in the file.
    at: u64,
    /// Records still to come.
    left: u64,
    records: Vec<Record>,
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
    pub kind: Kind,
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
    /// Behind a mutex so a planned replacement's records are written holding only the
    /// store's read lock ([`Store::write_planned`]); only the single writer locks it.
    journal: std::sync::Mutex<Journal>,
    journal_records: usize,
    /// Lists with journal records not yet folded into their file.
    dirty: std::collections::BTreeSet<String>,
    /// Entries of list files that journal `clear` records dropped: read for nothing at
    /// start-up until the journal is folded.
    cleared: usize,
    /// Folding a due journal is left to the caller ([`Self::defer_compaction`]).
    deferred: bool,
}

impl Store {
    /// A store that persists nothing (tests).
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            lists: BTreeMap::new(),
            journal: std::sync::Mutex::new(Journal::default()),
            journal_records: 0,
            dirty: std::collections::BTreeSet::new(),
            cleared: 0,
            deferred: false,
        }
    }

    /// Opens (creating) the state directory, loads the lists and replays the journal.
    ///
    /// Damage does not stop the start: a torn last journal record (never acknowledged) is
    /// dropped, damaged records and list files are logged, kept aside and skipped.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let lists_dir = dir.join("lists");
        fs::create_dir_all(&lists_dir).map_err(io_err(&lists_dir))?;
        let mut store = Self {
            dir: Some(dir.to_owned()),
            ..Self::in_memory()
        };
        let mut salvaged = false;
        for e in fs::read_dir(&lists_dir).map_err(io_err(&lists_dir))? {
            let path = e.map_err(io_err(&lists_dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') && name.ends_with(".list.tmp") {
                // Left by a write cut short by a crash: it only takes space.
                let _ = fs::remove_file(&path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "list") {
                continue;
            }
            match store.load_list(&path) {
                Ok(None) => {}
                Ok(Some((lines, first))) => {
                    // Its good entries are loaded; a copy of the damaged file is kept, and
                    // the next fold writes the list anew.
                    let kept = keep_copy(&path);
                    salvaged = true;
                    tracing::error!(
                        path = %path.display(),
                        bad_lines = lines,
                        first = %first,
                        kept = %kept.as_ref().map_or_else(|e| format!("nowhere: {e}"), |p| p.display().to_string()),
                        "damaged lines of a list file skipped: its other entries are loaded"
                    );
                }
                Err(e) => {
                    // A damaged header must not stop the gateway: start without the list
                    // (journal records may still bring some back) and keep it for
                    // inspection. Moved aside, as compaction would otherwise delete a file
                    // of no known list.
                    let kept = set_aside(&path).map_err(io_err(&path))?;
                    tracing::error!(
                        path = %path.display(),
                        error = %e,
                        kept = %kept.display(),
                        "damaged list file moved aside: starting without it"
                    );
                }
            }
        }
        let jpath = dir.join(journal::NAME);
        // The change being read: its records wait until the last of them is read.
        let mut open: Option<Group> = None;
        let replay = |store: &mut Store, r: Record| {
            store.dirty.insert(r.list().to_owned());
            store.replay(r);
            store.journal_records += 1;
        };
        let scan = journal::scan(&jpath, |r, at| {
            if let Record::Begin { records } = r {
                // A change still open here lost records to damage in the middle of the
                // file: the changes after it were acknowledged on top of what is left.
                if let Some(g) = open.take() {
                    g.records.into_iter().for_each(|r| replay(&mut store, r));
                }
                open = Some(Group {
                    at,
                    left: records,
                    records: Vec::new(),
                });
                return;
            }
            match &mut open {
                Some(g) => {
                    g.records.push(r);
                    g.left = g.left.saturating_sub(1);
                    if g.left == 0 {
                        let g = open.take().expect("open");
                        g.records.into_iter().for_each(|r| replay(&mut store, r));
                    }
                }
                None => replay(&mut store, r),
            }
        });
        let mut scan = match scan {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A salvaged list is written anew from what was read.
                if salvaged && let Err(e) = store.compact() {
                    tracing::error!(error = %e, "rewriting a salvaged list file");
                }
                return Ok(store);
            }
            Err(e) => return Err(io_err(&jpath)(e)),
        };
        for (line, why) in &scan.torn {
            tracing::warn!(
                path = %jpath.display(),
                line,
                error = %why,
                "dropped an incomplete record at the end of the journal (never acknowledged)"
            );
        }
        if let Some(g) = open {
            // Cut short by a crash while it was written: never acknowledged, and none of
            // it may apply (half of a replacement is neither list).
            let lists: std::collections::BTreeSet<&str> =
                g.records.iter().map(Record::list).collect();
            tracing::warn!(
                path = %jpath.display(),
                records = g.records.len() as u64 + g.left,
                lost = g.left,
                lists = ?lists,
                "dropped a change cut short at the end of the journal (never acknowledged)"
            );
            scan.good_len = g.at;
        }
        let mut compact = scan.len > 0 || salvaged;
        if !scan.damaged.is_empty() {
            let kept = keep_damaged(dir, &jpath);
            for (line, why) in &scan.damaged {
                tracing::error!(
                    path = %jpath.display(),
                    line,
                    error = %why,
                    kept = %kept.as_ref().map_or("nowhere".into(), |p| p.display().to_string()),
                    "damaged journal record skipped"
                );
            }
            if let Err(e) = &kept {
                // Compaction would destroy the only copy of the damaged bytes.
                tracing::error!(
                    path = %jpath.display(),
                    error = %e,
                    "cannot keep a copy of the damaged journal: not compacting it"
                );
                compact = false;
            }
        }
        // Fold the journal into the list files it touched, so it starts empty.
        if compact && let Err(e) = store.compact() {
            // Start anyway: the journal still holds every good record and replays again.
            tracing::error!(error = %e, "compacting the journal at start-up");
            compact = false;
        }
        if !compact && scan.good_len < scan.len {
            // The torn tail must go before anything is appended after it.
            store.journal_mut().set_len(scan.good_len);
            if let Err(e) = store.journal_mut().repair(dir) {
                tracing::error!(
                    path = %jpath.display(),
                    error = %e,
                    "cannot cut the torn end off the journal: changes are refused until it can be"
                );
            }
        }
        Ok(store)
    }

    /// Loads one list file. A bad entry line costs that line only (the first is returned
    /// with the count); a bad header, the whole file.
    fn load_list(&mut self, path: &Path) -> Result<Option<(usize, StoreError)>, StoreError> {
        let corrupt = |line, message: &str| StoreError::Corrupt {
            path: path.to_owned(),
            line,
            message: message.to_owned(),
        };
        let f = File::open(path).map_err(io_err(path))?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut header = String::new();
        if reader.read_line(&mut header).map_err(io_err(path))? == 0 {
            return Err(corrupt(1, "empty list file"));
        }
        let header = header.trim_end_matches('\n');
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
            "feed" => Origin::Feed,
            "dynamic" => Origin::Dynamic,
            _ => return Err(corrupt(1, "bad list origin")),
        };
        let mut entries = Entries::default();
        let mut bulk = entries.bulk(0);
        let mut bad: Option<(usize, StoreError)> = None;
        // One line buffer for all: a String per line cost a second at 6M entries.
        let mut buf = Vec::new();
        for i in 2.. {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(io_err(path))? == 0 {
                break;
            }
            let entry = (|| {
                let text = std::str::from_utf8(&buf).map_err(|_| corrupt(i, "not UTF-8"))?;
                let text = text
                    .strip_suffix('\n')
                    .ok_or_else(|| corrupt(i, "cut short"))?;
                let mut f = text.splitn(5, '\t');
                let mut next = || f.next().ok_or_else(|| corrupt(i, "missing field"));
                let prefix: Prefix = next()?.parse().map_err(|_| corrupt(i, "bad prefix"))?;
                let act = action::from_name(next()?).ok_or_else(|| corrupt(i, "bad action"))?;
                let created = next()?.parse().map_err(|_| corrupt(i, "bad time"))?;
                let expires: u64 = next()?.parse().map_err(|_| corrupt(i, "bad time"))?;
                let reason = next().ok().filter(|r| !r.is_empty());
                Ok::<_, StoreError>((prefix, act, reason, created, expires))
            })();
            match entry {
                Ok((prefix, act, reason, created, expires)) => bulk.push(
                    prefix,
                    (act, reason, created, (expires != 0).then_some(expires)),
                ),
                // Damage costs the entries it hit, not the list.
                Err(e) => match &mut bad {
                    Some((n, _)) => *n += 1,
                    None => bad = Some((1, e)),
                },
            }
        }
        bulk.finish();
        if bad.is_some() {
            // Written again from what was read at the next fold.
            self.dirty.insert(name.clone());
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
        Ok(bad)
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
                    entries: Entries::default(),
                });
                l.entries.insert_parts(
                    prefix,
                    action::from_name(&a).unwrap_or(action::DROP),
                    reason.as_deref(),
                    created,
                    expires,
                );
            }
            Record::Del { list, prefix } => {
                if let Some(l) = self.lists.get_mut(&list) {
                    l.entries.remove(&prefix);
                }
            }
            Record::Clear { list } => {
                if let Some(l) = self.lists.get_mut(&list) {
                    self.cleared += l.entries.len();
                    l.entries = Entries::default();
                }
            }
            // Handled by the reader (`Store::open`).
            Record::Begin { .. } => {}
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

    /// Looks up `keys` in every list [`Store::effective`] reads, in a loop of its own: with
    /// nothing else in flight the CPU waits for several of these cache misses at a time,
    /// where a loop that edits between lookups waits for each in turn.
    fn touch(&self, keys: &[Prefix], kind: Kind) {
        let mut found = 0usize;
        for l in self
            .lists
            .values()
            .filter(|l| l.kind == kind && l.origin != Origin::Dynamic)
        {
            for p in keys {
                found += usize::from(l.entries.contains_key(p));
            }
        }
        std::hint::black_box(found);
    }

    /// The verdict the tables must hold for `prefix` of `kind`, from every list at once.
    pub fn effective(&self, prefix: &Prefix, kind: Kind, at: u64) -> Option<u16> {
        let entries = self
            .lists
            .values()
            .filter(|l| l.kind == kind && l.origin != Origin::Dynamic)
            .filter_map(|l| l.entries.rule(prefix).map(|r| (l.id, r)));
        strongest(kind, at, entries)
    }

    /// For each of `prefixes`, up to `max_each` block entries inside it and longer than it,
    /// in force at `at` and blocking (not `observe`), with their list's name: what still
    /// blocks part of a prefix that no entry covers whole (`block del 198.51.100.0/24`
    /// where a feed lists hosts of it). One walk over every block entry for all of them,
    /// each entry masked to the prefixes' lengths and looked up: a `block del` of thousands
    /// of /24s must not walk a store of millions once per /24.
    pub fn blocked_inside(
        &self,
        prefixes: &[Prefix],
        at: u64,
        max_each: usize,
    ) -> HashMap<Prefix, Vec<(Prefix, String)>> {
        let mut out: HashMap<Prefix, Vec<(Prefix, String)>> =
            prefixes.iter().map(|p| (*p, Vec::new())).collect();
        let mut lens: Vec<(bool, u8)> = prefixes
            .iter()
            .map(|p| (p.is_v4(), p.prefix_len()))
            .collect();
        lens.sort_unstable();
        lens.dedup();
        // Prefixes still short of `max_each`: the walk ends when none is.
        let mut open = out.len();
        for (name, l) in self
            .lists
            .iter()
            .filter(|(_, l)| l.kind == Kind::Block && l.origin != Origin::Dynamic)
        {
            let blocking = l
                .entries
                .rules()
                .filter(|(_, r)| r.action != action::OBSERVE && r.expires.is_none_or(|x| x > at));
            for (q, _) in blocking {
                if open == 0 {
                    return out;
                }
                for &(v4, len) in &lens {
                    if v4 != q.is_v4() || len >= q.prefix_len() {
                        continue;
                    }
                    let Ok(around) = Prefix::new(q.first(), len) else {
                        continue;
                    };
                    if let Some(found) = out.get_mut(&around)
                        && found.len() < max_each
                    {
                        found.push((q, name.clone()));
                        open -= usize::from(found.len() == max_each);
                    }
                }
            }
        }
        out
    }

    /// Every (prefix, kind, verdict) the tables must hold now.
    pub fn compiled(&self, at: u64) -> Vec<Change> {
        // Largest lists first, and a prefix is compiled in the first list that holds it: only
        // the later, smaller lists look back, where a set of every prefix seen took seconds
        // at a start with millions.
        let mut lists: Vec<&List> = self
            .lists
            .values()
            .filter(|l| l.origin != Origin::Dynamic)
            .collect();
        lists.sort_by_key(|l| std::cmp::Reverse(l.entries.len()));
        let mut out = Vec::with_capacity(lists.iter().map(|l| l.entries.len()).sum());
        for (i, l) in lists.iter().enumerate() {
            let earlier: Vec<&Entries> = lists[..i]
                .iter()
                .filter(|e| e.kind == l.kind)
                .map(|e| &e.entries)
                .collect();
            for p in l.entries.keys() {
                if earlier.iter().any(|e| e.contains_key(&p)) {
                    continue;
                }
                if let Some(v) = self.effective(&p, l.kind, at) {
                    out.push(Change {
                        prefix: p,
                        kind: l.kind,
                        old: None,
                        verdict: Some(v),
                    });
                }
            }
        }
        out
    }

    /// Whether list `name` may be written as `kind` from `origin`: its id if it exists.
    fn writable(&self, name: &str, kind: Kind, origin: Origin) -> Result<Option<u16>, StoreError> {
        if !valid_name(name) {
            return Err(StoreError::BadName(name.to_owned()));
        }
        match self.lists.get(name) {
            Some(l) if l.kind != kind => Err(StoreError::KindMismatch {
                name: name.to_owned(),
                existing: kind_name(l.kind),
            }),
            Some(l) if l.origin == Origin::Config && origin != Origin::Config => {
                Err(StoreError::ConfigOwned {
                    name: name.to_owned(),
                })
            }
            // A feed's next fetch would undo a hand edit: say so instead.
            Some(l) if l.origin == Origin::Feed && origin != Origin::Feed => {
                Err(StoreError::FeedOwned {
                    name: name.to_owned(),
                })
            }
            // Its next fetch would replace what the CLI or an import put there.
            Some(l) if origin == Origin::Feed && l.origin != Origin::Feed => {
                Err(StoreError::NotFeedOwned {
                    name: name.to_owned(),
                    origin: l.origin,
                })
            }
            // Its entries are never compiled into the tables: a prefix added here from
            // elsewhere would be listed yet not enforced.
            Some(l) if (l.origin == Origin::Dynamic) != (origin == Origin::Dynamic) => {
                Err(StoreError::DynamicOnly {
                    name: name.to_owned(),
                })
            }
            l => Ok(l.map(|l| l.id)),
        }
    }

    fn list_for_write(
        &mut self,
        name: &str,
        kind: Kind,
        origin: Origin,
    ) -> Result<&mut List, StoreError> {
        if self.writable(name, kind, origin)?.is_none() {
            let id = self.free_id()?;
            self.lists.insert(
                name.to_owned(),
                List {
                    id,
                    kind,
                    origin,
                    entries: Entries::default(),
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
            .map(|(p, k)| self.effective(p, *k, AS_IN_TABLES))
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
        if l.origin == Origin::Feed {
            return Err(StoreError::FeedOwned {
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

    /// Removes `removes` from list `name`, then sets `adds` in it (created if needed), as
    /// one change: a list update sent as a difference (`block import --patch`), which costs
    /// what it touches, not what the list holds. `max_shrink`: the shrink guard, checked on
    /// the result and everything undone when it trips. Returns the changes and how many of
    /// `removes` were there. Not yet persisted: [`Self::commit_patch`] or [`Self::rollback`].
    pub fn patch(
        &mut self,
        name: &str,
        kind: Kind,
        origin: Origin,
        removes: &[Prefix],
        adds: Vec<(Prefix, Entry)>,
        max_shrink: Option<f64>,
    ) -> Result<(Vec<Change>, Undo, usize, Staged), StoreError> {
        let (mut changes, mut recs) = (Vec::new(), Vec::new());
        let (undo, gone, Staged(rest)) = self.patch_streamed(
            name,
            kind,
            origin,
            removes,
            adds,
            max_shrink,
            &mut |c, Staged(r)| {
                changes.extend(c);
                recs.extend(r);
            },
        )?;
        recs.extend(rest);
        Ok((changes, undo, gone, Staged(recs)))
    }

    /// [`Self::patch`], handing the changes and their journal records to `emit` in chunks
    /// as they are found, so that the tables are written and the records framed on other
    /// threads meanwhile; returns the records not yet handed over. Chunks only for a patch small
    /// beside the list (a delta); a large one is handed over whole, as the tables write a
    /// large batch faster in one piece. The shrink guard is then checked before anything is
    /// handed over: a refused patch changes nothing, in the store or in the tables.
    #[allow(clippy::too_many_arguments)]
    pub fn patch_streamed(
        &mut self,
        name: &str,
        kind: Kind,
        origin: Origin,
        removes: &[Prefix],
        adds: Vec<(Prefix, Entry)>,
        max_shrink: Option<f64>,
        emit: &mut dyn FnMut(Vec<Change>, Staged),
    ) -> Result<(Undo, usize, Staged), StoreError> {
        let created = self.writable(name, kind, origin)?.is_none();
        if created && adds.is_empty() {
            return Ok((Undo::Nothing, 0, Staged(Vec::new())));
        }
        self.list_for_write(name, kind, origin)?;
        let (current, id, list_origin) = {
            let l = &self.lists[name];
            (l.entries.len(), l.id, l.origin)
        };
        // Records made now, while each entry is at hand: looking them up again to journal
        // them would cost another cache miss per entry.
        let journal = self.dir.is_some() && list_origin != Origin::Config;
        let mut recs = Vec::new();
        // Removals before additions of the same prefix (the sort is stable), so a line both
        // removed and added ends up added.
        let mut ops: Vec<(Prefix, Option<Entry>)> = removes.iter().map(|p| (*p, None)).collect();
        ops.extend(adds.into_iter().map(|(p, e)| (p, Some(e))));
        ops.sort_by_key(|(p, _)| *p);
        let n_ops = ops.len();
        // Eight chunks or so, none under 1024 changes: fewer would leave the other core idle
        // longer, more would cost the tables' per-batch work more often.
        let chunk = if n_ops.saturating_mul(8) < current {
            (n_ops / 8).max(1024)
        } else {
            usize::MAX
        };
        // Nothing may reach the tables before the guard has passed. Where it could trip
        // (more removals than it allows, or as many as the list holds) the counts it takes
        // are worked out first, without changing anything; a 1 % delta skips that.
        if chunk < n_ops
            && let Some(max) = max_shrink
            && (removes.len() as f64 > max * current as f64 || removes.len() >= current)
        {
            let (gone, left) = shrink_counts(&self.lists[name].entries, &ops);
            crate::policy::guard::check_replace(name, current, left, gone, max)?;
        }
        let at = now();
        let mut prev = Vec::with_capacity(ops.len());
        let mut changes = Vec::new();
        let mut gone = 0;
        // One prefix at a time, its verdict before, its edit and its verdict after together:
        // they touch the same slots of a table of a million entries while those are in
        // cache, where a pass for each would pay a cache miss per prefix each time.
        let keys: Vec<Prefix> = ops.iter().map(|(p, _)| *p).collect();
        let (mut done, mut touched) = (0, 0);
        let mut ops = ops.into_iter().peekable();
        while let Some((p, op)) = ops.next() {
            if done == touched {
                touched = (touched + TOUCH_AHEAD).min(keys.len());
                self.touch(&keys[done..touched], kind);
            }
            done += 1;
            let old = self.effective(&p, kind, AS_IN_TABLES);
            let l = &mut self.lists.get_mut(name).expect("ensured").entries;
            let mut edit = |op: Option<Entry>| match op {
                None => {
                    if let Some(e) = l.remove(&p) {
                        gone += 1;
                        prev.push((p, Some(e)));
                        if journal {
                            recs.push(Record::Del {
                                list: name.to_owned(),
                                prefix: p,
                            });
                        }
                    }
                }
                Some(e) => {
                    if journal {
                        recs.push(Record::Set {
                            list: name.to_owned(),
                            kind: kind.into(),
                            origin: list_origin,
                            id,
                            prefix: p,
                            action: action::NAMES[e.action as usize].to_owned(),
                            created: e.created,
                            expires: e.expires,
                            reason: e.reason.as_deref().map(str::to_owned),
                        });
                    }
                    prev.push((p, l.insert(p, e)));
                }
            };
            edit(op);
            while let Some((_, op)) = ops.next_if(|(q, _)| *q == p) {
                done += 1;
                edit(op);
            }
            let verdict = self.effective(&p, kind, at);
            if verdict != old {
                changes.push(Change {
                    prefix: p,
                    kind,
                    old,
                    verdict,
                });
                if changes.len() >= chunk {
                    emit(
                        std::mem::take(&mut changes),
                        Staged(std::mem::take(&mut recs)),
                    );
                }
            }
        }
        // Undone in reverse order: a prefix removed then added comes back as it was.
        let undo = if created {
            Undo::Created {
                list: name.to_owned(),
            }
        } else {
            Undo::Entries {
                list: name.to_owned(),
                prev,
            }
        };
        if let Some(max) = max_shrink {
            let left = self.lists[name].entries.len();
            if let Err(e) = crate::policy::guard::check_replace(name, current, left, gone, max) {
                self.rollback(undo);
                return Err(e.into());
            }
        }
        if !changes.is_empty() {
            emit(changes, Staged(Vec::new()));
        }
        Ok((undo, gone, Staged(recs)))
    }

    /// Replaces the whole content of list `name` (import --replace, config reload).
    pub fn replace(
        &mut self,
        name: &str,
        kind: Kind,
        origin: Origin,
        entries: Entries,
    ) -> Result<(Vec<Change>, Undo), StoreError> {
        self.list_for_write(name, kind, origin)?;
        let old = &self.lists[name].entries;
        let mut touched: Vec<(Prefix, Kind)> = old.keys().map(|p| (p, kind)).collect();
        touched.extend(
            entries
                .keys()
                .filter(|p| !old.contains_key(p))
                .map(|p| (p, kind)),
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
        let touched: Vec<(Prefix, Kind)> = l.entries.keys().map(|p| (p, kind)).collect();
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
                        .rules()
                        .filter(|(_, r)| r.expires.is_some_and(|x| x <= at))
                        .map(|(p, _)| p)
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        for (name, prefixes) in expired {
            let kind = self.lists[&name].kind;
            let touched: Vec<(Prefix, Kind)> = prefixes.iter().map(|p| (*p, kind)).collect();
            let before: Vec<Option<u16>> = touched
                .iter()
                .map(|(p, k)| self.effective(p, *k, AS_IN_TABLES))
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
            .flat_map(|l| l.entries.rules().filter_map(|(_, r)| r.expires))
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
            Undo::Created { list } => {
                self.lists.remove(&list);
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
            .filter_map(|p| set_record(name, l, p))
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

    /// Persists a [`Self::patch`]: its removals and entries set, in one fsynced journal
    /// write.
    pub fn commit_patch(&mut self, framed: Framed) -> Result<(), StoreError> {
        if self.dir.is_none() {
            return Ok(());
        }
        let Some(list) = framed.list else {
            return Ok(());
        };
        self.dirty.insert(list);
        self.journal_mut()
            .push_framed(&framed.bytes, framed.records);
        self.sync_journal()
    }

    /// Persists a whole list (after replace/import) atomically.
    pub fn commit_list(&mut self, name: &str) -> Result<(), StoreError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        match self.lists.get(name) {
            // Older journal records of this list would replay over the new file after a
            // crash: fold the journal into every list file, this one included, and empty it.
            // The list stays dirty until that succeeds, so a failed attempt is redone from
            // what the store holds then (after the caller's rollback).
            Some(l) if l.origin != Origin::Config && self.dirty.contains(name) => self.compact(),
            Some(l) if l.origin != Origin::Config => write_list(&dir, name, l),
            _ => Ok(()),
        }
    }

    /// Adds a record to the commit being built; [`Self::sync_journal`] writes it.
    fn append(&mut self, r: &Record) -> Result<(), StoreError> {
        if self.dir.is_none() {
            return Ok(());
        }
        self.dirty.insert(r.list().to_owned());
        self.journal_mut().push(r);
        Ok(())
    }

    /// Writes and fsyncs the records appended since the last call, all or none.
    fn sync_journal(&mut self) -> Result<(), StoreError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        self.journal_records += self
            .journal_mut()
            .commit(&dir)
            .map_err(io_err(&dir.join(journal::NAME)))?;
        if !self.deferred
            && self.compact_due()
            && let Err(e) = self.compact()
        {
            // The records are durable: failing to fold them is no reason to refuse them.
            tracing::warn!(error = %e, "compacting the journal (retried after the next change)");
        }
        Ok(())
    }

    /// Leaves folding a due journal to the caller, who checks [`Self::compact_due`] after
    /// a change and runs [`Self::fold`] and [`Self::folded`] when it suits, excluding other
    /// writers meanwhile. The daemon does it after answering: folding rewrites whole list
    /// files, 0.2 s for a million entries, which would otherwise land on the one change that
    /// found the journal long enough.
    pub fn defer_compaction(&mut self) {
        self.deferred = true;
    }

    fn journal_mut(&mut self) -> &mut Journal {
        self.journal.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the journal is long enough to fold into the list files: after
    /// [`COMPACT_AFTER`] records, or a quarter of the entries of the lists it touched if
    /// more, so small deltas of a large feed do not rewrite its file each time while start-up
    /// never replays more than a fraction of what the list files hold.
    pub fn compact_due(&self) -> bool {
        let touched: usize = self
            .dirty
            .iter()
            .filter_map(|n| self.lists.get(n))
            .map(|l| l.entries.len())
            .sum();
        self.journal_records >= COMPACT_AFTER.max(touched / 4) || self.cleared >= COMPACT_AFTER
    }

    /// Writes the lists the journal changed to their files and empties the journal.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        self.fold()?;
        self.folded();
        Ok(())
    }

    /// [`Self::compact`] but for the bookkeeping: writes the files of the lists the journal
    /// changed, removes the files of lists that are gone, then the journal. Changes nothing
    /// in memory but the journal's handle, so the writer runs it holding only the read lock
    /// and then calls [`Self::folded`] under the write lock. After an error the bookkeeping
    /// still says the journal needs folding, and the next attempt redoes it.
    pub fn fold(&self) -> Result<(), StoreError> {
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
        let mut removed = false;
        for e in fs::read_dir(&lists_dir).map_err(io_err(&lists_dir))? {
            let path = e.map_err(io_err(&lists_dir))?.path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if path.extension().is_some_and(|x| x == "list") && !self.lists.contains_key(stem) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&lists_dir)?;
        }
        // Only now that every list file is durable may the journal go. Removed, not
        // truncated: that needs no free space, and a kept damaged copy may share its inode.
        let jpath = dir.join(journal::NAME);
        match fs::remove_file(&jpath) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&jpath)(e)),
        }
        self.journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close();
        sync_dir(&dir)
    }

    /// Records that [`Self::fold`] emptied the journal.
    pub fn folded(&mut self) {
        self.journal_records = 0;
        self.cleared = 0;
        self.dirty.clear();
    }

    /// Everything in the store that covers `ip`, most specific first. One hash lookup per
    /// prefix length and list, so a check costs the same with a million entries as with ten.
    pub fn explain(&self, ip: std::net::IpAddr) -> Vec<Match> {
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let mut out: Vec<Match> = Vec::new();
        for len in (0..=max).rev() {
            let Ok(p) = Prefix::new(ip, len) else {
                continue;
            };
            for (name, l) in &self.lists {
                let Some(e) = l.entries.get(&p) else {
                    continue;
                };
                out.push(Match {
                    list: name.clone(),
                    kind: l.kind,
                    origin: l.origin,
                    prefix: p,
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
        out
    }

    /// The name of the list with `id`.
    pub fn list_name(&self, id: u16) -> Option<&str> {
        self.lists
            .iter()
            .find(|(_, l)| l.id == id)
            .map(|(n, _)| n.as_str())
    }

    // ---- Replacing a whole list in two phases -------------------------------------------
    //
    // A million-entry import must not stop readers (`check`, listing, later the proxy) for
    // the seconds its diff and its list file take: the daemon plans under a read lock,
    // applies the tables and writes the list file holding no store lock, and only swaps the
    // list in under the write lock.

    /// Plans replacing the content of list `name` by `entries` (created if needed): the
    /// table changes it makes and the entries it changes, computed without changing
    /// anything. Entries equal to the old ones keep their creation time.
    pub fn plan_replace(
        &self,
        name: &str,
        kind: Kind,
        origin: Origin,
        mut entries: Entries,
    ) -> Result<Planned, StoreError> {
        let existing = self.writable(name, kind, origin)?;
        let id = match existing {
            Some(id) => id,
            None => self.free_id()?,
        };
        let at = now();
        let empty = Entries::default();
        let old = self.lists.get(name).map_or(&empty, |l| &l.entries);
        let others: Vec<(u16, &Entries)> = self
            .lists
            .iter()
            .filter(|(n, l)| l.kind == kind && n.as_str() != name && l.origin != Origin::Dynamic)
            .map(|(_, l)| (l.id, &l.entries))
            .collect();
        // A new list is written whole; an existing one by its delta while that is small.
        let journal_delta = existing.is_some() && origin != Origin::Config;
        let limit = DELTA_RECORDS.max(old.len() / 10);
        let mut delta = Vec::new();
        let mut delta_ok = journal_delta;
        let mut removed = 0;
        // A new list changes a verdict for each of its entries, millions for a big one.
        let mut changes = Vec::with_capacity(if old.is_empty() { entries.len() } else { 0 });
        entries.reconcile(old, |p, before, after| {
            if after.is_none() {
                removed += 1;
            }
            if delta_ok {
                if delta.len() < limit {
                    delta.push((p, after.is_some()));
                } else {
                    delta_ok = false;
                    delta = Vec::new();
                }
            }
            if before == after {
                // Only the reason changed: the tables do not care.
                return;
            }
            let other = others
                .iter()
                .filter_map(|(oid, l)| l.rule(&p).map(|r| (*oid, r)));
            let was = strongest(
                kind,
                AS_IN_TABLES,
                other.clone().chain(before.map(|r| (id, r))),
            );
            let will = strongest(kind, at, other.chain(after.map(|r| (id, r))));
            if was != will {
                changes.push(Change {
                    prefix: p,
                    kind,
                    old: was,
                    verdict: will,
                });
            }
        });
        let persist = if delta_ok {
            Persist::Delta(delta)
        } else if journal_delta && entries.len() < limit {
            // Shorter to journal the whole new content after a `clear`.
            Persist::Reset
        } else {
            Persist::File
        };
        Ok(Planned {
            name: name.to_owned(),
            old_len: old.len(),
            removed,
            persist,
            journaled: 0,
            list: List {
                id,
                kind,
                origin,
                entries,
            },
            changes,
        })
    }

    /// Persists a planned replacement (before it is installed): its delta as journal records
    /// (one fsync) when it is small, else the whole list file. Touches no in-memory state
    /// but the journal's own, so the daemon calls it holding only the read lock. On error
    /// nothing persisted changed.
    pub fn write_planned(&self, planned: &mut Planned) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        if planned.list.origin == Origin::Config {
            return Ok(());
        }
        let name = &planned.name;
        let list = &planned.list;
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        match &planned.persist {
            Persist::File => return write_list(dir, name, list),
            Persist::Delta(delta) => {
                for &(p, set) in delta {
                    let r = if set {
                        set_record(name, list, &p).expect("planned entry")
                    } else {
                        Record::Del {
                            list: name.clone(),
                            prefix: p,
                        }
                    };
                    j.push(&r);
                }
            }
            Persist::Reset => {
                j.push(&Record::Clear { list: name.clone() });
                for p in list.entries.keys() {
                    j.push(&set_record(name, list, &p).expect("planned entry"));
                }
            }
        }
        planned.journaled = j.commit(dir).map_err(io_err(&dir.join(journal::NAME)))?;
        Ok(())
    }

    /// For a planned replacement that rewrites its list file: that file written and fsynced
    /// under a temporary name, to put in place with [`commit_list`]. Touches nothing the
    /// store reads, so the daemon runs it on another thread while the tables are written.
    /// None: the replacement is persisted otherwise, by [`Self::write_planned`].
    pub fn stage_planned(&self, planned: &Planned) -> Option<Result<StagedList, StoreError>> {
        let dir = self.dir.as_ref()?;
        (matches!(planned.persist, Persist::File) && planned.list.origin != Origin::Config)
            .then(|| stage_list(dir, &planned.name, &planned.list))
    }

    /// Installs a planned replacement already persisted: an O(1) swap. Returns the undo and
    /// the old entries' owner, which the caller should drop outside the lock.
    pub fn install(&mut self, planned: Planned) -> Result<Undo, StoreError> {
        let Planned {
            name,
            list,
            persist,
            journaled,
            old_len,
            ..
        } = planned;
        let undo = match self.lists.get_mut(&name) {
            Some(l) => Undo::List {
                list: name.clone(),
                prev: std::mem::replace(&mut l.entries, list.entries),
            },
            None => {
                self.lists.insert(name.clone(), list);
                Undo::Created { list: name.clone() }
            }
        };
        if !matches!(persist, Persist::File) {
            // Appended after every older record of the list: replay ends where memory is.
            if journaled > 0 {
                self.dirty.insert(name);
                self.journal_records += journaled;
            }
            if matches!(persist, Persist::Reset) && self.dir.is_some() {
                self.cleared += old_len;
            }
            return Ok(undo);
        }
        // Older journal records of this list would replay over the new file after a crash:
        // fold the journal now, or take the swap back.
        if self.dirty.contains(&name)
            && let Err(e) = self.commit_list(&name)
        {
            self.rollback(undo);
            return Err(e);
        }
        Ok(undo)
    }
}

/// What a patch's sorted `ops` would do to `entries`, for the shrink guard: how many
/// entries it removes (a prefix both removed and added counts: it was taken out) and how
/// many the list would then hold.
fn shrink_counts(entries: &Entries, ops: &[(Prefix, Option<Entry>)]) -> (usize, usize) {
    let (mut gone, mut left) = (0, entries.len());
    for same in ops.chunk_by(|a, b| a.0 == b.0) {
        let present = entries.contains_key(&same[0].0);
        let removed = same.iter().any(|(_, op)| op.is_none());
        let added = same.iter().any(|(_, op)| op.is_some());
        if present && removed {
            gone += 1;
        }
        match (present, added || (present && !removed)) {
            (true, false) => left -= 1,
            (false, true) => left += 1,
            _ => {}
        }
    }
    (gone, left)
}

/// The journal record that sets `p` as list `l` (named `name`) holds it.
fn set_record(name: &str, l: &List, p: &Prefix) -> Option<Record> {
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
}

/// A whole-list replacement planned by [`Store::plan_replace`].
pub struct Planned {
    name: String,
    list: List,
    /// Entries of the list before.
    pub old_len: usize,
    /// Entries of the list before that the new content does not hold.
    pub removed: usize,
    /// How it is persisted.
    persist: Persist,
    /// Records [`Store::write_planned`] journaled.
    journaled: usize,
    /// The table changes, to apply before installing.
    pub changes: Vec<Change>,
}

impl Planned {
    /// Entries in the new list.
    pub fn len(&self) -> usize {
        self.list.entries.len()
    }

    /// Whether the new list is empty.
    pub fn is_empty(&self) -> bool {
        self.list.entries.is_empty()
    }

    /// Whether persisting it appends its delta to the journal.
    pub fn journals_delta(&self) -> bool {
        matches!(self.persist, Persist::Delta(_))
    }

    /// Journal records it takes; None: it rewrites the list file.
    pub fn journal_len(&self) -> Option<usize> {
        match &self.persist {
            Persist::Delta(d) => Some(d.len()),
            Persist::Reset => Some(1 + self.list.entries.len()),
            Persist::File => None,
        }
    }
}

/// How a planned replacement is persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Persist {
    /// Journal records: the prefixes set (true) or removed (false).
    Delta(Vec<(Prefix, bool)>),
    /// Journal records: `clear`, then a `set` for every entry of the new content.
    Reset,
    /// The list file rewritten.
    File,
}

/// Who filled a list, for messages.
fn origin_label(o: Origin) -> &'static str {
    match o {
        Origin::Config => "the config file",
        Origin::Cli => "the CLI",
        Origin::Import => "an import",
        Origin::Feed => "a feed",
        Origin::Dynamic => "block add --ttl",
    }
}

/// The `at` of a verdict as the tables hold it: an entry stays there until the sweep
/// removes it, however late that runs, so a change's verdict before counts expired entries
/// still in the store. Computed at the change's time instead, an entry swept a second or
/// more late (the writer busy with a large apply) or deleted before its sweep counted as
/// already gone, no change was emitted and the tables kept dropping its sender.
const AS_IN_TABLES: u64 = 0;

/// The verdict of the strongest unexpired rule among `(list id, rule)` for one prefix:
/// the most severe action, then the lowest list id; any allow for allow lists.
fn strongest(kind: Kind, at: u64, entries: impl Iterator<Item = (u16, Rule)>) -> Option<u16> {
    let mut best: Option<(u8, u16, u8)> = None; // (severity, list id, action)
    for (id, e) in entries {
        if e.expires.is_some_and(|x| x <= at) {
            continue;
        }
        let sev = if kind == Kind::Allow {
            1
        } else {
            severity(e.action)
        };
        if best.is_none_or(|(s, bid, _)| sev > s || (sev == s && id < bid)) {
            best = Some((sev, id, e.action));
        }
    }
    best.map(|(_, id, a)| {
        let a = if kind == Kind::Allow {
            action::ALLOW
        } else {
            a
        };
        verdict::pack(a, id)
    })
}

/// The journal records of an uncommitted [`Store::patch`].
pub struct Staged(Vec<Record>);

impl Staged {
    /// The records as the journal writes them. Needs no store, so it can run on another
    /// thread while the tables are written: for 20,000 records it is about a third of a
    /// patch's time.
    pub fn frame(self) -> Framed {
        let mut bytes = Vec::with_capacity(self.0.len() * 128);
        for r in &self.0 {
            journal::frame(r, &mut bytes);
        }
        Framed {
            list: self.0.first().map(|r| r.list().to_owned()),
            bytes,
            records: self.0.len(),
        }
    }
}

/// [`Staged`] records framed for the journal, for [`Store::commit_patch`].
#[derive(Default)]
pub struct Framed {
    list: Option<String>,
    bytes: Vec<u8>,
    records: usize,
}

impl Framed {
    /// Appends the records of `next`, framed from the same patch.
    pub fn append(&mut self, next: Framed) {
        if self.list.is_none() {
            self.list = next.list;
        }
        self.bytes.extend_from_slice(&next.bytes);
        self.records += next.records;
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
        prev: Entries,
    },
    Dropped {
        list: String,
        prev: List,
    },
    /// The list did not exist before.
    Created {
        list: String,
    },
}

fn write_list(dir: &Path, name: &str, l: &List) -> Result<(), StoreError> {
    let staged = stage_list(dir, name, l)?;
    commit_list(staged)
}

/// A list file written and fsynced under a temporary name: [`commit_list`] puts it in
/// place, dropping it unused removes it.
#[derive(Debug)]
pub struct StagedList {
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl Drop for StagedList {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes list `name` to a temporary file beside its list file and fsyncs it. Nothing
/// the store reads at start changes until [`commit_list`].
/// Entries [`Store::touch`] looks up ahead of a patch's edits: their lines stay in cache
/// until the edits reach them.
const TOUCH_AHEAD: usize = 256;

pub fn stage_list(dir: &Path, name: &str, l: &List) -> Result<StagedList, StoreError> {
    let lists_dir = dir.join("lists");
    let staged = StagedList {
        path: lists_dir.join(format!("{name}.list")),
        tmp: lists_dir.join(format!(".{name}.list.tmp")),
        done: false,
    };
    let write = || -> io::Result<()> {
        let f = File::create(&staged.tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let origin = match l.origin {
            Origin::Cli => "cli",
            Origin::Feed => "feed",
            Origin::Dynamic => "dynamic",
            _ => "import",
        };
        writeln!(
            w,
            "# prefilter list v1 {name} {} {} {origin}",
            l.id,
            kind_name(l.kind)
        )?;
        // Lines are put together by hand: through `fmt` a 6M-entry list took 2 s to write,
        // most of it formatting addresses and numbers.
        let mut line = Vec::with_capacity(256);
        let mut num = itoa::Buffer::new();
        for (p, (action, reason, created, expires)) in l.entries.parts() {
            line.clear();
            push_prefix(&mut line, &p);
            line.push(b'\t');
            line.extend_from_slice(action::NAMES[action as usize].as_bytes());
            line.push(b'\t');
            line.extend_from_slice(num.format(created).as_bytes());
            line.push(b'\t');
            line.extend_from_slice(num.format(expires.unwrap_or(0)).as_bytes());
            line.push(b'\t');
            // A tab or newline in a reason would end its field or line.
            let start = line.len();
            line.extend_from_slice(reason.unwrap_or("").as_bytes());
            for b in &mut line[start..] {
                if *b == b'\t' || *b == b'\n' {
                    *b = b' ';
                }
            }
            line.push(b'\n');
            w.write_all(&line)?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    };
    // On error the staged copy is removed as it drops: a half-written copy only fills a
    // disk that is likely full already.
    write().map_err(io_err(&staged.path))?;
    Ok(staged)
}

/// Puts a staged list file in place and makes that durable.
pub fn commit_list(mut staged: StagedList) -> Result<(), StoreError> {
    fs::rename(&staged.tmp, &staged.path).map_err(io_err(&staged.path))?;
    staged.done = true;
    let dir = staged.path.parent().unwrap_or(Path::new("."));
    sync_dir(dir)
}

/// Appends `p` in its text form, as `Display` writes it.
fn push_prefix(out: &mut Vec<u8>, p: &Prefix) {
    match *p {
        Prefix::V4 { addr, len } => {
            out.extend_from_slice(
                crate::policy::prefix::V4Text::new(addr, len)
                    .as_str()
                    .as_bytes(),
            );
        }
        Prefix::V6 { .. } => {
            use std::io::Write as _;
            let _ = write!(out, "{p}");
        }
    }
}

/// Fsyncs a directory, so the entries created, renamed or removed in it last.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// `PATH.damaged.<unix-time>` (with a counter if taken), for a damaged state file.
fn damaged_name(path: &Path) -> PathBuf {
    let base = format!("{}.damaged.{}", path.display(), now());
    let mut p = PathBuf::from(&base);
    let mut n = 1;
    while p.symlink_metadata().is_ok() {
        p = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    p
}

/// Renames a damaged state file out of the way; returns its new path.
fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let to = damaged_name(path);
    fs::rename(path, &to)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(to)
}

/// A copy of a damaged list file beside it, kept before the list is written anew.
fn keep_copy(path: &Path) -> io::Result<PathBuf> {
    let to = damaged_name(path);
    fs::copy(path, &to)?;
    File::open(&to)?.sync_all()?;
    Ok(to)
}

/// Keeps the journal as found (with its damaged records) before compaction replaces it.
fn keep_damaged(dir: &Path, jpath: &Path) -> io::Result<PathBuf> {
    let to = damaged_name(jpath);
    let copy = || -> io::Result<()> {
        fs::copy(jpath, &to)?;
        File::open(&to)?.sync_all()
    };
    if let Err(e) = copy() {
        let _ = fs::remove_file(&to);
        // A full disk has no room for a copy, but a link needs none: compaction removes
        // the journal's name rather than truncating it, so the linked bytes stay intact.
        fs::hard_link(jpath, &to).map_err(|_| e)?;
    }
    File::open(dir)?.sync_all()?;
    Ok(to)
}

#[cfg(test)]
mod tests;
