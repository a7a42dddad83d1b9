//! A minimal PostgreSQL logical replication client.
//!
//! tokio-postgres does not speak the streaming replication protocol, so this crate carries its
//! own small client built on `postgres-protocol` message encoding and a plain tokio socket. It
//! is the transport only:
//!
//! 1. [`ReplicationClient::connect`] (or [`ReplicationClient::connect_with_tls`], with a
//!    caller-provided [`TlsConnector`]) opens one connection with `replication=database` in
//!    the startup packet (trust, cleartext, MD5 or SCRAM-SHA-256 authentication, with channel
//!    binding over TLS).
//! 2. [`ReplicationClient::identify_system`], [`ReplicationClient::create_logical_slot`] and
//!    [`ReplicationClient::simple_query`] run replication (or plain SQL) commands with the
//!    simple-query protocol.
//! 3. [`ReplicationClient::start_logical_replication`] turns the connection into a
//!    [`ReplicationStream`] (CopyBoth mode) that yields [`ReplicationMessage`]s: each
//!    `XLogData` carries the raw pgoutput payload bytes, which `crate::pgoutput` decodes.
//!
//! Standby status updates are sent by the caller with
//! [`ReplicationStream::send_standby_status`]; nothing is acknowledged automatically.
//!
//! One module per concern, each depending only on those listed before it:
//! `error` ([`ReplicationError`], server error and notice parsing), `tls` (the
//! [`TlsConnector`] interface and the SSLRequest), `conn` (the framed socket), `auth` (password authentication), `connect` (targets, sockets, startup and
//! handshake), `commands` (simple query, `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, command
//! text), `stream` (`START_REPLICATION` and the [`ReplicationStream`]). This module holds the
//! [`ReplicationClient`] type, whose methods delegate to them.

mod auth;
mod commands;
mod conn;
mod connect;
mod error;
mod stream;
mod tls;

use std::fmt;

use crate::lsn::Lsn;
use conn::Conn;

pub use commands::{CreatedSlot, SystemInfo};
pub use error::ReplicationError;
pub use stream::{ReplicationMessage, ReplicationStream};
pub use tls::{HandshakeFuture, Stream, TlsConnector, TlsSession};

/// One connection to PostgreSQL with `replication=database`, in command mode.
///
/// Obtained from [`ReplicationClient::connect`]; consumed by
/// [`ReplicationClient::start_logical_replication`]. Dropping it closes the socket without a
/// Terminate message, which the server treats as a client disconnect.
pub struct ReplicationClient {
    conn: Conn,
    backend_pid: i32,
    tls: bool,
}

impl fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("backend_pid", &self.backend_pid)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ReplicationClient {
    /// Connects without TLS using the same settings as a [`tokio_postgres::Config`]: hosts
    /// (TCP names or addresses, `hostaddr`, or Unix socket directories, for which the socket
    /// is `<dir>/.s.PGSQL.<port>`), ports (one for all hosts or one per host; default 5432),
    /// user (default `$USER`), password, dbname, application_name, options, connect_timeout
    /// (applied to each host's whole connect-and-authenticate attempt), TCP keepalives and
    /// `target_session_attrs` (`read-write` skips a host whose `transaction_read_only` is
    /// on). Adds `replication=database` and `client_encoding=UTF8` to the startup packet.
    /// Hosts are tried in order; the first that accepts wins. `sslmode=prefer` connects in
    /// plain text here (no SSLRequest is sent): use [`ReplicationClient::connect_with_tls`]
    /// for TLS.
    ///
    /// Authentication: trust, cleartext password, MD5 and SCRAM-SHA-256.
    ///
    /// # Errors
    /// * [`ReplicationError::Unsupported`] for `sslmode=require` or `channel_binding=require`
    ///   (they need [`ReplicationClient::connect_with_tls`]) and for Kerberos, GSSAPI, SSPI or
    ///   non-SCRAM SASL authentication.
    /// * [`ReplicationError::Config`] if there is no host, the host/port counts mismatch, or
    ///   no user is configured nor `$USER` set.
    /// * Otherwise the error of the last host tried: [`ReplicationError::Io`] (unreachable,
    ///   `TimedOut` after connect_timeout), [`ReplicationError::Server`] (e.g. `28P01` wrong
    ///   password, `28000` no pg_hba.conf entry, `3D000` no such database),
    ///   [`ReplicationError::Auth`] (password needed but not configured, SCRAM failure),
    ///   [`ReplicationError::ReadOnly`] (every host was read-only under
    ///   `target_session_attrs=read-write`).
    pub async fn connect(
        config: &tokio_postgres::Config,
    ) -> Result<ReplicationClient, ReplicationError> {
        Self::open(config, None).await
    }

