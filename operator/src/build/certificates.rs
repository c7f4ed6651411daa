//! Certificates of a domain, operator-managed: a CA per CommunicationsDomain (Secret `<domain>-ca`)
//! and a server certificate per Home Server and Front-End (Secret `<name>-tls`).
//!
//! Everything here is pure: the existing Secret data (or none) and `now` go in, a decision and the
//! Secret to apply come out, so renewal and rotation are tested without an API server or a clock.
//!
//! Choices:
//! - One certificate per server serves both directions of the internal mutual-TLS link: it carries
//!   the serverAuth and clientAuth EKUs, so a Front-End presents the same certificate to a Home
//!   Server as it presents to clients. One Secret per server, one file pair to reload; the link is
//!   authenticated by "signed by the domain's CA", which both kinds of use need anyway.
//! - Leaves live [`LEAF_LIFETIME`] and are renewed at two thirds of it; the CA lives
//!   [`CA_LIFETIME`] and is rotated at two thirds of it. A rotation keeps the previous CA in the
//!   trust bundle (`ca.crt`) for [`CA_OVERLAP`]. Leaves signed by the previous CA are re-issued only
//!   [`BUNDLE_PROPAGATION`] after the rotation, so that every pod trusts the new CA before any peer
//!   presents a certificate signed by it.
//! - Secret files are updated in place; a pod sees the new files when the kubelet refreshes the
//!   Secret volume. Picking them up without a restart is the server's job (it re-reads its TLS
//!   files); the workload builders do not roll the pods for a renewal.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::{BuildError, DOMAIN_LABEL, MANAGED_BY, Owner};
use crate::crd::{IssuerKind, IssuerRef, ServerCertificate};

/// Lifetime of a server certificate.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of the domain's CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// How long the previous CA stays in the trust bundle after a rotation: long enough for every
/// leaf to be re-issued and reloaded even if the operator was down for a while.
pub const CA_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long after a CA rotation leaves signed by the previous CA are kept: the kubelet refreshes
/// Secret volumes within about a minute, so after this every pod trusts both CAs.
pub const BUNDLE_PROPAGATION: Duration = Duration::from_secs(10 * 60);
/// Certificates start this long before they are issued, for clocks slightly behind ours.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Keys of the CA Secret and of the server Secrets.
pub mod keys {
    /// The trust bundle: the current CA first, then the previous one during an overlap.
    pub const CA_CRT: &str = "ca.crt";
    /// The current CA's private key (CA Secret only).
    pub const CA_KEY: &str = "ca.key";
    pub const TLS_CRT: &str = "tls.crt";
    pub const TLS_KEY: &str = "tls.key";
}

/// Name of the Secret holding the domain's CA.
pub fn ca_secret_name(domain: &str) -> String {
    format!("{domain}-ca")
}

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(String),
    #[error("{0}")]
    Unreadable(String),
}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError::Generate(e.to_string())
    }
}

impl From<CertError> for BuildError {
    fn from(e: CertError) -> Self {
        BuildError::Certificate(e.to_string())
    }
}

/// What the operator needs to know of a certificate it reads back from a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// DNS and IP subject alternative names, as text.
    pub sans: BTreeSet<String>,
    pub is_ca: bool,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    public_key: Vec<u8>,
    der: Vec<u8>,
}

impl CertInfo {
    /// When a certificate is due for renewal: two thirds into its lifetime.
    pub fn renew_at(&self) -> Timestamp {
        let life = self.not_after.as_second() - self.not_before.as_second();
        ts(self.not_before.as_second() + life * 2 / 3)
    }

    /// Whether `issuer` signed this certificate (names match and the signature verifies).
    fn signed_by(&self, issuer: &CertInfo) -> bool {
        if self.issuer != issuer.subject {
            return false;
        }
        let (Ok((_, me)), Ok((_, ca))) =
            (x509_parser::parse_x509_certificate(&self.der), x509_parser::parse_x509_certificate(&issuer.der))
        else {
            return false;
        };
        me.verify_signature(Some(ca.public_key())).is_ok()
    }
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or(Timestamp::MAX)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    ts(t.as_second().saturating_add(d.as_secs() as i64))
}

fn minus(t: Timestamp, d: Duration) -> Timestamp {
    ts(t.as_second().saturating_sub(d.as_secs() as i64))
}

/// Sets the validity of `params` (rcgen takes `time` values; the operator works in jiff).
fn set_validity(params: &mut CertificateParams, from: Timestamp, to: Timestamp) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(from.as_second().max(0) as u64);
    params.not_after = epoch + Duration::from_secs(to.as_second().max(0) as u64);
}

/// Parses every certificate of a PEM text (a bundle holds several).
pub fn parse_pem(pem: &str) -> Result<Vec<CertInfo>, CertError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CertError::Unreadable(format!("not PEM: {e}")))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block.parse_x509().map_err(|e| CertError::Unreadable(format!("not a certificate: {e}")))?;
        let mut sans = BTreeSet::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        sans.insert(d.to_string());
                    }
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).map(IpAddr::from).ok(),
                            16 => <[u8; 16]>::try_from(*b).map(IpAddr::from).ok(),
                            _ => None,
                        };
                        sans.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        out.push(CertInfo {
            not_before: ts(cert.validity().not_before.timestamp()),
            not_after: ts(cert.validity().not_after.timestamp()),
            is_ca: cert.is_ca(),
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            der: block.contents.clone(),
            sans,
        });
    }
    if out.is_empty() {
        return Err(CertError::Unreadable("no certificate in the PEM text".into()));
    }
    Ok(out)
}

/// Splits a PEM bundle into its certificate blocks (each ending with a newline).
fn pem_blocks(pem: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    pem.split_inclusive(END)
        .filter_map(|b| b.find("-----BEGIN CERTIFICATE-----").map(|i| format!("{}\n", &b[i..])))
        .filter(|b| b.trim_end().ends_with(END))
        .collect()
}

