//! Per-thread statistics built from the kernel's records: per syscall here,
//! and the scheduler's view in [`sched`].

pub mod in_flight;
pub mod latency;
pub mod sched;
pub mod slowest;

use std::collections::BTreeMap;

// FxHash: these maps are keyed by kernel-assigned ids and looked up on every
// event; SipHash's resistance to chosen keys buys nothing here.
use indexmap::IndexMap;
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use sched::Sleep;

use std::sync::Arc;

use crate::slow::{DetailFloors, Explanation};

use probe_common::{
    errno_of, IoUringEvent, LostCall, SyscallEvent, COMM_LEN, IO_URING_ASYNC, LOST_INVOLUNTARY_SWITCH,
    LOST_MIGRATIONS, LOST_VOLUNTARY_SWITCH, SYSCALL_NO_RETURN,
};

use self::{
    in_flight::CallInFlight,
    latency::Latencies,
    sched::{SchedStats, Split},
    slowest::{SlowCall, Slowest},
};

/// What the tables ask of the running system: which threads and processes
/// still exist, and what a thread is called. probe answers from `/proc`
/// ([`crate::procfs::Proc`]); tests answer from a list, so that tables and
/// the record pipeline run without live processes or root.
pub trait World {
    fn thread_alive(&self, pid: u32, tid: u32) -> bool;
    fn process_alive(&self, pid: u32) -> bool;
    fn thread_name(&self, pid: u32, tid: u32) -> Option<String>;
    /// The thread's state letter (`R`, `S`, `D`, ...); `None` once it is
    /// gone.
    fn thread_state(&self, pid: u32, tid: u32) -> Option<char>;
    /// The syscall the thread is blocked in, and its six argument
    /// registers; `None` while it runs, or outside any syscall.
    fn syscall_args(&self, pid: u32, tid: u32) -> Option<(u32, [u64; 6])>;
}

/// Exited threads kept one by one in a run's totals; beyond, the ones with
/// the fewest records are folded into one row per process, so that a
/// program that starts threads without end does not grow probe without end.
pub const MAX_EXITED_THREADS: usize = 1024;

/// The `tid` of a process's row of folded exited threads; with `pid` 0 too,
/// the row of every folded process that has exited.
pub const FOLDED_TID: u32 = 0;

/// The row of every folded process that has exited.
const FOLDED_PROCESSES: ThreadKey = ThreadKey::nth(0, FOLDED_TID, 0);

/// Identifies a thread for the whole run. The kernel reuses ids: a tid is
/// unique only while its thread lives, so a thread is its process id, its
/// tid, and which of the threads that had that tid in that process it is.
///
/// The two ids are one word: a key made of three 4-byte parts, copied 8
/// bytes at a time (as the compiler copies it), stalls the CPU's store
/// forwarding, and the pipeline copies the key of every record.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadKey {
    /// The process id (tgid) in the upper half, the thread id in the
    /// lower: ordered by process, then thread.
    ids: u64,
    /// 0 for the first thread seen with this tid in this process, 1 for the
    /// next one the kernel gave the same tid after the first exited, ….
    pub generation: u32,
}

impl ThreadKey {
    /// The first (or only) thread with these ids.
    pub const fn new(pid: u32, tid: u32) -> Self {
        Self::nth(pid, tid, 0)
    }

    /// The thread with these ids that is `generation` (see the field).
    pub const fn nth(pid: u32, tid: u32, generation: u32) -> Self {
        Self { ids: (pid as u64) << 32 | tid as u64, generation }
    }

    /// Process id (tgid).
    pub const fn pid(self) -> u32 {
        (self.ids >> 32) as u32
    }

    /// Thread id.
    pub const fn tid(self) -> u32 {
        self.ids as u32
    }
}

impl std::fmt::Debug for ThreadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadKey")
            .field("pid", &self.pid())
            .field("tid", &self.tid())
            .field("generation", &self.generation)
            .finish()
    }
}

/// Tells apart the threads the kernel gives the same tid within one run.
/// A new thread announces itself with `sched_wakeup_new`; without the
/// scheduler view, a syscall record after the thread's `exit` is the sign.
/// One entry per tid, so at most `pid_max` of them.
#[derive(Debug, Default)]
pub struct Generations {
    by_tid: FxHashMap<u32, Generation>,
    /// The tid of the latest syscall record and what `by_tid` holds for
    /// it: a thread's records come in runs, the rest of which need no
    /// look-up.
    latest: Option<(u32, Option<Generation>)>,
}

#[derive(Debug, Clone, Copy)]
struct Generation {
    pid: u32,
    generation: u32,
    exited: bool,
}

impl Generations {
    /// The thread these ids name now, as far as is known.
    pub fn current(&self, pid: u32, tid: u32) -> ThreadKey {
        match self.by_tid.get(&tid) {
            Some(seen) if seen.pid == pid => ThreadKey::nth(pid, tid, seen.generation),
            _ => ThreadKey::new(pid, tid),
        }
    }

