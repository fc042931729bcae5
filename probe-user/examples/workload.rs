//! A workload that knows exactly what it did: the ground truth for probe's
//! integration tests and benchmarks.
//!
//! Every activity runs on a thread of its own, started after the workload
//! starts (or after SIGUSR1 with `--wait-signal`, for `probe --pid`); at the
//! end one JSON line on stdout says which thread did what:
//!
//! ```text
//! workload [--wait-signal] [--getppid N,N,...] [--sleep COUNTxMS] [--sleeps MS,MS,...] [--enoent N]
//!          [--affinity MOVES] [--spin MS,MS,...] [--pinned-spin CPU,MS,NAME] [--fork N] [--threads N] [--churn SECONDS] [--io-uring NOPS,READS,ASYNC_READS] [--zero-read COUNTxMIB]
//!          [--mixed ROUNDS,ROUNDS,...] [--pingpong ROUNDS] [--children COUNTxMICROSECONDS] [--block-read SECONDS] [--ready-when-blocked] [--exit CODE]
//! ```
//!
//! Per thread it reports its tid, its activity, how many calls or moves it
//! made, and what the kernel itself counted for it: CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) and context switches (`/proc/thread-self`).
//! A thread that blocks (`--sleep`, `--block-read`) also says when its calls
//! began and ended (`start_ns`, `end_ns`, `CLOCK_MONOTONIC`, the kernel
//! programs' clock); with `--ready-when-blocked`, a first line says so once
//! every such thread is blocked in its first call:
//! `{"blocked":[{"tid":T,"syscall":"read","start_ns":N}]}`.

use std::{
    ffi::CString,
    process::exit,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// What one thread did.
struct Done {
    tid: i64,
    activity: &'static str,
    calls: u64,
}

/// A worker thread's account: what it did, and the kernel's own counts for
/// it, read by the main thread while the worker waits, so that the reading
/// adds no syscall to the worker's record.
/// `elapsed` is the wall time of the activity itself, for benchmarks.
fn account(done: Done, elapsed: Duration, worker: libc::pthread_t) -> String {
    let status = std::fs::read_to_string(format!("/proc/self/task/{}/status", done.tid)).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    };
    let span = SPANS.lock().unwrap().iter().find(|span| span.0 == done.tid).copied();
    let span =
        span.map_or_else(String::new, |(_, start, end)| format!(",\"start_ns\":{start},\"end_ns\":{end}"));
    let sched = std::fs::read_to_string(format!("/proc/self/task/{}/sched", done.tid)).unwrap_or_default();
    // schedstat: time on a CPU, time waiting in a run queue, runs.
    let schedstat =
        std::fs::read_to_string(format!("/proc/self/task/{}/schedstat", done.tid)).unwrap_or_default();
    let mut schedstat = schedstat.split_whitespace().map(|n| n.parse::<u64>().unwrap_or(0));
    let (run_ns, wait_ns) = (schedstat.next().unwrap_or(0), schedstat.next().unwrap_or(0));
    format!(
        "{{\"tid\":{},\"syscall\":\"{}\",\"calls\":{},\"elapsed_ns\":{},\"cpu_ns\":{},\"voluntary\":{},\"involuntary\":{},\"migrations\":{},\"run_ns\":{run_ns},\"wait_ns\":{wait_ns}{span}}}",
        done.tid,
        done.activity,
        done.calls,
        elapsed.as_nanos(),
        thread_cpu_ns(worker),
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
        migrations(sched.as_bytes()),
    )
}

