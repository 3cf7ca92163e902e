//! The SMTP proxy in front of a real Postfix (Debian's), end to end: swaks in a client
//! namespace sends through the daemon's proxy on the MX's port 25 to Postfix on the MX's
//! loopback (`smtpd_upstream_proxy_protocol = haproxy`). Mail for sink.test is discarded by
//! Postfix; nothing leaves the namespaces.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use prefilter_tests::{
    daemon::{BIG4, BLOCKED4, CLEAN4, CLEAN6, Daemon, Lab, MX4, TTL4, in_netns, run_bounded},
    postfix::Postfix,
    require_root,
    smtp::{connect, first_line, metric, swaks, swaks_with, wait_session},
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const BACKEND: &str = "127.0.0.1:10025";

/// The daemon's `[proxy]` section with the header version `proto`.
fn proxy_section(proto: &str) -> String {
    proxy_section_with(proto, 2, "")
}

/// [`proxy_section`] with `max_per_client` and `extra` lines.
fn proxy_section_with(proto: &str, max_per_client: u32, extra: &str) -> String {
    format!(
        "[proxy]\n\
         listen = [\"192.0.2.1:25\", \"[2001:db8::1]:25\"]\n\
         backends = [\"{BACKEND}\"]\n\
         proxy_protocol = \"{proto}\"\n\
         hostname = \"mx.test\"\n\
         connect_timeout = 2\n\
         shutdown_timeout = 1\n\
         max_per_client = {max_per_client}\n\
         {extra}"
    )
}

/// One message from `src` through the proxy, SMTP spoken line by line; returns the
/// conversation.
fn deliver_by_hand(lab: &Lab, src: IpAddr) -> String {
    let s = connect(lab, src);
    let mut r = BufReader::new(&s);
    let mut w = &s;
    let mut talk = String::new();
    // Reads one (possibly multi-line) reply into the transcript.
    let reply = |r: &mut BufReader<&TcpStream>, talk: &mut String| loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            talk.push_str("<closed>\n");
            return;
        }
        talk.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return;
        }
    };
    reply(&mut r, &mut talk);
    for cmd in [
        "EHLO client.test",
        "MAIL FROM:<sender@client.test>",
        "RCPT TO:<user@sink.test>",
        "DATA",
        "Subject: v6\r\n\r\nhello\r\n.",
        "QUIT",
    ] {
        talk.push_str(&format!("> {cmd}\n"));
        if w.write_all(format!("{cmd}\r\n").as_bytes()).is_err() {
            break;
        }
        reply(&mut r, &mut talk);
    }
    talk
}

