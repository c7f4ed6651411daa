//! Scenarios, written once for both backends (the double and a real cluster).

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Resource, ResourceExt};
use parley_operator::crd::{CommunicationsDomain, FrontEnd, HomeServer};

use crate::support::Harness;

mod certificates;
mod prep;
mod rollout;
mod scaling;
pub use certificates::*;
pub use prep::*;
pub use rollout::*;
pub use scaling::*;

fn ready(conditions: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>) -> bool {
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn owner_of<K: Resource>(obj: &K) -> (String, String) {
    let o = obj.owner_references().iter().find(|o| o.controller == Some(true)).expect("controller owner reference");
    (o.kind.clone(), o.name.clone())
}

/// Checks every object a Home Server should have, sized as `(cpu, memory, data, logs)`.
async fn check_home_server(h: &Harness, name: &str, domain: &str, size: (&str, &str, &str, &str)) {
    let hs = h.wait_for::<HomeServer, _>("HomeServer", name, |_| true).await;
    assert_eq!(hs.spec.domain, domain);
    assert_eq!(owner_of(&hs), ("CommunicationsDomain".into(), domain.into()));
    let sts = h.wait_for::<StatefulSet, _>("StatefulSet", name, |_| true).await;
    assert_eq!(owner_of(&sts), ("HomeServer".into(), name.into()));
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    let r = c.resources.as_ref().unwrap();
    assert_eq!(r.limits.as_ref().unwrap()["cpu"].0, size.0);
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, size.1);
    let claims = spec.volume_claim_templates.as_ref().unwrap();
    let storage = |i: usize| {
        claims[i].spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0.clone()
    };
    assert_eq!((storage(0), storage(1)), (size.2.to_string(), size.3.to_string()));
    assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
    assert_eq!(c.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
    let svc = h.wait_for::<Service, _>("Service", name, |_| true).await;
    assert_eq!(svc.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
    assert_eq!(owner_of(&svc).1, name);
    let cm = h.wait_for::<ConfigMap, _>("ConfigMap", &format!("{name}-config"), |_| true).await;
    let config = &cm.data.as_ref().unwrap()["parley.toml"];
    assert!(config.contains(&format!("server_name = \"{name}\"")), "{config}");
    let pdb = h.wait_for::<PodDisruptionBudget, _>("PodDisruptionBudget", name, |_| true).await;
    assert_eq!(owner_of(&pdb).1, name);
}

pub async fn small_domain(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 500).await;
    check_home_server(h, "corp-home-1", "corp", ("1", "512Mi", "20Gi", "1Gi")).await;
    let d = h
        .wait_for::<CommunicationsDomain, _>("domain status", "corp", |d| {
            d.status.as_ref().is_some_and(|s| s.tier.is_some() && s.observed_generation == d.metadata.generation)
        })
        .await;
    let st = d.status.unwrap();
    assert_eq!(st.tier, Some(parley_operator::tiers::Tier::Small));
    assert_eq!(st.home_servers, vec!["corp-home-1"]);
    assert_eq!(st.front_end, None);
    assert!(h.names::<FrontEnd>().await.is_empty());
    assert!(h.names::<Deployment>().await.is_empty());
    if h.pods_become_ready {
        h.wait_for::<CommunicationsDomain, _>("domain Ready", "corp", |d| {
            ready(d.status.as_ref().map(|s| &s.conditions))
        })
        .await;
    }
    // Its NetworkPolicies, on by default; turned off, they go.
    h.wait_for_list::<NetworkPolicy, _>("the domain's NetworkPolicies", |l| l.len() == 2).await;
    assert_eq!(h.names::<NetworkPolicy>().await, ["corp-front-ends", "corp-home-servers"]);
    h.patch_domain("corp", serde_json::json!({"networkPolicy": {"enabled": false}})).await;
    h.wait_for_list::<NetworkPolicy, _>("no NetworkPolicy once disabled", |l| l.is_empty()).await;
    op.stop().await.unwrap();
}

pub async fn standard_domain(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 5_000).await;
    check_home_server(h, "corp-home-1", "corp", ("2", "2Gi", "36Gi", "36Gi")).await;
    assert!(h.names::<FrontEnd>().await.is_empty());
    op.stop().await.unwrap();
}

