//! The little SMTP the proxy speaks or watches itself: a bounded line reader, the dummy
//! dialogue for `reject_at = "rcpt"` and for refusals after a pregreet `220-`, the guard on
//! the client's command stream while relaying, and the watch for the backend's queue id.
//!
//! Hand-written: no maintained crate parses SMTP commands incrementally from a relayed
//! stream without buffering it, and the subset needed here is small.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Longest command line accepted, CRLF included (RFC 5321 4.5.3.1.6: a text line is at most
/// 1000 octets; commands are shorter still).
pub const MAX_LINE: usize = 1000;
/// Commands one dummy dialogue answers before it ends.
pub const MAX_COMMANDS: u32 = 50;
/// How long one dummy dialogue lasts at most, whatever the client does.
pub const DIALOGUE_MAX: Duration = Duration::from_secs(180);
/// Envelope addresses a session line names at most (the rest are counted).
pub const MAX_LOGGED_RCPTS: usize = 20;

/// PROXY v2's signature (the spec, section 2.2).
const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// PROXY v1's start.
const V1_SIG: &[u8] = b"PROXY ";

/// Why a client's input ended its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// A PROXY protocol header from the client: only the proxy may send one.
    ProxyHeader,
    /// A command line longer than [`MAX_LINE`].
    LongLine,
    /// Control bytes (NUL, escape...) in a command line.
    Binary,
}

impl Bad {
    /// The log text.
    pub fn text(self) -> &'static str {
        match self {
            Bad::ProxyHeader => "bad input: PROXY header from the client",
            Bad::LongLine => "bad input: command line over 1000 bytes",
            Bad::Binary => "bad input: binary data in a command",
        }
    }
}

/// Whether `b` could still grow into a PROXY header: the caller reads more before judging.
pub fn maybe_proxy_header(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() < V2_SIG.len()
        && (V2_SIG.starts_with(b) || (b.len() < V1_SIG.len() && V1_SIG.starts_with(b)))
}

/// Whether `b` starts with a PROXY header (v1 text or the v2 signature).
pub fn is_proxy_header(b: &[u8]) -> bool {
    b.starts_with(V1_SIG) || b.starts_with(V2_SIG)
}

/// A control byte other than CR, LF and TAB: no SMTP command has one.
fn binary(b: u8) -> bool {
    (b < 0x20 && !matches!(b, b'\r' | b'\n' | b'\t')) || b == 0x7f
}

/// Reads CRLF lines from a client, never holding more than one line and a read.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
    started: bool,
    /// Bytes read so far.
    pub bytes: u64,
}

