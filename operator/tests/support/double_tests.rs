//! The double keeps the Kubernetes semantics the operator relies on.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use parley_operator::crd::CommunicationsDomain;
use serde_json::json;

use super::ApiServer;

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Default::default()
    }
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("not an API error: {other}"),
    }
}

fn setup() -> (ApiServer, Client, Api<ConfigMap>) {
    let api = ApiServer::new();
    let client = api.client("t");
    let cms = Api::namespaced(client.clone(), "ns");
    (api, client, cms)
}

#[tokio::test]
async fn create_get_replace_with_optimistic_concurrency() {
    let (_, _, cms) = setup();
    let a = cms.create(&PostParams::default(), &cm("a", &[("k", "1")])).await.unwrap();
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    assert_eq!(code(cms.create(&PostParams::default(), &cm("a", &[])).await.unwrap_err()), 409);
    let mut stale = a.clone();
    let mut fresh = a.clone();
    fresh.data = Some([("k".to_string(), "2".to_string())].into());
    let updated = cms.replace("a", &PostParams::default(), &fresh).await.unwrap();
    assert_ne!(updated.resource_version(), a.resource_version());
    stale.data = Some([("k".to_string(), "3".to_string())].into());
    assert_eq!(code(cms.replace("a", &PostParams::default(), &stale).await.unwrap_err()), 409, "stale resourceVersion");
    assert_eq!(cms.get("a").await.unwrap().data.unwrap()["k"], "2");
    assert_eq!(code(cms.get("missing").await.unwrap_err()), 404);
}

#[tokio::test]
async fn no_op_writes_change_nothing() {
    let (api, _, cms) = setup();
    let a = cms.create(&PostParams::default(), &cm("a", &[("k", "1")])).await.unwrap();
    let rv = api.resource_version();
    let same = cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": "1"}}))).await.unwrap();
    assert_eq!(same.resource_version(), a.resource_version());
    assert_eq!(api.resource_version(), rv);
}

#[tokio::test]
async fn watch_replays_from_a_resource_version_and_streams() {
    let (_, _, cms) = setup();
    let a = cms.create(&PostParams::default(), &cm("a", &[])).await.unwrap();
    let rv = a.resource_version().unwrap();
    cms.create(&PostParams::default(), &cm("b", &[])).await.unwrap();
    let mut stream = cms.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.name_any(), "b"),
        other => panic!("{other:?}"),
    }
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Deleted(o) => assert_eq!(o.name_any(), "a"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn watch_sends_bookmarks_and_initial_events() {
    let (_, _, cms) = setup();
    cms.create(&PostParams::default(), &cm("a", &[])).await.unwrap();
    let wp = WatchParams::default().initial_events();
    let mut stream = cms.watch(&wp, "").await.unwrap().boxed();
    assert!(matches!(stream.try_next().await.unwrap().unwrap(), WatchEvent::Added(o) if o.name_any() == "a"));
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.annotations.get("k8s.io/initial-events-end").map(String::as_str), Some("true"))
        }
        other => panic!("{other:?}"),
    }
    let next = tokio::time::timeout(Duration::from_secs(3), stream.try_next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(next, WatchEvent::Bookmark(_)), "periodic bookmark");
}

#[tokio::test]
async fn label_selector_watches_see_objects_leave_and_enter() {
    let (_, _, cms) = setup();
    let mut a = cm("a", &[]);
    a.metadata.labels = Some([("team".to_string(), "x".to_string())].into());
    let a = cms.create(&PostParams::default(), &a).await.unwrap();
    let mut stream =
        cms.watch(&WatchParams::default().labels("team=x"), &a.resource_version().unwrap()).await.unwrap().boxed();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"team": "y"}}})))
        .await
        .unwrap();
    assert!(matches!(stream.try_next().await.unwrap().unwrap(), WatchEvent::Deleted(_)));
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"team": "x"}}})))
        .await
        .unwrap();
    assert!(matches!(stream.try_next().await.unwrap().unwrap(), WatchEvent::Added(_)));
    let listed = cms.list(&kube::api::ListParams::default().labels("team!=x")).await.unwrap();
    assert!(listed.items.is_empty());
}

