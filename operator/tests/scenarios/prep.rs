//! Directory preparation: the prep Jobs run in the seed's order and workloads wait for them. The
//! test plays the Job controller: it marks each Job complete (or failed) through its status.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use parley_operator::crd::{CommunicationsDomain, HomeServer};
use serde_json::json;

use crate::support::Harness;

async fn set_job_status(h: &Harness, job: &str, succeeded: bool) {
    h.wait_for::<Job, _>("prep Job", job, |_| true).await;
    let now = format!("{:.0}", Timestamp::now());
    let cond = |type_: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": "True", "reason": reason, "message": message,
               "lastTransitionTime": now, "lastProbeTime": now})
    };
    let status = if succeeded {
        let m = "Reached expected number of succeeded pods";
        json!({"startTime": now, "completionTime": now, "succeeded": 1,
               "conditions": [cond("SuccessCriteriaMet", "CompletionsReached", m), cond("Complete", "CompletionsReached", m)]})
    } else {
        let m = "Job has reached the specified backoff limit";
        json!({"startTime": now, "failed": 4,
               "conditions": [cond("FailureTarget", "BackoffLimitExceeded", m), cond("Failed", "BackoffLimitExceeded", m)]})
    };
    h.api::<Job>()
        .patch_status(job, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await
        .expect("Job status");
}

async fn wait_condition(h: &Harness, type_: &str, status: &str, reason: &str) -> String {
    let d = h
        .wait_for::<CommunicationsDomain, _>(&format!("{type_} {status} {reason}"), "corp", |d| {
            d.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| c.type_ == type_ && c.status == status && c.reason == reason)
            })
        })
        .await;
    d.status.unwrap().conditions.into_iter().find(|c| c.type_ == type_).unwrap().message
}

async fn prep_jobs(h: &Harness) -> Vec<String> {
    h.names::<Job>().await.into_iter().filter(|n| n.starts_with("corp-prep-")).collect()
}

pub async fn an_ldap_domain_is_prepared_in_order_before_its_workloads(h: &Harness) {
    if h.is_double() {
        eprintln!("skipped on the double: it serves no batch/v1 Jobs (runs against a real API server)");
        return;
    }
    let admin = Secret {
        metadata: kube::api::ObjectMeta { name: Some("ldap-admin".into()), ..Default::default() },
        string_data: Some(
            [("bindDn", "cn=admin,dc=example,dc=test"), ("password", "pw")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    h.api::<Secret>().create(&Default::default(), &admin).await.unwrap();
    let op = h.start_operator("op-a");
    let domain = json!({
        "apiVersion": "parley.dev/v1alpha1", "kind": "CommunicationsDomain", "metadata": {"name": "corp"},
        "spec": {"sipDomain": "example.test", "users": 500, "directory": {"ldap": {
            "url": "ldap://ldap.example:389", "baseDn": "dc=example,dc=test", "adminSecret": {"name": "ldap-admin"}}}},
    });
    h.api::<CommunicationsDomain>()
        .patch("corp", &PatchParams::apply("parley-test"), &Patch::Apply(&domain))
        .await
        .unwrap();

    // Schema first, alone; nothing else exists yet.
    h.wait_for::<Job, _>("prep schema Job", "corp-prep-schema", |_| true).await;
    let msg = wait_condition(h, "SchemaPrepared", "False", "Running").await;
    assert!(msg.contains("corp-prep-schema"), "{msg}");
    assert_eq!(prep_jobs(h).await, ["corp-prep-schema"]);
    assert!(h.names::<HomeServer>().await.is_empty(), "no workload before DomainPrepared");
    // The generated service-account password exists before prep domain needs it.
    h.wait_for::<Secret, _>("service-account Secret", "corp-directory-service", |_| true).await;

    set_job_status(h, "corp-prep-schema", true).await;
    let schema_uid = h.api::<Job>().get("corp-prep-schema").await.unwrap().metadata.uid;
    let job = h.wait_for::<Job, _>("prep enterprise Job", "corp-prep-enterprise", |_| true).await;
    let args = job.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    let address = parley_operator::build::config::home_server_address("corp-home-1", &h.ns, "cluster.local");
    let registered = format!("corp-home-1={address}");
    assert!(args.contains(&registered), "prep enterprise registers the Home Server: {args:?}");

    // A failed Job stops the sequence and says why.
    set_job_status(h, "corp-prep-enterprise", false).await;
    let msg = wait_condition(h, "EnterprisePrepared", "False", "JobFailed").await;
    assert!(msg.contains("Job corp-prep-enterprise failed (BackoffLimitExceeded"), "{msg}");
    assert_eq!(prep_jobs(h).await, ["corp-prep-enterprise", "corp-prep-schema"]);
    assert!(h.names::<HomeServer>().await.is_empty());

    // Deleting the failed Job retries it.
    let bg = kube::api::DeleteParams::background();
    h.api::<Job>().delete("corp-prep-enterprise", &bg).await.unwrap();
    h.wait_for::<Job, _>("a new prep enterprise Job", "corp-prep-enterprise", |j| {
        j.status.as_ref().and_then(|s| s.conditions.as_ref()).is_none()
    })
    .await;
    set_job_status(h, "corp-prep-enterprise", true).await;
    set_job_status(h, "corp-prep-domain", true).await;
    wait_condition(h, "DomainPrepared", "True", "Succeeded").await;
    h.wait_for::<HomeServer, _>("the HomeServer, once prepared", "corp-home-1", |_| true).await;

    // A new additional domain runs just its Job.
    h.patch_domain(
        "corp",
        json!({"additionalDomains": [{"sipDomain": "partner.test", "baseDn": "dc=partner,dc=test"}]}),
    )
    .await;
    h.wait_for::<Job, _>("prep domainadd Job", "corp-prep-domainadd-1", |_| true).await;
    assert_eq!(
        prep_jobs(h).await,
        ["corp-prep-domain", "corp-prep-domainadd-1", "corp-prep-enterprise", "corp-prep-schema"]
    );
    set_job_status(h, "corp-prep-domainadd-1", true).await;
    let msg = wait_condition(h, "DomainPrepared", "True", "Succeeded").await;
    assert!(msg.contains("corp-prep-domainadd-1"), "{msg}");
    let schema_after = h.api::<Job>().get("corp-prep-schema").await.unwrap().metadata.uid;
    assert_eq!(schema_after, schema_uid, "a succeeded Job is not run again");
    op.stop().await.unwrap();
}
