//! Directory preparation, in the seed's order: Jobs `<domain>-prep-schema`,
//! `<domain>-prep-enterprise`, `<domain>-prep-domain` and one `<domain>-prep-domainadd-<n>` per
//! entry of `spec.additionalDomains`, each running `parley-server prep ...` in the server image.
//!
//! Credentials never appear in argv or in literal env values: the administrator's password and
//! the service account's password are files mounted from Secrets (env holds only their paths);
//! the administrator's DN, an identifier rather than a secret, comes from the same Secret through
//! `valueFrom` because `parley-server` reads it from `PARLEY_LDAP_BIND_DN`.
//!
//! [`sequence`] is pure: the observed Jobs and the steps that already succeeded in, the next Job
//! to create (or delete) and the three conditions out.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, PodSpec, PodTemplateSpec, Secret,
    SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use kube::api::ObjectMeta;

use super::{
    BuildError, DOMAIN_LABEL, MANAGED_BY, Owner, container_security_context, pod_security_context, quantity, sha256_hex,
};
use crate::controllers::conditions::Want;
use crate::crd::condition::{DOMAIN_PREPARED, ENTERPRISE_PREPARED, SCHEMA_PREPARED};
use crate::crd::{CommunicationsDomain, PreparedStep, ResolvedDomain, SecretKeyRef};

/// Annotation holding the hash of a prep Job's spec: a Job with other inputs is replaced.
pub const PREP_HASH_ANNOTATION: &str = "parley.dev/prep-hash";
/// A finished prep Job is removed after an hour; the domain's status remembers that it succeeded,
/// and a failed one is retried when it is gone.
pub const TTL_SECONDS_AFTER_FINISHED: i32 = 3600;
/// Retries of a failed prep pod before the Job counts as failed.
pub const BACKOFF_LIMIT: i32 = 3;
/// A prep step that has not finished in ten minutes has failed (an unreachable directory).
pub const ACTIVE_DEADLINE_SECONDS: i64 = 600;

/// Where the prep container finds its files.
pub mod paths {
    pub const ADMIN_DIR: &str = "/etc/parley/prep/admin";
    pub const ADMIN_PASSWORD: &str = "/etc/parley/prep/admin/password";
    pub const SERVICE_DIR: &str = "/etc/parley/prep/service";
    pub const SERVICE_PASSWORD: &str = "/etc/parley/prep/service/password";
    pub const CA_DIR: &str = "/etc/parley/prep/ca";
    pub const CA_FILE: &str = "/etc/parley/prep/ca/ca.crt";
}

/// Name of the Secret the operator generates for the service account's password when
/// `serviceAccountSecretRef` is not set.
pub fn generated_service_account_secret_name(domain: &str) -> String {
    format!("{domain}-directory-service")
}

/// The Secret key holding the service account's password: the one the administrator named, or
/// the operator's generated one. `None` for a file directory, which has no service account.
pub fn service_account_secret_ref(domain: &CommunicationsDomain) -> Option<SecretKeyRef> {
    let d = &domain.spec.directory;
    if let Some(explicit) = d.ldap.as_ref().and_then(|l| l.explicit_service_account_secret()) {
        return Some(explicit.clone());
    }
    if d.ldap.is_none() && d.managed.is_none() {
        return None;
    }
    let name = domain.metadata.name.clone().unwrap_or_default();
    Some(SecretKeyRef { name: generated_service_account_secret_name(&name), key: "password".into() })
}

/// Whether the operator must generate the service account's password Secret.
pub fn needs_generated_service_account(domain: &CommunicationsDomain) -> bool {
    let d = &domain.spec.directory;
    d.managed.is_some() || d.ldap.as_ref().is_some_and(|l| l.explicit_service_account_secret().is_none())
}

/// The generated service-account Secret of the domain `owner` holding `password` (the controller
/// makes it once and keeps it: a new password would lock the running servers out).
pub fn service_account_secret(owner: &Owner, password: &str) -> Secret {
    let name = generated_service_account_secret_name(&owner.name);
    Secret {
        metadata: owner.meta(name.clone(), labels(&name, &owner.name, "directory")),
        type_: Some("Opaque".into()),
        // `data`, not `stringData`: the API server stores only `data`, so a re-apply compares equal.
        data: Some(BTreeMap::from([("password".to_string(), k8s_openapi::ByteString(password.as_bytes().to_vec()))])),
        ..Default::default()
    }
}

/// One step of the preparation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Schema,
    Enterprise,
    Domain,
    /// The `n`th (from 1) entry of `spec.additionalDomains`.
    DomainAdd(usize),
}

impl Step {
    /// Name of the step's Job.
    pub fn job_name(&self, domain: &str) -> String {
        match self {
            Step::Schema => format!("{domain}-prep-schema"),
            Step::Enterprise => format!("{domain}-prep-enterprise"),
            Step::Domain => format!("{domain}-prep-domain"),
            Step::DomainAdd(n) => format!("{domain}-prep-domainadd-{n}"),
        }
    }