    /// The thread of a syscall record: a new one if the last thread with
    /// these ids made its `exit` call.
    #[inline(always)]
    pub fn syscall(&mut self, pid: u32, tid: u32) -> ThreadKey {
        let seen = match self.latest {
            Some((latest, seen)) if latest == tid => seen,
            _ => self.by_tid.get(&tid).copied(),
        };
        self.latest = Some((tid, seen));
        match seen {
            Some(seen) if seen.pid == pid && seen.exited => self.new_thread(pid, tid),
            Some(seen) if seen.pid == pid => ThreadKey::nth(pid, tid, seen.generation),
            _ => ThreadKey::new(pid, tid),
        }
    }

    /// A thread that has just been created: if its ids were seen before,
    /// they named another thread.
    #[cold]
    pub fn new_thread(&mut self, pid: u32, tid: u32) -> ThreadKey {
        let generation = match self.by_tid.get(&tid) {
            Some(seen) if seen.pid == pid => seen.generation + 1,
            _ => 0,
        };
        self.by_tid.insert(tid, Generation { pid, generation, exited: false });
        self.latest = None;
        ThreadKey::nth(pid, tid, generation)
    }

    /// Notes that the thread `key` has exited: its ids may come back.
    pub fn exited(&mut self, key: ThreadKey) {
        self.by_tid
            .insert(key.tid(), Generation { pid: key.pid(), generation: key.generation, exited: true });
        self.latest = None;
    }
}

/// What one thread did with one syscall.
#[derive(Clone, Debug, Default)]
pub struct SyscallStats {
    /// Calls, timed or not.
    pub count: u64,
    /// Calls that returned `-errno`.
    pub errors: u64,
    /// Errors by errno value.
    pub errnos: BTreeMap<i32, u64>,
    /// Sum of the timed calls' latencies.
    pub total_ns: u64,
    /// Calls counted in the kernel after their records were dropped: in
    /// `count`, `errors` and `errnos`, without a latency.
    pub lost: u64,
    /// Calls already in progress when probe attached, seen returning: in
    /// `count`, `errors` and `errnos`, not in the latencies (only a lower
    /// bound of theirs is known).
    pub unfinished_at_attach: u64,
    /// The sum of their lower bounds.
    pub unfinished_at_attach_ns: u64,
    /// Latencies of the timed calls (calls that never return have none).
    pub latency: Latencies,
    /// Of the timed calls the scheduler's events could split: their summed
    /// latency, and the parts spent blocked and waiting for a CPU (the rest
    /// was on a CPU).
    pub split_ns: u64,
    pub blocked_ns: u64,
    pub runq_ns: u64,
    /// The slowest timed calls, one by one.
    pub slowest: Slowest,
    /// With `--slow`: time asleep in the calls, by the kernel stack the
    /// thread slept in (`KERNEL_STACKS` id plus one; 0: not kept).
    pub wait_sites: FxHashMap<u32, u64>,
}

impl SyscallStats {
    /// Counts one call, with how it split between on-CPU, blocked and
    /// run-queue time when the scheduler's events could tell.
    #[inline(always)]
    pub fn record(&mut self, event: &SyscallEvent, split: Option<Split>) {
        self.count += 1;
        if event.flags & SYSCALL_NO_RETURN != 0 {
            return;
        }
        self.add_errors(errno_of(event.ret), 1);
        self.total_ns = self.total_ns.saturating_add(event.duration_ns);
        self.latency.record(event.duration_ns);
        if let Some(split) = split {
            self.split_ns = self.split_ns.saturating_add(event.duration_ns);
            self.blocked_ns = self.blocked_ns.saturating_add(split.blocked_ns);
            self.runq_ns = self.runq_ns.saturating_add(split.runq_ns);
        }
        self.slowest.offer(SlowCall {
            duration_ns: event.duration_ns,
            started_ns: event.start_ns,
            ret: event.ret,
            split,
        });
    }

    /// Counts a call that was in progress when probe attached, and took at
    /// least `lower_bound_ns`.
    pub fn record_unfinished(&mut self, event: &SyscallEvent, lower_bound_ns: u64) {
        self.count += 1;
        self.add_errors(errno_of(event.ret), 1);
        self.unfinished_at_attach += 1;
        self.unfinished_at_attach_ns = self.unfinished_at_attach_ns.saturating_add(lower_bound_ns);
    }

    fn record_lost(&mut self, errno: u32, calls: u64) {
        self.count += calls;
        self.lost += calls;
        self.add_errors((errno != 0).then_some(errno), calls);
    }

    /// Counts `calls` failures with `errno`, if they failed.
    fn add_errors(&mut self, errno: Option<u32>, calls: u64) {
        if let Some(errno) = errno {
            self.errors += calls;
            *self.errnos.entry(errno as i32).or_default() += calls;
        }
    }

    /// Adds another span's calls.
    pub fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.errors += other.errors;
        self.lost += other.lost;
        self.unfinished_at_attach += other.unfinished_at_attach;
        self.unfinished_at_attach_ns =
            self.unfinished_at_attach_ns.saturating_add(other.unfinished_at_attach_ns);
        for (&errno, &n) in &other.errnos {
            *self.errnos.entry(errno).or_default() += n;
        }
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        self.latency.merge(&other.latency);
        self.split_ns = self.split_ns.saturating_add(other.split_ns);
        self.blocked_ns = self.blocked_ns.saturating_add(other.blocked_ns);
        self.runq_ns = self.runq_ns.saturating_add(other.runq_ns);
        self.slowest.merge(&other.slowest);
        for (&site, &ns) in &other.wait_sites {
            add_ns(self.wait_sites.entry(site).or_default(), ns);
        }
    }
}

