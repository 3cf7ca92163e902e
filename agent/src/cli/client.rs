//! HTTP client for the control socket (hyper on a current-thread runtime), with the errors
//! an administrator can act on.

use std::{
    ffi::CStr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use crate::api;

/// A failed CLI request: one sentence, the lines that detail it, and the exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub message: String,
    /// Printed after the message, one per line (e.g. every bad line of an import).
    pub details: Vec<String>,
    pub code: i32,
}

/// Exit status of a CLI whose reader went away (`| head`): what a shell reports for SIGPIPE.
pub const EXIT_BROKEN_PIPE: i32 = 141;

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_code(message, 1)
    }

    pub fn with_code(message: impl Into<String>, code: i32) -> Self {
        Self {
            message: message.into(),
            details: Vec::new(),
            code,
        }
    }

    /// Standard output was closed by its reader: end quietly.
    pub fn broken_pipe() -> Self {
        Self::with_code("", EXIT_BROKEN_PIPE)
    }

    /// The daemon could not be reached at all (exit 3).
    pub fn unreachable(&self) -> bool {
        self.code == 3
    }
}

/// The name of group `gid`, or its number.
fn group_name(gid: u32) -> String {
    let mut buf = vec![0u8; 4096];
    let mut grp = std::mem::MaybeUninit::<libc::group>::uninit();
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getgrgid_r writes only into grp and buf.
    let rc = unsafe {
        libc::getgrgid_r(
            gid,
            grp.as_mut_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return gid.to_string();
    }
    // SAFETY: on success out points to grp, whose gr_name points into buf, NUL-terminated.
    unsafe { CStr::from_ptr((*out).gr_name) }
        .to_string_lossy()
        .into_owned()
}

/// What to tell a user refused by the socket's permissions: the group that may use it.
fn permission_message(socket: &Path) -> String {
    match std::fs::metadata(socket) {
        Ok(m) if m.gid() != 0 => format!(
            "permission denied on {}: run as root or as a member of the {} group",
            socket.display(),
            group_name(m.gid())
        ),
        Ok(_) => format!(
            "permission denied on {}: only root may use it (set [daemon] socket_group in the config to let a group in)",
            socket.display()
        ),
        Err(_) => format!("permission denied on {}: run as root", socket.display()),
    }
}

/// A connection-level failure, worded for an administrator.
fn connect_error(socket: &Path, e: &std::io::Error) -> CliError {
    let message = match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "the prefilter daemon is not running (no control socket at {}); start it with `prefilter run` or `systemctl start prefilter`",
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => permission_message(socket),
        _ => format!("cannot reach the daemon at {}: {e}", socket.display()),
    };
    CliError::with_code(message, 3)
}

/// A client of one daemon's control socket.
pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// A request body.
enum Payload {
    Empty,
    Json(Vec<u8>),
    Text(Vec<u8>),
}

