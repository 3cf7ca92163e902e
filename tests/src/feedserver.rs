//! A small HTTP/1.1 server for feed tests, bound on a loopback address inside a test's
//! namespace: 200 with ETag and Last-Modified (gzip when asked), 304 when the request's
//! validators match, an error status, and a truncated body (Content-Length larger than what
//! is sent, then close). Hand-written on std: no server crate sends a short body on purpose.
//!
//! Every request is recorded (path and headers) so a test can check what the agent sent.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use flate2::{Compression, write::GzEncoder};

/// What a path answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with these validators; 304 when the request carries a matching one.
    Body {
        body: Vec<u8>,
        etag: Option<String>,
        last_modified: Option<String>,
        /// Gzip the body when the request accepts it.
        gzip: bool,
    },
    /// 200 claiming `claimed` bytes, sending only `body`, then closing.
    Truncated { body: Vec<u8>, claimed: usize },
    /// An error status with a short body.
    Status(u16),
}

impl Reply {
    /// A plain 200 with an ETag, gzip allowed.
    pub fn text(body: &str, etag: &str) -> Self {
        Reply::Body {
            body: body.as_bytes().to_vec(),
            etag: Some(format!("\"{etag}\"")),
            last_modified: Some("Mon, 30 Nov 2026 00:00:00 GMT".into()),
            gzip: true,
        }
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The status answered.
    pub status: u16,
    /// Whether the answer was gzip-encoded.
    pub gzipped: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    routes: HashMap<String, Reply>,
    seen: Vec<Seen>,
}

/// The server; stopped and joined on drop.
pub struct FeedServer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Longest a server lives: every test ends long before.
const LIFETIME: Duration = Duration::from_secs(900);

impl FeedServer {
    /// Serves on `listener` (bound by the caller, e.g. in a namespace).
    pub fn start(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("bound listener");
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (shared.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + LIFETIME;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = serve(conn, &s2);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sets what `path` answers from now on.
    pub fn set(&self, path: &str, reply: Reply) {
        self.shared
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), reply);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().unwrap().seen.clone()
    }

    /// The last request for `path`.
    pub fn last(&self, path: &str) -> Option<Seen> {
        self.seen().into_iter().rev().find(|s| s.path == path)
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, shared: &Mutex<Shared>) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    // The request head, bounded.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let reply = shared.lock().unwrap().routes.get(&path).cloned();
    let mut gzipped = false;
    let (status, out): (u16, Vec<u8>) = match reply {
        None => (404, response(404, &[], b"no such feed\n")),
        Some(Reply::Status(code)) => (code, response(code, &[], b"server error\n")),
        Some(Reply::Truncated { body, claimed }) => {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes();
            out.extend_from_slice(&body);
            (200, out)
        }
        Some(Reply::Body {
            body,
            etag,
            last_modified,
            gzip,
        }) => {
            let inm = get("if-none-match");
            let ims = get("if-modified-since");
            let fresh = match (&etag, &inm) {
                // RFC 9110 13.1.3: If-None-Match wins over If-Modified-Since.
                (Some(e), Some(i)) => i.split(',').any(|t| t.trim() == e),
                _ => last_modified.is_some() && ims.is_some() && ims == last_modified,
            };
            let mut h: Vec<(String, String)> = Vec::new();
            if let Some(e) = &etag {
                h.push(("ETag".into(), e.clone()));
            }
            if let Some(m) = &last_modified {
                h.push(("Last-Modified".into(), m.clone()));
            }
            if fresh {
                (304, response(304, &h, b""))
            } else if gzip && get("accept-encoding").is_some_and(|a| a.contains("gzip")) {
                let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
                enc.write_all(&body)?;
                let z = enc.finish()?;
                h.push(("Content-Encoding".into(), "gzip".into()));
                gzipped = true;
                (200, response(200, &h, &z))
            } else {
                (200, response(200, &h, &body))
            }
        }
    };
    shared.lock().unwrap().seen.push(Seen {
        path,
        headers,
        status,
        gzipped,
    });
    conn.write_all(&out)?;
    conn.flush()?;
    // Closing with unread data would reset; the request had no body.
    let _ = conn.shutdown(std::net::Shutdown::Write);
    Ok(())
}

fn response(status: u16, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        304 => "Not Modified",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if status != 304 {
        out.push_str(&format!(
            "Content-Type: text/plain\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}
