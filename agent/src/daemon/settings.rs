//! What the daemon takes from a validated config.

use std::{
    ffi::CString,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use aya::programs::XdpMode;

use crate::{
    config::{AttachMode, Config, ListKind, LoadError},
    policy::Kind,
    policy::prefix::Prefix,
};

/// A static list of the config.
#[derive(Clone, Debug)]
pub struct ListSpec {
    pub name: String,
    pub kind: Kind,
    pub action: u8,
    pub prefixes: Vec<(Prefix, Option<String>)>,
}

/// The daemon's view of the config.
#[derive(Clone, Debug)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Group allowed on the control socket; None = root only.
    pub socket_group: Option<String>,
    /// bpffs mount point; pins go to `{bpffs}/prefilter`.
    pub bpffs: PathBuf,
    pub interfaces: Vec<String>,
    /// None = native with skb fallback.
    pub mode: Option<XdpMode>,
    pub ports: Vec<u16>,
    pub log_level: u8,
    /// Events per second per CPU (verdict samples and first-seen); 0 = none.
    pub events_per_second: u32,
    /// (cost_ns, cap_ns) when the per-source rate limit is on.
    pub ratelimit: Option<(u64, u64)>,
    /// (v4 long groups, v6 entries, dynamic entries).
    pub limits: (u32, u32, u32),
    /// `[limits] max_shrink_percent` as a share (0.0..=1.0).
    pub max_shrink: f64,
    pub metrics: Option<SocketAddr>,
    pub lists: Vec<ListSpec>,
    /// `[proxy]`; read at start only (a reload keeps the running proxy as it is).
    pub proxy: Option<crate::config::Proxy>,
    /// `[dnsbl]`; read at start only.
    pub dnsbl: Option<crate::config::Dnsbl>,
    /// `[escalation]`; read at start only.
    pub escalation: Option<crate::config::Escalation>,
    /// `[[feeds]]`.
    pub feeds: Vec<crate::config::Feed>,
    /// `[crowdsec]`: where learned verdicts are reported.
    pub crowdsec: Option<crate::config::CrowdSec>,
}

/// Whether the interface exists in our network namespace.
pub fn iface_exists(name: &str) -> bool {
    CString::new(name)
        // SAFETY: valid C string.
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
        .unwrap_or(false)
}

impl Settings {
    /// Loads and validates the config file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Ok(Self::from(Config::load(path, &iface_exists)?))
    }
}

impl From<Config> for Settings {
    fn from(c: Config) -> Self {
        let lists = c
            .lists
            .iter()
            .map(|l| ListSpec {
                name: l.name.clone(),
                kind: match l.kind {
                    ListKind::Allow => Kind::Allow,
                    ListKind::Block { .. } => Kind::Block,
                },
                action: l.action_code(),
                prefixes: l
                    .entries
                    .iter()
                    .map(|e| (e.prefix, e.reason.clone()))
                    .collect(),
            })
            .collect();
        Self {
            state_dir: c.daemon.state_dir,
            socket: c.daemon.socket,
            socket_group: c.daemon.socket_group,
            bpffs: c.daemon.bpffs,
            interfaces: c.xdp.interfaces.clone(),
            mode: match c.xdp.mode {
                AttachMode::Auto => None,
                AttachMode::Native => Some(XdpMode::Driver),
                AttachMode::Skb => Some(XdpMode::Skb),
            },
            ports: c.xdp.ports.clone(),
            log_level: c.xdp.log_level as u8,
            events_per_second: c.xdp.events_per_second,
            ratelimit: c.xdp.ratelimit.map(|r| {
                let b = r.bucket();
                (b.cost_ns, b.cap_ns)
            }),
            limits: (
                c.limits.v4_long_groups,
                c.limits.v6_entries,
                c.limits.dynamic_entries,
            ),
            max_shrink: f64::from(c.limits.max_shrink_percent) / 100.0,
            metrics: c.metrics.listen,
            lists,
            proxy: c.proxy,
            dnsbl: c.dnsbl,
            escalation: c.escalation,
            feeds: c.feeds,
            crowdsec: c.crowdsec,
        }
    }
}
