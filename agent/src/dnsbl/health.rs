//! Zone health: RFC 5782 section 5 test points. Every DNSBL must list 127.0.0.2 and must
//! not list 127.0.0.1. A zone that fails this (a dead or REFUSED zone, a resolver that gets
//! error codes such as Spamhaus's 127.255.255.254 for every query, or a zone that lists
//! everything) is quarantined: its answers are ignored until a probe passes again, so a
//! broken list can never turn every sender into a listing.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::{Answer, Dnsbl, ErrorKind, HEALTHY, QUARANTINED};

/// A quarantined zone is probed this often (or at the configured interval, if shorter),
/// so it comes back soon after it is fixed.
const QUARANTINE_RETRY: Duration = Duration::from_secs(60);

impl Dnsbl {
    /// Probes zone `z` once and sets its state.
    pub async fn probe(&self, z: usize) {
        let zone = self.zones[z].name.clone();
        let point = |ip: IpAddr| super::site::query_name(ip, &zone);
        let (mut a2, _) = self
            .query(z, &point(IpAddr::from([127, 0, 0, 2])), true)
            .await;
        let (mut a1, _) = self
            .query(z, &point(IpAddr::from([127, 0, 0, 1])), true)
            .await;
        if a2 == Answer::NotListed && a1 == Answer::NotListed {
            // An IPv6 zone: its test points are ::ffff:127.0.0.2 and ::ffff:127.0.0.1
            // (RFC 5782 5), nibble-reversed.
            let v6 = |o: u8| IpAddr::V6(std::net::Ipv4Addr::new(127, 0, 0, o).to_ipv6_mapped());
            a2 = self.query(z, &point(v6(2)), true).await.0;
            a1 = self.query(z, &point(v6(1)), true).await.0;
        }
        let bad = match (&a2, &a1) {
            (Answer::Error(ErrorKind::Refused), _) | (_, Answer::Error(ErrorKind::Refused)) => {
                Some("the server REFUSED the query".to_owned())
            }
            (_, Answer::Listed(v)) => Some(format!(
                "lists the test point 127.0.0.1 ({}): it would list everything",
                v[0]
            )),
            (Answer::Error(k), _) => Some(format!("test point 127.0.0.2: {}", describe(*k))),
            (Answer::NotListed, _) => Some("does not list the test point 127.0.0.2".to_owned()),
            (_, Answer::Error(k)) => Some(format!("test point 127.0.0.1: {}", describe(*k))),
            (Answer::Listed(_), Answer::NotListed) => None,
        };
        match bad {
            Some(why) => self.set_state(z, QUARANTINED, why),
            None => self.set_state(z, HEALTHY, String::new()),
        }
    }

    /// Probes every zone once, in parallel.
    pub async fn probe_all(&self) {
        futures_util::future::join_all((0..self.zones.len()).map(|z| self.probe(z))).await;
    }

    /// Probes every zone now, then each at its interval, until `stop`.
    pub async fn run_probes(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            self.probe_all().await;
            let any_bad = self
                .zones
                .iter()
                .any(|z| z.state.load(std::sync::atomic::Ordering::Relaxed) == QUARANTINED);
            let wait = if any_bad {
                self.cfg.probe_interval.min(QUARANTINE_RETRY)
            } else {
                self.cfg.probe_interval
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

fn describe(k: ErrorKind) -> String {
    match k {
        ErrorKind::ErrorCode(a) => format!("answered the error code {a}"),
        ErrorKind::Timeout => "timed out".into(),
        ErrorKind::ServFail => "SERVFAIL".into(),
        ErrorKind::Refused => "REFUSED".into(),
        ErrorKind::Other => "failed".into(),
    }
}
