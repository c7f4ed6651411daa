//! Pure builders: a custom resource (and what it points to) in, Kubernetes objects out.
//!
//! Nothing here talks to the API server, so every object the operator writes can be checked by
//! plain unit tests: labels, owner references, probes, resources, volumes, security context.

pub mod certificates;
pub mod config;
pub mod credentials;
pub mod directory;
pub mod domain;
pub mod drain;
pub mod front_end;
pub mod home_server;
pub mod network;
pub mod prep;
pub mod quantity;
pub mod resolve;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, Probe, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::crd::{ResolvedDomain, ResolvedKey};

/// Field manager of every server-side apply the operator sends.
pub const FIELD_MANAGER: &str = "parley-operator";
/// Pod-template annotation holding the hash of the server config; a new hash rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "parley.dev/config-hash";
/// Annotation holding the hash of the object as last applied; lets a reconcile skip writing.
pub const APPLIED_HASH_ANNOTATION: &str = "parley.dev/applied-hash";
/// Annotation on a Home Server's StatefulSet: the hash of its pod template.
pub const TEMPLATE_HASH_ANNOTATION: &str = "parley.dev/template-hash";
/// Label naming the CommunicationsDomain an object belongs to.
pub const DOMAIN_LABEL: &str = "parley.dev/domain";
/// `app.kubernetes.io/managed-by` value of every object the operator creates.
pub const MANAGED_BY: &str = "parley-operator";
/// Label selector matching every object the operator creates (used to narrow its watches).
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=parley-operator";

/// Uid and gid the server image runs as (distroless `nonroot`).
pub const SERVER_UID: i64 = 65532;
/// SIP over UDP and TCP, in the pods.
pub const SIP_PORT: i32 = 5060;
/// SIP over TLS, in the pods.
pub const SIP_TLS_PORT: i32 = 5061;
/// SIP over mutual TLS between Front-Ends and Home Servers (the internal link).
pub const INTERNAL_PORT: i32 = 5062;
/// HTTP operations port: `/healthz`, `/readyz`, `/metrics`.
pub const OPS_PORT: i32 = 8080;
/// SIP over secure WebSocket (browsers; RFC 7118), with the server's certificate.
pub const SIP_WSS_PORT: i32 = 7443;
/// The web client (plain HTTP: put TLS in front with an Ingress or load balancer).
pub const WEB_PORT: i32 = 8088;
/// Seconds Kubernetes gives a server pod to stop: the server's own bound on its shutdown
/// (`limits.shutdown_timeout_secs`: not ready, refuse new work, finish, close flows) and a margin.
pub fn termination_grace_seconds() -> i64 {
    i64::try_from(parley_config::Limits::default().shutdown_timeout_secs).unwrap_or(20) + 10
}

/// Where the server image keeps the built web client.
pub const WEB_ROOT: &str = "/usr/share/parley/web";

/// Where things are mounted in the server container.
pub mod paths {
    pub const CONFIG: &str = "/etc/parley/parley.toml";
    pub const TLS_DIR: &str = "/etc/parley/tls";
    pub const TLS_CERT: &str = "/etc/parley/tls/tls.crt";
    pub const TLS_KEY: &str = "/etc/parley/tls/tls.key";
    pub const TLS_CA: &str = "/etc/parley/tls/ca.crt";
    pub const DIRECTORY_DIR: &str = "/etc/parley/directory";
    pub const DIRECTORY_PASSWORD: &str = "/etc/parley/directory/password";
    pub const DIRECTORY_FILE: &str = "/etc/parley/directory/users.toml";
    /// The LDAP directory's CA bundle (`spec.directory.ldap.caBundle`, or the domain's CA for a
    /// managed directory), when there is one.
    pub const DIRECTORY_CA_DIR: &str = "/etc/parley/directory-ca";
    pub const DIRECTORY_CA: &str = "/etc/parley/directory-ca/ca.crt";
    /// The domain's administrator token for the operations API (`user move`, `user drain`).
    pub const API_TOKEN_DIR: &str = "/etc/parley/api";
    pub const API_TOKEN: &str = "/etc/parley/api/token";
    /// The key a domain's Front-End replicas share their flow tokens under.
    pub const FLOW_KEY_DIR: &str = "/etc/parley/flow";
    pub const FLOW_KEY: &str = "/etc/parley/flow/key";
    pub const DATA_DIR: &str = "/var/lib/parley/data";
    pub const LOGS_DIR: &str = "/var/lib/parley/logs";
}

