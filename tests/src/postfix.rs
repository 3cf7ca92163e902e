//! A private Postfix (Debian's) for proxy tests: its own config, queue and log under a
//! directory of its own, started inside a network namespace, listening on one loopback port
//! with `smtpd_upstream_proxy_protocol = haproxy`. Mail for `sink.test` is accepted and
//! discarded; nothing is ever relayed (every transport is `discard`, `mynetworks` is
//! loopback only). Stopped (`postfix -c DIR stop`) and removed on drop, also on failure.
//!
//! Known here: `postfix -c DIR` requires DIR in `alternate_config_directories` of
//! /etc/postfix/main.cf (added under a lock, idempotently, and taken out again on drop);
//! there is no syslog, so `maillog_file` and the `postlog` service are set; the data
//! directory must belong to the postfix user.

use std::{
    fs::{self, OpenOptions},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::daemon::{poll, run_bounded};
use crate::netns::Netns;

const MAIN_CF: &str = "/etc/postfix/main.cf";

/// The smtpd service of deploy/postfix/master.cf, the one the README tells administrators to
/// use behind the proxy, moved to `listen` and out of chroot (a private instance has no chroot
/// tree): the tests exercise the shipped snippet, not a copy of it.
fn deploy_service(listen: &str) -> String {
    let text = include_str!("../../deploy/postfix/master.cf");
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            if !out.is_empty() {
                break;
            }
        } else if line.starts_with(char::is_whitespace) {
            out.push_str(line);
            out.push('\n');
        } else {
            // service type private unpriv chroot wakeup maxproc command
            let mut f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 8, "deploy/postfix/master.cf: {line}");
            f[0] = listen;
            f[4] = "n";
            out.push_str(&f.join(" "));
            out.push('\n');
        }
    }
    assert!(
        out.contains("smtpd_upstream_proxy_protocol=haproxy"),
        "deploy/postfix/master.cf has no smtpd reading the PROXY header:\n{out}"
    );
    out
}

/// Edits /etc/postfix/main.cf's `alternate_config_directories` under an exclusive lock:
/// `f` gets the directories listed and returns the new list.
fn edit_alternates(f: impl FnOnce(Vec<String>) -> Vec<String>) {
    let lock = OpenOptions::new()
        .create(true)
        .append(true)
        .open(MAIN_CF)
        .unwrap_or_else(|e| panic!("open {MAIN_CF}: {e}"));
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let text = fs::read_to_string(MAIN_CF).unwrap_or_default();
    let key = "alternate_config_directories";
    let mut dirs = Vec::new();
    let mut rest = Vec::new();
    for l in text.lines() {
        match l.split_once('=') {
            Some((k, v)) if k.trim() == key => dirs.extend(
                v.split([' ', ','])
                    .filter(|d| !d.is_empty())
                    .map(String::from),
            ),
            _ => rest.push(l.to_owned()),
        }
    }
    let dirs = f(dirs);
    if dirs.is_empty() && rest.iter().all(|l| l.trim().is_empty()) {
        // Nothing but our line was there: the file did not exist before.
        let _ = fs::remove_file(MAIN_CF);
        return;
    }
    if !dirs.is_empty() {
        rest.push(format!("{key} = {}", dirs.join(" ")));
    }
    let mut out = rest.join("\n");
    out.push('\n');
    let tmp = format!("{MAIN_CF}.prefilter-test.{}", std::process::id());
    fs::write(&tmp, out).expect("write main.cf");
    fs::rename(&tmp, MAIN_CF).expect("replace main.cf");
}

/// Takes `conf` out of main.cf's `alternate_config_directories`: what [`Postfix`]'s drop
/// does, for a run that was killed before it could (the lab's leftovers).
pub fn unregister(conf: &Path) {
    let conf = conf.display().to_string();
    edit_alternates(|dirs| dirs.into_iter().filter(|d| *d != conf).collect());
}

/// A running private Postfix.
pub struct Postfix {
    /// Everything: `conf/`, `queue/`, `data/`, `maillog`.
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub maillog: PathBuf,
    netns: String,
    running: bool,
    registered: bool,
}

impl Postfix {
    /// Writes the config and starts Postfix in `netns`, smtpd on `listen` (an address of
    /// the namespace, `127.0.0.1:10025`), reading a PROXY header first.
    pub fn start(netns: &Netns, listen: &str) -> Self {
        Self::start_with(netns, listen, None)
    }

    /// [`Postfix::start`] with TLS: a self-signed test certificate (made here with
    /// `openssl req -x509`, `cert.pem` in the directory), STARTTLS offered on `listen`, and
    /// an smtps service (`smtpd_tls_wrappermode = yes`, also reading a PROXY header
    /// first) on `smtps`.
    pub fn start_tls(netns: &Netns, listen: &str, smtps: &str) -> Self {
        Self::start_with(netns, listen, Some(smtps))
    }

