//! HTTP/1.1 for the control socket and the metrics endpoint, on hyper, with the bounds a
//! daemon needs against a stuck or hostile client: request head size and read time, body
//! size and deadline, connection count, and a client that stops reading its answer.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming, SizeHint},
    header::{CONTENT_TYPE, HeaderValue},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{Semaphore, mpsc},
    time::Sleep,
};
use tracing::debug;

/// The bounds of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head (request line and headers), also hyper's read buffer.
    pub max_head: usize,
    /// Time to send a request head; also how long an idle keep-alive connection stays.
    pub head_timeout: Duration,
    /// Time to send the whole body, once the head is in.
    pub body_deadline: Duration,
    /// Largest request body.
    pub max_body: usize,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a write may wait on a client that does not read.
    pub write_stall: Duration,
}

/// The control socket: imports of a million lines (about 40 MB) take a while to send.
pub const CONTROL: Limits = Limits {
    max_head: 16 * 1024,
    head_timeout: Duration::from_secs(10),
    body_deadline: Duration::from_secs(60),
    max_body: 128 * 1024 * 1024,
    max_connections: 64,
    write_stall: Duration::from_secs(60),
};

/// The metrics endpoint: a scrape is a bodyless GET.
pub const METRICS: Limits = Limits {
    max_head: 8 * 1024,
    head_timeout: Duration::from_secs(5),
    body_deadline: Duration::from_secs(10),
    max_body: 0,
    max_connections: 32,
    write_stall: Duration::from_secs(10),
};

/// A response body: complete, or streamed from a channel (lists, `watch`).
pub enum Body {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl Body {
    /// A streamed body and its sender; the body ends when every sender is dropped.
    pub fn channel(depth: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(depth);
        (tx, Self::Channel(rx))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            // An exact hint makes hyper send Content-Length, not chunked.
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Channel(_) => SizeHint::default(),
        }
    }
}

