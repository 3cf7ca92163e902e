//! Reputation feeds end to end: the real daemon in an MX namespace fetches lists from a
//! local HTTP server ([`FeedServer`], on the MX namespace's loopback) and the XDP program
//! drops SYNs from what they list. Each test asserts what an administrator relies on: a feed
//! entry stops its sender at the first packet, a bad download never loses the last good copy,
//! the shrink guard holds until forced, a restart without the server still filters.
//!
//! Needs root and a built daemon: `cargo build --release -p prefilter`, then
//! `cargo test --release -p prefilter-tests --test feeds`.

use std::{
    net::{IpAddr, Ipv4Addr, TcpListener},
    time::{Duration, Instant},
};

use prefilter_tests::{
    crowdsec::Lapi,
    daemon::{
        BIG4, BLOCKED4, CLEAN4, CONNECT_TIMEOUT, Daemon, Lab, Listener, RESET4, free_port,
        in_netns, poll,
    },
    feedserver::{FeedServer, Reply},
    netns::Netns,
    require_root,
};
use serde_json::Value;

const FEED: &str = "/drop.txt";

/// A feed server on 127.0.0.1 inside the MX namespace, where the daemon runs.
fn server(lab: &Lab) -> FeedServer {
    let l = in_netns(&lab.mx.name, || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the feed server")
    });
    FeedServer::start(l)
}

/// A lab with a feed server serving `list_text(n)` (ETag "v1") and the daemon reading it
/// as feed `drop`: (lab, listener, server, its URL, daemon), dropped daemon first.
fn feed_lab(n: usize) -> (Lab, Listener, FeedServer, String, Daemon) {
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let srv = server(&lab);
    srv.set(FEED, Reply::text(&list_text(n), "v1"));
    let url = srv.url(FEED);
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, &feed_toml("drop", &url, ""));
    (lab, listener, srv, url, d)
}

/// `[[feeds]]` for `url` named `name` (interval long: the tests run feeds with `sync`).
fn feed_toml(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[feeds]]\nname = \"{name}\"\nsource = \"{url}\"\nformat = \"plain\"\naction = \"drop\"\ninterval = \"1h\"\n{extra}\n"
    )
}

/// `feeds sync NAME [args] --json`, whatever its exit status.
fn sync(d: &Daemon, name: &str, more: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["feeds", "sync", name, "--json"];
    args.extend_from_slice(more);
    let out = d.cli(&args);
    let v = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("feeds sync: not JSON ({e}): {}", out.both()));
    (out.code, v, out.stderr)
}

/// The value of one series in the exposition, `series` written with its labels.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The check verdict for `ip` and the list that decided it.
fn verdict(d: &Daemon, ip: &str) -> (String, String) {
    let v = d.check(ip);
    (
        v["verdict"].as_str().unwrap_or("").to_owned(),
        v["list"].as_str().unwrap_or("").to_owned(),
    )
}

/// `n` addresses in 203.0.113.0/24 beside the lab's `BLOCKED4`, as a plain list.
/// Since request `from`, the server sent a whole body to a request without a validator.
fn assert_fetched_whole(srv: &FeedServer, from: usize, what: &str) {
    let refetch = srv.seen()[from..].to_vec();
    assert!(
        refetch
            .iter()
            .any(|r| r.status == 200 && r.header("if-none-match").is_none()),
        "{what}: {refetch:?}"
    );
}

fn list_text(n: usize) -> String {
    let mut s = String::from("# test feed\n");
    s.push_str(&format!("{BLOCKED4}\n"));
    for i in 0..n {
        s.push_str(&format!("203.0.113.{}\n", 100 + i));
    }
    s
}

/// A plain feed reaches the kernel's table: its listed sender is dropped by XDP, a clean one
/// connects; the daemon asked for gzip and got it; the next run sends the validators and a
/// 304 keeps every entry.
#[test]
fn feed_entries_are_dropped_in_xdp_and_304_keeps_them() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let srv = server(&lab);
    srv.set(FEED, Reply::text(&list_text(20), "v1"));
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, &feed_toml("drop", &srv.url(FEED), ""));
    let f = d.feed_first_run("drop");
    assert_eq!(f["last_outcome"], "updated", "{f}\n{}", d.log());
    assert_eq!(f["entries"], 21, "{f}");
    let first = srv.last(FEED).expect("the daemon fetched the feed");
    assert!(first.gzipped, "the daemon did not accept gzip: {first:?}");
    assert_eq!(
        verdict(&d, &BLOCKED4.to_string()),
        ("drop".into(), "drop".into())
    );
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        CONNECT_TIMEOUT,
        "a sender listed by the feed",
    );
    lab.assert_connects(&listener, CLEAN4.into(), "a sender no feed lists");

    let (code, r, err) = sync(&d, "drop", &[]);
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(r["outcome"], "not-modified", "{r}");
    assert_eq!(r["entries"], 21, "{r}");
    let second = srv.last(FEED).expect("second fetch");
    assert_eq!(second.status, 304);
    assert_eq!(second.header("if-none-match"), Some("\"v1\""), "{second:?}");
    assert_eq!(
        second.header("if-modified-since"),
        Some("Mon, 30 Nov 2026 00:00:00 GMT"),
        "{second:?}"
    );
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        CONNECT_TIMEOUT,
        "still listed after a 304",
    );
    let m = d.metrics_text();
    assert_eq!(
        sample(&m, "prefilter_feed_entries{feed=\"drop\"}"),
        Some(21.0),
        "{m}"
    );
    assert!(
        sample(
            &m,
            "prefilter_feed_last_success_timestamp_seconds{feed=\"drop\"}"
        )
        .is_some_and(|t| t > 1.7e9),
        "{m}"
    );
}

