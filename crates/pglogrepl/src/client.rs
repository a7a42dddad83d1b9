//! A minimal PostgreSQL logical replication client.
//!
//! tokio-postgres does not speak the streaming replication protocol, so doppel carries its own
//! small client built on `postgres-protocol` message encoding and a plain tokio socket. It is
//! the transport only:
//!
//! 1. [`ReplicationClient::connect`] opens one connection with `replication=database` in the
//!    startup packet (trust, cleartext, MD5 or SCRAM-SHA-256 authentication; no TLS yet).
//! 2. [`ReplicationClient::identify_system`], [`ReplicationClient::create_logical_slot`] and
//!    [`ReplicationClient::simple_query`] run replication (or plain SQL) commands with the
//!    simple-query protocol.
//! 3. [`ReplicationClient::start_logical_replication`] turns the connection into a
//!    [`ReplicationStream`] (CopyBoth mode) that yields [`ReplicationMessage`]s: each
//!    `XLogData` carries the raw pgoutput payload bytes, which `crate::pgoutput` decodes.
//!
//! Standby status updates are sent by the caller with
//! [`ReplicationStream::send_standby_status`]; nothing is acknowledged automatically.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::{ChannelBinding, Host, SslMode};
use tokio_postgres::fallible_iterator::FallibleIterator;

use crate::lsn::Lsn;

/// Seconds between the Unix epoch (1970-01-01) and the PostgreSQL epoch (2000-01-01), both UTC.
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// Default PostgreSQL port used when the configuration names none.
const DEFAULT_PORT: u16 = 5432;

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
    /// A feature the client does not implement: TLS, or an authentication method other than
    /// trust, cleartext password, MD5 and SCRAM-SHA-256.
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

fn protocol_err(e: io::Error) -> ReplicationError {
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

fn server_error(body: &backend::ErrorResponseBody) -> ReplicationError {
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

fn log_notice(body: &backend::NoticeResponseBody) {
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

/// Any byte stream the connection can run on (TCP or Unix socket).
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// One backend frame: either a message `postgres-protocol` decodes, or one it does not know.
enum Frame {
    Message(backend::Message),
    /// `W`: the server entered CopyBoth mode (reply to START_REPLICATION).
    CopyBothResponse,
}

/// Socket plus read/write buffers, shared by the client and the stream.
struct Conn {
    io: Box<dyn Transport>,
    /// Bytes read from the socket but not yet parsed into a frame.
    read_buf: BytesMut,
    /// Encoded frontend messages not yet fully written; only ever appended to and drained
    /// from the front, so a cancelled write leaves the stream consistent.
    write_buf: BytesMut,
}

impl Conn {
    fn new(io: Box<dyn Transport>) -> Conn {
        Conn {
            io,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
        }
    }

    /// Parses one complete frame from the read buffer, if there is one.
    fn try_parse(&mut self) -> Result<Option<Frame>, ReplicationError> {
        if self.read_buf.len() >= 5 && self.read_buf[0] == b'W' {
            let len = u32::from_be_bytes([
                self.read_buf[1],
                self.read_buf[2],
                self.read_buf[3],
                self.read_buf[4],
            ]) as usize;
            if len < 4 {
                return Err(ReplicationError::Protocol(
                    "CopyBothResponse with invalid length".into(),
                ));
            }
            if self.read_buf.len() < len + 1 {
                self.read_buf.reserve(len + 1 - self.read_buf.len());
                return Ok(None);
            }
            self.read_buf.advance(len + 1);
            return Ok(Some(Frame::CopyBothResponse));
        }
        Ok(backend::Message::parse(&mut self.read_buf)
            .map_err(protocol_err)?
            .map(Frame::Message))
    }

    /// Reads the next frame. `Ok(None)` on a clean end of stream (EOF between frames).
    ///
    /// Cancel-safe: bytes are only ever appended to `read_buf` by `read_buf` (which is itself
    /// cancel-safe) and frames are removed from it synchronously.
    async fn read_frame(&mut self) -> Result<Option<Frame>, ReplicationError> {
        loop {
            if let Some(frame) = self.try_parse()? {
                return Ok(Some(frame));
            }
            if self.read_buf.capacity() - self.read_buf.len() < 4096 {
                self.read_buf.reserve(64 * 1024);
            }
            let n = self.io.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                if self.read_buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection in the middle of a message",
                )
                .into());
            }
        }
    }

    /// Like [`Conn::read_frame`] but consumes NoticeResponse (logged), ParameterStatus,
    /// BackendKeyData and NotificationResponse. Cancel-safe.
    async fn next_frame(&mut self) -> Result<Option<Frame>, ReplicationError> {
        loop {
            match self.read_frame().await? {
                Some(Frame::Message(backend::Message::NoticeResponse(body))) => log_notice(&body),
                Some(Frame::Message(backend::Message::ParameterStatus(body))) => {
                    if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                        tracing::debug!(name, value, "replication server parameter");
                    }
                }
                Some(Frame::Message(backend::Message::BackendKeyData(body))) => {
                    tracing::debug!(
                        pid = body.process_id(),
                        "replication server backend key data"
                    );
                }
                Some(Frame::Message(backend::Message::NotificationResponse(_))) => {}
                other => return Ok(other),
            }
        }
    }

    /// Like [`Conn::next_frame`], but a clean EOF is an error (`what` names the step).
    async fn expect_frame(&mut self, what: &str) -> Result<Frame, ReplicationError> {
        match self.next_frame().await? {
            Some(frame) => Ok(frame),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("server closed the connection during {what}"),
            )
            .into()),
        }
    }

    /// Writes everything queued in `write_buf` and flushes the socket.
    async fn flush(&mut self) -> Result<(), ReplicationError> {
        self.io.write_all_buf(&mut self.write_buf).await?;
        self.io.flush().await?;
        Ok(())
    }
}

