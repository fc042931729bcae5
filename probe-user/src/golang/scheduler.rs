//! The Go scheduler of a running Go process, read from its memory: what
//! `GODEBUG=schedtrace` prints (which needs a restart and writes to the
//! program's stderr), its goroutines by state and wait reason, and what
//! each of its threads is to the runtime. The runtime's globals are found
//! by the symbol table, its structures' members by the DWARF; the process
//! is never stopped, so a read is as consistent as schedtrace's own (which
//! takes no lock either).
//!
//! A process's memory is hostile input: every count and length read is
//! bounded, and a read that fails leaves the previous snapshot in place.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use nix::{errno::Errno, unistd::Pid};
use object::{Object, ObjectSegment, ObjectSymbol};

use super::{
    binary::file_id,
    dwarf::Structs,
    memory::{word, Memory, Plan},
};
use crate::{
    escape,
    report::{GoCount, GoMReport, GoPReport, GoSchedReport, GoroutineStatesReport},
    slow::load_bias,
};

/// The structs whose members a snapshot reads (`gQueue`: Go 1.25 moved
/// `schedt.runqsize` into `schedt.runq.size`).
pub const STRUCTS: [&str; 5] = ["runtime.g", "runtime.m", "runtime.p", "runtime.schedt", "runtime.gQueue"];

/// Goroutine statuses by value, `_Gidle` (0) to `_Gdeadextra` (11), from
/// the constants of src/runtime/runtime2.go: stable since Go 1.0 apart
/// from additions at the end (`_Gpreempted` in 1.14, `_Gleaked` and
/// `_Gdeadextra` in 1.26). 5 and 7 are unused.
const G_STATUSES: [&str; 12] = [
    "idle",
    "runnable",
    "running",
    "syscall",
    "waiting",
    "moribund",
    "dead",
    "enqueue",
    "copystack",
    "preempted",
    "leaked",
    "dead",
];
/// Set on a status while the garbage collector scans the goroutine's stack.
const G_SCAN: u64 = 0x1000;
const G_RUNNING: u64 = 2;
const G_SYSCALL: u64 = 3;
const G_WAITING: u64 = 4;
const G_DEAD: u64 = 6;

/// P statuses by value, `_Pidle` to `_Pdead`, from runtime2.go (Go 1.26
/// stopped using `_Psyscall`).
const P_STATUSES: [&str; 5] = ["idle", "running", "syscall", "gcstop", "dead"];

/// Bounds on what a snapshot reads: Ps (the runtime allows 1024 before Go
/// 1.26's larger limit), Ms, goroutines (a read of 100,000 costs 100
/// syscalls and 4 MB), wait reasons and the length of a reason's name.
const MAX_PS: u64 = 4096;
const MAX_MS: usize = 10_000;
const MAX_GOROUTINES: u64 = 100_000;
const MAX_WAIT_REASONS: u64 = 256;
const MAX_REASON_LEN: u64 = 128;

/// How often a process's scheduler is read once it has been; one not yet
/// read is tried at every chance, so that a program of 100 ms gets its
/// snapshot.
pub const PERIOD: Duration = Duration::from_millis(250);

/// The members read of each runtime structure; each by its names across
/// Go releases.
const SCHEDT: &[&[&str]] =
    &[&["runqsize", "runq.size"], &["npidle"], &["nmspinning"], &["nmidle"], &["mnext"], &["nmfreed"]];
const P: &[&[&str]] = &[
    &["id"],
    &["status"],
    &["schedtick"],
    &["syscalltick"],
    &["m"],
    &["runqhead"],
    &["runqtail"],
    &["runnext"],
];
const M: &[&[&str]] = &[
    &["id"],
    &["procid"],
    &["curg"],
    &["p"],
    &["spinning"],
    &["mstartfn"],
    &["alllink"],
    &["lockedg"],
    &["incgo"],
];
const G: &[&[&str]] = &[&["atomicstatus"], &["goid"], &["waitreason"]];

