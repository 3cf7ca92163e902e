//! `cargo xtask bench`, part 2: a SYN flood on a veth pair between two namespaces of our own,
//! against prefilter and what a site would run instead, in one run; writes docs/bench.md and
//! two PNG plots.
//!
//! - sender namespace `gen`: our own AF_PACKET generator (sendmmsg, qdisc bypass) on a thread
//!   pinned to CPU 0 sends spoofed SYNs from 240.0.0.0/4 (reserved, never routed) to 192.0.2.1:25; the clean client 192.0.2.2
//!   connects to port 25 meanwhile;
//! - receiver namespace `mx`: GRO on and threaded NAPI on its veth, the NAPI thread pinned to
//!   CPU 1, with interrupt moderation (gro_flush_timeout, napi_defer_hard_irqs) as a NIC
//!   has it; its run time (schedstat) divided by the packets the veth received is the
//!   receiving CPU per packet;
//! - contenders on the receiving veth, each a struct whose Drop removes what it set up:
//!   prefilter (the daemon, native and skb mode, list loaded with `prefilter block import`),
//!   xdp-filter (xdp-tools), an nftables set in a netdev ingress chain, an XDP drop-all
//!   program (the floor), one that reads a byte of the frame and drops (the floor of any
//!   filter that reads the packet), and no filter (SYN cookies);
//! - lists: the first N /24s of 240.0.0.0/4 (N = 1,048,576 covers all of it). Sources: 512
//!   (240.0.0.0/23, cache-hot) or random over the covered range.
//! - IPv6: the same flood in 74-byte frames to [2001:db8:ffff::1]:25 against no filter, the
//!   floor, prefilter (native, skb) and an `ip6` nftables set (xdp-filter has no prefixes),
//!   with a list of every /48 of 2001:db8::/32 but 2001:db8:ffff::/48, where the MX and
//!   the clean client 2001:db8:ffff::2 live: sources random over the listed /48s (and, in a
//!   full run, 512 hot ones in 2001:db8::/48).
//!
//! trafgen (netsniff-ng) was the first choice; against a veth whose peer runs XDP it exits on
//! EAGAIN almost at once (its socket buffer fills with frames waiting in the veth ring, and
//! it cannot raise `net.core.wmem_*` inside a namespace), so restarts dominated and the
//! offered rate fell to a few 10k pps. The generator here forces a 64 MiB send buffer
//! (SO_SNDBUFFORCE), so a full ring costs counted drops instead.
//!
//! Every flood is bounded in packets and in time; namespaces, daemon, nft tables and XDP
//! programs go with the guards, also on a panic or Ctrl-C (SIGINT/SIGTERM set a flag that
//! the loops check, and the run unwinds).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufWriter, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use prefilter_tests::{
    Rng,
    daemon::{Daemon, in_netns, try_run_bounded},
    is_root,
    netns::{Netns, U64Array, insn, veth},
};
use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const MX4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLEAN4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The MX and the clean client in 2001:db8:ffff::/48, the one /48 the IPv6 list leaves out.
const MX6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
const CLEAN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 2);
/// The full list: every /24 of 240.0.0.0/4.
const FULL: usize = 1 << 20;
/// The IPv6 list: 2001:db8:0::/48 to 2001:db8:fffe::/48, all of 2001:db8::/32 but the MX's /48.
const FULL6: usize = 0xffff;
/// The control-plane row of the DNSBL-sized list.
const DNSBL_SETUP: &str = "prefilter native (5M /32 + 1M mixed)";
/// Hot sources: 240.0.0.0/23.
const HOT_SOURCES: usize = 512;
/// CPU of the sender, and of the receiving NAPI thread.
const SEND_CPU: usize = 0;
const RECV_CPU: usize = 1;
/// Upper bound on the offered rate, for the packet bound of an unlimited flood.
const MAX_PPS: u64 = 5_000_000;
/// Receiving veth: `gro_flush_timeout` (ns) and `napi_defer_hard_irqs` (polls), see
/// [`Lab::napi_thread`].
const COALESCE_NS: u32 = 50_000;
const DEFER_POLLS: u32 = 100;
/// The clean client's connect timeout and pause between connects. The timeout lets the
/// kernel retransmit the SYN twice (after 1 s and 3 s), as it does for an MTA, which waits
/// minutes: a SYN lost in a full veth ring before any filter saw it then costs a delay (the
/// p99 shows it), not the connection.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(3500);
const CLIENT_PAUSE: Duration = Duration::from_millis(20);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ends the run by unwinding (every guard cleans up) when SIGINT/SIGTERM arrived.
fn check_stop() {
    if STOP.load(Ordering::SeqCst) {
        panic!("interrupted");
    }
}

struct Opts {
    quick: bool,
    out: PathBuf,
    plots: PathBuf,
    prog_test_run: Option<PathBuf>,
}

fn parse_args() -> Result<Opts, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Opts {
        quick: false,
        out: root.join("docs/bench.md"),
        plots: root.join("docs"),
        prog_test_run: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = args.next().ok_or("--out FILE")?.into(),
            "--plots" => o.plots = args.next().ok_or("--plots DIR")?.into(),
            "--prog-test-run" => {
                o.prog_test_run = Some(args.next().ok_or("--prog-test-run FILE")?.into())
            }
            // Arguments meant for the BPF_PROG_TEST_RUN bench are passed to both.
            _ => {}
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// `nft -f` applying a 1 % change to the 1Mi interval set ran past 300 s here: it is
/// stopped sooner and reported as such.
const NFT_DELTA_WITHIN: Duration = Duration::from_secs(60);

/// Bound on any external command (`nft -f` of a million elements included).
const CMD_WITHIN: Duration = Duration::from_secs(300);

/// Runs a command (killed by its pid after [`CMD_WITHIN`]), returning its stdout, or an
/// error with its output.
fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let mut c = Command::new(cmd);
    c.args(args);
    let out = try_run_bounded(c, CMD_WITHIN).ok_or_else(|| {
        format!(
            "{cmd} {}: still running after {CMD_WITHIN:?}",
            args.join(" ")
        )
    })?;
    if out.code != 0 {
        return Err(format!("{cmd} {}: {}", args.join(" "), out.both()));
    }
    Ok(out.stdout)
}

fn json(cmd: &str, args: &[&str]) -> Result<Value, String> {
    let text = sh(cmd, args)?;
    serde_json::from_str(&text).map_err(|e| format!("{cmd} {args:?}: not JSON: {e}"))
}

fn pin(pid: i32, cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(format!(
            "pin {pid} to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// CPU time a task has run, in ns (first field of /proc/PID/schedstat).
fn runtime_ns(pid: i32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Busy and total jiffies of one CPU from /proc/stat.
fn cpu_jiffies(cpu: usize) -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let tag = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&tag)) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// A directory under /tmp for the generated lists, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = PathBuf::from(format!("/tmp/prefilter-flood-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir(&p).expect("create the bench's temp directory");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The `n`-th /24 of 240.0.0.0/4.
fn net24(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0xf000_0000u32 + ((i as u32) << 8))
}

/// The `n`-th /48 of 2001:db8::/32 (2001:db8:n::/48).
fn net48(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, 0)
}

/// The address family of a flood: its frames, list, clean client and MX address.
#[derive(Clone, Copy, PartialEq)]
enum Family {
    /// Sources in 240.0.0.0/4, lists of its /24s.
    V4,
    /// Sources in 2001:db8::/32, lists of its /48s.
    V6,
}

impl Family {
    /// The `i`-th listed prefix.
    fn prefix(self, i: usize) -> String {
        match self {
            Family::V4 => format!("{}/24", net24(i)),
            Family::V6 => format!("{}/48", net48(i)),
        }
    }

    /// What a list counts, for labels.
    fn unit(self) -> &'static str {
        match self {
            Family::V4 => "/24s",
            Family::V6 => "/48s",
        }
    }

    /// Tag prefix of the rows' sources, so the IPv4 tables never pick up an IPv6 row.
    fn tag(self) -> &'static str {
        match self {
            Family::V4 => "",
            Family::V6 => "v6 ",
        }
    }

    fn mx(self) -> IpAddr {
        match self {
            Family::V4 => MX4.into(),
            Family::V6 => MX6.into(),
        }
    }

    fn clean(self) -> IpAddr {
        match self {
            Family::V4 => CLEAN4.into(),
            Family::V6 => CLEAN6.into(),
        }
    }

    /// Packets that reached IP in namespace `ns` (past any netdev ingress hook).
    fn ip_received(self, ns: &Netns) -> Option<u64> {
        match self {
            Family::V4 => ns.netstat().get("Ip.InReceives").copied(),
            // /proc/net/snmp6 is `Name value` lines, not the header/value pairs of snmp.
            Family::V6 => {
                let out = ns.exec("cat", &["/proc/net/snmp6"]);
                String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some("Ip6InReceives")).then(|| w.next()?.parse().ok())?
                })
            }
        }
    }
}

/// Writes the first `n` prefixes of `fam`, one per line, for `prefilter block import`.
/// Lines of the DNSBL-sized list: 5M random host addresses and 1M mixed /8–/31 prefixes.
const DNSBL: (usize, usize) = (5_000_000, 1_000_000);

/// Writes the DNSBL-sized list (hosts as bare addresses, as dumps write them).
fn write_dnsbl_list(dir: &Path) -> PathBuf {
    let path = dir.join("list-dnsbl.txt");
    let mut w = BufWriter::new(fs::File::create(&path).expect("create list"));
    for (a, len) in prefilter_tests::dnsbl_prefixes(&mut Rng(0x5ca1e), DNSBL.0, DNSBL.1) {
        if len == 32 {
            writeln!(w, "{}", Ipv4Addr::from(a))
        } else {
            writeln!(w, "{}/{len}", Ipv4Addr::from(a))
        }
        .expect("write list");
    }
    w.flush().expect("flush list");
    path
}

fn write_plain_list(dir: &Path, fam: Family, n: usize) -> PathBuf {
    let path = dir.join(format!("list{}-{n}.txt", fam.tag().trim()));
    let mut w = BufWriter::new(fs::File::create(&path).expect("create list"));
    for i in 0..n {
        writeln!(w, "{}", fam.prefix(i)).expect("write list");
    }
    w.flush().expect("flush list");
    path
}

// ---------------------------------------------------------------------------------------
// BPF: a drop-all program, run-time statistics

const BPF_ENABLE_STATS: libc::c_long = 32;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `return XDP_DROP`, named `xdp_drop_all`: the floor.
fn xdp_drop_program() -> std::io::Result<OwnedFd> {
    prefilter_tests::netns::xdp_return_program(1, "xdp_drop_all")
}

