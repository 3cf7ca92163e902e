//! The proxy on loopback: a table of verdicts, a backend that records what it reads.

use super::*;
use crate::config::ProxyProtocol;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Verdicts by address (everything else passes), a fixed screen, and what the proxy
/// learned and refused.
#[derive(Default)]
struct Table {
    verdicts: Vec<(IpAddr, Decision)>,
    screen: Screen,
    learned: Mutex<Vec<(IpAddr, Action, String)>>,
    refused: Mutex<Vec<IpAddr>>,
}

fn table(verdicts: Vec<(IpAddr, Decision)>) -> Table {
    Table {
        verdicts,
        ..Table::default()
    }
}

impl Verdicts for Table {
    fn verdict(&self, ip: IpAddr) -> Verdict {
        let decision = self
            .verdicts
            .iter()
            .find(|(a, _)| *a == ip)
            .map_or(Decision::Pass, |(_, d)| *d);
        Verdict {
            decision,
            list: (decision != Decision::Pass).then(|| "testlist".to_owned()),
        }
    }

    fn screen(&self, _client: SocketAddr, _local: SocketAddr) -> ScreenFuture {
        let s = self.screen.clone();
        // Slower than the pregreet wait in the tests: both must run at once.
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s
        })
    }

    fn learn(
        &self,
        ip: IpAddr,
        action: Action,
        _ttl: Duration,
        source: &str,
        _reason: &str,
    ) -> Result<(), String> {
        self.learned
            .lock()
            .unwrap()
            .push((ip, action, source.to_owned()));
        Ok(())
    }

    fn refused(&self, ip: IpAddr) {
        self.refused.lock().unwrap().push(ip);
    }
}

fn config(backend: SocketAddr) -> Config {
    Config {
        listen: vec![],
        backends: vec![Backend {
            host: backend.ip().to_string(),
            port: backend.port(),
        }],
        proxy_protocol: ProxyProtocol::V2,
        hostname: "mx.test".into(),
        tempfail_reply: "421 4.7.0 {hostname} later ({list})".into(),
        reject_reply: "554 5.7.1 {hostname} [{client}] listed ({list})".into(),
        connect_timeout: Duration::from_secs(2),
        backend_greeting_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(30),
        shutdown_timeout: Duration::from_secs(2),
        max_connections: 10,
        max_per_client: 1,
        reject_at: RejectAt::Connect,
        rcpt_reply: "550 5.7.1 [{client}] blocked ({list})".into(),
        greet_wait: None,
        greet_action: Action::Reject,
        greet_ttl: Duration::from_secs(3600),
        balance: Balance::Order,
        smtps_listen: vec![],
        smtps_backends: vec![],
        backlog: 128,
    }
}

/// A backend that reads the PROXY v2 header, greets, and echoes lines back until EOF; each
/// header it read goes to the channel.
async fn backend() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut hdr = vec![0u8; 16];
                s.read_exact(&mut hdr).await.unwrap();
                let len = u16::from_be_bytes([hdr[14], hdr[15]]) as usize;
                let mut rest = vec![0u8; len];
                s.read_exact(&mut rest).await.unwrap();
                hdr.extend(rest);
                let _ = tx.send(hdr);
                s.write_all(b"220 backend ESMTP\r\n").await.unwrap();
                let (r, mut w) = s.split();
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    w.write_all(format!("250 {l}\r\n").as_bytes())
                        .await
                        .unwrap();
                }
                // The client half-closed: the answer still goes out, then we close.
                w.write_all(b"221 bye\r\n").await.unwrap();
            });
        }
    });
    (addr, rx)
}

/// The proxy on 127.0.0.1:0 with `cfg`; returns its address and the stop switch.
async fn proxy(cfg: Config, verdicts: Table) -> (SocketAddr, watch::Sender<bool>) {
    let (addr, stop, _) = proxy_shared(cfg, Arc::new(verdicts)).await;
    (addr, stop)
}

/// [`proxy`] keeping a handle on the verdicts to see what was learned and refused.
async fn proxy_shared(
    cfg: Config,
    verdicts: Arc<Table>,
) -> (SocketAddr, watch::Sender<bool>, Arc<Table>) {
    let l = bind(&["127.0.0.1:0".parse().unwrap()], 128).unwrap();
    let addr = l[0].local_addr().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(serve(cfg, verdicts.clone(), l, Vec::new(), stop_rx));
    (addr, stop_tx, verdicts)
}

