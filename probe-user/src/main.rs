//! The `probe` binary: everything is in the library (see its module map).

fn main() -> std::process::ExitCode {
    probe::app::main()
}
