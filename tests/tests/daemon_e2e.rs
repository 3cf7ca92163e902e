//! The `prefilter` daemon and CLI end to end: a real daemon attached to the MX end of a veth,
//! driven by the CLI, judged by real TCP connects from a client namespace.
//!
//! What an administrator relies on: `block add` stops a sender's SYNs and `block del` lets it
//! back in; the filter keeps filtering while the daemon is dead (kill -9) and across a
//! restart (not one SYN slips through the restart), which adopts the pinned link and loses no
//! entry; TTLs expire; the metrics agree with `status`; a list of a million prefixes imports
//! through the CLI in seconds.
//!
//! Needs root and a built daemon: `cargo build --release -p prefilter`, then
//! `cargo test --release -p prefilter-tests --test daemon_e2e -- --test-threads=1`.

use std::{
    collections::{BTreeSet, HashSet, VecDeque},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use prefilter_tests::{
    Rng,
    daemon::{
        BIG4, BLOCKED4, CLEAN4, CLEAN6, CONNECT_TIMEOUT, DEFAULT_XDP, Daemon, Lab, Listener,
        RESET4, TTL4, counter, in_netns, list_entries, poll, run_bounded,
    },
    require_root,
};
use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// A config list that resets every SYN from 203.0.113.0/24.
const RESET_LIST: &str =
    "[[block]]\nname = \"rst\"\naction = \"reset\"\nprefixes = [\"203.0.113.0/24\"]\n";

/// Long enough for a SYN to be dropped, shorter than the 1 s initial retransmission
/// timeout: one SYN, no retransmission.
const SHORT_TIMEOUT: Duration = Duration::from_millis(700);

/// `ip link` of the MX veth shows an XDP program.
fn xdp_attached(lab: &Lab) -> bool {
    let out = lab.mx.ip(&["link", "show", "dev", &lab.mx_if]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .any(|w| w.starts_with("xdp"))
}

/// `block list --json` as a set of whole entries: every field compared, except the creation
/// time of a config entry, which the daemon sets when it reads the config.
fn entry_set(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .expect("block list is an array")
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e["origin"] == "config" {
                e["created"] = Value::Null;
            }
            e.to_string()
        })
        .collect()
}

fn interfaces(status: &Value) -> Vec<(String, String)> {
    status["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["interface"].as_str().unwrap_or("").to_owned(),
                i["mode"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn block_del_kill_restart_and_adopt() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let mut d = Daemon::start_new(&lab.mx, &lab.mx_if, RESET_LIST);
    assert_eq!(
        interfaces(&d.status()),
        vec![(lab.mx_if.clone(), "native".to_owned())],
        "first start attaches natively to the veth"
    );
    assert!(xdp_attached(&lab));

    // The config's reset list: refused at once. A clean source connects.
    lab.assert_refused(&listener, RESET4.into(), "config list rst (reset)");
    lab.assert_connects(&listener, CLEAN4.into(), "clean source");
    lab.assert_connects(&listener, CLEAN6.into(), "clean v6 source");
    lab.assert_connects(&listener, BLOCKED4.into(), "not blocked yet");

    // block add: the sender times out, the clean source still connects.
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        CONNECT_TIMEOUT,
        "after block add",
    );
    lab.assert_connects(&listener, CLEAN4.into(), "clean source after block add");

    // block del: it connects again.
    let out = d.cli_ok(&["block", "del", "198.51.100.7"]);
    assert!(
        out.contains("removed"),
        "block del says what it removed: {out}"
    );
    let before_del = listener.peers().len();
    lab.assert_connects(&listener, BLOCKED4.into(), "after block del");
    assert_eq!(listener.peers().len(), before_del + 1);

    // Blocked again, with entries of every shape: a reason, a TTL, another action, IPv6.
    d.cli_ok(&["block", "add", "198.51.100.7", "--reason", "spam run #42"]);
    d.cli_ok(&[
        "block",
        "add",
        "198.51.100.128/25",
        "--ttl",
        "1h",
        "--action",
        "reset",
    ]);
    d.cli_ok(&[
        "block",
        "add",
        "2001:db8:bad::/48",
        "--ttl",
        "2h",
        "--reason",
        "v6 botnet",
    ]);
    let before = d.block_list();
    let ttl_entry = before
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == "198.51.100.128/25")
        .expect("the TTL entry is listed");
    assert_eq!(
        ttl_entry["expires"].as_u64().unwrap() - ttl_entry["created"].as_u64().unwrap(),
        3600,
        "--ttl 1h: {ttl_entry}"
    );
    assert_eq!(before.as_array().unwrap().len(), 4, "{before:#}");

    // kill -9: the filter stays attached and keeps dropping, nothing else changes.
    d.kill9();
    assert!(xdp_attached(&lab), "the XDP program left with the daemon");
    let down = d.cli(&["status"]);
    assert_ne!(down.code, 0);
    assert!(
        down.stderr.contains("daemon is not running"),
        "CLI while the daemon is down: {}",
        down.both()
    );
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        CONNECT_TIMEOUT,
        "while the daemon is dead",
    );
    lab.assert_connects(&listener, CLEAN4.into(), "clean, daemon dead");
    lab.assert_refused(&listener, RESET4.into(), "config reset list, daemon dead");

    // Restart: every entry back, exactly; the pinned link adopted.
    let took = d.start();
    eprintln!("restart after kill -9: ready in {took:?}");
    let after = d.block_list();
    assert_eq!(
        entry_set(&after),
        entry_set(&before),
        "block list before kill -9 / after restart"
    );
    let c = d.check("198.51.100.7");
    assert_eq!(c["verdict"], "drop", "{c:#}");
    assert_eq!(c["list"], "cli", "{c:#}");
    assert_eq!(c["xdp_action"], "XDP_DROP", "{c:#}");
    assert!(
        c["matches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["reason"] == "spam run #42"),
        "check shows the reason: {c:#}"
    );
    let st = d.status();
    assert_eq!(
        interfaces(&st),
        vec![(lab.mx_if.clone(), "adopted".to_owned())],
        "{st:#}"
    );
    assert_tables_match_store(&d);
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        SHORT_TIMEOUT,
        "after the restart",
    );
    lab.assert_connects(&listener, CLEAN4.into(), "clean, after the restart");
    lab.assert_refused(&listener, RESET4.into(), "config reset list, after restart");
}

