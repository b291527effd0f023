//! TLS for the benchmark: the clients' rustls configuration (any certificate, no resumption)
//! and the servers' self-signed certificate, as the gateway's `[smtp.tls]` section and as the
//! one PEM file (certificate then key) HAProxy's `crt` takes.

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use smtp_gateway_tests::gateway_config::HOSTNAME;

/// The servers' certificate, written once into the benchmark's directory.
pub struct ServerCert {
    /// `[smtp.tls]` naming the certificate and key files.
    pub gateway_section: String,
    /// Certificate and key in one file, for HAProxy's `bind ... ssl crt`.
    pub haproxy_pem: std::path::PathBuf,
}

impl ServerCert {
    /// A self-signed P-256 certificate for the benchmark's host name, in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        let (cert, key) = smtp_gateway_test_kit::tls::self_signed(dir, HOSTNAME)?;
        let mut pem =
            std::fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?;
        pem.extend(std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?);
        let haproxy_pem = dir.join("haproxy.pem");
        std::fs::write(&haproxy_pem, pem)
            .with_context(|| format!("writing {}", haproxy_pem.display()))?;
        Ok(Self {
            gateway_section: format!(
                "[smtp.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
                cert.display(),
                key.display()
            ),
            haproxy_pem,
        })
    }
}

/// Accepts the servers' self-signed certificate (loopback only) and checks their signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The benchmark's TLS client: rustls (ring), TLS 1.3 only, any certificate, and no session
/// resumption, so that every session pays a full handshake on every server alike.
pub fn client_config() -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS client protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The name the clients ask for (SNI), the certificate's.
pub fn server_name() -> Result<ServerName<'static>> {
    ServerName::try_from(HOSTNAME).context("the benchmark's host name as a TLS server name")
}
