//! The files in deploy/ must really work: checked with the tools that consume them.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use prefilter_tests::{
    daemon::{Daemon, Lab},
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
    assert!(
        unit.contains("ExecStart=/usr/local/sbin/prefilter run"),
        "{unit}"
    );
    let bin = prefilter_tests::daemon::binary();
    let text = unit.replace("/usr/local/sbin/prefilter", bin.to_str().unwrap());
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
    require_root();
    let lab = Lab::new();
    let d = Daemon::start_new(&lab.mx, &lab.mx_if, "");
    // Something in every family that only shows samples once used.
    d.cli_ok(&["block", "add", "198.51.100.7"]);
    let exported = exposed_names(&d.metrics_text());
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
