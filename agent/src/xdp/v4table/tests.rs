use super::*;

/// A table over anonymous memory shaped like the kernel maps: `groups` in use at once,
/// `spare` more slots for copy-on-write.
fn table_with(groups: u32, spare: u32) -> V4Table {
    let slots = groups + spare;
    let runs = v4::runs_entries(groups);
    V4Table::new(
        Mmap::anonymous((v4::TBL24_CHUNKS as usize) * size_of::<v4::Chunk24>()).unwrap(),
        Mmap::anonymous(slots as usize * size_of::<v4::Group>()).unwrap(),
        Mmap::anonymous(runs as usize * size_of::<v4::Runs>()).unwrap(),
        groups,
        slots,
    )
}

fn table(groups: u32) -> V4Table {
    table_with(groups, 8)
}

/// The rules as plain data, decided by brute force: an allow wins, else the longest block.
fn reference(rules: &BTreeMap<(u32, u8, Kind), u16>, addr: u32) -> u16 {
    let mut best: Option<(u8, u16)> = None;
    for (&(a, l, k), &v) in rules {
        if addr & mask(l) == a {
            let p = prio(l, k);
            if best.is_none_or(|(bp, _)| p > bp) {
                let v = if k == Kind::Allow {
                    verdict::pack(action::ALLOW, verdict::list_id(v))
                } else {
                    v
                };
                best = Some((p, v));
            }
        }
    }
    best.map_or(0, |(_, v)| v)
}

/// xorshift64*, seeded: reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Decodes a group as the program does, from `runs` stored at index 0.
fn decode(bits: &[u64; 4], runs: &[u16], o: u8) -> u16 {
    group_verdict(bits, 0, ranks(bits), o, |i| runs[i as usize])
}