#[tokio::test]
async fn server_side_apply_tracks_field_managers() {
    let (_, _, cms) = setup();
    let body = |labels: serde_json::Value, data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": labels}, "data": data});
    let pa = PatchParams::apply("alpha");
    cms.patch("a", &pa, &Patch::Apply(body(json!({"x": "1", "y": "1"}), json!({"k": "a"})))).await.unwrap();
    // Another manager's field survives alpha's applies.
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"z": "1"}}}))).await.unwrap();
    // A field alpha stops applying goes away.
    let a = cms.patch("a", &pa, &Patch::Apply(body(json!({"x": "1"}), json!({"k": "a"})))).await.unwrap();
    // managedFields show who owns what, in the API server's FieldsV1 form.
    let fields = |o: &ConfigMap, manager: &str| {
        let e = o.metadata.managed_fields.iter().flatten().find(|e| e.manager.as_deref() == Some(manager)).cloned();
        e.map(|e| (e.operation.unwrap_or_default(), serde_json::to_value(e.fields_v1.unwrap()).unwrap()))
    };
    assert_eq!(
        fields(&a, "alpha"),
        Some(("Apply".into(), json!({"f:data": {"f:k": {}}, "f:metadata": {"f:labels": {"f:x": {}}}})))
    );
    let updaters = a.metadata.managed_fields.iter().flatten().filter(|e| e.operation.as_deref() == Some("Update"));
    assert_eq!(updaters.count(), 1, "the merge patch's manager owns the label it set");
    let labels = a.labels();
    assert_eq!(
        (labels.get("x"), labels.get("y"), labels.get("z")),
        (Some(&"1".to_string()), None, Some(&"1".to_string()))
    );
    // Changing alpha's field as another applier conflicts, unless forced.
    let err = cms
        .patch("a", &PatchParams::apply("beta"), &Patch::Apply(body(json!({}), json!({"k": "b"}))))
        .await
        .unwrap_err();
    assert_eq!(code(err), 409);
    // Agreeing on a value is not a conflict.
    cms.patch("a", &PatchParams::apply("beta"), &Patch::Apply(body(json!({}), json!({"k": "a"})))).await.unwrap();
    let b = cms
        .patch("a", &PatchParams::apply("beta").force(), &Patch::Apply(body(json!({}), json!({"k": "b"}))))
        .await
        .unwrap();
    assert_eq!(b.data.unwrap()["k"], "b");
    // alpha lost the field to beta, so alpha dropping it keeps beta's value.
    let a = cms.patch("a", &pa, &Patch::Apply(body(json!({"x": "1"}), json!({})))).await.unwrap();
    assert_eq!(a.data.unwrap()["k"], "b");
    // Apply needs a field manager.
    let err = cms.patch("a", &PatchParams::default(), &Patch::Apply(body(json!({}), json!({})))).await.unwrap_err();
    assert_eq!(code(err), 400);
    // An update (not an apply) takes the field from the applier.
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "2"}}}))).await.unwrap();
    let err = cms.patch("a", &pa, &Patch::Apply(body(json!({"x": "1"}), json!({})))).await.unwrap_err();
    assert_eq!(code(err), 409);
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let api = ApiServer::new();
    let client = api.client("t");
    let sts: Api<StatefulSet> = Api::namespaced(client, "ns");
    let body = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"},
        "spec": {"replicas": 1, "serviceName": "s", "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        "status": {"replicas": 5},
    });
    let s = sts.create(&PostParams::default(), &serde_json::from_value(body).unwrap()).await.unwrap();
    assert_eq!(s.metadata.generation, Some(1));
    assert!(s.status.is_none(), "status is ignored on the main resource");
    let s = sts
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 1}, "spec": {"replicas": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(s.status.unwrap().replicas, 1);
    assert_eq!(s.spec.as_ref().unwrap().replicas, Some(1), "spec is ignored on /status");
    assert_eq!(s.metadata.generation, Some(1), "status writes do not bump the generation");
    let s = sts.patch("s", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}}))).await.unwrap();
    assert_eq!(s.metadata.generation, Some(2));
    let s = sts
        .patch("s", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})))
        .await
        .unwrap();
    assert_eq!(s.metadata.generation, Some(2), "metadata changes do not bump the generation");
    // Claim templates are immutable.
    let err = sts
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "d"}}]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), 422);
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let (api, _, cms) = setup();
    let mut a = cm("a", &[]);
    a.metadata.finalizers = Some(vec!["example.test/hold".into()]);
    cms.create(&PostParams::default(), &a).await.unwrap();
    let held = cms.delete("a", &DeleteParams::default()).await.unwrap();
    let held = held.left().expect("the object comes back while it is held");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(cms.get("a").await.is_ok());
    let err = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.test/hold", "x/y"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), 422, "no new finalizers on a terminating object");
    let rv = api.resource_version();
    cms.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
    assert_eq!(code(cms.get("a").await.unwrap_err()), 404);
    assert!(api.resource_version() > rv);
}

