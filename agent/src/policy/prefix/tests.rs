use super::*;

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn parses_and_normalizes() {
    struct Case {
        input: &'static str,
        expected: Result<&'static str, &'static str>,
    }
    #[rustfmt::skip]
    let cases = [
        Case { input: "192.0.2.0/24", expected: Ok("192.0.2.0/24") },
        // Host bits are cleared, as postscreen and iptables do.
        Case { input: "192.0.2.77/24", expected: Ok("192.0.2.0/24") },
        Case { input: "192.0.2.1", expected: Ok("192.0.2.1/32") },
        Case { input: "0.0.0.0/0", expected: Ok("0.0.0.0/0") },
        Case { input: "10.1.2.3/0", expected: Ok("0.0.0.0/0") },
        Case { input: "2001:db8::1", expected: Ok("2001:db8::1/128") },
        Case { input: "2001:DB8:0:0:1::/48", expected: Ok("2001:db8::/48") },
        Case { input: "::/0", expected: Ok("::/0") },
        // IPv4-mapped IPv6 is IPv4 from /96 on, and stays IPv6 when it covers more.
        Case { input: "::ffff:192.0.2.1", expected: Ok("192.0.2.1/32") },
        Case { input: "::ffff:192.0.2.0/120", expected: Ok("192.0.2.0/24") },
        Case { input: "::ffff:0.0.0.0/96", expected: Ok("0.0.0.0/0") },
        Case { input: "::ffff:0:0/95", expected: Ok("::fffe:0:0/95") },
        Case { input: "300.1.2.3/8", expected: Err(r#"invalid prefix "300.1.2.3/8": not an IP address"#) },
        Case { input: "192.0.2.0/33", expected: Err(r#"invalid prefix "192.0.2.0/33": /33 is longer than the 32-bit address"#) },
        Case { input: "2001:db8::/129", expected: Err(r#"invalid prefix "2001:db8::/129": /129 is longer than the 128-bit address"#) },
        Case { input: "192.0.2.0/", expected: Err(r#"invalid prefix "192.0.2.0/": prefix length is not a number"#) },
        Case { input: "192.0.2.0/+8", expected: Err(r#"invalid prefix "192.0.2.0/+8": prefix length is not a number"#) },
        Case { input: "192.0.2.0/24/8", expected: Err(r#"invalid prefix "192.0.2.0/24/8": prefix length is not a number"#) },
        Case { input: "192.0.2.0/99999999999", expected: Err(r#"invalid prefix "192.0.2.0/99999999999": prefix length is not a number"#) },
        Case { input: "", expected: Err(r#"invalid prefix "": not an IP address"#) },
        Case { input: " 192.0.2.1", expected: Err(r#"invalid prefix " 192.0.2.1": not an IP address"#) },
        Case { input: "192.0.2", expected: Err(r#"invalid prefix "192.0.2": not an IP address"#) },
        Case { input: "fe80::1%eth0", expected: Err(r#"invalid prefix "fe80::1%eth0": not an IP address"#) },
        Case { input: "example.com", expected: Err(r#"invalid prefix "example.com": not an IP address"#) },
    ];
    for c in cases {
        let got = c
            .input
            .parse::<Prefix>()
            .map(|p| p.to_string())
            .map_err(|e| e.to_string());
        let expected = c.expected.map(str::to_owned).map_err(str::to_owned);
        assert_eq!(got, expected, "input {:?}", c.input);
    }
}

#[test]
fn strict_parse_refuses_host_bits() {
    struct Case {
        input: &'static str,
        expected: Result<&'static str, &'static str>,
    }
    #[rustfmt::skip]
    let cases = [
        Case { input: "192.0.2.0/24", expected: Ok("192.0.2.0/24") },
        Case { input: "192.0.2.1", expected: Ok("192.0.2.1/32") },
        Case { input: "::ffff:192.0.2.0/120", expected: Ok("192.0.2.0/24") },
        Case { input: "192.0.2.1/24", expected: Err(r#"invalid prefix "192.0.2.1/24": host bits are set (the network is 192.0.2.0/24)"#) },
        Case { input: "2001:db8::1/32", expected: Err(r#"invalid prefix "2001:db8::1/32": host bits are set (the network is 2001:db8::/32)"#) },
        Case { input: "192.0.2.0/40", expected: Err(r#"invalid prefix "192.0.2.0/40": /40 is longer than the 32-bit address"#) },
    ];
    for c in cases {
        let got = Prefix::parse_strict(c.input)
            .map(|p| p.to_string())
            .map_err(|e| e.to_string());
        let expected = c.expected.map(str::to_owned).map_err(str::to_owned);
        assert_eq!(got, expected, "input {:?}", c.input);
    }
}

#[test]
fn long_garbage_is_shortened_in_errors() {
    let text = "x".repeat(10_000);
    let msg = text.parse::<Prefix>().unwrap_err().to_string();
    assert!(msg.len() < 200, "{msg}");
    assert!(msg.contains("..."), "{msg}");
}

#[test]
fn bounds_and_membership() {
    struct Case {
        prefix: &'static str,
        first: &'static str,
        last: &'static str,
        inside: &'static [&'static str],
        outside: &'static [&'static str],
    }
    #[rustfmt::skip]
    let cases = [
        Case { prefix: "192.0.2.0/24", first: "192.0.2.0", last: "192.0.2.255",
               inside: &["192.0.2.0", "192.0.2.255", "::ffff:192.0.2.9"], outside: &["192.0.3.0", "192.0.1.255", "2001:db8::"] },
        Case { prefix: "0.0.0.0/0", first: "0.0.0.0", last: "255.255.255.255",
               inside: &["203.0.113.1", "::ffff:1.2.3.4"], outside: &["::1"] },
        Case { prefix: "198.51.100.7/32", first: "198.51.100.7", last: "198.51.100.7",
               inside: &["198.51.100.7"], outside: &["198.51.100.6", "198.51.100.8"] },
        Case { prefix: "2001:db8::/32", first: "2001:db8::", last: "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
               inside: &["2001:db8:1::1"], outside: &["2001:db9::", "192.0.2.1"] },
        Case { prefix: "::/0", first: "::", last: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
               inside: &["2001:db8::1"], outside: &["192.0.2.1", "::ffff:192.0.2.1"] },
    ];
    for c in cases {
        let pre = p(c.prefix);
        assert_eq!(pre.first(), ip(c.first), "{}", c.prefix);
        assert_eq!(pre.last(), ip(c.last), "{}", c.prefix);
        for a in c.inside {
            assert!(pre.contains(ip(a)), "{} should contain {a}", c.prefix);
        }
        for a in c.outside {
            assert!(!pre.contains(ip(a)), "{} should not contain {a}", c.prefix);
        }
    }
}

#[test]
fn prefix_containment() {
    #[rustfmt::skip]
    let cases = [
        ("10.0.0.0/8", "10.1.0.0/16", true),
        ("10.0.0.0/8", "10.0.0.0/8", true),
        ("10.1.0.0/16", "10.0.0.0/8", false),
        ("10.0.0.0/8", "11.0.0.0/16", false),
        ("0.0.0.0/0", "203.0.113.0/24", true),
        ("0.0.0.0/0", "2001:db8::/32", false),
        ("2001:db8::/32", "2001:db8:ff00::/40", true),
        ("2001:db8::/32", "2001:db9::/48", false),
    ];
    for (outer, inner, expected) in cases {
        assert_eq!(
            p(outer).contains_prefix(&p(inner)),
            expected,
            "{outer} ⊇ {inner}"
        );
    }
}

#[test]
fn ranges_become_minimal_prefix_sets() {
    struct Case {
        first: &'static str,
        last: &'static str,
        expected: Option<&'static [&'static str]>,
    }
    #[rustfmt::skip]
    let cases = [
        Case { first: "1.2.3.4", last: "1.2.3.20", expected: Some(&["1.2.3.4/30", "1.2.3.8/29", "1.2.3.16/30", "1.2.3.20/32"]) },
        Case { first: "127.0.0.0", last: "127.0.0.255", expected: Some(&["127.0.0.0/24"]) },
        Case { first: "127.0.0.2", last: "127.0.0.10", expected: Some(&["127.0.0.2/31", "127.0.0.4/30", "127.0.0.8/31", "127.0.0.10/32"]) },
        Case { first: "192.0.2.9", last: "192.0.2.9", expected: Some(&["192.0.2.9/32"]) },
        Case { first: "0.0.0.0", last: "255.255.255.255", expected: Some(&["0.0.0.0/0"]) },
        Case { first: "255.255.255.254", last: "255.255.255.255", expected: Some(&["255.255.255.254/31"]) },
        Case { first: "::", last: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", expected: Some(&["::/0"]) },
        Case { first: "2001:db8::", last: "2001:db8::2", expected: Some(&["2001:db8::/127", "2001:db8::2/128"]) },
        Case { first: "192.0.2.10", last: "192.0.2.9", expected: None },
        Case { first: "192.0.2.1", last: "2001:db8::", expected: None },
    ];
    for c in cases {
        let got = Prefix::cover_range(ip(c.first), ip(c.last))
            .map(|v| v.iter().map(Prefix::to_string).collect::<Vec<_>>());
        let expected = c
            .expected
            .map(|e| e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, expected, "{}-{}", c.first, c.last);
    }
}

#[test]
fn worst_case_range_stays_small() {
    let v = Prefix::cover_range(ip("0.0.0.1"), ip("255.255.255.254")).unwrap();
    assert_eq!(v.len(), 62);
    let v = Prefix::cover_range(ip("::1"), ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")).unwrap();
    assert_eq!(v.len(), 254);
}

#[test]
fn order_puts_parents_first_and_v4_before_v6() {
    let mut v = [
        p("2001:db8::/32"),
        p("10.1.0.0/16"),
        p("10.0.0.0/8"),
        p("9.0.0.0/8"),
    ];
    v.sort();
    let s: Vec<String> = v.iter().map(Prefix::to_string).collect();
    assert_eq!(
        s,
        ["9.0.0.0/8", "10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"]
    );
}

#[test]
fn serde_uses_the_text_form() {
    let v = vec![p("192.0.2.0/24"), p("2001:db8::/48")];
    let json = serde_json::to_string(&v).unwrap();
    assert_eq!(json, r#"["192.0.2.0/24","2001:db8::/48"]"#);
    let back: Vec<Prefix> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, v);
    let err = serde_json::from_str::<Prefix>(r#""300.0.0.0/8""#).unwrap_err();
    assert!(
        err.to_string().contains(r#"invalid prefix "300.0.0.0/8""#),
        "{err}"
    );
}

#[test]
fn constructors_mask_and_check_length() {
    assert_eq!(
        Prefix::new(ip("192.0.2.200"), 25).unwrap(),
        p("192.0.2.128/25")
    );
    assert_eq!(
        Prefix::new(ip("::ffff:192.0.2.200"), 121).unwrap(),
        p("192.0.2.128/25")
    );
    assert_eq!(
        Prefix::new(ip("192.0.2.1"), 33).unwrap_err().to_string(),
        r#"invalid prefix "192.0.2.1/33": /33 is longer than the 32-bit address"#
    );
    assert_eq!(Prefix::from(ip("::ffff:192.0.2.1")), p("192.0.2.1/32"));
    assert!(Prefix::from(ip("2001:db8::1")).is_host());
    assert!(!p("2001:db8::/64").is_v4());
    assert_eq!(p("2001:db8::/64").prefix_len(), 64);
}

#[test]
fn ipv4_text_is_what_display_writes_and_reads_back() {
    let mut x: u32 = 0x9E37_79B9;
    let mut cases = vec![(0, 0), (u32::MAX, 32), (0x0A00_0000, 8), (0xC000_0201, 32)];
    for _ in 0..1000 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        cases.push((x, (x % 33) as u8));
    }
    for (addr, len) in cases {
        let p = Prefix::V4 { addr, len };
        let text = V4Text::new(addr, len);
        assert_eq!(text.as_str(), p.to_string());
        let json = serde_json::to_string(&p).expect("serializes");
        assert_eq!(json, format!("\"{p}\""));
    }
}
