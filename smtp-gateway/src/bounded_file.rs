//! Operator files read whole, up to a size: the configuration file, and the PEM certificates and
//! keys it names (`[smtp.tls]`, backend CAs, the CrowdSec CA, Redis's TLS files). A wrong path
//! (`/dev/zero`, a log, a disk image) costs at most the bound, then an error naming the file,
//! never the whole file in memory.

use std::{io::Read as _, path::Path};

/// The largest PEM file read (a certificate chain or a CA bundle; Debian's whole system bundle
/// is about 220 KB).
pub const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// The bytes of the file at `path`, at most `max`; a larger file is an error ("larger than").
pub fn read(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "larger than {max} bytes: not the file meant"
        )));
    }
    Ok(bytes)
}

/// [`read`] of a PEM file ([`MAX_PEM_BYTES`]).
pub fn read_pem(path: &Path) -> std::io::Result<Vec<u8>> {
    read(path, MAX_PEM_BYTES)
}

/// Why the certificates of a PEM file could not be had (each caller names the file and option).
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("not valid PEM: {0}")]
    Pem(#[source] rustls::pki_types::pem::Error),
}

/// Every certificate in the PEM file at `path` (other sections skipped; none is an empty list,
/// for the caller to refuse in its own words), read through [`read_pem`].
pub fn pem_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PemError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let pem = read_pem(path).map_err(PemError::Read)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(PemError::Pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_at_the_bound_and_a_small_one_read_whole() {
        let err = read(Path::new("/dev/zero"), 1024).expect_err("refused");
        assert!(err.to_string().contains("larger than 1024 bytes"), "{err}");
        let path = std::env::temp_dir().join(format!("sgw-bounded-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").expect("write");
        let whole = read(&path, 10);
        let over = read(&path, 9);
        let _ = std::fs::remove_file(&path);
        assert_eq!(whole.expect("exactly the bound"), b"0123456789");
        assert!(over.is_err(), "one byte over the bound");
    }
}
