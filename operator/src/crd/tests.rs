//! The CRDs' validation rules, evaluated by kube's client-side CEL engine against the generated
//! schemas (the same rules a real API server runs; `tests/controllers.rs` checks them on a real
//! cluster when `KUBECONFIG` is set).

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};

use super::*;

fn schema<K: CustomResourceExt>() -> Value {
    serde_json::to_value(K::crd().spec.versions[0].schema.clone().unwrap().open_api_v3_schema.unwrap()).unwrap()
}

fn domain(spec: Value) -> Value {
    json!({
        "apiVersion": "parley.dev/v1alpha1",
        "kind": "CommunicationsDomain",
        "metadata": {"name": "corp", "namespace": "ns"},
        "spec": spec,
    })
}

fn base_spec() -> Value {
    json!({
        "sipDomain": "example.test",
        "users": 5000,
        "topology": "auto",
        "directory": {"file": {"configMap": "users", "key": "users.toml"}},
    })
}

fn messages(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(schema, obj, old) {
        Ok(()) => vec![],
        Err(errs) => errs.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

#[test]
fn a_plain_domain_passes() {
    let s = schema::<CommunicationsDomain>();
    assert_eq!(messages(&s, &domain(base_spec()), None), Vec::<String>::new());
}

#[test]
fn sip_domain_is_immutable() {
    let s = schema::<CommunicationsDomain>();
    let old = domain(base_spec());
    let mut spec = base_spec();
    spec["sipDomain"] = json!("other.test");
    let errs = messages(&s, &domain(spec.clone()), Some(&old));
    assert!(errs.iter().any(|m| m.contains("sipDomain is immutable")), "{errs:?}");
    spec["sipDomain"] = json!("example.test");
    spec["users"] = json!(25000);
    assert!(messages(&s, &domain(spec), Some(&old)).is_empty(), "users may change");
}

#[test]
fn manual_topology_forbids_operator_owned_settings() {
    let s = schema::<CommunicationsDomain>();
    let mut spec = base_spec();
    spec["topology"] = json!("manual");
    spec["homeServers"] = json!(2);
    let errs = messages(&s, &domain(spec.clone()), None);
    assert!(errs.iter().any(|m| m.contains("need topology: auto")), "{errs:?}");
    spec.as_object_mut().unwrap().remove("homeServers");
    spec["frontEnd"] = json!({"replicas": 3});
    assert!(!messages(&s, &domain(spec.clone()), None).is_empty());
    spec["topology"] = json!("auto");
    assert!(messages(&s, &domain(spec), None).is_empty());
}

#[test]
fn home_server_override_must_hold_the_users() {
    let s = schema::<CommunicationsDomain>();
    let mut spec = base_spec();
    spec["users"] = json!(25000);
    spec["homeServers"] = json!(2);
    let errs = messages(&s, &domain(spec.clone()), None);
    assert!(errs.iter().any(|m| m.contains("too small for users")), "{errs:?}");
    spec["homeServers"] = json!(3);
    assert!(messages(&s, &domain(spec), None).is_empty());
}

#[test]
fn directory_needs_exactly_one_backend() {
    let s = schema::<CommunicationsDomain>();
    let mut spec = base_spec();
    spec["directory"] = json!({});
    let errs = messages(&s, &domain(spec.clone()), None);
    assert!(errs.iter().any(|m| m.contains("exactly one of ldap, file or managed")), "{errs:?}");
    spec["directory"] = json!({
        "file": {"configMap": "users"},
        "ldap": {"url": "ldap://ldap:389", "baseDn": "dc=x", "passwordSecret": {"name": "s"}},
    });
    assert!(!messages(&s, &domain(spec), None).is_empty());
}

#[test]
fn long_domain_names_are_refused() {
    let s = schema::<CommunicationsDomain>();
    let mut obj = domain(base_spec());
    obj["metadata"]["name"] = json!("a".repeat(41));
    let errs = messages(&s, &obj, None);
    assert!(errs.iter().any(|m| m.contains("at most 40 characters")), "{errs:?}");
}

#[test]
fn home_server_and_front_end_domains_are_immutable() {
    let hs = schema::<HomeServer>();
    let old = json!({"metadata": {"name": "h"}, "spec": {"domain": "a"}});
    let new = json!({"metadata": {"name": "h"}, "spec": {"domain": "b"}});
    assert!(messages(&hs, &new, Some(&old)).iter().any(|m| m.contains("domain is immutable")));
    let fe = schema::<FrontEnd>();
    let old = json!({"metadata": {"name": "f"}, "spec": {"domain": "a"}});
    let new = json!({"metadata": {"name": "f"}, "spec": {"domain": "b"}});
    assert!(messages(&fe, &new, Some(&old)).iter().any(|m| m.contains("domain is immutable")));
}

#[test]
fn front_end_ports_must_differ() {
    let fe = schema::<FrontEnd>();
    let obj = json!({"metadata": {"name": "f"}, "spec": {"domain": "a", "ports": {"sip": 5060, "sipTls": 5060}}});
    assert!(messages(&fe, &obj, None).iter().any(|m| m.contains("must be different")));
}

#[test]
fn schema_defaults_fill_the_spec_like_the_api_server() {
    let s = schema::<CommunicationsDomain>();
    let mut spec = base_spec();
    spec.as_object_mut().unwrap().remove("topology");
    let defaulted = kube::core::cel::apply_defaults(&s, &domain(spec));
    assert_eq!(defaulted["spec"]["topology"], "auto");
    assert_eq!(defaulted["spec"]["paused"], false);
    let parsed: CommunicationsDomain = serde_json::from_value(defaulted).unwrap();
    assert_eq!(parsed.spec.topology, Topology::Auto);
}

#[test]
fn serde_defaults_match_the_schema_defaults() {
    // The operator must not depend on the API server having defaulted a field.
    let parsed: CommunicationsDomain = serde_json::from_value(domain(base_spec())).unwrap();
    assert!(!parsed.spec.paused);
    assert!(!parsed.spec.tls.require_client_tls);
    let fe: FrontEnd = serde_json::from_value(json!({
        "apiVersion": "parley.dev/v1alpha1", "kind": "FrontEnd",
        "metadata": {"name": "f"}, "spec": {"domain": "a"}
    }))
    .unwrap();
    assert_eq!((fe.spec.ports.sip, fe.spec.ports.sip_tls), (5060, 5061));
    assert_eq!(fe.spec.service_type, ServiceType::ClusterIP);
}

fn ldap_spec(ldap: Value) -> Value {
    let mut spec = base_spec();
    spec["directory"] = json!({"ldap": ldap});
    spec
}

#[test]
fn existing_ldap_domains_stay_valid() {
    let s = schema::<CommunicationsDomain>();
    // As written before serviceAccountSecretRef, adminSecret's bindDnKey and caBundle existed.
    let old = ldap_spec(json!({
        "url": "ldap://ldap:389", "baseDn": "dc=x",
        "passwordSecret": {"name": "s"}, "adminSecret": {"name": "admin"},
    }));
    assert_eq!(messages(&s, &domain(old.clone()), None), Vec::<String>::new());
    let parsed: CommunicationsDomain = serde_json::from_value(domain(old)).unwrap();
    let ldap = parsed.spec.directory.ldap.unwrap();
    assert_eq!(ldap.explicit_service_account_secret().unwrap().name, "s");
    let admin = ldap.admin_secret.unwrap();
    assert_eq!((admin.key.as_str(), admin.bind_dn_key.as_str()), ("password", "bindDn"));
    let mut tls = base_spec();
    tls["tls"] = json!({"certManagerIssuer": {"name": "ca"}, "requireClientTls": true});
    assert!(messages(&s, &domain(tls.clone()), None).is_empty());
    let parsed: CommunicationsDomain = serde_json::from_value(domain(tls)).unwrap();
    assert_eq!(parsed.spec.tls.issuer().unwrap().name, "ca");
}

#[test]
fn directory_settings_are_checked() {
    let s = schema::<CommunicationsDomain>();
    let full = json!({
        "url": "ldap://ldap:389", "baseDn": "dc=x", "startTls": true,
        "serviceAccountSecretRef": {"name": "svc"},
        "adminSecret": {"name": "admin", "key": "pw", "bindDnKey": "dn"},
        "caBundle": {"configMap": "ldap-ca"},
    });
    assert_eq!(messages(&s, &domain(ldap_spec(full.clone())), None), Vec::<String>::new());

    let mut both = full.clone();
    both["passwordSecret"] = json!({"name": "old"});
    let errs = messages(&s, &domain(ldap_spec(both)), None);
    assert!(errs.iter().any(|m| m.contains("set only serviceAccountSecretRef")), "{errs:?}");

    let mut ldaps = full.clone();
    ldaps["url"] = json!("ldaps://ldap:636");
    let errs = messages(&s, &domain(ldap_spec(ldaps.clone())), None);
    assert!(errs.iter().any(|m| m.contains("startTls upgrades an ldap:// connection")), "{errs:?}");
    ldaps["startTls"] = json!(false);
    assert!(messages(&s, &domain(ldap_spec(ldaps)), None).is_empty());

    for bundle in [json!({}), json!({"configMap": "a", "secret": "b"})] {
        let mut b = full.clone();
        b["caBundle"] = bundle;
        let errs = messages(&s, &domain(ldap_spec(b)), None);
        assert!(errs.iter().any(|m| m.contains("exactly one of configMap or secret")), "{errs:?}");
    }
}

#[test]
fn one_issuer_name_at_a_time() {
    let s = schema::<CommunicationsDomain>();
    let mut spec = base_spec();
    spec["tls"] = json!({"issuerRef": {"name": "corp", "kind": "ClusterIssuer"}});
    assert!(messages(&s, &domain(spec.clone()), None).is_empty());
    spec["tls"]["certManagerIssuer"] = json!({"name": "corp"});
    let errs = messages(&s, &domain(spec.clone()), None);
    assert!(errs.iter().any(|m| m.contains("set only issuerRef")), "{errs:?}");
    // The CEL validator does not check enums; the API server checks the schema's.
    let kind = &s["properties"]["spec"]["properties"]["tls"]["properties"]["issuerRef"]["properties"]["kind"];
    assert_eq!(kind["enum"], json!(["Issuer", "ClusterIssuer"]), "{kind}");
}

#[test]
fn a_managed_directory_is_written_as_an_empty_object() {
    let s = schema::<CommunicationsDomain>();
    let mut spec = base_spec();
    spec["directory"] = json!({"managed": {}});
    assert_eq!(messages(&s, &domain(spec.clone()), None), Vec::<String>::new());
    let parsed: CommunicationsDomain = serde_json::from_value(domain(spec.clone())).unwrap();
    assert_eq!(parsed.spec.directory.managed, Some(ManagedDirectory {}));
    spec["directory"]["file"] = json!({"configMap": "users"});
    let errs = messages(&s, &domain(spec), None);
    assert!(errs.iter().any(|m| m.contains("exactly one of ldap, file or managed")), "{errs:?}");
}
