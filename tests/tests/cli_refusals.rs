//! What the CLI and the daemon refuse, and that a refusal changes nothing.
//!
//! Every refused command must say what is wrong in words an administrator can act on (the
//! bad value, the line, the key), exit non-zero, and leave the policy exactly as it was
//! (`block list --json` compared before and after). A bad config keeps `prefilter run` from
//! starting at all (exit 64, no socket, nothing attached), and a bad config given to a
//! running daemon (`reload`, SIGHUP) leaves the previous one in force.
//!
//! Needs root and a built daemon: `cargo build --release -p prefilter`, then
//! `cargo test --release -p prefilter-tests --test cli_refusals -- --test-threads=1`.

use std::{os::unix::net::UnixListener, path::Path, process::Command, time::Duration};

use prefilter_tests::{
    daemon::{
        BLOCKED4, CLEAN4, DEFAULT_XDP, Daemon, Lab, Listener, RESET4, binary, list_entries, poll,
        run_bounded,
    },
    require_root,
};
use serde_json::Value;

/// Long enough for a dropped SYN to time out, shorter than its retransmission.
const SHORT_TIMEOUT: Duration = Duration::from_millis(700);

/// 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
        + 1
}

/// A refused CLI command: non-zero exit, every `expect` in its stderr, and `block list`
/// exactly as before.
fn refused(d: &Daemon, args: &[&str], expect: &[&str]) {
    let before = d.block_list();
    let allow_before = d.json(&["allow", "list", "--json"]);
    let out = d.cli(args);
    assert_ne!(
        out.code,
        0,
        "prefilter {} must be refused: {}",
        args.join(" "),
        out.both()
    );
    for e in expect {
        assert!(
            out.stderr.contains(e),
            "prefilter {}: the message must say {e:?}: {}",
            args.join(" "),
            out.both()
        );
    }
    assert_eq!(
        d.block_list(),
        before,
        "prefilter {} changed the block list",
        args.join(" ")
    );
    assert_eq!(
        d.json(&["allow", "list", "--json"]),
        allow_before,
        "prefilter {} changed the allow list",
        args.join(" ")
    );
    eprintln!(
        "refused as expected: prefilter {}\n  {}",
        args.join(" "),
        out.stderr.trim()
    );
}

const LOCAL_LIST: &str =
    "[[block]]\nname = \"local\"\naction = \"drop\"\nprefixes = [\"203.0.113.0/24\"]\n";