#[test]
fn group_encoding_round_trips() {
    const D: u16 = verdict::pack(action::DROP, 1);
    const R: u16 = verdict::pack(action::RESET, 2);
    const A: u16 = verdict::pack(action::ALLOW, 3);
    struct Case {
        name: &'static str,
        leaf: u16,
        /// (first octet, count, verdict) written over the leaf in order.
        spans: &'static [(usize, usize, u16)],
        expected: Content,
    }
    let bit = |o: usize| {
        let mut b = [0u64; 4];
        b[o >> 6] |= 1 << (o & 63);
        b
    };
    let or = |a: [u64; 4], b: [u64; 4]| [a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]];
    #[rustfmt::skip]
    let cases = [
        Case { name: "empty /24", leaf: 0, spans: &[], expected: Content::Leaf(0) },
        Case { name: "uniform /24", leaf: D, spans: &[], expected: Content::Leaf(D) },
        Case { name: "long rule equal to its leaf", leaf: D, spans: &[(0, 128, D)], expected: Content::Leaf(D) },
        Case { name: "lone host, first octet", leaf: 0, spans: &[(0, 1, D)], expected: Content::Hosts(0, D, None) },
        Case { name: "lone host, middle", leaf: 0, spans: &[(77, 1, R)], expected: Content::Hosts(77, R, None) },
        Case { name: "lone host, last octet", leaf: 0, spans: &[(255, 1, D)], expected: Content::Hosts(255, D, None) },
        Case { name: "host in a listed /24", leaf: D, spans: &[(77, 1, A)], expected: Content::Span { verdict: A, lo: 77, hi: 77, hosts: [77; 3], bg: D } },
        Case { name: "/29 and a host in a listed /24", leaf: D, spans: &[(8, 1, A), (64, 8, A)], expected: Content::Span { verdict: A, lo: 64, hi: 71, hosts: [8, 64, 64], bg: D } },
        Case { name: "a hole in a /25", leaf: 0, spans: &[(0, 128, D), (7, 1, 0)], expected: Content::Span { verdict: 0, lo: 128, hi: 255, hosts: [7, 128, 128], bg: D } },
        Case { name: "three hosts in a listed /24", leaf: D, spans: &[(1, 1, A), (5, 1, A), (9, 1, A)], expected: Content::Runs(or(or(or(bit(0), bit(1)), or(bit(2), bit(5))), or(bit(6), or(bit(9), bit(10)))), vec![D, A, D, A, D, A, D]) },
        Case { name: "two hosts", leaf: 0, spans: &[(1, 1, D), (2, 1, D)], expected: Content::Hosts(1, D, Some((2, D))) },
        Case { name: "two hosts, first and last octet", leaf: 0, spans: &[(0, 1, R), (255, 1, D)], expected: Content::Hosts(0, R, Some((255, D))) },
        Case { name: "three hosts, two adjacent", leaf: 0, spans: &[(1, 1, D), (2, 1, D), (9, 1, D)], expected: Content::Span { verdict: D, lo: 1, hi: 2, hosts: [9, 1, 1], bg: 0 } },
        Case { name: "three hosts", leaf: 0, spans: &[(1, 1, D), (5, 1, D), (9, 1, D)], expected: Content::Span { verdict: D, lo: 1, hi: 1, hosts: [5, 9, 1], bg: 0 } },
        Case { name: "four hosts, first and last octet", leaf: 0, spans: &[(0, 1, D), (5, 1, D), (9, 1, D), (255, 1, D)], expected: Content::Span { verdict: D, lo: 0, hi: 0, hosts: [5, 9, 255], bg: 0 } },
        Case { name: "/27 and three hosts", leaf: 0, spans: &[(0, 1, D), (64, 32, D), (200, 1, D), (255, 1, D)], expected: Content::Span { verdict: D, lo: 64, hi: 95, hosts: [0, 200, 255], bg: 0 } },
        Case { name: "/25 high half", leaf: 0, spans: &[(128, 128, R)], expected: Content::Span { verdict: R, lo: 128, hi: 255, hosts: [128; 3], bg: 0 } },
        Case { name: "five hosts", leaf: 0, spans: &[(1, 1, D), (3, 1, D), (5, 1, D), (7, 1, D), (9, 1, D)], expected: Content::Runs(or(or(or(bit(0), bit(1)), or(bit(2), bit(3))), or(or(bit(4), bit(5)), or(or(bit(6), bit(7)), or(bit(8), or(bit(9), bit(10)))))), vec![0, D, 0, D, 0, D, 0, D, 0, D, 0]) },
        Case { name: "three hosts, two verdicts", leaf: 0, spans: &[(1, 1, D), (5, 1, R), (9, 1, D)], expected: Content::Runs(or(or(bit(0), bit(1)), or(or(bit(2), bit(5)), or(bit(6), or(bit(9), bit(10))))), vec![0, D, 0, R, 0, D, 0]) },
        Case { name: "two /28s", leaf: 0, spans: &[(0, 16, D), (32, 16, D)], expected: Content::Runs(or(or(bit(0), bit(16)), or(bit(32), bit(48))), vec![D, 0, D, 0]) },
        Case { name: "/25 low half", leaf: 0, spans: &[(0, 128, D)], expected: Content::Span { verdict: D, lo: 0, hi: 127, hosts: [0; 3], bg: 0 } },
        Case { name: "/31 across a word edge", leaf: 0, spans: &[(62, 2, D), (64, 2, R)], expected: Content::Runs(or(or(bit(0), bit(62)), or(bit(64), bit(66))), vec![0, D, R, 0]) },
        Case { name: "hosts on every word edge", leaf: R, spans: &[(63, 1, D), (127, 2, D), (191, 1, A), (255, 1, D)], expected: Content::Runs(or(or(or(bit(0), bit(63)), or(bit(64), bit(127))), or(or(bit(129), bit(191)), or(bit(192), bit(255)))), vec![R, D, R, D, R, A, R, D]) },
    ];
    for c in cases {
        let mut arr = [c.leaf; 256];
        for &(lo, n, v) in c.spans {
            arr[lo..lo + n].fill(v);
        }
        let got = encode(c.leaf, &arr);
        assert_eq!(got, c.expected, "{}", c.name);
        for o in 0..=255u8 {
            let v = match &got {
                Content::Leaf(v) => *v,
                Content::Hosts(h, v, second) => match second {
                    _ if *h == o => *v,
                    Some((h2, v2)) if *h2 == o => *v2,
                    _ => 0,
                },
                Content::Span {
                    verdict,
                    lo,
                    hi,
                    hosts,
                    bg,
                } => {
                    let more = if *bg == 0 { &hosts[..] } else { &hosts[..1] };
                    if (*lo..=*hi).contains(&o) || more.contains(&o) {
                        *verdict
                    } else {
                        *bg
                    }
                }
                Content::Runs(bits, runs) => decode(bits, runs, o),
            };
            assert_eq!(v, arr[o as usize], "{}: octet {o}", c.name);
        }
    }
}

