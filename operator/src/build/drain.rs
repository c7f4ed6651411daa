//! The Job that drains a Home Server (`spec.drain`): `parley-server user drain`, which moves each
//! user homed there, with their contact list, rules and bindings, to the Home Server with the most
//! free capacity.

use k8s_openapi::api::batch::v1::Job;

use super::credentials::api_token_secret_name;
use super::prep::{DirectoryJob, directory_job, read_only, secret_volume};
use super::{BuildError, Owner, paths};
use crate::crd::ResolvedDomain;

/// The `app.kubernetes.io/component` of drain Jobs (the Home Servers' NetworkPolicy admits them).
pub const DRAIN_COMPONENT: &str = "user-drain";

/// A drain moves users one by one; a large Home Server takes a while, a stuck one fails.
pub const DRAIN_DEADLINE_SECONDS: i64 = 6 * 3600;

/// Name of the Job draining the Home Server `home_server`.
pub fn job_name(home_server: &str) -> String {
    format!("{home_server}-drain")
}

/// The Job draining the HomeServer `owner` of `domain` (named `domain_name`).
pub fn job(owner: &Owner, domain_name: &str, domain: &ResolvedDomain) -> Result<Job, BuildError> {
    let token = secret_volume("api-token", &api_token_secret_name(domain_name), "token", "token");
    let args = ["user", "drain", "--home-server", &owner.name, "--admin-token-file", paths::API_TOKEN];
    directory_job(
        owner,
        domain,
        DirectoryJob {
            name: job_name(&owner.name),
            domain: domain_name,
            component: DRAIN_COMPONENT,
            args: args.iter().map(|a| a.to_string()).collect(),
            extra: vec![(token, read_only("api-token", paths::API_TOKEN_DIR))],
            deadline_seconds: DRAIN_DEADLINE_SECONDS,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;

    #[test]
    fn the_drain_job_moves_the_home_servers_users_as_the_directorys_administrator() {
        let d = fixtures::domain("corp", 25_000);
        let hs = fixtures::home_server("corp-home-3", "corp");
        let owner = Owner::of(&hs, "HomeServer").unwrap();
        let job = job(&owner, "corp", &fixtures::resolved(&d)).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("corp-home-3-drain"));
        let o = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((o.kind.as_str(), o.name.as_str()), ("HomeServer", "corp-home-3"));
        assert_eq!(job.metadata.labels.as_ref().unwrap()[super::super::DOMAIN_LABEL], "corp");
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.args.as_ref().unwrap()[..6],
            ["user", "drain", "--home-server", "corp-home-3", "--admin-token-file", paths::API_TOKEN]
        );
        let env: Vec<_> = c.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert!(env.contains(&"PARLEY_LDAP_BIND_PASSWORD_FILE") && env.contains(&"PARLEY_LDAP_URL"), "{env:?}");
        let token = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "api-token").unwrap();
        assert_eq!(token.secret.as_ref().unwrap().secret_name.as_deref(), Some("corp-api-token"));
        assert!(c.volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == paths::API_TOKEN_DIR));
    }
}
