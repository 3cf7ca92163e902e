//! SMTP clients for the proxy in front of Postfix: swaks and raw connections from the lab's
//! client namespace to the MX's port 25, and the daemon's session lines and metrics to judge
//! them by. Shared by the proxy tests and `cargo xtask lab`.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::daemon::{Daemon, Lab, MX4, MX6, in_netns, poll, run_bounded};

/// swaks from `src` in the client namespace through the proxy; returns its whole output.
pub fn swaks(lab: &Lab, src: IpAddr) -> String {
    swaks_with(lab, src, &[])
}

/// [`swaks`] with more arguments (a later `--to` replaces the default one).
pub fn swaks_with(lab: &Lab, src: IpAddr, extra: &[&str]) -> String {
    let server = match src {
        IpAddr::V4(_) => MX4.to_string(),
        IpAddr::V6(_) => MX6.to_string(),
    };
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab.client.name, "swaks"])
        .args(["--server", &server, "--port", "25"])
        .args(["--local-interface", &src.to_string()])
        .args(["--from", "sender@client.test", "--to", "user@sink.test"])
        .args(["--helo", "client.test", "--timeout", "20"])
        .args(extra);
    if src.is_ipv6() {
        c.arg("-6");
    }
    let out = run_bounded(c, Duration::from_secs(60));
    out.both()
}

/// A TCP connection from `src` in the client namespace to the proxy on the MX's port 25.
pub fn connect(lab: &Lab, src: IpAddr) -> TcpStream {
    let dst = Lab::smtp_of(src);
    let s = in_netns(&lab.client.name, || {
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))
            .expect("socket");
        sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
            .expect("bind the source");
        sock.connect_timeout(&dst.into(), Duration::from_secs(5))
            .expect("connect to the proxy");
        TcpStream::from(sock)
    });
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A raw connection from `src` to the proxy, and its first line.
pub fn first_line(lab: &Lab, src: IpAddr) -> (TcpStream, String) {
    let s = connect(lab, src);
    let mut line = String::new();
    let _ = BufReader::new(&s).read_line(&mut line);
    (s, line)
}

/// The value of `series` (name and labels, as exposed) in a metrics text.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// The daemon's `proxy session` lines for client address `ip` (v4).
pub fn sessions_of(d: &Daemon, ip: IpAddr) -> Vec<String> {
    let needle = format!("client={ip}:");
    d.log()
        .lines()
        .filter(|l| l.contains("proxy session") && l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// Waits (bounded) for a session line of `ip` that contains every one of `parts`.
pub fn wait_session(d: &Daemon, ip: IpAddr, parts: &[&str]) -> String {
    poll(Duration::from_secs(10), || {
        sessions_of(d, ip)
            .into_iter()
            .find(|l| parts.iter().all(|p| l.contains(p)))
    })
    .unwrap_or_else(|| panic!("no session line of {ip} with {parts:?}:\n{}", d.log()))
}
