//! Results: the JSON document, the figures table (Parley, Kamailio, ratio; Parley's baseline build
//! when one was given), BENCHMARKS.md and the throughput chart (hand-written SVG: no font or
//! drawing dependencies).

use crate::Plan;
use crate::disk::DiskSync;
use crate::workloads::{Fanout, Memory, Step, highest_clean, max_clean};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Default, Serialize)]
pub struct ServerResults {
    pub cold_start_ms: Option<f64>,
    pub cold_start_runs_ms: Vec<f64>,
    pub idle_pss_bytes: Option<u64>,
    pub idle_rss_bytes: Option<u64>,
    pub register_ladder: Vec<Step>,
    pub register_fixed: Option<Step>,
    pub message_ladder: Vec<Step>,
    pub message_fixed: Option<Step>,
    pub recipient_sipp_cpu_s: Option<f64>,
    pub fanout: Vec<Fanout>,
    pub memory: Vec<Memory>,
    pub log_errors: Vec<String>,
    /// The Front-End row (Parley and Kamailio only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frontend: Option<FrontEndResults>,
    /// The fixed-rate REGISTER and MESSAGE rows again, in rounds interleaved with the other
    /// servers' (Parley, Kamailio and Parley with `storage.sync = "checkpoint"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<(Step, Step)>,
    /// In those rounds, after the fixed-rate rows: a REGISTER and a MESSAGE step at the rates of
    /// this server's highest clean ladder steps (Parley and Kamailio).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top_rounds: Vec<(Step, Step)>,
    /// The load phase with the server on every CPU (Parley and Kamailio only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_cpus: Option<AllCpus>,
}

impl ServerResults {
    /// The Front-End row's fixed-rate runs: the main one, then one per interleaved round.
    fn frontend_runs(&self) -> Vec<&Step> {
        self.frontend.iter().flat_map(|f| f.message_fixed.iter().chain(&f.rounds)).collect()
    }

    /// The fixed-rate REGISTER and MESSAGE rows of the main run and of every interleaved round.
    fn fixed_runs(&self) -> Vec<(&Step, &Step)> {
        let main = self.register_fixed.as_ref().zip(self.message_fixed.as_ref());
        main.into_iter().chain(self.rounds.iter().map(|(r, m)| (r, m))).collect()
    }

    /// The work per server CPU-second of the REGISTER (or MESSAGE) ladder's highest clean step,
    /// then of each interleaved round's step at that rate (`None` where one was not clean).
    fn top_per_cpu_s(&self, register: bool) -> Vec<Option<f64>> {
        let ladder = if register { &self.register_ladder } else { &self.message_ladder };
        let again = self.top_rounds.iter().map(|(r, m)| if register { r } else { m });
        std::iter::once(highest_clean(ladder))
            .chain(again.map(|s| s.clean.then_some(s)))
            .map(|s| s.map(|s| s.per_server_cpu_s))
            .collect()
    }
}

/// The load phase on a server given every CPU, the load generator sharing them.
#[derive(Debug, Serialize)]
pub struct AllCpus {
    pub cpus: String,
    pub register_fixed: Step,
    pub message_fixed: Step,
    pub register_ladder: Vec<Step>,
    pub message_ladder: Vec<Step>,
}

