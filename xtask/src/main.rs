//! `cargo xtask`: installs what the build needs, builds, tests, and runs the lab and bench.
mod bench;
mod build;
mod cmd;
mod lab;
mod package;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for prefilter")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (nightly rust-src, Debian packages, bpf-linker).
    Setup,
    /// Setup, then build the release `prefilter` binary with its embedded XDP object.
    Build,
    /// Build, then run `target/release/prefilter` with the arguments after `--`.
    Run(build::RunArgs),
    /// Setup, lint, build, then `cargo test --release --workspace` as root.
    Test(test::TestArgs),
    /// Setup and build, then the lab: the gateway, Postfix, rbldnsd, feeds and senders in
    /// network namespaces, the story step by step, and teardown (`--hold` keeps it up).
    Lab(lab::LabArgs),
    /// Build, then the Debian package (target/debian/prefilter_*.deb) with cargo-deb.
    Package,
    /// Build, then run the `bench` binary of prefilter-tests with the arguments after `--`.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Build => build::build().map(|_| ()),
        Task::Run(args) => build::run(&args),
        Task::Test(args) => test::test(&args),
        Task::Lab(args) => lab::run_lab(&args),
        Task::Package => package::package().map(|_| ()),
        Task::Bench(args) => bench::bench(&args),
    }
}
