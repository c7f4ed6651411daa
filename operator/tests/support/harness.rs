//! Runs a scenario against the double, against the control plane of [`super::envtest`], or, when
//! `KUBECONFIG` is set, against a real cluster: in a fresh namespace, with operator instances
//! started in-process (watching only that namespace, electing a leader with a Lease in it).

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use parley_operator::controllers::Settings;
use parley_operator::crd::{CommunicationsDomain, CommunicationsDomainSpec, DirectorySpec, FileDirectory};
use parley_operator::runtime::leader::LeaseTiming;
use parley_operator::runtime::metrics::Metrics;
use parley_operator::runtime::{Operator, OperatorConfig, shutdown_signal};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::task::JoinHandle;

use super::ApiServer;
use super::status_board::StatusBoard;
use super::store::Logged;

/// Where a scenario runs.
pub enum Backend {
    Double(ApiServer),
    Cluster,
}

pub struct Harness {
    pub ns: String,
    /// The test's own client (what `kubectl` would be).
    pub client: Client,
    pub backend: Backend,
    /// Whether workloads become ready: the double fakes their status, and on the control plane
    /// of [`super::envtest`] the harness plays the kubelet; on a cluster pods really run.
    pub pods_become_ready: bool,
    /// On a real API server: every request the operators sent (the double keeps its own log).
    log: Arc<Mutex<Vec<Logged>>>,
    /// How long to wait for the operator to converge.
    pub timeout: Duration,
    background: Vec<JoinHandle<()>>,
    /// What the Home Servers' `/status` says, as the scenario sets it.
    pub board: StatusBoard,
}

/// A users file in the server's format (alice, password alice-password).
pub const USERS_TOML: &str =
    "[[users]]\naddress = \"alice@example.test\"\nha1_md5 = \"9e08d7520c4e1e3699eba51896968f5d\"\n";

/// Field manager of the test's own writes (what `kubectl apply --server-side` would use).
pub const TEST_MANAGER: &str = "kubectl";

/// The CRDs as users install them: the YAML in crds/ (a unit test keeps it in step with the types).
fn crds_dir() -> Vec<CustomResourceDefinition> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("crds/").map(|e| e.expect("crds/ entry").path()).collect();
    files.sort();
    let crds: Vec<CustomResourceDefinition> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("read CRD");
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect();
    assert_eq!(crds.len(), 3, "crds/ holds the three CRDs");
    crds
}

