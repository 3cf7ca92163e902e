//! The ring buffer: verdict samples and first-seen events within a per-CPU time budget,
//! through the real program with BPF_PROG_TEST_RUN.
//!
//! Bounds that depend on time are computed from the time the test measured (so a slow
//! machine only loosens them); no duration is asserted.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use aya::maps::{MapData, RingBuf};
use prefilter::xdp::{Filter, Options, v4table::Kind};
use prefilter_common::{
    action,
    config::FLAG_FIRST_SEEN,
    counters,
    dynamic::DynVerdict,
    events::{self, Event},
    reason, v4_key, verdict,
};
use prefilter_tests::{
    packet::{Frame, flags},
    require_root,
};

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

/// The client's ACK completing a handshake to `port`.
fn ack_from(src: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut f = Frame::syn(IpAddr::V4(src), "192.0.2.1".parse().unwrap(), port);
    f.flags = flags::ACK;
    f.ack = 1;
    f.build()
}

const BLOCKED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A filter with one blocked host, first-seen on, and `per_sec` events per second per CPU.
fn filter(per_sec: u32) -> (Filter, RingBuf<MapData>) {
    let mut f = Filter::load(&Options::default()).expect("load");
    let ring = f.take_events().expect("ring buffer");
    f.v4.set(
        u32::from(BLOCKED),
        32,
        Kind::Block,
        verdict::pack(action::DROP, 42),
    )
    .unwrap();
    let mut c = f.config();
    c.flags |= FLAG_FIRST_SEEN;
    c.set_events_per_sec(per_sec);
    f.set_config(c).unwrap();
    (f, ring)
}

fn cpus() -> u64 {
    aya::util::nr_cpus().expect("number of CPUs") as u64
}

/// Events the budget allows in `secs` on every CPU: a full bucket each, then the rate.
fn budget(per_sec: u32, secs: f64) -> u64 {
    cpus() * (u64::from(per_sec) + (f64::from(per_sec) * secs).ceil() as u64 + 1)
}

#[test]
fn verdict_and_first_seen_events() {
    require_root();
    let (mut f, mut ring) = filter(1000);

    // A blocked SYN: one verdict event naming who, what and why.
    assert_eq!(f.test_run(&syn_from(BLOCKED), 1).unwrap().action, 1);
    let ev = drain(&mut ring);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let e = ev[0];
    assert_eq!(e.kind, events::KIND_VERDICT);
    assert_eq!(e.addr, v4_key(BLOCKED.octets()));
    assert_eq!(
        (e.family, e.action, e.reason),
        (4, action::DROP, reason::BLOCK)
    );
    assert_eq!((e.list_id, e.dport), (42, 25));
    assert!(e.ts_ns > 0);

    // Bare SYNs from a clean address: no event (a spoofed source could send them).
    let clean = Ipv4Addr::new(192, 0, 2, 10);
    for _ in 0..20 {
        assert_eq!(f.test_run(&syn_from(clean), 1).unwrap().action, 2);
    }
    assert!(
        drain(&mut ring).is_empty(),
        "a bare SYN is no first contact"
    );

    // Its ACKs (a completed handshake): one first-seen event, deduplicated in the kernel.
    for _ in 0..50 {
        assert_eq!(f.test_run(&ack_from(clean, 25), 1).unwrap().action, 2);
    }
    let ev = drain(&mut ring);
    assert_eq!(ev.len(), 1, "deduplicated in the kernel: {ev:?}");
    assert_eq!(ev[0].kind, events::KIND_FIRST_SEEN);
    assert_eq!(ev[0].addr, v4_key(clean.octets()));
    assert_eq!((ev[0].reason, ev[0].dport), (reason::NO_MATCH, 25));

    // No first contact: a source with a verdict, a port that is not judged.
    f.test_run(&ack_from(BLOCKED, 25), 1).unwrap();
    f.test_run(&ack_from(Ipv4Addr::new(192, 0, 2, 11), 587), 1)
        .unwrap();
    assert!(drain(&mut ring).is_empty());
    // ACKs are counted as not judged, as before.
    let c = f.counters().unwrap();
    assert_eq!(
        c[counters::slot(reason::NOT_JUDGED, action::PASS) as usize],
        52
    );

    // First-seen off: a new address's ACK makes no event.
    let mut c = f.config();
    c.flags &= !FLAG_FIRST_SEEN;
    f.set_config(c).unwrap();
    f.test_run(&ack_from(Ipv4Addr::new(192, 0, 2, 12), 25), 1)
        .unwrap();
    assert!(drain(&mut ring).is_empty());

    // Events off: blocked SYNs make no event.
    let mut c = f.config();
    c.set_events_per_sec(0);
    f.set_config(c).unwrap();
    f.test_run(&syn_from(BLOCKED), 10).unwrap();
    assert!(drain(&mut ring).is_empty());
}