/// What a snapshot needs of a Go binary: its globals' addresses and its
/// structures' layouts.
#[derive(Debug)]
pub struct Layout {
    /// The file, by [`file_id`]: a process is read only once it runs it (a
    /// COMMAND is probe's own fork until it execs).
    file: (u64, u64),
    /// (address, file offset, file size) of each loadable segment, to find
    /// where a position-independent binary was loaded.
    segments: Option<Vec<(u64, u64, u64)>>,
    sched: u64,
    allp: u64,
    allgs: u64,
    allm: u64,
    gomaxprocs: u64,
    ncpu: u64,
    /// `runtime.waitReasonStrings` (an array of Go strings) and its size.
    wait_reasons: Option<(u64, u64)>,
    sysmon: u64,
    template_thread: Option<u64>,
    schedt: Plan,
    p: Plan,
    m: Plan,
    g: Plan,
}

impl Layout {
    /// The layout of the Go binary `file_id`, parsed as `file`; says what
    /// it lacks.
    pub fn new(file_id: (u64, u64), file: &object::File, structs: &Structs) -> Result<Self, String> {
        if !structs.has("runtime.schedt") {
            return Err("it has no DWARF (built with -ldflags=-w?): rebuild it without -w".to_owned());
        }
        let symbols: HashMap<&str, (u64, u64)> = file
            .symbols()
            .filter(|symbol| symbol.name().is_ok_and(|name| name.starts_with("runtime.")))
            .filter_map(|symbol| Some((symbol.name().ok()?, (symbol.address(), symbol.size()))))
            .collect();
        let symbol = |name: &str| {
            symbols.get(name).map(|&(address, _)| address).ok_or_else(|| format!("it has no symbol {name}"))
        };
        let segments = (file.kind() == object::ObjectKind::Dynamic).then(|| {
            file.segments()
                .map(|segment| {
                    let (offset, size) = segment.file_range();
                    (segment.address(), offset, size)
                })
                .collect()
        });
        Ok(Self {
            file: file_id,
            segments,
            sched: symbol("runtime.sched")?,
            allp: symbol("runtime.allp")?,
            allgs: symbol("runtime.allgs")?,
            allm: symbol("runtime.allm")?,
            gomaxprocs: symbol("runtime.gomaxprocs")?,
            // Renamed in Go 1.25.
            ncpu: symbol("runtime.ncpu").or_else(|_| symbol("runtime.numCPUStartup"))?,
            wait_reasons: symbols.get("runtime.waitReasonStrings").copied(),
            sysmon: symbol("runtime.sysmon")?,
            template_thread: symbol("runtime.templateThread").ok(),
            schedt: Plan::new(structs, "runtime.schedt", SCHEDT)?,
            p: Plan::new(structs, "runtime.p", P)?,
            m: Plan::new(structs, "runtime.m", M)?,
            g: Plan::new(structs, "runtime.g", G)?,
        })
    }

    /// How far from its link-time addresses process `pid` loaded the
    /// binary: 0 unless it is position-independent.
    fn bias(&self, pid: u32) -> Result<u64, String> {
        let Some(segments) = &self.segments else {
            return Ok(0);
        };
        let maps = ::procfs::process::Process::new(pid as i32)
            .and_then(|process| process.maps())
            .map_err(|err| format!("cannot read its memory map ({err})"))?;
        for map in maps {
            if (map.dev.0 as u64, map.dev.1 as u64, map.inode) == (0, 0, 0) || map.inode != self.file.1 {
                continue;
            }
            if let Some(&(address, offset, _)) =
                segments.iter().find(|&&(_, offset, size)| offset <= map.offset && map.offset < offset + size)
            {
                return Ok(load_bias(map.address.0, map.offset, address, offset));
            }
        }
        Err("its memory map does not show the binary".to_owned())
    }
}

/// One read of a process's scheduler.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub taken: Instant,
    /// Whether sysmon's M was there, and each M but the spare ones for cgo
    /// callbacks had its thread: a thread sets its M's `procid` once
    /// running, and until then its role has no thread to go to. A read in
    /// the runtime's first moments finds m0 alone, settled but for sysmon,
    /// which every Go program starts: a program of 150 ms, ended before
    /// the next periodic read, kept that read (a flaky test's failure).
    settled: bool,
    pub sched: GoSchedReport,
    pub goroutines: GoroutineStatesReport,
    /// The ids of the goroutines alive then, sorted; `None` when not all
    /// of `allgs` was read, so that an exit cannot be told.
    pub live: Option<Vec<u64>>,
}

