//! [`ReplicationError`], and the parsing of the server's ErrorResponse and NoticeResponse
//! bodies into it (or into a log line).

use std::io;

use postgres_protocol::message::backend;
use tokio_postgres::fallible_iterator::FallibleIterator;

/// Errors from the replication client.
///
/// Passwords never appear in any variant's text.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Socket failure: connecting (the message names the host), reading, writing, a connect
    /// timeout (`ErrorKind::TimedOut`) or the server closing the connection mid-message or
    /// mid-command (`ErrorKind::UnexpectedEof`).
    #[error("replication connection I/O error: {0}")]
    Io(#[from] io::Error),
    /// An `ErrorResponse` from the server. Display shows severity, SQLSTATE, message and, when
    /// present, the DETAIL and HINT lines.
    #[error("{}", display_server_error(.severity, .code, .message, .detail.as_deref(), .hint.as_deref()))]
    Server {
        /// Severity, e.g. `ERROR` or `FATAL` (the non-localized form when the server sends it).
        severity: String,
        /// Five-character SQLSTATE, e.g. `42704` for an undefined object.
        code: String,
        /// Primary human-readable message.
        message: String,
        /// Optional secondary message with more detail.
        detail: Option<String>,
        /// Optional suggestion on what to do about the problem.
        hint: Option<String>,
    },
    /// The server sent something this client did not expect (malformed frame, unexpected
    /// message, result of the wrong shape).
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// Authentication could not be carried out on the client side (no password configured,
    /// SCRAM exchange or server-signature verification failed). A password the server rejects
    /// is reported as [`ReplicationError::Server`] with SQLSTATE `28P01`.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// TLS was required but could not be had: the server refused the SSLRequest under
    /// `sslmode=require`, or channel binding was required and not used.
    #[error("{0}")]
    Tls(String),
    /// `target_session_attrs=read-write` and the server's session is read-only (a standby).
    #[error("{0}")]
    ReadOnly(String),
    /// A feature the client does not implement (an authentication method other than trust,
    /// cleartext password, MD5 and SCRAM-SHA-256(-PLUS)), or `sslmode=require` without a
    /// TLS connector.
    #[error("not supported by doppel's replication client: {0}")]
    Unsupported(String),
    /// The connection settings cannot be used (no host, mismatched host/port counts, no user).
    #[error("invalid replication connection settings: {0}")]
    Config(String),
}

fn display_server_error(
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> String {
    let mut out = format!("{severity} {code}: {message}");
    if let Some(detail) = detail {
        out.push_str("\nDETAIL: ");
        out.push_str(detail);
    }
    if let Some(hint) = hint {
        out.push_str("\nHINT: ");
        out.push_str(hint);
    }
    out
}

impl ReplicationError {
    /// The SQLSTATE code when this is a [`ReplicationError::Server`] error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A Protocol error from a `postgres-protocol` parse failure.
pub(super) fn protocol_err(e: io::Error) -> ReplicationError {
    ReplicationError::Protocol(e.to_string())
}

/// The fields of an ErrorResponse or NoticeResponse body.
#[derive(Default)]
struct ServerFields {
    severity: Option<String>,
    severity_nonlocalized: Option<String>,
    code: Option<String>,
    message: Option<String>,
    detail: Option<String>,
    hint: Option<String>,
}

fn parse_fields(mut fields: backend::ErrorFields<'_>) -> Result<ServerFields, ReplicationError> {
    let mut out = ServerFields::default();
    while let Some(field) = fields.next().map_err(protocol_err)? {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'S' => out.severity = Some(value),
            b'V' => out.severity_nonlocalized = Some(value),
            b'C' => out.code = Some(value),
            b'M' => out.message = Some(value),
            b'D' => out.detail = Some(value),
            b'H' => out.hint = Some(value),
            _ => {}
        }
    }
    Ok(out)
}

/// The [`ReplicationError::Server`] an ErrorResponse describes (defaults: severity `ERROR`,
/// SQLSTATE `XX000`, empty message).
pub(super) fn server_error(body: &backend::ErrorResponseBody) -> ReplicationError {
    match parse_fields(body.fields()) {
        Ok(f) => ReplicationError::Server {
            severity: f
                .severity_nonlocalized
                .or(f.severity)
                .unwrap_or_else(|| "ERROR".to_string()),
            code: f.code.unwrap_or_else(|| "XX000".to_string()),
            message: f.message.unwrap_or_default(),
            detail: f.detail,
            hint: f.hint,
        },
        Err(e) => e,
    }
}

/// Logs a NoticeResponse at info level (severity, SQLSTATE, detail and hint as fields).
pub(super) fn log_notice(body: &backend::NoticeResponseBody) {
    match parse_fields(body.fields()) {
        Ok(f) => {
            let severity = f.severity_nonlocalized.or(f.severity).unwrap_or_default();
            tracing::info!(
                severity = %severity,
                code = f.code.as_deref().unwrap_or(""),
                detail = f.detail.as_deref().unwrap_or(""),
                hint = f.hint.as_deref().unwrap_or(""),
                "replication server notice: {}",
                f.message.as_deref().unwrap_or("")
            );
        }
        Err(e) => tracing::warn!("malformed NoticeResponse from replication server: {e}"),
    }
}