#[test]
fn bad_cli_input_changes_nothing() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, LOCAL_LIST);
    d.cli_ok(&["block", "add", "198.51.100.7", "--reason", "keep me"]);
    d.cli_ok(&["block", "add", "2001:db8:bad::/48", "--ttl", "1h"]);
    // (A named list: the default one collides with the block list "cli", see
    // allow_add_after_block_add below.)
    d.cli_ok(&["allow", "add", "192.0.2.2", "--list", "partners"]);

    refused(
        &d,
        &["block", "add", "300.1.2.3"],
        &["300.1.2.3", "not an IP address"],
    );
    // One bad prefix among good ones: none of them is applied.
    refused(
        &d,
        &["block", "add", "192.0.2.9", "300.1.2.3", "198.51.100.9"],
        &["300.1.2.3", "nothing changed"],
    );
    refused(
        &d,
        &["block", "add", "192.0.2.0/33"],
        &["192.0.2.0/33", "/33"],
    );
    refused(&d, &["allow", "add", "300.1.2.3"], &["300.1.2.3"]);
    refused(
        &d,
        &["block", "add", "192.0.2.9", "--action", "bogus"],
        &["bogus", "--action", "drop"],
    );
    refused(
        &d,
        &["block", "add", "192.0.2.9", "--ttl", "1y"],
        &["1y", "unit"],
    );
    refused(&d, &["check", "notanip"], &["notanip", "not an IP address"]);
    refused(
        &d,
        &["block", "del", "192.0.2.99"],
        &["no such entry", "nothing removed"],
    );

    // import --strict with a bad third line: nothing applied, the line named.
    let file = d.dir.join("mixed.txt");
    std::fs::write(
        &file,
        "192.0.2.16/28\n198.51.100.8\nnot-a-prefix\n203.0.113.77 # comment\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    refused(
        &d,
        &["block", "import", f, "--list", "mixed", "--strict"],
        &["line 3", "nothing applied"],
    );
    assert_eq!(list_entries(&d.status(), "mixed"), None);

    // Without --strict: the good lines applied, the bad one listed with its number.
    let before = d.block_list();
    let out = d.cli(&["block", "import", f, "--list", "mixed"]);
    assert_eq!(out.code, 0, "{}", out.both());
    assert!(
        out.stdout.contains("1 bad lines skipped"),
        "import says it skipped a line: {}",
        out.both()
    );
    assert!(
        out.stderr.contains("line 3") && out.stderr.contains("not-a-prefix"),
        "import lists the bad line with its number: {}",
        out.both()
    );
    let after = d.block_list();
    let mut added: Vec<String> = after
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !before.as_array().unwrap().contains(e))
        .map(|e| {
            format!(
                "{} {}",
                e["list"].as_str().unwrap(),
                e["prefix"].as_str().unwrap()
            )
        })
        .collect();
    added.sort();
    assert_eq!(
        added,
        [
            "mixed 192.0.2.16/28",
            "mixed 198.51.100.8/32",
            "mixed 203.0.113.77/32"
        ],
        "exactly the good lines were added"
    );
    assert_eq!(
        after.as_array().unwrap().len(),
        before.as_array().unwrap().len() + 3,
        "nothing else changed"
    );
    let json = d.json(&["block", "import", f, "--list", "mixed", "--json"]);
    assert_eq!(json["errors"][0]["line"], 3, "{json:#}");
    assert_eq!(json["applied"], 3, "{json:#}");

    // Last, as it fails on wording alone: the hint must point at the allow list.
    refused(
        &d,
        &["allow", "del", "192.0.2.99"],
        &["no such entry", "prefilter allow list"],
    );
}

/// `block add` and `allow add` both default to a list named "cli"; the second one must not
/// be refused because the first created that list with the other kind.
#[test]
fn allow_add_after_block_add() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    let out = d.cli(&["allow", "add", "192.0.2.2"]);
    assert_eq!(
        out.code,
        0,
        "allow add after block add (both without --list) must work: {}",
        out.both()
    );
    let allowed = d.json(&["allow", "list", "--json"]);
    assert!(
        allowed
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["prefix"] == "192.0.2.2/32"),
        "{allowed:#}"
    );
    assert_eq!(d.check("192.0.2.2")["verdict"], "pass");
    assert_eq!(d.check("198.51.100.7")["verdict"], "drop");
}

/// The CLI's answer when there is no daemon behind the socket: one sentence, non-zero.
fn not_running(d: &Daemon, socket: &Path, args: &[&str]) {
    let out = d.cli_at(socket, args);
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(
        out.stderr.contains("daemon is not running"),
        "prefilter --socket {} {}: {}",
        socket.display(),
        args.join(" "),
        out.both()
    );
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one sentence: {}",
        out.both()
    );
    assert!(out.stdout.is_empty(), "{}", out.both());
}

#[test]
fn cli_says_when_it_cannot_reach_the_daemon() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");

    // No socket at all.
    let missing = d.dir.join("missing.sock");
    for args in [
        &["status"][..],
        &["block", "list"],
        &["block", "add", "198.51.100.7"],
        &["check", "192.0.2.2"],
        &["reload"],
    ] {
        not_running(&d, &missing, args);
    }
    // A stale socket left by a crashed daemon: nobody listens.
    let stale = d.dir.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    not_running(&d, &stale, &["status"]);

    // A socket the user may not open (mode 0660, root's group: "socket_group" is empty).
    let setpriv = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];
    let can_drop = Command::new("setpriv")
        .args(setpriv)
        .arg(binary())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        can_drop,
        "the permission case needs setpriv (util-linux) to run the CLI as nobody"
    );
    let mut c = Command::new("setpriv");
    c.args(setpriv)
        .arg(binary())
        .arg("--socket")
        .arg(&d.socket)
        .arg("status");
    let out = run_bounded(c, Duration::from_secs(30));
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(
        out.stderr.to_lowercase().contains("permission denied"),
        "as nobody: {}",
        out.both()
    );
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.both());
    // And root still can.
    d.cli_ok(&["status"]);
}