async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy closed the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn passes_with_the_real_address_and_half_close() {
    let (b, mut headers) = backend().await;
    let (p, _stop) = proxy(config(b), table(vec![])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"EHLO client.test\r\n").await.unwrap();
    c.shutdown().await.unwrap();
    let got = read_all(&mut c).await;
    assert_eq!(
        got,
        "220 backend ESMTP\r\n250 EHLO client.test\r\n221 bye\r\n"
    );
    let h = headers.recv().await.unwrap();
    assert_eq!(h, header::build(ProxyProtocol::V2, me, p, b"decision=pass"));
}

#[tokio::test]
async fn refused_clients_never_reach_the_backend() {
    let (b, mut headers) = backend().await;
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    for (d, want) in [
        (
            Decision::Reject,
            "554 5.7.1 mx.test [127.0.0.1] listed (testlist)\r\n",
        ),
        (Decision::Tempfail, "421 4.7.0 mx.test later (testlist)\r\n"),
    ] {
        let (p, _stop) = proxy(config(b), table(vec![(lo, d)])).await;
        let mut c = TcpStream::connect(p).await.unwrap();
        assert_eq!(read_all(&mut c).await, want);
    }
    assert!(
        headers.try_recv().is_err(),
        "the backend saw a refused client"
    );
}

#[tokio::test]
async fn backend_down_gives_421_and_per_client_limit_holds() {
    // A port nobody listens on: refused at once.
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (p, _stop) = proxy(config(gone), table(vec![])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    let got = read_all(&mut c).await;
    assert!(got.starts_with("421 4.4.2 "), "{got}");

    let (b, _headers) = backend().await;
    let (p, _stop) = proxy(config(b), table(vec![])).await;
    let mut first = TcpStream::connect(p).await.unwrap();
    let mut greet = [0u8; 19];
    first.read_exact(&mut greet).await.unwrap();
    assert_eq!(&greet, b"220 backend ESMTP\r\n");
    let mut second = TcpStream::connect(p).await.unwrap();
    let got = read_all(&mut second).await;
    assert!(got.starts_with("421 4.7.0 "), "{got}");
    // The first session is untouched.
    first.write_all(b"NOOP\r\n").await.unwrap();
    let mut line = [0u8; 10];
    first.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"250 NOOP\r\n");
}

#[tokio::test]
async fn stop_ends_sessions_by_the_deadline() {
    let (b, _headers) = backend().await;
    let mut cfg = config(b);
    cfg.shutdown_timeout = Duration::from_secs(1);
    let (p, stop) = proxy(cfg, table(vec![])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    let mut greet = [0u8; 19];
    c.read_exact(&mut greet).await.unwrap();
    stop.send(true).unwrap();
    // The open session is closed after the deadline; no new connection is accepted.
    let rest = read_all(&mut c).await;
    assert_eq!(rest, "");
    let late = tokio::time::timeout(Duration::from_secs(5), async {
        match TcpStream::connect(p).await {
            Err(_) => true,
            Ok(mut s) => {
                let mut b = [0u8; 1];
                matches!(s.read(&mut b).await, Ok(0) | Err(_))
            }
        }
    })
    .await
    .unwrap();
    assert!(late, "a connection after stop was served");
}

#[tokio::test]
async fn total_limit_holds() {
    let (b, _headers) = backend().await;
    let mut cfg = config(b);
    cfg.max_connections = 1;
    cfg.max_per_client = 5;
    let (p, _stop) = proxy(cfg, table(vec![])).await;
    let mut first = TcpStream::connect(p).await.unwrap();
    let mut greet = [0u8; 19];
    first.read_exact(&mut greet).await.unwrap();
    let mut second = TcpStream::connect(p).await.unwrap();
    let got = read_all(&mut second).await;
    assert!(got.starts_with("421 4.7.0 mx.test "), "{got}");
    // The slot comes back when the first session ends.
    drop(first);
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut s = TcpStream::connect(p).await.unwrap();
            let mut line = [0u8; 3];
            if s.read_exact(&mut line).await.is_ok() && &line == b"220" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        again.is_ok(),
        "the slot of a closed session was not given back"
    );
}

