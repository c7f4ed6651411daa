//! One kube-rs `Controller` per kind. Each reconcile runs the same steps:
//! dereference (read what the resource points to) -> validate (no client) -> build (pure) ->
//! apply (server-side apply, in order: ConfigMap, Service, PDB, then the workload; then delete
//! what the builders no longer produce, see [`apply::ApplySet`]) -> status.
//!
//! A reconcile writes only what differs, so a steady state writes nothing; `paused` makes it
//! read-only apart from the `Paused` condition; Events mark every write and every error.

pub mod apply;
pub mod conditions;
pub mod domain;
pub mod front_end;
pub mod home_server;
pub mod pods;
pub mod rollout;
pub mod server_status;
pub mod validate;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::build::{BuildError, Component, MANAGED_SELECTOR};
use crate::crd::{CommunicationsDomain, FrontEnd, HomeServer};
use crate::runtime::Shutdown;
use crate::runtime::metrics::Metrics;

/// Operator-wide settings the builders need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Server image for domains that name none.
    pub default_image: String,
    /// DNS suffix of Services (`cluster.local`).
    pub cluster_domain: String,
    /// Image of managed directories (the Dockerfile's `directory` target).
    pub directory_image: String,
    /// The operator's own namespace: the domains' NetworkPolicies let it read `/status`.
    pub operator_namespace: Option<String>,
    /// Where a Home Server's `/status` is, `{name}` and `{namespace}` replaced; its Service's
    /// cluster DNS name when unset (see [`server_status::url`]).
    pub server_status_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_image: format!("parley-server:{}", env!("CARGO_PKG_VERSION")),
            cluster_domain: "cluster.local".into(),
            directory_image: format!("parley-directory:{}", env!("CARGO_PKG_VERSION")),
            operator_namespace: None,
            server_status_url: None,
        }
    }
}

/// Shared by every reconcile of one operator instance.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>, identity: &str) -> Self {
        let reporter = Reporter { controller: "parley-operator".into(), instance: Some(identity.into()) };
        Self { recorder: Recorder::new(client.clone(), reporter), client, settings, metrics }
    }

    /// Publishes an Event about `obj`; a failure to publish is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.event_about(obj, None, warning, reason, action, note).await
    }

    /// Publishes an Event about `obj` concerning `related` (e.g. the StatefulSet it applied), so
    /// that Events about different children are not folded into one series.
    pub async fn event_about<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        related: Option<k8s_openapi::api::core::v1::ObjectReference>,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: related,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            warn!(error = %e, reason, "publishing an Event failed");
        }
    }
}

/// Why a reconcile failed; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("{kind} {name} exists and is controlled by {owner}; rename or remove it")]
    NotOwned { kind: String, name: String, owner: String },
    #[error("{0}")]
    Invalid(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// A short class for the errors metric.
    pub fn class(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => match s.code {
                409 => "conflict".into(),
                404 => "not_found".into(),
                422 => "invalid".into(),
                403 => "forbidden".into(),
                code => format!("http_{code}"),
            },
            Error::Kube(_) => "api".into(),
            Error::Build(_) => "build".into(),
            Error::NotOwned { .. } => "not_owned".into(),
            Error::Invalid(_) => "invalid".into(),
            Error::Json(_) => "json".into(),
        }
    }

    fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 409)
    }
}

/// `None` when `r` failed with 404: the resource a reconcile writes the status of was deleted
/// while it ran (its children carry owner references, so the garbage collector takes any it just
/// applied). That resource is gone, which is no failure to retry or to report.
pub fn unless_gone<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => {
            debug!(error = %s.message, "deleted while reconciling");
            Ok(None)
        }
        r => r.map(Some),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often a converged resource is looked at again (reads only) in case a watch missed something.
pub const RESYNC: Duration = Duration::from_secs(600);

