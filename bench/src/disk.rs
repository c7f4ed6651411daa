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

#[derive(Clone, Copy, Debug, Serialize)]
pub struct DiskSync {
    pub syncs: usize,
    pub every_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// What every durable 200 waits for at least.
    pub fastest_ms: f64,
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
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "probe file left behind");
    }
}
