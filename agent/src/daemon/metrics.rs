//! Prometheus text exposition on `[metrics] listen`, and the `status` document.

use std::fmt::Write as _;

use prefilter_common::{ABI_VERSION, action, counters, reason};
use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::TcpListener, sync::watch};
use tracing::warn;

use super::Daemon;
use crate::{store::kind_name, xdp::v4table::Kind};

/// Serves GET /metrics until stopped.
pub async fn serve(d: Daemon, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((mut s, _)) => {
                    let d = d.clone();
                    tokio::spawn(async move {
                        let (r, mut w) = s.split();
                        let (status, body) = match crate::http::read_request(r).await {
                            Ok(req) if req.path == "/metrics" => (200, render(&d)),
                            Ok(_) => (404, "see /metrics\n".to_owned()),
                            Err(e) => (400, format!("{e}\n")),
                        };
                        let ct = "text/plain; version=0.0.4; charset=utf-8";
                        let _ = crate::http::respond(&mut w, status, ct, body.as_bytes()).await;
                        let _ = w.shutdown().await;
                    });
                }
                Err(e) => warn!("metrics accept: {e}"),
            },
            _ = stop.changed() => return,
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label value escaping per the exposition format.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition.
pub fn render(d: &Daemon) -> String {
    let st = d.lock();
    let mut o = String::new();
    family(
        &mut o,
        "prefilter_build_info",
        "gauge",
        "Version of the agent and map layout (ABI) of its XDP program.",
    );
    let _ = writeln!(
        o,
        "prefilter_build_info{{version=\"{}\",abi=\"{ABI_VERSION}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut o,
        "prefilter_xdp_attached",
        "gauge",
        "Interfaces the XDP program is attached to, by attach mode.",
    );
    for a in &st.attached {
        let _ = writeln!(
            o,
            "prefilter_xdp_attached{{interface=\"{}\",mode=\"{}\"}} 1",
            esc(&a.interface),
            a.mode
        );
    }
    if let Ok(c) = st.filter.counters() {
        family(
            &mut o,
            "prefilter_xdp_packets_total",
            "counter",
            "Packets seen by the XDP program, by verdict action and reason, summed over CPUs.",
        );
        for r in 0..reason::COUNT as u8 {
            for a in [
                action::PASS,
                action::DROP,
                action::RESET,
                action::TEMPFAIL,
                action::REJECT,
                action::OBSERVE,
            ] {
                let v = c[counters::slot(r, a) as usize];
                let _ = writeln!(
                    o,
                    "prefilter_xdp_packets_total{{action=\"{}\",reason=\"{}\"}} {v}",
                    action::NAMES[a as usize],
                    reason::NAMES[r as usize]
                );
            }
        }
        family(
            &mut o,
            "prefilter_xdp_events_total",
            "counter",
            "Ring-buffer events, by whether they reached the agent or were lost to a full ring.",
        );
        let _ = writeln!(
            o,
            "prefilter_xdp_events_total{{result=\"sent\"}} {}",
            c[counters::EVENTS_SENT as usize]
        );
        let _ = writeln!(
            o,
            "prefilter_xdp_events_total{{result=\"lost\"}} {}",
            c[counters::EVENTS_LOST as usize]
        );
    }
    if let Ok(hits) = st.filter.list_hits() {
        family(
            &mut o,
            "prefilter_xdp_list_hits_total",
            "counter",
            "SYNs judged by a block entry, by the list that set it.",
        );
        for (id, n) in hits {
            let name = st.store.list_name(id).unwrap_or("unknown");
            let _ = writeln!(
                o,
                "prefilter_xdp_list_hits_total{{list=\"{}\"}} {n}",
                esc(name)
            );
        }
    }
    let (g_used, g_cap) = st.filter.v4.groups_used();
    family(
        &mut o,
        "prefilter_map_entries",
        "gauge",
        "Entries in the XDP tables.",
    );
    let _ = writeln!(
        o,
        "prefilter_map_entries{{map=\"v4_prefixes\"}} {}",
        st.filter.v4.len(Kind::Block) + st.filter.v4.len(Kind::Allow)
    );
    let _ = writeln!(
        o,
        "prefilter_map_entries{{map=\"v4_long_groups\"}} {g_used}"
    );
    let _ = writeln!(
        o,
        "prefilter_map_entries{{map=\"v6_prefixes\"}} {}",
        st.filter.v6.len(Kind::Block) + st.filter.v6.len(Kind::Allow)
    );
    family(
        &mut o,
        "prefilter_map_capacity",
        "gauge",
        "Capacity of the XDP tables (v4 prefixes up to /24 have no limit).",
    );
    let _ = writeln!(
        o,
        "prefilter_map_capacity{{map=\"v4_long_groups\"}} {g_cap}"
    );
    let _ = writeln!(
        o,
        "prefilter_map_capacity{{map=\"v6_prefixes\"}} {}",
        st.settings.limits.1
    );
    family(
        &mut o,
        "prefilter_store_entries",
        "gauge",
        "Entries in the policy store, by origin and kind.",
    );
    for (origin, kind, n) in st.store.entries_by_origin() {
        let origin = serde_json::to_value(origin)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "prefilter_store_entries{{origin=\"{origin}\",kind=\"{}\"}} {n}",
            kind_name(kind)
        );
    }
    family(
        &mut o,
        "prefilter_control_requests_total",
        "counter",
        "Control socket requests, by endpoint and HTTP status.",
    );
    let mut reqs: Vec<_> = st.requests.iter().collect();
    reqs.sort();
    for ((ep, code), n) in reqs {
        let _ = writeln!(
            o,
            "prefilter_control_requests_total{{endpoint=\"{}\",code=\"{code}\"}} {n}",
            esc(ep)
        );
    }
    family(
        &mut o,
        "prefilter_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
    );
    let _ = writeln!(
        o,
        "prefilter_uptime_seconds {}",
        st.started.elapsed().as_secs()
    );
    o
}

/// The `status` document.
pub fn status_json(d: &Daemon) -> Value {
    let st = d.lock();
    let c = st.filter.counters().unwrap_or_default();
    let mut counters = Vec::new();
    for r in 0..reason::COUNT as u8 {
        for a in 1..action::COUNT as u8 {
            let v = c.get(counters::slot(r, a) as usize).copied().unwrap_or(0);
            if v != 0 {
                counters.push(json!({"reason": reason::NAMES[r as usize], "action": action::NAMES[a as usize], "packets": v}));
            }
        }
    }
    let lists: Vec<Value> = st
        .store
        .lists()
        .iter()
        .map(|(n, l)| json!({"name": n, "id": l.id, "kind": kind_name(l.kind), "origin": l.origin, "entries": l.entries.len()}))
        .collect();
    let (g_used, g_cap) = st.filter.v4.groups_used();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "abi": ABI_VERSION,
        "config": st.config_path,
        "uptime_secs": st.started.elapsed().as_secs(),
        "interfaces": st.attached,
        "ports": st.settings.ports,
        "maps": {
            "v4_block": st.filter.v4.len(Kind::Block),
            "v4_allow": st.filter.v4.len(Kind::Allow),
            "v4_long_groups": {"used": g_used, "capacity": g_cap},
            "v6_block": st.filter.v6.len(Kind::Block),
            "v6_allow": st.filter.v6.len(Kind::Allow),
            "v6_capacity": st.settings.limits.1,
            "adopted": st.filter.adopted,
        },
        "lists": lists,
        "counters": counters,
        "events": {"sent": c.get(counters::EVENTS_SENT as usize), "lost": c.get(counters::EVENTS_LOST as usize)},
    })
}
