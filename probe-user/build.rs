//! Embeds the eBPF object that `cargo xtask build` compiles with nightly.
//!
//! Without it (`cargo check`, clippy, rust-analyzer or the unit tests on a
//! machine with stable Rust alone), an empty placeholder is embedded
//! instead, and the binary refuses to start with a line that says how to
//! build it properly.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=PROBE_EBPF_OBJECT");
    let object = std::env::var_os("PROBE_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ebpf/bpfel-unknown-none/release/probe")
    });
    // Watched either way: an object built later replaces the placeholder.
    println!("cargo:rerun-if-changed={}", object.display());
    let object = match object.is_file() {
        true => object,
        false => {
            let placeholder = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
                .join("probe-ebpf-placeholder");
            std::fs::write(&placeholder, b"").expect("cannot write to OUT_DIR");
            println!(
                "cargo:warning=the eBPF object {} is missing: this probe cannot trace (build with `cargo xtask build`)",
                object.display()
            );
            placeholder
        }
    };
    println!("cargo:rustc-env=PROBE_EBPF_OBJECT={}", object.display());
}
