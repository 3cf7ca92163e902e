//! Network namespaces and veth pairs that a test creates and always removes, by exact name.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `{tag}{pid}x{n}`, at most 15 bytes so
/// that derived interface names fit IFNAMSIZ.
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("{tag}{}x{n}", std::process::id() % 100_000);
    assert!(name.len() <= 12, "name {name} too long for derived interface names");
    name
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace, deleted on drop (also when the test panics).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `ip netns add {unique(tag)}` with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// `ip netns exec NAME cmd args...`, checked.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", self.name.as_str(), cmd];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// A Command that runs inside the namespace (unchecked, for the caller to spawn).
    pub fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, cmd]);
        c
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> NsGuard {
        let old = File::open("/proc/thread-self/ns/net").expect("open current netns");
        let new = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        // SAFETY: setns on valid namespace fds; affects only this thread.
        let rc = unsafe { libc::setns(new.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {}: {}", self.name, std::io::Error::last_os_error());
        NsGuard { old }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes the veth ends inside it too.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Restores the thread's previous network namespace on drop.
pub struct NsGuard {
    old: File,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        // SAFETY: setns back to the namespace we came from.
        unsafe { libc::setns(self.old.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Joins two namespaces with a veth pair named `{a.name}v` / `{b.name}v`, addresses
/// given in CIDR form, both ends up. Returns the interface names.
pub fn veth(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> (String, String) {
    let (ia, ib) = (format!("{}v", a.name), format!("{}v", b.name));
    run(
        "ip",
        &[
            "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns",
            &b.name,
        ],
    );
    for (ns, ifc, addrs) in [(a, &ia, a_addrs), (b, &ib, b_addrs)] {
        for addr in addrs {
            // nodad: the v6 address is usable at once, no 1 s duplicate detection wait.
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", ifc, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", ifc]);
            }
        }
        ns.ip(&["link", "set", ifc, "up"]);
    }
    (ia, ib)
}
