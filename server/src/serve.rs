//! Wiring of a running server: directory, transports, core, listeners, operations HTTP, and the
//! graceful shutdown on SIGTERM or Ctrl-C.

use crate::config::{Config, DirectoryConfig, Role};
use crate::directory::{Directory, file::FileDirectory};
use crate::driver::{Driver, DriverHandler};
use crate::frontend::Proxy;
use crate::home::{Core, HomeServer};
use crate::ops::{http, metrics::Metrics};
use crate::store::Store;
use crate::transport::{self, Transport, Transports};
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What every role shares: the directory, metrics, the transports (with the internal link's
/// client side when the config has one).
struct Shared {
    directory: Arc<dyn Directory>,
    metrics: Arc<Metrics>,
    transports: Arc<Transports>,
    limits: crate::sip::message::Limits,
    /// Both ends of the internal mutual-TLS link, when `listen.internal` is set.
    internal: Option<transport::tls::MutualTls>,
}

impl Shared {
    fn new(config: &Config) -> anyhow::Result<Shared> {
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
                message_timeout: Duration::from_secs(config.limits.message_timeout_secs),
                max_messages_per_source: config.limits.max_messages_per_source,
            },
            metrics.clone(),
        );
        let internal = match (config.listen.internal, &config.tls) {
            (Some(_), Some(tls)) => {
                let ca = tls.ca.as_ref().context("listen.internal needs tls.ca")?;
                let mutual = transport::tls::mutual(&tls.cert, &tls.key, ca)?;
                transports.set_internal_connector(mutual.connector.clone());
                Some(mutual)
            }
            _ => None,
        };
        Ok(Shared { directory, metrics, transports, limits, internal })
    }

    /// Binds every configured SIP listener; `advertised` learns the `host:port` each is known by.
    async fn listen(&self, config: &Config, mut advertised: impl FnMut(Transport, String)) -> anyhow::Result<()> {
        self.listen_internal(config, &mut advertised).await?;
        self.listen_public(config, &mut advertised).await
    }

    /// The `host:port` a listener bound at `addr` is known by.
    fn advertise(config: &Config, addr: std::net::SocketAddr) -> String {
        match &config.listen.advertise {
            Some(host) => format!("{host}:{}", addr.port()),
            None if addr.ip().is_unspecified() => format!("{}:{}", config.sip_domain, addr.port()),
            None => addr.to_string(),
        }
    }

    /// Binds the clients' listeners: UDP, TCP, TLS, WebSocket and secure WebSocket.
    async fn listen_public(
        &self,
        config: &Config,
        mut advertised: impl FnMut(Transport, String),
    ) -> anyhow::Result<()> {
        let advertise = |addr| Self::advertise(config, addr);
        let transports = &self.transports;
        if let Some(addr) = config.listen.udp {
            let bound = transports.listen_udp(addr).await.with_context(|| format!("binding UDP {addr}"))?;
            advertised(Transport::Udp, advertise(bound));
            tracing::info!(%bound, "listening on UDP");
        }
        if let Some(addr) = config.listen.tcp {
            let bound = transports
                .listen_stream(addr, transport::StreamKind::Tcp)
                .await
                .with_context(|| format!("binding TCP {addr}"))?;
            advertised(Transport::Tcp, advertise(bound));
            tracing::info!(%bound, "listening on TCP");
        }
        let tls_listener = config.listen.tls.or(config.listen.wss);
        if let (Some(tls), Some(first)) = (config.tls.as_ref().filter(|t| t.self_signed), tls_listener) {
            let names = vec![config.sip_domain.clone(), "localhost".into(), first.ip().to_string()];
            if transport::tls::ensure_self_signed(&tls.cert, &tls.key, names)? {
                tracing::info!(cert = %tls.cert.display(), "created a self-signed certificate");
            }
        }
        if let (Some(addr), Some(tls)) = (config.listen.tls, &config.tls) {
            let acceptor = transport::tls::acceptor(&tls.cert, &tls.key)?;
            let bound = transports
                .listen_stream(addr, transport::StreamKind::Tls(acceptor))
                .await
                .with_context(|| format!("binding TLS {addr}"))?;
            advertised(Transport::Tls, advertise(bound));
            tracing::info!(%bound, "listening on TLS");
        }
        let origins = Arc::new(transport::ws::OriginPolicy { allowed: config.web.origins.clone() });
        if let Some(addr) = config.listen.ws {
            let bound = transports
                .listen_stream(addr, transport::StreamKind::Ws(None, origins.clone()))
                .await
                .with_context(|| format!("binding WebSocket {addr}"))?;
            advertised(Transport::Ws, advertise(bound));
            tracing::info!(%bound, "listening on WebSocket (ws)");
        }
        if let (Some(addr), Some(tls)) = (config.listen.wss, &config.tls) {
            let acceptor = transport::tls::acceptor(&tls.cert, &tls.key)?;
            let bound = transports
                .listen_stream(addr, transport::StreamKind::Ws(Some(acceptor), origins.clone()))
                .await
                .with_context(|| format!("binding secure WebSocket {addr}"))?;
            advertised(Transport::Wss, advertise(bound));
            tracing::info!(%bound, "listening on secure WebSocket (wss)");
        }
        Ok(())
    }

    /// Binds the internal mutual-TLS listener, when configured.
    async fn listen_internal(
        &self,
        config: &Config,
        mut advertised: impl FnMut(Transport, String),
    ) -> anyhow::Result<()> {
        let advertise = |addr| Self::advertise(config, addr);
        let transports = &self.transports;
        if let (Some(addr), Some(mutual)) = (config.listen.internal, &self.internal) {
            let bound = transports
                .listen_stream(addr, transport::StreamKind::Internal(mutual.acceptor.clone()))
                .await
                .with_context(|| format!("binding the internal port {addr}"))?;
            let host = std::env::var("PARLEY_ADVERTISE_INTERNAL")
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| config.listen.advertise_internal.clone());
            let internal = match host {
                Some(host) => format!("{host}:{}", bound.port()),
                None => advertise(bound),
            };
            tracing::info!(%bound, advertised = %internal, "listening on the internal port (mutual TLS)");
            advertised(Transport::Internal, internal);
        }
        Ok(())
    }

    async fn serve_ops(
        &self,
        config: &Config,
        listening: Arc<AtomicBool>,
        home: Option<Arc<HomeServer>>,
    ) -> anyhow::Result<()> {
        if let Some(addr) = config.listen.ops {
            let state = http::OpsState {
                metrics: self.metrics.clone(),
                directory: self.directory.clone(),
                listening,
                home: home.clone(),
                server_name: config.server_name.clone(),
            };
            if home.is_some() {
                // Counted before `/status` answers, then every 15 s.
                if let Err(e) = http::refresh_load(&state).await {
                    tracing::warn!(error = %e, "homed users not counted");
                }
                http::start_load_refresh(state.clone());
            }
            let bound = http::serve(addr, state).await.with_context(|| format!("binding operations HTTP {addr}"))?;
            tracing::info!(%bound, "operations HTTP on /healthz /readyz /metrics");
        }
        if let (Some(addr), Some(root)) = (config.listen.web, &config.web.root) {
            let client = crate::web::WebClient {
                root: root.clone(),
                domain: config.sip_domain.clone(),
                ws_port: config.listen.ws.map(|a| a.port()),
                wss_port: config.listen.wss.map(|a| a.port()),
            };
            let bound =
                crate::web::serve(addr, client).await.with_context(|| format!("binding the web client {addr}"))?;
            tracing::info!(%bound, root = %root.display(), "web client on http://{bound}/");
        }
        Ok(())
    }
}

