//! The Debian package (`cargo xtask package`, which `cargo xtask test` runs first): installed
//! with dpkg on this machine, its unit's ExecStart run by hand as the unit's user with the
//! unit's capabilities against a veth in a namespace, the CLI used by a member of the
//! `prefilter` group, then purged without a trace.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use prefilter_tests::{
    daemon::{DEFAULT_XDP, Daemon, Lab, Listener, RunAs, TestUser, run_bounded},
    require_root,
};

/// The .deb `cargo xtask package` left in the target directory.
fn built_deb() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("debian");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: run `cargo xtask package` first", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one .deb in {}: {debs:?}", dir.display());
    debs[0].clone()
}

/// Runs a command (bounded): whether it succeeded, and its standard output on success or
/// everything it said on failure.
fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    let mut c = Command::new(cmd);
    c.args(args);
    let out = run_bounded(c, Duration::from_secs(120));
    if out.code == 0 {
        (true, out.stdout)
    } else {
        (false, out.both())
    }
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "prefilter"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Purges the package on drop, so a failed assertion leaves nothing installed.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "prefilter"])
            .stdout(Stdio::null())
            .status();
    }
}

#[test]
fn the_debian_package_installs_runs_and_purges() {
    require_root();
    let deb = built_deb();
    assert!(
        !installed(),
        "a prefilter package is already installed here; this test would purge it"
    );
    let _purge = Purge;
    let (ok, out) = sh("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i: {out}");
    assert!(installed());

    for f in [
        "/usr/sbin/prefilter",
        "/lib/systemd/system/prefilter.service",
        "/etc/prefilter/prefilter.toml",
        "/usr/share/man/man8/prefilter.8.gz",
        "/usr/share/man/man8/prefilter-block.8.gz",
        "/usr/share/bash-completion/completions/prefilter",
        "/usr/share/doc/prefilter/examples/postfix/master.cf",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    let (_, conffiles) = sh("dpkg-query", &["-W", "-f", "${Conffiles}", "prefilter"]);
    assert!(
        conffiles.contains("/etc/prefilter/prefilter.toml"),
        "not a conffile: {conffiles}"
    );
    let (ok, _) = sh("getent", &["group", "prefilter"]);
    assert!(ok, "postinst created no group prefilter");
    let (ok, _) = sh("getent", &["passwd", "prefilter"]);
    assert!(ok, "postinst created no user prefilter");
    let (_, owner) = sh("stat", &["-c", "%a %G", "/etc/prefilter/prefilter.toml"]);
    assert_eq!(
        owner.trim(),
        "640 prefilter",
        "config readable by the daemon only"
    );
    let (ok, man) = sh("man", &["-P", "cat", "8", "prefilter-block"]);
    assert!(
        !ok || man.contains("prefilter-block"),
        "man page unreadable: {man}"
    );

    // The installed unit's ExecStart, by hand, as its user with its capabilities.
    let unit = std::fs::read_to_string("/lib/systemd/system/prefilter.service").unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words = exec.split_whitespace();
    let program = PathBuf::from(words.next().unwrap());
    assert_eq!(program, Path::new("/usr/sbin/prefilter"));
    assert_eq!(words.next(), Some("run"));
    let user = unit
        .lines()
        .find_map(|l| l.strip_prefix("User="))
        .expect("User=");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities=")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();

    let lab = Lab::new();
    let listener = Listener::start(&lab.mx);
    let mut d = Daemon::prepare_as(
        &lab.mx,
        &lab.mx_if,
        RunAs {
            user: user.to_owned(),
            caps,
        },
    );
    d.program = Some(program.clone());
    d.socket_group = "prefilter".into();
    d.write_config(&d.config_text(DEFAULT_XDP, ""));
    let (ok, out) = sh(
        "chown",
        &[&format!("{user}:{user}"), d.config.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    d.start();

    // A member of the group uses the CLI (the packaged binary); the daemon is not root.
    let member_user = TestUser::create(&format!("pfm{}", std::process::id()), &["prefilter"]);
    let member = member_user.0.as_str();
    let cli = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", member, "--regid", member, "--init-groups"])
            .arg(&program)
            .arg("--socket")
            .arg(&d.socket)
            .args(args);
        c.env_remove("PREFILTER_SOCKET");
        run_bounded(c, Duration::from_secs(30))
    };
    let out = cli(&["block", "add", "198.51.100.7", "--reason", "package test"]);
    assert_eq!(out.code, 0, "member CLI: {}", out.both());
    let out = cli(&["status"]);
    assert_eq!(out.code, 0, "member CLI: {}", out.both());
    let blocked: IpAddr = "198.51.100.7".parse().unwrap();
    let clean: IpAddr = "203.0.113.9".parse().unwrap();
    lab.assert_dropped(
        &listener,
        blocked,
        Duration::from_secs(1),
        "blocked by the packaged daemon",
    );
    lab.assert_connects(&listener, clean, "clean, packaged daemon");
    d.terminate();
    drop(d);

    // Purge: nothing of the package, its config, user or group is left.
    let (ok, out) = sh("dpkg", &["--purge", "prefilter"]);
    assert!(ok, "dpkg --purge: {out}");
    assert!(!installed());
    for f in [
        "/usr/sbin/prefilter",
        "/etc/prefilter",
        "/lib/systemd/system/prefilter.service",
        "/usr/share/man/man8/prefilter.8.gz",
        "/var/lib/prefilter",
    ] {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
    let (ok, _) = sh("getent", &["group", "prefilter"]);
    assert!(!ok, "group prefilter left after purge");
    let (ok, _) = sh("getent", &["passwd", "prefilter"]);
    assert!(!ok, "user prefilter left after purge");
}
