//! DNSBL scoring against a real rbldnsd: postscreen's scoring rules on real zones, error
//! codes that are not listings, quarantined zones, and in inline mode (no proxy) a listed
//! client's next SYN dropped in XDP while a spoofed SYN flood makes no query at all.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant},
};

use prefilter::{config::Config, dnsbl::Dnsbl, policy::Action};
use prefilter_tests::{
    daemon::{self, Daemon, Lab, Listener, poll},
    rbldnsd::{Rbldnsd, Zone, zone_head},
    require_root,
};

/// The zones most tests use. `bl.test` lists with 127.0.0.x and has error codes for some
/// addresses (Spamhaus's 127.255.255.254, an answer outside 127/8); `bl2.test` is a second
/// blocklist; `wl.test` a DNSWL (127.0.x.y answers); `all.test` lists everything (broken);
/// `err.test` answers the error code 127.255.255.254 for everything (a public resolver at
/// Spamhaus).
fn zones() -> Vec<Zone<'static>> {
    vec![
        Zone {
            name: "bl.test",
            kind: "ip4set",
            data: zone_head(120, 30)
                + "198.51.100.7 :127.0.0.2:spam source\n\
                   198.51.100.8 :127.0.0.4:\n\
                   198.51.100.9 :127.255.255.254:public resolver\n\
                   198.51.100.10 :10.0.0.2:\n\
                   198.51.100.11 :127.0.0.20:\n\
                   198.51.100.13 :127.255.255.255:\n",
        },
        Zone {
            name: "bl2.test",
            kind: "ip4set",
            data: zone_head(600, 30) + "198.51.100.8 :127.0.0.2:\n198.51.100.12 :127.0.0.2:\n",
        },
        Zone {
            name: "wl.test",
            kind: "ip4set",
            data: zone_head(600, 30)
                + "198.51.100.8 :127.0.10.2:\n198.51.100.12 :127.0.10.3:\n198.51.100.14 :127.0.10.3:\n",
        },
        Zone {
            name: "v6.test",
            kind: "ip6trie",
            data: "$SOA 30 ns.test. hostmaster.test. 1 600 60 86400 30\n\
                   $TTL 300\n\
                   :127.0.0.2:listed\n\
                   ::ffff:7f00:2\n\
                   2001:db8::7\n"
                .to_owned(),
        },
        Zone {
            name: "all.test",
            kind: "ip4set",
            data: zone_head(600, 30) + "0.0.0.0/1\n128.0.0.0/1\n",
        },
        Zone {
            name: "err.test",
            kind: "ip4set",
            data: "$SOA 30 ns.test. hostmaster.test. 1 600 60 86400 30\n\
                   $TTL 60\n\
                   0.0.0.0/1 :127.255.255.254:\n\
                   128.0.0.0/1 :127.255.255.254:\n"
                .to_owned(),
        },
    ]
}