    /// Like [`ReplicationClient::connect`], with TLS through `tls` on TCP connections (Unix
    /// sockets stay plain, as in libpq): with `sslmode=prefer` an SSLRequest is sent and the
    /// connection continues in plain text if the server declines; with `sslmode=require` a
    /// server that declines is an error. What the handshake verifies (the CA, the host name)
    /// is `tls`'s decision. Over TLS, SCRAM uses channel binding (SCRAM-SHA-256-PLUS,
    /// `tls-server-end-point`) when the server offers it and `channel_binding` is not
    /// `disable`; `channel_binding=require` fails unless it was used.
    ///
    /// # Errors
    /// Those of [`ReplicationClient::connect`], and [`ReplicationError::Tls`] (the server
    /// declined TLS under `sslmode=require`, or channel binding was required and not used);
    /// a failed handshake is [`ReplicationError::Io`] naming the host and the connector's
    /// reason.
    pub async fn connect_with_tls(
        config: &tokio_postgres::Config,
        tls: &dyn TlsConnector,
    ) -> Result<ReplicationClient, ReplicationError> {
        Self::open(config, Some(tls)).await
    }

    async fn open(
        config: &tokio_postgres::Config,
        tls: Option<&dyn TlsConnector>,
    ) -> Result<ReplicationClient, ReplicationError> {
        let opened = connect::connect(config, tls).await?;
        Ok(ReplicationClient {
            conn: opened.conn,
            backend_pid: opened.backend_pid,
            tls: opened.tls,
        })
    }

