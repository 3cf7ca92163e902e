//! Network namespaces and veth pairs that a test creates and always removes, by exact name.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `{tag}{pid}x{n}`, at most 15 bytes so
/// that derived interface names fit IFNAMSIZ.
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("{tag}{}x{n}", std::process::id() % 100_000);
    assert!(
        name.len() <= 12,
        "name {name} too long for derived interface names"
    );
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
        Self::create(&unique(tag))
    }

    /// Creates `ip netns add {name}` with loopback up: for a fixed name (the lab's), which
    /// the caller makes sure is free.
    pub fn create(name: &str) -> Self {
        let name = name.to_owned();
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

    /// The namespace's SNMP and extended TCP/IP counters (`/proc/net/snmp` and
    /// `/proc/net/netstat` as seen inside it), keyed `Group.Name`: `Tcp.ActiveOpens`,
    /// `TcpExt.TCPSynRetrans`...
    pub fn netstat(&self) -> HashMap<String, u64> {
        let out = self.exec("cat", &["/proc/net/snmp", "/proc/net/netstat"]);
        parse_netstat(&String::from_utf8_lossy(&out.stdout))
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> NsGuard {
        let old = File::open("/proc/thread-self/ns/net").expect("open current netns");
        let new = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        // SAFETY: setns on valid namespace fds; affects only this thread.
        let rc = unsafe { libc::setns(new.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
        NsGuard { old }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes the veth ends inside it too.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
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

/// Parses the `Group: name name...` / `Group: value value...` line pairs of `/proc/net/snmp`
/// and `/proc/net/netstat` into `Group.name` -> value.
pub fn parse_netstat(text: &str) -> HashMap<String, u64> {
    let mut map = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((group, names)), Some((vgroup, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if group != vgroup {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            // Tcp.MaxConn is -1: not a counter, leave it out.
            if let Ok(v) = v.parse() {
                map.insert(format!("{group}.{n}"), v);
            }
        }
    }
    map
}

/// `bpf(2)` commands and constants used below (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One BPF instruction as the kernel reads it: opcode, registers (source << 4 | destination),
/// offset, immediate.
pub fn insn(op: u8, regs: u8, off: i16, imm: i32) -> u64 {
    let o = off.to_le_bytes();
    let m = imm.to_le_bytes();
    u64::from_le_bytes([op, regs, o[0], o[1], m[0], m[1], m[2], m[3]])
}

/// Creates a map of `entries` u64 values under u32 keys, of `map_type` with `map_flags`.
fn u64_map(map_type: u32, entries: u32, map_flags: u32) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let mut attr = MapCreate {
        map_type,
        key_size: 4,
        value_size: 8,
        max_entries: entries,
        map_flags,
    };
    bpf(0 /* BPF_MAP_CREATE */, &mut attr)
}

/// A BPF array of u64s created with BPF_F_MMAPABLE and mapped here, so that a benchmark can
/// fill millions of entries without a syscall each; for hand-assembled reference programs.
pub struct U64Array {
    fd: OwnedFd,
    ptr: *mut u64,
    entries: u32,
}

impl U64Array {
    /// An array of `entries` zero u64s (a power of two: programs mask their index with it).
    pub fn new(entries: u32) -> std::io::Result<Self> {
        assert!(entries.is_power_of_two(), "{entries} entries");
        let fd = u64_map(
            2, /* BPF_MAP_TYPE_ARRAY */
            entries,
            1 << 10, /* BPF_F_MMAPABLE */
        )?;
        let len = entries as usize * 8;
        // SAFETY: a shared mapping of the map's whole value area, which the kernel allows
        // for an mmapable array; unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            ptr: p.cast(),
            entries,
        })
    }

    /// Sets entry `i` (masked to the array's size, as the programs index it).
    pub fn set(&mut self, i: u32, v: u64) {
        // SAFETY: the index is masked into the mapping.
        unsafe {
            self.ptr
                .add((i & (self.entries - 1)) as usize)
                .write_volatile(v)
        };
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl Drop for U64Array {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new, of this length.
        unsafe { libc::munmap(self.ptr.cast(), self.entries as usize * 8) };
    }
}

/// A per-CPU array of one u64: the counter a [`xdp_min_filter_program`] may bump.
pub struct PerCpuCounter {
    fd: OwnedFd,
}

impl PerCpuCounter {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            fd: u64_map(6 /* BPF_MAP_TYPE_PERCPU_ARRAY */, 1, 0)?,
        })
    }
}

/// The least any SYN filter does, hand-assembled (36 instructions): an untagged IPv4 frame
/// without IP options, not a fragment, TCP with SYN alone to `port`, its source /24 looked
/// up in `table` (inlined array lookup), XDP_DROP where the entry is not zero, XDP_PASS
/// otherwise. Parsing plus one array load, no events: the floor a benchmark compares a real
/// filter's per-packet cost with. With `count`, each drop also bumps that per-CPU counter
/// (one more inlined lookup and an add, 10 instructions more, counted as the 36 are): what
/// counting verdicts costs.
pub fn xdp_min_filter_program(
    table: &U64Array,
    count: Option<&PerCpuCounter>,
    port: u16,
) -> std::io::Result<OwnedFd> {
    let i = insn;
    let fd = table.fd().as_raw_fd();
    // Before the drop: the counter's slot 0 looked up (key through the stack, as a compiled
    // program passes it) and incremented.
    let counting: Vec<u64> = match count {
        Some(c) => vec![
            i(0x62, 0x0a, -8, 0),               // *(u32 *)(r10 - 8) = 0
            i(0xbf, 0xa2, 0, 0),                // r2 = r10
            i(0x07, 0x02, 0, -8),               // r2 += -8
            i(0x18, 0x11, 0, c.fd.as_raw_fd()), // r1 = counter map ...
            0,                                  // ... upper half
            i(0x85, 0, 0, 1),                   // call bpf_map_lookup_elem (inlined)
            i(0x15, 0x00, 3, 0),                // if r0 == 0 goto drop
            i(0x79, 0x01, 0, 0),                // r1 = *(u64 *)(r0 + 0)
            i(0x07, 0x01, 0, 1),                // r1 += 1
            i(0x7b, 0x10, 0, 0),                // *(u64 *)(r0 + 0) = r1
        ],
        None => Vec::new(),
    };
    let pass = 34 + counting.len();
    // Jump offsets count from the next instruction.
    let to_pass = |at: usize| (pass - at - 1) as i16;
    let mut insns = vec![
        i(0x61, 0x12, 0, 0),                                 // 0: r2 = data
        i(0x61, 0x13, 4, 0),                                 // 1: r3 = data_end
        i(0xbf, 0x24, 0, 0),                                 // 2: r4 = r2
        i(0x07, 0x04, 0, 54),                                // 3: r4 += 54 (Ethernet, IPv4, TCP)
        i(0x2d, 0x34, to_pass(4), 0),                        // 4: if r4 > r3 goto pass
        i(0x69, 0x25, 12, 0),                                // 5: r5 = ethertype (wire order)
        i(0x55, 0x05, to_pass(6), 0x0008),                   // 6: if r5 != IPv4 goto pass
        i(0x71, 0x25, 14, 0),                                // 7: r5 = version and IHL
        i(0x55, 0x05, to_pass(8), 0x45),                     // 8: if r5 != 0x45 goto pass
        i(0x71, 0x25, 23, 0),                                // 9: r5 = protocol
        i(0x55, 0x05, to_pass(10), 6),                       // 10: if r5 != TCP goto pass
        i(0x69, 0x25, 20, 0),                                // 11: r5 = flags and fragment offset
        i(0x57, 0x05, 0, 0xff1f), // 12: r5 &= fragment offset (wire order)
        i(0x55, 0x05, to_pass(13), 0), // 13: if r5 != 0 goto pass
        i(0x71, 0x25, 47, 0),     // 14: r5 = TCP flags
        i(0x57, 0x05, 0, 0x17),   // 15: r5 &= SYN | ACK | RST | FIN
        i(0x55, 0x05, to_pass(16), 0x02), // 16: if r5 != SYN goto pass
        i(0x69, 0x25, 36, 0),     // 17: r5 = destination port (wire order)
        i(0x55, 0x05, to_pass(18), i32::from(port.to_be())), // 18: if r5 != port goto pass
        i(0x61, 0x26, 26, 0),     // 19: r6 = IPv4 source (wire order)
        i(0xdc, 0x06, 0, 32),     // 20: r6 = be32(r6)
        i(0x77, 0x06, 0, 8),      // 21: r6 >>= 8: the /24
        i(0x57, 0x06, 0, (table.entries() - 1) as i32), // 22: r6 &= entries - 1
        i(0x63, 0x6a, -4, 0),     // 23: *(u32 *)(r10 - 4) = r6
        i(0xbf, 0xa2, 0, 0),      // 24: r2 = r10
        i(0x07, 0x02, 0, -4),     // 25: r2 += -4
        i(0x18, 0x11, 0, fd),     // 26: r1 = map (BPF_PSEUDO_MAP_FD) ...
        0,                        // 27: ... upper half
        i(0x85, 0, 0, 1),         // 28: call bpf_map_lookup_elem (inlined)
        i(0x15, 0x00, to_pass(29), 0), // 29: if r0 == 0 goto pass
        i(0x79, 0x00, 0, 0),      // 30: r0 = *(u64 *)(r0 + 0)
        i(0x15, 0x00, to_pass(31), 0), // 31: if r0 == 0 goto pass
    ];
    insns.extend(counting);
    insns.extend([
        i(0xb7, 0x00, 0, 1), // drop: r0 = XDP_DROP
        i(0x95, 0, 0, 0),    // exit
        i(0xb7, 0x00, 0, 2), // pass: r0 = XDP_PASS
        i(0x95, 0, 0, 0),    // exit
    ]);
    assert_eq!(insns.len(), pass + 2, "the pass label moved");
    xdp_insns_program(
        &insns,
        if count.is_some() {
            "xdp_min_count"
        } else {
            "xdp_min_filter"
        },
    )
}

/// Loads the smallest XDP program there is, `return XDP_PASS`, with the raw `bpf(2)` call:
/// the floor for benchmarks, and a harmless program for a veth peer that must run XDP.
pub fn xdp_pass_program() -> std::io::Result<OwnedFd> {
    xdp_return_program(2, "xdp_pass")
}

/// Loads `return ACTION` (1 = XDP_DROP, 2 = XDP_PASS) named `name` (at most 15 bytes). Raw
/// `bpf(2)`: two instructions need no object file, compiler or loader crate.
pub fn xdp_return_program(action: u8, name: &str) -> std::io::Result<OwnedFd> {
    // r0 = action; exit.
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, action, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    xdp_insns_program(&insns, name)
}

/// Loads an XDP program of raw instructions (as little-endian u64s) named `name`.
pub fn xdp_insns_program(insns: &[u64], name: &str) -> std::io::Result<OwnedFd> {
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
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr)
}