/// What is known of one process.
#[derive(Debug, Default)]
struct Watched {
    bias: Option<u64>,
    /// The runtime's wait reasons, read once.
    wait_reasons: Option<Vec<String>>,
    /// The last snapshot taken while it lived.
    snapshot: Option<Snapshot>,
    /// Why the last read failed, if it did.
    failed: Option<String>,
}

/// The snapshots of the processes that run one Go binary.
#[derive(Debug, Default)]
pub struct Scheduler {
    processes: BTreeMap<u32, Watched>,
    last_read: Option<Instant>,
}

impl Scheduler {
    /// Reads the scheduler of each of `pids` that is due: every one every
    /// [`PERIOD`], one not read yet at every call.
    pub fn read(&mut self, layout: Result<&Layout, &String>, pids: impl Iterator<Item = u32>, now: Instant) {
        let periodic = self.last_read.is_none_or(|last| now.duration_since(last) >= PERIOD);
        if periodic {
            self.last_read = Some(now);
        }
        for pid in pids {
            let watched = self.processes.entry(pid).or_default();
            if !periodic && watched.snapshot.as_ref().is_some_and(|snapshot| snapshot.settled) {
                continue;
            }
            let layout = match layout {
                Ok(layout) => layout,
                Err(why) => {
                    watched.failed = Some(why.to_owned());
                    continue;
                }
            };
            let started = Instant::now();
            let read = watched.read(layout, pid, now);
            log::debug!("read the Go scheduler of process {pid} in {:?}", started.elapsed());
            match read {
                Ok(Some(snapshot)) => {
                    watched.snapshot = Some(snapshot);
                    watched.failed = None;
                }
                Ok(None) => {}
                Err(why) => watched.failed = Some(why),
            }
        }
    }

    /// The last snapshot of process `pid`, or why there is none.
    pub fn snapshot(&self, pid: u32) -> Result<&Snapshot, String> {
        let watched = self.processes.get(&pid);
        match (watched.and_then(|w| w.snapshot.as_ref()), watched.and_then(|w| w.failed.as_ref())) {
            (Some(snapshot), _) => Ok(snapshot),
            (None, Some(why)) => Err(why.clone()),
            (None, None) => Err("the process ended before its runtime could be read".to_owned()),
        }
    }

    /// How far process `pid` loaded the binary from its link-time
    /// addresses, once known.
    pub fn bias(&self, pid: u32) -> Option<u64> {
        self.processes.get(&pid)?.bias
    }

    /// The last snapshot of process `pid` as of `now`, its age said, or why
    /// there is none.
    pub fn report(&self, pid: u32, now: Instant) -> Result<(GoSchedReport, GoroutineStatesReport), String> {
        let snapshot = self.snapshot(pid)?;
        let mut sched = snapshot.sched.clone();
        sched.age_ms = now.saturating_duration_since(snapshot.taken).as_millis() as u64;
        Ok((sched, snapshot.goroutines.clone()))
    }

    /// What thread `tid` of process `pid` was to the runtime at the last
    /// snapshot; `None` without one, or if it was not among its Ms then.
    pub fn role(&self, pid: u32, tid: u32) -> Option<String> {
        let snapshot = self.snapshot(pid).ok()?;
        snapshot.sched.ms.iter().find(|m| m.tid == tid).map(|m| m.role.clone())
    }
}

