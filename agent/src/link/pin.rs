//! TLS to the server: at enrolment, trust the certificate whose SHA-256 fingerprint the admin
//! gave (the server's CA, or its own certificate when it has a configured one); afterwards,
//! trust exactly the certificate recorded then.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use holdfast_proto::certificate_fingerprint as fingerprint;

/// Accepts the server when a certificate of its chain has the pinned fingerprint and the
/// chain verifies up to it (or it is the server's own certificate); remembers that
/// certificate.
#[derive(Debug)]
pub struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    /// The certificate that matched, once a handshake succeeded.
    pub matched: Mutex<Option<CertificateDer<'static>>>,
}

impl Pinned {
    pub fn new(fingerprint: &str) -> Self {
        Self {
            fingerprint: fingerprint.trim().to_owned(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            matched: Mutex::new(None),
        }
    }
}

/// Verify `end_entity` for `name` with `anchor` as the only root; a leaf pinned itself is
/// accepted as is (the pin is exact).
fn verify_with(
    provider: &Arc<CryptoProvider>,
    anchor: &CertificateDer<'_>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    if anchor.as_ref() == end_entity.as_ref() {
        return Ok(());
    }
    let mut roots = RootCertStore::empty();
    roots.add(anchor.clone().into_owned())?;
    let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    v.verify_server_cert(end_entity, intermediates, name, &[], now)
        .map(|_| ())
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server's certificate does not match the fingerprint {} (wrong server, or a man in the middle)",
                    self.fingerprint
                ))
            })?;
        verify_with(&self.provider, anchor, end_entity, intermediates, name, now)?;
        *self.matched.lock().unwrap_or_else(|p| p.into_inner()) = Some(anchor.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that trusts only what `verifier` accepts.
pub fn client_config(verifier: Arc<Pinned>) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(
        rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}
