//! `CommunicationsDomain`: one SIP domain, its directory, sizing and topology.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::{NAME_PATTERN, SIP_DOMAIN_MESSAGE, SIP_DOMAIN_PATTERN, SIP_DOMAIN_RULE, SecretKeyRef, ServiceType};
use crate::tiers::Tier;

/// A SIP domain served by Parley: the users' addresses, how many of them to size for, where they
/// are listed (the directory) and whether the operator lays out the Home Servers and Front-End itself.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "parley.dev",
    version = "v1alpha1",
    kind = "CommunicationsDomain",
    namespaced,
    derive = "PartialEq",
    doc = "A SIP domain served by Parley: its users, sizing tier and topology.",
    status = "CommunicationsDomainStatus",
    shortname = "cdom",
    shortname = "commdomain",
    category = "parley",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.sipDomain"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".status.tier"),
    printcolumn(name = "Users", type_ = "integer", json_path = ".spec.users"),
    printcolumn(name = "Home Servers", type_ = "integer", json_path = ".status.homeServerCount"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 40").message(
        "the name of a CommunicationsDomain is at most 40 characters (its Home Servers are named <name>-home-<n>)"
    ),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.topology == 'auto' || (!has(self.homeServers) && !has(self.homeServer) && !has(self.frontEnd))").message(
    "homeServers, homeServer and frontEnd configure operator-owned resources and need topology: auto; with topology: manual create HomeServer and FrontEnd resources yourself"
))]
#[x_kube(validation = Rule::new("!has(self.homeServers) || self.homeServers * 10000 >= self.users").message(
    "homeServers is too small for users: one Home Server holds at most 10,000 users"
))]
pub struct CommunicationsDomainSpec {
    /// The SIP domain: users' addresses are `sip:user@<sipDomain>`. A lowercase DNS name that should
    /// match the organisation's e-mail domain. Immutable: create a new CommunicationsDomain to change it.
    #[schemars(length(min = 3, max = 253), regex(pattern = SIP_DOMAIN_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "sipDomain is immutable: users' addresses depend on it; create a new CommunicationsDomain instead"
    ))]
    #[x_kube(validation = Rule::new(SIP_DOMAIN_RULE).message(SIP_DOMAIN_MESSAGE))]
    pub sip_domain: String,

    /// The number of users to size for. Selects the sizing tier: up to 1,000 is small, up to 10,000
    /// standard, more is enterprise with one Home Server per 10,000 users and a Front-End.
    /// The operator never rewrites this value.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub users: u32,

    /// Who lays out the Home Servers and the Front-End: `auto` (the operator creates, owns and
    /// updates the HomeServer and FrontEnd resources the tier calls for) or `manual` (you create
    /// them; the operator only reports).
    #[serde(default)]
    pub topology: Topology,

    /// With topology `auto`: the number of Home Servers, overriding the tier's
    /// ceil(users / 10,000). Each Home Server holds at most 10,000 users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub home_servers: Option<u32>,

    /// With topology `auto`: settings of every operator-owned HomeServer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_server: Option<HomeServerTemplate>,

    /// With topology `auto`: settings of the operator-owned FrontEnd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front_end: Option<FrontEndTemplate>,

    /// Where users are listed and how the servers bind to it.
    pub directory: DirectorySpec,

    /// Other directory domains whose users may use these servers (the seed's `prep=domainadd`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub additional_domains: Vec<AdditionalDomain>,

    /// Certificates of the servers and whether clients must use TLS.
    #[serde(default)]
    pub tls: TlsSpec,

    /// The `parley-server` image. Defaults to the image the operator was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Stops the operator from changing anything of this domain, its Home Servers and its
    /// Front-End; it keeps reporting status and sets the `Paused` condition.
    #[serde(default)]
    pub paused: bool,

    /// NetworkPolicies that admit only what the domain's pods need.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
}

