//! The IPv6 table (levels /16, /32, /48, /56, /64, /128 plus odd-length entries between)
//! against a brute-force longest match, through random additions and removals of nested
//! prefixes of every length, read back from the kernel maps as the program walks them and
//! through the program itself; then at a real list's size (1M prefixes) with memory and a
//! sample of lookups.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::Instant,
};

use prefilter::xdp::{Filter, Options, v4table::Kind};
use prefilter_common::{action, v6, verdict};
use prefilter_tests::{Rng, packet::Frame, require_root};

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    }
}

/// What the table must answer: an allow anywhere above wins, else the longest block.
fn expected(rules: &HashMap<(u128, u8, Kind), u16>, a: u128) -> u16 {
    let covering = |kind: Kind| {
        rules
            .iter()
            .filter(|((n, l, k), _)| *k == kind && a & mask(*l) == *n)
            .max_by_key(|((_, l, _), _)| *l)
            .map(|(_, v)| *v)
    };
    if let Some(v) = covering(Kind::Allow) {
        return verdict::pack(action::ALLOW, verdict::list_id(v));
    }
    covering(Kind::Block).unwrap_or(0)
}

/// Runs a SYN from `a` through the program: XDP_DROP (1) or XDP_PASS (2).
fn program(f: &Filter, a: u128) -> u32 {
    let frame = Frame::syn(
        IpAddr::V6(Ipv6Addr::from(a)),
        "2001:db8::1".parse().unwrap(),
        25,
    )
    .build();
    f.test_run(&frame, 1).expect("test run").action
}

const LENGTHS: &[u8] = &[
    0, 8, 12, 15, 16, 20, 23, 24, 29, 30, 31, 32, 33, 36, 39, 40, 44, 47, 48, 49, 52, 55, 56, 60,
    63, 64, 65, 80, 96, 112, 127, 128,
];

/// An address in 2001:db8::/32 from a small space (a few /48s, /64s and hosts), so that
/// random prefixes nest, repeat and share level entries.
fn near(rng: &mut Rng) -> u128 {
    let base = 0x2001_0db8u128 << 96;
    let s48 = u128::from(rng.below(4)) << 80;
    let s64 = u128::from(rng.below(3)) << 64;
    let host = match rng.below(3) {
        0 => 0,
        1 => u128::from(rng.below(4)),
        _ => u128::from(rng.next()),
    };
    base | s48 | s64 | host
}

/// Sets rule `net/len` of `kind` in the table and the reference, with one of `lists`
/// random list ids (drop for a block).
fn set_random(
    f: &mut Filter,
    rules: &mut HashMap<(u128, u8, Kind), u16>,
    rng: &mut Rng,
    (net, len, kind): (u128, u8, Kind),
    lists: u64,
) {
    let act = if kind == Kind::Allow {
        action::ALLOW
    } else {
        action::DROP
    };
    let v = verdict::pack(act, 1 + rng.below(lists) as u16);
    f.v6.set(net, len, kind, v).expect("set");
    rules.insert((net, len, kind), v);
}

