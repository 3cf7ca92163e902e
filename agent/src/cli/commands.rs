//! What each subcommand does and prints. Output goes through [`Out`]: a reader that goes
//! away (`prefilter block list | head`) ends the CLI quietly instead of a panic.

use std::{
    fmt::Display,
    io::{IsTerminal as _, Read, Write},
    path::Path,
};

use serde::Serialize;

use super::{
    AllowCmd, BlockCmd, Cli, Command, FeedsCmd, LogFormat,
    client::{CliError, Client, Lines},
};
use crate::{api, http::encode};

/// Runs the parsed command line; returns the process exit status.
pub fn execute(cli: Cli) -> i32 {
    let r = match cli.command {
        Command::Run(args) => return run_daemon(&args.config, args.log_format),
        Command::Block(c) => with_client(&cli.socket, |cl, out| block(cl, out, c)),
        Command::Allow(c) => with_client(&cli.socket, |cl, out| allow(cl, out, c)),
        Command::Check(a) => with_client(&cli.socket, |cl, out| check(cl, out, &a.ip, a.json)),
        Command::Status(a) => with_client(&cli.socket, |cl, out| status(cl, out, a.json, a.verify))
            .map_err(|e| still_attached(e, &a.pin_dir)),
        Command::Watch(a) => with_client(&cli.socket, |cl, out| watch(cl, out, a.json)),
        Command::Reload => with_client(&cli.socket, |cl, out| {
            let r: api::ReloadResult = cl.post("/v1/reload", &serde_json::json!({}))?;
            out.line(format_args!(
                "config reloaded ({} table changes)",
                r.table_changes
            ))
        }),
        Command::Detach(a) => with_client(&cli.socket, |cl, out| {
            detach(cl, out, a.iface.as_deref(), &a.pin_dir)
        }),
        Command::Assets(a) => super::assets::write(&a.dir).map_err(|e| CliError {
            code: 1,
            message: format!("writing to {}: {e}", a.dir.display()),
            details: Vec::new(),
        }),
        Command::Feeds(c) => with_client(&cli.socket, |cl, out| feeds(cl, out, c)),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            // Nothing to say when our reader left; and a closed stderr is no reason to panic.
            if !e.message.is_empty() {
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "prefilter: {}", e.message);
                for d in &e.details {
                    let _ = writeln!(err, "{d}");
                }
            }
            e.code
        }
    }
}

/// Runs `f` with a client and standard output, and flushes what it printed.
fn with_client(
    socket: &Path,
    f: impl FnOnce(&Client, &mut Out) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let client = Client::new(socket)?;
    let mut out = Out::new();
    let r = f(&client, &mut out);
    // Print what came before a failure too; a broken pipe wins over the failure.
    match (r, out.flush()) {
        (_, Err(e)) if e.code == super::client::EXIT_BROKEN_PIPE => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), flushed) => flushed,
    }
}

/// Buffered standard output whose write errors are CLI errors: EPIPE becomes a quiet exit.
pub struct Out {
    w: std::io::BufWriter<std::io::Stdout>,
}

fn write_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::broken_pipe()
    } else {
        CliError::new(format!("writing the output: {e}"))
    }
}