#[tokio::test]
async fn a_failed_backend_is_skipped_and_marked_down() {
    let gone = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (b, mut headers) = backend().await;
    let mut cfg = config(b);
    cfg.max_per_client = 5;
    cfg.backends.insert(
        0,
        Backend {
            host: gone.ip().to_string(),
            port: gone.port(),
        },
    );
    let errors = BACKEND_ERRORS.get();
    let (p, _stop) = proxy(cfg, table(vec![])).await;
    for _ in 0..3 {
        let mut c = TcpStream::connect(p).await.unwrap();
        let mut greet = [0u8; 19];
        c.read_exact(&mut greet).await.unwrap();
        assert_eq!(&greet, b"220 backend ESMTP\r\n");
        assert!(headers.recv().await.is_some());
    }
    // Tried once, then left alone during its backoff (other tests may add their own).
    let added = BACKEND_ERRORS.get() - errors;
    assert!(added >= 1, "the failure was not counted");
}

/// A backend that accepts and then hangs up at once (`close`) or holds the connection
/// without reading or writing a byte.
async fn mute_backend(close: bool) -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            if !close {
                held.push(s);
            }
        }
    });
    Backend {
        host: a.ip().to_string(),
        port: a.port(),
    }
}

/// The first 19 bytes the client gets, bounded: a greeting that never comes fails.
async fn read_greeting(c: &mut TcpStream) -> [u8; 19] {
    let mut greet = [0u8; 19];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut greet))
        .await
        .expect("no greeting")
        .expect("closed before a greeting");
    greet
}

/// `mute_backend(close)` first, the echo backend second: the client must be greeted by
/// the second, which gets the client's PROXY header.
async fn the_second_backend_greets(close: bool) {
    let (b, mut headers) = backend().await;
    let mut cfg = config(b);
    cfg.backend_greeting_timeout = Duration::from_millis(300);
    cfg.backends.insert(0, mute_backend(close).await);
    let (p, _stop) = proxy(cfg, table(vec![])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    let me = c.local_addr().unwrap();
    assert_eq!(&read_greeting(&mut c).await, b"220 backend ESMTP\r\n");
    let h = tokio::time::timeout(Duration::from_secs(5), headers.recv())
        .await
        .expect("no PROXY header at the second backend")
        .unwrap();
    assert_eq!(h, header::build(ProxyProtocol::V2, me, p, b"decision=pass"));
}

#[tokio::test]
async fn a_silent_backend_is_skipped_for_the_next() {
    the_second_backend_greets(false).await;
}

#[tokio::test]
async fn a_backend_that_closes_at_once_is_skipped_for_the_next() {
    the_second_backend_greets(true).await;
}

#[tokio::test]
async fn only_silent_backends_give_421_4_4_2_and_close() {
    let mut cfg = config("127.0.0.1:1".parse().unwrap());
    cfg.backend_greeting_timeout = Duration::from_millis(300);
    cfg.backends = vec![mute_backend(false).await, mute_backend(false).await];
    let (p, _stop) = proxy(cfg, table(vec![])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    // Bounded well below idle_timeout (30 s): a relay to a silent backend never ends here.
    let got = read_all(&mut c).await;
    assert!(got.starts_with("421 4.4.2 "), "{got:?}");
}

#[tokio::test]
async fn a_lone_crlf_mid_session_is_relayed_at_once() {
    let (b, _headers) = backend().await;
    let (p, _stop) = proxy(config(b), table(vec![])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    c.set_nodelay(true).unwrap();
    read_greeting(&mut c).await;
    // The line end in a segment of its own: "\r\n" alone is also how a PROXY v2
    // signature starts, which only matters at the stream's start.
    c.write_all(b"EHLO split.test").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.write_all(b"\r\n").await.unwrap();
    let mut echo = [0u8; 21];
    tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut echo))
        .await
        .expect("the line end was held back")
        .unwrap();
    assert_eq!(&echo, b"250 EHLO split.test\r\n");
}

#[tokio::test]
async fn an_allowlisted_client_is_exempt_from_max_per_client() {
    let (b, _headers) = backend().await;
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let cfg = config(b);
    assert_eq!(cfg.max_per_client, 1);
    let (p, _stop) = proxy(cfg, table(vec![(lo, Decision::Allow)])).await;
    let mut first = TcpStream::connect(p).await.unwrap();
    assert_eq!(&read_greeting(&mut first).await, b"220 backend ESMTP\r\n");
    // The first session still open: a second one over the limit is served too.
    let mut second = TcpStream::connect(p).await.unwrap();
    assert_eq!(&read_greeting(&mut second).await, b"220 backend ESMTP\r\n");
    drop(first);
}

/// Sends each line and reads one reply line for it; returns the replies.
async fn converse(c: &mut TcpStream, lines: &[&str]) -> Vec<String> {
    let (r, mut w) = c.split();
    let mut r = BufReader::new(r);
    let mut out = Vec::new();
    for l in lines {
        w.write_all(format!("{l}\r\n").as_bytes()).await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut reply))
            .await
            .unwrap()
            .unwrap();
        out.push(reply);
    }
    out
}

