//! Latency distributions that stay small for the many threads and syscalls
//! that see few calls, and precise for the few that see many.

use hdrhistogram::{Counter, Histogram};

/// Two significant digits: quantiles within 1% of the true value.
const HISTOGRAM_SIGFIG: u8 = 2;

/// Up to this many latencies are kept as they are, and their quantiles are
/// exact; beyond, a histogram holds them. A histogram costs kilobytes, and
/// a process that starts thousands of short threads has thousands of
/// thread-and-syscall pairs with a handful of calls each.
const EXACT_SAMPLES: usize = 32;

/// A distribution of latencies in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latencies {
    /// The latencies themselves, until there are too many.
    samples: Vec<u64>,
    /// All latencies, once there are too many to keep.
    histogram: Option<Box<Counts>>,
    /// Exact extremes (a histogram's are rounded to its buckets).
    min: u64,
    max: u64,
}

impl Latencies {
    /// Adds one latency.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        if self.is_empty() || ns < self.min {
            self.min = ns;
        }
        self.max = self.max.max(ns);
        match &mut self.histogram {
            Some(histogram) => histogram.record(ns),
            None if self.samples.len() < EXACT_SAMPLES => self.samples.push(ns),
            None => self.histogram_mut().record(ns),
        }
    }

    /// Adds every latency of `other`.
    pub fn merge(&mut self, other: &Self) {
        let Some(theirs) = &other.histogram else {
            other.samples.iter().for_each(|&ns| self.record(ns));
            return;
        };
        if other.is_empty() {
            return;
        }
        let was_empty = self.is_empty();
        self.histogram_mut().merge(theirs);
        self.min = if was_empty { other.min } else { self.min.min(other.min) };
        self.max = self.max.max(other.max);
    }

    /// The histogram, made from the samples kept so far if there is none.
    fn histogram_mut(&mut self) -> &mut Counts {
        let samples = std::mem::take(&mut self.samples);
        self.histogram.get_or_insert_with(|| {
            let mut histogram = Box::new(Counts::Narrow(
                Histogram::new(HISTOGRAM_SIGFIG).expect("2 significant figures is valid"),
            ));
            samples.iter().for_each(|&ns| histogram.record(ns));
            histogram
        })
    }

    /// How many latencies.
    pub fn len(&self) -> u64 {
        match &self.histogram {
            Some(histogram) => histogram.len(),
            None => self.samples.len() as u64,
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Smallest latency.
    pub fn min(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.min)
    }

    /// Largest latency.
    pub fn max(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.max)
    }

    /// The latency at quantile `q` (0 to 1): exact (nearest rank) while the
    /// latencies are few, within 1% beyond, and never outside min..=max.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        let value = match &self.histogram {
            Some(histogram) => histogram.value_at_quantile(q),
            None => {
                let mut sorted = self.samples.clone();
                sorted.sort_unstable();
                let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
                sorted[rank.clamp(1, sorted.len()) - 1]
            }
        };
        Some(value.clamp(self.min, self.max))
    }

    /// Each latency with how many times it was seen, smallest first (within
    /// 1% once a histogram holds them).
    pub fn values(&self) -> Vec<(u64, u64)> {
        match &self.histogram {
            Some(histogram) => histogram.values(),
            None => {
                let mut sorted = self.samples.clone();
                sorted.sort_unstable();
                sorted.into_iter().map(|ns| (ns, 1)).collect()
            }
        }
    }

    /// How many latencies fall in each power-of-two range of nanoseconds:
    /// `(upper, count)` for `upper / 2 <= ns < upper`, from the first
    /// non-empty range to the last.
    pub fn log2_buckets(&self) -> Vec<(u64, u64)> {
        let mut counts = [0u64; 65];
        for (ns, n) in self.values() {
            counts[(u64::BITS - ns.leading_zeros()) as usize] += n;
        }
        let (Some(first), Some(last)) =
            (counts.iter().position(|&n| n > 0), counts.iter().rposition(|&n| n > 0))
        else {
            return Vec::new();
        };
        (first..=last).map(|bit| (1u64.checked_shl(bit as u32).unwrap_or(u64::MAX), counts[bit])).collect()
    }
}

