//! A throw-away PKI for the TLS tests: a CA and a certificate for 127.0.0.1 signed by it, the
//! server configuration that presents that certificate, a client configuration that trusts
//! only that CA, and more certificates from the same CA (a client certificate, another server's).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// A CA and a server certificate for 127.0.0.1 signed by it.
pub struct Pki {
    /// The CA's certificate (PEM): what a client trusts.
    pub ca_pem: String,
    /// The server certificate.
    pub cert: rcgen::Certificate,
    /// The server certificate's private key.
    pub key: rcgen::KeyPair,
    /// The CA's certificate and key, to sign more certificates ([`Pki::issue`]).
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// A fresh CA and a certificate for 127.0.0.1 signed by it.
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (redis-server, redis-cli) takes a certificate whose
        // subject is its issuer's for a self-signed one.
        ca_params.distinguished_name = common_name("smtp-gateway test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        params.distinguished_name = common_name("127.0.0.1");
        let cert = params.signed_by(&key, &issuer).expect("cert");
        Self {
            ca_pem: ca.pem(),
            cert,
            key,
            issuer,
        }
    }

    /// A certificate for `name` signed by the CA (a client certificate: the CA of a server
    /// that asks for one trusts it) and its key, written into `dir` as `<stem>.pem` and
    /// `<stem>.key`; returns their paths.
    pub fn issue(
        &self,
        dir: &std::path::Path,
        stem: &str,
        name: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        params.distinguished_name = common_name(name);
        let cert = params.signed_by(&key, &self.issuer).expect("cert");
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("key");
        (cert_path, key_path)
    }

    /// Writes the CA's certificate as `<stem>.pem` into `dir`; returns its path.
    pub fn write_ca(&self, dir: &std::path::Path, stem: &str) -> std::path::PathBuf {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, &self.ca_pem).expect("ca");
        path
    }

    /// Writes the server certificate and key as `cert.pem` and `key.pem` into `dir`; returns
    /// their paths.
    pub fn write_server_files(
        &self,
        dir: &std::path::Path,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, self.cert.pem()).expect("cert");
        std::fs::write(&key, self.key.serialize_pem()).expect("key");
        (cert, key)
    }

    /// A server configuration presenting the certificate.
    pub fn server_config(&self) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.der().clone()],
                PrivateKeyDer::Pkcs8(self.key.serialize_der().into()),
            )
            .expect("server config")
    }
}

/// A distinguished name of one common name.
fn common_name(name: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    dn
}

/// A TLS client connection to 127.0.0.1 that trusts only the CA in `ca_pem`.
pub fn client_connection(ca_pem: &str) -> rustls::ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    rustls::ClientConnection::new(Arc::new(config), name).expect("client")
}