#[tokio::test]
async fn reject_at_rcpt_refuses_every_recipient_and_never_reaches_the_backend() {
    let (b, mut headers) = backend().await;
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let mut cfg = config(b);
    cfg.reject_at = RejectAt::Rcpt;
    let (p, _stop, t) = proxy_shared(cfg, Arc::new(table(vec![(lo, Decision::Reject)]))).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    let mut greet = [0u8; 19];
    c.read_exact(&mut greet).await.unwrap();
    assert_eq!(&greet, b"220 mx.test ESMTP\r\n");
    let got = converse(
        &mut c,
        &[
            "EHLO bot.test",
            "MAIL FROM:<spam@bot.test>",
            "RCPT TO:<a@sink.test>",
            "rcpt to:<b@sink.test>",
            "DATA",
            "NOOP",
            "QUIT",
        ],
    )
    .await;
    let want = [
        "250 mx.test\r\n",
        "250 2.1.0 Ok\r\n",
        "550 5.7.1 [127.0.0.1] blocked (testlist)\r\n",
        "550 5.7.1 [127.0.0.1] blocked (testlist)\r\n",
        "554 5.5.1 Error: no valid recipients\r\n",
        "250 2.0.0 Ok\r\n",
        "221 2.0.0 Bye\r\n",
    ];
    assert_eq!(got, want);
    assert_eq!(read_all(&mut c).await, "");
    assert!(
        headers.try_recv().is_err(),
        "the backend saw a rejected client"
    );
    assert_eq!(*t.refused.lock().unwrap(), vec![lo]);
}

#[tokio::test]
async fn dialogue_is_bounded() {
    let (b, _headers) = backend().await;
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let mut cfg = config(b);
    cfg.reject_at = RejectAt::Rcpt;
    cfg.max_per_client = 10;
    let (p, _stop) = proxy(cfg, table(vec![(lo, Decision::Reject)])).await;
    // An overlong line ends the session.
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(&[b'A'; 5000]).await.unwrap();
    let got = read_all(&mut c).await;
    assert!(got.ends_with("500 5.5.2 Error: bad input\r\n"), "{got}");
    // Binary data ends the session.
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"EHLO \0\x01\x02\r\n").await.unwrap();
    let got = read_all(&mut c).await;
    assert!(got.ends_with("500 5.5.2 Error: bad input\r\n"), "{got}");
    // More commands than allowed: 421 and closed.
    let mut c = TcpStream::connect(p).await.unwrap();
    let many = "NOOP\r\n".repeat(smtp::MAX_COMMANDS as usize + 5);
    c.write_all(many.as_bytes()).await.unwrap();
    let got = read_all(&mut c).await;
    assert_eq!(
        got.matches("250 2.0.0 Ok").count(),
        smtp::MAX_COMMANDS as usize
    );
    assert!(got.ends_with("421 4.7.0 Too many commands\r\n"), "{got}");
}

