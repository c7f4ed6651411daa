//! A new server image rolls through a domain in order: the Front-End first, then the Home Servers
//! one at a time, each only once the one before runs the new image and is ready; the domain's
//! status says where the rollout stands.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::Api;
use parley_operator::crd::{CommunicationsDomain, HomeServer};

use super::converged;
use crate::support::Harness;

const NEW: &str = "parley-server:next";

fn image_of(template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> Option<String> {
    template?.spec.as_ref()?.containers.first()?.image.clone()
}

fn sts_rolled(s: &StatefulSet) -> bool {
    let st = s.status.clone().unwrap_or_default();
    image_of(s.spec.as_ref().map(|s| &s.template)).as_deref() == Some(NEW)
        && st.observed_generation >= s.metadata.generation
        && st.ready_replicas.unwrap_or(0) >= 1
        && st.updated_replicas.unwrap_or(0) >= 1
}

/// What the scenario saw, in order: each server as it got the new image, with whether every
/// server before it had already rolled and was ready; and the domain's rollout reports.
#[derive(Default)]
struct Seen {
    order: Vec<(String, bool)>,
    reports: Vec<String>,
    waiting_for_turn: bool,
}

async fn watch(
    h: (Api<Deployment>, Api<StatefulSet>, Api<HomeServer>, Api<CommunicationsDomain>),
    seen: Arc<Mutex<Seen>>,
) {
    let (deploys, sets, homes, domains) = h;
    let names = ["corp-home-1", "corp-home-2", "corp-home-3"];
    loop {
        let fe = deploys.get_opt("corp-frontend").await.ok().flatten();
        let fe_new =
            fe.as_ref().is_some_and(|d| image_of(d.spec.as_ref().map(|s| &s.template)).as_deref() == Some(NEW));
        let fe_rolled = fe.as_ref().is_some_and(|d| {
            let st = d.status.clone().unwrap_or_default();
            fe_new
                && st.observed_generation >= d.metadata.generation
                && st.updated_replicas == d.spec.as_ref().unwrap().replicas
        });
        let mut sts = Vec::new();
        for n in names {
            sts.push(sets.get_opt(n).await.ok().flatten());
        }
        {
            let mut s = seen.lock().unwrap();
            if fe_new && !s.order.iter().any(|(n, _)| n == "corp-frontend") {
                s.order.push(("corp-frontend".into(), true));
            }
            for (i, n) in names.iter().enumerate() {
                let new = sts[i]
                    .as_ref()
                    .is_some_and(|s| image_of(s.spec.as_ref().map(|s| &s.template)).as_deref() == Some(NEW));
                if new && !s.order.iter().any(|(m, _)| m == n) {
                    let before_rolled = fe_rolled && sts[..i].iter().all(|p| p.as_ref().is_some_and(sts_rolled));
                    s.order.push((n.to_string(), before_rolled));
                }
            }
        }
        if let Ok(Some(hs)) = homes.get_opt("corp-home-3").await {
            let waiting = hs
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .any(|c| c.type_ == "UpToDate" && c.reason == "WaitingForTurn");
            seen.lock().unwrap().waiting_for_turn |= waiting;
        }
        if let Ok(Some(d)) = domains.get_opt("corp").await
            && let Some(r) = d.status.and_then(|s| s.rollout)
        {
            let mut s = seen.lock().unwrap();
            if s.reports.last() != Some(&r) {
                s.reports.push(r);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn a_new_image_rolls_the_front_end_first_then_each_home_server_in_turn(h: &Harness) {
    if !h.pods_become_ready {
        eprintln!("skipped on a cluster: the test image does not run there, so no pod would become ready with it");
        return;
    }
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 25_000).await;
    converged(h, "corp").await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let watcher = tokio::spawn(watch((h.api(), h.api(), h.api(), h.api()), seen.clone()));

    h.patch_domain("corp", serde_json::json!({"image": NEW})).await;
    h.wait_for::<CommunicationsDomain, _>("the rollout finished", "corp", |d| {
        d.status.as_ref().is_some_and(|s| {
            s.rollout.is_none()
                && s.phase.as_deref() == Some("Ready")
                && s.resolved.as_ref().is_some_and(|r| r.image == NEW && Some(r.generation) == d.metadata.generation)
        })
    })
    .await;
    for n in ["corp-home-1", "corp-home-2", "corp-home-3"] {
        h.wait_for::<StatefulSet, _>(&format!("{n} on the new image"), n, sts_rolled).await;
    }
    // The watcher polls: let it see the last server roll too (on a busy machine its last look
    // may have come just before), then stop it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().order.len() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let order: Vec<&str> = seen.order.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(order, ["corp-frontend", "corp-home-1", "corp-home-2", "corp-home-3"], "{:?}", seen.order);
    for (n, before_rolled) in &seen.order {
        assert!(before_rolled, "{n} got the new image before the servers before it had rolled: {:?}", seen.order);
    }
    assert!(seen.waiting_for_turn, "corp-home-3 said it waited for its turn");
    assert!(
        seen.reports.iter().any(|r| r.starts_with("rolling out generation") && r.contains("now corp-home-")),
        "the domain's status told where the rollout stood: {:?}",
        seen.reports
    );
    op.stop().await.unwrap();
}

/// `kubectl drain` of a node running a Home Server: its PodDisruptionBudget refuses the eviction,
/// and the operator restarts the pod itself (elsewhere) once the domain's other servers run.
pub async fn a_home_server_on_a_drained_node_is_restarted_by_the_operator(h: &Harness) {
    use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
    use kube::api::{ObjectMeta, PostParams};
    if h.is_double() || !h.pods_become_ready {
        eprintln!(
            "skipped: needs a real API server whose pods the test binds to a node (the double has no binding subresource; a real cluster's drain is `make e2e`'s)"
        );
        return;
    }
    h.create_users_config_map().await;
    let op = h.start_operator("op-a");
    h.apply_domain("corp", 25_000).await;
    converged(h, "corp").await;
    // A cordoned node, as `kubectl drain` leaves it, with corp-home-2's pod on it.
    let node_name = format!("drained-{}", h.ns);
    let node = Node {
        metadata: ObjectMeta { name: Some(node_name.clone()), ..Default::default() },
        spec: Some(k8s_openapi::api::core::v1::NodeSpec { unschedulable: Some(true), ..Default::default() }),
        ..Default::default()
    };
    let nodes: Api<Node> = Api::all(h.client.clone());
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let pods: Api<Pod> = h.api();
    let before = h.wait_for::<Pod, _>("corp-home-2's pod", "corp-home-2-0", |_| true).await;
    let binding = Binding {
        metadata: ObjectMeta { name: Some("corp-home-2-0".into()), ..Default::default() },
        target: ObjectReference { kind: Some("Node".into()), name: Some(node_name.clone()), ..Default::default() },
    };
    let _: serde_json::Value =
        pods.create_subresource("binding", "corp-home-2-0", &PostParams::default(), &binding).await.unwrap();
    // The operator notices within its status poll, deletes the pod (gracefully: without a kubelet
    // on that node the deletion stays pending here; on a cluster the StatefulSet recreates it on
    // another node), and says so.
    h.wait_for::<Pod, _>("corp-home-2's pod deleted off the cordoned node", "corp-home-2-0", |p| {
        p.metadata.uid != before.metadata.uid || p.metadata.deletion_timestamp.is_some()
    })
    .await;
    // (The Event follows the deletion.)
    h.wait_for_list::<k8s_openapi::api::events::v1::Event, _>("an Event saying why the pod restarted", |events| {
        events.iter().any(|e| {
            e.reason.as_deref() == Some("MovingOffNode") && e.note.as_deref().is_some_and(|n| n.contains(&node_name))
        })
    })
    .await;
    for other in ["corp-home-1-0", "corp-home-3-0"] {
        assert!(pods.get(other).await.unwrap().metadata.deletion_timestamp.is_none(), "{other} was left alone");
    }
    nodes.delete(&node_name, &Default::default()).await.unwrap();
    op.stop().await.unwrap();
}