/// A histogram's counts: 4 bytes each while their total is below
/// `u32::MAX`, so that none can saturate; 8 beyond. Every call's record
/// adds to one count, in tables the ring buffer's stream keeps pushing
/// out of the caches: half the bytes, half the cache lines to miss.
#[derive(Clone, Debug, PartialEq)]
enum Counts {
    Narrow(Histogram<u32>),
    Wide(Histogram<u64>),
}

impl Counts {
    #[inline]
    fn record(&mut self, ns: u64) {
        match self {
            Counts::Narrow(histogram) if histogram.len() < u64::from(u32::MAX) => add(histogram, ns, 1),
            Counts::Narrow(_) => add(self.widen(), ns, 1),
            Counts::Wide(histogram) => add(histogram, ns, 1),
        }
    }

    /// Adds every count of `other`.
    fn merge(&mut self, other: &Counts) {
        match (&mut *self, other) {
            (Counts::Narrow(ours), Counts::Narrow(theirs))
                if ours.len().saturating_add(theirs.len()) < u64::from(u32::MAX) =>
            {
                ours.add(theirs).expect("auto-resizing histograms accept any value");
            }
            (Counts::Wide(ours), Counts::Wide(theirs)) => {
                ours.add(theirs).expect("auto-resizing histograms accept any value");
            }
            _ => {
                let ours = self.widen();
                for (ns, count) in other.values() {
                    add(ours, ns, count);
                }
            }
        }
    }

    /// The counts, made 8 bytes each if they are not.
    fn widen(&mut self) -> &mut Histogram<u64> {
        if let Counts::Narrow(narrow) = self {
            let mut wide = Histogram::<u64>::new_from(narrow);
            for v in narrow.iter_recorded() {
                add(&mut wide, v.value_iterated_to(), v.count_at_value().into());
            }
            *self = Counts::Wide(wide);
        }
        match self {
            Counts::Wide(wide) => wide,
            Counts::Narrow(_) => unreachable!("widened above"),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Counts::Narrow(histogram) => histogram.len(),
            Counts::Wide(histogram) => histogram.len(),
        }
    }

    fn value_at_quantile(&self, q: f64) -> u64 {
        match self {
            Counts::Narrow(histogram) => histogram.value_at_quantile(q),
            Counts::Wide(histogram) => histogram.value_at_quantile(q),
        }
    }

    /// Each bucket's value with its count, smallest first.
    fn values(&self) -> Vec<(u64, u64)> {
        match self {
            Counts::Narrow(histogram) => histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value().into()))
                .collect(),
            Counts::Wide(histogram) => {
                histogram.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
            }
        }
    }
}

