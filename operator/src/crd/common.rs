//! Types shared by the three kinds.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a DNS-1123 name (a Kubernetes object name), used for references to other objects.
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Pattern of a SIP domain: a lowercase DNS name with at least two labels, e.g. `example.test`.
/// `SIP_DOMAIN_PATTERN` as a CEL rule, so that a refusal says in words what a SIP domain is
/// (the schema's own pattern error only quotes the regular expression).
pub const SIP_DOMAIN_RULE: &str =
    "self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?[.])+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')";
pub const SIP_DOMAIN_MESSAGE: &str =
    "must be a lowercase DNS name such as example.com: no scheme (sip:), no port, no upper case";

pub const SIP_DOMAIN_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$";

/// Types of conditions the operator sets.
pub mod condition {
    /// Everything the resource asks for exists and is ready.
    pub const READY: &str = "Ready";
    /// `spec.paused` is true: the operator reads but does not write children.
    pub const PAUSED: &str = "Paused";
    /// A scale-down cannot go on: the Home Servers that stay have too little free capacity for
    /// the users of the one to remove (or their counts are unknown). Nothing is deleted.
    pub const SCALE_DOWN_BLOCKED: &str = "ScaleDownBlocked";
    /// A HomeServer with `spec.drain`: True once no user is homed on it.
    pub const DRAINED: &str = "Drained";
    /// A HomeServer's pod runs the pod spec the operator builds now; False while a new one waits
    /// for its turn in the rollout or rolls.
    pub const UP_TO_DATE: &str = "UpToDate";
    /// Every server has a valid certificate; the message names the earliest expiry.
    pub const CERTIFICATES_READY: &str = "CertificatesReady";
    /// `prep schema` succeeded (the seed's `prep=schema`).
    pub const SCHEMA_PREPARED: &str = "SchemaPrepared";
    /// `prep enterprise` succeeded: the global settings container lists the Home Servers.
    pub const ENTERPRISE_PREPARED: &str = "EnterprisePrepared";
    /// `prep domain` and every `prep domainadd` succeeded; workloads may start.
    pub const DOMAIN_PREPARED: &str = "DomainPrepared";
    /// The managed directory (`spec.directory.managed`) answers: its pod is ready. Set only for a
    /// managed directory; the message says what it waits for otherwise.
    pub const DIRECTORY_READY: &str = "DirectoryReady";
}

/// Kubernetes Service type for client-facing SIP traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A host name or IPv4 address a server advertises in the SIP headers it adds.
pub const HOST_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// The Service clients reach a server through.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientService {
    /// Service type: `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations of the Service (e.g. a cloud load balancer's settings).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A key of a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_string()
}
