//! The proxy on loopback: a table of verdicts, a backend that records what it reads.

use super::*;
use crate::config::ProxyProtocol;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Verdicts by address; everything else passes.
struct Table(Vec<(IpAddr, Decision)>);

impl Verdicts for Table {
    fn verdict(&self, ip: IpAddr) -> Verdict {
        let decision = self
            .0
            .iter()
            .find(|(a, _)| *a == ip)
            .map_or(Decision::Pass, |(_, d)| *d);
        Verdict {
            decision,
            list: (decision != Decision::Pass).then(|| "testlist".to_owned()),
        }
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
        idle_timeout: Duration::from_secs(30),
        shutdown_timeout: Duration::from_secs(2),
        max_connections: 10,
        max_per_client: 1,
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
async fn proxy(cfg: Config, table: Table) -> (SocketAddr, watch::Sender<bool>) {
    let l = bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
    let addr = l[0].local_addr().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(serve(cfg, Arc::new(table), l, stop_rx));
    (addr, stop_tx)
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
    let (p, _stop) = proxy(config(b), Table(vec![])).await;
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
    assert_eq!(h, header::build(ProxyProtocol::V2, me, p));
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
        let (p, _stop) = proxy(config(b), Table(vec![(lo, d)])).await;
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
    let (p, _stop) = proxy(config(gone), Table(vec![])).await;
    let mut c = TcpStream::connect(p).await.unwrap();
    let got = read_all(&mut c).await;
    assert!(got.starts_with("421 4.4.2 "), "{got}");

    let (b, _headers) = backend().await;
    let (p, _stop) = proxy(config(b), Table(vec![])).await;
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
    let (p, stop) = proxy(cfg, Table(vec![])).await;
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
    let (p, _stop) = proxy(cfg, Table(vec![])).await;
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
    let (p, _stop) = proxy(cfg, Table(vec![])).await;
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