pub async fn enterprise_domain(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 25_000).await;
    for n in 1..=3 {
        check_home_server(h, &format!("corp-home-{n}"), "corp", ("2", "2Gi", "36Gi", "36Gi")).await;
    }
    let fe = h.wait_for::<FrontEnd, _>("FrontEnd", "corp-frontend", |_| true).await;
    assert_eq!(fe.spec.replicas, Some(2));
    let dep = h.wait_for::<Deployment, _>("Deployment", "corp-frontend", |_| true).await;
    assert_eq!(dep.spec.as_ref().unwrap().replicas, Some(2));
    let cm = h
        .wait_for::<ConfigMap, _>("Front-End routing table", "corp-frontend-config", |cm| {
            cm.data.as_ref().is_some_and(|d| d["parley.toml"].contains("corp-home-3"))
        })
        .await;
    let config: toml::Value = toml::from_str(&cm.data.unwrap()["parley.toml"]).unwrap();
    let rows = config["frontend"]["home_servers"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["address"].as_str().unwrap(), format!("corp-home-1.{}.svc.cluster.local:5062", h.ns));
    let svc = h.wait_for::<Service, _>("Service", "corp-frontend", |_| true).await;
    let ports: Vec<_> =
        svc.spec.unwrap().ports.unwrap().iter().map(|p| (p.port, p.protocol.clone().unwrap())).collect();
    assert_eq!(
        ports,
        vec![
            (5060, "UDP".into()),
            (5060, "TCP".into()),
            (5061, "TCP".into()),
            (7443, "TCP".into()),
            (8088, "TCP".into())
        ]
    );
    h.wait_for::<PodDisruptionBudget, _>("Front-End PDB", "corp-frontend", |_| true).await;
    if h.pods_become_ready {
        let d = h
            .wait_for::<CommunicationsDomain, _>("domain Ready", "corp", |d| {
                ready(d.status.as_ref().map(|s| &s.conditions))
            })
            .await;
        assert_eq!(d.status.unwrap().front_end.as_deref(), Some("corp-frontend"));
        let fe = h
            .wait_for::<FrontEnd, _>("FrontEnd Ready", "corp-frontend", |f| {
                ready(f.status.as_ref().map(|s| &s.conditions))
            })
            .await;
        assert_eq!(fe.status.unwrap().home_servers, vec!["corp-home-1", "corp-home-2", "corp-home-3"]);
    }
    let _ = ResourceExt::name_any(&fe);
    op.stop().await.unwrap();
}

fn domain_ready(d: &CommunicationsDomain) -> bool {
    d.status.as_ref().is_some_and(|s| s.observed_generation == d.metadata.generation && ready(Some(&s.conditions)))
}

fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String)> {
    conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone()))
}

/// Waits until the domain is converged: Ready where workloads become ready (the double, the
/// control plane where the harness plays the kubelet), or its status describes the current
/// generation on a cluster (where pods may never start).
async fn converged(h: &Harness, name: &str) -> CommunicationsDomain {
    if h.pods_become_ready {
        h.wait_for::<CommunicationsDomain, _>("domain Ready", name, domain_ready).await
    } else {
        h.wait_for::<CommunicationsDomain, _>("domain status", name, |d| {
            d.status.as_ref().is_some_and(|s| s.observed_generation == d.metadata.generation)
        })
        .await
    }
}

pub async fn grow_small_to_standard(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 500).await;
    converged(h, "corp").await;
    h.patch_domain("corp", serde_json::json!({"users": 5_000})).await;
    // The pod grows at once; the claim templates cannot change, so the claims are grown instead.
    let sts = h
        .wait_for::<StatefulSet, _>("bigger pod", "corp-home-1", |s| {
            s.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
                .resources
                .as_ref()
                .unwrap()
                .limits
                .as_ref()
                .unwrap()["cpu"]
                .0
                == "2"
        })
        .await;
    let claims = sts.spec.unwrap().volume_claim_templates.unwrap();
    assert_eq!(
        claims[0].spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "20Gi"
    );
    let hs = h
        .wait_for::<HomeServer, _>("volumes condition", "corp-home-1", |hs| {
            hs.status.as_ref().is_some_and(|s| {
                condition(&s.conditions, "VolumesUpToDate").is_some_and(|c| {
                    // A real cluster's storage class may refuse to expand (kind's local-path does).
                    c.0 == "False" && (c.1 == "Expanding" || c.1 == "ExpansionRefused")
                })
            })
        })
        .await;
    let st = hs.status.unwrap();
    assert_eq!(st.tier, Some(parley_operator::tiers::Tier::Standard));
    assert_eq!(st.resolved.unwrap().data_volume.as_deref(), Some("36Gi"));
    op.stop().await.unwrap();
}

