//! The domain's certificates as the operator writes them to the API server.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use parley_operator::build::certificates::{self as certs, Ca, keys};
use parley_operator::crd::CommunicationsDomain;

use crate::support::Harness;

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> String {
    String::from_utf8(data[key].0.clone()).unwrap()
}

fn certificates_ready(d: &CommunicationsDomain) -> bool {
    d.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "CertificatesReady" && c.status == "True"))
}

pub async fn certificate_secrets_chain_to_the_domain_ca(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 25_000).await;
    let d = h.wait_for::<CommunicationsDomain, _>("CertificatesReady", "corp", certificates_ready).await;
    let cond = d.status.unwrap().conditions.into_iter().find(|c| c.type_ == "CertificatesReady").unwrap();
    assert!(cond.message.contains("4 certificate(s) valid; the earliest expires at"), "{}", cond.message);

    let ca_secret = h.wait_for::<Secret, _>("CA Secret", "corp-ca", |_| true).await;
    let ca = Ca::from_secret_data(ca_secret.data.as_ref().unwrap()).expect("a usable CA");
    for (server, pod) in [("corp-home-1", true), ("corp-home-3", true), ("corp-frontend", false)] {
        let s = h.wait_for::<Secret, _>("server Secret", &format!("{server}-tls"), |_| true).await;
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = s.data.unwrap();
        let leaf = certs::parse_pem(&text(&data, keys::TLS_CRT)).unwrap().remove(0);
        assert!(ca.signed(&leaf), "{server} chains to the domain's CA");
        assert_eq!(text(&data, keys::CA_CRT), ca.trust_bundle());
        let fqdn = format!("{server}.{}.svc.cluster.local", h.ns);
        assert!(leaf.sans.contains(&fqdn) && leaf.sans.contains("example.test"), "{server}: {:?}", leaf.sans);
        let pod_name = format!("{server}-0.{server}.{}.svc.cluster.local", h.ns);
        assert_eq!(leaf.sans.contains(&pod_name), pod, "{server}: {:?}", leaf.sans);
        let client_service = format!("{server}-sip.{}.svc.cluster.local", h.ns);
        assert_eq!(leaf.sans.contains(&client_service), pod, "a Home Server's client Service: {:?}", leaf.sans);
    }
    h.assert_no_secret_value_leaked().await;
    op.stop().await.unwrap();
}

pub async fn a_certificate_near_expiry_is_renewed(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 500).await;
    h.wait_for::<CommunicationsDomain, _>("CertificatesReady", "corp", certificates_ready).await;
    let secrets = h.api::<Secret>();
    let ca_secret = h.wait_for::<Secret, _>("CA Secret", "corp-ca", |_| true).await;
    let ca = Ca::from_secret_data(ca_secret.data.as_ref().unwrap()).unwrap();
    let live = h.wait_for::<Secret, _>("server Secret", "corp-home-1-tls", |_| true).await;
    let data = live.data.clone().unwrap();
    let sans: Vec<String> = certs::parse_pem(&text(&data, keys::TLS_CRT)).unwrap()[0].sans.iter().cloned().collect();

    // The same certificate as if issued 61 of its 90 days ago: past two thirds of its lifetime.
    let then = Timestamp::from_second(Timestamp::now().as_second() - 61 * 24 * 3600).unwrap();
    let old = ca.issue("corp-home-1", &sans, then).unwrap();
    let mut aged = live.clone();
    aged.metadata.managed_fields = None;
    let mut aged_data = data.clone();
    aged_data.insert(keys::TLS_CRT.into(), ByteString(old.cert_pem.clone().into_bytes()));
    aged_data.insert(keys::TLS_KEY.into(), ByteString(old.key_pem.into_bytes()));
    aged.data = Some(aged_data);
    secrets.replace("corp-home-1-tls", &Default::default(), &aged).await.unwrap();
    // The domain does not watch Secrets: a change of the domain makes it look.
    h.patch_domain("corp", serde_json::json!({"users": 501})).await;

    let renewed = h
        .wait_for::<Secret, _>("a renewed certificate", "corp-home-1-tls", |s| {
            s.data.as_ref().is_some_and(|d| text(d, keys::TLS_CRT) != old.cert_pem)
        })
        .await;
    let leaf = certs::parse_pem(&text(renewed.data.as_ref().unwrap(), keys::TLS_CRT)).unwrap().remove(0);
    assert!(ca.signed(&leaf));
    assert!(leaf.not_after.as_second() > Timestamp::now().as_second() + 80 * 24 * 3600, "a fresh 90-day certificate");
    h.assert_no_secret_value_leaked().await;
    op.stop().await.unwrap();
}

pub async fn a_certificate_the_administrator_provides_is_left_alone(h: &Harness) {
    h.create_users_config_map().await;
    let mut theirs = Secret {
        metadata: kube::api::ObjectMeta { name: Some("corp-home-1-tls".into()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        ..Default::default()
    };
    let other = Ca::generate("elsewhere", Timestamp::now()).unwrap();
    let leaf = other.issue("corp-home-1", &["corp-home-1".to_string()], Timestamp::now()).unwrap();
    theirs.data = Some(BTreeMap::from([
        (keys::TLS_CRT.to_string(), ByteString(leaf.cert_pem.clone().into_bytes())),
        (keys::TLS_KEY.to_string(), ByteString(leaf.key_pem.into_bytes())),
    ]));
    h.api::<Secret>().create(&Default::default(), &theirs).await.unwrap();
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 500).await;
    h.wait_for::<CommunicationsDomain, _>("CertificatesReady", "corp", certificates_ready).await;
    let s = h.api::<Secret>().get("corp-home-1-tls").await.unwrap();
    assert_eq!(text(s.data.as_ref().unwrap(), keys::TLS_CRT), leaf.cert_pem, "not replaced");
    assert!(s.metadata.owner_references.is_none());
    op.stop().await.unwrap();
}

/// A stand-in for cert-manager's `Certificate` CRD: its name, group and version, any spec.
fn cert_manager_crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "certificates.cert-manager.io"},
        "spec": {"group": "cert-manager.io", "scope": "Namespaced",
                 "names": {"plural": "certificates", "singular": "certificate", "kind": "Certificate", "listKind": "CertificateList"},
                 "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))
    .unwrap()
}