/// The Front-End row: a Front-End (proxy) in front of two Home Servers (registrars).
#[derive(Debug, Default, Serialize)]
pub struct FrontEndResults {
    pub setup: String,
    /// From starting the Front-End (after its Home Servers) until it takes traffic: Parley's
    /// `/readyz` answers 200 (its Home Servers probed), Kamailio's proxy answers OPTIONS.
    pub ready_ms: f64,
    /// MESSAGE at the fixed rate; its server CPU is the sum over the three process trees.
    pub message_fixed: Option<Step>,
    /// The fixed-rate run again on a fresh cluster in each interleaved round.
    pub rounds: Vec<Step>,
    /// The fixed-rate run's CPU seconds, by process tree.
    pub cpu_s_by_process: BTreeMap<String, f64>,
    pub message_ladder: Vec<Step>,
    /// Each ladder step's CPU seconds, by process tree.
    pub ladder_cpu_s_by_process: Vec<BTreeMap<String, f64>>,
    pub recipient_sipp_cpu_s: Option<f64>,
    pub log_errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub key: String,
    pub name: String,
    pub unit: String,
    /// "higher" or "lower" is better; "info" for context rows.
    pub better: String,
    pub parley: Option<f64>,
    /// The `--baseline` build of Parley, when one was measured and the figure applies to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    pub kamailio: Option<f64>,
    /// Parley / Kamailio (for the fixed-rate rows, the median of the per-round ratios).
    pub ratio: Option<f64>,
    /// The lowest and highest per-round ratio, where the figure was measured in several rounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_spread: Option<(f64, f64)>,
    pub target: Option<String>,
    pub meets_target: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Run {
    pub date: String,
    pub machine: String,
    pub kamailio_version: Option<String>,
    pub sipp_version: Option<String>,
    pub server_cpus: String,
    pub sipp_cpus: String,
    pub kamailio_children: usize,
    pub kamailio_shm_mb: usize,
    pub loadavg_start: f64,
    pub loadavg_end: f64,
    pub duration_s: f64,
    pub plan: Plan,
    pub figures: Vec<Figure>,
    /// This disk's sync, timed as a durable registration at the fixed rate pays it.
    pub disk_sync: Option<DiskSync>,
    pub servers: BTreeMap<String, ServerResults>,
}

enum Target {
    None,
    /// Parley at least as good as Kamailio.
    VsKamailio,
    /// Parley at least this many times Kamailio (higher is better).
    TimesKamailio(f64),
    /// Parley below this absolute value.
    Below(f64, &'static str),
}

pub fn figures(results: &BTreeMap<String, ServerResults>, plan: &Plan) -> Vec<Figure> {
    let p = results.get("parley");
    let k = results.get("kamailio");
    let t = results.get("parley_tls");
    let b = results.get("parley_baseline");
    let c = results.get("parley_sync_at_checkpoint");
    let mut out = Vec::new();
    #[allow(clippy::too_many_arguments)]
    fn push(
        out: &mut Vec<Figure>,
        key: &str,
        name: String,
        unit: &str,
        better: &str,
        (pv, bv, kv): (Option<f64>, Option<f64>, Option<f64>),
        (ratio, ratio_spread): (Option<f64>, Option<(f64, f64)>),
        target: Target,
    ) {
        let (target_text, meets) = match target {
            Target::None => (None, None),
            Target::VsKamailio => (
                Some(if better == "higher" { "≥ Kamailio" } else { "≤ Kamailio" }.to_string()),
                ratio.map(|r| if better == "higher" { at_least(r, 1.0) } else { at_least(1.0, r) }),
            ),
            Target::TimesKamailio(x) => (Some(format!("≥ {x}× Kamailio")), ratio.map(|r| at_least(r, x))),
            Target::Below(v, text) => (Some(text.to_string()), pv.map(|x| x < v)),
        };
        out.push(Figure {
            key: key.into(),
            name,
            unit: unit.into(),
            better: better.into(),
            parley: pv,
            baseline: bv,
            kamailio: kv,
            ratio,
            ratio_spread,
            target: target_text,
            meets_target: meets,
        });
    }
    let ratio_of = |pv: Option<f64>, kv: Option<f64>| match (pv, kv) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    // The fixed-rate figures, per round: (REGISTER step, MESSAGE step) of the main run and of each
    // interleaved round.
    type Of = dyn Fn(&Step) -> Option<f64>;
    let fixed_figures: [(&str, &Of); 7] = [
        ("per_cpu_s", &|s| Some(s.per_server_cpu_s)),
        ("cpu_s_per_1000", &|s| Some(1000.0 * s.cpu_s_per_call())),
        ("kernel_us", &|s| cpu_split_us(s, true)),
        ("user_us", &|s| cpu_split_us(s, false)),
        ("p50_ms", &|s| s.p50_ms),
        ("p99_ms", &|s| s.p99_ms),
        ("failed_fixed", &|s| Some(s.failed as f64)),
    ];
    let fixed = |name: &str| fixed_figures.iter().find(|(n, _)| *n == name).expect("named above").1;
    type Pick = for<'a> fn(&(&'a Step, &'a Step)) -> &'a Step;
    let picks: [(&str, Pick); 2] = [("register", |x| x.0), ("message", |x| x.1)];
    // Their Parley/Kamailio ratios: the median of the per-round ratios, each round having measured
    // both servers back to back (a machine that drifts between rounds cancels out), and the spread.
    let mut paired: BTreeMap<String, (f64, Option<(f64, f64)>)> = BTreeMap::new();
    if let (Some(p), Some(k)) = (p, k) {
        // Cold starts too: the n-th of each server were measured one after the other.
        let ratios: Vec<f64> = p.cold_start_runs_ms.iter().zip(&k.cold_start_runs_ms).map(|(a, b)| a / b).collect();
        if let Some(r) = median(ratios.clone()) {
            paired.insert("cold_start_ms".into(), (r, spread(&ratios)));
        }
        for (m, pick) in picks {
            // The highest clean steps: rounds in which both were clean.
            let (tp, tk) = (p.top_per_cpu_s(m == "register"), k.top_per_cpu_s(m == "register"));
            let ratios = paired_ratios(tp, tk);
            if let Some(r) = median(ratios.clone()) {
                paired.insert(format!("{m}_per_cpu_s_at_max"), (r, spread(&ratios)));
            }
            for (name, g) in &fixed_figures {
                let ratios = round_ratios(p, k, |x| g(pick(x)));
                if let Some(r) = median(ratios.clone()) {
                    paired.insert(format!("{m}_{name}"), (r, spread(&ratios)));
                }
            }
        }
        // The Front-End row's fixed-rate runs, round by round as well.
        for (name, g) in &fixed_figures {
            let (pr, kr) = (p.frontend_runs(), k.frontend_runs());
            let ratios = paired_ratios(pr.into_iter().map(g), kr.into_iter().map(g));
            if let Some(r) = median(ratios.clone()) {
                paired.insert(format!("frontend_message_{name}"), (r, spread(&ratios)));
            }
        }
    }
    let mut add = |key: &str,
                   name: String,
                   unit: &str,
                   better: &str,
                   f: &dyn Fn(&ServerResults) -> Option<f64>,
                   target: Target| {
        let (pv, bv, kv) = (p.and_then(f), b.and_then(f), k.and_then(f));
        let ratio = paired.get(key).map_or((ratio_of(pv, kv), None), |(r, spread)| (Some(*r), *spread));
        push(&mut out, key, name, unit, better, (pv, bv, kv), ratio, target);
    };
    let rate = thousands(plan.fixed_rate as usize);
    // The fixed-rate figures: the median over the main run and the interleaved rounds.
    let runs = 1 + p.map_or(0, |r| r.rounds.len());
    let over = if runs > 1 { format!(" (median of {runs} interleaved runs)") } else { String::new() };
    for ((m, pick), ladder) in picks
        .into_iter()
        .zip([(|r: &ServerResults| &r.register_ladder) as fn(&ServerResults) -> &Vec<Step>, |r: &ServerResults| {
            &r.message_ladder
        }])
    {
        let label =
            if m == "register" { "REGISTER (digest auth, distinct users)" } else { "MESSAGE relay (digest auth)" };
        let what = if m == "register" { "registrations" } else { "messages" };
        let median_of = |r: &ServerResults, g: &dyn Fn(&Step) -> Option<f64>| {
            median(r.fixed_runs().iter().filter_map(|x| g(pick(x))).collect())
        };
        add(
            &format!("{m}_max_rate"),
            format!("{label}: highest offered rate with zero failures"),
            "calls/s",
            "higher",
            &|r| max_clean(ladder(r)).map(f64::from),
            Target::VsKamailio,
        );
        add(
            &format!("{m}_per_cpu_s"),
            format!("{label}: {what} per server CPU-second at {rate}/s{over}"),
            "per CPU-s",
            "higher",
            &|r| median_of(r, fixed("per_cpu_s")),
            Target::TimesKamailio(1.5),
        );
        let top_runs = 1 + p.map_or(0, |r| r.top_rounds.len());
        let top_over = if top_runs > 1 {
            format!(" (median of {top_runs}: the ladder's, then again at that rate in each interleaved round)")
        } else {
            String::new()
        };
        add(
            &format!("{m}_per_cpu_s_at_max"),
            format!("{label}: {what} per server CPU-second at the highest clean step{top_over}"),
            "per CPU-s",
            "higher",
            &|r| median(r.top_per_cpu_s(m == "register").into_iter().flatten().collect()),
            Target::TimesKamailio(1.5),
        );
        add(
            &format!("{m}_cpu_s_per_1000"),
            format!("{label}: server CPU-seconds per 1,000 {what} at {rate}/s{over}"),
            "CPU-s",
            "lower",
            &|r| median_of(r, fixed("cpu_s_per_1000")),
            Target::None,
        );
        if m == "register" {
            for (name, side) in [("kernel_us", "in the kernel"), ("user_us", "in user space")] {
                add(
                    &format!("{m}_{name}"),
                    format!("{label}: server CPU per registration {side} at {rate}/s (`perf` samples){over}"),
                    "µs",
                    "lower",
                    &|r| median_of(r, fixed(name)),
                    Target::None,
                );
            }
        }
        add(
            &format!("{m}_p50_ms"),
            format!("{label}: p50 response time at {rate}/s{over}"),
            "ms",
            "lower",
            &|r| median_of(r, fixed("p50_ms")),
            Target::None,
        );
        add(
            &format!("{m}_p99_ms"),
            format!("{label}: p99 response time at {rate}/s{over}"),
            "ms",
            "lower",
            &|r| median_of(r, fixed("p99_ms")),
            Target::VsKamailio,
        );
        add(
            &format!("{m}_failed_fixed"),
            format!("{label}: failed calls at {rate}/s (highest of {runs} runs)"),
            "calls",
            "lower",
            &|r| r.fixed_runs().iter().map(|x| pick(x).failed as f64).reduce(f64::max),
            Target::None,
        );
        add(
            &format!("{m}_sipp_cpu_at_max"),
            format!("{label}: sipp CPU at the highest clean step (share of one CPU)"),
            "CPU",
            "info",
            &|r| highest_clean(ladder(r)).map(|s| s.sipp_cpu_s / s.elapsed_s.max(1e-9)),
            Target::None,
        );
        let server_cpu = |s: &Step| s.server_cpu_s / s.elapsed_s.max(1e-9);
        add(
            &format!("{m}_server_cpu_at_max"),
            format!("{label}: server CPU at the highest clean step (share of one CPU)"),
            "CPU",
            "info",
            &|r| highest_clean(ladder(r)).map(server_cpu),
            Target::None,
        );
        fn all<'a>(r: &'a ServerResults, m: &str) -> Option<&'a Vec<Step>> {
            r.all_cpus.as_ref().map(|a| if m == "register" { &a.register_ladder } else { &a.message_ladder })
        }
        let on = p.and_then(|r| r.all_cpus.as_ref()).map(|a| a.cpus.as_str()).unwrap_or("all");
        add(
            &format!("{m}_max_rate_all_cpus"),
            format!(
                "{label}: highest offered rate with zero failures, server on CPUs {on} (load generator sharing them)"
            ),
            "calls/s",
            "higher",
            &|r| all(r, m).and_then(|l| max_clean(l)).map(f64::from),
            Target::VsKamailio,
        );
        add(
            &format!("{m}_server_cpu_at_max_all_cpus"),
            format!("{label}: server CPU at that step, on CPUs {on} (share of one CPU)"),
            "CPU",
            "info",
            &|r| all(r, m).and_then(|l| highest_clean(l)).map(server_cpu),
            Target::None,
        );
        // Blank when the one-CPU ladder's top step was clean: its limit is above the ladder, and
        // a ratio to it would say nothing.
        add(
            &format!("{m}_all_cpus_scaling"),
            format!(
                "{label}: that rate over the one-CPU rate (how the server scales; blank if the one-CPU ladder never failed)"
            ),
            "times",
            "info",
            &|r| {
                let one = ladder(r);
                if one.last()?.clean {
                    return None;
                }
                Some(f64::from(max_clean(all(r, m)?)?) / f64::from(max_clean(one)?))
            },
            Target::None,
        );
    }
    // The Front-End row: CPU is the sum over the Front-End (proxy) and both Home Servers (registrars).
    let fe_label =
        "MESSAGE between users of two Home Servers through the Front-End (Kamailio: proxy and two registrars)";
    // The fixed-rate figures: the median over the main run and the interleaved rounds (failures:
    // the most in any of them).
    let fe_fixed = |r: &ServerResults, g: &dyn Fn(&Step) -> Option<f64>| {
        median(r.frontend_runs().into_iter().filter_map(g).collect())
    };
    let fe_runs = p.map_or(0, |r| r.frontend_runs().len());
    let fe_over = if fe_runs > 1 { format!(" (median of {fe_runs} interleaved runs)") } else { String::new() };
    let fe_ladder = |r: &ServerResults| r.frontend.as_ref().map(|f| f.message_ladder.clone()).unwrap_or_default();
    add(
        "frontend_message_max_rate",
        format!("{fe_label}: highest offered rate with zero failures"),
        "calls/s",
        "higher",
        &|r| max_clean(&fe_ladder(r)).map(f64::from),
        Target::None,
    );
    add(
        "frontend_message_per_cpu_s",
        format!("{fe_label}: messages per CPU-second of all three servers at {rate}/s{fe_over}"),
        "per CPU-s",
        "higher",
        &|r| fe_fixed(r, fixed("per_cpu_s")),
        Target::VsKamailio,
    );
    add(
        "frontend_message_cpu_s_per_1000",
        format!("{fe_label}: CPU-seconds of all three servers per 1,000 messages at {rate}/s{fe_over}"),
        "CPU-s",
        "lower",
        &|r| fe_fixed(r, fixed("cpu_s_per_1000")),
        Target::None,
    );
    add(
        "frontend_message_p50_ms",
        format!("{fe_label}: p50 response time at {rate}/s{fe_over}"),
        "ms",
        "lower",
        &|r| fe_fixed(r, fixed("p50_ms")),
        Target::None,
    );
    add(
        "frontend_message_p99_ms",
        format!("{fe_label}: p99 response time at {rate}/s{fe_over}"),
        "ms",
        "lower",
        &|r| fe_fixed(r, fixed("p99_ms")),
        Target::VsKamailio,
    );
    add(
        "frontend_message_failed_fixed",
        format!("{fe_label}: failed calls at {rate}/s (the most in one run)"),
        "calls",
        "lower",
        &|r| r.frontend_runs().iter().map(|s| s.failed as f64).reduce(f64::max),
        Target::None,
    );
    let largest_fanout = plan.fanout.iter().copied().max().unwrap_or(0);
    for &n in &plan.fanout {
        add(
            &format!("fanout_{n}_ms"),
            format!("Presence: one PUBLISH to {} watchers, time to the last NOTIFY", thousands(n)),
            "ms",
            "lower",
            &|r| r.fanout.iter().find(|f| f.watchers == n).and_then(|f| f.last_notify_ms),
            if n == largest_fanout && n >= 10_000 { Target::Below(1000.0, "< 1,000 ms") } else { Target::None },
        );
        add(
            &format!("fanout_{n}_received_again"),
            format!("Presence: of those {} NOTIFYs, arrived more than once (retransmitted)", thousands(n)),
            "NOTIFYs",
            "lower",
            &|r| r.fanout.iter().find(|f| f.watchers == n).map(|f| f.received_again as f64),
            Target::None,
        );
    }
    add(
        "memory_idle_mib",
        "Memory after start, before any load (users file loaded)".into(),
        "MiB",
        "lower",
        &|r| r.memory.iter().find(|m| m.users == 0).map(|m| mib(m.pss_bytes)),
        Target::None,
    );
    let largest_mem = plan.memory_report.iter().copied().max().unwrap_or(0);
    for &n in &plan.memory_report {
        let how = match (plan.memory_sizes.contains(&n), plan.memory_sizes_kamailio.contains(&n)) {
            (true, true) => "",
            (true, false) => {
                " (Parley measured; Kamailio extrapolated linearly from its two largest sizes: it would not fit \
                 its shared memory)"
            }
            _ => " (extrapolated linearly from the two largest measured sizes, not measured)",
        };
        // The target's size is also measured after the fill's own transactions expired: right
        // after it, the figure grows with the rate the bench machine filled at.
        let target_size = n == largest_mem && n >= 1_000_000;
        let settled = |r: &ServerResults| {
            r.memory.iter().find(|m| m.users == n && m.failed == 0).and_then(|m| m.settled_pss_bytes).map(mib)
        };
        let measured_settled = target_size && p.is_some_and(|r| settled(r).is_some());
        let when = if measured_settled { ", right after the fill (with its last 32 s of transactions)" } else { "" };
        add(
            &format!("memory_{n}_mib"),
            format!("Memory (PSS) with {} registered users, one presence subscription each{how}{when}", thousands(n)),
            "MiB",
            "lower",
            &|r| memory_at(&r.memory, n).map(mib),
            if target_size && !measured_settled { Target::Below(2048.0, "< 2,048 MiB") } else { Target::None },
        );
        if measured_settled {
            add(
                &format!("memory_{n}_settled_mib"),
                format!(
                    "Memory (PSS) with {} registered users, one presence subscription each, {:.0} s after the fill \
                     (its transactions expired: what the users hold)",
                    thousands(n),
                    plan.memory_settle_secs
                ),
                "MiB",
                "lower",
                &settled,
                Target::Below(2048.0, "< 2,048 MiB"),
            );
        }
    }
    add(
        "cold_start_ms",
        format!(
            "Cold start: process start to the first answered OPTIONS (median of {}, interleaved with the other servers' starts)",
            p.map_or(0, |r| r.cold_start_runs_ms.len())
        ),
        "ms",
        "lower",
        &|r| r.cold_start_ms,
        Target::Below(100.0, "< 100 ms"),
    );
    // The opt-in `storage.sync = "checkpoint"` (no sync before each answer, as Kamailio's
    // in-memory registrar): its REGISTER rows against Kamailio's, round by round.
    if let (Some(c), Some(k)) = (c, k) {
        type Of = fn(&Step) -> Option<f64>;
        let rows: [(&str, &str, &str, &str, Of, Target); 4] = [
            (
                "per_cpu_s",
                "registrations per server CPU-second",
                "per CPU-s",
                "higher",
                |s| Some(s.per_server_cpu_s),
                Target::TimesKamailio(1.5),
            ),
            ("p99_ms", "p99 response time", "ms", "lower", |s| s.p99_ms, Target::VsKamailio),
            (
                "kernel_us",
                "server CPU per registration in the kernel (`perf` samples)",
                "µs",
                "lower",
                |s| cpu_split_us(s, true),
                Target::None,
            ),
            (
                "user_us",
                "server CPU per registration in user space (`perf` samples)",
                "µs",
                "lower",
                |s| cpu_split_us(s, false),
                Target::None,
            ),
        ];
        for (key, what, unit, better, g, target) in rows {
            let values = |r: &ServerResults| median(r.fixed_runs().iter().filter_map(|x| g(x.0)).collect());
            let ratios = round_ratios(c, k, |x| g(x.0));
            push(
                &mut out,
                &format!("sync_at_checkpoint_register_{key}"),
                format!(
                    "REGISTER with `storage.sync = \"checkpoint\"` (opt-in: the journal synced every 2 s, not before each \
                     200): {what} at {rate}/s{over}"
                ),
                unit,
                better,
                (values(c), None, values(k)),
                (median(ratios.clone()), spread(&ratios)),
                target,
            );
        }
    }
    // Parley with its TLS listener on (loads still over UDP: Debian's sipp has no TLS).
    let tls = |f: &dyn Fn(&ServerResults) -> Option<f64>| t.and_then(f);
    for (key, name, unit, v) in [
        (
            "tls_cold_start_ms",
            "Parley with TLS on: cold start (median, interleaved as above)",
            "ms",
            tls(&|r| r.cold_start_ms),
        ),
        (
            "tls_register_per_cpu_s",
            "Parley with TLS on: registrations per server CPU-second (UDP load)",
            "per CPU-s",
            tls(&|r| r.register_fixed.as_ref().map(|s| s.per_server_cpu_s)),
        ),
        (
            "tls_message_p99_ms",
            "Parley with TLS on: MESSAGE p99 response time (UDP load)",
            "ms",
            tls(&|r| r.message_fixed.as_ref().and_then(|s| s.p99_ms)),
        ),
    ] {
        out.push(Figure {
            key: key.into(),
            name: format!(
                "{name}{}",
                if key.contains("register") || key.contains("message") {
                    format!(" at {rate}/s")
                } else {
                    String::new()
                }
            ),
            unit: unit.into(),
            better: "info".into(),
            parley: v,
            baseline: None,
            kamailio: None,
            ratio: None,
            ratio_spread: None,
            target: (key == "tls_cold_start_ms").then(|| "< 100 ms".into()),
            meets_target: (key == "tls_cold_start_ms").then(|| v.map(|x| x < 100.0)).flatten(),
        });
    }
    out
}