#[test]
fn random_groups_decode_to_their_verdicts() {
    let mut rng = Rng(0x6e0_c0de);
    for _ in 0..2000 {
        let mut arr = [0u16; 256];
        let mut j = 0;
        while j < 256 {
            let n = 1 + (rng.next() % 40) as usize;
            let v = (rng.next() % 4) as u16 * 0x1001;
            arr[j..(j + n).min(256)].fill(v);
            j += n;
        }
        if let Content::Runs(bits, runs) = encode(1, &arr) {
            assert_eq!(
                runs.len(),
                bits.iter().map(|b| b.count_ones() as usize).sum::<usize>()
            );
            for o in 0..=255u8 {
                assert_eq!(decode(&bits, &runs, o), arr[o as usize]);
            }
        }
    }
}

#[test]
fn nested_rules_follow_priority() {
    struct Case {
        rules: Vec<(&'static str, Kind, u16)>,
        addr: &'static str,
        expected: u16,
    }
    let drop = |l| verdict::pack(action::DROP, l);
    #[rustfmt::skip]
    let cases = [
        Case { rules: vec![("10.0.0.0/8", Kind::Block, drop(1)), ("10.1.0.0/16", Kind::Block, drop(2))], addr: "10.1.2.3", expected: drop(2) },
        Case { rules: vec![("10.0.0.0/8", Kind::Block, drop(1)), ("10.1.2.3/32", Kind::Allow, 5)], addr: "10.1.2.3", expected: verdict::pack(action::ALLOW, 5) },
        Case { rules: vec![("10.0.0.0/8", Kind::Allow, 3), ("10.1.2.0/28", Kind::Block, drop(2))], addr: "10.1.2.3", expected: verdict::pack(action::ALLOW, 3) },
        Case { rules: vec![("10.1.2.0/25", Kind::Block, drop(1)), ("10.1.2.0/26", Kind::Block, drop(2))], addr: "10.1.2.100", expected: drop(1) },
        Case { rules: vec![("0.0.0.0/0", Kind::Block, drop(9))], addr: "192.0.2.1", expected: drop(9) },
        Case { rules: vec![("192.0.2.7/32", Kind::Block, drop(4))], addr: "192.0.2.7", expected: drop(4) },
        Case { rules: vec![("192.0.2.7/32", Kind::Block, drop(4))], addr: "192.0.2.8", expected: 0 },
        Case { rules: vec![("192.0.2.7/32", Kind::Block, drop(4)), ("192.0.2.0/24", Kind::Block, drop(5))], addr: "192.0.2.8", expected: drop(5) },
    ];
    for c in cases {
        let mut t = table(4);
        for (p, k, v) in &c.rules {
            let (a, l) = p.split_once('/').unwrap();
            let a: std::net::Ipv4Addr = a.parse().unwrap();
            t.set(a.into(), l.parse().unwrap(), *k, *v).unwrap();
        }
        let a: std::net::Ipv4Addr = c.addr.parse().unwrap();
        assert_eq!(
            t.lookup(a.into()),
            c.expected,
            "{:?} at {}",
            c.rules,
            c.addr
        );
    }
}

#[test]
fn random_operations_match_reference() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut t = table(1024);
    let mut model = BTreeMap::new();
    // A small address space so rules overlap a lot.
    let base = 0x0a00_0000u32;
    for step in 0..4000 {
        let len = [8u8, 12, 16, 20, 23, 24, 25, 27, 28, 30, 31, 32][rng.next() as usize % 12];
        let addr = (base | (rng.next() as u32 & 0x0003_ffff)) & mask(len);
        let kind = if rng.next().is_multiple_of(4) {
            Kind::Allow
        } else {
            Kind::Block
        };
        if rng.next().is_multiple_of(3) {
            let had = model.remove(&(addr, len, kind)).is_some();
            assert_eq!(t.remove(addr, len, kind), had, "step {step}");
        } else {
            let v = verdict::pack(1 + (rng.next() % 6) as u8, (rng.next() % 4000) as u16);
            t.set(addr, len, kind, v).unwrap();
            model.insert((addr, len, kind), v);
        }
        if step % 50 == 0 {
            assert_per_len(&t);
            for _ in 0..200 {
                let a = base | (rng.next() as u32 & 0x0003_ffff);
                assert_eq!(t.lookup(a), reference(&model, a), "step {step} addr {a:#x}");
            }
        }
    }
    // Remove everything: the table must be empty and every group and run given back.
    for (a, l, k) in model.keys().copied().collect::<Vec<_>>() {
        assert!(t.remove(a, l, k));
    }
    assert_eq!(t.groups_used().0, 0);
    assert_eq!(t.runs_used().0, 0);
    assert!(t.intern.is_empty());
    assert_eq!(t.per_len, [0; 33]);
    assert!(
        t.long_leaf.is_empty(),
        "leaves of /24s with longer rules given back"
    );
    assert!(t.t24().iter().all(|e| e.load(Ordering::Relaxed) == 0));
}