    /// The condition the step's outcome decides.
    pub fn condition(&self) -> &'static str {
        match self {
            Step::Schema => SCHEMA_PREPARED,
            Step::Enterprise => ENTERPRISE_PREPARED,
            Step::Domain | Step::DomainAdd(_) => DOMAIN_PREPARED,
        }
    }

    fn args(&self, domain: &ResolvedDomain) -> Vec<String> {
        let mut args: Vec<String> = vec!["prep".into()];
        match self {
            Step::Schema => args.push("schema".into()),
            Step::Enterprise => {
                args.extend(["enterprise".into(), "--sip-domain".into(), domain.sip_domain.clone()]);
                for h in &domain.home_servers {
                    // NAME=ADDRESS[,capacity=N][,api=URL]: what placement and `user move` read.
                    let mut spec = format!("{}={}", h.name, h.address);
                    if let Some(c) = h.capacity {
                        spec.push_str(&format!(",capacity={c}"));
                    }
                    if !h.api.is_empty() {
                        spec.push_str(&format!(",api={}", h.api));
                    }
                    args.extend(["--home-server".into(), spec]);
                }
            }
            Step::Domain => {
                args.extend(["domain".into(), "--service-account-password-file".into(), paths::SERVICE_PASSWORD.into()])
            }
            Step::DomainAdd(n) => {
                let other = &domain.additional_domains[n - 1];
                args.extend([
                    "domainadd".into(),
                    "--domain".into(),
                    other.sip_domain.clone(),
                    "--domain-base-dn".into(),
                    other.base_dn.clone(),
                ]);
            }
        }
        args
    }
}

/// The steps a domain's directory needs, in order; empty for a file directory.
pub fn steps(domain: &ResolvedDomain) -> Vec<Step> {
    if domain.directory.ldap.is_none() {
        return Vec::new();
    }
    let mut steps = vec![Step::Schema, Step::Enterprise, Step::Domain];
    steps.extend((1..=domain.additional_domains.len()).map(Step::DomainAdd));
    steps
}

pub(super) fn labels(instance: &str, domain: &str, component: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "parley"),
        ("app.kubernetes.io/instance", instance),
        ("app.kubernetes.io/component", component),
        ("app.kubernetes.io/part-of", "parley"),
        ("app.kubernetes.io/managed-by", MANAGED_BY),
        (DOMAIN_LABEL, domain),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

pub(super) fn secret_volume(name: &str, secret: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath { key: key.into(), path: path.into(), ..Default::default() }]),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn read_only(name: &str, path: &str) -> VolumeMount {
    VolumeMount { name: name.into(), mount_path: path.into(), read_only: Some(true), ..Default::default() }
}

/// The Job of `step` for the domain `owner`, in its image; `prep enterprise` registers every Home
/// Server of `domain`. Needs an LDAP directory with an admin Secret.
pub fn job(owner: &Owner, domain: &ResolvedDomain, step: &Step) -> Result<Job, BuildError> {
    let mut extra = Vec::new();
    if *step == Step::Domain {
        let ldap = domain.directory.ldap.as_ref().ok_or_else(|| BuildError::Prep("no LDAP directory".into()))?;
        let service = &ldap.password_secret;
        let secret = service.secret.as_deref().ok_or_else(|| BuildError::Prep("no service account".into()))?;
        extra.push((
            secret_volume("service", secret, &service.key, "password"),
            read_only("service", paths::SERVICE_DIR),
        ));
    }
    directory_job(
        owner,
        domain,
        DirectoryJob {
            name: step.job_name(&owner.name),
            domain: &owner.name,
            component: "directory-prep",
            args: step.args(domain),
            extra,
            deadline_seconds: ACTIVE_DEADLINE_SECONDS,
        },
    )
}

/// A Job that runs `parley-server` as the directory's administrator: a prep step, or a Home
/// Server's drain.
pub struct DirectoryJob<'a> {
    pub name: String,
    /// The domain it works for (its label).
    pub domain: &'a str,
    /// Its `app.kubernetes.io/component` label.
    pub component: &'a str,
    /// `parley-server` arguments, without the directory's connection (that comes from env).
    pub args: Vec<String>,
    /// Further volumes and where the container mounts them.
    pub extra: Vec<(Volume, VolumeMount)>,
    /// After this long the Job has failed (an unreachable directory).
    pub deadline_seconds: i64,
}