fn unexpected(what: &str, frame: &Frame) -> ReplicationError {
    ReplicationError::Protocol(format!(
        "unexpected {} during {what}",
        describe_frame(frame)
    ))
}

fn describe_frame(frame: &Frame) -> &'static str {
    use backend::Message as M;
    match frame {
        Frame::CopyBothResponse => "CopyBothResponse",
        Frame::Message(m) => match m {
            M::AuthenticationOk
            | M::AuthenticationCleartextPassword
            | M::AuthenticationMd5Password(_)
            | M::AuthenticationSasl(_)
            | M::AuthenticationSaslContinue(_)
            | M::AuthenticationSaslFinal(_)
            | M::AuthenticationKerberosV5
            | M::AuthenticationGss
            | M::AuthenticationGssContinue(_)
            | M::AuthenticationScmCredential
            | M::AuthenticationSspi => "authentication request",
            M::CommandComplete(_) => "CommandComplete",
            M::CopyData(_) => "CopyData",
            M::CopyDone => "CopyDone",
            M::CopyInResponse(_) => "CopyInResponse",
            M::CopyOutResponse(_) => "CopyOutResponse",
            M::DataRow(_) => "DataRow",
            M::EmptyQueryResponse => "EmptyQueryResponse",
            M::ErrorResponse(_) => "ErrorResponse",
            M::ReadyForQuery(_) => "ReadyForQuery",
            M::RowDescription(_) => "RowDescription",
            _ => "message",
        },
    }
}

/// Where to connect: one entry per configured host.
#[derive(Debug, Clone)]
enum Target {
    Tcp { host: String, port: u16 },
    Unix { path: PathBuf },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix { path } => write!(f, "{}", path.display()),
        }
    }
}

fn targets(config: &tokio_postgres::Config) -> Result<Vec<Target>, ReplicationError> {
    let hosts = config.get_hosts();
    let hostaddrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let count = hosts.len().max(hostaddrs.len());
    if count == 0 {
        return Err(ReplicationError::Config(
            "no host given (set host or hostaddr)".into(),
        ));
    }
    if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
        return Err(ReplicationError::Config(format!(
            "{} hosts but {} hostaddrs",
            hosts.len(),
            hostaddrs.len()
        )));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(ReplicationError::Config(format!(
            "{} ports given for {count} hosts",
            ports.len()
        )));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let port = ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(DEFAULT_PORT);
        let target = match (hostaddrs.get(i), hosts.get(i)) {
            (Some(addr), _) => Target::Tcp {
                host: addr.to_string(),
                port,
            },
            (None, Some(Host::Tcp(host))) => Target::Tcp {
                host: host.clone(),
                port,
            },
            #[cfg(unix)]
            (None, Some(Host::Unix(dir))) => Target::Unix {
                path: dir.join(format!(".s.PGSQL.{port}")),
            },
            (None, None) => unreachable!("index is below the host or hostaddr count"),
        };
        out.push(target);
    }
    Ok(out)
}

async fn open_socket(target: &Target) -> Result<Box<dyn Transport>, ReplicationError> {
    match target {
        Target::Tcp { host, port } => {
            let addrs = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("resolving {host}: {e}")))?;
            let mut last_err = None;
            for addr in addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        return Ok(Box::new(stream));
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            let e = last_err.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "host name resolved to no address")
            });
            Err(io::Error::new(e.kind(), format!("connecting to {target}: {e}")).into())
        }
        #[cfg(unix)]
        Target::Unix { path } => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("connecting to {target}: {e}")))?;
            Ok(Box::new(stream))
        }
        #[cfg(not(unix))]
        Target::Unix { .. } => Err(ReplicationError::Unsupported(
            "Unix sockets on this platform".into(),
        )),
    }
}

/// Settings for the startup packet and authentication (borrowed from the config).
struct Startup<'a> {
    user: String,
    password: Option<&'a [u8]>,
    params: Vec<(&'static str, String)>,
}

fn startup_settings(config: &tokio_postgres::Config) -> Result<Startup<'_>, ReplicationError> {
    match config.get_ssl_mode() {
        SslMode::Disable | SslMode::Prefer => {}
        _ => {
            return Err(ReplicationError::Unsupported(
                "TLS is not supported yet: the replication connection is plain TCP only; \
                 use sslmode=disable or sslmode=prefer"
                    .into(),
            ));
        }
    }
    if config.get_channel_binding() == ChannelBinding::Require {
        return Err(ReplicationError::Unsupported(
            "channel_binding=require needs TLS, which is not supported yet".into(),
        ));
    }
    let user = match config.get_user() {
        Some(user) => user.to_string(),
        None => std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .map_err(|_| ReplicationError::Config("no user given and $USER is not set".into()))?,
    };
    let mut params = vec![("user", user.clone())];
    if let Some(dbname) = config.get_dbname() {
        params.push(("database", dbname.to_string()));
    }
    if let Some(app) = config.get_application_name() {
        params.push(("application_name", app.to_string()));
    }
    if let Some(options) = config.get_options() {
        params.push(("options", options.to_string()));
    }
    params.push(("client_encoding", "UTF8".to_string()));
    params.push(("replication", "database".to_string()));
    Ok(Startup {
        user,
        password: config.get_password(),
        params,
    })
}

