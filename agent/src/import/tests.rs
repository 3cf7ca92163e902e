use super::*;

/// An entry as text: `prefix` or `prefix reason`.
fn entries(p: &Parsed) -> Vec<String> {
    p.entries
        .iter()
        .map(|e| match &e.reason {
            Some(r) => format!("{} {r}", e.prefix),
            None => e.prefix.to_string(),
        })
        .collect()
}

fn errors(p: &Parsed) -> Vec<(usize, String)> {
    p.errors
        .iter()
        .map(|e| (e.line, e.message.clone()))
        .collect()
}

struct Case {
    name: &'static str,
    input: &'static str,
    entries: &'static [&'static str],
    errors: &'static [(usize, &'static str)],
}

fn run(format: Format, cases: &[Case]) {
    for c in cases {
        let got = parse(c.input, format);
        assert_eq!(entries(&got), c.entries, "{}: entries", c.name);
        let want: Vec<(usize, String)> =
            c.errors.iter().map(|(l, m)| (*l, m.to_string())).collect();
        assert_eq!(errors(&got), want, "{}: errors", c.name);
    }
}

#[test]
fn plain() {
    #[rustfmt::skip]
    let cases = [
        Case {
            name: "addresses, networks, comments, blanks",
            input: "# local list\n192.0.2.1\n\n  198.51.100.0/24  \n; other comment\n203.0.113.7/32 # trailing\n2001:db8::/32;why\r\n",
            entries: &["192.0.2.1/32", "198.51.100.0/24", "203.0.113.7/32", "2001:db8::/32"],
            errors: &[],
        },
        Case {
            name: "host bits masked",
            input: "192.0.2.77/24\n",
            entries: &["192.0.2.0/24"],
            errors: &[],
        },
        Case {
            name: "bad lines are reported with their numbers, good ones kept",
            input: "192.0.2.1\n300.1.2.3/8\n198.51.100.0/24\n192.0.2.1-192.0.2.9\n192.0.2.0/33 # typo\nexample.com\n203.0.113.0/24\n",
            entries: &["192.0.2.1/32", "198.51.100.0/24", "203.0.113.0/24"],
            errors: &[
                (2, r#"invalid prefix "300.1.2.3/8": not an IP address"#),
                (4, r#"invalid prefix "192.0.2.1-192.0.2.9": not an IP address; address ranges need format rbldnsd"#),
                (5, r#"invalid prefix "192.0.2.0/33": /33 is longer than the 32-bit address"#),
                (6, r#"invalid prefix "example.com": not an IP address"#),
            ],
        },
        Case {
            name: "two tokens on a line is an error, not a guess",
            input: "192.0.2.1 192.0.2.2\n",
            entries: &[],
            errors: &[(1, r#"invalid prefix "192.0.2.1 192.0.2.2": not an IP address"#)],
        },
        Case { name: "empty file", input: "", entries: &[], errors: &[] },
        Case { name: "byte order mark", input: "\u{feff}192.0.2.1\n", entries: &["192.0.2.1/32"], errors: &[] },
    ];
    run(Format::Plain, &cases);
}

#[test]
fn spamhaus_drop() {
    #[rustfmt::skip]
    let cases = [
        Case {
            name: "text DROP",
            input: "; Spamhaus DROP List 2024/01/01 - (c) 2024 The Spamhaus Project\n; Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\n1.10.16.0/20 ; SBL256894\n1.19.0.0/16 ; SBL434604\n2001:db8::/32 ; SBL1\n192.0.2.0/24\n",
            entries: &["1.10.16.0/20 SBL256894", "1.19.0.0/16 SBL434604", "2001:db8::/32 SBL1", "192.0.2.0/24"],
            errors: &[],
        },
        Case {
            name: "JSON lines with the metadata trailer",
            input: concat!(
                r#"{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}"#, "\n",
                r#"{"cidr":"2001:db8::/32","sblid":"SBL2","rir":"ripencc"}"#, "\n",
                r#"{"type":"metadata","timestamp":1704067200,"size":123,"records":2,"copyright":"(c) 2024 The Spamhaus Project SLU","terms":"https://www.spamhaus.org/drop/terms/"}"#, "\n",
            ),
            entries: &["1.10.16.0/20 SBL256894", "2001:db8::/32 SBL2"],
            errors: &[],
        },
        Case {
            name: "bad records",
            input: concat!(
                "1.10.16.0/20 ; SBL256894\n",
                "1.10.16.0/40 ; SBL9\n",
                r#"{"sblid":"SBL3"}"#, "\n",
                r#"{"cidr":"1.2.3.0/24","#, "\n",
                r#"{"cidr":"nope","sblid":"SBL4"}"#, "\n",
            ),
            entries: &["1.10.16.0/20 SBL256894"],
            errors: &[
                (2, r#"invalid prefix "1.10.16.0/40": /40 is longer than the 32-bit address"#),
                (3, r#"JSON record has no "cidr""#),
                (4, "invalid JSON record: EOF while parsing a value at line 1 column 21"),
                (5, r#"invalid prefix "nope": not an IP address"#),
            ],
        },
    ];
    run(Format::SpamhausDrop, &cases);
}

#[test]
fn rbldnsd() {
    #[rustfmt::skip]
    let cases = [
        Case {
            name: "specials, defaults and comments list nothing",
            input: "$SOA 1w ns1.example.net admin.example.net 0 2h 2h 1w 1h\n$NS 1w ns1.example.net\n$TTL 1h\n#$ 1 text\n:127.0.0.2:Listed, see https://example.net/$\n# comment\n; comment\n\n",
            entries: &[],
            errors: &[],
        },
        Case {
            name: "every spelling of 127.0.0.0/24 from the rbldnsd manual",
            input: "127.0.0.0/24\n127.0.0\n127/24\n127-127.0.0\n127.0.0.0-127.0.0.255\n",
            entries: &["127.0.0.0/24", "127.0.0.0/24", "127.0.0.0/24", "127.0.0.0/24", "127.0.0.0/24"],
            errors: &[],
        },
        Case {
            name: "every spelling of 127.16.0.0-127.31.255.255",
            input: "127.16.0.0-127.31.255.255\n127.16.0-127.31.255\n127.16-127.31\n127.16-31\n127.16.0.0/12\n127.16.0/12\n127.16/12\n",
            entries: &["127.16.0.0/12", "127.16.0.0/12", "127.16.0.0/12", "127.16.0.0/12", "127.16.0.0/12", "127.16.0.0/12", "127.16.0.0/12"],
            errors: &[],
        },
        Case {
            name: "octet prefixes and suffix ranges",
            input: "10\n10.1\n10.1.2\n10.1.2.3\n127.16.0-31\n10/8\n",
            entries: &["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "127.16.0.0/19", "10.0.0.0/8"],
            errors: &[],
        },
        Case {
            name: "ranges expand to the fewest prefixes",
            input: "127.0.0.2-10\n1.2.3.4-1.2.3.20\n",
            entries: &[
                "127.0.0.2/31", "127.0.0.4/30", "127.0.0.8/31", "127.0.0.10/32",
                "1.2.3.4/30", "1.2.3.8/29", "1.2.3.16/30", "1.2.3.20/32",
            ],
            errors: &[],
        },
        Case {
            name: "values: A and TXT, TXT alone, A alone, comment",
            input: "1.2.3.4 :127.0.0.2:Listed because of spam\n1.2.3.5\t:2:Open proxy: see $\n1.2.3.6 Dialup range\n1.2.3.7 :127.0.0.3\n1.2.3.8 :127.0.0.3:\n127/8 ; loopback network\n10/8 # private\n",
            entries: &[
                "1.2.3.4/32 Listed because of spam", "1.2.3.5/32 Open proxy: see $", "1.2.3.6/32 Dialup range",
                "1.2.3.7/32", "1.2.3.8/32", "127.0.0.0/8", "10.0.0.0/8",
            ],
            errors: &[],
        },
        Case {
            name: "a range keeps its value on every piece",
            input: "192.0.2.1-2 :2:range\n",
            entries: &["192.0.2.1/32 range", "192.0.2.2/32 range"],
            errors: &[],
        },
        Case {
            // A leading ':' is always a default-value line, so "::" addresses need a "0".
            name: "ip6trie data",
            input: "2001:db8::/32 :2:v6 spam\n2001:db8:1::1\n0::ffff:192.0.2.0/120\n",
            entries: &["2001:db8::/32 v6 spam", "2001:db8:1::1/128", "192.0.2.0/24"],
            errors: &[],
        },
        Case {
            name: "exclusions and bad entries are reported, not dropped",
            input: "10/8\n!10.1.2.3\n10.1.2.300\n1.2.3.4.5\n1.2.3.20-1.2.3.4\n10/33\n10/x\n2001:db8::/200\n1..2\n192.0.2.0/24\n",
            entries: &["10.0.0.0/8", "192.0.2.0/24"],
            errors: &[
                (2, "exclusions (!) are not supported"),
                (3, r#"invalid ip4set entry "10.1.2.300": bad octet "300""#),
                (4, r#"invalid ip4set entry "1.2.3.4.5": more than 4 octets"#),
                (5, r#"invalid ip4set entry "1.2.3.20-1.2.3.4": the range ends before it starts"#),
                (6, r#"invalid ip4set entry "10/33": bad prefix length "33""#),
                (7, r#"invalid ip4set entry "10/x": bad prefix length "x""#),
                (8, r#"invalid prefix "2001:db8::/200": /200 is longer than the 128-bit address"#),
                (9, r#"invalid ip4set entry "1..2": bad octet """#),
            ],
        },
    ];
    run(Format::Rbldnsd, &cases);
}

#[test]
fn error_lines_keep_their_text_cut_short() {
    let long = format!("{}\n", "9".repeat(5000));
    let got = parse(&long, Format::Plain);
    assert_eq!(got.errors.len(), 1);
    assert_eq!(got.errors[0].text.len(), MAX_LINE_SHOWN);
    assert!(
        got.errors[0].message.len() < 200,
        "{}",
        got.errors[0].message
    );
    let got = parse("ok\n", Format::Plain);
    assert_eq!(got.errors[0].text, "ok");
    assert_eq!(
        got.errors[0].to_string(),
        r#"line 1: invalid prefix "ok": not an IP address"#
    );
}

#[test]
fn format_names_and_detection() {
    for (f, name) in Format::ALL {
        assert_eq!(name.parse::<Format>(), Ok(f));
        assert_eq!(f.to_string(), name);
    }
    assert_eq!(
        "csv".parse::<Format>().unwrap_err().to_string(),
        r#"unknown list format "csv" (expected plain, spamhaus-drop or rbldnsd)"#
    );

    #[rustfmt::skip]
    let cases = [
        ("; Spamhaus DROP List 2024/01/01\n1.10.16.0/20 ; SBL256894\n", Format::SpamhausDrop),
        ("1.10.16.0/20 ; SBL256894\n", Format::SpamhausDrop),
        (r#"{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}"#, Format::SpamhausDrop),
        ("$SOA 1w ns1.example.net admin.example.net 0 2h 2h 1w 1h\n127.0.0.2\n", Format::Rbldnsd),
        (":127.0.0.2:Listed\n127.0.0.2\n", Format::Rbldnsd),
        ("10/8\n!10.1.2.3\n", Format::Rbldnsd),
        ("# my list\n192.0.2.0/24\n198.51.100.1 ; partner\n", Format::Plain),
        ("", Format::Plain),
    ];
    for (head, expected) in cases {
        assert_eq!(Format::detect(head), expected, "{head:?}");
    }
}

/// `cargo test --release -p prefilter --lib import -- --ignored --nocapture`
#[test]
#[ignore = "timing; run in release"]
fn plain_parses_a_million_lines_fast() {
    let mut text = String::with_capacity(20 << 20);
    for i in 0u32..1_000_000 {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 | (i << 4));
        if i % 10 == 0 {
            text.push_str(&format!("{a}/28 # note\n"));
        } else {
            text.push_str(&format!("{a}\n"));
        }
    }
    let start = std::time::Instant::now();
    let got = parse(&text, Format::Plain);
    let took = start.elapsed();
    println!("plain: 1,000,000 lines ({} bytes) in {took:?}", text.len());
    assert_eq!(got.entries.len(), 1_000_000);
    assert!(got.errors.is_empty());
    if !cfg!(debug_assertions) {
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    }
}
