//! The XDP program in native mode on a veth between two namespaces, judged by real TCP
//! connects: an MX namespace with a listener on port 25 behind the program, and a client
//! namespace whose sources are blocked with `drop`, blocked with `reset`, or clean.
//!
//! What each source must see is what a sending MTA sees: a drop is a connect that times out
//! (the kernel retransmits the SYN meanwhile), a reset is a refused connect at once, and a
//! clean source reaches the server, which sees the client's real address. The program's
//! counters must account for every SYN the client's kernel says it sent.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
    thread,
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use prefilter::xdp::{Filter, Options, v4table::Kind};
use prefilter_common::{action, counters, reason, verdict};
use prefilter_tests::{
    daemon::{Listener, connect_from},
    netns::{Netns, veth},
    require_root,
};

/// Clean sources.
const CLEAN4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const CLEAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// Blocked with `drop` (a /32; for IPv6 its /64).
const DROP4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const DROP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);
/// Blocked with `reset` (a /32; for IPv6 its /64).
const RESET4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const RESET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x5e7, 0, 0, 0, 0, 9);

/// List ids, one per rule, so the per-list hit counters can be checked too.
const LIST_DROP4: u16 = 11;
const LIST_RESET4: u16 = 12;
const LIST_DROP6: u16 = 13;
const LIST_RESET6: u16 = 14;

/// What an MTA would wait at most for one connect here; a dropped SYN must make it expire.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A refused connect must come back well before that: it is one round trip on a veth.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);

/// Two namespaces joined by a veth: `mx` (192.0.2.1, 2001:db8::1) and `client` (the clean,
/// drop and reset sources). Both are deleted on drop, which removes the veth too.
struct Lab {
    mx: Netns,
    client: Netns,
    mx_if: String,
    /// The XDP_PASS program on the client's veth, attached while this lives.
    _client_xdp: OwnedFd,
}

impl Lab {
    fn new() -> Self {
        let mx = Netns::new("pxm");
        let client = Netns::new("pxc");
        let (mx_if, client_if) = veth(
            &mx,
            &["192.0.2.1/24", "2001:db8::1/64"],
            &client,
            &[
                "192.0.2.2/24",
                "198.51.100.7/32",
                "203.0.113.9/32",
                "2001:db8::2/64",
                "2001:db8:bad::7/128",
                "2001:db8:5e7::9/128",
            ],
        );
        // The MX reaches the extra client sources over the veth (for ARP/ND answers and the
        // SYN-ACKs once the filter is gone); the client reaches the MX on its connected /24
        // and /64.
        for net in ["198.51.100.7/32", "203.0.113.9/32"] {
            mx.ip(&["route", "add", net, "dev", &mx_if]);
        }
        for net in ["2001:db8:bad::/64", "2001:db8:5e7::/64"] {
            mx.ip(&["-6", "route", "add", net, "dev", &mx_if]);
        }
        // A `reset` verdict is XDP_TX on the MX veth. Native XDP on a veth puts an XDP_TX
        // frame on the peer's receive ring, but kicks the peer's NAPI only when the peer
        // runs an XDP program too (veth_xdp_flush). GRO on the peer (what design.md suggests
        // for load tests) is not enough: on 6.18 the MX veth counted the RSTs as sent
        // (xdp_tx, no xdp_tx_errors) yet the client never received them and timed out
        // instead of being refused. A real NIC transmits XDP_TX frames itself, so give the
        // client veth a program that passes everything.
        let client_xdp = client.attach_xdp_pass(&client_if);
        Self {
            mx,
            client,
            mx_if,
            _client_xdp: client_xdp,
        }
    }