#[test]
fn batch_equals_one_by_one() {
    let mut rng = Rng(0xba7c4);
    let span = 0x003f_ffff;
    let rules = random_rules(
        &mut rng,
        3000,
        &[10, 16, 22, 24, 25, 29, 31, 32, 32, 32],
        span,
    );
    let mut one = table(4096);
    for &(a, l, k, v) in &rules {
        one.set(a, l, k, v).unwrap();
    }
    // Into an empty table (built in one pass), then small batches into a filled one (/24s
    // new to longer rules computed from the batch).
    let mut batch = table(4096);
    batch.set_batch(rules[..2600].to_vec()).unwrap();
    batch.set_batch(rules[2600..2800].to_vec()).unwrap();
    batch.set_batch(rules[2800..].to_vec()).unwrap();
    assert_same(&batch, &one, &mut rng, span);
}

/// A delta into a large table: /24s that held no longer rules get several at once (computed
/// from the batch, not searched), others get one beside those they hold.
#[test]
fn a_small_batch_into_a_large_table_equals_one_by_one() {
    let mut rng = Rng(0xde17a);
    let span = 0x003f_ffff;
    let rules = random_rules(&mut rng, 3000, &[16, 22, 24, 25, 29, 32, 32, 32], span);
    let mut small = random_rules(&mut rng, 40, &[26, 32], span);
    for j in 0..20u32 {
        let net = RANDOM_BASE + 0x0100_0000 + (j << 8);
        for (o, l) in [(0x10, 28), (0x11, 32), (0x40, 26), (0x80, 32), (0x81, 32)] {
            let kind = if j % 5 == 0 && o == 0x11 {
                Kind::Allow
            } else {
                Kind::Block
            };
            small.push((net | o, l, kind, verdict::pack(2, (j % 3) as u16)));
        }
    }
    let mut one = table(8192);
    let mut batch = table(8192);
    for &(a, l, k, v) in rules.iter().chain(&small) {
        one.set(a, l, k, v).unwrap();
    }
    batch.set_batch(rules).unwrap();
    batch.set_batch(small.clone()).unwrap();
    assert_same(&batch, &one, &mut rng, span);
    for &(a, ..) in &small {
        for x in (a & mask(24))..=(a | 0xff) {
            assert_eq!(batch.lookup(x), one.lookup(x), "{x:#x}");
        }
    }
}

