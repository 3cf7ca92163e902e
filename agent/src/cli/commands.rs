//! What each subcommand does and prints.

use std::{io::Read, path::Path};

use serde_json::{Value, json};

use super::{
    AllowCmd, BlockCmd, Cli, Command, LogFormat,
    client::{self, CliError},
};
use crate::http::encode;

/// Runs the parsed command line; returns the process exit status.
pub fn execute(cli: Cli) -> i32 {
    let r = match cli.command {
        Command::Run(args) => return run_daemon(&args.config, args.log_format),
        Command::Block(c) => block(&cli.socket, c),
        Command::Allow(c) => allow(&cli.socket, c),
        Command::Check(a) => check(&cli.socket, &a.ip, a.json),
        Command::Status(a) => {
            status(&cli.socket, a.json, a.verify).map_err(|e| still_attached(e, &a.pin_dir))
        }
        Command::Watch(a) => watch(&cli.socket, a.json),
        Command::Reload => client::json(&cli.socket, "POST", "/v1/reload", &json!({})).map(|v| {
            println!("config reloaded ({} table changes)", v["table_changes"]);
        }),
        Command::Detach(a) => detach(&cli.socket, a.iface.as_deref(), &a.pin_dir),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("prefilter: {}", e.message);
            e.code
        }
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
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn fmt_time(t: &Value) -> String {
    match t.as_u64() {
        None => "-".into(),
        Some(secs) => {
            let now = crate::store::now();
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

fn print_entries(v: &Value, json_out: bool) {
    if json_out {
        print_json(v);
        return;
    }
    let empty = Vec::new();
    let rows = v.as_array().unwrap_or(&empty);
    println!(
        "{:<44} {:<9} {:<16} {:<10} REASON",
        "PREFIX", "ACTION", "LIST", "EXPIRES"
    );
    for e in rows {
        println!(
            "{:<44} {:<9} {:<16} {:<10} {}",
            e["prefix"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["list"].as_str().unwrap_or(""),
            fmt_time(&e["expires"]),
            e["reason"].as_str().unwrap_or("")
        );
    }
}

fn block(socket: &Path, c: BlockCmd) -> Result<(), CliError> {
    match c {
        BlockCmd::Add(a) => {
            let v = client::json(
                socket,
                "POST",
                "/v1/block",
                &json!({"prefixes": a.prefixes, "action": a.action, "ttl_secs": a.ttl, "reason": a.reason, "list": a.list}),
            )?;
            println!(
                "blocked {} prefix(es) in list {} ({})",
                v["added"],
                v["list"].as_str().unwrap_or(""),
                a.action
            );
            Ok(())
        }
        BlockCmd::Del(a) => del(socket, "block", a.prefixes, a.list),
        BlockCmd::List(a) => {
            let v = client::request(socket, "GET", "/v1/block", "application/json", b"")?;
            print_entries(&v, a.json);
            Ok(())
        }
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
            let list = a.list.unwrap_or(default_list);
            let mut target = format!(
                "/v1/block/import?list={}&action={}",
                encode(&list),
                encode(&a.action)
            );
            if let Some(f) = &a.format {
                target.push_str(&format!("&format={}", encode(f)));
            }
            if a.replace {
                target.push_str("&replace=1");
            }
            if a.strict {
                target.push_str("&strict=1");
            }
            let v = client::request(socket, "POST", &target, "text/plain", &body)?;
            if a.json {
                print_json(&v);
                return Ok(());
            }
            let errors = v["errors"].as_array().cloned().unwrap_or_default();
            println!(
                "imported {} entries into list {} (format {}, {}{})",
                v["applied"],
                v["list"].as_str().unwrap_or(""),
                v["format"].as_str().unwrap_or(""),
                if a.replace { "replaced" } else { "added" },
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(", {} bad lines skipped", errors.len())
                }
            );
            for e in errors.iter().take(50) {
                eprintln!(
                    "line {}: {}: {}",
                    e["line"],
                    e["message"].as_str().unwrap_or(""),
                    e["text"].as_str().unwrap_or("")
                );
            }
            if errors.len() > 50 {
                eprintln!(
                    "... and {} more bad lines (--json lists them all)",
                    errors.len() - 50
                );
            }
            Ok(())
        }
    }
}

fn del(
    socket: &Path,
    kind: &str,
    prefixes: Vec<String>,
    list: Option<String>,
) -> Result<(), CliError> {
    let v = client::json(
        socket,
        "POST",
        &format!("/v1/{kind}/delete"),
        &json!({"prefixes": prefixes, "list": list}),
    )?;
    let removed = v["removed"].as_u64().unwrap_or(0);
    if removed == 0 {
        return Err(CliError::new(format!(
            "no such entry: nothing removed (see `prefilter {kind} list`)"
        )));
    }
    for l in v["lists"].as_array().into_iter().flatten() {
        if l["removed"].as_u64().unwrap_or(0) > 0 {
            println!(
                "removed {} from list {}",
                l["removed"],
                l["list"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

fn allow(socket: &Path, c: AllowCmd) -> Result<(), CliError> {
    match c {
        AllowCmd::Add(a) => {
            let v = client::json(
                socket,
                "POST",
                "/v1/allow",
                &json!({"prefixes": a.prefixes, "ttl_secs": a.ttl, "reason": a.reason, "list": a.list}),
            )?;
            println!(
                "allowlisted {} prefix(es) in list {}",
                v["added"],
                v["list"].as_str().unwrap_or("")
            );
            Ok(())
        }
        AllowCmd::Del(a) => del(socket, "allow", a.prefixes, a.list),
        AllowCmd::List(a) => {
            let v = client::request(socket, "GET", "/v1/allow", "application/json", b"")?;
            print_entries(&v, a.json);
            Ok(())
        }
    }
}

fn check(socket: &Path, ip: &str, json_out: bool) -> Result<(), CliError> {
    if ip.parse::<std::net::IpAddr>().is_err() {
        return Err(CliError {
            message: format!("not an IP address: {ip:?}"),
            code: 2,
        });
    }
    let v = client::request(
        socket,
        "GET",
        &format!("/v1/check?ip={}", encode(ip)),
        "application/json",
        b"",
    )?;
    if json_out {
        print_json(&v);
        return Ok(());
    }
    println!(
        "{}: {} ({})",
        ip,
        v["verdict"].as_str().unwrap_or("?"),
        v["explanation"].as_str().unwrap_or("")
    );
    println!(
        "  XDP action for a SYN to ports {}: {}",
        v["judged_ports"],
        v["xdp_action"].as_str().unwrap_or("")
    );
    for m in v["matches"].as_array().into_iter().flatten() {
        println!(
            "  {} {} in {} list {} ({}){}{}",
            m["prefix"].as_str().unwrap_or(""),
            m["action"].as_str().unwrap_or(""),
            m["origin"].as_str().unwrap_or(""),
            m["list"].as_str().unwrap_or(""),
            m["kind"].as_str().unwrap_or(""),
            m["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            if m["expires"].is_null() {
                String::new()
            } else {
                format!(", expires {}", fmt_time(&m["expires"]))
            },
        );
    }
    if !v["dynamic"].is_null() {
        println!(
            "  dynamic verdict: {}",
            v["dynamic"]["action"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn status(socket: &Path, json_out: bool, verify: bool) -> Result<(), CliError> {
    let mut v = client::request(socket, "GET", "/v1/status", "application/json", b"")?;
    let verified = if verify {
        Some(client::request(
            socket,
            "GET",
            "/v1/verify",
            "application/json",
            b"",
        )?)
    } else {
        None
    };
    let bad = verified
        .as_ref()
        .is_some_and(|x| x["ok"] != Value::Bool(true));
    if json_out {
        if let Some(x) = verified {
            v["verify"] = x;
        }
        print_json(&v);
        return if bad {
            Err(CliError::new("the tables differ from the store"))
        } else {
            Ok(())
        };
    }
    println!(
        "prefilter {} (map ABI {}), up {}s, config {}",
        v["version"].as_str().unwrap_or(""),
        v["abi"],
        v["uptime_secs"],
        v["config"].as_str().unwrap_or("")
    );
    for i in v["interfaces"].as_array().into_iter().flatten() {
        println!(
            "  attached to {} ({} mode)",
            i["interface"].as_str().unwrap_or(""),
            i["mode"].as_str().unwrap_or("")
        );
    }
    if v["interfaces"].as_array().is_none_or(|a| a.is_empty()) {
        println!("  not attached to any interface");
    }
    println!("  judged ports: {}", v["ports"]);
    let m = &v["maps"];
    println!(
        "  tables: v4 {} block / {} allow ({} of {} long-prefix groups), v6 {} block / {} allow (capacity {})",
        m["v4_block"],
        m["v4_allow"],
        m["v4_long_groups"]["used"],
        m["v4_long_groups"]["capacity"],
        m["v6_block"],
        m["v6_allow"],
        m["v6_capacity"]
    );
    for l in v["lists"].as_array().into_iter().flatten() {
        println!(
            "  list {} ({} {}, id {}): {} entries",
            l["name"].as_str().unwrap_or(""),
            l["origin"].as_str().unwrap_or(""),
            l["kind"].as_str().unwrap_or(""),
            l["id"],
            l["entries"]
        );
    }
    for c in v["counters"].as_array().into_iter().flatten() {
        println!(
            "  {:>12} packets  {} / {}",
            c["packets"],
            c["action"].as_str().unwrap_or(""),
            c["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn watch(socket: &Path, json_out: bool) -> Result<(), CliError> {
    client::stream(socket, "/v1/watch", |line| {
        if json_out {
            println!("{line}");
            return true;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return true;
        };
        if let Some(n) = v["lagged"].as_u64() {
            println!("... {n} events skipped (too slow)");
            return true;
        }
        println!(
            "{:.3} {:<10} {:<40} {:<8} {}{} port {}",
            v["time"].as_f64().unwrap_or(0.0),
            v["kind"].as_str().unwrap_or(""),
            v["source"].as_str().unwrap_or(""),
            v["action"].as_str().unwrap_or(""),
            v["reason"].as_str().unwrap_or(""),
            v["list"]
                .as_str()
                .map(|l| format!(" list={l}"))
                .unwrap_or_default(),
            v["port"]
        );
        true
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
    if e.code != 3 {
        return e;
    }
    let links = pinned_links(pin_dir);
    if links.is_empty() {
        return e;
    }
    let ifs: Vec<&str> = links.iter().map(|(i, _)| i.as_str()).collect();
    CliError {
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

fn detach(socket: &Path, iface: Option<&str>, pin_dir: &Path) -> Result<(), CliError> {
    let target = match iface {
        Some(i) => format!("/v1/detach?iface={}", encode(i)),
        None => "/v1/detach".to_owned(),
    };
    match client::json(socket, "POST", &target, &json!({})) {
        Ok(v) => {
            let ifs: Vec<&str> = v["detached"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "detached from {}",
                if ifs.is_empty() {
                    "nothing".into()
                } else {
                    ifs.join(", ")
                }
            );
            Ok(())
        }
        // Without a daemon the pinned links are still there: remove them directly.
        Err(e) if e.code == 3 => {
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
            println!(
                "daemon not running; removed the pinned filter from {}",
                done.join(", ")
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}