fn text<'a>(data: &'a BTreeMap<String, ByteString>, key: &str) -> Result<&'a str, CertError> {
    let v = data.get(key).ok_or_else(|| CertError::Unreadable(format!("no {key}")))?;
    std::str::from_utf8(&v.0).map_err(|_| CertError::Unreadable(format!("{key} is not text")))
}

fn key_matches(key_pem: &str, cert: &CertInfo) -> Result<KeyPair, CertError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Unreadable(format!("unreadable key: {e}")))?;
    if key.public_key_raw() != cert.public_key.as_slice() {
        return Err(CertError::Unreadable("the key does not belong to the certificate".into()));
    }
    Ok(key)
}

/// The domain's CA: the current one signs, the previous one (during an overlap) is only trusted.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    info: CertInfo,
    /// PEM blocks of earlier CAs still trusted.
    previous: Vec<(String, CertInfo)>,
}

impl fmt::Debug for Ca {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").field("info", &self.info).field("previous", &self.previous.len()).finish()
    }
}

impl Ca {
    /// A new CA for `domain` (shown in its subject) valid from `now` for [`CA_LIFETIME`].
    pub fn generate(domain: &str, now: Timestamp) -> Result<Ca, CertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Parley");
        // The issue time makes each generation's name unique, so chains never mix CAs.
        dn.push(DnType::CommonName, format!("Parley CA {domain} {}", now.as_second()));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, minus(now, BACKDATE), plus(now, CA_LIFETIME));
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        let info = parse_pem(&cert_pem)?.remove(0);
        Ok(Ca { cert_pem, key_pem: key.serialize_pem(), info, previous: Vec::new() })
    }

    /// The CA as its Secret holds it: `ca.crt` (signing CA first, then the ones still trusted) and `ca.key`.
    pub fn from_secret_data(data: &BTreeMap<String, ByteString>) -> Result<Ca, CertError> {
        let bundle = text(data, keys::CA_CRT)?;
        let key_pem = text(data, keys::CA_KEY)?.to_string();
        let mut blocks = pem_blocks(bundle).into_iter();
        let cert_pem = blocks.next().ok_or_else(|| CertError::Unreadable("no certificate in ca.crt".into()))?;
        let info = parse_pem(&cert_pem)?.remove(0);
        if !info.is_ca {
            return Err(CertError::Unreadable("ca.crt is not a CA certificate".into()));
        }
        key_matches(&key_pem, &info)?;
        let previous = blocks.map(|b| parse_pem(&b).map(|mut i| (b, i.remove(0)))).collect::<Result<_, _>>()?;
        Ok(Ca { cert_pem, key_pem, info, previous })
    }

    /// The Secret data of the CA.
    pub fn secret_data(&self) -> BTreeMap<String, ByteString> {
        BTreeMap::from([
            (keys::CA_CRT.to_string(), ByteString(self.trust_bundle().into_bytes())),
            (keys::CA_KEY.to_string(), ByteString(self.key_pem.clone().into_bytes())),
        ])
    }

    /// Every CA a server trusts: the current one, then the previous one during an overlap.
    pub fn trust_bundle(&self) -> String {
        std::iter::once(self.cert_pem.as_str()).chain(self.previous.iter().map(|(p, _)| p.as_str())).collect()
    }

    /// The signing CA's certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Whether a previous CA is still trusted.
    pub fn in_overlap(&self) -> bool {
        !self.previous.is_empty()
    }

    /// Signs a server certificate named `common_name` for `sans`, valid from `now` for [`LEAF_LIFETIME`].
    /// It carries serverAuth and clientAuth (see the module comment).
    pub fn issue(&self, common_name: &str, sans: &[String], now: Timestamp) -> Result<Leaf, CertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Parley");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => s.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys sign (digitalSignature); keyEncipherment would only apply to RSA.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, minus(now, BACKDATE), plus(now, LEAF_LIFETIME));
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let cert_pem = params.signed_by(&key, &issuer)?.pem();
        Ok(Leaf { cert_pem, key_pem: key.serialize_pem() })
    }

    /// Whether the certificate `leaf` was signed by the current CA.
    pub fn signed(&self, leaf: &CertInfo) -> bool {
        leaf.signed_by(&self.info)
    }

    fn signed_by_previous(&self, leaf: &CertInfo) -> bool {
        self.previous.iter().any(|(_, ca)| leaf.signed_by(ca))
    }

    /// When the CA is rotated: two thirds into its lifetime.
    pub fn rotate_at(&self) -> Timestamp {
        self.info.renew_at()
    }

    /// When the previous CA leaves the trust bundle.
    pub fn overlap_ends(&self) -> Option<Timestamp> {
        self.in_overlap().then(|| {
            let end = plus(self.info.not_before, BACKDATE + CA_OVERLAP);
            self.previous.iter().map(|(_, i)| i.not_after).fold(end, Timestamp::min)
        })
    }

    /// When leaves signed by the previous CA are re-issued.
    fn propagated_at(&self) -> Timestamp {
        plus(self.info.not_before, BACKDATE + BUNDLE_PROPAGATION)
    }
}

/// A server certificate and its key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// What happens to the domain's CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaAction {
    Keep,
    /// No usable CA: a new one (every leaf is then re-issued at once).
    Create(String),
    /// Two thirds into its lifetime: a new CA signs, the old one stays trusted for [`CA_OVERLAP`].
    Rotate,
    /// The overlap is over: the previous CA leaves the bundle.
    DropPrevious,
}