impl Client {
    pub fn new(socket: &Path) -> Result<Self, CliError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::new(format!("cannot start the runtime: {e}")))?;
        Ok(Self {
            socket: socket.to_owned(),
            rt,
        })
    }

    /// Sends one request; returns the response once its head is in.
    async fn send(
        &self,
        method: Method,
        target: &str,
        payload: Payload,
    ) -> Result<hyper::Response<Incoming>, CliError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| connect_error(&self.socket, &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CliError::new(format!("talking to the daemon: {e}")))?;
        // Drives the connection while the response is read; ends with it.
        tokio::spawn(conn);
        let (ctype, body) = match payload {
            Payload::Empty => (None, Bytes::new()),
            Payload::Json(b) => (Some("application/json"), b.into()),
            Payload::Text(b) => (Some("text/plain"), b.into()),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header(hyper::header::HOST, "prefilter");
        if let Some(c) = ctype {
            req = req.header(hyper::header::CONTENT_TYPE, c);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| CliError::new(format!("building the request: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| CliError::new(format!("the daemon did not answer: {e}")))
    }

    /// One request whose answer is a whole JSON document of type `T`.
    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        target: &str,
        payload: Payload,
    ) -> Result<T, CliError> {
        self.rt.block_on(async {
            let resp = self.send(method, target, payload).await?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CliError::new(format!("reading the daemon's answer: {e}")))?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(refusal(status, &body));
            }
            serde_json::from_slice(&body)
                .map_err(|e| CliError::new(format!("the daemon's answer does not fit: {e}")))
        })
    }

    pub fn get<T: DeserializeOwned>(&self, target: &str) -> Result<T, CliError> {
        self.call(Method::GET, target, Payload::Empty)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        target: &str,
        body: &B,
    ) -> Result<T, CliError> {
        let b = serde_json::to_vec(body)
            .map_err(|e| CliError::new(format!("encoding the request: {e}")))?;
        self.call(Method::POST, target, Payload::Json(b))
    }

    pub fn post_text<T: DeserializeOwned>(
        &self,
        target: &str,
        text: Vec<u8>,
    ) -> Result<T, CliError> {
        self.call(Method::POST, target, Payload::Text(text))
    }

    /// GET `target` and hand its body to `f` chunk by chunk as it arrives.
    pub fn stream(
        &self,
        target: &str,
        mut f: impl FnMut(&[u8]) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        self.rt.block_on(async {
            let resp = self.send(Method::GET, target, Payload::Empty).await?;
            let status = resp.status();
            let mut body = resp.into_body();
            if status != StatusCode::OK {
                let b = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                return Err(refusal(status, &b));
            }
            while let Some(frame) = body.frame().await {
                let frame = frame
                    .map_err(|e| CliError::new(format!("reading the daemon's answer: {e}")))?;
                if let Some(data) = frame.data_ref() {
                    f(data)?;
                }
            }
            Ok(())
        })
    }
}

/// A non-200 answer as a CLI error: the daemon's message, any bad lines, exit 2 for a
/// request the user must change.
fn refusal(status: StatusCode, body: &[u8]) -> CliError {
    let code = if status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY {
        2
    } else {
        1
    };
    match serde_json::from_slice::<api::ErrorBody>(body) {
        Ok(e) => CliError {
            message: e.error,
            details: e
                .errors
                .iter()
                .map(|b| {
                    format!(
                        "line {}: {}: {}",
                        b.line,
                        b.message,
                        super::commands::shown(&b.text)
                    )
                })
                .collect(),
            code,
        },
        Err(_) => CliError::with_code(
            format!(
                "the daemon answered {status}: {}",
                String::from_utf8_lossy(body).trim()
            ),
            code,
        ),
    }
}

/// Splits a byte stream into lines, whatever the chunk boundaries.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Feeds a chunk; calls `f` with each complete line (without its newline).
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut f: impl FnMut(&str) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.buf[start..start + i]).into_owned();
            start += i + 1;
            f(&line)?;
        }
        self.buf.drain(..start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_across_chunks() {
        let mut l = Lines::default();
        let mut got = Vec::new();
        for chunk in [&b"ab"[..], b"c\nd", b"\n\nef"] {
            l.feed(chunk, |s| {
                got.push(s.to_owned());
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(got, ["abc", "d", ""]);
        assert_eq!(l.buf, b"ef");
    }

    #[test]
    fn refusal_lists_every_bad_line() {
        let body = serde_json::to_vec(&api::ErrorBody {
            error: "--strict: 2 bad line(s), nothing applied".into(),
            errors: vec![
                api::BadLine {
                    line: 3,
                    text: "x".into(),
                    message: "not an IP address".into(),
                },
                api::BadLine {
                    line: 9,
                    text: "y".into(),
                    message: "not an IP address".into(),
                },
            ],
        })
        .unwrap();
        let e = refusal(StatusCode::UNPROCESSABLE_ENTITY, &body);
        assert_eq!(e.code, 2);
        assert_eq!(e.details.len(), 2);
        assert!(e.details[1].starts_with("line 9: "), "{:?}", e.details);
    }

    #[test]
    fn not_running_is_one_sentence() {
        let e = connect_error(
            Path::new("/nonexistent/x.sock"),
            &std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(e.unreachable());
        assert!(e.message.contains("daemon is not running"));
        assert!(!e.message.contains('\n'));
    }
}