#[test]
fn random_changes_match_a_longest_match_reference() {
    require_root();
    let mut rng = Rng(0x6a6);
    let mut f = Filter::load(&Options::default()).expect("load");
    let mut rules: HashMap<(u128, u8, Kind), u16> = HashMap::new();
    for round in 0..60 {
        for _ in 0..15 {
            let len = LENGTHS[rng.below(LENGTHS.len() as u64) as usize];
            let net = near(&mut rng) & mask(len);
            let kind = if rng.below(5) == 0 {
                Kind::Allow
            } else {
                Kind::Block
            };
            if rng.below(3) == 0 {
                // Remove something that exists, or a miss that must change nothing.
                let existing: Vec<_> = rules.keys().copied().collect();
                let (n, l, k) = if !existing.is_empty() && rng.below(4) != 0 {
                    existing[rng.below(existing.len() as u64) as usize]
                } else {
                    (net, len, kind)
                };
                let had = rules.remove(&(n, l, k)).is_some();
                assert_eq!(f.v6.remove(n, l, k).expect("remove"), had);
            } else {
                set_random(&mut f, &mut rules, &mut rng, (net, len, kind), 200);
            }
        }
        top_flags_64s(&f, &rules, &format!("round {round}"));
        // Every rule's first and last address, and random ones near them.
        let mut sample: Vec<u128> = rules
            .keys()
            .flat_map(|&(n, l, _)| [n, n | !mask(l)])
            .collect();
        sample.extend((0..200).map(|_| near(&mut rng)));
        for &a in &sample {
            assert_eq!(
                f.v6.lookup(a),
                expected(&rules, a),
                "round {round}: {} with rules {:?}",
                Ipv6Addr::from(a),
                rules
                    .iter()
                    .map(|((n, l, k), v)| format!("{}/{l} {k:?} {v:#x}", Ipv6Addr::from(*n)))
                    .collect::<Vec<_>>()
            );
        }
        for &a in sample.iter().step_by(7) {
            let want = if verdict::action(expected(&rules, a)) == action::DROP {
                1
            } else {
                2
            };
            assert_eq!(program(&f, a), want, "round {round}: {}", Ipv6Addr::from(a));
        }
    }
    remove_all(&mut f, &rules);
    assert_eq!(f.v6.lookup(0x2001_0db8u128 << 96), 0);
}

/// A random address in 2000::/3 (global unicast).
fn in_2000_3(rng: &mut Rng) -> u128 {
    let r = u128::from(rng.next()) << 64 | u128::from(rng.next());
    (r >> 3) | 1u128 << 125
}

/// A million random prefixes of the lengths real lists have, in 2000::/3, with the limit
/// raised as the README says: loads, answers like the reference, and its kernel memory.
#[test]
fn a_million_prefixes() {
    require_root();
    let mut rng = Rng(0x1e6);
    let opts = Options {
        // Random prefixes share no /32: a marker each, besides the entries of /44, /52, /60.
        v6_entries: 1 << 22,
        ..Options::default()
    };
    let mut f = Filter::load(&opts).expect("load");
    let before = f.map_memlock().expect("map memory");
    let mut rules: HashMap<(u128, u8), u16> = HashMap::with_capacity(1 << 20);
    while rules.len() < 1_000_000 {
        // Mostly /32 /48 /56 /64 /128, a few of the lengths between.
        let len = [
            32, 32, 32, 48, 48, 48, 48, 48, 48, 56, 56, 64, 64, 64, 64, 64, 128, 128, 128, 29, 36,
            44, 52, 60, 96,
        ][rng.below(25) as usize];
        let a = in_2000_3(&mut rng) & mask(len);
        rules.insert((a, len), verdict::pack(action::DROP, u16::from(len)));
    }
    let t = Instant::now();
    for (&(a, l), &v) in &rules {
        f.v6.set(a, l, Kind::Block, v)
            .expect("the raised limit holds them");
    }
    let load = t.elapsed();
    let memlock = f.map_memlock().expect("map memory") - before;
    eprintln!(
        "1M IPv6 prefixes loaded in {:.2} s; entries per level /16 /32 /48 /56 /64 /128 odd: {:?}; {:.1} MiB of map memory",
        load.as_secs_f64(),
        f.v6.entries(),
        memlock as f64 / f64::from(1 << 20)
    );
    let expected = |a: u128| {
        [128u8, 96, 64, 60, 56, 52, 48, 44, 36, 32, 29]
            .iter()
            .find_map(|&l| rules.get(&(a & mask(l), l)).copied())
            .unwrap_or(0)
    };
    let inside: Vec<u128> = rules
        .keys()
        .take(20_000)
        .map(|&(a, l)| a | (u128::from(rng.next()) & !mask(l)))
        .collect();
    let random: Vec<u128> = (0..20_000).map(|_| in_2000_3(&mut rng)).collect();
    for &a in inside.iter().chain(&random) {
        assert_eq!(f.v6.lookup(a), expected(a), "{}", Ipv6Addr::from(a));
    }
    for &a in inside.iter().chain(&random).step_by(20) {
        let want = if expected(a) == 0 { 2 } else { 1 };
        assert_eq!(program(&f, a), want, "{}", Ipv6Addr::from(a));
    }
}

