//! Per-thread statistics built from the kernel's records: per syscall here,
//! and the scheduler's view in [`sched`].

pub mod sched;

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use probe_common::{SyscallEvent, COMM_LEN, SYSCALL_NO_RETURN};

use self::sched::SchedStats;

/// Two significant digits: quantiles within 1% of the true value, with
/// histograms small enough to keep one per thread and syscall.
const HISTOGRAM_SIGFIG: u8 = 2;

/// An empty latency histogram.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new(HISTOGRAM_SIGFIG).expect("2 significant figures is valid")
}

/// Records a latency; a zero is recorded as 1 ns, the histogram's floor.
pub(crate) fn record(histogram: &mut Histogram<u64>, ns: u64) {
    let value = ns.max(1);
    // `record` grows the histogram to fit; `saturating_record` would clamp to
    // the current top instead.
    if histogram.record(value).is_err() {
        histogram.saturating_record(value);
    }
}

/// The kernel returns `-errno` in this range; anything else is a result.
const MAX_ERRNO: i64 = 4095;

/// Identifies a thread for the whole run: a tid is only unique within the
/// life of its process, so the process id goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadKey {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
}

/// What one thread did with one syscall.
#[derive(Clone, Debug)]
pub struct SyscallStats {
    /// Calls, timed or not.
    pub count: u64,
    /// Calls that returned `-errno`.
    pub errors: u64,
    /// Errors by errno value.
    pub errnos: BTreeMap<i32, u64>,
    /// Sum of the timed calls' latencies.
    pub total_ns: u64,
    /// Exact extremes of the timed calls' latencies (the histogram's are
    /// rounded to its buckets).
    min_ns: u64,
    max_ns: u64,
    /// Latencies of the timed calls (calls that never return have none).
    pub latency: Histogram<u64>,
}

impl Default for SyscallStats {
    fn default() -> Self {
        Self {
            count: 0,
            errors: 0,
            errnos: BTreeMap::new(),
            total_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            latency: new_histogram(),
        }
    }
}

impl SyscallStats {
    fn record(&mut self, event: &SyscallEvent) {
        self.count += 1;
        if event.flags & SYSCALL_NO_RETURN != 0 {
            return;
        }
        if (-MAX_ERRNO..0).contains(&event.ret) {
            self.errors += 1;
            *self.errnos.entry(-event.ret as i32).or_default() += 1;
        }
        self.total_ns += event.duration_ns;
        self.min_ns = self.min_ns.min(event.duration_ns);
        self.max_ns = self.max_ns.max(event.duration_ns);
        record(&mut self.latency, event.duration_ns);
    }

    fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.errors += other.errors;
        for (&errno, &n) in &other.errnos {
            *self.errnos.entry(errno).or_default() += n;
        }
        self.total_ns += other.total_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        // Both histograms auto-resize, so adding cannot go out of range.
        self.latency
            .add(&other.latency)
            .expect("auto-resizing histograms accept any value");
    }

    /// The latency at quantile `q`, or `None` when no call was timed.
    ///
    /// A histogram bucket's representative can lie just outside the values
    /// in it; it is clamped to the exact extremes, so that p99 never exceeds
    /// max.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        (!self.latency.is_empty()).then(|| {
            self.latency
                .value_at_quantile(q)
                .clamp(self.min_ns, self.max_ns)
        })
    }

    /// Smallest timed latency.
    pub fn min(&self) -> Option<u64> {
        (!self.latency.is_empty()).then_some(self.min_ns)
    }

    /// Largest timed latency.
    pub fn max(&self) -> Option<u64> {
        (!self.latency.is_empty()).then_some(self.max_ns)
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
    pub syscalls: HashMap<u32, SyscallStats>,
    /// What the scheduler did, once a scheduler event was seen.
    pub sched: Option<SchedStats>,
}

impl ThreadStats {
    /// Keeps the newest name; names change (exec, prctl), and decoding is
    /// only paid when they do. An empty name (no name in the record) is
    /// ignored.
    fn set_comm(&mut self, comm: &[u8; COMM_LEN]) {
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        let comm = &comm[..end];
        if !comm.is_empty() && self.comm.as_bytes() != comm {
            self.comm = String::from_utf8_lossy(comm).into_owned();
        }
    }
}

/// Statistics for a set of threads over some span of time.
#[derive(Clone, Debug, Default)]
pub struct Table {
    threads: HashMap<ThreadKey, ThreadStats>,
    events: u64,
}

impl Table {
    /// Adds one syscall record.
    pub fn record(&mut self, event: &SyscallEvent) {
        let thread = self.thread(
            ThreadKey {
                pid: event.pid,
                tid: event.tid,
            },
            &event.comm,
        );
        thread.syscalls.entry(event.nr).or_default().record(event);
    }

