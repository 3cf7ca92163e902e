//! One regression test per reported agent defect, each written to the behaviour an
//! administrator relies on (the contract), not to today's implementation.
//!
//! Several of these describe work in progress: they fail until the fix lands. Each test's
//! doc comment says what a user relies on; the assertion messages say what went wrong.
//!
//! Needs root and a built daemon: `cargo build --release -p prefilter`, then
//! `cargo test --release -p prefilter-tests --test agent_defects`. Tests run in parallel
//! threads: every namespace, directory and mount is unique to its test and removed on drop.

use std::{
    collections::BTreeSet,
    ffi::CStr,
    fmt::Write as _,
    io::{self, Read, Write},
    net::{Ipv4Addr, TcpStream},
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use prefilter_tests::{
    daemon::{
        BLOCKED4, CLI_WITHIN, CmdOutput, DEFAULT_XDP, Daemon, Lab, Listener, Tmpfs, binary,
        in_netns, poll, run_bounded,
    },
    require_root,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The prefixes `block list --json` shows in list `list`.
fn prefixes_in(d: &Daemon, list: &str) -> BTreeSet<String> {
    d.block_list()
        .as_array()
        .expect("block list is an array")
        .iter()
        .filter(|e| e["list"] == list)
        .map(|e| e["prefix"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Whether `block list --json` shows `prefix` in any list.
fn listed(d: &Daemon, prefix: &str) -> bool {
    d.block_list()
        .as_array()
        .expect("block list is an array")
        .iter()
        .any(|e| e["prefix"] == prefix)
}

/// `addrs` as the /32 prefixes the store lists.
fn host_set(addrs: &[&str]) -> BTreeSet<String> {
    addrs.iter().map(|a| format!("{a}/32")).collect()
}

/// Writes `text` to `name` in the daemon's directory; returns the path.
fn file(d: &Daemon, name: &str, text: &str) -> String {
    let p = d.dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p.to_str().expect("UTF-8 path").to_owned()
}

/// Imports ten hosts, 198.51.100.10 to .19, into list l1; returns them and the file.
fn import_ten(d: &Daemon) -> (Vec<String>, String) {
    let ten: Vec<String> = (10..20).map(|i| format!("198.51.100.{i}")).collect();
    let full = file(d, "ten.txt", &(ten.join("\n") + "\n"));
    d.cli_ok(&["block", "import", &full, "--list", "l1"]);
    (ten, full)
}

/// A refused CLI command: non-zero exit, stderr containing every one of `all`, and the
/// block list exactly as before. Returns the output for further checks.
fn refused(d: &Daemon, args: &[&str], all: &[&str]) -> CmdOutput {
    let before = d.block_list();
    let out = d.cli(args);
    let shown = args.join(" ");
    assert_ne!(
        out.code,
        0,
        "prefilter {shown} must be refused: {}",
        out.both()
    );
    for want in all {
        assert!(
            out.stderr.contains(want),
            "prefilter {shown}: the message must say {want:?}: {}",
            out.both()
        );
    }
    assert_eq!(
        d.block_list(),
        before,
        "prefilter {shown} was refused but changed the block list"
    );
    out
}

/// Reads from `s` until the peer closes it (EOF or reset), for at most `within`. Returns
/// whether it was closed, and what it sent.
fn wait_closed(s: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (true, got),
        }
    }
    (false, got)
}

/// The HTTP status of a raw answer; 0 if it is not one.
fn status_of(answer: &[u8]) -> u16 {
    String::from_utf8_lossy(answer)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Seconds since the epoch, the clock the store stamps entries with.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// What a metrics-listener test allows the daemon to keep: 32 MiB.
const RSS_SLACK_KIB: u64 = 32 * 1024;

// ---------------------------------------------------------------------------------------
// a. A replace import that would empty (or mostly empty) a list
// ---------------------------------------------------------------------------------------

/// A list feed that comes back empty or truncated (a failed download, a wrong path) must not
/// silently wipe a list the site relies on: `block import --replace` refuses to remove more
/// than half of a list unless told `--force`, says so, and changes nothing. An ordinary
/// replace (a few entries come and go) needs no `--force`.
#[test]
fn replace_import_that_would_empty_a_list_needs_force() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let (ten, full) = import_ten(&d);
    let ten_ref: Vec<&str> = ten.iter().map(String::as_str).collect();
    assert_eq!(prefixes_in(&d, "l1"), host_set(&ten_ref));

    // Empty and comment-only files: refused, the list kept.
    for (name, text) in [
        ("empty.txt", ""),
        ("comments.txt", "# the feed was down today\n; nothing\n\n"),
    ] {
        let f = file(&d, name, text);
        refused(
            &d,
            &["block", "import", &f, "--list", "l1", "--replace"],
            &["would remove", "--force"],
        );
        assert_eq!(prefixes_in(&d, "l1"), host_set(&ten_ref), "{name}");
    }
    // With --force it is applied.
    let f = file(&d, "comments2.txt", "# really empty now\n");
    d.cli_ok(&[
        "block",
        "import",
        &f,
        "--list",
        "l1",
        "--replace",
        "--force",
    ]);
    assert!(
        prefixes_in(&d, "l1").is_empty(),
        "--replace --force of an empty file empties the list"
    );

    // Ten again; a replacement keeping four would remove six of ten: refused.
    d.cli_ok(&["block", "import", &full, "--list", "l1"]);
    let four = file(&d, "four.txt", &(ten[..4].join("\n") + "\n"));
    refused(
        &d,
        &["block", "import", &four, "--list", "l1", "--replace"],
        &["would remove"],
    );
    assert_eq!(prefixes_in(&d, "l1"), host_set(&ten_ref));

    // Two of ten go, two come: an ordinary replace.
    let mut eight: Vec<&str> = ten_ref[..8].to_vec();
    eight.extend(["198.51.100.30", "198.51.100.31"]);
    let f = file(&d, "eight.txt", &(eight.join("\n") + "\n"));
    d.cli_ok(&["block", "import", &f, "--list", "l1", "--replace"]);
    assert_eq!(prefixes_in(&d, "l1"), host_set(&eight));

    // Six of ten go with --force.
    d.cli_ok(&[
        "block",
        "import",
        &four,
        "--list",
        "l1",
        "--replace",
        "--force",
    ]);
    assert_eq!(prefixes_in(&d, "l1"), host_set(&ten_ref[..4]));
}

/// `block import --patch`: an update sent as a difference. A patch as `diff -u` prints it
/// adds its `+` lines and removes its `-` lines, ignoring headers and context; a bad line
/// is named by its line in the patch and the others still apply; what is not a patch, an
/// rbldnsd zone, and a patch with `--replace` are refused with nothing changed; a patch
/// that would remove most of the list trips the shrink guard like a replacement does.
#[test]
fn patch_import_applies_a_difference() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let (ten, full) = import_ten(&d);
    let ten_ref: Vec<&str> = ten.iter().map(String::as_str).collect();

    let patch = file(
        &d,
        "l1.diff",
        "--- ten.txt\n\
         +++ ten-new.txt\n\
         @@ -1,3 +1,4 @@\n\
         \x20198.51.100.10\n\
         -198.51.100.11\n\
         +198.51.100.40\n\
         +not-an-address\n\
         +198.51.100.41 # a comment\n\
         -198.51.100.99\n",
    );
    let out = d.cli(&["block", "import", &patch, "--list", "l1", "--patch"]);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout
            .contains("patched list l1: 2 entries added or updated, 1 removed"),
        "{}",
        out.both()
    );
    assert!(
        out.stderr.contains("line 7:") && out.stderr.contains("not-an-address"),
        "the bad line is named by its line in the patch: {}",
        out.both()
    );
    let mut want: Vec<&str> = ten_ref
        .iter()
        .copied()
        .filter(|a| *a != "198.51.100.11")
        .collect();
    want.extend(["198.51.100.40", "198.51.100.41"]);
    assert_eq!(prefixes_in(&d, "l1"), host_set(&want));
    assert_eq!(d.check("198.51.100.11")["verdict"], "pass");
    assert_eq!(d.check("198.51.100.40")["verdict"], "drop");

    // --strict: one bad line and nothing of the patch applies.
    let out = refused(
        &d,
        &[
            "block", "import", &patch, "--list", "l1", "--patch", "--strict",
        ],
        &["--strict: 1 bad line(s), nothing applied", "line 7"],
    );
    assert!(out.stderr.contains("not-an-address"), "{}", out.both());
    // A whole list sent as a patch by mistake.
    refused(
        &d,
        &["block", "import", &full, "--list", "l1", "--patch"],
        &["no line starts with + or -"],
    );
    let zone = file(&d, "zone.diff", "+:127.0.0.2:listed\n+198.51.100.50\n");
    refused(
        &d,
        &[
            "block", "import", &zone, "--list", "l1", "--patch", "--format", "rbldnsd",
        ],
        &["not rbldnsd"],
    );
    refused(
        &d,
        &[
            "block",
            "import",
            &patch,
            "--list",
            "l1",
            "--patch",
            "--replace",
        ],
        &["--replace"],
    );
    // A patch against a truncated download removes nearly everything: refused unless forced.
    let gone: String = want.iter().skip(1).map(|a| format!("-{a}\n")).collect();
    let wipe = file(&d, "wipe.diff", &gone);
    refused(
        &d,
        &["block", "import", &wipe, "--list", "l1", "--patch"],
        &["would remove 10 of 11", "--force"],
    );
    d.cli_ok(&[
        "block", "import", &wipe, "--list", "l1", "--patch", "--force",
    ]);
    assert_eq!(prefixes_in(&d, "l1"), host_set(&want[..1]));
}

// ---------------------------------------------------------------------------------------
// b. Chunked request bodies on the control socket
// ---------------------------------------------------------------------------------------

/// Scripts and HTTP clients stream large lists with `Transfer-Encoding: chunked` (curl does
/// for `--data-binary @-`): the whole body must be imported, not an empty one.
#[test]
fn chunked_import_over_the_control_socket() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let old = [
        "198.51.100.20",
        "198.51.100.21",
        "198.51.100.22",
        "198.51.100.23",
        "198.51.100.24",
    ];
    let f = file(&d, "old.txt", &(old.join("\n") + "\n"));
    d.cli_ok(&["block", "import", &f, "--list", "l2"]);
    assert_eq!(prefixes_in(&d, "l2"), host_set(&old));

    // One of five goes (no --force needed), two come; the chunks split lines.
    let new = [
        "198.51.100.20",
        "198.51.100.21",
        "198.51.100.22",
        "198.51.100.23",
        "198.51.100.25",
        "198.51.100.26",
    ];
    let body = new.join("\n") + "\n";
    let b = body.as_bytes();
    let cuts = [0, 7, 30, 31, 60, b.len()];
    let mut pieces: Vec<Vec<u8>> = vec![
        b"POST /v1/block/import?list=l2&replace=1 HTTP/1.1\r\nHost: prefilter\r\n\
          Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec(),
    ];
    for w in cuts.windows(2) {
        let chunk = &b[w[0]..w[1]];
        let mut p = format!("{:x}\r\n", chunk.len()).into_bytes();
        p.extend_from_slice(chunk);
        p.extend_from_slice(b"\r\n");
        pieces.push(p);
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
    let (status, answer) = d.control_raw(&refs);
    assert_eq!(status, 200, "chunked import answered: {answer}");
    assert_eq!(
        prefixes_in(&d, "l2"),
        host_set(&new),
        "list l2 after a chunked replace import (answer {answer})"
    );
}

// ---------------------------------------------------------------------------------------
// c. Bounds of the metrics listener (reachable by whoever can reach the port)
// ---------------------------------------------------------------------------------------

/// A client that sends an endless request line (no newline, up to 64 MiB) is cut off before
/// the daemon has taken it all, and the daemon's memory does not grow with it.
#[test]
fn metrics_listener_cuts_off_an_endless_request_line() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.metrics_text();
    let rss0 = d.rss_kib();
    let mut s = d
        .metrics_connect()
        .expect("connect to the metrics listener");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    const LIMIT: usize = 64 << 20;
    let chunk = vec![b'A'; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sent = 0usize;
    let mut write_err = None;
    while sent < LIMIT && Instant::now() < deadline {
        match s.write(&chunk) {
            Ok(0) => {
                write_err = Some(io::Error::from(io::ErrorKind::WriteZero));
                break;
            }
            Ok(n) => sent += n,
            Err(e) => {
                write_err = Some(e);
                break;
            }
        }
    }
    let rss_sent = d.rss_kib();
    eprintln!(
        "sent {} KiB without a newline ({write_err:?}); daemon RSS {rss0} -> {rss_sent} KiB",
        sent / 1024
    );
    assert!(
        rss_sent < rss0 + RSS_SLACK_KIB,
        "the daemon's RSS grew by {} KiB while a client sent {} KiB without a newline",
        rss_sent.saturating_sub(rss0),
        sent / 1024
    );
    assert!(
        sent < LIMIT,
        "the daemon took all {} MiB of a request line without cutting the client off",
        LIMIT >> 20
    );
    // Refused with a reset or a closed connection; a write that merely timed out (the
    // daemon stopped reading) must be followed by the daemon closing the connection.
    let Some(e) = write_err else {
        panic!("the send loop hit its 120 s bound: the daemon neither took nor refused the bytes");
    };
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        let (closed, _) = wait_closed(&mut s, Duration::from_secs(90));
        assert!(
            closed,
            "the daemon stopped reading but kept the connection open"
        );
    }
    drop(s);
    let rss1 = d.rss_kib();
    assert!(
        rss1 < rss0 + RSS_SLACK_KIB,
        "RSS after the connection ended: {rss0} -> {rss1} KiB"
    );
    d.metrics_text();
}