/// A download cut short (Content-Length larger than what arrives) and a 500 change
/// nothing: the last good copy stays in force, the failures are counted and shown.
#[test]
fn truncated_and_failed_downloads_keep_the_last_good_copy() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let srv = server(&lab);
    srv.set(FEED, Reply::text(&list_text(50), "good"));
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, &feed_toml("drop", &srv.url(FEED), ""));
    assert_eq!(d.feed_first_run("drop")["entries"], 51);

    // The first three lines of a new version, then the connection closes.
    let cut = b"# new\n203.0.113.200\n203.0.113.201\n".to_vec();
    srv.set(
        FEED,
        Reply::Truncated {
            body: cut,
            claimed: 100_000,
        },
    );
    let (code, r, err) = sync(&d, "drop", &[]);
    assert_ne!(code, 0, "a truncated body must be reported: {r}");
    assert_eq!(r["outcome"], "failed", "{r}");
    assert!(
        r["error"].as_str().unwrap_or("").contains("cut short"),
        "{r}"
    );
    assert!(err.contains("last good copy stays in force"), "{err}");
    assert_eq!(
        r["entries"], 51,
        "the truncated body replaced the list: {r}"
    );

    srv.set(FEED, Reply::Status(500));
    let (code, r, _) = sync(&d, "drop", &[]);
    assert_ne!(code, 0);
    assert_eq!(r["outcome"], "failed", "{r}");
    assert_eq!(r["error"], "HTTP status 500", "{r}");
    assert_eq!(r["entries"], 51, "{r}");

    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        CONNECT_TIMEOUT,
        "listed by the last good copy",
    );
    let f = d.feed_info("drop");
    assert_eq!(f["failures"], 2, "{f}");
    assert_eq!(f["consecutive_failures"], 2, "{f}");
    assert_eq!(f["last_error"], "HTTP status 500", "{f}");
    let m = d.metrics_text();
    assert_eq!(
        sample(&m, "prefilter_feed_failures_total{feed=\"drop\"}"),
        Some(2.0),
        "{m}"
    );
    // The on-disk copy is still the good one: what a restart would load.
    let kept = std::fs::read_to_string(d.state_dir.join("feeds/drop.body")).expect("kept body");
    assert_eq!(kept, list_text(50));
}

/// An update that would remove most of the list, or empty it, is refused and reported
/// (`feeds list`, metric); `feeds sync --force` applies it, and the removed sender then
/// connects.
#[test]
fn shrink_guard_refuses_until_forced() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let srv = server(&lab);
    srv.set(FEED, Reply::text(&list_text(99), "full"));
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, &feed_toml("drop", &srv.url(FEED), ""));
    assert_eq!(d.feed_first_run("drop")["entries"], 100);

    // Ten of a hundred left, and BLOCKED4 gone.
    let small: String = (0..10)
        .map(|i| format!("203.0.113.{}\n", 100 + i))
        .collect();
    srv.set(FEED, Reply::text(&small, "small"));
    let (code, r, err) = sync(&d, "drop", &[]);
    assert_ne!(code, 0, "{r}");
    assert_eq!(r["outcome"], "refused", "{r}");
    assert!(err.contains("remove 90 of 100"), "{err}");
    assert_eq!(r["entries"], 100, "{r}");
    srv.set(FEED, Reply::text("# nothing today\n", "empty"));
    let (_, r, _) = sync(&d, "drop", &[]);
    assert_eq!(
        r["outcome"], "refused",
        "an empty body must be refused: {r}"
    );
    assert!(
        r["error"].as_str().unwrap_or("").contains("leave it empty"),
        "{r}"
    );
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        CONNECT_TIMEOUT,
        "the guard kept the list",
    );
    let f = d.feed_info("drop");
    assert_eq!(f["guard_refusals"], 2, "{f}");
    assert!(
        f["last_refusal"]
            .as_str()
            .unwrap_or("")
            .contains("leave it empty"),
        "{f}"
    );
    let m = d.metrics_text();
    assert_eq!(
        sample(&m, "prefilter_feed_guard_refusals_total{feed=\"drop\"}"),
        Some(2.0),
        "{m}"
    );

    srv.set(FEED, Reply::text(&small, "small"));
    let (code, r, err) = sync(&d, "drop", &["--force"]);
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(r["outcome"], "updated", "{r}");
    assert_eq!(r["entries"], 10, "{r}");
    assert_eq!(verdict(&d, &BLOCKED4.to_string()).0, "pass");
    lab.assert_connects(&listener, BLOCKED4.into(), "removed from the feed by force");
}