/// Builds `spec` as a Job owned by `owner`, in the domain's image, with the administrator's
/// credentials of `domain`'s LDAP directory. Needs an LDAP directory with an admin Secret.
pub fn directory_job(owner: &Owner, domain: &ResolvedDomain, spec: DirectoryJob) -> Result<Job, BuildError> {
    let ldap = domain.directory.ldap.as_ref().ok_or_else(|| BuildError::Prep("no LDAP directory".into()))?;
    let admin = ldap.admin_secret.as_ref().ok_or_else(|| BuildError::Prep(NO_ADMIN_SECRET.into()))?;
    let name = spec.name;
    let mut vars = vec![
        env("PARLEY_LDAP_URL", &ldap.url),
        env("PARLEY_LDAP_BASE_DN", &ldap.base_dn),
        EnvVar {
            name: "PARLEY_LDAP_BIND_DN".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: admin.name.clone(),
                    key: admin.bind_dn_key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        env("PARLEY_LDAP_BIND_PASSWORD_FILE", paths::ADMIN_PASSWORD),
        env("PARLEY_LOG_FORMAT", "json"),
    ];
    let mut volumes = vec![
        secret_volume("admin", &admin.name, &admin.key, "password"),
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(quantity::q("16Mi")), ..Default::default() }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        read_only("admin", paths::ADMIN_DIR),
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
    ];
    if let Some(ca) = &ldap.ca_bundle {
        volumes.push(super::ca_bundle_volume("ca", ca));
        mounts.push(read_only("ca", paths::CA_DIR));
        vars.push(env("PARLEY_LDAP_CA_FILE", paths::CA_FILE));
    }
    for (volume, mount) in spec.extra {
        volumes.push(volume);
        mounts.push(mount);
    }
    let mut args = spec.args;
    if ldap.start_tls {
        // `--starttls` has no environment variable; it is a flag of the connection, not a secret.
        args.push("--starttls".into());
    }

    let labels = labels(&name, spec.domain, spec.component);
    let spec = JobSpec {
        backoff_limit: Some(BACKOFF_LIMIT),
        active_deadline_seconds: Some(spec.deadline_seconds),
        ttl_seconds_after_finished: Some(TTL_SECONDS_AFTER_FINISHED),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..Default::default() }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                containers: vec![Container {
                    name: spec.component.into(),
                    image: Some(domain.image.clone()),
                    image_pull_policy: Some("IfNotPresent".into()),
                    command: Some(vec!["/usr/local/bin/parley-server".into()]),
                    args: Some(args),
                    env: Some(vars),
                    volume_mounts: Some(mounts),
                    security_context: Some(container_security_context()),
                    // The last lines of the log become the termination message the status quotes.
                    termination_message_policy: Some("FallbackToLogsOnError".into()),
                    resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                        requests: Some(BTreeMap::from([
                            ("cpu".to_string(), quantity::q("50m")),
                            ("memory".to_string(), quantity::q("32Mi")),
                        ])),
                        limits: Some(BTreeMap::from([("memory".to_string(), quantity::q("128Mi"))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                volumes: Some(volumes),
                security_context: Some(pod_security_context()),
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                ..Default::default()
            }),
        },
        ..Default::default()
    };
    let hash = sha256_hex(&serde_json::to_vec(&spec).map_err(|e| BuildError::Prep(e.to_string()))?);
    Ok(Job {
        metadata: ObjectMeta {
            annotations: Some(BTreeMap::from([(PREP_HASH_ANNOTATION.to_string(), hash)])),
            ..owner.meta(name, labels)
        },
        spec: Some(spec),
        ..Default::default()
    })
}

const NO_ADMIN_SECRET: &str = "spec.directory.ldap.adminSecret is not set: the operator needs a directory \
     administrator's Secret (keys bindDn and password) to prepare the directory";

/// Holds back the Job `plan` would create while the directory cannot answer (a managed directory
/// whose pod is not ready, `why`): the step's condition says what it waits for. Steps that already
/// succeeded stay prepared, so a directory restart later on does not stop the domain's workloads.
pub fn hold_for_directory(plan: &mut PrepPlan, why: &str) {
    let Some(job) = plan.create.take() else { return };
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let step = plan.conditions.iter_mut().find(|w| w.reason == "Running" && w.message.contains(&job_name));
    if let Some(w) = step {
        *w = Want::new(w.type_, false, "WaitingForDirectory", format!("Job {job_name} waits for the directory: {why}"));
    }
}

/// The hash of a Job's inputs, from its annotation.
pub fn job_hash(job: &Job) -> Option<&str> {
    job.metadata.annotations.as_ref()?.get(PREP_HASH_ANNOTATION).map(String::as_str)
}

/// How an observed prep Job stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    /// The reason and message of the Job's `Failed` condition, and the pod's termination
    /// message (the end of its log) when the controller found one.
    Failed {
        reason: String,
        message: String,
        pod_message: Option<String>,
    },
}

/// An observed prep Job: its inputs' hash and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedJob {
    pub hash: String,
    pub state: JobState,
}

/// Reads a Job's state from its conditions; `pod_message` is a failed pod's termination message.
pub fn observe(job: &Job, pod_message: Option<String>) -> ObservedJob {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let is = |t: &str| conditions.iter().find(|c| c.type_ == t && c.status == "True");
    let state = if is("Complete").is_some() {
        JobState::Succeeded
    } else if let Some(c) = is("Failed") {
        JobState::Failed {
            reason: c.reason.clone().unwrap_or_else(|| "Failed".into()),
            message: c.message.clone().unwrap_or_default(),
            pod_message: pod_message.map(|m| m.trim().to_string()).filter(|m| !m.is_empty()),
        }
    } else {
        JobState::Running
    };
    ObservedJob { hash: job_hash(job).unwrap_or_default().to_string(), state }
}

/// What to do next about the preparation.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepPlan {
    /// The Job to create (at most one: each step waits for the previous one).
    pub create: Option<Job>,
    /// Jobs whose inputs changed: deleted now, created again on a later reconcile.
    pub delete: Vec<String>,
    /// `SchemaPrepared`, `EnterprisePrepared`, `DomainPrepared`.
    pub conditions: Vec<Want>,
    /// The steps that have succeeded with their current inputs, for the status.
    pub prepared: Vec<PreparedStep>,
    /// Every step succeeded: workloads may run.
    pub done: bool,
}