impl Netns {
    /// Attaches [`xdp_pass_program`] in native mode to `ifname` inside the namespace
    /// (BPF_LINK_CREATE). The program stays attached while the returned link lives.
    ///
    /// A veth needs this to receive what its peer sends with XDP_TX: the peer queues the
    /// frames on this side's ring but only kicks this side's NAPI when it runs XDP itself.
    pub fn attach_xdp_pass(&self, ifname: &str) -> OwnedFd {
        let prog = xdp_pass_program().expect("load the XDP_PASS program");
        self.attach_xdp_native(&prog, ifname)
            .unwrap_or_else(|e| panic!("attach XDP_PASS to {ifname} in {}: {e}", self.name))
    }

    /// Attaches `prog` in native mode to `ifname` inside the namespace (BPF_LINK_CREATE);
    /// it stays attached while the returned link lives.
    pub fn attach_xdp_native(&self, prog: &OwnedFd, ifname: &str) -> std::io::Result<OwnedFd> {
        let _inside = self.enter();
        let c = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::other(format!(
                "no interface {ifname} in {}",
                self.name
            )));
        }
        #[repr(C)]
        #[derive(Default)]
        struct LinkCreate {
            prog_fd: u32,
            target_ifindex: u32,
            attach_type: u32,
            flags: u32,
            _rest: [u64; 4],
        }
        let mut attr = LinkCreate {
            prog_fd: prog.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: XDP_FLAGS_DRV_MODE,
            ..Default::default()
        };
        bpf(BPF_LINK_CREATE, &mut attr)
    }
}
