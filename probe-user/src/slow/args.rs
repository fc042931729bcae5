//! A syscall's arguments as a person reads them: file descriptors as what
//! they are (`3<pipe:[12345]>`, `5<TCP:[127.0.0.1:43210->127.0.0.1:6379]>`),
//! path arguments as strings read from the caller's memory, sizes and flags
//! as numbers, and the rest as raw hexadecimal.
//!
//! The registers come from the call's return, so everything here describes
//! the process *after* the call: an fd may have been closed (by this very
//! call, for `close`) or reused, a path's memory rewritten or unmapped, the
//! process gone. Each such case shows less (no target, the bare address),
//! never an error and never a panic: the registers may hold anything.
//!
//! The strings come from other people's processes and are kept raw here;
//! [`Arg`]'s `Display` and `Serialize` pass them through [`escape`], so no
//! output can show them unescaped.

use std::{
    ffi::CString,
    fmt, fs,
    io::IoSliceMut,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use nix::{
    sys::uio::{process_vm_readv, RemoteIoVec},
    unistd::Pid,
};
use probe_common::COMPAT_NR;
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::{Serialize, Serializer};
use syscalls::Sysno;

use crate::{escape, target::pidfd_open};

/// One argument of a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Arg {
    /// The parameter's name in the syscall's man page (`fd`, `buf`,
    /// `count`), or `arg0`..`arg5` for a syscall without a signature here.
    pub name: &'static str,
    #[serde(flatten)]
    pub value: ArgValue,
}

/// What an argument holds. In JSON, `{"name":..,"kind":"fd","fd":3,"what":..}`,
/// `{"name":..,"kind":"int","value":4096}` and so on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ArgValue {
    /// A file descriptor and what it refers to now: a path, `pipe:[INODE]`,
    /// `TCP:[LOCAL->REMOTE]`, `anon_inode:[eventfd]`... `None` when it is
    /// not open (any more) or the process is gone. A directory fd of
    /// `AT_FDCWD` refers to the thread's working directory.
    Fd {
        fd: i32,
        #[serde(serialize_with = "visible_option")]
        what: Option<String>,
    },
    /// A NUL-terminated path at `addr` in the process's memory; `None` when
    /// it cannot be read there, whole, now.
    Path {
        addr: u64,
        #[serde(serialize_with = "visible_option")]
        path: Option<String>,
    },
    /// A signed number (`int`, `long`, `off_t`, a pid), shown in decimal.
    Int { value: i64 },
    /// An unsigned number (`size_t`, a count), shown in decimal.
    Uint { value: u64 },
    /// Flags or a command, shown in hexadecimal as the headers define them.
    Flags { value: u64 },
    /// A file mode, shown in octal.
    Mode { value: u32 },
    /// A pointer, or a value of unknown type, shown in hexadecimal.
    Raw { value: u64 },
}

/// `AT_FDCWD` (include/uapi/linux/fcntl.h): the "directory fd" that means
/// the working directory.
const AT_FDCWD: i32 = -100;

/// The longest path the kernel accepts, its NUL included (`PATH_MAX`).
const PATH_MAX: usize = 4096;

/// Remote reads never cross a multiple of this, since the next page may be
/// unmapped: x86-64's smallest page (larger pages are multiples of it).
const PAGE: u64 = 4096;

/// The arguments of syscall `nr` (x86-64 numbers; with [`COMPAT_NR`] set,
/// an i386 one) made by thread `tid` of process `pid`, registers `args` in
/// the order rdi, rsi, rdx, r10, r8, r9: as many as the syscall takes, or
/// all six raw for a syscall without a signature here and for i386 calls.
pub fn decode(pid: u32, tid: u32, nr: u32, args: &[u64; 6]) -> Vec<Arg> {
    let signature = if nr & COMPAT_NR == 0 {
        usize::try_from(nr).ok().and_then(Sysno::new).and_then(signature)
    } else {
        None
    };
    let Some(params) = signature else {
        const NAMES: [&str; 6] = ["arg0", "arg1", "arg2", "arg3", "arg4", "arg5"];
        return NAMES
            .iter()
            .zip(args)
            .map(|(&name, &value)| Arg { name, value: ArgValue::Raw { value } })
            .collect();
    };
    // The fd table and net namespace are the thread's: a thread may have
    // its own (clone without CLONE_FILES, setns), and once the process's
    // first thread has exited, `/proc/PID/fd` is empty though the others
    // still use their fds.
    let task = Task { pid, tid };
    params
        .iter()
        .zip(args)
        .map(|(&(name, kind), &raw)| Arg { name, value: kind.decode(&task, raw) })
        .collect()
}

impl fmt::Display for Arg {
    /// The value as strace shows it, its strings escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.value, f)
    }
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Only a directory fd looks its negative value up (see
            // `Kind::DirFd`), so a target on AT_FDCWD means that one.
            Self::Fd { fd: AT_FDCWD, what: Some(what) } => write!(f, "AT_FDCWD<{}>", visible_target(what)),
            Self::Fd { fd, what: Some(what) } => write!(f, "{fd}<{}>", visible_target(what)),
            Self::Fd { fd, what: None } => write!(f, "{fd}"),
            Self::Path { path: Some(path), .. } => write!(f, "\"{}\"", visible_within(path, '"')),
            Self::Path { addr: 0, path: None } => f.write_str("NULL"),
            Self::Path { addr, path: None } => write!(f, "{addr:#x}"),
            Self::Int { value } => write!(f, "{value}"),
            Self::Uint { value } => write!(f, "{value}"),
            Self::Flags { value } => write!(f, "{value:#x}"),
            Self::Mode { value } => write!(f, "0{value:o}"),
            Self::Raw { value } => write!(f, "{value:#x}"),
        }
    }
}

/// `text` made visible, with `end`, the character that closes it where it
/// is shown, escaped too, so that a name cannot seem to end early and be
/// followed by made-up arguments. `escape::visible` doubles backslashes,
/// so the result still reads back unambiguously.
fn visible_within(text: &str, end: char) -> String {
    escape::visible(text).replace(end, &format!("\\x{:02x}", u32::from(end)))
}