pub async fn drift_is_put_back(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 25_000).await;
    converged(h, "corp").await;

    // The domain's status can describe its generation before every child exists: wait for them.
    let before = h.wait_for::<StatefulSet, _>("StatefulSet", "corp-home-2", |_| true).await.uid();
    h.wait_for::<ConfigMap, _>("Front-End ConfigMap", "corp-frontend-config", |_| true).await;
    h.delete::<StatefulSet>("corp-home-2").await;
    h.wait_for::<StatefulSet, _>("StatefulSet restored", "corp-home-2", |s| s.uid() != before).await;

    h.delete::<ConfigMap>("corp-frontend-config").await;
    h.wait_for::<ConfigMap, _>("ConfigMap restored", "corp-frontend-config", |_| true).await;

    let before = h.wait_for::<HomeServer, _>("HomeServer", "corp-home-3", |_| true).await.uid();
    h.delete::<HomeServer>("corp-home-3").await;
    h.wait_for::<HomeServer, _>("HomeServer restored (still called for)", "corp-home-3", |hs| hs.uid() != before).await;
    h.wait_for::<StatefulSet, _>("its StatefulSet too", "corp-home-3", |_| true).await;

    // Someone edits a field the operator owns: it is put back.
    h.wait_for::<Deployment, _>("Deployment", "corp-frontend", |_| true).await;
    h.wait_for::<ConfigMap, _>("Home Server ConfigMap", "corp-home-1-config", |_| true).await;
    h.wait_for::<Service, _>("Home Server Service", "corp-home-1", |_| true).await;
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "evil:latest"}]}}}});
    h.api::<Deployment>()
        .patch("corp-frontend", &kube::api::PatchParams::default(), &kube::api::Patch::Strategic(patch))
        .await
        .unwrap();
    h.wait_for::<Deployment, _>("image put back", "corp-frontend", |d| {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.as_deref()
            == Some("parley-server:test")
    })
    .await;
    let patch = serde_json::json!({"data": {"parley.toml": "garbage"}});
    h.api::<ConfigMap>()
        .patch("corp-home-1-config", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch))
        .await
        .unwrap();
    h.wait_for::<ConfigMap, _>("config put back", "corp-home-1-config", |cm| {
        cm.data.as_ref().unwrap()["parley.toml"] != "garbage"
    })
    .await;

    // Fields the operator does not own stay: an administrator's label and a HomeServer override.
    let patch = serde_json::json!({"metadata": {"labels": {"team": "voice"}}});
    h.api::<Service>()
        .patch("corp-home-1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch))
        .await
        .unwrap();
    let patch = serde_json::json!({"spec": {"resources": {"limits": {"memory": "3Gi"}}}});
    h.api::<HomeServer>()
        .patch("corp-home-1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch))
        .await
        .unwrap();
    h.wait_for::<StatefulSet, _>("override applied", "corp-home-1", |s| {
        s.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap()["memory"]
            .0
            == "3Gi"
    })
    .await;
    converged(h, "corp").await;
    let hs = h.api::<HomeServer>().get("corp-home-1").await.unwrap();
    assert_eq!(hs.spec.resources.unwrap().limits.unwrap()["memory"].0, "3Gi", "the domain's apply keeps the override");
    assert_eq!(
        h.api::<Service>().get("corp-home-1").await.unwrap().labels().get("team").map(String::as_str),
        Some("voice")
    );
    op.stop().await.unwrap();
}

pub async fn deleting_the_domain_removes_everything(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 25_000).await;
    converged(h, "corp").await;
    h.delete::<CommunicationsDomain>("corp").await;
    h.wait_gone::<CommunicationsDomain>("corp").await;
    let api = h.client.clone();
    let ns = h.ns.clone();
    crate::support::eventually("every child gone", h.timeout, || {
        let (api, ns) = (api.clone(), ns.clone());
        async move {
            let list = |k: &'static str| {
                let api = api.clone();
                let ns = ns.clone();
                async move {
                    let lp = kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=parley-operator");
                    match k {
                        "hs" => kube::Api::<HomeServer>::namespaced(api, &ns)
                            .list(&Default::default())
                            .await
                            .map(|l| l.items.len()),
                        "fe" => kube::Api::<FrontEnd>::namespaced(api, &ns)
                            .list(&Default::default())
                            .await
                            .map(|l| l.items.len()),
                        "sts" => kube::Api::<StatefulSet>::namespaced(api, &ns).list(&lp).await.map(|l| l.items.len()),
                        "deploy" => {
                            kube::Api::<Deployment>::namespaced(api, &ns).list(&lp).await.map(|l| l.items.len())
                        }
                        "svc" => kube::Api::<Service>::namespaced(api, &ns).list(&lp).await.map(|l| l.items.len()),
                        "cm" => kube::Api::<ConfigMap>::namespaced(api, &ns).list(&lp).await.map(|l| l.items.len()),
                        _ => kube::Api::<PodDisruptionBudget>::namespaced(api, &ns)
                            .list(&lp)
                            .await
                            .map(|l| l.items.len()),
                    }
                    .unwrap_or(1)
                }
            };
            let mut left = 0;
            for k in ["hs", "fe", "sts", "deploy", "svc", "cm", "pdb"] {
                left += list(k).await;
            }
            (left == 0).then_some(())
        }
    })
    .await;
    op.stop().await.unwrap();
}

