//! The Helm chart, rendered by `helm template` and checked against the Kubernetes types of
//! k8s-openapi (the v1.33 API schemas): every document must deserialize into its typed object and
//! serialize back to the same JSON, so a misspelled or misplaced field fails the test. Objects of
//! the Prometheus operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule) have no k8s-openapi
//! type: they parse as `DynamicObject` and their required fields are checked by hand. Also checks
//! that the chart's RBAC grants what the controllers do, that the operator pod meets the
//! "restricted" Pod Security Standard, that the monitors select what the operator's builders
//! make, and that alerts and the dashboard use only metrics that exist.
//!
//! Needs Helm: `.tools/bin/helm` (installed by `make deps`) or `helm` on PATH; without it the tests
//! print a skip message.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
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

/// `helm template` of the chart with `args` (values files, `--set`); None without Helm.
fn helm_template(args: &[&str]) -> Option<std::process::Output> {
    let Some(helm) = helm() else {
        eprintln!("skipped: no helm (run `make deps` to install .tools/bin/helm)");
        return None;
    };
    let chart = repo().join("charts/parley-operator");
    let mut cmd = Command::new(helm);
    cmd.args(["template", "parley", chart.to_str()?, "--namespace", "parley-system", "--include-crds"]);
    cmd.args(args);
    Some(cmd.output().expect("run helm"))
}

