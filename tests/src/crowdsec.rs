//! A real CrowdSec Local API (Debian's `crowdsec` package) for feed and fleet tests.
//!
//! The package is never installed: its post-install step registers with the online Central
//! API, which is unreachable here. [`ensure_extracted`] runs `apt-get download crowdsec` and
//! `dpkg-deb -x` once into [`CACHE`] (`cargo xtask setup` does the same), and [`Lapi::start`]
//! runs `crowdsec -no-cs` (the LAPI alone) inside a test's namespace with a copy of the
//! packaged config.yaml: its own config, data and log directories, no `online_client`, no
//! Prometheus listener, and the listen address the test chose. Killed by pid and its
//! directory removed on drop, also when the test panics.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::daemon::{CmdOutput, poll, run_bounded};

/// Where the .deb and its extraction are kept between runs.
pub const CACHE: &str = "/var/cache/prefilter-tests/crowdsec";

/// The extracted package root (`usr/bin/crowdsec`, `etc/crowdsec/config.yaml`), downloading
/// and extracting it first if needed.
pub fn ensure_extracted() -> PathBuf {
    let cache = Path::new(CACHE);
    let root = cache.join("root");
    if root.join("usr/bin/crowdsec").exists() && root.join("etc/crowdsec/config.yaml").exists() {
        return root;
    }
    fs::create_dir_all(cache).expect("create the crowdsec cache");
    let deb = || {
        fs::read_dir(cache)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
    };
    if deb().is_none() {
        let mut c = Command::new("apt-get");
        c.args(["download", "crowdsec"]).current_dir(cache);
        let out = run_bounded(c, Duration::from_secs(300));
        assert_eq!(out.code, 0, "apt-get download crowdsec: {}", out.both());
    }
    let deb = deb().expect("the crowdsec .deb");
    let tmp = cache.join(format!("root.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let mut c = Command::new("dpkg-deb");
    c.arg("-x").arg(&deb).arg(&tmp);
    let out = run_bounded(c, Duration::from_secs(120));
    assert_eq!(out.code, 0, "dpkg-deb -x: {}", out.both());
    // Renamed whole, so a concurrent test never sees half an extraction.
    if fs::rename(&tmp, &root).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    root
}

/// A running LAPI.
pub struct Lapi {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub config: PathBuf,
    netns: String,
    root: PathBuf,
    child: Option<Child>,
}

impl Lapi {
    /// Starts the LAPI in namespace `netns`, listening on `listen`; waits (bounded) until it
    /// accepts connections. Adds a machine `cscli` for the cscli commands.
    pub fn start(netns: &str, listen: SocketAddr) -> Self {
        let root = ensure_extracted();
        let dir = crate::scratch_dir("crowdsec", "pfcs");
        for sub in ["etc", "data", "hub", "log"] {
            fs::create_dir_all(dir.join(sub)).expect("create the LAPI directories");
        }
        let etc = dir.join("etc");
        for e in fs::read_dir(root.join("etc/crowdsec")).expect("packaged config") {
            let p = e.expect("entry").path();
            if p.is_file() {
                fs::copy(&p, etc.join(p.file_name().expect("name"))).expect("copy config");
            }
        }
        let packaged = fs::read_to_string(root.join("etc/crowdsec/config.yaml"))
            .expect("packaged config.yaml");
        let config = dir.join("config.yaml");
        fs::write(&config, lapi_config(&packaged, &dir, &root, listen)).expect("write config");
        let mut lapi = Self {
            dir,
            listen,
            config,
            netns: netns.to_owned(),
            root,
            child: None,
        };
        let creds = lapi.dir.join("etc/local_api_credentials.yaml");
        let out = lapi.cscli(&[
            "machines",
            "add",
            "cscli",
            "--password",
            "cscli-test-password",
            "-f",
            creds.to_str().expect("UTF-8"),
        ]);
        assert_eq!(out.code, 0, "cscli machines add: {}", out.both());
        let log = fs::File::create(lapi.dir.join("crowdsec.log")).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(lapi.root.join("usr/bin/crowdsec"))
            .arg("-c")
            .arg(&lapi.config)
            .arg("-no-cs")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start crowdsec");
        lapi.child = Some(child);
        let up = poll(Duration::from_secs(30), || {
            crate::daemon::in_netns(netns, || {
                TcpStream::connect_timeout(&listen, Duration::from_millis(200)).ok()
            })
        });
        assert!(
            up.is_some(),
            "the LAPI did not listen on {listen}:\n{}",
            lapi.log()
        );
        lapi
    }

    /// The LAPI's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("crowdsec.log")).unwrap_or_default()
    }

    /// The LAPI's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// `cscli -c CONFIG args...` in the LAPI's namespace.
    pub fn cscli(&self, args: &[&str]) -> CmdOutput {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(self.root.join("usr/bin/cscli"))
            .arg("-c")
            .arg(&self.config)
            .args(args);
        run_bounded(c, Duration::from_secs(60))
    }

    /// `cscli bouncers add NAME -o raw`: the bouncer's API key.
    pub fn add_bouncer(&self, name: &str) -> String {
        let out = self.cscli(&["bouncers", "add", name, "-o", "raw"]);
        assert_eq!(out.code, 0, "cscli bouncers add: {}", out.both());
        out.stdout.trim().to_owned()
    }

    /// `cscli machines add NAME --password P -f FILE`: the credentials file it wrote.
    pub fn add_machine(&self, name: &str, password: &str) -> PathBuf {
        let f = self.dir.join(format!("{name}.credentials.yaml"));
        let out = self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            password,
            "-f",
            f.to_str().expect("UTF-8"),
        ]);
        assert_eq!(out.code, 0, "cscli machines add: {}", out.both());
        f
    }

    /// `cscli decisions add --ip IP --duration D`.
    pub fn add_decision(&self, ip: &str, duration: &str) {
        let out = self.cscli(&["decisions", "add", "--ip", ip, "--duration", duration]);
        assert_eq!(out.code, 0, "cscli decisions add: {}", out.both());
    }

    /// `cscli decisions delete --ip IP`.
    pub fn delete_decision(&self, ip: &str) {
        let out = self.cscli(&["decisions", "delete", "--ip", ip]);
        assert_eq!(out.code, 0, "cscli decisions delete: {}", out.both());
    }

    /// `cscli decisions list -o json` as text (the decisions the LAPI holds).
    pub fn decisions(&self) -> String {
        self.cscli(&["decisions", "list", "-o", "json"]).stdout
    }
}