/// What an fd refers to, made visible: the parts that come from other
/// processes (a path, a unix socket's path) cannot end it early either.
/// The kernel's own names (`pipe:[1]`, `anon_inode:[eventfd]`) and the
/// socket addresses, numbers, are shown as they are.
fn visible_target(what: &str) -> String {
    // Every path readlink shows is absolute; the kernel's names are not.
    if what.starts_with('/') {
        return visible_within(what, '>');
    }
    // `UNIX...:[INODE,"PATH"]`, as `Task::socket` writes it.
    if let Some((socket, path)) = what.split_once(",\"") {
        if let Some(path) = path.strip_suffix("\"]") {
            let path = visible_within(path, '"').replace('>', "\\x3e");
            return format!("{},\"{path}\"]", escape::visible(socket));
        }
    }
    escape::visible(what)
}

fn visible_option<S: Serializer>(text: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    text.as_deref().map(escape::visible).serialize(serializer)
}

/// How to read one parameter, after its C type in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fd,
    /// The directory a `*at` call resolves a relative path against.
    DirFd,
    Path,
    /// `int`: the kernel reads the low 32 bits.
    Int,
    /// `long`, `off_t`, `loff_t`.
    Long,
    /// `unsigned int`.
    Uint,
    /// `size_t`, `unsigned long`.
    Ulong,
    /// `int`/`unsigned int` flags or command.
    Flags,
    /// `umode_t`.
    Mode,
    /// A pointer, or something whose type depends on another argument.
    Ptr,
}

impl Kind {
    // The truncating casts are what the kernel does with the register of a
    // parameter declared narrower than a long.
    fn decode(self, task: &Task, raw: u64) -> ArgValue {
        match self {
            Self::Fd => {
                let fd = raw as i32;
                ArgValue::Fd { fd, what: task.fd(fd) }
            }
            Self::DirFd => {
                let fd = raw as i32;
                let what = if fd == AT_FDCWD { task.cwd() } else { task.fd(fd) };
                ArgValue::Fd { fd, what }
            }
            Self::Path => ArgValue::Path { addr: raw, path: task.string(raw) },
            Self::Int => ArgValue::Int { value: i64::from(raw as i32) },
            Self::Long => ArgValue::Int { value: raw as i64 },
            Self::Uint => ArgValue::Uint { value: u64::from(raw as u32) },
            Self::Ulong => ArgValue::Uint { value: raw },
            Self::Flags => ArgValue::Flags { value: u64::from(raw as u32) },
            Self::Mode => ArgValue::Mode { value: u32::from(raw as u16) },
            Self::Ptr => ArgValue::Raw { value: raw },
        }
    }
}