/// A client that connects and sends nothing is disconnected within a bounded time (a
/// generous 90 s here; the exact time is the daemon's to choose).
#[test]
fn metrics_listener_disconnects_a_silent_client() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.metrics_text();
    let mut s = d
        .metrics_connect()
        .expect("connect to the metrics listener");
    let start = Instant::now();
    let (closed, got) = wait_closed(&mut s, Duration::from_secs(90));
    assert!(
        closed,
        "a client that sent nothing is still connected after 90 s"
    );
    eprintln!(
        "silent client disconnected after {:?} ({} bytes of answer)",
        start.elapsed(),
        got.len()
    );
    assert_ne!(status_of(&got), 200, "answered 200 to an empty request");
}

/// 300 idle connections to the metrics port must not take the daemon down: the control
/// socket keeps answering while they are open, /metrics answers again once they are gone,
/// and the memory they took is given back.
#[test]
fn metrics_listener_survives_many_idle_connections() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.metrics_text();
    let rss0 = d.rss_kib();
    let addr = d.metrics;
    let (conns, failed) = in_netns(&d.netns, || {
        let mut conns = Vec::new();
        let mut failed = 0;
        for _ in 0..300 {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => conns.push(s),
                Err(_) => failed += 1,
            }
        }
        (conns, failed)
    });
    eprintln!("{} idle connections open, {failed} refused", conns.len());
    let st = d.status();
    assert!(
        st["version"].is_string(),
        "status while idle clients wait: {st}"
    );
    d.cli_ok(&["status"]);
    drop(conns);
    let answered = poll(Duration::from_secs(90), || d.try_metrics_text().ok());
    assert!(
        answered.is_some(),
        "/metrics did not answer within 90 s of the idle clients leaving: {:?}",
        d.try_metrics_text()
    );
    let rss1 = d.rss_kib();
    assert!(
        rss1 < rss0 + RSS_SLACK_KIB,
        "RSS after 300 idle connections: {rss0} -> {rss1} KiB"
    );
}