/// `prefilter run` with `text` as its config must exit 64 before doing anything, naming the
/// key and its line.
fn run_refuses(d: &Daemon, lab: &Lab, case: &str, text: &str, key: &str, line_needle: &str) {
    let path = d.dir.join(format!("{case}.toml"));
    std::fs::write(&path, text).unwrap();
    let line = line_of(text, line_needle);
    let out = d.run_once(&path);
    assert_eq!(
        out.code,
        64,
        "{case}: exit status\n{}\nconfig:\n{text}",
        out.both()
    );
    let want = format!("{}:{line}: {key}", path.display());
    assert!(
        out.stderr.contains(&want),
        "{case}: stderr must name the key and line ({want}):\n{}",
        out.both()
    );
    assert!(!d.socket.exists(), "{case}: the daemon opened its socket");
    assert!(
        !d.bpffs.join("prefilter").exists(),
        "{case}: the daemon created its pin directory"
    );
    let link = lab.mx.ip(&["link", "show", "dev", &lab.mx_if]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains(" xdp"),
        "{case}: something was attached"
    );
    eprintln!("{case}: refused as expected: {}", out.stderr.trim());
}

#[test]
fn run_refuses_bad_configs() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::prepare(&lab.mx, &lab.mx_if);

    // The good config starts (so the refusals below are about the one bad line).
    let good = d.config_text(DEFAULT_XDP, LOCAL_LIST);
    let ok = d.dir.join("good.toml");
    std::fs::write(&ok, &good).unwrap();
    let text = d.config_text(&format!("{DEFAULT_XDP}\nbogus_key = 1"), "");
    run_refuses(&d, &lab, "unknown-key", &text, "xdp.bogus_key", "bogus_key");

    let text = d.config_text("mode = \"auto\"\nports = \"25\"", "");
    run_refuses(&d, &lab, "wrong-type", &text, "xdp.ports", "ports = \"25\"");

    let text = d.config_text(
        DEFAULT_XDP,
        "[[block]]\nname = \"local\"\nprefixes = [\n  \"203.0.113.0/24\",\n  \"300.1.2.3\",\n]\n",
    );
    run_refuses(
        &d,
        &lab,
        "bad-cidr",
        &text,
        "block[0].prefixes[1]",
        "\"300.1.2.3\"",
    );

    let text = good.replace(
        &format!("interfaces = [\"{}\"]", lab.mx_if),
        "interfaces = [\"nosuchif0\"]",
    );
    run_refuses(
        &d,
        &lab,
        "unknown-interface",
        &text,
        "xdp.interfaces[0]",
        "nosuchif0",
    );

    let text = d.config_text("mode = \"auto\"\nports = [0]", "");
    run_refuses(&d, &lab, "port-0", &text, "xdp.ports[0]", "ports = [0]");

    // The good one does start (then it is killed by the harness).
    let mut d = d;
    d.write_config(&good);
    d.start();
}

/// Polls `check IP --json` until its verdict is `want` (SIGHUP is asynchronous).
fn wait_verdict(d: &Daemon, ip: &str, want: &str) -> Value {
    poll(Duration::from_secs(5), || {
        let c = d.check(ip);
        (c["verdict"] == want).then_some(c)
    })
    .unwrap_or_else(|| panic!("check {ip}: still {:#} after 5 s\n{}", d.check(ip), d.log()))
}