/// The agent restarted while the feed server is gone still filters what the last good copy
/// listed, and says the fetch failed.
#[test]
fn restart_without_the_server_filters_from_the_disk_copy() {
    require_root();
    let (lab, listener, srv, _url, mut d) = feed_lab(5);
    let before = d.feed_first_run("drop");
    assert_eq!(before["entries"], 6);
    d.terminate();
    drop(srv);
    // The new agent fills fresh tables from what it loads, then replaces the program.
    d.start();
    let f = d.feed_first_run("drop");
    assert_eq!(f["last_outcome"], "failed", "the server is gone: {f}");
    assert_eq!(f["entries"], 6, "{f}");
    // Tried again in a minute, not at the hour's interval.
    let wait =
        f["next_run"].as_u64().unwrap_or(0) as i64 - f["last_attempt"].as_u64().unwrap_or(0) as i64;
    assert!(
        (55..=70).contains(&wait),
        "the next run {wait} s after the failure: {f}"
    );
    assert_eq!(
        f["last_success"], before["last_success"],
        "the last success is the fetch before the restart: {f}"
    );
    assert!(
        d.log().contains("feed's last good copy loaded from disk"),
        "{}",
        d.log()
    );
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        CONNECT_TIMEOUT,
        "listed by the copy on disk",
    );
}

/// A bad line is counted and named (line number, text, reason), the rest applied; host
/// bits are cleared rather than refused; a body mostly bad is refused whole.
#[test]
fn bad_feed_lines_are_named_and_the_rest_applied() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let srv = server(&lab);
    let mut text = list_text(18);
    text.push_str("203.0.113.300\n");
    text.push_str(&format!("{BIG4}/24\n"));
    srv.set(FEED, Reply::text(&text, "v1"));
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, &feed_toml("drop", &srv.url(FEED), ""));
    let f = d.feed_first_run("drop");
    assert_eq!(f["last_outcome"], "updated", "{f}");
    assert_eq!(f["entries"], 20, "{f}");
    assert_eq!(f["lines_rejected"], 1, "{f}");
    assert_eq!(f["bad_lines"][0]["line"], 21, "{f}");
    assert_eq!(f["bad_lines"][0]["text"], "203.0.113.300", "{f}");
    assert!(
        f["bad_lines"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not an IP address"),
        "{f}"
    );
    let (v, list) = verdict(&d, &BIG4.to_string());
    assert_eq!((v.as_str(), list.as_str()), ("drop", "drop"));
    let c = d.check(&BIG4.to_string());
    assert_eq!(c["matches"][0]["prefix"], "198.51.100.0/24", "{c}");
    lab.assert_dropped(
        &listener,
        IpAddr::V4(BIG4),
        CONNECT_TIMEOUT,
        "in a /24 written with host bits",
    );
    let m = d.metrics_text();
    assert_eq!(
        sample(&m, "prefilter_feed_lines_rejected_total{feed=\"drop\"}"),
        Some(1.0),
        "{m}"
    );

    // Mostly garbage (an HTML error page served as 200): refused whole.
    srv.set(
        FEED,
        Reply::text(
            "<html>\n<body>\nmaintenance\n</body>\n</html>\n203.0.113.1\n",
            "v2",
        ),
    );
    let (code, r, _) = sync(&d, "drop", &[]);
    assert_ne!(code, 0);
    assert_eq!(r["outcome"], "failed", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("5 of 6 lines are not plain"),
        "{r}"
    );
    assert_eq!(r["entries"], 20, "{r}");
}

