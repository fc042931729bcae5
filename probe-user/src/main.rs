//! The `probe` binary: everything is in the library (see its module map).

#[global_allocator]
static ALLOCATOR: probe::memory::Allocator = probe::memory::Allocator;

fn main() -> std::process::ExitCode {
    probe::app::main()
}