fn certificates_condition(d: &CommunicationsDomain) -> Option<(String, String, String)> {
    let c = d.status.as_ref()?.conditions.iter().find(|c| c.type_ == "CertificatesReady")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub async fn with_an_issuer_cert_manager_certificates_fill_the_secrets(h: &Harness) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, DynamicObject, Patch, PatchParams};
    let crds: Api<CustomResourceDefinition> = Api::all(h.client.clone());
    let installed = crds.get_opt("certificates.cert-manager.io").await.unwrap().is_some();
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    // The issuer is there from the start: the operator never makes a CA of its own.
    let domain = serde_json::json!({
        "apiVersion": "parley.dev/v1alpha1", "kind": "CommunicationsDomain", "metadata": {"name": "corp"},
        "spec": {"sipDomain": "example.test", "users": 500, "directory": {"file": {"configMap": "users"}},
                 "tls": {"issuerRef": {"name": "corp-issuer", "kind": "ClusterIssuer"}}},
    });
    h.api::<CommunicationsDomain>()
        .patch("corp", &PatchParams::apply("parley-test"), &Patch::Apply(&domain))
        .await
        .unwrap();
    if !installed {
        // Without cert-manager the condition says so in one sentence.
        let d = h
            .wait_for::<CommunicationsDomain, _>("CertManagerMissing", "corp", |d| {
                certificates_condition(d).is_some_and(|c| c.1 == "CertManagerMissing")
            })
            .await;
        let (status, _, message) = certificates_condition(&d).unwrap();
        assert_eq!(status, "False");
        assert!(message.contains("certificates.cert-manager.io/v1") && message.contains("not installed"), "{message}");
        crds.patch(
            &cert_manager_crd().metadata.name.clone().unwrap(),
            &PatchParams::apply("parley-tests"),
            &Patch::Apply(&cert_manager_crd()),
        )
        .await
        .unwrap();
        // A change of the domain makes it look again (it does not watch CRDs).
        h.patch_domain("corp", serde_json::json!({"users": 501})).await;
    }
    let ar = parley_operator::build::certificates::cert_manager_certificate_resource();
    let certificates: Api<DynamicObject> = Api::namespaced_with(h.client.clone(), &h.ns, &ar);
    let cert = crate::support::eventually("the Certificate", h.timeout, || {
        let certificates = certificates.clone();
        async move { certificates.get_opt("corp-home-1").await.ok().flatten() }
    })
    .await;
    assert_eq!(cert.data["spec"]["secretName"], "corp-home-1-tls");
    assert_eq!(cert.data["spec"]["issuerRef"]["name"], "corp-issuer");
    assert!(h.api::<Secret>().get_opt("corp-ca").await.unwrap().is_none(), "no operator CA with an issuer");
    let d = h
        .wait_for::<CommunicationsDomain, _>("waiting for cert-manager", "corp", |d| {
            certificates_condition(d).is_some_and(|c| c.1 == "WaitingForCertManager")
        })
        .await;
    assert!(certificates_condition(&d).unwrap().2.contains("Secret corp-home-1-tls does not exist yet"));

    // cert-manager fills the Secret (here: a certificate from some CA, without ca.crt).
    let issuer = Ca::generate("cert-manager", Timestamp::now()).unwrap();
    let leaf = issuer.issue("corp-home-1", &["corp-home-1".to_string()], Timestamp::now()).unwrap();
    let filled = Secret {
        metadata: kube::api::ObjectMeta { name: Some("corp-home-1-tls".into()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (keys::TLS_CRT.to_string(), ByteString(leaf.cert_pem.clone().into_bytes())),
            (keys::TLS_KEY.to_string(), ByteString(leaf.key_pem.into_bytes())),
        ])),
        ..Default::default()
    };
    h.api::<Secret>().create(&Default::default(), &filled).await.unwrap();
    h.patch_domain("corp", serde_json::json!({"users": 502})).await;
    h.wait_for::<CommunicationsDomain, _>("CertificatesReady", "corp", certificates_ready).await;
    let s = h.api::<Secret>().get("corp-home-1-tls").await.unwrap();
    assert_eq!(
        text(s.data.as_ref().unwrap(), keys::TLS_CRT),
        leaf.cert_pem,
        "the operator leaves cert-manager's Secret alone"
    );

    // Back to the operator's own CA: the Certificates are no longer built, so they go (pruned like
    // any orphan), and cert-manager's Secret, not the operator's, stays the administrator's.
    h.patch_domain("corp", serde_json::json!({"tls": {"issuerRef": null}})).await;
    crate::support::eventually("the Certificate pruned", h.timeout, || {
        let certificates = certificates.clone();
        async move { certificates.get_opt("corp-home-1").await.ok().and_then(|c| c.is_none().then_some(())) }
    })
    .await;
    assert!(h.api::<Secret>().get_opt("corp-ca").await.unwrap().is_some(), "the operator's CA took over");
    let s = h.api::<Secret>().get("corp-home-1-tls").await.unwrap();
    assert_eq!(text(s.data.as_ref().unwrap(), keys::TLS_CRT), leaf.cert_pem);
    op.stop().await.unwrap();
}