/// The calls of the threads that block (`--sleep`, `--block-read`): each
/// thread's tid, the syscall number it blocks in first, its name, and when
/// that call began.
static BLOCKING: std::sync::Mutex<Vec<(i64, i64, &'static str, u64)>> = std::sync::Mutex::new(Vec::new());

/// When the blocking threads' calls began and ended, by tid: the first's
/// start, the last's end.
static SPANS: std::sync::Mutex<Vec<(i64, u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// `CLOCK_MONOTONIC`, the clock of the kernel programs' timestamps.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// One read of a pipe that nothing writes to for `seconds`: a thread
/// blocked in `read` that long.
fn block_read(seconds: u64) -> Done {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two fds.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
    let writer = fds[1];
    let waker = thread::spawn(move || {
        thread::sleep(Duration::from_secs(seconds));
        // SAFETY: a one-byte write to our own pipe.
        unsafe { libc::write(writer, b"x".as_ptr().cast(), 1) };
    });
    let tid = gettid();
    let mut byte = 0u8;
    let start = monotonic_ns();
    BLOCKING.lock().unwrap().push((tid, libc::SYS_read, "read", start));
    // SAFETY: a one-byte read into `byte` from our own pipe.
    let read = unsafe { libc::read(fds[0], (&raw mut byte).cast(), 1) };
    let end = monotonic_ns();
    assert_eq!(read, 1, "the blocking read failed");
    SPANS.lock().unwrap().push((tid, start, end));
    waker.join().expect("the waker panicked");
    // SAFETY: closing our own fds.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    Done { tid, activity: "read", calls: 1 }
}

/// Once every blocking thread (`expected` of them) is blocked in its first
/// call, says so on stdout: `{"blocked":[{"tid":T,"syscall":S,"start_ns":N}]}`.
fn announce_blocked(expected: usize) {
    loop {
        let blocking = BLOCKING.lock().unwrap().clone();
        let in_call = |&(tid, nr, _, _): &(i64, i64, &str, u64)| {
            let syscall =
                std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).unwrap_or_default();
            syscall.split_whitespace().next() == Some(&nr.to_string())
        };
        if blocking.len() >= expected && blocking.iter().all(in_call) {
            let calls: Vec<String> = blocking
                .iter()
                .map(|(tid, _, name, start)| {
                    format!("{{\"tid\":{tid},\"syscall\":\"{name}\",\"start_ns\":{start}}}")
                })
                .collect();
            println!("{{\"blocked\":[{}]}}", calls.join(","));
            std::io::Write::flush(&mut std::io::stdout()).unwrap();
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn gettid() -> i64 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// CPU time of a live thread, as `CLOCK_THREAD_CPUTIME_ID` counts it.
fn thread_cpu_ns(thread: libc::pthread_t) -> u64 {
    let mut clock = 0;
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `thread` is alive (it waits for the main thread), and both
    // out-pointers are valid.
    unsafe {
        assert_eq!(libc::pthread_getcpuclockid(thread, &mut clock), 0);
        libc::clock_gettime(clock, &mut now);
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Allows the thread CPU `cpu` only, and checks that it runs there.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0,
            "sched_setaffinity({cpu})"
        );
        assert_eq!(libc::sched_getcpu(), cpu as i32, "still not on CPU {cpu}");
    }
}

/// Moves the thread between CPU 0 and CPU 1, `moves` times, checking that
/// it runs on the new CPU after each move.
fn hop(moves: u64) -> Done {
    pin(0);
    for i in 0..moves {
        pin(1 - (i % 2) as usize);
    }
    Done { tid: gettid(), activity: "affinity", calls: moves }
}

fn spin(run: Duration) -> Done {
    let start = Instant::now();
    let mut turns = 0u64;
    while start.elapsed() < run {
        turns = std::hint::black_box(turns + 1);
    }
    Done { tid: gettid(), activity: "spin", calls: 0 }
}

/// Names the thread `name`, pins it to CPU `cpu` and spins there for `run`
/// at nice -20 (root's): two of them on one CPU are each other's rivals,
/// known by name, whatever else the shared machine runs there at nice 0
/// or more (a weight of 88761 against 1024 at most). With autogroups, a
/// nice value counts only within the session's group: the process makes a
/// session of its own (once: a session leader's second `setsid` fails) and
/// nices its group, which ends with it.
fn pinned_spin(cpu: usize, run: Duration, name: &str) -> Done {
    name_thread(name);
    // SAFETY: no arguments; setpriority of this thread (its tid).
    let reniced = unsafe {
        libc::setsid();
        libc::setpriority(libc::PRIO_PROCESS, gettid() as libc::id_t, -20)
    };
    assert_eq!(reniced, 0, "setpriority(-20) needs root");
    if std::path::Path::new("/proc/self/autogroup").exists() {
        std::fs::write("/proc/self/autogroup", "-20").expect("nice the autogroup");
    }
    pin(cpu);
    Done { activity: "pinned-spin", ..spin(run) }
}

/// Names the thread as `prctl(PR_SET_NAME)` does (the first 15 bytes,
/// whatever they are).
fn name_thread(name: &str) {
    let name = std::ffi::CString::new(name).expect("a name without NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Names the thread `name` (as `prctl(PR_SET_NAME)` takes it: the first 15
/// bytes, whatever they are), then makes `calls` getppid.
fn renamed(name: &str, calls: u64) -> Done {
    name_thread(name);
    getppid_storm(calls)
}

/// `calls` getpid through the 32-bit entry (`int $0x80`, i386 number 20),
/// which the kernel runs as a 32-bit syscall in this 64-bit program.
fn int80_getpids(calls: u64) -> Done {
    let pid = i64::from(std::process::id());
    for _ in 0..calls {
        let ret: i64;
        // SAFETY: i386 getpid takes no arguments; the 32-bit entry may
        // clobber r8-r11, which are declared.
        unsafe {
            std::arch::asm!(
                "int 0x80",
                inlateout("rax") 20i64 => ret,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                options(nostack),
            );
        }
        assert_eq!(ret, pid, "int $0x80 getpid");
    }
    Done { tid: gettid(), activity: "getpid (i386)", calls }
}

fn getppid_storm(calls: u64) -> Done {
    for _ in 0..calls {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Done { tid: gettid(), activity: "getppid", calls }
}

/// One relative `clock_nanosleep` of `each` on CLOCK_MONOTONIC, made
/// directly (the C library's `nanosleep` may pick another call). A frame of
/// its own, which `--slow`'s test finds by name in the call's user stack
/// (release builds here carry no debug information to name inlined ones).
#[inline(never)]
fn sleep_once(each: Duration) {
    let request = libc::timespec {
        tv_sec: each.as_secs() as libc::time_t,
        tv_nsec: each.subsec_nanos() as libc::c_long,
    };
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

fn sleeps(calls: u64, each: Duration) -> Done {
    let tid = gettid();
    let start = monotonic_ns();
    BLOCKING.lock().unwrap().push((tid, libc::SYS_clock_nanosleep, "clock_nanosleep", start));
    for _ in 0..calls {
        sleep_once(each);
    }
    SPANS.lock().unwrap().push((tid, start, monotonic_ns()));
    Done { tid, activity: "clock_nanosleep", calls }
}

/// Sleeps once for each of `each` in turn (`clock_nanosleep`): calls of
/// known, different lengths, for the slowest ones.
fn listed_sleeps(each: Vec<u64>) -> Done {
    for &ms in &each {
        sleep_once(Duration::from_millis(ms));
    }
    Done { tid: gettid(), activity: "sleeps", calls: each.len() as u64 }
}

/// Forks a child process that makes `calls` getppid calls and exits; the
/// record is the child's (its pid is its tid).
fn forked_storm(calls: u64) -> Done {
    // SAFETY: the child only makes raw syscalls and _exits, which is safe
    // after fork in a multi-threaded process.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        for _ in 0..calls {
            // SAFETY: as in getppid_storm.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    Done { tid: i64::from(child), activity: "getppid", calls }
}

/// The accounts of short-lived children (`--children`): each one's own
/// counts, which it read as its last act, since it is gone by the report.
static CHILDREN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Starts `count` children one after the other; each spins for `spin` of
/// CPU time, reads its own CPU time and context switches, hands them over
/// through a pipe and exits. Each is reaped 50 ms after it exits, so that a
/// dead child's last moments cannot hide behind its reaping.
fn short_children(count: u64, spin: Duration) -> Done {
    for _ in 0..count {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
        // SAFETY: the child only makes raw syscalls, reads the vDSO clock
        // and _exits, which is safe after fork in a multi-threaded process.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            while own_cpu_ns() < spin.as_nanos() as u64 {}
            let (voluntary, involuntary) = own_switches();
            let mut sched = [0u8; 8192];
            let moved = migrations(read_own(c"/proc/thread-self/sched", &mut sched));
            let cpu_ns = own_cpu_ns();
            let account = [cpu_ns, voluntary, involuntary, moved];
            // SAFETY: writes the 32 bytes of `account`, then exits.
            unsafe {
                libc::write(fds[1], account.as_ptr().cast(), 32);
                libc::_exit(0);
            }
        }
        thread::sleep(Duration::from_millis(50));
        let mut account = [0u64; 4];
        // SAFETY: reads at most 32 bytes into `account`; closes our fds.
        unsafe {
            assert_eq!(libc::read(fds[0], account.as_mut_ptr().cast(), 32), 32, "the child's account");
            libc::close(fds[0]);
            libc::close(fds[1]);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        let [cpu_ns, voluntary, involuntary, migrations] = account;
        CHILDREN.lock().unwrap().push(format!(
            "{{\"tid\":{child},\"syscall\":\"child\",\"calls\":0,\"elapsed_ns\":0,\"cpu_ns\":{cpu_ns},\"voluntary\":{voluntary},\"involuntary\":{involuntary},\"migrations\":{migrations}}}"
        ));
    }
    Done { tid: gettid(), activity: "children", calls: count }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, in the vDSO).
fn own_cpu_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The calling thread's voluntary and involuntary context switches so far,
/// from `/proc/thread-self/status`, read with raw syscalls into the stack:
/// safe in a child forked from a multi-threaded process.
fn own_switches() -> (u64, u64) {
    let mut buffer = [0u8; 4096];
    let status = read_own(c"/proc/thread-self/status", &mut buffer);
    let field = |name: &[u8]| -> u64 {
        let Some(at) = status.windows(name.len()).position(|window| window == name) else {
            return 0;
        };
        status[at + name.len()..]
            .iter()
            .skip_while(|byte| byte.is_ascii_whitespace())
            .take_while(|byte| byte.is_ascii_digit())
            .fold(0, |n, &digit| n * 10 + u64::from(digit - b'0'))
    };
    // Each field starts a line: "nonvoluntary_…" holds "voluntary_…".
    (field(b"\nvoluntary_ctxt_switches:"), field(b"\nnonvoluntary_ctxt_switches:"))
}

/// Reads a file of `/proc` with raw syscalls into `buffer` (safe in a
/// forked child); what it read.
fn read_own<'a>(path: &std::ffi::CStr, buffer: &'a mut [u8]) -> &'a [u8] {
    // SAFETY: a NUL-terminated path; reads at most the buffer's length.
    let len = unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
        let len = libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len());
        libc::close(fd);
        len.max(0) as usize
    };
    &buffer[..len]
}

/// `se.nr_migrations` from a thread's `/proc/.../sched`: the kernel's count
/// of its moves between CPUs.
fn migrations(sched: &[u8]) -> u64 {
    let name = b"se.nr_migrations";
    let Some(at) = sched.windows(name.len()).position(|window| window == name) else {
        return 0;
    };
    sched[at + name.len()..]
        .iter()
        .skip_while(|byte| !byte.is_ascii_digit())
        .take_while(|byte| byte.is_ascii_digit())
        .fold(0, |n, &digit| n * 10 + u64::from(digit - b'0'))
}

/// For `seconds`, starts short-lived threads and processes without pause:
/// each makes a few syscalls and exits. The count is the threads started.
fn churn(seconds: u64) -> Done {
    let start = Instant::now();
    let mut started = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        thread::spawn(|| {
            // SAFETY: as in getppid_storm.
            unsafe { libc::syscall(libc::SYS_getppid) };
        })
        .join()
        .expect("a churn thread panicked");
        started += 1;
        if started % 64 == 0 {
            forked_storm(3);
        }
    }
    Done { tid: gettid(), activity: "churn", calls: started }
}

/// Starts `count` threads one after the other, each making one getppid and
/// exiting. The count is the threads started.
fn short_threads(count: u64) -> Done {
    for _ in 0..count {
        thread::spawn(|| {
            // SAFETY: as in getppid_storm.
            unsafe { libc::syscall(libc::SYS_getppid) };
        })
        .join()
        .expect("a short thread panicked");
    }
    Done { tid: gettid(), activity: "threads", calls: count }
}

/// `nops` io_uring no-ops, then `reads` 4 KiB reads of /dev/zero, then
/// `offloaded` more that must go to an io-wq worker (`IOSQE_ASYNC`), through
/// one ring, 32 at a time. The count is the requests.
fn io_uring_requests(nops: u64, reads: u64, offloaded: u64) -> Done {
    use io_uring::{opcode, squeue, types, IoUring};
    use std::os::fd::AsRawFd;
    let mut ring = IoUring::new(64).expect("io_uring_setup");
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let mut buffer = vec![0u8; 4096];
    let mut run = |count: u64, read: bool, flags: squeue::Flags| {
        let mut left = count;
        while left > 0 {
            let batch = left.min(32);
            for _ in 0..batch {
                let entry = match read {
                    true => opcode::Read::new(types::Fd(zero.as_raw_fd()), buffer.as_mut_ptr(), 4096).build(),
                    false => opcode::Nop::new().build(),
                }
                .flags(flags);
                // SAFETY: the buffer outlives the request: all are waited for.
                unsafe { ring.submission().push(&entry).expect("room in the ring") };
            }
            ring.submit_and_wait(batch as usize).expect("io_uring_enter");
            let done = ring.completion().inspect(|cqe| assert!(cqe.result() >= 0)).count() as u64;
            assert_eq!(done, batch);
            left -= batch;
        }
    };
    run(nops, false, squeue::Flags::empty());
    run(reads, true, squeue::Flags::empty());
    run(offloaded, true, squeue::Flags::ASYNC);
    Done { tid: gettid(), activity: "io_uring", calls: nops + reads + offloaded }
}

/// `count` reads of `mib` MiB from /dev/zero: syscalls that spend their
/// time on the CPU, zeroing the buffer.
fn zero_reads(count: u64, mib: u64) -> Done {
    let mut zero = std::fs::File::open("/dev/zero").unwrap();
    let mut buffer = vec![0u8; (mib << 20) as usize];
    for _ in 0..count {
        assert_eq!(std::io::Read::read(&mut zero, &mut buffer).unwrap(), buffer.len());
    }
    Done { tid: gettid(), activity: "read", calls: count }
}

/// `rounds` of: read a byte of /dev/zero, write it to /dev/null, getppid,
/// and an openat that fails: four syscalls a round, one of them an error.
fn mixed(rounds: u64) -> Done {
    let open = |path: &str, flags| {
        let path = CString::new(path).unwrap();
        // SAFETY: a valid NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr(), flags) };
        assert!(fd >= 0, "cannot open {path:?}");
        fd
    };
    let (zero, null) = (open("/dev/zero", libc::O_RDONLY), open("/dev/null", libc::O_WRONLY));
    let missing = CString::new("/nonexistent/probe-workload").unwrap();
    let mut byte = [0u8; 1];
    for _ in 0..rounds {
        // SAFETY: valid fds, a one-byte buffer and a NUL-terminated path.
        unsafe {
            libc::syscall(libc::SYS_read, zero, byte.as_mut_ptr(), 1);
            libc::syscall(libc::SYS_write, null, byte.as_ptr(), 1);
            libc::syscall(libc::SYS_getppid);
            libc::syscall(libc::SYS_openat, libc::AT_FDCWD, missing.as_ptr(), libc::O_RDONLY);
        }
    }
    // SAFETY: closing our own fds.
    unsafe {
        libc::close(zero);
        libc::close(null);
    }
    Done { tid: gettid(), activity: "mixed", calls: rounds * 4 }
}

/// `rounds` round trips of one byte between this thread and a partner
/// thread over two pipes: every write wakes the other thread, a context
/// switch storm. The count is the round trips.
fn ping_pong(rounds: u64) -> Done {
    let pipe = || {
        let mut fds = [0; 2];
        // SAFETY: a valid two-int buffer.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
        fds
    };
    let (ping, pong) = (pipe(), pipe());
    let partner = thread::spawn(move || {
        let mut byte = [0u8; 1];
        for _ in 0..rounds {
            // SAFETY: valid pipe fds and a one-byte buffer.
            unsafe {
                libc::read(ping[0], byte.as_mut_ptr().cast(), 1);
                libc::write(pong[1], byte.as_ptr().cast(), 1);
            }
        }
    });
    let mut byte = [0u8; 1];
    for _ in 0..rounds {
        // SAFETY: as above.
        unsafe {
            libc::write(ping[1], byte.as_ptr().cast(), 1);
            libc::read(pong[0], byte.as_mut_ptr().cast(), 1);
        }
    }
    partner.join().expect("the ping-pong partner panicked");
    for fd in ping.into_iter().chain(pong) {
        // SAFETY: closing our own fds.
        unsafe { libc::close(fd) };
    }
    Done { tid: gettid(), activity: "pingpong", calls: rounds }
}

fn missing_opens(calls: u64) -> Done {
    let path = CString::new(format!("/nonexistent/probe-workload-{}", std::process::id())).unwrap();
    for _ in 0..calls {
        // SAFETY: a valid NUL-terminated path; the call fails with ENOENT.
        let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
        assert_eq!(fd, -1, "the missing path exists");
    }
    Done { tid: gettid(), activity: "openat", calls }
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
    eprintln!(
        "usage: workload [--wait-signal] [--getppid N,N,...] [--sleep COUNTxMS] [--sleeps MS,MS,...] [--enoent N] [--affinity MOVES] [--spin MS,MS,...] [--pinned-spin CPU,MS,NAME] [--fork N] [--threads N] [--churn SECONDS] [--io-uring NOPS,READS,ASYNC_READS] [--zero-read COUNTxMIB] [--mixed ROUNDS,...] [--pingpong ROUNDS] [--children COUNTxMICROSECONDS] [--block-read SECONDS] [--ready-when-blocked] [--exit CODE]"
    );
    exit(2)
}

fn number(text: &str) -> u64 {
    text.parse().unwrap_or_else(|_| usage(&format!("not a number: {text}")))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut jobs: Vec<Box<dyn FnOnce() -> Done + Send>> = Vec::new();
    let mut wait_signal = false;
    let mut ready_when_blocked = false;
    let mut blocking = 0;
    let mut exit_code = 0;
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--wait-signal" => wait_signal = true,
            "--ready-when-blocked" => ready_when_blocked = true,
            "--block-read" => {
                let seconds = number(&value());
                blocking += 1;
                jobs.push(Box::new(move || block_read(seconds)));
            }
            "--getppid" => {
                for calls in value().split(',').map(number) {
                    jobs.push(Box::new(move || getppid_storm(calls)));
                }
            }
            "--sleep" => {
                let spec = value();
                let (count, ms) = spec.split_once('x').unwrap_or_else(|| usage("--sleep takes COUNTxMS"));
                let (count, each) = (number(count), Duration::from_millis(number(ms)));
                blocking += 1;
                jobs.push(Box::new(move || sleeps(count, each)));
            }
            "--sleeps" => {
                let each: Vec<u64> = value().split(',').map(number).collect();
                jobs.push(Box::new(move || listed_sleeps(each)));
            }
            "--enoent" => {
                let calls = number(&value());
                jobs.push(Box::new(move || missing_opens(calls)));
            }
            "--affinity" => {
                let moves = number(&value());
                jobs.push(Box::new(move || hop(moves)));
            }
            "--spin" => {
                for ms in value().split(',').map(number) {
                    jobs.push(Box::new(move || spin(Duration::from_millis(ms))));
                }
            }
            "--pinned-spin" => {
                let spec = value();
                let mut parts = spec.splitn(3, ',');
                let (Some(cpu), Some(ms), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                    usage("--pinned-spin takes CPU,MS,NAME");
                };
                let (cpu, run, name) =
                    (number(cpu) as usize, Duration::from_millis(number(ms)), name.to_owned());
                jobs.push(Box::new(move || pinned_spin(cpu, run, &name)));
            }
            "--io-uring" => {
                let counts: Vec<u64> = value().split(',').map(number).collect();
                let &[nops, reads, offloaded] = &counts[..] else {
                    usage("--io-uring takes NOPS,READS,ASYNC_READS");
                };
                jobs.push(Box::new(move || io_uring_requests(nops, reads, offloaded)));
            }
            "--zero-read" => {
                let spec = value();
                let (count, mib) =
                    spec.split_once('x').unwrap_or_else(|| usage("--zero-read takes COUNTxMIB"));
                let (count, mib) = (number(count), number(mib));
                jobs.push(Box::new(move || zero_reads(count, mib)));
            }
            "--mixed" => {
                for rounds in value().split(',').map(number) {
                    jobs.push(Box::new(move || mixed(rounds)));
                }
            }
            "--pingpong" => {
                let rounds = number(&value());
                jobs.push(Box::new(move || ping_pong(rounds)));
            }
            "--rename" => {
                let name = value();
                jobs.push(Box::new(move || renamed(&name, 10)));
            }
            "--int80" => {
                let calls = number(&value());
                jobs.push(Box::new(move || int80_getpids(calls)));
            }
            "--children" => {
                let spec = value();
                let (count, us) =
                    spec.split_once('x').unwrap_or_else(|| usage("--children takes COUNTxMICROSECONDS"));
                let (count, spin) = (number(count), Duration::from_micros(number(us)));
                jobs.push(Box::new(move || short_children(count, spin)));
            }
            "--fork" => {
                let calls = number(&value());
                jobs.push(Box::new(move || forked_storm(calls)));
            }
            "--threads" => {
                let count = number(&value());
                jobs.push(Box::new(move || short_threads(count)));
            }
            "--churn" => {
                let seconds = number(&value());
                jobs.push(Box::new(move || churn(seconds)));
            }
            "--exit" => exit_code = number(&value()) as i32,
            other => usage(&format!("unknown flag {other}")),
        }
    }
    if wait_signal {
        wait_for_sigusr1();
    }
    // Each worker hands over its account, then waits until the main thread
    // has read every worker's counters, so that it is alive while they are.
    let (accounts, done) = mpsc::channel();
    let workers: Vec<_> = jobs
        .into_iter()
        .map(|job| {
            let accounts = accounts.clone();
            let (release, released) = mpsc::channel::<()>();
            thread::spawn(move || {
                // SAFETY: pthread_self cannot fail.
                let me = unsafe { libc::pthread_self() };
                let start = Instant::now();
                let done = job();
                accounts.send((done, start.elapsed(), me, release)).unwrap();
                let _ = released.recv();
            })
        })
        .collect();
    drop(accounts);
    if ready_when_blocked {
        announce_blocked(blocking);
    }
    // Every worker lives until all have finished: the threads of a run are
    // the threads of its report, none exited and replaced under its tid.
    let (done, releases): (Vec<String>, Vec<mpsc::Sender<()>>) = done
        .iter()
        .take(workers.len())
        .map(|(job, elapsed, worker, release): (Done, Duration, libc::pthread_t, mpsc::Sender<()>)| {
            (account(job, elapsed, worker), release)
        })
        .unzip();
    drop(releases);
    for worker in workers {
        worker.join().expect("a workload thread panicked");
    }
    let accounts: Vec<String> = done.into_iter().chain(CHILDREN.lock().unwrap().drain(..)).collect();
    println!("{{\"pid\":{},\"threads\":[{}]}}", std::process::id(), accounts.join(","));
    exit(exit_code);
}