/// Component label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    HomeServer,
    FrontEnd,
    /// The managed directory (`spec.directory.managed`).
    Directory,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::HomeServer => "home-server",
            Component::FrontEnd => "front-end",
            Component::Directory => "directory",
        }
    }
    fn role(self) -> &'static str {
        match self {
            Component::HomeServer => "home",
            Component::FrontEnd => "frontend",
            Component::Directory => "directory",
        }
    }
}

/// Why an object could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("{0} has no {1} (it must come from the API server)")]
    MissingMetadata(&'static str, &'static str),
    #[error("rendering the server config: {0}")]
    Config(String),
    #[error("certificates: {0}")]
    Certificate(String),
    #[error("directory preparation: {0}")]
    Prep(String),
}

/// Everything a HomeServer's or FrontEnd's builder needs besides the resource itself: its
/// domain as the domain controller resolved it (`status.resolved`, see [`resolve`]) and the
/// operator's settings.
#[derive(Clone, Debug)]
pub struct BuildContext<'a> {
    pub resolved: &'a ResolvedDomain,
    /// DNS suffix of Services, `cluster.local` by default.
    pub cluster_domain: &'a str,
}

impl BuildContext<'_> {
    pub fn image(&self) -> String {
        self.resolved.image.clone()
    }

    /// The Secret holding `server`'s certificate.
    pub fn tls_secret(&self, server: &str) -> String {
        self.resolved.certificate_secret(server).map(str::to_string).unwrap_or_else(|| tls_secret_name(server))
    }
}

/// Labels that select a workload's pods; never change once the workload exists.
pub fn selector_labels(instance: &str, component: Component) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "parley"),
        ("app.kubernetes.io/instance", instance),
        ("app.kubernetes.io/component", component.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Labels of every object built for `instance`.
pub fn labels(instance: &str, component: Component, domain: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(instance, component);
    l.insert("app.kubernetes.io/part-of".into(), "parley".into());
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l.insert(DOMAIN_LABEL.into(), domain.into());
    l
}

/// The controller owner reference to `owner`, so deleting it deletes what was built for it.
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K, what: &'static str) -> Result<OwnerReference, BuildError> {
    if owner.meta().uid.is_none() {
        return Err(BuildError::MissingMetadata(what, "uid"));
    }
    owner.controller_owner_ref(&()).ok_or(BuildError::MissingMetadata(what, "name"))
}

/// The resource that owns what a builder makes: the namespace it lives in and the controller
/// reference its objects carry. All a builder takes of the resource itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub name: String,
    pub namespace: String,
    pub reference: OwnerReference,
}

impl Owner {
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K, what: &'static str) -> Result<Owner, BuildError> {
        let (name, namespace) = name_ns(obj, what)?;
        Ok(Owner { name, namespace, reference: owner_ref(obj, what)? })
    }

    /// Metadata of an object it owns.
    pub fn meta(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.reference.clone()]),
            ..Default::default()
        }
    }
}

/// What every object built for one workload shares: name, namespace, labels and owner.
pub struct Workload {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub selector: BTreeMap<String, String>,
    pub namespace: String,
    owner: OwnerReference,
}

impl Workload {
    /// The identity of the workload built for `obj` (a HomeServer or FrontEnd of `domain`).
    pub fn of<K: Resource<DynamicType = ()>>(
        obj: &K,
        what: &'static str,
        component: Component,
        domain: &str,
    ) -> Result<Workload, BuildError> {
        Ok(Self::owned_by(&Owner::of(obj, what)?, component, domain))
    }