impl Watched {
    /// A snapshot of process `pid`; `None` while it does not run the
    /// binary yet or its runtime has not started.
    fn read(&mut self, layout: &Layout, pid: u32, now: Instant) -> Result<Option<Snapshot>, String> {
        let gone = |_| "the process is gone".to_owned();
        if file_id(Path::new(&format!("/proc/{pid}/exe"))).map_err(gone)? != layout.file {
            return Ok(None);
        }
        let bias = match self.bias {
            Some(bias) => bias,
            None => *self.bias.insert(layout.bias(pid)?),
        };
        let memory = Memory(Pid::from_raw(pid as i32));
        let at = |address: u64| address.wrapping_add(bias);
        let unreadable = |err: Errno| match err {
            Errno::ESRCH => "the process is gone".to_owned(),
            err => format!("cannot read its memory ({err}): is probe allowed to ptrace it?"),
        };
        // The globals, in one syscall.
        let mut globals = [0u8; 4 + 4 + 24 + 24 + 8];
        memory
            .gather(
                &[
                    (at(layout.gomaxprocs), 4),
                    (at(layout.ncpu), 4),
                    (at(layout.allp), 24),
                    (at(layout.allgs), 24),
                    (at(layout.allm), 8),
                ],
                &mut globals,
            )
            .map_err(unreadable)?;
        let gomaxprocs = i64::from(i32::from_le_bytes(globals[0..4].try_into().unwrap_or_default()));
        let ncpu = i64::from(i32::from_le_bytes(globals[4..8].try_into().unwrap_or_default()));
        let (allp, ps) = Memory::slice_header(&globals[8..32]);
        let (allgs, gs) = Memory::slice_header(&globals[32..56]);
        let allm = word(&globals, 56);
        if gomaxprocs < 1 || ps == 0 {
            // Before `schedinit`.
            return Ok(None);
        }
        let (sched, read) = memory.structs(&[at(layout.sched)], &layout.schedt).map_err(unreadable)?;
        if !read[0] {
            return Err("cannot read runtime.sched".to_owned());
        }
        let ms = self.ms(layout, &memory, allm).map_err(unreadable)?;
        let p_addresses = memory.pointers(allp, ps.min(MAX_PS)).map_err(unreadable)?;
        let ps = self.ps(layout, &memory, &p_addresses, &ms).map_err(unreadable)?;
        let (ms, settled) = self.roles(layout, &memory, bias, &ms, &p_addresses, &ps).map_err(unreadable)?;
        if self.wait_reasons.is_none() {
            self.wait_reasons =
                layout.wait_reasons.and_then(|(address, size)| wait_reasons(&memory, at(address), size));
        }
        let (goroutines, live) = self.goroutines(layout, &memory, allgs, gs).map_err(unreadable)?;
        let schedt = &layout.schedt;
        Ok(Some(Snapshot {
            taken: now,
            settled,
            sched: GoSchedReport {
                age_ms: 0,
                gomaxprocs,
                ncpu,
                idle_procs: schedt.signed(&sched, "npidle"),
                threads: schedt.signed(&sched, "mnext") - schedt.signed(&sched, "nmfreed"),
                spinning_threads: schedt.signed(&sched, "nmspinning"),
                idle_threads: schedt.signed(&sched, "nmidle"),
                runqueue: schedt.signed(&sched, "runqsize"),
                ps,
                ms,
            },
            goroutines,
            live,
        }))
    }

    /// The runtime's Ms, following `allm` and `m.alllink`: (address, bytes).
    fn ms(&self, layout: &Layout, memory: &Memory, allm: u64) -> Result<Vec<(u64, Vec<u8>)>, Errno> {
        let mut ms = Vec::new();
        let mut seen = HashSet::new();
        let mut next = allm;
        // Bounded: a list read while it changes may loop.
        while next != 0 && ms.len() < MAX_MS && seen.insert(next) {
            let (bytes, read) = memory.structs(&[next], &layout.m)?;
            if !read[0] {
                break;
            }
            let link = layout.m.get(&bytes, "alllink");
            ms.push((next, bytes));
            next = link;
        }
        Ok(ms)
    }