/// Reads one byte of the frame's IP source address and drops, the result depending on the
/// read: the floor of any filter that looks at the packet, which on a veth is a cache miss
/// (the frame was written on the sender's CPU). Hand-assembled: nine instructions.
fn xdp_read_drop_program() -> std::io::Result<OwnedFd> {
    let i = insn;
    let insns = [
        i(0x61, 0x12, 0, 0),  // r2 = *(u32 *)(r1 + 0): data
        i(0x61, 0x13, 4, 0),  // r3 = *(u32 *)(r1 + 4): data_end
        i(0xbf, 0x24, 0, 0),  // r4 = r2
        i(0x07, 0x04, 0, 34), // r4 += 34 (Ethernet + IPv4 header)
        i(0x2d, 0x34, 4, 0),  // if r4 > r3 goto +4
        i(0x71, 0x20, 29, 0), // r0 = *(u8 *)(r2 + 29): last byte of the IPv4 source
        i(0x57, 0x00, 0, 0),  // r0 &= 0
        i(0x07, 0x00, 0, 1),  // r0 += 1: XDP_DROP, after the read
        i(0x95, 0, 0, 0),     // exit
        i(0xb7, 0x00, 0, 1),  // r0 = XDP_DROP
        i(0x95, 0, 0, 0),     // exit
    ];
    prefilter_tests::netns::xdp_insns_program(&insns, "xdp_read_drop")
}

/// Looks the frame's source /24 up in an array of `entries` u64s (2^20: 8 MiB, the size of
/// prefilter's /24 table over 240.0.0.0/4) and drops, the result depending on the load: the
/// floor of any table lookup that misses the cache, one dependent memory access.
fn xdp_table_load_program(entries: u32) -> std::io::Result<OwnedFd> {
    let map = U64Array::new(entries)?;
    let i = insn;
    let insns = [
        i(0x61, 0x12, 0, 0),                    // r2 = data
        i(0x61, 0x13, 4, 0),                    // r3 = data_end
        i(0xbf, 0x24, 0, 0),                    // r4 = r2
        i(0x07, 0x04, 0, 34),                   // r4 += 34 (Ethernet + IPv4 header)
        i(0x2d, 0x34, 15, 0),                   // if r4 > r3 goto drop
        i(0x61, 0x26, 26, 0),                   // r6 = IPv4 source (wire order)
        i(0xdc, 0x06, 0, 32),                   // r6 = be32(r6)
        i(0x77, 0x06, 0, 8),                    // r6 >>= 8: the /24
        i(0x57, 0x06, 0, entries as i32 - 1),   // r6 &= entries - 1
        i(0x63, 0x6a, -4, 0),                   // *(u32 *)(r10 - 4) = r6
        i(0xbf, 0xa2, 0, 0),                    // r2 = r10
        i(0x07, 0x02, 0, -4),                   // r2 += -4
        i(0x18, 0x11, 0, map.fd().as_raw_fd()), // r1 = map (BPF_PSEUDO_MAP_FD) ...
        0,                                      // ... upper half of the 64-bit immediate
        i(0x85, 0, 0, 1),                       // call bpf_map_lookup_elem (inlined)
        i(0x15, 0x00, 4, 0),                    // if r0 == 0 goto drop
        i(0x79, 0x00, 0, 0),                    // r0 = *(u64 *)(r0 + 0)
        i(0x57, 0x00, 0, 0),                    // r0 &= 0
        i(0x07, 0x00, 0, 1),                    // r0 += 1: XDP_DROP, after the load
        i(0x95, 0, 0, 0),                       // exit
        i(0xb7, 0x00, 0, 1),                    // drop: r0 = XDP_DROP
        i(0x95, 0, 0, 0),                       // exit
    ];
    prefilter_tests::netns::xdp_insns_program(&insns, "xdp_table_drop")
}