pub async fn run(config: Config, role: Role) -> anyhow::Result<()> {
    let shared = Shared::new(&config)?;
    match role {
        Role::Home => run_home(config, shared).await,
        Role::FrontEnd => run_front_end(config, shared).await,
    }
}

async fn run_front_end(config: Config, shared: Shared) -> anyhow::Result<()> {
    let table = config.frontend.as_ref().context("a Front-End needs [frontend]")?;
    let proxy = Proxy::from_config(&config, shared.metrics.clone())?;
    let fe = Driver::new(proxy, shared.transports.clone(), shared.directory.clone(), None, shared.limits);
    fe.refresh_domains().await;
    shared.transports.set_handler(Arc::new(DriverHandler(fe.clone())));
    // Know which Home Servers answer before taking clients' traffic (a request for a Home Server
    // not yet probed would get 503); the others are probed until they do.
    shared.listen_internal(&config, |t, host| fe.set_advertised(t, host)).await?;
    fe.start_timers();
    let deadline = Instant::now() + crate::frontend::PROBE_TIMEOUT * 2;
    while !fe.service().probes_settled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.listen_public(&config, |t, host| fe.set_advertised(t, host)).await?;
    let listening = Arc::new(AtomicBool::new(true));
    shared.serve_ops(&config, listening.clone(), None).await?;
    tracing::info!(domain = %config.sip_domain, server = %config.server_name, home_servers = table.home_servers.len(), "front-end ready");
    shutdown_signal().await;
    let steps = Shutdown::begin(&config, &shared, &listening).await;
    steps.finish(&shared, || fe.service().in_flight()).await;
    Ok(())
}