/// /metrics is read-only: a POST with a body is answered 405 (or another 4xx), never 200,
/// and the bodies do not stay in the daemon's memory.
#[test]
fn metrics_listener_refuses_post() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.metrics_text();
    let rss0 = d.rss_kib();
    let body = vec![b'x'; 64 * 1024];
    for i in 0..20 {
        let mut s = d
            .metrics_connect()
            .expect("connect to the metrics listener");
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /metrics HTTP/1.1\r\nHost: prefilter\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // The daemon may answer and close before reading the body: a failed write is fine.
        let _ = s
            .write_all(head.as_bytes())
            .and_then(|()| s.write_all(&body));
        let (closed, got) = wait_closed(&mut s, Duration::from_secs(30));
        assert!(closed, "POST /metrics #{i}: no answer within 30 s");
        let status = status_of(&got);
        assert!(
            (400..500).contains(&status),
            "POST /metrics #{i} answered {status}, expected 405 or another 4xx:\n{}",
            String::from_utf8_lossy(&got[..got.len().min(300)])
        );
    }
    d.metrics_text();
    let rss1 = d.rss_kib();
    assert!(
        rss1 < rss0 + RSS_SLACK_KIB,
        "RSS after 20 POSTs: {rss0} -> {rss1} KiB"
    );
}

// ---------------------------------------------------------------------------------------
// d. A full disk
// ---------------------------------------------------------------------------------------

