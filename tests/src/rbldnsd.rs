//! A real rbldnsd (Debian's `/usr/sbin/rbldnsd`) serving test zones on a loopback port, in
//! the host or in a test's network namespace, with an unbuffered query log so tests can
//! count the queries it got. Stopped by its pid and its directory removed on drop.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::daemon::in_netns;

/// One zone: its name, rbldnsd dataset type (`ip4set`, `ip6tset`...) and data lines.
pub struct Zone<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub data: String,
}

/// The lines every test zone starts with: an SOA (so negative answers carry a TTL, RFC
/// 2308), the answer TTL, and the RFC 5782 test point 127.0.0.2 listed.
pub fn zone_head(ttl: u32, neg_ttl: u32) -> String {
    format!(
        "$SOA {neg_ttl} ns.test. hostmaster.test. 1 600 60 86400 {neg_ttl}\n\
         $NS 3600 ns.test.\n\
         $TTL {ttl}\n\
         127.0.0.2 :127.0.0.2:test point\n"
    )
}

pub struct Rbldnsd {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl Rbldnsd {
    /// Starts rbldnsd on 127.0.0.1 of namespace `netns` (or of the host with `None`) on a free
    /// port, serving `zones`; returns once it answers.
    pub fn start(netns: Option<&str>, zones: &[Zone<'_>]) -> Self {
        Self::start_on(netns, zones, None)
    }

    /// [`Rbldnsd::start`] on `port` when given (53 for resolvers that read resolv.conf,
    /// such as Postfix's dnsblog).
    pub fn start_on(netns: Option<&str>, zones: &[Zone<'_>], port: Option<u16>) -> Self {
        let dir = crate::scratch_dir("rbldnsd", "pfdn");
        fs::create_dir(&dir).expect("rbldnsd dir");
        // rbldnsd refuses to run as root: it runs as `rbldns`, which must read the data and
        // write the query log here.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let mut args: Vec<String> = Vec::new();
        for z in zones {
            let file = format!("{}.data", z.name);
            fs::write(dir.join(&file), &z.data).expect("zone data");
            args.push(format!("{}:{}:{file}", z.name, z.kind));
        }
        let free_port = || {
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|s| s.local_addr())
                .expect("a free UDP port")
                .port()
        };
        let port = match (port, netns) {
            (Some(p), _) => p,
            (None, Some(ns)) => in_netns(ns, free_port),
            (None, None) => free_port(),
        };
        let addr: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
        let log = dir.join("query.log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/sbin/rbldnsd"]);
                c
            }
            None => Command::new("/usr/sbin/rbldnsd"),
        };
        cmd.args(["-n", "-q", "-4", "-u", "rbldns", "-c", "0", "-w"])
            .arg(&dir)
            .args(["-b", &format!("127.0.0.1/{port}"), "-l", "+query.log"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr")).expect("stderr file"));
        let child = cmd.spawn().expect("spawn rbldnsd");
        let mut r = Self {
            child: Some(child),
            addr,
            dir,
            log,
        };
        let probe_zone = zones.first().map_or("x.test", |z| z.name);
        let ready = {
            let query = |()| query_a(addr, &format!("2.0.0.127.{probe_zone}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let ok = match netns {
                    Some(ns) => in_netns(ns, || query(())),
                    None => query(()),
                };
                if ok.is_some() || Instant::now() > deadline {
                    break ok.is_some();
                }
                if let Some(Ok(Some(st))) = r.child.as_mut().map(|c| c.try_wait()) {
                    panic!("rbldnsd exited: {st}: {}", r.stderr());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        assert!(ready, "rbldnsd did not answer on {addr}: {}", r.stderr());
        // The readiness queries are not the test's.
        r.clear_log();
        r
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Query log lines so far (one per query rbldnsd recognised).
    pub fn queries(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Empties the query log (rbldnsd appends to the open file: truncating keeps it valid).
    pub fn clear_log(&self) {
        let _ = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.log);
    }
}

impl Drop for Rbldnsd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs rbldnsd in place: this pid is rbldnsd's.
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Sends one A query for `name` to `server` and returns the rcode when an answer comes
/// within a second (readiness check; hand-built because a DNS library here would only be
/// used for this).
pub fn query_a(server: SocketAddr, name: &str) -> Option<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    s.send_to(&q, server).ok()?;
    let mut buf = [0u8; 512];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    (n >= 4 && buf[0] == 0x12 && buf[1] == 0x34).then_some(buf[3] & 0x0f)
}