impl Lines {
    /// The next line without its line end; `None` at EOF or on a read error.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Option<String>, Bad> {
        loop {
            if !self.started && !self.buf.is_empty() && !maybe_proxy_header(&self.buf) {
                self.started = true;
                if is_proxy_header(&self.buf) {
                    return Err(Bad::ProxyHeader);
                }
            }
            if self.started
                && let Some(end) = self.buf.iter().position(|&b| b == b'\n')
            {
                if end + 1 > MAX_LINE {
                    return Err(Bad::LongLine);
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().any(|&b| binary(b)) {
                    return Err(Bad::Binary);
                }
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.buf.len() >= MAX_LINE {
                return Err(Bad::LongLine);
            }
            let mut chunk = [0u8; 1024];
            let n = match r.read(&mut chunk).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => n,
            };
            self.bytes += n as u64;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Where the client's stream is, as far as the guard can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Commands, line by line.
    Command,
    /// Message content after DATA, until the lone dot.
    Data,
    /// The bytes of a BDAT chunk still to come (RFC 3030: sent whatever the reply).
    Chunk(u64),
    /// After STARTTLS: TLS if the client's next byte starts a TLS record (the backend said
    /// 220), commands again otherwise (it refused, and the client goes on in plain text).
    Starttls,
    /// Not inspected any more: TLS is opaque.
    Off,
}

/// A TLS record of type handshake starts with this byte; no SMTP command does.
const TLS_HANDSHAKE: u8 = 0x16;

/// Checks the client's bytes while they are relayed, without holding any back: command
/// lines bounded and free of control bytes. Message content, BDAT chunks and TLS pass as
/// they are (the backend judges content; TLS is never touched).
pub struct Guard {
    phase: Phase,
    /// The current command line so far (only its start, for the verb and a BDAT size) and
    /// its length.
    verb: Vec<u8>,
    len: usize,
    /// The last bytes of message content, to find CRLF.CRLF across reads.
    tail: [u8; 4],
    first: bool,
}

impl Guard {
    /// A guard for a plain listener's stream, or for an implicit TLS listener's (`tls`),
    /// which is opaque from its first byte.
    pub fn new(tls: bool) -> Self {
        Self {
            phase: if tls { Phase::Off } else { Phase::Command },
            verb: Vec::new(),
            len: 0,
            tail: *b"\0\0\r\n",
            first: true,
        }
    }

    /// Looks at the next bytes from the client; `Err` ends the session before they go on.
    /// The caller has already held back a possible PROXY header start (see
    /// [`maybe_proxy_header`]).
    pub fn feed(&mut self, b: &[u8]) -> Result<(), Bad> {
        if self.first && !b.is_empty() {
            self.first = false;
            if is_proxy_header(b) {
                return Err(Bad::ProxyHeader);
            }
        }
        let mut i = 0;
        while i < b.len() {
            match self.phase {
                Phase::Off => return Ok(()),
                Phase::Starttls => {
                    self.phase = if b[i] == TLS_HANDSHAKE {
                        Phase::Off
                    } else {
                        Phase::Command
                    };
                }
                Phase::Chunk(left) => {
                    let take = left.min((b.len() - i) as u64);
                    i += take as usize;
                    self.phase = match left - take {
                        0 => Phase::Command,
                        n => Phase::Chunk(n),
                    };
                }
                Phase::Data => {
                    let c = b[i];
                    i += 1;
                    self.tail = [self.tail[1], self.tail[2], self.tail[3], c];
                    if &self.tail[1..] == b".\r\n" && self.tail[0] == b'\n' {
                        self.phase = Phase::Command;
                    }
                }
                Phase::Command => {
                    let c = b[i];
                    i += 1;
                    if c == b'\n' {
                        let line = std::mem::take(&mut self.verb);
                        self.len = 0;
                        self.phase = after(&line);
                        if self.phase == Phase::Data {
                            self.tail = *b"\0\0\r\n";
                        }
                        continue;
                    }
                    if binary(c) {
                        return Err(Bad::Binary);
                    }
                    self.len += 1;
                    if self.len >= MAX_LINE {
                        return Err(Bad::LongLine);
                    }
                    if self.verb.len() < 40 {
                        self.verb.push(c);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The phase after the command line `line` (its first 40 bytes).
fn after(line: &[u8]) -> Phase {
    let line = line.trim_ascii().to_ascii_uppercase();
    let mut words = line.split(|&c| c == b' ').filter(|w| !w.is_empty());
    match words.next().unwrap_or_default() {
        b"DATA" => Phase::Data,
        b"STARTTLS" => Phase::Starttls,
        // A size the line does not give (or too long to read) leaves the next bytes to be
        // judged as commands: the backend refuses such a BDAT too.
        b"BDAT" => std::str::from_utf8(words.next().unwrap_or_default())
            .ok()
            .and_then(|n| n.parse::<u64>().ok())
            .map_or(Phase::Command, |n| {
                if n == 0 {
                    Phase::Command
                } else {
                    Phase::Chunk(n)
                }
            }),
        _ => Phase::Command,
    }
}

/// Finds `250 ... queued as X` replies in the backend's stream, one bounded line at a time.
#[derive(Default)]
pub struct QueueWatch {
    line: Vec<u8>,
    long: bool,
}

/// Longest backend reply line looked at; longer ones are skipped.
const WATCH_LINE: usize = 512;

impl QueueWatch {
    /// Looks at the next bytes from the backend; calls `found` with each queue id.
    pub fn feed(&mut self, b: &[u8], mut found: impl FnMut(String)) {
        for &c in b {
            if c == b'\n' {
                if !self.long
                    && let Some(id) = queue_id(&self.line)
                {
                    found(id);
                }
                self.line.clear();
                self.long = false;
            } else if self.line.len() < WATCH_LINE {
                self.line.push(c);
            } else {
                self.long = true;
            }
        }
    }
}

/// The queue id of a `250 ... queued as X` line (Postfix, Exim's `id=` is not matched).
pub fn queue_id(line: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(line).ok()?;
    if !s.starts_with("250") {
        return None;
    }
    let at = s.find("queued as ")? + "queued as ".len();
    let id: String = s[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .take(64)
        .collect();
    (!id.is_empty()).then_some(id)
}

/// One command of a dummy dialogue, and what to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Cmd {
    Helo(String),
    Mail(String),
    Rcpt(String),
    Data,
    Rset,
    Noop,
    Quit,
    Other,
}

/// Parses a command line (verbs case-insensitive, RFC 5321 2.4).
pub fn command(line: &str) -> Cmd {
    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
    let arg = arg.trim();
    let bounded = |s: &str| s.chars().take(256).collect::<String>();
    let after_colon = |s: &str| bounded(s.split_once(':').map_or(s, |(_, a)| a).trim());
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" | "HELO" => Cmd::Helo(bounded(arg)),
        "MAIL" => Cmd::Mail(after_colon(arg)),
        "RCPT" => Cmd::Rcpt(after_colon(arg)),
        "DATA" | "BDAT" => Cmd::Data,
        "RSET" => Cmd::Rset,
        "NOOP" => Cmd::Noop,
        "QUIT" => Cmd::Quit,
        _ => Cmd::Other,
    }
}