/// `status --verify`: the kernel tables hold exactly the store's content, every prefix's
/// first and last address answered as the rules say.
fn assert_tables_match_store(d: &Daemon) {
    let v = d.json(&["status", "--verify", "--json"]);
    let x = &v["verify"];
    assert_eq!(x["ok"], true, "tables differ from the store: {x:#}");
    assert_eq!(x["store_prefixes"], x["table_prefixes"], "{x:#}");
    assert!(x["addresses_checked"].as_u64().unwrap() > 0, "{x:#}");
}

/// The SYN sender's bounds: connects, and time.
const SENDER_MAX_CONNECTS: u64 = 4000;
const SENDER_MAX_TIME: Duration = Duration::from_secs(30);

/// Runs `during` while a sender fires SYNs from `src`: 20 before, 20 after, bounded.
fn syns_around<T>(lab: &Lab, src: IpAddr, during: impl FnOnce() -> T) -> (Burst, T) {
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    thread::scope(|s| {
        let sender = s.spawn(|| syn_sender(lab, src, &stop, &sent));
        let wait_sent = |n: u64| {
            poll(Duration::from_secs(5), || {
                (sent.load(Ordering::Relaxed) >= n).then_some(())
            })
            .unwrap_or_else(|| {
                panic!(
                    "the sender stopped at {} SYNs (it stops at {SENDER_MAX_CONNECTS} or after \
                     {SENDER_MAX_TIME:?}): what it wraps took too long",
                    sent.load(Ordering::Relaxed)
                )
            });
        };
        wait_sent(20);
        let r = during();
        wait_sent(sent.load(Ordering::Relaxed) + 20);
        stop.store(true, Ordering::Relaxed);
        (sender.join().expect("sender"), r)
    })
}

/// What the SYN sender saw.
struct Burst {
    /// connect() calls, one SYN each.
    connects: u64,
    /// Connections that completed: SYNs that got through.
    completed: u64,
    /// When each connect was made.
    times: Vec<Instant>,
}

/// Sends one SYN from `src` every 5 ms (a nonblocking connect, closed 300 ms later: before
/// the 1 s retransmission, long after a SYN-ACK would have come) until `stop`, or 400 SYNs,
/// or 10 s.
fn syn_sender(lab: &Lab, src: IpAddr, stop: &AtomicBool, sent: &AtomicU64) -> Burst {
    let dst = Lab::smtp_of(src);
    in_netns(&lab.client.name, || {
        let start = Instant::now();
        let mut open: VecDeque<(Instant, Socket)> = VecDeque::new();
        let mut b = Burst {
            connects: 0,
            completed: 0,
            times: Vec::new(),
        };
        let retire = |open: &mut VecDeque<(Instant, Socket)>, all: bool, b: &mut Burst| {
            while let Some((t, _)) = open.front() {
                if !all && t.elapsed() < Duration::from_millis(300) {
                    break;
                }
                if all {
                    let wait = Duration::from_millis(300).saturating_sub(t.elapsed());
                    thread::sleep(wait);
                }
                let (_, s) = open.pop_front().unwrap();
                if s.peer_addr().is_ok() {
                    b.completed += 1;
                }
            }
        };
        // Bounded, but far past a restart: the tests of this binary run side by side, and
        // under their load a restart took longer than 400 connects (5 ms apart) once.
        while !stop.load(Ordering::Relaxed)
            && b.connects < SENDER_MAX_CONNECTS
            && start.elapsed() < SENDER_MAX_TIME
        {
            let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))
                .expect("socket");
            s.set_nonblocking(true).unwrap();
            s.bind(&SockAddr::from(SocketAddr::new(src, 0)))
                .unwrap_or_else(|e| panic!("bind {src}: {e}"));
            match s.connect(&dst.into()) {
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Ok(()) => b.completed += 1,
                Err(e) => panic!("connect from {src}: {e}"),
            }
            let now = Instant::now();
            b.times.push(now);
            b.connects += 1;
            sent.store(b.connects, Ordering::Relaxed);
            open.push_back((now, s));
            retire(&mut open, false, &mut b);
            thread::sleep(Duration::from_millis(5));
        }
        retire(&mut open, true, &mut b);
        b
    })
}

/// SYNs the client's kernel sent: active opens plus SYN retransmissions.
fn syns_sent(lab: &Lab) -> u64 {
    let s = lab.client.netstat();
    s["Tcp.ActiveOpens"] + s["TcpExt.TCPSynRetrans"]
}