/// Kernel BPF run-time statistics on while this lives (BPF_ENABLE_STATS: the same switch as
/// `sysctl kernel.bpf_stats_enabled=1`, but reference-counted and turned back off by the
/// kernel when the descriptor closes, even if this process is killed).
struct BpfStats(#[allow(dead_code)] OwnedFd);

impl BpfStats {
    fn enable() -> std::io::Result<Self> {
        #[repr(C)]
        struct EnableStats {
            kind: u32,
            _pad: [u32; 3],
        }
        let mut attr = EnableStats {
            kind: 0, // BPF_STATS_RUN_TIME
            _pad: [0; 3],
        };
        bpf(BPF_ENABLE_STATS, &mut attr).map(Self)
    }
}

/// (run_time_ns, run_cnt) of program `id`.
fn prog_stats(id: u64) -> Option<(u64, u64)> {
    let v = json("bpftool", &["prog", "show", "id", &id.to_string(), "-j"]).ok()?;
    Some((v["run_time_ns"].as_u64()?, v["run_cnt"].as_u64()?))
}

/// Sum of bytes_memlock over the maps of program `id`, and their number.
fn prog_map_memlock(id: u64) -> Option<(u64, usize)> {
    let v = json("bpftool", &["prog", "show", "id", &id.to_string(), "-j"]).ok()?;
    let ids: Vec<u64> = v["map_ids"]
        .as_array()?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let maps = json("bpftool", &["map", "show", "-j"]).ok()?;
    let sum = maps
        .as_array()?
        .iter()
        .filter(|m| m["id"].as_u64().is_some_and(|i| ids.contains(&i)))
        .filter_map(|m| {
            m["bytes_memlock"]
                .as_u64()
                .or_else(|| m["bytes_memlock"].as_str()?.parse().ok())
        })
        .sum();
    Some((sum, ids.len()))
}

// ---------------------------------------------------------------------------------------
// The lab

/// Accepts and closes every connection to 192.0.2.1:25 and [2001:db8:ffff::1]:25 in the MX
/// namespace until dropped (bounded by [`LISTEN_WITHIN`] too). The harness's listener stops
/// after 600 s, shorter than a full bench, and listens on its own lab's 2001:db8::1.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

const LISTEN_WITHIN: Duration = Duration::from_secs(3600);

impl Listener {
    fn start(mx: &Netns) -> Self {
        let ls: Vec<std::net::TcpListener> = [Family::V4, Family::V6]
            .iter()
            .map(|f| {
                let at = SocketAddr::new(f.mx(), 25);
                let l = in_netns(&mx.name, || std::net::TcpListener::bind(at))
                    .unwrap_or_else(|e| panic!("bind {at} in the MX namespace: {e}"));
                l.set_nonblocking(true).expect("nonblocking listener");
                l
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + LISTEN_WITHIN;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut idle = true;
                for l in &ls {
                    match l.accept() {
                        Ok(_) => idle = false,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => eprintln!("flood: listener: {e}"),
                    }
                }
                if idle {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
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

struct Lab {
    /// Declared first: the listener's sockets close before the namespaces go.
    _listener: Listener,
    gen_: Netns,
    mx: Netns,
    gen_if: String,
    mx_if: String,
    mx_mac: [u8; 6],
    gen_mac: [u8; 6],
}

fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    let v: Value =
        serde_json::from_slice(&ns.ip(&["-j", "link", "show", "dev", ifname]).stdout).unwrap();
    let s = v[0]["address"].as_str().expect("MAC address");
    let mut m = [0u8; 6];
    for (b, h) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(h, 16).expect("MAC byte");
    }
    m
}

impl Lab {
    fn new() -> Self {
        let gen_ = Netns::new("pfg");
        let mx = Netns::new("pfm");
        let (gen_if, mx_if) = veth(
            &gen_,
            &["192.0.2.2/24", "2001:db8:ffff::2/64"],
            &mx,
            &["192.0.2.1/24", "2001:db8:ffff::1/64"],
        );
        mx.exec("sysctl", &["-qw", "net.ipv4.tcp_syncookies=1"]);
        // GRO gives the receiving veth a NAPI instance (XDP does too); threaded NAPI makes its
        // work a kernel thread we can pin and whose run time we can read.
        mx.exec("ethtool", &["-K", &mx_if, "gro", "on"]);
        // A veth passes frames to its peer's NAPI (GRO) only when the sender has no TSO.
        gen_.exec("ethtool", &["-K", &gen_if, "tso", "off"]);
        let listener = Listener::start(&mx);
        let (mx_mac, gen_mac) = (mac_of(&mx, &mx_if), mac_of(&gen_, &gen_if));
        Self {
            _listener: listener,
            gen_,
            mx,
            gen_if,
            mx_if,
            mx_mac,
            gen_mac,
        }
    }

    /// Turns threaded NAPI on for the receiving veth and returns its thread, pinned to
    /// [`RECV_CPU`].
    fn napi_thread(&self) -> Result<i32, String> {
        // Interrupt moderation, as a NIC has it: after a poll the NAPI instance stays
        // scheduled and polls again after COALESCE_NS instead of sleeping until the next
        // frame wakes it, so a packet's cost is its processing, not a thread wake-up each.
        let script = format!(
            "cd /sys/class/net/{} && echo 1 > threaded && echo {COALESCE_NS} > gro_flush_timeout \
             && echo {DEFER_POLLS} > napi_defer_hard_irqs",
            self.mx_if
        );
        sh("ip", &["netns", "exec", &self.mx.name, "sh", "-c", &script])?;
        // comm is "napi/IFNAME-ID", cut at 15 bytes.
        let want: String = format!("napi/{}-", self.mx_if).chars().take(15).collect();
        for _ in 0..50 {
            for e in fs::read_dir("/proc").map_err(|e| e.to_string())?.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                if comm.trim_end().starts_with(&want) {
                    pin(pid, RECV_CPU)?;
                    return Ok(pid);
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!("no NAPI thread `{want}...` for {}", self.mx_if))
    }

    fn link_stats(ns: &Netns, ifname: &str) -> Value {
        let v: Value =
            serde_json::from_slice(&ns.ip(&["-j", "-s", "link", "show", "dev", ifname]).stdout)
                .expect("ip -j -s link");
        v[0]["stats64"].clone()
    }

    /// The id of the XDP program attached to the receiving veth (the dispatcher for libxdp).
    fn xdp_prog_id(&self) -> Option<u64> {
        let v: Value = serde_json::from_slice(
            &self
                .mx
                .ip(&["-j", "link", "show", "dev", &self.mx_if])
                .stdout,
        )
        .ok()?;
        let x = &v[0]["xdp"];
        x["prog"]["id"]
            .as_u64()
            .or_else(|| x["attached"][0]["prog"]["id"].as_u64())
    }

    /// The SYN frames a flood cycles through: 512 for hot sources, else up to 2^18 with
    /// sources drawn at random over the listed range (seeded), each with its checksums.
    /// IPv4: hot 240.0.0.0/23, random over the first n /24s of 240.0.0.0/4. IPv6: hot
    /// 2001:db8:0:N::1 (512 /64s of one /48), random over the first n /48s of 2001:db8::/32
    /// (random low 80 bits).
    fn frames(&self, fam: Family, sources: Sources) -> Arc<FrameSet> {
        let mut rng = Rng(0x5eed_f100d);
        let (count, span) = match sources {
            Sources::Hot => (HOT_SOURCES, HOT_SOURCES as u64),
            Sources::Random(n) => ((n * 256).min(1 << 18), n as u64 * 256),
        };
        let len = match fam {
            Family::V4 => 54,
            Family::V6 => 74,
        };
        let mut bytes = Vec::with_capacity(count * len);
        for i in 0..count {
            let src: IpAddr = match (fam, sources) {
                (Family::V4, Sources::Hot) => Ipv4Addr::from(0xf000_0000u32 + i as u32).into(),
                (Family::V4, Sources::Random(_)) => {
                    Ipv4Addr::from(0xf000_0000u32 + (rng.next() % span) as u32).into()
                }
                (Family::V6, Sources::Hot) => {
                    Ipv6Addr::new(0x2001, 0xdb8, 0, i as u16, 0, 0, 0, 1).into()
                }
                (Family::V6, Sources::Random(n)) => {
                    let net = u128::from(net48(rng.next() as usize % n));
                    let host =
                        (u128::from(rng.next()) << 64 | u128::from(rng.next())) & !(!0 << 80);
                    Ipv6Addr::from(net | host).into()
                }
            };
            syn_frame(&mut bytes, self.mx_mac, self.gen_mac, src, &mut rng);
        }
        debug_assert_eq!(bytes.len(), count * len);
        let tag = match sources {
            Sources::Hot => format!("{}{HOT_SOURCES} hot", fam.tag()),
            Sources::Random(n) => format!("{}random {}", fam.tag(), size_label(n)),
        };
        Arc::new(FrameSet {
            fam,
            tag,
            len,
            bytes,
        })
    }
}

/// The frames of one flood, all of one length, back to back (as cache-friendly for the
/// generator as an array of arrays, for 54-byte IPv4 and 74-byte IPv6 frames alike).
struct FrameSet {
    fam: Family,
    /// The rows' `sources`: "512 hot", "random 1Mi", "v6 random 64Ki"...
    tag: String,
    len: usize,
    bytes: Vec<u8>,
}

impl FrameSet {
    fn count(&self) -> usize {
        self.bytes.len() / self.len
    }

    fn get(&self, i: usize) -> &[u8] {
        &self.bytes[i * self.len..(i + 1) * self.len]
    }
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn csum_add(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// Appends Ethernet + IP + TCP SYN (no options) from `src` (random port and sequence) to
/// the MX's port 25 in `src`'s family, checksums filled in: 54 bytes for IPv4 (20-byte
/// header), 74 for IPv6 (40-byte header, no extension headers).
fn syn_frame(out: &mut Vec<u8>, dst_mac: [u8; 6], src_mac: [u8; 6], src: IpAddr, rng: &mut Rng) {
    let r = rng.next();
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    // The TCP pseudo-header's addresses: the sum is the same in any order of the words.
    let addrs = match src {
        IpAddr::V4(src) => {
            out.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&40u16.to_be_bytes());
            ip[4..6].copy_from_slice(&(r as u16).to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&MX4.octets());
            let c = csum_fold(csum_add(&ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&ip);
            csum_add(&ip[12..20])
        }
        IpAddr::V6(src) => {
            out.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes()); // payload: the TCP header
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&MX6.octets());
            out.extend_from_slice(&ip);
            csum_add(&ip[8..40])
        }
    };
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&(1024 + (r >> 16) as u16 % 60000).to_be_bytes());
    tcp[2..4].copy_from_slice(&25u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&((r >> 32) as u32).to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    // Rest of the pseudo-header, v4 and v6 alike in sum: protocol 6, TCP length 20.
    let c = csum_fold(addrs + 6 + 20 + csum_add(&tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&tcp);
}

#[derive(Clone, Copy, PartialEq)]
enum Sources {
    Hot,
    /// Random over the first n prefixes of the family's list.
    Random(usize),
}

// ---------------------------------------------------------------------------------------
// Load: the generator, bounded; the clean client

/// What the generator did.
#[derive(Default)]
struct GenStats {
    /// Frames the kernel took (sent, or dropped by the veth and counted there).
    sent: u64,
    /// sendmmsg calls refused with EAGAIN/ENOBUFS (retried after a yield).
    busy: u64,
}

const PACKET_QDISC_BYPASS: libc::c_int = 20;
const BATCH: usize = 64;

/// Sends `frames` round robin on `ifname` in namespace `ns` from a thread pinned to
/// [`SEND_CPU`]: an AF_PACKET socket (qdisc bypass, a forced 64 MiB send buffer so a full
/// veth ring costs drops, not stalls), sendmmsg in batches of 64. At `rate` packets per
/// second if given, else as fast as it goes; stops at `deadline`, after `max_packets`, or on
/// SIGINT/SIGTERM.
fn generate(
    ns: &str,
    ifname: &str,
    frames: &FrameSet,
    rate: Option<u64>,
    deadline: Instant,
    max_packets: u64,
) -> Result<GenStats, String> {
    in_netns(ns, || {
        pin(0, SEND_CPU)?;
        let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(err("AF_PACKET socket"));
        }
        // SAFETY: a fresh descriptor of ours.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(err(&format!("no {ifname} in {ns}")));
        }
        let setopt = |level, name, val: libc::c_int| {
            // SAFETY: an int option of the size passed.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    level,
                    name,
                    (&raw const val).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            }
        };
        if setopt(libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1) != 0 {
            return Err(err("PACKET_QDISC_BYPASS"));
        }
        if setopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 64 << 20) != 0 {
            return Err(err("SO_SNDBUFFORCE"));
        }
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: binding our socket to a sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(err("bind AF_PACKET"));
        }
        let mut st = GenStats::default();
        let start = Instant::now();
        let mut next = 0usize;
        let mut iov: Vec<libc::iovec> = vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0
            };
            BATCH
        ];
        // SAFETY: zeroed mmsghdr is valid (no name, no control).
        let mut msgs: Vec<libc::mmsghdr> =
            (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut calls = 0u64;
        while st.sent < max_packets {
            calls += 1;
            if calls.is_multiple_of(16)
                && (Instant::now() >= deadline || STOP.load(Ordering::SeqCst))
            {
                break;
            }
            if let Some(r) = rate {
                let due = start + Duration::from_secs_f64(st.sent as f64 / r as f64);
                let now = Instant::now();
                if due > now {
                    if due > deadline {
                        break;
                    }
                    thread::sleep(due - now);
                }
            }
            let n = BATCH.min((max_packets - st.sent) as usize);
            for i in 0..n {
                let f = frames.get((next + i) % frames.count());
                iov[i].iov_base = f.as_ptr() as *mut libc::c_void;
                iov[i].iov_len = f.len();
                msgs[i].msg_hdr.msg_iov = &raw mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: n initialized mmsghdr entries pointing at live frames.
            let sent = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    n as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if sent < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    // The send buffer is full: nothing went out, try again.
                    Some(libc::EAGAIN) => {
                        st.busy += 1;
                        thread::yield_now();
                        continue;
                    }
                    // The veth ring was full: the first frame was dropped (and counted by
                    // the veth); it was offered all the same.
                    Some(libc::ENOBUFS) => {
                        st.busy += 1;
                        st.sent += 1;
                        next = (next + 1) % frames.count();
                        thread::yield_now();
                        continue;
                    }
                    _ => return Err(format!("sendmmsg: {e}")),
                }
            }
            st.sent += sent as u64;
            next = (next + sent as usize) % frames.count();
        }
        Ok(st)
    })
}

struct ClientStats {
    attempts: usize,
    ok: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// A TCP connect from the clean client's address of `fam` (bound first) to the MX's port 25,
/// inside namespace `ns`; how long it took. (The harness's `connect_from` aims at its own
/// lab's MX, 2001:db8::1, which this lab's IPv6 list covers.)
fn connect(ns: &str, fam: Family, timeout: Duration) -> (std::io::Result<()>, Duration) {
    let (src, dst) = (fam.clean(), SocketAddr::new(fam.mx(), 25));
    in_netns(ns, || {
        let start = Instant::now();
        let r = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)).and_then(
            |sock| {
                sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
                sock.connect_timeout(&dst.into(), timeout)
            },
        );
        (r, start.elapsed())
    })
}

/// Connects from 192.0.2.2 or 2001:db8:ffff::2 to the MX's port 25 until `stop` (at most
/// `max` times).
fn clean_client(gen_ns: String, fam: Family, stop: Arc<AtomicBool>, max: usize) -> ClientStats {
    let mut times = Vec::new();
    let mut attempts = 0;
    while !stop.load(Ordering::Relaxed) && attempts < max {
        attempts += 1;
        let (r, took) = connect(&gen_ns, fam, CLIENT_TIMEOUT);
        if r.is_ok() {
            times.push(took.as_secs_f64() * 1e3);
        }
        thread::sleep(CLIENT_PAUSE);
    }
    times.sort_by(f64::total_cmp);
    ClientStats {
        attempts,
        ok: times.len(),
        p50_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
    }
}

/// What one flood measured.
#[derive(Clone)]
struct Run {
    contender: String,
    sources: String,
    /// None: as fast as the generator goes.
    rate: Option<u64>,
    offered_pps: f64,
    rx_pps: f64,
    /// What reached IP (Ip.InReceives, Ip6InReceives): past any filter.
    ip_pps: Option<f64>,
    dropped_pps: Option<f64>,
    ns_per_pkt: f64,
    napi_util: f64,
    cpu1_busy: f64,
    bpf_ns: Option<f64>,
    client_ok: usize,
    client_attempts: usize,
    client_p50: f64,
    client_p99: f64,
    busy: u64,
}

/// [`flood_once`] `repeat` times (the first error ends it); the run with the lowest
/// receiving CPU per packet is kept: other work on the machine only ever adds to it.
fn flood(
    lab: &Lab,
    c: &dyn Contender,
    frames: &FrameSet,
    rate: Option<u64>,
    plan: &Plan,
) -> Result<Run, String> {
    let mut best: Option<Run> = None;
    for _ in 0..plan.repeat.max(1) {
        let r = flood_once(lab, c, frames, rate, plan.dur)?;
        if best.as_ref().is_none_or(|b| r.ns_per_pkt < b.ns_per_pkt) {
            best = Some(r);
        }
    }
    Ok(best.expect("at least one run"))
}