impl Out {
    pub fn new() -> Self {
        Self {
            w: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    pub fn line(&mut self, s: impl Display) -> Result<(), CliError> {
        writeln!(self.w, "{s}").map_err(write_error)
    }

    pub fn bytes(&mut self, b: &[u8]) -> Result<(), CliError> {
        self.w.write_all(b).map_err(write_error)
    }

    pub fn flush(&mut self) -> Result<(), CliError> {
        self.w.flush().map_err(write_error)
    }

    fn json<T: Serialize>(&mut self, v: &T) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(v)
            .map_err(|e| CliError::new(format!("encoding the output: {e}")))?;
        self.line(json_c1_escaped(&text))
    }
}

impl Default for Out {
    fn default() -> Self {
        Self::new()
    }
}

fn run_daemon(config: &Path, fmt: LogFormat) -> i32 {
    // The XDP program's records (target prefilter_xdp) are already filtered by
    // `[xdp] log_level`: let them through unless RUST_LOG says otherwise about them.
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("prefilter_xdp") {
        spec
    } else {
        format!("{spec},prefilter_xdp=trace")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,prefilter_xdp=trace"));
    // Colour only for a person at a terminal: journald and log files get plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match fmt {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("prefilter: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(crate::daemon::run(config)) {
        Ok(()) => 0,
        Err(e) => {
            if let Some(x) = e.downcast_ref::<crate::daemon::ExitError>() {
                eprintln!("prefilter: {}", x.message);
                return x.code;
            }
            eprintln!("prefilter: {e:#}");
            1
        }
    }
}

fn fmt_time(t: Option<u64>) -> String {
    match t {
        None => "-".into(),
        Some(secs) => {
            let now = crate::policy::store::now();
            if secs > now {
                let d = secs - now;
                match d {
                    0..120 => format!("in {d}s"),
                    120..7200 => format!("in {}m", d / 60),
                    7200..172800 => format!("in {}h", d / 3600),
                    _ => format!("in {}d", d / 86400),
                }
            } else {
                "expired".into()
            }
        }
    }
}

/// Streams `GET /v1/block|allow` to standard output: the JSON array as it arrives, or a
/// table row per entry; never the whole list in memory.
fn print_entries(
    client: &Client,
    out: &mut Out,
    target: &str,
    json_out: bool,
) -> Result<(), CliError> {
    let cut = || CliError::new("the daemon's list was cut short; run the command again");
    if json_out {
        let mut last = 0u8;
        client.stream(target, |chunk| {
            if let Some(&b) = chunk.iter().rev().find(|b| !b.is_ascii_whitespace()) {
                last = b;
            }
            out.bytes(chunk)
        })?;
        return if last == b']' { Ok(()) } else { Err(cut()) };
    }
    let mut lines = Lines::default();
    let mut closed = false;
    // The header waits for the daemon's first bytes: without a daemon, stdout stays empty.
    let mut header = false;
    client.stream(target, |chunk| {
        if !header {
            header = true;
            out.line(format_args!(
                "{:<44} {:<9} {:<16} {:<10} REASON",
                "PREFIX", "ACTION", "LIST", "EXPIRES"
            ))?;
        }
        lines.feed(chunk, |line| {
            let t = line.trim();
            if t == "]" || t == "[]" {
                closed = true;
            }
            let Some(e) = api::list_line(line)
                .map_err(|err| CliError::new(format!("the daemon's list does not fit: {err}")))?
            else {
                return Ok(());
            };
            out.line(format_args!(
                "{:<44} {:<9} {:<16} {:<10} {}",
                e.prefix.to_string(),
                e.action,
                e.list,
                fmt_time(e.expires),
                e.reason.as_deref().unwrap_or("")
            ))
        })
    })?;
    if closed { Ok(()) } else { Err(cut()) }
}

fn block(client: &Client, out: &mut Out, c: BlockCmd) -> Result<(), CliError> {
    match c {
        BlockCmd::Add(a) => {
            let body = api::AddBody {
                prefixes: a.prefixes,
                list: Some(a.list),
                action: Some(a.action.to_string()),
                ttl_secs: a.ttl,
                reason: a.reason,
                force: a.force,
            };
            let r: api::AddResult = client.post("/v1/block", &body)?;
            out.line(format_args!(
                "blocked {} prefix(es) in list {} ({})",
                r.added, r.list, a.action
            ))
        }
        BlockCmd::Del(a) => del(client, out, "block", a.prefixes, a.list),
        BlockCmd::List(a) => print_entries(client, out, "/v1/block", a.json),
        BlockCmd::Import(a) => {
            let (body, default_list) = if a.file == "-" {
                let mut b = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut b)
                    .map_err(|e| CliError::new(format!("reading standard input: {e}")))?;
                (b, "import".to_owned())
            } else {
                let p = Path::new(&a.file);
                let b = std::fs::read(p)
                    .map_err(|e| CliError::new(format!("cannot read {}: {e}", a.file)))?;
                let stem = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("import")
                    .to_ascii_lowercase()
                    .replace(
                        |c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c)),
                        "-",
                    );
                (b, stem)
            };
            let params = api::ImportParams {
                list: Some(a.list.unwrap_or(default_list)),
                action: Some(a.action.to_string()),
                format: a.format,
                replace: a.replace,
                patch: a.patch,
                strict: a.strict,
                force: a.force,
            };
            let r: api::ImportResult = client.post_text(&params.target(), body)?;
            if a.json {
                return out.json(&r);
            }
            if r.patched {
                out.line(format_args!(
                    "patched list {}: {} entries added or updated, {} removed (format {}{})",
                    r.list,
                    r.applied,
                    r.removed,
                    r.format,
                    if r.errors.is_empty() {
                        String::new()
                    } else {
                        format!(", {} bad lines skipped", r.errors.len())
                    }
                ))?;
            } else {
                out.line(format_args!(
                    "imported {} entries into list {} (format {}, {}{})",
                    r.applied,
                    r.list,
                    r.format,
                    if r.replaced { "replaced" } else { "added" },
                    if r.errors.is_empty() {
                        String::new()
                    } else {
                        format!(", {} bad lines skipped", r.errors.len())
                    }
                ))?;
            }
            // The summary first, then the bad lines on stderr, in order.
            out.flush()?;
            let mut err = std::io::stderr().lock();
            for e in r.errors.iter().take(SHOWN_BAD_LINES) {
                let _ = writeln!(err, "line {}: {}: {}", e.line, e.message, shown(&e.text));
            }
            if r.errors.len() > SHOWN_BAD_LINES {
                let _ = writeln!(
                    err,
                    "... and {} more bad lines (--json lists them all)",
                    r.errors.len() - SHOWN_BAD_LINES
                );
            }
            Ok(())
        }
    }
}