/// Past `[limits] v6_entries`: a clear error naming the limit, the rule that did not fit is
/// not half-written, and every rule accepted before still answers.
#[test]
fn full_table_refuses_cleanly() {
    require_root();
    let opts = Options {
        v6_entries: 1000,
        ..Options::default()
    };
    let mut f = Filter::load(&opts).expect("load");
    let mut rng = Rng(0xf011);
    let mut accepted: HashMap<(u128, u8, Kind), u16> = HashMap::new();
    let err = loop {
        let a = in_2000_3(&mut rng) & mask(48);
        let v = verdict::pack(action::DROP, 1 + rng.below(100) as u16);
        match f.v6.set(a, 48, Kind::Block, v) {
            Ok(()) => {
                accepted.insert((a, 48, Kind::Block), v);
            }
            Err(e) => break (a, e),
        }
        assert!(
            accepted.len() <= 1000,
            "no limit at {} prefixes",
            accepted.len()
        );
    };
    let msg = err.1.to_string();
    assert!(
        msg.contains("IPv6 table full") && msg.contains("v6_entries"),
        "{msg}"
    );
    assert_eq!(f.v6.len(Kind::Block), accepted.len());
    assert_eq!(f.v6.lookup(err.0), 0, "the refused prefix answers");
    assert!(f.v6.fullest() <= 1000);
    let answers = |f: &Filter, accepted: &HashMap<(u128, u8, Kind), u16>| {
        for (&(a, _, _), &v) in accepted {
            assert_eq!(f.v6.lookup(a | 0x1234), v, "{}", Ipv6Addr::from(a));
            assert_eq!(program(f, a | 0x1234), 1);
        }
    };
    answers(&f, &accepted);

    // Random /48s are each alone in their /32, held in its slot but counted as an entry:
    // with one entry free, a /64 inside one of them fits, the /48 taking its own slot back.
    assert_eq!(f.v6.held_in_32(), accepted.len());
    let mut lone = accepted.keys().map(|&(a, _, _)| a);
    let (gone, host) = (lone.next().unwrap(), lone.next().unwrap());
    assert!(f.v6.remove(gone, 48, Kind::Block).expect("remove"));
    accepted.remove(&(gone, 48, Kind::Block));
    let sub = host | 7 << 64;
    let v64 = verdict::pack(action::DROP, 999);
    f.v6.set(sub, 64, Kind::Block, v64)
        .expect("room for the /64");
    accepted.insert((sub, 64, Kind::Block), v64);
    assert_eq!(f.v6.held_in_32(), accepted.len() - 2);
    assert!(f.v6.fullest() <= 1000);
    answers(&f, &accepted);
    assert_eq!(f.v6.lookup(host | 1), accepted[&(host, 48, Kind::Block)]);
}