    /// Whether the connection is encrypted (TLS).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Runs `sql` with the simple-query protocol and returns all rows of all result sets, each
    /// column as text (`None` = SQL NULL). Replication commands (IDENTIFY_SYSTEM, SHOW,
    /// DROP_REPLICATION_SLOT, ...) and, on a `replication=database` connection, plain SQL both
    /// work. Commands returning no rows give an empty vector.
    ///
    /// # Errors
    /// [`ReplicationError::Server`] if the server reports an error (the connection stays
    /// usable); [`ReplicationError::Protocol`] for a COPY or streaming command (which this
    /// method refuses and unwinds) or malformed replies; [`ReplicationError::Io`] on socket
    /// failure.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        commands::simple_query(&mut self.conn, sql).await
    }

    /// Runs `IDENTIFY_SYSTEM`.
    ///
    /// # Errors
    /// Those of [`ReplicationClient::simple_query`], and [`ReplicationError::Protocol`] if the
    /// reply is not one row of at least four columns with a numeric timeline and an LSN.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplicationError> {
        commands::identify_system(&mut self.conn).await
    }

    /// Runs `CREATE_REPLICATION_SLOT "<name>" [TEMPORARY] LOGICAL pgoutput EXPORT_SNAPSHOT`
    /// (the legacy syntax, accepted by PostgreSQL 14 through 18). The name is quoted as an
    /// identifier, so it must already be a valid slot name (lower-case letters, digits, `_`).
    ///
    /// A TEMPORARY slot is dropped by the server when this connection ends (including after
    /// [`ReplicationStream::close`]). The exported snapshot stays valid only until the next
    /// command on this connection: import it elsewhere first (see [`CreatedSlot`]).
    ///
    /// # Errors
    /// Those of [`ReplicationClient::simple_query`] (e.g. Server `42710` when the slot
    /// exists, `55000` when `wal_level` is not `logical`), and [`ReplicationError::Protocol`]
    /// for a reply of the wrong shape.
    pub async fn create_logical_slot(
        &mut self,
        name: &str,
        temporary: bool,
    ) -> Result<CreatedSlot, ReplicationError> {
        commands::create_logical_slot(&mut self.conn, name, temporary, false).await
    }

    /// Runs `CREATE_REPLICATION_SLOT "<name>" LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER
    /// true)`: a permanent slot that PostgreSQL 17+ synchronizes to standbys running with
    /// `sync_replication_slots = on`, so that it survives a failover to them. The exported
    /// snapshot is as for [`ReplicationClient::create_logical_slot`].
    ///
    /// # Errors
    /// As [`ReplicationClient::create_logical_slot`]; before PostgreSQL 17 the server refuses
    /// the `FAILOVER` option (`42601`).
    pub async fn create_failover_slot(
        &mut self,
        name: &str,
    ) -> Result<CreatedSlot, ReplicationError> {
        commands::create_logical_slot(&mut self.conn, name, false, true).await
    }

    /// Runs `START_REPLICATION SLOT "<slot>" LOGICAL <start> (proto_version '1',
    /// publication_names '"<publication>"'[, messages 'true'])` and, once the server enters
    /// CopyBoth mode, returns the stream. `start` is usually the slot's consistent point or
    /// the last flushed position; the server never streams from before the slot's
    /// `confirmed_flush_lsn`. `messages` asks pgoutput to also send logical decoding messages
    /// (`pg_logical_emit_message`).
    ///
    /// # Errors
    /// [`ReplicationError::Server`] if the server refuses (e.g. `42704` unknown slot or
    /// publication, `55006` slot active elsewhere); [`ReplicationError::Protocol`] if the
    /// server does not enter CopyBoth mode; [`ReplicationError::Io`] on socket failure.
    pub async fn start_logical_replication(
        self,
        slot: &str,
        start: Lsn,
        publication: &str,
        messages: bool,
    ) -> Result<ReplicationStream, ReplicationError> {
        let options = StartOptions {
            messages,
            origin_none: false,
        };
        self.start_logical_replication_with(slot, start, publication, options)
            .await
    }

    /// [`ReplicationClient::start_logical_replication`] with every pgoutput option of
    /// [`StartOptions`]. Errors: as `start_logical_replication`; a server before PostgreSQL
    /// 16 refuses `origin` (`22023`, unrecognized pgoutput parameter).
    pub async fn start_logical_replication_with(
        self,
        slot: &str,
        start: Lsn,
        publication: &str,
        options: StartOptions,
    ) -> Result<ReplicationStream, ReplicationError> {
        stream::start_logical_replication(
            self.conn,
            self.backend_pid,
            slot,
            start,
            publication,
            options,
        )
        .await
    }
}

/// pgoutput options of `START_REPLICATION` beyond the protocol version and the publication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// `messages 'true'`: also send logical decoding messages (`pg_logical_emit_message`).
    pub messages: bool,
    /// `origin 'none'` (PostgreSQL 16+): send only changes that carry no replication origin.
    /// The server drops the others while decoding, before its reorder buffer, so sessions
    /// that set an origin (`pg_replication_origin_session_setup`) write without being decoded.
    pub origin_none: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let config = tokio_postgres::Config::new();
        assert_send(&ReplicationClient::connect(&config));
        let (client, _server) = tokio::io::duplex(64);
        let mut stream = ReplicationStream::new(Conn::new(Box::new(client)), 0);
        assert_send(&stream.recv());
        assert_send(&stream.send_standby_status(Lsn(1), Lsn(1), Lsn(1), false));
        assert_send(&stream.close());
    }
}
