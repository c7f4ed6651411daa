//! `HomeServer`: one Home Server, home to the users assigned to it.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::{ClientService, HOST_PATTERN, NAME_PATTERN};
use crate::tiers::Tier;

/// A Home Server: a StatefulSet of one pod with its own data and logs volumes, home to the users
/// whose directory entry names it. Sized by its domain's tier unless overridden here.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "parley.dev",
    version = "v1alpha1",
    kind = "HomeServer",
    namespaced,
    derive = "PartialEq",
    doc = "A Parley Home Server: home to the users assigned to it.",
    status = "HomeServerStatus",
    shortname = "hs",
    category = "parley",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domain"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".status.tier"),
    printcolumn(name = "Users", type_ = "integer", json_path = ".status.users"),
    printcolumn(name = "Capacity", type_ = "integer", json_path = ".status.capacity"),
    printcolumn(name = "Draining", type_ = "boolean", json_path = ".spec.drain"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 52").message(
        "the name of a HomeServer is at most 52 characters (it names a StatefulSet and its pod)"
    ),
)]
#[serde(rename_all = "camelCase")]
pub struct HomeServerSpec {
    /// Name of the CommunicationsDomain (same namespace) this Home Server belongs to. Immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "domain is immutable: users homed here belong to that domain"
    ))]
    pub domain: String,

    /// The number of users this Home Server is meant to hold (at most 10,000): registered in the
    /// directory, where placement (`parley-server user add` without `--home-server`) reads it.
    /// The operator sets it on the Home Servers it owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub capacity: Option<u32>,

    /// CPU and memory of the server container, overriding the tier key by key (an override of
    /// `limits.memory` leaves the tier's CPU in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Volume sizes and storage class, overriding the tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageOverrides>,

    /// The Service `<name>-sip` clients reach this Home Server through (when the domain has no
    /// Front-End, its only entry point).
    #[serde(default)]
    pub service: ClientService,

    /// Move every user homed here to the domain's other Home Servers (a Job running
    /// `parley-server user drain`), least loaded first; `status.usersRemaining` counts down and the
    /// `Drained` condition turns True at zero. A drained Home Server can be deleted without losing
    /// anyone. The operator sets it on the Home Servers a lower `spec.users` no longer needs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,

    /// Host name clients reach this server by, written into the Contact and Via headers it adds
    /// (default: the Service's cluster DNS name). Set it to the load balancer's or node's name
    /// when clients are outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = HOST_PATTERN))]
    pub advertise: Option<String>,
}

/// Volume overrides of a Home Server. Volumes can grow after creation (when the storage class
/// allows expansion) but never shrink; the storage class is fixed once the volumes exist.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageOverrides {
    /// Size of the data volume (durable state: registrations, presence, subscriptions, contact lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_size: Option<Quantity>,
    /// Size of the logs volume (journal and logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_size: Option<Quantity>,
    /// Storage class of both volumes; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// Delete the data and logs volumes (PersistentVolumeClaims) when this HomeServer is deleted.
    /// By default they are kept, so that a Home Server deleted by mistake can be recreated with
    /// its state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_on_remove: bool,
    /// When the server makes a change durable: `eachChange` (the default) or `checkpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<StorageSync>,
}

/// When a Home Server makes a change (a registration, a subscription, a message kept for an
/// offline user) durable, the server's `storage.sync`: `eachChange` (default) syncs it to disk
/// before the client is answered, so it survives a crash of the server or of the machine;
/// `checkpoint` writes it before the answer but syncs every 2 seconds, so it survives a crash of
/// the server but a crash of the machine (or power loss) can lose the last 2 seconds of changes,
/// for less CPU per change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StorageSync {
    /// Synced to disk before the client is answered: survives a crash of the server or of the
    /// machine.
    #[default]
    EachChange,
    /// Written before the answer but synced every 2 seconds: survives a crash of the server, but a
    /// crash of the machine (or power loss) can lose the last 2 seconds of changes. Less CPU per
    /// change (see BENCHMARKS.md).
    Checkpoint,
}

impl From<StorageSync> for parley_config::SyncPolicy {
    fn from(s: StorageSync) -> Self {
        match s {
            StorageSync::EachChange => parley_config::SyncPolicy::EachChange,
            StorageSync::Checkpoint => parley_config::SyncPolicy::Checkpoint,
        }
    }
}

/// What the operator observed and decided for a Home Server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HomeServerStatus {
    /// The generation of the spec this status describes.
    pub observed_generation: Option<i64>,
    /// `Ready` and `Paused`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The sizing tier of the domain.
    pub tier: Option<Tier>,
    /// The resolved size: the tier with this resource's overrides applied.
    pub resolved: Option<ResolvedSize>,
    /// Address the Front-End forwards to (`<service>.<namespace>.svc.<cluster domain>:5062`).
    pub address: Option<String>,
    /// Users homed here, counted in the directory by the server (its `/status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    /// Users it may hold, as the directory says (the server's `/status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// While `spec.drain` is true: the users still to move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_remaining: Option<u64>,
    /// The domain resolution (its `status.resolved.generation`) the pod runs and is ready with.
    /// A new pod spec waits until the Front-Ends and the Home Servers before this one have
    /// rolled (condition `UpToDate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_generation: Option<i64>,
}

/// The size a Home Server runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedSize {
    /// CPU limit.
    pub cpu: Option<String>,
    /// Memory limit.
    pub memory: Option<String>,
    /// Size of the data volume.
    pub data_volume: Option<String>,
    /// Size of the logs volume.
    pub logs_volume: Option<String>,
}
