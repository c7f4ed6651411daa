//! Custom resources a person might write by mistake, each refused by the real API server (the
//! CRD's schema or its CEL rules) with a message that names the field and says what is wrong.
//! Mistakes only the operator can see (a Secret that does not exist, a key missing from it, an
//! issuer cert-manager does not know) are reported in conditions; the scenarios test those.

use kube::api::{Api, Patch, PatchParams, PostParams, ValidationDirective};
use parley_operator::crd::{CommunicationsDomain, FrontEnd, HomeServer};
use serde_json::{Value, json};

use crate::support::Harness;

fn domain(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "parley.dev/v1alpha1", "kind": "CommunicationsDomain", "metadata": {"name": name}, "spec": spec})
}

fn spec(change: impl FnOnce(&mut Value)) -> Value {
    let mut s = json!({"sipDomain": "example.test", "users": 500, "directory": {"managed": {}}});
    change(&mut s);
    s
}

fn ldap(change: impl FnOnce(&mut Value)) -> Value {
    spec(|s| {
        let mut l = json!({"url": "ldap://ldap.example.test", "baseDn": "dc=example,dc=test"});
        change(&mut l);
        s["directory"] = json!({ "ldap": l });
    })
}

/// Server-side apply, as `kubectl apply --server-side --force-conflicts` sends it, unknown fields
/// refused, nothing stored.
fn params() -> PatchParams {
    PatchParams::apply("refusals").validation(ValidationDirective::Strict).dry_run().force()
}