/// Sends the startup packet, authenticates and waits for the first ReadyForQuery.
/// Returns the backend process id (0 if the server sent no BackendKeyData).
async fn handshake(conn: &mut Conn, startup: &Startup<'_>) -> Result<i32, ReplicationError> {
    frontend::startup_message(
        startup.params.iter().map(|(k, v)| (*k, v.as_str())),
        &mut conn.write_buf,
    )
    .map_err(|e| ReplicationError::Config(format!("startup parameter: {e}")))?;
    conn.flush().await?;

    authenticate(conn, startup).await?;

    let mut pid = 0;
    loop {
        // BackendKeyData is handled here rather than skipped, to remember the pid.
        match conn.read_frame().await? {
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection during startup",
                )
                .into());
            }
            Some(Frame::Message(backend::Message::BackendKeyData(body))) => {
                pid = body.process_id();
            }
            Some(Frame::Message(backend::Message::ParameterStatus(body))) => {
                if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                    tracing::debug!(name, value, "replication server parameter");
                }
            }
            Some(Frame::Message(backend::Message::NoticeResponse(body))) => log_notice(&body),
            Some(Frame::Message(backend::Message::ReadyForQuery(_))) => return Ok(pid),
            Some(Frame::Message(backend::Message::ErrorResponse(body))) => {
                return Err(server_error(&body));
            }
            Some(frame) => return Err(unexpected("startup", &frame)),
        }
    }
}

fn require_password<'a>(startup: &Startup<'a>) -> Result<&'a [u8], ReplicationError> {
    startup.password.ok_or_else(|| {
        ReplicationError::Auth(format!(
            "the server requires a password for user {:?} but none was configured",
            startup.user
        ))
    })
}

async fn authenticate(conn: &mut Conn, startup: &Startup<'_>) -> Result<(), ReplicationError> {
    use backend::Message as M;
    let what = "authentication";
    loop {
        let frame = conn.expect_frame(what).await?;
        let Frame::Message(msg) = frame else {
            return Err(unexpected(what, &frame));
        };
        match msg {
            M::AuthenticationOk => return Ok(()),
            M::AuthenticationCleartextPassword => {
                let password = require_password(startup)?;
                frontend::password_message(password, &mut conn.write_buf)
                    .map_err(|_| ReplicationError::Auth("password contains a NUL byte".into()))?;
                conn.flush().await?;
            }
            M::AuthenticationMd5Password(body) => {
                let password = require_password(startup)?;
                let hashed = md5_hash(startup.user.as_bytes(), password, body.salt());
                frontend::password_message(hashed.as_bytes(), &mut conn.write_buf)
                    .map_err(protocol_err)?;
                conn.flush().await?;
            }
            M::AuthenticationSasl(body) => {
                let password = require_password(startup)?;
                let mut offered = Vec::new();
                let mut mechanisms = body.mechanisms();
                while let Some(mechanism) = mechanisms.next().map_err(protocol_err)? {
                    offered.push(mechanism.to_string());
                }
                if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                    return Err(ReplicationError::Unsupported(format!(
                        "SASL mechanisms {offered:?} (only SCRAM-SHA-256 without channel binding is supported)"
                    )));
                }
                scram_exchange(conn, password).await?;
            }
            M::ErrorResponse(body) => return Err(server_error(&body)),
            M::NoticeResponse(body) => log_notice(&body),
            M::AuthenticationKerberosV5 => {
                return Err(ReplicationError::Unsupported(
                    "Kerberos V5 authentication".into(),
                ));
            }
            M::AuthenticationGss | M::AuthenticationGssContinue(_) => {
                return Err(ReplicationError::Unsupported(
                    "GSSAPI authentication".into(),
                ));
            }
            M::AuthenticationSspi => {
                return Err(ReplicationError::Unsupported("SSPI authentication".into()));
            }
            M::AuthenticationScmCredential => {
                return Err(ReplicationError::Unsupported(
                    "SCM credential authentication".into(),
                ));
            }
            other => return Err(unexpected(what, &Frame::Message(other))),
        }
    }
}

async fn scram_exchange(conn: &mut Conn, password: &[u8]) -> Result<(), ReplicationError> {
    use backend::Message as M;
    let what = "SCRAM-SHA-256 authentication";
    // No TLS, hence no channel binding: the client announces it does not support it.
    let mut scram = sasl::ScramSha256::new(password, sasl::ChannelBinding::unsupported());
    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), &mut conn.write_buf)
        .map_err(protocol_err)?;
    conn.flush().await?;

    match conn.expect_frame(what).await? {
        Frame::Message(M::AuthenticationSaslContinue(body)) => {
            scram
                .update(body.data())
                .map_err(|e| ReplicationError::Auth(format!("SCRAM-SHA-256 exchange: {e}")))?;
        }
        Frame::Message(M::ErrorResponse(body)) => return Err(server_error(&body)),
        other => return Err(unexpected(what, &other)),
    }
    frontend::sasl_response(scram.message(), &mut conn.write_buf).map_err(protocol_err)?;
    conn.flush().await?;

    match conn.expect_frame(what).await? {
        Frame::Message(M::AuthenticationSaslFinal(body)) => {
            scram.finish(body.data()).map_err(|e| {
                ReplicationError::Auth(format!("SCRAM-SHA-256 server verification: {e}"))
            })?;
            Ok(())
        }
        Frame::Message(M::ErrorResponse(body)) => Err(server_error(&body)),
        other => Err(unexpected(what, &other)),
    }
}

/// Quotes an identifier for a replication command: `"name"` with embedded `"` doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string constant for the replication command grammar, which only knows `'...'`
/// with embedded `'` doubled (backslashes are not escapes there).
fn quote_repl_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn start_replication_sql(slot: &str, start: Lsn, publication: &str, messages: bool) -> String {
    let mut options = format!(
        "proto_version '1', publication_names {}",
        quote_repl_literal(&quote_ident(publication))
    );
    if messages {
        options.push_str(", messages 'true'");
    }
    format!(
        "START_REPLICATION SLOT {} LOGICAL {start} ({options})",
        quote_ident(slot)
    )
}