fn add_ns(total: &mut u64, ns: u64) {
    *total = total.saturating_add(ns);
}

/// One io_uring opcode's requests of one thread.
#[derive(Clone, Debug, Default)]
pub struct IoUringStats {
    /// The kernel's name for the opcode.
    pub name: String,
    pub count: u64,
    /// Requests that completed with `-errno`.
    pub errors: u64,
    /// Requests that went to an io-wq worker.
    pub offloaded: u64,
    /// Submission to completion.
    pub latency: Latencies,
}

impl IoUringStats {
    fn record(&mut self, event: &IoUringEvent) {
        if self.name.is_empty() {
            let end = event.op_name.iter().position(|&b| b == 0).unwrap_or(event.op_name.len());
            self.name = match end {
                0 => format!("opcode_{}", event.opcode),
                _ => String::from_utf8_lossy(&event.op_name[..end]).into_owned(),
            };
        }
        self.count += 1;
        self.errors += u64::from(event.res < 0);
        self.offloaded += u64::from(event.flags & IO_URING_ASYNC != 0);
        self.latency.record(event.duration_ns);
    }

    fn merge(&mut self, other: &Self) {
        if self.name.is_empty() {
            self.name.clone_from(&other.name);
        }
        self.count += other.count;
        self.errors += other.errors;
        self.offloaded += other.offloaded;
        self.latency.merge(&other.latency);
    }
}

/// The index of `key`'s row in `rows`, made if new: `latest` (the key
/// looked up last and its index) answers without a look-up while the
/// same key comes again, as a thread's records come in runs. Rows are only
/// removed with `swap_remove`, which must forget `latest`.
///
/// This and the rest of a syscall record's path (`Table::record`, `row`,
/// `thread`, `set_comm`, `syscall_mut`, `SyscallStats::record`,
/// `Generations::syscall`) are inlined into the pipeline, the look-ups of
/// new keys and renames kept out of line: called, they cost a storm's
/// record about a fifth of probe's CPU.
#[inline(always)]
fn row_index<K: Copy + Eq + std::hash::Hash, V: Default>(
    rows: &mut IndexMap<K, V, FxBuildHasher>,
    latest: &mut Option<(K, usize)>,
    key: K,
) -> usize {
    match *latest {
        Some((seen, index)) if seen == key => index,
        _ => {
            let index = look_up_row(rows, key);
            *latest = Some((key, index));
            index
        }
    }
}

/// The index of `key`'s row in `rows`, made if new: the look-up the
/// callers' caches save, out of the way of the records they answer.
#[cold]
#[inline(never)]
fn look_up_row<K: Eq + std::hash::Hash, V: Default>(
    rows: &mut IndexMap<K, V, FxBuildHasher>,
    key: K,
) -> usize {
    let entry = rows.entry(key);
    let index = entry.index();
    entry.or_default();
    index
}

/// Syscall statistics by syscall number.
pub type Syscalls = IndexMap<u32, SyscallStats, FxBuildHasher>;

/// Slots of [`RecentSyscalls`].
const RECENT_SYSCALLS: usize = 16;

/// A thread's (or a goroutine's) syscall numbers and their rows' indices
/// in its [`Syscalls`], a slot per number modulo 16: a storm repeats one
/// call, and a server's thread takes turns at a few (`epoll_wait`, `read`,
/// `write`: 232, 0 and 1 fall in slots of their own), each then found
/// without a look-up, which cost redis's records a tenth of probe's CPU
/// when only the latest call was remembered. Rows are never removed from
/// these tables, so an index stays right.
#[derive(Clone, Debug)]
pub struct RecentSyscalls([(u32, u32); RECENT_SYSCALLS]);

impl RecentSyscalls {
    /// The row of syscall `nr` in `rows`, the table these slots are of,
    /// made if new.
    #[inline(always)]
    pub fn row<'a>(&mut self, rows: &'a mut Syscalls, nr: u32) -> &'a mut SyscallStats {
        let slot = &mut self.0[nr as usize % RECENT_SYSCALLS];
        let index = match *slot {
            (seen, index) if seen == nr => index as usize,
            _ => {
                let index = look_up_row(rows, nr);
                *slot = (nr, index as u32);
                index
            }
        };
        &mut rows.as_mut_slice()[index]
    }
}

impl Default for RecentSyscalls {
    /// Empty: slot `i` holds `i + 1`, a number looked up in slot `i + 1`,
    /// never in this one.
    fn default() -> Self {
        Self(std::array::from_fn(|slot| (slot as u32 + 1, 0)))
    }
}

