//! Writing objects: server-side apply with the operator's field manager, skipped when the live
//! object already says what we would apply (so a steady-state reconcile writes nothing), and
//! refused for objects that belong to someone else.

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Error;
use crate::build::{APPLIED_HASH_ANNOTATION, FIELD_MANAGER, MANAGED_BY, quantity, sha256_hex};

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

/// Whether `live` says everything `desired` says. Fields only in `live` (defaults, status,
/// other managers' fields) are ignored; quantities compare by value ("1" == "1000m").
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => contains(lv, dv),
            None => dv.is_null(),
        }),
        (Value::Array(l), Value::Array(d)) => l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv)),
        (Value::String(l), Value::String(d)) => quantity::same(l, d),
        (Value::Number(l), Value::Number(d)) => l.as_f64() == d.as_f64(),
        (l, d) => l == d,
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

/// Refuses to overwrite an object that another owner controls, or that exists without being
/// ours (an administrator's own object that happens to have the same name).
pub fn check_ownership<K>(live: &K, desired: &K) -> Result<(), Error>
where
    K: Resource,
    K::DynamicType: Default,
{
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
            kind: K::kind(&Default::default()).into_owned(),
            name: live.name_any(),
            owner: have
                .map(|h| format!("{} {}", h.kind, h.name))
                .unwrap_or_else(|| "nobody (not created by Parley)".into()),
        })
    }
}

/// Applies `desired` unless the live object already matches it.
pub async fn apply<K>(api: &Api<K>, desired: &K) -> Result<Outcome, Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
{
    let name = desired.meta().name.clone().ok_or_else(|| Error::Invalid("object without a name".into()))?;
    let want = stamped(desired)?;
    let live = api.get_opt(&name).await?;
    if let Some(live) = &live {
        check_ownership(live, desired)?;
        if contains(&serde_json::to_value(live)?, &want) {
            return Ok(Outcome::Unchanged);
        }
    }
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&want)).await?;
    Ok(if live.is_some() { Outcome::Updated } else { Outcome::Created })
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
pub async fn patch_status<K, S>(api: &Api<K>, name: &str, current: Option<&S>, status: &S) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(&patch)).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::build::fixtures;

    #[test]
    fn live_objects_may_say_more_than_we_want() {
        let live = json!({"spec": {"replicas": 1, "revisionHistoryLimit": 10, "template": {"x": [1, 2]}}});
        assert!(contains(&live, &json!({"spec": {"replicas": 1, "template": {"x": [1, 2]}}})));
        assert!(!contains(&live, &json!({"spec": {"replicas": 2}})));
        assert!(!contains(&live, &json!({"spec": {"template": {"x": [1]}}})), "lists compare whole");
        assert!(!contains(&live, &json!({"spec": {"paused": true}})));
        assert!(contains(&live, &json!({"spec": {"paused": null}})));
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(contains(&json!({"cpu": "500m"}), &json!({"cpu": "0.5"})));
        assert!(!contains(&json!({"cpu": "1"}), &json!({"cpu": "2"})));
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
        assert!(contains(&sa, &sa));
        assert!(!contains(&sa, &sb));
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
        assert!(check_ownership(&live, &desired).is_ok());
        live.metadata.owner_references = Some(vec![owner("b")]);
        assert!(matches!(check_ownership(&live, &desired), Err(Error::NotOwned { .. })));
        live.metadata.owner_references = None;
        assert!(check_ownership(&live, &desired).is_err(), "an unlabelled stranger is not adopted");
        live.metadata.labels = Some([("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string())].into());
        assert!(check_ownership(&live, &desired).is_ok(), "an orphan of ours is adopted");
    }
}