/// When the state directory's disk is full, a change the daemon cannot persist is refused
/// (not acknowledged), and nothing already acknowledged is lost: once there is space again
/// new changes work, and a restart brings back exactly what was acknowledged.
#[test]
fn full_disk_refuses_changes_and_loses_nothing() {
    require_root();
    let lab = Lab::new();
    // Before the daemon: dropped after it, when its files are closed.
    let fs = Tmpfs::mount("1m");
    let mut d = Daemon::prepare(&lab.mx, &lab.mx_if);
    d.state_dir = fs.path.join("state");
    d.write_config(&d.config_text(DEFAULT_XDP, ""));
    d.start();

    let acked = ["198.51.100.70", "198.51.100.71", "198.51.100.72"];
    for a in acked {
        d.cli_ok(&["block", "add", a, "--reason", "before the disk filled up"]);
    }

    // Fill the tmpfs until ENOSPC (bounded: it holds 1 MiB).
    let filler_path = fs.path.join("filler");
    let mut filler = std::fs::File::create(&filler_path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut enospc = false;
    for _ in 0..64 {
        match filler.write_all(&chunk).and_then(|()| filler.sync_data()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                enospc = true;
                break;
            }
            Err(e) => panic!("filler: {e}"),
        }
    }
    drop(filler);
    assert!(enospc, "the 1 MiB tmpfs did not fill up");

    // One change larger than a page (40 entries with the longest reason kept, 256 bytes):
    // it cannot fit in the slack of a page the journal already has, so it needs space the
    // disk no longer has.
    let reason = "x".repeat(256);
    let many: Vec<String> = (80..120).map(|i| format!("198.51.100.{i}")).collect();
    let mut args = vec!["block", "add"];
    args.extend(many.iter().map(String::as_str));
    args.extend(["--reason", &reason]);
    let out = d.cli(&args);
    assert_ne!(
        out.code,
        0,
        "block add on a full disk must not be acknowledged: {}",
        out.both()
    );
    assert!(
        out.stderr.to_lowercase().contains("space"),
        "the refusal says the disk is full: {}",
        out.both()
    );
    for a in &many {
        assert!(
            !listed(&d, &format!("{a}/32")),
            "a refused add is listed anyway"
        );
    }
    // A new list's file is written on another thread while the tables are: on a full disk
    // the import is refused whole, nothing of it is enforced, no temporary file stays.
    let lines: String = (0..5000u32)
        .map(|i| format!("{}\n", Ipv4Addr::from(0xf000_0000 | i)))
        .collect();
    let big = file(&d, "big.txt", &lines);
    let out = d.cli(&["block", "import", &big, "--list", "big"]);
    assert_ne!(out.code, 0, "an import on a full disk: {}", out.both());
    assert_eq!(
        d.check("240.0.0.7")["verdict"],
        "pass",
        "a refused import is enforced"
    );
    assert!(
        prefixes_in(&d, "big").is_empty(),
        "a refused import is listed"
    );
    let lists = d.state_dir.join("lists");
    let left: Vec<_> = std::fs::read_dir(&lists)
        .expect("lists dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".big"))
        .collect();
    assert!(
        left.is_empty(),
        "temporary files left in {lists:?}: {left:?}"
    );

    std::fs::remove_file(&filler_path).expect("remove the filler");
    d.cli_ok(&["block", "add", "198.51.100.81"]);

    let mut want: BTreeSet<String> = host_set(&acked);
    want.insert("198.51.100.81/32".into());
    // A crash first (nothing flushed at exit), then an orderly restart.
    for sig in [libc::SIGKILL, libc::SIGTERM] {
        d.restart(sig);
        let cli = prefixes_in(&d, "cli");
        assert_eq!(
            cli,
            want,
            "after a restart (signal {sig}) the acknowledged entries are back, the refused \
             one is not\ndaemon log:\n{}",
            d.log()
        );
        assert!(
            prefixes_in(&d, "big").is_empty(),
            "the refused import came back"
        );
    }
}

// ---------------------------------------------------------------------------------------
// e. One typo blocks all mail
// ---------------------------------------------------------------------------------------

/// A default route or a prefix with host bits is almost always a typo that would block all
/// (or far more) mail: refused unless forced, with a message saying what was meant.
#[test]
fn block_add_refuses_typos_that_block_everything() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.cli_ok(&["block", "add", "203.0.113.50"]);
    for p in ["0.0.0.0/0", "::/0", "198.51.100.7/0"] {
        let out = refused(&d, &["block", "add", p], &[]);
        assert!(
            out.stderr.contains("--force") || out.stderr.contains("host bits"),
            "block add {p}: the refusal says why (--force or host bits): {}",
            out.both()
        );
    }
    refused(
        &d,
        &["block", "add", "198.51.100.7/24"],
        &["198.51.100.0/24"],
    );
    d.cli_ok(&["block", "add", "192.0.0.0/7", "--force"]);
    assert!(listed(&d, "192.0.0.0/7"), "block add 192.0.0.0/7 --force");
}

// ---------------------------------------------------------------------------------------
// f. rbldnsd exclusions and non-listing values
// ---------------------------------------------------------------------------------------

/// rbldnsd ip4set data as sites have it: `!addr` carves an address out of a wider entry,
/// and entries after a `:127.255.255.254:` default line are not listings (that value is a
/// DNSBL error code). An excluded sender must get through, for real.
#[test]
fn rbldnsd_exclusions_are_honoured() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let f = file(
        &d,
        "ip4set.txt",
        "# rbldnsd ip4set\n\
         198.51.100.0/26\n\
         !198.51.100.7\n\
         :127.255.255.254:\n\
         203.0.113.99\n",
    );
    d.cli_ok(&[
        "block", "import", &f, "--list", "rbl", "--format", "rbldnsd",
    ]);
    let c = d.check("198.51.100.7");
    assert_eq!(c["verdict"], "pass", "excluded by !198.51.100.7: {c:#}");
    let c = d.check("198.51.100.8");
    assert_eq!(c["verdict"], "drop", "in 198.51.100.0/26: {c:#}");
    let c = d.check("203.0.113.99");
    assert_eq!(
        c["verdict"], "pass",
        "listed with the error value 127.255.255.254: {c:#}"
    );
    lab.assert_connects(&listener, BLOCKED4.into(), "excluded by !198.51.100.7");
}

