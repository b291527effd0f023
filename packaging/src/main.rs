//! `package-assets OUT_DIR`: what the Debian package ships beside the binary, generated from
//! the clap command the daemon parses with ([`smtp_gateway::cli::command`]), so the man pages
//! and completions cannot drift from the real options:
//!
//! - `OUT_DIR/man/smtp-gateway.8`, and one `smtp-gateway-<subcommand>.8` per subcommand (the
//!   main page's COMMANDS section names them, as git's pages do);
//! - `OUT_DIR/completions/smtp-gateway.bash`, `_smtp-gateway` (zsh), `smtp-gateway.fish`.
//!
//! `cargo xtask package` runs it before cargo-deb; `smtp-gateway/Cargo.toml`
//! (`[package.metadata.deb]`) says where each file is installed.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap_complete::Shell;

/// Manual section: system administration commands (the daemon needs root).
const MAN_SECTION: &str = "8";

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: package-assets OUT_DIR");
    };
    let out = PathBuf::from(out);
    let man = man_pages(&out.join("man"))?;
    let completions = completions(&out.join("completions"))?;
    println!(
        "package-assets: {} man pages, {} completion files in {}",
        man.len(),
        completions.len(),
        out.display()
    );
    Ok(())
}

/// The command as it is shown to people: no `help` subcommand (`--help` covers it).
fn command() -> clap::Command {
    let mut cmd = smtp_gateway::cli::command().disable_help_subcommand(true);
    // Propagates names and versions, so a subcommand page is titled `smtp-gateway-block-add`.
    cmd.build();
    cmd
}

/// One page per command, subcommands first; returns the files written.
fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn write(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, dir, written)?;
        }
        let page = clap_mangen::Man::new(cmd.clone()).section(MAN_SECTION);
        let path = page
            .generate_to(dir)
            .with_context(|| format!("writing a man page into {}", dir.display()))?;
        written.push(path);
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    write(&command(), dir, &mut written)?;
    Ok(written)
}

/// Bash, zsh and fish completions under the names their packaged directories expect.
fn completions(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = command();
    let name = cmd.get_name().to_owned();
    let mut written = Vec::new();
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let path = dir.join(file);
        let mut out = BufWriter::new(
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        clap_complete::generate(shell, &mut cmd, &name, &mut out);
        out.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
