//! `smtp-gateway check-config`'s second half: the interfaces, files and accounts the
//! configuration names, checked as the daemon's start uses them (the same constructors), without
//! attaching, binding or touching bpffs. A file `check-config` passes is one `run` does not refuse
//! for a missing interface, certificate, list, CA, key file or account. Also what the check and
//! the start say of a valid file that probably does not do what was meant ([`warnings`]).

use std::{io::Read as _, path::Path};

use super::error::{CheckError, DaemonError};
use crate::config::Config;

/// Checks what the daemon's start reads besides the configuration file, in the order it does:
/// every `dataplane.interfaces` exists (in the network namespace this runs in: the start
/// attaches in its own), `daemon.user`/`daemon.group` (when `daemon.drop_privileges`), and, when
/// `smtp.listeners` is set (the proxy is off otherwise and reads none of them), `[smtp.tls]`,
/// every backend's `tls.ca` and the `[reputation]` lists; then, with `store.engine = "redis"`,
/// the URL and the TLS files of a `rediss://` Redis; then `[crowdsec]`'s key and CA files when it
/// is enabled. The first failure is returned, naming the option.
pub fn check_files(config: &Config) -> Result<(), DaemonError> {
    for name in &config.dataplane.interfaces {
        interface_exists(name)?;
    }
    if config.daemon.drop_privileges {
        super::privileges::check_accounts(&config.daemon)?;
    }
    if !config.smtp.listeners.is_empty() {
        if let Some(tls) = &config.smtp.tls {
            readable("smtp.tls.certificate", &tls.certificate)?;
            readable("smtp.tls.private_key", &tls.private_key)?;
            crate::smtp::tls::acceptor(tls).map_err(|e| CheckError::new("smtp.tls", e))?;
        }
        for (i, server) in config.backend.servers.iter().enumerate() {
            if let Some(tls) = &server.tls {
                let key = format!("backend.servers[{i}].tls.ca");
                readable(&key, &tls.ca)?;
                crate::smtp::tls::backend_connector(tls, server.address.ip())
                    .map_err(|e| CheckError::new(key, e))?;
            }
        }
        for (i, list) in config.reputation.lists.iter().enumerate() {
            readable(&format!("reputation.lists[{i}].path"), &list.path)?;
        }
        crate::policy::reputation::Reputation::load(&config.reputation)
            .map_err(|e| CheckError::new("reputation.lists", e))?;
    }
    if config.store.engine == crate::store::EngineKind::Redis {
        crate::store::check_redis(&config.store)?;
    }
    let crowdsec = &config.crowdsec;
    if crowdsec.enabled {
        if crowdsec.api_key.is_empty() {
            readable("crowdsec.api_key_file", &crowdsec.api_key_file)?;
        }
        if !crowdsec.ca_file.as_os_str().is_empty() {
            readable("crowdsec.ca_file", &crowdsec.ca_file)?;
        }
        crate::crowdsec::stream::LapiClient::new(crowdsec)
            .map_err(|e| CheckError::Crowdsec(e.to_string()))?;
    }
    Ok(())
}

/// Said by `check-config` and by the start: nothing is attached.
pub const NO_INTERFACES: &str =
    "dataplane.interfaces is empty: the kernel filter is not attached anywhere";

/// Said by `check-config` and by the start: nothing is proxied.
pub const NO_LISTENERS: &str = "smtp.listeners is empty: the SMTP proxy is off";

/// What a valid configuration leaves off that its author probably meant to have: no interface,
/// no listener, or a listener that accepts mail for no domain ([`relay_warnings`]). One line
/// each, naming the key and what follows from it.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.dataplane.interfaces.is_empty() {
        warnings.push(NO_INTERFACES.to_string());
    }
    if config.smtp.listeners.is_empty() {
        warnings.push(NO_LISTENERS.to_string());
    }
    warnings.extend(relay_warnings(config));
    warnings
}

/// One line per listener whose profile accepts no domain (its `accepted_domains`, from `[relay]`
/// or the profile's own table, is empty) and does not require AUTH: every recipient of a client
/// outside `relay_networks` that has not authenticated is refused as relaying, which is all the
/// mail of an MX. A profile requiring AUTH is left alone: its clients relay once logged in.
pub fn relay_warnings(config: &Config) -> Vec<String> {
    let profiles = config.proxy().profiles;
    let mut warnings = Vec::new();
    for listener in &config.smtp.listeners {
        let name = listener.profile_name();
        let Some(profile) = profiles.get(Some(name)) else {
            continue;
        };
        if !profile.relay.accepted_domains.is_empty() || profile.require_auth {
            continue;
        }
        let key = match config.profiles.get(name) {
            Some(table) if table.relay.accepted_domains.is_some() => {
                format!("profiles.{name}.relay.accepted_domains")
            }
            _ => "relay.accepted_domains".to_string(),
        };
        warnings.push(format!(
            "{key} is empty: listener {} (profile {name}) refuses every recipient as relaying, \
             unless the client is in relay_networks or has authenticated",
            listener.address
        ));
    }
    warnings
}

/// Whether the interface `name` (one of `dataplane.interfaces`) exists in this network namespace:
/// the start would fail to attach to it, after the unit's check-config had passed.
fn interface_exists(name: &str) -> Result<(), CheckError> {
    let missing = || {
        CheckError::new(
            "dataplane.interfaces",
            format!("no interface {name:?} in this network namespace (see `ip link`)"),
        )
    };
    // (A name with a NUL, which validation refuses already, is not there either.)
    nix::net::if_::if_nametoindex(name)
        .map(drop)
        .map_err(|_| missing())
}

/// Whether the file `key` names can be opened and read (a directory cannot: reading it fails).
fn readable(key: &str, path: &Path) -> Result<(), CheckError> {
    let mut byte = [0u8; 1];
    std::fs::File::open(path)
        .and_then(|mut file| file.read(&mut byte))
        .map(drop)
        .map_err(|e| CheckError::new(key, format!("cannot read {}: {e}", path.display())))
}
