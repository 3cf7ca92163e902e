//! The control socket: HTTP with JSON over a Unix socket, mode 0660, root and the
//! configured group. Every CLI subcommand but `run` is a client of it; the bodies are the
//! types of [`crate::api`].

use std::{
    collections::HashMap,
    ffi::CString,
    net::IpAddr,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::PathBuf,
};

use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use prefilter_common::action;
use serde::{Serialize, de::DeserializeOwned};
use tokio::{net::UnixListener, sync::watch};
use tracing::{debug, error, info, warn};

use super::{CLI_ALLOW_LIST, CLI_LIST, Daemon, OpError};
use crate::{
    api,
    http::{self, Body, Server},
    policy::Kind,
    policy::store::{self, Entry, Origin},
    policy::{Action, prefix::Prefix},
    sources::formats::{self as import, Format},
};

const JSON: &str = "application/json";

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
    serve_on(d, listener, Server::new(http::CONTROL), &mut stop).await;
}

/// The accept loop, apart from binding so tests can drive it on any socket.
async fn serve_on(
    d: Daemon,
    listener: UnixListener,
    server: Server,
    stop: &mut watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    let d = d.clone();
                    let limits = *server.limits();
                    server.spawn(s, move |req| handle(d.clone(), limits, req));
                }
                Err(e) => {
                    warn!("control accept: {e}");
                    // Out of descriptors: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
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

/// The endpoints, as metric labels: a fixed set whatever path a client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Status,
    Verify,
    Check,
    Reload,
    Detach,
    Watch,
    BlockList,
    BlockAdd,
    BlockDelete,
    BlockImport,
    AllowList,
    AllowAdd,
    AllowDelete,
    FeedsList,
    FeedsSync,
    /// A path that exists, with a method it does not take.
    WrongMethod,
    /// No such path.
    Other,
}

impl Route {
    pub fn of(method: &Method, path: &str) -> Self {
        let get = method == Method::GET;
        let post = method == Method::POST;
        let r = match path {
            "/v1/status" => get.then_some(Self::Status),
            "/v1/verify" => get.then_some(Self::Verify),
            "/v1/check" => get.then_some(Self::Check),
            "/v1/watch" => get.then_some(Self::Watch),
            "/v1/reload" => post.then_some(Self::Reload),
            "/v1/detach" => post.then_some(Self::Detach),
            "/v1/block" if get => Some(Self::BlockList),
            "/v1/block" => post.then_some(Self::BlockAdd),
            "/v1/block/delete" => post.then_some(Self::BlockDelete),
            "/v1/block/import" => post.then_some(Self::BlockImport),
            "/v1/allow" if get => Some(Self::AllowList),
            "/v1/allow" => post.then_some(Self::AllowAdd),
            "/v1/allow/delete" => post.then_some(Self::AllowDelete),
            "/v1/feeds" => get.then_some(Self::FeedsList),
            "/v1/feeds/sync" => post.then_some(Self::FeedsSync),
            _ => return Self::Other,
        };
        r.unwrap_or(Self::WrongMethod)
    }

    /// The `endpoint` label of `prefilter_control_requests_total`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Verify => "verify",
            Self::Check => "check",
            Self::Reload => "reload",
            Self::Detach => "detach",
            Self::Watch => "watch",
            Self::BlockList => "block_list",
            Self::BlockAdd => "block_add",
            Self::BlockDelete => "block_delete",
            Self::BlockImport => "block_import",
            Self::AllowList => "allow_list",
            Self::AllowAdd => "allow_add",
            Self::AllowDelete => "allow_delete",
            Self::FeedsList => "feeds_list",
            Self::FeedsSync => "feeds_sync",
            Self::WrongMethod => "wrong_method",
            Self::Other => "other",
        }
    }
}

fn error_response(e: OpError) -> Response<Body> {
    error_body(
        e.status,
        api::ErrorBody {
            error: e.message,
            errors: Vec::new(),
        },
    )
}

fn error_body(status: u16, body: api::ErrorBody) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    http::response(status, JSON, serde_json::to_vec(&body).unwrap_or_default())
}

/// Handles one request and counts it under its route.
async fn handle(d: Daemon, limits: http::Limits, req: Request<Incoming>) -> Response<Body> {
    let route = Route::of(req.method(), req.uri().path());
    debug!(method = %req.method(), path = req.uri().path(), route = route.name(), "control request");
    let resp = dispatch(d, limits, route, req).await;
    super::metrics::count_request(route.name(), resp.status().as_u16());
    resp
}

/// What a blocking handler answers: a JSON document, or a refusal (with bad lines).
type Answer = Result<Vec<u8>, Refusal>;