/// A feed config with mistakes is refused at start with every bad key named by line, and a
/// running daemon refuses it on reload and keeps its feeds.
#[test]
fn bad_feed_config_is_named_by_key() {
    require_root();
    let lab = Lab::new();
    let srv = server(&lab);
    srv.set(FEED, Reply::text(&list_text(3), "v1"));
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, &feed_toml("drop", &srv.url(FEED), ""));
    d.feed_first_run("drop");
    let bad = d.config_text(
        prefilter_tests::daemon::DEFAULT_XDP,
        "[[feeds]]\nname = \"x\"\nsource = \"ftp://192.0.2.9/list\"\nformat = \"csv\"\ninterval = \"5s\"\n",
    );
    d.write_config(&bad);
    let out = d.cli(&["reload"]);
    assert_ne!(out.code, 0);
    for want in [
        "feeds[0].source: \"ftp://192.0.2.9/list\" is not an http://, https:// or file:// URL",
        "feeds[0].interval: 5s is too short for a csv feed (at least 60s)",
        "feeds[0].thresholds: a csv feed needs thresholds",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?}: {}",
            out.both()
        );
    }
    assert_eq!(d.feed_info("drop")["entries"], 4);
}

/// A feed whose action changes on reload is fetched whole at once (its old validators would
/// get a 304 and keep the old action) and the sender gets the new action: here a reset.
#[test]
fn reload_with_a_changed_feed_applies_it_now() {
    require_root();
    let (lab, listener, srv, url, d) = feed_lab(3);
    assert_eq!(d.feed_first_run("drop")["entries"], 4);
    let fetches = srv.seen().len();
    let text = d.config_text(
        prefilter_tests::daemon::DEFAULT_XDP,
        &feed_toml("drop", &url, "").replace("action = \"drop\"", "action = \"reset\""),
    );
    d.write_config(&text);
    d.cli_ok(&["reload"]);
    let got = poll(Duration::from_secs(20), || {
        let v = verdict(&d, &BLOCKED4.to_string());
        (v.0 == "reset").then_some(v)
    });
    assert_eq!(got, Some(("reset".into(), "drop".into())), "{}", d.log());
    assert_fetched_whole(&srv, fetches, "the changed feed was not fetched whole");
    lab.assert_refused(&listener, BLOCKED4.into(), "the feed's new action");
}

/// Taking a bad feed out of the config and reloading unblocks what it listed at once (it
/// can no longer be synced or edited; `block del` of its hosts, or of a prefix around
/// them, names the feed), its metric series go; a feed may not take over a
/// list an import filled, nor be named like the CLI's lists: the reload is refused and the
/// import's entries stay.
#[test]
fn taking_a_feed_out_unblocks_and_no_feed_takes_an_imported_list() {
    require_root();
    let (lab, listener, _srv, url, d) = feed_lab(3);
    assert_eq!(d.feed_first_run("drop")["entries"], 4);
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        CONNECT_TIMEOUT,
        "the feed lists it",
    );
    // `block del` cannot lift a feed's entry, and says what does.
    let out = d.cli(&["block", "del", &BLOCKED4.to_string()]);
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(
        out.stderr.contains("still blocked by list drop (feed)"),
        "{}",
        out.both()
    );
    // Nor the /24 around the feed's hosts, which no entry covers whole: the hosts inside
    // that still block are named, with their list.
    let out = d.cli(&["block", "del", "203.0.113.0/24"]);
    assert_ne!(out.code, 0, "{}", out.both());
    assert!(
        out.stderr
            .contains("203.0.113.100/32 is still blocked by list drop (feed)"),
        "{}",
        out.both()
    );
    let import = d.dir.join("imp.list");
    std::fs::write(&import, format!("{BIG4}\n")).unwrap();
    d.cli_ok(&["block", "import", import.to_str().unwrap(), "--list", "imp"]);

    for (name, why) in [
        ("imp", "already holds 1 entries from import"),
        ("cli", "CLI's own list"),
    ] {
        let text = d.config_text(
            prefilter_tests::daemon::DEFAULT_XDP,
            &format!(
                "{}{}",
                feed_toml("drop", &url, ""),
                feed_toml(name, &url, "")
            ),
        );
        d.write_config(&text);
        let out = d.cli(&["reload"]);
        assert_ne!(out.code, 0, "a feed named {name} was taken: {}", out.both());
        assert!(out.stderr.contains(why), "feed {name}: {}", out.both());
    }
    assert_eq!(
        verdict(&d, &BIG4.to_string()),
        ("drop".into(), "imp".into()),
        "the import's entry stayed"
    );

    d.write_config(&d.config_text(prefilter_tests::daemon::DEFAULT_XDP, ""));
    d.cli_ok(&["reload"]);
    assert_eq!(verdict(&d, &BLOCKED4.to_string()).0, "pass", "{}", d.log());
    lab.assert_connects(&listener, BLOCKED4.into(), "its feed was taken out");
    let m = d.metrics_text();
    assert!(
        !m.contains("feed=\"drop\""),
        "the removed feed's series are gone: {}",
        m.lines()
            .filter(|l| l.contains("feed="))
            .collect::<Vec<_>>()
            .join("\n")
    );
    d.cli_ok(&["status", "--verify"]);
}

