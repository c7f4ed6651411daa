//! How long this machine's disk takes for the one thing a durable registration waits for that
//! Kamailio's in-memory registrar does not: a small write made durable by `fdatasync`. Timed the
//! way the store's journal writes (a frame in place, in space zero-filled before), one sync at a
//! time and paced as at the fixed rate, on the file system the servers' data directories are on.
//! The report uses it to say what the sync adds to REGISTER's response time. (Its CPU is not
//! timed here: a thread's system time in this virtual machine moved between 8 and 54 µs per sync
//! from run to run and method to method; the same run's `storage.sync = "checkpoint"` rows show
//! what the sync costs the server instead.)

use serde::Serialize;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// About one registration's journal frame.
pub const FRAME_BYTES: usize = 400;

#[derive(Clone, Debug, Serialize)]
pub struct DiskSync {
    pub syncs: usize,
    pub every_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// What every durable 200 waits for at least.
    pub fastest_ms: f64,
    /// Every sync's time, shortest first (for the report, not written out).
    #[serde(skip)]
    pub sorted_ms: Vec<f64>,
}

impl DiskSync {
    /// The `p` percentile of a response time made of one of `path_ms` (sorted) and one of this
    /// disk's syncs, every pair counted alike: what a durable 200 would take if it waited for the
    /// sync-free path and one sync, and nothing else.
    pub fn percentile_with_a_sync(&self, path_ms: &[f64], p: f64) -> Option<f64> {
        percentile_of_sums(path_ms, &self.sorted_ms, p)
    }
}

/// The `p` percentile (as `sipp::percentile` takes it: the least value at least `p`% are within)
/// of `a + b` over every pair of `a` and `b`, both sorted, without making the pairs: bisects on
/// the value, counting the pairs within it with one binary search per `b`.
fn percentile_of_sums(a: &[f64], b: &[f64], p: f64) -> Option<f64> {
    let (&a0, &a1, &b0, &b1) = (a.first()?, a.last()?, b.first()?, b.last()?);
    let pairs = a.len() as f64 * b.len() as f64;
    let wanted = ((p / 100.0) * pairs).ceil().max(1.0);
    let within = |t: f64| b.iter().map(|y| a.partition_point(|x| *x <= t - y) as f64).sum::<f64>();
    let (mut lo, mut hi) = (a0 + b0, a1 + b1);
    if within(lo) >= wanted {
        return Some(lo);
    }
    // `within(lo) < wanted <= within(hi)` throughout.
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if within(mid) >= wanted { hi = mid } else { lo = mid }
    }
    Some(hi)
}

/// Writes and syncs `syncs` frames, one every `every`, in a file under `dir` (removed after).
pub fn measure(dir: &Path, syncs: usize, every: Duration) -> anyhow::Result<DiskSync> {
    let path = dir.join("disk-sync-probe");
    let measured = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(anyhow::Error::from)
        .and_then(|file| measure_in(&file, syncs, every));
    let _ = std::fs::remove_file(&path);
    measured
}

fn measure_in(file: &File, syncs: usize, every: Duration) -> anyhow::Result<DiskSync> {
    file.write_all_at(&vec![0u8; FRAME_BYTES * syncs + 4096], 0)?;
    file.sync_all()?;
    let frame = [b'x'; FRAME_BYTES];
    let mut latencies = Vec::with_capacity(syncs);
    let start = Instant::now();
    for i in 0..syncs {
        file.write_all_at(&frame, (i * FRAME_BYTES) as u64)?;
        let t = Instant::now();
        file.sync_data()?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        // A schedule, not a wait for something: the load it models arrives on a clock.
        if let Some(left) = (start + every * (i as u32 + 1)).checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(DiskSync {
        syncs,
        every_ms: every.as_secs_f64() * 1e3,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        fastest_ms: latencies[0],
        sorted_ms: latencies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_syncs_are_timed_and_the_probe_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = measure(dir.path(), 20, Duration::from_millis(1)).unwrap();
        assert_eq!(d.syncs, 20);
        assert!(0.0 < d.fastest_ms && d.fastest_ms <= d.p50_ms && d.p50_ms <= d.p99_ms, "{d:?}");
        assert_eq!((d.sorted_ms.len(), d.sorted_ms[0]), (20, d.fastest_ms));
        assert!(d.sorted_ms.is_sorted());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "probe file left behind");
    }

    /// The percentile of the sums, against making every pair and sorting them.
    #[test]
    fn the_percentile_of_sums_is_that_of_every_pair() {
        let (a, b) = ([1.0, 2.0, 3.0], [10.0, 20.0]);
        let of = |p| percentile_of_sums(&a, &b, p).map(|v| (v * 1e6).round() / 1e6);
        assert_eq!((of(1.0), of(50.0), of(99.0)), (Some(11.0), Some(13.0), Some(23.0)));
        // Uneven values, some repeated, against the brute force.
        let mut a: Vec<f64> = (0..300).map(|i| ((i * 37 % 101) as f64 / 7.0).floor()).collect();
        let mut b: Vec<f64> = (0..50).map(|i| (i * i % 23) as f64 * 0.013).collect();
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let mut sums: Vec<f64> = a.iter().flat_map(|x| b.iter().map(move |y| x + y)).collect();
        sums.sort_by(f64::total_cmp);
        for p in [0.5, 25.0, 50.0, 90.0, 99.0, 100.0] {
            let got = percentile_of_sums(&a, &b, p).unwrap();
            let want = crate::sipp::percentile(&sums, p).unwrap();
            assert!((got - want).abs() < 1e-9, "p{p}: {got} against {want}");
        }
        assert_eq!(percentile_of_sums(&[], &b, 99.0), None);
    }
}
