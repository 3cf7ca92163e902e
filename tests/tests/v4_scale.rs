//! A DNSBL-sized IPv4 table through the agent's table code into the kernel maps: 5M random
//! host /32s over the whole address space plus 1M mixed /8–/31 prefixes, with the shipped
//! map sizes. Checks the kernel memory of all maps and a sample of lookups, from user space
//! and through the program. Takes 10–30 s in release builds.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use prefilter::xdp::{Filter, Options, v4table::Kind};
use prefilter_common::{action, verdict};
use prefilter_tests::{Rng, packet::Frame, require_root};

/// The ceiling for all prefilter maps together.
const MAX_MAP_MEMORY: u64 = 320 << 20;

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// Prefixes /8–/31: as many of each length /24–/31, half as many per shorter length (the
/// bench's mix).
fn mixed(rng: &mut Rng, n: usize) -> HashMap<(u32, u8), u16> {
    let weight = |l: u8| if l >= 24 { 1u64 << 16 } else { 1u64 << (l - 8) };
    let total: u64 = (8..=31).map(weight).sum();
    let mut out = HashMap::with_capacity(n);
    while out.len() < n {
        let mut r = rng.next() % total;
        let mut len = 8;
        while r >= weight(len) {
            r -= weight(len);
            len += 1;
        }
        let a = rng.next() as u32 & mask(len);
        // The list id says which length matched.
        out.insert((a, len), verdict::pack(action::DROP, u16::from(len)));
    }
    out
}

#[test]
fn five_million_hosts_and_a_million_prefixes() {
    require_root();
    let mut rng = Rng(0x5ca1e);
    let host_v = verdict::pack(action::DROP, 100);
    let mut hosts = HashSet::with_capacity(5_000_000);
    while hosts.len() < 5_000_000 {
        hosts.insert(rng.next() as u32);
    }
    let mixed = mixed(&mut rng, 1_000_000);
    let mut rules: Vec<(u32, u8, Kind, u16)> = hosts
        .iter()
        .map(|&a| (a, 32, Kind::Block, host_v))
        .collect();
    rules.extend(mixed.iter().map(|(&(a, l), &v)| (a, l, Kind::Block, v)));

    let mut f = Filter::load(&Options::default()).expect("load");
    let t = Instant::now();
    f.v4.set_batch(rules)
        .expect("the shipped limits hold the table");
    let load = t.elapsed();
    let memlock = f.map_memlock().expect("map memory");
    let (groups, capacity) = f.v4.groups_used();
    eprintln!(
        "loaded in {:.2} s; {groups} of {capacity} groups, {} run verdicts; all maps {:.1} MiB",
        load.as_secs_f64(),
        f.v4.runs_used().0,
        memlock as f64 / f64::from(1 << 20)
    );
    assert!(
        memlock <= MAX_MAP_MEMORY,
        "maps take {memlock} bytes, more than {MAX_MAP_MEMORY}"
    );
    assert_eq!(f.v4.len(Kind::Block), hosts.len() + mixed.len());

    let expected = |a: u32| -> u16 {
        if hosts.contains(&a) {
            return host_v;
        }
        (8..=31)
            .rev()
            .find_map(|l| mixed.get(&(a & mask(l), l)).copied())
            .unwrap_or(0)
    };
    // Hosts, random addresses, and addresses inside the mixed prefixes.
    let host_list: Vec<u32> = hosts.iter().copied().take(50_000).collect();
    let mixed_list: Vec<(u32, u8)> = mixed.keys().copied().take(50_000).collect();
    let mut sample: Vec<u32> = host_list.clone();
    sample.extend((0..50_000).map(|_| rng.next() as u32));
    sample.extend(
        mixed_list
            .iter()
            .map(|&(a, l)| a | (rng.next() as u32 & !mask(l))),
    );
    for &a in &sample {
        assert_eq!(f.v4.lookup(a), expected(a), "{}", Ipv4Addr::from(a));
    }
    // Through the program: a SYN from each of a few thousand of them.
    for &a in sample.iter().step_by(50) {
        let frame = Frame::syn(
            IpAddr::V4(Ipv4Addr::from(a)),
            "192.0.2.1".parse().unwrap(),
            25,
        )
        .build();
        let want = if expected(a) == 0 { 2 } else { 1 };
        assert_eq!(
            f.test_run(&frame, 1).unwrap().action,
            want,
            "{}",
            Ipv4Addr::from(a)
        );
    }
}
