//! rustls server configuration from PEM files (STARTTLS and implicit TLS).

use std::{fs::File, io::BufReader, path::Path, sync::Arc};

use tokio_rustls::TlsAcceptor;

use super::config::TlsConfig;

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