/// The MX interface deleted and created again under its name while the daemon was stopped
/// (a driver reload, a re-created bond or veth): the kernel cut the pinned link. The daemon
/// starts anyway, says why it attaches anew, and the new interface drops a blocked sender.
#[test]
fn a_recreated_interface_gets_a_fresh_link() {
    require_root();
    let mut lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let mut d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.cli_ok(&["block", "add", &BLOCKED4.to_string()]);
    let wait = Duration::from_millis(1500);
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        wait,
        "before the interface went",
    );
    d.terminate();
    lab.recreate_veth();
    let mark = d.log().len();
    d.start();
    let log = d.log();
    assert!(
        log[mark..].contains("lost its interface"),
        "the start says why it attached anew: {}",
        &log[mark..]
    );
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        wait,
        "on the re-created interface",
    );
    lab.assert_connects(&listener, "192.0.2.2".parse().unwrap(), "a clean sender");
}

// ---------------------------------------------------------------------------------------
// g. status --verify in text mode
// ---------------------------------------------------------------------------------------

/// The id of the XDP program attached to the lab's MX veth.
fn attached_prog_id(lab: &Lab) -> u32 {
    let out = lab.mx.ip(&["-j", "-d", "link", "show", "dev", &lab.mx_if]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j link is JSON");
    fn find(v: &Value) -> Option<u32> {
        match v {
            Value::Object(m) => {
                if let Some(id) = m.get("prog").and_then(|p| p["id"].as_u64()) {
                    return Some(id as u32);
                }
                m.values().find_map(find)
            }
            Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    find(&v[0]["xdp"]).unwrap_or_else(|| panic!("no XDP program on {}: {v}", lab.mx_if))
}

/// Sets the TBL24 entry of `addr`'s /24 in the v4 table of the program attached to the
/// lab's MX veth, behind the daemon's back.
fn corrupt_tbl24(lab: &Lab, addr: Ipv4Addr, value: u32) {
    use std::os::fd::{AsFd, AsRawFd};

    use aya::maps::MapData;
    let prog = attached_prog_id(lab);
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog)
        .unwrap_or_else(|| panic!("program {prog} not loaded"));
    let maps = info
        .map_ids()
        .expect("map ids of the program")
        .expect("the kernel reports map ids");
    let data = maps
        .into_iter()
        .filter_map(|id| MapData::from_id(id).ok())
        .find(|m| {
            m.info()
                .is_ok_and(|i| i.name_as_str() == Some(prefilter_common::v4::TBL24))
        })
        .unwrap_or_else(|| panic!("program {prog} has no {} map", prefilter_common::v4::TBL24));
    // TBL24 is the program's global data: one value of 2^24 entries, written through mmap
    // as the agent writes it.
    let len =
        (prefilter_common::v4::TBL24_CHUNKS as usize) * size_of::<prefilter_common::v4::Chunk24>();
    // SAFETY: a shared mapping of the map's value, unmapped below; nothing else holds it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            data.fd().as_fd().as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap {}", prefilter_common::v4::TBL24);
        let entry = p.cast::<u64>().add((u32::from(addr) >> 8) as usize);
        std::ptr::write_volatile(entry, u64::from(value));
        libc::munmap(p, len);
    }
}

/// `status --verify` is what an administrator runs when the filter misbehaves: in text
/// mode too, a mismatch between the kernel tables and the store must be printed and make
/// the command fail.
#[test]
fn status_verify_text_reports_a_mismatch() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.cli_ok(&["block", "add", "203.0.113.0/24"]);
    d.cli_ok(&["status", "--verify"]);
    // The /24 now passes in the kernel while the store says drop.
    corrupt_tbl24(&lab, Ipv4Addr::new(203, 0, 113, 0), 0);
    let json = d.cli(&["status", "--verify", "--json"]);
    let v: Value = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| panic!("status --verify --json: {e}: {}", json.both()));
    assert_eq!(
        v["verify"]["ok"], false,
        "the corruption is a mismatch: {:#}",
        v["verify"]
    );
    let out = d.cli(&["status", "--verify"]);
    assert_ne!(
        out.code,
        0,
        "status --verify (text) with a mismatch must fail: {}",
        out.both()
    );
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("203.0.113.0"),
        "status --verify (text) names the mismatch: {}",
        out.both()
    );
}

// ---------------------------------------------------------------------------------------
// h. A TTL that overflows
// ---------------------------------------------------------------------------------------

/// An absurd `--ttl` is an error naming the TTL, not an entry that expires at once (or a
/// daemon that panics).
#[test]
fn absurd_ttl_is_refused() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let out = refused(
        &d,
        &["block", "add", "198.51.100.78", "--ttl", "213503982334601d"],
        &[],
    );
    assert!(
        out.stderr.to_lowercase().contains("ttl"),
        "the refusal names the TTL: {}",
        out.both()
    );
    assert!(!listed(&d, "198.51.100.78/32"));
    assert!(!d.log().contains("panicked"), "{}", d.log());
    d.cli_ok(&["status"]);
}

// ---------------------------------------------------------------------------------------
// i. Output into a closed pipe
// ---------------------------------------------------------------------------------------