fn create_slot_sql(name: &str, temporary: bool) -> String {
    format!(
        "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput EXPORT_SNAPSHOT",
        quote_ident(name),
        if temporary { "TEMPORARY " } else { "" }
    )
}

fn data_row(body: &backend::DataRowBody) -> Result<Vec<Option<String>>, ReplicationError> {
    let buf = body.buffer();
    let mut ranges = body.ranges();
    let mut row = Vec::new();
    while let Some(range) = ranges.next().map_err(protocol_err)? {
        row.push(match range {
            None => None,
            Some(range) => Some(
                std::str::from_utf8(&buf[range])
                    .map_err(|_| {
                        ReplicationError::Protocol("column value is not valid UTF-8".into())
                    })?
                    .to_string(),
            ),
        });
    }
    Ok(row)
}

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique system identifier, a decimal `u64` as text (kept as text).
    pub system_id: String,
    /// Current timeline ID.
    pub timeline: u32,
    /// Current WAL flush location.
    pub xlogpos: Lsn,
    /// Database connected to; `None` for a physical replication connection.
    pub dbname: Option<String>,
}

/// Result of `CREATE_REPLICATION_SLOT ... LOGICAL pgoutput EXPORT_SNAPSHOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Name of the slot, as the server reports it.
    pub slot_name: String,
    /// WAL position at which the slot became consistent: the earliest LSN streaming from
    /// this slot can start at, and the point the exported snapshot corresponds to.
    pub consistent_point: Lsn,
    /// Exported snapshot identifier for `SET TRANSACTION SNAPSHOT '<name>'` in another
    /// session. It is valid only until the next command on this replication connection (or
    /// until the connection closes), so import it before calling anything else on the client.
    pub snapshot_name: Option<String>,
    /// Output plugin of the slot (always `pgoutput` here).
    pub output_plugin: String,
}

/// One connection to PostgreSQL with `replication=database`, in command mode.
///
/// Obtained from [`ReplicationClient::connect`]; consumed by
/// [`ReplicationClient::start_logical_replication`]. Dropping it closes the socket without a
/// Terminate message, which the server treats as a client disconnect.
pub struct ReplicationClient {
    conn: Conn,
    backend_pid: i32,
}

impl fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("backend_pid", &self.backend_pid)
            .finish_non_exhaustive()
    }
}

