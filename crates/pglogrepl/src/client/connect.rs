//! Opening a replication connection: the targets named by a [`tokio_postgres::Config`], the
//! socket to each, TLS negotiation (SSLRequest, then the caller's [`TlsConnector`]), the
//! startup packet and the handshake up to the first ReadyForQuery, and the
//! `target_session_attrs=read-write` check.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use postgres_protocol::message::{backend, frontend};
use tokio_postgres::config::{ChannelBinding, Host, SslMode, TargetSessionAttrs};

use super::auth::{Binding, authenticate};
use super::conn::{Conn, Frame, Transport, unexpected};
use super::error::{ReplicationError, log_notice, server_error};
use super::tls::{Negotiated, TlsConnector, negotiate};

/// Default PostgreSQL port used when the configuration names none.
const DEFAULT_PORT: u16 = 5432;

/// An open connection: the framed stream, the backend process id (0 if the server sent no
/// BackendKeyData) and whether it is encrypted.
pub(super) struct Opened {
    pub(super) conn: Conn,
    pub(super) backend_pid: i32,
    pub(super) tls: bool,
}

/// Opens and authenticates a replication connection with the settings of `config` and the
/// TLS connector `tls` (see `ReplicationClient::connect_with_tls`, which documents them and
/// the errors): tries each host in order, the first that accepts (and, with
/// `target_session_attrs=read-write`, is not read-only) wins. Returns the connection in
/// command mode (after the first ReadyForQuery).
pub(super) async fn connect(
    config: &tokio_postgres::Config,
    tls: Option<&dyn TlsConnector>,
) -> Result<Opened, ReplicationError> {
    let startup = startup_settings(config, tls.is_some())?;
    let targets = targets(config)?;
    let timeout = config.get_connect_timeout().copied();
    let mut last_err = None;
    for target in &targets {
        match connect_one(target, &startup, tls, timeout).await {
            Ok(opened) => {
                tracing::debug!(
                    host = %target,
                    backend_pid = opened.backend_pid,
                    tls = opened.tls,
                    "replication connection established"
                );
                return Ok(opened);
            }
            Err(e) => {
                tracing::debug!(host = %target, error = %e, "replication connect attempt failed");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.expect("at least one target was tried"))
}

/// Where to connect: one entry per configured host.
#[derive(Debug, Clone)]
enum Target {
    /// `host` is where the socket connects (the `hostaddr` when given); `name` is the host
    /// name the TLS connector checks the certificate against (`host` when given, as libpq:
    /// `hostaddr` only saves the name lookup).
    Tcp {
        host: String,
        port: u16,
        name: String,
    },
    Unix {
        path: PathBuf,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port, name } if host != name => {
                write!(f, "{name} ({host}):{port}")
            }
            Target::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
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
            (Some(addr), host) => Target::Tcp {
                host: addr.to_string(),
                port,
                name: match host {
                    Some(Host::Tcp(name)) => name.clone(),
                    _ => addr.to_string(),
                },
            },
            (None, Some(Host::Tcp(host))) => Target::Tcp {
                host: host.clone(),
                port,
                name: host.clone(),
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

/// TCP keepalive settings from the configuration (libpq's `keepalives`, `keepalives_idle`,
/// `keepalives_interval`, `keepalives_count`), applied to each TCP socket.
#[derive(Debug, Clone)]
struct Keepalive {
    on: bool,
    idle: Duration,
    interval: Option<Duration>,
    retries: Option<u32>,
}

fn set_keepalive(stream: &tokio::net::TcpStream, keepalive: &Keepalive) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    if !keepalive.on {
        return socket.set_keepalive(false);
    }
    let mut params = socket2::TcpKeepalive::new().with_time(keepalive.idle);
    if let Some(interval) = keepalive.interval {
        params = params.with_interval(interval);
    }
    if let Some(retries) = keepalive.retries {
        params = params.with_retries(retries);
    }
    socket.set_tcp_keepalive(&params)
}

async fn open_socket(
    target: &Target,
    keepalive: &Keepalive,
) -> Result<Box<dyn Transport>, ReplicationError> {
    match target {
        Target::Tcp { host, port, .. } => {
            let addrs = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("resolving {host}: {e}")))?;
            let mut last_err = None;
            for addr in addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        set_keepalive(&stream, keepalive)?;
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

/// Settings for the startup packet, TLS and authentication (borrowed from the config).
struct Startup<'a> {
    user: String,
    password: Option<&'a [u8]>,
    params: Vec<(&'static str, String)>,
    ssl_mode: SslMode,
    channel_binding: ChannelBinding,
    read_write: bool,
    keepalive: Keepalive,
}

fn startup_settings(
    config: &tokio_postgres::Config,
    have_tls: bool,
) -> Result<Startup<'_>, ReplicationError> {
    let ssl_mode = config.get_ssl_mode();
    if ssl_mode != SslMode::Disable && ssl_mode != SslMode::Prefer && !have_tls {
        return Err(ReplicationError::Unsupported(
            "sslmode=require without a TLS connector: pass one to ReplicationClient::connect_with_tls"
                .into(),
        ));
    }
    let channel_binding = config.get_channel_binding();
    if channel_binding == ChannelBinding::Require && (!have_tls || ssl_mode == SslMode::Disable) {
        return Err(ReplicationError::Unsupported(
            "channel_binding=require needs TLS (a TLS connector and an sslmode other than disable)"
                .into(),
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
        ssl_mode,
        channel_binding,
        read_write: config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite,
        keepalive: Keepalive {
            on: config.get_keepalives(),
            idle: config.get_keepalives_idle(),
            interval: config.get_keepalives_interval(),
            retries: config.get_keepalives_retries(),
        },
    })
}

/// Sends the startup packet, authenticates and waits for the first ReadyForQuery.
/// Returns the backend process id (0 if the server sent no BackendKeyData).
async fn handshake(
    conn: &mut Conn,
    startup: &Startup<'_>,
    binding: Binding<'_>,
) -> Result<i32, ReplicationError> {
    frontend::startup_message(
        startup.params.iter().map(|(k, v)| (*k, v.as_str())),
        &mut conn.write_buf,
    )
    .map_err(|e| ReplicationError::Config(format!("startup parameter: {e}")))?;
    conn.flush().await?;

    authenticate(conn, &startup.user, startup.password, binding).await?;

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

/// TLS for `target` as `startup.ssl_mode` asks: none on a Unix socket (as libpq) or with
/// `disable`; otherwise an SSLRequest, after which `require` insists on the server's `S`.
/// Returns the stream and the channel binding data (if TLS is in use).
async fn secure(
    io: Box<dyn Transport>,
    target: &Target,
    startup: &Startup<'_>,
    tls: Option<&dyn TlsConnector>,
) -> Result<(Box<dyn Transport>, Option<Option<Vec<u8>>>), ReplicationError> {
    let (Target::Tcp { name, .. }, Some(connector)) = (target, tls) else {
        return Ok((io, None));
    };
    if startup.ssl_mode == SslMode::Disable {
        return Ok((io, None));
    }
    match negotiate(io, name, connector).await? {
        Negotiated::Tls(session) => Ok((session.stream, Some(session.tls_server_end_point))),
        Negotiated::Plain(_) if startup.ssl_mode != SslMode::Prefer => {
            Err(ReplicationError::Tls(format!(
                "{target}: the server does not support TLS (it refused the SSLRequest), and sslmode requires it"
            )))
        }
        Negotiated::Plain(io) => Ok((io, None)),
    }
}

/// With `target_session_attrs=read-write`: refuses a session whose
/// `transaction_read_only` is on (a standby, or a read-only default).
async fn check_read_write(conn: &mut Conn, target: &Target) -> Result<(), ReplicationError> {
    let rows = super::commands::simple_query(conn, "SHOW transaction_read_only").await?;
    let value = rows
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .unwrap_or_default();
    if value == "on" {
        return Err(ReplicationError::ReadOnly(format!(
            "{target} is read-only (transaction_read_only = on) and target_session_attrs=read-write"
        )));
    }
    Ok(())
}

/// One host's whole attempt (socket, TLS, startup, authentication, the read-write check),
/// bounded by `timeout` if given and not zero.
async fn connect_one(
    target: &Target,
    startup: &Startup<'_>,
    tls: Option<&dyn TlsConnector>,
    timeout: Option<Duration>,
) -> Result<Opened, ReplicationError> {
    let attempt = async {
        let io = open_socket(target, &startup.keepalive).await?;
        let (io, end_point) = secure(io, target, startup, tls).await?;
        let encrypted = end_point.is_some();
        let mut conn = Conn::new(io);
        let binding = Binding {
            mode: startup.channel_binding,
            tls: encrypted,
            tls_server_end_point: end_point.as_ref().and_then(|e| e.as_deref()),
        };
        let backend_pid = handshake(&mut conn, startup, binding).await?;
        if startup.read_write {
            check_read_write(&mut conn, target).await?;
        }
        Ok(Opened {
            conn,
            backend_pid,
            tls: encrypted,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn require_without_a_connector_is_refused_clearly() {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .user("u")
            .password("sekrit-password")
            .ssl_mode(SslMode::Require);
        let Err(err) = connect(&config, None).await else {
            panic!("connected with sslmode=require");
        };
        assert!(matches!(err, ReplicationError::Unsupported(_)));
        let text = err.to_string();
        assert!(text.contains("TLS connector"), "{text}");
        assert!(!text.contains("sekrit"));
        config
            .ssl_mode(SslMode::Prefer)
            .channel_binding(ChannelBinding::Require);
        assert!(matches!(
            connect(&config, None).await,
            Err(ReplicationError::Unsupported(_))
        ));
    }

    #[test]
    fn tls_checks_the_host_name_not_the_hostaddr() {
        let mut config = tokio_postgres::Config::new();
        config
            .host("db.example")
            .hostaddr("192.0.2.7".parse().unwrap())
            .port(6000);
        let targets = targets(&config).unwrap();
        let Target::Tcp { host, port, name } = &targets[0] else {
            panic!("a TCP target");
        };
        assert_eq!(
            (host.as_str(), *port, name.as_str()),
            ("192.0.2.7", 6000, "db.example")
        );
        assert_eq!(targets[0].to_string(), "db.example (192.0.2.7):6000");
    }

    #[tokio::test]
    async fn missing_host_is_a_config_error() {
        let mut config = tokio_postgres::Config::new();
        config.user("u");
        assert!(matches!(
            connect(&config, None).await,
            Err(ReplicationError::Config(_))
        ));
    }
}