/// A profiled step's server CPU per call in the kernel (or, with `false`, in user space), in µs.
fn cpu_split_us(s: &Step, kernel: bool) -> Option<f64> {
    let share = s.kernel_share?;
    let side = if kernel { share } else { 1.0 - share };
    Some(1e6 * s.cpu_s_per_call() * side)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// `a ≥ b` for ratios of measured figures, up to floating-point error: CPU-seconds come in clock
/// ticks, so a ratio is often exactly the target (0.09 CPU-s against 0.06 is 1.5), and division
/// may land it a hair below (a run on 2026-12-04 judged 1.4999999999999991 short of 1.5×).
fn at_least(a: f64, b: f64) -> bool {
    a >= b * (1.0 - 1e-9)
}

/// A figure of `a` over the same figure of `b`, run by run (the fixed-rate runs of the servers,
/// interleaved round by round).
fn round_ratios(a: &ServerResults, b: &ServerResults, g: impl Fn(&(&Step, &Step)) -> Option<f64>) -> Vec<f64> {
    paired_ratios(a.fixed_runs().iter().map(&g), b.fixed_runs().iter().map(&g))
}

/// `a` over `b`, run by run; a run without a figure on either side, or whose ratio is not finite
/// (a smoke run's short step can measure no CPU), is left out.
fn paired_ratios(a: impl IntoIterator<Item = Option<f64>>, b: impl IntoIterator<Item = Option<f64>>) -> Vec<f64> {
    a.into_iter().zip(b).filter_map(|(x, y)| Some(x? / y?)).filter(|r| r.is_finite()).collect()
}

/// The lowest and highest of several per-round ratios.
fn spread(ratios: &[f64]) -> Option<(f64, f64)> {
    (ratios.len() > 1).then(|| ratios.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r))))
}

