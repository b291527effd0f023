//! `main.cf` of a private instance: a shared base, extended (or overridden) by the caller.

use std::{fmt::Display, path::Path};

use crate::InstanceDir;

/// The settings of `main.cf`, in order. [`MainCf::new`] holds what every private instance of this
/// project needs; the caller adds its role with [`MainCf::set`]: listeners' options, delivery
/// (`virtual_*`, transports, relay), client trust (`mynetworks`, XCLIENT), postscreen, limits.
#[derive(Clone, Debug)]
pub struct MainCf {
    /// `(parameter, value)`; one entry per parameter, the base's first.
    entries: Vec<(String, String)>,
}

impl MainCf {
    /// The base of an instance in `dir` whose name (`myhostname`, the banner) is `hostname`:
    /// - its own queue, data and log under `dir` (`maillog_file`, not syslog: each instance
    ///   has a log of its own to check, and a namespace or VM may have no syslog daemon);
    /// - listening on 127.0.0.1 and IPv4 only (callers that want IPv6 override
    ///   `inet_protocols`);
    /// - no local delivery (`mydestination`, aliases and local recipients empty, no biff), so
    ///   nothing reads `/etc/aliases` or writes the machine's mailboxes;
    /// - no DNS (no reverse lookup of clients, none for outbound mail): nothing leaves the
    ///   machine, and no test waits on a resolver.
    pub fn new(dir: &InstanceDir, hostname: &str) -> Self {
        let d = dir.path().display();
        let base = [
            // Today's defaults, without the backwards-compatibility warnings in the log.
            ("compatibility_level", "3.6".to_string()),
            ("queue_directory", format!("{d}/queue")),
            ("data_directory", format!("{d}/data")),
            ("mail_owner", "postfix".into()),
            ("inet_interfaces", "127.0.0.1".into()),
            ("inet_protocols", "ipv4".into()),
            ("myhostname", hostname.into()),
            ("mydestination", String::new()),
            ("alias_maps", String::new()),
            ("alias_database", String::new()),
            ("local_recipient_maps", String::new()),
            ("biff", "no".into()),
            ("smtpd_peername_lookup", "no".into()),
            ("smtp_dns_support_level", "disabled".into()),
            // Every service of master.cf runs.
            ("master_service_disable", String::new()),
        ];
        let main = Self {
            entries: base
                .into_iter()
                .map(|(key, value)| (key.to_string(), value))
                .collect(),
        };
        main.maillog(&dir.maillog())
    }

    /// Sets `parameter` to `value`: in place if it is set already, else at the end.
    pub fn set(mut self, parameter: &str, value: impl Display) -> Self {
        let value = value.to_string();
        match self.entries.iter_mut().find(|(key, _)| key == parameter) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((parameter.to_string(), value)),
        }
        self
    }

    /// Logs to `file`. Postfix writes only below `maillog_file_prefixes`, so that is set to the
    /// file's directory.
    pub fn maillog(self, file: &Path) -> Self {
        let prefix = file
            .parent()
            .unwrap_or(Path::new("/"))
            .display()
            .to_string();
        self.set("maillog_file", file.display())
            .set("maillog_file_prefixes", prefix)
    }

    /// The value of `parameter`, if set.
    pub fn get(&self, parameter: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(key, _)| key == parameter)
            .map(|(_, value)| value.as_str())
    }

    /// The file's text: `parameter = value`, one a line.
    pub fn render(&self) -> String {
        self.entries
            .iter()
            .map(|(key, value)| {
                if value.is_empty() {
                    format!("{key} =\n")
                } else {
                    format!("{key} = {value}\n")
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_keeps_the_instance_private_and_offline() {
        let main = MainCf::new(&InstanceDir::at("/tmp/pf"), "backend.test");
        for (key, value) in [
            ("queue_directory", "/tmp/pf/queue"),
            ("data_directory", "/tmp/pf/data"),
            ("maillog_file", "/tmp/pf/maillog"),
            ("maillog_file_prefixes", "/tmp/pf"),
            ("myhostname", "backend.test"),
            ("mydestination", ""),
            ("smtp_dns_support_level", "disabled"),
            ("smtpd_peername_lookup", "no"),
        ] {
            assert_eq!(main.get(key), Some(value), "{key}");
        }
        let text = main.render();
        assert!(text.contains("\nmydestination =\n"), "{text}");
        assert!(text.contains("\nmyhostname = backend.test\n"), "{text}");
    }

    #[test]
    fn set_overrides_in_place_and_appends_new_parameters() {
        let main = MainCf::new(&InstanceDir::at("/tmp/pf"), "h")
            .set("inet_protocols", "all")
            .set("default_process_limit", 250)
            .maillog(Path::new("/tmp/demo/logs/postfix.log"));
        let text = main.render();
        assert_eq!(text.matches("inet_protocols").count(), 1, "{text}");
        assert!(text.contains("inet_protocols = all\n"), "{text}");
        assert!(text.ends_with("default_process_limit = 250\n"), "{text}");
        assert_eq!(main.get("maillog_file_prefixes"), Some("/tmp/demo/logs"));
        let protocols = text.find("inet_protocols").unwrap();
        assert!(
            protocols < text.find("myhostname").unwrap(),
            "kept its place"
        );
    }
}