/// Applies `obj` and returns the API server's refusal, or panics if it was accepted.
async fn refusal<K>(api: &Api<K>, obj: &Value) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj["metadata"]["name"].as_str().unwrap();
    match api.patch(name, &params(), &Patch::Apply(obj)).await {
        Ok(_) => panic!("accepted: {obj}"),
        Err(kube::Error::Api(e)) => e.message,
        Err(e) => panic!("not an API refusal: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistaken_resources_are_refused_with_a_message_naming_the_field() {
    let Some(h) = Harness::apiserver("refusals").await else { return };
    let domains: Api<CommunicationsDomain> = Api::namespaced(h.client.clone(), &h.ns);
    let d = |spec| domain("corp", spec);
    let set = |path: &'static str, v: Value| spec(move |s| s[path] = v);
    // (what is wrong, the resource, words the message must contain)
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        ("no users", d(set("users", json!(0))), vec!["spec.users", "greater than or equal to 1"]),
        ("negative users", d(set("users", json!(-5))), vec!["spec.users", "greater than or equal to 1"]),
        ("absurd users", d(set("users", json!(2_000_000_000))), vec!["spec.users", "less than or equal to 1000000"]),
        ("users as text", d(set("users", json!("many"))), vec!["spec.users", "expected numeric"]),
        (
            "upper-case SIP domain",
            d(set("sipDomain", json!("Example.Test"))),
            vec!["spec.sipDomain", "lowercase DNS name"],
        ),
        (
            "SIP domain with a scheme",
            d(set("sipDomain", json!("sip:example.test"))),
            vec!["spec.sipDomain", "lowercase DNS name"],
        ),
        ("SIP domain too short", d(set("sipDomain", json!("ab"))), vec!["spec.sipDomain"]),
        ("unknown field", d(set("tier", json!("huge"))), vec!["spec.tier", "not declared in schema"]),
        ("unknown topology", d(set("topology", json!("sideways"))), vec!["spec.topology", "auto", "manual"]),
        (
            "manual topology with homeServers",
            d(spec(|s| {
                s["topology"] = json!("manual");
                s["homeServers"] = json!(3);
            })),
            vec!["homeServers, homeServer and frontEnd", "topology: auto"],
        ),
        (
            "manual topology with Home Server resources",
            d(spec(|s| {
                s["topology"] = json!("manual");
                s["homeServer"] = json!({"resources": {"requests": {"cpu": "200m"}}});
            })),
            vec!["homeServers, homeServer and frontEnd", "topology: auto"],
        ),
        (
            "too few Home Servers for the users",
            d(spec(|s| {
                s["users"] = json!(25_000);
                s["homeServers"] = json!(1);
            })),
            vec!["homeServers is too small", "10,000 users"],
        ),
        ("zero Home Servers", d(set("homeServers", json!(0))), vec!["spec.homeServers", "greater than or equal to 1"]),
        ("zero Front-End replicas", d(set("frontEnd", json!({"replicas": 0}))), vec!["spec.frontEnd.replicas"]),
        ("no directory backend", d(set("directory", json!({}))), vec!["exactly one of ldap, file or managed"]),
        (
            "two directory backends",
            d(set("directory", json!({"managed": {}, "file": {"configMap": "users"}}))),
            vec!["exactly one of ldap, file or managed"],
        ),
        (
            "LDAP URL over HTTP",
            d(ldap(|l| l["url"] = json!("http://ldap.example.test"))),
            vec!["spec.directory.ldap.url"],
        ),
        (
            "StartTLS on ldaps",
            d(ldap(|l| {
                l["url"] = json!("ldaps://ldap.example.test");
                l["startTls"] = json!(true);
            })),
            vec!["startTls upgrades an ldap:// connection"],
        ),
        (
            "CA bundle from two places",
            d(ldap(|l| l["caBundle"] = json!({"configMap": "ca", "secret": "ca"}))),
            vec!["caBundle needs exactly one of configMap or secret"],
        ),
        (
            "old and new name of the service-account Secret",
            d(ldap(|l| {
                l["passwordSecret"] = json!({"name": "a", "key": "password"});
                l["serviceAccountSecretRef"] = json!({"name": "b", "key": "password"});
            })),
            vec!["set only serviceAccountSecretRef"],
        ),
        (
            "Secret name with a slash",
            d(ldap(|l| l["adminSecret"] = json!({"name": "ns/admin"}))),
            vec!["spec.directory.ldap.adminSecret.name"],
        ),
        (
            "two issuers",
            d(set("tls", json!({"issuerRef": {"name": "a"}, "certManagerIssuer": {"name": "b"}}))),
            vec!["set only issuerRef"],
        ),
        (
            "unknown issuer kind",
            d(set("tls", json!({"issuerRef": {"name": "a", "kind": "Vault"}}))),
            vec!["spec.tls.issuerRef.kind", "Issuer"],
        ),
        (
            "additional domain that is not a domain",
            d(set("additionalDomains", json!([{"sipDomain": "not a domain", "baseDn": "dc=x"}]))),
            vec!["spec.additionalDomains[0].sipDomain"],
        ),
        ("name longer than 40", domain(&"c".repeat(41), spec(|_| {})), vec!["at most 40 characters"]),
    ];
    let count = cases.len();
    let mut unclear = Vec::new();
    for (what, obj, words) in cases {
        let message = refusal(&domains, &obj).await;
        if let Some(w) = words.iter().find(|w| !message.contains(**w)) {
            unclear.push(format!("{what}: the refusal does not say {w:?}: {message}"));
        }
    }
    assert!(unclear.is_empty(), "{}", unclear.join("\n"));

    // Immutable fields: a change to an existing resource is refused.
    let created = domain("corp", spec(|_| {}));
    domains.create(&PostParams::default(), &serde_json::from_value(created.clone()).unwrap()).await.unwrap();
    let moved = domain("corp", set("sipDomain", json!("other.test")));
    let message = refusal(&domains, &moved).await;
    assert!(message.contains("sipDomain is immutable"), "{message}");

    let homes: Api<HomeServer> = Api::namespaced(h.client.clone(), &h.ns);
    let hs = |domain: &str, capacity: i64| {
        json!({"apiVersion": "parley.dev/v1alpha1", "kind": "HomeServer", "metadata": {"name": "corp-home-9"},
               "spec": {"domain": domain, "capacity": capacity}})
    };
    let message = refusal(&homes, &hs("corp", 0)).await;
    assert!(message.contains("spec.capacity"), "{message}");
    homes.create(&PostParams::default(), &serde_json::from_value(hs("corp", 100)).unwrap()).await.unwrap();
    let message = refusal(&homes, &hs("other", 100)).await;
    assert!(message.contains("immutable"), "{message}");

    let fronts: Api<FrontEnd> = Api::namespaced(h.client.clone(), &h.ns);
    let fe = json!({"apiVersion": "parley.dev/v1alpha1", "kind": "FrontEnd", "metadata": {"name": "corp-fe"},
                    "spec": {"domain": "corp", "ports": {"sip": 5060, "sipTls": 5060}}});
    let message = refusal(&fronts, &fe).await;
    assert!(message.contains("sip") && message.contains("sipTls"), "{message}");
    println!("{} mistaken resources refused by the API server", count + 4);
    h.finish().await;
}
