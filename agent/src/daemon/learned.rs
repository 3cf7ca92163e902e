//! Verdicts learned at run time: DNSBL listings, pregreet violations, escalations, and CLI
//! entries with a TTL for one address. They go to the kernel's dynamic map (keyed by IPv4
//! address or IPv6 /64, expiry checked in the kernel, so they age out even while the agent is
//! down) and to every subscriber, e.g. the fleet reporter that tells a CrowdSec LAPI.
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use prefilter_common::dynamic::DynVerdict;
use tokio::sync::broadcast;

use super::{Daemon, OpError, as_seen, source_key};
use crate::policy::Action;

/// List id the dynamic map's entries carry for counters and events (no store list has it).
pub const DYNAMIC_LIST_ID: u16 = u16::MAX;

/// One learned verdict.
#[derive(Clone, Debug)]
pub struct Learned {
    /// The source; IPv6 applies to its /64.
    pub ip: IpAddr,
    pub action: Action,
    pub ttl: Duration,
    /// What learned it, e.g. `dnsbl`, `pregreet`, `escalation`, `cli`.
    pub source: String,
    /// Why, for logs and alerts, e.g. `zen.example.org=127.0.0.2 score 3`.
    pub reason: String,
}

/// The source and reason of the most recent learned verdicts, by key (an IPv4 address or
/// an IPv6 /64, as the dynamic map keys them): the map holds only the action and expiry.
/// Bounded: past [`Taught::MAX`] the oldest are forgotten (`check` then shows the verdict
/// without its origin).
#[derive(Default)]
pub struct Taught {
    by_key: HashMap<IpAddr, (String, String)>,
    order: VecDeque<IpAddr>,
}

impl Taught {
    const MAX: usize = 65_536;

    fn note(&mut self, ip: IpAddr, source: &str, reason: &str) {
        let k = source_key(ip);
        if self
            .by_key
            .insert(k, (source.to_owned(), reason.to_owned()))
            .is_none()
        {
            self.order.push_back(k);
        }
        while self.order.len() > Self::MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_key.remove(&old);
            }
        }
    }

    fn get(&self, ip: IpAddr) -> Option<(String, String)> {
        self.by_key.get(&source_key(ip)).cloned()
    }
}

/// CLOCK_BOOTTIME now, the clock `bpf_ktime_get_boot_ns` reads in the program.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Daemon {
    /// Puts a learned verdict into the kernel's dynamic map and tells subscribers.
    pub fn learn(&self, l: Learned) -> Result<(), OpError> {
        let ip = as_seen(l.ip);
        let (_, key) = self.kernel().lookup(ip);
        let ttl_ns = u64::try_from(l.ttl.as_nanos()).unwrap_or(u64::MAX);
        let v = DynVerdict {
            expires_ns: boottime_ns().saturating_add(ttl_ns.max(1)),
            action: l.action.code(),
            list_id: DYNAMIC_LIST_ID,
            ..Default::default()
        };
        self.lock()
            .filter
            .set_dynamic(key, v)
            .map_err(|e| OpError::internal(format!("dynamic map: {e}")))?;
        self.taught
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(ip, &l.source, &l.reason);
        // No subscriber is fine: nothing reports learned verdicts then.
        let _ = self.learned.send(Learned { ip, ..l });
        Ok(())
    }

    /// What taught the learned verdict of `ip` (source, reason), if it is recent enough to
    /// be remembered.
    pub fn taught(&self, ip: IpAddr) -> Option<(String, String)> {
        self.taught
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ip)
    }

    /// Learned verdicts from now on.
    pub fn subscribe_learned(&self) -> broadcast::Receiver<Learned> {
        self.learned.subscribe()
    }
}
