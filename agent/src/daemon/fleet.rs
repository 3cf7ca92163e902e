//! The fleet reporter: what this gateway learns at run time (DNSBL listings, escalations,
//! `block add ADDR --ttl`; `[crowdsec] report`) goes to a CrowdSec LAPI as alerts carrying a
//! ban decision, so every other gateway reading that LAPI's decision stream (a `crowdsec`
//! feed) gets it at its next poll.
//!
//! It never slows the engine: it reads `Daemon::subscribe_learned()` (a broadcast channel;
//! when it lags, the oldest verdicts are lost and counted), keeps a bounded queue, sends in
//! batches, and retries with a growing pause while the LAPI is unreachable.

use std::collections::VecDeque;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use super::Daemon;
use super::learned::Learned;
use crate::config::CrowdSec;
use crate::policy::Action;

/// Verdicts waiting at most; beyond, the oldest are dropped (and counted).
const QUEUE: usize = 10_000;
/// Alerts per POST.
const BATCH: usize = 100;
/// Longest pause between attempts while the LAPI fails.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// One request's bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

static REPORTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "prefilter_fleet_reports_total",
            "Learned verdicts and what became of them: sent, dropped (queue full or lagged), failed (LAPI refused the batch).",
        ),
        &["result"],
    )
    .expect("constant metric definition")
});
static QUEUED: LazyLock<IntGauge> = LazyLock::new(|| {
    IntGauge::new(
        "prefilter_fleet_queue_length",
        "Learned verdicts waiting to be reported.",
    )
    .expect("constant metric definition")
});

/// Adds the reporter's metrics to a registry.
pub fn register(r: &Registry) {
    let _ = r.register(Box::new(REPORTED.clone()));
    // Every result at 0 from the start: the failing-reports alert needs the series.
    for result in ["sent", "dropped", "failed"] {
        REPORTED.with_label_values(&[result]);
    }
    let _ = r.register(Box::new(QUEUED.clone()));
}

#[derive(Serialize)]
struct Login<'a> {
    machine_id: &'a str,
    password: &'a str,
    scenarios: [&'a str; 0],
}

#[derive(Deserialize)]
struct Token {
    token: String,
}

/// One alert as the LAPI's `POST /v1/alerts` takes it (the fields it requires).
#[derive(Serialize)]
struct Alert {
    scenario: String,
    scenario_hash: &'static str,
    scenario_version: &'static str,
    message: String,
    events_count: u32,
    events: [(); 0],
    capacity: u32,
    leakspeed: &'static str,
    simulated: bool,
    start_at: String,
    stop_at: String,
    source: Source,
    decisions: [AlertDecision; 1],
}

#[derive(Serialize)]
struct Source {
    scope: &'static str,
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
}

#[derive(Serialize)]
struct AlertDecision {
    duration: String,
    origin: &'static str,
    scenario: String,
    scope: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    value: String,
}

/// RFC 3339 UTC of Unix seconds. Hand-written: one format, and no date crate is otherwise
/// needed (days to civil date per Howard Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn alert(l: &Learned) -> Alert {
    let now = crate::policy::store::now();
    let (scope, value) = match l.ip {
        std::net::IpAddr::V4(a) => ("Ip", a.to_string()),
        // The dynamic map judges IPv6 by /64: report what was judged.
        std::net::IpAddr::V6(a) => {
            let p = crate::policy::Prefix::new(std::net::IpAddr::V6(a), 64)
                .map_or_else(|_| a.to_string(), |p| p.to_string());
            ("Range", p)
        }
    };
    let scenario = format!("prefilter/{}", l.source);
    Alert {
        scenario: scenario.clone(),
        scenario_hash: "",
        scenario_version: "",
        message: format!(
            "prefilter {}: {} {} ({})",
            l.source, value, l.action, l.reason
        ),
        events_count: 1,
        events: [],
        capacity: 0,
        leakspeed: "0",
        simulated: false,
        start_at: rfc3339(now),
        stop_at: rfc3339(now),
        source: Source {
            scope,
            value: value.clone(),
            ip: (scope == "Ip").then(|| value.clone()),
        },
        decisions: [AlertDecision {
            duration: format!("{}s", l.ttl.as_millis().div_ceil(1000).max(1)),
            origin: "prefilter",
            scenario,
            scope,
            kind: "ban",
            value,
        }],
    }
}