/// Bad lines printed after a (non-strict) import; `--json` has them all.
const SHOWN_BAD_LINES: usize = 50;

fn del(
    client: &Client,
    out: &mut Out,
    kind: &str,
    prefixes: Vec<String>,
    list: Option<String>,
) -> Result<(), CliError> {
    let r: api::DeleteResult = client.post(
        &format!("/v1/{kind}/delete"),
        &api::DeleteBody { prefixes, list },
    )?;
    let still: Vec<String> = r
        .still_blocked
        .iter()
        .map(|s| {
            format!(
                "{} is still blocked by list {} ({}): {}",
                s.prefix, s.list, s.origin, s.hint
            )
        })
        .collect();
    if r.removed == 0 && r.lifted == 0 {
        let mut e = CliError::new(format!(
            "no such entry: nothing removed (see `prefilter {kind} list`; the config \
             file's lists are edited there, then `prefilter reload`)"
        ));
        e.details = still;
        return Err(e);
    }
    for l in r.lists.iter().filter(|l| l.removed > 0) {
        out.line(format_args!("removed {} from list {}", l.removed, l.list))?;
    }
    if r.lifted > 0 {
        out.line(format_args!(
            "lifted {} learned verdict(s) (dynamic map)",
            r.lifted
        ))?;
    }
    for s in &still {
        out.line(format_args!("{s}"))?;
    }
    Ok(())
}

fn allow(client: &Client, out: &mut Out, c: AllowCmd) -> Result<(), CliError> {
    match c {
        AllowCmd::Add(a) => {
            let body = api::AddBody {
                prefixes: a.prefixes,
                list: Some(a.list),
                ttl_secs: a.ttl,
                reason: a.reason,
                ..Default::default()
            };
            let r: api::AddResult = client.post("/v1/allow", &body)?;
            out.line(format_args!(
                "allowlisted {} prefix(es) in list {}",
                r.added, r.list
            ))
        }
        AllowCmd::Del(a) => del(client, out, "allow", a.prefixes, a.list),
        AllowCmd::List(a) => print_entries(client, out, "/v1/allow", a.json),
    }
}

