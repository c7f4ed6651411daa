//! Writing objects: server-side apply with the operator's field manager, skipped when the live
//! object holds what we applied last and nobody changed it since (so a steady-state reconcile
//! writes nothing), and refused for objects that belong to someone else.

use std::fmt::Debug;

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use tracing::{debug, info};

use super::{Context, Error, report_apply};
use crate::build::{
    APPLIED_HASH_ANNOTATION, Component, DOMAIN_LABEL, FIELD_MANAGER, MANAGED_BY, MANAGED_SELECTOR, sha256_hex,
};
use crate::crd::{FrontEnd, HomeServer};

/// What an apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The live object already matched; nothing was written.
    Unchanged,
    Created,
    /// The object differed (changed spec, or drift someone introduced) and was put back.
    Updated,
}

impl Outcome {
    pub fn wrote(self) -> bool {
        self != Outcome::Unchanged
    }
}

/// Why `live` needs `want` (a [`stamped`] object) applied again, or `None` when it holds what we
/// applied last and nobody has changed it since.
///
/// The live object cannot be compared with `want` directly: the API server leaves out
/// false-valued and empty fields, normalises quantities and adds defaults. Instead, the hash
/// annotation says whether `want` is what we applied last, and the fields the server records for
/// our field manager (`managedFields`) say whether all of it is still ours: anyone who changes
/// or removes one of our fields (an update, a forced apply) takes it from us.
pub fn reapply_reason(live: &Value, want: &Value) -> Option<String> {
    let hash = |v: &Value| v.pointer("/metadata/annotations").and_then(|a| a.get(APPLIED_HASH_ANNOTATION)).cloned();
    if hash(live) != hash(want) {
        return Some("the desired object changed".into());
    }
    let ours = live.pointer("/metadata/managedFields").and_then(Value::as_array).and_then(|entries| {
        entries.iter().find(|e| {
            e["manager"] == FIELD_MANAGER
                && e["operation"] == "Apply"
                && e.get("subresource").and_then(Value::as_str).unwrap_or("").is_empty()
        })
    });
    let Some(fields) = ours.and_then(|e| e.get("fieldsV1")) else {
        return Some(format!("no fields of {FIELD_MANAGER}"));
    };
    // What apply records: everything but identity and system metadata.
    let mut applied = want.clone();
    if let Some(m) = applied.as_object_mut() {
        m.retain(|k, _| !["apiVersion", "kind", "status"].contains(&k.as_str()));
        if let Some(Value::Object(meta)) = m.get_mut("metadata") {
            meta.retain(|k, _| ["labels", "annotations", "ownerReferences", "finalizers"].contains(&k.as_str()));
        }
    }
    missing(fields, &applied, "").map(|path| format!("{path} is no longer ours"))
}

/// The first field `applied` sets that the field set `owned` (`FieldsV1`) does not hold.
fn missing(owned: &Value, applied: &Value, at: &str) -> Option<String> {
    if owned.as_object().is_some_and(|o| o.is_empty()) {
        // A leaf owns everything under it: an atomic list, map or struct (an owner reference).
        return None;
    }
    match applied {
        Value::Object(m) => m.iter().filter(|(_, v)| !v.is_null()).find_map(|(k, v)| {
            let path = format!("{at}.{k}");
            match owned.get(format!("f:{k}")) {
                Some(o) => missing(o, v, &path),
                None => Some(path),
            }
        }),
        Value::Array(items) => {
            let o = owned.as_object()?;
            // Items of associative lists are matched by key (`k:{...}`), of sets by value (`v:...`).
            items.iter().enumerate().find_map(|(i, item)| {
                let path = format!("{at}[{i}]");
                let mut first_miss = Some(path.clone());
                for (_, child) in o.iter().filter(|(k, _)| item_has_key(k, item)) {
                    match missing(child, item, &path) {
                        None => return None,
                        Some(m) => first_miss = Some(m),
                    }
                }
                first_miss
            })
        }
        _ => None,
    }
}

