//! `prefilter status --verify`: proves the kernel tables hold exactly what the store says,
//! recomputing every answer without the table code.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use prefilter_common::{action, verdict};

use super::Daemon;
use crate::{
    api,
    policy::{Kind, prefix::Prefix, store},
};

/// What an address must get, from the rule set alone: any allow wins (the longest, for its
/// list id), else the longest block.
fn expected(rules: &HashMap<(Prefix, Kind), u16>, ip: IpAddr) -> u16 {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    for kind in [Kind::Allow, Kind::Block] {
        for len in (0..=max).rev() {
            let Ok(p) = Prefix::new(ip, len) else {
                continue;
            };
            if let Some(&v) = rules.get(&(p, kind)) {
                return if kind == Kind::Allow {
                    verdict::pack(action::ALLOW, verdict::list_id(v))
                } else {
                    v
                };
            }
        }
    }
    0
}

impl Daemon {
    /// Compares store, table bookkeeping and kernel answers; lists the first mismatches.
    pub fn verify(&self) -> api::Verify {
        // The writer's bookkeeping is compared with the store, so hold the writer: nothing
        // may change in between. The kernel answers come from the reader view.
        let st = self.lock();
        let compiled = self.store().compiled(store::now());
        let rules: HashMap<(Prefix, Kind), u16> = compiled
            .iter()
            .filter_map(|c| c.verdict.map(|v| ((c.prefix, c.kind), v)))
            .collect();
        let mut in_tables: HashSet<(Prefix, Kind, u16)> = HashSet::new();
        for (a, l, k, v) in st.filter.v4.rules() {
            in_tables.insert((Prefix::V4 { addr: a, len: l }, k, v));
        }
        for (a, l, k, v) in st.filter.v6.rules() {
            in_tables.insert((Prefix::V6 { addr: a, len: l }, k, v));
        }
        let mut mismatches = Vec::new();
        // Allow verdicts are stored with the ALLOW action, whatever the entry said.
        let norm = |k: Kind, v: u16| {
            if k == Kind::Allow {
                verdict::pack(action::ALLOW, verdict::list_id(v))
            } else {
                v
            }
        };
        let want: HashSet<(Prefix, Kind, u16)> = rules
            .iter()
            .map(|(&(p, k), &v)| (p, k, norm(k, v)))
            .collect();
        for x in want.symmetric_difference(&in_tables).take(10) {
            mismatches.push(api::Mismatch::Rule {
                prefix: x.0.to_string(),
                kind: match x.1 {
                    Kind::Block => api::ListKind::Block,
                    Kind::Allow => api::ListKind::Allow,
                },
                problem: if want.contains(x) {
                    "in the store, not in the tables"
                } else {
                    "in the tables, not in the store"
                }
                .to_owned(),
            });
        }
        let rule_set_differs = want != in_tables;
        let mut checked = 0u64;
        for p in rules.keys().map(|(p, _)| *p) {
            for ip in [p.first(), p.last()] {
                checked += 1;
                let got = match ip {
                    IpAddr::V4(a) => self.kernel().v4.lookup(a.into()),
                    IpAddr::V6(a) => self.kernel().v6.lookup(a.into()),
                };
                let exp = expected(&rules, ip);
                if got != exp && mismatches.len() < 20 {
                    let show = |v: u16| {
                        format!(
                            "{} list {}",
                            action::NAMES[verdict::action(v) as usize],
                            verdict::list_id(v)
                        )
                    };
                    mismatches.push(api::Mismatch::Address {
                        address: ip.to_string(),
                        kernel: show(got),
                        expected: show(exp),
                    });
                }
            }
        }
        api::Verify {
            ok: mismatches.is_empty() && !rule_set_differs,
            store_prefixes: want.len(),
            table_prefixes: in_tables.len(),
            addresses_checked: checked,
            mismatches,
        }
    }
}
