use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use hickory_resolver::proto::{
    op::{Message, ResponseCode},
    rr::{RData, Record, rdata::A},
};

use super::site::{self, Site, SiteError};
use super::{Dnsbl, HEALTHY};

fn sites(text: &str) -> Vec<Site> {
    site::parse_sites(text)
        .into_iter()
        .map(|r| r.unwrap_or_else(|(s, e)| panic!("{s}: {e}")))
        .collect()
}

#[test]
fn site_syntax_as_postscreen_writes_it() {
    struct Case {
        spec: &'static str,
        domain: &'static str,
        weight: i32,
        matches: &'static [&'static str],
        misses: &'static [&'static str],
    }
    let cases = [
        Case {
            spec: "zen.spamhaus.org",
            domain: "zen.spamhaus.org",
            weight: 1,
            matches: &["127.0.0.2", "127.0.0.255"],
            misses: &[],
        },
        Case {
            spec: "zen.spamhaus.org=127.0.0.[2..11]*3",
            domain: "zen.spamhaus.org",
            weight: 3,
            matches: &["127.0.0.2", "127.0.0.11"],
            misses: &["127.0.0.1", "127.0.0.12", "127.0.1.2"],
        },
        Case {
            spec: "list.dnswl.org=127.0.[0..255].[1;3]*-2",
            domain: "list.dnswl.org",
            weight: -2,
            matches: &["127.0.15.1", "127.0.0.3"],
            misses: &["127.0.15.2", "127.0.15.0"],
        },
        Case {
            spec: "Bl.Example.ORG.=127.0.0.[2;4..5;9]",
            domain: "bl.example.org",
            weight: 1,
            matches: &["127.0.0.2", "127.0.0.4", "127.0.0.5", "127.0.0.9"],
            misses: &["127.0.0.3", "127.0.0.6"],
        },
        Case {
            spec: "b.barracudacentral.org*2",
            domain: "b.barracudacentral.org",
            weight: 2,
            matches: &["127.0.0.2"],
            misses: &[],
        },
    ];
    for c in cases {
        let s: Site = c.spec.parse().unwrap_or_else(|e| panic!("{}: {e}", c.spec));
        assert_eq!(
            (s.domain.as_str(), s.weight),
            (c.domain, c.weight),
            "{}",
            c.spec
        );
        for m in c.matches {
            let a: Ipv4Addr = m.parse().unwrap();
            assert!(
                s.filter.as_ref().is_none_or(|f| f.matches(a)),
                "{} should match {m}",
                c.spec
            );
        }
        for m in c.misses {
            let a: Ipv4Addr = m.parse().unwrap();
            assert!(
                !s.filter.as_ref().unwrap().matches(a),
                "{} should not match {m}",
                c.spec
            );
        }
    }
}

#[test]
fn bad_site_specs_say_what_is_wrong() {
    type Expect = fn(&SiteError) -> bool;
    let bad: [(&str, Expect); 7] = [
        ("", |e| *e == SiteError::NoDomain),
        ("=127.0.0.2", |e| *e == SiteError::NoDomain),
        ("zen.spamhaus.org*x", |e| {
            matches!(e, SiteError::BadWeight(_))
        }),
        ("zen.spamhaus.org=127.0.0", |e| {
            matches!(e, SiteError::BadFilter { .. })
        }),
        ("zen.spamhaus.org=127.0.0.[11..2]", |e| {
            matches!(e, SiteError::BadFilter { .. })
        }),
        ("zen.spamhaus.org=127.0.0.256", |e| {
            matches!(e, SiteError::BadFilter { .. })
        }),
        ("zen..spamhaus.org", |e| {
            matches!(e, SiteError::BadDomain(_))
        }),
    ];
    for (spec, ok) in bad {
        let e = spec.parse::<Site>().expect_err(spec);
        assert!(ok(&e), "{spec:?}: {e}");
        assert!(!e.to_string().is_empty());
    }
    // A list as postscreen takes it: commas or whitespace between entries.
    assert_eq!(
        sites("a.example, b.example*2\n c.example=127.0.0.2").len(),
        3
    );
}

