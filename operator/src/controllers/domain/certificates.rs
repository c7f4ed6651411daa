//! The domain's certificates on the API server: the operator's own CA and server certificates
//! (decided by [`build::certificates`]), or cert-manager Certificates when `spec.tls.issuerRef` is set.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};

use super::super::apply::{ApplySet, Outcome, reapply_reason, stamped};
use super::super::conditions::Want;
use super::super::{Context, Error, Result};
use crate::build::certificates::{self as certs, CaAction, LeafAction, ServerNames};
use crate::build::home_server::client_service_name;
use crate::build::{BuildError, FIELD_MANAGER, MANAGED_BY, tls_secret_name};
use crate::crd::CommunicationsDomain;
use crate::crd::condition::CERTIFICATES_READY;

/// A server that needs a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    /// A Home Server: a StatefulSet pod `<name>-0` with its own DNS name and a client Service.
    pub home: bool,
    /// The host it advertises (`spec.advertise`), when set.
    pub advertise: Option<String>,
}

/// The `CertificatesReady` verdict and when to look again.
pub struct CertOutcome {
    pub want: Want,
    pub next_check: Option<Timestamp>,
    /// Every certificate Secret the domain has was looked at (and applied or kept in the set):
    /// false when an unusable CA or a missing cert-manager stopped the step early.
    pub complete: bool,
    /// When each certificate that was looked at expires, by Secret (the CA's too).
    pub expiries: Vec<(String, Timestamp)>,
}

impl CertOutcome {
    fn stopped(want: Want) -> Self {
        Self { want, next_check: None, complete: false, expiries: Vec::new() }
    }
}

/// Whether this domain made `obj`: controlled by it, or (before owner references) labelled as ours.
fn ours<K: Resource>(obj: &K, uid: &str) -> bool {
    let controller = obj.owner_references().iter().find(|o| o.controller == Some(true));
    match controller {
        Some(o) => o.uid == uid,
        None => obj.labels().get("app.kubernetes.io/managed-by").map(String::as_str) == Some(MANAGED_BY),
    }
}

fn sans(d: &CommunicationsDomain, ns: &str, cluster_domain: &str, server: &Server) -> Vec<String> {
    ServerNames {
        sip_domain: &d.spec.sip_domain,
        service: &server.name,
        other_services: if server.home { vec![client_service_name(&server.name)] } else { vec![] },
        namespace: ns,
        cluster_domain,
        pod_hostnames: if server.home { vec![format!("{}-0", server.name)] } else { vec![] },
        advertise: server.advertise.as_deref(),
    }
    .sans()
}

/// Makes sure every server of `servers` has its `<name>-tls` Secret.
pub async fn reconcile(
    ctx: &Context,
    set: &mut ApplySet<'_, CommunicationsDomain>,
    d: &CommunicationsDomain,
    ns: &str,
    servers: &[Server],
    now: Timestamp,
) -> Result<CertOutcome> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(issuer) = d.spec.tls.issuer() {
        return cert_manager(ctx, d, ns, servers, issuer, &secrets, now).await;
    }
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let name = d.name_any();

    // The CA. One the administrator put in place is used as it is, never rotated or replaced.
    let live_ca = secrets.get_opt(&certs::ca_secret_name(&name)).await?;
    let provided_ca = live_ca.as_ref().is_some_and(|s| !ours(s, &uid));
    let ca_data = live_ca.and_then(|s| s.data);
    let ca = if provided_ca {
        match certs::Ca::from_secret_data(ca_data.as_ref().unwrap_or(&BTreeMap::new())) {
            Ok(ca) => ca,
            Err(e) => {
                let msg =
                    format!("Secret {} was not made by Parley and is unusable: {e}", certs::ca_secret_name(&name));
                return Ok(CertOutcome::stopped(Want::new(CERTIFICATES_READY, false, "CaUnusable", msg)));
            }
        }
    } else {
        let (ca, action) =
            certs::reconcile_ca(&format!("{ns}/{name}"), ca_data.as_ref(), now).map_err(BuildError::from)?;
        if action == CaAction::Keep {
            set.keep::<Secret>(&certs::ca_secret_name(&name));
        } else {
            set.apply_quietly(&certs::ca_secret(d, &ca)?).await?;
            let note = match &action {
                CaAction::Create(why) => format!("created the domain's CA: {why}"),
                CaAction::Rotate => format!(
                    "rotated the domain's CA; the previous one stays trusted until {}",
                    ca.overlap_ends().unwrap_or(now)
                ),
                CaAction::DropPrevious => "the previous CA is no longer trusted (the rotation overlap ended)".into(),
                CaAction::Keep => String::new(),
            };
            ctx.event(d, false, "CertificateAuthority", "Certificates", note).await;
        }
        ca
    };

    let mut held: Vec<(String, Option<BTreeMap<String, ByteString>>)> = Vec::new();
    let mut any_provided = false;
    for server in servers {
        let secret_name = tls_secret_name(&server.name);
        let live = secrets.get_opt(&secret_name).await?;
        if let Some(s) = live.as_ref().filter(|s| !ours(*s, &uid)) {
            // A certificate the administrator provides is theirs to renew.
            any_provided = true;
            held.push((secret_name, s.data.clone()));
            continue;
        }
        let existing = live.and_then(|s| s.data);
        let names = sans(d, ns, &ctx.settings.cluster_domain, server);
        let (data, action) =
            certs::reconcile_leaf(existing.as_ref(), &ca, &server.name, &names, now).map_err(BuildError::from)?;
        if action == LeafAction::Keep {
            set.keep::<Secret>(&secret_name);
        } else {
            set.apply_quietly(&certs::leaf_secret(d, &server.name, data.clone())?).await?;
            let note = match &action {
                LeafAction::Issue(why) => {
                    format!("issued the certificate of {} (Secret {secret_name}): {why}", server.name)
                }
                _ => format!("updated the trusted CAs (ca.crt) in Secret {secret_name}"),
            };
            ctx.event(d, false, "Issued", "Certificates", note).await;
        }
        held.push((secret_name, Some(data)));
    }
    let view: Vec<(String, Option<&BTreeMap<String, ByteString>>)> =
        held.iter().map(|(n, d)| (n.clone(), d.as_ref())).collect();
    let r = certs::readiness(&view, !any_provided, now);
    let next = certs::next_check(&ca, held.iter().filter_map(|(_, d)| d.as_ref()));
    let mut expiries = vec![(certs::ca_secret_name(&name), ca.info().not_after)];
    expiries.extend(expiries_of(&held));
    Ok(CertOutcome {
        want: Want::new(CERTIFICATES_READY, r.ready, r.reason, r.message),
        next_check: Some(next),
        complete: true,
        expiries,
    })
}

