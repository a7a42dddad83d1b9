//! Opening connections: each host in order, the encryption attempts `sslmode` allows for it
//! (libpq: `prefer` falls back to plain text, `allow` to TLS; a Unix socket is never
//! encrypted), then `target_session_attrs`. The same loop serves the ordinary sessions
//! (tokio-postgres) and the replication connection (`pglogrepl`).

use std::fmt;
use std::future::Future;

use anyhow::{Context, Result};
use pglogrepl::ReplicationClient;
use tokio_postgres::config::SslMode as PgSslMode;

use super::settings::{ConnInfo, HostEntry, SessionAttrs, ToConnInfo};
use super::tls::{SslMode, Verification};

/// What a server is, for `target_session_attrs`.
#[derive(Debug, Clone, Copy)]
struct Role {
    read_only: bool,
    in_recovery: bool,
}

/// The query that tells a [`Role`]: one row, two booleans as text.
const ROLE_SQL: &str =
    "SELECT current_setting('transaction_read_only') = 'on', pg_catalog.pg_is_in_recovery()";

/// Whether `role` is acceptable under `attrs` (in the pass that wants `pass`).
fn accepts(pass: SessionAttrs, role: Role) -> bool {
    match pass {
        SessionAttrs::Any | SessionAttrs::PreferStandby => true,
        SessionAttrs::ReadWrite => !role.read_only,
        SessionAttrs::ReadOnly => role.read_only,
        SessionAttrs::Primary => !role.in_recovery,
        SessionAttrs::Standby => role.in_recovery,
    }
}

/// The encryption attempts for `host`, in order: tokio-postgres's `sslmode` per attempt.
fn attempts(info: &ConnInfo, host: &HostEntry) -> Vec<PgSslMode> {
    if host.is_unix() {
        return vec![PgSslMode::Disable];
    }
    match info.tls_settings.mode {
        SslMode::Disable => vec![PgSslMode::Disable],
        SslMode::Allow => vec![PgSslMode::Disable, PgSslMode::Require],
        // Prefer: TLS if the server accepts it, plain text if it declines (tokio-postgres),
        // and plain text again if the TLS attempt fails (libpq).
        SslMode::Prefer => vec![PgSslMode::Prefer, PgSslMode::Disable],
        _ => vec![PgSslMode::Require],
    }
}

/// Tries every host and encryption attempt with `open` until one gives a session whose
/// [`Role`] `target_session_attrs` accepts. `open` gets the host and the per-attempt
/// tokio-postgres settings (with the password file's password and the attempt's `sslmode`).
///
/// Errors: every attempt's failure, each prefixed with its host.
async fn each_attempt<T, F, Fut>(info: &ConnInfo, what: &str, mut open: F) -> Result<T>
where
    F: FnMut(HostEntry, tokio_postgres::Config) -> Fut,
    Fut: Future<Output = Result<(T, Option<Role>)>>,
{
    let passes: &[SessionAttrs] = match info.target {
        SessionAttrs::PreferStandby => &[SessionAttrs::Standby, SessionAttrs::Any],
        other => std::slice::from_ref(match other {
            SessionAttrs::Any => &SessionAttrs::Any,
            SessionAttrs::ReadWrite => &SessionAttrs::ReadWrite,
            SessionAttrs::ReadOnly => &SessionAttrs::ReadOnly,
            SessionAttrs::Primary => &SessionAttrs::Primary,
            _ => &SessionAttrs::Standby,
        }),
    };
    let mut failures = Vec::new();
    // Every attempt failed for a reason that can pass (a server restarting, unreachable,
    // not yet promoted): a resumable run retries (crate::failure::is_transient).
    let mut transient = true;
    for pass in passes {
        for host in &info.hosts {
            for mode in attempts(info, host) {
                let mut config = info.for_host(host);
                config.ssl_mode(mode);
                match open(host.clone(), config).await {
                    Ok((session, role)) => {
                        if role.is_none_or(|r| accepts(*pass, r)) {
                            return Ok(session);
                        }
                        failures.push(format!(
                            "{}: the server does not match target_session_attrs ({:?})",
                            host.label(),
                            info.target
                        ));
                        break;
                    }
                    Err(e) => {
                        transient &= crate::failure::is_transient(&e);
                        failures.push(format!("{}: {e:#}", host.label()));
                    }
                }
            }
        }
    }
    let message = format!(
        "cannot open {what} to {}: {}",
        info.describe(),
        failures.join("; ")
    );
    if transient {
        Err(crate::failure::Disconnected(message).into())
    } else {
        Err(anyhow::anyhow!(message))
    }
}

/// Opens an ordinary session (tokio-postgres) with `config`'s settings and spawns its
/// connection task: TLS as `sslmode` says, the hosts in order, `target_session_attrs`.
///
/// Errors: no host gave an acceptable session; the message lists each attempt's failure
/// (the server's error, a failed TLS handshake with OpenSSL's reason, "the server does not
/// support TLS" under `require`), never a password.
pub async fn connect(config: &(impl ToConnInfo + ?Sized)) -> Result<tokio_postgres::Client> {
    let info = config.to_conn_info();
    let check = info.target != SessionAttrs::Any;
    each_attempt(&info, "a session", |_host, pg| {
        let tls = info.tls.for_sessions();
        async move {
            let (client, connection) = pg.connect(tls).await?;
            let pid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
            let ended = pid.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("connection closed: {e}");
                }
                super::own::forget(ended.load(std::sync::atomic::Ordering::SeqCst));
            });
            remember_backend(&client, &pid).await;
            let role = if check {
                let row = client.query_one(ROLE_SQL, &[]).await?;
                Some(Role {
                    read_only: row.get(0),
                    in_recovery: row.get(1),
                })
            } else {
                None
            };
            Ok((client, role))
        }
    })
    .await
}