#[tokio::test]
async fn pregreet_violator_is_refused_and_learned() {
    let (b, mut headers) = backend().await;
    let mut cfg = config(b);
    cfg.greet_wait = Some(Duration::from_millis(500));
    let (p, _stop, t) = proxy_shared(cfg, Arc::new(table(vec![]))).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"EHLO bot.test\r\n").await.unwrap();
    let got = read_all(&mut c).await;
    assert_eq!(
        got,
        "220-mx.test ESMTP\r\n554 5.7.1 mx.test [127.0.0.1] listed (pregreet)\r\n"
    );
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(
        *t.learned.lock().unwrap(),
        vec![(lo, Action::Reject, "pregreet".to_owned())]
    );
    assert!(headers.try_recv().is_err(), "the backend saw a violator");
}

#[tokio::test]
async fn pregreet_then_the_backends_greeting_completes_one_reply() {
    let (b, mut headers) = backend().await;
    let mut cfg = config(b);
    cfg.greet_wait = Some(Duration::from_millis(50));
    let (p, _stop, t) = proxy_shared(
        cfg,
        Arc::new(Table {
            screen: Screen {
                decision: None,
                score: 1,
                listed: vec!["bl.example.org".into()],
            },
            ..Table::default()
        }),
    )
    .await;
    let mut c = TcpStream::connect(p).await.unwrap();
    let (r, _w) = c.split();
    let mut r = BufReader::new(r);
    let mut greeting = String::new();
    for _ in 0..2 {
        r.read_line(&mut greeting).await.unwrap();
    }
    assert_eq!(greeting, "220-mx.test ESMTP\r\n220 backend ESMTP\r\n");
    // The screen's result travels to the backend in the verdict TLV.
    let h = headers.recv().await.unwrap();
    let parsed = ppp::v2::Header::try_from(&h[..]).unwrap();
    let tlv = parsed.tlvs().next().unwrap().unwrap();
    assert_eq!(tlv.kind, header::VERDICT_TLV);
    assert_eq!(
        &tlv.value[..],
        b"decision=pass;score=1;listed=bl.example.org"
    );
    assert!(t.learned.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_screen_can_refuse() {
    let (b, mut headers) = backend().await;
    let (p, _stop, t) = proxy_shared(
        config(b),
        Arc::new(Table {
            screen: Screen {
                decision: Some(Decision::Tempfail),
                score: 5,
                listed: vec!["zen.example.org".into()],
            },
            ..Table::default()
        }),
    )
    .await;
    let mut c = TcpStream::connect(p).await.unwrap();
    assert!(
        read_all(&mut c)
            .await
            .starts_with("421 4.7.0 mx.test later")
    );
    assert!(headers.try_recv().is_err());
    assert_eq!(t.refused.lock().unwrap().len(), 1);
    // Refused after a pregreet 220-: the greeting completes, the first command is refused.
    let (b, _headers) = backend().await;
    let mut cfg = config(b);
    cfg.greet_wait = Some(Duration::from_millis(50));
    let (p, _stop, _t) = proxy_shared(
        cfg,
        Arc::new(Table {
            screen: Screen {
                decision: Some(Decision::Reject),
                ..Screen::default()
            },
            ..Table::default()
        }),
    )
    .await;
    let mut c = TcpStream::connect(p).await.unwrap();
    let mut greet = [0u8; 38];
    c.read_exact(&mut greet).await.unwrap();
    assert_eq!(&greet, b"220-mx.test ESMTP\r\n220 mx.test ESMTP\r\n");
    let got = converse(&mut c, &["EHLO x.test"]).await;
    assert!(got[0].starts_with("554 5.7.1 "), "{got:?}");
}

#[tokio::test]
async fn hostile_input_ends_the_session_and_is_not_relayed() {
    for (what, bytes) in [
        (
            "v1 header",
            b"PROXY TCP4 203.0.113.1 192.0.2.1 1 25\r\n".to_vec(),
        ),
        ("v2 header", b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c".to_vec()),
        ("overlong line", [&[b'A'; 3000][..], b"\r\n"].concat()),
        ("binary", b"EHLO \x1b[31m\r\n".to_vec()),
    ] {
        let (b, mut headers) = backend().await;
        let (p, _stop) = proxy(config(b), table(vec![])).await;
        let mut c = TcpStream::connect(p).await.unwrap();
        let mut greet = [0u8; 19];
        c.read_exact(&mut greet).await.unwrap();
        // Sent in pieces: the guard must not be fooled by a split.
        let (a, z) = bytes.split_at(3);
        c.write_all(a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.write_all(z).await.unwrap();
        let rest = read_all(&mut c).await;
        // The echo backend answers every line it gets: nothing reached it.
        assert_eq!(rest, "", "{what}: the backend answered {rest:?}");
        assert!(headers.recv().await.is_some());
    }
}

#[tokio::test]
async fn round_robin_takes_turns() {
    let (b1, mut h1) = backend().await;
    let (b2, mut h2) = backend().await;
    let mut cfg = config(b1);
    cfg.max_per_client = 10;
    cfg.balance = Balance::RoundRobin;
    cfg.backends.push(Backend {
        host: b2.ip().to_string(),
        port: b2.port(),
    });
    let (p, _stop) = proxy(cfg, table(vec![])).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(p).await.unwrap();
        let mut greet = [0u8; 19];
        c.read_exact(&mut greet).await.unwrap();
        held.push(c);
    }
    let count = |h: &mut mpsc::UnboundedReceiver<Vec<u8>>| {
        let mut n = 0;
        while h.try_recv().is_ok() {
            n += 1;
        }
        n
    };
    assert_eq!((count(&mut h1), count(&mut h2)), (2, 2));
}

#[test]
fn guard_cases() {
    struct Case {
        /// An implicit TLS listener's stream.
        tls: bool,
        input: &'static [&'static [u8]],
        expected: Result<(), smtp::Bad>,
    }
    let plain = |input, expected| Case {
        tls: false,
        input,
        expected,
    };
    let cases = [
        plain(&[b"EHLO a\r\nMAIL FROM:<a@b>\r\n"], Ok(())),
        // Message content is not judged, commands after the dot are again.
        plain(
            &[b"DATA\r\n", b"\x01\x02 binary body\r\n.\r\n", b"QUIT\r\n"],
            Ok(()),
        ),
        plain(
            &[b"DATA\r\n", b"body\r\n.\r\n", b"NOOP \x01\r\n"],
            Err(smtp::Bad::Binary),
        ),
        // STARTTLS answered 220: the client's handshake follows, opaque from then on.
        plain(&[b"STARTTLS\r\n", b"\x16\x03\x01\0\0"], Ok(())),
        // STARTTLS refused: the client goes on in plain text, judged as before.
        plain(
            &[b"STARTTLS\r\n", b"NOOP\r\n", b"\0", &[b'x'; 5000]],
            Err(smtp::Bad::Binary),
        ),
        plain(
            &[b"STARTTLS\r\n", b"NOOP\r\n", &[b'x'; 5000]],
            Err(smtp::Bad::LongLine),
        ),
        // A BDAT chunk is skipped by its size, binary or not, split across reads or not;
        // the next command is judged again.
        plain(
            &[
                b"BDAT 6\r\n\x01\x02",
                b"\r\n\x03\0",
                b"BDAT 2 LAST\r\n\0\0QUIT\r\n",
            ],
            Ok(()),
        ),
        plain(
            &[b"BDAT 3 LAST\r\nabcNOOP \x01\r\n"],
            Err(smtp::Bad::Binary),
        ),
        // A BDAT without a usable size leaves what follows to be judged as commands.
        plain(&[b"BDAT lots\r\n\x01"], Err(smtp::Bad::Binary)),
        // A TLS ClientHello on a plain listener is not SMTP.
        plain(&[b"\x16\x03\x01\x02\0\x01\0"], Err(smtp::Bad::Binary)),
        // Implicit TLS: opaque from the first byte.
        Case {
            tls: true,
            input: &[b"\x16\x03\x01\x02\0\x01\0", &[0u8; 3000]],
            expected: Ok(()),
        },
        Case {
            tls: true,
            input: &[b"PROXY TCP4 1 2 3 4\r\n"],
            expected: Err(smtp::Bad::ProxyHeader),
        },
        plain(
            &[b"NOOP", &[b'x'; 600], &[b'x'; 600]],
            Err(smtp::Bad::LongLine),
        ),
        plain(&[b"PROXY TCP4 1 2 3 4\r\n"], Err(smtp::Bad::ProxyHeader)),
    ];
    for c in cases {
        let mut g = smtp::Guard::new(c.tls);
        let got = c.input.iter().try_for_each(|b| g.feed(b));
        assert_eq!(got, c.expected, "{:?}", c.input);
    }
}

#[test]
fn queue_ids_are_found_in_the_backend_stream() {
    let mut w = smtp::QueueWatch::default();
    let mut found = Vec::new();
    for piece in [
        &b"250 2.0.0 Ok: queu"[..],
        b"ed as 4XyzAb12\r\n354 go\r\n",
        b"550 queued as NOPE\r\n250 2.0.0 Ok: queued as C0FFEE\r\n",
    ] {
        w.feed(piece, |id| found.push(id));
    }
    assert_eq!(found, ["4XyzAb12", "C0FFEE"]);
}

#[tokio::test]
async fn implicit_tls_listener_relays_bytes_untouched_and_refuses_by_closing() {
    let (plain, mut plain_headers) = backend().await;
    // The smtps backend: reads the header, then echoes raw bytes back.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut hdr = vec![0u8; 16];
                s.read_exact(&mut hdr).await.unwrap();
                let mut rest = vec![0u8; u16::from_be_bytes([hdr[14], hdr[15]]) as usize];
                s.read_exact(&mut rest).await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let mut cfg = config(plain);
    cfg.smtps_backends = vec![Backend {
        host: tls_backend.ip().to_string(),
        port: tls_backend.port(),
    }];
    cfg.greet_wait = Some(Duration::from_secs(1));
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    for (verdicts, relayed) in [(vec![], true), (vec![(lo, Decision::Reject)], false)] {
        let smtps = bind(&["127.0.0.1:0".parse().unwrap()], 128).unwrap();
        let p = smtps[0].local_addr().unwrap();
        let (_stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(serve(
            cfg.clone(),
            Arc::new(table(verdicts)),
            Vec::new(),
            smtps,
            stop_rx,
        ));
        let mut c = TcpStream::connect(p).await.unwrap();
        // A ClientHello's first bytes, binary: no greeting is waited for, nothing is judged.
        let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00];
        c.write_all(&hello).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut back))
            .await
            .expect("the proxy closed the connection");
        // A refused client is closed with its hello unread: a reset is fine too.
        if let Err(e) = read {
            assert!(
                !relayed && e.kind() == io::ErrorKind::ConnectionReset,
                "{e}"
            );
        }
        if relayed {
            assert_eq!(back, hello);
        } else {
            assert!(
                back.is_empty(),
                "a plain-text reply on a TLS port: {back:?}"
            );
        }
    }
    assert!(plain_headers.try_recv().is_err());
}