    fn ps(
        &self,
        layout: &Layout,
        memory: &Memory,
        addresses: &[u64],
        ms: &[(u64, Vec<u8>)],
    ) -> Result<Vec<GoPReport>, Errno> {
        let plan = &layout.p;
        let (bytes, read) = memory.structs(addresses, plan)?;
        let tid_of = |m: u64| {
            ms.iter()
                .find(|(address, _)| *address == m)
                .map(|(_, bytes)| layout.m.get(bytes, "procid") as u32)
        };
        Ok(bytes
            .chunks_exact(plan.len)
            .zip(read)
            .filter(|(_, read)| *read)
            .map(|(p, _)| {
                let status = plan.get(p, "status");
                GoPReport {
                    id: plan.signed(p, "id"),
                    status: P_STATUSES
                        .get(status as usize)
                        .map_or_else(|| format!("status {status}"), |s| (*s).to_owned()),
                    runqueue: u64::from(
                        (plan.get(p, "runqtail") as u32).wrapping_sub(plan.get(p, "runqhead") as u32),
                    ),
                    runnext: plan.get(p, "runnext") != 0,
                    schedtick: plan.get(p, "schedtick"),
                    syscalltick: plan.get(p, "syscalltick"),
                    tid: match plan.get(p, "m") {
                        0 => None,
                        m => tid_of(m),
                    },
                }
            })
            .collect())
    }

    /// Each M with its role: the goroutines it runs and is locked to, and
    /// the function it was started with, read in a few syscalls; and
    /// whether each had its thread.
    fn roles(
        &self,
        layout: &Layout,
        memory: &Memory,
        bias: u64,
        ms: &[(u64, Vec<u8>)],
        p_addresses: &[u64],
        ps: &[GoPReport],
    ) -> Result<(Vec<GoMReport>, bool), Errno> {
        let m = &layout.m;
        let gs: Vec<u64> =
            ms.iter().flat_map(|(_, bytes)| [m.get(bytes, "curg"), m.get(bytes, "lockedg")]).collect();
        let (g_bytes, g_read) = memory.structs(&gs, &layout.g)?;
        let g = |index: usize| {
            (gs[index] != 0 && g_read[index]).then(|| {
                let bytes = &g_bytes[index * layout.g.len..(index + 1) * layout.g.len];
                (layout.g.get(bytes, "goid"), layout.g.get(bytes, "atomicstatus") & !G_SCAN)
            })
        };
        let funcvals: Vec<u64> = ms.iter().map(|(_, bytes)| m.get(bytes, "mstartfn")).collect();
        let (starts, starts_read) = memory.structs(&funcvals, &Plan::word())?;
        let start = |index: usize| {
            (funcvals[index] != 0 && starts_read[index]).then(|| word(&starts, index * 8).wrapping_sub(bias))
        };
        let (mut settled, mut sysmon) = (true, false);
        let ms = ms
            .iter()
            .enumerate()
            .map(|(index, (_, bytes))| {
                let p = match m.get(bytes, "p") {
                    0 => None,
                    p => p_addresses
                        .iter()
                        .position(|&address| address == p)
                        .and_then(|at| ps.get(at))
                        .map(|p| p.id),
                };
                let tid = m.get(bytes, "procid") as u32;
                let curg = g(2 * index);
                // The runtime keeps a spare M for callbacks from threads cgo
                // made: it has a dead goroutine and no thread of its own.
                let spare = tid == 0 && curg.is_some_and(|(_, status)| status == G_DEAD);
                settled &= tid != 0 || spare;
                let thread = Thread {
                    spare,
                    sysmon: start(index) == Some(layout.sysmon),
                    template: start(index).is_some() && start(index) == layout.template_thread,
                    spinning: m.get(bytes, "spinning") != 0,
                    in_cgo: m.get(bytes, "incgo") != 0,
                    p,
                    curg,
                    locked_to: g(2 * index + 1).map(|(goid, _)| goid),
                };
                sysmon |= thread.sysmon;
                GoMReport {
                    id: m.signed(bytes, "id"),
                    tid,
                    role: thread.role(),
                    p,
                    goid: curg.filter(|_| !spare).map(|(goid, _)| goid),
                }
            })
            .collect();
        Ok((ms, settled && sysmon))
    }

