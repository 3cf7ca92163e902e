//! `cargo xtask lab`: the gateway, running for real between two hosts a person can see: a
//! mail exchanger with the XDP filter on its veth and a stand-in MTA behind it, and "the
//! internet" that connects to it from an allowed relay, a blocked address and a listed
//! network. Everything is named exactly and removed by those names (processes by the pid the
//! lab started), also on error and Ctrl-C; `--hold` keeps the lab up until Ctrl-C.
use std::{
    ffi::CString,
    fs::{self, File},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    build,
    cmd::{self, probe, require_root},
};

const MX: &str = "pflab-mx";
const INET: &str = "pflab-inet";
const MX_IF: &str = "pflab-mx0";
const INET_IF: &str = "pflab-inet0";

const MX_V4: &str = "192.0.2.1";
const MX_V6: &str = "2001:db8::1";
const INET_V4: &str = "192.0.2.2";
const INET_V6: &str = "2001:db8::2";
/// Client addresses behind the internet side, so tests can tell sources apart.
const SOURCES: [&str; 2] = ["198.51.100.7", "203.0.113.9"];
/// The source the lab blocks with the CLI (action drop).
const SPAMMER: &str = SOURCES[0];
/// The other source, in the config's `reset` list.
const LISTED: &str = SOURCES[1];
const LISTED_NET: &str = "203.0.113.0/24";

/// Everything the gateway run owns on the host, removed as a whole at teardown.
const DIR: &str = "/run/pflab";
const BPFFS: &str = "/run/pflab/bpf";
const PIN_DIR: &str = "/run/pflab/bpf/prefilter";
const CONFIG: &str = "/run/pflab/prefilter.toml";
const SOCKET: &str = "/run/pflab/control.sock";
const DAEMON_PID: &str = "/run/pflab/daemon.pid";
const DAEMON_LOG: &str = "/run/pflab/daemon.log";
const SMTPD: &str = "/run/pflab/smtpd.py";
const SMTPD_PID: &str = "/run/pflab/smtpd.pid";
const SMTPD_LOG: &str = "/run/pflab/smtpd.log";
const PROBE: &str = "/run/pflab/smtp-probe.py";
/// The client veth's XDP_PASS program (see [`let_client_receive_xdp_tx`]).
const PASS_PIN: &str = "/run/pflab/bpf/lab_client_xdp_pass";
const METRICS: &str = "127.0.0.1:9750";

const GREETING: &str = "220 lab ESMTP";
const CONNECTED: &str = "connected: 220 lab ESMTP";
const DROPPED: &str = "timed out (dropped)";
const REFUSED: &str = "refused (reset)";

#[derive(Args, Default)]
pub struct LabArgs {
    /// Keep the lab running after the demonstration, until Ctrl-C, to explore it by hand.
    #[arg(long)]
    pub hold: bool,
}

pub fn run(args: &LabArgs) -> Result<()> {
    require_root("lab")?;
    let agent = build::build()?;
    on_signal_set_interrupted();
    if remove_leftovers() {
        println!("lab: removed leftovers of an earlier run");
    }
    let mut lab = Lab {
        agent,
        daemon: None,
        smtpd: None,
    };
    let result = lab.steps(args);
    match &result {
        Ok(()) => println!("lab: works; tearing down"),
        Err(e) => println!("lab: FAILED: {e:#}; tearing down"),
    }
    drop(lab);
    result
}

/// The running lab. Dropping it tears everything down: on success, on error, after Ctrl-C.
struct Lab {
    agent: PathBuf,
    daemon: Option<Child>,
    smtpd: Option<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            stop(daemon, "prefilter daemon");
            // The daemon leaves its XDP link pinned on purpose (a restart must never leave
            // the MX unfiltered); without a daemon the CLI removes the pin itself. The lab's
            // socket, so that this never reaches a real daemon on the host.
            if has_pinned_link() {
                let detach = probe(Command::new(&self.agent).args([
                    "--socket",
                    SOCKET,
                    "detach",
                    "--pin-dir",
                    PIN_DIR,
                ]));
                match detach {
                    Ok(out) if out.status.success() => print!(
                        "lab: prefilter detach: {}",
                        String::from_utf8_lossy(&out.stdout)
                    ),
                    Ok(out) => eprintln!(
                        "lab: warning: prefilter detach failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    Err(e) => eprintln!("lab: warning: cannot run prefilter detach: {e}"),
                }
            }
        }
        if let Some(smtpd) = self.smtpd.take() {
            stop(smtpd, "stand-in MTA");
        }
        remove_dir();
        teardown();
        println!("lab: removed {DIR} and the namespaces {MX} and {INET}");
    }
}