/// A `[dnsbl]` section as the daemon parses it.
fn dnsbl_config(rbl: &Rbldnsd, sites: &[&str], extra: &str) -> prefilter::config::Dnsbl {
    let text = format!(
        "[xdp]\ninterfaces = [\"lo\"]\n[dnsbl]\nsites = {sites:?}\nnameservers = [\"{}\"]\n\
         timeout = 1\nattempts = 1\n{extra}\n",
        rbl.addr
    );
    Config::parse(&text, Path::new("/tmp/dnsbl-test.toml"), &|_| true)
        .unwrap_or_else(|e| panic!("{e}"))
        .dnsbl
        .expect("[dnsbl]")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// postscreen's rules against real zones: weights per matching entry, filters, a DNSWL with
/// a negative weight, threshold and allowlist threshold; error codes never count.
#[test]
fn scoring_matches_postscreen_on_real_zones() {
    require_root();
    let rbl = Rbldnsd::start(None, &zones());
    let cfg = dnsbl_config(
        &rbl,
        &[
            "bl.test=127.0.0.[2..11]*3",
            "bl2.test*2",
            "wl.test=127.0.[0..255].[2..3]*-2",
            "wl.test=127.0.[0..255].3*-1",
            "v6.test",
        ],
        "threshold = 3\nallowlist_threshold = -3",
    );
    let dn = Dnsbl::new(cfg);
    rt().block_on(async {
        dn.probe_all().await;
        let states: Vec<(String, String)> = dn
            .zones()
            .into_iter()
            .map(|z| (z.zone, z.state + " " + &z.note))
            .collect();
        for (z, s) in &states {
            assert!(s.starts_with("healthy"), "{z}: {states:?}");
        }
        struct Case {
            ip: &'static str,
            score: i32,
            blocked: bool,
            allowlisted: bool,
            listed: &'static [&'static str],
        }
        let cases = [
            Case {
                ip: "198.51.100.7",
                score: 3,
                blocked: true,
                allowlisted: false,
                listed: &["bl.test=127.0.0.2"],
            },
            // 3 + 2 - 2: the DNSWL entry offsets the second list.
            Case {
                ip: "198.51.100.8",
                score: 3,
                blocked: true,
                allowlisted: false,
                listed: &["bl.test=127.0.0.4", "bl2.test=127.0.0.2"],
            },
            // Error codes: no listing.
            Case {
                ip: "198.51.100.9",
                score: 0,
                blocked: false,
                allowlisted: false,
                listed: &[],
            },
            Case {
                ip: "198.51.100.10",
                score: 0,
                blocked: false,
                allowlisted: false,
                listed: &[],
            },
            Case {
                ip: "198.51.100.13",
                score: 0,
                blocked: false,
                allowlisted: false,
                listed: &[],
            },
            // Outside the filter.
            Case {
                ip: "198.51.100.11",
                score: 0,
                blocked: false,
                allowlisted: false,
                listed: &[],
            },
            // 2 - 2 - 1: below the threshold, above the allowlist threshold.
            Case {
                ip: "198.51.100.12",
                score: -1,
                blocked: false,
                allowlisted: false,
                listed: &["bl2.test=127.0.0.2"],
            },
            // -2 - 1 = -3: allowlisted (inclusive).
            Case {
                ip: "198.51.100.14",
                score: -3,
                blocked: false,
                allowlisted: true,
                listed: &[],
            },
            Case {
                ip: "192.0.2.99",
                score: 0,
                blocked: false,
                allowlisted: false,
                listed: &[],
            },
            // IPv6 nibble reversal against an ip6tset zone.
            Case {
                ip: "2001:db8::7",
                score: 1,
                blocked: false,
                allowlisted: false,
                listed: &["v6.test=127.0.0.2"],
            },
        ];
        for c in &cases {
            let s = dn.score(ip(c.ip)).await;
            assert_eq!(
                (
                    s.score,
                    s.verdict.is_some(),
                    s.allowlisted,
                    s.listed.clone()
                ),
                (
                    c.score,
                    c.blocked,
                    c.allowlisted,
                    c.listed.iter().map(|s| s.to_string()).collect::<Vec<_>>()
                ),
                "{}: {s:?}",
                c.ip
            );
            if c.blocked {
                assert_eq!(
                    s.verdict,
                    Some(Action::Reject),
                    "the default first-contact action"
                );
            }
        }
        // A second round comes from the cache: no query reaches rbldnsd.
        rbl.clear_log();
        for c in &cases {
            let again = dn.score(ip(c.ip)).await;
            assert_eq!(again.score, c.score, "{} from the cache", c.ip);
        }
        // Except the error answers, which are cached like answers too (clamped TTL): none.
        assert_eq!(
            rbl.queries(),
            Vec::<String>::new(),
            "warm cache queried rbldnsd"
        );
        // The error codes were counted as errors, never as listings.
        let cached = dn.cached_score(ip("198.51.100.9")).expect("cached");
        assert_eq!((cached.score, cached.listed.len()), (0, 0));
    });
}

