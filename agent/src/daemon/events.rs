//! Reads the XDP ring buffer and fans events out to `prefilter watch` clients.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::{MapData, RingBuf};
use prefilter_common::{action, events, events::Event, reason};
use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    sync::{broadcast, watch},
};
use tracing::{debug, warn};

use super::{Daemon, learned::boottime_ns};

/// An event as `watch` prints it (one JSON object per line).
#[derive(Clone, Debug, Serialize)]
pub struct EventJson {
    /// Unix time in seconds with fraction.
    pub time: f64,
    pub kind: &'static str,
    pub source: String,
    pub action: &'static str,
    pub reason: &'static str,
    pub list: Option<String>,
    pub port: u16,
}

fn decode(d: &Daemon, raw: &[u8]) -> Option<EventJson> {
    if raw.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: length checked; Event is plain old data.
    let e: Event = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let age = boottime_ns().saturating_sub(e.ts_ns) as f64 / 1e9;
    let ip = std::net::Ipv6Addr::from(e.addr);
    let source = match ip.to_ipv4_mapped() {
        Some(v4) if e.family == 4 => v4.to_string(),
        _ => ip.to_string(),
    };
    let list = if e.list_id != 0 && e.reason == reason::BLOCK {
        d.view().list_name(e.list_id).map(str::to_owned)
    } else {
        None
    };
    Some(EventJson {
        time: wall - age,
        kind: if e.kind == events::KIND_FIRST_SEEN {
            "first_seen"
        } else {
            "verdict"
        },
        source,
        action: action::NAMES.get(e.action as usize).copied().unwrap_or("?"),
        reason: reason::NAMES.get(e.reason as usize).copied().unwrap_or("?"),
        list,
        port: e.dport,
    })
}

/// How often the ring is read: the program submits without waking the reader (a wake-up
/// per event would cost the data path more than the verdict), and forces one only when the
/// ring is half full.
const POLL: Duration = Duration::from_millis(100);

fn publish(d: &Daemon, ring: &mut RingBuf<MapData>) {
    let mut batch = Vec::new();
    while let Some(item) = ring.next() {
        batch.push(item.to_vec());
    }
    for raw in batch {
        if let Some(ev) = decode(d, &raw) {
            debug!(source = %ev.source, action = ev.action, reason = ev.reason, kind = ev.kind, "xdp event");
            let _ = d.events.send(ev);
        }
    }
}

/// Drains the ring buffer on a short timer, and at once when the kernel signals a filling
/// ring.
pub async fn read(d: Daemon, ring: RingBuf<MapData>, mut stop: watch::Receiver<bool>) {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns the ring.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("event ring buffer: {e}; watch will show nothing");
            return;
        }
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            g = fd.readable_mut() => {
                let Ok(mut g) = g else { return };
                g.clear_ready();
                publish(&d, g.get_inner_mut());
            }
            _ = tick.tick() => publish(&d, fd.get_mut()),
            _ = stop.changed() => return,
        }
    }
}

/// Forwards the XDP program's aya-log records to the daemon's log as they arrive.
pub async fn forward_logs(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    mut stop: watch::Receiver<bool>,
) {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd owns it.
    let mut fd = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("XDP program log reader: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            g = fd.readable_mut() => {
                let Ok(mut g) = g else { return };
                g.get_inner_mut().flush();
                g.clear_ready();
            }
            _ = stop.changed() => return,
        }
    }
}

/// `GET /v1/watch`: events as JSON lines until the client goes away. A task forwards them
/// into the response body; a client that stops reading loses events (`{"lagged":n}`), never
/// slows the reader of the ring.
pub fn stream(d: Daemon) -> hyper::Response<crate::http::Body> {
    let mut rx = d.events.subscribe();
    drop(d);
    let (tx, body) = crate::http::Body::channel(64);
    tokio::spawn(async move {
        loop {
            let line = match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                Ok(Ok(ev)) => serde_json::to_string(&ev).unwrap_or_default(),
                // A slow watcher skips events rather than slowing anyone down.
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => format!("{{\"lagged\":{n}}}"),
                Ok(Err(broadcast::error::RecvError::Closed)) => return,
                // Keep-alive, so a vanished client is noticed.
                Err(_) => String::new(),
            };
            if tx.send(bytes::Bytes::from(line + "\n")).await.is_err() {
                return;
            }
        }
    });
    crate::http::streamed("application/x-ndjson", body)
}
