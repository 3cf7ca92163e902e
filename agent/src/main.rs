//! The `prefilter` binary: parse, execute.
use clap::Parser as _;

fn main() {
    std::process::exit(prefilter::cli::execute(prefilter::cli::Cli::parse()));
}
