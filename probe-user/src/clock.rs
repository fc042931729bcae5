//! The clocks probe reads: the kernel programs' (`bpf_ktime_get_ns()` is
//! `CLOCK_MONOTONIC`), the wall clock its times are shown in, and probe's
//! own CPU time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `CLOCK_MONOTONIC` now, in ns: the clock of every timestamp in a record.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// Turns `CLOCK_MONOTONIC` times into wall-clock ones, at the offset the
/// two clocks had when it was made: the wall clock can be stepped (NTP, an
/// administrator) and the records' clock cannot, so a time converted now
/// is what the wall clock says it was.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// `CLOCK_REALTIME` minus `CLOCK_MONOTONIC`.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        // The wall clock read between two reads of the monotonic one, and
        // set against their midpoint: off by half the gap at most (a
        // preemption between the reads costs accuracy, never a wrong sign).
        let before = monotonic_ns();
        let wall = read(libc::CLOCK_REALTIME);
        let after = monotonic_ns();
        Self { offset_ns: i128::from(wall) - i128::from(before + (after - before) / 2) }
    }

    /// The wall-clock time of `monotonic_ns`.
    pub fn at(self, monotonic_ns: u64) -> SystemTime {
        let ns = (i128::from(monotonic_ns) + self.offset_ns).clamp(0, i128::from(u64::MAX));
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

/// CPU time probe has used so far, in ns.
pub fn process_cpu_ns() -> u64 {
    read(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_times_become_wall_clock_times() {
        let clock = WallClock::now();
        let before = SystemTime::now();
        let converted = clock.at(monotonic_ns());
        let after = SystemTime::now();
        let slack = Duration::from_millis(1);
        assert!(
            before - slack <= converted && converted <= after + slack,
            "{before:?} {converted:?} {after:?}"
        );
        // A second earlier on one clock is a second earlier on the other.
        let earlier = clock.at(monotonic_ns() - 1_000_000_000);
        assert!(converted.duration_since(earlier).unwrap().abs_diff(Duration::from_secs(1)) < slack);
    }
}