pub async fn paused_domain_is_left_alone(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 5_000).await;
    converged(h, "corp").await;
    h.patch_domain("corp", serde_json::json!({"paused": true})).await;
    let d = h
        .wait_for::<CommunicationsDomain, _>("Paused condition", "corp", |d| {
            d.status.as_ref().is_some_and(|s| condition(&s.conditions, "Paused").is_some_and(|c| c.0 == "True"))
        })
        .await;
    assert_eq!(condition(&d.status.unwrap().conditions, "Paused").unwrap().1, "Paused");
    h.wait_for::<HomeServer, _>("HomeServer paused too", "corp-home-1", |hs| {
        hs.status.as_ref().is_some_and(|s| condition(&s.conditions, "Paused").is_some_and(|c| c.0 == "True"))
    })
    .await;

    // The StatefulSet's deletion wakes the HomeServer's controller, the new user count the
    // domain's: once reconciles begun after these writes have finished, nothing was restored.
    let (hs_begun, d_begun) = (op.metrics.started("HomeServer"), op.metrics.started("CommunicationsDomain"));
    h.delete::<StatefulSet>("corp-home-1").await;
    h.patch_domain("corp", serde_json::json!({"users": 25_000})).await;
    crate::support::eventually("reconciles after the changes", h.timeout, || async {
        (op.metrics.reconciles("HomeServer") > hs_begun && op.metrics.reconciles("CommunicationsDomain") > d_begun)
            .then_some(())
    })
    .await;
    op.drain("HomeServer", h.timeout).await;
    op.drain("CommunicationsDomain", h.timeout).await;
    assert!(
        h.api::<StatefulSet>().get_opt("corp-home-1").await.unwrap().is_none(),
        "a paused domain's children are not restored"
    );
    assert_eq!(h.names::<HomeServer>().await, vec!["corp-home-1"], "a paused domain is not scaled");

    h.patch_domain("corp", serde_json::json!({"paused": false})).await;
    h.wait_for::<StatefulSet, _>("restored after resuming", "corp-home-1", |_| true).await;
    h.wait_for::<HomeServer, _>("scaled after resuming", "corp-home-3", |_| true).await;
    op.stop().await.unwrap();
}

