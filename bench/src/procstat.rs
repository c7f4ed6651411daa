//! CPU time and memory of a process tree, read from /proc.
//!
//! Kamailio forks its workers, and the workers share memory, so memory is the sum of PSS
//! (proportional set size: each shared page divided among the processes mapping it) over the
//! tree; for a single process PSS and RSS differ only by shared libraries.

use std::collections::HashSet;

/// Clock ticks per second for utime/stime in /proc/PID/stat.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `pid` and all its descendants that are alive now.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse().ok())) {
                parents.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut seen: HashSet<u32> = HashSet::from([pid]);
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for &(p, pp) in &parents {
            if pp == parent && seen.insert(p) {
                out.push(p);
            }
        }
        i += 1;
    }
    out
}

/// Fields of /proc/PID/stat after the command name: index 0 is the state, 1 the ppid,
/// 11 utime, 12 stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User plus system CPU seconds of one process (all its threads).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Some(f) = stat_fields(pid) else { return 0.0 };
    let ticks: u64 =
        f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0) + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    ticks as f64 / ticks_per_second()
}

/// CPU seconds of the whole tree under `pid`.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    tree(pid).into_iter().map(cpu_seconds).sum()
}

/// Memory of a process tree in bytes: (sum of PSS, sum of RSS).
pub fn tree_memory(pid: u32) -> (u64, u64) {
    let mut pss = 0;
    let mut rss = 0;
    for p in tree(pid) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")) else { continue };
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(key), Some(kb)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else { continue };
            match key {
                "Pss:" => pss += kb * 1024,
                "Rss:" => rss += kb * 1024,
                _ => {}
            }
        }
    }
    (pss, rss)
}

/// The machine's logical CPUs (not available_parallelism: the bench pins itself to the load
/// generator's CPUs).
pub fn cpus() -> usize {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo.lines().filter(|l| l.starts_with("processor")).count().max(1)
}

/// A short description of the machine: CPU model, cores, memory, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpus();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_default();
    format!("{model}, {cores} logical CPUs, {:.1} GiB RAM, {os}, Linux {}", mem_kb as f64 / 1048576.0, kernel.trim())
}

/// The 1-minute load average (how busy the shared machine was).
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
