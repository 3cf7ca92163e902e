//! The control socket: HTTP with JSON over a Unix socket, mode 0660, root and the
//! configured group. Every CLI subcommand but `run` is a client of it.

use std::{
    ffi::CString,
    net::IpAddr,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::PathBuf,
};

use prefilter_common::action;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    io::AsyncWriteExt,
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tracing::{debug, error, info, warn};

use super::{CLI_ALLOW_LIST, CLI_LIST, Daemon, OpError};
use crate::{
    http::{self, Request},
    import::{self, Format},
    prefix::Prefix,
    store::{self, Origin},
    xdp::v4table::Kind,
};

/// Binds the socket: a stale socket file from a crashed daemon is removed first.
pub async fn serve(
    d: Daemon,
    path: PathBuf,
    group: Option<String>,
    mut stop: watch::Receiver<bool>,
) {
    if let Some(dir) = path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        error!("control socket directory {}: {e}", dir.display());
        return;
    }
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            error!("control socket {}: {e}", path.display());
            return;
        }
    };
    secure(&path, group.as_deref());
    info!(path = %path.display(), "control socket listening");
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    let d = d.clone();
                    tokio::spawn(async move { handle(d, s).await });
                }
                Err(e) => warn!("control accept: {e}"),
            },
            _ = stop.changed() => return,
        }
    }
}

