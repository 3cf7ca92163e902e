//! Just enough HTTP/1.1 for the control socket and the metrics endpoint: one request per
//! connection, `Content-Length` bodies, `Connection: close`. Enough for the CLI, curl
//! (`curl --unix-socket`) and Prometheus; not worth a web framework in a mail gateway.

use std::collections::HashMap;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Largest request head.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body: a 1M-line list with reasons is about 40 MB.
pub const MAX_BODY: usize = 512 * 1024 * 1024;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Errors reading a request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad request: {0}")]
    Bad(&'static str),
    #[error("request body over {MAX_BODY} bytes")]
    TooLarge,
}

/// How long a client may take to send its whole request; a stalled one is let go.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads one request from `r`, within [`READ_TIMEOUT`].
pub async fn read_request<R: AsyncRead + Unpin>(r: R) -> Result<Request, HttpError> {
    tokio::time::timeout(READ_TIMEOUT, read_request_inner(r))
        .await
        .unwrap_or(Err(HttpError::Bad("request not received in time")))
}

async fn read_request_inner<R: AsyncRead + Unpin>(r: R) -> Result<Request, HttpError> {
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut head = 0usize;
    r.read_line(&mut line).await?;
    head += line.len();
    let mut parts = line.split_whitespace();
    let method = parts
        .next()
        .ok_or(HttpError::Bad("empty request"))?
        .to_owned();
    let target = parts.next().ok_or(HttpError::Bad("no target"))?.to_owned();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await? == 0 {
            return Err(HttpError::Bad("headers not terminated"));
        }
        head += h.len();
        if head > MAX_HEAD {
            return Err(HttpError::Bad("headers too large"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v
                .trim()
                .parse()
                .map_err(|_| HttpError::Bad("content-length"))?;
        }
    }
    if len > MAX_BODY {
        return Err(HttpError::TooLarge);
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect();
    Ok(Request {
        method,
        path: path.to_owned(),
        query,
        body,
    })
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

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a complete response and closes the exchange.
pub async fn respond<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await
}

/// Starts a streamed response: the body runs until the server closes the connection.
pub async fn respond_stream_head<W: AsyncWrite + Unpin>(
    w: &mut W,
    content_type: &str,
) -> std::io::Result<()> {
    let head =
        format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n");
    w.write_all(head.as_bytes()).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_request_with_query_and_body() {
        let raw = b"POST /v1/import?list=sbl%20drop&format=plain HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let r = read_request(&raw[..]).await.unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/import");
        assert_eq!(r.query["list"], "sbl drop");
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn encode_decode_round_trip() {
        for s in ["2001:db8::/32", "a b&c=d", "100%"] {
            assert_eq!(decode(&encode(s)), s);
        }
    }
}
