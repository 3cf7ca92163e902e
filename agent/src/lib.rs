//! The prefilter agent as a library: the daemon, the CLI client and the pieces the
//! end-to-end tests drive directly.
//!
//! Layers, bottom up: `policy` (rules, prefixes, the store), `sources` (list formats;
//! feeds and DNSBL next), `xdp` (the data plane: loading, pinning, tables, events),
//! `daemon` (the engine, control routes, metrics), `cli`; `api` and `http` are the wire
//! between daemon and CLI, `config` the daemon's file.

/// The compiled XDP object, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/prefilter-xdp"));

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dnsbl;
pub mod http;
pub mod policy;
pub mod proxy;
pub mod sources;
pub mod xdp;
