//! `cargo xtask test`: what CI runs. Lints, builds, then runs every test as root.
use std::ffi::OsString;

use anyhow::Result;
use clap::Args;

use crate::{
    build,
    cmd::{cargo, require_root, run},
    setup,
};

/// The eBPF crate is `no_std` for bpfel-unknown-none: on the host it does not even compile
/// (no unwinding without std), so host-wide commands leave it out and it is linted on its
/// own target instead.
const EBPF_CRATE: &str = "prefilter-ebpf";

#[derive(Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Threads per test binary, passed to the test harness; default: cargo's.
    #[arg(long, value_name = "N")]
    test_threads: Option<usize>,
    /// Passed to `cargo test` as they are: a name filter, `--test smoke`, or `-- --nocapture`.
    #[arg(last = true)]
    cargo_args: Vec<OsString>,
}

pub fn test(args: &TestArgs) -> Result<()> {
    // Checked first: the network tests cannot pass without it, so fail before a long build.
    require_root("test")?;
    setup::setup()?;
    if !args.no_lint {
        lint()?;
    }
    let bin = build::build_agent()?;
    // tests/tests/package.rs installs it with dpkg.
    crate::package::package_built(&bin)?;
    run(cargo()
        .args(["test", "--release", "--workspace", "--exclude", EBPF_CRATE])
        .args(cargo_test_args(args)))
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo()
        .args(["clippy", "--workspace", "--exclude", EBPF_CRATE])
        .args(["--release", "--all-targets", "--", "-D", "warnings"]))?;
    // Same toolchain and build-std as aya-build uses for the real object.
    run(cargo()
        .args(["+nightly", "clippy", "-p", EBPF_CRATE, "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]))
}

/// The user's cargo arguments, with `--test-threads` appended for the harness: after their
/// own `--` if they gave one, else after a new one.
fn cargo_test_args(args: &TestArgs) -> Vec<OsString> {
    let mut out = args.cargo_args.clone();
    if let Some(threads) = args.test_threads {
        if !out.iter().any(|a| a == "--") {
            out.push("--".into());
        }
        out.push(format!("--test-threads={threads}").into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{TestArgs, cargo_test_args};

    #[test]
    fn test_threads_go_to_the_harness() {
        struct Case {
            cargo_args: &'static [&'static str],
            threads: Option<usize>,
            expected: &'static [&'static str],
        }
        for case in [
            Case {
                cargo_args: &[],
                threads: None,
                expected: &[],
            },
            Case {
                cargo_args: &[],
                threads: Some(1),
                expected: &["--", "--test-threads=1"],
            },
            Case {
                cargo_args: &["syn", "--", "--nocapture"],
                threads: Some(2),
                expected: &["syn", "--", "--nocapture", "--test-threads=2"],
            },
        ] {
            let args = TestArgs {
                no_lint: true,
                test_threads: case.threads,
                cargo_args: case.cargo_args.iter().map(Into::into).collect(),
            };
            assert_eq!(
                cargo_test_args(&args),
                case.expected,
                "{:?}",
                case.cargo_args
            );
        }
    }
}
