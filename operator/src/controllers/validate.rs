//! Checks of a spec that need no client. The CRDs' schemas and CEL rules already refuse most of
//! these at admission; the operator checks again because objects may predate a CRD upgrade and
//! not every API server evaluates CEL.

use crate::build::quantity;
use crate::crd::{CommunicationsDomain, FrontEnd, HomeServer, ResolvedDomain, Topology};
use crate::tiers::USERS_PER_HOME_SERVER;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a SIP domain the CRD's pattern would accept.
pub fn is_sip_domain(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| is_dns_label(l))
        && labels.last().is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_lowercase()))
}

/// Problems with a domain's spec, in words for its status.
pub fn domain(d: &CommunicationsDomain) -> Vec<String> {
    let s = &d.spec;
    let mut problems = Vec::new();
    if !is_sip_domain(&s.sip_domain) {
        problems.push(format!("sipDomain {:?} is not a lowercase DNS name such as example.test", s.sip_domain));
    }
    if s.users == 0 {
        problems.push("users must be at least 1".into());
    }
    if s.topology == Topology::Manual && (s.home_servers.is_some() || s.front_end.is_some()) {
        problems.push("homeServers and frontEnd need topology: auto".into());
    }
    if let Some(n) = s.home_servers
        && u64::from(n) * USERS_PER_HOME_SERVER < u64::from(s.users)
    {
        problems.push(format!("{n} Home Server(s) cannot hold {} users (at most 10,000 each)", s.users));
    }
    let d = &s.directory;
    if [d.ldap.is_some(), d.file.is_some(), d.managed.is_some()].iter().filter(|b| **b).count() != 1 {
        problems.push("directory needs exactly one of ldap, file or managed".into());
    }
    problems
}

fn check_quantity(problems: &mut Vec<String>, what: &str, q: &str) {
    if quantity::parse(q).is_none() {
        problems.push(format!("{what} {q:?} is not a quantity"));
    }
}

/// Problems with a HomeServer's spec.
pub fn home_server(hs: &HomeServer) -> Vec<String> {
    let mut problems = Vec::new();
    if hs.spec.capacity.is_some_and(|c| u64::from(c) > USERS_PER_HOME_SERVER) {
        problems.push("capacity is at most 10,000 users".into());
    }
    for (k, q) in hs.spec.resources.iter().flat_map(|r| r.limits.iter().chain(r.requests.iter())).flatten() {
        check_quantity(&mut problems, &format!("resources {k}"), &q.0);
    }
    if let Some(st) = &hs.spec.storage {
        for (what, q) in [("storage.dataSize", &st.data_size), ("storage.logsSize", &st.logs_size)] {
            if let Some(q) = q {
                check_quantity(&mut problems, what, &q.0);
            }
        }
    }
    problems
}

/// Problems with a FrontEnd's spec.
pub fn front_end(fe: &FrontEnd) -> Vec<String> {
    let mut problems = Vec::new();
    if fe.spec.ports.sip == fe.spec.ports.sip_tls {
        problems.push("ports.sip and ports.sipTls must differ".into());
    }
    if fe.spec.replicas.is_some_and(|r| r < 1) {
        problems.push("replicas must be at least 1".into());
    }
    for (k, q) in fe.spec.resources.iter().flat_map(|r| r.limits.iter().chain(r.requests.iter())).flatten() {
        check_quantity(&mut problems, &format!("resources {k}"), &q.0);
    }
    problems
}

/// The domain's resolved settings (`status.resolved`) for the server `server`, or why the server
/// waits: the domain controller has not resolved the domain yet (or finds its spec invalid), or
/// its certificate plan does not cover `server` yet (a HomeServer or FrontEnd just written).
pub fn resolved_for<'a>(domain: &'a CommunicationsDomain, server: &str) -> Result<&'a ResolvedDomain, String> {
    use crate::crd::condition::READY;
    let name = domain.metadata.name.as_deref().unwrap_or_default();
    let status = domain.status.as_ref();
    let Some(resolved) = status.and_then(|s| s.resolved.as_ref()) else {
        let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
        return Err(match ready {
            Some(c) if c.reason == "InvalidSpec" => {
                format!("waiting for CommunicationsDomain {name}, whose spec is invalid: {}", c.message)
            }
            _ => format!("waiting for CommunicationsDomain {name} to resolve its settings (status.resolved)"),
        });
    };
    if resolved.certificate_secret(server).is_none() {
        return Err(format!("waiting for CommunicationsDomain {name} to plan the certificate of {server}"));
    }
    Ok(resolved)
}

