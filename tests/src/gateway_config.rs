//! The gateway configuration the benchmarks run: every cheap check on with its default action,
//! DNSBL and metrics off (no network lookups, nothing scraped), one backend told no identity, no
//! state store (the figures compare with runs made before it existed).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;

/// The gateway's host name in every benchmark.
pub const HOSTNAME: &str = "gw.bench.test";

/// The configuration text: `dataplane` holds the `[dataplane]` keys (pins, interfaces, ports),
/// `smtp_extra` extra `[smtp]` keys (limits), each line ending in a newline.
pub fn toml(dataplane: &str, listener: &str, smtp_extra: &str, backend: SocketAddr) -> String {
    toml_listeners(
        dataplane,
        &format!("{{ address = \"{listener}\" }}"),
        smtp_extra,
        backend,
    )
}

/// [`toml`] with the `listeners` array's entries given whole, e.g.
/// `{ address = "127.0.0.1:25" }, { address = "127.0.0.1:465", kind = "smtps" }`.
pub fn toml_listeners(
    dataplane: &str,
    listeners: &str,
    smtp_extra: &str,
    backend: SocketAddr,
) -> String {
    format!(
        "[dataplane]\n\
         {dataplane}\
         \n\
         [smtp]\n\
         hostname = \"{HOSTNAME}\"\n\
         listeners = [{listeners}]\n\
         greet_pause = \"0s\"\n\
         {smtp_extra}\
         \n\
         [backend]\n\
         servers = [{{ address = \"{backend}\", identity = \"none\" }}]\n\
         \n\
         [relay]\n\
         accepted_domains = [\"example.org\"]\n\
         \n\
         [dnsbl]\n\
         enabled = false\n\
         \n\
         [metrics]\n\
         enabled = false\n\
         \n\
         [store]\n\
         engine = \"off\"\n"
    )
}

/// Writes `text` as `dir/etc/name` and returns the path. The daemon watches its configuration's
/// directory for changes; as in a deployment (/etc/smtp-gateway), nothing else is written there,
/// so the log's writes (kept in `dir`) wake no watcher.
pub fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
    let path = etc.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_benchmark_configuration_is_valid() {
        let text = super::toml(
            "pin_dir = \"/sys/fs/bpf/sgw-bench-x\"\ninterfaces = []\n",
            "127.0.0.1:2525",
            "max_connections = 2000\n",
            "127.0.0.1:2526".parse().expect("addr"),
        );
        let config = smtp_gateway::config::Config::parse(&text, "bench").expect("valid");
        assert_eq!(config.smtp.max_connections, 2000);
        assert_eq!(config.smtp.hostname, super::HOSTNAME);
    }
}