/// The last good copy on disk is only applied whole: one damaged or replaced behind the
/// agent's back (its CRC-32 no longer the one kept with it) is set aside at start (logged
/// once), the list stays as stored, and the next fetch asks for the whole body instead of
/// a 304 that would have kept the damaged copy. A `file://` source that is not a regular file (a FIFO
/// without a writer) fails at once instead of holding the feed.
#[test]
fn a_damaged_disk_copy_is_not_applied_and_a_fifo_is_no_feed() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let srv = server(&lab);
    srv.set(FEED, Reply::text(&list_text(5), "v1"));
    let url = srv.url(FEED);
    let fifo = Fifo::new();
    let feeds = format!(
        "{}{}",
        feed_toml("drop", &url, ""),
        feed_toml(
            "pipe",
            &format!("file://{}", fifo.path().display()),
            "timeout = \"2s\""
        )
    );
    let mut d = Daemon::start_new(&lab.mx, &lab.mx_if, &feeds);
    assert_eq!(d.feed_first_run("drop")["entries"], 6);
    let p = d.feed_first_run("pipe");
    assert_eq!(p["last_outcome"], "failed", "{p}");
    assert!(
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not a regular file")),
        "{p}"
    );
    d.terminate();
    std::fs::write(d.state_dir.join("feeds/drop.body"), "203.0.113.100\n").unwrap();
    let fetches = srv.seen().len();
    d.start();
    let f = d.feed_first_run("drop");
    assert_eq!(f["entries"], 6, "{f}\n{}", d.log());
    // Said once, though a start reads the copy twice (validators, then the body).
    assert_eq!(
        d.log().matches("does not match its metadata").count(),
        1,
        "{}",
        d.log()
    );
    assert_fetched_whole(&srv, fetches, "fetched whole after the damaged copy");
    lab.assert_dropped(&listener, BLOCKED4.into(), CONNECT_TIMEOUT, "still listed");
    d.cli_ok(&["status", "--verify"]);
}

/// A FIFO in a scratch directory of its own, removed with it (also on failure).
struct Fifo(std::path::PathBuf);

impl Fifo {
    fn new() -> Self {
        let dir = prefilter_tests::scratch_dir("fifo", "pff");
        std::fs::create_dir_all(&dir).expect("the FIFO's directory");
        let f = Fifo(dir);
        let out = std::process::Command::new("mkfifo")
            .arg(f.path())
            .output()
            .expect("mkfifo");
        assert!(out.status.success(), "mkfifo: {out:?}");
        f
    }

    fn path(&self) -> std::path::PathBuf {
        self.0.join("feed.fifo")
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A lab with a real CrowdSec LAPI in the MX namespace and the daemon reading its decision
/// stream as feed `crowdsec` every `interval`, its first run done: (lab, listener, LAPI,
/// daemon), dropped daemon first.
fn lapi_lab(interval: &str) -> (Lab, Listener, Lapi, Daemon) {
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let port = free_port(&lab.mx.name);
    let lapi = Lapi::start(&lab.mx.name, (Ipv4Addr::LOCALHOST, port).into());
    let key = lapi.add_bouncer("prefilter-mx");
    let tail = format!(
        "[[feeds]]\nname = \"crowdsec\"\nsource = \"{}\"\nformat = \"crowdsec\"\napi_key = \"{key}\"\ninterval = \"{interval}\"\n",
        lapi.url()
    );
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, &tail);
    let f = d.feed_first_run("crowdsec");
    assert_eq!(f["last_outcome"], "updated", "{f}\n{}", d.log());
    assert_eq!(f["entries"], 0, "{f}");
    (lab, listener, lapi, d)
}

/// The CrowdSec LAPI's decision stream as a feed: a decision added with cscli reaches the
/// kernel table (its SYN dropped, its expiry from the decision's duration), a deleted one
/// leaves it and the sender connects again.
#[test]
fn crowdsec_decisions_reach_xdp_and_deleted_ones_leave() {
    require_root();
    let (lab, listener, lapi, d) = lapi_lab("10s");

    lapi.add_decision(&BLOCKED4.to_string(), "1h");
    let (code, r, err) = sync(&d, "crowdsec", &[]);
    assert_eq!(code, 0, "{r} {err}\n{}", d.log());
    assert_eq!(r["entries"], 1, "{r}\nLAPI holds: {}", lapi.decisions());
    assert_eq!(
        verdict(&d, &BLOCKED4.to_string()),
        ("drop".into(), "crowdsec".into())
    );
    let c = d.check(&BLOCKED4.to_string());
    let expires = c["matches"][0]["expires"].as_u64().expect("an expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 3500..=now + 3601).contains(&expires),
        "expiry {expires} is not the decision's hour from {now}"
    );
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        CONNECT_TIMEOUT,
        "a CrowdSec decision",
    );

