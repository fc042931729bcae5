//! Which calls the kernel programs send details for (`DETAIL_NS`): every
//! call of `--slow`'s threshold, and, for the tail exemplars every run
//! keeps (each thread's slowest calls of each syscall), calls from a floor
//! up. A detail is 16 KiB of ring buffer and an unwind, so the floor of a
//! syscall whose calls over it come faster than a budget is doubled: its
//! tail exemplars then keep the slowest calls' details, and those under the
//! floor say that theirs were not taken.

use probe_common::{table_index, MAX_SYSCALL_NR};

/// Calls from this long send their details without `--slow`: shorter
/// ones are rarely what a tail is asked about.
pub const FIRST_FLOOR_NS: u64 = 1_000_000;

/// Details a second, all syscalls together, before floors are raised.
const BUDGET_PER_S: f64 = 50.0;

/// The shortest window a budget is prorated over: a shorter one (the first
/// of a run) would raise floors for a detail or two.
const MIN_WINDOW_S: f64 = 0.25;

/// The floors, and the details seen since they were last looked at.
#[derive(Clone, Debug)]
pub struct DetailFloors {
    /// `--slow`'s threshold: its calls always send details.
    slow_ns: Option<u64>,
    /// Whether the tail's calls send details (else every floor is
    /// `u64::MAX`); asked at every record.
    tail: bool,
    /// Per syscall index (as the kernel's arrays: the i386 table's from
    /// `COMPAT_FLAGS_BASE`).
    floors: Vec<u64>,
    seen: Vec<u32>,
}

impl DetailFloors {
    /// `--slow`'s threshold, and whether the tail's calls send details.
    pub fn new(slow_ns: Option<u64>, tail: bool) -> Self {
        let size = MAX_SYSCALL_NR as usize;
        let floor = if tail { FIRST_FLOOR_NS } else { u64::MAX };
        Self { slow_ns, tail, floors: vec![floor; size], seen: vec![0; size] }
    }

    /// Whether the tail's calls send details.
    pub fn tail(&self) -> bool {
        self.tail
    }

    /// Every syscall's `DETAIL_NS` entry, to load at start.
    pub fn all(&self) -> Vec<(u32, u64)> {
        (0..self.floors.len()).map(|index| (index as u32, self.detail_ns(index))).collect()
    }

    /// A call of `nr` came with its details.
    pub fn seen(&mut self, nr: u32) {
        if let Some(seen) = self.seen.get_mut(table_index(nr) as usize) {
            *seen += 1;
        }
    }

    /// `seconds` have passed since the last call: the floor of each syscall that
    /// sent more than half the budget is doubled as many times as it went
    /// over (details take ring buffer that records need, so it comes down
    /// in one step); else, when all together sent more than the budget,
    /// the busiest one's. Returns the `DETAIL_NS` entries that changed.
    pub fn raise(&mut self, seconds: f64) -> Vec<(u32, u64)> {
        let budget = BUDGET_PER_S * seconds.max(MIN_WINDOW_S);
        let total: f64 = self.seen.iter().map(|&n| f64::from(n)).sum();
        let mut raised: Vec<(usize, u32)> = self
            .seen
            .iter()
            .enumerate()
            .filter(|&(_, &n)| f64::from(n) > budget / 2.0)
            .map(|(index, &n)| (index, (f64::from(n) / (budget / 2.0)).log2().ceil().max(1.0) as u32))
            .collect();
        if raised.is_empty() && total > budget {
            raised.extend(self.seen.iter().enumerate().max_by_key(|&(_, &n)| n).map(|(index, _)| (index, 1)));
        }
        self.seen.fill(0);
        raised
            .into_iter()
            .map(|(index, doublings)| {
                self.floors[index] = self.floors[index].saturating_mul(1u64 << doublings.min(40));
                (index as u32, self.detail_ns(index))
            })
            .collect()
    }

    /// From how long calls of `nr` send their details now; floors only
    /// rise, so a call this long or longer has always been asked for.
    pub fn floor(&self, nr: u32) -> u64 {
        self.floors.get(table_index(nr) as usize).copied().unwrap_or(u64::MAX)
    }

    /// 0 (never) when neither asks.
    fn detail_ns(&self, index: usize) -> u64 {
        match self.slow_ns.map_or(self.floors[index], |slow_ns| slow_ns.min(self.floors[index])) {
            u64::MAX => 0,
            ns => ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{COMPAT_FLAGS_BASE, COMPAT_NR};

    #[test]
    fn the_busiest_syscalls_floor_doubles_past_the_budget_and_slow_calls_stay_asked_for() {
        let mut floors = DetailFloors::new(Some(1_500_000), true);
        assert!(floors.all().iter().all(|&(_, ns)| ns == FIRST_FLOOR_NS));
        for nr in [0, 1] {
            for _ in 0..20 {
                floors.seen(nr);
            }
        }
        assert!(floors.raise(1.0).is_empty(), "40 details in a second are within the budget");
        for _ in 0..30 {
            floors.seen(0);
        }
        for _ in 0..24 {
            floors.seen(1);
        }
        assert_eq!(floors.raise(1.0), [(0, 1_500_000)], "--slow's calls are still asked for");
        assert_eq!(floors.floor(0), 2 * FIRST_FLOOR_NS);
        assert_eq!(floors.floor(1), FIRST_FLOOR_NS);
        for _ in 0..24 {
            floors.seen(1);
        }
        for _ in 0..27 {
            floors.seen(2);
        }
        assert_eq!(floors.raise(1.0), [(2, 1_500_000)], "over the budget together: the busiest");
        for _ in 0..1000 {
            floors.seen(1);
        }
        floors.raise(1.0);
        assert_eq!(floors.floor(1), 64 * FIRST_FLOOR_NS, "1000 details for 25: six doublings at once");
        floors.seen(3);
        assert!(floors.raise(0.0).is_empty(), "a detail at once is within a quarter second's budget");
        floors.seen(COMPAT_NR | 3);
        assert_eq!(floors.seen[(COMPAT_FLAGS_BASE + 3) as usize], 1);
    }
}