#[derive(Debug)]
struct Refusal {
    status: u16,
    body: api::ErrorBody,
}

impl From<OpError> for Refusal {
    fn from(e: OpError) -> Self {
        Self {
            status: e.status,
            body: api::ErrorBody {
                error: e.message,
                errors: Vec::new(),
            },
        }
    }
}

fn ok<T: Serialize>(v: &T) -> Answer {
    serde_json::to_vec(v).map_err(|e| OpError::internal(format!("encoding the answer: {e}")).into())
}

async fn dispatch(
    d: Daemon,
    limits: http::Limits,
    route: Route,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    match route {
        Route::Other => {
            return error_response(OpError {
                status: 404,
                message: format!("no such endpoint {path}"),
            });
        }
        Route::WrongMethod => {
            return error_response(OpError {
                status: 405,
                message: format!("{} {path} is not supported", parts.method),
            });
        }
        Route::Watch => return super::events::stream(d),
        Route::BlockList => return list(d, Kind::Block),
        Route::AllowList => return list(d, Kind::Allow),
        _ => {}
    }
    let query = http::parse_query(parts.uri.query().unwrap_or(""));
    if route == Route::FeedsSync {
        // A fetch is network I/O: awaited here, its apply step runs on a blocking thread.
        let name = query.get("name").cloned().unwrap_or_default();
        let force = query.get("force").is_some_and(|v| v == "true" || v == "1");
        return match super::feeds::sync(&d, &name, force).await {
            Ok(r) => http::response(
                StatusCode::OK,
                JSON,
                serde_json::to_vec(&r).unwrap_or_default(),
            ),
            Err(e) => error_response(e),
        };
    }
    let body = if parts.method == Method::POST {
        match http::read_body(body, &limits).await {
            Ok(b) => b,
            Err(e) => {
                return error_response(OpError {
                    status: e.status().as_u16(),
                    message: e.to_string(),
                });
            }
        }
    } else {
        Bytes::new()
    };
    // Imports of a million lines take a second or two: keep them off the async workers.
    let answer = tokio::task::spawn_blocking(move || route_blocking(&d, route, &query, &body))
        .await
        .unwrap_or_else(|e| Err(OpError::internal(format!("request handler failed: {e}")).into()));
    match answer {
        Ok(b) => http::response(StatusCode::OK, JSON, b),
        Err(r) => error_body(r.status, r.body),
    }
}

fn route_blocking(d: &Daemon, route: Route, q: &HashMap<String, String>, body: &[u8]) -> Answer {
    match route {
        Route::Status => ok(&super::metrics::status(d)),
        Route::Verify => ok(&d.verify()),
        Route::Check => {
            let ip = q.get("ip").map(String::as_str).unwrap_or("");
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| OpError::bad(format!("not an IP address: {ip:?}")))?;
            ok(&d.check(ip))
        }
        Route::Reload => ok(&api::ReloadResult {
            reloaded: true,
            table_changes: d.reload().inspect_err(|e| {
                // Logged as a SIGHUP's refusal is: the admin may read the log, not the CLI.
                tracing::error!(error = %e.message, "reload: config refused");
            })?,
        }),
        Route::Detach => ok(&api::DetachResult {
            detached: d.detach(q.get("iface").map(String::as_str))?,
        }),
        Route::BlockAdd => add(d, Kind::Block, body),
        Route::AllowAdd => add(d, Kind::Allow, body),
        Route::BlockDelete => delete(d, Kind::Block, body),
        Route::AllowDelete => delete(d, Kind::Allow, body),
        Route::BlockImport => import(d, &api::ImportParams::from_query(q), body),
        Route::FeedsList => ok(&super::feeds::list(d)),
        Route::Watch
        | Route::BlockList
        | Route::AllowList
        | Route::FeedsSync
        | Route::WrongMethod
        | Route::Other => Err(OpError::internal("not a blocking route").into()),
    }
}

fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, OpError> {
    serde_json::from_slice(body).map_err(|e| OpError::bad(format!("bad request body: {e}")))
}