    lapi.delete_decision(&BLOCKED4.to_string());
    let (code, r, err) = sync(&d, "crowdsec", &[]);
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(r["entries"], 0, "{r}");
    lab.assert_connects(&listener, BLOCKED4.into(), "its decision was deleted");
}

/// What the LAPI's stream says, taken as it means it: a captcha decision deleted beside a
/// ban on the same address does not lift the ban; a decision's duration ends its drop in
/// XDP when it runs out, not at the next restart; a `0.0.0.0/0` range is refused (every
/// sender would be dropped) and named among the rejected decisions.
#[test]
fn crowdsec_captchas_expiries_and_everything_ranges_are_taken_as_meant() {
    require_root();
    let (lab, listener, lapi, mut d) = lapi_lab("1h");
    let cscli = |args: &[&str]| {
        let out = lapi.cscli(args);
        assert_eq!(out.code, 0, "cscli {args:?}: {}", out.both());
    };
    let banned = BLOCKED4.to_string();
    cscli(&["decisions", "add", "--ip", &banned, "--duration", "1h"]);
    cscli(&[
        "decisions",
        "add",
        "--ip",
        &banned,
        "--duration",
        "1h",
        "--type",
        "captcha",
    ]);
    cscli(&[
        "decisions",
        "add",
        "--range",
        "0.0.0.0/0",
        "--duration",
        "1h",
    ]);
    let short = BIG4.to_string();
    cscli(&["decisions", "add", "--ip", &short, "--duration", "8s"]);
    let (code, r, err) = sync(&d, "crowdsec", &[]);
    assert_eq!(code, 0, "{r} {err}\n{}", d.log());
    lab.assert_dropped(
        &listener,
        short.parse().unwrap(),
        CONNECT_TIMEOUT,
        "an 8 s decision",
    );
    assert_eq!(
        r["entries"],
        2,
        "the ban and the 8 s decision: {r}\nLAPI: {}",
        lapi.decisions()
    );
    assert!(
        r["bad_lines"]
            .as_array()
            .is_some_and(|b| b.iter().any(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.contains("covers every address")))),
        "the /0 is named: {r}"
    );
    lab.assert_connects(&listener, CLEAN4.into(), "a /0 decision is not applied");

    cscli(&["decisions", "delete", "--ip", &banned, "--type", "captcha"]);
    let (code, r, err) = sync(&d, "crowdsec", &[]);
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(
        verdict(&d, &banned),
        ("drop".into(), "crowdsec".into()),
        "the ban outlives the captcha's deletion; LAPI: {}",
        lapi.decisions()
    );
    lab.assert_dropped(&listener, BLOCKED4.into(), CONNECT_TIMEOUT, "still banned");
    let out = d.cli(&["block", "del", &banned]);
    assert!(
        out.stderr
            .contains(&format!("cscli decisions delete --ip {banned}")),
        "block del names what lifts a LAPI decision: {}",
        out.both()
    );

    // No poll after the 8 s: the agent's own expiry ends the drop.
    let gone = poll(Duration::from_secs(20), || {
        (verdict(&d, &short).0 == "pass").then_some(())
    });
    assert!(
        gone.is_some(),
        "the 8 s decision expired: {}\n{}",
        d.check(&short),
        d.log()
    );
    lab.assert_connects(&listener, short.parse().unwrap(), "its decision ran out");
    d.cli_ok(&["status", "--verify"]);

    // Restarted with the LAPI down: the ban still drops, and the feed's last success is the
    // poll before the restart, not "never" (which would fire the staleness alert).
    let (_, r, _) = sync(&d, "crowdsec", &[]);
    assert_eq!(r["outcome"], "updated", "{r}");
    let before = d.feed_first_run("crowdsec")["last_success"].clone();
    assert!(before.as_u64().is_some(), "{before}");
    d.terminate();
    drop(lapi);
    d.start();
    let f = d.feed_first_run("crowdsec");
    assert_eq!(f["last_outcome"], "failed", "the LAPI is gone: {f}");
    assert_eq!(f["last_success"], before, "{f}");
    lab.assert_dropped(
        &listener,
        BLOCKED4.into(),
        CONNECT_TIMEOUT,
        "kept across the restart",
    );
}

