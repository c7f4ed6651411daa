//! Users scale through `spec.users`: more users add Home Servers and a Front-End; fewer drain the
//! surplus Home Servers (a Job moves their users, highest index first) and delete each only once
//! its server reports no user homed there; a drain the others cannot take stops and says why.
//!
//! The test plays what the API server alone lacks: the Job controller (prep Jobs succeed; a drain
//! Job moves the Home Server's users to `corp-home-1` on the [`StatusBoard`], then succeeds) and
//! the servers' `/status` (the board).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use parley_operator::crd::{CommunicationsDomain, FrontEnd, HomeServer};

use super::prep::{apply_ldap_domain, create_admin_secret, mark_job};
use super::{condition, converged};
use crate::support::Harness;
use crate::support::status_board::StatusBoard;

/// Plays the Job controller until aborted: prep Jobs succeed, drain Jobs move their users first.
async fn play_jobs(jobs: Api<Job>, board: StatusBoard) {
    loop {
        for job in jobs.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
            if job.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some() {
                continue;
            }
            let name = job.name_any();
            let component = job.labels().get("app.kubernetes.io/component").cloned().unwrap_or_default();
            if component == "user-drain" {
                let args = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone();
                let args = args.unwrap_or_default();
                let from = args.iter().skip_while(|a| *a != "--home-server").nth(1).expect("--home-server NAME");
                board.move_all(from, "corp-home-1");
            }
            if component == "user-drain" || component == "directory-prep" {
                let _ = mark_job(&jobs, &name, true).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running Home Server's user count reaches its status at the operator's next read of it, which
/// may come a whole `STATUS_POLL` after the count changed.
async fn users_reported(h: &Harness, hs: &str, users: u64) {
    let within = parley_operator::controllers::home_server::STATUS_POLL + h.timeout;
    h.wait_for_within::<HomeServer, _>(&format!("{hs} reporting {users} users"), hs, within, |h| {
        h.status.as_ref().is_some_and(|s| s.users == Some(users))
    })
    .await;
}

pub async fn users_scale_through_the_spec_moving_users_before_removing_servers(h: &Harness) {
    if !h.pods_become_ready {
        // On a cluster the test image does not run, so no server would report its users; `make
        // e2e` scales a domain of real servers down instead (e2e/run.sh, the scale-down phase).
        eprintln!("skipped on a cluster: its Home Servers run no server to count users");
        return;
    }
    create_admin_secret(h).await;
    let player = tokio::spawn(play_jobs(h.api::<Job>(), h.board.clone()));
    h.board.set("corp-home-1", 3_000);
    let op = h.start_operator("op-a");
    apply_ldap_domain(h, 5_000).await;
    converged(h, "corp").await;
    assert_eq!(h.names::<HomeServer>().await, vec!["corp-home-1"]);
    users_reported(h, "corp-home-1", 3_000).await;

    // 5,000 -> 25,000: a Front-End and two more Home Servers, registered with their capacity.
    h.patch_domain("corp", serde_json::json!({"users": 25_000})).await;
    h.wait_for::<FrontEnd, _>("FrontEnd after scale-up", "corp-frontend", |_| true).await;
    h.wait_for::<HomeServer, _>("third Home Server", "corp-home-3", |_| true).await;
    converged(h, "corp").await;
    // (The new capacities change corp-home-1's config: it may still be rolling for a moment.)
    h.wait_for::<CommunicationsDomain, _>("three Home Servers, Ready", "corp", |d| {
        d.status.as_ref().is_some_and(|s| s.home_server_count == Some(3) && s.phase.as_deref() == Some("Ready"))
    })
    .await;
    let job = h.api::<Job>().get("corp-prep-enterprise").await.unwrap();
    let args = job.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    assert!(args.iter().any(|a| a.starts_with("corp-home-3=") && a.contains(",capacity=8334,api=http://")), "{args:?}");
    h.board.set("corp-home-2", 1_000);
    h.board.set("corp-home-3", 1_500);
    users_reported(h, "corp-home-2", 1_000).await;
    users_reported(h, "corp-home-3", 1_500).await;

    // 25,000 -> 5,000: corp-home-3 drains into corp-home-1's 2,000 free places and goes; the
    // 1,000 users of corp-home-2 do not fit into the 500 left, so it stays and nothing is lost.
    h.patch_domain("corp", serde_json::json!({"users": 5_000})).await;
    let d = h
        .wait_for::<CommunicationsDomain, _>("scale-down blocked on corp-home-2", "corp", |d| {
            d.status.as_ref().is_some_and(|s| {
                s.observed_generation == d.metadata.generation
                    && s.home_servers == ["corp-home-1", "corp-home-2"]
                    && condition(&s.conditions, "ScaleDownBlocked").is_some_and(|c| c.0 == "True")
            })
        })
        .await;
    let st = d.status.unwrap();
    let blocked = st.conditions.iter().find(|c| c.type_ == "ScaleDownBlocked").unwrap();
    assert_eq!(blocked.reason, "NotEnoughCapacity");
    assert!(
        blocked.message.contains("corp-home-2 holds 1000 users") && blocked.message.contains("room for only 500"),
        "{}",
        blocked.message
    );
    assert_eq!(st.phase.as_deref(), Some("Scaling"));
    assert_eq!(h.board.users("corp-home-1"), Some(4_500), "corp-home-3's users moved before it went");
    assert_eq!(h.names::<HomeServer>().await, vec!["corp-home-1", "corp-home-2"]);
    assert!(
        !h.api::<HomeServer>().get("corp-home-2").await.unwrap().spec.drain,
        "a drain that cannot fit is not started"
    );
    assert!(
        h.api::<FrontEnd>().get_opt("corp-frontend").await.unwrap().is_some(),
        "two Home Servers keep the Front-End"
    );
    if !h.is_double() {
        // The StatefulSet controller made the claims; they outlive the Home Server by default.
        let claims: Vec<String> = h
            .api::<PersistentVolumeClaim>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .iter()
            .map(|c| c.name_any())
            .collect();
        assert!(claims.contains(&"data-corp-home-3-0".to_string()), "corp-home-3's data volume is kept: {claims:?}");
    }

    // Room for corp-home-2's users: it drains and goes, and the Front-End with it.
    h.patch_domain("corp", serde_json::json!({"users": 6_000})).await;
    h.wait_gone::<HomeServer>("corp-home-2").await;
    h.wait_gone::<FrontEnd>("corp-frontend").await;
    let d = h
        .wait_for::<CommunicationsDomain, _>("scale-down finished", "corp", |d| {
            d.status.as_ref().is_some_and(|s| {
                s.waiting_removal.is_empty()
                    && s.home_servers == ["corp-home-1"]
                    && condition(&s.conditions, "ScaleDownBlocked").is_some_and(|c| c.0 == "False")
            })
        })
        .await;
    assert_eq!(d.status.unwrap().home_server_count, Some(1));
    assert_eq!(h.board.users("corp-home-1"), Some(5_500));
    assert_eq!(h.names::<HomeServer>().await, vec!["corp-home-1"], "removed Home Servers are not recreated");
    player.abort();
    op.stop().await.unwrap();
}
