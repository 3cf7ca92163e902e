//! Prometheus exposition on `[metrics] listen` (through the `prometheus` crate), and the
//! `status` document.

use std::sync::{Arc, LazyLock};

use hyper::{Method, Request, Response, StatusCode, body::Body as _, body::Incoming};
use prefilter_common::{ABI_VERSION, action, counters, reason};
use prometheus::{
    Encoder as _, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use tokio::{net::TcpListener, sync::watch};
use tracing::warn;

use super::{Daemon, TableFill};
use crate::{
    api,
    http::{self, Body, Server},
    policy::{Kind, store::Origin},
};

/// Control requests by endpoint (a fixed route name) and status. Process-wide: the control
/// server counts, the metrics server exports.
static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "prefilter_control_requests_total",
            "Control socket requests, by endpoint and HTTP status.",
        ),
        &["endpoint", "code"],
    )
    .expect("constant metric definition")
});

/// Counts a control request; `endpoint` must come from a fixed set (a route name), never
/// from what a client sent, or a client could grow the series without bound.
pub fn count_request(endpoint: &'static str, code: u16) {
    REQUESTS
        .with_label_values(&[endpoint, &code.to_string()])
        .inc();
}

/// Serves GET /metrics until stopped.
pub async fn serve(d: Daemon, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let server = Server::new(http::METRICS);
    let registry = Arc::new(registry(d));
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    let registry = registry.clone();
                    server.spawn(s, move |req| answer(registry.clone(), req));
                }
                Err(e) => {
                    warn!("metrics accept: {e}");
                    // Out of descriptors: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

async fn answer(registry: Arc<Registry>, req: Request<Incoming>) -> Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET {
        return http::response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET /metrics only\n");
    }
    if !req.body().is_end_stream() {
        return http::response(
            StatusCode::PAYLOAD_TOO_LARGE,
            TEXT,
            "a scrape has no body\n",
        );
    }
    if req.uri().path() != "/metrics" {
        return http::response(StatusCode::NOT_FOUND, TEXT, "see /metrics\n");
    }
    // Reading the maps waits on the daemon's lock, which an import may hold for a while.
    match tokio::task::spawn_blocking(move || render(&registry)).await {
        Ok(Ok(text)) => http::response(StatusCode::OK, CONTENT_TYPE, text),
        Ok(Err(e)) => http::response(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
        Err(e) => http::response(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
    }
}

/// Content type of the text exposition.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry a metrics server exports: the daemon's state read at scrape time, and the
/// request counter.
pub fn registry(d: Daemon) -> Registry {
    let r = Registry::new();
    // Both are registered once in a fresh registry with distinct names: cannot fail.
    let _ = r.register(Box::new(REQUESTS.clone()));
    // Only with a [proxy] section: a gateway without one exports what it did before.
    if d.lock().settings.proxy.is_some() {
        crate::proxy::register(&r);
    }
    if let Some(dn) = d.dnsbl() {
        dn.register(&r);
    }
    super::feeds::register(&r);
    super::fleet::register(&r);
    let _ = r.register(Box::new(DaemonCollector {
        d,
        descs: Families::new().descs(),
    }));
    r
}

/// The whole exposition.
pub fn render(r: &Registry) -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// What a scrape reads from the daemon: the published view and the kernel's counters,
/// never a lock an import holds.
#[derive(Default)]
struct Scrape {
    attached: Vec<(String, &'static str)>,
    /// The (reason, action) matrix and event slots; None if the map could not be read.
    counters: Option<Vec<u64>>,
    /// Hits by block list name, every block list included; None if unreadable.
    list_hits: Option<Vec<(String, u64)>>,
    tables: TableFill,
    store_entries: Vec<(Origin, Kind, usize)>,
    uptime_secs: u64,
}

/// The scrape's state read.
fn scrape(d: &Daemon) -> Scrape {
    let view = d.view();
    let hits = d.kernel().list_hits().ok();
    let list_hits = hits.map(|hits| {
        let hit = |id: u16| hits.get(id as usize).copied().unwrap_or(0);
        // Every block list appears, at 0 before its first hit, so rate() works from the start.
        let mut out: Vec<(String, u64)> = view
            .lists
            .iter()
            .filter(|l| l.kind == Kind::Block)
            .map(|l| (l.name.clone(), hit(l.id)))
            .collect();
        // Hits by a list since removed, or by the tables of a previous agent.
        let orphan: u64 = (1..hits.len())
            .filter(|&id| view.list_name(id as u16).is_none())
            .map(|id| hits[id])
            .sum();
        if orphan > 0 {
            out.push(("unknown".to_owned(), orphan));
        }
        out
    });
    Scrape {
        attached: view
            .attached
            .iter()
            .map(|a| (a.interface.clone(), a.mode))
            .collect(),
        counters: d.kernel().counters().ok(),
        list_hits,
        tables: view.tables.clone(),
        store_entries: view.store_entries.clone(),
        uptime_secs: view.started.elapsed().as_secs(),
    }
}

pub(super) fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Config => "config",
        Origin::Cli => "cli",
        Origin::Import => "import",
        Origin::Feed => "feed",
        Origin::Dynamic => "dynamic",
    }
}

/// The metric families read from the daemon at scrape time.
struct Families {
    build_info: IntGaugeVec,
    attached: IntGaugeVec,
    packets: IntCounterVec,
    events: IntCounterVec,
    list_hits: IntCounterVec,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    store_entries: IntGaugeVec,
    uptime: IntGauge,
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("constant metric definition")
}

fn counters_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("constant metric definition")
}

