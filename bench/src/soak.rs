//! `make soak`: Parley's Home Server under steady load for a long time (30 minutes by default):
//! REGISTER and MESSAGE rounds, 20 s each, at a set share of the benchmark's highest clean rates,
//! re-registering a fixed pool of users so the state it holds stays the same size. Passes when
//! no call failed and memory is flat over the second half (it stops growing once the pool is
//! registered and the transaction tables have reached their steady size).

use crate::servers::{Kind, Server, Settings};
use crate::workloads::{self, Ctx, Recipient, Users};
use crate::{procstat, servers};
use anyhow::bail;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Users re-registered round after round (the pool stays registered).
const POOL: usize = 50_000;
/// Seconds of each REGISTER and each MESSAGE round (a REGISTER round must fit in the pool).
const ROUND_SECS: f64 = 5.0;
/// The share of the highest clean ladder steps the soak runs at.
const SHARE: f64 = 0.7;

/// 70% of Parley's highest clean REGISTER and MESSAGE steps in the last full run
/// (`results/latest.json`), or `fallback` for each when there is none.
pub fn default_rates(results: &Path, fallback: u32) -> (u32, u32) {
    let highest = |ladder: &str| -> Option<u32> {
        let text = std::fs::read_to_string(results.join("latest.json")).ok()?;
        let run: serde_json::Value = serde_json::from_str(&text).ok()?;
        let steps = run["servers"]["parley"][ladder].as_array()?;
        let clean = steps.iter().filter(|s| s["clean"] == true).filter_map(|s| s["offered_per_s"].as_u64());
        clean.max().map(|r| (r as f64 * SHARE) as u32)
    };
    (highest("register_ladder").unwrap_or(fallback), highest("message_ladder").unwrap_or(fallback))
}

/// Memory growth over the second half, per minute, above which the soak fails.
const MAX_GROWTH_KIB_PER_MIN: f64 = 512.0;

#[derive(Serialize)]
pub struct Sample {
    pub minute: f64,
    pub pss_kib: u64,
    pub rss_kib: u64,
    pub register: workloads::Step,
    pub message: workloads::Step,
}

#[derive(Serialize)]
pub struct Soak {
    pub minutes: f64,
    pub register_rate: u32,
    pub message_rate: u32,
    pub calls: u64,
    pub failed: u64,
    pub retransmissions: u64,
    /// Memory growth over the second half of the run, KiB per minute (least squares).
    pub growth_kib_per_min: f64,
    pub samples: Vec<Sample>,
}

pub fn run(
    ctx: &Ctx,
    settings: &Settings,
    minutes: f64,
    register_rate: u32,
    message_rate: u32,
    out: &Path,
) -> anyhow::Result<()> {
    let users_file = ctx.work.join("users-soak.toml");
    servers::write_users(&users_file, POOL + 1_000)?;
    let server = Server::start(Kind::Parley, settings, &ctx.work.join("soak"), &users_file)?;
    let mut users = Users { next: 0, dir: ctx.work.clone() };
    let senders = users.take(100);
    let senders_inf = users.inf("soak-senders", senders)?;
    let recipient = Recipient::start(ctx, &server, &mut users, "soak")?;
    let first_pooled = users.next;
    // The pool's "devices" keep one address, as phones do: each round refreshes their bindings.
    let device_port = crate::free_udp_port();
    let started = Instant::now();
    let mut samples = Vec::new();
    eprintln!(
        "soak: {minutes} min of REGISTER at {register_rate}/s and MESSAGE at {message_rate}/s, {ROUND_SECS} s rounds"
    );
    while started.elapsed().as_secs_f64() < minutes * 60.0 {
        let calls = (register_rate as f64 * ROUND_SECS) as usize;
        if calls > POOL {
            bail!("{register_rate}/s for {ROUND_SECS} s is more than the {POOL} users of the pool");
        }
        if users.next + calls > first_pooled + POOL {
            users.next = first_pooled; // round the pool again: refreshes, not new bindings
        }
        let register =
            workloads::register_step(ctx, &server, &mut users, register_rate, ROUND_SECS, "soak", Some(device_port))?;
        let message =
            workloads::message_step(ctx, &server, &recipient, &senders_inf, message_rate, ROUND_SECS, "soak")?;
        let (pss, rss) = procstat::tree_memory(server.pid());
        let minute = started.elapsed().as_secs_f64() / 60.0;
        eprintln!(
            "soak: {minute:5.1} min  PSS {:7} KiB  REGISTER {}/{} ok ({} failed)  MESSAGE {}/{} ok ({} failed)",
            pss / 1024,
            register.successful,
            register.calls,
            register.failed,
            message.successful,
            message.calls,
            message.failed
        );
        samples.push(Sample { minute, pss_kib: pss / 1024, rss_kib: rss / 1024, register, message });
    }
    drop(recipient);
    let steps = || samples.iter().flat_map(|s| [&s.register, &s.message]);
    let half: Vec<(f64, f64)> =
        samples.iter().filter(|s| s.minute >= minutes / 2.0).map(|s| (s.minute, s.pss_kib as f64)).collect();
    let soak = Soak {
        minutes,
        register_rate,
        message_rate,
        calls: steps().map(|s| u64::from(s.calls)).sum(),
        failed: steps().map(|s| s.failed.max(u64::from(s.calls).saturating_sub(s.successful))).sum(),
        retransmissions: steps().map(|s| s.retransmissions).sum(),
        growth_kib_per_min: slope(&half),
        samples,
    };
    std::fs::create_dir_all(out)?;
    let path = out.join("soak.json");
    std::fs::write(&path, serde_json::to_string_pretty(&soak)? + "\n")?;
    let (first, last) = (soak.samples.first().map_or(0, |s| s.pss_kib), soak.samples.last().map_or(0, |s| s.pss_kib));
    eprintln!(
        "soak: {} calls, {} failed, {} retransmissions; PSS {first} KiB after the first round, {last} KiB at the end, \
         {:.0} KiB/min over the second half; wrote {}",
        soak.calls,
        soak.failed,
        soak.retransmissions,
        soak.growth_kib_per_min,
        path.display()
    );
    if soak.failed > 0 {
        bail!("{} calls failed during the soak", soak.failed);
    }
    if soak.growth_kib_per_min > MAX_GROWTH_KIB_PER_MIN {
        bail!("memory grew {:.0} KiB a minute over the second half", soak.growth_kib_per_min);
    }
    Ok(())
}

/// Least-squares slope of y over x (0 for fewer than two points).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slope_of_a_line() {
        assert_eq!(super::slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), 2.0);
        assert_eq!(super::slope(&[(1.0, 7.0)]), 0.0);
    }
}
