//! The prefilter agent as a library: the daemon, the CLI client and the pieces the
//! end-to-end tests drive directly.

/// The compiled XDP object, embedded at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/prefilter-xdp"));

pub mod api;
pub mod bpffs;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod guard;
pub mod http;
pub mod import;
pub mod prefix;
pub mod store;
pub mod xdp;