#[test]
fn proxy_in_front_of_postfix() {
    require_root();
    let lab = Lab::new();
    let postfix = Postfix::start(&lab.mx, BACKEND);
    let mut postfix = postfix;
    let mut d = Daemon::start_new(&lab.mx, &lab.mx_if, &proxy_section("v2"));
    d.cli_ok(&["block", "add", &BLOCKED4.to_string(), "--action", "reject"]);
    d.cli_ok(&["block", "add", &TTL4.to_string(), "--action", "tempfail"]);

    // A clean client is relayed; Postfix sees and logs its real address (v4 with swaks; v6
    // by hand, Debian's swaks lacks IO::Socket::INET6).
    for src in [IpAddr::V4(CLEAN4), IpAddr::V6(CLEAN6)] {
        let out = if src.is_ipv4() {
            swaks(&lab, src)
        } else {
            deliver_by_hand(&lab, src)
        };
        assert!(
            out.contains("250 2.0.0 Ok: queued as"),
            "{src}: {out}\npostfix:\n{}\ndaemon:\n{}",
            postfix.log(),
            d.log()
        );
        assert!(
            postfix.wait_log(
                &format!("connect from unknown[{src}]"),
                Duration::from_secs(10)
            ),
            "postfix did not log {src}:\n{}",
            postfix.log()
        );
    }

    // A reject verdict: 554 from the proxy, and Postfix never hears of the client.
    let out = swaks(&lab, IpAddr::V4(BLOCKED4));
    assert!(out.contains("554 5.7.1 mx.test"), "{out}");
    assert!(out.contains("(cli)"), "the reply names the list: {out}");
    // A tempfail verdict: 421.
    let out = swaks(&lab, IpAddr::V4(TTL4));
    assert!(out.contains("421 4.7.0 mx.test"), "{out}");

    // Per-client limit: two sessions from one address are relayed, the third is refused,
    // another address is not affected.
    let (_a, l1) = first_line(&lab, IpAddr::V4(CLEAN4));
    let (_b, l2) = first_line(&lab, IpAddr::V4(CLEAN4));
    assert!(l1.starts_with("220 backend.test"), "{l1}");
    assert!(l2.starts_with("220 backend.test"), "{l2}");
    let (_c, l3) = first_line(&lab, IpAddr::V4(CLEAN4));
    assert!(
        l3.starts_with("421 4.7.0 "),
        "third session from one client: {l3}"
    );
    let (_e, l4) = first_line(&lab, IpAddr::V4(BIG4));
    assert!(l4.starts_with("220 backend.test"), "another client: {l4}");
    drop((_a, _b, _c, _e));

    let log = postfix.log();
    for refused in [BLOCKED4, TTL4] {
        assert!(
            !log.contains(&format!("[{refused}]")),
            "postfix saw refused client {refused}:\n{log}"
        );
    }

    // Counted by verdict (the metrics start again with the restart below).
    let m = d.metrics_text();
    assert_eq!(
        metric(&m, "prefilter_proxy_connections_total{verdict=\"reject\"}"),
        1
    );
    assert_eq!(
        metric(
            &m,
            "prefilter_proxy_connections_total{verdict=\"tempfail\"}"
        ),
        1
    );
    assert_eq!(
        metric(&m, "prefilter_proxy_connections_total{verdict=\"limit\"}"),
        1
    );
    // SIGTERM with a session open: the proxy stops accepting, the session is closed after
    // shutdown_timeout and logged; the daemon exits cleanly.
    let (held, banner) = first_line(&lab, IpAddr::V4(BIG4));
    assert!(banner.starts_with("220 backend.test"), "{banner}");
    d.terminate();
    let mut rest = String::new();
    let _ = BufReader::new(&held).read_line(&mut rest);
    assert_eq!(rest, "", "the held session was not closed");
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("proxy session") && l.contains("end=shutdown")),
        "no session ended by the stop:\n{}",
        d.log()
    );

    // PROXY protocol v1 to the same Postfix works as well.
    d.write_config(&d.config_text(prefilter_tests::daemon::DEFAULT_XDP, &proxy_section("v1")));
    d.start();
    let seen = postfix
        .log()
        .matches("connect from unknown[192.0.2.2]")
        .count();
    let out = swaks(&lab, IpAddr::V4(CLEAN4));
    assert!(out.contains("250 2.0.0 Ok: queued as"), "v1: {out}");
    assert!(
        prefilter_tests::daemon::poll(Duration::from_secs(10), || {
            (postfix
                .log()
                .matches("connect from unknown[192.0.2.2]")
                .count()
                > seen)
                .then_some(())
        })
        .is_some(),
        "postfix did not log the v1 client:\n{}",
        postfix.log()
    );

    // The backend stopped: 421 4.4.2 comes (within the connect timeout, not timed here).
    postfix.stop();
    let out = swaks(&lab, IpAddr::V4(CLEAN4));
    assert!(out.contains("421 4.4.2 mx.test"), "{out}");

    let m = d.metrics_text();
    assert!(metric(&m, "prefilter_proxy_backend_errors_total") >= 1);
    // Every session ends (the last one a moment after swaks closed its side).
    assert!(
        prefilter_tests::daemon::poll(Duration::from_secs(10), || {
            (metric(&d.metrics_text(), "prefilter_proxy_active_sessions") == 0).then_some(())
        })
        .is_some(),
        "sessions left open"
    );
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("proxy session") && l.contains("198.51.100.7")),
        "no session line for the rejected client:\n{log}"
    );
}

