//! `parley-operator`: reconciles Parley's custom resources into workloads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use parley_operator::controllers::Settings;
use parley_operator::runtime::leader::LeaseTiming;
use parley_operator::runtime::{Operator, OperatorConfig, shutdown_signal};
use parley_operator::{crd, tiers};
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "parley-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (leader-elected) against the cluster in KUBECONFIG or in-cluster config.
    Run {
        /// Watch only this namespace (all namespaces when unset).
        #[arg(long, env = "PARLEY_WATCH_NAMESPACE")]
        watch_namespace: Option<String>,
        /// Namespace of the leader-election Lease (the operator's own namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Name of the leader-election Lease.
        #[arg(long, env = "PARLEY_LEASE_NAME", default_value = "parley-operator")]
        lease_name: String,
        /// This instance's identity in the Lease (the pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Seconds a Lease stays valid without renewal (the chart's `leaseDurationSeconds`).
        #[arg(long, env = "PARLEY_LEASE_DURATION_SECONDS", default_value_t = 15)]
        lease_duration: u64,
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, env = "PARLEY_OPS_ADDR", default_value = "0.0.0.0:8080")]
        ops_addr: SocketAddr,
        /// Server image for domains that name none.
        #[arg(long, env = "PARLEY_SERVER_IMAGE", default_value_t = Settings::default().default_image)]
        server_image: String,
        /// Image of managed directories (`spec.directory.managed`).
        #[arg(long, env = "PARLEY_DIRECTORY_IMAGE", default_value_t = Settings::default().directory_image)]
        directory_image: String,
        /// DNS suffix of Services.
        #[arg(long, env = "PARLEY_CLUSTER_DOMAIN", default_value = "cluster.local")]
        cluster_domain: String,
        /// URL of a Home Server's `/status`, `{name}` and `{namespace}` replaced (default: its
        /// Service's cluster DNS name, port 8080), e.g. for an operator run outside the cluster.
        #[arg(long, env = "PARLEY_SERVER_STATUS_URL")]
        server_status_url: Option<String>,
        /// Log format.
        #[arg(long, env = "PARLEY_LOG_FORMAT", value_enum, default_value = "json")]
        log_format: LogFormat,
    },
    /// Print the sizing tier a domain of USERS users resolves to.
    Tier { users: u64 },
    /// Write the CRDs as YAML into crds/ and the chart (or into --out).
    Crdgen {
        /// Repository root; CRDs go to <repo>/crds and <repo>/charts/parley-operator/crds.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Write only into this directory instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Completes on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    info!("shutting down");
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tier { users } => {
            let sizing = tiers::resolve(users);
            println!("{}", serde_json::to_string_pretty(&sizing)?);
        }
        Command::Crdgen { repo, out } => {
            let dirs = match out {
                Some(dir) => vec![dir],
                None => crd::generate::default_dirs(&repo),
            };
            for dir in dirs {
                for path in crd::generate::write(&dir)? {
                    println!("wrote {}", path.display());
                }
            }
        }
        Command::Run {
            watch_namespace,
            lease_namespace,
            lease_name,
            identity,
            lease_duration,
            ops_addr,
            server_image,
            directory_image,
            cluster_domain,
            server_status_url,
            log_format,
        } => {
            init_logs(log_format);
            let identity = identity
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("parley-operator-{}", std::process::id()));
            let lease = Duration::from_secs(lease_duration.max(2));
            // The Lease lives in the operator's own namespace.
            let operator_namespace = lease_namespace.clone();
            let config = OperatorConfig {
                watch_namespace,
                lease_namespace,
                lease_name,
                identity,
                lease_timing: LeaseTiming { duration: lease, retry: lease / 7, renew_deadline: lease * 2 / 3 },
                ops_addr: Some(ops_addr),
                crd_poll: Duration::from_secs(2),
                settings: Settings {
                    default_image: server_image,
                    cluster_domain,
                    directory_image,
                    operator_namespace: Some(operator_namespace),
                    server_status_url,
                },
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async move {
                let client = kube::Client::try_default().await?;
                let result = Operator::new(client, config).run(shutdown_signal(terminated())).await;
                if let Err(e) = &result {
                    error!(error = %e, "operator stopped");
                }
                result
            })?;
        }
    }
    Ok(())
}
