//! Wiring of a running server: directory, transports, core, listeners, operations HTTP, and the
//! graceful shutdown on SIGTERM or Ctrl-C.

use crate::config::{Config, DirectoryConfig};
use crate::directory::{Directory, file::FileDirectory};
use crate::home::auth::DigestAuth;
use crate::home::registrar::{Policy, Registrar};
use crate::home::{Core, CoreHandler, CoreSettings};
use crate::ops::{http, metrics::Metrics};
use crate::store::{Store, Table};
use crate::transaction::Timers;
use crate::transport::{self, Transport, Transports};
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a shutdown waits for open transactions.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(config: Config) -> anyhow::Result<()> {
    for dir in [&config.storage.data_dir, &config.storage.logs_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let directory: Arc<dyn Directory> = match &config.directory {
        DirectoryConfig::File { file } => Arc::new(FileDirectory::load(file)?),
        DirectoryConfig::Ldap { .. } => {
            Arc::new(crate::directory::ldap::LdapDirectory::from_config(&config.directory)?)
        }
    };
    let metrics = Arc::new(Metrics::default());
    let limits = crate::sip::message::Limits {
        max_headers: config.limits.max_headers,
        max_message_bytes: config.limits.max_message_bytes,
    };
    let transports = Transports::new(
        transport::Limits {
            message: limits,
            max_connections_per_ip: config.limits.max_connections_per_ip,
            max_connections: config.limits.max_connections,
            idle_timeout: Duration::from_secs(config.limits.idle_timeout_secs),
        },
        metrics.clone(),
    );
    let store = Store::open(&config.storage.data_dir)?;
    let mut registrar = Registrar::new(Policy {
        min_expires: config.registrar.min_expires,
        max_expires: config.registrar.max_expires,
        default_expires: config.registrar.default_expires,
        max_contacts: config.registrar.max_contacts,
    });
    let now = std::time::SystemTime::now();
    for (aor, bindings) in store.load(Table::Registrations)? {
        registrar.restore(aor, bindings, now);
    }
    let core = Core::new(
        CoreSettings {
            domain: config.sip_domain.clone(),
            domain_aliases: config.domain_aliases.iter().map(|a| a.to_ascii_lowercase()).collect(),
            limits,
            max_body_bytes: config.limits.max_body_bytes,
            timers: Timers::default(),
            min_expires: config.registrar.min_expires,
            max_expires: config.registrar.max_expires,
            admin_token: match &config.api.admin_token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading api.admin_token_file {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            },
        },
        transports.clone(),
        directory.clone(),
        DigestAuth::new(
            &config.sip_domain,
            config.auth.algorithms.clone(),
            Duration::from_secs(config.auth.nonce_ttl_secs),
        ),
        registrar,
        metrics.clone(),
        store,
    );
    let restored = core.restore_presence()?;
    metrics.registrations.store(core.binding_count() as u64, Ordering::Relaxed);
    metrics.subscriptions.store(restored as u64, Ordering::Relaxed);
    tracing::info!(bindings = core.binding_count(), subscriptions = restored, "restored state from the store");
    transports.set_handler(Arc::new(CoreHandler(core.clone())));
    core.start_timers();

    let advertise = |addr: std::net::SocketAddr| match &config.listen.advertise {
        Some(host) => format!("{host}:{}", addr.port()),
        None if addr.ip().is_unspecified() => format!("{}:{}", config.sip_domain, addr.port()),
        None => addr.to_string(),
    };
    if let Some(addr) = config.listen.udp {
        let bound = transports.listen_udp(addr).await.with_context(|| format!("binding UDP {addr}"))?;
        core.set_via_host(Transport::Udp, advertise(bound));
        tracing::info!(%bound, "listening on UDP");
    }
    if let Some(addr) = config.listen.tcp {
        let bound = transports.listen_stream(addr, None).await.with_context(|| format!("binding TCP {addr}"))?;
        core.set_via_host(Transport::Tcp, advertise(bound));
        tracing::info!(%bound, "listening on TCP");
    }
    if let (Some(addr), Some(tls)) = (config.listen.tls, &config.tls) {
        if tls.self_signed {
            let names = vec![config.sip_domain.clone(), "localhost".into(), addr.ip().to_string()];
            if transport::tls::ensure_self_signed(&tls.cert, &tls.key, names)? {
                tracing::info!(cert = %tls.cert.display(), "created a self-signed certificate");
            }
        }
        let acceptor = transport::tls::acceptor(&tls.cert, &tls.key)?;
        let bound =
            transports.listen_stream(addr, Some(acceptor)).await.with_context(|| format!("binding TLS {addr}"))?;
        core.set_via_host(Transport::Tls, advertise(bound));
        tracing::info!(%bound, "listening on TLS");
    }
    let listening = Arc::new(AtomicBool::new(true));
    if let Some(addr) = config.listen.ops {
        let state = http::OpsState {
            metrics: metrics.clone(),
            directory: directory.clone(),
            listening: listening.clone(),
            core: Some(core.clone()),
        };
        let bound = http::serve(addr, state).await.with_context(|| format!("binding operations HTTP {addr}"))?;
        tracing::info!(%bound, "operations HTTP on /healthz /readyz /metrics");
    }
    tracing::info!(domain = %config.sip_domain, server = %config.server_name, "home server ready");

    shutdown_signal().await;
    tracing::info!("shutting down: no new requests; finishing open transactions");
    listening.store(false, Ordering::Relaxed);
    transports.stop_accepting();
    // Subscribers are told to subscribe again (to whichever server takes over), within bounds.
    let _ = tokio::time::timeout(Duration::from_secs(3), core.terminate_all_subscriptions("deactivated")).await;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while core.requests_in_progress() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(unfinished = core.requests_in_progress(), "stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
