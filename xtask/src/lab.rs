//! `cargo xtask lab`: setup and build, then the `lab` binary of prefilter-tests, which builds
//! the lab with the tests' harness (namespaces, the daemon, Postfix, rbldnsd, the feeds),
//! runs the story and tears it all down (see tests/src/bin/lab.rs).
use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    cmd::{cargo, display, require_root, run, target_dir},
    setup,
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
    setup::setup()?;
    // The agent and the lab in one build: built apart, their dependencies' features differ
    // and each build would redo the other's (minutes on a small machine).
    run(cargo()
        .args(["build", "--release"])
        .args(["-p", "prefilter", "-p", "prefilter-tests"])
        .args(["--bin", "prefilter", "--bin", "lab"]))?;
    let mut lab = std::process::Command::new(target_dir().join("release/lab"));
    if args.hold {
        lab.arg("--hold");
    }
    // Replaced by the lab rather than waiting for it: Ctrl-C then reaches the lab alone,
    // which tears down before it exits, and its exit status is the task's.
    eprintln!("+ {}", display(&lab));
    Err(lab.exec()).context("cannot start the lab")
}
