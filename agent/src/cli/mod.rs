//! The `prefilter` command line: `run` starts the daemon, everything else talks to it over
//! the control socket.

mod assets;
mod client;
mod commands;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::policy::Action;

pub use self::commands::execute;

/// Default control socket, as in deploy/prefilter.service.
pub const DEFAULT_SOCKET: &str = "/run/prefilter/control.sock";
/// Where the daemon pins maps and links with the default `bpffs`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/prefilter";
/// Default config file.
pub const DEFAULT_CONFIG: &str = "/etc/prefilter/prefilter.toml";

#[derive(Parser, Debug)]
#[command(
    name = "prefilter",
    version,
    about = "XDP SMTP connection prefilter for mail gateways"
)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "PREFILTER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: attach the XDP filter and keep it filled.
    Run(RunArgs),
    /// Blocked prefixes: add, delete, list, import.
    #[command(subcommand)]
    Block(BlockCmd),
    /// Allowlisted prefixes (trusted relays and partners, exempt from every check).
    #[command(subcommand)]
    Allow(AllowCmd),
    /// Explain the verdict for an address.
    Check(CheckArgs),
    /// Interfaces, attach mode, map fill, lists and counters.
    Status(StatusArgs),
    /// Stream verdict events from the XDP program.
    Watch(JsonArg),
    /// Re-read the config file (same as SIGHUP).
    Reload,
    /// Remove the XDP filter from an interface (all if none given).
    Detach(DetachArgs),
    /// Reputation feeds: their state, or a run now.
    #[command(subcommand)]
    Feeds(FeedsCmd),
    /// Write man pages and shell completions into DIR (for packagers).
    #[command(hide = true)]
    Assets(AssetsArgs),
}

#[derive(Args, Debug)]
pub struct AssetsArgs {
    /// Output directory: man/ and completions/ are created in it.
    pub dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum FeedsCmd {
    /// Each feed: entries, last success, errors, next run, guard refusals.
    List(JsonArg),
    /// Fetch and apply one feed now, and print what happened.
    Sync(FeedsSyncArgs),
}

#[derive(Args, Debug)]
pub struct FeedsSyncArgs {
    /// The feed's name in the config.
    pub name: String,
    /// Apply even when the update would shrink the list past its limit or empty it.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Config file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Log format: human-readable text, or JSON lines for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Args, Debug)]
pub struct JsonArg {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Also prove the kernel tables hold exactly the store's entries (reads every entry).
    #[arg(long)]
    pub verify: bool,
    /// Pin directory to look at when the daemon is not running.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum BlockCmd {
    /// Block prefixes (IP or CIDR).
    Add(BlockAddArgs),
    /// Unblock prefixes (from the given list, or every CLI and imported list).
    Del(DelArgs),
    /// List blocked prefixes.
    List(JsonArg),
    /// Import a list file (plain, Spamhaus DROP, rbldnsd ip4set) into a named list.
    Import(ImportArgs),
}

#[derive(Subcommand, Debug)]
pub enum AllowCmd {
    /// Allowlist prefixes.
    Add(AllowAddArgs),
    /// Remove prefixes from the allowlist.
    Del(DelArgs),
    /// List allowlisted prefixes.
    List(JsonArg),
}

#[derive(Args, Debug)]
pub struct BlockAddArgs {
    /// IPs or CIDRs.
    #[arg(required = true)]
    pub prefixes: Vec<String>,
    /// What the filter does with their SYNs.
    #[arg(long, value_enum, default_value_t = Action::Drop)]
    pub action: Action,
    /// Expire after this long (e.g. 90s, 30m, 12h, 7d).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<u64>,
    /// Why, shown by `check` and `block list`.
    #[arg(long)]
    pub reason: Option<String>,
    /// List to add to.
    #[arg(long, default_value = "cli")]
    pub list: String,
    /// Accept prefixes shorter than /8 (IPv4) or /16 (IPv6), which block much of the internet.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct AllowAddArgs {
    /// IPs or CIDRs.
    #[arg(required = true)]
    pub prefixes: Vec<String>,
    /// Expire after this long (e.g. 30m, 12h).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<u64>,
    /// Why (shown by `check`).
    #[arg(long)]
    pub reason: Option<String>,
    /// List to add to.
    #[arg(long, default_value = "cli-allow")]
    pub list: String,
}

#[derive(Args, Debug)]
pub struct DelArgs {
    /// IPs or CIDRs, exactly as added.
    #[arg(required = true)]
    pub prefixes: Vec<String>,
    /// Only from this list.
    #[arg(long)]
    pub list: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("shrinking").args(["replace", "patch"])))]