/// Memory at `n` users: measured (with no failures), or extrapolated linearly from the two largest
/// clean measurements below it.
fn memory_at(points: &[Memory], n: usize) -> Option<u64> {
    if let Some(m) = points.iter().find(|m| m.users == n) {
        return (m.failed == 0).then_some(m.pss_bytes);
    }
    let mut clean: Vec<&Memory> = points.iter().filter(|m| m.failed == 0 && m.users > 0 && m.users < n).collect();
    clean.sort_by_key(|m| m.users);
    let [.., a, b] = clean.as_slice() else { return None };
    let slope = (b.pss_bytes as f64 - a.pss_bytes as f64) / (b.users - a.users) as f64;
    Some((b.pss_bytes as f64 + slope * (n - b.users) as f64).max(0.0) as u64)
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(x) if x.abs() >= 100.0 => thousands(x.round() as usize),
        Some(x) if x == x.round() => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
    }
}

pub fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    text.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
}

pub fn kamailio_version() -> Option<String> {
    first_line("kamailio", &["-v"])
}

pub fn sipp_version() -> Option<String> {
    first_line("sipp", &["-v"])
}

pub fn markdown(run: &Run, root: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks: Parley's Home Server and Kamailio, side by side\n");
    let _ = writeln!(
        s,
        "Generated by `make bench` (`bench/run.sh`, driver `bench/src`, results `bench/results/latest.json`).\n\
         Do not edit the tables by hand; the notes at the end come from `bench/NOTES.md`.\n"
    );
    let _ = writeln!(s, "- Date: {}", run.date);
    let _ = writeln!(s, "- Machine: {}", run.machine);
    let _ = writeln!(
        s,
        "- Servers pinned with `taskset -c {}`; sipp and the bench's UDP client on CPUs {}",
        run.server_cpus, run.sipp_cpus
    );
    let _ = writeln!(
        s,
        "- Kamailio: {} with {} UDP workers, {} MB shared memory, in-memory usrloc and presence (`bench/kamailio/kamailio.cfg`)",
        run.kamailio_version.as_deref().unwrap_or("not run"),
        run.kamailio_children,
        run.kamailio_shm_mb
    );
    let _ = writeln!(
        s,
        "- Parley: release build, UDP only (and again with its TLS listener on, and with the opt-in \
         `storage.sync = \"checkpoint\"`), durable state in redb (each change synced before its answer, but \
         with that opt-in setting)"
    );
    let kamailio_fe = run
        .servers
        .get("kamailio")
        .and_then(|r| r.frontend.as_ref())
        .map(|f| f.setup.clone())
        .unwrap_or_else(|| "not run".into());
    let _ = writeln!(
        s,
        "- Front-End row: Parley's `--role frontend` in front of two `--role home` over the internal mutual-TLS \
         link, against Kamailio: {kamailio_fe}; all three processes of a side on the server CPUs, CPU summed over them"
    );
    let _ = writeln!(s, "- Load generator: {}", run.sipp_version.as_deref().unwrap_or("sipp"));
    if let Some(d) = &run.disk_sync {
        let _ = writeln!(
            s,
            "- The disk under the servers' data: a {}-byte write in place then `fdatasync`, one every {} ms, {} \
             times: p50 {} ms, p99 {} ms, fastest {} ms (`bench/src/disk.rs`)",
            crate::disk::FRAME_BYTES,
            fmt(Some(d.every_ms)),
            thousands(d.syncs),
            fmt(Some(d.p50_ms)),
            fmt(Some(d.p99_ms)),
            fmt(Some(d.fastest_ms)),
        );
    }
    let _ = writeln!(
        s,
        "- Load average (1 min) at start {:.2}, at end {:.2}: the machine is shared{}; the run took {:.0} s\n",
        run.loadavg_start,
        run.loadavg_end,
        if run.loadavg_start > 1.0 || run.loadavg_end > 1.0 {
            " and was busy with other work, so absolute numbers are noisy; ratios measured in one run matter more"
        } else {
            ""
        },
        run.duration_s
    );
    if run.plan.smoke {
        let _ = writeln!(s, "**Smoke run: tiny loads, the numbers mean nothing.**\n");
    }
    let with_baseline = run.servers.contains_key("parley_baseline");
    if with_baseline {
        let _ = writeln!(
            s,
            "\"Parley (baseline)\" is a second Parley build (`--baseline`), measured in the same run on the same \
             fixed-rate REGISTER and MESSAGE loads and cold start (no ladders, fan-out or memory); \
             Parley/baseline above 1 means this build is higher.\n"
        );
        let _ = writeln!(
            s,
            "| figure | unit | Parley | Parley (baseline) | Parley/baseline | Kamailio | Parley/Kamailio | target | met |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|---|");
    } else {
        let _ = writeln!(s, "| figure | unit | Parley | Kamailio | Parley/Kamailio | target | met |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---|---|");
    }
    for f in &run.figures {
        let met = match f.meets_target {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let ratio = match (f.ratio, f.ratio_spread) {
            (Some(r), Some((lo, hi))) => format!("{r:.2} ({lo:.2} to {hi:.2})"),
            (Some(r), None) => format!("{r:.2}"),
            (None, _) => "n/a".into(),
        };
        let kam = if f.key.starts_with("tls_") { "".into() } else { fmt(f.kamailio) };
        let baseline = if with_baseline {
            let vs = match (f.parley, f.baseline) {
                (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
                _ => String::new(),
            };
            format!("{} | {vs} | ", f.baseline.map(|v| fmt(Some(v))).unwrap_or_default())
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {baseline}{} | {} | {} | {} |",
            f.name,
            f.unit,
            fmt(f.parley),
            kam,
            if f.key.starts_with("tls_") { "".into() } else { ratio },
            f.target.as_deref().unwrap_or(""),
            met
        );
    }
    let _ = writeln!(s, "\n![Throughput against offered rate](bench/results/throughput.svg)\n");
    let _ = writeln!(s, "## Rate ladders\n");
    let _ = writeln!(
        s,
        "Each step offers a fixed rate for {} s (bounded call count); a step is clean when every call succeeds \
         without retransmission and at least 95% of the offered rate is achieved. The ladder stops after the first \
         step that is not clean.\n",
        run.plan.step_secs
    );
    let _ = writeln!(
        s,
        "| server | load | offered/s | achieved/s | failed | retrans | p50 ms | p99 ms | server CPU-s | calls per CPU-s | sipp CPU-s |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let none = Vec::new();
    for (name, r) in &run.servers {
        let fe = r.frontend.as_ref().map(|f| &f.message_ladder).unwrap_or(&none);
        for (load, ladder) in
            [("REGISTER", &r.register_ladder), ("MESSAGE", &r.message_ladder), ("MESSAGE via Front-End", fe)]
        {
            for st in ladder {
                let _ = writeln!(
                    s,
                    "| {name} | {load} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} |",
                    st.offered_per_s,
                    st.achieved_per_s,
                    st.failed,
                    st.retransmissions,
                    fmt(st.p50_ms),
                    fmt(st.p99_ms),
                    st.server_cpu_s,
                    st.per_server_cpu_s,
                    st.sipp_cpu_s
                );
            }
        }
    }
    let _ = writeln!(s, "\n## Memory fill\n");
    let _ = writeln!(s, "| server | users | failed | PSS MiB | RSS MiB | fill time s |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (name, r) in &run.servers {
        for m in &r.memory {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {:.0} | {:.0} | {:.0} |",
                thousands(m.users),
                m.failed,
                mib(m.pss_bytes),
                mib(m.rss_bytes),
                m.fill_s
            );
        }
    }
    let shortfalls: Vec<&Figure> = run.figures.iter().filter(|f| f.meets_target == Some(false)).collect();
    let _ = writeln!(s, "\n## Where Parley falls short in this run\n");
    if shortfalls.is_empty() {
        let _ = writeln!(s, "Every target was met.");
    }
    for f in shortfalls {
        let _ = writeln!(
            s,
            "- {}: Parley {} {} against target {} (Kamailio {}{}).{}",
            f.name,
            fmt(f.parley),
            f.unit,
            f.target.as_deref().unwrap_or(""),
            fmt(f.kamailio),
            paired_verdict(f),
            what_the_sync_bounds(run, &f.key).map(|w| format!(" {w}")).unwrap_or_default()
        );
    }
    for f in run.figures.iter().filter(|f| f.parley.is_none() && f.better != "info") {
        let _ = writeln!(s, "- {}: no figure for Parley in this run.", f.name);
    }
    let notes = std::fs::read_to_string(root.join("bench/NOTES.md")).unwrap_or_default();
    if !notes.is_empty() {
        let _ = writeln!(s, "\n{}", notes.trim_end());
    }
    s
}

/// Where the verdict reads the median of per-round ratios, that ratio and its spread: the two
/// medians beside it can stand the other way round (2.089 against 2.090 ms, judged short at a
/// median per-round ratio of 1.06 on 2026-12-04).
fn paired_verdict(f: &Figure) -> String {
    match (f.ratio, f.ratio_spread) {
        (Some(r), Some((lo, hi))) => {
            format!("; Parley/Kamailio {r:.2}, the median of the per-round ratios, {lo:.2} to {hi:.2}")
        }
        _ => String::new(),
    }
}

/// For the durable REGISTER rows at the fixed rate: how much of the gap the sync before each 200
/// is, from the same run's `storage.sync = "checkpoint"` rows (no sync before the answer) and the
/// disk's sync timed alone, and the server's own journal syncs during the runs. A registration's
/// 200 waits for a whole sync; Kamailio's in-memory registrar waits for none.
fn what_the_sync_bounds(run: &Run, key: &str) -> Option<String> {
    let figure = |k: &str| run.figures.iter().find(|f| f.key == k);
    let per_registration_us = |v: Option<f64>| v.filter(|v| *v > 0.0).map(|v| 1e6 / v);
    match key {
        "register_per_cpu_s" => {
            let f = figure(key)?;
            let (parley, kamailio) = (per_registration_us(f.parley)?, per_registration_us(f.kamailio)?);
            let unsynced = figure("sync_at_checkpoint_register_per_cpu_s")?;
            let without_sync = per_registration_us(unsynced.parley)?;
            let share = if without_sync < parley {
                format!("the sync before each 200 accounts for {} µs of it", fmt(Some(parley - without_sync)))
            } else {
                "no less: the sync before each 200 is not what the gap is made of".to_string()
            };
            // The verdict without the sync, from the same rounds' paired ratios (the row's own
            // statistic; the µs above are medians of each server's runs, taken apart).
            let paired = match (unsynced.ratio, unsynced.meets_target) {
                (Some(r), Some(met)) => format!(
                    " Round by round against the same Kamailio runs, Parley without the sync reaches {r:.2}× \
                     (median of the per-round ratios{}): {}.",
                    unsynced.ratio_spread.map(|(lo, hi)| format!(", {lo:.2} to {hi:.2}")).unwrap_or_default(),
                    if met { "the target is met without it" } else { "short of the target even without it" }
                ),
                _ => String::new(),
            };
            Some(format!(
                "Per registration Parley spends {} µs of server CPU and Kamailio {}: 1.5× Kamailio would be {} µs. \
                 Without a sync before the 200 (`storage.sync = \"checkpoint\"`, same run) Parley spends {} µs, \
                 {share}.{paired}{}",
                fmt(Some(parley)),
                fmt(Some(kamailio)),
                fmt(Some(kamailio / 1.5)),
                fmt(Some(without_sync)),
                what_the_profile_shows(run, true).map(|w| format!(" {w}")).unwrap_or_default(),
            ))
        }
        "sync_at_checkpoint_register_per_cpu_s" => what_the_profile_shows(run, false),
        "register_p99_ms" => {
            let d = run.disk_sync.as_ref()?;
            let without_sync = figure("sync_at_checkpoint_register_p99_ms")?.parley?;
            // Each durable 200 waits for the same work as without the sync, plus a whole sync: at
            // least the fastest one, so the p99 is at least the sync-free p99 plus that.
            let floor = without_sync + d.fastest_ms;
            let (measured, kamailio) = (figure(key)?.parley, figure(key)?.kamailio);
            let verdict = match kamailio {
                Some(k) if floor > k => format!(
                    ", more than Kamailio's {}: with a sync before each 200 on this disk, this row can be met only \
                     once the path without the sync answers within {} ms at p99",
                    fmt(Some(k)),
                    fmt(Some(k - d.fastest_ms))
                ),
                Some(k) => format!(", within Kamailio's {}", fmt(Some(k))),
                None => String::new(),
            };
            let (fastest, sync_free) = (fmt(Some(d.fastest_ms)), fmt(Some(without_sync)));
            Some(format!(
                "The 200 waits for the sync: {} ms median, {} ms p99, never less than {fastest} ms on this disk \
                 alone; without it (`storage.sync = \"checkpoint\"`, same run) Parley's p99 is {sync_free} ms. So \
                 with it, Parley's p99 is at least {sync_free} + {fastest} = {} ms{verdict}.{}{}",
                fmt(Some(d.p50_ms)),
                fmt(Some(d.p99_ms)),
                fmt(Some(floor)),
                what_one_sync_adds(run, d, measured, kamailio).map(|w| format!(" {w}")).unwrap_or_default(),
                what_the_journal_syncs_show(run).map(|w| format!(" {w}")).unwrap_or_default(),
            ))
        }
        _ => None,
    }
}

/// For the durable REGISTER p99 row: the p99 the sync-free runs would have with one of the disk's
/// timed syncs added to each response time (every pair; per round, then the median), beside the
/// p99 measured with the sync and Kamailio's. Above Kamailio's, the sync-free path and the disk
/// account for the shortfall; within it, something the runs add beyond the disk timed alone does.
fn what_one_sync_adds(run: &Run, disk: &DiskSync, measured: Option<f64>, kamailio: Option<f64>) -> Option<String> {
    let rounds = run.servers.get("parley_sync_at_checkpoint")?.fixed_runs();
    let estimate = median(rounds.iter().filter_map(|(r, _)| disk.percentile_with_a_sync(&r.rtt_ms, 99.0)).collect())?;
    let against = match kamailio {
        Some(k) if estimate > k => format!(
            "; more than Kamailio's {}: on this disk, Parley's sync-free path and one sync before each 200 are \
             enough to miss the row",
            fmt(Some(k))
        ),
        Some(k) => format!(
            "; within Kamailio's {}: the rest of the gap is what the runs add to the disk timed alone",
            fmt(Some(k))
        ),
        None => String::new(),
    };
    Some(format!(
        "One of the disk's timed syncs added to each sync-free response time (every pair, the median over the \
         rounds) gives a p99 of {} ms, against {} ms measured with the sync{against}.",
        fmt(Some(estimate)),
        fmt(measured),
    ))
}

/// For the durable REGISTER p99 row: how long Parley's journal syncs took during its fixed-rate
/// REGISTER runs (the server's own histogram), and each run's slowest sync beside its p99. The
/// disk timed alone, before the servers run, cannot show a stall that comes during a run.
fn what_the_journal_syncs_show(run: &Run) -> Option<String> {
    let runs: Vec<&Step> = run.servers.get("parley")?.fixed_runs().into_iter().map(|(r, _)| r).collect();
    let timed: Vec<(&crate::syncs::SyncTimes, f64)> =
        runs.iter().filter_map(|r| Some((r.journal_syncs.as_ref()?, r.p99_ms?))).collect();
    let all = timed.iter().map(|(s, _)| (*s).clone()).reduce(|all, s| all.plus(&s))?;
    let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v}"));
    let list = |v: Vec<String>| match v.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => v.concat(),
    };
    Some(format!(
        "During its {} fixed-rate REGISTER runs Parley's journal synced {} times \
         (`parley_store_journal_sync_seconds`): half within {} ms, 99% within {} ms. The slowest sync of \
         each run took more than {} ms; the runs' p99 response times were {} ms.",
        timed.len(),
        thousands(all.count() as usize),
        ms(all.within_ms(0.5)),
        ms(all.within_ms(0.99)),
        list(timed.iter().map(|(s, _)| ms(s.slowest_above_ms())).collect()),
        list(timed.iter().map(|(_, p99)| fmt(Some(*p99))).collect()),
    ))
}

