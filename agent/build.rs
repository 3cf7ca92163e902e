//! Builds the XDP object with aya-build (nightly, build-std, bpf-linker) so the agent can
//! embed it; `cargo xtask setup` installs what that needs.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../prefilter-ebpf");
    println!(
        "cargo:rerun-if-changed={}/../prefilter-common/src",
        env!("CARGO_MANIFEST_DIR")
    );
    aya_build::build_ebpf(
        [Package {
            name: "prefilter-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
