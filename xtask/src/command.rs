//! Running child commands with errors that say which one failed.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// Runs `command`, failing unless it exits 0.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

/// Installs from Debian's packages each `(program, package)` whose program
/// is not on PATH.
pub fn install_missing(programs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> =
        programs.iter().filter(|(program, _)| !on_path(program)).map(|(_, package)| *package).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(", "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq"]).args(&missing))
}

/// Runs `cargo ARGS` in the workspace with the default toolchain.
pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("cargo").current_dir(root).args(args))
}

/// Runs `cargo test ARGS` with `envs` added, passing its output through,
/// and ends with one line that totals every test binary's result.
pub fn cargo_test(root: &Path, args: &[&str], envs: &[(&str, &OsStr)]) -> Result<()> {
    let mut child = Command::new("cargo")
        .current_dir(root)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("no stdout")?).lines() {
        let line = line.context("cannot read cargo test's output")?;
        println!("{line}");
        if let Some((p, f)) = test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait().context("cannot wait for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("cargo test failed: {status}");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

/// `(passed, failed)` from libtest's "test result: ok. 16 passed; 0 failed; …".
fn test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';')
            .find_map(|part| {
                part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(word)
            })
            .and_then(|n| n.trim().parse().ok())
    };
    Some((count(" passed")?, count(" failed")?))
}

/// Replaces xtask with `program ARGS`, so that its exit status and signals
/// are probe's own.
pub fn exec(program: impl AsRef<Path>, args: &[String]) -> Result<()> {
    let program = program.as_ref();
    let err = Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("cannot run {}", program.display()))
}

#[cfg(test)]
mod tests {
    use super::test_result;

    #[test]
    fn totals_come_from_libtest_summaries() {
        let ok =
            "test result: ok. 16 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(test_result(ok), Some((16, 0)));
        let failed = "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(test_result(failed), Some((2, 3)));
        assert_eq!(test_result("running 5 tests"), None);
    }
}
