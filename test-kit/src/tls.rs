//! A self-signed certificate for a test or benchmark gateway's `[smtp.tls]` (made by `openssl req`,
//! the Debian package every set-up here already needs).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{Error, Result};

/// Writes a self-signed EC (P-256) certificate for `host` and its key into `dir` as `cert.pem`
/// and `key.pem`, valid for two days; returns (certificate, key).
pub fn self_signed(dir: &Path, host: &str) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={host}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{host}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("running openssl req for", &cert))?;
    if !out.status.success() {
        return Err(Error::Openssl(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok((cert, key))
}