/// The parameters of x86-64 syscall `call`, from the kernel's
/// `SYSCALL_DEFINE`s, named as in the man pages.
///
/// Written by hand: no maintained crate has x86-64 signatures with argument
/// types that fits. `syscalls` (already used) has numbers and names only;
/// `reverie-syscalls` has typed syscalls but brings older `nix` and
/// `syscalls` and its own memory-access framework; `ptrace-syscalls` is an
/// experimental ptrace tracer and `stracers-core` a 0.1 ptrace tracer whose
/// decoding is a match in its tracer, not a table. probe needs only which
/// register is an fd, a path or a number, for the syscalls people wait on;
/// the rest show raw, as strace shows unknown ones.
fn signature(call: Sysno) -> Option<&'static [(&'static str, Kind)]> {
    use Kind::{DirFd, Fd, Flags, Int, Long, Mode, Path, Ptr, Uint, Ulong};
    Some(match call {
        // Reads and writes.
        Sysno::read | Sysno::write => &[("fd", Fd), ("buf", Ptr), ("count", Ulong)],
        Sysno::pread64 | Sysno::pwrite64 => &[("fd", Fd), ("buf", Ptr), ("count", Ulong), ("offset", Long)],
        Sysno::readv | Sysno::writev => &[("fd", Fd), ("iov", Ptr), ("iovcnt", Ulong)],
        Sysno::preadv | Sysno::pwritev => {
            &[("fd", Fd), ("iov", Ptr), ("iovcnt", Ulong), ("pos_l", Long), ("pos_h", Long)]
        }
        Sysno::preadv2 | Sysno::pwritev2 => {
            &[("fd", Fd), ("iov", Ptr), ("iovcnt", Ulong), ("pos_l", Long), ("pos_h", Long), ("flags", Flags)]
        }
        Sysno::splice => &[
            ("fd_in", Fd),
            ("off_in", Ptr),
            ("fd_out", Fd),
            ("off_out", Ptr),
            ("len", Ulong),
            ("flags", Flags),
        ],
        Sysno::tee => &[("fd_in", Fd), ("fd_out", Fd), ("len", Ulong), ("flags", Flags)],
        Sysno::sendfile => &[("out_fd", Fd), ("in_fd", Fd), ("offset", Ptr), ("count", Ulong)],
        Sysno::copy_file_range => &[
            ("fd_in", Fd),
            ("off_in", Ptr),
            ("fd_out", Fd),
            ("off_out", Ptr),
            ("len", Ulong),
            ("flags", Flags),
        ],
        Sysno::getdents64 => &[("fd", Fd), ("dirp", Ptr), ("count", Uint)],
        Sysno::lseek => &[("fd", Fd), ("offset", Long), ("whence", Int)],
        Sysno::io_uring_enter => &[
            ("fd", Fd),
            ("to_submit", Uint),
            ("min_complete", Uint),
            ("flags", Flags),
            ("arg", Ptr),
            ("argsz", Ulong),
        ],

        // Sockets.
        Sysno::socket => &[("domain", Int), ("type", Flags), ("protocol", Int)],
        Sysno::socketpair => &[("domain", Int), ("type", Flags), ("protocol", Int), ("sv", Ptr)],
        Sysno::recvfrom => &[
            ("sockfd", Fd),
            ("buf", Ptr),
            ("len", Ulong),
            ("flags", Flags),
            ("src_addr", Ptr),
            ("addrlen", Ptr),
        ],
        Sysno::sendto => &[
            ("sockfd", Fd),
            ("buf", Ptr),
            ("len", Ulong),
            ("flags", Flags),
            ("dest_addr", Ptr),
            ("addrlen", Int),
        ],
        Sysno::recvmsg | Sysno::sendmsg => &[("sockfd", Fd), ("msg", Ptr), ("flags", Flags)],
        Sysno::recvmmsg => {
            &[("sockfd", Fd), ("msgvec", Ptr), ("vlen", Uint), ("flags", Flags), ("timeout", Ptr)]
        }
        Sysno::sendmmsg => &[("sockfd", Fd), ("msgvec", Ptr), ("vlen", Uint), ("flags", Flags)],
        Sysno::accept => &[("sockfd", Fd), ("addr", Ptr), ("addrlen", Ptr)],
        Sysno::accept4 => &[("sockfd", Fd), ("addr", Ptr), ("addrlen", Ptr), ("flags", Flags)],
        Sysno::connect | Sysno::bind => &[("sockfd", Fd), ("addr", Ptr), ("addrlen", Int)],
        Sysno::getsockname | Sysno::getpeername => &[("sockfd", Fd), ("addr", Ptr), ("addrlen", Ptr)],
        Sysno::listen => &[("sockfd", Fd), ("backlog", Int)],
        Sysno::shutdown => &[("sockfd", Fd), ("how", Int)],
        Sysno::getsockopt => {
            &[("sockfd", Fd), ("level", Int), ("optname", Int), ("optval", Ptr), ("optlen", Ptr)]
        }
        Sysno::setsockopt => {
            &[("sockfd", Fd), ("level", Int), ("optname", Int), ("optval", Ptr), ("optlen", Int)]
        }

        // Other calls on an fd.
        Sysno::close | Sysno::fsync | Sysno::fdatasync | Sysno::fchdir | Sysno::dup => &[("fd", Fd)],
        Sysno::dup2 => &[("oldfd", Fd), ("newfd", Fd)],
        Sysno::dup3 => &[("oldfd", Fd), ("newfd", Fd), ("flags", Flags)],
        Sysno::ftruncate => &[("fd", Fd), ("length", Long)],
        Sysno::fallocate => &[("fd", Fd), ("mode", Flags), ("offset", Long), ("len", Long)],
        Sysno::sync_file_range => &[("fd", Fd), ("offset", Long), ("nbytes", Long), ("flags", Flags)],
        Sysno::fstat | Sysno::fstatfs => &[("fd", Fd), ("statbuf", Ptr)],
        Sysno::fchmod => &[("fd", Fd), ("mode", Mode)],
        Sysno::fchown => &[("fd", Fd), ("owner", Uint), ("group", Uint)],
        // fcntl's and ioctl's third argument is an int or a pointer,
        // depending on the command.
        Sysno::fcntl => &[("fd", Fd), ("cmd", Int), ("arg", Ptr)],
        Sysno::ioctl => &[("fd", Fd), ("request", Flags), ("arg", Ptr)],
        Sysno::flock => &[("fd", Fd), ("operation", Int)],
        Sysno::epoll_wait => &[("epfd", Fd), ("events", Ptr), ("maxevents", Int), ("timeout", Int)],
        Sysno::epoll_pwait => &[
            ("epfd", Fd),
            ("events", Ptr),
            ("maxevents", Int),
            ("timeout", Int),
            ("sigmask", Ptr),
            ("sigsetsize", Ulong),
        ],
        Sysno::epoll_pwait2 => &[
            ("epfd", Fd),
            ("events", Ptr),
            ("maxevents", Int),
            ("timeout", Ptr),
            ("sigmask", Ptr),
            ("sigsetsize", Ulong),
        ],
        Sysno::epoll_ctl => &[("epfd", Fd), ("op", Int), ("fd", Fd), ("event", Ptr)],
        Sysno::inotify_add_watch => &[("fd", Fd), ("pathname", Path), ("mask", Flags)],

        // Paths.
        Sysno::open => &[("pathname", Path), ("flags", Flags), ("mode", Mode)],
        Sysno::creat | Sysno::mkdir | Sysno::chmod => &[("pathname", Path), ("mode", Mode)],
        Sysno::openat => &[("dirfd", DirFd), ("pathname", Path), ("flags", Flags), ("mode", Mode)],
        Sysno::openat2 => &[("dirfd", DirFd), ("pathname", Path), ("how", Ptr), ("size", Ulong)],
        Sysno::stat | Sysno::lstat | Sysno::statfs => &[("pathname", Path), ("statbuf", Ptr)],
        Sysno::newfstatat => &[("dirfd", DirFd), ("pathname", Path), ("statbuf", Ptr), ("flags", Flags)],
        Sysno::statx => {
            &[("dirfd", DirFd), ("pathname", Path), ("flags", Flags), ("mask", Flags), ("statxbuf", Ptr)]
        }
        Sysno::access => &[("pathname", Path), ("mode", Flags)],
        Sysno::faccessat => &[("dirfd", DirFd), ("pathname", Path), ("mode", Flags)],
        Sysno::faccessat2 => &[("dirfd", DirFd), ("pathname", Path), ("mode", Flags), ("flags", Flags)],
        Sysno::truncate => &[("path", Path), ("length", Long)],
        Sysno::unlink | Sysno::rmdir | Sysno::chdir => &[("pathname", Path)],
        Sysno::unlinkat => &[("dirfd", DirFd), ("pathname", Path), ("flags", Flags)],
        Sysno::mkdirat => &[("dirfd", DirFd), ("pathname", Path), ("mode", Mode)],
        Sysno::rename | Sysno::link | Sysno::symlink => &[("oldpath", Path), ("newpath", Path)],
        Sysno::renameat => &[("olddirfd", DirFd), ("oldpath", Path), ("newdirfd", DirFd), ("newpath", Path)],
        Sysno::renameat2 => &[
            ("olddirfd", DirFd),
            ("oldpath", Path),
            ("newdirfd", DirFd),
            ("newpath", Path),
            ("flags", Flags),
        ],
        Sysno::readlink => &[("pathname", Path), ("buf", Ptr), ("bufsiz", Ulong)],
        Sysno::readlinkat => &[("dirfd", DirFd), ("pathname", Path), ("buf", Ptr), ("bufsiz", Int)],
        Sysno::chown | Sysno::lchown => &[("pathname", Path), ("owner", Uint), ("group", Uint)],
        // A successful execve's registers at its return are the new
        // program's, zeroed: its path shows NULL; a failed one's are intact.
        Sysno::execve => &[("pathname", Path), ("argv", Ptr), ("envp", Ptr)],
        Sysno::execveat => {
            &[("dirfd", DirFd), ("pathname", Path), ("argv", Ptr), ("envp", Ptr), ("flags", Flags)]
        }

        // Waiting.
        Sysno::poll => &[("fds", Ptr), ("nfds", Uint), ("timeout", Int)],
        Sysno::ppoll => {
            &[("fds", Ptr), ("nfds", Uint), ("tmo_p", Ptr), ("sigmask", Ptr), ("sigsetsize", Ulong)]
        }
        Sysno::select => {
            &[("nfds", Int), ("readfds", Ptr), ("writefds", Ptr), ("exceptfds", Ptr), ("timeout", Ptr)]
        }
        Sysno::pselect6 => &[
            ("nfds", Int),
            ("readfds", Ptr),
            ("writefds", Ptr),
            ("exceptfds", Ptr),
            ("timeout", Ptr),
            ("sigmask", Ptr),
        ],
        // val2 shares the timeout's register for some operations.
        Sysno::futex => &[
            ("uaddr", Ptr),
            ("futex_op", Int),
            ("val", Uint),
            ("timeout", Ptr),
            ("uaddr2", Ptr),
            ("val3", Flags),
        ],
        Sysno::futex_waitv => {
            &[("waiters", Ptr), ("nr_futexes", Uint), ("flags", Flags), ("timeout", Ptr), ("clockid", Int)]
        }
        Sysno::nanosleep => &[("req", Ptr), ("rem", Ptr)],
        Sysno::clock_nanosleep => &[("clockid", Int), ("flags", Flags), ("request", Ptr), ("remain", Ptr)],
        Sysno::wait4 => &[("pid", Int), ("wstatus", Ptr), ("options", Flags), ("rusage", Ptr)],
        Sysno::waitid => &[("idtype", Int), ("id", Int), ("infop", Ptr), ("options", Flags), ("rusage", Ptr)],

        // Memory.
        Sysno::mmap => &[
            ("addr", Ptr),
            ("length", Ulong),
            ("prot", Flags),
            ("flags", Flags),
            ("fd", Fd),
            ("offset", Long),
        ],
        Sysno::munmap => &[("addr", Ptr), ("length", Ulong)],
        Sysno::mprotect => &[("addr", Ptr), ("length", Ulong), ("prot", Flags)],
        Sysno::madvise => &[("addr", Ptr), ("length", Ulong), ("advice", Int)],
        Sysno::brk => &[("addr", Ptr)],

        // Processes and signals.
        Sysno::kill => &[("pid", Int), ("sig", Int)],
        Sysno::tgkill => &[("tgid", Int), ("tid", Int), ("sig", Int)],
        Sysno::pipe => &[("pipefd", Ptr)],
        Sysno::pipe2 => &[("pipefd", Ptr), ("flags", Flags)],
        Sysno::exit | Sysno::exit_group => &[("status", Int)],
        Sysno::sched_yield
        | Sysno::getpid
        | Sysno::getppid
        | Sysno::gettid
        | Sysno::getuid
        | Sysno::geteuid
        | Sysno::getgid
        | Sysno::getegid
        | Sysno::getpgrp
        | Sysno::setsid
        | Sysno::fork
        | Sysno::vfork
        | Sysno::pause
        | Sysno::sync => &[],
        _ => return None,
    })
}