/// The start of an error answer, for the log: read no further than that (a LAPI or a
/// proxy in front of it may answer megabytes) and with control characters blanked.
async fn error_body(mut resp: reqwest::Response) -> String {
    const SHOWN: usize = 512;
    let mut body = Vec::new();
    while body.len() < SHOWN {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    let cut = body.len() > SHOWN;
    body.truncate(SHOWN);
    let mut text: String = String::from_utf8_lossy(&body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cut {
        text.push_str(" ...");
    }
    text
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain structs serialize")
}

/// An error and its causes (`error sending request ...: connection refused`): reqwest's
/// own text leaves out why.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Why a batch was not delivered.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{}", with_causes(.0))]
    Http(#[from] reqwest::Error),
    #[error("LAPI answered {status}: {body}")]
    Status { status: u16, body: String },
}

struct Reporter {
    cfg: CrowdSec,
    client: reqwest::Client,
    token: Option<(String, Instant)>,
}

impl Reporter {
    async fn login(&mut self) -> Result<String, SendError> {
        if let Some((t, at)) = &self.token
            // Tokens last an hour; renewed well before.
            && at.elapsed() < Duration::from_secs(30 * 60)
        {
            return Ok(t.clone());
        }
        let resp = self
            .client
            .post(format!("{}/v1/watchers/login", self.cfg.url))
            .timeout(REQUEST_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json(&Login {
                machine_id: &self.cfg.machine_id,
                password: &self.cfg.password,
                scenarios: [],
            }))
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = error_body(resp).await;
            return Err(SendError::Status {
                status: status.as_u16(),
                body,
            });
        }
        let body = resp.bytes().await?;
        let t: Token = serde_json::from_slice(&body).map_err(|e| SendError::Status {
            status: status.as_u16(),
            body: format!("login answer without a token: {e}"),
        })?;
        self.token = Some((t.token.clone(), Instant::now()));
        Ok(t.token)
    }

    async fn send(&mut self, batch: &[Learned]) -> Result<(), SendError> {
        let token = self.login().await?;
        let alerts: Vec<Alert> = batch.iter().map(alert).collect();
        let resp = self
            .client
            .post(format!("{}/v1/alerts", self.cfg.url))
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json(&alerts))
            .send()
            .await?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            self.token = None;
        }
        if !status.is_success() {
            let body = error_body(resp).await;
            return Err(SendError::Status {
                status: status.as_u16(),
                body,
            });
        }
        Ok(())
    }
}