/// The domain's NetworkPolicies: SIP from anywhere, the internal link only between the domain's
/// Home Servers and Front-End, the managed directory only from the domain's pods, and the
/// operations port (metrics, health, HTTP API) only from `monitoringNamespace`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create them (needs a network plugin that enforces NetworkPolicy to have any effect).
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// The namespace (its name) whose pods may reach the operations port 8080, e.g. Prometheus's.
    /// Unset: no pod may (the kubelet's probes still reach it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    pub monitoring_namespace: Option<String>,
}

fn enabled() -> bool {
    true
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: true, monitoring_namespace: None }
    }
}

/// Who lays out the Home Servers and the Front-End of a domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// The operator creates, owns and updates the HomeServer and FrontEnd resources the tier calls for.
    #[default]
    Auto,
    /// The administrator writes HomeServer and FrontEnd resources; the operator only reports.
    Manual,
}

/// Settings of the operator-owned FrontEnd (topology `auto`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FrontEndTemplate {
    /// Replicas of the Front-End; the enterprise tier starts with 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub replicas: Option<i32>,
    /// Type of the Service clients connect to: the Front-End's or, while the domain has none,
    /// the Home Server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<ServiceType>,
    /// CPU and memory of each replica, key by key over the defaults (1 CPU, 512Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Settings of the operator-owned HomeServers (topology `auto`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HomeServerTemplate {
    /// CPU and memory of each Home Server, key by key over the tier's (e.g. to fit a small
    /// cluster, or to give more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Delete a removed Home Server's data and logs volumes with it (after a scale-down has moved
    /// its users away). By default they are kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_volumes_on_remove: bool,
    /// When each Home Server makes a change durable (its `storage.sync`): `eachChange` (default)
    /// or `checkpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_sync: Option<super::StorageSync>,
}

/// The directory users are listed in: exactly one of `ldap`, `file` or `managed`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.ldap) ? 1 : 0) + (has(self.file) ? 1 : 0) + (has(self.managed) ? 1 : 0) == 1"
).message("directory needs exactly one of ldap, file or managed"))]
pub struct DirectorySpec {
    /// An LDAP directory (OpenLDAP, or Active Directory over LDAP) you run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<LdapDirectory>,
    /// A TOML file of users in a ConfigMap, for trying Parley out without a directory server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileDirectory>,
    /// A directory the operator runs for this domain: a one-replica OpenLDAP StatefulSet
    /// `<domain>-directory` with a volume, generated administrator credentials (Secret
    /// `<domain>-directory-admin`) and TLS from the domain's CA, at
    /// `ldaps://<domain>-directory.<namespace>.svc:636` with base DN `dc=...` from `sipDomain`.
    /// The prep Jobs and servers use it as an LDAP directory. Write `managed: {}`. Deleting the
    /// domain deletes it, users included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedDirectory>,
}

/// A directory the operator runs for the domain (`spec.directory.managed`). No settings yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ManagedDirectory {}