/// The packaged config.yaml made private: paths under `dir`, the plugins of the
/// extraction, no daemonizing, no Central API, no Prometheus listener, our listen address.
fn lapi_config(packaged: &str, dir: &Path, root: &Path, listen: SocketAddr) -> String {
    let d = dir.display();
    let mut out = String::new();
    let mut skip_indent: Option<usize> = None;
    for line in packaged.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(i) = skip_indent {
            if line.trim().is_empty() || indent > i {
                continue;
            }
            skip_indent = None;
        }
        let t = line.trim_start();
        // The Central API block and the metrics listener are dropped whole.
        if t.starts_with("online_client:") || t.starts_with("prometheus:") {
            skip_indent = Some(indent);
            continue;
        }
        let line = line
            .replace("/etc/crowdsec/", &format!("{d}/etc/"))
            .replace("/var/lib/crowdsec/data/", &format!("{d}/data/"))
            .replace("/var/lib/crowdsec/hub/", &format!("{d}/hub/"))
            .replace("/var/log/", &format!("{d}/log/"))
            .replace(
                "/usr/lib/crowdsec/plugins/",
                &format!("{}/usr/lib/crowdsec/plugins/", root.display()),
            )
            .replace("daemonize: true", "daemonize: false");
        let line = if t.starts_with("listen_uri:") {
            format!("{}listen_uri: {listen}", " ".repeat(indent))
        } else {
            line
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("prometheus:\n  enabled: false\n");
    out
}

impl Drop for Lapi {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // nsenter execs crowdsec: this pid is the LAPI itself.
            // SAFETY: kill on a pid we started and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let stopped = poll(Duration::from_secs(10), || c.try_wait().ok().flatten());
            if stopped.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