/// Every prefix parsed strictly (no host bits), or all the bad ones named.
fn parse_prefixes(v: &[String]) -> Result<Vec<Prefix>, OpError> {
    let mut bad = Vec::new();
    let mut out = Vec::with_capacity(v.len());
    for s in v {
        match Prefix::parse_strict(s.trim()) {
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
    let a = name.map_or(Ok(Action::Drop), str::parse::<Action>);
    a.map(Action::code).map_err(|e| OpError::bad(e.to_string()))
}

/// A list name from a client: refused as a bad request before the store sees it.
fn list_name(name: &str) -> Result<&str, OpError> {
    if store::valid_name(name) {
        Ok(name)
    } else {
        Err(OpError::bad(format!(
            "invalid list name {name:?}: use 1-64 of a-z 0-9 _ . -"
        )))
    }
}

fn add(d: &Daemon, kind: Kind, body: &[u8]) -> Answer {
    let b: api::AddBody = json_body(body)?;
    let prefixes = parse_prefixes(&b.prefixes)?;
    let act = match kind {
        Kind::Block => block_action(b.action.as_deref())?,
        Kind::Allow => action::ALLOW,
    };
    let default = match kind {
        Kind::Block => CLI_LIST,
        Kind::Allow => CLI_ALLOW_LIST,
    };
    let list = list_name(b.list.as_deref().unwrap_or(default))?.to_owned();
    let added = prefixes.len();
    // Said as it is: a single address with a TTL is kept in cli-ttl (the dynamic map).
    let shown = if super::goes_dynamic(kind, &list, b.ttl_secs, &prefixes) {
        super::CLI_TTL_LIST.to_owned()
    } else {
        list.clone()
    };
    let req = super::AddRequest {
        kind,
        list: list.clone(),
        prefixes,
        action: act,
        ttl: b.ttl_secs,
        reason: b.reason,
        force: b.force,
    };
    let table_changes = d.add(req, "cli")?;
    ok(&api::AddResult {
        added,
        table_changes,
        list: shown,
    })
}

fn delete(d: &Daemon, kind: Kind, body: &[u8]) -> Answer {
    let b: api::DeleteBody = json_body(body)?;
    let prefixes = parse_prefixes(&b.prefixes)?;
    let list = b.list.as_deref().map(list_name).transpose()?;
    let (removed, lifted) = d.delete(kind, list, prefixes.clone(), "cli")?;
    let still_blocked = if kind == Kind::Block {
        still_blocked(d, &prefixes)
    } else {
        Vec::new()
    };
    ok(&api::DeleteResult {
        still_blocked,
        lifted,
        removed: removed.iter().map(|(_, n)| n).sum(),
        lists: removed
            .into_iter()
            .map(|(list, removed)| api::ListRemoved { list, removed })
            .collect(),
    })
}

/// The prefixes of a `block del` that another list still blocks, and what lifts each
/// there: deleting from the CLI's list does not unblock a sender a feed, the config or an
/// import lists (a fleet's own report comes back as a CrowdSec decision).
fn still_blocked(d: &Daemon, prefixes: &[Prefix]) -> Vec<api::StillBlocked> {
    let now = crate::policy::store::now();
    // A few of the entries inside a wider prefix are enough to say why it still blocks.
    const INSIDE_SHOWN: usize = 3;
    // A single address as `check` judges it (a feed's /24 covers it); a wider prefix by
    // the entry that covers it, or else (one walk for all such) by entries inside it.
    let mut uncovered = Vec::new();
    let found: Vec<Option<(Prefix, String)>> = prefixes
        .iter()
        .map(|p| {
            if p.is_host_or_v6_64() {
                let c = d.check(p.first());
                if c.verdict == "pass" || c.verdict == "observe" {
                    return None;
                }
                return c.list.map(|l| (*p, l));
            }
            let store = d.store();
            let Some(v) = store.effective(p, Kind::Block, now) else {
                uncovered.push(*p);
                return None;
            };
            let name = store.list_name(prefilter_common::verdict::list_id(v))?;
            Some((*p, name.to_owned()))
        })
        .collect();
    let inside = d.store().blocked_inside(&uncovered, now, INSIDE_SHOWN);
    prefixes
        .iter()
        .zip(found)
        .flat_map(|(p, f)| match f {
            Some(f) => vec![f],
            None => inside.get(p).cloned().unwrap_or_default(),
        })
        .filter_map(|(p, name)| {
            let store = d.store();
            let (name, l) = store.lists().get_key_value(&name)?;
            let origin = super::metrics::origin_name(l.origin);
            let hint = match l.origin {
                Origin::Feed => match d.feeds.feed(name).map(|f| f.format) {
                    Some(crate::config::FeedFormat::CrowdSec) => format!(
                        "the LAPI holds a decision for it: `cscli decisions delete --ip {}` \
                         lifts it on every gateway",
                        p.first()
                    ),
                    _ => "the feed lists it: it goes when the feed's source drops it".to_owned(),
                },
                Origin::Config => {
                    "the config file lists it: edit it, then `prefilter reload`".to_owned()
                }
                _ => format!("`prefilter block del {p} --list {name}`"),
            };
            Some(api::StillBlocked {
                prefix: p.to_string(),
                list: name.clone(),
                origin: origin.to_owned(),
                hint,
            })
        })
        .collect()
}

/// Origin of list `name`, if it exists.
fn list_origin(d: &Daemon, name: &str) -> Option<Origin> {
    d.view()
        .lists
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.origin)
}

fn import(d: &Daemon, p: &api::ImportParams, body: &[u8]) -> Answer {
    let list = list_name(p.list.as_deref().unwrap_or("import"))?;
    if list == CLI_LIST || list == CLI_ALLOW_LIST {
        return Err(OpError::bad("the cli list takes block add; import into a named list").into());
    }
    let act = block_action(p.action.as_deref())?;
    // Lossy: a stray Latin-1 byte in a comment must not refuse the whole list; a bad byte
    // in an address fails that line, named with its number.
    let text = String::from_utf8_lossy(body);
    let text = &*text;
    if p.patch {
        return patch(d, p, list, act, text);
    }
    let format = format_param(p)?.unwrap_or_else(|| Format::detect(text));
    let mut parsed = import::parse(text, format);
    let errors = bad_lines(p, &parsed.errors)?;
    importable(d, list)?;
    let applied = parsed.entries.len();
    let entries = std::mem::take(&mut parsed.entries);
    let table_changes = d.import(list, act, entries, p.replace, p.force)?;
    ok(&api::ImportResult {
        list: list.to_owned(),
        format: format.name().to_owned(),
        applied,
        table_changes,
        replaced: p.replace,
        patched: false,
        removed: 0,
        errors,
        skipped: parsed.skipped.iter().map(api::BadLine::from).collect(),
    })
}

/// The `format` of an import; None: to be detected.
fn format_param(p: &api::ImportParams) -> Result<Option<Format>, OpError> {
    match p.format.as_deref() {
        None | Some("auto") => Ok(None),
        Some(f) => f.parse::<Format>().map(Some).map_err(|_| {
            OpError::bad(format!(
                "unknown format {f:?}: use plain, spamhaus-drop or rbldnsd"
            ))
        }),
    }
}

/// The bad lines of an import, to report; with `strict`, any of them refuses it whole.
fn bad_lines(
    p: &api::ImportParams,
    bad: &[import::LineError],
) -> Result<Vec<api::BadLine>, Refusal> {
    let errors: Vec<api::BadLine> = bad.iter().map(api::BadLine::from).collect();
    match bad.first() {
        Some(first) if p.strict => Err(Refusal {
            status: 422,
            body: api::ErrorBody {
                error: format!(
                    "--strict: {} bad line(s), nothing applied; first: line {}: {}",
                    errors.len(),
                    first.line,
                    first.message
                ),
                errors,
            },
        }),
        _ => Ok(errors),
    }
}

/// Refuses an import into a list the config file owns.
fn importable(d: &Daemon, list: &str) -> Result<(), OpError> {
    if list_origin(d, list) == Some(Origin::Config) {
        return Err(OpError::conflict(format!(
            "list {list} comes from the config file; import into another name"
        )));
    }
    Ok(())
}

/// `import?patch=1`: the body is a difference of the list, applied as one change.
fn patch(d: &Daemon, p: &api::ImportParams, list: &str, act: u8, text: &str) -> Answer {
    if p.replace {
        return Err(OpError::bad("patch and replace exclude each other").into());
    }
    let parsed = import::parse_patch(text, format_param(p)?).map_err(OpError::bad)?;
    let errors = bad_lines(p, &parsed.errors)?;
    importable(d, list)?;
    let applied = parsed.adds.len();
    let adds = parsed
        .adds
        .into_iter()
        .map(|e| (e.prefix, e.reason))
        .collect();
    let (table_changes, removed) = d.patch(list, act, parsed.removes, adds, p.force)?;
    ok(&api::ImportResult {
        list: list.to_owned(),
        format: parsed.format.name().to_owned(),
        applied,
        table_changes,
        replaced: false,
        patched: true,
        removed,
        errors,
        skipped: Vec::new(),
    })
}

/// Entries serialized per chunk of a streamed list: small enough to keep the daemon's
/// memory flat, large enough that a million entries take few wake-ups.
const LIST_BATCH: usize = 4096;

/// Lists of `kind`, by name. (Store read, one short read lock.)
fn lists_of(d: &Daemon, kind: Kind) -> Vec<(String, Origin)> {
    d.store()
        .lists()
        .iter()
        .filter(|(_, l)| l.kind == kind)
        .map(|(n, l)| (n.clone(), l.origin))
        .collect()
}

/// The entries of list `name`, unsorted: copied under one short read lock (a million take
/// tens of milliseconds), so the slow part, writing them out, holds no lock.
fn entries_of(d: &Daemon, name: &str) -> Vec<(Prefix, Entry)> {
    d.store()
        .lists()
        .get(name)
        .map(|l| l.entries.iter().collect())
        .unwrap_or_default()
}

/// A list entry as written, borrowing from the copy: no allocation per entry.
#[derive(Serialize)]
struct EntryOut<'a> {
    prefix: Prefix,
    list: &'a str,
    origin: Origin,
    action: &'a str,
    reason: Option<&'a str>,
    created: u64,
    expires: Option<u64>,
}

