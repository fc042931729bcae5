//! Command-line options and the parsers that check them.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::Parser;
use syscalls::Sysno;

use crate::timeline::Limit;

/// Longest `--interval` accepted: longer ones are almost certainly a typo.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Shortest `--interval` accepted: a report takes a few milliseconds to make,
/// and rates over shorter spans are noise.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest `--duration` accepted.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Per-thread syscall latency, live, from eBPF.
///
/// Without --pid or COMMAND, probe traces the whole system (all but itself).
#[derive(Debug, Parser)]
#[command(name = "probe", version, about, long_about = None)]
#[command(group(clap::ArgGroup::new("target").args(["pid", "command"])))]
pub struct Args {
    /// Trace these running processes, with every thread they have or start.
    #[arg(short, long, value_name = "PID", value_delimiter = ',', value_parser = parse_pid, conflicts_with = "command", allow_negative_numbers = true)]
    pub pid: Vec<u32>,

    /// Trace only the threads in these cgroups (v2) and their descendants,
    /// at most 8: paths under the cgroup2 mount, absolute or relative to it
    /// (e.g. system.slice/docker-abc.scope). With --pid or a COMMAND, only
    /// their threads in these cgroups are traced.
    #[arg(long = "cgroup", value_name = "PATH", value_delimiter = ',')]
    pub cgroups: Vec<PathBuf>,

    /// Report every DURATION (e.g. 500ms, 2s, 1m).
    #[arg(short, long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval, allow_hyphen_values = true)]
    pub interval: Duration,

    /// Stop after DURATION and print the summary.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,

    /// Trace only these syscalls.
    #[arg(short = 'e', long = "syscall", value_name = "NAME", value_delimiter = ',', value_parser = parse_syscall)]
    pub syscalls: Vec<Sysno>,

    /// Leave syscalls untraced: the scheduler view only.
    #[arg(long, conflicts_with_all = ["syscalls", "no_sched"])]
    pub no_syscalls: bool,

    /// Leave the scheduler untraced: syscalls only, at lower overhead.
    #[arg(long)]
    pub no_sched: bool,

    /// Follow a traced Go program's goroutines: which one made each
    /// syscall (the default for a Go COMMAND or --pid; this says why when
    /// it cannot).
    #[arg(long, conflicts_with_all = ["no_syscalls", "no_goroutines"], requires = "target")]
    pub goroutines: bool,

    /// Do not follow a traced Go program's goroutines.
    #[arg(long)]
    pub no_goroutines: bool,

    /// Also trace the processes that traced processes start (default with
    /// COMMAND, like strace -f).
    #[arg(short = 'f', long, conflicts_with = "no_follow_forks")]
    pub follow_forks: bool,

    /// Do not trace the processes a COMMAND starts.
    #[arg(long)]
    pub no_follow_forks: bool,

    /// Ring-buffer size in bytes: a power of two, at least a page
    /// (default: 2 MiB per CPU).
    #[arg(long, value_name = "BYTES", value_parser = parse_buffer_size)]
    pub buffer_size: Option<u32>,

    /// Benchmarks only: attach do-nothing programs instead (the floor).
    #[arg(long, hide = true)]
    pub bench_floor: bool,

    /// Report each call that takes at least DURATION on its own, as it
    /// returns (like `perf trace --duration`), e.g. 10ms: with its stacks,
    /// waker and arguments; in the live view, in a pane of its own.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true, conflicts_with = "no_syscalls")]
    pub slow: Option<Duration>,

    /// Have each thread's slowest calls of the run (from 1 ms) carry their
    /// user stacks and arguments, as --slow's do; the default when a
    /// COMMAND or --pid is traced. A call sends 16 KiB, and the first of a
    /// process costs reading its objects: off for the whole system.
    #[arg(long, conflicts_with_all = ["no_tail_details", "no_syscalls"])]
    pub tail_details: bool,

    /// No stacks or arguments for the slowest calls (--slow's still have
    /// them).
    #[arg(long)]
    pub no_tail_details: bool,

    /// Threads shown per interval, busiest first.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = parse_top)]
    pub top: usize,

    /// Write the report to FILE instead of stdout (a COMMAND keeps its own stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// One JSON object per line instead of text tables.
    #[arg(long)]
    pub json: bool,

