//! Opening a replication connection: the targets named by a [`tokio_postgres::Config`], the
//! socket to each, the startup packet and the handshake up to the first ReadyForQuery.
//!
//! The socket is handed to [`Conn`] as a boxed [`Transport`], so a TLS stream (SSLRequest,
//! then the TLS handshake, between [`open_socket`] and [`handshake`]) can take its place
//! without changing anything downstream.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use postgres_protocol::message::{backend, frontend};
use tokio_postgres::config::{ChannelBinding, Host, SslMode};

use super::auth::authenticate;
use super::conn::{Conn, Frame, Transport, unexpected};
use super::error::{ReplicationError, log_notice, server_error};

/// Default PostgreSQL port used when the configuration names none.
const DEFAULT_PORT: u16 = 5432;

/// Opens and authenticates a replication connection with the settings of `config` (see
/// `ReplicationClient::connect`, which documents them and the errors): tries each host in
/// order, the first that accepts wins. Returns the connection in command mode (after the
/// first ReadyForQuery) and the backend process id (0 if the server sent no BackendKeyData).
pub(super) async fn connect(
    config: &tokio_postgres::Config,
) -> Result<(Conn, i32), ReplicationError> {
    let startup = startup_settings(config)?;
    let targets = targets(config)?;
    let timeout = config.get_connect_timeout().copied();
    let mut last_err = None;
    for target in &targets {
        match connect_one(target, &startup, timeout).await {
            Ok((conn, backend_pid)) => {
                tracing::debug!(
                    host = %target,
                    backend_pid,
                    "replication connection established"
                );
                return Ok((conn, backend_pid));
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

    authenticate(conn, &startup.user, startup.password).await?;

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

/// One host's whole attempt (socket, startup, authentication), bounded by `timeout` if given
/// and not zero.
async fn connect_one(
    target: &Target,
    startup: &Startup<'_>,
    timeout: Option<Duration>,
) -> Result<(Conn, i32), ReplicationError> {
    let attempt = async {
        // TLS (SSLRequest, then the handshake) will wrap the socket here.
        let io = open_socket(target).await?;
        let mut conn = Conn::new(io);
        let backend_pid = handshake(&mut conn, startup).await?;
        Ok((conn, backend_pid))
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
    async fn tls_is_refused_clearly() {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .user("u")
            .password("sekrit-password")
            .ssl_mode(SslMode::Require);
        let Err(err) = connect(&config).await else {
            panic!("connected with sslmode=require");
        };
        assert!(matches!(err, ReplicationError::Unsupported(_)));
        let text = err.to_string();
        assert!(text.contains("TLS is not supported yet"), "{text}");
        assert!(!text.contains("sekrit"));
    }

    #[tokio::test]
    async fn missing_host_is_a_config_error() {
        let mut config = tokio_postgres::Config::new();
        config.user("u");
        assert!(matches!(
            connect(&config).await,
            Err(ReplicationError::Config(_))
        ));
    }
}