#[tokio::test]
async fn owner_references_garbage_collect_by_uid() {
    let (_, _, cms) = setup();
    let owner = cms.create(&PostParams::default(), &cm("owner", &[])).await.unwrap();
    let owned_by = |o: &ConfigMap| json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": o.name_any(), "uid": o.uid().unwrap(), "controller": true}]);
    let mut child = cm("child", &[]);
    child.metadata.owner_references = serde_json::from_value(owned_by(&owner)).unwrap();
    let child = cms.create(&PostParams::default(), &child).await.unwrap();
    let mut grandchild = cm("grandchild", &[]);
    grandchild.metadata.owner_references = serde_json::from_value(owned_by(&child)).unwrap();
    cms.create(&PostParams::default(), &grandchild).await.unwrap();
    let mut kept = cm("kept", &[]);
    kept.metadata.owner_references = serde_json::from_value(owned_by(&owner)).unwrap();
    cms.create(&PostParams::default(), &kept).await.unwrap();

    // Orphaning keeps a dependent and drops its reference.
    let other = cms.create(&PostParams::default(), &cm("other", &[])).await.unwrap();
    let mut orphan = cm("orphan", &[]);
    orphan.metadata.owner_references = serde_json::from_value(owned_by(&other)).unwrap();
    cms.create(&PostParams::default(), &orphan).await.unwrap();
    cms.delete("other", &DeleteParams::orphan()).await.unwrap();
    assert!(cms.get("orphan").await.unwrap().metadata.owner_references.unwrap_or_default().is_empty());

    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    for gone in ["owner", "child", "grandchild", "kept"] {
        assert_eq!(code(cms.get(gone).await.unwrap_err()), 404, "{gone}");
    }
    // A dependent whose owner never existed is collected too.
    let mut stray = cm("stray", &[]);
    stray.metadata.owner_references =
        serde_json::from_value(json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "nope"}])).unwrap();
    cms.create(&PostParams::default(), &stray).await.unwrap();
    assert_eq!(code(cms.get("stray").await.unwrap_err()), 404);
}

#[tokio::test]
async fn custom_resources_follow_their_crd() {
    let api = ApiServer::new();
    let client = api.client("t");
    let domains: Api<CommunicationsDomain> = Api::namespaced(client.clone(), "ns");
    let body = |domain: &str| {
        json!({"apiVersion": "parley.dev/v1alpha1", "kind": "CommunicationsDomain", "metadata": {"name": "corp"},
               "spec": {"sipDomain": domain, "users": 500, "directory": {"file": {"configMap": "users"}}, "bogus": 1}})
    };
    // Not served before its CRD exists.
    assert_eq!(code(domains.list(&Default::default()).await.unwrap_err()), 404);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in parley_operator::crd::generate::all() {
        let created = crds.create(&PostParams::default(), &crd).await.unwrap();
        assert_eq!(created.metadata.name, crd.metadata.name);
    }
    let established = crds.get("communicationsdomains.parley.dev").await.unwrap();
    assert!(
        established.status.unwrap().conditions.unwrap().iter().any(|c| c.type_ == "Established" && c.status == "True")
    );

    let err = domains.patch("corp", &PatchParams::apply("t"), &Patch::Apply(body("Not A Domain"))).await.unwrap_err();
    assert_eq!(code(err), 422, "schema pattern");
    let d = domains.patch("corp", &PatchParams::apply("t"), &Patch::Apply(body("example.test"))).await.unwrap();
    assert_eq!(d.spec.topology, parley_operator::crd::Topology::Auto, "schema defaults");
    let raw: serde_json::Value = serde_json::to_value(&d).unwrap();
    assert!(raw["spec"].get("bogus").is_none(), "unknown fields are pruned");
    let err = domains.patch("corp", &PatchParams::apply("t"), &Patch::Apply(body("other.test"))).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(s.message.contains("sipDomain is immutable"), "{}", s.message);
        }
        other => panic!("{other}"),
    }
    let err = domains
        .patch(
            "corp",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"topology": "manual", "homeServers": 1}})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), 422, "CEL across fields");
}
