//! The Helm chart, rendered by `helm template` and checked against the Kubernetes types of
//! k8s-openapi (the v1.33 API schemas): every document must deserialize into its typed object and
//! serialize back to the same JSON, so a misspelled or misplaced field fails the test. Also checks
//! that the chart's RBAC grants what the controllers do.
//!
//! Needs Helm: `.tools/bin/helm` (installed by `make deps`) or `helm` on PATH; without it the tests
//! print a skip message.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> Option<PathBuf> {
    let local = repo().join(".tools/bin/helm");
    if local.exists() {
        return Some(local);
    }
    Command::new("helm").arg("version").output().ok().filter(|o| o.status.success()).map(|_| PathBuf::from("helm"))
}

fn render(values: Option<&str>) -> Option<Vec<Value>> {
    let Some(helm) = helm() else {
        eprintln!("skipped: no helm (run `make deps` to install .tools/bin/helm)");
        return None;
    };
    let chart = repo().join("charts/parley-operator");
    let mut cmd = Command::new(helm);
    cmd.args(["template", "parley", chart.to_str()?, "--namespace", "parley-system", "--include-crds"]);
    if let Some(v) = values {
        cmd.args(["-f", chart.join(v).to_str()?]);
    }
    let out = cmd.output().expect("run helm");
    assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("rendered YAML parses");
    Some(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Deserializes `doc` as `K` and checks nothing was lost on the way back.
fn round_trip<K: DeserializeOwned + Serialize>(doc: &Value) -> K {
    let typed: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {} does not match its schema: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(&typed).expect("serialize");
    let mut lost = Vec::new();
    differences("", doc, &back, &mut lost);
    assert!(
        lost.is_empty(),
        "{} {}: fields its type does not know or changes: {lost:?}",
        doc["kind"],
        doc["metadata"]["name"]
    );
    typed
}

/// Paths where `want` and `got` differ.
fn differences(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, v) in w {
                match g.get(k) {
                    Some(gv) => differences(&format!("{path}.{k}"), v, gv, out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                differences(&format!("{path}[{i}]"), wv, gv, out);
            }
        }
        (w, g) if w != g => out.push(format!("{path}: {w} became {g}")),
        _ => {}
    }
}

struct Rendered {
    kinds: Vec<String>,
    rules: Vec<PolicyRule>,
    deployment: Option<Deployment>,
}

fn check_all(docs: &[Value]) -> Rendered {
    let mut r = Rendered { kinds: Vec::new(), rules: Vec::new(), deployment: None };
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match (doc["apiVersion"].as_str().unwrap_or_default(), kind.as_str()) {
            ("apps/v1", "Deployment") => r.deployment = Some(round_trip::<Deployment>(doc)),
            ("v1", "ServiceAccount") => drop(round_trip::<ServiceAccount>(doc)),
            ("v1", "Service") => drop(round_trip::<Service>(doc)),
            ("policy/v1", "PodDisruptionBudget") => drop(round_trip::<PodDisruptionBudget>(doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                r.rules.extend(round_trip::<ClusterRole>(doc).rules.unwrap_or_default())
            }
            ("rbac.authorization.k8s.io/v1", "Role") => {
                r.rules.extend(round_trip::<Role>(doc).rules.unwrap_or_default())
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => drop(round_trip::<ClusterRoleBinding>(doc)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(round_trip::<RoleBinding>(doc)),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                let crd = round_trip::<CustomResourceDefinition>(doc);
                assert!(
                    crate::crd::generate::all().contains(&crd),
                    "chart CRD {:?} differs from the generated one",
                    crd.metadata.name
                );
            }
            (api, kind) => panic!("unexpected {api} {kind} in the chart"),
        }
        r.kinds.push(kind);
    }
    r
}

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.as_ref().is_some_and(|g| g.iter().any(|g| g == group))
            && r.resources.as_ref().is_some_and(|rs| rs.iter().any(|x| x == resource))
            && r.verbs.iter().any(|v| v == verb || v == "*")
    })
}

