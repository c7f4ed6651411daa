//! The operator process: waits for its CRDs, serves `/healthz`, `/readyz` and `/metrics`, elects a
//! leader with a Lease, runs the controllers while leading, and shuts down gracefully (controllers
//! finish their reconciles, the Lease is released).

pub mod leader;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::future::{BoxFuture, FutureExt, Shared};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use tracing::{info, warn};

use crate::controllers::{self, Context, Settings};
use leader::{LeaderElector, LeaseTiming};
use metrics::Metrics;

/// Names of the CRDs the operator needs before it starts its controllers.
pub const CRD_NAMES: [&str; 3] = ["communicationsdomains.parley.dev", "homeservers.parley.dev", "frontends.parley.dev"];

/// How an operator instance runs.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Watch only this namespace; all namespaces when `None`.
    pub watch_namespace: Option<String>,
    /// Namespace and name of the leader-election Lease.
    pub lease_namespace: String,
    pub lease_name: String,
    /// This instance's identity in the Lease (the pod name in a cluster).
    pub identity: String,
    pub lease_timing: LeaseTiming,
    /// Address of the operations HTTP server; none when `None` (tests).
    pub ops_addr: Option<SocketAddr>,
    /// How often to look again while the CRDs are not established.
    pub crd_poll: Duration,
    pub settings: Settings,
}

/// A future that completes when the operator should stop; cheap to clone.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Turns any future into a cloneable shutdown signal.
pub fn shutdown_signal(f: impl std::future::Future<Output = ()> + Send + 'static) -> Shutdown {
    f.boxed().shared()
}

/// One operator instance.
pub struct Operator {
    client: Client,
    config: OperatorConfig,
    metrics: Arc<Metrics>,
}

impl Operator {
    pub fn new(client: Client, config: OperatorConfig) -> Self {
        Self { client, config, metrics: Arc::new(Metrics::default()) }
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` completes (`Ok`) or leadership is lost (`Err`: the process should
    /// exit and be restarted as a fresh candidate).
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let Operator { client, config, metrics } = self;
        if let Some(addr) = config.ops_addr {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            info!(%addr, "serving /healthz, /readyz and /metrics");
            let app = ops_router(metrics.clone());
            let stop = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                    warn!(error = %e, "operations server failed");
                }
            });
        }

        tokio::select! {
            _ = shutdown.clone() => return Ok(()),
            r = wait_for_crds(&client, config.crd_poll) => r?,
        }
        metrics.set_ready(true);

        let elector = Arc::new(LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &config.lease_namespace),
            &config.lease_name,
            &config.identity,
            config.lease_timing.clone(),
        ));
        let stopped_while_waiting = tokio::select! {
            _ = shutdown.clone() => true,
            _ = elector.acquire() => false,
        };
        if stopped_while_waiting {
            // The attempt in flight may have won the Lease just as it was dropped: give it back
            // (if it is ours) rather than leave it to expire with no one leading.
            elector.release().await;
            return Ok(());
        }
        metrics.set_leader(true);
        info!(identity = %config.identity, "leading; starting controllers");

        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let renewer = {
            let elector = elector.clone();
            tokio::spawn(async move {
                elector.keep_renewing().await;
                let _ = lost_tx.send(());
            })
        };
        let lost = shutdown_signal(async move {
            let _ = lost_rx.await;
        });
        let stop = shutdown_signal({
            let (shutdown, lost) = (shutdown.clone(), lost.clone());
            async move {
                futures::future::select(shutdown, lost).await;
            }
        });

        let ctx = Arc::new(Context::new(client.clone(), config.settings.clone(), metrics.clone(), &config.identity));
        controllers::run(ctx, config.watch_namespace.clone(), stop).await;
        metrics.set_leader(false);
        if lost.peek().is_some() {
            anyhow::bail!("lost leadership of Lease {}/{}", config.lease_namespace, config.lease_name);
        }
        renewer.abort();
        elector.release().await;
        info!("stopped");
        Ok(())
    }
}

/// `/healthz` (alive), `/readyz` (CRDs established) and `/metrics`.
pub fn ops_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "waiting for CRDs\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                ([("content-type", "text/plain; version=0.0.4")], m.render())
            }),
        )
        .with_state(metrics)
}

/// Waits until every CRD in [`CRD_NAMES`] exists and is `Established`.
pub async fn wait_for_crds(client: &Client, poll: Duration) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut logged = false;
    loop {
        let mut missing = Vec::new();
        for name in CRD_NAMES {
            let established = match api.get_opt(name).await {
                Ok(Some(crd)) => crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True"),
                Ok(None) => false,
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    anyhow::bail!("not allowed to read CRD {name}: check the operator's RBAC ({})", s.message)
                }
                Err(e) => {
                    warn!(error = %e, "reading CRDs failed");
                    false
                }
            };
            if !established {
                missing.push(name);
            }
        }
        if missing.is_empty() {
            info!("CRDs established");
            return Ok(());
        }
        if !logged {
            info!(?missing, "waiting for CRDs to be established (install them with the chart or crds/)");
            logged = true;
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn ops_endpoints_report_health_readiness_and_metrics() {
        let metrics = Arc::new(Metrics::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = ops_router(metrics.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        metrics.set_ready(true);
        metrics.observe("FrontEnd", Duration::from_millis(3), true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("text/plain; version=0.0.4"), "{m}");
        assert!(m.contains("parley_operator_reconciles_total{kind=\"FrontEnd\",result=\"success\"} 1"), "{m}");
    }
}