#[test]
fn restart_leaves_no_gap() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let mut d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    let dropped0 = counter(&d.status(), "block", "drop");
    let syns0 = syns_sent(&lab);

    let (burst, (t_term, t_ready, ready_in)) = syns_around(&lab, BLOCKED4.into(), || {
        let t_term = Instant::now();
        d.terminate();
        assert!(xdp_attached(&lab), "SIGTERM must leave the filter attached");
        let ready_in = d.start();
        (t_term, Instant::now(), ready_in)
    });
    let in_window = burst
        .times
        .iter()
        .filter(|&&t| t >= t_term && t <= t_ready)
        .count();
    assert!(
        burst.times.first().is_some_and(|&t| t < t_term)
            && burst.times.last().is_some_and(|&t| t > t_ready),
        "the SYNs did not cover the whole restart (sender stopped at its bounds): {} SYNs",
        burst.connects
    );
    let syns = syns_sent(&lab) - syns0;
    assert!(
        syns >= burst.connects,
        "the client's kernel sent {syns} SYNs for {} connects",
        burst.connects
    );
    let dropped = poll(Duration::from_secs(2), || {
        let n = counter(&d.status(), "block", "drop") - dropped0;
        (n >= syns).then_some(n)
    })
    .unwrap_or_else(|| counter(&d.status(), "block", "drop") - dropped0);
    eprintln!(
        "restart gap: sent {syns} SYNs during restart, {dropped} dropped \
         ({in_window} of them between SIGTERM and the new daemon answering, {:?}, \
         of which start to ready {ready_in:?}; {} connects completed)",
        t_ready - t_term,
        burst.completed
    );
    assert_eq!(
        burst.completed, 0,
        "connects from the blocked source completed"
    );
    assert!(
        !listener.saw(BLOCKED4.into()),
        "the blocked source reached the listener: {:?}",
        listener.peers()
    );
    assert_eq!(dropped, syns, "SYNs dropped (block) vs sent during restart");
    assert_eq!(
        interfaces(&d.status()),
        vec![(lab.mx_if.clone(), "adopted".to_owned())]
    );
    lab.assert_connects(&listener, CLEAN4.into(), "clean source after the restart");
}

/// The seconds clock the daemon stamps entries with.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A TTL entry drops while it is in force and then goes away by itself: from the store, from
/// `check` and from the XDP table. Nothing here races the clock on a loaded machine: the
/// entry's own `expires` (from `block list --json`) says when it must be in force, and expiry
/// is polled for under a generous bound instead of asserted after a fixed sleep.
#[test]
fn ttl_entry_expires() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    lab.assert_connects(&listener, TTL4.into(), "before block add");

    // In force: a SYN is dropped. A connect that completes proves a failure only if the
    // entry is still listed afterwards (it was in force the whole time); if the TTL ran out
    // in between (a stalled machine), try again with a longer one, a bounded number of times.
    let mut expires = 0;
    let mut seen_dropped = false;
    for ttl in [4u64, 8, 16, 32] {
        let _ = d.cli(&["block", "del", "192.0.2.50"]);
        d.cli_ok(&["block", "add", "192.0.2.50", "--ttl", &format!("{ttl}s")]);
        let listed = d.block_list();
        let e = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["prefix"] == "192.0.2.50/32")
            .unwrap_or_else(|| panic!("the TTL entry is listed: {listed:#}"));
        expires = e["expires"].as_u64().expect("a TTL entry has expires");
        assert_eq!(expires - e["created"].as_u64().unwrap(), ttl, "{e}");
        let seen = listener.count(TTL4.into());
        let (r, took) = lab.connect(TTL4.into(), SHORT_TIMEOUT);
        let still_listed = d
            .block_list()
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["prefix"] == "192.0.2.50/32");
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                assert_eq!(listener.count(TTL4.into()), seen, "dropped yet seen");
                seen_dropped = true;
                break;
            }
            Err(e) => panic!("connect from {TTL4} under a TTL entry: {e} after {took:?}"),
            Ok(local) => {
                assert!(
                    !still_listed,
                    "the TTL entry was listed before and after, yet {local} connected"
                );
                eprintln!("--ttl {ttl}s ran out during the connect (slow machine); longer");
            }
        }
    }
    assert!(seen_dropped, "never saw the TTL entry in force");

    // Expiry: gone from the store (and, in the same step, from the tables) once its time
    // has come, and never before.
    poll(Duration::from_secs(90), || {
        d.block_list()
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["prefix"] != "192.0.2.50/32")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the TTL entry (expires {expires}) is still listed at {}:\n{}",
            unix_now(),
            d.log()
        )
    });
    let now = unix_now();
    assert!(
        now >= expires,
        "the entry went away at {now}, before its expiry time {expires}"
    );
    let c = d.check("192.0.2.50");
    assert_eq!(c["verdict"], "pass", "{c:#}");
    lab.assert_connects(&listener, TTL4.into(), "after the TTL expired");
}

/// The value of the sample `name{labels}` in a text exposition.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("{series}: {v}")) as u64
        })
}