/// The queue id in swaks' output (`250 2.0.0 Ok: queued as X`).
fn queue_id(out: &str) -> String {
    let at = out.find("queued as ").expect("a queued-as reply") + "queued as ".len();
    out[at..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

#[test]
fn reject_at_rcpt_logs_the_envelope_and_queue_ids_join_the_logs() {
    require_root();
    let lab = Lab::new();
    let postfix = Postfix::start(&lab.mx, BACKEND);
    let d = Daemon::start_new(
        &lab.mx,
        &lab.mx_if,
        &proxy_section_with("v2", 2, "reject_at = \"rcpt\"\n"),
    );
    d.cli_ok(&["block", "add", &BLOCKED4.to_string(), "--action", "reject"]);

    // A rejected client is greeted, then every recipient is refused; the session line
    // names the envelope that a list would have refused.
    let out = swaks_with(
        &lab,
        IpAddr::V4(BLOCKED4),
        &["--to", "first@sink.test,second@sink.test"],
    );
    assert!(out.contains("220 mx.test ESMTP"), "{out}");
    assert_eq!(
        out.matches("550 5.7.1 Service unavailable; client [198.51.100.7] blocked (cli)")
            .count(),
        2,
        "one 550 per recipient: {out}"
    );
    let line = wait_session(
        &d,
        IpAddr::V4(BLOCKED4),
        &[
            "verdict=reject",
            "helo=client.test",
            "mail_from=<sender@client.test>",
            "rcpt_to=<first@sink.test>,<second@sink.test>",
        ],
    );
    assert!(line.contains("backend=-"), "{line}");

    // A clean client delivers; the queue id Postfix gave is in the session line, and the
    // same id is in Postfix's log with the client's real address.
    let out = swaks(&lab, IpAddr::V4(CLEAN4));
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    let qid = queue_id(&out);
    wait_session(
        &d,
        IpAddr::V4(CLEAN4),
        &[&format!("queue_id={qid}"), "verdict=pass"],
    );
    assert!(
        postfix.wait_log(
            &format!("{qid}: client=unknown[192.0.2.2]"),
            Duration::from_secs(10)
        ),
        "postfix has no {qid} from the client:\n{}",
        postfix.log()
    );
    assert!(
        !postfix.log().contains("[198.51.100.7]"),
        "postfix saw the rejected client:\n{}",
        postfix.log()
    );
}

#[test]
fn pregreet_violators_are_caught_and_learned() {
    require_root();
    let lab = Lab::new();
    let postfix = Postfix::start(&lab.mx, BACKEND);
    let d = Daemon::start_new(
        &lab.mx,
        &lab.mx_if,
        &proxy_section_with("v2", 2, "greet_wait = \"1s\"\ngreet_ttl = \"10m\"\n"),
    );

    // A well-behaved client waits for the whole greeting, then delivers.
    let out = swaks(&lab, IpAddr::V4(CLEAN4));
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    assert!(
        out.contains("220-mx.test ESMTP") && out.contains("220 backend.test ESMTP"),
        "one multi-line greeting, ours then Postfix's: {out}"
    );

    // A bot talks first: refused, never relayed.
    let s = connect(&lab, IpAddr::V4(BIG4));
    (&s).write_all(b"EHLO bot.test\r\n").unwrap();
    let mut got = String::new();
    let _ = std::io::Read::read_to_string(&mut &s, &mut got);
    assert!(
        got.starts_with("220-mx.test ESMTP\r\n554 5.7.1 mx.test"),
        "{got}"
    );
    wait_session(
        &d,
        IpAddr::V4(BIG4),
        &[
            "verdict=pregreet",
            "end=pregreet: talked before the greeting",
        ],
    );
    // Its next connection meets the learned verdict at once.
    let (_s, line) = first_line(&lab, IpAddr::V4(BIG4));
    assert!(line.starts_with("554 5.7.1 mx.test"), "{line}");
    assert!(line.contains("(dynamic)"), "{line}");
    let check = d.check(&BIG4.to_string());
    assert!(
        check.to_string().contains("dynamic"),
        "check does not show the learned verdict: {check}"
    );
    // check says what taught it and when it ends.
    let text = d.cli_ok(&["check", &BIG4.to_string()]);
    assert!(
        text.contains("learned from pregreet") && text.contains("expires in"),
        "check does not explain the learned verdict: {text}"
    );
    assert!(
        !postfix.log().contains("[198.51.100.77]"),
        "postfix saw the violator:\n{}",
        postfix.log()
    );

    // The proxy's metrics, live.
    let m = d.metrics_text();
    assert_eq!(metric(&m, "prefilter_proxy_pregreet_violations_total"), 1);
    assert_eq!(
        metric(
            &m,
            "prefilter_proxy_connections_total{verdict=\"pregreet\"}"
        ),
        1
    );
    assert_eq!(
        metric(&m, "prefilter_proxy_connections_total{verdict=\"pass\"}"),
        1
    );
    assert!(metric(&m, "prefilter_proxy_bytes_total{direction=\"in\"}") > 0);
    assert!(metric(&m, "prefilter_proxy_bytes_total{direction=\"out\"}") > 0);
    assert_eq!(
        metric(
            &m,
            "prefilter_proxy_backend_up{backend=\"127.0.0.1:10025\"}"
        ),
        1
    );
    assert!(metric(&m, "prefilter_proxy_backend_connect_seconds_count") >= 1);
    assert!(m.contains("prefilter_proxy_active_sessions "), "{m}");
    assert!(
        d.log().contains("open files limit"),
        "RLIMIT_NOFILE not logged:\n{}",
        d.log()
    );

    // An admin lifts the learned verdict where lists are edited: block del.
    let out = d.cli_ok(&["block", "del", &BIG4.to_string()]);
    assert!(
        out.contains("learned"),
        "block del says what it lifted: {out}"
    );
    assert!(
        d.check(&BIG4.to_string())["dynamic"].is_null(),
        "still a dynamic verdict after block del"
    );
    let (_s, line) = first_line(&lab, IpAddr::V4(BIG4));
    assert!(line.starts_with("220-mx.test"), "greeted again: {line}");
}

#[test]
fn hostile_clients_end_their_own_sessions_and_memory_stays_flat() {
    require_root();
    let lab = Lab::new();
    let postfix = Postfix::start(&lab.mx, BACKEND);
    let d = Daemon::start_new(
        &lab.mx,
        &lab.mx_if,
        &proxy_section_with("v2", 100, "idle_timeout = 2\n"),
    );
    let payloads: [(&str, Vec<u8>); 5] = [
        (
            "bad input: command line over 1000 bytes",
            vec![b'A'; 64 * 1024],
        ),
        (
            "bad input: binary data in a command",
            b"EHLO \0\x01\x02\x03\r\n".to_vec(),
        ),
        (
            "bad input: PROXY header from the client",
            b"PROXY TCP4 203.0.113.1 192.0.2.1 1 25\r\n".to_vec(),
        ),
        (
            "bad input: PROXY header from the client",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c".to_vec(),
        ),
        // Never sends a byte: the idle timeout ends it.
        ("idle timeout", Vec::new()),
    ];
    let round = || {
        std::thread::scope(|sc| {
            for _ in 0..8 {
                for (_, p) in &payloads {
                    sc.spawn(|| {
                        let s = connect(&lab, IpAddr::V4(BIG4));
                        let mut r = BufReader::new(&s);
                        let mut greet = String::new();
                        r.read_line(&mut greet).unwrap();
                        assert!(greet.starts_with("220 "), "{greet}");
                        // The proxy may close before all of it is written.
                        let _ = (&s).write_all(p);
                        // Closed by the proxy within its bounds (read times out after 20s).
                        let mut rest = Vec::new();
                        match std::io::Read::read_to_end(&mut r, &mut rest) {
                            Ok(_) => {}
                            Err(e) => assert_ne!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock,
                                "a hostile session was left open"
                            ),
                        }
                    });
                }
            }
        });
    };
    round();
    let base = d.rss_kib();
    for _ in 0..6 {
        round();
        // Meanwhile a clean client still delivers.
        let out = swaks(&lab, IpAddr::V4(CLEAN4));
        assert!(
            out.contains("250 2.0.0 Ok: queued as"),
            "{out}\n{}",
            postfix.log()
        );
    }
    let end = d.rss_kib();
    eprintln!("daemon RSS after the first round {base} KiB, after six more {end} KiB");
    assert!(
        end <= base + 4096,
        "RSS grew from {base} KiB to {end} KiB over 240 hostile sessions"
    );
    let log = d.log();
    for (why, _) in &payloads {
        assert!(
            log.lines()
                .any(|l| l.contains("proxy session") && l.contains(&format!("end={why}"))),
            "no session ended with {why:?}:\n{log}"
        );
    }
    assert!(
        prefilter_tests::daemon::poll(Duration::from_secs(10), || {
            (metric(&d.metrics_text(), "prefilter_proxy_active_sessions") == 0).then_some(())
        })
        .is_some(),
        "sessions left open"
    );
}

#[test]
fn starttls_and_implicit_tls_pass_through_to_postfix() {
    require_root();
    let lab = Lab::new();
    let postfix = Postfix::start_tls(&lab.mx, BACKEND, "127.0.0.1:10465");
    let d = Daemon::start_new(
        &lab.mx,
        &lab.mx_if,
        &proxy_section_with(
            "v2",
            2,
            "smtps_listen = [\"192.0.2.1:465\"]\nsmtps_backends = [\"127.0.0.1:10465\"]\n",
        ),
    );
    // STARTTLS on port 25: Postfix terminates TLS (its certificate, its log) and delivers.
    let out = swaks_with(&lab, IpAddr::V4(CLEAN4), &["--tls"]);
    assert!(out.contains("220 2.0.0 Ready to start TLS"), "{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    let qid = queue_id(&out);
    wait_session(
        &d,
        IpAddr::V4(CLEAN4),
        &["queue_id=-", "backend=127.0.0.1:10025"],
    );
    assert!(
        postfix.wait_log(
            "Anonymous TLS connection established from unknown[192.0.2.2]",
            Duration::from_secs(10)
        ) || postfix.wait_log(
            "TLS connection established from unknown[192.0.2.2]",
            Duration::from_secs(1)
        ),
        "postfix did not terminate TLS for the client:\n{}",
        postfix.log()
    );
    assert!(
        postfix.wait_log(
            &format!("{qid}: client=unknown[192.0.2.2]"),
            Duration::from_secs(10)
        ),
        "{}",
        postfix.log()
    );

    // Implicit TLS on 465, to Postfix's smtps service.
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab.client.name, "swaks"])
        .args(["--server", &MX4.to_string(), "--port", "465", "--tlsc"])
        .args(["--local-interface", &CLEAN4.to_string()])
        .args(["--from", "sender@client.test", "--to", "user@sink.test"])
        .args(["--helo", "client.test", "--timeout", "20"]);
    let out = run_bounded(c, Duration::from_secs(60)).both();
    assert!(
        out.contains("250 2.0.0 Ok: queued as"),
        "{out}\npostfix:\n{}\ndaemon:\n{}\nmaster.cf:\n{}",
        postfix.log(),
        d.log(),
        std::fs::read_to_string(postfix.conf_dir().join("master.cf")).unwrap_or_default()
    );
    let qid = queue_id(&out);
    assert!(
        postfix.wait_log(
            &format!("{qid}: client=unknown[192.0.2.2]"),
            Duration::from_secs(10)
        ),
        "{}",
        postfix.log()
    );
    // A refused client on the TLS port is closed without a byte and never reaches Postfix.
    d.cli_ok(&["block", "add", &BLOCKED4.to_string(), "--action", "reject"]);
    let s = in_netns(&lab.client.name, || {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        sock.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(BLOCKED4), 0)))
            .unwrap();
        sock.connect_timeout(
            &SocketAddr::new(IpAddr::V4(MX4), 465).into(),
            Duration::from_secs(5),
        )
        .unwrap();
        TcpStream::from(sock)
    });
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &s, &mut got);
    assert!(got.is_empty(), "plain text on the TLS port: {got:?}");
    wait_session(
        &d,
        IpAddr::V4(BLOCKED4),
        &["end=refused: closed (implicit TLS)"],
    );
    assert!(
        !postfix.log().contains("[198.51.100.7]"),
        "{}",
        postfix.log()
    );
}

