//! `cargo xtask setup`: makes sure what the build and the tests need is installed.
//!
//! Every other task starts with it, so it checks first and acts only on what is missing: with
//! everything present it costs a few cheap queries, not an `apt-get update`.
use std::{
    collections::HashSet,
    env, fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{probe, require_root, run, run_with_input};

/// What the eBPF build needs: bpf-linker links against Debian's LLVM 22, the LLVM of the nightly
/// rustc that emits the bitcode. Without these nothing builds, so their absence is an error.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Real peers the end-to-end tests start themselves (design.md, "Testing on these machines");
/// iputils-ping is for the lab. A missing one only fails the tests that need it.
const PEER_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    "tcpdump",
    "postfix",
    "swaks",
    // swaks --tls / --tlsc (STARTTLS and implicit TLS through the proxy).
    "libnet-ssleay-perl",
    "libio-socket-ssl-perl",
    "openssl",
    "rbldnsd",
    "nftables",
    "xdp-tools",
    "bpftool",
    "prometheus",
    "netsniff-ng",
    // The font `cargo xtask bench` labels its PNG plots with.
    "fonts-dejavu-core",
];

/// rust-src for `-Z build-std=core`, which aya-build uses for bpfel-unknown-none; clippy to
/// lint the eBPF crate on that target.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

/// For `cargo xtask test`'s lint step on the host crates.
const ACTIVE_COMPONENTS: &[&str] = &["clippy", "rustfmt"];

/// Pinned so a fresh machine gets the linker this workspace was last built with.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn setup() -> Result<()> {
    report(
        "nightly toolchain",
        ensure_components(Some("nightly"), NIGHTLY_COMPONENTS)?,
    );
    report(
        "active toolchain",
        ensure_components(None, ACTIVE_COMPONENTS)?,
    );
    report("debian packages", ensure_packages()?);
    report("bpf-linker", ensure_bpf_linker()?);
    report("cargo-deb", ensure_cargo_deb()?);
    report("crowdsec (extracted)", ensure_crowdsec()?);
    Ok(())
}

/// Where the CrowdSec tests find the package: `tests/src/crowdsec.rs` reads the same path.
const CROWDSEC_CACHE: &str = "/var/cache/prefilter-tests/crowdsec";

/// Debian's crowdsec, downloaded and extracted, never installed: its post-install step
/// registers with the online Central API, which test machines cannot reach. The feed and
/// fleet tests run its LAPI from the extraction.
fn ensure_crowdsec() -> Result<String> {
    let cache = Path::new(CROWDSEC_CACHE);
    let root = cache.join("root");
    if root.join("usr/bin/crowdsec").exists() && root.join("etc/crowdsec/config.yaml").exists() {
        return Ok(format!("ok ({})", root.display()));
    }
    require_root("setup")?;
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let deb = || -> Option<PathBuf> {
        fs::read_dir(cache)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
    };
    if deb().is_none() {
        if !has_candidate("crowdsec")? {
            println!("setup: warning: crowdsec is not available from apt; the CrowdSec tests fail");
            return Ok("NOT available".into());
        }
        run(apt_get().args(["download", "crowdsec"]).current_dir(cache))?;
    }
    let deb = deb().context("apt-get download crowdsec left no .deb")?;
    let tmp = cache.join("root.setup");
    let _ = fs::remove_dir_all(&tmp);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    fs::rename(&tmp, &root).with_context(|| format!("renaming to {}", root.display()))?;
    Ok(format!(
        "extracted {} into {}",
        deb.display(),
        root.display()
    ))
}

fn report(item: &str, outcome: String) {
    println!("setup: {item}: {outcome}");
}

fn rustup(toolchain: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(args);
    if let Some(toolchain) = toolchain {
        cmd.args(["--toolchain", toolchain]);
    }
    // Without --toolchain, rustup answers for the toolchain cargo uses in the workspace.
    cmd.current_dir(crate::cmd::workspace_root());
    cmd
}

