//! The ring buffer: sampled verdict events and deduplicated first-seen events, through the
//! real program with BPF_PROG_TEST_RUN.

use std::net::{IpAddr, Ipv4Addr};

use aya::maps::{MapData, RingBuf};
use prefilter::xdp::{Filter, Options, v4table::Kind};
use prefilter_common::{
    action,
    config::{Config, FLAG_FIRST_SEEN},
    counters,
    events::{self, Event},
    reason, v4_key, verdict,
};
use prefilter_tests::{packet::Frame, require_root};

fn drain(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<Event>(), "event size");
        // SAFETY: length checked; Event is plain old data.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
    }
    out
}

fn syn_from(src: Ipv4Addr) -> Vec<u8> {
    Frame::syn(IpAddr::V4(src), "192.0.2.1".parse().unwrap(), 25).build()
}

#[test]
fn verdict_and_first_seen_events() {
    require_root();
    let mut f = Filter::load(&Options::default()).expect("load");
    let mut ring = f.take_events().expect("ring buffer");
    let blocked = Ipv4Addr::new(198, 51, 100, 7);
    f.v4.set(
        u32::from(blocked),
        32,
        Kind::Block,
        verdict::pack(action::DROP, 42),
    )
    .unwrap();
    let c = f.config();
    f.set_config(Config {
        flags: c.flags | FLAG_FIRST_SEEN,
        sample_every: 1,
        ..c
    })
    .unwrap();

    // A blocked SYN: one verdict event naming who, what and why.
    assert_eq!(f.test_run(&syn_from(blocked), 1).unwrap().action, 1);
    let ev = drain(&mut ring);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let e = ev[0];
    assert_eq!(e.kind, events::KIND_VERDICT);
    assert_eq!(e.addr, v4_key(blocked.octets()));
    assert_eq!(
        (e.family, e.action, e.reason),
        (4, action::DROP, reason::BLOCK)
    );
    assert_eq!((e.list_id, e.dport), (42, 25));
    assert!(e.ts_ns > 0);

    // First SYN from a clean address: one first-seen event; the next ones none.
    let clean = Ipv4Addr::new(192, 0, 2, 10);
    for _ in 0..50 {
        assert_eq!(f.test_run(&syn_from(clean), 1).unwrap().action, 2);
    }
    let ev = drain(&mut ring);
    assert_eq!(ev.len(), 1, "deduplicated in the kernel: {ev:?}");
    assert_eq!(ev[0].kind, events::KIND_FIRST_SEEN);
    assert_eq!(ev[0].addr, v4_key(clean.octets()));
    assert_eq!(ev[0].reason, reason::NO_MATCH);

    // Non-SYN traffic from a new address makes no event.
    let mut ack = Frame::syn(
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)),
        "192.0.2.1".parse().unwrap(),
        25,
    );
    ack.flags = prefilter_tests::packet::flags::ACK;
    f.test_run(&ack.build(), 1).unwrap();
    assert!(drain(&mut ring).is_empty());

    // Sampling off: blocked SYNs make no event.
    let c = f.config();
    f.set_config(Config {
        sample_every: 0,
        ..c
    })
    .unwrap();
    f.test_run(&syn_from(blocked), 10).unwrap();
    assert!(drain(&mut ring).is_empty());
}

/// A flood of new sources while nobody reads: the ring fills, the rest is counted as lost,
/// every packet still gets its verdict.
#[test]
fn a_flood_cannot_flood_user_space() {
    require_root();
    let mut f = Filter::load(&Options::default()).expect("load");
    let mut ring = f.take_events().expect("ring buffer");
    let c = f.config();
    f.set_config(Config {
        flags: c.flags | FLAG_FIRST_SEEN,
        ..c
    })
    .unwrap();
    // Spoofed sources from 240.0.0.0/4, as a flood would use; bounded count.
    const N: u32 = 20_000;
    for i in 0..N {
        let src = Ipv4Addr::from(0xf000_0000 | i);
        assert_eq!(f.test_run(&syn_from(src), 1).unwrap().action, 2);
    }
    let c = f.counters().unwrap();
    let (sent, lost) = (
        c[counters::EVENTS_SENT as usize],
        c[counters::EVENTS_LOST as usize],
    );
    let capacity = (events::BYTES as usize / (size_of::<Event>() + 8)) as u64;
    assert_eq!(
        sent + lost,
        u64::from(N),
        "every new source reported or counted lost"
    );
    assert!(
        sent <= capacity,
        "the ring holds at most {capacity}, {sent} sent"
    );
    assert!(lost > 0, "a full ring loses events, it does not block");
    assert_eq!(drain(&mut ring).len() as u64, sent);
    assert_eq!(
        c[counters::slot(reason::NO_MATCH, action::PASS) as usize],
        u64::from(N)
    );
}
