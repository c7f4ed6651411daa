//! How long Parley's journal syncs took during a run: the histogram
//! `parley_store_journal_sync_seconds` from the server's `/metrics`, read before and after.
//! A durable registration's 200 waits for the syncs the disk gives while the servers run; the
//! disk's sync timed alone before the run (`disk.rs`) cannot show those.

use serde::Serialize;

const NAME: &str = "parley_store_journal_sync_seconds_bucket{le=\"";

/// Sync counts by upper bound (seconds, the last one infinite), cumulative as Prometheus gives them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SyncTimes {
    pub buckets: Vec<(f64, u64)>,
}

impl SyncTimes {
    /// The histogram in a `/metrics` text, if the server has one (a Home Server with a store).
    pub fn parse(metrics: &str) -> Option<SyncTimes> {
        let buckets: Vec<(f64, u64)> = metrics
            .lines()
            .filter_map(|l| l.strip_prefix(NAME))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        (!buckets.is_empty()).then_some(SyncTimes { buckets })
    }

    /// The syncs between `before` and `self` (the same server, read later).
    pub fn since(&self, before: &SyncTimes) -> SyncTimes {
        self.by_bound(before, u64::saturating_sub)
    }

    /// The syncs of both (the same buckets).
    pub fn plus(&self, other: &SyncTimes) -> SyncTimes {
        self.by_bound(other, |a, b| a + b)
    }

    /// Each of this histogram's counts combined with `other`'s at the same bound (0 where it has none).
    fn by_bound(&self, other: &SyncTimes, combine: impl Fn(u64, u64) -> u64) -> SyncTimes {
        let of = |le: f64| other.buckets.iter().find(|(b, _)| *b == le).map_or(0, |(_, n)| *n);
        SyncTimes { buckets: self.buckets.iter().map(|(le, n)| (*le, combine(*n, of(*le)))).collect() }
    }

    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, n)| *n)
    }

    /// The bound (ms) within which the fraction `q` of the syncs finished.
    pub fn within_ms(&self, q: f64) -> Option<f64> {
        let need = (q * self.count() as f64).ceil() as u64;
        (self.count() > 0)
            .then(|| self.buckets.iter().find(|(_, n)| *n >= need).map_or(f64::INFINITY, |(le, _)| ms(*le)))
    }

    /// The bound (ms) the slowest sync took longer than: the upper bound of the bucket below the
    /// highest one holding a sync (0 if that is the first).
    pub fn slowest_above_ms(&self) -> Option<f64> {
        let top = self.buckets.iter().position(|(_, n)| *n == self.count())?;
        (self.count() > 0).then(|| if top == 0 { 0.0 } else { ms(self.buckets[top - 1].0) })
    }
}

/// Seconds in ms, rounded to the µs (0.025 s is 25 ms, not 25.000000000000004).
fn ms(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# TYPE parley_store_journal_sync_seconds histogram
parley_store_journal_sync_seconds_bucket{le=\"0.0001\"} 10
parley_store_journal_sync_seconds_bucket{le=\"0.00025\"} 95
parley_store_journal_sync_seconds_bucket{le=\"0.0005\"} 99
parley_store_journal_sync_seconds_bucket{le=\"0.01\"} 99
parley_store_journal_sync_seconds_bucket{le=\"0.025\"} 100
parley_store_journal_sync_seconds_bucket{le=\"+Inf\"} 100
parley_store_journal_sync_seconds_sum 0.03
parley_store_journal_sync_seconds_count 100
parley_sip_request_duration_seconds_bucket{method=\"REGISTER\",le=\"0.0001\"} 7
";

    #[test]
    fn the_syncs_of_a_run_are_read_from_the_histogram_before_and_after() {
        let after = SyncTimes::parse(METRICS).expect("a histogram");
        assert_eq!(after.buckets.len(), 6);
        assert_eq!(after.buckets[5], (f64::INFINITY, 100));
        // Before the run: 10 syncs, all within 0.1 ms.
        let before = SyncTimes { buckets: after.buckets.iter().map(|(le, _)| (*le, 10)).collect() };
        let run = after.since(&before);
        assert_eq!(run.count(), 90);
        // 85 within 0.25 ms, 89 within 0.5, the last one above 10 ms.
        assert_eq!(run.within_ms(0.5), Some(0.25));
        assert_eq!(run.within_ms(0.99), Some(25.0));
        assert_eq!(run.slowest_above_ms(), Some(10.0));
        assert_eq!(run.plus(&run).count(), 180);
        let none = after.since(&after);
        assert_eq!((none.count(), none.within_ms(0.5), none.slowest_above_ms()), (0, None, None));
        assert_eq!(SyncTimes::parse("parley_registrations 3\n"), None);
    }
}
