//! `cargo xtask package`: the Debian package, built by cargo-deb from the release binary
//! (metadata in agent/Cargo.toml, maintainer scripts in deploy/debian/). Man pages and
//! completions come from the binary itself (`prefilter assets`), so they match its clap
//! definition.
use std::{fs, path::PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::{
    build,
    cmd::{cargo, run, target_dir},
};

/// Builds target/debian/prefilter_VERSION_ARCH.deb; returns its path.
pub fn package() -> Result<PathBuf> {
    let bin = build::build()?;
    package_built(&bin)
}

/// [`package`] for a build that is already done (setup and build ran).
pub fn package_built(bin: &std::path::Path) -> Result<PathBuf> {
    let assets = target_dir().join("release/assets");
    let _ = fs::remove_dir_all(&assets);
    run(std::process::Command::new(bin).arg("assets").arg(&assets))?;
    // Debian installs man pages compressed (policy 12.1); -n keeps the package reproducible.
    for page in fs::read_dir(assets.join("man"))? {
        run(std::process::Command::new("gzip")
            .args(["-9nf"])
            .arg(page?.path()))?;
    }
    let out = target_dir().join("debian");
    let _ = fs::remove_dir_all(&out);
    run(cargo().args(["deb", "-p", "prefilter", "--no-build", "--no-strip"]))?;
    let debs: Vec<PathBuf> = fs::read_dir(&out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    match debs.as_slice() {
        [deb] => {
            println!("package: {}", deb.display());
            Ok(deb.clone())
        }
        _ => bail!("expected one .deb in {}, found {debs:?}", out.display()),
    }
}