/// A batch of thousands of /24s (a DNSBL dump: mostly lone hosts and pairs, some with a
/// block and an allow on one host, some under shorter rules) walks the rules in order and
/// decides lone hosts without the 256-verdict arrays: the same table as one by one.
#[test]
fn a_large_batch_equals_one_by_one() {
    let mut rng = Rng(0x51c5);
    let span = 0x00ff_ffff;
    let mut rules = random_rules(&mut rng, 30_000, &[32, 32, 32, 32, 32, 32, 31, 27], span);
    rules.extend(random_rules(&mut rng, 300, &[12, 16, 20, 24], span));
    // Beyond the span, in /24s nothing else covers: one host of each kind (the allow wins),
    // and a host given twice (the last verdict wins) beside another.
    let (h, h2) = (RANDOM_BASE + 0x0100_0005, RANDOM_BASE + 0x0100_0107);
    rules.push((h, 32, Kind::Allow, verdict::pack(2, 1)));
    rules.push((h, 32, Kind::Block, verdict::pack(2, 2)));
    rules.push((h2, 32, Kind::Block, verdict::pack(2, 1)));
    rules.push((h2 + 1, 32, Kind::Block, verdict::pack(2, 1)));
    rules.push((h2, 32, Kind::Block, verdict::pack(2, 2)));
    let mut one = table(1 << 16);
    for &(a, l, k, v) in &rules {
        one.set(a, l, k, v).unwrap();
    }
    let mut batch = table(1 << 16);
    batch.set_batch(rules[..20_000].to_vec()).unwrap();
    batch.set_batch(rules[20_000..].to_vec()).unwrap();
    assert_same(&batch, &one, &mut rng, span);
    for &(a, ..) in &rules {
        for x in [a, a ^ 1, a | 0xff] {
            assert_eq!(batch.lookup(x), one.lookup(x), "{x:#x}");
        }
    }
    assert_eq!(batch.lookup(h), verdict::pack(action::ALLOW, 1));
    assert_eq!(batch.lookup(h2), verdict::pack(2, 2));
    assert_eq!(batch.lookup(h2 + 1), verdict::pack(2, 1));
    assert_eq!(batch.lookup(h2 + 2), 0);
}

/// The base of the addresses `random_rules` draws.
const RANDOM_BASE: u32 = 0xc000_0000;

/// `n` rules under RANDOM_BASE (`span` the varying address bits) of the given lengths, one in
/// five an allow, three verdicts.
fn random_rules(rng: &mut Rng, n: usize, lens: &[u8], span: u32) -> Vec<(u32, u8, Kind, u16)> {
    (0..n)
        .map(|_| {
            let len = lens[rng.next() as usize % lens.len()];
            let addr = (RANDOM_BASE | (rng.next() as u32 & span)) & mask(len);
            let kind = if rng.next().is_multiple_of(5) {
                Kind::Allow
            } else {
                Kind::Block
            };
            (addr, len, kind, verdict::pack(2, (rng.next() % 3) as u16))
        })
        .collect()
}

/// The per-length rule counts agree with the rules.
fn assert_per_len(t: &V4Table) {
    let mut want = [0u32; 33];
    for &(_, l) in t.rules.keys() {
        want[usize::from(l)] += 1;
    }
    assert_eq!(t.per_len, want, "rules per prefix length");
}

/// Both tables hold the same rules, answer the same and use as many groups.
fn assert_same(a: &V4Table, b: &V4Table, rng: &mut Rng, span: u32) {
    assert_per_len(a);
    assert_per_len(b);
    assert_eq!(a.len(Kind::Block), b.len(Kind::Block));
    assert_eq!(a.len(Kind::Allow), b.len(Kind::Allow));
    assert!(a.rules().eq(b.rules()));
    for _ in 0..20_000 {
        let addr = RANDOM_BASE | (rng.next() as u32 & span);
        assert_eq!(a.lookup(addr), b.lookup(addr), "{addr:#x}");
    }
    assert_eq!(a.groups_used(), b.groups_used());
}

#[test]
fn lone_hosts_need_no_group_and_groups_share_their_runs() {
    let d = verdict::pack(action::DROP, 7);
    let mut t = table(64);
    // 1000 hosts, each alone in its /24: TBL24 entries only.
    for i in 0..1000u32 {
        t.set(0x0a00_0000 | i << 8 | (i & 0xff), 32, Kind::Block, d)
            .unwrap();
    }
    assert_eq!(t.groups_used().0, 0);
    assert_eq!(t.lookup(0x0a00_0505), d);
    assert_eq!(t.lookup(0x0a00_0506), 0);
    // Inside a listed /16 (another list), one or two hosts per /24 need no group either;
    // three take one each, all with the same runs (leaf, host, leaf, ...) stored once.
    let mut t = table(64);
    let l = verdict::pack(action::RESET, 8);
    t.set(0x0b00_0000, 16, Kind::Block, l).unwrap();
    for i in 0..50u32 {
        t.set(0x0b00_0000 | i << 8 | 9, 32, Kind::Block, d).unwrap();
        t.set(0x0b00_0000 | i << 8 | 19, 32, Kind::Block, d)
            .unwrap();
    }
    assert_eq!(t.groups_used().0, 0);
    for i in 0..50u32 {
        t.set(0x0b00_0000 | i << 8 | 29, 32, Kind::Block, d)
            .unwrap();
    }
    assert_eq!(t.groups_used().0, 50);
    assert_eq!(t.runs_used().0, 7);
    assert_eq!(t.lookup(0x0b00_0309), d);
    assert_eq!(t.lookup(0x0b00_031d), d);
    assert_eq!(t.lookup(0x0b00_0308), l);
    assert_eq!(t.lookup(0x0b00_030a), l);
}