/// Prefixes of the lengths between the levels (/17–/23, /33–/39, /65–/127) are entries of
/// their own, probed at the lengths in use: nested in one another and in level entries,
/// each source gets its longest match through the program; a ninth distinct /65–/127
/// length is refused by name with nothing written, and fits once a length is given up.
#[test]
fn odd_lengths_nest_and_their_number_is_bounded() {
    require_root();
    let mut f = Filter::load(&Options::default()).expect("load");
    let a = |s: &str| u128::from(s.parse::<Ipv6Addr>().unwrap());
    let mut rules: HashMap<(u128, u8, Kind), u16> = HashMap::new();
    let drop = |l: u16| verdict::pack(action::DROP, l);
    let allow = verdict::pack(action::ALLOW, 9);
    let base = a("2001:db8:4000::");
    // Nested odd prefixes in one /32 and a /48 level entry between them, an allow hole in
    // a /96, and a /20 above all of it.
    let nest: &[(u128, u8, Kind, u16)] = &[
        (base & mask(20), 20, Kind::Block, drop(1)),
        (base, 34, Kind::Block, drop(2)),
        (base, 36, Kind::Block, drop(3)),
        (base | 5 << 80, 48, Kind::Block, drop(4)),
        (base | 5 << 80 | 1 << 64, 80, Kind::Block, drop(5)),
        (base | 5 << 80 | 1 << 64, 96, Kind::Allow, allow),
        (
            base | 5 << 80 | 1 << 64 | 1 << 16,
            112,
            Kind::Block,
            drop(6),
        ),
        (base | 3 << 80, 127, Kind::Block, drop(7)),
    ];
    for &(n, l, k, v) in nest {
        f.v6.set(n, l, k, v).expect("set");
        rules.insert((n, l, k), v);
    }
    // Each prefix's first, second, middle and last address, and the addresses just past
    // it.
    let mut probes: Vec<u128> = nest
        .iter()
        .flat_map(|&(n, l, _, _)| {
            let last = n | !mask(l);
            [
                n,
                n + 1,
                n | 1u128 << (127 - l),
                last,
                last.wrapping_add(1),
                n.wrapping_sub(1),
            ]
        })
        .collect();
    probes.push(a("2001:db8:8000::1"));
    check(&f, &rules, &probes, "nested odd prefixes");

    // Eight /65–/127 lengths in use (80, 96, 112, 127 above, four more), then a ninth.
    let host = a("2001:db8:9::");
    for l in [70u8, 90, 100, 120] {
        f.v6.set(host, l, Kind::Block, drop(u16::from(l)))
            .expect("set");
        rules.insert((host, l, Kind::Block), drop(u16::from(l)));
    }
    let before = f.v6.entries();
    let err =
        f.v6.set(host | 1 << 40, 88, Kind::Block, drop(88))
            .expect_err("a ninth /65–/127 length");
    let msg = err.to_string();
    assert!(msg.contains("/88") && msg.contains("/65 and /127"), "{msg}");
    assert_eq!(
        f.v6.entries(),
        before,
        "nothing written for the refused prefix"
    );
    probes.extend([host | 1, host | 1 << 40 | 1, host | 1 << 60]);
    check(&f, &rules, &probes, "after the refusal");
    // One length given up makes room for it.
    assert!(f.v6.remove(host, 70, Kind::Block).expect("remove"));
    rules.remove(&(host, 70, Kind::Block));
    f.v6.set(host | 1 << 40, 88, Kind::Block, drop(88))
        .expect("room for /88");
    rules.insert((host | 1 << 40, 88, Kind::Block), drop(88));
    check(&f, &rules, &probes, "a length given up, /88 in");
    remove_all(&mut f, &rules);
}

/// Removes every rule of `rules`: nothing may be left behind in any level or odd entry.
fn remove_all(f: &mut Filter, rules: &HashMap<(u128, u8, Kind), u16>) {
    for &(n, l, k) in rules.keys() {
        assert!(f.v6.remove(n, l, k).expect("remove"));
    }
    assert_eq!(
        f.v6.entries(),
        [0; 7],
        "entries left after removing every rule"
    );
}

/// Checks every address of `probes` against the reference, in the kernel maps and through
/// the program.
fn check(f: &Filter, rules: &HashMap<(u128, u8, Kind), u16>, probes: &[u128], step: &str) {
    for &a in probes {
        let want = expected(rules, a);
        assert_eq!(f.v6.lookup(a), want, "{step}: {}", Ipv6Addr::from(a));
        let act = if verdict::action(want) == action::DROP {
            1
        } else {
            2
        };
        assert_eq!(
            program(f, a),
            act,
            "{step}: {} through the program",
            Ipv6Addr::from(a)
        );
    }
}

