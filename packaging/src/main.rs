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
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut script);
        if shell == Shell::Bash {
            script = bash_state_names(&script, &name)?.into_bytes();
        }
        let mut out = BufWriter::new(
            File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        out.write_all(&script)
            .and_then(|()| out.flush())
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// What clap_complete (4.6.12) puts between the names of a command path in the bash script's
/// state names (`smtp__gateway__subcmd__block`).
const BASH_SUBCMD_SEP: &str = "__subcmd__";

/// The bash script with its state names spelled one way. clap_complete 4.6.12 builds the state
/// of `smtp-gateway block` as `smtp__gateway__subcmd__block` (the bin name's hyphen as `__`)
/// while the case labels that read it say `smtp__subcmd__gateway__subcmd__block` (every hyphen
/// as the separator): no label matched, so nothing completed after the first word
/// (clap-rs/clap#6421, unfixed in the newest release). The labels are respelled as the state is
/// built; a script without the mismatch (a fixed clap_complete) is left as it is.
fn bash_state_names(script: &[u8], bin_name: &str) -> anyhow::Result<String> {
    let text = String::from_utf8(script.to_vec()).context("the bash script is not UTF-8")?;
    if !bin_name.contains('-') {
        return Ok(text);
    }
    let label = format!(
        "{}{BASH_SUBCMD_SEP}",
        bin_name.replace('-', BASH_SUBCMD_SEP)
    );
    let state = format!("{}{BASH_SUBCMD_SEP}", bin_name.replace('-', "__"));
    Ok(text.replace(&label, &state))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// What bash offers for the word being completed after `words` (the last one is the word
    /// being completed), as the installed completion script answers.
    fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
        let name = command().get_name().to_owned();
        // The function bash calls is the one the script registers (`complete -F FUNCTION NAME`).
        let text = std::fs::read_to_string(script).expect("read the script");
        let function = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("complete -F "))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the script registers a function with complete -F")
            .to_owned();
        let cword = words.len() - 1;
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let program = format!(
            "source '{}' || exit 3\n\
             COMP_WORDS=({})\nCOMP_CWORD={cword}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
             COMP_POINT=${{#COMP_LINE}}\n\
             {function} '{name}' \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" \
             || exit 4\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            script.display(),
            quoted.join(" "),
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &program])
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "bash: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The bash completion completes after a subcommand too: a hyphenated binary name must not
    /// leave the script's state names and its case labels spelled differently (clap_complete
    /// 4.6.12, clap-rs/clap#6421).
    #[test]
    fn bash_completes_subcommands_and_their_options() {
        let dir = std::env::temp_dir().join(format!("sgw-completions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        completions(&dir).expect("completions");
        let script = dir.join("smtp-gateway.bash");

        let top = bash_completes(&script, &["smtp-gateway", ""]);
        assert!(top.iter().any(|w| w == "block"), "{top:?}");
        let block = bash_completes(&script, &["smtp-gateway", "block", ""]);
        assert!(block.iter().any(|w| w == "add"), "{block:?}");
        assert!(!block.iter().any(|w| w == "block"), "{block:?}");
        let add = bash_completes(&script, &["smtp-gateway", "block", "add", "--"]);
        assert!(add.iter().any(|w| w == "--ttl"), "{add:?}");
        let check = bash_completes(&script, &["smtp-gateway", "check-config", "--"]);
        assert!(check.iter().any(|w| w == "--help"), "{check:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
