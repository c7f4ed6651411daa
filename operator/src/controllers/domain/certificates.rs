//! The domain's certificates on the API server: the operator's own CA and server certificates
//! (decided by [`build::certificates`]), or cert-manager Certificates when `spec.tls.issuerRef` is set.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Resource, ResourceExt};

use super::super::apply::{ApplySet, Outcome};
use super::super::conditions::Want;
use super::super::{Context, Error, Result};
use crate::build::certificates::{self as certs, CaAction, LeafAction};
use crate::build::{BuildError, MANAGED_BY, Owner};
use crate::crd::condition::CERTIFICATES_READY;
use crate::crd::{CommunicationsDomain, ResolvedDomain};

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

/// Makes sure every certificate of `resolved`'s plan is in its Secret. `d` is the domain the
/// Events are about.
pub async fn reconcile(
    ctx: &Context,
    set: &mut ApplySet<'_, CommunicationsDomain>,
    d: &CommunicationsDomain,
    owner: &Owner,
    resolved: &ResolvedDomain,
    now: Timestamp,
) -> Result<CertOutcome> {
    let ns = &owner.namespace;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(issuer) = &resolved.certificate_issuer {
        return cert_manager(ctx, set, d, owner, resolved, issuer, now).await;
    }
    let uid = owner.reference.uid.clone();
    let name = owner.name.clone();

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
            set.apply_quietly(&certs::ca_secret(owner, &ca)).await?;
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
    for cert in &resolved.certificates {
        let secret_name = cert.secret.clone();
        let live = secrets.get_opt(&secret_name).await?;
        if let Some(s) = live.as_ref().filter(|s| !ours(*s, &uid)) {
            // A certificate the administrator provides is theirs to renew.
            any_provided = true;
            held.push((secret_name, s.data.clone()));
            continue;
        }
        let existing = live.and_then(|s| s.data);
        let (data, action) =
            certs::reconcile_leaf(existing.as_ref(), &ca, &cert.server, &cert.names, now).map_err(BuildError::from)?;
        if action == LeafAction::Keep {
            set.keep::<Secret>(&secret_name);
        } else {
            set.apply_quietly(&certs::leaf_secret(owner, cert, data.clone())).await?;
            let note = match &action {
                LeafAction::Issue(why) => {
                    format!("issued the certificate of {} (Secret {secret_name}): {why}", cert.server)
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
    set: &mut ApplySet<'_, CommunicationsDomain>,
    d: &CommunicationsDomain,
    owner: &Owner,
    resolved: &ResolvedDomain,
    issuer: &crate::crd::IssuerRef,
    now: Timestamp,
) -> Result<CertOutcome> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let mut held = Vec::new();
    for cert in &resolved.certificates {
        let desired = certs::cert_manager_certificate(owner, cert, issuer);
        match set.apply_dynamic(&certs::cert_manager_certificate_resource(), &desired).await {
            Ok(Outcome::Unchanged) => {}
            Ok(out) => {
                let verb = if out == Outcome::Created { "created" } else { "updated" };
                let note = format!(
                    "{verb} cert-manager Certificate {} (issuer {} {})",
                    cert.server,
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
        let live = secrets.get_opt(&cert.secret).await?;
        if live.is_some() {
            // cert-manager fills it; one the operator issued before stays until cert-manager does.
            set.keep::<Secret>(&cert.secret);
        }
        held.push((cert.secret.clone(), live.and_then(|s| s.data)));
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