/// Decides what to do with the CA held in `existing` (the CA Secret's data) at `now`, and
/// returns the CA to use from now on.
pub fn reconcile_ca(
    domain: &str,
    existing: Option<&BTreeMap<String, ByteString>>,
    now: Timestamp,
) -> Result<(Ca, CaAction), CertError> {
    let current = match existing.map(Ca::from_secret_data) {
        None => return Ok((Ca::generate(domain, now)?, CaAction::Create("no CA Secret".into()))),
        Some(Err(e)) => return Ok((Ca::generate(domain, now)?, CaAction::Create(format!("the CA is unusable: {e}")))),
        Some(Ok(ca)) => ca,
    };
    if now >= current.info.not_after {
        return Ok((Ca::generate(domain, now)?, CaAction::Create("the CA expired".into())));
    }
    if now >= current.rotate_at() {
        let mut next = Ca::generate(domain, now)?;
        next.previous = vec![(current.cert_pem, current.info)];
        return Ok((next, CaAction::Rotate));
    }
    if current.overlap_ends().is_some_and(|end| now >= end) {
        let Ca { cert_pem, key_pem, info, .. } = current;
        return Ok((Ca { cert_pem, key_pem, info, previous: Vec::new() }, CaAction::DropPrevious));
    }
    Ok((current, CaAction::Keep))
}

/// Why a server certificate is (re-)issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssueReason {
    Missing,
    Unreadable(String),
    /// Two thirds into its lifetime (or expired).
    DueForRenewal,
    SansChanged,
    NotSignedByCurrentCa,
}

impl fmt::Display for IssueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssueReason::Missing => write!(f, "no certificate yet"),
            IssueReason::Unreadable(e) => write!(f, "the certificate is unusable: {e}"),
            IssueReason::DueForRenewal => write!(f, "two thirds of its lifetime have passed"),
            IssueReason::SansChanged => write!(f, "its names changed"),
            IssueReason::NotSignedByCurrentCa => write!(f, "the domain's CA changed"),
        }
    }
}

/// What happens to a server certificate Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeafAction {
    Keep,
    /// The certificate stays; only the trust bundle (`ca.crt`) changes.
    UpdateBundle,
    Issue(IssueReason),
}

/// When the server certificate in a Secret's `data` expires, if it holds a readable one.
pub fn leaf_expiry(data: &BTreeMap<String, ByteString>) -> Option<Timestamp> {
    read_leaf(data).ok().map(|info| info.not_after)
}

fn read_leaf(data: &BTreeMap<String, ByteString>) -> Result<CertInfo, IssueReason> {
    let unreadable = |e: CertError| IssueReason::Unreadable(e.to_string());
    let (crt, key) = match (data.get(keys::TLS_CRT), data.get(keys::TLS_KEY)) {
        (Some(_), Some(_)) => {
            (text(data, keys::TLS_CRT).map_err(unreadable)?, text(data, keys::TLS_KEY).map_err(unreadable)?)
        }
        _ => return Err(IssueReason::Missing),
    };
    let info = parse_pem(crt).map_err(unreadable)?.remove(0);
    key_matches(key, &info).map_err(unreadable)?;
    Ok(info)
}

/// Decides what to do with the server certificate Secret `existing` (its data) that should
/// carry `sans`, signed by `ca`, at `now`.
pub fn decide_leaf(
    existing: Option<&BTreeMap<String, ByteString>>,
    ca: &Ca,
    sans: &[String],
    now: Timestamp,
) -> LeafAction {
    let Some(data) = existing else { return LeafAction::Issue(IssueReason::Missing) };
    let info = match read_leaf(data) {
        Ok(i) => i,
        Err(reason) => return LeafAction::Issue(reason),
    };
    if info.sans != sans.iter().cloned().collect::<BTreeSet<_>>() {
        return LeafAction::Issue(IssueReason::SansChanged);
    }
    if now >= info.renew_at() {
        return LeafAction::Issue(IssueReason::DueForRenewal);
    }
    // Signed by the previous CA just after a rotation: keep it until every pod trusts the new CA.
    let waiting = ca.signed_by_previous(&info) && now < ca.propagated_at();
    if !ca.signed(&info) && !waiting {
        return LeafAction::Issue(IssueReason::NotSignedByCurrentCa);
    }
    let bundle = data.get(keys::CA_CRT).map(|b| b.0.as_slice());
    if bundle == Some(ca.trust_bundle().as_bytes()) { LeafAction::Keep } else { LeafAction::UpdateBundle }
}

/// The data the server certificate Secret should hold, and what was done to get it.
pub fn reconcile_leaf(
    existing: Option<&BTreeMap<String, ByteString>>,
    ca: &Ca,
    common_name: &str,
    sans: &[String],
    now: Timestamp,
) -> Result<(BTreeMap<String, ByteString>, LeafAction), CertError> {
    let action = decide_leaf(existing, ca, sans, now);
    let bundle = ByteString(ca.trust_bundle().into_bytes());
    let data = match (&action, existing) {
        (LeafAction::Keep | LeafAction::UpdateBundle, Some(old)) => BTreeMap::from([
            (keys::TLS_CRT.to_string(), old[keys::TLS_CRT].clone()),
            (keys::TLS_KEY.to_string(), old[keys::TLS_KEY].clone()),
            (keys::CA_CRT.to_string(), bundle),
        ]),
        _ => {
            let leaf = ca.issue(common_name, sans, now)?;
            BTreeMap::from([
                (keys::TLS_CRT.to_string(), ByteString(leaf.cert_pem.into_bytes())),
                (keys::TLS_KEY.to_string(), ByteString(leaf.key_pem.into_bytes())),
                (keys::CA_CRT.to_string(), bundle),
            ])
        }
    };
    Ok((data, action))
}

/// When the certificates need looking at again: the earliest leaf renewal, CA rotation, end of
/// the bundle propagation or of the overlap. The controller requeues at this time.
pub fn next_check<'a>(ca: &Ca, leaves: impl IntoIterator<Item = &'a BTreeMap<String, ByteString>>) -> Timestamp {
    let mut at = ca.rotate_at();
    if let Some(end) = ca.overlap_ends() {
        at = at.min(end).min(ca.propagated_at());
    }
    for data in leaves {
        if let Ok(info) = read_leaf(data) {
            at = at.min(info.renew_at());
        }
    }
    at
}

