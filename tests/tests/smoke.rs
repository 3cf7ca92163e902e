use std::net::IpAddr;

use prefilter::xdp::{Filter, Options, v4table::Kind};
use prefilter_common::{action, verdict};
use prefilter_tests::packet::Frame;

#[test]
fn loads_and_drops_a_blocked_syn() {
    let mut f = Filter::load(&Options::default()).expect("load");
    let src: IpAddr = "198.51.100.7".parse().unwrap();
    let dst: IpAddr = "192.0.2.1".parse().unwrap();
    let frame = Frame::syn(src, dst, 25).build();
    assert_eq!(f.test_run(&frame, 1).unwrap().action, 2);
    f.v4.set(
        u32::from_be_bytes([198, 51, 100, 0]),
        24,
        Kind::Block,
        verdict::pack(action::DROP, 1),
    )
    .unwrap();
    assert_eq!(f.test_run(&frame, 1).unwrap().action, 1);
}

#[test]
fn loads_with_logging_and_resets() {
    let mut f = Filter::load(&Options {
        log_level: 5,
        ..Options::default()
    })
    .expect("load");
    let src: IpAddr = "2001:db8:1::7".parse().unwrap();
    let dst: IpAddr = "2001:db8::1".parse().unwrap();
    f.v6.set(
        u128::from_be_bytes(
            "2001:db8:1::"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        ),
        48,
        Kind::Block,
        verdict::pack(action::RESET, 2),
    )
    .unwrap();
    let out = f.test_run(&Frame::syn(src, dst, 25).build(), 1).unwrap();
    assert_eq!(out.action, 3);
    assert_eq!(out.frame.len(), 14 + 40 + 20);
}
