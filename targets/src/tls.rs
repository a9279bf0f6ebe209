//! TLS client settings shared by the backends that speak TLS (FTPS, S3 over HTTPS).

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::TargetError;

/// A rustls client configuration trusting the CAs in `ca_file` (PEM), or the public web roots
/// when none is given.
pub fn client_config(ca_file: Option<&PathBuf>) -> Result<Arc<rustls::ClientConfig>, TargetError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path).map_err(|e| {
                TargetError::Invalid(format!("cannot read CA file '{}': {e}", path.display()))
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    TargetError::Invalid(format!("CA file '{}': {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    TargetError::Invalid(format!("CA file '{}': {e}", path.display()))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TargetError::Invalid(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
