//! Authentication during the handshake: trust, cleartext password, MD5 and SCRAM-SHA-256
//! (without channel binding: there is no TLS yet).

use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
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

/// Answers the server's authentication requests after the startup packet, as `user` with
/// `password` (if any), until AuthenticationOk.
///
/// # Errors
/// [`ReplicationError::Auth`] if a password is asked for but none is given, or the SCRAM
/// exchange fails on the client side; [`ReplicationError::Unsupported`] for Kerberos, GSSAPI,
/// SSPI, SCM credentials and SASL without SCRAM-SHA-256; [`ReplicationError::Server`] if the
/// server refuses (e.g. `28P01`); [`ReplicationError::Io`] or [`ReplicationError::Protocol`]
/// on socket failure or an unexpected message.
pub(super) async fn authenticate(
    conn: &mut Conn,
    user: &str,
    password: Option<&[u8]>,
) -> Result<(), ReplicationError> {
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

/// The SCRAM-SHA-256 exchange (client-first, server-first, client-final, server-final),
/// verifying the server's signature.
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