async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds_dir() {
        let name = crd.name_any();
        crds.patch(&name, &PatchParams::apply("parley-tests").force(), &Patch::Apply(&crd)).await.expect("install CRD");
    }
    eventually("CRDs established", Duration::from_secs(60), || async {
        for crd in crds_dir() {
            let live = crds.get(&crd.name_any()).await.ok()?;
            let ok = live.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
            if !ok {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Plays kube-controller-manager for the double: marks StatefulSets and Deployments as rolled
/// out and ready, as their controllers would once the pods run.
async fn fake_workload_controllers(client: Client, ns: String) {
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let deploys: Api<Deployment> = Api::namespaced(client, &ns);
    let pp = PatchParams::default();
    loop {
        if let Ok(list) = sts.list(&ListParams::default()).await {
            for s in list {
                let replicas = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let generation = s.metadata.generation.unwrap_or(1);
                let want = json!({
                    "replicas": replicas, "readyReplicas": replicas, "currentReplicas": replicas,
                    "updatedReplicas": replicas, "availableReplicas": replicas, "observedGeneration": generation,
                    "currentRevision": format!("{}-r{generation}", s.name_any()), "updateRevision": format!("{}-r{generation}", s.name_any()),
                });
                if serde_json::to_value(&s.status).ok() != Some(want.clone()) {
                    let _ = sts.patch_status(&s.name_any(), &pp, &Patch::Merge(json!({"status": want}))).await;
                }
            }
        }
        if let Ok(list) = deploys.list(&ListParams::default()).await {
            for d in list {
                let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let want = json!({
                    "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
                    "availableReplicas": replicas, "observedGeneration": d.metadata.generation.unwrap_or(1),
                });
                if serde_json::to_value(&d.status).ok() != Some(want.clone()) {
                    let _ = deploys.patch_status(&d.name_any(), &pp, &Patch::Merge(json!({"status": want}))).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Plays the kubelet on a control plane without one: marks every pod in `ns` running and ready,
/// so that the workload controllers report ready StatefulSets and Deployments.
async fn fake_kubelet(client: Client, ns: String) {
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let status = json!({"status": {"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "ContainersReady", "status": "True"},
        {"type": "Ready", "status": "True"},
    ]}});
    loop {
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for p in list {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if !ready && p.metadata.deletion_timestamp.is_none() {
                    let _ = pods.patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client that sends through `inner` and logs each request under `name`, so that a scenario
/// can count an operator's writes on a real API server as it does on the double.
fn recording(inner: Client, log: Arc<Mutex<Vec<Logged>>>, name: &str) -> Client {
    let name = name.to_string();
    let ns = inner.default_namespace().to_string();
    let router = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (inner, log, name) = (inner.clone(), log.clone(), name.clone());
        async move {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            let mut entry = Logged {
                client: name,
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                code: 0,
            };
            let req = axum::http::Request::from_parts(parts, kube::client::Body::from(bytes.to_vec()));
            let response = match inner.send(req).await {
                Ok(resp) => {
                    entry.code = resp.status().as_u16();
                    resp.map(axum::body::Body::new).into_response()
                }
                Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            };
            log.lock().expect("log").push(entry);
            response
        }
    });
    Client::new(router, ns)
}

/// Polls `f` until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }

        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An operator instance running in the test process.
pub struct OperatorHandle {
    pub identity: String,
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl OperatorHandle {
    /// Graceful shutdown: controllers finish, the Lease is released.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task).await??
    }

    pub fn is_leader(&self) -> bool {
        self.metrics.is_leader()
    }

    /// Waits until every reconcile of `kind` begun by now has finished: later ones start from
    /// what the API server says after this call.
    pub async fn drain(&self, kind: &str, timeout: Duration) {
        let begun = self.metrics.started(kind);
        eventually(&format!("the {kind} reconciles begun so far to finish"), timeout, || async {
            (self.metrics.reconciles(kind) >= begun).then_some(())
        })
        .await
    }
}

impl Drop for OperatorHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Harness {
    /// A scenario against a fresh double.
    pub async fn double(test: &str) -> Harness {
        let api = ApiServer::new();
        let client = api.client("test");
        install_crds(&client).await;
        let ns = format!("t-{}", test.replace('_', "-"));
        let h = Harness {
            ns: ns.clone(),
            client,
            background: vec![tokio::spawn(fake_workload_controllers(api.client("kube-controller-manager"), ns))],
            backend: Backend::Double(api),
            pods_become_ready: true,
            log: Arc::default(),
            timeout: Duration::from_secs(20),
            board: StatusBoard::start().await,
        };
        h.create_namespace().await;
        h
    }

    /// A scenario against the cluster in `KUBECONFIG`, or `None` (with a message) without one.
    pub async fn cluster(test: &str) -> Option<Harness> {
        if std::env::var_os("KUBECONFIG").is_none() {
            eprintln!(
                "skipped: KUBECONFIG not set ({test} runs against a real cluster only when it is; `make e2e` sets it)"
            );
            // Written past the test harness's output capture, once, so a plain `cargo test` shows it.
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: KUBECONFIG not set, so the cluster::* scenarios did not run against a real cluster; \
                     `make e2e` runs them against the cluster in KUBECONFIG (CI: the one-node cluster)"
                );
            });
            return None;
        }
        let client = Client::try_default().await.expect("KUBECONFIG names a reachable cluster");
        Some(Self::real(test, client, Duration::from_secs(120), false).await)
    }

    /// A scenario against the control plane this test binary starts from `KUBEBUILDER_ASSETS`
    /// (see [`super::envtest`]), or `None` (counted and reported) when it is to be skipped.
    pub async fn apiserver(test: &str) -> Option<Harness> {
        let plane = match tokio::task::spawn_blocking(super::envtest::control_plane).await.expect("join") {
            Ok(Some(plane)) => plane,
            Ok(None) => {
                super::envtest::skipped(&format!("apiserver::{test}"));
                return None;
            }
            Err(e) => panic!("{e}"),
        };
        let mut h = Self::real(test, plane.client().await, Duration::from_secs(60), true).await;
        h.background.push(tokio::spawn(fake_kubelet(h.client.clone(), h.ns.clone())));
        Some(h)
    }

    /// A scenario on a real API server, in a namespace of its own.
    async fn real(test: &str, client: Client, timeout: Duration, pods_become_ready: bool) -> Harness {
        install_crds(&client).await;
        let suffix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let mut base = format!("parley-test-{}", test.replace('_', "-"));
        base.truncate(52);
        let h = Harness {
            ns: format!("{}-{:08x}", base.trim_end_matches('-'), suffix),
            client,
            backend: Backend::Cluster,
            pods_become_ready,
            log: Arc::default(),
            timeout,
            background: Vec::new(),
            board: StatusBoard::start().await,
        };
        h.create_namespace().await;
        h
    }

    async fn create_namespace(&self) {
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(self.ns.clone()), ..Default::default() },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
    }

    pub fn is_double(&self) -> bool {
        matches!(self.backend, Backend::Double(_))
    }

    pub fn double_api(&self) -> Option<&ApiServer> {
        match &self.backend {
            Backend::Double(api) => Some(api),
            Backend::Cluster => None,
        }
    }

    /// How many requests all clients (on the double) or the operators (on a real server) sent so far.
    pub fn requests_so_far(&self) -> usize {
        match &self.backend {
            Backend::Double(api) => api.requests().len(),
            Backend::Cluster => self.log.lock().expect("log").len(),
        }
    }

    /// Writes (anything but GET) the operator `identity` sent after request number `since`.
    pub fn writes_by(&self, identity: &str, since: usize) -> Vec<Logged> {
        match &self.backend {
            Backend::Double(api) => api.writes_by(identity, since),
            Backend::Cluster => self
                .log
                .lock()
                .expect("log")
                .iter()
                .skip(since)
                .filter(|l| l.client == identity && l.is_write())
                .cloned()
                .collect(),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Starts an operator instance called `identity` (its client is logged under that name).
    pub fn start_operator(&self, identity: &str) -> OperatorHandle {
        let client = match &self.backend {
            Backend::Double(api) => api.client(identity),
            Backend::Cluster => self.client.clone(),
        };
        self.start_operator_with(identity, client)
    }

    /// Starts an operator instance called `identity` that talks through `client` (on a real
    /// server, e.g. with a ServiceAccount's token).
    pub fn start_operator_with(&self, identity: &str, client: Client) -> OperatorHandle {
        super::leaks::capture();
        let client = match &self.backend {
            Backend::Double(_) => client,
            Backend::Cluster => recording(client, self.log.clone(), identity),
        };
        let config = OperatorConfig {
            watch_namespace: Some(self.ns.clone()),
            lease_namespace: self.ns.clone(),
            lease_name: "parley-operator".into(),
            identity: identity.into(),
            lease_timing: LeaseTiming {
                duration: Duration::from_secs(2),
                retry: Duration::from_millis(200),
                renew_deadline: Duration::from_secs(1),
            },
            ops_addr: None,
            crd_poll: Duration::from_millis(100),
            settings: Settings {
                default_image: "parley-server:test".into(),
                cluster_domain: "cluster.local".into(),
                directory_image: "parley-directory:test".into(),
                operator_namespace: Some(self.ns.clone()),
                server_status_url: Some(self.board.url.clone()),
            },
        };
        let operator = Operator::new(client, config);
        let metrics = operator.metrics();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(operator.run(shutdown_signal(async move {
            let _ = rx.await;
        })));
        OperatorHandle { identity: identity.into(), metrics, stop: Some(tx), task }
    }

    /// The users file the domains of the scenarios point at.
    pub async fn create_users_config_map(&self) {
        let cm = ConfigMap {
            metadata: ObjectMeta { name: Some("users".into()), ..Default::default() },
            data: Some([("users.toml".to_string(), USERS_TOML.to_string())].into()),
            ..Default::default()
        };
        self.api::<ConfigMap>().create(&PostParams::default(), &cm).await.expect("users ConfigMap");
    }

    /// Applies a domain of `users` users, as `kubectl apply --server-side` would.
    pub async fn apply_domain(&self, name: &str, users: u32) -> CommunicationsDomain {
        let spec = CommunicationsDomainSpec {
            sip_domain: "example.test".into(),
            users,
            topology: Default::default(),
            home_servers: None,
            home_server: None,
            front_end: None,
            directory: DirectorySpec {
                ldap: None,
                file: Some(FileDirectory { config_map: "users".into(), key: "users.toml".into() }),
                managed: None,
            },
            additional_domains: vec![],
            tls: Default::default(),
            image: None,
            paused: false,
            network_policy: Default::default(),
        };
        let d = CommunicationsDomain::new(name, spec);
        self.api::<CommunicationsDomain>()
            .patch(name, &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&d))
            .await
            .expect("apply CommunicationsDomain")
    }

    /// Merge-patches a domain's spec.
    pub async fn patch_domain(&self, name: &str, spec: serde_json::Value) {
        self.api::<CommunicationsDomain>()
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec })))
            .await
            .expect("patch CommunicationsDomain");
    }

    /// Waits for `check` to hold on the object `name` of kind `K`, returning the object.
    pub async fn wait_for<K, F>(&self, what: &str, name: &str, check: F) -> K
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        F: Fn(&K) -> bool,
    {
        self.wait_for_within(what, name, self.timeout, check).await
    }

    /// `wait_for` with its own deadline, for a condition that comes only with a periodic poll.
    pub async fn wait_for_within<K, F>(&self, what: &str, name: &str, timeout: Duration, check: F) -> K
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        F: Fn(&K) -> bool,
    {
        let api = self.api::<K>();
        let check = &check;
        eventually(what, timeout, || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok().flatten().filter(|o| check(o)) }
        })
        .await
    }

    /// Waits until `name` of kind `K` does not exist.
    pub async fn wait_gone<K>(&self, name: &str)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        let api = self.api::<K>();
        eventually(&format!("{} {name} to be gone", K::kind(&())), self.timeout, || {
            let api = api.clone();
            async move { matches!(api.get_opt(name).await, Ok(None)).then_some(()) }
        })
        .await
    }

    /// Names of the objects of kind `K` in the namespace.
    pub async fn names<K>(&self) -> Vec<String>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    {
        let mut names: Vec<String> = self
            .api::<K>()
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .map(|o| o.name_any())
            .collect();
        names.sort();
        names
    }

    /// Deletes `name` of kind `K`.
    pub async fn delete<K>(&self, name: &str)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Serialize,
    {
        self.api::<K>().delete(name, &DeleteParams::default()).await.expect("delete");
    }

    /// Stops background tasks and, on a cluster, deletes the namespace.
    pub async fn finish(self) {
        for t in &self.background {
            t.abort();
        }
        if !self.is_double() {
            let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.ns, &DeleteParams::default()).await;
        }
    }
}

impl Harness {
    /// Waits until the list of `K` in the namespace satisfies `check`, returning it.
    pub async fn wait_for_list<K, F>(&self, what: &str, check: F) -> Vec<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        F: Fn(&[K]) -> bool,
    {
        let api = self.api::<K>();
        let check = &check;
        eventually(what, self.timeout, || {
            let api = api.clone();
            async move { api.list(&ListParams::default()).await.ok().map(|l| l.items).filter(|items| check(items)) }
        })
        .await
    }
}
