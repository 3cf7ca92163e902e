//! `cargo xtask lab`: the two hosts every end-to-end test builds, made by hand so a person can
//! see them work: a mail exchanger, where the XDP program is to sit, and "the internet" that
//! connects to it through a veth pair. Everything is named exactly and removed by those names,
//! also on error and Ctrl-C.
use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Result, bail};

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

pub fn lab() -> Result<()> {
    require_root("lab")?;
    let agent = build::build()?;
    on_signal_set_interrupted();
    if teardown() {
        println!("lab: removed leftovers of an earlier run");
    }
    let _lab = Lab;
    create()?;
    print_topology();
    agent_note(&agent)?;
    check_reachability()?;
    println!("lab: works; tearing down");
    Ok(())
}

/// Tears the lab down when dropped: on success, on error, and after Ctrl-C.
struct Lab;

impl Drop for Lab {
    fn drop(&mut self) {
        teardown();
    }
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
/// the `Lab` guard. The running child still gets the signal and dies: exec resets handlers.
fn on_signal_set_interrupted() {
    let handler = set_interrupted as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler) };
    }
}

/// A lab step: refuses to start once interrupted.
fn step(cmd: &mut Command) -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
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

/// The gateway daemon is not part of the lab yet; say so when the agent could provide it.
fn agent_note(agent: &Path) -> Result<()> {
    if !agent.is_file() {
        println!(
            "lab: no {}; the lab runs without the agent",
            agent.display()
        );
        return Ok(());
    }
    let help = probe(Command::new(agent).arg("--help"))?;
    let help = String::from_utf8_lossy(&help.stdout);
    let has_run = help
        .lines()
        .any(|l| l.split_whitespace().next() == Some("run"));
    if has_run {
        println!(
            "lab: note: {} has a `run` subcommand; running the gateway daemon on {MX_IF} \
             in this lab lands with the agent issue",
            agent.display()
        );
    } else {
        println!("lab: {} has no `run` subcommand yet", agent.display());
    }
    Ok(())
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
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
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