#[test]
fn a_rewritten_group_goes_to_a_fresh_slot() {
    let d = verdict::pack(action::DROP, 1);
    let mut t = table_with(2, 4);
    // Five hosts: up to four of one verdict would fit in the TBL24 entry.
    for o in [20, 22, 24, 26, 28] {
        t.set(0x0a00_0000 | o, 32, Kind::Block, d).unwrap();
    }
    let slot = |t: &V4Table| t.t24()[0x0a0000].load(Ordering::Relaxed) as u32 & v4::GROUP_MASK;
    let mut seen = vec![slot(&t)];
    // Each change writes a new group; the old slot is reused only after every other.
    for o in 3..12u32 {
        t.set(0x0a00_0000 | o, 32, Kind::Block, d).unwrap();
        let s = slot(&t);
        assert!(
            !seen[seen.len().saturating_sub(5)..].contains(&s),
            "slot {s} reused too early: {seen:?}"
        );
        seen.push(s);
        assert_eq!(t.lookup(0x0a00_0000 | o), d);
    }
    assert_eq!(t.groups_used().0, 1);
}

#[test]
fn full_group_table_is_an_error_and_changes_nothing() {
    let mut t = table(1);
    for o in [1, 3, 5, 7, 9] {
        t.set(0x0a00_0000 | o, 32, Kind::Block, 0x2001).unwrap();
    }
    // Up to four hosts of one verdict need no group.
    for o in [1, 3, 5, 7] {
        t.set(0x0b00_0000 | o, 32, Kind::Block, 0x2001).unwrap();
    }
    assert_eq!(t.slot_kind(0x0b00_0000), SlotKind::Host);
    let err = t.set(0x0b00_0009, 32, Kind::Block, 0x2001).unwrap_err();
    assert!(matches!(err, V4Error::GroupsFull { capacity: 1 }));
    assert_eq!(t.len(Kind::Block), 9);
    assert_eq!(t.lookup(0x0b00_0009), 0);
    for o in [1, 3, 5, 7] {
        assert_eq!(t.lookup(0x0b00_0000 | o), 0x2001);
    }
    assert_eq!(t.lookup(0x0b00_0002), 0);
    assert_eq!(t.rules().count(), 9);
    // Inside a listed /24 two allowed hosts need no group; a third is refused and the /24
    // keeps its verdict there (its leaf went aside for the longer rule and came back), and
    // stays writable.
    t.set(0x0c00_0000, 24, Kind::Block, 0x2001).unwrap();
    t.set(0x0c00_0005, 32, Kind::Allow, 0x2002).unwrap();
    t.set(0x0c00_0007, 32, Kind::Allow, 0x2002).unwrap();
    let err = t.set(0x0c00_0009, 32, Kind::Allow, 0x2002).unwrap_err();
    assert!(matches!(err, V4Error::GroupsFull { capacity: 1 }));
    assert_eq!(t.lookup(0x0c00_0009), 0x2001);
    // An allow rule's verdict says allow, whatever action it was given.
    assert_eq!(t.lookup(0x0c00_0005), 0x7002);
    assert_eq!(t.lookup(0x0c00_00ff), 0x2001);
    t.set(0x0c00_0000, 24, Kind::Block, 0x2003).unwrap();
    assert_eq!(t.lookup(0x0c00_0009), 0x2003);
    assert_eq!(t.lookup(0x0c00_0007), 0x7002);
    assert!(t.remove(0x0c00_0000, 24, Kind::Block));
    assert_eq!(t.lookup(0x0c00_0009), 0);
    assert_eq!(t.lookup(0x0c00_0005), 0x7002);
}