async fn run_home(config: Config, shared: Shared) -> anyhow::Result<()> {
    let Shared { directory, metrics, transports, limits, .. } = &shared;
    let store = Store::open(&config.storage.data_dir, config.storage.sync)?;
    let _ = metrics.journal_syncs.set(store.journal_syncs());
    let admin_token = match &config.api.admin_token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading api.admin_token_file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let core = Core::from_config(&config, admin_token, metrics.clone());
    let home = crate::home::open(core, transports.clone(), directory.clone(), store, *limits).await?;
    transports.set_handler(Arc::new(DriverHandler(home.clone())));
    home.start_timers();
    shared.listen(&config, |t, host| home.set_advertised(t, host)).await?;
    let listening = Arc::new(AtomicBool::new(true));
    shared.serve_ops(&config, listening.clone(), Some(home.clone())).await?;
    tracing::info!(domain = %config.sip_domain, server = %config.server_name, "home server ready");

    shutdown_signal().await;
    let steps = Shutdown::begin(&config, &shared, &listening).await;
    // Subscribers are told to subscribe again (to whichever server takes over), within bounds.
    let _ = tokio::time::timeout(Duration::from_secs(3), home.terminate_all_subscriptions("deactivated")).await;
    steps.finish(&shared, || home.requests_in_progress()).await;
    if let Some(store) = home.store()
        && let Err(e) = store.flush().await
    {
        tracing::error!(error = %e, "store not flushed");
    }
    Ok(())
}

/// A graceful shutdown on SIGTERM, the same for both roles, within `limits.shutdown_timeout_secs`:
/// 1. not ready: `/readyz` and OPTIONS answer 503 (with Retry-After), everything else is served,
///    for `limits.shutdown_grace_secs`, while load balancers and Kubernetes' endpoints take the
///    server out of rotation;
/// 2. refusing: new registrations and dialog-creating requests (on a Home Server every new
///    request) get 503 with Retry-After, and the transactions in progress finish;
/// 3. closing: listeners and every connection are closed once what is queued on them is written;
///    clients holding a TCP or TLS connection (RFC 5626 flows, keep-alive clients) see it close
///    and register again through another instance at once.
struct Shutdown {
    started: Instant,
    deadline: Instant,
}

/// The shortest time new requests are refused before connections close.
const REFUSING_AT_LEAST: Duration = Duration::from_secs(1);

/// Time kept at the end of the bound for closing connections.
const CLOSE_RESERVE: Duration = Duration::from_secs(1);

impl Shutdown {
    /// Steps 1 and 2: returns once new work is refused.
    async fn begin(config: &Config, shared: &Shared, listening: &AtomicBool) -> Shutdown {
        use crate::ops::metrics::phase;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(config.limits.shutdown_timeout_secs);
        let grace = Duration::from_secs(config.limits.shutdown_grace_secs);
        tracing::info!(grace_secs = grace.as_secs(), "shutting down: not ready (OPTIONS and /readyz answer 503)");
        listening.store(false, Ordering::Relaxed);
        shared.metrics.phase.store(phase::NOT_READY, Ordering::Relaxed);
        // A pause, not a wait for a condition: nothing here can tell when every load balancer
        // has noticed. A second SIGTERM (or Ctrl-C) cuts it short.
        tokio::select! {
            _ = tokio::time::sleep(grace.min(deadline.saturating_duration_since(Instant::now()))) => {}
            _ = shutdown_signal() => {}
        }
        tracing::info!("shutting down: new requests get 503 with Retry-After; finishing open transactions");
        shared.metrics.phase.store(phase::REFUSING, Ordering::Relaxed);
        Shutdown { started, deadline }
    }

    /// Step 3, once `in_flight` says nothing is in progress (or the bound is near).
    async fn finish(self, shared: &Shared, in_flight: impl Fn() -> usize) {
        let drain_until = self.deadline.checked_sub(CLOSE_RESERVE).unwrap_or(self.deadline);
        // Refusing lasts at least REFUSING_AT_LEAST, so that requests already on their way get
        // an answer (503, so their clients go elsewhere at once) rather than silence, and UDP
        // retransmissions of answered requests get their answer again.
        let refuse_until = (Instant::now() + REFUSING_AT_LEAST).min(drain_until);
        while (in_flight() > 0 || Instant::now() < refuse_until) && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unfinished = in_flight();
        tracing::info!(unfinished, "shutting down: closing connections");
        shared.transports.stop_accepting();
        while shared.metrics.active_connections.load(Ordering::Relaxed) > 0 && Instant::now() < self.deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(
            unfinished,
            open_connections = shared.metrics.active_connections.load(Ordering::Relaxed),
            took_ms = self.started.elapsed().as_millis() as u64,
            "stopped"
        );
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
