use super::*;

fn iface(name: &str) -> bool {
    matches!(name, "eth0" | "eth1")
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new("prefilter.toml"), &iface)
}

/// A directory of list files, removed when dropped (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("prefilter-config-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn full_config() {
    let text = r#"
[daemon]
state_dir = "/srv/prefilter/state"
socket = "/run/pf.sock"
socket_group = ""
bpffs = "/mnt/bpf"

[xdp]
interfaces = ["eth0", "eth1"]
mode = "skb"
ports = [25, 2525]
log_level = "debug"
events_per_second = 0

[xdp.ratelimit]
enabled = true
syn_per_second = 4
burst = 10

[limits]
v4_long_groups = 1024
v6_entries = 1000
dynamic_entries = 5000

[metrics]
listen = "[::1]:9999"

[[block]]
name = "local"
action = "reset"
prefixes = ["203.0.113.0/24", "192.0.2.77/24", "2001:db8:bad::/48", "203.0.113.0/24"]

[[block]]
name = "shadow.v2"
action = "observe"

[[allow]]
name = "partners"
prefixes = ["198.51.100.0/24"]
"#;
    let c = parse(text).unwrap();
    assert_eq!(
        c.daemon,
        Daemon {
            state_dir: "/srv/prefilter/state".into(),
            socket: "/run/pf.sock".into(),
            socket_group: None,
            bpffs: "/mnt/bpf".into(),
        }
    );
    assert_eq!(c.daemon.pin_dir(), Path::new("/mnt/bpf/prefilter"));
    assert_eq!(c.xdp.interfaces, ["eth0", "eth1"]);
    assert_eq!(c.attach_mode(), AttachMode::Skb);
    assert_eq!(c.ports(), [25, 2525]);
    assert_eq!(c.log_level(), 4);
    assert_eq!(c.xdp.events_per_second, 0);
    assert_eq!(
        c.ratelimit(),
        Some(TokenBucket {
            cost_ns: 250_000_000,
            cap_ns: 2_500_000_000
        })
    );
    assert_eq!(
        c.limits,
        Limits {
            v4_long_groups: 1024,
            v6_entries: 1000,
            dynamic_entries: 5000,
            max_shrink_percent: 50,
        }
    );
    assert_eq!(c.metrics.listen, Some("[::1]:9999".parse().unwrap()));

    let names: Vec<(&str, u8)> = c
        .lists()
        .iter()
        .map(|l| (l.name.as_str(), l.action_code()))
        .collect();
    assert_eq!(
        names,
        [
            ("local", action::RESET),
            ("shadow.v2", action::OBSERVE),
            ("partners", action::ALLOW)
        ]
    );
    // Host bits masked, repeats dropped.
    let local: Vec<String> = c.lists[0].prefixes().map(|p| p.to_string()).collect();
    assert_eq!(
        local,
        ["203.0.113.0/24", "192.0.2.0/24", "2001:db8:bad::/48"]
    );
    assert_eq!(c.block_lists().count(), 2);
    assert_eq!(
        c.allow_lists().map(|l| &l.name).collect::<Vec<_>>(),
        ["partners"]
    );
}

#[test]
fn defaults() {
    let c = parse("[xdp]\ninterfaces = [\"eth0\"]\n").unwrap();
    assert_eq!(
        c.daemon,
        Daemon {
            state_dir: "/var/lib/prefilter".into(),
            socket: "/run/prefilter/control.sock".into(),
            socket_group: Some("prefilter".into()),
            bpffs: "/sys/fs/bpf".into(),
        }
    );
    assert_eq!(c.attach_mode(), AttachMode::Auto);
    assert_eq!(c.ports(), [25]);
    assert_eq!(c.log_level(), 0);
    assert_eq!(c.xdp.events_per_second, 100);
    assert_eq!(c.ratelimit(), None);
    assert_eq!(
        c.limits,
        Limits {
            v4_long_groups: 1 << 19,
            v6_entries: 262144,
            dynamic_entries: 262144,
            max_shrink_percent: 50,
        }
    );
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9750".parse().unwrap()));
    assert!(c.lists().is_empty());
    // No [proxy] section, no proxy.
    assert_eq!(c.proxy, None);

    // The documented defaults of the rate limit, once enabled.
    let c = parse("[xdp]\ninterfaces = [\"eth0\"]\nratelimit = { enabled = true }\n").unwrap();
    assert_eq!(
        c.ratelimit(),
        Some(TokenBucket {
            cost_ns: 200_000_000,
            cap_ns: 4_000_000_000
        })
    );
    let c = parse("[xdp]\ninterfaces = [\"eth0\"]\n[metrics]\nlisten = \"\"\n").unwrap();
    assert_eq!(c.metrics.listen, None);
}