/// A /48 alone in its /32 lives in the /32's slot (one probe instead of two): it moves out
/// when anything else appears inside the /32 (another /48, something inside it, an
/// odd-length prefix) and back in when that goes, answering right at every step; then random changes
/// confined to two /48s, so that the /32 keeps passing through "one /48 alone".
#[test]
fn a_48_alone_in_its_32_is_held_by_its_slot() {
    require_root();
    let mut f = Filter::load(&Options::default()).expect("load");
    let a = |s: &str| u128::from(s.parse::<Ipv6Addr>().unwrap());
    let probes: Vec<u128> = [
        "2001:db8:1::7",
        "2001:db8:1:5::9",
        "2001:db8:1:100::1",
        "2001:db8:1:ff::1",
        "2001:db8:2::7",
        "2001:db8::7",
        "2001:db8:4000::1",
        "2001:db8:ffff::1",
        "2001:db9::1",
    ]
    .iter()
    .map(|s| a(s))
    .collect();
    let mut rules: HashMap<(u128, u8, Kind), u16> = HashMap::new();
    let drop = |l: u16| verdict::pack(action::DROP, l);
    let allow = verdict::pack(action::ALLOW, 9);
    // (add?, prefix, length, kind, verdict, entries in use, /48s held by their /32). A held
    // /48 still counts as an entry of `v6_entries`.
    let steps: &[(bool, &str, u8, Kind, u16, usize, usize)] = &[
        // Alone: held in the /32's slot.
        (true, "2001:db8:1::", 48, Kind::Block, drop(1), 2, 1),
        // A second /48: both get slots of their own, and back.
        (true, "2001:db8:2::", 48, Kind::Block, drop(2), 3, 0),
        (false, "2001:db8:2::", 48, Kind::Block, 0, 2, 1),
        // Something inside it, at each longer level.
        (true, "2001:db8:1:100::", 56, Kind::Block, drop(3), 3, 0),
        (false, "2001:db8:1:100::", 56, Kind::Block, 0, 2, 1),
        (true, "2001:db8:1:5::", 64, Kind::Block, drop(4), 3, 0),
        (false, "2001:db8:1:5::", 64, Kind::Block, 0, 2, 1),
        (true, "2001:db8:1:ff::1", 128, Kind::Block, drop(5), 2, 0),
        (false, "2001:db8:1:ff::1", 128, Kind::Block, 0, 2, 1),
        // An odd-length prefix (/33–/39: an HX entry of its own) in the /32.
        (true, "2001:db8:4000::", 36, Kind::Block, drop(6), 3, 0),
        (false, "2001:db8:4000::", 36, Kind::Block, 0, 2, 1),
        // One of /65–/127 (an HH entry of its own) inside the /48.
        (true, "2001:db8:1:ff::", 96, Kind::Block, drop(10), 2, 0),
        (false, "2001:db8:1:ff::", 96, Kind::Block, 0, 2, 1),
        // A /47 expands into two /48s.
        (true, "2001:db8::", 47, Kind::Block, drop(7), 3, 0),
        (false, "2001:db8::", 47, Kind::Block, 0, 2, 1),
        // The /32's own rule, then an allow over it all: the held /48's verdict changes in
        // place.
        (true, "2001:db8::", 32, Kind::Block, drop(8), 2, 1),
        (true, "2001:db8::", 32, Kind::Allow, allow, 2, 1),
        (false, "2001:db8::", 32, Kind::Allow, 0, 2, 1),
        (false, "2001:db8:1::", 48, Kind::Block, 0, 1, 0),
        (false, "2001:db8::", 32, Kind::Block, 0, 0, 0),
    ];
    for &(add, net, len, kind, v, used, held) in steps {
        let n = a(net);
        if add {
            f.v6.set(n, len, kind, v).expect("set");
            rules.insert((n, len, kind), v);
        } else {
            assert!(f.v6.remove(n, len, kind).expect("remove"));
            rules.remove(&(n, len, kind));
        }
        let what = format!(
            "{} {net}/{len} {kind:?}",
            if add { "add" } else { "remove" }
        );
        check(&f, &rules, &probes, &what);
        top_flags_64s(&f, &rules, &what);
        assert_eq!(f.v6.fullest(), used, "{what}: entries in use");
        assert_eq!(f.v6.held_in_32(), held, "{what}: /48s held by their /32");
    }
    assert_eq!(f.v6.entries(), [0; 7]);

    // Random changes among a few prefixes of two /48s.
    let pool: Vec<(&str, u8)> = vec![
        ("2001:db8:1::", 48),
        ("2001:db8:2::", 48),
        ("2001:db8::", 32),
        ("2001:db8:4000::", 36),
        ("2001:db8::", 47),
        ("2001:db8:1:100::", 56),
        ("2001:db8:1:5::", 64),
        ("2001:db8:1:ff::1", 128),
    ];
    let mut rng = Rng(0x1e48);
    for i in 0..400 {
        let (net, len) = pool[rng.below(pool.len() as u64) as usize];
        let n = a(net);
        let kind = if rng.below(6) == 0 {
            Kind::Allow
        } else {
            Kind::Block
        };
        // Removals as often as additions keep the /32 near empty.
        if rng.below(2) == 0 {
            let had = rules.remove(&(n, len, kind)).is_some();
            assert_eq!(f.v6.remove(n, len, kind).expect("remove"), had);
        } else {
            set_random(&mut f, &mut rules, &mut rng, (n, len, kind), 50);
        }
        check(&f, &rules, &probes, &format!("random change {i}"));
        top_flags_64s(&f, &rules, &format!("random change {i}"));
    }
}

