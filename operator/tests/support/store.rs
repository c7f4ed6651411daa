//! The double's state and the write semantics the operator relies on. Everything happens under
//! one lock, so every write is atomic and watch events go out in resourceVersion order.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::fields::{self, Path, Seg};
use super::schema;

/// One kind of resource the double serves.
#[derive(Clone, Debug)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Has a `/status` subresource: the main endpoint ignores `status`, `/status` ignores the rest.
    pub status: bool,
    /// For custom resources: the CRD's openAPIV3Schema.
    pub schema: Option<Value>,
}

impl Resource {
    fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool, status: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status,
            schema: None,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }
}

/// The built-in kinds the operator (and its tests) use.
fn builtins() -> Vec<Resource> {
    vec![
        Resource::new("", "v1", "namespaces", "Namespace", false, true),
        Resource::new("", "v1", "configmaps", "ConfigMap", true, false),
        Resource::new("", "v1", "secrets", "Secret", true, false),
        Resource::new("", "v1", "services", "Service", true, true),
        Resource::new("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, true),
        Resource::new("", "v1", "pods", "Pod", true, true),
        Resource::new("", "v1", "events", "Event", true, false),
        Resource::new("apps", "v1", "statefulsets", "StatefulSet", true, true),
        Resource::new("apps", "v1", "deployments", "Deployment", true, true),
        Resource::new("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, true),
        Resource::new("batch", "v1", "jobs", "Job", true, true),
        Resource::new("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", true, false),
        Resource::new("coordination.k8s.io", "v1", "leases", "Lease", true, false),
        Resource::new("events.k8s.io", "v1", "events", "Event", true, false),
        Resource::new(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
        ),
    ]
}

/// An API error, rendered as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }
    pub fn not_found(r: &Resource, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{}.{} \"{name}\" not found", r.plural, r.group))
    }
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

/// Where a write goes: the resource itself or its `/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

/// A change, as watches see it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub type_: &'static str,
    pub object: Value,
    /// The object before a modification (for label-selector transitions).
    pub old: Option<Value>,
}

/// One request the double served.
#[derive(Clone, Debug)]
pub struct Logged {
    pub client: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub code: u16,
}

impl Logged {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

#[derive(Default)]
struct Stored {
    obj: Value,
    /// Fields each (manager, operation) owns.
    owners: BTreeMap<(String, &'static str), BTreeSet<Path>>,
}

pub struct State {
    pub rv: u64,
    uid: u64,
    resources: BTreeMap<(String, String), Resource>,
    objects: BTreeMap<Key, Stored>,
    pub history: Vec<Change>,
    pub log: Vec<Logged>,
    tx: broadcast::Sender<Change>,
}

fn now() -> String {
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", Timestamp::now()).expect("timestamp")
}

fn rv_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion").and_then(Value::as_str)
}

fn meta_mut(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    v["metadata"].as_object_mut().expect("metadata object")
}

/// Fields a manager can own: not identity or system metadata, and on the right side of the
/// status subresource split.
fn ownable(p: &Path, r: &Resource, sub: Sub) -> bool {
    match p.first() {
        Some(Seg::F(f)) if f == "apiVersion" || f == "kind" => false,
        Some(Seg::F(f)) if f == "metadata" => {
            sub == Sub::Main
                && matches!(p.get(1), Some(Seg::F(m)) if ["labels", "annotations", "ownerReferences", "finalizers"].contains(&m.as_str()))
        }
        Some(Seg::F(f)) if f == "status" && r.status => sub == Sub::Status,
        _ => sub == Sub::Main,
    }
}

/// Shows who owns which fields in `metadata.managedFields`, as the API server does (without times).
fn show_managed_fields(obj: &mut Value, owners: &BTreeMap<(String, &'static str), BTreeSet<Path>>) {
    let api_version = obj.get("apiVersion").cloned().unwrap_or(Value::Null);
    let entries: Vec<Value> = owners
        .iter()
        .map(|((manager, operation), paths)| {
            json!({"manager": manager, "operation": operation, "apiVersion": api_version,
                   "fieldsType": "FieldsV1", "fieldsV1": fields::fields_v1(paths)})
        })
        .collect();
    let m = meta_mut(obj);
    if entries.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(entries));
    }
}