/// The thread whose call it was, as `/proc` and its memory show it now.
struct Task {
    pid: u32,
    tid: u32,
}

impl Task {
    fn dir(&self) -> String {
        format!("/proc/{}/task/{}", self.pid, self.tid)
    }

    /// What open fd `fd` refers to, socket addresses looked up.
    fn fd(&self, fd: i32) -> Option<String> {
        if fd < 0 {
            return None;
        }
        let link = format!("{}/fd/{fd}", self.dir());
        // readlink only: opening the target could block (a FIFO) or have
        // effects (a device).
        let target = fs::read_link(&link).ok()?;
        let target = target.as_os_str().as_bytes();
        // A path is absolute, so only the kernel's own names start so.
        let socket = target.strip_prefix(b"socket:[").and_then(|rest| rest.strip_suffix(b"]"));
        match socket.and_then(|inode| std::str::from_utf8(inode).ok()?.parse().ok()) {
            Some(inode) => Some(self.socket(fd, &link, inode)),
            None => Some(String::from_utf8_lossy(target).into_owned()),
        }
    }

    /// The working directory, which a relative path of an `AT_FDCWD` call
    /// is resolved against.
    fn cwd(&self) -> Option<String> {
        let cwd = fs::read_link(format!("{}/cwd", self.dir())).ok()?;
        Some(String::from_utf8_lossy(cwd.as_os_str().as_bytes()).into_owned())
    }

