//! TLS for the replication connection, through a connector the caller provides: this crate
//! speaks the protocol around it (SSLRequest, the server's one-byte answer, then the startup
//! message over the encrypted stream) and uses the `tls-server-end-point` channel binding data
//! the handshake yields for SCRAM-SHA-256-PLUS. Which TLS library performs the handshake,
//! which certificates it trusts and whether it checks the host name are the connector's
//! business, so this crate depends on none.

use std::future::Future;
use std::io;
use std::pin::Pin;

use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::Transport;
use super::error::ReplicationError;

/// A byte stream a connection can run on: a TCP or Unix socket, or the TLS stream a
/// [`TlsConnector`] returns.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// An established TLS session.
pub struct TlsSession {
    /// The encrypted stream; the connection continues on it.
    pub stream: Box<dyn Stream>,
    /// The `tls-server-end-point` channel binding data (RFC 5929: the hash of the server's
    /// certificate, with SHA-256 when its signature uses MD5 or SHA-1), or `None` if the
    /// connector cannot provide it (then SCRAM-SHA-256-PLUS is not offered).
    pub tls_server_end_point: Option<Vec<u8>>,
}

/// The future a [`TlsConnector`] returns.
pub type HandshakeFuture<'a> = Pin<Box<dyn Future<Output = io::Result<TlsSession>> + Send + 'a>>;

/// Performs the client side of a TLS handshake.
pub trait TlsConnector: Send + Sync {
    /// Runs the handshake over `stream` (the server has just accepted the SSLRequest) for a
    /// server reached as `host` (a host name or an IP address: for SNI and the certificate's
    /// name check, as the connector decides).
    ///
    /// # Errors
    /// The handshake failed: the server's certificate was not accepted, the protocol versions
    /// did not match, or the socket failed. The message should say which.
    fn handshake<'a>(&'a self, host: &'a str, stream: Box<dyn Stream>) -> HandshakeFuture<'a>;
}

/// What the server answered to the SSLRequest.
pub(super) enum Negotiated {
    /// `S`: the stream is now a TLS session.
    Tls(TlsSession),
    /// `N`: the server does not accept TLS; the stream is still plain and usable.
    Plain(Box<dyn Transport>),
}

/// Sends an SSLRequest on `io` and, if the server accepts (`S`), runs `connector`'s handshake.
/// Reads exactly one byte before the handshake, so nothing the server sent in plain text can
/// be taken for part of the TLS session.
///
/// # Errors
/// [`ReplicationError::Io`] on socket failure or a failed handshake (the message names the
/// host), [`ReplicationError::Protocol`] if the server answers anything but `S` or `N`.
pub(super) async fn negotiate(
    mut io: Box<dyn Transport>,
    host: &str,
    connector: &dyn TlsConnector,
) -> Result<Negotiated, ReplicationError> {
    let mut request = bytes::BytesMut::new();
    frontend::ssl_request(&mut request);
    io.write_all(&request).await?;
    io.flush().await?;
    match io.read_u8().await? {
        b'S' => {
            let session = connector.handshake(host, io).await.map_err(|e| {
                io::Error::new(e.kind(), format!("TLS handshake with {host} failed: {e}"))
            })?;
            Ok(Negotiated::Tls(session))
        }
        b'N' => Ok(Negotiated::Plain(io)),
        other => Err(ReplicationError::Protocol(format!(
            "unexpected answer {:?} to the SSLRequest",
            char::from(other)
        ))),
    }
}