impl ReplicationClient {
    /// Connects using the same settings as a [`tokio_postgres::Config`]: hosts (TCP names or
    /// addresses, `hostaddr`, or Unix socket directories, for which the socket is
    /// `<dir>/.s.PGSQL.<port>`), ports (one for all hosts or one per host; default 5432), user
    /// (default `$USER`), password, dbname, application_name, options and connect_timeout
    /// (applied to each host's whole connect-and-authenticate attempt). Adds
    /// `replication=database` and `client_encoding=UTF8` to the startup packet. Hosts are tried
    /// in order; the first that accepts wins.
    ///
    /// Authentication: trust, cleartext password, MD5 and SCRAM-SHA-256 (without channel
    /// binding).
    ///
    /// # Errors
    /// * [`ReplicationError::Unsupported`] for `sslmode=require` or `channel_binding=require`
    ///   (TLS is not supported yet: plain TCP only; `sslmode=prefer` silently connects without
    ///   TLS) and for Kerberos/GSSAPI/SSPI or non-SCRAM SASL authentication.
    /// * [`ReplicationError::Config`] if there is no host, the host/port counts mismatch, or
    ///   no user is configured nor `$USER` set.
    /// * Otherwise the error of the last host tried: [`ReplicationError::Io`] (unreachable,
    ///   `TimedOut` after connect_timeout), [`ReplicationError::Server`] (e.g. `28P01` wrong
    ///   password, `28000` no pg_hba.conf entry, `3D000` no such database),
    ///   [`ReplicationError::Auth`] (password needed but not configured, SCRAM failure).
    pub async fn connect(
        config: &tokio_postgres::Config,
    ) -> Result<ReplicationClient, ReplicationError> {
        let startup = startup_settings(config)?;
        let targets = targets(config)?;
        let timeout = config.get_connect_timeout().copied();
        let mut last_err = None;
        for target in &targets {
            match connect_one(target, &startup, timeout).await {
                Ok(client) => {
                    tracing::debug!(
                        host = %target,
                        backend_pid = client.backend_pid,
                        "replication connection established"
                    );
                    return Ok(client);
                }
                Err(e) => {
                    tracing::debug!(host = %target, error = %e, "replication connect attempt failed");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("at least one target was tried"))
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
        use backend::Message as M;
        let what = "a simple query";
        frontend::query(sql, &mut self.conn.write_buf)
            .map_err(|e| ReplicationError::Protocol(format!("cannot send query: {e}")))?;
        self.conn.flush().await?;

        let mut rows = Vec::new();
        let mut error: Option<ReplicationError> = None;
        loop {
            match self.conn.expect_frame(what).await? {
                Frame::Message(M::RowDescription(_))
                | Frame::Message(M::CommandComplete(_))
                | Frame::Message(M::EmptyQueryResponse)
                | Frame::Message(M::CopyData(_))
                | Frame::Message(M::CopyDone) => {}
                Frame::Message(M::DataRow(body)) => {
                    if error.is_none() {
                        match data_row(&body) {
                            Ok(row) => rows.push(row),
                            Err(e) => error = Some(e),
                        }
                    }
                }
                Frame::Message(M::ErrorResponse(body)) => {
                    error.get_or_insert(server_error(&body));
                }
                Frame::Message(M::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                Frame::Message(M::CopyInResponse(_)) => {
                    frontend::copy_fail(
                        "COPY FROM STDIN is not supported by doppel's replication client",
                        &mut self.conn.write_buf,
                    )
                    .map_err(protocol_err)?;
                    self.conn.flush().await?;
                    error.get_or_insert(ReplicationError::Protocol(
                        "simple_query does not support COPY FROM STDIN".into(),
                    ));
                }
                Frame::Message(M::CopyOutResponse(_)) => {
                    error.get_or_insert(ReplicationError::Protocol(
                        "simple_query does not support COPY TO STDOUT".into(),
                    ));
                }
                Frame::CopyBothResponse => {
                    // Leave streaming mode at once so the connection stays usable.
                    frontend::copy_done(&mut self.conn.write_buf);
                    self.conn.flush().await?;
                    error.get_or_insert(ReplicationError::Protocol(
                        "simple_query cannot run a streaming command; use start_logical_replication"
                            .into(),
                    ));
                }
                other => return Err(unexpected(what, &other)),
            }
        }
    }

    /// Runs `IDENTIFY_SYSTEM`.
    ///
    /// # Errors
    /// Those of [`ReplicationClient::simple_query`], and [`ReplicationError::Protocol`] if the
    /// reply is not one row of at least four columns with a numeric timeline and an LSN.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(rows, 4, "IDENTIFY_SYSTEM")?;
        let mut cols = row.into_iter();
        let system_id = required(cols.next(), "IDENTIFY_SYSTEM", "systemid")?;
        let timeline = required(cols.next(), "IDENTIFY_SYSTEM", "timeline")?;
        let timeline = timeline.parse::<u32>().map_err(|_| {
            ReplicationError::Protocol(format!("IDENTIFY_SYSTEM: bad timeline {timeline:?}"))
        })?;
        let xlogpos = parse_lsn(required(cols.next(), "IDENTIFY_SYSTEM", "xlogpos")?)?;
        let dbname = cols.next().flatten();
        Ok(SystemInfo {
            system_id,
            timeline,
            xlogpos,
            dbname,
        })
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
        let what = "CREATE_REPLICATION_SLOT";
        let rows = self.simple_query(&create_slot_sql(name, temporary)).await?;
        let row = single_row(rows, 4, what)?;
        let mut cols = row.into_iter();
        let slot_name = required(cols.next(), what, "slot_name")?;
        let consistent_point = parse_lsn(required(cols.next(), what, "consistent_point")?)?;
        let snapshot_name = cols.next().flatten();
        let output_plugin = required(cols.next(), what, "output_plugin")?;
        Ok(CreatedSlot {
            slot_name,
            consistent_point,
            snapshot_name,
            output_plugin,
        })
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
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
        messages: bool,
    ) -> Result<ReplicationStream, ReplicationError> {
        use backend::Message as M;
        let what = "START_REPLICATION";
        let sql = start_replication_sql(slot, start, publication, messages);
        frontend::query(&sql, &mut self.conn.write_buf)
            .map_err(|e| ReplicationError::Protocol(format!("cannot send {what}: {e}")))?;
        self.conn.flush().await?;

        let mut error: Option<ReplicationError> = None;
        loop {
            match self.conn.expect_frame(what).await? {
                Frame::CopyBothResponse => {
                    tracing::debug!(slot, %start, publication, "logical replication started");
                    return Ok(ReplicationStream {
                        conn: self.conn,
                        backend_pid: self.backend_pid,
                        copy_done_received: false,
                        eof: false,
                    });
                }
                Frame::Message(M::ErrorResponse(body)) => {
                    error.get_or_insert(server_error(&body));
                }
                Frame::Message(M::ReadyForQuery(_)) => {
                    return Err(error.unwrap_or_else(|| {
                        ReplicationError::Protocol(
                            "START_REPLICATION finished without entering CopyBoth mode".into(),
                        )
                    }));
                }
                Frame::Message(M::CommandComplete(_))
                | Frame::Message(M::RowDescription(_))
                | Frame::Message(M::DataRow(_))
                    if error.is_some() => {}
                other => return Err(unexpected(what, &other)),
            }
        }
    }
}

async fn connect_one(
    target: &Target,
    startup: &Startup<'_>,
    timeout: Option<Duration>,
) -> Result<ReplicationClient, ReplicationError> {
    let attempt = async {
        let io = open_socket(target).await?;
        let mut conn = Conn::new(io);
        let backend_pid = handshake(&mut conn, startup).await?;
        Ok(ReplicationClient { conn, backend_pid })
    };
    match timeout {
        Some(limit) if !limit.is_zero() => match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {target} timed out after {limit:?}"),
            )
            .into()),
        },
        _ => attempt.await,
    }
}

fn single_row(
    rows: Vec<Vec<Option<String>>>,
    min_cols: usize,
    what: &str,
) -> Result<Vec<Option<String>>, ReplicationError> {
    let count = rows.len();
    match <[Vec<Option<String>>; 1]>::try_from(rows) {
        Ok([row]) if row.len() >= min_cols => Ok(row),
        Ok([row]) => Err(ReplicationError::Protocol(format!(
            "{what} returned {} columns, expected {min_cols}",
            row.len()
        ))),
        Err(_) => Err(ReplicationError::Protocol(format!(
            "{what} returned {count} rows, expected 1"
        ))),
    }
}

fn required(
    col: Option<Option<String>>,
    what: &str,
    name: &str,
) -> Result<String, ReplicationError> {
    col.flatten()
        .ok_or_else(|| ReplicationError::Protocol(format!("{what}: column {name} is NULL")))
}