/// Zones that cannot be trusted are quarantined and their answers ignored: one that lists
/// 127.0.0.1 (it would list everybody), one answering error codes for everything, one the
/// server REFUSES (not served), one nobody answers for.
#[test]
fn broken_zones_are_quarantined_and_ignored() {
    require_root();
    let rbl = Rbldnsd::start(None, &zones());
    let cfg = dnsbl_config(
        &rbl,
        &[
            "bl.test=127.0.0.[2..11]*3",
            "all.test*5",
            "err.test*5",
            "missing.test*5",
        ],
        "threshold = 3",
    );
    let dn = Dnsbl::new(cfg);
    rt().block_on(async {
        dn.probe_all().await;
        let zs = dn.zones();
        let state = |z: &str| zs.iter().find(|s| s.zone == z).expect(z).clone();
        assert_eq!(state("bl.test").state, "healthy", "{zs:?}");
        for z in ["all.test", "err.test", "missing.test"] {
            let s = state(z);
            assert_eq!(s.state, "quarantined", "{z}: {zs:?}");
            assert!(!s.note.is_empty(), "{z}: a reason is given");
        }
        assert!(state("all.test").note.contains("127.0.0.1"), "{zs:?}");
        assert!(state("missing.test").note.contains("REFUSED"), "{zs:?}");
        assert!(state("err.test").note.contains("127.255.255.254"), "{zs:?}");
        // all.test lists 192.0.2.99 with weight 5, but it is quarantined: not listed, and
        // not even asked.
        rbl.clear_log();
        let s = dn.score(ip("192.0.2.99")).await;
        assert_eq!((s.score, s.verdict), (0, None), "{s:?}");
        let q = rbl.queries();
        assert!(
            q.iter().all(|l| l.contains("bl.test")),
            "only the healthy zone asked: {q:?}"
        );
        // The metrics say so too.
        let r = prometheus::Registry::new();
        dn.register(&r);
        let text = render(&r);
        assert!(
            text.contains("prefilter_dnsbl_zone_quarantined{zone=\"all.test\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("prefilter_dnsbl_zone_quarantined{zone=\"bl.test\"} 0"),
            "{text}"
        );
    });
}

fn render(r: &prometheus::Registry) -> String {
    use prometheus::Encoder as _;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&r.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// A nameserver that never answers (a timeout) and one with nothing listening: the lookups
/// fail open (no listing) and are counted as errors.
#[test]
fn timeouts_fail_open() {
    require_root();
    // A UDP socket that reads nothing: queries time out.
    let sink = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let text = format!(
        "[xdp]\ninterfaces = [\"lo\"]\n[dnsbl]\nsites = [\"bl.test*3\"]\nnameservers = [\"{}\"]\n\
         timeout = 1\nattempts = 1\nthreshold = 3\n",
        sink.local_addr().unwrap()
    );
    let cfg = Config::parse(&text, Path::new("/tmp/x.toml"), &|_| true)
        .unwrap()
        .dnsbl
        .unwrap();
    let dn = Dnsbl::new(cfg);
    rt().block_on(async {
        let t0 = Instant::now();
        dn.probe_all().await;
        assert_eq!(
            dn.zones()[0].state,
            "quarantined",
            "a dead nameserver fails the probe"
        );
        let s = dn.score(ip("198.51.100.7")).await;
        assert_eq!((s.score, s.verdict), (0, None));
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "bounded by the timeout"
        );
    });
}

/// Bad site specs are refused with the spec and what is wrong, per key and line.
#[test]
fn bad_dnsbl_config_is_named() {
    let text = "[xdp]\ninterfaces = [\"lo\"]\n[dnsbl]\nsites = [\"zen.example=127.0.0.[11..2]*3\", \"ok.example*x\"]\nnameservers = [\"nowhere\"]\nthreshold = 0\n";
    let e = Config::parse(text, Path::new("/tmp/bad.toml"), &|_| true)
        .unwrap_err()
        .to_string();
    for want in [
        "dnsbl.sites[0]",
        "runs backwards",
        "dnsbl.sites[1]",
        "weight \"x\"",
        "dnsbl.nameservers[0]",
        "dnsbl.threshold",
    ] {
        assert!(e.contains(want), "{want:?} missing in:\n{e}");
    }
}

/// Boot-time clock, as the kernel's dynamic map expiry reads it.
fn boottime_ns() -> u64 {
    prefilter::daemon::learned::boottime_ns()
}

fn inline_tail(rbl: &Rbldnsd) -> String {
    format!(
        "[dnsbl]\n\
         sites = [\"bl.test=127.0.0.[2..11]*3\", \"all.test\"]\n\
         threshold = 3\n\
         nameservers = [\"{}\"]\n\
         timeout = 1\n\
         min_ttl = 60\n\
         max_ttl = 300\n\
         probe_interval = 3600\n",
        rbl.addr
    )
}

/// Inline mode (no proxy): a listed client that completes a handshake gets a dynamic drop for
/// the listing's TTL (120 s, inside min_ttl..max_ttl), and its next SYN stops in XDP; a
/// clean client keeps connecting; the quarantined zone shows in status and metrics.
#[test]
fn inline_listing_drops_the_next_syn() {
    require_root();
    let lab = Lab::new();
    let rbl = Rbldnsd::start(Some(&lab.mx.name), &zones());
    let mut d = Daemon::prepare(&lab.mx, &lab.mx_if);
    d.write_config(&d.config_text(daemon::DEFAULT_XDP, &inline_tail(&rbl)));
    d.start();
    let listener = Listener::start(&lab.mx);
    // Probes done: bl.test healthy, all.test (lists 127.0.0.1) quarantined.
    let zones = poll(Duration::from_secs(10), || {
        let st = d.status();
        let z = st["dnsbl"]["zones"].as_array()?.clone();
        z.iter().all(|z| z["state"] != "unknown").then_some(z)
    })
    .unwrap_or_else(|| panic!("zones not probed: {}", d.status()));
    let state = |n: &str| {
        zones
            .iter()
            .find(|z| z["zone"] == n)
            .map(|z| z["state"].clone())
    };
    assert_eq!(state("bl.test"), Some("healthy".into()), "{zones:?}");
    assert_eq!(state("all.test"), Some("quarantined".into()), "{zones:?}");
    assert_eq!(d.status()["dnsbl"]["inline"], true);

    let listed = IpAddr::V4(daemon::BLOCKED4); // 198.51.100.7: bl.test=127.0.0.2
    let clean = IpAddr::V4(daemon::CLEAN4);
    lab.assert_connects(&listener, clean, "a clean client connects");
    lab.assert_connects(
        &listener,
        listed,
        "the first contact completes (inline: no proxy)",
    );
    let dynamic = poll(Duration::from_secs(10), || {
        let c = d.check(&listed.to_string());
        c["dynamic"].is_object().then_some(c)
    })
    .unwrap_or_else(|| panic!("no dynamic verdict; log:\n{}", d.log()));
    assert_eq!(dynamic["dynamic"]["action"], "drop", "{dynamic}");
    let left =
        dynamic["dynamic"]["expires_boottime_ns"].as_u64().unwrap() as i64 - boottime_ns() as i64;
    assert!(
        (110e9 as i64..=121e9 as i64).contains(&left),
        "expiry in {}s, want the answer's TTL of 120s",
        left as f64 / 1e9
    );
    assert_eq!(dynamic["dnsbl"]["score"], 3, "{dynamic}");
    assert_eq!(
        dynamic["dnsbl"]["listed"][0], "bl.test=127.0.0.2",
        "{dynamic}"
    );
    lab.assert_dropped(
        &listener,
        listed,
        Duration::from_secs(2),
        "the next SYN stops in XDP",
    );
    lab.assert_connects(&listener, clean, "the clean client still connects");
    let clean_check = d.check(&clean.to_string());
    assert!(clean_check["dynamic"].is_null(), "{clean_check}");
    assert_eq!(clean_check["dnsbl"]["score"], 0, "{clean_check}");
    let st = d.status();
    assert!(daemon::counter(&st, "dynamic", "drop") >= 1, "{st}");
    // The quarantined zone was never asked about a client.
    let q = rbl.queries();
    assert!(
        q.iter().any(|l| l.contains("7.100.51.198.bl.test")),
        "{q:?}"
    );
    assert!(
        !q.iter()
            .any(|l| l.contains("198.all.test") || l.contains("192.all.test")),
        "{q:?}"
    );
    // The CLI says it too.
    let status = d.cli_ok(&["status"]);
    assert!(
        status.contains("zone all.test: quarantined (lists the test point 127.0.0.1"),
        "{status}"
    );
    assert!(status.contains("zone bl.test: healthy"), "{status}");
    let check = d.cli_ok(&["check", &listed.to_string()]);
    assert!(
        check.contains("DNSBL score 3 (bl.test=127.0.0.2): listed, reject at first contact"),
        "{check}"
    );
    let m = d.metrics_text();
    for want in [
        "prefilter_dnsbl_zone_quarantined{zone=\"all.test\"} 1",
        // The client: the health probes' test point is not a listing.
        "prefilter_dnsbl_listings_total{zone=\"bl.test\"} 1",
        "prefilter_dnsbl_query_duration_seconds_count{zone=\"bl.test\"}",
        "prefilter_dnsbl_cache_entries",
        "prefilter_dnsbl_cache_requests_total{result=\"miss\"}",
    ] {
        assert!(m.contains(want), "{want} missing:\n{m}");
    }
}

/// `max_ttl` clamps the listing's TTL (120 s in the zone, 3 s here); once it passed, the
/// kernel lets the client in again and `check` no longer reports the stale entry, which stays
/// in the LRU map until evicted.
#[test]
fn listing_expires_with_the_clamped_ttl() {
    require_root();
    let lab = Lab::new();
    let rbl = Rbldnsd::start(Some(&lab.mx.name), &zones());
    let mut d = Daemon::prepare(&lab.mx, &lab.mx_if);
    let tail = inline_tail(&rbl)
        .replace("min_ttl = 60", "min_ttl = 1")
        .replace("max_ttl = 300", "max_ttl = 3");
    d.write_config(&d.config_text(daemon::DEFAULT_XDP, &tail));
    d.start();
    let listener = Listener::start(&lab.mx);
    let listed = IpAddr::V4(daemon::BLOCKED4);
    poll(Duration::from_secs(10), || {
        (d.status()["dnsbl"]["zones"][0]["state"] == "healthy").then_some(())
    })
    .expect("bl.test probed");
    lab.assert_connects(&listener, listed, "first contact");
    let c = poll(Duration::from_secs(10), || {
        let c = d.check(&listed.to_string());
        c["dynamic"].is_object().then_some(c)
    })
    .unwrap_or_else(|| panic!("no dynamic verdict; log:\n{}", d.log()));
    let left = c["dynamic"]["expires_boottime_ns"].as_u64().unwrap() as i64 - boottime_ns() as i64;
    assert!(
        (0..=3_100_000_000).contains(&left),
        "expiry in {left} ns, want at most max_ttl = 3 s"
    );
    std::thread::sleep(Duration::from_nanos(left as u64) + Duration::from_millis(300));
    let c = d.check(&listed.to_string());
    assert!(c["dynamic"].is_null(), "expired entry still reported: {c}");
    assert_eq!(c["verdict"], "pass", "{c}");
    lab.assert_connects(&listener, listed, "the expired verdict no longer applies");
}

/// Inline mode: 20,000 SYNs from random spoofed 240.0.0.0/4 sources reach the XDP program
/// (counted as judged) and make no DNS query; a real handshake afterwards makes its queries,
/// so the count of zero is not an idle pipeline.
#[test]
fn spoofed_syn_flood_makes_no_dns_query() {
    require_root();
    let lab = Lab::new();
    let rbl = Rbldnsd::start(Some(&lab.mx.name), &zones());
    let mut d = Daemon::prepare(&lab.mx, &lab.mx_if);
    d.write_config(&d.config_text(daemon::DEFAULT_XDP, &inline_tail(&rbl)));
    d.start();
    let listener = Listener::start(&lab.mx);
    poll(Duration::from_secs(10), || {
        let st = d.status();
        st["dnsbl"]["zones"]
            .as_array()?
            .iter()
            .all(|z| z["state"] != "unknown")
            .then_some(())
    })
    .expect("zones probed");
    rbl.clear_log();
    let before = daemon::counter(&d.status(), "no_match", "pass");
    const N: u64 = 20_000;
    let sent = lab.spoofed_syn_flood(N, Duration::from_secs(30), None);
    assert_eq!(sent, N, "the flood was cut short");
    let judged = poll(Duration::from_secs(5), || {
        let n = daemon::counter(&d.status(), "no_match", "pass") - before;
        (n >= N * 99 / 100).then_some(n)
    });
    assert!(
        judged.is_some(),
        "the XDP program did not see the flood: {}",
        d.status()
    );
    // Give any lookup the flood could have started time to reach rbldnsd.
    std::thread::sleep(Duration::from_secs(2));
    let q = rbl.queries();
    assert!(
        q.is_empty(),
        "{} DNS queries during a spoofed SYN flood: {:?}",
        q.len(),
        &q[..q.len().min(5)]
    );
    // A completed handshake does make queries: the pipeline was live.
    lab.assert_connects(&listener, IpAddr::V4(daemon::CLEAN4), "a real client");
    let asked = poll(Duration::from_secs(5), || {
        rbl.queries()
            .iter()
            .any(|l| l.contains("2.2.0.192.bl.test"))
            .then_some(())
    });
    assert!(
        asked.is_some(),
        "no query for a real client: {:?}\n{}",
        rbl.queries(),
        d.log()
    );
}

/// Lookups per second against the local rbldnsd, cold (every address new) and warm (all
/// cached). Prints figures; no timing assertion. `cargo test --release -p prefilter-tests
/// --test dnsbl -- --ignored --nocapture lookups_per_second`
#[test]
#[ignore = "a measurement, not a check"]
fn lookups_per_second() {
    require_root();
    let rbl = Rbldnsd::start(None, &zones());
    let cfg = dnsbl_config(
        &rbl,
        &["bl.test=127.0.0.[2..11]*3", "bl2.test*2"],
        "concurrency = 100\ncache_size = 1000000",
    );
    let dn = std::sync::Arc::new(Dnsbl::new(cfg));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        dn.probe_all().await;
        const N: u32 = 20_000;
        let addrs: Vec<IpAddr> = (0..N).map(|i| IpAddr::V4(Ipv4Addr::from(0xc633_0000 | i))).collect();
        for (label, round) in [("cold", 0), ("warm", 1)] {
            let t0 = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for chunk in addrs.chunks(N as usize / 200) {
                let (dn, chunk) = (dn.clone(), chunk.to_vec());
                set.spawn(async move {
                    for a in chunk {
                        dn.score(a).await;
                    }
                });
            }
            while set.join_next().await.is_some() {}
            let secs = t0.elapsed().as_secs_f64();
            eprintln!(
                "{label} (round {round}): {N} addresses x 2 zones in {secs:.3}s = {:.0} scores/s, {:.0} zone lookups/s",
                f64::from(N) / secs,
                f64::from(N * 2) / secs
            );
        }
    });
}
