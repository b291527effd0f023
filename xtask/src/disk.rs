//! Refuses to start a long build on a disk that cannot hold it: a full disk otherwise shows up
//! minutes later as a linker's bus error or "No space left on device" from rustc, in the middle
//! of the output, and leaves a half-written target directory behind.

use std::path::Path;

use anyhow::{Context, bail};

/// What a fresh `cargo xtask test` writes, measured on this tree with a margin for it to grow:
/// 5.7 GB in `target/` and 1.7 GB in `fuzz/target/` (`docs/BUILDING.md`), 6.9 GiB in all.
pub const TEST_BYTES: u64 = 8 * GIB;

const GIB: u64 = 1 << 30;

/// Fails, saying how much is missing and where, unless the target directory's file system has
/// `needed` bytes free, counting what an earlier build left in `target/debug` and the fuzz
/// targets' `fuzz/target` (a rebuild mostly overwrites it).
pub fn require(root: &Path, needed: u64, task: &str) -> anyhow::Result<()> {
    let target = crate::target_dir(root);
    let free = free_bytes(&target)?;
    let reused =
        used_bytes(&target.join("debug")).saturating_add(used_bytes(&root.join("fuzz/target")));
    if let Some(missing) = shortfall(needed, free, reused) {
        bail!(
            "cargo xtask {task} needs about {} free for {} and {} is available there \
             ({} already built is counted): free {} or point CARGO_TARGET_DIR at a larger disk",
            gib(needed),
            target.display(),
            gib(free),
            gib(reused),
            gib(missing),
        );
    }
    Ok(())
}

/// How much is missing, if anything.
fn shortfall(needed: u64, free: u64, reused: u64) -> Option<u64> {
    let have = free.saturating_add(reused);
    (have < needed).then(|| needed - have)
}

/// Free bytes for an unprivileged writer on the file system holding `dir` (or its nearest
/// existing ancestor: a fresh clone has no target directory yet).
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let stat = nix::sys::statvfs::statvfs(existing)
        .with_context(|| format!("cannot read the free space of {}", existing.display()))?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// Bytes of the regular files under `dir` (0 when it does not exist); links are not followed.
fn used_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_already_built_counts_towards_the_need() {
        assert_eq!(shortfall(10 * GIB, 3 * GIB, 0), Some(7 * GIB));
        assert_eq!(shortfall(10 * GIB, 3 * GIB, 8 * GIB), None);
        assert_eq!(shortfall(10 * GIB, 10 * GIB, 0), None);
        assert_eq!(shortfall(10 * GIB, u64::MAX, u64::MAX), None);
    }

    #[test]
    fn a_directory_that_does_not_exist_yet_is_measured_on_its_parent() {
        let dir = std::env::temp_dir().join("xtask-disk-missing/target/debug");
        assert!(!dir.exists());
        let free = free_bytes(&dir).expect("the temporary directory's file system");
        assert!(free > 0, "{free}");
        assert_eq!(used_bytes(&dir), 0);
    }

    #[test]
    fn the_files_under_a_directory_are_summed() {
        let dir = std::env::temp_dir().join(format!("xtask-disk-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("deps")).expect("mkdir");
        std::fs::write(dir.join("a"), vec![0u8; 1000]).expect("write");
        std::fs::write(dir.join("deps/b"), vec![0u8; 24]).expect("write");
        let used = used_bytes(&dir);
        std::fs::remove_dir_all(&dir).expect("rm");
        assert_eq!(used, 1024);
    }

    #[test]
    fn the_refusal_names_the_directory_and_the_figures() {
        let root = std::env::temp_dir();
        let error = require(&root, u64::MAX, "test")
            .expect_err("no disk has 16 EiB free")
            .to_string();
        assert!(error.starts_with("cargo xtask test needs about"), "{error}");
        assert!(
            error.contains(&crate::target_dir(&root).display().to_string()),
            "{error}"
        );
        assert!(error.contains("CARGO_TARGET_DIR"), "{error}");
    }
}