fn flood_once(
    lab: &Lab,
    c: &dyn Contender,
    frames: &FrameSet,
    rate: Option<u64>,
    dur: Duration,
) -> Result<Run, String> {
    let fam = frames.fam;
    check_stop();
    let napi = lab.napi_thread()?;
    let prog = if c.is_xdp() { lab.xdp_prog_id() } else { None };
    let max_packets = (rate.unwrap_or(MAX_PPS) as f64 * dur.as_secs_f64() * 1.2) as u64;

    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (ns, stop) = (lab.gen_.name.clone(), stop.clone());
        // Bounded by count too: the flood is never longer than `dur` plus a margin.
        let max = (dur.as_millis() / CLIENT_PAUSE.as_millis()) as usize + 10;
        thread::spawn(move || clean_client(ns, fam, stop, max))
    };
    // Let the client's first connect start before the flood, as a regular client would.
    thread::sleep(Duration::from_millis(50));

    let tx0 = Lab::link_stats(&lab.gen_, &lab.gen_if);
    let rx0 = Lab::link_stats(&lab.mx, &lab.mx_if);
    let napi0 = runtime_ns(napi).ok_or("NAPI thread gone")?;
    let cpu0 = cpu_jiffies(RECV_CPU);
    let bpf0 = prog.and_then(prog_stats);
    // Read for every contender (outside the timed span): the log line shows what got past
    // a filter, which must be only the clean client's packets.
    let ip0 = fam.ip_received(&lab.mx);
    let start = Instant::now();
    let deadline = start + dur;
    let sent = generate(
        &lab.gen_.name,
        &lab.gen_if,
        frames,
        rate,
        deadline,
        max_packets,
    );
    let secs = start.elapsed().as_secs_f64();
    let tx1 = Lab::link_stats(&lab.gen_, &lab.gen_if);
    let rx1 = Lab::link_stats(&lab.mx, &lab.mx_if);
    let napi1 = runtime_ns(napi).ok_or("NAPI thread gone")?;
    let cpu1 = cpu_jiffies(RECV_CPU);
    let bpf1 = prog.and_then(prog_stats);
    let ip1 = fam.ip_received(&lab.mx);
    stop.store(true, Ordering::Relaxed);
    let cs = client.join().map_err(|_| "the clean client panicked")?;
    check_stop();
    let sent = sent?;

    let d = |a: &Value, b: &Value, dir: &str, k: &str| {
        b[dir][k].as_u64().unwrap_or(0) as f64 - a[dir][k].as_u64().unwrap_or(0) as f64
    };
    let offered = d(&tx0, &tx1, "tx", "packets") + d(&tx0, &tx1, "tx", "dropped");
    let rx = d(&rx0, &rx1, "rx", "packets");
    let napi_ns = (napi1 - napi0) as f64;
    let bpf_ns = match (bpf0, bpf1) {
        (Some((t0, n0)), Some((t1, n1))) if n1 > n0 => Some((t1 - t0) as f64 / (n1 - n0) as f64),
        _ => None,
    };
    let ip_pps = ip0.zip(ip1).map(|(a, b)| b.saturating_sub(a) as f64 / secs);
    let dropped_pps = match ip_pps.filter(|_| c.drops_before_ip()) {
        Some(ip) => Some((rx / secs - ip).max(0.0)),
        None => match (bpf0, bpf1) {
            // XDP contenders drop every flood packet: the program's run count.
            (Some((_, n0)), Some((_, n1))) if c.drops_all_flood() => Some((n1 - n0) as f64 / secs),
            _ => None,
        },
    };
    Ok(Run {
        contender: c.label(),
        sources: frames.tag.clone(),
        rate,
        offered_pps: offered / secs,
        rx_pps: rx / secs,
        ip_pps,
        dropped_pps,
        ns_per_pkt: if rx > 0.0 { napi_ns / rx } else { f64::NAN },
        napi_util: napi_ns / (secs * 1e9),
        cpu1_busy: (cpu1.0 - cpu0.0) as f64 / (cpu1.1 - cpu0.1).max(1) as f64,
        bpf_ns,
        client_ok: cs.ok,
        client_attempts: cs.attempts,
        client_p50: cs.p50_ms,
        client_p99: cs.p99_ms,
        busy: sent.busy,
    })
}

// ---------------------------------------------------------------------------------------
// Contenders

trait Contender {
    fn label(&self) -> String;
    /// An XDP program is attached to the receiving veth.
    fn is_xdp(&self) -> bool;
    /// Every flood packet is dropped by the attached XDP program.
    fn drops_all_flood(&self) -> bool {
        self.is_xdp()
    }
    /// Drops in the netdev ingress hook: what the veth received and IP never saw.
    /// (`nft list` of the counter would read the whole million-element set each time.)
    fn drops_before_ip(&self) -> bool {
        false
    }
}

/// Control-plane figures of a contender's setup.
#[derive(Default, Clone)]
struct SetupInfo {
    load: Option<Duration>,
    /// How long a 1 % change of the list took to apply ([`delta_lines`]), as shown.
    delta: Option<String>,
    /// How long replacing the whole list by [`REPLACEMENT`] lines took, as shown.
    replace: Option<String>,
    rss_kib: Option<u64>,
    memlock: Option<(u64, usize)>,
    note: String,
}

/// A 1 % change of the IPv4 list of `n` /24s, as a feed's daily update brings: every 100th
/// /24 goes (`-` lines) and a single host inside it comes (`+` lines).
fn delta_lines(n: usize) -> Vec<(char, String)> {
    (0..n)
        .step_by(100)
        .flat_map(|i| {
            let net = net24(i);
            let host = Ipv4Addr::from(u32::from(net) + 1);
            [('-', format!("{net}/24")), ('+', host.to_string())]
        })
        .collect()
}

/// The prefilter daemon on the receiving veth, the list imported through the CLI.
struct Prefilter {
    mode: &'static str,
    fam: Family,
    n: usize,
    daemon: Daemon,
}

impl Prefilter {
    fn setup(
        lab: &Lab,
        mode: &'static str,
        list: &Path,
        fam: Family,
        n: usize,
    ) -> (Self, SetupInfo) {
        let mut daemon = Daemon::prepare(&lab.mx, &lab.mx_if);
        daemon.write_config(&daemon.config_text(&format!("mode = \"{mode}\"\nports = [25]"), ""));
        daemon.start();
        let file = list.to_str().expect("path");
        let out = daemon.cli(&[
            "block", "import", file, "--list", "bench", "--format", "plain",
        ]);
        assert_eq!(out.code, 0, "import: {}\n{}", out.both(), daemon.log());
        let status = daemon.status();
        let attach = status.to_string();
        let info = SetupInfo {
            load: Some(out.took),
            rss_kib: Some(daemon.rss_kib()),
            memlock: lab.xdp_prog_id().and_then(prog_map_memlock),
            note: if attach.contains("skb") || attach.contains("generic") {
                "attached in skb mode".into()
            } else {
                String::new()
            },
            delta: None,
            replace: None,
        };
        (
            Self {
                mode,
                fam,
                n,
                daemon,
            },
            info,
        )
    }

    /// Applies [`delta_lines`] with `block import --patch` (the way to send a difference),
    /// after the floods: the list then has holes.
    fn delta(&self, dir: &Path) -> String {
        let write = |name: &str, undo: bool| {
            let path = dir.join(name);
            let text: String = delta_lines(self.n)
                .into_iter()
                .map(|(op, p)| match (op, undo) {
                    ('-', true) => format!("+{p}\n"),
                    ('+', true) => format!("-{p}\n"),
                    _ => format!("{op}{p}\n"),
                })
                .collect();
            fs::write(&path, text).expect("write the delta");
            path
        };
        let (forward, back) = (write("delta.diff", false), write("undelta.diff", true));
        // The delta, then back and forth: a feed's updates come one after another, and the
        // first after a load also pays for memory the load handed back to the system.
        let took: Vec<f64> = [&forward, &back]
            .iter()
            .cycle()
            .take(DELTA_ROUNDS)
            .map(|path| {
                let file = path.to_str().expect("path");
                let out = self
                    .daemon
                    .cli(&["block", "import", file, "--list", "bench", "--patch"]);
                assert_eq!(out.code, 0, "import --patch: {}", out.both());
                out.took.as_secs_f64() * 1e3
            })
            .collect();
        let _ = fs::remove_file(forward);
        let _ = fs::remove_file(back);
        let first = took[0];
        let mut sorted = took;
        sorted.sort_by(f64::total_cmp);
        format!("{:.0} ms (first {first:.0} ms)", percentile(&sorted, 0.5))
    }
}

/// Patches applied by [`Prefilter::delta`]: the delta and its undoing, alternately.
const DELTA_ROUNDS: usize = 8;

/// Lines of the list that replaces a whole one: a feed that shrank to almost nothing, the
/// worst case of a replacement (everything goes, each removal undone in the tables).
const REPLACEMENT: usize = 10;

/// The [`REPLACEMENT`] lines, hosts in 192.0.2.0/24 (the lab's test net, never a source of
/// the floods).
fn replacement_lines() -> Vec<String> {
    (0..REPLACEMENT)
        .map(|i| format!("192.0.2.{}", 100 + i))
        .collect()
}

impl Prefilter {
    /// Replaces the whole list by [`replacement_lines`] (`--replace --force`: the shrink
    /// guard would refuse it otherwise), timed from the command's start to its end.
    fn replace(&self, dir: &Path) -> String {
        let path = dir.join("replacement.txt");
        fs::write(&path, replacement_lines().join("\n") + "\n").expect("write the replacement");
        let out = self.daemon.cli(&[
            "block",
            "import",
            path.to_str().expect("path"),
            "--list",
            "bench",
            "--format",
            "plain",
            "--replace",
            "--force",
        ]);
        let _ = fs::remove_file(&path);
        assert_eq!(out.code, 0, "import --replace: {}", out.both());
        format!("{:.2} s", out.took.as_secs_f64())
    }
}

impl Contender for Prefilter {
    fn label(&self) -> String {
        format!(
            "prefilter {} ({} {})",
            self.mode,
            size_label(self.n),
            self.fam.unit()
        )
    }
    fn is_xdp(&self) -> bool {
        true
    }
}

impl Drop for Prefilter {
    fn drop(&mut self) {
        // Daemon's own Drop kills it by pid and detaches; this only says so in the log.
        let _ = &self.daemon;
    }
}

/// xdp-filter (xdp-tools): exact source addresses only (no prefixes), so only the 512 hot
/// sources can be listed.
struct XdpFilter<'a> {
    lab: &'a Lab,
}

impl<'a> XdpFilter<'a> {
    fn setup(lab: &'a Lab) -> Result<(Self, SetupInfo), String> {
        // `ip netns exec` gives the command a private /sys without bpffs; libxdp pins its
        // maps there, so load and fill happen in one shell.
        let addrs: Vec<String> = (0..HOT_SOURCES)
            .map(|i| Ipv4Addr::from(0xf000_0000u32 + i as u32).to_string())
            .collect();
        let script = format!(
            "mount -t bpf bpf /sys/fs/bpf && xdp-filter load -m native -p allow -f ipv4 {ifc} \
             && for a in {list}; do xdp-filter ip -m src $a || exit 1; done",
            ifc = lab.mx_if,
            list = addrs.join(" ")
        );
        let me = Self { lab };
        let start = Instant::now();
        sh("ip", &["netns", "exec", &lab.mx.name, "sh", "-c", &script])?;
        let load = start.elapsed();
        let memlock = lab.xdp_prog_id().and_then(prog_map_memlock);
        Ok((
            me,
            SetupInfo {
                load: Some(load),
                memlock,
                note: format!("{HOT_SOURCES} addresses, one `xdp-filter ip` each"),
                ..SetupInfo::default()
            },
        ))
    }
}

