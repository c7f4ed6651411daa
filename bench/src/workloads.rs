//! The five workloads. Each takes a running server and returns what it measured.

use crate::servers::{Server, Target};
use crate::sip::{self, Client, Job};
use crate::sipp::{self, Load};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One rate step of a ladder (or the fixed-rate run).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub offered_per_s: u32,
    pub calls: u32,
    pub successful: u64,
    pub failed: u64,
    pub retransmissions: u64,
    pub achieved_per_s: f64,
    pub elapsed_s: f64,
    pub server_cpu_s: f64,
    pub sipp_cpu_s: f64,
    /// Successful calls per server CPU-second.
    pub per_server_cpu_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// No failed call, no retransmission needed, and at least 95% of the offered rate achieved.
    pub clean: bool,
    /// Datagrams the kernel dropped for a full receive buffer during the step (all sockets).
    pub udp_rcvbuf_errors: u64,
    /// The kernel's share of the server's CPU during the step, where it was profiled (`profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_share: Option<f64>,
    /// Parley's journal syncs during the step, where it syncs (`syncs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_syncs: Option<crate::syncs::SyncTimes>,
    /// Every successful call's response time, shortest first (for the report, not written out).
    #[serde(skip)]
    pub rtt_ms: Vec<f64>,
}

impl Step {
    /// Server CPU-seconds per successful call.
    pub fn cpu_s_per_call(&self) -> f64 {
        self.server_cpu_s / self.successful.max(1) as f64
    }
}

/// The kernel's count of UDP datagrams dropped for a full socket receive buffer.
pub fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Whether a UDP socket is bound to `port` (on any address), from /proc/net/udp: asking the
/// kernel instead of trying to bind the port, which would race with the process taking it.
pub fn udp_port_bound(port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|local| local.ends_with(&suffix))
}

/// Allocates distinct users u<N> from one counter, and writes sipp injection files for them.
pub struct Users {
    pub next: usize,
    pub dir: PathBuf,
}

impl Users {
    pub fn take(&mut self, n: usize) -> std::ops::Range<usize> {
        let r = self.next..self.next + n;
        self.next += n;
        r
    }