/// Why a domain's workloads must wait: a directory (anything but a users file) is prepared first,
/// as the seed requires preparation before installation. Holds for Home Servers and Front-Ends
/// an administrator writes (topology manual) as for the operator's own.
pub fn waits_for_directory(domain: &crate::crd::CommunicationsDomain) -> Option<String> {
    use crate::crd::condition::DOMAIN_PREPARED;
    if domain.spec.directory.file.is_some() {
        return None;
    }
    let conditions = domain.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    if super::conditions::is_true(conditions, DOMAIN_PREPARED) {
        return None;
    }
    let why = conditions.iter().find(|c| c.type_ == DOMAIN_PREPARED).map(|c| c.message.clone()).unwrap_or_default();
    Some(format!(
        "waiting for CommunicationsDomain {} to prepare its directory (DomainPrepared){}",
        domain.metadata.name.as_deref().unwrap_or_default(),
        if why.is_empty() { String::new() } else { format!(": {why}") }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::build::quantity::q;

    #[test]
    fn workloads_wait_for_a_prepared_directory_but_not_for_a_users_file() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        let mut d = fixtures::domain("corp", 500);
        let why = waits_for_directory(&d).expect("an LDAP domain not yet prepared waits");
        assert!(why.contains("corp") && why.contains("DomainPrepared"), "{why}");
        let condition = |status: &str, message: &str| Condition {
            type_: "DomainPrepared".into(),
            status: status.into(),
            reason: "R".into(),
            message: message.into(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
            observed_generation: None,
        };
        d.status = Some(Default::default());
        d.status.as_mut().unwrap().conditions = vec![condition("False", "Job corp-prep-domain failed: bind refused")];
        assert!(waits_for_directory(&d).unwrap().contains("bind refused"));
        d.status.as_mut().unwrap().conditions = vec![condition("True", "")];
        assert_eq!(waits_for_directory(&d), None);
        d.status = None;
        d.spec.directory = serde_json::from_value(serde_json::json!({"file": {"configMap": "u"}})).unwrap();
        assert_eq!(waits_for_directory(&d), None, "a users file needs no preparation");
    }

    #[test]
    fn servers_wait_for_the_resolved_domain_and_their_certificate() {
        let mut d = fixtures::domain("corp", 500);
        assert!(resolved_for(&d, "corp-home-1").unwrap_err().contains("status.resolved"));
        d.status = Some(crate::crd::CommunicationsDomainStatus {
            resolved: Some(fixtures::resolved(&d)),
            ..Default::default()
        });
        assert_eq!(resolved_for(&d, "corp-home-1").unwrap().tier, crate::tiers::Tier::Small);
        assert!(resolved_for(&d, "mine").unwrap_err().contains("certificate of mine"));
    }

    #[test]
    fn sip_domains() {
        for ok in ["example.test", "a.b.example.org", "x-1.io"] {
            assert!(is_sip_domain(ok), "{ok}");
        }
        for bad in ["example", "Example.test", "-a.test", "a..test", "a.1test", "a_b.test", ""] {
            assert!(!is_sip_domain(bad), "{bad}");
        }
    }

    #[test]
    fn domain_problems() {
        let mut d = fixtures::domain("corp", 25_000);
        assert!(domain(&d).is_empty());
        d.spec.home_servers = Some(2);
        assert!(domain(&d)[0].contains("cannot hold"));
        d.spec.home_servers = None;
        d.spec.topology = Topology::Manual;
        d.spec.front_end = Some(Default::default());
        assert!(domain(&d)[0].contains("topology: auto"));
        d.spec.front_end = None;
        d.spec.directory.ldap = None;
        assert!(domain(&d)[0].contains("exactly one"));
    }

    #[test]
    fn home_server_and_front_end_problems() {
        let mut hs = fixtures::home_server("h", "d");
        hs.spec.capacity = Some(20_000);
        hs.spec.storage = Some(crate::crd::StorageOverrides { data_size: Some(q("lots")), ..Default::default() });
        assert_eq!(home_server(&hs).len(), 2);
        let mut fe = fixtures::front_end("f", "d");
        assert!(front_end(&fe).is_empty());
        fe.spec.ports.sip_tls = fe.spec.ports.sip;
        assert_eq!(front_end(&fe).len(), 1);
    }
}