/// TOP flags a /16 holding a /64 (or a /57–/63, written as /64s), and only such a /16:
/// the program loads the /64's bucket early there and nowhere else. The callers' rules of
/// /57–/64 all lie in 2001::/16.
fn top_flags_64s(f: &Filter, rules: &HashMap<(u128, u8, Kind), u16>, step: &str) {
    let want = rules.keys().any(|&(_, l, _)| (57..=64).contains(&l));
    let top = f.v6.top_entry(0x2001 << 112);
    assert_eq!(top & v6::inside(4) != 0, want, "{step}: TOP's /64 flag");
}

/// /128s are found by their whole address, however many share a home bucket: hosts with
/// the same low 64 bits under other /64s of the /32, or the same /64 with other low bits,
/// placed into one probe sequence (chosen for it: HH's home is a hash of both halves),
/// listed and unlisted side by side; one removed from the middle of the sequence (the
/// lookup goes on past the deleted slot), put back, changed in place by an allow above it.
#[test]
fn hosts_sharing_a_bucket_are_told_apart() {
    require_root();
    let opts = Options::default();
    let bits = prefilter_common::v6::hh_bits(opts.v6_entries);
    let mut f = Filter::load(&opts).expect("load");
    let hi0 = 0x2001_0db8_0000_0005u64;
    let home = prefilter_common::v6::hh_bucket(hi0, 1, bits);
    // Addresses of 2001:db8::/32 in the same home bucket: other /64s with low bits ::1,
    // then other low bits in 2001:db8:0:5::/64.
    let mut same_lo = (1u64..)
        .map(|x| (0x2001_0db8_0000_0000 | x << 16 | 5, 1u64))
        .filter(|&(h, l)| prefilter_common::v6::hh_bucket(h, l, bits) == home);
    let mut same_hi = (2u64..)
        .map(|l| (hi0, l))
        .filter(|&(h, l)| prefilter_common::v6::hh_bucket(h, l, bits) == home);
    let addr = |(h, l): (u64, u64)| u128::from(h) << 64 | u128::from(l);
    let hosts: Vec<u128> = [
        (hi0, 1),
        same_lo.next().unwrap(),
        same_hi.next().unwrap(),
        same_lo.next().unwrap(),
        same_hi.next().unwrap(),
    ]
    .into_iter()
    .map(addr)
    .collect();
    // Listed: the first three (two fill the home bucket, the third the next one); the
    // other two share their home and stay unlisted.
    let probes = hosts.clone();
    let mut rules: HashMap<(u128, u8, Kind), u16> = HashMap::new();
    let drop = |l: u16| verdict::pack(action::DROP, l);
    for (i, &h) in hosts.iter().take(3).enumerate() {
        f.v6.set(h, 128, Kind::Block, drop(i as u16 + 1))
            .expect("set");
        rules.insert((h, 128, Kind::Block), drop(i as u16 + 1));
        check(&f, &rules, &probes, &format!("add host {i}"));
    }
    // The first out of the middle of the sequence: the others are still found past it.
    assert!(f.v6.remove(hosts[0], 128, Kind::Block).expect("remove"));
    rules.remove(&(hosts[0], 128, Kind::Block));
    check(&f, &rules, &probes, "remove host 0");
    // Back within the grace period (its old slot is not reused yet), with another list.
    f.v6.set(hosts[0], 128, Kind::Block, drop(7)).expect("set");
    rules.insert((hosts[0], 128, Kind::Block), drop(7));
    check(&f, &rules, &probes, "host 0 back");
    // An allow over the second host's /64: its entry changes in place.
    let net64 = hosts[1] & mask(64);
    let allow = verdict::pack(action::ALLOW, 9);
    f.v6.set(net64, 64, Kind::Allow, allow).expect("set");
    rules.insert((net64, 64, Kind::Allow), allow);
    check(&f, &rules, &probes, "allow over host 1");
    assert!(f.v6.remove(net64, 64, Kind::Allow).expect("remove"));
    rules.remove(&(net64, 64, Kind::Allow));
    check(&f, &rules, &probes, "allow over host 1 removed");
    for &h in hosts.iter().take(3) {
        assert!(f.v6.remove(h, 128, Kind::Block).expect("remove"));
        rules.remove(&(h, 128, Kind::Block));
        check(&f, &rules, &probes, "removing the hosts");
    }
    assert_eq!(f.v6.entries(), [0; 7]);
}

