//! rustls server configuration from PEM files (STARTTLS and implicit TLS).

use std::{fs::File, io::BufReader, path::Path, sync::Arc};

use tokio_rustls::TlsAcceptor;

use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::config::{BackendTls, TlsConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
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

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
}

/// Builds the acceptor from the configured certificate chain and key.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(&cfg.certificate)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: cfg.certificate.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(
            cfg.certificate.display().to_string(),
        ));
    }
    let key = rustls_pemfile::private_key(&mut open(&cfg.private_key)?)
        .map_err(|source| TlsError::Read {
            path: cfg.private_key.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(cfg.private_key.display().to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
    for cert in rustls_pemfile::certs(&mut open(&cfg.ca)?) {
        let cert = cert.map_err(|source| TlsError::Read {
            path: path.clone(),
            source,
        })?;
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
