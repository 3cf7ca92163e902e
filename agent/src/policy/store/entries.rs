//! The entries of one list, stored compactly: a million-entry feed must not cost the agent
//! hundreds of megabytes.
//!
//! Each entry is a 16-byte [`Slot`] (action, reason index, created and expiry as 32-bit Unix
//! seconds) in a hash table keyed by a packed prefix: IPv4 as one `u64` (`addr << 8 | len`,
//! 24 bytes a bucket), IPv6 as `(u128, u8)` (IPv6 lists are short). Reasons are interned per
//! list: feeds repeat the same text (an SBL id, a feed name) across many lines, and each text
//! is held once. [`Entry`] stays the owned form callers build and read.

use std::{
    collections::HashMap,
    hash::{BuildHasher as _, BuildHasherDefault, Hasher},
    sync::Arc,
};

use super::Entry;
use crate::policy::prefix::Prefix;

/// A fast hasher for the packed keys: a folded 128-bit multiply mixes every key bit into the
/// low bits the table indexes by (`/24` keys share their low 16 bits). The keys are policy
/// the operator loads, not attacker-chosen per packet, so flooding is no concern here.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl KeyHasher {
    fn add(&mut self, x: u64) {
        let m = u128::from(self.0 ^ x).wrapping_mul(u128::from(MIX));
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i) | 0x100);
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

type Fast = BuildHasherDefault<KeyHasher>;

/// One entry as stored: 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Slot {
    action: u8,
    /// Index into the list's reason table plus one; 0 = no reason.
    reason: u32,
    /// Unix seconds (saturating at 2106).
    created: u32,
    /// Unix seconds; 0 = never.
    expires: u32,
}

/// What decides a table verdict: the action and the expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: u8,
    pub expires: Option<u64>,
}

fn secs(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

impl Slot {
    fn rule(self) -> Rule {
        Rule {
            action: self.action,
            expires: (self.expires != 0).then_some(u64::from(self.expires)),
        }
    }
}

/// Longest reason kept, in bytes; longer ones are cut.
pub const MAX_REASON: usize = 256;

/// Reason texts of one list, each held once.
#[derive(Clone, Debug, Default)]
struct Reasons {
    texts: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
}

impl Reasons {
    fn intern(&mut self, text: Option<&str>) -> u32 {
        let Some(t) = text else { return 0 };
        // Reasons come from feeds and CLI users and are printed on terminals and in tables:
        // no control characters (a newline or tab would forge a row, an escape drive the
        // terminal) and a bounded length.
        let clean;
        let t = if t.len() > MAX_REASON || t.chars().any(char::is_control) {
            clean = t
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .scan(0, |len, c| {
                    *len += c.len_utf8();
                    (*len <= MAX_REASON).then_some(c)
                })
                .collect::<String>();
            clean.as_str()
        } else {
            t
        };
        if let Some(&i) = self.index.get(t) {
            return i;
        }
        let a: Arc<str> = Arc::from(t);
        self.texts.push(a.clone());
        // More than four billion distinct texts cannot fit in memory first.
        let i = u32::try_from(self.texts.len()).unwrap_or(u32::MAX);
        self.index.insert(a, i);
        i
    }

    fn get(&self, i: u32) -> Option<&Arc<str>> {
        i.checked_sub(1).and_then(|i| self.texts.get(i as usize))
    }

    fn text(&self, i: u32) -> Option<&str> {
        self.get(i).map(|a| &**a)
    }
}

/// An entry's parts as stored: action, reason, creation time, expiry (Unix seconds).
pub type Parts<'a> = (u8, Option<&'a str>, u64, Option<u64>);

/// The entries of one list.
#[derive(Clone, Debug, Default)]
pub struct Entries {
    v4: HashMap<u64, Slot, Fast>,
    v6: HashMap<(u128, u8), Slot, Fast>,
    reasons: Reasons,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4(u64),
    V6((u128, u8)),
}

fn key(p: &Prefix) -> Key {
    match *p {
        Prefix::V4 { addr, len } => Key::V4(u64::from(addr) << 8 | u64::from(len)),
        Prefix::V6 { addr, len } => Key::V6((addr, len)),
    }
}

fn v4_prefix(k: u64) -> Prefix {
    Prefix::V4 {
        addr: (k >> 8) as u32,
        len: k as u8,
    }
}

