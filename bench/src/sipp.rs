//! Runs sipp (Debian's 3.6.1) with a bounded count and rate, and reads back what it measured:
//! successful and failed calls, retransmissions, elapsed time (from `-trace_stat`), every
//! response time (from `-trace_rtt`), and sipp's own CPU time (from wait4's rusage).

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Load<'a> {
    pub scenario: &'a Path,
    pub server: std::net::SocketAddr,
    pub inf: Option<&'a Path>,
    pub service: Option<&'a str>,
    pub rate: u32,
    pub count: u32,
    /// CPUs sipp may run on (taskset list).
    pub cpus: &'a str,
    pub dir: PathBuf,
    /// sipp's local port; a fresh one when None. A client that keeps its address across runs
    /// keeps its Contact, so re-registering refreshes its bindings instead of adding new ones.
    pub local_port: Option<u16>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub successful: u64,
    pub failed: u64,
    pub retransmissions: u64,
    pub elapsed_s: f64,
    pub sipp_cpu_s: f64,
    /// Response times in milliseconds (rtd 1), sorted.
    #[serde(skip)]
    pub rtt_ms: Vec<f64>,
    pub exit_code: i32,
}

impl Outcome {
    pub fn percentile(&self, p: f64) -> Option<f64> {
        percentile(&self.rtt_ms, p)
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Socket buffer for sipp (-buff_size), bounded by net.core.[rw]mem_max which the bench raises.
pub const BUFF: &str = "33554432";

pub fn run(load: &Load) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&load.dir)?;
    let port = load.local_port.unwrap_or_else(crate::free_udp_port);
    let limit_s = load.count / load.rate.max(1) + 30;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", load.cpus, "sipp"])
        .arg(load.server.to_string())
        .arg("-sf")
        .arg(load.scenario)
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-t", "u1"])
        .args(["-r", &load.rate.to_string(), "-rp", "1000", "-m", &load.count.to_string()])
        .args(["-l", &(load.rate.max(10) * 4).to_string()])
        .args(["-buff_size", BUFF, "-max_recv_loops", "100000", "-max_sched_loops", "100000"])
        .args(["-nostdin", "-trace_stat", "-stf", "stat.csv", "-fd", "1"])
        .args(["-trace_rtt", "-rtt_freq", "100", "-trace_err", "-error_file", "errors.log"])
        .args(["-default_behaviors", "-bye", "-recv_timeout", "10000", "-timeout", &format!("{limit_s}s")]);
    if let Some(inf) = load.inf {
        cmd.arg("-inf").arg(inf);
    }
    if let Some(s) = load.service {
        cmd.args(["-s", s]);
    }
    cmd.current_dir(&load.dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(load.dir.join("stdout.txt"))?)
        .stderr(std::fs::File::create(load.dir.join("stderr.txt"))?);
    let child = cmd.spawn().context("starting sipp (taskset, sip-tester)")?;
    let (exit_code, cpu) = wait_with_rusage(child.id() as i32, Duration::from_secs(limit_s as u64 + 15))?;
    let mut out = read_stats(&load.dir.join("stat.csv"))
        .with_context(|| format!("sipp wrote no statistics; see {}", load.dir.display()))?;
    out.sipp_cpu_s = cpu;
    out.exit_code = exit_code;
    out.rtt_ms = read_rtt(&load.dir);
    Ok(out)
}