fn render(values: Option<&str>) -> Option<Vec<Value>> {
    let chart = repo().join("charts/parley-operator");
    let file = values.map(|v| chart.join(v).to_string_lossy().into_owned());
    let args: Vec<&str> = file.as_deref().map(|f| vec!["-f", f]).unwrap_or_default();
    let out = helm_template(&args)?;
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

#[derive(Default)]
struct Rendered {
    kinds: Vec<String>,
    rules: Vec<PolicyRule>,
    deployment: Option<Deployment>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    network_policies: Vec<NetworkPolicy>,
    /// ServiceMonitors, PodMonitors and PrometheusRules.
    monitoring: Vec<DynamicObject>,
}

fn check_all(docs: &[Value]) -> Rendered {
    let mut r = Rendered::default();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match (doc["apiVersion"].as_str().unwrap_or_default(), kind.as_str()) {
            ("apps/v1", "Deployment") => r.deployment = Some(round_trip::<Deployment>(doc)),
            ("v1", "ServiceAccount") => drop(round_trip::<ServiceAccount>(doc)),
            ("v1", "Service") => r.services.push(round_trip::<Service>(doc)),
            ("v1", "ConfigMap") => r.config_maps.push(round_trip::<ConfigMap>(doc)),
            ("networking.k8s.io/v1", "NetworkPolicy") => r.network_policies.push(round_trip::<NetworkPolicy>(doc)),
            ("monitoring.coreos.com/v1", "ServiceMonitor" | "PodMonitor" | "PrometheusRule") => {
                r.monitoring.push(monitoring_object(doc))
            }
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

/// What an [`crate::controllers::apply::ApplySet`] does with the kinds a controller owns: apply
/// (get, patch), prune (list, delete) and watch.
const OWNED_VERBS: &[&str] = &["get", "list", "watch", "patch", "delete"];

/// What the controllers and the runtime do besides applying and pruning their owned kinds, by
/// (group, resource): the verbs they use.
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
    use crate::controllers::apply::{domain_kinds, workload_kinds};
    for ar in workload_kinds().into_iter().chain(domain_kinds()) {
        for verb in OWNED_VERBS {
            assert!(
                allows(rules, &ar.group, &ar.plural, verb),
                "the chart does not allow {verb} on {}/{}, a kind the operator owns",
                ar.group,
                ar.plural
            );
        }
    }
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

/// A Prometheus-operator object (no k8s-openapi type): parses as a `DynamicObject`, names itself
/// and its namespace, and has the fields its CRD requires.
fn monitoring_object(doc: &Value) -> DynamicObject {
    let obj: DynamicObject = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {} is not an object: {e}", doc["kind"], doc["metadata"]["name"]));
    let types = obj.types.as_ref().expect("apiVersion and kind");
    assert_eq!(types.api_version, "monitoring.coreos.com/v1");
    let kind = types.kind.as_str();
    let name = obj.metadata.name.as_deref().unwrap_or_else(|| panic!("a {kind} without metadata.name"));
    assert!(obj.metadata.namespace.is_some(), "{kind} {name} has no namespace");
    let spec = &obj.data["spec"];
    let at = |what: &str| format!("{kind} {name}: {what}");
    let non_empty = |v: &Value, what: &str| -> Vec<Value> {
        let items = v.as_array().unwrap_or_else(|| panic!("{}", at(&format!("{what} is not a list"))));
        assert!(!items.is_empty(), "{}", at(&format!("{what} is empty")));
        items.clone()
    };
    match kind {
        "ServiceMonitor" | "PodMonitor" => {
            assert!(spec["selector"].is_object(), "{}", at("no spec.selector"));
            let key = if kind == "ServiceMonitor" { "endpoints" } else { "podMetricsEndpoints" };
            for e in non_empty(&spec[key], key) {
                assert!(e["port"].is_string(), "{}", at("an endpoint names no port"));
                assert_eq!(e["path"], "/metrics", "{}", at("scrapes /metrics"));
                for d in ["interval", "scrapeTimeout"] {
                    assert!(e[d].is_string(), "{}", at(&format!("{d} is not a duration")));
                }
            }
        }
        "PrometheusRule" => {
            let mut alerts = BTreeSet::new();
            for g in non_empty(&spec["groups"], "spec.groups") {
                assert!(g["name"].is_string(), "{}", at("a group without name"));
                for rule in non_empty(&g["rules"], "rules") {
                    let alert = rule["alert"].as_str().unwrap_or_else(|| panic!("{}", at("a rule without alert")));
                    assert!(alerts.insert(alert.to_string()), "{}", at(&format!("{alert} twice")));
                    let expr = rule["expr"].as_str().unwrap_or_default();
                    assert_metrics_exist(alert, expr);
                    assert!(rule["for"].is_string(), "{}", at(&format!("{alert} has no `for`")));
                    let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
                    assert!(["critical", "warning"].contains(&severity), "{}", at(&format!("{alert}'s severity")));
                    for a in ["summary", "description"] {
                        assert!(rule["annotations"][a].is_string(), "{}", at(&format!("{alert} has no {a}")));
                    }
                }
            }
        }
        _ => panic!("unexpected monitoring.coreos.com/v1 {kind}"),
    }
    obj
}

/// Whether a label selector (as JSON: matchLabels and matchExpressions) selects `labels`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let match_labels = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str()));
    let match_expressions = selector["matchExpressions"].as_array().is_none_or(|es| {
        es.iter().all(|e| {
            let key = e["key"].as_str().expect("key");
            let values: Vec<&str> =
                e["values"].as_array().map(|v| v.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let value = labels.get(key).map(String::as_str);
            match e["operator"].as_str().expect("operator") {
                "In" => value.is_some_and(|v| values.contains(&v)),
                "NotIn" => !value.is_some_and(|v| values.contains(&v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                op => panic!("unknown selector operator {op}"),
            }
        })
    });
    match_labels && match_expressions
}

/// Series the alerts use that the code does not export: kube-state-metrics' (v2), and `up`, which
/// Prometheus records for every target it scrapes.
const EXTERNAL_METRICS: &[&str] = &["kube_pod_status_ready", "kube_pod_owner", "kube_job_failed", "up"];

/// Every metric `expr` names exists: the servers' and the operator's as their sources print them,
/// the others in [`EXTERNAL_METRICS`]. An expression must name at least one.
fn assert_metrics_exist(what: &str, expr: &str) {
    let sources = ["server/src/ops/metrics.rs", "operator/src/runtime/metrics.rs"]
        .map(|f| std::fs::read_to_string(repo().join(f)).unwrap_or_else(|e| panic!("read {f}: {e}")))
        .join("\n");
    let names = regex::Regex::new(r"\b(parley_[a-z0-9_]+|kube_[a-z0-9_]+|up)\b").expect("regex");
    let mut found = 0;
    for m in names.find_iter(expr) {
        let name = m.as_str();
        let exported = regex::Regex::new(&format!(r"\b{name}\b")).expect("regex").is_match(&sources);
        assert!(
            exported || EXTERNAL_METRICS.contains(&name),
            "{what}: metric {name} is exported by neither the servers nor the operator (in `{expr}`)"
        );
        found += 1;
    }
    assert!(found > 0, "{what}: `{expr}` names no known metric");
    assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "{what}: unbalanced parentheses in `{expr}`");
}

/// The "restricted" Pod Security Standard (v1.33), as the admission plugin checks it, plus a
/// read-only root filesystem.
fn assert_restricted(pod: &PodSpec) {
    let psc = pod.security_context.clone().unwrap_or_default();
    for (field, on) in [("hostNetwork", pod.host_network), ("hostPID", pod.host_pid), ("hostIPC", pod.host_ipc)] {
        assert_ne!(on, Some(true), "{field} is not allowed");
    }
    assert!(psc.sysctls.unwrap_or_default().is_empty(), "no sysctls");
    for v in pod.volumes.iter().flatten() {
        assert!(v.host_path.is_none(), "volume {} is a hostPath", v.name);
    }
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        let sc = c.security_context.clone().unwrap_or_default();
        let n = &c.name;
        assert_eq!(sc.run_as_non_root.or(psc.run_as_non_root), Some(true), "{n}: runAsNonRoot");
        assert_ne!(sc.run_as_user.or(psc.run_as_user), Some(0), "{n}: runAsUser 0");
        let seccomp = sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref()).map(|p| p.type_.as_str());
        assert!(matches!(seccomp, Some("RuntimeDefault" | "Localhost")), "{n}: seccompProfile {seccomp:?}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{n}: allowPrivilegeEscalation");
        assert_ne!(sc.privileged, Some(true), "{n}: privileged");
        let caps = sc.capabilities.unwrap_or_default();
        assert!(caps.drop.iter().flatten().any(|d| d == "ALL"), "{n}: capabilities.drop lacks ALL");
        assert!(caps.add.iter().flatten().all(|a| a == "NET_BIND_SERVICE"), "{n}: adds capabilities");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{n}: readOnlyRootFilesystem");
        assert!(c.ports.iter().flatten().all(|p| p.host_port.is_none()), "{n}: hostPort");
    }
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.clone()).unwrap_or_default()
}

fn container_port_names(pod: &PodSpec) -> Vec<String> {
    pod.containers.iter().flat_map(|c| c.ports.iter().flatten()).filter_map(|p| p.name.clone()).collect()
}

#[test]
fn every_value_set_runs_the_operator_under_restricted_pod_security() {
    for values in [None, Some("ci/namespaced-values.yaml"), Some("ci/all-features-values.yaml")] {
        let Some(docs) = render(values) else { return };
        let d = check_all(&docs).deployment.expect("Deployment");
        assert_restricted(&d.spec.unwrap().template.spec.unwrap());
    }
}

#[test]
fn all_features_render_monitoring_that_matches_what_the_operator_builds() {
    use crate::build::{domain, fixtures, front_end, home_server, prep};

    let Some(docs) = render(Some("ci/all-features-values.yaml")) else { return };
    let r = check_all(&docs);
    check_rbac(&r.rules);
    let kinds: BTreeSet<&str> = r.kinds.iter().map(String::as_str).collect();
    for k in ["ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy", "ConfigMap"] {
        assert!(kinds.contains(k), "no {k} rendered: {kinds:?}");
    }
    let monitor = |kind: &str| {
        r.monitoring.iter().find(|o| o.types.as_ref().is_some_and(|t| t.kind == kind)).expect(kind).data["spec"].clone()
    };
    let deployment = r.deployment.clone().expect("Deployment");
    let operator_pod = deployment.spec.clone().unwrap().template.spec.unwrap();
    let operator_ports = container_port_names(&operator_pod);

    // The ServiceMonitor finds the metrics Service, which reaches the operator's ops port.
    let sm = monitor("ServiceMonitor");
    let svc = r.services.iter().find(|s| s.metadata.name.as_deref().is_some_and(|n| n.ends_with("-metrics")));
    let svc = svc.expect("metrics Service");
    assert!(selects(&sm["selector"], svc.metadata.labels.as_ref().unwrap()), "ServiceMonitor misses the Service");
    assert_eq!(sm["namespaceSelector"]["matchNames"][0], "parley-system");
    let svc_spec = svc.spec.clone().unwrap();
    let svc_port =
        svc_spec.ports.unwrap().into_iter().find(|p| p.name.as_deref() == sm["endpoints"][0]["port"].as_str());
    let target = svc_port.expect("the ServiceMonitor's port is the Service's").target_port;
    assert_eq!(target, Some(IntOrString::String("ops".into())));
    assert!(operator_ports.contains(&"ops".to_string()));
    let svc_selector: BTreeMap<_, _> = svc_spec.selector.unwrap_or_default();
    assert!(svc_selector.iter().all(|(k, v)| pod_labels(&deployment).get(k) == Some(v)), "Service selects the pods");

    // The PodMonitor selects the pods the operator builds for Home Servers and Front-Ends.
    let pm = monitor("PodMonitor");
    let d = fixtures::domain("corp", 25_000);
    let ctx = fixtures::ctx(&d);
    let hs_name = domain::home_server_name("corp", 1);
    let hs = home_server::build(&fixtures::home_server(&hs_name, "corp"), &ctx).expect("Home Server");
    let fe = front_end::build(&fixtures::front_end(&domain::front_end_name("corp"), "corp"), &ctx, &[]).expect("FE");
    let templates =
        [("Home Server", hs.stateful_set.spec.unwrap().template), ("Front-End", fe.deployment.spec.unwrap().template)];
    for (what, template) in templates {
        let labels = template.metadata.unwrap().labels.unwrap();
        assert!(selects(&pm["selector"], &labels), "the PodMonitor misses {what} pods: {labels:?}");
        for l in pm["podTargetLabels"].as_array().unwrap() {
            assert!(labels.contains_key(l.as_str().unwrap()), "{what} pods have no label {l}");
        }
        let port = pm["podMetricsEndpoints"][0]["port"].as_str().unwrap().to_string();
        assert!(container_port_names(&template.spec.unwrap()).contains(&port), "{what} pods have no port {port}");
    }
    assert_eq!(pm["namespaceSelector"]["any"], true, "all namespaces when the operator watches all");

    // The alerts' name patterns match what the operator names.
    let rule_spec = monitor("PrometheusRule");
    let exprs: Vec<String> = rule_spec["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter().map(|r| r["expr"].as_str().unwrap().to_string()))
        .collect();
    let pattern = |label: &str| {
        let re = regex::Regex::new(&format!(r#"{label}=~"([^"]+)""#)).unwrap();
        let p = exprs.iter().find_map(|e| re.captures(e)).unwrap_or_else(|| panic!("no {label}=~ in the alerts"));
        regex::Regex::new(&format!("^(?:{})$", &p[1])).unwrap()
    };
    assert!(pattern("pod").is_match(&format!("{hs_name}-0")), "the not-ready alert misses the Home Server pod");
    for step in [prep::Step::Schema, prep::Step::Enterprise, prep::Step::Domain, prep::Step::DomainAdd(1)] {
        let job = step.job_name("corp");
        assert!(pattern("job_name").is_match(&job), "the prep alert misses Job {job}");
    }
    let alerts = rule_spec.to_string();
    for a in [
        "ParleyHomeServerDown",
        "ParleyStoreSyncSlow",
        "ParleyPrepJobFailed",
        "ParleyReconcileErrors",
        "ParleyOperatorNoLeader",
    ] {
        assert!(alerts.contains(a), "no alert {a}");
    }

    // The dashboard: JSON in a ConfigMap Grafana's sidecar loads, querying only real metrics.
    let cm = r.config_maps.iter().find(|c| c.metadata.name.as_deref().is_some_and(|n| n.ends_with("-dashboard")));
    let cm = cm.expect("dashboard ConfigMap");
    assert_eq!(cm.metadata.labels.as_ref().unwrap()["grafana_dashboard"], "1");
    assert_eq!(cm.metadata.namespace.as_deref(), Some("monitoring"));
    let dashboard: Value = serde_json::from_str(&cm.data.as_ref().unwrap()["parley.json"]).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut titles = String::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().expect("panel title");
        titles.push_str(title);
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        for t in targets.unwrap_or_else(|| panic!("panel {title} has no query")) {
            assert_metrics_exist(title, t["expr"].as_str().expect("expr"));
        }
    }
    for t in ["Registrations", "Messages", "Subscriptions", "NOTIFY", "Responses", "Reconcile"] {
        assert!(titles.contains(t), "no dashboard panel on {t}");
    }

    // The NetworkPolicy: the operator's pods, DNS and the API server out, /metrics in.
    let np = r.network_policies[0].spec.clone().unwrap();
    let np_selector = serde_json::to_value(&np.pod_selector).unwrap();
    assert!(selects(&np_selector, &pod_labels(&deployment)), "the NetworkPolicy misses the operator pods");
    let egress = serde_json::to_value(np.egress.unwrap()).unwrap().to_string();
    for port in [r#""port":53,"protocol":"UDP""#, r#""port":443,"protocol":"TCP""#] {
        assert!(egress.contains(port), "no egress {port}: {egress}");
    }
    let ingress = np.ingress.unwrap();
    let ports: Vec<_> = ingress.iter().flat_map(|i| i.ports.iter().flatten()).filter_map(|p| p.port.clone()).collect();
    assert_eq!(ports, [IntOrString::String("ops".into())], "ingress only to the ops port");
}

#[test]
fn the_schema_refuses_a_wrong_type_naming_the_key() {
    let Some(out) = helm_template(&["--set", "replicaCount=abc"]) else { return };
    assert!(!out.status.success(), "replicaCount=abc rendered");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("replicaCount: Invalid type. Expected: integer, given: string"), "{err}");
    let Some(out) = helm_template(&["--set", "replicas=3"]) else { return };
    assert!(!out.status.success(), "an unknown key rendered");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Additional property replicas is not allowed"));
}