fn check(client: &Client, out: &mut Out, ip: &str, json_out: bool) -> Result<(), CliError> {
    if ip.parse::<std::net::IpAddr>().is_err() {
        return Err(CliError::with_code(format!("not an IP address: {ip:?}"), 2));
    }
    let v: api::Check = client.get(&format!("/v1/check?ip={}", encode(ip)))?;
    if json_out {
        return out.json(&v);
    }
    out.line(format_args!("{}: {} ({})", ip, v.verdict, v.explanation))?;
    let ports: Vec<String> = v.judged_ports.iter().map(u16::to_string).collect();
    out.line(format_args!(
        "  XDP action for a SYN to ports {}: {}",
        ports.join(","),
        v.xdp_action
    ))?;
    for m in &v.matches {
        let origin = serde_json::to_value(m.origin)
            .ok()
            .and_then(|o| o.as_str().map(str::to_owned))
            .unwrap_or_default();
        let kind = match m.kind {
            api::ListKind::Block => "block",
            api::ListKind::Allow => "allow",
        };
        out.line(format_args!(
            "  {} {} in {} list {} ({}){}{}",
            m.prefix,
            m.action,
            origin,
            m.list,
            kind,
            m.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            m.expires
                .map(|t| format!(", expires {}", fmt_time(Some(t))))
                .unwrap_or_default(),
        ))?;
    }
    if let Some(d) = &v.dynamic {
        let from = match (&d.source, &d.reason) {
            (Some(s), Some(r)) if !r.is_empty() => format!(", learned from {s}: {r}"),
            (Some(s), _) => format!(", learned from {s}"),
            _ => String::new(),
        };
        let until = d
            .expires_in_secs
            .map(|s| {
                format!(
                    ", expires {}",
                    fmt_time(Some(crate::policy::store::now() + s))
                )
            })
            .unwrap_or_default();
        let note = if d.applies {
            "; `prefilter block del ADDR` lifts it"
        } else {
            "; not applied: the listed verdict is stronger"
        };
        out.line(format_args!(
            "  dynamic verdict: {}{from}{until}{note}",
            d.action
        ))?;
    }
    if let Some(s) = &v.dnsbl {
        let mut hits = s.listed.clone();
        hits.extend(s.allowed_by.iter().cloned());
        out.line(format_args!(
            "  DNSBL score {}{}{}{}",
            s.score,
            if hits.is_empty() {
                String::new()
            } else {
                format!(" ({})", hits.join(", "))
            },
            s.verdict
                .as_deref()
                .map(|a| format!(": listed, {a} at first contact"))
                .unwrap_or_default(),
            if s.allowlisted { ": allowlisted" } else { "" },
        ))?;
    }
    Ok(())
}