/// Two gateways and one LAPI: agent A (its own namespace, joined to the MX namespace by a
/// veth) reports a `block add ADDR --ttl` to the LAPI as an alert; agent B (the lab's MX)
/// reads the LAPI's decision stream as a feed and drops that sender's SYN in XDP after its
/// next poll. A keeps the entry in its dynamic map with its expiry. Then the same for a
/// DNSBL listing A learns from a client's handshake.
#[test]
fn fleet_block_on_one_gateway_is_dropped_by_another() {
    require_root();
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let a_ns = Netns::new("pffa");
    // Its own veth names: `veth()` names the MX end after the namespace, which the lab's
    // veth already uses. Deleting namespace A removes the pair.
    let (a_if, mx_if) = (format!("{}a", a_ns.name), format!("{}b", a_ns.name));
    prefilter_tests::netns::run(
        "ip",
        &[
            "link",
            "add",
            &a_if,
            "netns",
            &a_ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &mx_if,
            "netns",
            &lab.mx.name,
        ],
    );
    for (ns, ifc, addr) in [
        (&a_ns, &a_if, "198.51.100.202/30"),
        (&lab.mx, &mx_if, "198.51.100.201/30"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", ifc]);
        ns.ip(&["link", "set", ifc, "up"]);
    }
    let port = in_netns(&lab.mx.name, || {
        TcpListener::bind(("198.51.100.201", 0))
            .and_then(|l| l.local_addr())
            .expect("a free port on the veth address")
            .port()
    });
    let lapi = Lapi::start(&lab.mx.name, ([198, 51, 100, 201], port).into());
    let key = lapi.add_bouncer("gateway-b");
    let creds = lapi.add_machine("gateway-a", "gateway-a-password-0123456789");

    // A's DNSBL: a real rbldnsd in A's namespace listing BIG4.
    let rbl = prefilter_tests::rbldnsd::Rbldnsd::start(
        Some(&a_ns.name),
        &[prefilter_tests::rbldnsd::Zone {
            name: "bl.test",
            kind: "ip4set",
            data: format!("{}{BIG4}\n", prefilter_tests::rbldnsd::zone_head(300, 60)),
        }],
    );
    let a = Daemon::start_new(
        &a_ns,
        &a_if,
        &format!(
            "[crowdsec]\nurl = \"{}\"\ncredentials_file = \"{}\"\nreport = [\"cli\", \"dnsbl\"]\n\n\
             [dnsbl]\nsites = [\"bl.test*2\"]\nthreshold = 2\nnameservers = [\"{}\"]\ntimeout = 1\n",
            lapi.url(),
            creds.display(),
            rbl.addr
        ),
    );
    let b = Daemon::start_new(
        &lab.mx,
        &lab.mx_if,
        &format!(
            "[[feeds]]\nname = \"fleet\"\nsource = \"{}\"\nformat = \"crowdsec\"\napi_key = \"{key}\"\ninterval = \"10s\"\n",
            lapi.url()
        ),
    );
    b.feed_first_run("fleet");
    lab.assert_connects(&listener, RESET4.into(), "before any gateway blocked it");

    let t = Instant::now();
    a.cli_ok(&[
        "block",
        "add",
        &RESET4.to_string(),
        "--ttl",
        "1h",
        "--reason",
        "fleet test",
    ]);
    // A: the dynamic map holds it, the store lists it with its expiry.
    let c = a.check(&RESET4.to_string());
    assert_eq!(c["verdict"], "drop", "{c}");
    assert_eq!(c["explanation"], "dynamic verdict", "{c}");
    assert!(
        c["dynamic"]["expires_boottime_ns"].as_u64().unwrap_or(0) > 0,
        "{c}"
    );
    let listed = a.block_list();
    let e = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == format!("{RESET4}/32"))
        .unwrap_or_else(|| panic!("A lists the entry: {listed}"));
    assert_eq!(e["list"], "cli-ttl", "{e}");
    assert_eq!(
        e["expires"].as_u64().unwrap() - e["created"].as_u64().unwrap(),
        3600,
        "{e}"
    );

    // B: after its next poll of the stream (every 10 s), without anyone touching B.
    let got = poll(Duration::from_secs(45), || {
        let v = verdict(&b, &RESET4.to_string());
        (v.0 == "drop").then_some(v)
    });
    let took = t.elapsed();
    assert_eq!(
        got,
        Some(("drop".into(), "fleet".into())),
        "B never got A's verdict\nA log:\n{}\nLAPI decisions: {}\nB log:\n{}",
        a.log(),
        lapi.decisions(),
        b.log()
    );
    println!("fleet: block add on A to the table of B in {took:?}");
    lab.assert_dropped(
        &listener,
        RESET4.into(),
        CONNECT_TIMEOUT,
        "blocked on another gateway",
    );
    let m = a.metrics_text();
    assert_eq!(
        sample(&m, "prefilter_fleet_reports_total{result=\"sent\"}"),
        Some(1.0),
        "{m}"
    );

    // A DNSBL listing learned by A (inline mode: a client completed a handshake with A's
    // port 25) reaches B the same way. The client namespace reaches A through the MX
    // namespace, which forwards; B's XDP passes that SYN (nothing lists it yet).
    lab.mx.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    lab.client
        .ip(&["route", "add", "198.51.100.202/32", "via", "192.0.2.1"]);
    for net in ["192.0.2.0/24", &format!("{BIG4}/32")] {
        a_ns.ip(&["route", "add", net, "via", "198.51.100.201"]);
    }
    let _a_port25 = in_netns(&a_ns.name, || {
        TcpListener::bind(("198.51.100.202", 25)).expect("A's port 25")
    });
    let t = Instant::now();
    let shook = in_netns(&lab.client.name, || {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.bind(&SockAddr::from(std::net::SocketAddr::from((BIG4, 0))))
            .unwrap();
        let to = std::net::SocketAddr::from(([198, 51, 100, 202], 25));
        s.connect_timeout(&to.into(), Duration::from_secs(5))
    });
    assert!(shook.is_ok(), "handshake with A: {shook:?}");
    let learned = poll(Duration::from_secs(15), || {
        let c = a.check(&BIG4.to_string());
        (c["dynamic"]["action"] == "drop").then_some(c)
    });
    assert!(
        learned.is_some(),
        "A did not learn the DNSBL listing: {}\n{}",
        a.check(&BIG4.to_string()),
        a.log()
    );
    let got = poll(Duration::from_secs(45), || {
        let v = verdict(&b, &BIG4.to_string());
        (v.0 == "drop").then_some(v)
    });
    assert_eq!(
        got,
        Some(("drop".into(), "fleet".into())),
        "B never got A's DNSBL listing\nA log:\n{}\nLAPI decisions: {}\nB log:\n{}",
        a.log(),
        lapi.decisions(),
        b.log()
    );
    println!(
        "fleet: DNSBL listing on A to the table of B in {:?}",
        t.elapsed()
    );
    lab.assert_dropped(
        &listener,
        BIG4.into(),
        CONNECT_TIMEOUT,
        "listed by a DNSBL on another gateway",
    );
}

