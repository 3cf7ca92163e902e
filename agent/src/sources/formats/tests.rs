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
    /// rbldnsd entries with an error-code value.
    skipped: &'static [(usize, &'static str)],
}

fn run(format: Format, cases: &[Case]) {
    for c in cases {
        let got = parse(c.input, format);
        assert_eq!(entries(&got), c.entries, "{}: entries", c.name);
        let want: Vec<(usize, String)> =
            c.errors.iter().map(|(l, m)| (*l, m.to_string())).collect();
        assert_eq!(errors(&got), want, "{}: errors", c.name);
        let skipped: Vec<(usize, &str)> = got
            .skipped
            .iter()
            .map(|s| (s.line, s.message.as_str()))
            .collect();
        assert_eq!(skipped, c.skipped, "{}: skipped", c.name);
        for e in &got.errors {
            assert_eq!(
                e.text,
                c.input.lines().nth(e.line - 1).unwrap(),
                "{}",
                c.name
            );
        }
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
            skipped: &[],
        },
        Case {
            name: "host bits masked",
            input: "192.0.2.77/24\n",
            entries: &["192.0.2.0/24"],
            errors: &[],
            skipped: &[],
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
            skipped: &[],
        },
        Case {
            name: "two tokens on a line is an error, not a guess",
            input: "192.0.2.1 192.0.2.2\n",
            entries: &[],
            errors: &[(1, r#"invalid prefix "192.0.2.1 192.0.2.2": not an IP address"#)],
            skipped: &[],
        },
        Case { name: "empty file", input: "", entries: &[], errors: &[], skipped: &[] },
        Case { name: "byte order mark", input: "\u{feff}192.0.2.1\n", entries: &["192.0.2.1/32"], errors: &[], skipped: &[] },
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
            skipped: &[],
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
            skipped: &[],
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
            skipped: &[],
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
            input: "$SOA 1w ns1.example.net admin.example.net 0 2h 2h 1w 1h\n$NS 1w ns1.example.net\n$TTL 1h\n$DATASET ip4set sbl\n$= example\n#$ 1 text\n:$ 2 text\n:127.0.0.2:Listed, see https://example.net/$\n# comment\n; comment\n\n",
            entries: &[],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "octet prefixes and suffix ranges",
            input: "10\n11.1\n12.1.2\n13.1.2.3\n127.16.0-31\n",
            entries: &["10.0.0.0/8", "11.1.0.0/16", "12.1.2.0/24", "13.1.2.3/32", "127.16.0.0/19"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "ranges expand to the fewest prefixes, in address order",
            input: "127.0.0.2-10\n1.2.3.4-1.2.3.20\n",
            entries: &[
                "1.2.3.4/30", "1.2.3.8/29", "1.2.3.16/30", "1.2.3.20/32",
                "127.0.0.2/31", "127.0.0.4/30", "127.0.0.8/31", "127.0.0.10/32",
            ],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "values: A and TXT, TXT alone, A alone, comment, value glued to the key",
            input: "1.2.3.4 :127.0.0.2:Listed because of spam\n1.2.3.5\t:2:Open proxy: see $\n1.2.3.6 Dialup range\n1.2.3.7 :127.0.0.3\n1.2.3.8 :127.0.0.3:\n127/8 ; loopback network\n10/8 # private\n1.2.3.10:127.2:glued\n1.2.3.12 :3:#not text\n",
            entries: &[
                "1.2.3.4/32 Listed because of spam", "1.2.3.5/32 Open proxy: see $", "1.2.3.6/32 Dialup range",
                "1.2.3.7/32", "1.2.3.8/32", "1.2.3.10/32 glued", "1.2.3.12/32", "10.0.0.0/8", "127.0.0.0/8",
            ],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "a `:A:TXT` line's text is the reason of the entries after it that give none",
            input: "192.0.2.1\n:127.0.0.2:Listed as a spam source, see $\n192.0.2.3\n192.0.2.5 :4\n192.0.2.7 own text\n:3\n192.0.2.9\n",
            entries: &["192.0.2.1/32", "192.0.2.3/32 Listed as a spam source, see $", "192.0.2.5/32 Listed as a spam source, see $", "192.0.2.7/32 own text", "192.0.2.9/32"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "a range keeps its value on every piece",
            input: "192.0.2.1-2 :2:range\n",
            entries: &["192.0.2.1/32 range", "192.0.2.2/32 range"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "adjacent entries merge when their TXT is the same",
            input: "192.0.2.0/25 :2:a\n192.0.2.128/25 :3:a\n198.51.100.0/25 a\n198.51.100.128/25 b\n",
            entries: &["192.0.2.0/24 a", "198.51.100.0/25 a", "198.51.100.128/25 b"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "of two listings of one prefix the first keeps its TXT",
            input: "192.0.2.1 first\n192.0.2.1 second\n192.0.2.0/24\n",
            entries: &["192.0.2.0/32", "192.0.2.1/32 first", "192.0.2.2/31", "192.0.2.4/30", "192.0.2.8/29", "192.0.2.16/28", "192.0.2.32/27", "192.0.2.64/26", "192.0.2.128/25"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "ip6trie and ip6tset data",
            input: "2001:db8::/32 :2:v6 spam\n2001:db9:1::1\n0::ffff:192.0.2.0/120\n::1\n2001:dbb:1:2\n2001:dba/32\n",
            entries: &["192.0.2.0/24", "::1/128", "2001:db8::/32 v6 spam", "2001:db9:1::1/128", "2001:dba::/32", "2001:dbb:1:2::/64"],
            errors: &[],
            skipped: &[],
        },
    ];
    run(Format::Rbldnsd, &cases);
}

/// One key per case: a file listing them together would merge them.
#[test]
fn rbldnsd_spellings() {
    struct Case {
        input: &'static str,
        expected: &'static str,
    }
    #[rustfmt::skip]
    let cases = [
        // Every spelling of 127.0.0.0/24 from the rbldnsd manual.
        Case { input: "127.0.0.0/24", expected: "127.0.0.0/24" },
        Case { input: "127.0.0", expected: "127.0.0.0/24" },
        Case { input: "127/24", expected: "127.0.0.0/24" },
        Case { input: "127-127.0.0", expected: "127.0.0.0/24" },
        Case { input: "127.0.0.0-127.0.0.255", expected: "127.0.0.0/24" },
        // And of 127.16.0.0-127.31.255.255.
        Case { input: "127.16.0.0-127.31.255.255", expected: "127.16.0.0/12" },
        Case { input: "127.16.0-127.31.255", expected: "127.16.0.0/12" },
        Case { input: "127.16-127.31", expected: "127.16.0.0/12" },
        Case { input: "127.16-31", expected: "127.16.0.0/12" },
        Case { input: "127.16.0.0/12", expected: "127.16.0.0/12" },
        Case { input: "127.16.0/12", expected: "127.16.0.0/12" },
        Case { input: "127.16/12", expected: "127.16.0.0/12" },
        Case { input: "10", expected: "10.0.0.0/8" },
        Case { input: "10/8", expected: "10.0.0.0/8" },
        Case { input: "1.2.3.4-5", expected: "1.2.3.4/31" },
    ];
    for c in cases {
        let got = parse(c.input, Format::Rbldnsd);
        assert_eq!(entries(&got), [c.expected], "{}", c.input);
        assert!(got.errors.is_empty(), "{}: {:?}", c.input, got.errors);
    }
}

#[test]
fn rbldnsd_exclusions() {
    #[rustfmt::skip]
    let cases = [
        Case {
            name: "the address the zone excludes is not listed",
            input: "198.51.100.0/26\n!198.51.100.7\n",
            entries: &["198.51.100.0/30", "198.51.100.4/31", "198.51.100.6/32", "198.51.100.8/29", "198.51.100.16/28", "198.51.100.32/27"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "file order does not matter",
            input: "!198.51.100.7\n198.51.100.0/29\n",
            entries: &["198.51.100.0/30", "198.51.100.4/31", "198.51.100.6/32"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "a listing inside an exclusion inside a listing is listed",
            input: "192.0.2.0/24 outer\n!192.0.2.0/25\n192.0.2.0/26 inner\n!192.0.2.1\n",
            entries: &["192.0.2.0/32 inner", "192.0.2.2/31 inner", "192.0.2.4/30 inner", "192.0.2.8/29 inner", "192.0.2.16/28 inner", "192.0.2.32/27 inner", "192.0.2.128/25 outer"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "an exclusion of a range; its value is ignored",
            input: "192.0.2.0/24\n!192.0.2.1-192.0.2.254 :2:ignored\n",
            entries: &["192.0.2.0/32", "192.0.2.255/32"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "at equal length the exclusion wins",
            input: "192.0.2.0/24\n!192.0.2.0/24\n198.51.100.0/24\n",
            entries: &["198.51.100.0/24"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "an exclusion with nothing around it lists nothing",
            input: "!192.0.2.1\n! 2001:db8::1\n",
            entries: &[],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "nested prefixes that start at address 0",
            input: "0.0.0.0/30\n!0.0.0.0/31\n0.0.0.0/32\n",
            entries: &["0.0.0.0/32", "0.0.0.2/31"],
            errors: &[],
            skipped: &[],
        },
        Case {
            // Two halves: a listed /0 itself fails its line.
            name: "the whole address space, cut at both ends",
            input: "0/1 all\n128/1 all\n!0.0.0.0/32\n!255.255.255.255/32\n0::/1\n",
            entries: &[
                "0.0.0.1/32 all", "0.0.0.2/31 all", "0.0.0.4/30 all", "0.0.0.8/29 all", "0.0.0.16/28 all", "0.0.0.32/27 all",
                "0.0.0.64/26 all", "0.0.0.128/25 all", "0.0.1.0/24 all", "0.0.2.0/23 all", "0.0.4.0/22 all", "0.0.8.0/21 all",
                "0.0.16.0/20 all", "0.0.32.0/19 all", "0.0.64.0/18 all", "0.0.128.0/17 all", "0.1.0.0/16 all", "0.2.0.0/15 all",
                "0.4.0.0/14 all", "0.8.0.0/13 all", "0.16.0.0/12 all", "0.32.0.0/11 all", "0.64.0.0/10 all", "0.128.0.0/9 all",
                "1.0.0.0/8 all", "2.0.0.0/7 all", "4.0.0.0/6 all", "8.0.0.0/5 all", "16.0.0.0/4 all", "32.0.0.0/3 all",
                "64.0.0.0/2 all", "128.0.0.0/2 all", "192.0.0.0/3 all", "224.0.0.0/4 all", "240.0.0.0/5 all", "248.0.0.0/6 all",
                "252.0.0.0/7 all", "254.0.0.0/8 all", "255.0.0.0/9 all", "255.128.0.0/10 all", "255.192.0.0/11 all",
                "255.224.0.0/12 all", "255.240.0.0/13 all", "255.248.0.0/14 all", "255.252.0.0/15 all", "255.254.0.0/16 all",
                "255.255.0.0/17 all", "255.255.128.0/18 all", "255.255.192.0/19 all", "255.255.224.0/20 all",
                "255.255.240.0/21 all", "255.255.248.0/22 all", "255.255.252.0/23 all", "255.255.254.0/24 all",
                "255.255.255.0/25 all", "255.255.255.128/26 all", "255.255.255.192/27 all", "255.255.255.224/28 all",
                "255.255.255.240/29 all", "255.255.255.248/30 all", "255.255.255.252/31 all", "255.255.255.254/32 all",
                "::/1",
            ],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "an IPv4-mapped exclusion cuts into IPv4",
            input: "192.0.2.0/30\n!::ffff:192.0.2.1\n",
            entries: &["192.0.2.0/32", "192.0.2.2/31"],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "IPv6 exclusions, also in ip6tset's form",
            input: "2001:db8::/32\n!2001:db8::/33\n2001:db9:1:2\n!2001:db9:1:2:8000::/65\n",
            entries: &["2001:db8:8000::/33", "2001:db9:1:2::/65"],
            errors: &[],
            skipped: &[],
        },
        Case {
            // As IPv4, what is left of ::fffe:0:0/95 would be 0.0.0.0/0.
            name: "an IPv6 span in the IPv4-mapped block is not IPv4",
            input: "::fffe:0:0/95\n!::fffe:0:0/96\n",
            entries: &[],
            errors: &[],
            skipped: &[],
        },
        Case {
            name: "an IPv6 span ending in the IPv4-mapped block",
            input: "0::/80\n!0::/81\n",
            entries: &[
                "::8000:0:0/82", "::c000:0:0/83", "::e000:0:0/84", "::f000:0:0/85", "::f800:0:0/86",
                "::fc00:0:0/87", "::fe00:0:0/88", "::ff00:0:0/89", "::ff80:0:0/90", "::ffc0:0:0/91",
                "::ffe0:0:0/92", "::fff0:0:0/93", "::fff8:0:0/94", "::fffc:0:0/95", "::fffe:0:0/96",
            ],
            errors: &[],
            skipped: &[],
        },
    ];
    run(Format::Rbldnsd, &cases);
}

#[test]
fn rbldnsd_error_codes_are_not_listings() {
    const CODE: &str = "value 127.255.255.254 is a DNSBL error code, not a listing";
    #[rustfmt::skip]
    let cases = [
        Case {
            name: "a default value line applies to the entries after it",
            input: ":127.255.255.254:Query refused\n192.0.2.1\n192.0.2.2 :127.0.0.2:spam\n192.0.2.3 text only\n:2:\n192.0.2.4\n",
            entries: &["192.0.2.2/32 spam", "192.0.2.4/32"],
            errors: &[],
            skipped: &[(2, CODE), (4, CODE)],
        },
        Case {
            name: "an entry's own error code; the zone answers it, not the listing around it",
            input: "192.0.2.0/30 spam\n192.0.2.1 :127.255.255.252:\n",
            entries: &["192.0.2.0/32 spam", "192.0.2.2/31 spam"],
            errors: &[],
            skipped: &[(2, "value 127.255.255.252 is a DNSBL error code, not a listing")],
        },
        Case {
            name: "a bad default line keeps the one before",
            input: ":127.255.255.254:\n:x:\n192.0.2.1\n",
            entries: &[],
            errors: &[(2, r#"invalid default value ":x:": bad A value: bad octet "x""#)],
            skipped: &[(3, CODE)],
        },
        Case {
            name: "127.255.255.0/24 only",
            input: ":127.255.254.1:\n192.0.2.1\n192.0.2.2 :127.255.255.0:\n",
            entries: &["192.0.2.1/32"],
            errors: &[],
            skipped: &[(3, "value 127.255.255.0 is a DNSBL error code, not a listing")],
        },
    ];
    run(Format::Rbldnsd, &cases);
}

#[test]
fn rbldnsd_bad_lines() {
    #[rustfmt::skip]
    let cases = [
        Case {
            name: "bad entries are reported, the good lines around them kept",
            input: "10/8\n!10.1.2.300\n10.1.2.300\n1.2.3.4.5\n1.2.3.20-1.2.3.4\n10/33\n10/x\n2001:db8::/200\n1..2\n192.0.2.0/24\n!\nexample.com\n2001:db8:zz::1\n",
            entries: &["10.0.0.0/8", "192.0.2.0/24"],
            errors: &[
                (2, r#"invalid ip4set entry "10.1.2.300": bad octet "300""#),
                (3, r#"invalid ip4set entry "10.1.2.300": bad octet "300""#),
                (4, r#"invalid ip4set entry "1.2.3.4.5": more than 4 octets"#),
                (5, r#"invalid ip4set entry "1.2.3.20-1.2.3.4": the range ends before it starts"#),
                (6, r#"invalid ip4set entry "10/33": bad prefix length "33""#),
                (7, r#"invalid ip4set entry "10/x": bad prefix length "x""#),
                (8, r#"invalid prefix "2001:db8::/200": /200 is longer than the 128-bit address"#),
                (9, r#"invalid ip4set entry "1..2": bad octet """#),
                (11, "an exclusion (!) needs an address"),
                (12, r#"invalid ip4set entry "example.com": bad octet "example""#),
                (13, r#"invalid prefix "2001:db8:zz::1": not an IP address"#),
            ],
            skipped: &[],
        },
        Case {
            name: "bad values",
            input: "192.0.2.1 :300:x\n192.0.2.2 :0:\n192.0.2.3 :127.0.0.2 junk\n192.0.2.4 ::text\n192.0.2.5 :127.0.0.0.1:\n192.0.2.6 :3:ok\n",
            entries: &["192.0.2.6/32 ok"],
            errors: &[
                (1, r#"invalid value ":300:x": bad A value: bad octet "300""#),
                (2, r#"invalid value ":0:": A value "0" is not an address"#),
                (3, r#"invalid value ":127.0.0.2 junk": text after the A value needs a ":" before it"#),
                (4, r#"invalid value "::text": the A value is missing"#),
                (5, r#"invalid value ":127.0.0.0.1:": bad A value: more than 4 octets"#),
            ],
            skipped: &[],
        },
    ];
    run(Format::Rbldnsd, &cases);
}

/// The sweep against the definition, address by address, on random nested entries in
/// 10.0.0.0/24: the most specific entry decides, an exclusion wins at equal length, and
/// of equal listings the first one's TXT.
#[test]
fn rbldnsd_exclusions_match_the_definition() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..300 {
        let mut text = String::new();
        // (first, last, len, listed, txt) per line, in file order.
        let mut rules = Vec::new();
        for _ in 0..1 + next(12) {
            let len = 24 + next(9) as u32;
            let first = next(256) as u32 & (0xff << (32 - len)) & 0xff;
            let last = first | (0xff >> (len - 24));
            let listed = next(3) != 0;
            let txt = next(2);
            let bang = if listed { "" } else { "!" };
            text.push_str(&format!("{bang}10.0.0.{first}/{len} t{txt}\n"));
            rules.push((first, last, len, listed, txt));
        }
        let mut want: Vec<Option<u64>> = vec![None; 256];
        for (a, w) in want.iter_mut().enumerate() {
            let a = a as u32;
            let mut best: Option<(u32, bool, u64)> = None;
            for &(first, last, len, listed, txt) in &rules {
                if a < first || a > last {
                    continue;
                }
                let better = match best {
                    None => true,
                    Some((blen, blisted, _)) => len > blen || len == blen && blisted && !listed,
                };
                if better {
                    best = Some((len, listed, txt));
                }
            }
            *w = best.filter(|b| b.1).map(|b| b.2);
        }
        let got = parse(&text, Format::Rbldnsd);
        assert!(got.errors.is_empty(), "{text}");
        let mut have: Vec<Option<u64>> = vec![None; 256];
        for e in &got.entries {
            let Prefix::V4 { addr, len } = e.prefix else {
                panic!("{text}")
            };
            let txt: u64 = e.reason.as_deref().unwrap()[1..].parse().unwrap();
            for a in (addr & 0xff)..=((addr & 0xff) | (0xff >> (len - 24))) {
                assert!(
                    have[a as usize].is_none(),
                    "overlap at {a}, round {round}:\n{text}"
                );
                have[a as usize] = Some(txt);
            }
        }
        assert_eq!(have, want, "round {round}:\n{text}");
    }
}

/// Imports are lenient, as postscreen and iptables are: bits past the length are cleared.
#[test]
fn host_bits_are_cleared() {
    struct Case {
        format: Format,
        input: &'static str,
        expected: &'static str,
    }
    #[rustfmt::skip]
    let cases = [
        Case { format: Format::Plain, input: "192.0.2.77/24", expected: "192.0.2.0/24" },
        Case { format: Format::Plain, input: "2001:db8::1/32", expected: "2001:db8::/32" },
        Case { format: Format::SpamhausDrop, input: "1.10.16.5/20 ; SBL1", expected: "1.10.16.0/20 SBL1" },
        Case { format: Format::SpamhausDrop, input: r#"{"cidr":"1.10.16.5/20","sblid":"SBL1"}"#, expected: "1.10.16.0/20 SBL1" },
        Case { format: Format::Rbldnsd, input: "192.0.2.77/24", expected: "192.0.2.0/24" },
        Case { format: Format::Rbldnsd, input: "127.16.5/12", expected: "127.16.0.0/12" },
        Case { format: Format::Rbldnsd, input: "2001:db8::1/32", expected: "2001:db8::/32" },
        Case { format: Format::Rbldnsd, input: "2001:db8:1:2/32", expected: "2001:db8::/32" },
    ];
    for c in cases {
        let got = parse(c.input, c.format);
        assert_eq!(entries(&got), [c.expected], "{} {}", c.format, c.input);
        assert!(got.errors.is_empty(), "{}: {:?}", c.input, got.errors);
    }
}

#[test]
fn error_lines_keep_their_text_cut_short() {
    let long = format!("{}\n", "9".repeat(5000));
    let value = format!("192.0.2.1 :{}:\n", "9".repeat(5000));
    let cases = [
        (Format::Plain, &long),
        (Format::SpamhausDrop, &long),
        (Format::Rbldnsd, &long),
        (Format::Rbldnsd, &value),
    ];
    for (format, text) in cases {
        let got = parse(text, format);
        assert_eq!(got.errors.len(), 1, "{format}");
        assert_eq!(got.errors[0].text.len(), MAX_LINE_SHOWN, "{format}");
        let message = &got.errors[0].message;
        assert!(message.len() < 300, "{format}: {message}");
    }
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

/// `cargo test --release -p prefilter --lib import -- --ignored --nocapture`
#[test]
#[ignore = "timing; run in release"]
fn rbldnsd_resolves_a_million_entries_fast() {
    let mut text = String::with_capacity(24 << 20);
    text.push_str(":127.0.0.2:Listed\n");
    for i in 0u32..1_000_000 {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 | (i << 4));
        match i % 10 {
            0 => text.push_str(&format!("{a}/28 :2:note {i}\n")),
            1 => text.push_str(&format!("!{a}\n")),
            _ => text.push_str(&format!("{a}\n")),
        }
    }
    let start = std::time::Instant::now();
    let got = parse(&text, Format::Rbldnsd);
    let took = start.elapsed();
    println!(
        "rbldnsd: 1,000,000 lines ({} bytes) in {took:?}, {} entries",
        text.len(),
        got.entries.len()
    );
    assert!(got.errors.is_empty());
    if !cfg!(debug_assertions) {
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }
}

#[test]
fn csv_scores() {
    struct Case {
        name: &'static str,
        input: &'static str,
        entries: &'static [(&'static str, f64)],
        errors: &'static [(usize, &'static str)],
    }
    #[rustfmt::skip]
    let cases = [
        Case { name: "header, comments, host bits", input: "ip,score\n# c\n192.0.2.1,90\n198.51.100.7/24, 55.5 ,extra\n\n2001:db8::1,10\n", entries: &[("192.0.2.1/32", 90.0), ("198.51.100.0/24", 55.5), ("2001:db8::1/128", 10.0)], errors: &[] },
        Case { name: "no header", input: "203.0.113.5;70\n", entries: &[("203.0.113.5/32", 70.0)], errors: &[] },
        Case {
            name: "bad lines are named, the rest kept",
            input: "192.0.2.1,90\nip,score\n192.0.2.300,5\n192.0.2.2\n192.0.2.3,high\n192.0.2.4,80\n",
            entries: &[("192.0.2.1/32", 90.0), ("192.0.2.4/32", 80.0)],
            errors: &[(2, "invalid prefix \"ip\": not an IP address"), (3, "invalid prefix \"192.0.2.300\": not an IP address"), (4, "no score: expected address,score"), (5, "score \"high\" is not a number")],
        },
    ];
    for c in cases {
        let got = parse_csv(c.input);
        let entries: Vec<(String, f64)> = got
            .entries
            .iter()
            .map(|(p, s)| (p.to_string(), *s))
            .collect();
        let want: Vec<(String, f64)> = c.entries.iter().map(|(p, s)| (p.to_string(), *s)).collect();
        assert_eq!(entries, want, "{}", c.name);
        let errs: Vec<(usize, &str)> = got
            .errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert_eq!(errs, c.errors, "{}", c.name);
    }
}

#[test]
fn rbldnsd_ip4tset_is_read_as_ip4set() {
    // ip4tset: one address per line, a single value (the `:` line) for the whole zone; its
    // text is every entry's reason, as rbldnsd answers it to a TXT query.
    let text = "$SOA 1h ns.example.net hostmaster.example.net 0 1h 1h 1w 1h\n$TTL 300\n:127.0.0.2:Listed in tset\n192.0.2.1\n192.0.2.9\n# gone\n198.51.100.77\n";
    let got = parse(text, Format::Rbldnsd);
    assert!(got.errors.is_empty(), "{:?}", got.errors);
    assert_eq!(
        entries(&got),
        [
            "192.0.2.1/32 Listed in tset",
            "192.0.2.9/32 Listed in tset",
            "198.51.100.77/32 Listed in tset"
        ]
    );
}

#[test]
fn patch_cases() {
    struct Case {
        name: &'static str,
        input: &'static str,
        format: Option<Format>,
        adds: &'static [&'static str],
        removes: &'static [&'static str],
        errors: &'static [usize],
    }
    #[rustfmt::skip]
    let cases = [
        Case {
            name: "diff -u output: headers, hunk and context ignored",
            input: "--- a.txt\t2026-11-30\n+++ b.txt\t2026-11-30\n@@ -1,3 +1,3 @@\n 192.0.2.1\n-192.0.2.2\n+192.0.2.3\n\\ No newline at end of file\n",
            format: None, adds: &["192.0.2.3/32"], removes: &["192.0.2.2/32"], errors: &[],
        },
        Case {
            name: "bare lines, comments and blanks in them",
            input: "+198.51.100.0/24 # new\n-203.0.113.7\n+# only a comment\n-\n",
            format: None, adds: &["198.51.100.0/24"], removes: &["203.0.113.7/32"], errors: &[],
        },
        Case {
            name: "a bad line named by its line in the patch",
            input: "+192.0.2.1\n 192.0.2.2\n+192.0.2.300\n-2001:db8::/32\n",
            format: None, adds: &["192.0.2.1/32"], removes: &["2001:db8::/32"], errors: &[3],
        },
        Case {
            name: "Spamhaus DROP lines keep their SBL reference",
            input: "+1.10.16.0/20 ; SBL256894\n-2.56.192.0/22 ; SBL459831\n",
            format: Some(Format::SpamhausDrop), adds: &["1.10.16.0/20 SBL256894"], removes: &["2.56.192.0/22"], errors: &[],
        },
        Case {
            name: "Spamhaus detected from the changed lines",
            input: "+; Spamhaus DROP List 2026/11/30\n+1.10.16.0/20 ; SBL256894\n",
            format: None, adds: &["1.10.16.0/20 SBL256894"], removes: &[], errors: &[],
        },
        Case {
            name: "an empty patch changes nothing",
            input: "", format: None, adds: &[], removes: &[], errors: &[],
        },
    ];
    for c in cases {
        let got = parse_patch(c.input, c.format).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let adds: Vec<String> = got
            .adds
            .iter()
            .map(|e| match &e.reason {
                Some(r) => format!("{} {r}", e.prefix),
                None => e.prefix.to_string(),
            })
            .collect();
        assert_eq!(adds, c.adds, "{}", c.name);
        let removes: Vec<String> = got.removes.iter().map(|p| p.to_string()).collect();
        assert_eq!(removes, c.removes, "{}", c.name);
        let errs: Vec<usize> = got.errors.iter().map(|e| e.line).collect();
        assert_eq!(errs, c.errors, "{}", c.name);
    }
    let whole = parse_patch("192.0.2.1\n192.0.2.2\n", None).unwrap_err();
    assert!(whole.contains("no line starts with + or -"), "{whole}");
    let zone = parse_patch("+192.0.2.1\n", Some(Format::Rbldnsd)).unwrap_err();
    assert!(zone.contains("not rbldnsd"), "{zone}");
}

/// A list big enough to be parsed in two halves gives what one pass gives: every entry in
/// file order, bad lines named by their number in the whole file, in both halves.
#[test]
fn a_big_list_parsed_in_halves_keeps_order_and_line_numbers() {
    let mut text = String::new();
    let mut n = 0u32;
    let mut want_bad = Vec::new();
    let mut line = 0usize;
    while text.len() < PARALLEL_BYTES + (1 << 20) {
        line += 1;
        if line % 100_000 == 7 {
            text.push_str("not-an-address\n");
            want_bad.push(line);
        } else if line % 1000 == 3 {
            text.push_str("# comment\r\n");
        } else {
            text.push_str(&format!("{}\n", std::net::Ipv4Addr::from(0xf000_0000 | n)));
            n += 1;
        }
    }
    let parsed = parse(&text, Format::Plain);
    assert_eq!(parsed.entries.len(), n as usize);
    for (i, e) in parsed.entries.iter().enumerate() {
        assert_eq!(
            e.prefix,
            Prefix::V4 {
                addr: 0xf000_0000 | i as u32,
                len: 32
            }
        );
    }
    let bad: Vec<usize> = parsed.errors.iter().map(|e| e.line).collect();
    assert_eq!(bad, want_bad);
    assert!(
        *bad.last().unwrap() > line / 2,
        "a bad line in the second half"
    );
}

/// A /0 in a list blocks every sender: a line of any format, a CSV score or a decision that
/// says one fails that line, named; an rbldnsd `0/0` too, exclusions or not.
#[test]
fn a_prefix_of_everything_fails_its_line() {
    const PLAIN: &str = "0.0.0.0/0 covers every address: refused in a list (`prefilter block add 0.0.0.0/0 --force` takes it on purpose)";
    const PLAIN6: &str = "::/0 covers every address: refused in a list (`prefilter block add ::/0 --force` takes it on purpose)";
    const MAPPED: &str = "::ffff:0:0/96 (0.0.0.0/0) covers every address: refused in a list (`prefilter block add 0.0.0.0/0 --force` takes it on purpose)";
    const RBLDNSD: &str = "0/0 (0.0.0.0/0) covers every address: refused in a list (`prefilter block add 0.0.0.0/0 --force` takes it on purpose)";
    run(
        Format::Plain,
        &[Case {
            name: "0.0.0.0/0, ::/0 and the IPv4-mapped /96 among good lines",
            input: "192.0.2.1\n0.0.0.0/0\n::/0\n::ffff:0:0/96\n198.51.100.0/24\n",
            entries: &["192.0.2.1/32", "198.51.100.0/24"],
            errors: &[(2, PLAIN), (3, PLAIN6), (4, MAPPED)],
            skipped: &[],
        }],
    );
    run(
        Format::SpamhausDrop,
        &[Case {
            name: "a DROP line and a JSON record",
            input: "0.0.0.0/0 ; SBL1\n{\"cidr\":\"::/0\",\"sblid\":\"SBL2\"}\n203.0.113.0/24 ; SBL3\n",
            entries: &["203.0.113.0/24 SBL3"],
            errors: &[(1, PLAIN), (2, PLAIN6)],
            skipped: &[],
        }],
    );
    run(
        Format::Rbldnsd,
        &[Case {
            name: "a bare 0/0 among entries",
            input: "192.0.2.0/24\n0/0\n",
            entries: &["192.0.2.0/24"],
            errors: &[(2, RBLDNSD)],
            skipped: &[],
        }],
    );
    let csv = parse_csv("address,score\n0.0.0.0/0,99\n192.0.2.7,95\n");
    assert_eq!(csv.entries.len(), 1, "only the address is scored");
    assert_eq!(csv.errors.len(), 1, "the /0 line is bad");
    assert_eq!(csv.errors[0].line, 2);
}