fn parse_lsn(text: String) -> Result<Lsn, ReplicationError> {
    text.parse::<Lsn>()
        .map_err(|e| ReplicationError::Protocol(e.to_string()))
}

/// One message from the server while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// A chunk of decoded WAL (`w`): for pgoutput, exactly one pgoutput message.
    XLogData {
        /// WAL position the data belongs to (for pgoutput Begin/Commit, the transaction's
        /// first / end LSN); `0/0` for messages tied to no WAL record, such as pgoutput
        /// Relation and Type messages.
        wal_start: Lsn,
        /// End of WAL on the server. PostgreSQL's logical walsender sends the same value
        /// as `wal_start` here; keepalives carry the real server WAL end.
        wal_end: Lsn,
        /// Server clock at transmission, microseconds since 2000-01-01 00:00 UTC.
        server_time_us: i64,
        /// The raw output plugin payload (first byte is the pgoutput message type, e.g.
        /// `b'B'` Begin, `b'C'` Commit), shared with the read buffer without copying.
        data: Bytes,
    },
    /// A keepalive (`k`).
    PrimaryKeepalive {
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock at transmission, microseconds since 2000-01-01 00:00 UTC.
        server_time_us: i64,
        /// The server asks for a standby status update as soon as possible (otherwise it
        /// disconnects after `wal_sender_timeout`).
        reply_requested: bool,
    },
}

/// Decodes the payload of one CopyData frame received in logical streaming mode.
fn parse_copy_data(mut data: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    match data.first().copied() {
        Some(b'w') => {
            if data.len() < 25 {
                return Err(ReplicationError::Protocol(format!(
                    "XLogData message of {} bytes is shorter than its 25-byte header",
                    data.len()
                )));
            }
            data.advance(1);
            let wal_start = Lsn(data.get_u64());
            let wal_end = Lsn(data.get_u64());
            let server_time_us = data.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time_us,
                data,
            })
        }
        Some(b'k') => {
            if data.len() != 18 {
                return Err(ReplicationError::Protocol(format!(
                    "primary keepalive message of {} bytes, expected 18",
                    data.len()
                )));
            }
            data.advance(1);
            let wal_end = Lsn(data.get_u64());
            let server_time_us = data.get_i64();
            let reply_requested = data.get_u8() != 0;
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end,
                server_time_us,
                reply_requested,
            })
        }
        Some(other) => Err(ReplicationError::Protocol(format!(
            "unknown replication message type {:?} (0x{other:02x})",
            char::from(other)
        ))),
        None => Err(ReplicationError::Protocol("empty CopyData message".into())),
    }
}

/// Appends a CopyData frame holding a standby status update (`r`) to `out`.
fn encode_standby_status(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time_us: i64,
    reply_requested: bool,
    out: &mut BytesMut,
) {
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(b'r');
    body.put_u64(write.0);
    body.put_u64(flush.0);
    body.put_u64(apply.0);
    body.put_i64(client_time_us);
    body.put_u8(u8::from(reply_requested));
    frontend::CopyData::new(body.freeze())
        .expect("a 34-byte body fits a CopyData frame")
        .write(out);
}

/// Microseconds since 2000-01-01 00:00 UTC by the local clock (negative before that).
fn pg_now_us() -> i64 {
    let unix_us = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    };
    unix_us - (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000
}

/// A replication connection in CopyBoth (streaming) mode.
///
/// Obtained from [`ReplicationClient::start_logical_replication`].
pub struct ReplicationStream {
    conn: Conn,
    backend_pid: i32,
    /// The server sent CopyDone: it will send no more replication messages.
    copy_done_received: bool,
    /// The server closed the socket.
    eof: bool,
}

