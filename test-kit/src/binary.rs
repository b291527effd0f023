//! Where the `smtp-gateway` binary is. The tests and the demo drive the built daemon as a separate
//! process (as an operator would), so they need its path, not the crate.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Set to a binary's path to use that one instead of the workspace's build (a release build, an
/// installed package).
pub const GATEWAY_BIN_ENV: &str = "SMTP_GATEWAY_BIN";

/// `$SMTP_GATEWAY_BIN` if set, else `smtp-gateway` in `profile_dir` (`target/<profile>`); either
/// way it must be a file, so a missing build fails here with a hint rather than as a spawn error.
pub fn gateway_binary(profile_dir: &Path) -> Result<PathBuf> {
    let path = match std::env::var_os(GATEWAY_BIN_ENV) {
        Some(path) => PathBuf::from(path),
        None => profile_dir.join("smtp-gateway"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::BinaryNotFound(path))
    }
}

/// `target/<profile>` of the running executable, where cargo also puts `smtp-gateway`: the
/// executable's directory for binaries (`bench-*`, `xtask`), its parent for test binaries, which
/// live in `target/<profile>/deps`.
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(Error::CurrentExe)?;
    Ok(profile_dir_of(&exe))
}

fn profile_dir_of(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("/"));
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_dir_of_binaries_and_tests() {
        for (exe, dir) in [
            ("/w/target/debug/xtask", "/w/target/debug"),
            ("/w/target/release/bench-smtp", "/w/target/release"),
            (
                "/w/target/debug/deps/smtp_proxy-0123abcd",
                "/w/target/debug",
            ),
        ] {
            assert_eq!(profile_dir_of(Path::new(exe)), Path::new(dir), "{exe}");
        }
    }
}
