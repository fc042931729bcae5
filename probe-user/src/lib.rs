//! `probe`: per-thread syscall latency and scheduling, live, from eBPF.
//!
//! The flow: [`app`] puts it together. [`cli`] checks the options,
//! [`target`] finds or starts what to trace, [`bpf`] loads and attaches the
//! kernel programs (with `task_struct` offsets from [`btf`], io_uring
//! layouts from [`tracefs`]), and [`session`], the event loop, feeds their
//! records, read in place from the ring buffer by [`ring`], to the
//! [`pipeline`], which builds the [`aggregate`] tables
//! (syscalls, the scheduler's state machine) and follows [`golang`]
//! goroutines. Every interval and at the end the loop hands the tables to
//! the [`output`]s: the text or JSON [`report`] stream, the live view
//! ([`tui`]), the Prometheus endpoint ([`metrics`]) and the Perfetto
//! [`timeline`], each shown process placed in its container or cgroup
//! by [`cgroup`]. Only [`procfs`] reads `/proc`; the tables ask it through
//! [`aggregate::World`]. The binary allocates through [`memory`], which
//! turns running out of memory into one line.

mod aggregate;
pub mod app;
mod bpf;
mod btf;
pub mod cgroup;
mod cli;
mod clock;
mod escape;
mod golang;
pub mod memory;
mod metrics;
mod output;
mod pipeline;
mod procfs;
mod report;
mod ring;
mod session;
mod slow;
mod target;
mod timeline;
mod tracefs;
mod tui;