/// chmod 0660 and chgrp to `group`; without the group only root can use the socket.
fn secure(path: &std::path::Path, group: Option<&str>) {
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    let Some(group) = group else {
        return;
    };
    let Ok(g) = CString::new(group) else { return };
    // SAFETY: getgrnam with a valid C string; the result is read at once.
    let gr = unsafe { libc::getgrnam(g.as_ptr()) };
    if gr.is_null() {
        warn!(
            group,
            "control socket group does not exist: only root can use the CLI"
        );
        return;
    }
    // SAFETY: gr is non-null, from getgrnam.
    let gid = unsafe { (*gr).gr_gid };
    let Ok(p) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: valid C string path; -1 leaves the owner unchanged.
    if unsafe { libc::chown(p.as_ptr(), u32::MAX, gid) } != 0 {
        warn!(
            "chgrp {group} {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

async fn handle(d: Daemon, mut s: UnixStream) {
    let (r, mut w) = s.split();
    let req = match http::read_request(r).await {
        Ok(req) => req,
        Err(e) => {
            let body = json!({ "error": e.to_string() }).to_string();
            let _ = http::respond(&mut w, 400, "application/json", body.as_bytes()).await;
            return;
        }
    };
    debug!(method = %req.method, path = %req.path, "control request");
    if req.method == "GET" && req.path == "/v1/watch" {
        d.count_request("/v1/watch", 200);
        super::events::stream(d, &mut w).await;
        return;
    }
    let endpoint = req.path.clone();
    let d2 = d.clone();
    // Imports of a million lines take a second or two: keep them off the async workers.
    let result = tokio::task::spawn_blocking(move || route(&d2, req))
        .await
        .unwrap_or_else(|e| Err(OpError::internal(format!("request handler failed: {e}"))));
    let (status, body) = match result {
        Ok(v) => (200, v),
        Err(e) => (e.status, json!({ "error": e.message })),
    };
    d.count_request(&endpoint, status);
    let body = body.to_string();
    let _ = http::respond(&mut w, status, "application/json", body.as_bytes()).await;
    let _ = w.shutdown().await;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    prefixes: Vec<String>,
    #[serde(default)]
    list: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelBody {
    prefixes: Vec<String>,
    #[serde(default)]
    list: Option<String>,
}

fn parse_prefixes(v: &[String]) -> Result<Vec<Prefix>, OpError> {
    let mut bad = Vec::new();
    let mut out = Vec::with_capacity(v.len());
    for s in v {
        match s.parse::<Prefix>() {
            Ok(p) => out.push(p),
            Err(e) => bad.push(e.to_string()),
        }
    }
    if !bad.is_empty() {
        return Err(OpError::bad(format!("nothing changed: {}", bad.join("; "))));
    }
    Ok(out)
}

fn block_action(name: Option<&str>) -> Result<u8, OpError> {
    let name = name.unwrap_or("drop");
    match action::from_name(name) {
        Some(a) if a != action::PASS && a != action::ALLOW => Ok(a),
        _ => Err(OpError::bad(format!(
            "unknown action {name:?}: use drop, reset, tempfail, reject or observe"
        ))),
    }
}

fn kind_of(path: &str) -> Option<(Kind, &str)> {
    if let Some(rest) = path.strip_prefix("/v1/block") {
        Some((Kind::Block, rest))
    } else {
        path.strip_prefix("/v1/allow")
            .map(|rest| (Kind::Allow, rest))
    }
}

fn json_body<T: for<'a> Deserialize<'a>>(req: &Request) -> Result<T, OpError> {
    serde_json::from_slice(&req.body).map_err(|e| OpError::bad(format!("bad request body: {e}")))
}

fn route(d: &Daemon, req: Request) -> Result<Value, OpError> {
    let m = req.method.as_str();
    match (m, req.path.as_str()) {
        ("GET", "/v1/status") => Ok(super::metrics::status_json(d)),
        ("GET", "/v1/verify") => Ok(d.verify()),
        ("GET", "/v1/check") => {
            let ip = req.query.get("ip").map(String::as_str).unwrap_or("");
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| OpError::bad(format!("not an IP address: {ip:?}")))?;
            Ok(d.check(ip))
        }
        ("POST", "/v1/reload") => {
            let n = d.reload()?;
            Ok(json!({ "reloaded": true, "table_changes": n }))
        }
        ("POST", "/v1/detach") => {
            let ifs = d.detach(req.query.get("iface").map(String::as_str))?;
            Ok(json!({ "detached": ifs }))
        }
        ("POST", "/v1/block/import") => import(d, &req),
        (_, path) => {
            let Some((kind, rest)) = kind_of(path) else {
                return Err(OpError {
                    status: 404,
                    message: format!("no such endpoint {path}"),
                });
            };
            match (m, rest) {
                ("GET", "") => Ok(list(d, kind)),
                ("POST", "") => {
                    let b: AddBody = json_body(&req)?;
                    let prefixes = parse_prefixes(&b.prefixes)?;
                    let act = match kind {
                        Kind::Block => block_action(b.action.as_deref())?,
                        Kind::Allow => action::ALLOW,
                    };
                    let default = match kind {
                        Kind::Block => CLI_LIST,
                        Kind::Allow => CLI_ALLOW_LIST,
                    };
                    let list = b.list.as_deref().unwrap_or(default);
                    let n = prefixes.len();
                    let req = super::AddRequest {
                        kind,
                        list: list.to_owned(),
                        prefixes,
                        action: act,
                        ttl: b.ttl_secs,
                        reason: b.reason,
                    };
                    let changed = d.add(req, "cli")?;
                    Ok(json!({ "added": n, "table_changes": changed, "list": list }))
                }
                ("POST", "/delete") => {
                    let b: DelBody = json_body(&req)?;
                    let prefixes = parse_prefixes(&b.prefixes)?;
                    let removed = d.delete(kind, b.list.as_deref(), prefixes, "cli")?;
                    let total: usize = removed.iter().map(|(_, n)| n).sum();
                    Ok(json!({
                        "removed": total,
                        "lists": removed.iter().map(|(l, n)| json!({"list": l, "removed": n})).collect::<Vec<_>>(),
                    }))
                }
                _ => Err(OpError {
                    status: 405,
                    message: format!("{m} {path} is not supported"),
                }),
            }
        }
    }
}

fn list(d: &Daemon, kind: Kind) -> Value {
    let st = d.lock();
    let mut out = Vec::new();
    for (name, l) in st.store.lists().iter().filter(|(_, l)| l.kind == kind) {
        let mut entries: Vec<_> = l.entries.iter().collect();
        entries.sort_by_key(|(p, _)| **p);
        for (p, e) in entries {
            out.push(json!({
                "prefix": p.to_string(),
                "list": name,
                "origin": l.origin,
                "action": if kind == Kind::Allow { "allow" } else { action::NAMES[e.action as usize] },
                "reason": e.reason.as_deref(),
                "created": e.created,
                "expires": e.expires,
            }));
        }
    }
    Value::Array(out)
}

fn import(d: &Daemon, req: &Request) -> Result<Value, OpError> {
    let q = &req.query;
    let list = q.get("list").map(String::as_str).unwrap_or("import");
    if !store::valid_name(list) {
        return Err(OpError::bad(format!(
            "invalid list name {list:?}: use 1-64 of a-z 0-9 _ . -"
        )));
    }
    if list == CLI_LIST || list == CLI_ALLOW_LIST {
        return Err(OpError::bad(
            "the cli list takes block add; import into a named list",
        ));
    }
    let act = block_action(q.get("action").map(String::as_str))?;
    let text = std::str::from_utf8(&req.body)
        .map_err(|e| OpError::bad(format!("the list is not UTF-8 text: {e}")))?;
    let format = match q.get("format").map(String::as_str) {
        None | Some("") | Some("auto") => Format::detect(text),
        Some(f) => f.parse::<Format>().map_err(|_| {
            OpError::bad(format!(
                "unknown format {f:?}: use plain, spamhaus-drop or rbldnsd"
            ))
        })?,
    };
    let strict = q.get("strict").is_some_and(|v| v == "1" || v == "true");
    let replace = q.get("replace").is_some_and(|v| v == "1" || v == "true");
    let parsed = import::parse(text, format);
    let errors: Vec<Value> = parsed
        .errors
        .iter()
        .map(|e| json!({ "line": e.line, "text": e.text, "message": e.message }))
        .collect();
    if strict && !errors.is_empty() {
        return Err(OpError {
            status: 422,
            message: format!(
                "--strict: {} bad line(s), nothing applied; first: line {}: {}",
                errors.len(),
                parsed.errors[0].line,
                parsed.errors[0].message
            ),
        });
    }
    {
        let st = d.lock();
        if let Some(l) = st.store.lists().get(list)
            && l.origin == Origin::Config
        {
            return Err(OpError::conflict(format!(
                "list {list} comes from the config file; import into another name"
            )));
        }
    }
    let n = parsed.entries.len();
    let entries = parsed
        .entries
        .into_iter()
        .map(|e| (e.prefix, e.reason))
        .collect();
    let changed = d.import(list, act, entries, replace)?;
    Ok(json!({
        "list": list,
        "format": format.name(),
        "applied": n,
        "table_changes": changed,
        "replaced": replace,
        "errors": errors,
    }))
}