#[tokio::test]
async fn a_backend_name_is_looked_up_once_and_again_after_a_failure() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let b = BackendState {
        cfg: Backend {
            host: "localhost".into(),
            port,
        },
        down: Mutex::new(None),
        resolved: Mutex::new(None),
    };
    let cached = || b.resolved.lock().unwrap().as_ref().map(|(at, _)| *at);
    b.connect().await.expect("connect to localhost");
    let first = cached().expect("the name's addresses are kept");
    b.connect().await.expect("connect again");
    assert_eq!(cached(), Some(first), "looked up again within RESOLVED_FOR");
    // Nothing listens any more: the failed connect forgets the addresses.
    drop(listener);
    assert!(b.connect().await.is_err());
    assert_eq!(cached(), None);
}

#[tokio::test]
async fn the_last_reply_of_a_dialogue_survives_pipelined_input() {
    let (b, _headers) = backend().await;
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let mut cfg = config(b);
    cfg.reject_at = RejectAt::Rcpt;
    let (p, _stop) = proxy(cfg, table(vec![(lo, Decision::Reject)])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    // Far more commands than the dialogue answers, all at once: the proxy ends it with
    // input still unread, which without a linger resets the connection and the client's
    // stack drops the replies it had not read yet.
    let flood: String = (0..2000).map(|i| format!("NOOP {i}\r\n")).collect();
    c.write_all(flood.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the dialogue did not end");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.ends_with("421 4.7.0 Too many commands\r\n"),
        "the last reply was lost: ...{}",
        &text[text.len().saturating_sub(200)..]
    );
}