#[test]
fn reload_refuses_a_broken_config_and_applies_a_valid_one() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, LOCAL_LIST);
    let c = d.check("203.0.113.9");
    assert_eq!(
        (&c["verdict"], &c["list"]),
        (&"drop".into(), &"local".into()),
        "{c:#}"
    );
    lab.assert_dropped(&listener, RESET4.into(), SHORT_TIMEOUT, "config list local");
    let before = d.block_list();

    // `prefilter reload` with a bad prefix: refused, the old config stays.
    let broken = d.config_text(
        DEFAULT_XDP,
        "[[block]]\nname = \"local\"\nprefixes = [\"203.0.113.0/24\", \"300.1.2.3\"]\n",
    );
    d.write_config(&broken);
    let out = d.cli(&["reload"]);
    assert_ne!(out.code, 0, "reload of a broken config: {}", out.both());
    let line = line_of(&broken, "300.1.2.3");
    for want in [
        format!(":{line}: block[0].prefixes[1]"),
        "300.1.2.3".to_owned(),
    ] {
        assert!(
            out.stderr.contains(&want),
            "reload must name the problem ({want}): {}",
            out.both()
        );
    }
    eprintln!("reload refused as expected: {}", out.stderr.trim());
    assert_eq!(d.block_list(), before, "a refused reload changed the lists");
    let c = d.check("203.0.113.9");
    assert_eq!(
        (&c["verdict"], &c["list"]),
        (&"drop".into(), &"local".into()),
        "{c:#}"
    );
    lab.assert_dropped(
        &listener,
        RESET4.into(),
        SHORT_TIMEOUT,
        "old config in force",
    );

    // A syntax error too.
    d.write_config(&(d.config_text(DEFAULT_XDP, LOCAL_LIST) + "[xdp\n"));
    let out = d.cli(&["reload"]);
    assert_ne!(
        out.code,
        0,
        "reload of a config with a syntax error: {}",
        out.both()
    );
    assert_eq!(d.block_list(), before);

    // A valid config with changed lists: applied at once.
    let valid = d.config_text(
        DEFAULT_XDP,
        "[[block]]\nname = \"local\"\nprefixes = [\"203.0.113.128/25\"]\n\n\
         [[block]]\nname = \"extra\"\naction = \"reset\"\nprefixes = [\"198.51.100.7\"]\n",
    );
    d.write_config(&valid);
    let out = d.cli_ok(&["reload"]);
    assert!(out.contains("reloaded"), "{out}");
    assert_eq!(d.check("203.0.113.9")["verdict"], "pass");
    assert_eq!(d.check("203.0.113.200")["list"], "local");
    let c = d.check("198.51.100.7");
    assert_eq!(
        (&c["verdict"], &c["list"]),
        (&"reset".into(), &"extra".into()),
        "{c:#}"
    );
    lab.assert_connects(&listener, RESET4.into(), "no longer in list local");
    lab.assert_refused(&listener, BLOCKED4.into(), "new list extra (reset)");

    // SIGHUP with a broken config: refused (logged), the running config stays.
    let in_force = d.block_list();
    let log_before = d.log().len();
    d.write_config(&valid.replace(&d.metrics.to_string(), "nowhere"));
    d.signal(libc::SIGHUP);
    let logged = poll(Duration::from_secs(5), || {
        let log = d.log();
        let new = &log[log_before..];
        new.contains("SIGHUP").then(|| new.to_owned())
    })
    .unwrap_or_else(|| panic!("nothing logged for SIGHUP:\n{}", d.log()));
    assert!(
        logged.contains("config refused") && logged.contains("metrics.listen"),
        "the log must say why the SIGHUP reload was refused:\n{logged}"
    );
    assert_eq!(
        d.block_list(),
        in_force,
        "a refused SIGHUP changed the lists"
    );
    assert_eq!(d.check("198.51.100.7")["verdict"], "reset");

    // SIGHUP with a valid config: applied.
    d.write_config(&d.config_text(DEFAULT_XDP, LOCAL_LIST));
    d.signal(libc::SIGHUP);
    let c = wait_verdict(&d, "203.0.113.9", "drop");
    assert_eq!(c["list"], "local", "{c:#}");
    assert_eq!(d.check("198.51.100.7")["verdict"], "pass");
    assert_eq!(
        list_entries(&d.status(), "extra"),
        None,
        "list extra removed"
    );
    lab.assert_connects(&listener, BLOCKED4.into(), "list extra gone after SIGHUP");
    lab.assert_dropped(&listener, RESET4.into(), SHORT_TIMEOUT, "list local back");
    lab.assert_connects(&listener, CLEAN4.into(), "clean source throughout");
}

