//! `cargo xtask lab`: setup and build, then the `lab` binary of prefilter-tests, which builds
//! the lab with the tests' harness (namespaces, the daemon, Postfix, rbldnsd, the feeds),
//! runs the story and tears it all down (see tests/src/bin/lab.rs).
use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    build,
    cmd::{cargo, display, require_root, run, target_dir},
};

#[derive(Args, Default)]
pub struct LabArgs {
    /// Keep the lab running after the story, until Ctrl-C, to explore it by hand.
    #[arg(long)]
    pub hold: bool,
}

pub fn run_lab(args: &LabArgs) -> Result<()> {
    // Checked first: nothing of the lab works without it, so fail before a long build.
    require_root("lab")?;
    // Setup installs the lab's parts too (Postfix, rbldnsd, swaks, the CrowdSec extraction).
    build::build()?;
    run(cargo().args(["build", "--release", "-p", "prefilter-tests", "--bin", "lab"]))?;
    let mut lab = std::process::Command::new(target_dir().join("release/lab"));
    if args.hold {
        lab.arg("--hold");
    }
    // Replaced by the lab rather than waiting for it: Ctrl-C then reaches the lab alone,
    // which tears down before it exits, and its exit status is the task's.
    eprintln!("+ {}", display(&lab));
    Err(lab.exec()).context("cannot start the lab")
}