/// Whether the `FieldsV1` key `key` names the list item `item`. Key fields `item` leaves out are
/// the server's defaults (a port's protocol).
fn item_has_key(key: &str, item: &Value) -> bool {
    if let Some(k) = key.strip_prefix("k:") {
        let Ok(Value::Object(k)) = serde_json::from_str::<Value>(k) else { return false };
        k.iter().all(|(f, want)| item.get(f).is_none_or(|have| have == want))
    } else if let Some(v) = key.strip_prefix("v:") {
        serde_json::from_str::<Value>(v).is_ok_and(|v| &v == item)
    } else {
        false
    }
}

/// The desired object as JSON, stamped with the hash of its content, so that a change of what the
/// operator wants (including a field it stops setting) is never mistaken for "unchanged".
pub fn stamped<K: Serialize>(desired: &K) -> Result<Value, Error> {
    let mut v = serde_json::to_value(desired)?;
    let hash = sha256_hex(serde_json::to_string(&v)?.as_bytes());
    let meta = v
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Error::Invalid("object without metadata".into()))?;
    let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(a) = annotations {
        a.insert(APPLIED_HASH_ANNOTATION.into(), Value::String(hash));
    }
    Ok(v)
}

/// Refuses to overwrite an object (of kind `kind`) that another owner controls, or that exists
/// without being ours (an administrator's own object that happens to have the same name).
pub fn check_ownership<K: Resource>(live: &K, desired: &K, kind: &str) -> Result<(), Error> {
    let want = desired.meta().owner_references.as_ref().and_then(|o| o.iter().find(|r| r.controller == Some(true)));
    let have = live.meta().owner_references.as_ref().and_then(|o| o.iter().find(|r| r.controller == Some(true)));
    let ours_by_label = live.labels().get("app.kubernetes.io/managed-by").map(String::as_str) == Some(MANAGED_BY);
    let ok = match (want, have) {
        (Some(w), Some(h)) => w.uid == h.uid,
        (Some(_), None) => ours_by_label,
        (None, _) => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::NotOwned {
            kind: kind.to_string(),
            name: live.name_any(),
            owner: have
                .map(|h| format!("{} {}", h.kind, h.name))
                .unwrap_or_else(|| "nobody (not created by Parley)".into()),
        })
    }
}

/// Applies `desired` (of kind `kind`) unless the live object already matches it.
pub async fn apply<K>(api: &Api<K>, desired: &K, kind: &str) -> Result<Outcome, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = desired.meta().name.clone().ok_or_else(|| Error::Invalid("object without a name".into()))?;
    let want = stamped(desired)?;
    let live = api.get_opt(&name).await?;
    if let Some(live) = &live {
        check_ownership(live, desired, kind)?;
        match reapply_reason(&serde_json::to_value(live)?, &want) {
            None => return Ok(Outcome::Unchanged),
            Some(why) => debug!(%kind, %name, %why, "applying"),
        }
    }
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&want)).await?;
    Ok(if live.is_some() { Outcome::Updated } else { Outcome::Created })
}

/// The one apply path of every controller: [`ApplySet::apply`] writes the built objects in order
/// and remembers them, [`ApplySet::keep`] remembers an object that is still wanted but written
/// once (a generated password) or by a step that decides itself (a Job that ran), and
/// [`ApplySet::prune`] then deletes every object of the controller's kinds ([`workload_kinds`],
/// [`domain_kinds`]) that the owner controls and that was neither applied nor kept (an orphan:
/// of an earlier version, of a removed setting). Adding a kind of object touches its builder and
/// one of those lists; the watches ([`super::run`]) and the chart's RBAC rules (checked by a test)
/// follow the lists.
pub struct ApplySet<'a, O> {
    ctx: &'a Context,
    owner: &'a O,
    ns: String,
    uid: String,
    selector: String,
    kinds: Vec<ApiResource>,
    applied: BTreeSet<(String, String)>,
}

/// The kinds of object the HomeServer and FrontEnd controllers own, in the order they are applied.
pub fn workload_kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Deployment>(&()),
    ]
}

/// The kinds of object the CommunicationsDomain controller owns: certificates (cert-manager's,
/// whose kind may not be installed, or the operator's own Secrets) and generated credentials,
/// the managed directory, the prep Jobs, the NetworkPolicies and, with topology `auto`, the
/// HomeServers and the FrontEnd.
pub fn domain_kinds() -> Vec<ApiResource> {
    vec![
        crate::build::certificates::cert_manager_certificate_resource(),
        ApiResource::erase::<Secret>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
        ApiResource::erase::<HomeServer>(&()),
        ApiResource::erase::<FrontEnd>(&()),
    ]
}