/// Blocked SYNs as fast as the kernel runs them: the events follow the time budget, not the
/// number of packets.
#[test]
fn verdict_events_follow_a_time_budget() {
    require_root();
    const PER_SEC: u32 = 50;
    let (f, mut ring) = filter(PER_SEC);
    let frame = syn_from(BLOCKED);
    let started = Instant::now();
    let mut packets = 0u64;
    for _ in 0..20 {
        assert_eq!(f.test_run(&frame, 10_000).unwrap().action, 1);
        packets += 10_000;
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = drain(&mut ring).len() as u64;
    let c = f.counters().unwrap();
    assert_eq!(c[counters::EVENTS_SENT as usize], sent);
    assert_eq!(c[counters::EVENTS_LOST as usize], 0);
    assert!(sent >= 1, "a full bucket sends at once");
    let most = budget(PER_SEC, secs);
    assert!(
        sent <= most,
        "{sent} events for {packets} packets in {secs:.3} s; the budget allows {most}"
    );
    assert_eq!(
        c[counters::slot(reason::BLOCK, action::DROP) as usize],
        packets,
        "every packet judged"
    );
}

/// Every learned verdict rewrites the program's config (the "dynamic map not empty" hint).
/// Under a flood that brings DNSBL hits, that must not refill the event budget each time.
#[test]
fn learned_verdicts_do_not_refill_the_event_budget() {
    require_root();
    const PER_SEC: u32 = 50;
    let (mut f, mut ring) = filter(PER_SEC);
    let frame = syn_from(BLOCKED);
    let started = Instant::now();
    for i in 0..20u8 {
        assert_eq!(f.test_run(&frame, 10_000).unwrap().action, 1);
        let learned = DynVerdict {
            expires_ns: 0,
            action: action::DROP,
            list_id: 7,
            ..Default::default()
        };
        f.set_dynamic(v4_key([203, 0, 113, i]), learned).unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = drain(&mut ring).len() as u64;
    assert!(sent >= 1, "a full bucket sends at once");
    let most = budget(PER_SEC, secs);
    assert!(
        sent <= most,
        "{sent} events in {secs:.3} s with 20 config rewrites; the budget allows {most}"
    );
    assert_eq!(f.config().dyn_entries, 20, "the hint was written each time");
}

/// A flood of new sources while nobody reads: bare SYNs make no event at all, ACKs no more
/// than the budget; every packet still gets its verdict.
#[test]
fn a_flood_cannot_flood_user_space() {
    require_root();
    let (f, mut ring) = filter(events::DEFAULT_PER_SEC);
    // Spoofed sources from 240.0.0.0/4, as a flood would use; bounded count.
    const N: u32 = 20_000;
    for i in 0..N {
        let src = Ipv4Addr::from(0xf000_0000 | i);
        assert_eq!(f.test_run(&syn_from(src), 1).unwrap().action, 2);
    }
    let c = f.counters().unwrap();
    assert_eq!(
        c[counters::EVENTS_SENT as usize] + c[counters::EVENTS_LOST as usize],
        0
    );
    let started = Instant::now();
    for i in 0..N {
        let src = Ipv4Addr::from(0xf100_0000 | i);
        assert_eq!(f.test_run(&ack_from(src, 25), 1).unwrap().action, 2);
    }
    let secs = started.elapsed().as_secs_f64();
    let c = f.counters().unwrap();
    let (sent, lost) = (
        c[counters::EVENTS_SENT as usize],
        c[counters::EVENTS_LOST as usize],
    );
    let most = budget(events::DEFAULT_PER_SEC, secs);
    assert!(sent >= 1);
    assert!(
        sent + lost <= most,
        "{sent} sent + {lost} lost for {N} new sources in {secs:.3} s; the budget allows {most}"
    );
    assert_eq!(drain(&mut ring).len() as u64, sent);
    assert_eq!(
        c[counters::slot(reason::NO_MATCH, action::PASS) as usize],
        u64::from(N)
    );
    assert_eq!(
        c[counters::slot(reason::NOT_JUDGED, action::PASS) as usize],
        u64::from(N)
    );
}

/// With a budget larger than the ring, a full ring drops events (counted), never packets.
#[test]
fn a_full_ring_loses_events_not_packets() {
    require_root();
    let (f, mut ring) = filter(1_000_000);
    const N: u32 = 20_000;
    for i in 0..N {
        let src = Ipv4Addr::from(0xf000_0000 | i);
        assert_eq!(f.test_run(&ack_from(src, 25), 1).unwrap().action, 2);
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
        "every new source reported or lost"
    );
    assert!(
        sent <= capacity,
        "the ring holds at most {capacity}, {sent} sent"
    );
    assert!(lost > 0, "a full ring loses events, it does not block");
    assert_eq!(drain(&mut ring).len() as u64, sent);
}
