//! `cargo xtask lab`: the whole product on real parts, in a small internet of two network
//! namespaces built with the tests' harness. `pflab-mx` is the MX: the daemon with the XDP
//! program on its veth and the proxy on port 25, a real Postfix behind it (PROXY protocol v2),
//! a real rbldnsd serving the DNSBL zone `bl.test`, a Spamhaus DROP feed over HTTP and a
//! CrowdSec LAPI, all on the MX's loopback. `pflab-net` is the internet: a clean MTA, a sender
//! in a DROP-listed prefix, one listed in the DNSBL, one that talks before the greeting, one
//! CrowdSec has banned, and a spoofed SYN flood from 240.0.0.0/4.
//!
//! Each step prints `lab: [ok] ...` or `lab: [FAILED] ...` with its evidence; the exit status
//! is 0 only if every step did what it said. Everything lives under /tmp/pflab and in the two
//! namespaces, fixed names that never collide with the tests' and that the next run removes
//! if this one was killed outright. Teardown is the harness's own, by exact name and pid, on
//! success, failure and Ctrl-C; `--hold` keeps the lab up until Ctrl-C.

use std::{
    any::Any,
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, TcpListener},
    os::unix::fs::PermissionsExt as _,
    panic::{self, AssertUnwindSafe},
    path::Path,
    process::{Command, ExitCode},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use prefilter_tests::{
    crowdsec::Lapi,
    daemon::{
        self, BIG4, BLOCKED4, CLEAN4, DEFAULT_XDP, Daemon, Lab, MX4, RESET4, TTL4, counter,
        free_port, in_netns, poll, run_bounded,
    },
    feedserver::{FeedServer, Reply},
    netns::Netns,
    postfix::{self, Postfix},
    rbldnsd::{Rbldnsd, Zone, zone_head},
    smtp::{connect, first_line, swaks, wait_session},
};