impl<'a, O: Resource<DynamicType = ()>> ApplySet<'a, O> {
    /// The set of a HomeServer's or FrontEnd's workload objects.
    pub fn new(ctx: &'a Context, owner: &'a O, component: Component) -> Result<Self, Error> {
        let name = owner.meta().name.clone().unwrap_or_default();
        let selector = format!(
            "{MANAGED_SELECTOR},app.kubernetes.io/component={},app.kubernetes.io/instance={name}",
            component.as_str()
        );
        Self::with(ctx, owner, selector, workload_kinds())
    }

    /// The set of a CommunicationsDomain's own objects.
    pub fn domain(ctx: &'a Context, owner: &'a O) -> Result<Self, Error> {
        let name = owner.meta().name.clone().unwrap_or_default();
        Self::with(ctx, owner, format!("{MANAGED_SELECTOR},{DOMAIN_LABEL}={name}"), domain_kinds())
    }

    fn with(ctx: &'a Context, owner: &'a O, selector: String, kinds: Vec<ApiResource>) -> Result<Self, Error> {
        let meta = owner.meta();
        let (Some(ns), Some(uid)) = (meta.namespace.clone(), meta.uid.clone()) else {
            return Err(Error::Invalid("owner without namespace or uid".into()));
        };
        Ok(Self { ctx, owner, ns, uid, selector, kinds, applied: BTreeSet::new() })
    }

    fn api<K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>>(&self) -> Api<K> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    /// Applies `obj` (see [`apply`]) and publishes an Event when it wrote.
    pub async fn apply<K>(&mut self, obj: &K) -> Result<Outcome, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + Debug,
    {
        let out = self.apply_quietly(obj).await?;
        report_apply(self.ctx, self.owner, obj, out).await;
        Ok(out)
    }

    /// Applies `obj` without an Event: the caller publishes one that says more (a certificate issued).
    pub async fn apply_quietly<K>(&mut self, obj: &K) -> Result<Outcome, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + Debug,
    {
        let kind = K::kind(&());
        debug_assert!(self.kinds.iter().any(|k| k.kind == kind), "{kind} is not in the kinds list");
        let out = apply(&self.api::<K>(), obj, &kind).await?;
        self.keep::<K>(&obj.name_any());
        Ok(out)
    }

    /// Applies `obj` of the kind `ar`, known only at run time (cert-manager's Certificate), without
    /// an Event. A kind the cluster does not have fails with the API server's 404.
    pub async fn apply_dynamic(&mut self, ar: &ApiResource, obj: &DynamicObject) -> Result<Outcome, Error> {
        debug_assert!(self.kinds.contains(ar), "{} is not in the kinds list", ar.kind);
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), &self.ns, ar);
        let out = apply(&api, obj, &ar.kind).await?;
        self.applied.insert((ar.kind.clone(), obj.name_any()));
        Ok(out)
    }

    /// Remembers the object `name` of kind `K` as still wanted, without writing it.
    pub fn keep<K: Resource<DynamicType = ()>>(&mut self, name: &str) {
        self.applied.insert((K::kind(&()).into_owned(), name.to_string()));
    }

    /// A Secret of generated credentials: made once from a random value (`build` turns it into the
    /// Secret) and then kept as it is, since whatever read it at start must go on matching it.
    pub async fn generate_once(
        &mut self,
        name: &str,
        build: impl FnOnce(&str) -> k8s_openapi::api::core::v1::Secret,
    ) -> Result<(), Error> {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = self.api();
        if secrets.get_opt(name).await?.is_none() {
            let value = format!("{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>());
            self.apply(&build(&value)).await?;
        } else {
            self.keep::<k8s_openapi::api::core::v1::Secret>(name);
        }
        Ok(())
    }

    /// Deletes the orphans of every kind of the set, in the reverse of the apply order.
    pub async fn prune(&self) -> Result<(), Error> {
        for ar in self.kinds.iter().rev() {
            self.prune_kind(ar).await?;
        }
        Ok(())
    }

    async fn prune_kind(&self, ar: &ApiResource) -> Result<(), Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.ctx.client.clone(), &self.ns, ar);
        let listed = match api.list_metadata(&ListParams::default().labels(&self.selector)).await {
            Ok(list) => list.items,
            // A kind the cluster does not have (cert-manager not installed) has no orphans.
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for obj in listed {
            let controlled = obj.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == self.uid);
            let name = obj.name_any();
            if controlled
                && obj.metadata.deletion_timestamp.is_none()
                && !self.applied.contains(&(ar.kind.clone(), name.clone()))
                && delete(&api, &name).await?
            {
                let kind = &ar.kind;
                info!(%kind, %name, "deleted an orphan");
                let note = format!("deleted {kind} {name}: no longer built");
                let reference = k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some(ar.api_version.clone()),
                    kind: Some(kind.clone()),
                    name: Some(name.clone()),
                    namespace: Some(self.ns.clone()),
                    uid: obj.metadata.uid.clone(),
                    ..Default::default()
                };
                self.ctx.event_about(self.owner, Some(reference), false, "Deleted", "Prune", note).await;
            }
        }
        Ok(())
    }
}