/// A sink backend in a namespace: reads the PROXY v2 header, greets, answers QUIT, closes
/// at EOF. Runs on its own thread (a tokio runtime inside the namespace) until dropped.
struct Sink {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start(netns: &str, addr: SocketAddr) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let netns = netns.to_owned();
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(format!("/run/netns/{netns}")).expect("netns");
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {netns}");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .expect("sink bind");
                ready_tx.send(()).unwrap();
                let serve = async {
                    loop {
                        let Ok((mut s, _)) = l.accept().await else {
                            continue;
                        };
                        tokio::spawn(async move {
                            let mut hdr = [0u8; 16];
                            if s.read_exact(&mut hdr).await.is_err() {
                                return;
                            }
                            let mut rest = vec![0u8; u16::from_be_bytes([hdr[14], hdr[15]]).into()];
                            if s.read_exact(&mut rest).await.is_err()
                                || s.write_all(b"220 sink.test ESMTP\r\n").await.is_err()
                            {
                                return;
                            }
                            let (r, mut w) = s.split();
                            let mut lines = tokio::io::BufReader::new(r).take(64 * 1024).lines();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l.eq_ignore_ascii_case("QUIT") {
                                    let _ = w.write_all(b"221 bye\r\n").await;
                                    return;
                                }
                                let _ = w.write_all(b"250 ok\r\n").await;
                            }
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("the sink did not start");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Open descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}

#[test]
fn thousands_of_sessions_none_lost_and_resources_return() {
    require_root();
    const SESSIONS: usize = 3000;
    // Client and sink sockets of this process: raise our own soft limit to the hard one.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then a valid rlimit with soft <= hard.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_cur as usize > 2 * SESSIONS + 500,
        "RLIMIT_NOFILE hard limit {} is too low for {SESSIONS} sessions",
        lim.rlim_cur
    );
    let lab = Lab::new();
    let _sink = Sink::start(&lab.mx.name, BACKEND.parse().unwrap());
    let d = Daemon::start_new(
        &lab.mx,
        &lab.mx_if,
        &proxy_section_with(
            "v2",
            SESSIONS as u32 + 100,
            "max_connections = 4000\nidle_timeout = 60\n",
        ),
    );
    let pid = d.pid();
    // One session first, so lazily made things (metrics, runtime threads) exist before
    // the baseline.
    let (warm, line) = first_line(&lab, IpAddr::V4(CLEAN4));
    assert!(line.starts_with("220 sink.test"), "{line}");
    drop(warm);
    assert!(
        prefilter_tests::daemon::poll(Duration::from_secs(10), || {
            (metric(&d.metrics_text(), "prefilter_proxy_active_sessions") == 0).then_some(())
        })
        .is_some()
    );
    let (fds0, rss0) = (fd_count(pid), d.rss_kib());

    // Every session opened and greeted, all held at once, then each says QUIT and gets
    // its 221; bounded by a timeout on the whole.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let client_ns = lab.client.name.clone();
    let clients = std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/run/netns/{client_ns}")).expect("netns");
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
            let connecting = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..SESSIONS {
                let connecting = connecting.clone();
                let tx = tx.clone();
                let mut go = go_rx.clone();
                set.spawn(async move {
                    let permit = connecting.acquire_owned().await.unwrap();
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    sock.bind(SocketAddr::new(IpAddr::V4(CLEAN4), 0)).unwrap();
                    let mut s = sock
                        .connect(SocketAddr::new(IpAddr::V4(MX4), 25))
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let (r, mut w) = s.split();
                    let mut r = tokio::io::BufReader::new(r);
                    let mut line = String::new();
                    r.read_line(&mut line).await.map_err(|e| e.to_string())?;
                    drop(permit);
                    if !line.starts_with("220 sink.test") {
                        return Err(format!("greeting {line:?}"));
                    }
                    let _ = tx.send(());
                    let _ = go.wait_for(|&g| g).await;
                    w.write_all(b"QUIT\r\n").await.map_err(|e| e.to_string())?;
                    line.clear();
                    r.read_line(&mut line).await.map_err(|e| e.to_string())?;
                    if !line.starts_with("221") {
                        return Err(format!("quit answered {line:?}"));
                    }
                    Ok::<(), String>(())
                });
            }
            let mut errors = Vec::new();
            let all = async {
                while let Some(r) = set.join_next().await {
                    if let Err(e) = r.expect("client task") {
                        errors.push(e);
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(180), all)
                .await
                .map_err(|_| "clients hung".to_owned())?;
            if errors.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} sessions failed, e.g. {:?}",
                    errors.len(),
                    &errors[..1]
                ))
            }
        })
    });
    let started = std::time::Instant::now();
    let mut greeted = 0;
    while greeted < SESSIONS {
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("only {greeted} of {SESSIONS} sessions were greeted"));
        greeted += 1;
    }
    let opened_in = started.elapsed();
    // All held open: the daemon's fds and memory at the peak.
    let (fds_peak, rss_peak) = (fd_count(pid), d.rss_kib());
    let active = metric(&d.metrics_text(), "prefilter_proxy_active_sessions");
    go_tx.send(true).unwrap();
    let r = clients.join().expect("client thread");
    assert_eq!(r, Ok(()));
    assert_eq!(active, SESSIONS as u64, "active sessions at the peak");
    assert!(
        prefilter_tests::daemon::poll(Duration::from_secs(30), || {
            (metric(&d.metrics_text(), "prefilter_proxy_active_sessions") == 0).then_some(())
        })
        .is_some(),
        "sessions left open"
    );
    let m = d.metrics_text();
    assert_eq!(
        metric(&m, "prefilter_proxy_connections_total{verdict=\"pass\"}"),
        SESSIONS as u64 + 1
    );
    // The proxy gives freed memory back once idle (a moment later, off its threads).
    let settled = rss0 + rss_peak.saturating_sub(rss0) / 4 + 1024;
    let _ = prefilter_tests::daemon::poll(Duration::from_secs(10), || {
        (d.rss_kib() <= settled).then_some(())
    });
    let (fds1, rss1) = (fd_count(pid), d.rss_kib());
    eprintln!(
        "{SESSIONS} sessions opened and greeted in {opened_in:?}; daemon fds {fds0} -> peak \
         {fds_peak} -> {fds1}; RSS {rss0} KiB -> peak {rss_peak} KiB ({} KiB per held \
         session) -> {rss1} KiB",
        rss_peak.saturating_sub(rss0) as usize / SESSIONS
    );
    assert!(
        fds_peak + 2 >= fds0 + 2 * SESSIONS,
        "two sockets a session at the peak"
    );
    assert!(
        fds1 <= fds0 + 2,
        "descriptors left behind: {fds0} -> {fds1}"
    );
    // At most a quarter of the peak's growth remains.
    assert!(
        rss1 <= settled,
        "RSS {rss0} KiB -> peak {rss_peak} KiB -> {rss1} KiB after the sessions ended"
    );
}