impl fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("backend_pid", &self.backend_pid)
            .field("copy_done_received", &self.copy_done_received)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    /// Waits for the next replication message. NoticeResponse/ParameterStatus frames are
    /// consumed (notices are logged). Returns `Ok(None)` once the server has ended the copy
    /// (CopyDone) or closed the connection between messages, and on every call after that.
    ///
    /// Cancel-safe: dropping the future (e.g. when another `tokio::select!` branch wins) never
    /// loses data; partially received frames stay buffered for the next call.
    ///
    /// # Errors
    /// [`ReplicationError::Server`] for an ErrorResponse (e.g. `57P01` when the walsender is
    /// terminated, or a decoding error); [`ReplicationError::Protocol`] for a malformed or
    /// unexpected frame; [`ReplicationError::Io`] on socket failure, including
    /// `UnexpectedEof` when the connection closes in the middle of a frame.
    pub async fn recv(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        use backend::Message as M;
        if self.copy_done_received || self.eof {
            return Ok(None);
        }
        match self.conn.next_frame().await? {
            None => {
                self.eof = true;
                Ok(None)
            }
            Some(Frame::Message(M::CopyData(body))) => parse_copy_data(body.into_bytes()).map(Some),
            Some(Frame::Message(M::CopyDone)) => {
                self.copy_done_received = true;
                Ok(None)
            }
            Some(Frame::Message(M::ErrorResponse(body))) => Err(server_error(&body)),
            Some(other) => Err(unexpected("logical replication streaming", &other)),
        }
    }

    /// Sends a standby status update (`r`) carrying exactly the given positions: `write`
    /// (received and written), `flush` (durably stored; this is what advances the slot's
    /// `confirmed_flush_lsn` and lets the server recycle WAL) and `apply`, plus the client
    /// clock in microseconds since 2000-01-01 UTC. `reply_requested` asks the server to
    /// answer with a keepalive at once.
    ///
    /// If this future is cancelled mid-write, the unsent remainder is kept and goes out
    /// before the next message, so the stream stays well-formed.
    ///
    /// # Errors
    /// [`ReplicationError::Io`] if the socket cannot be written.
    pub async fn send_standby_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        encode_standby_status(
            write,
            flush,
            apply,
            pg_now_us(),
            reply_requested,
            &mut self.conn.write_buf,
        );
        self.conn.flush().await
    }

    /// Ends streaming cleanly: sends CopyDone, discards the replication messages still in
    /// flight until the server finishes the command (ReadyForQuery), then sends Terminate and
    /// shuts the socket down. The server then ends the session, dropping a TEMPORARY slot
    /// (asynchronously: the slot may still be listed for a moment after this returns).
    /// Positions are not acknowledged here; send a final
    /// [`ReplicationStream::send_standby_status`] first if needed.
    ///
    /// May wait while the server finishes sending a large transaction; wrap it in a timeout
    /// if that matters.
    ///
    /// # Errors
    /// [`ReplicationError::Server`] if the server reports an error while finishing;
    /// [`ReplicationError::Io`] on socket failure (a server that already closed the
    /// connection is not an error).
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        use backend::Message as M;
        if self.eof {
            return Ok(());
        }
        frontend::copy_done(&mut self.conn.write_buf);
        if let Err(e) = self.conn.flush().await {
            return ignore_disconnect(e);
        }
        let mut error = None;
        loop {
            match self.conn.next_frame().await {
                Ok(None) => return error.map_or(Ok(()), Err),
                Ok(Some(Frame::Message(M::ReadyForQuery(_)))) => break,
                Ok(Some(Frame::Message(M::ErrorResponse(body)))) => {
                    error.get_or_insert(server_error(&body));
                }
                Ok(Some(frame)) => {
                    tracing::trace!("discarding {} while closing", describe_frame(&frame));
                }
                Err(e) => return ignore_disconnect(e),
            }
        }
        frontend::terminate(&mut self.conn.write_buf);
        if let Err(e) = self.conn.flush().await {
            ignore_disconnect(e)?;
        }
        if let Err(e) = self.conn.io.shutdown().await {
            ignore_disconnect(e.into())?;
        }
        tracing::debug!(backend_pid = self.backend_pid, "replication stream closed");
        error.map_or(Ok(()), Err)
    }
}