impl Families {
    fn new() -> Self {
        Self {
            build_info: gauges(
                "prefilter_build_info",
                "Version of the agent and map layout (ABI) of its XDP program.",
                &["version", "abi"],
            ),
            attached: gauges(
                "prefilter_xdp_attached",
                "Interfaces the XDP program is attached to, by attach mode.",
                &["interface", "mode"],
            ),
            packets: counters_vec(
                "prefilter_xdp_packets_total",
                "Packets seen by the XDP program, by verdict action and reason, summed over CPUs.",
                &["action", "reason"],
            ),
            events: counters_vec(
                "prefilter_xdp_events_total",
                "Ring-buffer events, by whether they reached the agent or were lost to a full ring.",
                &["result"],
            ),
            list_hits: counters_vec(
                "prefilter_xdp_list_hits_total",
                "SYNs judged by a block entry, by the list that set it.",
                &["list"],
            ),
            map_entries: gauges(
                "prefilter_map_entries",
                "Entries in the XDP tables.",
                &["map"],
            ),
            map_capacity: gauges(
                "prefilter_map_capacity",
                "Capacity of the XDP tables (v4 prefixes up to /24 have no limit).",
                &["map"],
            ),
            store_entries: gauges(
                "prefilter_store_entries",
                "Entries in the policy store, by origin and kind.",
                &["origin", "kind"],
            ),
            uptime: IntGauge::new(
                "prefilter_uptime_seconds",
                "Seconds since the agent started.",
            )
            .expect("constant metric definition"),
        }
    }

    fn collectors(&self) -> [&dyn Collector; 9] {
        [
            &self.build_info,
            &self.attached,
            &self.packets,
            &self.events,
            &self.list_hits,
            &self.map_entries,
            &self.map_capacity,
            &self.store_entries,
            &self.uptime,
        ]
    }

    fn descs(&self) -> Vec<Desc> {
        self.collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect()
    }

    /// Fresh families filled from `s`: series of a detached interface or a dropped list
    /// disappear instead of lingering.
    fn fill(s: &Scrape) -> Self {
        let f = Self::new();
        f.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), &ABI_VERSION.to_string()])
            .set(1);
        for (iface, mode) in &s.attached {
            f.attached.with_label_values(&[iface.as_str(), mode]).set(1);
        }
        if let Some(c) = &s.counters {
            for r in 0..reason::COUNT as u8 {
                for a in [
                    action::PASS,
                    action::DROP,
                    action::RESET,
                    action::TEMPFAIL,
                    action::REJECT,
                    action::OBSERVE,
                ] {
                    let v = c.get(counters::slot(r, a) as usize).copied().unwrap_or(0);
                    f.packets
                        .with_label_values(&[action::NAMES[a as usize], reason::NAMES[r as usize]])
                        .inc_by(v);
                }
            }
            for (result, slot) in [
                ("sent", counters::EVENTS_SENT),
                ("lost", counters::EVENTS_LOST),
            ] {
                let v = c.get(slot as usize).copied().unwrap_or(0);
                f.events.with_label_values(&[result]).inc_by(v);
            }
        }
        for (list, n) in s.list_hits.iter().flatten() {
            f.list_hits.with_label_values(&[list.as_str()]).inc_by(*n);
        }
        let t = &s.tables;
        f.map_entries
            .with_label_values(&["v4_prefixes"])
            .set((t.v4_block + t.v4_allow) as i64);
        f.map_entries
            .with_label_values(&["v4_long_groups"])
            .set(t.v4_groups_used.into());
        f.map_entries
            .with_label_values(&["v6_prefixes"])
            .set((t.v6_block + t.v6_allow) as i64);
        f.map_capacity
            .with_label_values(&["v4_long_groups"])
            .set(t.v4_groups_capacity.into());
        f.map_entries
            .with_label_values(&["v6_entries"])
            .set(t.v6_entries_used.into());
        f.map_capacity
            .with_label_values(&["v6_entries"])
            .set(t.v6_capacity.into());
        for (origin, kind, n) in &s.store_entries {
            f.store_entries
                .with_label_values(&[origin_name(*origin), kind.name()])
                .set(*n as i64);
        }
        f.uptime.set(s.uptime_secs as i64);
        f
    }
}