fn status(client: &Client, out: &mut Out, json_out: bool, verify: bool) -> Result<(), CliError> {
    let mut v: api::Status = client.get("/v1/status")?;
    if verify {
        v.verify = Some(client.get("/v1/verify")?);
    }
    let bad = v.verify.as_ref().is_some_and(|x| !x.ok);
    let differ = || CliError::new("the tables differ from the store");
    if json_out {
        out.json(&v)?;
        return if bad { Err(differ()) } else { Ok(()) };
    }
    out.line(format_args!(
        "prefilter {} (map ABI {}), up {}s, config {}",
        v.version,
        v.abi,
        v.uptime_secs,
        v.config.display()
    ))?;
    for i in &v.interfaces {
        out.line(format_args!(
            "  attached to {} ({} mode)",
            i.interface, i.mode
        ))?;
    }
    if v.interfaces.is_empty() {
        out.line("  not attached to any interface")?;
    }
    let ports: Vec<String> = v.ports.iter().map(u16::to_string).collect();
    out.line(format_args!("  judged ports: {}", ports.join(",")))?;
    let m = &v.maps;
    out.line(format_args!(
        "  tables: v4 {} block / {} allow ({} of {} long-prefix groups), v6 {} block / {} allow ({} of {} entries)",
        m.v4_block,
        m.v4_allow,
        m.v4_long_groups.used,
        m.v4_long_groups.capacity,
        m.v6_block,
        m.v6_allow,
        m.v6_entries.used,
        m.v6_entries.capacity
    ))?;
    for l in &v.lists {
        let origin = serde_json::to_value(l.origin)
            .ok()
            .and_then(|o| o.as_str().map(str::to_owned))
            .unwrap_or_default();
        let kind = match l.kind {
            api::ListKind::Block => "block",
            api::ListKind::Allow => "allow",
        };
        out.line(format_args!(
            "  list {} ({} {}, id {}): {} entries",
            l.name, origin, kind, l.id, l.entries
        ))?;
    }
    if let Some(d) = &v.dnsbl {
        out.line(format_args!(
            "  DNSBL ({} mode): {} cached answers",
            if d.inline { "inline" } else { "proxy" },
            d.cache_entries
        ))?;
        for z in &d.zones {
            out.line(format_args!(
                "    zone {}: {}{}",
                z.zone,
                z.state,
                if z.note.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", z.note)
                }
            ))?;
        }
    }
    for c in &v.counters {
        out.line(format_args!(
            "  {:>12} packets  {} / {}",
            c.packets, c.action, c.reason
        ))?;
    }
    if let Some(x) = &v.verify {
        out.line(format_args!(
            "  verify: {} ({} store prefixes, {} table prefixes, {} addresses checked)",
            if x.ok { "ok" } else { "MISMATCH" },
            x.store_prefixes,
            x.table_prefixes,
            x.addresses_checked
        ))?;
        for m in &x.mismatches {
            match m {
                api::Mismatch::Rule {
                    prefix,
                    kind,
                    problem,
                } => out.line(format_args!(
                    "    {} ({}): {problem}",
                    prefix,
                    match kind {
                        api::ListKind::Block => "block",
                        api::ListKind::Allow => "allow",
                    }
                ))?,
                api::Mismatch::Address {
                    address,
                    kernel,
                    expected,
                } => out.line(format_args!(
                    "    {address}: the kernel says {kernel}, the store {expected}"
                ))?,
            }
        }
        if bad && x.mismatches.is_empty() {
            out.line("    the rule sets differ")?;
        }
    }
    if bad { Err(differ()) } else { Ok(()) }
}

fn watch(client: &Client, out: &mut Out, json_out: bool) -> Result<(), CliError> {
    let mut lines = Lines::default();
    client.stream("/v1/watch", |chunk| {
        lines.feed(chunk, |line| {
            if line.trim().is_empty() {
                return Ok(());
            }
            if json_out {
                out.line(line)?;
            } else {
                match serde_json::from_str::<api::WatchLine>(line) {
                    Ok(api::WatchLine::Lagged { lagged }) => {
                        out.line(format_args!("... {lagged} events skipped (too slow)"))?
                    }
                    Ok(api::WatchLine::Event(v)) => out.line(format_args!(
                        "{:.3} {:<10} {:<40} {:<8} {}{} port {}",
                        v.time,
                        v.kind,
                        v.source,
                        v.action,
                        v.reason,
                        v.list
                            .as_deref()
                            .map(|l| format!(" list={l}"))
                            .unwrap_or_default(),
                        v.port
                    ))?,
                    Err(_) => return Ok(()),
                }
            }
            // Live output: each event as it comes.
            out.flush()
        })
    })
}

