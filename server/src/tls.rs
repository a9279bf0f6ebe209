//! The server's TLS identity.
//!
//! Without a configured certificate, the first start creates a private CA and a server
//! certificate signed by it in the data directory (keys 0600), and later starts reuse them.
//! Agents pin the CA's fingerprint (printed at start), so the server certificate can be
//! renewed without re-enrolling anyone. A configured certificate and key replace both.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

/// The certificate chain and key the server presents, and the fingerprint agents pin.
#[derive(Debug, Clone)]
pub struct Identity {
    /// PEM file: the server certificate (and its CA, when we made it).
    pub cert: PathBuf,
    /// PEM file: the server's private key.
    pub key: PathBuf,
    /// `SHA256:<base64>` of the certificate agents pin (our CA, or the configured leaf).
    pub fingerprint: String,
}

pub use holdfast_proto::certificate_fingerprint as fingerprint;

fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write '{}'", path.display()))
}

/// The first certificate of a PEM file.
fn first_der(pem_path: &Path) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_file(pem_path)
        .with_context(|| format!("'{}' holds no readable PEM certificate", pem_path.display()))
}

/// The identity: the configured certificate, or ours from `data_dir` (made on first use for
/// the names in `names`).
pub fn identity(
    data_dir: &Path,
    configured: Option<(&Path, &Path)>,
    names: &[String],
) -> Result<Identity> {
    if let Some((cert, key)) = configured {
        let der = first_der(cert)?;
        return Ok(Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            fingerprint: fingerprint(&der),
        });
    }
    let dir = data_dir.join("tls");
    let (ca_pem, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    if !(ca_pem.exists() && cert.exists() && key.exists()) {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create '{}'", dir.display()))?;
        make_ca_and_server(&dir, names)?;
    }
    Ok(Identity {
        fingerprint: fingerprint(&first_der(&ca_pem)?),
        cert,
        key,
    })
}

fn make_ca_and_server(dir: &Path, names: &[String]) -> Result<()> {
    let ca_key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "Holdfast server CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_after = rcgen::date_time_ymd(2076, 1, 1);
    let ca_cert = ca.self_signed(&ca_key)?;

    let server_key = KeyPair::generate().context("cannot generate the server key")?;
    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name
        .push(DnType::CommonName, "Holdfast server");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let issuer = Issuer::new(ca, ca_key);
    let server_cert = leaf.signed_by(&server_key, &issuer)?;

    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    write_private(&dir.join("ca.key"), &issuer.key().serialize_pem())?;
    std::fs::write(
        dir.join("server.pem"),
        format!("{}{}", server_cert.pem(), ca_cert.pem()),
    )?;
    write_private(&dir.join("server.key"), &server_key.serialize_pem())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_and_reused() {
        let d = tempfile::tempdir().expect("tempdir");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let a = identity(d.path(), None, &names).expect("identity");
        assert!(a.fingerprint.starts_with("SHA256:"));
        let b = identity(d.path(), None, &names).expect("identity again");
        assert_eq!(a.fingerprint, b.fingerprint, "the CA is kept");
        let mode = std::fs::metadata(&a.key)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("key");
        assert_eq!(mode, 0o600);
    }
}