/// Records the backend pid of the session `client` among this process's own sessions (see
/// `own`), storing it in `pid` for the connection task to forget when it ends. A server
/// that cannot say (PgBouncer's admin console) leaves nothing recorded.
async fn remember_backend(client: &tokio_postgres::Client, pid: &std::sync::atomic::AtomicI32) {
    let Ok(messages) = client.simple_query("SELECT pg_backend_pid()").await else {
        return;
    };
    let backend = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse::<i32>().ok(),
        _ => None,
    });
    if let Some(backend) = backend {
        pid.store(backend, std::sync::atomic::Ordering::SeqCst);
        super::own::remember(backend);
        if client.is_closed() {
            super::own::forget(backend);
        }
    }
}

/// Opens the replication connection (`pglogrepl`, `replication=database`) with the same
/// rules as [`connect`]: TLS through the same OpenSSL settings, channel binding, the hosts in
/// order, `target_session_attrs`.
///
/// Errors: as [`connect`].
pub async fn connect_replication(config: &(impl ToConnInfo + ?Sized)) -> Result<ReplicationClient> {
    let info = config.to_conn_info();
    let check = info.target != SessionAttrs::Any;
    each_attempt(&info, "the replication connection", |_host, pg| {
        let tls = info.tls.clone();
        async move {
            let mut client = ReplicationClient::connect_with_tls(&pg, &tls).await?;
            let role = if check {
                let rows = client.simple_query(ROLE_SQL).await?;
                let cell = |i: usize| {
                    rows.first()
                        .and_then(|r| r.get(i).cloned().flatten())
                        .is_some_and(|v| v == "t")
                };
                Some(Role {
                    read_only: cell(0),
                    in_recovery: cell(1),
                })
            } else {
                None
            };
            Ok((client, role))
        }
    })
    .await
}

/// Sends a cancel request for `token`'s session over a new connection protected as
/// `config` says (its TLS settings, as the session itself was). A failure is logged: the
/// statement then simply runs on.
pub async fn cancel(token: &tokio_postgres::CancelToken, config: &ConnInfo) {
    if let Err(e) = token.cancel_query(config.tls.for_sessions()).await {
        tracing::warn!("could not send the cancel request: {e}");
    }
}

/// What PgBouncer says when a client sends a startup parameter it does not forward (doppel's
/// replication connection always sends `replication` and `options`). PostgreSQL itself never
/// says this.
const PGBOUNCER_STARTUP_ERROR: &str = "unsupported startup parameter";

/// When `err` (a failed connection) is PgBouncer's answer, PgBouncer's message; `None`
/// otherwise.
pub fn pgbouncer_answer(err: &anyhow::Error) -> Option<String> {
    let text = format!("{err:#}");
    let start = text.find(PGBOUNCER_STARTUP_ERROR)?;
    let end = text[start..]
        .find([';', '\n'])
        .map_or(text.len(), |i| start + i);
    Some(text[start..end].to_string())
}

/// Opens a replication connection and closes it at once: whether the replication
/// connection doppel will need can be had, before anything is created.
///
/// Errors: those of [`connect_replication`].
pub async fn probe_replication(config: &ConnInfo) -> Result<()> {
    let client = connect_replication(config).await?;
    drop(client);
    Ok(())
}

/// How a connection is protected, for the plan and the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// The TLS protocol version (`TLSv1.3`), `None` for a plain-text connection.
    pub tls_version: Option<String>,
    /// The cipher, when encrypted.
    pub cipher: Option<String>,
    /// What the client verified of the server's certificate.
    pub verification: Verification,
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tls_version {
            None => f.write_str("not encrypted"),
            Some(version) => {
                write!(f, "{version}")?;
                if let Some(cipher) = &self.cipher {
                    write!(f, " ({cipher})")?;
                }
                f.write_str(match self.verification {
                    Verification::Full => ", server certificate verified (chain and host name)",
                    Verification::Chain => {
                        ", server certificate verified (chain only, host name not checked)"
                    }
                    Verification::None => ", server certificate NOT verified",
                })
            }
        }
    }
}

/// The query that tells how the session itself is protected (`pg_stat_ssl`).
const SSL_SQL: &str = "SELECT version, cipher FROM pg_catalog.pg_stat_ssl \
                       WHERE pid = pg_catalog.pg_backend_pid() AND ssl";

/// How `client`'s session is protected, as the server sees it (`pg_stat_ssl`), with what
/// `config` verifies.
///
/// Errors: the query failed.
pub async fn security(
    client: &tokio_postgres::Client,
    config: &(impl ToConnInfo + ?Sized),
) -> Result<Security> {
    let rows = client
        .query(SSL_SQL, &[])
        .await
        .context("reading pg_stat_ssl")?;
    let verification = config.to_conn_info().tls_settings.verification();
    Ok(match rows.first() {
        Some(row) => Security {
            tls_version: row.get(0),
            cipher: row.get(1),
            verification,
        },
        None => Security {
            tls_version: None,
            cipher: None,
            verification,
        },
    })
}

/// [`security`] for the replication connection.
///
/// Errors: the query failed.
pub async fn security_of_replication(
    client: &mut ReplicationClient,
    config: &(impl ToConnInfo + ?Sized),
) -> Result<Security> {
    let rows = client
        .simple_query(SSL_SQL)
        .await
        .context("reading pg_stat_ssl")?;
    let verification = config.to_conn_info().tls_settings.verification();
    let cell = |i: usize| rows.first().and_then(|r| r.get(i).cloned().flatten());
    Ok(Security {
        tls_version: cell(0),
        cipher: cell(1),
        verification,
    })
}
