use super::*;

fn table(groups: u32) -> V4Table {
    V4Table::new(
        Mmap::anonymous(1 << 26).unwrap(),
        Mmap::anonymous(groups as usize * 512).unwrap(),
        groups,
    )
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
            for _ in 0..200 {
                let a = base | (rng.next() as u32 & 0x0003_ffff);
                assert_eq!(t.lookup(a), reference(&model, a), "step {step} addr {a:#x}");
            }
        }
    }
    // Remove everything: the table must be empty and every group given back.
    for (a, l, k) in model.keys().copied().collect::<Vec<_>>() {
        assert!(t.remove(a, l, k));
    }
    assert_eq!(t.groups_used().0, 0);
    assert!(t.t24().iter().all(|e| e.load(Ordering::Relaxed) == 0));
}

#[test]
fn full_group_table_is_an_error_and_changes_nothing() {
    let mut t = table(1);
    t.set(0x0a00_0001, 32, Kind::Block, 0x2001).unwrap();
    let err = t.set(0x0b00_0001, 32, Kind::Block, 0x2001).unwrap_err();
    assert!(matches!(err, V4Error::GroupsFull { capacity: 1 }));
    assert_eq!(t.len(Kind::Block), 1);
    assert_eq!(t.lookup(0x0b00_0001), 0);
}