/// One raw HTTP exchange on the control socket: (status code, body).
fn raw_request(socket: &Path, head: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "{head} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Bad API bodies (what curl or a script might send) get a 4xx naming the problem; nothing
/// changes and the daemon keeps serving.
#[test]
fn bad_api_requests_change_nothing() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    let before = d.block_list();
    struct Case {
        head: &'static str,
        body: &'static str,
        status: u16,
        says: &'static str,
    }
    let cases = [
        Case {
            head: "POST /v1/block",
            body: "not json",
            status: 400,
            says: "bad request body",
        },
        Case {
            head: "POST /v1/block",
            body: r#"{"prefixes":["192.0.2.9"],"bogus":1}"#,
            status: 400,
            says: "bogus",
        },
        Case {
            head: "POST /v1/block",
            body: r#"{"prefixes":["192.0.2.9"],"action":"explode"}"#,
            status: 400,
            says: "explode",
        },
        Case {
            head: "POST /v1/block",
            body: r#"{"prefixes":["192.0.2.9","300.1.1.1"]}"#,
            status: 400,
            says: "300.1.1.1",
        },
        Case {
            head: "POST /v1/block",
            body: r#"{"prefixes":[]}"#,
            status: 400,
            says: "no prefix",
        },
        Case {
            head: "POST /v1/block/delete",
            body: r#"{"prefixes":"198.51.100.7"}"#,
            status: 400,
            says: "bad request body",
        },
        Case {
            head: "GET /v1/check?ip=nonsense",
            body: "",
            status: 400,
            says: "nonsense",
        },
        Case {
            head: "POST /v1/block/import?list=../../etc",
            body: "192.0.2.9\n",
            status: 400,
            says: "invalid list name",
        },
        Case {
            head: "GET /v1/nothing",
            body: "",
            status: 404,
            says: "no such endpoint",
        },
        Case {
            head: "DELETE /v1/block",
            body: "",
            status: 405,
            says: "not supported",
        },
    ];
    for c in cases {
        let (status, body) = raw_request(&d.socket, c.head, c.body.as_bytes());
        assert_eq!(status, c.status, "{} {}: {body}", c.head, c.body);
        assert!(body.contains(c.says), "{} {}: {body}", c.head, c.body);
        let v: Value = serde_json::from_str(&body).expect("errors are JSON");
        assert!(v["error"].is_string(), "{body}");
    }
    // A garbage request line is answered too.
    let (status, _) = raw_request(&d.socket, "GARBAGE", b"");
    assert!(status == 400 || status == 405 || status == 404, "{status}");
    assert_eq!(d.block_list(), before, "nothing changed");
    assert_eq!(d.status()["interfaces"].as_array().unwrap().len(), 1);
}

/// An IPv6 list past `[limits] v6_entries` is refused whole, naming the limit; what was
/// listed before stays listed and enforced, and the daemon keeps running and verifying.
#[test]
fn ipv6_import_past_the_limit_is_refused_whole() {
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "[limits]\nv6_entries = 1000\n");
    d.cli_ok(&["block", "add", "2001:db8:bad::/48"]);
    let before = d.block_list();
    // 2000 /48s need 2000 entries of the /32–/64 hash (and one /32 marker): twice the limit.
    let list = d.dir.join("big6.list");
    let text: String = (0x1000..0x1000 + 2000)
        .map(|n| format!("2001:db8:{n:x}::/48\n"))
        .collect();
    std::fs::write(&list, text).expect("write the list");
    let out = d.cli(&["block", "import", list.to_str().unwrap(), "--list", "big6"]);
    assert_ne!(
        out.code, 0,
        "an import past the limit succeeded: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("IPv6 table full") && out.stderr.contains("v6_entries"),
        "the refusal does not name the limit: {}",
        out.stderr
    );
    assert_eq!(
        d.block_list(),
        before,
        "the refused import changed the lists"
    );
    assert_eq!(d.check("2001:db8:bad::7")["verdict"], "drop");
    assert_eq!(d.check("2001:db8:1000::1")["verdict"], "pass");
    let v = d.json(&["status", "--verify", "--json"]);
    assert_eq!(v["verify"]["ok"], true, "{v:#}");
}