/// /48s (HX entries) whose home bucket is one and the same: the first four fill it, the
/// program finds the next ones in the buckets after it (probed past the home bucket, a path
/// of its own in the program), and tells the unlisted ones of the same home apart; one
/// removed from the full home bucket, the others are still found past it.
#[test]
fn prefixes_past_their_home_bucket_are_found() {
    require_root();
    let opts = Options::default();
    let bits = prefilter_common::v6::hx_bits(opts.v6_entries);
    let mut f = Filter::load(&opts).expect("load");
    let k48 = |x: u64| 0x2001_0db8_0000_0000u64 | x << 16;
    let home = prefilter_common::v6::hx_bucket(k48(1), 48, bits);
    let nets: Vec<u128> = (1u64..)
        .map(k48)
        .filter(|&k| prefilter_common::v6::hx_bucket(k, 48, bits) == home)
        .take(8)
        .map(|k| u128::from(k) << 64)
        .collect();
    // Probe inside each /48, not its first address only.
    let probes: Vec<u128> = nets.iter().map(|&n| n | 0x1234_5678).collect();
    let mut rules: HashMap<(u128, u8, Kind), u16> = HashMap::new();
    let drop = |l: u16| verdict::pack(action::DROP, l);
    // Listed: six (a full home bucket and two past it); the last two share the home and
    // stay unlisted.
    for (i, &n) in nets.iter().take(6).enumerate() {
        f.v6.set(n, 48, Kind::Block, drop(i as u16 + 1))
            .expect("set");
        rules.insert((n, 48, Kind::Block), drop(i as u16 + 1));
    }
    check(&f, &rules, &probes, "six /48s of one home bucket");
    for &a in &probes[4..6] {
        assert_eq!(
            program(&f, a),
            1,
            "{} past its home bucket",
            Ipv6Addr::from(a)
        );
    }
    for &a in &probes[6..] {
        assert_eq!(program(&f, a), 2, "{} unlisted", Ipv6Addr::from(a));
    }
    assert!(f.v6.remove(nets[1], 48, Kind::Block).expect("remove"));
    rules.remove(&(nets[1], 48, Kind::Block));
    check(&f, &rules, &probes, "one removed from the home bucket");
}