    /// Socket `inode`, the thread's `fd`, open at `link`, as strace -yy
    /// shows it: its protocol and addresses,
    /// `TCP:[127.0.0.1:43210->127.0.0.1:6379]`. The socket's protocol (the
    /// kernel's name for it, as an extended attribute of the socket) says
    /// what to ask; a socket whose addresses cannot be had shows
    /// `TCP:[INODE]`.
    fn socket(&self, fd: i32, link: &str, inode: u64) -> String {
        let Some(protocol) = socket_protocol(link) else {
            return format!("socket:[{inode}]");
        };
        let found = match protocol.as_str() {
            "TCP" | "TCPv6" | "UDP" | "UDPv6" => {
                self.ask_socket(fd, inode).or_else(|| self.inet_from_table(&protocol, inode))
            }
            // `UNIX-STREAM`, `UNIX-DGRAM`... on recent kernels.
            unix if unix.starts_with("UNIX") => fs::read(format!("{}/net/unix", self.dir()))
                .ok()
                .and_then(|table| unix_path(&table, inode))
                .map(|path| match path {
                    Some(path) => format!("{inode},\"{}\"", String::from_utf8_lossy(&path)),
                    None => inode.to_string(),
                }),
            _ => None,
        };
        format!("{protocol}:[{}]", found.unwrap_or_else(|| inode.to_string()))
    }

    /// `LOCAL->REMOTE` (`LOCAL` alone for an unconnected one) of TCP or UDP
    /// socket `inode`, asked of the socket itself: `getsockname` and
    /// `getpeername` on a duplicate of the thread's `fd` (`pidfd_getfd`,
    /// which root may take), in microseconds, where a table's read takes
    /// milliseconds (below). `None` when the duplicate cannot be had (a
    /// security module may refuse it) or is no longer that socket.
    fn ask_socket(&self, fd: i32, inode: u64) -> Option<String> {
        let pidfd = pidfd_open(self.pid).ok()?;
        // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags,
        // and returns a new fd or -1.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        let dup = RawFd::try_from(dup).ok().filter(|&dup| dup >= 0)?;
        // SAFETY: the kernel just returned this fd, and nothing else owns it.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        // The thread may have closed `fd` since, and opened another.
        if nix::sys::stat::fstat(&dup).ok()?.st_ino != inode {
            return None;
        }
        // std's TcpStream serves any inet socket for getsockname and
        // getpeername, the only calls made on it; dropping it closes the
        // duplicate alone, the thread's socket is untouched.
        let socket = std::net::TcpStream::from(dup);
        let local = socket.local_addr().ok()?;
        Some(match socket.peer_addr() {
            Ok(remote) => addresses(local, remote),
            Err(_) => local.to_string(),
        })
    }

    /// `LOCAL->REMOTE` (`LOCAL` alone for an unconnected one) of TCP or UDP
    /// socket `inode`, from the thread's net namespace's table.
    fn inet_from_table(&self, protocol: &str, inode: u64) -> Option<String> {
        let tcp = matches!(protocol, "TCP" | "TCPv6");
        // Reading a TCP table walks every bucket of the kernel's hash of
        // established sockets (262,144 on this 24 GiB VM), 4 ms here,
        // whatever the sockets: a busy server's calls are described from
        // one read of its table, not one per call.
        let netns = tcp.then(|| self.net_namespace()).flatten();
        if let Some(netns) = netns {
            if let Some(known) = tcp_sockets().known.get(&(netns, inode)) {
                return Some(known.clone());
            }
        }
        let process = procfs::process::Process::new_with_root(PathBuf::from(self.dir())).ok()?;
        if tcp {
            let table = match protocol {
                "TCP" => process.tcp().ok()?,
                _ => process.tcp6().ok()?,
            };
            let found = table.iter().find(|entry| entry.inode == inode).map(inet_text);
            if let Some(netns) = netns {
                remember_tcp(netns, &table);
            }
            return found;
        }
        let table = match protocol {
            "UDP" => process.udp().ok()?,
            _ => process.udp6().ok()?,
        };
        table
            .iter()
            .find(|entry| entry.inode == inode)
            .map(|entry| addresses(entry.local_address, entry.remote_address))
    }

    /// The inode of the thread's net namespace.
    fn net_namespace(&self) -> Option<u64> {
        let link = fs::read_link(format!("{}/ns/net", self.dir())).ok()?;
        let link = link.as_os_str().as_bytes();
        let inode = link.strip_prefix(b"net:[")?.strip_suffix(b"]")?;
        std::str::from_utf8(inode).ok()?.parse().ok()
    }

    /// The NUL-terminated string at `addr` in the process's memory, at most
    /// `PATH_MAX` bytes with its NUL: `None` for one longer (the kernel
    /// would have refused it as a path) or not all readable now.
    fn string(&self, addr: u64) -> Option<String> {
        let pid = Pid::from_raw(i32::try_from(self.tid).ok().filter(|&tid| tid > 0)?);
        let mut bytes = Vec::with_capacity(PATH_MAX);
        let mut at = addr;
        while bytes.len() < PATH_MAX {
            // Page by page: a string may end just before an unmapped page,
            // and a read that reaches into one fails whole.
            let to_page_end = PAGE - at % PAGE;
            let len = usize::try_from(to_page_end).ok()?.min(PATH_MAX - bytes.len());
            let mut page = [0u8; PAGE as usize];
            let chunk = &mut page[..len];
            let remote = RemoteIoVec { base: usize::try_from(at).ok()?, len };
            // The thread's id, not the process's: the process's first
            // thread may have exited, and with it the id's hold on memory.
            let read = process_vm_readv(pid, &mut [IoSliceMut::new(chunk)], &[remote]).ok()?;
            let chunk = chunk.get(..read)?;
            if let Some(end) = chunk.iter().position(|&b| b == 0) {
                bytes.extend_from_slice(&chunk[..end]);
                return Some(String::from_utf8_lossy(&bytes).into_owned());
            }
            if read < len {
                return None;
            }
            bytes.extend_from_slice(chunk);
            at = at.checked_add(to_page_end)?;
        }
        None
    }
}