/// For a REGISTER CPU shortfall at the fixed rate (durable, or with `storage.sync =
/// "checkpoint"`): the profile's kernel and user-space time per registration against Kamailio's,
/// and whether Parley's kernel time alone already exceeds what the target allows in all. That
/// kernel time is the datagrams' (received, answered, a sleeping thread woken for each: Kamailio
/// pays the same) and, durable, the sync's.
fn what_the_profile_shows(run: &Run, durable: bool) -> Option<String> {
    let figure = |k: &str| run.figures.iter().find(|f| f.key == k);
    let prefix = if durable { "" } else { "sync_at_checkpoint_" };
    let budget = 1e6 / figure(&format!("{prefix}register_per_cpu_s"))?.kamailio.filter(|v| *v > 0.0)? / 1.5;
    let kernel = figure(&format!("{prefix}register_kernel_us"))?;
    let user = figure(&format!("{prefix}register_user_us"))?;
    let (pk, pu, kk, ku) = (kernel.parley?, user.parley?, kernel.kamailio?, user.kamailio?);
    let sync = if durable {
        figure("sync_at_checkpoint_register_kernel_us")
            .and_then(|f| f.parley)
            .map(|unsynced| format!(" (the same build without the sync: {} µs in the kernel)", fmt(Some(unsynced))))
            .unwrap_or_default()
    } else {
        String::new()
    };
    let verdict = if pk >= budget {
        format!(
            "Parley's kernel time alone is more than the {} µs the target allows for everything: no saving in \
             user space can meet it, only less kernel work per registration{}.",
            fmt(Some(budget)),
            if durable { " (fewer syncs: a sync shared by several registrations, or none before the 200)" } else { "" }
        )
    } else {
        format!(
            "The target leaves {} µs of user space after Parley's kernel time: {:.0}% of what Parley spends there, \
             {:.0}% of Kamailio's.",
            fmt(Some(budget - pk)),
            100.0 * (budget - pk) / pu,
            100.0 * (budget - pk) / ku
        )
    };
    Some(format!(
        "Profiled (`perf`, the same runs, medians): per registration Kamailio spends {} µs in the kernel and {} in \
         user space, Parley{} {} in the kernel{sync} and {} in user space. {verdict}",
        fmt(Some(kk)),
        fmt(Some(ku)),
        if durable { "" } else { " without the sync" },
        fmt(Some(pk)),
        fmt(Some(pu)),
    ))
}

static NO_STEPS: Vec<Step> = Vec::new();

/// A chart line: name, colour, dash pattern, points.
type Series = (String, &'static str, &'static str, Vec<(f64, f64)>);

