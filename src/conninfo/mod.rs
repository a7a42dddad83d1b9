//! Connection settings the libpq way, and the connections doppel opens with them.
//!
//! A `--dsn` (URI or `key=value`, [`dsn`]) is completed, for every parameter it leaves out,
//! from the service file ([`service`]) and then the `PG*` environment variables ([`env`]),
//! then libpq's defaults; passwords come from the DSN, `PGPASSWORD` or the password file
//! ([`passfile`], per host as libpq looks them up). TLS follows libpq's `sslmode` semantics
//! ([`tls`]). [`connect`] opens an ordinary session (tokio-postgres), [`connect_replication`]
//! the replication connection (`pglogrepl`); both try the hosts in order, fall back between
//! TLS and plain text only where `sslmode` allows it, and honour `target_session_attrs`
//! ([`session`]). Nothing here ever displays a password.

pub mod dsn;
pub mod env;
mod own;
pub mod passfile;
pub mod service;
pub mod session;
pub mod settings;
pub mod tls;

pub use own::backend_pids as own_backend_pids;
pub use session::{
    Security, cancel, connect, connect_replication, pgbouncer_answer, probe_replication, security,
    security_of_replication,
};
pub use settings::{ConnInfo, SessionAttrs, ToConnInfo, resolve};

/// Settings that make values round-trip exactly as text, whatever the database or role sets:
/// floats with all their digits, ISO dates, PostgreSQL-style intervals (what PostgreSQL's own
/// logical replication worker sets). The WAL sender applies the database's settings to the
/// values it streams, so `extra_float_digits = 0` there would stream rounded floats.
pub const EXACT_OUTPUT_OPTIONS: &str =
    "-c extra_float_digits=3 -c datestyle=ISO -c intervalstyle=postgres";

/// `config` with `setting` (`-c name=value` text) appended to its startup `options` (so a
/// user's own `-c` settings stay, and this one wins for its parameter).
pub fn with_option(config: &tokio_postgres::Config, setting: &str) -> tokio_postgres::Config {
    let mut config = config.clone();
    let options = match config.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {setting}"),
        _ => setting.to_string(),
    };
    config.options(&options);
    config
}
