//! A workload that knows exactly what it did: the ground truth for probe's
//! integration tests and benchmarks.
//!
//! Every activity runs on a thread of its own, started after the workload
//! starts (or after SIGUSR1 with `--wait-signal`, for `probe --pid`); at the
//! end one JSON line on stdout says which thread did what:
//!
//! ```text
//! workload [--wait-signal] [--getppid N,N,...] [--sleep COUNTxMS] [--enoent N] [--exit CODE]
//! ```

use std::{ffi::CString, process::exit, thread, time::Duration};

/// What one thread did.
struct Done {
    tid: i64,
    activity: &'static str,
    calls: u64,
}

fn gettid() -> i64 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn getppid_storm(calls: u64) -> Done {
    for _ in 0..calls {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Done {
        tid: gettid(),
        activity: "getppid",
        calls,
    }
}

fn sleeps(calls: u64, each: Duration) -> Done {
    let request = libc::timespec {
        tv_sec: each.as_secs() as libc::time_t,
        tv_nsec: each.subsec_nanos() as libc::c_long,
    };
    for _ in 0..calls {
        // SAFETY: a relative sleep on CLOCK_MONOTONIC with a valid timespec.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clock_nanosleep,
                libc::CLOCK_MONOTONIC,
                0,
                &request as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        assert_eq!(ret, 0, "clock_nanosleep failed");
    }
    Done {
        tid: gettid(),
        activity: "clock_nanosleep",
        calls,
    }
}

fn missing_opens(calls: u64) -> Done {
    let path = CString::new(format!(
        "/nonexistent/probe-workload-{}",
        std::process::id()
    ))
    .unwrap();
    for _ in 0..calls {
        // SAFETY: a valid NUL-terminated path; the call fails with ENOENT.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY,
            )
        };
        assert_eq!(fd, -1, "the missing path exists");
    }
    Done {
        tid: gettid(),
        activity: "openat",
        calls,
    }
}

fn wait_for_sigusr1() {
    // SAFETY: plain signal-set manipulation on a zeroed sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        println!("{{\"ready\":{}}}", std::process::id());
        let mut signal = 0;
        libc::sigwait(&set, &mut signal);
    }
}

fn usage(problem: &str) -> ! {
    eprintln!("workload: {problem}");
    eprintln!("usage: workload [--wait-signal] [--getppid N,N,...] [--sleep COUNTxMS] [--enoent N] [--exit CODE]");
    exit(2)
}

fn number(text: &str) -> u64 {
    text.parse()
        .unwrap_or_else(|_| usage(&format!("not a number: {text}")))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut jobs: Vec<Box<dyn FnOnce() -> Done + Send>> = Vec::new();
    let mut wait_signal = false;
    let mut exit_code = 0;
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--wait-signal" => wait_signal = true,
            "--getppid" => {
                for calls in value().split(',').map(number) {
                    jobs.push(Box::new(move || getppid_storm(calls)));
                }
            }
            "--sleep" => {
                let spec = value();
                let (count, ms) = spec
                    .split_once('x')
                    .unwrap_or_else(|| usage("--sleep takes COUNTxMS"));
                let (count, each) = (number(count), Duration::from_millis(number(ms)));
                jobs.push(Box::new(move || sleeps(count, each)));
            }
            "--enoent" => {
                let calls = number(&value());
                jobs.push(Box::new(move || missing_opens(calls)));
            }
            "--exit" => exit_code = number(&value()) as i32,
            other => usage(&format!("unknown flag {other}")),
        }
    }
    if wait_signal {
        wait_for_sigusr1();
    }
    let handles: Vec<_> = jobs.into_iter().map(thread::spawn).collect();
    let done: Vec<String> = handles
        .into_iter()
        .map(|handle| {
            let done = handle.join().expect("a workload thread panicked");
            format!(
                "{{\"tid\":{},\"syscall\":\"{}\",\"calls\":{}}}",
                done.tid, done.activity, done.calls
            )
        })
        .collect();
    println!(
        "{{\"pid\":{},\"threads\":[{}]}}",
        std::process::id(),
        done.join(",")
    );
    exit(exit_code);
}
