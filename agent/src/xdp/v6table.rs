//! The IPv6 prefix table: the kernel LPM trie, with allow folded in by the agent.
//!
//! IPv6 lists are short (a /32 or /48 per bad network) so the trie's cost is acceptable here.
//! The trie answers "longest prefix", but an allow must beat a longer block: a block nested in
//! an allow is written with the allow's verdict, so the longest match is always right.

use std::collections::BTreeMap;

use aya::maps::{LpmTrie, MapData, MapError, lpm_trie::Key};
use prefilter_common::{action, verdict};

use super::v4table::Kind;

#[derive(Clone, Copy, Default)]
struct Rule {
    block: Option<u16>,
    allow: Option<u16>,
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// The kernel trie as the program reads it, for readers on other threads.
pub struct V6View {
    trie: LpmTrie<MapData, [u8; 16], u16>,
}

impl V6View {
    pub(crate) fn new(trie: LpmTrie<MapData, [u8; 16], u16>) -> Self {
        Self { trie }
    }

    /// What the kernel trie answers for `addr` (0 = no match).
    pub fn lookup(&self, addr: u128) -> u16 {
        self.trie
            .get(&Key::new(128, addr.to_be_bytes()), 0)
            .unwrap_or(0)
    }
}

/// User-space rules plus the kernel trie holding their effective verdicts.
pub struct V6Table {
    trie: LpmTrie<MapData, [u8; 16], u16>,
    rules: BTreeMap<(u128, u8), Rule>,
    counts: [usize; 2],
}

impl V6Table {
    pub(crate) fn new(trie: LpmTrie<MapData, [u8; 16], u16>) -> Self {
        Self {
            trie,
            rules: BTreeMap::new(),
            counts: [0; 2],
        }
    }

    /// Number of rules of `kind`.
    pub fn len(&self, kind: Kind) -> usize {
        self.counts[kind as usize]
    }

    /// Verdict the trie must hold for the prefix, if any.
    fn effective(&self, addr: u128, len: u8) -> Option<u16> {
        for l in (0..=len).rev() {
            if let Some(a) = self.rules.get(&(addr & mask(l), l)).and_then(|r| r.allow) {
                return Some(verdict::pack(action::ALLOW, verdict::list_id(a)));
            }
        }
        self.rules.get(&(addr, len)).and_then(|r| r.block)
    }

    fn sync(&mut self, addr: u128, len: u8) -> Result<(), MapError> {
        let key = Key::new(u32::from(len), addr.to_be_bytes());
        match self.effective(addr, len) {
            Some(v) => self.trie.insert(&key, v, 0),
            None => match self.trie.remove(&key) {
                Err(MapError::KeyNotFound) => Ok(()),
                r => r,
            },
        }
    }

    /// Rewrites every rule strictly inside `addr/len` (after an allow changed).
    fn sync_inner(&mut self, addr: u128, len: u8) -> Result<(), MapError> {
        if len == 128 {
            return Ok(());
        }
        let end = addr | !mask(len);
        let inner: Vec<_> = self
            .rules
            .range((addr, len + 1)..=(end, 128))
            .map(|(k, _)| *k)
            .filter(|(_, l)| *l > len)
            .collect();
        for (a, l) in inner {
            self.sync(a, l)?;
        }
        Ok(())
    }

    /// Sets the rule `addr/len` of `kind`.
    pub fn set(&mut self, addr: u128, len: u8, kind: Kind, v: u16) -> Result<(), MapError> {
        let addr = addr & mask(len);
        let r = self.rules.entry((addr, len)).or_default();
        let slot = match kind {
            Kind::Block => &mut r.block,
            Kind::Allow => &mut r.allow,
        };
        if slot.replace(v).is_none() {
            self.counts[kind as usize] += 1;
        }
        self.sync(addr, len)?;
        if kind == Kind::Allow {
            self.sync_inner(addr, len)?;
        }
        Ok(())
    }

    /// Removes the rule; returns whether it existed.
    pub fn remove(&mut self, addr: u128, len: u8, kind: Kind) -> Result<bool, MapError> {
        let addr = addr & mask(len);
        let Some(r) = self.rules.get_mut(&(addr, len)) else {
            return Ok(false);
        };
        let slot = match kind {
            Kind::Block => &mut r.block,
            Kind::Allow => &mut r.allow,
        };
        if slot.take().is_none() {
            return Ok(false);
        }
        if r.block.is_none() && r.allow.is_none() {
            self.rules.remove(&(addr, len));
        }
        self.counts[kind as usize] -= 1;
        self.sync(addr, len)?;
        if kind == Kind::Allow {
            self.sync_inner(addr, len)?;
        }
        Ok(true)
    }

    /// What the kernel trie answers for `addr` (0 = no match).
    pub fn lookup(&self, addr: u128) -> u16 {
        self.trie
            .get(&Key::new(128, addr.to_be_bytes()), 0)
            .unwrap_or(0)
    }

    /// Every rule, in address order.
    pub fn rules(&self) -> impl Iterator<Item = (u128, u8, Kind, u16)> + '_ {
        self.rules.iter().flat_map(|(&(a, l), r)| {
            [(Kind::Block, r.block), (Kind::Allow, r.allow)]
                .into_iter()
                .filter_map(move |(k, v)| v.map(|v| (a, l, k, v)))
        })
    }
}