    /// The workload named after `owner` (a HomeServer, a FrontEnd, a domain's directory).
    pub fn owned_by(owner: &Owner, component: Component, domain: &str) -> Workload {
        Workload {
            labels: labels(&owner.name, component, domain),
            selector: selector_labels(&owner.name, component),
            owner: owner.reference.clone(),
            name: owner.name.clone(),
            namespace: owner.namespace.clone(),
        }
    }

    /// Metadata of one of the workload's objects: its namespace, labels and owner.
    pub fn meta(&self, obj_name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(obj_name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels.clone()),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }
}

/// Name and namespace of a resource, which every builder needs.
pub fn name_ns<K: Resource>(obj: &K, what: &'static str) -> Result<(String, String), BuildError> {
    let m = obj.meta();
    Ok((
        m.name.clone().ok_or(BuildError::MissingMetadata(what, "name"))?,
        m.namespace.clone().ok_or(BuildError::MissingMetadata(what, "namespace"))?,
    ))
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Name of the ConfigMap holding a server's config.
pub fn config_map_name(instance: &str) -> String {
    format!("{instance}-config")
}

/// Name of the Secret holding a server's certificate (`tls.crt`, `tls.key`).
pub fn tls_secret_name(instance: &str) -> String {
    format!("{instance}-tls")
}

/// Pod security: non-root uid 65532, the volumes group-owned by it, seccomp RuntimeDefault.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SERVER_UID),
        run_as_group: Some(SERVER_UID),
        fs_group: Some(SERVER_UID),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// Container security: read-only root filesystem, no privilege escalation, every capability dropped.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(SERVER_UID),
        run_as_group: Some(SERVER_UID),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("ops".into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        success_threshold: Some(1),
        ..Default::default()
    }
}

/// Readiness on `/readyz`: out of the Service while not ready (e.g. draining).
pub fn readiness_probe() -> Probe {
    http_probe("/readyz", 5, 2)
}

/// Liveness on `/healthz`: restart after 30 seconds of failures.
pub fn liveness_probe() -> Probe {
    http_probe("/healthz", 10, 3)
}

/// Startup on `/healthz`: up to two minutes to open the store before liveness applies.
pub fn startup_probe() -> Probe {
    http_probe("/healthz", 2, 60)
}

/// The server's ports. Without `sip_plain` (clients must use TLS) only 5061, the internal link and ops.
pub fn container_ports(sip_plain: bool) -> Vec<ContainerPort> {
    let port = |name: &str, p: i32, proto: &str| ContainerPort {
        name: Some(name.into()),
        container_port: p,
        protocol: Some(proto.into()),
        ..Default::default()
    };
    let mut ports = Vec::new();
    if sip_plain {
        ports.push(port("sip-udp", SIP_PORT, "UDP"));
        ports.push(port("sip-tcp", SIP_PORT, "TCP"));
    }
    ports.push(port("sip-tls", SIP_TLS_PORT, "TCP"));
    ports.push(port("sip-wss", SIP_WSS_PORT, "TCP"));
    ports.push(port("web", WEB_PORT, "TCP"));
    ports.push(port("sip-internal", INTERNAL_PORT, "TCP"));
    ports.push(port("ops", OPS_PORT, "TCP"));
    ports
}

fn mount(name: &str, path: &str, sub_path: Option<&str>) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        sub_path: sub_path.map(Into::into),
        // `readOnly: false` is the default the API server leaves out: say only `true`.
        read_only: (!path.starts_with("/var/lib") && path != "/tmp").then_some(true),
        ..Default::default()
    }
}

