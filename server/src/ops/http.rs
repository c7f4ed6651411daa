//! The operations HTTP server: `/healthz` (alive), `/readyz` (listening and the directory
//! answers), `/metrics` (Prometheus text).

use super::metrics::Metrics;
use crate::directory::Directory;
use axum::{Router, extract::State, http::StatusCode, routing::get};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone)]
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub directory: Arc<dyn Directory>,
    /// Set once every SIP listener is bound; cleared when draining.
    pub listening: Arc<AtomicBool>,
}

pub async fn serve(addr: SocketAddr, state: OpsState) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|State(s): State<OpsState>| async move { s.metrics.render() }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "ops http server stopped");
        }
    });
    Ok(local)
}

async fn readyz(State(s): State<OpsState>) -> (StatusCode, &'static str) {
    if !s.listening.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not listening\n");
    }
    if !s.directory.is_ready().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "directory unavailable\n");
    }
    (StatusCode::OK, "ready\n")
}
