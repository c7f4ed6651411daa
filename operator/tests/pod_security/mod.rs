//! Every pod the operator describes (Home Server, Front-End, managed directory, each prep Job)
//! is admitted by the real API server in a namespace that enforces the "restricted" Pod Security
//! Standard. The builders' pod templates are created as Pods with a server-side dry run, which runs
//! the PodSecurity admission plugin and stores nothing; a pod that breaks the standard first shows
//! that the namespace really enforces it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Namespace, PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, Volume,
};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use parley_operator::build::{self, BuildContext, Owner, config::HomeServerRoute, directory, prep};
use parley_operator::crd::{CommunicationsDomain, FrontEnd, HomeServer};
use serde_json::json;

use crate::support::{Harness, eventually};

fn with_meta<K: serde::de::DeserializeOwned>(kind: &str, name: &str, ns: &str, spec: serde_json::Value) -> K {
    serde_json::from_value(json!({
        "apiVersion": "parley.dev/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "generation": 1},
        "spec": spec,
    }))
    .expect("a valid resource")
}

/// `template` as the Pod its controller would create: claim templates become the volumes the
/// StatefulSet controller adds.
fn pod(name: &str, template: &PodTemplateSpec, claims: &[String]) -> Pod {
    let mut spec = template.spec.clone().expect("a pod spec");
    for claim in claims {
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: claim.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{claim}-{name}"),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    }
}

fn claim_names(sts: &k8s_openapi::api::apps::v1::StatefulSet) -> Vec<String> {
    sts.spec
        .iter()
        .flat_map(|s| s.volume_claim_templates.iter().flatten())
        .filter_map(|c| c.metadata.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_the_operator_describes_is_admitted_under_enforce_restricted() {
    let Some(h) = Harness::apiserver("restricted_pod_security").await else { return };
    let labels = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(h.client.clone())
        .patch(&h.ns, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .expect("label the namespace");
    let pods: Api<Pod> = h.api();
    let dry_run = PostParams { dry_run: true, ..Default::default() };

    // The namespace enforces: a plain pod (root allowed, privilege escalation, no seccomp) is refused.
    let plain = Pod {
        metadata: ObjectMeta { name: Some("plain".into()), ..Default::default() },
        spec: Some(PodSpec {
            containers: vec![Container { name: "c".into(), image: Some("busybox".into()), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    };
    // The admission plugin reads the namespace from its cache, which may see the label a moment
    // after the patch returns (a plain pod was admitted once in `make test`): wait until it does.
    let what = "a plain pod refused under restricted";
    let refused = eventually(what, h.timeout, || async { pods.create(&dry_run, &plain).await.err() }).await;
    assert!(refused.to_string().contains("violates PodSecurity"), "{refused}");

    // The enterprise tier with a managed directory: every kind of pod there is.
    let domain: CommunicationsDomain = with_meta(
        "CommunicationsDomain",
        "corp",
        &h.ns,
        json!({"sipDomain": "example.test", "users": 25_000, "directory": {"managed": {}}, "additionalDomains": [{"sipDomain": "partner.test", "baseDn": "dc=partner,dc=test"}]}),
    );
    let sizing = parley_operator::tiers::resolve(25_000);
    let (hs, fe) = (vec!["corp-home-1".to_string()], vec!["corp-frontend".to_string()]);
    let resolved = build::resolve::resolve(
        &domain,
        &build::resolve::ResolveInput {
            sizing: &sizing,
            default_image: "local/parley-server:test",
            cluster_domain: "cluster.local",
            home_servers: &hs,
            capacities: &BTreeMap::new(),
            front_ends: &fe,
            advertised: &BTreeMap::new(),
        },
    )
    .expect("resolved");
    let ctx = BuildContext { resolved: &resolved, cluster_domain: "cluster.local" };
    let owner = Owner::of(&domain, "CommunicationsDomain").unwrap();

    let mut candidates: Vec<(String, Pod)> = Vec::new();
    let home: HomeServer = with_meta("HomeServer", "corp-home-1", &h.ns, json!({"domain": "corp"}));
    let o = build::home_server::build(&home, &ctx).expect("Home Server objects");
    let sts = o.stateful_set;
    candidates
        .push(("Home Server".into(), pod("corp-home-1-0", &sts.spec.as_ref().unwrap().template, &claim_names(&sts))));
    let front: FrontEnd = with_meta("FrontEnd", "corp-frontend", &h.ns, json!({"domain": "corp"}));
    let routes =
        [HomeServerRoute { name: "corp-home-1".into(), address: "corp-home-1.ns.svc.cluster.local:5062".into() }];
    let o = build::front_end::build(&front, &ctx, &routes).expect("Front-End objects");
    candidates.push(("Front-End".into(), pod("corp-frontend-x", &o.deployment.spec.as_ref().unwrap().template, &[])));
    let input = directory::DirectoryInput {
        owner: &owner,
        domain: &resolved,
        image: "local/parley-directory:test",
        tls_hash: None,
    };
    let sts = directory::build(&input).expect("directory objects").stateful_set;
    candidates.push((
        "managed directory".into(),
        pod("corp-directory-0", &sts.spec.as_ref().unwrap().template, &claim_names(&sts)),
    ));
    for step in prep::steps(&resolved) {
        let job = prep::job(&owner, &resolved, &step).expect("prep Job");
        let name = job.metadata.name.clone().unwrap();
        candidates.push((format!("Job {name}"), pod(&format!("{name}-x"), &job.spec.as_ref().unwrap().template, &[])));
    }
    let drain = build::drain::job(&Owner::of(&home, "HomeServer").unwrap(), "corp", &resolved).expect("drain Job");
    candidates.push(("drain Job".into(), pod("corp-home-1-drain-x", &drain.spec.as_ref().unwrap().template, &[])));
    assert_eq!(candidates.len(), 3 + 4 + 1, "Home Server, Front-End, directory, four prep Jobs and a drain Job");

    for (what, pod) in &candidates {
        if let Err(e) = pods.create(&dry_run, pod).await {
            panic!("the {what} pod is refused under enforce=restricted: {e}");
        }
    }
    println!("{} pod templates admitted under pod-security.kubernetes.io/enforce=restricted", candidates.len());
    h.finish().await;
}
