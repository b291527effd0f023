//! rustls server configuration from PEM files (STARTTLS and implicit TLS).

use std::{path::Path, sync::Arc};

use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, ServerName,
    pem::{self, PemObject},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::config::{BackendTls, TlsConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid PEM: {source}")]
    Pem { path: String, source: pem::Error },
    #[error("{0}: no certificate found in the PEM file")]
    NoCertificate(String),
    #[error("{0}: no private key found in the PEM file")]
    NoKey(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}: no usable CA certificate in the PEM file")]
    NoCa(String),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// The error of reading PEM from `path`, naming the file.
fn pem_error(path: &Path, error: pem::Error) -> TlsError {
    let path = path.display().to_string();
    match error {
        pem::Error::Io(source) => TlsError::Read { path, source },
        source => TlsError::Pem { path, source },
    }
}

/// The bytes of the PEM file at `path`, bounded ([`crate::bounded_file::MAX_PEM_BYTES`]).
fn pem_bytes(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::bounded_file::read_pem(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in the PEM file (other sections are skipped).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    crate::bounded_file::pem_certificates(path).map_err(|e| match e {
        crate::bounded_file::PemError::Read(source) => TlsError::Read {
            path: path.display().to_string(),
            source,
        },
        crate::bounded_file::PemError::Pem(e) => pem_error(path, e),
    })
}

/// Builds the acceptor from the configured certificate chain and key.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certs = certificates(&cfg.certificate)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(
            cfg.certificate.display().to_string(),
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&pem_bytes(&cfg.private_key)?).map_err(|e| match e {
            pem::Error::NoItemsFound => TlsError::NoKey(cfg.private_key.display().to_string()),
            e => pem_error(&cfg.private_key, e),
        })?;
    let mut provider = rustls::crypto::ring::default_provider();
    prefer_aes_128_gcm(&mut provider.cipher_suites);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.ignore_client_order = true;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Puts the AES-128-GCM suites first, each protocol version's order otherwise kept (the sort is
/// stable), for the server to choose by its own order: TLS_AES_128_GCM_SHA256 is the suite
/// every TLS 1.3 peer must implement (RFC 8446 section 9.1), and its SHA-256 handshake hash
/// (the transcript, HKDF, the Finished MACs) runs on the CPU's SHA extensions where
/// AES-256-GCM's SHA-384 has none, which clients' usual first choice costs in every handshake
/// (a full TLS 1.3 handshake's server side: about 12 % less CPU, docs/BENCHMARKS.md).
fn prefer_aes_128_gcm(suites: &mut [rustls::SupportedCipherSuite]) {
    use rustls::CipherSuite as S;
    suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            S::TLS13_AES_128_GCM_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
}

/// A client for STARTTLS to a backend: its CA and the name to verify.
#[derive(Clone)]
pub struct BackendConnector {
    /// rustls connector trusting only the configured CA.
    pub connector: TlsConnector,
    /// Name checked in the backend's certificate.
    pub server_name: ServerName<'static>,
}

/// Builds the connector of one backend (`default_name`: its address, used when
/// `server_name` is not set).
pub fn backend_connector(
    cfg: &BackendTls,
    default_name: std::net::IpAddr,
) -> Result<BackendConnector, TlsError> {
    let path = cfg.ca.display().to_string();
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(&cfg.ca)? {
        roots.add(cert).map_err(|_| TlsError::NoCa(path.clone()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCa(path));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = match &cfg.server_name {
        Some(name) => {
            ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name.clone()))?
        }
        None => ServerName::IpAddress(default_name.into()),
    };
    Ok(BackendConnector {
        connector: TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A file in a fresh directory under the system temp dir, holding `text`.
    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tls-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Removes the directories [`file`] made.
    fn remove(files: &[&PathBuf]) {
        for f in files {
            if let Some(dir) = f.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn acceptor_error(certificate: PathBuf, private_key: PathBuf) -> String {
        let cfg = TlsConfig {
            certificate,
            private_key,
        };
        match acceptor(&cfg) {
            Ok(_) => panic!("the acceptor was built"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_certificate_and_key_files_are_named_in_the_error() {
        let missing = std::env::temp_dir().join("tls-test-no-such-file.pem");
        let empty = file("empty.pem", "");
        let broken = file(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        );
        let cases = [
            (
                missing.clone(),
                empty.clone(),
                missing.display().to_string(),
            ),
            (
                empty.clone(),
                empty.clone(),
                format!("{}: no certificate found", empty.display()),
            ),
            (
                broken.clone(),
                empty.clone(),
                format!("{}: not valid PEM", broken.display()),
            ),
        ];
        for (certificate, key, expected) in cases {
            let message = acceptor_error(certificate, key);
            assert!(
                message.starts_with(&expected),
                "{message:?} vs {expected:?}"
            );
        }
        remove(&[&empty, &broken]);
    }

    #[test]
    fn a_certificate_and_its_key_load_and_a_file_without_a_key_is_named() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["mx.example.net".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let cert_file = file("cert.pem", &cert.pem());
        let key_file = file("key.pem", &key.serialize_pem());
        let cfg = TlsConfig {
            certificate: cert_file.clone(),
            private_key: key_file.clone(),
        };
        assert!(acceptor(&cfg).is_ok());
        let message = acceptor_error(cert_file.clone(), cert_file.clone());
        let expected = format!("{}: no private key found", cert_file.display());
        assert!(message.starts_with(&expected), "{message:?}");
        remove(&[&cert_file, &key_file]);
    }

    /// What a handshake between `server` and a client offering `suites`, in its order of
    /// preference, settles on; the client trusts `ca` (the server's self-signed certificate).
    fn negotiated(
        server: Arc<rustls::ServerConfig>,
        ca: &CertificateDer<'static>,
        version: &'static rustls::SupportedProtocolVersion,
        suites: &[rustls::CipherSuite],
    ) -> rustls::CipherSuite {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).expect("the certificate as a root");
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = suites
            .iter()
            .filter_map(|want| {
                rustls::crypto::ring::ALL_CIPHER_SUITES
                    .iter()
                    .find(|s| s.suite() == *want)
                    .copied()
            })
            .collect();
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .expect("client versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = rustls::client::Resumption::disabled();
        let name = ServerName::try_from("mx.example.net").expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        let mut s = rustls::ServerConnection::new(server).expect("server");
        for _ in 0..10 {
            let mut flight = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut flight).expect("client write");
            }
            let mut read = flight.as_slice();
            while !read.is_empty() {
                s.read_tls(&mut read).expect("server read");
            }
            s.process_new_packets().expect("server handshake");
            let mut flight = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut flight).expect("server write");
            }
            let mut read = flight.as_slice();
            while !read.is_empty() {
                c.read_tls(&mut read).expect("client read");
            }
            c.process_new_packets().expect("client handshake");
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(!s.is_handshaking(), "the handshake did not finish");
        s.negotiated_cipher_suite().expect("a suite").suite()
    }

    #[test]
    fn the_server_chooses_aes_128_gcm_over_the_clients_first_choice_and_what_only_it_offers() {
        use rustls::CipherSuite as S;
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["mx.example.net".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let cert_file = file("pref-cert.pem", &cert.pem());
        let key_file = file("pref-key.pem", &key.serialize_pem());
        let cfg = TlsConfig {
            certificate: cert_file.clone(),
            private_key: key_file.clone(),
        };
        let server = acceptor(&cfg).expect("acceptor").config().clone();
        let ca = cert.der();
        let tls13 = &rustls::version::TLS13;
        let tls12 = &rustls::version::TLS12;
        // A client's usual order (rustls, OpenSSL): AES-256-GCM first.
        let usual13 = [
            S::TLS13_AES_256_GCM_SHA384,
            S::TLS13_CHACHA20_POLY1305_SHA256,
            S::TLS13_AES_128_GCM_SHA256,
        ];
        assert_eq!(
            negotiated(server.clone(), ca, tls13, &usual13),
            S::TLS13_AES_128_GCM_SHA256
        );
        let usual12 = [
            S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ];
        assert_eq!(
            negotiated(server.clone(), ca, tls12, &usual12),
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );
        // A client without AES-128-GCM still gets what it offers, in the server's order.
        assert_eq!(
            negotiated(
                server.clone(),
                ca,
                tls13,
                &[
                    S::TLS13_CHACHA20_POLY1305_SHA256,
                    S::TLS13_AES_256_GCM_SHA384
                ]
            ),
            S::TLS13_AES_256_GCM_SHA384
        );
        assert_eq!(
            negotiated(server, ca, tls13, &[S::TLS13_CHACHA20_POLY1305_SHA256]),
            S::TLS13_CHACHA20_POLY1305_SHA256
        );
        remove(&[&cert_file, &key_file]);
    }
}
