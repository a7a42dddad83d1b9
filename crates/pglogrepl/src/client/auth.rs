//! Authentication during the handshake: trust, cleartext password, MD5 and SCRAM-SHA-256,
//! with channel binding (SCRAM-SHA-256-PLUS, `tls-server-end-point`) over TLS as
//! `channel_binding` asks: `prefer` uses it when the server offers it, `require` fails
//! unless the server authenticated the client with it (libpq's rules).

use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use tokio_postgres::config::ChannelBinding;
use tokio_postgres::fallible_iterator::FallibleIterator;

use super::conn::{Conn, Frame, unexpected};
use super::error::{ReplicationError, log_notice, protocol_err, server_error};

fn require_password<'a>(
    user: &str,
    password: Option<&'a [u8]>,
) -> Result<&'a [u8], ReplicationError> {
    password.ok_or_else(|| {
        ReplicationError::Auth(format!(
            "the server requires a password for user {user:?} but none was configured"
        ))
    })
}

/// Channel binding for one connection attempt.
#[derive(Debug, Clone, Copy)]
pub(super) struct Binding<'a> {
    /// The `channel_binding` setting.
    pub(super) mode: ChannelBinding,
    /// The connection is encrypted.
    pub(super) tls: bool,
    /// The TLS session's `tls-server-end-point` data, if the connector provided it.
    pub(super) tls_server_end_point: Option<&'a [u8]>,
}

fn binding_required(what: &str) -> ReplicationError {
    ReplicationError::Tls(format!(
        "channel binding required (channel_binding=require), but {what}"
    ))
}

/// Answers the server's authentication requests after the startup packet, as `user` with
/// `password` (if any), until AuthenticationOk.
///
/// # Errors
/// [`ReplicationError::Auth`] if a password is asked for but none is given, or the SCRAM
/// exchange fails on the client side; [`ReplicationError::Tls`] when `channel_binding=require`
/// and the server asks for another method, does not offer SCRAM-SHA-256-PLUS, or
/// authenticates the client without any exchange; [`ReplicationError::Unsupported`] for Kerberos, GSSAPI,
/// SSPI, SCM credentials and SASL without SCRAM-SHA-256; [`ReplicationError::Server`] if the
/// server refuses (e.g. `28P01`); [`ReplicationError::Io`] or [`ReplicationError::Protocol`]
/// on socket failure or an unexpected message.
pub(super) async fn authenticate(
    conn: &mut Conn,
    user: &str,
    password: Option<&[u8]>,
    binding: Binding<'_>,
) -> Result<(), ReplicationError> {
    use backend::Message as M;
    let what = "authentication";
    let required = binding.mode == ChannelBinding::Require;
    let mut bound = false;
    loop {
        let frame = conn.expect_frame(what).await?;
        let Frame::Message(msg) = frame else {
            return Err(unexpected(what, &frame));
        };
        if required
            && matches!(
                msg,
                M::AuthenticationCleartextPassword | M::AuthenticationMd5Password(_)
            )
        {
            return Err(binding_required(
                "the server asked for a password authentication without it",
            ));
        }
        match msg {
            M::AuthenticationOk if required && !bound => {
                return Err(binding_required(
                    "the server authenticated the client without channel binding",
                ));
            }
            M::AuthenticationOk => return Ok(()),
            M::AuthenticationCleartextPassword => {
                let password = require_password(user, password)?;
                frontend::password_message(password, &mut conn.write_buf)
                    .map_err(|_| ReplicationError::Auth("password contains a NUL byte".into()))?;
                conn.flush().await?;
            }
            M::AuthenticationMd5Password(body) => {
                let password = require_password(user, password)?;
                let hashed = md5_hash(user.as_bytes(), password, body.salt());
                frontend::password_message(hashed.as_bytes(), &mut conn.write_buf)
                    .map_err(protocol_err)?;
                conn.flush().await?;
            }
            M::AuthenticationSasl(body) => {
                let password = require_password(user, password)?;
                let mut offered = Vec::new();
                let mut mechanisms = body.mechanisms();
                while let Some(mechanism) = mechanisms.next().map_err(protocol_err)? {
                    offered.push(mechanism.to_string());
                }
                let plus = binding.mode != ChannelBinding::Disable
                    && offered.iter().any(|m| m == sasl::SCRAM_SHA_256_PLUS);
                let (mechanism, channel) = match binding.tls_server_end_point {
                    Some(data) if plus => (
                        sasl::SCRAM_SHA_256_PLUS,
                        sasl::ChannelBinding::tls_server_end_point(data.to_vec()),
                    ),
                    _ if required => {
                        return Err(binding_required(if binding.tls {
                            "the server does not offer SCRAM-SHA-256-PLUS"
                        } else {
                            "the connection is not encrypted"
                        }));
                    }
                    _ if binding.tls && binding.mode != ChannelBinding::Disable => {
                        (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested())
                    }
                    _ => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
                };
                if !offered.iter().any(|m| m == mechanism) {
                    return Err(ReplicationError::Unsupported(format!(
                        "SASL mechanisms {offered:?} (only SCRAM-SHA-256 and SCRAM-SHA-256-PLUS are supported)"
                    )));
                }
                scram_exchange(conn, password, mechanism, channel).await?;
                bound = mechanism == sasl::SCRAM_SHA_256_PLUS;
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

/// The SCRAM exchange with `mechanism` (SCRAM-SHA-256, or -PLUS with the channel binding
/// data in `channel`): client-first, server-first, client-final, server-final, verifying the
/// server's signature.
async fn scram_exchange(
    conn: &mut Conn,
    password: &[u8],
    mechanism: &str,
    channel: sasl::ChannelBinding,
) -> Result<(), ReplicationError> {
    use backend::Message as M;
    let what = "SCRAM-SHA-256 authentication";
    let mut scram = sasl::ScramSha256::new(password, channel);
    frontend::sasl_initial_response(mechanism, scram.message(), &mut conn.write_buf)
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
