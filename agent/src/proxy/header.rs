//! The PROXY protocol header the backend reads before the client's bytes.
//!
//! Built with the `ppp` crate (HAProxy's spec, v1 text and v2 binary; maintained, one
//! dependency, used by several proxies) rather than by hand: the v2 layout (signature,
//! version/command, family/protocol, length, addresses) is easy to get subtly wrong, and the
//! crate's builder is tested against the spec's examples. Only building is used here: a
//! header arriving from a client is never parsed, the proxy is the only one allowed to send it.

use std::net::{IpAddr, SocketAddr};

use ppp::v2::{Builder, Command, Protocol, Version};

use crate::config::ProxyProtocol;

/// `::ffff:a.b.c.d` as the IPv4 address it is (a v6 listener accepting v4 clients).
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Both ends in one family, as the header requires: IPv4 when both are (mapped) IPv4,
/// otherwise both as IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (src, dst) = (canonical(src), canonical(dst));
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// TLV type of prefilter's verdict summary: the first of the range the spec leaves to
/// applications (PP2_TYPE_MIN_CUSTOM, 0xE0-0xEF); receivers skip types they do not know.
pub const VERDICT_TLV: u8 = 0xE0;

/// A summary longer than this is cut: it is for logs, and a header stays small.
const SUMMARY_MAX: usize = 1024;

/// The verdict summary carried in [`VERDICT_TLV`]: `key=value` pairs joined by `;`, e.g.
/// `decision=pass;score=3;listed=zen.example.org,bl.example.net`. Absent parts are left out.
pub fn summary(decision: &str, list: Option<&str>, score: i32, listed: &[String]) -> Vec<u8> {
    let mut s = format!("decision={decision}");
    if let Some(l) = list {
        s.push_str(&format!(";list={l}"));
    }
    if score != 0 || !listed.is_empty() {
        s.push_str(&format!(";score={score}"));
    }
    if !listed.is_empty() {
        s.push_str(&format!(";listed={}", listed.join(",")));
    }
    let mut b = s.into_bytes();
    b.truncate(SUMMARY_MAX);
    b
}

/// The header for a client `src` that connected to our address `dst`, with the verdict
/// summary as a TLV in v2 (v1 has no room for it); empty for `none`.
pub fn build(kind: ProxyProtocol, src: SocketAddr, dst: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match kind {
        ProxyProtocol::V2 => {
            let b = Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (src, dst),
            );
            let b = if tlv.is_empty() {
                Ok(b)
            } else {
                b.write_tlv(VERDICT_TLV, tlv)
            };
            b.and_then(|b| b.build())
                // Fails only for a payload longer than 64 KiB; ours is at most ~1 KiB.
                .expect("a PROXY v2 header with two addresses")
        }
        ProxyProtocol::V1 => ppp::v1::Addresses::from((src, dst))
            .to_string()
            .into_bytes(),
        ProxyProtocol::None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_ipv4_matches_the_spec_layout() {
        let h = build(
            ProxyProtocol::V2,
            "192.0.2.7:40000".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap(),
            &[],
        );
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        // Version 2, PROXY; TCP over IPv4; 12 bytes of addresses.
        want.extend([0x21, 0x11, 0, 12]);
        want.extend([192, 0, 2, 7, 198, 51, 100, 1]);
        want.extend(40000u16.to_be_bytes());
        want.extend(25u16.to_be_bytes());
        assert_eq!(h, want);
        // And it parses back.
        let parsed = ppp::v2::Header::try_from(&h[..]).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((
                "192.0.2.7:40000".parse::<SocketAddr>().unwrap(),
                "198.51.100.1:25".parse::<SocketAddr>().unwrap()
            ))
        );
    }

    #[test]
    fn v2_ipv6_and_mapped_ipv4() {
        let h = build(
            ProxyProtocol::V2,
            "[2001:db8::7]:1234".parse().unwrap(),
            "[2001:db8::1]:25".parse().unwrap(),
            &[],
        );
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
        // A v4 client on a dual-stack v6 socket is sent as IPv4.
        let h = build(
            ProxyProtocol::V2,
            "[::ffff:192.0.2.7]:1234".parse().unwrap(),
            "[::ffff:192.0.2.1]:25".parse().unwrap(),
            &[],
        );
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
    }

    #[test]
    fn v1_text_and_none() {
        let h = build(
            ProxyProtocol::V1,
            "192.0.2.7:40000".parse().unwrap(),
            "192.0.2.1:25".parse().unwrap(),
            b"decision=pass",
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n");
        let h = build(
            ProxyProtocol::V1,
            "[2001:db8::7]:1234".parse().unwrap(),
            "[2001:db8::1]:25".parse().unwrap(),
            &[],
        );
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 2001:db8::1 1234 25\r\n");
        assert!(
            build(
                ProxyProtocol::None,
                "192.0.2.7:1".parse().unwrap(),
                "192.0.2.1:25".parse().unwrap(),
                b"decision=pass",
            )
            .is_empty()
        );
    }

    #[test]
    fn verdict_tlv_is_carried_and_parsed_back() {
        struct Case {
            decision: &'static str,
            list: Option<&'static str>,
            score: i32,
            listed: Vec<String>,
            expected: &'static str,
        }
        let cases = [
            Case {
                decision: "pass",
                list: None,
                score: 0,
                listed: vec![],
                expected: "decision=pass",
            },
            Case {
                decision: "observe",
                list: Some("spamhaus-drop"),
                score: 0,
                listed: vec![],
                expected: "decision=observe;list=spamhaus-drop",
            },
            Case {
                decision: "pass",
                list: None,
                score: 2,
                listed: vec!["zen.example.org".into(), "bl.example.net".into()],
                expected: "decision=pass;score=2;listed=zen.example.org,bl.example.net",
            },
        ];
        for c in cases {
            let s = summary(c.decision, c.list, c.score, &c.listed);
            assert_eq!(s, c.expected.as_bytes());
            let h = build(
                ProxyProtocol::V2,
                "192.0.2.7:40000".parse().unwrap(),
                "198.51.100.1:25".parse().unwrap(),
                &s,
            );
            // Addresses (12), then type, 16-bit length, value.
            assert_eq!(
                u16::from_be_bytes([h[14], h[15]]) as usize,
                12 + 3 + s.len()
            );
            let parsed = ppp::v2::Header::try_from(&h[..]).unwrap();
            let tlvs: Vec<_> = parsed.tlvs().collect::<Result<_, _>>().unwrap();
            assert_eq!(tlvs.len(), 1);
            assert_eq!(tlvs[0].kind, VERDICT_TLV);
            assert_eq!(&tlvs[0].value[..], &s[..]);
        }
        // Bounded, whatever the lists hold.
        let many: Vec<String> = (0..500).map(|i| format!("zone{i}.example.org")).collect();
        assert_eq!(summary("pass", None, 500, &many).len(), SUMMARY_MAX);
    }
}
