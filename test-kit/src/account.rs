//! The numeric ids of a system account.
//!
//! Read from `/etc/passwd` rather than with `getpwnam(3)`: this crate stays free of libc, and the
//! two accounts it is asked about (`postfix`, created by the Debian package, and `nobody`) are
//! local system accounts, never in a directory service.

use std::{fs, path::Path};

use crate::{Error, Result};

/// The file the accounts are read from.
const PASSWD: &str = "/etc/passwd";

/// A user's uid and primary gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    /// `mail_owner`: Postfix's daemons run as it and write the instance's `data/` directory.
    pub fn postfix() -> Result<Self> {
        Self::lookup("postfix")
    }

    /// The unprivileged user the callers' delivery agents (`pipe`, `virtual`) write mail as, so a
    /// delivery cannot touch anything root owns.
    pub fn nobody() -> Result<Self> {
        Self::lookup("nobody")
    }

    /// The account called `name` in `/etc/passwd`.
    pub fn lookup(name: &str) -> Result<Self> {
        let text = fs::read_to_string(PASSWD).map_err(Error::io("reading", Path::new(PASSWD)))?;
        parse_passwd(&text, name).ok_or_else(|| Error::NoSuchUser(name.to_string()))
    }
}

/// The entry of `name` in `passwd(5)` text (`name:x:uid:gid:gecos:home:shell`).
fn parse_passwd(text: &str, name: &str) -> Option<Account> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some(Account {
            uid: fields.next()?.parse().ok()?,
            gid: fields.next()?.parse().ok()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/bash\n\
                               nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                               postfix:x:105:111::/var/spool/postfix:/usr/sbin/nologin\n\
                               postfixadmin:x:1000:1000::/home/p:/bin/sh\n\
                               broken:x:notanumber:1::/:/bin/sh\n";

    #[test]
    fn finds_accounts_by_exact_name() {
        for (name, expected) in [
            ("postfix", Some((105, 111))),
            ("nobody", Some((65534, 65534))),
            ("root", Some((0, 0))),
            ("postfi", None),
            ("absent", None),
            ("broken", None),
        ] {
            let found = parse_passwd(PASSWD_TEXT, name).map(|a| (a.uid, a.gid));
            assert_eq!(found, expected, "{name}");
        }
    }
}