fn v6_prefix(k: (u128, u8)) -> Prefix {
    Prefix::V6 {
        addr: k.0,
        len: k.1,
    }
}

impl Entries {
    /// An empty list with room for `n` IPv4 entries.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            v4: HashMap::with_capacity_and_hasher(n, Fast::default()),
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, p: &Prefix) -> Option<Slot> {
        match key(p) {
            Key::V4(k) => self.v4.get(&k).copied(),
            Key::V6(k) => self.v6.get(&k).copied(),
        }
    }

    fn entry(&self, s: Slot) -> Entry {
        let r = s.rule();
        Entry {
            action: s.action,
            reason: self.reasons.get(s.reason).cloned(),
            created: u64::from(s.created),
            expires: r.expires,
        }
    }

    /// The entry for `p`, if any.
    pub fn get(&self, p: &Prefix) -> Option<Entry> {
        self.slot(p).map(|s| self.entry(s))
    }

    /// The action and expiry of the entry for `p`: what the tables depend on.
    pub fn rule(&self, p: &Prefix) -> Option<Rule> {
        self.slot(p).map(Slot::rule)
    }

    pub fn contains_key(&self, p: &Prefix) -> bool {
        match key(p) {
            Key::V4(k) => self.v4.contains_key(&k),
            Key::V6(k) => self.v6.contains_key(&k),
        }
    }

    /// Every prefix, in no order.
    pub fn keys(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.v4
            .keys()
            .map(|&k| v4_prefix(k))
            .chain(self.v6.keys().map(|&k| v6_prefix(k)))
    }

    /// Every prefix with its rule, in no order.
    pub fn rules(&self) -> impl Iterator<Item = (Prefix, Rule)> + '_ {
        self.v4
            .iter()
            .map(|(&k, s)| (v4_prefix(k), s.rule()))
            .chain(self.v6.iter().map(|(&k, s)| (v6_prefix(k), s.rule())))
    }

    /// Every entry, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, Entry)> + '_ {
        self.v4
            .iter()
            .map(|(&k, s)| (v4_prefix(k), self.entry(*s)))
            .chain(self.v6.iter().map(|(&k, s)| (v6_prefix(k), self.entry(*s))))
    }

    /// Every entry with its parts, in no order, without copying anything: what a list file
    /// is written from.
    pub fn parts(&self) -> impl Iterator<Item = (Prefix, Parts<'_>)> {
        let part = |p: Prefix, s: &Slot| {
            let r = s.rule();
            (
                p,
                (
                    s.action,
                    self.reasons.text(s.reason),
                    u64::from(s.created),
                    r.expires,
                ),
            )
        };
        self.v4
            .iter()
            .map(move |(&k, s)| part(v4_prefix(k), s))
            .chain(self.v6.iter().map(move |(&k, s)| part(v6_prefix(k), s)))
    }

    /// The stored form of an entry's parts, `reason` interned.
    fn new_slot(&mut self, (action, reason, created, expires): Parts<'_>) -> Slot {
        Slot {
            action,
            reason: self.reasons.intern(reason),
            created: secs(created),
            expires: expires.map_or(0, |x| secs(x).max(1)),
        }
    }

    /// Sets the entry for `p` from its parts, interning `reason`.
    pub fn insert_parts(
        &mut self,
        p: Prefix,
        action: u8,
        reason: Option<&str>,
        created: u64,
        expires: Option<u64>,
    ) -> Option<Entry> {
        let s = self.new_slot((action, reason, created, expires));
        let old = match key(&p) {
            Key::V4(k) => self.v4.insert(k, s),
            Key::V6(k) => self.v6.insert(k, s),
        };
        old.map(|o| self.entry(o))
    }

    /// Sets many entries with one action and creation time and no expiry, the last of equal
    /// prefixes winning, as [`Self::insert_parts`] one by one would (see [`Bulk`]).
    pub fn insert_many<'a>(
        &mut self,
        items: impl IntoIterator<Item = (Prefix, Option<&'a str>)>,
        action: u8,
        created: u64,
    ) {
        let items = items.into_iter();
        let mut bulk = self.bulk(items.size_hint().0);
        for (p, reason) in items {
            bulk.push(p, (action, reason, created, None));
        }
        bulk.finish();
    }

    /// A bulk insertion of about `n` entries: [`Bulk::push`] each, then [`Bulk::finish`].
    pub fn bulk(&mut self, n: usize) -> Bulk<'_> {
        Bulk {
            v4: Vec::with_capacity(n),
            entries: self,
        }
    }

    /// Sets the entry for `p`; returns the one it replaces.
    pub fn insert(&mut self, p: Prefix, e: Entry) -> Option<Entry> {
        self.insert_parts(p, e.action, e.reason.as_deref(), e.created, e.expires)
    }

    /// Removes the entry for `p`; returns it.
    pub fn remove(&mut self, p: &Prefix) -> Option<Entry> {
        let old = match key(p) {
            Key::V4(k) => self.v4.remove(&k),
            Key::V6(k) => self.v6.remove(&k),
        };
        old.map(|o| self.entry(o))
    }

    /// Walks a replacement of `old` by `self`: every entry of `self` with the one `old` holds
    /// for its prefix, then every prefix only `old` holds. An entry equal to the old one in
    /// action, reason and expiry takes the old creation time (an unchanged line of a feed
    /// stays as old as it is) and is not reported.
    ///
    /// `each(prefix, old rule, new rule)` for every prefix whose stored entry changed; equal
    /// rules mean only the reason did.
    pub(super) fn reconcile(
        &mut self,
        old: &Entries,
        mut each: impl FnMut(Prefix, Option<Rule>, Option<Rule>),
    ) {
        let same_reason = |a: u32, b: u32, new: &Reasons| match (new.get(a), old.reasons.get(b)) {
            (None, None) => true,
            (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
            _ => false,
        };
        let reasons = &self.reasons;
        let mut visit = |p: Prefix, s: &mut Slot, o: Option<Slot>| match o {
            Some(o)
                if o.action == s.action
                    && o.expires == s.expires
                    && same_reason(s.reason, o.reason, reasons) =>
            {
                s.created = o.created;
            }
            o => each(p, o.map(Slot::rule), Some(s.rule())),
        };
        for (k, s) in self.v4.iter_mut() {
            visit(v4_prefix(*k), s, old.v4.get(k).copied());
        }
        for (k, s) in self.v6.iter_mut() {
            visit(v6_prefix(*k), s, old.v6.get(k).copied());
        }
        for (k, s) in &old.v4 {
            if !self.v4.contains_key(k) {
                each(v4_prefix(*k), Some(s.rule()), None);
            }
        }
        for (k, s) in &old.v6 {
            if !self.v6.contains_key(k) {
                each(v6_prefix(*k), Some(s.rule()), None);
            }
        }
    }

    /// The reason text of the entry for `p`, without copying it.
    pub fn reason_of(&self, p: &Prefix) -> Option<&str> {
        self.slot(p).and_then(|s| self.reasons.text(s.reason))
    }

    /// Bytes of heap this list holds (tables at capacity, reason texts), for tests and
    /// measurements.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        // hashbrown: one bucket and one control byte per slot of capacity.
        let v4 = self.v4.capacity() * (size_of::<(u64, Slot)>() + 1);
        let v6 = self.v6.capacity() * (size_of::<((u128, u8), Slot)>() + 1);
        let texts: usize = self.reasons.texts.iter().map(|t| t.len() + 16).sum();
        let index = self.reasons.index.capacity() * (size_of::<(Arc<str>, u32)>() + 1)
            + self.reasons.texts.capacity() * size_of::<Arc<str>>();
        v4 + v6 + texts + index
    }
}