/// An LDAP directory.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.passwordSecret) || !has(self.serviceAccountSecretRef)").message(
    "passwordSecret is the old name of serviceAccountSecretRef: set only serviceAccountSecretRef"
))]
#[x_kube(validation = Rule::new("!has(self.startTls) || !self.startTls || self.url.startsWith('ldap://')").message(
    "startTls upgrades an ldap:// connection; an ldaps:// URL is TLS already"
))]
pub struct LdapDirectory {
    /// URL of the directory server, `ldap://host:389` or `ldaps://host:636`.
    #[schemars(length(max = 2048), regex(pattern = r"^ldaps?://[^\s/]+(:[0-9]+)?/?$"))]
    pub url: String,
    /// Base DN under which users and Parley's entries live, e.g. `dc=example,dc=test`.
    #[schemars(length(min = 1, max = 1024))]
    pub base_dn: String,
    /// DN the servers bind as. Defaults to `cn=ParleyService,ou=Parley,<baseDn>`, the service
    /// account the domain-prep step creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub bind_dn: Option<String>,
    /// Secret key holding the service account's password: `prep domain` sets it and the servers
    /// bind with it. Without it the operator generates a password into the Secret
    /// `<domain>-directory-service` (key `password`), which it owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_secret_ref: Option<SecretKeyRef>,
    /// The former name of `serviceAccountSecretRef`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretKeyRef>,
    /// Secret of a directory administrator: the key `bindDn` holds the DN, the key named by
    /// `key` (default `password`) the password. Only the directory-prep Jobs use it, as mounted
    /// files; the servers never see it. Without it the operator cannot prepare the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret: Option<AdminSecretRef>,
    /// CA certificates (PEM) that sign the directory server's certificate, from a ConfigMap or a
    /// Secret. Without it the system roots of the server image are trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundleRef>,
    /// Upgrade an `ldap://` connection with StartTLS.
    #[serde(default)]
    pub start_tls: bool,
}

impl LdapDirectory {
    /// The DN the servers bind as.
    pub fn service_bind_dn(&self) -> String {
        self.bind_dn.clone().unwrap_or_else(|| parley_config::service_account_dn(&self.base_dn))
    }

    /// The Secret key the administrator named for the service account's password, if any.
    pub fn explicit_service_account_secret(&self) -> Option<&SecretKeyRef> {
        self.service_account_secret_ref.as_ref().or(self.password_secret.as_ref())
    }
}

/// A directory administrator's Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Key of the password.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// Key of the administrator's DN.
    #[serde(default = "default_bind_dn_key")]
    #[schemars(length(min = 1, max = 253))]
    pub bind_dn_key: String,
}

fn default_password_key() -> String {
    "password".to_string()
}

fn default_bind_dn_key() -> String {
    "bindDn".to_string()
}

/// CA certificates in a ConfigMap or a Secret of the domain's namespace.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.secret)").message(
    "caBundle needs exactly one of configMap or secret"
))]
pub struct CaBundleRef {
    /// Name of a ConfigMap holding the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub config_map: Option<String>,
    /// Name of a Secret holding the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub secret: Option<String>,
    /// Key of the PEM bundle.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_string()
}

/// Users listed in a TOML file held by a ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileDirectory {
    /// Name of the ConfigMap in the domain's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub config_map: String,
    /// Key of the file within the ConfigMap.
    #[serde(default = "default_users_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_users_key() -> String {
    "users.toml".to_string()
}

/// Another directory domain whose users may use these servers.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalDomain {
    /// The other domain's SIP domain.
    #[schemars(length(min = 3, max = 253), regex(pattern = SIP_DOMAIN_PATTERN))]
    #[x_kube(validation = Rule::new(SIP_DOMAIN_RULE).message(SIP_DOMAIN_MESSAGE))]
    pub sip_domain: String,
    /// Base DN of the other domain's users.
    #[schemars(length(min = 1, max = 1024))]
    pub base_dn: String,
}

/// Certificates of the servers and whether clients must use TLS.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.issuerRef) || !has(self.certManagerIssuer)").message(
    "certManagerIssuer is the old name of issuerRef: set only issuerRef"
))]
pub struct TlsSpec {
    /// A cert-manager Issuer or ClusterIssuer that signs the servers' certificates: the operator
    /// creates a cert-manager Certificate per server. Without one the operator's own CA (Secret
    /// `<domain>-ca`) signs them. Either way each server reads its certificate from the Secret
    /// `<server name>-tls` (keys `tls.crt`, `tls.key` and, where the issuer provides it, `ca.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// The former name of `issuerRef`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager_issuer: Option<IssuerRef>,
    /// Clients must use TLS (port 5061): the client-facing servers do not listen on 5060.
    #[serde(default)]
    pub require_client_tls: bool,
}