/// Installs `toolchain` (None: the active one, which must exist) and its missing `components`.
fn ensure_components(toolchain: Option<&str>, components: &[&str]) -> Result<String> {
    let listed = probe(&mut rustup(
        toolchain,
        &["component", "list", "--installed"],
    ))?;
    let mut done = Vec::new();
    if !listed.status.success() {
        let Some(toolchain) = toolchain else {
            bail!(
                "`rustup component list --installed` failed: is a default toolchain set? {}",
                String::from_utf8_lossy(&listed.stderr).trim()
            );
        };
        run(&mut rustup(
            None,
            &["toolchain", "install", toolchain, "--profile", "minimal"],
        ))?;
        done.push(toolchain.to_owned());
    }
    let listed = String::from_utf8_lossy(&listed.stdout);
    // Host-specific components are listed with their target: `clippy-x86_64-unknown-linux-gnu`.
    let has = |c: &str| {
        listed
            .lines()
            .any(|l| l == c || l.strip_prefix(c).is_some_and(|t| t.starts_with('-')))
    };
    let missing: Vec<&str> = components.iter().copied().filter(|c| !has(c)).collect();
    if missing.is_empty() {
        return Ok(format!("ok ({})", components.join(", ")));
    }
    let mut add = vec!["component", "add"];
    add.extend(&missing);
    run(&mut rustup(toolchain, &add))?;
    done.extend(missing.iter().map(|c| c.to_string()));
    Ok(format!("installed {}", done.join(", ")))
}

fn ensure_packages() -> Result<String> {
    let wanted: Vec<&str> = BUILD_PACKAGES
        .iter()
        .chain(PEER_PACKAGES)
        .copied()
        .collect();
    let installed = installed_packages(&wanted)?;
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !installed.contains(*p))
        .collect();
    if missing.is_empty() {
        return Ok(format!("ok ({} packages)", wanted.len()));
    }
    require_root("setup")?;
    println!("setup: debian packages: missing {}", missing.join(" "));
    run(apt_get().arg("update"))?;

    let mut available = Vec::new();
    let mut unavailable = Vec::new();
    for pkg in missing {
        if has_candidate(pkg)? {
            available.push(pkg);
        } else if BUILD_PACKAGES.contains(&pkg) {
            bail!("{pkg} has no install candidate in apt, and the eBPF build cannot do without it");
        } else {
            println!("setup: warning: {pkg} is not available from apt; tests that need it fail");
            unavailable.push(pkg);
        }
    }
    if !available.is_empty() {
        install(&available)?;
    }
    let mut outcome = format!("installed {}", available.join(" "));
    if !unavailable.is_empty() {
        outcome += &format!("; NOT available: {}", unavailable.join(" "));
    }
    Ok(outcome)
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Which of `packages` dpkg reports as fully installed, in one query.
fn installed_packages(packages: &[&str]) -> Result<HashSet<String>> {
    // dpkg-query exits 1 when it has never heard of one of them; the rest are still listed.
    let out = probe(
        Command::new("dpkg-query")
            // dpkg-query expands the `\n` itself; a real newline would garble the echoed command.
            .args(["-W", "-f", r"${Package} ${Status}\n"])
            .args(packages),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| *status == "install ok installed")
        .map(|(name, _)| name.to_owned())
        .collect())
}

fn has_candidate(pkg: &str) -> Result<bool> {
    let out = probe(Command::new("apt-cache").args(["policy", pkg]))?;
    let policy = String::from_utf8_lossy(&out.stdout);
    let candidate = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim);
    Ok(candidate.is_some_and(|c| c != "(none)"))
}

fn install(packages: &[&str]) -> Result<()> {
    let postfix = packages.contains(&"postfix");
    if postfix {
        // Its debconf questions would otherwise stop a non-interactive install; the tests
        // write their own main.cf per instance, so the system one stays unconfigured.
        run_with_input(
            &mut Command::new("debconf-set-selections"),
            "postfix postfix/main_mailer_type select No configuration\n\
             postfix postfix/mailname string mx.prefilter.test\n",
        )?;
    }
    {
        let _blocked = ServiceStartsBlocked::new()?;
        run(apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages))?;
    }
    if postfix {
        // The tests start their own postfix instances on their own addresses; a system one on
        // port 25 of the host must not be left behind. Not running is the expected answer here.
        let _ = probe(Command::new("postfix").arg("stop"));
    }
    Ok(())
}

/// While alive, forbids maintainer scripts to start services (postfix, rbldnsd, prometheus):
/// invoke-rc.d asks /usr/sbin/policy-rc.d first and exit code 101 means "action forbidden"
/// (/usr/share/doc/init-system-helpers/README.policy-rc.d). The tests start their own
/// instances; system-wide daemons would only hold ports and CPU.
struct ServiceStartsBlocked {
    /// Only a file we wrote is ours to remove; an existing policy is left as it is.
    created: Option<&'static Path>,
}

impl ServiceStartsBlocked {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn new() -> Result<Self> {
        let path = Path::new(Self::PATH);
        if path.exists() {
            return Ok(Self { created: None });
        }
        eprintln!("+ # write {} (exit 101) for the install", Self::PATH);
        fs::write(
            path,
            "#!/bin/sh\n# cargo xtask setup: no service starts during install\nexit 101\n",
        )
        .with_context(|| format!("writing {}", Self::PATH))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            created: Some(path),
        })
    }
}

