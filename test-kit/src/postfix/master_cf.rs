//! `master.cf` of a private instance: the caller's services, then the standard daemon table.

/// The daemons every instance needs whatever its role: pickup, cleanup and the queue manager to
/// accept mail, the delivery agents a caller's transports may name (`smtp`/`relay`, `error`,
/// `discard`), bounces, and the helpers (`anvil`, `scache`, `proxymap`, `postlog`, which writes
/// `maillog_file`). Columns: service, type, private, unpriv, chroot (never: the instance directory
/// holds no chroot copy of the system files), wakeup, maxproc, command.
const STANDARD_SERVICES: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// The service table: what the caller adds with [`MasterCf::service`] (its listeners, postscreen,
/// its own delivery agents), then [`STANDARD_SERVICES`].
#[derive(Clone, Debug, Default)]
pub struct MasterCf {
    /// The caller's entries, in order, each ending in a newline.
    services: Vec<String>,
}

impl MasterCf {
    /// The standard daemons only (no listener yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one entry, as master.cf has it: `127.0.0.1:2525 inet n - n - - smtpd -o k=v`, maybe
    /// with continuation lines (which start with white space).
    pub fn service(mut self, entry: impl Into<String>) -> Self {
        let mut entry = entry.into();
        if !entry.ends_with('\n') {
            entry.push('\n');
        }
        self.services.push(entry);
        self
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = self.services.concat();
        text.push_str(STANDARD_SERVICES);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_services_come_first_then_the_standard_table() {
        let text = MasterCf::new()
            .service("127.0.0.1:2525 inet n - n - - smtpd")
            .service("sink      unix  -       n       n       -       -       pipe\n  flags=R argv=/bin/true")
            .render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "127.0.0.1:2525 inet n - n - - smtpd");
        assert_eq!(lines[2], "  flags=R argv=/bin/true");
        assert!(lines[3].starts_with("pickup "));
        assert!(text.ends_with("postlogd\n"));
        for line in &lines {
            let fields = line.split_whitespace().count();
            assert!(
                line.starts_with(' ') || fields >= 8,
                "not a service entry: {line}"
            );
        }
    }
}
