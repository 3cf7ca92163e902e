//! The files in deploy/ must really work: checked with the tools that consume them.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use prefilter_tests::{
    daemon::{DEFAULT_XDP, Daemon, Lab, Listener, RunAs, TestUser},
    require_root,
};

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// Runs a checker, which must be installed (a missing tool fails the test: a check that
/// did not run must not read as a pass); returns its standard error.
fn check(tool: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} is needed to check deploy/ ({e}): install it (cargo xtask setup)")
    });
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{tool} {args:?} refused it:\n{}{err}",
        String::from_utf8_lossy(&out.stdout),
    );
    err
}

#[test]
fn prometheus_rules_pass_promtool() {
    let rules = deploy("prometheus-rules.yml");
    check(
        "promtool",
        &["check".as_ref(), "rules".as_ref(), rules.as_os_str()],
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze() {
    // verify insists that ExecStart exists: point it at the binary this build made.
    let unit = std::fs::read_to_string(deploy("prefilter.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/sbin/prefilter run"), "{unit}");
    let bin = prefilter_tests::daemon::binary();
    let text = unit.replace("/usr/sbin/prefilter ", &format!("{} ", bin.display()));
    let dir = std::env::temp_dir().join(format!("pf-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    /// Removes the directory this test made, also when a check fails.
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _remove = RemoveDir(dir.clone());
    let path = dir.join("prefilter.service");
    std::fs::write(&path, text).unwrap();
    let err = check("systemd-analyze", &["verify".as_ref(), path.as_os_str()]);
    // verify exits 0 on unknown keys and bad values, but names the file when it ignores one.
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("prefilter.service"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze: {complaints:#?}");
    // Least privilege, as systemd rates it (0 = locked down, 10 = unprotected).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for prefilter.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(
        score <= 4.5,
        "the unit's exposure is {score}, above 4.5:\n{text}"
    );
}

/// The value of `key=` in the unit's text (the last one, as systemd reads it).
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("the unit sets no {key}="))
}

/// The unit's user and capabilities are enough: the daemon, run as an unprivileged user
/// with exactly the unit's ambient capabilities (and the pin directory its ExecStartPre=
/// hands over), loads and attaches the filter, and a blocked SYN is dropped.
#[test]
fn the_units_capabilities_suffice_without_root() {
    require_root();
    let unit = std::fs::read_to_string(deploy("prefilter.service")).unwrap();
    assert_eq!(unit_value(&unit, "User"), "prefilter");
    let ambient = unit_value(&unit, "AmbientCapabilities");
    assert_eq!(ambient, unit_value(&unit, "CapabilityBoundingSet"));
    let caps: Vec<String> = ambient
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    assert!(!caps.iter().any(|c| c == "sys_admin"), "{caps:?}");
    // A user of the test's own, not `prefilter`: this host may have a real one.
    let user = TestUser::create(&format!("pfu{}", std::process::id()), &[]);
    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let mut d = Daemon::prepare_as(
        &lab.mx,
        &lab.mx_if,
        RunAs {
            user: user.0.clone(),
            caps,
        },
    );
    d.write_config(&d.config_text(DEFAULT_XDP, ""));
    d.start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u != "0"),
        "the daemon runs as root: {uid}"
    );
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    let blocked: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let clean: std::net::IpAddr = "203.0.113.9".parse().unwrap();
    lab.assert_dropped(
        &listener,
        blocked,
        std::time::Duration::from_secs(1),
        "blocked, daemon without root",
    );
    lab.assert_connects(&listener, clean, "clean, daemon without root");
    d.terminate();
    assert!(d.log().contains("XDP attached"), "{}", d.log());
}

#[test]
fn example_config_is_accepted_by_the_daemon() {
    let cfg = deploy("prefilter.toml");
    // Interfaces are checked against this host; the example names eth0.
    let text = std::fs::read_to_string(&cfg).unwrap();
    match prefilter::config::Config::parse(&text, &cfg, &|_| true) {
        Ok(c) => assert_eq!(c.xdp.ports, vec![25]),
        Err(e) => panic!("{e}"),
    }
}

/// Metric names a text exposition defines: every `# TYPE` family (with the series names a
/// histogram or summary adds) and every sample's name.
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (Some(name), kind) = (w.next(), w.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            if matches!(kind, Some("histogram" | "summary")) {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// Every metric the dashboard and the alert rules query is one a running daemon exports:
/// read from its live /metrics, not from the agent's source.
#[test]
fn dashboard_and_rules_use_exported_metrics() {
    use prefilter_tests::rbldnsd::{Rbldnsd, Zone, zone_head};
    require_root();
    let lab = Lab::new();
    // Every part the rules and the dashboard watch: the proxy (its backend down), a DNSBL
    // zone on a real rbldnsd, a feed (its source missing, so it fails), and the fleet
    // reporter (its LAPI unreachable, so reports fail).
    let rbl = Rbldnsd::start(
        Some(&lab.mx.name),
        &[Zone {
            name: "bl.test",
            kind: "ip4set",
            data: format!("{}203.0.113.9\n", zone_head(300, 60)),
        }],
    );
    let feed_dir = std::env::temp_dir().join(format!("pf-deploy-feed-{}", std::process::id()));
    std::fs::create_dir_all(&feed_dir).unwrap();
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _feed_dir = RemoveDir(feed_dir.clone());
    let tail = format!(
        "[proxy]\nlisten = [\"192.0.2.1:25\"]\nbackends = [\"127.0.0.1:9\"]\nconnect_timeout = 1\n\n\
         [dnsbl]\nsites = [\"bl.test*2\"]\nthreshold = 2\nnameservers = [\"{}\"]\ntimeout = 1\n\n\
         [[feeds]]\nname = \"local-drop\"\nsource = \"file://{}/drop.txt\"\nformat = \"spamhaus-drop\"\n\n\
         [crowdsec]\nurl = \"http://127.0.0.1:9\"\nmachine_id = \"mx1\"\npassword = \"x\"\nreport = [\"cli\"]\n",
        rbl.addr,
        feed_dir.display()
    );
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, &tail);
    // Something in every family that only shows samples once used: a list hit, a learned
    // verdict to report, a DNSBL lookup (a client through the proxy, whose backend is down).
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    d.cli_ok(&["block", "add", "192.0.2.50", "--ttl", "1h"]);
    let _ = lab.connect(
        "203.0.113.9".parse().unwrap(),
        std::time::Duration::from_secs(2),
    );
    let _ = lab.connect(
        "192.0.2.2".parse().unwrap(),
        std::time::Duration::from_secs(2),
    );
    let mut exported = BTreeSet::new();
    // Reports and feed runs are asynchronous: wait (bounded) until the families show.
    let _ = prefilter_tests::daemon::poll(std::time::Duration::from_secs(20), || {
        exported = exposed_names(&d.metrics_text());
        [
            "prefilter_fleet_reports_total",
            "prefilter_feed_failures_total",
            "prefilter_dnsbl_queries_total",
        ]
        .iter()
        .all(|n| exported.contains(*n))
        .then_some(())
    });
    assert!(
        exported
            .iter()
            .filter(|n| n.starts_with("prefilter_"))
            .count()
            > 5,
        "the daemon exports hardly anything: {exported:?}"
    );
    let dash = std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dash).expect("the dashboard is JSON");
    let rules = std::fs::read_to_string(deploy("prometheus-rules.yml")).unwrap();
    let mut used = 0;
    let mut missing = BTreeSet::new();
    for text in [&dash, &rules] {
        for (i, _) in text.match_indices("prefilter_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used += 1;
            if !exported.contains(&name) {
                missing.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queried by deploy/ but not exported by the daemon: {missing:?}\nexported: {exported:?}"
    );
    assert!(used > 5, "found only {used} metric references");
}
