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
    mark_job(&h.api::<Job>(), job, succeeded).await.expect("Job status");
}

/// Plays the Job controller: marks `job` complete, or failed after its retries.
pub async fn mark_job(jobs: &kube::Api<Job>, job: &str, succeeded: bool) -> kube::Result<Job> {
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
    jobs.patch_status(job, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await
}

/// The directory administrator's Secret an LDAP domain names.
pub async fn create_admin_secret(h: &Harness) {
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
}

/// Applies the LDAP domain `corp` of `users` users, as `kubectl apply --server-side` would.
pub async fn apply_ldap_domain(h: &Harness, users: u32) {
    let domain = json!({
        "apiVersion": "parley.dev/v1alpha1", "kind": "CommunicationsDomain", "metadata": {"name": "corp"},
        "spec": {"sipDomain": "example.test", "users": users, "directory": {"ldap": {
            "url": "ldap://ldap.example:389", "baseDn": "dc=example,dc=test", "adminSecret": {"name": "ldap-admin"}}}},
    });
    h.api::<CommunicationsDomain>()
        .patch("corp", &PatchParams::apply("parley-test"), &Patch::Apply(&domain))
        .await
        .unwrap();
}

async fn wait_condition(h: &Harness, type_: &str, status: &str, reason: &str) -> String {
    let d = h
        .wait_for::<CommunicationsDomain, _>(&format!("{type_} {status} {reason}"), "corp", |d| {
            // Of the current spec: a status written before the last change says nothing about it.
            d.status.as_ref().is_some_and(|s| {
                s.observed_generation == d.metadata.generation
                    && s.conditions.iter().any(|c| c.type_ == type_ && c.status == status && c.reason == reason)
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
    create_admin_secret(h).await;
    let op = h.start_operator("op-a");
    apply_ldap_domain(h, 500).await;

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
    let registered = format!("corp-home-1={address},capacity=500,api=http://");
    assert!(args.iter().any(|a| a.starts_with(&registered)), "prep enterprise registers the Home Server: {args:?}");

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
    h.assert_no_secret_value_leaked().await;
    op.stop().await.unwrap();
}

/// Plays the kubelet: the pod's Ready condition as `ready` says.
async fn set_pod_ready(h: &Harness, pod: &str) {
    h.wait_for::<k8s_openapi::api::core::v1::Pod, _>("directory pod", pod, |_| true).await;
    let now = format!("{:.0}", Timestamp::now());
    let status = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": now},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]}});
    h.api::<k8s_openapi::api::core::v1::Pod>()
        .patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("pod status");
}

pub async fn a_managed_directory_is_run_and_prepared_before_its_workloads(h: &Harness) {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    if h.is_double() {
        eprintln!("skipped on the double: it serves no batch/v1 Jobs or Pods (runs against a real API server)");
        return;
    }
    let op = h.start_operator("op-a");
    let domain = json!({
        "apiVersion": "parley.dev/v1alpha1", "kind": "CommunicationsDomain", "metadata": {"name": "corp"},
        "spec": {"sipDomain": "example.test", "users": 500, "directory": {"managed": {}}},
    });
    h.api::<CommunicationsDomain>()
        .patch("corp", &PatchParams::apply("parley-test"), &Patch::Apply(&domain))
        .await
        .unwrap();
    let owned_by_domain = |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
        refs.is_some_and(|r| r.iter().any(|o| o.kind == "CommunicationsDomain" && o.name == "corp"))
    };

    // The directory: admin Secret, certificate from the domain's CA, config, Service, StatefulSet.
    let admin = h.wait_for::<Secret, _>("admin Secret", "corp-directory-admin", |_| true).await;
    assert!(owned_by_domain(admin.metadata.owner_references.as_ref()));
    let data = admin.data.clone().unwrap();
    assert_eq!(data["bindDn"].0, b"cn=admin,dc=example,dc=test");
    let password = data["password"].0.clone();
    assert!(password.len() >= 32);
    let tls = h.wait_for::<Secret, _>("directory certificate", "corp-directory-tls", |_| true).await;
    let tls_data = tls.data.unwrap();
    assert!(tls_data.contains_key("tls.crt") && tls_data.contains_key("ca.crt"));
    let cm = h.wait_for::<ConfigMap, _>("slapd config", "corp-directory-config", |_| true).await;
    assert!(cm.data.unwrap()["slapd.ldif"].contains("olcSuffix: dc=example,dc=test"));
    let svc = h.wait_for::<Service, _>("directory Service", "corp-directory", |_| true).await;
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 636);
    let sts = h.wait_for::<StatefulSet, _>("directory StatefulSet", "corp-directory", |_| true).await;
    assert!(owned_by_domain(sts.metadata.owner_references.as_ref()));
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(1));

    // Until its pod is ready nothing is prepared, and the status says what it waits for.
    let msg = wait_condition(h, "DirectoryReady", "False", "Waiting").await;
    assert!(msg.contains("corp-directory-0"), "{msg}");
    let msg = wait_condition(h, "SchemaPrepared", "False", "WaitingForDirectory").await;
    assert!(msg.contains("corp-prep-schema"), "{msg}");
    assert!(prep_jobs(h).await.is_empty(), "no prep Job before the directory is ready");
    assert!(h.names::<HomeServer>().await.is_empty());

    set_pod_ready(h, "corp-directory-0").await;
    wait_condition(h, "DirectoryReady", "True", "PodReady").await;
    let job = h.wait_for::<Job, _>("prep schema Job", "corp-prep-schema", |_| true).await;
    let env = job.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    let value = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.clone());
    assert_eq!(value("PARLEY_LDAP_URL"), Some(format!("ldaps://corp-directory.{}.svc:636", h.ns)));
    assert_eq!(value("PARLEY_LDAP_BASE_DN").as_deref(), Some("dc=example,dc=test"));
    for step in ["schema", "enterprise", "domain"] {
        set_job_status(h, &format!("corp-prep-{step}"), true).await;
    }
    wait_condition(h, "DomainPrepared", "True", "Succeeded").await;
    h.wait_for::<HomeServer, _>("the HomeServer, once prepared", "corp-home-1", |_| true).await;
    let cm = h.wait_for::<ConfigMap, _>("Home Server config", "corp-home-1-config", |_| true).await;
    let config = &cm.data.unwrap()["parley.toml"];
    assert!(config.contains(&format!("url = \"ldaps://corp-directory.{}.svc:636\"", h.ns)), "{config}");

    // The generated password is kept across reconciles.
    h.patch_domain("corp", json!({"users": 600})).await;
    h.wait_for::<CommunicationsDomain, _>("the new generation observed", "corp", |d| {
        d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
    })
    .await;
    let again = h.api::<Secret>().get("corp-directory-admin").await.unwrap();
    assert_eq!(again.data.unwrap()["password"].0, password, "the admin password is never regenerated");
    h.assert_no_secret_value_leaked().await;
    op.stop().await.unwrap();
}
