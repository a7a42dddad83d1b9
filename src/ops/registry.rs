//! The run registry: each executing run leaves a small JSON file in its work directory,
//! `doppel-run-<oid>-<pid>.json`, naming its database, table, process and control socket
//! (and metrics endpoint), and removes it when it ends. `doppel ctl --table T` reads them to
//! find the run's socket without a database connection, and names every run it sees when
//! `T` is ambiguous; the entry follows the table by name, so it still finds the run after the
//! cutover changed the table's OID (the revert window).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;

/// One run, as its registry file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEntry {
    /// The run's process id.
    pub pid: u32,
    /// The server, `host:port` as doppel connected to it.
    pub server: String,
    /// The database.
    pub database: String,
    /// The table's schema.
    pub schema: String,
    /// The table's name.
    pub table: String,
    /// The table's OID when the run started.
    pub oid: u32,
    /// The control socket.
    pub socket: PathBuf,
    /// The metrics endpoint (`http://ADDR/metrics`), with `--metrics-listen`.
    pub metrics: Option<String>,
}

impl RunEntry {
    /// `"schema"."table"`, as SQL writes it.
    pub fn qualified(&self) -> String {
        crate::sql::qualified(&self.schema, &self.table)
    }

    /// `db1 "public"."orders" (pid 4242, server h:5432, socket /tmp/doppel-16384.sock)`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} (pid {}, server {}, socket {})",
            self.database,
            self.qualified(),
            self.pid,
            self.server,
            self.socket.display()
        )
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "pid": self.pid,
            "server": self.server,
            "database": self.database,
            "schema": self.schema,
            "table": self.table,
            "oid": self.oid,
            "socket": self.socket.display().to_string(),
            "metrics": self.metrics,
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<RunEntry> {
        Some(RunEntry {
            pid: u32::try_from(v["pid"].as_u64()?).ok()?,
            server: v["server"].as_str()?.to_string(),
            database: v["database"].as_str()?.to_string(),
            schema: v["schema"].as_str()?.to_string(),
            table: v["table"].as_str()?.to_string(),
            oid: u32::try_from(v["oid"].as_u64()?).ok()?,
            socket: PathBuf::from(v["socket"].as_str()?),
            metrics: v["metrics"].as_str().map(str::to_string),
        })
    }

    /// The run's process is alive.
    pub fn alive(&self) -> bool {
        pid_alive(self.pid)
    }
}

/// Whether process `pid` exists (`kill(pid, 0)`; a process of another user counts).
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The registry file of `entry` in `work_dir`.
fn file_of(work_dir: &Path, oid: u32, pid: u32) -> PathBuf {
    work_dir.join(format!("doppel-run-{oid}-{pid}.json"))
}

/// A run's registry file; removed when dropped.
#[derive(Debug)]
pub struct Registration {
    path: PathBuf,
}

impl Registration {
    /// Writes `entry` to `work_dir` (mode 0600).
    ///
    /// Errors: the file cannot be written.
    pub fn write(work_dir: &Path, entry: &RunEntry) -> Result<Registration> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = file_of(work_dir, entry.oid, entry.pid);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing the run registry file {}", path.display()))?;
        file.write_all(entry.to_json().to_string().as_bytes())?;
        Ok(Registration { path })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}

/// Every run registered in `work_dir` whose process is alive (unreadable or stale files are
/// skipped).
pub fn runs(work_dir: &Path) -> Vec<RunEntry> {
    let Ok(dir) = std::fs::read_dir(work_dir) else {
        return Vec::new();
    };
    let mut out: Vec<RunEntry> = dir
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("doppel-run-") && name.ends_with(".json")
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| serde_json::from_str(&text).ok())
        .filter_map(|v| RunEntry::from_json(&v))
        .filter(RunEntry::alive)
        .collect();
    out.sort_by(|a, b| (&a.database, a.qualified()).cmp(&(&b.database, b.qualified())));
    out
}

/// Removes the registry files of table `oid` in `work_dir` whose process is gone (`doppel
/// cleanup`); returns their paths.
pub fn remove_stale(work_dir: &Path, oid: u32) -> Vec<PathBuf> {
    let prefix = format!("doppel-run-{oid}-");
    let Ok(dir) = std::fs::read_dir(work_dir) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: u32 = name
                .strip_prefix(&prefix)?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            (!pid_alive(pid) && std::fs::remove_file(e.path()).is_ok()).then(|| e.path())
        })
        .collect()
}

