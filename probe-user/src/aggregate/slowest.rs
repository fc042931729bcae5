//! The slowest calls of a thread's syscall, kept one by one: tail
//! exemplars, so that a p99 comes with the calls behind it (when each
//! began, how it returned, where its time went).

use super::sched::Split;

/// How many calls each thread and syscall keeps.
pub const KEPT: usize = 3;

/// One call, as its record and the scheduler's spans told it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowCall {
    pub duration_ns: u64,
    /// When it began, on the records' clock (`CLOCK_MONOTONIC`).
    pub started_ns: u64,
    /// Its return value (`-errno` on failure).
    pub ret: i64,
    /// Time asleep and waiting for a CPU within it; `None` without the
    /// scheduler's events.
    pub split: Option<Split>,
}

/// The `KEPT` slowest calls offered, slowest first. A fixed array: every
/// thread and syscall has one, and a call that is not among them costs
/// one comparison.
#[derive(Clone, Debug, Default)]
pub struct Slowest {
    calls: [SlowCall; KEPT],
    len: usize,
}

impl Slowest {
    /// Keeps `call` if it is among the slowest so far (a tie goes to the
    /// earlier call).
    #[inline]
    pub fn offer(&mut self, call: SlowCall) {
        if self.len == KEPT && call.duration_ns <= self.calls[KEPT - 1].duration_ns {
            return;
        }
        let at = self.calls[..self.len].partition_point(|kept| kept.duration_ns >= call.duration_ns);
        let end = self.len.min(KEPT - 1);
        self.calls.copy_within(at..end, at + 1);
        self.calls[at] = call;
        self.len = (self.len + 1).min(KEPT);
    }

    /// Whether a call of `duration_ns` offered now would be kept.
    pub fn would_keep(&self, duration_ns: u64) -> bool {
        self.len < KEPT || duration_ns > self.calls[KEPT - 1].duration_ns
    }

    /// Adds a later span's slowest calls.
    pub fn merge(&mut self, other: &Self) {
        for &call in other.calls() {
            self.offer(call);
        }
    }

    /// Slowest first.
    pub fn calls(&self) -> &[SlowCall] {
        &self.calls[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(duration_ns: u64, started_ns: u64) -> SlowCall {
        SlowCall { duration_ns, started_ns, ..SlowCall::default() }
    }

    #[test]
    fn the_slowest_are_kept_slowest_first_with_their_splits() {
        let split = Split { blocked_ns: 15, runq_ns: 1 };
        let mut slowest = Slowest::default();
        for (i, duration) in [5, 30, 1, 30, 20, 2].into_iter().enumerate() {
            // The calls that began at 0, 2 and 4 were split.
            slowest.offer(SlowCall { split: (i % 2 == 0).then_some(split), ..call(duration, i as u64) });
        }
        assert_eq!(
            slowest.calls(),
            [call(30, 1), call(30, 3), SlowCall { split: Some(split), ..call(20, 4) }]
        );
    }

    proptest! {
        #[test]
        fn offers_and_merges_keep_the_true_top(durations in prop::collection::vec(0u64..50, 0..40), cut in 0usize..40) {
            let cut = cut.min(durations.len());
            let (mut first, mut second, mut all) = (Slowest::default(), Slowest::default(), Slowest::default());
            for (i, &duration) in durations.iter().enumerate() {
                let target = if i < cut { &mut first } else { &mut second };
                target.offer(call(duration, i as u64));
                all.offer(call(duration, i as u64));
            }
            first.merge(&second);
            let mut expected = durations.clone();
            expected.sort_unstable_by(|a, b| b.cmp(a));
            expected.truncate(KEPT);
            let kept: Vec<u64> = first.calls().iter().map(|call| call.duration_ns).collect();
            prop_assert_eq!(&kept, &expected);
            prop_assert_eq!(first.calls(), all.calls());
        }
    }
}