    fn start_with(netns: &Netns, listen: &str, smtps: Option<&str>) -> Self {
        let dir = crate::scratch_dir("postfix", "pfx");
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut p = Self {
            conf: dir.join("conf"),
            maillog: dir.join("maillog"),
            dir,
            netns: netns.name.clone(),
            running: false,
            registered: false,
        };
        for d in ["conf", "queue", "data"] {
            fs::create_dir(p.dir.join(d)).expect("create postfix dir");
        }
        let out = run_bounded(
            {
                let mut c = Command::new("chown");
                c.arg("postfix:postfix").arg(p.dir.join("data"));
                c
            },
            Duration::from_secs(10),
        );
        assert_eq!(out.code, 0, "chown data: {}", out.both());
        let d = p.dir.display();
        let (mut tls_main, mut tls_master) = (String::new(), String::new());
        if let Some(smtps) = smtps {
            let mut c = Command::new("openssl");
            c.args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=backend.test"])
            .arg("-keyout")
            .arg(p.dir.join("key.pem"))
            .arg("-out")
            .arg(p.dir.join("cert.pem"));
            let out = run_bounded(c, Duration::from_secs(60));
            assert_eq!(out.code, 0, "openssl req: {}", out.both());
            tls_main = format!(
                "smtpd_tls_cert_file = {d}/cert.pem\n\
                 smtpd_tls_key_file = {d}/key.pem\n\
                 smtpd_tls_security_level = may\n\
                 smtpd_tls_loglevel = 1\n"
            );
            tls_master = format!(
                "{smtps} inet n - n - - smtpd\n  -o smtpd_upstream_proxy_protocol=haproxy\n  \
                 -o smtpd_tls_wrappermode=yes\n  -o smtpd_tls_security_level=encrypt\n\
                 tlsmgr unix - - n 1000? 1 tlsmgr\n"
            );
        }
        fs::write(
            p.conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 queue_directory = {d}/queue\n\
                 data_directory = {d}/data\n\
                 maillog_file = {d}/maillog\n\
                 maillog_file_prefixes = /tmp\n\
                 myhostname = backend.test\n\
                 mydomain = test\n\
                 myorigin = backend.test\n\
                 mydestination = sink.test\n\
                 local_recipient_maps =\n\
                 alias_maps =\n\
                 alias_database =\n\
                 inet_interfaces = loopback-only\n\
                 inet_protocols = all\n\
                 mynetworks = 127.0.0.0/8\n\
                 smtpd_relay_restrictions = reject_unauth_destination\n\
                 local_transport = discard:\n\
                 default_transport = discard:\n\
                 relay_transport = discard:\n\
                 smtpd_peername_lookup = no\n\
                 disable_dns_lookups = yes\n\
                 smtp_dns_support_level = disabled\n\
                 biff = no\n\
                 smtputf8_enable = no\n\
                 smtpd_banner = $myhostname ESMTP backend\n\
                 {tls_main}"
            ),
        )
        .expect("write main.cf");
        fs::write(
            p.conf.join("master.cf"),
            format!(
                "{}\
                 pickup unix n - n 60 1 pickup\n\
                 cleanup unix n - n - 0 cleanup\n\
                 qmgr unix n - n 300 1 qmgr\n\
                 rewrite unix - - n - - trivial-rewrite\n\
                 bounce unix - - n - 0 bounce\n\
                 defer unix - - n - 0 bounce\n\
                 trace unix - - n - 0 bounce\n\
                 verify unix - - n - 1 verify\n\
                 flush unix n - n 1000? 0 flush\n\
                 proxymap unix - - n - - proxymap\n\
                 showq unix n - n - - showq\n\
                 error unix - - n - - error\n\
                 retry unix - - n - - error\n\
                 discard unix - - n - - discard\n\
                 anvil unix - - n - 1 anvil\n\
                 scache unix - - n - 1 scache\n\
                 postlog unix-dgram n - n - 1 postlogd\n\
                 {tls_master}",
                deploy_service(listen)
            ),
        )
        .expect("write master.cf");
        let conf = p.conf.display().to_string();
        edit_alternates(|mut dirs| {
            if !dirs.contains(&conf) {
                dirs.push(conf.clone());
            }
            dirs
        });
        p.registered = true;
        let out = run_bounded(p.postfix("start"), Duration::from_secs(60));
        assert_eq!(out.code, 0, "postfix start: {}\n{}", out.both(), p.log());
        p.running = true;
        p
    }

    fn postfix(&self, verb: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, "postfix", "-c"])
            .arg(&self.conf)
            .arg(verb);
        c
    }

    /// Stops Postfix (`postfix -c DIR stop`); the backend is gone from then on.
    pub fn stop(&mut self) {
        if self.running {
            let out = run_bounded(self.postfix("stop"), Duration::from_secs(60));
            assert_eq!(out.code, 0, "postfix stop: {}", out.both());
            self.running = false;
            // master exits after its children: wait (bounded) for its pid file to go.
            let pid = self.dir.join("queue/pid/master.pid");
            let gone = poll(Duration::from_secs(20), || {
                let alive = fs::read_to_string(&pid)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    // SAFETY: signal 0 only checks that the process exists.
                    .is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
                (!alive).then_some(())
            });
            assert!(gone.is_some(), "postfix master still running");
        }
    }

    /// The mail log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.maillog).unwrap_or_default()
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        poll(within, || self.log().contains(needle).then_some(())).is_some()
    }

    /// The config directory.
    pub fn conf_dir(&self) -> &Path {
        &self.conf
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.running {
            let _ = self.postfix("stop").status();
            // Give master a moment to take its children down before the queue goes.
            let pid = self.dir.join("queue/pid/master.pid");
            let _ = poll(Duration::from_secs(10), || {
                let alive = fs::read_to_string(&pid)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    // SAFETY: signal 0 only checks that the process exists.
                    .is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
                (!alive).then_some(())
            });
        }
        if self.registered {
            unregister(&self.conf);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