impl Contender for XdpFilter<'_> {
    fn label(&self) -> String {
        format!("xdp-filter native ({HOT_SOURCES} addresses)")
    }
    fn is_xdp(&self) -> bool {
        true
    }
}

impl Drop for XdpFilter<'_> {
    fn drop(&mut self) {
        for m in ["xdpdrv", "xdpgeneric"] {
            let _ = Command::new("ip")
                .args(["-n", &self.lab.mx.name, "link", "set", "dev"])
                .arg(&self.lab.mx_if)
                .args([m, "off"])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// An nftables set of the same prefixes, `ip saddr @set drop` (`ip6` for IPv6) in a netdev
/// ingress chain.
struct Nft<'a> {
    lab: &'a Lab,
    table: String,
    fam: Family,
    n: usize,
}

impl<'a> Nft<'a> {
    fn setup(lab: &'a Lab, dir: &Path, fam: Family, n: usize) -> Result<(Self, SetupInfo), String> {
        let table = format!("pfbench{}", std::process::id());
        let path = dir.join(format!("nft{}-{n}.nft", fam.tag().trim()));
        let (ty, ip) = match fam {
            Family::V4 => ("ipv4_addr", "ip"),
            Family::V6 => ("ipv6_addr", "ip6"),
        };
        {
            let mut w = BufWriter::new(fs::File::create(&path).map_err(|e| e.to_string())?);
            let io = |e: std::io::Error| e.to_string();
            writeln!(
                w,
                "table netdev {table} {{\n  set blocked {{\n    type {ty}\n    flags interval\n    elements = {{"
            )
            .map_err(io)?;
            for i in 0..n {
                let sep = if i + 1 == n { "" } else { "," };
                writeln!(w, "      {}{sep}", fam.prefix(i)).map_err(io)?;
            }
            writeln!(
                w,
                "    }}\n  }}\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority 0; policy accept;\n    \
                 {ip} saddr @blocked counter drop\n  }}\n}}",
                lab.mx_if
            )
            .map_err(io)?;
            w.flush().map_err(io)?;
        }
        let me = Self { lab, table, fam, n };
        let start = Instant::now();
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &lab.mx.name,
                "nft",
                "-f",
                path.to_str().unwrap(),
            ],
        )?;
        let load = start.elapsed();
        Ok((
            me,
            SetupInfo {
                load: Some(load),
                ..SetupInfo::default()
            },
        ))
    }
}

impl Nft<'_> {
    /// Applies [`delta_lines`] with `nft -f` (delete and add elements in one transaction),
    /// stopped after [`NFT_DELTA_WITHIN`].
    fn delta(&self, dir: &Path) -> Result<String, String> {
        let lines = delta_lines(self.n);
        let set = |op: char| {
            lines
                .iter()
                .filter(|(o, _)| *o == op)
                .map(|(_, p)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let path = dir.join("delta.nft");
        let table = &self.table;
        let text = format!(
            "delete element netdev {table} blocked {{ {} }}\nadd element netdev {table} blocked {{ {} }}\n",
            set('-'),
            set('+')
        );
        fs::write(&path, text).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.mx.name, "nft", "-f"])
            .arg(&path);
        let start = Instant::now();
        match try_run_bounded(cmd, NFT_DELTA_WITHIN) {
            None => Ok(format!("over {} s (stopped)", NFT_DELTA_WITHIN.as_secs())),
            Some(out) if out.code != 0 => Err(format!("nft -f: {}", out.both())),
            Some(_) => Ok(format!("{:.0} ms", start.elapsed().as_secs_f64() * 1e3)),
        }
    }
}

impl Nft<'_> {
    /// Replaces the whole set by [`replacement_lines`] in one transaction (`flush set`, then
    /// `add element`), stopped after [`NFT_DELTA_WITHIN`].
    fn replace(&self, dir: &Path) -> Result<String, String> {
        let path = dir.join("replace.nft");
        let table = &self.table;
        let text = format!(
            "flush set netdev {table} blocked\nadd element netdev {table} blocked {{ {} }}\n",
            replacement_lines().join(", ")
        );
        fs::write(&path, text).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.mx.name, "nft", "-f"])
            .arg(&path);
        let start = Instant::now();
        let done = try_run_bounded(cmd, NFT_DELTA_WITHIN);
        let _ = fs::remove_file(&path);
        match done {
            None => Ok(format!("over {} s (stopped)", NFT_DELTA_WITHIN.as_secs())),
            Some(out) if out.code != 0 => Err(format!("nft -f: {}", out.both())),
            Some(_) => Ok(format!("{:.2} s", start.elapsed().as_secs_f64())),
        }
    }
}

impl Contender for Nft<'_> {
    fn label(&self) -> String {
        format!("nftables set ({} {})", size_label(self.n), self.fam.unit())
    }
    fn is_xdp(&self) -> bool {
        false
    }
    fn drops_before_ip(&self) -> bool {
        true
    }
}

impl Drop for Nft<'_> {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.lab.mx.name, "nft", "delete", "table"])
            .args(["netdev", &self.table])
            .stderr(Stdio::null())
            .status();
    }
}

/// A raw XDP program on the receiving veth (native), held by a BPF link: the floors,
/// [`xdp_drop_program`], [`xdp_read_drop_program`] and [`xdp_table_load_program`].
struct Floor {
    _link: OwnedFd,
    label: &'static str,
}

impl Floor {
    fn drop_all(lab: &Lab) -> Result<Self, String> {
        Self::setup(lab, xdp_drop_program(), "XDP drop-all (floor)")
    }

    fn read_drop(lab: &Lab) -> Result<Self, String> {
        Self::setup(lab, xdp_read_drop_program(), "XDP read one byte, drop")
    }

    fn table_load(lab: &Lab, entries: u32) -> Result<Self, String> {
        Self::setup(lab, xdp_table_load_program(entries), TABLE_LOAD)
    }

    fn setup(
        lab: &Lab,
        prog: std::io::Result<OwnedFd>,
        label: &'static str,
    ) -> Result<Self, String> {
        let prog = prog.map_err(|e| format!("load {label}: {e}"))?;
        let link = lab
            .mx
            .attach_xdp_native(&prog, &lab.mx_if)
            .map_err(|e| format!("attach {label}: {e}"))?;
        Ok(Self { _link: link, label })
    }
}

impl Contender for Floor {
    fn label(&self) -> String {
        self.label.into()
    }
    fn is_xdp(&self) -> bool {
        true
    }
}

/// Nothing on the veth: the kernel's TCP answers with SYN cookies.
struct NoFilter;

impl Contender for NoFilter {
    fn label(&self) -> String {
        "no filter (SYN cookies)".into()
    }
    fn is_xdp(&self) -> bool {
        false
    }
    fn drops_all_flood(&self) -> bool {
        false
    }
}