/// For everything in the namespace, when the operator last changed it: its managedFields times
/// on a real cluster (where kube-controller-manager also writes the workloads' status), its
/// resourceVersion on the double (where nothing else writes).
async fn versions(h: &Harness) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let stamp = |o: &kube::api::ObjectMeta| {
        if h.is_double() {
            return o.resource_version.clone().unwrap_or_default();
        }
        let times: Vec<String> = o
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == Some("parley-operator"))
            .map(|m| format!("{:?}@{:?}", m.operation, m.time.as_ref().map(|t| t.0.to_string())))
            .collect();
        times.join(",")
    };
    macro_rules! collect {
        ($($k:ty),*) => {$(
            for o in h.api::<$k>().list(&Default::default()).await.unwrap() {
                out.push((format!("{}/{}", <$k as kube::Resource>::kind(&()), o.name_any()), stamp(&o.metadata)));
            }
        )*};
    }
    collect!(
        CommunicationsDomain,
        HomeServer,
        FrontEnd,
        StatefulSet,
        Deployment,
        Service,
        ConfigMap,
        PodDisruptionBudget
    );
    out.sort();
    out
}

pub async fn steady_state_writes_nothing(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 25_000).await;
    // Ready needs the workloads to have been observed unchanged: an operator that rewrote them on
    // every reconcile would never get there.
    converged(h, "corp").await;
    for kind in ["CommunicationsDomain", "HomeServer", "FrontEnd"] {
        op.drain(kind, h.timeout).await;
    }
    let before = versions(h).await;
    let since = h.requests_so_far();
    let begun = |kind: &str| op.metrics.started(kind);
    let (domains, home_servers, front_ends) = (begun("CommunicationsDomain"), begun("HomeServer"), begun("FrontEnd"));
    // A change elsewhere wakes every controller (the domain's children watch it) ...
    let annotate = serde_json::json!({"metadata": {"annotations": {"example.test/touched": "yes"}}});
    h.api::<CommunicationsDomain>()
        .patch("corp", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(annotate))
        .await
        .unwrap();
    crate::support::eventually("a reconcile of each resource after the touch", h.timeout, || async {
        (op.metrics.reconciles("CommunicationsDomain") > domains
            && op.metrics.reconciles("HomeServer") >= home_servers + 3
            && op.metrics.reconciles("FrontEnd") > front_ends)
            .then_some(())
    })
    .await;
    for kind in ["CommunicationsDomain", "HomeServer", "FrontEnd"] {
        op.drain(kind, h.timeout).await;
    }
    // ... and converged reconciles write nothing: no apply, no status, no Event.
    // Lease renewals are leader election, not reconciling.
    let writes: Vec<_> = h.writes_by("op-a", since).into_iter().filter(|w| !w.path.contains("/leases/")).collect();
    assert!(writes.is_empty(), "steady-state writes: {writes:#?}");
    let after = versions(h).await;
    let changed: Vec<_> =
        before.iter().zip(&after).filter(|(a, b)| a != b && !a.0.starts_with("CommunicationsDomain/")).collect();
    assert!(changed.is_empty() && before.len() == after.len(), "objects rewritten: {changed:?}");
    op.stop().await.unwrap();
}

pub async fn two_operators_one_leader(h: &Harness) {
    h.create_users_config_map().await;
    let a = h.start_operator("op-a");
    let b = h.start_operator("op-b");
    let lease_holder = || async {
        let lease = h.api::<k8s_openapi::api::coordination::v1::Lease>().get_opt("parley-operator").await.ok()??;
        lease.spec?.holder_identity.filter(|s| !s.is_empty())
    };
    let leader = crate::support::eventually("a leader", h.timeout, lease_holder).await;
    h.apply_domain("corp", 5_000).await;
    converged(h, "corp").await;
    let (leading, standing_by) = if leader == "op-a" { (a, b) } else { (b, a) };
    assert!(leading.is_leader() && !standing_by.is_leader());
    assert_eq!(standing_by.metrics.reconciles("CommunicationsDomain"), 0, "the standby does not reconcile");
    let writes = h.writes_by(&standing_by.identity, 0);
    assert!(writes.iter().all(|w| w.path.contains("/leases")), "the standby wrote: {writes:#?}");

    // The leader steps down (graceful shutdown releases the Lease); the standby takes over.
    let standby_name = standing_by.identity.clone();
    leading.stop().await.unwrap();
    crate::support::eventually("the standby leads", h.timeout, || async {
        (lease_holder().await.as_deref() == Some(standby_name.as_str()) && standing_by.is_leader()).then_some(())
    })
    .await;
    h.delete::<StatefulSet>("corp-home-1").await;
    h.wait_for::<StatefulSet, _>("restored by the new leader", "corp-home-1", |_| true).await;
    standing_by.stop().await.unwrap();
}