/// cert-manager fills the Secrets; the operator writes one Certificate per server and waits.
async fn cert_manager(
    ctx: &Context,
    d: &CommunicationsDomain,
    ns: &str,
    servers: &[Server],
    issuer: &crate::crd::IssuerRef,
    secrets: &Api<Secret>,
    now: Timestamp,
) -> Result<CertOutcome> {
    let ar = certs::cert_manager_certificate_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let mut held = Vec::new();
    for server in servers {
        let names = sans(d, ns, &ctx.settings.cluster_domain, server);
        let desired = certs::cert_manager_certificate(d, &server.name, &names, issuer)?;
        match apply_dynamic(&api, &desired, &uid).await {
            Ok(Outcome::Unchanged) => {}
            Ok(out) => {
                let verb = if out == Outcome::Created { "created" } else { "updated" };
                let note = format!(
                    "{verb} cert-manager Certificate {} (issuer {} {})",
                    server.name,
                    issuer_kind(issuer),
                    issuer.name
                );
                ctx.event(d, false, if out == Outcome::Created { "Created" } else { "Updated" }, "Apply", note).await;
            }
            Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => {
                let msg = "spec.tls.issuerRef names a cert-manager issuer, but cert-manager's Certificate kind \
                           (certificates.cert-manager.io/v1) is not installed in the cluster";
                return Ok(CertOutcome::stopped(Want::new(CERTIFICATES_READY, false, "CertManagerMissing", msg)));
            }
            Err(e) => return Err(e),
        }
        let secret_name = tls_secret_name(&server.name);
        held.push((secret_name.clone(), secrets.get_opt(&secret_name).await?.and_then(|s| s.data)));
    }
    let view: Vec<(String, Option<&BTreeMap<String, ByteString>>)> =
        held.iter().map(|(n, d)| (n.clone(), d.as_ref())).collect();
    let r = certs::readiness(&view, false, now);
    let (reason, message) = if r.ready {
        (r.reason, r.message)
    } else {
        (
            "WaitingForCertManager",
            format!("waiting for cert-manager ({} {}): {}", issuer_kind(issuer), issuer.name, r.message),
        )
    };
    Ok(CertOutcome {
        want: Want::new(CERTIFICATES_READY, r.ready, reason, message),
        next_check: None,
        // cert-manager makes and owns these Secrets; none of them is the domain's to keep.
        complete: true,
        expiries: expiries_of(&held),
    })
}

/// When the certificate in each Secret of `held` expires, for those that hold a readable one.
fn expiries_of(held: &[(String, Option<BTreeMap<String, ByteString>>)]) -> Vec<(String, Timestamp)> {
    held.iter().filter_map(|(name, data)| Some((name.clone(), certs::leaf_expiry(data.as_ref()?)?))).collect()
}

fn issuer_kind(issuer: &crate::crd::IssuerRef) -> &'static str {
    match issuer.kind {
        crate::crd::IssuerKind::Issuer => "Issuer",
        crate::crd::IssuerKind::ClusterIssuer => "ClusterIssuer",
    }
}

/// Server-side apply of a dynamic object, skipped when it is what we applied last and all of it is
/// still ours (the same rule as [`apply`], which needs a statically typed kind).
async fn apply_dynamic(api: &Api<DynamicObject>, desired: &DynamicObject, uid: &str) -> Result<Outcome> {
    let name = desired.name_any();
    let want = stamped(desired)?;
    let live = api.get_opt(&name).await?;
    if let Some(live) = &live {
        if let Some(o) = live.owner_references().iter().find(|o| o.controller == Some(true) && o.uid != uid) {
            return Err(Error::NotOwned { kind: "Certificate".into(), name, owner: format!("{} {}", o.kind, o.name) });
        }
        if reapply_reason(&serde_json::to_value(live)?, &want).is_none() {
            return Ok(Outcome::Unchanged);
        }
    }
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&want)).await?;
    Ok(if live.is_some() { Outcome::Updated } else { Outcome::Created })
}