/// `prefilter ARGS | head -1` in bash, pipefail off: (the CLI's own exit status from
/// PIPESTATUS, its stderr, what head printed).
fn piped_to_head(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg("set +o pipefail; \"$@\" | head -1; echo \"pipestatus ${PIPESTATUS[0]}\" >&2")
        .arg("bash")
        .arg(binary())
        .arg("--socket")
        .arg(&d.socket)
        .args(args);
    c.env_remove("PREFILTER_SOCKET");
    let out = run_bounded(c, CLI_WITHIN);
    let code = out
        .stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("pipestatus "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pipestatus: {}", out.both()));
    (code, out.stderr, out.stdout)
}

/// Administrators pipe the CLI into `head`, `less` and `grep -q`: a reader that stops early
/// must end the CLI quietly (exit 0, or 141 for SIGPIPE), never with a panic.
#[test]
fn cli_output_into_a_closed_pipe_does_not_panic() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let mut text = String::new();
    // A few thousand /32s in 240.0.0.0/4 (reserved, never routed; list content only).
    for i in 0..4000u32 {
        let _ = writeln!(text, "{}", Ipv4Addr::from(0xf000_0000 | i));
    }
    let f = file(&d, "many.txt", &text);
    d.cli_ok(&["block", "import", &f, "--list", "many"]);
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    for args in [
        &["status"][..],
        &["block", "list"],
        &["check", "198.51.100.7"],
    ] {
        let (code, stderr, stdout) = piped_to_head(&d, args);
        assert!(
            !stderr.contains("panicked"),
            "prefilter {} | head -1 panicked:\n{stderr}",
            args.join(" ")
        );
        assert!(
            code == 0 || code == 141,
            "prefilter {} | head -1: exit {code}, expected 0 or 141 (SIGPIPE):\n{stderr}",
            args.join(" ")
        );
        assert!(!stdout.is_empty(), "head printed nothing for {args:?}");
    }
}

// ---------------------------------------------------------------------------------------
// j. Logs written to a file
// ---------------------------------------------------------------------------------------

/// journald, syslog and log files get the daemon's output through a pipe or a file: no
/// terminal colour codes in it.
#[test]
fn daemon_log_to_a_file_has_no_ansi_escapes() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.cli_ok(&["block", "add", "198.51.100.7", "--reason", "log me"]);
    d.cli_ok(&["block", "del", "198.51.100.7"]);
    d.cli_ok(&["reload"]);
    let log = d.log();
    assert!(
        log.lines().filter(|l| !l.starts_with("-----")).count() >= 3,
        "the daemon logged something: {log}"
    );
    assert!(
        !log.contains("\x1b["),
        "ANSI escapes in the daemon's log file:\n{}",
        log.replace('\x1b', "\\x1b")
    );
}

// ---------------------------------------------------------------------------------------
// k. Smaller defects
// ---------------------------------------------------------------------------------------

/// The name of group `gid`.
fn group_name(gid: u32) -> String {
    // SAFETY: getgrgid returns null or a pointer to a static entry, read at once.
    unsafe {
        let gr = libc::getgrgid(gid);
        assert!(!gr.is_null(), "no group {gid}");
        CStr::from_ptr((*gr).gr_name).to_string_lossy().into_owned()
    }
}

/// A user refused on the socket is told which group to join: the socket's actual group
/// (from `socket_group`), not a hard-coded "prefilter".
#[test]
fn permission_error_names_the_sockets_group() {
    require_root();
    let lab = Lab::new();
    let mut d = Daemon::prepare(&lab.mx, &lab.mx_if);
    // A group that exists on Debian and that nobody (nogroup) is not in.
    d.socket_group = "adm".into();
    d.write_config(&d.config_text(DEFAULT_XDP, ""));
    d.start();
    let group = group_name(std::fs::metadata(&d.socket).expect("socket").gid());
    assert_eq!(
        group, "adm",
        "the daemon gave the socket the configured group"
    );
    let out = d.cli_as("nobody", "nogroup", &["status"]);
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(
        out.stderr.to_lowercase().contains("permission denied"),
        "{}",
        out.both()
    );
    let words: Vec<&str> = out
        .stderr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .collect();
    assert!(
        words.contains(&group.as_str()),
        "the message names the socket's group {group}: {}",
        out.both()
    );
    assert!(
        !out.stderr.contains("prefilter group"),
        "the message names a group the socket does not have: {}",
        out.both()
    );
}

/// `import --strict` refuses a file with bad lines; the administrator fixes them all in
/// one pass only if every bad line is named.
#[test]
fn strict_import_names_every_bad_line() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let f = file(
        &d,
        "three-bad.txt",
        "198.51.100.1\nnot-a-prefix\n198.51.100.2\n300.1.2.3\n198.51.100.3\n192.0.2.0/33\n",
    );
    let out = refused(
        &d,
        &["block", "import", &f, "--list", "strict", "--strict"],
        &[],
    );
    for n in [2, 4, 6] {
        assert!(
            out.stderr.contains(&format!("line {n}")),
            "import --strict names bad line {n}: {}",
            out.both()
        );
    }
}

/// A list name that cannot be one is a client error (400) whichever endpoint gets it, not
/// an internal error.
#[test]
fn invalid_list_name_is_a_client_error() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let out = refused(
        &d,
        &["block", "add", "198.51.100.9", "--list", "Bad Name"],
        &[],
    );
    assert!(out.stderr.contains("Bad Name"), "{}", out.both());
    let body = br#"{"prefixes":["198.51.100.9"],"list":"Bad Name"}"#;
    for (head, body) in [
        ("POST /v1/block", &body[..]),
        ("POST /v1/allow", &body[..]),
        (
            "POST /v1/block/import?list=Bad%20Name",
            &b"198.51.100.9\n"[..],
        ),
    ] {
        let req = format!(
            "{head} HTTP/1.1\r\nHost: prefilter\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (status, answer) = d.control_raw(&[req.as_bytes(), body]);
        assert_eq!(status, 400, "{head} with list \"Bad Name\": {answer}");
    }
    assert!(!listed(&d, "198.51.100.9/32"));
}