/// Records `count` latencies of `ns` into a histogram: zero as 1 ns (its
/// floor), growing it to fit (the saturating variants clamp to its range
/// instead).
#[inline]
fn add<C: Counter>(histogram: &mut Histogram<C>, ns: u64, count: C) {
    let value = ns.max(1);
    if histogram.record_n(value, count).is_err() {
        histogram.saturating_record_n(value, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_latencies_have_exact_quantiles() {
        let mut latencies = Latencies::default();
        for ns in [50, 10, 40, 20, 30] {
            latencies.record(ns);
        }
        assert_eq!(latencies.quantile(0.5), Some(30));
        assert_eq!(latencies.quantile(0.99), Some(50));
        assert_eq!(latencies.quantile(0.0), Some(10));
        assert_eq!((latencies.min(), latencies.max(), latencies.len()), (Some(10), Some(50), 5));
        assert_eq!(Latencies::default().quantile(0.5), None);
    }

    #[test]
    fn many_latencies_are_within_one_percent() {
        let mut latencies = Latencies::default();
        for i in 1..=10_000u64 {
            latencies.record(i * 1000);
        }
        for (q, exact) in [(0.5, 5_000_000.0), (0.9, 9_000_000.0), (0.99, 9_900_000.0)] {
            let got = latencies.quantile(q).unwrap() as f64;
            assert!((got - exact).abs() / exact <= 0.01, "q{q}: {got} vs {exact}");
        }
        assert_eq!((latencies.min(), latencies.max()), (Some(1000), Some(10_000_000)));
    }

    #[test]
    fn counts_widen_before_any_could_saturate() {
        // A narrow histogram a few calls short of u32::MAX, as a long run
        // of one call's latencies would make it.
        let narrow = |ns: u64| {
            let mut histogram = Histogram::<u32>::new(HISTOGRAM_SIGFIG).unwrap();
            histogram.record_n(ns, u32::MAX - 3).unwrap();
            Counts::Narrow(histogram)
        };
        let mut counts = narrow(1000);
        (0..10).for_each(|_| counts.record(1000));
        assert!(matches!(counts, Counts::Wide(_)));
        assert_eq!(counts.len(), u64::from(u32::MAX) + 7);
        // One bucket, named by its highest value (within 1% of 1000).
        assert_eq!(counts.values(), [(1003, u64::from(u32::MAX) + 7)]);
        // Merged, two narrow ones hold more than either could alone.
        let mut ours = narrow(1000);
        ours.merge(&narrow(5000));
        assert!(matches!(ours, Counts::Wide(_)));
        assert_eq!(ours.len(), 2 * u64::from(u32::MAX - 3));
        assert!((4950..=5050).contains(&ours.value_at_quantile(0.9)));
        // Small ones stay narrow, merged either way round.
        let mut small = Latencies::default();
        (0..100).for_each(|ns| small.record(ns));
        let mut wide = Latencies::default();
        wide.merge(&small);
        assert!(matches!(wide.histogram.as_deref(), Some(Counts::Narrow(_))));
        wide.histogram = Some(Box::new(counts));
        wide.merge(&small);
        assert_eq!(wide.len(), u64::from(u32::MAX) + 107);
    }

    #[test]
    fn buckets_split_at_powers_of_two_and_hold_every_latency() {
        let mut few = Latencies::default();
        for ns in [0, 1, 3, 4, 7, 1000] {
            few.record(ns);
        }
        let buckets = few.log2_buckets();
        assert_eq!(buckets[..4], [(1, 1), (2, 1), (4, 1), (8, 2)]);
        assert_eq!(buckets.last(), Some(&(1024, 1)));
        assert_eq!(buckets.len(), 11);
        let mut many = Latencies::default();
        (0..1000).for_each(|_| many.record(1500));
        (0..10).for_each(|_| many.record(3_000_000));
        let buckets = many.log2_buckets();
        assert_eq!(buckets.first(), Some(&(2048, 1000)));
        assert_eq!(buckets.last(), Some(&(4_194_304, 10)));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 1010);
        assert!(Latencies::default().log2_buckets().is_empty());
    }

    #[test]
    fn merging_any_mix_keeps_count_and_extremes() {
        let few = |from: u64| {
            let mut latencies = Latencies::default();
            (from..from + 5).for_each(|ns| latencies.record(ns));
            latencies
        };
        let many = |from: u64| {
            let mut latencies = Latencies::default();
            (from..from + 100).for_each(|ns| latencies.record(ns));
            latencies
        };
        for (mut ours, theirs) in
            [(few(10), few(1)), (few(10), many(1)), (many(10), few(1)), (many(10), many(500))]
        {
            let (count, min, max) =
                (ours.len() + theirs.len(), ours.min().min(theirs.min()), ours.max().max(theirs.max()));
            ours.merge(&theirs);
            assert_eq!((ours.len(), ours.min(), ours.max()), (count, min, max));
        }
        let mut empty = Latencies::default();
        empty.merge(&many(3));
        assert_eq!((empty.min(), empty.max()), (Some(3), Some(102)));
    }
}
