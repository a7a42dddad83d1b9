//! The password file (libpq's "The Password File" documentation, `passwordFromFile` in
//! `fe-connect.c`): `hostname:port:database:username:password` lines, `*` matching anything,
//! `\` escaping `:` and `\`, the first matching line winning. On Unix a file with any group or
//! world permission is ignored with libpq's warning, as is anything but a regular file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// libpq's default Unix socket directory on Debian (`DEFAULT_PGSOCKET_DIR`): a connection
/// through it matches a password file line for `localhost`.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// What a connection attempt is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// The host name (or address, or socket directory) of the attempt.
    pub host: &'a str,
    /// The port, as text (`5432` by default).
    pub port: &'a str,
    /// The database name.
    pub dbname: &'a str,
    /// The user name.
    pub user: &'a str,
}

/// The password for `lookup` from the password file at `path`, or `None` when the file does
/// not exist, is not a regular file, has group or world permissions, or has no matching line.
/// The last two cases are logged as warnings with libpq's wording (never the password).
pub fn password_for(path: &Path, lookup: Lookup<'_>) -> Option<String> {
    let meta = fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!("password file \"{}\" is not a plain file", path.display());
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        );
        return None;
    }
    let text = fs::read_to_string(path).ok()?;
    find(&text, lookup)
}

/// The first line of `text` matching `lookup` (a socket directory that is libpq's default
/// counts as `localhost`), its password unescaped.
pub fn find(text: &str, lookup: Lookup<'_>) -> Option<String> {
    let host = if lookup.host.is_empty() || lookup.host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        lookup.host
    };
    let wanted = [host, lookup.port, lookup.dbname, lookup.user];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = fields
            .iter()
            .zip(wanted)
            .all(|(field, want)| field.raw == "*" || field.value == want);
        if matches {
            return Some(fields[4].value.clone());
        }
    }
    None
}

/// One `:`-separated field: as written (to recognise a bare `*`) and unescaped.
struct Field {
    raw: String,
    value: String,
}

/// Splits a line into its first four fields and the rest (the password, in which a `:` needs
/// no escape).
fn split_fields(line: &str) -> Vec<Field> {
    let mut fields = vec![Field {
        raw: String::new(),
        value: String::new(),
    }];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == ':' && fields.len() < 5 {
            fields.push(Field {
                raw: String::new(),
                value: String::new(),
            });
            continue;
        }
        let field = fields.last_mut().expect("never empty");
        if c == '\\' {
            if let Some(next) = chars.next() {
                field.raw.push(c);
                field.raw.push(next);
                field.value.push(next);
            }
        } else {
            field.raw.push(c);
            field.value.push(c);
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(host: &'a str, port: &'a str, dbname: &'a str, user: &'a str) -> Lookup<'a> {
        Lookup {
            host,
            port,
            dbname,
            user,
        }
    }

    #[test]
    fn first_match_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    db1:5432:shop:alice:first\n\
                    *:*:shop:alice:second\n\
                    *:*:*:bob:pw\\:with\\\\escapes:and:colons\n\
                    a\\:b:*:*:*:escaped-host\n";
        assert_eq!(
            find(text, lookup("db1", "5432", "shop", "alice")).as_deref(),
            Some("first")
        );
        assert_eq!(
            find(text, lookup("db2", "6000", "shop", "alice")).as_deref(),
            Some("second")
        );
        assert_eq!(
            find(text, lookup("h", "1", "x", "bob")).as_deref(),
            Some("pw:with\\escapes:and:colons")
        );
        assert_eq!(
            find(text, lookup("a:b", "1", "x", "carol")).as_deref(),
            Some("escaped-host")
        );
        assert_eq!(find(text, lookup("db1", "5432", "other", "alice")), None);
    }

    #[test]
    fn default_socket_directory_matches_localhost() {
        let text = "localhost:5432:*:alice:local\n";
        assert_eq!(
            find(text, lookup(DEFAULT_SOCKET_DIR, "5432", "d", "alice")).as_deref(),
            Some("local")
        );
        assert_eq!(find(text, lookup("/tmp", "5432", "d", "alice")), None);
        // A literal "*" only matches as a whole field; "\*" is a star.
        assert_eq!(find("\\*:*:*:*:x\n", lookup("h", "1", "d", "u")), None);
    }

    #[test]
    fn group_or_world_readable_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        fs::write(&path, "*:*:*:*:pw\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(password_for(&path, lookup("h", "1", "d", "u")), None);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            password_for(&path, lookup("h", "1", "d", "u")).as_deref(),
            Some("pw")
        );
        assert_eq!(password_for(dir.path(), lookup("h", "1", "d", "u")), None);
    }
}