/// Decides the next prep Job of the domain `owner` from the Jobs `observed` (by name) and the
/// steps `prepared` earlier (from the status: a Job removed after its TTL does not run again).
pub fn sequence(
    owner: &Owner,
    domain: &ResolvedDomain,
    observed: &BTreeMap<String, ObservedJob>,
    prepared: &[PreparedStep],
) -> Result<PrepPlan, BuildError> {
    let all = [SCHEMA_PREPARED, ENTERPRISE_PREPARED, DOMAIN_PREPARED];
    let ldap = domain.directory.ldap.as_ref();
    if ldap.is_none() {
        let conditions =
            all.iter().map(|t| Want::new(t, true, "NotNeeded", "a file directory needs no preparation")).collect();
        return Ok(PrepPlan { create: None, delete: vec![], conditions, prepared: vec![], done: true });
    }
    if ldap.is_some_and(|l| l.admin_secret.is_none()) {
        let conditions = all.iter().map(|t| Want::new(t, false, "NoAdminSecret", NO_ADMIN_SECRET)).collect();
        return Ok(PrepPlan { create: None, delete: vec![], conditions, prepared: vec![], done: false });
    }

    let mut plan = PrepPlan { create: None, delete: vec![], conditions: vec![], prepared: vec![], done: false };
    // A condition is True when every step of it succeeded; otherwise the first step that did not says why.
    let mut verdicts: BTreeMap<&'static str, Want> = BTreeMap::new();
    let mut succeeded_jobs: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let mut blocked: Option<String> = None;
    for step in steps(domain) {
        let name = step.job_name(&owner.name);
        let cond = step.condition();
        if let Some(waiting_for) = &blocked {
            verdicts
                .entry(cond)
                .or_insert_with(|| Want::new(cond, false, "Waiting", format!("waits for {waiting_for}")));
            continue;
        }
        let job = job(owner, domain, &step)?;
        let hash = job_hash(&job).unwrap_or_default().to_string();
        let seen = observed.get(&name);
        let succeeded = prepared.iter().any(|p| p.job == name && p.hash == hash)
            || seen.is_some_and(|o| o.hash == hash && o.state == JobState::Succeeded);
        if succeeded {
            plan.prepared.push(PreparedStep { job: name.clone(), hash });
            succeeded_jobs.entry(cond).or_default().push(name);
            continue;
        }
        blocked = Some(format!("Job {name}"));
        let want = match seen {
            Some(o) if o.hash != hash => {
                plan.delete.push(name.clone());
                Want::new(cond, false, "Replacing", format!("Job {name} ran with other settings; it is replaced"))
            }
            Some(ObservedJob { state: JobState::Running, .. }) => {
                Want::new(cond, false, "Running", format!("Job {name} is running"))
            }
            Some(ObservedJob { state: JobState::Failed { reason, message, pod_message }, .. }) => {
                let mut text = format!("Job {name} failed ({reason}");
                if !message.is_empty() {
                    text.push_str(&format!(": {message}"));
                }
                text.push(')');
                if let Some(m) = pod_message {
                    text.push_str(&format!(": {m}"));
                }
                text.push_str(&format!(
                    "; it is retried when the Job is deleted (automatically after {TTL_SECONDS_AFTER_FINISHED}s)"
                ));
                Want::new(cond, false, "JobFailed", text)
            }
            // Done with other inputs before, or never: (re)run.
            _ => {
                plan.create = Some(job);
                Want::new(cond, false, "Running", format!("Job {name} created"))
            }
        };
        verdicts.insert(cond, want);
    }
    plan.done = blocked.is_none();
    plan.conditions = all
        .iter()
        .map(|t| {
            verdicts.remove(t).unwrap_or_else(|| {
                let jobs = succeeded_jobs.remove(t).unwrap_or_default();
                let s = if jobs.len() == 1 { "" } else { "s" };
                Want::new(t, true, "Succeeded", format!("Job{s} {} succeeded", jobs.join(", ")))
            })
        })
        .collect();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    use super::*;
    use crate::build::fixtures;
    use crate::crd::{AdditionalDomain, CaBundleRef, DirectorySpec, FileDirectory};

    const IMAGE: &str = "parley-server:test";

    fn servers() -> Vec<(String, String)> {
        (1..=2).map(|n| (format!("corp-home-{n}"), format!("corp-home-{n}.ns.svc.cluster.local:5061"))).collect()
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn args(job: &Job) -> Vec<String> {
        pod(job).containers[0].args.clone().unwrap()
    }

    fn env_value(job: &Job, name: &str) -> Option<String> {
        pod(job).containers[0].env.as_ref().unwrap().iter().find(|e| e.name == name).and_then(|e| e.value.clone())
    }

    fn owner(d: &CommunicationsDomain) -> Owner {
        Owner::of(d, "CommunicationsDomain").unwrap()
    }

    /// `d` resolved, with two Home Servers.
    fn resolved(d: &CommunicationsDomain) -> ResolvedDomain {
        let mut r = fixtures::resolved(d);
        r.home_servers = servers()
            .into_iter()
            .map(|(name, address)| crate::crd::HomeServerAddress { name, address, capacity: None, api: String::new() })
            .collect();
        r
    }

    fn build(d: &CommunicationsDomain, step: Step) -> Job {
        job(&owner(d), &resolved(d), &step).unwrap()
    }

    #[test]
    fn an_ldap_domain_is_prepared_in_the_seeds_order_and_a_file_domain_not_at_all() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.additional_domains = vec![
            AdditionalDomain { sip_domain: "partner.test".into(), base_dn: "dc=partner,dc=test".into() },
            AdditionalDomain { sip_domain: "other.test".into(), base_dn: "dc=other,dc=test".into() },
        ];
        let names: Vec<String> = steps(&resolved(&d)).iter().map(|s| s.job_name("corp")).collect();
        assert_eq!(
            names,
            [
                "corp-prep-schema",
                "corp-prep-enterprise",
                "corp-prep-domain",
                "corp-prep-domainadd-1",
                "corp-prep-domainadd-2"
            ]
        );
        d.spec.directory = DirectorySpec {
            file: Some(FileDirectory { config_map: "users".into(), key: "users.toml".into() }),
            ..Default::default()
        };
        assert!(steps(&resolved(&d)).is_empty());
    }

    #[test]
    fn each_step_runs_its_prep_command() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.additional_domains =
            vec![AdditionalDomain { sip_domain: "partner.test".into(), base_dn: "dc=partner,dc=test".into() }];
        assert_eq!(args(&build(&d, Step::Schema)), ["prep", "schema"]);
        assert_eq!(
            args(&build(&d, Step::Enterprise)),
            [
                "prep",
                "enterprise",
                "--sip-domain",
                "example.test",
                "--home-server",
                "corp-home-1=corp-home-1.ns.svc.cluster.local:5061",
                "--home-server",
                "corp-home-2=corp-home-2.ns.svc.cluster.local:5061"
            ]
        );
        assert_eq!(
            args(&build(&d, Step::Domain)),
            ["prep", "domain", "--service-account-password-file", paths::SERVICE_PASSWORD]
        );
        assert_eq!(
            args(&build(&d, Step::DomainAdd(1))),
            ["prep", "domainadd", "--domain", "partner.test", "--domain-base-dn", "dc=partner,dc=test"]
        );
        let j = build(&d, Step::Schema);
        assert_eq!(j.metadata.name.as_deref(), Some("corp-prep-schema"));
        assert_eq!(pod(&j).containers[0].image.as_deref(), Some(IMAGE));
        assert_eq!(pod(&j).containers[0].command.as_ref().unwrap(), &["/usr/local/bin/parley-server"]);
        assert_eq!(env_value(&j, "PARLEY_LDAP_URL").as_deref(), Some("ldap://ldap.example:389"));
        assert_eq!(env_value(&j, "PARLEY_LDAP_BASE_DN").as_deref(), Some("dc=example,dc=test"));
    }

    #[test]
    fn credentials_are_files_from_secrets_never_argv_or_literal_env() {
        let d = fixtures::domain("corp", 500);
        for step in [Step::Schema, Step::Enterprise, Step::Domain] {
            let j = build(&d, step.clone());
            let c = &pod(&j).containers[0];
            // Literal values are only settings and file paths.
            for e in c.env.as_ref().unwrap() {
                match (&e.value, &e.value_from) {
                    (Some(v), None) => assert!(
                        ["PARLEY_LDAP_URL", "PARLEY_LDAP_BASE_DN", "PARLEY_LOG_FORMAT"].contains(&e.name.as_str())
                            || (e.name.ends_with("_FILE") && v.starts_with("/etc/parley/prep/")),
                        "{step:?}: literal env {} = {v}",
                        e.name
                    ),
                    (None, Some(from)) => {
                        assert_eq!(e.name, "PARLEY_LDAP_BIND_DN");
                        let s = from.secret_key_ref.as_ref().unwrap();
                        assert_eq!((s.name.as_str(), s.key.as_str()), ("ldap-admin", "bindDn"));
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert!(c.args.as_ref().unwrap().iter().all(|a| !a.contains("ldap-admin") && !a.contains("--bind")));
            assert_eq!(env_value(&j, "PARLEY_LDAP_BIND_PASSWORD_FILE").as_deref(), Some(paths::ADMIN_PASSWORD));
            let vols = pod(&j).volumes.as_ref().unwrap();
            let admin = vols.iter().find(|v| v.name == "admin").unwrap().secret.as_ref().unwrap();
            assert_eq!(admin.secret_name.as_deref(), Some("ldap-admin"));
            assert_eq!(admin.items.as_ref().unwrap()[0].path, "password");
            let mounted = |name: &str| c.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == name).cloned();
            assert_eq!(mounted("admin").unwrap().mount_path, paths::ADMIN_DIR);
            assert_eq!(mounted("admin").unwrap().read_only, Some(true));
            // Only prep domain sees the service account's password.
            assert_eq!(mounted("service").is_some(), step == Step::Domain, "{step:?}");
        }
        let j = build(&d, Step::Domain);
        let service = pod(&j).volumes.as_ref().unwrap().iter().find(|v| v.name == "service").unwrap();
        assert_eq!(service.secret.as_ref().unwrap().secret_name.as_deref(), Some("ldap-service"));
    }

    #[test]
    fn without_a_named_secret_the_service_account_password_is_generated() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory.ldap.as_mut().unwrap().service_account_secret_ref = None;
        assert!(needs_generated_service_account(&d));
        let r = service_account_secret_ref(&d).unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("corp-directory-service", "password"));
        let j = build(&d, Step::Domain);
        let service = pod(&j).volumes.as_ref().unwrap().iter().find(|v| v.name == "service").unwrap();
        assert_eq!(service.secret.as_ref().unwrap().secret_name.as_deref(), Some("corp-directory-service"));
        let s = service_account_secret(&owner(&d), "s3cret");
        assert_eq!(s.metadata.name.as_deref(), Some("corp-directory-service"));
        assert_eq!(s.data.unwrap()["password"].0, b"s3cret");
        assert_eq!(s.metadata.owner_references.unwrap()[0].name, "corp");
        // The old field name still names it.
        let ldap = d.spec.directory.ldap.as_mut().unwrap();
        ldap.password_secret = Some(SecretKeyRef { name: "legacy".into(), key: "pw".into() });
        assert!(!needs_generated_service_account(&d));
        assert_eq!(service_account_secret_ref(&d).unwrap().name, "legacy");
    }

    #[test]
    fn the_ca_bundle_and_starttls_reach_the_prep_command() {
        let mut d = fixtures::domain("corp", 500);
        let ldap = d.spec.directory.ldap.as_mut().unwrap();
        ldap.start_tls = true;
        ldap.ca_bundle =
            Some(CaBundleRef { config_map: Some("ldap-ca".into()), secret: None, key: "bundle.pem".into() });
        let j = build(&d, Step::Schema);
        assert_eq!(args(&j), ["prep", "schema", "--starttls"]);
        assert_eq!(env_value(&j, "PARLEY_LDAP_CA_FILE").as_deref(), Some(paths::CA_FILE));
        let ca = pod(&j).volumes.as_ref().unwrap().iter().find(|v| v.name == "ca").unwrap();
        let cm = ca.config_map.as_ref().unwrap();
        assert_eq!(cm.name, "ldap-ca");
        assert_eq!(cm.items.as_ref().unwrap()[0].key, "bundle.pem");
        assert_eq!(cm.items.as_ref().unwrap()[0].path, "ca.crt");
        d.spec.directory.ldap.as_mut().unwrap().ca_bundle =
            Some(CaBundleRef { config_map: None, secret: Some("ldap-ca-secret".into()), key: "ca.crt".into() });
        let j = build(&d, Step::Schema);
        let ca = pod(&j).volumes.as_ref().unwrap().iter().find(|v| v.name == "ca").unwrap();
        assert_eq!(ca.secret.as_ref().unwrap().secret_name.as_deref(), Some("ldap-ca-secret"));
    }

    #[test]
    fn jobs_are_owned_bounded_and_locked_down() {
        let d = fixtures::domain("corp", 500);
        let j = build(&d, Step::Enterprise);
        let o = &j.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((o.kind.as_str(), o.name.as_str(), o.controller), ("CommunicationsDomain", "corp", Some(true)));
        assert_eq!(j.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(j.metadata.labels.as_ref().unwrap()[DOMAIN_LABEL], "corp");
        let spec = j.spec.as_ref().unwrap();
        assert_eq!(spec.ttl_seconds_after_finished, Some(TTL_SECONDS_AFTER_FINISHED));
        assert_eq!(spec.backoff_limit, Some(BACKOFF_LIMIT));
        assert!(spec.active_deadline_seconds.is_some());
        let p = pod(&j);
        assert_eq!(p.restart_policy.as_deref(), Some("Never"));
        assert_eq!(p.automount_service_account_token, Some(false));
        let ps = p.security_context.as_ref().unwrap();
        assert_eq!(ps.run_as_non_root, Some(true));
        assert_eq!(ps.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let cs = p.containers[0].security_context.as_ref().unwrap();
        assert_eq!(cs.read_only_root_filesystem, Some(true));
        assert_eq!(cs.allow_privilege_escalation, Some(false));
        assert_eq!(cs.run_as_non_root, Some(true));
        assert_eq!(cs.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &["ALL"]);
        assert_eq!(cs.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert!(job_hash(&j).is_some_and(|h| h.len() == 64));
        // Other Home Servers are other inputs.
        let mut one = resolved(&d);
        one.home_servers.truncate(1);
        let fewer = job(&owner(&d), &one, &Step::Enterprise).unwrap();
        assert_ne!(job_hash(&fewer), job_hash(&j));
        assert_eq!(job_hash(&build(&d, Step::Enterprise)), job_hash(&j), "the hash is stable");
    }

    fn finished(job: &Job, type_: &str, reason: &str, message: &str) -> Job {
        let mut j = job.clone();
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: type_.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        j
    }

    fn succeeded(d: &CommunicationsDomain, step: Step) -> (String, ObservedJob) {
        let j = build(d, step);
        (j.metadata.name.clone().unwrap(), observe(&finished(&j, "Complete", "CompletionsReached", ""), None))
    }

    fn statuses(p: &PrepPlan) -> Vec<(&str, bool, &str)> {
        p.conditions.iter().map(|w| (w.type_, w.status, w.reason.as_str())).collect()
    }

    fn created(p: &PrepPlan) -> Option<&str> {
        p.create.as_ref().and_then(|j| j.metadata.name.as_deref())
    }

    #[test]
    fn each_job_starts_only_when_the_previous_one_succeeded() {
        let d = fixtures::domain("corp", 500);
        let mut observed = BTreeMap::new();
        let p = sequence(&owner(&d), &resolved(&d), &observed, &[]).unwrap();
        assert_eq!(created(&p), Some("corp-prep-schema"));
        assert_eq!(
            statuses(&p),
            [
                ("SchemaPrepared", false, "Running"),
                ("EnterprisePrepared", false, "Waiting"),
                ("DomainPrepared", false, "Waiting")
            ]
        );
        assert!(p.conditions[1].message.contains("corp-prep-schema"));
        assert!(!p.done);

        // While it runs nothing else starts.
        let schema = build(&d, Step::Schema);
        observed.insert("corp-prep-schema".to_string(), observe(&schema, None));
        let p = sequence(&owner(&d), &resolved(&d), &observed, &[]).unwrap();
        assert_eq!(created(&p), None);
        assert_eq!(p.conditions[0].message, "Job corp-prep-schema is running");

        observed.extend([succeeded(&d, Step::Schema)]);
        let p = sequence(&owner(&d), &resolved(&d), &observed, &[]).unwrap();
        assert_eq!(created(&p), Some("corp-prep-enterprise"));
        assert_eq!(statuses(&p)[0], ("SchemaPrepared", true, "Succeeded"));
        assert_eq!(p.conditions[0].message, "Job corp-prep-schema succeeded");

        observed.extend([succeeded(&d, Step::Enterprise)]);
        assert_eq!(created(&sequence(&owner(&d), &resolved(&d), &observed, &[]).unwrap()), Some("corp-prep-domain"));
        observed.extend([succeeded(&d, Step::Domain)]);
        let p = sequence(&owner(&d), &resolved(&d), &observed, &[]).unwrap();
        assert_eq!(created(&p), None);
        assert!(p.done);
        assert!(p.conditions.iter().all(|w| w.status), "{:?}", p.conditions);
        assert_eq!(p.prepared.len(), 3);

        // The Jobs expire (TTL); the status remembers them, so nothing runs again.
        let p = sequence(&owner(&d), &resolved(&d), &BTreeMap::new(), &p.prepared).unwrap();
        assert!(p.done && p.create.is_none() && p.delete.is_empty());
    }

    #[test]
    fn a_failed_job_names_itself_and_its_reason_and_stops_the_sequence() {
        let d = fixtures::domain("corp", 500);
        let mut observed = BTreeMap::from([succeeded(&d, Step::Schema)]);
        let enterprise = build(&d, Step::Enterprise);
        let failed =
            finished(&enterprise, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit");
        observed.insert(
            "corp-prep-enterprise".into(),
            observe(
                &failed,
                Some(
                    "parley-server: error: creating cn=Parley Services,dc=example,dc=test: permission denied\n".into(),
                ),
            ),
        );
        let p = sequence(&owner(&d), &resolved(&d), &observed, &[]).unwrap();
        assert_eq!(created(&p), None);
        assert_eq!(statuses(&p)[1], ("EnterprisePrepared", false, "JobFailed"));
        let m = &p.conditions[1].message;
        assert!(m.starts_with("Job corp-prep-enterprise failed (BackoffLimitExceeded: Job has reached"), "{m}");
        assert!(m.contains("permission denied"), "{m}");
        assert_eq!(statuses(&p)[2], ("DomainPrepared", false, "Waiting"));
        assert!(!p.done);
    }

    #[test]
    fn an_added_additional_domain_runs_just_its_job() {
        let mut d = fixtures::domain("corp", 500);
        let observed =
            BTreeMap::from([succeeded(&d, Step::Schema), succeeded(&d, Step::Enterprise), succeeded(&d, Step::Domain)]);
        let before = sequence(&owner(&d), &resolved(&d), &observed, &[]).unwrap();
        assert!(before.done);
        d.spec.additional_domains =
            vec![AdditionalDomain { sip_domain: "partner.test".into(), base_dn: "dc=partner,dc=test".into() }];
        // The earlier Jobs are gone (TTL); only the status remembers them.
        let p = sequence(&owner(&d), &resolved(&d), &BTreeMap::new(), &before.prepared).unwrap();
        assert_eq!(created(&p), Some("corp-prep-domainadd-1"));
        assert!(p.delete.is_empty());
        assert_eq!(
            statuses(&p),
            [
                ("SchemaPrepared", true, "Succeeded"),
                ("EnterprisePrepared", true, "Succeeded"),
                ("DomainPrepared", false, "Running")
            ]
        );
        let observed = BTreeMap::from([succeeded(&d, Step::DomainAdd(1))]);
        let p = sequence(&owner(&d), &resolved(&d), &observed, &p.prepared).unwrap();
        assert!(p.done, "{:?}", p.conditions);
        assert_eq!(p.conditions[2].message, "Jobs corp-prep-domain, corp-prep-domainadd-1 succeeded");
    }

    #[test]
    fn prep_enterprise_registers_each_home_servers_capacity_and_api_for_placement() {
        let d = fixtures::domain("corp", 25_000);
        let j = job(&owner(&d), &fixtures::resolved(&d), &Step::Enterprise).unwrap();
        let a = args(&j);
        let specs: Vec<&String> = a.iter().skip_while(|x| *x != "--home-server").skip(1).step_by(2).collect();
        assert_eq!(specs.len(), 3);
        assert_eq!(
            specs[0],
            "corp-home-1=corp-home-1.ns.svc.cluster.local:5062,capacity=8334,api=http://corp-home-1.ns.svc.cluster.local:8080"
        );
    }

    #[test]
    fn new_home_servers_rerun_prep_enterprise_replacing_its_old_job() {
        let d = fixtures::domain("corp", 500);
        let mut one = resolved(&d);
        one.home_servers.truncate(1);
        let observed: BTreeMap<_, _> = [Step::Schema, Step::Enterprise, Step::Domain]
            .into_iter()
            .map(|s| {
                let j = job(&owner(&d), &one, &s).unwrap();
                (j.metadata.name.clone().unwrap(), observe(&finished(&j, "Complete", "CompletionsReached", ""), None))
            })
            .collect();
        let p = sequence(&owner(&d), &resolved(&d), &observed, &[]).unwrap();
        assert_eq!(p.delete, ["corp-prep-enterprise"]);
        assert_eq!(created(&p), None, "created once the old Job is gone");
        assert_eq!(statuses(&p)[1], ("EnterprisePrepared", false, "Replacing"));
        let mut observed = observed;
        observed.remove("corp-prep-enterprise");
        let p = sequence(&owner(&d), &resolved(&d), &observed, &p.prepared).unwrap();
        assert_eq!(created(&p), Some("corp-prep-enterprise"));
        assert_eq!(args(p.create.as_ref().unwrap()).iter().filter(|a| *a == "--home-server").count(), 2);
    }

    #[test]
    fn directories_the_jobs_cannot_prepare_say_why() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory.ldap.as_mut().unwrap().admin_secret = None;
        let p = sequence(&owner(&d), &resolved(&d), &BTreeMap::new(), &[]).unwrap();
        assert!(p.create.is_none() && !p.done);
        assert!(
            p.conditions.iter().all(|w| !w.status && w.reason == "NoAdminSecret" && w.message.contains("adminSecret"))
        );

        // A managed directory is prepared like any LDAP directory, once its pod is ready.
        d.spec.directory = DirectorySpec { managed: Some(crate::crd::ManagedDirectory {}), ..Default::default() };
        let mut p = sequence(&owner(&d), &resolved(&d), &BTreeMap::new(), &[]).unwrap();
        assert_eq!(created(&p), Some("corp-prep-schema"));
        let j = p.create.clone().unwrap();
        assert_eq!(env_value(&j, "PARLEY_LDAP_URL").as_deref(), Some("ldaps://corp-directory.ns.svc:636"));
        assert_eq!(env_value(&j, "PARLEY_LDAP_BASE_DN").as_deref(), Some("dc=example,dc=test"));
        assert_eq!(env_value(&j, "PARLEY_LDAP_CA_FILE").as_deref(), Some(paths::CA_FILE));
        let ca = pod(&j).volumes.as_ref().unwrap().iter().find(|v| v.name == "ca").unwrap();
        assert_eq!(ca.secret.as_ref().unwrap().secret_name.as_deref(), Some("corp-directory-tls"));
        let admin = pod(&j).volumes.as_ref().unwrap().iter().find(|v| v.name == "admin").unwrap();
        assert_eq!(admin.secret.as_ref().unwrap().secret_name.as_deref(), Some("corp-directory-admin"));
        assert_eq!(service_account_secret_ref(&d).unwrap().name, "corp-directory-service");
        hold_for_directory(&mut p, "pod corp-directory-0: container slapd is waiting: CrashLoopBackOff");
        assert!(p.create.is_none() && !p.done);
        assert_eq!(statuses(&p)[0], ("SchemaPrepared", false, "WaitingForDirectory"));
        assert!(p.conditions[0].message.contains("CrashLoopBackOff"), "{}", p.conditions[0].message);
        // Once prepared, a directory restart holds nothing back.
        let observed =
            BTreeMap::from([succeeded(&d, Step::Schema), succeeded(&d, Step::Enterprise), succeeded(&d, Step::Domain)]);
        let mut p = sequence(&owner(&d), &resolved(&d), &observed, &[]).unwrap();
        hold_for_directory(&mut p, "restarting");
        assert!(p.done && p.conditions.iter().all(|w| w.status));

        d.spec.directory = DirectorySpec {
            file: Some(FileDirectory { config_map: "users".into(), key: "users.toml".into() }),
            ..Default::default()
        };
        let p = sequence(&owner(&d), &resolved(&d), &BTreeMap::new(), &[]).unwrap();
        assert!(p.done && p.create.is_none() && p.conditions.iter().all(|w| w.status && w.reason == "NotNeeded"));
        assert!(service_account_secret_ref(&d).is_none());
    }
}