/// The server container of either role.
pub fn server_container(
    ctx: &BuildContext,
    component: Component,
    resources: k8s_openapi::api::core::v1::ResourceRequirements,
) -> Container {
    let plain = !ctx.resolved.require_client_tls;
    let mut mounts = vec![
        mount("config", paths::CONFIG, Some("parley.toml")),
        mount("tls", paths::TLS_DIR, None),
        mount("directory", paths::DIRECTORY_DIR, None),
        mount("data", paths::DATA_DIR, None),
        mount("logs", paths::LOGS_DIR, None),
        mount("tmp", "/tmp", None),
    ];
    if ldap_ca_bundle(ctx.resolved).is_some() {
        mounts.push(mount("directory-ca", paths::DIRECTORY_CA_DIR, None));
    }
    mounts.sort_by(|a, b| a.mount_path.cmp(&b.mount_path));
    Container {
        name: "server".into(),
        image: Some(ctx.image()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["/usr/local/bin/parley-server".into()]),
        args: Some(vec![
            "serve".into(),
            "--role".into(),
            component.role().into(),
            "--config".into(),
            paths::CONFIG.into(),
        ]),
        env: Some(server_env(component)),
        ports: Some(container_ports(plain)),
        readiness_probe: Some(readiness_probe()),
        liveness_probe: Some(liveness_probe()),
        startup_probe: Some(startup_probe()),
        resources: Some(resources),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// Mounts key `key` of Secret `secret` read-only in `container`, as the file `dir/key`.
pub fn mount_secret(
    container: &mut Container,
    volumes: &mut Vec<Volume>,
    name: &str,
    secret: &str,
    key: &str,
    dir: &str,
) {
    volumes.push(prep::secret_volume(name, secret, key, key));
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    mounts.push(prep::read_only(name, dir));
    mounts.sort_by(|a, b| a.mount_path.cmp(&b.mount_path));
}

/// The server's environment: its pod name and, for a Front-End (replicas share one config), the
/// pod IP that Home Servers reach this replica at (`PARLEY_ADVERTISE_INTERNAL`).
fn server_env(component: Component) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut env = vec![field("PARLEY_INSTANCE", "metadata.name")];
    if component == Component::FrontEnd {
        env.push(field("PARLEY_ADVERTISE_INTERNAL", "status.podIP"));
    }
    env
}

/// Volumes every server pod has: its config, its certificate, the directory credentials (or
/// users file) and a scratch `/tmp`. Data and logs are added by the role's builder.
pub fn common_volumes(instance: &str, ctx: &BuildContext) -> Vec<Volume> {
    let directory = &ctx.resolved.directory;
    let service_account = directory.ldap.as_ref().map(|l| &l.password_secret);
    let directory_volume = match (service_account, &directory.file) {
        (Some(secret), _) => Volume {
            name: "directory".into(),
            secret: Some(SecretVolumeSource {
                secret_name: secret.secret.clone(),
                items: Some(vec![KeyToPath { key: secret.key.clone(), path: "password".into(), ..Default::default() }]),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
        (None, Some(file)) => Volume {
            name: "directory".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: file.config_map.clone().unwrap_or_default(),
                items: Some(vec![KeyToPath { key: file.key.clone(), path: "users.toml".into(), ..Default::default() }]),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
        // Refused by the CRD's CEL rule and by validation; an empty dir keeps the builder total.
        (None, None) => {
            Volume { name: "directory".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() }
        }
    };
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(instance),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ctx.tls_secret(instance)),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
        directory_volume,
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(quantity::q("64Mi")), ..Default::default() }),
            ..Default::default()
        },
    ];
    volumes.extend(ldap_ca_bundle(ctx.resolved).map(|ca| ca_bundle_volume("directory-ca", ca)));
    volumes
}

/// The CA bundle of the domain's LDAP directory (for a managed one, the domain's CA).
fn ldap_ca_bundle(resolved: &ResolvedDomain) -> Option<&ResolvedKey> {
    resolved.directory.ldap.as_ref()?.ca_bundle.as_ref()
}