impl TlsSpec {
    /// The cert-manager issuer, if one signs the servers' certificates.
    pub fn issuer(&self) -> Option<&IssuerRef> {
        self.issuer_ref.as_ref().or(self.cert_manager_issuer.as_ref())
    }
}

/// A cert-manager issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer or ClusterIssuer.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// `Issuer` (same namespace) or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
}

/// Kind of a cert-manager issuer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum IssuerKind {
    /// A namespaced Issuer.
    #[default]
    Issuer,
    /// A cluster-wide ClusterIssuer.
    ClusterIssuer,
}

/// What the operator observed and decided for a domain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommunicationsDomainStatus {
    /// The generation of the spec this status describes.
    pub observed_generation: Option<i64>,
    /// `Ready`, `Paused`, `ScaleDownBlocked`, `CertificatesReady`, `SchemaPrepared`,
    /// `EnterprisePrepared`, `DomainPrepared` and, with a managed directory, `DirectoryReady`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The sizing tier `spec.users` resolves to.
    pub tier: Option<Tier>,
    /// Names of the domain's HomeServers (owned with topology `auto`, found with `manual`).
    #[serde(default)]
    pub home_servers: Vec<String>,
    /// How many there are (the Home Servers column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_server_count: Option<u32>,
    /// What the operator is doing, in a word: `Preparing` (certificates, directory), `Scaling`
    /// (Home Servers or the Front-End being added or drained and removed), `Upgrading` (a new pod
    /// spec rolling out), `Ready`, `Paused`, `Invalid` or `Progressing` (waiting for pods). The
    /// conditions say more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// While a change of the servers' pods rolls out (Front-Ends first, then the Home Servers
    /// one at a time, each when the one before runs ready): where it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// Name of the domain's FrontEnd, if it has one.
    pub front_end: Option<String>,
    /// HomeServers the tier no longer calls for, kept because users may still be homed on them.
    #[serde(default)]
    pub waiting_removal: Vec<WaitingRemoval>,
    /// Directory-prep Jobs that succeeded, with the hash of their settings: a Job removed after
    /// its TTL is not run again unless its settings change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prepared_steps: Vec<PreparedStep>,
    /// The domain as resolved from its spec by the last reconcile that found it valid: the one
    /// input the HomeServer and FrontEnd controllers build from. Absent while the spec is invalid
    /// or has not been looked at yet; the domain's servers wait for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<ResolvedDomain>,
}

/// What a CommunicationsDomain's spec resolves to: its tier's sizing, its directory as the servers
/// bind to it, its certificate plan and the addresses of its Home Servers. Written by the domain
/// controller; the HomeServer and FrontEnd controllers read it instead of resolving the spec again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedDomain {
    /// The generation of the domain's spec this was resolved from.
    pub generation: i64,
    /// The SIP domain.
    pub sip_domain: String,
    /// `spec.users`.
    pub users: u32,
    /// The sizing tier `users` falls in.
    pub tier: Tier,
    /// The tier's size of one Home Server, before the HomeServer's own overrides.
    pub home_server_size: TierSize,
    /// The `parley-server` image.
    pub image: String,
    /// Clients must use TLS: the servers do not listen on 5060.
    pub require_client_tls: bool,
    /// The directory as the servers use it.
    pub directory: ResolvedDirectory,
    /// The certificate of every server of the domain: whose it is, which Secret holds it and the
    /// names it covers.
    pub certificates: Vec<ServerCertificate>,
    /// The cert-manager issuer that signs them (`spec.tls.issuerRef`); absent: the domain's own CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_issuer: Option<IssuerRef>,
    /// The domain's Home Servers and where the Front-End reaches them (its routing table).
    pub home_servers: Vec<HomeServerAddress>,
    /// Further SIP domains whose users the directory holds (`spec.additionalDomains`), one
    /// `prep domainadd` Job each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_domains: Vec<ResolvedAdditionalDomain>,
    /// The NetworkPolicies to make (`spec.networkPolicy`), absent when disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<ResolvedNetworkPolicy>,
    /// The Secret (key `token`) holding the administrator token of the Home Servers' operations
    /// API, which `user move` and a drain use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_token_secret: Option<String>,
}

