//! What probe traces: running processes, a COMMAND it starts, or everything.

use std::{
    ffi::{CString, OsStr, OsString},
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            ffi::{OsStrExt, OsStringExt},
            fs::PermissionsExt,
        },
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use nix::{
    errno::Errno,
    fcntl::{fcntl, FcntlArg, OFlag},
    sys::wait::{waitpid, WaitStatus},
    unistd::{execv, fork, pipe2, read, write, ForkResult, Pid},
};

use crate::procfs;

/// A COMMAND that probe could not start, with the exit status a shell
/// would give (127: not found, 126: found but not runnable).
#[derive(Debug)]
pub struct SpawnError {
    /// What went wrong, for the user.
    pub message: String,
    /// probe's exit status.
    pub exit_code: i32,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpawnError {}

/// A running process given with `--pid`, held by a pidfd so that its exit
/// is seen and its PID cannot be confused with a later process's.
pub struct PidTarget {
    /// The process id.
    pub pid: u32,
    /// Readable once the process has exited.
    pub pidfd: OwnedFd,
}

impl PidTarget {
    /// Opens `pid`, refusing processes that do not exist and kernel threads.
    pub fn open(pid: u32) -> Result<Self> {
        if pid == std::process::id() {
            bail!("PID {pid} is probe itself, which never traces itself");
        }
        let pidfd = match pidfd_open(pid) {
            Ok(pidfd) => pidfd,
            Err(Errno::ESRCH) => bail!("no process with PID {pid}"),
            Err(err) => bail!("cannot open PID {pid}: {}", err.desc()),
        };
        if procfs::is_kernel_thread(pid) {
            bail!("PID {pid} is a kernel thread: it makes no syscalls to trace");
        }
        Ok(Self { pid, pidfd })
    }
}

/// A descriptor of process `pid` (`pidfd_open`), which stays its own
/// however its PID is reused.
pub fn pidfd_open(pid: u32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A COMMAND forked and held just before `exec`, so that probe can put it in
/// the trace before its first instruction runs.
pub struct GatedCommand {
    /// The child's PID, which `exec` keeps.
    pub pid: Pid,
    /// The read end of the child's stdout and stderr, when they are kept
    /// off the terminal.
    pub output: Option<OwnedFd>,
    /// The executable it will run, as found on PATH.
    pub path: PathBuf,
    /// Written to (or closed) to let the child exec.
    gate: OwnedFd,
    exec_error: OwnedFd,
    program: String,
}

impl GatedCommand {
    /// Forks the child and leaves it waiting. Call before any other thread
    /// exists: the child only reads, execs, writes and exits. `capture`:
    /// the child's stdin is /dev/null and its stdout and stderr go to a pipe
    /// (`output`), so that it leaves a terminal probe draws on alone.
    pub fn fork(command: &[OsString], capture: bool) -> Result<Self> {
        let argv: Vec<CString> = command
            .iter()
            .map(|arg| CString::new(arg.as_bytes()))
            .collect::<Result<_, _>>()
            .context("the COMMAND contains a NUL byte")?;
        let program = command[0].to_string_lossy().into_owned();
        // Searching PATH here, not with execvp in the child, keeps the
        // failed execve attempts of the search out of the trace.
        let path = resolve(&command[0])
            .ok_or_else(|| SpawnError { message: format!("command not found: {program}"), exit_code: 127 })?;
        let executable = path.clone();
        let path =
            CString::new(path.into_os_string().into_vec()).context("the COMMAND contains a NUL byte")?;
        let (gate_read, gate_write) = pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
        let (error_read, error_write) = pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
        let captured = match capture {
            true => {
                let null = fs::File::open("/dev/null").context("cannot open /dev/null")?;
                let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).context("cannot create a pipe")?;
                // probe's end only: the event loop must never block on it.
                fcntl(&read_end, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("cannot set up a pipe")?;
                Some((OwnedFd::from(null), read_end, write_end))
            }
            false => None,
        };
        // SAFETY: probe has no other thread yet, and the child calls only
        // async-signal-safe functions before exec or _exit.
        match unsafe { fork() }.context("cannot fork")? {
            ForkResult::Child => {
                drop(gate_write);
                drop(error_read);
                if let Some((null, _, write_end)) = &captured {
                    // SAFETY: dup2 is async-signal-safe; the copies it makes
                    // do not close on exec, unlike the originals.
                    unsafe {
                        libc::dup2(null.as_raw_fd(), 0);
                        libc::dup2(write_end.as_raw_fd(), 1);
                        libc::dup2(write_end.as_raw_fd(), 2);
                    }
                }
                restore_signals();
                let mut byte = [0u8];
                // EOF instead of the gate byte: probe died before attaching.
                if !matches!(read(&gate_read, &mut byte), Ok(1)) {
                    // SAFETY: _exit is async-signal-safe.
                    unsafe { libc::_exit(127) };
                }
                let errno = execv(&path, &argv).unwrap_err();
                let _ = write(&error_write, &(errno as i32).to_ne_bytes());
                // SAFETY: as above.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => Ok(Self {
                pid: child,
                output: captured.map(|(_, read_end, _)| read_end),
                path: executable,
                gate: gate_write,
                exec_error: error_read,
                program,
            }),
        }
    }

    /// Lets the child exec; fails, after reaping it, if exec failed.
    pub fn release(self) -> Result<Pid, SpawnError> {
        let Self { pid, gate, exec_error, program, .. } = self;
        let released = write(&gate, &[1]);
        drop(gate);
        let mut raw = [0u8; 4];
        // The error pipe closes on a successful exec: EOF means it ran.
        let failure = match read(&exec_error, &mut raw) {
            Ok(4) => Some(Errno::from_raw(i32::from_ne_bytes(raw))),
            Ok(_) if released.is_ok() => None,
            Ok(_) => Some(Errno::EPIPE),
            Err(err) => Some(err),
        };
        let Some(errno) = failure else {
            return Ok(pid);
        };
        let _ = waitpid(pid, None);
        Err(match errno {
            Errno::ENOENT => SpawnError { message: format!("command not found: {program}"), exit_code: 127 },
            Errno::EACCES => SpawnError {
                message: format!("permission denied: {program} is not executable"),
                exit_code: 126,
            },
            other => {
                SpawnError { message: format!("cannot run {program}: {}", other.desc()), exit_code: 126 }
            }
        })
    }
}

/// Gives a COMMAND the signal state a shell would: no signal blocked, none
/// ignored. probe ignores SIGPIPE (Rust programs do), and an ignored signal
/// stays ignored across exec: a pipeline like `yes | head -1` would never
/// end. Only async-signal-safe calls, for the child of a fork.
fn restore_signals() {
    // SAFETY: sigemptyset, sigprocmask and signal are async-signal-safe;
    // setting SIG_DFL on a signal that cannot be caught just fails.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        for signal in 1..libc::SIGRTMAX() {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}

/// Finds `program` the way a shell does: as given when it holds a `/`,
/// else the first PATH entry that has it.
fn resolve(program: &OsStr) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The exit status a shell reports for a child that ended with `status`.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_targets_refuse_missing_and_kernel_threads() {
        // The parent (cargo's test runner, a live process) can be traced;
        // this process, probe itself, cannot.
        assert!(PidTarget::open(std::os::unix::process::parent_id()).is_ok());
        let err = PidTarget::open(std::process::id()).err().unwrap().to_string();
        assert!(err.contains("probe itself"), "{err}");
        // PID 2 is kthreadd on Linux.
        let err = PidTarget::open(2).err().unwrap().to_string();
        assert!(err.contains("kernel thread"), "{err}");
        let err = PidTarget::open(i32::MAX as u32).err().unwrap().to_string();
        assert_eq!(err, format!("no process with PID {}", i32::MAX));
    }
}