    /// A sipp -inf file for the given users (field0 user, field1 its credentials).
    pub fn inf(&self, name: &str, users: impl IntoIterator<Item = usize>) -> anyhow::Result<PathBuf> {
        use std::io::Write;
        let path = self.dir.join(format!("{name}.csv"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
        writeln!(w, "SEQUENTIAL")?;
        for i in users {
            writeln!(w, "u{i};[authentication username=u{i} password=u{i}-password]")?;
        }
        w.flush()?;
        Ok(path)
    }
}

pub struct Ctx<'a> {
    pub scenarios: &'a Path,
    pub sipp_cpus: &'a str,
    pub work: PathBuf,
}

fn step_from(offered: u32, calls: u32, o: sipp::Outcome, server_cpu_s: f64, drops: u64) -> Step {
    let achieved = if o.elapsed_s > 0.0 { o.successful as f64 / o.elapsed_s } else { 0.0 };
    Step {
        offered_per_s: offered,
        calls,
        successful: o.successful,
        failed: o.failed,
        retransmissions: o.retransmissions,
        achieved_per_s: achieved,
        elapsed_s: o.elapsed_s,
        server_cpu_s,
        sipp_cpu_s: o.sipp_cpu_s,
        per_server_cpu_s: if server_cpu_s > 0.0 { o.successful as f64 / server_cpu_s } else { 0.0 },
        p50_ms: o.percentile(50.0),
        p99_ms: o.percentile(99.0),
        clean: o.failed == 0
            && o.exit_code == 0
            && o.successful == calls as u64
            && o.retransmissions == 0
            && achieved >= 0.95 * offered as f64,
        udp_rcvbuf_errors: drops,
        kernel_share: None,
        journal_syncs: None,
        rtt_ms: o.rtt_ms,
    }
}

/// REGISTER with digest auth, each call a distinct user, at `rate` for `secs`, from `local_port`
/// (None: a fresh one).
pub fn register_step(
    ctx: &Ctx,
    server: &dyn Target,
    users: &mut Users,
    rate: u32,
    secs: f64,
    tag: &str,
    local_port: Option<u16>,
) -> anyhow::Result<Step> {
    let calls = ((rate as f64 * secs) as u32).max(1);
    let range = users.take(calls as usize);
    let inf = users.inf(&format!("{tag}-register-{rate}"), range)?;
    let cpu0 = server.cpu_seconds();
    let drops0 = udp_rcvbuf_errors();
    let o = sipp::run(&Load {
        scenario: &ctx.scenarios.join("register.xml"),
        server: server.sip(),
        inf: Some(&inf),
        service: None,
        rate,
        count: calls,
        cpus: ctx.sipp_cpus,
        dir: ctx.work.join(format!("{tag}-register-{rate}")),
        local_port,
    })?;
    let _ = std::fs::remove_file(&inf);
    Ok(step_from(rate, calls, o, server.cpu_seconds() - cpu0, udp_rcvbuf_errors() - drops0))
}

/// The MESSAGE recipient: one registered user whose contact is a sipp UAS answering 200.
pub struct Recipient {
    pub user: String,
    uas: std::process::Child,
    reaped: bool,
}

impl Recipient {
    pub fn start(ctx: &Ctx, server: &dyn Target, users: &mut Users, tag: &str) -> anyhow::Result<Recipient> {
        let i = users.take(1).start;
        let user = format!("u{i}");
        // Register from the port the recipient will listen on, then hand the port to sipp:
        // Parley relays over the registration's flow (its source address), Kamailio to the
        // Contact; both are this address.
        let mut client = Client::new(server.sip())?;
        let port = client.local().port();
        let stats = client.run(
            &mut std::iter::once(Job::new(&user, vec![sip::register(&user)])),
            1,
            Duration::from_secs(10),
            None,
        );
        if stats.done != 1 {
            anyhow::bail!("registering the recipient {user} failed: {:?}", client.first_error);
        }
        drop(client);
        let uas = sipp::start_uas(
            &ctx.scenarios.join("message_uas.xml"),
            port,
            ctx.sipp_cpus,
            &ctx.work.join(format!("{tag}-uas")),
        )?;
        let mut recipient = Recipient { user, uas, reaped: false };
        // Ready when sipp holds the port (the kernel lists a socket on it), or gone if it exited.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !udp_port_bound(port) {
            if Instant::now() > deadline || recipient.uas.try_wait().ok().flatten().is_some() {
                recipient.stop();
                anyhow::bail!("the sipp recipient did not take port {port}; see {}", ctx.work.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(recipient)
    }

    pub fn stop(mut self) -> f64 {
        // SAFETY: our own child.
        unsafe { libc::kill(self.uas.id() as i32, libc::SIGTERM) };
        let cpu = sipp::wait_with_rusage(self.uas.id() as i32, Duration::from_secs(5)).map(|(_, c)| c).unwrap_or(0.0);
        // Reaped by wait4 above: its pid may be reused from now on, so Drop must not signal it.
        self.reaped = true;
        cpu
    }
}

impl Drop for Recipient {
    /// A recipient left running by an error path is killed and reaped.
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.uas.kill();
            let _ = self.uas.wait();
        }
    }
}

/// MESSAGE relay: senders (1,000 users cycled) to the recipient, at `rate` for `secs`.
pub fn message_step(
    ctx: &Ctx,
    server: &dyn Target,
    recipient: &Recipient,
    senders: &Path,
    rate: u32,
    secs: f64,
    tag: &str,
) -> anyhow::Result<Step> {
    let calls = ((rate as f64 * secs) as u32).max(1);
    let cpu0 = server.cpu_seconds();
    let drops0 = udp_rcvbuf_errors();
    let o = sipp::run(&Load {
        scenario: &ctx.scenarios.join("message_uac.xml"),
        server: server.sip(),
        inf: Some(senders),
        service: Some(&recipient.user),
        rate,
        count: calls,
        cpus: ctx.sipp_cpus,
        dir: ctx.work.join(format!("{tag}-message-{rate}")),
        local_port: None,
    })?;
    Ok(step_from(rate, calls, o, server.cpu_seconds() - cpu0, udp_rcvbuf_errors() - drops0))
}

/// Runs a ladder of rates, stopping after the first step that is not clean.
pub fn ladder(rates: &[u32], mut step: impl FnMut(u32) -> anyhow::Result<Step>) -> anyhow::Result<Vec<Step>> {
    let mut out = Vec::new();
    for &r in rates {
        let s = step(r)?;
        eprintln!(
            "    {r:>6}/s offered: {:>8.0}/s achieved, {} failed, {} retrans, {} UDP drops, p99 {:?} ms, server {:.2} CPU-s, sipp {:.2} CPU-s",
            s.achieved_per_s, s.failed, s.retransmissions, s.udp_rcvbuf_errors, s.p99_ms, s.server_cpu_s, s.sipp_cpu_s
        );
        let clean = s.clean;
        out.push(s);
        if !clean {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(out)
}

pub fn max_clean(steps: &[Step]) -> Option<u32> {
    highest_clean(steps).map(|s| s.offered_per_s)
}

/// The clean step at the highest rate.
pub fn highest_clean(steps: &[Step]) -> Option<&Step> {
    steps.iter().filter(|s| s.clean).max_by_key(|s| s.offered_per_s)
}

#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    pub watchers: usize,
    pub subscribe_failed: usize,
    /// Watchers whose NOTIFY with the new document arrived.
    pub notified: usize,
    /// Those NOTIFYs that arrived more than once (retransmitted by the server for want of an
    /// answer: the first send was lost, or answered late).
    pub received_again: usize,
    /// From sending the authenticated PUBLISH to the last watcher's first NOTIFY.
    pub last_notify_ms: Option<f64>,
    pub first_notify_ms: Option<f64>,
    pub server_cpu_s: f64,
    /// Why the first failed SUBSCRIBE failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// `watchers` users subscribe to one presentity; it publishes once; time to the last NOTIFY.
pub fn fanout(server: &Server, users: &mut Users, watchers: usize) -> anyhow::Result<Fanout> {
    let presentity = format!("u{}", users.take(1).start);
    let range = users.take(watchers);
    let mut client = Client::new(server.sip)?;
    let mut jobs = range.map(|i| Job::new(format!("u{i}"), vec![sip::subscribe(&presentity)]));
    let stats = client.run(&mut jobs, 500, Duration::from_secs(300), None);
    // Let the initial NOTIFYs arrive and be answered.
    let want = stats.done;
    client.pump(Duration::from_secs(30), &mut |c| c.notifies.len() >= want);
    std::thread::sleep(Duration::from_millis(300));
    client.pump(Duration::from_millis(200), &mut |_| false);
    client.notifies.clear();
    let marker = format!("bench-{}", std::process::id());
    client.marker = Some(marker.clone());
    let cpu0 = server.cpu_seconds();
    let mut done = Vec::new();
    let pstats = client.run(
        &mut std::iter::once(Job::new(&presentity, vec![sip::publish(&presentity, &marker)])),
        1,
        Duration::from_secs(60),
        Some(&mut done),
    );
    if pstats.done != 1 {
        anyhow::bail!("PUBLISH failed: {:?}", client.first_error);
    }
    let sent = done[0].last_auth_sent.unwrap_or_else(Instant::now);
    // Counted as they arrive: the condition is checked after every datagram.
    client.pump(Duration::from_secs(60), &mut |c| c.marked_ids.len() >= want);
    let server_cpu_s = server.cpu_seconds() - cpu0;
    // Each watcher's first arrival (the notifies are in arrival order).
    let mut first = HashMap::new();
    for n in client.notifies.iter().filter(|n| n.marked) {
        first.entry(&n.id).or_insert(n.at);
    }
    let received_again = client.notifies.iter().filter(|n| n.marked).count() - first.len();
    let marked: Vec<Instant> = first.into_values().collect();
    let ms = |t: &Instant| t.saturating_duration_since(sent).as_secs_f64() * 1000.0;
    Ok(Fanout {
        watchers,
        subscribe_failed: stats.failed,
        received_again,
        notified: marked.len(),
        last_notify_ms: if marked.len() >= watchers { marked.iter().max().map(ms) } else { None },
        first_notify_ms: marked.iter().min().map(ms),
        server_cpu_s,
        first_error: client.first_error.clone(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub users: usize,
    pub failed: usize,
    pub pss_bytes: u64,
    pub rss_bytes: u64,
    pub fill_s: f64,
    /// At the largest size only: PSS once the fill's own transactions have expired (`settle`
    /// after its last answer), what the users hold rather than the fill's traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settled_pss_bytes: Option<u64>,
}

/// Fills a server with users (REGISTER, then SUBSCRIBE to the previous user's presence) up to
/// each size in turn and records its memory at each; with `settle`, at the largest also that long
/// after the fill.
///
/// Right after a fill, a server still holds every transaction of its last 32 s (RFC 3261's Timer
/// J: a completed non-INVITE server transaction keeps its response for retransmitted requests
/// that long over UDP), so that figure grows with the fill's rate, a property of the machine
/// running the bench (2026-12-04: a million users read 1,825 MiB right after a fill at 4,600
/// users/s and 1,565 MiB 35 s later; 1,926 after a fill at 7,800/s).
pub fn memory(
    server: &mut Server,
    sizes: &[usize],
    window: usize,
    settle: Option<Duration>,
) -> anyhow::Result<Vec<Memory>> {
    let mut out = Vec::new();
    let (pss, rss) = server.memory();
    out.push(Memory { users: 0, failed: 0, pss_bytes: pss, rss_bytes: rss, fill_s: 0.0, settled_pss_bytes: None });
    let mut client = Client::new(server.sip)?;
    let mut filled = 0usize;
    let mut failed = 0usize;
    let t0 = Instant::now();
    for &size in sizes {
        let mut jobs = (filled..size).map(|i| {
            let u = format!("u{i}");
            let watched = format!("u{}", i.saturating_sub(1));
            Job::new(&u, vec![sip::register(&u), sip::subscribe(&watched)])
        });
        let stats = client.run(&mut jobs, window, Duration::from_secs(1800), None);
        failed += stats.failed;
        filled = size;
        client.pump(Duration::from_millis(500), &mut |_| false);
        client.notifies.clear();
        if !server.alive() {
            anyhow::bail!("{} exited while filling to {size} users", server.name);
        }
        let (pss, rss) = server.memory();
        eprintln!(
            "    {size:>8} users: PSS {:.0} MiB, RSS {:.0} MiB, {failed} failed, {:.0} s (first error: {:?})",
            pss as f64 / 1048576.0,
            rss as f64 / 1048576.0,
            t0.elapsed().as_secs_f64(),
            client.first_error
        );
        let fill_s = t0.elapsed().as_secs_f64();
        out.push(Memory { users: size, failed, pss_bytes: pss, rss_bytes: rss, fill_s, settled_pss_bytes: None });
        if failed > size / 100 {
            break; // the server is refusing: larger sizes would say nothing more
        }
    }
    if let (Some(settle), Some(largest)) = (settle, out.last_mut().filter(|m| m.users > 0)) {
        // The client keeps answering what the server sends meanwhile (NOTIFY retransmissions).
        client.pump(settle, &mut |_| false);
        if !server.alive() {
            anyhow::bail!("{} exited after the fill, while its transactions expired", server.name);
        }
        let (pss, _) = server.memory();
        let mib = pss as f64 / 1048576.0;
        eprintln!("    {:>8} users, {:.0} s after the fill: PSS {mib:.0} MiB", largest.users, settle.as_secs_f64());
        largest.settled_pss_bytes = Some(pss);
    }
    Ok(out)
}

/// Which part of a job the response time covers.
#[derive(Clone, Copy)]
pub enum Timed {
    /// From the first request to the final 2xx, challenge included.
    Whole,
    /// From sending the request with credentials to its final 2xx.
    AuthenticatedLeg,
}

/// Runs `count` jobs paced at `rate` per second with the bench's own client (microsecond clock;
/// sipp's response times tick in 4 ms steps here) and reports them as a step.
pub fn fixed_rate(
    server: &dyn Target,
    jobs: &mut dyn Iterator<Item = Job>,
    rate: u32,
    count: u32,
    timed: Timed,
) -> anyhow::Result<Step> {
    let mut client = Client::new(server.sip())?;
    let mut done = Vec::with_capacity(count as usize);
    let cpu0 = server.cpu_seconds();
    let drops0 = udp_rcvbuf_errors();
    let me0 = thread_cpu_seconds();
    let t0 = Instant::now();
    let stats = client.run_paced(
        &mut jobs.take(count as usize),
        (rate as usize).max(100),
        Some(rate as f64),
        Duration::from_secs_f64(count as f64 / rate as f64 + 60.0),
        Some(&mut done),
    );
    let elapsed = t0.elapsed().as_secs_f64();
    let server_cpu_s = server.cpu_seconds() - cpu0;
    let mut rtt: Vec<f64> = done
        .iter()
        .filter(|j| j.failed.is_none())
        .filter_map(|j| {
            let from = match timed {
                Timed::Whole => j.started_at?,
                Timed::AuthenticatedLeg => j.last_auth_sent.or(j.started_at)?,
            };
            Some(j.done_at?.saturating_duration_since(from).as_secs_f64() * 1000.0)
        })
        .collect();
    rtt.sort_by(|a, b| a.total_cmp(b));
    let o = sipp::Outcome {
        successful: stats.done as u64,
        failed: stats.failed as u64,
        retransmissions: stats.retransmissions as u64,
        elapsed_s: elapsed,
        sipp_cpu_s: thread_cpu_seconds() - me0,
        rtt_ms: rtt,
        exit_code: if stats.failed == 0 { 0 } else { 1 },
    };
    if let Some(e) = &client.first_error {
        eprintln!("    first error: {e}");
    }
    Ok(step_from(rate, count, o, server_cpu_s, udp_rcvbuf_errors() - drops0))
}

/// CPU seconds of the calling thread (the bench client's own cost).
fn thread_cpu_seconds() -> f64 {
    // SAFETY: getrusage with a valid out-pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6
}