/// Deletes `name` if it exists; `true` when a delete was sent.
pub async fn delete<K>(api: &Api<K>, name: &str) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes `status` with a merge patch unless it equals `current`. Returns whether it wrote.
/// Marks every key of `old` that `new` lacks as `null`, at any depth: a merge patch keeps what it
/// does not mention, so a field that became empty (skipped when serialised) must be deleted.
fn null_removed(old: &Value, new: &mut Value) {
    if let (Value::Object(old), Value::Object(new)) = (old, new) {
        for (key, was) in old {
            match new.get_mut(key) {
                None => {
                    new.insert(key.clone(), Value::Null);
                }
                Some(now) => null_removed(was, now),
            }
        }
    }
}

pub async fn patch_status<K, S>(api: &Api<K>, name: &str, current: Option<&S>, status: &S) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let mut new = serde_json::to_value(status)?;
    if let Some(current) = current {
        null_removed(&serde_json::to_value(current)?, &mut new);
    }
    let patch = serde_json::json!({ "status": new });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(&patch)).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::build::fixtures;

    /// `want` as the API server shows it after our apply: false and empty fields left out, a
    /// quantity normalised, defaults added, and our fields in `managedFields`.
    fn live_after_apply(want: &Value, fields: Value) -> Value {
        let mut live = want.clone();
        live["spec"]["publishNotReadyAddresses"].take();
        live["spec"]["cpu"] = json!("1");
        live["spec"]["sessionAffinity"] = json!("None");
        live["metadata"]["managedFields"] = json!([
            {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}},
            {"manager": FIELD_MANAGER, "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {}}},
            {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": fields},
        ]);
        live
    }

    fn want() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s", "namespace": "n", "annotations": {APPLIED_HASH_ANNOTATION: "abc"}},
            "spec": {"publishNotReadyAddresses": false, "cpu": "1000m", "selector": {},
                     "ports": [{"name": "sip", "port": 5060, "protocol": "UDP"}, {"name": "sips", "port": 5061}],
                     "args": ["a", "b"], "finalizers": ["x"]},
        })
    }

    fn ours() -> Value {
        json!({
            "f:metadata": {"f:annotations": {format!("f:{APPLIED_HASH_ANNOTATION}"): {}}},
            "f:spec": {
                "f:publishNotReadyAddresses": {}, "f:cpu": {}, "f:selector": {}, "f:args": {},
                "f:ports": {
                    "k:{\"port\":5060,\"protocol\":\"UDP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}},
                    "k:{\"port\":5061,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}},
                },
                "f:finalizers": {"v:\"x\"": {}},
            },
        })
    }

    #[test]
    fn what_we_applied_last_and_still_own_is_unchanged() {
        assert_eq!(reapply_reason(&live_after_apply(&want(), ours()), &want()), None);
    }

    #[test]
    fn atomic_items_are_owned_whole() {
        let mut want = want();
        want["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u1"}]);
        let mut fields = ours();
        fields["f:metadata"]["f:ownerReferences"] = json!({".": {}, "k:{\"uid\":\"u1\"}": {}});
        assert_eq!(reapply_reason(&live_after_apply(&want, fields.clone()), &want), None);
        fields["f:metadata"]["f:ownerReferences"] = json!({".": {}, "k:{\"uid\":\"u2\"}": {}});
        assert_eq!(
            reapply_reason(&live_after_apply(&want, fields), &want).as_deref(),
            Some(".metadata.ownerReferences[0] is no longer ours")
        );
    }

    #[test]
    fn a_status_patch_deletes_what_became_empty_at_any_depth() {
        let old = json!({"rollout": "step 1", "resolved": {"image": "a", "apiTokenSecret": "t"}, "homeServers": ["x"]});
        let mut new = json!({"resolved": {"image": "b"}, "homeServers": []});
        null_removed(&old, &mut new);
        assert_eq!(
            new,
            json!({"rollout": null, "resolved": {"image": "b", "apiTokenSecret": null}, "homeServers": []})
        );
    }

    #[test]
    fn a_new_desired_object_is_applied() {
        let live = live_after_apply(&want(), ours());
        let mut next = want();
        next["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = json!("def");
        assert_eq!(reapply_reason(&live, &next).as_deref(), Some("the desired object changed"));
    }

    #[test]
    fn a_field_someone_else_took_is_put_back() {
        let mut fields = ours();
        fields["f:spec"]["f:ports"]["k:{\"port\":5061,\"protocol\":\"TCP\"}"].as_object_mut().unwrap().remove("f:name");
        let live = live_after_apply(&want(), fields);
        assert_eq!(reapply_reason(&live, &want()).as_deref(), Some(".spec.ports[1].name is no longer ours"));

        let mut fields = ours();
        fields["f:spec"]["f:ports"].as_object_mut().unwrap().remove("k:{\"port\":5060,\"protocol\":\"UDP\"}");
        let live = live_after_apply(&want(), fields);
        assert_eq!(reapply_reason(&live, &want()).as_deref(), Some(".spec.ports[0] is no longer ours"));

        let mut fields = ours();
        fields["f:spec"]["f:finalizers"] = json!({"v:\"y\"": {}});
        let live = live_after_apply(&want(), fields);
        assert_eq!(reapply_reason(&live, &want()).as_deref(), Some(".spec.finalizers[0] is no longer ours"));

        let mut live = live_after_apply(&want(), ours());
        live["metadata"]["managedFields"].as_array_mut().unwrap().pop();
        assert_eq!(reapply_reason(&live, &want()).as_deref(), Some("no fields of parley-operator"));
    }

    #[test]
    fn the_stamp_changes_with_the_content() {
        let a = fixtures::home_server("h", "d");
        let mut b = a.clone();
        b.spec.capacity = Some(10);
        let (sa, sb) = (stamped(&a).unwrap(), stamped(&b).unwrap());
        let hash = |v: &Value| v["metadata"]["annotations"][APPLIED_HASH_ANNOTATION].clone();
        assert_ne!(hash(&sa), hash(&sb));
        assert_eq!(hash(&sa), hash(&stamped(&a).unwrap()));
    }

    #[test]
    fn objects_of_other_owners_are_refused() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owner = |uid: &str| OwnerReference {
            api_version: "parley.dev/v1alpha1".into(),
            kind: "HomeServer".into(),
            name: "h".into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        };
        let mut desired = fixtures::home_server("x", "d");
        desired.metadata.owner_references = Some(vec![owner("a")]);
        let mut live = desired.clone();
        assert!(check_ownership(&live, &desired, "HomeServer").is_ok());
        live.metadata.owner_references = Some(vec![owner("b")]);
        assert!(matches!(check_ownership(&live, &desired, "HomeServer"), Err(Error::NotOwned { .. })));
        live.metadata.owner_references = None;
        assert!(check_ownership(&live, &desired, "HomeServer").is_err(), "an unlabelled stranger is not adopted");
        live.metadata.labels = Some([("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string())].into());
        assert!(check_ownership(&live, &desired, "HomeServer").is_ok(), "an orphan of ours is adopted");
    }
}