/// One thread's syscalls and scheduling.
#[derive(Clone, Debug, Default)]
pub struct ThreadStats {
    /// The thread's name as of its latest record that carries one.
    pub comm: String,
    /// Records seen for this thread.
    pub events: u64,
    /// Per syscall number.
    pub syscalls: Syscalls,
    /// Where the recent syscalls' rows are in `syscalls`.
    recent_syscalls: RecentSyscalls,
    /// What the scheduler did, once a scheduler event was seen.
    pub sched: Option<SchedStats>,
    /// io_uring requests it submitted, per opcode.
    pub io_uring: FxHashMap<u32, IoUringStats>,
    /// The thread was seen to exit.
    pub exited: bool,
    /// The name as the latest record that carried one had it: a record
    /// with the same bytes leaves `comm` as it is, without reading it.
    comm_bytes: [u8; COMM_LEN],
}

impl ThreadStats {
    /// The row of syscall `nr`, made if new.
    #[inline(always)]
    fn syscall_mut(&mut self, nr: u32) -> &mut SyscallStats {
        self.recent_syscalls.row(&mut self.syscalls, nr)
    }

    /// Adds another span's (or thread's) counts and times.
    fn add(&mut self, other: &ThreadStats) {
        self.events += other.events;
        for (nr, stats) in &other.syscalls {
            self.syscalls.entry(*nr).or_default().merge(stats);
        }
        if let Some(sched) = &other.sched {
            self.sched.get_or_insert_with(SchedStats::default).merge(sched);
        }
        for (opcode, stats) in &other.io_uring {
            self.io_uring.entry(*opcode).or_default().merge(stats);
        }
    }

    /// Keeps the newest name; names change (exec, prctl), and decoding is
    /// only paid when they do. An empty name (no name in the record) is
    /// ignored.
    #[inline(always)]
    fn set_comm(&mut self, comm: &[u8; COMM_LEN]) {
        // Most syscall records carry no name: a thread's unnamed and named
        // records then do not take turns at `comm_bytes`.
        if comm[0] != 0 && *comm != self.comm_bytes {
            self.rename(comm);
        }
    }

    #[cold]
    #[inline(never)]
    fn rename(&mut self, comm: &[u8; COMM_LEN]) {
        self.comm_bytes = *comm;
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        let comm = &comm[..end];
        // Only a hostile name differs from its visible form, and pays for
        // it again.
        if !comm.is_empty() && self.comm.as_bytes() != comm {
            self.comm = crate::escape::visible_bytes(comm);
        }
    }
}

/// Statistics for a set of threads over some span of time.
#[derive(Clone, Debug, Default)]
pub struct Table {
    threads: IndexMap<ThreadKey, ThreadStats, FxBuildHasher>,
    /// The thread of the latest record and its row's index: a thread's
    /// records come in runs, the rest of which need no look-up.
    latest: Option<(ThreadKey, usize)>,
    events: u64,
    /// Exited threads still kept one by one.
    exited: Vec<ThreadKey>,
    /// Whether exited threads beyond the cap whose process is gone too are
    /// folded across processes. An interval's table keeps processes apart,
    /// for the per-process metrics; the run's total folds them.
    fold_processes: bool,
    /// The syscalls in progress at the end of the span, by thread (threads
    /// without a row too).
    in_flight: FxHashMap<ThreadKey, CallInFlight>,
    /// What each kernel stack of `SyscallStats::wait_sites` is called (see
    /// [`Table::name_wait_sites`]).
    site_names: FxHashMap<u32, String>,
    /// `--slow`'s explanations of the calls among the slowest, by thread,
    /// syscall and start.
    explained: FxHashMap<(ThreadKey, u32, u64), Arc<Explanation>>,
    /// From how long calls sent their details, as the span closed: the
    /// run's table only, whose slowest calls are the ones explained.
    pub details_from: Option<DetailFloors>,
}

impl Table {
    /// A table that folds the exited threads of exited processes beyond the
    /// cap into one row, for a whole run.
    pub fn folding_processes() -> Self {
        Self { fold_processes: true, ..Self::default() }
    }

    /// Adds one syscall record of thread `key`, with how the call split
    /// between on-CPU, blocked and run-queue time, if known.
    #[inline(always)]
    pub fn record(&mut self, key: ThreadKey, event: &SyscallEvent, split: Option<Split>) {
        let thread = self.thread(key, &event.comm);
        thread.syscall_mut(event.nr).record(event, split);
        if event.flags & SYSCALL_NO_RETURN != 0 {
            self.mark_exited(key);
        }
    }

    /// Adds a call of thread `key` that was in progress when probe
    /// attached, and took at least `lower_bound_ns`.
    pub fn record_unfinished(&mut self, key: ThreadKey, event: &SyscallEvent, lower_bound_ns: u64) {
        let thread = self.thread(key, &event.comm);
        thread.syscall_mut(event.nr).record_unfinished(event, lower_bound_ns);
    }

    /// Sets the syscalls in progress at the end of the span.
    pub fn set_in_flight(&mut self, calls: FxHashMap<ThreadKey, CallInFlight>) {
        self.in_flight = calls;
    }

    /// The syscalls in progress at the end of the span, by thread.
    pub fn in_flight(&self) -> &FxHashMap<ThreadKey, CallInFlight> {
        &self.in_flight
    }