/// Treats "the server already hung up" as success while closing.
fn ignore_disconnect(e: ReplicationError) -> Result<(), ReplicationError> {
    match &e {
        ReplicationError::Io(io_err)
            if matches!(
                io_err.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(())
        }
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlogdata_bytes(start: u64, end: u64, time: i64, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(start);
        b.put_u64(end);
        b.put_i64(time);
        b.put_slice(payload);
        b.freeze()
    }

    #[test]
    fn standby_status_update_encoding() {
        let mut out = BytesMut::new();
        encode_standby_status(
            Lsn(0x16_B374_D848),
            Lsn(0x16_B374_D800),
            Lsn(0x10),
            0x0102_0304_0506_0708,
            true,
            &mut out,
        );
        let mut expected = vec![b'd', 0, 0, 0, 38, b'r'];
        expected.extend_from_slice(&0x16_B374_D848u64.to_be_bytes());
        expected.extend_from_slice(&0x16_B374_D800u64.to_be_bytes());
        expected.extend_from_slice(&0x10u64.to_be_bytes());
        expected.extend_from_slice(&0x0102_0304_0506_0708i64.to_be_bytes());
        expected.push(1);
        assert_eq!(&out[..], &expected[..]);

        out.clear();
        encode_standby_status(Lsn(1), Lsn(2), Lsn(3), -5, false, &mut out);
        assert_eq!(out.len(), 39);
        assert_eq!(out[38], 0);
        assert_eq!(&out[30..38], &(-5i64).to_be_bytes());
    }

    #[test]
    fn parses_xlogdata() {
        let msg = parse_copy_data(xlogdata_bytes(0x100, 0x200, 42, b"Bpayload")).unwrap();
        assert_eq!(
            msg,
            ReplicationMessage::XLogData {
                wal_start: Lsn(0x100),
                wal_end: Lsn(0x200),
                server_time_us: 42,
                data: Bytes::from_static(b"Bpayload"),
            }
        );
        // An empty payload is legal.
        let msg = parse_copy_data(xlogdata_bytes(1, 2, -3, b"")).unwrap();
        assert!(matches!(msg, ReplicationMessage::XLogData { data, .. } if data.is_empty()));
    }

    #[test]
    fn parses_keepalive() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0x16_B374_D848);
        b.put_i64(123_456);
        b.put_u8(1);
        assert_eq!(
            parse_copy_data(b.freeze()).unwrap(),
            ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(0x16_B374_D848),
                server_time_us: 123_456,
                reply_requested: true,
            }
        );
    }

    #[test]
    fn rejects_malformed_copy_data() {
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"w1234")),
            Err(ReplicationError::Protocol(_))
        ));
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"k123")),
            Err(ReplicationError::Protocol(_))
        ));
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"z")),
            Err(ReplicationError::Protocol(_))
        ));
        assert!(matches!(
            parse_copy_data(Bytes::new()),
            Err(ReplicationError::Protocol(_))
        ));
    }

    #[test]
    fn frames_are_parsed_only_when_complete() {
        let (client, _server) = tokio::io::duplex(64);
        let mut conn = Conn::new(Box::new(client));
        // CopyData frame with an XLogData payload, fed one byte at a time.
        let payload = xlogdata_bytes(7, 8, 9, b"BC");
        let mut frame = BytesMut::new();
        frontend::CopyData::new(payload.clone())
            .unwrap()
            .write(&mut frame);
        // A CopyBothResponse (W, format 0, 0 columns) first.
        let mut wire = BytesMut::new();
        wire.put_slice(&[b'W', 0, 0, 0, 7, 0, 0, 0]);
        wire.put_slice(&frame);
        for (i, byte) in wire.iter().enumerate() {
            conn.read_buf.put_u8(*byte);
            let parsed = conn.try_parse().unwrap();
            if i == 7 {
                assert!(matches!(parsed, Some(Frame::CopyBothResponse)));
            } else if i == wire.len() - 1 {
                match parsed {
                    Some(Frame::Message(backend::Message::CopyData(body))) => {
                        assert_eq!(body.data(), &payload[..]);
                    }
                    _ => panic!("expected CopyData"),
                }
            } else {
                assert!(parsed.is_none(), "frame parsed early at byte {i}");
            }
        }
        assert!(conn.read_buf.is_empty());
    }

    #[tokio::test]
    async fn recv_is_cancel_safe() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut stream = ReplicationStream {
            conn: Conn::new(Box::new(client)),
            backend_pid: 0,
            copy_done_received: false,
            eof: false,
        };
        let mut frame = BytesMut::new();
        frontend::CopyData::new(xlogdata_bytes(1, 2, 3, b"Bxyz"))
            .unwrap()
            .write(&mut frame);
        // Half a frame, then a recv that gets cancelled.
        server.write_all(&frame[..10]).await.unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(20), stream.recv()).await;
        assert!(cancelled.is_err(), "recv must still be waiting");
        server.write_all(&frame[10..]).await.unwrap();
        let msg = stream.recv().await.unwrap().unwrap();
        assert!(
            matches!(msg, ReplicationMessage::XLogData { ref data, .. } if &data[..] == b"Bxyz")
        );
        // CopyDone ends the stream, for good.
        let mut done = BytesMut::new();
        frontend::copy_done(&mut done);
        server.write_all(&done).await.unwrap();
        assert!(stream.recv().await.unwrap().is_none());
        assert!(stream.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn recv_reports_server_errors_and_skips_notices() {
        let (client, mut server) = tokio::io::duplex(1024);
        let mut stream = ReplicationStream {
            conn: Conn::new(Box::new(client)),
            backend_pid: 0,
            copy_done_received: false,
            eof: false,
        };
        let fields = |tag: u8| {
            let mut body = BytesMut::new();
            for (t, v) in [
                (b'S', "FATAL"),
                (b'V', "FATAL"),
                (b'C', "57P01"),
                (b'M', "terminating connection due to administrator command"),
                (b'D', "some detail"),
                (b'H', "some hint"),
            ] {
                body.put_u8(t);
                body.put_slice(v.as_bytes());
                body.put_u8(0);
            }
            body.put_u8(0);
            let mut frame = BytesMut::new();
            frame.put_u8(tag);
            frame.put_u32(body.len() as u32 + 4);
            frame.put_slice(&body);
            frame
        };
        server.write_all(&fields(b'N')).await.unwrap();
        server.write_all(&fields(b'E')).await.unwrap();
        let err = stream.recv().await.unwrap_err();
        assert_eq!(err.sqlstate(), Some("57P01"));
        let text = err.to_string();
        assert_eq!(
            text,
            "FATAL 57P01: terminating connection due to administrator command\n\
             DETAIL: some detail\nHINT: some hint"
        );
        drop(server);
        assert!(stream.recv().await.unwrap().is_none());
    }

    #[test]
    fn command_text_quotes_names() {
        assert_eq!(
            create_slot_sql("doppel_slot", true),
            "CREATE_REPLICATION_SLOT \"doppel_slot\" TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            create_slot_sql("s", false),
            "CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
        assert_eq!(
            start_replication_sql("s", Lsn(0x16_B374_D848), "my\"pub's", true),
            "START_REPLICATION SLOT \"s\" LOGICAL 16/B374D848 \
             (proto_version '1', publication_names '\"my\"\"pub''s\"', messages 'true')"
        );
        assert_eq!(
            start_replication_sql("s", Lsn(0), "p", false),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '1', publication_names '\"p\"')"
        );
    }

    #[test]
    fn pg_clock_is_after_2020() {
        // 2020-01-01 is 20 years (plus leap days) after the PostgreSQL epoch.
        assert!(pg_now_us() > 631_152_000_000_000);
    }

    #[tokio::test]
    async fn tls_is_refused_clearly() {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .user("u")
            .password("sekrit-password")
            .ssl_mode(SslMode::Require);
        let err = ReplicationClient::connect(&config).await.unwrap_err();
        assert!(matches!(err, ReplicationError::Unsupported(_)));
        let text = err.to_string();
        assert!(text.contains("TLS is not supported yet"), "{text}");
        assert!(!text.contains("sekrit"));
    }

    #[test]
    fn futures_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        let config = tokio_postgres::Config::new();
        assert_send(&ReplicationClient::connect(&config));
        let (client, _server) = tokio::io::duplex(64);
        let mut stream = ReplicationStream {
            conn: Conn::new(Box::new(client)),
            backend_pid: 0,
            copy_done_received: false,
            eof: false,
        };
        assert_send(&stream.recv());
        assert_send(&stream.send_standby_status(Lsn(1), Lsn(1), Lsn(1), false));
        assert_send(&stream.close());
    }

    #[tokio::test]
    async fn missing_host_is_a_config_error() {
        let mut config = tokio_postgres::Config::new();
        config.user("u");
        assert!(matches!(
            ReplicationClient::connect(&config).await,
            Err(ReplicationError::Config(_))
        ));
    }
}