/// Achieved against offered rate for each server and load, as an SVG line chart.
pub fn chart(run: &Run) -> String {
    let series: Vec<Series> = run
        .servers
        .iter()
        .flat_map(|(name, r)| {
            let color = if name == "kamailio" { "#d62728" } else { "#1f77b4" };
            let fe = r.frontend.as_ref().map(|f| &f.message_ladder).unwrap_or(&NO_STEPS);
            [
                (format!("{name} REGISTER"), color, "", &r.register_ladder),
                (format!("{name} MESSAGE"), color, "6,4", &r.message_ladder),
                (format!("{name} MESSAGE via FE"), color, "2,3", fe),
            ]
        })
        .filter(|(_, _, _, l)| !l.is_empty())
        .map(|(n, c, d, l)| (n, c, d, l.iter().map(|s| (s.offered_per_s as f64, s.achieved_per_s)).collect()))
        .collect();
    let max = series.iter().flat_map(|s| s.3.iter().flat_map(|(x, y)| [*x, *y])).fold(100.0f64, f64::max);
    let max = nice(max);
    let (w, h, left, right, top, bottom) = (760.0, 480.0, 80.0, 200.0, 40.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let x = |v: f64| left + v / max * pw;
    let y = |v: f64| top + ph - v / max * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(s, "<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">Throughput against offered rate ({})</text>",
        left + pw / 2.0,
        run.date
    );
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{4}</text>\
             <line x1=\"{5:.1}\" y1=\"{top}\" x2=\"{5:.1}\" y2=\"{6:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{5:.1}\" y=\"{7:.1}\" text-anchor=\"middle\">{4}</text>",
            y(v),
            left + pw,
            left - 6.0,
            y(v) + 4.0,
            thousands(v as usize),
            x(v),
            top + ph,
            top + ph + 18.0
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"2,3\"/>",
        x(0.0),
        y(0.0),
        x(max),
        y(max)
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">offered rate (calls/s)</text>\
         <text x=\"18\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {:.1})\">achieved (successful calls/s)</text>",
        left + pw / 2.0,
        h - 15.0,
        top + ph / 2.0,
        top + ph / 2.0
    );
    for (i, (name, color, dash, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts.iter().map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b))).collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\" points=\"{}\"/>",
            path.join(" ")
        );
        for (a, b) in pts {
            let _ = writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>", x(*a), y(*b));
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            s,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>\
             <text x=\"{}\" y=\"{}\">{name}</text>",
            lx + 25.0,
            lx + 30.0,
            ly + 4.0
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn nice(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_and_nice() {
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(nice(7300.0), 10000.0);
        assert_eq!(nice(2100.0), 2500.0);
    }

    fn step(offered_per_s: u32, clean: bool) -> Step {
        Step {
            offered_per_s,
            calls: 0,
            successful: 0,
            failed: 0,
            retransmissions: 0,
            achieved_per_s: 0.0,
            elapsed_s: 4.0,
            server_cpu_s: f64::from(offered_per_s) / 1000.0,
            sipp_cpu_s: 0.0,
            per_server_cpu_s: 0.0,
            p50_ms: None,
            p99_ms: None,
            clean,
            udp_rcvbuf_errors: 0,
            kernel_share: None,
            journal_syncs: None,
            rtt_ms: Vec::new(),
        }
    }

    /// A ratio of two highest clean rates means something only when the one-CPU ladder found
    /// its limit; the server's CPU at the top steps shows how much of the CPUs it used.
    #[test]
    fn scaling_is_blank_unless_the_one_cpu_ladder_failed() {
        let parley = |one: Vec<Step>, all: Vec<Step>| {
            let all_cpus = AllCpus {
                cpus: "0-1".into(),
                register_fixed: step(1000, true),
                message_fixed: step(1000, true),
                register_ladder: all,
                message_ladder: Vec::new(),
            };
            let r = ServerResults { register_ladder: one, all_cpus: Some(all_cpus), ..Default::default() };
            let results = BTreeMap::from([("parley".to_string(), r)]);
            let figures = figures(&results, &Plan::smoke());
            let value = |key: &str| figures.iter().find(|f| f.key == key).and_then(|f| f.parley);
            (
                value("register_all_cpus_scaling"),
                value("register_server_cpu_at_max"),
                value("register_server_cpu_at_max_all_cpus"),
            )
        };
        let top_clean = parley(vec![step(1000, true), step(2000, true)], vec![step(1000, true), step(2000, true)]);
        assert_eq!(top_clean, (None, Some(0.5), Some(0.5)));
        let limit_found = parley(vec![step(1000, true), step(2000, false)], vec![step(1000, true), step(2000, true)]);
        assert_eq!(limit_found, (Some(2.0), Some(0.25), Some(0.5)));
    }

    /// The memory target is read once the fill's transactions have expired, when that was
    /// measured; the figure right after the fill stays as information beside it.
    #[test]
    fn the_memory_target_reads_the_million_users_after_the_fill_settled() {
        let mib = |m: u64| m * 1048576;
        let point = |users, pss, settled: Option<u64>| Memory {
            users,
            failed: 0,
            pss_bytes: mib(pss),
            rss_bytes: mib(pss),
            fill_s: 1.0,
            settled_pss_bytes: settled.map(mib),
        };
        let plan =
            Plan { memory_sizes: vec![100_000, 1_000_000], memory_report: vec![100_000, 1_000_000], ..Plan::smoke() };
        let verdicts = |settled: Option<u64>| {
            let memory = vec![point(100_000, 600, None), point(1_000_000, 2100, settled)];
            let results = BTreeMap::from([("parley".to_string(), ServerResults { memory, ..Default::default() })]);
            let figures = figures(&results, &plan);
            let row = |key: &str| figures.iter().find(|f| f.key == key).map(|f| (f.parley, f.meets_target));
            (row("memory_1000000_mib"), row("memory_1000000_settled_mib"))
        };
        // Right after the fill 2,100 MiB; with its transactions expired 1,600: the target is met.
        assert_eq!(verdicts(Some(1600)), (Some((Some(2100.0), None)), Some((Some(1600.0), Some(true)))));
        assert_eq!(verdicts(Some(2050)).1, Some((Some(2050.0), Some(false))));
        // Not measured after the fill: the fill's figure carries the target.
        assert_eq!(verdicts(None), (Some((Some(2100.0), Some(false))), None));
    }

    /// The fixed-rate verdicts read the ratio within each round (both servers measured back to
    /// back), not the ratio of the two medians: a slow stretch that hits Parley's runs in one
    /// round and Kamailio's in another must not decide the row.
    #[test]
    fn a_fixed_rate_ratio_is_the_median_of_the_per_round_ratios() {
        // Server CPU-seconds for 1,000 registrations, round by round.
        let with_cpu = |cpu: [f64; 3]| {
            let run = |c: f64| {
                let s = Step { successful: 1000, server_cpu_s: c, per_server_cpu_s: 1000.0 / c, ..step(1000, true) };
                (s.clone(), s)
            };
            let (main, rounds) = (run(cpu[0]), vec![run(cpu[1]), run(cpu[2])]);
            ServerResults { register_fixed: Some(main.0), message_fixed: Some(main.1), rounds, ..Default::default() }
        };
        // Per round Parley does 1.6, 1.6 and 1.0 times Kamailio's registrations per CPU-second;
        // the medians (0.5 against 0.7) would say 1.4.
        let parley = with_cpu([0.5, 0.4, 0.7]);
        let kamailio = with_cpu([0.8, 0.64, 0.7]);
        let results = BTreeMap::from([("parley".to_string(), parley), ("kamailio".to_string(), kamailio)]);
        let figures = figures(&results, &Plan::smoke());
        let row = figures.iter().find(|f| f.key == "register_per_cpu_s").expect("the row");
        assert_eq!((row.parley, row.kamailio), (Some(2000.0), Some(1000.0 / 0.7)));
        let ratio = row.ratio.expect("a ratio");
        assert!((ratio - 1.6).abs() < 1e-9, "ratio {ratio}");
        assert_eq!(row.meets_target, Some(true));
        let (lo, hi) = row.ratio_spread.expect("a spread");
        assert!((lo - 1.0).abs() < 1e-9 && (hi - 1.6).abs() < 1e-9, "spread {lo} to {hi}");
    }

    /// A ratio that is the target but for floating-point error meets it; one a little below
    /// does not.
    #[test]
    fn a_ratio_at_the_target_up_to_rounding_meets_it() {
        let verdict = |parley_cpu: f64, kamailio_cpu: f64| {
            let run = |c: f64| {
                let s = Step { successful: 1000, server_cpu_s: c, per_server_cpu_s: 1000.0 / c, ..step(1000, true) };
                ServerResults { register_fixed: Some(s.clone()), message_fixed: Some(s), ..Default::default() }
            };
            let results = BTreeMap::from([("parley".into(), run(parley_cpu)), ("kamailio".into(), run(kamailio_cpu))]);
            let figures = figures(&results, &Plan::smoke());
            let row = figures.iter().find(|f| f.key == "message_per_cpu_s").expect("the row");
            (row.ratio.expect("a ratio"), row.meets_target)
        };
        // 0.14 CPU-s against 0.21: 1.5 exactly, computed as 1.4999999999999998.
        let (ratio, met) = verdict(0.14, 0.21);
        assert!(ratio < 1.5 && (ratio - 1.5).abs() < 1e-12, "{ratio}");
        assert_eq!(met, Some(true));
        assert_eq!(verdict(0.15, 0.21).1, Some(false));
    }

    /// The Front-End row is read as the fixed-rate rows are: medians over its runs, the ratio the
    /// median of the per-round ratios, failures the most in one run.
    #[test]
    fn the_front_end_row_reads_its_interleaved_runs() {
        let with_cpu = |cpu: [f64; 3], failed: u64| {
            let run =
                |c: f64| Step { successful: 1000, server_cpu_s: c, per_server_cpu_s: 1000.0 / c, ..step(1000, true) };
            let frontend = FrontEndResults {
                message_fixed: Some(run(cpu[0])),
                rounds: vec![run(cpu[1]), Step { failed, ..run(cpu[2]) }],
                ..Default::default()
            };
            ServerResults { frontend: Some(frontend), ..Default::default() }
        };
        // Per round Parley does 1.6, 1.6 and 0.8 times Kamailio's messages per CPU-second; the
        // main run alone would say 0.8 (a slow moment for Parley's run).
        let parley = with_cpu([0.5, 0.25, 0.35], 2);
        let kamailio = with_cpu([0.4, 0.4, 0.56], 0);
        let results = BTreeMap::from([("parley".to_string(), parley), ("kamailio".to_string(), kamailio)]);
        let figures = figures(&results, &Plan::smoke());
        let row = |key: &str| figures.iter().find(|f| f.key == key).expect("the row");
        let cpu = row("frontend_message_per_cpu_s");
        assert_eq!((cpu.parley, cpu.kamailio), (Some(1000.0 / 0.35), Some(1000.0 / 0.4)));
        assert!((cpu.ratio.expect("a ratio") - 1.6).abs() < 1e-9, "{:?}", cpu.ratio);
        assert_eq!(cpu.meets_target, Some(true));
        assert!(cpu.name.contains("median of 3 interleaved runs"), "{}", cpu.name);
        assert_eq!(row("frontend_message_failed_fixed").parley, Some(2.0));
    }

    /// The highest clean steps are run again in every interleaved round, and their verdict reads
    /// the ratio within each round where both servers' runs were clean: a single ladder each, at
    /// different moments, flipped the verdict from one run to the next (1.78 then 1.48).
    #[test]
    fn the_highest_clean_step_ratio_is_the_median_of_the_clean_rounds() {
        // Messages per server CPU-second at the highest clean step: the ladder's, then each round's
        // (`None`: that round's step was not clean).
        let with = |per_cpu: [Option<f64>; 5]| {
            let at = |p: Option<f64>| Step { per_server_cpu_s: p.unwrap_or(1.0), ..step(10_000, p.is_some()) };
            let top_rounds = per_cpu[1..].iter().map(|&p| (at(Some(1.0)), at(p))).collect();
            ServerResults { message_ladder: vec![at(per_cpu[0])], top_rounds, ..Default::default() }
        };
        // Per round 1.4 (the ladder's alone would say short), (not clean), 2.0, 1.6 and (no CPU
        // measured for Kamailio's step, as in a smoke run's short steps) times Kamailio's: the
        // unclean round and the infinite ratio are left out.
        let parley = with([Some(14.0), None, Some(20.0), Some(16.0), Some(12.0)]);
        let kamailio = with([Some(10.0), Some(10.0), Some(10.0), Some(10.0), Some(0.0)]);
        let results = BTreeMap::from([("parley".to_string(), parley), ("kamailio".to_string(), kamailio)]);
        let figures = figures(&results, &Plan::smoke());
        let row = figures.iter().find(|f| f.key == "message_per_cpu_s_at_max").expect("the row");
        assert!(row.name.contains("median of 5"), "{}", row.name);
        assert_eq!((row.parley, row.kamailio), (Some(16.0), Some(10.0)));
        let ratio = row.ratio.expect("a ratio");
        assert!((ratio - 1.6).abs() < 1e-9, "ratio {ratio}");
        assert_eq!(row.meets_target, Some(true));
        let (lo, hi) = row.ratio_spread.expect("a spread");
        assert!((lo - 1.4).abs() < 1e-9 && (hi - 2.0).abs() < 1e-9, "spread {lo} to {hi}");
    }

    fn run_with(figures: Vec<Figure>, disk_sync: Option<DiskSync>) -> Run {
        Run {
            date: String::new(),
            machine: String::new(),
            kamailio_version: None,
            sipp_version: None,
            server_cpus: "0".into(),
            sipp_cpus: "1".into(),
            kamailio_children: 2,
            kamailio_shm_mb: 2048,
            loadavg_start: 0.0,
            loadavg_end: 0.0,
            duration_s: 0.0,
            plan: Plan::smoke(),
            figures,
            disk_sync,
            servers: BTreeMap::new(),
        }
    }

    fn figure(key: &str, parley: f64, kamailio: f64) -> Figure {
        Figure {
            key: key.into(),
            name: key.into(),
            unit: String::new(),
            better: "higher".into(),
            parley: Some(parley),
            baseline: None,
            kamailio: Some(kamailio),
            ratio: None,
            ratio_spread: None,
            target: None,
            meets_target: Some(false),
        }
    }

    #[test]
    fn a_durable_register_shortfall_says_what_the_measured_sync_leaves_of_the_target() {
        let figures = vec![
            figure("register_per_cpu_s", 11_494.0, 11_765.0),
            figure("sync_at_checkpoint_register_per_cpu_s", 16_129.0, 11_765.0),
            figure("register_p99_ms", 1.574, 1.332),
            figure("sync_at_checkpoint_register_p99_ms", 0.977, 1.332),
        ];
        let disk =
            DiskSync { syncs: 2000, every_ms: 1.0, p50_ms: 0.17, p99_ms: 0.3, fastest_ms: 0.12, sorted_ms: vec![] };
        let run = run_with(figures, Some(disk.clone()));
        let cpu = what_the_sync_bounds(&run, "register_per_cpu_s").expect("explained");
        for part in [
            "Parley spends 87.0 µs",
            "Kamailio 85.0: 1.5× Kamailio would be 56.7 µs",
            "Parley spends 62.0 µs",
            "accounts for 25.0 µs",
        ] {
            assert!(cpu.contains(part), "{part:?} not in {cpu:?}");
        }
        let p99 = what_the_sync_bounds(&run, "register_p99_ms").expect("explained");
        for part in [
            "0.170 ms median",
            "0.300 ms p99",
            "never less than 0.120 ms",
            "p99 is 0.977 ms",
            "at least 0.977 + 0.120 = 1.097 ms, within Kamailio's 1.332.",
        ] {
            assert!(p99.contains(part), "{part:?} not in {p99:?}");
        }
        // A sync-free p99 that leaves less than the fastest sync below Kamailio's: what it would take.
        let mut beyond = run.figures.clone();
        beyond[3].parley = Some(1.25);
        let p99 = what_the_sync_bounds(&run_with(beyond, Some(disk)), "register_p99_ms").expect("explained");
        assert!(
            p99.contains(
                "at least 1.250 + 0.120 = 1.370 ms, more than Kamailio's 1.332: with a sync before each 200 on this \
                 disk, this row can be met only once the path without the sync answers within 1.212 ms at p99."
            ),
            "{p99}"
        );
        assert!(what_the_sync_bounds(&run, "message_p99_ms").is_none());
        let markdown = markdown(&run, Path::new("/nonexistent"));
        assert!(
            markdown
                .contains(&format!("- register_per_cpu_s: Parley 11,494  against target  (Kamailio 11,765). {cpu}"))
        );
        assert!(markdown.contains("one every 1 ms, 2,000 times: p50 0.170 ms, p99 0.300 ms, fastest 0.120 ms"));
        // Without the disk's figures there is nothing to say of the response time.
        let mut figures = run.figures;
        assert!(what_the_sync_bounds(&run_with(figures.clone(), None), "register_p99_ms").is_none());
        // No paired ratio for the row without the sync: nothing said of it.
        assert!(!cpu.contains("Round by round"), "{cpu}");
        // With one, its verdict, whichever it is.
        (figures[1].ratio, figures[1].ratio_spread, figures[1].meets_target) =
            (Some(1.59), Some((1.1, 1.72)), Some(false));
        // A verdict read from per-round ratios gives them: the medians alone may say otherwise.
        let text = super::markdown(&run_with(figures.clone(), None), Path::new("/nonexistent"));
        assert!(
            text.contains(
                "- sync_at_checkpoint_register_per_cpu_s: Parley 16,129  against target  (Kamailio 11,765; \
                 Parley/Kamailio 1.59, the median of the per-round ratios, 1.10 to 1.72)."
            ),
            "{text}"
        );
        figures[1].meets_target = Some(true);
        let cpu = what_the_sync_bounds(&run_with(figures.clone(), None), "register_per_cpu_s").expect("explained");
        assert!(
            cpu.contains("reaches 1.59× (median of the per-round ratios, 1.10 to 1.72): the target is met without it"),
            "{cpu}"
        );
        (figures[1].ratio, figures[1].meets_target) = (Some(1.31), Some(false));
        let cpu = what_the_sync_bounds(&run_with(figures.clone(), None), "register_per_cpu_s").expect("explained");
        assert!(
            cpu.contains(
                "reaches 1.31× (median of the per-round ratios, 1.10 to 1.72): short of the target even without it"
            ),
            "{cpu}"
        );
        // A run where going without the sync saved nothing says so.
        figures[1].parley = Some(10_000.0);
        let cpu = what_the_sync_bounds(&run_with(figures, None), "register_per_cpu_s").expect("explained");
        assert!(cpu.contains("100 µs, no less: the sync before each 200 is not what the gap is made of"), "{cpu}");
    }
    /// The durable p99 row gives the p99 of the sync-free runs with one of the disk's syncs added,
    /// the median over the rounds, against the measured p99 and Kamailio's.
    #[test]
    fn a_durable_register_p99_shortfall_gives_the_sync_free_runs_with_a_sync_added() {
        let figures =
            vec![figure("register_p99_ms", 0.9, 0.45), figure("sync_at_checkpoint_register_p99_ms", 0.4, 0.45)];
        let disk =
            DiskSync { syncs: 2, every_ms: 1.0, p50_ms: 0.1, p99_ms: 0.2, fastest_ms: 0.1, sorted_ms: vec![0.1, 0.2] };
        let mut run = run_with(figures, Some(disk));
        // Per round, with syncs of 0.1 and 0.2 ms: p99s of 0.7, 0.8 and 0.4 ms (p50s 0.5, 0.7, 0.3).
        let with = |rtt_ms: Vec<f64>| Step { rtt_ms, ..step(1000, true) };
        let mut uneven = vec![0.3; 90];
        uneven.extend([0.5; 10]);
        let unsynced = ServerResults {
            register_fixed: Some(with(uneven)),
            message_fixed: Some(step(1000, true)),
            rounds: vec![(with(vec![0.6; 100]), step(1000, true)), (with(vec![0.2; 100]), step(1000, true))],
            ..Default::default()
        };
        run.servers.insert("parley_sync_at_checkpoint".into(), unsynced);
        let p99 = what_the_sync_bounds(&run, "register_p99_ms").expect("explained");
        assert!(
            p99.contains(
                "gives a p99 of 0.700 ms, against 0.900 ms measured with the sync; more than Kamailio's 0.450: on \
                 this disk, Parley's sync-free path and one sync before each 200 are enough to miss the row."
            ),
            "{p99}"
        );
        run.figures[0].kamailio = Some(0.75);
        let p99 = what_the_sync_bounds(&run, "register_p99_ms").expect("explained");
        assert!(
            p99.contains("0.700 ms, against 0.900 ms measured with the sync; within Kamailio's 0.750: the rest"),
            "{p99}"
        );
        // No sync-free runs: nothing said of them.
        run.servers.clear();
        let p99 = what_the_sync_bounds(&run, "register_p99_ms").expect("explained");
        assert!(!p99.contains("timed syncs added"), "{p99}");
    }

    /// The durable p99 row says how long the journal's syncs took during Parley's runs, and each
    /// run's slowest beside its p99.
    #[test]
    fn a_durable_register_p99_shortfall_gives_the_journal_syncs_of_the_runs() {
        let figures = vec![figure("register_p99_ms", 3.9, 1.2), figure("sync_at_checkpoint_register_p99_ms", 0.7, 1.2)];
        let disk =
            DiskSync { syncs: 2000, every_ms: 1.0, p50_ms: 0.1, p99_ms: 0.18, fastest_ms: 0.07, sorted_ms: vec![] };
        let mut run = run_with(figures, Some(disk));
        // Syncs by upper bound (s): a run whose slowest took 10 to 25 ms, one all within 0.25 ms.
        let times = |counts: [u64; 4]| crate::syncs::SyncTimes {
            buckets: [0.0001, 0.00025, 0.01, 0.025]
                .into_iter()
                .zip(counts)
                .chain([(f64::INFINITY, counts[3])])
                .collect(),
        };
        let with = |p99: f64, syncs: crate::syncs::SyncTimes| Step {
            p99_ms: Some(p99),
            journal_syncs: Some(syncs),
            ..step(1000, true)
        };
        let (slow, quick) = (with(12.26, times([10, 97, 99, 100])), with(1.0, times([50, 100, 100, 100])));
        let parley = ServerResults {
            register_fixed: Some(slow),
            message_fixed: Some(step(1000, true)),
            rounds: vec![(quick, step(1000, true))],
            ..Default::default()
        };
        run.servers.insert("parley".into(), parley);
        let p99 = what_the_sync_bounds(&run, "register_p99_ms").expect("explained");
        for part in [
            "During its 2 fixed-rate REGISTER runs Parley's journal synced 200 times",
            "half within 0.25 ms",
            "99% within 10 ms",
            "The slowest sync of each run took more than 10 and 0.1 ms",
            "the runs' p99 response times were 12.3 and 1 ms.",
        ] {
            assert!(p99.contains(part), "{part:?} not in {p99:?}");
        }
        // No syncs timed (Kamailio, an older build): nothing said of them.
        run.servers.get_mut("parley").unwrap().register_fixed.as_mut().unwrap().journal_syncs = None;
        run.servers.get_mut("parley").unwrap().rounds[0].0.journal_syncs = None;
        let p99 = what_the_sync_bounds(&run, "register_p99_ms").expect("explained");
        assert!(!p99.contains("journal synced"), "{p99}");
    }

    /// The profile's split of a registration's CPU: its rows, and what they say of a REGISTER
    /// CPU shortfall (whether Parley's kernel time alone is more than the target allows).
    #[test]
    fn a_register_cpu_shortfall_says_whether_the_kernel_time_alone_exceeds_the_target() {
        // 1,000 registrations a run, server CPU-seconds and the kernel's share of them.
        let with = |cpu: f64, kernel_share: f64| {
            let s = Step {
                successful: 1000,
                server_cpu_s: cpu,
                per_server_cpu_s: 1000.0 / cpu,
                kernel_share: Some(kernel_share),
                journal_syncs: None,
                ..step(1000, true)
            };
            ServerResults { register_fixed: Some(s.clone()), message_fixed: Some(s), ..Default::default() }
        };
        // Kamailio 90.3 µs a registration (30.1 in the kernel): the target allows 60.2 in all.
        let kamailio = with(0.0903, 1.0 / 3.0);
        // Durable: 64.3 µs in the kernel, 28.2 in user space; without the sync 28.1 and 32.4.
        let durable = with(0.0925, 64.3 / 92.5);
        let unsynced = with(0.0605, 28.1 / 60.5);
        let results = BTreeMap::from([
            ("parley".to_string(), durable),
            ("kamailio".to_string(), kamailio),
            ("parley_sync_at_checkpoint".to_string(), unsynced),
        ]);
        let run = run_with(figures(&results, &Plan::smoke()), None);
        let value = |key: &str| {
            let f = run.figures.iter().find(|f| f.key == key).unwrap_or_else(|| panic!("no row {key}"));
            (f.parley.expect("Parley's"), f.kamailio.expect("Kamailio's"))
        };
        let close = |(a, b): (f64, f64), (x, y): (f64, f64)| (a - x).abs() < 1e-6 && (b - y).abs() < 1e-6;
        assert!(close(value("register_kernel_us"), (64.3, 30.1)), "{:?}", value("register_kernel_us"));
        assert!(close(value("register_user_us"), (28.2, 60.2)), "{:?}", value("register_user_us"));
        assert!(close(value("sync_at_checkpoint_register_kernel_us"), (28.1, 30.1)));
        // Durable, short: the kernel time alone (64.3 µs) is more than the 60.2 allowed.
        let durable = what_the_sync_bounds(&run, "register_per_cpu_s").expect("explained");
        for part in [
            "Kamailio spends 30.1 µs in the kernel and 60.2 in user space, Parley 64.3 in the kernel",
            "(the same build without the sync: 28.1 µs in the kernel) and 28.2 in user space",
            "more than the 60.2 µs the target allows for everything",
        ] {
            assert!(durable.contains(part), "{part:?} not in {durable:?}");
        }
        // Without the sync: 32.1 µs of user space would meet it; the text says what is left.
        let unsynced = what_the_sync_bounds(&run, "sync_at_checkpoint_register_per_cpu_s").expect("explained");
        for part in
            ["Parley without the sync 28.1 in the kernel and 32.4 in user space", "leaves 32.1 µs of user space"]
        {
            assert!(unsynced.contains(part), "{part:?} not in {unsynced:?}");
        }
        assert!(unsynced.contains(": 99% of what Parley spends there, 53% of Kamailio's."), "{unsynced}");
        // Not profiled (no perf): no rows, nothing said of it.
        let mut results = results;
        for r in results.values_mut() {
            r.register_fixed.as_mut().expect("a run").kernel_share = None;
        }
        let run = run_with(figures(&results, &Plan::smoke()), None);
        let kernel = run.figures.iter().find(|f| f.key == "register_kernel_us").expect("the row");
        assert_eq!((kernel.parley, kernel.kamailio), (None, None));
        assert_eq!(what_the_sync_bounds(&run, "sync_at_checkpoint_register_per_cpu_s"), None);
    }
}