/// Interfaces with a pinned filter link in `pin_dir`.
fn pinned_links(pin_dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("link_").map(|i| (i.to_owned(), e.path()))
        })
        .collect();
    out.sort();
    out
}

/// With the daemon down, says whether its filter is still in force (SIGTERM leaves it).
fn still_attached(e: CliError, pin_dir: &Path) -> CliError {
    if !e.unreachable() {
        return e;
    }
    let links = pinned_links(pin_dir);
    if links.is_empty() {
        return e;
    }
    let ifs: Vec<&str> = links.iter().map(|(i, _)| i.as_str()).collect();
    CliError {
        details: e.details,
        message: format!(
            "{}
the XDP filter is still attached to {} (pinned in {}): SYNs are judged with the tables as the daemon left them; `prefilter detach` removes it",
            e.message,
            ifs.join(", "),
            pin_dir.display()
        ),
        code: e.code,
    }
}

fn detach(
    client: &Client,
    out: &mut Out,
    iface: Option<&str>,
    pin_dir: &Path,
) -> Result<(), CliError> {
    let target = match iface {
        Some(i) => format!("/v1/detach?iface={}", encode(i)),
        None => "/v1/detach".to_owned(),
    };
    match client.post::<_, api::DetachResult>(&target, &serde_json::json!({})) {
        Ok(r) => out.line(format_args!(
            "detached from {}",
            if r.detached.is_empty() {
                "nothing".into()
            } else {
                r.detached.join(", ")
            }
        )),
        // Without a daemon the pinned links are still there: remove them directly.
        Err(e) if e.unreachable() => {
            let mut done = Vec::new();
            for (ifname, path) in pinned_links(pin_dir) {
                if iface.is_some_and(|i| i != ifname) {
                    continue;
                }
                crate::xdp::detach_pinned(&path)
                    .map_err(|err| CliError::new(format!("removing {}: {err}", path.display())))?;
                done.push(ifname);
            }
            if done.is_empty() {
                return Err(CliError::new(format!(
                    "daemon not running and no pinned filter in {}",
                    pin_dir.display()
                )));
            }
            out.line(format_args!(
                "daemon not running; removed the pinned filter from {}",
                done.join(", ")
            ))
        }
        Err(e) => Err(e),
    }
}

/// Unix seconds as "Ns ago" / "in Ns": the reader's question is how stale or how soon.
fn ago(t: Option<u64>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let now = crate::policy::store::now();
    if t > now {
        format!("in {}s", t - now)
    } else {
        format!("{}s ago", now - t)
    }
}

fn outcome_name(o: api::FeedOutcome) -> &'static str {
    match o {
        api::FeedOutcome::Updated => "updated",
        api::FeedOutcome::NotModified => "not modified",
        api::FeedOutcome::Refused => "refused by the shrink guard",
        api::FeedOutcome::Failed => "failed",
    }
}