/// What the controllers and the runtime do, by (group, resource): the verbs they use.
const NEEDED: &[(&str, &str, &[&str])] = &[
    ("parley.dev", "communicationsdomains", &["get", "list", "watch"]),
    ("parley.dev", "homeservers", &["get", "list", "watch", "patch", "delete"]),
    ("parley.dev", "frontends", &["get", "list", "watch", "patch", "delete"]),
    ("parley.dev", "communicationsdomains/status", &["patch"]),
    ("parley.dev", "homeservers/status", &["patch"]),
    ("parley.dev", "frontends/status", &["patch"]),
    ("", "configmaps", &["get", "list", "watch", "patch"]),
    ("", "services", &["get", "list", "watch", "patch"]),
    ("", "persistentvolumeclaims", &["get", "patch"]),
    ("apps", "statefulsets", &["get", "list", "watch", "patch"]),
    ("apps", "deployments", &["get", "list", "watch", "patch"]),
    ("policy", "poddisruptionbudgets", &["get", "list", "watch", "patch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
    ("", "secrets", &["get", "patch"]),
    ("batch", "jobs", &["get", "list", "patch", "delete"]),
    // Prep pods' termination messages; the managed directory's pod (is it ready, and why not).
    ("", "pods", &["get", "list"]),
    ("cert-manager.io", "certificates", &["get", "patch"]),
    ("coordination.k8s.io", "leases", &["get", "create", "update"]),
    ("apiextensions.k8s.io", "customresourcedefinitions", &["get"]),
];

fn check_rbac(rules: &[PolicyRule]) {
    for (group, resource, verbs) in NEEDED {
        for verb in *verbs {
            assert!(allows(rules, group, resource, verb), "the chart does not allow {verb} on {group}/{resource}");
        }
    }
}

#[test]
fn default_values_render_valid_objects() {
    let Some(docs) = render(None) else { return };
    let r = check_all(&docs);
    let kinds: BTreeSet<&str> = r.kinds.iter().map(String::as_str).collect();
    for k in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(k), "no {k} rendered: {kinds:?}");
    }
    assert_eq!(r.kinds.iter().filter(|k| *k == "CustomResourceDefinition").count(), 3);
    check_rbac(&r.rules);
    let d = r.deployment.expect("Deployment");
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.args.as_deref(), Some(&["run".to_string()][..]));
    let env: Vec<_> = c.env.clone().unwrap().into_iter().map(|e| e.name).collect();
    for e in ["POD_NAME", "POD_NAMESPACE", "PARLEY_SERVER_IMAGE", "PARLEY_LEASE_NAME"] {
        assert!(env.contains(&e.to_string()), "{e} missing");
    }
    let lease = c.env.as_ref().unwrap().iter().find(|e| e.name == "PARLEY_LEASE_DURATION_SECONDS");
    assert_eq!(lease.and_then(|e| e.value.as_deref()), Some("15"), "leaseDurationSeconds reaches the operator");
    assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
    assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
}

#[test]
fn namespaced_values_render_a_role_in_the_watched_namespace() {
    let Some(docs) = render(Some("ci/namespaced-values.yaml")) else { return };
    let r = check_all(&docs);
    assert!(!r.kinds.contains(&"PodDisruptionBudget".to_string()), "no PDB for a single replica");
    assert!(!r.kinds.contains(&"Service".to_string()), "metrics Service disabled");
    check_rbac(&r.rules);
    let role = docs.iter().find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == "parley-demo");
    assert!(role.is_some(), "the controllers' Role lives in the watched namespace");
    let d = r.deployment.unwrap();
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example/parley-operator:1.2.3"));
    let env = c.env.clone().unwrap();
    let get = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.clone());
    assert_eq!(get("PARLEY_WATCH_NAMESPACE").as_deref(), Some("parley-demo"));
    assert_eq!(get("PARLEY_LEASE_DURATION_SECONDS").as_deref(), Some("7"));
    assert_eq!(get("PARLEY_SERVER_IMAGE").as_deref(), Some("registry.example/parley-server:1.2.3"));
}