/// The DNSBL behind the proxy, with a real rbldnsd in the MX namespace: a listed client gets
/// 554 naming the zone and never reaches Postfix, and its next SYN stops in XDP (the
/// listing's `repeat_action` in the dynamic map); a clean client delivers. A client that keeps
/// coming back under an SMTP-level verdict is escalated to an XDP drop.
#[test]
fn dnsbl_listed_clients_get_554_then_stop_in_xdp() {
    use prefilter_tests::rbldnsd::{Rbldnsd, Zone, zone_head};
    require_root();
    let lab = Lab::new();
    let listed = IpAddr::V4(BIG4);
    let rbl = Rbldnsd::start(
        Some(&lab.mx.name),
        &[Zone {
            name: "bl.test",
            kind: "ip4set",
            data: format!("{}{listed}\n", zone_head(300, 60)),
        }],
    );
    let postfix = Postfix::start(&lab.mx, BACKEND);
    let d = Daemon::start_new(
        &lab.mx,
        &lab.mx_if,
        &format!(
            "{}\n[dnsbl]\nsites = [\"bl.test*2\"]\nthreshold = 2\nnameservers = [\"{}\"]\n\
             timeout = 1\nprobe_interval = 3600\n\n[escalation]\nafter = 2\nwithin = 60\nttl = 600\n",
            proxy_section_with("v2", 5, ""),
            rbl.addr
        ),
    );
    let healthy = prefilter_tests::daemon::poll(Duration::from_secs(10), || {
        let st = d.status();
        (st["dnsbl"]["zones"][0]["state"] == "healthy").then_some(())
    });
    assert!(healthy.is_some(), "zone not healthy: {}", d.status());

    let out = swaks(&lab, IpAddr::V4(CLEAN4));
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");

    let out = swaks(&lab, listed);
    assert!(out.contains("554 5.7.1 mx.test"), "{out}\n{}", d.log());
    assert!(out.contains("bl.test"), "the reply names the zone: {out}");
    let line = wait_session(&d, listed, &["verdict=reject", "score=2"]);
    assert!(line.contains("bl.test"), "{line}");
    assert!(
        !postfix.log().contains(&format!("[{listed}]")),
        "Postfix saw the listed client:\n{}",
        postfix.log()
    );
    // The next SYN stops in XDP: repeat_action (drop) for the listing's TTL.
    let dynamic = prefilter_tests::daemon::poll(Duration::from_secs(5), || {
        let c = d.check(&listed.to_string());
        (c["dynamic"]["action"] == "drop").then_some(c)
    });
    assert!(dynamic.is_some(), "{}", d.check(&listed.to_string()));
    let (r, _) = lab.connect(listed, Duration::from_secs(1));
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "the listed client's next SYN was not dropped: {r:?}"
    );

    // Escalation: a tempfail verdict answered again and again (after = 2) becomes a drop.
    d.cli_ok(&["block", "add", &TTL4.to_string(), "--action", "tempfail"]);
    for _ in 0..3 {
        let out = swaks(&lab, IpAddr::V4(TTL4));
        assert!(out.contains("421 4.7.0"), "{out}");
    }
    let escalated = prefilter_tests::daemon::poll(Duration::from_secs(5), || {
        let c = d.check(&TTL4.to_string());
        (c["dynamic"]["action"] == "drop").then_some(())
    });
    assert!(
        escalated.is_some(),
        "not escalated: {}\n{}",
        d.check(&TTL4.to_string()),
        d.log()
    );
    assert!(d.log().contains("escalated to XDP"), "{}", d.log());
    let (r, _) = lab.connect(IpAddr::V4(TTL4), Duration::from_secs(1));
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "the escalated client's SYN was not dropped: {r:?}"
    );
}