pub async fn manual_topology_only_reports(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 25_000).await;
    h.patch_domain("corp", serde_json::json!({"topology": "manual"})).await;
    // Whatever the auto topology had time to create stays; wait for the manual status.
    let hs = serde_json::json!({"apiVersion": "parley.dev/v1alpha1", "kind": "HomeServer", "metadata": {"name": "east"},
                                "spec": {"domain": "corp", "capacity": 9000}});
    h.api::<HomeServer>()
        .patch("east", &kube::api::PatchParams::apply("kubectl"), &kube::api::Patch::Apply(hs))
        .await
        .unwrap();
    let fe = serde_json::json!({"apiVersion": "parley.dev/v1alpha1", "kind": "FrontEnd", "metadata": {"name": "edge"},
                                "spec": {"domain": "corp", "replicas": 3, "serviceType": "LoadBalancer"}});
    h.api::<FrontEnd>()
        .patch("edge", &kube::api::PatchParams::apply("kubectl"), &kube::api::Patch::Apply(fe))
        .await
        .unwrap();
    h.wait_for::<StatefulSet, _>("the administrator's Home Server runs", "east", |_| true).await;
    let dep = h.wait_for::<Deployment, _>("the administrator's Front-End runs", "edge", |_| true).await;
    assert_eq!(dep.spec.unwrap().replicas, Some(3));
    let svc = h.wait_for::<Service, _>("Front-End Service", "edge", |_| true).await;
    assert_eq!(svc.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
    let d = h
        .wait_for::<CommunicationsDomain, _>("manual status", "corp", |d| {
            d.status.as_ref().is_some_and(|s| {
                s.observed_generation == d.metadata.generation && s.home_servers.contains(&"east".to_string())
            })
        })
        .await;
    assert!(d.status.unwrap().waiting_removal.is_empty());
    let east = h.api::<HomeServer>().get("east").await.unwrap();
    assert!(east.owner_references().is_empty(), "the operator does not adopt the administrator's resources");
    // The CRD refuses operator-owned settings with a manual topology.
    let err = h
        .api::<CommunicationsDomain>()
        .patch(
            "corp",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"homeServers": 3}})),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 422 && s.message.contains("topology: auto")));
    op.stop().await.unwrap();
}

pub async fn sip_domain_is_immutable(h: &Harness) {
    h.create_users_config_map().await;
    h.apply_domain("corp", 500).await;
    let patch = serde_json::json!({"spec": {"sipDomain": "other.test"}});
    let err = h
        .api::<CommunicationsDomain>()
        .patch("corp", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("sipDomain is immutable")),
        "{err}"
    );
    let patch = serde_json::json!({"spec": {"users": 0}});
    let err = h
        .api::<CommunicationsDomain>()
        .patch("corp", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch))
        .await
        .unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 422), "{err}");
}