/// The part of `v` other than metadata and status: what bumps `metadata.generation`.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

impl State {
    pub fn new(tx: broadcast::Sender<Change>) -> Self {
        let resources = builtins().into_iter().map(|r| ((r.group.clone(), r.plural.clone()), r)).collect();
        Self { rv: 1, uid: 0, resources, objects: BTreeMap::new(), history: Vec::new(), log: Vec::new(), tx }
    }

    pub fn resource(&self, group: &str, plural: &str) -> Option<Resource> {
        self.resources.get(&(group.to_string(), plural.to_string())).cloned()
    }

    fn key(r: &Resource, ns: &str, name: &str) -> Key {
        Key {
            group: r.group.clone(),
            plural: r.plural.clone(),
            namespace: if r.namespaced { ns.to_string() } else { String::new() },
            name: name.to_string(),
        }
    }

    pub fn get(&self, r: &Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects.get(&Self::key(r, ns, name)).map(|s| s.obj.clone()).ok_or_else(|| ApiError::not_found(r, name))
    }

    /// Objects of `r`, in namespace `ns` (all namespaces when `None`), by namespace and name.
    pub fn list(&self, r: &Resource, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, _)| k.group == r.group && k.plural == r.plural && ns.is_none_or(|ns| k.namespace == ns))
            .map(|(_, s)| s.obj.clone())
            .collect()
    }

    fn emit(&mut self, r: &Resource, namespace: &str, type_: &'static str, object: Value, old: Option<Value>) {
        let change = Change {
            rv: self.rv,
            group: r.group.clone(),
            plural: r.plural.clone(),
            namespace: namespace.to_string(),
            type_,
            object,
            old,
        };
        self.history.push(change.clone());
        let _ = self.tx.send(change);
    }

    /// The admission chain of every write: preconditions, subresource split, system metadata,
    /// finalizer rules, schema (defaults, validation, CEL) and immutable fields, generation.
    /// Returns the object to store, or `None` when the write changes nothing.
    fn admit(
        &mut self,
        r: &Resource,
        old: Option<&Value>,
        mut new: Value,
        sub: Sub,
        precondition: Option<String>,
    ) -> Result<Option<Value>, ApiError> {
        if let (Some(want), Some(old)) = (precondition.as_deref(), old)
            && Some(want) != rv_of(old)
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {}.{} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    r.plural,
                    r.group,
                    old.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
                ),
            ));
        }
        new["apiVersion"] = json!(r.api_version());
        new["kind"] = json!(r.kind);
        if r.status {
            match (sub, old) {
                (Sub::Main, Some(old)) => match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().map(|m| m.remove("status"));
                    }
                },
                (Sub::Main, None) if r.kind != "CustomResourceDefinition" => {
                    new.as_object_mut().map(|m| m.remove("status"));
                }
                (Sub::Status, Some(old)) => {
                    let status = new.get("status").cloned();
                    new = old.clone();
                    match status {
                        Some(s) => new["status"] = s,
                        None => {
                            new.as_object_mut().map(|m| m.remove("status"));
                        }
                    }
                }
                _ => {}
            }
        }
        let m = meta_mut(&mut new);
        for system in [
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            m.remove(system);
        }
        match old {
            Some(old) => {
                for system in [
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "resourceVersion",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                ] {
                    if let Some(v) = old["metadata"].get(system) {
                        m.insert(system.into(), v.clone());
                    }
                }
            }
            None => {
                self.uid += 1;
                m.insert("uid".into(), json!(format!("00000000-0000-4000-8000-{:012x}", self.uid)));
                m.insert("creationTimestamp".into(), json!(now()));
                m.insert("generation".into(), json!(1));
            }
        }
        if let Some(old) = old
            && old.pointer("/metadata/deletionTimestamp").is_some()
        {
            let before: Vec<&Value> =
                old.pointer("/metadata/finalizers").and_then(Value::as_array).into_iter().flatten().collect();
            let after: Vec<&Value> =
                new.pointer("/metadata/finalizers").and_then(Value::as_array).into_iter().flatten().collect();
            if after.iter().any(|f| !before.contains(f)) {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if let Some(s) = &r.schema {
            let errs = schema::admit(s, &mut new, old);
            if !errs.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} \"{}\" is invalid: {}",
                        r.kind,
                        new.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(""),
                        errs.join(", ")
                    ),
                ));
            }
        }
        if let Some(old) = old {
            immutable_fields(r, old, &new)?;
            if spec_part(old) != spec_part(&new) {
                let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
            }
            let mut unchanged = old.clone();
            meta_mut(&mut unchanged).remove("managedFields");
            if unchanged == new {
                return Ok(None);
            }
        }
        Ok(Some(new))
    }

    /// Stores `new` under `key` with a fresh resourceVersion and tells the watches; removes it
    /// instead when it is being deleted and has no finalizers left. Then collects garbage.
    fn commit(
        &mut self,
        r: &Resource,
        key: Key,
        mut new: Value,
        owners: BTreeMap<(String, &'static str), BTreeSet<Path>>,
    ) -> Value {
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
        show_managed_fields(&mut new, &owners);
        let old = self.objects.get(&key).map(|s| s.obj.clone());
        let finalizers_left =
            new.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if new.pointer("/metadata/deletionTimestamp").is_some() && !finalizers_left {
            self.objects.remove(&key);
            self.emit(r, &key.namespace, "DELETED", new.clone(), old);
            self.on_removed(r, &new);
        } else {
            let type_ = if old.is_some() { "MODIFIED" } else { "ADDED" };
            self.objects.insert(key.clone(), Stored { obj: new.clone(), owners });
            self.emit(r, &key.namespace, type_, new.clone(), old);
            if r.kind == "CustomResourceDefinition" {
                self.register_crd(&new);
            }
        }
        self.collect_garbage();
        new
    }

    fn owners_of(&self, key: &Key) -> BTreeMap<(String, &'static str), BTreeSet<Path>> {
        self.objects.get(key).map(|s| s.owners.clone()).unwrap_or_default()
    }

    /// Records that `manager` set every field that differs between `old` and `new` (an update,
    /// not an apply): it takes those fields from everyone else; removed fields lose their owners.
    fn track_update(
        owners: &mut BTreeMap<(String, &'static str), BTreeSet<Path>>,
        manager: &str,
        r: &Resource,
        sub: Sub,
        old: &Value,
        new: &Value,
    ) {
        let old_l = fields::leaves(old);
        let new_l = fields::leaves(new);
        for p in new_l.iter().filter(|p| ownable(p, r, sub)) {
            if fields::get(old, p) != fields::get(new, p) || !old_l.contains(p) {
                for set in owners.values_mut() {
                    set.remove(p);
                }
                owners.entry((manager.to_string(), "Update")).or_default().insert(p.clone());
            }
        }
        for p in old_l.difference(&new_l) {
            for set in owners.values_mut() {
                set.remove(p);
            }
        }
        owners.retain(|_, s| !s.is_empty());
    }

    pub fn create(&mut self, r: &Resource, ns: &str, mut body: Value, manager: &str) -> Result<Value, ApiError> {
        let m = meta_mut(&mut body);
        if r.namespaced {
            match m.get("namespace").and_then(Value::as_str) {
                Some(n) if n != ns => {
                    return Err(ApiError::new(
                        400,
                        "BadRequest",
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    m.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        let name = match (m.get("name").and_then(Value::as_str), m.get("generateName").and_then(Value::as_str)) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) => format!("{g}{:05x}", self.rv),
            _ => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        m.insert("name".into(), json!(name));
        let key = Self::key(r, ns, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{}.{} \"{name}\" already exists", r.plural, r.group),
            ));
        }
        let new = self.admit(r, None, body, Sub::Main, None)?.expect("a create always writes");
        let mut owners = BTreeMap::new();
        Self::track_update(&mut owners, manager, r, Sub::Main, &json!({}), &new);
        Ok(self.commit(r, key, new, owners))
    }

    /// PUT: replaces the object (or its status), with optimistic concurrency on resourceVersion.
    pub fn replace(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        mut body: Value,
        sub: Sub,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let key = Self::key(r, ns, name);
        let old = self.objects.get(&key).map(|s| s.obj.clone()).ok_or_else(|| ApiError::not_found(r, name))?;
        if body.pointer("/metadata/name").and_then(Value::as_str).is_some_and(|n| n != name) {
            return Err(ApiError::new(400, "BadRequest", "the name of the object does not match the name on the URL"));
        }
        let precondition = rv_of(&body).map(str::to_string);
        let m = meta_mut(&mut body);
        m.insert("name".into(), json!(name));
        if r.namespaced {
            m.insert("namespace".into(), json!(ns));
        }
        let Some(new) = self.admit(r, Some(&old), body, sub, precondition)? else { return Ok(old) };
        let mut owners = self.owners_of(&key);
        Self::track_update(&mut owners, manager, r, sub, &old, &new);
        Ok(self.commit(r, key, new, owners))
    }

    /// JSON merge patch (strategic merge patches are treated as merge patches).
    pub fn merge_patch(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        patch: &Value,
        sub: Sub,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let key = Self::key(r, ns, name);
        let old = self.objects.get(&key).map(|s| s.obj.clone()).ok_or_else(|| ApiError::not_found(r, name))?;
        let mut body = old.clone();
        fields::merge_patch(&mut body, patch);
        let precondition = rv_of(patch).map(str::to_string);
        let Some(new) = self.admit(r, Some(&old), body, sub, precondition)? else { return Ok(old) };
        let mut owners = self.owners_of(&key);
        Self::track_update(&mut owners, manager, r, sub, &old, &new);
        Ok(self.commit(r, key, new, owners))
    }

    /// Server-side apply: merges `applied` as `manager`'s intent, refusing (409) to change fields
    /// another manager owns unless `force`, and removing fields `manager` applied before but not
    /// now (unless someone else owns them). Creates the object when it does not exist.
    #[allow(clippy::too_many_arguments)] // mirrors the request: resource, namespace, name, body, subresource, manager, force
    pub fn apply(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        applied: Value,
        sub: Sub,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        if manager.is_empty() {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        if applied.get("apiVersion").and_then(Value::as_str) != Some(&r.api_version())
            || applied.get("kind").and_then(Value::as_str) != Some(&r.kind)
        {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!("apply needs apiVersion {} and kind {}", r.api_version(), r.kind),
            ));
        }
        if applied.pointer("/metadata/name").and_then(Value::as_str).is_some_and(|n| n != name) {
            return Err(ApiError::new(400, "BadRequest", "the name of the object does not match the name on the URL"));
        }
        let key = Self::key(r, ns, name);
        let old = self.objects.get(&key).map(|s| s.obj.clone());
        let mut owners = self.owners_of(&key);
        let base_default = json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": {"name": name}});
        let mut merged = old.clone().unwrap_or(base_default);
        let applied = fields::strip_nulls(&applied);
        let paths: BTreeSet<Path> = fields::leaves(&applied).into_iter().filter(|p| ownable(p, r, sub)).collect();
        let me = (manager.to_string(), "Apply");

        let mut conflicts = Vec::new();
        for p in paths.iter().filter(|p| p.last() != Some(&Seg::Item)) {
            if fields::get(&merged, p) == fields::get(&applied, p) {
                continue;
            }
            for (who, set) in &owners {
                if who.0 != manager && set.contains(p) {
                    conflicts.push((who.0.clone(), p.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !force {
                let list: Vec<String> =
                    conflicts.iter().map(|(m, p)| format!("conflict with \"{m}\": {}", fields::show(p))).collect();
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!("Apply failed with {} conflict(s): {}", list.len(), list.join(", ")),
                ));
            }
            for (who, p) in &conflicts {
                for ((m, _), set) in owners.iter_mut() {
                    if m == who {
                        set.remove(p);
                    }
                }
            }
        }
        let previous = owners.get(&me).cloned().unwrap_or_default();
        // Longest paths first, so list items go after their fields.
        let mut gone: Vec<&Path> = previous.difference(&paths).collect();
        gone.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in gone {
            let shared = owners.iter().any(|(who, set)| *who != me && set.contains(p));
            if !shared {
                fields::remove(&mut merged, p);
            }
        }
        let mut scoped = applied.clone();
        if r.status
            && let Some(m) = scoped.as_object_mut()
        {
            match sub {
                Sub::Main => {
                    m.remove("status");
                }
                Sub::Status => m.retain(|k, _| k == "status" || k == "apiVersion" || k == "kind"),
            }
        }
        fields::merge(&mut merged, &scoped);
        owners.insert(me, paths);
        owners.retain(|_, s| !s.is_empty());
        let precondition = rv_of(&applied).map(str::to_string);
        match old {
            None => {
                if sub == Sub::Status {
                    return Err(ApiError::not_found(r, name));
                }
                let m = meta_mut(&mut merged);
                if r.namespaced {
                    m.insert("namespace".into(), json!(ns));
                }
                let new = self.admit(r, None, merged, Sub::Main, None)?.expect("a create always writes");
                Ok(self.commit(r, key, new, owners))
            }
            Some(old) => match self.admit(r, Some(&old), merged, sub, precondition)? {
                Some(new) => Ok(self.commit(r, key, new, owners)),
                None => {
                    let Some(s) = self.objects.get_mut(&key) else { return Ok(old) };
                    show_managed_fields(&mut s.obj, &owners);
                    s.owners = owners;
                    Ok(s.obj.clone())
                }
            },
        }
    }

    /// DELETE: with finalizers the object only gets a deletionTimestamp (and a generation bump);
    /// without, it goes, and so do its dependents (background garbage collection). `orphan`
    /// removes the owner reference from dependents instead.
    pub fn delete(
        &mut self,
        r: &Resource,
        ns: &str,
        name: &str,
        orphan: bool,
        precondition_rv: Option<String>,
    ) -> Result<Value, ApiError> {
        let key = Self::key(r, ns, name);
        let old = self.objects.get(&key).map(|s| s.obj.clone()).ok_or_else(|| ApiError::not_found(r, name))?;
        if let Some(want) = precondition_rv
            && Some(want.as_str()) != rv_of(&old)
        {
            return Err(ApiError::new(409, "Conflict", "Precondition failed: resourceVersion does not match"));
        }
        if orphan {
            self.orphan_dependents(old.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or(""));
        }
        let has_finalizers =
            old.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(old);
            }
            let mut new = old.clone();
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            let m = meta_mut(&mut new);
            m.insert("deletionTimestamp".into(), json!(now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            m.insert("generation".into(), json!(generation + 1));
            let owners = self.owners_of(&key);
            return Ok(self.commit(r, key, new, owners));
        }
        self.rv += 1;
        let mut gone = old.clone();
        meta_mut(&mut gone).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.objects.remove(&key);
        self.emit(r, &key.namespace, "DELETED", gone.clone(), Some(old));
        self.on_removed(r, &gone);
        self.collect_garbage();
        Ok(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": r.group, "kind": r.plural, "uid": gone.pointer("/metadata/uid")},
        }))
    }

    fn orphan_dependents(&mut self, uid: &str) {
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, s)| {
                s.obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|o| o.iter().any(|r| r["uid"] == uid))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in dependents {
            let Some(r) = self.resource(&k.group, &k.plural) else { continue };
            let mut obj = self.objects[&k].obj.clone();
            if let Some(refs) = obj.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                refs.retain(|o| o["uid"] != uid);
            }
            let owners = self.owners_of(&k);
            self.commit(&r, k, obj, owners);
        }
    }

    /// Deletes every object whose owners are all gone (matched by uid, as the garbage collector does).
    fn collect_garbage(&mut self) {
        loop {
            let uids: BTreeSet<String> = self
                .objects
                .values()
                .filter_map(|s| s.obj.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string))
                .collect();
            let orphan = self.objects.iter().find(|(_, s)| {
                let refs = s.obj.pointer("/metadata/ownerReferences").and_then(Value::as_array);
                s.obj.pointer("/metadata/deletionTimestamp").is_none()
                    && refs.is_some_and(|refs| {
                        !refs.is_empty() && refs.iter().all(|o| !uids.contains(o["uid"].as_str().unwrap_or("")))
                    })
            });
            let Some((key, _)) = orphan else { return };
            let key = key.clone();
            let Some(r) = self.resource(&key.group, &key.plural) else { return };
            let _ = self.delete(&r, &key.namespace, &key.name, false, None);
        }
    }

    /// A CRD's resource becomes servable when the CRD is stored (and is `Established` at once).
    fn register_crd(&mut self, crd: &Value) {
        let spec = &crd["spec"];
        let version = spec["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["storage"] == true).or(v.first()))
            .cloned()
            .unwrap_or_default();
        let r = Resource {
            group: spec["group"].as_str().unwrap_or_default().into(),
            version: version["name"].as_str().unwrap_or_default().into(),
            plural: spec["names"]["plural"].as_str().unwrap_or_default().into(),
            kind: spec["names"]["kind"].as_str().unwrap_or_default().into(),
            namespaced: spec["scope"] == "Namespaced",
            status: version.pointer("/subresources/status").is_some(),
            schema: version.pointer("/schema/openAPIV3Schema").cloned(),
        };
        self.resources.insert((r.group.clone(), r.plural.clone()), r);
        let established = json!({"conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
        ], "acceptedNames": spec["names"].clone(), "storedVersions": [version["name"].clone()]});
        if crd.get("status").and_then(|s| s.get("conditions")).is_none() {
            let name = crd["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let mut with_status = crd.clone();
            with_status["status"] = established;
            let r = self.resource("apiextensions.k8s.io", "customresourcedefinitions").expect("builtin");
            let key = Self::key(&r, "", &name);
            let owners = self.owners_of(&key);
            self.rv += 1;
            meta_mut(&mut with_status).insert("resourceVersion".into(), json!(self.rv.to_string()));
            self.objects.insert(key, Stored { obj: with_status.clone(), owners });
            self.emit(&r, "", "MODIFIED", with_status, Some(crd.clone()));
        }
    }

    /// Deleting a CRD deletes its custom resources and stops serving them.
    fn on_removed(&mut self, r: &Resource, obj: &Value) {
        if r.kind != "CustomResourceDefinition" {
            return;
        }
        let group = obj.pointer("/spec/group").and_then(Value::as_str).unwrap_or_default().to_string();
        let plural = obj.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or_default().to_string();
        self.objects.retain(|k, _| !(k.group == group && k.plural == plural));
        self.resources.remove(&(group, plural));
    }
}

/// Fields the API server refuses to change after creation.
fn immutable_fields(r: &Resource, old: &Value, new: &Value) -> Result<(), ApiError> {
    let invalid = |msg: String| {
        Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "{} \"{}\" is invalid: {msg}",
                r.kind,
                new.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
            ),
        ))
    };
    match (r.group.as_str(), r.plural.as_str()) {
        ("apps", "statefulsets") => {
            let mutable = [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ];
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or_default();
                if let Some(m) = s.as_object_mut() {
                    m.retain(|k, _| !mutable.contains(&k.as_str()));
                }
                s
            };
            if strip(old) != strip(new) {
                return invalid("spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into());
            }
        }
        ("apps", "deployments") if old.pointer("/spec/selector") != new.pointer("/spec/selector") => {
            return invalid("spec.selector: Invalid value: field is immutable".into());
        }
        ("", "services") => {
            let ip = |v: &Value| v.pointer("/spec/clusterIP").cloned();
            if ip(old).is_some() && ip(old) != ip(new) && ip(new).is_some() {
                return invalid("spec.clusterIP: Invalid value: field is immutable".into());
            }
        }
        _ => {}
    }
    Ok(())
}