/// Under /tmp: Postfix writes its log only below `maillog_file_prefixes` (/tmp).
const ROOT: &str = "/tmp/pflab";
const MX_NS: &str = "pflab-mx";
const NET_NS: &str = "pflab-net";
const BACKEND: &str = "127.0.0.1:10025";
/// The DNSBL zone rbldnsd serves.
const ZONE: &str = "bl.test";
/// The DROP feed's prefix holding the DROP-listed sender (BLOCKED4, 198.51.100.7) but not
/// the pregreet one (BIG4, 198.51.100.77).
const DROP_PREFIX: &str = "198.51.100.0/26";
/// The flood: bounded in count and time, paced so that a clean delivery happens inside it.
const FLOOD_PACKETS: u64 = 150_000;
const FLOOD_PPS: u64 = 30_000;
const FLOOD_WITHIN: Duration = Duration::from_secs(10);
/// How long a connect whose SYNs are dropped waits.
const DROPPED_AFTER: Duration = Duration::from_secs(2);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The first panic message of the running step: the harness reports failures by panicking,
/// sometimes in a helper thread whose own message the step would otherwise lose.
static PANIC: Mutex<Option<String>> = Mutex::new(None);
/// Whether a step runs: a panic outside one (leftovers, teardown) is printed at once.
static IN_STEP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn main() -> ExitCode {
    let hold = std::env::args().skip(1).any(|a| a == "--hold");
    if !prefilter_tests::is_root() {
        eprintln!("lab: needs root (namespaces, XDP, bpffs): run `cargo xtask lab`");
        return ExitCode::FAILURE;
    }
    // Ctrl-C and SIGTERM end the lab through its teardown, never past it.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    panic::set_hook(Box::new(|info| {
        if !IN_STEP.load(Ordering::SeqCst) {
            eprintln!("lab: {info}");
            return;
        }
        let mut first = PANIC.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(info.to_string());
        }
    }));
    let started = Instant::now();
    let removed = remove_leftovers();
    if !removed.is_empty() {
        println!(
            "lab: removed leftovers of an earlier run: {}",
            removed.join(", ")
        );
    }
    if let Err(e) = fs::create_dir(ROOT)
        .and_then(|()| fs::set_permissions(ROOT, fs::Permissions::from_mode(0o755)))
    {
        eprintln!("lab: create {ROOT}: {e}");
        return ExitCode::FAILURE;
    }
    prefilter_tests::set_scratch_root(ROOT.into());

    let mut story = Story::default();
    let world = story.step("the small internet is up", World::build);
    if let Some(w) = &world {
        w.run_story(&mut story);
    }
    let ok = story.failed.is_empty() && !interrupted() && world.is_some();
    if ok {
        println!(
            "lab: every step did what it said ({:.0?} so far)",
            started.elapsed()
        );
    } else if !story.failed.is_empty() {
        println!("lab: FAILED: {}", story.failed.join("; "));
    }
    if let Some(w) = &world
        && hold
        && !interrupted()
    {
        w.hold();
    }
    drop(world);
    let _ = fs::remove_dir(ROOT);
    println!(
        "lab: torn down: namespaces {MX_NS} and {NET_NS}, {ROOT}, the processes it started \
         ({:.0?} in all)",
        started.elapsed()
    );
    if interrupted() && !ok {
        println!("lab: interrupted");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What ran and what failed.
#[derive(Default)]
struct Story {
    failed: Vec<String>,
}

/// A step's evidence lines, or why it failed.
type Outcome<T> = Result<(T, Vec<String>), String>;

impl Story {
    /// Runs one step and prints its verdict and evidence; a panic (how the harness fails) is
    /// a failed step with the panic's message.
    fn step<T>(&mut self, title: &str, f: impl FnOnce() -> Outcome<T>) -> Option<T> {
        if interrupted() {
            return None;
        }
        *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let started = Instant::now();
        IN_STEP.store(true, Ordering::SeqCst);
        let result = panic::catch_unwind(AssertUnwindSafe(f));
        IN_STEP.store(false, Ordering::SeqCst);
        let result = result.unwrap_or_else(|payload| {
            let first = PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
            Err(first.unwrap_or_else(|| panic_text(&*payload)))
        });
        match result {
            Ok((value, evidence)) => {
                println!("lab: [ok] {title} ({:.1?})", started.elapsed());
                for line in evidence {
                    println!("lab:      {line}");
                }
                Some(value)
            }
            Err(why) => {
                println!("lab: [FAILED] {title}");
                // The harness's messages can carry a whole log: its head says what happened.
                let lines: Vec<&str> = why.lines().collect();
                for line in lines.iter().take(25) {
                    println!("lab:      {line}");
                }
                if lines.len() > 25 {
                    println!("lab:      ... ({} more lines)", lines.len() - 25);
                }
                self.failed.push(title.to_owned());
                None
            }
        }
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".into())
}

/// Fails the step with `why` unless `cond`.
fn ensure(cond: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(why()) }
}

/// Everything the lab runs. Fields drop in order: the daemon first (its proxy and XDP go),
/// then the components behind it, the namespaces last.
struct World {
    daemon: Daemon,
    postfix: Postfix,
    lapi: Lapi,
    _rbldnsd: Rbldnsd,
    _feed: FeedServer,
    lab: Lab,
}

impl World {
    fn build() -> Outcome<Self> {
        let lab = Lab::on(Netns::create(MX_NS), Netns::create(NET_NS));
        let postfix = Postfix::start(&lab.mx, BACKEND);
        let rbldnsd = Rbldnsd::start(
            Some(MX_NS),
            &[Zone {
                name: ZONE,
                kind: "ip4set",
                data: format!(
                    "{}{RESET4} :127.0.0.2:listed in the lab's DNSBL\n",
                    zone_head(300, 60)
                ),
            }],
        );
        let feed = FeedServer::start(in_netns(MX_NS, || {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the feed server")
        }));
        // The text format Spamhaus publishes at https://www.spamhaus.org/drop/drop.txt.
        feed.set(
            "/drop.txt",
            Reply::text(
                &format!(
                    "; Spamhaus DROP List (lab copy: documentation prefixes only)\n\
                     ; Last-Modified: Mon, 30 Nov 2026 00:00:00 GMT\n\
                     {DROP_PREFIX} ; SBL000001\n\
                     203.0.113.128/25 ; SBL000002\n"
                ),
                "lab-1",
            ),
        );
        let lapi = Lapi::start(MX_NS, (Ipv4Addr::LOCALHOST, free_port(MX_NS)).into());
        let key = lapi.add_bouncer("prefilter-lab");
        let mut daemon = Daemon::prepare(&lab.mx, &lab.mx_if);
        let tail = format!(
            "# Reserved, never routed: a flood spoofed from it stops in XDP. A /4 covers a\n\
             # large part of the address space: the list says it means it.\n\
             [[block]]\nname = \"bogons\"\naction = \"drop\"\nforce = true\n\
             prefixes = [\"240.0.0.0/4\"]\n\n\
             [[feeds]]\nname = \"spamhaus-drop\"\nsource = \"{}\"\nformat = \"spamhaus-drop\"\n\
             action = \"drop\"\ninterval = \"1h\"\n\n\
             [[feeds]]\nname = \"crowdsec\"\nsource = \"{}\"\nformat = \"crowdsec\"\n\
             api_key = \"{key}\"\ninterval = \"10s\"\n\n\
             [proxy]\nlisten = [\"192.0.2.1:25\", \"[2001:db8::1]:25\"]\n\
             backends = [\"{BACKEND}\"]\nproxy_protocol = \"v2\"\nhostname = \"mx.test\"\n\
             greet_wait = \"1s\"\ngreet_ttl = \"10m\"\nmax_per_client = 5\n\
             connect_timeout = 2\nshutdown_timeout = 1\n\n\
             [dnsbl]\nsites = [\"{ZONE}*2\"]\nthreshold = 2\nnameservers = [\"{}\"]\n\
             timeout = 1\nprobe_interval = 3600\n",
            feed.url("/drop.txt"),
            lapi.url(),
            rbldnsd.addr,
        );
        daemon.write_config(&daemon.config_text(DEFAULT_XDP, &tail));
        daemon.start();
        let evidence = vec![
            format!("{NET_NS} (the internet) --veth-- {MX_NS} (the MX, {MX4} and 2001:db8::1)"),
            format!(
                "MX: prefilter (XDP on {}, proxy on :25, socket {}, metrics {})",
                lab.mx_if,
                daemon.socket.display(),
                daemon.metrics
            ),
            format!(
                "MX: Postfix on {BACKEND} (PROXY protocol v2), log {}",
                postfix.maillog.display()
            ),
            format!("MX: rbldnsd on {} serving {ZONE}", rbldnsd.addr),
            format!("MX: Spamhaus DROP feed at {}", feed.url("/drop.txt")),
            format!("MX: CrowdSec LAPI at {}", lapi.url()),
            format!(
                "senders: clean {CLEAN4}, DROP-listed {BLOCKED4}, DNSBL-listed {RESET4}, \
                 pregreet {BIG4}, CrowdSec-banned {TTL4}, flood from 240.0.0.0/4"
            ),
        ];
        Ok((
            Self {
                daemon,
                postfix,
                lapi,
                _rbldnsd: rbldnsd,
                _feed: feed,
                lab,
            },
            evidence,
        ))
    }

    fn run_story(&self, story: &mut Story) {
        story.step("the lists are loaded", || self.lists_loaded());
        story.step("a clean MTA delivers through the proxy to Postfix", || {
            self.clean_delivery("")
        });
        story.step("a sender in a DROP-listed prefix is stopped in XDP", || {
            self.drop_listed()
        });
        story.step(
            "a DNSBL-listed client is answered 554, then stopped in XDP",
            || self.dnsbl_listed(),
        );
        story.step("a client talking before the greeting is caught", || {
            self.pregreet()
        });
        story.step("a CrowdSec decision reaches XDP", || self.crowdsec());
        story.step(
            "a spoofed SYN flood is absorbed while a clean MTA delivers",
            || self.flood(),
        );
        story.step("prefilter status", || {
            Ok(((), lines(&self.daemon.cli_ok(&["status"]))))
        });
        story.step(&format!("prefilter check {RESET4}"), || {
            Ok((
                (),
                lines(&self.daemon.cli_ok(&["check", &RESET4.to_string()])),
            ))
        });
    }

    fn lists_loaded(&self) -> Outcome<()> {
        let d = &self.daemon;
        let drop = d.feed_first_run("spamhaus-drop");
        ensure(drop["entries"] == 2, || format!("spamhaus-drop: {drop}"))?;
        let cs = d.feed_first_run("crowdsec");
        ensure(cs["last_outcome"] == "updated", || {
            format!("crowdsec: {cs}")
        })?;
        let zone = poll(Duration::from_secs(10), || {
            let st = d.status();
            (st["dnsbl"]["zones"][0]["state"] == "healthy").then_some(())
        });
        ensure(zone.is_some(), || {
            format!("{ZONE} not healthy: {}", d.status())
        })?;
        let mut evidence = lines(&d.cli_ok(&["feeds", "list"]));
        evidence.push(format!("DNSBL zone {ZONE}: healthy"));
        Ok(((), evidence))
    }

    /// swaks from the clean MTA; the Postfix log line with its real address.
    fn clean_delivery(&self, context: &str) -> Outcome<()> {
        let out = swaks(&self.lab, CLEAN4.into());
        let queued = out
            .lines()
            .find(|l| l.contains("250 2.0.0 Ok: queued as"))
            .ok_or_else(|| format!("no delivery{context}:\n{out}"))?;
        let id = queued.rsplit(' ').next().unwrap_or_default().trim();
        let needle = format!("{id}: client=unknown[{CLEAN4}]");
        ensure(
            self.postfix.wait_log(&needle, Duration::from_secs(10)),
            || format!("Postfix did not log `{needle}`:\n{}", self.postfix.log()),
        )?;
        let logged = self
            .postfix
            .log()
            .lines()
            .find(|l| l.contains(&needle))
            .unwrap_or_default()
            .to_owned();
        let session = wait_session(
            &self.daemon,
            CLEAN4.into(),
            &["verdict=pass", &format!("queue_id={id} ")],
        );
        Ok((
            (),
            vec![
                format!(
                    "swaks from {CLEAN4}: {}",
                    queued.trim_start_matches(['<', '-', '~', ' '])
                ),
                format!("Postfix: {logged}"),
                format!("prefilter: {}", tail_from(&session, "proxy session")),
            ],
        ))
    }

    /// A connect from `src` must time out (its SYNs dropped); returns the evidence.
    fn must_be_dropped(&self, src: IpAddr, reason: &str) -> Result<String, String> {
        let before = counter(&self.daemon.status(), reason, "drop");
        let (r, took) = self.lab.connect(src, DROPPED_AFTER);
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            other => return Err(format!("connect from {src}: {other:?} after {took:.1?}")),
        }
        let after = counter(&self.daemon.status(), reason, "drop");
        ensure(after > before, || {
            format!("XDP counter {reason}/drop did not move ({before})")
        })?;
        ensure(!self.postfix.log().contains(&format!("[{src}]")), || {
            format!("Postfix saw {src}")
        })?;
        Ok(format!(
            "connect from {src}: no answer in {took:.1?}; XDP {reason}/drop counter \
             {before} -> {after} (its SYN and the kernel's retries); Postfix never saw it"
        ))
    }

    /// The first line of `prefilter check IP`.
    fn check_line(&self, ip: IpAddr) -> String {
        let out = self.daemon.cli_ok(&["check", &ip.to_string()]);
        format!(
            "prefilter check {ip}: {}",
            out.lines().next().unwrap_or_default()
        )
    }

    fn drop_listed(&self) -> Outcome<()> {
        let src = IpAddr::V4(BLOCKED4);
        let c = self.daemon.check(&src.to_string());
        ensure(c.to_string().contains("spamhaus-drop"), || {
            format!("check {src}: {c}")
        })?;
        let dropped = self.must_be_dropped(src, "block")?;
        Ok(((), vec![self.check_line(src), dropped]))
    }

    fn dnsbl_listed(&self) -> Outcome<()> {
        let src = IpAddr::V4(RESET4);
        let out = swaks(&self.lab, src);
        let reply = out
            .lines()
            .find(|l| l.contains("554 5.7.1"))
            .ok_or_else(|| format!("no 554:\n{out}"))?;
        ensure(reply.contains(ZONE), || {
            format!("the 554 names no zone: {reply}")
        })?;
        let session = wait_session(&self.daemon, src, &["verdict=reject"]);
        let learned = poll(Duration::from_secs(5), || {
            let c = self.daemon.check(&src.to_string());
            (c["dynamic"]["action"] == "drop").then_some(())
        });
        ensure(learned.is_some(), || {
            format!("no dynamic drop: {}", self.daemon.check(&src.to_string()))
        })?;
        let dropped = self.must_be_dropped(src, "dynamic")?;
        Ok((
            (),
            vec![
                format!(
                    "swaks from {src}: {}",
                    reply.trim_start_matches(['<', '-', '*', ' '])
                ),
                format!("prefilter: {}", tail_from(&session, "proxy session")),
                self.check_line(src),
                format!("next try: {dropped}"),
            ],
        ))
    }

    fn pregreet(&self) -> Outcome<()> {
        let src = IpAddr::V4(BIG4);
        // A bot that does not wait for the greeting.
        let s = connect(&self.lab, src);
        (&s).write_all(b"EHLO bot.test\r\n")
            .map_err(|e| format!("send: {e}"))?;
        let mut got = String::new();
        let _ = (&s).read_to_string(&mut got);
        ensure(got.starts_with("220-mx.test ESMTP\r\n554 5.7.1"), || {
            format!("answer: {got:?}")
        })?;
        let session = wait_session(&self.daemon, src, &["verdict=pregreet"]);
        let (_s, next) = first_line(&self.lab, src);
        ensure(
            next.starts_with("554 5.7.1") && next.contains("(dynamic)"),
            || format!("next connection: {next:?}"),
        )?;
        Ok((
            (),
            vec![
                format!(
                    "{src} sent EHLO at once, got: {}",
                    got.trim().replace("\r\n", " | ")
                ),
                format!("prefilter: {}", tail_from(&session, "proxy session")),
                format!("its next connection, at once: {}", next.trim()),
            ],
        ))
    }

    fn crowdsec(&self) -> Outcome<()> {
        let src = IpAddr::V4(TTL4);
        self.lapi.add_decision(&src.to_string(), "1h");
        let sync = self.daemon.cli_ok(&["feeds", "sync", "crowdsec"]);
        let c = self.daemon.check(&src.to_string());
        ensure(c.to_string().contains("crowdsec"), || {
            format!("check {src}: {c}")
        })?;
        let dropped = self.must_be_dropped(src, "block")?;
        Ok((
            (),
            vec![
                format!("cscli decisions add --ip {src} --duration 1h"),
                format!("prefilter feeds sync crowdsec: {}", sync.trim()),
                self.check_line(src),
                dropped,
            ],
        ))
    }

    fn flood(&self) -> Outcome<()> {
        let st0 = self.daemon.status();
        let started = Instant::now();
        let (sent, flood_took, delivered) = thread::scope(|s| {
            let flood = s.spawn(|| {
                let n = self
                    .lab
                    .spoofed_syn_flood(FLOOD_PACKETS, FLOOD_WITHIN, Some(FLOOD_PPS));
                (n, started.elapsed())
            });
            thread::sleep(Duration::from_secs(1));
            let delivered = self.clean_delivery(" during the flood");
            let at = started.elapsed();
            let (sent, took) = flood.join().unwrap_or((0, Duration::ZERO));
            (sent, took, delivered.map(|(_, e)| (e, at)))
        });
        let (mut evidence, delivered_at) = delivered?;
        ensure(delivered_at < flood_took, || {
            format!("the delivery ({delivered_at:.1?}) ended after the flood ({flood_took:.1?})")
        })?;
        ensure(sent == FLOOD_PACKETS, || {
            format!("the flood was cut short: {sent} of {FLOOD_PACKETS}")
        })?;
        // The counters are per CPU and read live: give the last frames a moment.
        let drops0 = counter(&st0, "block", "drop");
        let absorbed = poll(Duration::from_secs(5), || {
            let n = counter(&self.daemon.status(), "block", "drop") - drops0;
            (n >= sent).then_some(n)
        });
        let st1 = self.daemon.status();
        let drops = counter(&st1, "block", "drop") - drops0;
        ensure(absorbed.is_some(), || {
            format!("XDP dropped {drops} of {sent} flood SYNs")
        })?;
        let passes = counter(&st1, "no_match", "pass") - counter(&st0, "no_match", "pass");
        evidence.insert(
            0,
            format!(
                "{sent} SYNs from random 240.0.0.0/4 sources in {flood_took:.1?}; \
                 the clean MTA delivered at {delivered_at:.1?}, inside the flood"
            ),
        );
        evidence.push(format!(
            "XDP counters over the flood: block/drop +{drops} (list bogons), no_match/pass \
             +{passes} (the clean MTA's SYN)"
        ));
        let metrics = self.daemon.metrics_text();
        evidence.extend(
            metrics
                .lines()
                .filter(|l| l.starts_with("prefilter_xdp_packets_total") && !l.ends_with(" 0"))
                .map(|l| format!("metrics: {l}")),
        );
        Ok(((), evidence))
    }

    /// Keeps the lab up until Ctrl-C, with the commands to explore it.
    fn hold(&self) {
        let cli = format!(
            "{} --socket {}",
            daemon::binary().display(),
            self.daemon.socket.display()
        );
        println!("lab: holding until Ctrl-C; try:");
        for c in [
            format!("{cli} status"),
            format!("{cli} check {RESET4}"),
            format!("{cli} block add {CLEAN4} --action reset --ttl 10m"),
            format!("{cli} watch"),
            format!(
                "ip netns exec {MX_NS} curl -s http://{}/metrics | grep ^prefilter_xdp",
                self.daemon.metrics
            ),
            format!(
                "ip netns exec {NET_NS} swaks --server {MX4} --local-interface {CLEAN4} \
                 --from a@client.test --to user@sink.test"
            ),
            format!("tail -f {}", self.postfix.maillog.display()),
            format!("tail -f {}", self.daemon.dir.join("daemon.log").display()),
        ] {
            println!("  {c}");
        }
        while !interrupted() {
            thread::sleep(Duration::from_millis(200));
        }
        println!("lab: Ctrl-C: tearing down");
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// `line` from `marker` on (a log line without its timestamp and level).
fn tail_from(line: &str, marker: &str) -> String {
    line.find(marker).map_or(line, |i| &line[i..]).to_owned()
}

/// Removes what a run killed outright left, by exact name: the processes in the lab's
/// namespaces (all of them started by the lab), the XDP links pinned in its bpffs, the
/// namespaces, the bpffs mount, Postfix's registration and /tmp/pflab. Returns what it found.
fn remove_leftovers() -> Vec<String> {
    let mut found = Vec::new();
    for ns in [MX_NS, NET_NS] {
        if !Path::new("/run/netns").join(ns).exists() {
            continue;
        }
        let pids = run_bounded(
            {
                let mut c = Command::new("ip");
                c.args(["netns", "pids", ns]);
                c
            },
            Duration::from_secs(10),
        );
        let pids: Vec<libc::pid_t> = pids
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if !pids.is_empty() {
            stop_pids(&pids);
            found.push(format!("{} processes in {ns}", pids.len()));
        }
    }
    let bpffs = Path::new(ROOT).join("daemon/bpf");
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == bpffs.to_str())
    {
        daemon::remove_bpffs(&bpffs);
        found.push(format!("the bpffs at {}", bpffs.display()));
    }
    for ns in [MX_NS, NET_NS] {
        if Path::new("/run/netns").join(ns).exists() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            found.push(format!("namespace {ns}"));
        }
    }
    if Path::new(ROOT).exists() {
        postfix::unregister(&Path::new(ROOT).join("postfix/conf"));
        let _ = fs::remove_dir_all(ROOT);
        found.push(ROOT.into());
    }
    found
}

/// SIGTERM, up to 5 s to exit, then SIGKILL for those still there.
fn stop_pids(pids: &[libc::pid_t]) {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let alive = |pid: &libc::pid_t| unsafe { libc::kill(*pid, 0) } == 0;
    for &pid in pids {
        // SAFETY: kill(2) on a pid read from the lab's own namespace.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let gone = poll(Duration::from_secs(5), || {
        (!pids.iter().any(alive)).then_some(())
    });
    if gone.is_none() {
        for &pid in pids.iter().filter(|p| alive(p)) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