    /// The goroutines by state and wait reason, at most [`MAX_GOROUTINES`]
    /// of the `count` in `allgs`; and the ids of those alive, when all were
    /// read.
    fn goroutines(
        &self,
        layout: &Layout,
        memory: &Memory,
        allgs: u64,
        count: u64,
    ) -> Result<(GoroutineStatesReport, Option<Vec<u64>>), Errno> {
        let plan = &layout.g;
        let addresses = memory.pointers(allgs, count.min(MAX_GOROUTINES))?;
        let (bytes, read) = memory.structs(&addresses, plan)?;
        let (mut states, mut reasons) = (BTreeMap::<u64, u64>::new(), BTreeMap::<u64, u64>::new());
        let mut live = Vec::new();
        for (g, _) in bytes.chunks_exact(plan.len).zip(&read).filter(|(_, read)| **read) {
            let status = plan.get(g, "atomicstatus") & !G_SCAN;
            *states.entry(status).or_default() += 1;
            if status == G_WAITING {
                *reasons.entry(plan.get(g, "waitreason")).or_default() += 1;
            }
            // A dead g keeps its last goroutine's id until it is reused.
            if status != G_DEAD {
                live.push(plan.get(g, "goid"));
            }
        }
        let read = read.iter().filter(|r| **r).count() as u64;
        live.sort_unstable();
        let states = tally(&states, &reasons, self.wait_reasons.as_deref(), count, read);
        Ok((states, (read == count).then_some(live)))
    }
}

/// Counts by status and wait reason, named; dead and not yet started
/// goroutines (kept by the runtime for reuse) are not counted.
fn tally(
    states: &BTreeMap<u64, u64>,
    reasons: &BTreeMap<u64, u64>,
    names: Option<&[String]>,
    of: u64,
    read: u64,
) -> GoroutineStatesReport {
    let mut counted: Vec<GoCount> = Vec::new();
    for (&status, &count) in states {
        let name =
            G_STATUSES.get(status as usize).map_or_else(|| format!("status {status}"), |s| (*s).to_owned());
        if ["idle", "dead"].contains(&name.as_str()) {
            continue;
        }
        counted.push(GoCount { name, count });
    }
    let mut wait_reasons: Vec<GoCount> = reasons
        .iter()
        .map(|(&reason, &count)| GoCount {
            name: match names.and_then(|names| names.get(reason as usize)) {
                Some(name) if !name.is_empty() => name.clone(),
                _ => format!("wait reason {reason}"),
            },
            count,
        })
        .collect();
    wait_reasons.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    GoroutineStatesReport {
        total: counted.iter().map(|state| state.count).sum(),
        states: counted,
        wait_reasons,
        of,
        read,
    }
}

/// The names of the runtime's wait reasons, from `runtime.waitReasonStrings`
/// (`size` bytes of Go strings: pointer and length each) as the process
/// has them.
fn wait_reasons(memory: &Memory, address: u64, size: u64) -> Option<Vec<String>> {
    let count = (size / 16).min(MAX_WAIT_REASONS);
    let mut headers = vec![0u8; count as usize * 16];
    memory.gather(&[(address, headers.len())], &mut headers).ok()?;
    let strings: Vec<(u64, usize)> = headers
        .chunks_exact(16)
        .map(|header| (word(header, 0), word(header, 8).min(MAX_REASON_LEN) as usize))
        .collect();
    let mut bytes = vec![0u8; strings.iter().map(|&(_, len)| len).sum()];
    let pieces: Vec<(u64, usize)> = strings.iter().copied().filter(|&(_, len)| len > 0).collect();
    memory.gather(&pieces, &mut bytes).ok()?;
    let mut at = 0;
    Some(
        strings
            .iter()
            .map(|&(_, len)| {
                at += len;
                escape::visible_bytes(&bytes[at - len..at])
            })
            .collect(),
    )
}

/// What an M is doing, as one snapshot has it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Thread {
    /// The spare M for cgo callbacks.
    spare: bool,
    sysmon: bool,
    template: bool,
    spinning: bool,
    in_cgo: bool,
    /// The P it holds.
    p: Option<i64>,
    /// The goroutine it runs and that goroutine's status.
    curg: Option<(u64, u64)>,
    locked_to: Option<u64>,
}