/// postscreen's rules: each entry adds its weight once if any answer of its zone matches its
/// filter; blocked at score >= threshold; allowlisted at score <= a negative allowlist
/// threshold (0 turns it off).
#[test]
fn scoring_matches_postscreen() {
    let list = sites(
        "zen.example=127.0.0.[2..11]*3 zen.example=127.0.0.[10;11]*2 \
         bl.example*2 wl.example=127.0.[0..255].[1..3]*-2 wl.example=127.0.[0..255].3*-1",
    );
    struct Case {
        answers: &'static [(&'static str, &'static [&'static str])],
        threshold: i32,
        allow: i32,
        score: i32,
        blocked: bool,
        allowlisted: bool,
        listed: &'static [&'static str],
    }
    let cases = [
        Case {
            answers: &[],
            threshold: 1,
            allow: 0,
            score: 0,
            blocked: false,
            allowlisted: false,
            listed: &[],
        },
        Case {
            answers: &[("zen.example", &["127.0.0.2"])],
            threshold: 3,
            allow: 0,
            score: 3,
            blocked: true,
            allowlisted: false,
            listed: &["zen.example=127.0.0.2"],
        },
        // Two answers matching one entry count once; the second entry adds its own weight.
        Case {
            answers: &[("zen.example", &["127.0.0.4", "127.0.0.10"])],
            threshold: 6,
            allow: 0,
            score: 5,
            blocked: false,
            allowlisted: false,
            listed: &["zen.example=127.0.0.4", "zen.example=127.0.0.10"],
        },
        // An answer outside the filter does not count.
        Case {
            answers: &[("zen.example", &["127.0.0.20"])],
            threshold: 1,
            allow: 0,
            score: 0,
            blocked: false,
            allowlisted: false,
            listed: &[],
        },
        // DNSWL weight offsets a listing.
        Case {
            answers: &[
                ("bl.example", &["127.0.0.2"]),
                ("wl.example", &["127.0.10.2"]),
            ],
            threshold: 1,
            allow: 0,
            score: 0,
            blocked: false,
            allowlisted: false,
            listed: &["bl.example=127.0.0.2"],
        },
        // Allowlisted at or below a negative allowlist threshold...
        Case {
            answers: &[("wl.example", &["127.0.10.3"])],
            threshold: 1,
            allow: -3,
            score: -3,
            blocked: false,
            allowlisted: true,
            listed: &[],
        },
        // ... not above it ...
        Case {
            answers: &[("wl.example", &["127.0.10.1"])],
            threshold: 1,
            allow: -3,
            score: -2,
            blocked: false,
            allowlisted: false,
            listed: &[],
        },
        // ... and never with the threshold at 0 (postscreen's default: off).
        Case {
            answers: &[("wl.example", &["127.0.10.3"])],
            threshold: 1,
            allow: 0,
            score: -3,
            blocked: false,
            allowlisted: false,
            listed: &[],
        },
        // The threshold is an inclusive lower bound.
        Case {
            answers: &[("bl.example", &["127.0.0.3"])],
            threshold: 2,
            allow: 0,
            score: 2,
            blocked: true,
            allowlisted: false,
            listed: &["bl.example=127.0.0.3"],
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let answers: HashMap<&str, Vec<Ipv4Addr>> = c
            .answers
            .iter()
            .map(|(z, a)| (*z, a.iter().map(|a| a.parse().unwrap()).collect()))
            .collect();
        let t = site::tally(&list, |d| answers.get(d).map(Vec::as_slice));
        let (blocked, allowlisted) = site::judge(t.score, c.threshold, c.allow);
        assert_eq!(
            (t.score, blocked, allowlisted, t.listed.as_slice()),
            (
                c.score,
                c.blocked,
                c.allowlisted,
                &c.listed.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]
            ),
            "case {i}"
        );
    }
}

#[test]
fn error_codes_are_not_listings() {
    for a in [
        "127.255.255.252",
        "127.255.255.254",
        "127.255.255.255",
        "10.0.0.2",
        "192.0.2.1",
    ] {
        assert!(site::is_error_code(a.parse().unwrap()), "{a}");
    }
    for a in ["127.0.0.2", "127.0.0.11", "127.255.255.253", "127.0.10.3"] {
        assert!(!site::is_error_code(a.parse().unwrap()), "{a}");
    }
}

#[test]
fn query_names_reverse_octets_and_nibbles() {
    let v4: IpAddr = "192.0.2.99".parse().unwrap();
    assert_eq!(site::query_name(v4, "bl.example"), "99.2.0.192.bl.example.");
    // RFC 5782 2.4's example.
    let v6: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
    assert_eq!(
        site::query_name(v6, "ugly.example.com"),
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com."
    );
}

/// A DNSBL server on loopback that lists only 127.0.0.2 (as RFC 5782 5 wants every zone
/// to): `A 127.0.0.2` for `2.0.0.127.<zone>`, NXDOMAIN for every other name.
async fn dnsbl_server() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::error_msg(q.id(), q.op_code(), ResponseCode::NoError);
            r.set_recursion_desired(q.recursion_desired());
            r.set_recursion_available(true);
            for query in q.queries() {
                r.add_query(query.clone());
                let name = query.name().to_ascii();
                if name.starts_with("2.0.0.127.") {
                    let a = A(Ipv4Addr::new(127, 0, 0, 2));
                    r.add_answer(Record::from_rdata(query.name().clone(), 60, RData::A(a)));
                } else {
                    r.set_response_code(ResponseCode::NXDomain);
                }
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    addr
}

#[tokio::test]
async fn health_probes_are_not_counted_as_listings() {
    let ns = dnsbl_server().await;
    let d = Dnsbl::new(crate::config::Dnsbl {
        sites: sites("bl.test"),
        threshold: 1,
        allowlist_threshold: 0,
        action: crate::policy::Action::Reject,
        repeat_action: None,
        nameservers: vec![ns],
        timeout: Duration::from_secs(1),
        attempts: 1,
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(60),
        concurrency: 4,
        cache_size: 100,
        probe_interval: Duration::from_secs(300),
        ports: vec![25],
        inline: false,
    });
    let count = |c: &prometheus::IntCounterVec| c.with_label_values(&["bl.test"]).get();
    tokio::time::timeout(Duration::from_secs(10), d.probe_all())
        .await
        .expect("the probe hung");
    // The probe got its listed 127.0.0.2 (the zone is healthy) through counted queries...
    assert_eq!(
        d.zones[0].state.load(std::sync::atomic::Ordering::Relaxed),
        HEALTHY
    );
    assert_eq!(count(&d.metrics.queries), 2);
    // ... and that test point is no client's listing.
    assert_eq!(count(&d.metrics.listings), 0);
    // A client's listing still counts.
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        d.score(IpAddr::from([127, 0, 0, 2])),
    )
    .await
    .expect("the lookup hung");
    assert_eq!(s.score, 1);
    assert_eq!(count(&d.metrics.listings), 1);
}
