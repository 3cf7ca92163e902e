//! Blocking HTTP client for the control socket, with the errors an administrator can act on.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use serde_json::Value;

/// A failed CLI request: one sentence, and the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

fn connect(socket: &Path) -> Result<UnixStream, CliError> {
    UnixStream::connect(socket).map_err(|e| {
        let message = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                "the prefilter daemon is not running (no control socket at {}); start it with `prefilter run` or `systemctl start prefilter`",
                socket.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "permission denied on {}: run as root or as a member of the prefilter group",
                socket.display()
            ),
            _ => format!("cannot reach the daemon at {}: {e}", socket.display()),
        };
        CliError { message, code: 3 }
    })
}

fn send(
    s: &mut UnixStream,
    method: &str,
    target: &str,
    ctype: &str,
    body: &[u8],
) -> Result<(), CliError> {
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: prefilter\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .map_err(|e| CliError::new(format!("sending the request to the daemon: {e}")))
}

/// Reads the status line and headers; returns the status.
fn read_head(r: &mut impl BufRead) -> Result<u16, CliError> {
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| CliError::new(format!("reading the daemon's answer: {e}")))?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CliError::new("the daemon sent no valid answer"))?;
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| CliError::new(format!("reading the daemon's answer: {e}")))?;
        if n == 0 || line == "\r\n" || line == "\n" {
            return Ok(status);
        }
    }
}

/// One request; a non-200 answer becomes its `error` message.
pub fn request(
    socket: &Path,
    method: &str,
    target: &str,
    ctype: &str,
    body: &[u8],
) -> Result<Value, CliError> {
    let mut s = connect(socket)?;
    send(&mut s, method, target, ctype, body)?;
    let mut r = BufReader::new(s);
    let status = read_head(&mut r)?;
    let mut text = String::new();
    r.read_to_string(&mut text)
        .map_err(|e| CliError::new(format!("reading the daemon's answer: {e}")))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::new(format!("the daemon's answer is not JSON: {e}")))?;
    if status != 200 {
        let msg = v["error"].as_str().unwrap_or("request failed").to_owned();
        return Err(CliError {
            message: msg,
            code: if status == 422 || status == 400 { 2 } else { 1 },
        });
    }
    Ok(v)
}

/// A JSON request.
pub fn json(socket: &Path, method: &str, target: &str, body: &Value) -> Result<Value, CliError> {
    request(
        socket,
        method,
        target,
        "application/json",
        body.to_string().as_bytes(),
    )
}

/// Streams JSON lines from `target` into `f` until the daemon closes or `f` says stop.
pub fn stream(
    socket: &Path,
    target: &str,
    mut f: impl FnMut(&str) -> bool,
) -> Result<(), CliError> {
    let mut s = connect(socket)?;
    send(&mut s, "GET", target, "application/json", b"")?;
    let mut r = BufReader::new(s);
    if read_head(&mut r)? != 200 {
        return Err(CliError::new("the daemon refused the event stream"));
    }
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                let l = line.trim();
                if !l.is_empty() && !f(l) {
                    return Ok(());
                }
            }
            Err(e) => return Err(CliError::new(format!("event stream: {e}"))),
        }
    }
}