/// Runs `reconcile`, recording its count, duration and errors.
async fn instrumented<F>(kind: &'static str, ctx: &Context, f: F) -> Result<Action>
where
    F: Future<Output = Result<Action>>,
{
    let start = Instant::now();
    ctx.metrics.start(kind);
    let result = f.await;
    ctx.metrics.observe(kind, start.elapsed(), result.is_ok());
    if let Err(e) = &result {
        ctx.metrics.error(kind, &e.class());
    }
    result
}

/// Retries failed reconciles: conflicts (someone wrote in between) quickly, others after a pause,
/// with a Warning Event on the resource for anything but a conflict.
fn error_policy<K>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    if err.is_conflict() {
        debug!(name = %obj.name_any(), error = %err, "conflict; retrying");
        return Action::requeue(Duration::from_millis(500));
    }
    warn!(kind = %K::kind(&()), name = %obj.name_any(), error = %err, "reconcile failed");
    let note = err.to_string();
    tokio::spawn(async move { ctx.event(obj.as_ref(), true, "ReconcileFailed", "Reconcile", note).await });
    Action::requeue(Duration::from_secs(5))
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The namespace of a namespaced object (always set for objects from the API server).
pub fn namespace_of<K: Resource>(obj: &K) -> Result<String> {
    obj.meta().namespace.clone().ok_or_else(|| Error::Invalid("object without a namespace".into()))
}

type RunResult<K, E1, E2> = Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E1, E2>>;

fn log_results<K, E1, E2>(kind: &'static str) -> impl Fn(RunResult<K, E1, E2>) -> std::future::Ready<()>
where
    K: Resource,
    K::DynamicType: Debug,
    E1: std::error::Error,
    E2: std::error::Error,
{
    move |r| {
        match r {
            Ok((obj, _)) => debug!(kind, name = %obj.name, "reconciled"),
            Err(e) => debug!(kind, error = %e, "controller event"),
        }
        std::future::ready(())
    }
}

fn managed(component: Component) -> watcher::Config {
    watcher::Config::default().labels(&format!("{MANAGED_SELECTOR},app.kubernetes.io/component={}", component.as_str()))
}

/// Maps an object naming a domain (`spec.domain`) to the resources of `store` in that domain.
fn by_domain<K>(store: &kube::runtime::reflector::Store<K>, ns: Option<String>, domain: &str) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K: HasDomain,
{
    store
        .state()
        .iter()
        .filter(|o| o.domain() == domain && o.namespace() == ns)
        .map(|o| ObjectRef::from(o.as_ref()))
        .collect()
}

/// Resources that belong to a domain through `spec.domain`.
pub trait HasDomain {
    fn domain(&self) -> &str;
}

impl HasDomain for HomeServer {
    fn domain(&self) -> &str {
        &self.spec.domain
    }
}

impl HasDomain for FrontEnd {
    fn domain(&self) -> &str {
        &self.spec.domain
    }
}

/// Completes when `stop` does while the controller's cache is not yet filled: then the controller
/// is dropped instead of shut down gracefully. kube-runtime's graceful shutdown holds queued
/// reconciles until the cache is ready, which never happens once the watches stop, so a shutdown
/// during startup would hang until the process is killed (and never release the Lease).
async fn unless_ready<K>(stop: Shutdown, store: Store<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    stop.await;
    if store.wait_until_ready().now_or_never().is_none() {
        debug!(kind = %K::kind(&()), "stopping before the cache was filled");
        return;
    }
    std::future::pending::<()>().await
}

/// Runs the three controllers until `stop` completes, then lets running reconciles finish.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, stop: Shutdown) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let domains: Api<CommunicationsDomain> = api(&client, ns);
    let home_servers: Api<HomeServer> = api(&client, ns);
    let front_ends: Api<FrontEnd> = api(&client, ns);
    let all = watcher::Config::default;

    let domain_of = |domain: &str, obj_ns: Option<String>| {
        let r = ObjectRef::<CommunicationsDomain>::new(domain);
        Some(match obj_ns {
            Some(ns) => r.within(&ns),
            None => r,
        })
    };
    let domain_ctrl = Controller::new(domains.clone(), all());
    let domain_store = domain_ctrl.store();
    let (secret_domains, config_map_domains) = (domain_store.clone(), domain_store.clone());
    // What the domain owns (apply::domain_kinds) triggers a reconcile when it changes, so a Job
    // that finishes or a directory pod that becomes ready moves the domain on at once. Secrets and
    // ConfigMaps are also watched when a domain names them (an admin Secret created later).
    let domain_ctrl = domain_ctrl
        .watches(api::<Secret>(&client, ns), all(), move |s: Secret| {
            domain::domains_of(&secret_domains, &s, domain::Reference::Secret)
        })
        .watches(api::<ConfigMap>(&client, ns), all(), move |c: ConfigMap| {
            domain::domains_of(&config_map_domains, &c, domain::Reference::ConfigMap)
        })
        .owns(api::<Service>(&client, ns), watcher::Config::default().labels(MANAGED_SELECTOR))
        .owns(api::<StatefulSet>(&client, ns), watcher::Config::default().labels(MANAGED_SELECTOR))
        .owns(api::<Job>(&client, ns), watcher::Config::default().labels(MANAGED_SELECTOR))
        // Their own HomeServers and FrontEnd, and (topology manual) the administrator's.
        .watches(home_servers.clone(), all(), move |hs: HomeServer| domain_of(&hs.spec.domain, hs.namespace()))
        .watches(front_ends.clone(), all(), move |fe: FrontEnd| domain_of(&fe.spec.domain, fe.namespace()))
        .graceful_shutdown_on(stop.clone())
        .run(
            |d, ctx: Arc<Context>| async move {
                instrumented("CommunicationsDomain", &ctx.clone(), domain::reconcile(d, ctx)).await
            },
            error_policy,
            ctx.clone(),
        )
        .take_until(unless_ready(stop.clone(), domain_store))
        .for_each(log_results("CommunicationsDomain"));

    let hs_ctrl = Controller::new(home_servers.clone(), all());
    let hs_store = hs_ctrl.store();
    let hs_ready = hs_store.clone();
    let hs_ctrl = hs_ctrl
        .owns(api::<StatefulSet>(&client, ns), managed(Component::HomeServer))
        .owns(api::<Service>(&client, ns), managed(Component::HomeServer))
        .owns(api::<ConfigMap>(&client, ns), managed(Component::HomeServer))
        .owns(api::<PodDisruptionBudget>(&client, ns), managed(Component::HomeServer))
        // Its drain Job: one that finishes moves the HomeServer (and so its domain) on at once.
        .owns(
            api::<Job>(&client, ns),
            watcher::Config::default().labels(&format!(
                "{MANAGED_SELECTOR},app.kubernetes.io/component={}",
                crate::build::drain::DRAIN_COMPONENT
            )),
        )
        .watches(domains.clone(), all(), move |d: CommunicationsDomain| {
            by_domain(&hs_store, d.namespace(), &d.name_any())
        })
        .graceful_shutdown_on(stop.clone())
        .run(
            |hs, ctx: Arc<Context>| async move {
                instrumented("HomeServer", &ctx.clone(), home_server::reconcile(hs, ctx)).await
            },
            error_policy,
            ctx.clone(),
        )
        .take_until(unless_ready(stop.clone(), hs_ready))
        .for_each(log_results("HomeServer"));

    let fe_ctrl = Controller::new(front_ends.clone(), all());
    let fe_store = fe_ctrl.store();
    let fe_ready = fe_store.clone();
    let fe_ctrl = fe_ctrl
        .owns(api::<Deployment>(&client, ns), managed(Component::FrontEnd))
        .owns(api::<Service>(&client, ns), managed(Component::FrontEnd))
        .owns(api::<ConfigMap>(&client, ns), managed(Component::FrontEnd))
        .owns(api::<PodDisruptionBudget>(&client, ns), managed(Component::FrontEnd))
        // The domain's status holds the routing table (status.resolved.homeServers).
        .watches(domains, all(), move |d: CommunicationsDomain| by_domain(&fe_store, d.namespace(), &d.name_any()))
        .graceful_shutdown_on(stop.clone())
        .run(
            |fe, ctx: Arc<Context>| async move {
                instrumented("FrontEnd", &ctx.clone(), front_end::reconcile(fe, ctx)).await
            },
            error_policy,
            ctx.clone(),
        )
        .take_until(unless_ready(stop.clone(), fe_ready))
        .for_each(log_results("FrontEnd"));

    info!(namespace = ?namespace, "controllers running");
    futures::join!(domain_ctrl, hs_ctrl, fe_ctrl);
    info!("controllers stopped");
}

/// Reasons whose transitions are reported as Warning Events.
const WARNING_REASONS: [&str; 10] = [
    "InvalidSpec",
    "DomainNotFound",
    "CannotShrink",
    "ExpansionRefused",
    "NotOwned",
    "JobFailed",
    "NoAdminSecret",
    "CertManagerMissing",
    "CaUnusable",
    "NotIssued",
];

/// Publishes an Event for every condition that changed status between `old` and `new`.
pub async fn report_transitions<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    old: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    new: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    for c in conditions::transitions(old, new) {
        let first = !old.iter().any(|o| o.type_ == c.type_);
        // A condition that starts out False (not paused, nothing blocked) is not news.
        if first && c.status == "False" && c.type_ != crate::crd::condition::READY {
            continue;
        }
        let warning = c.status == "False" && WARNING_REASONS.contains(&c.reason.as_str());
        let note = if c.message.is_empty() { format!("{} is {}", c.type_, c.status) } else { c.message.clone() };
        ctx.event(obj, warning, &c.reason, c.type_.as_str(), note).await;
    }
}

/// Publishes an Event saying that `child` was created or put back.
pub async fn report_apply<K, C>(ctx: &Context, obj: &K, child: &C, outcome: apply::Outcome)
where
    K: Resource<DynamicType = ()>,
    C: Resource<DynamicType = ()>,
{
    let (reason, verb) = match outcome {
        apply::Outcome::Unchanged => return,
        apply::Outcome::Created => ("Created", "created"),
        apply::Outcome::Updated => ("Updated", "updated"),
    };
    let (kind, name) = (C::kind(&()), child.name_any());
    info!(%kind, %name, verb, "applied");
    ctx.event_about(obj, Some(child.object_ref(&())), false, reason, "Apply", format!("{verb} {kind} {name}")).await;
}