/// `n` in binary units, rounded: the IPv6 list of 65,535 /48s reads 64Ki.
fn size_label(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{}Mi", (n + (1 << 19)) >> 20)
    } else if n >= 1 << 10 {
        format!("{}Ki", (n + (1 << 9)) >> 10)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// The plan

struct Plan {
    dur: Duration,
    /// Offered rates for the load curve (random sources over the full list), besides "max".
    rates: Vec<u64>,
    /// List sizes for the cost curve (prefilter native and nftables).
    sizes: Vec<usize>,
    /// The offered rate every contender gets, hot and random, for like-for-like ratios;
    /// one of `rates`.
    common: u64,
    /// Floods per figure; the lowest receiving CPU per packet is kept.
    repeat: u32,
    /// IPv6 hot rows besides the random ones (a full run only: each row costs a repeat's
    /// worth of floods, and the IPv6 part stays within about 3 minutes).
    v6_hot: bool,
}

/// The label of [`xdp_table_load_program`] over the full list's /24s.
const TABLE_LOAD: &str = "XDP one load from an 8 MiB table, drop";

/// Table sizes (u64 entries) for the one-load floor against size: 4 KiB to 8 MiB.
const LOAD_CURVE: [u32; 4] = [1 << 9, 1 << 13, 1 << 16, 1 << 20];

#[derive(Default)]
struct Results {
    runs: Vec<Run>,
    /// The one-load floor at each of [`LOAD_CURVE`]'s sizes, random sources, common rate.
    load_curve: Vec<(u32, Run)>,
    setups: BTreeMap<String, SetupInfo>,
    failures: Vec<String>,
}

impl Results {
    fn record(&mut self, what: &str, r: Result<Run, String>) {
        match r {
            Ok(run) => {
                eprintln!(
                    "flood: {:<40} {:<14} offered {:>8.0} pps  rx {:>8.0} pps  to IP {:>8.0} pps  \
                     {:>6.0} ns/pkt  client {}/{}  busy {}",
                    run.contender,
                    run.sources,
                    run.offered_pps,
                    run.rx_pps,
                    run.ip_pps.unwrap_or(f64::NAN),
                    run.ns_per_pkt,
                    run.client_ok,
                    run.client_attempts,
                    run.busy
                );
                self.runs.push(run);
            }
            Err(e) => {
                eprintln!("flood: {what}: FAILED: {e}");
                self.failures.push(format!("{what}: {e}"));
            }
        }
    }
}

/// Runs `f`, turning a panic (other than an interruption) into a recorded failure; the
/// guards inside `f` have cleaned up by then.
fn guarded(res: &mut Results, what: &str, f: impl FnOnce(&mut Results)) {
    let out = catch_unwind(AssertUnwindSafe(|| f(res)));
    if let Err(p) = out {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".into());
        check_stop();
        eprintln!("flood: {what}: FAILED: {msg}");
        res.failures.push(format!("{what}: {msg}"));
    }
}

/// Hot and random floods at full speed, and the load curve when `curve`.
fn standard_floods(
    res: &mut Results,
    lab: &Lab,
    c: &dyn Contender,
    cfgs: &Frames,
    plan: &Plan,
    hot: bool,
    curve: bool,
) {
    if hot {
        res.record(
            &format!("{} hot", c.label()),
            flood(lab, c, &cfgs.hot, None, plan),
        );
        res.record(
            &format!("{} hot at {} pps", c.label(), plan.common),
            flood(lab, c, &cfgs.hot, Some(plan.common), plan),
        );
    }
    res.record(
        &format!("{} random", c.label()),
        flood(lab, c, &cfgs.random_full, None, plan),
    );
    if curve {
        for &r in &plan.rates {
            res.record(
                &format!("{} random at {r} pps", c.label()),
                flood(lab, c, &cfgs.random_full, Some(r), plan),
            );
        }
    }
}

/// IPv6 floods at full speed: random, and hot when the plan says so.
fn v6_floods(res: &mut Results, lab: &Lab, c: &dyn Contender, cfgs: &Frames, plan: &Plan) {
    res.record(
        &format!("{} v6 random", c.label()),
        flood(lab, c, &cfgs.random_full, None, plan),
    );
    if plan.v6_hot {
        res.record(
            &format!("{} v6 hot", c.label()),
            flood(lab, c, &cfgs.hot, None, plan),
        );
    }
}

struct Frames {
    hot: Arc<FrameSet>,
    random_full: Arc<FrameSet>,
}

fn run_all(plan: &Plan, res: &mut Results) {
    let tmp = TempDir::new();
    let lab = Lab::new();
    let cfgs = Frames {
        hot: lab.frames(Family::V4, Sources::Hot),
        random_full: lab.frames(Family::V4, Sources::Random(FULL)),
    };
    eprintln!("flood: writing the {FULL}-line list");
    let full_list = write_plain_list(&tmp.0, Family::V4, FULL);

    guarded(res, "no filter", |res| {
        standard_floods(res, &lab, &NoFilter, &cfgs, plan, true, true);
    });
    guarded(res, "XDP drop-all", |res| {
        let c = Floor::drop_all(&lab).expect("XDP drop-all");
        standard_floods(res, &lab, &c, &cfgs, plan, true, true);
    });
    guarded(res, "XDP read-drop", |res| {
        let c = Floor::read_drop(&lab).expect("XDP read-drop");
        standard_floods(res, &lab, &c, &cfgs, plan, true, false);
    });
    // What one random memory access costs inside the flood, against the table's size: the
    // floor of any lookup, which the per-packet work between two frames leaves cold.
    guarded(res, "XDP table load", |res| {
        for entries in LOAD_CURVE {
            let c = Floor::table_load(&lab, entries).expect("XDP table load");
            let run = flood(&lab, &c, &cfgs.random_full, Some(plan.common), plan);
            let full = entries as usize == FULL;
            match &run {
                Ok(r) => res.load_curve.push((entries, r.clone())),
                Err(e) if !full => res.failures.push(format!("{TABLE_LOAD}, {entries}: {e}")),
                Err(_) => {}
            }
            // The 8 MiB one, the size of prefilter's /24 table over the list, is a contender.
            if full {
                res.record(&format!("{TABLE_LOAD} at {} pps", plan.common), run);
                standard_floods(res, &lab, &c, &cfgs, plan, false, false);
            }
        }
    });
    for mode in ["native", "skb"] {
        guarded(res, &format!("prefilter {mode}"), |res| {
            let (c, mut info) = Prefilter::setup(&lab, mode, &full_list, Family::V4, FULL);
            res.setups.insert(c.label(), info.clone());
            standard_floods(res, &lab, &c, &cfgs, plan, true, true);
            info.delta = Some(c.delta(&tmp.0));
            info.replace = Some(c.replace(&tmp.0));
            res.setups.insert(c.label(), info);
        });
    }
    // The DNSBL-sized list: loading and restarting only (the floods above cover lookups).
    guarded(res, "prefilter DNSBL-sized", |res| {
        eprintln!("flood: writing the 6M-line list");
        let list = write_dnsbl_list(&tmp.0);
        let (mut c, mut info) = Prefilter::setup(&lab, "native", &list, Family::V4, FULL);
        let restart = c.daemon.restart(libc::SIGTERM);
        info.note = format!(
            "5M random host addresses + 1M mixed /8–/31 prefixes, 6M lines; a restart with \
             them takes {:.1} s until the daemon answers (the old program filters meanwhile)",
            restart.as_secs_f64()
        );
        info.replace = Some(c.replace(&tmp.0));
        res.setups.insert(DNSBL_SETUP.into(), info);
        let _ = fs::remove_file(list);
    });
    guarded(res, "xdp-filter", |res| {
        let (c, info) = XdpFilter::setup(&lab).expect("xdp-filter");
        res.setups.insert(c.label(), info);
        res.record(
            &format!("{} hot", c.label()),
            flood(&lab, &c, &cfgs.hot, None, plan),
        );
        res.record(
            &format!("{} hot at {} pps", c.label(), plan.common),
            flood(&lab, &c, &cfgs.hot, Some(plan.common), plan),
        );
    });
    guarded(res, "nftables", |res| {
        eprintln!("flood: nft -f with {FULL} elements");
        let (c, mut info) = Nft::setup(&lab, &tmp.0, Family::V4, FULL).expect("nftables");
        res.setups.insert(c.label(), info.clone());
        standard_floods(res, &lab, &c, &cfgs, plan, true, true);
        info.delta = Some(c.delta(&tmp.0).expect("nftables delta"));
        info.replace = Some(c.replace(&tmp.0).expect("nftables replacement"));
        res.setups.insert(c.label(), info);
    });
    // Cost against list size: random sources over the list, full speed.
    for &n in plan.sizes.iter().filter(|&&n| n != FULL) {
        let cfg = lab.frames(Family::V4, Sources::Random(n));
        let list = write_plain_list(&tmp.0, Family::V4, n);
        guarded(res, &format!("prefilter native {n}"), |res| {
            let (c, info) = Prefilter::setup(&lab, "native", &list, Family::V4, n);
            res.setups.insert(c.label(), info);
            res.record(&c.label(), flood(&lab, &c, &cfg, None, plan));
        });
        guarded(res, &format!("nftables {n}"), |res| {
            let (c, info) = Nft::setup(&lab, &tmp.0, Family::V4, n).expect("nftables");
            res.setups.insert(c.label(), info);
            res.record(&c.label(), flood(&lab, &c, &cfg, None, plan));
        });
    }
    // IPv6: the same contenders but xdp-filter (no prefixes), full list, full speed.
    let cfgs6 = Frames {
        hot: lab.frames(Family::V6, Sources::Hot),
        random_full: lab.frames(Family::V6, Sources::Random(FULL6)),
    };
    let list6 = write_plain_list(&tmp.0, Family::V6, FULL6);
    guarded(res, "no filter v6", |res| {
        v6_floods(res, &lab, &NoFilter, &cfgs6, plan);
    });
    guarded(res, "XDP drop-all v6", |res| {
        let c = Floor::drop_all(&lab).expect("XDP drop-all");
        v6_floods(res, &lab, &c, &cfgs6, plan);
    });
    for mode in ["native", "skb"] {
        guarded(res, &format!("prefilter {mode} v6"), |res| {
            let (c, info) = Prefilter::setup(&lab, mode, &list6, Family::V6, FULL6);
            res.setups.insert(c.label(), info);
            v6_floods(res, &lab, &c, &cfgs6, plan);
        });
    }
    guarded(res, "nftables v6", |res| {
        let (c, info) = Nft::setup(&lab, &tmp.0, Family::V6, FULL6).expect("nftables");
        res.setups.insert(c.label(), info);
        v6_floods(res, &lab, &c, &cfgs6, plan);
    });
}

// ---------------------------------------------------------------------------------------
// Report

fn machine() -> (String, usize, String) {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = sh("uname", &["-r"]).map_or_else(|_| "?".into(), |s| s.trim().to_owned());
    (cpu, cpus, kernel)
}

fn fmt_opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "—".into(), |x| format!("{:.*}", digits, x / scale))
}

/// A latency in ms, or a dash when there is none (no connect succeeded).
fn ms(v: f64) -> String {
    fmt_opt(Some(v), 1.0, 2)
}

fn find<'a>(runs: &'a [Run], contender: &str, sources: &str) -> Option<&'a Run> {
    runs.iter()
        .find(|r| r.contender == contender && r.sources == sources && r.rate.is_none())
}

