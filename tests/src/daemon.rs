//! A real `prefilter` daemon for end-to-end tests: its own directory under /tmp, its own
//! bpffs, a config, the daemon process in an MX namespace, and the CLI pointed at its socket.
//!
//! The bpffs is mounted in the host mount namespace and the daemon is started with
//! `nsenter --net=...` (network namespace only, not `ip netns exec`, which would give it a
//! mount namespace of its own), so a restarted daemon finds the maps and the XDP link the
//! previous one pinned. Everything is removed by exact name or pid on drop, also when the
//! test panics: the daemon is killed by its pid, its pinned links removed, the bpffs
//! unmounted and the directory deleted.
//!
//! [`Lab`] is the network around it: an MX namespace (192.0.2.1, 2001:db8::1, a listener on
//! port 25) and a client namespace whose source addresses the tests block and unblock.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::netns::{Netns, unique, veth};

/// The MX's addresses; the listener runs on port 25 of both.
pub const MX4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const MX6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// A source no test ever blocks.
pub const CLEAN4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const CLEAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// Sources the tests block: with `block add` (drop)...
pub const BLOCKED4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// ... from a config list with action reset (203.0.113.0/24) ...
pub const RESET4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
/// ... with a short TTL ...
pub const TTL4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
/// ... and the one known member of the big imported list.
pub const BIG4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);

/// How long a connect waits; a dropped SYN must make it expire.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A refused connect comes back within one round trip on a veth; this is generous.
pub const REFUSED_WITHIN: Duration = Duration::from_secs(1);
/// Bound on the daemon getting ready (socket answering `status`).
pub const READY_WITHIN: Duration = Duration::from_secs(10);
/// Bound on any CLI command (a 1M-line import included).
pub const CLI_WITHIN: Duration = Duration::from_secs(120);

/// The `prefilter` binary built by `cargo build [--release] -p prefilter`: the newer of
/// `target/release/prefilter` and `target/debug/prefilter` of this workspace (or of
/// `$CARGO_TARGET_DIR`). The tests crate does not depend on the binary target, so cargo does
/// not build it for us.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut roots = Vec::new();
        if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
            roots.push(PathBuf::from(t));
        }
        roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let mut best: Option<(SystemTime, PathBuf)> = None;
        for root in &roots {
            for profile in ["release", "debug"] {
                let p = root.join(profile).join("prefilter");
                let Ok(m) = fs::metadata(&p).and_then(|m| m.modified()) else {
                    continue;
                };
                if best.as_ref().is_none_or(|(t, _)| m > *t) {
                    best = Some((m, p));
                }
            }
        }
        let Some((_, p)) = best else {
            panic!(
                "no prefilter binary in {}/{{release,debug}}: run cargo build -p prefilter first \
                 (cargo build --release -p prefilter for a release test run)",
                roots[roots.len() - 1].display()
            );
        };
        let p = p.canonicalize().unwrap_or(p);
        eprintln!("using the daemon binary {}", p.display());
        p
    })
}

/// Runs `f` on a thread inside the network namespace `/run/netns/{name}`.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(format!("/run/netns/{name}"))
                .unwrap_or_else(|e| panic!("open netns {name}: {e}"));
            // SAFETY: setns on a valid namespace fd; affects only this (scoped) thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {name}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the namespace panicked")
    })
}

/// A TCP connect from `src` (bound first) to the MX's port 25 (192.0.2.1 or 2001:db8::1),
/// made from inside namespace `netns`. Returns the local address or the error, and how
/// long the connect took.
pub fn connect_from(
    netns: &str,
    src: IpAddr,
    timeout: Duration,
) -> (io::Result<SocketAddr>, Duration) {
    let dst = Lab::smtp_of(src);
    in_netns(netns, || {
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))
            .expect("socket");
        sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
            .unwrap_or_else(|e| panic!("bind {src}: {e}"));
        let start = Instant::now();
        let r = sock.connect_timeout(&dst.into(), timeout).and_then(|()| {
            sock.local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("local address is not IP"))
        });
        (r, start.elapsed())
    })
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct CmdOutput {
    /// Exit status; -signal when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Wall time.
    pub took: Duration,
}