#[test]
fn a_short_rule_that_needs_a_group_in_a_full_table_is_undone() {
    let (d, r) = (
        verdict::pack(action::DROP, 1),
        verdict::pack(action::RESET, 2),
    );
    let mut t = table(1);
    for o in [1, 3, 5, 7, 9] {
        t.set(0x0a00_0000 | o, 32, Kind::Block, d).unwrap();
    }
    for o in [1, 3, 5] {
        t.set(0x0b00_0000 | o, 32, Kind::Block, d).unwrap();
    }
    // The /24 around the hosts would need a group (reset, drop, reset, ...): none is left.
    let err = t.set(0x0b00_0000, 24, Kind::Block, r).unwrap_err();
    assert!(matches!(err, V4Error::GroupsFull { capacity: 1 }));
    assert_eq!(t.rules().count(), 8);
    assert_eq!(t.lookup(0x0b00_0001), d);
    assert_eq!(t.lookup(0x0b00_0006), 0);
    // A covering rule that changes nothing inside a group still applies.
    t.set(0x0a00_0000, 24, Kind::Block, d).unwrap();
    assert_eq!(t.lookup(0x0a00_0007), d);
    assert_eq!(
        t.groups_used().0,
        0,
        "uniform again: the group is given back"
    );
}

#[test]
fn batch_removal_equals_one_by_one() {
    let mut rng = Rng(0x0dd_ba7c4);
    let span = 0x00ff_ffff;
    // Nested and overlapping: allows hiding blocks, long rules beside leaves.
    let lens = [8, 12, 16, 20, 22, 24, 24, 25, 29, 31, 32, 32];
    let rules = random_rules(&mut rng, 4000, &lens, span);
    let mut one = table(8192);
    let mut batch = table(8192);
    one.set_batch(rules.clone()).unwrap();
    batch.set_batch(rules.clone()).unwrap();
    // A small batch (one search per rule), a large one (one pass), then the rest.
    let (a, b) = (rules.len() / 20, rules.len() * 2 / 3);
    for part in [&rules[..a], &rules[a..b], &rules[b..]] {
        for &(a, l, k, _) in part {
            one.remove(a, l, k);
        }
        batch.remove_batch(part.iter().map(|&(a, l, k, _)| (a, l, k)));
        assert_same(&batch, &one, &mut rng, span);
    }
    assert_eq!(batch.runs_used().0, 0);
    assert!(batch.t24().iter().all(|e| e.load(Ordering::Relaxed) == 0));
}

/// A batch that runs out of groups keeps what fit; a /24 that did not fit loses its longer
/// rules and falls back to its leaf (here a listed /24), and stays writable.
#[test]
fn a_batch_past_the_group_limit_keeps_the_rest() {
    let (d, r) = (
        verdict::pack(action::DROP, 1),
        verdict::pack(action::RESET, 2),
    );
    let mut t = table(1);
    let mut rules = vec![(0x0c00_0000, 24, Kind::Block, d)];
    // Five hosts in each of two /24s: a group each, and there is room for one.
    for net in [0x0b00_0000u32, 0x0c00_0000] {
        for o in [1, 3, 5, 7, 9] {
            rules.push((net | o, 32, Kind::Block, r));
        }
    }
    let err = t.set_batch(rules).unwrap_err();
    assert!(matches!(err, V4Error::GroupsFull { capacity: 1 }));
    assert_eq!(t.groups_used().0, 1);
    let (kept, lost) = if t.lookup(0x0b00_0001) == r {
        (0x0b00_0000, 0x0c00_0000)
    } else {
        (0x0c00_0000, 0x0b00_0000)
    };
    assert_eq!(t.lookup(kept | 3), r);
    assert_eq!(t.lookup(kept | 2), if kept == 0x0c00_0000 { d } else { 0 });
    let leaf = if lost == 0x0c00_0000 { d } else { 0 };
    for o in [1, 2, 3, 200] {
        assert_eq!(t.lookup(lost | o), leaf, "{:#x}", lost | o);
    }
    assert_eq!(t.slot_kind(lost), SlotKind::Leaf);
    t.set(0x0c00_0000, 24, Kind::Block, r).unwrap();
    assert_eq!(t.lookup(0x0c00_0080), r);
}