/// Many entries set at once, the last of equal prefixes winning, as
/// [`Entries::insert_parts`] one by one would. Millions of IPv4 entries go in in the order of
/// their place in the table: in input order every insert is a cache and TLB miss in a table
/// of hundreds of megabytes (6M entries took 2.4 s); in table order the table fills front to
/// back. Entries pushed but not finished are not inserted.
pub struct Bulk<'e> {
    entries: &'e mut Entries,
    v4: Vec<(u64, Slot)>,
}

impl Bulk<'_> {
    /// Adds an entry from its parts, interning its reason at once.
    pub fn push(&mut self, p: Prefix, parts: Parts<'_>) {
        let s = self.entries.new_slot(parts);
        match key(&p) {
            Key::V4(k) => self.v4.push((k, s)),
            Key::V6(k) => {
                self.entries.v6.insert(k, s);
            }
        }
    }

    /// Inserts the IPv4 entries pushed, in table order.
    pub fn finish(self) {
        let Bulk { entries, v4 } = self;
        let table = &mut entries.v4;
        table.reserve(v4.len());
        if v4.len() < 1 << 16 {
            table.extend(v4);
            return;
        }
        // hashbrown's layout: a power of two of buckets, 7/8 of them usable, probing from
        // the hash's low bits. Only where inserts land depends on this, never what the
        // table holds.
        let buckets = (table.capacity() / 7 * 8).next_power_of_two();
        let shift = buckets.trailing_zeros().saturating_sub(16);
        let hasher = table.hasher().clone();
        let pos = |k: u64| (hasher.hash_one(k) as usize & (buckets - 1)) >> shift;
        // A stable counting sort on the top bits of each entry's bucket: two passes, where a
        // comparison sort of millions takes longer than the misses it saves. Stable, so the
        // last of equal prefixes is still inserted last.
        let mut start = vec![0usize; (buckets >> shift) + 1];
        for &(k, _) in &v4 {
            start[pos(k) + 1] += 1;
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        let mut ordered = vec![(0u64, Slot::default()); v4.len()];
        for &(k, s) in &v4 {
            let at = &mut start[pos(k)];
            ordered[*at] = (k, s);
            *at += 1;
        }
        drop(v4);
        table.extend(ordered);
    }
}