fn report(plan: &Plan, res: &Results, opts: &Opts, started: Instant, load0: &str) -> String {
    let (cpu, cpus, kernel) = machine();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# prefilter benchmark\n\n\
         Generated by `cargo xtask bench{}`; do not edit by hand.\n\n\
         Machine: {cpu}, {cpus} vCPU, kernel {kernel}. Load average at the start: {load0}.\n",
        if opts.quick { " --quick" } else { "" }
    );
    if let Some(p) = &opts.prog_test_run {
        match fs::read_to_string(p) {
            Ok(t) if !t.trim().is_empty() => {
                let _ = writeln!(o, "{}\n", t.trim());
            }
            _ => {
                let _ = writeln!(o, "(no BPF_PROG_TEST_RUN output in {})\n", p.display());
            }
        }
    }
    let _ = writeln!(o, "## SYN flood on a veth pair\n");
    let _ = writeln!(
        o,
        "A generator of ours (AF_PACKET, sendmmsg, qdisc bypass, a forced 64 MiB send buffer; \
         trafgen exits on EAGAIN against a veth with XDP, see tests/src/bin/flood.rs) on CPU \
         {SEND_CPU} sends spoofed SYNs from 240.0.0.0/4 to 192.0.2.1:25 for {:.1} s per flood \
         (bounded also in packets: 1.2 × rate × time), best of {} floods per row (the lowest \
         receiving CPU per packet); the receiving veth has GRO on and threaded NAPI, \
         its NAPI thread pinned to CPU {RECV_CPU}, with interrupt moderation as a NIC has it \
         (`gro_flush_timeout` {COALESCE_NS} ns, `napi_defer_hard_irqs` {DEFER_POLLS}: it polls \
         in batches rather than waking up per frame). *Receiving CPU per packet* is that \
         thread's run time (schedstat) divided by the packets the veth received. The list: \
         the first N /24s of 240.0.0.0/4 (1Mi = all 1,048,576, the whole range). Sources: \
         512 (240.0.0.0/23, cache-hot) or random over the listed range. BPF ns/run is the \
         kernel's run-time statistics (BPF_ENABLE_STATS during the run) for the program on the \
         veth. The clean client 192.0.2.2 (not listed) connects to port 25 every \
         {} ms with a {:.1} s timeout during each flood (its SYN and the kernel's two \
         retransmissions, after 1 s and 3 s, as an MTA's connect would have).\n",
        plan.dur.as_secs_f64(),
        plan.repeat,
        CLIENT_PAUSE.as_millis(),
        CLIENT_TIMEOUT.as_secs_f64()
    );
    for (title, src) in [
        ("512 sources (cache-hot), list of 1Mi /24s", "512 hot"),
        (
            "random sources over 240.0.0.0/4, list of 1Mi /24s",
            "random 1Mi",
        ),
    ] {
        let _ = writeln!(o, "### {title}, full speed\n");
        full_speed_table(&mut o, &res.runs, src);
    }
    let at = |c: &str, src: &str| {
        res.runs
            .iter()
            .find(|r| r.contender == c && r.sources == src && r.rate == Some(plan.common))
    };
    let floor_at = |src: &str| at("XDP drop-all (floor)", src).map(|r| r.ns_per_pkt);
    let _ = writeln!(
        o,
        "### Like for like: every contender at {} kpps offered\n",
        plan.common / 1000
    );
    let _ = writeln!(
        o,
        "| contender | hot ns/pkt | × floor | hot BPF ns/run | random ns/pkt | × floor | random BPF ns/run | received kpps hot / random |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut names: Vec<&str> = Vec::new();
    for r in res.runs.iter().filter(|r| r.rate == Some(plan.common)) {
        if !names.contains(&r.contender.as_str()) {
            names.push(&r.contender);
        }
    }
    for name in names {
        let (h, r) = (at(name, "512 hot"), at(name, "random 1Mi"));
        let ns = |x: Option<&Run>| x.map(|r| r.ns_per_pkt);
        let ratio = |x: Option<&Run>, src: &str| {
            fmt_opt(ns(x).zip(floor_at(src)).map(|(a, b)| a / b), 1.0, 2)
        };
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} | {} | {} / {} |",
            fmt_opt(ns(h), 1.0, 0),
            ratio(h, "512 hot"),
            fmt_opt(h.and_then(|r| r.bpf_ns), 1.0, 0),
            fmt_opt(ns(r), 1.0, 0),
            ratio(r, "random 1Mi"),
            fmt_opt(r.and_then(|r| r.bpf_ns), 1.0, 0),
            fmt_opt(h.map(|r| r.rx_pps), 1e3, 0),
            fmt_opt(r.map(|r| r.rx_pps), 1e3, 0),
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Reading the tables: *offered* is what the generator got into the sending veth \
         (sent plus dropped at its full ring), *received* what the receiving veth took in. \
         Where the NAPI thread is busy well under 100 %, the sender was the limit and the \
         ns/pkt include the thread's wake-up per small batch, which weighs on every contender \
         alike and compresses the ratios; the BPF ns/run column is free of it. The full-speed \
         rows also differ in offered load (the sender shares the machine), so compare \
         contenders in the like-for-like table, at one offered rate. The clean \
         client shares the veth with the flood, so a full ring drops its SYNs too, before \
         any filter sees them: its connect then succeeds on a retransmission, a second or \
         three later (the p99 column); the XDP drop-all floor drops it by design. \
         *XDP read one byte, drop* reads the frame's source address and drops: the floor of \
         any filter that looks at the packet. When its BPF ns/run matches drop-all's, the \
         frame was already in cache, and what a filter costs above the floor is its own work \
         and its tables' cache and TLB misses.\n"
    );
    let _ = writeln!(
        o,
        "xdp-filter has no prefixes (exact addresses in a hash of 10,000 in Debian's build), so \
         it has only the hot row, with the 512 sources listed one by one.\n"
    );

    let _ = writeln!(o, "### One memory access inside the flood\n");
    let _ = writeln!(
        o,
        "*{TABLE_LOAD}* and its smaller siblings: an XDP program of 22 instructions that looks \
         the frame's source /24 up in a BPF array of u64s (masked to the array's size) and \
         drops, its verdict depending on the loaded value; random sources at {} kpps. It \
         measures what one random access to a table of that size costs here, between frames \
         whose handling (the veth's copy, socket buffers, page pool) leaves the caches cold: \
         the floor of any filter that looks the source up in a table that size. prefilter's \
         /24 table over 240.0.0.0/4 is 8 MiB (2 KiB per /16).\n",
        plan.common / 1000
    );
    let floor_bpf = at("XDP drop-all (floor)", "random 1Mi").and_then(|r| r.bpf_ns);
    let _ = writeln!(o, "| table | BPF ns/run | above drop-all |");
    let _ = writeln!(o, "|---:|---:|---:|");
    for (entries, r) in &res.load_curve {
        let _ = writeln!(
            o,
            "| {}B | {} | {} |",
            size_label(*entries as usize * 8),
            fmt_opt(r.bpf_ns, 1.0, 0),
            fmt_opt(r.bpf_ns.zip(floor_bpf).map(|(a, b)| a - b), 1.0, 0),
        );
    }
    let load_bpf = at(TABLE_LOAD, "random 1Mi").and_then(|r| r.bpf_ns);
    if let Some(p) = at("prefilter native (1Mi /24s)", "random 1Mi").and_then(|r| r.bpf_ns) {
        let _ = writeln!(
            o,
            "\nprefilter native (1Mi /24s), the same flood: {p:.0} ns/run, drop-all + {}, and {} \
             ns against the one load from an 8 MiB table.\n",
            fmt_opt(floor_bpf.map(|f| p - f), 1.0, 0),
            load_bpf.map_or("—".into(), |f| format!("{:+.0}", p - f)),
        );
    }

    let _ = writeln!(
        o,
        "### Offered load against drop rate (random sources, list of 1Mi /24s)\n"
    );
    let _ = writeln!(
        o,
        "| contender | rate asked | offered kpps | received kpps | dropped kpps | ns/pkt | NAPI busy | CPU {RECV_CPU} busy | clean client ok | p99 ms |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut curve: Vec<&Run> = res
        .runs
        .iter()
        .filter(|r| r.sources == "random 1Mi")
        .collect();
    curve.sort_by(|a, b| {
        a.contender
            .cmp(&b.contender)
            .then(a.offered_pps.total_cmp(&b.offered_pps))
    });
    for r in &curve {
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} % | {:.0} % | {}/{} | {} |",
            r.contender,
            r.rate.map_or("max".into(), |x| format!("{}k", x / 1000)),
            r.offered_pps / 1e3,
            r.rx_pps / 1e3,
            fmt_opt(r.dropped_pps, 1e3, 0),
            r.ns_per_pkt,
            r.napi_util * 100.0,
            r.cpu1_busy * 100.0,
            r.client_ok,
            r.client_attempts,
            ms(r.client_p99)
        );
    }
    let _ = writeln!(
        o,
        "\n![drop rate against offered load](bench-drop-vs-load.png)\n"
    );

    let _ = writeln!(
        o,
        "### Cost against list size (random sources over the list, full speed)\n"
    );
    let _ = writeln!(
        o,
        "| list /24s | prefilter native ns/pkt | nftables ns/pkt | nftables / prefilter |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|");
    for (n, p, f) in size_points(plan, res) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            size_label(n),
            fmt_opt(p, 1.0, 0),
            fmt_opt(f, 1.0, 0),
            fmt_opt(p.zip(f).map(|(p, f)| f / p), 1.0, 2)
        );
    }
    let _ = writeln!(o, "\n![cost against list size](bench-cost-vs-size.png)\n");

    let v6_random = format!("v6 random {}", size_label(FULL6));
    let v6_hot = format!("v6 {HOT_SOURCES} hot");
    let _ = writeln!(
        o,
        "### random IPv6 sources over 2001:db8::/32, list of {} /48s, full speed\n",
        size_label(FULL6)
    );
    let _ = writeln!(
        o,
        "The same flood in IPv6: 74-byte SYNs (no extension headers) to [2001:db8:ffff::1]:25. \
         The list is every /48 of 2001:db8::/32 but 2001:db8:ffff::/48 (65,535, imported the \
         same way; for nftables an `ipv6_addr` interval set, `ip6 saddr @blocked drop` in the \
         netdev ingress chain); the sources are random over the listed /48s (random low 80 \
         bits), the clean client is 2001:db8:ffff::2 (not listed). xdp-filter is left out: \
         it has no prefixes, and its hot row above is IPv4. *dropped kpps* for nftables is \
         what the veth received and IPv6 never saw (Ip6InReceives).\n"
    );
    full_speed_table(&mut o, &res.runs, &v6_random);
    if res.runs.iter().any(|r| r.sources == v6_hot) {
        let _ = writeln!(
            o,
            "### {HOT_SOURCES} IPv6 sources (cache-hot, 2001:db8:0:N::1), list of {} /48s, full speed\n",
            size_label(FULL6)
        );
        full_speed_table(&mut o, &res.runs, &v6_hot);
    }

    let _ = writeln!(o, "## Control plane\n");
    let _ = writeln!(
        o,
        "| contender | load time | 1 % delta | replaced by {REPLACEMENT} lines | agent RSS | kernel map memory (memlock, maps) | note |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---|");
    for (name, s) in &res.setups {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            s.load
                .map_or("—".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            s.delta.as_deref().unwrap_or("—"),
            s.replace.as_deref().unwrap_or("—"),
            s.rss_kib
                .map_or("—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            s.memlock.map_or("—".into(), |(b, n)| format!(
                "{:.1} MiB ({n})",
                b as f64 / (1 << 20) as f64
            )),
            s.note
        );
    }
    let (pl, nl) = (
        res.setups
            .get(&format!("prefilter native ({} /24s)", size_label(FULL)))
            .and_then(|s| s.load),
        res.setups
            .get(&format!("nftables set ({} /24s)", size_label(FULL)))
            .and_then(|s| s.load),
    );
    if let (Some(p), Some(n)) = (pl, nl) {
        let _ = writeln!(
            o,
            "\nLoading 1Mi prefixes: `prefilter block import` {:.2} s (store, journal and kernel \
             tables), `nft -f` {:.2} s: nft takes {:.1} × as long.",
            p.as_secs_f64(),
            n.as_secs_f64(),
            n.as_secs_f64() / p.as_secs_f64()
        );
    }
    let _ = writeln!(
        o,
        "\n*1 % delta*: after the floods, every 100th /24 of the 1Mi list removed and a single \
         host inside each added ({} lines of each): `prefilter block import --patch` with \
         `-`/`+` lines (what `diff -u` of the old and new list gives), `nft -f` with one \
         `delete element` and one `add element`. Timed from the command's start to its end; \
         for prefilter the median of {DELTA_ROUNDS} patches, the delta and its undoing in turn \
         (the first after the load in brackets). *Replaced by {REPLACEMENT} lines*: then the \
         whole list replaced by {REPLACEMENT} host addresses, everything else removed \
         (`prefilter block import --replace --force`; `nft -f` with `flush set` and `add \
         element` in one transaction).",
        FULL / 100 + 1
    );
    if let Some(d) = res.setups.get(DNSBL_SETUP).and_then(|s| s.load) {
        let _ = writeln!(
            o,
            "\nLoading the DNSBL-sized list (5M host addresses + 1M mixed prefixes, 6M lines): \
             `prefilter block import` {:.2} s.",
            d.as_secs_f64()
        );
    }
    let _ = writeln!(
        o,
        "\nprefilter is the daemon with `[xdp] mode = \"native\"` or `\"skb\"` and `ports = [25]` \
         (the shipped defaults otherwise); the list is imported with `prefilter block import FILE \
         --list bench --format plain` (action drop)."
    );
    if !res.failures.is_empty() {
        let _ = writeln!(o, "\n## Failed parts\n");
        for f in &res.failures {
            let _ = writeln!(o, "- {}", f.replace('\n', " "));
        }
    }
    let _ = writeln!(
        o,
        "\nIPv6 floods (2001:db8::/32) are measured at full speed only, for every contender \
         but xdp-filter (no prefixes); the like-for-like, load and list-size figures are IPv4. \
         Generator sendmmsg calls refused (EAGAIN/ENOBUFS) over all rows: {}. \
         The flood part took {:.0} s.",
        res.runs.iter().map(|r| r.busy).sum::<u64>(),
        started.elapsed().as_secs_f64()
    );
    o
}

