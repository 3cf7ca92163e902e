//! External commands and workspace paths. Every command is echoed as `+ cmd args` before it
//! runs, so a CI log reads like `bash -x` and a failure can be replayed by copy and paste.
use std::{
    env,
    ffi::OsStr,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// `cmd` as a shell line, with the variables it sets in front.
pub fn display(cmd: &Command) -> String {
    let envs = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))));
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote);
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// Single-quotes a word only when the shell would otherwise split or expand it.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn echo(cmd: &Command) {
    // stderr, like `set -x`, so it interleaves in order with the commands' own diagnostics.
    eprintln!("+ {}", display(cmd));
}

fn spawn_error(cmd: &Command) -> String {
    format!("cannot start `{}`", display(cmd))
}

/// Runs `cmd` with the terminal's stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    echo(cmd);
    let status = cmd.status().with_context(|| spawn_error(cmd))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` and captures its output whatever its exit status: for checks, where a
/// non-zero exit is an answer rather than an error.
pub fn probe(cmd: &mut Command) -> Result<Output> {
    echo(cmd);
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| spawn_error(cmd))
}

/// Starts `cmd` in the background, echoed like the others; the caller waits for or kills it.
pub fn spawn(cmd: &mut Command) -> Result<Child> {
    echo(cmd);
    cmd.spawn().with_context(|| spawn_error(cmd))
}

/// Runs `cmd` with `input` on its stdin; fails unless it exits 0.
pub fn run_with_input(cmd: &mut Command, input: &str) -> Result<()> {
    eprintln!("+ {} <<'EOF'\n{input}EOF", display(cmd));
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| spawn_error(cmd))?;
    // Dropping the handle after the write closes the pipe, so the child sees EOF.
    child
        .stdin
        .take()
        .context("child has no stdin")?
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to `{}`", display(cmd)))?;
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
}

/// Where cargo puts build output, honouring `CARGO_TARGET_DIR` as cargo does.
pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo` from PATH (the rustup proxy, so `+nightly` works), run in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// Fails with a clear message unless we run as root: XDP, namespaces and apt all need it.
pub fn require_root(task: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "`cargo xtask {task}` must run as root (euid is {euid}): try `sudo -E cargo xtask {task}`"
        );
    }
    Ok(())
}