/// The protocol name the kernel gives the socket open at `link` (`TCP`,
/// `UDPv6`, `UNIX`, `NETLINK`...), as strace asks it.
fn socket_protocol(link: &str) -> Option<String> {
    let path = CString::new(link).ok()?;
    let mut name = [0u8; 32];
    // SAFETY: both strings are NUL-terminated and the kernel writes at most
    // `name.len()` bytes into `name`.
    let len = unsafe {
        libc::getxattr(path.as_ptr(), c"system.sockprotoname".as_ptr(), name.as_mut_ptr().cast(), name.len())
    };
    let name = name.get(..usize::try_from(len).ok()?)?;
    let name = name.strip_suffix(b"\0").unwrap_or(name);
    (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
}

/// `LOCAL->REMOTE`, or `LOCAL` alone for an unconnected socket.
fn addresses(local: SocketAddr, remote: SocketAddr) -> String {
    if remote.ip().is_unspecified() && remote.port() == 0 {
        local.to_string()
    } else {
        format!("{local}->{remote}")
    }
}

fn inet_text(entry: &procfs::net::TcpNetEntry) -> String {
    addresses(entry.local_address, entry.remote_address)
}

/// TCP sockets whose addresses can no longer change (connected, or
/// listening), as their tables last showed them, by net namespace and
/// socket inode, and since when.
#[derive(Default)]
struct TcpSockets {
    known: FxHashMap<(u64, u64), String>,
    since: Option<Instant>,
}

/// Most sockets remembered: beyond, they are forgotten all at once.
const MAX_TCP_SOCKETS: usize = 16_384;

/// How long sockets are remembered: socket inodes come from a 32-bit
/// counter that every new inode of the system moves, so one may name
/// another socket after it wraps, which takes far longer.
const TCP_SOCKETS_FOR: Duration = Duration::from_secs(10);

/// The sockets remembered, forgotten first if they are too old.
fn tcp_sockets() -> MutexGuard<'static, TcpSockets> {
    static SOCKETS: Mutex<TcpSockets> =
        Mutex::new(TcpSockets { known: FxHashMap::with_hasher(FxBuildHasher), since: None });
    let mut sockets = SOCKETS.lock().unwrap_or_else(PoisonError::into_inner);
    if sockets.since.is_some_and(|since| since.elapsed() > TCP_SOCKETS_FOR) {
        *sockets = TcpSockets::default();
    }
    sockets
}

/// Remembers the sockets of net namespace `netns`'s TCP `table` that
/// will not change.
fn remember_tcp(netns: u64, table: &[procfs::net::TcpNetEntry]) {
    let mut sockets = tcp_sockets();
    sockets.since.get_or_insert_with(Instant::now);
    let settled = table.iter().filter(|entry| {
        entry.remote_address.port() != 0 || matches!(entry.state, procfs::net::TcpState::Listen)
    });
    for entry in settled {
        if sockets.known.len() >= MAX_TCP_SOCKETS {
            sockets.known.clear();
        }
        sockets.known.insert((netns, entry.inode), inet_text(entry));
    }
}

