//! Builds Ethernet frames carrying TCP, with every length and checksum right, and the
//! knobs the tests turn: VLAN tags, IPv4 options and fragments, IPv6 extension headers.

use std::net::IpAddr;

/// TCP flag bits.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// An IPv6 extension header: next-header value that announces it and its body
/// (body excludes the 2 bytes of next header and length; it is padded to 8-byte units).
#[derive(Clone, Debug)]
pub struct Ext {
    /// 0 hop-by-hop, 43 routing, 60 destination options, 44 fragment.
    pub kind: u8,
    /// For kind 44: the fragment offset field (13 bits, in 8-byte units) and M flag.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// Extra 8-byte units for hop-by-hop/routing/destination options.
    pub units: u8,
}

/// A TCP segment in an IP packet in an Ethernet frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// VLAN tags outermost first: (TPID, TCI).
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 options (padded to 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv4 flags+fragment offset field (host order), e.g. 0x2000 = MF, 0x0010 = offset 16.
    pub frag: u16,
    /// IPv6 extension headers in order.
    pub ext: Vec<Ext>,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// TCP options (padded to 4 bytes).
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

/// MSS 1460, SACK permitted, timestamps, NOP, window scale 7: what Linux sends in a SYN.
pub const LINUX_SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];

impl Frame {
    /// A SYN from `src` to `dst:dport` with Linux's usual options.
    pub fn syn(src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlans: Vec::new(),
            src,
            dst,
            ip_options: Vec::new(),
            frag: 0,
            ext: Vec::new(),
            sport: 40000,
            dport,
            seq: 0x1234_5678,
            ack: 0,
            flags: flags::SYN,
            tcp_options: LINUX_SYN_OPTIONS.to_vec(),
            payload: Vec::new(),
        }
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        let mut opts = self.tcp_options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        tcp.push(((20 + opts.len()) / 4) as u8 * 16);
        tcp.push(self.flags);
        tcp.extend_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&opts);
        tcp.extend_from_slice(&self.payload);

        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let csum = tcp_checksum(&s.octets(), &d.octets(), &tcp);
                tcp[16..18].copy_from_slice(&csum.to_be_bytes());
                let mut opts = self.ip_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let mut ip = vec![0x40 | ((20 + opts.len()) / 4) as u8, 0];
                ip.extend_from_slice(&((20 + opts.len() + tcp.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34]);
                ip.extend_from_slice(&self.frag.to_be_bytes());
                ip.extend_from_slice(&[64, 6, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&opts);
                let c = checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let csum = tcp_checksum(&s.octets(), &d.octets(), &tcp);
                tcp[16..18].copy_from_slice(&csum.to_be_bytes());
                let mut ext = Vec::new();
                let kinds: Vec<u8> = self.ext.iter().map(|e| e.kind).chain([6]).collect();
                for (i, e) in self.ext.iter().enumerate() {
                    let next = kinds[i + 1];
                    if e.kind == 44 {
                        ext.extend_from_slice(&[next, 0]);
                        let field = (e.frag_offset << 3) | u16::from(e.more_fragments);
                        ext.extend_from_slice(&field.to_be_bytes());
                        ext.extend_from_slice(&[0, 0, 0, 1]);
                    } else {
                        ext.extend_from_slice(&[next, e.units]);
                        // PadN option filling the rest of the header.
                        let len = (e.units as usize + 1) * 8 - 2;
                        ext.push(1);
                        ext.push((len - 2) as u8);
                        ext.extend(std::iter::repeat_n(0, len - 2));
                    }
                }
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&((ext.len() + tcp.len()) as u16).to_be_bytes());
                ip.push(kinds[0]);
                ip.push(64);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&ext);
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            _ => panic!("mixed address families"),
        }
        f.extend_from_slice(&tcp);
        f
    }
}

/// Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum(data))
}

fn sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// TCP checksum over the pseudo-header for 4- or 16-byte addresses.
pub fn tcp_checksum(src: &[u8], dst: &[u8], tcp: &[u8]) -> u16 {
    let len = tcp.len() as u64;
    fold(sum(src) + sum(dst) + 6 + len + sum(tcp))
}

impl Ext {
    /// Hop-by-hop (0), routing (43) or destination options (60) header of `units` extra
    /// 8-byte units (filled with PadN).
    pub fn options(kind: u8, units: u8) -> Self {
        Self {
            kind,
            frag_offset: 0,
            more_fragments: false,
            units,
        }
    }

    /// A fragment header (44) with the offset in 8-byte units and the M flag.
    pub fn fragment(frag_offset: u16, more_fragments: bool) -> Self {
        Self {
            kind: 44,
            frag_offset,
            more_fragments,
            units: 0,
        }
    }

    /// Bytes this header occupies in the frame.
    pub fn wire_len(&self) -> usize {
        if self.kind == 44 {
            8
        } else {
            (self.units as usize + 1) * 8
        }
    }
}

/// Where each header starts in the bytes [`Frame::build`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offset of each VLAN tag (its TPID), outermost first.
    pub vlans: Vec<usize>,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of each IPv6 extension header, in order.
    pub ext: Vec<usize>,
    /// Offset of the TCP header.
    pub l4: usize,
    /// Offset of the TCP payload (after the options).
    pub payload: usize,
    /// Length of the frame.
    pub end: usize,
}

impl Frame {
    /// Offsets of the headers in [`Self::build`]'s output.
    pub fn layout(&self) -> Layout {
        let vlans: Vec<usize> = (0..self.vlans.len()).map(|i| 14 + 4 * i).collect();
        let l3 = 14 + 4 * self.vlans.len();
        let mut ext = Vec::new();
        let l4 = if self.src.is_ipv4() {
            l3 + 20 + self.ip_options.len().div_ceil(4) * 4
        } else {
            let mut off = l3 + 40;
            for e in &self.ext {
                ext.push(off);
                off += e.wire_len();
            }
            off
        };
        let payload = l4 + 20 + self.tcp_options.len().div_ceil(4) * 4;
        Layout {
            vlans,
            l3,
            ext,
            l4,
            payload,
            end: payload + self.payload.len(),
        }
    }
}

/// Lower-case hex of `bytes`, for failure messages (`xxd -r -p` reads it back).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