    /// Counts one scheduler record of a thread and returns the thread's
    /// scheduler statistics, for the tracker to update.
    pub fn record_sched(&mut self, key: ThreadKey, comm: &[u8; COMM_LEN]) -> &mut SchedStats {
        self.thread(key, comm)
            .sched
            .get_or_insert_with(SchedStats::default)
    }

    /// A thread's scheduler statistics, without counting a record.
    pub fn sched_mut(&mut self, key: ThreadKey) -> &mut SchedStats {
        self.threads
            .entry(key)
            .or_default()
            .sched
            .get_or_insert_with(SchedStats::default)
    }

    fn thread(&mut self, key: ThreadKey, comm: &[u8; COMM_LEN]) -> &mut ThreadStats {
        self.events += 1;
        let thread = self.threads.entry(key).or_default();
        thread.events += 1;
        thread.set_comm(comm);
        thread
    }

    /// Adds `other`'s records, as if they had been recorded here after this
    /// table's own. Cheaper than recording every event twice: the cost is
    /// per thread and syscall, not per event.
    pub fn merge(&mut self, other: Table) {
        self.events += other.events;
        for (key, theirs) in other.threads {
            let ours = self.threads.entry(key).or_default();
            ours.events += theirs.events;
            if !theirs.comm.is_empty() {
                ours.comm = theirs.comm;
            }
            for (nr, stats) in &theirs.syscalls {
                ours.syscalls.entry(*nr).or_default().merge(stats);
            }
            if let Some(sched) = &theirs.sched {
                ours.sched
                    .get_or_insert_with(SchedStats::default)
                    .merge(sched);
            }
        }
    }

    /// Records added so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Threads, busiest (most records) first; ties by key for stable output.
    pub fn busiest(&self) -> Vec<(ThreadKey, &ThreadStats)> {
        let mut threads: Vec<_> = self.threads.iter().map(|(k, t)| (*k, t)).collect();
        threads.sort_by(|a, b| b.1.events.cmp(&a.1.events).then(a.0.cmp(&b.0)));
        threads
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use probe_common::EventKind;

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
        }
    }

    #[test]
    fn counts_errors_and_errnos() {
        let mut table = Table::default();
        for _ in 0..5 {
            table.record(&event(101, 257, -2, 1000));
        }
        table.record(&event(101, 257, -13, 1000));
        table.record(&event(101, 257, 3, 1000));
        let threads = table.busiest();
        let stats = &threads[0].1.syscalls[&257];
        assert_eq!((stats.count, stats.errors), (7, 6));
        assert_eq!(stats.errnos, BTreeMap::from([(2, 5), (13, 1)]));
        assert_eq!(stats.total_ns, 7000);
        assert_eq!(threads[0].1.comm, "worker");
    }

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut table = Table::default();
        for i in 1..=10_000u64 {
            table.record(&event(7, 0, 0, i * 1000));
        }
        let threads = table.busiest();
        let stats = &threads[0].1.syscalls[&0];
        for (q, exact) in [(0.5, 5_000_000.0), (0.9, 9_000_000.0), (0.99, 9_900_000.0)] {
            let got = stats.quantile(q).unwrap() as f64;
            assert!(
                (got - exact).abs() / exact <= 0.01,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(stats.min(), Some(1000));
        assert!(stats.quantile(1.0).unwrap() <= stats.max().unwrap());
    }

    #[test]
    fn calls_that_never_return_count_without_latency() {
        let mut table = Table::default();
        let mut exit = event(9, 231, 0, 0);
        exit.flags = SYSCALL_NO_RETURN;
        table.record(&exit);
        let threads = table.busiest();
        let stats = &threads[0].1.syscalls[&231];
        assert_eq!((stats.count, stats.errors), (1, 0));
        assert_eq!((stats.min(), stats.quantile(0.5)), (None, None));
    }

    #[test]
    fn busiest_thread_first_and_same_tid_in_two_processes_kept_apart() {
        let mut table = Table::default();
        table.record(&event(1, 0, 0, 5));
        for _ in 0..3 {
            table.record(&event(2, 0, 0, 5));
        }
        let mut other = event(1, 0, 0, 5);
        other.pid = 200;
        table.record(&other);
        let order: Vec<_> = table
            .busiest()
            .iter()
            .map(|(k, _)| (k.pid, k.tid))
            .collect();
        assert_eq!(order, [(100, 2), (100, 1), (200, 1)]);
        assert_eq!(table.events(), 5);
    }

    #[test]
    fn merging_equals_recording_into_one_table() {
        let events: Vec<_> = (0..100u64)
            .map(|i| event(1 + (i % 3) as u32, (i % 2) as u32, -((i % 5) as i64), i * 7))
            .collect();
        let mut whole = Table::default();
        let (mut first, mut second) = (Table::default(), Table::default());
        for (i, e) in events.iter().enumerate() {
            whole.record(e);
            if i < 40 {
                first.record(e)
            } else {
                second.record(e)
            }
        }
        first.merge(second);
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
