//! The files in deploy/ must really work: checked with the tools that consume them.

use std::{path::PathBuf, process::Command};

fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// Runs a checker if it is installed (a missing tool is reported, not failed); returns
/// its standard error.
fn check(tool: &str, args: &[&std::ffi::OsStr]) -> String {
    match Command::new(tool).args(args).output() {
        Err(e) => {
            eprintln!("skipping {tool}: {e}");
            String::new()
        }
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                out.status.success(),
                "{tool} {args:?} refused it:\n{}{err}",
                String::from_utf8_lossy(&out.stdout),
            );
            err
        }
    }
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
    let path = dir.join("prefilter.service");
    std::fs::write(&path, text).unwrap();
    let err = check("systemd-analyze", &["verify".as_ref(), path.as_os_str()]);
    // verify exits 0 on unknown keys and bad values, but names the file when it ignores one.
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("prefilter.service"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze: {complaints:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
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

/// Every metric the dashboard and the alert rules query is one the daemon exports.
#[test]
fn dashboard_and_rules_use_exported_metrics() {
    let exported = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/src/daemon/metrics.rs"),
    )
    .unwrap();
    let dash = std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dash).expect("the dashboard is JSON");
    let rules = std::fs::read_to_string(deploy("prometheus-rules.yml")).unwrap();
    let mut used = 0;
    for text in [&dash, &rules] {
        for (i, _) in text.match_indices("prefilter_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used += 1;
            assert!(
                exported.contains(&format!("\"{name}")) || exported.contains(&format!("{name}{{")),
                "{name} is queried but not exported"
            );
        }
    }
    assert!(used > 5, "found only {used} metric references");
}