/// Reads the daemon's state, the per-CPU XDP counters included, at each scrape.
struct DaemonCollector {
    d: Daemon,
    descs: Vec<Desc>,
}

impl Collector for DaemonCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = Families::fill(&scrape(&self.d));
        f.collectors().iter().flat_map(|c| c.collect()).collect()
    }
}

/// The `status` document, from the published view and the kernel's counters.
pub fn status(d: &Daemon) -> api::Status {
    let view = d.view();
    let c = d.kernel().counters().ok();
    let mut counters = Vec::new();
    for r in 0..reason::COUNT as u8 {
        for a in 1..action::COUNT as u8 {
            let v = c
                .as_ref()
                .and_then(|c| c.get(counters::slot(r, a) as usize).copied())
                .unwrap_or(0);
            if v != 0 {
                counters.push(api::Counter {
                    reason: reason::NAMES[r as usize].to_owned(),
                    action: action::NAMES[a as usize].to_owned(),
                    packets: v,
                });
            }
        }
    }
    let lists = view
        .lists
        .iter()
        .map(|l| api::ListInfo {
            name: l.name.clone(),
            id: l.id,
            kind: l.kind,
            origin: l.origin,
            entries: l.entries,
        })
        .collect();
    let t = &view.tables;
    let event = |slot: u32| c.as_ref().and_then(|c| c.get(slot as usize).copied());
    api::Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        abi: ABI_VERSION,
        config: view.config_path.clone(),
        uptime_secs: view.started.elapsed().as_secs(),
        interfaces: view
            .attached
            .iter()
            .map(|a| api::Interface {
                interface: a.interface.clone(),
                mode: a.mode.to_owned(),
            })
            .collect(),
        ports: view.ports.clone(),
        maps: api::Maps {
            v4_block: t.v4_block,
            v4_allow: t.v4_allow,
            v4_long_groups: api::Usage {
                used: t.v4_groups_used,
                capacity: t.v4_groups_capacity,
            },
            v6_block: t.v6_block,
            v6_allow: t.v6_allow,
            v6_entries: api::Usage {
                used: t.v6_entries_used,
                capacity: t.v6_capacity,
            },
            adopted: t.adopted,
        },
        lists,
        counters,
        events: api::EventCounts {
            sent: event(counters::EVENTS_SENT),
            lost: event(counters::EVENTS_LOST),
        },
        dnsbl: d.dnsbl().map(|dn| api::DnsblStatus {
            inline: dn.config().inline,
            zones: dn.zones(),
            cache_entries: dn.cache_len(),
        }),
        verify: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &Scrape) -> String {
        let families: Vec<MetricFamily> = Families::fill(s)
            .collectors()
            .iter()
            .flat_map(|c| c.collect())
            .chain(REQUESTS.collect())
            .collect();
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn exposition_is_valid_and_lists_start_at_zero() {
        count_request("block_add", 200);
        let mut counters = vec![0u64; counters::EVENTS_LOST as usize + 1];
        counters[counters::slot(reason::BLOCK, action::DROP) as usize] = 7;
        let s = Scrape {
            attached: vec![("eth0".into(), "native")],
            counters: Some(counters),
            list_hits: Some(vec![("sbl".into(), 0), ("local \"x\"".into(), 7)]),
            tables: TableFill::default(),
            store_entries: vec![(Origin::Cli, Kind::Block, 3)],
            uptime_secs: 5,
        };
        let t = text(&s);
        for want in [
            r#"prefilter_xdp_list_hits_total{list="sbl"} 0"#,
            r#"prefilter_xdp_list_hits_total{list="local \"x\""} 7"#,
            r#"prefilter_xdp_packets_total{action="drop",reason="block"} 7"#,
            r#"prefilter_xdp_attached{interface="eth0",mode="native"} 1"#,
            r#"prefilter_store_entries{kind="block",origin="cli"} 3"#,
            r#"prefilter_control_requests_total{code="200",endpoint="block_add"}"#,
            "# TYPE prefilter_xdp_packets_total counter",
        ] {
            assert!(t.contains(want), "{want} missing:\n{t}");
        }
        // promtool is the reference where installed (Debian: prometheus).
        let Ok(mut child) = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        else {
            return;
        };
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{t}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
