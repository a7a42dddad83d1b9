//! The connection service file (libpq's "The Connection Service File" documentation,
//! `parseServiceInfo` and `parseServiceFile` in `fe-connect.c`): INI-style `[name]` sections
//! of `keyword=value` lines. The per-user file (`PGSERVICEFILE`, else `~/.pg_service.conf`)
//! is searched first; the system-wide `pg_service.conf` in `PGSYSCONFDIR` only when the user
//! file does not define the service.

use std::fs;
use std::path::{Path, PathBuf};

use super::dsn::KEYWORDS;

/// Where libpq looks for the system-wide service file when `PGSYSCONFDIR` is not set: the
/// `sysconfdir` Debian's libpq is built with.
pub const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The two files searched for a service, in order.
#[derive(Debug, Clone)]
pub struct Files {
    /// `PGSERVICEFILE`, else `~/.pg_service.conf` (`None` without a home directory).
    pub user: Option<PathBuf>,
    /// `$PGSYSCONFDIR/pg_service.conf`, else [`DEFAULT_SYSCONFDIR`]`/pg_service.conf`.
    pub system: PathBuf,
}

/// The settings of service `name`, from the first of `files` that defines it.
///
/// Errors (libpq's messages): the service is defined in neither file; a line of its section
/// is not `keyword=value`, names an unknown keyword, or nests another `service`. A file that
/// cannot be read counts as not defining the service.
pub fn lookup(name: &str, files: &Files) -> Result<Vec<(String, String)>, String> {
    for path in files.user.iter().chain(std::iter::once(&files.system)) {
        let Ok(text) = fs::read_to_string(path) else {
            continue;
        };
        if let Some(settings) = section(&text, name, path)? {
            return Ok(settings);
        }
    }
    Err(format!("definition of service \"{name}\" not found"))
}

/// The `keyword=value` lines of section `[name]` in `text` (`None` if there is no such
/// section). Blank lines and lines starting with `#` are skipped; leading and trailing
/// whitespace is trimmed from lines, keywords and values.
fn section(text: &str, name: &str, path: &Path) -> Result<Option<Vec<(String, String)>>, String> {
    let mut in_section = false;
    let mut found = false;
    let mut settings = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            if found {
                break;
            }
            in_section = header.strip_suffix(']').map(str::trim) == Some(name);
            found = in_section;
            continue;
        }
        if !in_section {
            continue;
        }
        let syntax = || {
            format!(
                "syntax error in service file \"{}\", line {}",
                path.display(),
                number + 1
            )
        };
        let (key, value) = line.split_once('=').ok_or_else(syntax)?;
        let (key, value) = (key.trim(), value.trim());
        if key == "service" {
            return Err(format!(
                "nested \"service\" specifications not supported in service file \"{}\", line {}",
                path.display(),
                number + 1
            ));
        }
        if !KEYWORDS.contains(&key) {
            return Err(format!(
                "syntax error in service file \"{}\", line {}: invalid connection option \"{key}\"",
                path.display(),
                number + 1
            ));
        }
        settings.push((key.to_string(), value.to_string()));
    }
    Ok(found.then_some(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(user: Option<&Path>, system: &Path) -> Files {
        Files {
            user: user.map(Path::to_path_buf),
            system: system.to_path_buf(),
        }
    }

    #[test]
    fn user_file_first_then_system_file() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.conf");
        let system = dir.path().join("pg_service.conf");
        fs::write(
            &user,
            "# mine\n[shop]\nhost = db1\n port=6543\n\n[other]\nhost=x\n",
        )
        .unwrap();
        fs::write(&system, "[shop]\nhost=sys\n[global]\ndbname=g\n").unwrap();
        let f = files(Some(&user), &system);
        assert_eq!(
            lookup("shop", &f).unwrap(),
            vec![
                ("host".to_string(), "db1".to_string()),
                ("port".to_string(), "6543".to_string())
            ]
        );
        assert_eq!(
            lookup("global", &f).unwrap(),
            vec![("dbname".to_string(), "g".to_string())]
        );
        let missing = lookup("nope", &f).unwrap_err();
        assert_eq!(missing, "definition of service \"nope\" not found");
        let f = files(Some(&dir.path().join("absent")), &system);
        assert_eq!(lookup("shop", &f).unwrap()[0].1, "sys");
    }

    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.conf");
        fs::write(&path, "[a]\nhost\n[b]\ncolour=red\n[c]\nservice=a\n").unwrap();
        let f = files(Some(&path), &dir.path().join("none"));
        assert!(lookup("a", &f).unwrap_err().contains("line 2"));
        assert!(lookup("b", &f).unwrap_err().contains("\"colour\""));
        assert!(lookup("c", &f).unwrap_err().contains("nested"));
    }
}