#[test]
fn metrics_agree_with_status() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, RESET_LIST);
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    lab.assert_dropped(&listener, BLOCKED4.into(), SHORT_TIMEOUT, "blocked");
    lab.assert_refused(&listener, RESET4.into(), "reset list");
    lab.assert_connects(&listener, CLEAN4.into(), "clean");

    let s1 = d.status();
    let text = d.metrics_text();
    let s2 = d.status();
    // Background frames (IPv6 neighbour discovery) only move not_judged.
    let judged = |s: &Value| -> Vec<Value> {
        s["counters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["reason"] != "not_judged")
            .cloned()
            .collect()
    };
    assert_eq!(
        judged(&s1),
        judged(&s2),
        "no SYNs sent: the judged counters stand still"
    );
    let drops = counter(&s1, "block", "drop");
    assert!(drops >= 1, "{s1:#}");
    assert_eq!(
        sample(
            &text,
            r#"prefilter_xdp_packets_total{action="drop",reason="block"}"#
        ),
        Some(drops),
        "metrics vs status, block/drop:\n{text}"
    );
    for c in judged(&s1) {
        let (r, a) = (c["reason"].as_str().unwrap(), c["action"].as_str().unwrap());
        let series = format!(r#"prefilter_xdp_packets_total{{action="{a}",reason="{r}"}}"#);
        assert_eq!(
            sample(&text, &series),
            c["packets"].as_u64(),
            "{series}: metrics vs status\n{text}"
        );
    }
    let attached = format!(
        r#"prefilter_xdp_attached{{interface="{}",mode="native"}}"#,
        lab.mx_if
    );
    assert_eq!(sample(&text, &attached), Some(1), "{text}");

    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    if promtool.is_err() {
        eprintln!("promtool not installed: skipped `promtool check metrics`");
        return;
    }
    let file = d.dir.join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("promtool check metrics < \"$1\"")
        .arg("sh")
        .arg(&file);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(
        out.code,
        0,
        "promtool check metrics: {}\n{text}",
        out.both()
    );
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// Whether `addr/len` overlaps one of the /24 networks the lab's hosts live in.
fn touches_lab(addr: u32, len: u8) -> bool {
    const LAB: [Ipv4Addr; 3] = [
        Ipv4Addr::new(192, 0, 2, 0),
        Ipv4Addr::new(198, 51, 100, 0),
        Ipv4Addr::new(203, 0, 113, 0),
    ];
    LAB.iter()
        .any(|n| (addr ^ u32::from(*n)) & mask(len.min(24)) == 0)
}

/// `n` distinct IPv4 prefixes, text and set: half /32s, a tenth /25–/31 (both from 60,000
/// random /24 networks, as botnet lists cluster; the default 65,536 long-prefix groups hold
/// them), the rest /16–/24 anywhere. None touches the lab's networks.
fn big_list(n: usize, seed: u64) -> (String, HashSet<(u32, u8)>) {
    let mut rng = Rng(seed);
    let mut pool = Vec::with_capacity(60_000);
    while pool.len() < 60_000 {
        let net = (rng.next() as u32) & mask(24);
        if !touches_lab(net, 24) {
            pool.push(net);
        }
    }
    let mut set = HashSet::with_capacity(n);
    let mut text = String::with_capacity(n * 16);
    text.push_str("# prefilter test list\n");
    while set.len() < n {
        let r = rng.next();
        let (addr, len) = match r % 100 {
            0..50 => (
                pool[(r >> 8) as usize % pool.len()] | ((r >> 40) as u32 & 0xff),
                32,
            ),
            50..60 => {
                let len = 25 + ((r >> 8) % 7) as u8;
                (
                    pool[(r >> 16) as usize % pool.len()] | ((r >> 40) as u32 & 0xff),
                    len,
                )
            }
            _ => (r as u32 ^ (r >> 32) as u32, 16 + ((r >> 8) % 9) as u8),
        };
        let addr = addr & mask(len);
        if touches_lab(addr, len) || !set.insert((addr, len)) {
            continue;
        }
        if len == 32 {
            let _ = writeln!(text, "{}", Ipv4Addr::from(addr));
        } else {
            let _ = writeln!(text, "{}/{len}", Ipv4Addr::from(addr));
        }
    }
    (text, set)
}

#[test]
fn import_one_million_prefixes() {
    require_root();
    const N: usize = 1_000_000;
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let mut d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let rss0 = d.rss_kib();
    let heap0 = d.rss_anon_kib();

    let t = Instant::now();
    let (mut text, mut set) = big_list(N - 1, 0x5eed_1234);
    assert!(set.insert((u32::from(BIG4), 32)));
    text.push_str("198.51.100.77\n");
    let file = d.dir.join("big.txt");
    std::fs::write(&file, &text).unwrap();
    eprintln!(
        "generated {} prefixes ({} MB) in {:?}",
        set.len(),
        text.len() >> 20,
        t.elapsed()
    );
    drop(text);

    let file_s = file.to_str().unwrap();
    let out = d.cli(&["block", "import", file_s, "--list", "big"]);
    assert_eq!(out.code, 0, "import: {}\n{}", out.both(), d.log());
    let rss = d.rss_kib();
    eprintln!(
        "imported {N} prefixes through the CLI in {:?}; daemon VmRSS {} MiB after import \
         ({} MiB before)",
        out.took,
        rss >> 10,
        rss0 >> 10
    );
    assert!(
        out.stdout
            .contains(&format!("imported {N} entries into list big")),
        "{}",
        out.both()
    );

    let st = d.status();
    assert_eq!(
        list_entries(&st, "big"),
        Some(N as u64),
        "status lists big with every unique prefix: {:#}",
        st["lists"]
    );
    eprintln!("tables after import: {}", st["maps"]);
    assert_tables_match_store(&d);
    let c = d.check("198.51.100.77");
    assert_eq!(c["verdict"], "drop", "{c:#}");
    assert_eq!(c["list"], "big", "{c:#}");
    assert!(
        c["explanation"].as_str().unwrap().contains("list big"),
        "{c:#}"
    );
    let human = d.cli_ok(&["check", "198.51.100.77"]);
    assert!(human.contains("list big"), "{human}");
    lab.assert_connects(&listener, CLEAN4.into(), "clean source, 1M list loaded");
    lab.assert_dropped(&listener, BIG4.into(), SHORT_TIMEOUT, "member of list big");

    // A 1% update as a patch: 10,000 entries out (BIG4 among them), 10,000 new ones in.
    let fmt = |&(a, len): &(u32, u8)| {
        if len == 32 {
            Ipv4Addr::from(a).to_string()
        } else {
            format!("{}/{len}", Ipv4Addr::from(a))
        }
    };
    let out_of: Vec<(u32, u8)> = set
        .iter()
        .filter(|&&e| e != (u32::from(BIG4), 32))
        .take(9_999)
        .copied()
        .chain([(u32::from(BIG4), 32)])
        .collect();
    let mut rng = Rng(0x5eed_9999);
    let mut fresh = HashSet::new();
    while fresh.len() < 10_000 {
        let a = rng.next() as u32;
        if !touches_lab(a, 32) && !set.contains(&(a, 32)) {
            fresh.insert((a, 32u8));
        }
    }
    let mut patch = String::from("--- big.txt\n+++ big-next.txt\n");
    for e in &out_of {
        let _ = writeln!(patch, "-{}", fmt(e));
    }
    for e in &fresh {
        let _ = writeln!(patch, "+{}", fmt(e));
    }
    let patch_file = d.dir.join("big.diff");
    std::fs::write(&patch_file, patch).unwrap();
    let out = d.cli(&[
        "block",
        "import",
        patch_file.to_str().unwrap(),
        "--list",
        "big",
        "--patch",
    ]);
    assert_eq!(out.code, 0, "import --patch: {}", out.both());
    assert!(
        out.stdout
            .contains("patched list big: 10000 entries added or updated, 10000 removed"),
        "{}",
        out.both()
    );
    eprintln!(
        "a 1% patch of the 1M list through the CLI in {:?}",
        out.took
    );
    assert_eq!(list_entries(&d.status(), "big"), Some(N as u64));
    assert_tables_match_store(&d);
    lab.assert_connects(&listener, BIG4.into(), "patched out of list big");
    let back = d.dir.join("back.diff");
    std::fs::write(&back, "+198.51.100.77\n").unwrap();
    d.cli_ok(&[
        "block",
        "import",
        back.to_str().unwrap(),
        "--list",
        "big",
        "--patch",
    ]);
    lab.assert_dropped(
        &listener,
        BIG4.into(),
        SHORT_TIMEOUT,
        "patched back into list big",
    );

    // Restarted with the million entries: they are all back, and the daemon holds at most
    // 100 bytes of its own memory per entry, its per-/24 owner array included (16 MiB once
    // a list spreads over the whole space). The start-up's change list once stayed for the
    // daemon's life (48 bytes per entry), and an array of every /24's verdict beside the
    // kernel's took 32 MiB more.
    let before = list_entries(&d.status(), "big");
    d.restart(libc::SIGTERM);
    assert_eq!(
        list_entries(&d.status(), "big"),
        before,
        "entries after a restart"
    );
    lab.assert_dropped(&listener, BIG4.into(), SHORT_TIMEOUT, "after a restart");
    let heap = d.rss_anon_kib().saturating_sub(heap0);
    eprintln!(
        "heap after a restart with {N} entries: {} MiB above the idle daemon's, {} B/entry",
        heap >> 10,
        heap * 1024 / N as u64
    );
    assert!(
        heap * 1024 <= 100 * N as u64,
        "{heap} KiB of heap for {N} entries after a restart: over 100 bytes each"
    );

    // --replace with ten lines: exactly those remain.
    let small: Vec<String> = [
        "192.0.2.128/25",
        "198.51.100.0/30",
        "203.0.113.64/26",
        "100.64.0.0/10",
        "10.20.0.0/16",
        "172.16.5.0/24",
        "93.184.216.34/32",
        "45.33.32.0/19",
        "185.220.101.1/32",
        "2001:db8:dead::/48",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let small_file = d.dir.join("small.txt");
    std::fs::write(&small_file, small.join("\n") + "\n").unwrap();
    let out = d.cli(&[
        "block",
        "import",
        small_file.to_str().unwrap(),
        "--list",
        "big",
        "--replace",
        // Shrinking a list this much is what the shrink guard refuses without it.
        "--force",
    ]);
    assert_eq!(out.code, 0, "import --replace: {}", out.both());
    eprintln!("replaced the 1M list with 10 entries in {:?}", out.took);
    let st = d.status();
    assert_eq!(list_entries(&st, "big"), Some(10), "{:#}", st["lists"]);
    let listed: BTreeSet<String> = d
        .block_list()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["list"] == "big")
        .map(|e| e["prefix"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, small.iter().cloned().collect::<BTreeSet<_>>());
    assert_tables_match_store(&d);
    let c = d.check("198.51.100.77");
    assert_eq!(c["verdict"], "pass", "{c:#}");
    let c = d.check("192.0.2.200");
    assert_eq!(c["list"], "big", "{c:#}");
    lab.assert_connects(&listener, BIG4.into(), "no longer listed");
}

/// A patch of a large list is written to the tables in chunks while the store works on the
/// rest. When the tables fill up part-way (a small group limit here), the chunks already
/// written are undone with the store's part: the list and the tables are as before, the
/// /24s the patch removed still drop, and the error names the limit to raise.
#[test]
fn a_patch_the_tables_refuse_part_way_changes_nothing() {
    require_root();
    // Enough that the patch below is cut into chunks (it is under an eighth of the list);
    // under 65,536, so the list stays inside 240.0.0.0/16.
    const N: u32 = 60_000;
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "[limits]\nv4_long_groups = 2048\n");
    // /24s of class E (never routed; no traffic goes there).
    let net = |i: u32| Ipv4Addr::from(0xf000_0000 | i << 8);
    let list: String = (0..N).map(|i| format!("{}/24\n", net(i))).collect();
    let file = d.dir.join("e.txt");
    std::fs::write(&file, list).unwrap();
    d.cli_ok(&["block", "import", file.to_str().unwrap(), "--list", "e"]);
    // 500 /24s out, two /26s in each of 3000 other /24s: each pair needs a group of its
    // own (one /26 alone would fit in the /24's entry), and the 2048 run out in the fifth
    // chunk or so of the store's changes.
    let mut patch = String::new();
    for i in 0..500 {
        let _ = writeln!(patch, "-{}/24", net(i));
    }
    for i in 0..3000u32 {
        for o in [64, 192] {
            let a = Ipv4Addr::from(0xf100_0000 | i << 8 | o);
            let _ = writeln!(patch, "+{a}/26");
        }
    }
    let pfile = d.dir.join("e.diff");
    std::fs::write(&pfile, patch).unwrap();
    let out = d.cli(&[
        "block",
        "import",
        pfile.to_str().unwrap(),
        "--list",
        "e",
        "--patch",
    ]);
    assert_ne!(out.code, 0, "the patch should not fit: {}", out.both());
    assert!(
        out.stderr.contains("IPv4 table full") && out.stderr.contains("v4_long_groups"),
        "{}",
        out.both()
    );
    // The refusal came after chunks were written (the case this test is for).
    let log = d.log();
    let undone = log
        .lines()
        .filter(|l| l.contains("patch refused by the tables part-way"))
        .find_map(|l| {
            let v = l.split("undone=").nth(1)?;
            v.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no part-way refusal logged:\n{log}"));
    assert!(
        undone > 0,
        "the refusal came with the first chunk: {undone}"
    );
    assert_eq!(list_entries(&d.status(), "e"), Some(u64::from(N)));
    assert_tables_match_store(&d);
    assert_eq!(d.check(&net(7).to_string())["verdict"], "drop");
    assert_eq!(d.check("241.0.1.65")["verdict"], "pass");
}

/// The pinned config map of daemon `d` (the agent's record; the ABI marker).
fn pinned_config(
    d: &Daemon,
) -> aya::maps::Array<aya::maps::MapData, prefilter_common::config::Config> {
    let pin = d
        .bpffs
        .join("prefilter")
        .join(prefilter_common::config::MAP);
    let data = aya::maps::MapData::from_pin(&pin).expect("pinned config map");
    aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap()
}

/// An upgrade: the pinned maps carry another ABI. The new agent must not reuse them, yet
/// the filter must never lapse: fresh maps are filled, then the pinned link is switched.
#[test]
fn upgrade_with_another_abi_keeps_filtering() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let mut d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    let (burst, ()) = syns_around(&lab, BLOCKED4.into(), || {
        d.terminate();
        // Pretend an older agent of another map layout left its maps pinned.
        let mut cfg = pinned_config(&d);
        let c = cfg.get(&0, 0).unwrap();
        assert_eq!(c.abi, prefilter_common::ABI_VERSION);
        cfg.set(0, prefilter_common::config::Config { abi: 999, ..c }, 0)
            .unwrap();
        // And a map this ABI no longer has (the judged ports were one until ABI 7).
        let dir = d.bpffs.join("prefilter");
        let retired = aya::maps::MapData::from_pin(dir.join(prefilter_common::config::MAP))
            .expect("pinned config map");
        retired.pin(dir.join("PF_PORTS")).expect("pin a stand-in");
        drop((cfg, retired));
        d.start();
    });
    assert!(
        !d.bpffs.join("prefilter").join("PF_PORTS").exists(),
        "the retired map's pin is removed with the others"
    );
    assert!(
        d.log().contains("another version"),
        "the agent said it replaced the maps: {}",
        d.log()
    );
    assert_eq!(
        burst.completed, 0,
        "connects from the blocked source completed"
    );
    assert!(!listener.saw(BLOCKED4.into()), "{:?}", listener.peers());
    assert_eq!(
        pinned_config(&d).get(&0, 0).unwrap().abi,
        prefilter_common::ABI_VERSION,
        "the new maps are pinned in place of the old"
    );
    assert_eq!(
        interfaces(&d.status()),
        vec![(lab.mx_if.clone(), "adopted".to_owned())]
    );
    assert_tables_match_store(&d);
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        SHORT_TIMEOUT,
        "after the upgrade",
    );
    lab.assert_connects(&listener, CLEAN4.into(), "clean source after the upgrade");
}

/// `prefilter watch` streams each verdict as it happens: who, what, why.
#[test]
fn watch_streams_verdict_events() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let mut d = Daemon::prepare(&lab.mx, &lab.mx_if);
    d.write_config(&d.config_text("sample_every = 1", ""));
    d.start();
    d.cli_ok(&["block", "add", "198.51.100.7", "--reason", "watch me"]);
    let mut watch = std::process::Command::new(prefilter_tests::daemon::binary())
        .arg("--socket")
        .arg(&d.socket)
        .args(["watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start watch");
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Give the stream a moment to subscribe, then make a verdict happen.
    thread::sleep(Duration::from_millis(300));
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        SHORT_TIMEOUT,
        "blocked, watched",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["source"] == "198.51.100.7" {
            seen = Some(v);
            break;
        }
    }
    // Stop the watcher by its pid.
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
    let v = seen.expect("watch printed the blocked SYN within 5 s");
    assert_eq!(v["kind"], "verdict", "{v}");
    assert_eq!(v["action"], "drop", "{v}");
    assert_eq!(v["reason"], "block", "{v}");
    assert_eq!(v["list"], "cli", "{v}");
    assert_eq!(v["port"], 25, "{v}");
}

/// SIGTERM leaves the filter in force and `status` says so; `detach` through the running
/// daemon removes it from the interface.
#[test]
fn stop_leaves_filter_and_detach_removes_it() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let mut d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    let pin_dir = d.bpffs.join("prefilter");
    let pin_arg = pin_dir.to_str().unwrap().to_owned();

    d.terminate();
    let down = d.cli(&["status", "--pin-dir", &pin_arg]);
    assert_ne!(down.code, 0);
    assert!(
        down.stderr.contains("daemon is not running")
            && down
                .stderr
                .contains(&format!("still attached to {}", lab.mx_if)),
        "status with the daemon stopped: {}",
        down.both()
    );
    lab.assert_dropped(&listener, BLOCKED4.into(), SHORT_TIMEOUT, "daemon stopped");

    d.start();
    let bad = d.cli(&["detach", "--iface", "nosuch0"]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("not attached to nosuch0"),
        "{}",
        bad.both()
    );
    assert!(xdp_attached(&lab), "a refused detach changed nothing");

    let out = d.cli_ok(&["detach"]);
    assert!(out.contains(&lab.mx_if), "{out}");
    assert!(
        !xdp_attached(&lab),
        "detach left the program on the interface"
    );
    assert!(
        !pin_dir.join(format!("link_{}", lab.mx_if)).exists(),
        "detach left the pinned link"
    );
    assert_eq!(interfaces(&d.status()), Vec::<(String, String)>::new());
    lab.assert_connects(&listener, BLOCKED4.into(), "filter detached");
    // The entries are still in the store for the next attach.
    assert_eq!(d.block_list().as_array().unwrap().len(), 1);
}

