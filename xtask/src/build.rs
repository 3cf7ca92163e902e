//! `cargo xtask build` and `cargo xtask run`.
use std::{ffi::OsString, path::PathBuf, process::Command};

use anyhow::Result;
use clap::Args;

use crate::{
    cmd::{self, cargo, target_dir},
    setup,
};

#[derive(Args)]
pub struct RunArgs {
    /// Arguments for `prefilter`, e.g. `status --json`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Setup, then the release agent; its build.rs builds and embeds the XDP object.
pub fn build() -> Result<PathBuf> {
    setup::setup()?;
    build_agent()
}

/// The release agent alone, for tasks that ran setup already.
pub fn build_agent() -> Result<PathBuf> {
    cmd::run(cargo().args(["build", "--release", "-p", "prefilter"]))?;
    let bin = target_dir().join("release/prefilter");
    println!("build: {}", bin.display());
    Ok(bin)
}

pub fn run(args: &RunArgs) -> Result<()> {
    let bin = build()?;
    cmd::run(Command::new(bin).args(&args.args))
}