    /// Full-screen live view, the default when stdout is a terminal and
    /// neither --json nor --output is given. A COMMAND's output then goes to
    /// a pane of the view, and its stdin is /dev/null.
    #[arg(long, conflicts_with_all = ["json", "no_tui"])]
    pub tui: bool,

    /// Text reports even when stdout is a terminal.
    #[arg(long)]
    pub no_tui: bool,

    /// Serve Prometheus / OpenMetrics metrics on ADDR (e.g. 127.0.0.1:9464)
    /// at /metrics; interval reports are then not printed.
    #[arg(long, value_name = "ADDR", value_parser = parse_address, conflicts_with = "tui")]
    pub prometheus: Option<SocketAddr>,

    /// With --prometheus: give up to N threads series of their own (the
    /// rest are added up per process under tid="other").
    #[arg(long, value_name = "N", default_value_t = 0, requires = "prometheus")]
    pub prometheus_threads: usize,

    /// With --prometheus: processes (by name, or by PID with
    /// --prometheus-pids) with series of their own; the rest are added up
    /// under comm="other".
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = parse_top, requires = "prometheus")]
    pub prometheus_processes: usize,

    /// With --prometheus: a series per process ID (labels pid and comm)
    /// instead of per process name (comm): a host that starts processes by
    /// the thousand then has as many series, up to --prometheus-processes.
    #[arg(long, requires = "prometheus")]
    pub prometheus_pids: bool,

    /// With --prometheus: how long the series of a process or thread stay
    /// after it is gone (a thread's also after it went quiet).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_interval, requires = "prometheus")]
    pub prometheus_grace: Duration,

    /// With --prometheus: also serve probe_bpf_run_seconds_total, the time
    /// probe's BPF programs ran, from the kernel's BPF statistics. They add
    /// two clock reads to every run of every BPF program on the machine
    /// while probe runs, probe's and any other's: on a busy server about as
    /// much as the rest of probe's work in the kernel, so only when asked.
    #[arg(long, requires = "prometheus")]
    pub bpf_stats: bool,

    /// With --prometheus: TLS and basic authentication as FILE says, in the
    /// Prometheus exporter-toolkit's web-config format (YAML with
    /// tls_server_config: cert_file, key_file; basic_auth_users: NAME: BCRYPT-HASH).
    #[arg(long, value_name = "FILE", requires = "prometheus")]
    pub web_config: Option<PathBuf>,

    /// Write a timeline to FILE in the Chrome trace-event format (opens in
    /// Perfetto UI, chrome://tracing and speedscope).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,

    /// Stop the timeline after N events, or after a DURATION such as 30s.
    #[arg(long, value_name = "N|DURATION", value_parser = parse_trace_limit, requires = "trace")]
    pub trace_limit: Option<Limit>,

    /// Show the kernel programs' diagnostics (-v) and probe's own (-vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Run COMMAND with its probes attached before its first instruction.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn parse_address(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| "not an address: expected IP:PORT such as 127.0.0.1:9464 or [::]:9464".into())
}

fn parse_trace_limit(text: &str) -> Result<Limit, String> {
    let text = text.trim();
    if let Ok(events) = text.parse::<u64>() {
        return match events {
            0 => Err("must be more than zero".into()),
            n => Ok(Limit::Events(n)),
        };
    }
    parse_span(text, MAX_DURATION).map(Limit::Time).map_err(|err| format!("{err}; or a number of events"))
}

fn parse_pid(text: &str) -> Result<u32, String> {
    match text.trim().parse::<i64>() {
        Ok(pid) if pid > 0 && pid <= i64::from(i32::MAX) => Ok(pid as u32),
        Ok(_) => Err("a PID is a whole number from 1 up".into()),
        Err(_) => Err("not a PID: expected a whole number such as 1234".into()),
    }
}

/// Parses `--top`: a report of no thread says nothing.
fn parse_top(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("not a number of threads, e.g. 10".into()),
    }
}

fn parse_span(text: &str, max: Duration) -> Result<Duration, String> {
    let span =
        humantime::parse_duration(text.trim()).map_err(|err| format!("{err} (examples: 500ms, 2s, 1m)"))?;
    if span.is_zero() {
        return Err("must be longer than zero".into());
    }
    if span > max {
        return Err(format!("must be at most {}", humantime::format_duration(max)));
    }
    Ok(span)
}