/// Waits for a child, killing it after `limit`; returns its exit code and CPU seconds.
pub fn wait_with_rusage(pid: i32, limit: Duration) -> anyhow::Result<(i32, f64)> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with valid out-pointers.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let cpu = ru.ru_utime.tv_sec as f64
                + ru.ru_utime.tv_usec as f64 / 1e6
                + ru.ru_stime.tv_sec as f64
                + ru.ru_stime.tv_usec as f64 / 1e6;
            let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
            return Ok((code, cpu));
        }
        if r < 0 {
            bail!("wait4 failed: {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_stats(path: &Path) -> anyhow::Result<Outcome> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().context("empty stat file")?.split(';').collect();
    let last: Vec<&str> = lines.next_back().context("no stat rows")?.split(';').collect();
    let field =
        |name: &str| -> Option<&str> { header.iter().position(|h| *h == name).and_then(|i| last.get(i).copied()) };
    let num = |name: &str| field(name).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
    // From the start and current times' epoch seconds: Debian's sipp 3.6 writes ElapsedTime(C)
    // in whole seconds, so a 100-call step that took 0.999 s read as 0 s (and 0 calls a second).
    let epoch = |name: &str| field(name).and_then(|v| v.split('\t').nth(2)).and_then(|v| v.trim().parse::<f64>().ok());
    let elapsed_s = match (epoch("StartTime"), epoch("CurrentTime")) {
        (Some(start), Some(now)) if now > start => now - start,
        _ => field("ElapsedTime(C)").map(parse_elapsed).unwrap_or(0.0),
    };
    Ok(Outcome {
        successful: num("SuccessfulCall(C)"),
        failed: num("FailedCall(C)"),
        retransmissions: num("Retransmissions(C)"),
        elapsed_s,
        ..Outcome::default()
    })
}

/// sipp's elapsed time: `HH:MM:SS:uuuuuu` (newer) or `HH:MM:SS:mmm`.
fn parse_elapsed(v: &str) -> f64 {
    let parts: Vec<&str> = v.trim().split(':').collect();
    if parts.len() < 3 {
        return 0.0;
    }
    let h: f64 = parts[0].parse().unwrap_or(0.0);
    let m: f64 = parts[1].parse().unwrap_or(0.0);
    let s: f64 = parts[2].parse().unwrap_or(0.0);
    let frac = parts.get(3).map(|f| f.parse::<f64>().unwrap_or(0.0) / 10f64.powi(f.len() as i32)).unwrap_or(0.0);
    h * 3600.0 + m * 60.0 + s + frac
}

/// Response times (ms) of rtd 1 from `*_rtt.csv`: lines `date_ms;response_time_ms;rtd_no`.
fn read_rtt(dir: &Path) -> Vec<f64> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.ends_with("_rtt.csv") {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap_or_default().lines() {
            let f: Vec<&str> = line.split(';').collect();
            if f.len() >= 3
                && f[2].trim() == "1"
                && let Ok(ms) = f[1].trim().parse::<f64>()
            {
                out.push(ms);
            }
        }
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

/// A sipp UAS (answers what the scenario says, for as long as it runs): stopped with kill.
pub fn start_uas(scenario: &Path, port: u16, cpus: &str, dir: &Path) -> anyhow::Result<std::process::Child> {
    std::fs::create_dir_all(dir)?;
    Command::new("taskset")
        .args(["-c", cpus, "sipp", "-sf"])
        .arg(scenario)
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-t", "u1", "-buff_size", BUFF])
        .args(["-max_recv_loops", "100000", "-nostdin", "-trace_err", "-error_file", "errors.log"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.txt"))?)
        .stderr(std::fs::File::create(dir.join("stderr.txt"))?)
        .spawn()
        .context("starting the sipp recipient")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_under_a_second_has_its_elapsed_time_from_the_epoch_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat.csv");
        // Debian's sipp 3.6: dates with tabs, elapsed time in whole seconds.
        let row = |current: &str, ok: u32| {
            format!(
                "2026-12-05\t02:23:10.247000\t1796437390.247000;2026-12-05\t02:23:11.246131\t1796437391.246131;\
                 2026-12-05\t{current}\t1796437391.246205;00:00:00;00:00:00;{ok};0;0\n"
            )
        };
        let header = "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);SuccessfulCall(C);FailedCall(C);Retransmissions(C)\n";
        std::fs::write(&path, format!("{header}{}{}", row("02:23:10.300000", 0), row("02:23:11.246205", 100))).unwrap();
        let o = read_stats(&path).unwrap();
        assert_eq!(o.successful, 100);
        assert!((o.elapsed_s - 0.999205).abs() < 1e-6, "{}", o.elapsed_s);
    }

    #[test]
    fn elapsed_and_percentiles() {
        assert!((parse_elapsed("00:01:02:500000") - 62.5).abs() < 1e-9);
        assert!((parse_elapsed("00:00:03:250") - 3.25).abs() < 1e-9);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