pub async fn foreign_finalizer_holds_the_domain(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 500).await;
    converged(h, "corp").await;
    let hold = serde_json::json!({"metadata": {"finalizers": ["example.test/backup"]}});
    h.api::<CommunicationsDomain>()
        .patch("corp", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(hold))
        .await
        .unwrap();
    h.delete::<CommunicationsDomain>("corp").await;
    let d = h.api::<CommunicationsDomain>().get("corp").await.unwrap();
    assert!(d.metadata.deletion_timestamp.is_some());
    // A reconcile that began before the deletion may still apply the children once (the garbage
    // collector would remove them); every later one reads the domain after its deletion.
    op.drain("CommunicationsDomain", h.timeout).await;
    // While held, the operator does not recreate what goes: the HomeServer's deletion wakes the
    // domain's controller, and that reconcile leaves it gone.
    let seen = op.metrics.reconciles("CommunicationsDomain");
    h.delete::<HomeServer>("corp-home-1").await;
    crate::support::eventually("the reconcile the HomeServer's deletion started", h.timeout, || async {
        (op.metrics.reconciles("CommunicationsDomain") > seen).then_some(())
    })
    .await;
    assert!(h.api::<HomeServer>().get_opt("corp-home-1").await.unwrap().is_none());
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    h.api::<CommunicationsDomain>()
        .patch("corp", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(release))
        .await
        .unwrap();
    h.wait_gone::<CommunicationsDomain>("corp").await;
    h.wait_gone::<StatefulSet>("corp-home-1").await;
    op.stop().await.unwrap();
}

pub async fn events_mark_what_happened(h: &Harness) {
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 500).await;
    converged(h, "corp").await;
    let events = h
        .wait_for_list::<k8s_openapi::api::events::v1::Event, _>("Events", |evs| {
            evs.iter().any(|e| {
                e.reason.as_deref() == Some("Created")
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("CommunicationsDomain")
            }) && evs.iter().any(|e| {
                e.reason.as_deref() == Some("Created") && e.note.as_deref() == Some("created StatefulSet corp-home-1")
            })
        })
        .await;
    // On a real server kube-controller-manager reports too (about the StatefulSet's pods); every
    // Event about a Parley resource is ours.
    let about_parley = |e: &&k8s_openapi::api::events::v1::Event| {
        e.regarding.as_ref().and_then(|r| r.api_version.as_deref()).is_some_and(|v| v.starts_with("parley.dev/"))
    };
    assert!(events.iter().filter(about_parley).all(|e| e.reporting_controller.as_deref() == Some("parley-operator")));
    op.stop().await.unwrap();
}

pub async fn a_resource_deleted_while_reconciled_is_gone(h: &Harness) {
    use kube::api::{Patch, PatchParams};
    use kube::runtime::controller::Action;
    use parley_operator::controllers::{Context, Settings, front_end, home_server};
    use std::sync::Arc;

    h.create_users_config_map().await;
    h.apply_domain("corp", 500).await;
    // A HomeServer and a FrontEnd as a controller's cache still holds them, deleted since.
    let hs = serde_json::json!({"apiVersion": "parley.dev/v1alpha1", "kind": "HomeServer", "metadata": {"name": "east"},
                                "spec": {"domain": "corp", "capacity": 100}});
    let hs = h.api::<HomeServer>().patch("east", &PatchParams::apply("kubectl"), &Patch::Apply(hs)).await.unwrap();
    let fe = serde_json::json!({"apiVersion": "parley.dev/v1alpha1", "kind": "FrontEnd", "metadata": {"name": "edge"},
                                "spec": {"domain": "corp", "replicas": 1}});
    let fe = h.api::<FrontEnd>().patch("edge", &PatchParams::apply("kubectl"), &Patch::Apply(fe)).await.unwrap();
    h.delete::<HomeServer>("east").await;
    h.delete::<FrontEnd>("edge").await;
    h.wait_gone::<HomeServer>("east").await;
    h.wait_gone::<FrontEnd>("edge").await;

    let settings = Settings {
        default_image: "parley-server:test".into(),
        cluster_domain: "cluster.local".into(),
        directory_image: "parley-directory:test".into(),
        ..Default::default()
    };
    let ctx = Arc::new(Context::new(h.client.clone(), settings, Default::default(), "op-a"));
    let gone = Action::await_change();
    assert_eq!(home_server::reconcile(Arc::new(hs), ctx.clone()).await.expect("not a failure"), gone);
    assert_eq!(front_end::reconcile(Arc::new(fe), ctx.clone()).await.expect("not a failure"), gone);
    // What those reconciles applied names its deleted owner: the garbage collector removes it.
    h.wait_gone::<StatefulSet>("east").await;
    h.wait_gone::<Deployment>("edge").await;
}

