//! `cargo xtask bench`: the BPF_PROG_TEST_RUN bench (prefilter-tests' `bench` binary), then
//! the SYN flood against the alternatives (`flood`), which writes docs/bench.md with the
//! first one's output in it, and the PNG plots beside it; then the SMTP stage against
//! postscreen (`smtpbench`, docs/bench-smtp.md). `--quick` is passed to all three.
use std::{
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    build,
    cmd::{cargo, run, spawn, target_dir, workspace_root},
};

#[derive(Args)]
pub struct BenchArgs {
    /// Arguments for the bench binaries (`--quick` for a short run; `--ab A B [LOADS]` compares
    /// two builds of the XDP program, their object files, and runs nothing else).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    build::build()?;
    let root = workspace_root();
    let captured = target_dir().join("bench-prog-test-run.md");

    // The BPF_PROG_TEST_RUN bench: shown as it runs, and kept for the report.
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "prefilter-tests",
        "--bin",
        "bench",
        "--",
    ])
    .args(&args.args)
    .stdout(Stdio::piped());
    let mut child = spawn(&mut cmd)?;
    let mut text = String::new();
    {
        let out = child.stdout.take().context("bench stdout")?;
        let mut stdout = std::io::stdout().lock();
        for line in BufReader::new(out).lines() {
            let line = line.context("reading bench output")?;
            let _ = writeln!(stdout, "{line}");
            text.push_str(&line);
            text.push('\n');
        }
    }
    let status = child.wait().context("waiting for bench")?;
    // `--ab A B`: two builds of the program compared, nothing else; no report is written.
    if args.args.iter().any(|a| a == "--ab") {
        return if status.success() {
            Ok(())
        } else {
            Err(anyhow::anyhow!("bench --ab failed: {status}"))
        };
    }
    let first = if status.success() {
        fs::write(&captured, &text).with_context(|| format!("writing {}", captured.display()))?;
        Ok(())
    } else {
        let _ = fs::remove_file(&captured);
        Err(anyhow::anyhow!(
            "the BPF_PROG_TEST_RUN bench failed: {status}"
        ))
    };

    // The flood: writes docs/bench.md (with the output above) and docs/bench-*.png.
    let mut flood = cargo();
    flood
        .args([
            "run",
            "--release",
            "-p",
            "prefilter-tests",
            "--bin",
            "flood",
            "--",
        ])
        .args(&args.args)
        .arg("--out")
        .arg(root.join("docs/bench.md"))
        .arg("--plots")
        .arg(root.join("docs"));
    if first.is_ok() {
        flood.arg("--prog-test-run").arg(&captured);
    }
    let second = run(&mut flood);

    // The SMTP stage: prefilter's proxy against postscreen (docs/bench-smtp.md).
    let mut smtp = cargo();
    smtp.args([
        "run",
        "--release",
        "-p",
        "prefilter-tests",
        "--bin",
        "smtpbench",
        "--",
    ])
    .args(&args.args)
    .arg("--out")
    .arg(root.join("docs/bench-smtp.md"));
    let third = run(&mut smtp);
    let failed: Vec<String> = [first, second, third]
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("; "))
    }
}