/// A list replaced near the table's capacity: 1000 /64s and 1000 /128s (of 1024 entries
/// each part holds) removed, then 1000 others added at once. The removed entries' slots
/// are not reused for a second (a program run may still be reading them), so the additions
/// must wait for them rather than find the table full.
#[test]
fn a_list_replaced_near_capacity_fits() {
    require_root();
    let mut f = Filter::load(&Options {
        v6_entries: 1024,
        ..Options::default()
    })
    .expect("load");
    let drop = verdict::pack(action::DROP, 1);
    let net64 = |i: u128| (0x2001_0db8u128 << 96) | (i << 64);
    let host = |i: u128| (0x2001_0db9u128 << 96) | (5 << 64) | i;
    let lists = |round: u128| -> Vec<(u128, u8)> {
        (1..=1000)
            .flat_map(|i| [(net64(round * 1000 + i), 64), (host(round * 1000 + i), 128)])
            .collect()
    };
    let mut rules: HashMap<(u128, u8, Kind), u16> = HashMap::new();
    for round in 0..3 {
        if round > 0 {
            for (a, l) in lists(round - 1) {
                assert!(f.v6.remove(a, l, Kind::Block).expect("remove"));
                rules.remove(&(a, l, Kind::Block));
            }
        }
        for (a, l) in lists(round) {
            f.v6.set(a, l, Kind::Block, drop)
                .unwrap_or_else(|e| panic!("round {round}: {}/{l}: {e}", Ipv6Addr::from(a)));
            rules.insert((a, l, Kind::Block), drop);
        }
        let probes: Vec<u128> = (0..3)
            .flat_map(|r| lists(r).into_iter().map(|(a, _)| a | 7))
            .step_by(37)
            .collect();
        check(&f, &rules, &probes, &format!("round {round}"));
    }
}

/// The tables the program reads as global data (`.bss.NAME` sections, vendor/aya-obj) are
/// maps of one value each, created mmapable, and HX and HH as large as `v6_entries` asks:
/// not the most the sections declare (256 and 512 MiB), which would put every gateway's
/// IPv6 tables at 768 MiB of kernel memory.
#[test]
fn global_data_tables_are_sized_from_the_config() {
    require_root();
    use prefilter_common::{v4, v6};
    const MMAPABLE: u32 = 1 << 10;
    for entries in [1000, v6::DEFAULT_ENTRIES] {
        let mut f = Filter::load(&Options {
            v6_entries: entries,
            ..Options::default()
        })
        .expect("load");
        let ids = f
            .program()
            .info()
            .expect("program info")
            .map_ids()
            .expect("map ids")
            .expect("the kernel reports map ids");
        let mut sizes = HashMap::new();
        for id in ids {
            let info = aya::maps::MapData::from_id(id)
                .expect("map by id")
                .info()
                .expect("map info");
            let Some(name) = info.name_as_str().map(str::to_owned) else {
                continue;
            };
            sizes.insert(
                name,
                (info.max_entries(), info.value_size(), info.map_flags()),
            );
        }
        let want = [
            (v4::TBL24, 1usize << 27),
            (v6::TOP, (v6::TOP_ENTRIES as usize) * 4),
            (
                v6::HX,
                (1usize << v6::hx_bits(entries)) * size_of::<v6::Bucket>(),
            ),
            (
                v6::HH,
                (1usize << v6::hh_bits(entries)) * size_of::<v6::HostBucket>(),
            ),
        ];
        for (name, bytes) in want {
            let (max, value, flags) = sizes
                .get(name)
                .copied()
                .unwrap_or_else(|| panic!("the program has no map {name}: {sizes:?}"));
            assert_eq!(
                (max, value as usize),
                (1, bytes),
                "{name} at v6_entries {entries}: one value of {bytes} bytes"
            );
            assert_ne!(flags & MMAPABLE, 0, "{name} is mmapable");
        }
    }
}