/// A volume holding the CA bundle `ca` as the file `ca.crt`, from its ConfigMap or Secret.
pub fn ca_bundle_volume(name: &str, ca: &ResolvedKey) -> Volume {
    let items = Some(vec![KeyToPath { key: ca.key.clone(), path: "ca.crt".into(), ..Default::default() }]);
    match (&ca.config_map, &ca.secret) {
        (Some(cm), _) => Volume {
            name: name.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.clone(),
                items,
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
        (None, secret) => Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: secret.clone(),
                items,
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// One port of a Service.
pub fn service_port(name: &str, port: i32, target: i32, protocol: &str) -> k8s_openapi::api::core::v1::ServicePort {
    k8s_openapi::api::core::v1::ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Resources as the API server would hand them to a controller (with uid and namespace).

    use kube::api::ObjectMeta;

    use crate::crd::*;

    pub fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            ..Default::default()
        }
    }

    /// The build context the builders' tests use: `d` resolved with the Home Servers and the
    /// Front-End its plan calls for (leaked: a test's value lives as long as the test).
    pub fn ctx(d: &CommunicationsDomain) -> super::BuildContext<'static> {
        super::BuildContext { resolved: Box::leak(Box::new(resolved(d))), cluster_domain: "cluster.local" }
    }

    /// `d` as the domain controller resolves it, with the servers its plan calls for.
    pub fn resolved(d: &CommunicationsDomain) -> ResolvedDomain {
        let sizing = crate::tiers::resolve(d.spec.users.into());
        let name = d.metadata.name.clone().unwrap();
        let count = d.spec.home_servers.unwrap_or(sizing.home_servers);
        let hs: Vec<String> = (1..=count).map(|n| super::domain::home_server_name(&name, n)).collect();
        let fe: Vec<String> = if sizing.has_front_end() { vec![super::domain::front_end_name(&name)] } else { vec![] };
        let capacities = super::domain::plan(d, &sizing, &Default::default()).unwrap().capacities;
        let input = super::resolve::ResolveInput {
            sizing: &sizing,
            default_image: "parley-server:test",
            cluster_domain: "cluster.local",
            home_servers: &hs,
            capacities: &capacities,
            front_ends: &fe,
            advertised: &Default::default(),
        };
        super::resolve::resolve(d, &input).unwrap()
    }

    pub fn domain(name: &str, users: u32) -> CommunicationsDomain {
        CommunicationsDomain {
            metadata: meta(name),
            spec: CommunicationsDomainSpec {
                sip_domain: "example.test".into(),
                users,
                topology: Topology::Auto,
                home_servers: None,
                home_server: None,
                front_end: None,
                directory: DirectorySpec {
                    ldap: Some(LdapDirectory {
                        url: "ldap://ldap.example:389".into(),
                        base_dn: "dc=example,dc=test".into(),
                        bind_dn: None,
                        service_account_secret_ref: Some(SecretKeyRef {
                            name: "ldap-service".into(),
                            key: "password".into(),
                        }),
                        password_secret: None,
                        admin_secret: Some(AdminSecretRef {
                            name: "ldap-admin".into(),
                            key: "password".into(),
                            bind_dn_key: "bindDn".into(),
                        }),
                        ca_bundle: None,
                        start_tls: false,
                    }),
                    file: None,
                    managed: None,
                },
                additional_domains: vec![],
                tls: TlsSpec::default(),
                image: None,
                paused: false,
                network_policy: Default::default(),
            },
            status: None,
        }
    }

    pub fn home_server(name: &str, domain: &str) -> HomeServer {
        HomeServer {
            metadata: meta(name),
            spec: HomeServerSpec {
                domain: domain.into(),
                capacity: None,
                resources: None,
                storage: None,
                service: Default::default(),
                drain: false,
                advertise: None,
            },
            status: None,
        }
    }

    pub fn front_end(name: &str, domain: &str) -> FrontEnd {
        FrontEnd {
            metadata: meta(name),
            spec: FrontEndSpec {
                domain: domain.into(),
                replicas: None,
                service_type: ServiceType::ClusterIP,
                ports: FrontEndPorts::default(),
                resources: None,
                advertise: None,
            },
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! What the builders produce is compared with the live object to decide whether a reconcile
    //! must write (`controllers::apply::contains`). A value the API server does not keep (a
    //! `false`, empty list or empty string in a field Go declares `omitempty` without a pointer)
    //! never matches, so every reconcile rewrites the object and reads it as just written: found
    //! on the one-node cluster (`make e2e`), where a HomeServer never became Ready because of
    //! `publishNotReadyAddresses: false` and `readOnly: false`.

    use serde_json::Value;

    use super::fixtures::{self, ctx};
    use super::*;
    use crate::crd::{FileDirectory, ServiceType};

    /// Fields that are pointers in the Go types: the API server keeps an explicit `false`.
    const KEPT_FALSE: &[&str] = &[
        "allowPrivilegeEscalation",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "optional",
        "privileged",
        "readOnlyRootFilesystem",
        "runAsNonRoot",
    ];
    /// Fields whose empty object means something (and is kept).
    const KEPT_EMPTY_OBJECT: &[&str] = &["emptyDir"];

    fn dropped_values(v: &Value, path: &str, found: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let p = format!("{path}.{k}");
                    let empty = match child {
                        Value::Bool(false) => !KEPT_FALSE.contains(&k.as_str()),
                        Value::Array(a) => a.is_empty(),
                        Value::String(s) => s.is_empty(),
                        Value::Object(o) => o.is_empty() && !KEPT_EMPTY_OBJECT.contains(&k.as_str()),
                        _ => false,
                    };
                    if empty {
                        found.push(format!("{p} = {child}"));
                    }
                    dropped_values(child, &p, found);
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    dropped_values(child, &format!("{path}[{i}]"), found);
                }
            }
            _ => {}
        }
    }

    fn check<K: serde::Serialize>(what: &str, obj: &K, found: &mut Vec<String>) {
        dropped_values(&serde_json::to_value(obj).unwrap(), what, found);
    }

    #[test]
    fn no_false_the_api_server_drops() {
        let mut found = Vec::new();
        for (users, file, client_tls, service) in [
            (500, false, false, ServiceType::ClusterIP),
            (500, true, false, ServiceType::NodePort),
            (5_000, true, true, ServiceType::LoadBalancer),
            (25_000, false, true, ServiceType::NodePort),
        ] {
            let mut d = fixtures::domain("corp", users);
            d.spec.tls.require_client_tls = client_tls;
            if file {
                d.spec.directory.ldap = None;
                d.spec.directory.file = Some(FileDirectory { config_map: "users".into(), key: "users.toml".into() });
            }
            let mut hs = fixtures::home_server("corp-home-1", "corp");
            hs.spec.service.type_ = service;
            let o = home_server::build(&hs, &ctx(&d)).unwrap();
            check("HomeServer ConfigMap", &o.config_map, &mut found);
            check("HomeServer Service", &o.service, &mut found);
            check("HomeServer client Service", &o.client_service, &mut found);
            check("HomeServer PodDisruptionBudget", &o.pdb, &mut found);
            check("HomeServer StatefulSet", &o.stateful_set, &mut found);
            let routes = [config::HomeServerRoute {
                name: "corp-home-1".into(),
                address: "corp-home-1.ns.svc.cluster.local:5062".into(),
            }];
            let mut fe = fixtures::front_end("corp-frontend", "corp");
            fe.spec.service_type = service;
            let o = front_end::build(&fe, &ctx(&d), &routes).unwrap();
            check("FrontEnd ConfigMap", &o.config_map, &mut found);
            check("FrontEnd Service", &o.service, &mut found);
            check("FrontEnd PodDisruptionBudget", &o.pdb, &mut found);
            check("FrontEnd Deployment", &o.deployment, &mut found);
        }
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory = crate::crd::DirectorySpec { managed: Some(Default::default()), ..Default::default() };
        let owner = Owner::of(&d, "CommunicationsDomain").unwrap();
        let resolved = fixtures::resolved(&d);
        let input =
            directory::DirectoryInput { owner: &owner, domain: &resolved, image: "i", tls_hash: Some("h".into()) };
        let o = directory::build(&input).unwrap();
        check("directory ConfigMap", &o.config_map, &mut found);
        check("directory Service", &o.service, &mut found);
        check("directory StatefulSet", &o.stateful_set, &mut found);
        check("directory admin Secret", &directory::admin_secret(&owner, "example.test", "pw"), &mut found);
        let hs = fixtures::home_server("corp-home-1", "corp");
        let o = home_server::build(&hs, &ctx(&d)).unwrap();
        check("HomeServer StatefulSet, managed directory", &o.stateful_set, &mut found);
        found.sort();
        found.dedup();
        assert!(
            found.is_empty(),
            "the API server leaves these values out, so the live object never matches and every \
             reconcile rewrites it; leave the field unset instead:\n{}",
            found.join("\n")
        );
    }
}
