//! TLS settings (rustls, TLS 1.2 and 1.3 only) from PEM files: the public listener, the internal
//! mutual-TLS link between Front-Ends and Home Servers, and the self-signed certificate a
//! standalone server makes for itself on first start. Certificate files are re-read when they
//! change (the operator renews them in place), without touching established connections.

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading TLS certificate {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing TLS certificate {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

fn load_key(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading TLS key {}", key.display()))?;
    let signing = provider().key_provider.load_private_key(key).context("unusable TLS key")?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().context("TLS certificate and key do not match")?;
    Ok(Arc::new(certified))
}

/// The server's certificate and key, re-read when either file's modification time changes; a
/// pair that fails to load keeps the previous one in use (and says so, once per change).
#[derive(Debug)]
pub struct ReloadingKey {
    cert: PathBuf,
    key: PathBuf,
    /// The files' modification times when last read, and the pair in use.
    current: Mutex<(Stamp, Arc<CertifiedKey>)>,
}

type Stamp = (Option<SystemTime>, Option<SystemTime>);

impl ReloadingKey {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<ReloadingKey>> {
        let stamp = Self::stamp(cert, key);
        let loaded = load_key(cert, key)?;
        Ok(Arc::new(ReloadingKey { cert: cert.into(), key: key.into(), current: Mutex::new((stamp, loaded)) }))
    }

    fn stamp(cert: &Path, key: &Path) -> Stamp {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (modified(cert), modified(key))
    }

    fn get(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().expect("tls key");
        let stamp = Self::stamp(&self.cert, &self.key);
        if stamp != current.0 {
            current.0 = stamp;
            match load_key(&self.cert, &self.key) {
                Ok(k) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    current.1 = k;
                }
                // Mid-rotation the key may not match yet: keep the old pair until a file changes.
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "TLS certificate not reloaded"),
            }
        }
        current.1.clone()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingKey {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

static VERSIONS: [&rustls::SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions() -> &'static [&'static rustls::SupportedProtocolVersion] {
    &VERSIONS
}

/// The public TLS listener's settings: no client certificates.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions())?
        .with_no_client_auth()
        .with_cert_resolver(ReloadingKey::load(cert, key)?);
    // No TLS 1.3 session tickets: SIP clients keep one long connection, and some (sipsak's GnuTLS
    // loop) take the post-handshake ticket record for a SIP message and give up.
    config.send_tls13_tickets = 0;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The trust anchors in a PEM file (the deployment CA, or a probe's `--ca`).
pub fn roots(ca: &Path) -> anyhow::Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert).with_context(|| format!("CA certificate in {}", ca.display()))?;
    }
    Ok(Arc::new(roots))
}

/// Both ends of the internal link: the listener demands a client certificate issued by the
/// deployment CA (`ca`, the only trust anchor), and outbound connections present ours.
#[derive(Clone)]
pub struct MutualTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

pub fn mutual(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<MutualTls> {
    let ours = ReloadingKey::load(cert, key)?;
    let roots = roots(ca)?;
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .context("building the client-certificate verifier")?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions())?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(ours.clone());
    server.send_tls13_tickets = 0;
    let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .context("building the server-certificate verifier")?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DeploymentCa(server_verifier)))
        .with_client_cert_resolver(ours);
    Ok(MutualTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
    })
}

/// Trusts any certificate the deployment CA issued, whatever name it was dialled by: peers are
/// dialled by pod IP or Service name, and the CA issues certificates to nothing but this
/// deployment's servers. The chain, validity and signatures are checked as usual.
#[derive(Debug)]
struct DeploymentCa(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for DeploymentCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Writes a self-signed certificate for `names` to `cert` and `key` unless both exist.
/// Returns true when it made one.
pub fn ensure_self_signed(cert: &Path, key: &Path, names: Vec<String>) -> anyhow::Result<bool> {
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    let generated = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    for path in [cert, key] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    std::fs::write(cert, generated.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    write_private(key, generated.signing_key.serialize_pem().as_bytes())?;
    Ok(true)
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let write = |name: &str, when: u64| {
            let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
            std::fs::write(&cert, made.cert.pem()).unwrap();
            // The modification time is what is watched; set it, as file systems count coarsely.
            let f = std::fs::File::options().write(true).open(&cert).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(when)).unwrap();
            made.cert.der().to_vec()
        };
        let first = write("first.test", 1_000);
        let keys = ReloadingKey::load(&cert, &key).unwrap();
        assert_eq!(keys.get().cert[0].as_ref(), first.as_slice());
        let second = write("second.test", 2_000);
        assert_eq!(keys.get().cert[0].as_ref(), second.as_slice(), "the renewed pair is served");
        // Half-way through a rotation (certificate written, key not yet): keep serving the old pair.
        let made = rcgen::generate_simple_self_signed(vec!["third.test".to_string()]).unwrap();
        std::fs::write(&cert, made.cert.pem()).unwrap();
        let f = std::fs::File::options().write(true).open(&cert).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(3_000)).unwrap();
        assert_eq!(keys.get().cert[0].as_ref(), second.as_slice(), "a mismatched pair is not taken");
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let f = std::fs::File::options().write(true).open(&key).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(3_001)).unwrap();
        assert_eq!(keys.get().cert[0].as_ref(), made.cert.der().as_ref(), "then its key arrives");
    }

    #[test]
    fn self_signed_certificate_loads_once() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls/cert.pem"), dir.path().join("tls/key.pem"));
        assert!(ensure_self_signed(&cert, &key, vec!["localhost".into()]).unwrap());
        assert!(!ensure_self_signed(&cert, &key, vec!["localhost".into()]).unwrap());
        acceptor(&cert, &key).unwrap();
        assert!(acceptor(&key, &key).is_err());
    }
}