/// Dashboards graph per-list hits from the moment a list exists: the series is exported
/// with 0 right after an import, not only after its first hit.
#[test]
fn list_hits_series_exists_after_import() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let f = file(&d, "hits.txt", "198.51.100.64/27\n");
    d.cli_ok(&["block", "import", &f, "--list", "hitsnew"]);
    let m = d.metrics_text();
    assert!(
        m.lines()
            .any(|l| l == "prefilter_xdp_list_hits_total{list=\"hitsnew\"} 0"),
        "no zero hits series for list hitsnew:\n{}",
        m.lines()
            .filter(|l| l.contains("list_hits"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A config list entry keeps its creation time across restarts: `block list` must not
/// claim a years-old entry was created at the last restart.
#[test]
fn config_entry_created_survives_restart() {
    require_root();
    let lab = Lab::new();
    let mut d = Daemon::start_new(
        &lab.mx,
        &lab.mx_if,
        "[[block]]\nname = \"cfg\"\nprefixes = [\"203.0.113.0/24\"]\n",
    );
    let created = |d: &Daemon| -> u64 {
        let l = d.block_list();
        l.as_array()
            .unwrap()
            .iter()
            .find(|e| e["list"] == "cfg")
            .and_then(|e| e["created"].as_u64())
            .unwrap_or_else(|| panic!("no created time for the cfg entry: {l:#}"))
    };
    let before = created(&d);
    // A restart in the same second could not tell the difference: let the clock move on.
    poll(Duration::from_secs(5), || {
        (unix_now() > before).then_some(())
    })
    .expect("the clock moves");
    d.restart(libc::SIGTERM);
    assert_eq!(
        created(&d),
        before,
        "the config entry's created time changed across a restart"
    );
}

// ---------------------------------------------------------------------------------------
// l. Memory of `block list --json`
// ---------------------------------------------------------------------------------------

/// Runs the CLI with its output discarded (a 200k-entry listing is tens of MB), bounded.
fn cli_discard(d: &Daemon, args: &[&str]) -> i32 {
    let mut child = Command::new(binary())
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env_remove("PREFILTER_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the CLI");
    let deadline = Instant::now() + CLI_WITHIN;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "prefilter {} did not finish within {CLI_WITHIN:?}",
                args.join(" ")
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Monitoring scripts list the block list again and again: the daemon's memory must not
/// grow with every listing.
#[test]
fn block_list_json_does_not_grow_the_daemon() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    // 200k host /32s in 240.0.0.0/4 (reserved, never routed; list content only).
    let mut text = String::with_capacity(200_000 * 14);
    for i in 0..200_000u32 {
        let _ = writeln!(text, "{}", Ipv4Addr::from(0xf000_0000 | i));
    }
    let f = file(&d, "200k.txt", &text);
    drop(text);
    d.cli_ok(&["block", "import", &f, "--list", "big200k"]);
    let rss0 = d.rss_kib();
    for i in 0..4 {
        let code = cli_discard(&d, &["block", "list", "--json"]);
        assert_eq!(code, 0, "block list --json #{i}");
        eprintln!("after block list --json #{i}: RSS {} KiB", d.rss_kib());
    }
    let rss1 = d.rss_kib();
    assert!(
        rss1 < rss0 + 150 * 1024,
        "the daemon's RSS grew from {rss0} to {rss1} KiB over 4 listings of 200k entries"
    );
}

/// An IPv6 list replaced near `[limits] v6_entries`: a replacement that fits is applied
/// however often it is repeated (the entries it deletes are not reused for a second, and
/// the next replacement must not find the table full meanwhile), and one that does not fit
/// is refused with the table named and the old list still in force in the kernel, not only
/// in the store (`status --verify`).
#[test]
fn ipv6_list_replaced_near_capacity() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "[limits]\nv6_entries = 1024\n");
    let hosts = |net: u16, n: u16| -> Vec<String> {
        (1..=n)
            .map(|i| format!("2001:db8:{net:x}::{i:x}"))
            .collect()
    };
    let as_set =
        |h: &[String]| -> BTreeSet<String> { h.iter().map(|a| format!("{a}/128")).collect() };
    let (a, b, c) = (hosts(7, 1000), hosts(8, 1000), hosts(9, 1100));
    let fa = file(&d, "a.txt", &(a.join("\n") + "\n"));
    let fb = file(&d, "b.txt", &(b.join("\n") + "\n"));
    let fc = file(&d, "c.txt", &(c.join("\n") + "\n"));
    d.cli_ok(&["block", "import", &fa, "--list", "v6"]);
    for (f, want) in [(&fb, &b), (&fa, &a), (&fb, &b), (&fa, &a)] {
        d.cli_ok(&["block", "import", f, "--list", "v6", "--replace", "--force"]);
        assert_eq!(prefixes_in(&d, "v6"), as_set(want));
        d.cli_ok(&["status", "--verify"]);
    }
    refused(
        &d,
        &[
            "block",
            "import",
            &fc,
            "--list",
            "v6",
            "--replace",
            "--force",
        ],
        &["nothing applied", "IPv6 table full", "v6_entries"],
    );
    assert_eq!(prefixes_in(&d, "v6"), as_set(&a));
    d.cli_ok(&["status", "--verify"]);
    let out = d.cli_ok(&["check", "2001:db8:7::5"]);
    assert!(out.contains("drop"), "the old list still blocks: {out}");
}

/// A change that leaves the journal long enough to fold is answered first and folded right
/// after, by the daemon on its own (folding rewrites whole list files, 0.1–0.2 s for a
/// million entries, which the one change that tipped the journal used to wait for). No
/// later change is needed to trigger it, and nothing is lost by it or by a kill -9 after it.
#[test]
fn the_journal_is_folded_after_the_change_that_filled_it() {
    require_root();
    let lab = Lab::new();
    let mut d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    // Reserved space, never routed: these entries only sit in the store and the tables.
    let host = |i: u32| Ipv4Addr::from(0xf001_0000 + i).to_string();
    let first: Vec<String> = (0..12_000).map(host).collect();
    let f = file(&d, "first.txt", &(first.join("\n") + "\n"));
    d.cli_ok(&["block", "import", &f, "--list", "big"]);
    let journal = d.state_dir.join("journal");
    // 6,000 removed and 6,000 added: 12,000 records, past the 10,000 that make it due.
    let mut patch = String::new();
    for a in &first[..6_000] {
        writeln!(patch, "-{a}").expect("write to a String");
    }
    for i in 20_000..26_000 {
        writeln!(patch, "+{}", host(i)).expect("write to a String");
    }
    let p = file(&d, "patch.diff", &patch);
    d.cli_ok(&["block", "import", &p, "--list", "big", "--patch"]);
    let folded = poll(Duration::from_secs(30), || {
        (!journal.exists() && d.log().contains("journal folded into the list files")).then_some(())
    });
    assert!(
        folded.is_some(),
        "the journal was not folded after the change: {}",
        d.log()
    );
    let want: BTreeSet<String> = first[6_000..]
        .iter()
        .cloned()
        .chain((20_000..26_000).map(host))
        .map(|a| format!("{a}/32"))
        .collect();
    assert_eq!(prefixes_in(&d, "big"), want);
    // Read back from the list file alone: the journal is gone.
    d.kill9();
    d.start();
    assert_eq!(prefixes_in(&d, "big"), want, "after kill -9 and a restart");
    d.cli_ok(&["status", "--verify"]);
}

// ---------------------------------------------------------------------------------------
// Defects found trying the agent as an admin (session of 2026-12-01)
// ---------------------------------------------------------------------------------------

/// The strongest verdict wins, learned or listed: a `--ttl` observe (shadow mode) on an
/// address a list drops must not let it through.
#[test]
fn a_softer_learned_verdict_never_lifts_a_listed_drop() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let a = BLOCKED4.to_string();
    d.cli_ok(&["block", "add", &a]);
    let out = d.cli_ok(&["block", "add", &a, "--ttl", "1h", "--action", "observe"]);
    assert!(
        out.contains("cli-ttl"),
        "the answer names where it went: {out}"
    );
    let c = d.check(&a);
    assert_eq!(c["verdict"], "drop", "check: {c}");
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        Duration::from_millis(1500),
        "listed drop under a learned observe",
    );
    // Without the listed drop the learned observe applies: passed (and counted).
    d.cli_ok(&["block", "del", &a, "--list", "cli"]);
    lab.assert_connects(&listener, BLOCKED4.into(), "the learned observe alone");
}