#[test]
fn refusals() {
    struct Case {
        name: &'static str,
        toml: &'static str,
        /// (line, key, message)
        expected: &'static [(Option<usize>, &'static str, &'static str)],
    }
    #[rustfmt::skip]
    let cases = [
        Case {
            name: "unknown key",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\nport = [25]\n",
            expected: &[(Some(3), "xdp.port", "unknown field `port`, expected one of `interfaces`, `mode`, `ports`, `log_level`, `events_per_second`, `sample_every`, `ratelimit`")],
        },
        Case {
            name: "unknown section",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n\n[metric]\nlisten = \"\"\n",
            expected: &[(Some(4), "metric", "unknown field `metric`, expected one of `daemon`, `xdp`, `limits`, `metrics`, `proxy`, `dnsbl`, `escalation`, `block`, `allow`, `feeds`, `crowdsec`")],
        },
        Case {
            name: "unknown key in a list",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[[allow]]\nname = \"a\"\naction = \"drop\"\n",
            expected: &[(Some(5), "allow[0].action", "unknown field `action`, expected one of `name`, `prefixes`, `file`, `format`, `force`")],
        },
        Case {
            name: "a list named as the CLI's own",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nname = \"cli\"\nprefixes = [\"192.0.2.0/24\"]\n",
            expected: &[(Some(4), "block[0].name", "list name \"cli\" is the CLI's own (cli, cli-allow, cli-ttl): choose another name")],
        },
        Case {
            name: "a prefix matching every address",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nname = \"local\"\nprefixes = [\"192.0.2.0/24\", \"0.0.0.0/0\"]\n[[allow]]\nname = \"all6\"\nprefixes = [\"::/0\"]\n",
            expected: &[
                (Some(5), "block[0].prefixes[1]", "0.0.0.0/0 matches every address; add force = true to this list if you mean it"),
                (Some(8), "allow[0].prefixes[0]", "::/0 matches every address; add force = true to this list if you mean it"),
            ],
        },
        Case {
            name: "wrong type",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\nports = \"25\"\n",
            expected: &[(Some(3), "xdp.ports", "invalid type: string \"25\", expected a sequence")],
        },
        Case {
            name: "wrong element type",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\nports = [25, \"587\"]\n",
            expected: &[(Some(3), "xdp.ports[1]", "invalid type: string \"587\", expected i64")],
        },
        Case {
            name: "syntax error",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\nmode = skb\n",
            expected: &[(Some(3), "", "string values must be quoted, expected literal string")],
        },
        Case {
            name: "list without a name",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nprefixes = []\n",
            expected: &[(Some(3), "block[0]", "missing field `name`")],
        },
        Case {
            name: "bad CIDR",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nname = \"local\"\nprefixes = [\n  \"192.0.2.0/24\",\n  \"300.1.2.3/8\",\n  \"2001:db8::/129\",\n]\n",
            expected: &[
                (Some(7), "block[0].prefixes[1]", r#"invalid prefix "300.1.2.3/8": not an IP address"#),
                (Some(8), "block[0].prefixes[2]", r#"invalid prefix "2001:db8::/129": /129 is longer than the 128-bit address"#),
            ],
        },
        Case {
            name: "unknown and repeated interface",
            toml: "[xdp]\ninterfaces = [\"eth0\", \"eth9\", \"eth0\"]\n",
            expected: &[
                (Some(2), "xdp.interfaces[1]", r#"no interface "eth9" on this host"#),
                (Some(2), "xdp.interfaces[2]", r#"interface "eth0" is listed twice"#),
            ],
        },
        Case {
            name: "no interface, section written",
            toml: "[xdp]\nports = [25]\n",
            expected: &[(Some(1), "xdp.interfaces", "at least one interface is required")],
        },
        Case {
            name: "no interface, no section",
            toml: "",
            expected: &[(None, "xdp.interfaces", "at least one interface is required")],
        },
        Case {
            name: "ports 0, 70000, -1, duplicate, and none",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\nports = [\n  0,\n  70000,\n  25,\n  -1,\n  25,\n]\n",
            expected: &[
                (Some(4), "xdp.ports[0]", "0 is not a port (1-65535)"),
                (Some(5), "xdp.ports[1]", "70000 is not a port (1-65535)"),
                (Some(7), "xdp.ports[3]", "-1 is not a port (1-65535)"),
                (Some(8), "xdp.ports[4]", "port 25 is listed twice"),
            ],
        },
        Case {
            name: "empty port list",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\nports = []\n",
            expected: &[(Some(3), "xdp.ports", "at least one port is required")],
        },
        Case {
            name: "bad names of modes and levels",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\nmode = \"driver\"\nlog_level = \"verbose\"\nsample_every = -1\n",
            expected: &[
                (Some(3), "xdp.mode", r#""driver" is not an attach mode (auto, native, skb)"#),
                (Some(4), "xdp.log_level", r#""verbose" is not a log level (off, error, warn, info, debug, trace)"#),
                (Some(5), "xdp.sample_every", "-1 is out of range (0-4294967295)"),
            ],
        },
        Case {
            name: "impossible rate limit",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[xdp.ratelimit]\nenabled = true\nsyn_per_second = 0\nburst = 0\n",
            expected: &[
                (Some(5), "xdp.ratelimit.syn_per_second", "0 is out of range (1-1000000000)"),
                (Some(6), "xdp.ratelimit.burst", "0 is out of range (1-4294967295)"),
            ],
        },
        Case {
            name: "impossible limits",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[limits]\nv4_long_groups = 16777216\nv6_entries = 0\ndynamic_entries = 4294967296\n",
            expected: &[
                (Some(4), "limits.v4_long_groups", "16777216 is out of range (1-16777215)"),
                (Some(5), "limits.v6_entries", "0 is out of range (1-8388608)"),
                (Some(6), "limits.dynamic_entries", "4294967296 is out of range (1-4294967295)"),
            ],
        },
        Case {
            // The XDP program's verifier bounds each IPv6 table at 512 MiB.
            name: "IPv6 table past what the program can index",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[limits]\nv6_entries = 8388609\n",
            expected: &[(Some(4), "limits.v6_entries", "8388609 is out of range (1-8388608)")],
        },
        Case {
            name: "bad metrics address and relative paths",
            toml: "[daemon]\nstate_dir = \"state\"\n[xdp]\ninterfaces = [\"eth0\"]\n[metrics]\nlisten = \"localhost:9750\"\n",
            expected: &[
                (Some(2), "daemon.state_dir", r#""state" is not an absolute path"#),
                (Some(6), "metrics.listen", r#""localhost:9750" is not an address:port such as "127.0.0.1:9750" ("" disables)"#),
            ],
        },
        Case {
            name: "duplicate list name across block and allow, bad name",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nname = \"local\"\n[[block]]\nname = \"Local List\"\n[[allow]]\nname = \"local\"\n",
            expected: &[
                (Some(6), "block[1].name", r#""Local List" is not a list name (1 to 64 of a-z 0-9 _ . -)"#),
                (Some(8), "allow[0].name", r#"list name "local" is already used by block[0]"#),
            ],
        },
        Case {
            name: "unknown action",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nname = \"local\"\naction = \"block\"\n",
            expected: &[(Some(5), "block[0].action", r#""block" is not an action (drop, reset, tempfail, reject, observe)"#)],
        },
        Case {
            name: "unknown format, format without file",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nname = \"a\"\nformat = \"csv\"\n[[allow]]\nname = \"b\"\nformat = \"plain\"\n",
            expected: &[
                (Some(5), "block[0].format", r#"unknown list format "csv" (expected plain, spamhaus-drop or rbldnsd)"#),
                (Some(8), "allow[0].format", "format is set but there is no file"),
            ],
        },
        Case {
            name: "unreadable list file",
            toml: "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nname = \"a\"\nfile = \"/nonexistent/prefilter/a.list\"\n",
            expected: &[(Some(5), "block[0].file", "cannot read /nonexistent/prefilter/a.list: No such file or directory (os error 2)")],
        },
    ];
    for c in cases {
        let got = match parse(c.toml) {
            Ok(_) => panic!("{}: accepted", c.name),
            Err(e) => e,
        };
        let got: Vec<(Option<usize>, &str, &str)> = got
            .errors
            .iter()
            .map(|e| (e.line, e.key.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(got, c.expected, "{}", c.name);
    }
}

#[test]
fn display_names_file_line_and_key() {
    let e = parse("[xdp]\ninterfaces = [\"eth0\"]\nports = [25, 70000]\n\n[[block]]\nname = \"x\"\naction = \"nope\"\n")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "prefilter.toml:3: xdp.ports[1]: 70000 is not a port (1-65535)\n\
         prefilter.toml:7: block[0].action: \"nope\" is not an action (drop, reset, tempfail, reject, observe)"
    );
    let e = parse("").unwrap_err();
    assert_eq!(
        e.to_string(),
        "prefilter.toml: xdp.interfaces: at least one interface is required"
    );
}

#[test]
fn list_files_are_read_merged_and_checked() {
    let dir = TempDir::new("lists");
    dir.file("plain.list", "# ours\n192.0.2.0/24\n203.0.113.0/24\n");
    dir.file("drop.txt", "; Spamhaus DROP List\n198.51.100.0/24 ; SBL1\n");
    dir.file("rbl.data", ":127.0.0.2:listed\n10.1.2\n");
    dir.file("bad.list", "192.0.2.0/24\nnot-an-ip\n10.0.0.0/33\nx\n");
    dir.file("bad1.list", "x\n");
    let config = dir.file("prefilter.toml", "");
    let text = r#"[xdp]
interfaces = ["eth0"]
[[block]]
name = "plain"
prefixes = ["192.0.2.0/24", "2001:db8::/32"]
file = "plain.list"
[[block]]
name = "drop"
file = "drop.txt"
[[block]]
name = "rbl"
file = "rbl.data"
format = "rbldnsd"
"#;
    let c = Config::parse(text, &config, &iface).unwrap();
    let entries = |i: usize| -> Vec<String> {
        c.lists[i]
            .entries
            .iter()
            .map(|e| format!("{} {}", e.prefix, e.reason.as_deref().unwrap_or("-")))
            .collect()
    };
    // Inline first, then the file; the repeat of 192.0.2.0/24 is dropped.
    assert_eq!(
        entries(0),
        ["192.0.2.0/24 -", "2001:db8::/32 -", "203.0.113.0/24 -"]
    );
    assert_eq!(
        c.lists[0].file.as_deref(),
        Some(dir.0.join("plain.list").as_path())
    );
    assert_eq!(c.lists[0].format, None);
    // Detected as Spamhaus DROP.
    assert_eq!(entries(1), ["198.51.100.0/24 SBL1"]);
    // The zone's `:A:TXT` default text is its entries' reason.
    assert_eq!(entries(2), ["10.1.2.0/24 listed"]);
    assert_eq!(c.lists[2].format, Some(Format::Rbldnsd));

    let text = "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nname = \"a\"\nfile = \"bad.list\"\n[[allow]]\nname = \"b\"\nfile = \"bad1.list\"\n";
    let e = Config::parse(text, &config, &iface).unwrap_err();
    let got: Vec<(Option<usize>, &str, String)> = e
        .errors
        .iter()
        .map(|e| (e.line, e.key.as_str(), e.message.clone()))
        .collect();
    let bad = dir.0.join("bad.list");
    let bad1 = dir.0.join("bad1.list");
    assert_eq!(
        got,
        [
            (
                Some(5),
                "block[0].file",
                format!(
                    "{}:2: invalid prefix \"not-an-ip\": not an IP address (and 2 more bad lines)",
                    bad.display()
                )
            ),
            (
                Some(8),
                "allow[0].file",
                format!(
                    "{}:1: invalid prefix \"x\": not an IP address",
                    bad1.display()
                )
            ),
        ]
    );
}

#[test]
fn load_names_an_unreadable_file() {
    let e = Config::load(Path::new("/nonexistent/prefilter.toml"), &iface).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot read config /nonexistent/prefilter.toml: No such file or directory (os error 2)"
    );
    let dir = TempDir::new("load");
    let p = dir.file("prefilter.toml", "[xdp]\ninterfaces = [\"eth1\"]\n");
    assert_eq!(Config::load(&p, &iface).unwrap().xdp.interfaces, ["eth1"]);
}

#[test]
fn deploy_example_is_accepted() {
    let text = include_str!("../../../deploy/prefilter.toml");
    let c = Config::parse(text, Path::new("deploy/prefilter.toml"), &|_| true)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.xdp.interfaces.is_empty());
    assert_eq!(c.ports(), [25]);
}

/// `events_per_second` replaced `sample_every`; an older config still starts.
#[test]
fn event_budget_and_the_older_sample_every() {
    #[rustfmt::skip]
    let cases: [(&str, Result<u32, &str>); 6] = [
        ("", Ok(100)),
        ("events_per_second = 5\n", Ok(5)),
        ("events_per_second = 0\n", Ok(0)),
        ("sample_every = 0\n", Ok(0)),
        ("sample_every = 64\n", Ok(100)),
        ("events_per_second = 2000000\n", Err("xdp.events_per_second")),
    ];
    for (line, expected) in cases {
        let text = format!("[xdp]\ninterfaces = [\"eth0\"]\n{line}");
        match (parse(&text), expected) {
            (Ok(c), Ok(n)) => assert_eq!(c.xdp.events_per_second, n, "{line}"),
            (Err(e), Err(key)) => assert!(e.to_string().contains(key), "{line}: {e}"),
            (got, _) => panic!("{line}: {:?}", got.map(|c| c.xdp.events_per_second)),
        }
    }
}

#[test]
fn proxy_section() {
    let base = "[xdp]\ninterfaces = [\"eth0\"]\n";
    // Defaults: only the backends are required.
    let c = parse(&format!(
        "{base}[proxy]\nbackends = [\"127.0.0.1:10025\"]\n"
    ))
    .unwrap();
    let p = c.proxy.unwrap();
    assert_eq!(
        p.listen,
        [
            "0.0.0.0:25".parse::<SocketAddr>().unwrap(),
            "[::]:25".parse().unwrap()
        ]
    );
    assert_eq!(
        p.backends,
        [Backend {
            host: "127.0.0.1".into(),
            port: 10025
        }]
    );
    assert_eq!(p.proxy_protocol, ProxyProtocol::V2);
    assert!(!p.hostname.is_empty());
    assert!(p.tempfail_reply.starts_with("421 4.7.0 "));
    assert!(p.reject_reply.starts_with("554 5.7.1 "));
    assert_eq!(p.connect_timeout, std::time::Duration::from_secs(5));
    assert_eq!(p.idle_timeout, std::time::Duration::from_secs(300));
    assert_eq!((p.max_connections, p.max_per_client), (1000, 20));

    // Everything set.
    let c = parse(&format!(
        "{base}[proxy]\nlisten = [\"192.0.2.1:25\", \"[2001:db8::1]:2525\"]\n\
         backends = [\"[::1]:10025\", \"filter.example.org:25\"]\nproxy_protocol = \"v1\"\n\
         hostname = \"mx.example.org\"\ntempfail_reply = \"450 4.7.1 {{hostname}} later\"\n\
         reject_reply = \"550 5.7.1 {{client}} is on {{list}}\"\nconnect_timeout = 2\n\
         idle_timeout = 60\nshutdown_timeout = 3\nmax_connections = 5\nmax_per_client = 2\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let p = c.proxy.unwrap();
    assert_eq!(p.backends[0].to_string(), "[::1]:10025");
    assert_eq!(p.backends[1].to_string(), "filter.example.org:25");
    assert_eq!(p.proxy_protocol, ProxyProtocol::V1);
    assert_eq!(p.hostname, "mx.example.org");
    assert_eq!(p.reject_reply, "550 5.7.1 {client} is on {list}");
    assert_eq!((p.max_connections, p.max_per_client), (5, 2));

    // Every bad value, each with its key and line.
    let text = format!(
        "{base}[proxy]\nlisten = [\"192.0.2.1\", \"192.0.2.1:25\"]\nbackends = [\"nohost\", \"192.0.2.1:25\"]\n\
         proxy_protocol = \"v3\"\nhostname = \"bad host\"\ntempfail_reply = \"554 wrong class\"\n\
         reject_reply = \"554 5.7.1 {{nope}}\"\nconnect_timeout = 0\nmax_per_client = -1\n"
    );
    let e = parse(&text).unwrap_err();
    let got: Vec<(Option<usize>, &str)> =
        e.errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(4), "proxy.listen[0]"),
            (Some(5), "proxy.backends[0]"),
            (Some(5), "proxy.backends[1]"),
            (Some(6), "proxy.proxy_protocol"),
            (Some(7), "proxy.hostname"),
            (Some(8), "proxy.tempfail_reply"),
            (Some(9), "proxy.reject_reply"),
            (Some(10), "proxy.connect_timeout"),
            (Some(11), "proxy.max_per_client"),
        ],
        "{e}"
    );
    assert!(e.to_string().contains("the proxy would loop"), "{e}");
    // No backend at all.
    let e = parse(&format!("{base}[proxy]\n")).unwrap_err();
    assert_eq!(e.errors[0].key, "proxy.backends", "{e}");
    assert_eq!(e.errors[0].line, Some(3), "{e}");
}

#[test]
fn dnsbl_and_escalation() {
    let base = "[xdp]\ninterfaces = [\"eth0\"]\n";
    // A postscreen site list pasted as one string, postscreen's defaults elsewhere; inline
    // because there is no proxy.
    let c = parse(&format!(
        "{base}[dnsbl]\nsites = [\"zen.spamhaus.org=127.0.0.[2..11]*3, list.dnswl.org=127.0.[0..255].[1..3]*-2\"]\n\
         [escalation]\n"
    ))
    .unwrap();
    let d = c.dnsbl.unwrap();
    assert_eq!(d.sites.len(), 2);
    assert_eq!(d.sites[1].weight, -2);
    assert_eq!((d.threshold, d.allowlist_threshold), (1, 0));
    assert_eq!(
        (d.action, d.repeat_action),
        (Action::Reject, Some(Action::Drop))
    );
    assert_eq!(d.nameservers, vec!["127.0.0.1:53".parse().unwrap()]);
    assert_eq!(
        d.ports,
        vec![25],
        "submission ports are not judged unless listed"
    );
    assert!(d.inline);
    let e = c.escalation.unwrap();
    assert_eq!(
        (e.after, e.within.as_secs(), e.action),
        (5, 600, Action::Drop)
    );
    // With a proxy, lookups start from the proxy.
    let c = parse(&format!(
        "{base}[proxy]\nbackends = [\"127.0.0.1:10025\"]\n[dnsbl]\nsites = [\"bl.example\"]\nrepeat_action = \"none\"\nnameservers = [\"192.0.2.53\"]\n"
    ))
    .unwrap();
    let d = c.dnsbl.unwrap();
    assert!(!d.inline);
    assert_eq!(d.repeat_action, None);
    assert_eq!(d.nameservers, vec!["192.0.2.53:53".parse().unwrap()]);
    // Every bad value named by key and line in one run.
    let e = parse(&format!(
        "{base}[dnsbl]\nsites = []\nmin_ttl = 600\nmax_ttl = 60\naction = \"bounce\"\nports = [0]\n[escalation]\nafter = 0\n"
    ))
    .unwrap_err()
    .to_string();
    for want in [
        ":4: dnsbl.sites: at least one site",
        ":6: dnsbl.max_ttl: 60s is below min_ttl",
        ":7: dnsbl.action: \"bounce\" is not an action",
        ":8: dnsbl.ports[0]",
        ":10: escalation.after",
    ] {
        assert!(e.contains(want), "{want:?} not in\n{e}");
    }
}

/// The commented [dnsbl] and [escalation] examples of deploy/prefilter.toml are valid when
/// uncommented, so an administrator can start from them.
#[test]
fn deploy_dnsbl_example_parses_when_uncommented() {
    let text = include_str!("../../../deploy/prefilter.toml");
    let mut out = String::new();
    let mut on = false;
    for line in text.lines() {
        if line == "#[dnsbl]" || line == "#[escalation]" {
            on = true;
        } else if line.is_empty() {
            on = false;
        }
        match line.strip_prefix('#') {
            Some(l) if on && !l.starts_with(' ') => out.push_str(l),
            Some(l) if on && (l.starts_with("  \"") || l == "]") => out.push_str(l),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    let c = Config::parse(&out, Path::new("prefilter.toml"), &|_| true)
        .unwrap_or_else(|e| panic!("{e}\n{out}"));
    let d = c.dnsbl.expect("[dnsbl] uncommented");
    assert_eq!(d.sites.len(), 7);
    assert_eq!((d.threshold, d.allowlist_threshold), (3, -1));
    assert!(c.escalation.is_some());
}

#[test]
fn proxy_screening_keys() {
    let base = "[xdp]\ninterfaces = [\"eth0\"]\n[proxy]\nbackends = [\"127.0.0.1:10025\"]\n";
    // Defaults: reject at once, no pregreet test, backends in order.
    let p = parse(base).unwrap().proxy.unwrap();
    assert_eq!(p.reject_at, RejectAt::Connect);
    assert_eq!(p.greet_wait, None);
    assert_eq!(p.greet_action, Action::Reject);
    assert_eq!(p.greet_ttl, std::time::Duration::from_secs(3600));
    assert_eq!(p.balance, Balance::Order);
    assert_eq!(p.backlog, 1024);
    assert!(p.rcpt_reply.starts_with("550 5.7.1 "));

    let p = parse(&format!(
        "{base}reject_at = \"rcpt\"\ngreet_wait = \"1500ms\"\ngreet_action = \"drop\"\n\
         greet_ttl = \"2h\"\nbalance = \"round-robin\"\nrcpt_reply = \"550 5.7.1 no ({{list}})\"\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
    .proxy
    .unwrap();
    assert_eq!(p.reject_at, RejectAt::Rcpt);
    assert_eq!(p.greet_wait, Some(std::time::Duration::from_millis(1500)));
    assert_eq!(p.greet_action, Action::Drop);
    assert_eq!(p.greet_ttl, std::time::Duration::from_secs(7200));
    assert_eq!(p.balance, Balance::RoundRobin);
    // Whole seconds as a number work too.
    let p = parse(&format!("{base}greet_wait = 6\n"))
        .unwrap()
        .proxy
        .unwrap();
    assert_eq!(p.greet_wait, Some(std::time::Duration::from_secs(6)));

    let e = parse(&format!(
        "{base}reject_at = \"data\"\ngreet_wait = \"2x\"\ngreet_action = \"observe\"\n\
         greet_ttl = 0\nbalance = \"random\"\nrcpt_reply = \"450 4.7.1 later\"\n"
    ))
    .unwrap_err();
    let got: Vec<(Option<usize>, &str)> =
        e.errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(5), "proxy.reject_at"),
            (Some(6), "proxy.greet_wait"),
            (Some(7), "proxy.greet_action"),
            (Some(8), "proxy.greet_ttl"),
            (Some(9), "proxy.balance"),
            (Some(10), "proxy.rcpt_reply"),
        ]
    );
}

#[test]
fn feeds_and_crowdsec() {
    let dir = TempDir::new("feeds");
    let key = dir.file("bouncer.key", "abc123\n");
    let creds = dir.file(
        "creds.yaml",
        "url: http://127.0.0.1:8080\nlogin: mx1\npassword: s3cret\n",
    );
    let text = format!(
        r#"
[xdp]
interfaces = ["eth0"]

[limits]
max_shrink_percent = 30

[[feeds]]
name = "drop"
source = "https://www.example.net/drop_v4.json"
format = "spamhaus-drop-json"

[[feeds]]
name = "scores"
source = "file:///var/lib/lists/scores.csv"
format = "csv"
interval = 600
max_entries = 1000
max_shrink_percent = 10
thresholds = [{{ score = 50, action = "tempfail" }}, {{ score = 90, action = "drop" }}]

[[feeds]]
name = "lapi"
source = "http://127.0.0.1:8080/"
format = "crowdsec"
action = "reset"
interval = "10s"
api_key_file = "{}"

[crowdsec]
url = "http://127.0.0.1:8080"
credentials_file = "{}"
report = ["dnsbl", "cli"]
"#,
        key.display(),
        creds.display()
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.feeds.len(), 3);
    let f = &c.feeds[0];
    assert_eq!(f.format, FeedFormat::List(Format::SpamhausDrop));
    assert_eq!(f.format_name, "spamhaus-drop-json", "shown as configured");
    assert_eq!(f.interval, std::time::Duration::from_secs(3600));
    assert_eq!(f.action, Action::Drop);
    assert_eq!(f.action_label(), "drop");
    assert!((f.max_shrink - 0.3).abs() < 1e-9, "the [limits] default");
    let f = &c.feeds[1];
    assert_eq!(
        f.source,
        FeedSource::File("/var/lib/lists/scores.csv".into())
    );
    assert_eq!(
        f.thresholds,
        [(90.0, Action::Drop), (50.0, Action::Tempfail)]
    );
    // Not the unused `action` default: the thresholds decide.
    assert_eq!(f.action_label(), "score>=90 drop, score>=50 tempfail");
    assert_eq!(f.max_entries, Some(1000));
    assert!((f.max_shrink - 0.1).abs() < 1e-9);
    let f = &c.feeds[2];
    assert_eq!(f.source, FeedSource::Http("http://127.0.0.1:8080".into()));
    assert_eq!(f.api_key.as_deref(), Some("abc123"));
    assert_eq!(f.interval, std::time::Duration::from_secs(10));
    let cs = c.crowdsec.expect("[crowdsec]");
    assert_eq!(
        (cs.machine_id.as_str(), cs.password.as_str()),
        ("mx1", "s3cret")
    );
    assert_eq!(cs.report, ["dnsbl", "cli"]);
}

#[test]
fn feed_refusals_name_every_key() {
    let text = r#"[xdp]
interfaces = ["eth0"]
[[block]]
name = "drop"
[[feeds]]
name = "drop"
source = "ftp://example.net/x"
format = "csv"
interval = "5m"
[[feeds]]
name = "cs"
source = "https://lapi.example.net"
format = "crowdsec"
interval = "1s"
thresholds = [{ score = 1, action = "drop" }]
[[feeds]]
name = "p"
source = "http://example.net/p"
format = "plain"
interval = "1 hour"
api_key = "k"
[crowdsec]
url = "lapi:8080"
report = ["everything"]
"#;
    let e = parse(text).unwrap_err();
    let got: Vec<(Option<usize>, &str, &str)> = e
        .errors
        .iter()
        .map(|e| (e.line, e.key.as_str(), e.message.as_str()))
        .collect();
    #[rustfmt::skip]
    let want: Vec<(Option<usize>, &str, &str)> = vec![
        // A missing key is named at its table's line.
        (Some(5), "feeds[0].thresholds", "a csv feed needs thresholds, e.g. [{ score = 80, action = \"drop\" }]"),
        (Some(6), "feeds[0].name", "name \"drop\" is already used by another list or feed"),
        (Some(7), "feeds[0].source", "\"ftp://example.net/x\" is not an http://, https:// or file:// URL"),
        (Some(10), "feeds[1].api_key", "a crowdsec feed needs a bouncer key (api_key or api_key_file; cscli bouncers add NAME)"),
        (Some(14), "feeds[1].interval", "1s is too short for a crowdsec feed (at least 10s)"),
        (Some(15), "feeds[1].thresholds", "thresholds apply to csv feeds only"),
        (Some(20), "feeds[2].interval", "\"1 hour\" is not a duration such as \"90s\", \"30m\", \"1h\""),
        (Some(21), "feeds[2].api_key", "api_key applies to crowdsec feeds only"),
        (Some(22), "crowdsec", "needs machine_id and password, or credentials_file (cscli machines add NAME -f FILE)"),
        (Some(23), "crowdsec.url", "\"lapi:8080\" is not an http:// or https:// URL"),
        (Some(24), "crowdsec.report[0]", "\"everything\" is not a learned source (dnsbl, escalation, pregreet, cli)"),
    ];
    assert_eq!(got, want);
}

#[test]
fn a_bogon_list_still_loads() {
    // Prefixes shorter than /8 or /16 are warned of, not refused: a config that started
    // before an upgrade starts after it.
    let c = parse(
        "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nname = \"bogons\"\nprefixes = [\"240.0.0.0/4\", \"fc00::/7\"]\n",
    )
    .unwrap();
    assert_eq!(c.lists[0].entries.len(), 2);
}

#[test]
fn a_broad_prefix_is_taken_with_force() {
    let c = parse(
        "[xdp]\ninterfaces = [\"eth0\"]\n[[block]]\nname = \"all\"\nforce = true\nprefixes = [\"0.0.0.0/0\"]\n",
    )
    .unwrap();
    assert_eq!(c.lists[0].entries.len(), 1);
}

#[test]
fn the_reserved_names_are_the_daemons_cli_lists() {
    use crate::daemon::{CLI_ALLOW_LIST, CLI_LIST, CLI_TTL_LIST};
    assert_eq!(RESERVED_LISTS, [CLI_LIST, CLI_ALLOW_LIST, CLI_TTL_LIST]);
}

/// cscli writes the machine's password as YAML quotes it; a garbled file is refused, not
/// read as a login of `[mx`.
#[test]
fn credentials_files_are_read_as_yaml() {
    let ok = read_credentials("url: http://127.0.0.1:8080\nlogin: mx1\npassword: 'p\"w: #1''x'\n")
        .expect("a cscli file");
    assert_eq!(
        ok,
        (
            "http://127.0.0.1:8080".to_owned(),
            "mx1".to_owned(),
            "p\"w: #1'x".to_owned()
        )
    );
    let plain = read_credentials("url: http://lapi:8080/\nlogin: mx2\npassword: s3cret\n")
        .expect("unquoted");
    assert_eq!(plain.2, "s3cret");
    for bad in [
        "url: http://x\nlogin: [mxa\npassword: {{\n",
        "url: http://x\nlogin: mx\n",
        "just text",
        "",
    ] {
        assert!(read_credentials(bad).is_err(), "{bad:?} refused");
    }
}

/// A feed named like one of the CLI's lists would replace what the CLI put there at its
/// first fetch: refused, naming the key.
#[test]
fn a_feed_may_not_take_a_cli_list_name() {
    for name in RESERVED_LISTS {
        let text = format!(
            "[xdp]\ninterfaces = [\"eth0\"]\n[[feeds]]\nname = \"{name}\"\nsource = \"file:///dev/null\"\nformat = \"plain\"\n"
        );
        let e = parse(&text)
            .err()
            .unwrap_or_else(|| panic!("feed {name} accepted"));
        let e = e.to_string();
        assert!(
            e.contains("feeds[0].name") && e.contains("CLI's own list"),
            "feed {name}: {e}"
        );
    }
}
