//! Man pages and shell completions, generated from the same clap definition the binary
//! parses with, so they never drift from it (`prefilter assets DIR`, run by
//! `cargo xtask package`).
use std::{fs, io, path::Path};

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

/// Writes `man/prefilter.8` (+ one page per subcommand, `prefilter-block.8`...) and
/// `completions/{prefilter.bash,_prefilter,prefilter.fish}` under `dir`.
pub fn write(dir: &Path) -> io::Result<()> {
    let man = dir.join("man");
    fs::create_dir_all(&man)?;
    // Section 8 (a daemon and its administration commands), one page per subcommand as
    // git does: prefilter.8, prefilter-block.8, ...
    let root = Cli::command();
    page(&man, root.clone(), "prefilter")?;
    for sub in root.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("prefilter-{}", sub.get_name());
        page(&man, sub.clone().name(name.clone()), &name)?;
    }
    let completions = dir.join("completions");
    fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "prefilter", &completions)?;
    }
    Ok(())
}

fn page(dir: &Path, cmd: clap::Command, name: &str) -> io::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).section("8").render(&mut out)?;
    fs::write(dir.join(format!("{name}.8")), out)
}
