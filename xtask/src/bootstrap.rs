//! Installs, once and under `target/bootstrap/`, what the eBPF build needs
//! beyond rustup's toolchains: nightly's rust-src (for `-Z build-std=core`)
//! and bpf-linker built against the same LLVM as nightly's rustc.

use std::{
    ffi::OsString,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::command::run;

/// bpf-linker's newest release that builds with the installed toolchains.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where the bootstrapped tools are.
pub struct Tools {
    bin: PathBuf,
}

impl Tools {
    /// `PATH` with bpf-linker's folder first, for the eBPF build.
    pub fn path_with_linker(&self) -> Result<OsString> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(self.bin.clone()).chain(std::env::split_paths(&path));
        std::env::join_paths(dirs).context("cannot build PATH")
    }
}

/// Installs whatever is missing; fast when nothing is.
pub fn ensure(root: &Path) -> Result<Tools> {
    let prefix = root.join("target/bootstrap");
    let sysroot = nightly_sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let linker = prefix.join("bin/bpf-linker");
    if !has_version(&linker, BPF_LINKER_VERSION) {
        build_bpf_linker(&sysroot, &prefix)?;
    }
    Ok(Tools { bin: prefix.join("bin") })
}

fn nightly_sysroot() -> Result<PathBuf> {
    let output = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("cannot run rustc")?;
    if !output.status.success() {
        bail!(
            "the nightly toolchain is missing; the eBPF programs need it (rustup toolchain install nightly)"
        );
    }
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

fn has_version(program: &Path, version: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).contains(version))
}

/// The major version in "libLLVM.so.22.1-rust-1.97.0-nightly" or
/// "libLLVM-22-rust-1.97.0-nightly.so".
fn llvm_major(library: &str) -> Option<String> {
    let rest = library.strip_prefix("libLLVM.so.").or_else(|| library.strip_prefix("libLLVM-"))?;
    let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!major.is_empty()).then_some(major)
}

/// bpf-linker must use the LLVM that rustc emits bitcode for. Nightly ships
/// that LLVM as one shared library; bpf-linker's build finds it through an
/// `LLVM_PREFIX` whose `lib/` links to it under the names it looks for.
fn build_bpf_linker(sysroot: &Path, prefix: &Path) -> Result<()> {
    let lib_dir = sysroot.join("lib");
    let library = fs::read_dir(&lib_dir)
        .with_context(|| format!("cannot list {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| {
            name.starts_with("libLLVM.so.") || (name.starts_with("libLLVM-") && name.ends_with(".so"))
        })
        .with_context(|| format!("nightly ships no libLLVM in {}", lib_dir.display()))?;
    let major = llvm_major(&library).with_context(|| format!("cannot tell the LLVM version of {library}"))?;
    let llvm = prefix.join("llvm");
    let llvm_lib = llvm.join("lib");
    fs::create_dir_all(&llvm_lib).with_context(|| format!("cannot create {}", llvm_lib.display()))?;
    for name in ["libLLVM.so", library.as_str()] {
        let link = llvm_lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(lib_dir.join(&library), &link).with_context(|| format!("cannot link {}", link.display()))?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (once, about a minute)");
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &llvm)
        .args(["install", "--locked", "--force", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
        .args(["--no-default-features", "--features", &format!("llvm-{major}"), "--root"])
        .arg(prefix))
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_major_versions_from_library_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly").as_deref(), Some("22"));
        assert_eq!(llvm_major("libLLVM-19-rust-1.84.0-nightly.so").as_deref(), Some("19"));
        assert_eq!(llvm_major("libLLVM.so"), None);
        assert_eq!(llvm_major("librustc_driver.so"), None);
    }
}