pub struct ImportArgs {
    /// File to read, or - for standard input.
    pub file: String,
    /// Format; detected from the content when not given.
    #[arg(long, value_parser = ["plain", "spamhaus-drop", "rbldnsd"])]
    pub format: Option<String>,
    /// Action for every entry.
    #[arg(long, value_enum, default_value_t = Action::Drop)]
    pub action: Action,
    /// Name of the list (default: the file name without extension, or "import" for stdin).
    #[arg(long)]
    pub list: Option<String>,
    /// Replace the whole list atomically instead of adding to it.
    #[arg(long, conflicts_with = "patch")]
    pub replace: bool,
    /// FILE is a difference (`diff -u old.txt new.txt`): `+` lines are added, `-` lines
    /// removed, in one change that costs what it touches, not what the list holds.
    #[arg(long)]
    pub patch: bool,
    /// Apply nothing if any line is bad (every bad line is listed).
    #[arg(long)]
    pub strict: bool,
    /// With --replace or --patch: allow emptying the list or shrinking it past the
    /// configured share.
    #[arg(long, requires = "shrinking")]
    pub force: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// IPv4 or IPv6 address.
    pub ip: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// Interface (default: every attached interface).
    #[arg(long)]
    pub iface: Option<String>,
    /// Pin directory to clean up when the daemon is not running.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// Parses `90`, `90s`, `30m`, `12h`, `7d`, `2w` into seconds, at most ten years (the
/// daemon's limit: longer is a typo, and the expiry must not overflow).
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use s, m, h, d or w)"
            ));
        }
    };
    if num.is_empty() {
        return Err(format!("{s:?} is not a duration (e.g. 90s, 30m, 12h, 7d)"));
    }
    let max = crate::daemon::MAX_TTL_SECS;
    let too_long = || format!("a TTL of {s:?} is too long: at most ten years ({max}s)");
    // Only digits are left: a parse failure is an overflow.
    let n: u64 = num.parse().map_err(|_| too_long())?;
    if n == 0 {
        return Err("a TTL must be more than 0".into());
    }
    match n.checked_mul(mult) {
        Some(secs) if secs <= max => Ok(secs),
        _ => Err(too_long()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        struct Case {
            input: &'static str,
            expected: Result<u64, ()>,
        }
        let cases = [
            Case {
                input: "90",
                expected: Ok(90),
            },
            Case {
                input: "90s",
                expected: Ok(90),
            },
            Case {
                input: "30m",
                expected: Ok(1800),
            },
            Case {
                input: "12h",
                expected: Ok(43200),
            },
            Case {
                input: "7d",
                expected: Ok(604800),
            },
            Case {
                input: "0s",
                expected: Err(()),
            },
            Case {
                input: "1y",
                expected: Err(()),
            },
            Case {
                input: "h",
                expected: Err(()),
            },
            Case {
                input: "520w",
                expected: Ok(520 * 7 * 86400),
            },
            Case {
                input: "3651d",
                expected: Err(()),
            },
            Case {
                input: "99999999999999999999999s",
                expected: Err(()),
            },
            Case {
                input: "30500000000000000d",
                expected: Err(()),
            },
        ];
        for c in cases {
            assert_eq!(
                parse_duration(c.input).map_err(|_| ()),
                c.expected,
                "{}",
                c.input
            );
        }
    }

    #[test]
    fn overlong_ttl_says_why() {
        for s in ["3651d", "99999999999999999999999s"] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains("ten years"), "{s}: {e}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