pub async fn stopping_while_starting_releases_the_lease(h: &Harness) {
    let op = h.start_operator("op-a");
    crate::support::eventually("leadership", h.timeout, || async { op.is_leader().then_some(()) }).await;
    // At once: the controllers' caches are most likely still being filled.
    op.stop().await.expect("a prompt, clean stop");
    let lease = h.api::<k8s_openapi::api::coordination::v1::Lease>().get("parley-operator").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None, "the Lease is released");
}

pub async fn an_orphaned_object_is_removed(h: &Harness) {
    use parley_operator::build::{Component, labels};

    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 500).await;
    converged(h, "corp").await;
    let hs = h.wait_for::<HomeServer, _>("HomeServer", "corp-home-1", |_| true).await;
    // What an earlier version built for the Home Server and this one does not, and an
    // administrator's ConfigMap that merely carries the same labels.
    let leftover = |name: &str, owned: bool| ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels("corp-home-1", Component::HomeServer, "corp")),
            owner_references: owned.then(|| vec![hs.controller_owner_ref(&()).unwrap()]),
            ..Default::default()
        },
        ..Default::default()
    };
    let pp = kube::api::PostParams::default();
    h.api::<ConfigMap>().create(&pp, &leftover("corp-home-1-admin-notes", false)).await.unwrap();
    // Creating an object the HomeServer owns wakes its controller.
    h.api::<ConfigMap>().create(&pp, &leftover("corp-home-1-legacy", true)).await.unwrap();
    h.wait_gone::<ConfigMap>("corp-home-1-legacy").await;
    assert!(
        h.api::<ConfigMap>().get_opt("corp-home-1-admin-notes").await.unwrap().is_some(),
        "only objects the HomeServer controls are pruned"
    );
    assert!(h.api::<ConfigMap>().get_opt("corp-home-1-config").await.unwrap().is_some(), "what is built stays");
    h.wait_for_list::<k8s_openapi::api::events::v1::Event, _>("the Deleted Event", |evs| {
        evs.iter().any(|e| e.note.as_deref() == Some("deleted ConfigMap corp-home-1-legacy: no longer built"))
    })
    .await;
    op.stop().await.unwrap();
}

/// The domain's own objects go through the same apply path: a Secret it controls and no longer
/// makes (the certificate of a server that is gone) is deleted, a look-alike it does not control
/// stays, and what it makes (the CA, the Home Server's certificate) is kept.
pub async fn an_orphan_of_the_domain_is_removed(h: &Harness) {
    use k8s_openapi::api::core::v1::Secret;
    use parley_operator::build::{DOMAIN_LABEL, MANAGED_BY};

    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 500).await;
    converged(h, "corp").await;
    let d = h.api::<CommunicationsDomain>().get("corp").await.unwrap();
    let resolved = d.status.as_ref().and_then(|s| s.resolved.clone()).expect("status.resolved");
    assert_eq!(resolved.certificate_secret("corp-home-1"), Some("corp-home-1-tls"));
    assert_eq!(resolved.home_servers[0].name, "corp-home-1");
    let leftover = |name: &str, owned: bool| Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                [("app.kubernetes.io/managed-by", MANAGED_BY), (DOMAIN_LABEL, "corp")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: owned.then(|| vec![d.controller_owner_ref(&()).unwrap()]),
            ..Default::default()
        },
        ..Default::default()
    };
    let pp = kube::api::PostParams::default();
    h.api::<Secret>().create(&pp, &leftover("corp-gone-tls-notes", false)).await.unwrap();
    // Creating a Secret the domain controls wakes its controller (it watches Secrets).
    h.api::<Secret>().create(&pp, &leftover("corp-gone-tls", true)).await.unwrap();
    h.wait_gone::<Secret>("corp-gone-tls").await;
    for kept in ["corp-gone-tls-notes", "corp-ca", "corp-home-1-tls"] {
        assert!(h.api::<Secret>().get_opt(kept).await.unwrap().is_some(), "{kept} stays");
    }
    h.wait_for_list::<k8s_openapi::api::events::v1::Event, _>("the Deleted Event", |evs| {
        evs.iter().any(|e| e.note.as_deref() == Some("deleted Secret corp-gone-tls: no longer built"))
    })
    .await;
    op.stop().await.unwrap();
}
