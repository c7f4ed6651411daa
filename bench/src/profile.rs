//! Where a server's CPU goes: the kernel's share of its CPU during a run, from `perf record`'s
//! samples (the software `cpu-clock` event: no hardware counters in this virtual machine).
//! /proc's user and system times cannot say it: the kernel splits them by which side the
//! scheduler tick fell on, and on these servers, asleep between datagrams, that read Kamailio's
//! kernel share as 0 to 20% where `perf` samples 33% (2026-12-04, REGISTER at 1,000/s).
//!
//! A sample every 500 µs of the server's own CPU time (the event counts only while it runs): about
//! a thousand per fixed-rate run, each a timer interrupt in the sampled thread, alike for every
//! server (a CPU-bound loop timed with and without it showed no difference above the noise).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Nanoseconds of a process's CPU time between samples.
const PERIOD_NS: &str = "500000";

/// A `perf record` running on some processes.
pub struct Recording {
    perf: Child,
    file: PathBuf,
}

/// Starts sampling `pids` (all their threads), the recorder itself on `cpus` (the load
/// generator's, not the server's); `None`, with the reason printed, if `perf` cannot.
pub fn start(pids: &[u32], cpus: &str, file: &Path) -> Option<Recording> {
    // Above 1, the kernel leaves its own samples out for anyone but root: the share would read 0.
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2);
    // SAFETY: geteuid(2) has no preconditions.
    if paranoid > 1 && unsafe { libc::geteuid() } != 0 {
        eprintln!("    not profiled: kernel.perf_event_paranoid is {paranoid} (kernel samples need 1 or root)");
        return None;
    }
    let list = pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let spawned = Command::new("taskset")
        .args(["-c", cpus, "perf", "record", "-q", "-e", "cpu-clock", "-c", PERIOD_NS, "-p", &list, "-o"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(perf) => Some(Recording { perf, file: file.to_path_buf() }),
        Err(e) => {
            eprintln!("    not profiled (perf record: {e}): the kernel's share is left out");
            None
        }
    }
}

impl Recording {
    /// Stops the recording and reads the share of its samples taken in the kernel.
    pub fn kernel_share(mut self) -> Option<f64> {
        // SAFETY: kill(2) on our own child's pid; SIGINT makes perf write its file and exit.
        unsafe { libc::kill(self.perf.id() as libc::pid_t, libc::SIGINT) };
        let _ = self.perf.wait();
        let out = Command::new("perf")
            .args(["report", "-q", "--stdio", "--sort", "dso", "-F", "sample,dso", "-i"])
            .arg(&self.file)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let _ = std::fs::remove_file(&self.file);
        let share = kernel_share(&String::from_utf8_lossy(&out.stdout));
        if share.is_none() {
            eprintln!("    not profiled: perf recorded no sample (is linux-perf installed?)");
        }
        share
    }
}

impl Drop for Recording {
    /// A run that failed stops its recording too (after `kernel_share`, the recorder is gone).
    fn drop(&mut self) {
        let _ = self.perf.kill();
        let _ = self.perf.wait();
    }
}

/// From `perf report --sort dso -F sample,dso` (a sample count and a DSO a line): the share of
/// the samples in the kernel.
fn kernel_share(report: &str) -> Option<f64> {
    let (mut kernel, mut all) = (0u64, 0u64);
    for line in report.lines() {
        let mut words = line.split_whitespace();
        let (Some(Ok(n)), Some(dso)) = (words.next().map(str::parse::<u64>), words.next()) else { continue };
        all += n;
        if dso.starts_with("[kernel") {
            kernel += n;
        }
    }
    (all > 0).then(|| kernel as f64 / all as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_share_counts_the_kernels_samples() {
        let report = "        129194  [kernel.kallsyms]     \n            38  [vdso]\n          3522  cur\n           \
                      233  ld-linux-x86-64.so.2\n\n# a comment\n";
        let share = kernel_share(report).unwrap();
        assert!((share - 129194.0 / 132987.0).abs() < 1e-12, "{share}");
        assert_eq!(kernel_share(""), None);
        assert_eq!(kernel_share("  12  cur\n"), Some(0.0));
    }
}