    /// The XDP attachment of the MX veth as `ip link` reports it: "xdp" (native),
    /// "xdpgeneric" (skb) or None.
    fn xdp_mode(&self) -> Option<String> {
        let out = self.mx.ip(&["link", "show", "dev", &self.mx_if]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .find(|w| w.starts_with("xdp"))
            .map(str::to_owned)
    }
}

/// SYNs the client's kernel sent: active opens (one first SYN each) plus SYN retransmissions.
fn syns_sent(stats: &HashMap<String, u64>) -> u64 {
    stats["Tcp.ActiveOpens"] + stats["TcpExt.TCPSynRetrans"]
}

/// Counter of (reason, action).
fn count(c: &[u64], r: u8, a: u8) -> u64 {
    c[counters::slot(r, a) as usize]
}

fn list_hits(f: &Filter, list: u16) -> u64 {
    f.list_hits()
        .expect("list hits")
        .into_iter()
        .find(|&(id, _)| id == list)
        .map_or(0, |(_, n)| n)
}

/// Waits (bounded) until the XDP counter (reason, action) has grown by `want` since
/// `before`, then returns the growth. SYNs are in flight for at most a moment after the
/// connect call returns, so 2 s is ample; a mismatch after that is a real one.
fn settle(f: &Filter, before: &[u64], r: u8, a: u8, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = f.counters().expect("counters");
        let delta = count(&now, r, a) - count(before, r, a);
        if delta >= want || Instant::now() >= deadline {
            // A little longer, so a surplus (a SYN counted twice, say) shows too.
            thread::sleep(Duration::from_millis(50));
            let now = f.counters().expect("counters");
            return count(&now, r, a) - count(before, r, a);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Loads the filter with the four block rules, from the calling thread (which must be in
/// the MX namespace), and attaches it natively to the MX veth.
fn load_and_attach(lab: &Lab) -> Filter {
    let mut f = Filter::load(&Options::default()).expect("load the XDP program");
    f.v4.set(
        u32::from(DROP4),
        32,
        Kind::Block,
        verdict::pack(action::DROP, LIST_DROP4),
    )
    .unwrap();
    f.v4.set(
        u32::from(RESET4),
        32,
        Kind::Block,
        verdict::pack(action::RESET, LIST_RESET4),
    )
    .unwrap();
    f.v6.set(
        u128::from(DROP6),
        64,
        Kind::Block,
        verdict::pack(action::DROP, LIST_DROP6),
    )
    .unwrap();
    f.v6.set(
        u128::from(RESET6),
        64,
        Kind::Block,
        verdict::pack(action::RESET, LIST_RESET6),
    )
    .unwrap();
    let mode = f.attach(&lab.mx_if, None).expect("attach to the MX veth");
    assert_eq!(mode, XdpMode::Driver, "veth supports native XDP");
    assert_eq!(
        lab.xdp_mode().as_deref(),
        Some("xdp"),
        "ip link must show native XDP"
    );
    f
}

/// A dropped SYN: the connect times out, and every SYN the client sent (the first and its
/// retransmissions) is counted as (block, drop) and on the rule's list.
fn expect_dropped(f: &Filter, lab: &Lab, listener: &Listener, src: IpAddr, list: u16) {
    let (c0, n0, h0) = (
        f.counters().unwrap(),
        lab.client.netstat(),
        list_hits(f, list),
    );
    let (r, took) = connect_from(&lab.client.name, src, CONNECT_TIMEOUT);
    let err = r.expect_err(&format!("connect from {src} must not complete"));
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{src}: {err}");
    // (poll() rounds the timeout to milliseconds: it may wake a hair early.)
    assert!(
        took >= CONNECT_TIMEOUT - Duration::from_millis(20),
        "{src}: gave up after {took:?}"
    );
    let sent = syns_sent(&lab.client.netstat()) - syns_sent(&n0);
    // The first SYN at 0 s and the retransmission after the initial RTO of 1 s.
    assert!(sent >= 2, "{src}: the client sent {sent} SYNs in {took:?}");
    let dropped = settle(f, &c0, reason::BLOCK, action::DROP, sent);
    assert_eq!(
        dropped, sent,
        "{src}: SYNs counted as (block, drop) vs SYNs sent"
    );
    assert_eq!(list_hits(f, list) - h0, sent, "{src}: hits of list {list}");
    assert!(!listener.saw(src), "{src} reached the server");
}

/// A reset SYN: the connect is refused at once, one SYN counted as (block, reset).
fn expect_refused(f: &Filter, lab: &Lab, listener: &Listener, src: IpAddr, list: u16) {
    let (c0, n0, h0) = (
        f.counters().unwrap(),
        lab.client.netstat(),
        list_hits(f, list),
    );
    let (r, took) = connect_from(&lab.client.name, src, CONNECT_TIMEOUT);
    let err = r.expect_err(&format!("connect from {src} must be refused"));
    assert_eq!(
        err.kind(),
        io::ErrorKind::ConnectionRefused,
        "{src}: {err} after {took:?}"
    );
    assert!(took < REFUSED_WITHIN, "{src}: refused only after {took:?}");
    let n1 = lab.client.netstat();
    assert_eq!(
        syns_sent(&n1) - syns_sent(&n0),
        1,
        "{src}: one SYN, no retransmission"
    );
    // The client's kernel took the RST as an answer to its SYN (checksums, ports, ack).
    assert_eq!(n1["Tcp.AttemptFails"] - n0["Tcp.AttemptFails"], 1, "{src}");
    assert_eq!(
        settle(f, &c0, reason::BLOCK, action::RESET, 1),
        1,
        "{src}: (block, reset)"
    );
    assert_eq!(list_hits(f, list) - h0, 1, "{src}: hits of list {list}");
    assert!(!listener.saw(src), "{src} reached the server");
}

/// A clean SYN: the connect completes, the server sees the client's own address and port,
/// and the SYN is counted as (no match, pass).
fn expect_clean(f: Option<&Filter>, lab: &Lab, listener: &Listener, src: IpAddr) {
    let c0 = f.map(|f| f.counters().unwrap());
    let n0 = lab.client.netstat();
    let (r, took) = connect_from(&lab.client.name, src, CONNECT_TIMEOUT);
    let local = r.unwrap_or_else(|e| panic!("connect from {src}: {e} after {took:?}"));
    assert_eq!(local.ip(), src);
    assert!(
        listener.wait_for(local, Duration::from_secs(2)),
        "the server must see the real client {local}: {:?}",
        listener.peers()
    );
    if let (Some(f), Some(c0)) = (f, c0) {
        let sent = syns_sent(&lab.client.netstat()) - syns_sent(&n0);
        assert!(sent >= 1);
        let passed = settle(f, &c0, reason::NO_MATCH, action::PASS, sent);
        assert_eq!(
            passed, sent,
            "{src}: SYNs counted as (no match, pass) vs SYNs sent"
        );
    }
}

#[test]
fn native_xdp_on_veth_drops_resets_and_passes_real_connects() {
    require_root();
    let lab = Lab::new();
    // Declared before the filter so it drops after it: load, attach and detach all happen
    // with this thread inside the MX namespace.
    let _in_mx = lab.mx.enter();
    let f = load_and_attach(&lab);
    let listener = Listener::start(&lab.mx);
    let start = f.counters().unwrap();

    expect_clean(Some(&f), &lab, &listener, CLEAN4.into());
    expect_dropped(&f, &lab, &listener, DROP4.into(), LIST_DROP4);
    expect_refused(&f, &lab, &listener, RESET4.into(), LIST_RESET4);
    expect_clean(Some(&f), &lab, &listener, CLEAN6.into());
    expect_dropped(&f, &lab, &listener, DROP6.into(), LIST_DROP6);
    expect_refused(&f, &lab, &listener, RESET6.into(), LIST_RESET6);
    // A blocked source stays blocked, and a clean one clean, after the other verdicts.
    expect_refused(&f, &lab, &listener, RESET4.into(), LIST_RESET4);
    expect_clean(Some(&f), &lab, &listener, CLEAN4.into());

    let end = f.counters().unwrap();
    let delta = |r, a| count(&end, r, a) - count(&start, r, a);
    // Real traffic (ARP, ND, ACKs, FINs, Linux's SYN options) is never malformed, and the
    // handshakes' other packets are passed unjudged.
    for a in 0..action::COUNT as u8 {
        assert_eq!(
            delta(reason::MALFORMED, a),
            0,
            "malformed frames, action {a}"
        );
    }
    assert!(
        delta(reason::NOT_JUDGED, action::PASS) > 0,
        "ACKs, ARP and ND pass unjudged"
    );
    assert_eq!(delta(reason::BLOCK, action::RESET), 3);
    assert_eq!(
        listener.peers().len(),
        3,
        "only the three clean connects reached the server: {:?}",
        listener.peers()
    );
}

#[test]
fn detaching_restores_connectivity_from_a_blocked_source() {
    require_root();
    let lab = Lab::new();
    let _in_mx = lab.mx.enter();
    let f = load_and_attach(&lab);
    let listener = Listener::start(&lab.mx);
    expect_dropped(&f, &lab, &listener, DROP4.into(), LIST_DROP4);
    expect_refused(&f, &lab, &listener, RESET6.into(), LIST_RESET6);

    drop(f);
    assert_eq!(
        lab.xdp_mode(),
        None,
        "dropping the filter must detach the program"
    );
    for src in [DROP4.into(), RESET4.into(), DROP6.into(), RESET6.into()] {
        expect_clean(None, &lab, &listener, src);
    }
}

/// Where the driver has no native XDP (loopback), attach falls back to skb mode, and a
/// forced mode is used as given.
#[test]
fn attach_falls_back_to_skb_mode() {
    require_root();
    let ns = Netns::new("pxs");
    let _in = ns.enter();
    let mode_shown = || {
        let out = ns.ip(&["link", "show", "dev", "lo"]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find(|w| w.starts_with("xdp"))
            .map(str::to_owned)
    };
    {
        let mut f = Filter::load(&Options::default()).expect("load");
        assert_eq!(f.attach("lo", None).expect("attach"), XdpMode::Skb);
        assert_eq!(mode_shown().as_deref(), Some("xdpgeneric"));
    }
    assert_eq!(mode_shown(), None, "dropping the filter detaches it");
    let mut f = Filter::load(&Options::default()).expect("load");
    assert!(
        f.attach("lo", Some(XdpMode::Driver)).is_err(),
        "forced native mode on a device without it must fail, not fall back"
    );
    assert_eq!(mode_shown(), None);
}