impl Lab {
    fn steps(&mut self, args: &LabArgs) -> Result<()> {
        create()?;
        print_topology();
        check_reachability()?;
        make_dir()?;
        let_client_receive_xdp_tx()?;
        self.start_smtpd()?;
        self.start_daemon()?;
        self.demonstrate()?;
        if args.hold {
            self.hold()?;
        }
        Ok(())
    }

    /// `prefilter ARGS` against the lab's daemon, output to the terminal.
    fn prefilter(&self, args: &[&str]) -> Result<()> {
        step(
            Command::new(&self.agent)
                .args(["--socket", SOCKET])
                .args(args),
        )
    }

    /// A listener on port 25 of the MX standing in for Postfix: greets and hangs up, and logs
    /// every client it accepted, so the lab can show that blocked ones never got there.
    fn start_smtpd(&mut self) -> Result<()> {
        check_interrupted()?;
        let log = File::create(SMTPD_LOG).with_context(|| format!("creating {SMTPD_LOG}"))?;
        let child = cmd::spawn(
            Command::new("ip")
                .args(["netns", "exec", MX, "python3", "-u", SMTPD])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Its own process group: Ctrl-C reaches the lab alone, which stops it in order.
                .process_group(0),
        )?;
        let pid = child.id();
        self.smtpd = Some(child);
        fs::write(SMTPD_PID, format!("{pid}\n"))?;
        wait_for("the stand-in MTA", Duration::from_secs(5), || {
            if let Some(status) = self
                .smtpd
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the stand-in MTA exited ({status}):\n{}", tail(SMTPD_LOG));
            }
            Ok(fs::read_to_string(SMTPD_LOG)?.contains("listening"))
        })?;
        println!(
            "lab: stand-in MTA (for Postfix) listening on {MX_V4}:25 and [{MX_V6}]:25 in {MX}, \
             pid {pid}, log {SMTPD_LOG}"
        );
        Ok(())
    }

    /// The gateway itself. nsenter rather than `ip netns exec`: the daemon must stay in the
    /// host's mount namespace, where the lab's bpffs is mounted.
    fn start_daemon(&mut self) -> Result<()> {
        check_interrupted()?;
        let log = File::create(DAEMON_LOG).with_context(|| format!("creating {DAEMON_LOG}"))?;
        let child = cmd::spawn(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{MX}"))
                .arg(&self.agent)
                .args(["run", "--config", CONFIG])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0),
        )?;
        // nsenter execs the daemon: this is the daemon's pid.
        let pid = child.id();
        self.daemon = Some(child);
        fs::write(DAEMON_PID, format!("{pid}\n"))?;
        let started = Instant::now();
        wait_for("the prefilter daemon", Duration::from_secs(10), || {
            if let Some(status) = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the daemon exited ({status}):\n{}", tail(DAEMON_LOG));
            }
            let status = Command::new(&self.agent)
                .args(["--socket", SOCKET, "status"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            Ok(status.success())
        })
        .map_err(|e| e.context(format!("daemon log:\n{}", tail(DAEMON_LOG))))?;
        println!(
            "lab: prefilter daemon running in {MX} on {MX_IF}, pid {pid}, ready after {:.1} s, \
             log {DAEMON_LOG}",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Blocks a source, connects from each kind of client and checks what each one sees, then
    /// shows how the administrator finds out why.
    fn demonstrate(&self) -> Result<()> {
        println!("lab: blocking {SPAMMER} with the CLI (action drop)");
        self.prefilter(&["block", "add", SPAMMER, "--reason", "lab: spam source"])?;
        let cases = [
            (INET_V4, MX_V4, CONNECTED, "allow list lab-relay"),
            (SPAMMER, MX_V4, DROPPED, "blocked with the CLI, action drop"),
            (LISTED, MX_V4, REFUSED, "list lab-reset, action reset"),
            (INET_V6, MX_V6, CONNECTED, "no rule matches"),
        ];
        println!("lab: SMTP connections from {INET} to the MX, port 25:");
        let mut wrong = Vec::new();
        for (src, dst, expected, why) in cases {
            let got = smtp_probe(src, dst)?;
            if got == expected {
                println!("lab:   {src:<13} {got:<25} as expected: {why}");
            } else {
                println!("lab:   {src:<13} {got:<25} WRONG: expected {expected} ({why})");
                wrong.push(format!("{src}: {got}, expected {expected}"));
            }
        }
        // The filter's point: a refused client never costs the MTA a connection.
        let smtpd_log = fs::read_to_string(SMTPD_LOG)?;
        let seen: Vec<&str> = smtpd_log
            .lines()
            .filter_map(|l| l.strip_prefix("accepted from "))
            .collect();
        println!(
            "lab: the stand-in MTA accepted connections from: {}",
            if seen.is_empty() {
                "nobody".to_owned()
            } else {
                seen.join(", ")
            }
        );
        for blocked in SOURCES {
            if seen.contains(&blocked) {
                wrong.push(format!("{blocked} reached the MTA"));
            }
        }
        if !wrong.is_empty() {
            bail!(
                "the gateway did not behave as configured: {}",
                wrong.join("; ")
            );
        }

        println!("lab: why {SPAMMER} was stopped:");
        self.prefilter(&["check", SPAMMER])?;
        println!("lab: the daemon's status:");
        self.prefilter(&["status"])?;
        self.print_counters()
    }

    /// The non-zero XDP packet counters, as Prometheus scrapes them inside the MX.
    fn print_counters(&self) -> Result<()> {
        check_interrupted()?;
        let url = format!("http://{METRICS}/metrics");
        let out = probe(
            Command::new("ip")
                .args(["netns", "exec", MX, "curl", "-sS", "--noproxy", "*"])
                .args(["--max-time", "5", &url]),
        )?;
        check_interrupted()?;
        if !out.status.success() {
            bail!(
                "cannot fetch {url} in {MX}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let counters: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("prefilter_xdp_packets_total{"))
            .filter(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"))
            .collect();
        if counters.is_empty() {
            bail!("{url} shows no packet counted by the XDP program");
        }
        println!("lab: XDP packet counters from {url} (non-zero only):");
        for line in counters {
            println!("  {line}");
        }
        Ok(())
    }

    /// Keeps the lab up for a person to explore, until Ctrl-C.
    fn hold(&mut self) -> Result<()> {
        let agent = self.agent.display();
        let other_sources = format!("or from {LISTED}, {INET_V4}; {INET_V6} to {MX_V6}");
        let reload = format!("after editing {CONFIG}");
        let lines = [
            (format!("export PREFILTER_SOCKET={SOCKET} pf={agent}"), ""),
            (
                format!("$pf status; $pf block list; $pf check {SPAMMER}"),
                "",
            ),
            ("$pf watch".into(), "live verdict events (sampled)"),
            (
                format!("ip netns exec {INET} python3 {PROBE} {SPAMMER} {MX_V4}"),
                &other_sources,
            ),
            (
                format!("$pf block del {SPAMMER}"),
                "unblock it: the probe then connects",
            ),
            (
                format!("$pf block add {LISTED} --ttl 10m"),
                "more specific than lab-reset: dropped, not refused",
            ),
            (
                format!("ip netns exec {MX} curl -s http://{METRICS}/metrics | grep xdp_packets"),
                "",
            ),
            (format!("ip netns exec {MX} bash"), "a shell on the MX"),
            (format!("tail -f {DAEMON_LOG} {SMTPD_LOG}"), ""),
            ("$pf reload".into(), &reload),
        ];
        println!("lab: holding; explore from another shell, then press Ctrl-C here to tear down:");
        for (line, comment) in lines {
            if comment.is_empty() {
                println!("  {line}");
            } else {
                println!("  {line:<44} # {comment}");
            }
        }
        while !INTERRUPTED.load(Ordering::Relaxed) {
            for (child, what, log) in [
                (&mut self.daemon, "the prefilter daemon", DAEMON_LOG),
                (&mut self.smtpd, "the stand-in MTA", SMTPD_LOG),
            ] {
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    bail!("{what} exited ({status}):\n{}", tail(log));
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
        println!();
        Ok(())
    }
}

/// Connects from `src` (in the internet namespace) to port 25 of `dst`; one of [`CONNECTED`],
/// [`DROPPED`], [`REFUSED`] or what else the probe said.
fn smtp_probe(src: &str, dst: &str) -> Result<String> {
    check_interrupted()?;
    let out = probe(Command::new("ip").args(["netns", "exec", INET, "python3", PROBE, src, dst]))?;
    check_interrupted()?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || stdout.is_empty() {
        bail!(
            "SMTP probe from {src} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// Sends SIGTERM to a child the lab started, waits up to 3 s, then SIGKILLs it.
fn stop(mut child: Child, what: &str) {
    let pid = child.id();
    if let Ok(Some(status)) = child.try_wait() {
        println!("lab: {what} (pid {pid}) had exited: {status}");
        return;
    }
    // SAFETY: kill has no memory preconditions; the pid is our unreaped child, so it cannot
    // have been reused.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            println!("lab: stopped the {what} (pid {pid})");
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    println!("lab: killed the {what} (pid {pid}): no exit 3 s after SIGTERM");
}

fn has_pinned_link() -> bool {
    fs::read_dir(PIN_DIR).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().as_bytes().starts_with(b"link_"))
    })
}

/// Polls `ready` every 100 ms for up to `limit`.
fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        check_interrupted()?;
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what} was not ready within {} s", limit.as_secs());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The last lines of a log, for an error message.
fn tail(path: &str) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The lab directory: bpffs, config, and the two small Python programs.
fn make_dir() -> Result<()> {
    check_interrupted()?;
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    step(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    fs::write(CONFIG, config())?;
    fs::write(SMTPD, smtpd_py())?;
    fs::write(PROBE, probe_py())?;
    println!("lab: {DIR}: bpffs at {BPFFS}, config {CONFIG}");
    Ok(())
}

fn config() -> String {
    format!(
        r#"# Written by `cargo xtask lab`, removed with the lab.
[daemon]
state_dir = "{DIR}/state"
socket = "{SOCKET}"
socket_group = ""
bpffs = "{BPFFS}"

[xdp]
interfaces = ["{MX_IF}"]

[metrics]
listen = "{METRICS}"

[[block]]
name = "lab-reset"
action = "reset"
prefixes = ["{LISTED_NET}"]

[[allow]]
name = "lab-relay"
prefixes = ["{INET_V4}/32"]
"#
    )
}

fn smtpd_py() -> String {
    format!(
        r#"# Stand-in for Postfix in `cargo xtask lab`: greets each client and hangs up.
import select, socket
socks = []
for family, addr in ((socket.AF_INET, "{MX_V4}"), (socket.AF_INET6, "{MX_V6}")):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 25))
    s.listen(16)
    socks.append(s)
print("listening on {MX_V4}:25 and [{MX_V6}]:25", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        conn, peer = s.accept()
        print("accepted from", peer[0], flush=True)
        conn.sendall(b"{GREETING}\r\n")
        conn.close()
"#
    )
}

fn probe_py() -> String {
    format!(
        r#"# `python3 smtp-probe.py SRC DST`: connects from SRC to DST port 25 as a sending MTA
# would (2 s timeout) and says what it saw.
import socket, sys
src, dst = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(2)
s.bind((src, 0))
try:
    s.connect((dst, 25))
except socket.timeout:
    print("{DROPPED}")
except ConnectionRefusedError:
    print("{REFUSED}")
else:
    try:
        print("connected: " + s.recv(512).decode(errors="replace").strip())
    except socket.timeout:
        print("connected, no greeting")
"#
    )
}

/// A `reset` verdict is XDP_TX on the MX veth. Native XDP on a veth puts the RST on the
/// peer's receive ring but kicks the peer's NAPI only when the peer runs an XDP program too,
/// so without one the client would time out instead of being refused (a real NIC transmits
/// XDP_TX frames itself). Give the client veth a program that passes everything; it goes
/// away with the namespace.
fn let_client_receive_xdp_tx() -> Result<()> {
    check_interrupted()?;
    let prog = xdp_pass_program().context("loading an XDP_PASS program")?;
    pin(&prog, PASS_PIN).with_context(|| format!("pinning it at {PASS_PIN}"))?;
    ip_in(
        INET,
        &["link", "set", "dev", INET_IF, "xdpdrv", "pinned", PASS_PIN],
    )
}

/// `bpf(2)` commands and constants used below (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// `return XDP_PASS`, loaded with the raw `bpf(2)` call.
fn xdp_pass_program() -> std::io::Result<OwnedFd> {
    // r0 = 2 (XDP_PASS); exit.
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"xdp_pass");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: a fresh descriptor the kernel returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pin(fd: &OwnedFd, path: &str) -> std::io::Result<()> {
    let path = CString::new(path).map_err(std::io::Error::other)?;
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let mut attr = ObjPin {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Removes what a crashed run left behind: its processes (by the pid it recorded, and only
/// if that pid still runs the lab's program), the bpffs mount and the lab directory, then
/// the namespaces. True if there was any.
fn remove_leftovers() -> bool {
    let mut found = false;
    for (pid_file, marker) in [(DAEMON_PID, "prefilter"), (SMTPD_PID, SMTPD)] {
        let Some(pid) = fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<libc::pid_t>().ok())
            .filter(|&pid| pid > 1)
        else {
            continue;
        };
        if cmdline(pid).is_some_and(|c| c.contains(marker)) {
            found = true;
            println!("lab: stopping pid {pid} left from an earlier run ({pid_file})");
            kill_stray(pid, marker);
        }
    }
    found |= Path::new(DIR).exists();
    remove_dir();
    found | teardown()
}

/// `/proc/PID/cmdline` with spaces between the words; None once the process is gone or a
/// zombie (whose cmdline is empty).
fn cmdline(pid: libc::pid_t) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (!raw.is_empty()).then(|| String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// SIGTERM, up to 3 s, then SIGKILL, for a process that is not our child; stops as soon as
/// the pid no longer runs `marker`.
fn kill_stray(pid: libc::pid_t, marker: &str) {
    let runs_marker = || cmdline(pid).is_some_and(|c| c.contains(marker));
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if !runs_marker() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    if runs_marker() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Unmounts the lab's bpffs (every mount stacked there) and removes the lab directory.
fn remove_dir() {
    for _ in 0..8 {
        if !is_mounted(BPFFS) {
            break;
        }
        if let Err(e) = cmd::run(Command::new("umount").arg(BPFFS)) {
            eprintln!("lab: warning: {e:#}");
            break;
        }
    }
    if is_mounted(BPFFS) {
        // Never recurse into a mounted bpffs: it would unpin whatever is there.
        eprintln!("lab: warning: {BPFFS} is still mounted; leaving {DIR} in place");
        return;
    }
    if let Err(e) = fs::remove_dir_all(DIR)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("lab: warning: removing {DIR}: {e}");
    }
}

fn is_mounted(path: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|info| info.lines().any(|l| l.split(' ').nth(4) == Some(path)))
}

/// Removes the lab's namespaces and links by exact name; true if there was any. Deleting a
/// namespace destroys the veth end inside it, and with it the pair.
fn teardown() -> bool {
    let namespaces = [MX, INET].map(|ns| Path::new("/run/netns").join(ns));
    // The pair is made inside the namespaces, but a crash of another tool could leave an end
    // in the host namespace under our name.
    let links = [MX_IF, INET_IF].map(|dev| Path::new("/sys/class/net").join(dev));
    let mut found = false;
    for (path, kind) in namespaces
        .iter()
        .map(|p| (p, "netns"))
        .chain(links.iter().map(|p| (p, "link")))
    {
        if !path.exists() {
            continue;
        }
        found = true;
        let name = path.file_name().unwrap_or_default();
        if let Err(e) = cmd::run(Command::new("ip").arg(kind).arg("del").arg(name)) {
            eprintln!("lab: warning: {e:#}");
        }
    }
    found
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn set_interrupted(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns Ctrl-C and SIGTERM into a flag checked between steps, so the process lives on to drop
/// the `Lab` guard. A command running in the foreground still gets the signal and dies: exec
/// resets handlers. The daemon and the stand-in MTA run in their own process groups, so they
/// are stopped by the teardown, in order.
fn on_signal_set_interrupted() {
    let handler = set_interrupted as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler) };
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// A lab step: refuses to start once interrupted.
fn step(cmd: &mut Command) -> Result<()> {
    check_interrupted()?;
    cmd::run(cmd)
}

fn ip(args: &[&str]) -> Result<()> {
    step(Command::new("ip").args(args))
}

fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    step(Command::new("ip").args(["-n", ns]).args(args))
}

fn create() -> Result<()> {
    ip(&["netns", "add", MX])?;
    ip(&["netns", "add", INET])?;
    // Both ends are born in their namespaces, so none ever shows up in the host's.
    ip(&[
        "link", "add", MX_IF, "netns", MX, "type", "veth", "peer", "name", INET_IF, "netns", INET,
    ])?;
    for (ns, dev, v4, v6) in [(MX, MX_IF, MX_V4, MX_V6), (INET, INET_IF, INET_V4, INET_V6)] {
        ip_in(ns, &["addr", "add", &format!("{v4}/24"), "dev", dev])?;
        // nodad: duplicate address detection would keep the address unusable for a second.
        ip_in(
            ns,
            &["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"],
        )?;
        ip_in(ns, &["link", "set", "lo", "up"])?;
        ip_in(ns, &["link", "set", dev, "up"])?;
    }
    for source in SOURCES {
        let host = format!("{source}/32");
        ip_in(INET, &["addr", "add", &host, "dev", "lo"])?;
        // The MX answers these clients through the veth, as it would through its gateway.
        ip_in(MX, &["route", "add", &host, "via", INET_V4])?;
    }
    Ok(())
}

fn print_topology() {
    let [s1, s2] = SOURCES;
    println!(
        "lab: topology
  netns {INET}                                       netns {MX}
  lo {s1}/32, {s2}/32 (client sources)
  {INET_IF} {INET_V4}/24 {INET_V6}/64  <-- veth -->  {MX_IF} {MX_V4}/24 {MX_V6}/64
                                               (routes to the client sources via {INET_V4})
  enter a host: ip netns exec {MX} bash"
    );
}

/// One ping per path a test relies on; every one must answer.
fn check_reachability() -> Result<()> {
    let paths: [(&str, &[&str]); 3] = [
        ("192.0.2.2 -> 192.0.2.1", &[MX_V4]),
        ("198.51.100.7 -> 192.0.2.1", &["-I", SOURCES[0], MX_V4]),
        ("2001:db8::2 -> 2001:db8::1", &[MX_V6]),
    ];
    let mut unanswered = Vec::new();
    for (path, args) in paths {
        check_interrupted()?;
        let out = probe(
            Command::new("ip")
                .args(["netns", "exec", INET, "ping", "-c", "1", "-W", "2"])
                .args(args),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rtt = stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix("time="));
        match (out.status.success(), rtt) {
            (true, Some(rtt)) => println!("lab: ping {path}: reply in {rtt} ms"),
            _ => {
                println!("lab: ping {path}: no reply ({})", out.status);
                unanswered.push(path);
            }
        }
    }
    if !unanswered.is_empty() {
        bail!("no ping reply on: {}", unanswered.join(", "));
    }
    Ok(())
}