/// Sync time of a 1M-line feed from a file: the first load, then a 1% delta. Printed, not
/// asserted: `cargo test --release -p prefilter-tests --test feeds -- --ignored --nocapture`.
#[test]
#[ignore = "measurement: a million-line feed"]
fn measure_million_line_feed_sync() {
    require_root();
    let lab = Lab::new();
    let mut d = Daemon::prepare(&lab.mx, &lab.mx_if);
    let path = d.dir.join("big.txt");
    let mut rng = prefilter_tests::Rng(0x5eed_feed);
    // Random hosts in 10.0.0.0/8 (never traffic: table content only), a million distinct.
    let mut seen = std::collections::HashSet::new();
    let mut hosts = Vec::with_capacity(1_000_000);
    while hosts.len() < 1_000_000 {
        let a = 0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff);
        if seen.insert(a) {
            hosts.push(a);
        }
    }
    let write = |hosts: &[u32]| {
        let mut s = String::with_capacity(hosts.len() * 14);
        for h in hosts {
            s.push_str(&Ipv4Addr::from(*h).to_string());
            s.push('\n');
        }
        std::fs::write(&path, s).expect("write big feed");
    };
    write(&hosts);
    let tail = format!(
        "[[feeds]]\nname = \"big\"\nsource = \"file://{}\"\nformat = \"plain\"\ninterval = \"7d\"\n",
        path.display()
    );
    d.write_config(&d.config_text(prefilter_tests::daemon::DEFAULT_XDP, &tail));
    d.start();
    let f = d.feed_first_run("big");
    assert_eq!(f["entries"], 1_000_000, "{f}");
    // The start-up run loaded it; time a sync of the same list forced from a fresh state.
    let t = Instant::now();
    let (code, r, _) = sync(&d, "big", &[]);
    let same = t.elapsed();
    assert_eq!(code, 0, "{r}");
    // 1% delta: 10,000 replaced.
    for (i, h) in hosts.iter_mut().take(10_000).enumerate() {
        *h = 0x0b00_0000 | i as u32;
    }
    write(&hosts);
    let t = Instant::now();
    let (code, r, _) = sync(&d, "big", &[]);
    let delta = t.elapsed();
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["entries"], 1_000_000, "{r}");
    let first_load = d
        .log()
        .lines()
        .find(|l| l.contains("feed run") && l.contains("big"))
        .map(str::to_owned)
        .unwrap_or_default();
    println!("1M-line feed: first load (start-up run, log): {first_load}");
    for l in d.log().lines().filter(|l| l.contains("list replaced")) {
        println!("  {l}");
    }
    println!(
        "1M-line feed: unchanged body re-sync {same:?}; 1% delta (10k removed + 10k added) {delta:?}, table changes {}",
        r["table_changes"]
    );
}
