//! Prometheus metrics of one operator instance, rendered in the text exposition format.
//!
//! Kept per instance (not global) so that two operators in one test process report separately.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the reconcile-duration histogram buckets.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    started: BTreeMap<String, u64>,
    reconciles: BTreeMap<(String, &'static str), u64>,
    errors: BTreeMap<(String, String), u64>,
    durations: BTreeMap<String, Histogram>,
    leader: bool,
    ready: bool,
    /// (namespace, domain) -> (Secret, expiry in Unix seconds).
    certificates: BTreeMap<(String, String), Vec<(String, i64)>>,
}

/// Counters, histograms and gauges of one operator instance.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Records that a reconcile of `kind` began (see [`Self::observe`] for its end).
    pub fn start(&self, kind: &str) {
        *self.inner.lock().expect("metrics lock").started.entry(kind.to_string()).or_default() += 1;
    }

    /// Reconciles of `kind` begun so far, finished or not.
    pub fn started(&self, kind: &str) -> u64 {
        self.inner.lock().expect("metrics lock").started.get(kind).copied().unwrap_or(0)
    }

    /// Records one reconcile of `kind`: its duration and whether it succeeded.
    pub fn observe(&self, kind: &str, took: Duration, ok: bool) {
        let mut m = self.inner.lock().expect("metrics lock");
        *m.reconciles.entry((kind.to_string(), if ok { "success" } else { "error" })).or_default() += 1;
        let h = m.durations.entry(kind.to_string()).or_default();
        let secs = took.as_secs_f64();
        h.count += 1;
        h.sum += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
    }

    /// Counts a failed reconcile of `kind` by the error's class.
    pub fn error(&self, kind: &str, class: &str) {
        let mut m = self.inner.lock().expect("metrics lock");
        *m.errors.entry((kind.to_string(), class.to_string())).or_default() += 1;
    }

    pub fn set_leader(&self, leader: bool) {
        self.inner.lock().expect("metrics lock").leader = leader;
    }

    pub fn is_leader(&self) -> bool {
        self.inner.lock().expect("metrics lock").leader
    }

    /// Ready: the CRDs are established and this instance either leads or stands by.
    pub fn set_ready(&self, ready: bool) {
        self.inner.lock().expect("metrics lock").ready = ready;
    }

    pub fn is_ready(&self) -> bool {
        self.inner.lock().expect("metrics lock").ready
    }

    /// Sets when each certificate of the domain `ns/domain` expires, by Secret, replacing what was
    /// known of it (an empty list forgets the domain: it was deleted).
    pub fn set_certificate_expiries(
        &self,
        ns: &str,
        domain: &str,
        expiries: &[(String, k8s_openapi::jiff::Timestamp)],
    ) {
        let mut m = self.inner.lock().expect("metrics lock");
        let key = (ns.to_string(), domain.to_string());
        if expiries.is_empty() {
            m.certificates.remove(&key);
        } else {
            m.certificates.insert(key, expiries.iter().map(|(s, t)| (s.clone(), t.as_second())).collect());
        }
    }

    /// When the certificate in Secret `secret` of `ns/domain` expires, if known.
    pub fn certificate_expiry(&self, ns: &str, domain: &str, secret: &str) -> Option<i64> {
        let m = self.inner.lock().expect("metrics lock");
        let list = m.certificates.get(&(ns.to_string(), domain.to_string()))?;
        list.iter().find(|(s, _)| s == secret).map(|(_, t)| *t)
    }

    /// Failed reconciles of every kind whose error is of `class` (e.g. `forbidden`).
    pub fn errors(&self, class: &str) -> u64 {
        let m = self.inner.lock().expect("metrics lock");
        m.errors.iter().filter(|((_, c), _)| c == class).map(|(_, n)| n).sum()
    }

    /// Reconciles of `kind` so far (successful and failed).
    pub fn reconciles(&self, kind: &str) -> u64 {
        let m = self.inner.lock().expect("metrics lock");
        m.reconciles.iter().filter(|((k, _), _)| k == kind).map(|(_, n)| n).sum()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let m = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        let _ = writeln!(out, "# HELP parley_operator_reconciles_total Reconciles by kind and result.");
        let _ = writeln!(out, "# TYPE parley_operator_reconciles_total counter");
        for ((kind, result), n) in &m.reconciles {
            let _ = writeln!(out, "parley_operator_reconciles_total{{kind=\"{kind}\",result=\"{result}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP parley_operator_reconciles_in_flight Reconciles running now, by kind.");
        let _ = writeln!(out, "# TYPE parley_operator_reconciles_in_flight gauge");
        for (kind, n) in &m.started {
            let done: u64 = m.reconciles.iter().filter(|((k, _), _)| k == kind).map(|(_, n)| n).sum();
            let _ = writeln!(out, "parley_operator_reconciles_in_flight{{kind=\"{kind}\"}} {}", n.saturating_sub(done));
        }
        let _ = writeln!(out, "# HELP parley_operator_reconcile_errors_total Failed reconciles by kind and error.");
        let _ = writeln!(out, "# TYPE parley_operator_reconcile_errors_total counter");
        for ((kind, class), n) in &m.errors {
            let _ = writeln!(out, "parley_operator_reconcile_errors_total{{kind=\"{kind}\",error=\"{class}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP parley_operator_reconcile_duration_seconds Time spent in one reconcile.");
        let _ = writeln!(out, "# TYPE parley_operator_reconcile_duration_seconds histogram");
        for (kind, h) in &m.durations {
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "parley_operator_reconcile_duration_seconds_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "parley_operator_reconcile_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "parley_operator_reconcile_duration_seconds_sum{{kind=\"{kind}\"}} {}", h.sum);
            let _ = writeln!(out, "parley_operator_reconcile_duration_seconds_count{{kind=\"{kind}\"}} {}", h.count);
        }
        let _ = writeln!(out, "# HELP parley_operator_leader 1 while this instance holds the leader Lease.");
        let _ = writeln!(out, "# TYPE parley_operator_leader gauge");
        let _ = writeln!(out, "parley_operator_leader {}", u8::from(m.leader));
        let _ = writeln!(
            out,
            "# HELP parley_operator_certificate_expiry_timestamp_seconds When a certificate of a domain expires (Unix time), by Secret."
        );
        let _ = writeln!(out, "# TYPE parley_operator_certificate_expiry_timestamp_seconds gauge");
        for ((ns, domain), list) in &m.certificates {
            for (secret, t) in list {
                let _ = writeln!(
                    out,
                    "parley_operator_certificate_expiry_timestamp_seconds{{namespace=\"{ns}\",domain=\"{domain}\",secret=\"{secret}\"}} {t}"
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_errors_and_a_cumulative_histogram() {
        let m = Metrics::default();
        for _ in 0..3 {
            m.start("HomeServer");
        }
        m.observe("HomeServer", Duration::from_millis(20), true);
        m.observe("HomeServer", Duration::from_millis(300), false);
        m.error("HomeServer", "conflict");
        m.set_leader(true);
        let text = m.render();
        assert!(text.contains("parley_operator_reconciles_total{kind=\"HomeServer\",result=\"success\"} 1"));
        assert!(text.contains("parley_operator_reconciles_total{kind=\"HomeServer\",result=\"error\"} 1"));
        assert!(text.contains("parley_operator_reconcile_errors_total{kind=\"HomeServer\",error=\"conflict\"} 1"));
        assert!(text.contains("parley_operator_reconcile_duration_seconds_bucket{kind=\"HomeServer\",le=\"0.025\"} 1"));
        assert!(text.contains("parley_operator_reconcile_duration_seconds_bucket{kind=\"HomeServer\",le=\"0.5\"} 2"));
        assert!(text.contains("parley_operator_reconcile_duration_seconds_count{kind=\"HomeServer\"} 2"));
        assert!(text.contains("parley_operator_leader 1"));
        assert!(text.contains("parley_operator_reconciles_in_flight{kind=\"HomeServer\"} 1"));
        assert_eq!((m.started("HomeServer"), m.reconciles("HomeServer")), (3, 2));
        assert_eq!((m.errors("conflict"), m.errors("forbidden")), (1, 0));
    }

    #[test]
    fn certificate_expiries_are_replaced_per_domain_and_forgotten_with_it() {
        let m = Metrics::default();
        let t = |s: i64| k8s_openapi::jiff::Timestamp::from_second(s).unwrap();
        m.set_certificate_expiries("ns", "corp", &[("corp-ca".into(), t(2_000)), ("corp-home-1-tls".into(), t(1_000))]);
        let text = m.render();
        assert!(text.contains(
            "parley_operator_certificate_expiry_timestamp_seconds{namespace=\"ns\",domain=\"corp\",secret=\"corp-home-1-tls\"} 1000"
        ));
        m.set_certificate_expiries("ns", "corp", &[("corp-ca".into(), t(3_000))]);
        assert_eq!(m.certificate_expiry("ns", "corp", "corp-ca"), Some(3_000));
        assert_eq!(
            m.certificate_expiry("ns", "corp", "corp-home-1-tls"),
            None,
            "a Secret no longer looked at is dropped"
        );
        m.set_certificate_expiries("ns", "corp", &[]);
        assert!(!m.render().contains("domain=\"corp\""));
    }
}
