//! Counters and gauges, rendered in the Prometheus text format. Plain atomics: the SIP path only
//! increments, `/metrics` reads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Methods counted by name; anything else is `other`.
pub const METHODS: [&str; 9] =
    ["REGISTER", "MESSAGE", "OPTIONS", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INVITE", "ACK", "other"];

#[derive(Default)]
pub struct Metrics {
    pub requests: [AtomicU64; 9],
    /// Responses sent by class: 1xx..6xx.
    pub responses: [AtomicU64; 6],
    pub retransmissions_absorbed: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Lockouts started (an address or a user).
    pub auth_lockouts: AtomicU64,
    /// Attempts refused unchecked during a lockout.
    pub auth_refused_locked: AtomicU64,
    pub malformed_requests: AtomicU64,
    pub malformed_responses: AtomicU64,
    pub stray_responses: AtomicU64,
    pub messages_delivered: AtomicU64,
    /// Messages kept for a user with no device (answered 202), delivered later, or dropped when
    /// they expired undelivered; and those held now.
    pub offline_stored: AtomicU64,
    pub offline_delivered: AtomicU64,
    pub offline_expired: AtomicU64,
    pub offline_held: AtomicU64,
    pub active_connections: AtomicU64,
    pub connections_refused: AtomicU64,
    pub registrations: AtomicU64,
    pub server_transactions: AtomicU64,
    pub client_transactions: AtomicU64,
    pub subscriptions: AtomicU64,
    /// UDP datagrams dropped unread: their sender was over `max_messages_per_source`.
    pub overload_dropped: AtomicU64,
    /// Stream messages read late for the same reason.
    pub overload_delayed: AtomicU64,
    /// Requests answered 503 at once: `max_pending_requests` were in progress.
    pub overload_refused: AtomicU64,
    /// New requests answered 503 + Retry-After because the server is shutting down.
    pub shutdown_refused: AtomicU64,
    /// New requests answered 503 + Retry-After over `limits.max_requests_per_second`.
    pub rate_limited: AtomicU64,
    /// Requests this server sent again for want of an answer (over UDP).
    pub retransmissions_sent: AtomicU64,
    /// Messages the transports could not send (unreachable address, closed connection, no buffer).
    pub send_failures: AtomicU64,
    /// NOTIFYs waiting for the window of NOTIFYs in flight to open.
    pub notifies_queued: AtomicU64,
    /// Where a shutdown is (`phase::SERVING` until SIGTERM); read by both roles' cores.
    pub phase: std::sync::atomic::AtomicU8,
    /// Home Server: enabled users the directory homes here, as last counted.
    pub homed_users: AtomicU64,
    /// Home Server: how many users placement may give it (its directory entry, or the default).
    pub capacity_users: AtomicU64,
    /// Time from a request's arrival to its final response being sent, per method (as `requests`).
    pub latency: [Histogram; 9],
    /// Front-End only: traffic and state per Home Server, by name.
    pub home_servers: std::sync::Mutex<std::collections::BTreeMap<String, HomeServerStats>>,
    /// Home Server only: the time each sync of the store's journal took (the store counts them).
    pub journal_syncs: std::sync::OnceLock<std::sync::Arc<Histogram>>,
}

/// Upper bounds (seconds) of the latency buckets: a disk's sync of a tenth of a millisecond and
/// sub-millisecond answers, to directory and store waits of a second.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A Prometheus histogram: cumulative counts are computed when rendered.
#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (the last one: above every bound).
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations in microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// How many observations it holds.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Appends the series of histogram `name`; `labels` (e.g. `method="REGISTER",`) come before
    /// each bucket's `le`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[LATENCY_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let labels = labels.trim_end_matches(',');
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// What a Front-End counts per Home Server.
#[derive(Clone, Debug, Default)]
pub struct HomeServerStats {
    pub forwarded: u64,
    /// Responses relayed from it, by class 1xx..6xx.
    pub responses: [u64; 6],
    pub up: bool,
}

impl Metrics {
    pub fn count_request(&self, method: &str) {
        let i = METHODS.iter().position(|m| *m == method).unwrap_or(METHODS.len() - 1);
        self.requests[i].fetch_add(1, Relaxed);
    }

    pub fn observe_latency(&self, method: &str, d: std::time::Duration) {
        let i = METHODS.iter().position(|m| *m == method).unwrap_or(METHODS.len() - 1);
        self.latency[i].observe(d);
    }

    /// A request that cannot be handled as one (it did not parse, or its top Via did not).
    pub fn count_malformed_request(&self, remote: std::net::SocketAddr, reason: &str) {
        self.malformed_requests.fetch_add(1, Relaxed);
        tracing::debug!(%remote, reason, "malformed request");
    }

    /// A response that cannot be handled as one (it did not parse, or names no Via of ours).
    pub fn count_malformed_response(&self) {
        self.malformed_responses.fetch_add(1, Relaxed);
    }

    pub fn count_response(&self, code: u16) {
        if let Some(c) = self.responses.get(usize::from(code / 100).saturating_sub(1)) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str("# HELP parley_sip_requests_total SIP requests received, by method.\n# TYPE parley_sip_requests_total counter\n");
        for (m, c) in METHODS.iter().zip(&self.requests) {
            let _ = writeln!(out, "parley_sip_requests_total{{method=\"{m}\"}} {}", c.load(Relaxed));
        }
        out.push_str("# HELP parley_sip_responses_total SIP responses sent, by class.\n# TYPE parley_sip_responses_total counter\n");
        for (i, c) in self.responses.iter().enumerate() {
            let _ = writeln!(out, "parley_sip_responses_total{{class=\"{}xx\"}} {}", i + 1, c.load(Relaxed));
        }
        let scalars: [(&str, &str, &str, &AtomicU64); 28] = [
            (
                "parley_sip_retransmissions_sent_total",
                "counter",
                "Requests this server sent again because no answer had come (UDP).",
                &self.retransmissions_sent,
            ),
            (
                "parley_send_failures_total",
                "counter",
                "SIP messages the transports could not send (address unreachable, connection closed, no buffer).",
                &self.send_failures,
            ),
            (
                "parley_notifies_queued",
                "gauge",
                "NOTIFYs waiting for earlier ones to be answered (at most 256 are in flight at once).",
                &self.notifies_queued,
            ),
            (
                "parley_homed_users",
                "gauge",
                "Enabled users the directory homes on this Home Server, as last counted.",
                &self.homed_users,
            ),
            (
                "parley_capacity_users",
                "gauge",
                "Users this Home Server may be given (its directory entry's capacity, 10000 when unset).",
                &self.capacity_users,
            ),
            (
                "parley_overload_dropped_total",
                "counter",
                "UDP datagrams dropped unread because their sender exceeded limits.max_messages_per_source.",
                &self.overload_dropped,
            ),
            (
                "parley_overload_delayed_total",
                "counter",
                "Stream messages read late because their sender exceeded limits.max_messages_per_source.",
                &self.overload_delayed,
            ),
            (
                "parley_shutdown_refused_total",
                "counter",
                "New requests answered 503 with Retry-After because the server is shutting down (SIGTERM).",
                &self.shutdown_refused,
            ),
            (
                "parley_rate_limited_total",
                "counter",
                "New requests answered 503 with a random Retry-After over limits.max_requests_per_second.",
                &self.rate_limited,
            ),
            (
                "parley_overload_refused_total",
                "counter",
                "Requests answered 503 at once because limits.max_pending_requests were in progress.",
                &self.overload_refused,
            ),
            (
                "parley_subscriptions",
                "gauge",
                "Active event subscriptions (presence, winfo, lists).",
                &self.subscriptions,
            ),
            (
                "parley_sip_retransmissions_absorbed_total",
                "counter",
                "Retransmitted requests answered from the transaction layer without reprocessing.",
                &self.retransmissions_absorbed,
            ),
            ("parley_auth_failures_total", "counter", "Requests whose digest credentials failed.", &self.auth_failures),
            (
                "parley_auth_lockouts_total",
                "counter",
                "Addresses or users locked out after too many failed authentications.",
                &self.auth_lockouts,
            ),
            (
                "parley_auth_refused_locked_total",
                "counter",
                "Authentication attempts refused unchecked during a lockout.",
                &self.auth_refused_locked,
            ),
            (
                "parley_sip_malformed_requests_total",
                "counter",
                "Requests rejected as malformed (400) or dropped.",
                &self.malformed_requests,
            ),
            (
                "parley_sip_malformed_responses_total",
                "counter",
                "Malformed responses dropped.",
                &self.malformed_responses,
            ),
            (
                "parley_sip_stray_responses_total",
                "counter",
                "Responses matching no client transaction.",
                &self.stray_responses,
            ),
            (
                "parley_messages_delivered_total",
                "counter",
                "MESSAGE requests answered 2xx by a destination.",
                &self.messages_delivered,
            ),
            (
                "parley_offline_messages_stored_total",
                "counter",
                "MESSAGE requests for a user with no device, kept and answered 202.",
                &self.offline_stored,
            ),
            (
                "parley_offline_messages_delivered_total",
                "counter",
                "Kept messages delivered (answered 2xx) once their user registered.",
                &self.offline_delivered,
            ),
            (
                "parley_offline_messages_expired_total",
                "counter",
                "Kept messages dropped undelivered at their expiry.",
                &self.offline_expired,
            ),
            ("parley_offline_messages", "gauge", "Kept messages waiting for their user.", &self.offline_held),
            (
                "parley_connections_refused_total",
                "counter",
                "Connections refused by a limit.",
                &self.connections_refused,
            ),
            (
                "parley_active_connections",
                "gauge",
                "Open TCP, TLS and WebSocket connections.",
                &self.active_connections,
            ),
            ("parley_registrations", "gauge", "Registered contact bindings.", &self.registrations),
            ("parley_server_transactions", "gauge", "Server transactions held.", &self.server_transactions),
            ("parley_client_transactions", "gauge", "Client transactions held.", &self.client_transactions),
        ];
        for (name, kind, help, v) in scalars {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Relaxed));
        }
        let name = "parley_sip_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time from a request's arrival to its final response, by method.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (m, h) in METHODS.iter().zip(&self.latency) {
            h.render(&mut out, name, &format!("method=\"{m}\","));
        }
        if let Some(h) = self.journal_syncs.get() {
            let name = "parley_store_journal_sync_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Time each sync of the store's journal took (the writes it covers are answered after it)."
            );
            let _ = writeln!(out, "# TYPE {name} histogram");
            h.render(&mut out, name, "");
        }
        let homes = self.home_servers.lock().expect("home server stats");
        if !homes.is_empty() {
            out.push_str("# HELP parley_frontend_forwarded_total Requests forwarded, by Home Server.\n# TYPE parley_frontend_forwarded_total counter\n");
            for (name, s) in homes.iter() {
                let _ = writeln!(out, "parley_frontend_forwarded_total{{home_server=\"{name}\"}} {}", s.forwarded);
            }
            out.push_str("# HELP parley_frontend_responses_total Responses relayed from each Home Server, by class.\n# TYPE parley_frontend_responses_total counter\n");
            for (name, s) in homes.iter() {
                for (i, n) in s.responses.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "parley_frontend_responses_total{{home_server=\"{name}\",class=\"{}xx\"}} {n}",
                        i + 1
                    );
                }
            }
            out.push_str("# HELP parley_frontend_home_server_up Whether the Home Server answers (1) or is marked down (0).\n# TYPE parley_frontend_home_server_up gauge\n");
            for (name, s) in homes.iter() {
                let _ = writeln!(out, "parley_frontend_home_server_up{{home_server=\"{name}\"}} {}", u8::from(s.up));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_method_and_class() {
        let m = Metrics::default();
        m.count_request("REGISTER");
        m.count_request("SERVICE");
        m.count_response(401);
        let text = m.render();
        assert!(text.contains("parley_sip_requests_total{method=\"REGISTER\"} 1"));
        assert!(text.contains("parley_sip_requests_total{method=\"other\"} 1"));
        assert!(text.contains("parley_sip_responses_total{class=\"4xx\"} 1"));
        assert!(text.contains("# TYPE parley_registrations gauge"));
        m.observe_latency("REGISTER", std::time::Duration::from_micros(1_500));
        m.observe_latency("REGISTER", std::time::Duration::from_secs(3));
        let text = m.render();
        let line = |l: &str| text.lines().any(|t| t == l);
        assert!(line("parley_sip_request_duration_seconds_bucket{method=\"REGISTER\",le=\"0.001\"} 0"), "{text}");
        assert!(line("parley_sip_request_duration_seconds_bucket{method=\"REGISTER\",le=\"0.0025\"} 1"));
        assert!(line("parley_sip_request_duration_seconds_bucket{method=\"REGISTER\",le=\"2.5\"} 1"));
        assert!(line("parley_sip_request_duration_seconds_bucket{method=\"REGISTER\",le=\"+Inf\"} 2"));
        assert!(line("parley_sip_request_duration_seconds_count{method=\"REGISTER\"} 2"));
        assert!(line("parley_sip_request_duration_seconds_sum{method=\"REGISTER\"} 3.0015"));
        assert!(!text.contains("parley_store_journal_sync_seconds"), "no store, no journal syncs: {text}");
    }

    #[test]
    fn a_home_servers_journal_syncs_are_a_histogram_without_labels() {
        let m = Metrics::default();
        let syncs = std::sync::Arc::new(Histogram::default());
        syncs.observe(std::time::Duration::from_micros(90));
        syncs.observe(std::time::Duration::from_micros(12_000));
        assert!(m.journal_syncs.set(syncs).is_ok());
        let text = m.render();
        let line = |l: &str| text.lines().any(|t| t == l);
        assert!(line("# TYPE parley_store_journal_sync_seconds histogram"), "{text}");
        assert!(line("parley_store_journal_sync_seconds_bucket{le=\"0.0001\"} 1"), "{text}");
        assert!(line("parley_store_journal_sync_seconds_bucket{le=\"0.01\"} 1"));
        assert!(line("parley_store_journal_sync_seconds_bucket{le=\"0.025\"} 2"));
        assert!(line("parley_store_journal_sync_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(line("parley_store_journal_sync_seconds_sum 0.01209"));
        assert!(line("parley_store_journal_sync_seconds_count 2"));
    }
}

/// The steps of a graceful shutdown, in order (`Metrics::phase`).
pub mod phase {
    /// Normal operation.
    pub const SERVING: u8 = 0;
    /// SIGTERM received: `/readyz` and OPTIONS answer 503, everything else is still served.
    pub const NOT_READY: u8 = 1;
    /// New registrations and dialog-creating (on a Home Server: all new) requests get 503 with
    /// Retry-After; transactions in progress finish.
    pub const REFUSING: u8 = 2;

    /// Seconds a request refused because a server is shutting down or unreachable is asked to
    /// wait: 1 to 5 at random, about as long as a restart takes, spread so that the refused do
    /// not all come back in the same instant.
    pub fn retry_after() -> u64 {
        rand::random_range(1..=5)
    }
}

impl Metrics {
    pub fn phase(&self) -> u8 {
        self.phase.load(Relaxed)
    }
}
