//! Operations: HTTP health, readiness and Prometheus metrics.

pub mod http;
pub mod logfile;
pub mod metrics;
