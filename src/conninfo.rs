//! Connection settings the libpq way: a `--dsn` (URI or `key=value` string), otherwise the
//! `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD` and `PGDATABASE` environment variables.
//!
//! Parsing is tokio-postgres's own ([`tokio_postgres::Config`]); this module only fills the
//! gaps libpq would fill from the environment and produces a password-free description for
//! logs and plans.

use std::path::Path;

use anyhow::{Context, Result, bail};
use tokio_postgres::config::{Host, SslMode};

use crate::failure::{FailureKind, fail};

/// Builds the connection settings from `dsn` (URI `postgres://user@host/db` or key/value
/// `host=.. dbname=..`), filling whatever the DSN leaves out from `PGHOST`, `PGPORT`,
/// `PGUSER`, `PGPASSWORD` and `PGDATABASE`, then libpq's defaults (Unix socket in
/// `/var/run/postgresql` or `/tmp` when present, else `localhost`; port 5432; the OS user;
/// a database named like the user).
///
/// Errors: an unparsable DSN or port, or `sslmode=require` (TLS is not supported yet).
pub fn resolve(dsn: Option<&str>) -> Result<tokio_postgres::Config> {
    let mut config = match dsn {
        Some(text) => text
            .parse::<tokio_postgres::Config>()
            .context("cannot parse --dsn: give a URI like postgres://user@host:5432/db or key=value pairs like 'host=.. dbname=..'")?,
        None => tokio_postgres::Config::new(),
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if config.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(hosts) => {
                for host in hosts.split(',') {
                    config.host(host);
                }
            }
            None => {
                let socket_dir = ["/var/run/postgresql", "/tmp"]
                    .into_iter()
                    .find(|dir| Path::new(dir).is_dir() && has_socket(dir));
                match socket_dir {
                    Some(dir) => config.host_path(dir),
                    None => config.host("localhost"),
                };
            }
        }
    }
    if config.get_ports().is_empty() {
        let port = match env("PGPORT") {
            Some(p) => p
                .parse::<u16>()
                .with_context(|| format!("PGPORT={p:?} is not a port number"))?,
            None => 5432,
        };
        config.port(port);
    }
    if config.get_user().is_none() {
        let user = env("PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".to_string());
        config.user(&user);
    }
    if config.get_password().is_none()
        && let Some(password) = env("PGPASSWORD")
    {
        config.password(password);
    }
    if config.get_dbname().is_none() {
        let db = env("PGDATABASE")
            .unwrap_or_else(|| config.get_user().unwrap_or("postgres").to_string());
        config.dbname(&db);
    }
    if config.get_application_name().is_none() {
        config.application_name("doppel");
    }
    // libpq takes sslmode from PGSSLMODE when the connection string does not set it: a user
    // who asks for encryption there gets it or a refusal, never plain text.
    let dsn_sets_sslmode = dsn.is_some_and(|text| text.contains("sslmode"));
    if !dsn_sets_sslmode && let Some(mode) = env("PGSSLMODE") {
        match mode.as_str() {
            "disable" | "allow" | "prefer" => {}
            "require" | "verify-ca" | "verify-full" => {
                return Err(fail(
                    FailureKind::Usage,
                    format!(
                        "PGSSLMODE={mode}: TLS connections are not supported by this doppel build yet; refusing to connect in plain text"
                    ),
                ));
            }
            other => {
                return Err(fail(
                    FailureKind::Usage,
                    format!(
                        "PGSSLMODE={other:?} is not a valid sslmode (disable, allow, prefer, require, verify-ca, verify-full)"
                    ),
                ));
            }
        }
    }
    if config.get_ssl_mode() == SslMode::Require {
        bail!(
            "sslmode=require: TLS connections are not supported by this doppel build yet; connect over a trusted network or a Unix socket with sslmode=disable or prefer"
        );
    }
    Ok(config)
}

fn has_socket(dir: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".s.PGSQL."))
        })
        .unwrap_or(false)
}

/// A description of where `config` connects, safe for logs and plans: `user@host:port/dbname`,
/// never the password.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "?".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or("?"),
        host,
        port,
        config.get_dbname().unwrap_or("?")
    )
}

/// Opens a normal (non-replication) session without TLS and spawns its connection task.
///
/// Errors: the server's error (authentication, unknown database, ...), with the target from
/// [`describe`] for context.
pub async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let (client, connection) = with_exact_output(config)
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {}", describe(config)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection closed: {e}");
        }
    });
    Ok(client)
}

/// Settings that make values round-trip exactly as text, whatever the database or role sets:
/// floats with all their digits, ISO dates, PostgreSQL-style intervals (what PostgreSQL's own
/// logical replication worker sets). The WAL sender applies the database's settings to the
/// values it streams, so `extra_float_digits = 0` there would stream rounded floats.
pub const EXACT_OUTPUT_OPTIONS: &str =
    "-c extra_float_digits=3 -c datestyle=ISO -c intervalstyle=postgres";

/// `config` with [`EXACT_OUTPUT_OPTIONS`] appended to its startup `options` (so a user's
/// own `-c` settings in the DSN stay, and these win for the three settings).
pub fn with_exact_output(config: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut config = config.clone();
    let options = match config.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {EXACT_OUTPUT_OPTIONS}"),
        _ => EXACT_OUTPUT_OPTIONS.to_string(),
    };
    config.options(&options);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_uri_and_key_value_both_parse() {
        let c = resolve(Some("postgres://alice:secret@db.example:6543/shop")).unwrap();
        assert_eq!(c.get_user(), Some("alice"));
        assert_eq!(c.get_ports(), &[6543]);
        assert_eq!(describe(&c), "alice@db.example:6543/shop");
        assert!(!describe(&c).contains("secret"));
        let c = resolve(Some("host=h1 port=7000 user=bob dbname=x password=pw")).unwrap();
        assert_eq!(describe(&c), "bob@h1:7000/x");
    }

    #[test]
    fn require_tls_is_refused_with_a_reason() {
        let err = resolve(Some("host=h sslmode=require")).unwrap_err();
        assert!(err.to_string().contains("TLS"));
    }
}
