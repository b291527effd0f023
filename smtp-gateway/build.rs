//! Builds the XDP program (`../smtp-gateway-ebpf`, its own workspace) and copies the object into
//! `OUT_DIR`, where `src/dataplane/object.rs` embeds it.
//!
//! The eBPF crate is compiled by Debian's rustc (`/usr/bin/rustc`, prebuilt `core` for
//! bpfel-unknown-none) and linked by bpf-linker from the project-local tools directory, both
//! installed by `cargo xtask setup` (see docs/BUILDING.md for why this route).
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Environment variables the outer cargo sets for build scripts that would leak into the nested
/// build and override its `.cargo/config.toml` (compiler, flags, target directory).
const LEAKY_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_RUSTC",
    "CARGO_MAKEFLAGS",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "RUSTUP_TOOLCHAIN",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let ebpf_dir = root.join("smtp-gateway-ebpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));

    for path in [
        "smtp-gateway-ebpf/src",
        "smtp-gateway-ebpf/Cargo.toml",
        "smtp-gateway-ebpf/Cargo.lock",
        "smtp-gateway-ebpf/.cargo/config.toml",
        "smtp-gateway-common/src",
        "smtp-gateway-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=SMTP_GATEWAY_BPF_LINKER");

    let linker = env::var_os("SMTP_GATEWAY_BPF_LINKER")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".tools/bin/bpf-linker"));
    let debian_rustc = Path::new("/usr/bin/rustc");
    let bpf_core = Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib");
    if !linker.exists() || !debian_rustc.exists() || !bpf_core.exists() {
        panic!(
            "\n\nThe eBPF toolchain is missing (need {} , /usr/bin/rustc and {}).\n\
             Run `cargo xtask setup` once (as root) to install it, then build again.\n\n",
            linker.display(),
            bpf_core.display()
        );
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--release", "--locked"])
        .env("RUSTC_BOOTSTRAP", "aya_ebpf")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker);
    for var in LEAKY_ENV {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for the eBPF crate: {e}"));
    if !status.success() {
        panic!("building the XDP program failed ({status}); see the errors above");
    }

    let object = ebpf_dir.join("target/bpfel-unknown-none/release/smtp-gateway");
    let dest = out_dir.join("smtp-gateway.bpf.o");
    std::fs::copy(&object, &dest)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", object.display(), dest.display()));
}
