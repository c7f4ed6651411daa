//! `parley-bench`: Parley's Home Server side by side with Kamailio, in one run.
//!
//! ```text
//! parley-bench [--smoke] [--parley PATH] [--baseline PATH] [--frontend-only] [--out DIR] [--markdown FILE]
//!              [--no-kamailio] [--server-cpus LIST] [--sipp-cpus LIST] [--memory-sizes 10000,100000,1000000]
//! ```
//!
//! Starts each server pinned to the server CPUs (taskset), drives it with sipp and with the
//! bench's own UDP client pinned to the other CPUs, samples /proc for CPU and memory, and writes
//! `results/latest.json`, the table in BENCHMARKS.md and `results/throughput.svg`.
//! Also a Front-End row (a Front-End or proxy in front of two Home Servers or registrars, see
//! `cluster.rs`), and with `--baseline` the Home Server's fixed-rate rows for a second build.

mod cluster;
mod disk;
mod procstat;
mod profile;
mod report;
mod servers;
mod sip;
mod sipp;
mod soak;
mod syncs;
mod workloads;

use anyhow::{Context, bail};
use servers::{Kind, Server, Settings};
use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use workloads::{Ctx, Users};

pub fn free_udp_port() -> u16 {
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = s.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind")
}

/// What a run does; the smoke plan is the same shape, tiny.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub smoke: bool,
    pub register_rates: Vec<u32>,
    pub message_rates: Vec<u32>,
    pub step_secs: f64,
    pub fixed_rate: u32,
    pub fixed_secs: f64,
    pub senders: usize,
    /// The Front-End row's MESSAGE ladder (its fixed-rate run is at `fixed_rate`).
    pub frontend_rates: Vec<u32>,
    pub fanout: Vec<usize>,
    pub memory_sizes: Vec<usize>,
    pub memory_sizes_kamailio: Vec<usize>,
    /// Sizes the table shows; one not measured is extrapolated linearly from the two largest
    /// measured sizes, and says so.
    pub memory_report: Vec<usize>,
    /// How long after the fill the largest size is measured again (`workloads::memory`).
    pub memory_settle_secs: f64,
    pub cold_start_runs: usize,
    pub cold_start_users: usize,
    /// Extra rounds of the fixed-rate rows, Parley and Kamailio alternated on fresh servers after
    /// the main runs: the fixed-rate figures are medians over all rounds, with the spread of the
    /// per-round ratio, so one busy moment cannot flip a verdict.
    pub rounds: usize,
    /// The load phase again with the servers on every CPU (the load generator then shares them).
    pub all_cpus: bool,
    /// Small writes synced one at a time, paced at the fixed rate, to time the disk's sync.
    pub disk_syncs: usize,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            smoke: false,
            // Up to where one CPU fails (each ladder stops at its first step that is not clean):
            // a ladder whose top step is clean gives only a lower bound.
            register_rates: vec![
                1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 15000, 20000, 25000, 30000, 40000,
            ],
            message_rates: vec![1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 15000, 20000, 25000, 30000],
            step_secs: 4.0,
            fixed_rate: 1000,
            // Five runs of 6 s (the main run and four interleaved rounds) rather than three of
            // 10 s, in about the same time: the machine's drift is between runs more than within
            // one, and a median of five pairs wanders less than one of three.
            fixed_secs: 6.0,
            senders: 1000,
            frontend_rates: vec![1000, 2000, 3000, 4000, 5000, 6000, 8000],
            fanout: vec![1000, 10000],
            // Filling over SIP runs at about 3,700 users/s (REGISTER and SUBSCRIBE, both
            // challenged): Parley's million takes about 5 minutes. Kamailio's would not fit its
            // 2 GB of shared memory: it is extrapolated from its two sizes (the row says so).
            memory_sizes: vec![10_000, 100_000, 1_000_000],
            memory_sizes_kamailio: vec![10_000, 100_000],
            memory_report: vec![10_000, 100_000, 1_000_000],
            // Timer J (32 s, the longest a completed transaction is held) and a margin.
            memory_settle_secs: 35.0,
            cold_start_runs: 9,
            cold_start_users: 10_000,
            rounds: 4,
            all_cpus: true,
            disk_syncs: 2000,
        }
    }

    fn smoke() -> Plan {
        Plan {
            smoke: true,
            register_rates: vec![100],
            message_rates: vec![100],
            // Long enough that one stall of the machine (a sync of 100 ms on a busy disk) does
            // not make the only step unclean: at 1 s it was a tenth of the step.
            step_secs: 3.0,
            fixed_rate: 100,
            fixed_secs: 1.0,
            senders: 20,
            frontend_rates: vec![100],
            fanout: vec![20],
            memory_sizes: vec![50, 100],
            memory_sizes_kamailio: vec![50, 100],
            memory_report: vec![50, 100, 200],
            memory_settle_secs: 0.5,
            cold_start_runs: 1,
            cold_start_users: 100,
            rounds: 1,
            all_cpus: true,
            disk_syncs: 50,
        }
    }

    /// How long after its fill a server's largest size is measured again: Parley's, whose
    /// largest size is the million of the memory target (Kamailio's is not).
    fn memory_settle(&self, kind: Kind) -> Option<Duration> {
        (kind != Kind::Kamailio).then(|| Duration::from_secs_f64(self.memory_settle_secs))
    }

    /// Calls in one fixed-rate run.
    fn fixed_count(&self) -> u32 {
        (self.fixed_rate as f64 * self.fixed_secs) as u32
    }

    /// Users one throughput phase takes from its counter at most.
    fn phase_users(&self) -> usize {
        let ladder = |rates: &[u32]| rates.iter().map(|r| (*r as f64 * self.step_secs) as usize).sum::<usize>();
        ladder(&self.register_rates)
            + self.fixed_count() as usize
            + self.senders
            + 4
            + self.fanout.iter().map(|n| n + 1).sum::<usize>()
    }
}