/// `GET /v1/block|allow`: a JSON array of [`api::ListEntry`], one per line, streamed in
/// batches, so a million entries never become one document in the daemon's memory.
fn list(d: Daemon, kind: Kind) -> Response<Body> {
    let (tx, body) = Body::channel(2);
    tokio::task::spawn_blocking(move || {
        let send = |s: String| tx.blocking_send(Bytes::from(s)).is_ok();
        let mut first = true;
        for (name, origin) in lists_of(&d, kind) {
            let mut entries = entries_of(&d, &name);
            entries.sort_unstable_by_key(|(p, _)| *p);
            for page in entries.chunks(LIST_BATCH) {
                let mut out = Vec::with_capacity(page.len() * 160);
                for (p, e) in page {
                    out.extend_from_slice(if first { api::LIST_OPEN } else { ",\n" }.as_bytes());
                    first = false;
                    let row = EntryOut {
                        prefix: *p,
                        list: &name,
                        origin,
                        action: if kind == Kind::Allow {
                            "allow"
                        } else {
                            action::NAMES[e.action as usize]
                        },
                        reason: e.reason.as_deref(),
                        created: e.created,
                        expires: e.expires,
                    };
                    // Writing plain data into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut out, &row);
                }
                // The client went away: stop.
                if !send(String::from_utf8(out).unwrap_or_default()) {
                    return;
                }
            }
        }
        send(
            if first {
                api::LIST_EMPTY
            } else {
                api::LIST_CLOSE
            }
            .to_owned(),
        );
        drop(tx);
        super::trim_heap();
    });
    http::streamed(JSON, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_fixed_labels() {
        struct Case {
            method: Method,
            path: &'static str,
            label: &'static str,
        }
        let cases = [
            Case {
                method: Method::GET,
                path: "/v1/status",
                label: "status",
            },
            Case {
                method: Method::GET,
                path: "/v1/block",
                label: "block_list",
            },
            Case {
                method: Method::POST,
                path: "/v1/block",
                label: "block_add",
            },
            Case {
                method: Method::POST,
                path: "/v1/allow/delete",
                label: "allow_delete",
            },
            Case {
                method: Method::POST,
                path: "/v1/block/import",
                label: "block_import",
            },
            Case {
                method: Method::DELETE,
                path: "/v1/block",
                label: "wrong_method",
            },
            Case {
                method: Method::GET,
                path: "/v1/reload",
                label: "wrong_method",
            },
            Case {
                method: Method::GET,
                path: "/v1/status/../../etc",
                label: "other",
            },
            Case {
                method: Method::GET,
                path: "/\u{1b}[31mred",
                label: "other",
            },
        ];
        for c in cases {
            assert_eq!(
                Route::of(&c.method, c.path).name(),
                c.label,
                "{} {}",
                c.method,
                c.path
            );
        }
    }

    #[test]
    fn add_refuses_host_bits_and_names_the_network() {
        let e = parse_prefixes(&["198.51.100.7/24".into()]).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("198.51.100.0/24"), "{}", e.message);
        assert!(parse_prefixes(&["198.51.100.0/24".into(), "2001:db8::/32".into()]).is_ok());
    }

    #[test]
    fn streamed_rows_are_list_entries() {
        let row = EntryOut {
            prefix: "192.0.2.0/24".parse().unwrap(),
            list: "cli",
            origin: Origin::Cli,
            action: "drop",
            reason: Some("spam \"run\""),
            created: 1,
            expires: Some(2),
        };
        let line = serde_json::to_string(&row).unwrap();
        let e = api::list_line(&format!("{line},")).unwrap().unwrap();
        assert_eq!(e.reason.as_deref(), Some("spam \"run\""));
        assert_eq!(e.expires, Some(2));
    }

    #[test]
    fn bad_list_names_are_bad_requests() {
        for n in ["", "../../etc", "UPPER", ".hidden"] {
            assert_eq!(list_name(n).unwrap_err().status, 400, "{n:?}");
        }
        assert!(list_name("sbl-drop").is_ok());
    }
}