/// A config list may not take over a list the CLI filled: the reload is refused whole,
/// naming the list, and the CLI's entries stay in force.
#[test]
fn a_config_list_cannot_take_over_a_cli_list() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let a = BLOCKED4.to_string();
    d.cli_ok(&["block", "add", &a, "--list", "local"]);
    d.write_config(&d.config_text(
        DEFAULT_XDP,
        "[[block]]\nname = \"local\"\nprefixes = [\"203.0.113.0/24\"]\n",
    ));
    let out = d.cli(&["reload"]);
    assert_ne!(out.code, 0, "reload taking over list local: {}", out.both());
    assert!(
        out.stderr.contains("\"local\"") && out.stderr.contains("choose another name"),
        "the refusal names the list: {}",
        out.both()
    );
    assert!(listed(&d, &format!("{a}/32")), "the CLI entry is gone");
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        Duration::from_millis(1500),
        "after the refused reload",
    );
    // The reserved names are refused by the config check itself, with key and line.
    d.write_config(&d.config_text(
        DEFAULT_XDP,
        "[[block]]\nname = \"cli\"\nprefixes = [\"203.0.113.0/24\"]\n",
    ));
    let out = d.cli(&["reload"]);
    assert!(
        out.code != 0 && out.stderr.contains("block[0].name"),
        "a config list named cli: {}",
        out.both()
    );
    assert!(listed(&d, &format!("{a}/32")));
}

/// A reload whose new interface cannot be attached is refused, as `run` would refuse it,
/// and the filter stays as it was.
#[test]
fn a_reload_that_cannot_attach_is_refused() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.cli_ok(&["block", "add", &BLOCKED4.to_string()]);
    let text = d
        .config_text("mode = \"native\"\nports = [25]", "")
        .replace(
            &format!("interfaces = [\"{}\"]", lab.mx_if),
            &format!("interfaces = [\"{}\", \"lo\"]", lab.mx_if),
        );
    d.write_config(&text);
    let out = d.cli(&["reload"]);
    assert_ne!(out.code, 0, "reload attaching lo natively: {}", out.both());
    assert!(
        out.stderr.contains("lo") && out.stderr.contains("previous one stays"),
        "the refusal names the interface: {}",
        out.both()
    );
    let attached = d.status()["interfaces"].to_string();
    assert!(
        !attached.contains("\"lo\""),
        "lo attached after a refused reload: {attached}"
    );
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        Duration::from_millis(1500),
        "after the refused reload",
    );
}

/// One byte that is not UTF-8 (a Latin-1 name in a comment) costs its line at most, never
/// the import; reasons never carry control characters to a terminal or a table.
#[test]
fn a_latin1_comment_and_a_forged_reason_do_no_harm() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    let path = d.dir.join("latin1.txt");
    std::fs::write(
        &path,
        b"# J\xfcrgen's list\n198.51.100.30\n198.51.100.\xff\n198.51.100.31\n",
    )
    .expect("write");
    let out = d.cli(&[
        "block",
        "import",
        path.to_str().expect("path"),
        "--list",
        "latin",
        "--format",
        "plain",
    ]);
    assert!(
        out.both().contains("line 3"),
        "the bad line is named: {}",
        out.both()
    );
    assert_eq!(
        prefixes_in(&d, "latin"),
        host_set(&["198.51.100.30", "198.51.100.31"])
    );
    let forged = format!("line1\n192.0.2.99/32\tdrop\x1b[31m{}", "x".repeat(1000));
    d.cli_ok(&["block", "add", "198.51.100.32", "--reason", &forged]);
    let list = d.cli_ok(&["block", "list"]);
    let row = list
        .lines()
        .find(|l| l.contains("198.51.100.32"))
        .expect("the entry is listed");
    assert!(
        !list.contains('\x1b') && !list.contains("192.0.2.99/32\tdrop"),
        "control characters reached the table: {list:?}"
    );
    assert!(row.len() < 600, "the reason is cut: {} bytes", row.len());
}