    /// Adds what the kernel counted of thread `key` after its records were
    /// dropped: syscalls, or scheduler events (`LOST_*` in `call.nr`).
    pub fn record_lost(&mut self, key: ThreadKey, call: &LostCall, count: u64) {
        let thread = self.row(key);
        if call.nr < LOST_VOLUNTARY_SWITCH {
            thread.syscall_mut(call.nr).record_lost(call.errno, count);
            return;
        }
        let sched = thread.sched.get_or_insert_with(SchedStats::default);
        // Not a record: the tracker takes the kernel's count of moves.
        if call.nr == LOST_MIGRATIONS {
            return;
        }
        sched.lost_records += count;
        match call.nr {
            LOST_VOLUNTARY_SWITCH => sched.voluntary += count,
            LOST_INVOLUNTARY_SWITCH => sched.involuntary += count,
            // Runs and waits that began unseen: only the times suffer.
            _ => {}
        }
    }

    /// Notes that a thread has exited, making its row one that can be
    /// folded beyond the cap.
    pub fn mark_exited(&mut self, key: ThreadKey) {
        let thread = self.row(key);
        let newly = !thread.exited && key.tid() != FOLDED_TID;
        thread.exited = true;
        if newly {
            self.exited.push(key);
        }
    }

    /// Adds the sleeps of a syscall of `key` that was just recorded to
    /// where its syscall's blocked time went.
    pub fn record_wait_sites(&mut self, key: ThreadKey, nr: u32, sleeps: &[Sleep]) {
        let Some(stats) = self.threads.get_mut(&key).and_then(|thread| thread.syscalls.get_mut(&nr)) else {
            return;
        };
        for sleep in sleeps {
            add_ns(stats.wait_sites.entry(sleep.kernel_stack).or_default(), sleep.ns());
        }
    }

    /// Names the wait sites not named yet, with `name` (which returns
    /// `None` for one it cannot tell).
    pub fn name_wait_sites(&mut self, name: &mut dyn FnMut(u32) -> Option<String>) {
        let sites = self
            .threads
            .values()
            .flat_map(|thread| thread.syscalls.values())
            .flat_map(|s| s.wait_sites.keys());
        let unnamed: FxHashSet<u32> =
            sites.filter(|site| !self.site_names.contains_key(site)).copied().collect();
        for site in unnamed {
            if let Some(named) = name(site) {
                self.site_names.insert(site, named);
            }
        }
    }

    /// Keeps `explanation` of the call of thread `key` and syscall `nr`
    /// that began at `started_ns`, if it is among its slowest here.
    pub fn explain(&mut self, key: ThreadKey, nr: u32, started_ns: u64, explanation: Arc<Explanation>) {
        if self.is_slowest(key, nr, started_ns) {
            self.explained.insert((key, nr, started_ns), explanation);
        }
    }

    /// The explanation of one of the slowest calls, if `--slow` gave one.
    pub fn explanation(&self, key: ThreadKey, nr: u32, started_ns: u64) -> Option<&Explanation> {
        self.explained.get(&(key, nr, started_ns)).map(Arc::as_ref)
    }

    /// Whether the call of thread `key` and syscall `nr` that began at
    /// `started_ns` is one of the slowest kept.
    pub fn is_slowest(&self, key: ThreadKey, nr: u32, started_ns: u64) -> bool {
        let stats = self.threads.get(&key).and_then(|thread| thread.syscalls.get(&nr));
        stats.is_some_and(|stats| stats.slowest.calls().iter().any(|call| call.started_ns == started_ns))
    }

    /// Whether a call of thread `key` and syscall `nr` taking `duration_ns`
    /// would be one of the slowest kept, if added now.
    pub fn would_keep(&self, key: ThreadKey, nr: u32, duration_ns: u64) -> bool {
        let stats = self.threads.get(&key).and_then(|thread| thread.syscalls.get(&nr));
        stats.is_none_or(|stats| stats.slowest.would_keep(duration_ns))
    }

    /// From how long calls of `nr` sent their details as the span closed;
    /// `None` when none were asked for.
    pub fn details_floor(&self, nr: u32) -> Option<u64> {
        self.details_from.as_ref().map(|floors| floors.floor(nr))
    }

    /// What wait site `site` is called, if it was named.
    pub fn site_name(&self, site: u32) -> Option<&str> {
        self.site_names.get(&site).map(String::as_str)
    }

    /// Adds one completed io_uring request, charged to its submitter `key`.
    pub fn record_io_uring(&mut self, key: ThreadKey, event: &IoUringEvent) {
        let thread = self.thread(key, &[0; COMM_LEN]);
        thread.io_uring.entry(event.opcode).or_default().record(event);
    }

    /// Counts one scheduler record of a thread; the tracker charges it.
    pub fn record_sched(&mut self, key: ThreadKey, comm: &[u8; COMM_LEN]) {
        self.thread(key, comm).sched.get_or_insert_with(SchedStats::default);
    }

    /// A thread's scheduler statistics, without counting a record.
    pub fn sched_mut(&mut self, key: ThreadKey) -> &mut SchedStats {
        self.row(key).sched.get_or_insert_with(SchedStats::default)
    }