/// The full-speed rows of sources `src`, one per contender, with ratios to the floor and to
/// no filter of the same sources.
fn full_speed_table(o: &mut String, runs: &[Run], src: &str) {
    let floor = find(runs, "XDP drop-all (floor)", src).map(|r| r.ns_per_pkt);
    let none = find(runs, "no filter (SYN cookies)", src).map(|r| r.ns_per_pkt);
    let _ = writeln!(
        o,
        "| contender | receiving CPU ns/pkt | × floor | × no filter | BPF ns/run | offered kpps | received kpps | dropped kpps | NAPI thread busy | clean client ok | p50 ms | p99 ms |"
    );
    let _ = writeln!(
        o,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs.iter().filter(|r| r.sources == src && r.rate.is_none()) {
        let _ = writeln!(
            o,
            "| {} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {} | {:.0} % | {}/{} | {} | {} |",
            r.contender,
            r.ns_per_pkt,
            fmt_opt(floor.map(|f| r.ns_per_pkt / f), 1.0, 2),
            fmt_opt(none.map(|f| r.ns_per_pkt / f), 1.0, 2),
            fmt_opt(r.bpf_ns, 1.0, 0),
            r.offered_pps / 1e3,
            r.rx_pps / 1e3,
            fmt_opt(r.dropped_pps, 1e3, 0),
            r.napi_util * 100.0,
            r.client_ok,
            r.client_attempts,
            ms(r.client_p50),
            ms(r.client_p99),
        );
    }
    let _ = writeln!(o);
}

/// (list size, prefilter native ns/pkt, nftables ns/pkt) for each size of the plan.
fn size_points(plan: &Plan, res: &Results) -> Vec<(usize, Option<f64>, Option<f64>)> {
    plan.sizes
        .iter()
        .map(|&n| {
            let src = if n == FULL {
                "random 1Mi".to_owned()
            } else {
                format!("random {}", size_label(n))
            };
            let p = find(
                &res.runs,
                &format!("prefilter native ({} /24s)", size_label(n)),
                &src,
            )
            .map(|r| r.ns_per_pkt);
            let f = find(
                &res.runs,
                &format!("nftables set ({} /24s)", size_label(n)),
                &src,
            )
            .map(|r| r.ns_per_pkt);
            (n, p, f)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Plots

const COLORS: [plotters::style::RGBColor; 7] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(127, 127, 127),
];

fn register_font() -> Result<(), String> {
    let candidates = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    let bytes = candidates
        .iter()
        .find_map(|p| fs::read(p).ok())
        .ok_or("no TrueType font (fonts-dejavu-core) for the plots' labels")?;
    plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        Vec::leak(bytes),
    )
    .map_err(|_| "the font could not be read".to_owned())
}

fn plot_cost(
    path: &Path,
    pts: &[(usize, Option<f64>, Option<f64>)],
    floor: Option<f64>,
) -> Result<(), String> {
    use plotters::prelude::*;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let ymax = pts
        .iter()
        .flat_map(|(_, p, f)| [*p, *f])
        .flatten()
        .chain(floor)
        .fold(0.0, f64::max)
        * 1.15;
    if ymax <= 0.0 {
        return Err("no points".into());
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut ch = ChartBuilder::on(&root)
        .caption(
            "Receiving CPU per SYN against list size",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1000f64..2_000_000f64).log_scale(), 0f64..ymax)
        .map_err(|x| e(&x))?;
    ch.configure_mesh()
        .x_desc("list size (/24 prefixes)")
        .y_desc("ns per packet")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, name) in ["prefilter native", "nftables set"].iter().enumerate() {
        let v: Vec<(f64, f64)> = pts
            .iter()
            .filter_map(|(n, p, f)| Some((*n as f64, if i == 0 { (*p)? } else { (*f)? })))
            .collect();
        let c = COLORS[i];
        ch.draw_series(LineSeries::new(v.clone(), c.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        ch.draw_series(v.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|x| e(&x))?;
    }
    if let Some(f) = floor {
        let c = COLORS[6];
        ch.draw_series(LineSeries::new(
            vec![(1000.0, f), (2_000_000.0, f)],
            c.stroke_width(1),
        ))
        .map_err(|x| e(&x))?
        .label("XDP drop-all (floor, 1Mi)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

fn plot_load(path: &Path, runs: &[Run]) -> Result<(), String> {
    use plotters::prelude::*;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.sources == "random 1Mi") {
        // What the contender got through per second: dropped by a filter, or (no filter)
        // handled by TCP.
        let y = r.dropped_pps.unwrap_or(r.rx_pps) / 1e6;
        series
            .entry(r.contender.clone())
            .or_default()
            .push((r.offered_pps / 1e6, y));
    }
    let max = series
        .values()
        .flatten()
        .flat_map(|&(x, y)| [x, y])
        .fold(0.0, f64::max)
        * 1.1;
    if max <= 0.0 {
        return Err("no points".into());
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut ch = ChartBuilder::on(&root)
        .caption(
            "SYNs dropped (no filter: handled) against offered load",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max, 0f64..max)
        .map_err(|x| e(&x))?;
    ch.configure_mesh()
        .x_desc("offered, Mpps")
        .y_desc("dropped, Mpps")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, mut v)) in series.into_iter().enumerate() {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = COLORS[i % COLORS.len()];
        ch.draw_series(LineSeries::new(v.clone(), c.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        ch.draw_series(v.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(|x| e(&x))?;
    }
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

fn main() -> ExitCode {
    if !is_root() {
        eprintln!("flood: needs root (namespaces, XDP, nftables)");
        return ExitCode::FAILURE;
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("flood: {e}");
            return ExitCode::from(64);
        }
    };
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if cpus <= RECV_CPU {
        eprintln!("flood: needs 2 CPUs (sender and receiver pinned apart)");
        return ExitCode::FAILURE;
    }
    for tool in ["nft", "bpftool", "ethtool", "xdp-filter"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            eprintln!("flood: {tool} is missing: run `cargo xtask setup`");
            return ExitCode::FAILURE;
        }
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let plan = if opts.quick {
        Plan {
            dur: Duration::from_millis(1500),
            rates: vec![200_000],
            sizes: vec![1 << 12, FULL],
            common: 200_000,
            repeat: 1,
            v6_hot: false,
        }
    } else {
        Plan {
            dur: Duration::from_secs(5),
            rates: vec![100_000, 200_000, 400_000, 800_000],
            sizes: vec![1 << 12, 1 << 16, FULL],
            common: 200_000,
            repeat: 3,
            v6_hot: true,
        }
    };
    let load0 = fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let started = Instant::now();
    let _stats = match BpfStats::enable() {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("flood: BPF run-time statistics unavailable: {e}");
            None
        }
    };
    let mut res = Results::default();
    let outcome = catch_unwind(AssertUnwindSafe(|| run_all(&plan, &mut res)));
    drop(_stats);
    if outcome.is_err() {
        if STOP.load(Ordering::SeqCst) {
            eprintln!("flood: interrupted; everything set up was removed");
            return ExitCode::from(130);
        }
        res.failures
            .push("the lab itself failed (see stderr)".into());
    }
    let text = report(&plan, &res, &opts, started, &load0);
    if let Some(dir) = opts.out.parent() {
        let _ = fs::create_dir_all(dir);
    }
    if let Err(e) = fs::write(&opts.out, &text) {
        eprintln!("flood: write {}: {e}", opts.out.display());
        return ExitCode::FAILURE;
    }
    let _ = fs::create_dir_all(&opts.plots);
    match register_font() {
        Ok(()) => {
            let floor = find(&res.runs, "XDP drop-all (floor)", "random 1Mi").map(|r| r.ns_per_pkt);
            if let Err(e) = plot_cost(
                &opts.plots.join("bench-cost-vs-size.png"),
                &size_points(&plan, &res),
                floor,
            ) {
                eprintln!("flood: plot cost: {e}");
            }
            if let Err(e) = plot_load(&opts.plots.join("bench-drop-vs-load.png"), &res.runs) {
                eprintln!("flood: plot load: {e}");
            }
        }
        Err(e) => eprintln!("flood: no plots: {e}"),
    }
    println!("{text}");
    eprintln!("flood: wrote {}", opts.out.display());
    if res.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prefilter_tests::packet::{checksum, tcp_checksum};

    /// Both frame layouts carry valid IP and TCP checksums (a bad one is dropped by the MX's
    /// stack, which would make the no-filter rows cheap for the wrong reason).
    #[test]
    fn syn_frames_have_valid_checksums() {
        let mut rng = Rng(7);
        let v4: IpAddr = Ipv4Addr::new(240, 1, 2, 3).into();
        let v6: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 0x1234, 5, 6, 7, 8, 9).into();
        for (src, len) in [(v4, 54), (v6, 74)] {
            let mut f = Vec::new();
            syn_frame(&mut f, [2; 6], [4; 6], src, &mut rng);
            assert_eq!(f.len(), len);
            let tcp = &f[len - 20..];
            assert_eq!(&tcp[2..4], &25u16.to_be_bytes());
            assert_eq!(tcp[13], 0x02);
            match src {
                IpAddr::V4(_) => {
                    assert_eq!(&f[12..14], &[0x08, 0x00]);
                    assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
                    assert_eq!(tcp_checksum(&f[26..30], &f[30..34], tcp), 0);
                }
                IpAddr::V6(s) => {
                    assert_eq!(&f[12..14], &[0x86, 0xdd]);
                    assert_eq!(&f[22..38], &s.octets());
                    assert_eq!(&f[38..54], &MX6.octets());
                    assert_eq!(tcp_checksum(&f[22..38], &f[38..54], tcp), 0);
                }
            }
        }
    }

    #[test]
    fn v6_list_leaves_out_the_mx() {
        assert_eq!(Family::V6.prefix(0), "2001:db8::/48");
        assert_eq!(Family::V6.prefix(FULL6 - 1), "2001:db8:fffe::/48");
        assert_eq!(size_label(FULL6), "64Ki");
        assert_eq!(size_label(FULL), "1Mi");
        assert_eq!(size_label(1 << 12), "4Ki");
    }
}
