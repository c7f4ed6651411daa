//! `FrontEnd`: the stateless proxies in front of a domain's Home Servers.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::{HOST_PATTERN, NAME_PATTERN, ServiceType};
use crate::tiers::Tier;

/// A Front-End: a Deployment of stateless proxies behind a Service. Each request goes to the
/// destination user's Home Server over mutual TLS.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "parley.dev",
    version = "v1alpha1",
    kind = "FrontEnd",
    namespaced,
    derive = "PartialEq",
    doc = "A Parley Front-End: stateless proxies that forward each request to the destination user's Home Server.",
    status = "FrontEndStatus",
    shortname = "fe",
    category = "parley",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".status.tier"),
    printcolumn(name = "Users", type_ = "integer", json_path = ".status.domainUsers"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 58").message(
        "the name of a FrontEnd is at most 58 characters (it names a Deployment and its Service)"
    ),
)]
#[serde(rename_all = "camelCase")]
pub struct FrontEndSpec {
    /// Name of the CommunicationsDomain (same namespace) this Front-End serves. Immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "domain is immutable: create another FrontEnd for another domain"
    ))]
    pub domain: String,

    /// Number of proxy replicas; 2 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub replicas: Option<i32>,

    /// Type of the Service clients connect to.
    #[serde(default)]
    pub service_type: ServiceType,

    /// Ports of the Service; the pods always listen on 5060 and 5061.
    #[serde(default)]
    pub ports: FrontEndPorts,

    /// CPU and memory of each replica, overriding the default (1 CPU, 512Mi) key by key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Host name clients reach the Front-End by, written into the Record-Route and Via headers
    /// it adds (default: the Service's cluster DNS name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub advertise: Option<String>,
}

/// Ports of the Front-End's Service.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.sip != self.sipTls").message(
    "sip and sipTls must be different ports"
))]
pub struct FrontEndPorts {
    /// SIP over UDP and TCP.
    #[serde(default = "default_sip")]
    #[schemars(range(min = 1, max = 65535))]
    pub sip: i32,
    /// SIP over TLS.
    #[serde(default = "default_sip_tls")]
    #[schemars(range(min = 1, max = 65535))]
    pub sip_tls: i32,
}

impl Default for FrontEndPorts {
    fn default() -> Self {
        Self { sip: default_sip(), sip_tls: default_sip_tls() }
    }
}

fn default_sip() -> i32 {
    5060
}

fn default_sip_tls() -> i32 {
    5061
}

/// What the operator observed and decided for a Front-End.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FrontEndStatus {
    /// The generation of the spec this status describes.
    pub observed_generation: Option<i64>,
    /// `Ready` and `Paused`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The sizing tier of the domain.
    pub tier: Option<Tier>,
    /// The domain's `spec.users`.
    pub domain_users: Option<u32>,
    /// Desired replicas.
    pub replicas: Option<i32>,
    /// Replicas ready to take traffic.
    pub ready_replicas: Option<i32>,
    /// Home Servers in the routing table this Front-End was configured with.
    #[serde(default)]
    pub home_servers: Vec<String>,
    /// The domain resolution (its `status.resolved.generation`) every replica runs and is ready
    /// with: the Home Servers roll to a new one only after the Front-End has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_generation: Option<i64>,
}