    /// Counts a record of thread `key`, named `comm` in it.
    #[inline(always)]
    fn thread(&mut self, key: ThreadKey, comm: &[u8; COMM_LEN]) -> &mut ThreadStats {
        self.events += 1;
        let thread = self.row(key);
        thread.events += 1;
        thread.set_comm(comm);
        thread
    }

    /// Thread `key`'s row, made if new.
    #[inline(always)]
    fn row(&mut self, key: ThreadKey) -> &mut ThreadStats {
        let index = row_index(&mut self.threads, &mut self.latest, key);
        &mut self.threads.as_mut_slice()[index]
    }

    /// Adds `other`'s records, as if they had been recorded here after this
    /// table's own. Cheaper than recording every event twice: the cost is
    /// per thread and syscall, not per event.
    pub fn merge(&mut self, other: &Table, world: &dyn World) {
        self.events += other.events;
        // What is in progress is as of the later span's end.
        self.in_flight.clone_from(&other.in_flight);
        for (&site, name) in &other.site_names {
            self.site_names.entry(site).or_insert_with(|| name.clone());
        }
        self.explained.extend(other.explained.iter().map(|(&call, explanation)| (call, explanation.clone())));
        for (&key, theirs) in &other.threads {
            if theirs.exited {
                self.mark_exited(key);
            }
            let ours = self.threads.entry(key).or_default();
            ours.add(theirs);
            if !theirs.comm.is_empty() {
                ours.comm.clone_from(&theirs.comm);
            }
        }
        self.fold_beyond_cap(world);
        // Only the calls still among the slowest keep theirs.
        let explained = std::mem::take(&mut self.explained);
        self.explained =
            explained.into_iter().filter(|&((key, nr, at), _)| self.is_slowest(key, nr, at)).collect();
    }

    /// Names the threads no record named (seen only switching in or woken
    /// up, never as themselves: records a thread makes carry its name), by
    /// asking `world`, once per table.
    pub fn name_unnamed(&mut self, world: &dyn World) {
        for (key, thread) in &mut self.threads {
            if thread.comm.is_empty() && key.tid() != FOLDED_TID {
                thread.comm = world.thread_name(key.pid(), key.tid()).unwrap_or_default();
            }
        }
    }

    /// Marks the threads that are gone although their exit was never seen
    /// (its records lost), so that they too are folded beyond the cap.
    pub fn retire_dead(&mut self, world: &dyn World) {
        let dead: Vec<ThreadKey> = self
            .threads
            .iter()
            .filter(|(key, thread)| {
                !thread.exited && key.tid() != FOLDED_TID && !world.thread_alive(key.pid(), key.tid())
            })
            .map(|(key, _)| *key)
            .collect();
        for key in dead {
            self.mark_exited(key);
        }
        self.fold_beyond_cap(world);
        if self.fold_processes {
            // The rows of folded threads that intervals kept per process.
            let gone: Vec<ThreadKey> = self
                .threads
                .keys()
                .filter(|&&key| {
                    key.tid() == FOLDED_TID && key != FOLDED_PROCESSES && !world.process_alive(key.pid())
                })
                .copied()
                .collect();
            for key in gone {
                self.fold_into(key, FOLDED_PROCESSES, "[exited processes]");
            }
        }
    }

    fn fold_beyond_cap(&mut self, world: &dyn World) {
        if self.exited.len() > MAX_EXITED_THREADS {
            let events = |key: &ThreadKey| self.threads.get(key).map_or(0, |thread| thread.events);
            let mut exited = std::mem::take(&mut self.exited);
            exited.sort_by_cached_key(|key| std::cmp::Reverse(events(key)));
            for key in exited.split_off(MAX_EXITED_THREADS) {
                self.fold(key, world);
            }
            self.exited = exited;
        }
    }

    /// Moves a thread's statistics into its process's row of folded
    /// exited threads, or, once the process is gone too, into the one row
    /// of folded exited processes, which then takes the process's row.
    fn fold(&mut self, key: ThreadKey, world: &dyn World) {
        let process = ThreadKey::new(key.pid(), FOLDED_TID);
        if !self.fold_processes || world.process_alive(key.pid()) {
            self.fold_into(key, process, "[exited threads]");
        } else {
            self.fold_into(key, FOLDED_PROCESSES, "[exited processes]");
            self.fold_into(process, FOLDED_PROCESSES, "[exited processes]");
        }
    }

    fn fold_into(&mut self, key: ThreadKey, into: ThreadKey, name: &str) {
        // Moves the last row into the removed one's place.
        self.latest = None;
        let Some(thread) = self.threads.swap_remove(&key) else {
            return;
        };
        let folded = self.threads.entry(into).or_default();
        folded.comm = name.to_owned();
        folded.exited = true;
        folded.add(&thread);
    }

    /// Threads (and folded rows) in the table.
    pub fn rows(&self) -> usize {
        self.threads.len()
    }

