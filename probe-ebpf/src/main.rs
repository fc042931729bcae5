//! probe's kernel programs: time every syscall of the traced threads between
//! `raw_syscalls:sys_enter` and `sys_exit`, follow them through the
//! scheduler (`sched_switch`, `sched_wakeup`, `sched_wakeup_new`), and stream
//! one record per event to userspace through a ring buffer.
//!
//! Raw tracepoints are used because they need no tracefs and cost about half
//! of classic tracepoints on the syscall path, which every traced thread pays.
//! Their arguments are the tracepoints' `TP_PROTO`; the `task_struct` fields
//! they point to sit at offsets the loader finds in the kernel's BTF.
//!
//! One module per feature:
//! - `shared`: the configuration, maps and helpers several features use;
//! - `cgroup`: `--cgroup`'s filter;
//! - `syscalls`: `sys_enter`, `sys_exit` and the syscalls' own maps;
//! - `process`: `sched_process_fork` and `sched_process_exit`, which keep
//!   `TRACED` and the parked calls to live processes and threads;
//! - `sched`: `sched_switch` and the wakeups;
//! - `golang`: the followed Go program's goroutines, read at `sys_enter`;
//! - `io_uring`: the io_uring tracepoints;
//! - `slow`: with `--slow`, the registers, user and kernel stacks and
//!   wakers behind slow calls;
//! - `check`: the start-up check of the `task_struct` offsets, and the
//!   benchmarks' do-nothing program.
//!
//! The loader finds globals, maps and programs by name: each one it uses is
//! declared with `shared!`, which checks at compile time that its identifier
//! is the name in `probe_common::names`.
#![no_std]
#![no_main]
// `atomic_xadd`: the count of waiting threads (`sched`) is shared by all CPUs.
#![feature(core_intrinsics)]
#![allow(internal_features)]

/// Checks at compile time that shared items are spelled as the loader's
/// constants in `probe_common::names`, and that they exist here:
///
/// - `shared!(global SELF_PID, FILTER_PIDS)`: `names::global::SELF_PID`...
/// - `shared!(map EVENTS)`: `names::map::EVENTS`;
/// - `shared!(program sys_enter as SYS_ENTER)`: `names::program::SYS_ENTER`
///   (program constants are upper case, the functions are not).
///
/// aya names a map after its static's identifier, a global after its
/// `no_mangle` static's, and a program after its function: renaming one
/// here or there without the other then fails to compile.
macro_rules! shared {
    (program $($name:ident as $constant:ident),+ $(,)?) => {
        $(
            const _: () = {
                let _ = $name;
                assert!(
                    probe_common::names::same(stringify!($name), probe_common::names::program::$constant),
                    concat!("program ", stringify!($name), " is not named as probe_common::names::program::",
                        stringify!($constant))
                );
            };
        )+
    };
    ($kind:ident $($name:ident),+ $(,)?) => {
        $(
            const _: () = {
                let _ = &raw const $name;
                assert!(
                    probe_common::names::same(stringify!($name), probe_common::names::$kind::$name),
                    concat!(stringify!($kind), " ", stringify!($name), " is not named as probe_common::names::",
                        stringify!($kind), "::", stringify!($name))
                );
            };
        )+
    };
}

mod cgroup;
mod check;
mod golang;
mod io_uring;
mod process;
mod sched;
mod shared;
mod slow;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