struct Args {
    plan: Plan,
    parley: PathBuf,
    baseline: Option<PathBuf>,
    /// Only the Front-End row (Parley's and Kamailio's), e.g. to look at it at other rates.
    frontend_only: bool,
    kamailio_proxy_stateful: bool,
    out: PathBuf,
    markdown: Option<PathBuf>,
    kamailio: Option<bool>,
    server_cpus: String,
    sipp_cpus: String,
    /// `--soak MINUTES`: only the soak, at these REGISTER and MESSAGE rates.
    soak: Option<(f64, u32, u32)>,
    /// `--ab ROUNDS`: only the fixed-rate rows of Parley and the baseline, alternated.
    ab: Option<usize>,
    /// `--memory-only`: only the memory fill of Parley (and Kamailio, up to the sizes its shared
    /// memory holds), at `--memory-sizes`.
    memory_only: bool,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ has a parent").to_path_buf()
}

fn parse_args() -> anyhow::Result<Args> {
    let root = repo_root();
    let mut args = std::env::args().skip(1);
    let mut smoke = false;
    let mut parley = root.join("target/release/parley-server");
    let mut baseline = None;
    let mut frontend_only = false;
    let mut kamailio_proxy_stateful = false;
    let mut out: Option<PathBuf> = None;
    let mut markdown = None;
    let mut markdown_set = false;
    let mut kamailio = None;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut server_cpus = "0".to_string();
    let mut sipp_cpus = if cpus > 1 { format!("1-{}", cpus - 1) } else { "0".into() };
    let mut memory_sizes: Option<Vec<usize>> = None;
    let mut soak: Option<f64> = None;
    let mut ab: Option<usize> = None;
    let (mut soak_register, mut soak_message) = (None, None);
    let mut memory_only = false;
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--smoke" => smoke = true,
            "--parley" => parley = PathBuf::from(value()?),
            "--baseline" => baseline = Some(PathBuf::from(value()?)),
            "--frontend-only" => frontend_only = true,
            "--kamailio-proxy" => {
                kamailio_proxy_stateful = match value()?.as_str() {
                    "stateless" => false,
                    "stateful" => true,
                    other => bail!("--kamailio-proxy takes stateless or stateful, not {other:?}"),
                }
            }
            "--out" => out = Some(PathBuf::from(value()?)),
            "--markdown" => {
                markdown = Some(PathBuf::from(value()?));
                markdown_set = true
            }
            "--no-markdown" => markdown_set = true,
            "--no-kamailio" => kamailio = Some(false),
            "--kamailio" => kamailio = Some(true),
            "--server-cpus" => server_cpus = value()?,
            "--sipp-cpus" => sipp_cpus = value()?,
            "--ab" => ab = Some(value()?.parse().context("--ab takes a number of rounds")?),
            "--soak" => soak = Some(value()?.parse().context("--soak takes minutes")?),
            "--soak-register-rate" => soak_register = Some(value()?.parse().context("a rate per second")?),
            "--soak-message-rate" => soak_message = Some(value()?.parse().context("a rate per second")?),
            "--memory-only" => memory_only = true,
            "--memory-sizes" => {
                memory_sizes = Some(value()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?)
            }
            "-h" | "--help" => {
                println!(
                    "parley-bench [--smoke] [--parley PATH] [--baseline PATH] [--frontend-only] \
                     [--kamailio-proxy stateless|stateful] [--out DIR] \
                     [--markdown FILE | --no-markdown] [--kamailio | --no-kamailio] [--server-cpus LIST] \
                     [--sipp-cpus LIST] [--memory-sizes A,B,C] [--memory-only] \
                     [--soak MINUTES [--soak-register-rate N] [--soak-message-rate N]] [--ab ROUNDS]\n\n\
                     --ab ROUNDS  only the fixed-rate REGISTER and MESSAGE rows of Parley and the --baseline \
                     build, alternated on fresh servers for ROUNDS rounds; medians in ab.json\n\
                     --soak MINUTES  only a soak of the Home Server: REGISTER and MESSAGE rounds for that long \
                     (rates default to 70% of Parley's highest clean steps in results/latest.json); fails on any \
                     failed call or \
                     on memory growth over the second half; writes soak.json\n\
                     --baseline PATH  also measure the Home Server's fixed-rate REGISTER and MESSAGE (and cold \
                     start) with this other parley-server build, in a \"Parley (baseline)\" column\n\
                     --memory-only  only the memory fill at --memory-sizes (Kamailio only up to 100,000 users, \
                     what its 2 GB of shared memory holds); writes memory.json, no BENCHMARKS.md\n\
                     --frontend-only  only the Front-End row; like --smoke, writes to a temp dir and no BENCHMARKS.md \
                     unless --out/--markdown say otherwise\n\
                     --kamailio-proxy  the Front-End row's Kamailio proxy: stateless forward() (default) or stateful \
                     t_relay()"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    let mut plan = if smoke { Plan::smoke() } else { Plan::full() };
    if let Some(m) = memory_sizes {
        plan.memory_sizes_kamailio = m.clone();
        for &n in &m {
            if !plan.memory_report.contains(&n) {
                plan.memory_report.push(n);
            }
        }
        plan.memory_report.sort();
        plan.memory_sizes = m;
    }
    // A smoke or partial run never overwrites the committed results.
    let out = out.unwrap_or_else(|| {
        if smoke {
            std::env::temp_dir().join("parley-bench-smoke")
        } else if frontend_only {
            std::env::temp_dir().join("parley-bench-frontend")
        } else {
            root.join("bench/results")
        }
    });
    if !markdown_set && !smoke && !frontend_only && !memory_only {
        markdown = Some(root.join("BENCHMARKS.md"));
    }
    Ok(Args {
        plan,
        parley,
        baseline,
        frontend_only,
        kamailio_proxy_stateful,
        out,
        markdown,
        kamailio,
        server_cpus,
        sipp_cpus,
        soak: soak.map(|m| {
            let (register, message) = soak::default_rates(&root.join("bench/results"), 3_500);
            (m, soak_register.unwrap_or(register), soak_message.unwrap_or(message))
        }),
        ab,
        memory_only,
    })
}

fn kamailio_installed() -> bool {
    std::process::Command::new("sh")
        .args(["-c", "command -v kamailio && test -f /usr/lib/x86_64-linux-gnu/kamailio/modules/presence.so"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("parley-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let started = Instant::now();
    let root = repo_root();
    if !args.parley.exists() {
        bail!("{} does not exist: build it first (cargo build --release -p parley-server)", args.parley.display());
    }
    if let Some(b) = &args.baseline
        && !b.exists()
    {
        bail!("the baseline {} does not exist", b.display());
    }
    // The servers run in directories of their own: relative paths would not find the binaries.
    let mut args = args;
    args.parley = std::fs::canonicalize(&args.parley)?;
    args.baseline = args.baseline.as_deref().map(std::fs::canonicalize).transpose()?;
    let with_kamailio = match args.kamailio {
        Some(true) => {
            if !kamailio_installed() {
                bail!("kamailio (with kamailio-presence-modules) is not installed: run bench/run.sh");
            }
            true
        }
        Some(false) => false,
        None => kamailio_installed() || !args.plan.smoke,
    };
    if with_kamailio && !kamailio_installed() {
        bail!("kamailio (with kamailio-presence-modules) is not installed: run bench/run.sh");
    }
    pin_self(&args.sipp_cpus);
    let work = std::env::temp_dir().join(format!("parley-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _cleanup = RemoveOnDrop(work.clone());
    let settings = Settings {
        parley_bin: args.parley.clone(),
        baseline_bin: args.baseline.clone(),
        kamailio_cfg: root.join("bench/kamailio/kamailio.cfg"),
        cpus: args.server_cpus.clone(),
        kamailio_children: 2 * cpu_count(&args.server_cpus),
        kamailio_shm_mb: 2048,
        kamailio_proxy_stateful: args.kamailio_proxy_stateful,
    };
    let scenarios = root.join("bench/scenarios");
    let ctx = Ctx { scenarios: &scenarios, sipp_cpus: &args.sipp_cpus, work: work.clone() };
    if let Some((minutes, register, message)) = args.soak {
        return soak::run(&ctx, &settings, minutes, register, message, &args.out);
    }
    if let Some(rounds) = args.ab {
        if args.baseline.is_none() {
            bail!("--ab compares with --baseline: give one (BASELINE=<rev> make bench-ab)");
        }
        let users = work.join("users-ab.toml");
        servers::write_users(&users, args.plan.phase_users())?;
        return ab(rounds, &args.plan, &settings, &ctx, &users, &args.out);
    }
    if args.memory_only {
        return memory_only(&args, &settings, &ctx, with_kamailio);
    }
    let plan = &args.plan;
    eprintln!(
        "parley-bench: {} run; servers on CPUs {}, sipp and the bench client on CPUs {}; work in {}",
        if plan.smoke { "smoke" } else { "full" },
        args.server_cpus,
        args.sipp_cpus,
        work.display()
    );

    // Users files for Parley (Kamailio derives the same passwords from the user name).
    let phase_users = plan.phase_users();
    let users_phase = work.join("users-phase.toml");
    servers::write_users(&users_phase, phase_users)?;
    let users_cold = work.join("users-cold.toml");
    servers::write_users(&users_cold, plan.cold_start_users)?;
    let mem_max = plan.memory_sizes.iter().chain(&plan.memory_sizes_kamailio).copied().max().unwrap_or(0);
    let users_mem = work.join("users-memory.toml");
    servers::write_users(&users_mem, mem_max)?;
    // The Front-End row: senders u0, u2, ... (home-1), the recipient u1 (home-2).
    let users_fe = work.join("users-frontend.toml");
    servers::write_users_homed(&users_fe, 2 * plan.senders + 2, &cluster::HOMES)?;

    let load_start = procstat::loadavg();
    let disk_sync = disk::measure(&work, plan.disk_syncs, Duration::from_secs(1) / plan.fixed_rate)
        .map_err(|e| eprintln!("parley-bench: the disk's sync not measured: {e:#}"))
        .ok();
    if let Some(d) = &disk_sync {
        eprintln!("disk: {d:?}");
    }
    let mut results: BTreeMap<String, report::ServerResults> = BTreeMap::new();
    let mut kinds = vec![Kind::Parley];
    if args.baseline.is_some() && !args.frontend_only {
        kinds.push(Kind::ParleyBaseline);
    }
    if with_kamailio {
        kinds.push(Kind::Kamailio);
    }
    if !args.frontend_only {
        kinds.extend([Kind::ParleyTls, Kind::ParleySyncAtCheckpoint]);
    }
    let mut cold = if args.frontend_only {
        BTreeMap::new()
    } else {
        let timed: Vec<Kind> = kinds.iter().copied().filter(|k| *k != Kind::ParleySyncAtCheckpoint).collect();
        cold_starts(&timed, plan.cold_start_runs, &settings, &ctx, &users_cold)?
    };
    for kind in kinds {
        let mut r = if args.frontend_only {
            report::ServerResults::default()
        } else {
            eprintln!("== {}", kind.key());
            bench_server(kind, plan, &settings, &ctx, &users_phase, &users_mem)
                .with_context(|| format!("benchmarking {}", kind.key()))?
        };
        if matches!(kind, Kind::Parley | Kind::Kamailio) {
            eprintln!("== {} behind a Front-End", kind.key());
            r.frontend = Some(
                bench_frontend(kind, plan, &settings, &ctx, &root, &users_fe)
                    .with_context(|| format!("benchmarking {} behind a Front-End", kind.key()))?,
            );
        }
        if let Some(runs) = cold.remove(kind.key()) {
            let mut sorted = runs.clone();
            sorted.sort_by(f64::total_cmp);
            r.cold_start_ms = sipp::percentile(&sorted, 50.0);
            r.cold_start_runs_ms = runs;
        }
        results.insert(kind.key().to_string(), r);
    }
    if with_kamailio && !args.frontend_only && plan.rounds > 0 {
        eprintln!("== {} interleaved rounds of the fixed-rate rows and the ladders' highest clean steps", plan.rounds);
        let kinds = [Kind::Parley, Kind::Kamailio, Kind::ParleySyncAtCheckpoint];
        let tops: BTreeMap<String, (u32, u32)> = results
            .iter()
            .filter_map(|(key, r)| {
                let top = workloads::max_clean(&r.register_ladder).zip(workloads::max_clean(&r.message_ladder))?;
                Some((key.clone(), top))
            })
            .collect();
        for (key, rounds) in interleaved(&kinds, plan.rounds, plan, &settings, &ctx, &users_phase, &tops)? {
            let r = results.get_mut(key).expect("benched above");
            for round in rounds {
                r.rounds.push(round.fixed);
                r.top_rounds.extend(round.top);
            }
        }
    }
    if with_kamailio && plan.rounds > 0 {
        eprintln!("== {} interleaved rounds of the Front-End row's fixed-rate run", plan.rounds);
        for (key, runs) in frontend_rounds(plan.rounds, plan, &settings, &ctx, &root, &users_fe)? {
            let fe = results.get_mut(key).and_then(|r| r.frontend.as_mut()).expect("benched above");
            fe.rounds = runs;
        }
    }
    let run = report::Run {
        date: report::now_utc(),
        machine: procstat::machine(),
        kamailio_version: if with_kamailio { report::kamailio_version() } else { None },
        sipp_version: report::sipp_version(),
        server_cpus: args.server_cpus.clone(),
        sipp_cpus: args.sipp_cpus.clone(),
        kamailio_children: settings.kamailio_children,
        kamailio_shm_mb: settings.kamailio_shm_mb,
        loadavg_start: load_start,
        loadavg_end: procstat::loadavg(),
        duration_s: started.elapsed().as_secs_f64(),
        plan: plan.clone(),
        figures: report::figures(&results, plan),
        disk_sync,
        servers: results,
    };
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("latest.json");
    std::fs::write(&json, serde_json::to_string_pretty(&run)? + "\n")?;
    let svg = args.out.join("throughput.svg");
    std::fs::write(&svg, report::chart(&run))?;
    if let Some(md) = &args.markdown {
        std::fs::write(md, report::markdown(&run, &root))?;
        eprintln!("parley-bench: wrote {}", md.display());
    }
    eprintln!("parley-bench: wrote {} and {} in {:.0} s", json.display(), svg.display(), run.duration_s);
    Ok(())
}

/// Kamailio's fill stops here: a million would not fit its 2 GB of shared memory.
const KAMAILIO_MEMORY_MAX: usize = 100_000;

/// `--memory-only`: each server filled to every size in turn (REGISTER, then SUBSCRIBE to the
/// previous user), its PSS at each; `memory.json`, and the bytes per user between sizes.
fn memory_only(args: &Args, settings: &Settings, ctx: &Ctx, with_kamailio: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let sizes = &args.plan.memory_sizes;
    let users = ctx.work.join("users-memory.toml");
    servers::write_users(&users, sizes.iter().copied().max().unwrap_or(0))?;
    let mut kinds = vec![(Kind::Parley, sizes.clone())];
    if with_kamailio {
        kinds.push((Kind::Kamailio, sizes.iter().copied().filter(|&n| n <= KAMAILIO_MEMORY_MAX).collect()));
    }
    let mut out = BTreeMap::new();
    for (kind, sizes) in kinds {
        eprintln!("== {} memory: {sizes:?} users", kind.key());
        let mut server = Server::start(kind, settings, &ctx.work.join(format!("{}-memory", kind.key())), &users)?;
        let filled = workloads::memory(&mut server, &sizes, 1000, args.plan.memory_settle(kind))?;
        server.stop();
        for pair in filled.windows(2).filter(|p| p[0].users > 0) {
            let per_user =
                (pair[1].pss_bytes as f64 - pair[0].pss_bytes as f64) / (pair[1].users - pair[0].users) as f64;
            eprintln!(
                "  {} from {} to {} users: {per_user:.0} bytes per user",
                kind.key(),
                pair[0].users,
                pair[1].users
            );
        }
        out.insert(kind.key().to_string(), filled);
    }
    let run = serde_json::json!({
        "date": report::now_utc(),
        "machine": procstat::machine(),
        "loadavg_end": procstat::loadavg(),
        "duration_s": started.elapsed().as_secs_f64(),
        "servers": out,
    });
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("memory.json");
    std::fs::write(&json, serde_json::to_string_pretty(&run)? + "\n")?;
    eprintln!("parley-bench: wrote {} in {:.0} s", json.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// The run's scratch directory, removed however the run ends (the servers in it are stopped
/// first: a `Server` kills its process group when dropped).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if std::env::var_os("PARLEY_BENCH_KEEP").is_some() {
            eprintln!(
                "parley-bench: PARLEY_BENCH_KEEP is set: {} kept (servers' logs, sipp's files)",
                self.0.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Pins the bench (its UDP client) to the load generator's CPUs, away from the servers'.
fn pin_self(list: &str) {
    // SAFETY: a zeroed cpu_set_t filled with CPU_SET, passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for part in list.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) else { continue };
            for c in a..=b {
                libc::CPU_SET(c, &mut set);
            }
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A pause after a ladder that ended in overload, so retransmissions and timers die down.
fn settle(ladder: &[workloads::Step]) {
    if ladder.last().is_some_and(|s| !s.clean) {
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.trim().parse::<usize>().unwrap_or(0).saturating_sub(a.trim().parse().unwrap_or(0)) + 1,
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

/// The fixed-rate rows on a fresh server: REGISTER (the whole exchange timed), then MESSAGE to a
/// registered recipient (the authenticated leg timed). Returns them with the senders' sipp file
/// and the recipient, for the ladders that follow.
#[allow(clippy::type_complexity)]
fn fixed_rows(
    server: &Server,
    users: &mut Users,
    plan: &Plan,
    ctx: &Ctx,
    key: &str,
) -> anyhow::Result<(workloads::Step, workloads::Step, PathBuf, workloads::Recipient)> {
    let count = plan.fixed_count();
    let print = |what: &str, f: &workloads::Step| {
        eprintln!(
            "  {what} at {}/s: p50 {:?} ms, p99 {:?} ms, {:.3} CPU-s per 1,000{}{}, {} failed",
            plan.fixed_rate,
            f.p50_ms,
            f.p99_ms,
            1000.0 * f.cpu_s_per_call(),
            f.kernel_share.map(|k| format!(" ({:.0}% in the kernel)", 100.0 * k)).unwrap_or_default(),
            f.journal_syncs
                .as_ref()
                .map(|s| format!(", {} journal syncs (99% within {:?} ms)", s.count(), s.within_ms(0.99)))
                .unwrap_or_default(),
            f.failed
        )
    };
    let range = users.take(count as usize);
    let mut jobs = range.map(|i| sip::Job::new(format!("u{i}"), vec![sip::register(&format!("u{i}"))]));
    // Read outside the run's CPU and profile: the journal's syncs so far.
    let syncs_before = server.journal_syncs();
    // Profiled: how much of a registration's CPU is the kernel's (`what_the_profile_shows`).
    let recording = profile::start(&server.pids(), ctx.sipp_cpus, &ctx.work.join(format!("{key}-register.perf")));
    let mut register = workloads::fixed_rate(server, &mut jobs, plan.fixed_rate, count, workloads::Timed::Whole)?;
    register.kernel_share = recording.and_then(profile::Recording::kernel_share);
    register.journal_syncs = server
        .journal_syncs()
        .zip(syncs_before)
        .map(|(after, before)| after.since(&before))
        .filter(|syncs| syncs.count() > 0);
    print("REGISTER", &register);
    let senders = users.take(plan.senders);
    let senders_inf = users.inf(&format!("{key}-senders"), senders.clone())?;
    let recipient = workloads::Recipient::start(ctx, server, users, key)?;
    let to = recipient.user.clone();
    let mut jobs = message_jobs(&to, senders);
    let message = workloads::fixed_rate(server, &mut jobs, plan.fixed_rate, count, workloads::Timed::AuthenticatedLeg)?;
    print("MESSAGE", &message);
    Ok((register, message, senders_inf, recipient))
}

/// The fixed-rate MESSAGE run's requests: the senders in turn, each sending `to` a numbered message.
fn message_jobs<'a>(
    to: &'a str,
    senders: impl Iterator<Item = usize> + Clone + 'a,
) -> impl Iterator<Item = sip::Job> + 'a {
    senders.cycle().enumerate().map(move |(n, i)| {
        sip::Job::new(
            format!("u{i}"),
            vec![sip::message(to, &format!("Hello {to}, this is u{i}: message {n} of the benchmark."))],
        )
    })
}

/// Cold starts (process start to the first answered OPTIONS) of several servers, in turn, the
/// order rotated every run, so that a moment when the machine is slower (other work, or memory
/// the host must back again after a large run freed it) touches them alike. Times in ms, in run
/// order (the n-th of each server were measured side by side).
fn cold_starts(
    kinds: &[Kind],
    runs: usize,
    settings: &Settings,
    ctx: &Ctx,
    users: &Path,
) -> anyhow::Result<BTreeMap<&'static str, Vec<f64>>> {
    eprintln!("== cold starts, {runs} of each, interleaved");
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in 0..runs {
        let mut order = kinds.to_vec();
        order.rotate_left(run % kinds.len().max(1));
        for kind in order {
            let key = kind.key();
            let server = Server::start(kind, settings, &ctx.work.join(format!("{key}-cold-{run}")), users)
                .with_context(|| format!("cold start of {key}"))?;
            times.entry(key).or_default().push(server.ready_after.as_secs_f64() * 1000.0);
            server.stop();
        }
    }
    for (key, t) in &times {
        eprintln!("  {key}: {t:.1?} ms");
    }
    Ok(times)
}

/// One server's share of an interleaved round.
struct Round {
    /// The fixed-rate REGISTER and MESSAGE rows.
    fixed: (workloads::Step, workloads::Step),
    /// Then the REGISTER and MESSAGE steps at the rates of its ladders' highest clean steps.
    top: Option<(workloads::Step, workloads::Step)>,
}

/// The fixed-rate rows of several servers, in turn on fresh servers for `rounds` rounds (the order
/// rotated every round), so that a machine that speeds up or slows down touches them alike; for
/// the servers in `tops`, then a REGISTER and a MESSAGE step at those rates (their ladders'
/// highest clean steps), whose CPU a single ladder each cannot compare fairly.
fn interleaved(
    kinds: &[Kind],
    rounds: usize,
    plan: &Plan,
    settings: &Settings,
    ctx: &Ctx,
    users: &Path,
    tops: &BTreeMap<String, (u32, u32)>,
) -> anyhow::Result<BTreeMap<&'static str, Vec<Round>>> {
    let mut rows: BTreeMap<&str, Vec<Round>> = BTreeMap::new();
    for round in 0..rounds {
        let mut order = kinds.to_vec();
        order.rotate_left(round % kinds.len());
        for kind in order {
            let key = kind.key();
            eprintln!("== round {} of {rounds}: {key}", round + 1);
            let server = Server::start(kind, settings, &ctx.work.join(format!("{key}-round-{round}")), users)?;
            let mut users = Users { next: 0, dir: ctx.work.clone() };
            let (register, message, senders, recipient) = fixed_rows(&server, &mut users, plan, ctx, key)?;
            let top = match tops.get(key) {
                Some(&(register_rate, message_rate)) => {
                    let step = plan.step_secs;
                    let r = workloads::register_step(ctx, &server, &mut users, register_rate, step, key, None)?;
                    let m = workloads::message_step(ctx, &server, &recipient, &senders, message_rate, step, key)?;
                    eprintln!(
                        "  again at the highest clean steps: REGISTER {register_rate}/s {:.0} per CPU-s (clean: {}), \
                         MESSAGE {message_rate}/s {:.0} per CPU-s (clean: {})",
                        r.per_server_cpu_s, r.clean, m.per_server_cpu_s, m.clean
                    );
                    Some((r, m))
                }
                None => None,
            };
            recipient.stop();
            server.stop();
            rows.entry(key).or_default().push(Round { fixed: (register, message), top });
        }
    }
    Ok(rows)
}

/// `--ab ROUNDS`: Parley and the baseline, interleaved; prints each round and the medians.
fn ab(rounds: usize, plan: &Plan, settings: &Settings, ctx: &Ctx, users: &Path, out: &Path) -> anyhow::Result<()> {
    type Round = (workloads::Step, workloads::Step);
    let kinds = [Kind::Parley, Kind::ParleyBaseline];
    let rows: BTreeMap<&str, Vec<Round>> = interleaved(&kinds, rounds, plan, settings, ctx, users, &BTreeMap::new())?
        .into_iter()
        .map(|(key, rounds)| (key, rounds.into_iter().map(|round| round.fixed).collect()))
        .collect();
    type Figure = (&'static str, fn(&Round) -> f64);
    fn per_cpu_s(s: &workloads::Step) -> f64 {
        s.successful as f64 / s.server_cpu_s.max(1e-9)
    }
    // The figures of a round (its REGISTER and MESSAGE steps), read for each build and as ratios.
    let figures: [Figure; 4] = [
        ("register_per_cpu_s", |x| per_cpu_s(&x.0)),
        ("register_p99_ms", |x| x.0.p99_ms.unwrap_or(f64::NAN)),
        ("message_per_cpu_s", |x| per_cpu_s(&x.1)),
        ("message_p99_ms", |x| x.1.p99_ms.unwrap_or(f64::NAN)),
    ];
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut summary = BTreeMap::new();
    for (key, r) in &rows {
        let medians: Vec<(&str, f64)> =
            figures.iter().map(|(name, f)| (*name, median(r.iter().map(f).collect()))).collect();
        eprintln!("{key}: medians over {rounds} rounds: {medians:?}");
        summary.insert(key.to_string(), medians.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>());
    }
    // The machine drifts between rounds by more than the builds differ: the ratio within each
    // round (the two builds measured back to back) is the figure to read.
    let (new, old) = (&rows[Kind::Parley.key()], &rows[Kind::ParleyBaseline.key()]);
    let ratios: Vec<(&str, f64)> = figures
        .iter()
        .map(|(name, f)| (*name, median(new.iter().zip(old).map(|(n, o)| f(n) / f(o)).collect())))
        .collect();
    eprintln!("parley/baseline: median of the per-round ratios: {ratios:?}");
    summary.insert("ratio".into(), ratios.iter().map(|(k, v)| (k.to_string(), *v)).collect());
    std::fs::create_dir_all(out)?;
    let path = out.join("ab.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(
            &serde_json::json!({"rounds": rounds, "fixed_rate": plan.fixed_rate, "medians": summary}),
        )? + "\n",
    )?;
    eprintln!("parley-bench: wrote {}", path.display());
    Ok(())
}

fn bench_server(
    kind: Kind,
    plan: &Plan,
    settings: &Settings,
    ctx: &Ctx,
    users_phase: &Path,
    users_mem: &Path,
) -> anyhow::Result<report::ServerResults> {
    let key = kind.key();
    let mut r = report::ServerResults::default();

    // 1 and 2: REGISTER and MESSAGE throughput and latency, on one server instance.
    let mut server = Server::start(kind, settings, &ctx.work.join(format!("{key}-load")), users_phase)?;
    let mut users = Users { next: 0, dir: ctx.work.clone() };
    let (pss, rss) = server.memory();
    r.idle_pss_bytes = Some(pss);
    r.idle_rss_bytes = Some(rss);
    // The TLS, baseline and sync-at-checkpoint servers run the fixed-rate rows only.
    let full = matches!(kind, Kind::Parley | Kind::Kamailio);
    // Fixed-rate runs first, on the fresh server; then the ladders, which end in overload.
    let (register, message, senders_inf, recipient) = fixed_rows(&server, &mut users, plan, ctx, key)?;
    r.register_fixed = Some(register);
    r.message_fixed = Some(message);

    if full {
        (r.register_ladder, r.message_ladder) = ladders(&server, &mut users, &recipient, &senders_inf, plan, ctx, key)?;
    }
    r.recipient_sipp_cpu_s = Some(recipient.stop());

    // 3. Presence fan-out.
    if full {
        for &n in &plan.fanout {
            let f = workloads::fanout(&server, &mut users, n)?;
            eprintln!(
                "  fan-out to {n}: last NOTIFY after {:?} ms ({} notified, {} received again, {} subscribe failures, first: {:?})",
                f.last_notify_ms, f.notified, f.received_again, f.subscribe_failed, f.first_error
            );
            r.fanout.push(f);
        }
    }
    if !server.alive() {
        bail!("{key} died during the load phase: {:?}", server.log_errors());
    }
    r.log_errors = server.log_errors();
    server.stop();

    // The load phase again with the server on every CPU.
    if full && plan.all_cpus && cpu_count(&settings.cpus) < procstat::cpus() {
        r.all_cpus = Some(all_cpus_phase(kind, plan, settings, ctx, users_phase)?);
    }

    // 4. Memory with N registered users, each with one presence subscription.
    if full {
        let sizes = if kind == Kind::Kamailio { &plan.memory_sizes_kamailio } else { &plan.memory_sizes };
        if !sizes.is_empty() {
            eprintln!("  memory");
            let mut server = Server::start(kind, settings, &ctx.work.join(format!("{key}-memory")), users_mem)?;
            r.memory = workloads::memory(&mut server, sizes, 1000, plan.memory_settle(kind))?;
            server.stop();
        }
    }
    Ok(r)
}

/// The REGISTER and MESSAGE ladders on a server that has run `fixed_rows`.
fn ladders(
    server: &Server,
    users: &mut Users,
    recipient: &workloads::Recipient,
    senders: &Path,
    plan: &Plan,
    ctx: &Ctx,
    key: &str,
) -> anyhow::Result<(Vec<workloads::Step>, Vec<workloads::Step>)> {
    eprintln!("  REGISTER ladder");
    let register = workloads::ladder(&plan.register_rates, |rate| {
        workloads::register_step(ctx, server, users, rate, plan.step_secs, key, None)
    })?;
    settle(&register);
    eprintln!("  MESSAGE ladder");
    let message = workloads::ladder(&plan.message_rates, |rate| {
        workloads::message_step(ctx, server, recipient, senders, rate, plan.step_secs, key)
    })?;
    settle(&message);
    Ok((register, message))
}

/// The fixed-rate rows and the ladders on a fresh server given every CPU of the machine (Kamailio
/// with two workers per CPU), sipp and the bench client sharing those CPUs: does the server scale?
fn all_cpus_phase(
    kind: Kind,
    plan: &Plan,
    settings: &Settings,
    ctx: &Ctx,
    users_phase: &Path,
) -> anyhow::Result<report::AllCpus> {
    let cpus = format!("0-{}", procstat::cpus() - 1);
    eprintln!("  on CPUs {cpus}, the load generator sharing them");
    let settings = Settings { cpus: cpus.clone(), kamailio_children: 2 * procstat::cpus(), ..settings.clone() };
    let ctx = Ctx { scenarios: ctx.scenarios, sipp_cpus: &cpus, work: ctx.work.clone() };
    let key = kind.key();
    let mut server = Server::start(kind, &settings, &ctx.work.join(format!("{key}-all-cpus")), users_phase)?;
    let mut users = Users { next: 0, dir: ctx.work.clone() };
    let (register_fixed, message_fixed, senders, recipient) = fixed_rows(&server, &mut users, plan, &ctx, key)?;
    let (register_ladder, message_ladder) = ladders(&server, &mut users, &recipient, &senders, plan, &ctx, key)?;
    recipient.stop();
    if !server.alive() {
        bail!("{key} died during the load phase on CPUs {cpus}: {:?}", server.log_errors());
    }
    server.stop();
    Ok(report::AllCpus { cpus, register_fixed, message_fixed, register_ladder, message_ladder })
}

/// The Front-End row: MESSAGE from users of one Home Server to a user of the other, clients
/// talking only to the Front-End (or proxy), CPU summed over all three processes.
fn bench_frontend(
    kind: Kind,
    plan: &Plan,
    settings: &Settings,
    ctx: &Ctx,
    root: &Path,
    users_file: &Path,
) -> anyhow::Result<report::FrontEndResults> {
    let key = format!("{}_fe", kind.key());
    let mut cluster = start_frontend_cluster(kind, settings, root, &ctx.work.join(&key), users_file)?;
    let mut r = report::FrontEndResults {
        setup: match kind {
            Kind::Kamailio => format!(
                "bench/kamailio/proxy.cfg ({}) in front of two bench/kamailio/registrar.cfg",
                if settings.kamailio_proxy_stateful { "stateful, -A STATEFUL" } else { "stateless" }
            ),
            _ => "parley-server --role frontend in front of two --role home, internal mutual TLS".into(),
        },
        ready_ms: cluster.front.ready_after.as_secs_f64() * 1000.0,
        ..Default::default()
    };
    let senders = frontend_senders(plan);
    let mut users = workloads::Users { next: 1, dir: ctx.work.clone() };
    let recipient = workloads::Recipient::start(ctx, &cluster, &mut users, &key)?;
    let (fixed, by_process) = frontend_fixed(&cluster, &recipient.user, &senders, plan)?;
    (r.message_fixed, r.cpu_s_by_process) = (Some(fixed), by_process);
    if !plan.frontend_rates.is_empty() {
        eprintln!("  MESSAGE ladder via the Front-End");
        let inf = users.inf(&format!("{key}-senders"), senders.iter().copied())?;
        let mut by_process = Vec::new();
        r.message_ladder = workloads::ladder(&plan.frontend_rates, |rate| {
            let before = cluster.cpu_by_process();
            let step = workloads::message_step(ctx, &cluster, &recipient, &inf, rate, plan.step_secs, &key);
            let used: BTreeMap<String, f64> =
                cluster.cpu_by_process().into_iter().map(|(k, v)| (k.clone(), v - before[&k])).collect();
            eprintln!("      CPU-s by process: {used:.2?}");
            by_process.push(used);
            step
        })?;
        r.ladder_cpu_s_by_process = by_process;
        settle(&r.message_ladder);
    }
    r.recipient_sipp_cpu_s = Some(recipient.stop());
    if !cluster.alive() {
        bail!("{key}: a server died during the load: {:?}", cluster.log_errors());
    }
    r.log_errors = cluster.log_errors();
    cluster.stop();
    Ok(r)
}

fn start_frontend_cluster(
    kind: Kind,
    settings: &Settings,
    root: &Path,
    dir: &Path,
    users_file: &Path,
) -> anyhow::Result<cluster::Cluster> {
    match kind {
        Kind::Kamailio => cluster::Cluster::start_kamailio(settings, root, dir),
        _ => cluster::Cluster::start_parley(settings, dir, users_file),
    }
}

/// The Front-End row's senders: u0, u2, ..., homed on the first Home Server (the recipient, u1,
/// on the second).
fn frontend_senders(plan: &Plan) -> Vec<usize> {
    (0..plan.senders).map(|i| 2 * i).collect()
}

/// The Front-End row's fixed-rate run: MESSAGE from the senders to `to` at the fixed rate, its
/// server CPU summed over the three process trees (and returned by process).
fn frontend_fixed(
    cluster: &cluster::Cluster,
    to: &str,
    senders: &[usize],
    plan: &Plan,
) -> anyhow::Result<(workloads::Step, BTreeMap<String, f64>)> {
    let mut jobs = message_jobs(to, senders.iter().copied());
    let cpu0 = cluster.cpu_by_process();
    let timed = workloads::Timed::AuthenticatedLeg;
    let fixed = workloads::fixed_rate(cluster, &mut jobs, plan.fixed_rate, plan.fixed_count(), timed)?;
    let by_process: BTreeMap<String, f64> =
        cluster.cpu_by_process().into_iter().map(|(k, v)| (k.clone(), v - cpu0[&k])).collect();
    eprintln!(
        "  MESSAGE via the Front-End at {}/s: p50 {:?} ms, p99 {:?} ms, {:.0} per CPU-s, {} failed; CPU-s by process {:.2?}",
        plan.fixed_rate, fixed.p50_ms, fixed.p99_ms, fixed.per_server_cpu_s, fixed.failed, by_process
    );
    Ok((fixed, by_process))
}

/// The Front-End row's fixed-rate run again, Parley's and Kamailio's clusters in turn on fresh
/// processes, `rounds` times (the order rotated each round): the row's figures are medians over
/// these and the main run, its ratios the median of the per-round ratios. One run each, minutes
/// apart, flipped the row's verdicts from one `make bench` to the next (Parley's three processes
/// spent 0.165 CPU-s per 1,000 messages in one run and 0.247 in the next, the whole machine slower).
fn frontend_rounds(
    rounds: usize,
    plan: &Plan,
    settings: &Settings,
    ctx: &Ctx,
    root: &Path,
    users_file: &Path,
) -> anyhow::Result<BTreeMap<&'static str, Vec<workloads::Step>>> {
    let mut out: BTreeMap<&str, Vec<workloads::Step>> = BTreeMap::new();
    let senders = frontend_senders(plan);
    for round in 0..rounds {
        let mut order = [Kind::Parley, Kind::Kamailio];
        order.rotate_left(round % 2);
        for kind in order {
            let key = format!("{}_fe_round_{round}", kind.key());
            eprintln!("== round {} of {rounds}: {} behind a Front-End", round + 1, kind.key());
            let mut cluster = start_frontend_cluster(kind, settings, root, &ctx.work.join(&key), users_file)?;
            let mut users = workloads::Users { next: 1, dir: ctx.work.clone() };
            let recipient = workloads::Recipient::start(ctx, &cluster, &mut users, &key)?;
            let (fixed, _) = frontend_fixed(&cluster, &recipient.user, &senders, plan)?;
            recipient.stop();
            if !cluster.alive() {
                bail!("{key}: a server died during the load: {:?}", cluster.log_errors());
            }
            cluster.stop();
            out.entry(kind.key()).or_default().push(fixed);
        }
    }
    Ok(out)
}