/// What the domain's NetworkPolicies admit besides SIP and the domain's own pods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedNetworkPolicy {
    /// The namespace whose pods may reach the operations port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring_namespace: Option<String>,
}

/// An entry of `spec.additionalDomains` as validated there (the status repeats no CEL rule: the
/// API server prices every rule of the schema, status included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedAdditionalDomain {
    /// The other domain's SIP domain.
    pub sip_domain: String,
    /// Base DN of the other domain's users.
    pub base_dn: String,
}

impl ResolvedDomain {
    /// The Secret holding `server`'s certificate, if the certificate plan covers it.
    pub fn certificate_secret(&self, server: &str) -> Option<&str> {
        self.certificates.iter().find(|c| c.server == server).map(|c| c.secret.as_str())
    }
}

/// CPU, memory and volume sizes a tier gives one Home Server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierSize {
    /// CPU (request and limit).
    pub cpu: String,
    /// Memory (request and limit).
    pub memory: String,
    /// Size of the data volume.
    pub data_volume: String,
    /// Size of the logs volume.
    pub logs_volume: String,
}

/// The directory as the servers use it: exactly one of `ldap` (also for a managed directory) or `file`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedDirectory {
    /// The directory is the one the operator runs (`spec.directory.managed`).
    pub managed: bool,
    /// The LDAP directory the servers bind to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<ResolvedLdap>,
    /// The users file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<ResolvedKey>,
}

/// A key of a ConfigMap or a Secret of the domain's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedKey {
    /// Name of the ConfigMap, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// Name of the Secret, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The key.
    pub key: String,
}

/// An LDAP directory as the servers bind to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedLdap {
    /// URL of the directory server.
    pub url: String,
    /// Base DN of users and Parley's entries.
    pub base_dn: String,
    /// DN the servers bind as (the service account).
    pub bind_dn: String,
    /// The Secret key with the service account's password.
    pub password_secret: ResolvedKey,
    /// CA certificates that sign the directory server's certificate, when not the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<ResolvedKey>,
    /// Upgrade an `ldap://` connection with StartTLS.
    pub start_tls: bool,
    /// The service account's password Secret is the operator's (generated once), not the administrator's.
    #[serde(default)]
    pub password_generated: bool,
    /// The administrator's Secret the prep Jobs bind with; absent: the directory cannot be prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret: Option<AdminSecretRef>,
}

/// Which Secret holds a server's certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerCertificate {
    /// Name of the HomeServer, FrontEnd or managed directory.
    pub server: String,
    /// Name of the Secret (`tls.crt`, `tls.key`, `ca.crt`).
    pub secret: String,
    /// The names the certificate covers (DNS names and IP addresses), sorted.
    #[serde(default)]
    pub names: Vec<String>,
}

/// A Home Server of the domain and its internal (mutual-TLS) address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HomeServerAddress {
    /// Name of the HomeServer.
    pub name: String,
    /// `<service>.<namespace>.svc.<cluster domain>:5062`.
    pub address: String,
    /// The users it may hold, as registered in the directory (0: it takes no new users, e.g.
    /// while it drains); absent for a Home Server written without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Its operations API (`http://<service>.<namespace>.svc.<cluster domain>:8080`), where
    /// `user move` and `user drain` reach it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api: String,
}

/// A directory-prep Job that succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreparedStep {
    /// Name of the Job.
    pub job: String,
    /// Hash of the Job's spec when it succeeded.
    pub hash: String,
}

/// A HomeServer that waits to be removed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitingRemoval {
    /// Name of the HomeServer.
    pub name: String,
    /// Why it is kept and what would let it go.
    pub reason: String,
}