/// The schema (if given) and name of a table written as SQL writes it (`orders`,
/// `public.orders`, `"Sales Data"."Order-Lines"`): unquoted parts fold to lower case.
///
/// Errors: more than two parts, an empty part or an unterminated quote.
pub fn parse_table(text: &str) -> Result<(Option<String>, String)> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => bail!("unterminated quote in table name {text:?}"),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            bail!("empty part in table name {text:?}");
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(c) => bail!("unexpected {c:?} in table name {text:?}"),
        }
    }
    match parts.len() {
        1 => Ok((None, parts.remove(0))),
        2 => {
            let name = parts.remove(1);
            Ok((Some(parts.remove(0)), name))
        }
        _ => bail!("table name {text:?} has more than a schema and a name"),
    }
}

/// The run among `runs` migrating `table` (in `database`, when given).
///
/// Errors: no such run (the message lists the runs seen), or several (it lists them and
/// says how to choose).
pub fn find<'a>(runs: &'a [RunEntry], table: &str, database: Option<&str>) -> Result<&'a RunEntry> {
    let (schema, name) = parse_table(table)?;
    let matching: Vec<&RunEntry> = runs
        .iter()
        .filter(|r| r.table == name && schema.as_ref().is_none_or(|s| *s == r.schema))
        .filter(|r| database.is_none_or(|d| d == r.database))
        .collect();
    let seen = || {
        if runs.is_empty() {
            "none".to_string()
        } else {
            runs.iter()
                .map(RunEntry::describe)
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    match matching.as_slice() {
        [one] => Ok(one),
        [] => bail!(
            "no running doppel migration of {table} is registered here (runs seen: {})",
            seen()
        ),
        several => bail!(
            "{table} is ambiguous: {} runs match ({}); qualify the table with its schema, pass --dsn naming the database, or --control-socket",
            several.len(),
            several
                .iter()
                .map(|r| r.describe())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(database: &str, schema: &str, table: &str) -> RunEntry {
        RunEntry {
            pid: std::process::id(),
            server: "localhost:5432".into(),
            database: database.into(),
            schema: schema.into(),
            table: table.into(),
            oid: 16384,
            socket: format!("/tmp/{database}-{table}.sock").into(),
            metrics: None,
        }
    }

    #[test]
    fn table_names_parse_as_sql_writes_them() {
        assert_eq!(parse_table("Orders").unwrap(), (None, "orders".into()));
        assert_eq!(
            parse_table("public.orders").unwrap(),
            (Some("public".into()), "orders".into())
        );
        assert_eq!(
            parse_table("\"Sales Data\".\"Order-Lines\"").unwrap(),
            (Some("Sales Data".into()), "Order-Lines".into())
        );
        assert_eq!(parse_table("\"a\"\"b\"").unwrap(), (None, "a\"b".into()));
        assert!(parse_table("a.b.c").is_err());
        assert!(parse_table("\"open").is_err());
        assert!(parse_table("a..b").is_err());
    }

    #[test]
    fn find_matches_by_name_schema_and_database_and_lists_ambiguity() {
        let runs = vec![
            entry("shop", "public", "orders"),
            entry("crm", "public", "orders"),
            entry("shop", "public", "items"),
        ];
        let err = find(&runs, "orders", None).unwrap_err().to_string();
        assert!(err.contains("ambiguous: 2 runs"), "{err}");
        assert!(err.contains("shop \"public\".\"orders\""), "{err}");
        assert!(err.contains("crm \"public\".\"orders\""), "{err}");
        assert_eq!(find(&runs, "orders", Some("crm")).unwrap().database, "crm");
        assert_eq!(find(&runs, "public.items", None).unwrap().table, "items");
        let none = find(&runs, "other.items", None).unwrap_err().to_string();
        assert!(none.contains("(runs seen: shop "), "{none}");
        assert!(none.contains("shop \"public\".\"items\" (pid"), "{none}");
    }

    #[test]
    fn a_registration_is_found_while_it_lives() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry("shop", "public", "orders");
        let reg = Registration::write(dir.path(), &e).unwrap();
        assert_eq!(runs(dir.path()), vec![e.clone()]);
        assert!(
            remove_stale(dir.path(), e.oid).is_empty(),
            "its process lives"
        );
        drop(reg);
        assert!(runs(dir.path()).is_empty());
    }
}