/// With `log_level = "debug"` the program's aya-log diagnostics reach the daemon's log:
/// a frame it could not parse is passed and the reason is logged.
#[test]
fn xdp_diagnostics_reach_the_daemon_log() {
    require_root();
    let lab = Lab::new();
    let mut d = Daemon::prepare(&lab.mx, &lab.mx_if);
    d.write_config(&d.config_text("log_level = \"debug\"", ""));
    d.start();
    let mac = |ns: &prefilter_tests::netns::Netns, ifc: &str| -> [u8; 6] {
        let out = ns.exec("cat", &[&format!("/sys/class/net/{ifc}/address")]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut m = [0u8; 6];
        for (i, b) in text.trim().split(':').enumerate() {
            m[i] = u8::from_str_radix(b, 16).unwrap();
        }
        m
    };
    let (dst, src) = (mac(&lab.mx, &lab.mx_if), mac(&lab.client, &lab.client_if));
    // A SYN whose IPv4 total length claims more than the frame holds.
    let mut frame = prefilter_tests::packet::Frame::syn(
        "192.0.2.2".parse().unwrap(),
        "192.0.2.1".parse().unwrap(),
        25,
    );
    frame.dst_mac = dst;
    frame.src_mac = src;
    let mut bytes = frame.build();
    bytes[16..18].copy_from_slice(&1400u16.to_be_bytes());
    let ifc = lab.client_if.clone();
    prefilter_tests::daemon::in_netns(&lab.client.name, move || {
        // SAFETY: plain socket calls on a descriptor we own; sockaddr_ll is zeroed and filled.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let name = std::ffi::CString::new(ifc).unwrap();
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            sa.sll_halen = 6;
            sa.sll_addr[..6].copy_from_slice(&dst);
            let n = libc::sendto(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            libc::close(fd);
            assert_eq!(
                n as usize,
                bytes.len(),
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
    });
    let logged = poll(Duration::from_secs(5), || {
        d.log()
            .contains("not judged: IPv4 total length")
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "counters {}\ndaemon log:\n{}",
        d.status()["counters"],
        d.log()
    );
    assert!(counter(&d.status(), "malformed", "pass") >= 1);
}

/// Random adds, deletes, allowlisting and list replacements through the CLI, overlapping on
/// purpose: after each round the store lists exactly what was acknowledged and the kernel
/// tables answer every prefix as the rules say (`status --verify`).
#[test]
fn random_operations_keep_tables_equal_to_the_store() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let seed = std::env::var("PREFILTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0dd5_eed5_u64);
    eprintln!("seed {seed} (PREFILTER_SEED to replay)");
    let mut x = seed | 1;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    // Small spaces so that prefixes nest and repeat: 198.51.100.0/22 and 2001:db8::/48.
    let prefix = |rnd: &mut dyn FnMut(u64) -> u64| -> String {
        if rnd(4) == 0 {
            let len = [32, 48, 56, 64, 96, 128][rnd(6) as usize];
            let a = (0x2001_0db8u128 << 96) | (u128::from(rnd(1 << 16)) << 64) | u128::from(rnd(4));
            let a = a & (u128::MAX << (128 - len));
            format!("{}/{len}", std::net::Ipv6Addr::from(a))
        } else {
            let len = [22, 23, 24, 25, 26, 28, 30, 31, 32][rnd(9) as usize];
            let a = 0xc633_6400u32 | rnd(1 << 10) as u32;
            let a = a & (u32::MAX << (32 - len));
            format!("{}/{len}", std::net::Ipv4Addr::from(a))
        }
    };
    // (kind, list, prefix) acknowledged so far.
    let mut model: BTreeSet<(String, String, String)> = BTreeSet::new();
    let actions = ["drop", "reset", "observe", "tempfail", "reject"];
    for round in 0..16 {
        for _ in 0..30 {
            let p = prefix(&mut rnd);
            match rnd(6) {
                0 | 1 => {
                    let list = ["cli", "l1", "l2"][rnd(3) as usize];
                    let act = actions[rnd(5) as usize];
                    d.cli_ok(&["block", "add", &p, "--action", act, "--list", list]);
                    model.insert(("block".into(), list.into(), p));
                }
                2 => {
                    d.cli_ok(&["allow", "add", &p]);
                    model.insert(("allow".into(), "cli-allow".into(), p));
                }
                3 => {
                    // Delete something that exists (or a miss, which must change nothing).
                    let victim = model
                        .iter()
                        .nth(rnd(model.len() as u64 + 1) as usize)
                        .cloned();
                    match victim {
                        Some((kind, list, p)) => {
                            d.cli_ok(&[&kind, "del", &p, "--list", &list]);
                            model.remove(&(kind, list, p));
                        }
                        None => {
                            assert_ne!(d.cli(&["block", "del", &p, "--list", "nosuch"]).code, 0)
                        }
                    }
                }
                _ => {
                    // Replace list imp with a few fresh lines (forced: the shrink guard
                    // has its own tests; here any replacement must keep the tables right).
                    let lines: Vec<String> = (0..rnd(6)).map(|_| prefix(&mut rnd)).collect();
                    let file = d.dir.join("imp.txt");
                    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
                    d.cli_ok(&[
                        "block",
                        "import",
                        file.to_str().unwrap(),
                        "--list",
                        "imp",
                        "--replace",
                        "--force",
                    ]);
                    model.retain(|(_, l, _)| l != "imp");
                    for p in lines {
                        // The store keeps prefixes normalized; so does the model.
                        model.insert(("block".into(), "imp".into(), p));
                    }
                }
            }
        }
        let mut listed = BTreeSet::new();
        for kind in ["block", "allow"] {
            for e in d.json(&[kind, "list", "--json"]).as_array().unwrap() {
                listed.insert((
                    kind.to_owned(),
                    e["list"].as_str().unwrap().to_owned(),
                    e["prefix"].as_str().unwrap().to_owned(),
                ));
            }
        }
        assert_eq!(
            listed, model,
            "round {round}: the store lists what was acknowledged"
        );
        assert_tables_match_store(&d);
        eprintln!("round {round}: {} entries, tables verified", model.len());
    }
}

/// `--log-format json`: every log line is a JSON object, and a verdict change is logged
/// once with what, who and why.
#[test]
fn json_logs_name_who_and_why() {
    require_root();
    let lab = Lab::new();
    let mut d = Daemon::prepare(&lab.mx, &lab.mx_if);
    d.run_args = vec!["--log-format".into(), "json".into()];
    d.write_config(&d.config_text(DEFAULT_XDP, ""));
    d.start();
    d.cli_ok(&[
        "block",
        "add",
        "198.51.100.7",
        "--reason",
        "dictionary attack",
    ]);
    d.cli_ok(&["block", "del", "198.51.100.7"]);
    let log = d.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let set: Vec<&Value> = lines
        .iter()
        .filter(|v| v["fields"]["message"] == "entry set")
        .collect();
    assert_eq!(set.len(), 1, "one line per change: {log}");
    let f = &set[0]["fields"];
    assert_eq!(f["prefix"], "198.51.100.7/32", "{f}");
    assert_eq!(f["action"], "drop", "{f}");
    assert_eq!(f["by"], "cli", "{f}");
    assert_eq!(f["reason"], "dictionary attack", "{f}");
    assert_eq!(
        lines
            .iter()
            .filter(|v| v["fields"]["message"] == "entry deleted")
            .count(),
        1,
        "{log}"
    );
}