/// A complete response.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(body.into())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A streamed 200 response.
pub fn streamed(content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body over {0} bytes")]
    TooLarge(usize),
    #[error("request body not received within {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("reading the request body: {0}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl BodyError {
    /// The status that answers it.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads a whole request body, whatever its transfer encoding, within `limits`.
pub async fn read_body(body: Incoming, limits: &Limits) -> Result<Bytes, BodyError> {
    // Refuse a declared length at once rather than after reading up to the limit.
    if body.size_hint().lower() > limits.max_body as u64 {
        return Err(BodyError::TooLarge(limits.max_body));
    }
    let collect = Limited::new(body, limits.max_body).collect();
    match tokio::time::timeout(limits.body_deadline, collect).await {
        Err(_) => Err(BodyError::Timeout(limits.body_deadline)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(BodyError::TooLarge(limits.max_body))
        }
        Ok(Err(e)) => Err(BodyError::Read(e)),
    }
}

/// Serves accepted connections of one listener within its [`Limits`].
#[derive(Clone)]
pub struct Server {
    limits: Limits,
    slots: Arc<Semaphore>,
}

impl Server {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Serves `io` on its own task with `handler` for each request; when every slot is
    /// taken the connection is closed at once (returns false).
    pub fn spawn<I, H, F>(&self, io: I, handler: H) -> bool
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            debug!("connection refused: all slots busy");
            return false;
        };
        let l = self.limits;
        let handler = Arc::new(handler);
        let service = hyper::service::service_fn(move |req| {
            let h = handler.clone();
            async move { Ok::<_, Infallible>(h(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(l.head_timeout)
            .max_buf_size(l.max_head)
            .max_header_size(l.max_head)
            .max_headers(64)
            .keep_alive(true)
            .serve_connection(TokioIo::new(StallGuard::new(io, l.write_stall)), service);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("connection ended: {e}");
            }
            drop(permit);
        });
        true
    }
}

/// Fails a write that a client leaves blocked longer than `limit`: a client that stops
/// reading must not hold a connection slot and a response buffer forever.
struct StallGuard<I> {
    io: I,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> StallGuard<I> {
    fn new(io: I, limit: Duration) -> Self {
        Self {
            io,
            limit,
            stalled: None,
        }
    }

    fn guard<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let s = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match s.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for StallGuard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for StallGuard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.guard(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.guard(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.guard(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.guard(cx, r)
    }
}

/// Decodes a query string (`a=1&b=x%20y`); a repeated key keeps its last value.
pub fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encoding for a query component.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream, UnixListener, UnixStream},
    };

    use super::*;

    /// Small limits so each hostile case ends within a second.
    const TEST: Limits = Limits {
        max_head: 8 * 1024,
        head_timeout: Duration::from_millis(300),
        body_deadline: Duration::from_millis(500),
        max_body: 1024,
        max_connections: 2,
        write_stall: Duration::from_millis(300),
    };

    /// Answers the length of the body it read.
    async fn echo_len(req: Request<Incoming>) -> Response<Body> {
        match read_body(req.into_body(), &TEST).await {
            Ok(b) => response(StatusCode::OK, "text/plain", b.len().to_string()),
            Err(e) => response(e.status(), "text/plain", e.to_string()),
        }
    }

    async fn tcp_server(limits: Limits) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = Server::new(limits);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                server.spawn(s, echo_len);
            }
        });
        addr
    }

    /// Reads until the server closes (or `within` passes): (closed, what was read).
    async fn until_closed<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> (bool, String) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.read(&mut buf)).await {
                Err(_) => return (false, String::from_utf8_lossy(&got).into_owned()),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return (true, String::from_utf8_lossy(&got).into_owned());
                }
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[tokio::test]
    async fn chunked_body_is_read_whole() {
        let dir = std::env::temp_dir().join(format!("prefilter-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let server = Server::new(TEST);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                server.spawn(s, echo_len);
            }
        });
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(
            b"POST /v1/block/import?list=l&replace=1 HTTP/1.1\r\nHost: x\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              7\r\n192.0.2\r\n9\r\n.1\n198.51\r\n9\r\n.100.7/32\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
        let (closed, answer) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "{answer}");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n25"), "{answer}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn body_over_the_limit_is_refused() {
        let addr = tcp_server(TEST).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            .await
            .unwrap();
        let (_, answer) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        // Chunked, so the size is only known while reading.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..4 {
            req.extend_from_slice(b"200\r\n");
            req.extend_from_slice(&[b'x'; 0x200]);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        s.write_all(&req).await.unwrap();
        let (_, answer) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    #[tokio::test]
    async fn endless_request_line_is_cut_off() {
        let addr = tcp_server(TEST).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let chunk = [b'A'; 16 * 1024];
        let mut sent = 0usize;
        while sent < 64 << 20 {
            match tokio::time::timeout(Duration::from_secs(2), s.write(&chunk)).await {
                Ok(Ok(n)) if n > 0 => sent += n,
                _ => break,
            }
        }
        // What the kernel buffers is all it can have taken: far from 64 MiB.
        assert!(sent < 16 << 20, "the server took {sent} bytes of one line");
        let (closed, answer) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "still open after an oversized head");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn too_many_headers_are_refused() {
        let addr = tcp_server(TEST).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..200 {
            req.push_str(&format!("x-{i}: y\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (closed, answer) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }

    #[tokio::test]
    async fn slow_and_idle_clients_are_let_go() {
        let addr = tcp_server(TEST).await;
        // Half a request head, then nothing.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost").await.unwrap();
        let t = Instant::now();
        let (closed, answer) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed && t.elapsed() < Duration::from_secs(3), "{answer}");
        assert!(!answer.contains(" 200 "), "{answer}");
        // A body that trickles: answered 408 at the deadline.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            .await
            .unwrap();
        let (_, answer) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        // A keep-alive connection left idle after its answer.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let t = Instant::now();
        let (closed, answer) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            closed && t.elapsed() < Duration::from_secs(3),
            "idle connection kept"
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once() {
        let addr = tcp_server(Limits {
            head_timeout: Duration::from_secs(30),
            ..TEST
        })
        .await;
        let a = TcpStream::connect(addr).await.unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        // Let the server accept both before the third arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        let (closed, answer) = until_closed(&mut c, Duration::from_secs(5)).await;
        assert!(closed && answer.is_empty() && t.elapsed() < Duration::from_secs(2));
        // A freed slot serves again.
        drop((a, b));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut d = TcpStream::connect(addr).await.unwrap();
        d.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (_, answer) = until_closed(&mut d, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = Server::new(TEST);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                // An endless stream, as `watch` is.
                server.spawn(s, |_req| async {
                    let (tx, body) = Body::channel(1);
                    tokio::spawn(async move {
                        while tx.send(Bytes::from(vec![b'x'; 64 * 1024])).await.is_ok() {}
                    });
                    streamed("text/plain", body)
                });
            }
        });
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Read nothing for a while: the server's writes stall and it gives up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut n = 0usize;
        let (closed, _) = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return (true, n),
                    Ok(k) => n += k,
                }
            }
        })
        .await
        .unwrap_or((false, 0));
        assert!(closed, "the stalled stream was kept open");
    }

    #[test]
    fn query_decoding() {
        let q = parse_query("list=sbl%20drop&replace=1&x");
        assert_eq!(q["list"], "sbl drop");
        assert_eq!(q["replace"], "1");
        assert_eq!(q["x"], "");
        for s in ["2001:db8::/32", "a b&c=d", "100%"] {
            assert_eq!(decode(&encode(s)), s);
        }
    }
}
