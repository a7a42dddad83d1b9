//! The server: version, `wal_level`, a free replication slot and WAL sender, the database
//! encoding (docs/design.md §1.1). Everything is read in one query ([`read`]), which also
//! reads the role attributes [`super::privileges`] checks.

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::failure::{Check, Refusal};

/// Oldest supported server (`server_version_num`).
pub const MIN_SERVER_VERSION: i32 = 140000;

/// The settings and counts preflight reads from the server, with the current role.
#[derive(Debug, Clone)]
pub struct Server {
    /// `server_version_num`, e.g. 150018.
    pub version: i32,
    /// `wal_level`.
    pub wal_level: String,
    /// `max_replication_slots`.
    pub max_slots: i32,
    /// Rows of `pg_replication_slots`.
    pub slots: i32,
    /// `max_wal_senders`.
    pub max_senders: i32,
    /// Walsender backends in `pg_stat_activity`.
    pub senders: i32,
    /// `server_encoding`.
    pub encoding: String,
    /// `pg_roles.rolsuper` of the current user.
    pub superuser: bool,
    /// `pg_roles.rolreplication` of the current user.
    pub replication: bool,
    /// `current_user`.
    pub user: String,
}

/// Reads the settings (`current_setting`), the slots in use (`pg_replication_slots`), the WAL
/// senders running (`pg_stat_activity`) and the current role's attributes (`pg_roles`).
///
/// Errors: the query fails (connection lost, ...).
pub async fn read(client: &Client) -> Result<Server> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'),
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int,
                    current_setting('server_encoding'),
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                    (SELECT rolreplication FROM pg_roles WHERE rolname = current_user),
                    current_user::text",
            &[],
        )
        .await
        .context("reading server settings")?;
    Ok(Server {
        version: row.get(0),
        wal_level: row.get(1),
        max_slots: row.get(2),
        slots: row.get(3),
        max_senders: row.get(4),
        senders: row.get(5),
        encoding: row.get(6),
        superuser: row.get(7),
        replication: row.get(8),
        user: row.get(9),
    })
}

/// [`Check::ServerVersion`]: refuses a server older than [`MIN_SERVER_VERSION`]. Preflight
/// stops at this refusal (the other checks' queries may not work on an older server).
pub fn version(server: &Server) -> Option<Refusal> {
    (server.version < MIN_SERVER_VERSION).then(|| {
        Refusal::without_fix(
            Check::ServerVersion,
            format!(
                "the server is PostgreSQL {}.{}: doppel needs PostgreSQL 14 or newer",
                server.version / 10000,
                server.version % 10000
            ),
        )
    })
}

/// [`Check::WalLevel`], [`Check::ReplicationSlots`], [`Check::WalSenders`] and
/// [`Check::Encoding`], in that order: logical decoding needs `wal_level = logical`, a free
/// slot and a free WAL sender; values are streamed as UTF-8.
pub fn settings(server: &Server) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let Server {
        wal_level,
        max_slots,
        max_senders,
        encoding,
        ..
    } = server;
    if wal_level != "logical" {
        refusals.push(Refusal::new(
            Check::WalLevel,
            format!("wal_level is '{wal_level}': doppel streams changes through logical decoding"),
            "set wal_level = logical (ALTER SYSTEM SET wal_level = logical, or in postgresql.conf) and restart the server",
        ));
    }
    if server.slots >= *max_slots {
        refusals.push(Refusal::new(
            Check::ReplicationSlots,
            format!("all {max_slots} replication slots are in use (max_replication_slots)"),
            "raise max_replication_slots and restart, or drop an unused slot (SELECT pg_drop_replication_slot(..))",
        ));
    }
    if server.senders >= *max_senders {
        refusals.push(Refusal::new(
            Check::WalSenders,
            format!("all {max_senders} WAL senders are in use (max_wal_senders)"),
            "raise max_wal_senders and restart",
        ));
    }
    if encoding != "UTF8" && encoding != "SQL_ASCII" {
        refusals.push(Refusal::without_fix(
            Check::Encoding,
            format!(
                "the database encoding is {encoding}: this doppel version streams values as UTF-8 and supports UTF8 (or SQL_ASCII) databases only"
            ),
        ));
    }
    refusals
}
