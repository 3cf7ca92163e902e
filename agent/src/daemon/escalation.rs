//! Escalation: an address that keeps reconnecting under an SMTP-level verdict (tempfail,
//! reject, a DNSBL listing in inline mode) is promoted to an XDP verdict for a while, so
//! its SYNs stop costing a socket and a proxy session.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Instant};

use tracing::{info, warn};

use super::{Daemon, learned::Learned, source_key};
use crate::config;

/// Refusals per address in the current window, bounded by `max_tracked`.
pub struct Escalation {
    cfg: config::Escalation,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Escalation {
    pub fn new(cfg: config::Escalation) -> Self {
        Self {
            cfg,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one refusal of `ip` at `now`; true when it just went over the limit (the
    /// count starts again then, so one promotion per burst).
    pub fn count(&self, ip: IpAddr, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let within = self.cfg.within;
        let k = source_key(ip);
        if !seen.contains_key(&k) && seen.len() >= self.cfg.max_tracked as usize {
            // Full: windows that ended are dropped; if none did, the address is not
            // tracked (memory stays bounded; a flood of fresh addresses cannot grow it).
            seen.retain(|_, (start, _)| now.duration_since(*start) < within);
            if seen.len() >= self.cfg.max_tracked as usize {
                return false;
            }
        }
        let e = seen.entry(k).or_insert((now, 0));
        if now.duration_since(e.0) >= within {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 > self.cfg.after {
            seen.remove(&k);
            return true;
        }
        false
    }

    /// Addresses being counted.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn config(&self) -> &config::Escalation {
        &self.cfg
    }
}

impl Daemon {
    /// Counts an SMTP-level refusal of `ip` (the proxy calls this for every tempfail or
    /// reject it answers; inline DNSBL listings count too). More than `[escalation] after`
    /// within `within` puts `action` into the kernel's dynamic map for `ttl`.
    pub fn note_refusal(&self, ip: IpAddr) {
        let Some(esc) = &self.escalation else {
            return;
        };
        if !esc.count(ip, Instant::now()) {
            return;
        }
        let c = esc.config();
        let l = Learned {
            ip,
            action: c.action,
            ttl: c.ttl,
            source: "escalation".into(),
            reason: format!(
                "refused more than {} times within {}s",
                c.after,
                c.within.as_secs()
            ),
        };
        info!(client = %ip, action = %c.action, ttl_secs = c.ttl.as_secs(), "escalated to XDP");
        let d = self.clone();
        // learn() takes the writer, which an import may hold for seconds: not on the
        // caller's task.
        let run = move || {
            if let Err(e) = d.learn(l) {
                warn!(client = %ip, "escalation not applied: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(run)),
            Err(_) => run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn esc(after: u32, max: u32) -> Escalation {
        Escalation::new(config::Escalation {
            after,
            within: Duration::from_secs(60),
            action: crate::policy::Action::Drop,
            ttl: Duration::from_secs(600),
            max_tracked: max,
        })
    }

    #[test]
    fn promotes_after_n_within_t_and_forgets_old_windows() {
        let e = esc(3, 100);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let t0 = Instant::now();
        let got: Vec<bool> = (0..4)
            .map(|i| e.count(ip, t0 + Duration::from_secs(i)))
            .collect();
        assert_eq!(
            got,
            [false, false, false, true],
            "the 4th refusal is more than 3"
        );
        // A new window: three more within it are not enough.
        for i in 0..3 {
            assert!(!e.count(ip, t0 + Duration::from_secs(10 + i)));
        }
        // The window ran out: counting starts again.
        assert!(!e.count(ip, t0 + Duration::from_secs(100)));
    }

    #[test]
    fn ipv6_counts_per_64_and_memory_is_bounded() {
        let e = esc(1, 2);
        let t0 = Instant::now();
        assert!(!e.count("2001:db8::1".parse().unwrap(), t0));
        assert!(e.count("2001:db8::2".parse().unwrap(), t0), "same /64");
        assert!(!e.count("192.0.2.1".parse().unwrap(), t0));
        assert!(!e.count("192.0.2.2".parse().unwrap(), t0));
        assert!(
            !e.count("192.0.2.3".parse().unwrap(), t0),
            "not tracked: full"
        );
        assert!(e.tracked() <= 2);
    }
}