/// Largest `--buffer-size`: the kernel's own cap on a BPF ring buffer is
/// higher, but beyond this it is locked memory no trace needs.
const MAX_BUFFER_BYTES: u64 = 1 << 30;

/// Parses a `--buffer-size`: a power of two and a whole number of pages, as
/// the kernel requires of a BPF ring buffer.
pub fn parse_buffer_size(text: &str) -> Result<u32, String> {
    let bytes: u64 = text.trim().parse().map_err(|_| "not a number of bytes, e.g. 4194304".to_owned())?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    if bytes < page || !bytes.is_power_of_two() {
        return Err(format!("must be a power of two of at least {page} (a page), e.g. 4194304"));
    }
    if bytes > MAX_BUFFER_BYTES {
        return Err(format!("must be at most {MAX_BUFFER_BYTES}"));
    }
    Ok(bytes as u32)
}

/// Parses an `--interval`.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_span(text, MAX_INTERVAL)?;
    if interval < MIN_INTERVAL {
        return Err(format!("must be at least {}", humantime::format_duration(MIN_INTERVAL)));
    }
    Ok(interval)
}

/// Parses a `--duration`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_span(text, MAX_DURATION)
}

/// Parses a syscall name of the running architecture, suggesting the
/// nearest known name for a typo.
pub fn parse_syscall(text: &str) -> Result<Sysno, String> {
    let name = text.trim();
    if let Ok(sysno) = Sysno::from_str(name) {
        return Ok(sysno);
    }
    let nearest = Sysno::iter().map(|sysno| (strsim::levenshtein(name, sysno.name()), sysno.name())).min();
    match nearest {
        Some((distance, suggestion)) if distance <= name.len().max(3) / 2 => {
            Err(format!("unknown syscall (did you mean '{suggestion}'?)"))
        }
        _ => Err("unknown syscall on this architecture".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_take_units_and_reject_zero_garbage_and_huge() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("-1s").is_err());
        assert!(parse_interval("soon").is_err());
        assert!(parse_interval("2days").is_err());
        assert_eq!(parse_duration("2days"), Ok(Duration::from_secs(2 * 86400)));
        assert!(parse_duration("2000years").is_err());
    }

    #[test]
    fn buffer_sizes_are_page_multiple_powers_of_two() {
        assert_eq!(parse_buffer_size("4096"), Ok(4096));
        assert_eq!(parse_buffer_size("4194304"), Ok(4 << 20));
        for bad in ["0", "1000", "6144", "2048", "-4096", "4k", "", "2147483648"] {
            assert!(parse_buffer_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pids_are_positive_numbers() {
        assert_eq!(parse_pid("1234"), Ok(1234));
        assert!(parse_pid("0").is_err());
        assert!(parse_pid("-5").is_err());
        assert!(parse_pid("abc").is_err());
        assert!(parse_pid("99999999999").is_err());
    }

    #[test]
    fn syscalls_by_name_with_a_suggestion() {
        assert_eq!(parse_syscall("getppid"), Ok(Sysno::getppid));
        let err = parse_syscall("getpid2").unwrap_err();
        assert!(err.contains("did you mean 'getpid'"), "{err}");
        let err = parse_syscall("opnat").unwrap_err();
        assert!(err.contains("did you mean 'openat'"), "{err}");
        assert_eq!(parse_syscall("xyzzyplugh").unwrap_err(), "unknown syscall on this architecture");
    }

    #[test]
    fn command_follows_double_dash_and_excludes_pid() {
        let args = Args::try_parse_from(["probe", "--json", "--", "ls", "-l"]).unwrap();
        assert_eq!(args.command, ["ls", "-l"]);
        assert!(args.json);
        assert!(Args::try_parse_from(["probe", "-p", "1", "--", "ls"]).is_err());
        let args = Args::try_parse_from(["probe", "-p", "1,2", "-e", "read,write"]).unwrap();
        assert_eq!(args.pid, [1, 2]);
        assert_eq!(args.syscalls, [Sysno::read, Sysno::write]);
        assert!(Args::try_parse_from(["probe", "--no-syscalls", "--no-sched"]).is_err());
        assert!(Args::try_parse_from(["probe", "--no-syscalls", "-e", "read"]).is_err());
    }
}