/// The total limit: with `max_connections = 3`, a fourth client (another address, under its
/// own per-client limit) gets `421 4.7.0` at once, and a slot freed is a slot again.
#[test]
fn total_limit_holds() {
    require_root();
    let lab = Lab::new();
    let _postfix = Postfix::start(&lab.mx, BACKEND);
    let d = Daemon::start_new(
        &lab.mx,
        &lab.mx_if,
        &proxy_section_with("v2", 5, "max_connections = 3\n"),
    );
    let mut held = Vec::new();
    for src in [CLEAN4, BIG4, TTL4] {
        let (s, l) = first_line(&lab, IpAddr::V4(src));
        assert!(l.starts_with("220 backend.test"), "{src}: {l}");
        held.push(s);
    }
    let fourth = IpAddr::V4(prefilter_tests::daemon::RESET4);
    let (_s, l) = first_line(&lab, fourth);
    assert!(l.starts_with("421 4.7.0 "), "over the total limit: {l}");
    wait_session(&d, fourth, &["verdict=limit"]);
    // One leaves; the next client is relayed again (the slot is freed when the session
    // ends, which the daemon sees within its poll of the closed socket).
    drop(held.pop());
    let again = prefilter_tests::daemon::poll(Duration::from_secs(5), || {
        let (_s, l) = first_line(&lab, fourth);
        l.starts_with("220 backend.test").then_some(())
    });
    assert!(again.is_some(), "a freed slot was not reused:\n{}", d.log());
}