/// The names a server's certificate covers: the SIP domain, the Service's DNS names, the pods'
/// DNS names (StatefulSet pods behind a headless Service) and the advertised host.
#[derive(Clone, Debug)]
pub struct ServerNames<'a> {
    pub sip_domain: &'a str,
    /// Name of the server's Service (for a Home Server the headless one its pod's DNS name hangs off).
    pub service: &'a str,
    /// Further Services that reach the server (a Home Server's client Service `<name>-sip`).
    pub other_services: Vec<String>,
    pub namespace: &'a str,
    pub cluster_domain: &'a str,
    /// Hostnames of pods with their own DNS records (`<name>-0` for a Home Server), none for a Deployment.
    pub pod_hostnames: Vec<String>,
    /// The host the server advertises in Via/Contact, `host` or `host:port`.
    pub advertise: Option<&'a str>,
}

impl ServerNames<'_> {
    /// The subject alternative names, sorted and without duplicates.
    pub fn sans(&self) -> Vec<String> {
        let dns = |prefix: &str| {
            let ns = self.namespace;
            [
                prefix.to_string(),
                format!("{prefix}.{ns}"),
                format!("{prefix}.{ns}.svc"),
                format!("{prefix}.{ns}.svc.{}", self.cluster_domain),
            ]
        };
        let mut out = BTreeSet::from([self.sip_domain.to_string()]);
        out.extend(dns(self.service));
        for other in &self.other_services {
            out.extend(dns(other));
        }
        for pod in &self.pod_hostnames {
            out.extend(dns(&format!("{pod}.{}", self.service)));
        }
        if let Some(host) = self.advertise.map(strip_port).filter(|h| !h.is_empty()) {
            out.insert(host.to_string());
        }
        out.into_iter().collect()
    }
}

/// `host:port`, `[v6]:port`, `v6` or `host` -> the host.
fn strip_port(advertise: &str) -> &str {
    if let Some(rest) = advertise.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    if advertise.parse::<IpAddr>().is_ok() {
        return advertise;
    }
    advertise.rsplit_once(':').map(|(h, _)| h).unwrap_or(advertise)
}

/// Whether the certificate Secrets are usable, and the earliest expiry among them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub earliest_expiry: Option<Timestamp>,
}