impl Drop for ServiceStartsBlocked {
    fn drop(&mut self) {
        if let Some(path) = self.created {
            eprintln!("+ rm {}", path.display());
            if let Err(e) = fs::remove_file(path) {
                eprintln!("setup: warning: cannot remove {}: {e}", path.display());
            }
        }
    }
}

fn ensure_bpf_linker() -> Result<String> {
    match linker_version(Path::new("bpf-linker")) {
        Ok(version) => match stale_reason(&version) {
            None => return Ok(format!("ok ({version})")),
            Some(why) => println!("setup: bpf-linker: `{version}` {why}; reinstalling"),
        },
        Err(e) => println!("setup: bpf-linker: not usable ({e:#}); installing"),
    }
    let mut install = Command::new("cargo");
    install
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        // --force: an existing but broken or stale binary of the same version must be rebuilt.
        .args(["--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{LLVM_MAJOR}"))
        // bpf-linker's build script reads LLVM_PREFIX; llvm-sys 221 reads its own variable.
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        // Outside the workspace, so its .cargo/config.toml cannot change how the tool builds.
        .current_dir(env::temp_dir());
    run(&mut install)?;

    let installed = install_root().join("bin/bpf-linker");
    let version = linker_version(&installed)?;
    if which("bpf-linker").as_deref() != Some(installed.as_path()) {
        println!(
            "setup: warning: {} is not the first bpf-linker on PATH",
            installed.display()
        );
    }
    Ok(format!("installed {version} at {}", installed.display()))
}

/// First line of `bpf-linker --version`; an error if it does not run (missing, or its
/// libLLVM gone).
fn linker_version(linker: &Path) -> Result<String> {
    let out = probe(Command::new(linker).arg("--version"))?;
    if !out.status.success() {
        bail!(
            "`{} --version` {}: {}",
            linker.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().next().unwrap_or_default().trim().to_owned())
}

/// Why an installed bpf-linker cannot link the nightly's LLVM 22 bitcode, if we can tell.
fn stale_reason(version: &str) -> Option<String> {
    if let Some(major) = llvm_major(version) {
        return (major != LLVM_MAJOR).then(|| format!("uses LLVM {major}, not {LLVM_MAJOR}"));
    }
    // 0.13 prints no LLVM version; cargo's install record says which llvm-NN feature it has.
    (installed_with_llvm_feature() == Some(false))
        .then(|| format!("was installed without the llvm-{LLVM_MAJOR} feature"))
}

/// The major number after "LLVM" in `text` ("LLVM 22.1.8", "LLVM version: 22"), if any.
fn llvm_major(text: &str) -> Option<u32> {
    let lower = text.to_ascii_lowercase();
    let after = &lower[lower.find("llvm")? + "llvm".len()..];
    let digits: String = after
        .trim_start_matches(|c: char| !c.is_ascii_digit() && c != '\n')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// From cargo's `.crates2.json`: whether the recorded bpf-linker install has our llvm feature.
/// None when there is no record (installed some other way), which we then trust.
fn installed_with_llvm_feature() -> Option<bool> {
    let record = fs::read_to_string(install_root().join(".crates2.json")).ok()?;
    let entry = &record[record.find("\"bpf-linker ")?..];
    // An entry is a flat object: its end is the first closing brace.
    let entry = &entry[..entry.find('}')?];
    Some(entry.contains(&format!("\"llvm-{LLVM_MAJOR}\"")))
}

/// Where `cargo install` puts binaries and its records, by cargo's own precedence.
fn install_root() -> PathBuf {
    env::var_os("CARGO_INSTALL_ROOT")
        .or_else(|| env::var_os("CARGO_HOME"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// cargo-deb for `cargo xtask package` (and the package test `cargo xtask test` runs).
fn ensure_cargo_deb() -> Result<String> {
    let have = probe(Command::new("cargo").args(["deb", "--version"]));
    if have.is_ok_and(|o| o.status.success()) {
        return Ok("ok".into());
    }
    run(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))?;
    Ok("installed".into())
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_versions() {
        struct Case {
            text: &'static str,
            major: Option<u32>,
        }
        for case in [
            Case {
                text: "bpf-linker 0.13.0",
                major: None,
            },
            Case {
                text: "bpf-linker 0.14.0 (LLVM 22.1.8)",
                major: Some(22),
            },
            Case {
                text: "LLVM version: 21.1.2",
                major: Some(21),
            },
            Case {
                text: "llvm\n22",
                major: None,
            },
        ] {
            assert_eq!(llvm_major(case.text), case.major, "{}", case.text);
        }
    }
}
