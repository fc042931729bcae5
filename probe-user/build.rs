//! Embeds the eBPF object that `cargo xtask build` compiles with nightly.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=PROBE_EBPF_OBJECT");
    let object = std::env::var_os("PROBE_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ebpf/bpfel-unknown-none/release/probe")
    });
    if !object.is_file() {
        panic!(
            "the eBPF object {} is missing: build with `cargo xtask build`, which compiles it first",
            object.display()
        );
    }
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rustc-env=PROBE_EBPF_OBJECT={}", object.display());
}