/// Readiness of the server certificate Secrets `secrets` (name, data if it exists) at `now`.
/// `need_bundle`: the Secrets must carry `ca.crt` (operator-managed ones always do; a
/// cert-manager issuer may not provide one).
pub fn readiness(
    secrets: &[(String, Option<&BTreeMap<String, ByteString>>)],
    need_bundle: bool,
    now: Timestamp,
) -> Readiness {
    let mut problems = Vec::new();
    let mut earliest: Option<(Timestamp, &str)> = None;
    for (name, data) in secrets {
        let Some(data) = data else {
            problems.push(format!("Secret {name} does not exist yet"));
            continue;
        };
        match read_leaf(data) {
            Err(IssueReason::Missing) => problems.push(format!("Secret {name} has no tls.crt and tls.key yet")),
            Err(e) => problems.push(format!("Secret {name}: {e}")),
            Ok(info) if info.not_after <= now => {
                problems.push(format!("the certificate in Secret {name} expired at {}", info.not_after))
            }
            Ok(_) if need_bundle && !data.contains_key(keys::CA_CRT) => {
                problems.push(format!("Secret {name} has no ca.crt"))
            }
            Ok(info) => {
                if earliest.is_none_or(|(t, _)| info.not_after < t) {
                    earliest = Some((info.not_after, name));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Readiness {
            ready: false,
            reason: "NotIssued",
            message: problems.join("; "),
            earliest_expiry: earliest.map(|(t, _)| t),
        };
    }
    match earliest {
        None => Readiness {
            ready: true,
            reason: "NoCertificates",
            message: "no server needs a certificate".into(),
            earliest_expiry: None,
        },
        Some((t, name)) => Readiness {
            ready: true,
            reason: "Valid",
            message: format!("{} certificate(s) valid; the earliest expires at {t} (Secret {name})", secrets.len()),
            earliest_expiry: Some(t),
        },
    }
}

fn secret_labels(instance: &str, domain: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "parley"),
        ("app.kubernetes.io/instance", instance),
        ("app.kubernetes.io/component", "certificate"),
        ("app.kubernetes.io/part-of", "parley"),
        ("app.kubernetes.io/managed-by", MANAGED_BY),
        (DOMAIN_LABEL, domain),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The Secret `<domain>-ca` of the domain `owner`: `ca.crt` (the trust bundle, signing CA
/// first) and `ca.key`.
pub fn ca_secret(owner: &Owner, ca: &Ca) -> Secret {
    Secret {
        metadata: owner.meta(ca_secret_name(&owner.name), secret_labels(&owner.name, &owner.name)),
        type_: Some("Opaque".into()),
        data: Some(ca.secret_data()),
        ..Default::default()
    }
}

/// The Secret of `cert` of type `kubernetes.io/tls` with `data` from [`reconcile_leaf`].
pub fn leaf_secret(owner: &Owner, cert: &ServerCertificate, data: BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: owner.meta(cert.secret.clone(), secret_labels(&cert.server, &owner.name)),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// cert-manager's `Certificate` kind (`cert-manager.io/v1`), used without a compile-time dependency.
pub fn cert_manager_certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"), "certificates")
}

/// A cert-manager `Certificate` (named after the server) that makes `issuer` fill the Secret of
/// `cert` with a certificate for its names, with the same lifetime, renewal point and usages as
/// the operator's own.
pub fn cert_manager_certificate(owner: &Owner, cert: &ServerCertificate, issuer: &IssuerRef) -> DynamicObject {
    let server = cert.server.as_str();
    let meta = owner.meta(server.to_string(), secret_labels(server, &owner.name));
    let (ips, dns): (Vec<&String>, Vec<&String>) = cert.names.iter().partition(|s| s.parse::<IpAddr>().is_ok());
    let hours = |d: Duration| format!("{}h", d.as_secs() / 3600);
    let kind = match issuer.kind {
        IssuerKind::Issuer => "Issuer",
        IssuerKind::ClusterIssuer => "ClusterIssuer",
    };
    let mut spec = serde_json::json!({
        "secretName": cert.secret,
        "secretTemplate": {"labels": meta.labels.clone()},
        "commonName": server,
        "dnsNames": dns,
        "duration": hours(LEAF_LIFETIME),
        "renewBefore": hours(LEAF_LIFETIME / 3),
        "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"},
        "usages": ["digital signature", "server auth", "client auth"],
        "issuerRef": {"group": "cert-manager.io", "kind": kind, "name": issuer.name},
    });
    if !ips.is_empty() {
        spec["ipAddresses"] = serde_json::json!(ips);
    }
    let mut obj =
        DynamicObject::new(server, &cert_manager_certificate_resource()).data(serde_json::json!({"spec": spec}));
    obj.metadata = meta;
    obj
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use x509_parser::extensions::ParsedExtension;

    use super::*;
    use crate::build::fixtures;

    const DAY: i64 = 24 * 3600;
    const HOST: &str = "corp-home-1.ns.svc.cluster.local";

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn sans() -> Vec<String> {
        ServerNames {
            sip_domain: "example.test",
            service: "corp-home-1",
            other_services: vec!["corp-home-1-sip".into()],
            namespace: "ns",
            cluster_domain: "cluster.local",
            pod_hostnames: vec!["corp-home-1-0".into()],
            advertise: Some("sip.example.test:5061"),
        }
        .sans()
    }

    fn certificate(names: Vec<String>) -> ServerCertificate {
        ServerCertificate { server: "corp-home-1".into(), secret: "corp-home-1-tls".into(), names }
    }

    fn leaf_data(ca: &Ca, leaf: &Leaf) -> BTreeMap<String, ByteString> {
        BTreeMap::from([
            (keys::TLS_CRT.to_string(), ByteString(leaf.cert_pem.clone().into_bytes())),
            (keys::TLS_KEY.to_string(), ByteString(leaf.key_pem.clone().into_bytes())),
            (keys::CA_CRT.to_string(), ByteString(ca.trust_bundle().into_bytes())),
        ])
    }

    fn bundle_len(data: &BTreeMap<String, ByteString>, key: &str) -> usize {
        parse_pem(std::str::from_utf8(&data[key].0).unwrap()).unwrap().len()
    }

    #[test]
    fn server_names_cover_the_domain_the_service_the_pods_and_the_advertised_host() {
        let names = sans();
        for n in [
            "example.test",
            "corp-home-1",
            "corp-home-1.ns",
            "corp-home-1.ns.svc",
            HOST,
            "corp-home-1-0.corp-home-1.ns.svc.cluster.local",
            "corp-home-1-sip",
            "corp-home-1-sip.ns.svc.cluster.local",
            "sip.example.test",
        ] {
            assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
        }
        assert_eq!(names.len(), 14, "{names:?}");
        let ip = ServerNames { advertise: Some("[2001:db8::1]:5061"), pod_hostnames: vec![], ..names_for("fe") };
        assert!(ip.sans().contains(&"2001:db8::1".to_string()));
        let ip = ServerNames { advertise: Some("192.0.2.7"), ..names_for("fe") };
        assert!(ip.sans().contains(&"192.0.2.7".to_string()));
    }

    fn names_for(service: &'static str) -> ServerNames<'static> {
        ServerNames {
            sip_domain: "example.test",
            service,
            other_services: vec![],
            namespace: "ns",
            cluster_domain: "cluster.local",
            pod_hostnames: vec![],
            advertise: None,
        }
    }

    #[test]
    fn ca_and_leaf_parse_chain_and_carry_the_names_and_key_usages() {
        let now = Timestamp::now();
        let ca = Ca::generate("ns/corp", now).unwrap();
        let mut names = sans();
        names.push("192.0.2.7".into());
        let leaf = ca.issue("corp-home-1", &names, now).unwrap();

        let (_, ca_der) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let ca_x = ca_der.parse_x509().unwrap();
        assert!(ca_x.is_ca());
        let ku = ca_x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());

        let (_, leaf_der) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let x = leaf_der.parse_x509().unwrap();
        assert!(!x.is_ca());
        assert_eq!(x.issuer(), ca_x.subject());
        x.verify_signature(Some(ca_x.public_key())).expect("the leaf chains to the CA");
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth, "serverAuth and clientAuth");
        assert!(x.key_usage().unwrap().unwrap().value.digital_signature());
        let aki = x.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
            _ => None,
        });
        let ski = ca_x.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.clone()),
            _ => None,
        });
        assert_eq!(aki.unwrap().0, ski.unwrap().0);

        let info = parse_pem(&leaf.cert_pem).unwrap().remove(0);
        assert_eq!(info.sans, names.iter().cloned().collect());
        assert!(ca.signed(&info));
        assert_eq!(info.not_after.as_second() - now.as_second(), LEAF_LIFETIME.as_secs() as i64);
        assert!(info.not_before < now, "backdated for clock skew");
        // A CA read back from its Secret signs leaves that chain the same way.
        let back = Ca::from_secret_data(&ca.secret_data()).unwrap();
        let again = parse_pem(&back.issue("x", &names, now).unwrap().cert_pem).unwrap().remove(0);
        assert!(ca.signed(&again));
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(bundle: &str) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        Arc::new(roots)
    }

    fn identity(leaf: &Leaf) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        (chain, PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap())
    }

    /// Runs a mutual-TLS handshake in memory: the server trusts `server_bundle` for client
    /// certificates, the client trusts `client_bundle` and connects to `HOST`.
    fn handshake(server: &Leaf, server_bundle: &str, client: &Leaf, client_bundle: &str) -> Result<(), rustls::Error> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(server_bundle), provider())
            .build()
            .unwrap();
        let (chain, key) = identity(server);
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let (chain, key) = identity(client);
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(client_bundle))
            .with_client_auth_cert(chain, key)
            .unwrap();
        let mut c =
            rustls::ClientConnection::new(Arc::new(client_cfg), ServerName::try_from(HOST.to_string()).unwrap())
                .unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
        // Each flight moves in one direction; a handful of rounds finish any handshake.
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                assert!(s.peer_certificates().is_some_and(|p| !p.is_empty()), "the client presented its certificate");
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn a_server_and_a_client_of_the_domain_complete_a_mutual_tls_handshake() {
        let now = Timestamp::now();
        let ca = Ca::generate("ns/corp", now).unwrap();
        let home = ca.issue("corp-home-1", &sans(), now).unwrap();
        let front = ca.issue("corp-frontend", &names_for("corp-frontend").sans(), now).unwrap();
        handshake(&home, &ca.trust_bundle(), &front, &ca.trust_bundle()).expect("mutual TLS within the domain");
    }

    #[test]
    fn a_client_certificate_from_another_ca_is_refused() {
        let now = Timestamp::now();
        let ca = Ca::generate("ns/corp", now).unwrap();
        let other = Ca::generate("ns/other", now).unwrap();
        let home = ca.issue("corp-home-1", &sans(), now).unwrap();
        let stranger = other.issue("corp-frontend", &names_for("corp-frontend").sans(), now).unwrap();
        // The client trusts the server; only the server's check of the client certificate can fail.
        let err = handshake(&home, &ca.trust_bundle(), &stranger, &ca.trust_bundle()).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err:?}");
        // And a server of another CA is refused by a client of the domain.
        let foreign_home = other.issue("corp-home-1", &sans(), now).unwrap();
        let front = ca.issue("corp-frontend", &names_for("corp-frontend").sans(), now).unwrap();
        assert!(handshake(&foreign_home, &other.trust_bundle(), &front, &ca.trust_bundle()).is_err());
    }

    #[test]
    fn a_leaf_is_renewed_at_two_thirds_of_its_lifetime() {
        let t0 = at(1_800_000_000);
        let ca = Ca::generate("ns/corp", t0).unwrap();
        let leaf = ca.issue("corp-home-1", &sans(), t0).unwrap();
        let data = leaf_data(&ca, &leaf);
        let life = LEAF_LIFETIME.as_secs() as i64;
        let renew = t0.as_second() - BACKDATE.as_secs() as i64 + (life + BACKDATE.as_secs() as i64) * 2 / 3;
        assert_eq!(decide_leaf(Some(&data), &ca, &sans(), at(renew - 1)), LeafAction::Keep);
        assert_eq!(decide_leaf(Some(&data), &ca, &sans(), at(renew)), LeafAction::Issue(IssueReason::DueForRenewal));
        assert_eq!(next_check(&ca, [&data]), at(renew));

        let (kept, action) = reconcile_leaf(Some(&data), &ca, "corp-home-1", &sans(), at(renew - 1)).unwrap();
        assert_eq!((kept, action), (data.clone(), LeafAction::Keep));
        let (renewed, _) = reconcile_leaf(Some(&data), &ca, "corp-home-1", &sans(), at(renew)).unwrap();
        assert_ne!(renewed[keys::TLS_KEY], data[keys::TLS_KEY], "a renewal makes a new key");
        let info = read_leaf(&renewed).unwrap();
        assert_eq!(info.not_after, at(renew + life));
        assert_eq!(decide_leaf(Some(&renewed), &ca, &sans(), at(renew)), LeafAction::Keep);
    }

    #[test]
    fn changed_names_a_foreign_signer_or_broken_data_issue_a_new_certificate() {
        let t0 = at(1_800_000_000);
        let ca = Ca::generate("ns/corp", t0).unwrap();
        let data = leaf_data(&ca, &ca.issue("corp-home-1", &sans(), t0).unwrap());
        let mut more = sans();
        more.push("other.example.test".into());
        assert_eq!(decide_leaf(Some(&data), &ca, &more, t0), LeafAction::Issue(IssueReason::SansChanged));
        // Order of the names does not matter.
        let mut reversed = sans();
        reversed.reverse();
        assert_eq!(decide_leaf(Some(&data), &ca, &reversed, t0), LeafAction::Keep);

        let other = Ca::generate("ns/corp", at(t0.as_second() + 1)).unwrap();
        let foreign = leaf_data(&ca, &other.issue("corp-home-1", &sans(), t0).unwrap());
        assert_eq!(decide_leaf(Some(&foreign), &ca, &sans(), t0), LeafAction::Issue(IssueReason::NotSignedByCurrentCa));

        assert_eq!(decide_leaf(None, &ca, &sans(), t0), LeafAction::Issue(IssueReason::Missing));
        let mut no_key = data.clone();
        no_key.remove(keys::TLS_KEY);
        assert_eq!(decide_leaf(Some(&no_key), &ca, &sans(), t0), LeafAction::Issue(IssueReason::Missing));
        let mut wrong_key = data.clone();
        wrong_key.insert(keys::TLS_KEY.into(), foreign[keys::TLS_KEY].clone());
        assert!(matches!(
            decide_leaf(Some(&wrong_key), &ca, &sans(), t0),
            LeafAction::Issue(IssueReason::Unreadable(_))
        ));
        let mut garbage = data.clone();
        garbage.insert(keys::TLS_CRT.into(), ByteString(b"not a certificate".to_vec()));
        assert!(matches!(decide_leaf(Some(&garbage), &ca, &sans(), t0), LeafAction::Issue(IssueReason::Unreadable(_))));

        let mut stale_bundle = data.clone();
        stale_bundle.insert(keys::CA_CRT.into(), ByteString(other.trust_bundle().into_bytes()));
        assert_eq!(decide_leaf(Some(&stale_bundle), &ca, &sans(), t0), LeafAction::UpdateBundle);
        let (fixed, _) = reconcile_leaf(Some(&stale_bundle), &ca, "corp-home-1", &sans(), t0).unwrap();
        assert_eq!(fixed, data, "only ca.crt changes");
    }

    #[test]
    fn a_missing_expired_or_broken_ca_is_replaced() {
        let t0 = at(1_800_000_000);
        let (ca, action) = reconcile_ca("ns/corp", None, t0).unwrap();
        assert!(matches!(action, CaAction::Create(_)));
        let data = ca.secret_data();
        assert_eq!(reconcile_ca("ns/corp", Some(&data), at(t0.as_second() + DAY)).unwrap().1, CaAction::Keep);
        let end = ca.info().not_after.as_second();
        assert!(matches!(reconcile_ca("ns/corp", Some(&data), at(end)).unwrap().1, CaAction::Create(_)));
        let other = Ca::generate("ns/corp", t0).unwrap();
        let mut mismatched = data.clone();
        mismatched.insert(keys::CA_KEY.into(), other.secret_data()[keys::CA_KEY].clone());
        let (_, action) = reconcile_ca("ns/corp", Some(&mismatched), t0).unwrap();
        assert!(matches!(&action, CaAction::Create(why) if why.contains("does not belong")), "{action:?}");
        // A leaf is not a CA.
        let leaf = ca.issue("x", &sans(), t0).unwrap();
        let not_ca = BTreeMap::from([
            (keys::CA_CRT.to_string(), ByteString(leaf.cert_pem.into_bytes())),
            (keys::CA_KEY.to_string(), ByteString(leaf.key_pem.into_bytes())),
        ]);
        assert!(matches!(reconcile_ca("ns/corp", Some(&not_ca), t0).unwrap().1, CaAction::Create(_)));
    }

    #[test]
    fn a_ca_rotation_keeps_both_cas_trusted_during_the_overlap() {
        let t0 = at(1_800_000_000);
        let old = Ca::generate("ns/corp", t0).unwrap();
        let rotate = old.rotate_at();
        let life = CA_LIFETIME.as_secs() as i64 + BACKDATE.as_secs() as i64;
        assert_eq!(rotate, at(t0.as_second() - BACKDATE.as_secs() as i64 + life * 2 / 3));
        let old_data = old.secret_data();
        let leaf = leaf_data(&old, &old.issue("corp-home-1", &sans(), at(rotate.as_second() - DAY)).unwrap());
        assert_eq!(reconcile_ca("ns/corp", Some(&old_data), at(rotate.as_second() - 1)).unwrap().1, CaAction::Keep);

        let (new, action) = reconcile_ca("ns/corp", Some(&old_data), rotate).unwrap();
        assert_eq!(action, CaAction::Rotate);
        let new_data = new.secret_data();
        assert_eq!(bundle_len(&new_data, keys::CA_CRT), 2, "the bundle carries both CAs");
        assert!(new.trust_bundle().starts_with(new.cert_pem()), "the signing CA comes first");
        assert!(new.trust_bundle().ends_with(old.cert_pem()));

        // Just after the rotation the old leaf stays and only learns the new bundle ...
        let soon = at(rotate.as_second() + 60);
        assert_eq!(decide_leaf(Some(&leaf), &new, &sans(), soon), LeafAction::UpdateBundle);
        let (updated, _) = reconcile_leaf(Some(&leaf), &new, "corp-home-1", &sans(), soon).unwrap();
        assert_eq!(bundle_len(&updated, keys::CA_CRT), 2);
        assert_eq!(updated[keys::TLS_CRT], leaf[keys::TLS_CRT]);
        assert_eq!(next_check(&new, [&updated]), at(rotate.as_second() + BUNDLE_PROPAGATION.as_secs() as i64));
        // ... and is re-issued by the new CA once every pod trusts it.
        let later = at(rotate.as_second() + BACKDATE.as_secs() as i64 + BUNDLE_PROPAGATION.as_secs() as i64);
        assert_eq!(
            decide_leaf(Some(&updated), &new, &sans(), later),
            LeafAction::Issue(IssueReason::NotSignedByCurrentCa)
        );
        let (reissued, _) = reconcile_leaf(Some(&updated), &new, "corp-home-1", &sans(), later).unwrap();
        assert!(new.signed(&read_leaf(&reissued).unwrap()));

        // Read back from its Secret, the rotated CA keeps the previous one until the overlap ends.
        let during = at(rotate.as_second() + DAY);
        let (kept, action) = reconcile_ca("ns/corp", Some(&new_data), during).unwrap();
        assert_eq!(action, CaAction::Keep);
        assert!(kept.in_overlap());
        let end = kept.overlap_ends().unwrap();
        assert_eq!(end, at(rotate.as_second() + CA_OVERLAP.as_secs() as i64));
        let (dropped, action) = reconcile_ca("ns/corp", Some(&new_data), end).unwrap();
        assert_eq!(action, CaAction::DropPrevious);
        assert_eq!(bundle_len(&dropped.secret_data(), keys::CA_CRT), 1);
        assert_eq!(dropped.cert_pem(), new.cert_pem(), "the signing CA stays");
        assert_eq!(decide_leaf(Some(&reissued), &dropped, &sans(), end), LeafAction::UpdateBundle);
    }

    #[test]
    fn during_the_overlap_leaves_of_the_old_and_the_new_ca_talk_to_each_other() {
        let now = Timestamp::now();
        // An old CA due for rotation now, still valid.
        let old = Ca::generate("ns/corp", at(now.as_second() - 4 * 365 * DAY)).unwrap();
        let old_leaf = old.issue("corp-home-1", &sans(), now).unwrap();
        let (new, action) = reconcile_ca("ns/corp", Some(&old.secret_data()), now).unwrap();
        assert_eq!(action, CaAction::Rotate);
        let new_leaf = new.issue("corp-frontend", &names_for("corp-frontend").sans(), now).unwrap();
        let bundle = new.trust_bundle();
        handshake(&old_leaf, &bundle, &new_leaf, &bundle).expect("old server, new client");
        let new_home = new.issue("corp-home-1", &sans(), now).unwrap();
        let old_front = old.issue("corp-frontend", &names_for("corp-frontend").sans(), now).unwrap();
        handshake(&new_home, &bundle, &old_front, &bundle).expect("new server, old client");
        // Without the overlap the old client would be refused.
        assert!(handshake(&new_home, new.cert_pem(), &old_front, &bundle).is_err());
    }

    #[test]
    fn readiness_names_what_is_missing_and_the_earliest_expiry() {
        let t0 = at(1_800_000_000);
        let ca = Ca::generate("ns/corp", t0).unwrap();
        let a = leaf_data(&ca, &ca.issue("a", &sans(), t0).unwrap());
        let b = leaf_data(&ca, &ca.issue("b", &sans(), at(t0.as_second() + DAY)).unwrap());
        let r = readiness(&[("b-tls".into(), Some(&b)), ("a-tls".into(), Some(&a))], true, t0);
        assert!(r.ready, "{r:?}");
        assert_eq!(r.earliest_expiry, Some(plus(t0, LEAF_LIFETIME)));
        assert!(r.message.contains("a-tls"), "{}", r.message);

        let r = readiness(&[("a-tls".into(), Some(&a)), ("c-tls".into(), None)], true, t0);
        assert!(!r.ready);
        assert!(r.message.contains("Secret c-tls does not exist yet"), "{}", r.message);
        let r = readiness(&[("a-tls".into(), Some(&a))], true, plus(t0, LEAF_LIFETIME));
        assert!(!r.ready && r.message.contains("expired"), "{}", r.message);
        let mut no_bundle = a.clone();
        no_bundle.remove(keys::CA_CRT);
        assert!(!readiness(&[("a-tls".into(), Some(&no_bundle))], true, t0).ready);
        assert!(readiness(&[("a-tls".into(), Some(&no_bundle))], false, t0).ready, "cert-manager may omit ca.crt");
    }

    #[test]
    fn secrets_are_typed_owned_by_the_domain_and_labelled() {
        let owner = Owner::of(&fixtures::domain("corp", 500), "CommunicationsDomain").unwrap();
        let t0 = at(1_800_000_000);
        let ca = Ca::generate("ns/corp", t0).unwrap();
        let s = ca_secret(&owner, &ca);
        assert_eq!(s.metadata.name.as_deref(), Some("corp-ca"));
        let keys: Vec<_> = s.data.as_ref().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["ca.crt", "ca.key"]);
        let (data, _) = reconcile_leaf(None, &ca, "corp-home-1", &sans(), t0).unwrap();
        let l = leaf_secret(&owner, &certificate(sans()), data);
        assert_eq!(l.metadata.name.as_deref(), Some("corp-home-1-tls"));
        assert_eq!(l.type_.as_deref(), Some("kubernetes.io/tls"));
        let keys: Vec<_> = l.data.as_ref().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["ca.crt", "tls.crt", "tls.key"]);
        for m in [&s.metadata, &l.metadata] {
            let o = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!((o.kind.as_str(), o.name.as_str(), o.controller), ("CommunicationsDomain", "corp", Some(true)));
            assert_eq!(m.namespace.as_deref(), Some("ns"));
            assert_eq!(m.labels.as_ref().unwrap()[DOMAIN_LABEL], "corp");
            assert_eq!(m.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"], MANAGED_BY);
        }
        // The key never shows in debug output (logs).
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_cert_manager_certificate_fills_the_same_secret() {
        let owner = Owner::of(&fixtures::domain("corp", 500), "CommunicationsDomain").unwrap();
        let mut names = sans();
        names.push("192.0.2.7".into());
        let issuer = IssuerRef { name: "corp-issuer".into(), kind: IssuerKind::ClusterIssuer };
        let c = cert_manager_certificate(&owner, &certificate(names), &issuer);
        let ar = cert_manager_certificate_resource();
        assert_eq!(
            (ar.api_version.as_str(), ar.kind.as_str(), ar.plural.as_str()),
            ("cert-manager.io/v1", "Certificate", "certificates")
        );
        assert_eq!(c.types.as_ref().unwrap().api_version, "cert-manager.io/v1");
        assert_eq!(c.metadata.name.as_deref(), Some("corp-home-1"));
        assert_eq!(c.metadata.owner_references.as_ref().unwrap()[0].name, "corp");
        let spec = &c.data["spec"];
        assert_eq!(spec["secretName"], "corp-home-1-tls");
        assert_eq!(
            spec["issuerRef"],
            serde_json::json!({"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "corp-issuer"})
        );
        assert_eq!(spec["ipAddresses"], serde_json::json!(["192.0.2.7"]));
        let dns: Vec<&str> = spec["dnsNames"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(dns.contains(&HOST) && dns.contains(&"example.test") && !dns.contains(&"192.0.2.7"));
        assert_eq!(spec["duration"], "2160h");
        assert_eq!(spec["renewBefore"], "720h", "renewed at two thirds, like the operator's own");
        let usages = spec["usages"].as_array().unwrap();
        assert!(usages.contains(&"server auth".into()) && usages.contains(&"client auth".into()));
    }
}
