//! `cargo xtask bench`: the comparison benchmark lives in prefilter-tests' `bench` binary.
use std::ffi::OsString;

use anyhow::Result;
use clap::Args;

use crate::{
    build,
    cmd::{cargo, run},
};

#[derive(Args)]
pub struct BenchArgs {
    /// Arguments for the `bench` binary.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    build::build()?;
    run(cargo()
        .args([
            "run",
            "--release",
            "-p",
            "prefilter-tests",
            "--bin",
            "bench",
            "--",
        ])
        .args(&args.args))
}