fn feeds(client: &Client, out: &mut Out, c: FeedsCmd) -> Result<(), CliError> {
    match c {
        FeedsCmd::List(a) => {
            let v: api::FeedList = client.get("/v1/feeds")?;
            if a.json {
                return out.json(&v);
            }
            if v.feeds.is_empty() {
                return out.line("no [[feeds]] in the config");
            }
            for f in &v.feeds {
                out.line(format_args!(
                    "{} ({} {}, every {}s) {}",
                    f.name, f.format, f.action, f.interval_secs, f.source
                ))?;
                out.line(format_args!(
                    "  entries {}, last success {}, last run {}{}, next run {}",
                    f.entries,
                    ago(f.last_success),
                    ago(f.last_attempt),
                    f.last_outcome
                        .map(|o| format!(" ({})", outcome_name(o)))
                        .unwrap_or_default(),
                    if f.running {
                        "now".to_owned()
                    } else {
                        ago(f.next_run)
                    },
                ))?;
                out.line(format_args!(
                    "  failures {} ({} in a row), guard refusals {}, lines rejected {}, last body {} bytes",
                    f.failures, f.consecutive_failures, f.guard_refusals, f.lines_rejected, f.bytes
                ))?;
                if let Some(e) = &f.last_error {
                    out.line(format_args!("  last error: {e}"))?;
                }
                if let Some(e) = f
                    .last_refusal
                    .as_ref()
                    .filter(|r| f.last_error.as_ref() != Some(*r))
                {
                    out.line(format_args!("  last refusal: {e}"))?;
                }
                for b in &f.bad_lines {
                    out.line(format_args!(
                        "  {}: {} ({})",
                        bad_where(b.line),
                        b.message,
                        shown(&b.text)
                    ))?;
                }
            }
            Ok(())
        }
        FeedsCmd::Sync(a) => {
            let target = format!(
                "/v1/feeds/sync?name={}{}",
                encode(&a.name),
                if a.force { "&force=true" } else { "" }
            );
            let r: api::FeedSyncResult = client.post(&target, &serde_json::json!({}))?;
            if a.json {
                out.json(&r)?;
            } else {
                out.line(format_args!(
                    "feed {}: {}, {} entries in force, {} table changes, {} lines rejected",
                    r.feed,
                    outcome_name(r.outcome),
                    r.entries,
                    r.table_changes,
                    r.lines_rejected
                ))?;
                for b in &r.bad_lines {
                    out.line(format_args!(
                        "  {}: {} ({})",
                        bad_where(b.line),
                        b.message,
                        shown(&b.text)
                    ))?;
                }
            }
            match r.outcome {
                api::FeedOutcome::Updated | api::FeedOutcome::NotModified => Ok(()),
                o => Err(CliError::new(format!(
                    "feed {}: {}; the last good copy stays in force",
                    r.feed,
                    r.error.unwrap_or_else(|| outcome_name(o).to_owned())
                ))),
            }
        }
    }
}

/// A line from a list or feed as the terminal may show it: control characters escaped, so
/// a hostile body cannot clear the screen or retitle the admin's terminal.
pub(crate) fn shown(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `text` (serde_json's output) with DEL and the C1 controls (U+007F–U+009F) written as
/// `\u00XX`: serde_json escapes only the C0 ones, and a feed's bad line shown by `--json`
/// piped to a terminal could carry a CSI (U+009B). The same JSON value: outside strings
/// JSON text holds no such character.
fn json_c1_escaped(text: &str) -> std::borrow::Cow<'_, str> {
    let c1 = |c: char| ('\u{7f}'..='\u{9f}').contains(&c);
    if !text.contains(c1) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c1(c) {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Where a bad feed entry was: its line, or for a CrowdSec decision (line 0) that.
fn bad_where(line: usize) -> String {
    if line == 0 {
        "bad decision".to_owned()
    } else {
        format!("bad line {line}")
    }
}

#[cfg(test)]
mod shown_tests {
    use super::shown;

    /// A hostile list line cannot drive the admin's terminal: control characters come out
    /// escaped, the rest as it was.
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            shown("\u{1b}[2J\u{1b}]0;owned\u{7}evil 192.0.2.1 é"),
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}evil 192.0.2.1 é"
        );
        assert_eq!(shown("a\tb\r"), "a\\tb\\r");
    }

    /// `--json` carries a bad line's text escaped where a terminal would act on it (C1
    /// CSI, DEL), and still decodes to the very same text.
    #[test]
    fn json_output_escapes_c1_controls() {
        let line = "\u{9b}2J\u{7f}évil 192.0.2.1\u{1b}";
        let text = serde_json::to_string_pretty(&serde_json::json!({ "text": line })).unwrap();
        assert!(text.contains('\u{9b}'), "serde_json leaves C1 as it is");
        let out = super::json_c1_escaped(&text);
        assert!(
            !out.contains(|c: char| c.is_control() && c != '\n'),
            "{out}"
        );
        assert!(out.contains("\\u009b2J\\u007févil"), "{out}");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["text"], line);
    }
}