    /// Every row, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (ThreadKey, &ThreadStats)> {
        self.threads.iter().map(|(key, thread)| (*key, thread))
    }

    /// One thread's row.
    pub fn get(&self, key: ThreadKey) -> Option<&ThreadStats> {
        self.threads.get(&key)
    }

    /// Records added so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Threads, busiest (most records) first; ties by key for stable output.
    pub fn busiest(&self) -> Vec<(ThreadKey, &ThreadStats)> {
        let mut threads: Vec<_> = self.iter().collect();
        threads.sort_by(|a, b| b.1.events.cmp(&a.1.events).then(a.0.cmp(&b.0)));
        threads
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use probe_common::EventKind;

    /// A world of the listed live threads (and their processes), named
    /// `live`; everything else is gone.
    #[derive(Debug, Default)]
    pub(crate) struct Listed(pub(crate) Vec<(u32, u32)>);

    impl World for Listed {
        fn thread_alive(&self, pid: u32, tid: u32) -> bool {
            self.0.contains(&(pid, tid))
        }

        fn process_alive(&self, pid: u32) -> bool {
            self.0.iter().any(|&(alive, _)| alive == pid)
        }

        fn thread_name(&self, pid: u32, tid: u32) -> Option<String> {
            self.thread_alive(pid, tid).then(|| "live".to_owned())
        }

        fn thread_state(&self, pid: u32, tid: u32) -> Option<char> {
            self.thread_alive(pid, tid).then_some('S')
        }

        fn syscall_args(&self, _pid: u32, _tid: u32) -> Option<(u32, [u64; 6])> {
            None
        }
    }

    /// Records `event` as the first thread with its ids.
    pub(crate) fn record(table: &mut Table, event: &SyscallEvent) {
        table.record(ThreadKey::new(event.pid, event.tid), event, None);
    }

    pub(crate) fn event(tid: u32, nr: u32, ret: i64, duration_ns: u64) -> SyscallEvent {
        let mut comm = [0; COMM_LEN];
        comm[..6].copy_from_slice(b"worker");
        SyscallEvent {
            kind: EventKind::Syscall as u32,
            cpu: 0,
            pid: 100,
            tid,
            nr,
            flags: 0,
            ret,
            start_ns: 1,
            duration_ns,
            comm,
            goid: probe_common::NO_GOROUTINE,
            go_start_pc: 0,
        }
    }

    #[test]
    fn counts_errors_and_errnos() {
        let mut table = Table::default();
        for _ in 0..5 {
            record(&mut table, &event(101, 257, -2, 1000));
        }
        record(&mut table, &event(101, 257, -13, 1000));
        record(&mut table, &event(101, 257, 3, 1000));
        let threads = table.busiest();
        let stats = &threads[0].1.syscalls[&257];
        assert_eq!((stats.count, stats.errors), (7, 6));
        assert_eq!(stats.errnos, BTreeMap::from([(2, 5), (13, 1)]));
        assert_eq!(stats.total_ns, 7000);
        assert_eq!(threads[0].1.comm, "worker");
    }

    #[test]
    fn calls_taking_turns_each_count_in_their_own_row() {
        let mut table = Table::default();
        // 0 and 16 share a slot of the recent calls; 1 is slot 0's empty
        // mark, u32::MAX no syscall at all.
        let turns = [232, 0, 1, 16, 0, 1, u32::MAX, 17, 1];
        for round in 0..3 {
            for (i, &nr) in turns.iter().enumerate() {
                record(&mut table, &event(7, nr, 0, (round * 10 + i) as u64 + 1));
            }
        }
        let threads = table.busiest();
        let syscalls = &threads[0].1.syscalls;
        let count = |nr| syscalls[&nr].count;
        assert_eq!([232, 0, 1, 16, u32::MAX, 17].map(count), [3, 6, 9, 3, 3, 3]);
        assert_eq!(syscalls[&16].total_ns, 4 + 14 + 24);
    }

    #[test]
    fn calls_that_never_return_count_without_latency() {
        let mut table = Table::default();
        let mut exit = event(9, 231, 0, 0);
        exit.flags = SYSCALL_NO_RETURN;
        record(&mut table, &exit);
        let threads = table.busiest();
        let stats = &threads[0].1.syscalls[&231];
        assert_eq!((stats.count, stats.errors), (1, 0));
        assert_eq!((stats.latency.min(), stats.latency.quantile(0.5)), (None, None));
    }

    #[test]
    fn busiest_thread_first_and_same_tid_in_two_processes_kept_apart() {
        let mut table = Table::default();
        record(&mut table, &event(1, 0, 0, 5));
        for _ in 0..3 {
            record(&mut table, &event(2, 0, 0, 5));
        }
        let mut other = event(1, 0, 0, 5);
        other.pid = 200;
        record(&mut table, &other);
        let order: Vec<_> = table.busiest().iter().map(|(k, _)| (k.pid(), k.tid())).collect();
        assert_eq!(order, [(100, 2), (100, 1), (200, 1)]);
        assert_eq!(table.events(), 5);
    }

    #[test]
    fn lost_calls_count_exactly_without_latency() {
        let mut table = Table::default();
        record(&mut table, &event(4, 257, -2, 100));
        let lost = LostCall { pid: 100, tid: 4, nr: 257, errno: 2 };
        let key = ThreadKey::new(100, 4);
        table.record_lost(key, &lost, 10);
        table.record_lost(key, &LostCall { errno: 0, ..lost }, 5);
        let threads = table.busiest();
        let stats = &threads[0].1.syscalls[&257];
        assert_eq!((stats.count, stats.errors, stats.lost), (16, 11, 15));
        assert_eq!(stats.errnos, BTreeMap::from([(2, 11)]));
        assert_eq!(stats.latency.len(), 1);
        // Lost calls are not records received.
        assert_eq!(table.events(), 1);
    }

    #[test]
    fn exited_threads_beyond_the_cap_fold_into_one_row_per_process() {
        let mut total = Table::default();
        let threads = MAX_EXITED_THREADS as u32 + 10;
        for tid in 1..=threads {
            // The first thread is the busiest.
            let calls = if tid == 1 { 5 } else { 1 };
            // A live process: its exited threads keep a row of their own.
            let pid = 100;
            let mut interval = Table::default();
            for _ in 0..calls {
                record(&mut interval, &SyscallEvent { pid, ..event(tid, 0, 0, 5) });
            }
            let exit = SyscallEvent { pid, flags: SYSCALL_NO_RETURN, ..event(tid, 60, 0, 0) };
            record(&mut interval, &exit);
            total.merge(&interval, &Listed(vec![(100, 1_000_000)]));
        }
        let rows = total.busiest();
        assert_eq!(rows.len(), MAX_EXITED_THREADS + 1);
        let folded = &rows.iter().find(|(key, _)| key.tid() == FOLDED_TID).unwrap().1;
        assert_eq!(folded.syscalls[&0].count, 10);
        assert_eq!(folded.syscalls[&60].count, 10);
        assert_eq!(folded.comm, "[exited threads]");
        // The busiest exited threads are kept one by one.
        assert!(rows.iter().any(|(key, _)| key.tid() == 1));
    }

    #[test]
    fn exited_processes_fold_into_one_row_of_the_total_only() {
        let mut total = Table::folding_processes();
        let mut apart = Table::default();
        // Processes that are gone by the time they are folded.
        for pid in 1000..1000 + MAX_EXITED_THREADS as u32 + 50 {
            let mut interval = Table::default();
            for tid in [pid, pid + 100_000] {
                let mut call = event(tid, 0, 0, 5);
                call.pid = pid;
                record(&mut interval, &call);
                interval.mark_exited(ThreadKey::new(pid, tid));
            }
            total.merge(&interval, &Listed::default());
            apart.merge(&interval, &Listed::default());
        }
        // An interval's table folds threads per process, never processes.
        assert!(apart.busiest().iter().all(|(key, _)| key.pid() != 0));
        let rows = total.busiest();
        assert!(rows.len() <= MAX_EXITED_THREADS + 2, "{} rows", rows.len());
        let folded = &rows.iter().find(|(key, _)| key.pid() == 0).unwrap().1;
        assert_eq!(folded.comm, "[exited processes]");
        let calls: u64 = rows.iter().map(|(_, t)| t.syscalls[&0].count).sum();
        assert_eq!(calls, 2 * (MAX_EXITED_THREADS as u64 + 50));
    }

    #[test]
    fn a_reused_tid_is_a_new_thread() {
        let mut generations = Generations::default();
        let first = generations.syscall(10, 11);
        assert_eq!(first, ThreadKey::new(10, 11));
        // After its exit call, a dying thread's last events are still its.
        generations.exited(first);
        assert_eq!(generations.current(10, 11), first);
        // A syscall after the exit is a new thread's.
        let second = generations.syscall(10, 11);
        assert_eq!(second.generation, 1);
        assert_eq!(generations.syscall(10, 11), second);
        // So is a thread the scheduler reports as new.
        let third = generations.new_thread(10, 11);
        assert_eq!(third.generation, 2);
        assert_eq!(generations.current(10, 11), third);
        // The same tid in another process is a fresh pair of ids.
        assert_eq!(generations.new_thread(20, 11), ThreadKey::new(20, 11));
        assert_eq!(generations.current(10, 11), ThreadKey::new(10, 11));
    }

    #[test]
    fn merging_equals_recording_into_one_table() {
        let events: Vec<_> = (0..100u64)
            .map(|i| event(1 + (i % 3) as u32, (i % 2) as u32, -((i % 5) as i64), i * 7))
            .collect();
        let mut whole = Table::default();
        let (mut first, mut second) = (Table::default(), Table::default());
        for (i, e) in events.iter().enumerate() {
            record(&mut whole, e);
            if i < 40 {
                record(&mut first, e)
            } else {
                record(&mut second, e)
            }
        }
        first.merge(&second, &Listed::default());
        assert_eq!(first.events(), whole.events());
        for ((ka, a), (kb, b)) in first.busiest().iter().zip(whole.busiest()) {
            assert_eq!((ka, a.events), (&kb, b.events));
            for (nr, x) in &a.syscalls {
                let y = &b.syscalls[nr];
                assert_eq!(
                    (x.count, x.errors, &x.errnos, x.total_ns),
                    (y.count, y.errors, &y.errnos, y.total_ns)
                );
                assert_eq!(x.latency, y.latency);
            }
        }
    }
}
