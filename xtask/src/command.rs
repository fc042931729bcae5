//! Running child commands with errors that say which one failed.

use std::{os::unix::process::CommandExt, path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// Runs `command`, failing unless it exits 0.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs `cargo ARGS` in the workspace with the default toolchain.
pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("cargo").current_dir(root).args(args))
}

/// Replaces xtask with `program ARGS`, so that its exit status and signals
/// are probe's own.
pub fn exec(program: impl AsRef<Path>, args: &[String]) -> Result<()> {
    let program = program.as_ref();
    let err = Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("cannot run {}", program.display()))
}