impl Thread {
    /// What it is to the runtime, in a few words.
    fn role(&self) -> String {
        if self.sysmon {
            return "sysmon: the runtime's monitor, runs no goroutines".to_owned();
        }
        if self.template {
            return "template thread: starts threads for locked goroutines".to_owned();
        }
        if self.spare {
            return "spare, for callbacks from threads cgo made: no thread yet".to_owned();
        }
        let holds = self.p.map(|p| format!("holds P{p}, "));
        let mut role = match (self.curg, self.in_cgo) {
            (Some((goid, _)), true) => format!("in cgo, goroutine {goid}"),
            (Some((goid, G_SYSCALL)), false) => format!("in a syscall, goroutine {goid}"),
            (Some((goid, G_RUNNING)), false) => {
                format!("{}runs goroutine {goid}", holds.clone().unwrap_or_default())
            }
            (Some((goid, status)), false) => format!(
                "{}switching goroutine {goid} ({})",
                holds.clone().unwrap_or_default(),
                G_STATUSES.get(status as usize).unwrap_or(&"status unknown")
            ),
            (None, _) if self.spinning => {
                format!("{}spinning: looking for work", holds.clone().unwrap_or_default())
            }
            (None, _) => match self.p {
                Some(p) => format!("holds P{p}, in the scheduler"),
                None => "idle: parked, no P".to_owned(),
            },
        };
        if let (Some(p), Some((_, G_SYSCALL))) = (self.p, self.curg) {
            role.push_str(&format!(", holds P{p}"));
        }
        if let Some(goid) = self.locked_to {
            role.push_str(&format!(", locked to goroutine {goid}"));
        }
        role
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_role_says_what_it_does_for_the_runtime() {
        let role = |thread: Thread| thread.role();
        assert!(role(Thread { sysmon: true, ..Thread::default() }).starts_with("sysmon"));
        assert_eq!(
            role(Thread { p: Some(1), curg: Some((7, G_RUNNING)), ..Thread::default() }),
            "holds P1, runs goroutine 7"
        );
        assert_eq!(
            role(Thread { p: Some(0), curg: Some((9, G_SYSCALL)), ..Thread::default() }),
            "in a syscall, goroutine 9, holds P0"
        );
        assert_eq!(role(Thread::default()), "idle: parked, no P");
        assert!(
            role(Thread { spare: true, curg: Some((17, G_DEAD)), ..Thread::default() }).starts_with("spare")
        );
        assert_eq!(
            role(Thread { spinning: true, p: Some(2), ..Thread::default() }),
            "holds P2, spinning: looking for work"
        );
        assert_eq!(
            role(Thread { curg: Some((1, G_RUNNING)), p: Some(0), locked_to: Some(1), ..Thread::default() }),
            "holds P0, runs goroutine 1, locked to goroutine 1"
        );
        assert_eq!(
            role(Thread { curg: Some((3, G_SYSCALL)), in_cgo: true, ..Thread::default() }),
            "in cgo, goroutine 3"
        );
    }

    #[test]
    fn goroutines_are_counted_by_state_and_reason_without_the_dead() {
        let states = BTreeMap::from([(1, 5), (2, 2), (3, 3), (4, 1194), (6, 40), (0, 1), (42, 1)]);
        let reasons = BTreeMap::from([(7, 4), (14, 900), (2, 290), (200, 0)]);
        let mut names = vec![String::new(); 20];
        (names[2], names[7], names[14]) =
            ("IO wait".to_owned(), "select".to_owned(), "chan receive".to_owned());
        let report = tally(&states, &reasons, Some(&names), 1245, 1245);
        assert_eq!(report.total, 1205);
        let states: Vec<(&str, u64)> = report.states.iter().map(|s| (s.name.as_str(), s.count)).collect();
        assert_eq!(
            states,
            [("runnable", 5), ("running", 2), ("syscall", 3), ("waiting", 1194), ("status 42", 1)]
        );
        let reasons: Vec<(&str, u64)> =
            report.wait_reasons.iter().map(|s| (s.name.as_str(), s.count)).collect();
        assert_eq!(reasons, [("chan receive", 900), ("IO wait", 290), ("select", 4), ("wait reason 200", 0)]);
    }
}