/// The path of unix socket `inode` in a `/proc/net/unix` table: `Some(None)`
/// for one without (unbound, or the kernel's `@` names of abstract ones
/// are the path). Lines are `Num RefCount Protocol Flags Type St Inode
/// [Path]`, the path raw to the end of the line. A path may hold a newline
/// and so make up a line of its own: an inode found on more than one line
/// is not trusted (`None`). Not the `procfs` crate's parser: it cuts paths
/// at spaces and fails the whole table on a path that is not UTF-8.
fn unix_path(table: &[u8], inode: u64) -> Option<Option<Vec<u8>>> {
    let mut found = None;
    for line in table.split(|&b| b == b'\n') {
        let mut rest = line;
        let mut field = || {
            let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
            let end = rest[start..].iter().position(|&b| b == b' ').map_or(rest.len(), |len| start + len);
            let field = &rest[start..end];
            rest = &rest[end..];
            field
        };
        let inode_field = (0..7).map(|_| field()).last()?;
        let matches =
            std::str::from_utf8(inode_field).ok().and_then(|text| text.parse::<u64>().ok()) == Some(inode);
        if matches {
            if found.is_some() {
                return None;
            }
            let path = rest.strip_prefix(b" ").filter(|path| !path.is_empty());
            found = Some(path.map(<[u8]>::to_vec));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::Write,
        net::{TcpListener, TcpStream, UdpSocket},
        os::unix::{fs::MetadataExt, net::UnixListener},
    };

    use proptest::prelude::*;

    fn me() -> (u32, u32) {
        (std::process::id(), u32::try_from(nix::unistd::gettid().as_raw()).unwrap())
    }

    fn nr(call: Sysno) -> u32 {
        u32::try_from(call.id()).unwrap()
    }

    /// The first argument of `read(fd, ...)` in this process.
    fn read_fd(fd: i32) -> Arg {
        let (pid, tid) = me();
        let raw = u64::from(fd as u32);
        decode(pid, tid, nr(Sysno::read), &[raw, 0x7ffd_5e1c_2a40, 4096, 0, 0, 0]).remove(0)
    }

    fn what(arg: &Arg) -> String {
        match &arg.value {
            ArgValue::Fd { what: Some(what), .. } => what.clone(),
            other => panic!("not an open fd: {other:?}"),
        }
    }

    /// A scratch directory of this test process.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("probe-args-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn read_shows_its_signature() {
        let (reader, _writer) = nix::unistd::pipe().unwrap();
        let (pid, tid) = me();
        let fd = reader.as_raw_fd();
        let args =
            decode(pid, tid, nr(Sysno::read), &[u64::from(fd as u32), 0x7ffd_5e1c_2a40, 4096, 7, 8, 9]);
        let names: Vec<&str> = args.iter().map(|arg| arg.name).collect();
        assert_eq!(names, ["fd", "buf", "count"]);
        let inode =
            fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        assert_eq!(what(&args[0]), format!("pipe:[{}]", inode.unwrap()));
        let shown: Vec<String> = args.iter().map(ToString::to_string).collect();
        assert_eq!(shown[0], format!("{fd}<{}>", what(&args[0])));
        assert_eq!(shown[1..], ["0x7ffd5e1c2a40", "4096"]);
    }

    #[test]
    fn tcp_sockets_show_both_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (near, far) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(what(&read_fd(client.as_raw_fd())), format!("TCP:[{near}->{far}]"));
        assert_eq!(what(&read_fd(server.as_raw_fd())), format!("TCP:[{far}->{near}]"));
        assert_eq!(what(&read_fd(listener.as_raw_fd())), format!("TCP:[{far}]"));
        // Asked of the socket, and read from the table where that cannot be.
        let (pid, tid) = me();
        let task = Task { pid, tid };
        for (socket, shown) in
            [(client.as_raw_fd(), format!("{near}->{far}")), (listener.as_raw_fd(), far.to_string())]
        {
            let inode = fs::metadata(format!("/proc/self/fd/{socket}")).unwrap().ino();
            assert_eq!(task.ask_socket(socket, inode).as_ref(), Some(&shown));
            assert_eq!(task.inet_from_table("TCP", inode).as_ref(), Some(&shown));
            // Not the socket the record named: the table's answer.
            assert_eq!(task.ask_socket(socket, inode + 1), None);
        }
        assert_eq!(
            read_fd(client.as_raw_fd()).to_string(),
            format!("{}<TCP:[{near}->{far}]>", client.as_raw_fd())
        );
        // IPv6 where the host has it.
        if let Ok(listener) = TcpListener::bind("[::1]:0") {
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (near, far) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
            assert_eq!(what(&read_fd(client.as_raw_fd())), format!("TCPv6:[{near}->{far}]"));
        }
    }

    #[test]
    fn udp_sockets_show_their_addresses() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let near = socket.local_addr().unwrap();
        assert_eq!(what(&read_fd(socket.as_raw_fd())), format!("UDP:[{near}]"));
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(peer.local_addr().unwrap()).unwrap();
        assert_eq!(
            what(&read_fd(socket.as_raw_fd())),
            format!("UDP:[{near}->{}]", peer.local_addr().unwrap())
        );
    }

    #[test]
    fn unix_sockets_show_their_path() {
        let dir = scratch("unix");
        let path = dir.join("a socket\x1b[2J\">");
        let listener = UnixListener::bind(&path).unwrap();
        let arg = read_fd(listener.as_raw_fd());
        let inode = fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        let what = what(&arg);
        assert!(what.starts_with("UNIX"), "{what}");
        assert!(what.ends_with(&format!(":[{inode},\"{}\"]", path.display())), "{what}");
        let shown = arg.to_string();
        assert!(shown.ends_with("/a socket\\x1b[2J\\x22\\x3e\"]>"), "{shown}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn unix_table_lines() {
        let table = b"Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 12345 /run/a b.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03    77\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 999 /tmp/x\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 999 /forged\n";
        assert_eq!(unix_path(table, 12345), Some(Some(b"/run/a b.sock".to_vec())));
        assert_eq!(unix_path(table, 77), Some(None));
        assert_eq!(unix_path(table, 999), None, "an inode on two lines is not trusted");
        assert_eq!(unix_path(table, 5), None);
        assert_eq!(unix_path(b"", 5), None);
    }

    #[test]
    fn hostile_file_names_are_escaped() {
        let dir = scratch("names");
        let path = dir.join("evil\x1b]0;owned\x07\nname> \"x");
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(b"x").unwrap();
        let arg = read_fd(file.as_raw_fd());
        assert_eq!(what(&arg), path.to_str().unwrap(), "kept raw");
        let shown = arg.to_string();
        assert!(shown.ends_with("evil\\x1b]0;owned\\x07\\x0aname\\x3e \"x>"), "{shown}");
        assert!(!shown.chars().any(char::is_control), "{shown}");
        let json = serde_json::to_string(&arg).unwrap();
        assert!(json.contains(r#"evil\\x1b]0;owned\\x07\\x0aname> \"x""#), "{json}");
        assert!(json.starts_with(r#"{"name":"fd","kind":"fd","fd":"#), "{json}");

        // The same name as a path argument, read from this process's memory.
        let name = CString::new(path.as_os_str().as_bytes()).unwrap();
        let (pid, tid) = me();
        let args = decode(pid, tid, nr(Sysno::unlink), &[name.as_ptr() as u64, 1, 2, 3, 4, 5]);
        assert_eq!(args.len(), 1);
        let shown = args[0].to_string();
        assert!(shown.ends_with("evil\\x1b]0;owned\\x07\\x0aname> \\x22x\""), "{shown}");
        assert!(!shown.chars().any(char::is_control), "{shown}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn path_arguments_are_read_from_memory() {
        let name = CString::new("/etc/passwd").unwrap();
        let (pid, tid) = me();
        let args = decode(
            pid,
            tid,
            nr(Sysno::openat),
            &[AT_FDCWD as u64, name.as_ptr() as u64, 0o2_000_000, 0o644, 0, 0],
        );
        let cwd = std::env::current_dir().unwrap();
        let shown: Vec<String> = args.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                format!("AT_FDCWD<{}>", cwd.display()),
                "\"/etc/passwd\"".into(),
                "0x80000".into(),
                "0644".into()
            ]
        );
        assert_eq!(
            args[1].value,
            ArgValue::Path { addr: name.as_ptr() as u64, path: Some("/etc/passwd".into()) }
        );
    }

    /// Two pages mapped, the second one then unmapped again.
    struct Page(*mut u8);

    impl Page {
        fn new() -> Self {
            let size = 2 * PAGE as usize;
            // SAFETY: a fresh anonymous mapping, of which the second page is
            // unmapped before use.
            unsafe {
                let map = libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(map, libc::MAP_FAILED);
                let map = map.cast::<u8>();
                assert_eq!(libc::munmap(map.add(PAGE as usize).cast(), PAGE as usize), 0);
                Self(map)
            }
        }

        /// Writes `bytes` so that they end at the end of the page, and
        /// returns their address.
        fn put_at_end(&self, bytes: &[u8]) -> u64 {
            // SAFETY: the bytes fit in the mapped page.
            unsafe {
                let at = self.0.add(PAGE as usize - bytes.len());
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len());
                at as u64
            }
        }
    }

    impl Drop for Page {
        fn drop(&mut self) {
            // SAFETY: the first page is still mapped, and only here unmapped.
            unsafe { libc::munmap(self.0.cast(), PAGE as usize) };
        }
    }

    #[test]
    fn paths_near_an_unmapped_page() {
        let page = Page::new();
        let task = Task { pid: std::process::id(), tid: me().1 };
        // Ending with the mapping: read.
        let addr = page.put_at_end(b"/var/lib/near-the-end\0");
        assert_eq!(task.string(addr).as_deref(), Some("/var/lib/near-the-end"));
        // Running into the unmapped page: not a string.
        let addr = page.put_at_end(b"/var/lib/unterminated");
        assert_eq!(task.string(addr), None);
        // Across a page boundary, in mapped memory.
        let mut long = vec![b'a'; 3 * PAGE as usize];
        let base = long.as_ptr() as u64;
        let boundary = base + PAGE - base % PAGE;
        let nul = usize::try_from(boundary - base).unwrap() + 100;
        long[nul] = 0;
        assert_eq!(task.string(boundary - 10).map(|s| s.len()), Some(110));
        // Longer than PATH_MAX: the kernel would refuse it.
        assert_eq!(task.string(base + nul as u64 + 1), None);
    }

    #[test]
    fn closed_fds_show_no_target() {
        let (reader, _writer) = nix::unistd::pipe().unwrap();
        // Far from the numbers other tests' fds get, which are the lowest
        // free: this one stays closed while it is looked up.
        let high = nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(700)).unwrap();
        // SAFETY: `high` is a new fd that nothing else owns.
        drop(unsafe { OwnedFd::from_raw_fd(high) });
        assert_eq!(read_fd(high).value, ArgValue::Fd { fd: high, what: None });
        assert_eq!(read_fd(high).to_string(), high.to_string());
        assert_eq!(read_fd(-1).value, ArgValue::Fd { fd: -1, what: None });
        assert_eq!(read_fd(i32::MAX).value, ArgValue::Fd { fd: i32::MAX, what: None });
    }

    #[test]
    fn garbage_addresses_show_the_address() {
        let (pid, tid) = me();
        for addr in [0, 1, 0x10, 0xffff_8000_0000_0000, u64::MAX, u64::MAX - 3, PAGE - 1] {
            let args = decode(pid, tid, nr(Sysno::stat), &[addr, 0, 0, 0, 0, 0]);
            assert_eq!(args[0].value, ArgValue::Path { addr, path: None });
            let shown = if addr == 0 { "NULL".to_owned() } else { format!("{addr:#x}") };
            assert_eq!(args[0].to_string(), shown);
        }
    }

    #[test]
    fn dead_and_absent_processes_show_raw_values() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let name = CString::new("/etc/passwd").unwrap();
        let args = [3, name.as_ptr() as u64, 0, 0, 0, 0];
        for (pid, tid) in [(dead, dead), (0, 0), (u32::MAX, u32::MAX), (1 << 31, 1 << 31)] {
            let decoded = decode(pid, tid, nr(Sysno::openat), &args);
            assert_eq!(decoded[0].value, ArgValue::Fd { fd: 3, what: None });
            assert_eq!(decoded[1].value, ArgValue::Path { addr: args[1], path: None });
        }
    }

    #[test]
    fn unknown_and_i386_calls_are_raw() {
        let (pid, tid) = me();
        let args = [1, 2, 3, 4, 5, u64::MAX];
        let expected: Vec<String> =
            ["0x1", "0x2", "0x3", "0x4", "0x5", "0xffffffffffffffff"].map(String::from).into();
        for number in [COMPAT_NR | 3, COMPAT_NR, 100_000, u32::MAX, nr(Sysno::rt_sigaction)] {
            let decoded = decode(pid, tid, number, &args);
            assert_eq!(decoded.iter().map(ToString::to_string).collect::<Vec<_>>(), expected);
            assert_eq!(decoded[5].name, "arg5");
        }
        assert!(decode(pid, tid, nr(Sysno::getpid), &args).is_empty());
    }

    #[test]
    fn numbers_are_read_at_their_width() {
        let (pid, tid) = me();
        let garbage = 0xdead_beef_0000_0000;
        let futex = decode(
            pid,
            tid,
            nr(Sysno::futex),
            &[0x7f00_0000_1000, garbage | 0x80, garbage | 1, 0, 0, u64::MAX],
        );
        let shown: Vec<String> = futex.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["0x7f0000001000", "128", "1", "0x0", "0x0", "0xffffffff"]);
        let lseek = decode(pid, tid, nr(Sysno::lseek), &[u64::MAX, (-5i64) as u64, 2, 0, 0, 0]);
        assert_eq!(lseek.iter().map(ToString::to_string).collect::<Vec<_>>(), ["-1", "-5", "2"]);
        let wait = decode(pid, tid, nr(Sysno::wait4), &[u64::from(u32::MAX), 0, 0, 0, 0, 0]);
        assert_eq!(wait[0].value, ArgValue::Int { value: -1 });
    }

    #[test]
    fn signatures_fit_the_registers() {
        for nr in 0..1024 {
            if let Some(params) = Sysno::new(nr).and_then(signature) {
                assert!(params.len() <= 6, "{nr}");
                let mut names: Vec<&str> = params.iter().map(|&(name, _)| name).collect();
                names.dedup();
                assert_eq!(names.len(), params.len(), "{nr}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn decode_never_panics(
            nr in prop_oneof![0u32..600, any::<u32>()],
            args in any::<[u64; 6]>(),
            small in any::<[u8; 6]>(),
            who in 0usize..3,
        ) {
            let (own_pid, own_tid) = me();
            let (pid, tid) = [(own_pid, own_tid), (0, 0), (u32::MAX, 1)][who];
            // Small values too, so fds are open ones of this process.
            for args in [args, small.map(u64::from)] {
                for arg in decode(pid, tid, nr, &args) {
                    let _ = arg.to_string();
                    serde_json::to_string(&arg).unwrap();
                }
            }
        }

        #[test]
        fn unix_table_parsing_never_panics(table in proptest::collection::vec(any::<u8>(), 0..400), inode in 0u64..100) {
            let _ = unix_path(&table, inode);
        }
    }
}