/// Reports learned verdicts until stopped.
pub async fn report(d: Daemon, cfg: CrowdSec, mut stop: watch::Receiver<bool>) {
    let mut rx = d.subscribe_learned();
    let mut queue: VecDeque<Learned> = VecDeque::new();
    let mut reporter = Reporter {
        client: crate::sources::feeds::client(),
        cfg,
        token: None,
    };
    let mut backoff = Duration::from_secs(1);
    let mut retry_at: Option<tokio::time::Instant> = None;
    info!(lapi = %reporter.cfg.url, machine = %reporter.cfg.machine_id, report = ?reporter.cfg.report, "fleet reporter started");
    loop {
        // Take what arrived without waiting.
        loop {
            match rx.try_recv() {
                Ok(l) => enqueue(&mut queue, &reporter.cfg, l),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    REPORTED.with_label_values(&["dropped"]).inc_by(n);
                    warn!(
                        lost = n,
                        "fleet reporter fell behind: learned verdicts not reported"
                    );
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return,
            }
        }
        QUEUED.set(queue.len() as i64);
        let ready = retry_at.is_none_or(|t| tokio::time::Instant::now() >= t);
        if !queue.is_empty() && ready {
            let n = queue.len().min(BATCH);
            let batch: Vec<Learned> = queue.iter().take(n).cloned().collect();
            let sent = tokio::select! {
                r = reporter.send(&batch) => r,
                _ = stop.changed() => return abandon(&queue),
            };
            match sent {
                Ok(()) => {
                    queue.drain(..n);
                    QUEUED.set(queue.len() as i64);
                    REPORTED.with_label_values(&["sent"]).inc_by(n as u64);
                    backoff = Duration::from_secs(1);
                    retry_at = None;
                    info!(alerts = n, "learned verdicts reported to the LAPI");
                    continue;
                }
                Err(e) => {
                    if matches!(&e, SendError::Status { status, .. } if *status == 400 || *status == 422)
                    {
                        // The LAPI will never take this batch: do not retry it forever.
                        queue.drain(..n);
                        REPORTED.with_label_values(&["failed"]).inc_by(n as u64);
                        QUEUED.set(queue.len() as i64);
                    }
                    warn!(error = %e, retry_in_s = backoff.as_secs(), "reporting to the LAPI failed");
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let wake = retry_at.filter(|_| !queue.is_empty());
        tokio::select! {
            r = rx.recv() => match r {
                Ok(l) => enqueue(&mut queue, &reporter.cfg, l),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    REPORTED.with_label_values(&["dropped"]).inc_by(n);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = stop.changed() => return abandon(&queue),
        }
    }
}

/// At a stop: what was not sent is lost (the queue lives in memory only): said and counted.
fn abandon(queue: &VecDeque<Learned>) {
    if !queue.is_empty() {
        REPORTED
            .with_label_values(&["dropped"])
            .inc_by(queue.len() as u64);
        QUEUED.set(0);
        warn!(
            unsent = queue.len(),
            "stopping with learned verdicts not yet reported to the LAPI: they are not kept \
             across a restart"
        );
    }
}

fn enqueue(queue: &mut VecDeque<Learned>, cfg: &CrowdSec, l: Learned) {
    if !cfg.report.contains(&l.source) {
        return;
    }
    // A CrowdSec decision is a ban, which every gateway's feed (this one's too, reading its
    // own alert back) applies as its blocking action: an observe, tempfail or reject
    // verdict reported as one would become a drop everywhere. Those stay local.
    if !matches!(l.action, Action::Drop | Action::Reset) {
        tracing::debug!(ip = %l.ip, action = l.action.name(), "not reported: only blocking verdicts become bans");
        return;
    }
    if queue.len() >= QUEUE {
        queue.pop_front();
        REPORTED.with_label_values(&["dropped"]).inc();
    }
    queue.push_back(l);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_003_058), "2026-11-30T01:44:18Z");
    }

    /// Every gateway applies a reported ban as its blocking action, the reporter's own feed
    /// too: an observe, tempfail or reject verdict is never reported as one.
    #[test]
    fn only_blocking_verdicts_are_queued() {
        use crate::policy::Action;
        let cfg = CrowdSec {
            url: "http://127.0.0.1:8080".into(),
            machine_id: "mx1".into(),
            password: "p".into(),
            report: vec!["cli".into()],
        };
        let mut q = VecDeque::new();
        for action in [
            Action::Drop,
            Action::Reset,
            Action::Tempfail,
            Action::Reject,
            Action::Observe,
        ] {
            enqueue(
                &mut q,
                &cfg,
                Learned {
                    ip: "192.0.2.32".parse().unwrap(),
                    action,
                    ttl: Duration::from_secs(600),
                    source: "cli".into(),
                    reason: "test".into(),
                },
            );
        }
        let queued: Vec<Action> = q.iter().map(|l| l.action).collect();
        assert_eq!(queued, [Action::Drop, Action::Reset]);
    }

    #[test]
    fn alerts_carry_a_ban_decision() {
        let l = Learned {
            ip: "2001:db8:1:2:3::9".parse().unwrap(),
            action: crate::policy::Action::Drop,
            ttl: Duration::from_secs(3600),
            source: "dnsbl".into(),
            reason: "zen".into(),
        };
        let v = serde_json::to_value(alert(&l)).unwrap();
        assert_eq!(v["decisions"][0]["value"], "2001:db8:1:2::/64");
        assert_eq!(v["decisions"][0]["scope"], "Range");
        assert_eq!(v["decisions"][0]["duration"], "3600s");
        assert_eq!(v["decisions"][0]["type"], "ban");
        assert_eq!(v["scenario"], "prefilter/dnsbl");
    }
}