impl CmdOutput {
    /// Both streams, for assertion messages.
    pub fn both(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn code_of(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| -s.signal().unwrap_or(0))
}

/// Runs `cmd` to completion, bounded by `within` (killed by pid and a panic past that),
/// reading both pipes while it runs so large outputs cannot stall it.
pub fn run_bounded(cmd: Command, within: Duration) -> CmdOutput {
    let shown = format!("{cmd:?}");
    try_run_bounded(cmd, within)
        .unwrap_or_else(|| panic!("{shown} did not finish within {within:?}"))
}

/// [`run_bounded`], but None (the command killed by its pid) when it takes longer.
pub fn try_run_bounded(mut cmd: Command, within: Duration) -> Option<CmdOutput> {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let t_out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // Polled more often early on: `took` is reported (the bench's load and delta
        // times), and a fixed 5 ms step added up to 5 ms to a 40 ms command.
        thread::sleep(
            (start.elapsed() / 50).clamp(Duration::from_micros(50), Duration::from_millis(5)),
        );
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Some(CmdOutput {
        code: code_of(status),
        stdout,
        stderr,
        took: start.elapsed(),
    })
}

/// The `[xdp]` lines after `interfaces` that [`Daemon::config_text`] uses unless told
/// otherwise.
pub const DEFAULT_XDP: &str = "mode = \"auto\"\nports = [25]";

/// A daemon of our own, in the network namespace `netns`, attached to `iface`.
pub struct Daemon {
    /// Private directory: config, state, socket, log, bpffs mount point.
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// Metrics listener, inside `netns`.
    pub metrics: SocketAddr,
    pub netns: String,
    pub iface: String,
    child: Option<Child>,
    starts: u32,
    mounted: bool,
    /// Extra arguments for `prefilter run` (e.g. `--log-format json`).
    pub run_args: Vec<String>,
    /// `[daemon] socket_group` in [`Daemon::config_text`]; empty (root only) by default.
    pub socket_group: String,
    /// Run the daemon as this user with only these capabilities (setpriv, as systemd's
    /// `User=` and `AmbientCapabilities=` would), instead of as root.
    pub run_as: Option<RunAs>,
    /// The `prefilter` binary to run (default: this build's, [`binary`]), e.g. a packaged one.
    pub program: Option<PathBuf>,
}

/// A system user of the test's own (with its own group, plus `groups`), removed on drop.
pub struct TestUser(pub String);

impl TestUser {
    pub fn create(name: &str, groups: &[&str]) -> Self {
        let mut c = Command::new("useradd");
        c.args(["--system", "--user-group", "--no-create-home"])
            .args(["--shell", "/usr/sbin/nologin"]);
        if !groups.is_empty() {
            c.arg("--groups").arg(groups.join(","));
        }
        let out = run_bounded(
            {
                c.arg(name);
                c
            },
            Duration::from_secs(30),
        );
        assert_eq!(out.code, 0, "useradd {name}: {}", out.both());
        Self(name.to_owned())
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
        // userdel removes the user's own group; this is for a run that stopped in between.
        let _ = Command::new("groupdel")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// An unprivileged user and the capabilities a unit grants it (setpriv names: `bpf`,
/// `net_admin`, ...).
#[derive(Clone, Debug)]
pub struct RunAs {
    pub user: String,
    pub caps: Vec<String>,
}

impl Daemon {
    /// A private directory with a bpffs mounted in it, and nothing running yet.
    pub fn prepare(netns: &Netns, iface: &str) -> Self {
        let dir = crate::scratch_dir("daemon", "pfd");
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        // Traversable by anyone, so a socket's own mode is what a non-root CLI runs into.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod test dir");
        let metrics_port = free_port(&netns.name);
        let mut d = Self {
            bpffs: dir.join("bpf"),
            socket: dir.join("control.sock"),
            config: dir.join("prefilter.toml"),
            state_dir: dir.join("state"),
            dir,
            metrics: (Ipv4Addr::LOCALHOST, metrics_port).into(),
            netns: netns.name.clone(),
            iface: iface.to_owned(),
            child: None,
            starts: 0,
            mounted: false,
            run_args: Vec::new(),
            socket_group: String::new(),
            run_as: None,
            program: None,
        };
        fs::create_dir(&d.bpffs).expect("create the bpffs mount point");
        let out = run_bounded(
            {
                let mut c = Command::new("mount");
                c.args(["-t", "bpf", "bpf"]).arg(&d.bpffs);
                c
            },
            Duration::from_secs(10),
        );
        assert_eq!(out.code, 0, "mount bpffs: {}", out.both());
        d.mounted = true;
        d
    }

    /// [`Daemon::prepare`] for a daemon run as `run_as.user` with only its capabilities,
    /// after what systemd does before the unit's ExecStart: StateDirectory=/RuntimeDirectory=
    /// and the ExecStartPre= line give the user its directories and the pin directory.
    pub fn prepare_as(netns: &Netns, iface: &str, run_as: RunAs) -> Self {
        let mut d = Self::prepare(netns, iface);
        let pins = d.bpffs.join("prefilter");
        fs::create_dir(&pins).expect("pin directory");
        for dir in [&d.dir, &pins] {
            let mut c = Command::new("chown");
            c.arg(format!("{0}:{0}", run_as.user)).arg(dir);
            let out = run_bounded(c, Duration::from_secs(10));
            assert_eq!(out.code, 0, "chown {}: {}", dir.display(), out.both());
        }
        d.run_as = Some(run_as);
        d
    }

    /// [`Daemon::prepare`], a config of [`DEFAULT_XDP`] plus `tail` (appended after the
    /// `[metrics]` section: `[[block]]`, `[[allow]]`, `[limits]`...), and the daemon started.
    pub fn start_new(netns: &Netns, iface: &str, tail: &str) -> Self {
        let mut d = Self::prepare(netns, iface);
        d.write_config(&d.config_text(DEFAULT_XDP, tail));
        d.start();
        d
    }

    /// A complete config: this daemon's paths, `xdp` as the `[xdp]` lines after
    /// `interfaces`, metrics on its port, then `tail`.
    pub fn config_text(&self, xdp: &str, tail: &str) -> String {
        format!(
            "[daemon]\n\
             state_dir = \"{}\"\n\
             socket = \"{}\"\n\
             socket_group = \"{}\"\n\
             bpffs = \"{}\"\n\
             \n\
             [xdp]\n\
             interfaces = [\"{}\"]\n\
             {xdp}\n\
             \n\
             [metrics]\n\
             listen = \"{}\"\n\
             \n\
             {tail}\n",
            self.state_dir.display(),
            self.socket.display(),
            self.socket_group,
            self.bpffs.display(),
            self.iface,
            self.metrics,
        )
    }

    /// Replaces the config file atomically (as an editor or config management would).
    pub fn write_config(&self, text: &str) {
        let tmp = self.dir.join("prefilter.toml.new");
        fs::write(&tmp, text).expect("write config");
        fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// The daemon's log (stdout and stderr of every start).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn command_run(&self, config: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns)).arg("--");
        if let Some(r) = &self.run_as {
            let caps: String = r.caps.iter().map(|c| format!(",+{c}")).collect();
            c.arg("setpriv")
                .args(["--reuid", &r.user, "--regid", &r.user, "--init-groups"])
                .arg(format!("--inh-caps=-all{caps}"))
                .arg(format!("--ambient-caps=-all{caps}"))
                .arg(format!("--bounding-set=-all{caps}"))
                .arg("--no-new-privs")
                .arg("--");
        }
        c.arg(self.program.as_deref().unwrap_or(binary()))
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(&self.run_args);
        c
    }

    /// Starts the daemon and waits (bounded) until its socket answers `status`.
    pub fn start(&mut self) -> Duration {
        self.spawn();
        self.wait_ready()
    }

    /// Starts the daemon without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("daemon log");
        let _ = writeln!(log, "----- start {} -----", self.starts);
        let child = self
            .command_run(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn nsenter prefilter run");
        self.child = Some(child);
    }

    /// Waits until `status` answers; panics with the daemon's log if it exits or takes
    /// longer than [`READY_WITHIN`]. Returns how long it took.
    pub fn wait_ready(&mut self) -> Duration {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("daemon started");
            if let Some(st) = child.try_wait().expect("wait daemon") {
                self.child = None;
                panic!("the daemon exited ({st}) during start:\n{}", self.log());
            }
            if self.socket.exists() && self.cli(&["status", "--json"]).code == 0 {
                return start.elapsed();
            }
            if start.elapsed() > READY_WITHIN {
                panic!(
                    "the daemon did not answer `status` within {READY_WITHIN:?}:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's pid (nsenter execs it, so it is the child's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Whether the daemon process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => c.try_wait().expect("wait").is_none(),
        }
    }

    /// Sends `sig` to the daemon's pid and waits (bounded) until it exits.
    pub fn signal_and_wait(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().expect("wait daemon") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon ignored signal {sig} for 10 s:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// `kill -9`: no chance to clean up anything.
    pub fn kill9(&mut self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// SIGTERM; the daemon must exit 0.
    pub fn terminate(&mut self) {
        let st = self.signal_and_wait(libc::SIGTERM);
        assert!(st.success(), "daemon exit on SIGTERM: {st}\n{}", self.log());
    }

    /// Stops the daemon with `sig` (SIGTERM must end it cleanly; SIGKILL is a crash) and
    /// starts it again; returns how long the new one took to answer.
    pub fn restart(&mut self, sig: i32) -> Duration {
        if sig == libc::SIGTERM {
            self.terminate();
        } else {
            self.signal_and_wait(sig);
        }
        self.start()
    }

    /// Sends a signal (SIGHUP...) to the running daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own running child.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill {sig}: {}", io::Error::last_os_error());
    }

    /// `prefilter run --config FILE` in the MX namespace, expected to exit by itself
    /// (a refused config); killed after 10 s. Returns its output.
    pub fn run_once(&self, config: &Path) -> CmdOutput {
        let cmd = self.command_run(config);
        let shown = format!("{cmd:?}");
        try_run_bounded(cmd, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{shown} kept running for 10 s: the config was accepted"))
    }

    /// The CLI with `--socket` of this daemon.
    pub fn cli(&self, args: &[&str]) -> CmdOutput {
        self.cli_at(&self.socket, args)
    }

    /// The CLI with another socket path.
    pub fn cli_at(&self, socket: &Path, args: &[&str]) -> CmdOutput {
        let mut c = Command::new(binary());
        c.arg("--socket").arg(socket).args(args);
        c.env_remove("PREFILTER_SOCKET");
        run_bounded(c, CLI_WITHIN)
    }

    /// The CLI, which must succeed; returns its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.code,
            0,
            "prefilter {}: {}\ndaemon log:\n{}",
            args.join(" "),
            out.both(),
            self.log()
        );
        out.stdout
    }

    /// The CLI with `--json` output, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.cli_ok(args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("prefilter {}: not JSON ({e}):\n{text}", args.join(" ")))
    }

    pub fn status(&self) -> Value {
        self.json(&["status", "--json"])
    }

    pub fn block_list(&self) -> Value {
        self.json(&["block", "list", "--json"])
    }

    pub fn check(&self, ip: &str) -> Value {
        self.json(&["check", ip, "--json"])
    }

    /// GET /metrics from inside the MX namespace (retried briefly: the listener opens a
    /// moment after the control socket); panics unless it answers 200.
    pub fn metrics_text(&self) -> String {
        self.try_metrics_text()
            .unwrap_or_else(|e| panic!("metrics {}: {e}", self.metrics))
    }

    /// [`Daemon::metrics_text`], with what went wrong as an error instead of a panic.
    pub fn try_metrics_text(&self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut s = loop {
            match self.metrics_connect() {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(format!("connect: {e}")),
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: prefilter\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("send the request: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .map_err(|e| format!("read the answer: {e}"))?;
        let text = String::from_utf8(buf).map_err(|e| format!("not UTF-8: {e}"))?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("not an HTTP answer:\n{text}"))?;
        if !(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")) {
            return Err(format!("answer: {head}"));
        }
        Ok(body.to_owned())
    }

    /// A TCP connection to the metrics listener, made inside the MX namespace (the socket
    /// stays there; any thread may use it). Bounded by a 2 s connect timeout.
    pub fn metrics_connect(&self) -> io::Result<TcpStream> {
        let addr = self.metrics;
        in_netns(&self.netns, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })
    }

    /// One raw HTTP exchange on the control socket: `pieces` are written one after the
    /// other (each flushed, so a test controls how the request arrives), then the answer is
    /// read to its end (10 s read timeout). Returns (status, body); status 0 when the answer
    /// is not HTTP.
    pub fn control_raw(&self, pieces: &[&[u8]]) -> (u16, String) {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        for p in pieces {
            if let Err(e) = s.write_all(p).and_then(|()| s.flush()) {
                eprintln!("control_raw: the daemon stopped reading: {e}");
                break;
            }
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out).into_owned();
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        (status, body)
    }

    /// The CLI run as another user (`setpriv --reuid=USER --regid=GROUP --clear-groups`),
    /// with `--socket` of this daemon.
    pub fn cli_as(&self, user: &str, group: &str, args: &[&str]) -> CmdOutput {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={user}"))
            .arg(format!("--regid={group}"))
            .arg("--clear-groups")
            .arg(binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(args);
        c.env_remove("PREFILTER_SOCKET");
        run_bounded(c, CLI_WITHIN)
    }

    /// VmRSS of the daemon in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// RssAnon of the daemon in KiB: its own memory, without mapped files and the pages of
    /// the kernel's maps it touched through mmap (which VmRSS counts).
    pub fn rss_anon_kib(&self) -> u64 {
        self.status_kib("RssAnon")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let s = fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }
}

impl Daemon {
    /// Feed `name` as `feeds list --json` shows it.
    pub fn feed_info(&self, name: &str) -> Value {
        let v = self.json(&["feeds", "list", "--json"]);
        v["feeds"]
            .as_array()
            .expect("feeds is an array")
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("feed {name} missing from feeds list: {v}"))
    }

    /// Waits (bounded) for the run the daemon starts by itself at start-up to end.
    pub fn feed_first_run(&self, name: &str) -> Value {
        poll(Duration::from_secs(20), || {
            let f = self.feed_info(name);
            (!f["last_outcome"].is_null() && f["running"] == false).then_some(f)
        })
        .unwrap_or_else(|| panic!("feed {name} never ran:\n{}", self.log()))
    }
}

/// A free TCP port on 127.0.0.1 of namespace `ns`.
pub fn free_port(ns: &str) -> u16 {
    in_netns(ns, || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    })
}

/// The XDP counter (reason, action) of a `status --json` document; 0 when absent.
pub fn counter(status: &Value, reason: &str, action: &str) -> u64 {
    status["counters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == reason && c["action"] == action)
        .and_then(|c| c["packets"].as_u64())
        .unwrap_or(0)
}

/// The entry count of list `name` in a `status --json` document.
pub fn list_entries(status: &Value, name: &str) -> Option<u64> {
    status["lists"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)?["entries"]
        .as_u64()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child, not reaped yet.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
            let _ = c.wait();
        }
        if self.mounted {
            remove_bpffs(&self.bpffs);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// With no daemon running on it: removes the XDP links pinned under `bpffs` (the CLI does
/// it from the pins), then unmounts the bpffs with everything pinned in it.
pub fn remove_bpffs(bpffs: &Path) {
    let mut c = Command::new(binary());
    c.arg("--socket")
        .arg(bpffs.join("no-daemon.sock"))
        .arg("detach")
        .arg("--pin-dir")
        .arg(bpffs.join("prefilter"));
    let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
    let ok = Command::new("umount")
        .arg(bpffs)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(bpffs).status();
    }
}

/// Two namespaces joined by a veth: `mx` (192.0.2.1/24, 2001:db8::1/64) where the daemon
/// runs, and `client` with every source address the tests use. Both are deleted on drop,
/// which removes the veth too.
pub struct Lab {
    pub mx: Netns,
    pub client: Netns,
    /// The MX end of the veth: the daemon attaches here.
    pub mx_if: String,
    pub client_if: String,
    /// The XDP_PASS program on the client's veth, attached while this lives.
    _client_xdp: OwnedFd,
}

impl Lab {
    pub fn new() -> Self {
        Self::on(Netns::new("pdm"), Netns::new("pdc"))
    }

    /// The lab on two namespaces of the caller's (fixed names, e.g. `cargo xtask lab`'s).
    pub fn on(mx: Netns, client: Netns) -> Self {
        let (mx_if, client_if, client_xdp) = Self::wire(&mx, &client);
        Self {
            mx,
            client,
            mx_if,
            client_if,
            _client_xdp: client_xdp,
        }
    }

    /// The veth between the namespaces, its addresses and routes, the client's XDP program.
    fn wire(mx: &Netns, client: &Netns) -> (String, String, OwnedFd) {
        let (mx_if, client_if) = veth(
            mx,
            &["192.0.2.1/24", "2001:db8::1/64"],
            client,
            &[
                "192.0.2.2/24",
                "192.0.2.50/32",
                "198.51.100.7/32",
                "198.51.100.77/32",
                "203.0.113.9/32",
                "2001:db8::2/64",
            ],
        );
        // The MX answers the extra sources over the veth.
        for net in ["198.51.100.7/32", "198.51.100.77/32", "203.0.113.9/32"] {
            mx.ip(&["route", "add", net, "dev", &mx_if]);
        }
        // A `reset` verdict is XDP_TX on the MX veth, which reaches the client only when the
        // client's veth runs an XDP program too (see tests/tests/netns_xdp.rs).
        let client_xdp = client.attach_xdp_pass(&client_if);
        (mx_if, client_if, client_xdp)
    }

    /// Deletes the veth and creates it again under the same names (as a driver reload or a
    /// re-created bond does to an MX interface): whatever was attached to the old one is gone.
    pub fn recreate_veth(&mut self) {
        self.mx.ip(&["link", "del", &self.mx_if]);
        let (mx_if, client_if, client_xdp) = Self::wire(&self.mx, &self.client);
        assert_eq!((&mx_if, &client_if), (&self.mx_if, &self.client_if));
        self._client_xdp = client_xdp;
    }

    /// The MX's port 25 in the family of `src`.
    pub fn smtp_of(src: IpAddr) -> SocketAddr {
        match src {
            IpAddr::V4(_) => (MX4, 25).into(),
            IpAddr::V6(_) => (MX6, 25).into(),
        }
    }

    /// A TCP connect from `src` to the MX's port 25, from inside the client namespace.
    /// Returns the client's local address or the error, and how long the connect took.
    pub fn connect(&self, src: IpAddr, timeout: Duration) -> (io::Result<SocketAddr>, Duration) {
        connect_from(&self.client.name, src, timeout)
    }

    /// A connect from `src` that must time out after `timeout` (its SYNs dropped) without
    /// the listener seeing it.
    pub fn assert_dropped(&self, listener: &Listener, src: IpAddr, timeout: Duration, why: &str) {
        let seen = listener.count(src);
        let (r, took) = self.connect(src, timeout);
        match r {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{why}: connect from {src}: {e} after {took:?}, expected a timeout"),
            Ok(local) => panic!("{why}: connect from {src} completed ({local}), expected a drop"),
        }
        assert!(
            took >= timeout - Duration::from_millis(20),
            "{why}: {src} gave up after {took:?}"
        );
        assert_eq!(listener.count(src), seen, "{why}: the listener saw {src}");
    }

    /// A connect from `src` that must complete, seen by the listener with its real address.
    pub fn assert_connects(&self, listener: &Listener, src: IpAddr, why: &str) {
        let (r, took) = self.connect(src, CONNECT_TIMEOUT);
        let local = r.unwrap_or_else(|e| panic!("{why}: connect from {src}: {e} after {took:?}"));
        assert_eq!(local.ip(), src, "{why}");
        assert!(
            listener.wait_for(local, Duration::from_secs(2)),
            "{why}: the listener did not see {local}"
        );
    }

    /// A connect from `src` that must be refused at once (a TCP reset from XDP).
    pub fn assert_refused(&self, listener: &Listener, src: IpAddr, why: &str) {
        let seen = listener.count(src);
        let (r, took) = self.connect(src, CONNECT_TIMEOUT);
        match r {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("{why}: connect from {src}: {e} after {took:?}, expected refused"),
            Ok(local) => panic!("{why}: connect from {src} completed ({local}), expected refused"),
        }
        assert!(
            took < REFUSED_WITHIN,
            "{why}: {src} refused only after {took:?}"
        );
        assert_eq!(listener.count(src), seen, "{why}: the listener saw {src}");
    }
}

impl Lab {
    /// Sends up to `n` spoofed SYNs from random 240.0.0.0/4 sources (reserved, never routed)
    /// to the MX's port 25 through the client's veth (AF_PACKET), for at most `within`, at no
    /// more than `pps` a second when given; returns how many were sent.
    pub fn spoofed_syn_flood(&self, n: u64, within: Duration, pps: Option<u64>) -> u64 {
        let ifname = self.client_if.clone();
        in_netns(&self.client.name, move || {
            let c = std::ffi::CString::new(ifname).unwrap();
            // SAFETY: if_nametoindex on a valid C string.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert!(ifindex != 0, "client veth");
            // SAFETY: plain socket(2); closed below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(fd >= 0, "AF_PACKET socket");
            // SAFETY: zeroed sockaddr_ll is valid; fields set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = ifindex as i32;
            sll.sll_halen = 6;
            let mut rng = crate::Rng(0x5eed_d45b);
            let start = Instant::now();
            let deadline = start + within;
            let mut sent = 0;
            while sent < n && Instant::now() < deadline {
                // Paced in steps of 1000: ahead of the rate, wait until it catches up.
                if let Some(pps) = pps.filter(|_| sent % 1000 == 0) {
                    let due = start + Duration::from_secs_f64(sent as f64 / pps as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait.min(deadline.saturating_duration_since(Instant::now())));
                    }
                }
                let r = rng.next() as u32;
                let src = Ipv4Addr::from(0xf000_0000 | (r & 0x0fff_ffff));
                let mut f = crate::packet::Frame::syn(IpAddr::V4(src), IpAddr::V4(MX4), 25);
                f.dst_mac = [0xff; 6];
                f.sport = 1024 + (r >> 20) as u16 % 60000;
                let bytes = f.build();
                // SAFETY: valid buffer and address for the call.
                let rc = unsafe {
                    libc::sendto(
                        fd,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        0,
                        (&raw const sll).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if rc < 0 {
                    // A full send buffer: wait a little and retry this frame.
                    thread::sleep(Duration::from_micros(200));
                    continue;
                }
                sent += 1;
            }
            // SAFETY: our own descriptor.
            unsafe { libc::close(fd) };
            sent
        })
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// A TCP listener on port 25 of the MX (v4 and v6) that accepts everything and records
/// each peer's address.
pub struct Listener {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    pub fn start(mx: &Netns) -> Self {
        let (l4, l6) = in_netns(&mx.name, || {
            (
                TcpListener::bind((MX4, 25)).expect("bind 192.0.2.1:25"),
                TcpListener::bind((MX6, 25)).expect("bind [2001:db8::1]:25"),
            )
        });
        for l in [&l4, &l6] {
            l.set_nonblocking(true).expect("nonblocking listener");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (flag, seen) = (stop.clone(), peers.clone());
        let thread = thread::spawn(move || {
            // Bounded: the test stops it long before.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut idle = true;
                for l in [&l4, &l6] {
                    match l.accept() {
                        Ok((_stream, peer)) => {
                            idle = false;
                            seen.lock().unwrap().push(peer);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => eprintln!("listener accept: {e}"),
                    }
                }
                if idle {
                    thread::sleep(Duration::from_millis(2));
                }
            }
        });
        Self {
            peers,
            stop,
            thread: Some(thread),
        }
    }

    /// Every peer accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// How many connections from `ip` were accepted.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.peers().iter().filter(|p| p.ip() == ip).count()
    }

    /// Whether any connection from `ip` was accepted.
    pub fn saw(&self, ip: IpAddr) -> bool {
        self.peers().iter().any(|p| p.ip() == ip)
    }

    /// Waits (bounded) until `peer` was accepted.
    pub fn wait_for(&self, peer: SocketAddr, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.peers().contains(&peer) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A small tmpfs mounted at a directory of its own under /tmp (for a full disk); unmounted
/// and removed by its exact path on drop, also when the test panics. Declare it before the
/// [`Daemon`] that uses it, so the daemon is gone (its files closed) when it is unmounted.
pub struct Tmpfs {
    pub path: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size={size} tmpfs /tmp/prefilter-test-{unique}`.
    pub fn mount(size: &str) -> Self {
        let path = PathBuf::from(format!("/tmp/prefilter-test-{}", unique("pft")));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut t = Self {
            path,
            mounted: false,
        };
        let out = run_bounded(
            {
                let mut c = Command::new("mount");
                c.args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(&t.path);
                c
            },
            Duration::from_secs(10),
        );
        assert_eq!(out.code, 0, "mount tmpfs: {}", out.both());
        t.mounted = true;
        t
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            }
        }
        let _ = fs::remove_dir(&self.path);
    }
}

/// Polls `f` every 20 ms until it returns Some, for at most `within`.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