impl FromIterator<(Prefix, Entry)> for Entries {
    fn from_iter<I: IntoIterator<Item = (Prefix, Entry)>>(iter: I) -> Self {
        let mut e = Entries::default();
        e.extend(iter);
        e
    }
}

impl Extend<(Prefix, Entry)> for Entries {
    fn extend<I: IntoIterator<Item = (Prefix, Entry)>>(&mut self, iter: I) {
        for (p, e) in iter {
            self.insert(p, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_sixteen_bytes_and_entries_round_trip() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
        assert_eq!(std::mem::size_of::<(u64, Slot)>(), 24);
        let mut l = Entries::default();
        let p4: Prefix = "192.0.2.0/24".parse().unwrap();
        let p6: Prefix = "2001:db8::/48".parse().unwrap();
        let e = Entry {
            action: 3,
            reason: Some("SBL1".into()),
            created: 1_700_000_000,
            expires: Some(1_800_000_000),
        };
        assert_eq!(l.insert(p4, e.clone()), None);
        assert_eq!(
            l.insert(
                p6,
                Entry {
                    reason: None,
                    ..e.clone()
                }
            ),
            None
        );
        assert_eq!(l.get(&p4), Some(e.clone()));
        assert_eq!(l.get(&p6).unwrap().reason, None);
        assert_eq!(l.len(), 2);
        let mut keys: Vec<Prefix> = l.keys().collect();
        keys.sort();
        assert_eq!(keys, vec![p4, p6]);
        assert_eq!(l.remove(&p4), Some(e));
        assert!(!l.contains_key(&p4));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn a_repeated_reason_is_held_once() {
        let mut l = Entries::default();
        for i in 0..1000u32 {
            l.insert_parts(
                Prefix::V4 {
                    addr: 0xF000_0000 | (i << 8),
                    len: 24,
                },
                1,
                Some("SBL123"),
                1,
                None,
            );
        }
        assert_eq!(l.reasons.texts.len(), 1);
        assert_eq!(
            l.get(&Prefix::V4 {
                addr: 0xF000_0100,
                len: 24
            })
            .unwrap()
            .reason
            .as_deref(),
            Some("SBL123")
        );
    }

    #[test]
    fn a_million_ipv4_entries_take_under_a_hundred_bytes_each() {
        let n = 1_000_000u32;
        let mut l = Entries::with_capacity(n as usize);
        for i in 0..n {
            l.insert_parts(
                Prefix::V4 {
                    addr: 0xF000_0000 | i,
                    len: 32,
                },
                1,
                None,
                1,
                None,
            );
        }
        let per = l.heap_bytes() / n as usize;
        assert!(per < 100, "{per} bytes per entry");
    }
}
